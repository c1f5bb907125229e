use super::*;
use std::net::IpAddr;
use std::time::Duration;

const PATH: &str = "/etc/mxsentry/milter.toml";

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new(PATH))
}

/// Parses `text`, expects an error on `line` whose message contains `needle`.
fn error_at(text: &str, line: usize, needle: &str) -> ConfigError {
    let err = parse(text).expect_err("expected a configuration error");
    let shown = err.to_string();
    assert_eq!(err.line, Some(line), "{shown}");
    assert!(shown.starts_with(&format!("{PATH}:{line}: ")), "{shown}");
    assert!(shown.contains(needle), "{shown}");
    err
}

fn inet(s: &str) -> ListenSpec {
    ListenSpec::Inet(s.parse().unwrap())
}

const EXAMPLE: &str = r#"
[milter]
listen = "inet:8890@127.0.0.1"
hostname = "mx.example.org"
local_names = ["example.org"]
local_addresses = []
mode = "enforce"
[trusted]
networks = ["127.0.0.0/8", "::1/128"]
authenticated = true
[dns]
nameservers = []
timeout = "3s"
[helo]
action = "reject"
[rdns]
no_ptr = "tempfail"
forged = "tempfail"
dynamic = "greylist"
[dnsbl]
threshold = 1
[[dnsbl.zones]]
zone = "zen.example"
weight = 1
returncodes = ["127.0.0.2-127.0.0.11"]
message = "550 5.7.1 Mail from {client_ip} refused, listed in {zone}"
[[dnsbl.domain_zones]]
zone = "dbl.example"
[[dnsbl.allow_zones]]
zone = "wl.example"
[greylist]
enabled = true
delay = "5m"
retry_window = "2d"
autowhite = "24h"
ipv4_prefix = 24
ipv6_prefix = 64
pool_by_rdns = true
client_autowhite_after = 5
store = "embedded"
path = "/var/lib/mxsentry/greylist.db"
redis_url = "redis://127.0.0.1:6379/0"
[sender_rules]
access_file = "/etc/mxsentry/access"
[[sender_rules.regex]]
pattern = '^[^@]+@(emalsrv|complains)\.'
action = 'ERROR:"550 5.7.1 Sender banned"'
[metrics]
listen = "127.0.0.1:9890"
"#;

#[test]
fn defaults_match_the_contract() {
    let c = Config::default();
    assert_eq!(c.milter.listen, vec![inet("127.0.0.1:8890")]);
    assert!(!c.milter.hostname.is_empty());
    assert_eq!(c.milter.mode, Mode::Enforce);
    assert_eq!(c.milter.exempt_recipients, ["postmaster", "abuse"]);
    assert_eq!(c.milter.max_connections, 10_000);
    assert_eq!(c.milter.overflow_action, OverflowAction::Tempfail);
    assert_eq!(c.milter.negotiation_timeout, Duration::from_secs(10));
    assert_eq!(c.milter.idle_timeout, Duration::from_secs(300));
    assert_eq!(c.milter.write_timeout, Duration::from_secs(30));
    assert_eq!(c.milter.max_frame, 65_540);
    assert_eq!(c.milter.max_macro_frame, 16_384);
    assert_eq!(c.milter.max_macros, 128);
    assert_eq!(c.milter.max_recipients, 1000);
    assert_eq!(c.milter.worker_threads, 1);
    assert_eq!(c.milter.socket_mode, None);
    assert_eq!(c.milter.tag_header, "X-Mxsentry");
    let nets: Vec<String> = c.trusted.networks.iter().map(|n| n.to_string()).collect();
    assert_eq!(nets, ["127.0.0.0/8", "::1/128"]);
    assert!(c.trusted.authenticated);
    assert!(c.dns.nameservers.is_empty());
    assert_eq!(c.dns.timeout, Duration::from_secs(3));
    assert_eq!(c.dns.cache_size, 10_000);
    assert_eq!(c.dns.max_concurrent, 256);
    assert!(c.dns.prefetch);
    assert_eq!(c.dns.prefetch_percent, 25);
    assert_eq!(c.dns.temp_failure, TempFailureAction::Tempfail);
    assert_eq!(c.helo.action, Action::Reject);
    assert!(!c.helo.check_resolves);
    assert_eq!(
        (c.rdns.no_ptr, c.rdns.forged, c.rdns.dynamic),
        (Action::Tempfail, Action::Tempfail, Action::Greylist)
    );
    assert_eq!((c.dnsbl.threshold, c.dnsbl.action), (1, Action::Reject));
    assert!(c.dnsbl.zones.is_empty());
    let g = &c.greylist;
    assert!(g.enabled && g.pool_by_rdns && !g.hash_keys);
    assert_eq!(g.delay, Duration::from_secs(300));
    assert_eq!(g.retry_window, Duration::from_secs(2 * 86_400));
    assert_eq!(g.autowhite, Duration::from_secs(86_400));
    assert_eq!((g.ipv4_prefix, g.ipv6_prefix), (24, 64));
    assert_eq!(g.client_autowhite_after, 5);
    assert_eq!(g.store, StoreKind::Embedded);
    assert_eq!(g.path, Path::new("/var/lib/mxsentry/greylist.db"));
    assert_eq!(g.redis_url, "redis://127.0.0.1:6379/0");
    assert_eq!(g.commit_interval, Duration::from_secs(1));
    assert_eq!(g.max_uncommitted, 100_000);
    assert_eq!(c.sender_rules.access_file, None);
    assert!(c.sender_rules.regex.is_empty());
    assert_eq!(c.metrics.listen, Some("127.0.0.1:9890".parse().unwrap()));
    assert_eq!(c.log.format, LogFormat::Text);
    assert_eq!(c.log.level, "info");
}

