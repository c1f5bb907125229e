#!/bin/bash
# The protocol path (issue 15, item 4): mxsentry's protocol configuration (bench/lib.sh) against
# the null C libmilter filter negotiating the same stages (0x7170: no headers, EOH, body,
# unknown; no reply to CONNECT, HELO, MAIL; DATA, RCPT and EOM answered), over unix sockets and
# TCP, at several concurrencies, every filter measured back to back in the same run (ratios,
# not absolute rates, survive a busy machine). Reports per filter sessions/s, the ratio to the
# null C filter of the same run, and the filter's CPU per session (utime+stime from /proc).
#
#   bash bench/protocol-path.sh [MXSENTRY_BIN...]    # default target/release/mxsentry
#
# Several binaries (say main's build copied to /tmp/mx-main and this branch's) are measured in
# the same runs, each against the same null C filter. Knobs: PP_RUNS (3), PP_CONC ("1 8 64"),
# PP_SOCKETS ("unix tcp"), PP_DURATION (3 s per measurement). Needs target/release/milterload,
# libmilter-dev and a C compiler. Only the processes it starts are stopped (by pid).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
: "${PP_RUNS:=3}"
: "${PP_CONC:=1 8 64}"
: "${PP_SOCKETS:=unix tcp}"
: "${PP_DURATION:=3}"
BINS=("$@"); [ ${#BINS[@]} -gt 0 ] || BINS=("$ROOT/target/release/mxsentry")
ML="$ROOT/target/release/milterload"
[ -x "$ML" ] || { echo "build it first: cargo build --release --workspace --bins" >&2; exit 1; }
W="$(mktemp -d /tmp/mx-pp-XXXX)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT
source "$ROOT/bench/lib.sh"
cc -O2 -o "$W/null_filter" bench/null_filter.c -lmilter -lpthread
printf 'From:spammer.example REJECT\nConnect:10.1.2 REJECT\n' > "$W/access"
pick() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ticks() { awk '{ split($0, a, ") "); split(a[2], f, " "); print f[12] + f[13] }' "/proc/$1/stat"; }
wait_target() {  # wait_target ADDR PID
  for _ in $(seq 1 100); do
    "$ML" --target "$1" --sessions 1 --concurrency 1 >/dev/null 2>&1 && return 0
    kill -0 "$2" 2>/dev/null || { echo "filter for $1 exited" >&2; exit 1; }
    sleep 0.1
  done
  echo "no filter answers at $1" >&2; exit 1
}

# FILTERS: "name socket address pid" per line
: > "$W/filters"
for sock in $PP_SOCKETS; do
  i=0
  for bin in "${BINS[@]}"; do
    i=$((i + 1)); name="mxsentry"; [ ${#BINS[@]} -gt 1 ] && name="mxsentry$i"
    port="$(pick)"; mport="$(pick)"
    if [ "$sock" = unix ]; then addr="unix:$W/$name.sock"; else addr="inet:$port@127.0.0.1"; fi
    mx_config "$W/$name-$sock.toml" protocol "$port" "$mport" "$W/access" "$W/gl-$i.db"
    sed -i "0,/^listen = /s|^listen = .*|listen = \"$addr\"|" "$W/$name-$sock.toml"
    "$bin" run --config "$W/$name-$sock.toml" 2>> "$W/$name-$sock.log" &
    PIDS+=($!); echo "$name $sock $addr $!" >> "$W/filters"
    wait_target "$addr" $!
  done
  if [ "$sock" = unix ]; then addr="unix:$W/null-c.sock"; else addr="inet:$(pick)@127.0.0.1"; fi
  "$W/null_filter" "$addr" 1024 0x7170 2>> "$W/null-c-$sock.log" &
  PIDS+=($!); echo "null-c $sock $addr $!" >> "$W/filters"
  wait_target "$addr" $!
done
echo "# $(nproc) cores, $(uname -r); filters:"; sed 's/^/#   /' "$W/filters"
# warm-up: allocators, page cache, the DNS-free policy
while read -r name sock addr pid; do
  "$ML" --target "$addr" --concurrency 8 --duration 1 >/dev/null
done < "$W/filters"
: > "$W/results"
for run in $(seq 1 "$PP_RUNS"); do
  for sock in $PP_SOCKETS; do
    for c in $PP_CONC; do
      while read -r name s addr pid; do
        [ "$s" = "$sock" ] || continue
        la="$(cut -d' ' -f1 /proc/loadavg)"; t0="$(ticks "$pid")"
        out="$("$ML" --json --target "$addr" --concurrency "$c" --duration "$PP_DURATION")"
        t1="$(ticks "$pid")"
        echo "$run $sock $c $name $((t1 - t0)) $la $out" >> "$W/results"
        echo "run $run $sock c=$c $name: $(grep -o '"sessions_per_sec":[0-9.]*' <<<"$out" | cut -d: -f2) sessions/s, load $la" >&2
      done < "$W/filters"
    done
  done
done
/usr/bin/python3 - "$W/results" <<'EOF'
import json, statistics, sys
rows = []
for line in open(sys.argv[1]):
    run, sock, c, name, ticks, load, js = line.split(" ", 6)
    d = json.loads(js)
    rows.append(dict(run=int(run), sock=sock, c=int(c), name=name, load=float(load),
                     rate=d["sessions_per_sec"], errors=d["errors"],
                     cpu_us=int(ticks) * 10000 / max(1, d["sessions"])))
med = statistics.median
ref = {(r["run"], r["sock"], r["c"]): r for r in rows if r["name"] == "null-c"}
print("| socket | conc. | filter | sessions/s | × null C (runs) | CPU µs/session | CPU × null C | errors | load |")
print("|---|--:|---|--:|--:|--:|--:|--:|--:|")
keys = sorted({(r["sock"], r["c"], r["name"]) for r in rows}, key=lambda k: (k[0] != "unix", k[1], k[2] == "null-c", k[2]))
for sock, c, name in keys:
    g = [r for r in rows if (r["sock"], r["c"], r["name"]) == (sock, c, name)]
    ratios = [r["rate"] / ref[(r["run"], sock, c)]["rate"] for r in g]
    cpur = [r["cpu_us"] / max(1e-9, ref[(r["run"], sock, c)]["cpu_us"]) for r in g]
    print(f"| {sock} | {c} | {name} | {med([r['rate'] for r in g]):,.0f} | "
          f"{med(ratios):.2f} ({' '.join(f'{x:.2f}' for x in ratios)}) | "
          f"{med([r['cpu_us'] for r in g]):.0f} | {med(cpur):.2f} | "
          f"{sum(r['errors'] for r in g)} | {min(r['load'] for r in g):.1f}–{max(r['load'] for r in g):.1f} |")
EOF
