//! Decision order tests.

use super::*;

fn policy_with(access: &str, extra_toml: &str) -> Policy {
    let dir = tempfile::tempdir().unwrap();
    let access_path = dir.path().join("access");
    std::fs::write(&access_path, access).unwrap();
    let text = format!(
        "[sender_rules]\naccess_file = {:?}\n{extra_toml}",
        access_path.display().to_string()
    );
    let config = Config::parse(&text, Path::new("test.toml")).unwrap();
    Policy::from_config(&config).unwrap()
}

fn decide(p: &Policy, e: &Envelope<'_>) -> Decision {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(p.decide_recipient(e, None))
}

fn env<'a>(ip: &str, sender: &'a str, rcpt: &'a str) -> Envelope<'a> {
    Envelope {
        client_ip: Some(ip.parse().unwrap()),
        client_name: "[192.0.2.10]",
        helo: "helo.test",
        sender,
        recipient: rcpt,
        authenticated: false,
    }
}

const ACCESS: &str = "From:reject.example REJECT\nFrom:discard.example DISCARD\n\
    From:banned.example ERROR:\"550 Sender banned. Please use legitimate domain\"\n\
    From:later.example ERROR:4.7.1:\"451 Later\"\nFrom:friend.example OK\n\
    Connect:192.0.2.66 REJECT\nTo:blocked@example.org REJECT\n";

#[test]
fn decision_order() {
    let p = policy_with(ACCESS, "");
    let d = decide(&p, &env("192.0.2.10", "a@reject.example", "u@example.org"));
    assert_eq!(d.verdict.name(), "reject");
    assert_eq!(
        d.verdict.reply().unwrap().to_string(),
        "550 5.7.1 Access denied"
    );
    // postmaster exemption beats the sender rule
    let d = decide(
        &p,
        &env("192.0.2.10", "a@reject.example", "Postmaster@example.org"),
    );
    assert_eq!(d.verdict, Verdict::Continue);
    assert_eq!(d.findings[0].check, "exemption");
    // trusted network beats everything
    let d = decide(&p, &env("127.0.0.1", "a@reject.example", "u@example.org"));
    assert_eq!(d.verdict, Verdict::Accept);
    let d = decide(&p, &env("192.0.2.10", "a@discard.example", "u@example.org"));
    assert_eq!(d.verdict, Verdict::Discard);
    let d = decide(&p, &env("192.0.2.10", "x@banned.example", "u@example.org"));
    assert_eq!(
        d.verdict.reply().unwrap().to_string(),
        "550 Sender banned. Please use legitimate domain"
    );
    let d = decide(&p, &env("192.0.2.10", "x@later.example", "u@example.org"));
    assert_eq!(d.verdict.name(), "tempfail");
    let d = decide(&p, &env("192.0.2.66", "x@friend.example", "u@example.org"));
    assert_eq!(d.verdict.name(), "reject", "Connect: is looked up first");
    let d = decide(
        &p,
        &env("192.0.2.10", "x@ok.example", "blocked@example.org"),
    );
    assert_eq!(d.verdict.name(), "reject");
    let d = decide(&p, &env("192.0.2.10", "x@ok.example", "u@example.org"));
    assert_eq!(d.verdict, Verdict::Continue);
    // only greylisting (on by default; no store in a unit test) has something to say
    assert!(
        d.findings.iter().all(|f| f.check == "greylist"),
        "{:?}",
        d.findings
    );
}

#[test]
fn authenticated_clients_are_trusted_when_configured() {
    let p = policy_with(ACCESS, "");
    let mut e = env("192.0.2.10", "a@reject.example", "u@example.org");
    e.authenticated = true;
    assert_eq!(decide(&p, &e).verdict, Verdict::Accept);
    let p = policy_with(ACCESS, "[trusted]\nauthenticated = false\n");
    assert_eq!(decide(&p, &e).verdict.name(), "reject");
}

