#!/bin/bash
# Live administration of the running daemon with a real Postfix (clients faked with XCLIENT), all
# through its control socket ([control] socket in the generated config): greylisting switched on
# by `mxsentry reload` (delay 1 h, so only the admin can let a triplet through); a triplet
# greylisted by Postfix (450) is listed through the daemon, deleted, added, and then passes (250,
# at the sink); a permanent entry passes; `explain` shows the daemon's greylist state;
# `mxsentry status` names the daemon; a bad access file makes `mxsentry reload` exit 1 with
# file:line: reason while the running rules stay; a good reload restores the config.
# Usage: bash tests/e2e/postfix_control.sh   (alone it starts DNS + daemon + postfix itself)
set -uo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init postfix_control
command -v swaks >/dev/null || { bad "swaks not installed (tests/testbed/install.sh)"; e2e_finish; }
e2e_need dns daemon postfix
SINK="$D/postfix/sink"
# letters only: greylist keys fold digits in local parts (news-123@ and news-456@ are one sender)
R="$(tr -dc a-z </dev/urandom | head -c 8)"
S="$(mx_dir)"; CONF="$S/mxsentry.toml"
QUEUED='^<-  250 2\.0\.0 Ok: queued as '
pf() {
  local addr="$1" name="$2"; shift 2
  timeout 120 swaks --server "$PF_ADDR:$PF_PORT" --timeout 60 --helo helo.good.test \
    --xclient-addr "$addr" --xclient-name "$name" --xclient-reverse-name "$name" "$@" 2>&1
}
# mx ARGS... : the admin command against the running daemon's config; sets OUT, ERR, RC
mx() {
  local e; e="$(mktemp)"
  OUT="$(timeout 120 "$MXSENTRY_BIN" "$@" --config "$CONF" 2>"$e")"; RC=$?
  ERR="$(cat "$e")"; rm -f "$e"
}
show() { { echo "exit $RC"; echo "$OUT"; echo "$ERR"; } | sed 's/^/#   /' | head -n 20; }
has() { grep -qF -- "$1" <<<"$2"; }

cp "$CONF" "$CONF.orig"; cp "$S/access" "$S/access.orig"
restore() { cp "$CONF.orig" "$CONF"; cp "$S/access.orig" "$S/access"; "$MXSENTRY_BIN" reload --config "$CONF" >/dev/null 2>&1 || kill -HUP "$(head -n1 "$S/pid")"; }

check "control socket is mode 0600" [ "$(stat -c %a "$S/control.sock" 2>/dev/null)" = 600 ]

sed -i 's/^enabled = false$/enabled = true\ndelay = "1h"\nclient_autowhite_after = 0\npool_by_rdns = false/' "$CONF"
mx reload
check "reload (greylisting on): exit 0, 'reloaded ...'" bash -c "[ $RC -eq 0 ] && grep -q '^reloaded .*access rules' <<<\"\$1\"" _ "$OUT" || show

FROM="ctl-$R@sender.good.test"; RCPT=rcpt@example.org
KEY="t:192.0.2.0/24|$FROM|$RCPT"
T=(--client-ip 192.0.2.80 --from "$FROM" --rcpt "$RCPT")
out="$(pf 192.0.2.80 alias.fcrdns.test --from "$FROM" --to "$RCPT")"
check "Postfix: new triplet -> 450 4.7.1 Greylisted" reply_is "RCPT TO" "$out" '^<\*\* 450 4\.7\.1 Greylisted, try again in 3600 seconds$'

mx greylist list --prefix "t:192.0.2.0/24|ctl-$R@"
check "list through the daemon: the triplet Postfix tried, greylisted" has "$KEY  greylisted  passed=0 blocked=1" "$OUT" || show
check "list: stderr says (via the running daemon)" has "(via the running daemon)" "$ERR" || show

mx explain --client-ip 192.0.2.80 --client-name alias.fcrdns.test --helo helo.good.test --from "$FROM" --rcpt "$RCPT"
check "explain: reads the daemon's greylist state" has "greylist state: the running daemon's store" "$OUT" || show
check "explain: the triplet retried too early, 450" bash -c "grep -qF '$KEY retried too early' <<<\"\$1\" && grep -q 'verdict: greylist  reply: 450 4.7.1' <<<\"\$1\"" _ "$OUT" || show