#[test]
fn default_replies_are_valid() {
    let c = Config::default();
    for reply in [
        &c.helo.reply,
        &c.rdns.no_ptr_reply,
        &c.rdns.forged_reply,
        &c.dns.tempfail_reply,
        &c.greylist.reply,
    ] {
        assert_eq!(values::check_smtp_reply(reply, false), Ok(()), "{reply}");
    }
    assert!(c.greylist.reply.starts_with("450 "));
    assert!(c.dns.tempfail_reply.starts_with("451 "));
}

#[test]
fn empty_file_gives_defaults() {
    let c = parse("").unwrap();
    let d = Config::default();
    assert_eq!(c.milter.listen, d.milter.listen);
    assert_eq!(c.milter.hostname, d.milter.hostname);
    assert_eq!(c.greylist.delay, d.greylist.delay);
    assert_eq!(c.metrics.listen, d.metrics.listen);
    let c = parse("[milter]\n[greylist]\n").unwrap();
    assert_eq!(c.milter.max_frame, d.milter.max_frame);
}

#[test]
fn contract_example_parses() {
    let c = parse(EXAMPLE).unwrap();
    assert_eq!(c.milter.listen, vec![inet("127.0.0.1:8890")]);
    assert_eq!(c.milter.hostname, "mx.example.org");
    assert_eq!(c.milter.local_names, ["example.org"]);
    assert!(c.milter.is_local_name("MX.Example.Org."));
    assert!(c.milter.is_local_name("example.org"));
    assert!(!c.milter.is_local_name("example.com"));
    assert_eq!(c.dnsbl.zones.len(), 1);
    let zen = &c.dnsbl.zones[0];
    assert_eq!(zen.zone, "zen.example");
    assert_eq!(zen.weight, 1);
    assert_eq!(
        zen.returncodes,
        [ReturnCode::Range(
            "127.0.0.2".parse().unwrap(),
            "127.0.0.11".parse().unwrap()
        )]
    );
    assert!(zen.is_listed("127.0.0.4".parse().unwrap()));
    assert!(!zen.is_listed("127.0.0.20".parse().unwrap()));
    assert_eq!(c.dnsbl.domain_zones[0].zone, "dbl.example");
    assert_eq!(c.dnsbl.domain_zones[0].weight, 1);
    assert!(c.dnsbl.domain_zones[0].is_listed("127.0.1.2".parse().unwrap()));
    assert!(!c.dnsbl.domain_zones[0].is_listed("127.255.255.254".parse().unwrap()));
    assert_eq!(c.dnsbl.allow_zones[0].zone, "wl.example");
    assert_eq!(
        c.sender_rules.access_file.as_deref(),
        Some(Path::new("/etc/mxsentry/access"))
    );
    let rule = &c.sender_rules.regex[0];
    assert!(rule.case_insensitive);
    assert_eq!(rule.action.get_ref(), "ERROR:\"550 5.7.1 Sender banned\"");
    let re = rule.compile().unwrap();
    assert!(re.is_match("bob@EMALSRV.example"));
    assert!(!re.is_match("bob@example.org"));
}

