//! Deciding from evidence: lines built by the real `json_body`/`evidence_json`, decided by
//! the real policy under a NEW configuration, with `--no-dns` (nothing may be looked up).

use std::path::Path;

use super::parse::tests::daemon_line;
use super::*;
use crate::checks::rdns::RdnsEvidence;
use crate::checks::{Evidence, Finding};
use crate::config::Config;
use crate::policy::Policy;

/// A NEW policy: `extra` TOML after an access file with `access`.
fn replayer(access: &str, extra: &str) -> Replayer {
    let dir = tempfile::tempdir().unwrap();
    let access_path = dir.path().join("access");
    std::fs::write(&access_path, access).unwrap();
    // Greylisting is on by default: off unless the test turns it on.
    let greylist = match extra.contains("[greylist]") {
        true => "",
        false => "[greylist]\nenabled = false\n",
    };
    let text = format!(
        "{greylist}[sender_rules]\naccess_file = {:?}\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n{extra}",
        access_path.display().to_string()
    );
    let config = Config::parse(&text, Path::new("new.toml")).unwrap();
    Replayer::new(Policy::from_config(&config).unwrap(), true)
}

fn zone(check: &'static str, outcome: &str, zone: &str, answer: &str) -> Finding {
    Finding {
        check,
        outcome: outcome.into(),
        detail: String::new(),
        evidence: Evidence::Zone {
            zone: zone.into(),
            query: format!("1.2.0.192.{zone}"),
            answers: vec![answer.parse().unwrap()],
            txt: None,
            error: None,
        },
    }
}

fn greylist(outcome: &str) -> Finding {
    Finding {
        check: "greylist",
        outcome: outcome.into(),
        detail: String::new(),
        evidence: Evidence::Greylist { seconds: Some(300) },
    }
}

/// Decides every recipient of `line` with `r`.
fn decide(r: &Replayer, line: &str) -> Vec<Redecided> {
    let Line::Decision(rec) = parse_line(line) else {
        panic!("{line}")
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut prepared = r.prepare(&rec).await;
        let mut out = Vec::new();
        for rcpt in rec.recipients() {
            out.push(r.decide(&rec, &mut prepared, rcpt).await);
        }
        out
    })
}

fn verdict(d: &Redecided) -> (&str, &str) {
    match d {
        Redecided::Decided(v) => (v.verdict, v.reason.as_str()),
        Redecided::Undecidable(m) => panic!("undecidable: {m:?}"),
    }
}

/// The client's rDNS as the daemon logs it when the PTR name confirms (192.0.2.1).
fn rdns_ok() -> Finding {
    Finding {
        check: "rdns",
        outcome: "ok".into(),
        detail: String::new(),
        evidence: Evidence::Rdns(Box::new(RdnsEvidence {
            ptr: vec!["mail.example.org".into()],
            forward: vec![crate::checks::rdns::ForwardAnswer {
                name: "mail.example.org".into(),
                addrs: vec!["192.0.2.1".parse().unwrap()],
                error: None,
            }],
            error: None,
            by_mta: false,
        })),
    }
}

/// A daemon line whose evidence holds the client's rDNS and `findings`.
fn line(rcpt: &str, verdict: &str, findings: &[Finding]) -> String {
    let mut all = vec![rdns_ok()];
    all.extend_from_slice(findings);
    daemon_line(rcpt, verdict, &all)
}

const BL: &str = "[[dnsbl.zones]]\nzone = \"bl.test\"\n";

#[test]
fn a_logged_listing_rejects_under_new_and_its_return_codes_decide() {
    let line = line(
        "b@example.com",
        "reject",
        &[zone("dnsbl", "listed", "bl.test", "127.0.0.2")],
    );
    let d = decide(&replayer("", BL), &line);
    assert_eq!(verdict(&d[0]), ("reject", "dnsbl.listed"));
    // NEW only counts 127.0.0.4 as a listing: the same answer no longer lists.
    let codes = "[[dnsbl.zones]]\nzone = \"bl.test\"\nreturncodes = [\"127.0.0.4\"]\n";
    let d = decide(&replayer("", codes), &line);
    assert_eq!(verdict(&d[0]), ("accept", "none"));
    // NEW without the zone: accepted, nothing missing.
    let d = decide(&replayer("", ""), &line);
    assert_eq!(verdict(&d[0]), ("accept", "none"));
}

#[test]
fn a_zone_new_adds_is_missing_without_dns_unless_a_rule_decides_first() {
    let line = line(
        "b@example.com",
        "accept",
        &[zone("dnsbl", "not_listed", "bl.test", "127.0.0.1")],
    );
    let two = format!("{BL}[[dnsbl.zones]]\nzone = \"bl2.test\"\n");
    let d = decide(&replayer("", &two), &line);
    assert_eq!(
        d[0],
        Redecided::Undecidable(vec!["dnsbl zone bl2.test".to_string()])
    );
    // A sender rule decides before any DNS answer matters.
    let d = decide(&replayer("From:a@example.org REJECT\n", &two), &line);
    assert_eq!(verdict(&d[0]), ("reject", "sender_rules.reject"));
}

