use super::*;

use crate::config::{DnsblConfig, DnsblZone};

fn config(interval_secs: u64, zones: &[&str]) -> DnsblConfig {
    DnsblConfig {
        zones: zones
            .iter()
            .map(|z| DnsblZone {
                zone: z.to_string(),
                ..DnsblZone::default()
            })
            .collect(),
        health_check_interval: std::time::Duration::from_secs(interval_secs),
        ..DnsblConfig::default()
    }
}

fn listed_result(zone: &str, client: u32) -> ZoneResult {
    ZoneResult {
        zone: zone.into(),
        kind: ZoneKind::Ip,
        weight: 1,
        message: None,
        tempfail_on_error: false,
        outcome: ZoneOutcome::Listed {
            codes: vec![std::net::Ipv4Addr::new(127, 0, 0, 2)],
            txt: None,
        },
        query: format!("{client}.{zone}"),
        answers: Vec::new(),
        distrust: None,
    }
}

fn observed(board: &HealthBoard, zone: &str, client: u32, now: u64) -> ZoneResult {
    let mut r = listed_result(zone, client);
    board.observe(&mut r, now);
    r
}

#[test]
fn listings_count_only_from_zones_that_passed_a_probe() {
    let board = HealthBoard::new(&config(60, &["good.test", "bad.test"]));
    let r = observed(&board, "good.test", 1, 0);
    assert_eq!(r.distrust.as_deref(), Some("not yet probed"));
    assert!(!r.counts());
    let good = board.entry(ZoneKind::Ip, "good.test").unwrap();
    let bad = board.entry(ZoneKind::Ip, "bad.test").unwrap();
    board.apply(&good, &ProbeVerdict::Pass, 10);
    board.apply(&bad, &ProbeVerdict::Fail("127.0.0.1 listed".into()), 10);
    assert!(observed(&board, "good.test", 2, 11).counts());
    let r = observed(&board, "bad.test", 2, 11);
    assert_eq!(r.distrust.as_deref(), Some("127.0.0.1 listed"));
    assert!(r.findings()[0]
        .detail
        .ends_with("; zone bad.test unhealthy: 127.0.0.1 listed -> its listing is log-only"));
    assert_eq!(r.findings()[0].outcome, "untrusted");
    // The same zone name as another kind is another zone.
    let mut domain = listed_result("good.test", 3);
    domain.kind = ZoneKind::Domain;
    board.observe(&mut domain, 11);
    assert!(
        domain.distrust.is_none(),
        "not configured as a domain zone: not judged"
    );
}

#[test]
fn checks_off_trust_every_zone_and_reload_keeps_known_zones() {
    let board = HealthBoard::new(&config(0, &["a.test"]));
    assert!(observed(&board, "a.test", 1, 0).counts());
    board.reconcile(&config(60, &["a.test"]));
    let a = board.entry(ZoneKind::Ip, "a.test").unwrap();
    board.apply(&a, &ProbeVerdict::Pass, 5);
    board.reconcile(&config(60, &["a.test", "new.test"]));
    assert!(
        observed(&board, "a.test", 1, 6).counts(),
        "state kept on reload"
    );
    assert!(
        !observed(&board, "new.test", 1, 6).counts(),
        "a new zone waits for its probe"
    );
    board.reconcile(&config(60, &["new.test"]));
    assert!(board.entry(ZoneKind::Ip, "a.test").is_none());
    let zones: Vec<String> = board.report().into_iter().map(|z| z.zone).collect();
    assert_eq!(zones, ["new.test"]);
}

#[test]
fn a_zone_listing_every_client_turns_unhealthy_at_the_next_probe() {
    let board = HealthBoard::new(&config(60, &["all.test"]));
    let e = board.entry(ZoneKind::Ip, "all.test").unwrap();
    board.apply(&e, &ProbeVerdict::Pass, 0);
    for client in 0..300 {
        observed(&board, "all.test", client, 30);
    }
    board.apply(&e, &ProbeVerdict::Pass, 60);
    match e.state().health {
        Health::Unhealthy(r) => assert!(r.starts_with("listed 100% of "), "{r}"),
        other => panic!("{other:?}"),
    }
    // Eleven minutes later the window is empty again: the next passed probe trusts it.
    board.apply(&e, &ProbeVerdict::Pass, 30 + 660);
    assert!(e.state().health.is_healthy());
}

