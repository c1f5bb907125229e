//! Operations under load: reload while sessions run, JSON decision logs.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{reply_text, Client, Daemon};
use mxsentry::protocol::command::Command;
use mxsentry::protocol::reply::Reply;

#[test]
fn reload_under_load_never_fails_a_session() {
    let d = Daemon::start("From:old.example REJECT\n", "");
    let stop = Arc::new(AtomicBool::new(false));
    let sessions = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (stop, sessions, port) = (stop.clone(), sessions.clone(), d.port);
            std::thread::spawn(move || {
                let mut c = Client::tcp(port);
                c.negotiate();
                while !stop.load(Ordering::Relaxed) {
                    c.connect("client.example", "192.0.2.10");
                    c.helo("helo.example");
                    c.mail(&format!("w{w}@fine.example"));
                    // any verdict is fine here; a missing or broken reply panics the worker
                    let r = c.rcpt("u@example.org").expect("RCPT answered");
                    if r == Reply::Continue {
                        assert_eq!(c.message().last(), Some(&Reply::Accept));
                    }
                    c.send(&Command::QuitNewConnection);
                    sessions.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    let access = d.config_dir().join("access");
    let rejects = |d: &Daemon, from: &str| {
        let mut c = Client::tcp(d.port);
        c.negotiate();
        c.connect("client.example", "192.0.2.10");
        c.helo("helo.example");
        c.mail(from);
        reply_text(&c.rcpt("u@example.org").unwrap()) == "550 5.7.1 Access denied"
    };
    for round in 0..5 {
        let good = format!("From:new{round}.example REJECT\n");
        std::fs::write(&access, &good).unwrap();
        d.signal("HUP");
        d.wait_log_count("configuration reloaded", round + 1);
        assert!(
            rejects(&d, &format!("a@new{round}.example")),
            "round {round}: new rule active"
        );
        // a broken file is refused and the rules of this round stay
        std::fs::write(&access, "From:x.example FROBNICATE\n").unwrap();
        d.signal("HUP");
        d.wait_log_count("reload failed", round + 1);
        assert!(
            rejects(&d, &format!("a@new{round}.example")),
            "round {round}: old rules kept"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("no session failed during reloads");
    }
    assert!(sessions.load(Ordering::Relaxed) > 0);
}

#[test]
fn json_decision_lines_carry_the_stable_keys() {
    let d = Daemon::start("From:reject.example REJECT\n", "[log]\nformat = \"json\"\n");
    let mut c = Client::tcp(d.port);
    c.negotiate();
    c.connect("client.example", "192.0.2.10");
    c.helo("helo.example");
    c.mail("a@reject.example");
    c.rcpt("u@example.org");
    let log = d.wait_log("\"verdict\":\"reject\"");
    let line = log
        .lines()
        .find(|l| l.contains("\"verdict\":\"reject\""))
        .unwrap();
    assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
    for key in [
        "\"queue_id\":",
        "\"client_ip\":\"192.0.2.10\"",
        "\"client_name\":\"client.example\"",
        "\"helo\":\"helo.example\"",
        "\"from\":\"<a@reject.example>\"",
        "\"rcpt\":\"<u@example.org>\"",
        "\"reply\":\"550 5.7.1 Access denied\"",
        "\"findings\":",
        "\"delay_ms\":",
    ] {
        assert!(line.contains(key), "{key} missing: {line}");
    }
}

#[test]
fn systemd_socket_activation_serves_the_passed_socket() {
    // Plays systemd: binds the listening socket, passes it as fd 3 with LISTEN_FDS/LISTEN_PID
    // set for the daemon's own pid (python exec's the daemon, so the pid is kept).
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let config = dir.path().join("milter.toml");
    std::fs::write(
        &config,
        "[milter]\nlisten = \"inet:1@127.0.0.1\"\n[trusted]\nnetworks = []\n\
         [rdns]\nno_ptr = \"off\"\nforged = \"off\"\ndynamic = \"off\"\n[metrics]\nlisten = \"off\"\n[greylist]\nenabled = false\n",
    )
    .unwrap();
    let log = dir.path().join("log");
    let script = format!(
        "import os, socket\n\
         s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('127.0.0.1', {port})); s.listen(16)\n\
         os.dup2(s.fileno(), 3); os.set_inheritable(3, True)\n\
         os.environ['LISTEN_FDS'] = '1'; os.environ['LISTEN_PID'] = str(os.getpid())\n\
         os.execv({bin:?}, [{bin:?}, 'run', '--config', {config:?}])\n",
        bin = env!("CARGO_BIN_EXE_mxsentry"),
        config = config.to_str().unwrap(),
    );
    let mut child = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("mxsentry started") {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "no start: {text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(text.contains(&format!("inet:{port}@127.0.0.1")), "{text}");
    assert!(text.contains("socket_activated=true"), "{text}");
    let mut c = Client::tcp(port);
    assert!(matches!(c.negotiate(), Reply::OptNeg { .. }));
    let _ = child.kill();
    let _ = child.wait();
}
