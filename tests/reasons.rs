//! Reason codes through the real daemon: the JSON decision line (`reason` and the DNS evidence
//! a replay needs), the text line, the `reason` label of the verdict metrics, the tag header
//! and `explain --json`. All DNS comes from a loopback test server.

mod common;

use common::{reply_text, Client, Daemon};
use mxsentry::protocol::reply::Reply;

const ZONE: &str = "\
100.2.0.192.in-addr.arpa PTR listed.fcrdns.test
listed.fcrdns.test A 192.0.2.100
100.2.0.192.bl.test A 127.0.0.2
100.2.0.192.bl.test TXT \"Listed: see https://bl.test/q?192.0.2.100\"
10.2.0.192.in-addr.arpa PTR good.fcrdns.test
good.fcrdns.test A 192.0.2.10
";

const LISTS: &str = "[[dnsbl.zones]]\nzone = \"bl.test\"\n";
const JSON_LOG: &str = "[log]\nformat = \"json\"\n";

/// One transaction up to RCPT; returns the RCPT reply and, when it continued, the replies to
/// the message.
fn transaction(d: &Daemon, ip: &str, from: &str, rcpt: &str) -> (Reply, Vec<Reply>) {
    let mut c = Client::tcp(d.port);
    c.negotiate();
    c.connect("[unverified]", ip);
    c.helo("mail.good.test");
    c.mail(from);
    let r = c.rcpt(rcpt).expect("RCPT answered");
    let eom = if r == Reply::Continue {
        c.message()
    } else {
        Vec::new()
    };
    (r, eom)
}

/// The JSON decision line about `ip`, parsed.
fn json_line(d: &Daemon, ip: &str) -> serde_json::Value {
    let needle = format!("\"client_ip\":\"{ip}\"");
    let log = d.wait_log(&needle);
    let line = log
        .lines()
        .find(|l| l.contains(&needle) && l.contains("mxsentry::decision"))
        .unwrap_or_else(|| panic!("no decision line for {ip}: {log}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

fn evidence<'a>(line: &'a serde_json::Value, code: &str) -> &'a serde_json::Value {
    line["evidence"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["code"] == code))
        .unwrap_or_else(|| panic!("no {code} evidence: {line}"))
}

#[test]
fn a_dnsbl_reject_logs_its_reason_and_the_zones_answer_and_counts_it() {
    let d = Daemon::start_with_zone("", &format!("{JSON_LOG}{LISTS}"), ZONE);
    let (r, _) = transaction(&d, "192.0.2.100", "a@sender.test", "u@example.org");
    assert_eq!(
        reply_text(&r),
        "550 5.7.1 Mail from 192.0.2.100 refused, listed in bl.test"
    );
    let line = json_line(&d, "192.0.2.100");
    assert_eq!(line["verdict"], "reject", "{line}");
    assert_eq!(line["reason"], "dnsbl.listed", "{line}");
    assert_eq!(line["target"], "mxsentry::decision", "{line}");
    assert_eq!(line["level"], "INFO", "{line}");
    // The envelope a replay re-decides with.
    assert_eq!(line["client_name"], "[unverified]", "{line}");
    assert_eq!(line["client_verified"], false, "{line}");
    assert_eq!(line["helo"], "mail.good.test", "{line}");
    assert_eq!(line["from"], "<a@sender.test>", "{line}");
    assert_eq!(line["rcpt"], "<u@example.org>", "{line}");
    assert_eq!(line["authenticated"], false, "{line}");
    // The zone's answer, and the rDNS answers behind rdns.ok.
    let z = evidence(&line, "dnsbl.listed");
    assert_eq!(z["zone"], "bl.test", "{line}");
    assert_eq!(z["answers"], serde_json::json!(["127.0.0.2"]), "{line}");
    assert_eq!(
        z["txt"], "Listed: see https://bl.test/q?192.0.2.100",
        "{line}"
    );
    assert!(
        line["evidence"][0].to_string().starts_with("{\"code\":"),
        "{line}"
    );
    assert!(
        z.get("query").is_none(),
        "an IP zone's query is client_ip + zone: {line}"
    );
    let p = evidence(&line, "rdns.ok");
    assert_eq!(
        p["ptr"],
        serde_json::json!(["listed.fcrdns.test"]),
        "{line}"
    );
    assert_eq!(p["forward"][0]["name"], "listed.fcrdns.test", "{line}");
    assert_eq!(
        p["forward"][0]["addrs"],
        serde_json::json!(["192.0.2.100"]),
        "{line}"
    );
    // The human text stays, with codes for the findings.
    assert!(
        line["findings"]
            .as_str()
            .unwrap()
            .starts_with("dnsbl.listed(bl.test: 100.2.0.192.bl.test -> 127.0.0.2"),
        "{line}"
    );

    // A clean client: accepted at end of message, reason none, the zone's "no" as evidence.
    let (r, eom) = transaction(&d, "192.0.2.10", "a@sender.test", "u@example.org");
    assert_eq!((r, eom), (Reply::Continue, vec![Reply::Accept]));
    let line = json_line(&d, "192.0.2.10");
    assert_eq!(
        (&line["verdict"], &line["reason"]),
        (&"accept".into(), &"none".into()),
        "{line}"
    );
    assert_eq!(evidence(&line, "dnsbl.not_listed")["zone"], "bl.test");

    d.wait_metric(
        "mxsentry_recipients_total{reason=\"dnsbl.listed\",verdict=\"reject\"}",
        1.0,
    );
    d.wait_metric(
        "mxsentry_recipients_total{reason=\"none\",verdict=\"accept\"}",
        1.0,
    );
}

