#!/bin/bash
# End to end replay of the daemon's own decision log with a real Postfix. The log format is read
# at start only, so this suite restarts the daemon with the e2e config plus `[log] format =
# "json"`, its stderr in STATE/mxsentry/decisions.json (what `journalctl -o cat` gives an admin),
# and puts the ordinary daemon back at the end. Proves: a mail from a sender the candidate
# (the live config with one more access rule, From:replay-reject.example REJECT) would refuse is
# accepted live and queued; `mxsentry replay --config CANDIDATE --log decisions.json` names that
# session (queue id, client, sender, recipient, accept -> reject, sender_rules.reject) and only
# that one, exit 0, with the totals; `--json` gives the same flip and totals as JSON objects;
# `--no-dns` needs no lookup for them; the daemon's text log is refused (exit 2, FILE:LINE).
# Usage: bash tests/e2e/postfix_replay.sh   (alone it starts DNS + daemon + postfix itself)
set -uo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init postfix_replay
command -v swaks >/dev/null || { bad "swaks not installed (tests/testbed/install.sh)"; e2e_finish; }
e2e_need dns daemon postfix
R="$RANDOM"
S="$(mx_dir)"
JCONF="$S/json.toml"
JLOG="$S/decisions.json"
CAND="$S/replay-candidate.toml"
QUEUED='^<-  250 2\.0\.0 Ok: queued as '
pf() {
  local addr="$1" name="$2"; shift 2
  timeout 120 swaks --server "$PF_ADDR:$PF_PORT" --timeout 60 --helo helo.good.test \
    --xclient-addr "$addr" --xclient-name "$name" --xclient-reverse-name "$name" "$@" 2>&1
}
# zones_probed CONFIG : the daemon answers `status` and every DNS list had its first probe
zones_probed() {
  local out
  out="$("$MXSENTRY_BIN" status --config "$1" 2>/dev/null)" || return 1
  grep -q '^dnsbl zone' <<<"$out" && ! grep -q 'not yet probed' <<<"$out"
}
listening() { ! port_free "$MILTER_ADDR" "$MILTER_PORT" && [ -S "$S/mxsentry.sock" ]; }
# start_json_daemon : the e2e daemon's config with JSON decision lines, stderr to $JLOG
start_json_daemon() {
  { cat "$S/mxsentry.toml"; printf '\n[log]\nformat = "json"\n'; } >"$JCONF"
  "$MXSENTRY_BIN" check-config --config "$JCONF" >/dev/null || return 1
  rm -f "$S/mxsentry.sock"
  NO_COLOR=1 setsid "$MXSENTRY_BIN" run --config "$JCONF" >>"$S/stdout.log" 2>"$JLOG" </dev/null &
  echo $! >"$S/pid"
  wait_for 60 listening && wait_for 30 zones_probed "$JCONF"
}
# decision_logged FROM : the JSON log has a decision line for that sender
decision_logged() { grep -F '"message":"decision"' "$JLOG" | grep -qF "\"from\":\"<$1>\""; }
# json_summary : replay --json output (stdin) as one line per flip and per totals object
json_summary() {
  "$SYS_PY" -c '
import json, sys
objs = [json.loads(l) for l in sys.stdin if l.strip()]
flips = [o for o in objs if o["type"] == "flip"]
tot = [o for o in objs if o["type"] == "totals"]
for f in flips:
    print("flip", f["client_ip"], f["client_name"], f["from"], f["rcpt"], f["old"], f["new"], f["new_reason"])
for t in tot:
    print("totals", t["decided"], t["undecidable"], t["flipped"], t["malformed_lines"])
'
}

# --- restart the daemon with a JSON decision log ---
check "the e2e daemon stops for the restart" mx_stop
check "daemon restarted with [log] format = \"json\" (stderr -> decisions.json)" start_json_daemon

# --- live traffic: accepted by the live config ---
cp "$S/access" "$S/replay-candidate-access"
echo "From:replay-reject.example  REJECT" >>"$S/replay-candidate-access"
sed "s|^access_file = .*|access_file = \"$S/replay-candidate-access\"|" "$S/mxsentry.toml" >"$CAND"
check "check-config accepts the candidate" "$MXSENTRY_BIN" check-config --config "$CAND"

