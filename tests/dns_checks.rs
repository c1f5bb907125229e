//! HELO, PTR/FCrDNS and DNSBL/RHSBL/DNSWL checks through the real daemon, answered by a
//! loopback DNS server: the reply an SMTP client would see at RCPT, the dry-run tag, the
//! greeting delay and `mxsentry explain`.

mod common;

use std::time::{Duration, Instant};

use common::{reply_text, Client, Daemon};
use mxsentry::protocol::reply::Reply;

const ZONE: &str = "\
10.2.0.192.in-addr.arpa PTR good.fcrdns.test
good.fcrdns.test A 192.0.2.10
20.2.0.192.in-addr.arpa PTR forged.fcrdns.test
forged.fcrdns.test A 192.0.2.99
50.2.0.192.in-addr.arpa SERVFAIL
60.2.0.192.in-addr.arpa PTR 192-0-2-60.dyn.isp.test
192-0-2-60.dyn.isp.test A 192.0.2.60
100.2.0.192.in-addr.arpa PTR listed.fcrdns.test
listed.fcrdns.test A 192.0.2.100
100.2.0.192.bl.test A 127.0.0.2
100.2.0.192.bl.test TXT \"Listed: see https://bl.test/q?192.0.2.100\"
102.2.0.192.in-addr.arpa PTR refused.fcrdns.test
refused.fcrdns.test A 192.0.2.102
102.2.0.192.bl.test A 127.255.255.254
110.2.0.192.in-addr.arpa PTR allowed.fcrdns.test
allowed.fcrdns.test A 192.0.2.110
110.2.0.192.bl.test A 127.0.0.2
110.2.0.192.wl.test A 127.0.10.1
spammer.test.dbl.test A 127.0.1.2
";

const LISTS: &str = "[[dnsbl.zones]]\nzone = \"bl.test\"\n\
    [[dnsbl.domain_zones]]\nzone = \"dbl.test\"\n\
    [[dnsbl.allow_zones]]\nzone = \"wl.test\"\n";

fn rcpt_reply(d: &Daemon, ip: &str, helo: &str, from: &str) -> Reply {
    let mut c = Client::tcp(d.port);
    c.negotiate();
    c.connect("[unverified]", ip);
    c.helo(helo);
    c.mail(from);
    c.rcpt("u@example.org").expect("RCPT answered")
}

#[test]
fn fcrdns_outcomes() {
    let d = Daemon::start_with_zone("", LISTS, ZONE);
    assert_eq!(
        rcpt_reply(&d, "192.0.2.10", "mail.good.test", "a@sender.test"),
        Reply::Continue
    );
    assert_eq!(
        reply_text(&rcpt_reply(&d, "192.0.2.20", "mail.good.test", "a@sender.test")),
        "450 4.7.25 Client host rejected: hostname forged.fcrdns.test does not resolve to address 192.0.2.20"
    );
    assert_eq!(
        reply_text(&rcpt_reply(
            &d,
            "192.0.2.40",
            "mail.good.test",
            "a@sender.test"
        )),
        "450 4.7.25 Client host rejected: cannot find your hostname, [192.0.2.40]"
    );
    // a temporary DNS failure is a 4xx
    assert_eq!(
        reply_text(&rcpt_reply(
            &d,
            "192.0.2.50",
            "mail.good.test",
            "a@sender.test"
        )),
        "451 4.4.3 Temporary DNS failure, please try again later"
    );
    let log = d.wait_log("client_ip=192.0.2.50");
    assert!(log.contains("rdns.error"), "{log}");
}

/// The RCPT reply for a client at 192.0.2.40 (no PTR record in the zone) whose CONNECT
/// carries `macros`, and the PTR queries the DNS server saw.
fn unresolvable_client_with_macros(d: &Daemon, macros: &[(&str, &str)]) -> (Reply, usize) {
    d.dns.reset_counters();
    let mut c = Client::tcp(d.port);
    c.negotiate();
    c.connect_with_macros("mail.vouched.test", "192.0.2.40", macros);
    c.helo("mail.vouched.test");
    c.mail("a@sender.test");
    let r = c.rcpt("u@example.org").expect("RCPT answered");
    (r, d.dns.queries_for("40.2.0.192.in-addr.arpa"))
}

