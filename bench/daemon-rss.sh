#!/bin/sh
# The daemon's memory on an embedded store of N greylist entries (default 10,000,000): the store
# is filled by importing a generated milter-greylist dump (bench/mg_dump.py), the daemon started
# on it, then milterload runs new-triplet sessions (each a store write) for SECS seconds at
# concurrency C. Prints the daemon's RSS (VmRSS) after it opened the store, the highest RSS
# sampled every 0.2 s under load, VmHWM, and RSS idle 5 s after the load.
# Usage: bench/daemon-rss.sh [N] [SECS] [C] [BINARY]   (needs target/release/milterload)
set -eu
n=${1:-10000000}
secs=${2:-30}
conc=${3:-8}
bin=${4:-target/release/mxsentry}
load=target/release/milterload
work=$(mktemp -d)
daemon=
# Stop the daemon and wait for it before removing its store.
trap '[ -z "$daemon" ] || { kill $daemon 2>/dev/null; wait $daemon 2>/dev/null; }; rm -rf "$work"' EXIT
python3 "$(dirname "$0")/mg_dump.py" "$n" "$work/dump"
# bench/lib.sh's configuration without DNS lookups, greylisting on, a control socket.
. "$(dirname "$0")/lib.sh"
: >"$work/access"
mx_config "$work/milter.toml" protocol 18962 18963 "$work/access" "$work/store.db"
sed -i 's/^enabled = false$/enabled = true/' "$work/milter.toml"
printf '[control]\nsocket = "%s/control.sock"\n' "$work" >>"$work/milter.toml"
"$bin" check-config --config "$work/milter.toml" >/dev/null
t=$(date +%s.%N)
"$bin" greylist import milter-greylist "$work/dump" --config "$work/milter.toml" | grep -v "^note:" || true
echo "import: $(python3 -c "print(round($(date +%s.%N) - $t, 1))") s; store $(du -sm "$work/store.db" | cut -f1) MB"
rm -f "$work/dump"
"$bin" run --config "$work/milter.toml" >"$work/daemon.log" 2>&1 &
daemon=$!
i=0; while [ ! -S "$work/control.sock" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
rss() { awk -v k="$1:" '$1 == k {print int($2 / 1024)}' /proc/$daemon/status; }
sleep 1
echo "daemon on $n entries: RSS $(rss VmRSS) MB after opening the store"
"$load" --target inet:18962@127.0.0.1 --concurrency "$conc" --duration "$secs" --unique-from \
  >"$work/load.txt" 2>&1 &
gen=$!
peak=0
while kill -0 $gen 2>/dev/null; do
  r=$(rss VmRSS); [ "$r" -gt "$peak" ] && peak=$r
  sleep 0.2
done
wait $gen || { cat "$work/load.txt" >&2; exit 1; }
head -1 "$work/load.txt"
grep 'reply' "$work/load.txt" | head -3
grep -E '^(latency|rcpt) ' "$work/load.txt"
echo "under load: highest RSS sampled $peak MB, RSS at the end $(rss VmRSS) MB, VmHWM $(rss VmHWM) MB"
sleep 5
echo "5 s after the load: RSS $(rss VmRSS) MB; $("$bin" status --config "$work/milter.toml" | grep -i 'entries\|store' | head -2 | tr '\n' ' ')"
# The store's latency under the load, from the daemon's histogram.
python3 - <<'EOT'
import re, urllib.request
text = urllib.request.urlopen("http://127.0.0.1:18963/metrics", timeout=10).read().decode()
buckets = {}
for line in text.splitlines():
    m = re.match(r'mxsentry_greylist_operation_duration_seconds_bucket\{(.*)\} (\d+)$', line)
    if m:
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        le = float("inf") if labels["le"] == "+Inf" else float(labels["le"])
        buckets.setdefault(labels["op"], []).append((le, int(m.group(2))))
for op in ("lookup", "record"):
    b = sorted(buckets.get(op, []))
    if not b:
        continue
    total = b[-1][1]
    over = lambda s: total - max(c for le, c in b if le <= s)
    p999 = next(le for le, c in b if c >= total * 0.999)
    print(f"store {op}: {total} operations; above 1 ms {over(0.001)}, above 2 ms {over(0.002)} "
          f"({100 * over(0.002) / max(total, 1):.3f} %), above 5 ms {over(0.005)}; p99.9 <= {p999 * 1000:g} ms")
EOT