FLIPPED="rp-$R@replay-reject.example"
KEPT="rk-$R@sender.good.test"
out="$(pf 192.0.2.81 alias.fcrdns.test --from "$FLIPPED" --to rcpt@example.org --header "X-E2E-Id: rp-$R")"
check "sender the candidate rejects: RCPT TO -> 250 live" reply_is "RCPT TO" "$out" '^<-  250 '
check "... queued" grep -qE "$QUEUED" <<<"$out"
check "... delivered to the sink" wait_sink "$D/postfix/sink" "rp-$R"
out="$(pf 192.0.2.81 alias.fcrdns.test --from "$KEPT" --to rcpt@example.org)"
check "sender both accept: queued" grep -qE "$QUEUED" <<<"$out"
check "JSON decision line for the flipped sender" wait_for 15 decision_logged "$FLIPPED"
check "JSON decision line for the kept sender" wait_for 15 decision_logged "$KEPT"
QID="$(grep -F "\"from\":\"<$FLIPPED>\"" "$JLOG" | sed -nE 's/.*"queue_id":"([^"]*)".*/\1/p' | head -n1)"
check "the decision line has a queue id" test -n "$QID"

# --- replay the daemon's own log with the candidate (a copy: the daemon keeps writing) ---
cp "$JLOG" "$S/replay-input.json"
IN="$S/replay-input.json"
out="$("$MXSENTRY_BIN" replay --config "$CAND" --log "$IN" 2>"$S/replay.err")"; rc=$?
check "replay exit 0" test "$rc" = 0 || sed 's/^/#   /' "$S/replay.err"
sed 's/^/#   replay: /' <<<"$out" | grep -F -e "$FLIPPED" -e totals -e recipients -e flips
FLIP_RE="^$IN:[0-9]+ queue $QID client 192\.0\.2\.81 \(alias\.fcrdns\.test\) from <$FLIPPED> rcpt <rcpt@example\.org>: accept -> reject \(sender_rules\.reject: .*replay-reject\.example REJECT\)\$"
check "replay names the flipped session: queue, client, sender, rcpt, accept -> reject, cause" \
  grep -qE "$FLIP_RE" <<<"$out"
check "the kept sender does not flip" bash -c '! grep -qF "$1" <<<"$2"' _ "$KEPT" "$out"
check "totals: one flip, nothing undecidable" grep -qE '^recipients [0-9]+: decided [0-9]+, undecidable 0, flipped 1$' <<<"$out"
check "totals: flips accept -> reject: 1" grep -qx 'flips accept -> reject: 1' <<<"$out"
check "totals: no malformed line in the daemon's JSON log" grep -qE '^lines [0-9]+: decision lines [0-9]+, other lines [0-9]+, malformed lines 0$' <<<"$out"

js="$("$MXSENTRY_BIN" replay --config "$CAND" --log "$IN" --json 2>>"$S/replay.err")"; rc=$?
check "replay --json exit 0" test "$rc" = 0
sum="$(json_summary <<<"$js")"
sed 's/^/#   replay --json: /' <<<"$sum"
check "--json: the flip object names the session" \
  grep -qx "flip 192.0.2.81 alias.fcrdns.test $FLIPPED rcpt@example.org accept reject sender_rules.reject" <<<"$sum"
check "--json: one flip in all" test "$(grep -c '^flip ' <<<"$sum")" = 1
check "--json: totals object (nothing undecidable, 1 flipped, 0 malformed)" grep -qE '^totals [0-9]+ 0 1 0$' <<<"$sum"

out="$("$MXSENTRY_BIN" replay --config "$CAND" --log "$IN" --no-dns 2>>"$S/replay.err")"; rc=$?
check "replay --no-dns exit 0, the same flip from the logged evidence alone" \
  bash -c '[ "$1" = 0 ] && grep -qE "$2" <<<"$3" && grep -qE "undecidable 0, flipped 1\$" <<<"$3"' _ "$rc" "$FLIP_RE" "$out"

# --- the ordinary daemon back (text log, as the other suites expect); its log is refused ---
check "the JSON daemon stops" mx_stop
check "the e2e daemon restarted" mx_start
TEXTED="rt-$R@sender.good.test"
out="$(pf 192.0.2.81 alias.fcrdns.test --from "$TEXTED" --to rcpt@example.org)"
check "a mail through the text-log daemon: queued" grep -qE "$QUEUED" <<<"$out"
check "... its text decision line" wait_mxlog "from=<$TEXTED>"
out="$("$MXSENTRY_BIN" replay --config "$CAND" --log "$(MXLOG)" 2>&1)"; rc=$?
check "replay of the text log: exit 2" test "$rc" = 2
check "... with FILE:LINE: a text log line; replay needs [log] format = \"json\"" \
  grep -qE "^$(MXLOG):[0-9]+: a text log line; replay needs \[log\] format = \"json\"\$" <<<"$out" \
  || sed 's/^/#   /' <<<"$out"
e2e_finish