/// Cost of the hot-path call (`observe`, once per zone answer): a measure, not a check.
/// `cargo test --release --lib observe_cost -- --ignored --nocapture`
#[test]
#[ignore = "a measure, run by hand"]
fn observe_cost() {
    let zones: Vec<String> = (0..5).map(|n| format!("bl{n}.test")).collect();
    let names: Vec<&str> = zones.iter().map(String::as_str).collect();
    let board = HealthBoard::new(&config(60, &names));
    for e in board.entries() {
        board.apply(&e, &ProbeVerdict::Pass, 0);
    }
    let mut results: Vec<ZoneResult> = (0..1000u32)
        .map(|n| listed_result(&zones[(n % 5) as usize], n))
        .collect();
    let rounds = 2_000;
    let start = std::time::Instant::now();
    for round in 0..rounds {
        for r in &mut results {
            board.observe(r, round);
        }
    }
    let per = start.elapsed().as_nanos() as f64 / (rounds as f64 * results.len() as f64);
    println!("HealthBoard::observe: {per:.0} ns per zone answer (5 zones, healthy)");
}

fn probe_off(zones: &[&str]) -> DnsblConfig {
    let mut c = config(60, zones);
    for z in &mut c.zones {
        z.health_check = crate::config::HealthCheck::Off;
    }
    c
}

#[test]
fn a_probe_off_zone_counts_from_the_start_and_is_shown_so() {
    let board = HealthBoard::new(&probe_off(&["np.test"]));
    let r = observed(&board, "np.test", 1, 0);
    assert!(r.counts(), "{:?}", r.distrust);
    let report = board.report();
    assert!(report[0].probe_off && report[0].state.health.is_healthy());
    // With the checks off nothing is judged; turned on by a reload, it counts at once.
    let board = HealthBoard::new(&DnsblConfig {
        health_check_interval: std::time::Duration::ZERO,
        ..probe_off(&["np.test"])
    });
    board.reconcile(&probe_off(&["np.test"]));
    assert!(board.report()[0].state.health.is_healthy());
    assert!(observed(&board, "np.test", 1, 0).counts());
    // Switching it to probes makes it wait for one, like any new zone.
    board.reconcile(&config(60, &["np.test"]));
    assert!(!observed(&board, "np.test", 2, 1).counts());
    assert!(!board.report()[0].probe_off);
}

#[test]
fn a_probe_off_zone_is_still_caught_by_the_listing_rate_and_bad_answers() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = probe_off(&["all.test"]);
    let board = HealthBoard::new(&config);
    // Rounds send no query: the resolver points at a closed port and is never asked.
    let dns = crate::dns::Dns::new(&crate::config::DnsConfig {
        nameservers: vec!["127.0.0.1:9".parse().unwrap()],
        ..crate::config::DnsConfig::default()
    })
    .unwrap();
    let e = board.entry(ZoneKind::Ip, "all.test").unwrap();
    rt.block_on(crate::checks::dnsbl::probe::probe_round(
        &board, &dns, &config,
    ));
    assert!(e.state().health.is_healthy());
    let now = crate::store::unix_now();
    for client in 0..300 {
        observed(&board, "all.test", client, now);
    }
    rt.block_on(crate::checks::dnsbl::probe::probe_round(
        &board, &dns, &config,
    ));
    match e.state().health {
        Health::Unhealthy(r) => assert!(r.starts_with("listed 100% of "), "{r}"),
        other => panic!("{other:?}"),
    }

    // A refusal answer seen by a session trips a fresh probe-off zone at the next round, and
    // a round without one trusts it again.
    let config = probe_off(&["refusing.test"]);
    let board = HealthBoard::new(&config);
    let mut refused = listed_result("refusing.test", 1);
    refused.outcome = ZoneOutcome::Refused(std::net::Ipv4Addr::new(127, 255, 255, 254));
    board.observe(&mut refused, now);
    rt.block_on(crate::checks::dnsbl::probe::probe_round(
        &board, &dns, &config,
    ));
    let e = board.entry(ZoneKind::Ip, "refusing.test").unwrap();
    assert_eq!(
        e.state().health,
        Health::Unhealthy("answer 127.255.255.254 (refused by the list)".into())
    );
    rt.block_on(crate::checks::dnsbl::probe::probe_round(
        &board, &dns, &config,
    ));
    assert!(e.state().health.is_healthy());
}
