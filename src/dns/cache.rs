//! The answer cache in front of hickory, with prefetch: an answer used again near the end of
//! its TTL is refreshed in the background, so a client that comes back never waits for DNS.
//!
//! # Why our own cache, not hickory's
//!
//! hickory-resolver 0.25 keeps its cache (`DnsLru`, a moka TinyLFU keyed by query) private:
//! a lookup answers from it whenever it holds the query, and nothing bypasses it for one query
//! (only `clear_cache` for all). A background "refresh" through hickory would be served the
//! very entry it should replace. Its answers do say how long they may be cached, though:
//! `Lookup::valid_until` (the smallest record TTL, clamped by `positive_max_ttl`) and, for
//! NXDOMAIN / no data, the `negative_ttl` of the error (SOA minimum, clamped by
//! `negative_max_ttl`). So hickory's cache is switched off (`cache_size = 0`), every hickory
//! lookup goes to the network, and this module keeps the answers: the same moka cache hickory
//! used (already in the dependency tree; TinyLFU admission keeps a flood of one-time clients
//! from pushing out the entries that are used), plus, per entry, when it was stored and
//! whether its refresh was claimed.
//!
//! # Prefetch, as Unbound does it
//!
//! A use of an entry in the last `prefetch_percent` of its TTL starts one background query for
//! it; the session gets the cached answer at once. Unbound uses the last 10 %; our default is
//! 25 %, because a mail client's names are asked for only when that client comes back, not
//! all the time like a popular name at a resolver: a client coming back at least every
//! `prefetch_percent` of the TTL never waits (measured in docs/performance.md). An entry is refreshed at most once (the
//! refresh stores a new entry, with its own claim); entries never used again are never
//! refreshed, so one-time clients cost nothing. At most [`PREFETCH_MAX_CONCURRENT`] refreshes
//! run at once, beside (not inside) the sessions' own query slots; more wait for a slot, up to
//! [`PREFETCH_MAX_PENDING`] started and unfinished (a session's use of a client's five or six
//! answers makes them due together, so refreshes come in bursts); a use beyond that is dropped
//! and counted, and a later use may try again. A refresh that fails (SERVFAIL,
//! timeout) leaves the cached answer until its TTL ends.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use hickory_resolver::lookup::Lookup;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RecordType};
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::TokioResolver;
use tokio::sync::Semaphore;

use super::DnsError;

/// Most background refreshes in flight at once (more wait for a slot).
pub const PREFETCH_MAX_CONCURRENT: usize = 64;
/// Most background refreshes started and not finished, waiting ones included (beyond them,
/// prefetches are dropped).
pub const PREFETCH_MAX_PENDING: usize = 1024;

/// What the cache is keyed by: the query name (lowercased) and type.
pub(super) type Key = (Name, RecordType);

/// Something the cache did, for the metrics: see [`CacheEvent::label`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheEvent {
    /// A query answered from the cache.
    Hit,
    /// A query that had to ask a name server.
    Miss,
    /// A background refresh started.
    PrefetchStarted,
    /// A background refresh stored a new answer.
    PrefetchRefreshed,
    /// A background refresh got no answer to store (error, timeout): the old one stays.
    PrefetchFailed,
    /// A refresh was due but [`PREFETCH_MAX_PENDING`] were pending: not started.
    PrefetchDropped,
}

impl CacheEvent {
    /// `hit`, `miss` (cache lookups) or `started`, `refreshed`, `failed`, `dropped`
    /// (prefetches).
    pub fn label(self) -> &'static str {
        match self {
            CacheEvent::Hit => "hit",
            CacheEvent::Miss => "miss",
            CacheEvent::PrefetchStarted => "started",
            CacheEvent::PrefetchRefreshed => "refreshed",
            CacheEvent::PrefetchFailed => "failed",
            CacheEvent::PrefetchDropped => "dropped",
        }
    }

    /// Whether the event is a prefetch's (else a cache lookup's).
    pub fn is_prefetch(self) -> bool {
        !matches!(self, CacheEvent::Hit | CacheEvent::Miss)
    }
}

/// Called for every [`CacheEvent`] (set with `Dns::set_cache_observer`).
pub type CacheObserver = Arc<dyn Fn(CacheEvent) + Send + Sync>;

