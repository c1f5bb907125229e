//! Redis greylist store: several MX hosts share one view of the greylist through one Redis.
//!
//! # Keys and values
//! Every entry is one Redis string: key `mxsentry:gl:` + the opaque store key ([`KEY_PREFIX`]),
//! value a fixed 33-byte binary record (version byte `1`, then `first_seen`, `last_seen` as
//! big-endian u64, `passed`, `blocked` as big-endian u32, `expires` as big-endian u64). A value of
//! another length or version is reported as [`StoreError::Corrupt`] by `get`, skipped (with a
//! warning) by `list`, treated as absent and overwritten by `update`, and removed by `purge`; a key
//! of another Redis type is `Corrupt` for `get` and `update`. Isolate deployments that share a
//! Redis server by database number (`redis://host:6379/3`).
//!
//! # Expiry
//! Every write sets a Redis TTL of `expires - now` seconds (local clock; at least 1 s), so Redis
//! drops entries by itself when their window ends and an entry never outlives its `expires` by more
//! than the clock skew between the MX hosts. `purge` therefore only has leftovers to remove:
//! entries whose `expires` passed before Redis fired the TTL (skew, or a `now` in the future), and
//! values it cannot decode. It walks the key space with `SCAN` in batches of [`SCAN_BATCH`] and
//! deletes each batch with one short Lua script that removes a key only if it still holds the value
//! that was judged expired, so a concurrent refresh by another host is never lost. `get` returns
//! `None`, not an expired entry, once Redis has fired the TTL: the greylist rules treat both alike.
//!
//! # Atomic updates across MX hosts
//! [`GreylistStore::update`] is optimistic compare-and-set: `GET` the value, run the (pure) update
//! closure locally, then one Lua script (`EVALSHA`) writes the result only if the key still holds
//! the exact bytes that were read (`SET .. EX ttl` or `DEL`); otherwise it returns the current
//! value and the closure runs again on it, at most [`MAX_ATTEMPTS`] times and always within the
//! deadline. Redis runs a script atomically, so the write is applied to exactly the value the
//! closure saw: that is linearizable at the script (an A→B→A change in between is harmless because
//! the closure is a pure function of the value). `Write::Keep` writes nothing (the `GET` is its
//! linearization point). Within one process, updates of one key (and of keys that share one of
//! [`LOCK_STRIPES`] lock stripes) are serialized by an async mutex first, so the compare-and-set
//! only races other MX hosts (at most one retry per concurrent host) instead of every concurrent
//! session of a busy client network retrying against each other.
//!
//! Why not `WATCH`/`MULTI`/`EXEC`: `WATCH` is state of the server-side connection, so it is only
//! safe on a connection that no other task uses between `WATCH` and `EXEC`. On a shared multiplexed
//! connection the `MULTI`/`EXEC` and `WATCH` of concurrent tasks interleave: one task's `EXEC`
//! clears another's `WATCH` (lost updates) or runs its commands inside another's transaction. It
//! needs a pool of dedicated connections, one per in-flight update, plus care to throw a connection
//! away when a deadline cancels an update between `WATCH` and `EXEC` (else the next user inherits
//! the watch or an open `MULTI`). Both take two round trips (`WATCH`+`GET`, then
//! `MULTI`/`SET`/`EXEC`; or `GET`, then the script), but `WATCH` holds a whole connection for both
//! and a conflict aborts the transaction after the fact. The compare-and-set script needs no
//! connection state, so all commands share one pipelined connection.
//!
//! Measured (release build, loopback, Redis 7.0, 2 cores, 8 tokio threads): 64 tasks updating
//! distinct keys, 87k updates/s (p99 1.9 ms) with this compare-and-set on one multiplexed
//! connection against 34k/s (p99 9 ms) with `WATCH` on a pool of 16 dedicated connections; one hot
//! key updated by 2 stores ("hosts") x 50 tasks, 14-17k/s (p99 16 ms, no retries thanks to the
//! stripes) against 3.3k/s (p99 130 ms, 108k `EXEC` aborts for 10k updates). `WATCH` on one shared
//! multiplexed connection without a lock, 100 tasks x 100 increments: the counter ended at 208
//! instead of 10000, with no error reported — lost updates, as expected.
//!
//! # Connection, deadlines and failing open
//! One multiplexed connection carries every command (pipelined; cheap to share). Every call has a
//! deadline ([`DEFAULT_TIMEOUT`], 250 ms; [`RedisStore::with_timeout`]) covering the wait for the
//! key stripe, the connection and all round trips; past it the call returns
//! [`StoreError::Timeout`], otherwise failures are [`StoreError::Unavailable`] — the greylist step
//! then fails open. A call that times out during the final write may or may not have been applied.
//! The scanning calls (`list`, `len`, `purge`) apply the deadline to each round trip (batch).
//!
//! The connection heals itself: an I/O error or a timeout discards it and the next call reconnects.
//! Connecting runs in a background task (bounded by the deadline, never cancelled half way by a
//! caller) and only one attempt runs at a time; after a failed attempt, calls fail at once
//! ("circuit open") until the next attempt is due, with a backoff from 50 ms doubling to 1 s. So
//! when Redis is down a session pays nothing or one connect attempt, and when Redis is back the
//! store works again within about a second, with no restart or reconnect call. An idempotent call
//! (anything but the compare-and-set write) that fails because an old connection died (a Redis
//! restart) is retried once on a fresh connection within its deadline. [`RedisStore::connect`]
//! fails only for a bad URL; if Redis is not reachable at start it logs a warning and returns a
//! store that connects when Redis comes up.
//!
//! Where it connects ([`RedisSpec`], the `[greylist]` redis keys) is resolved by `target`: one
//! server (`redis://`, `rediss://` with rustls and an optional private CA, `unix://`), or the
//! primary that Redis Sentinels name, asked again on every reconnect, so a failover is followed
//! without a restart; or a Redis Cluster, where every key carries a hash tag ([`cluster_tag`]:
//! the client part, so a client's keys share a slot) and the scanning calls visit each primary. The password comes from a file, re-read for every new connection.
//!
//! # Size and durability
//! `len` counts the keys under the prefix with `SCAN` (one pass over the database, in batches);
//! with [`RedisStore::with_dedicated_db`] it uses `DBSIZE` instead (O(1), but counts every key in
//! the database, so only for a database that holds nothing else). `flush` does nothing: what is
//! written is in Redis memory and visible to every host at once, and persistence is Redis's job.
//! Recommended Redis settings: `appendonly yes` with `appendfsync everysec` (a Redis crash loses at
//! most about one second, the same bound as the embedded store's default group commit), and a
//! `maxmemory` sized for the entries (measured with Redis 7.0: about 260 bytes per entry with a
//! 61-byte key, so about 260 MB per million; `tests/redis_store.rs` prints it) with
//! `maxmemory-policy volatile-ttl`: every mxsentry key has a TTL, and evicting the entries closest
//! to expiry re-greylists a few senders, where refusing writes (`noeviction`) would turn
//! greylisting off (every update failing open).

