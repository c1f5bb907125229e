//! Greylist stores behind one trait: the embedded database (default, one MX host) and Redis
//! (several MX hosts sharing one view).
//!
//! The greylisting *rules* live in `checks::greylist`; a store only keeps entries and applies an
//! update atomically, so both backends behave the same by construction.
//!
//! Around the trait: [`open()`] opens the configured backend, [`Instrumented`] times and counts
//! the calls of sessions and purges (the store metrics), [`purge_task`] purges periodically.

use async_trait::async_trait;

pub mod embedded;
mod instrumented;
#[cfg(test)]
pub(crate) mod memory;
mod open;
mod purge;
pub mod record;
pub mod redis;

pub use instrumented::{Instrumented, Op};
pub use open::{open, OpenFor};
pub use purge::purge_task;

/// One greylist or autowhitelist record. Times are Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Entry {
    /// When the first attempt was seen.
    pub first_seen: u64,
    /// When the entry was last updated.
    pub last_seen: u64,
    /// Accepted deliveries (0 while still greylisted).
    pub passed: u32,
    /// Refused attempts.
    pub blocked: u32,
    /// When the entry stops counting (expired entries are ignored and purged).
    pub expires: u64,
}

impl Entry {
    /// `expires` of an entry that never expires (`mxsentry greylist add --permanent`): no
    /// purge removes it and accepted deliveries do not shorten it. Redis keeps it with its
    /// longest TTL (100 years), so `volatile-ttl` eviction takes it last.
    pub const PERMANENT: u64 = u64::MAX;

    pub fn is_expired(&self, now: u64) -> bool {
        self.expires <= now
    }

    /// Whether the entry never expires ([`Entry::PERMANENT`]).
    pub fn is_permanent(&self) -> bool {
        self.expires == Entry::PERMANENT
    }

    /// The `expires` of this entry refreshed at `now` for `secs` more: a permanent entry
    /// stays permanent.
    pub fn refreshed_expiry(&self, now: u64, secs: u64) -> u64 {
        if self.is_permanent() {
            Entry::PERMANENT
        } else {
            now.saturating_add(secs)
        }
    }
}

/// What a store can tell about its durable commits (`mxsentry status`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitStatus {
    /// Unix time of the last successful commit, if any since the store was opened.
    pub last_commit: Option<u64>,
    /// The error of the last commit attempt when it failed.
    pub error: Option<String>,
}

/// Seconds since the Unix epoch: the clock of [`Entry`] times.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What an [`GreylistStore::update`] closure decides for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// Store this entry (its `expires` is the TTL).
    Put(Entry),
    /// Remove the entry.
    Delete,
    /// Leave the store as it is.
    Keep,
}

/// A store failure: the greylist step fails open (accepts, logs, counts), never 5xx.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store timed out")]
    Timeout,
    #[error("store data corrupt: {0}")]
    Corrupt(String),
}

/// The update function: given the current entry (expired or not), what to write. It must be a
/// pure function of its input: Redis may call it again when another MX host raced it.
pub type UpdateFn<'a> = dyn Fn(Option<Entry>) -> Write + Send + Sync + 'a;

#[allow(clippy::len_without_is_empty)] // `len` feeds a gauge; emptiness is never asked
/// A place to keep greylist entries. Keys are opaque strings built by `checks::greylist`
/// (`t:<net>|<sender>|<rcpt>` for triplets, `c:<net>` for client autowhitelisting; hashed when
/// `greylist.hash_keys` is on).
#[async_trait]
pub trait GreylistStore: Send + Sync {
    /// Backend name for logs and metric labels: `embedded` or `redis`.
    fn backend(&self) -> &'static str;

    /// Reads `key`, calls `f` with the entry and applies its write, atomically with respect to
    /// every other update of the same key (Redis: also across MX hosts). Returns the entry `f`
    /// was given (the caller derives its decision from it with the same pure function). The
    /// written entry is visible to the next call at once (durability: see each backend).
    async fn update(&self, key: &str, f: &UpdateFn<'_>) -> Result<Option<Entry>, StoreError>;

    /// The entry for `key`, expired or not.
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError>;

    /// Writes an entry (admin `greylist add`).
    async fn put(&self, key: &str, entry: Entry) -> Result<(), StoreError>;

    /// Removes `key`; true when it existed (admin `greylist del`).
    async fn delete(&self, key: &str) -> Result<bool, StoreError>;

    /// Entries whose key starts with `prefix`, at most `limit`, in key order where the backend
    /// has one (admin `greylist list`). Expired entries not purged yet may be listed: compare
    /// `expires` with the time when it matters.
    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<(String, Entry)>, StoreError>;

    /// Removes entries expired at `now`; returns how many (periodic purge, `greylist purge`).
    /// Must not stall concurrent updates for long (work in batches).
    async fn purge(&self, now: u64) -> Result<u64, StoreError>;

    /// Number of entries (for the entries gauge; may be approximate).
    async fn len(&self) -> Result<u64, StoreError>;

    /// Makes everything written so far durable (SIGTERM, admin commands).
    async fn flush(&self) -> Result<(), StoreError>;

    /// Its commits, where the backend commits by itself (embedded); `None` otherwise (Redis:
    /// persistence is the server's).
    fn commit_status(&self) -> Option<CommitStatus> {
        None
    }
}