#[test]
fn shipped_milter_toml_parses() {
    let text = include_str!("../../milter.toml");
    let c = Config::parse(text, Path::new("milter.toml")).unwrap();
    assert_eq!(c.milter.listen, vec![inet("127.0.0.1:8890")]);
    assert_eq!(c.milter.mode, Mode::Enforce);
    let nets: Vec<String> = c.trusted.networks.iter().map(|n| n.to_string()).collect();
    assert_eq!(nets, ["127.0.0.0/8", "::1/128"]);
    assert_eq!(c.greylist.path, Path::new("greylist.db"));
    assert_eq!(c.sender_rules.access_file, None);
    assert!(c.dnsbl.zones.is_empty() && c.dnsbl.domain_zones.is_empty());
    assert!(c.dns.nameservers.is_empty());
    assert_eq!(c.metrics.listen, Some("127.0.0.1:9890".parse().unwrap()));
    // The limits it shows are the defaults.
    let (m, d) = (&c.milter, Config::default().milter);
    assert_eq!(
        (m.max_connections, m.overflow_action, m.negotiation_timeout),
        (d.max_connections, d.overflow_action, d.negotiation_timeout)
    );
    assert_eq!(
        (
            m.max_frame,
            m.max_macro_frame,
            m.max_macros,
            m.max_recipients
        ),
        (
            d.max_frame,
            d.max_macro_frame,
            d.max_macros,
            d.max_recipients
        )
    );
}

#[test]
fn shipped_milter_toml_examples_parse_when_uncommented() {
    // The commented-out examples (`#key = ...` lines and `#[[table]]` headers) must be valid
    // too; one-line comments after them ("# ...") are left alone.
    let text: String = include_str!("../../milter.toml")
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if !rest.starts_with(' ') && !rest.is_empty() => rest,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let c = Config::parse(&text, Path::new("milter.toml")).unwrap();
    assert!(!c.dnsbl.zones.is_empty());
}

#[test]
fn listen_accepts_a_string_or_an_array() {
    let c = parse("[milter]\nlisten = \"inet:127.0.0.1:10025\"\n").unwrap();
    assert_eq!(c.milter.listen, vec![inet("127.0.0.1:10025")]);
    let c = parse(
        "[milter]\nlisten = [\n  \"inet:8890@127.0.0.1\",\n  \"inet6:8890@::1\",\n  \"unix:/run/mxsentry.sock\",\n]\n",
    )
    .unwrap();
    assert_eq!(
        c.milter.listen,
        vec![
            inet("127.0.0.1:8890"),
            inet("[::1]:8890"),
            ListenSpec::Unix("/run/mxsentry.sock".into())
        ]
    );
}

#[test]
fn listen_errors_name_the_line() {
    error_at("[milter]\nlisten = \"inet:0@127.0.0.1\"\n", 2, "1 to 65535");
    error_at("[milter]\nlisten = []\n", 2, "at least one address");
    error_at(
        "[milter]\nlisten = [\n  \"inet:8890@127.0.0.1\",\n  \"unix:relative.sock\",\n]\n",
        4,
        "must be absolute",
    );
    error_at(
        "[milter]\nlisten = [\"inet:8890@127.0.0.1\", \"inet:127.0.0.1:8890\"]\n",
        2,
        "given twice",
    );
    error_at("[milter]\nlisten = 8890\n", 2, "invalid type");
}

#[test]
fn unknown_key_names_its_line() {
    let text = "# mxsentry\n\n[milter]\nhostname = \"mx.example.org\"\n\n\nlisen = \"inet:8890@127.0.0.1\"\n";
    let err = error_at(text, 7, "unknown field `lisen`, expected one of");
    assert_eq!(err.file, Path::new(PATH));
    error_at(
        "[greylist]\nenabled = true\n[gerylist]\n",
        3,
        "unknown field `gerylist`",
    );
    error_at(
        "[[dnsbl.zones]]\nzone = \"zen.example\"\nwieght = 2\n",
        3,
        "unknown field `wieght`",
    );
}

