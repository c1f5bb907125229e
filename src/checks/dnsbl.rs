//! DNS lists: IP block lists (DNSBL) on the client address, domain block lists (RHSBL) on the
//! sender's domain, and IP allow lists (DNSWL).
//!
//! Every zone of a kind is queried at once: an A query for `<reversed address>.<zone>` (IPv4
//! `2.0.0.127.zone`, IPv6 32 nibbles) or `<domain>.<zone>`. Per zone:
//!
//! * NXDOMAIN / NODATA → [`ZoneOutcome::NotListed`];
//! * any answer in 127.255.255.0/24 → [`ZoneOutcome::Refused`]: the operator refused the query
//!   (Spamhaus: public resolver or over quota). Never a listing, whatever the return codes say;
//! * answers that pass the zone's return codes ([`DnsblZone::is_listed`]) →
//!   [`ZoneOutcome::Listed`], and then the TXT record at the same name is fetched (best
//!   effort: a TXT failure leaves `txt` empty and does not change the listing);
//! * other answers (outside the return codes, or outside 127/8, e.g. an NXDOMAIN-rewriting
//!   resolver) → `NotListed`, the answers kept as evidence;
//! * a DNS error → [`ZoneOutcome::Error`], for that zone only.
//!
//! A zone's `timeout` bounds that zone's lookups (A and TXT each); it can shorten, not lengthen,
//! the resolver's own `dns.timeout`.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::task::Poll;

pub mod board;
pub mod health;
pub mod probe;

use crate::checks::{Evidence, Finding, MAX_EVIDENCE_ANSWERS};
use crate::config::{DnsblZone, TempFailureAction};
use crate::dns::{reversed_ip, Dns, DnsError};

/// The reply used when a zone has no `message` (IP lists and allow lists).
pub const DEFAULT_MESSAGE: &str = "550 5.7.1 Mail from {client_ip} refused, listed in {zone}";
/// The reply used when a domain zone has no `message`.
pub const DEFAULT_DOMAIN_MESSAGE: &str =
    "550 5.7.1 Sender domain {sender_domain} refused, listed in {zone}";
/// Longest TXT text put into a reply (characters).
pub const MAX_TXT_IN_REPLY: usize = 200;
/// Longest TXT text kept as evidence (characters).
const MAX_TXT_KEPT: usize = 512;
/// Longest TXT text (and error text) kept in a finding's evidence for the decision log.
pub const MAX_TXT_EVIDENCE: usize = 255;
/// Longest DNS name (RFC 1035, without the trailing dot).
const MAX_QUERY_NAME: usize = 253;

/// Which list a zone is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ZoneKind {
    /// `[[dnsbl.zones]]`: IP block list (finding check `dnsbl`).
    Ip,
    /// `[[dnsbl.domain_zones]]`: domain block list (finding check `rhsbl`).
    Domain,
    /// `[[dnsbl.allow_zones]]`: IP allow list (finding check `dnswl`).
    Allow,
}

impl ZoneKind {
    /// The finding's check name: `dnsbl`, `rhsbl` or `dnswl`.
    pub fn check_name(&self) -> &'static str {
        match self {
            ZoneKind::Ip => "dnsbl",
            ZoneKind::Domain => "rhsbl",
            ZoneKind::Allow => "dnswl",
        }
    }
}

/// What one zone said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZoneOutcome {
    /// Listed: the answers that passed the return codes, and the TXT text if any.
    Listed {
        codes: Vec<Ipv4Addr>,
        txt: Option<String>,
    },
    /// Not listed (NXDOMAIN, NODATA, or only answers outside the return codes).
    NotListed,
    /// The operator refused the query (a 127.255.255.x answer): an error, never a listing.
    Refused(Ipv4Addr),
    /// The lookup failed.
    Error(DnsError),
}

