//! The embedded greylist store: one [redb](https://docs.rs/redb) file on the MX host, behind an
//! in-memory write-behind overlay with group commit.
//!
//! # Design (measured, see `tests::bench_1m` and docs/greylisting.md)
//!
//! * **Reads** look in the overlay (changes not yet committed), then in the redb file (a short
//!   read transaction; redb is MVCC, so reads never wait for a commit in progress).
//! * **Updates** are applied to the overlay under a per-shard mutex (64 shards), so the new entry
//!   is visible to the next session at once. No disk I/O happens under a lock or on an async
//!   worker: a key that is not in the overlay is read from redb by one of two reader threads
//!   *before* the lock is taken, and a per-shard commit generation detects the rare case where
//!   a commit finished in between (the read is then retried). Updates of one key are therefore
//!   atomic with respect to each other. The reader threads take queued reads in batches (one
//!   read transaction each): under load they never sleep, so a read costs a queue push and at
//!   most a wake-up.
//! * **One committer thread** owns every redb write: every `commit_interval` (when something
//!   changed) it swaps the overlay out and writes it, sorted by key, in *one* write transaction
//!   with `Durability::Immediate` and quick-repair (so the file is always consistent and opens
//!   at once after a crash). Readers still see the swapped-out batch until it is committed.
//!   With `commit_interval = 0` every update waits for the commit that contains it (concurrent
//!   updates share one commit: group commit), so it is durable before the reply goes out.
//! * **Purge** runs on the committer thread too: it scans the file in key order and deletes
//!   expired entries 1,000 per write transaction, running the regular group commit between
//!   batches, so sessions (which only touch the overlay) never wait for it.
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
//! # Faults (docs/reliability-parts/store.md)
//! * **A commit fails** (disk full, read-only or failing file system): the batch goes back into
//!   the overlay (newer changes win) and is retried every `commit_interval`; the failure is
//!   counted (`mxsentry_greylist_errors_total{backend="embedded"}`) and logged (the first one,
//!   then once a minute, then the recovery). redb refuses every operation after an I/O error
//!   until the database is reopened, so the committer closes the file and reopens it by path
//!   (reads fail open meanwhile): once space or writability is back, the next commit writes
//!   the overlay and the store works again without a restart. Closing also lets an admin
//!   unmount and repair the file system under the running daemon.
//! * **Memory stays bounded**: once `max_uncommitted` writes wait for the disk and the last
//!   commit failed, updates are refused at once (the greylist step fails open) instead of
//!   growing the overlay; while commits merely lag, updates wait for one (bounded by the
//!   greylist deadline).
//! * **A panic inside redb** (a damaged page can trip one of its assertions) is caught on every
//!   thread that calls it and becomes an error, so no thread of the store dies.
//! * **At start** the daemon uses [`EmbeddedStore::open_for_daemon`]: a file whose content is
//!   bad is moved aside and a fresh store created; a file that cannot be opened now (disk full,
//!   I/O error) leaves the store closed and retried; configuration problems are errors. The
//!   admin commands use [`EmbeddedStore::open`]: [`StoreError::Corrupt`] when the content is
//!   bad, [`StoreError::Unavailable`] otherwise, and nothing is ever renamed.
//!
//! redb takes an exclusive lock on the file: a second process (e.g. `mxsentry greylist list`
//! while the daemon runs) gets a clear "in use" error from [`EmbeddedStore::open`].

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redb::{Database, Durability, ReadableTableMetadata, TableDefinition};
use tokio::sync::{oneshot, watch};

use super::{Entry, GreylistStore, StoreError, UpdateFn, Write};

/// The one table: key → [`encode`]d entry.
const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("greylist_v1");

/// Overlay shards (fewer lock collisions between sessions).
const SHARDS: usize = 64;

/// redb's page cache. The default (1 GiB) would break the RSS budget; the file's pages also
/// sit in the kernel's page cache, so a miss here costs a `pread`, not a disk seek. Measured
/// at 1M entries: 32 MiB → ~115 MB peak RSS, 64 MiB → ~175 MB, same decision latency.
const CACHE_BYTES: usize = 32 << 20;

/// Expired keys deleted per purge write transaction.
const PURGE_BATCH: usize = 1_000;

