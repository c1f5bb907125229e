use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::http::{self, Limits};
use super::*;

/// Every family `/metrics` must show (the contract with dashboards and alerts).
const FAMILIES: &[(&str, &str)] = &[
    ("mxsentry_sessions_total", "counter"),
    ("mxsentry_messages_total", "counter"),
    ("mxsentry_recipients_total", "counter"),
    ("mxsentry_dry_run_verdicts_total", "counter"),
    ("mxsentry_findings_total", "counter"),
    ("mxsentry_dnsbl_results_total", "counter"),
    ("mxsentry_dnsbl_refusals_total", "counter"),
    ("mxsentry_dns_errors_total", "counter"),
    ("mxsentry_dns_query_duration_seconds", "histogram"),
    ("mxsentry_greylist_entries", "gauge"),
    ("mxsentry_greylist_operation_duration_seconds", "histogram"),
    ("mxsentry_greylist_errors_total", "counter"),
    ("mxsentry_greylist_store_recoveries_total", "counter"),
    ("mxsentry_connections_open", "gauge"),
    ("mxsentry_connections_total", "counter"),
    ("mxsentry_connections_limit", "gauge"),
    ("mxsentry_connections_overflow_total", "counter"),
    ("mxsentry_recipients_over_limit_total", "counter"),
    ("mxsentry_protocol_errors_total", "counter"),
    ("mxsentry_metrics_http_connections_dropped_total", "counter"),
    ("mxsentry_decision_duration_seconds", "histogram"),
    ("mxsentry_config_reloads_total", "counter"),
    (
        "mxsentry_config_last_reload_success_timestamp_seconds",
        "gauge",
    ),
    ("mxsentry_config_last_reload_successful", "gauge"),
    ("mxsentry_build_info", "gauge"),
    ("mxsentry_control_requests_total", "counter"),
    ("mxsentry_shadow_verdicts_total", "counter"),
    ("mxsentry_dnsbl_zone_healthy", "gauge"),
    ("mxsentry_dns_cache_lookups_total", "counter"),
    ("mxsentry_dns_prefetch_total", "counter"),
];

/// A strict reader of the text exposition format (version 0.0.4) as the Prometheus server
/// reads it. Returns the samples keyed by `name{label="value",...}` with labels sorted, and
/// the TYPE of each family. Panics, naming the line, on anything malformed.
fn parse_exposition(text: &str) -> (BTreeMap<String, f64>, HashMap<String, String>) {
    fn is_name(s: &str, colon_ok: bool) -> bool {
        let mut bytes = s.bytes();
        matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_' || (colon_ok && b == b':'))
            && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || (colon_ok && b == b':'))
    }
    fn value(s: &str) -> Option<f64> {
        match s {
            "+Inf" => Some(f64::INFINITY),
            "-Inf" => Some(f64::NEG_INFINITY),
            "NaN" => Some(f64::NAN),
            _ => s.parse().ok(),
        }
    }
    assert!(text.ends_with('\n'), "exposition must end with a newline");
    let mut samples = BTreeMap::new();
    let mut parsed: Vec<(String, BTreeMap<String, String>, f64)> = Vec::new();
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps: HashSet<String> = HashSet::new();
    let mut finished: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    for (n, line) in text.lines().enumerate() {
        let at = format!("line {}: {line:?}", n + 1);
        assert!(!line.is_empty(), "{at}: empty line");
        if let Some(rest) = line.strip_prefix("# ") {
            let mut it = rest.splitn(3, ' ');
            let (kw, name, arg) = (it.next().unwrap(), it.next(), it.next());
            let name = name.unwrap_or_else(|| panic!("{at}: comment without a name"));
            assert!(is_name(name, true), "{at}: bad metric name");
            match kw {
                "HELP" => {
                    assert!(helps.insert(name.to_string()), "{at}: second HELP");
                    assert!(arg.is_some_and(|h| !h.is_empty()), "{at}: empty HELP");
                }
                "TYPE" => {
                    let t = arg.unwrap_or_else(|| panic!("{at}: TYPE without type"));
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                        "{at}: unknown type"
                    );
                    assert!(
                        !samples
                            .keys()
                            .any(|k: &String| family_of(k, &types) == name),
                        "{at}: TYPE after samples"
                    );
                    assert!(
                        types.insert(name.to_string(), t.to_string()).is_none(),
                        "{at}: second TYPE"
                    );
                }
                _ => panic!("{at}: unknown comment keyword"),
            }
            if current.as_deref() != Some(name) {
                if let Some(prev) = current.take() {
                    finished.insert(prev);
                }
                assert!(!finished.contains(name), "{at}: family split in two");
                current = Some(name.to_string());
            }
            continue;
        }
        assert!(!line.starts_with('#'), "{at}: comment without a space");
        // name{labels} value  |  name value
        let (name, labels, rest) = match line.find('{') {
            Some(open) => {
                let close = line
                    .rfind('}')
                    .unwrap_or_else(|| panic!("{at}: unclosed {{"));
                (&line[..open], &line[open + 1..close], &line[close + 1..])
            }
            None => {
                let sp = line.find(' ').unwrap_or_else(|| panic!("{at}: no value"));
                (&line[..sp], "", &line[sp..])
            }
        };
        assert!(is_name(name, true), "{at}: bad metric name");
        let rest = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("{at}: no space before the value"));
        let mut fields = rest.split(' ');
        let v = value(fields.next().unwrap()).unwrap_or_else(|| panic!("{at}: bad value"));
        if let Some(ts) = fields.next() {
            assert!(ts.parse::<i64>().is_ok(), "{at}: bad timestamp");
        }
        assert!(fields.next().is_none(), "{at}: trailing fields");

        let mut pairs = BTreeMap::new();
        let mut s = labels;
        while !s.is_empty() {
            let eq = s
                .find("=\"")
                .unwrap_or_else(|| panic!("{at}: label without =\""));
            let lname = &s[..eq];
            assert!(is_name(lname, false), "{at}: bad label name {lname:?}");
            let mut val = String::new();
            let mut chars = s[eq + 2..].char_indices();
            let end = loop {
                match chars.next() {
                    Some((i, '"')) => break eq + 2 + i + 1,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => val.push('\n'),
                        Some((_, '\\')) => val.push('\\'),
                        Some((_, '"')) => val.push('"'),
                        _ => panic!("{at}: bad escape"),
                    },
                    Some((_, '\n')) => panic!("{at}: raw newline in label"),
                    Some((_, c)) => val.push(c),
                    None => panic!("{at}: unterminated label value"),
                }
            };
            assert!(
                pairs.insert(lname.to_string(), val).is_none(),
                "{at}: repeated label"
            );
            s = &s[end..];
            if let Some(r) = s.strip_prefix(',') {
                s = r;
            } else {
                assert!(s.is_empty(), "{at}: junk after label value");
            }
        }
        let family = family_of(name, &types);
        assert_eq!(
            current.as_deref(),
            Some(family),
            "{at}: sample outside its family"
        );
        assert!(helps.contains(family), "{at}: no HELP for {family}");
        let t = types
            .get(family)
            .unwrap_or_else(|| panic!("{at}: no TYPE for {family}"));
        if name.ends_with("_bucket") && t == "histogram" {
            assert!(pairs.contains_key("le"), "{at}: bucket without le");
        }
        if t == "counter" {
            assert!(v >= 0.0 && v.is_finite(), "{at}: bad counter value");
        }
        let k = key(
            name,
            &pairs
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect::<Vec<_>>(),
        );
        assert!(samples.insert(k, v).is_none(), "{at}: duplicate series");
        parsed.push((name.to_string(), pairs, v));
    }
    // Histograms: cumulative buckets ending at +Inf, equal to _count; _sum present.
    for (family, t) in &types {
        if t != "histogram" {
            continue;
        }
        let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for (name, labels, v) in &parsed {
            if *name != format!("{family}_bucket") {
                continue;
            }
            let mut rest = labels.clone();
            let le = value(&rest.remove("le").expect("le label")).expect("le value");
            let rest: Vec<(&str, &str)> =
                rest.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            series.entry(key(family, &rest)).or_default().push((le, *v));
        }
        assert!(!series.is_empty(), "histogram {family} has no buckets");
        for (labels, mut buckets) in series {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            assert_eq!(
                buckets.last().unwrap().0,
                f64::INFINITY,
                "{labels}: no +Inf"
            );
            assert!(
                buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                "{labels}: buckets not cumulative"
            );
            let count_key = labels.replacen(family.as_str(), &format!("{family}_count"), 1);
            let sum_key = labels.replacen(family.as_str(), &format!("{family}_sum"), 1);
            assert_eq!(
                samples.get(&count_key),
                Some(&buckets.last().unwrap().1),
                "{labels}: _count != +Inf bucket"
            );
            assert!(samples.contains_key(&sum_key), "{labels}: no _sum");
        }
    }
    (samples, types)
}

