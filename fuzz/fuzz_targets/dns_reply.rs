//! DNS-derived and client-given strings on their way into SMTP replies and headers: PTR names
//! (rDNS replies), TXT texts (DNSBL replies), the HELO name (HELO reply) and the sender's
//! domain, through the real policy and the session's milter reply, then as the MTA decodes it.
//! Invariants (see common.rs): never panics, one reply line, no CR/LF/NUL, `%` doubled, the
//! code class of the verdict kept, at most 510 octets; tags and the X-Greylist value one line.
//!
//! Run: `bash tests/fuzz.sh dns_reply` (stable toolchain), or `cargo fuzz run dns_reply`.
#![no_main]

#[path = "common.rs"]
mod common;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::pin::pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use mxsentry::checks::dnsbl::{self, MessageVars, ZoneKind, ZoneOutcome, ZoneResult};
use mxsentry::checks::greylist::{GreylistOutcome, GreylistResult};
use mxsentry::checks::helo::HeloResolve;
use mxsentry::checks::rdns::{DynamicPatterns, RdnsOutcome, RdnsResult};
use mxsentry::config::Config;
use mxsentry::dns::DnsError;
use mxsentry::lookups::{ClientLookups, DnsChecks};
use mxsentry::policy::{Envelope, Policy};

/// Configurations whose replies put DNS data in every place a template allows. The long one
/// is near the 510-octet limit before anything is substituted.
const CONFIGS: [&str; 4] = [
    // Defaults, blocking actions everywhere.
    r#"
[milter]
hostname = "mx.example.org"
[dns]
nameservers = ["127.0.0.1:1"]
[rdns]
no_ptr = "reject"
forged = "reject"
dynamic = "reject"
[[dnsbl.zones]]
zone = "bl.test"
[[dnsbl.domain_zones]]
zone = "dbl.test"
[[dnsbl.allow_zones]]
zone = "wl.test"
"#,
    // Every placeholder, twice, in temporary replies.
    r#"
[milter]
hostname = "mx.example.org"
[dns]
nameservers = ["127.0.0.1:1"]
[helo]
action = "tempfail"
reply = "451 4.7.1 {helo} said {helo}, 100% bogus"
[rdns]
no_ptr = "tempfail"
forged = "tempfail"
dynamic = "tempfail"
no_ptr_reply = "450 4.7.25 {client_ip} {client_name} {client_ip}"
forged_reply = "450 {client_name}{client_name} does not resolve to {client_ip}"
[dnsbl]
action = "tempfail"
[[dnsbl.zones]]
zone = "bl.test"
message = "451 4.7.1 {txt} {zone} {txt} {client_ip} {sender_domain} {unknown} {"
[[dnsbl.domain_zones]]
zone = "dbl.test"
message = "451 {sender_domain} listed in {zone}: {txt}%"
"#,
    // Long templates (LONG_CONFIG, below): substitution must not push a reply past the line
    // limit.
    "",
    // Dry run with tags: hostile data must not reach the tag header.
    r#"
[milter]
hostname = "mx.example.org"
mode = "dry-run"
[dns]
nameservers = ["127.0.0.1:1"]
[helo]
action = "tag"
[rdns]
no_ptr = "tag"
forged = "reject"
dynamic = "tag"
[dnsbl]
threshold = 3
below_threshold = "tag"
[[dnsbl.zones]]
zone = "bl.test"
weight = 2
[[dnsbl.domain_zones]]
zone = "dbl.test"
weight = 2
"#,
];

/// Templates of 490 characters before substitution (config allows 510).
fn long_config() -> String {
    let x = "x".repeat(470);
    format!(
        r#"
[milter]
hostname = "mx.example.org"
[dns]
nameservers = ["127.0.0.1:1"]
[helo]
reply = "550 5.7.1 {x} {{helo}}"
[rdns]
no_ptr = "reject"
forged = "reject"
dynamic = "reject"
forged_reply = "550 5.7.1 {x} {{client_name}}"
[[dnsbl.zones]]
zone = "bl.test"
message = "550 5.7.1 {x} {{txt}}"
[[dnsbl.domain_zones]]
zone = "dbl.test"
message = "550 5.7.1 {x} {{sender_domain}}"
"#
    )
}