/// Counters of the cache and of prefetch. Read them with `.load(Ordering::Relaxed)`.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub prefetch_started: AtomicU64,
    pub prefetch_refreshed: AtomicU64,
    pub prefetch_failed: AtomicU64,
    pub prefetch_dropped: AtomicU64,
}

impl CacheStats {
    fn counter(&self, event: CacheEvent) -> &AtomicU64 {
        match event {
            CacheEvent::Hit => &self.hits,
            CacheEvent::Miss => &self.misses,
            CacheEvent::PrefetchStarted => &self.prefetch_started,
            CacheEvent::PrefetchRefreshed => &self.prefetch_refreshed,
            CacheEvent::PrefetchFailed => &self.prefetch_failed,
            CacheEvent::PrefetchDropped => &self.prefetch_dropped,
        }
    }
}

/// One cached answer: records, or a negative answer (NXDOMAIN, no data) that came with an SOA.
pub(super) struct Entry {
    pub answer: Result<Lookup, DnsError>,
    stored: Instant,
    expires: Instant,
    /// Set by the use that started (or tried to start) this entry's refresh.
    refresh_claimed: AtomicBool,
}

impl Entry {
    /// Whether a use at `now` falls in the last `percent` of the entry's TTL.
    fn prefetch_due(&self, now: Instant, percent: u8) -> bool {
        let ttl = self
            .expires
            .saturating_duration_since(self.stored)
            .as_nanos();
        let remaining = self.expires.saturating_duration_since(now).as_nanos();
        remaining * 100 < ttl * u128::from(percent)
    }
}

/// What one query to the name servers gave, and how long it may be cached (None: not at all,
/// e.g. SERVFAIL, or a negative answer without SOA).
pub(super) struct Fetched {
    pub answer: Result<Lookup, DnsError>,
    pub ttl: Option<Duration>,
}

/// One query through hickory (whose own cache is off), without timeout or slot: the caller
/// bounds it.
pub(super) async fn fetch(
    resolver: &TokioResolver,
    name: Name,
    record_type: RecordType,
) -> Fetched {
    match resolver.lookup(name, record_type).await {
        Ok(lookup) => {
            let ttl = lookup
                .valid_until()
                .saturating_duration_since(Instant::now());
            Fetched {
                answer: Ok(lookup),
                ttl: Some(ttl),
            }
        }
        Err(error) => {
            let ttl = error.proto().and_then(|proto| match proto.kind() {
                ProtoErrorKind::NoRecordsFound {
                    negative_ttl: Some(ttl),
                    response_code: ResponseCode::NXDomain | ResponseCode::NoError,
                    ..
                } => Some(Duration::from_secs(u64::from(*ttl))),
                _ => None,
            });
            Fetched {
                answer: Err(DnsError::from_resolve(&error)),
                ttl,
            }
        }
    }
}

/// The answers of every session (see the [module documentation](self)). Shared through `Arc`:
/// refresh tasks hold one.
pub(super) struct AnswerCache {
    entries: moka::sync::Cache<Key, Arc<Entry>>,
    resolver: TokioResolver,
    timeout: Duration,
    /// `Some(percent)` when prefetch is on.
    prefetch_percent: Option<u8>,
    prefetch_slots: Semaphore,
    /// Refreshes started and not finished (at most `prefetch_pending_limit`).
    prefetch_pending: AtomicUsize,
    prefetch_pending_limit: usize,
    stats: CacheStats,
    observer: RwLock<Option<CacheObserver>>,
}

struct EntryExpiry;

impl moka::Expiry<Key, Arc<Entry>> for EntryExpiry {
    fn expire_after_create(&self, _: &Key, entry: &Arc<Entry>, now: Instant) -> Option<Duration> {
        Some(entry.expires.saturating_duration_since(now))
    }

    fn expire_after_update(
        &self,
        _: &Key,
        entry: &Arc<Entry>,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.expires.saturating_duration_since(now))
    }
}

