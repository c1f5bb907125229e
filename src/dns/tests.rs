//! Tests of the DNS layer, all against a loopback [`TestDnsServer`]: never the system resolver.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;
use crate::testing::TestDnsServer;

const ZONE: &str = r#"
# name                      [ttl]  type   data
10.2.0.192.in-addr.arpa      300   PTR    good.fcrdns.test
11.2.0.192.in-addr.arpa            PTR    Mixed.FCrDNS.Test.
11.2.0.192.in-addr.arpa            PTR    other.fcrdns.test
good.fcrdns.test                   A      192.0.2.10
good.fcrdns.test                   AAAA   2001:db8::10
alias.fcrdns.test                  CNAME  good.fcrdns.test
textonly.test                      TXT    "v=spf1 -all"
multi.test                         TXT    "part one, " "part two"
multi.test                         TXT    second
v4only.test                        A      192.0.2.4
v6only.test                        AAAA   2001:db8::6
halfbroken.test                    A      192.0.2.5
halfbroken.test                    SERVFAIL AAAA
brokenv4.test                      SERVFAIL A
brokenv4.test                      TXT    "exists"
100.2.0.192.bl.test                A      127.0.0.2
100.2.0.192.bl.test                TXT    "Listed: see https://bl.test/q?192.0.2.100"
50.2.0.192.in-addr.arpa            SERVFAIL
51.2.0.192.in-addr.arpa            DROP            # never answered
52.2.0.192.in-addr.arpa            REFUSED
53.2.0.192.in-addr.arpa            DELAY 2s PTR slow.fcrdns.test
short.test                   1     A      192.0.2.77
*.wild.test                        A      192.0.2.1
"#;

fn config(server: &TestDnsServer, timeout: Duration) -> DnsConfig {
    DnsConfig {
        nameservers: vec![server.addr],
        timeout,
        cache_size: 1000,
        max_concurrent: 16,
        ..DnsConfig::default()
    }
}

