#!/bin/sh
# Time of `mxsentry greylist import milter-greylist` for a generated milter-greylist 4.6 dump of
# N tuples (default 1,000,000; 80% greylisted, 20% AUTO), into the embedded store.
# Usage: bench/milter-greylist-import.sh [N] [BINARY]
# LIVE=1: import through a running daemon (control socket) instead of into the stopped store.
set -eu
n=${1:-1000000}
bin=${2:-target/release/mxsentry}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 "$(dirname "$0")/mg_dump.py" "$n" "$work/greylist.db"
printf '[greylist]\npath = "%s/store.db"\npool_by_rdns = false\nipv4_prefix = 32\n[control]\nsocket = "%s/control.sock"\n' "$work" "$work" >"$work/milter.toml"
daemon=
if [ "${LIVE:-0}" = 1 ]; then
  printf '[milter]\nlisten = "inet:18961@127.0.0.1"\n[metrics]\nlisten = "off"\n[dns]\nnameservers = ["127.0.0.1:9"]\n' >>"$work/milter.toml"
  "$bin" run --config "$work/milter.toml" 2>"$work/daemon.log" &
  daemon=$!
  trap 'kill $daemon 2>/dev/null; wait $daemon 2>/dev/null; rm -rf "$work"' EXIT
  i=0; while [ ! -S "$work/control.sock" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
fi
start=$(date +%s.%N)
"$bin" greylist import milter-greylist "$work/greylist.db" --config "$work/milter.toml"
end=$(date +%s.%N)
[ -z "$daemon" ] || "$bin" status --config "$work/milter.toml" | grep -i entries
echo "import of $n milter-greylist tuples: $(python3 -c "print(round($end - $start, 1))") s (load: $(cut -d' ' -f1-3 /proc/loadavg))"