/// Entries examined per purge read transaction.
const PURGE_SCAN: usize = 20_000;

/// Default of [`Options::max_uncommitted`]: ~15 MB of overlay at ~150 bytes a write.
pub const DEFAULT_MAX_UNCOMMITTED: u64 = 100_000;

/// How long a reopen waits for the store's own readers to let go of the old database (its
/// file lock is released when the last read transaction ends).
const REOPEN_WAIT: Duration = Duration::from_secs(2);

/// How often a commit failure that goes on is logged again (every attempt is counted).
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(60);

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

/// Entry layout version (first byte of a stored value).
const FORMAT_V1: u8 = 1;

/// Length of an encoded entry: version byte + 8 + 8 + 4 + 4 + 8.
pub const ENCODED_LEN: usize = 33;

/// Encodes an entry: version byte 1, then `first_seen`, `last_seen` (u64), `passed`, `blocked`
/// (u32), `expires` (u64), all little-endian.
pub fn encode(e: &Entry) -> [u8; ENCODED_LEN] {
    let mut b = [0u8; ENCODED_LEN];
    b[0] = FORMAT_V1;
    b[1..9].copy_from_slice(&e.first_seen.to_le_bytes());
    b[9..17].copy_from_slice(&e.last_seen.to_le_bytes());
    b[17..21].copy_from_slice(&e.passed.to_le_bytes());
    b[21..25].copy_from_slice(&e.blocked.to_le_bytes());
    b[25..33].copy_from_slice(&e.expires.to_le_bytes());
    b
}

/// Decodes what [`encode`] wrote; `None` for another version or length.
pub fn decode(b: &[u8]) -> Option<Entry> {
    if b.len() != ENCODED_LEN || b[0] != FORMAT_V1 {
        return None;
    }
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
    Some(Entry {
        first_seen: u64_at(1),
        last_seen: u64_at(9),
        passed: u32_at(17),
        blocked: u32_at(21),
        expires: u64_at(25),
    })
}

/// Compacts the file at open when more than half of it is free pages (copy-on-write churn
/// and purges leave free space that redb reuses but never gives back): measured, a 769 MB
/// file with 125,000 live entries (226 MB of allocated pages) compacts to 56 MB in 0.5 s. A
/// failure only costs disk space, so it is logged, not fatal.
fn compact_if_bloated(db: &mut Database, path: &Path) {
    const MIN_FILE: u64 = 64 << 20;
    let file_len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if file_len < MIN_FILE {
        return;
    }
    let Ok(tx) = db.begin_write() else {
        return;
    };
    let allocated = tx
        .stats()
        .map(|s| s.allocated_pages() * s.page_size() as u64)
        .unwrap_or(u64::MAX);
    let _ = tx.abort();
    if allocated >= file_len / 2 {
        return;
    }
    let started = Instant::now();
    match db.compact() {
        Ok(_) => tracing::info!(
            path = %path.display(),
            before_mb = file_len >> 20,
            after_mb = std::fs::metadata(path).map(|m| m.len() >> 20).unwrap_or(0),
            ms = started.elapsed().as_millis() as u64,
            "greylist database compacted"
        ),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "greylist database compaction failed")
        }
    }
}

/// Uncommitted changes: `None` is a deletion.
type Overlay = HashMap<Box<str>, Option<Entry>>;

#[derive(Default)]
struct Shard {
    /// Changes since the last swap.
    pending: Overlay,
    /// The batch being committed (empty when none): still visible to readers.
    committing: Arc<Overlay>,
    /// Incremented each time a committed batch leaves the overlay (see `read_then_apply`).
    generation: u64,
}

impl Shard {
    /// `Some(entry or None-for-deleted)` when the overlay knows the key.
    fn lookup(&self, key: &str) -> Option<Option<Entry>> {
        self.pending
            .get(key)
            .or_else(|| self.committing.get(key))
            .copied()
    }
}

/// What the committer has achieved, for `flush` and `commit_interval = 0` waiters.
#[derive(Debug, Clone, Default)]
struct CommitState {
    /// Every write with a sequence number ≤ this is on disk.
    durable: u64,
    /// The highest sequence number a failed commit attempt covered.
    failed: u64,
    /// The last commit error.
    error: Option<String>,
}

