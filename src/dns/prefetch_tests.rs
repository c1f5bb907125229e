//! Tests of the answer cache and prefetch, against a loopback [`TestDnsServer`].
//!
//! No timed assertions: answers have a 10 s TTL and prefetch is set to the last 90 %, so an
//! entry is due for refresh from 1 s after it was stored and stays valid for 9 s more; the
//! tests sleep 1.2 s to get into that window. A refresh of a `DELAY 2s` name cannot finish
//! before the server answers, so "the session did not wait for the refresh" is shown by the
//! refresh still pending (`refreshed == 0`) when the session's answer is in hand.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::*;
use crate::testing::TestDnsServer;

const INTO_WINDOW: Duration = Duration::from_millis(1200);

fn config(server: &TestDnsServer, prefetch: bool) -> DnsConfig {
    DnsConfig {
        nameservers: vec![server.addr],
        timeout: Duration::from_secs(10),
        cache_size: 1000,
        max_concurrent: 16,
        prefetch,
        prefetch_percent: 90,
        ..DnsConfig::default()
    }
}

fn v4(d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, d))
}

/// (started, refreshed, failed, dropped)
fn prefetches(dns: &Dns) -> (u64, u64, u64, u64) {
    let s = dns.cache_stats().expect("a cache");
    (
        s.prefetch_started.load(Ordering::Relaxed),
        s.prefetch_refreshed.load(Ordering::Relaxed),
        s.prefetch_failed.load(Ordering::Relaxed),
        s.prefetch_dropped.load(Ordering::Relaxed),
    )
}

fn hits(dns: &Dns) -> u64 {
    dns.cache_stats()
        .expect("a cache")
        .hits
        .load(Ordering::Relaxed)
}

/// Waits (up to a minute: a slow machine only makes it slower) until `done` holds.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    for _ in 0..600 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never happened: {what}");
}

#[tokio::test]
async fn returning_client_gets_the_cached_answer_and_one_background_refresh() {
    let server = TestDnsServer::start("back.test DELAY 2s 10 A 192.0.2.1")
        .await
        .expect("test DNS server");
    let dns = Dns::new(&config(&server, true)).expect("resolver");

    // First visit: asks the server (and waits for its 2 s answer).
    assert_eq!(
        dns.ipv4("back.test").await,
        Ok(vec![Ipv4Addr::new(192, 0, 2, 1)])
    );
    assert_eq!(server.queries_for("back.test"), 1);
    // Used again at once: a hit, not near expiry, no refresh.
    assert_eq!(
        dns.ipv4("back.test").await,
        Ok(vec![Ipv4Addr::new(192, 0, 2, 1)])
    );
    assert_eq!(prefetches(&dns), (0, 0, 0, 0));

    // The answer changes at the server; the client comes back late in the TTL.
    server.set_zone("back.test DELAY 2s 10 A 192.0.2.2");
    tokio::time::sleep(INTO_WINDOW).await;
    let (a, b) = tokio::join!(dns.ipv4("back.test"), dns.ipv4("back.test"));
    // Both got the cached answer while the (2 s) refresh is still pending: nobody waited.
    assert_eq!(a, Ok(vec![Ipv4Addr::new(192, 0, 2, 1)]));
    assert_eq!(b, a);
    assert_eq!(prefetches(&dns), (1, 0, 0, 0), "one refresh for two uses");

    eventually("the refresh stored its answer", || prefetches(&dns).1 == 1).await;
    assert_eq!(server.queries_for("back.test"), 2);
    // The next session finds the new answer in the cache: no query, no wait.
    let hits_before = hits(&dns);
    assert_eq!(
        dns.ipv4("back.test").await,
        Ok(vec![Ipv4Addr::new(192, 0, 2, 2)])
    );
    assert_eq!(hits(&dns), hits_before + 1);
    assert_eq!(server.queries_for("back.test"), 2);
    assert_eq!(prefetches(&dns), (1, 1, 0, 0));
}

#[tokio::test]
async fn negative_answers_are_cached_and_prefetched_too() {
    // DNSBL lookups are mostly NXDOMAIN: those must stay fresh as well.
    let server = TestDnsServer::start("$NEGATIVE_TTL 10\nlisted.bl.test A 127.0.0.2")
        .await
        .expect("test DNS server");
    let dns = Dns::new(&config(&server, true)).expect("resolver");
    let name = "1.2.0.192.bl.test";
    assert_eq!(dns.ipv4(name).await, Err(DnsError::NxDomain));
    assert_eq!(dns.ipv4(name).await, Err(DnsError::NxDomain));
    assert_eq!(server.queries_for(name), 1);
    tokio::time::sleep(INTO_WINDOW).await;
    assert_eq!(dns.ipv4(name).await, Err(DnsError::NxDomain));
    eventually("the refresh", || prefetches(&dns).1 == 1).await;
    assert_eq!(server.queries_for(name), 2);
    assert_eq!(prefetches(&dns), (1, 1, 0, 0));
}

