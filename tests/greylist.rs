//! Greylisting through the real daemon with the embedded store: the 450 an SMTP client sees,
//! the retry that passes with an X-Greylist header, the autowhitelist, the exemptions, and
//! entries that survive a restart.

mod common;

use std::time::Duration;

use common::{reply_text, transaction, Client, Daemon};
use mxsentry::protocol::reply::Reply;

const GREYLIST: &str = "[greylist]\nenabled = true\ndelay = \"2s\"\nretry_window = \"1h\"\n\
    autowhite = \"1d\"\nclient_autowhite_after = 0\ncommit_interval = \"200ms\"\n";

#[test]
fn greylist_lifecycle_and_persistence() {
    let mut d = Daemon::start("", GREYLIST);
    let (r, _) = transaction(&d, "news@sender.example", "u@example.org");
    assert_eq!(
        reply_text(&r),
        "450 4.7.1 Greylisted, try again in 2 seconds"
    );
    // an early retry is refused again, without resetting the clock
    let (r, _) = transaction(&d, "news@sender.example", "u@example.org");
    let text = reply_text(&r);
    assert!(
        text.starts_with("450 4.7.1 Greylisted, try again in "),
        "{text}"
    );
    // postmaster@ is never greylisted
    let (r, _) = transaction(&d, "news@sender.example", "postmaster@example.org");
    assert_eq!(r, Reply::Continue);

    std::thread::sleep(Duration::from_millis(2300));
    let (r, eom) = transaction(&d, "news@sender.example", "u@example.org");
    assert_eq!(r, Reply::Continue, "retry after the delay passes");
    let header = eom.iter().find_map(|r| match r {
        Reply::AddHeader { name, value } if &name[..] == b"X-Greylist" => {
            Some(String::from_utf8_lossy(value).into_owned())
        }
        _ => None,
    });
    let header = header.expect("X-Greylist added");
    assert!(
        header.starts_with("delayed ") && header.contains(" seconds by mxsentry-0.1.0; "),
        "{header}"
    );
    // autowhitelisted: no delay, no header
    let (r, eom) = transaction(&d, "news@sender.example", "u@example.org");
    assert_eq!(r, Reply::Continue);
    assert_eq!(eom, vec![Reply::Accept]);
    d.wait_log("greylist.new");

    // SIGTERM flushes the store; the autowhitelisted triplet is still known after a restart
    d.restart();
    let (r, _) = transaction(&d, "news@sender.example", "u@example.org");
    assert_eq!(r, Reply::Continue, "{}", d.log());
    // and an unknown one is greylisted as before
    let (r, _) = transaction(&d, "other@sender.example", "u@example.org");
    assert!(reply_text(&r).starts_with("450 4.7.1 Greylisted"));
}

#[test]
fn dry_run_greylisting_tags_instead_of_refusing() {
    let d = Daemon::start("", &format!("mode = \"dry-run\"\n{GREYLIST}"));
    let (r, eom) = transaction(&d, "news@sender.example", "u@example.org");
    assert_eq!(r, Reply::Continue);
    let tagged = eom.iter().any(|r| {
        matches!(r, Reply::AddHeader { name, value }
            if &name[..] == b"X-Mxsentry" && String::from_utf8_lossy(value).contains("would-greylist"))
    });
    assert!(tagged, "{eom:?}");
}

#[test]
fn selective_greylisting_only_for_selected_clients() {
    // greylisting off for everyone; clients with dynamic-looking rDNS are selected
    let zone = "\
10.2.0.192.in-addr.arpa PTR mail.good.test
mail.good.test A 192.0.2.10
60.2.0.192.in-addr.arpa PTR 192-0-2-60.dyn.isp.test
192-0-2-60.dyn.isp.test A 192.0.2.60
";
    let d = Daemon::start_with_zone(
        "",
        &GREYLIST.replace("enabled = true", "enabled = false"),
        zone,
    );
    let run = |ip: &str| {
        let mut c = Client::tcp(d.port);
        c.negotiate();
        c.connect("[x]", ip);
        c.helo("helo.example");
        c.mail("a@sender.example");
        c.rcpt("u@example.org").unwrap()
    };
    assert_eq!(run("192.0.2.10"), Reply::Continue);
    assert!(reply_text(&run("192.0.2.60")).starts_with("450 4.7.1 Greylisted"));
}

