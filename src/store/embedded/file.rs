//! The database file: opening it, telling what went wrong, and what the store does about it.
//!
//! * **Opening** ([`open_database`]) creates the table too, which proves the file writable at
//!   once. What goes wrong is classified ([`OpenError`]): bad content, a file in use, a problem
//!   of the machine that passes, a configuration problem.
//! * **At start** the daemon uses [`EmbeddedStore::open_for_daemon`]: a file whose content is
//!   bad is moved aside and a fresh store created; a file that cannot be opened now (disk full,
//!   I/O error) leaves the store closed and retried; configuration problems are errors. The
//!   admin commands use [`EmbeddedStore::open`]: [`StoreError::Corrupt`] when the content is
//!   bad, [`StoreError::Unavailable`] otherwise, and nothing is ever renamed.
//! * **After an I/O error** redb refuses every operation until the database is reopened: the
//!   committer closes it and reopens it by path ([`Shared::reopen`]); a file damaged while it
//!   was closed is moved aside as at start.
//! * **A panic inside redb** (a damaged page can trip one of its assertions) is caught on every
//!   thread that calls it and becomes an error, so no thread of the store dies ([`guarded`]).
//!
//! redb takes an exclusive lock on the file: a second process (e.g. `mxsentry greylist list`
//! while the daemon runs) gets a clear "in use" error from [`EmbeddedStore::open`].
//!
//! [`EmbeddedStore::open`]: super::EmbeddedStore::open
//! [`EmbeddedStore::open_for_daemon`]: super::EmbeddedStore::open_for_daemon

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::{Database, Durability};

use super::format::TABLE;
use super::Shared;
use crate::store::StoreError;

pub(super) fn io_err(path: &Path, what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{}: {what}: {e}", path.display()))
}

pub(super) fn db_err(path: &Path, e: impl Into<redb::Error>) -> StoreError {
    let e: redb::Error = e.into();
    match e {
        redb::Error::Corrupted(m) => StoreError::Corrupt(format!("{}: {m}", path.display())),
        e => io_err(path, "database error", e),
    }
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

/// Refuses locations that are a configuration mistake: a missing directory, a directory or
/// other non-regular file at the path. Never moved aside, never retried.
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
pub(super) enum OpenError {
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
pub(super) fn open_error(path: &Path, e: impl Into<redb::Error>) -> OpenError {
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
             the admin commands reach a running daemon through its control socket)"
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

/// Opens the database file and creates the table, which also proves the file writable now
/// rather than at the first commit. A panic inside redb is [`OpenError::Corrupt`]: redb only
/// panics on content it did not expect (measured: a file truncated anywhere past its first
/// 512 bytes trips an assertion instead of an error).
///
/// `create`: create the file if it is missing (at start, or on a reopen when there was no file
/// at start). Otherwise a missing file is [`OpenError::Transient`]: the file system is
/// probably not mounted (an admin repairing it), and creating a file in the bare mount point
/// would split the store in two. `compact`: compact a bloated file (at start only).
pub(super) fn open_database(
    path: &Path,
    cache_bytes: usize,
    create: bool,
    compact: bool,
) -> Result<Database, OpenError> {
    let fresh = create && !path.exists();
    if fresh {
        // The store lists who mails whom: readable by the daemon's user only, whatever the
        // umask (redb would create it 0666 & ~umask). An admin reads it through mxsentry.
        create_private(path).map_err(|e| open_error(path, redb::StorageError::Io(e)))?;
    }
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

/// Creates an empty file with mode 0600 (redb initialises an empty file as a new database).
fn create_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map(drop)
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

/// `YYYYMMDDTHHMMSSZ` (UTC) for `unix` seconds.
pub(super) fn utc_stamp(unix: u64) -> String {
    let t = crate::civil_time::Utc::from_unix(unix);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

/// A free name beside `path` for an unreadable file: `<path>.corrupt-<UTC time>` (then `-2`,
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

/// Renames the unreadable file at `path` to a `.corrupt-<UTC time>` name beside it.
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
    /// The file opened (or was created).
    Fine,
    /// The file was unreadable: it was moved aside and a fresh store created.
    MovedAside(MovedAside),
    /// The file cannot be opened now (disk full, I/O error): the store runs closed, every
    /// call fails (greylisting fails open), and it is reopened every commit interval.
    Closed { reason: String },
}

/// How long a reopen waits for the store's own readers to let go of the old database (its
/// file lock is released when the last read transaction ends).
const REOPEN_WAIT: Duration = Duration::from_secs(2);

/// The open database of a running store, closed after an I/O error and reopened by path.
impl Shared {
    /// The open database, or an error while it is closed after an I/O error.
    pub(super) fn db(&self) -> Result<Arc<Database>, StoreError> {
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

    /// Closes the database (redb refuses every operation after an I/O error until it is
    /// reopened). Closing releases the file: an admin can then unmount and repair its file
    /// system while the daemon runs.
    pub(super) fn close(&self) {
        let old = self.db.write().unwrap_or_else(|p| p.into_inner()).take();
        drop(old);
    }

    /// Opens the file again by path (committer thread only). The store's own readers may hold
    /// the old database for the rest of a batch: its file lock goes with the last of them.
    pub(super) fn reopen(&self) -> Result<(), StoreError> {
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
}