#[derive(Default)]
struct Control {
    flush: bool,
    shutdown: bool,
    /// Drop the overlay without committing (tests: simulates `kill -9`).
    abandon: bool,
    purges: Vec<(u64, oneshot::Sender<Result<u64, StoreError>>)>,
}

/// A run of failed commits (committer thread only), for logging it without flooding the log.
#[derive(Default)]
struct Failures {
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
    fn note(&mut self, now: Instant) -> bool {
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

/// Reader threads (file reads for sessions; more than one so a cold page cache's disk reads
/// overlap).
const READERS: usize = 2;

/// Most reads served by one read transaction.
const READ_BATCH: usize = 256;

/// A file read for a session.
struct ReadRequest {
    key: Box<str>,
    /// An undecodable value counts as absent (else it is an error).
    lenient: bool,
    reply: oneshot::Sender<Result<Option<Entry>, StoreError>>,
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

fn io_err(path: &Path, what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{}: {what}: {e}", path.display()))
}

thread_local! {
    /// Set while redb runs under [`catch_panic`]: its panics are reported as errors instead.
    static CATCHING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// What the last caught panic said, and where.
    static CAUGHT: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Runs `f`, turning a panic into `Err(what it said, and where)`. redb panics on some damaged
/// files instead of reporting them; the default panic message (with its backtrace note) would
/// read like a crash in the journal right before the error the caller logs, so a panic hook
/// keeps it quiet on this thread while `f` runs (other panics print as before).
fn catch_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if CATCHING.with(|c| c.get()) {
                let what = info
                    .payload()
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("unknown panic");
                let at = info
                    .location()
                    .map(|l| format!(" at {}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                CAUGHT.with(|c| *c.borrow_mut() = format!("{what}{at}"));
            } else {
                previous(info);
            }
        }));
    });
    let was = CATCHING.with(|c| c.replace(true));
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(was));
    result.map_err(|_| CAUGHT.with(|c| std::mem::take(&mut *c.borrow_mut())))
}

/// Runs `f` (redb work), turning a panic into an error so that no store thread dies of it.
fn guarded<T>(path: &Path, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    catch_panic(f).unwrap_or_else(|what| {
        Err(StoreError::Unavailable(format!(
            "{}: the database library panicked: {what}",
            path.display()
        )))
    })
}

/// Refuses locations that are a configuration mistake: a missing directory, a directory or
/// other non-regular file at the path. Never moved aside, never retried.
fn check_location(path: &Path) -> Result<(), StoreError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(StoreError::Unavailable(format!(
            "{}: directory {} does not exist",
            path.display(),
            dir.display()
        )));
    }
    match path.metadata() {
        Ok(m) if m.is_dir() => Err(StoreError::Unavailable(format!(
            "{}: is a directory, not a database file",
            path.display()
        ))),
        // A FIFO, socket or device is a mistake in the configuration, not a damaged store.
        Ok(m) if !m.is_file() => Err(StoreError::Unavailable(format!(
            "{}: not a regular file",
            path.display()
        ))),
        _ => Ok(()),
    }
}

/// The end of every message about a file whose content is bad.
const CORRUPT_HINT: &str = "`mxsentry run` moves such a file aside and starts with an empty \
     store (greylisting starts afresh)";

/// Why the file could not be opened: the daemon acts on the kind (docs/greylisting.md,
/// "Faults").
#[derive(Debug, Clone, PartialEq, Eq)]
enum OpenError {
    /// The *content* is bad (not a redb file, damaged, truncated, a file format this version
    /// cannot read, a table of another type, redb panicking on it): moving the file aside and
    /// starting afresh fixes it.
    Corrupt(String),
    /// Another process holds the file (or, for a moment during a reopen, our own reader).
    InUse(String),
    /// A problem of the machine that goes away by itself or by an admin's hand while the
    /// daemon runs (disk full, quota, I/O error, the file gone from an unmounted file
    /// system): the daemon runs with the store closed, failing open, and retries.
    Transient(String),
    /// A configuration or operations problem that neither retrying nor a fresh file fixes
    /// (not writable, ...): the daemon refuses to start with the reason.
    Refuse(String),
}

