//! The daemon over real sockets: verdicts at RCPT, negotiation, connection reuse, abort,
//! and bad input that must close one connection and never the daemon.

mod common;

use std::time::Duration;

use common::{reply_text, Client, Daemon};
use mxsentry::protocol::command::Command;
use mxsentry::protocol::negotiate::flags;
use mxsentry::protocol::reply::Reply;

const ACCESS: &str = "\
From:reject.example REJECT
From:discard.example DISCARD
From:banned.example ERROR:\"550 Sender banned. Please use legitimate domain\"
From:tempfail.example TEMPFAIL
linkedin.com DISCARD
Connect:192.0.2.66 REJECT
";

fn session(c: &mut Client, ip: &str, from: &str, rcpt: &str) -> Reply {
    c.connect("client.example", ip);
    c.helo("helo.example");
    c.mail(from);
    c.rcpt(rcpt).expect("RCPT is always answered")
}

#[test]
fn negotiation_asks_only_for_what_is_needed() {
    // Default checks: rDNS on, so CONNECT is answered (Postfix would otherwise hold it back
    // until RCPT, and the lookups it starts could not overlap HELO and MAIL).
    let d = Daemon::start(ACCESS, "");
    let protocol = negotiated_protocol(&d);
    for bit in [
        flags::SMFIP_NOHDRS,
        flags::SMFIP_NOEOH,
        flags::SMFIP_NOBODY,
        flags::SMFIP_NOUNKNOWN,
        flags::SMFIP_NR_HELO,
        flags::SMFIP_NR_MAIL,
    ] {
        assert_ne!(protocol & bit, 0, "bit {bit:#x} not requested");
    }
    assert_eq!(protocol & flags::SMFIP_NR_RCPT, 0, "RCPT must be answered");
    assert_eq!(
        protocol & flags::SMFIP_NR_CONN,
        0,
        "CONNECT answered with DNS checks on"
    );
    // DATA is read and answered: the reply lets the MTA's end-of-message through without a
    // Nagle/delayed-ACK stall.
    assert_eq!(protocol & flags::SMFIP_NODATA, 0, "DATA must be sent");
    assert_eq!(protocol & flags::SMFIP_NR_DATA, 0, "DATA must be answered");

    // No DNS check and no greeting delay: nothing to start at CONNECT, so no reply asked.
    let quiet = Daemon::start(
        ACCESS,
        "[rdns]\nno_ptr = \"off\"\nforged = \"off\"\ndynamic = \"off\"\n[helo]\ncheck_resolves = false\n",
    );
    let protocol = negotiated_protocol(&quiet);
    assert_ne!(protocol & flags::SMFIP_NR_CONN, 0, "CONNECT needs no reply");
    assert_eq!(protocol & flags::SMFIP_NR_DATA, 0, "DATA must be answered");

    // A lookup that starts at HELO (the HELO name) or at MAIL (an RHSBL): that stage is
    // answered too, so Postfix sends it at once.
    let later = Daemon::start(
        ACCESS,
        "[helo]\ncheck_resolves = true\n[[dnsbl.domain_zones]]\nzone = \"dbl.test\"\n",
    );
    let protocol = negotiated_protocol(&later);
    assert_eq!(protocol & flags::SMFIP_NR_HELO, 0, "HELO answered");
    assert_eq!(protocol & flags::SMFIP_NR_MAIL, 0, "MAIL answered");
}

fn negotiated_protocol(d: &Daemon) -> u32 {
    let mut c = Client::tcp(d.port);
    let Reply::OptNeg {
        version, protocol, ..
    } = c.negotiate()
    else {
        panic!("no OPTNEG reply")
    };
    assert_eq!(version, 6);
    protocol
}

#[test]
fn verdicts_at_rcpt_over_inet_and_unix() {
    let d = Daemon::start(ACCESS, "");
    for mut c in [Client::tcp(d.port), Client::unix(&d.socket)] {
        c.negotiate();
        let r = session(&mut c, "192.0.2.10", "a@reject.example", "u@example.org");
        assert_eq!(reply_text(&r), "550 5.7.1 Access denied");
        // the postmaster exemption holds for the same sender
        assert_eq!(c.rcpt("postmaster@example.org"), Some(Reply::Continue));
        c.send(&Command::Abort);

        c.mail("x@banned.example");
        let r = c.rcpt("u@example.org").unwrap();
        assert_eq!(
            reply_text(&r),
            "550 Sender banned. Please use legitimate domain"
        );
        c.send(&Command::Abort);

        c.mail("x@tempfail.example");
        assert_eq!(
            reply_text(&c.rcpt("u@example.org").unwrap()),
            "451 4.7.1 Try again later"
        );
        c.send(&Command::Abort);

        c.mail("news@news.linkedin.com");
        assert_eq!(c.rcpt("u@example.org"), Some(Reply::Discard));
        c.send(&Command::Abort);

        c.mail("someone@good.example");
        assert_eq!(c.rcpt("u@example.org"), Some(Reply::Continue));
        assert_eq!(c.message().last(), Some(&Reply::Accept));
        c.send(&Command::Quit);
        assert!(c.closed_by_peer());
    }
    let log = d.wait_log("verdict=accept");
    assert!(log.contains("verdict=reject"), "{log}");
    assert!(log.contains("reply=\"550 5.7.1 Access denied\""), "{log}");
    assert!(log.contains("client_ip=192.0.2.10"), "{log}");
}

