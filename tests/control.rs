//! Live administration through the control socket, against the real daemon: greylist
//! list/add/del/purge while the daemon holds the embedded store, the same commands on the
//! stopped store, `status`, `reload` good and bad, permanent entries, `explain` reading the
//! daemon's state, hostile control clients, the socket's mode, and a daemon whose control
//! socket cannot be created still serving mail.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{mxsentry, reply_text, transaction, Daemon};
use mxsentry::protocol::reply::Reply;

/// Greylisting for everyone; keys by network (192.0.2.0/24), not by rDNS pool, so the
/// commands' `--client-ip` names the key the sessions use.
const GREYLIST: &str = "[greylist]\nenabled = true\ndelay = \"1h\"\nretry_window = \"2d\"\n\
    autowhite = \"1d\"\nclient_autowhite_after = 0\npool_by_rdns = false\n";

const FROM: &str = "news@sender.example";
const RCPT: &str = "u@example.org";

fn triplet(verb: &str) -> Vec<&str> {
    vec![
        "greylist",
        verb,
        "--client-ip",
        "192.0.2.10",
        "--from",
        FROM,
        "--rcpt",
        RCPT,
    ]
}

fn control_socket(d: &Daemon) -> PathBuf {
    d.config_dir().join("control.sock")
}

fn greylisted(d: &Daemon) -> bool {
    let (r, _) = transaction(d, FROM, RCPT);
    if r == Reply::Continue {
        return false;
    }
    let text = reply_text(&r);
    assert!(text.starts_with("450 4.7.1 Greylisted"), "{text}");
    true
}

const KEY: &str = "t:192.0.2.0/24|news@sender.example|u@example.org";

#[test]
fn greylist_commands_go_through_the_running_daemon() {
    let d = Daemon::start("", GREYLIST);
    assert!(greylisted(&d), "a new triplet is greylisted");

    // list: the daemon holds the store, and the command sees the session's entry in it
    let (code, out, err) = d.cmd(&["greylist", "list"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("(via the running daemon)"), "{err}");
    assert!(
        out.contains(&format!("{KEY}  greylisted  passed=0 blocked=1")),
        "{out}"
    );
    assert!(out.ends_with("1 entries\n"), "{out}");

    // add: whitelisted at once for the sessions (no restart, no reload)
    let (code, out, err) = d.cmd(&triplet("add"));
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("(via the running daemon)"), "{err}");
    assert!(
        out.starts_with(&format!("added {KEY}: whitelisted until ")),
        "{out}"
    );
    assert!(out.contains("(greylist.autowhite = 1d;"), "{out}");
    assert!(!greylisted(&d), "added through the daemon: accepted");

    // del: greylisted again
    let (code, out, err) = d.cmd(&triplet("del"));
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, format!("deleted {KEY}\n"));
    let (_, out, _) = d.cmd(&triplet("del"));
    assert_eq!(out, format!("no entry {KEY}\n"));
    assert!(
        greylisted(&d),
        "deleted through the daemon: greylisted again"
    );

    // purge runs in the daemon and leaves live entries
    let (code, out, err) = d.cmd(&["greylist", "purge"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, "purged 0 expired entries\n");
    let (_, out, _) = d.cmd(&["greylist", "list"]);
    assert!(out.ends_with("1 entries\n"), "{out}");

    // every request was counted
    assert!(d.metric("mxsentry_control_requests_total{op=\"list\",result=\"ok\"}") >= 2.0);
    assert!(d.metric("mxsentry_control_requests_total{op=\"put\",result=\"ok\"}") >= 1.0);
    assert!(d.metric("mxsentry_control_requests_total{op=\"delete\",result=\"ok\"}") >= 2.0);
    assert!(d.metric("mxsentry_control_requests_total{op=\"purge\",result=\"ok\"}") >= 1.0);
}

#[test]
fn permanent_entries_never_expire_and_purge_leaves_them() {
    let d = Daemon::start("", GREYLIST);
    let mut args = triplet("add");
    args.push("--permanent");
    let (code, out, err) = d.cmd(&args);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out,
        format!("added {KEY}: whitelisted permanently (until `mxsentry greylist del`)\n")
    );
    assert!(!greylisted(&d), "permanently whitelisted: accepted");
    assert!(!greylisted(&d), "and still after a delivery refreshed it");
    let (_, out, _) = d.cmd(&["greylist", "purge"]);
    assert_eq!(out, "purged 0 expired entries\n");
    let (_, out, _) = d.cmd(&["greylist", "list"]);
    let line = out.lines().find(|l| l.starts_with(KEY)).expect(&out);
    assert!(line.contains("  permanent  passed="), "{line}");
    assert!(line.ends_with(" expires=never"), "{line}");
}