impl ZoneOutcome {
    /// The stable word used as the finding's outcome: `listed`, `not_listed`, `refused`,
    /// `temp` (temporary DNS error) or `error`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ZoneOutcome::Listed { .. } => "listed",
            ZoneOutcome::NotListed => "not_listed",
            ZoneOutcome::Refused(_) => "refused",
            ZoneOutcome::Error(e) if e.is_temporary() => "temp",
            ZoneOutcome::Error(_) => "error",
        }
    }

    /// The `result` label of `mxsentry_dnsbl_results_total`: `listed`, `not_listed`,
    /// `blocked` (the operator refused the query), `timeout` or `error`.
    pub fn metric_result(&self) -> &'static str {
        match self {
            ZoneOutcome::Listed { .. } => "listed",
            ZoneOutcome::NotListed => "not_listed",
            ZoneOutcome::Refused(_) => "blocked",
            ZoneOutcome::Error(DnsError::Timeout) => "timeout",
            ZoneOutcome::Error(_) => "error",
        }
    }

    /// A lookup that failed temporarily (the zone might have listed the client).
    pub fn is_temporary(&self) -> bool {
        matches!(self, ZoneOutcome::Error(e) if e.is_temporary())
    }
}

/// One zone's answer for one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneResult {
    pub zone: String,
    pub kind: ZoneKind,
    /// The zone's configured weight.
    pub weight: i32,
    /// The zone's configured reply template.
    pub message: Option<String>,
    /// The zone's `temp_failure = "tempfail"`: a failed lookup may tempfail the message.
    pub tempfail_on_error: bool,
    pub outcome: ZoneOutcome,
    /// The name queried (`10.2.0.192.zen.example`).
    pub query: String,
    /// Every A answer received, listing or not (evidence).
    pub answers: Vec<Ipv4Addr>,
    /// Why this zone's answer does not count (zone health: not yet probed, or unhealthy):
    /// a listing is then log-only. `None`: the zone is trusted.
    pub distrust: Option<String>,
}

impl ZoneResult {
    /// True for [`ZoneOutcome::Listed`].
    pub fn is_listed(&self) -> bool {
        matches!(self.outcome, ZoneOutcome::Listed { .. })
    }

    /// Listed by a zone trusted to block ([`is_listed`](Self::is_listed) and no `distrust`):
    /// only such a listing adds its weight or allow-lists the client.
    pub fn counts(&self) -> bool {
        self.is_listed() && self.distrust.is_none()
    }

    /// A failed lookup that may tempfail: the zone's `temp_failure = "tempfail"`, and the
    /// zone is trusted (an unhealthy zone never refuses, not even temporarily).
    pub fn may_tempfail(&self) -> bool {
        self.outcome.is_temporary() && self.tempfail_on_error && self.distrust.is_none()
    }

    /// The TXT text of a listing.
    pub fn txt(&self) -> Option<&str> {
        match &self.outcome {
            ZoneOutcome::Listed { txt, .. } => txt.as_deref(),
            _ => None,
        }
    }

    /// The reply template: the zone's `message`, else [`DEFAULT_MESSAGE`] (or
    /// [`DEFAULT_DOMAIN_MESSAGE`] for a domain list).
    pub fn template(&self) -> &str {
        self.message.as_deref().unwrap_or(match self.kind {
            ZoneKind::Domain => DEFAULT_DOMAIN_MESSAGE,
            ZoneKind::Ip | ZoneKind::Allow => DEFAULT_MESSAGE,
        })
    }

    /// The rendered reply for this zone ([`render_message`] on [`template`](Self::template)).
    pub fn reply(&self, client_ip: Option<IpAddr>, sender_domain: Option<&str>) -> String {
        render_message(
            self.template(),
            &MessageVars {
                client_ip,
                zone: &self.zone,
                txt: self.txt(),
                sender_domain,
            },
        )
    }

