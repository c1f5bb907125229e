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

/// Runs `mxsentry ARGS --config CONFIG`, expects exit 0, returns stdout.
fn mxsentry_out(d: &Daemon, cmd: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mxsentry"))
        .args([cmd, "--config"])
        .arg(&d.config_path)
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Domain lists that publish no `test` entry: one probed at its own `test_name`, one with
/// `health_check = "off"`, and the same data left to the RFC 5782 probe (never trusted).
#[test]
fn a_domain_list_without_test_blocks_with_test_name_or_with_probes_off() {
    let zone = format!(
        "{CLIENTS}\
         dbltest.com.named.test A 127.0.1.2\nspam.example.named.test A 127.0.1.2\n\
         spam.example.noprobe.test A 127.0.1.2\n\
         spam.example.plain.test A 127.0.1.2\n"
    );
    let config = "[dnsbl]\nhealth_check_interval = \"1s\"\n\
        [[dnsbl.domain_zones]]\nzone = \"named.test\"\ntest_name = \"dbltest.com\"\n\
        [[dnsbl.domain_zones]]\nzone = \"noprobe.test\"\nhealth_check = \"off\"\n\
        [[dnsbl.domain_zones]]\nzone = \"plain.test\"\n";
    let d = Daemon::start_with_zone("", config, &zone);
    d.wait_metric(&healthy_metric("named.test"), 1.0);
    d.wait_metric(&healthy_metric("noprobe.test"), 1.0);
    d.wait_log("DNS list zone health: named.test unknown (not yet probed) -> healthy");
    d.wait_log("DNS list zone health: noprobe.test probe off (health_check = \"off\") -> healthy");
    d.wait_log(
        "DNS list zone health: plain.test unknown (not yet probed) -> unhealthy: test not listed",
    );

    assert_eq!(
        reply_text(&session(&d, "192.0.2.10", "a@spam.example")),
        "550 5.7.1 Sender domain spam.example refused, listed in named.test"
    );
    let mut config = std::fs::read_to_string(&d.config_path).unwrap();
    config = config.replace(
        "zone = \"named.test\"\ntest_name = \"dbltest.com\"\n",
        "zone = \"other.test\"\n",
    );
    std::fs::write(&d.config_path, config).unwrap();
    mxsentry_out(&d, "reload", &[]);
    d.wait_log(
        "DNS list zone health: other.test unknown (not yet probed) -> unhealthy: test not listed",
    );
    // Only the probe-off zone is left to block spam.example, which it does.
    assert_eq!(
        reply_text(&session(&d, "192.0.2.10", "b@spam.example")),
        "550 5.7.1 Sender domain spam.example refused, listed in noprobe.test"
    );
    let log = d.wait_log("from=<b@spam.example>");
    assert!(log.contains("rhsbl.untrusted(plain.test: "), "{log}");
    // The probe-off zone was never asked for a test point.
    assert_eq!(d.dns.queries_for("test.noprobe.test"), 0);
    assert_eq!(d.dns.queries_for("invalid.noprobe.test"), 0);
    assert!(d.dns.queries_for("dbltest.com.named.test") >= 1);

    let status = mxsentry_out(&d, "status", &[]);
    assert!(
        status.contains("dnsbl zone noprobe.test: healthy (probe off) since "),
        "{status}"
    );
    assert!(
        status.contains("dnsbl zone plain.test: UNHEALTHY since "),
        "{status}"
    );
    let session = [
        "--client-ip",
        "192.0.2.10",
        "--helo",
        "mail.sender.test",
        "--from",
        "c@spam.example",
        "--rcpt",
        "u@example.org",
    ];
    let explain = mxsentry_out(&d, "explain", &session);
    let json = mxsentry_out(&d, "explain", &[&session[..], &["--json"]].concat());
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let zones: Vec<(String, String, bool)> = v["zones"]
        .as_array()
        .unwrap()
        .iter()
        .map(|z| {
            let s = |k: &str| z[k].as_str().unwrap_or_default().to_string();
            (s("zone"), s("probe"), z["healthy"].as_bool().unwrap())
        })
        .collect();
    assert!(
        zones.contains(&("noprobe.test".into(), "off".into(), true))
            && zones.contains(&("plain.test".into(), "rfc5782".into(), false)),
        "{json}"
    );
    for line in [
        "zone noprobe.test (rhsbl, probe off): healthy\n",
        "zone plain.test (rhsbl) unhealthy: test not listed -> its listing is log-only\n",
        "verdict: reject",
    ] {
        assert!(explain.contains(line), "{line:?} missing:\n{explain}");
    }
}

/// A retired list turned wildcard, configured with probes off: it blocks everyone until the
/// listing-rate guard sees it list nearly every distinct client, then its listings are
/// log-only.
#[test]
fn a_wildcard_zone_with_probes_off_is_still_caught_by_the_listing_rate() {
    let zone = format!("{CLIENTS}{}", wildcard("wild.test"));
    let config = "[dnsbl]\nhealth_check_interval = \"1s\"\n\
        [[dnsbl.zones]]\nzone = \"wild.test\"\nhealth_check = \"off\"\n";
    let d = Daemon::start_with_zone("", config, &zone);
    d.wait_metric(&healthy_metric("wild.test"), 1.0);
    // Distinct clients (the window keeps a few less: it is a hashed table), all refused while
    // the zone is trusted; the guard needs 50 of them.
    let mut refused = 0;
    for n in 0..100 {
        let ip = format!("198.51.{}.{}", n / 250, n % 250 + 1);
        if session(&d, &ip, "x@sender.test") != Reply::Continue {
            refused += 1;
        }
    }
    assert!(refused > 0, "a trusted wildcard refuses");
    d.wait_metric(&healthy_metric("wild.test"), 0.0);
    println!("probe-off wildcard: {refused} of 100 distinct clients refused before the rate guard tripped (health_check_interval 1s)");
    let log = d.wait_log("DNS list zone health: wild.test healthy -> unhealthy: listed 100% of ");
    assert!(log.contains(" distinct clients in 10m"), "{log}");
    assert_eq!(
        session(&d, "192.0.2.10", "clean@sender.test"),
        Reply::Continue
    );
    let log = d.wait_log("from=<clean@sender.test>");
    assert!(log.contains("dnsbl.untrusted(wild.test: "), "{log}");
    assert_eq!(d.dns.queries_for("2.0.0.127.wild.test"), 0, "never probed");
}
