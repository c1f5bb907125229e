//! Greylisting throughput and latency at N stored triplets, embedded store and Redis.
//!
//! `cargo bench --bench greylist` (`GL_BENCH_N` changes the default 1,000,000 preloaded
//! triplets). For each backend: preload N whitelisted triplets with `store.put`, run
//! `Greylister::check` for 5 s at full speed from 64 tasks (`GL_BENCH_TASKS`; half stored triplets, half new
//! ones), then 5 s at a fixed 20,000 decisions/s, and print a markdown table. The Redis run
//! starts its own `redis-server` on a free loopback port (skipped when it is not installed).
//! With `GL_BENCH_JSONL=FILE` each backend's row is also appended to FILE as one JSON line
//! (bench/run.sh's greylist scenario reads it). With `GL_BENCH_ALLOW=M` every decision first
//! asks greylist allow lists of about M entries (networks, verified names, addresses, a few
//! regexes; none matches the bench's triplets, so each decision pays every lookup), as the
//! policy does before greylisting, and the cost of those lookups alone is printed.
//! `GL_BENCH_REDIS=off` skips the Redis run. After its phases the embedded store is churned
//! and measured again (`churn.rs`): size on disk per live entry, RSS, a full-speed phase, and
//! the time to open it after a clean stop and after `kill -9`.

#[path = "greylist/churn.rs"]
mod churn;
#[path = "greylist/memprof.rs"]
mod memprof;
#[path = "greylist/threadcpu.rs"]
mod threadcpu;

use std::io::{Read, Write as _};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mxsentry::checks::greylist::allow::{AllowLists, ListKind};
use mxsentry::checks::greylist::{triplet_key, unix_now, GreylistOutcome, Greylister};
use mxsentry::config::GreylistConfig;
use mxsentry::store::embedded::{disk_bytes, EmbeddedStore};
use mxsentry::store::redis::RedisStore;
use mxsentry::store::{Entry, GreylistStore};

/// The daemon's allocator and settings (src/main.rs), so the bench's RSS is the daemon's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
#[export_name = "_rjem_malloc_conf"]
static JEMALLOC_CONF: &[u8; 60] = mxsentry::store::embedded::JEMALLOC_CONF;

