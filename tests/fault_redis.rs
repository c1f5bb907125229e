//! Redis faults through the real daemon (`[greylist] store = "redis"`, a real `redis-server`
//! on loopback): Redis stopped, restarted, paused (`CLIENT PAUSE 5000 ALL`), frozen
//! (`SIGSTOP`), and unreachable when the daemon starts. Under load from milter clients, every
//! session is answered (RCPT reply well within 5 s; the measured times are printed), greylisting
//! fails open (accept), never 5xx; `mxsentry_greylist_errors_total{backend="redis"}` counts the
//! failures; the store reconnects by itself and greylisting resumes (a new triplet gets 450
//! again) with no restart; sessions after the recovery are as fast as before (no stuck task).
//!
//! Without `redis-server` the tests FAIL (never skipped); `MXSENTRY_REDIS_SERVER` names a
//! binary outside `PATH`.

mod common;

use std::time::{Duration, Instant};

use common::load::{greylisted, judge, rand_u64, wait_for, Load, PROMPT};
use common::redis_server::RedisServer;
use common::{free_port, try_rcpt_timed, Daemon};

const ERRORS: &str = "mxsentry_greylist_errors_total{backend=\"redis\"}";

fn config(port: u16) -> String {
    format!(
        "[greylist]\nenabled = true\ndelay = \"1h\"\nretry_window = \"2d\"\nautowhite = \"1d\"\n\
         client_autowhite_after = 0\nstore = \"redis\"\nredis_url = \"redis://127.0.0.1:{port}/0\"\n"
    )
}

/// A session with a sender never seen before: does it get 450? (and the RCPT reply time).
fn new_triplet(d: &Daemon) -> (bool, Duration) {
    let sender = format!("probe-{}@sender.example", letters(rand_u64()));
    match try_rcpt_timed(d.port, &sender, "u@example.org") {
        Some((r, t)) => (greylisted(&r), t),
        None => panic!("no reply: {}", d.log()),
    }
}

fn letters(n: u64) -> String {
    common::load::letters(n % 1_000_000_000)
}

/// Waits until a new triplet is greylisted again (the store reconnected); returns how long.
fn wait_greylisting(d: &Daemon, what: &str) -> Duration {
    wait_for(what, Duration::from_secs(30), || new_triplet(d).0)
}

/// After a recovery: 50 sessions, all greylisted, none slow (a stuck task or a connection
/// left half-dead would show here). Prints and returns the slowest RCPT reply.
fn fast_again(d: &Daemon, what: &str) -> Duration {
    let mut times: Vec<Duration> = (0..50)
        .map(|_| {
            let (grey, t) = new_triplet(d);
            assert!(grey, "{what}: greylisting stopped again");
            t
        })
        .collect();
    times.sort();
    eprintln!(
        "{what}: after recovery, 50 new triplets greylisted; RCPT reply p50 {:?}, max {:?}",
        times[25], times[49]
    );
    assert!(times[49] < PROMPT, "{what}: slow after recovery");
    times[49]
}

/// Runs load, applies `fault`, keeps the load on for `hold`, applies `heal`, and checks the
/// three windows (healthy, fault, healing) and the recovery.
fn fault_under_load(
    what: &str,
    redis: &mut RedisServer,
    d: &Daemon,
    hold: Duration,
    fault: impl FnOnce(&mut RedisServer),
    heal: impl FnOnce(&mut RedisServer),
) {
    assert!(
        new_triplet(d).0,
        "{what}: greylisting works before the fault"
    );
    let errors_before = d.try_metric(ERRORS).unwrap_or(0.0);
    let load = Load::start(d.port, 2, what);
    std::thread::sleep(Duration::from_millis(500));
    let healthy = load.count();
    let fault_from = healthy;
    fault(redis);
    std::thread::sleep(hold);
    let fault_to = load.count();
    heal(redis);
    let back = wait_greylisting(d, what);
    std::thread::sleep(Duration::from_millis(500));
    let results = load.finish();
    let errors = d.try_metric(ERRORS).unwrap_or(0.0) - errors_before;
    judge(&format!("{what}: healthy"), &results[..healthy]);
    let slowest = judge(&format!("{what}: fault"), &results[fault_from..fault_to]);
    judge(&format!("{what}: healing"), &results[fault_to..]);
    let accepted = results[fault_from..]
        .iter()
        .filter(|s| !s.greylisted())
        .count();
    eprintln!(
        "{what}: {errors} store errors counted; greylisting back {back:?} after the repair; slowest RCPT reply during the fault {slowest:?}"
    );
    assert!(accepted > 0, "{what}: nothing failed open during the fault");
    assert!(errors > 0.0, "{what}: no store error counted");
    fast_again(d, what);
}

