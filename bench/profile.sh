#!/bin/bash
# Profile of the protocol scenario (issue 7): mxsentry (release build, debug info on) with the
# bench's 100,000-line access file and DNS checks off, driven by milterload at concurrency 16.
#
#   bash bench/profile.sh          -> bench/results/profile-*.txt (+ the raw callgrind.out)
#
# Uses `perf record` when hardware counters work here (`perf stat -e instructions true`),
# else valgrind's callgrind (instruction counts, user space only: syscalls are not in it).
# PROFILE_SESSIONS (3000 under callgrind, 100000 under perf). Also profiles the null C filter
# the same way, for instructions per session side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
W="$(mktemp -d /tmp/mxprof-XXXX)"; chmod 755 "$W"
OUT="$ROOT/bench/results"; mkdir -p "$OUT"
PIDS=()
cleanup() {
  local rc=$?
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done; done
  [ $rc -eq 0 ] && rm -rf "$W" || echo "profile: files kept in $W" >&2
  exit $rc
}
trap cleanup EXIT
wait_port() { for _ in $(seq 1 600); do timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null && return 0; sleep 0.1; done; return 1; }

cargo build --release --workspace --bins >/dev/null 2>&1 || { echo "cargo build failed" >&2; exit 1; }
cc -O2 -g -o "$W/null_filter" bench/null_filter.c -lmilter -lpthread
/usr/bin/python3 bench/gen.py "$W/data" 100000
source bench/lib.sh
mx_config "$W/protocol.toml" protocol 18888 18988 "$W/data/access" "$W/greylist.db"
ML=(target/release/milterload --concurrency 16)

if perf stat -e instructions true >/dev/null 2>&1 && perf stat -e instructions true 2>&1 | grep -q '[0-9] *instructions'; then
  N="${PROFILE_SESSIONS:-100000}"
  echo "profile: perf record, $N sessions"
  target/release/mxsentry run --config "$W/protocol.toml" 2> "$W/mx.log" & PIDS+=($!); mxpid=$!
  wait_port 18888
  perf record -g -o "$W/perf.data" -p "$mxpid" -- sleep 30 2>/dev/null & prec=$!
  "${ML[@]}" --target inet:18888@127.0.0.1 --sessions "$N"
  kill -INT $prec 2>/dev/null || true; wait $prec || true
  perf report -i "$W/perf.data" --no-children --stdio 2>/dev/null | head -80 > "$OUT/profile-mxsentry.txt"
  cat "$OUT/profile-mxsentry.txt"
  exit 0
fi

N="${PROFILE_SESSIONS:-3000}"
echo "profile: perf has no hardware counters here; valgrind --tool=callgrind, $N sessions each"
run_callgrind() {  # run_callgrind NAME PORT CLIENTS CMD...
  local name="$1" port="$2" clients="$3"; shift 3
  local ML=("${ML[@]}"); [ -n "$clients" ] && ML+=(--clients "$clients")
  valgrind --tool=callgrind --callgrind-out-file="$W/callgrind.$name" "$@" 2> "$W/$name.vg.log" &
  local pid=$!; PIDS+=("$pid")
  wait_port "$port" || { cat "$W/$name.vg.log" >&2; exit 1; }
  "${ML[@]}" --target "inet:$port@127.0.0.1" --duration 2 >/dev/null   # warm-up
  callgrind_control -z "$pid" >/dev/null          # zero the counters: profile the steady state
  "${ML[@]}" --target "inet:$port@127.0.0.1" --sessions "$N" | tee "$W/$name.load.txt"
  callgrind_control -d "$pid" >/dev/null          # dump now: the shutdown is not profiled
  sleep 2
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  local f; f="$(ls "$W"/callgrind."$name".* 2>/dev/null | grep -v '\.log$' | sort | head -1)"
  [ -n "$f" ] || { echo "no callgrind dump for $name" >&2; ls "$W" >&2; exit 1; }
  cp "$f" "$OUT/callgrind.$name.out"
  {
    echo "# callgrind, $name, $N sessions at concurrency 16 after a 2 s warm-up (steady state)"
    callgrind_annotate --threshold=100 "$f" > "$W/self.txt" 2>/dev/null || true
    callgrind_annotate --inclusive=yes --threshold=100 "$f" > "$W/incl.txt" 2>/dev/null || true
    grep -m1 'PROGRAM TOTALS' "$W/self.txt" || true
    echo
    echo "# self cost: instructions spent in the function itself, top 30 (the thread entry"
    echo "# points that were running when the counters were dumped are left out)"
    grep -E '^ *[0-9,]+ \(' "$W/self.txt" | grep -v 'PROGRAM TOTALS' \
      | awk '{ p = $2; gsub(/[()%]/, "", p); if (p + 0 < 50) print }' | head -30 || true
    echo
    echo "# inclusive cost of the filter's own functions, top 40"
    grep -E '^ *[0-9,]+ \(' "$W/incl.txt" | grep -E 'mxsentry::|mi_|smfi_|libmilter' | head -40 || true
  } > "$OUT/profile-$name.txt"
  echo "$name: $(awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }' "$W/self.txt") instructions over the run ($N sessions)" | tee -a "$OUT/profile-$name.txt"
}
run_callgrind mxsentry 18888 "" target/release/mxsentry run --config "$W/protocol.toml"
run_callgrind null-c 18887 "" "$W/null_filter" inet:18887@127.0.0.1 1024
# all checks, warm DNS: the bench's warm zone on a loopback DNS server, cache filled by the warm-up
target/release/milterload --dns-zone "$W/data/warm.zone" --dns-addr-file "$W/dns.addr" --dns-only > "$W/dns.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do [ -s "$W/dns.addr" ] && break; sleep 0.1; done
mx_config "$W/checks.toml" checks 18886 18986 "$W/data/access" "$W/greylist2.db" "$(cat "$W/dns.addr")"
run_callgrind mxsentry-checks 18886 "$W/data/warm.clients" target/release/mxsentry run --config "$W/checks.toml"
echo "profiles: bench/results/profile-mxsentry.txt, profile-null-c.txt, profile-mxsentry-checks.txt"
