#!/bin/bash
# End to end with a real Postfix (smtpd_milters = inet:127.0.0.1:$MILTER_PORT -> mxsentry), mail sent
# with swaks through XCLIENT (always ADDR + NAME + REVERSE_NAME, see tests/testbed/README.md).
# Proves that what mxsentry decides is what an SMTP client sees, at RCPT TO:
#   accepted mail reaches the sink; REJECT sender -> 550 5.7.1 at RCPT (MAIL got 250) and exactly one
#   verdict=reject decision line in the daemon log; DISCARD -> 250 but nothing reaches the sink
#   (milter-discard in the maillog); ERROR:"..." text passed through exactly; TEMPFAIL -> 451 4.7.1;
#   regex rule; Connect: rule; To: rule per recipient, also after a sender's OK; postmaster@
#   exemption; trusted clients
#   (192.0.2.200 via XCLIENT, 127.0.0.1 directly) bypass every rule.
# Usage: bash tests/e2e/postfix.sh   (alone it starts DNS + daemon + postfix itself and stops them again)
set -uo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init postfix
command -v swaks >/dev/null || { bad "swaks not installed (tests/testbed/install.sh)"; e2e_finish; }
e2e_need dns daemon postfix
SINK="$D/postfix/sink"; MAILLOG="$D/postfix/maillog"; R="$RANDOM"
ML0="$(stat -c %s "$MAILLOG" 2>/dev/null || echo 0)"   # only this run's part of the maillog is judged

# pf ARGS... : one SMTP transaction through postfix; prints the swaks transcript
pf() { timeout 120 swaks --server "$PF_ADDR:$PF_PORT" --timeout 60 --helo helo.good.test "$@" 2>&1; }
GOOD=(--xclient-addr 192.0.2.10 --xclient-name good.fcrdns.test --xclient-reverse-name good.fcrdns.test)
QUEUED='^<-  250 2\.0\.0 Ok: queued as '
show() { sed -n '/MAIL FROM/,$p' <<<"$1" | grep -E '^ *(->|<-|<\*\*) *(MAIL|RCPT|DATA|QUIT|[245][0-9][0-9][ -])' | sed 's/^/#   | /'; }
maillog_has() { wait_grep "$MAILLOG" "$1" 30; }

# --- accepted ---
from="pf-accept-$R@sender.good.test"
out="$(pf "${GOOD[@]}" --from "$from" --to rcpt@example.org --header "X-E2E-Id: pf-accept-$R")"
check "accept: MAIL FROM -> 250" reply_is "MAIL FROM" "$out" '^<-  250 '
check "accept: RCPT TO -> 250" reply_is "RCPT TO" "$out" '^<-  250 '
check "accept: end of DATA -> 250 queued" grep -qE "$QUEUED" <<<"$out" || show "$out"
check "accept: message reached the sink" wait_sink "$SINK" "X-E2E-Id: pf-accept-$R"
check "accept: daemon logged verdict=accept" wait_mxlog "verdict=accept" "from=<$from>" "client_ip=192.0.2.10"

# --- REJECT sender ---
from="pf-reject-$R@reject.example"
out="$(pf "${GOOD[@]}" --from "$from" --to rcpt@example.org)"
check "reject: MAIL FROM -> 250 (verdicts come at RCPT)" reply_is "MAIL FROM" "$out" '^<-  250 '
check "reject: RCPT TO -> 550 5.7.1 Access denied" reply_is "RCPT TO" "$out" '^<\*\* 550 5\.7\.1 Access denied$'
check "reject: postfix logged milter-reject at RCPT" \
  maillog_has "milter-reject: RCPT from good\.fcrdns\.test\[192\.0\.2\.10\]: 550 5\.7\.1 Access denied; from=<$from>"
if wait_mxlog "verdict=reject" "from=<$from>"; then
  n="$(mxlog_count "verdict=" "from=<$from>")"
  check "reject: exactly one decision line in the daemon log (got $n)" [ "$n" -eq 1 ]
  check "reject: decision line has client_ip, rcpt and reply" _mxlog_has "verdict=reject" "from=<$from>" \
    "client_ip=192.0.2.10" "rcpt=<rcpt@example.org>" 'reply="550 5.7.1 Access denied"' || mxlog_show "from=<$from>"
