//! The store's directory: opening it, telling what went wrong, and what the store does about it.
//!
//! * **Opening** ([`open_database`]) opens (or creates) the fjall database in the directory at
//!   `greylist.path` and its one keyspace, which proves the directory writable at once. What goes
//!   wrong is classified ([`OpenError`]): bad content, a store in use, a problem of the machine
//!   that passes, a configuration problem. A redb *file* at the path (mxsentry 0.1) is
//!   migrated first (`migrate.rs`).
//! * **At start** the daemon uses [`EmbeddedStore::open_for_daemon`]: a store whose content is
//!   bad is moved aside and a fresh store created; a store that cannot be opened now (disk full,
//!   I/O error) leaves the store closed and retried; configuration problems are errors. The
//!   admin commands use [`EmbeddedStore::open`]: [`StoreError::Corrupt`] when the content is
//!   bad, [`StoreError::Unavailable`] otherwise, and nothing is ever renamed.
//! * **After an I/O error** fjall refuses every write ("poisoned") until the database is
//!   reopened: the committer closes it and reopens it by path ([`Shared::reopen`]); a store
//!   damaged while it was closed is moved aside as at start.
//! * **A panic inside the database library** is caught on every thread that calls it and
//!   becomes an error, so no thread of the store dies ([`guarded`]).
//!
//! fjall takes an exclusive lock (`<path>/lock`): a second process (e.g. `mxsentry greylist
//! list` while the daemon runs) gets a clear "in use" error from [`EmbeddedStore::open`].
//!
//! [`EmbeddedStore::open`]: super::EmbeddedStore::open
//! [`EmbeddedStore::open_for_daemon`]: super::EmbeddedStore::open_for_daemon

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Shared;
use crate::store::StoreError;

/// The keyspace (fjall's table) holding key → encoded entry.
const KEYSPACE: &str = "greylist";

/// Memtable size: the newest writes in memory before they become a sorted table on disk;
/// memory against flush and compaction work. Measured with `cargo bench --bench greylist` at
/// 10M entries on a quiet machine, two runs each (docs/performance.md). Highest RSS while
/// deciding / in the bulk preload / in the bulk churn: 16 MiB 172–199 / 199–212 / 238 MB,
/// 32 MiB 192–262 / 268–269 / 316–322 MB. Tails within the runs' spread: max 12–30 ms vs
/// 10–19 ms, paced 20,000/s p99.9 6.4–7.4 ms vs 1.6–5.5 ms. Earlier versions used 32 MiB to
/// make flushes rarer, as each version install paused reads; the patched lsm-tree
/// (vendor/lsm-tree) no longer does. (fjall's default: 64 MiB.)
const MEMTABLE_BYTES: u64 = 16 << 20;

/// Most journal on disk before memtables are flushed (fjall's minimum; its default is 512
/// MiB). A `kill -9` replays at most this much at the next start.
const JOURNAL_BYTES: u64 = 64 << 20;

/// The open store: the database (journal, background flushes and compactions) and its one
/// keyspace. Reads and writes are thread-safe and reads never wait for a write.
pub(super) struct Db {
    pub(super) db: fjall::Database,
    pub(super) ks: fjall::Keyspace,
}

pub(super) fn io_err(path: &Path, what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{}: {what}: {e}", path.display()))
}

/// An error of the database library on an open store (a read, a commit, a scan).
pub(super) fn db_err(path: &Path, e: fjall::Error) -> StoreError {
    if is_corruption(&e) {
        StoreError::Corrupt(format!("{}: {e}", path.display()))
    } else {
        io_err(path, "database error", e)
    }
}

