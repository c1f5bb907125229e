use std::time::Duration;

use super::*;
use crate::config::DnsConfig;
use crate::testing::dns_server::TestDnsServer;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn dynamic(name: &str, addr: &str) -> Option<String> {
    DynamicPatterns::default().matches(name, ip(addr))
}

// ---- dynamic names (pure) ----

#[test]
fn seed_example_is_dynamic() {
    // "66.69.100.144 ... cs6669199-144.satx.rr.com, which indicates a home user"
    let why = dynamic("cs6669199-144.satx.rr.com", "66.69.100.144").expect("dynamic");
    assert!(why.starts_with("ip-in-name:"), "{why}");
}

#[test]
fn ip_embedded_in_name() {
    for (name, addr) in [
        ("192-0-2-60.dyn.isp.test", "192.0.2.60"),
        ("192-0-2-60.isp.test", "192.0.2.60"),
        ("60.2.0.192.isp.test", "192.0.2.60"),
        ("60-2-0-192.isp.test", "192.0.2.60"),
        ("host192_0_2_60.isp.test", "192.0.2.60"),
        ("c-73-12-45-6.hsd1.ca.comcast.test", "73.12.45.6"),
        ("cpe-66-69-100-144.satx.res.rr.com", "66.69.100.144"),
        ("x066069100144.isp.test", "66.69.100.144"),
        ("ec2-54-1-2-3.compute-1.amazonaws.com", "54.1.2.3"),
        ("p5b0a1c2d.dip0.t-ipconnect.de", "91.10.28.45"),
        ("c0000240.isp.test", "192.0.2.64"),
        ("h3221226048.isp.test", "192.0.2.64"),
        ("a0-2-60.isp.test", "192.0.2.60"),
        ("2001-db8-0-0-0-0-0-1.v6.isp.test", "2001:db8::1"),
        ("x.0-0-0-1.v6.isp.test", "2001:db8::1"),
        // IPv4-mapped client addresses count as IPv4.
        ("192-0-2-60.isp.test", "::ffff:192.0.2.60"),
    ] {
        let why = dynamic(name, addr);
        assert!(why.is_some(), "{name} for {addr} should look dynamic");
    }
    assert_eq!(
        dynamic("c0000240.isp.test", "192.0.2.64").unwrap(),
        "hex-ip:c0000240"
    );
}

#[test]
fn dynamic_tokens() {
    for (name, token) in [
        ("abc.dhcp.isp.test", "dhcp"),
        ("dyn-12.isp.test", "dyn"),
        ("x.dynamic.isp.test", "dynamic"),
        ("pool-1.isp.test", "pool"),
        ("ppp123.isp.test", "ppp"),
        ("adsl-7.isp.test", "adsl"),
        ("x.dsl.isp.co.uk", "dsl"),
        ("x.xdsl.isp.test", "xdsl"),
        ("cable-9.isp.test", "cable"),
        ("dialup7.isp.test", "dialup"),
        ("dial-7.isp.test", "dial"),
        ("client-9.isp.test", "client"),
        ("cpe001122.isp.test", "cpe"),
        ("broadband.isp.test", "broadband"),
        ("customer-5.isp.test", "customer"),
        ("user7.isp.test", "user"),
        ("DSL-7.ISP.TEST.", "dsl"),
    ] {
        assert_eq!(
            dynamic(name, "198.51.100.7"),
            Some(format!("token:{token}")),
            "{name}"
        );
    }
    assert_eq!(
        dynamic("host123.isp.test", "198.51.100.7"),
        Some("token:host+number".into())
    );
    assert_eq!(
        dynamic("ip-10-1-2-3.isp.test", "198.51.100.7"),
        Some("token:ip+number".into())
    );
}

