//! Deciding a logged recipient again with the NEW policy, from the evidence of its line.
//!
//! The seam is [`ClientLookups::from_results`]: the DNS answers the log carries become ready
//! lookups, and the real [`Policy::decide_recipient`] runs on them, as `explain` runs it on
//! live lookups. What the line lacks (a zone the old config did not ask, an rDNS or HELO
//! check it did not make, the IP lists of a client an old allow list vouched for) is looked
//! up through NEW's `[dns]` resolver, or, with `--no-dns`, makes the recipient undecidable
//! when the NEW policy would need it.
//!
//! Greylisting never touches a store: the logged greylist step for the recipient
//! (`greylist.new`, `greylist.early`, `greylist.passed`, ...) is taken again when NEW
//! greylists; when the old decision never reached greylisting, the recipient counts as
//! greylisted, "state unknown: would be new" (a first delivery attempt under NEW is).

use std::net::{IpAddr, Ipv4Addr};

use crate::checks::dnsbl::{self, ZoneKind, ZoneOutcome, ZoneResult};
use crate::checks::helo::{self, HeloResolve};
use crate::checks::rdns::{self, ForwardAnswer, RdnsEvidence, RdnsOutcome, RdnsResult};
use crate::config::DnsblZone;
use crate::dns::DnsError;
use crate::lookups::{self, ClientLookups, DnsChecks};
use crate::policy::{Decision, Envelope, Policy};
use crate::reason::Reason;

use super::parse::{EvidenceItem, Record};

/// The NEW policy, and whether lookups are allowed.
pub struct Replayer {
    policy: Policy,
    no_dns: bool,
}

/// A recipient's NEW verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct NewVerdict {
    /// `accept`, `reject`, `tempfail`, `greylist` or `discard`.
    pub verdict: &'static str,
    /// The stable reason code (docs/reasons.md).
    pub reason: String,
    /// What decided (`sender_rules=access:1 From:x REJECT`, `dnsbl=bl.test`); may be empty.
    pub cause: String,
    /// Greylisted by NEW where the old decision never reached greylisting.
    pub greylist_unknown: bool,
}

/// The outcome of replaying one recipient.
#[derive(Debug, Clone, PartialEq)]
pub enum Redecided {
    Decided(NewVerdict),
    /// `--no-dns` and the NEW policy needs answers the line does not carry: what is missing.
    Undecidable(Vec<String>),
}

/// One line's DNS answers for the NEW policy, shared by the line's recipients.
pub struct Prepared {
    lookups: Option<ClientLookups>,
    /// What the line lacks and `--no-dns` forbade looking up.
    missing: Vec<String>,
}

const RDNS_CODES: [&str; 4] = ["rdns.ok", "rdns.none", "rdns.forged", "rdns.error"];
const HELO_CODES: [&str; 3] = ["helo.ok", "helo.unresolvable", "helo.error"];

impl Replayer {
    pub fn new(policy: Policy, no_dns: bool) -> Replayer {
        Replayer { policy, no_dns }
    }

