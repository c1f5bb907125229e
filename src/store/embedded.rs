//! The embedded greylist store: one [fjall](https://docs.rs/fjall) database (an LSM tree) in
//! a directory on the MX host, behind an in-memory write-behind overlay with group commit.
//!
//! # How it works
//!
//! Sessions only touch memory. An update is applied to the *overlay* of uncommitted changes
//! (`overlay.rs`); a key the overlay does not know is first read from the store by a *reader
//! thread* (`reader.rs`). One *committer thread* owns every write: every `commit_interval` it
//! writes the overlay as one sorted, atomic batch and syncs the journal (`commit.rs`), and it
//! runs purges between commits (`purge.rs`). fjall's own worker threads flush memtables to
//! sorted tables and compact them in the background; reads never wait for either. Entries are
//! stored under their key text with a fixed binary value (`format.rs`); opening the store, and
//! what happens when it cannot be opened or read, is `file.rs`; a redb file of an older
//! version is migrated at the first open (`migrate.rs`). This file holds the public side:
//! [`EmbeddedStore`], its [`Options`] and its [`GreylistStore`] implementation.
//!
//! # Why fjall (measured; docs/greylisting.md, "Store", has the commands)
//!
//! Up to 0.1 the store was one redb file: a copy-on-write B-tree of 4 KiB pages. At 1M
//! triplets it took 540 bytes per entry after a bulk load and ~800 after churn (pages freed by
//! copy-on-write are reused but never given back, and B-tree leaves run half full after random
//! inserts), and the slowest decision of `cargo bench --bench greylist` took 668–948 ms. The
//! keys (`t:203.0.113.0/24|sender|rcpt`, ~60 bytes) are text that `greylist list PREFIX` lists
//! in order, so the store must stay ordered and keep them. Compared at 1M entries with the
//! same keys and 50,000-entry sorted batches (load, then overwrite 50% and delete 30%):
//!
//! | store | bytes/entry after load | after churn | point read p99 |
//! |---|---|---|---|
//! | redb 2.6, 32 MiB cache | 540 | 728 | 10 µs (p99.9 4 ms) |
//! | fjall 3.1, 8 MiB memtable, 16 MiB cache | 160–230 with the journal | 53 in tables (+ journal ≤ 64 MiB) | 17 µs (p99.9 4 ms) |
//!
//! Through the whole store (`cargo bench --bench greylist`, docs/performance.md): 85–131 bytes
//! per live entry at 10M after churn (redb: ~800 at 1M), 30,000–62,000 decisions/s at 10M, open
//! in 0.02 s after a clean stop and 0.2 s after `kill -9`. Bloom filters and block indexes are
//! pinned in memory (`file.rs`): with fjall's defaults a 10M store managed 3,200 decisions/s.
//!
//! fjall's tables are LZ4-compressed 4 KiB blocks with prefix truncation (neighbouring keys
//! share their client prefix), written once and merged by background compaction that drops
//! overwritten values and tombstones, so the disk holds about the live data. A custom
//! fixed-record hash file (the fallback considered; estimated at a 16-byte key hash, the 33-byte
//! value and slot overhead, ~64 bytes per entry) gets there only by hashing the keys, which
//! loses `list PREFIX`; it was not needed, and not built.
//!
//! # Durability (design.md, "Store durability")
//! * visible to the next session at once (overlay);
//! * durable within `commit_interval` plus the duration of the commit in progress (typically
//!   well under 100 ms); `0` = committed before `update` returns;
//! * [`GreylistStore::flush`] (SIGTERM, admin commands) and dropping the store commit
//!   everything: nothing is lost;
//! * `kill -9` loses at most the updates of the last `commit_interval` (plus the commit in
//!   flight); fjall's journal is replayed at open, a torn tail of it (a write cut by the
//!   crash) is dropped, so the store always opens after a crash.
//!
//! # Faults (docs/reliability.md, "Greylist store faults")
//! * a commit that fails (disk full, read-only or failing file system) is counted, logged and
//!   retried, and the file reopened: the store heals without a restart (`commit.rs`);
//! * memory stays bounded while commits fail or lag (`overlay.rs`);
//! * a panic inside the library becomes an error; at start, a store whose content is bad is
//!   moved aside, one that cannot be opened now is retried (`file.rs`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::{oneshot, watch};

