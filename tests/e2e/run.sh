#!/bin/bash
# Runs every end-to-end suite against the real mxsentry daemon, in one fresh state dir:
#   starts the test DNS, mxsentry (target/debug/mxsentry, or $MXSENTRY_BIN), Postfix and sendmail
#   (tests/testbed/, all on loopback), runs cli.sh, miltertest.sh, postfix*.sh, sendmail.sh, checks
#   that mxsentry exits on SIGTERM, stops everything it started (always: trap, even on failure or ^C)
#   and prints "N passed, M failed" as its last line; exit status 1 on any failure.
# Needs root and the packages of tests/testbed/install.sh. Knobs: MXSENTRY_BIN, E2E_KEEP=1 (keep the
# state dir), E2E_SUITES="cli miltertest" (subset), E2E_PORT_OFFSET=N or MILTER_PORT/PF_PORT/... (lib.sh).
set -uo pipefail
. "$(dirname "$0")/lib.sh"      # (picks a free port set: E2E_PORT_OFFSET)
T0=$SECONDS
TOTAL_PASS=0; TOTAL_FAIL=0
SUITES="${E2E_SUITES:-cli miltertest postfix postfix_dns postfix_health postfix_greylist postfix_control postfix_overflow postfix_shadow postfix_replay sendmail}"

fatal() { echo "FAIL - $*"; echo "e2e: aborted"; echo "0 passed, 1 failed"; exit 1; }

# --- preflight: clear messages instead of obscure failures later ---
[ "$(id -u)" = 0 ] || fatal "the e2e tests must run as root (postfix, sendmail and unshare need it)"
[ -x "$MXSENTRY_BIN" ] || fatal "$MXSENTRY_BIN not found: run 'cargo build' first"
missing=()
for t in miltertest swaks postconf postfix m4 dig unshare setsid "$SYS_PY"; do
  command -v "$t" >/dev/null 2>&1 || missing+=("$t")
done
[ -x "$SENDMAIL_ROOT/usr/libexec/sendmail/sendmail" ] || missing+=("sendmail in $SENDMAIL_ROOT")
[ -f /usr/share/sendmail/cf/m4/cf.m4 ] || missing+=("sendmail-cf")
"$SYS_PY" -c 'import dnslib' 2>/dev/null || missing+=("python3-dnslib")
[ ${#missing[@]} -eq 0 ] || fatal "missing: ${missing[*]} -- run: bash tests/testbed/install.sh"

D="$(mktemp -d /tmp/mxsentry-e2e-XXXX)"; chmod 755 "$D"
export E2E_STATE="$D" MXSENTRY_BIN
RUNNING=()
cleanup() {
  local i
  for (( i=${#RUNNING[@]}-1; i>=0; i-- )); do e2e_stop "${RUNNING[$i]}" || true; done
  RUNNING=()
}
on_exit() {
  local rc=$?
  trap - EXIT
  cleanup
  if [ "$rc" -ne 0 ] || [ "${E2E_KEEP:-0}" = 1 ]; then echo "# state kept in $D" >&2; else rm -rf "$D"; fi
  exit "$rc"
}
trap on_exit EXIT
trap 'echo "# interrupted" >&2; exit 130' INT TERM HUP
echo "# e2e state dir $D; daemon $MXSENTRY_BIN; ports: milter $MILTER_PORT, dns $DNS_PORT, postfix $PF_PORT, sendmail $SM_PORT (offset $E2E_PORT_OFFSET)"

# --- start the bed + daemon once for all suites ---
declare -A UP=()
for c in dns daemon postfix sendmail; do
  RUNNING+=("$c")
  t=$SECONDS
  if e2e_start "$c"; then
    UP[$c]=1; echo "# started $c ($((SECONDS - t))s)"
  else
    echo "FAIL - start $c"; TOTAL_FAIL=$((TOTAL_FAIL + 1))
  fi
done

needs() {   # needs SUITE -> components it uses
  case "$1" in
    cli) echo "" ;;
    miltertest) echo "dns daemon" ;;
    postfix|postfix_dns|postfix_health|postfix_greylist|postfix_control|postfix_overflow|postfix_shadow|postfix_replay) echo "dns daemon postfix" ;;
    sendmail) echo "dns daemon sendmail" ;;
  esac
}

for s in $SUITES; do
  missing=""
  for c in $(needs "$s"); do [ -n "${UP[$c]:-}" ] || missing="$missing $c"; done
  echo "# ---- suite $s"
  if [ -n "$missing" ]; then
    echo "FAIL - suite $s skipped: not running:$missing"; TOTAL_FAIL=$((TOTAL_FAIL + 1)); continue
  fi
  t=$SECONDS
  timeout 1800 bash "$E2E_DIR/$s.sh" 2>&1 | tee "$D/suite-$s.out"
  rc=${PIPESTATUS[0]}
  summary="$(grep -E "^$s: [0-9]+ passed, [0-9]+ failed$" "$D/suite-$s.out" | tail -n 1)"
  if [ -z "$summary" ]; then
    echo "FAIL - suite $s ended without a summary (exit $rc)"; TOTAL_FAIL=$((TOTAL_FAIL + 1)); continue
  fi
  p="$(sed -E 's/.*: ([0-9]+) passed.*/\1/' <<<"$summary")"; f="$(sed -E 's/.* ([0-9]+) failed$/\1/' <<<"$summary")"
  TOTAL_PASS=$((TOTAL_PASS + p)); TOTAL_FAIL=$((TOTAL_FAIL + f))
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
    echo "FAIL - suite $s exited $rc"; TOTAL_FAIL=$((TOTAL_FAIL + 1))
  fi
  echo "# suite $s took $((SECONDS - t))s"
done

# --- the daemon shuts down on SIGTERM (graceful drain), within a bounded time ---
if [ -n "${UP[daemon]:-}" ]; then
  pid="$(head -n1 "$D/mxsentry/pid" 2>/dev/null)"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    if wait_for 20 bash -c "! kill -0 $pid 2>/dev/null"; then
      echo "ok   - mxsentry exits on SIGTERM"; TOTAL_PASS=$((TOTAL_PASS + 1))
    else
      echo "FAIL - mxsentry still running 20s after SIGTERM"; TOTAL_FAIL=$((TOTAL_FAIL + 1))
    fi
  else
    echo "FAIL - mxsentry was not running at the end of the tests"; TOTAL_FAIL=$((TOTAL_FAIL + 1))
  fi
fi

if [ "$TOTAL_FAIL" -gt 0 ] && [ -s "$D/mxsentry/mxsentry.log" ]; then
  echo "# mxsentry log, last 40 lines ($D/mxsentry/mxsentry.log):"
  tail -n 40 "$D/mxsentry/mxsentry.log" | sed 's/^/#   /'
fi
cleanup
echo "# e2e took $((SECONDS - T0))s"
echo "$TOTAL_PASS passed, $TOTAL_FAIL failed"
[ "$TOTAL_FAIL" -eq 0 ]