#[test]
fn regex_rules_match_the_sender() {
    let p = policy_with(
        "",
        "[[sender_rules.regex]]\npattern = '^[^@]+@(emalsrv|complains)\\.'\naction = 'ERROR:\"550 5.7.1 Sender banned\"'\n",
    );
    let d = decide(
        &p,
        &env("192.0.2.10", "bounce@emalsrv.example.com", "u@example.org"),
    );
    assert_eq!(
        d.verdict.reply().unwrap().to_string(),
        "550 5.7.1 Sender banned"
    );
}

#[test]
fn dry_run_never_blocks_but_remembers() {
    let p = policy_with(ACCESS, "[milter]\nmode = \"dry-run\"\n");
    let d = decide(&p, &env("192.0.2.10", "a@reject.example", "u@example.org"));
    assert_eq!(d.verdict, Verdict::Continue);
    assert_eq!(d.would.unwrap().name(), "reject");
}

/// The case: `From:friend OK` must not override `To:` entries for a recipient.
const FRIEND: &str = "From:friend@yourdomain.org OK\n\
    To:gone@example.org ERROR:5.1.1:\"550 User unknown\"\n\
    To:spamtrap@example.org DISCARD\n\
    Connect:192.0.2.77 OK\nFrom:spammer.example REJECT\n\
    To:vip@example.org OK\n";

#[test]
fn to_entries_apply_whatever_the_client_or_sender_rules_said() {
    let p = policy_with(FRIEND, "");
    let d = decide(
        &p,
        &env("192.0.2.10", "friend@yourdomain.org", "gone@example.org"),
    );
    assert_eq!(
        d.verdict.reply().unwrap().to_string(),
        "550 5.1.1 User unknown"
    );
    assert_eq!(
        d.cause,
        "sender_rules=access:2 To:gone@example.org ERROR:5.1.1:\"550 User unknown\""
    );
    let d = decide(
        &p,
        &env(
            "192.0.2.10",
            "friend@yourdomain.org",
            "spamtrap@example.org",
        ),
    );
    assert_eq!(d.verdict, Verdict::Discard);
    // The sender's OK still covers the other recipients: no DNS checks, no greylisting. It is
    // answered CONTINUE, not ACCEPT: ACCEPT would end the MTA's checks for later recipients.
    let d = decide(
        &p,
        &env("192.0.2.10", "friend@yourdomain.org", "u@example.org"),
    );
    assert_eq!(d.verdict, Verdict::Continue);
    assert_eq!(d.findings.len(), 1, "{:?}", d.findings);
    assert_eq!(d.findings[0].outcome, "ok");
    // A client's OK does not override the sender's entry either (sendmail: check_mail runs
    // whatever check_relay said), nor a recipient's.
    let d = decide(&p, &env("192.0.2.77", "x@spammer.example", "u@example.org"));
    assert_eq!(d.verdict.name(), "reject");
    let d = decide(
        &p,
        &env("192.0.2.77", "x@other.example", "gone@example.org"),
    );
    assert_eq!(d.verdict.name(), "reject");
    let d = decide(&p, &env("192.0.2.77", "x@other.example", "u@example.org"));
    assert_eq!(d.verdict, Verdict::Continue);
    assert!(d.findings.iter().all(|f| f.check == "sender_rules"));
    // A recipient's OK covers that recipient only: CONTINUE, and no greylisting.
    let d = decide(&p, &env("192.0.2.10", "x@other.example", "vip@example.org"));
    assert_eq!(d.verdict, Verdict::Continue);
    assert_eq!(d.cause, "sender_rules=access:6 To:vip@example.org OK");
    assert!(d.findings.iter().all(|f| f.check == "sender_rules"));
    // ... while a recipient's refusal beats a sender's OK also in dry-run (noted, not enforced).
    let p = policy_with(FRIEND, "[milter]\nmode = \"dry-run\"\n");
    let d = decide(
        &p,
        &env("192.0.2.10", "friend@yourdomain.org", "gone@example.org"),
    );
    assert_eq!(d.verdict, Verdict::Continue);
    assert_eq!(d.would.unwrap().name(), "reject");
}

