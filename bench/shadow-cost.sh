#!/usr/bin/env bash
# The per-session cost of a shadow policy (issue 13 item 2), on the release binary, DNS checks on
# and warm (a loopback DNS server, the resolver's cache filled by the first round):
#   A: rDNS/FCrDNS checks, one DNS block list (bl.bench), an access file; no shadow
#   B: A with [shadow] config = A's own file (identical candidate: it decides from the
#      session's lookups, no query of its own)
#   C: A with a candidate that adds a second list (bl2.bench, listing every 10th client): the
#      candidate has lookups of its own (through the same resolver and cache)
# Usage: cargo build --release --workspace && bash bench/shadow-cost.sh [SESSIONS] [ROUNDS]
# Prints sessions/s and the filter's CPU µs per session for each, ROUNDS times interleaved.
set -euo pipefail
cd "$(dirname "$0")/.."
MX=target/release/mxsentry ML=target/release/milterload
SESSIONS="${1:-10000}" ROUNDS="${2:-3}"
W="$(mktemp -d)"; PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$W"' EXIT

# 200 clients with forward-confirmed names; every 10th one listed in bl2.bench only.
: > "$W/zone"; : > "$W/clients"
for i in $(seq 1 200); do
  echo "$i.2.0.192.in-addr.arpa PTR host$i.clients.bench" >> "$W/zone"
  echo "host$i.clients.bench A 192.0.2.$i" >> "$W/zone"
  echo "192.0.2.$i host$i.clients.bench host$i.clients.bench" >> "$W/clients"
  if [ $((i % 10)) = 0 ]; then echo "$i.2.0.192.bl2.bench A 127.0.0.2" >> "$W/zone"; fi
done
"$ML" --dns-zone "$W/zone" --dns-addr-file "$W/dns.addr" --dns-only > "$W/dns.log" 2>&1 & PIDS+=($!)
for _ in $(seq 1 100); do [ -s "$W/dns.addr" ] && break; sleep 0.1; done
[ -s "$W/dns.addr" ] || { echo "DNS server did not start: $(cat "$W/dns.log")" >&2; exit 1; }
printf 'From:spammer@bad.example REJECT\nConnect:198.51.100.7 REJECT\n' > "$W/access"

conf() {  # conf NAME PORT METRICS EXTRA
  cat > "$W/$1.toml" <<TOML
[milter]
listen = "inet:$2@127.0.0.1"
hostname = "mx.bench.example"
[log]
level = "warn"
[dns]
nameservers = ["$(cat "$W/dns.addr")"]
timeout = "2s"
[rdns]
dynamic = "log"
[[dnsbl.zones]]
zone = "bl.bench"
$4
[greylist]
enabled = false
path = "$W/$1.db"
[sender_rules]
access_file = "$W/access"
[metrics]
listen = "127.0.0.1:$3"
[control]
socket = "off"
TOML
}
conf a 18960 18961 ""
conf cand-c 18966 18967 "$(printf '[[dnsbl.zones]]\nzone = "bl2.bench"\n')"
conf b 18962 18963 ""; printf '[shadow]\nconfig = "%s"\n' "$W/a.toml" >> "$W/b.toml"
conf c 18964 18965 ""; printf '[shadow]\nconfig = "%s"\n' "$W/cand-c.toml" >> "$W/c.toml"
for n in a b c; do
  "$MX" check-config --config "$W/$n.toml" >/dev/null
  "$MX" run --config "$W/$n.toml" 2>"$W/$n.log" & PIDS+=($!)
done
PA=${PIDS[1]} PB=${PIDS[2]} PC=${PIDS[3]}
sleep 1
cpu() { awk '{ split($0, a, ") "); split(a[2], f, " "); print f[12] + f[13] }' "/proc/$1/stat"; }
one() {  # one NAME PID PORT
  local c0 c1 out
  c0="$(cpu "$2")"
  out="$("$ML" --target "inet:$3@127.0.0.1" --concurrency 16 --sessions "$SESSIONS" \
    --clients "$W/clients" --json)"
  c1="$(cpu "$2")"
  python3 - "$1" "$out" "$c0" "$c1" "$SESSIONS" <<'PY'
import json, sys
name, out, c0, c1, n = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
print(f"{name}: {out['sessions_per_sec']:,.0f} sessions/s, filter CPU {(c1 - c0) * 10000 / n:.0f} µs/session, replies {out['replies']}, errors {out['errors']}")
PY
}
# Warm-up: fills each daemon's resolver cache.
for p in 18960 18962 18964; do
  "$ML" --target "inet:$p@127.0.0.1" --sessions 400 --clients "$W/clients" > /dev/null
done
for _ in $(seq 1 "$ROUNDS"); do
  one "A no shadow          " "$PA" 18960
  one "B identical shadow   " "$PB" 18962
  one "C shadow + 1 DNSBL   " "$PC" 18964
done
m() { curl -s "http://127.0.0.1:$1/metrics" | grep '^mxsentry_shadow_verdicts_total' | tr '\n' ' '; }
echo "B shadow verdicts: $(m 18963)"
echo "C shadow verdicts: $(m 18965)"
