use std::net::IpAddr;
use std::path::Path;

use super::*;

const CLIENTS: &str = "/etc/mxsentry/greylist-allow-clients";
const SENDERS: &str = "/etc/mxsentry/greylist-allow-senders";
const RECIPIENTS: &str = "/etc/mxsentry/greylist-allow-recipients";

fn lists(clients: &str, senders: &str, recipients: &str) -> AllowLists {
    AllowLists::parse(&[
        (ListKind::Client, Path::new(CLIENTS), clients),
        (ListKind::Sender, Path::new(SENDERS), senders),
        (ListKind::Recipient, Path::new(RECIPIENTS), recipients),
    ])
    .unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `file:line (entry)` of the client entry that matches, or "" when none does.
fn client(l: &AllowLists, addr: &str, name: Option<&str>) -> String {
    l.client(ip(addr), name)
        .map(|h| h.to_string())
        .unwrap_or_default()
}

#[test]
fn comments_and_blank_lines() {
    assert_eq!(line_entry("# a comment"), None);
    assert_eq!(line_entry("   "), None);
    assert_eq!(
        line_entry("  example.com   # trailing comment"),
        Some("example.com")
    );
    assert_eq!(
        line_entry("example.com\t# tab before it"),
        Some("example.com")
    );
    // `#` inside an entry is not a comment
    assert_eq!(line_entry("a#b@example.com"), Some("a#b@example.com"));
    assert_eq!(line_entry("/^mx[0-9]#x/ # note"), Some("/^mx[0-9]#x/"));
}

#[test]
fn windows_line_ends_and_a_byte_order_mark_are_fine() {
    let l = lists("\u{feff}192.0.2.1\r\n# c\r\nexample.com\r\n", "", "");
    assert_eq!(
        client(&l, "192.0.2.1", None),
        format!("{CLIENTS}:1 (192.0.2.1)")
    );
    assert_eq!(
        client(&l, "192.0.2.2", Some("mx.example.com")),
        format!("{CLIENTS}:3 (example.com)")
    );
}

#[test]
fn client_entries_parse() {
    let net = |s: &str| ClientEntry::Net(s.parse().unwrap());
    assert_eq!(parse_client_entry("192.0.2.1"), Ok(net("192.0.2.1/32")));
    assert_eq!(
        parse_client_entry("2001:db8::1"),
        Ok(net("2001:db8::1/128"))
    );
    assert_eq!(
        parse_client_entry("::ffff:192.0.2.1"),
        Ok(net("192.0.2.1/32"))
    );
    assert_eq!(parse_client_entry("192.0.2.0/24"), Ok(net("192.0.2.0/24")));
    // host bits are cleared: the network is meant
    assert_eq!(parse_client_entry("192.0.2.77/24"), Ok(net("192.0.2.0/24")));
    assert_eq!(
        parse_client_entry("2001:DB8::/32"),
        Ok(net("2001:db8::/32"))
    );
    assert_eq!(
        parse_client_entry("Outbound.Protection.Outlook.COM."),
        Ok(ClientEntry::Name("outbound.protection.outlook.com".into()))
    );
    assert_eq!(
        parse_client_entry("/^mail-.*\\.google\\.com$/"),
        Ok(ClientEntry::Regex("^mail-.*\\.google\\.com$".into()))
    );
}

#[test]
fn bad_client_entries_say_why() {
    let cases = [
        ("192.0.2.0/33", "not a network"),
        ("192.0.2", "partial IP address"),
        ("10.", "partial IP address"),
        (".example.com", "without the leading dot"),
        ("user@example.com", "addresses go in allow_sender_files"),
        (
            "exa mple.com",
            "one entry per line: `mple.com` follows `exa`",
        ),
        ("ex!ample.com", "not a domain name"),
        ("a..example.com", "not a domain name"),
        ("/unclosed", "a regex is written /pattern/"),
        ("//", "a regex is written /pattern/"),
        ("/a(b/", "invalid regex /a(b/"),
        ("2001:db8::zz", "not an IP address"),
    ];
    for (entry, why) in cases {
        let e = parse_client_entry(entry).unwrap_err();
        assert!(e.contains(why), "{entry}: {e}");
    }
}

#[test]
fn address_entries_parse() {
    use AddressEntry::*;
    let cases = [
        (
            "Postmaster@Example.COM",
            Address("postmaster@example.com".into()),
        ),
        ("<abuse@example.com>", Address("abuse@example.com".into())),
        ("example.com", Domain("example.com".into())),
        ("Postmaster@", LocalPart("postmaster".into())),
        ("@Example.com", ExactDomain("example.com".into())),
        ("/^noreply-[0-9]+@/", Regex("^noreply-[0-9]+@".into())),
    ];
    for (entry, want) in cases {
        assert_eq!(parse_address_entry(entry), Ok(want), "{entry}");
    }
    for (entry, why) in [
        ("@", "neither a local part nor a domain"),
        ("user@exa mple.com", "one entry per line"),
        ("user@.example.com", "leading dot"),
        ("user@ex!ample", "not a domain name"),
    ] {
        let e = parse_address_entry(entry).unwrap_err();
        assert!(e.contains(why), "{entry}: {e}");
    }
}

#[test]
fn bad_lines_are_reported_with_file_and_line_and_nothing_loads() {
    let e = AllowLists::parse(&[
        (
            ListKind::Client,
            Path::new(CLIENTS),
            "# providers\n192.0.2.1\n192.0.2\n\nexample.com\nbad!name\n",
        ),
        (
            ListKind::Recipient,
            Path::new(RECIPIENTS),
            "postmaster@\n@\n",
        ),
    ])
    .unwrap_err();
    let lines: Vec<&str> = e.lines().collect();
    assert_eq!(lines.len(), 3, "{e}");
    assert!(
        lines[0].starts_with(&format!("{CLIENTS}:3: `192.0.2`: a partial IP")),
        "{e}"
    );
    assert!(
        lines[1].starts_with(&format!("{CLIENTS}:6: `bad!name`")),
        "{e}"
    );
    assert!(lines[2].starts_with(&format!("{RECIPIENTS}:2: `@`")), "{e}");
}

#[test]
fn a_flood_of_bad_lines_is_cut_short() {
    let text = "not an entry\n".repeat(1000);
    let e = AllowLists::parse(&[(ListKind::Client, Path::new(CLIENTS), &text)]).unwrap_err();
    assert_eq!(e.lines().count(), MAX_REPORTED_ERRORS + 1, "{e}");
    assert!(e.ends_with("... and 980 more bad lines"), "{e}");
}

#[test]
fn missing_file_is_refused_by_load() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("clients");
    std::fs::write(&good, "192.0.2.1\n").unwrap();
    let missing = dir.path().join("missing");
    let cfg = GreylistConfig {
        allow_client_files: vec![good.clone()],
        allow_recipient_files: vec![missing.clone()],
        ..GreylistConfig::default()
    };
    let e = AllowLists::load(&cfg).unwrap_err();
    assert!(
        e.starts_with(&format!("{}: cannot read: ", missing.display())),
        "{e}"
    );
    let cfg = GreylistConfig {
        allow_client_files: vec![good.clone()],
        ..GreylistConfig::default()
    };
    let l = AllowLists::load(&cfg).unwrap();
    assert_eq!(l.counts(), (1, 0, 0));
    let hit = l.client(ip("192.0.2.1"), None).unwrap();
    assert_eq!(hit.to_string(), format!("{}:1 (192.0.2.1)", good.display()));
}