/// Decisions in flight in each phase (`GL_BENCH_TASKS`, default 64): in a closed loop the
/// mean latency is tasks / throughput, so the count sets the queueing part of the latency.
fn tasks() -> u64 {
    static TASKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TASKS.get_or_init(|| {
        std::env::var("GL_BENCH_TASKS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(64)
    })
}

/// Set for phases where unexpected outcomes are expected (after churn deleted triplets).
static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
const PHASE: Duration = Duration::from_secs(5);
const RATE: u64 = 20_000;

/// Stored triplet `i`: a client spread over the IPv4 space, a sender among 100,003 (in 7,919
/// domains), a recipient among 5,000 (as in `store::embedded::tests::bench_1m`).
fn stored(i: u64) -> (IpAddr, String, String) {
    let ip = IpAddr::from((i.wrapping_mul(0x9e37_79b9) as u32).to_be_bytes());
    let sender = format!("user{}@sender{}.example", i % 100_003, i % 7_919);
    let rcpt = format!("rcpt{}@example.org", i % 5_000);
    (ip, sender, rcpt)
}

/// A triplet never stored before (its sender is unique).
fn fresh(i: u64) -> (IpAddr, String, String) {
    let ip = IpAddr::from((i.wrapping_mul(0x9e37_79b9) as u32).to_be_bytes());
    (
        ip,
        format!("new{i}@fresh.example"),
        format!("rcpt{}@example.org", i % 5_000),
    )
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// A `/proc/PID/status` field in KiB (`pid`: `self` or a pid; `field` with its colon).
fn status_kb(pid: &str, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// VmRSS of a process in MB (`self` or a pid).
fn rss_mb(pid: &str) -> f64 {
    status_kb(pid, "VmRSS:").map_or(f64::NAN, |kb| kb as f64 / 1024.0)
}

struct Latencies {
    count: usize,
    per_sec: f64,
    p50: Duration,
    p99: Duration,
    p999: Duration,
    max: Duration,
    errors: u64,
}

fn summarize(mut lat: Vec<Duration>, elapsed: Duration, errors: u64) -> Latencies {
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Latencies {
        count: lat.len(),
        per_sec: lat.len() as f64 / elapsed.as_secs_f64(),
        p50: pct(0.5),
        p99: pct(0.99),
        p999: pct(0.999),
        max: lat.last().copied().unwrap_or_default(),
        errors,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Allow lists of about `m` entries: networks (/24 and /32) in 198.18.0.0/15, verified-name
/// domains, sender and recipient addresses and domains, and a few regexes in each list.
fn allow_lists(m: u64) -> AllowLists {
    let (mut clients, mut senders, mut rcpts) = (String::new(), String::new(), String::new());
    for i in 0..m / 2 {
        let (a, b) = ((i >> 8) % 2, i % 256);
        if i % 2 == 0 {
            clients.push_str(&format!("198.{}.{b}.0/24\n", 18 + a));
        } else {
            clients.push_str(&format!("198.{}.{b}.{}\n", 18 + a, i % 250));
        }
    }
    for i in 0..m / 4 {
        clients.push_str(&format!("outbound.provider{i}.example\n"));
        senders.push_str(&format!("news{i}@partner{i}.example\n"));
        rcpts.push_str(&format!("desk{i}@\nteam{i}.example.org\n"));
    }
    for i in 0..10 {
        clients.push_str(&format!("/^mta[0-9]+\\.pool{i}\\.example$/\n"));
    }
    for i in 0..5 {
        senders.push_str(&format!("/^bounce{i}-[0-9]+@/\n"));
        rcpts.push_str(&format!("/^alerts{i}\\+.*@/\n"));
    }
    AllowLists::parse(&[
        (ListKind::Client, std::path::Path::new("clients"), &clients),
        (ListKind::Sender, std::path::Path::new("senders"), &senders),
        (ListKind::Recipient, std::path::Path::new("rcpts"), &rcpts),
    ])
    .expect("bench allow lists parse")
}

/// What the policy asks before greylisting: true when a list lets the recipient through.
fn allowed(a: &AllowLists, ip: IpAddr, name: &str, sender: &str, rcpt: &str) -> bool {
    a.client(ip, Some(name)).is_some() || a.recipient(rcpt).is_some() || a.sender(sender).is_some()
}

/// The allow-list lookups alone, one thread: nanoseconds per recipient.
fn allow_lookup_ns(a: &AllowLists) -> f64 {
    const ROUNDS: u64 = 1_000_000;
    let triplets: Vec<_> = (0..1000).map(stored).collect();
    let names: Vec<String> = (0..1000)
        .map(|i| format!("mail-{i}.out.sender{i}.example"))
        .collect();
    let t0 = Instant::now();
    let mut hits = 0u64;
    for k in 0..ROUNDS as usize {
        let (ip, sender, rcpt) = &triplets[k % 1000];
        hits += u64::from(allowed(a, *ip, &names[k % 1000], sender, rcpt));
    }
    let ns = t0.elapsed().as_nanos() as f64 / ROUNDS as f64;
    println!("allow lists: {:?} entries (clients, senders, recipients); {ns:.0} ns per recipient (client + recipient + sender lookups, one thread, {hits} hits)", a.counts());
    ns
}

/// One decisions phase: [`tasks`] tasks for [`PHASE`], each alternating a stored and a new triplet;
/// `period` paces each task (None: back to back). With `allow`, the allow lists are asked first.
async fn decisions(
    g: Arc<Greylister>,
    n: u64,
    next_fresh: Arc<AtomicU64>,
    period: Option<Duration>,
    allow: Option<Arc<AllowLists>>,
) -> Latencies {
    let start = Instant::now();
    let end = start + PHASE;
    let mut handles = Vec::new();
    for w in 0..tasks() {
        let (g, next_fresh, allow) = (g.clone(), next_fresh.clone(), allow.clone());
        handles.push(tokio::spawn(async move {
            // Grown as needed: a large reservation per task (64 × 3.2 MB) would be the bench's
            // memory, not the store's, in the RSS the bench reports.
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut x = (w + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let mut tick = period.map(|p| {
                // Spread the tasks' ticks over one period.
                let offset = p.mul_f64(w as f64 / tasks() as f64);
                tokio::time::interval_at(tokio::time::Instant::now() + offset, p)
            });
            let mut k = 0u64;
            loop {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                if Instant::now() >= end {
                    break;
                }
                let existing = k % 2 == 0;
                k += 1;
                let (ip, sender, rcpt) = if existing {
                    stored(xorshift(&mut x) % n)
                } else {
                    fresh(next_fresh.fetch_add(1, Ordering::Relaxed))
                };
                let now = unix_now();
                let t0 = Instant::now();
                if let Some(a) = &allow {
                    let name = format!("mail-{k}.out.sender{}.example", k % 7_919);
                    if allowed(a, ip, &name, &sender, &rcpt) {
                        lat.push(t0.elapsed());
                        continue;
                    }
                }
                let r = g.check(ip, None, &sender, &rcpt, now).await;
                lat.push(t0.elapsed());
                let ok = matches!(
                    (&r.outcome, existing),
                    (GreylistOutcome::Whitelisted, true) | (GreylistOutcome::New { .. }, false)
                );
                if !ok {
                    errors += 1;
                    if errors == 1 && !QUIET.load(Ordering::Relaxed) {
                        eprintln!("unexpected outcome (existing={existing}): {:?}", r.outcome);
                    }
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for h in handles {
        let (lat, e) = h.await.expect("task");
        all.extend(lat);
        errors += e;
    }
    summarize(all, start.elapsed(), errors)
}

struct Row {
    backend: &'static str,
    stored: u64,
    preload_s: f64,
    full: Latencies,
    paced: Latencies,
    store_mb: f64,
    rss_bench: f64,
    rss_redis: Option<f64>,
}

async fn run(
    backend: &'static str,
    store: Arc<dyn GreylistStore>,
    n: u64,
    preload_tasks: u64,
    allow: Option<Arc<AllowLists>>,
) -> (Arc<Greylister>, u64, f64, Latencies, Latencies) {
    let cfg = GreylistConfig {
        client_autowhite_after: 0,
        ..GreylistConfig::default()
    };
    // 1. Preload: N passed triplets, autowhitelisted for a day.
    let now = unix_now();
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for w in 0..preload_tasks {
        let (store, cfg) = (store.clone(), cfg.clone());
        handles.push(tokio::spawn(async move {
            let mut i = w;
            while i < n {
                let (ip, sender, rcpt) = stored(i);
                let e = Entry {
                    first_seen: now - 600,
                    last_seen: now - 600,
                    passed: 1,
                    blocked: 1,
                    expires: now + 86_400,
                };
                let k = triplet_key(&cfg, ip, None, &sender, &rcpt);
                store.put(&k, e).await.expect("put");
                i += preload_tasks;
            }
        }));
    }
    for h in handles {
        h.await.expect("preload task");
    }
    store.flush().await.expect("flush");
    let preload = t0.elapsed().as_secs_f64();
    let stored_n = store.len().await.expect("len");
    println!(
        "{backend}: preloaded {stored_n} entries in {preload:.1} s ({:.0}/s), bench RSS {:.0} MB",
        n as f64 / preload,
        rss_mb("self")
    );
    memprof::report(&format!("{backend} after preload"));

    let g = Arc::new(Greylister::new(store.clone(), &cfg));
    let next_fresh = Arc::new(AtomicU64::new(1 << 40));
    // 2. Full speed, then paced at RATE.
    let full = decisions(g.clone(), n, next_fresh.clone(), None, allow.clone()).await;
    print_phase(backend, &format!("full speed, {} tasks", tasks()), &full);
    store.flush().await.expect("flush");
    memprof::report(&format!("{backend} after full speed"));
    let period = Duration::from_secs_f64(tasks() as f64 / RATE as f64);
    let paced = decisions(g.clone(), n, next_fresh, Some(period), allow).await;
    print_phase(
        backend,
        &format!("paced {RATE}/s, {} tasks", tasks()),
        &paced,
    );
    store.flush().await.expect("flush");
    memprof::report(&format!("{backend} after paced"));
    (g, stored_n, preload, full, paced)
}

fn print_phase(backend: &str, phase: &str, l: &Latencies) {
    println!(
        "{backend} {phase}: {} decisions = {:.0}/s; p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms; unexpected outcomes {}",
        l.count,
        l.per_sec,
        ms(l.p50),
        ms(l.p99),
        ms(l.p999),
        ms(l.max),
        l.errors
    );
}

async fn embedded(n: u64, allow: Option<Arc<AllowLists>>) -> Row {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("greylist.db");
    let store = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || EmbeddedStore::open(&path, Duration::from_secs(1)))
            .await
            .expect("open task")
            .expect("open embedded store")
    };
    let store = Arc::new(store);
    let (g, stored, preload_s, full, paced) = run("embedded", store.clone(), n, 16, allow).await;
    g.store().flush().await.expect("flush");
    let store_mb = disk_bytes(&path) as f64 / 1e6;
    let rss_bench = rss_mb("self");
    churn::report(&path, g, store, n).await;
    Row {
        backend: "embedded",
        stored,
        preload_s,
        full,
        paced,
        store_mb,
        rss_bench,
        rss_redis: None,
    }
}

/// `redis-server` on a free loopback port, killed on drop.
struct RedisServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    fn binary() -> Option<PathBuf> {
        let paths = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&paths)
            .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
            .map(|dir| dir.join("redis-server"))
            .find(|p| p.is_file())
    }

    fn start(binary: PathBuf) -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let dir = tempfile::tempdir().expect("tempdir");
        let child = Command::new(binary)
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .args(["--dir", &dir.path().display().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let server = RedisServer {
            child,
            port,
            _dir: dir,
        };
        let started = Instant::now();
        while !server
            .raw(&["PING"])
            .is_some_and(|r| r.starts_with("+PONG"))
        {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not answer PING on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// One command over a plain socket.
    fn raw(&self, args: &[&str]) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).ok()?;
        let mut buf = vec![0u8; 65_536];
        let n = s.read(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    fn used_memory_mb(&self) -> f64 {
        self.raw(&["INFO", "memory"])
            .and_then(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix("used_memory:"))
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
            .map_or(f64::NAN, |b| b / 1e6)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn redis(n: u64, allow: Option<Arc<AllowLists>>) -> Option<Row> {
    let Some(binary) = RedisServer::binary() else {
        println!("redis: skipped (redis-server not installed)");
        return None;
    };
    let server = RedisServer::start(binary);
    let url = format!("redis://127.0.0.1:{}/0", server.port);
    let store = RedisStore::connect(&url).await.expect("connect to redis");
    let (g, stored, preload_s, full, paced) = run("redis", Arc::new(store), n, 64, allow).await;
    drop(g);
    let row = Row {
        backend: "redis",
        stored,
        preload_s,
        full,
        paced,
        store_mb: server.used_memory_mb(),
        rss_bench: rss_mb("self"),
        rss_redis: Some(rss_mb(&server.child.id().to_string())),
    };
    drop(server);
    Some(row)
}

fn main() {
    let n: u64 = std::env::var("GL_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    // As the daemon does (docs/greylisting.md, "Performance").
    mxsentry::store::embedded::limit_malloc_arenas();
    if let Some(path) = std::env::var_os("GL_BENCH_CHILD") {
        churn::child(std::path::Path::new(&path), n);
        return;
    }
    memprof::start_sampler();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    println!(
        "greylist bench: N = {n}, {} worker threads",
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );
    let allow = std::env::var("GL_BENCH_ALLOW")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(|m| {
            let a = allow_lists(m);
            allow_lookup_ns(&a);
            Arc::new(a)
        });
    let mut rows = vec![rt.block_on(embedded(n, allow.clone()))];
    if std::env::var("GL_BENCH_REDIS").as_deref() != Ok("off") {
        rows.extend(rt.block_on(redis(n, allow)));
    }

    println!();
    println!("| backend | stored | preload s | decisions/s (full speed) | p50 ms | p99 ms | p99 @20k/s | store size MB | RSS MB (bench / redis-server) |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let rss = match r.rss_redis {
            Some(redis) => format!("{:.0} / {redis:.0}", r.rss_bench),
            None => format!("{:.0} / -", r.rss_bench),
        };
        println!(
            "| {} | {} | {:.1} | {:.0} | {:.3} | {:.3} | {:.3} (achieved {:.0}/s) | {:.1} | {rss} |",
            r.backend,
            r.stored,
            r.preload_s,
            r.full.per_sec,
            ms(r.full.p50),
            ms(r.full.p99),
            ms(r.paced.p99),
            r.paced.per_sec,
            r.store_mb,
        );
    }
    if let Ok(path) = std::env::var("GL_BENCH_JSONL") {
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        for r in &rows {
            let line = format!(
                "{{\"scenario\":\"greylist_store\",\"backend\":\"{}\",\"stored\":{},\"preload_s\":{:.1},\"per_sec\":{:.0},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"paced_per_sec\":{:.0},\"paced_p99_ms\":{:.3},\"store_mb\":{:.1},\"rss_bench_mb\":{:.0},\"rss_redis_mb\":{}}}",
                r.backend,
                r.stored,
                r.preload_s,
                r.full.per_sec,
                ms(r.full.p50),
                ms(r.full.p99),
                r.paced.per_sec,
                ms(r.paced.p99),
                r.store_mb,
                r.rss_bench,
                r.rss_redis.map_or("null".to_string(), |m| format!("{m:.0}")),
            );
            writeln!(out, "{line}").expect("write GL_BENCH_JSONL");
        }
    }
}