impl From<OpenError> for StoreError {
    fn from(e: OpenError) -> StoreError {
        match e {
            OpenError::Corrupt(m) => StoreError::Corrupt(m),
            OpenError::InUse(m) | OpenError::Transient(m) | OpenError::Refuse(m) => {
                StoreError::Unavailable(m)
            }
        }
    }
}

/// Classifies an error met while opening the file (see [`OpenError`]).
fn open_error(path: &Path, e: impl Into<redb::Error>) -> OpenError {
    use std::io::ErrorKind;
    let p = path.display();
    let corrupt = |why: String| {
        OpenError::Corrupt(format!(
            "{p}: not a greylist database or corrupt ({why}); {CORRUPT_HINT}"
        ))
    };
    match e.into() {
        redb::Error::DatabaseAlreadyOpen => OpenError::InUse(format!(
            "{p}: in use by another process (is mxsentry already running with this file? \
             stop it first, or use the Redis store to administer a live greylist)"
        )),
        redb::Error::UpgradeRequired(v) => OpenError::Corrupt(format!(
            "{p}: written in redb file format {v}, which this version cannot open; {CORRUPT_HINT}"
        )),
        redb::Error::Io(e)
            if matches!(
                e.kind(),
                ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem
            ) =>
        {
            OpenError::Refuse(format!(
                "{p}: not writable ({e}); the file and its directory must be writable by \
                 the mxsentry user"
            ))
        }
        // redb's own checks of the header report these: a short or foreign file.
        redb::Error::Io(e)
            if matches!(e.kind(), ErrorKind::InvalidData | ErrorKind::UnexpectedEof) =>
        {
            corrupt(e.to_string())
        }
        redb::Error::Corrupted(m) => corrupt(m),
        e @ (redb::Error::TableTypeMismatch { .. }
        | redb::Error::TableIsMultimap(_)
        | redb::Error::TypeDefinitionChanged { .. }) => {
            corrupt(format!("not written by mxsentry: {e}"))
        }
        // ENOSPC, EDQUOT, EIO; ENOENT only on a reopen (never create there).
        redb::Error::Io(e)
            if e.kind() == ErrorKind::NotFound
                || matches!(e.raw_os_error(), Some(28 | 122 | 5)) =>
        {
            OpenError::Transient(format!("{p}: cannot open: {e}"))
        }
        redb::Error::PreviousIo => {
            OpenError::Transient(format!("{p}: cannot open: an I/O error during repair"))
        }
        e => OpenError::Refuse(format!("{p}: cannot create or open: {e}")),
    }
}

fn db_err(path: &Path, e: impl Into<redb::Error>) -> StoreError {
    let e: redb::Error = e.into();
    match e {
        redb::Error::Corrupted(m) => StoreError::Corrupt(format!("{}: {m}", path.display())),
        e => io_err(path, "database error", e),
    }
}

/// Opens the database file and creates the table, which also proves the file writable now
/// rather than at the first commit. A panic inside redb is [`OpenError::Corrupt`]: redb only
/// panics on content it did not expect (measured: a file truncated anywhere past its first
/// 512 bytes trips an assertion instead of an error).
///
/// `create`: create the file if it is missing (at start, or on a reopen when there was no file
/// at start). Otherwise a missing file is [`OpenError::Transient`]: the file system is
/// probably not mounted (an admin repairing it), and creating a file in the bare mount point
/// would split the store in two. `compact`: compact a bloated file (at start only).
fn open_database(
    path: &Path,
    cache_bytes: usize,
    create: bool,
    compact: bool,
) -> Result<Database, OpenError> {
    let fresh = create && !path.exists();
    let opened = catch_panic(|| {
        let mut b = Database::builder();
        b.set_cache_size(cache_bytes);
        b.set_repair_callback(|_| {
            tracing::warn!("greylist database was not closed cleanly: repairing");
        });
        let mut db =
            if create { b.create(path) } else { b.open(path) }.map_err(|e| open_error(path, e))?;
        if compact {
            compact_if_bloated(&mut db, path);
        }
        let mut tx = db.begin_write().map_err(|e| open_error(path, e))?;
        tx.set_durability(Durability::Immediate);
        tx.set_quick_repair(true);
        tx.open_table(TABLE).map_err(|e| open_error(path, e))?;
        tx.commit().map_err(|e| open_error(path, e))?;
        Ok(db)
    });
    let result = opened.unwrap_or_else(|what| {
        Err(OpenError::Corrupt(format!(
            "{}: not a greylist database or corrupt (the database library gave up: {what}); \
             {CORRUPT_HINT}",
            path.display(),
        )))
    });
    if fresh && result.is_err() {
        // A file this call created but could not finish (disk full): the next attempt must
        // create it again, not find a half-written file and take it for a damaged one.
        let _ = std::fs::remove_file(path);
    }
    result
}

