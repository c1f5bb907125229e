//! DNS work for one SMTP client: started when CONNECT arrives, awaited when the policy decides.
//!
//! The PTR/forward lookups, the IP block lists and the allow lists run as tasks while the MTA
//! goes on with HELO and MAIL; the sender's domain lists start at MAIL. The policy awaits them
//! only when steps 1–3 did not decide, so a message pays at most one DNS round trip, not one
//! per check — and usually none, because the MTA's own round trips hide it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::checks::dnsbl::board::HealthBoard;
use crate::checks::dnsbl::{self, ZoneKind, ZoneResult};
use crate::checks::helo::{self, HeloResolve};
use crate::checks::rdns::{self, DynamicPatterns, RdnsResult};
use crate::checks::rdns_mta::{self, MtaVerified};
use crate::config::{Config, DnsblConfig, TempFailureAction};
use crate::dns::Dns;
use crate::log_limit::WarnEvery;

/// The configured DNS checks, shared by every session under one policy.
pub struct DnsChecks {
    pub dns: Arc<Dns>,
    pub dynamic: DynamicPatterns,
    pub dnsbl: DnsblConfig,
    pub helo_resolves: bool,
    /// Upper bound on waiting for all lookups of a client (PTR then forward, lists).
    pub deadline: Duration,
    /// Whether any finding from these lookups can matter: with every rDNS action `off` and no
    /// lists configured, no lookup is started at all.
    pub active: bool,
    /// Whether the client's PTR/FCrDNS is looked up: an rDNS action is not `off`, or
    /// greylisting keys verified clients by their rDNS domain (`pool_by_rdns`). Otherwise a
    /// PTR lookup would only cost time (and a failure of it must not count).
    pub rdns: bool,
    /// Per configured list: the warning said (at most once a minute) while it cannot be
    /// reached or refuses to answer.
    unreachable: HashMap<String, Arc<WarnEvery>>,
    /// A shadow policy's lookups: not counted in the DNS list metrics nor warned about (the
    /// live policy's lookups are, or the shadow's are extra, not the daemon's).
    pub quiet: bool,
    /// The zones' health (set by the daemon and `explain`; unset: every zone is trusted, as
    /// in `check-config` and the tests that feed the policy results directly).
    pub health: std::sync::OnceLock<Arc<HealthBoard>>,
}

impl DnsChecks {
    pub fn from_config(config: &Config) -> Result<DnsChecks, String> {
        let dns = Dns::new(&config.dns)?;
        dns.set_observer(Arc::new(|kind, outcome, seconds| {
            crate::metrics::metrics().dns_query(kind, outcome, seconds)
        }));
        dns.set_cache_observer(Arc::new(|event| {
            let m = crate::metrics::metrics();
            match event.is_prefetch() {
                true => m.dns_prefetch(event.label()),
                false => m.dns_cache(event.label()),
            }
        }));
        Ok(DnsChecks {
            dns: Arc::new(dns),
            dynamic: DynamicPatterns::new(&config.rdns.dynamic_patterns)?,
            dnsbl: config.dnsbl.clone(),
            helo_resolves: config.helo.check_resolves,
            active: config.dns_checks_active(),
            rdns: config.rdns_checks_active()
                || (config.greylist.pool_by_rdns && config.may_greylist()),
            // PTR and forward lookups run one after the other; one more timeout of slack.
            deadline: config.dns.timeout * 3,
            unreachable: unreachable_warnings(&config.dnsbl),
            quiet: false,
            health: std::sync::OnceLock::new(),
        })
    }
}

/// How often a DNS list that keeps failing is named in the log.
const UNREACHABLE_WARN_PERIOD: Duration = Duration::from_secs(60);

fn unreachable_warnings(lists: &DnsblConfig) -> HashMap<String, Arc<WarnEvery>> {
    let zones = lists.zones.iter().chain(&lists.domain_zones);
    let zones = zones.chain(&lists.allow_zones);
    zones
        .map(|z| {
            let zone = z.zone.clone();
            let effect = if z.temp_failure == TempFailureAction::Tempfail {
                "may tempfail (temp_failure = \"tempfail\")"
            } else {
                "ignored: counted as not listed"
            };
            let warn = WarnEvery::new(UNREACHABLE_WARN_PERIOD, move |failures| {
                tracing::warn!(
                    zone = %zone,
                    failures,
                    "DNS list gave no usable answer (timeout, error or refusal); {effect}"
                )
            });
            (z.zone.clone(), warn)
        })
        .collect()
}

/// A lookup task that is cancelled when the session no longer needs it.
struct Pending<T> {
    state: PendingState<T>,
}

enum PendingState<T> {
    Running(JoinHandle<T>),
    Done(T),
    /// The task did not finish by the deadline (or panicked): the policy treats it as a
    /// temporary failure.
    Missing,
}