use super::{Entry, GreylistStore, StoreError, UpdateFn, Write};

mod commit;
mod file;
mod format;
mod malloc;
mod migrate;
mod overlay;
mod purge;
mod reader;

use commit::{committer, CommitState, Control, Failures};
use file::{check_location, db_err, guarded, io_err, move_aside, open_database, Db, OpenError};
use overlay::{Shard, SHARDS};
use reader::{reader, Readers, READERS};

pub use file::{disk_bytes, MovedAside, Opened};
pub use format::{decode, encode, ENCODED_LEN};
pub use malloc::{limit_malloc_arenas, JEMALLOC_CONF};

/// fjall's block cache (uncompressed data and index blocks). The tables also sit in the
/// kernel's page cache, so a miss here costs a `pread` and an LZ4 decompression of one 4 KiB
/// block, not a disk seek.
const CACHE_BYTES: usize = 16 << 20;

/// Default of [`Options::max_uncommitted`]: ~15 MB of overlay at ~150 bytes a write.
pub const DEFAULT_MAX_UNCOMMITTED: u64 = 100_000;

/// Settings of [`EmbeddedStore::open_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// How often pending updates are committed durably (`0`: before each update returns).
    pub commit_interval: Duration,
    /// fjall's block cache in bytes.
    pub cache_bytes: usize,
    /// Most writes waiting for a commit (bounds the overlay's memory, ~150 bytes a write). At
    /// the bound, updates wait for a commit while commits succeed (the greylist deadline then
    /// fails the check open) and are refused at once while commits fail.
    pub max_uncommitted: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            commit_interval: Duration::from_secs(1),
            cache_bytes: CACHE_BYTES,
            max_uncommitted: DEFAULT_MAX_UNCOMMITTED,
        }
    }
}

