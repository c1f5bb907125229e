//! The Redis greylist store against a real `redis-server` on loopback (Debian package
//! `redis-server`). Each test starts its own server on a free port in a temporary directory and
//! kills it at the end. Without `redis-server` the tests FAIL (they are never skipped); set
//! `MXSENTRY_REDIS_SERVER` to use a binary outside `PATH`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod common;

use common::redis_server::RedisServer;
use mxsentry::store::redis::{RedisStore, KEY_PREFIX};
use mxsentry::store::{Entry, GreylistStore, StoreError, Write};

/// Upper bound for any call while Redis is down or hung: a hang guard, not a speed assertion.
const HANG_GUARD: Duration = Duration::from_secs(5);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn entry(first_seen: u64, passed: u32, expires: u64) -> Entry {
    Entry {
        first_seen,
        last_seen: first_seen,
        passed,
        blocked: 0,
        expires,
    }
}

async fn store(server: &RedisServer) -> RedisStore {
    RedisStore::connect(&server.url()).await.expect("connect")
}

/// Increments `passed` (creating the entry), as the greylist rules would on an accepted delivery.
fn increment(old: Option<Entry>) -> Write {
    let t = now();
    let mut e = old.unwrap_or(entry(t, 0, t + 3600));
    e.passed += 1;
    e.last_seen = t;
    Write::Put(e)
}

#[tokio::test]
async fn update_follows_the_trait_semantics() {
    let server = RedisServer::start();
    let s = store(&server).await;
    assert_eq!(s.backend(), "redis");
    let t = now();
    let first = entry(t, 0, t + 300);

    assert_eq!(s.get("t:a").await, Ok(None));
    // Absent: f sees None, its Put is stored, update returns what f saw.
    let seen = s
        .update("t:a", &|old| {
            assert_eq!(old, None);
            Write::Put(first)
        })
        .await;
    assert_eq!(seen, Ok(None));
    assert_eq!(s.get("t:a").await, Ok(Some(first)));

    // Present: f sees the entry; update returns it; the new one is visible at once.
    let second = Entry { passed: 1, ..first };
    assert_eq!(
        s.update("t:a", &|_| Write::Put(second)).await,
        Ok(Some(first))
    );
    assert_eq!(s.get("t:a").await, Ok(Some(second)));

    // Keep leaves it; Delete removes it; Delete of an absent key is fine.
    assert_eq!(s.update("t:a", &|_| Write::Keep).await, Ok(Some(second)));
    assert_eq!(s.get("t:a").await, Ok(Some(second)));
    assert_eq!(s.update("t:a", &|_| Write::Delete).await, Ok(Some(second)));
    assert_eq!(s.get("t:a").await, Ok(None));
    assert_eq!(s.update("t:a", &|_| Write::Delete).await, Ok(None));
    assert_eq!(s.update("t:a", &|_| Write::Keep).await, Ok(None));
    assert_eq!(s.get("t:a").await, Ok(None));

    // put/get of an entry whose window has passed (Redis keeps it for the minimum TTL).
    let stale = entry(t - 100, 0, t - 10);
    s.put("c:stale", stale).await.unwrap();
    assert_eq!(s.get("c:stale").await, Ok(Some(stale)));

    // Keys are opaque: any bytes of a &str round-trip.
    let odd = "t:2001:db8::/64|<>|pöst*master?[x]@example.org";
    s.put(odd, first).await.unwrap();
    assert_eq!(s.get(odd).await, Ok(Some(first)));
    assert_eq!(s.flush().await, Ok(()));
}