#[test]
fn clients_by_address_and_network() {
    let l = lists(
        "192.0.2.1\n198.51.100.0/24\n10.0.0.0/8\n2001:db8:1::/48\n2001:db8:2::5\n0.0.0.0/0 # not really\n",
        "",
        "",
    );
    assert_eq!(
        client(&l, "192.0.2.1", None),
        format!("{CLIENTS}:1 (192.0.2.1)")
    );
    assert_eq!(
        client(&l, "198.51.100.200", None),
        format!("{CLIENTS}:2 (198.51.100.0/24)")
    );
    // the longest prefix is reported
    assert_eq!(
        client(&l, "10.1.2.3", None),
        format!("{CLIENTS}:3 (10.0.0.0/8)")
    );
    assert_eq!(
        client(&l, "192.0.2.2", None),
        format!("{CLIENTS}:6 (0.0.0.0/0)")
    );
    // IPv6 networks and hosts; an IPv4-mapped client is its IPv4 address
    assert_eq!(
        client(&l, "2001:db8:1:ffff::9", None),
        format!("{CLIENTS}:4 (2001:db8:1::/48)")
    );
    assert_eq!(
        client(&l, "2001:db8:2::5", None),
        format!("{CLIENTS}:5 (2001:db8:2::5)")
    );
    assert_eq!(client(&l, "2001:db8:2::6", None), "");
    assert_eq!(client(&l, "2001:db8:3::1", None), "");
    assert_eq!(
        client(&l, "::ffff:192.0.2.1", None),
        format!("{CLIENTS}:1 (192.0.2.1)")
    );
}

