//! `/metrics` after real sessions: the counters an admin graphs move as the sessions went, and
//! the whole output parses as the Prometheus text format.

mod common;

use std::collections::HashMap;

use common::{reply_text, Client, Daemon};
use mxsentry::protocol::command::Command;

/// Parses the text exposition format strictly: every sample line is `name{labels} value`, and
/// every sample's family has `# HELP` and `# TYPE` lines. Returns sample → value.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut typed = std::collections::HashSet::new();
    let mut samples = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut f = rest.split_whitespace();
            let name = f.next().unwrap();
            let kind = f.next().unwrap();
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            typed.insert(name.to_string());
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment: {line}");
        let (series, value) = line.rsplit_once(' ').expect(line);
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        assert!(typed.contains(family), "no TYPE for {family}: {line}");
        samples.insert(series.to_string(), value);
    }
    samples
}

#[test]
fn counters_follow_real_sessions() {
    let d = Daemon::start("From:reject.example REJECT\n", "");
    let (status, body) = d.http_get("/healthz");
    assert!(status.contains("200"), "{status} {body}");

    let mut c = Client::tcp(d.port);
    c.negotiate();
    for _ in 0..2 {
        c.connect("client.example", "192.0.2.10");
        c.helo("helo.example");
        c.mail("a@reject.example");
        assert_eq!(
            reply_text(&c.rcpt("u@example.org").unwrap()),
            "550 5.7.1 Access denied"
        );
        c.send(&Command::QuitNewConnection);
    }
    c.connect("client.example", "192.0.2.10");
    c.helo("helo.example");
    c.mail("a@fine.example");
    c.rcpt("u@example.org");
    c.message();
    c.send(&Command::Quit);
    assert!(c.closed_by_peer());
    // garbage: one protocol error
    let mut g = Client::tcp(d.port);
    g.send_raw(&[0, 0, 0, 1, b'Z']).unwrap();
    assert!(g.closed_by_peer());
    d.wait_log("unknown command");

    let (status, body) = d.http_get("/metrics");
    assert!(status.contains("200"), "{status}");
    let m = parse(&body);
    let get = |k: &str| {
        m.get(k)
            .copied()
            .unwrap_or_else(|| panic!("{k} missing:\n{body}"))
    };
    assert_eq!(
        get("mxsentry_recipients_total{reason=\"sender_rules.reject\",verdict=\"reject\"}"),
        2.0
    );
    assert_eq!(
        get("mxsentry_recipients_total{reason=\"none\",verdict=\"accept\"}"),
        1.0
    );
    assert_eq!(get("mxsentry_messages_total{verdict=\"accept\"}"), 1.0);
    assert_eq!(get("mxsentry_sessions_total{verdict=\"reject\"}"), 2.0);
    assert_eq!(get("mxsentry_sessions_total{verdict=\"accept\"}"), 1.0);
    assert_eq!(
        get("mxsentry_findings_total{check=\"sender_rules\",outcome=\"reject\"}"),
        2.0
    );
    assert_eq!(
        get("mxsentry_protocol_errors_total{reason=\"unknown_command\"}"),
        1.0
    );
    assert!(get("mxsentry_dns_query_duration_seconds_count{kind=\"ptr\"}") >= 1.0);
    assert_eq!(get("mxsentry_build_info{version=\"0.1.0\"}"), 1.0);
    let (status, _) = d.http_get("/nope");
    assert!(status.contains("404"), "{status}");
}

#[test]
fn reloads_are_counted() {
    let d = Daemon::start("", "");
    std::fs::write(d.config_dir().join("access"), "From:x.example REJCT\n").unwrap();
    d.signal("HUP");
    d.wait_log("reload failed");
    std::fs::write(d.config_dir().join("access"), "From:x.example REJECT\n").unwrap();
    d.signal("HUP");
    d.wait_log("configuration reloaded");
    let (_, body) = d.http_get("/metrics");
    let m = parse(&body);
    assert_eq!(m["mxsentry_config_reloads_total{result=\"failure\"}"], 1.0);
    assert_eq!(m["mxsentry_config_reloads_total{result=\"success\"}"], 1.0);
}

/// Issue 11: hundreds of idle connections to the metrics port must not keep a scrape waiting
/// (the daemon's own endpoint, as `mxsentry run` wires it).
#[test]
fn scrapes_answer_with_hundreds_of_idle_connections_open() {
    let d = Daemon::start("", "");
    let (status, _) = d.http_get("/healthz");
    assert!(status.contains("200"), "{status}");
    // Over twice the endpoint's connection cap (256).
    let idle: Vec<_> = (0..600)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", d.metrics_port)).unwrap())
        .collect();
    let started = std::time::Instant::now();
    let (status, body) = d.http_get("/metrics");
    let took = started.elapsed();
    println!("scrape of the daemon with 600 idle connections open: {took:?}");
    assert!(status.contains("200"), "{status}");
    assert!(parse(&body).contains_key("mxsentry_build_info{version=\"0.1.0\"}"));
    assert!(took < std::time::Duration::from_secs(2), "{took:?}");
    drop(idle);
}
