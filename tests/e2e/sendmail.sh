#!/bin/bash
# End to end with a real sendmail 8.17 (INPUT_MAIL_FILTER -> inet:$MILTER_PORT@127.0.0.1 = mxsentry).
# sendmail has no XCLIENT: clients come from real loopback addresses (swaks --local-interface);
# 127.0.0.10 (good.loop.test, FCrDNS OK) is an ordinary client, 127.0.0.1 is trusted in the config.
# Proves: accepted mail reaches the sink; REJECT sender -> 550 5.7.1 ... Access denied at RCPT;
# DISCARD -> 250 for everything, "discard" in sendmail's log, nothing in the sink; TEMPFAIL -> 451
# 4.7.1; ERROR:"..." text; the trusted client 127.0.0.1 bypasses the rules; sendmail never fell back
# to its F=T temp-failure (which it would on any milter protocol error).
# Usage: bash tests/e2e/sendmail.sh  (alone it starts DNS + daemon + sendmail itself and stops them again)
set -uo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init sendmail
command -v swaks >/dev/null || { bad "swaks not installed (tests/testbed/install.sh)"; e2e_finish; }
e2e_need dns daemon sendmail
SINK="$D/sendmail/sink"; MAILLOG="$D/sendmail/maillog"; R="$RANDOM"
ML0="$(stat -c %s "$MAILLOG" 2>/dev/null || echo 0)"   # only this run's part of the maillog is judged

# sm SOURCE-IP ARGS... : one SMTP transaction through sendmail from that loopback address
sm() {
  local src="$1"; shift
  timeout 120 swaks --server "$SM_ADDR:$SM_PORT" --local-interface "$src" --timeout 60 --helo good.loop.test "$@" 2>&1
}
ACCEPTED='^<-  250 2\.0\.0 [A-Za-z0-9]+ Message accepted for delivery'
qid_of() { sed -n 's/^<-  250 2\.0\.0 \([A-Za-z0-9]*\) Message accepted.*/\1/p' <<<"$1" | head -n1; }
show() { grep -E '^ *(->|<-|<\*\*) *(MAIL|RCPT|DATA|[245][0-9][0-9][ -])' <<<"$1" | sed 's/^/#   | /'; }

# --- accepted ---
from="sm-accept-$R@sender.good.test"
out="$(sm 127.0.0.10 --from "$from" --to rcpt@example.org --header "X-E2E-Id: sm-accept-$R")"
check "accept (127.0.0.10): RCPT TO -> 250" reply_is "RCPT TO" "$out" '^<-  250 '
check "accept: end of DATA -> 250 Message accepted" grep -qE "$ACCEPTED" <<<"$out" || show "$out"
check "accept: message reached the sink" wait_sink "$SINK" "X-E2E-Id: sm-accept-$R"
check "accept: daemon logged verdict=accept for client_ip=127.0.0.10" \
  wait_mxlog "verdict=accept" "client_ip=127.0.0.10" "from=<$from>"

# --- REJECT ---
from="sm-reject-$R@reject.example"
out="$(sm 127.0.0.10 --from "$from" --to rcpt@example.org)"
check "reject: MAIL FROM -> 250" reply_is "MAIL FROM" "$out" '^<-  250 '
check "reject: RCPT TO -> 550 5.7.1 ... Access denied" \
  reply_is "RCPT TO" "$out" '^<\*\* 550 5\.7\.1 (<rcpt@example\.org>\.\.\. )?Access denied$'
check "reject: sendmail logged the milter reject" \
  wait_grep "$MAILLOG" "Milter: to=<rcpt@example\.org>, reject=550 5\.7\.1 Access denied" 30
check "reject: daemon logged verdict=reject for client_ip=127.0.0.10" \
  wait_mxlog "verdict=reject" "client_ip=127.0.0.10" "from=<$from>" 'reply="550 5.7.1 Access denied"'

# --- DISCARD ---
from="sm-discard-$R@discard.example"
out="$(sm 127.0.0.10 --from "$from" --to rcpt@example.org --header "X-E2E-Id: sm-discard-$R")"
qid="$(qid_of "$out")"
check "discard: RCPT TO -> 250" reply_is "RCPT TO" "$out" '^<-  250 '
check "discard: end of DATA -> 250 Message accepted" grep -qE "$ACCEPTED" <<<"$out" || show "$out"
check "discard: sendmail logged 'discard' for the recipient (queue id ${qid:-?})" \
  wait_grep "$MAILLOG" "${qid:-NOQUEUEID}: Milter: to=<rcpt@example\.org>, discard" 30
check "discard: sendmail logged stat=discarded" wait_grep "$MAILLOG" "${qid:-NOQUEUEID}: .*stat=discarded" 30
check "discard: daemon logged verdict=discard" wait_mxlog "verdict=discard" "from=<$from>"

# --- TEMPFAIL and an ERROR text ---
out="$(sm 127.0.0.10 --from "sm-tempfail-$R@tempfail.example" --to rcpt@example.org)"
check "TEMPFAIL: RCPT TO -> 451 4.7.1 Try again later" reply_is "RCPT TO" "$out" '^<\*\* 451 4\.7\.1 .*Try again later$'
out="$(sm 127.0.0.10 --from "sm-dsn-$R@dsn.example" --to rcpt@example.org)"
check "ERROR:5.7.1: RCPT TO -> 550 5.7.1 ... Go away" reply_is "RCPT TO" "$out" '^<\*\* 550 5\.7\.1 .*Go away$'

# --- trusted client 127.0.0.1 ---
out="$(sm 127.0.0.1 --from "sm-trusted-$R@reject.example" --to rcpt@example.org --header "X-E2E-Id: sm-trusted-$R")"
check "trusted 127.0.0.1: REJECT sender -> RCPT 250" reply_is "RCPT TO" "$out" '^<-  250 '
check "trusted 127.0.0.1: accepted" grep -qE "$ACCEPTED" <<<"$out" || show "$out"
check "trusted 127.0.0.1: message reached the sink" wait_sink "$SINK" "X-E2E-Id: sm-trusted-$R"
check "trusted 127.0.0.1: daemon logged verdict=accept" \
  wait_mxlog "verdict=accept" "client_ip=127.0.0.1" "from=<sm-trusted-$R@reject.example>"

# --- the discarded one never arrives (mail sent after it has been delivered by now) ---
check "discard: discarded message not in the sink" bash -c "! grep -qsF 'X-E2E-Id: sm-discard-$R' '$SINK'/*"
new_maillog="$(tail -c +"$((ML0 + 1))" "$MAILLOG" 2>/dev/null)"
check "sendmail logged no milter failure (F=T fallback, timeouts, protocol errors)" \
  bash -c '! grep -qiE "Milter \(testbed\): .*(error|timeout|failed)|to error state|milter_.*(error|timed out)" <<<"$1"' _ "$new_maillog"
check "daemon still running" pid_alive "$(mx_dir)/pid"
if [ "$FAIL" -gt 0 ]; then
  note "sendmail maillog (Milter lines, last 15):"; grep -i milter "$MAILLOG" | tail -n 15 | sed 's/^/#   /'
fi
e2e_finish