#[test]
fn clients_by_verified_name_only() {
    let l = lists(
        "google.com\nOutlook.COM\n/^mta[0-9]+\\.Mailer\\.example$/\n",
        "",
        "",
    );
    assert!(l.needs_client_name());
    let google = format!("{CLIENTS}:1 (google.com)");
    assert_eq!(
        client(&l, "192.0.2.9", Some("mail-ed1-f54.google.com")),
        google
    );
    assert_eq!(client(&l, "192.0.2.9", Some("GOOGLE.COM.")), google);
    assert_eq!(
        client(&l, "192.0.2.9", Some("x.eur.prod.protection.outlook.com")),
        format!("{CLIENTS}:2 (Outlook.COM)")
    );
    // a suffix must end at a label: notgoogle.com is someone else
    assert_eq!(client(&l, "192.0.2.9", Some("mail.notgoogle.com")), "");
    assert_eq!(client(&l, "192.0.2.9", Some("google.com.evil.example")), "");
    // regexes: case-insensitive
    assert_eq!(
        client(&l, "192.0.2.9", Some("MTA42.mailer.EXAMPLE")),
        format!("{CLIENTS}:3 (/^mta[0-9]+\\.Mailer\\.example$/)")
    );
    assert_eq!(
        client(&l, "192.0.2.9", Some("mta42.mailer.example.evil")),
        ""
    );
    // no verified name (no PTR, forged, not looked up): names cannot match
    assert_eq!(client(&l, "192.0.2.9", None), "");
    assert!(!lists("192.0.2.1\n", "", "").needs_client_name());
}

#[test]
fn addresses_in_every_form() {
    let l = lists(
        "",
        "Newsletter@Shop.example\nbank.example\nnoreply@\n@exact.example\n/^bounce-[0-9]+@lists\\./\n",
        "postmaster@\n",
    );
    let sender = |a: &str| l.sender(a).map(|h| h.line);
    assert_eq!(sender("newsletter@shop.example"), Some(1));
    assert_eq!(sender("NEWSLETTER@SHOP.EXAMPLE."), Some(1));
    assert_eq!(sender("other@shop.example"), None);
    assert_eq!(sender("a@bank.example"), Some(2));
    assert_eq!(sender("a@mail.eu.bank.example"), Some(2));
    assert_eq!(sender("a@notbank.example"), None);
    assert_eq!(sender("NoReply@anywhere.example"), Some(3));
    assert_eq!(sender("x@exact.example"), Some(4));
    assert_eq!(sender("x@sub.exact.example"), None);
    assert_eq!(sender("BOUNCE-123@Lists.example.org"), Some(5));
    assert_eq!(sender("bounce-x@lists.example.org"), None);
    assert_eq!(sender(""), None, "the null sender is no entry's");
    // lists are separate: postmaster@ is a recipient entry only
    assert_eq!(sender("postmaster@example.org"), None);
    let hit = l.recipient("Postmaster@example.org").unwrap();
    assert_eq!(hit.kind, ListKind::Recipient);
    assert_eq!(hit.to_string(), format!("{RECIPIENTS}:1 (postmaster@)"));
    assert_eq!(l.counts(), (0, 5, 1));
}

#[test]
fn duplicates_are_fine_and_the_first_is_named() {
    let l = AllowLists::parse(&[
        (ListKind::Client, Path::new("/a"), "example.com\n"),
        (ListKind::Client, Path::new("/b"), "# same\nexample.com\n"),
    ])
    .unwrap();
    assert_eq!(
        client(&l, "192.0.2.1", Some("mx.example.com")),
        "/a:1 (example.com)"
    );
    assert_eq!(l.counts(), (2, 0, 0));
}

