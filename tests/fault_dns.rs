//! The DNS fault suite: what an SMTP client sees when the DNS server behind mxsentry fails.
//!
//! The real daemon, its loopback test DNS server made to fail on purpose: SERVFAIL, REFUSED,
//! queries dropped, answers slower than `[dns] timeout`, the server stopped (port closed) — and
//! then back. Every session must be answered within the lookup deadline with the configured
//! temporary verdict, never a 5xx caused by DNS, and full service must return as soon as DNS
//! does. Checks whose action cannot refuse, and DNS lists (by default), never refuse because a
//! lookup failed: they are counted and logged.

mod common;

use std::time::{Duration, Instant};

use common::{reply_text, Client, Daemon};
use mxsentry::protocol::reply::Reply;

/// One healthy client per phase (a fresh address each time, so no answer comes from the
/// resolver's cache), and one listed in bl.test.
fn healthy_zone(clients: &[u8]) -> String {
    let mut z = String::new();
    for n in clients {
        z.push_str(&format!(
            "{n}.2.0.192.in-addr.arpa PTR mx.s{n}.fcrdns.test\nmx.s{n}.fcrdns.test A 192.0.2.{n}\n"
        ));
    }
    z.push_str("200.2.0.192.bl.test A 127.0.0.2\n");
    z.push_str("201.2.0.192.bl.test A 127.0.0.2\n");
    for n in [200, 201] {
        z.push_str(&format!(
            "{n}.2.0.192.in-addr.arpa PTR mx.s{n}.fcrdns.test\nmx.s{n}.fcrdns.test A 192.0.2.{n}\n"
        ));
    }
    z
}

/// The RCPT reply for a session from `ip`, and how long after CONNECT it came. An accepted
/// message is finished (end of message), so its decision line is logged.
fn session(d: &Daemon, ip: &str) -> (Reply, Duration) {
    let mut c = Client::tcp(d.port);
    c.negotiate();
    let t0 = Instant::now();
    c.connect("[unverified]", ip);
    c.helo("mail.sender.test");
    c.mail("someone@sender.test");
    let r = c.rcpt("u@example.org").expect("RCPT answered");
    let t = t0.elapsed();
    if r == Reply::Continue {
        c.message();
    }
    (r, t)
}

const FAULTS: &str = "[dns]\ntimeout = \"1s\"\n[[dnsbl.zones]]\nzone = \"bl.test\"\n";

/// Longest a session may wait: the lookups' deadline (3 × timeout) plus generous slack for a
/// slow, busy machine. The measured figures are printed.
const ANSWER_WITHIN: Duration = Duration::from_secs(8);

