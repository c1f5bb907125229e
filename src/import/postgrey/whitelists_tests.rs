use super::*;

fn client(line: &str) -> Result<String, String> {
    map_client_line(line).map(|v| v.join(" "))
}

fn recipient(line: &str) -> Result<String, String> {
    map_recipient_line(line).map(|v| v.join(" "))
}

#[test]
fn client_lines_map_as_postgrey_reads_them() {
    // lines taken from Debian's /etc/postgrey/whitelist_clients
    assert_eq!(
        client("/^mail\\d+\\.telekom\\.de$/").unwrap(),
        "/^mail\\d+\\.telekom\\.de$/"
    );
    assert_eq!(client("Debian.ORG").unwrap(), "debian.org");
    assert_eq!(client("12.5.136.141").unwrap(), "12.5.136.141");
    assert_eq!(client("192.0.2.5/24").unwrap(), "192.0.2.0/24");
    assert_eq!(client("64.12.137").unwrap(), "64.12.137.0/24");
    // postgrey makes `a.b` a /24 of a.b.0.0 (NetAddr::IP->new("10.1", 24)): kept as it behaved
    assert_eq!(client("10.1").unwrap(), "10.1.0.0/24");
    assert_eq!(client("2001:db8::1").unwrap(), "2001:db8::1");
    assert_eq!(client("2001:db8::1/32").unwrap(), "2001:db8::/32");
    assert_eq!(
        client("/(?<=mx)\\d+/").unwrap_err(),
        "a regex mxsentry's engine refuses (error: look-around, including look-ahead and look-behind, is not supported)"
    );
    assert_eq!(
        client("2001:db8::zz").unwrap_err(),
        "\"2001:db8::zz\" is not an IP address"
    );
    assert_eq!(
        client("300.1.2.3").unwrap_err(),
        "\"300.1.2.3\" is not an IP address"
    );
    assert_eq!(
        client("*.example.com").unwrap_err(),
        "\"*.example.com\" is not a host name (letters, digits, '-', '_' and dots between labels; not all digits)"
    );
    assert_eq!(
        client(".example.com").unwrap_err(),
        "\".example.com\" is not a host name (letters, digits, '-', '_' and dots between labels; not all digits)"
    );
    assert!(client("12345").is_err());
}

#[test]
fn recipient_lines_map_as_postgrey_reads_them() {
    assert_eq!(
        recipient("postmaster@").unwrap(),
        "postmaster@ /^postmaster\\+[^@]+@/"
    );
    assert_eq!(
        recipient("Joe@Example.com").unwrap(),
        "joe@example.com /^joe\\+[^@]+@example\\.com$/"
    );
    assert_eq!(recipient("@example.com").unwrap(), "@example.com");
    assert_eq!(recipient("example.com").unwrap(), "example.com");
    assert_eq!(recipient("/^abuse@/").unwrap(), "/^abuse@/");
    assert_eq!(
        recipient("a@b@c").unwrap_err(),
        "more than one '@': not an address"
    );
    assert_eq!(recipient("@").unwrap_err(), "a lone '@' names no address");
    assert_eq!(
        recipient("a@ex!ample").unwrap_err(),
        "\"ex!ample\" is not a domain name"
    );
}

#[test]
fn files_report_every_unmapped_line_with_its_number() {
    let mut m = Mapping::default();
    let text = "# comment\n\nexample.com   # trailing comment\n*.bad\n  192.0.2.0/24\nfoo bar\n";
    map_file("wl", text, map_client_line, &mut m);
    assert_eq!(m.lines, vec!["# from wl", "example.com", "192.0.2.0/24"]);
    assert_eq!(
        m.unmapped,
        vec![
            "wl:4: \"*.bad\" is not a host name (letters, digits, '-', '_' and dots between labels; not all digits)",
            "wl:6: doesn't look like a host name (postgrey skips it too)",
        ]
    );
}

#[test]
fn settings_map_to_the_fragment() {
    let flags = PostgreyFlags {
        delay: Some(60),
        max_age: Some(10),
        retry_window: Some("36h".into()),
        auto_whitelist_clients: Some(3),
        lookup_by_host: true,
        ..PostgreyFlags::default()
    };
    let f = fragment(
        &flags,
        Some(Path::new("/etc/mxsentry/greylist-allow-clients")),
        None,
    )
    .unwrap();
    let settings: Vec<&str> = f
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(" #").next().unwrap_or("").trim())
        .collect();
    assert_eq!(
        settings,
        vec![
            "[greylist]",
            "delay = \"1m\"",
            "autowhite = \"10d\"",
            "retry_window = \"36h\"",
            "client_autowhite_after = 3",
            "ipv4_prefix = 32",
            "ipv6_prefix = 128",
            "pool_by_rdns = false",
            "allow_client_files = [\"/etc/mxsentry/greylist-allow-clients\"]",
        ]
    );
    // postgrey's defaults when no flag is given, said so
    let f = fragment(&PostgreyFlags::default(), None, None).unwrap();
    assert!(
        f.lines().any(|l| l.starts_with("autowhite = \"35d\"")
            && l.ends_with(" # postgrey's default --max-age=35")),
        "{f}"
    );
    assert!(f.contains("retry_window = \"2d\""), "{f}");
    assert!(f.contains("delay = \"5m\""), "{f}");
    assert_eq!(retry_window_secs("3").unwrap(), 3 * 86_400);
    assert!(fragment(
        &PostgreyFlags {
            retry_window: Some("2w".into()),
            ..PostgreyFlags::default()
        },
        None,
        None
    )
    .is_err());
}