    /// One finding: check `dnsbl`/`rhsbl`/`dnswl`, outcome [`ZoneOutcome::as_str`], detail
    /// with the zone, the query, the answers and the TXT text.
    pub fn findings(&self) -> Vec<Finding> {
        let answers = || -> String {
            let list: Vec<String> = self.answers.iter().map(Ipv4Addr::to_string).collect();
            list.join(",")
        };
        let detail = match &self.outcome {
            ZoneOutcome::Listed { codes, txt } => {
                let codes: Vec<String> = codes.iter().map(Ipv4Addr::to_string).collect();
                let mut d = format!(
                    "{}: {} -> {} (weight {})",
                    self.zone,
                    self.query,
                    codes.join(","),
                    self.weight
                );
                if let Some(t) = txt {
                    d.push_str(&format!(" TXT {t:?}"));
                }
                d
            }
            ZoneOutcome::NotListed if self.answers.is_empty() => {
                format!("{}: {} -> NXDOMAIN/NODATA", self.zone, self.query)
            }
            ZoneOutcome::NotListed => format!(
                "{}: {} -> {} (not a listing under the zone's return codes)",
                self.zone,
                self.query,
                answers()
            ),
            ZoneOutcome::Refused(code) => format!(
                "{}: {} -> {code} (query refused by the list operator; not a listing)",
                self.zone, self.query
            ),
            ZoneOutcome::Error(e) => format!("{}: {} -> {e}", self.zone, self.query),
        };
        match (&self.distrust, self.is_listed()) {
            (Some(reason), true) => vec![Finding {
                check: self.kind.check_name(),
                outcome: "untrusted".into(),
                detail: format!(
                    "{detail}; zone {} unhealthy: {reason} -> its listing is log-only",
                    self.zone
                ),
                evidence: self.evidence(),
            }],
            _ => vec![Finding {
                check: self.kind.check_name(),
                outcome: self.outcome.as_str().into(),
                detail,
                evidence: self.evidence(),
            }],
        }
    }
}

impl ZoneResult {
    /// The answers behind this result, bounded ([`MAX_EVIDENCE_ANSWERS`] A records, TXT cut
    /// to [`MAX_TXT_EVIDENCE`] characters).
    fn evidence(&self) -> Evidence {
        let error = match &self.outcome {
            ZoneOutcome::Error(e) => Some(sanitize(&e.to_string(), MAX_TXT_EVIDENCE)),
            _ => None,
        };
        Evidence::Zone {
            zone: self.zone.clone(),
            query: self.query.clone(),
            answers: self
                .answers
                .iter()
                .take(MAX_EVIDENCE_ANSWERS)
                .copied()
                .collect(),
            txt: self.txt().map(|t| sanitize(t, MAX_TXT_EVIDENCE)),
            error,
        }
    }
}

/// Findings of every zone, in the zones' order.
pub fn findings(results: &[ZoneResult]) -> Vec<Finding> {
    results.iter().flat_map(ZoneResult::findings).collect()
}

/// Sum of the weights of the listed block-list zones (IP and domain; allow lists excluded).
pub fn score(results: &[ZoneResult]) -> i32 {
    results
        .iter()
        .filter(|r| r.kind != ZoneKind::Allow && r.counts())
        .map(|r| r.weight)
        .sum()
}

/// The first listed allow-list zone, if any.
pub fn allow_listed(results: &[ZoneResult]) -> Option<&ZoneResult> {
    results
        .iter()
        .find(|r| r.kind == ZoneKind::Allow && r.counts())
}

/// Block-list results at a glance.
#[derive(Debug, Clone)]
pub struct DnsblSummary<'a> {
    /// [`score`] of the results.
    pub score: i32,
    /// Listed block-list zones, heaviest first (the first one names the reply).
    pub listed: Vec<&'a ZoneResult>,
    /// Zones that failed temporarily (they might have listed the client).
    pub temporary: Vec<&'a ZoneResult>,
}

