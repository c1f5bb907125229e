//! The one shared connection to Redis and its reconnect state: connect in a background task
//! (never cancelled half way by a caller's deadline), one attempt at a time, a backoff from
//! 50 ms to 1 s while Redis is away ("circuit open": calls fail at once), and a connection
//! that failed dropped so the next call reconnects — to the primary the sentinels name now,
//! in Sentinel mode.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use ::redis::aio::{ConnectionLike, MultiplexedConnection};
use ::redis::cluster_async::ClusterConnection;
use ::redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};
use tokio::sync::watch;

use super::target::Target;
use crate::store::StoreError;

const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(50);
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The shared connection and its reconnect state.
/// The shared connection: one multiplexed connection to a server, or a Redis Cluster
/// connection (which routes each command to the node of its key's slot, follows `MOVED`, and
/// keeps a connection per node).
#[derive(Clone)]
pub(super) enum Con {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Con {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Con::Single(c) => c.req_packed_command(cmd),
            Con::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Con::Single(c) => c.req_packed_commands(cmd, offset, count),
            Con::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Con::Single(c) => c.get_db(),
            Con::Cluster(c) => c.get_db(),
        }
    }
}

pub(super) struct Link {
    target: Target,
    /// What the store connects to, for logs (never the password).
    pub(super) describe: String,
    timeout_ns: AtomicU64,
    slot: Mutex<Slot>,
    /// Bumped after every connect attempt; waiters watch it.
    epoch: watch::Sender<u64>,
    next_gen: AtomicU64,
}

struct Slot {
    /// The live connection and its generation.
    con: Option<(u64, Con)>,
    /// A connect task is running.
    connecting: bool,
    /// After a failed attempt: no new attempt before this instant.
    retry_at: Option<Instant>,
    backoff: Duration,
    last_error: String,
    /// Consecutive failed attempts (logging).
    failures: u64,
    /// The server of the last connection (`host:port`), to log a failover.
    server: String,
}

pub(super) struct Lease {
    pub(super) gen: u64,
    pub(super) con: Con,
    /// Made for this caller (so a failure on it is not a stale connection).
    pub(super) fresh: bool,
}

pub(super) enum Failure {
    Down(String),
    Redis(RedisError),
}

impl Link {
    pub(super) fn new(target: Target, timeout: Duration) -> Link {
        let (epoch, _) = watch::channel(0u64);
        Link {
            describe: target.describe.clone(),
            target,
            timeout_ns: AtomicU64::new(0),
            slot: Mutex::new(Slot {
                con: None,
                connecting: false,
                retry_at: None,
                backoff: RECONNECT_BACKOFF_MIN,
                last_error: String::new(),
                failures: 0,
                server: String::new(),
            }),
            epoch,
            next_gen: AtomicU64::new(1),
        }
        .with_timeout(timeout)
    }

    fn with_timeout(self, timeout: Duration) -> Link {
        self.set_timeout(timeout);
        self
    }