    /// The DNS answers NEW needs for this line: from its evidence, else looked up.
    pub async fn prepare(&self, rec: &Record) -> Prepared {
        let mut missing = Vec::new();
        let Some(ip) = rec.client_ip() else {
            return Prepared {
                lookups: None,
                missing,
            };
        };
        let checks = self.policy.dns_checks().clone();
        let env = self.envelope(rec, "");
        if self.policy.trusted(&env).is_some() || !checks.active {
            return Prepared {
                lookups: None,
                missing,
            };
        }
        let rdns = self.rdns(&checks, ip, rec, &mut missing).await;
        let allow = &checks.dnsbl.allow_zones;
        let allow_lists = self
            .zones(
                &checks,
                rec,
                Target::Ip(ip),
                allow,
                ZoneKind::Allow,
                &mut missing,
            )
            .await;
        // A client an allow list vouches for skips the IP lists: they need not be known.
        let ip_lists = if dnsbl::allow_listed(&allow_lists).is_some() {
            Vec::new()
        } else {
            let zones = &checks.dnsbl.zones;
            self.zones(
                &checks,
                rec,
                Target::Ip(ip),
                zones,
                ZoneKind::Ip,
                &mut missing,
            )
            .await
        };
        let domain = lookups::sender_domain(rec.sender());
        let domain_lists = match domain {
            Some(d) if !checks.dnsbl.domain_zones.is_empty() => {
                let zones = &checks.dnsbl.domain_zones;
                let target = Target::Domain(&d);
                self.zones(&checks, rec, target, zones, ZoneKind::Domain, &mut missing)
                    .await
            }
            _ => Vec::new(),
        };
        let helo_resolve = self.helo(&checks, rec, &mut missing).await;
        let lookups = ClientLookups::from_results(
            checks,
            rdns,
            ip_lists,
            allow_lists,
            domain_lists,
            helo_resolve,
        );
        Prepared {
            lookups: Some(lookups),
            missing,
        }
    }

    /// Decides one of the line's recipients with the NEW policy.
    pub async fn decide(&self, rec: &Record, prepared: &mut Prepared, rcpt: &str) -> Redecided {
        let env = self.envelope(rec, rcpt);
        let d = self
            .policy
            .decide_recipient(&env, prepared.lookups.as_mut())
            .await;
        if !prepared.missing.is_empty() && !decided_before_dns(&d) {
            return Redecided::Undecidable(prepared.missing.clone());
        }
        let greylist_wanted = d
            .findings
            .iter()
            .any(|f| f.reason() == Reason::GreylistNotChecked);
        if greylist_wanted {
            return Redecided::Decided(self.logged_greylist(rec, rcpt));
        }
        Redecided::Decided(NewVerdict {
            verdict: d.verdict.name(),
            reason: d.enforced_reason().as_str().to_string(),
            cause: d.cause,
            greylist_unknown: false,
        })
    }

    fn envelope<'a>(&self, rec: &'a Record, rcpt: &'a str) -> Envelope<'a> {
        Envelope {
            client_ip: rec.client_ip(),
            client_name: &rec.client_name,
            helo: &rec.helo,
            sender: rec.sender(),
            recipient: rcpt,
            authenticated: rec.authenticated,
        }
    }

    /// Step 6 without a store: the greylist step the daemon logged for this recipient.
    fn logged_greylist(&self, rec: &Record, rcpt: &str) -> NewVerdict {
        let logged = rec
            .evidence_of("greylist.")
            .find(|e| e.rcpt.as_deref() == Some(rcpt));
        let (verdict, code, unknown) = match logged.map(|e| e.code.as_str()) {
            Some(code @ ("greylist.new" | "greylist.early")) => ("greylist", code, false),
            Some(code) => ("accept", code, false),
            None => ("greylist", "greylist.new", true),
        };
        let what = code.trim_start_matches("greylist.");
        let cause = if unknown {
            "greylist=new (state unknown: would be new)".to_string()
        } else {
            format!("greylist={what} (as logged)")
        };
        if self.policy.dry_run() && verdict == "greylist" {
            return NewVerdict {
                verdict: "accept",
                reason: Reason::DryRun.as_str().into(),
                cause,
                greylist_unknown: unknown,
            };
        }
        NewVerdict {
            verdict,
            reason: code.to_string(),
            cause,
            greylist_unknown: unknown,
        }
    }