/// Errors that say the content on disk is bad (not the machine).
fn is_corruption(e: &fjall::Error) -> bool {
    use fjall::{Error as F, LsmError as L};
    match e {
        F::Io(e) => matches!(
            e.kind(),
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
        ),
        F::Storage(L::Io(e)) => matches!(
            e.kind(),
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
        ),
        F::Storage(_)
        | F::JournalRecovery(_)
        | F::InvalidVersion(_)
        | F::Decompress(_)
        | F::InvalidTrailer
        | F::InvalidTag(_)
        | F::Unrecoverable
        | F::KeyspaceDeleted => true,
        _ => false,
    }
}
thread_local! {
    /// Set while the database library runs under [`catch_panic`]: its panics are reported as errors instead.
    static CATCHING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// What the last caught panic said, and where.
    static CAUGHT: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Runs `f`, turning a panic into `Err(what it said, and where)`. A database library may panic
/// on damaged files instead of reporting them (redb did); the default panic message (with its backtrace note) would
/// read like a crash in the journal right before the error the caller logs, so a panic hook
/// keeps it quiet on this thread while `f` runs (other panics print as before).
pub(super) fn catch_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
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

/// Runs `f` (database work), turning a panic into an error so that no store thread dies of it.
pub(super) fn guarded<T>(
    path: &Path,
    f: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    catch_panic(f).unwrap_or_else(|what| {
        Err(StoreError::Unavailable(format!(
            "{}: the database library panicked: {what}",
            path.display()
        )))
    })
}

/// Refuses locations that are a configuration mistake: a missing parent directory, something
/// other than a directory or regular file at the path (a regular file is a store of an older
/// version, migrated by `migrate.rs`). Never moved aside, never retried.
pub(super) fn check_location(path: &Path) -> Result<(), StoreError> {
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
        // A FIFO, socket or device is a mistake in the configuration, not a damaged store.
        Ok(m) if !m.is_file() && !m.is_dir() => Err(StoreError::Unavailable(format!(
            "{}: not a directory (the embedded store is a directory)",
            path.display()
        ))),
        _ => Ok(()),
    }
}

/// The end of every message about a store whose content is bad.
pub(super) const CORRUPT_HINT: &str = "`mxsentry run` moves such a store aside and starts with \
     an empty store (greylisting starts afresh)";

