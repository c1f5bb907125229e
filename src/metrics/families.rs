//! Building the registry: every family with its name, help and buckets, and every fixed label
//! combination present at 0 from the first scrape.

use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

use super::labels::*;
use super::Metrics;

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
