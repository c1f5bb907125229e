//! Greylist-only allow lists through the real daemon and the loopback DNS server: listed
//! clients (address, network, verified name), senders and recipients are accepted at once
//! while everyone else gets the 450; a forged PTR name does not count; the other checks still
//! refuse a listed client; SIGHUP reloads the files and a bad file keeps the old ones.

mod common;

use std::path::{Path, PathBuf};

use common::{reply_text, Client, Daemon};
use mxsentry::protocol::command::Command;
use mxsentry::protocol::reply::Reply;

/// Greylisting for everyone, with a delay no test waits out; the rDNS checks are off so a
/// forged or missing PTR record changes nothing but the allow list's view.
const GREYLIST: &str = "[greylist]\nenabled = true\ndelay = \"1h\"\nretry_window = \"2h\"\n\
    client_autowhite_after = 0\n";
const RDNS_OFF: &str = "[rdns]\nno_ptr = \"off\"\nforged = \"off\"\ndynamic = \"off\"\n";

const ZONE: &str = "\
30.2.0.192.in-addr.arpa PTR mta1.provider.test
mta1.provider.test A 192.0.2.30
31.2.0.192.in-addr.arpa PTR mta2.provider.test
mta2.provider.test A 192.0.2.99
32.2.0.192.in-addr.arpa PTR Relay7.Pool.Mailer.test
relay7.pool.mailer.test A 192.0.2.32
41.2.0.192.bl.test A 127.0.0.2
";

const CLIENTS: &str = "\
# test clients
192.0.2.40
198.51.100.0/24   # a provider's network
2001:db8:77::/48
192.0.2.41        # also on bl.test
provider.test
/^relay[0-9]+\\.pool\\.mailer\\.test$/
";

const GREYLISTED: &str = "450 4.7.1 Greylisted, try again in 3600 seconds";

struct Setup {
    d: Daemon,
    files: tempfile::TempDir,
}

impl Setup {
    fn start(extra: &str) -> Setup {
        let files = tempfile::tempdir().unwrap();
        std::fs::write(files.path().join("clients"), CLIENTS).unwrap();
        std::fs::write(files.path().join("senders"), "friend@partner.test\n").unwrap();
        std::fs::write(files.path().join("rcpts"), "# never delayed\nlist-admin@\n").unwrap();
        let path = |n: &str| format!("{:?}", files.path().join(n).display().to_string());
        let config = GREYLIST.to_string()
            + &format!(
                "allow_client_files = [{}]\nallow_sender_files = [{}]\nallow_recipient_files = [{}]\n",
                path("clients"),
                path("senders"),
                path("rcpts")
            )
            + RDNS_OFF
            + extra;
        let d = Daemon::start_with_zone("", &config, ZONE);
        Setup { d, files }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.files.path().join(name)
    }
}

/// A session from `ip` (CONNECT host name and HELO `name`): for each (sender, recipients) a
/// message; the RCPT replies in order. Accepted messages are sent to the end (so their
/// decision line is logged); others are aborted.
fn session(d: &Daemon, ip: &str, name: &str, messages: &[(&str, &[&str])]) -> Vec<String> {
    let mut c = Client::tcp(d.port);
    c.negotiate();
    c.connect(name, ip);
    c.helo(name);
    let mut replies = Vec::new();
    for (from, rcpts) in messages {
        c.mail(from);
        let mut accepted = false;
        for rcpt in *rcpts {
            let r = c.rcpt(rcpt).expect("RCPT answered");
            accepted |= r == Reply::Continue;
            replies.push(if r == Reply::Continue {
                "continue".to_string()
            } else {
                reply_text(&r)
            });
        }
        if accepted {
            c.message();
        } else {
            c.send(&Command::Abort);
        }
    }
    c.send(&Command::Quit);
    replies
}

fn one(d: &Daemon, ip: &str, from: &str, rcpt: &str) -> String {
    session(d, ip, "helo.example", &[(from, &[rcpt])]).remove(0)
}

fn skipped_client(file: &Path, line: u32, entry: &str, who: &str) -> String {
    format!(
        "greylist.allowed(greylisting skipped: client {who} in allow list {}:{line} ({entry}))",
        file.display()
    )
}

