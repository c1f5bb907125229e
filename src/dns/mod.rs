//! The DNS layer: one shared, caching, concurrency-bounded resolver for every session.
//!
//! Lookups start when the MTA sends CONNECT and run while the session goes on; checks await
//! them when the policy decides. What went wrong must survive up to the policy, because it
//! decides between a reject and a tempfail: [`DnsError::is_negative`] (NXDOMAIN, no data:
//! permanent answers) versus [`DnsError::is_temporary`] (SERVFAIL, REFUSED, timeout, anything
//! else).
//!
//! Built on hickory-resolver 0.25. Things worth knowing about it (they shaped this module):
//!
//! * Every negative *and* failed answer surfaces as `ProtoErrorKind::NoRecordsFound` carrying
//!   the `response_code`: NXDOMAIN, NOERROR (no data) but also SERVFAIL and REFUSED. Mapping
//!   "no records found" to a negative answer without looking at the code would turn a SERVFAIL
//!   into a permanent failure; [`DnsError`] maps by response code.
//! * Its cache cannot refresh one entry ahead of its TTL, so it is off and [`cache`] keeps the
//!   answers instead (and prefetches them; see there why). Negative answers are cached only
//!   when they carry an SOA (TTL = min(SOA TTL, SOA minimum)); SERVFAIL/REFUSED/timeouts never.
//! * Its per-try timeout is not an overall deadline (retries, CNAME chains and TCP fallback can
//!   add up), hence the `tokio::time::timeout` around every lookup here.
//! * It answers some special-use names itself without querying: `localhost.` and names under
//!   it, `127.in-addr.arpa.` and `::1` reverse (PTR `localhost`), and `*.invalid.` (NXDOMAIN).
//! * Its connections are tied to the tokio runtime of the first lookup: use a [`Dns`] from one
//!   runtime (the daemon has one; each `#[tokio::test]` should build its own `Dns`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::lookup::Lookup;
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::proto::{ProtoError, ProtoErrorKind};
use hickory_resolver::{ResolveError, TokioResolver};
use tokio::sync::Semaphore;

use crate::config::DnsConfig;

mod cache;
#[cfg(test)]
mod prefetch_tests;
#[cfg(test)]
mod tests;

use cache::{AnswerCache, Fetched};
pub use cache::{
    CacheEvent, CacheObserver, CacheStats, PREFETCH_MAX_CONCURRENT, PREFETCH_MAX_PENDING,
};

/// Longest a positive answer stays cached, whatever its TTL.
pub const MAX_POSITIVE_TTL: Duration = Duration::from_secs(24 * 3600);
/// Longest a negative answer stays cached, whatever its SOA says.
pub const MAX_NEGATIVE_TTL: Duration = Duration::from_secs(3600);

/// Why a lookup gave no records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// The name does not exist (permanent).
    #[error("NXDOMAIN")]
    NxDomain,
    /// The name exists, with no record of the type asked (permanent).
    #[error("no data")]
    NoData,
    /// The server failed (temporary).
    #[error("SERVFAIL")]
    ServFail,
    /// The server refused to answer (temporary: likely our misconfiguration).
    #[error("REFUSED")]
    Refused,
    /// No answer within the configured timeout (temporary).
    #[error("timeout")]
    Timeout,
    /// Anything else: network errors, other response codes, malformed answers (temporary).
    #[error("{0}")]
    Other(String),
}

impl DnsError {
    /// Whether trying again later may give another answer: SERVFAIL, REFUSED, timeout, other.
    pub fn is_temporary(&self) -> bool {
        !self.is_negative()
    }

    /// Whether this is an authoritative "there is nothing": NXDOMAIN or no data.
    pub fn is_negative(&self) -> bool {
        matches!(self, DnsError::NxDomain | DnsError::NoData)
    }