/// `YYYYMMDDTHHMMSSZ` (UTC) for `unix` seconds.
fn utc_stamp(unix: u64) -> String {
    let (days, secs) = (unix / 86_400, unix % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        secs / 3_600,
        secs % 3_600 / 60,
        secs % 60
    )
}

/// A free name beside `path` for an unreadable file: `<path>.corrupt-<UTC time>` (then `-2`,
/// `-3`, ... should that exist already).
fn aside_path(path: &Path, unix: u64) -> PathBuf {
    let base = format!("{}.corrupt-{}", path.display(), utc_stamp(unix));
    let mut candidate = PathBuf::from(&base);
    let mut n = 2;
    while candidate.symlink_metadata().is_ok() {
        candidate = PathBuf::from(format!("{base}-{n}"));
        n += 1;
    }
    candidate
}

/// An unreadable file moved aside (at start, or when a reopen finds it damaged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedAside {
    /// The configured path (now a fresh, empty store).
    pub path: PathBuf,
    /// Where the unreadable file is now (its bytes untouched).
    pub moved_to: PathBuf,
    /// Why it could not be opened.
    pub reason: String,
}

/// Renames the unreadable file at `path` to a `.corrupt-<UTC time>` name beside it.
fn move_aside(path: &Path, reason: &str) -> Result<MovedAside, StoreError> {
    // The hint is for the admin commands; the daemon's log says what it did instead.
    let reason = reason
        .strip_suffix(CORRUPT_HINT)
        .map_or(reason, |r| r.trim_end_matches("; "))
        .to_owned();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let moved_to = aside_path(path, now);
    std::fs::rename(path, &moved_to).map_err(|e| {
        StoreError::Unavailable(format!(
            "{reason}; and it cannot be moved aside to {}: {e}",
            moved_to.display()
        ))
    })?;
    // The rename must outlive a crash, or the next start would meet the bad file again
    // (harmless, but confusing): sync the directory. A failure here costs nothing else.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(MovedAside {
        path: path.to_path_buf(),
        moved_to,
        reason,
    })
}