#[test]
fn an_ok_is_answered_accept_only_when_no_recipient_rule_could_refuse_later() {
    // Without To: (or untagged) entries nothing can change for a later recipient: ACCEPT lets
    // the MTA skip asking about them.
    let p = policy_with("From:friend@yourdomain.org OK\nConnect:192.0.2.77 OK\n", "");
    let d = decide(
        &p,
        &env("192.0.2.10", "friend@yourdomain.org", "u@example.org"),
    );
    assert_eq!(d.verdict, Verdict::Accept);
    let d = decide(&p, &env("192.0.2.77", "x@other.example", "u@example.org"));
    assert_eq!(d.verdict, Verdict::Accept);
    // An untagged entry applies to recipients too.
    let p = policy_with("From:friend@yourdomain.org OK\nexample.net REJECT\n", "");
    let d = decide(
        &p,
        &env("192.0.2.10", "friend@yourdomain.org", "u@example.org"),
    );
    assert_eq!(d.verdict, Verdict::Continue);
    let d = decide(
        &p,
        &env("192.0.2.10", "friend@yourdomain.org", "u@example.net"),
    );
    assert_eq!(d.verdict.name(), "reject");
}

#[test]
fn rendered_replies_stay_one_smtp_line() {
    // Found by fuzz/fuzz_targets/dns_reply.rs: a template of 490 characters plus a long PTR
    // name, HELO or TXT text gave a reply longer than SMTP allows; it is cut, class kept.
    let long = format!("550 5.7.1 {} {{helo}}", "x".repeat(470));
    let r = outcome::render_helo(&long, &"h".repeat(100));
    assert_eq!((r.code, r.enhanced.as_deref()), (550, Some("5.7.1")));
    assert_eq!(r.to_string().len(), 510);
    let r = outcome::parse_reply(&format!("451 {}", "é".repeat(300)));
    assert_eq!(r.code, 451);
    assert!(r.to_string().len() <= 510);
}

#[test]
fn greylist_allow_lists_skip_greylisting_only() {
    let dir = tempfile::tempdir().unwrap();
    let clients = dir.path().join("clients");
    std::fs::write(&clients, "# ours\n192.0.2.0/28\n").unwrap();
    let rcpts = dir.path().join("rcpts");
    std::fs::write(&rcpts, "hostmaster@\n").unwrap();
    let p = policy_with(
        ACCESS,
        &format!(
            "[greylist]\nallow_client_files = [{:?}]\nallow_recipient_files = [{:?}]\n",
            clients.display().to_string(),
            rcpts.display().to_string()
        ),
    );
    assert_eq!(p.greylist_allow_entries(), 2);
    let greylist = |d: &Decision| {
        d.findings
            .iter()
            .filter(|f| f.check == "greylist")
            .map(|f| format!("{} {}", f.outcome, f.detail))
            .collect::<Vec<_>>()
    };
    let d = decide(&p, &env("192.0.2.10", "x@ok.example", "u@example.org"));
    assert_eq!(d.verdict, Verdict::Continue);
    assert_eq!(
        greylist(&d),
        [format!(
            "allowed greylisting skipped: client 192.0.2.10 in allow list {}:2 (192.0.2.0/28)",
            clients.display()
        )]
    );
    // an unlisted client is greylisted (no store here: "not_checked")
    let d = decide(&p, &env("192.0.2.20", "x@ok.example", "u@example.org"));
    assert_eq!(greylist(&d)[0].split(' ').next(), Some("not_checked"));
    // a listed recipient, from any client
    let d = decide(
        &p,
        &env("192.0.2.20", "x@ok.example", "HostMaster@example.org"),
    );
    assert_eq!(
        greylist(&d),
        [format!(
            "allowed greylisting skipped: recipient <HostMaster@example.org> in allow list {}:1 (hostmaster@)",
            rcpts.display()
        )]
    );
    // every other check still applies to a listed client
    let d = decide(&p, &env("192.0.2.10", "a@reject.example", "u@example.org"));
    assert_eq!(d.verdict.name(), "reject");
    // a bad line refuses the whole policy, with file and line
    std::fs::write(&clients, "192.0.2.0/28\n\n192.0.2\n").unwrap();
    let config = Config::parse(
        &format!(
            "[greylist]\nallow_client_files = [{:?}]\n",
            clients.display().to_string()
        ),
        Path::new("test.toml"),
    )
    .unwrap();
    let e = Policy::from_config(&config).err().unwrap();
    assert!(
        e.starts_with(&format!("{}:3: `192.0.2`", clients.display())),
        "{e}"
    );
}