    /// A short, stable label for metrics and logs: `nxdomain`, `nodata`, `servfail`,
    /// `refused`, `timeout` or `error`.
    pub fn label(&self) -> &'static str {
        match self {
            DnsError::NxDomain => "nxdomain",
            DnsError::NoData => "nodata",
            DnsError::ServFail => "servfail",
            DnsError::Refused => "refused",
            DnsError::Timeout => "timeout",
            DnsError::Other(_) => "error",
        }
    }

    fn from_resolve(error: &ResolveError) -> DnsError {
        match error.proto() {
            Some(proto) => DnsError::from_proto(proto),
            None => DnsError::Other(error.to_string()),
        }
    }

    fn from_proto(error: &ProtoError) -> DnsError {
        match error.kind() {
            ProtoErrorKind::NoRecordsFound { response_code, .. } => match *response_code {
                ResponseCode::NXDomain => DnsError::NxDomain,
                ResponseCode::NoError => DnsError::NoData,
                ResponseCode::ServFail => DnsError::ServFail,
                ResponseCode::Refused => DnsError::Refused,
                other => DnsError::Other(format!("DNS response code {other}")),
            },
            ProtoErrorKind::Timeout => DnsError::Timeout,
            ProtoErrorKind::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
                DnsError::Timeout
            }
            _ => DnsError::Other(error.to_string()),
        }
    }
}

/// Called after every query with its kind (`ptr`, `a`, `aaaa`, `txt`), its outcome (`ok` or
/// [`DnsError::label`]) and how long the caller waited, in seconds (queueing for a slot
/// included; answers from the cache take microseconds).
pub type DnsObserver = Arc<dyn Fn(&'static str, &'static str, f64) + Send + Sync>;

/// Counters of every query made through a [`Dns`] (answers from the cache included; see
/// [`Dns::cache_stats`] for how many). Read them with `.load(Ordering::Relaxed)`.
#[derive(Debug, Default)]
pub struct DnsStats {
    /// Queries made (one `ips()` call is two queries: A and AAAA).
    pub queries: AtomicU64,
    /// Queries that gave records.
    pub ok: AtomicU64,
    /// Queries answered NXDOMAIN.
    pub nx_domain: AtomicU64,
    /// Queries answered with no data.
    pub no_data: AtomicU64,
    /// Queries answered SERVFAIL.
    pub serv_fail: AtomicU64,
    /// Queries answered REFUSED.
    pub refused: AtomicU64,
    /// Queries that timed out.
    pub timeout: AtomicU64,
    /// Queries that failed otherwise.
    pub other: AtomicU64,
    /// Sum of the queries' durations, in microseconds.
    pub total_micros: AtomicU64,
}

impl DnsStats {
    fn record(&self, result: Result<(), &DnsError>, elapsed: Duration) {
        self.queries.fetch_add(1, Ordering::Relaxed);
        let counter = match result {
            Ok(()) => &self.ok,
            Err(DnsError::NxDomain) => &self.nx_domain,
            Err(DnsError::NoData) => &self.no_data,
            Err(DnsError::ServFail) => &self.serv_fail,
            Err(DnsError::Refused) => &self.refused,
            Err(DnsError::Timeout) => &self.timeout,
            Err(DnsError::Other(_)) => &self.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.total_micros.fetch_add(micros, Ordering::Relaxed);
    }
}

/// Resolver shared by all sessions (wrap in `Arc`). Cheap to call concurrently.
pub struct Dns {
    resolver: TokioResolver,
    timeout: Duration,
    slots: Semaphore,
    max_concurrent: usize,
    stats: DnsStats,
    observer: RwLock<Option<DnsObserver>>,
    /// None when `cache_size` is 0.
    cache: Option<Arc<AnswerCache>>,
}

impl fmt::Debug for Dns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dns")
            .field("nameservers", &self.nameservers())
            .field("timeout", &self.timeout)
            .field("max_concurrent", &self.max_concurrent)
            .finish_non_exhaustive()
    }
}

impl Dns {
    /// Builds the resolver. Does no I/O beyond reading `/etc/resolv.conf` when
    /// `config.nameservers` is empty, and needs no runtime (sockets open on first lookup).
    ///
    /// * Name servers: `config.nameservers`, or those of `/etc/resolv.conf` (only its
    ///   `nameserver` lines: its options and search domains are ignored). UDP, retried over TCP
    ///   when truncated; EDNS0 on.
    /// * Every name is absolute: no search domains, no `/etc/hosts`.
    /// * `config.timeout` bounds each lookup as a whole (see [`Dns::timeout`]); within it, two
    ///   tries of half the timeout each.
    /// * Cache of `config.cache_size` queries (0: none) honouring TTLs, positive ones capped at
    ///   [`MAX_POSITIVE_TTL`]; negative answers cached for their SOA minimum, at most
    ///   [`MAX_NEGATIVE_TTL`]. With `config.prefetch`, answers used in the last
    ///   `config.prefetch_percent` of their TTL are refreshed in the background (see [`cache`]).
    /// * At most `config.max_concurrent` queries in flight; more wait for a slot, in order
    ///   (refreshes have their own [`PREFETCH_MAX_CONCURRENT`] slots, and at most
    ///   [`PREFETCH_MAX_PENDING`] wait or run).
    pub fn new(config: &DnsConfig) -> Result<Dns, String> {
        Dns::with_prefetch_limits(config, (PREFETCH_MAX_CONCURRENT, PREFETCH_MAX_PENDING))
    }

