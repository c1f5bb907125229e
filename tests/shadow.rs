//! The shadow policy (`[shadow] config`) through the real daemon: a candidate that would refuse
//! is never enforced, its verdict is in the decision line and in
//! `mxsentry_shadow_verdicts_total{live,shadow}`, it never writes the greylist store, it is
//! re-read on reload, and a bad candidate is refused with `file:line: reason`.

mod common;

use std::path::PathBuf;

use common::{mxsentry, reply_text, transaction, Client, Daemon, TEST_ZONE};
use mxsentry::protocol::reply::Reply;
use mxsentry::testing::dns_server::TestDnsServer;

/// A candidate milter.toml with its own access file, in its own directory. Its `[dns]` names a
/// loopback server of its own: the daemon ignores it (the candidate uses the live resolver),
/// and nothing here may ask public DNS anyway.
struct Candidate {
    dir: tempfile::TempDir,
    _dns: TestDnsServer,
    path: PathBuf,
    /// Its `[dns] timeout` (the live one's in the helper: 2s).
    dns_timeout: &'static str,
}

impl Candidate {
    fn new(access: &str, extra: &str) -> Candidate {
        Candidate::with_dns_timeout(access, extra, "2s")
    }

    fn with_dns_timeout(access: &str, extra: &str, dns_timeout: &'static str) -> Candidate {
        let dir = tempfile::tempdir().unwrap();
        let dns = TestDnsServer::start_in_thread(TEST_ZONE).unwrap();
        let path = dir.path().join("candidate.toml");
        let c = Candidate {
            dir,
            _dns: dns,
            path,
            dns_timeout,
        };
        c.write(access, extra);
        c
    }

    /// Rewrites the candidate (and its access file).
    fn write(&self, access: &str, extra: &str) {
        let access_path = self.dir.path().join("candidate-access");
        // Greylisting is on by default: off unless the test turns it on, as in the live one.
        let greylist = if extra.contains("[greylist]") {
            ""
        } else {
            "[greylist]\nenabled = false\n"
        };
        std::fs::write(&access_path, access).unwrap();
        let config = format!(
            "[milter]\nhostname = \"mx.example.org\"\n{extra}\n{greylist}\
             [dns]\nnameservers = [\"{}\"]\ntimeout = \"{}\"\n\
             [control]\nsocket = \"off\"\n\
             [sender_rules]\naccess_file = \"{}\"\n",
            self._dns.addr,
            self.dns_timeout,
            access_path.display()
        );
        std::fs::write(&self.path, config).unwrap();
    }

    /// The live configuration's section that names this candidate.
    fn section(&self) -> String {
        format!("[shadow]\nconfig = \"{}\"\n", self.path.display())
    }
}

fn shadow_metric(d: &Daemon, live: &str, shadow: &str) -> f64 {
    d.try_metric(&format!(
        "mxsentry_shadow_verdicts_total{{live=\"{live}\",shadow=\"{shadow}\"}}"
    ))
    .unwrap_or(0.0)
}

/// The decision log line that names `from`.
fn decision_line(d: &Daemon, from: &str, n: usize) -> String {
    let needle = format!("<{from}>");
    d.wait_log_count(&needle, n);
    let log = d.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(&needle)).collect();
    lines[n - 1].to_string()
}

