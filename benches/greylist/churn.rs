//! The embedded store after churn, for issue 15's targets: after the regular phases, overwrite
//! half of the N triplets (a fifth of those already expired), delete 30% of them, purge, and
//! report the store's size on disk per live entry, RSS, a full-speed phase on the churned
//! store, and how long the store takes to open after a clean stop and after `kill -9` (a child
//! process, this bench binary with `GL_BENCH_CHILD`, killed while it writes).

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mxsentry::checks::greylist::{triplet_key, unix_now, Greylister};
use mxsentry::config::GreylistConfig;
use mxsentry::store::embedded::{disk_bytes, EmbeddedStore};
use mxsentry::store::{Entry, GreylistStore};

use super::{decisions, memprof, print_phase, rss_mb, stored, xorshift, QUIET};

const TASKS: u64 = 16;

fn key(i: u64) -> String {
    let cfg = GreylistConfig::default();
    let (ip, sender, rcpt) = stored(i);
    triplet_key(&cfg, ip, None, &sender, &rcpt)
}

fn mb(path: &Path) -> f64 {
    disk_bytes(path) as f64 / 1e6
}

/// Runs `ops` operations from [`TASKS`] tasks; `op(store, i)` with a random `i < n`.
async fn spread<F, Fut>(store: &Arc<dyn GreylistStore>, n: u64, ops: u64, seed: u64, op: F)
where
    F: Fn(Arc<dyn GreylistStore>, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let mut handles = Vec::new();
    for w in 0..TASKS {
        let (store, op) = (store.clone(), op.clone());
        handles.push(tokio::spawn(async move {
            let mut x = (w + seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            for _ in 0..ops / TASKS {
                op(store.clone(), xorshift(&mut x) % n).await;
            }
        }));
    }
    for h in handles {
        h.await.expect("churn task");
    }
}

/// Churns the store behind `g` (at `path`, `n` preloaded triplets), prints the report, and
/// closes the store.
pub async fn report(path: &Path, g: Arc<Greylister>, embedded: Arc<EmbeddedStore>, n: u64) {
    let store = g.store().clone();
    let now = unix_now();
    let t0 = Instant::now();
    spread(&store, n, n / 2, 1, move |s, i| async move {
        let e = Entry {
            first_seen: now - 900,
            last_seen: now - 300,
            passed: 2,
            blocked: 1,
            // A fifth expired already: the purge removes them.
            expires: if i % 5 == 0 { now - 1 } else { now + 86_400 },
        };
        s.put(&key(i), e).await.expect("put");
    })
    .await;
    spread(&store, n, n * 3 / 10, 2, |s, i| async move {
        s.delete(&key(i)).await.expect("delete");
    })
    .await;
    store.flush().await.expect("flush");
    let churn_s = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let purged = store.purge(now).await.expect("purge");
    let purge_s = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let live = store.len().await.expect("len");
    let len_s = t0.elapsed().as_secs_f64();
    println!(
        "embedded churn: {} overwrites + {} deletes in {churn_s:.1} s, purge removed {purged} in \
         {purge_s:.1} s; {live} live entries (counted in {len_s:.1} s); store {:.1} MB = {:.0} \
         bytes/entry; bench RSS {:.0} MB; {}",
        n / 2,
        n * 3 / 10,
        mb(path),
        disk_bytes(path) as f64 / live.max(1) as f64,
        rss_mb("self"),
        embedded.memory_report()
    );
    memprof::report("after churn");

    let next_fresh = Arc::new(AtomicU64::new(1 << 41));
    QUIET.store(true, std::sync::atomic::Ordering::Relaxed);
    let full = decisions(g.clone(), n, next_fresh, None, None).await;
    print_phase(
        "embedded",
        &format!(
            "after churn, full speed, {} tasks (deleted and purged triplets decide New: unexpected)",
            super::tasks()
        ),
        &full,
    );
    store.flush().await.expect("flush");
    println!(
        "embedded after churn: store {:.1} MB = {:.0} bytes/live entry (+ the phase's new \
         triplets); bench RSS {:.0} MB, peak {:.0} MB; {}",
        mb(path),
        disk_bytes(path) as f64 / live.max(1) as f64,
        rss_mb("self"),
        peak_rss_mb(),
        embedded.memory_report()
    );
    memprof::report("after the full-speed phase on the churned store");
    // What is left once jemalloc has given back the pages freed by the phase (1 s decay).
    tokio::time::sleep(Duration::from_secs(3)).await;
    memprof::report("3 s later, idle");
    drop(embedded);

    // Open after a clean stop.
    drop(store);
    let t0 = Instant::now();
    drop(g);
    let close_s = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let reopened = EmbeddedStore::open(path, Duration::from_secs(1)).expect("reopen");
    println!(
        "embedded open after a clean stop: {:.3} s (close took {close_s:.3} s)",
        t0.elapsed().as_secs_f64()
    );
    drop(reopened);

    // Open after kill -9 of a process writing at full speed.
    let mut child = Command::new(std::env::current_exe().expect("current exe"))
        .env("GL_BENCH_CHILD", path)
        .env("GL_BENCH_N", n.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn writer child");
    let out = child.stdout.take().expect("child stdout");
    let mut lines = std::io::BufReader::new(out).lines();
    let ready = lines.next().and_then(Result::ok).unwrap_or_default();
    // Let it write for 3 commit intervals and part of a fourth.
    std::thread::sleep(Duration::from_millis(3_500));
    child.kill().expect("kill -9");
    child.wait().expect("wait");
    let t0 = Instant::now();
    let reopened = EmbeddedStore::open(path, Duration::from_secs(1)).expect("open after kill -9");
    println!(
        "embedded open after kill -9 of a writer ({ready}): {:.3} s; store {:.1} MB",
        t0.elapsed().as_secs_f64(),
        mb(path)
    );
    drop(reopened);
}

/// The child of the kill -9 measurement: opens the store and overwrites random triplets at
/// full speed until killed.
pub fn child(path: &Path, n: u64) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let t0 = Instant::now();
        let store: Arc<dyn GreylistStore> =
            Arc::new(EmbeddedStore::open(path, Duration::from_secs(1)).expect("child open"));
        println!("opened in {:.3} s", t0.elapsed().as_secs_f64());
        let now = unix_now();
        spread(&store, n, u64::MAX, 3, move |s, i| async move {
            let e = Entry {
                first_seen: now,
                last_seen: now,
                passed: 3,
                blocked: 1,
                expires: now + 86_400,
            };
            s.put(&key(i), e).await.expect("put");
        })
        .await;
    });
}

/// VmHWM (peak RSS) of this process in MB.
fn peak_rss_mb() -> f64 {
    super::status_kb("self", "VmHWM:").map_or(f64::NAN, |kb| kb as f64 / 1024.0)
}
