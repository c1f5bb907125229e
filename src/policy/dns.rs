//! Steps 4 and 5 for the DNS lookups: DNSWL, PTR/FCrDNS, HELO resolution, DNSBL/RHSBL.

use crate::checks::{dnsbl, helo, rdns, Finding};
use crate::config::Action as FindingAction;
use crate::lookups::DnsResults;
use crate::reason::Reason;

use super::outcome::{parse_reply, render_helo, Outcome, DYNAMIC_REPLY};
use super::{Envelope, Policy};

impl Policy {
    /// Step 4 and 5 for the DNS lookups: DNSWL, PTR/FCrDNS, HELO resolution, DNSBL/RHSBL.
    pub(super) fn dns_findings(
        &self,
        env: &Envelope<'_>,
        r: &DnsResults<'_>,
        findings: &mut Vec<Finding>,
        outcome: &mut Outcome,
    ) {
        let ip = env.client_ip.map(|i| i.to_string()).unwrap_or_default();
        let cfg = &self.config;
        let temp_reply = || parse_reply(&cfg.dns.tempfail_reply);

        // 4. An allow-list hit vouches for the address: skip the IP block lists.
        let allowed = dnsbl::allow_listed(r.allow_lists);
        if let Some(z) = allowed {
            findings.extend(z.findings());
            outcome.allow_listed = true;
        } else {
            // Every allow list's answer is shown, like the block lists' (and carried as
            // evidence, so replay need not ask again): not listed, failed, or a listing by a
            // zone that is not trusted (zone health), which vouches for nobody.
            findings.extend(dnsbl::findings(r.allow_lists));
        }

        // PTR / FCrDNS. A failed lookup refuses only as far as the rDNS actions could have.
        let rdns_temp = FindingAction::on_temp_failure(
            &[cfg.rdns.no_ptr, cfg.rdns.forged, cfg.rdns.dynamic],
            cfg.dns.temp_failure,
        );
        match r.rdns {
            None if !r.rdns_missing => {}
            None => {
                findings.push(Finding {
                    check: "rdns",
                    outcome: "temp".into(),
                    detail: "reverse lookup did not finish in time".into(),
                    ..Default::default()
                });
                outcome.add(rdns_temp, temp_reply(), Reason::RdnsError, "temp");
            }
            Some(res) => {
                findings.extend(res.findings());
                // A dynamic-looking name must not become a greylist pool: a whole ISP dial-up
                // range would share one key and could get whitelisted together.
                if res.dynamic.is_none() {
                    outcome.verified_name = res.verified_name.clone();
                }
                let name = res.judged_name().unwrap_or("unknown");
                let vars = |t: &str| t.replace("{client_ip}", &ip).replace("{client_name}", name);
                match res.outcome {
                    rdns::RdnsOutcome::Ok => {}
                    rdns::RdnsOutcome::NoPtr => outcome.add(
                        cfg.rdns.no_ptr,
                        parse_reply(&vars(&cfg.rdns.no_ptr_reply)),
                        Reason::RdnsNone,
                        "no_ptr",
                    ),
                    rdns::RdnsOutcome::Forged => outcome.add(
                        cfg.rdns.forged,
                        parse_reply(&vars(&cfg.rdns.forged_reply)),
                        Reason::RdnsForged,
                        "forged",
                    ),
                    rdns::RdnsOutcome::Temp => {
                        outcome.add(rdns_temp, temp_reply(), Reason::RdnsError, "temp")
                    }
                }
                if res.dynamic.is_some() {
                    let reply = parse_reply(&vars(DYNAMIC_REPLY));
                    outcome.add(cfg.rdns.dynamic, reply, Reason::RdnsDynamic, "dynamic");
                }
            }
        }

        // Optional: the HELO name must resolve (only asked when its syntax passed).
        if let Some(res) = r.helo_resolve {
            match res {
                // Kept as evidence (a replay need not look it up again); not notable.
                helo::HeloResolve::Resolves => findings.push(Finding {
                    check: "helo",
                    outcome: "resolves".into(),
                    detail: format!("HELO {} resolves", env.helo),
                    ..Default::default()
                }),
                helo::HeloResolve::NxDomain => {
                    findings.push(Finding {
                        check: "helo",
                        outcome: "unresolvable".into(),
                        detail: format!("HELO {}: no A/AAAA record", env.helo),
                        ..Default::default()
                    });
                    let reply = render_helo(&cfg.helo.reply, env.helo);
                    outcome.add(
                        cfg.helo.action,
                        reply,
                        Reason::HeloUnresolvable,
                        "unresolvable",
                    );
                }
                helo::HeloResolve::Temp(e) => {
                    findings.push(Finding {
                        check: "helo",
                        outcome: "temp".into(),
                        detail: format!("HELO {}: lookup failed: {e}", env.helo),
                        ..Default::default()
                    });
                    let action =
                        FindingAction::on_temp_failure(&[cfg.helo.action], cfg.dns.temp_failure);
                    outcome.add(action, temp_reply(), Reason::HeloError, "temp");
                }
            }
        }

        // 5. Block lists: IP lists (unless allow-listed) and the sender's domain lists.
        let ip_lists: &[dnsbl::ZoneResult] = if allowed.is_some() { &[] } else { r.ip_lists };
        let mut score = 0i32;
        let mut heaviest: Option<&dnsbl::ZoneResult> = None;
        let mut unknown_weight = 0i32;
        for z in ip_lists.iter().chain(r.domain_lists) {
            findings.extend(z.findings());
            if z.counts() {
                score += z.weight;
                if heaviest.is_none_or(|h| z.weight > h.weight) {
                    heaviest = Some(z);
                }
            } else if z.may_tempfail() {
                unknown_weight += z.weight.max(0);
            }
        }
        let threshold = cfg.dnsbl.threshold as i32;
        if let Some(z) = heaviest {
            let domain = crate::lookups::sender_domain(env.sender);
            let reply = parse_reply(&z.reply(env.client_ip, domain.as_deref()));
            let action = if score >= threshold {
                cfg.dnsbl.action
            } else {
                cfg.dnsbl.below_threshold
            };
            let reason = match z.kind {
                dnsbl::ZoneKind::Domain => Reason::RhsblListed,
                _ => Reason::DnsblListed,
            };
            outcome.add(action, reply, reason, &z.zone);
        }
        // A list that failed is ignored (counted, logged in the findings), unless its
        // `temp_failure = "tempfail"` and it could have tipped the score: then the client is
        // asked to come back (never rejected on a DNS error).
        if score < threshold
            && score + unknown_weight >= threshold
            && matches!(
                cfg.dnsbl.action,
                FindingAction::Reject | FindingAction::Tempfail
            )
        {
            outcome.add(
                FindingAction::Tempfail,
                temp_reply(),
                Reason::DnsblError,
                "temp",
            );
        }
    }
}