#[test]
fn a_candidate_that_rejects_is_logged_and_counted_never_enforced() {
    let cand = Candidate::new("From:spam@bad.example REJECT\n", "");
    let d = Daemon::start("", &format!("{}[log]\nformat = \"json\"\n", cand.section()));
    d.wait_log("shadow policy loaded");

    // The live policy accepts: the MTA is told so, the message goes through.
    let (r, eom) = transaction(&d, "spam@bad.example", "u@example.org");
    assert_eq!(r, Reply::Continue);
    assert_eq!(eom.last(), Some(&Reply::Accept));
    let line = decision_line(&d, "spam@bad.example", 1);
    assert!(line.contains("\"verdict\":\"accept\""), "{line}");
    assert!(line.contains("\"shadow_verdict\":\"reject\""), "{line}");
    assert!(
        line.contains("\"shadow_cause\":\"sender_rules=access:1 From:spam@bad.example REJECT\""),
        "{line}"
    );
    d.wait_metric(
        "mxsentry_shadow_verdicts_total{live=\"accept\",shadow=\"reject\"}",
        1.0,
    );

    // A sender both accept: counted as agreement.
    let (r, _) = transaction(&d, "ok@good.example", "u@example.org");
    assert_eq!(r, Reply::Continue);
    let line = decision_line(&d, "ok@good.example", 1);
    assert!(line.contains("\"shadow_verdict\":\"accept\""), "{line}");
    d.wait_metric(
        "mxsentry_shadow_verdicts_total{live=\"accept\",shadow=\"accept\"}",
        1.0,
    );
    assert_eq!(
        shadow_metric(&d, "accept", "reject"),
        1.0,
        "{}",
        d.http_get("/metrics").1
    );

    let (code, out, err) = d.cmd(&["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("shadow: {}\n", cand.path.display())),
        "{out}"
    );
    assert!(
        out.contains("shadow verdicts: 2 recipients, 1 different from the live verdict\n"),
        "{out}"
    );
}

#[test]
fn a_greylisting_candidate_reads_the_store_and_never_writes_it() {
    // Live: no greylisting. Candidate: greylisting for everyone. The daemon opens the store
    // for the candidate to read.
    let cand = Candidate::new(
        "",
        "[greylist]\nenabled = true\ndelay = \"1h\"\nretry_window = \"2d\"\n\
         client_autowhite_after = 0\npool_by_rdns = false\n",
    );
    let d = Daemon::start("", &cand.section());
    let (r, _) = transaction(&d, "news@sender.example", "u@example.org");
    assert_eq!(r, Reply::Continue, "the live policy does not greylist");
    d.wait_metric(
        "mxsentry_shadow_verdicts_total{live=\"accept\",shadow=\"greylist\"}",
        1.0,
    );
    // A second attempt is still new to the candidate: nothing was recorded.
    let (r, _) = transaction(&d, "news@sender.example", "u@example.org");
    assert_eq!(r, Reply::Continue);
    d.wait_metric(
        "mxsentry_shadow_verdicts_total{live=\"accept\",shadow=\"greylist\"}",
        2.0,
    );
    let line = decision_line(&d, "news@sender.example", 2);
    assert!(line.contains("shadow=greylist"), "{line}");
    let (code, out, err) = d.cmd(&["greylist", "list"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("(via the running daemon)"), "{err}");
    assert!(!out.contains("t:"), "the shadow wrote the store: {out}");

    // What the store holds, the candidate reads: a whitelisted triplet passes.
    let (code, out, err) = d.cmd(&[
        "greylist",
        "add",
        "--client-ip",
        "192.0.2.10",
        "--from",
        "news@sender.example",
        "--rcpt",
        "u@example.org",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let (r, _) = transaction(&d, "news@sender.example", "u@example.org");
    assert_eq!(r, Reply::Continue);
    d.wait_metric(
        "mxsentry_shadow_verdicts_total{live=\"accept\",shadow=\"accept\"}",
        1.0,
    );
}

#[test]
fn reload_rereads_the_candidate_and_a_bad_one_keeps_both() {
    let cand = Candidate::new("From:spam@bad.example REJECT\n", "");
    let d = Daemon::start("From:live@bad.example REJECT\n", &cand.section());

    let (r, _) = transaction(&d, "spam@bad.example", "u@example.org");
    assert_eq!(r, Reply::Continue);
    let line = decision_line(&d, "spam@bad.example", 1);
    assert!(
        line.contains(" shadow=reject"),
        "text line names it: {line}"
    );

    // A changed candidate takes effect at reload. (Its mode does not matter: never enforced,
    // its verdict is what its rules decide.)
    cand.write("From:other@bad.example REJECT\n", "mode = \"dry-run\"\n");
    let (code, out, err) = d.cmd(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!(
            "; shadow {}: 1 access rules, 0 regex rules",
            cand.path.display()
        )),
        "{out}"
    );
    transaction(&d, "spam@bad.example", "u@example.org");
    let line = decision_line(&d, "spam@bad.example", 2);
    assert!(!line.contains("shadow="), "agrees now: {line}");
    transaction(&d, "other@bad.example", "u@example.org");
    let line = decision_line(&d, "other@bad.example", 1);
    assert!(line.contains(" shadow=reject"), "{line}");

    // A bad candidate: the reload is refused with file:line, both files in force stay.
    std::fs::write(
        &cand.path,
        "[milter]\nhostname = \"mx.example.org\"\nbogus = 1\n",
    )
    .unwrap();
    let (code, out, err) = d.cmd(&["reload"]);
    assert_eq!(code, 1, "{out}{err}");
    let at = format!("{}:3: ", cand.path.display());
    assert!(err.contains(&at) && err.contains("bogus"), "{err}");
    // ... and a SIGHUP that reads it is refused alike.
    d.signal("HUP");
    d.wait_log_count("reload failed, keeping the running configuration", 1);
    transaction(&d, "other@bad.example", "u@example.org");
    let line = decision_line(&d, "other@bad.example", 2);
    assert!(
        line.contains(" shadow=reject"),
        "the old candidate stays: {line}"
    );
    let (r, _) = transaction(&d, "live@bad.example", "u@example.org");
    assert_eq!(
        reply_text(&r),
        "550 5.7.1 Access denied",
        "the live rules stay"
    );
}

#[test]
fn a_bad_candidate_is_refused_at_start_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let dns = TestDnsServer::start_in_thread(TEST_ZONE).unwrap();
    let cand = dir.path().join("candidate.toml");
    std::fs::write(&cand, "[dnsbl]\nthreshold = \"many\"\n").unwrap();
    let config = dir.path().join("milter.toml");
    std::fs::write(
        &config,
        format!(
            "[milter]\nlisten = \"inet:{}@127.0.0.1\"\n[dns]\nnameservers = [\"{}\"]\n\
             [control]\nsocket = \"off\"\n[shadow]\nconfig = \"{}\"\n",
            common::free_port(),
            dns.addr,
            cand.display()
        ),
    )
    .unwrap();
    let at = format!("{}:2: ", cand.display());
    let config = config.to_str().unwrap();
    // A good candidate is named by check-config.
    std::fs::write(&cand, "[greylist]\nenabled = false\n").unwrap();
    let (code, out, err) = mxsentry(&["check-config", "--config", config]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!(
            "{}: OK as shadow candidate (0 access rules, 0 regex rules)",
            cand.display()
        )),
        "{out}"
    );
    std::fs::write(&cand, "[dnsbl]\nthreshold = \"many\"\n").unwrap();
    let (code, _, err) = mxsentry(&["check-config", "--config", config]);
    assert_eq!(code, 1);
    assert!(err.contains(&at), "{err}");
    let (code, _, err) = mxsentry(&["run", "--config", config]);
    assert_ne!(code, 0);
    assert!(err.contains(&at), "{err}");
    // A candidate that is missing is refused too, naming it.
    std::fs::remove_file(&cand).unwrap();
    let (code, _, err) = mxsentry(&["check-config", "--config", config]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("{}: cannot read", cand.display())),
        "{err}"
    );
}