#[test]
fn bad_durations_name_their_line() {
    error_at(
        "[greylist]\nenabled = true\ndelay = \"5 minutes\"\n",
        3,
        "invalid duration",
    );
    error_at("[milter]\nidle_timeout = \"0s\"\n", 2, "longer than zero");
    error_at("[dns]\ntimeout = 3\n", 2, "need a unit");
    error_at(
        "[[dnsbl.zones]]\nzone = \"zen.example\"\ntimeout = \"fast\"\n",
        3,
        "invalid duration",
    );
    let c = parse("[greylist]\ndelay = 0\nautowhite = \"0\"\n").unwrap();
    assert_eq!(c.greylist.delay, Duration::ZERO);
    assert_eq!(c.greylist.autowhite, Duration::ZERO);
    let c = parse("[[dnsbl.zones]]\nzone = \"zen.example\"\ntimeout = \"500ms\"\n").unwrap();
    assert_eq!(c.dnsbl.zones[0].timeout, Some(Duration::from_millis(500)));
}

#[test]
fn delay_must_be_shorter_than_retry_window() {
    error_at(
        "[greylist]\ndelay = \"2d\"\n\nretry_window = \"1d\"\n",
        4,
        "greylist.delay (2d) must be shorter than greylist.retry_window (1d)",
    );
    error_at("[greylist]\ndelay = \"3d\"\n", 2, "must be shorter");
}

#[test]
fn bad_regex_names_its_line() {
    let text = r#"
[sender_rules]
[[sender_rules.regex]]
pattern = '^ok@'
action = "REJECT"

[[sender_rules.regex]]
pattern = '^(unclosed@'
action = "REJECT"
"#;
    error_at(text, 8, "invalid regex \"^(unclosed@\"");
    error_at(
        "[rdns]\ndynamic_patterns = [\n  'dyn',\n  '[',\n]\n",
        4,
        "invalid regex",
    );
}

#[test]
fn bad_sender_action_names_its_line() {
    let text = "[[sender_rules.regex]]\npattern = '^x@'\naction = 'FROBNICATE'\n";
    error_at(text, 3, "FROBNICATE");
}

#[test]
fn regex_rule_fields() {
    error_at(
        "[[sender_rules.regex]]\npattern = '^x@'\n",
        1,
        "missing field `action`",
    );
    let c = parse(
        "[[sender_rules.regex]]\npattern = '^Bob@'\naction = 'REJECT'\ncase_insensitive = false\n",
    )
    .unwrap();
    let re = c.sender_rules.regex[0].compile().unwrap();
    assert!(re.is_match("Bob@example.org") && !re.is_match("bob@example.org"));
}

#[test]
fn bad_return_code_names_its_line() {
    let text = "[dnsbl]\n[[dnsbl.zones]]\nzone = \"zen.example\"\nreturncodes = [\n  \"127.0.0.2\",\n  \"127.0.0.11-127.0.0.2\",\n]\n";
    error_at(text, 6, "starts after it ends");
    error_at(
        "[[dnsbl.zones]]\nzone = \"zen.example\"\nreturncodes = [\"&0x100\"]\n",
        3,
        "bitmask",
    );
    let c =
        parse("[[dnsbl.zones]]\nzone = \"bl.example\"\nreturncodes = [\"127.0.0.2\", \"&0x4\"]\n")
            .unwrap();
    let zone = &c.dnsbl.zones[0];
    assert!(zone.is_listed("127.0.0.2".parse().unwrap()));
    assert!(zone.is_listed("127.0.0.4".parse().unwrap()));
    assert!(!zone.is_listed("127.0.0.3".parse().unwrap()));
}

#[test]
fn dnsbl_zone_checks() {
    error_at(
        "[[dnsbl.zones]]\nzone = \"bad zone\"\n",
        2,
        "invalid DNS name",
    );
    error_at(
        "[[dnsbl.zones]]\nzone = \"zen.example\"\nmessage = \"listed\"\n",
        3,
        "invalid SMTP reply",
    );
    error_at("[dnsbl]\nthreshold = 0\n", 2, "invalid threshold 0");
    error_at(
        "[dnsbl]\nthreshold = 1\nhealth_check_interval = \"100ms\"\n",
        3,
        "health_check_interval 100ms is too short",
    );
    error_at(
        "[dnsbl]\nhealth_check_interval = \"often\"\n",
        2,
        "invalid duration \"often\"",
    );
    let interval = |t: &str| parse(t).unwrap().dnsbl.health_check_interval;
    assert_eq!(interval(""), Duration::from_secs(60));
    assert_eq!(
        interval("[dnsbl]\nhealth_check_interval = \"0s\"\n"),
        Duration::ZERO
    );
    assert_eq!(
        interval("[dnsbl]\nhealth_check_interval = \"5m\"\n"),
        Duration::from_secs(300)
    );
    assert!(parse("[[dnsbl.zones]]\nweight = 2\n")
        .unwrap_err()
        .to_string()
        .contains("missing field `zone`"));
    let c = parse("[[dnsbl.zones]]\nzone = \"ZEN.Example.\"\nweight = -2\n").unwrap();
    assert_eq!(c.dnsbl.zones[0].zone, "zen.example");
    assert_eq!(c.dnsbl.zones[0].weight, -2);
}