#[test]
fn legit_mta_names_are_not_dynamic() {
    for (name, addr) in [
        (
            "mail-eopbgr10051.outbound.protection.outlook.com",
            "40.107.1.51",
        ),
        (
            "mail-eopbgr690085.outbound.protection.outlook.com",
            "40.107.69.85",
        ),
        (
            "mail-db3eur04on0705.outbound.protection.outlook.com",
            "40.107.4.105",
        ),
        // Amazon SES names its hosts by the last two octets: not enough to call it dynamic.
        ("a10-219.smtp-out.amazonses.com", "54.240.10.219"),
        ("a10-219.smtp-out.amazonses.com", "198.51.100.7"),
        ("mail-wr1-f171.google.com", "209.85.221.171"),
        ("mail181-24.suw21.mandrillapp.com", "198.2.181.24"),
        ("mx.example.com", "192.0.2.1"),
        ("smtp2.example.org", "192.0.2.2"),
        ("o1.email.example.com", "192.0.2.1"),
        ("mail.example.co.uk", "192.0.2.1"),
        ("outbound.mailhost.example", "192.0.2.1"),
        ("hostmaster.mail.example", "192.0.2.1"),
        ("mail1.example", "192.0.2.1"),
        ("mx10.mail.example", "10.0.0.5"),
        // The ISP's own domain name never counts.
        ("mx.dsl-provider.example", "192.0.2.1"),
        ("mail.dynamic.example", "192.0.2.1"),
        // An IPv6 host with a short number.
        ("mx1.example", "2001:db8::1"),
    ] {
        assert_eq!(dynamic(name, addr), None, "{name} for {addr}");
    }
}

#[test]
fn static_names_are_not_dynamic() {
    assert_eq!(dynamic("static-192-0-2-60.isp.test", "192.0.2.60"), None);
    assert_eq!(dynamic("60.2.0.192.static.isp.test", "192.0.2.60"), None);
}

#[test]
fn extra_patterns_apply_first_and_always() {
    let p = DynamicPatterns::new(&[r"^static-\d+", r"\.home\.example$"]).unwrap();
    assert_eq!(
        p.matches("STATIC-12.isp.test", ip("192.0.2.1")),
        Some(r"pattern:^static-\d+".into())
    );
    assert_eq!(
        p.matches("box.home.example", ip("192.0.2.1")),
        Some(r"pattern:\.home\.example$".into())
    );
    assert_eq!(p.matches("mx.example.com", ip("192.0.2.1")), None);
    assert!(DynamicPatterns::new(&["("])
        .unwrap_err()
        .contains("dynamic_patterns"));
    let cfg = RdnsConfig {
        dynamic_patterns: vec!["^gw\\.".into()],
        ..RdnsConfig::default()
    };
    let p = DynamicPatterns::from_config(&cfg).unwrap();
    assert!(p.matches("gw.example.com", ip("192.0.2.1")).is_some());
}

#[test]
fn host_part_strips_the_registered_domain() {
    assert_eq!(host_part("a.b.isp.example"), "a.b");
    assert_eq!(host_part("a.b.isp.co.uk"), "a.b");
    assert_eq!(host_part("isp.co.uk"), "");
    assert_eq!(host_part("example.com"), "");
    assert_eq!(host_part("com"), "");
}

#[test]
fn outcome_words() {
    assert_eq!(RdnsOutcome::Ok.as_str(), "ok");
    assert_eq!(RdnsOutcome::NoPtr.as_str(), "no_ptr");
    assert_eq!(RdnsOutcome::Forged.as_str(), "forged");
    assert_eq!(RdnsOutcome::Temp.as_str(), "temp");
    assert_eq!(RdnsOutcome::NoPtr.sendmail_word(), "FAIL");
}

// ---- lookups against the test DNS server ----