mod admin;
mod link;
mod script;
mod target;

use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::redis::{RedisResult, Script, Value};
use async_trait::async_trait;

use link::{breaks_connection, map_error, Con, Failure, Link};
use script::{parse_cas_reply, CAS_SCRIPT, DELETE_IF_SCRIPT};
pub use target::{
    check_cluster_url, check_sentinel_url, check_spec, check_url, read_ca_file, read_password_file,
    redact, RedisSpec,
};

use super::record::{self, Order, LEN as ENCODED_LEN, VERSION as ENCODING_VERSION};
use super::{Entry, GreylistStore, StoreError, UpdateFn, Write};

/// Prefix of every key mxsentry writes.
pub const KEY_PREFIX: &str = "mxsentry:gl:";
/// Default deadline of one call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(250);
/// Compare-and-set attempts of one update before it gives up (only reached under heavy contention
/// from many hosts on one key).
pub const MAX_ATTEMPTS: usize = 16;
/// Keys per `SCAN` / purge batch.
pub const SCAN_BATCH: usize = 1000;
/// In-process lock stripes for updates.
pub const LOCK_STRIPES: usize = 256;

/// Redis rejects absurd TTLs; no greylist entry needs more than this.
const MAX_TTL_SECS: u64 = 100 * 365 * 86_400;
/// Values fetched per `MGET`.
const MGET_BATCH: usize = 500;