/// What the store's handle shares with its threads: the database, the overlay, the commit
/// state.
struct Shared {
    /// The open database; `None` after an I/O error until the committer has reopened it.
    db: RwLock<Option<Arc<Db>>>,
    path: PathBuf,
    /// A reopen may create the file: there was none at start, and none was opened since.
    may_create: std::sync::atomic::AtomicBool,
    cache_bytes: usize,
    max_uncommitted: u64,
    shards: Box<[Mutex<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
    /// Writes so far (incremented under the shard lock that holds the write).
    seq: AtomicU64,
    /// A writer asked for a commit before the interval (half of `max_uncommitted` waiting).
    early_commit: std::sync::atomic::AtomicBool,
    commit_interval: Duration,
    control: Mutex<Control>,
    wake: Condvar,
    state: watch::Sender<CommitState>,
    failures: Mutex<Failures>,
}

/// The embedded (fjall) greylist store. Cheap to share behind an `Arc`; dropping it commits
/// what is pending and stops its threads.
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    committer: Mutex<Option<JoinHandle<()>>>,
    /// The reader threads and their shared queue.
    readers: Mutex<Readers>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.shared.path)
            .field("commit_interval", &self.shared.commit_interval)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves consistent data (no multi-step
    // invariants are broken half-way), so poisoning is ignored.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl EmbeddedStore {
    /// Opens (or creates) the store directory at `path` and starts the committer thread. The
    /// parent directory must exist. Errors name the path and the reason: missing directory, not
    /// writable, corrupt, in use by another process. A crash (`kill -9`, power loss) is not an
    /// error: the journal is replayed up to the last commit. A redb file of an older version
    /// at `path` is migrated first (`migrate.rs`).
    ///
    /// `commit_interval`: how often pending updates are committed durably (`0`: before each
    /// update returns).
    pub fn open(path: &Path, commit_interval: Duration) -> Result<EmbeddedStore, StoreError> {
        Self::open_with(
            path,
            Options {
                commit_interval,
                ..Options::default()
            },
        )
    }

    /// [`EmbeddedStore::open`] with another block cache size than the default 16 MiB (bytes).
    pub fn open_with_cache_size(
        path: &Path,
        commit_interval: Duration,
        cache_bytes: usize,
    ) -> Result<EmbeddedStore, StoreError> {
        Self::open_with(
            path,
            Options {
                commit_interval,
                cache_bytes,
                ..Options::default()
            },
        )
    }

    /// Opens (or creates) the database at `path` with `options`; see [`EmbeddedStore::open`].
    /// For the admin commands and tests: any failure is an error, and nothing is renamed.
    pub fn open_with(path: &Path, options: Options) -> Result<EmbeddedStore, StoreError> {
        check_location(path)?;
        migrate::upgrade(path, options.cache_bytes)?;
        let db = open_database(path, options.cache_bytes, true)?;
        Self::start(path, options, Some(db), false)
    }

    /// For the daemon's start. Greylist state is a cache of delays, not mail: a daemon that
    /// refused to start over it would make the MTA refuse all mail (`milter_default_action =
    /// tempfail`). So:
    /// * a store whose content is bad is renamed to `<path>.corrupt-<UTC time>` and a fresh
    ///   store is created in its place ([`Opened::MovedAside`]);
    /// * a store that cannot be opened *now* (disk full, quota, I/O error) leaves the store
    ///   closed and retried every commit interval ([`Opened::Closed`]; greylisting fails open);
    /// * configuration and operations problems are errors, as they are: in use by another
    ///   process, not writable (permission, read-only file system), missing directory, a
    ///   directory or other non-regular file. Renaming would not fix them, and starting would
    ///   hide them.
    pub fn open_for_daemon(
        path: &Path,
        options: Options,
    ) -> Result<(EmbeddedStore, Opened), StoreError> {
        check_location(path)?;
        let existed = path.exists();
        let opened = migrate::upgrade(path, options.cache_bytes)
            .and_then(|()| open_database(path, options.cache_bytes, true));
        match opened {
            Ok(db) => Ok((Self::start(path, options, Some(db), false)?, Opened::Fine)),
            Err(OpenError::Corrupt(reason)) => {
                let moved = move_aside(path, &reason)?;
                let db = open_database(path, options.cache_bytes, true).map_err(|e| {
                    StoreError::Unavailable(format!(
                        "{} (after moving the unreadable file aside to {})",
                        StoreError::from(e),
                        moved.moved_to.display()
                    ))
                })?;
                let store = Self::start(path, options, Some(db), false)?;
                Ok((store, Opened::MovedAside(moved)))
            }
            Err(OpenError::Transient(reason)) => {
                let store = Self::start(path, options, None, !existed)?;
                lock(&store.shared.failures).note(Instant::now());
                Ok((store, Opened::Closed { reason }))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Starts the threads on an open database (`None`: closed, to be reopened).
    fn start(
        path: &Path,
        options: Options,
        db: Option<Db>,
        may_create: bool,
    ) -> Result<EmbeddedStore, StoreError> {
        let (state, _) = watch::channel(CommitState {
            error: db.is_none().then(|| "not open yet".to_owned()),
            ..CommitState::default()
        });
        let shared = Arc::new(Shared {
            db: RwLock::new(db.map(Arc::new)),
            path: path.to_path_buf(),
            may_create: may_create.into(),
            cache_bytes: options.cache_bytes,
            max_uncommitted: options.max_uncommitted.max(1),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: Default::default(),
            seq: AtomicU64::new(0),
            early_commit: false.into(),
            commit_interval: options.commit_interval,
            control: Mutex::new(Control::default()),
            wake: Condvar::new(),
            state,
            failures: Mutex::new(Failures::default()),
        });
        let s = shared.clone();
        let committer = std::thread::Builder::new()
            .name("greylist-commit".into())
            .spawn(move || committer(s))
            .map_err(|e| io_err(path, "cannot start the committer thread", e))?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let store = EmbeddedStore {
            shared,
            committer: Mutex::new(Some(committer)),
            readers: Mutex::new(Readers {
                queue: Some(tx),
                threads: Vec::new(),
            }),
        };
        for i in 0..READERS {
            let (s, rx) = (store.shared.clone(), rx.clone());
            let h = std::thread::Builder::new()
                .name(format!("greylist-read{i}"))
                .spawn(move || reader(s, rx))
                .map_err(|e| io_err(path, "cannot start a reader thread", e))?;
            lock(&store.readers).threads.push(h);
        }
        Ok(store)
    }

    /// Compacts the store at `path` (not open elsewhere: stop the daemon first) into the
    /// fewest tables, dropping the tombstones of purged entries and giving their space back to
    /// the file system; true when it shrank. fjall compacts in the background anyway; this is
    /// for an admin who wants the space back at once.
    pub fn compact(path: &Path) -> Result<bool, StoreError> {
        check_location(path)?;
        migrate::upgrade(path, CACHE_BYTES)?;
        let before = disk_bytes(path);
        guarded(path, || {
            let db = open_database(path, CACHE_BYTES, false)?;
            db.ks
                .major_compact()
                .map_err(|e| io_err(path, "compaction failed", e))
        })?;
        Ok(disk_bytes(path) < before)
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Where the store's memory goes, for the bench: fjall's memtables (active and sealed,
    /// bytes), its block cache (bytes in use), sealed memtables waiting for a flush, the
    /// filters and block indexes pinned in memory, tables.
    #[doc(hidden)]
    pub fn memory_report(&self) -> String {
        let Ok(db) = self.shared.db() else {
            return "closed".into();
        };
        use fjall::AbstractTree as _;
        format!(
            "memtables {:.1} MB ({} sealed), block cache {:.1} MB, pinned filters {:.1} MB and \
             block indexes {:.1} MB, {} tables",
            db.db.write_buffer_size() as f64 / 1e6,
            db.ks.sealed_memtable_count(),
            db.db.cache_size() as f64 / 1e6,
            db.ks.tree.pinned_filter_size() as f64 / 1e6,
            db.ks.tree.pinned_block_index_size() as f64 / 1e6,
            db.ks.table_count()
        )
    }

    /// Stops the committer *without* committing what is pending, like `kill -9` would (tests).
    #[doc(hidden)]
    pub fn abandon(self) {
        lock(&self.shared.control).abandon = true;
        self.stop();
    }

    fn stop(&self) {
        {
            let mut c = lock(&self.shared.control);
            c.shutdown = true;
        }
        self.shared.wake.notify_all();
        if let Some(h) = lock(&self.committer).take() {
            let _ = h.join();
        }
        if !lock(&self.shared.control).abandon {
            self.flush_memtable();
        }
        // Closing their queue stops the readers; joining them releases the file lock
        // before the store is gone (a reopen right after must not find the file in use).
        let readers = std::mem::take(&mut *lock(&self.readers));
        drop(readers.queue);
        for h in readers.threads {
            let _ = h.join();
        }
    }
}

/// How long closing the store waits for its memtable to be written to a table. A full memtable
/// is written in well under a second; a write that fails (the store directory removed under
/// the daemon, a dying disk) leaves fjall waiting for it forever, and a daemon that never
/// exits on SIGTERM is worse than a journal to replay at the next start.
const CLOSE_FLUSH_WAIT: Duration = Duration::from_secs(10);

impl EmbeddedStore {
    /// Writes the memtable (what the journal holds) to a table, so that the next open has no
    /// journal to replay. Everything committed is durable already: a failure (disk full) costs
    /// nothing but a longer next start, so it is only logged; one that does not end within
    /// [`CLOSE_FLUSH_WAIT`] is left to its thread (the process is ending) and logged.
    fn flush_memtable(&self) {
        let Ok(db) = self.shared.db() else {
            return;
        };
        let path = self.shared.path.clone();
        let (done, flushed) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("greylist-close".into())
            .spawn(move || {
                let r = guarded(&path, || {
                    db.ks
                        .rotate_memtable_and_wait()
                        .map_err(|e| db_err(&path, e))
                });
                let _ = done.send(r);
            });
        if let Err(e) = spawned {
            tracing::debug!(error = %e, "greylist store: memtable not flushed at close");
            return;
        }
        match flushed.recv_timeout(CLOSE_FLUSH_WAIT) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "greylist store: memtable not flushed at close")
            }
            Err(_) => tracing::warn!(
                path = %self.shared.path.display(),
                "greylist store: its memtable could not be written to a table within \
                 {CLOSE_FLUSH_WAIT:?} at close (is the directory still there, the disk \
                 healthy?); closing without: what was committed is in the journal, which the \
                 next start replays"
            ),
        }
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        self.stop();
    }
}

#[async_trait]
impl GreylistStore for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn update(&self, key: &str, f: &UpdateFn<'_>) -> Result<Option<Entry>, StoreError> {
        self.admit_write().await?;
        let (old, seq) = self
            .read_then_apply(key, |shared, s, old| {
                let seq = match f(old) {
                    Write::Put(e) => Some(shared.write(s, key, Some(e))),
                    Write::Delete => Some(shared.write(s, key, None)),
                    Write::Keep => None,
                };
                (old, seq)
            })
            .await?;
        if let Some(seq) = seq {
            if self.shared.commit_interval.is_zero() {
                self.wait_durable(seq).await?;
            }
        }
        Ok(old)
    }

    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        if let Some(v) = lock(self.shared.shard(key)).lookup(key) {
            return Ok(v);
        }
        // No generation check needed: a read is ordered like one made a moment earlier.
        self.read_file(key, false).await
    }

    /// A blind write: the old value is not needed, so the file is not read (an import of a
    /// million entries through the daemon would otherwise read every key first).
    async fn put(&self, key: &str, entry: Entry) -> Result<(), StoreError> {
        self.admit_write().await?;
        let seq = {
            let mut s = lock(self.shared.shard(key));
            self.shared.write(&mut s, key, Some(entry))
        };
        if self.shared.commit_interval.is_zero() {
            self.wait_durable(seq).await?;
        }
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.update(key, &|_| Write::Delete).await?.is_some())
    }

    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<(String, Entry)>, StoreError> {
        let s = self.shared.clone();
        let prefix = prefix.to_owned();
        tokio::task::spawn_blocking(move || {
            // The overlay first (pending over committing), then the file.
            let mut overlay: std::collections::BTreeMap<String, Option<Entry>> = Default::default();
            for shard in s.shards.iter() {
                let sh = lock(shard);
                for (k, v) in sh.committing.iter().chain(sh.pending.iter()) {
                    if k.starts_with(&*prefix) {
                        overlay.insert(k.to_string(), *v);
                    }
                }
            }
            let db = s.db()?;
            let mut out: std::collections::BTreeMap<String, Entry> = Default::default();
            for item in db.ks.prefix(prefix.as_bytes()) {
                if out.len() >= limit {
                    break;
                }
                let (k, v) = item.into_inner().map_err(|e| db_err(&s.path, e))?;
                let Ok(k) = std::str::from_utf8(&k) else {
                    continue;
                };
                if overlay.contains_key(k) {
                    continue;
                }
                match decode(&v) {
                    Some(e) => {
                        out.insert(k.to_owned(), e);
                    }
                    None => tracing::warn!(key = k, "greylist entry undecodable: not listed"),
                }
            }
            out.extend(overlay.into_iter().filter_map(|(k, v)| Some((k, v?))));
            Ok(out.into_iter().take(limit).collect())
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("store list task: {e}")))?
    }

    async fn purge(&self, now: u64) -> Result<u64, StoreError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut c = lock(&self.shared.control);
            if c.shutdown {
                return Err(StoreError::Unavailable("greylist store is closing".into()));
            }
            c.purges.push((now, tx));
        }
        self.shared.wake.notify_all();
        rx.await
            .map_err(|_| StoreError::Unavailable("greylist committer stopped".into()))?
    }

    /// Entries in the store (changes of the last `commit_interval` are not counted yet). An
    /// LSM tree keeps no count: this walks the keys (measured: ~1 s per million entries on a
    /// blocking thread, at start and after each purge; decisions do not wait for it).
    async fn len(&self) -> Result<u64, StoreError> {
        let s = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let db = s.db()?;
            guarded(&s.path, || {
                db.ks
                    .len()
                    .map(|n| n as u64)
                    .map_err(|e| db_err(&s.path, e))
            })
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("store len task: {e}")))?
    }

    async fn flush(&self) -> Result<(), StoreError> {
        let target = self.shared.seq.load(Ordering::SeqCst);
        self.wait_durable(target).await
    }

    fn commit_status(&self) -> Option<super::CommitStatus> {
        let st = self.shared.state.borrow();
        Some(super::CommitStatus {
            last_commit: st.last_commit,
            error: st.error.clone(),
        })
    }
}

#[cfg(test)]
mod tests;