#[test]
fn zone_health_probe_settings() {
    let c = parse(
        "[[dnsbl.zones]]\nzone = \"a.example\"\n\
         [[dnsbl.zones]]\nzone = \"b.example\"\nhealth_check = \"off\"\n\
         [[dnsbl.zones]]\nzone = \"c.example\"\ntest_address = \"127.0.0.4\"\n\
         [[dnsbl.domain_zones]]\nzone = \"d.example\"\ntest_name = \"DBLtest.com\"\n",
    )
    .unwrap();
    let z = &c.dnsbl.zones;
    assert_eq!(z[0].health_check, HealthCheck::Rfc5782);
    assert_eq!(z[1].health_check, HealthCheck::Off);
    assert_eq!(z[2].test_address, Some("127.0.0.4".parse().unwrap()));
    assert_eq!(
        c.dnsbl.domain_zones[0].test_name.as_deref(),
        Some("dbltest.com")
    );
    error_at(
        "[[dnsbl.zones]]\nzone = \"a.example\"\nhealth_check = \"never\"\n",
        3,
        "unknown variant `never`, expected `rfc5782` or `off`",
    );
    error_at(
        "[[dnsbl.domain_zones]]\nzone = \"d.example\"\ntest_name = \"bad name\"\n",
        3,
        "invalid DNS name",
    );
    for (address, why) in [
        ("127.0.0.1", "127.0.0.1 is the address a list must not list"),
        (
            "127.255.255.2",
            "must be in 127.0.0.0/8 and outside 127.255.255.0/24",
        ),
        ("10.0.0.2", "must be in 127.0.0.0/8"),
        ("test", "not an IPv4 address"),
    ] {
        let text = format!("[[dnsbl.zones]]\nzone = \"a.example\"\ntest_address = \"{address}\"\n");
        error_at(&text, 3, why);
    }
    // The second zone of its kind is named, at its own line.
    error_at(
        "[[dnsbl.zones]]\nzone = \"a.example\"\n[[dnsbl.zones]]\nzone = \"b.example\"\n\
         test_name = \"test.example\"\n",
        5,
        "[[dnsbl.zones]] b.example: test_name is not used here: an IP list is probed at test_address",
    );
    error_at(
        "[[dnsbl.domain_zones]]\nzone = \"d.example\"\ntest_address = \"127.0.0.2\"\n",
        3,
        "test_address is not used here: a domain list is probed at test_name",
    );
    error_at(
        "[[dnsbl.allow_zones]]\nzone = \"w.example\"\nhealth_check = \"off\"\n\
         test_address = \"127.0.0.2\"\n",
        4,
        "[[dnsbl.allow_zones]] w.example: test_address is not used with health_check = \"off\"",
    );
}

#[test]
fn prefix_and_frame_ranges_name_their_line() {
    error_at(
        "[greylist]\nipv4_prefix = 33\n",
        2,
        "invalid ipv4_prefix 33: must be from 0 to 32",
    );
    error_at(
        "[greylist]\nipv6_prefix = 129\n",
        2,
        "invalid ipv6_prefix 129",
    );
    error_at("[greylist]\n\nipv4_prefix = -1\n", 3, "ipv4_prefix");
    error_at("[milter]\nmax_frame = 65536\n", 2, "must be at least 65540");
    error_at("[milter]\nmax_connections = 0\n", 2, "max_connections");
    error_at(
        "[milter]\nmax_recipients = 0\n",
        2,
        "invalid max_recipients 0",
    );
    error_at(
        "[milter]\nmax_macro_frame = 100\n",
        2,
        "invalid max_macro_frame 100: must be at least 1024",
    );
    error_at("[milter]\nmax_macros = 2\n", 2, "invalid max_macros 2");
    error_at(
        "[milter]\nworker_threads = 2000\n",
        2,
        "invalid worker_threads 2000",
    );
    error_at("[dns]\nmax_concurrent = 0\n", 2, "max_concurrent");
    error_at(
        "[dns]\nprefetch_percent = 95\n",
        2,
        "invalid prefetch_percent 95: must be from 1 to 90",
    );
    let c = parse("[milter]\nmax_frame = 65540\n[greylist]\nipv4_prefix = 32\nipv6_prefix = 128\n")
        .unwrap();
    assert_eq!(c.milter.max_frame, 65_540);
    assert_eq!((c.greylist.ipv4_prefix, c.greylist.ipv6_prefix), (32, 128));
}