#[test]
fn importers_write_through_the_daemon_in_batches() {
    let d = Daemon::start("", GREYLIST);
    let config = mxsentry::config::Config::load(&d.config_path).unwrap();
    let now = mxsentry::store::unix_now();
    let live = mxsentry::store::Entry {
        first_seen: now - 10,
        last_seen: now - 10,
        passed: 1,
        blocked: 0,
        expires: now + 3600,
    };
    // ~1.5 MB of requests: at least two batches
    let mut entries: Vec<(String, mxsentry::store::Entry)> = (0..20_000)
        .map(|i| {
            (
                format!("t:198.51.100.0/24|import{i:05}@sender.example|{RCPT}"),
                live,
            )
        })
        .collect();
    let expired = mxsentry::store::Entry {
        expires: now - 1,
        ..live
    };
    entries.push((
        "t:198.51.100.0/24|old@sender.example|x@example.org".into(),
        expired,
    ));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (written, skipped) = runtime
        .block_on(mxsentry::admin::put_entries(&config, &entries))
        .unwrap();
    assert_eq!((written, skipped), (20_000, 1));
    assert!(
        d.metric("mxsentry_control_requests_total{op=\"put\",result=\"ok\"}") >= 2.0,
        "sent in batches"
    );
    let (code, out, err) = d.cmd(&[
        "greylist",
        "list",
        "--prefix",
        "t:198.51.100.0/24|",
        "--limit",
        "100000",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.ends_with("20000 entries\n"),
        "{}",
        &out[out.len() - 200..]
    );
    // and committed: the daemon's status counts them (committed entries only)
    let (_, out, _) = d.cmd(&["status"]);
    assert!(out.contains("store entries: 20000\n"), "{out}");
}

#[test]
fn greylist_commands_open_the_store_directly_when_the_daemon_is_stopped() {
    let mut d = Daemon::start("", GREYLIST);
    d.signal("TERM");
    assert!(d.wait_exit(Duration::from_secs(30)).unwrap().success());
    assert!(
        !control_socket(&d).exists(),
        "the daemon removed its socket"
    );

    let (code, out, err) = d.cmd(&triplet("add"));
    assert_eq!(code, 0, "{out}{err}");
    assert!(!err.contains("via the running daemon"), "{err}");
    assert!(
        out.starts_with(&format!("added {KEY}: whitelisted until ")),
        "{out}"
    );
    let (code, out, _) = d.cmd(&["greylist", "list"]);
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("{KEY}  whitelisted  passed=1")),
        "{out}"
    );

    // a stale socket file (a crashed daemon's) counts as no daemon
    let stale = std::os::unix::net::UnixListener::bind(control_socket(&d)).unwrap();
    drop(stale);
    assert!(control_socket(&d).exists());
    let (code, out, err) = d.cmd(&["greylist", "list"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!err.contains("via the running daemon"), "{err}");
    let (code, _, err) = d.cmd(&["status"]);
    assert_eq!(code, 1);
    assert!(err.contains("no mxsentry daemon answers on"), "{err}");

    // the daemon replaces the stale socket and honours what was added while it was down
    d.restart_stopped();
    d.wait_log("control socket ready");
    assert!(!greylisted(&d), "added to the stopped store: accepted");
    let (code, _, err) = d.cmd(&["greylist", "list"]);
    assert_eq!(code, 0);
    assert!(err.contains("(via the running daemon)"), "{err}");
}

