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
//! The fixed label sets (`labels.rs`) are chosen (and tested) so that no two combinations concatenate
//! to the same string.

mod families;
pub mod http;
mod labels;
#[cfg(test)]
mod tests;

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::reason::Reason;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Registry, TextEncoder,
};

pub use http::{bind, serve, serve_listener};
use labels::*;
pub use labels::{
    CHECKS, CONTROL_OPS, CONTROL_RESULTS, DNSBL_RESULTS, DNS_ANSWERS, DNS_CACHE_RESULTS,
    DNS_ERRORS, DNS_KINDS, DNS_PREFETCH_RESULTS, GREYLIST_BACKENDS, GREYLIST_OPS,
    HTTP_DROP_REASONS, MAX_DYNAMIC_VALUES, OTHER, OVERFLOW_ACTIONS, PROTOCOL_ERRORS, VERDICTS,
};

fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The process-wide metrics, created on first use. See the module documentation for why the
/// daemon uses a global here.
pub fn metrics() -> &'static Metrics {
    static GLOBAL: OnceLock<Metrics> = OnceLock::new();
    GLOBAL.get_or_init(Metrics::new)
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
