//! The committer thread: group commits, and what happens when a commit fails.
//!
//! * **One committer thread** owns every write: every `commit_interval` (when something
//!   changed) it swaps the overlay out and writes it, sorted by key, as *one* atomic fjall
//!   batch, then syncs the journal (`fsync`), so after a crash the store opens with every
//!   commit that returned. Readers still see the swapped-out batch until it is committed.
//!   With `commit_interval = 0` every update waits for the commit that contains it (concurrent
//!   updates share one commit: group commit), so it is durable before the reply goes out.
//! * **A commit fails** (disk full, read-only or failing file system): the batch goes back into
//!   the overlay (newer changes win) and is retried every `commit_interval`; the failure is
//!   counted (`mxsentry_greylist_errors_total{backend="embedded"}`) and logged (the first one,
//!   then once a minute, then the recovery). fjall refuses every write after an I/O error
//!   ("poisoned") until the database is reopened, so the committer closes it and reopens it by path
//!   (reads fail open meanwhile): once space or writability is back, the next commit writes
//!   the overlay and the store works again without a restart. Closing also lets an admin
//!   unmount and repair the file system under the running daemon.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::file::{db_err, guarded, Db};
use super::format::encode;
use super::overlay::Overlay;
use super::{lock, EmbeddedStore, Shared};
use crate::store::{Entry, StoreError};

/// How often a commit failure that goes on is logged again (every attempt is counted).
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(60);

/// What the committer has achieved, for `flush` and `commit_interval = 0` waiters.
#[derive(Debug, Clone, Default)]
pub(super) struct CommitState {
    /// Every write with a sequence number ≤ this is on disk.
    pub(super) durable: u64,
    /// The highest sequence number a failed commit attempt covered.
    pub(super) failed: u64,
    /// The last commit error.
    pub(super) error: Option<String>,
    /// Unix time of the last successful commit (`mxsentry status`).
    pub(super) last_commit: Option<u64>,
}

#[derive(Default)]
pub(super) struct Control {
    pub(super) flush: bool,
    pub(super) shutdown: bool,
    /// Drop the overlay without committing (tests: simulates `kill -9`).
    pub(super) abandon: bool,
    pub(super) purges: Vec<(u64, oneshot::Sender<Result<u64, StoreError>>)>,
}

/// A run of failed commits (committer thread only), for logging it without flooding the log.
#[derive(Default)]
pub(super) struct Failures {
    /// Failed attempts since the last successful commit.
    attempts: u64,
    /// When the first of them failed.
    since: Option<Instant>,
    /// When one was last logged.
    logged: Option<Instant>,
}

impl Failures {
    /// Counts a failed attempt; true when it is to be logged (the first of a run, then one
    /// per [`FAILURE_LOG_EVERY`]).
    pub(super) fn note(&mut self, now: Instant) -> bool {
        self.attempts += 1;
        self.since.get_or_insert(now);
        if self
            .logged
            .is_some_and(|t| now.duration_since(t) < FAILURE_LOG_EVERY)
        {
            return false;
        }
        self.logged = Some(now);
        true
    }
}

