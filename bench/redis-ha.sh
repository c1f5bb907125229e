#!/bin/bash
# Greylist decisions through the milter with the store on Redis (issue 14): decisions/s and the
# RCPT reply p99 with 1 and 2 mxsentry daemons on one Redis, on Sentinel (primary + replica +
# three sentinels) and on a 3-node Redis Cluster; then the fail-open window of a Sentinel
# failover (SIGKILL of the primary under load -> first new triplet stored on the new primary).
# Every session is a new triplet (milterload --unique-from), so every decision is a store
# round trip (GET + compare-and-set). Release build; loopback; redis-server, redis-cli, python3.
#
#   bash bench/redis-ha.sh          (RUN_SECONDS=10 CONCURRENCY=16 DAEMONS="1 2")
# Prints one line per setup; the processes it starts are stopped by PID at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${RUN_SECONDS:=10}"
: "${CONCURRENCY:=16}"
: "${DAEMONS:=1 2}"
W="$(mktemp -d /tmp/mxredisha-XXXX)"
PIDS=()
cleanup() {
  local rc=$?
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  [ $rc -eq 0 ] && rm -rf "$W" || echo "redis-ha: FAILED (rc $rc); files kept in $W" >&2
  exit $rc
}
trap cleanup EXIT

cargo build --release --workspace --bins >&2
MX=target/release/mxsentry
LOAD=target/release/milterload

# A free loopback port below 55000 (a cluster node's bus port is its port + 10000).
port_pick() { python3 -c '
import socket
while True:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]
    if p < 55000: print(p); break'; }
wait_port() { for _ in $(seq 1 200); do timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }

# redis PORT [args...]: a redis-server in its own directory; its PID is kept for the cleanup.
redis() {
  local port="$1"; shift
  mkdir -p "$W/redis-$port"
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize no \
    --dir "$W/redis-$port" "$@" > "$W/redis-$port/log" 2>&1 &
  PIDS+=($!)
  eval "REDIS_PID_$port=$!"
  wait_port "$port"
}

sentinel() {
  local port="$1" master_port="$2"
  mkdir -p "$W/sentinel-$port"
  printf 'sentinel monitor mxs 127.0.0.1 %s 2\nsentinel down-after-milliseconds mxs 1000\nsentinel failover-timeout mxs 5000\n' \
    "$master_port" > "$W/sentinel-$port/sentinel.conf"
  redis-server "$W/sentinel-$port/sentinel.conf" --sentinel --port "$port" --bind 127.0.0.1 \
    --dir "$W/sentinel-$port" > "$W/sentinel-$port/log" 2>&1 &
  PIDS+=($!)
  wait_port "$port"
}

# daemon NAME GREYLIST-KEYS: starts a daemon; its milter port in DPORT, its PID in DPID.
daemon() {
  local name="$1" keys="$2" port mport
  port="$(port_pick)"; mport="$(port_pick)"
  cat > "$W/$name.toml" <<EOT
[milter]
listen = "inet:$port@127.0.0.1"
hostname = "mx.bench.test"
max_connections = 12000
[trusted]
networks = []
[dns]
nameservers = ["127.0.0.1:9"]
[helo]
action = "off"
[rdns]
no_ptr = "off"
forged = "off"
dynamic = "off"
[greylist]
enabled = true
delay = "5m"
client_autowhite_after = 0
ipv4_prefix = 32
ipv6_prefix = 128
store = "redis"
$keys
[metrics]
listen = "127.0.0.1:$mport"
[log]
level = "warn"
EOT
  $MX check-config --config "$W/$name.toml" >&2
  $MX run --config "$W/$name.toml" > /dev/null 2> "$W/$name.log" &
  DPID=$!
  PIDS+=($DPID)
  wait_port "$port"
  DPORT="$port"
}

# daemons N NAME GREYLIST-KEYS: N daemons; ports in DPORTS, PIDs in DPIDS.
daemons() {
  DPORTS=(); DPIDS=()
  for i in $(seq 1 "$1"); do daemon "$2-$1-$i" "$3"; DPORTS+=("$DPORT"); DPIDS+=("$DPID"); done
}

