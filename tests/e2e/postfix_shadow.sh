#!/bin/bash
# End to end shadow policy with a real Postfix: the daemon gets, by SIGHUP, a [shadow] candidate
# (the live config with one more access rule, From:shadow-reject.example REJECT). Proves: a mail
# from that sender is accepted (RCPT 250, queued, at the sink) since the candidate is never
# enforced; the decision log line names the shadow's verdict (shadow=reject); the disagreement is
# counted on /metrics as mxsentry_shadow_verdicts_total{live="accept",shadow="reject"}; a sender
# both accept is counted as agreement. Restores the config at the end.
# Usage: bash tests/e2e/postfix_shadow.sh   (alone it starts DNS + daemon + postfix itself)
set -uo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init postfix_shadow
command -v swaks >/dev/null || { bad "swaks not installed (tests/testbed/install.sh)"; e2e_finish; }
e2e_need dns daemon postfix
R="$RANDOM"
CONF="$(mx_dir)/mxsentry.toml"
CAND="$(mx_dir)/candidate.toml"
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
# metric SERIES : its value on the daemon's /metrics (0 when absent)
metric() {
  local m v
  exec {m}<>"/dev/tcp/127.0.0.1/$METRICS_PORT" || return 1
  printf 'GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' >&"$m"
  v="$(awk -v n="$1" '$1 == n { print $2 }' <&"$m")"
  exec {m}>&-
  echo "${v:-0}"
}
metric_above() { [ "$(metric "$1")" -gt "$2" ]; }

DISAGREE='mxsentry_shadow_verdicts_total{live="accept",shadow="reject"}'
AGREE='mxsentry_shadow_verdicts_total{live="accept",shadow="accept"}'
cp "$CONF" "$CONF.orig"
# The candidate: the live config, its access file plus one rule.
cp "$(mx_dir)/access" "$(mx_dir)/candidate-access"
echo "From:shadow-reject.example  REJECT" >>"$(mx_dir)/candidate-access"
sed "s|^access_file = .*|access_file = \"$(mx_dir)/candidate-access\"|" "$CONF.orig" >"$CAND"
printf '\n[shadow]\nconfig = "%s"\n' "$CAND" >>"$CONF"
check "check-config accepts the live config with its candidate" "$MXSENTRY_BIN" check-config --config "$CONF"
check "shadow candidate loaded by SIGHUP" reload
check "the reload names the shadow policy" wait_mxlog "shadow policy reloaded"
d0="$(metric "$DISAGREE")"; a0="$(metric "$AGREE")"

FROM="sh-$R@shadow-reject.example"
out="$(pf 192.0.2.80 alias.fcrdns.test --from "$FROM" --to rcpt@example.org --header "X-E2E-Id: sh-$R")"
check "sender the candidate rejects: RCPT TO -> 250 (never enforced)" reply_is "RCPT TO" "$out" '^<-  250 '
check "... queued" grep -qE "$QUEUED" <<<"$out"
check "... delivered to the sink" wait_sink "$D/postfix/sink" "sh-$R"
check "the decision line names the shadow verdict (shadow=reject)" wait_mxlog "from=<$FROM>" "shadow=reject"
check "disagreement counted: $DISAGREE" wait_for 15 metric_above "$DISAGREE" "$d0"

out="$(pf 192.0.2.80 alias.fcrdns.test --from "ok-$R@sender.good.test" --to rcpt@example.org)"
check "sender both accept: queued" grep -qE "$QUEUED" <<<"$out"
check "agreement counted: $AGREE" wait_for 15 metric_above "$AGREE" "$a0"
mxlog_show "from=<$FROM>"

cp "$CONF.orig" "$CONF"
check "config restored by SIGHUP" reload
e2e_finish
