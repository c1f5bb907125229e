//! Reverse DNS of the client address: PTR, forward-confirmed reverse DNS (FCrDNS) and
//! "dynamic-looking" host names.
//!
//! [`lookup`] gives the same four answers as sendmail's `{client_resolve}` macro:
//!
//! | outcome | sendmail | meaning |
//! |---|---|---|
//! | [`RdnsOutcome::Ok`] | `OK` | a PTR name resolves (A/AAAA, CNAMEs followed) back to the client address |
//! | [`RdnsOutcome::NoPtr`] | `FAIL` | the address has no PTR record (NXDOMAIN or NODATA) |
//! | [`RdnsOutcome::Forged`] | `FORGED` | PTR names exist but none resolves back to the address |
//! | [`RdnsOutcome::Temp`] | `TEMP` | a lookup failed temporarily and nothing was verified |
//!
//! Details: at most [`MAX_PTR_NAMES`] PTR names are checked, their forward lookups run in
//! parallel. Any verifying name wins (so one good PTR among several is `Ok`, even if another
//! name's lookup failed). With no verifying name, one temporarily failed forward lookup makes
//! the result `Temp` (it might have verified); otherwise `Forged`. A PTR lookup error that is
//! not a clean negative answer (SERVFAIL, timeout, REFUSED, ...) is `Temp`: it says nothing
//! about the client. A PTR name that cannot be a DNS name is NXDOMAIN for the resolver, so it
//! counts as "does not verify". RFC 2317
//! (classless delegation) CNAMEs on the PTR side are followed by the resolver. An IPv4-mapped
//! client address (`::ffff:192.0.2.1`) is looked up as its IPv4 address.
//!
//! Dynamic names ([`DynamicPatterns`]) are judged on the verified name when the outcome is
//! `Ok`, otherwise on the first PTR name (a forged or unverifiable name still tells what the
//! address owner calls it); with no PTR name there is nothing to judge.

use std::net::IpAddr;

use regex::{Regex, RegexBuilder};

use crate::checks::dnsbl::join_all;
use crate::checks::{Evidence, Finding, MAX_EVIDENCE_ANSWERS};
use crate::config::RdnsConfig;
use crate::dns::Dns;

/// Most PTR names whose forward lookups are made (the rest are listed in the evidence).
pub const MAX_PTR_NAMES: usize = 10;

/// The FCrDNS result, like sendmail's `{client_resolve}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RdnsOutcome {
    /// A PTR name resolves back to the client address.
    Ok,
    /// No PTR record.
    NoPtr,
    /// PTR names exist, none resolves back to the client address.
    Forged,
    /// A temporary DNS failure and nothing verified: never a reason for a 5xx.
    Temp,
}

impl RdnsOutcome {
    /// The stable word used as the finding's outcome, in logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            RdnsOutcome::Ok => "ok",
            RdnsOutcome::NoPtr => "no_ptr",
            RdnsOutcome::Forged => "forged",
            RdnsOutcome::Temp => "temp",
        }
    }

    /// sendmail's `{client_resolve}` word: `OK`, `FAIL`, `FORGED`, `TEMP`.
    pub fn sendmail_word(&self) -> &'static str {
        match self {
            RdnsOutcome::Ok => "OK",
            RdnsOutcome::NoPtr => "FAIL",
            RdnsOutcome::Forged => "FORGED",
            RdnsOutcome::Temp => "TEMP",
        }
    }
}

impl std::fmt::Display for RdnsOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything [`lookup`] learnt about the client address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RdnsResult {
    /// The client address looked up (IPv4-mapped addresses as IPv4).
    pub ip: IpAddr,
    pub outcome: RdnsOutcome,
    /// The PTR names (lowercased, no trailing dot), in the resolver's order, deduplicated.
    pub ptr_names: Vec<String>,
    /// The first PTR name that resolves back to the address (`Some` exactly when `Ok`).
    pub verified_name: Option<String>,
    /// What made the judged name look dynamic (`token:dsl`, `ip-in-name:...`, `pattern:...`).
    pub dynamic: Option<String>,
    /// The DNS answers behind the outcome, one line each (`PTR 192.0.2.1 -> a.example`).
    pub evidence: Vec<String>,
    /// The same answers, structured (for the JSON decision line).
    pub answers: RdnsEvidence,
}