/// How [`EmbeddedStore::open_for_daemon`] got its store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// The file opened (or was created).
    Fine,
    /// The file was unreadable: it was moved aside and a fresh store created.
    MovedAside(MovedAside),
    /// The file cannot be opened now (disk full, I/O error): the store runs closed, every
    /// call fails (greylisting fails open), and it is reopened every commit interval.
    Closed { reason: String },
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

    /// Reads `key` from the file on a reader thread (`lenient`: an undecodable value counts
    /// as absent).
    async fn read_file(&self, key: &str, lenient: bool) -> Result<Option<Entry>, StoreError> {
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

    /// Waits until every write numbered ≤ `target` is durable, or a commit covering it failed.
    async fn wait_durable(&self, target: u64) -> Result<(), StoreError> {
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

    /// Bounds the overlay: below `max_uncommitted` writes waiting for the disk, at once; at
    /// the bound, waits for a commit while commits succeed (the disk is only slow; the
    /// greylist deadline bounds the wait), and refuses at once while they fail (the disk is
    /// full or read-only: waiting would only make every session slow).
    async fn admit_write(&self) -> Result<(), StoreError> {
        let shared = &*self.shared;
        let mut rx = shared.state.subscribe();
        loop {
            let (durable, error) = {
                let st = rx.borrow_and_update();
                (st.durable, st.error.clone())
            };
            let waiting = shared.seq.load(Ordering::SeqCst).saturating_sub(durable);
            if waiting < shared.max_uncommitted {
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

    /// Reads `key` (overlay, else redb) and runs `apply` on the shard with the current value,
    /// atomically with respect to every other overlay change of the key.
    async fn read_then_apply<R>(
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

impl Shared {
    fn shard(&self, key: &str) -> &Mutex<Shard> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    /// The open database, or an error while it is closed after an I/O error.
    fn db(&self) -> Result<Arc<Database>, StoreError> {
        self.db
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| {
                StoreError::Unavailable(format!(
                    "{}: closed after a failed commit, reopening every commit interval",
                    self.path.display()
                ))
            })
    }

    fn is_closed(&self) -> bool {
        self.db.read().unwrap_or_else(|p| p.into_inner()).is_none()
    }

    /// Closes the database (redb refuses every operation after an I/O error until it is
    /// reopened). Closing releases the file: an admin can then unmount and repair its file
    /// system while the daemon runs.
    fn close(&self) {
        let old = self.db.write().unwrap_or_else(|p| p.into_inner()).take();
        drop(old);
    }

    /// Opens the file again by path (committer thread only). The store's own readers may hold
    /// the old database for the rest of a batch: its file lock goes with the last of them.
    fn reopen(&self) -> Result<(), StoreError> {
        let started = Instant::now();
        loop {
            let create = self.may_create.load(Ordering::Relaxed) && !self.path.exists();
            match open_database(&self.path, self.cache_bytes, create, false) {
                Ok(db) => {
                    self.may_create.store(false, Ordering::Relaxed);
                    *self.db.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(db));
                    tracing::debug!(path = %self.path.display(), "greylist database reopened");
                    return Ok(());
                }
                Err(OpenError::InUse(_)) if started.elapsed() < REOPEN_WAIT => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(OpenError::Corrupt(reason)) => {
                    // Damaged while closed (a crash of the disk, an fsck that truncated it):
                    // what the daemon does at start, for the same reason.
                    let moved = move_aside(&self.path, &reason)?;
                    crate::metrics::metrics().greylist_store_recovered();
                    tracing::error!(
                        path = %moved.path.display(),
                        moved_to = %moved.moved_to.display(),
                        reason = %moved.reason,
                        "greylist store unreadable: moved aside, starting with an empty store"
                    );
                    let db = open_database(&self.path, self.cache_bytes, true, false)?;
                    *self.db.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(db));
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Reads `key` from the file. `lenient`: an undecodable value counts as absent (it is
    /// then overwritten) instead of an error.
    fn read_table(
        &self,
        table: &redb::ReadOnlyTable<&'static str, &'static [u8]>,
        key: &str,
        lenient: bool,
    ) -> Result<Option<Entry>, StoreError> {
        let Some(v) = table.get(key).map_err(|e| db_err(&self.path, e))? else {
            return Ok(None);
        };
        match decode(v.value()) {
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

    /// Records a write in the shard's overlay; returns its sequence number.
    fn write(&self, s: &mut Shard, key: &str, value: Option<Entry>) -> u64 {
        match s.pending.get_mut(key) {
            Some(v) => *v = value,
            None => {
                s.pending.insert(key.into(), value);
            }
        }
        self.seq.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn in_overlay(&self, key: &str) -> bool {
        lock(self.shard(key)).lookup(key).is_some()
    }

    /// Writes the overlay to the file in one durable transaction. Called only by the
    /// committer thread.
    fn commit(&self) {
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
        // Key order: each leaf page is copied once and the tree is walked sequentially.
        all.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let db = self.db()?;
        guarded(&self.path, || self.write_sorted(&db, all))
    }

    fn write_sorted(
        &self,
        db: &Database,
        all: Vec<(&str, &Option<Entry>)>,
    ) -> Result<(), StoreError> {
        let e = |e| db_err(&self.path, e);
        let mut tx = db.begin_write().map_err(e)?;
        tx.set_durability(Durability::Immediate);
        tx.set_quick_repair(true);
        {
            let mut table = tx.open_table(TABLE).map_err(|x| db_err(&self.path, x))?;
            for (k, v) in all {
                match v {
                    Some(entry) => {
                        table
                            .insert(k, &encode(entry)[..])
                            .map_err(|x| db_err(&self.path, x))?;
                    }
                    None => {
                        table.remove(k).map_err(|x| db_err(&self.path, x))?;
                    }
                }
            }
        }
        tx.commit().map_err(|x| db_err(&self.path, x))
    }

    /// Deletes entries expired at `now` in batches, running due group commits in between.
    fn purge(&self, now: u64, last_commit: &mut Instant) -> Result<u64, StoreError> {
        let mut total = 0u64;
        let mut cursor: Option<String> = None;
        loop {
            let (expired, next) = self.scan_expired(now, cursor.as_deref())?;
            let doomed: Vec<String> = expired
                .into_iter()
                .filter(|k| !self.in_overlay(k))
                .collect();
            let last_batch = next.is_none();
            if !doomed.is_empty() || last_batch {
                let db = self.db()?;
                let mut tx = db.begin_write().map_err(|e| db_err(&self.path, e))?;
                if last_batch {
                    // Makes this and the earlier non-durable purge batches durable.
                    tx.set_durability(Durability::Immediate);
                    tx.set_quick_repair(true);
                } else {
                    tx.set_durability(Durability::None);
                }
                {
                    let mut table = tx.open_table(TABLE).map_err(|e| db_err(&self.path, e))?;
                    for k in &doomed {
                        if table
                            .remove(k.as_str())
                            .map_err(|e| db_err(&self.path, e))?
                            .is_some()
                        {
                            total += 1;
                        }
                    }
                }
                tx.commit().map_err(|e| db_err(&self.path, e))?;
            }
            if !self.commit_interval.is_zero() && last_commit.elapsed() >= self.commit_interval
                || self.commit_interval.is_zero()
            {
                self.commit();
                *last_commit = Instant::now();
            }
            match next {
                Some(n) => cursor = Some(n),
                None => return Ok(total),
            }
        }
    }

    /// Up to [`PURGE_BATCH`] expired (or undecodable) keys after `cursor`, examining at most
    /// [`PURGE_SCAN`] entries; and where to go on (`None`: end of table).
    fn scan_expired(
        &self,
        now: u64,
        cursor: Option<&str>,
    ) -> Result<(Vec<String>, Option<String>), StoreError> {
        use std::ops::Bound;
        let e = |e| db_err(&self.path, e);
        let tx = self.db()?.begin_read().map_err(e)?;
        let table = tx.open_table(TABLE).map_err(|x| db_err(&self.path, x))?;
        let lower = match cursor {
            Some(c) => Bound::Excluded(c),
            None => Bound::Unbounded,
        };
        let range = table
            .range::<&str>((lower, Bound::Unbounded))
            .map_err(|x| db_err(&self.path, x))?;
        let mut expired = Vec::new();
        let mut last = None;
        for (n, item) in range.enumerate() {
            let (k, v) = item.map_err(|x| db_err(&self.path, x))?;
            let key = k.value();
            if decode(v.value()).is_none_or(|e| e.is_expired(now)) {
                expired.push(key.to_owned());
            }
            if expired.len() >= PURGE_BATCH || n + 1 >= PURGE_SCAN {
                last = Some(key.to_owned());
                break;
            }
        }
        Ok((expired, last))
    }
}

/// A reader thread: serves file reads in batches, one read transaction per batch.
fn reader(shared: Arc<Shared>, mut rx: tokio::sync::mpsc::UnboundedReceiver<ReadRequest>) {
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
        let table = shared.db().and_then(|db| {
            guarded(path, || {
                let tx = db.begin_read().map_err(|e| db_err(path, e))?;
                tx.open_table(TABLE).map_err(|e| db_err(path, e))
            })
        });
        for req in batch.drain(..) {
            let result = match &table {
                Ok(t) => guarded(path, || shared.read_table(t, &req.key, req.lenient)),
                Err(e) => Err(e.clone()),
            };
            let _ = req.reply.send(result);
        }
        // Let go of the database before waiting: a reopen waits for its file lock.
        drop(table);
    }
}

/// The committer thread: group commits, flush requests, purges, shutdown.
fn committer(shared: Arc<Shared>) {
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

    async fn put(&self, key: &str, entry: Entry) -> Result<(), StoreError> {
        self.update(key, &|_| Write::Put(entry)).await.map(|_| ())
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
}

#[cfg(test)]
mod tests;