#[test]
fn redis_stopped_then_started_again() {
    let mut redis = RedisServer::start();
    let d = Daemon::start("", &config(redis.port));
    fault_under_load(
        "stopped",
        &mut redis,
        &d,
        Duration::from_secs(3),
        |r| r.kill(),
        |r| r.restart(),
    );
    let log = d.wait_log("greylist store failed: accepting");
    assert!(log.contains("redis store: connection restored"), "{log}");
}

#[test]
fn redis_restarted_under_load() {
    let mut redis = RedisServer::start();
    let d = Daemon::start("", &config(redis.port));
    // A restart (empty: no persistence in the test server) with no pause in between: the
    // daemon's connection breaks under sessions in flight.
    fault_under_load(
        "restarted",
        &mut redis,
        &d,
        Duration::ZERO,
        |r| r.restart(),
        |_| {},
    );
}

#[test]
fn redis_paused() {
    let mut redis = RedisServer::start();
    let d = Daemon::start("", &config(redis.port));
    fault_under_load(
        "paused",
        &mut redis,
        &d,
        Duration::from_secs(4),
        |r| {
            let ok = r.raw(&["CLIENT", "PAUSE", "5000", "ALL"]);
            assert!(ok.is_some_and(|r| r.starts_with("+OK")), "CLIENT PAUSE");
        },
        // The pause ends by itself after 5 s.
        |_| {},
    );
}

#[test]
fn redis_frozen() {
    let mut redis = RedisServer::start();
    let d = Daemon::start("", &config(redis.port));
    // SIGSTOP: connections stay open (the kernel still accepts new ones) and nothing answers,
    // like a Redis host that hangs or a network black hole.
    fault_under_load(
        "frozen",
        &mut redis,
        &d,
        Duration::from_secs(3),
        |r| r.signal("-STOP"),
        |r| r.signal("-CONT"),
    );
}

#[test]
fn redis_unreachable_when_the_daemon_starts() {
    let port = free_port();
    let started = Instant::now();
    let d = Daemon::start("", &config(port));
    eprintln!(
        "unreachable at start: the daemon listens {:?} after it was started",
        started.elapsed()
    );
    // Nothing listens on the port: every session fails open, promptly.
    let load = Load::start(d.port, 2, "unreachable");
    std::thread::sleep(Duration::from_secs(2));
    let down = load.count();
    let mut redis = RedisServer::start_on(port);
    let back = wait_greylisting(&d, "greylisting after Redis came up");
    let results = load.finish();
    let slowest = judge("unreachable at start: down", &results[..down]);
    judge("unreachable at start: coming up", &results[down..]);
    assert!(results[..down].iter().all(|s| !s.greylisted()));
    let errors = d.try_metric(ERRORS).unwrap_or(0.0);
    eprintln!(
        "unreachable at start: {errors} store errors counted; greylisting {back:?} after Redis came up; slowest RCPT reply while down {slowest:?}"
    );
    assert!(errors > 0.0);
    fast_again(&d, "unreachable at start");
    let log = d.log();
    assert!(
        log.contains("redis store: cannot connect; greylisting fails open until it is back"),
        "{log}"
    );
    redis.kill();
}