#[test]
fn listed_clients_skip_greylisting_and_others_do_not() {
    let s = Setup::start("");
    let d = &s.d;
    let clients = s.file("clients");
    // unlisted: greylisted (each greylisted triplet below is new: a 450 for the whole delay)
    assert_eq!(
        one(d, "192.0.2.50", "a@sender.test", "u@example.org"),
        GREYLISTED
    );
    // an address, a network, an IPv6 network: every triplet of the session passes at once
    assert_eq!(
        session(
            d,
            "192.0.2.40",
            "helo.example",
            &[("a@sender.test", &["u@example.org", "v@example.org"])]
        ),
        ["continue", "continue"]
    );
    assert_eq!(
        one(d, "198.51.100.7", "a@sender.test", "u@example.org"),
        "continue"
    );
    assert_eq!(
        one(d, "2001:db8:77:1::25", "a@sender.test", "u@example.org"),
        "continue"
    );
    assert_eq!(
        one(d, "2001:db8:78::25", "a@sender.test", "u@example.org"),
        GREYLISTED
    );
    // FCrDNS-verified names: by domain suffix and by regex (case-insensitive)
    assert_eq!(
        one(d, "192.0.2.30", "a@sender.test", "u@example.org"),
        "continue"
    );
    assert_eq!(
        one(d, "192.0.2.32", "a@sender.test", "u@example.org"),
        "continue"
    );
    // a PTR name that does not resolve back (forged) is no verified name; neither the name
    // the MTA passes at CONNECT nor the HELO counts
    assert_eq!(
        session(
            d,
            "192.0.2.31",
            "mta2.provider.test",
            &[("forged@sender.test", &["u@example.org"])]
        ),
        [GREYLISTED]
    );
    let log = d.wait_log("client_ip=198.51.100.7");
    assert!(
        log.contains(&skipped_client(
            &clients,
            3,
            "198.51.100.0/24",
            "198.51.100.7"
        )),
        "{log}"
    );
    let log = d.wait_log("client_ip=192.0.2.30");
    assert!(
        log.contains(&skipped_client(
            &clients,
            6,
            "provider.test",
            "192.0.2.30 (mta1.provider.test)"
        )),
        "{log}"
    );
    let log = d.wait_log("client_ip=192.0.2.32");
    assert!(
        log.contains(&format!("{}:7 (/^relay", clients.display())),
        "{log}"
    );
    // counted: 2 + 1 + 1 + 1 + 1 recipients
    d.wait_metric(
        "mxsentry_findings_total{check=\"greylist\",outcome=\"allowed\"}",
        6.0,
    );
}

#[test]
fn a_name_the_mta_verified_counts() {
    let s = Setup::start("");
    // no PTR record for 192.0.2.45: Postfix's {client_name} is its own verified name
    let mut c = Client::tcp(s.d.port);
    c.negotiate();
    c.connect_with_macros(
        "mta9.provider.test",
        "192.0.2.45",
        &[
            ("v", "Postfix 3.7.11"),
            ("{client_name}", "mta9.provider.test"),
        ],
    );
    c.helo("mta9.provider.test");
    c.mail("a@sender.test");
    assert_eq!(c.rcpt("u@example.org"), Some(Reply::Continue));
    // Postfix's "unknown": not verified
    let mut c = Client::tcp(s.d.port);
    c.negotiate();
    c.connect_with_macros(
        "unknown",
        "192.0.2.46",
        &[("v", "Postfix 3.7.11"), ("{client_name}", "unknown")],
    );
    c.helo("mta9.provider.test");
    c.mail("a@sender.test");
    assert_eq!(reply_text(&c.rcpt("u@example.org").unwrap()), GREYLISTED);
}

#[test]
fn listed_senders_and_recipients_skip_greylisting_in_the_same_session() {
    let s = Setup::start("");
    let d = &s.d;
    let replies = session(
        d,
        "192.0.2.50",
        "helo.example",
        &[
            ("Friend@Partner.test", &["u@example.org"]),
            (
                "other@partner.test",
                &["u@example.org", "List-Admin@example.org"],
            ),
        ],
    );
    assert_eq!(replies, ["continue", GREYLISTED, "continue"]);
    let log = d.wait_log("rcpt=<List-Admin@example.org>");
    assert!(
        log.contains(&format!(
            "greylisting skipped: recipient <List-Admin@example.org> in allow list {}:2 (list-admin@)",
            s.file("rcpts").display()
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "greylisting skipped: sender <Friend@Partner.test> in allow list {}:1 (friend@partner.test)",
            s.file("senders").display()
        )),
        "{log}"
    );
}

