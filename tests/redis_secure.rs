//! Redis with TLS (`rediss://` and a private CA made by the test) and with a password from a
//! file (`redis_password_file`), through the real daemon and real `redis-server`s on loopback:
//! greylisting works with the right CA and password; with a wrong CA or password the greylist
//! step fails open (the session is accepted, never 5xx) and the log says why.
//!
//! Needs `redis-server` (built with TLS, as Debian's is) and `openssl`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::redis_server::RedisServer;
use common::tls::TestCa;
use common::{free_port, mxsentry, reply_text, transaction, Daemon};
use mxsentry::protocol::reply::Reply;

fn greylist_config(redis: &str) -> String {
    format!(
        "[greylist]\nenabled = true\ndelay = \"1h\"\nretry_window = \"2d\"\nautowhite = \"1d\"\n\
         client_autowhite_after = 0\nstore = \"redis\"\n{redis}"
    )
}

fn secret_file(dir: &Path, name: &str, text: &str, mode: u32) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path.display().to_string()
}

fn rcpt_reply(d: &Daemon, from: &str) -> Reply {
    transaction(d, from, "u@example.org").0
}

#[test]
fn tls_with_a_private_ca_greylists_and_a_wrong_ca_fails_open() {
    let ca = TestCa::new("mxsentry test CA");
    let tls_port = free_port();
    let redis = RedisServer::start_with(ca.redis_args(tls_port), None);
    let url = format!("rediss://127.0.0.1:{tls_port}/0");

    let good = greylist_config(&format!(
        "redis_url = \"{url}\"\nredis_ca_file = \"{}\"\n",
        ca.ca.display()
    ));
    let mx = Daemon::start("", &good);
    let r = rcpt_reply(&mx, "news@sender.example");
    assert!(
        reply_text(&r).starts_with("450 4.7.1 Greylisted"),
        "{r:?}\n{}",
        mx.log()
    );
    assert_eq!(redis.int(&["DBSIZE"]), 1, "the triplet written over TLS");
    let (code, out, err) =
        mxsentry(&["check-config", "--config", mx.config_path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");

    // A CA that did not sign the server's certificate: no connection, greylisting fails open.
    let other = TestCa::new("some other CA");
    let wrong = greylist_config(&format!(
        "redis_url = \"{url}\"\nredis_ca_file = \"{}\"\n",
        other.ca.display()
    ));
    let mx2 = Daemon::start("", &wrong);
    let r = rcpt_reply(&mx2, "other@sender.example");
    assert_eq!(r, Reply::Continue, "fails open: {r:?}");
    let log = mx2.wait_log("redis store: cannot connect");
    assert!(log.to_lowercase().contains("certificate"), "{log}");
    assert!(log.contains("greylist store failed: accepting"), "{log}");
}

#[test]
fn password_file_authenticates_and_a_wrong_password_fails_open() {
    let redis = RedisServer::start_with(Vec::new(), Some("correct horse"));
    let secrets = tempfile::tempdir().unwrap();
    let url = redis.url();

    let right = secret_file(secrets.path(), "right.pass", "correct horse\n", 0o600);
    let mx = Daemon::start(
        "",
        &greylist_config(&format!(
            "redis_url = \"{url}\"\nredis_password_file = \"{right}\"\n"
        )),
    );
    let r = rcpt_reply(&mx, "news@sender.example");
    assert!(
        reply_text(&r).starts_with("450 4.7.1 Greylisted"),
        "{r:?}\n{}",
        mx.log()
    );
    assert_eq!(redis.int(&["DBSIZE"]), 1);
    assert!(
        !mx.log().contains("readable by group or others"),
        "{}",
        mx.log()
    );

    // Wrong password, in a file others can read: a warning at start, then fail open.
    let wrong = secret_file(secrets.path(), "wrong.pass", "battery staple\n", 0o644);
    let mx2 = Daemon::start(
        "",
        &greylist_config(&format!(
            "redis_url = \"{url}\"\nredis_password_file = \"{wrong}\"\n"
        )),
    );
    let r = rcpt_reply(&mx2, "other@sender.example");
    assert_eq!(r, Reply::Continue, "fails open: {r:?}");
    let log = mx2.wait_log("redis store: cannot connect");
    assert!(log.contains("readable by group or others"), "{log}");
    assert!(
        log.to_lowercase().contains("authentication failed"),
        "{log}"
    );
    assert!(
        !log.contains("battery"),
        "the password is never logged: {log}"
    );
    assert_eq!(
        redis.int(&["DBSIZE"]),
        1,
        "nothing written with the wrong password"
    );
}

#[test]
fn check_config_and_run_refuse_a_missing_password_file_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("milter.toml");
    let missing = dir.path().join("redis.pass");
    std::fs::write(
        &path,
        format!(
            "[greylist]\nstore = \"redis\"\nredis_url = \"redis://127.0.0.1:1/0\"\n\
             redis_password_file = \"{}\"\n",
            missing.display()
        ),
    )
    .unwrap();
    let p = path.to_str().unwrap();
    for command in ["check-config", "run"] {
        let (code, out, err) = mxsentry(&[command, "--config", p]);
        assert_eq!(code, 1, "{command}: {out}{err}");
        assert!(err.contains(&format!("{p}:4: ")), "{command}: {err}");
        assert!(
            err.contains(&format!(
                "{}: cannot read redis_password_file",
                missing.display()
            )),
            "{command}: {err}"
        );
    }
    // An empty file: the file's own line.
    std::fs::write(&missing, "\n").unwrap();
    let (code, _, err) = mxsentry(&["check-config", "--config", p]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "{}:1: the password file is empty",
            missing.display()
        )),
        "{err}"
    );
}