#[test]
fn replies_are_checked_with_their_line() {
    error_at("[helo]\nreply = \"bogus HELO\"\n", 2, "4xx or 5xx");
    error_at(
        "[rdns]\nno_ptr_reply = \"550 4.7.1 mismatch\"\n",
        2,
        "enhanced status code",
    );
    error_at(
        "[greylist]\nreply = \"550 5.7.1 Greylisted\"\n",
        2,
        "temporary (4xx)",
    );
    error_at("[dns]\ntempfail_reply = \"554 No\"\n", 2, "temporary (4xx)");
    let c = parse("[helo]\nreply = \"554 5.7.1 Go away {helo}\"\n").unwrap();
    assert_eq!(c.helo.reply, "554 5.7.1 Go away {helo}");
}

#[test]
fn enums_and_bad_variants() {
    let c = parse(
        "[milter]\nmode = \"dry-run\"\n[helo]\naction = \"tag\"\n[dns]\ntemp_failure = \"ignore\"\n[greylist]\nstore = \"redis\"\nredis_url = \"redis://cache:6380/1\"\n[log]\nformat = \"json\"\nlevel = \"info,mxsentry=debug\"\n",
    )
    .unwrap();
    assert_eq!(c.milter.mode, Mode::DryRun);
    assert_eq!(c.helo.action, Action::Tag);
    assert_eq!(c.dns.temp_failure, TempFailureAction::Ignore);
    assert_eq!(c.greylist.store, StoreKind::Redis);
    assert_eq!(c.log.format, LogFormat::Json);
    error_at(
        "[milter]\nmode = \"dryrun\"\n",
        2,
        "unknown variant `dryrun`",
    );
    error_at(
        "\n[rdns]\nforged = \"block\"\n",
        3,
        "unknown variant `block`",
    );
    error_at("[greylist]\nredis_url = \"http://x\"\n", 2, "redis://");
    // What `run` refuses, check-config refuses too (the store's own check).
    error_at(
        "[greylist]\nredis_url = \"redis-tls://c:6380/1\"\n",
        2,
        "rediss:// (TLS)",
    );
    error_at(
        "[greylist]\nredis_url = \"redis://a:6379\"\nredis_sentinels = [\"redis://s:26379\"]\n\
         redis_master = \"m\"\n",
        2,
        "one of redis_url and redis_sentinels",
    );
    error_at(
        "[greylist]\nredis_sentinels = [\"redis://s:26379\"]\n",
        2,
        "needs redis_master",
    );
    error_at(
        "[greylist]\nredis_url = \"redis://a:6379\"\nredis_cluster = [\"redis://n:7000\"]\n",
        2,
        "one of redis_url and redis_cluster",
    );
    error_at(
        "[greylist]\nredis_cluster = [\"unix:///run/n.sock\"]\n",
        2,
        "over TCP",
    );
    error_at(
        "[greylist]\nredis_master = \"m\"\n",
        2,
        "only used with redis_sentinels",
    );
    error_at(
        "[greylist]\nredis_sentinels = [\"unix:///run/s.sock\"]\nredis_master = \"m\"\n",
        2,
        "over TCP",
    );
    error_at("[log]\nlevel = \"\"\n", 2, "must not be empty");
}