#[test]
fn an_allow_listing_vouches_and_a_refusal_never_lists() {
    let line = line(
        "b@example.com",
        "accept",
        &[
            zone("dnswl", "listed", "wl.test", "127.0.0.2"),
            zone("dnsbl", "refused", "bl.test", "127.255.255.254"),
        ],
    );
    // The IP lists of an allow-listed client need not be known (bl2.test is not).
    let lists = "[[dnsbl.allow_zones]]\nzone = \"wl.test\"\n[[dnsbl.zones]]\nzone = \"bl2.test\"\n";
    let d = decide(&replayer("", lists), &line);
    assert_eq!(verdict(&d[0]), ("accept", "dnswl.listed"));
    let d = decide(&replayer("", BL), &line);
    assert_eq!(verdict(&d[0]), ("accept", "none"));
}

#[test]
fn rdns_evidence_is_judged_with_new_actions() {
    let forged = Finding {
        check: "rdns",
        outcome: "forged".into(),
        detail: String::new(),
        evidence: Evidence::Rdns(Box::new(RdnsEvidence {
            ptr: vec!["mail.example.net".into()],
            forward: vec![crate::checks::rdns::ForwardAnswer {
                name: "mail.example.net".into(),
                addrs: vec!["198.51.100.7".parse().unwrap()],
                error: None,
            }],
            error: None,
            by_mta: false,
        })),
    };
    let line = daemon_line("b@example.com", "accept", &[forged]);
    let d = decide(&replayer("", "[rdns]\nforged = \"reject\"\n"), &line);
    assert_eq!(verdict(&d[0]), ("reject", "rdns.forged"));
    // No rDNS evidence at all (the old config skipped it): missing without DNS.
    let line = daemon_line("b@example.com", "accept", &[]);
    let d = decide(&replayer("", "[rdns]\nforged = \"reject\"\n"), &line);
    assert_eq!(
        d[0],
        Redecided::Undecidable(vec!["rdns (PTR/FCrDNS)".to_string()])
    );
}

#[test]
fn greylisting_takes_the_logged_step_or_counts_as_new() {
    let grey = "[greylist]\nenabled = true\n";
    let passed = line("b@example.com", "accept", &[greylist("passed")]);
    let d = decide(&replayer("", grey), &passed);
    assert_eq!(verdict(&d[0]), ("accept", "greylist.passed"));
    let new = line("b@example.com", "greylist", &[greylist("new")]);
    let d = decide(&replayer("", grey), &new);
    assert_eq!(verdict(&d[0]), ("greylist", "greylist.new"));
    // Never greylisted before: state unknown, counted as new.
    let never = line("b@example.com,c@example.com", "accept", &[]);
    let d = decide(&replayer("", grey), &never);
    assert_eq!(d.len(), 2);
    for one in &d {
        let Redecided::Decided(v) = one else {
            panic!("{one:?}")
        };
        assert_eq!((v.verdict, v.greylist_unknown), ("greylist", true));
        assert_eq!(v.cause, "greylist=new (state unknown: would be new)");
    }
}

#[test]
fn rdns_wanted_only_for_greylist_pools_is_not_missing() {
    let grey = "[greylist]\nenabled = true\npool_by_rdns = true\n\
                [rdns]\nno_ptr = \"off\"\nforged = \"off\"\ndynamic = \"off\"\n";
    let never = daemon_line("b@example.com", "accept", &[]);
    let d = decide(&replayer("", grey), &never);
    assert_eq!(verdict(&d[0]), ("greylist", "greylist.new"));
}

/// Replays `log` (as a file named `f.log`) with `r`; (output, error).
fn replay_text(r: &Replayer, log: &[u8]) -> (String, Result<(), String>) {
    let opts = Options {
        config: Path::new("new.toml"),
        log: Path::new("f.log"),
        json: false,
        no_dns: true,
    };
    let mut out = Vec::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let result = rt.block_on(replay(r, log, &opts, &mut out));
    (String::from_utf8(out).unwrap(), result)
}

#[test]
fn malformed_and_overlong_lines_are_skipped_and_counted_the_rest_decided() {
    let good = line(
        "b@example.com",
        "reject",
        &[zone("dnsbl", "listed", "bl.test", "127.0.0.2")],
    );
    let huge = "x".repeat(3 << 20);
    let log = format!("{good}\n{{\"message\":\"decision\",\n{huge}\n{good}\n");
    let (out, result) = replay_text(&replayer("", ""), log.as_bytes());
    assert_eq!(result, Ok(()));
    assert!(
        out.starts_with("f.log:1 queue Q1 client 192.0.2.1 ([192.0.2.1]) from <a@example.org> rcpt <b@example.com>: reject -> accept (none)\n"),
        "{out}"
    );
    assert!(out.contains("f.log:4 queue Q1"), "{out}");
    assert!(
        out.contains("lines 4: decision lines 2, other lines 0, malformed lines 2\n"),
        "{out}"
    );
    // A text decision line stops the replay at its line.
    let text = "2026-12-05T04:00:00Z  INFO mxsentry::decision: decision queue_id=Q1 verdict=accept";
    let log = format!("{good}\n{text}\n");
    let (_, result) = replay_text(&replayer("", ""), log.as_bytes());
    assert_eq!(
        result,
        Err("f.log:2: a text log line; replay needs [log] format = \"json\"".to_string())
    );
}