impl<'a> DnsblSummary<'a> {
    /// Summarises block-list results (allow-list results are ignored).
    pub fn new(results: &'a [ZoneResult]) -> DnsblSummary<'a> {
        let blocks = results.iter().filter(|r| r.kind != ZoneKind::Allow);
        let mut listed: Vec<&ZoneResult> = blocks.clone().filter(|r| r.counts()).collect();
        listed.sort_by_key(|r| std::cmp::Reverse(r.weight));
        DnsblSummary {
            score: score(results),
            listed,
            temporary: blocks
                .filter(|r| r.outcome.is_temporary() && r.distrust.is_none())
                .collect(),
        }
    }

    /// Whether the score reaches `threshold` (`dnsbl.threshold`).
    pub fn reached(&self, threshold: u32) -> bool {
        i64::from(self.score) >= i64::from(threshold)
    }

    /// Whether the failed zones could have lifted the score to `threshold`: the sum of their
    /// positive weights added to the score reaches it (a reason to tempfail, not to reject).
    pub fn could_reach(&self, threshold: u32) -> bool {
        let missing: i64 = self
            .temporary
            .iter()
            .map(|r| i64::from(r.weight.max(0)))
            .sum();
        !self.reached(threshold) && i64::from(self.score) + missing >= i64::from(threshold)
    }
}

/// Queries the client address in every zone, all at once (see the module docs).
pub async fn query_ip(
    dns: &Dns,
    ip: IpAddr,
    zones: &[DnsblZone],
    kind: ZoneKind,
) -> Vec<ZoneResult> {
    let reversed = reversed_ip(ip.to_canonical());
    join_all(
        zones
            .iter()
            .map(|zone| query_zone(dns, format!("{reversed}.{}", zone.zone), zone, kind)),
    )
    .await
}

/// Queries the sender's domain in every domain zone, all at once. `domain` may be the domain
/// or the whole sender address; it is lowercased and its trailing dot dropped. The null
/// sender, address literals (`user@[192.0.2.1]`), bare addresses and names that are not valid
/// host names are not queried (empty result).
pub async fn query_domain(dns: &Dns, domain: &str, zones: &[DnsblZone]) -> Vec<ZoneResult> {
    let Some(domain) = normalize_domain(domain) else {
        return Vec::new();
    };
    join_all(zones.iter().map(|zone| {
        query_zone(
            dns,
            format!("{domain}.{}", zone.zone),
            zone,
            ZoneKind::Domain,
        )
    }))
    .await
}

/// The domain to query for a sender address or domain, or `None` when there is none.
pub fn normalize_domain(sender: &str) -> Option<String> {
    let s = sender.trim();
    let s = s.strip_prefix('<').unwrap_or(s);
    let s = s.strip_suffix('>').unwrap_or(s);
    let domain = s.rsplit_once('@').map_or(s, |(_, d)| d);
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    if domain.is_empty() || domain.starts_with('[') || domain.parse::<IpAddr>().is_ok() {
        return None;
    }
    crate::checks::helo::valid_host_name(domain).then(|| domain.to_ascii_lowercase())
}

async fn query_zone(dns: &Dns, query: String, zone: &DnsblZone, kind: ZoneKind) -> ZoneResult {
    let mut result = ZoneResult {
        zone: zone.zone.clone(),
        kind,
        weight: zone.weight,
        message: zone.message.clone(),
        tempfail_on_error: zone.temp_failure == TempFailureAction::Tempfail,
        outcome: ZoneOutcome::NotListed,
        query,
        answers: Vec::new(),
        distrust: None,
    };
    if result.query.len() > MAX_QUERY_NAME {
        result.outcome = ZoneOutcome::Error(DnsError::Other(format!(
            "query name longer than {MAX_QUERY_NAME} characters"
        )));
        return result;
    }
    let answer = with_timeout(zone, dns.ipv4(&result.query)).await;
    let answers = match answer {
        Ok(a) => a,
        Err(e) if e.is_negative() => return result,
        Err(e) => {
            result.outcome = ZoneOutcome::Error(e);
            return result;
        }
    };
    result.answers = answers;
    if let Some(&code) = result
        .answers
        .iter()
        .find(|a| matches!(a.octets(), [127, 255, 255, _]))
    {
        result.outcome = ZoneOutcome::Refused(code);
        return result;
    }
    let codes: Vec<Ipv4Addr> = result
        .answers
        .iter()
        .copied()
        .filter(|&a| zone.is_listed(a))
        .collect();
    if codes.is_empty() {
        return result;
    }
    let txt = match with_timeout(zone, dns.txt(&result.query)).await {
        Ok(texts) => clean_txt(&texts.join(" ")),
        Err(_) => None,
    };
    result.outcome = ZoneOutcome::Listed { codes, txt };
    result
}

async fn with_timeout<T>(
    zone: &DnsblZone,
    lookup: impl Future<Output = Result<T, DnsError>>,
) -> Result<T, DnsError> {
    match zone.timeout {
        Some(t) => tokio::time::timeout(t, lookup)
            .await
            .unwrap_or(Err(DnsError::Timeout)),
        None => lookup.await,
    }
}

/// TXT text for evidence: control characters become spaces, runs of blanks shrink to one,
/// at most [`MAX_TXT_KEPT`] characters; `None` when nothing is left.
fn clean_txt(text: &str) -> Option<String> {
    let cleaned = sanitize(text, MAX_TXT_KEPT);
    (!cleaned.is_empty()).then_some(cleaned)
}

/// One line of text safe for an SMTP reply: no CR, LF or other control characters, single
/// spaces, at most `max` characters (with `...` when cut). `%` is kept as is: the milter
/// reply encoder doubles it for sendmail.
fn sanitize(text: &str, max: usize) -> String {
    let mut out = String::new();
    let mut count = 0;
    let mut pending_space = false;
    for c in text.chars() {
        if c.is_control() || c.is_whitespace() {
            pending_space = !out.is_empty();
            continue;
        }
        let needed = 1 + usize::from(pending_space);
        if count + needed > max {
            out.push_str("...");
            break;
        }
        if pending_space {
            out.push(' ');
            count += 1;
            pending_space = false;
        }
        out.push(c);
        count += 1;
    }
    out
}

/// Values for the placeholders of a reply template.
#[derive(Debug, Clone, Copy, Default)]
pub struct MessageVars<'a> {
    /// `{client_ip}` (`unknown` when absent).
    pub client_ip: Option<IpAddr>,
    /// `{zone}`.
    pub zone: &'a str,
    /// `{txt}`: the listing's TXT text (empty when absent), cut to [`MAX_TXT_IN_REPLY`].
    pub txt: Option<&'a str>,
    /// `{sender_domain}` (empty for the null sender).
    pub sender_domain: Option<&'a str>,
}

