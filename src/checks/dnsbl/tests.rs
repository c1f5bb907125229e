use std::time::Duration;

use super::*;
use crate::config::{DnsConfig, ReturnCode};
use crate::testing::dns_server::TestDnsServer;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn zone(name: &str) -> DnsblZone {
    DnsblZone {
        zone: name.into(),
        ..DnsblZone::default()
    }
}

fn zone_with_codes(name: &str, codes: &[&str]) -> DnsblZone {
    DnsblZone {
        zone: name.into(),
        returncodes: codes
            .iter()
            .map(|c| c.parse::<ReturnCode>().unwrap())
            .collect(),
        ..DnsblZone::default()
    }
}

const V6_REVERSED: &str = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2";

fn zone_text() -> String {
    format!(
        r#"
100.2.0.192.zen.test     A     127.0.0.2
100.2.0.192.zen.test     TXT   "Listed: see https://zen.test/q?192.0.2.100"
101.2.0.192.codes.test   A     127.0.0.10
102.2.0.192.codes.test   A     127.0.0.4
103.2.0.192.codes.test   A     127.0.0.4
103.2.0.192.codes.test   A     127.0.0.10
100.2.0.192.refuse.test  A     127.255.255.254
100.2.0.192.broken.test  SERVFAIL
100.2.0.192.notxt.test   A     127.0.0.2
100.2.0.192.notxt.test   SERVFAIL TXT
100.2.0.192.odd.test     A     192.0.2.1
{V6_REVERSED}.zen.test   A     127.0.0.3
spam.example.dbl.test    A     127.0.1.2
spam.example.dbl.test    TXT   "spam domain" "(see dbl.test)"
100.2.0.192.wl.test      A     127.0.10.1
100.2.0.192.slow1.test   DELAY 300ms A 127.0.0.2
100.2.0.192.slow2.test   DELAY 300ms A 127.0.0.2
100.2.0.192.slow3.test   DELAY 300ms A 127.0.0.2
"#
    )
}

async fn setup() -> (TestDnsServer, Dns) {
    setup_with_timeout(500).await
}

async fn setup_with_timeout(ms: u64) -> (TestDnsServer, Dns) {
    let server = TestDnsServer::start(&zone_text()).await.unwrap();
    let dns = Dns::new(&DnsConfig {
        nameservers: vec![server.addr],
        timeout: Duration::from_millis(ms),
        ..DnsConfig::default()
    })
    .unwrap();
    (server, dns)
}

// ---- pure parts ----

#[test]
fn render_fills_known_placeholders() {
    let vars = MessageVars {
        client_ip: Some(ip("192.0.2.100")),
        zone: "zen.test",
        txt: Some("see https://zen.test/q?192.0.2.100"),
        sender_domain: Some("spam.example"),
    };
    assert_eq!(
        render_message(DEFAULT_MESSAGE, &vars),
        "550 5.7.1 Mail from 192.0.2.100 refused, listed in zen.test"
    );
    assert_eq!(
        render_message("554 {zone}: {txt} ({sender_domain}) {unknown} {zone", &vars),
        "554 zen.test: see https://zen.test/q?192.0.2.100 (spam.example) {unknown} {zone"
    );
    assert_eq!(render_message("{{zone}}", &vars), "{zen.test}");
    let empty = MessageVars::default();
    assert_eq!(
        render_message("550 {client_ip} [{txt}] <{sender_domain}>", &empty),
        "550 unknown [] <>"
    );
    let mapped = MessageVars {
        client_ip: Some(ip("::ffff:192.0.2.1")),
        ..MessageVars::default()
    };
    assert_eq!(render_message("{client_ip}", &mapped), "192.0.2.1");
}

#[test]
fn render_sanitises_txt() {
    let nasty = format!("line one\r\n250 fake\tok\u{0} 100% {}", "x".repeat(400));
    let out = render_message(
        "550 5.7.1 {txt}",
        &MessageVars {
            txt: Some(&nasty),
            ..MessageVars::default()
        },
    );
    assert!(!out.contains(['\r', '\n', '\t', '\0']), "{out:?}");
    assert!(
        out.starts_with("550 5.7.1 line one 250 fake ok 100% xxx"),
        "{out:?}"
    );
    // '%' stays single: the milter reply encoder doubles it for sendmail.
    assert!(!out.contains("%%"));
    let txt_part = &out["550 5.7.1 ".len()..];
    assert!(
        txt_part.chars().count() <= MAX_TXT_IN_REPLY + 3,
        "{}",
        txt_part.len()
    );
    assert!(txt_part.ends_with("..."));
    // The result is a valid SMTP reply.
    crate::checks::sender_rules::SmtpReply::parse(&out).unwrap();
}

