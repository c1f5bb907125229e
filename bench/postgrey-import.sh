#!/bin/sh
# Time of `mxsentry greylist import postgrey` for N postgrey entries (default 1,000,000) into
# the embedded store. postgrey.db is made with db_load from a generated db_dump text (2/3
# passed triplets, 1/3 pending, all seen within the last two days; 10,000 clients at the
# autowhitelist threshold). Needs db5.3-util. Usage: bench/postgrey-import.sh [N] [BINARY]
# LIVE=1: import through a running daemon (control socket) instead of into the stopped store.
set -eu
n=${1:-1000000}
bin=${2:-target/release/mxsentry}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$n" "$work" <<'PY'
import sys, time
n, work = int(sys.argv[1]), sys.argv[2]
now = int(time.time())
head = "VERSION=3\nformat=bytevalue\ntype=btree\ndb_pagesize=4096\nHEADER=END\n"
def line(text):
    return " " + text.encode().hex() + "\n"
with open(work + "/triplets.txt", "w") as f:
    f.write(head)
    for i in range(n):
        net = "10.%d.%d.0" % ((i >> 16) & 255, (i >> 8) & 255)
        first = now - 86400 - (i % 50000)
        last = first + (600 if i % 3 else 10)
        f.write(line("%s/sender%d@example.com/rcpt%d@example.org" % (net, i, i % 1000)))
        f.write(line("%d,%d" % (first, last)))
    f.write("DATA=END\n")
with open(work + "/clients.txt", "w") as f:
    f.write(head)
    for i in range(10000):
        f.write(line("172.16.%d.%d" % (i >> 8, i & 255)) + line("%d,%d" % (5 + i % 3, now - 3600)))
    f.write("DATA=END\n")
PY
mkdir "$work/postgrey"
db5.3_load -f "$work/triplets.txt" "$work/postgrey/postgrey.db"
db5.3_load -f "$work/clients.txt" "$work/postgrey/postgrey_clients.db"
printf '[greylist]\npath = "%s/greylist.db"\nautowhite = "35d"\npool_by_rdns = false\n[control]\nsocket = "%s/control.sock"\n' "$work" "$work" >"$work/milter.toml"
daemon=
if [ "${LIVE:-0}" = 1 ]; then
  printf '[milter]\nlisten = "inet:18960@127.0.0.1"\n[metrics]\nlisten = "off"\n[dns]\nnameservers = ["127.0.0.1:9"]\n' >>"$work/milter.toml"
  "$bin" run --config "$work/milter.toml" 2>"$work/daemon.log" &
  daemon=$!
  trap 'kill $daemon 2>/dev/null; wait $daemon 2>/dev/null; rm -rf "$work"' EXIT
  i=0; while [ ! -S "$work/control.sock" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
fi
start=$(date +%s.%N)
"$bin" greylist import postgrey "$work/postgrey" --config "$work/milter.toml"
end=$(date +%s.%N)
[ -z "$daemon" ] || "$bin" status --config "$work/milter.toml" | grep -i entries
echo "import of $n postgrey entries: $(python3 -c "print(round($end - $start, 1))") s (load: $(cut -d' ' -f1-3 /proc/loadavg))"