    async fn rdns(
        &self,
        checks: &DnsChecks,
        ip: IpAddr,
        rec: &Record,
        missing: &mut Vec<String>,
    ) -> Option<RdnsResult> {
        if !checks.rdns || lookups::is_loopback(ip) {
            return None;
        }
        let logged = rec
            .evidence
            .iter()
            .find(|e| RDNS_CODES.contains(&e.code.as_str()));
        // Looked up for greylist pools only (`pool_by_rdns`): replay keys no store, so the
        // answer cannot change a verdict and need not be known.
        let cfg = self.policy.config();
        let decides = cfg.rdns_checks_active()
            || (cfg.may_greylist() && !cfg.greylist.allow_client_files.is_empty());
        match logged {
            Some(e) => Some(rdns_from_log(ip, e, &checks.dynamic)),
            None if !decides => None,
            None if self.no_dns => {
                missing.push("rdns (PTR/FCrDNS)".into());
                None
            }
            None => Some(rdns::lookup(&checks.dns, ip, &checks.dynamic).await),
        }
    }

    async fn helo(
        &self,
        checks: &DnsChecks,
        rec: &Record,
        missing: &mut Vec<String>,
    ) -> Option<HeloResolve> {
        let name = rec.helo.trim();
        if !checks.helo_resolves || name.is_empty() {
            return None;
        }
        let logged = rec
            .evidence
            .iter()
            .find(|e| HELO_CODES.contains(&e.code.as_str()));
        let literal = name.starts_with('[') || name.parse::<IpAddr>().is_ok();
        match logged.map(|e| e.code.as_str()) {
            Some("helo.ok") => Some(HeloResolve::Resolves),
            Some("helo.unresolvable") => Some(HeloResolve::NxDomain),
            Some(_) => Some(HeloResolve::Temp(DnsError::Other("as logged".into()))),
            None if literal => Some(HeloResolve::Resolves),
            None if self.no_dns => {
                missing.push(format!("HELO {name} resolution"));
                None
            }
            None => Some(helo::resolves(&checks.dns, name).await),
        }
    }

    /// NEW's zones of one kind, in its order: from the line's evidence, the rest looked up.
    async fn zones(
        &self,
        checks: &DnsChecks,
        rec: &Record,
        target: Target<'_>,
        zones: &[DnsblZone],
        kind: ZoneKind,
        missing: &mut Vec<String>,
    ) -> Vec<ZoneResult> {
        let prefix = match kind {
            ZoneKind::Ip => "dnsbl.",
            ZoneKind::Domain => "rhsbl.",
            ZoneKind::Allow => "dnswl.",
        };
        let mut known: Vec<Option<ZoneResult>> = zones
            .iter()
            .map(|z| {
                rec.evidence_of(prefix)
                    .find(|e| e.zone.as_deref() == Some(z.zone.as_str()))
                    .map(|e| zone_from_log(z, kind, e))
            })
            .collect();
        let unknown: Vec<DnsblZone> = zones
            .iter()
            .zip(&known)
            .filter(|(_, k)| k.is_none())
            .map(|(z, _)| z.clone())
            .collect();
        if !unknown.is_empty() {
            if self.no_dns {
                let check = kind.check_name();
                missing.extend(unknown.iter().map(|z| format!("{check} zone {}", z.zone)));
            } else {
                let found = match target {
                    Target::Ip(ip) => dnsbl::query_ip(&checks.dns, ip, &unknown, kind).await,
                    Target::Domain(d) => dnsbl::query_domain(&checks.dns, d, &unknown).await,
                };
                for r in found {
                    if let Some(slot) = zones.iter().position(|z| z.zone == r.zone) {
                        known[slot] = Some(r);
                    }
                }
            }
        }
        known.into_iter().flatten().collect()
    }
}

/// What a zone is asked about.
#[derive(Clone, Copy)]
enum Target<'a> {
    Ip(IpAddr),
    Domain(&'a str),
}

/// The decision was made by steps 1–3 (trusted, exempt recipient, sender rules): no DNS
/// answer could have changed it.
fn decided_before_dns(d: &Decision) -> bool {
    d.findings
        .first()
        .is_some_and(|f| matches!(f.check, "trusted" | "exemption" | "sender_rules"))
}

