//! Zone health: is a DNS list still trustworthy enough to block mail?
//!
//! Retired lists have answered "listed" for the whole Internet (ORDB 2008, AHBL 2015, NJABL
//! 2019 and 2024, spamcannibal 2018), and lists refuse queries from public resolvers with
//! 127.255.255.x answers. A zone is judged by two things:
//!
//! * its RFC 5782 §5 test points, probed at start and every `health_check_interval`
//!   ([`judge_probe`]): 127.0.0.2 / `test` must be listed, 127.0.0.1 / `invalid` must not, and no
//!   answer may lie in 127.255.255.0/24 or outside 127.0.0.0/8;
//! * its listing rate ([`ListingWindow`]): a zone that lists nearly every distinct client (or
//!   sender domain) it is asked about is broken, whatever its test points say.
//!
//! [`ZoneState::apply`] turns a probe verdict and the listing rate into the zone's state; it is
//! pure (the caller passes the time), so the rules are tested with a fake clock. A zone is
//! trusted to block only in [`Health::Healthy`]: before its first probe answers it is
//! [`Health::Unknown`] and its listings are log-only too.

use std::hash::{Hash, Hasher};
use std::net::Ipv4Addr;

use crate::dns::DnsError;

/// Consecutive probes without an answer (timeout, SERVFAIL) after which a zone is unhealthy.
pub const NO_ANSWER_LIMIT: u32 = 3;
/// The listing-rate window (seconds): 10 minutes.
pub const RATE_WINDOW_SECS: u64 = 600;
/// Fewest distinct clients in the window before the listing rate is judged.
pub const RATE_MIN_CLIENTS: usize = 50;
/// Listing share (percent) from which a zone is judged to list everything. A busy site under
/// attack sees 70–90% of its distinct clients in Spamhaus ZEN; a wildcard lists 100%.
pub const RATE_MAX_PERCENT: usize = 98;
/// Clients remembered per zone (a direct-mapped table: memory is bounded, a collision forgets
/// one client, which only makes the estimate more conservative).
const WINDOW_SLOTS: usize = 256;

/// Where a zone stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// No probe has answered yet: listings are log-only.
    Unknown,
    /// The last judgement passed: listings count.
    Healthy,
    /// Listings are log-only, for this reason.
    Unhealthy(String),
}

impl Health {
    pub fn is_healthy(&self) -> bool {
        matches!(self, Health::Healthy)
    }

    /// `healthy`, `unknown (not yet probed)` or `unhealthy (REASON)`: for log lines.
    pub fn describe(&self) -> String {
        match self {
            Health::Unknown => "unknown (not yet probed)".into(),
            Health::Healthy => "healthy".into(),
            Health::Unhealthy(r) => format!("unhealthy ({r})"),
        }
    }

    /// Why listings are log-only; `None` when healthy.
    pub fn distrust_reason(&self) -> Option<String> {
        match self {
            Health::Healthy => None,
            Health::Unknown => Some("not yet probed".into()),
            Health::Unhealthy(r) => Some(r.clone()),
        }
    }
}

/// What one round of test-point probes says about a zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeVerdict {
    Pass,
    Fail(String),
    /// The zone did not answer (timeout, SERVFAIL, REFUSED): nothing learned this round.
    NoAnswer(String),
}

/// The answer to one test-point query: the A records, or the error (NXDOMAIN/NODATA are
/// `Ok(vec![])`).
pub type TestAnswer = Result<Vec<Ipv4Addr>, DnsError>;

/// A test point and whether the zone must list it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestPoint {
    /// `127.0.0.2`, `::ffff:7f00:1`, `test`, ... (or the zone's `test_name`/`test_address`).
    pub label: String,
    pub must_list: bool,
    /// An IPv6 test point: a zone that does not list IPv6 at all answers NXDOMAIN for both, so
    /// a missing listing there is neutral (only a listing that must not be is a failure).
    pub optional: bool,
}

/// Judges the answers to a zone's test points (pairs of point and answer).
///
/// Order: an answer that is an operator's refusal code or not a DNSBL answer at all fails the
/// zone first (the most telling reason), then a listing that must not be, then a missing one;
/// a DNS error on a required point leaves the round without a verdict.
pub fn judge_probe(answers: &[(TestPoint, TestAnswer)]) -> ProbeVerdict {
    for (_, answer) in answers {
        for a in answer.iter().flatten() {
            if matches!(a.octets(), [127, 255, 255, _]) {
                return ProbeVerdict::Fail(format!("answer {a} (refused by the list)"));
            }
            if a.octets()[0] != 127 {
                return ProbeVerdict::Fail(format!(
                    "answer {a} outside 127.0.0.0/8 (wildcard or squatted domain)"
                ));
            }
        }
    }
    // Some(listed) when the point got an answer (NXDOMAIN/NODATA: not listed).
    let listed = |answer: &TestAnswer| match answer {
        Ok(a) => Some(!a.is_empty()),
        Err(e) if e.is_negative() => Some(false),
        Err(_) => None,
    };
    for (point, answer) in answers {
        if !point.must_list && listed(answer) == Some(true) {
            return ProbeVerdict::Fail(format!("{} listed", point.label));
        }
    }
    let mut no_answer = None;
    for (point, answer) in answers.iter().filter(|(p, _)| !p.optional) {
        match (listed(answer), answer) {
            (Some(false), _) if point.must_list => {
                return ProbeVerdict::Fail(format!("{} not listed", point.label));
            }
            (None, Err(e)) => {
                no_answer.get_or_insert_with(|| format!("{}: {e}", point.label));
            }
            _ => {}
        }
    }
    match no_answer {
        Some(e) => ProbeVerdict::NoAnswer(e),
        None => ProbeVerdict::Pass,
    }
}