# measure LABEL PORT...: one milterload per daemon at once; sums the rates, worst p99.
measure() {
  local label="$1"; shift
  local i=0 files=() loads=()
  for port in "$@"; do
    i=$((i + 1))
    $LOAD --target "inet:$port@127.0.0.1" --concurrency "$CONCURRENCY" --duration "$RUN_SECONDS" \
      --unique-from --run-id "run$(date +%s%N | tr 0-9 a-j)x$(echo "$i" | tr 0-9 a-j)" --json > "$W/load-$i.json" &
    loads+=($!)
    files+=("$W/load-$i.json")
  done
  for l in "${loads[@]}"; do wait "$l" || true; done
  python3 - "$label" "${files[@]}" <<'EOT'
import json, sys
label, files = sys.argv[1], sys.argv[2:]
runs = [json.load(open(f)) for f in files]
rate = sum(r["sessions_per_sec"] for r in runs)
p99 = max(r["stages"]["rcpt"]["p99_us"] for r in runs) / 1000
replies = {}
for r in runs:
    for k, v in r["replies"].items():
        replies[k] = replies.get(k, 0) + v
errors = sum(r["errors"] for r in runs)
print(f"{label:<28} {len(runs)} daemon(s): {rate:8.0f} decisions/s  RCPT p99 {p99:6.2f} ms  errors {errors}  replies {replies}")
EOT
}

stop_daemons() { for p in "${DPIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; sleep 0.5; }

echo "redis-ha: $RUN_SECONDS s per run, concurrency $CONCURRENCY per daemon, $(nproc) cores"

# --- one Redis
R="$(port_pick)"; redis "$R"
for n in $DAEMONS; do
  daemons "$n" single "redis_url = \"redis://127.0.0.1:$R/0\""
  measure "one redis" "${DPORTS[@]}"; stop_daemons
done

# --- Sentinel
P="$(port_pick)"; redis "$P"
Q="$(port_pick)"; redis "$Q" --replicaof 127.0.0.1 "$P"
S=(); for _ in 1 2 3; do s="$(port_pick)"; sentinel "$s" "$P"; S+=("$s"); done
SENTINELS="redis_sentinels = [\"redis://127.0.0.1:${S[0]}\", \"redis://127.0.0.1:${S[1]}\", \"redis://127.0.0.1:${S[2]}\"]
redis_master = \"mxs\""
sleep 5 # sentinels find each other and the replica (hello every 2 s)
for n in $DAEMONS; do
  daemons "$n" sentinel "$SENTINELS"
  measure "sentinel" "${DPORTS[@]}"; stop_daemons
done

# --- 3-node Cluster
C=(); for _ in 1 2 3; do c="$(port_pick)"; redis "$c" --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 5000; C+=("$c"); done
redis-cli --cluster create "127.0.0.1:${C[0]}" "127.0.0.1:${C[1]}" "127.0.0.1:${C[2]}" --cluster-yes > "$W/cluster-create.log"
for c in "${C[@]}"; do for _ in $(seq 1 100); do redis-cli -p "$c" cluster info | grep -q cluster_state:ok && break; sleep 0.1; done; done
CLUSTER="redis_cluster = [\"redis://127.0.0.1:${C[0]}\", \"redis://127.0.0.1:${C[1]}\", \"redis://127.0.0.1:${C[2]}\"]"
for n in $DAEMONS; do
  daemons "$n" cluster "$CLUSTER"
  measure "cluster (3 primaries)" "${DPORTS[@]}"; stop_daemons
done
echo "cluster keys per node: $(for c in "${C[@]}"; do redis-cli -p "$c" dbsize; done | tr '\n' ' ')"

# --- Sentinel failover: the fail-open window.
daemon failover "$SENTINELS"; FP="$DPORT"
$LOAD --target "inet:$FP@127.0.0.1" --concurrency 4 --duration 30 --unique-from --run-id failoverload --json > "$W/failover-load.json" &
LOADPID=$!
sleep 2
before="$(redis-cli -p "$Q" dbsize)"
eval "kill -KILL \$REDIS_PID_$P"
t0="$(date +%s.%N)"
# The first decision stored on the new primary: the replica (promoted) gains keys again.
while :; do
  role="$(redis-cli -p "$Q" role 2>/dev/null | head -1)"
  now_keys="$(redis-cli -p "$Q" dbsize 2>/dev/null || echo 0)"
  if [ "$role" = master ] && [ "$now_keys" -gt "$before" ]; then break; fi
  before="$now_keys"
  sleep 0.02
done
t1="$(date +%s.%N)"
echo "sentinel failover: fail-open window $(python3 -c "print(f'{$t1 - $t0:.2f}')") s (SIGKILL of the primary -> first decision stored on the new primary; down-after-milliseconds 1000)"
wait "$LOADPID" || true
python3 - "$W/failover-load.json" <<'EOT'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"failover load: {r['sessions']} sessions in {r['seconds']} s, errors {r['errors']}, replies {r['replies']}, RCPT max {r['stages']['rcpt']['max_us']/1000:.1f} ms")
EOT