#[tokio::test]
async fn one_time_clients_cause_no_prefetch() {
    let zone: String = (1..=20)
        .map(|d| format!("{d}.2.0.192.in-addr.arpa 10 PTR host{d}.test\n"))
        .collect();
    let server = TestDnsServer::start(&zone).await.expect("test DNS server");
    let dns = Dns::new(&config(&server, true)).expect("resolver");
    for d in 1..=20 {
        assert_eq!(dns.ptr(v4(d)).await, Ok(vec![format!("host{d}.test")]));
    }
    // Nobody comes back; time passes into every entry's prefetch window.
    tokio::time::sleep(INTO_WINDOW).await;
    assert_eq!(prefetches(&dns), (0, 0, 0, 0));
    assert_eq!(server.queries(), 20);
    assert_eq!(hits(&dns), 0);
}

#[tokio::test]
async fn refreshes_beyond_the_bound_wait_then_are_dropped_and_counted() {
    let server = TestDnsServer::start(
        "slow.test DELAY 2s 10 A 192.0.2.1\nfast1.test 10 A 192.0.2.2\nfast2.test 10 A 192.0.2.3",
    )
    .await
    .expect("test DNS server");
    // One refresh in flight, two started and unfinished at most.
    let dns = Dns::with_prefetch_limits(&config(&server, true), (1, 2)).expect("resolver");
    for name in ["fast1.test", "fast2.test", "slow.test"] {
        assert!(dns.ipv4(name).await.is_ok());
    }
    tokio::time::sleep(INTO_WINDOW).await;
    // slow.test's refresh takes the only slot for 2 s, fast1's waits for it ...
    assert!(dns.ipv4("slow.test").await.is_ok());
    assert!(dns.ipv4("fast1.test").await.is_ok());
    // ... so fast2's is dropped, yet its session gets its answer.
    assert_eq!(
        dns.ipv4("fast2.test").await,
        Ok(vec![Ipv4Addr::new(192, 0, 2, 3)])
    );
    assert_eq!(prefetches(&dns), (2, 0, 0, 1));
    assert_eq!(server.queries_for("fast2.test"), 1);

    // The waiting refresh runs once the slot is free; a later use of the dropped entry may
    // refresh it.
    eventually("slow.test and fast1.test refreshed", || {
        prefetches(&dns).1 == 2
    })
    .await;
    assert_eq!(server.queries_for("fast1.test"), 2);
    assert!(dns.ipv4("fast2.test").await.is_ok());
    eventually("fast2.test refreshed", || prefetches(&dns).1 == 3).await;
    assert_eq!(prefetches(&dns), (3, 3, 0, 1));
    assert_eq!(server.queries_for("fast2.test"), 2);
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_cached_answer() {
    let server = TestDnsServer::start("flaky.test 10 A 192.0.2.1")
        .await
        .expect("test DNS server");
    let dns = Dns::new(&config(&server, true)).expect("resolver");
    assert!(dns.ipv4("flaky.test").await.is_ok());
    server.set_zone("flaky.test SERVFAIL");
    tokio::time::sleep(INTO_WINDOW).await;
    assert!(dns.ipv4("flaky.test").await.is_ok());
    eventually("the refresh failed", || prefetches(&dns).2 == 1).await;
    // Still answered from the cache, and not refreshed again (one try per entry).
    assert_eq!(
        dns.ipv4("flaky.test").await,
        Ok(vec![Ipv4Addr::new(192, 0, 2, 1)])
    );
    assert_eq!(prefetches(&dns), (1, 0, 1, 0));
    assert_eq!(server.queries_for("flaky.test"), 2);
}

#[tokio::test]
async fn prefetch_off_sends_no_background_query() {
    let server = TestDnsServer::start("back.test 10 A 192.0.2.1")
        .await
        .expect("test DNS server");
    let dns = Dns::new(&config(&server, false)).expect("resolver");
    assert!(dns.ipv4("back.test").await.is_ok());
    tokio::time::sleep(INTO_WINDOW).await;
    assert!(dns.ipv4("back.test").await.is_ok());
    assert!(dns.ipv4("back.test").await.is_ok());
    // A refresh is counted as started before it is sent: none was.
    assert_eq!(prefetches(&dns), (0, 0, 0, 0));
    assert_eq!(hits(&dns), 2);
    assert_eq!(server.queries(), 1);
}

#[tokio::test]
async fn no_cache_no_prefetch() {
    let server = TestDnsServer::start("back.test 10 A 192.0.2.1")
        .await
        .expect("test DNS server");
    let dns = Dns::new(&DnsConfig {
        cache_size: 0,
        ..config(&server, true)
    })
    .expect("resolver");
    assert!(dns.ipv4("back.test").await.is_ok());
    assert!(dns.ipv4("back.test").await.is_ok());
    assert!(dns.cache_stats().is_none());
    assert_eq!(server.queries(), 2);
}
