#!/bin/bash
# End to end greylisting with a real Postfix (clients faked with XCLIENT), the daemon switched to
# greylisting by SIGHUP (delay 3 s). Proves: first attempt 450 4.7.1 at RCPT; an early retry 450
# again; the retry after the delay 250, the message at the sink with an X-Greylist header; the next
# message of the triplet accepted at once without the header; a retry from another network of the
# same forward-confirmed rDNS domain (192.0.2.80 alias.fcrdns.test, 2001:db8::10 good.fcrdns.test) is
# accepted (sender pools); postmaster@ is never greylisted; a recipient in the greylist allow list
# (allow_recipient_files) is accepted at once and queued. Restores the config at the end.
# Usage: bash tests/e2e/postfix_greylist.sh   (alone it starts DNS + daemon + postfix itself)
set -uo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init postfix_greylist
command -v swaks >/dev/null || { bad "swaks not installed (tests/testbed/install.sh)"; e2e_finish; }
e2e_need dns daemon postfix
SINK="$D/postfix/sink"; R="$RANDOM"
CONF="$(mx_dir)/mxsentry.toml"
QUEUED='^<-  250 2\.0\.0 Ok: queued as '
pf() {
  local addr="$1" name="$2"; shift 2
  timeout 120 swaks --server "$PF_ADDR:$PF_PORT" --timeout 60 --helo helo.good.test \
    --xclient-addr "$addr" --xclient-name "$name" --xclient-reverse-name "$name" "$@" 2>&1
}
reload() {
  local n0; n0="$(mxlog_count "configuration reloaded")"
  kill -HUP "$(head -n1 "$(mx_dir)/pid")"
  wait_for 30 bash -c "[ \$(grep -c 'configuration reloaded' '$(MXLOG)') -gt $n0 ]"
}

cp "$CONF" "$CONF.orig"
ALLOW="$(mx_dir)/greylist-allow-recipients"
printf '# e2e\ndesk@   # never delayed\n' >"$ALLOW"
sed -i "s|^enabled = false\$|enabled = true\ndelay = \"3s\"\nclient_autowhite_after = 0\nallow_recipient_files = [\"$ALLOW\"]|" "$CONF"
check "greylisting switched on by SIGHUP" reload

FROM="gl-$R@sender.good.test"
out="$(pf 192.0.2.80 alias.fcrdns.test --from "$FROM" --to rcpt@example.org)"
check "first attempt: RCPT TO -> 450 4.7.1 Greylisted" reply_is "RCPT TO" "$out" \
  '^<\*\* 450 4\.7\.1 Greylisted, try again in 3 seconds$'
out="$(pf 192.0.2.80 alias.fcrdns.test --from "$FROM" --to rcpt@example.org)"
check "early retry: 450 again" reply_is "RCPT TO" "$out" '^<\*\* 450 4\.7\.1 Greylisted, try again in [0-3] seconds$'
out="$(pf 192.0.2.80 alias.fcrdns.test --from "$FROM" --to postmaster@example.org)"
check "postmaster@ is not greylisted" reply_is "RCPT TO" "$out" '^<-  250 '
out="$(pf 192.0.2.80 alias.fcrdns.test --from "$FROM" --to Desk@example.org --header "X-E2E-Id: gl-allow-$R")"
check "allow-listed recipient desk@: new triplet queued at once" grep -qE "$QUEUED" <<<"$out"
check "the skip is logged with the allow file and line" wait_mxlog "in allow list $ALLOW:2 (desk@)"
sleep 3.5
out="$(pf 192.0.2.80 alias.fcrdns.test --from "$FROM" --to rcpt@example.org --header "X-E2E-Id: gl-pass-$R")"
check "retry after the delay: RCPT TO -> 250" reply_is "RCPT TO" "$out" '^<-  250 '
check "retry after the delay: queued" grep -qE "$QUEUED" <<<"$out"
check "the delivered copy has X-Greylist: delayed N seconds by mxsentry-" \
  wait_grep_sink_mail "gl-pass-$R" "X-Greylist: delayed [0-9]+ seconds by mxsentry-"
out="$(pf 192.0.2.80 alias.fcrdns.test --from "$FROM" --to rcpt@example.org --header "X-E2E-Id: gl-next-$R")"
check "next message of the triplet: accepted at once" grep -qE "$QUEUED" <<<"$out"
check "next message: no X-Greylist header" bash -c "sleep 1; f=\$(grep -ls 'gl-next-$R' '$SINK'/*); [ -n \"\$f\" ] && ! grep -q X-Greylist \$f"

# sender pool: first seen from 192.0.2.80, retried from 2001:db8::10 (another network, same
# forward-confirmed domain fcrdns.test)
FROM2="pool-$R@sender.good.test"
out="$(pf 192.0.2.80 alias.fcrdns.test --from "$FROM2" --to rcpt@example.org)"
check "pool: first attempt from 192.0.2.80 (alias.fcrdns.test) -> 450" reply_is "RCPT TO" "$out" '^<\*\* 450 4\.7\.1 Greylisted'
sleep 3.5
out="$(pf IPV6:2001:db8::10 good.fcrdns.test --from "$FROM2" --to rcpt@example.org)"
check "pool: retry from 2001:db8::10 (same rDNS domain fcrdns.test) -> 250" reply_is "RCPT TO" "$out" '^<-  250 '

cp "$CONF.orig" "$CONF"
check "config restored by SIGHUP" reload
e2e_finish