/// Greylist store in a Redis server shared by several MX hosts. See the module docs.
pub struct RedisStore {
    link: Arc<Link>,
    timeout: Duration,
    dedicated_db: bool,
    stripes: Box<[tokio::sync::Mutex<()>]>,
    cas: Script,
    delete_if: Script,
    /// Keys carry a hash tag (Redis Cluster).
    cluster: bool,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("server", &self.link.describe)
            .field("timeout", &self.timeout)
            .field("dedicated_db", &self.dedicated_db)
            .finish()
    }
}

impl RedisStore {
    /// Opens a store on `url`: `redis://[user][:password@]host[:port][/db]`, `rediss://` (TLS,
    /// the system's CAs), `unix:///path/redis.sock[?db=N]` (or `redis+unix://`). Fails only for
    /// an unusable URL: when Redis is not reachable yet, logs a warning and returns a store that
    /// connects by itself once Redis is up (calls fail open meanwhile).
    pub async fn connect(url: &str) -> Result<RedisStore, StoreError> {
        RedisStore::open(&RedisSpec::url(url)).await
    }

    /// Opens a store as `spec` says (one server or Sentinel; password file; CA file). Fails
    /// only for unusable settings (a bad URL, an unreadable password or CA file), never because
    /// Redis is down.
    pub async fn open(spec: &RedisSpec) -> Result<RedisStore, StoreError> {
        let target = target::Target::resolve(spec).map_err(StoreError::Unavailable)?;
        let cluster = target.is_cluster();
        let store = RedisStore {
            cluster,
            link: Arc::new(Link::new(target, DEFAULT_TIMEOUT)),
            timeout: DEFAULT_TIMEOUT,
            dedicated_db: false,
            stripes: (0..LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            cas: Script::new(CAS_SCRIPT),
            delete_if: Script::new(DELETE_IF_SCRIPT),
        };
        // Warm the connection; a failure is logged by the connect task and is not fatal.
        let deadline = tokio::time::Instant::now() + store.timeout;
        let _ = tokio::time::timeout_at(deadline, store.link.get()).await;
        Ok(store)
    }

    /// Sets the deadline of every call (default [`DEFAULT_TIMEOUT`], 250 ms; at least 1 ms).
    pub fn with_timeout(mut self, timeout: Duration) -> RedisStore {
        let timeout = timeout.max(Duration::from_millis(1));
        self.timeout = timeout;
        self.link.set_timeout(timeout);
        self
    }

    /// Declares that the Redis database holds only mxsentry keys: `len` then uses `DBSIZE`
    /// (O(1)) instead of a `SCAN` over the database.
    pub fn with_dedicated_db(mut self, dedicated: bool) -> RedisStore {
        self.dedicated_db = dedicated;
        self
    }

    /// The deadline of one call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether a connection to Redis is currently established (for health reporting).
    pub fn is_connected(&self) -> bool {
        self.link.is_connected()
    }

    /// The Redis key of store key `key`: [`KEY_PREFIX`] + `key`; on a Redis Cluster with a
    /// hash tag before the key (see [`cluster_tag`]).
    fn redis_key(&self, key: &str) -> String {
        if self.cluster {
            format!("{KEY_PREFIX}{{{}}}{key}", cluster_tag(key))
        } else {
            format!("{KEY_PREFIX}{key}")
        }
    }

    fn stripe(&self, key: &str) -> &tokio::sync::Mutex<()> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        &self.stripes[(h.finish() % self.stripes.len() as u64) as usize]
    }