impl AnswerCache {
    /// A cache of at most `capacity` answers (at least 1); refreshes ask through `resolver`
    /// within `timeout`, at most `limits.0` at once and `limits.1` started and unfinished;
    /// `prefetch_percent` None: no prefetch.
    pub fn new(
        capacity: usize,
        resolver: TokioResolver,
        timeout: Duration,
        prefetch_percent: Option<u8>,
        limits: (usize, usize),
    ) -> AnswerCache {
        let entries = moka::sync::Cache::builder()
            .max_capacity(u64::try_from(capacity.max(1)).unwrap_or(u64::MAX))
            .expire_after(EntryExpiry)
            .build();
        AnswerCache {
            entries,
            resolver,
            timeout,
            prefetch_percent,
            prefetch_slots: Semaphore::new(limits.0),
            prefetch_pending: AtomicUsize::new(0),
            prefetch_pending_limit: limits.1,
            stats: CacheStats::default(),
            observer: RwLock::new(None),
        }
    }

    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    pub fn set_observer(&self, observer: CacheObserver) {
        *self
            .observer
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(observer);
    }

    pub fn clear(&self) {
        self.entries.invalidate_all();
    }

    /// The cached answer for `key`, if still valid (counted as a hit or a miss). A hit in the
    /// last `prefetch_percent` of the TTL starts the entry's refresh, unless one was claimed.
    pub fn get(self: &Arc<Self>, key: &Key) -> Option<Arc<Entry>> {
        let now = Instant::now();
        let Some(entry) = self.entries.get(key).filter(|e| now < e.expires) else {
            self.count(CacheEvent::Miss);
            return None;
        };
        self.count(CacheEvent::Hit);
        if let Some(percent) = self.prefetch_percent {
            if entry.prefetch_due(now, percent)
                && !entry.refresh_claimed.swap(true, Ordering::AcqRel)
            {
                self.start_refresh(key.clone(), &entry);
            }
        }
        Some(entry)
    }

    /// Keeps what a query gave, if it may be cached.
    pub fn store(&self, key: Key, fetched: &Fetched) -> bool {
        let Some(ttl) = fetched.ttl.filter(|ttl| !ttl.is_zero()) else {
            return false;
        };
        let answer = match &fetched.answer {
            Ok(lookup) => Ok(lookup.clone()),
            Err(e) if e.is_negative() => Err(e.clone()),
            Err(_) => return false,
        };
        let stored = Instant::now();
        let entry = Entry {
            answer,
            stored,
            expires: stored + ttl,
            refresh_claimed: AtomicBool::new(false),
        };
        self.entries.insert(key, Arc::new(entry));
        true
    }

    /// Spawns the refresh of `key` unless too many are pending; never waits.
    fn start_refresh(self: &Arc<Self>, key: Key, entry: &Entry) {
        let runtime = tokio::runtime::Handle::try_current();
        let pending = self.prefetch_pending.fetch_add(1, Ordering::AcqRel);
        let Some(runtime) = runtime
            .ok()
            .filter(|_| pending < self.prefetch_pending_limit)
        else {
            self.prefetch_pending.fetch_sub(1, Ordering::AcqRel);
            // A later use may try again.
            entry.refresh_claimed.store(false, Ordering::Release);
            self.count(CacheEvent::PrefetchDropped);
            return;
        };
        self.count(CacheEvent::PrefetchStarted);
        let cache = self.clone();
        runtime.spawn(async move {
            let Ok(_slot) = cache.prefetch_slots.acquire().await else {
                cache.prefetch_pending.fetch_sub(1, Ordering::AcqRel);
                return; // never closed
            };
            let fetch = fetch(&cache.resolver, key.0.clone(), key.1);
            let refreshed = match tokio::time::timeout(cache.timeout, fetch).await {
                Ok(fetched) => cache.store(key, &fetched),
                Err(_) => false,
            };
            cache.prefetch_pending.fetch_sub(1, Ordering::AcqRel);
            cache.count(if refreshed {
                CacheEvent::PrefetchRefreshed
            } else {
                CacheEvent::PrefetchFailed
            });
        });
    }

    fn count(&self, event: CacheEvent) {
        self.stats.counter(event).fetch_add(1, Ordering::Relaxed);
        let observer = self
            .observer
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(observer) = observer {
            observer(event);
        }
    }
}
