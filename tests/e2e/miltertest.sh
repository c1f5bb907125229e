#!/bin/bash
# Milter-protocol suite: drives the real mxsentry daemon with miltertest (mxsentry.lua) and a raw
# protocol client (milter_raw.py), over BOTH its inet and its unix socket. Proves negotiation
# (no-reply flags, skipped steps), every stage's reply, each access-file/regex verdict at RCPT
# (REPLYCODE with the exact text, DISCARD, CONTINUE), ACCEPT at EOM, trusted/authenticated/postmaster
# exemptions, an MTA offering no options, several messages per connection, ABORT mid-message,
# QUIT_NC reuse, and one decision log line per verdict (verdict=, client_ip=, from=, rcpt=, reply=).
# Usage: bash tests/e2e/miltertest.sh   (alone it starts DNS + daemon itself and stops them again)
set -uo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init miltertest
command -v miltertest >/dev/null || { bad "miltertest not installed (tests/testbed/install.sh)"; e2e_finish; }
e2e_need dns daemon
S="$(mx_dir)"

# run_tool TAG CMD... : run a tool that prints ok/FAIL lines + "N passed, M failed"; re-count them here
run_tool() {
  local tag="$1"; shift
  local out rc line summary=""
  out="$(timeout 900 "$@" 2>&1)"; rc=$?
  while IFS= read -r line; do
    case "$line" in
      "ok   - "*) ok "[$tag] ${line#ok   - }" ;;
      "FAIL - "*) bad "[$tag] ${line#FAIL - }" ;;
      *" passed, "*" failed") summary="$line" ;;
      "") ;;
      *) echo "#   [$tag] $line" ;;
    esac
  done <<<"$out"
  if [ -z "$summary" ]; then
    bad "[$tag] no summary line (tool crashed or timed out, exit $rc)"
  elif [ "$rc" -ne 0 ] && ! grep -q '^FAIL' <<<"$out"; then
    bad "[$tag] exit status $rc without a failed check"
  fi
}

# log_has DESCRIPTION FIXED... : a decision line with all these strings is in the daemon log
log_has() {
  local what="$1"; shift
  if wait_mxlog "$@"; then ok "log: $what"; else bad "log: $what (no line with: $*)"; fi
}

for tr in inet unix; do
  if [ "$tr" = inet ]; then sock="inet:$MILTER_PORT@$MILTER_ADDR"; else sock="unix:$S/mxsentry.sock"; fi
  note "miltertest over $sock"
  run_tool "mt-$tr" miltertest -D sock="$sock" -D tag="$tr" -s "$E2E_DIR/mxsentry.lua"

  t="$tr"
  log_has "$tr reject: one line, verdict=reject, 550 5.7.1 Access denied" \
    "verdict=reject" "from=<$t-reject@reject.example>" "client_ip=192.0.2.10" "rcpt=<rcpt@example.org>" 'reply="550 5.7.1 Access denied"'
  n="$(mxlog_count "verdict=" "from=<$t-reject@reject.example>")"
  check "log: $tr reject: exactly one decision line (got $n)" [ "$n" -eq 1 ]
  log_has "$tr ERROR text" "verdict=reject" "from=<$t-banned@banned.example>" 'reply="550 Sender banned. Please use legitimate domain"'
  log_has "$tr ERROR with DSN" "verdict=reject" "from=<$t-dsn@dsn.example>" 'reply="550 5.7.1 Go away"'
  log_has "$tr TEMPFAIL" "verdict=tempfail" "from=<$t-tempfail@tempfail.example>" 'reply="451 4.7.1 Try again later"'
  log_has "$tr regex" "verdict=reject" "from=<$t-bounce@emalsrv.example.com>" 'reply="550 5.7.1 Sender banned"'
  log_has "$tr DISCARD" "verdict=discard" "from=<$t-discard@discard.example>"
  log_has "$tr DISCARD by parent domain" "verdict=discard" "from=<$t-news@news.linkedin.com>"
  log_has "$tr Connect: rule" "verdict=reject" "client_ip=192.0.2.66" "from=<$t-user@sender.good.test>"
  log_has "$tr To: rule" "verdict=reject" "from=<$t-tocheck@sender.good.test>" "rcpt=<blocked@example.org>"
  log_has "$tr trusted client" "verdict=accept" "client_ip=192.0.2.200" "from=<$t-trusted@reject.example>"
  log_has "$tr postmaster exemption" "verdict=accept" "from=<$t-pm@reject.example>" "rcpt=<postmaster@example.org"
  log_has "$tr From: OK" "verdict=accept" "from=<$t-pal@friend.example>"
  log_has "$tr authenticated sender" "verdict=accept" "from=<$t-auth@reject.example>"
  log_has "$tr IPv6 client" "verdict=accept" "client_ip=2001:db8::10" "from=<$t-v6@sender.good.test>"

  run_tool "raw-$tr" "$SYS_PY" "$E2E_DIR/milter_raw.py" --sock "$sock" --tag "raw$tr"
done

# the daemon survived all of it
check "daemon still running after the protocol tests" pid_alive "$S/pid"
e2e_finish
