//! Upgrading from the single redb file of older versions.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::super::format::{encode, LEGACY_TABLE};
use super::super::{EmbeddedStore, Opened, Options};
use super::building;
use crate::store::embedded::tests::{beside, entry};
use crate::store::GreylistStore;

/// Writes a store as older versions did: one redb file, table `greylist_v1`.
fn legacy_file(path: &Path, n: u64) {
    let db = redb::Database::create(path).unwrap();
    let tx = db.begin_write().unwrap();
    {
        let mut t = tx.open_table(LEGACY_TABLE).unwrap();
        for i in 0..n {
            t.insert(format!("t:{i:06}").as_str(), &encode(&entry(i))[..])
                .unwrap();
        }
        t.insert("c:192.0.2.0/24", &encode(&entry(7))[..]).unwrap();
    }
    tx.commit().unwrap();
}

/// The `<path>.redb-*` files beside `path`.
fn kept_old_files(path: &Path) -> Vec<PathBuf> {
    beside(path, ".redb-")
}

async fn assert_migrated(s: &EmbeddedStore, n: u64) {
    assert_eq!(s.len().await.unwrap(), n + 1);
    assert_eq!(s.get("t:000123").await.unwrap(), Some(entry(123)));
    assert_eq!(s.get("c:192.0.2.0/24").await.unwrap(), Some(entry(7)));
    let listed = s.list("t:0000", 100).await.unwrap();
    let keys: Vec<&str> = listed.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys.len(), 100);
    assert_eq!(keys[..3], ["t:000000", "t:000001", "t:000002"]);
}

#[tokio::test]
async fn an_older_versions_file_is_migrated_at_the_first_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("greylist.db");
    legacy_file(&path, 5_000);
    let old_bytes = std::fs::read(&path).unwrap();

    let (s, opened) = EmbeddedStore::open_for_daemon(&path, Options::default()).unwrap();
    assert_eq!(opened, Opened::Fine);
    assert!(path.is_dir(), "the store is a directory now");
    assert_migrated(&s, 5_000).await;
    // The old file is kept, byte for byte, under a dated name; nothing half-built is left.
    let kept = kept_old_files(&path);
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(std::fs::read(&kept[0]).unwrap(), old_bytes);
    assert!(!building(&path).exists());
    drop(s);

    // The next start opens the new store as it is.
    let s = EmbeddedStore::open(&path, Duration::from_secs(1)).unwrap();
    assert_migrated(&s, 5_000).await;
    assert_eq!(kept_old_files(&path).len(), 1);
}

#[tokio::test]
async fn an_interrupted_migration_is_redone_or_completed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("greylist.db");
    // Interrupted while copying: the old file is still at the path, a half-built store
    // beside it. The migration runs again from the start.
    legacy_file(&path, 1_000);
    std::fs::create_dir(building(&path)).unwrap();
    std::fs::write(building(&path).join("junk"), b"half-built").unwrap();
    let s = EmbeddedStore::open(&path, Duration::from_secs(1)).unwrap();
    assert_migrated(&s, 1_000).await;
    drop(s);

    // Interrupted between the two renames: the old file already renamed, the finished
    // store beside the path. The next open moves it into place.
    std::fs::rename(&path, building(&path)).unwrap();
    assert!(!path.exists());
    let s = EmbeddedStore::open(&path, Duration::from_secs(1)).unwrap();
    assert_migrated(&s, 1_000).await;
    assert!(!building(&path).exists());
}

#[test]
fn an_unreadable_old_file_is_moved_aside_by_the_daemon_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("greylist.db");
    legacy_file(&path, 100);
    let full = std::fs::read(&path).unwrap();
    // Truncated (redb panics on some of these) or garbage: not migratable.
    for (what, bytes) in [
        ("truncated", full[..full.len() / 2].to_vec()),
        ("garbage", b"not a database\n".repeat(1000)),
    ] {
        std::fs::write(&path, &bytes).unwrap();
        let err = EmbeddedStore::open(&path, Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{what}: {err}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "{what}: untouched");
        assert!(!building(&path).exists(), "{what}");

        let (s, opened) = EmbeddedStore::open_for_daemon(&path, Options::default()).unwrap();
        let Opened::MovedAside(moved) = opened else {
            panic!("{what}: {opened:?}");
        };
        assert_eq!(std::fs::read(&moved.moved_to).unwrap(), bytes, "{what}");
        assert!(path.is_dir(), "{what}: a fresh store");
        drop(s);
        std::fs::remove_dir_all(&path).unwrap();
    }
}