/// Why the store could not be opened: the daemon acts on the kind (docs/greylisting.md,
/// "Faults").
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum OpenError {
    /// The *content* is bad (damaged or truncated tables or journal, a format this version
    /// cannot read, the library panicking on it): moving the store aside and starting afresh
    /// fixes it.
    Corrupt(String),
    /// Another process holds the store (or, for a moment during a reopen, our own reader).
    InUse(String),
    /// A problem of the machine that goes away by itself or by an admin's hand while the
    /// daemon runs (disk full, quota, I/O error, the store gone from an unmounted file
    /// system): the daemon runs with the store closed, failing open, and retries.
    Transient(String),
    /// A configuration or operations problem that neither retrying nor a fresh store fixes
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

/// Classifies an I/O error met while opening.
fn open_io_error(path: &Path, e: &std::io::Error) -> OpenError {
    use std::io::ErrorKind;
    let p = path.display();
    match e.kind() {
        ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem => OpenError::Refuse(format!(
            "{p}: not writable ({e}); the store directory and its parent must be writable by \
             the mxsentry user"
        )),
        // EINVAL: what reading an empty (truncated to 0) table file ends with.
        ErrorKind::InvalidData | ErrorKind::UnexpectedEof | ErrorKind::InvalidInput => {
            OpenError::Corrupt(format!(
                "{p}: not a greylist store or corrupt ({e}); {CORRUPT_HINT}"
            ))
        }
        // ENOSPC, EDQUOT, EIO; ENOENT only on a reopen (never create there).
        _ if e.kind() == ErrorKind::NotFound || matches!(e.raw_os_error(), Some(28 | 122 | 5)) => {
            OpenError::Transient(format!("{p}: cannot open: {e}"))
        }
        _ => OpenError::Refuse(format!("{p}: cannot create or open: {e}")),
    }
}

/// Classifies an error met while opening the store (see [`OpenError`]).
pub(super) fn open_error(path: &Path, e: fjall::Error) -> OpenError {
    let p = path.display();
    match e {
        fjall::Error::Locked => OpenError::InUse(format!(
            "{p}: in use by another process (is mxsentry already running with this store? \
             the admin commands reach a running daemon through its control socket)"
        )),
        fjall::Error::Io(e) | fjall::Error::Storage(fjall::LsmError::Io(e)) => {
            open_io_error(path, &e)
        }
        fjall::Error::Poisoned => {
            OpenError::Transient(format!("{p}: cannot open: an I/O error while opening"))
        }
        e if is_corruption(&e) => OpenError::Corrupt(format!(
            "{p}: not a greylist store or corrupt ({e}); {CORRUPT_HINT}"
        )),
        e => OpenError::Refuse(format!("{p}: cannot create or open: {e}")),
    }
}

/// Opens the store directory (creating it when `create` and it is missing) and its keyspace,
/// then writes and syncs a marker, which proves the store writable now rather than at the
/// first commit. A panic inside the library is [`OpenError::Corrupt`] (it only panics on
/// content it did not expect).
///
/// A missing directory without `create` is [`OpenError::Transient`]: the file system is
/// probably not mounted (an admin repairing it), and creating a store in the bare mount point
/// would split the store in two.
pub(super) fn open_database(
    path: &Path,
    cache_bytes: usize,
    create: bool,
) -> Result<Db, OpenError> {
    let fresh = !path.exists();
    if fresh {
        if !create {
            return Err(OpenError::Transient(format!(
                "{}: cannot open: the store directory is gone (file system not mounted?)",
                path.display()
            )));
        }
        // The store lists who mails whom: readable by the daemon's user only, whatever the
        // umask. An admin reads it through mxsentry.
        create_private_dir(path).map_err(|e| open_io_error(path, &e))?;
    } else if path.is_file() {
        return Err(OpenError::Corrupt(format!(
            "{}: a file where the store directory should be; {CORRUPT_HINT}",
            path.display()
        )));
    }
    // Before fjall opens any file: on a read-only or full file system the attempt ends here,
    // holding nothing open (an admin can unmount it between the retries).
    if let Err(e) = probe_space(path) {
        if fresh {
            let _ = std::fs::remove_dir_all(path);
        }
        return Err(open_io_error(path, &e));
    }
    let opened = catch_panic(|| {
        let db = fjall::Database::builder(path)
            .cache_size(cache_bytes as u64)
            .max_journaling_size(JOURNAL_BYTES)
            .open()
            .map_err(|e| open_error(path, e))?;
        let ks = db
            .keyspace(KEYSPACE, keyspace_options)
            .map_err(|e| open_error(path, e))?;
        // Proves the journal writable (a read-only or full file system fails here).
        ks.remove(MARKER).map_err(|e| open_error(path, e))?;
        db.persist(fjall::PersistMode::SyncAll)
            .map_err(|e| open_error(path, e))?;
        Ok(Db { db, ks })
    });
    let result = opened.unwrap_or_else(|what| {
        Err(OpenError::Corrupt(format!(
            "{}: not a greylist store or corrupt (the database library gave up: {what}); \
             {CORRUPT_HINT}",
            path.display(),
        )))
    });
    if fresh && result.is_err() {
        // A store this call created but could not finish (disk full): the next attempt must
        // create it again, not find a half-written one and take it for a damaged one.
        let _ = std::fs::remove_dir_all(path);
    }
    result
}

/// The keyspace's settings. Bloom filters and block indexes stay in memory for every level
/// (fjall's default pins them for the first levels only and reads the others through the block
/// cache): measured at 10M entries with the default, a point read that missed the cache loaded
/// a whole table's filter and index (over 1 MB each) and evicted the rest, 3,200 decisions/s,
/// p50 14 ms. Pinned, they take about 3 bytes per entry (~30 MB at 10M) and every read costs
/// at most one 4 KiB data block.
fn keyspace_options() -> fjall::KeyspaceCreateOptions {
    use fjall::config::{PartitioningPolicy, PinningPolicy};
    fjall::KeyspaceCreateOptions::default()
        .max_memtable_size(MEMTABLE_BYTES)
        .filter_block_pinning_policy(PinningPolicy::all(true))
        .index_block_pinning_policy(PinningPolicy::all(true))
        .filter_block_partitioning_policy(PartitioningPolicy::all(false))
        .index_block_partitioning_policy(PartitioningPolicy::all(false))
}

/// Writes, syncs and removes one 4 KiB page in the store directory, before the library opens
/// anything. Opening an existing store writes only a few bytes into the journal's last page,
/// which a full disk may still take; and a reopen that failed inside the library would hold
/// files open on a failed file system for the length of a recovery. ENOSPC is
/// [`OpenError::Transient`], a read-only file system [`OpenError::Refuse`] at start (and
/// retried on a reopen).
fn probe_space(dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let probe = dir.join("space-probe");
    let written = std::fs::File::create(&probe).and_then(|mut f| {
        f.write_all(&[0u8; 4096])?;
        f.sync_all()
    });
    let _ = std::fs::remove_file(&probe);
    written
}

/// A key no entry has (entries start with `t:` or `c:`): removing it proves the store writable.
const MARKER: &str = "~open";

/// Creates an empty directory with mode 0700.
fn create_private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().mode(0o700).create(path)
}

