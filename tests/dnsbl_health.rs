//! DNS list zone health through the real daemon and the loopback DNS server: a zone that lists
//! everything (a wildcard) or answers the operators' refusal code never rejects a clean client,
//! a healthy zone still rejects its listed client, the `mxsentry_dnsbl_zone_healthy` metric, a
//! zone going bad while the daemon runs (ignored after the next probe, trusted again once
//! fixed), `mxsentry status` and `mxsentry explain`.

mod common;

use std::time::Instant;

use common::{reply_text, Client, Daemon};
use mxsentry::protocol::reply::Reply;

/// Clients 192.0.2.10 (clean) and 192.0.2.100 (listed in good.test), both FCrDNS-verified.
const CLIENTS: &str = "\
10.2.0.192.in-addr.arpa PTR clean.fcrdns.test
clean.fcrdns.test A 192.0.2.10
100.2.0.192.in-addr.arpa PTR listed.fcrdns.test
listed.fcrdns.test A 192.0.2.100
";

/// A zone that follows RFC 5782: lists 127.0.0.2, not 127.0.0.1, and one real client.
fn healthy(zone: &str) -> String {
    format!("2.0.0.127.{zone} A 127.0.0.2\n100.2.0.192.{zone} A 127.0.0.2\n")
}

/// A retired list whose domain now lists everything (NJABL 2024).
fn wildcard(zone: &str) -> String {
    format!("*.{zone} A 127.0.0.2\n")
}

fn zones_config(zones: &[&str]) -> String {
    let mut c = String::from("[dnsbl]\nhealth_check_interval = \"1s\"\n");
    for z in zones {
        c.push_str(&format!("[[dnsbl.zones]]\nzone = \"{z}\"\n"));
    }
    c
}

fn healthy_metric(zone: &str) -> String {
    format!("mxsentry_dnsbl_zone_healthy{{zone=\"{zone}\"}}")
}

/// The RCPT reply for a session from `ip` (an accepted message is finished, so its decision
/// line is logged).
fn session(d: &Daemon, ip: &str, from: &str) -> Reply {
    let mut c = Client::tcp(d.port);
    c.negotiate();
    c.connect("[unverified]", ip);
    c.helo("mail.sender.test");
    c.mail(from);
    let r = c.rcpt("u@example.org").expect("RCPT answered");
    if r == Reply::Continue {
        c.message();
    }
    r
}