    pub(super) fn set_timeout(&self, timeout: Duration) {
        self.timeout_ns.store(
            timeout.as_nanos().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
    }

    /// Whether a connection is established.
    pub(super) fn is_connected(&self) -> bool {
        self.lock_slot().con.is_some()
    }

    /// The slot, even after a panic while it was held: each change to it assigns whole fields,
    /// so it never holds half of one, and refusing it would fail every later call for good.
    fn lock_slot(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn timeout(&self) -> Duration {
        Duration::from_nanos(self.timeout_ns.load(Ordering::Relaxed))
    }

    /// The live connection, or waits for one connect attempt (the caller bounds the wait).
    pub(super) async fn get(self: &Arc<Self>) -> Result<Lease, Failure> {
        let mut waited = false;
        loop {
            let mut changed = {
                let mut slot = self.lock_slot();
                if let Some((gen, con)) = &slot.con {
                    return Ok(Lease {
                        gen: *gen,
                        con: con.clone(),
                        fresh: waited,
                    });
                }
                if let Some(at) = slot.retry_at {
                    let now = Instant::now();
                    if now < at || waited {
                        return Err(Failure::Down(format!(
                            "redis {} unavailable ({}); next connect attempt in {} ms",
                            self.describe,
                            slot.last_error,
                            at.saturating_duration_since(now).as_millis()
                        )));
                    }
                }
                if !slot.connecting {
                    slot.connecting = true;
                    tokio::spawn(Arc::clone(self).connect_once());
                }
                self.epoch.subscribe()
            };
            // The sender lives in `self`, so this only returns once an attempt finished.
            let _ = changed.changed().await;
            waited = true;
        }
    }

    /// One connect attempt, bounded by the timeout, in its own task so that a caller's deadline
    /// never cancels it half way (the outcome always reaches the slot and the backoff).
    async fn connect_once(self: Arc<Self>) {
        // Each step (a sentinel's answer, the connect, the role check) is bounded by the
        // timeout inside `Target::connect`.
        let result = self.target.connect(self.timeout()).await;
        {
            let mut slot = self.lock_slot();
            slot.connecting = false;
            match result {
                Ok(connected) => {
                    let gen = self.next_gen.fetch_add(1, Ordering::Relaxed);
                    slot.con = Some((gen, connected.con));
                    if slot.server != connected.server && !slot.server.is_empty() {
                        tracing::warn!(
                            store = %self.describe,
                            from = %slot.server,
                            to = %connected.server,
                            "redis store: now writing to another server (a failover)"
                        );
                    }
                    slot.server = connected.server;
                    slot.retry_at = None;
                    slot.backoff = RECONNECT_BACKOFF_MIN;
                    if slot.failures > 0 {
                        tracing::info!(
                            store = %self.describe,
                            failed_attempts = slot.failures,
                            "redis store: connection restored"
                        );
                    } else {
                        tracing::debug!(store = %self.describe, "redis store: connected");
                    }
                    slot.failures = 0;
                }
                Err(why) => {
                    slot.retry_at = Some(Instant::now() + slot.backoff);
                    slot.backoff = (slot.backoff * 2).min(RECONNECT_BACKOFF_MAX);
                    slot.failures += 1;
                    if slot.failures == 1 || slot.failures % 60 == 0 {
                        tracing::warn!(
                            store = %self.describe,
                            error = %why,
                            failed_attempts = slot.failures,
                            "redis store: cannot connect; greylisting fails open until it is back"
                        );
                    }
                    slot.last_error = why;
                }
            }
        }
        self.epoch.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Drops connection `gen` if it is still the live one (a newer one stays).
    pub(super) fn invalidate(&self, gen: u64, why: &str) {
        if gen == 0 {
            return;
        }
        let mut slot = self.lock_slot();
        if matches!(&slot.con, Some((live, _)) if *live == gen) {
            slot.con = None;
            slot.last_error = why.to_string();
            tracing::debug!(store = %self.describe, %why, "redis store: dropping connection");
        }
    }
}

/// Whether the connection that produced `e` must be replaced.
pub(super) fn breaks_connection(e: &RedisError) -> bool {
    // READONLY: the server was a primary and is a replica now (a failover while it stayed
    // up): ask the sentinels again. MASTERDOWN: a replica that lost its primary.
    e.is_io_error()
        || e.is_unrecoverable_error()
        || matches!(e.code(), Some("READONLY" | "MASTERDOWN"))
        || e.to_string().contains("READONLY")
}

pub(super) fn map_error(e: &RedisError) -> StoreError {
    if e.code() == Some("WRONGTYPE") {
        StoreError::Corrupt(format!("redis: {e}"))
    } else if e.is_timeout() {
        StoreError::Timeout
    } else {
        StoreError::Unavailable(format!("redis: {e}"))
    }
}
