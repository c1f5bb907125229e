#!/usr/bin/env bash
# DNS prefetch for returning clients (issue 15 item 3): the DNS-latency scenario (every answer
# delayed 100 ms) with a small population of clients that keep coming back, zone TTLs short
# (5 s) so cached answers expire during the run. Runs mxsentry with `[dns] prefetch` off and on
# (prefetch_percent 10, 25 — the default — and 50), plus a floor (hour-long TTLs: every lookup a
# cache hit), and reports for each the latency mxsentry adds before the RCPT reply
# (milterload's `added`: p50/p99/max) and the queries the DNS server got.
#
#   bash bench/dns-prefetch.sh                 # ~3 minutes on 2 cores
#   PF_CLIENTS=100 PF_SECONDS=30 PF_TTL=5 PF_PERCENTS="10 50" bash bench/dns-prefetch.sh
#
#   PF_WARM_CONCURRENCY=16 ...                  # all first visits within 0.3 s (see below)
#
# Checks as in bench/run.sh's latency scenario (bench/lib.sh `checks`: HELO, PTR/FCrDNS with
# `trust_mta = false` so the PTR -> A chain is on the path, 3 DNSBLs, an RHSBL). Each mode gets
# a fresh mxsentry (empty cache); one pass over the clients warms it, then PF_SECONDS of
# sessions are measured: those are all returning clients. The DNS server counts every query
# (SIGUSR1 prints the count); queries / session is the cost. Output: a table on stdout and
# JSON lines in bench/results/dns-prefetch.jsonl.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
: "${PF_CLIENTS:=100}"       # distinct clients, taken in turn
: "${PF_SECONDS:=30}"        # measured run per mode
: "${PF_TTL:=5}"             # TTL of every record and negative answer, seconds
: "${PF_PERCENTS:=10 50}"    # prefetch_percent values to run besides "off"
: "${PF_CONCURRENCY:=16}"
# The warm-up pass runs at this concurrency: slow enough that the first visits (and so the
# answers' expiries) spread over ~3 s, as a real population's arrivals do; all stored within a
# fraction of a second, the answers would come due at once and most refreshes be dropped at the
# bound of 64 (PF_WARM_CONCURRENCY=16 shows that).
: "${PF_WARM_CONCURRENCY:=8}"
PORT=18940; MPORT=18941
W="$(mktemp -d /tmp/mxprefetch-XXXX)"
ML="$ROOT/target/release/milterload"
MX="$ROOT/target/release/mxsentry"
OUT="$ROOT/bench/results"; mkdir -p "$OUT"
JSONL="$OUT/dns-prefetch.jsonl"; : > "$JSONL"
PIDS=()

