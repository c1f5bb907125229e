//! `mxsentry replay` on the real daemon's own JSON log: a NEW configuration that rejects a
//! sender and drops a DNSBL flips exactly those sessions, from the evidence the log carries
//! (no lookups: `--no-dns`); a zone the log lacks is looked up, or undecidable with
//! `--no-dns`; a text log is refused. All DNS comes from a loopback test server.

mod common;

use std::path::Path;
use std::process::Command;

use common::{reply_text, Client, Daemon};
use mxsentry::protocol::reply::Reply;

/// 192.0.2.100: listed in bl.test; 192.0.2.10: clean, but listed in bl2.test (a zone only the
/// NEW configuration asks); 192.0.2.30: no PTR (greylisted by `no_ptr = "greylist"`).
const ZONE: &str = "\
100.2.0.192.in-addr.arpa PTR listed.fcrdns.test
listed.fcrdns.test A 192.0.2.100
100.2.0.192.bl.test A 127.0.0.2
10.2.0.192.in-addr.arpa PTR good.fcrdns.test
good.fcrdns.test A 192.0.2.10
10.2.0.192.bl2.test A 127.0.0.2
";

const LIVE: &str = "[log]\nformat = \"json\"\n[rdns]\nno_ptr = \"greylist\"\n\
                    [[dnsbl.zones]]\nzone = \"bl.test\"\n";

/// One transaction; the RCPT reply, the message's replies when it continued.
fn transaction(d: &Daemon, ip: &str, from: &str, rcpt: &str) -> Reply {
    let mut c = Client::tcp(d.port);
    c.negotiate();
    c.connect("[unverified]", ip);
    c.helo("mail.good.test");
    c.mail(from);
    let r = c.rcpt(rcpt).expect("RCPT answered");
    if r == Reply::Continue {
        assert_eq!(c.message().last(), Some(&Reply::Accept));
    }
    r
}

/// Writes a NEW configuration (and its access file) into `dir`; its resolver is the test's.
fn new_config(dir: &Path, d: &Daemon, access: &str, extra: &str) -> String {
    let access_path = dir.join("new-access");
    std::fs::write(&access_path, access).unwrap();
    let path = dir.join("new.toml");
    let config = format!(
        "[milter]\nhostname = \"mx.example.org\"\n{extra}\n[rdns]\nno_ptr = \"greylist\"\n\
         [greylist]\nenabled = false\n[control]\nsocket = \"off\"\n\
         [dns]\nnameservers = [\"{}\"]\ntimeout = \"2s\"\n\
         [sender_rules]\naccess_file = \"{}\"\n",
        d.dns.addr,
        access_path.display()
    );
    std::fs::write(&path, config).unwrap();
    path.display().to_string()
}

