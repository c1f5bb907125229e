//! Prometheus metrics: the registry, cheap recording methods for the hot path, and the HTTP
//! endpoint (`GET /metrics`, `GET /healthz`) in [`http`].
//!
//! # Where metrics are recorded
//!
//! Counters are bumped from deep inside the daemon — the connection loop, the session, every
//! check, the DNS layer, the greylist stores, the reload handler. Threading an `Arc<Metrics>`
//! through all of their constructors (and every test that builds one) would touch a dozen
//! signatures for no gain, since a process has exactly one set of metrics. So the daemon uses
//! the process-wide instance returned by [`metrics()`], and a call site is one line:
//!
//! ```
//! mxsentry::metrics::metrics().recipient_verdict("reject", mxsentry::reason::Reason::DnsblListed);
//! ```
//!
//! Tests that need isolated numbers build their own [`Metrics::new()`]; code that wants to be
//! testable that way can take a `&Metrics` and be handed `metrics()` in production.
//!
//! # Bounded labels
//!
//! Label values are never addresses, host names or reply texts. Every method maps a value
//! outside its documented set to `other` (or, for free-form words, a value that is not a short
//! lowercase `[a-z0-9_]` word, or one seen after [`MAX_DYNAMIC_VALUES`] distinct ones), so a
//! wiring mistake costs precision, never memory.
//!
//! # Cost
//!
//! Families whose label values are known in advance (verdicts, DNS kinds and errors, protocol
//! error reasons, greylist backends and operations) are resolved once — at construction, or
//! for the greylist families on first use — into arrays of child handles: recording is a
//! short scan of a constant array, an index and an atomic add, with no hashing, locking or
//! allocation. Families with configured or free-form values (findings, DNSBL zones)
//! go through the registry's label lookup (a hash and a read lock; an allocation only the first
//! time a value is seen). For DNSBL zones, [`Metrics::dnsbl_zone`] returns a handle that the
//! check can build once per configured zone at (re)load time and then use lock-free.
//!
//! Note on the `prometheus` crate: it identifies a child by a hash of its label values
//! concatenated *without a separator*, so `("a", "bc")` and `("ab", "c")` are the same child.
//! The fixed label sets below are chosen (and tested) so that no two combinations concatenate
//! to the same string.

pub mod http;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::sync::{OnceLock, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::reason::Reason;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub use http::{bind, serve, serve_listener};

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
const MAX_WORD: usize = 32;

/// DNS lookups: 1 ms to 5 s.
const DNS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Greylist store operations: 50 µs (in memory) to 2.5 s (a struggling Redis).
const GREYLIST_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5,
];
/// CONNECT to verdict: includes the client's own pace through HELO and MAIL, so up to a minute.
const DECISION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The process-wide metrics, created on first use. See the module documentation for why the
/// daemon uses a global here.
pub fn metrics() -> &'static Metrics {
    static GLOBAL: OnceLock<Metrics> = OnceLock::new();
    GLOBAL.get_or_init(Metrics::new)
}

/// A child handle per value of a fixed label set, plus `other` last.
struct Fixed<T, const N: usize> {
    names: &'static [&'static str; N],
    children: Vec<T>,
}

impl<T: Clone, const N: usize> Fixed<T, N> {
    fn new(names: &'static [&'static str; N], make: impl Fn(&str) -> T) -> Self {
        let children = names.iter().copied().chain([OTHER]).map(make).collect();
        Fixed { names, children }
    }

    fn index(&self, value: &str) -> usize {
        self.names.iter().position(|n| *n == value).unwrap_or(N)
    }

    fn get(&self, value: &str) -> &T {
        &self.children[self.index(value)]
    }
}

/// A counter per verdict ([`VERDICTS`], then `other`) and reason code ([`Reason::ALL`]):
/// at most 6 × the number of codes series, whatever the traffic (codes never hold a zone or an
/// address). Each child is resolved on first use, then recorded lock-free; the verdicts each
/// code typically gives ([`Reason::typical_verdicts`]) exist at 0 from the start, so `rate()`
/// and alerts see their first increment.
struct ByReason {
    vec: IntCounterVec,
    children: Vec<OnceLock<IntCounter>>,
}

