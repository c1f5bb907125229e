#!/bin/bash
# A/B two mxsentry binaries (say, main's and a branch's release builds) on bench/lib.sh's protocol
# configuration, alternating them so both see the same machine load. Reports, per round, the
# daemon's CPU time per session (utime+stime from /proc: far less sensitive to a busy machine
# than sessions/s, which is printed too) and, twice each, the RSS of a fresh daemon idle and with
# HOLD idle MTA connections (OPTNEG, CONNECT, HELO). Needs target/release/milterload.
#   bash bench/ab.sh BIN_A BIN_B [ROUNDS=5] [SESSIONS=30000] [CONCURRENCY=16] [HOLD=10000]
# Only the daemons it starts are stopped (by pid).
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,8p' "$0"; exit 2; }
A="$1"; B="$2"; ROUNDS="${3:-5}"; SESSIONS="${4:-30000}"; CONC="${5:-16}"; HOLD="${6:-10000}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ML="$ROOT/target/release/milterload"
[ -x "$ML" ] || { echo "build it first: cargo build --release --workspace --bins" >&2; exit 1; }
W="$(mktemp -d /tmp/mta-ab-XXXX)"
source "$ROOT/bench/lib.sh"
printf 'From:spammer.example REJECT\nConnect:10.1.2 REJECT\n' > "$W/access"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
pick() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# utime+stime in clock ticks (1/100 s on Linux: 10,000 µs each)
ticks() { awk '{ split($0, a, ") "); split(a[2], f, " "); print f[12] + f[13] }' "/proc/$1/stat"; }
rss() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
PID=""
trap '[ -n "$PID" ] && kill -TERM "$PID" 2>/dev/null; true' EXIT
start() {
  local bin="$1" port="$2" mport="$3"
  mx_config "$W/c.toml" protocol "$port" "$mport" "$W/access" "$W/gl.db"
  "$bin" run --config "$W/c.toml" 2>> "$W/daemon.log" &
  PID=$!
  for _ in $(seq 1 100); do timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null && return 0; sleep 0.1; done
  echo "daemon did not start" >&2; exit 1
}
stop() { kill -TERM "$PID"; wait "$PID" 2>/dev/null || true; PID=""; }
# memory: a fresh daemon, RSS idle, then with HOLD idle connections (OPTNEG, CONNECT, HELO)
if [ "$HOLD" -gt 0 ]; then
  for r in 1 2; do
    for v in A B; do
      bin="$A"; [ "$v" = B ] && bin="$B"
      port="$(pick)"; mport="$(pick)"
      start "$bin" "$port" "$mport"
      sleep 1
      idle="$(rss "$PID")"
      "$ML" --target "inet:$port@127.0.0.1" --hold "$HOLD" --concurrency 200 --hold-secs 60 > "$W/hold.out" 2>&1 &
      hp=$!
      for _ in $(seq 1 600); do grep -q '^holding' "$W/hold.out" && break; sleep 0.1; done
      sleep 2
      held="$(rss "$PID")"
      kill -TERM "$hp" 2>/dev/null || true; wait "$hp" 2>/dev/null || true
      echo "hold $r $v: RSS idle ${idle} KB, $(grep -o '^holding [0-9]*' "$W/hold.out") connections ${held} KB: $(awk -v a="$held" -v b="$idle" -v n="$HOLD" 'BEGIN { printf "%.2f", (a - b) / n }') KB each"
      stop
      sleep 1
    done
  done
fi
for r in $(seq 1 "$ROUNDS"); do
  for v in A B; do
    bin="$A"; [ "$v" = B ] && bin="$B"
    port="$(pick)"; mport="$(pick)"
    start "$bin" "$port" "$mport"
    "$ML" --target "inet:$port@127.0.0.1" --concurrency "$CONC" --duration 2 > /dev/null
    c0="$(ticks "$PID")"; t0=$(date +%s%N)
    out="$("$ML" --target "inet:$port@127.0.0.1" --concurrency "$CONC" --sessions "$SESSIONS")"
    t1=$(date +%s%N); c1="$(ticks "$PID")"
    errs="$(grep -o '[0-9]* errors' <<<"$out" | head -1)"
    us=$(awk -v c=$((c1 - c0)) -v n="$SESSIONS" 'BEGIN { printf "%.1f", c * 10000 / n }')
    rate=$(awk -v n="$SESSIONS" -v t=$((t1 - t0)) 'BEGIN { printf "%.0f", n / (t / 1e9) }')
    echo "round $r $v: cpu ${us} us/session, ${rate} sessions/s, ${errs}, load $(cut -d' ' -f1 /proc/loadavg)"
    stop
    sleep 1
  done
done
rm -rf "$W"
