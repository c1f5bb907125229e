//! The reader threads: file reads for sessions.
//!
//! **Reads** look in the overlay (changes not yet committed), then in the store (fjall's reads
//! never wait for a write, a flush or a compaction: tables are immutable, the memtable is a
//! lock-free skiplist, and the patched lsm-tree (vendor/lsm-tree) hands reads the newest tree
//! version without waiting for the fsyncs of the one being installed). The reader threads take queued reads in batches: under load they never
//! sleep, so a read costs a queue push and at most a wake-up.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::file::{db_err, guarded};
use super::format::decode;
use super::{lock, EmbeddedStore, Shared};
use crate::store::{Entry, StoreError};

/// Reader threads (file reads for sessions; more than one so a cold page cache's disk reads
/// overlap).
pub(super) const READERS: usize = 2;

/// Most reads served by one read transaction.
const READ_BATCH: usize = 256;

/// A file read for a session.
pub(super) struct ReadRequest {
    key: Box<str>,
    /// An undecodable value counts as absent (else it is an error).
    lenient: bool,
    reply: oneshot::Sender<Result<Option<Entry>, StoreError>>,
}

/// A reader thread: serves file reads in batches.
pub(super) fn reader(
    shared: Arc<Shared>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<ReadRequest>,
) {
    let mut batch = Vec::with_capacity(READ_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < READ_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let path = &shared.path;
        let db = shared.db();
        for req in batch.drain(..) {
            let result = match &db {
                Ok(db) => guarded(path, || shared.read_key(&db.ks, &req.key, req.lenient)),
                Err(e) => Err(e.clone()),
            };
            let _ = req.reply.send(result);
        }
        // Let go of the database before waiting: a reopen waits for its lock.
        drop(db);
    }
}

impl Shared {
    /// Reads `key` from the file. `lenient`: an undecodable value counts as absent (it is
    /// then overwritten) instead of an error.
    fn read_key(
        &self,
        ks: &fjall::Keyspace,
        key: &str,
        lenient: bool,
    ) -> Result<Option<Entry>, StoreError> {
        let Some(v) = ks.get(key).map_err(|e| db_err(&self.path, e))? else {
            return Ok(None);
        };
        match decode(&v) {
            Some(e) => Ok(Some(e)),
            None if lenient => {
                tracing::warn!(key, "greylist entry undecodable: treated as absent");
                Ok(None)
            }
            None => Err(StoreError::Corrupt(format!(
                "{}: entry {key:?} is undecodable",
                self.path.display()
            ))),
        }
    }
}

impl EmbeddedStore {
    /// Reads `key` from the file on a reader thread (`lenient`: an undecodable value counts
    /// as absent).
    pub(super) async fn read_file(
        &self,
        key: &str,
        lenient: bool,
    ) -> Result<Option<Entry>, StoreError> {
        let (reply, rx) = oneshot::channel();
        let req = ReadRequest {
            key: key.into(),
            lenient,
            reply,
        };
        let sent = {
            let readers = lock(&self.readers);
            if readers.is_empty() {
                Err(())
            } else {
                let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % readers.len();
                readers[i].0.send(req).map_err(|_| ())
            }
        };
        if sent.is_err() {
            return Err(StoreError::Unavailable("greylist store is closed".into()));
        }
        rx.await
            .map_err(|_| StoreError::Unavailable("greylist reader stopped".into()))?
    }
}
