//! The embedded greylist store: one [redb](https://docs.rs/redb) file on the MX host, behind an
//! in-memory write-behind overlay with group commit.
//!
//! # How it works (measured, see `tests::bench_1m` and docs/greylisting.md)
//!
//! Sessions only touch memory. An update is applied to the *overlay* of uncommitted changes
//! (`overlay.rs`); a key the overlay does not know is first read from the file by a *reader
//! thread* (`reader.rs`). One *committer thread* owns every write to the file: every
//! `commit_interval` it writes the overlay in one sorted transaction (`commit.rs`), and it runs
//! purges between commits (`purge.rs`). Entries are stored in a fixed binary layout
//! (`format.rs`); opening the file, and what happens when it cannot be opened or read, is
//! `file.rs`. This file holds the public side: [`EmbeddedStore`], its [`Options`] and its
//! [`GreylistStore`] implementation.
//!
//! Why not one redb write transaction per update with `Durability::None` (the obvious design)?
//! redb allows one writer at a time and copies every touched B-tree page per transaction, and
//! pages are only freed by a durable commit. Measured at 1M entries (`tests::bench_per_update_txn`):
//! 6,800 updates/s from a single writer (p99 0.2 ms, all sessions serialised behind it), and the
//! file grew from 270 MB to 1,078 MB in 50,000 updates. Batching a second's updates into one
//! sorted transaction touches each leaf page once per commit: `tests::bench_1m` runs
//! `Greylister::check` at 58,000–130,000 decisions/s on 2 cores (numbers in docs/greylisting.md).
//! Reads go to dedicated reader threads rather than `spawn_blocking`: with `spawn_blocking` the
//! same benchmark saturated at ~20,000 decisions/s (thread hand-offs), with the readers ~100,000.
//!
//! Why redb rather than SQLite: a pure-Rust, crash-safe (copy-on-write, checksummed) B-tree
//! with MVCC readers and no C dependency; with the overlay the database only sees one large
//! sorted write per second, which any B-tree handles well.
//!
//! # Durability (design.md, "Store durability")
//! * visible to the next session at once (overlay);
//! * durable within `commit_interval` plus the duration of the commit in progress (typically
//!   well under 100 ms); `0` = committed before `update` returns;
//! * [`GreylistStore::flush`] (SIGTERM, admin commands) and dropping the store commit
//!   everything: nothing is lost;
//! * `kill -9` loses at most the updates of the last `commit_interval` (plus the commit in
//!   flight); redb's copy-on-write commits never leave the file unreadable.
//!
//! # Faults (docs/reliability.md, "Greylist store faults")
//! * a commit that fails (disk full, read-only or failing file system) is counted, logged and
//!   retried, and the file reopened: the store heals without a restart (`commit.rs`);
//! * memory stays bounded while commits fail or lag (`overlay.rs`);
//! * a panic inside redb becomes an error; at start, a file whose content is bad is moved
//!   aside, one that cannot be opened now is retried (`file.rs`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redb::{Database, ReadableTableMetadata};
use tokio::sync::{oneshot, watch};

use super::{Entry, GreylistStore, StoreError, UpdateFn, Write};

mod commit;
mod file;
mod format;
mod overlay;
mod purge;
mod reader;

use commit::{committer, CommitState, Control, Failures};
use file::{
    check_location, db_err, guarded, io_err, move_aside, open_database, open_error, OpenError,
};
use format::TABLE;
use overlay::{Shard, SHARDS};
use reader::{reader, ReadRequest, READERS};

pub use file::{MovedAside, Opened};
pub use format::{decode, encode, ENCODED_LEN};

/// redb's page cache. The default (1 GiB) would break the RSS budget; the file's pages also
/// sit in the kernel's page cache, so a miss here costs a `pread`, not a disk seek. Measured
/// at 1M entries: 32 MiB → ~115 MB peak RSS, 64 MiB → ~175 MB, same decision latency.
const CACHE_BYTES: usize = 32 << 20;

/// Default of [`Options::max_uncommitted`]: ~15 MB of overlay at ~150 bytes a write.
pub const DEFAULT_MAX_UNCOMMITTED: u64 = 100_000;

/// Settings of [`EmbeddedStore::open_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// How often pending updates are committed durably (`0`: before each update returns).
    pub commit_interval: Duration,
    /// redb's page cache in bytes (most of the store's memory).
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
    db: RwLock<Option<Arc<Database>>>,
    path: PathBuf,
    /// A reopen may create the file: there was none at start, and none was opened since.
    may_create: std::sync::atomic::AtomicBool,
    cache_bytes: usize,
    max_uncommitted: u64,
    shards: Box<[Mutex<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
    /// Writes so far (incremented under the shard lock that holds the write).
    seq: AtomicU64,
    commit_interval: Duration,
    control: Mutex<Control>,
    wake: Condvar,
    state: watch::Sender<CommitState>,
    failures: Mutex<Failures>,
}