/// `YYYYMMDDTHHMMSSZ` (UTC) for `unix` seconds.
pub(super) fn utc_stamp(unix: u64) -> String {
    let t = crate::civil_time::Utc::from_unix(unix);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

/// A free name beside `path` for an unreadable store: `<path>.corrupt-<UTC time>` (then `-2`,
/// `-3`, ... should that exist already).
pub(super) fn aside_path(path: &Path, unix: u64) -> PathBuf {
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

/// Renames the unreadable store (a directory, or a file) at `path` to a `.corrupt-<UTC time>` name beside it.
pub(super) fn move_aside(path: &Path, reason: &str) -> Result<MovedAside, StoreError> {
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
///
/// [`EmbeddedStore::open_for_daemon`]: super::EmbeddedStore::open_for_daemon
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// The store opened (or was created, or migrated from an older version's file).
    Fine,
    /// The store was unreadable: it was moved aside and a fresh store created.
    MovedAside(MovedAside),
    /// The store cannot be opened now (disk full, I/O error): the store runs closed, every
    /// call fails (greylisting fails open), and it is reopened every commit interval.
    Closed { reason: String },
}

/// How long a reopen waits for the store's own readers and fjall's background workers to let
/// go of the old database (its lock is released when the last handle is dropped).
const REOPEN_WAIT: Duration = Duration::from_secs(2);

/// The open database of a running store, closed after an I/O error and reopened by path.
impl Shared {
    /// The open database, or an error while it is closed after an I/O error.
    pub(super) fn db(&self) -> Result<Arc<Db>, StoreError> {
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

    pub(super) fn is_closed(&self) -> bool {
        self.db.read().unwrap_or_else(|p| p.into_inner()).is_none()
    }

    /// Closes the database (fjall refuses every write after an I/O error until it is
    /// reopened). Closing releases the directory: an admin can then unmount and repair its file
    /// system while the daemon runs.
    pub(super) fn close(&self) {
        let old = self.db.write().unwrap_or_else(|p| p.into_inner()).take();
        drop(old);
    }

    /// Opens the store again by path (committer thread only). The store's own readers may hold
    /// the old database for the rest of a batch: its lock goes with the last of them.
    pub(super) fn reopen(&self) -> Result<(), StoreError> {
        let started = Instant::now();
        loop {
            let create = self.may_create.load(Ordering::Relaxed) && !self.path.exists();
            match open_database(&self.path, self.cache_bytes, create) {
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
                    let db = open_database(&self.path, self.cache_bytes, true)?;
                    *self.db.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(db));
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Bytes the store takes on disk: every file under `path` (a directory, or an older version's
/// single file), as `du --apparent-size` counts them. Unreadable parts count as 0.
pub fn disk_bytes(path: &Path) -> u64 {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::read_dir(path)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| disk_bytes(&e.path()))
                    .sum::<u64>()
            })
            .unwrap_or(0),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}