/// The DNS answers of an rDNS result, structured and bounded (see [`crate::checks::Evidence`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RdnsEvidence {
    /// PTR names (at most [`MAX_EVIDENCE_ANSWERS`]).
    pub ptr: Vec<String>,
    /// Each checked PTR name's forward lookup: its addresses (at most
    /// [`MAX_EVIDENCE_ANSWERS`]) or the error.
    pub forward: Vec<ForwardAnswer>,
    /// The PTR lookup's error (NXDOMAIN, SERVFAIL, timeout, ...).
    pub error: Option<String>,
    /// The MTA verified the name (`[rdns] trust_mta`): nothing was looked up.
    pub by_mta: bool,
}

/// One PTR name's forward (A/AAAA) lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardAnswer {
    pub name: String,
    pub addrs: Vec<IpAddr>,
    pub error: Option<String>,
}

impl RdnsResult {
    /// The name the dynamic test judged: the verified name, else the first PTR name.
    pub fn judged_name(&self) -> Option<&str> {
        self.verified_name
            .as_deref()
            .or_else(|| self.ptr_names.first().map(String::as_str))
    }

    /// True for [`RdnsOutcome::Temp`].
    pub fn is_temporary(&self) -> bool {
        self.outcome == RdnsOutcome::Temp
    }

    /// Findings, check name `rdns`: one with the outcome word (`ok`, `no_ptr`, `forged`,
    /// `temp`) and the evidence, plus one `dynamic` finding when the judged name looks
    /// dynamic.
    pub fn findings(&self) -> Vec<Finding> {
        let head = match (&self.outcome, &self.verified_name) {
            (RdnsOutcome::Ok, Some(name)) => format!("{} verified as {name}", self.ip),
            (RdnsOutcome::NoPtr, _) => format!("{} has no PTR record", self.ip),
            (RdnsOutcome::Forged, _) => format!(
                "{} PTR {} does not resolve back to the address",
                self.ip,
                self.ptr_names.join(",")
            ),
            _ => format!("{} reverse lookup failed temporarily", self.ip),
        };
        let mut detail = head;
        if !self.evidence.is_empty() {
            detail.push_str(": ");
            detail.push_str(&self.evidence.join("; "));
        }
        let mut out = vec![Finding {
            check: "rdns",
            outcome: self.outcome.as_str().into(),
            detail,
            evidence: Evidence::Rdns(Box::new(self.answers.clone())),
        }];
        if let (Some(why), Some(name)) = (&self.dynamic, self.judged_name()) {
            out.push(Finding {
                check: "rdns",
                outcome: "dynamic".into(),
                detail: format!("{name} looks dynamic ({why})"),
                evidence: Evidence::None,
            });
        }
        out
    }
}