#[test]
fn dns_faults_give_the_temporary_verdict_in_time_and_service_returns_with_dns() {
    let mut d = Daemon::start_with_zone("", FAULTS, &healthy_zone(&[10]));
    let (r, t) = session(&d, "192.0.2.10");
    assert_eq!(r, Reply::Continue, "healthy DNS: accepted");
    println!("healthy: {t:?}");
    let (r, _) = session(&d, "192.0.2.200");
    assert!(reply_text(&r).starts_with("550 5.7.1"), "listed: {r:?}");

    // Each fault for every name, then a fresh client (no cached answer can hide the fault).
    let faults = [
        (
            "SERVFAIL",
            "*.arpa SERVFAIL\n*.bl.test SERVFAIL\n*.fcrdns.test SERVFAIL\n",
        ),
        (
            "REFUSED",
            "*.arpa REFUSED\n*.bl.test REFUSED\n*.fcrdns.test REFUSED\n",
        ),
        (
            "dropped",
            "*.arpa DROP\n*.bl.test DROP\n*.fcrdns.test DROP\n",
        ),
        (
            "slower than the timeout",
            "*.arpa DELAY 3s\n*.bl.test DELAY 3s\n*.fcrdns.test DELAY 3s\n",
        ),
    ];
    for (client, (what, zone)) in (20..).zip(faults) {
        d.dns.set_zone(zone);
        let ip = format!("192.0.2.{client}");
        let (r, t) = session(&d, &ip);
        println!("{what}: {} after {t:?}", reply_text(&r));
        assert_eq!(
            reply_text(&r),
            "451 4.4.3 Temporary DNS failure, please try again later",
            "{what}: the rDNS check (tempfail) cannot decide: 4xx"
        );
        assert!(t < ANSWER_WITHIN, "{what}: answered after {t:?}");
    }

    // The DNS server dies: its port is closed.
    d.dns.stop();
    let (r, t) = session(&d, "192.0.2.30");
    println!("server stopped: {} after {t:?}", reply_text(&r));
    assert!(reply_text(&r).starts_with("451 4.4.3"), "stopped: {r:?}");
    assert!(t < ANSWER_WITHIN, "stopped: answered after {t:?}");
    // A listed client is never rejected for what DNS could not say.
    let (r, _) = session(&d, "192.0.2.201");
    assert!(
        reply_text(&r).starts_with("451 4.4.3"),
        "listed, DNS down: {r:?}"
    );

    // DNS is back: full service at once (failures are never cached).
    d.dns.restart().unwrap();
    d.dns.set_zone(&healthy_zone(&[40]));
    let back = Instant::now();
    let (r, t) = session(&d, "192.0.2.40");
    println!(
        "DNS back: {r:?} after {t:?} ({:?} after the restart)",
        back.elapsed()
    );
    assert_eq!(r, Reply::Continue, "DNS back: accepted again");
    let (r, _) = session(&d, "192.0.2.201");
    assert!(
        reply_text(&r).starts_with("550 5.7.1"),
        "listed again: {r:?}"
    );
    assert!(
        d.metric("mxsentry_dns_errors_total{error=\"servfail\",kind=\"ptr\"}") >= 1.0,
        "SERVFAIL counted"
    );
    assert!(
        d.metric("mxsentry_dns_errors_total{error=\"timeout\",kind=\"ptr\"}") >= 1.0,
        "timeouts counted"
    );
    assert!(d.is_running());
}

/// With every rDNS action `off`, a PTR failure must not touch the verdict (it answered
/// `451 4.4.3` to everyone), and with nothing that needs it the PTR is not even asked.
#[test]
fn an_rdns_check_that_is_off_never_refuses_and_is_not_looked_up() {
    let zone = "50.2.0.192.in-addr.arpa SERVFAIL\n51.2.0.192.in-addr.arpa DROP\n";
    let off = "[dns]\ntimeout = \"1s\"\n[rdns]\nno_ptr = \"off\"\nforged = \"off\"\n\
               dynamic = \"off\"\n[[dnsbl.zones]]\nzone = \"bl.test\"\n";
    let d = Daemon::start_with_zone("", off, zone);
    for ip in ["192.0.2.50", "192.0.2.51"] {
        let (r, t) = session(&d, ip);
        assert_eq!(r, Reply::Continue, "{ip}: {r:?}");
        println!("{ip}: accepted after {t:?}");
    }
    assert_eq!(d.dns.queries_for("50.2.0.192.in-addr.arpa"), 0);
    assert_eq!(d.dns.queries_for("51.2.0.192.in-addr.arpa"), 0);

    // Greylisting keys verified clients by their rDNS domain: the PTR is looked up, and its
    // failure still does not count (greylisting keys the client by its network instead).
    let greylisting = "[dns]\ntimeout = \"1s\"\n[rdns]\nno_ptr = \"off\"\nforged = \"off\"\n\
                       dynamic = \"off\"\n[[dnsbl.zones]]\nzone = \"bl.test\"\n\
                       [greylist]\nenabled = true\npool_by_rdns = true\n";
    let d = Daemon::start_with_zone("", greylisting, zone);
    let (r, _) = session(&d, "192.0.2.50");
    assert!(
        reply_text(&r).starts_with("450 4.7.1 Greylisted"),
        "greylisting decides, not the failed PTR: {r:?}"
    );
    assert!(d.dns.queries_for("50.2.0.192.in-addr.arpa") >= 1);

    // An rDNS check that can only greylist makes a failed PTR greylist, not tempfail.
    let only_greylist = "[dns]\ntimeout = \"1s\"\n[rdns]\nno_ptr = \"off\"\nforged = \"off\"\n\
                         dynamic = \"greylist\"\n[greylist]\nenabled = false\n";
    let d = Daemon::start_with_zone("", only_greylist, zone);
    let (r, _) = session(&d, "192.0.2.50");
    assert!(
        reply_text(&r).starts_with("450 4.7.1 Greylisted"),
        "dynamic = greylist: a failed PTR selects the client for greylisting: {r:?}"
    );
}