#[test]
fn a_greylist_450_logs_greylist_new_in_text_and_json() {
    let greylist = "[greylist]\nenabled = true\ndelay = \"1h\"\n";
    let d = Daemon::start_with_zone("", &format!("{JSON_LOG}{greylist}"), ZONE);
    let (r, _) = transaction(&d, "192.0.2.10", "a@sender.test", "u@example.org");
    assert!(reply_text(&r).starts_with("450 4.7.1 Greylisted"), "{r:?}");
    let line = json_line(&d, "192.0.2.10");
    assert_eq!(line["verdict"], "greylist", "{line}");
    assert_eq!(line["reason"], "greylist.new", "{line}");
    let g = evidence(&line, "greylist.new");
    assert_eq!(g["rcpt"], "u@example.org", "{line}");
    assert_eq!(g["seconds"], 3600, "{line}");
    d.wait_metric(
        "mxsentry_recipients_total{reason=\"greylist.new\",verdict=\"greylist\"}",
        1.0,
    );

    // The text line: reason= right after the verdict.
    let d = Daemon::start_with_zone("", greylist, ZONE);
    let (r, _) = transaction(&d, "192.0.2.10", "a@sender.test", "u@example.org");
    assert!(reply_text(&r).starts_with("450 4.7.1 Greylisted"), "{r:?}");
    let log = d.wait_log("verdict=greylist");
    assert!(
        log.contains("verdict=greylist reason=greylist.new reply="),
        "{log}"
    );
    assert!(log.contains("findings=\"greylist.new(new triplet"), "{log}");
}

#[test]
fn the_tag_header_carries_codes() {
    let d = Daemon::start_with_zone(
        "",
        &format!("mode = \"dry-run\"\n[rdns]\nforged = \"tag\"\n{LISTS}"),
        &format!("{ZONE}20.2.0.192.in-addr.arpa PTR forged.fcrdns.test\nforged.fcrdns.test A 192.0.2.99\n"),
    );
    for (ip, want) in [
        (
            "192.0.2.100",
            "would-reject dnsbl=bl.test reason=dnsbl.listed",
        ),
        ("192.0.2.20", "rdns=forged reason=rdns.forged"),
    ] {
        let (r, eom) = transaction(&d, ip, "a@sender.test", "u@example.org");
        assert_eq!(r, Reply::Continue);
        let Some(Reply::AddHeader { name, value }) = eom.first() else {
            panic!("no tag header for {ip}: {eom:?}")
        };
        assert_eq!(&name[..], b"X-Mxsentry");
        assert_eq!(String::from_utf8_lossy(value), want, "{ip}");
    }
    d.wait_metric(
        "mxsentry_recipients_total{reason=\"dry_run\",verdict=\"accept\"}",
        1.0,
    );
    d.wait_metric(
        "mxsentry_dry_run_verdicts_total{reason=\"dnsbl.listed\",verdict=\"reject\"}",
        1.0,
    );
    let log = d.wait_log("client_ip=192.0.2.100");
    assert!(log.contains("verdict=accept reason=dry_run"), "{log}");
}

#[test]
fn explain_json_shows_the_codes() {
    let d = Daemon::start_with_zone("From:spammer.test REJECT\n", LISTS, ZONE);
    let explain = |ip: &str, from: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mxsentry"))
            .args(["explain", "--json", "--config"])
            .arg(&d.config_path)
            .args([
                "--client-ip",
                ip,
                "--helo",
                "mail.good.test",
                "--from",
                from,
            ])
            .args(["--rcpt", "u@example.org"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["recipients"][0].clone()
    };
    let r = explain("192.0.2.100", "a@sender.test");
    assert_eq!(r["reason"], "dnsbl.listed", "{r}");
    assert_eq!(r["cause"], "dnsbl=bl.test", "{r}");
    let codes: Vec<&str> = r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["rdns.ok", "dnsbl.listed"], "{r}");
    let r = explain("192.0.2.10", "x@spammer.test");
    assert_eq!(r["reason"], "sender_rules.reject", "{r}");
    assert_eq!(r["findings"][0]["code"], "sender_rules.reject", "{r}");
    // and the text report names them too
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mxsentry"))
        .args(["explain", "--config"])
        .arg(&d.config_path)
        .args(["--client-ip", "192.0.2.100", "--helo", "mail.good.test"])
        .args(["--from", "a@sender.test", "--rcpt", "u@example.org"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("  dnsbl.listed "), "{text}");
    assert!(
        text.contains("  reason: dnsbl.listed (dnsbl=bl.test)"),
        "{text}"
    );
}