#[test]
fn the_mtas_own_fcrdns_verification_is_used_not_repeated() {
    let no_ptr = "450 4.7.25 Client host rejected: cannot find your hostname, [192.0.2.40]";
    let d = Daemon::start_with_zone("", LISTS, ZONE);
    // Postfix: {client_name} is the name it verified ("unknown" when it could not).
    let postfix = [
        ("v", "Postfix 3.7.11"),
        ("{client_name}", "mail.vouched.test"),
    ];
    assert_eq!(
        unresolvable_client_with_macros(&d, &postfix),
        (Reply::Continue, 0),
        "Postfix's verified name is taken without a PTR lookup"
    );
    let postfix_unknown = [("v", "Postfix 3.7.11"), ("{client_name}", "unknown")];
    let (r, ptr_queries) = unresolvable_client_with_macros(&d, &postfix_unknown);
    assert_eq!(reply_text(&r), no_ptr);
    assert!(ptr_queries >= 1, "looked up itself");
    // sendmail: only {client_resolve} = OK vouches for {client_name}.
    let sendmail_ok = [
        ("v", "8.17.1"),
        ("{client_resolve}", "OK"),
        ("{client_name}", "mail.vouched.test"),
    ];
    assert_eq!(
        unresolvable_client_with_macros(&d, &sendmail_ok),
        (Reply::Continue, 0)
    );
    let sendmail_forged = [
        ("v", "8.17.1"),
        ("{client_resolve}", "FORGED"),
        ("{client_name}", "mail.vouched.test"),
    ];
    assert_eq!(
        reply_text(&unresolvable_client_with_macros(&d, &sendmail_forged).0),
        no_ptr
    );
    // A HELO name that is the verified name resolves: not looked up either. Another one is.
    let d_helo = Daemon::start_with_zone("", "[helo]\ncheck_resolves = true\n", ZONE);
    assert_eq!(
        unresolvable_client_with_macros(&d_helo, &postfix),
        (Reply::Continue, 0)
    );
    assert_eq!(d_helo.dns.queries_for("mail.vouched.test"), 0);
    let mut c = Client::tcp(d_helo.port);
    c.negotiate();
    c.connect_with_macros("mail.vouched.test", "192.0.2.40", &postfix);
    c.helo("other.vouched.test");
    c.mail("a@sender.test");
    let r = c.rcpt("u@example.org").expect("RCPT answered");
    assert!(reply_text(&r).starts_with("550 "), "{r:?}");
    assert!(d_helo.dns.queries_for("other.vouched.test") >= 1);

    // trust_mta = false: always looked up.
    let d_off = Daemon::start_with_zone("", "[rdns]\ntrust_mta = false\n", ZONE);
    let (r, ptr_queries) = unresolvable_client_with_macros(&d_off, &postfix);
    assert_eq!(reply_text(&r), no_ptr, "trust_mta = false looks up");
    assert!(ptr_queries >= 1);
}

#[test]
fn temporary_failure_never_rejects_even_when_no_ptr_rejects() {
    let d = Daemon::start_with_zone(
        "",
        "[rdns]\nno_ptr = \"reject\"\nforged = \"reject\"\n",
        ZONE,
    );
    let r = reply_text(&rcpt_reply(&d, "192.0.2.50", "mail.good.test", "a@x.test"));
    assert!(r.starts_with("451 "), "{r}");
    let r = reply_text(&rcpt_reply(&d, "192.0.2.40", "mail.good.test", "a@x.test"));
    assert!(r.starts_with("550 5.7.25 Client host rejected"), "{r}");
}

