//! Upgrading a store written by an older mxsentry: one redb *file* at `greylist.path`.
//!
//! At the first open (the daemon's start, or an admin command) every entry is copied into a
//! new store built beside it, `<path>.migrating`; only when that is complete and synced is the
//! old file renamed to `<path>.redb-<UTC time>` (kept for the admin to delete) and the new
//! store renamed to `path`. A crash at any point leaves either the old file at `path` (the
//! half-built store is removed and the migration runs again) or, between the two renames, the
//! finished new store, which the next open moves into place. One line is logged with the count.

use std::path::{Path, PathBuf};
use std::time::Instant;

use redb::{ReadableTable, ReadableTableMetadata};

use super::file::{catch_panic, open_database, utc_stamp, OpenError, CORRUPT_HINT};
use super::format::LEGACY_TABLE;

/// Entries written per batch while copying.
const BATCH: usize = 50_000;

/// `<path>.migrating`: where the new store is built.
fn building(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.migrating", path.display()))
}

/// Migrates an older version's redb file at `path` into a store directory (nothing to do
/// when `path` is a directory or missing). Errors are classified like opening errors: an
/// unreadable old file is [`OpenError::Corrupt`] (the daemon moves it aside).
pub(super) fn upgrade(path: &Path, cache_bytes: usize) -> Result<(), OpenError> {
    let new = building(path);
    if !path.exists() {
        // A crash between the two renames: the finished store waits beside the path.
        if new.join("version").is_file() && has_legacy_copy(path) {
            rename(&new, path)?;
            tracing::info!(path = %path.display(), "greylist store migration completed");
        }
        return Ok(());
    }
    if !path.is_file() {
        return Ok(());
    }
    let started = Instant::now();
    if new.exists() {
        // Left by a migration that did not finish: the old file is still the store.
        std::fs::remove_dir_all(&new).map_err(|e| io(&new, e))?;
    }
    // redb panics on some damaged files (measured: truncated past its first 512 bytes).
    let copied = catch_panic(|| copy(path, &new, cache_bytes)).unwrap_or_else(|what| {
        Err(OpenError::Corrupt(format!(
            "{}: not a greylist store or corrupt (the database library gave up: {what}); \
             {CORRUPT_HINT}",
            path.display()
        )))
    });
    let count = copied.inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&new);
    })?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let old = PathBuf::from(format!("{}.redb-{}", path.display(), utc_stamp(now)));
    rename(path, &old)?;
    rename(&new, path)?;
    tracing::info!(
        path = %path.display(),
        entries = count,
        old_file = %old.display(),
        secs = started.elapsed().as_secs_f64(),
        "greylist store migrated from the older single-file format; the old file is kept"
    );
    Ok(())
}

/// Whether a `<path>.redb-*` file exists beside `path`.
fn has_legacy_copy(path: &Path) -> bool {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return false;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{}.redb-", name.to_string_lossy());
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(&prefix))
    })
}

/// Copies every entry of the redb file `old` into a new store at `new`; returns the count.
fn copy(old: &Path, new: &Path, cache_bytes: usize) -> Result<u64, OpenError> {
    let legacy = redb::Database::builder()
        .set_cache_size(cache_bytes)
        .open(old)
        .map_err(|e| legacy_error(old, e.into()))?;
    let target = open_database(new, cache_bytes, true)?;
    let le = |e: redb::Error| legacy_error(old, e);
    let tx = legacy.begin_read().map_err(|e| le(e.into()))?;
    let table = match tx.open_table(LEGACY_TABLE) {
        Ok(t) => t,
        // A file created but never written: nothing to copy.
        Err(redb::TableError::TableDoesNotExist(_)) => return finish(new, target, 0),
        Err(e) => return Err(le(e.into())),
    };
    let total = table.len().map_err(|e| le(e.into()))?;
    let mut batch = target.db.batch();
    let mut count = 0u64;
    for item in table.iter().map_err(|e| le(e.into()))? {
        let (k, v) = item.map_err(|e| le(e.into()))?;
        batch.insert(&target.ks, k.value(), v.value());
        count += 1;
        if batch.len() >= BATCH {
            let full = std::mem::replace(&mut batch, target.db.batch());
            full.commit().map_err(|e| write_error(new, e))?;
        }
    }
    batch.commit().map_err(|e| write_error(new, e))?;
    debug_assert_eq!(count, total);
    finish(new, target, count)
}

/// Syncs and closes the new store.
fn finish(new: &Path, target: super::file::Db, count: u64) -> Result<u64, OpenError> {
    target
        .db
        .persist(fjall::PersistMode::SyncAll)
        .map_err(|e| write_error(new, e))?;
    drop(target);
    Ok(count)
}

fn write_error(new: &Path, e: fjall::Error) -> OpenError {
    OpenError::Transient(format!(
        "{}: cannot write the migrated store: {e}",
        new.display()
    ))
}

fn io(path: &Path, e: std::io::Error) -> OpenError {
    OpenError::Transient(format!("{}: {e}", path.display()))
}

/// Renames and syncs the directory, so that the rename outlives a crash.
fn rename(from: &Path, to: &Path) -> Result<(), OpenError> {
    std::fs::rename(from, to).map_err(|e| {
        OpenError::Refuse(format!(
            "{}: cannot rename to {} while migrating the store: {e}",
            from.display(),
            to.display()
        ))
    })?;
    if let Some(dir) = to.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Classifies an error reading the older version's file.
fn legacy_error(path: &Path, e: redb::Error) -> OpenError {
    use std::io::ErrorKind;
    let p = path.display();
    match e {
        redb::Error::DatabaseAlreadyOpen => OpenError::InUse(format!(
            "{p}: in use by another process (is mxsentry already running with this file?)"
        )),
        redb::Error::Io(e)
            if matches!(
                e.kind(),
                ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem
            ) =>
        {
            OpenError::Refuse(format!(
                "{p}: not writable ({e}); the store and its directory must be writable by the \
                 mxsentry user (it is migrated to the new store format at the first start)"
            ))
        }
        redb::Error::Io(e) if matches!(e.raw_os_error(), Some(28 | 122 | 5)) => {
            OpenError::Transient(format!("{p}: cannot open: {e}"))
        }
        e => OpenError::Corrupt(format!(
            "{p}: not a greylist store or corrupt ({e}); {CORRUPT_HINT}"
        )),
    }
}

#[cfg(test)]
#[path = "migrate_tests.rs"]
mod tests;