/// The committer thread: group commits, flush requests, purges, shutdown.
pub(super) fn committer(shared: Arc<Shared>) {
    let interval = shared.commit_interval;
    let mut last_commit = Instant::now();
    loop {
        let (flush, shutdown, abandon, purges) = {
            let mut c = lock(&shared.control);
            loop {
                if c.shutdown || c.flush || !c.purges.is_empty() {
                    break;
                }
                if interval.is_zero() {
                    if !shared.is_closed() {
                        c = shared.wake.wait(c).unwrap_or_else(|p| p.into_inner());
                        continue;
                    }
                    // Closed after a failed commit: try to reopen once a second.
                    let (guard, waited) = shared
                        .wake
                        .wait_timeout(c, Duration::from_secs(1))
                        .unwrap_or_else(|p| p.into_inner());
                    c = guard;
                    if waited.timed_out() {
                        break;
                    }
                    continue;
                }
                let due = last_commit + interval;
                let now = Instant::now();
                if now >= due {
                    break;
                }
                c = shared
                    .wake
                    .wait_timeout(c, due - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            let flush = std::mem::take(&mut c.flush);
            shared.early_commit.store(false, Ordering::Relaxed);
            (flush, c.shutdown, c.abandon, std::mem::take(&mut c.purges))
        };
        if abandon {
            return;
        }
        if flush || shutdown || interval.is_zero() || last_commit.elapsed() >= interval {
            shared.commit();
            last_commit = Instant::now();
        }
        for (now, reply) in purges {
            let r = guarded(&shared.path, || shared.purge(now, &mut last_commit));
            let _ = reply.send(r);
        }
        if shutdown {
            // One more pass for writes that raced the shutdown request.
            shared.commit();
            return;
        }
    }
}

impl Shared {
    /// Writes the overlay to the file in one durable transaction. Called only by the
    /// committer thread.
    pub(super) fn commit(&self) {
        let upto = self.seq.load(Ordering::SeqCst);
        if upto <= self.state.borrow().durable {
            self.reopen_if_closed();
            return;
        }
        // Before the swap: the logged duration then covers every write the commit holds
        // (the kill -9 test checks durability against the logged commits).
        let started = Instant::now();
        let mut batches: Vec<(usize, Arc<Overlay>)> = Vec::new();
        for (i, shard) in self.shards.iter().enumerate() {
            let mut s = lock(shard);
            if !s.pending.is_empty() {
                let batch = Arc::new(std::mem::take(&mut s.pending));
                s.committing = batch.clone();
                batches.push((i, batch));
            }
        }
        let count: usize = batches.iter().map(|(_, b)| b.len()).sum();
        let result = if batches.is_empty() {
            Ok(())
        } else if self.is_closed() {
            self.reopen().and_then(|()| self.write_batches(&batches))
        } else {
            self.write_batches(&batches)
        };
        let empty: Arc<Overlay> = Arc::default();
        for (i, batch) in batches {
            let mut s = lock(&self.shards[i]);
            if result.is_err() {
                for (k, v) in batch.iter() {
                    s.pending.entry(k.clone()).or_insert(*v);
                }
            }
            s.committing = empty.clone();
            s.generation += 1;
        }
        match result {
            Ok(()) => {
                tracing::debug!(
                    entries = count,
                    ms = started.elapsed().as_secs_f64() * 1e3,
                    "greylist commit"
                );
                let mut f = lock(&self.failures);
                if f.attempts > 0 {
                    tracing::info!(
                        path = %self.path.display(),
                        failed_attempts = f.attempts,
                        secs = f.since.map_or(0, |t| t.elapsed().as_secs()),
                        entries = count,
                        "greylist commits succeed again"
                    );
                    *f = Failures::default();
                }
                drop(f);
                self.state.send_modify(|st| {
                    st.durable = st.durable.max(upto);
                    st.error = None;
                    st.last_commit = Some(crate::store::unix_now());
                });
            }
            Err(e) => {
                self.commit_failed(&e, count);
                self.state.send_modify(|st| {
                    st.failed = st.failed.max(upto);
                    st.error = Some(e.to_string());
                });
            }
        }
    }

    /// Counts and logs a failed commit (the first of a run, then once a minute), and closes
    /// the database so that the next attempt starts from a fresh open.
    fn commit_failed(&self, e: &StoreError, entries: usize) {
        crate::metrics::metrics().greylist_error("embedded");
        let mut f = lock(&self.failures);
        if f.note(Instant::now()) {
            tracing::error!(
                path = %self.path.display(),
                error = %e,
                entries,
                failed_attempts = f.attempts,
                "greylist commit failed; changes stay in memory and the commit is retried every \
                 commit interval"
            );
        }
        drop(f);
        self.close();
    }

    /// Reopens a database closed by a failed commit when there is nothing to commit (reads
    /// need it too). Committer thread only.
    fn reopen_if_closed(&self) {
        if self.is_closed() {
            // A success is logged with the next successful commit.
            if let Err(e) = self.reopen() {
                self.commit_failed(&e, 0);
            }
        }
    }

    fn write_batches(&self, batches: &[(usize, Arc<Overlay>)]) -> Result<(), StoreError> {
        let mut all: Vec<(&str, &Option<Entry>)> = batches
            .iter()
            .flat_map(|(_, b)| b.iter().map(|(k, v)| (&**k, v)))
            .collect();
        // Key order: the memtable's inserts then walk it sequentially (and the journal is
        // written in the order a later flush wants).
        all.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let db = self.db()?;
        guarded(&self.path, || self.write_sorted(&db, all))
    }

    fn write_sorted(&self, db: &Db, all: Vec<(&str, &Option<Entry>)>) -> Result<(), StoreError> {
        let mut batch = db.db.batch();
        for (k, v) in all {
            match v {
                Some(entry) => batch.insert(&db.ks, k, &encode(entry)[..]),
                None => batch.remove(&db.ks, k),
            }
        }
        batch.commit().map_err(|e| db_err(&self.path, e))?;
        db.db
            .persist(fjall::PersistMode::SyncAll)
            .map_err(|e| db_err(&self.path, e))
    }
}

impl EmbeddedStore {
    /// Waits until every write numbered ≤ `target` is durable, or a commit covering it failed.
    pub(super) async fn wait_durable(&self, target: u64) -> Result<(), StoreError> {
        let mut rx = self.shared.state.subscribe();
        let done = |s: &CommitState| s.durable >= target || s.failed >= target;
        if !done(&rx.borrow()) {
            {
                lock(&self.shared.control).flush = true;
            }
            self.shared.wake.notify_all();
        }
        let state = rx
            .wait_for(done)
            .await
            .map_err(|_| StoreError::Unavailable("greylist committer stopped".into()))?
            .clone();
        if state.durable >= target {
            Ok(())
        } else {
            Err(StoreError::Unavailable(format!(
                "{}: commit failed: {}",
                self.shared.path.display(),
                state.error.unwrap_or_default()
            )))
        }
    }
}