#[test]
fn sanitize_keeps_unicode_and_cuts_on_char_boundaries() {
    let s = sanitize("  Grüße ünd ✉ ", 100);
    assert_eq!(s, "Grüße ünd ✉");
    let cut = sanitize(&"é".repeat(300), 10);
    assert_eq!(cut, format!("{}...", "é".repeat(10)));
}

#[test]
fn domains_to_query() {
    assert_eq!(
        normalize_domain("user@Spam.Example."),
        Some("spam.example".into())
    );
    assert_eq!(
        normalize_domain("<user@spam.example>"),
        Some("spam.example".into())
    );
    assert_eq!(
        normalize_domain("spam.example"),
        Some("spam.example".into())
    );
    assert_eq!(
        normalize_domain("\"a@b\"@spam.example"),
        Some("spam.example".into())
    );
    for none in [
        "",
        "<>",
        "user@",
        "user@[192.0.2.1]",
        "user@[IPv6:2001:db8::1]",
        "192.0.2.1",
        "bad domain.example",
        "user@-bad.example",
    ] {
        assert_eq!(normalize_domain(none), None, "{none:?}");
    }
}

fn result(kind: ZoneKind, weight: i32, outcome: ZoneOutcome) -> ZoneResult {
    ZoneResult {
        zone: format!("{kind:?}-{weight}.test").to_lowercase(),
        kind,
        weight,
        message: None,
        tempfail_on_error: false,
        outcome,
        query: String::new(),
        answers: Vec::new(),
        distrust: None,
    }
}

fn listed() -> ZoneOutcome {
    ZoneOutcome::Listed {
        codes: vec![v4("127.0.0.2")],
        txt: None,
    }
}

#[test]
fn scoring() {
    let results = vec![
        result(ZoneKind::Ip, 2, listed()),
        result(ZoneKind::Ip, 5, ZoneOutcome::NotListed),
        result(ZoneKind::Ip, 7, ZoneOutcome::Refused(v4("127.255.255.254"))),
        result(ZoneKind::Domain, 1, listed()),
        result(ZoneKind::Ip, -1, listed()),
        result(ZoneKind::Allow, 10, listed()),
        result(ZoneKind::Ip, 3, ZoneOutcome::Error(DnsError::Timeout)),
    ];
    assert_eq!(score(&results), 2);
    let s = DnsblSummary::new(&results);
    assert_eq!(s.score, 2);
    assert_eq!(s.listed.len(), 3);
    assert_eq!(s.listed[0].weight, 2, "heaviest first");
    assert_eq!(s.temporary.len(), 1);
    assert!(s.reached(2));
    assert!(!s.reached(3));
    assert!(s.could_reach(5));
    assert!(!s.could_reach(6));
    assert_eq!(allow_listed(&results).unwrap().weight, 10);
    assert!(allow_listed(&results[..5]).is_none());
}

#[test]
fn outcome_words_and_findings() {
    assert_eq!(listed().as_str(), "listed");
    assert_eq!(ZoneOutcome::NotListed.as_str(), "not_listed");
    assert_eq!(
        ZoneOutcome::Refused(v4("127.255.255.254")).as_str(),
        "refused"
    );
    assert_eq!(ZoneOutcome::Error(DnsError::ServFail).as_str(), "temp");
    assert!(ZoneOutcome::Error(DnsError::ServFail).is_temporary());
    assert!(!ZoneOutcome::Refused(v4("127.255.255.254")).is_temporary());
    let f = findings(&[
        result(ZoneKind::Ip, 1, listed()),
        result(ZoneKind::Domain, 1, listed()),
        result(ZoneKind::Allow, 1, listed()),
    ]);
    let checks: Vec<&str> = f.iter().map(|f| f.check).collect();
    assert_eq!(checks, ["dnsbl", "rhsbl", "dnswl"]);
}

#[test]
fn templates() {
    let mut r = result(ZoneKind::Domain, 1, listed());
    assert_eq!(r.template(), DEFAULT_DOMAIN_MESSAGE);
    assert_eq!(
        r.reply(None, Some("spam.example")),
        "550 5.7.1 Sender domain spam.example refused, listed in domain-1.test"
    );
    r.message = Some("554 5.7.1 {zone} says {txt}".into());
    r.outcome = ZoneOutcome::Listed {
        codes: vec![v4("127.0.0.2")],
        txt: Some("go away".into()),
    };
    assert_eq!(r.reply(None, None), "554 5.7.1 domain-1.test says go away");
}

