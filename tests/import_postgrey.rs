//! Moving from postgrey, with the real postgrey (Debian's `postgrey` and `db5.3-util`
//! packages): its database is made by real policy-delegation requests on loopback, imported
//! with `mxsentry greylist import postgrey`, and the running daemon then lets the passed
//! triplets through at once, still greylists the pending one, and lets the client postgrey
//! autowhitelisted through with a new triplet. Also `mxsentry config import postgrey`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command as Process, Output, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, reply_text, Client, Daemon, TEST_ZONE};
use mxsentry::protocol::reply::Reply;

/// postgrey's path, or `None` (the test then says it is skipped) when it is not installed.
fn postgrey_path() -> Option<String> {
    ["/usr/sbin/postgrey", "/usr/bin/postgrey"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .map(str::to_owned)
}

fn id(flag: &str) -> String {
    let out = Process::new("id").arg(flag).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The real postgrey on 127.0.0.1, in the foreground, as the current user (root or not:
/// `--user`/`--group` of the current user are what Net::Server can switch to either way).
struct Postgrey {
    child: Child,
    port: u16,
}

impl Postgrey {
    fn start(bin: &str, dbdir: &Path, options: &[&str]) -> Postgrey {
        let port = free_port();
        let child = Process::new(bin)
            .arg(format!("--inet=127.0.0.1:{port}"))
            .arg(format!("--dbdir={}", dbdir.display()))
            .arg(format!("--user={}", id("-un")))
            .arg(format!("--group={}", id("-gn")))
            .args(options)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dbdir.with_extension("log")).unwrap())
            .spawn()
            .unwrap();
        let mut pg = Postgrey { child, port };
        let log = || std::fs::read_to_string(dbdir.with_extension("log")).unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = pg.child.try_wait().unwrap() {
                panic!("postgrey exited ({status}):\n{}", log());
            }
            assert!(
                Instant::now() < deadline,
                "postgrey never listened:\n{}",
                log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        pg
    }

    /// One policy-delegation request as Postfix sends it; `at` is postgrey's
    /// `policy_test_time` (the time it takes as now). Returns postgrey's action.
    fn request(&self, at: u64, ip: &str, name: &str, sender: &str, rcpt: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            s,
            "request=smtpd_access_policy\npolicy_test_time={at}\nprotocol_state=RCPT\n\
             client_address={ip}\nclient_name={name}\nsender={sender}\nrecipient={rcpt}\n\n"
        )
        .unwrap();
        let mut reply = Vec::new();
        let mut buf = [0u8; 512];
        while !reply.ends_with(b"\n\n") {
            let n = s.read(&mut buf).unwrap();
            assert!(
                n > 0,
                "postgrey closed: {}",
                String::from_utf8_lossy(&reply)
            );
            reply.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(reply).unwrap().trim().to_owned()
    }

    /// SIGTERM by PID: postgrey closes its databases and exits. (Dropping it kills it.)
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        assert!(Process::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        self.child.wait().unwrap();
    }
}

impl Drop for Postgrey {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mxsentry(args: &[&str]) -> Output {
    Process::new(env!("CARGO_BIN_EXE_mxsentry"))
        .args(args)
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

const ZONE: &str = "\
21.2.0.192.in-addr.arpa PTR mx21.partner.example
mx21.partner.example A 192.0.2.21
22.2.0.192.in-addr.arpa PTR mx22.slow.example
mx22.slow.example A 192.0.2.22
30.100.51.198.in-addr.arpa PTR out30.lists.example
out30.lists.example A 198.51.100.30
50.113.0.203.in-addr.arpa PTR mx50.stranger.example
mx50.stranger.example A 203.0.113.50
";

/// postgrey's settings mapped as `config import postgrey` maps them (delay 300s, max-age 35
/// days, networks as keys).
const GREYLIST: &str = "[greylist]\nenabled = true\ndelay = \"300s\"\nretry_window = \"2d\"\n\
    autowhite = \"35d\"\nclient_autowhite_after = 3\npool_by_rdns = false\n\
    commit_interval = \"200ms\"\n";

fn rcpt_reply(d: &Daemon, name: &str, ip: &str, from: &str, rcpt: &str) -> Reply {
    let mut c = Client::tcp(d.port);
    c.negotiate();
    c.connect(name, ip);
    c.helo(name);
    c.mail(from);
    c.rcpt(rcpt).expect("RCPT answered")
}

#[test]
fn postgrey_state_carries_over() {
    let Some(bin) = postgrey_path() else {
        eprintln!("SKIPPED: postgrey is not installed (apt-get install postgrey db5.3-util)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let dbdir = dir.path().join("postgrey");
    std::fs::create_dir(&dbdir).unwrap();
    let now = mxsentry::store::unix_now();
    let pg = Postgrey::start(&bin, &dbdir, &["--delay=300", "--auto-whitelist-clients=2"]);
    // A passes: first seen 1000 s ago, retried 400 s later
    let partner = (
        "192.0.2.21",
        "mx21.partner.example",
        "alice@partner.example",
    );
    let greylisted = |r: &str| r.starts_with("action=DEFER_IF_PERMIT Greylisted");
    let r = pg.request(
        now - 1000,
        partner.0,
        partner.1,
        partner.2,
        "bob@example.org",
    );
    assert!(greylisted(&r), "{r}");
    let r = pg.request(
        now - 600,
        partner.0,
        partner.1,
        partner.2,
        "bob@example.org",
    );
    assert!(
        r.starts_with("action=PREPEND X-Greylist: delayed 400 seconds"),
        "{r}"
    );
    // B stays pending: first seen a minute ago
    let r = pg.request(
        now - 60,
        "192.0.2.22",
        "mx22.slow.example",
        "carol@slow.example",
        "bob@example.org",
    );
    assert!(greylisted(&r), "{r}");
    // C passes two triplets more than an hour apart: postgrey autowhitelists the client
    let list = ("198.51.100.30", "out30.lists.example");
    for (first, rcpt) in [(9000, "u1@example.org"), (5000, "u2@example.org")] {
        let r = pg.request(now - first, list.0, list.1, "news@lists.example", rcpt);
        assert!(greylisted(&r), "{r}");
        let r = pg.request(
            now - first + 400,
            list.0,
            list.1,
            "news@lists.example",
            rcpt,
        );
        assert!(r.starts_with("action=PREPEND X-Greylist"), "{r}");
    }
    let r = pg.request(
        now - 100,
        list.0,
        list.1,
        "other@lists.example",
        "u3@example.org",
    );
    assert_eq!(r, "action=DUNNO", "postgrey's client autowhitelist");
    pg.stop();

    let mut d = Daemon::start_with_zone("", GREYLIST, &format!("{TEST_ZONE}{ZONE}"));
    // the daemon holds its embedded store: import while it is stopped
    d.signal("TERM");
    assert!(d.wait_exit(Duration::from_secs(30)).unwrap().success());
    let config = d.config_path.to_str().unwrap().to_owned();
    let args = [
        "greylist",
        "import",
        "postgrey",
        dbdir.to_str().unwrap(),
        "--config",
        &config,
    ];
    let out = mxsentry(&[&args[..], &["--auto-whitelist-clients", "2"]].concat());
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines.len(), 4, "{report}");
    assert_eq!(
        lines[0],
        "postgrey.db: 4 triplets read: 3 passed, 1 pending, 0 skipped"
    );
    assert_eq!(
        lines[1],
        "postgrey_clients.db: 2 clients read: 1 autowhitelisted, 1 skipped"
    );
    let skipped = "skipped 1: fewer passes than --auto-whitelist-clients=2 (first: 192.0.2.21 = 1,";
    assert!(lines[2].starts_with(skipped), "{report}");
    assert_eq!(lines[3], "written 5 entries");
    let out = mxsentry(&["greylist", "list", "--config", &config]);
    let listing = text(&out);
    assert!(
        listing.contains("t:192.0.2.0/24|alice@partner.example|bob@example.org  whitelisted"),
        "{listing}"
    );
    assert!(
        listing.contains("t:192.0.2.0/24|carol@slow.example|bob@example.org  greylisted"),
        "{listing}"
    );
    assert!(
        listing.contains("c:198.51.100.0/24  whitelisted  passed=3"),
        "{listing}"
    );

    d.restart_stopped();
    // the passed triplet is accepted at once
    let r = rcpt_reply(&d, partner.1, partner.0, partner.2, "bob@example.org");
    assert_eq!(r, Reply::Continue, "{}", d.log());
    // the pending one is still greylisted, its clock kept (about 240 s left of 300)
    let r = rcpt_reply(
        &d,
        "mx22.slow.example",
        "192.0.2.22",
        "carol@slow.example",
        "bob@example.org",
    );
    let reply = reply_text(&r);
    assert!(
        reply.starts_with("450 4.7.1 Greylisted, try again in "),
        "{reply}"
    );
    assert_ne!(
        reply, "450 4.7.1 Greylisted, try again in 300 seconds",
        "first_seen kept"
    );
    // the client postgrey autowhitelisted passes with a triplet never seen
    let r = rcpt_reply(&d, list.1, list.0, "fresh@lists.example", "new@example.org");
    assert_eq!(r, Reply::Continue, "{}", d.log());
    // and a stranger is greylisted as before
    let r = rcpt_reply(
        &d,
        "mx50.stranger.example",
        "203.0.113.50",
        "x@stranger.example",
        "bob@example.org",
    );
    assert_eq!(
        reply_text(&r),
        "450 4.7.1 Greylisted, try again in 300 seconds"
    );
}

#[test]
fn a_running_postgrey_is_refused_a_killed_one_imported() {
    let Some(bin) = postgrey_path() else {
        eprintln!("SKIPPED: postgrey is not installed (apt-get install postgrey db5.3-util)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let dbdir = dir.path().join("postgrey");
    std::fs::create_dir(&dbdir).unwrap();
    let config = dir.path().join("milter.toml");
    let store = dir.path().join("greylist.db");
    std::fs::write(
        &config,
        format!("[greylist]\npath = \"{}\"\n", store.display()),
    )
    .unwrap();
    let pg = Postgrey::start(&bin, &dbdir, &[]);
    let r = pg.request(
        mxsentry::store::unix_now(),
        "192.0.2.1",
        "x",
        "a@b.example",
        "c@d.example",
    );
    assert!(r.starts_with("action=DEFER_IF_PERMIT"), "{r}");
    let args = [
        "greylist",
        "import",
        "postgrey",
        dbdir.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ];
    let out = mxsentry(&args);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("postgrey is running") && text(&out).contains("stop it first"),
        "{}",
        text(&out)
    );
    // killed (no clean close: the entry may be only in BerkeleyDB's log), then imported:
    // db_recover on the copy replays the log
    drop(pg);
    let out = mxsentry(&args);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("postgrey.db: 1 triplets read: 0 passed, 1 pending, 0 skipped"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("written 1 entries"), "{}", text(&out));
    // postgrey's directory is only read: no region files of ours, postgrey starts on it again
    let pg = Postgrey::start(&bin, &dbdir, &[]);
    let r = pg.request(
        mxsentry::store::unix_now(),
        "192.0.2.1",
        "x",
        "a@b.example",
        "c@d.example",
    );
    assert!(r.starts_with("action=DEFER_IF_PERMIT"), "{r}");
    pg.stop();
}

#[test]
fn missing_database_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("milter.toml");
    std::fs::write(
        &config,
        format!(
            "[greylist]\npath = \"{}\"\n",
            dir.path().join("g.db").display()
        ),
    )
    .unwrap();
    let out = mxsentry(&[
        "greylist",
        "import",
        "postgrey",
        dir.path().to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let t = text(&out);
    // without the tools, the error names the package; with them, the missing file
    assert!(
        t.contains("install the db5.3-util package")
            || t.contains("postgrey.db: no such file (is "),
        "{t}"
    );
}

fn config_import(out_dir: &Path, extra: &[&str]) -> Output {
    let out_dir = out_dir.to_str().unwrap();
    mxsentry(
        &[
            &["config", "import", "postgrey", "--out-dir", out_dir][..],
            extra,
        ]
        .concat(),
    )
}

#[test]
fn config_import_maps_whitelists_and_lists_what_it_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let clients = dir.path().join("whitelist_clients");
    std::fs::write(
        &clients,
        "# postgrey whitelist\nexample.com\n/^mail\\d+\\.example\\.net$/\n*.wild.example\n\
         192.0.2.0/24\n64.12.137\nnot a name\n/(?!x)y/\n",
    )
    .unwrap();
    let recipients = dir.path().join("whitelist_recipients");
    std::fs::write(
        &recipients,
        "postmaster@\nabuse@example.org\n@b.example\nc.example\na@b@c\n",
    )
    .unwrap();
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let files = [
        "--whitelist-clients",
        clients.to_str().unwrap(),
        "--whitelist-recipients",
        recipients.to_str().unwrap(),
        "--delay",
        "120",
        "--max-age",
        "30",
    ];
    let out = config_import(&out_dir, &files);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let c = clients.display();
    let r = recipients.display();
    let unmapped: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("_clients:") || l.contains("_recipients:"))
        .collect();
    assert_eq!(unmapped.len(), 4, "{stderr}");
    assert!(
        unmapped[0].starts_with(&format!("{c}:4: \"*.wild.example\" is not a host name")),
        "{stderr}"
    );
    assert_eq!(
        unmapped[1],
        format!("{c}:7: doesn't look like a host name (postgrey skips it too)")
    );
    assert!(
        unmapped[2].starts_with(&format!("{c}:8: a regex mxsentry's engine refuses")),
        "{stderr}"
    );
    assert_eq!(
        unmapped[3],
        format!("{r}:5: more than one '@': not an address")
    );
    let fragment = String::from_utf8_lossy(&out.stdout).into_owned();
    let out_abs = std::fs::canonicalize(&out_dir).unwrap();
    assert!(fragment.contains("delay = \"2m\""), "{fragment}");
    assert!(fragment.contains("autowhite = \"30d\""), "{fragment}");
    assert!(
        fragment.contains(&format!(
            "allow_client_files = [\"{}\"]",
            out_abs.join("greylist-allow-clients").display()
        )),
        "{fragment}"
    );
    let written = std::fs::read_to_string(out_dir.join("greylist-allow-clients")).unwrap();
    let entries: Vec<&str> = written.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        entries,
        vec![
            "example.com",
            "/^mail\\d+\\.example\\.net$/",
            "192.0.2.0/24",
            "64.12.137.0/24"
        ]
    );
    let written = std::fs::read_to_string(out_dir.join("greylist-allow-recipients")).unwrap();
    let entries: Vec<&str> = written.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        entries,
        vec![
            "postmaster@",
            "/^postmaster\\+[^@]+@/",
            "abuse@example.org",
            "/^abuse\\+[^@]+@example\\.org$/",
            "@b.example",
            "c.example"
        ]
    );
    // an existing file is never overwritten without --force
    let out = config_import(&out_dir, &files);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("greylist-allow-clients exists: not overwritten (--force replaces it)"),
        "{}",
        text(&out)
    );
    let out = config_import(&out_dir, &[&files[..], &["--force"]].concat());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    // unreadable input: exit 2, nothing else
    let out = config_import(
        &out_dir,
        &["--whitelist-clients", "/nonexistent/wl", "--force"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).starts_with("/nonexistent/wl: "),
        "{}",
        text(&out)
    );
}

/// Debian's own whitelist files (installed with postgrey) map completely.
#[test]
fn config_import_of_debians_whitelists_maps_every_line() {
    if !Path::new("/etc/postgrey/whitelist_clients").is_file() {
        eprintln!("SKIPPED: postgrey is not installed (apt-get install postgrey db5.3-util)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = config_import(
        dir.path(),
        &[
            "--whitelist-clients",
            "/etc/postgrey/whitelist_clients",
            "--whitelist-recipients",
            "/etc/postgrey/whitelist_recipients",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("greylist-allow-clients ("), "{stderr}");
}

/// The fragment and the files it names pass `check-config`. Needs the allow-list keys
/// (`allow_client_files`, `allow_recipient_files`) of the allowlists branch.
#[test]
fn config_import_output_passes_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let clients = dir.path().join("wl_clients");
    std::fs::write(
        &clients,
        "example.com\n/^mail\\d+\\.example\\.net$/\n192.0.2.0/24\n64.12.137\n2001:db8::/32\n",
    )
    .unwrap();
    let recipients = dir.path().join("wl_recipients");
    std::fs::write(
        &recipients,
        "postmaster@\nabuse@example.org\n@b.example\nc.example\n/^x/\n",
    )
    .unwrap();
    let out = config_import(
        dir.path(),
        &[
            "--whitelist-clients",
            clients.to_str().unwrap(),
            "--whitelist-recipients",
            recipients.to_str().unwrap(),
            "--retry-window",
            "36h",
            "--auto-whitelist-clients",
            "3",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let config = dir.path().join("milter.toml");
    let fragment = String::from_utf8_lossy(&out.stdout);
    std::fs::write(
        &config,
        format!(
            "[milter]\nlisten = [\"inet:{}@127.0.0.1\"]\n[dns]\nnameservers = [\"127.0.0.1:53\"]\n{fragment}path = \"{}\"\n",
            free_port(),
            dir.path().join("greylist.db").display()
        ),
    )
    .unwrap();
    let out = mxsentry(&["check-config", "--config", config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
}
