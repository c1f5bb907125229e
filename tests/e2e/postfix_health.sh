#!/bin/bash
# End to end with a real Postfix for the DNS list zone health guard: two broken lists are added
# to the running daemon by `mxsentry reload` (health_check_interval 1s) — wildbl.test, a retired
# list whose domain lists everything with a wildcard (NJABL 2024), and refusedbl.test, which
# answers 127.255.255.254 to every query (a list refusing our resolver). Both are judged
# unhealthy by their RFC 5782 probes and never refuse a clean client (the log says why), while
# the healthy bl.test still rejects its listed client. Also the change log lines, the
# mxsentry_dnsbl_zone_healthy metric, `mxsentry status` and `mxsentry explain`. The config is
# restored (and reloaded) at the end.
# Usage: bash tests/e2e/postfix_health.sh   (alone it starts DNS + daemon + postfix itself)
set -uo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init postfix_health
command -v swaks >/dev/null || { bad "swaks not installed (tests/testbed/install.sh)"; e2e_finish; }
e2e_need dns daemon postfix
R="$RANDOM"
S="$(mx_dir)"; CONF="$S/mxsentry.toml"
QUEUED='^<-  250 2\.0\.0 Ok: queued as '

pf() {
  local addr="$1" name="$2"; shift 2
  timeout 120 swaks --server "$PF_ADDR:$PF_PORT" --timeout 60 --helo helo.good.test --to rcpt@example.org \
    --xclient-addr "$addr" --xclient-name "$name" --xclient-reverse-name "$name" "$@" 2>&1
}
# mx ARGS... : the admin command against the running daemon's config; sets OUT, RC
mx() { OUT="$(timeout 120 "$MXSENTRY_BIN" "$@" --config "$CONF" 2>&1)"; RC=$?; }
show() { { echo "exit $RC"; echo "$OUT"; } | sed 's/^/#   /' | head -n 30; }
status_has() { mx status; grep -qE -- "$1" <<<"$OUT"; }
metric() {  # metric SERIES : its value on /metrics (empty when absent)
  "$SYS_PY" - "http://127.0.0.1:$METRICS_PORT/metrics" "$1" <<'PY'
import sys, urllib.request
body = urllib.request.urlopen(sys.argv[1], timeout=20).read().decode()
for line in body.splitlines():
    name, _, value = line.rpartition(" ")
    if name == sys.argv[2]:
        print(int(float(value)))
PY
}

cp "$CONF" "$CONF.health-orig"
restore() { cp "$CONF.health-orig" "$CONF"; "$MXSENTRY_BIN" reload --config "$CONF" >/dev/null 2>&1 || kill -HUP "$(head -n1 "$S/pid")"; }
cat >> "$CONF" <<'EOT'

[dnsbl]
health_check_interval = "1s"

[[dnsbl.zones]]
zone = "wildbl.test"

[[dnsbl.zones]]
zone = "refusedbl.test"
EOT
mx reload
check "reload with the two broken lists: exit 0" [ "$RC" -eq 0 ] || show

check "status: wildbl.test unhealthy, 127.0.0.1 listed" \
  wait_for 30 status_has '^dnsbl zone wildbl\.test: UNHEALTHY since .*: 127\.0\.0\.1 listed: listings are log-only$' || show
check "status: refusedbl.test unhealthy, refused by the list" \
  wait_for 30 status_has '^dnsbl zone refusedbl\.test: UNHEALTHY since .*: answer 127\.255\.255\.254 \(refused by the list\)' || show
check "status: bl.test healthy" status_has '^dnsbl zone bl\.test: healthy since ' || show
check "log: wildbl.test turned unhealthy, with the reason" \
  wait_mxlog "DNS list zone health: wildbl.test unknown (not yet probed) -> unhealthy: 127.0.0.1 listed"
check "log: refusedbl.test turned unhealthy, with the reason" \
  wait_mxlog "DNS list zone health: refusedbl.test unknown (not yet probed) -> unhealthy: answer 127.255.255.254 (refused by the list)"
check "metric: mxsentry_dnsbl_zone_healthy{zone=\"bl.test\"} 1" [ "$(metric 'mxsentry_dnsbl_zone_healthy{zone="bl.test"}')" = 1 ]
check "metric: mxsentry_dnsbl_zone_healthy{zone=\"wildbl.test\"} 0" [ "$(metric 'mxsentry_dnsbl_zone_healthy{zone="wildbl.test"}')" = 0 ]
check "metric: mxsentry_dnsbl_zone_healthy{zone=\"refusedbl.test\"} 0" [ "$(metric 'mxsentry_dnsbl_zone_healthy{zone="refusedbl.test"}')" = 0 ]

# A clean client (name vouched for by Postfix, in no healthy list): the wildcard "lists" it.
out="$(pf 192.0.2.40 mail.vouched.test --from "health-clean-$R@sender.good.test")"
check "clean client, listed only by the wildcard list: RCPT TO -> 250" reply_is "RCPT TO" "$out" '^<-  250 '
check "clean client: message queued" grep -qE "$QUEUED" <<<"$out"
check "clean client: the log says the wildcard listing is log-only, and why" \
  wait_mxlog "from=<health-clean-$R@sender.good.test>" \
  "dnsbl.untrusted(wildbl.test: 40.2.0.192.wildbl.test -> 127.0.0.2 (weight 1)" \
  "zone wildbl.test unhealthy: 127.0.0.1 listed -> its listing is log-only)"
check "clean client: the refusing list is logged as refused, no listing" \
  wait_mxlog "from=<health-clean-$R@sender.good.test>" "dnsbl.refused(refusedbl.test: 40.2.0.192.refusedbl.test -> 127.255.255.254"

out="$(pf 192.0.2.100 '[UNAVAILABLE]' --from "health-listed-$R@sender.good.test")"
check "client listed in the healthy bl.test: RCPT TO -> 550 5.7.1 ... listed in bl.test" reply_is "RCPT TO" "$out" \
  '^<\*\* 550 5\.7\.1 Mail from 192\.0\.2\.100 refused, listed in bl\.test$'

# explain looks the client's rDNS up itself: a client with FCrDNS (192.0.2.80, via a CNAME)
mx explain --client-ip 192.0.2.80 --helo helo.good.test --from a@sender.good.test --rcpt u@example.org
check "explain: wildbl.test unhealthy -> its listing is log-only" \
  grep -qF "zone wildbl.test (dnsbl) unhealthy: 127.0.0.1 listed -> its listing is log-only" <<<"$OUT" || show
check "explain: bl.test healthy" grep -qF "zone bl.test (dnsbl): healthy" <<<"$OUT" || show
check "explain: the wildcard's listing shown as untrusted" \
  grep -qE "dnsbl\.untrusted +wildbl\.test: 80\.2\.0\.192\.wildbl\.test -> 127\.0\.0\.2" <<<"$OUT" || show
check "explain: clean client -> accept" grep -q "verdict: accept" <<<"$OUT" || show

restore
check "restored config: the broken lists are gone from status" \
  wait_for 30 bash -c "! \"$MXSENTRY_BIN\" status --config '$CONF' 2>/dev/null | grep -q wildbl"
check "restored config: their metric series are gone" [ -z "$(metric 'mxsentry_dnsbl_zone_healthy{zone="wildbl.test"}')" ]

e2e_finish