/// Looks up the client's PTR names and confirms them forward; see the module docs.
pub async fn lookup(dns: &Dns, ip: IpAddr, dynamic: &DynamicPatterns) -> RdnsResult {
    let ip = ip.to_canonical();
    let mut result = RdnsResult {
        ip,
        outcome: RdnsOutcome::Temp,
        ptr_names: Vec::new(),
        verified_name: None,
        dynamic: None,
        evidence: Vec::new(),
        answers: RdnsEvidence::default(),
    };
    let names = match dns.ptr(ip).await {
        Ok(names) => names,
        Err(e) => {
            result.evidence.push(format!("PTR {ip} -> {e}"));
            result.answers.error = Some(e.to_string());
            result.outcome = if e.is_negative() {
                RdnsOutcome::NoPtr
            } else {
                RdnsOutcome::Temp
            };
            return result;
        }
    };
    for name in names {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if !name.is_empty() && !result.ptr_names.contains(&name) {
            result.ptr_names.push(name);
        }
    }
    result.answers.ptr = result
        .ptr_names
        .iter()
        .take(MAX_EVIDENCE_ANSWERS)
        .cloned()
        .collect();
    if result.ptr_names.is_empty() {
        result.evidence.push(format!("PTR {ip} -> no names"));
        result.outcome = RdnsOutcome::NoPtr;
        return result;
    }
    result
        .evidence
        .push(format!("PTR {ip} -> {}", result.ptr_names.join(",")));
    let checked = &result.ptr_names[..result.ptr_names.len().min(MAX_PTR_NAMES)];
    if result.ptr_names.len() > MAX_PTR_NAMES {
        result.evidence.push(format!(
            "only the first {MAX_PTR_NAMES} of {} PTR names checked",
            result.ptr_names.len()
        ));
    }
    let answers = join_all(checked.iter().map(|name| dns.ips(name))).await;

    let mut temp_failure = false;
    let mut verified = None;
    for (name, answer) in checked.iter().zip(answers) {
        match answer {
            Ok(addrs) => {
                let list: Vec<String> = addrs.iter().map(IpAddr::to_string).collect();
                if result.answers.forward.len() < MAX_EVIDENCE_ANSWERS {
                    result.answers.forward.push(ForwardAnswer {
                        name: name.clone(),
                        addrs: addrs.iter().take(MAX_EVIDENCE_ANSWERS).copied().collect(),
                        error: None,
                    });
                }
                result
                    .evidence
                    .push(format!("A/AAAA {name} -> {}", list.join(",")));
                if verified.is_none() && addrs.iter().any(|a| a.to_canonical() == ip) {
                    verified = Some(name.clone());
                }
            }
            Err(e) => {
                result.evidence.push(format!("A/AAAA {name} -> {e}"));
                if result.answers.forward.len() < MAX_EVIDENCE_ANSWERS {
                    result.answers.forward.push(ForwardAnswer {
                        name: name.clone(),
                        addrs: Vec::new(),
                        error: Some(e.to_string()),
                    });
                }
                temp_failure |= e.is_temporary();
            }
        }
    }
    result.outcome = match (&verified, temp_failure) {
        (Some(_), _) => RdnsOutcome::Ok,
        (None, true) => RdnsOutcome::Temp,
        (None, false) => RdnsOutcome::Forged,
    };
    result.verified_name = verified;
    result.dynamic = result
        .judged_name()
        .and_then(|name| dynamic.matches(name, ip));
    result
}

/// Recognises host names that ISPs give to end-user (dynamic, residential) addresses.
///
/// Built in (applied to the labels left of the registered domain, so the ISP's own domain
/// name never matters; `rr.com`, `example.co.uk` are registered domains):
/// * the client address written into the name: at least three of its decimal octets, in order
///   or reversed, including the last octet as a whole number (`192-0-2-60`, `60.2.0.192`,
///   `c-73-12-45-6`, `cs6669199-144` for 66.69.100.144, zero-padded `066069100144`); the 8
///   hex digits of the address (`p5B0A1C2D`, `c0000240`); the address as one 32-bit
///   number; for IPv6, four consecutive address groups as separate tokens (`2001-db8-0-1`).
///   Only two octets (`a10-219.smtp-out.amazonses.com`, Outlook's
///   `mail-eopbgr690085`) are **not** enough: big legitimate senders number their outbound
///   hosts that way;
/// * a whole alphabetic token (the name split at dots, `-`, `_` and digits) from
///   [`DYNAMIC_TOKENS`] (`dsl`, `dhcp`, `dyn`, `pool`, `ppp`, `cable`, `cpe`, ...), or
///   `host`/`ip` directly followed by a number (`host123`, `ip-1-2-3-4`, `ip68-2-3-4`).
///
/// A `static` token (`static-192-0-2-60.isp.example`) turns the built-in rules off for that
/// name: the ISP says the address is not dynamic. The admin's `rdns.dynamic_patterns`
/// (case-insensitive regexes on the whole name) are tried first and always apply.
#[derive(Debug, Clone, Default)]
pub struct DynamicPatterns {
    extra: Vec<Regex>,
}

/// Alphabetic tokens that mark end-user address space.
pub const DYNAMIC_TOKENS: &[&str] = &[
    "adsl",
    "broadband",
    "cable",
    "cablemodem",
    "catv",
    "client",
    "clients",
    "cpe",
    "cust",
    "customer",
    "dhcp",
    "dial",
    "dialin",
    "dialup",
    "dip",
    "dsl",
    "dyn",
    "dynamic",
    "dynip",
    "ftth",
    "hsd",
    "pool",
    "ppp",
    "pppoe",
    "residential",
    "sdsl",
    "user",
    "users",
    "vdsl",
    "xdsl",
];

