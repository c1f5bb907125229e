//! The label values each family accepts, and the helpers that keep labels bounded: a value
//! outside its set becomes `other` (see "Bounded labels" in the module header).

use std::collections::HashSet;
use std::sync::{OnceLock, RwLock};

use prometheus::{IntCounter, IntCounterVec};

use crate::reason::Reason;

/// Verdict label values of `mxsentry_{sessions,messages,recipients}_total` (and
/// `mxsentry_dry_run_verdicts_total`). Anything else is counted as `other`; `continue` (the
/// policy's "accept this recipient") is counted as `accept`.
pub const VERDICTS: [&str; 5] = ["accept", "reject", "tempfail", "discard", "greylist"];

/// `check` label values of `mxsentry_findings_total`; anything else is `other`.
pub const CHECKS: [&str; 9] = [
    "helo",
    "rdns",
    "dnsbl",
    "rhsbl",
    "dnswl",
    "sender_rules",
    "greylist",
    "trusted",
    "exemption",
];

/// `kind` label values of the DNS families; anything else is `other`.
pub const DNS_KINDS: [&str; 5] = ["ptr", "a", "aaaa", "txt", "dnsbl"];

/// Outcomes of a DNS query that are answers, not errors (not counted in
/// `mxsentry_dns_errors_total`).
pub const DNS_ANSWERS: [&str; 3] = ["ok", "nxdomain", "nodata"];

/// `error` label values of `mxsentry_dns_errors_total`; any other non-answer outcome is `other`.
pub const DNS_ERRORS: [&str; 5] = ["timeout", "servfail", "refused", "network", "busy"];

/// `result` label values of `mxsentry_dns_cache_lookups_total`; anything else is `other`.
pub const DNS_CACHE_RESULTS: [&str; 2] = ["hit", "miss"];

/// `result` label values of `mxsentry_dns_prefetch_total`; anything else is `other`.
pub const DNS_PREFETCH_RESULTS: [&str; 4] = ["started", "refreshed", "failed", "dropped"];

/// `result` label values of `mxsentry_dnsbl_results_total`; anything else is `other`.
/// `blocked`: the list answered with one of its 127.255.255.x "you may not query us" codes.
pub const DNSBL_RESULTS: [&str; 5] = ["listed", "not_listed", "timeout", "error", "blocked"];

/// `reason` label values of `mxsentry_protocol_errors_total`; anything else is `other`.
pub const PROTOCOL_ERRORS: [&str; 10] = [
    "frame_too_large",
    "macro_limit",
    "truncated",
    "unknown_command",
    "malformed",
    "not_negotiated",
    "negotiation_timeout",
    "idle_timeout",
    "write_timeout",
    "io",
];

/// `reason` label values of `mxsentry_metrics_http_connections_dropped_total`: connections to
/// the metrics endpoint closed at the connection cap before their response (`evicted`), answered
/// 408 (`head_timeout`), 431 (`too_large`) or 400 (`malformed`), or whose response could not be
/// written in time (`write_timeout`; a refused one can be counted twice, e.g. a 431 nobody
/// reads). Anything else is `other`.
pub const HTTP_DROP_REASONS: [&str; 5] = [
    "evicted",
    "head_timeout",
    "too_large",
    "malformed",
    "write_timeout",
];
/// `action` label values of `mxsentry_connections_overflow_total`: what a connection over
/// `max_connections` got. Anything else is `other`.
pub const OVERFLOW_ACTIONS: [&str; 3] = ["tempfail", "accept", "close"];

/// `backend` label values of the greylist families (resolved once; other `&'static str`
/// backends are accepted too).
pub const GREYLIST_BACKENDS: [&str; 2] = ["embedded", "redis"];

/// `op` label values of `mxsentry_greylist_operation_duration_seconds` (resolved once; other
/// `&'static str` operations are accepted too).
pub const GREYLIST_OPS: [&str; 7] = [
    "lookup", "record", "touch", "delete", "list", "purge", "commit",
];

/// `op` label values of `mxsentry_control_requests_total` (`invalid`: a malformed, oversized
/// or unknown request); anything else is `other`.
pub const CONTROL_OPS: [&str; 9] = [
    "status", "reload", "list", "get", "put", "delete", "purge", "flush", "invalid",
];

/// `result` label values of `mxsentry_control_requests_total`; anything else is `other`.
pub const CONTROL_RESULTS: [&str; 2] = ["ok", "error"];