#[tokio::test]
async fn join_all_keeps_order() {
    let out = join_all((0..5u64).map(|i| async move {
        tokio::time::sleep(Duration::from_millis(50 - i * 10)).await;
        i
    }))
    .await;
    assert_eq!(out, [0, 1, 2, 3, 4]);
    let none: Vec<u8> = join_all(Vec::<std::future::Ready<u8>>::new()).await;
    assert!(none.is_empty());
}

// ---- against the test DNS server ----

#[tokio::test]
async fn listed_with_txt() {
    let (_server, dns) = setup().await;
    let r = query_ip(&dns, ip("192.0.2.100"), &[zone("zen.test")], ZoneKind::Ip).await;
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].query, "100.2.0.192.zen.test");
    assert_eq!(
        r[0].outcome,
        ZoneOutcome::Listed {
            codes: vec![v4("127.0.0.2")],
            txt: Some("Listed: see https://zen.test/q?192.0.2.100".into()),
        }
    );
    assert_eq!(score(&r), 1);
    let f = &r[0].findings()[0];
    assert_eq!((f.check, f.outcome.as_str()), ("dnsbl", "listed"));
    assert!(
        f.detail.contains("127.0.0.2") && f.detail.contains("zen.test/q"),
        "{}",
        f.detail
    );
    assert_eq!(
        r[0].reply(Some(ip("192.0.2.100")), None),
        "550 5.7.1 Mail from 192.0.2.100 refused, listed in zen.test"
    );
}

#[tokio::test]
async fn not_listed() {
    let (_server, dns) = setup().await;
    let r = query_ip(&dns, ip("192.0.2.1"), &[zone("zen.test")], ZoneKind::Ip).await;
    assert_eq!(r[0].outcome, ZoneOutcome::NotListed);
    assert_eq!(score(&r), 0);
    assert_eq!(r[0].findings()[0].outcome, "not_listed");
}

#[tokio::test]
async fn return_code_filter() {
    let (_server, dns) = setup().await;
    for codes in [
        &["127.0.0.2-127.0.0.9"][..],
        &["&4"],
        &["127.0.0.4"],
        &["127.0.0.[2..9]"],
    ] {
        let zones = [zone_with_codes("codes.test", codes)];
        let r = query_ip(&dns, ip("192.0.2.101"), &zones, ZoneKind::Ip).await;
        assert_eq!(r[0].outcome, ZoneOutcome::NotListed, "{codes:?}");
        assert_eq!(r[0].answers, [v4("127.0.0.10")]);
        let r = query_ip(&dns, ip("192.0.2.102"), &zones, ZoneKind::Ip).await;
        assert!(r[0].is_listed(), "{codes:?}: {r:?}");
        let r = query_ip(&dns, ip("192.0.2.103"), &zones, ZoneKind::Ip).await;
        assert_eq!(
            r[0].outcome,
            ZoneOutcome::Listed {
                codes: vec![v4("127.0.0.4")],
                txt: None
            },
            "{codes:?}"
        );
    }
    // No return codes: any 127/8 answer lists.
    let r = query_ip(&dns, ip("192.0.2.101"), &[zone("codes.test")], ZoneKind::Ip).await;
    assert!(r[0].is_listed());
}

#[tokio::test]
async fn refused_is_never_a_listing() {
    let (_server, dns) = setup().await;
    // Even when the return codes would cover the answer.
    for z in [
        zone("refuse.test"),
        zone_with_codes("refuse.test", &["127.0.0.0-127.255.255.255"]),
    ] {
        let r = query_ip(&dns, ip("192.0.2.100"), &[z], ZoneKind::Ip).await;
        assert_eq!(r[0].outcome, ZoneOutcome::Refused(v4("127.255.255.254")));
        assert_eq!(score(&r), 0);
        assert_eq!(r[0].findings()[0].outcome, "refused");
    }
}

#[tokio::test]
async fn an_error_does_not_hide_a_listing() {
    let (_server, dns) = setup().await;
    let zones = [zone("broken.test"), zone("zen.test"), zone("odd.test")];
    let r = query_ip(&dns, ip("192.0.2.100"), &zones, ZoneKind::Ip).await;
    assert_eq!(r.len(), 3);
    assert_eq!(r[0].zone, "broken.test");
    assert_eq!(r[0].outcome, ZoneOutcome::Error(DnsError::ServFail));
    assert!(r[1].is_listed());
    // An answer outside 127/8 is not a listing.
    assert_eq!(r[2].outcome, ZoneOutcome::NotListed);
    assert_eq!(r[2].answers, [v4("192.0.2.1")]);
    let s = DnsblSummary::new(&r);
    assert_eq!(s.score, 1);
    assert_eq!(s.temporary.len(), 1);
}

