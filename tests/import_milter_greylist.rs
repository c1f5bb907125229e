//! Moving from milter-greylist with the real binary: a dump imported into the embedded store
//! is listed and decides sessions through the daemon (an AUTO tuple passes at once, a pending
//! one is still greylisted until its time, one whose time has come passes), and a
//! greylist.conf becomes a fragment and rule files that `check-config` accepts.

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{mxsentry, reply_text, transaction, Daemon};
use mxsentry::protocol::reply::Reply;

/// Our delay is 1h; milter-greylist's tuples carry their own times. pool_by_rdns off: the
/// test client 192.0.2.10 is FCrDNS-verified and would otherwise be keyed by its pool.
const GREYLIST: &str = "[greylist]\nenabled = true\ndelay = \"1h\"\nretry_window = \"2d\"\n\
    autowhite = \"1d\"\nclient_autowhite_after = 0\npool_by_rdns = false\ncommit_interval = \"200ms\"\n";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A dump as milter-greylist 4.6 writes it (pending.c's format strings, one section), with
/// the date comments (`%ld # date`) and without (`%ld \n`, dump_no_time_translation).
fn dump_46(rows: &[(&str, &str, &str, u64, &str)]) -> String {
    let mut s = String::from(
        "#\n# milter-greylist databases, dumped by milter-greylist-4.6.2 on 2026-01-02 03:04:05.\n\
         # DO NOT EDIT while milter-greylist is running, changes will be overwritten.\n#\n\
         \n\n#\n# stored tuples\n#\n\
         # Sender IP\tSender e-mail\tRecipient e-mail\tTime accepted\tUnsuccessful shortest tarpit\n",
    );
    for (i, (ip, from, rcpt, time, kind)) in rows.iter().enumerate() {
        let line = match (*kind, i % 2 == 0) {
            ("AUTO", true) => format!("{ip}\t{from}\t{rcpt}\t{time} AUTO # 2026-01-02 03:04:05\n"),
            ("AUTO", false) => format!("{ip}\t{from}\t{rcpt}\t{time} AUTO\n"),
            ("", true) => format!("{ip}\t{from}\t{rcpt}\t{time} # 2026-01-02 03:04:05\n"),
            ("", false) => format!("{ip}\t{from}\t{rcpt}\t{time} \n"),
            _ => format!("{ip}\n"), // a raw line
        };
        s.push_str(&line);
    }
    s.push_str("#\n# Summary: 7 records, 3 greylisted, 4 whitelisted, 0 tarpitted\n#\n");
    s
}

#[test]
fn imported_dump_decides_sessions_through_the_daemon() {
    let mut d = Daemon::start("", GREYLIST);
    // The daemon holds the embedded store: stop it for the import (or import through it live).
    d.signal("TERM");
    assert!(d.wait_exit(Duration::from_secs(30)).unwrap().success());

    let t = now();
    let dump = dump_46(&[
        (
            "192.0.2.10",
            "<friend@sender.example>",
            "<u@example.org>",
            t + 86_400,
            "AUTO",
        ),
        // milter-greylist would accept it in 30 minutes (its delay, not ours)
        (
            "192.0.2.11",
            "<news@sender.example>",
            "<u@example.org>",
            t + 1800,
            "",
        ),
        // its time has come
        (
            "192.0.2.12",
            "<ready@sender.example>",
            "<u@example.org>",
            t - 60,
            "",
        ),
        ("2001:db8::25", "<>", "<u@example.org>", t + 3600, "AUTO"),
        // same /24, same addresses as the first: one key of ours
        (
            "192.0.2.13",
            "<friend@sender.example>",
            "<u@example.org>",
            t + 3600,
            "AUTO",
        ),
        (
            "192.0.2.14",
            "<old@sender.example>",
            "<u@example.org>",
            t - 10,
            "AUTO",
        ),
        (
            "192.0.2.15\t<broken@sender.example>\t<u@exa",
            "",
            "",
            0,
            "RAW",
        ),
    ]);
    let dump_path = d.config_dir().join("greylist.db.mg");
    std::fs::write(&dump_path, dump).unwrap();
    let cfg = d.config_path.to_str().unwrap().to_owned();
    let dump_arg = dump_path.to_str().unwrap();

    let (code, out, err) = mxsentry(&[
        "greylist",
        "import",
        "milter-greylist",
        dump_arg,
        "--config",
        &cfg,
    ]);
    // one bad line: exit 1, the rest imported
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("milter-greylist-4.6.2 dump of 2026-01-02 03:04:05 (one section)"),
        "{out}"
    );
    assert!(
        out.contains("read: 6 tuples (2 greylisted, 4 autowhitelisted, 0 tarpitted)"),
        "{out}"
    );
    assert!(
        out.contains("imported: 2 pending triplets, 2 autowhitelisted triplets"),
        "{out}"
    );
    assert!(
        out.contains("skipped: 1 expired, 1 merged into the entry of another tuple"),
        "{out}"
    );
    assert!(out.contains(", 1 bad lines"), "{out}");
    assert!(
        err.contains(&format!(
            "{dump_arg}:17: expected `IP <sender> <recipient> TIME [AUTO]`, got 3 fields"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{dump_arg}:16: skipped, expired: its autowhitelisting ended"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{dump_arg}:15: merged with line 11 (one key under our rules: t:192.0.2.0/24|friend@sender.example|u@example.org); kept the autowhitelisted tuple that expires last (line 11)"
        )),
        "{err}"
    );

    let (code, out, err) = mxsentry(&["greylist", "list", "--config", &cfg]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("t:192.0.2.0/24|friend@sender.example|u@example.org  whitelisted  passed=2"),
        "{out}"
    );
    assert!(
        out.contains("t:2001:db8::/64|<>|u@example.org  whitelisted  passed=1"),
        "{out}"
    );
    assert!(
        out.contains("t:192.0.2.0/24|news@sender.example|u@example.org  greylisted  passed=0"),
        "{out}"
    );
    assert!(
        out.contains("t:192.0.2.0/24|ready@sender.example|u@example.org  greylisted  passed=0"),
        "{out}"
    );
    assert!(out.contains("4 entries"), "{out}");

    d.restart_stopped();
    // AUTO: accepted at once, no X-Greylist (it was not delayed now)
    let (r, eom) = transaction(&d, "friend@sender.example", "u@example.org");
    assert_eq!(r, Reply::Continue, "{}", d.log());
    assert_eq!(eom, vec![Reply::Accept]);
    // pending: still greylisted, for what is left of milter-greylist's time, not our full 1h
    let (r, _) = transaction(&d, "news@sender.example", "u@example.org");
    let text = reply_text(&r);
    let secs: u64 = text
        .strip_prefix("450 4.7.1 Greylisted, try again in ")
        .and_then(|s| s.strip_suffix(" seconds"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(secs <= 1800 && secs > 600, "{text}");
    // pending whose time has come: passes now, delayed as X-Greylist says
    let (r, eom) = transaction(&d, "ready@sender.example", "u@example.org");
    assert_eq!(r, Reply::Continue, "{}", d.log());
    assert!(
        eom.iter()
            .any(|r| matches!(r, Reply::AddHeader { name, .. } if &name[..] == b"X-Greylist")),
        "{eom:?}"
    );
}

#[test]
fn unreadable_dump_exits_2() {
    let d = Daemon::start("", GREYLIST);
    let cfg = d.config_path.to_str().unwrap();
    let (code, _, err) = mxsentry(&[
        "greylist",
        "import",
        "milter-greylist",
        "/nonexistent/greylist.db",
        "--config",
        cfg,
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("/nonexistent/greylist.db: cannot read"),
        "{err}"
    );
}

#[test]
fn config_import_writes_a_fragment_and_files_check_config_accepts() {
    let conf = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/milter-greylist/greylist.conf"
    );
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("rules");
    let out_arg = out_dir.to_str().unwrap();
    let (code, fragment, err) = mxsentry(&[
        "config",
        "import",
        "milter-greylist",
        conf,
        "--out-dir",
        out_arg,
    ]);
    // some lines do not map: exit 1, everything else written
    assert_eq!(code, 1, "{fragment}{err}");
    assert!(
        err.contains(&format!("{conf}:5: not mapped: socket: set [milter] listen = \"unix:/var/run/milter-greylist/milter-greylist.sock\"")),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{conf}:29: not mapped: racl whitelist combines 2 clauses"
        )),
        "{err}"
    );
    assert!(err.contains("13 statements not mapped"), "{err}");
    for name in [
        "greylist-allow-clients",
        "greylist-allow-senders",
        "greylist-allow-recipients",
        "access",
    ] {
        let path = out_dir.join(name);
        assert!(path.exists(), "{name} not written: {err}");
        assert!(err.contains(&format!("wrote {}", path.display())), "{err}");
    }
    assert!(fragment.contains("delay = \"20m\""), "{fragment}");

    // the fragment in a minimal configuration passes check-config, files included
    let config =
        format!("[dns]\nnameservers = [\"127.0.0.1:53\"]\n[metrics]\nlisten = \"off\"\n{fragment}");
    let config_path = dir.path().join("milter.toml");
    std::fs::write(&config_path, config).unwrap();
    let (code, out, err) = mxsentry(&["check-config", "--config", config_path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("OK (3 access rules, 1 regex rules, 12 greylist allow entries)"),
        "{out}"
    );

    // files are not overwritten without --force
    let (code, _, err) = mxsentry(&[
        "config",
        "import",
        "milter-greylist",
        conf,
        "--out-dir",
        out_arg,
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("exists; not overwritten (use --force)"),
        "{err}"
    );
    let (code, _, err) = mxsentry(&[
        "config",
        "import",
        "milter-greylist",
        conf,
        "--out-dir",
        out_arg,
        "--force",
    ]);
    assert_eq!(code, 1, "{err}");

    // a file that maps entirely: exit 0
    let simple = dir.path().join("simple.conf");
    std::fs::write(&simple, "greylist 10m\nracl whitelist addr 192.0.2.0/24\n").unwrap();
    let (code, out, err) = mxsentry(&[
        "config",
        "import",
        "milter-greylist",
        simple.to_str().unwrap(),
        "--out-dir",
        dir.path().join("s").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(Path::new(&dir.path().join("s/greylist-allow-clients")).exists());
    let (code, _, err) = mxsentry(&["config", "import", "milter-greylist", "/nonexistent.conf"]);
    assert_eq!(code, 2, "{err}");
}
