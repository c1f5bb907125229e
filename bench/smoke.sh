#!/bin/bash
# CI smoke of the benchmark (issue 7): builds the debug binaries (mxsentry + milterload), starts
# target/debug/mxsentry on loopback with a temporary config (DNS checks off, a small access
# file, nothing trusted so every session is checked) and runs the protocol scenario for 10 s
# with milterload. No thresholds: exits non-zero only if a tool failed or the run had errors
# (milterload exits 1 on any session error or when no session completed).
#
#   bash bench/smoke.sh            (SMOKE_SECONDS=10, SMOKE_CONCURRENCY=16)
set -euo pipefail
cd "$(dirname "$0")/.."
: "${SMOKE_SECONDS:=10}"
: "${SMOKE_CONCURRENCY:=16}"
W="$(mktemp -d /tmp/mxsmoke-XXXX)"
MXPID=""
cleanup() {
  local rc=$?
  if [ -n "$MXPID" ]; then
    kill -TERM "$MXPID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$MXPID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$MXPID" 2>/dev/null || true
  fi
  [ $rc -eq 0 ] && rm -rf "$W" || echo "bench/smoke.sh: FAILED (rc $rc); files kept in $W" >&2
  exit $rc
}
trap cleanup EXIT

echo "smoke: cargo build --workspace --bins (debug: mxsentry, and milterload from tools/milterload)"
cargo build --workspace --bins

# A free loopback port (bound and released; the daemon binds it right after).
port_pick() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
  || echo $((18800 + RANDOM % 80)); }
PORT="$(port_pick)"; MPORT="$(port_pick)"

cat > "$W/access" <<'EOT'
From:spammer.example    REJECT
From:user@              REJECT
Connect:10.1.2          REJECT
Connect:IPv6:2001:db8:ffff      REJECT
To:former@example.org   ERROR:5.1.1:"550 User unknown"
EOT
source bench/lib.sh
mx_config "$W/milter.toml" protocol "$PORT" "$MPORT" "$W/access" "$W/greylist.db" "" "" warn
target/debug/mxsentry check-config --config "$W/milter.toml"
target/debug/mxsentry run --config "$W/milter.toml" 2> "$W/mxsentry.log" &
MXPID=$!
for _ in $(seq 1 100); do
  timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$PORT" 2>/dev/null && break
  kill -0 "$MXPID" 2>/dev/null || { cat "$W/mxsentry.log" >&2; echo "smoke: mxsentry exited" >&2; exit 1; }
  sleep 0.1
done

echo "smoke: milterload --duration $SMOKE_SECONDS --concurrency $SMOKE_CONCURRENCY against inet:$PORT@127.0.0.1"
# A sender no rule matches (From:user@ would refuse every "user@..."), 2 recipients, the
# default client list (IPv4 and IPv6 addresses, alternating).
target/debug/milterload --target "inet:$PORT@127.0.0.1" --concurrency "$SMOKE_CONCURRENCY" \
  --duration "$SMOKE_SECONDS" --from "smoke{n}@sender.example" --rcpts 2
kill -0 "$MXPID" 2>/dev/null || { cat "$W/mxsentry.log" >&2; echo "smoke: mxsentry died during the run" >&2; exit 1; }
echo "smoke: OK"