/// The embedded (redb) greylist store. Cheap to share behind an `Arc`; dropping it commits
/// what is pending and stops its threads.
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    committer: Mutex<Option<JoinHandle<()>>>,
    /// Per reader thread: its queue (dropped to stop it) and handle.
    readers: Mutex<
        Vec<(
            tokio::sync::mpsc::UnboundedSender<ReadRequest>,
            JoinHandle<()>,
        )>,
    >,
    next_reader: std::sync::atomic::AtomicUsize,
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
    /// Opens (or creates) the database at `path` and starts the committer thread. The parent
    /// directory must exist. Errors name the path and the reason: missing directory, not
    /// writable, not a redb file or corrupt, in use by another process. A crash (`kill -9`,
    /// power loss) is not an error: redb recovers the last commit.
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

    /// [`EmbeddedStore::open`] with another page cache size than the default 32 MiB (bytes;
    /// most of the store's memory).
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
        let db = open_database(path, options.cache_bytes, true, true)?;
        Self::start(path, options, Some(db), false)
    }

    /// For the daemon's start. Greylist state is a cache of delays, not mail: a daemon that
    /// refused to start over it would make the MTA refuse all mail (`milter_default_action =
    /// tempfail`). So:
    /// * a file whose content is bad is renamed to `<path>.corrupt-<UTC time>` and a fresh
    ///   store is created in its place ([`Opened::MovedAside`]);
    /// * a file that cannot be opened *now* (disk full, quota, I/O error) leaves the store
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
        match open_database(path, options.cache_bytes, true, true) {
            Ok(db) => Ok((Self::start(path, options, Some(db), false)?, Opened::Fine)),
            Err(OpenError::Corrupt(reason)) => {
                let moved = move_aside(path, &reason)?;
                let db = open_database(path, options.cache_bytes, true, false).map_err(|e| {
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
        db: Option<Database>,
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
        let store = EmbeddedStore {
            shared,
            committer: Mutex::new(Some(committer)),
            readers: Mutex::new(Vec::new()),
            next_reader: Default::default(),
        };
        for i in 0..READERS {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let s = store.shared.clone();
            let h = std::thread::Builder::new()
                .name(format!("greylist-read{i}"))
                .spawn(move || reader(s, rx))
                .map_err(|e| io_err(path, "cannot start a reader thread", e))?;
            lock(&store.readers).push((tx, h));
        }
        Ok(store)
    }

    /// Compacts the database file at `path` (not open elsewhere: stop the daemon first), giving
    /// space freed by purges back to the file system; true when it shrank. redb's
    /// copy-on-write pages leave the file up to ~4x the size of the live entries after heavy
    /// churn; this rewrites it compactly. For an admin command (`mxsentry greylist compact`).
    pub fn compact(path: &Path) -> Result<bool, StoreError> {
        guarded(path, || {
            let mut db = Database::builder()
                .set_cache_size(CACHE_BYTES)
                .open(path)
                .map_err(|e| StoreError::from(open_error(path, e)))?;
            db.compact()
                .map_err(|e| io_err(path, "compaction failed", e))
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.shared.path
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
        // Closing their queues stops the readers; joining them releases the file lock
        // before the store is gone (a reopen right after must not find the file in use).
        let readers = std::mem::take(&mut *lock(&self.readers));
        for (tx, h) in readers {
            drop(tx);
            let _ = h.join();
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
            let tx = s.db()?.begin_read().map_err(|e| db_err(&s.path, e))?;
            let table = tx.open_table(TABLE).map_err(|e| db_err(&s.path, e))?;
            let mut out: std::collections::BTreeMap<String, Entry> = Default::default();
            for item in table
                .range::<&str>(prefix.as_str()..)
                .map_err(|e| db_err(&s.path, e))?
            {
                let (k, v) = item.map_err(|e| db_err(&s.path, e))?;
                let k = k.value();
                if !k.starts_with(&*prefix) || out.len() >= limit {
                    break;
                }
                if overlay.contains_key(k) {
                    continue;
                }
                match decode(v.value()) {
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

    /// Entries in the file (changes of the last `commit_interval` are not counted yet).
    async fn len(&self) -> Result<u64, StoreError> {
        let s = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let tx = s.db()?.begin_read().map_err(|e| db_err(&s.path, e))?;
            let table = tx.open_table(TABLE).map_err(|e| db_err(&s.path, e))?;
            table.len().map_err(|e| db_err(&s.path, e))
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
