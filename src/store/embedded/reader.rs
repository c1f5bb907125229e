//! The reader threads: file reads for sessions.
//!
//! **Reads** look in the overlay (changes not yet committed), then in the store (fjall's reads
//! never wait for a write, a flush or a compaction: tables are immutable, the memtable is a
//! lock-free skiplist, and the patched lsm-tree (vendor/lsm-tree) hands reads the newest tree
//! version without waiting for the fsyncs of the one being installed). The reader threads
//! take reads one at a time from **one shared queue**: a reader held up (a disk read on a cold
//! page cache, a page fault, losing its core to a compaction) delays only the read it serves,
//! and the other reader takes the rest; with a queue per reader, every read sent to the held-up
//! one waited for it (measured at 10M entries: p99.9 at full speed 9.2–9.3 ms with a queue per
//! reader, 6.5–7.6 ms shared, docs/performance.md).

use std::sync::Arc;

use tokio::sync::oneshot;

use super::file::{db_err, guarded};
use super::format::decode;
use super::{lock, EmbeddedStore, Shared};
use crate::store::{Entry, StoreError};

/// Reader threads (file reads for sessions; more than one so a cold page cache's disk reads
/// overlap).
pub(super) const READERS: usize = 2;

/// The reader threads and the queue they share (`None` once closed).
#[derive(Default)]
pub(super) struct Readers {
    pub(super) queue: Option<crossbeam_channel::Sender<ReadRequest>>,
    pub(super) threads: Vec<std::thread::JoinHandle<()>>,
}

/// A file read for a session.
pub(super) struct ReadRequest {
    key: Box<str>,
    /// An undecodable value counts as absent (else it is an error).
    lenient: bool,
    reply: oneshot::Sender<Result<Option<Entry>, StoreError>>,
}

/// A reader thread: serves file reads until the queue is closed.
pub(super) fn reader(shared: Arc<Shared>, rx: crossbeam_channel::Receiver<ReadRequest>) {
    for req in rx {
        // The database is taken per read and let go of before waiting: a reopen waits for
        // its lock.
        let result = shared.db().and_then(|db| {
            guarded(&shared.path, || {
                shared.read_key(&db.ks, &req.key, req.lenient)
            })
        });
        let _ = req.reply.send(result);
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
        let sent = match &lock(&self.readers).queue {
            Some(queue) => queue.send(req).map_err(|_| ()),
            None => Err(()),
        };
        if sent.is_err() {
            return Err(StoreError::Unavailable("greylist store is closed".into()));
        }
        rx.await
            .map_err(|_| StoreError::Unavailable("greylist reader stopped".into()))?
    }
}
