//! The storage engine under the embedded greylist store (fjall on lsm-tree, with mxsentry's
//! patch in vendor/lsm-tree: point reads take the newest version without waiting for a
//! version install's fsyncs). What the store relies on: a read that runs while memtables are
//! rotated and flushed and tables compacted still sees every entry written before it.
//!
//! Tiny memtables make the writer rotate and flush every few hundred entries, and a thread
//! compacts all the while, so the reads race hundreds of version installs. A version published
//! to readers too late (a rotation not published: writes land in a memtable no reader sees) or
//! too early (before its tables hold what the sealed memtables held) shows as a missing key.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

const ENTRIES: u64 = 60_000;
const READERS: usize = 3;

fn key(i: u64) -> [u8; 8] {
    i.to_be_bytes()
}

#[test]
fn reads_during_flushes_and_compactions_see_every_written_entry() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = fjall::Database::builder(dir.path())
        .cache_size(1 << 20)
        .open()
        .expect("open");
    let ks = db
        .keyspace("t", || {
            fjall::KeyspaceCreateOptions::default().max_memtable_size(16 << 10)
        })
        .expect("keyspace");

    let written = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));

    let readers: Vec<_> = (0..READERS)
        .map(|r| {
            let (ks, written, done, reads) =
                (ks.clone(), written.clone(), done.clone(), reads.clone());
            std::thread::spawn(move || {
                // A cheap deterministic spread over the written range, newest entries often.
                let mut x = 0x9e37_79b9_7f4a_7c15_u64 ^ r as u64;
                while !done.load(Ordering::Acquire) {
                    let upto = written.load(Ordering::Acquire);
                    if upto == 0 {
                        std::thread::yield_now();
                        continue;
                    }
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let i = if x % 2 == 0 {
                        upto - 1 - (x >> 1) % upto.min(64)
                    } else {
                        (x >> 1) % upto
                    };
                    let got = ks.get(key(i)).expect("read");
                    assert_eq!(
                        got.as_deref(),
                        Some(&key(i)[..]),
                        "entry {i} of {upto} written is missing"
                    );
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    let compactor = {
        let (ks, done) = (ks.clone(), done.clone());
        std::thread::spawn(move || {
            let mut compactions = 0u32;
            while !done.load(Ordering::Acquire) {
                ks.major_compact().expect("compaction");
                compactions += 1;
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            compactions
        })
    };

    for i in 0..ENTRIES {
        ks.insert(key(i), key(i)).expect("write");
        written.store(i + 1, Ordering::Release);
    }
    done.store(true, Ordering::Release);
    for reader in readers {
        reader.join().expect("a reader found an entry missing");
    }
    let compactions = compactor.join().expect("compactor");

    // The race really ran: versions were installed while reads went on.
    assert!(compactions > 0, "no compaction ran");
    assert!(
        reads.load(Ordering::Relaxed) > ENTRIES,
        "too few reads raced the writes"
    );
    assert!(ks.table_count() > 0, "nothing was flushed to tables");
    for i in (0..ENTRIES).step_by(997) {
        assert_eq!(ks.get(key(i)).expect("read").as_deref(), Some(&key(i)[..]));
    }
}