struct Setup {
    policy: Policy,
    checks: Arc<DnsChecks>,
    dynamic: DynamicPatterns,
    config: Config,
}

fn setups() -> &'static [Setup] {
    static SETUPS: OnceLock<Vec<Setup>> = OnceLock::new();
    SETUPS.get_or_init(|| {
        CONFIGS
            .iter()
            .map(|text| match *text {
                "" => long_config(),
                t => t.to_string(),
            })
            .map(|text| {
                let config = Config::parse(&text, Path::new("fuzz.toml")).expect("valid config");
                Setup {
                    policy: Policy::from_config(&config).expect("policy"),
                    checks: Arc::new(DnsChecks::from_config(&config).expect("dns checks")),
                    dynamic: DynamicPatterns::from_config(&config.rdns).expect("patterns"),
                    config,
                }
            })
            .collect()
    })
}

/// The input: [`HEADER`] bytes of choices, then the strings separated by 0xFF (a byte that
/// never occurs in UTF-8, so no string loses a character to the framing): the HELO name, the
/// sender, the TXT text, then the PTR names. Plain bytes rather than `Arbitrary`, so that the
/// seed corpus (fuzz/corpus/dns_reply, made by fuzz/make-corpus.py) holds readable, real-looking
/// strings.
#[derive(Debug)]
struct Input {
    setup: u8,
    /// The client address: IPv4 (the first four bytes) when `v6` is false.
    v6: bool,
    addr: [u8; 16],
    rdns: u8,
    /// Bits: 1 IP list listed, 2 domain list listed, 4 allow list listed, 8 a list failed.
    listed: u8,
    weight: i8,
    helo_resolve: u8,
    waited: u64,
    now: u64,
    helo: String,
    sender: String,
    txt: Option<String>,
    ptr_names: Vec<String>,
}

const HEADER: usize = 38;