/// One zone's health over time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneState {
    pub health: Health,
    /// When (Unix seconds) it entered this state; `None` while unknown since start.
    pub since: Option<u64>,
    /// Probes in a row without an answer.
    pub silent_probes: u32,
}

impl Default for ZoneState {
    fn default() -> Self {
        ZoneState {
            health: Health::Unknown,
            since: None,
            silent_probes: 0,
        }
    }
}

/// A change of a zone's state, for the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub old: Health,
    pub new: Health,
}

impl ZoneState {
    /// Applies one probe round and the listing-rate judgement (`overlisting`: the reason when
    /// the zone lists nearly everyone) at `now`. Returns the change, if the state changed.
    ///
    /// * a failed probe or overlisting → unhealthy;
    /// * a passed probe → healthy (unless overlisting);
    /// * no answer → unchanged, until [`NO_ANSWER_LIMIT`] rounds in a row → unhealthy.
    pub fn apply(
        &mut self,
        verdict: &ProbeVerdict,
        overlisting: Option<String>,
        now: u64,
    ) -> Option<Change> {
        let next = match verdict {
            ProbeVerdict::NoAnswer(_) => {
                self.silent_probes = self.silent_probes.saturating_add(1);
                if self.silent_probes >= NO_ANSWER_LIMIT {
                    Health::Unhealthy(format!("no answer for {NO_ANSWER_LIMIT} probes"))
                } else if let Some(r) = overlisting {
                    Health::Unhealthy(r)
                } else {
                    self.health.clone()
                }
            }
            ProbeVerdict::Fail(reason) => {
                self.silent_probes = 0;
                Health::Unhealthy(reason.clone())
            }
            ProbeVerdict::Pass => {
                self.silent_probes = 0;
                overlisting.map_or(Health::Healthy, Health::Unhealthy)
            }
        };
        if next == self.health {
            return None;
        }
        let old = std::mem::replace(&mut self.health, next.clone());
        self.since = Some(now);
        Some(Change { old, new: next })
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// Fingerprint of the client (0: empty).
    key: u64,
    /// Unix seconds of the last lookup.
    at: u64,
    listed: bool,
}

/// The distinct clients a zone was asked about lately and whether it listed them: a fixed
/// table of [`WINDOW_SLOTS`] slots indexed by a hash of the client, so recording is O(1) and
/// memory is bounded whatever the traffic. Judged (a scan of the table) only at probe time.
#[derive(Debug, Clone)]
pub struct ListingWindow {
    slots: Box<[Slot; WINDOW_SLOTS]>,
}

impl Default for ListingWindow {
    fn default() -> Self {
        ListingWindow {
            slots: Box::new([Slot::default(); WINDOW_SLOTS]),
        }
    }
}

impl ListingWindow {
    /// Records one lookup of `client` (an address or a domain) at `now`.
    pub fn record(&mut self, client: &impl Hash, listed: bool, now: u64) {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        client.hash(&mut hasher);
        let key = hasher.finish().max(1);
        let slot = &mut self.slots[(key % WINDOW_SLOTS as u64) as usize];
        *slot = Slot {
            key,
            at: now,
            listed,
        };
    }

    /// (distinct clients, of which listed) looked up in the last [`RATE_WINDOW_SECS`].
    pub fn counts(&self, now: u64) -> (usize, usize) {
        let recent = self
            .slots
            .iter()
            .filter(|s| s.key != 0 && now.saturating_sub(s.at) < RATE_WINDOW_SECS);
        recent.fold((0, 0), |(n, l), s| (n + 1, l + usize::from(s.listed)))
    }

    /// The reason when the zone lists at least [`RATE_MAX_PERCENT`] of at least
    /// [`RATE_MIN_CLIENTS`] distinct clients in the window.
    pub fn overlisting(&self, now: u64) -> Option<String> {
        let (clients, listed) = self.counts(now);
        (clients >= RATE_MIN_CLIENTS && listed * 100 >= clients * RATE_MAX_PERCENT).then(|| {
            format!(
                "listed {}% of {clients} distinct clients in {}m",
                listed * 100 / clients,
                RATE_WINDOW_SECS / 60
            )
        })
    }
}

#[cfg(test)]
#[path = "health_tests.rs"]
mod tests;
