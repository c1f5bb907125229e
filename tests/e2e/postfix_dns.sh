#!/bin/bash
# End to end with a real Postfix for the DNS-based checks (HELO, PTR/FCrDNS, DNSBL/RHSBL/DNSWL),
# clients faked with XCLIENT and every answer served by the test DNS server (tests/testbed/dns).
# Proves that each finding gives the configured SMTP reply at RCPT; that a temporary DNS failure
# (SERVFAIL, no answer) gives a 4xx and never a 5xx; that postmaster@ is still accepted from a listed
# client; that an operator's refusal (127.255.255.254) is no listing; that an allow list skips the
# IP list but not the sender-domain list; and that dry-run never refuses and adds the X-Mxsentry
# header to the delivered message (checked at the sink). Also `mxsentry explain` on the same data.
# Usage: bash tests/e2e/postfix_dns.sh   (alone it starts DNS + daemon + postfix itself)
set -uo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init postfix_dns
command -v swaks >/dev/null || { bad "swaks not installed (tests/testbed/install.sh)"; e2e_finish; }
e2e_need dns daemon postfix
SINK="$D/postfix/sink"; R="$RANDOM"
CONF="$(mx_dir)/mxsentry.toml"

# pf ADDR NAME ARGS... : one transaction through postfix from a faked client
pf() {
  local addr="$1" name="$2"; shift 2
  timeout 120 swaks --server "$PF_ADDR:$PF_PORT" --timeout 60 --helo helo.good.test --to rcpt@example.org \
    --xclient-addr "$addr" --xclient-name "$name" --xclient-reverse-name "$name" "$@" 2>&1
}
QUEUED='^<-  250 2\.0\.0 Ok: queued as '

out="$(pf 192.0.2.10 good.fcrdns.test --from "dns-good-$R@sender.good.test")"
check "FCrDNS ok: RCPT TO -> 250" reply_is "RCPT TO" "$out" '^<-  250 '

out="$(pf 192.0.2.20 '[UNAVAILABLE]' --from "dns-forged-$R@sender.good.test")"
check "forged PTR: RCPT TO -> 450 4.7.25 (rdns.forged = tempfail)" reply_is "RCPT TO" "$out" \
  '^<\*\* 450 4\.7\.25 Client host rejected: hostname forged\.fcrdns\.test does not resolve to address 192\.0\.2\.20$'

out="$(pf 192.0.2.40 '[UNAVAILABLE]' --from "dns-noptr-$R@sender.good.test")"
check "no PTR: RCPT TO -> 450 4.7.25" reply_is "RCPT TO" "$out" \
  '^<\*\* 450 4\.7\.25 Client host rejected: cannot find your hostname, \[192\.0\.2\.40\]$'

# Postfix vouches for a name it verified itself ({client_name}, here set by XCLIENT NAME):
# mxsentry takes it instead of repeating the lookups ([rdns] trust_mta, default on)
out="$(pf 192.0.2.40 mail.vouched.test --from "dns-vouched-$R@sender.good.test")"
check "name verified by Postfix, no PTR in DNS: RCPT TO -> 250 (rdns.trust_mta)" reply_is "RCPT TO" "$out" '^<-  250 '

out="$(pf 192.0.2.50 '[TEMPUNAVAIL]' --from "dns-servfail-$R@sender.good.test")"
check "PTR SERVFAIL: RCPT TO -> 451 4.4.3 (temporary, never 5xx)" reply_is "RCPT TO" "$out" \
  '^<\*\* 451 4\.4\.3 Temporary DNS failure'

out="$(pf 192.0.2.51 '[TEMPUNAVAIL]' --from "dns-timeout-$R@sender.good.test")"
check "PTR never answered: RCPT TO -> 451 4.4.3 before the MTA's milter timeout" reply_is "RCPT TO" "$out" \
  '^<\*\* 451 4\.4\.3 Temporary DNS failure'