impl<T: Send + 'static> Pending<T> {
    fn spawn<F>(fut: F) -> Pending<T>
    where
        F: std::future::Future<Output = T> + Send + 'static,
    {
        Pending {
            state: PendingState::Running(tokio::spawn(fut)),
        }
    }

    fn ready(value: T) -> Pending<T> {
        Pending {
            state: PendingState::Done(value),
        }
    }

    async fn wait(&mut self, until: tokio::time::Instant) -> Option<&T> {
        if let PendingState::Running(handle) = &mut self.state {
            self.state = match tokio::time::timeout_at(until, handle).await {
                Ok(Ok(value)) => PendingState::Done(value),
                Ok(Err(_)) | Err(_) => PendingState::Missing,
            };
        }
        match &self.state {
            PendingState::Done(v) => Some(v),
            _ => None,
        }
    }
}

impl<T> Drop for Pending<T> {
    fn drop(&mut self) {
        if let PendingState::Running(handle) = &self.state {
            handle.abort();
        }
    }
}

/// What the lookups found, borrowed for the policy.
#[derive(Default)]
pub struct DnsResults<'a> {
    /// The PTR/FCrDNS result; None when not looked up (loopback clients) or not finished.
    pub rdns: Option<&'a RdnsResult>,
    /// The PTR/FCrDNS lookup did not finish by the deadline (a temporary failure).
    pub rdns_missing: bool,
    pub ip_lists: &'a [ZoneResult],
    pub allow_lists: &'a [ZoneResult],
    pub domain_lists: &'a [ZoneResult],
    pub helo_resolve: Option<&'a HeloResolve>,
    /// Some lookups did not finish by the deadline.
    pub incomplete: bool,
}

/// The lookups of one SMTP client.
pub struct ClientLookups {
    checks: Arc<DnsChecks>,
    started: tokio::time::Instant,
    /// None for loopback clients: RFC 6761 resolvers answer `localhost` for every
    /// 127.0.0.0/8 PTR without asking DNS, so FCrDNS has no meaning there.
    rdns: Option<Pending<RdnsResult>>,
    ip_lists: Pending<Vec<ZoneResult>>,
    allow_lists: Pending<Vec<ZoneResult>>,
    domain_lists: Option<(String, Pending<Vec<ZoneResult>>)>,
    helo_resolve: Option<(String, Pending<HeloResolve>)>,
    /// The client name the MTA verified (forward-confirmed), if it said so.
    mta_verified_name: Option<String>,
    /// The policy's answer for this client in the greylist allow lists (`Some(None)`: not
    /// listed), worked out at the first recipient and kept for the rest of the connection.
    pub greylist_allow: Option<Option<String>>,
}

impl ClientLookups {
    /// Starts the client's lookups (called at CONNECT). `mta_verified`: the host name the MTA
    /// verified itself (see `checks::rdns_mta`); no PTR lookup then.
    pub fn start(
        checks: Arc<DnsChecks>,
        ip: IpAddr,
        mta_verified: Option<MtaVerified>,
    ) -> ClientLookups {
        let c = checks.clone();
        let mta_verified_name = mta_verified.as_ref().map(|v| v.name.clone());
        let rdns = (checks.rdns && !is_loopback(ip)).then(|| match mta_verified {
            Some(v) => Pending::ready(rdns_mta::result_from_mta(ip, v, &c.dynamic)),
            None => Pending::spawn(async move { rdns::lookup(&c.dns, ip, &c.dynamic).await }),
        });
        let c = checks.clone();
        let ip_lists = Pending::spawn(async move {
            counted(
                &c,
                dnsbl::query_ip(&c.dns, ip, &c.dnsbl.zones, ZoneKind::Ip).await,
            )
        });
        let c = checks.clone();
        let allow_lists = Pending::spawn(async move {
            counted(
                &c,
                dnsbl::query_ip(&c.dns, ip, &c.dnsbl.allow_zones, ZoneKind::Allow).await,
            )
        });
        ClientLookups {
            checks,
            started: tokio::time::Instant::now(),
            rdns,
            ip_lists,
            allow_lists,
            domain_lists: None,
            helo_resolve: None,
            mta_verified_name,
            greylist_allow: None,
        }
    }

    /// Lookups whose answers are already known: for tests and the fuzz targets, which feed
    /// the policy hostile DNS data (PTR names, TXT texts) without a DNS server.
    pub fn from_results(
        checks: Arc<DnsChecks>,
        rdns: Option<RdnsResult>,
        ip_lists: Vec<ZoneResult>,
        allow_lists: Vec<ZoneResult>,
        domain_lists: Vec<ZoneResult>,
        helo_resolve: Option<HeloResolve>,
    ) -> ClientLookups {
        ClientLookups {
            checks,
            started: tokio::time::Instant::now(),
            rdns: rdns.map(Pending::ready),
            ip_lists: Pending::ready(ip_lists),
            allow_lists: Pending::ready(allow_lists),
            domain_lists: Some((String::new(), Pending::ready(domain_lists))),
            helo_resolve: helo_resolve.map(|r| (String::new(), Pending::ready(r))),
            mta_verified_name: None,
            greylist_allow: None,
        }
    }

    /// The client's FCrDNS-verified name (looked up, or vouched for by the MTA), once the
    /// lookup finished ([`Self::results`]); `None` without one (no PTR, forged, failed, not
    /// looked up). Never the bare PTR name.
    pub fn verified_name(&self) -> Option<&str> {
        match &self.rdns.as_ref()?.state {
            PendingState::Done(r) => r.verified_name.as_deref(),
            _ => None,
        }
    }

