//! The command line as an admin uses it: check-config, access import, run refusing bad config.

mod common;

use common::mxsentry;

#[test]
fn shipped_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/milter.toml");
    let (code, out, err) = mxsentry(&["check-config", "--config", path]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("OK"), "{out}");
}

#[test]
fn check_config_reports_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("milter.toml");
    std::fs::write(
        &path,
        "[milter]\nhostname = \"mx.example.org\"\nlisen = \"inet:1@127.0.0.1\"\n",
    )
    .unwrap();
    let p = path.to_str().unwrap();
    let (code, _, err) = mxsentry(&["check-config", "--config", p]);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("{p}:3:")), "{err}");
    assert!(err.contains("lisen"), "{err}");

    // a bad access-file line is reported with the access file's name and line
    let access = dir.path().join("access");
    std::fs::write(
        &access,
        "# comment\nFrom:ok.example OK\nFrom:bad.example REJCT\n",
    )
    .unwrap();
    std::fs::write(
        &path,
        format!(
            "[sender_rules]\naccess_file = {:?}\n",
            access.to_str().unwrap()
        ),
    )
    .unwrap();
    let (code, _, err) = mxsentry(&["check-config", "--config", p]);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("{}:3:", access.display())), "{err}");

    // run refuses the same config before listening
    let (code, _, err) = mxsentry(&["run", "--config", p]);
    assert_eq!(code, 1);
    assert!(err.contains(":3:"), "{err}");
}

#[test]
fn access_import_lists_rules_and_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let access = dir.path().join("access");
    std::fs::write(
        &access,
        "# sendmail access\nFrom:linkedin.com DISCARD\nConnect:192.0.2 REJECT\nemalsrv.example ERROR:\"550 Sender banned\"\nFrom:x.example FROBNICATE\n",
    )
    .unwrap();
    let (code, out, _) = mxsentry(&["access", "import", access.to_str().unwrap()]);
    assert_eq!(code, 1, "a line was not understood: {out}");
    assert!(out.contains("line 2"), "{out}");
    assert!(out.contains("From:linkedin.com DISCARD"), "{out}");
    assert!(out.contains("line 5"), "{out}");
    assert!(out.contains("FROBNICATE"), "{out}");
}

/// The case through `explain`: a sender's OK must not override `To:` entries.
#[test]
fn explain_applies_recipient_rules_after_a_senders_ok() {
    let dir = tempfile::tempdir().unwrap();
    let access = dir.path().join("access");
    std::fs::write(
        &access,
        "From:friend@yourdomain.org OK\nTo:gone@example.org ERROR:5.1.1:\"550 User unknown\"\n\
         To:spamtrap@example.org DISCARD\n",
    )
    .unwrap();
    let path = dir.path().join("milter.toml");
    // No DNS check is configured and the client is never looked up: nothing leaves loopback.
    std::fs::write(
        &path,
        format!(
            "[dns]\nnameservers = [\"127.0.0.1:9\"]\n[rdns]\nno_ptr = \"off\"\nforged = \"off\"\n\
             dynamic = \"off\"\n[greylist]\nenabled = false\n[sender_rules]\naccess_file = {:?}\n",
            access.to_str().unwrap()
        ),
    )
    .unwrap();
    let (code, out, err) = mxsentry(&[
        "explain",
        "--config",
        path.to_str().unwrap(),
        "--client-ip",
        "192.0.2.10",
        "--from",
        "friend@yourdomain.org",
        "--rcpt",
        "gone@example.org",
        "--rcpt",
        "spamtrap@example.org",
        "--rcpt",
        "u@example.org",
        "--json",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let r = &v["recipients"];
    assert_eq!(r[0]["verdict"], "reject", "{out}");
    assert_eq!(r[0]["reply"], "550 5.1.1 User unknown", "{out}");
    assert_eq!(r[1]["verdict"], "discard", "{out}");
    assert_eq!(r[2]["verdict"], "accept", "{out}");
}