#[test]
fn networks_nameservers_and_addresses() {
    let c = parse(
        "[trusted]\nnetworks = [\"192.0.2.7\", \"2001:db8::/32\", \"10.1.2.3/8\"]\n[dns]\nnameservers = [\"127.0.0.1:5353\", \"::1\"]\n[milter]\nlocal_addresses = [\"192.0.2.1\", \"2001:db8::1\"]\n",
    )
    .unwrap();
    let nets: Vec<String> = c.trusted.networks.iter().map(|n| n.to_string()).collect();
    assert_eq!(nets, ["192.0.2.7/32", "2001:db8::/32", "10.0.0.0/8"]);
    assert_eq!(
        c.dns.nameservers,
        [
            "127.0.0.1:5353".parse().unwrap(),
            "[::1]:53".parse().unwrap()
        ]
    );
    assert_eq!(c.milter.local_addresses.len(), 2);
    error_at(
        "[trusted]\nnetworks = [\n  \"127.0.0.0/8\",\n  \"10.0.0.0/40\",\n]\n",
        4,
        "invalid network",
    );
    error_at(
        "[dns]\nnameservers = [\"ns1.example\"]\n",
        2,
        "invalid nameserver",
    );
    error_at(
        "[milter]\nlocal_addresses = [\n  \"192.0.2.1\",\n  \"mx\",\n]\n",
        4,
        "invalid IP address \"mx\"",
    );
}

#[test]
fn trusted_ips_include_ipv4_mapped() {
    let t = TrustedConfig::default();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert!(t.is_trusted_ip(ip("127.0.0.1")));
    assert!(t.is_trusted_ip(ip("127.1.2.3")));
    assert!(t.is_trusted_ip(ip("::1")));
    assert!(t.is_trusted_ip(ip("::ffff:127.0.0.1")));
    assert!(!t.is_trusted_ip(ip("::ffff:192.0.2.1")));
    assert!(!t.is_trusted_ip(ip("192.0.2.1")));
    assert!(!t.is_trusted_ip(ip("::2")));
    let c = parse("[trusted]\nnetworks = [\"192.0.2.0/24\"]\n").unwrap();
    assert!(c.trusted.is_trusted_ip(ip("::ffff:192.0.2.200")));
    assert!(!c.trusted.is_trusted_ip(ip("127.0.0.1")));
}

#[test]
fn milter_socket_and_misc_settings() {
    let c = parse(
        "[milter]\nsocket_mode = \"0660\"\nsocket_owner = \"postfix\"\nexempt_recipients = [\"Postmaster\"]\ntag_header = \"X-Spam-Flag\"\n",
    )
    .unwrap();
    assert_eq!(c.milter.socket_mode, Some(0o660));
    assert_eq!(c.milter.socket_owner.as_deref(), Some("postfix"));
    assert!(c.milter.is_exempt_recipient("POSTMASTER"));
    assert!(!c.milter.is_exempt_recipient("abuse"));
    error_at("[milter]\nsocket_mode = 660\n", 2, "octal mode string");
    error_at(
        "[milter]\nsocket_mode = \"0999\"\n",
        2,
        "invalid socket mode",
    );
    error_at(
        "[milter]\nexempt_recipients = [\"postmaster@example.org\"]\n",
        2,
        "local part",
    );
    error_at(
        "[milter]\ntag_header = \"X Bad\"\n",
        2,
        "invalid header name",
    );
    error_at("[milter]\nhostname = \"\"\n", 2, "invalid DNS name");
}

#[test]
fn metrics_can_be_turned_off() {
    for off in ["\"\"", "\"off\"", "false"] {
        let c = parse(&format!("[metrics]\nlisten = {off}\n")).unwrap();
        assert_eq!(c.metrics.listen, None, "{off}");
    }
    let c = parse("[metrics]\nlisten = \"[::1]:9100\"\n").unwrap();
    assert_eq!(c.metrics.listen, Some("[::1]:9100".parse().unwrap()));
    error_at(
        "[metrics]\nlisten = \"localhost\"\n",
        2,
        "invalid metrics address",
    );
}

#[test]
fn syntax_errors_name_their_line() {
    let err = error_at("[milter]\nhostname = \"mx.example.org\n", 2, "");
    assert!(!err.reason.contains('\n'), "{err}");
    error_at("[milter]\nmode = \"enforce\"\n[milter]\n", 3, "");
    let err = error_at("\n[milter\n", 2, "invalid table header: expected");
    assert!(!err.reason.contains('\n'), "{err}");
}

#[test]
fn load_reads_files_and_reports_unreadable_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("milter.toml");
    std::fs::write(&path, "[milter]\nhostname = \"mx.example.net\"\n").unwrap();
    assert_eq!(
        Config::load(&path).unwrap().milter.hostname,
        "mx.example.net"
    );

    std::fs::write(&path, "[milter]\nmode = \"loud\"\n").unwrap();
    let err = Config::load(&path).unwrap_err();
    assert_eq!(err.line, Some(2));
    assert!(err
        .to_string()
        .starts_with(&format!("{}:2: ", path.display())));

    let missing = dir.path().join("missing.toml");
    let err = Config::load(&missing).unwrap_err();
    assert_eq!(err.line, None);
    let shown = err.to_string();
    assert!(
        shown.starts_with(&format!("{}: cannot read: ", missing.display())),
        "{shown}"
    );
}