#[test]
fn every_verdict_path_carries_its_reason_code() {
    let p = policy_with(ACCESS, "[greylist]\nenabled = false\n");
    let code = |ip: &str, from: &str, rcpt: &str| {
        let d = decide(&p, &env(ip, from, rcpt));
        (
            d.verdict.name(),
            d.reason.as_str(),
            d.enforced_reason().as_str(),
        )
    };
    let cases = [
        (
            "127.0.0.1",
            "a@reject.example",
            "u@example.org",
            "accept",
            "trusted.network",
        ),
        (
            "192.0.2.10",
            "a@reject.example",
            "postmaster@example.org",
            "accept",
            "exempt.recipient",
        ),
        (
            "192.0.2.10",
            "a@reject.example",
            "u@example.org",
            "reject",
            "sender_rules.reject",
        ),
        (
            "192.0.2.10",
            "a@discard.example",
            "u@example.org",
            "discard",
            "sender_rules.discard",
        ),
        (
            "192.0.2.10",
            "a@banned.example",
            "u@example.org",
            "reject",
            "sender_rules.error",
        ),
        (
            "192.0.2.10",
            "a@later.example",
            "u@example.org",
            "tempfail",
            "sender_rules.error_temp",
        ),
        (
            "192.0.2.10",
            "a@friend.example",
            "u@example.org",
            "accept",
            "sender_rules.ok",
        ),
        (
            "192.0.2.10",
            "a@fine.example",
            "u@example.org",
            "accept",
            "none",
        ),
    ];
    for (ip, from, rcpt, verdict, reason) in cases {
        assert_eq!(
            code(ip, from, rcpt),
            (verdict, reason, reason),
            "{from} {rcpt}"
        );
    }
    // An authenticated client.
    let mut e = env("192.0.2.10", "a@reject.example", "u@example.org");
    e.authenticated = true;
    assert_eq!(decide(&p, &e).reason.as_str(), "trusted.auth");
    // HELO: the code of the problem, in the cause and in a tag.
    let p = policy_with(
        "",
        "[greylist]\nenabled = false\n[helo]\naction = \"tag\"\n",
    );
    let mut e = env("192.0.2.10", "a@fine.example", "u@example.org");
    e.helo = "localhost";
    let d = decide(&p, &e);
    assert_eq!(d.tags, ["helo=unqualified reason=helo.unqualified"]);
    assert_eq!(d.reason.as_str(), "none");
    // Dry-run: the enforced accept is `dry_run`; the cause is kept for the would-be verdict.
    let p = policy_with(ACCESS, "[milter]\nmode = \"dry-run\"\n");
    let d = decide(&p, &env("192.0.2.10", "a@reject.example", "u@example.org"));
    assert_eq!(d.verdict, Verdict::Continue);
    assert_eq!(d.would.as_ref().map(Verdict::name), Some("reject"));
    assert_eq!(d.reason.as_str(), "sender_rules.reject");
    assert_eq!(d.enforced_reason().as_str(), "dry_run");
}