/// A zone's result under NEW's settings for the zone (weight, return codes, reply), from the
/// answers the log carries. A listing the daemon logged as untrusted (zone health) stays
/// log-only.
pub fn zone_from_log(z: &DnsblZone, kind: ZoneKind, e: &EvidenceItem) -> ZoneResult {
    let answers: Vec<Ipv4Addr> = e.answers.iter().filter_map(|a| a.parse().ok()).collect();
    let refused = answers
        .iter()
        .copied()
        .find(|a| matches!(a.octets(), [127, 255, 255, _]));
    let outcome = if let Some(error) = &e.error {
        ZoneOutcome::Error(dns_error(error))
    } else if let Some(code) = refused {
        ZoneOutcome::Refused(code)
    } else {
        let codes: Vec<Ipv4Addr> = answers
            .iter()
            .copied()
            .filter(|&a| z.is_listed(a))
            .collect();
        if codes.is_empty() {
            ZoneOutcome::NotListed
        } else {
            ZoneOutcome::Listed {
                codes,
                txt: e.txt.clone(),
            }
        }
    };
    ZoneResult {
        zone: z.zone.clone(),
        kind,
        weight: z.weight,
        message: z.message.clone(),
        tempfail_on_error: z.temp_failure == crate::config::TempFailureAction::Tempfail,
        outcome,
        query: e
            .query
            .clone()
            .unwrap_or_else(|| format!("(client).{}", z.zone)),
        answers,
        distrust: e
            .code
            .ends_with(".untrusted")
            .then(|| "unhealthy when the line was logged".to_string()),
    }
}

/// The DNS error a logged error text stands for (the texts of [`DnsError`]'s `Display`).
fn dns_error(text: &str) -> DnsError {
    match text {
        "NXDOMAIN" => DnsError::NxDomain,
        "no data" => DnsError::NoData,
        "SERVFAIL" => DnsError::ServFail,
        "REFUSED" => DnsError::Refused,
        "timeout" => DnsError::Timeout,
        other => DnsError::Other(other.to_string()),
    }
}

/// The rDNS result the log's evidence describes; the dynamic-name test is NEW's.
pub fn rdns_from_log(ip: IpAddr, e: &EvidenceItem, dynamic: &rdns::DynamicPatterns) -> RdnsResult {
    let ip = ip.to_canonical();
    let outcome = match e.code.as_str() {
        "rdns.ok" => RdnsOutcome::Ok,
        "rdns.none" => RdnsOutcome::NoPtr,
        "rdns.forged" => RdnsOutcome::Forged,
        _ => RdnsOutcome::Temp,
    };
    let forward: Vec<ForwardAnswer> = e
        .forward
        .iter()
        .map(|f| ForwardAnswer {
            name: f.name.clone(),
            addrs: f.addrs.iter().filter_map(|a| a.parse().ok()).collect(),
            error: f.error.clone(),
        })
        .collect();
    let confirmed = forward
        .iter()
        .find(|f| f.addrs.iter().any(|a| a.to_canonical() == ip))
        .map(|f| f.name.clone());
    // Vouched for by the MTA (nothing looked up), or confirmed by an answer cut from the
    // evidence: the first PTR name is the verified one.
    let verified_name = match outcome {
        RdnsOutcome::Ok => confirmed.or_else(|| e.ptr.first().cloned()),
        _ => None,
    };
    let judged = verified_name.clone().or_else(|| e.ptr.first().cloned());
    RdnsResult {
        ip,
        outcome,
        ptr_names: e.ptr.clone(),
        dynamic: judged.and_then(|n| dynamic.matches(&n, ip)),
        verified_name,
        evidence: vec![format!("PTR {ip} -> {} (from the log)", e.ptr.join(","))],
        answers: RdnsEvidence {
            ptr: e.ptr.clone(),
            forward,
            error: e.error.clone(),
            by_mta: e.by_mta,
        },
    }
}

/// The NEW policy (with its rule files), for [`Replayer::new`].
pub fn load_policy(path: &std::path::Path) -> Result<Policy, String> {
    let config = crate::config::Config::load(path).map_err(|e| e.to_string())?;
    Policy::from_config(&config)
}