/// Fills `{client_ip}`, `{zone}`, `{txt}` and `{sender_domain}` in `template`; other `{...}`
/// are left as they are. Substituted values are sanitised (one line, no control characters;
/// TXT cut to [`MAX_TXT_IN_REPLY`] characters), so the result is a single SMTP reply line when
/// the template is.
pub fn render_message(template: &str, vars: &MessageVars<'_>) -> String {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open..];
        let Some(close) = after.find('}') else {
            out.push_str(after);
            return out;
        };
        let key = &after[1..close];
        let value = match key {
            "client_ip" => Some(
                vars.client_ip
                    .map_or_else(|| "unknown".to_string(), |ip| ip.to_canonical().to_string()),
            ),
            "zone" => Some(sanitize(vars.zone, MAX_QUERY_NAME)),
            "txt" => Some(sanitize(vars.txt.unwrap_or(""), MAX_TXT_IN_REPLY)),
            "sender_domain" => Some(sanitize(vars.sender_domain.unwrap_or(""), MAX_QUERY_NAME)),
            _ => None,
        };
        match value {
            Some(v) => {
                out.push_str(&v);
                rest = &after[close + 1..];
            }
            None => {
                // Unknown: keep the `{` and go on after it (the key may hold another `{`).
                out.push('{');
                rest = &after[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Runs futures concurrently on the current task and returns their outputs in order (a small
/// stand-in for `futures::future::join_all`, which is not a dependency).
pub(crate) async fn join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut pending: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut busy = false;
        for (fut, out) in pending.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match fut.as_mut().poll(cx) {
                    Poll::Ready(v) => *out = Some(v),
                    Poll::Pending => busy = true,
                }
            }
        }
        if busy {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    // Every output is set once poll_fn is ready.
    outputs.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests;