else
  bad "reject: no verdict=reject line for from=<$from> in $(MXLOG)"
fi

# --- DISCARD sender: 250 everywhere, nothing delivered ---
from="pf-discard-$R@discard.example"
out="$(pf "${GOOD[@]}" --from "$from" --to rcpt@example.org --header "X-E2E-Id: pf-discard-$R")"
check "discard: RCPT TO -> 250" reply_is "RCPT TO" "$out" '^<-  250 '
check "discard: end of DATA -> 250 queued" grep -qE "$QUEUED" <<<"$out" || show "$out"
check "discard: postfix logged milter-discard" maillog_has "milter-discard: RCPT from .*from=<$from>"
from2="pf-linkedin-$R@news.linkedin.com"
out="$(pf "${GOOD[@]}" --from "$from2" --to rcpt@example.org --header "X-E2E-Id: pf-linkedin-$R")"
check "discard (parent domain linkedin.com): 250 queued" grep -qE "$QUEUED" <<<"$out" || show "$out"
check "discard (parent domain linkedin.com): milter-discard" maillog_has "milter-discard: RCPT from .*from=<$from2>"
check "discard: daemon logged verdict=discard" wait_mxlog "verdict=discard" "from=<$from>"

# --- ERROR / TEMPFAIL / regex texts, exactly as the client sees them ---
out="$(pf "${GOOD[@]}" --from "pf-banned-$R@banned.example" --to rcpt@example.org)"
check "ERROR: RCPT TO -> exactly '550 Sender banned. Please use legitimate domain'" \
  reply_is "RCPT TO" "$out" '^<\*\* 550 Sender banned\. Please use legitimate domain$'
out="$(pf "${GOOD[@]}" --from "pf-dsn-$R@dsn.example" --to rcpt@example.org)"
check "ERROR:5.7.1: RCPT TO -> exactly '550 5.7.1 Go away'" reply_is "RCPT TO" "$out" '^<\*\* 550 5\.7\.1 Go away$'
out="$(pf "${GOOD[@]}" --from "pf-tempfail-$R@tempfail.example" --to rcpt@example.org)"
check "TEMPFAIL: RCPT TO -> 451 4.7.1 Try again later" reply_is "RCPT TO" "$out" '^<\*\* 451 4\.7\.1 Try again later$'
out="$(pf "${GOOD[@]}" --from "bounce-$R@emalsrv.example.com" --to rcpt@example.org)"
check "regex: bounce@emalsrv.example.com -> 550 5.7.1 Sender banned" \
  reply_is "RCPT TO" "$out" '^<\*\* 550 5\.7\.1 Sender banned$'

# --- Connect: rule (client 192.0.2.66, no PTR) ---
out="$(pf --xclient-addr 192.0.2.66 --xclient-name '[UNAVAILABLE]' --xclient-reverse-name '[UNAVAILABLE]' \
          --from "pf-connect-$R@sender.good.test" --to rcpt@example.org)"
check "Connect:192.0.2.66: MAIL FROM -> 250" reply_is "MAIL FROM" "$out" '^<-  250 '
check "Connect:192.0.2.66: RCPT TO -> 550 5.7.1" reply_is "RCPT TO" "$out" '^<\*\* 550 5\.7\.1 '
check "Connect:192.0.2.66: daemon logged client_ip=192.0.2.66 verdict=reject" \
  wait_mxlog "verdict=reject" "client_ip=192.0.2.66" "from=<pf-connect-$R@sender.good.test>"

# --- To: rule, per recipient ---
out="$(pf "${GOOD[@]}" --from "pf-to-$R@sender.good.test" --to "blocked@example.org,rcpt@example.org" \
          --header "X-E2E-Id: pf-to-$R")"
check "To:blocked@example.org: that RCPT -> 550 5.7.1" reply_is "RCPT TO:<blocked@example.org>" "$out" '^<\*\* 550 5\.7\.1 '
check "To: rule: the other RCPT -> 250" reply_is "RCPT TO:<rcpt@example.org>" "$out" '^<-  250 '
check "To: rule: message queued for the other recipient" grep -qE "$QUEUED" <<<"$out"
check "To: rule: message reached the sink" wait_sink "$SINK" "X-E2E-Id: pf-to-$R"

