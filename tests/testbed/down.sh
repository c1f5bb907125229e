#!/bin/bash
# Stop everything started by up.sh: down.sh STATE_DIR  (state is kept for inspection; rm -rf it yourself)
. "$(dirname "$0")/lib.sh"
[ -n "${1:-${TESTBED_DIR:-}}" ] || die "usage: $0 STATE_DIR"
D="${1:-$TESTBED_DIR}"
for c in sendmail postfix dns; do bash "$TB_ROOT/$c/stop.sh" "$D" || true; done
