#!/bin/bash
# Start the test bed (DNS, postfix, sendmail) in one state dir: up.sh [STATE_DIR]
# The milter under test (mxsentry) is started separately (tests/e2e/lib.sh) on $MILTER_ADDR:$MILTER_PORT.
# Set TB_NO_SENDMAIL=1 / TB_NO_POSTFIX=1 to skip one MTA.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
D="$(tb_dir "${1:-}")"
bash "$TB_ROOT/dns/start.sh" "$D" >/dev/null
[ "${TB_NO_POSTFIX:-0}" = 1 ] || bash "$TB_ROOT/postfix/start.sh" "$D" >/dev/null
[ "${TB_NO_SENDMAIL:-0}" = 1 ] || bash "$TB_ROOT/sendmail/start.sh" "$D" >/dev/null
echo "TESTBED_DIR=$D"