mx greylist del "${T[@]}"
check "del through the daemon: 'deleted KEY'" [ "$OUT" = "deleted $KEY" ] || show
mx greylist list --prefix "t:192.0.2.0/24|ctl-$R@"
check "list: the triplet is gone" [ "$OUT" = "0 entries" ] || show

mx greylist add "${T[@]}"
check "add through the daemon: whitelisted until <date> (greylist.autowhite)" bash -c "grep -qE '^added .+: whitelisted until .+ \\(greylist\\.autowhite = 1d;' <<<\"\$1\"" _ "$OUT" || show
out="$(pf 192.0.2.80 alias.fcrdns.test --from "$FROM" --to "$RCPT" --header "X-E2E-Id: ctl-add-$R")"
check "Postfix: the added triplet passes at once (250, queued)" grep -qE "$QUEUED" <<<"$out" || reply_to "RCPT TO" "$out"
check "the mail reached the sink" wait_sink "$SINK" "ctl-add-$R"

FROM2="perm-$R@sender.good.test"
mx greylist add --client-ip 192.0.2.80 --from "$FROM2" --rcpt "$RCPT" --permanent
check "add --permanent: 'whitelisted permanently'" has ": whitelisted permanently" "$OUT" || show
out="$(pf 192.0.2.80 alias.fcrdns.test --from "$FROM2" --to "$RCPT")"
check "Postfix: the permanent triplet passes" grep -qE "$QUEUED" <<<"$out"
mx greylist purge
mx greylist list --prefix "t:192.0.2.0/24|perm-$R@"
check "purge leaves it; list shows permanent, expires=never" bash -c "grep -qE '  permanent  .* expires=never$' <<<\"\$1\"" _ "$OUT" || show

mx status
pid="$(head -n1 "$S/pid")"
check "status: exit 0, version and the daemon's pid" bash -c "[ $RC -eq 0 ] && grep -q '^version: ' <<<\"\$1\" && grep -q '^pid: $pid\$' <<<\"\$1\"" _ "$OUT" || show
check "status: config file, uptime, last reload ok" bash -c "grep -qF 'config: $CONF' <<<\"\$1\" && grep -q '^uptime: ' <<<\"\$1\" && grep -q '^last reload: ok ' <<<\"\$1\"" _ "$OUT" || show
check "status: embedded store, entries, last commit" bash -c "grep -qF 'store: embedded $S/greylist.db' <<<\"\$1\" && grep -qE '^store entries: [0-9]+$' <<<\"\$1\" && grep -q '^store last commit: ' <<<\"\$1\"" _ "$OUT" || show

# a bad access file: refused with file:line: reason, the running rules stay
n="$(wc -l < "$S/access")"
echo "From:new-$R.test FROBNICATE" >> "$S/access"
mx reload
check "bad reload: exit 1" [ "$RC" -eq 1 ] || show
check "bad reload: '$S/access:$((n + 1)): reason'" has "$S/access:$((n + 1)): " "$ERR" || show
out="$(pf 192.0.2.80 alias.fcrdns.test --from "x-$R@reject.example" --to "$RCPT")"
check "old rules still enforced: From:reject.example -> 550" reply_is "RCPT TO" "$out" '^<\*\* 550 5\.7\.1 '
out="$(pf 192.0.2.80 alias.fcrdns.test --from "other-$R@sender.good.test" --to "$RCPT")"
check "greylisting still on after the refused reload: 450" reply_is "RCPT TO" "$out" '^<\*\* 450 4\.7\.1 Greylisted'

cp "$CONF.orig" "$CONF"; cp "$S/access.orig" "$S/access"
mx reload
check "good reload restores the config: exit 0" [ "$RC" -eq 0 ] || { show; restore; }
out="$(pf 192.0.2.80 alias.fcrdns.test --from "after-$R@sender.good.test" --to "$RCPT")"
check "greylisting off again: 250" grep -qE "$QUEUED" <<<"$out"
e2e_finish