# A DNS list that fails is ignored by default (counted, logged), never a refusal: the name is
# vouched for by Postfix (XCLIENT NAME), so only the list decides
out="$(pf 192.0.2.103 mail.vouched.test --from "dns-bl-servfail-$R@sender.good.test")"
check "DNSBL SERVFAIL: RCPT TO -> 250 (the list is ignored, temp_failure = ignore)" reply_is "RCPT TO" "$out" '^<-  250 '
out="$(pf 192.0.2.104 mail.vouched.test --from "dns-bl-timeout-$R@sender.good.test")"
check "DNSBL never answered: RCPT TO -> 250 (the list is ignored)" reply_is "RCPT TO" "$out" '^<-  250 '
check "DNSBL failure: a warning names the zone" wait_mxlog "DNS list gave no usable answer" "zone=bl.test"

out="$(pf 192.0.2.100 '[UNAVAILABLE]' --from "dns-listed-$R@sender.good.test")"
check "DNSBL listed: RCPT TO -> 550 5.7.1 ... listed in bl.test" reply_is "RCPT TO" "$out" \
  '^<\*\* 550 5\.7\.1 Mail from 192\.0\.2\.100 refused, listed in bl\.test$'
out="$(pf 192.0.2.100 '[UNAVAILABLE]' --from "dns-listed-pm-$R@sender.good.test" --to postmaster@example.org)"
check "DNSBL listed: postmaster@ still accepted" reply_is "RCPT TO" "$out" '^<-  250 '
check "DNSBL listed: mail to postmaster@ queued" grep -qE "$QUEUED" <<<"$out"

out="$(pf IPV6:2001:db8::100 '[UNAVAILABLE]' --from "dns-listed6-$R@sender.good.test")"
check "IPv6 DNSBL (nibbles) listed: RCPT TO -> 550 5.7.1" reply_is "RCPT TO" "$out" \
  '^<\*\* 550 5\.7\.1 Mail from 2001:db8::100 refused, listed in bl\.test$'

out="$(pf 192.0.2.102 '[UNAVAILABLE]' --from "dns-refused-$R@sender.good.test")"
check "127.255.255.254 (operator refusal) is no listing: no 550 at RCPT" \
  bash -c '! grep -q "<\*\* 550" <<<"$1"' _ "$out"
check "127.255.255.254: logged as dnsbl.refused" wait_mxlog "from=<dns-refused-$R@sender.good.test>" "dnsbl.refused"

out="$(pf 192.0.2.110 '[UNAVAILABLE]' --from "dns-allowed-$R@sender.good.test")"
check "DNSWL skips the DNSBL hit: no 550 at RCPT" bash -c '! grep -q "<\*\* 550" <<<"$1"' _ "$out"
check "DNSWL: logged dnswl.listed" wait_mxlog "from=<dns-allowed-$R@sender.good.test>" "dnswl.listed"

out="$(pf 192.0.2.10 good.fcrdns.test --from "dns-rhsbl-$R@spammer.test")"
check "RHSBL sender domain: RCPT TO -> 550 5.7.1 ... dbl.test" reply_is "RCPT TO" "$out" \
  '^<\*\* 550 5\.7\.1 Sender domain spammer\.test refused, listed in dbl\.test$'

out="$(timeout 120 swaks --server "$PF_ADDR:$PF_PORT" --timeout 60 --helo mx.example.org --to rcpt@example.org \
  --xclient-addr 192.0.2.10 --xclient-name good.fcrdns.test --xclient-reverse-name good.fcrdns.test \
  --from "dns-helo-$R@sender.good.test" 2>&1)"
check "bogus HELO (our own name): RCPT TO -> 550 5.7.1 Access denied - bogus HELO" reply_is "RCPT TO" "$out" \
  '^<\*\* 550 5\.7\.1 Access denied - bogus HELO mx\.example\.org$'