    fn deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.timeout
    }

    /// Runs `op` on the connection before `deadline`, mapping failures to [`StoreError`] and
    /// discarding a broken connection. `idempotent` operations are retried once on a fresh
    /// connection when an old one turns out dead.
    async fn run<T, F, Fut>(
        &self,
        deadline: tokio::time::Instant,
        idempotent: bool,
        op: F,
    ) -> Result<T, StoreError>
    where
        F: Fn(Con) -> Fut + Send + Sync,
        Fut: Future<Output = RedisResult<T>> + Send,
        T: Send,
    {
        for attempt in 0..2 {
            let gen = AtomicU64::new(0);
            let fresh = AtomicBool::new(false);
            let outcome = tokio::time::timeout_at(deadline, async {
                let lease = self.link.get().await?;
                gen.store(lease.gen, Ordering::Relaxed);
                fresh.store(lease.fresh, Ordering::Relaxed);
                op(lease.con).await.map_err(Failure::Redis)
            })
            .await;
            let gen = gen.load(Ordering::Relaxed);
            match outcome {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(Failure::Down(why))) => return Err(StoreError::Unavailable(why)),
                Ok(Err(Failure::Redis(e))) => {
                    if breaks_connection(&e) {
                        self.link.invalidate(gen, &e.to_string());
                        if idempotent && attempt == 0 && !fresh.load(Ordering::Relaxed) {
                            continue;
                        }
                    }
                    return Err(map_error(&e));
                }
                Err(_elapsed) => {
                    // The connection may be hung (Redis stopped, network black hole): replace it.
                    self.link.invalidate(gen, "request timed out");
                    return Err(StoreError::Timeout);
                }
            }
        }
        unreachable!("the second attempt always returns")
    }

    async fn get_raw(
        &self,
        deadline: tokio::time::Instant,
        rkey: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.run(deadline, true, |mut con| async move {
            ::redis::cmd("GET").arg(rkey).query_async(&mut con).await
        })
        .await
    }
}