/// Tokens that count only when a number follows (`host123`, `ip-1-2-3-4`).
const NUMBERED_TOKENS: &[&str] = &["host", "ip"];

/// Second-level labels under two-letter country TLDs that are not registrable themselves.
const PUBLIC_SECOND_LEVEL: &[&str] = &[
    "ac", "co", "com", "edu", "gob", "go", "gov", "mil", "ne", "net", "or", "org",
];

impl DynamicPatterns {
    /// The built-in rules plus `extra` regexes (case-insensitive). The error names the
    /// pattern that does not compile.
    pub fn new<S: AsRef<str>>(extra: &[S]) -> Result<DynamicPatterns, String> {
        let extra = extra
            .iter()
            .map(|p| {
                RegexBuilder::new(p.as_ref())
                    .case_insensitive(true)
                    .build()
                    .map_err(|e| {
                        format!("invalid rdns.dynamic_patterns regex `{}`: {e}", p.as_ref())
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(DynamicPatterns { extra })
    }

    /// From `[rdns] dynamic_patterns` (already validated when the config was loaded).
    pub fn from_config(config: &RdnsConfig) -> Result<DynamicPatterns, String> {
        DynamicPatterns::new(&config.dynamic_patterns)
    }

    /// What makes `name` look like the dynamic address `ip`'s name, or `None`.
    pub fn matches(&self, name: &str, ip: IpAddr) -> Option<String> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(re) = self.extra.iter().find(|re| re.is_match(&name)) {
            return Some(format!("pattern:{}", re.as_str()));
        }
        let host = host_part(&name);
        if host.is_empty() {
            return None;
        }
        let words = alpha_tokens(host);
        if words.iter().any(|(w, _)| *w == "static") {
            return None;
        }
        for &(word, end) in &words {
            if DYNAMIC_TOKENS.contains(&word) {
                return Some(format!("token:{word}"));
            }
            if NUMBERED_TOKENS.contains(&word) && number_follows(host, end) {
                return Some(format!("token:{word}+number"));
            }
        }
        match ip.to_canonical() {
            IpAddr::V4(v4) => ipv4_in_name(host, u32::from(v4)),
            IpAddr::V6(v6) => ipv6_in_name(host, v6.segments()),
        }
    }
}

/// The labels left of the registered domain (`a.b` of `a.b.isp.co.uk`); empty when the name
/// is a registered domain itself.
fn host_part(name: &str) -> &str {
    let labels: Vec<&str> = name.split('.').collect();
    let n = labels.len();
    let keep = if n >= 3 && labels[n - 1].len() == 2 && PUBLIC_SECOND_LEVEL.contains(&labels[n - 2])
    {
        3
    } else {
        2
    };
    if n <= keep {
        return "";
    }
    let host_len: usize = labels[..n - keep]
        .iter()
        .map(|l| l.len() + 1)
        .sum::<usize>()
        - 1;
    &name[..host_len]
}

/// Maximal runs of ASCII letters, with the byte offset just after each run.
fn alpha_tokens(s: &str) -> Vec<(&str, usize)> {
    runs(s, |b| b.is_ascii_alphabetic())
}

/// Maximal runs of ASCII digits.
fn digit_runs(s: &str) -> Vec<&str> {
    runs(s, |b| b.is_ascii_digit())
        .into_iter()
        .map(|(r, _)| r)
        .collect()
}

fn runs(s: &str, class: impl Fn(u8) -> bool) -> Vec<(&str, usize)> {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if class(bytes[i]) {
            let start = i;
            while i < bytes.len() && class(bytes[i]) {
                i += 1;
            }
            out.push((&s[start..i], i));
        } else {
            i += 1;
        }
    }
    out
}

/// A digit at `at`, or `-`/`_` and then a digit.
fn number_follows(s: &str, at: usize) -> bool {
    let b = s.as_bytes();
    match b.get(at) {
        Some(c) if c.is_ascii_digit() => true,
        Some(b'-' | b'_') => b.get(at + 1).is_some_and(u8::is_ascii_digit),
        _ => false,
    }
}

fn ipv4_in_name(host: &str, addr: u32) -> Option<String> {
    let hex = format!("{addr:08x}");
    if host.contains(&hex) {
        return Some(format!("hex-ip:{hex}"));
    }
    let runs = digit_runs(host);
    let decimal = addr.to_string();
    if runs.iter().any(|r| *r == decimal) {
        return Some(format!("decimal-ip:{decimal}"));
    }
    let octets: Vec<String> = addr.to_be_bytes().iter().map(u8::to_string).collect();
    let forward = [0, 1, 2, 3].map(|i| octets[i].as_str());
    let reversed = [3, 2, 1, 0].map(|i| octets[i].as_str());
    for (order, last_first) in [(forward, false), (reversed, true)] {
        if let Some(found) = octets_in_runs(&runs, order, last_first) {
            return Some(format!("ip-in-name:{}", found.join("-")));
        }
    }
    None
}

/// At least three of `order` (always including the client's last octet: the final element,
/// or the first when `last_first`) found in order in the digit runs. Each octet is found as
/// a substring of a run, after the previous one (so `6669199` holds 66 and 69); the last
/// octet must be a whole number: end its run (start it when reversed, zero padding aside).
fn octets_in_runs<'a>(
    runs: &[&str],
    order: [&'a str; 4],
    last_first: bool,
) -> Option<Vec<&'a str>> {
    // Candidate subsets, largest first; the client's last octet is always included.
    let subsets: [&[usize]; 4] = if last_first {
        [&[0, 1, 2, 3], &[0, 1, 2], &[0, 1, 3], &[0, 2, 3]]
    } else {
        [&[0, 1, 2, 3], &[0, 1, 3], &[0, 2, 3], &[1, 2, 3]]
    };
    let last = if last_first { 0 } else { 3 };
    'subset: for subset in subsets {
        let (mut run, mut off) = (0usize, 0usize);
        for &k in subset {
            let needle = order[k];
            let anchor = match (k == last, last_first) {
                (false, _) => Anchor::Anywhere,
                (true, false) => Anchor::End,
                (true, true) => Anchor::Start,
            };
            loop {
                let Some(hay) = runs.get(run) else {
                    continue 'subset;
                };
                match find_octet(hay, off, needle, anchor) {
                    Some(end) => {
                        (run, off) = if end == hay.len() {
                            (run + 1, 0)
                        } else {
                            (run, end)
                        };
                        break;
                    }
                    None => (run, off) = (run + 1, 0),
                }
            }
        }
        return Some(subset.iter().map(|&k| order[k]).collect());
    }
    None
}

