use super::*;

use crate::checks::dnsbl::probe::test_points;
use crate::checks::dnsbl::ZoneKind;
use crate::config::DnsblZone;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// The answers of an IP zone's test points, in `test_points` order: 127.0.0.2, 127.0.0.1,
/// ::ffff:7f00:2, ::ffff:7f00:1.
fn ip_zone(answers: [TestAnswer; 4]) -> ProbeVerdict {
    let points = test_points(&DnsblZone::default(), ZoneKind::Ip)
        .into_iter()
        .map(|(p, _)| p);
    judge_probe(&points.zip(answers).collect::<Vec<_>>())
}

fn listed(code: &str) -> TestAnswer {
    Ok(vec![ip(code)])
}

fn nx() -> TestAnswer {
    Err(DnsError::NxDomain)
}

fn fail(reason: &str) -> ProbeVerdict {
    ProbeVerdict::Fail(reason.into())
}

#[test]
fn a_conforming_ip_zone_passes_with_or_without_ipv6_data() {
    assert_eq!(
        ip_zone([listed("127.0.0.2"), nx(), nx(), nx()]),
        ProbeVerdict::Pass
    );
    assert_eq!(
        ip_zone([listed("127.0.0.10"), Ok(vec![]), listed("127.0.0.2"), nx()]),
        ProbeVerdict::Pass
    );
    // An IPv6 point that gets no answer does not make the zone silent.
    assert_eq!(
        ip_zone([listed("127.0.0.2"), nx(), Err(DnsError::Timeout), nx()]),
        ProbeVerdict::Pass
    );
}

#[test]
fn broken_ip_zones_fail_with_the_reason() {
    // Retired list that lists nothing any more.
    assert_eq!(
        ip_zone([nx(), nx(), nx(), nx()]),
        fail("127.0.0.2 not listed")
    );
    // Wildcard: lists everything.
    let all = || listed("127.0.0.2");
    assert_eq!(
        ip_zone([all(), all(), all(), all()]),
        fail("127.0.0.1 listed")
    );
    // Wildcard for IPv6 names only.
    assert_eq!(
        ip_zone([all(), nx(), nx(), listed("127.0.0.2")]),
        fail("::ffff:7f00:1 listed")
    );
    // Public resolver refused by the operator: the refusal is the reason given.
    let refused = || listed("127.255.255.254");
    assert_eq!(
        ip_zone([refused(), refused(), nx(), nx()]),
        fail("answer 127.255.255.254 (refused by the list)")
    );
    // Squatted domain with a wildcard to a web server.
    assert_eq!(
        ip_zone([listed("198.51.100.7"), listed("198.51.100.7"), nx(), nx()]),
        fail("answer 198.51.100.7 outside 127.0.0.0/8 (wildcard or squatted domain)")
    );
}

#[test]
fn a_silent_zone_gives_no_verdict() {
    assert!(matches!(
        ip_zone([Err(DnsError::Timeout), nx(), nx(), nx()]),
        ProbeVerdict::NoAnswer(e) if e == "127.0.0.2: timeout"
    ));
    assert!(matches!(
        ip_zone([listed("127.0.0.2"), Err(DnsError::ServFail), nx(), nx()]),
        ProbeVerdict::NoAnswer(e) if e == "127.0.0.1: SERVFAIL"
    ));
    // A listing that must not be is known even when another point is silent.
    assert_eq!(
        ip_zone([Err(DnsError::Timeout), listed("127.0.0.2"), nx(), nx()]),
        fail("127.0.0.1 listed")
    );
}

#[test]
fn domain_zones_use_test_and_invalid() {
    let judge = |test: TestAnswer, invalid: TestAnswer| {
        let points = test_points(&DnsblZone::default(), ZoneKind::Domain)
            .into_iter()
            .map(|(p, _)| p);
        judge_probe(&points.zip([test, invalid]).collect::<Vec<_>>())
    };
    assert_eq!(judge(listed("127.0.1.2"), nx()), ProbeVerdict::Pass);
    assert_eq!(judge(nx(), nx()), fail("test not listed"));
    assert_eq!(
        judge(listed("127.0.1.2"), listed("127.0.1.2")),
        fail("invalid listed")
    );
}

fn no_answer() -> ProbeVerdict {
    ProbeVerdict::NoAnswer("127.0.0.2: timeout".into())
}

#[test]
fn state_machine_trusts_only_after_a_passed_probe() {
    let mut s = ZoneState::default();
    assert_eq!(
        s.health.distrust_reason().as_deref(),
        Some("not yet probed")
    );
    // No answer at start: still unknown (log-only), no change logged.
    assert_eq!(s.apply(&no_answer(), None, 100), None);
    assert_eq!((s.health.clone(), s.since), (Health::Unknown, None));
    let change = s.apply(&ProbeVerdict::Pass, None, 160).unwrap();
    assert_eq!((change.old, change.new), (Health::Unknown, Health::Healthy));
    assert_eq!(s.since, Some(160));
    // Passing again changes nothing.
    assert_eq!(s.apply(&ProbeVerdict::Pass, None, 220), None);
    assert_eq!(s.since, Some(160));
}