#[test]
fn every_worker_thread_count_gives_the_same_verdicts() {
    // `[milter] worker_threads`: 1 (the default, every other test), one per CPU (0) and more
    // threads than this machine has cores (4): the MTA sees the same replies on connections
    // open at once, whichever thread serves each.
    for threads in [0, 4] {
        let d = Daemon::start(ACCESS, &format!("worker_threads = {threads}\n"));
        let mut clients: Vec<Client> = (0..6)
            .map(|i| {
                if i % 2 == 0 {
                    Client::tcp(d.port)
                } else {
                    Client::unix(&d.socket)
                }
            })
            .collect();
        for c in &mut clients {
            c.negotiate();
        }
        for c in &mut clients {
            let r = session(c, "192.0.2.10", "a@reject.example", "u@example.org");
            assert_eq!(
                reply_text(&r),
                "550 5.7.1 Access denied",
                "threads {threads}"
            );
            c.send(&Command::Abort);
        }
        for c in &mut clients {
            c.mail("someone@good.example");
            assert_eq!(c.rcpt("u@example.org"), Some(Reply::Continue));
            assert_eq!(c.message().last(), Some(&Reply::Accept));
            c.send(&Command::Quit);
            assert!(c.closed_by_peer());
        }
        d.wait_log_count("verdict=accept", 6);
        assert_eq!(d.log().matches("verdict=reject").count(), 6, "{}", d.log());
    }
}

#[test]
fn trusted_clients_and_connect_rules() {
    let d = Daemon::start(ACCESS, "[trusted]\nnetworks = [\"192.0.2.200/32\"]\n");
    let mut c = Client::tcp(d.port);
    c.negotiate();
    let r = session(&mut c, "192.0.2.200", "a@reject.example", "u@example.org");
    assert_eq!(r, Reply::Accept, "trusted client bypasses rules");
    c.send(&Command::QuitNewConnection);
    // the same MTA connection is reused for the next SMTP session
    let r = session(&mut c, "192.0.2.66", "a@fine.example", "u@example.org");
    assert_eq!(reply_text(&r), "550 5.7.1 Access denied");
    c.send(&Command::QuitNewConnection);
    let r = session(&mut c, "192.0.2.10", "a@fine.example", "u@example.org");
    assert_eq!(r, Reply::Continue);
}

/// A sender's OK does not override `To:` entries, and is answered CONTINUE so the MTA keeps
/// asking about every later recipient (ACCEPT at RCPT would end its checks of the message).
#[test]
fn a_senders_ok_leaves_recipient_rules_in_force() {
    let access = "From:friend@yourdomain.org OK
To:gone@example.org ERROR:5.1.1:\"550 User unknown\"
To:spamtrap@example.org DISCARD
";
    let d = Daemon::start(access, "");
    let mut c = Client::tcp(d.port);
    c.negotiate();
    let r = session(
        &mut c,
        "192.0.2.10",
        "friend@yourdomain.org",
        "u@example.org",
    );
    assert_eq!(r, Reply::Continue);
    assert_eq!(
        reply_text(&c.rcpt("gone@example.org").unwrap()),
        "550 5.1.1 User unknown"
    );
    assert_eq!(c.rcpt("other@example.org"), Some(Reply::Continue));
    assert_eq!(c.message().last(), Some(&Reply::Accept));
    c.mail("friend@yourdomain.org");
    assert_eq!(c.rcpt("u@example.org"), Some(Reply::Continue));
    assert_eq!(c.rcpt("spamtrap@example.org"), Some(Reply::Discard));
    c.send(&Command::Abort);
    let log = d.wait_log("rcpt=<spamtrap@example.org>");
    assert!(log.contains("reply=\"550 5.1.1 User unknown\""), "{log}");
    assert!(log.contains("verdict=discard"), "{log}");
    assert!(
        log.contains("rcpt=<u@example.org,other@example.org>"),
        "the accepted recipients are logged with their message: {log}"
    );
}

#[test]
fn abort_keeps_the_connection_state() {
    let d = Daemon::start(ACCESS, "");
    let mut c = Client::tcp(d.port);
    c.negotiate();
    session(&mut c, "192.0.2.10", "a@fine.example", "u@example.org");
    c.send(&Command::Abort);
    c.mail("b@fine.example");
    assert_eq!(c.rcpt("v@example.org"), Some(Reply::Continue));
    c.message();
    let log = d.wait_log("from=<b@fine.example>");
    let line = log
        .lines()
        .find(|l| l.contains("from=<b@fine.example>"))
        .unwrap();
    assert!(
        line.contains("helo=helo.example"),
        "HELO kept after ABORT: {line}"
    );
    assert!(line.contains("client_ip=192.0.2.10"), "{line}");
}