#[derive(Clone, Copy)]
enum Anchor {
    Anywhere,
    /// Ends the run.
    End,
    /// Starts the run, after optional zeros.
    Start,
}

/// Where `needle` ends in `hay[off..]` (the earliest such place), honouring `anchor`.
fn find_octet(hay: &str, off: usize, needle: &str, anchor: Anchor) -> Option<usize> {
    let rest = &hay[off..];
    match anchor {
        Anchor::Anywhere => rest.find(needle).map(|i| off + i + needle.len()),
        Anchor::End => rest.ends_with(needle).then_some(hay.len()),
        Anchor::Start => {
            if off != 0 {
                return None;
            }
            let zeros = hay.len() - hay.trim_start_matches('0').len();
            (0..=zeros)
                .find(|&p| hay[p..].starts_with(needle))
                .map(|p| p + needle.len())
        }
    }
}

/// Four consecutive groups of the address as consecutive hex tokens of the name.
fn ipv6_in_name(host: &str, groups: [u16; 8]) -> Option<String> {
    let tokens: Vec<Option<u16>> = host
        .split(['.', '-', '_'])
        .map(|t| {
            (!t.is_empty() && t.len() <= 4)
                .then(|| u16::from_str_radix(t, 16).ok())
                .flatten()
        })
        .collect();
    const NEED: usize = 4;
    if tokens.len() < NEED {
        return None;
    }
    for window in tokens.windows(NEED) {
        for start in 0..=8 - NEED {
            if window
                .iter()
                .zip(&groups[start..start + NEED])
                .all(|(t, g)| *t == Some(*g))
            {
                let shown: Vec<String> = groups[start..start + NEED]
                    .iter()
                    .map(|g| format!("{g:x}"))
                    .collect();
                return Some(format!("ip-in-name:{}", shown.join("-")));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests;
