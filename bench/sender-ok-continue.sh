#!/usr/bin/env bash
# The cost of issue 11 item 3: an access-file `From:` OK is answered ACCEPT at RCPT only when no
# `To:` entry could still apply; otherwise CONTINUE, and the MTA goes on sending the later
# RCPTs, DATA, headers, body and EOM to the filter. This measures both on the release binary:
#   A: access file with `From:user@sender.example OK` only           → ACCEPT at the first RCPT
#   B: the same plus one `To:` entry (for another recipient)         → CONTINUE, 3 RCPTs + message
# Usage: cargo build --release --workspace && bash bench/sender-ok-continue.sh [SESSIONS] [ROUNDS]
# Prints sessions/s and the filter's CPU µs per session for each, ROUNDS times interleaved.
set -euo pipefail
cd "$(dirname "$0")/.."
MX=target/release/mxsentry ML=target/release/milterload
SESSIONS="${1:-20000}" ROUNDS="${2:-3}"
W="$(mktemp -d)"; trap 'kill $PA $PB 2>/dev/null || true; wait 2>/dev/null; rm -rf "$W"' EXIT
printf 'From:user@sender.example OK\n' > "$W/access-a"
printf 'From:user@sender.example OK\nTo:gone@example.org ERROR:5.1.1:"550 5.1.1 User unknown"\n' > "$W/access-b"
conf() {  # conf NAME PORT METRICS
  cat > "$W/$1.toml" <<TOML
[milter]
listen = "inet:$2@127.0.0.1"
hostname = "mx.bench.example"
[log]
level = "warn"
[dns]
nameservers = ["127.0.0.1:9"]
timeout = "1s"
[rdns]
no_ptr = "off"
forged = "off"
dynamic = "off"
[greylist]
enabled = false
path = "$W/$1.db"
[sender_rules]
access_file = "$W/access-$1"
[metrics]
listen = "127.0.0.1:$3"
TOML
  "$MX" check-config --config "$W/$1.toml" >/dev/null
}
conf a 18970 18971; conf b 18972 18973
"$MX" run --config "$W/a.toml" 2>"$W/a.log" & PA=$!
"$MX" run --config "$W/b.toml" 2>"$W/b.log" & PB=$!
sleep 1
cpu() { awk '{ split($0, a, ") "); split(a[2], f, " "); print f[12] + f[13] }' "/proc/$1/stat"; }
one() {  # one NAME PID PORT
  local c0 c1 out
  c0="$(cpu "$2")"
  out="$("$ML" --target "inet:$3@127.0.0.1" --concurrency 16 --sessions "$SESSIONS" --rcpts 3 --json)"
  c1="$(cpu "$2")"
  python3 - "$1" "$out" "$c0" "$c1" "$SESSIONS" <<'PY'
import json, sys
name, out, c0, c1, n = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
rate = out["sessions_per_sec"]
print(f"{name}: {rate:,.0f} sessions/s, filter CPU {(c1 - c0) * 10000 / n:.0f} µs/session, round trips {out['round_trips_per_session']:.1f}, replies {out['replies']}, errors {out['errors']}")
PY
}
for _ in $(seq 1 "$ROUNDS"); do
  one "A ACCEPT  " "$PA" 18970
  one "B CONTINUE" "$PB" 18972
done