/// A DNS list that cannot be reached is ignored by default (counted, logged); a zone may
/// choose to tempfail instead. An operator's refusal (127.255.255.x) is never a listing.
#[test]
fn an_unreachable_list_is_ignored_unless_the_zone_says_tempfail() {
    let zone = "\
60.2.0.192.bl.test SERVFAIL
61.2.0.192.bl.test DROP
62.2.0.192.bl.test A 127.255.255.254
63.2.0.192.strict.test DROP
64.2.0.192.bl.test A 127.0.0.2
";
    let lists = "[dns]\ntimeout = \"1s\"\n[rdns]\nno_ptr = \"off\"\nforged = \"off\"\n\
                 dynamic = \"off\"\n\
                 [[dnsbl.zones]]\nzone = \"bl.test\"\n\
                 [[dnsbl.zones]]\nzone = \"strict.test\"\ntemp_failure = \"tempfail\"\n";
    let d = Daemon::start_with_zone("", lists, zone);
    for (ip, what) in [
        ("192.0.2.60", "SERVFAIL"),
        ("192.0.2.61", "timeout"),
        ("192.0.2.62", "127.255.255.254"),
    ] {
        let (r, t) = session(&d, ip);
        println!("bl.test {what}: {r:?} after {t:?}");
        assert_eq!(r, Reply::Continue, "bl.test {what}: ignored, accepted");
    }
    let (r, t) = session(&d, "192.0.2.63");
    println!("strict.test timeout: {} after {t:?}", reply_text(&r));
    assert_eq!(
        reply_text(&r),
        "451 4.4.3 Temporary DNS failure, please try again later",
        "strict.test (temp_failure = tempfail) could have listed the client"
    );
    assert!(t < ANSWER_WITHIN, "answered after {t:?}");
    let (r, _) = session(&d, "192.0.2.64");
    assert!(
        reply_text(&r).starts_with("550 5.7.1"),
        "a listing still rejects"
    );

    let log = d.wait_log("DNS list gave no usable answer");
    assert!(
        log.contains("zone=bl.test") && log.contains("ignored: counted as not listed"),
        "{log}"
    );
    assert!(
        log.contains("findings=\"dnsbl.error(bl.test: 60.2.0.192.bl.test -> SERVFAIL)"),
        "{log}"
    );
    assert!(d.metric("mxsentry_dnsbl_results_total{result=\"error\",zone=\"bl.test\"}") >= 1.0);
    assert!(d.metric("mxsentry_dnsbl_results_total{result=\"timeout\",zone=\"bl.test\"}") >= 1.0);
    assert!(d.metric("mxsentry_dnsbl_results_total{result=\"blocked\",zone=\"bl.test\"}") >= 1.0);

    // `[dns] temp_failure = "ignore"` lets rDNS failures through too.
    let ignore = "[dns]\ntimeout = \"1s\"\ntemp_failure = \"ignore\"\n";
    let d = Daemon::start_with_zone("", ignore, "70.2.0.192.in-addr.arpa SERVFAIL\n");
    let (r, _) = session(&d, "192.0.2.70");
    assert_eq!(r, Reply::Continue);
}
