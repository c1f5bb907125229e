use super::*;

const CONF: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/milter-greylist/greylist.conf"
));

fn fixture() -> Mapping {
    map(CONF, "greylist.conf", Path::new("/etc/mxsentry"))
}

fn file<'a>(m: &'a Mapping, name: &str) -> &'a str {
    &m.files
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("no file {name}: {m:?}"))
        .content
}

/// The entries of a rule file (comments dropped).
fn entries(m: &Mapping, name: &str) -> Vec<String> {
    file(m, name)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_line_that_does_not_map_is_listed_with_its_number() {
    let m = fixture();
    let lines: Vec<usize> = m.unmapped.iter().map(|(l, _)| *l).collect();
    assert_eq!(
        lines,
        vec![4, 5, 6, 7, 8, 17, 28, 29, 37, 38, 39, 40, 41],
        "{:#?}",
        m.unmapped
    );
    let reason = |line: usize| &m.unmapped.iter().find(|(l, _)| *l == line).unwrap().1;
    assert!(
        reason(5).contains(
            "set [milter] listen = \"unix:/var/run/milter-greylist/milter-greylist.sock\""
        ),
        "{}",
        reason(5)
    );
    assert!(
        reason(28).starts_with("from /^no-bracket@/: anchored with ^"),
        "{}",
        reason(28)
    );
    assert!(reason(17).contains("redis"));
    assert!(reason(28).contains("never matched"));
    assert!(reason(29).contains("combines 2 clauses (addr AND rcpt)"));
    assert!(reason(37).contains("clause `helo`"));
    assert!(reason(39).contains("per-rule delays"));
    assert!(reason(40).contains("clause `msgsize`"));
}

#[test]
fn global_settings_map_to_greylist_keys() {
    let t = fixture().toml;
    // `racl greylist default delay 20m` (line 42) overrides `greylist 15m` (line 9)
    assert!(t.contains("delay = \"20m\"  # greylist.conf:42"), "{t}");
    // timeout 2d counts from the end of the delay: 2d + 20m from the first attempt
    assert!(
        t.contains("retry_window = \"2900m\"  # greylist.conf:11"),
        "{t}"
    );
    assert!(t.contains("autowhite = \"3d\"  # greylist.conf:10"), "{t}");
    assert!(t.contains("ipv4_prefix = 24  # greylist.conf:12"), "{t}");
    assert!(t.contains("ipv6_prefix = 64  # greylist.conf:13"), "{t}");
    assert!(
        t.contains("client_autowhite_after = 1  # greylist.conf:14 lazyaw"),
        "{t}"
    );
    assert!(
        t.contains("reply = \"450 4.7.1 Greylisted, please try again later\""),
        "{t}"
    );
    assert!(
        t.contains("[trusted]\nauthenticated = false  # greylist.conf:16 noauth"),
        "{t}"
    );
    assert!(
        t.contains("allow_client_files = [\"/etc/mxsentry/greylist-allow-clients\"]"),
        "{t}"
    );
    assert!(t.contains("access_file = \"/etc/mxsentry/access\""), "{t}");
}

#[test]
fn defaults_of_milter_greylist_when_unset() {
    let m = map("racl whitelist addr 192.0.2.1\n", "g.conf", Path::new("/d"));
    assert!(m.unmapped.is_empty(), "{:?}", m.unmapped);
    assert!(
        m.toml
            .contains("delay = \"30m\"  # milter-greylist's default"),
        "{}",
        m.toml
    );
    assert!(m.toml.contains("retry_window = \"7230m\""), "{}", m.toml);
    assert!(m.toml.contains("autowhite = \"1d\""), "{}", m.toml);
    assert!(m
        .toml
        .contains("# ipv4_prefix: milter-greylist matched single addresses"));
}

#[test]
fn whitelists_become_the_greylist_only_allow_lists() {
    let m = fixture();
    assert_eq!(
        entries(&m, rules::CLIENTS),
        vec![
            "127.0.0.0/8",
            "10.0.0.0/8",
            "192.0.2.0/28",
            "2001:db8:1::/48",
            "mail.example.com",
            r"/\.outbound\.example$/",
            "192.0.2.77/32",
            "192.0.2.78/32",
        ]
    );
    assert_eq!(
        entries(&m, rules::SENDERS),
        vec!["friend@example.net", r"/@partner\.example$/"]
    );
    assert_eq!(
        entries(&m, rules::RECIPIENTS),
        vec!["postmaster@example.org", "/^abuse@/"]
    );
    // each entry is preceded by its source line
    assert!(file(&m, rules::RECIPIENTS).contains("# greylist.conf:27\n/^abuse@/\n"));
}

#[test]
fn blacklists_become_access_entries_regex_rules_and_dnsbl_zones() {
    let m = fixture();
    assert_eq!(
        entries(&m, rules::ACCESS),
        vec![
            "Connect:203.0.113.7 REJECT",
            "From:spammer@bad.example ERROR:5.7.1:\"551 Go away, spammer\"",
            "To:former-employee@example.org REJECT",
        ]
    );
    let t = &m.toml;
    assert!(
        t.contains("[[sender_rules.regex]]  # greylist.conf:34\npattern = '@spam\\.example$'\naction = 'ERROR:5.7.1:\"554 No\"'"),
        "{t}"
    );
    assert!(
        t.contains("[[dnsbl.zones]]  # greylist.conf:36\nzone = \"zen.example\"\nreturncodes = [\"127.0.0.2-127.0.0.3\"]\nmessage = \"551 5.7.1 Listed in Spamhaus\""),
        "{t}"
    );
    // every access line parses as mxsentry's access file
    let (table, errors) = crate::checks::sender_rules::AccessTable::parse(file(&m, rules::ACCESS));
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(table.len(), 3);
}

#[test]
fn selective_greylisting_and_defaults_are_reported() {
    let m = map(
        "racl greylist rcpt a@example.org\nracl whitelist default\n",
        "g.conf",
        Path::new("/d"),
    );
    let lines: Vec<usize> = m.unmapped.iter().map(|(l, _)| *l).collect();
    assert_eq!(lines, vec![1, 2], "{:?}", m.unmapped);
    // without a whitelist default, a greylist rule is what happens anyway
    let m = map(
        "racl greylist rcpt a@example.org\n",
        "g.conf",
        Path::new("/d"),
    );
    assert!(m.unmapped.is_empty(), "{:?}", m.unmapped);
    // the first match wins: a second access entry for one key is reported, not written
    let m = map(
        "racl blacklist addr 192.0.2.1\nracl blacklist addr 192.0.2.1 msg \"x\"\n",
        "g.conf",
        Path::new("/d"),
    );
    assert_eq!(m.unmapped.len(), 1);
    assert!(m.unmapped[0].1.contains("already mapped from line 1"));
    // extendedregex changes how later regexes read
    let m = map(
        "racl whitelist rcpt /a+@x/\nextendedregex\nracl whitelist rcpt /b+@x/\n",
        "g.conf",
        Path::new("/d"),
    );
    assert_eq!(entries(&m, rules::RECIPIENTS), vec![r"/a\+@x/", "/b+@x/"]);
}

#[test]
fn dnsrbl_whitelist_old_forms_and_syntax_errors() {
    let m = map(
        "dnsrbl \"WL\" list.dnswl.example 127.0.10.0/24\n\
         racl whitelist dnsrbl \"WL\"\n\
         racl whitelist not addr 192.0.2.1\n\
         racl whitelist list \"nobody\"\n\
         racl blacklist msg \"unterminated\n\
         testmode\n\
         rcpt user@example.org\n",
        "g.conf",
        Path::new("/d"),
    );
    assert!(
        m.toml.contains("[[dnsbl.allow_zones]]  # g.conf:2\nzone = \"list.dnswl.example\"\nreturncodes = [\"127.0.10.0-127.0.10.255\"]"),
        "{}",
        m.toml
    );
    let reasons: Vec<String> = m
        .unmapped
        .iter()
        .map(|(l, r)| format!("{l}: {r}"))
        .collect();
    assert_eq!(reasons.len(), 5, "{reasons:#?}");
    assert!(reasons[0].starts_with("3: negated clause"), "{reasons:#?}");
    assert!(
        reasons[1].starts_with("4: list \"nobody\" is not defined"),
        "{reasons:#?}"
    );
    assert!(
        reasons[2].starts_with("5: unterminated quoted string"),
        "{reasons:#?}"
    );
    assert!(reasons[3].starts_with("6: testmode"), "{reasons:#?}");
    assert!(
        reasons[4].starts_with("7: rcpt in test mode"),
        "{reasons:#?}"
    );
}

#[test]
fn data_stage_blacklists_map_whitelists_do_not() {
    let m = map(
        "dacl blacklist addr 192.0.2.9\ndacl whitelist addr 192.0.2.10\ndacl greylist default\n",
        "g.conf",
        Path::new("/d"),
    );
    assert_eq!(entries(&m, rules::ACCESS), vec!["Connect:192.0.2.9 REJECT"]);
    let lines: Vec<usize> = m.unmapped.iter().map(|(l, _)| *l).collect();
    assert_eq!(lines, vec![2, 3], "{:?}", m.unmapped);
}