fn family_of<'a>(name: &'a str, types: &HashMap<String, String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types
                .get(base)
                .is_some_and(|t| t == "histogram" || t == "summary")
            {
                return base;
            }
        }
    }
    name
}

/// The canonical key of a series: labels sorted by name.
fn key(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels = labels.to_vec();
    labels.sort();
    if labels.is_empty() {
        return name.to_string();
    }
    let inner = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{v}\""))
        .collect::<Vec<_>>()
        .join(",");
    format!("{name}{{{inner}}}")
}

fn get(m: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (samples, _) = parse_exposition(&m.render());
    let k = key(name, labels);
    *samples.get(&k).unwrap_or_else(|| panic!("no series {k}"))
}

/// Families whose label values are free-form (configured zones, outcome words) or depend on
/// the configured greylist backend: like every Prometheus client, they appear with their
/// first series.
const ON_FIRST_USE: &[&str] = &[
    "mxsentry_findings_total",
    "mxsentry_dnsbl_results_total",
    "mxsentry_dnsbl_refusals_total",
    "mxsentry_dnsbl_zone_healthy",
    "mxsentry_greylist_entries",
    "mxsentry_greylist_operation_duration_seconds",
    "mxsentry_shadow_verdicts_total",
];

fn assert_families(types: &HashMap<String, String>, all: bool) {
    for (family, t) in FAMILIES {
        if !all && ON_FIRST_USE.contains(family) {
            assert!(!types.contains_key(*family), "{family}");
            continue;
        }
        assert_eq!(types.get(*family).map(String::as_str), Some(*t), "{family}");
    }
    let want = FAMILIES.len() - if all { 0 } else { ON_FIRST_USE.len() };
    assert_eq!(types.len(), want, "unexpected families: {types:?}");
}