/// Runs `mxsentry replay ARGS`; (exit code, stdout, stderr).
fn replay(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mxsentry"))
        .arg("replay")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The daemon, after three sessions: rejected by bl.test, accepted, greylisted.
fn daemon_with_traffic() -> Daemon {
    let d = Daemon::start_with_zone("", LIVE, ZONE);
    let r = transaction(&d, "192.0.2.100", "a@sender.test", "u@example.org");
    assert_eq!(
        reply_text(&r),
        "550 5.7.1 Mail from 192.0.2.100 refused, listed in bl.test"
    );
    assert_eq!(
        transaction(&d, "192.0.2.10", "x@spam.test", "u@example.org"),
        Reply::Continue
    );
    let r = transaction(&d, "192.0.2.30", "b@sender.test", "v@example.org");
    assert_eq!(
        reply_text(&r),
        "450 4.7.1 Greylisted, try again in 300 seconds"
    );
    d.wait_log_count("\"message\":\"decision\"", 3);
    d
}

#[test]
fn a_new_config_flips_the_sessions_it_changes_from_the_logged_evidence() {
    let d = daemon_with_traffic();
    let dir = tempfile::tempdir().unwrap();
    // NEW: the sender x@spam.test is refused, bl.test is gone.
    let new = new_config(dir.path(), &d, "From:x@spam.test REJECT\n", "");
    let log = d.log_path.display().to_string();
    let (code, out, err) = replay(&["--config", &new, "--log", &log, "--no-dns"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let flips: Vec<&str> = out.lines().filter(|l| l.contains(" -> ")).collect();
    assert_eq!(flips.len(), 4, "{out}"); // two flips, two lines of flip totals
    assert!(
        out.contains(
            "client 192.0.2.10 ([unverified]) from <x@spam.test> rcpt <u@example.org>: \
             accept -> reject (sender_rules.reject: sender_rules=access:1 From:x@spam.test REJECT)"
        ),
        "{out}"
    );
    assert!(
        out.contains(
            "client 192.0.2.100 ([unverified]) from <a@sender.test> rcpt <u@example.org>: \
             reject -> accept (none)"
        ),
        "{out}"
    );
    assert!(
        !out.contains("192.0.2.30"),
        "the greylisted one stays: {out}"
    );
    assert!(
        out.contains("recipients 3: decided 3, undecidable 0, flipped 2\n"),
        "{out}"
    );
    assert!(out.contains("flips accept -> reject: 1\n"), "{out}");
    assert!(out.contains("flips reject -> accept: 1\n"), "{out}");
    assert!(out.contains(": decision lines 3, other lines "), "{out}");

    // --json: one object per flip, then the totals.
    let (code, out, err) = replay(&["--config", &new, "--log", &log, "--no-dns", "--json"]);
    assert_eq!(code, 0, "{err}");
    let objects: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(objects.len(), 3, "{out}");
    let flip = objects
        .iter()
        .find(|o| o["from"] == "x@spam.test")
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(flip["type"], "flip");
    assert_eq!(
        (&flip["old"], &flip["new"]),
        (&"accept".into(), &"reject".into())
    );
    assert_eq!(flip["new_reason"], "sender_rules.reject");
    assert_eq!(flip["rcpt"], "u@example.org");
    let totals = &objects[2];
    assert_eq!(totals["type"], "totals", "{out}");
    assert_eq!(totals["recipients"], 3);
    assert_eq!(totals["flipped"], 2);
    assert_eq!(totals["undecidable"], 0);
}

#[test]
fn a_zone_the_log_lacks_is_looked_up_or_undecidable_without_dns() {
    let d = daemon_with_traffic();
    let dir = tempfile::tempdir().unwrap();
    let zones = "[[dnsbl.zones]]\nzone = \"bl.test\"\n[[dnsbl.zones]]\nzone = \"bl2.test\"\n";
    let new = new_config(dir.path(), &d, "", zones);
    let log = d.log_path.display().to_string();

    let (code, out, err) = replay(&["--config", &new, "--log", &log, "--no-dns"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("recipients 3: decided 0, undecidable 3, flipped 0\n"),
        "{out}"
    );
    assert!(
        out.contains(
            "client 192.0.2.10 ([unverified]) from <x@spam.test> rcpt <u@example.org>: \
             accept -> undecidable (--no-dns; missing dnsbl zone bl2.test)"
        ),
        "{out}"
    );

    // With DNS, bl2.test is asked (through NEW's resolver): it lists 192.0.2.10.
    let (code, out, err) = replay(&["--config", &new, "--log", &log]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("rcpt <u@example.org>: accept -> reject (dnsbl.listed: dnsbl=bl2.test)"),
        "{out}"
    );
    assert!(
        out.contains("recipients 3: decided 3, undecidable 0, flipped 1\n"),
        "{out}"
    );
}

#[test]
fn a_text_log_is_refused_with_the_line() {
    let d = Daemon::start_with_zone("", "", ZONE);
    assert_eq!(
        transaction(&d, "192.0.2.10", "x@spam.test", "u@example.org"),
        Reply::Continue
    );
    d.wait_log("mxsentry::decision");
    let dir = tempfile::tempdir().unwrap();
    let new = new_config(dir.path(), &d, "", "");
    let log = d.log_path.display().to_string();
    let (code, out, err) = replay(&["--config", &new, "--log", &log]);
    assert_eq!(code, 2, "{out}");
    let number = d
        .log()
        .lines()
        .position(|l| l.contains("mxsentry::decision: decision"))
        .unwrap()
        + 1;
    assert_eq!(
        err.trim_end(),
        format!("{log}:{number}: a text log line; replay needs [log] format = \"json\"")
    );

    // An unreadable log: exit 2 with the file named.
    let (code, _, err) = replay(&["--config", &new, "--log", "/nonexistent/mxsentry.log"]);
    assert_eq!(code, 2);
    assert!(
        err.starts_with("/nonexistent/mxsentry.log: cannot read:"),
        "{err}"
    );
}