#[async_trait]
impl GreylistStore for RedisStore {
    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn update(&self, key: &str, f: &UpdateFn<'_>) -> Result<Option<Entry>, StoreError> {
        let deadline = self.deadline();
        let rkey = self.redis_key(key);
        let _serialized = tokio::time::timeout_at(deadline, self.stripe(key).lock())
            .await
            .map_err(|_| StoreError::Timeout)?;
        let mut raw = self.get_raw(deadline, &rkey).await?;
        for _ in 0..MAX_ATTEMPTS {
            let current = match raw.as_deref() {
                None => None,
                Some(bytes) => match decode(bytes) {
                    Ok(entry) => Some(entry),
                    Err(why) => {
                        tracing::warn!(key, %why, "redis store: undecodable entry, overwriting");
                        None
                    }
                },
            };
            let (op, value, ttl) = match f(current) {
                Write::Keep => return Ok(current),
                Write::Delete if raw.is_none() => return Ok(current),
                Write::Delete => ("d", Vec::new(), 0),
                Write::Put(entry) => ("p", encode(&entry).to_vec(), ttl_secs(entry.expires)),
            };
            let expected: &[u8] = raw.as_deref().unwrap_or(b"");
            let (rkey, value) = (&rkey, &value);
            let reply: Value = self
                .run(deadline, false, |mut con| async move {
                    let mut call = self.cas.key(rkey);
                    call.arg(expected).arg(op).arg(value).arg(ttl);
                    call.invoke_async(&mut con).await
                })
                .await?;
            match parse_cas_reply(reply)? {
                None => return Ok(current),
                Some(now_held) => raw = now_held,
            }
        }
        tracing::warn!(
            key,
            "redis store: update lost {MAX_ATTEMPTS} races, giving up"
        );
        Err(StoreError::Unavailable(format!(
            "redis: update of {key:?} lost {MAX_ATTEMPTS} compare-and-set races"
        )))
    }

    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        match self.get_raw(self.deadline(), &self.redis_key(key)).await? {
            None => Ok(None),
            Some(bytes) => decode(&bytes)
                .map(Some)
                .map_err(|why| StoreError::Corrupt(format!("{key:?}: {why}"))),
        }
    }

    async fn put(&self, key: &str, entry: Entry) -> Result<(), StoreError> {
        let rkey = self.redis_key(key);
        let (rkey, value, ttl) = (&rkey, encode(&entry), ttl_secs(entry.expires));
        self.run(self.deadline(), true, |mut con| async move {
            ::redis::cmd("SET")
                .arg(rkey)
                .arg(&value[..])
                .arg("EX")
                .arg(ttl)
                .query_async::<()>(&mut con)
                .await
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let rkey = self.redis_key(key);
        let rkey = &rkey;
        let removed: u64 = self
            .run(self.deadline(), true, |mut con| async move {
                ::redis::cmd("DEL").arg(rkey).query_async(&mut con).await
            })
            .await?;
        Ok(removed > 0)
    }

    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<(String, Entry)>, StoreError> {
        self.list_entries(prefix, limit).await
    }

    async fn purge(&self, now: u64) -> Result<u64, StoreError> {
        self.purge_expired(now).await
    }

    async fn len(&self) -> Result<u64, StoreError> {
        self.count().await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        // Writes are in Redis at once; making them durable is Redis's job (appendonly yes,
        // appendfsync everysec — see the module docs).
        Ok(())
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Redis TTL for an entry expiring at `expires`: what is left of it, at least 1 s.
fn ttl_secs(expires: u64) -> u64 {
    expires.saturating_sub(now_secs()).clamp(1, MAX_TTL_SECS)
}

/// The fixed 33-byte value of `entry` (the shared record layout, big-endian).
fn encode(entry: &Entry) -> [u8; ENCODED_LEN] {
    record::encode(entry, Order::Big)
}

fn decode(bytes: &[u8]) -> Result<Entry, String> {
    record::decode(bytes, Order::Big).ok_or_else(|| {
        format!(
            "not a mxsentry v{ENCODING_VERSION} entry ({} bytes, first byte {:#04x})",
            bytes.len(),
            bytes.first().copied().unwrap_or(0)
        )
    })
}

/// The hash tag of a store key on a Redis Cluster: its client part (the network or sender pool
/// between `t:`/`c:` and the first `|`), so that a client's triplet keys and its autowhitelist
/// key share one slot, one node. Hashed keys (`hash_keys`) have no readable client part: the
/// whole key is its own tag. Braces are left out (Redis ends the tag at the first `}`).
pub fn cluster_tag(key: &str) -> String {
    let body = key
        .strip_prefix("t:")
        .or_else(|| key.strip_prefix("c:"))
        .unwrap_or(key);
    let client = if body.len() == 32 && body.bytes().all(|b| b.is_ascii_hexdigit()) {
        key // hashed: `t:`/`c:` + 32 hex digits
    } else {
        body.split('|').next().unwrap_or(body)
    };
    client.chars().filter(|c| !matches!(c, '{' | '}')).collect()
}

/// The store key inside Redis key `full` (without the prefix and a cluster hash tag).
fn store_key_of(full: &str, cluster: bool) -> Option<&str> {
    let rest = full.strip_prefix(KEY_PREFIX)?;
    let rest = if cluster {
        rest.strip_prefix('{')?.split_once('}')?.1
    } else {
        rest
    };
    (!rest.is_empty()).then_some(rest)
}

/// Escapes the glob characters of `SCAN MATCH` so that `s` matches literally.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests;