fn cli(d: &Daemon, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mxsentry"))
        .arg("greylist")
        .args(args)
        .arg("--config")
        .arg(&d.config_path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn admin_commands_list_add_del_purge() {
    let mut d = Daemon::start("", GREYLIST);
    let (r, _) = transaction(&d, "news@sender.example", "u@example.org");
    assert!(reply_text(&r).starts_with("450 "));
    // the running daemon holds the embedded store: the command goes through its control
    // socket (tests/control.rs has the rest of that story)
    let (ok, text) = cli(&d, &["list"]);
    assert!(ok && text.contains("(via the running daemon)"), "{text}");
    assert!(
        text.contains("|news@sender.example|u@example.org  greylisted"),
        "{text}"
    );
    d.signal("TERM");
    assert!(d.wait_exit(Duration::from_secs(30)).unwrap().success());

    let (ok, text) = cli(&d, &["list", "--prefix", "t:"]);
    assert!(ok, "{text}");
    // 192.0.2.10 is FCrDNS-verified as client.example: keyed by its rDNS pool, not the /24
    assert!(
        text.contains("t:pool:client.example|news@sender.example|u@example.org  greylisted"),
        "{text}"
    );
    let pass = [
        "--client-ip",
        "192.0.2.10",
        "--client-name",
        "client.example",
        "--from",
        "boss@partner.example",
        "--rcpt",
        "ceo@example.org",
    ];
    let (ok, text) = cli(&d, &[&["add"][..], &pass[..]].concat());
    assert!(ok && text.contains("whitelisted"), "{text}");
    let (_, text) = cli(&d, &["list"]);
    assert!(
        text.contains("boss@partner.example|ceo@example.org  whitelisted"),
        "{text}"
    );
    let (ok, text) = cli(&d, &[&["del"][..], &pass[..]].concat());
    assert!(ok && text.contains("deleted"), "{text}");
    let (ok, text) = cli(&d, &["purge"]);
    assert!(ok && text.contains("purged 0 expired entries"), "{text}");

    // the added whitelist works for the daemon: add again, restart, no greylisting
    cli(&d, &[&["add"][..], &pass[..]].concat());
    d.restart_stopped();
    let mut c = Client::tcp(d.port);
    c.negotiate();
    c.connect("x", "192.0.2.10");
    c.helo("helo.example");
    c.mail("boss@partner.example");
    assert_eq!(c.rcpt("ceo@example.org"), Some(Reply::Continue));
}

/// The daemon allocates with jemalloc and its settings reach it (`malloc_conf`, exported by
/// src/main.rs): its background thread, which gives the store's freed memtables back to the
/// kernel, shows among the daemon's threads (`ps -L`). Without the settings there is no such
/// thread and the RSS of a 10M store after churn is ~380 MB instead of ~140 (docs/performance.md).
#[test]
fn the_daemon_returns_free_memory_from_jemallocs_background_thread() {
    let d = Daemon::start("", GREYLIST);
    let threads = || -> Vec<String> {
        std::fs::read_dir(format!("/proc/{}/task", d.pid()))
            .map(|tasks| {
                tasks
                    .flatten()
                    .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                    .map(|name| name.trim().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut names = threads();
    while !names.iter().any(|n| n == "jemalloc_bg_thd") {
        assert!(
            std::time::Instant::now() < deadline,
            "no jemalloc background thread in the daemon: {names:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
        names = threads();
    }
}