/// The candidate adds a DNS block list the live policy does not use: it looks the client up
/// itself (through the live resolver); a list both use is asked once.
#[test]
fn a_candidate_with_a_block_list_looks_it_up_itself_and_shares_what_both_ask() {
    let zone = format!(
        "{TEST_ZONE}100.2.0.192.in-addr.arpa PTR listed.example\nlisted.example A 192.0.2.100\n\
         100.2.0.192.bl.test A 127.0.0.2\n100.2.0.192.bl2.test A 127.0.0.2\n"
    );
    let cand = Candidate::new("", "[[dnsbl.zones]]\nzone = \"bl.test\"\n");
    let d = Daemon::start_with_zone("", &cand.section(), &zone);
    let listed = |d: &Daemon| {
        let mut c = Client::tcp(d.port);
        c.negotiate();
        c.connect("[192.0.2.100]", "192.0.2.100");
        c.helo("helo.example");
        c.mail("a@sender.example");
        let r = c.rcpt("u@example.org").expect("RCPT answered");
        if r == Reply::Continue {
            c.message();
        }
        r
    };
    assert_eq!(listed(&d), Reply::Continue, "the live policy has no list");
    d.wait_metric(
        "mxsentry_shadow_verdicts_total{live=\"accept\",shadow=\"reject\"}",
        1.0,
    );
    let line = decision_line(&d, "a@sender.example", 1);
    assert!(line.contains(" shadow=reject"), "{line}");
    // A listed client's A, then TXT record: asked once each.
    assert_eq!(d.dns.queries_for("100.2.0.192.bl.test"), 2);
    drop(d);

    // Both use bl2.test (the live one only tags): the candidate decides from the session's
    // lookups, and the list is asked once per client, not twice.
    let lists = "[[dnsbl.zones]]\nzone = \"bl2.test\"\n";
    let cand = Candidate::new("", lists);
    let d = Daemon::start_with_zone(
        "",
        &format!("{}[dnsbl]\naction = \"tag\"\n{lists}", cand.section()),
        &zone,
    );
    d.wait_log("shares_session_lookups=true");
    assert_eq!(listed(&d), Reply::Continue, "the live policy only tags");
    d.wait_metric(
        "mxsentry_shadow_verdicts_total{live=\"accept\",shadow=\"reject\"}",
        1.0,
    );
    assert_eq!(d.dns.queries_for("100.2.0.192.bl2.test"), 2);
}

/// A candidate whose own list never answers: the MTA gets the live verdict at once, and the
/// shadow counts `undecided` instead of holding the reply until its lookups give up.
#[test]
fn a_candidate_waiting_for_its_own_dns_never_holds_the_reply() {
    let zone = format!("{TEST_ZONE}10.2.0.192.slow.test DROP\n");
    // Long timeouts (60 s deadline from CONNECT for the candidate's lookups, 30 s per query):
    // only the shadow's own bound can end its wait here.
    let cand = Candidate::with_dns_timeout("", "[[dnsbl.zones]]\nzone = \"slow.test\"\n", "20s");
    let d = Daemon::start_with_zone(
        "",
        &format!("{}[dns]\ntimeout = \"30s\"\n", cand.section()),
        &zone,
    );
    let (r, eom) = transaction(&d, "a@sender.example", "u@example.org");
    assert_eq!(r, Reply::Continue);
    assert_eq!(eom.last(), Some(&Reply::Accept));
    d.wait_metric(
        "mxsentry_shadow_verdicts_total{live=\"accept\",shadow=\"undecided\"}",
        1.0,
    );
    let line = decision_line(&d, "a@sender.example", 1);
    assert!(line.contains(" shadow=undecided"), "{line}");
}