#[test]
fn fresh_render_parses_and_has_every_family() {
    let m = Metrics::new();
    let (samples, types) = parse_exposition(&m.render());
    assert_families(&types, false);
    // Fixed label sets are present at zero from the start.
    // Every reason code's typical verdicts, which cover every verdict; never a code outside
    // the table (the label stays bounded).
    for r in Reason::ALL {
        for v in r.typical_verdicts() {
            let labels = [("verdict", *v), ("reason", r.as_str())];
            assert_eq!(samples[&key("mxsentry_recipients_total", &labels)], 0.0);
            assert_eq!(
                samples[&key("mxsentry_dry_run_verdicts_total", &labels)],
                0.0
            );
        }
    }
    for v in VERDICTS {
        assert!(
            Reason::ALL
                .iter()
                .any(|r| r.typical_verdicts().contains(&v)),
            "{v}"
        );
    }
    for r in PROTOCOL_ERRORS {
        assert_eq!(
            samples[&key("mxsentry_protocol_errors_total", &[("reason", r)])],
            0.0
        );
    }
    for r in HTTP_DROP_REASONS {
        assert_eq!(samples[&key(DROPPED, &[("reason", r)])], 0.0);
    }
    assert_eq!(
        samples[&key("mxsentry_config_reloads_total", &[("result", "failure")])],
        0.0
    );
    assert_eq!(
        samples[&key(
            "mxsentry_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        )],
        1.0
    );
    assert_eq!(samples["mxsentry_connections_open"], 0.0);
}

#[test]
fn counters_move() {
    let m = Metrics::new();
    m.session_verdict("reject");
    m.message_verdict("accept");
    m.message_verdict("continue");
    m.recipient_verdict("greylist", Reason::GreylistNew);
    m.recipient_verdict("greylist", Reason::GreylistNew);
    m.dry_run_verdict("reject", Reason::DnsblListed);
    m.finding("helo", "unqualified");
    m.finding("rdns", "no_ptr");
    m.finding("rdns", "no_ptr");
    m.dns_query("ptr", "ok", 0.004);
    m.dns_query("dnsbl", "timeout", 3.0);
    m.dns_query("a", "nxdomain", 0.001);
    m.dnsbl_result("zen.example", "listed");
    m.dnsbl_refusal("zen.example");
    let zone = m.dnsbl_zone("bl.example");
    zone.result("not_listed");
    zone.result("blocked");
    zone.refusal();
    m.dnsbl_zone_healthy("bl.example", true);
    m.dnsbl_zone_healthy("wild.example", true);
    m.dnsbl_zone_healthy("wild.example", false);
    m.dnsbl_zone_healthy("gone.example", true);
    m.dnsbl_zone_health_forget("gone.example");
    m.greylist_entries("embedded", 42);
    m.greylist_op("redis", "lookup", 0.002, true);
    m.greylist_op("redis", "record", 0.3, false);
    m.greylist_error("embedded");
    m.greylist_store_recovered();
    m.protocol_error("frame_too_large");
    m.connection_overflow("tempfail");
    m.connection_overflow("close");
    m.connection_overflow("close");
    m.connections_limit(10_000);
    m.recipient_over_limit();
    m.decision_duration(0.25);
    m.shadow_verdict("continue", "reject");
    m.shadow_verdict("accept", "undecided");
    m.shadow_verdict("accept", "bogus");
    m.reload(false);

    let (s, types) = parse_exposition(&m.render());
    assert_families(&types, true);
    let at = |name: &str, labels: &[(&str, &str)]| {
        *s.get(&key(name, labels))
            .unwrap_or_else(|| panic!("no {}", key(name, labels)))
    };
    assert_eq!(at("mxsentry_sessions_total", &[("verdict", "reject")]), 1.0);
    let shadow = |live, shadow| {
        at(
            "mxsentry_shadow_verdicts_total",
            &[("live", live), ("shadow", shadow)],
        )
    };
    assert_eq!(shadow("accept", "reject"), 1.0);
    assert_eq!(shadow("accept", "undecided"), 1.0);
    assert_eq!(shadow("accept", "other"), 1.0);
    let overflow = |a| at("mxsentry_connections_overflow_total", &[("action", a)]);
    assert_eq!(
        (overflow("tempfail"), overflow("accept"), overflow("close")),
        (1.0, 0.0, 2.0)
    );
    assert_eq!(at("mxsentry_connections_limit", &[]), 10_000.0);
    let healthy = |z| {
        s.get(&key("mxsentry_dnsbl_zone_healthy", &[("zone", z)]))
            .copied()
    };
    assert_eq!(
        (
            healthy("bl.example"),
            healthy("wild.example"),
            healthy("gone.example")
        ),
        (Some(1.0), Some(0.0), None)
    );
    assert_eq!(at("mxsentry_recipients_over_limit_total", &[]), 1.0);
    assert_eq!(at("mxsentry_messages_total", &[("verdict", "accept")]), 2.0);
    assert_eq!(
        at(
            "mxsentry_recipients_total",
            &[("verdict", "greylist"), ("reason", "greylist.new")]
        ),
        2.0
    );
    assert_eq!(
        at(
            "mxsentry_recipients_total",
            &[("verdict", "reject"), ("reason", "dnsbl.listed")]
        ),
        0.0
    );
    assert_eq!(
        at(
            "mxsentry_dry_run_verdicts_total",
            &[("verdict", "reject"), ("reason", "dnsbl.listed")]
        ),
        1.0
    );
    assert_eq!(
        at(
            "mxsentry_findings_total",
            &[("check", "helo"), ("outcome", "unqualified")]
        ),
        1.0
    );
    assert_eq!(
        at(
            "mxsentry_findings_total",
            &[("check", "rdns"), ("outcome", "no_ptr")]
        ),
        2.0
    );
    assert_eq!(
        at(
            "mxsentry_dns_query_duration_seconds_count",
            &[("kind", "ptr")]
        ),
        1.0
    );
    assert_eq!(
        at(
            "mxsentry_dns_query_duration_seconds_bucket",
            &[("kind", "ptr"), ("le", "0.005")]
        ),
        1.0
    );
    assert_eq!(
        at(
            "mxsentry_dns_query_duration_seconds_bucket",
            &[("kind", "ptr"), ("le", "0.0025")]
        ),
        0.0
    );
    assert_eq!(
        at(
            "mxsentry_dns_errors_total",
            &[("kind", "dnsbl"), ("error", "timeout")]
        ),
        1.0
    );
    // nxdomain is an answer, not an error.
    assert!(!s.keys().any(|k| k.contains("error=\"nxdomain\"")));
    assert_eq!(
        at(
            "mxsentry_dnsbl_results_total",
            &[("zone", "zen.example"), ("result", "listed")]
        ),
        1.0
    );
    assert_eq!(
        at("mxsentry_dnsbl_refusals_total", &[("zone", "zen.example")]),
        1.0
    );
    assert_eq!(
        at(
            "mxsentry_dnsbl_results_total",
            &[("zone", "bl.example"), ("result", "blocked")]
        ),
        1.0
    );
    assert_eq!(
        at("mxsentry_dnsbl_refusals_total", &[("zone", "bl.example")]),
        1.0
    );
    assert_eq!(
        at("mxsentry_greylist_entries", &[("backend", "embedded")]),
        42.0
    );
    assert_eq!(
        at(
            "mxsentry_greylist_operation_duration_seconds_count",
            &[("backend", "redis"), ("op", "record")]
        ),
        1.0
    );
    assert_eq!(
        at("mxsentry_greylist_errors_total", &[("backend", "redis")]),
        1.0
    );
    assert_eq!(
        at("mxsentry_greylist_errors_total", &[("backend", "embedded")]),
        1.0
    );
    assert_eq!(at("mxsentry_greylist_store_recoveries_total", &[]), 1.0);
    assert_eq!(
        at(
            "mxsentry_protocol_errors_total",
            &[("reason", "frame_too_large")]
        ),
        1.0
    );
    assert_eq!(at("mxsentry_decision_duration_seconds_sum", &[]), 0.25);
    assert_eq!(
        at("mxsentry_config_reloads_total", &[("result", "failure")]),
        1.0
    );
    assert_eq!(at("mxsentry_config_last_reload_successful", &[]), 0.0);
    assert_eq!(
        at("mxsentry_config_last_reload_success_timestamp_seconds", &[]),
        0.0
    );
}

#[test]
fn reload_and_config_load_set_the_timestamp() {
    let m = Metrics::new();
    m.config_loaded();
    let t0 = get(
        &m,
        "mxsentry_config_last_reload_success_timestamp_seconds",
        &[],
    );
    assert!(t0 > 1.5e9, "{t0}");
    assert_eq!(
        get(
            &m,
            "mxsentry_config_reloads_total",
            &[("result", "success")]
        ),
        0.0
    );
    m.reload(false);
    assert_eq!(get(&m, "mxsentry_config_last_reload_successful", &[]), 0.0);
    assert_eq!(
        get(
            &m,
            "mxsentry_config_last_reload_success_timestamp_seconds",
            &[]
        ),
        t0
    );
    m.reload(true);
    assert_eq!(get(&m, "mxsentry_config_last_reload_successful", &[]), 1.0);
    assert_eq!(
        get(
            &m,
            "mxsentry_config_reloads_total",
            &[("result", "success")]
        ),
        1.0
    );
    assert!(
        get(
            &m,
            "mxsentry_config_last_reload_success_timestamp_seconds",
            &[]
        ) >= t0
    );
}

#[test]
fn connection_guard_closes_on_drop() {
    let m = Metrics::new();
    {
        let _a = m.connection();
        let _b = m.connection();
        assert_eq!(get(&m, "mxsentry_connections_open", &[]), 2.0);
    }
    m.connection_opened();
    assert_eq!(get(&m, "mxsentry_connections_open", &[]), 1.0);
    m.connection_closed();
    assert_eq!(get(&m, "mxsentry_connections_open", &[]), 0.0);
    assert_eq!(get(&m, "mxsentry_connections_total", &[]), 3.0);
}

#[test]
fn label_values_stay_bounded() {
    let m = Metrics::new();
    // Values a wiring mistake could pass: addresses, names, reply texts, odd words.
    m.recipient_verdict("550 5.7.1 Access denied", Reason::None);
    m.finding("192.0.2.1", "listed");
    m.finding("helo", "mail.example.com");
    m.finding("sender_rules", "REJECT");
    m.finding("rdns", "a_very_long_outcome_word_that_goes_on_and_on");
    m.dnsbl_result("Zen.Example", "listed");
    m.dnsbl_result("zen.example", "127.0.0.2");
    m.dnsbl_refusal("spam@example.com");
    m.protocol_error("something new");
    m.dns_query("mx", "weird", 0.1);
    m.greylist_op("sql", "scan", 0.1, false);
    m.greylist_op("redis", "evil op!", 0.1, true);
    let (s, _) = parse_exposition(&m.render());
    assert_eq!(
        s[&key(
            "mxsentry_recipients_total",
            &[("verdict", "other"), ("reason", "none")]
        )],
        1.0
    );
    assert_eq!(
        s[&key(
            "mxsentry_findings_total",
            &[("check", "other"), ("outcome", "listed")]
        )],
        1.0
    );
    assert_eq!(
        s[&key(
            "mxsentry_findings_total",
            &[("check", "helo"), ("outcome", "other")]
        )],
        1.0
    );
    assert_eq!(
        s[&key(
            "mxsentry_findings_total",
            &[("check", "rdns"), ("outcome", "other")]
        )],
        1.0
    );
    assert_eq!(
        s[&key(
            "mxsentry_dnsbl_results_total",
            &[("zone", "other"), ("result", "listed")]
        )],
        1.0
    );
    assert_eq!(
        s[&key(
            "mxsentry_dnsbl_results_total",
            &[("zone", "zen.example"), ("result", "other")]
        )],
        1.0
    );
    assert_eq!(
        s[&key("mxsentry_dnsbl_refusals_total", &[("zone", "other")])],
        1.0
    );
    assert_eq!(
        s[&key("mxsentry_protocol_errors_total", &[("reason", "other")])],
        1.0
    );
    assert_eq!(
        s[&key(
            "mxsentry_dns_errors_total",
            &[("kind", "other"), ("error", "other")]
        )],
        1.0
    );
    assert_eq!(
        s[&key("mxsentry_greylist_errors_total", &[("backend", "sql")])],
        1.0
    );
    assert_eq!(
        s[&key(
            "mxsentry_greylist_operation_duration_seconds_count",
            &[("backend", "redis"), ("op", "other")]
        )],
        1.0
    );
    for k in s.keys() {
        assert!(
            !k.contains("192.0.2.1") && !k.contains('@') && !k.contains("550"),
            "{k}"
        );
    }

    // Free-form outcomes are capped.
    for i in 0..(MAX_DYNAMIC_VALUES + 50) {
        m.finding("dnsbl", &format!("w{i}"));
    }
    assert!(m.dynamic_values() <= MAX_DYNAMIC_VALUES);
    let (s, _) = parse_exposition(&m.render());
    let findings = s
        .keys()
        .filter(|k| k.starts_with("mxsentry_findings_total"))
        .count();
    assert!(findings <= MAX_DYNAMIC_VALUES + 4, "{findings}");
}

/// The `prometheus` crate identifies a child by its label values concatenated without a
/// separator; the fixed sets must not produce the same concatenation twice.
#[test]
fn fixed_label_sets_do_not_collide() {
    fn prefix_free(set: &[&str]) {
        for a in set.iter().chain([&OTHER]) {
            for b in set.iter().chain([&OTHER]) {
                assert!(a == b || !b.starts_with(a), "{a:?} is a prefix of {b:?}");
            }
        }
    }
    // A prefix-free first label makes any second label unambiguous.
    prefix_free(&CHECKS);
    prefix_free(&GREYLIST_BACKENDS);
    prefix_free(&CONTROL_OPS);
    // DNS kinds are not prefix-free ("a", "aaaa"): check the full cross product instead.
    let mut seen = HashSet::new();
    for k in DNS_KINDS.iter().chain([&OTHER]) {
        for e in DNS_ERRORS.iter().chain([&OTHER]) {
            assert!(seen.insert(format!("{k}{e}")), "{k}/{e}");
        }
    }
    // And the registry agrees: every pre-resolved pair is its own series.
    let m = Metrics::new();
    let (s, _) = parse_exposition(&m.render());
    let n = s
        .keys()
        .filter(|k| k.starts_with("mxsentry_dns_errors_total"))
        .count();
    assert_eq!(n, (DNS_KINDS.len() + 1) * (DNS_ERRORS.len() + 1));
    // Greylist histograms appear on first use, each combination its own series.
    assert!(!s
        .keys()
        .any(|k| k.starts_with("mxsentry_greylist_operation")));
    assert!(!s.keys().any(|k| k.starts_with("mxsentry_greylist_entries")));
    for b in GREYLIST_BACKENDS {
        for o in GREYLIST_OPS {
            m.greylist_op(b, o, 0.001, true);
        }
    }
    let (s, _) = parse_exposition(&m.render());
    let n = s
        .keys()
        .filter(|k| k.starts_with("mxsentry_greylist_operation_duration_seconds_count"))
        .count();
    assert_eq!(n, GREYLIST_BACKENDS.len() * GREYLIST_OPS.len());
}

#[test]
fn global_is_one_instance() {
    assert!(std::ptr::eq(metrics(), metrics()));
    let before = metrics().render();
    assert!(before.contains("mxsentry_build_info"));
}

// ---- HTTP ------------------------------------------------------------------------------

/// A served endpoint: its address, its metrics, the shutdown switch and the server task.
type Running = (
    SocketAddr,
    &'static Metrics,
    watch::Sender<bool>,
    tokio::task::JoinHandle<std::io::Result<()>>,
);

async fn start(limits: Option<Limits>) -> Running {
    start_on(bind("127.0.0.1:0".parse().unwrap()).await.unwrap(), limits).await
}

async fn start_on(listener: tokio::net::TcpListener, limits: Option<Limits>) -> Running {
    let m: &'static Metrics = Box::leak(Box::new(Metrics::new()));
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = watch::channel(false);
    let task = match limits {
        None => tokio::spawn(serve_listener(listener, m, rx)),
        Some(l) => tokio::spawn(http::serve_with(listener, m, rx, l)),
    };
    (addr, m, tx, task)
}

/// Sends `request` (raw bytes), reads the whole response; returns (status, headers, body).
async fn exchange(addr: SocketAddr, request: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("content-length")
        .parse()
        .unwrap();
    assert_eq!(len, body.len(), "content-length");
    assert!(head.contains("\r\nConnection: close"), "{head}");
    (status, head.to_string(), body.to_string())
}

async fn get_path(addr: SocketAddr, path: &str) -> (u16, String, String) {
    exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: test\r\n\r\n").as_bytes(),
    )
    .await
}

#[tokio::test]
async fn http_serves_metrics_healthz_and_404() {
    let (addr, m, tx, task) = start(None).await;
    m.recipient_verdict("reject", Reason::SenderRulesReject);

    let (status, head, body) = get_path(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    let (s, _) = parse_exposition(&body);
    assert_eq!(
        s[&key(
            "mxsentry_recipients_total",
            &[("verdict", "reject"), ("reason", "sender_rules.reject")]
        )],
        1.0
    );

    let (status, _, body) = get_path(addr, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, _, _) = get_path(addr, "/").await;
    assert_eq!(status, 404);
    let (status, _, _) = get_path(addr, "/metrics/../etc/passwd").await;
    assert_eq!(status, 404);
    let (status, _, _) = get_path(addr, "/metrics?name[]=x").await;
    assert_eq!(status, 200);
    let (status, head, _) = exchange(addr, b"POST /metrics HTTP/1.1\r\n\r\n").await;
    assert_eq!(status, 405);
    assert!(head.contains("Allow: GET, HEAD"));
    // HTTP/1.0 and bare-LF clients work too.
    let (status, _, body) = exchange(addr, b"GET /healthz HTTP/1.0\n\n").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops on shutdown")
        .unwrap()
        .unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "listener closed after shutdown"
    );
}

#[tokio::test]
async fn http_survives_garbage_and_oversized_requests() {
    let (addr, m, tx, task) = start(None).await;

    let (status, _, _) = exchange(
        addr,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400);
    let (status, _, _) = exchange(addr, b"hello there\r\n\r\n").await;
    assert_eq!(status, 400);
    let (status, _, _) = exchange(addr, b"GET /metrics HTTP/1.1\r\nbroken header\r\n\r\n").await;
    assert_eq!(status, 400);

    // A head larger than 8 KiB, never terminated.
    let mut big = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
    big.resize(20 * 1024, b'a');
    let (status, _, _) = exchange(addr, &big).await;
    assert_eq!(status, 431);
    // Terminated, but still too large.
    big.extend_from_slice(b"\r\n\r\n");
    let (status, _, _) = exchange(addr, &big).await;
    assert_eq!(status, 431);

    // A client that connects and leaves without a word gets nothing and costs nothing.
    drop(TcpStream::connect(addr).await.unwrap());
    // A client that sends half a request and closes.
    let (status, _, _) = {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metr").await.unwrap();
        s.shutdown().await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8(out).unwrap();
        (text[9..12].parse::<u16>().unwrap(), (), ())
    };
    assert_eq!(status, 400);

    // Still serving.
    let (status, _, body) = get_path(addr, "/metrics").await;
    assert_eq!(status, 200);
    parse_exposition(&body);
    let (status, _, _) = get_path(addr, "/healthz").await;
    assert_eq!(status, 200);
    assert_eq!(dropped(m, "malformed"), 4.0);
    assert_eq!(dropped(m, "too_large"), 2.0);

    tx.send(true).unwrap();
    task.await.unwrap().unwrap();
}

const DROPPED: &str = "mxsentry_metrics_http_connections_dropped_total";

fn dropped(m: &Metrics, reason: &str) -> f64 {
    get(m, DROPPED, &[("reason", reason)])
}

#[tokio::test]
async fn http_at_the_cap_the_oldest_idle_connection_makes_room() {
    let limits = Limits {
        max_connections: 2,
        read_timeout: Duration::from_secs(1),
        ..http::LIMITS
    };
    let (addr, m, tx, task) = start(Some(limits)).await;
    // Two silent clients fill the table.
    let mut idle1 = TcpStream::connect(addr).await.unwrap();
    let mut idle2 = TcpStream::connect(addr).await.unwrap();
    // A third is served at once, not after the silent ones time out: the oldest of them was
    // closed (without a word) to make room.
    let started = std::time::Instant::now();
    let (status, _, _) = get_path(addr, "/healthz").await;
    assert_eq!(status, 200);
    assert!(
        started.elapsed() < limits.read_timeout,
        "{:?}",
        started.elapsed()
    );
    let mut out = Vec::new();
    idle1.read_to_end(&mut out).await.unwrap();
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    // The other one is told 408 at its deadline.
    let mut out = Vec::new();
    idle2.read_to_end(&mut out).await.unwrap();
    assert!(
        out.starts_with(b"HTTP/1.1 408 "),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert!(started.elapsed() >= limits.read_timeout - Duration::from_millis(100));
    assert_eq!(dropped(m, "evicted"), 1.0);
    assert_eq!(dropped(m, "head_timeout"), 1.0);
    tx.send(true).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn http_many_concurrent_scrapes() {
    let (addr, _m, tx, task) = start(None).await;
    let mut joins = Vec::new();
    for _ in 0..100 {
        joins.push(tokio::spawn(
            async move { get_path(addr, "/metrics").await.0 },
        ));
    }
    for j in joins {
        assert_eq!(j.await.unwrap(), 200);
    }
    tx.send(true).unwrap();
    task.await.unwrap().unwrap();
}

// ---- HTTP under abuse: idle, slow and oversized clients must never starve a scrape --------

/// One process holds both ends of every connection in these tests; a soft limit of 1024 open
/// files (common on desktops and in CI) would run out before the server does.
fn raise_nofile_limit() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < 8192 {
            l.rlim_cur = l.rlim_max.min(8192);
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

/// One `GET /metrics`: asserts a 200 with a parsable body that has the families; returns how
/// long it took from connect to the end of the response.
async fn timed_scrape(addr: SocketAddr) -> Duration {
    let started = std::time::Instant::now();
    let (status, _, body) =
        tokio::time::timeout(Duration::from_secs(30), get_path(addr, "/metrics"))
            .await
            .expect("scrape answered within 30 s");
    assert_eq!(status, 200);
    let (_, types) = parse_exposition(&body);
    assert!(types.contains_key("mxsentry_build_info"), "{body}");
    started.elapsed()
}

/// How many abusive clients the tests below open: well above the connection cap.
const CROWD: usize = 600;
const _: () = assert!(CROWD > 2 * http::MAX_CONNECTIONS);

/// Generous bound for one scrape on a slow, busy machine; the server itself answers in
/// milliseconds.
const PROMPT: Duration = Duration::from_secs(2);

#[tokio::test]
async fn http_idle_connections_do_not_starve_scrapes() {
    raise_nofile_limit();
    let (addr, m, tx, task) = start(None).await;
    // Silent clients, far more than the connection cap, all in before the scrape.
    let mut idle = Vec::new();
    for _ in 0..CROWD {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    let took = timed_scrape(addr).await;
    println!("scrape with {CROWD} idle connections opened first: {took:?}");
    assert!(took < PROMPT, "{took:?}");
    // All but the cap's worth were closed to make room (or timed out if connecting was slow).
    let gone = dropped(m, "evicted") + dropped(m, "head_timeout");
    assert!(gone >= (CROWD - http::MAX_CONNECTIONS) as f64, "{gone}");

    // And while the idle clients keep coming back (one new silent connection every ms).
    let churn = tokio::spawn(async move {
        loop {
            if let Ok(s) = TcpStream::connect(addr).await {
                idle.push(s);
                if idle.len() > CROWD {
                    idle.remove(0);
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        worst = worst.max(timed_scrape(addr).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    churn.abort();
    println!("slowest of 5 scrapes while idle clients reconnect: {worst:?}");
    assert!(worst < PROMPT, "{worst:?}");

    tx.send(true).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn http_oversized_head_gets_a_431_the_client_reads() {
    let (addr, _m, tx, task) = start(None).await;
    let mut request = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nX-Filler: ".to_vec();
    request.resize(5 * 1024 * 1024, b'a');
    request.extend_from_slice(b"\r\n\r\n");

    // A simple client: sends the whole request, then reads. It must be able to send all of
    // it (no reset while it is still writing) and then read the 431.
    let started = std::time::Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), s.write_all(&request))
        .await
        .expect("request sent in time")
        .expect("the server keeps reading: no reset while the client sends");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("response in time")
        .expect("the response arrives, not a reset");
    println!(
        "5 MiB head, sent then read: {} after {:?}",
        String::from_utf8_lossy(out.split(|b| *b == b'\r').next().unwrap_or(&[])),
        started.elapsed()
    );
    assert!(
        out.starts_with(b"HTTP/1.1 431 "),
        "{}",
        String::from_utf8_lossy(&out)
    );

    // A client that reads while it sends (as curl does) sees the 431 too.
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&request).await;
        w
    });
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), r.read_to_end(&mut out))
        .await
        .expect("response in time")
        .expect("the response arrives, not a reset");
    assert!(
        out.starts_with(b"HTTP/1.1 431 "),
        "{}",
        String::from_utf8_lossy(&out)
    );
    drop(writer.await.unwrap());

    let took = timed_scrape(addr).await;
    assert!(took < PROMPT, "{took:?}");
    tx.send(true).unwrap();
    task.await.unwrap().unwrap();
}

/// Sends a request head one byte per second and never finishes it.
async fn slowloris(addr: SocketAddr) -> Option<tokio::net::tcp::OwnedReadHalf> {
    let s = TcpStream::connect(addr).await.ok()?;
    let (r, mut w) = s.into_split();
    tokio::spawn(async move {
        let head = b"GET /metrics HTTP/1.1\r\nX-Slow: ";
        for b in head.iter().chain([b'a'; 30].iter()) {
            if w.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    Some(r)
}

#[tokio::test]
async fn http_slowloris_is_cut_at_the_head_deadline() {
    raise_nofile_limit();
    // Alone: every read brings a byte within a second, so only a deadline on the whole head
    // (not on each read) cuts it: a 408 at READ_TIMEOUT, then the close.
    let (addr, _m, tx, task) = start(None).await;
    let started = std::time::Instant::now();
    let mut r = slowloris(addr).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), r.read_to_end(&mut out))
        .await
        .expect("cut within 20 s")
        .expect("a response, not a reset");
    let cut = started.elapsed();
    println!("slowloris (1 byte/s) answered and closed after {cut:?}");
    assert!(
        out.starts_with(b"HTTP/1.1 408 "),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert!(
        cut >= http::READ_TIMEOUT - Duration::from_millis(100),
        "{cut:?}"
    );
    assert!(cut < http::READ_TIMEOUT + Duration::from_secs(3), "{cut:?}");
    tx.send(true).unwrap();
    task.await.unwrap().unwrap();

    // A crowd of them, above the connection cap: scrapes keep being answered promptly.
    let (addr, _m, tx, task) = start(None).await;
    let mut slow = Vec::new();
    for _ in 0..CROWD {
        slow.extend(slowloris(addr).await);
    }
    let mut worst = Duration::ZERO;
    for _ in 0..8 {
        worst = worst.max(timed_scrape(addr).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("slowest of 8 scrapes over 4 s with {CROWD} slowloris clients: {worst:?}");
    assert!(worst < PROMPT, "{worst:?}");
    drop(slow);
    tx.send(true).unwrap();
    task.await.unwrap().unwrap();
}

/// A listener whose connections have 4 KiB send buffers (accepted sockets inherit SO_SNDBUF):
/// on loopback the kernel would otherwise take a whole response of a few MiB off the server's
/// hands, so a client that never reads would never hold it up.
async fn small_send_buffers() -> tokio::net::TcpListener {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_send_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    socket.listen(1024).unwrap()
}

/// Makes `/metrics` about 55 KiB (96 DNS lists with every result), several times what the
/// buffers of a client that never reads hold; returns its length.
fn inflate(m: &Metrics) -> usize {
    for i in 0..96 {
        let zone = format!("zone{i}.dnsbl.example");
        for result in DNSBL_RESULTS {
            m.dnsbl_result(&zone, result);
        }
        m.dnsbl_refusal(&zone);
    }
    let len = m.render().len();
    assert!(len > 48 * 1024, "{len}");
    len
}

/// Sends `GET /metrics` and never reads (with a small receive buffer).
async fn deaf_client(addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    s
}

#[tokio::test]
async fn http_responses_nobody_reads_are_cut_at_the_write_deadline() {
    let limits = Limits {
        write_timeout: Duration::from_millis(500),
        ..http::LIMITS
    };
    let (addr, m, tx, task) = start_on(small_send_buffers().await, Some(limits)).await;
    inflate(m);
    let started = std::time::Instant::now();
    let deaf = [deaf_client(addr).await, deaf_client(addr).await];
    while dropped(m, "write_timeout") < 2.0 {
        assert!(started.elapsed() < Duration::from_secs(20), "never cut");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cut = started.elapsed();
    println!("responses nobody reads cut after {cut:?}");
    assert!(
        cut >= limits.write_timeout - Duration::from_millis(100),
        "{cut:?}"
    );
    drop(deaf);
    tx.send(true).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn http_clients_that_never_read_do_not_block_scrapes() {
    raise_nofile_limit();
    let (addr, m, tx, task) = start_on(small_send_buffers().await, None).await;
    let body_len = inflate(m);
    let mut deaf = Vec::new();
    for _ in 0..CROWD {
        deaf.push(deaf_client(addr).await);
    }
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        worst = worst.max(timed_scrape(addr).await);
    }
    println!(
        "slowest of 5 scrapes ({body_len} bytes) with {CROWD} clients that never read: {worst:?}"
    );
    assert!(worst < PROMPT, "{worst:?}");
    // They were stuck writing, and made room for the scrapes.
    let gone = dropped(m, "evicted") + dropped(m, "write_timeout");
    assert!(gone >= (CROWD - http::MAX_CONNECTIONS) as f64, "{gone}");
    drop(deaf);
    tx.send(true).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn http_pipelined_and_keep_alive_clients_get_one_response_and_a_clean_close() {
    let (addr, _m, tx, task) = start(None).await;
    // Two requests in one write: the first is answered, with `Connection: close`, and the
    // connection ends with a FIN (no reset eats the response); the client retries the second
    // on a new connection, as HTTP/1.1 clients do.
    let (status, _, body) = exchange(
        addr,
        b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\nGET /metrics HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, _, _) = exchange(
        addr,
        b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    tx.send(true).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn bind_fails_when_the_port_is_taken() {
    let first = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = first.local_addr().unwrap();
    let err = bind(addr).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

#[tokio::test]
async fn serve_stops_when_the_sender_is_dropped() {
    let (_addr, _m, tx, task) = start(None).await;
    drop(tx);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops")
        .unwrap()
        .unwrap();
}

/// The dashboard, the alerts and the operations guide name only metrics that exist.
#[test]
fn examples_and_docs_name_real_metrics() {
    let known: HashSet<&str> = FAMILIES.iter().map(|(f, _)| *f).collect();
    let files = [
        (
            "examples/grafana-dashboard.json",
            include_str!("../../examples/grafana-dashboard.json"),
        ),
        (
            "examples/prometheus-alerts.yml",
            include_str!("../../examples/prometheus-alerts.yml"),
        ),
        (
            "docs/operations.md",
            include_str!("../../docs/operations.md"),
        ),
    ];
    for (file, text) in files {
        let mut used = HashSet::new();
        for (i, _) in text.match_indices("mxsentry_") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if name == "mxsentry_" {
                continue; // a file name such as mxsentry_<version>.deb
            }
            let family = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suf| name.strip_suffix(suf).filter(|b| known.contains(b)))
                .unwrap_or(&name);
            assert!(known.contains(family), "{file}: unknown metric {name}");
            used.insert(family.to_string());
        }
        if file != "examples/prometheus-alerts.yml" {
            for f in &known {
                assert!(used.contains(*f), "{file} does not mention {f}");
            }
        }
    }
}

#[test]
fn dns_cache_and_prefetch_counters() {
    let m = Metrics::new();
    let (s, _) = parse_exposition(&m.render());
    // Present at 0 from the start.
    for r in DNS_PREFETCH_RESULTS {
        assert_eq!(
            s[&key("mxsentry_dns_prefetch_total", &[("result", r)])],
            0.0
        );
    }
    m.dns_cache("hit");
    m.dns_cache("hit");
    m.dns_cache("miss");
    m.dns_cache("stale");
    m.dns_prefetch("started");
    m.dns_prefetch("dropped");
    m.dns_prefetch("whatever");
    let (s, _) = parse_exposition(&m.render());
    let cache = |r| s[&key("mxsentry_dns_cache_lookups_total", &[("result", r)])];
    assert_eq!(
        (cache("hit"), cache("miss"), cache("other")),
        (2.0, 1.0, 1.0)
    );
    let prefetch = |r| s[&key("mxsentry_dns_prefetch_total", &[("result", r)])];
    assert_eq!(
        [
            prefetch("started"),
            prefetch("refreshed"),
            prefetch("failed"),
            prefetch("dropped"),
            prefetch("other")
        ],
        [1.0, 0.0, 0.0, 1.0, 1.0]
    );
}