/// The label value used for anything outside a family's set.
pub const OTHER: &str = "other";

/// Most distinct free-form values (finding outcomes, DNSBL zones) a family accepts before it
/// counts new ones as `other`.
pub const MAX_DYNAMIC_VALUES: usize = 256;

/// Longest free-form label value (finding outcome) accepted.
pub(super) const MAX_WORD: usize = 32;

/// DNS lookups: 1 ms to 5 s.
pub(super) const DNS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Greylist store operations: 50 µs (in memory) to 2.5 s (a struggling Redis); 2 ms is the
/// store's latency target (p99.9 of lookups), so whether it holds can be read off the buckets.
pub(super) const GREYLIST_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0, 2.5,
];
/// CONNECT to verdict: includes the client's own pace through HELO and MAIL, so up to a minute.
pub(super) const DECISION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A child handle per value of a fixed label set, plus `other` last.
pub(super) struct Fixed<T, const N: usize> {
    names: &'static [&'static str; N],
    pub(super) children: Vec<T>,
}

impl<T: Clone, const N: usize> Fixed<T, N> {
    pub(super) fn new(names: &'static [&'static str; N], make: impl Fn(&str) -> T) -> Self {
        let children = names.iter().copied().chain([OTHER]).map(make).collect();
        Fixed { names, children }
    }

    pub(super) fn index(&self, value: &str) -> usize {
        self.names.iter().position(|n| *n == value).unwrap_or(N)
    }

    pub(super) fn get(&self, value: &str) -> &T {
        &self.children[self.index(value)]
    }
}

/// A counter per verdict ([`VERDICTS`], then `other`) and reason code ([`Reason::ALL`]):
/// at most 6 × the number of codes series, whatever the traffic (codes never hold a zone or an
/// address). Each child is resolved on first use, then recorded lock-free; the verdicts each
/// code typically gives ([`Reason::typical_verdicts`]) exist at 0 from the start, so `rate()`
/// and alerts see their first increment.
pub(super) struct ByReason {
    vec: IntCounterVec,
    children: Vec<OnceLock<IntCounter>>,
}

impl ByReason {
    pub(super) fn new(vec: IntCounterVec) -> Self {
        let children = (0..(VERDICTS.len() + 1) * Reason::ALL.len())
            .map(|_| OnceLock::new())
            .collect();
        let by = ByReason { vec, children };
        for &reason in Reason::ALL {
            for verdict in reason.typical_verdicts() {
                by.get(verdict, reason);
            }
        }
        by
    }

    pub(super) fn get(&self, verdict: &str, reason: Reason) -> &IntCounter {
        let v = VERDICTS
            .iter()
            .position(|n| *n == verdict)
            .unwrap_or(VERDICTS.len());
        let label = VERDICTS.get(v).copied().unwrap_or(OTHER);
        self.children[v * Reason::ALL.len() + reason.index()]
            .get_or_init(|| self.vec.with_label_values(&[label, reason.as_str()]))
    }
}

/// Admits at most [`MAX_DYNAMIC_VALUES`] distinct values of a free-form label.
#[derive(Default)]
pub(super) struct Admitted {
    pub(super) seen: RwLock<HashSet<String>>,
}

impl Admitted {
    pub(super) fn admit<'a>(&self, value: &'a str) -> &'a str {
        if self
            .seen
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(value)
        {
            return value;
        }
        let mut seen = self.seen.write().unwrap_or_else(|e| e.into_inner());
        if seen.contains(value) {
            value
        } else if seen.len() < MAX_DYNAMIC_VALUES {
            seen.insert(value.to_string());
            value
        } else {
            OTHER
        }
    }
}

/// A short lowercase word (`[a-z0-9_]`, 1 to 32 bytes), else `other`.
pub(super) fn word(value: &str) -> &str {
    let ok = !value.is_empty()
        && value.len() <= MAX_WORD
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        value
    } else {
        OTHER
    }
}

/// A DNS zone as written in the configuration (lowercase letters, digits, `-`, `_`, `.`; at
/// most 253 bytes), else `other`.
pub(super) fn zone_name(value: &str) -> &str {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.'
        });
    if ok {
        value
    } else {
        OTHER
    }
}

pub(super) fn verdict_word(verdict: &str) -> &str {
    if verdict == "continue" {
        "accept"
    } else {
        verdict
    }
}