#[test]
fn dry_run_tags_instead_of_rejecting() {
    let d = Daemon::start(ACCESS, "mode = \"dry-run\"\n");
    let mut c = Client::tcp(d.port);
    c.negotiate();
    let r = session(&mut c, "192.0.2.10", "a@reject.example", "u@example.org");
    assert_eq!(r, Reply::Continue);
    let replies = c.message();
    let Some(Reply::AddHeader { name, value }) = replies.first() else {
        panic!("no header added: {replies:?}")
    };
    assert_eq!(&name[..], b"X-Mxsentry");
    let value = String::from_utf8_lossy(value);
    assert!(value.starts_with("would-reject"), "{value}");
    assert_eq!(replies.last(), Some(&Reply::Accept));
}

#[test]
fn bad_input_closes_one_connection_not_the_daemon() {
    let mut d = Daemon::start(ACCESS, "");
    let good = |d: &Daemon| {
        let mut c = Client::tcp(d.port);
        c.negotiate();
        let r = session(&mut c, "192.0.2.10", "a@reject.example", "u@example.org");
        assert_eq!(reply_text(&r), "550 5.7.1 Access denied");
    };

    // unknown command
    let mut c = Client::tcp(d.port);
    c.negotiate();
    c.send_raw(&[0, 0, 0, 1, b'Z']).unwrap();
    assert!(c.closed_by_peer());
    d.wait_log("unknown command");
    good(&d);

    // a malformed CONNECT (bad address family)
    let mut c = Client::tcp(d.port);
    c.negotiate();
    c.send_raw(&[0, 0, 0, 5, b'C', b'h', 0, b'X', 0]).unwrap();
    assert!(c.closed_by_peer());
    good(&d);

    // a frame longer than the limit
    let mut c = Client::tcp(d.port);
    c.send_raw(&[0x7f, 0xff, 0xff, 0xff, b'B']).unwrap();
    assert!(c.closed_by_peer());
    d.wait_log("exceeds limit");
    good(&d);

    // dropped mid-message and mid-frame
    let mut c = Client::tcp(d.port);
    c.negotiate();
    c.connect("client.example", "192.0.2.10");
    c.mail("a@fine.example");
    c.send_raw(&[0, 0, 0, 40, b'R', b'<']).unwrap();
    drop(c);
    good(&d);

    // commands before negotiation
    let mut c = Client::tcp(d.port);
    c.send(&Command::Helo {
        name: bytes::Bytes::from_static(b"early.example"),
    });
    assert!(c.closed_by_peer());
    d.wait_log("before option negotiation");

    // 1,000 garbage connections in a row
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for i in 0..1000 {
        let mut c = Client::tcp(d.port);
        let mut junk = [0u8; 32];
        for b in &mut junk {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *b = seed as u8;
        }
        // every third connection just disconnects without a byte
        if i % 3 != 0 {
            let _ = c.send_raw(&junk);
        }
    }
    good(&d);
    assert!(d.is_running());
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let mut d = Daemon::start(ACCESS, "");
    let mut c = Client::tcp(d.port);
    c.negotiate();
    session(&mut c, "192.0.2.10", "a@fine.example", "u@example.org");
    d.signal("TERM");
    // the session in flight can still finish
    c.message();
    c.send(&Command::Quit);
    let status = d.wait_exit(Duration::from_secs(30)).expect("daemon exited");
    assert!(status.success());
    assert!(!d.socket.exists(), "unix socket removed at exit");
}

#[test]
fn sighup_reloads_rules_and_keeps_them_on_error() {
    let d = Daemon::start(ACCESS, "");
    let access = d.config_dir().join("access");
    std::fs::write(&access, "From:fine.example REJECT\n").unwrap();
    d.signal("HUP");
    d.wait_log("configuration reloaded");
    let mut c = Client::tcp(d.port);
    c.negotiate();
    let r = session(&mut c, "192.0.2.10", "a@fine.example", "u@example.org");
    assert_eq!(reply_text(&r), "550 5.7.1 Access denied");

    std::fs::write(&access, "From:fine.example REJCT\n").unwrap();
    d.signal("HUP");
    let log = d.wait_log("reload failed");
    assert!(log.contains("access:1:"), "file:line in the error: {log}");
    let mut c = Client::tcp(d.port);
    c.negotiate();
    let r = session(&mut c, "192.0.2.10", "a@fine.example", "u@example.org");
    assert_eq!(reply_text(&r), "550 5.7.1 Access denied", "old rules kept");
}

/// Sockets and files get the narrowest modes that work, whatever the umask: the milter socket
/// 0660 (the owner and `socket_group` connect), the greylist store's directory 0700 (it lists
/// who mails whom).
#[test]
fn sockets_and_files_get_narrow_modes() {
    use std::os::unix::fs::PermissionsExt;
    let d = Daemon::start("", "[greylist]\nenabled = true\n");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&d.socket), 0o660, "{}", d.socket.display());
    // The store is a directory: 0700 keeps every file in it to the daemon's user.
    let db = d.config_dir().join("greylist.db");
    assert_eq!(mode(&db), 0o700, "{}", db.display());
}