# --- explain on the same data ---
ex() { "$MXSENTRY_BIN" explain --config "$CONF" --helo helo.good.test --from a@sender.good.test --rcpt u@example.org "$@" 2>&1; }
check "explain: clean client -> accept" grep -q "verdict: accept" <<<"$(ex --client-ip 192.0.2.10)"
out="$(ex --client-ip 192.0.2.20)"
check "explain: forged PTR shows the PTR and the forward answer" grep -q "PTR 192.0.2.20 -> forged.fcrdns.test" <<<"$out"
check "explain: forged PTR -> tempfail 450 4.7.25" grep -q "verdict: tempfail  reply: 450 4.7.25" <<<"$out"
out="$(ex --client-ip 192.0.2.100)"
check "explain: listed IP shows the DNSBL answer and TXT" grep -q "100.2.0.192.bl.test -> 127.0.0.2" <<<"$out"
check "explain: listed IP -> reject 550" grep -q "verdict: reject  reply: 550 5.7.1 Mail from 192.0.2.100 refused, listed in bl.test" <<<"$out"
out="$("$MXSENTRY_BIN" explain --config "$CONF" --client-ip 192.0.2.10 --helo localhost --from a@sender.good.test --rcpt u@example.org 2>&1)"
check "explain: bogus HELO -> reject" grep -q "verdict: reject  reply: 550 5.7.1 Access denied - bogus HELO localhost" <<<"$out"

# --- /metrics after these real sessions: parsed whole by the reference parser, counters moved ---
cat > "$D/metrics_check.py" <<'PY'
import sys, urllib.request
from prometheus_client.parser import text_string_to_metric_families
body = urllib.request.urlopen(sys.argv[1], timeout=20).read().decode()
samples = {}
for fam in text_string_to_metric_families(body):          # raises on any malformed line
    for s in fam.samples:
        samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
def get(name, **labels):
    # The sum over the labels not named (mxsentry_recipients_total also has `reason`).
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))
checks = {
    "recipients rejected >= 4": get("mxsentry_recipients_total", verdict="reject") >= 4,
    "recipients tempfailed >= 3": get("mxsentry_recipients_total", verdict="tempfail") >= 3,
    "dnsbl listed finding": get("mxsentry_findings_total", check="dnsbl", outcome="listed") >= 2,
    "rdns forged finding": get("mxsentry_findings_total", check="rdns", outcome="forged") >= 1,
    "bl.test refusal counted": get("mxsentry_dnsbl_refusals_total", zone="bl.test") >= 1,
    "dns query histogram": get("mxsentry_dns_query_duration_seconds_count", kind="ptr") >= 5,
}
bad = [k for k, v in checks.items() if not v]
print("families parsed:", len({n for n, _ in samples}), "failed:", bad)
sys.exit(1 if bad else 0)
PY
out="$("$SYS_PY" "$D/metrics_check.py" "http://127.0.0.1:$METRICS_PORT/metrics" 2>&1)"
check "metrics: whole /metrics parses (prometheus_client) and counters moved ($out)" grep -q "failed: \[\]" <<<"$out"

# --- dry-run: switch the running daemon by SIGHUP, never refuse, tag the delivered message ---
pid="$(head -n1 "$(mx_dir)/pid")"
sed -i 's/^mode = .*//; s/^\[milter\]$/[milter]\nmode = "dry-run"/' "$CONF"
n0="$(mxlog_count "configuration reloaded")"
kill -HUP "$pid"
wait_for 30 bash -c "[ \$(grep -c 'configuration reloaded' '$(MXLOG)') -gt $n0 ]" || bad "dry-run: reload not logged"
out="$(pf 192.0.2.100 '[UNAVAILABLE]' --from "dns-dry-$R@sender.good.test" --header "X-E2E-Id: dns-dry-$R")"
check "dry-run: listed client gets 250 at RCPT" reply_is "RCPT TO" "$out" '^<-  250 '
check "dry-run: message queued" grep -qE "$QUEUED" <<<"$out"
check "dry-run: delivered copy has X-Mxsentry: would-reject dnsbl=bl.test" wait_sink "$SINK" "X-Mxsentry: would-reject dnsbl=bl.test"
sed -i '/^mode = "dry-run"$/d' "$CONF"
n0="$(mxlog_count "configuration reloaded")"
kill -HUP "$pid"
wait_for 30 bash -c "[ \$(grep -c 'configuration reloaded' '$(MXLOG)') -gt $n0 ]" || bad "enforce: reload not logged"
out="$(pf 192.0.2.100 '[UNAVAILABLE]' --from "dns-enforce-$R@sender.good.test")"
check "back to enforce: listed client -> 550 again" reply_is "RCPT TO" "$out" '^<\*\* 550 5\.7\.1 '

e2e_finish