async fn setup(zone: &str) -> (TestDnsServer, Dns) {
    let server = TestDnsServer::start(zone).await.expect("test DNS server");
    let dns = Dns::new(&config(&server, Duration::from_secs(3))).expect("resolver");
    (server, dns)
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

#[test]
fn error_classes() {
    for e in [DnsError::NxDomain, DnsError::NoData] {
        assert!(e.is_negative() && !e.is_temporary(), "{e}");
    }
    for e in [
        DnsError::ServFail,
        DnsError::Refused,
        DnsError::Timeout,
        DnsError::Other("x".into()),
    ] {
        assert!(e.is_temporary() && !e.is_negative(), "{e}");
    }
    assert_eq!(DnsError::NxDomain.to_string(), "NXDOMAIN");
    assert_eq!(DnsError::NoData.to_string(), "no data");
    assert_eq!(DnsError::Other("boom".into()).to_string(), "boom");
    assert_eq!(DnsError::ServFail.label(), "servfail");
}

#[test]
fn reversed_ip_forms() {
    assert_eq!(reversed_ip(v4(127, 0, 0, 2)), "2.0.0.127");
    assert_eq!(reversed_ip(v4(192, 0, 2, 100)), "100.2.0.192");
    let v6: Ipv6Addr = "2001:db8::1".parse().unwrap();
    assert_eq!(
        reversed_ip(IpAddr::V6(v6)),
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"
    );
    let v6: Ipv6Addr = "2001:db8:abcd:12::fe".parse().unwrap();
    assert_eq!(
        reversed_ip(IpAddr::V6(v6)),
        "e.f.0.0.0.0.0.0.0.0.0.0.0.0.0.0.2.1.0.0.d.c.b.a.8.b.d.0.1.0.0.2"
    );
    let mapped: Ipv6Addr = "::ffff:192.0.2.10".parse().unwrap();
    assert_eq!(reversed_ip(IpAddr::V6(mapped)), "10.2.0.192");
}

#[test]
fn combine_rules() {
    let a = || Ok(vec![v4(192, 0, 2, 1)]);
    let aaaa = || Ok(vec!["2001:db8::1".parse::<IpAddr>().unwrap()]);
    assert_eq!(combine_ips(a(), aaaa()).unwrap().len(), 2);
    assert_eq!(combine_ips(a(), Err(DnsError::ServFail)).unwrap().len(), 1);
    assert_eq!(
        combine_ips(Err(DnsError::Timeout), aaaa()).unwrap().len(),
        1
    );
    assert_eq!(combine_ips(Err(DnsError::NoData), aaaa()).unwrap().len(), 1);
    use DnsError::*;
    for (x, y, want) in [
        (NxDomain, NxDomain, NxDomain),
        (NoData, NoData, NoData),
        (NoData, NxDomain, NoData),
        (NxDomain, NoData, NoData),
        (NoData, ServFail, ServFail),
        (NxDomain, Timeout, Timeout),
        (Refused, NxDomain, Refused),
        (Timeout, ServFail, Timeout),
    ] {
        assert_eq!(
            combine_ips(Err(x.clone()), Err(y.clone())),
            Err(want),
            "{x:?} + {y:?}"
        );
    }
}

#[test]
fn new_needs_no_runtime_and_rejects_nothing_valid() {
    let config = DnsConfig {
        nameservers: vec!["127.0.0.1:5353".parse().unwrap()],
        ..DnsConfig::default()
    };
    let dns = Dns::new(&config).unwrap();
    assert_eq!(dns.nameservers(), config.nameservers);
    assert_eq!(dns.timeout(), config.timeout);
    assert_eq!(dns.in_flight(), 0);
    assert!(format!("{dns:?}").contains("127.0.0.1:5353"));
}

#[tokio::test]
async fn ptr_found_lowercased_without_dot() {
    let (_server, dns) = setup(ZONE).await;
    assert_eq!(
        dns.ptr(v4(192, 0, 2, 10)).await.unwrap(),
        vec!["good.fcrdns.test"]
    );
    let mut names = dns.ptr(v4(192, 0, 2, 11)).await.unwrap();
    names.sort();
    assert_eq!(names, vec!["mixed.fcrdns.test", "other.fcrdns.test"]);
    // An IPv4-mapped address is looked up as IPv4.
    let mapped: IpAddr = "::ffff:192.0.2.10".parse().unwrap();
    assert_eq!(dns.ptr(mapped).await.unwrap(), vec!["good.fcrdns.test"]);
}

#[tokio::test]
async fn ptr_ipv6() {
    let ip: IpAddr = "2001:db8::25".parse().unwrap();
    let zone = format!("{}.ip6.arpa PTR six.fcrdns.test", reversed_ip(ip));
    let (_server, dns) = setup(&zone).await;
    assert_eq!(dns.ptr(ip).await.unwrap(), vec!["six.fcrdns.test"]);
}

#[tokio::test]
async fn ptr_failures_keep_their_kind() {
    let (_server, dns) = setup(ZONE).await;
    assert_eq!(dns.ptr(v4(192, 0, 2, 99)).await, Err(DnsError::NxDomain));
    assert_eq!(dns.ptr(v4(192, 0, 2, 50)).await, Err(DnsError::ServFail));
    assert_eq!(dns.ptr(v4(192, 0, 2, 52)).await, Err(DnsError::Refused));
}

#[tokio::test]
async fn dropped_query_times_out_within_the_deadline() {
    let server = TestDnsServer::start(ZONE).await.unwrap();
    let timeout = Duration::from_millis(500);
    let dns = Dns::new(&config(&server, timeout)).unwrap();
    let started = Instant::now();
    assert_eq!(dns.ptr(v4(192, 0, 2, 51)).await, Err(DnsError::Timeout));
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(400), "{elapsed:?}");
    assert!(
        elapsed < timeout + Duration::from_millis(500),
        "{elapsed:?}"
    );
    // Within the deadline there was room for a second try.
    assert!(server.queries() >= 1);

    // A slow answer (DELAY 2s) is a timeout too, and is not cached as anything.
    let started = Instant::now();
    assert_eq!(dns.ptr(v4(192, 0, 2, 53)).await, Err(DnsError::Timeout));
    assert!(started.elapsed() < timeout + Duration::from_millis(500));
}