# --- a sender's OK does not override To: entries (sendmail applies them at every RCPT) ---
out="$(pf "${GOOD[@]}" --from "pf-friend-$R@friend.example" --to "rcpt@example.org,gone@example.org" \
          --header "X-E2E-Id: pf-friend-$R")"
check "From: OK + To:gone ERROR:5.1.1: that RCPT -> 550 5.1.1 User unknown" \
  reply_is "RCPT TO:<gone@example.org>" "$out" '^<\*\* 550 5\.1\.1 User unknown$'
check "From: OK: the other RCPT -> 250" reply_is "RCPT TO:<rcpt@example.org>" "$out" '^<-  250 '
check "From: OK: message reached the sink" wait_sink "$SINK" "X-E2E-Id: pf-friend-$R"
from="pf-friend-trap-$R@friend.example"
out="$(pf "${GOOD[@]}" --from "$from" --to "rcpt@example.org,spamtrap@example.org" \
          --header "X-E2E-Id: pf-spamtrap-$R")"
check "From: OK + To:spamtrap DISCARD: 250 queued" grep -qE "$QUEUED" <<<"$out" || show "$out"
check "From: OK + To:spamtrap DISCARD: postfix logged milter-discard" \
  maillog_has "milter-discard: RCPT from .*from=<$from>"

# --- postmaster exemption ---
out="$(pf "${GOOD[@]}" --from "pf-pm-$R@reject.example" --to postmaster@example.org --header "X-E2E-Id: pf-pm-$R")"
check "postmaster: REJECT sender -> postmaster@ RCPT 250" reply_is "RCPT TO" "$out" '^<-  250 '
check "postmaster: queued" grep -qE "$QUEUED" <<<"$out"
check "postmaster: message reached the sink" wait_sink "$SINK" "X-E2E-Id: pf-pm-$R"

# --- trusted clients bypass all rules ---
out="$(pf --xclient-addr 192.0.2.200 --xclient-name trusted.example.org --xclient-reverse-name trusted.example.org \
          --from "pf-trusted-$R@reject.example" --to rcpt@example.org --header "X-E2E-Id: pf-trusted-$R")"
check "trusted 192.0.2.200: REJECT sender -> RCPT 250" reply_is "RCPT TO" "$out" '^<-  250 '
check "trusted 192.0.2.200: queued" grep -qE "$QUEUED" <<<"$out"
check "trusted 192.0.2.200: message reached the sink" wait_sink "$SINK" "X-E2E-Id: pf-trusted-$R"
check "trusted 192.0.2.200: daemon logged verdict=accept" \
  wait_mxlog "verdict=accept" "client_ip=192.0.2.200" "from=<pf-trusted-$R@reject.example>"
out="$(pf --from "pf-local-$R@reject.example" --to rcpt@example.org --header "X-E2E-Id: pf-local-$R")"
check "trusted 127.0.0.1 (no XCLIENT): REJECT sender -> queued" grep -qE "$QUEUED" <<<"$out"
check "trusted 127.0.0.1: message reached the sink" wait_sink "$SINK" "X-E2E-Id: pf-local-$R"

# --- the discarded ones never arrive: mail sent after them has been delivered by now ---
check "discard: discarded message not in the sink" bash -c "! grep -qsF 'X-E2E-Id: pf-discard-$R' '$SINK'/*"
check "discard: linkedin message not in the sink" bash -c "! grep -qsF 'X-E2E-Id: pf-linkedin-$R' '$SINK'/*"
check "discard: spamtrap message not in the sink" bash -c "! grep -qsF 'X-E2E-Id: pf-spamtrap-$R' '$SINK'/*"

new_maillog="$(tail -c +"$((ML0 + 1))" "$MAILLOG" 2>/dev/null)"
check "postfix logged no milter trouble (warnings, timeouts, milter_default_action)" \
  bash -c '! grep -qiE "warning: .*milter|Service unavailable - try again later" <<<"$1"' _ "$new_maillog"
check "daemon still running" pid_alive "$(mx_dir)/pid"
if [ "$FAIL" -gt 0 ]; then
  note "postfix maillog (milter lines, last 15):"; grep -E 'milter|warning|fatal' "$MAILLOG" | tail -n 15 | sed 's/^/#   /'
fi
e2e_finish