#[tokio::test]
async fn two_hosts_see_each_others_writes_at_once() {
    let server = RedisServer::start();
    let a = store(&server).await;
    let b = store(&server).await;
    let t = now();
    a.update("t:x", &|_| Write::Put(entry(t, 0, t + 600)))
        .await
        .unwrap();
    assert_eq!(b.get("t:x").await, Ok(Some(entry(t, 0, t + 600))));
    // B accepts the retry; A sees B's write on its next update.
    let seen_by_b = b.update("t:x", &increment).await.unwrap();
    assert_eq!(seen_by_b.map(|e| e.passed), Some(0));
    let seen_by_a = a.update("t:x", &increment).await.unwrap();
    assert_eq!(seen_by_a.map(|e| e.passed), Some(1));
    assert_eq!(b.get("t:x").await.unwrap().unwrap().passed, 2);
    assert!(b.delete("t:x").await.unwrap());
    assert_eq!(a.get("t:x").await, Ok(None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_updates_from_two_hosts_are_atomic() {
    const TASKS: usize = 50;
    let server = RedisServer::start();
    // A generous deadline: this test is about atomicity, not latency.
    let hosts = [
        Arc::new(store(&server).await.with_timeout(Duration::from_secs(10))),
        Arc::new(store(&server).await.with_timeout(Duration::from_secs(10))),
    ];
    let mut tasks = Vec::new();
    for host in &hosts {
        for _ in 0..TASKS {
            let host = Arc::clone(host);
            tasks.push(tokio::spawn(async move {
                host.update("c:192.0.2.0/24", &increment).await
            }));
        }
    }
    let mut seen = Vec::new();
    for task in tasks {
        let old = task.await.unwrap().expect("update succeeds");
        seen.push(old.map_or(0, |e| e.passed));
    }
    let n = (2 * TASKS) as u32;
    let last = hosts[0].get("c:192.0.2.0/24").await.unwrap().unwrap();
    assert_eq!(last.passed, n, "every increment applied exactly once");
    // Each update saw a different predecessor: 0, 1, ..., n-1 (no two applied to one value).
    seen.sort_unstable();
    assert_eq!(seen, (0..n).collect::<Vec<_>>());
}

#[tokio::test]
async fn every_key_is_prefixed_and_has_a_ttl() {
    let server = RedisServer::start();
    let s = store(&server).await;
    let t = now();
    s.put("t:put", entry(t, 0, t + 100)).await.unwrap();
    s.update("t:upd", &|_| Write::Put(entry(t, 0, t + 86_400)))
        .await
        .unwrap();
    s.put("t:old", entry(t - 50, 0, t - 1)).await.unwrap();

    let ttl = |k: &str| server.int(&["TTL", &format!("{KEY_PREFIX}{k}")]);
    assert!((95..=100).contains(&ttl("t:put")), "TTL {}", ttl("t:put"));
    assert!(
        (86_395..=86_400).contains(&ttl("t:upd")),
        "TTL {}",
        ttl("t:upd")
    );
    // Already past its window: kept only for the minimum TTL of 1 s.
    assert!((0..=1).contains(&ttl("t:old")), "TTL {}", ttl("t:old"));
    // A refresh extends the TTL.
    s.update("t:put", &|old| {
        Write::Put(Entry {
            expires: t + 5000,
            ..old.unwrap()
        })
    })
    .await
    .unwrap();
    assert!(
        (4995..=5000).contains(&ttl("t:put")),
        "TTL {}",
        ttl("t:put")
    );
    // The value is the compact 33-byte record.
    assert_eq!(server.int(&["STRLEN", &format!("{KEY_PREFIX}t:put")]), 33);
    // And Redis expires entries by itself.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(s.get("t:old").await, Ok(None));
}

/// `greylist add --permanent`: the entry keeps Redis's longest TTL (100 years) through the
/// refresh of an accepted delivery, and purge leaves it.
#[tokio::test]
async fn permanent_entries_keep_the_longest_ttl_and_survive_purge() {
    use mxsentry::checks::greylist::{step, GreylistOutcome, Timing};
    let server = RedisServer::start();
    let s = store(&server).await;
    let t = now();
    s.put("t:perm", entry(t, 1, Entry::PERMANENT))
        .await
        .unwrap();
    let ttl = || server.int(&["TTL", &format!("{KEY_PREFIX}t:perm")]);
    let hundred_years = 100 * 365 * 86_400;
    assert!(ttl() >= hundred_years - 10, "TTL {}", ttl());
    let timing = Timing {
        delay: 300,
        retry_window: 86_400,
        autowhite: 3_600,
    };
    let seen = s
        .update("t:perm", &|old| step(old, t + 10, &timing).0)
        .await
        .unwrap();
    assert_eq!(step(seen, t + 10, &timing).1, GreylistOutcome::Whitelisted);
    let after = s.get("t:perm").await.unwrap().unwrap();
    assert_eq!((after.passed, after.expires), (2, Entry::PERMANENT));
    assert!(
        ttl() >= hundred_years - 10,
        "refreshed, still TTL {}",
        ttl()
    );
    assert_eq!(s.purge(t + 10 * 365 * 86_400).await, Ok(0));
    assert!(s.get("t:perm").await.unwrap().is_some());
}

#[tokio::test]
async fn list_delete_purge_and_len() {
    let server = RedisServer::start();
    let s = store(&server).await;
    let t = now();
    // Not ours: never listed, counted or purged.
    assert!(server
        .raw(&["SET", "other:app:key", "x"])
        .unwrap()
        .starts_with("+OK"));

    for i in 0..30u64 {
        s.put(
            &format!("t:10.0.{i:02}.0/24|a@b|c@d"),
            entry(t, 0, t + 1000 + i),
        )
        .await
        .unwrap();
    }
    for i in 0..5u64 {
        s.put(&format!("c:10.1.{i}.0/24"), entry(t, 5, t + 50))
            .await
            .unwrap();
    }
    // Glob characters in keys and prefixes are literal.
    s.put("t:[x]*?|a@b|c@d", entry(t, 0, t + 1000))
        .await
        .unwrap();
    s.put("t:[y]|a@b|c@d", entry(t, 0, t + 1000)).await.unwrap();
    assert_eq!(s.len().await, Ok(37));

    let all_t = s.list("t:", 1000).await.unwrap();
    assert_eq!(all_t.len(), 32);
    let keys: Vec<&str> = all_t.iter().map(|(k, _)| k.as_str()).collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(keys, sorted, "list is in key order");
    assert_eq!(keys[0], "t:10.0.00.0/24|a@b|c@d");
    assert_eq!(all_t[0].1, entry(t, 0, t + 1000));

    let first3 = s.list("t:10.0.", 3).await.unwrap();
    let first3: Vec<&str> = first3.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        first3,
        [
            "t:10.0.00.0/24|a@b|c@d",
            "t:10.0.01.0/24|a@b|c@d",
            "t:10.0.02.0/24|a@b|c@d"
        ]
    );
    let glob = s.list("t:[x]*", 10).await.unwrap();
    assert_eq!(glob.len(), 1, "{glob:?}");
    assert_eq!(glob[0].0, "t:[x]*?|a@b|c@d");
    assert_eq!(s.list("c:", 10).await.unwrap().len(), 5);
    assert_eq!(s.list("nothing:", 10).await.unwrap().len(), 0);
    assert_eq!(s.list("t:", 0).await.unwrap().len(), 0);

    assert_eq!(s.delete("t:[y]|a@b|c@d").await, Ok(true));
    assert_eq!(s.delete("t:[y]|a@b|c@d").await, Ok(false));
    assert_eq!(s.len().await, Ok(36));

    // Nothing expired yet.
    assert_eq!(s.purge(t).await, Ok(0));
    // At t+100 the five client entries (expires t+50) have expired but Redis has not fired their
    // TTLs yet: purge removes exactly those.
    assert_eq!(s.purge(t + 100).await, Ok(5));
    assert_eq!(s.list("c:", 10).await.unwrap().len(), 0);
    assert_eq!(s.len().await, Ok(31));
    // At t+1015: the ten triplets t+1000..=t+1009 plus "t:[x]*?" (t+1000) and t+1010..=t+1015.
    assert_eq!(s.purge(t + 1015).await, Ok(17));
    assert_eq!(s.len().await, Ok(14));
    assert_eq!(
        server.raw(&["GET", "other:app:key"]).unwrap(),
        "$1\r\nx\r\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scanning_calls_work_in_batches_over_many_keys() {
    const N: u64 = 2500;
    let server = RedisServer::start();
    let s = Arc::new(store(&server).await.with_timeout(Duration::from_secs(5)));
    let t = now();
    let used_memory = || {
        let info = server.raw(&["INFO", "memory"]).unwrap();
        let line = info
            .lines()
            .find(|l| l.starts_with("used_memory:"))
            .unwrap();
        line["used_memory:".len()..].trim().parse::<i64>().unwrap()
    };
    let before = used_memory();
    // Several SCAN batches of realistic keys; half of them expired at t+100.
    let mut writes = tokio::task::JoinSet::new();
    for i in 0..N {
        let s = Arc::clone(&s);
        let expires = if i % 2 == 0 { t + 50 } else { t + 5000 };
        writes.spawn(async move {
            let key = format!(
                "t:203.0.{}.0/24|sender{i:05}@example.com|rcpt@example.org",
                i % 256
            );
            s.put(&key, entry(t, 0, expires)).await
        });
    }
    while let Some(done) = writes.join_next().await {
        done.unwrap().unwrap();
    }
    let per_entry = (used_memory() - before) / N as i64;
    eprintln!("Redis memory per entry with a 61-byte key: ~{per_entry} bytes");
    assert!(per_entry < 400, "{per_entry} bytes per entry");

    assert_eq!(s.len().await, Ok(N));
    let listed = s.list("t:203.0.1", 2000).await.unwrap();
    assert!(listed.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(listed.len(), 2000.min(listed.len()));
    assert!(listed.iter().all(|(k, _)| k.starts_with("t:203.0.1")));
    assert_eq!(s.list("t:", 2000).await.unwrap().len(), 2000);
    assert_eq!(s.purge(t + 100).await, Ok(N / 2));
    assert_eq!(s.len().await, Ok(N / 2));
    let dedicated = store(&server).await.with_dedicated_db(true);
    assert_eq!(dedicated.len().await, Ok(N / 2));
}

#[tokio::test]
async fn undecodable_values_are_reported_skipped_overwritten_and_purged() {
    let server = RedisServer::start();
    let s = store(&server).await;
    let t = now();
    let junk = format!("{KEY_PREFIX}t:junk");
    assert!(server
        .raw(&["SET", &junk, "junk"])
        .unwrap()
        .starts_with("+OK"));
    assert!(matches!(s.get("t:junk").await, Err(StoreError::Corrupt(_))));
    s.put("t:good", entry(t, 0, t + 100)).await.unwrap();
    assert_eq!(s.list("t:", 10).await.unwrap().len(), 1);
    // update treats it as absent and replaces it.
    assert_eq!(s.update("t:junk", &increment).await, Ok(None));
    assert_eq!(s.get("t:junk").await.unwrap().unwrap().passed, 1);
    // purge removes what it cannot read.
    assert!(server
        .raw(&["SET", &junk, "junk"])
        .unwrap()
        .starts_with("+OK"));
    assert_eq!(s.purge(t).await, Ok(1));
    assert_eq!(s.get("t:junk").await, Ok(None));
    // A key of another type under our prefix is corrupt, not a crash.
    let list_key = format!("{KEY_PREFIX}t:list");
    server.raw(&["RPUSH", &list_key, "x"]).unwrap();
    assert!(matches!(s.get("t:list").await, Err(StoreError::Corrupt(_))));
    assert!(matches!(
        s.update("t:list", &increment).await,
        Err(StoreError::Corrupt(_))
    ));
}

/// Every call, with its outcome and how long it took.
async fn call_everything(s: &RedisStore) -> Vec<(&'static str, Result<(), StoreError>, Duration)> {
    let t = now();
    let mut out = Vec::new();
    macro_rules! timed {
        ($name:expr, $call:expr) => {{
            let start = Instant::now();
            let r = $call.await.map(|_| ());
            out.push(($name, r, start.elapsed()));
        }};
    }
    timed!("update", s.update("t:k", &increment));
    timed!("get", s.get("t:k"));
    timed!("put", s.put("t:k", entry(t, 0, t + 60)));
    timed!("delete", s.delete("t:k"));
    timed!("list", s.list("t:", 10));
    timed!("purge", s.purge(t));
    timed!("len", s.len());
    out
}

fn assert_all_fail_promptly(calls: &[(&str, Result<(), StoreError>, Duration)], what: &str) {
    for (name, result, took) in calls {
        assert!(result.is_err(), "{what}: {name} succeeded: {result:?}");
        assert!(*took < HANG_GUARD, "{what}: {name} took {took:?}");
        eprintln!(
            "{what}: {name} -> {:?} in {took:?}",
            result.as_ref().unwrap_err()
        );
    }
}

/// Retries `update` until it works again, for at most 10 s; returns how long it took.
async fn wait_until_working(s: &RedisStore) -> Duration {
    let start = Instant::now();
    loop {
        if s.update("t:k", &increment).await.is_ok() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the store did not recover within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn redis_killed_fails_fast_then_recovers_without_reconnect_call() {
    let mut server = RedisServer::start();
    let s = store(&server).await;
    s.update("t:k", &increment).await.unwrap();
    assert!(s.is_connected());

    server.kill();
    let calls = call_everything(&s).await;
    assert_all_fail_promptly(&calls, "redis killed");
    // Calls during the outage keep failing promptly (circuit open or connection refused).
    for _ in 0..20 {
        let start = Instant::now();
        assert!(s.get("t:k").await.is_err());
        assert!(start.elapsed() < HANG_GUARD);
    }
    assert!(!s.is_connected());

    server.restart();
    let took = wait_until_working(&s).await;
    eprintln!("recovered {took:?} after the restart");
    // The restarted Redis is empty (no persistence): the increment above created a fresh entry.
    assert_eq!(s.get("t:k").await.unwrap().unwrap().passed, 1);
    for (name, result, _) in call_everything(&s).await {
        assert!(result.is_ok(), "after recovery: {name}: {result:?}");
    }
}

#[tokio::test]
async fn redis_hung_times_out_within_the_deadline_then_recovers() {
    let server = RedisServer::start();
    let s = store(&server)
        .await
        .with_timeout(Duration::from_millis(200));
    s.update("t:k", &increment).await.unwrap();

    // SIGSTOP: connections stay open but nothing answers (like a black-holed network).
    server.signal("-STOP");
    let calls = call_everything(&s).await;
    assert_all_fail_promptly(&calls, "redis stopped");
    // The first call waits for its deadline; later ones fail at once (circuit open) or time out.
    let (_, first, took) = &calls[0];
    assert_eq!(first, &Err(StoreError::Timeout));
    assert!(*took >= Duration::from_millis(190), "{took:?}");
    assert!(*took < HANG_GUARD, "{took:?}");

    server.signal("-CONT");
    let took = wait_until_working(&s).await;
    eprintln!("recovered {took:?} after SIGCONT");
    assert_eq!(s.get("t:k").await.unwrap().unwrap().passed, 2);
}

#[tokio::test]
async fn connect_while_redis_is_down_then_it_comes_up() {
    let mut server = RedisServer::start();
    server.kill();
    let start = Instant::now();
    let s = RedisStore::connect(&server.url())
        .await
        .expect("an unreachable Redis is not a config error");
    assert!(start.elapsed() < HANG_GUARD);
    assert!(matches!(
        s.get("t:k").await,
        Err(StoreError::Unavailable(_) | StoreError::Timeout)
    ));
    server.restart();
    wait_until_working(&s).await;
    assert_eq!(s.get("t:k").await.unwrap().unwrap().passed, 1);
}

#[tokio::test]
async fn unix_socket_and_database_number() {
    let server = RedisServer::start();
    let unix = RedisStore::connect(&format!("unix://{}?db=3", server.socket().display()))
        .await
        .unwrap();
    let tcp3 = RedisStore::connect(&format!("redis://127.0.0.1:{}/3", server.port))
        .await
        .unwrap();
    let tcp0 = store(&server).await;
    let t = now();
    unix.put("t:u", entry(t, 0, t + 60)).await.unwrap();
    assert_eq!(tcp3.get("t:u").await, Ok(Some(entry(t, 0, t + 60))));
    assert_eq!(tcp0.get("t:u").await, Ok(None), "databases are separate");
    assert_eq!(tcp3.len().await, Ok(1));
    assert_eq!(tcp0.len().await, Ok(0));
    assert!(Path::new(&server.socket()).exists());
}

#[tokio::test]
async fn bad_urls_are_clear_errors() {
    let err = RedisStore::connect("127.0.0.1:6379").await.unwrap_err();
    assert!(err.to_string().contains("redis://"), "{err}");
}