impl ByReason {
    fn new(vec: IntCounterVec) -> Self {
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

    fn get(&self, verdict: &str, reason: Reason) -> &IntCounter {
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
struct Admitted {
    seen: RwLock<HashSet<String>>,
}

impl Admitted {
    fn admit<'a>(&self, value: &'a str) -> &'a str {
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
fn word(value: &str) -> &str {
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
fn zone_name(value: &str) -> &str {
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

fn verdict_word(verdict: &str) -> &str {
    if verdict == "continue" {
        "accept"
    } else {
        verdict
    }
}

fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Every metric mxsentry exports, in its own registry (not the `prometheus` crate's global one,
/// so nothing a dependency registers leaks into `/metrics`).
pub struct Metrics {
    registry: Registry,

    sessions: Fixed<IntCounter, 5>,
    messages: Fixed<IntCounter, 5>,
    recipients: ByReason,
    dry_run: ByReason,

    findings: IntCounterVec,
    finding_outcomes: Admitted,

    dnsbl_results: IntCounterVec,
    dnsbl_refusals: IntCounterVec,
    dnsbl_zones: Admitted,
    dnsbl_zone_healthy: IntGaugeVec,
    /// `[kind][error]`, kinds and errors each with `other` last.
    dns_errors: Vec<Vec<IntCounter>>,
    dns_duration: Fixed<Histogram, 5>,
    dns_cache: Fixed<IntCounter, 2>,
    dns_prefetch: Fixed<IntCounter, 4>,

    greylist_entries: IntGaugeVec,
    /// Per [`GREYLIST_BACKENDS`], resolved on first use (a host uses one backend: the other
    /// should not show a misleading 0 entries).
    greylist_entries_fixed: [OnceLock<IntGauge>; GREYLIST_BACKENDS.len()],
    greylist_duration: HistogramVec,
    /// `[backend][op]`, resolved on first use (same reason; and 14 histograms are a lot of
    /// zero series).
    greylist_duration_fixed: [[OnceLock<Histogram>; GREYLIST_OPS.len()]; GREYLIST_BACKENDS.len()],
    greylist_errors: IntCounterVec,
    /// Per [`GREYLIST_BACKENDS`], present at 0 from the start so `increase()` sees the first
    /// error.
    greylist_errors_fixed: [IntCounter; GREYLIST_BACKENDS.len()],
    greylist_store_recoveries: IntCounter,

    connections_open: IntGauge,
    connections_total: IntCounter,
    connections_limit: IntGauge,
    connections_overflow: Fixed<IntCounter, 3>,
    protocol_errors: Fixed<IntCounter, 10>,
    recipients_over_limit: IntCounter,

    http_dropped: Fixed<IntCounter, 5>,

    decision_duration: Histogram,

    reload_success: IntCounter,
    reload_failure: IntCounter,
    /// `[op][result]`, each with `other` last.
    control_requests: Vec<Vec<IntCounter>>,
    /// `{live,shadow}`: both verdict words (see [`Metrics::shadow_verdict`]).
    shadow_verdicts: IntCounterVec,
    last_reload_success: Gauge,
    last_reload_successful: IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh registry with every family registered and every fixed label combination
    /// present at 0 (so `rate()` and alerts work from the first scrape).
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let r = &registry;

        let sessions = counter_vec(
            r,
            "mxsentry_sessions_total",
            "SMTP sessions (CONNECT to QUIT), by the most severe verdict given in them.",
            &["verdict"],
        );
        let messages = counter_vec(
            r,
            "mxsentry_messages_total",
            "Messages (MAIL to end of message or abort), by verdict.",
            &["verdict"],
        );
        let recipients = counter_vec(
            r,
            "mxsentry_recipients_total",
            "Recipients (RCPT commands), by the verdict given to each and its reason code \
             (docs/reasons.md).",
            &["verdict", "reason"],
        );
        let shadow_verdicts = counter_vec(
            r,
            "mxsentry_shadow_verdicts_total",
            "Recipients decided by the live policy and by the [shadow] candidate (never \
             enforced), by both verdicts.",
            &["live", "shadow"],
        );
        let dry_run = counter_vec(
            r,
            "mxsentry_dry_run_verdicts_total",
            "Verdicts that mode = \"dry-run\" logged and tagged instead of enforcing, by \
             verdict and reason code (docs/reasons.md).",
            &["verdict", "reason"],
        );
        let findings = counter_vec(
            r,
            "mxsentry_findings_total",
            "Findings of the checks, by check and outcome word.",
            &["check", "outcome"],
        );
        let dnsbl_results = counter_vec(
            r,
            "mxsentry_dnsbl_results_total",
            "DNS list lookups (block, domain and allow lists), by configured zone and result.",
            &["zone", "result"],
        );
        let dnsbl_refusals = counter_vec(
            r,
            "mxsentry_dnsbl_refusals_total",
            "Refusals (reject or tempfail) caused by a listing, by configured zone.",
            &["zone"],
        );
        let dnsbl_zone_healthy = gauge_vec(
            r,
            "mxsentry_dnsbl_zone_healthy",
            "1 while a DNS list zone passes its RFC 5782 health probes and its listings count; \
             0 while unknown or unhealthy (listings are log-only). Absent when \
             dnsbl.health_check_interval is 0s.",
            &["zone"],
        );
        let dns_errors_vec = counter_vec(
            r,
            "mxsentry_dns_errors_total",
            "DNS lookups that got no answer, by query kind and error.",
            &["kind", "error"],
        );
        let dns_duration_vec = histogram_vec(
            r,
            "mxsentry_dns_query_duration_seconds",
            "Duration of DNS lookups (cache hits included), by query kind.",
            &["kind"],
            DNS_BUCKETS,
        );
        let dns_cache = counter_vec(
            r,
            "mxsentry_dns_cache_lookups_total",
            "DNS queries answered from the cache (hit) or sent to a name server (miss).",
            &["result"],
        );
        let dns_prefetch = counter_vec(
            r,
            "mxsentry_dns_prefetch_total",
            "Background refreshes of cached DNS answers used near the end of their TTL: \
             started, refreshed (new answer stored), failed (old one kept), dropped (too many \
             running).",
            &["result"],
        );
        let greylist_entries = gauge_vec(
            r,
            "mxsentry_greylist_entries",
            "Entries (triplets and autowhitelisted clients) in the greylist store.",
            &["backend"],
        );
        let greylist_duration = histogram_vec(
            r,
            "mxsentry_greylist_operation_duration_seconds",
            "Duration of greylist store operations, by backend and operation.",
            &["backend", "op"],
            GREYLIST_BUCKETS,
        );
        let greylist_errors = counter_vec(
            r,
            "mxsentry_greylist_errors_total",
            "Greylist store failures (the greylist step then fails open), by backend.",
            &["backend"],
        );
        let greylist_store_recoveries = register(
            r,
            IntCounter::new(
                "mxsentry_greylist_store_recoveries_total",
                "Unreadable embedded greylist files moved aside at start (the daemon then \
                 started with an empty store).",
            ),
        );
        let connections_open = register(
            r,
            IntGauge::new(
                "mxsentry_connections_open",
                "MTA connections being served now.",
            ),
        );
        let connections_total = register(
            r,
            IntCounter::new(
                "mxsentry_connections_total",
                "MTA connections accepted since start.",
            ),
        );
        let connections_limit = register(
            r,
            IntGauge::new(
                "mxsentry_connections_limit",
                "MTA connections served at once at most (max_connections, after fitting it to \
                 the open file limit).",
            ),
        );
        let overflow_vec = counter_vec(
            r,
            "mxsentry_connections_overflow_total",
            "MTA connections over the limit, answered at once instead of served, by what they \
             got: tempfail, accept (overflow_action) or close (closed unanswered).",
            &["action"],
        );
        let recipients_over_limit = register(
            r,
            IntCounter::new(
                "mxsentry_recipients_over_limit_total",
                "Recipients beyond max_recipients in their message, answered 452 4.5.3 \
                 without checks.",
            ),
        );
        let protocol_errors_vec = counter_vec(
            r,
            "mxsentry_protocol_errors_total",
            "MTA connections ended by a protocol error or timeout, by reason.",
            &["reason"],
        );
        let http_dropped = counter_vec(
            r,
            "mxsentry_metrics_http_connections_dropped_total",
            "Connections to the metrics endpoint refused or closed before their response, by \
             reason.",
            &["reason"],
        );
        let decision_duration = register(
            r,
            Histogram::with_opts(
                HistogramOpts::new(
                    "mxsentry_decision_duration_seconds",
                    "Time from CONNECT to each verdict.",
                )
                .buckets(DECISION_BUCKETS.to_vec()),
            ),
        );
        let reloads = counter_vec(
            r,
            "mxsentry_config_reloads_total",
            "Configuration reloads (SIGHUP), by result.",
            &["result"],
        );
        let last_reload_success = register(
            r,
            Gauge::new(
                "mxsentry_config_last_reload_success_timestamp_seconds",
                "Unix time of the last successful configuration load (start or reload).",
            ),
        );
        let last_reload_successful = register(
            r,
            IntGauge::new(
                "mxsentry_config_last_reload_successful",
                "1 if the last configuration load succeeded, 0 if the running configuration is \
                 older than the file because the last reload failed.",
            ),
        );
        let control_vec = counter_vec(
            r,
            "mxsentry_control_requests_total",
            "Requests on the control socket (mxsentry status, reload, greylist ...), by \
             operation and result.",
            &["op", "result"],
        );
        let control_requests = CONTROL_OPS
            .iter()
            .chain([&OTHER])
            .map(|op| {
                CONTROL_RESULTS
                    .iter()
                    .chain([&OTHER])
                    .map(|result| control_vec.with_label_values(&[*op, *result]))
                    .collect()
            })
            .collect();
        let build_info = gauge_vec(
            r,
            "mxsentry_build_info",
            "Always 1; the version label names the running build.",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);

        let dns_errors = DNS_KINDS
            .iter()
            .chain([&OTHER])
            .map(|kind| {
                DNS_ERRORS
                    .iter()
                    .chain([&OTHER])
                    .map(|error| dns_errors_vec.with_label_values(&[*kind, *error]))
                    .collect()
            })
            .collect();

        Metrics {
            sessions: Fixed::new(&VERDICTS, |v| sessions.with_label_values(&[v])),
            messages: Fixed::new(&VERDICTS, |v| messages.with_label_values(&[v])),
            recipients: ByReason::new(recipients),
            dry_run: ByReason::new(dry_run),
            findings,
            finding_outcomes: Admitted::default(),
            dnsbl_results,
            dnsbl_refusals,
            dnsbl_zones: Admitted::default(),
            dnsbl_zone_healthy,
            dns_errors,
            dns_duration: Fixed::new(&DNS_KINDS, |k| dns_duration_vec.with_label_values(&[k])),
            dns_cache: Fixed::new(&DNS_CACHE_RESULTS, |r| dns_cache.with_label_values(&[r])),
            dns_prefetch: Fixed::new(&DNS_PREFETCH_RESULTS, |r| {
                dns_prefetch.with_label_values(&[r])
            }),
            greylist_entries_fixed: Default::default(),
            greylist_entries,
            greylist_duration_fixed: Default::default(),
            greylist_duration,
            greylist_errors_fixed: GREYLIST_BACKENDS
                .map(|b| greylist_errors.with_label_values(&[b])),
            greylist_errors,
            greylist_store_recoveries,
            connections_open,
            connections_total,
            connections_limit,
            connections_overflow: Fixed::new(&OVERFLOW_ACTIONS, |a| {
                overflow_vec.with_label_values(&[a])
            }),
            protocol_errors: Fixed::new(&PROTOCOL_ERRORS, |r| {
                protocol_errors_vec.with_label_values(&[r])
            }),
            http_dropped: Fixed::new(&HTTP_DROP_REASONS, |r| http_dropped.with_label_values(&[r])),
            recipients_over_limit,
            decision_duration,
            reload_success: reloads.with_label_values(&["success"]),
            reload_failure: reloads.with_label_values(&["failure"]),
            control_requests,
            shadow_verdicts,
            last_reload_success,
            last_reload_successful,
            registry,
        }
    }

    /// The registry, for code that wants to add its own families.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The text exposition format (`text/plain; version=0.0.4`).
    pub fn render(&self) -> String {
        let families = self.registry.gather();
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::error!("cannot encode metrics: {e}");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    // ---- verdicts ------------------------------------------------------------------------

    /// One SMTP session ended (QUIT, QUIT_NC or connection end); `verdict` is the most severe
    /// one given during it (`reject` > `tempfail`/`greylist` > `discard` > `accept`).
    pub fn session_verdict(&self, verdict: &str) {
        self.sessions.get(verdict_word(verdict)).inc();
    }

    /// One message ended (end of message, ABORT, or every recipient refused); `verdict` as
    /// for [`Self::session_verdict`].
    pub fn message_verdict(&self, verdict: &str) {
        self.messages.get(verdict_word(verdict)).inc();
    }

    /// One RCPT answered, and the code of what decided it (`dry_run` when dry-run mode let a
    /// blocking verdict through). Use `greylist` (not `tempfail`) when greylisting gave the 4xx.
    pub fn recipient_verdict(&self, verdict: &str, reason: Reason) {
        self.recipients.get(verdict_word(verdict), reason).inc();
    }

    /// In dry-run mode, the verdict that would have been enforced and its reason (counted in
    /// addition to the `accept` actually given).
    pub fn dry_run_verdict(&self, verdict: &str, reason: Reason) {
        self.dry_run.get(verdict_word(verdict), reason).inc();
    }

    /// One recipient decided by the live policy (`live`, what the MTA was told) and by the
    /// `[shadow]` candidate (`shadow`, never enforced; `undecided` when it could not decide in
    /// time). Words outside [`VERDICTS`] and `undecided` are counted as `other`.
    pub fn shadow_verdict(&self, live: &str, shadow: &str) {
        let bounded = |v: &str| -> &'static str {
            let w = verdict_word(v);
            if w == "undecided" {
                return "undecided";
            }
            VERDICTS.iter().copied().find(|k| *k == w).unwrap_or(OTHER)
        };
        self.shadow_verdicts
            .with_label_values(&[bounded(live), bounded(shadow)])
            .inc();
    }

    /// Time from CONNECT to a verdict (observe once per RCPT verdict).
    pub fn decision_duration(&self, seconds: f64) {
        self.decision_duration.observe(seconds);
    }

    // ---- checks --------------------------------------------------------------------------

    /// One finding of one check: `check` from [`CHECKS`], `outcome` a short lowercase word
    /// (`unqualified`, `no_ptr`, `forged`, `temp`, `dynamic`, `listed`, `reject`, ...). Pass
    /// `Finding::check` and `Finding::outcome`, never the detail.
    pub fn finding(&self, check: &str, outcome: &str) {
        let check = CHECKS
            .iter()
            .find(|c| **c == check)
            .copied()
            .unwrap_or(OTHER);
        let outcome = self.finding_outcomes.admit(word(outcome));
        self.findings.with_label_values(&[check, outcome]).inc();
    }

    // ---- DNS -----------------------------------------------------------------------------

    /// One DNS lookup finished. `kind` from [`DNS_KINDS`]; `outcome` one of [`DNS_ANSWERS`]
    /// (an answer, even a negative one) or [`DNS_ERRORS`] (counted in
    /// `mxsentry_dns_errors_total`; other words count as error `other`).
    pub fn dns_query(&self, kind: &'static str, outcome: &'static str, seconds: f64) {
        let k = self.dns_duration.index(kind);
        self.dns_duration.children[k].observe(seconds);
        if !DNS_ANSWERS.contains(&outcome) {
            let e = DNS_ERRORS
                .iter()
                .position(|e| *e == outcome)
                .unwrap_or(DNS_ERRORS.len());
            self.dns_errors[k][e].inc();
        }
    }

    /// One DNS query looked up in the cache: `result` from [`DNS_CACHE_RESULTS`].
    pub fn dns_cache(&self, result: &str) {
        self.dns_cache.get(result).inc();
    }

    /// One prefetch event: `result` from [`DNS_PREFETCH_RESULTS`].
    pub fn dns_prefetch(&self, result: &str) {
        self.dns_prefetch.get(result).inc();
    }

    /// One DNS list lookup: `zone` exactly as configured (never the query name), `result`
    /// from [`DNSBL_RESULTS`]. For the hot path prefer a [`DnsblZoneMetrics`] handle.
    pub fn dnsbl_result(&self, zone: &str, result: &str) {
        let zone = self.dnsbl_zones.admit(zone_name(zone));
        let result = DNSBL_RESULTS
            .iter()
            .find(|r| **r == result)
            .copied()
            .unwrap_or(OTHER);
        self.dnsbl_results.with_label_values(&[zone, result]).inc();
    }

    /// A refusal (reject or tempfail given to the client) caused by a listing in `zone`.
    pub fn dnsbl_refusal(&self, zone: &str) {
        let zone = self.dnsbl_zones.admit(zone_name(zone));
        self.dnsbl_refusals.with_label_values(&[zone]).inc();
    }

    /// A configured zone's health: 1 healthy (its listings count), 0 unknown or unhealthy.
    pub fn dnsbl_zone_healthy(&self, zone: &str, healthy: bool) {
        let zone = self.dnsbl_zones.admit(zone_name(zone));
        self.dnsbl_zone_healthy
            .with_label_values(&[zone])
            .set(i64::from(healthy));
    }

    /// A zone no longer configured: its health series goes away.
    pub fn dnsbl_zone_health_forget(&self, zone: &str) {
        let _ = self
            .dnsbl_zone_healthy
            .remove_label_values(&[zone_name(zone)]);
    }

    /// Pre-resolved counters for one configured zone: build one per zone when the
    /// configuration is (re)loaded and record through it without any lookup.
    pub fn dnsbl_zone(&self, zone: &str) -> DnsblZoneMetrics {
        let zone = self.dnsbl_zones.admit(zone_name(zone));
        DnsblZoneMetrics {
            results: DNSBL_RESULTS
                .iter()
                .chain([&OTHER])
                .map(|r| self.dnsbl_results.with_label_values(&[zone, *r]))
                .collect(),
            refusals: self.dnsbl_refusals.with_label_values(&[zone]),
        }
    }

    // ---- greylist ------------------------------------------------------------------------

    /// The number of entries in the store (set after each commit or count).
    pub fn greylist_entries(&self, backend: &'static str, entries: i64) {
        match GREYLIST_BACKENDS.iter().position(|b| *b == backend) {
            Some(b) => self.greylist_entries_fixed[b]
                .get_or_init(|| self.greylist_entries.with_label_values(&[backend]))
                .set(entries),
            None => self
                .greylist_entries
                .with_label_values(&[word(backend)])
                .set(entries),
        }
    }

    /// One store operation took `seconds`; `ok = false` also counts a store error.
    pub fn greylist_op(&self, backend: &'static str, op: &'static str, seconds: f64, ok: bool) {
        let b = GREYLIST_BACKENDS.iter().position(|x| *x == backend);
        let o = GREYLIST_OPS.iter().position(|x| *x == op);
        match (b, o) {
            (Some(b), Some(o)) => self.greylist_duration_fixed[b][o]
                .get_or_init(|| self.greylist_duration.with_label_values(&[backend, op]))
                .observe(seconds),
            _ => self
                .greylist_duration
                .with_label_values(&[word(backend), word(op)])
                .observe(seconds),
        }
        if !ok {
            self.greylist_error(backend);
        }
    }

    /// A store failure outside a timed operation (lost connection, failed commit, ...).
    pub fn greylist_error(&self, backend: &'static str) {
        match GREYLIST_BACKENDS.iter().position(|b| *b == backend) {
            Some(b) => self.greylist_errors_fixed[b].inc(),
            None => self
                .greylist_errors
                .with_label_values(&[word(backend)])
                .inc(),
        }
    }

    /// An unreadable embedded store was moved aside at start (a fresh store replaced it).
    pub fn greylist_store_recovered(&self) {
        self.greylist_store_recoveries.inc();
    }

    // ---- connections ---------------------------------------------------------------------

    /// An MTA connection was accepted. Pair with [`Self::connection_closed`], or use
    /// [`Self::connection`] which closes on drop.
    pub fn connection_opened(&self) {
        self.connections_total.inc();
        self.connections_open.inc();
    }

    /// An MTA connection ended.
    pub fn connection_closed(&self) {
        self.connections_open.dec();
    }

    /// Counts a connection as open until the guard is dropped (also on panic or cancel).
    pub fn connection(&self) -> ConnectionGuard<'_> {
        self.connection_opened();
        ConnectionGuard { metrics: self }
    }

    /// The number of connections served at once at most (set at start).
    pub fn connections_limit(&self, max: usize) {
        self.connections_limit
            .set(i64::try_from(max).unwrap_or(i64::MAX));
    }

    /// A connection over the limit was answered at once; `action` from [`OVERFLOW_ACTIONS`].
    pub fn connection_overflow(&self, action: &str) {
        self.connections_overflow.get(action).inc();
    }

    /// A recipient beyond `max_recipients` got 452 4.5.3 without checks.
    pub fn recipient_over_limit(&self) {
        self.recipients_over_limit.inc();
    }

    /// A connection ended by a protocol error or timeout; `reason` from [`PROTOCOL_ERRORS`]
    /// (the server maps how a connection ended to one of them).
    pub fn protocol_error(&self, reason: &'static str) {
        self.protocol_errors.get(reason).inc();
    }

    /// The metrics endpoint refused a connection or closed it before its response; `reason`
    /// from [`HTTP_DROP_REASONS`].
    pub fn http_connection_dropped(&self, reason: &'static str) {
        self.http_dropped.get(reason).inc();
    }

    // ---- configuration -------------------------------------------------------------------

    /// The configuration was loaded at start: sets the last-success time without counting a
    /// reload.
    pub fn config_loaded(&self) {
        self.last_reload_success.set(now_seconds());
        self.last_reload_successful.set(1);
    }

    /// A reload (SIGHUP) finished; on failure the running configuration stays.
    pub fn reload(&self, ok: bool) {
        if ok {
            self.reload_success.inc();
            self.config_loaded();
        } else {
            self.reload_failure.inc();
            self.last_reload_successful.set(0);
        }
    }

    // ---- control socket ------------------------------------------------------------------

    /// One control request answered: `op` from [`CONTROL_OPS`], `result` from
    /// [`CONTROL_RESULTS`].
    pub fn control_request(&self, op: &str, result: &str) {
        let o = CONTROL_OPS
            .iter()
            .position(|x| *x == op)
            .unwrap_or(CONTROL_OPS.len());
        let r = CONTROL_RESULTS
            .iter()
            .position(|x| *x == result)
            .unwrap_or(CONTROL_RESULTS.len());
        self.control_requests[o][r].inc();
    }

    /// MTA connections being served now (`mxsentry status`).
    pub fn connections_open_now(&self) -> i64 {
        self.connections_open.get()
    }

    /// Distinct finding outcomes admitted so far.
    #[cfg(test)]
    fn dynamic_values(&self) -> usize {
        self.finding_outcomes.seen.read().map_or(0, |s| s.len())
    }
}

/// Counters of one configured DNS list; see [`Metrics::dnsbl_zone`]. Cheap to clone.
#[derive(Clone)]
pub struct DnsblZoneMetrics {
    /// One per [`DNSBL_RESULTS`] value, then `other`.
    results: Vec<IntCounter>,
    refusals: IntCounter,
}

impl DnsblZoneMetrics {
    /// One lookup of this list; `result` from [`DNSBL_RESULTS`].
    pub fn result(&self, result: &str) {
        let i = DNSBL_RESULTS
            .iter()
            .position(|r| *r == result)
            .unwrap_or(DNSBL_RESULTS.len());
        self.results[i].inc();
    }

    /// A refusal caused by this list.
    pub fn refusal(&self) {
        self.refusals.inc();
    }
}

/// Returned by [`Metrics::connection`]: the connection counts as open until this is dropped.
#[must_use = "the connection counts as closed as soon as the guard is dropped"]
pub struct ConnectionGuard<'a> {
    metrics: &'a Metrics,
}

impl Drop for ConnectionGuard<'_> {
    fn drop(&mut self) {
        self.metrics.connection_closed();
    }
}

#[allow(
    clippy::expect_used,
    reason = "fixed definitions: a bad one fails every test at Metrics::new, never at run time"
)]
fn register<T: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    made: prometheus::Result<T>,
) -> T {
    let metric = made.expect("metric definitions are valid");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(r, IntCounterVec::new(Opts::new(name, help), labels))
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(r, IntGaugeVec::new(Opts::new(name, help), labels))
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    register(
        r,
        HistogramVec::new(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
            labels,
        ),
    )
}
