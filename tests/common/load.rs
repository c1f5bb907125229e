//! Load for fault tests: milter clients creating new triplets, each session timed and
//! classified, and the judgement every fault test applies to a window of sessions.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use mxsentry::protocol::reply::Reply;
pub use mxsentry::testing::letters;

use super::{reply_text, try_rcpt_timed};

/// A hang guard for one RCPT reply, not a speed assertion (the greylist deadline is 1 s).
pub const PROMPT: Duration = Duration::from_secs(5);

pub fn greylisted(r: &Reply) -> bool {
    reply_text(r).starts_with("450 4.7.1 Greylisted")
}

/// What a session got: 450 from greylisting or continue (accepted, greylisting failed open).
/// Anything else (a 5xx, another 4xx, no reply) fails the test.
pub fn assert_450_or_accept(r: &Option<Reply>, what: &str) {
    match r {
        Some(Reply::Continue) => {}
        Some(r) if greylisted(r) => {}
        other => panic!("{what}: {other:?} (expected 450 Greylisted or continue)"),
    }
}

/// Polls `f` every 100 ms until it is true; panics with `what` after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    started.elapsed()
}

/// One load session.
#[derive(Clone)]
pub struct Session {
    pub sender: String,
    /// The RCPT reply; None when the connection failed (the daemon killed).
    pub reply: Option<Reply>,
    /// When the reply came.
    pub at: Instant,
    /// The same, on the wall clock (to compare with the daemon's log timestamps).
    pub wall: SystemTime,
    /// From RCPT sent to its reply (what the MTA waits for the verdict).
    pub rcpt: Duration,
    /// How long the whole session took.
    pub took: Duration,
}

impl Session {
    pub fn greylisted(&self) -> bool {
        self.reply.as_ref().is_some_and(greylisted)
    }
}

/// Milter clients creating new triplets as fast as the daemon answers, each session timed.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    results: Arc<Mutex<Vec<Session>>>,
}

impl Load {
    pub fn start(port: u16, clients: usize, tag: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let results = Arc::new(Mutex::new(Vec::new()));
        let counter = Arc::new(AtomicU64::new(0));
        let threads = (0..clients)
            .map(|t| {
                let (stop, results, counter) = (stop.clone(), results.clone(), counter.clone());
                let tag = tag.to_owned();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let n = counter.fetch_add(1, Ordering::Relaxed);
                        let sender =
                            format!("{tag}-{}-{}@sender.example", letters(t as u64), letters(n));
                        let started = Instant::now();
                        let r = try_rcpt_timed(port, &sender, "u@example.org");
                        let took = started.elapsed();
                        let failed = r.is_none();
                        let (reply, rcpt) = r.map_or((None, took), |(r, t)| (Some(r), t));
                        lock(&results).push(Session {
                            sender,
                            reply,
                            at: Instant::now(),
                            wall: SystemTime::now(),
                            rcpt,
                            took,
                        });
                        if failed {
                            // The daemon is gone (kill -9): do not spin.
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            threads,
            results,
        }
    }

    pub fn count(&self) -> usize {
        lock(&self.results).len()
    }

    pub fn finish(self) -> Vec<Session> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        std::mem::take(&mut *lock(&self.results))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Checks a window of sessions: every one answered (450 or accept, never 5xx) within
/// [`PROMPT`]. Prints the counts and the RCPT reply times; returns the slowest RCPT reply.
pub fn judge(what: &str, results: &[Session]) -> Duration {
    let (mut grey, mut accepted) = (0, 0);
    let mut rcpt: Vec<Duration> = Vec::new();
    let mut slowest_session = Duration::ZERO;
    for s in results {
        assert_450_or_accept(&s.reply, &format!("{what}: {}", s.sender));
        assert!(s.took < PROMPT, "{what}: {} took {:?}", s.sender, s.took);
        slowest_session = slowest_session.max(s.took);
        rcpt.push(s.rcpt);
        if s.greylisted() {
            grey += 1;
        } else {
            accepted += 1;
        }
    }
    rcpt.sort();
    let at = |q: f64| {
        rcpt.get(((rcpt.len() as f64 * q) as usize).min(rcpt.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let slowest = rcpt.last().copied().unwrap_or_default();
    eprintln!(
        "{what}: {} sessions, {grey} greylisted, {accepted} accepted (fail open); RCPT reply p50 {:?}, p99 {:?}, max {slowest:?}; slowest session {slowest_session:?}",
        results.len(),
        at(0.5),
        at(0.99),
    );
    slowest
}

/// A random number (unique senders, seeds).
pub fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish()
}