#[test]
fn broken_zones_never_reject_a_clean_client_and_a_healthy_zone_still_rejects() {
    let zone = format!(
        "{CLIENTS}{}{}*.refused.test A 127.255.255.254\n",
        healthy("good.test"),
        wildcard("wild.test")
    );
    let d = Daemon::start_with_zone(
        "",
        &zones_config(&["good.test", "wild.test", "refused.test"]),
        &zone,
    );
    d.wait_metric(&healthy_metric("good.test"), 1.0);
    d.wait_metric(&healthy_metric("wild.test"), 0.0);
    d.wait_metric(&healthy_metric("refused.test"), 0.0);
    d.wait_log(
        "DNS list zone health: wild.test unknown (not yet probed) -> unhealthy: 127.0.0.1 listed",
    );
    d.wait_log(
        "DNS list zone health: refused.test unknown (not yet probed) -> unhealthy: answer \
         127.255.255.254 (refused by the list)",
    );
    d.wait_log("DNS list zone health: good.test unknown (not yet probed) -> healthy");

    assert_eq!(
        session(&d, "192.0.2.10", "clean@sender.test"),
        Reply::Continue
    );
    let log = d.wait_log("from=<clean@sender.test>");
    assert!(
        log.contains(
            "dnsbl.untrusted(wild.test: 10.2.0.192.wild.test -> 127.0.0.2 (weight 1); zone \
             wild.test unhealthy: 127.0.0.1 listed -> its listing is log-only)"
        ),
        "{log}"
    );
    assert!(log.contains("dnsbl.refused(refused.test: 10.2.0.192.refused.test -> 127.255.255.254"));

    assert_eq!(
        reply_text(&session(&d, "192.0.2.100", "listed@sender.test")),
        "550 5.7.1 Mail from 192.0.2.100 refused, listed in good.test"
    );
    // The metric stays where the probes put it.
    assert_eq!(d.metric(&healthy_metric("good.test")), 1.0);
    assert_eq!(d.metric(&healthy_metric("wild.test")), 0.0);

    // status shows each zone's state
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mxsentry"))
        .args(["status", "--config"])
        .arg(&d.config_path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("dnsbl zone good.test: healthy since "),
        "{text}"
    );
    assert!(
        text.contains("dnsbl zone wild.test: UNHEALTHY since ")
            && text.contains(": 127.0.0.1 listed: listings are log-only\n"),
        "{text}"
    );

    // explain probes the zones itself and says why a listing does not count
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mxsentry"))
        .args(["explain", "--config"])
        .arg(&d.config_path)
        .args(["--client-ip", "192.0.2.10", "--helo", "mail.sender.test"])
        .args(["--from", "a@sender.test", "--rcpt", "u@example.org"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for line in [
        "zone good.test (dnsbl): healthy\n",
        "zone wild.test (dnsbl) unhealthy: 127.0.0.1 listed -> its listing is log-only\n",
        "zone refused.test (dnsbl) unhealthy: answer 127.255.255.254 (refused by the list) -> \
         its listing is log-only\n",
        "verdict: accept",
    ] {
        assert!(text.contains(line), "{line:?} missing:\n{text}");
    }
}

#[test]
fn a_zone_going_bad_is_ignored_after_the_next_probe_and_trusted_again_once_fixed() {
    let good = format!("{CLIENTS}{}", healthy("flip.test"));
    let d = Daemon::start_with_zone("", &zones_config(&["flip.test"]), &good);
    d.wait_metric(&healthy_metric("flip.test"), 1.0);
    assert_eq!(
        reply_text(&session(&d, "192.0.2.100", "before@sender.test")),
        "550 5.7.1 Mail from 192.0.2.100 refused, listed in flip.test"
    );

    // The list's domain is taken over by a wildcard.
    let turned_bad = Instant::now();
    d.dns
        .set_zone(&format!("{CLIENTS}{}", wildcard("flip.test")));
    d.wait_metric(&healthy_metric("flip.test"), 0.0);
    println!(
        "zone turned bad -> ignored after {} ms (health_check_interval 1s)",
        turned_bad.elapsed().as_millis()
    );
    d.wait_log("DNS list zone health: flip.test healthy -> unhealthy: 127.0.0.1 listed");
    assert_eq!(
        session(&d, "192.0.2.100", "during@sender.test"),
        Reply::Continue
    );
    let log = d.wait_log("from=<during@sender.test>");
    assert!(log.contains("dnsbl.untrusted(flip.test: "), "{log}");

    // Fixed: trusted again after a passed probe.
    d.dns.set_zone(&good);
    d.wait_metric(&healthy_metric("flip.test"), 1.0);
    d.wait_log("DNS list zone health: flip.test unhealthy (127.0.0.1 listed) -> healthy");
    assert_eq!(
        reply_text(&session(&d, "192.0.2.100", "after@sender.test")),
        "550 5.7.1 Mail from 192.0.2.100 refused, listed in flip.test"
    );
}

#[test]
fn a_zone_that_stops_answering_turns_unhealthy_after_three_probes() {
    let good = format!("{CLIENTS}{}", healthy("quiet.test"));
    let d = Daemon::start_with_zone(
        "",
        &format!("[dns]\ntimeout = \"1s\"\n{}", zones_config(&["quiet.test"])),
        &good,
    );
    d.wait_metric(&healthy_metric("quiet.test"), 1.0);
    d.dns
        .set_zone(&format!("{CLIENTS}2.0.0.127.quiet.test SERVFAIL\n"));
    d.wait_log("DNS list zone health: quiet.test healthy -> unhealthy: no answer for 3 probes");
    assert_eq!(d.metric(&healthy_metric("quiet.test")), 0.0);
}

#[test]
fn first_probe_runs_at_start_and_a_reload_probes_new_zones_at_once() {
    // An interval far longer than the test: every state below comes from the probe at start
    // or the one a reload triggers.
    let zone = format!("{CLIENTS}{}{}", healthy("good.test"), wildcard("wild.test"));
    let d = Daemon::start_with_zone(
        "",
        "[dnsbl]\nhealth_check_interval = \"1h\"\n[[dnsbl.zones]]\nzone = \"good.test\"\n",
        &zone,
    );
    d.wait_metric(&healthy_metric("good.test"), 1.0);
    assert_eq!(d.try_metric(&healthy_metric("wild.test")), None);

    let mut config = std::fs::read_to_string(&d.config_path).unwrap();
    config.push_str("\n[[dnsbl.zones]]\nzone = \"wild.test\"\n");
    std::fs::write(&d.config_path, config).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mxsentry"))
        .args(["reload", "--config"])
        .arg(&d.config_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    d.wait_log(
        "DNS list zone health: wild.test unknown (not yet probed) -> unhealthy: 127.0.0.1 listed",
    );
    assert_eq!(d.metric(&healthy_metric("wild.test")), 0.0);
    // The zone kept across the reload kept its state (no new "unknown -> healthy" line).
    assert_eq!(d.metric(&healthy_metric("good.test")), 1.0);
    assert_eq!(
        d.log()
            .matches("DNS list zone health: good.test unknown (not yet probed) -> healthy")
            .count(),
        1
    );
    assert_eq!(
        session(&d, "192.0.2.10", "clean@sender.test"),
        Reply::Continue
    );
    assert_eq!(
        reply_text(&session(&d, "192.0.2.100", "listed@sender.test")),
        "550 5.7.1 Mail from 192.0.2.100 refused, listed in good.test"
    );
}