#[test]
fn error_display_forms() {
    let with_line = ConfigError {
        file: PATH.into(),
        line: Some(7),
        reason: "bad".into(),
    };
    assert_eq!(with_line.to_string(), "/etc/mxsentry/milter.toml:7: bad");
    let without = ConfigError {
        line: None,
        ..with_line
    };
    assert_eq!(without.to_string(), "/etc/mxsentry/milter.toml: bad");
}

#[test]
fn line_helpers() {
    assert_eq!(line_at("a\nb\nc", 0), 1);
    assert_eq!(line_at("a\nb\nc", 2), 2);
    assert_eq!(line_at("a\nb\nc", 99), 3);
    let text = "[greylist]\ndelay = \"1m\"\n[ milter ]\ndelay = 1\n";
    assert_eq!(key_line(text, "greylist", "delay"), Some(2));
    assert_eq!(key_line(text, "milter", "delay"), Some(4));
    assert_eq!(key_line(text, "dns", "delay"), None);
}

#[test]
fn dns_lists_ignore_their_failures_unless_told_to_tempfail() {
    let c = parse("[[dnsbl.zones]]\nzone = \"a.test\"\n[[dnsbl.zones]]\nzone = \"b.test\"\ntemp_failure = \"tempfail\"\n").unwrap();
    assert_eq!(c.dnsbl.zones[0].temp_failure, TempFailureAction::Ignore);
    assert_eq!(c.dnsbl.zones[1].temp_failure, TempFailureAction::Tempfail);
    error_at(
        "[[dnsbl.zones]]\nzone = \"a.test\"\ntemp_failure = \"maybe\"\n",
        3,
        "unknown variant `maybe`",
    );
}

#[test]
fn a_failed_lookup_refuses_only_as_far_as_its_check_could() {
    use Action::*;
    let tf = TempFailureAction::Tempfail;
    assert_eq!(Action::on_temp_failure(&[Off, Off, Off], tf), Log);
    assert_eq!(Action::on_temp_failure(&[Log, Tag, Delay], tf), Log);
    assert_eq!(Action::on_temp_failure(&[Off, Off, Greylist], tf), Greylist);
    assert_eq!(
        Action::on_temp_failure(&[Tempfail, Off, Greylist], tf),
        Tempfail
    );
    assert_eq!(Action::on_temp_failure(&[Reject], tf), Tempfail);
    let ignore = TempFailureAction::Ignore;
    assert_eq!(Action::on_temp_failure(&[Reject], ignore), Log);
}

#[test]
fn overflow_and_negotiation_keys() {
    let c = parse(
        "[milter]\noverflow_action = \"accept\"\nnegotiation_timeout = \"2s\"\nmax_recipients = 50\n\
         max_macro_frame = 4096\nmax_macros = 32\n",
    )
    .unwrap();
    assert_eq!(c.milter.overflow_action, OverflowAction::Accept);
    assert_eq!(c.milter.negotiation_timeout, Duration::from_secs(2));
    assert_eq!(
        (
            c.milter.max_recipients,
            c.milter.max_macro_frame,
            c.milter.max_macros
        ),
        (50, 4096, 32)
    );
    let c = parse("[milter]\noverflow_action = \"close\"\n").unwrap();
    assert_eq!(c.milter.overflow_action, OverflowAction::Close);
    assert_eq!(OverflowAction::Close.name(), "close");
    error_at(
        "[milter]\nlisten = \"inet:8890@127.0.0.1\"\noverflow_action = \"reject\"\n",
        3,
        "unknown variant `reject`",
    );
    error_at(
        "[milter]\nnegotiation_timeout = \"0s\"\n",
        2,
        "longer than zero",
    );
}

#[test]
fn a_nul_in_a_comment_gets_a_reason() {
    // Found by fuzz/fuzz_targets/config.rs: toml's message for this is empty, which made
    // `check-config` print "milter.toml:2: " and nothing else.
    let e = error_at("[milter]\n# a\0b\n", 2, "invalid TOML at column 4");
    assert!(!e.reason.is_empty());
}