#[test]
fn dnsbl_rhsbl_dnswl() {
    let d = Daemon::start_with_zone("", LISTS, ZONE);
    assert_eq!(
        reply_text(&rcpt_reply(
            &d,
            "192.0.2.100",
            "mail.good.test",
            "a@sender.test"
        )),
        "550 5.7.1 Mail from 192.0.2.100 refused, listed in bl.test"
    );
    // an operator's refusal (127.255.255.254) is an error, never a listing
    assert_eq!(
        rcpt_reply(&d, "192.0.2.102", "mail.good.test", "a@sender.test"),
        Reply::Continue
    );
    // listed in bl.test but also in the allow list wl.test
    assert_eq!(
        rcpt_reply(&d, "192.0.2.110", "mail.good.test", "a@sender.test"),
        Reply::Continue
    );
    // the allow list does not vouch for the sender domain
    let r = reply_text(&rcpt_reply(
        &d,
        "192.0.2.110",
        "mail.good.test",
        "a@spammer.test",
    ));
    assert!(r.contains("dbl.test"), "{r}");
    let mut c = Client::tcp(d.port);
    c.negotiate();
    c.connect("refused.fcrdns.test", "192.0.2.102");
    c.mail("a@sender.test");
    c.rcpt("u@example.org");
    assert_eq!(c.message().last(), Some(&Reply::Accept));
    let log = d.wait_log("client_ip=192.0.2.102");
    let line = log
        .lines()
        .find(|l| l.contains("client_ip=192.0.2.102"))
        .unwrap();
    assert!(line.contains("verdict=accept"), "{line}");
    assert!(line.contains("dnsbl.refused"), "{line}");
}

#[test]
fn bogus_helo_is_rejected_but_trusted_clients_bypass() {
    let d = Daemon::start_with_zone("", "", ZONE);
    assert_eq!(
        reply_text(&rcpt_reply(&d, "192.0.2.10", "mx.example.org", "a@x.test")),
        "550 5.7.1 Access denied - bogus HELO mx.example.org"
    );
    assert_eq!(
        reply_text(&rcpt_reply(&d, "192.0.2.10", "localhost", "a@x.test")),
        "550 5.7.1 Access denied - bogus HELO localhost"
    );
    assert_eq!(
        reply_text(&rcpt_reply(&d, "192.0.2.10", "[192.0.2.99]", "a@x.test")),
        "550 5.7.1 Access denied - bogus HELO [192.0.2.99]"
    );
    assert_eq!(
        rcpt_reply(&d, "192.0.2.10", "[192.0.2.10]", "a@x.test"),
        Reply::Continue
    );
    assert_eq!(
        rcpt_reply(&d, "127.0.0.1", "localhost", "a@x.test"),
        Reply::Accept,
        "trusted network bypasses HELO checks"
    );
}

#[test]
fn dry_run_tags_dnsbl_and_tag_action() {
    let d = Daemon::start_with_zone(
        "",
        &format!("mode = \"dry-run\"\n[rdns]\ndynamic = \"tag\"\n{LISTS}"),
        ZONE,
    );
    for (ip, want) in [
        ("192.0.2.100", "would-reject dnsbl=bl.test"),
        ("192.0.2.60", "rdns=dynamic"),
    ] {
        let mut c = Client::tcp(d.port);
        c.negotiate();
        c.connect("[unverified]", ip);
        c.helo("mail.good.test");
        c.mail("a@sender.test");
        assert_eq!(c.rcpt("u@example.org"), Some(Reply::Continue));
        let replies = c.message();
        let Some(Reply::AddHeader { name, value }) = replies.first() else {
            panic!("no tag header for {ip}: {replies:?}")
        };
        assert_eq!(&name[..], b"X-Mxsentry");
        let value = String::from_utf8_lossy(value);
        assert!(value.contains(want), "{ip}: {value}");
    }
}

#[test]
fn greeting_delay_holds_the_connect_reply() {
    let d = Daemon::start_with_zone(
        "",
        "[greeting]\ndelay = \"1s\"\nnetworks = [\"192.0.2.0/28\"]\n",
        ZONE,
    );
    let mut c = Client::tcp(d.port);
    c.negotiate();
    let t0 = Instant::now();
    assert_eq!(
        c.connect("good.fcrdns.test", "192.0.2.10"),
        Some(Reply::Continue)
    );
    assert!(t0.elapsed() >= Duration::from_millis(950), "banner held");
    // a client outside the networks is answered at once (no assertion on how fast)
    let mut c = Client::tcp(d.port);
    c.negotiate();
    assert_eq!(c.connect("x", "192.0.2.100"), Some(Reply::Continue));
}