#[tokio::test]
async fn ips_follow_cnames_and_merge_families() {
    let (_server, dns) = setup(ZONE).await;
    let want: Vec<IpAddr> = vec![v4(192, 0, 2, 10), "2001:db8::10".parse().unwrap()];
    assert_eq!(dns.ips("good.fcrdns.test").await.unwrap(), want);
    assert_eq!(dns.ips("alias.fcrdns.test").await.unwrap(), want);
    // Trailing dot and case do not matter.
    assert_eq!(dns.ips("ALIAS.fcrdns.test.").await.unwrap(), want);
    assert_eq!(
        dns.ips("v4only.test").await.unwrap(),
        vec![v4(192, 0, 2, 4)]
    );
    assert_eq!(
        dns.ips("v6only.test").await.unwrap(),
        vec!["2001:db8::6".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(
        dns.ips("host.wild.test").await.unwrap(),
        vec![v4(192, 0, 2, 1)]
    );
}

#[tokio::test]
async fn ips_nodata_versus_nxdomain() {
    let (_server, dns) = setup(ZONE).await;
    assert_eq!(dns.ips("textonly.test").await, Err(DnsError::NoData));
    assert_eq!(dns.ips("nowhere.test").await, Err(DnsError::NxDomain));
    // An empty non-terminal exists.
    assert_eq!(dns.ips("fcrdns.test").await, Err(DnsError::NoData));
    // Impossible names cannot exist, and are not sent.
    assert_eq!(dns.ips("a..b.test").await, Err(DnsError::NxDomain));
    assert_eq!(dns.ips("").await, Err(DnsError::NxDomain));
    let long = format!("{}.test", "x".repeat(64));
    assert_eq!(dns.ips(&long).await, Err(DnsError::NxDomain));
    assert_eq!(dns.txt(&long).await, Err(DnsError::NxDomain));
}

#[tokio::test]
async fn ips_partial_failures() {
    let (_server, dns) = setup(ZONE).await;
    // A answers, AAAA fails temporarily: the data wins.
    assert_eq!(
        dns.ips("halfbroken.test").await.unwrap(),
        vec![v4(192, 0, 2, 5)]
    );
    // A fails temporarily, AAAA has no data: the temporary failure wins.
    assert_eq!(dns.ips("brokenv4.test").await, Err(DnsError::ServFail));
}

#[tokio::test]
async fn txt_joins_strings_per_record() {
    let (_server, dns) = setup(ZONE).await;
    assert_eq!(
        dns.txt("100.2.0.192.bl.test").await.unwrap(),
        vec!["Listed: see https://bl.test/q?192.0.2.100"]
    );
    let mut multi = dns.txt("multi.test").await.unwrap();
    multi.sort();
    assert_eq!(multi, vec!["part one, part two", "second"]);
    assert_eq!(dns.txt("good.fcrdns.test").await, Err(DnsError::NoData));
    assert_eq!(dns.txt("nowhere.test").await, Err(DnsError::NxDomain));
}

#[tokio::test]
async fn large_answer_falls_back_to_tcp() {
    let long = "z".repeat(3000);
    let (server, dns) = setup(&format!("big.test TXT \"{long}\"")).await;
    assert_eq!(dns.txt("big.test").await.unwrap(), vec![long]);
    // Once truncated over UDP, once in full over TCP.
    assert_eq!(server.queries_for("big.test"), 2);
}

#[tokio::test]
async fn ipv4_of_a_dnsbl_name() {
    let (_server, dns) = setup(ZONE).await;
    let listed = format!("{}.bl.test", reversed_ip(v4(192, 0, 2, 100)));
    assert_eq!(
        dns.ipv4(&listed).await.unwrap(),
        vec![Ipv4Addr::new(127, 0, 0, 2)]
    );
    let clean = format!("{}.bl.test", reversed_ip(v4(192, 0, 2, 101)));
    assert_eq!(dns.ipv4(&clean).await, Err(DnsError::NxDomain));
    assert_eq!(dns.ipv4("v6only.test").await, Err(DnsError::NoData));
}

#[tokio::test]
async fn positive_answers_are_cached() {
    let (server, dns) = setup(ZONE).await;
    dns.ptr(v4(192, 0, 2, 10)).await.unwrap();
    dns.ips("alias.fcrdns.test").await.unwrap();
    let before = server.queries();
    assert_eq!(
        dns.ptr(v4(192, 0, 2, 10)).await.unwrap(),
        vec!["good.fcrdns.test"]
    );
    assert_eq!(dns.ips("alias.fcrdns.test").await.unwrap().len(), 2);
    assert_eq!(server.queries(), before, "answered from the cache");

    dns.clear_cache();
    dns.ptr(v4(192, 0, 2, 10)).await.unwrap();
    assert_eq!(server.queries(), before + 1);
}

#[tokio::test]
async fn cache_size_zero_disables_the_cache() {
    let server = TestDnsServer::start(ZONE).await.unwrap();
    let dns = Dns::new(&DnsConfig {
        cache_size: 0,
        ..config(&server, Duration::from_secs(3))
    })
    .unwrap();
    dns.ipv4("v4only.test").await.unwrap();
    dns.ipv4("v4only.test").await.unwrap();
    assert_eq!(server.queries(), 2);
}

#[tokio::test]
async fn ttls_are_respected() {
    let (server, dns) = setup(ZONE).await;
    assert_eq!(
        dns.ipv4("short.test").await.unwrap(),
        vec![Ipv4Addr::new(192, 0, 2, 77)]
    );
    dns.ipv4("short.test").await.unwrap();
    assert_eq!(server.queries_for("short.test"), 1);
    // The record's TTL is 1s: after it, the resolver asks again and sees the new zone.
    server.set_zone("short.test 1 A 192.0.2.78");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        dns.ipv4("short.test").await.unwrap(),
        vec![Ipv4Addr::new(192, 0, 2, 78)]
    );
    assert_eq!(server.queries_for("short.test"), 2);
}

#[tokio::test]
async fn negative_answers_are_cached_per_soa() {
    let (server, dns) = setup(&format!("$NEGATIVE_TTL 1\n{ZONE}")).await;
    assert_eq!(dns.ips("nowhere.test").await, Err(DnsError::NxDomain));
    assert_eq!(dns.ips("nowhere.test").await, Err(DnsError::NxDomain));
    assert_eq!(dns.txt("v4only.test").await, Err(DnsError::NoData));
    assert_eq!(dns.txt("v4only.test").await, Err(DnsError::NoData));
    assert_eq!(server.queries_for("nowhere.test"), 2, "A and AAAA, once");
    assert_eq!(server.queries_for("v4only.test"), 1);
    // After the SOA minimum (1s here) they are asked again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(dns.txt("v4only.test").await, Err(DnsError::NoData));
    assert_eq!(server.queries_for("v4only.test"), 2);
}

#[tokio::test]
async fn temporary_failures_are_not_cached() {
    let (server, dns) = setup(ZONE).await;
    assert_eq!(dns.ptr(v4(192, 0, 2, 50)).await, Err(DnsError::ServFail));
    assert_eq!(dns.ptr(v4(192, 0, 2, 50)).await, Err(DnsError::ServFail));
    assert_eq!(dns.ptr(v4(192, 0, 2, 52)).await, Err(DnsError::Refused));
    assert_eq!(dns.ptr(v4(192, 0, 2, 52)).await, Err(DnsError::Refused));
    assert_eq!(server.queries_for("50.2.0.192.in-addr.arpa"), 2);
    assert_eq!(server.queries_for("52.2.0.192.in-addr.arpa"), 2);
    // Fixed on the server: the next lookup sees it.
    server.set_zone("50.2.0.192.in-addr.arpa PTR fixed.test");
    assert_eq!(
        dns.ptr(v4(192, 0, 2, 50)).await.unwrap(),
        vec!["fixed.test"]
    );
}

#[tokio::test]
async fn concurrency_is_bounded() {
    let zone: String = (0..10)
        .map(|i| format!("n{i}.slow.test DELAY 200ms A 192.0.2.{i}\n"))
        .collect();
    let server = TestDnsServer::start(&zone).await.unwrap();
    let dns = Arc::new(
        Dns::new(&DnsConfig {
            max_concurrent: 2,
            ..config(&server, Duration::from_secs(10))
        })
        .unwrap(),
    );
    let started = Instant::now();
    let lookups: Vec<_> = (0..10)
        .map(|i| {
            let dns = dns.clone();
            tokio::spawn(async move { dns.ipv4(&format!("n{i}.slow.test")).await })
        })
        .collect();
    for (i, lookup) in lookups.into_iter().enumerate() {
        let ips = lookup.await.unwrap().unwrap();
        assert_eq!(ips, vec![Ipv4Addr::new(192, 0, 2, i as u8)]);
    }
    let elapsed = started.elapsed();
    assert_eq!(server.queries(), 10);
    assert_eq!(server.max_in_flight(), 2);
    // Five rounds of two.
    assert!(elapsed >= Duration::from_millis(950), "{elapsed:?}");
    assert_eq!(dns.in_flight(), 0);
}

#[tokio::test]
async fn waiting_for_a_slot_counts_against_the_deadline() {
    let server = TestDnsServer::start(ZONE).await.unwrap();
    let timeout = Duration::from_millis(500);
    let dns = Arc::new(
        Dns::new(&DnsConfig {
            max_concurrent: 1,
            ..config(&server, timeout)
        })
        .unwrap(),
    );
    // Five never-answered lookups queue up for the only slot, then an answerable one: had
    // the wait not counted, the last would take five timeouts.
    let started = Instant::now();
    let mut lookups = Vec::new();
    for _ in 0..5 {
        let dns = dns.clone();
        lookups.push(tokio::spawn(async move {
            dns.ptr(v4(192, 0, 2, 51)).await.map(|_| ())
        }));
    }
    let last = {
        let dns = dns.clone();
        tokio::spawn(async move { dns.ipv4("v4only.test").await.map(|_| ()) })
    };
    for lookup in lookups {
        assert_eq!(lookup.await.unwrap(), Err(DnsError::Timeout));
    }
    // It may have got the slot just in time; it must not have waited for it any longer.
    let _ = last.await.unwrap();
    let elapsed = started.elapsed();
    assert!(
        elapsed < timeout + Duration::from_millis(500),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn stats_and_observer() {
    let (_server, dns) = setup(ZONE).await;
    let seen: Arc<Mutex<Vec<(&'static str, &'static str)>>> = Arc::default();
    let sink = seen.clone();
    dns.set_observer(Arc::new(move |kind, outcome, seconds| {
        assert!((0.0..10.0).contains(&seconds));
        sink.lock().unwrap().push((kind, outcome));
    }));
    dns.ptr(v4(192, 0, 2, 10)).await.unwrap();
    dns.ptr(v4(192, 0, 2, 50)).await.unwrap_err();
    dns.ips("v4only.test").await.unwrap();
    dns.txt("nowhere.test").await.unwrap_err();
    dns.ipv4("a..b").await.unwrap_err();

    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("a", "nxdomain"),
            ("a", "ok"),
            ("aaaa", "nodata"),
            ("ptr", "ok"),
            ("ptr", "servfail"),
            ("txt", "nxdomain"),
        ]
    );
    let stats = dns.stats();
    assert_eq!(stats.queries.load(Ordering::Relaxed), 6);
    assert_eq!(stats.ok.load(Ordering::Relaxed), 2);
    assert_eq!(stats.nx_domain.load(Ordering::Relaxed), 2);
    assert_eq!(stats.no_data.load(Ordering::Relaxed), 1);
    assert_eq!(stats.serv_fail.load(Ordering::Relaxed), 1);
    assert_eq!(stats.timeout.load(Ordering::Relaxed), 0);
}

#[test]
fn works_with_a_server_in_its_own_thread() {
    let server = TestDnsServer::start_in_thread(ZONE).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dns = Dns::new(&config(&server, Duration::from_secs(3))).unwrap();
    let names = runtime.block_on(dns.ptr(v4(192, 0, 2, 10))).unwrap();
    assert_eq!(names, vec!["good.fcrdns.test"]);
    assert_eq!(server.queries(), 1);
}