impl Input {
    fn parse(data: &[u8]) -> Input {
        let mut head = [0u8; HEADER];
        let n = data.len().min(HEADER);
        head[..n].copy_from_slice(&data[..n]);
        let mut fields = data[n..]
            .split(|&b| b == 0xff)
            .map(|f| String::from_utf8_lossy(f).into_owned());
        let u64_at = |i: usize| u64::from_le_bytes(head[i..i + 8].try_into().expect("8 bytes"));
        Input {
            setup: head[0],
            v6: head[1] & 1 != 0,
            addr: head[2..18].try_into().expect("16 bytes"),
            rdns: head[18],
            listed: head[19],
            weight: head[20] as i8,
            helo_resolve: head[21],
            waited: u64_at(22),
            now: u64_at(30),
            helo: fields.next().unwrap_or_default(),
            sender: fields.next().unwrap_or_default(),
            // An empty TXT field stands for "no TXT record".
            txt: fields.next().filter(|t| !t.is_empty()),
            ptr_names: fields.take(12).collect(),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let input = Input::parse(data);
    let all = setups();
    let setup = &all[usize::from(input.setup) % all.len()];
    let ip = if input.v6 {
        IpAddr::from(input.addr)
    } else {
        let [a, b, c, d, ..] = input.addr;
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    };

    // The DNSBL message on its own, as the template language sees it.
    for zone in setup
        .config
        .dnsbl
        .zones
        .iter()
        .chain(&setup.config.dnsbl.domain_zones)
    {
        let template = zone.message.as_deref().unwrap_or(dnsbl::DEFAULT_MESSAGE);
        let out = dnsbl::render_message(
            template,
            &MessageVars {
                client_ip: Some(ip),
                zone: &zone.zone,
                txt: input.txt.as_deref(),
                sender_domain: Some(&input.sender),
            },
        );
        common::check_one_line("rendered DNSBL message", &out);
    }

    // The PTR names as rDNS would report them, judged as rDNS judges them.
    let ptr_names = input.ptr_names.clone();
    let outcome = match input.rdns % 4 {
        0 => RdnsOutcome::Ok,
        1 => RdnsOutcome::NoPtr,
        2 => RdnsOutcome::Forged,
        _ => RdnsOutcome::Temp,
    };
    let verified_name = (outcome == RdnsOutcome::Ok)
        .then(|| ptr_names.first().cloned())
        .flatten();
    let judged = verified_name
        .as_deref()
        .or(ptr_names.first().map(String::as_str));
    let dynamic = judged.and_then(|n| setup.dynamic.matches(n, ip));
    let rdns = RdnsResult {
        ip,
        outcome,
        ptr_names: ptr_names.clone(),
        verified_name,
        dynamic,
        evidence: ptr_names
            .iter()
            .map(|n| format!("PTR {ip} -> {n}"))
            .collect(),
        answers: Default::default(),
    };

    let zone_result = |zone: &str, kind: ZoneKind, listed: bool| ZoneResult {
        zone: zone.to_string(),
        kind,
        weight: i32::from(input.weight),
        message: setup
            .config
            .dnsbl
            .zones
            .iter()
            .chain(&setup.config.dnsbl.domain_zones)
            .find(|z| z.zone == zone)
            .and_then(|z| z.message.clone()),
        // Either choice for an unreachable list: neither may turn into a 5xx.
        tempfail_on_error: input.listed & 16 != 0,
        outcome: if listed {
            ZoneOutcome::Listed {
                codes: vec![Ipv4Addr::new(127, 0, 0, 2)],
                txt: input.txt.clone(),
            }
        } else if input.listed & 8 != 0 {
            ZoneOutcome::Error(DnsError::Timeout)
        } else {
            ZoneOutcome::NotListed
        },
        query: format!("q.{zone}"),
        answers: vec![Ipv4Addr::new(127, 0, 0, 2)],
        // A zone that failed its health probes: its listing is log-only.
        distrust: (input.listed & 32 != 0).then(|| "127.0.0.1 listed".to_string()),
    };
    let ip_lists = vec![zone_result("bl.test", ZoneKind::Ip, input.listed & 1 != 0)];
    let domain_lists = vec![zone_result(
        "dbl.test",
        ZoneKind::Domain,
        input.listed & 2 != 0,
    )];
    let allow_lists = vec![zone_result(
        "wl.test",
        ZoneKind::Allow,
        input.listed & 4 != 0,
    )];
    let helo_resolve = match input.helo_resolve % 4 {
        0 => None,
        1 => Some(HeloResolve::Resolves),
        2 => Some(HeloResolve::NxDomain),
        _ => Some(HeloResolve::Temp(DnsError::Timeout)),
    };
    let mut lookups = ClientLookups::from_results(
        setup.checks.clone(),
        Some(rdns),
        ip_lists,
        allow_lists,
        domain_lists,
        helo_resolve,
    );
    let env = Envelope {
        client_ip: Some(ip),
        client_name: "unknown",
        helo: &input.helo,
        sender: &input.sender,
        recipient: "user@example.org",
        authenticated: false,
    };
    let decision = ready(setup.policy.decide_recipient(&env, Some(&mut lookups)));
    common::check_verdict_on_wire(&decision.verdict);
    if let Some(would) = &decision.would {
        common::check_verdict_on_wire(would);
    }
    // What goes into the tag header (`would-<verdict> <cause>`, then the tags).
    common::check_one_line("decision cause", &decision.cause);
    for tag in &decision.tags {
        common::check_one_line("tag", tag);
    }

    // The X-Greylist header for any wait and any clock.
    let passed = GreylistResult {
        outcome: GreylistOutcome::Passed {
            waited: input.waited,
        },
        key: String::new(),
        client: String::new(),
    };
    let (name, value) = passed.header("0.1.0", input.now).expect("a passed triplet");
    common::check_one_line("header name", &name);
    common::check_one_line("X-Greylist value", &value);
    assert!(value.len() < 200, "{value}");
});

/// Runs a future that must not wait: every lookup result is already there.
fn ready<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the policy waited although every lookup was done"),
    }
}