    /// [`Dns::new`] with other bounds on refreshes: (in flight, started and unfinished).
    pub(crate) fn with_prefetch_limits(
        config: &DnsConfig,
        prefetch_limits: (usize, usize),
    ) -> Result<Dns, String> {
        let servers: Vec<SocketAddr> = if config.nameservers.is_empty() {
            let (system, _) = hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| format!("cannot read the system DNS configuration: {e}"))?;
            let mut servers: Vec<SocketAddr> = Vec::new();
            for server in system.name_servers() {
                if !servers.contains(&server.socket_addr) {
                    servers.push(server.socket_addr);
                }
            }
            servers
        } else {
            config.nameservers.clone()
        };
        if servers.is_empty() {
            return Err("no DNS name server configured (none in /etc/resolv.conf either)".into());
        }

        let mut resolver_config = ResolverConfig::new();
        for &server in &servers {
            // `new` trusts negative answers: an authoritative NXDOMAIN is final.
            resolver_config.add_name_server(NameServerConfig::new(server, Protocol::Udp));
            resolver_config.add_name_server(NameServerConfig::new(server, Protocol::Tcp));
        }

        let mut options = ResolverOpts::default();
        options.timeout = (config.timeout / 2).max(Duration::from_millis(1));
        options.attempts = 1; // retries after the first try: two tries in all
        options.ndots = 0;
        options.cache_size = 0; // ours, in front (see `cache`)
        options.use_hosts_file = ResolveHosts::Never;
        options.positive_max_ttl = Some(MAX_POSITIVE_TTL);
        options.negative_max_ttl = Some(MAX_NEGATIVE_TTL);
        options.edns0 = true;
        options.preserve_intermediates = true;

        let resolver =
            TokioResolver::builder_with_config(resolver_config, TokioConnectionProvider::default())
                .with_options(options)
                .build();