log() { echo "[dns-prefetch $(date +%T)] $*" >&2; }
die() { echo "dns-prefetch: ERROR: $*" >&2; exit 1; }
cleanup() {
  local rc=$?
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  if [ $rc -ne 0 ]; then log "work directory kept: $W"; else rm -rf "$W"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
start() {  # start NAME CMD...: background, log in $W/NAME.log, pid in $W/NAME.pid
  local name="$1"; shift
  "$@" > "$W/$name.log" 2>&1 &
  PIDS+=("$!"); echo "$!" > "$W/$name.pid"
}
stop() {
  local pid; pid="$(cat "$W/$1.pid")"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}
port_free() { ! timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }
wait_port() {
  for _ in $(seq 1 100); do
    if ! port_free "$1"; then return 0; fi
    sleep 0.1
  done
  cat "$W/$2.log" >&2; die "$2 did not listen on $1"
}
dns_queries() {  # dns_queries MODE: the query count so far of the DNS server MODE uses
  local n s=dns
  [ "$1" = floor ] && s=dns-hour
  n="$(grep -c '^queries' "$W/$s.log" || true)"
  kill -USR1 "$(cat "$W/$s.pid")"
  for _ in $(seq 1 50); do
    [ "$(grep -c '^queries' "$W/$s.log" || true)" -gt "$n" ] && break
    sleep 0.1
  done
  grep -o '^queries [0-9]*' "$W/$s.log" | tail -1 | cut -d' ' -f2
}
metric() {  # metric NAME{LABELS}: its value from mxsentry's /metrics, 0 if absent
  curl -s "http://127.0.0.1:$MPORT/metrics" | awk -v k="$1" '$1 == k { print $2; found = 1 } END { if (!found) print 0 }'
}

for p in $PORT $MPORT; do port_free "$p" || die "port 127.0.0.1:$p is in use"; done
log "build: cargo build --release --workspace --bins"
cargo build --release --workspace --bins >"$W/build.log" 2>&1 || { tail -30 "$W/build.log" >&2; die "build failed"; }

# Zone and clients: bench/gen.py's layout (PTR, A/AAAA, 3 DNSBLs and the RHSBL answering
# NXDOMAIN, every answer 100 ms late), with PF_TTL instead of an hour.
python3 - "$W" "$PF_CLIENTS" "$PF_TTL" <<'EOF'
import os, sys
sys.path.insert(0, os.path.join(os.getcwd(), "bench"))
import gen
out, count, ttl = sys.argv[1], int(sys.argv[2]), sys.argv[3]
clients = gen.clients(count, "198.18.0.0/16", "2001:db8:200::/64", "back.test")
gen.zone(os.path.join(out, "zone"), clients, "100ms")
gen.clients_file(os.path.join(out, "clients"), clients)
gen.access(os.path.join(out, "access"), 1000)
text = open(os.path.join(out, "zone")).read()
open(os.path.join(out, "zone-hour"), "w").write(text)  # the floor: every answer stays cached
text = text.replace("$NEGATIVE_TTL 3600", f"$NEGATIVE_TTL {ttl}").replace(" 3600 ", f" {ttl} ")
open(os.path.join(out, "zone"), "w").write(text)
EOF
grep -q "^\$NEGATIVE_TTL $PF_TTL\$" "$W/zone" || die "zone TTLs not rewritten"

start dns "$ML" --dns-zone "$W/zone" --dns-addr-file "$W/dns.addr" --dns-only
for _ in $(seq 1 100); do [ -s "$W/dns.addr" ] && break; sleep 0.1; done
[ -s "$W/dns.addr" ] || die "DNS server did not start: $(cat "$W/dns.log")"
start dns-hour "$ML" --dns-zone "$W/zone-hour" --dns-addr-file "$W/dns-hour.addr" --dns-only
for _ in $(seq 1 100); do [ -s "$W/dns-hour.addr" ] && break; sleep 0.1; done
[ -s "$W/dns-hour.addr" ] || die "DNS server did not start: $(cat "$W/dns-hour.log")"
source "$ROOT/bench/lib.sh"

load=(--target "inet:$PORT@127.0.0.1" --mta postfix --gap-ms 20 --clients "$W/clients")
printf '%-12s %9s %10s %10s %10s %10s %12s %s\n' mode sessions "p50_ms" "p99_ms" "max_ms" queries "queries/sess" "prefetch started/refreshed/dropped" 
# floor: TTLs of an hour, so every lookup of the measured run is a cache hit (what this machine
# adds without any DNS wait); off: 5 s TTLs without prefetch; then each prefetch_percent.
for mode in floor off $PF_PERCENTS; do
  dns="$W/dns.addr"; [ "$mode" = floor ] && dns="$W/dns-hour.addr"
  f="$W/mx-$mode.toml"
  mx_config "$f" checks "$PORT" "$MPORT" "$W/access" "$W/greylist-$mode.db" "$(cat "$dns")" "" warn \
    || die "cannot write $f"
  sed -i 's/^dynamic = "greylist"$/dynamic = "greylist"\ntrust_mta = false/' "$f"
  if [ "$mode" = off ] || [ "$mode" = floor ]; then
    sed -i 's/^timeout = "3s"$/timeout = "3s"\nprefetch = false/' "$f"
  else
    sed -i "s/^timeout = \"3s\"\$/timeout = \"3s\"\nprefetch = true\nprefetch_percent = $mode/" "$f"
  fi
  grep -q '^trust_mta = false' "$f" && grep -q '^prefetch = ' "$f" || die "config edits failed: $f"
  "$MX" check-config --config "$f" >/dev/null || die "bad config $f"
  start "mx-$mode" "$MX" run --config "$f"
  wait_port "$PORT" "mx-$mode"
  log "prefetch $mode: warm-up pass over $PF_CLIENTS clients"
  "$ML" --json "${load[@]}" --concurrency "$PF_WARM_CONCURRENCY" --sessions "$PF_CLIENTS" \
    >/dev/null 2>>"$W/milterload.err"
  q0="$(dns_queries "$mode")"
  log "prefetch $mode: $PF_SECONDS s of returning clients"
  out="$("$ML" --json "${load[@]}" --concurrency "$PF_CONCURRENCY" --duration "$PF_SECONDS" --client-offset 0 2>>"$W/milterload.err")" \
    || die "milterload failed: $(tail -3 "$W/milterload.err")"
  q1="$(dns_queries "$mode")"
  started="$(metric 'mxsentry_dns_prefetch_total{result="started"}')"
  refreshed="$(metric 'mxsentry_dns_prefetch_total{result="refreshed"}')"
  dropped="$(metric 'mxsentry_dns_prefetch_total{result="dropped"}')"
  hits="$(metric 'mxsentry_dns_cache_lookups_total{result="hit"}')"
  misses="$(metric 'mxsentry_dns_cache_lookups_total{result="miss"}')"
  stop "mx-$mode"
  ttl=$PF_TTL; [ "$mode" = floor ] && ttl=3600
  echo "{\"mode\":\"$mode\",\"clients\":$PF_CLIENTS,\"ttl\":$ttl,\"queries\":$((q1 - q0)),\"prefetch_started\":$started,\"prefetch_refreshed\":$refreshed,\"prefetch_dropped\":$dropped,\"cache_hits\":$hits,\"cache_misses\":$misses,\"ml\":$out}" >> "$JSONL"
  python3 - "$mode" "$((q1 - q0))" "$started/$refreshed/$dropped" <<EOF
import json, sys
mode, q, pf = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ml = json.loads('''$out''')
a = ml["stages"]["added"]
n = ml["sessions"]
print(f"{mode:<12} {n:>9} {a['p50_us']/1000:>10.1f} {a['p99_us']/1000:>10.1f} {a['max_us']/1000:>10.1f} {q:>10} {q/n:>12.2f} {pf}  ({ml['sessions_per_sec']:.0f} sessions/s, errors {ml['errors']})")
EOF
done
log "results: $JSONL"