#[test]
fn other_checks_still_refuse_a_listed_client() {
    let s = Setup::start("[[dnsbl.zones]]\nzone = \"bl.test\"\n");
    let r = one(&s.d, "192.0.2.41", "a@sender.test", "u@example.org");
    assert!(r.starts_with("550 "), "{r}");
    // and explain shows the skip for a listed client that nothing refuses
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mxsentry"))
        .args(["explain", "--config"])
        .arg(&s.d.config_path)
        .args(["--client-ip", "192.0.2.30", "--from", "a@sender.test"])
        .args(["--rcpt", "u@example.org"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "greylist.allowed           greylisting skipped: client 192.0.2.30 \
             (mta1.provider.test) in allow list {}:6 (provider.test)",
            s.file("clients").display()
        )),
        "{text}"
    );
    assert!(text.contains("verdict: accept"), "{text}");
}

#[test]
fn sighup_reloads_the_files_and_a_bad_file_keeps_the_old_lists() {
    let s = Setup::start("");
    let d = &s.d;
    let clients = s.file("clients");
    assert_eq!(
        one(d, "192.0.2.42", "a@sender.test", "u@example.org"),
        GREYLISTED
    );
    std::fs::write(&clients, format!("{CLIENTS}192.0.2.42\n")).unwrap();
    d.signal("HUP");
    d.wait_log("configuration reloaded");
    assert_eq!(
        one(d, "192.0.2.42", "b@sender.test", "u@example.org"),
        "continue"
    );

    // a bad line: the reload is refused with file:line, the running lists stay
    std::fs::write(&clients, "192.0.2.42\n\n192.0.2.0/40\n").unwrap();
    d.signal("HUP");
    let log = d.wait_log("reload failed");
    assert!(
        log.contains(&format!(
            "{}:3: `192.0.2.0/40`: not a network",
            clients.display()
        )),
        "{log}"
    );
    d.wait_metric("mxsentry_config_reloads_total{result=\"failure\"}", 1.0);
    assert_eq!(
        one(d, "192.0.2.42", "c@sender.test", "u@example.org"),
        "continue"
    );
    assert_eq!(
        one(d, "198.51.100.7", "c@sender.test", "u@example.org"),
        "continue"
    );

    // a missing file: refused the same way
    std::fs::remove_file(s.file("senders")).unwrap();
    d.signal("HUP");
    d.wait_log_count("reload failed", 2);
    assert!(
        d.log()
            .contains(&format!("{}: cannot read", s.file("senders").display())),
        "{}",
        d.log()
    );
    assert_eq!(
        one(d, "192.0.2.50", "friend@partner.test", "u@example.org"),
        "continue"
    );
}

#[test]
fn check_config_refuses_a_bad_or_missing_allow_file() {
    let dir = tempfile::tempdir().unwrap();
    let clients = dir.path().join("clients");
    std::fs::write(&clients, "mail.example.com\nexample.com more\n").unwrap();
    let config = dir.path().join("milter.toml");
    let check = |files: &str| {
        std::fs::write(
            &config,
            format!("[milter]\nhostname = \"mx.example.org\"\n[greylist]\nallow_client_files = [{files}]\n"),
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mxsentry"))
            .arg("check-config")
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let quoted = |p: &Path| format!("{:?}", p.display().to_string());
    let (code, _, err) = check(&quoted(&clients));
    assert_eq!(code, Some(1));
    assert_eq!(
        err.trim(),
        format!(
            "{}:2: one entry per line: `more` follows `example.com` (a comment starts with ` #`)",
            clients.display()
        )
    );
    let missing = dir.path().join("missing");
    let (code, _, err) = check(&quoted(&missing));
    assert_eq!(code, Some(1));
    assert!(
        err.starts_with(&format!("{}: cannot read: ", missing.display())),
        "{err}"
    );
    std::fs::write(&clients, "mail.example.com\nexample.com # more\n").unwrap();
    let (code, out, _) = check(&quoted(&clients));
    assert_eq!(code, Some(0));
    assert!(
        out.ends_with("OK (0 access rules, 0 regex rules, 2 greylist allow entries)\n"),
        "{out}"
    );
}