#[tokio::test]
async fn txt_failure_keeps_the_listing() {
    let (_server, dns) = setup().await;
    let r = query_ip(&dns, ip("192.0.2.100"), &[zone("notxt.test")], ZoneKind::Ip).await;
    assert_eq!(
        r[0].outcome,
        ZoneOutcome::Listed {
            codes: vec![v4("127.0.0.2")],
            txt: None
        }
    );
}

#[tokio::test]
async fn ipv6_nibble_query() {
    let (_server, dns) = setup().await;
    let r = query_ip(&dns, ip("2001:db8::1"), &[zone("zen.test")], ZoneKind::Ip).await;
    assert_eq!(r[0].query, format!("{V6_REVERSED}.zen.test"));
    assert!(r[0].is_listed(), "{r:?}");
    // An IPv4-mapped client is queried as IPv4.
    let r = query_ip(
        &dns,
        ip("::ffff:192.0.2.100"),
        &[zone("zen.test")],
        ZoneKind::Ip,
    )
    .await;
    assert_eq!(r[0].query, "100.2.0.192.zen.test");
    assert!(r[0].is_listed());
}

#[tokio::test]
async fn rhsbl_domain_listed() {
    let (_server, dns) = setup().await;
    let zones = [zone("dbl.test")];
    let r = query_domain(&dns, "Someone@SPAM.example", &zones).await;
    assert_eq!(r[0].kind, ZoneKind::Domain);
    assert_eq!(r[0].query, "spam.example.dbl.test");
    assert_eq!(
        r[0].outcome,
        ZoneOutcome::Listed {
            codes: vec![v4("127.0.1.2")],
            txt: Some("spam domain(see dbl.test)".into()),
        }
    );
    assert_eq!(r[0].findings()[0].check, "rhsbl");
    assert_eq!(score(&r), 1);
    let r = query_domain(&dns, "ham.example", &zones).await;
    assert_eq!(r[0].outcome, ZoneOutcome::NotListed);
    // Null sender and literals are not queried.
    for skip in ["", "<>", "user@[192.0.2.1]"] {
        assert!(
            query_domain(&dns, skip, &zones).await.is_empty(),
            "{skip:?}"
        );
    }
}

#[tokio::test]
async fn dnswl_listed() {
    let (_server, dns) = setup().await;
    let r = query_ip(&dns, ip("192.0.2.100"), &[zone("wl.test")], ZoneKind::Allow).await;
    assert!(r[0].is_listed());
    assert_eq!(r[0].kind, ZoneKind::Allow);
    assert_eq!(r[0].findings()[0].check, "dnswl");
    assert_eq!(score(&r), 0, "allow lists do not score");
    assert!(allow_listed(&r).is_some());
}

#[tokio::test]
async fn zones_are_queried_in_parallel() {
    // The resolver makes two tries of half the timeout each: leave room for the 300ms delay.
    let (server, dns) = setup_with_timeout(3000).await;
    let zones = [zone("slow1.test"), zone("slow2.test"), zone("slow3.test")];
    let r = query_ip(&dns, ip("192.0.2.100"), &zones, ZoneKind::Ip).await;
    assert!(r.iter().all(ZoneResult::is_listed), "{r:?}");
    // All three A queries were at the server before any was answered.
    assert!(
        server.max_in_flight() >= 3,
        "max in flight {}",
        server.max_in_flight()
    );
}

#[tokio::test]
async fn per_zone_timeout() {
    let (_server, dns) = setup().await;
    let mut slow = zone("slow1.test");
    slow.timeout = Some(Duration::from_millis(100));
    let r = query_ip(
        &dns,
        ip("192.0.2.100"),
        &[slow, zone("zen.test")],
        ZoneKind::Ip,
    )
    .await;
    assert_eq!(r[0].outcome, ZoneOutcome::Error(DnsError::Timeout));
    assert!(r[0].outcome.is_temporary());
    assert!(r[1].is_listed());
}

#[tokio::test]
async fn zone_settings_are_carried() {
    let (_server, dns) = setup().await;
    let z = DnsblZone {
        weight: 3,
        message: Some("554 5.7.1 {client_ip} in {zone}: {txt}".into()),
        ..zone("zen.test")
    };
    let r = query_ip(&dns, ip("192.0.2.100"), &[z], ZoneKind::Ip).await;
    assert_eq!(r[0].weight, 3);
    assert_eq!(score(&r), 3);
    assert_eq!(
        r[0].reply(Some(ip("192.0.2.100")), None),
        "554 5.7.1 192.0.2.100 in zen.test: Listed: see https://zen.test/q?192.0.2.100"
    );
    assert!(query_ip(&dns, ip("192.0.2.100"), &[], ZoneKind::Ip)
        .await
        .is_empty());
}
