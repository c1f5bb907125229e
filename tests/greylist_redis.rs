//! Two MX hosts (two daemons) sharing one real Redis: a triplet greylisted on one host passes
//! on the other after the delay; with Redis down the daemons fail open (accept, log, metric)
//! without hanging, and pick Redis up again when it returns.

mod common;

use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use common::{reply_text, transaction, Daemon};
use mxsentry::protocol::reply::Reply;

fn config(redis: &RedisServer) -> String {
    format!(
        "[greylist]\nenabled = true\ndelay = \"2s\"\nretry_window = \"1h\"\nautowhite = \"1d\"\n\
         client_autowhite_after = 0\nstore = \"redis\"\nredis_url = \"{}\"\n",
        redis.url()
    )
}

fn rcpt(d: &Daemon, from: &str) -> (Reply, Vec<Reply>) {
    transaction(d, from, "u@example.org")
}

#[test]
fn two_mx_hosts_share_one_view_and_fail_open() {
    let mut redis = RedisServer::start();
    let mx1 = Daemon::start("", &config(&redis));
    let mx2 = Daemon::start("", &config(&redis));

    let (r, _) = rcpt(&mx1, "news@sender.example");
    assert!(reply_text(&r).starts_with("450 4.7.1 Greylisted"), "{r:?}");
    // the other MX knows the triplet at once: a too-early retry there is still refused
    let (r, _) = rcpt(&mx2, "news@sender.example");
    assert!(reply_text(&r).starts_with("450 4.7.1 Greylisted"), "{r:?}");
    std::thread::sleep(Duration::from_millis(2300));
    // the sender's retry lands on the other MX and passes
    let (r, eom) = rcpt(&mx2, "news@sender.example");
    assert_eq!(r, Reply::Continue);
    assert!(
        eom.iter()
            .any(|r| matches!(r, Reply::AddHeader { name, .. } if &name[..] == b"X-Greylist")),
        "{eom:?}"
    );
    let (r, _) = rcpt(&mx1, "news@sender.example");
    assert_eq!(r, Reply::Continue, "autowhitelisted for both");

    // Redis down: fail open, promptly
    redis.kill();
    let t0 = Instant::now();
    let (r, _) = rcpt(&mx1, "unknown@sender.example");
    assert_eq!(r, Reply::Continue, "fail open");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "no hang: {:?}",
        t0.elapsed()
    );
    let log = mx1.wait_log("greylist.store_error");
    assert!(log.contains("greylist store failed: accepting"), "{log}");
    let (_, body) = mx1.http_get("/metrics");
    assert!(
        body.contains("mxsentry_findings_total{check=\"greylist\",outcome=\"error\"} 1"),
        "{body}"
    );

    // Redis back (empty): greylisting works again without a restart
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (r, _) = rcpt(&mx1, "later@sender.example");
        if reply_text(&r).starts_with("450 4.7.1 Greylisted") {
            break;
        }
        assert!(Instant::now() < deadline, "store never came back: {r:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
