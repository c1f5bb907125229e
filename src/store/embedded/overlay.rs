//! The overlay: changes not yet committed, in memory, and how an update applies to it.
//!
//! * **Updates** are applied to the overlay under a per-shard mutex (64 shards), so the new entry
//!   is visible to the next session at once. No disk I/O happens under a lock or on an async
//!   worker: a key that is not in the overlay is read from the store by one of two reader threads
//!   *before* the lock is taken, and a per-shard commit generation detects the rare case where
//!   a commit finished in between (the read is then retried). Updates of one key are therefore
//!   atomic with respect to each other.
//! * **Memory stays bounded**: once `max_uncommitted` writes wait for the disk and the last
//!   commit failed, updates are refused at once (the greylist step fails open) instead of
//!   growing the overlay; while commits merely lag, updates wait for one (bounded by the
//!   greylist deadline).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::{lock, EmbeddedStore, Shared};
use crate::store::{Entry, StoreError};

/// Overlay shards (fewer lock collisions between sessions).
pub(super) const SHARDS: usize = 64;

/// Uncommitted changes: `None` is a deletion.
pub(super) type Overlay = HashMap<Box<str>, Option<Entry>>;

#[derive(Default)]
pub(super) struct Shard {
    /// Changes since the last swap.
    pub(super) pending: Overlay,
    /// The batch being committed (empty when none): still visible to readers.
    pub(super) committing: Arc<Overlay>,
    /// Incremented each time a committed batch leaves the overlay (see `read_then_apply`).
    pub(super) generation: u64,
}

impl Shard {
    /// `Some(entry or None-for-deleted)` when the overlay knows the key.
    pub(super) fn lookup(&self, key: &str) -> Option<Option<Entry>> {
        self.pending
            .get(key)
            .or_else(|| self.committing.get(key))
            .copied()
    }
}

impl Shared {
    pub(super) fn shard(&self, key: &str) -> &Mutex<Shard> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    /// Records a write in the shard's overlay; returns its sequence number.
    pub(super) fn write(&self, s: &mut Shard, key: &str, value: Option<Entry>) -> u64 {
        match s.pending.get_mut(key) {
            Some(v) => *v = value,
            None => {
                s.pending.insert(key.into(), value);
            }
        }
        self.seq.fetch_add(1, Ordering::SeqCst) + 1
    }

    pub(super) fn in_overlay(&self, key: &str) -> bool {
        lock(self.shard(key)).lookup(key).is_some()
    }
}

impl EmbeddedStore {
    /// Bounds the overlay: below `max_uncommitted` writes waiting for the disk, at once; at
    /// the bound, waits for a commit while commits succeed (the disk is only slow; the
    /// greylist deadline bounds the wait), and refuses at once while they fail (the disk is
    /// full or read-only: waiting would only make every session slow).
    pub(super) async fn admit_write(&self) -> Result<(), StoreError> {
        let shared = &*self.shared;
        let mut rx = shared.state.subscribe();
        loop {
            let (durable, error) = {
                let st = rx.borrow_and_update();
                (st.durable, st.error.clone())
            };
            let waiting = shared.seq.load(Ordering::SeqCst).saturating_sub(durable);
            if waiting < shared.max_uncommitted {
                // Half way to the bound: commit now rather than at the interval, so that a
                // burst of writes (measured: 100,000 a second at full speed) does not reach
                // the bound and wait for a commit. Asked once per commit.
                if waiting >= shared.max_uncommitted / 2
                    && !shared.early_commit.swap(true, Ordering::Relaxed)
                {
                    lock(&shared.control).flush = true;
                    shared.wake.notify_all();
                }
                return Ok(());
            }
            if let Some(error) = error {
                return Err(StoreError::Unavailable(format!(
                    "{}: {waiting} writes wait for a commit and commits fail ({error}); \
                     not recording more until one succeeds",
                    shared.path.display()
                )));
            }
            lock(&shared.control).flush = true;
            shared.wake.notify_all();
            rx.changed()
                .await
                .map_err(|_| StoreError::Unavailable("greylist committer stopped".into()))?;
        }
    }

    /// Reads `key` (overlay, else the store) and runs `apply` on the shard with the current value,
    /// atomically with respect to every other overlay change of the key.
    pub(super) async fn read_then_apply<R>(
        &self,
        key: &str,
        mut apply: impl FnMut(&Shared, &mut Shard, Option<Entry>) -> R,
    ) -> Result<R, StoreError> {
        let shared = &*self.shared;
        let shard = shared.shard(key);
        loop {
            let generation = {
                let mut s = lock(shard);
                if let Some(v) = s.lookup(key) {
                    return Ok(apply(shared, &mut s, v));
                }
                s.generation
            };
            let stored = self.read_file(key, true).await?;
            let mut s = lock(shard);
            if let Some(v) = s.lookup(key) {
                // Written meanwhile: the overlay is newer than the file.
                return Ok(apply(shared, &mut s, v));
            }
            if s.generation == generation {
                // No batch left the overlay since the read: the file still holds that value.
                return Ok(apply(shared, &mut s, stored));
            }
        }
    }
}