const ZONE: &str = "
10.2.0.192.in-addr.arpa     PTR   good.fcrdns.test
good.fcrdns.test            A     192.0.2.10
20.2.0.192.in-addr.arpa     PTR   liar.fcrdns.test
liar.fcrdns.test            A     192.0.2.99
21.2.0.192.in-addr.arpa     PTR   missing.fcrdns.test
30.2.0.192.in-addr.arpa     SERVFAIL
31.2.0.192.in-addr.arpa     DROP
40.2.0.192.in-addr.arpa     PTR   broken.fcrdns.test
broken.fcrdns.test          SERVFAIL
41.2.0.192.in-addr.arpa     PTR   broken.fcrdns.test
41.2.0.192.in-addr.arpa     PTR   other.fcrdns.test
other.fcrdns.test           A     192.0.2.41
50.2.0.192.in-addr.arpa     PTR   a.multi.test
50.2.0.192.in-addr.arpa     PTR   b.multi.test
50.2.0.192.in-addr.arpa     PTR   c.multi.test
a.multi.test                A     192.0.2.1
c.multi.test                A     192.0.2.50
60.2.0.192.in-addr.arpa     PTR   alias.cname.test
alias.cname.test            CNAME real.cname.test
real.cname.test             A     192.0.2.60
70.2.0.192.in-addr.arpa     CNAME 70.64-26.2.0.192.in-addr.arpa
70.64-26.2.0.192.in-addr.arpa PTR classless.fcrdns.test
classless.fcrdns.test       A     192.0.2.70
80.2.0.192.in-addr.arpa     PTR   192-0-2-80.dyn.isp.test
192-0-2-80.dyn.isp.test     A     192.0.2.80
1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa PTR v6.fcrdns.test
v6.fcrdns.test              AAAA  2001:db8::1
";

async fn dns(server: &TestDnsServer, timeout_ms: u64) -> Dns {
    Dns::new(&DnsConfig {
        nameservers: vec![server.addr],
        timeout: Duration::from_millis(timeout_ms),
        ..DnsConfig::default()
    })
    .unwrap()
}

async fn run(addr: &str) -> RdnsResult {
    let server = TestDnsServer::start(ZONE).await.unwrap();
    let dns = dns(&server, 500).await;
    lookup(&dns, ip(addr), &DynamicPatterns::default()).await
}

#[tokio::test]
async fn fcrdns_ok() {
    let r = run("192.0.2.10").await;
    assert_eq!(r.outcome, RdnsOutcome::Ok, "{r:?}");
    assert_eq!(r.verified_name.as_deref(), Some("good.fcrdns.test"));
    assert_eq!(r.ptr_names, vec!["good.fcrdns.test"]);
    assert_eq!(r.dynamic, None);
    let f = r.findings();
    assert_eq!(f.len(), 1);
    assert_eq!((f[0].check, f[0].outcome.as_str()), ("rdns", "ok"));
    assert!(
        f[0].detail
            .contains("A/AAAA good.fcrdns.test -> 192.0.2.10"),
        "{}",
        f[0].detail
    );
}

#[tokio::test]
async fn fcrdns_forged_wrong_address() {
    let r = run("192.0.2.20").await;
    assert_eq!(r.outcome, RdnsOutcome::Forged, "{r:?}");
    assert_eq!(r.verified_name, None);
    assert_eq!(r.ptr_names, vec!["liar.fcrdns.test"]);
    assert!(r.findings()[0].detail.contains("192.0.2.99"));
}

#[tokio::test]
async fn fcrdns_forged_nxdomain_forward() {
    let r = run("192.0.2.21").await;
    assert_eq!(r.outcome, RdnsOutcome::Forged, "{r:?}");
    assert!(r.evidence.iter().any(|e| e.contains("NXDOMAIN")), "{r:?}");
}

#[tokio::test]
async fn no_ptr() {
    let r = run("192.0.2.11").await;
    assert_eq!(r.outcome, RdnsOutcome::NoPtr, "{r:?}");
    assert!(r.ptr_names.is_empty());
    assert_eq!(r.findings()[0].outcome, "no_ptr");
}

#[tokio::test]
async fn ptr_servfail_is_temp() {
    let r = run("192.0.2.30").await;
    assert_eq!(r.outcome, RdnsOutcome::Temp, "{r:?}");
    assert!(r.is_temporary());
    assert!(r.findings()[0].detail.contains("SERVFAIL"), "{r:?}");
}