#[test]
fn explain_shows_findings_and_reply() {
    let d = Daemon::start_with_zone("From:spammer.test REJECT\n", LISTS, ZONE);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mxsentry"))
        .args(["explain", "--config"])
        .arg(&d.config_path)
        .args([
            "--client-ip",
            "192.0.2.100",
            "--helo",
            "mail.good.test",
            "--from",
            "a@sender.test",
            "--rcpt",
            "u@example.org",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("rdns"), "{text}");
    assert!(text.contains("listed.fcrdns.test"), "{text}");
    assert!(text.contains("100.2.0.192.bl.test"), "{text}");
    assert!(
        text.contains(
            "verdict: reject  reply: 550 5.7.1 Mail from 192.0.2.100 refused, listed in bl.test"
        ),
        "{text}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mxsentry"))
        .args(["explain", "--json", "--config"])
        .arg(&d.config_path)
        .args([
            "--client-ip",
            "192.0.2.10",
            "--helo",
            "mail.good.test",
            "--from",
            "x@spammer.test",
            "--rcpt",
            "u@example.org",
        ])
        .output()
        .unwrap();
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(json.contains("\"verdict\":\"reject\""), "{json}");
    assert!(json.contains("\"check\":\"sender_rules\""), "{json}");
}

#[test]
fn slow_dns_costs_one_round_trip_chain_not_the_sum() {
    // Every answer takes 1 s. The PTR→A chain is 2 s by nature; the three IP lists and the
    // sender-domain list run beside it, started at CONNECT and MAIL. Sequential lookups would
    // take 6 s; the bound below (4.5 s) is generous for a slow machine yet fails if they add up.
    let zone = "\
10.2.0.192.in-addr.arpa DELAY 1s PTR good.fcrdns.test
good.fcrdns.test DELAY 1s A 192.0.2.10
10.2.0.192.bl1.test DELAY 1s A 127.0.0.1
10.2.0.192.bl2.test DELAY 1s A 127.0.0.1
10.2.0.192.bl3.test DELAY 1s A 127.0.0.1
sender.test.dbl.test DELAY 1s A 127.0.0.1
";
    let lists = "[dns]\ntimeout = \"3s\"\n\
        [dnsbl]\nthreshold = 5\n\
        [[dnsbl.zones]]\nzone = \"bl1.test\"\n[[dnsbl.zones]]\nzone = \"bl2.test\"\n\
        [[dnsbl.zones]]\nzone = \"bl3.test\"\n[[dnsbl.domain_zones]]\nzone = \"dbl.test\"\n";
    let d = Daemon::start_with_zone("", lists, zone);
    let mut c = Client::tcp(d.port);
    c.negotiate();
    let t0 = Instant::now();
    c.connect("[unverified]", "192.0.2.10");
    c.helo("mail.good.test");
    c.mail("a@sender.test");
    let r = c.rcpt("u@example.org").unwrap();
    let took = t0.elapsed();
    assert_eq!(r, Reply::Continue);
    assert!(
        took >= Duration::from_millis(1900),
        "the PTR→A chain really waited: {took:?}"
    );
    assert!(
        took < Duration::from_millis(4500),
        "lookups overlapped: {took:?}"
    );
}

#[test]
fn delay_action_holds_the_banner_for_suspicious_clients() {
    let d = Daemon::start_with_zone(
        "",
        "[rdns]\ndynamic = \"delay\"\n[greeting]\ndelay = \"1s\"\n",
        ZONE,
    );
    let mut c = Client::tcp(d.port);
    c.negotiate();
    let t0 = Instant::now();
    assert_eq!(
        c.connect("[192.0.2.60]", "192.0.2.60"),
        Some(Reply::Continue),
        "CONNECT is answered when the banner may be held"
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(950),
        "dynamic rDNS held the banner: {:?}",
        t0.elapsed()
    );
    // a clean client is not held for the delay (no upper bound asserted: slow machines)
    let mut c = Client::tcp(d.port);
    c.negotiate();
    assert_eq!(
        c.connect("good.fcrdns.test", "192.0.2.10"),
        Some(Reply::Continue)
    );
}