#[test]
fn state_machine_goes_bad_and_recovers() {
    let mut s = ZoneState::default();
    s.apply(&ProbeVerdict::Pass, None, 0);
    let c = s.apply(&fail("127.0.0.1 listed"), None, 60).unwrap();
    assert_eq!(c.old, Health::Healthy);
    assert_eq!(c.new, Health::Unhealthy("127.0.0.1 listed".into()));
    assert_eq!(
        s.health.distrust_reason().as_deref(),
        Some("127.0.0.1 listed")
    );
    // Same failure again: no new log line.
    assert_eq!(s.apply(&fail("127.0.0.1 listed"), None, 120), None);
    // Another failure: the reason changes (logged).
    assert!(s.apply(&fail("127.0.0.2 not listed"), None, 180).is_some());
    let c = s.apply(&ProbeVerdict::Pass, None, 240).unwrap();
    assert_eq!(c.new, Health::Healthy);
    assert_eq!(s.since, Some(240));
}

#[test]
fn state_machine_three_silent_probes_make_a_zone_unhealthy() {
    let mut s = ZoneState::default();
    s.apply(&ProbeVerdict::Pass, None, 0);
    assert_eq!(s.apply(&no_answer(), None, 60), None);
    assert_eq!(s.apply(&no_answer(), None, 120), None);
    assert!(
        s.health.is_healthy(),
        "two silent probes keep the last verdict"
    );
    let c = s.apply(&no_answer(), None, 180).unwrap();
    assert_eq!(c.new, Health::Unhealthy("no answer for 3 probes".into()));
    // Still silent: one line, not one per probe.
    assert_eq!(s.apply(&no_answer(), None, 240), None);
    assert!(s
        .apply(&ProbeVerdict::Pass, None, 300)
        .unwrap()
        .new
        .is_healthy());
    // The count starts again after an answer.
    assert_eq!(s.apply(&no_answer(), None, 360), None);
    assert_eq!(s.apply(&no_answer(), None, 420), None);
    assert!(s.health.is_healthy());
}

#[test]
fn state_machine_overlisting_beats_a_passed_probe() {
    let mut s = ZoneState::default();
    s.apply(&ProbeVerdict::Pass, None, 0);
    let why = "listed 100% of 60 distinct clients in 10m".to_string();
    let c = s.apply(&ProbeVerdict::Pass, Some(why.clone()), 60).unwrap();
    assert_eq!(c.new, Health::Unhealthy(why.clone()));
    // Also while the probes are silent.
    let mut silent = ZoneState::default();
    silent.apply(&ProbeVerdict::Pass, None, 0);
    assert_eq!(
        silent
            .apply(&no_answer(), Some(why.clone()), 60)
            .unwrap()
            .new,
        Health::Unhealthy(why)
    );
    assert!(s
        .apply(&ProbeVerdict::Pass, None, 120)
        .unwrap()
        .new
        .is_healthy());
}

#[test]
fn listing_window_needs_enough_distinct_clients() {
    let mut w = ListingWindow::default();
    for n in 0..49u32 {
        w.record(&n, true, 1_000);
    }
    // The same client asked again is still one client.
    for _ in 0..100 {
        w.record(&7u32, true, 1_000);
    }
    assert_eq!(w.overlisting(1_000), None, "{:?}", w.counts(1_000));
    for n in 49..300u32 {
        w.record(&n, true, 1_000);
    }
    let (clients, listed) = w.counts(1_000);
    assert!((RATE_MIN_CLIENTS..=256).contains(&clients), "{clients}");
    assert_eq!(listed, clients);
    let why = w.overlisting(1_000).unwrap();
    assert!(why.starts_with("listed 100% of ") && why.ends_with(" distinct clients in 10m"));
    // Ten minutes later they are forgotten.
    assert_eq!(w.counts(1_000 + RATE_WINDOW_SECS), (0, 0));
    assert_eq!(w.overlisting(1_000 + RATE_WINDOW_SECS), None);
}

#[test]
fn listing_window_tolerates_a_spam_heavy_mix() {
    let mut w = ListingWindow::default();
    // 90% of distinct clients listed: a busy site under attack, not a broken list.
    for n in 0..200u32 {
        w.record(&n, n % 10 != 0, 5_000);
    }
    assert_eq!(w.overlisting(5_000), None, "{:?}", w.counts(5_000));
    // A client seen listed and then not listed counts as its last answer.
    let mut w = ListingWindow::default();
    for n in 0..100u32 {
        w.record(&n, true, 5_000);
    }
    assert!(w.overlisting(5_000).is_some());
    for n in 0..10u32 {
        w.record(&n, false, 5_001);
    }
    assert_eq!(w.overlisting(5_001), None, "{:?}", w.counts(5_001));
}

#[test]
fn a_zone_can_name_its_own_listed_test_point() {
    let domain = DnsblZone {
        zone: "dbl.example".into(),
        test_name: Some("dbltest.com".into()),
        ..DnsblZone::default()
    };
    let points = test_points(&domain, ZoneKind::Domain);
    let names: Vec<(&str, bool, &str)> = points
        .iter()
        .map(|(p, q)| (p.label.as_str(), p.must_list, q.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("dbltest.com", true, "dbltest.com"),
            ("invalid", false, "invalid")
        ]
    );
    let judged: Vec<_> = points
        .into_iter()
        .map(|(p, _)| p)
        .zip([nx(), nx()])
        .collect();
    assert_eq!(judge_probe(&judged), fail("dbltest.com not listed"));

    let ip_list = DnsblZone {
        zone: "bl.example".into(),
        test_address: Some(ip("127.0.0.4")),
        ..DnsblZone::default()
    };
    let points = test_points(&ip_list, ZoneKind::Ip);
    assert_eq!(
        (points[0].0.label.as_str(), points[0].1.as_str()),
        ("127.0.0.4", "4.0.0.127")
    );
    assert_eq!(
        points[1].1, "1.0.0.127",
        "127.0.0.1 must still not be listed"
    );
}
