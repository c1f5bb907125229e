#!/bin/bash
# Replay speed: a LINES-line JSON decision log (bench/replay-log.py) replayed with --no-dns by
# the release binary under a NEW config (bl.test, greylisting, an access file of 3 rules).
# Prints lines/s and the replay's peak RSS (it streams: memory must not grow with the log).
#   bash bench/replay.sh [LINES=1000000]
set -euo pipefail
LINES="${1:-1000000}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="$ROOT/target/release/mxsentry"
[ -x "$BIN" ] || { echo "build it first: cargo build --release" >&2; exit 1; }
W="$(mktemp -d /tmp/mxsentry-replay-XXXX)"
trap 'rm -rf "$W"' EXIT
python3 "$ROOT/bench/replay-log.py" "$LINES" > "$W/big.log"
printf 'From:user1@sender1.example REJECT\nConnect:10.1.2 REJECT\nTo:rcpt7@example.org REJECT\n' > "$W/access"
cat > "$W/new.toml" <<TOML
[milter]
hostname = "mx.example.org"
[sender_rules]
access_file = "$W/access"
[dns]
nameservers = ["127.0.0.1:9"]
[control]
socket = "off"
[greylist]
enabled = true
path = "$W/never-opened.db"
[[dnsbl.zones]]
zone = "bl.test"
TOML
echo "log: $LINES lines, $(du -h "$W/big.log" | cut -f1)"
start=$(date +%s.%N)
/usr/bin/time -f "%M" -o "$W/rss" "$BIN" replay --config "$W/new.toml" --log "$W/big.log" --no-dns > "$W/out"
end=$(date +%s.%N)
tail -n 6 "$W/out"
awk -v s="$start" -v e="$end" -v n="$LINES" -v rss="$(cat "$W/rss")" \
  'BEGIN { printf "replay: %.2f s, %.0f lines/s, peak RSS %d KiB\n", e - s, n / (e - s), rss }'