        let max_concurrent = config.max_concurrent.max(1);
        let cache = (config.cache_size > 0).then(|| {
            Arc::new(AnswerCache::new(
                config.cache_size,
                resolver.clone(),
                config.timeout,
                config.prefetch.then_some(config.prefetch_percent),
                prefetch_limits,
            ))
        });
        Ok(Dns {
            resolver,
            timeout: config.timeout,
            slots: Semaphore::new(max_concurrent),
            max_concurrent,
            stats: DnsStats::default(),
            observer: RwLock::new(None),
            cache,
        })
    }

    /// The longest any one query may take, waiting for a slot included (the whole `ips()` call
    /// too, as its two queries run in parallel). Past it, the query fails with
    /// [`DnsError::Timeout`].
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The name servers queried.
    pub fn nameservers(&self) -> Vec<SocketAddr> {
        let mut servers: Vec<SocketAddr> = Vec::new();
        for server in self.resolver.config().name_servers() {
            if !servers.contains(&server.socket_addr) {
                servers.push(server.socket_addr);
            }
        }
        servers
    }

    /// Query counters, for the metrics module.
    pub fn stats(&self) -> &DnsStats {
        &self.stats
    }

    /// Queries holding a slot right now (at most `max_concurrent`).
    pub fn in_flight(&self) -> usize {
        self.max_concurrent - self.slots.available_permits()
    }

    /// Installs (or replaces) the callback told about every query; see [`DnsObserver`].
    pub fn set_observer(&self, observer: DnsObserver) {
        *self
            .observer
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(observer);
    }

    /// Cache and prefetch counters; None without a cache (`cache_size = 0`).
    pub fn cache_stats(&self) -> Option<&CacheStats> {
        self.cache.as_deref().map(AnswerCache::stats)
    }

    /// Installs (or replaces) the callback told about every cache lookup and prefetch.
    pub fn set_cache_observer(&self, observer: CacheObserver) {
        if let Some(cache) = &self.cache {
            cache.set_observer(observer);
        }
    }

    /// Forgets every cached answer.
    pub fn clear_cache(&self) {
        if let Some(cache) = &self.cache {
            cache.clear();
        }
    }

    /// Names of `ip` (PTR records), lowercased, without the trailing dot. An IPv4-mapped IPv6
    /// address is looked up as the IPv4 address.
    pub async fn ptr(&self, ip: IpAddr) -> Result<Vec<String>, DnsError> {
        let name = match ip.to_canonical() {
            IpAddr::V4(_) => format!("{}.in-addr.arpa.", reversed_ip(ip)),
            IpAddr::V6(_) => format!("{}.ip6.arpa.", reversed_ip(ip)),
        };
        let name = Name::from_ascii(name).map_err(|e| DnsError::Other(e.to_string()))?;
        let mut names = self
            .query("ptr", name, RecordType::PTR, |rdata| match rdata {
                RData::PTR(ptr) => Some(name_to_string(&ptr.0)).filter(|n| !n.is_empty()),
                _ => None,
            })
            .await?;
        dedup(&mut names);
        Ok(names)
    }

    /// Addresses of `name`: A and AAAA queried in parallel, CNAMEs followed.
    ///
    /// Records of either type make a success, even if the other query failed; with none,
    /// a temporary failure of either wins over a negative answer, then [`DnsError::NxDomain`]
    /// if both said so, else [`DnsError::NoData`].
    pub async fn ips(&self, name: &str) -> Result<Vec<IpAddr>, DnsError> {
        let name = match absolute_name(name) {
            Ok(name) => name,
            Err(e) => {
                self.record("a", Err(&e), Duration::ZERO);
                self.record("aaaa", Err(&e), Duration::ZERO);
                return Err(e);
            }
        };
        let (v4, v6) = tokio::join!(
            self.query("a", name.clone(), RecordType::A, |rdata| match rdata {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                _ => None,
            }),
            self.query("aaaa", name, RecordType::AAAA, |rdata| match rdata {
                RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
                _ => None,
            }),
        );
        let mut ips = combine_ips(v4, v6)?;
        dedup(&mut ips);
        Ok(ips)
    }

    /// IPv4 addresses of `name` (A records, CNAMEs followed), e.g. a DNSBL query.
    pub async fn ipv4(&self, name: &str) -> Result<Vec<Ipv4Addr>, DnsError> {
        let name = self.checked_name("a", name)?;
        let mut ips = self
            .query("a", name, RecordType::A, |rdata| match rdata {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .await?;
        dedup(&mut ips);
        Ok(ips)
    }

    /// TXT records of `name`, each record's strings joined into one (invalid UTF-8 replaced).
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, DnsError> {
        let name = self.checked_name("txt", name)?;
        self.query("txt", name, RecordType::TXT, |rdata| match rdata {
            RData::TXT(txt) => {
                let bytes: Vec<u8> = txt
                    .txt_data()
                    .iter()
                    .flat_map(|s| s.iter().copied())
                    .collect();
                Some(String::from_utf8_lossy(&bytes).into_owned())
            }
            _ => None,
        })
        .await
    }

    fn checked_name(&self, kind: &'static str, name: &str) -> Result<Name, DnsError> {
        absolute_name(name).inspect_err(|e| self.record(kind, Err(e), Duration::ZERO))
    }

    /// One query: from the cache, else under the deadline and the concurrency bound;
    /// `extract` picks the wanted records (hickory also returns the CNAMEs it followed). No
    /// records at all: no data.
    async fn query<T>(
        &self,
        kind: &'static str,
        name: Name,
        record_type: RecordType,
        extract: impl Fn(&RData) -> Option<T>,
    ) -> Result<Vec<T>, DnsError> {
        let started = Instant::now();
        let key = (name.to_lowercase(), record_type);
        let cached = self.cache.as_ref().and_then(|cache| cache.get(&key));
        let result = match cached {
            Some(entry) => extract_records(&entry.answer, &extract),
            None => {
                let lookup = async {
                    let _slot = self
                        .slots
                        .acquire()
                        .await
                        .map_err(|_| DnsError::Other("resolver shut down".into()))?;
                    Ok::<Fetched, DnsError>(cache::fetch(&self.resolver, name, record_type).await)
                };
                match tokio::time::timeout(self.timeout, lookup).await {
                    Ok(Ok(fetched)) => {
                        if let Some(cache) = &self.cache {
                            cache.store(key, &fetched);
                        }
                        extract_records(&fetched.answer, &extract)
                    }
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(DnsError::Timeout),
                }
            }
        };
        self.record(kind, result.as_ref().map(|_| ()), started.elapsed());
        result
    }

    fn record(&self, kind: &'static str, result: Result<(), &DnsError>, elapsed: Duration) {
        self.stats.record(result, elapsed);
        let observer = self
            .observer
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(observer) = observer {
            let outcome = match result {
                Ok(()) => "ok",
                Err(e) => e.label(),
            };
            observer(kind, outcome, elapsed.as_secs_f64());
        }
    }
}

/// The records `extract` picks from an answer; none: no data.
fn extract_records<T>(
    answer: &Result<Lookup, DnsError>,
    extract: impl Fn(&RData) -> Option<T>,
) -> Result<Vec<T>, DnsError> {
    let lookup = answer.as_ref().map_err(Clone::clone)?;
    let found: Vec<T> = lookup.iter().filter_map(extract).collect();
    if found.is_empty() {
        Err(DnsError::NoData)
    } else {
        Ok(found)
    }
}

/// Merges the A and AAAA answers of [`Dns::ips`].
fn combine_ips(
    v4: Result<Vec<IpAddr>, DnsError>,
    v6: Result<Vec<IpAddr>, DnsError>,
) -> Result<Vec<IpAddr>, DnsError> {
    match (v4, v6) {
        (Ok(mut v4), Ok(v6)) => {
            v4.extend(v6);
            Ok(v4)
        }
        (Ok(ips), Err(_)) | (Err(_), Ok(ips)) => Ok(ips),
        (Err(a), Err(b)) => Err(match (a.is_temporary(), b.is_temporary()) {
            (true, _) => a,
            (false, true) => b,
            (false, false) if a == DnsError::NxDomain && b == DnsError::NxDomain => a,
            (false, false) => DnsError::NoData,
        }),
    }
}

/// `name` as an absolute DNS name. One that cannot be a DNS name (empty, empty label, label
/// over 63 or name over 255 octets) cannot exist: NXDOMAIN, without asking.
fn absolute_name(name: &str) -> Result<Name, DnsError> {
    let relative = name.strip_suffix('.').unwrap_or(name);
    if relative.is_empty() {
        return Err(DnsError::NxDomain);
    }
    let parsed = if relative.is_ascii() {
        Name::from_ascii(relative)
    } else {
        Name::from_utf8(relative)
    };
    let mut name = parsed.map_err(|_| DnsError::NxDomain)?;
    name.set_fqdn(true);
    Ok(name)
}

fn name_to_string(name: &Name) -> String {
    let text = name.to_ascii();
    text.strip_suffix('.').unwrap_or(&text).to_ascii_lowercase()
}

/// Removes repeats, keeping the first of each.
fn dedup<T: PartialEq>(items: &mut Vec<T>) {
    let mut i = 0;
    while i < items.len() {
        if items[..i].contains(&items[i]) {
            items.remove(i);
        } else {
            i += 1;
        }
    }
}

/// The DNSBL / reverse-DNS form of `ip`, without a zone: reversed IPv4 octets
/// (`192.0.2.1` → `"1.2.0.192"`) or reversed IPv6 nibbles (`2001:db8::1` →
/// `"1.0.0.0.….8.b.d.0.1.0.0.2"`). An IPv4-mapped IPv6 address gives the IPv4 form.
pub fn reversed_ip(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}")
        }
        IpAddr::V6(v6) => reversed_v6(v6),
    }
}

fn reversed_v6(ip: Ipv6Addr) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(63);
    for byte in ip.octets().iter().rev() {
        for nibble in [byte & 0x0f, byte >> 4] {
            if !out.is_empty() {
                out.push('.');
            }
            out.push(char::from(HEX[usize::from(nibble)]));
        }
    }
    out
}