#[test]
fn with_the_control_socket_off_the_commands_say_what_holds_the_store() {
    let d = Daemon::start("", &format!("{GREYLIST}[control]\nsocket = \"off\"\n"));
    assert!(!control_socket(&d).exists());
    let (code, out, err) = d.cmd(&["greylist", "list"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("another process holds the embedded store and its control socket is off"),
        "{err}"
    );
    let (code, _, err) = d.cmd(&["status"]);
    assert_eq!(code, 1);
    assert!(err.contains("[control] socket = \"off\""), "{err}");
    // reload validates the file, then says it cannot reach the daemon
    let (code, _, err) = d.cmd(&["reload"]);
    assert_eq!(code, 1);
    assert!(err.contains("the running daemon cannot be asked"), "{err}");
}

#[test]
fn a_daemon_with_another_store_is_not_used() {
    let d = Daemon::start("", GREYLIST);
    assert!(greylisted(&d), "the daemon's store has an entry");
    // another configuration: the same control socket, another store file
    let other = d.config_dir().join("other.toml");
    let other_db = d.config_dir().join("other.db");
    std::fs::write(
        &other,
        format!(
            "[greylist]\npath = \"{}\"\n[control]\nsocket = \"{}\"\n",
            other_db.display(),
            control_socket(&d).display()
        ),
    )
    .unwrap();
    let (code, out, err) = mxsentry(&["greylist", "list", "--config", other.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, "0 entries\n", "the other store, opened directly");
    assert!(err.contains("uses the store"), "{err}");
    assert!(err.contains("opening the store directly"), "{err}");
}

#[test]
fn status_shows_the_running_daemon() {
    let d = Daemon::start("From:x.example REJECT\n", GREYLIST);
    assert!(greylisted(&d));
    d.wait_idle();
    let (code, out, err) = d.cmd(&["status"]);
    assert_eq!(code, 0, "{out}{err}");
    let config = std::fs::canonicalize(&d.config_path).unwrap();
    let db = d.config_dir().join("greylist.db");
    for line in [
        format!("version: {}\n", env!("CARGO_PKG_VERSION")),
        format!("pid: {}\n", d.pid()),
        "uptime: ".into(),
        format!("config: {}\n", config.display()),
        "config loaded: ".into(),
        "last reload: none since start\n".into(),
        "connections open: 0\n".into(),
        format!("store: embedded {}\n", db.display()),
        "store entries: ".into(),
        "store last commit: ".into(),
        "dnsbl zones: ".into(),
    ] {
        assert!(out.contains(&line), "{line:?} missing:\n{out}");
    }
    // a connection held open shows
    let mut c = common::Client::tcp(d.port);
    c.negotiate();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, out, _) = d.cmd(&["status"]);
        if out.contains("connections open: 1\n") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{out}");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(c);
}

#[test]
fn reload_applies_a_good_file_and_refuses_a_bad_one() {
    let d = Daemon::start("From:old.example REJECT\n", "");
    let rejected = |d: &Daemon, from: &str| {
        let (r, _) = transaction(d, from, RCPT);
        reply_text(&r) == "550 5.7.1 Access denied"
    };
    assert!(rejected(&d, "a@old.example"));
    assert!(!rejected(&d, "a@new.example"));

    let access = d.config_dir().join("access");
    std::fs::write(&access, "From:new.example REJECT\n").unwrap();
    let (code, out, err) = d.cmd(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("reloaded "), "{out}");
    assert!(out.contains(": 1 access rules, 0 regex rules"), "{out}");
    assert!(rejected(&d, "a@new.example"), "the new rule applies");
    assert!(!rejected(&d, "a@old.example"), "the old rule is gone");

    // a bad file: exit 1 with file:line: reason, and the running rules stay
    std::fs::write(
        &access,
        "# ok\nFrom:new.example REJECT\nFrom:x.example FROBNICATE\n",
    )
    .unwrap();
    let (code, out, err) = d.cmd(&["reload"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains(&format!("{}:3: ", access.display())), "{err}");
    assert!(rejected(&d, "a@new.example"), "old rules still enforced");
    assert!(!rejected(&d, "a@x.example"));

    // the daemon's own check says the same when the file breaks after validation (SIGHUP path)
    d.signal("HUP");
    d.wait_log("reload failed");
    let (_, out, _) = d.cmd(&["status"]);
    assert!(out.contains("last reload: failed "), "{out}");
    assert!(out.contains(&format!("{}:3: ", access.display())), "{out}");
    assert!(rejected(&d, "a@new.example"), "old rules still enforced");
    assert_eq!(
        d.metric("mxsentry_control_requests_total{op=\"reload\",result=\"ok\"}"),
        1.0
    );
}

#[test]
fn reload_without_a_daemon_says_so() {
    let mut d = Daemon::start("", "");
    d.signal("TERM");
    assert!(d.wait_exit(Duration::from_secs(30)).unwrap().success());
    let (code, out, err) = d.cmd(&["reload"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("no mxsentry daemon answers on"), "{err}");
    assert!(err.contains(control_socket(&d).to_str().unwrap()), "{err}");
}

#[test]
fn explain_shows_the_daemons_greylist_state_and_records_nothing() {
    let d = Daemon::start("", GREYLIST);
    let explain = |d: &Daemon| {
        let (code, out, err) = d.cmd(&[
            "explain",
            "--client-ip",
            "192.0.2.10",
            "--client-name",
            "client.example",
            "--helo",
            "client.example",
            "--from",
            FROM,
            "--rcpt",
            RCPT,
        ]);
        assert_eq!(code, 0, "{out}{err}");
        out
    };
    let out = explain(&d);
    assert!(
        out.contains("greylist state: the running daemon's store"),
        "{out}"
    );
    assert!(
        out.contains(&format!("new triplet {KEY}, retry in 3600s")),
        "{out}"
    );
    assert!(
        out.contains("verdict: greylist  reply: 450 4.7.1 Greylisted"),
        "{out}"
    );
    let (_, list, _) = d.cmd(&["greylist", "list"]);
    assert_eq!(list, "0 entries\n", "explain records nothing");

    assert!(greylisted(&d));
    let out = explain(&d);
    assert!(out.contains(&format!("{KEY} retried too early")), "{out}");
    d.cmd(&triplet("add"));
    let out = explain(&d);
    assert!(out.contains(&format!("{KEY} autowhitelisted")), "{out}");
    assert!(out.contains("verdict: accept"), "{out}");
}

/// Sends `bytes` on a fresh control connection; returns what the daemon answered before it
/// closed the connection.
fn raw(socket: &Path, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // the daemon may close before reading everything: a failed write is fine
    let _ = s.write_all(bytes);
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
}

#[test]
fn bad_control_requests_close_only_their_connection() {
    let d = Daemon::start("", GREYLIST);
    let socket = control_socket(&d);
    // a client that keeps its connection open across the others' trouble
    let mut steady = UnixStream::connect(&socket).unwrap();
    steady
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut ask_steady = || {
        steady.write_all(b"{\"op\":\"status\"}\n").unwrap();
        let mut answer = Vec::new();
        let mut byte = [0u8; 1];
        while answer.last() != Some(&b'\n') {
            assert_eq!(
                steady.read(&mut byte).unwrap(),
                1,
                "steady connection closed"
            );
            answer.push(byte[0]);
        }
        let answer = String::from_utf8(answer).unwrap();
        assert!(answer.starts_with("{\"result\":\"status\""), "{answer}");
    };

    let oversized = vec![b'x'; 5 << 20];
    let bad: [(&[u8], &str); 3] = [
        (
            b"{\"op\":\"shutdown\"}\n{\"op\":\"status\"}\n",
            "{\"result\":\"error\",\"error\":\"malformed request: ",
        ),
        (
            b"not json at all\n",
            "{\"result\":\"error\",\"error\":\"malformed request: ",
        ),
        // 5 MiB without a newline: refused at the 4 MiB bound
        (
            &oversized,
            "{\"result\":\"error\",\"error\":\"request longer than 4194304 bytes\"}",
        ),
    ];
    for (bytes, wanted) in bad {
        ask_steady();
        let answer = raw(&socket, bytes);
        assert!(answer.starts_with(wanted), "{answer}");
        assert_eq!(
            answer.lines().count(),
            1,
            "closed after the bad request: {answer}"
        );
    }
    ask_steady();
    assert_eq!(
        d.metric("mxsentry_control_requests_total{op=\"invalid\",result=\"error\"}"),
        3.0
    );
    // and the daemon serves mail and the commands as before
    assert!(greylisted(&d));
    let (code, _, err) = d.cmd(&["status"]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn control_socket_is_mode_0600() {
    let d = Daemon::start("", "");
    let meta = std::fs::metadata(control_socket(&d)).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(meta.uid(), own_uid(), "owned by the daemon's user");
}

/// The uid this test runs as (the daemon's, which it started): from /proc, without libc.
fn own_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn unavailable_control_socket_never_stops_mail() {
    let missing = "[control]\nsocket = \"/nonexistent-mxsentry-dir/control.sock\"\n";
    let d = Daemon::start("From:x.example REJECT\n", missing);
    let log = d.wait_log("control socket unavailable");
    assert!(
        log.contains("/nonexistent-mxsentry-dir/control.sock"),
        "{log}"
    );
    let (r, _) = transaction(&d, "a@x.example", RCPT);
    assert_eq!(
        reply_text(&r),
        "550 5.7.1 Access denied",
        "mail still decided"
    );
    let (r, _) = transaction(&d, "a@fine.example", RCPT);
    assert_eq!(r, Reply::Continue);
    let (code, _, err) = d.cmd(&["status"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no mxsentry daemon answers on /nonexistent-mxsentry-dir/control.sock"),
        "{err}"
    );
}

#[test]
fn a_second_daemon_leaves_the_first_ones_socket_alone() {
    let first = Daemon::start("", "");
    let socket = control_socket(&first);
    let shared = format!("[control]\nsocket = \"{}\"\n", socket.display());
    let second = Daemon::start("", &shared);
    second.wait_log("control socket unavailable");
    assert!(
        second.log().contains("another process answers on it"),
        "{}",
        second.log()
    );
    let (code, out, err) = first.cmd(&["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("pid: {}\n", first.pid())),
        "still the first: {out}"
    );
    // the second serves mail all the same
    let (r, _) = transaction(&second, "a@fine.example", RCPT);
    assert_eq!(r, Reply::Continue);
}

/// A measurement, run by hand (figures in docs/operations.md):
/// `cargo test --release --test control -- --ignored --nocapture measure`.
/// Imports `MXSENTRY_MEASURE_ENTRIES` (default 1,000,000) entries through the running daemon
/// with `admin::put_entries`, lists 100,000 of them through the socket with the CLI, then the
/// same list on the stopped store, and prints the times.
#[test]
#[ignore = "a measurement, run by hand"]
fn measure_import_and_list_through_the_daemon() {
    let n: usize = std::env::var("MXSENTRY_MEASURE_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let opts = common::Options {
        log_filter: "mxsentry=info",
        ..common::Options::default()
    };
    let mut d = Daemon::start_opts("", GREYLIST, opts);
    let config = mxsentry::config::Config::load(&d.config_path).unwrap();
    let now = mxsentry::store::unix_now();
    let entry = mxsentry::store::Entry {
        first_seen: now - 600,
        last_seen: now - 60,
        passed: 1,
        blocked: 1,
        expires: now + 86_400,
    };
    let entries: Vec<(String, mxsentry::store::Entry)> = (0..n)
        .map(|i| {
            (
                format!(
                    "t:10.{}.{}.0/24|sender{i}@example.com|rcpt{}@example.org",
                    i / 65_536 % 256,
                    i / 256 % 256,
                    i % 1000
                ),
                entry,
            )
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let (written, _) = runtime
        .block_on(mxsentry::admin::put_entries(&config, &entries))
        .unwrap();
    let import = started.elapsed();
    assert_eq!(written, n as u64);
    println!(
        "put_entries through the daemon: {n} entries in {:.1} s = {:.0} entries/s ({} put requests)",
        import.as_secs_f64(),
        n as f64 / import.as_secs_f64(),
        d.metric("mxsentry_control_requests_total{op=\"put\",result=\"ok\"}")
    );
    let limit = n.min(100_000).to_string();
    let list = |d: &Daemon, how: &str| {
        let started = std::time::Instant::now();
        let (code, out, err) = d.cmd(&["greylist", "list", "--prefix", "t:", "--limit", &limit]);
        let took = started.elapsed();
        assert_eq!(code, 0, "{err}");
        assert!(out.ends_with(&format!("{limit} entries\n")));
        println!(
            "greylist list --limit {limit} {how}: {:.2} s ({} bytes of output)",
            took.as_secs_f64(),
            out.len()
        );
    };
    list(&d, "through the daemon");
    println!("daemon RSS after the import: {} MiB", d.rss_kb() / 1024);
    d.signal("TERM");
    assert!(d.wait_exit(Duration::from_secs(60)).unwrap().success());
    list(&d, "on the stopped store (direct)");
}