#[tokio::test]
async fn ptr_timeout_is_temp() {
    let server = TestDnsServer::start(ZONE).await.unwrap();
    let dns = dns(&server, 300).await;
    let r = lookup(&dns, ip("192.0.2.31"), &DynamicPatterns::default()).await;
    assert_eq!(r.outcome, RdnsOutcome::Temp, "{r:?}");
}

#[tokio::test]
async fn forward_servfail_is_temp() {
    let r = run("192.0.2.40").await;
    assert_eq!(r.outcome, RdnsOutcome::Temp, "{r:?}");
    assert_eq!(r.ptr_names, vec!["broken.fcrdns.test"]);
}

#[tokio::test]
async fn one_verifying_ptr_beats_a_failed_one() {
    let r = run("192.0.2.41").await;
    assert_eq!(r.outcome, RdnsOutcome::Ok, "{r:?}");
    assert_eq!(r.verified_name.as_deref(), Some("other.fcrdns.test"));
}

#[tokio::test]
async fn multiple_ptrs_one_matching() {
    let r = run("192.0.2.50").await;
    assert_eq!(r.outcome, RdnsOutcome::Ok, "{r:?}");
    assert_eq!(r.verified_name.as_deref(), Some("c.multi.test"));
    assert_eq!(r.ptr_names.len(), 3);
}

#[tokio::test]
async fn cname_in_forward_lookup() {
    let r = run("192.0.2.60").await;
    assert_eq!(r.outcome, RdnsOutcome::Ok, "{r:?}");
    assert_eq!(r.verified_name.as_deref(), Some("alias.cname.test"));
}

#[tokio::test]
async fn rfc2317_classless_ptr() {
    let r = run("192.0.2.70").await;
    assert_eq!(r.outcome, RdnsOutcome::Ok, "{r:?}");
    assert_eq!(r.verified_name.as_deref(), Some("classless.fcrdns.test"));
}

#[tokio::test]
async fn verified_dynamic_name() {
    let r = run("192.0.2.80").await;
    assert_eq!(r.outcome, RdnsOutcome::Ok, "{r:?}");
    assert!(r.dynamic.is_some(), "{r:?}");
    let f = r.findings();
    assert_eq!(f.len(), 2);
    assert_eq!(f[1].outcome, "dynamic");
    assert!(
        f[1].detail.contains("192-0-2-80.dyn.isp.test"),
        "{}",
        f[1].detail
    );
}

#[tokio::test]
async fn ipv6_and_mapped_clients() {
    let r = run("2001:db8::1").await;
    assert_eq!(r.outcome, RdnsOutcome::Ok, "{r:?}");
    assert_eq!(r.verified_name.as_deref(), Some("v6.fcrdns.test"));
    let r = run("::ffff:192.0.2.10").await;
    assert_eq!(r.outcome, RdnsOutcome::Ok, "{r:?}");
    assert_eq!(r.ip, ip("192.0.2.10"));
}

#[tokio::test]
async fn at_most_ten_ptr_names_are_checked() {
    let mut zone = String::new();
    for i in 0..12 {
        zone.push_str(&format!("9.2.0.192.in-addr.arpa PTR n{i:02}.many.test\n"));
    }
    zone.push_str("n11.many.test A 192.0.2.9\n");
    let server = TestDnsServer::start(&zone).await.unwrap();
    let dns = dns(&server, 500).await;
    let r = lookup(&dns, ip("192.0.2.9"), &DynamicPatterns::default()).await;
    assert_eq!(r.ptr_names.len(), 12);
    // Whatever order the resolver gave the names in, only ten forward lookups ran.
    let forward = r
        .evidence
        .iter()
        .filter(|e| e.starts_with("A/AAAA"))
        .count();
    assert_eq!(forward, MAX_PTR_NAMES, "{r:?}");
}
