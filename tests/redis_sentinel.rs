//! Redis Sentinel failover through the real daemon: a primary, a replica and three sentinels
//! (`redis-server --sentinel`, generated configurations, `down-after-milliseconds` 1000) on
//! loopback; two mxsentry daemons configured with `redis_sentinels` + `redis_master`. The
//! primary is killed (`SIGKILL`) under load from both daemons: every session is answered (450
//! or accept, never a 5xx, never a hang), greylisting resumes on the promoted replica without a
//! restart, and a triplet delayed before the failover (and replicated: `WAIT 1`) passes after
//! it. The fail-open window (kill → first decision stored on the new primary) is printed
//! (`--nocapture`).
//!
//! Needs `redis-server` (Debian's runs as a sentinel with `--sentinel`).

mod common;

use std::time::{Duration, Instant};

use common::load::{greylisted, judge, rand_u64, wait_for, Load};
use common::redis_server::RedisServer;
use common::{reply_text, transaction, try_rcpt_timed, Daemon};
use mxsentry::protocol::reply::Reply;

const MASTER: &str = "mxsmaster";

struct Ha {
    primary: RedisServer,
    replica: RedisServer,
    sentinels: Vec<RedisServer>,
}

/// The value of `field` in a flat `SENTINEL master` reply (RESP2 array of bulk strings).
fn sentinel_field(reply: &str, field: &str) -> Option<String> {
    let mut lines = reply.split("\r\n");
    while let Some(line) = lines.next() {
        if line == field {
            lines.next(); // the value's length line
            return lines.next().map(str::to_string);
        }
    }
    None
}

impl Ha {
    fn start() -> Ha {
        let primary = RedisServer::start();
        let replica = RedisServer::start_with(
            vec![
                "--replicaof".into(),
                "127.0.0.1".into(),
                primary.port.to_string(),
            ],
            None,
        );
        wait_for("replica in sync", Duration::from_secs(20), || {
            replica
                .raw(&["INFO", "replication"])
                .is_some_and(|r| r.contains("master_link_status:up"))
        });
        let sentinels: Vec<RedisServer> = (0..3)
            .map(|_| RedisServer::start_sentinel(MASTER, primary.port, 1000))
            .collect();
        // Each sentinel must know the replica and the two other sentinels before a failover
        // can be agreed (hello messages every 2 s).
        for s in &sentinels {
            wait_for("sentinels see each other", Duration::from_secs(30), || {
                s.raw(&["SENTINEL", "master", MASTER]).is_some_and(|r| {
                    sentinel_field(&r, "num-other-sentinels").as_deref() == Some("2")
                        && sentinel_field(&r, "num-slaves").as_deref() == Some("1")
                })
            });
        }
        Ha {
            primary,
            replica,
            sentinels,
        }
    }

    fn config(&self) -> String {
        let urls: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("\"redis://127.0.0.1:{}/0\"", s.port))
            .collect();
        format!(
            "[greylist]\nenabled = true\ndelay = \"1s\"\nretry_window = \"2d\"\n\
             autowhite = \"1d\"\nclient_autowhite_after = 0\nstore = \"redis\"\n\
             redis_sentinels = [{}]\nredis_master = \"{MASTER}\"\n",
            urls.join(", ")
        )
    }

    /// The port the sentinels name as the primary now.
    fn announced_port(&self) -> Option<u16> {
        let r = self.sentinels[0].raw(&["SENTINEL", "get-master-addr-by-name", MASTER])?;
        r.split("\r\n").nth(4)?.parse().ok()
    }
}

fn new_triplet_greylisted(d: &Daemon) -> bool {
    let sender = format!(
        "probe-{}@sender.example",
        common::load::letters(rand_u64() % 1_000_000_000)
    );
    match try_rcpt_timed(d.port, &sender, "u@example.org") {
        Some((r, _)) => greylisted(&r),
        None => panic!("no reply: {}", d.log()),
    }
}

#[test]
fn failover_is_followed_without_a_restart_and_never_5xx() {
    let mut ha = Ha::start();
    let mx1 = Daemon::start("", &ha.config());
    let mx2 = Daemon::start("", &ha.config());
    assert_eq!(ha.announced_port(), Some(ha.primary.port));

    // Delayed before the failover, replicated (WAIT 1 replica), retried after it.
    let (r, _) = transaction(&mx1, "early@sender.example", "u@example.org");
    assert!(
        reply_text(&r).starts_with("450 4.7.1 Greylisted"),
        "{r:?}\n{}",
        mx1.log()
    );
    let waited = ha.primary.raw(&["WAIT", "1", "2000"]).unwrap_or_default();
    assert!(
        waited.starts_with(":1"),
        "replicated to the replica: {waited:?}"
    );
    assert!(new_triplet_greylisted(&mx2), "{}", mx2.log());

    let load1 = Load::start(mx1.port, 2, "sentinel-mx1");
    let load2 = Load::start(mx2.port, 2, "sentinel-mx2");
    std::thread::sleep(Duration::from_millis(500));
    let (healthy1, healthy2) = (load1.count(), load2.count());

    let killed = Instant::now();
    ha.primary.kill(); // SIGKILL
                       // Fail-open window: until a new triplet is greylisted again (stored on the new primary).
    wait_for("mx1 greylists again", Duration::from_secs(60), || {
        new_triplet_greylisted(&mx1)
    });
    let window1 = killed.elapsed();
    wait_for("mx2 greylists again", Duration::from_secs(30), || {
        new_triplet_greylisted(&mx2)
    });
    let window2 = killed.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let (results1, results2) = (load1.finish(), load2.finish());

    assert_eq!(
        ha.announced_port(),
        Some(ha.replica.port),
        "the replica was promoted"
    );
    let role = ha.replica.raw(&["ROLE"]).unwrap_or_default();
    assert!(role.contains("master"), "{role:?}");

    judge("sentinel mx1: healthy", &results1[..healthy1]);
    judge("sentinel mx2: healthy", &results2[..healthy2]);
    judge("sentinel mx1: failover and after", &results1[healthy1..]);
    judge("sentinel mx2: failover and after", &results2[healthy2..]);
    let failed_open = results1[healthy1..]
        .iter()
        .chain(&results2[healthy2..])
        .filter(|s| s.reply == Some(Reply::Continue))
        .count();
    eprintln!(
        "sentinel failover: fail-open window (SIGKILL of the primary -> first decision stored \
         on the new primary) mx1 {window1:?}, mx2 {window2:?} (mx2 probed after mx1); {failed_open} sessions \
         accepted meanwhile"
    );
    assert!(
        failed_open > 0,
        "nothing failed open while there was no primary"
    );

    // The new primary holds what was written after the failover, and the delayed triplet
    // (replicated before it) passes now, on the other MX.
    assert!(ha.replica.int(&["DBSIZE"]) > 0);
    let (r, _) = transaction(&mx2, "early@sender.example", "u@example.org");
    assert_eq!(r, Reply::Continue, "the delay survived the failover");
    for mx in [&mx1, &mx2] {
        let log = mx.wait_log("now writing to another server (a failover)");
        assert!(
            log.contains(&format!("to=127.0.0.1:{}", ha.replica.port)),
            "{log}"
        );
    }
    // The daemons were never restarted.
    for mx in [&mx1, &mx2] {
        assert_eq!(mx.log().matches("mxsentry started").count(), 1);
    }
    drop(ha.sentinels.drain(..));
}