    /// Starts the HELO name lookup when configured (called at HELO).
    pub fn start_helo(&mut self, name: &str) {
        if !self.checks.helo_resolves || self.helo_resolve.as_ref().is_some_and(|(n, _)| n == name)
        {
            return;
        }
        let owned = name.to_string();
        // A HELO name that is the client's forward-confirmed name resolves (to the client):
        // most MTAs greet with their own name, and the lookup would only add latency.
        let is_verified_name = self
            .mta_verified_name
            .as_deref()
            .is_some_and(|verified| name.trim_end_matches('.').eq_ignore_ascii_case(verified));
        let pending = if is_verified_name {
            Pending::ready(HeloResolve::Resolves)
        } else {
            let c = self.checks.clone();
            let owned = owned.clone();
            Pending::spawn(async move { helo::resolves(&c.dns, &owned).await })
        };
        self.helo_resolve = Some((owned, pending));
    }

    /// Starts the sender domain's lists (called at MAIL); the same domain is not asked twice.
    pub fn start_sender(&mut self, sender: &str) {
        if self.checks.dnsbl.domain_zones.is_empty() {
            return;
        }
        let Some(domain) = sender_domain(sender) else {
            self.domain_lists = None;
            return;
        };
        if self
            .domain_lists
            .as_ref()
            .is_some_and(|(d, _)| *d == domain)
        {
            return;
        }
        let c = self.checks.clone();
        let d = domain.clone();
        self.domain_lists = Some((
            domain,
            Pending::spawn(async move {
                counted(
                    &c,
                    dnsbl::query_domain(&c.dns, &d, &c.dnsbl.domain_zones).await,
                )
            }),
        ));
    }

    /// Awaits everything started so far, up to the deadline counted from CONNECT.
    pub async fn results(&mut self) -> DnsResults<'_> {
        let until = self.started + self.checks.deadline;
        let mut incomplete = false;
        // Await each (they run concurrently already; the order does not matter).
        let mut rdns_missing = false;
        if let Some(p) = &mut self.rdns {
            rdns_missing = p.wait(until).await.is_none();
            incomplete |= rdns_missing;
        }
        incomplete |= self.ip_lists.wait(until).await.is_none();
        incomplete |= self.allow_lists.wait(until).await.is_none();
        if let Some((_, p)) = &mut self.domain_lists {
            incomplete |= p.wait(until).await.is_none();
        }
        if let Some((_, p)) = &mut self.helo_resolve {
            incomplete |= p.wait(until).await.is_none();
        }
        DnsResults {
            rdns: self.rdns.as_ref().and_then(done),
            rdns_missing,
            ip_lists: done(&self.ip_lists).map_or(&[], |v| v.as_slice()),
            allow_lists: done(&self.allow_lists).map_or(&[], |v| v.as_slice()),
            domain_lists: self
                .domain_lists
                .as_ref()
                .and_then(|(_, p)| done(p))
                .map_or(&[], |v| v.as_slice()),
            helo_resolve: self.helo_resolve.as_ref().and_then(|(_, p)| done(p)),
            incomplete,
        }
    }
}

/// Counts each list's result (zone names come from the config: bounded label values), and
/// warns (rate-limited, per zone) when a list cannot be reached or refuses to answer.
/// Each result also feeds its zone's health (listing rate) and is marked log-only when the
/// zone is not trusted.
fn counted(checks: &DnsChecks, mut results: Vec<ZoneResult>) -> Vec<ZoneResult> {
    let m = crate::metrics::metrics();
    if let Some(board) = checks.health.get() {
        let now = crate::store::unix_now();
        for r in &mut results {
            board.observe(r, now);
        }
    }
    // A shadow policy's own lookups: not counted in the list metrics nor warned about.
    if checks.quiet {
        return results;
    }
    for r in &results {
        m.dnsbl_result(&r.zone, r.outcome.metric_result());
        let failed = match &r.outcome {
            dnsbl::ZoneOutcome::Refused(_) => {
                m.dnsbl_refusal(&r.zone);
                true
            }
            dnsbl::ZoneOutcome::Error(e) => e.is_temporary(),
            _ => false,
        };
        if failed {
            if let Some(w) = checks.unreachable.get(&r.zone) {
                w.hit();
            }
        }
    }
    results
}

fn done<T>(p: &Pending<T>) -> Option<&T> {
    match &p.state {
        PendingState::Done(v) => Some(v),
        _ => None,
    }
}

/// Loopback clients get no PTR lookup (RFC 6761 resolvers answer `localhost` for them).
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// The sender's domain for domain lists: lowercased; none for the null sender or a literal.
pub fn sender_domain(sender: &str) -> Option<String> {
    let (_, domain) = sender.rsplit_once('@')?;
    let domain = domain.trim_end_matches('.');
    if domain.is_empty() || domain.starts_with('[') {
        return None;
    }
    Some(domain.to_ascii_lowercase())
}