#[test]
fn many_entries_stay_hash_lookups() {
    // 1,000 networks, 1,000 names: every one found, nothing else.
    let mut text = String::new();
    for i in 0..1000u32 {
        text.push_str(&format!(
            "10.{}.{}.0/24\nhost{i}.example\n",
            i / 256,
            i % 256
        ));
    }
    let l = lists(&text, "", "");
    assert_eq!(l.counts(), (2000, 0, 0));
    for i in (0..1000u32).step_by(97) {
        let a = format!("10.{}.{}.9", i / 256, i % 256);
        assert_eq!(l.client(ip(&a), None).unwrap().line, 2 * i + 1);
        let n = format!("mx.host{i}.example");
        assert_eq!(l.client(ip("192.0.2.1"), Some(&n)).unwrap().line, 2 * i + 2);
    }
    assert!(l
        .client(ip("10.200.0.1"), Some("mx.host1000.example"))
        .is_none());
}

/// The files the .deb installs, by their installed path (Cargo.toml's assets).
const SHIPPED: [(ListKind, &str, &str); 4] = [
    (
        ListKind::Client,
        "/etc/mxsentry/greylist-allow-clients",
        include_str!("../../../../packaging/greylist-allow-clients"),
    ),
    (
        ListKind::Client,
        "/etc/mxsentry/greylist-allow-clients.providers",
        include_str!("../../../../packaging/greylist-allow-clients.providers"),
    ),
    (
        ListKind::Sender,
        "/etc/mxsentry/greylist-allow-senders",
        include_str!("../../../../packaging/greylist-allow-senders"),
    ),
    (
        ListKind::Recipient,
        "/etc/mxsentry/greylist-allow-recipients",
        include_str!("../../../../packaging/greylist-allow-recipients"),
    ),
];

#[test]
fn shipped_files_parse_and_the_packaged_config_names_them() {
    let files: Vec<_> = SHIPPED
        .iter()
        .map(|(k, p, t)| (*k, Path::new(*p), *t))
        .collect();
    let l = AllowLists::parse(&files).unwrap();
    // only the providers' list has entries; the others are commented examples
    let (clients, senders, recipients) = l.counts();
    assert!(clients > 50, "{clients}");
    assert_eq!((senders, recipients), (0, 0));
    let hit = l
        .client(ip("192.0.2.1"), Some("mail-ej1-f41.google.com"))
        .unwrap();
    assert_eq!(
        hit.file,
        Path::new("/etc/mxsentry/greylist-allow-clients.providers")
    );
    assert!(l
        .client(ip("192.0.2.1"), Some("a8-12.smtp-out.amazonses.com"))
        .is_some());
    assert!(l
        .client(
            ip("192.0.2.1"),
            Some("mail-db8eur05on2101.outbound.protection.outlook.com")
        )
        .is_some());
    // a cloud customer's machine is not a provider
    assert!(l
        .client(
            ip("192.0.2.1"),
            Some("ec2-192-0-2-1.compute-1.amazonaws.com")
        )
        .is_none());
    // the examples are valid once uncommented
    let uncommented: Vec<(ListKind, &Path, String)> = SHIPPED
        .iter()
        .map(|(k, p, t)| {
            let text: Vec<&str> = t
                .lines()
                .map(|line| match line.strip_prefix('#') {
                    Some(rest) if !rest.starts_with(' ') && !rest.is_empty() => rest,
                    _ => line,
                })
                .collect();
            (*k, Path::new(*p), text.join("\n"))
        })
        .collect();
    let files: Vec<_> = uncommented
        .iter()
        .map(|(k, p, t)| (*k, *p, t.as_str()))
        .collect();
    let l = AllowLists::parse(&files).unwrap();
    assert!(l.recipient("abuse@example.org").is_some());
    assert!(l.sender("x@billing.partner.example").is_some());

    // the packaged milter.toml names exactly these files
    let config = crate::config::Config::parse(
        include_str!("../../../../packaging/milter.toml"),
        Path::new("milter.toml"),
    )
    .unwrap();
    let g = &config.greylist;
    let named: Vec<&Path> = g
        .allow_client_files
        .iter()
        .chain(&g.allow_sender_files)
        .chain(&g.allow_recipient_files)
        .map(PathBuf::as_path)
        .collect();
    let shipped: Vec<&Path> = SHIPPED.iter().map(|(_, p, _)| Path::new(*p)).collect();
    assert_eq!(named, shipped);
}
