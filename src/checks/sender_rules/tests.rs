//! Behaviour of the whole check: parsing, lookup orders, regex fallback, import report.

use std::net::IpAddr;

use proptest::prelude::*;

use super::*;

fn table(text: &str) -> AccessTable {
    let (t, errors) = AccessTable::parse(text);
    assert!(errors.is_empty(), "unexpected errors: {errors:?}");
    t
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `line action` of what a sender lookup found, e.g. "3 REJECT".
fn sender(t: &AccessTable, addr: &str) -> Option<String> {
    t.lookup_sender(addr)
        .map(|m| format!("{} {}", m.entry.line, m.entry.action))
}

fn rcpt(t: &AccessTable, addr: &str) -> Option<String> {
    t.lookup_recipient(addr)
        .map(|m| format!("{} {}", m.entry.line, m.entry.action))
}

fn client(t: &AccessTable, addr: &str, host: Option<&str>) -> Option<String> {
    t.lookup_client(ip(addr), host)
        .map(|m| format!("{} {}", m.entry.line, m.entry.action))
}

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

#[test]
fn every_tag_and_untagged_fallback() {
    let t = table(
        "From:spam.example REJECT\n\
         To:spam.example DISCARD\n\
         Connect:spam.example TEMPFAIL\n\
         both.example OK\n",
    );
    assert_eq!(sender(&t, "a@spam.example"), s("1 REJECT"));
    assert_eq!(rcpt(&t, "a@spam.example"), s("2 DISCARD"));
    assert_eq!(
        client(&t, "192.0.2.1", Some("mx.spam.example")),
        s("3 TEMPFAIL")
    );
    // untagged entries are consulted by all three lookups
    assert_eq!(sender(&t, "a@both.example"), s("4 OK"));
    assert_eq!(rcpt(&t, "a@both.example"), s("4 OK"));
    assert_eq!(client(&t, "192.0.2.1", Some("both.example")), s("4 OK"));
    assert_eq!(
        t.entries().map(|e| e.tag).collect::<Vec<_>>(),
        [Tag::From, Tag::To, Tag::Connect, Tag::Untagged]
    );
}

#[test]
fn tagged_before_untagged_at_each_level() {
    let t = table(
        "example.com OK\n\
         From:example.com REJECT\n\
         news.example.com DISCARD\n",
    );
    // same key: the tagged form wins
    assert_eq!(sender(&t, "a@example.com"), s("2 REJECT"));
    // a more specific untagged key still beats a less specific tagged one
    assert_eq!(sender(&t, "a@news.example.com"), s("3 DISCARD"));
    // the recipient lookup only sees the untagged one
    assert_eq!(rcpt(&t, "a@example.com"), s("1 OK"));
}

#[test]
fn sender_lookup_order() {
    let t = table(
        "From:spammer@aol.com REJECT\n\
         From:good@another.dom OK\n\
         From:another.dom REJECT\n\
         From:free.stealth.mailer@ ERROR:550 Spam not accepted\n\
         From:boss@ OK\n\
         From:corp.example DISCARD\n",
    );
    assert_eq!(sender(&t, "spammer@aol.com"), s("1 REJECT"));
    assert_eq!(sender(&t, "other@aol.com"), None);
    // full address beats domain
    assert_eq!(sender(&t, "good@another.dom"), s("2 OK"));
    assert_eq!(sender(&t, "bad@another.dom"), s("3 REJECT"));
    // user@ matches at any domain
    assert_eq!(
        sender(&t, "FREE.STEALTH.MAILER@anywhere.example"),
        s("4 ERROR:\"550 Spam not accepted\"")
    );
    // sendmail order is F, U, D: user@ beats the domain
    assert_eq!(sender(&t, "boss@corp.example"), s("5 OK"));
    assert_eq!(sender(&t, "clerk@corp.example"), s("6 DISCARD"));
    // a sender without @ is a local user: only user@ applies
    assert_eq!(sender(&t, "boss"), s("5 OK"));
    assert_eq!(sender(&t, "corp.example"), None);
}

#[test]
fn domains_match_subdomains_most_specific_first() {
    let t = table(
        "From:cyberspammer.com ERROR:\"550 We don't accept mail from spammers\"\n\
         From:okay.cyberspammer.com OK\n\
         linkedin.com DISCARD\n\
         Connect:tld REJECT\n",
    );
    assert_eq!(sender(&t, "x@okay.cyberspammer.com"), s("2 OK"));
    assert_eq!(sender(&t, "x@deep.okay.cyberspammer.com"), s("2 OK"));
    assert_eq!(
        sender(&t, "x@mail.cyberspammer.com"),
        s("1 ERROR:\"550 We don't accept mail from spammers\"")
    );
    assert_eq!(sender(&t, "x@notcyberspammer.com"), None);
    // seed: linkedin.com DISCARD hits news@news.linkedin.com
    let m = t.lookup_sender("news@news.linkedin.com").unwrap();
    assert_eq!(m.entry.action, Action::Discard);
    assert_eq!(m.to_string(), "access:3: linkedin.com DISCARD");
    assert_eq!(
        client(&t, "192.0.2.1", Some("host.in.the.tld")),
        s("4 REJECT")
    );
}

#[test]
fn addresses_are_case_insensitive_and_normalised() {
    let t = table("From:User@Example.COM REJECT\nTo:Postmaster@ OK\n");
    assert_eq!(sender(&t, "<USER@example.com>"), s("1 REJECT"));
    assert_eq!(sender(&t, "user@EXAMPLE.com."), s("1 REJECT"));
    assert_eq!(
        sender(&t, "<@relay.example:user@example.com>"),
        s("1 REJECT")
    );
    assert_eq!(rcpt(&t, "<POSTMASTER@x.example>"), s("2 OK"));
}

#[test]
fn plus_detail() {
    let t = table(
        "From:list+*@example.com DISCARD\n\
         From:user@example.com REJECT\n\
         To:me+spam@ REJECT\n\
         To:me@ OK\n",
    );
    assert_eq!(sender(&t, "list+bounce-123@example.com"), s("1 DISCARD"));
    assert_eq!(sender(&t, "list@example.com"), None);
    assert_eq!(sender(&t, "user+tag@example.com"), s("2 REJECT"));
    assert_eq!(rcpt(&t, "me+spam@x.example"), s("3 REJECT"));
    assert_eq!(rcpt(&t, "me+other@x.example"), s("4 OK"));
    assert_eq!(sender(&t, "+weird@example.com"), None);
}

#[test]
fn null_sender() {
    let t = table("From:<> ERROR:\"550 5.7.1 No bounces here\"\n");
    for null in ["", "<>", " <> "] {
        assert_eq!(
            sender(&t, null),
            s("1 ERROR:5.7.1:\"550 No bounces here\""),
            "{null:?}"
        );
    }
    assert_eq!(sender(&t, "a@b.example"), None);
    assert_eq!(rcpt(&t, ""), None);
    let t = table("<> REJECT\n");
    assert_eq!(sender(&t, ""), s("1 REJECT"));
    assert!(table("").lookup_sender("").is_none());
}

#[test]
fn ipv4_octet_prefixes() {
    let t = table(
        "Connect:192.0.2 REJECT\n\
         Connect:10 DISCARD\n\
         Connect:198.51.100.7 TEMPFAIL\n\
         Connect:[203.0.113.9] OK\n",
    );
    assert_eq!(client(&t, "192.0.2.1", None), s("1 REJECT"));
    assert_eq!(client(&t, "192.0.2.255", None), s("1 REJECT"));
    // octet boundaries, not string prefixes
    assert_eq!(client(&t, "192.0.20.1", None), None);
    assert_eq!(client(&t, "192.0.3.1", None), None);
    assert_eq!(client(&t, "10.200.3.4", None), s("2 DISCARD"));
    assert_eq!(client(&t, "100.0.0.1", None), None);
    assert_eq!(client(&t, "198.51.100.7", None), s("3 TEMPFAIL"));
    assert_eq!(client(&t, "198.51.100.70", None), None);
    assert_eq!(client(&t, "203.0.113.9", Some("[203.0.113.9]")), s("4 OK"));
    // IPv4-mapped IPv6 clients are looked up as IPv4
    assert_eq!(client(&t, "::ffff:192.0.2.9", None), s("1 REJECT"));
}

#[test]
fn ipv6_prefixes_and_compressed_forms() {
    let t = table(
        "Connect:IPv6:2002:c0a8:02c7 RELAY\n\
         Connect:IPv6:2002:c0a8:51d2::23f4 REJECT\n\
         Connect:IPv6:1:2:3:4:5:6:7 DISCARD\n\
         IPv6:2001:0db8:0:0:0:0:0:1 TEMPFAIL\n",
    );
    assert_eq!(client(&t, "2002:c0a8:2c7::1", None), s("1 OK"));
    assert_eq!(client(&t, "2002:c0a8:2c7:ffff::", None), s("1 OK"));
    assert_eq!(client(&t, "2002:c0a8:2c70::1", None), None);
    assert_eq!(
        client(&t, "2002:c0a8:51d2:0:0:0:0:23f4", None),
        s("2 REJECT")
    );
    assert_eq!(client(&t, "2002:c0a8:51d2::23f5", None), None);
    assert_eq!(client(&t, "1:2:3:4:5:6:7:8", None), s("3 DISCARD"));
    assert_eq!(client(&t, "1:2:3:4:5:6:8:8", None), None);
    assert_eq!(client(&t, "2001:db8::1", None), s("4 TEMPFAIL"));
    // the compressed and expanded spellings are the same key
    let (_, errors) =
        AccessTable::parse("IPv6:2001:db8::1 OK\nIPv6:2001:0db8:0:0:0:0:0:1 REJECT\n");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].line, 2);
    assert!(
        errors[0].reason.starts_with("duplicate key"),
        "{}",
        errors[0].reason
    );
}

#[test]
fn cidr_keys_merge_with_octet_prefixes_by_specificity() {
    let t = table(
        "Connect:192.0.2.0/25 REJECT\n\
         Connect:192.0.2.128/25 OK\n\
         Connect:10 REJECT\n\
         Connect:10.1.0.0/23 OK\n\
         Connect:10.1.1 DISCARD\n\
         Connect:2001:db8::/32 REJECT\n\
         Connect:IPv6:2001:db8:1 OK\n",
    );
    assert_eq!(client(&t, "192.0.2.1", None), s("1 REJECT"));
    assert_eq!(client(&t, "192.0.2.200", None), s("2 OK"));
    assert_eq!(client(&t, "10.9.9.9", None), s("3 REJECT"));
    assert_eq!(client(&t, "10.1.0.9", None), s("4 OK"));
    assert_eq!(
        client(&t, "10.1.1.9", None),
        s("5 DISCARD"),
        "/24 beats /23"
    );
    assert_eq!(client(&t, "2001:db8:ffff::1", None), s("6 REJECT"));
    assert_eq!(
        client(&t, "2001:db8:1::1", None),
        s("7 OK"),
        "/48 beats /32"
    );
    let (_, errors) = AccessTable::parse("Connect:10 OK\nConnect:10.0.0.0/8 REJECT\n");
    assert!(errors[0]
        .reason
        .contains("duplicate key `Connect:10.0.0.0/8` (first on line 1)"));
}

#[test]
fn client_host_name_first_then_ip() {
    let t = table(
        "Connect:friend.example OK\n\
         Connect:192.0.2 REJECT\n\
         Connect:128.32 RELAY\n\
         Connect:128.32.2 SKIP\n\
         Connect:skip.example SKIP\n\
         Connect:example REJECT\n",
    );
    // sendmail's check_relay looks up ${client_name} before ${client_addr}
    assert_eq!(
        client(&t, "192.0.2.5", Some("mx.friend.example")),
        s("1 OK")
    );
    assert_eq!(
        client(&t, "192.0.2.5", Some("mx.other.test")),
        s("2 REJECT")
    );
    // unverified names are not looked up
    for unverified in [None, Some("[192.0.2.5]"), Some("unknown"), Some("")] {
        assert_eq!(
            client(&t, "192.0.2.5", unverified),
            s("2 REJECT"),
            "{unverified:?}"
        );
    }
    assert_eq!(client(&t, "198.51.100.1", Some("[198.51.100.1]")), None);
    // README example: 128.32.*.* relays except 128.32.2.*, which SKIP exempts
    assert_eq!(client(&t, "128.32.1.1", None), s("3 OK"));
    assert_eq!(client(&t, "128.32.2.1", None), s("4 SKIP"));
    // SKIP on the name stops its parents but the address is still looked up
    assert_eq!(
        client(&t, "192.0.2.5", Some("a.skip.example")),
        s("2 REJECT")
    );
    assert_eq!(
        client(&t, "198.51.100.1", Some("a.skip.example")),
        s("5 SKIP")
    );
    assert_eq!(
        client(&t, "198.51.100.1", Some("a.other.example")),
        s("6 REJECT")
    );
}

#[test]
fn skip_stops_the_parents_of_a_domain() {
    let t = table(
        "From:example.com REJECT\n\
         From:ok.example.com SKIP\n\
         From:user@ok.example.com DISCARD\n",
    );
    assert_eq!(sender(&t, "a@x.example.com"), s("1 REJECT"));
    assert_eq!(sender(&t, "a@x.ok.example.com"), s("2 SKIP"));
    assert_eq!(sender(&t, "user@ok.example.com"), s("3 DISCARD"));
    let (_, errors) = AccessTable::parse("From:a@b.example SKIP\nFrom:a@ SKIP\nFrom:<> SKIP\n");
    assert_eq!(errors.len(), 3);
    assert!(
        errors[0].reason.contains("SKIP can only be used"),
        "{}",
        errors[0].reason
    );
}

#[test]
fn address_literal_senders_use_ip_keys() {
    let t = table("From:[192.0.2] OK\nFrom:[IPv6:2001:db8::1] REJECT\nFrom:198.51.100 DISCARD\n");
    assert_eq!(sender(&t, "u@[192.0.2.44]"), s("1 OK"));
    assert_eq!(sender(&t, "u@[IPv6:2001:DB8:0::1]"), s("2 REJECT"));
    assert_eq!(sender(&t, "u@[198.51.100.1]"), s("3 DISCARD"));
    assert_eq!(sender(&t, "u@[not-an-ip]"), None);
}

#[test]
fn dot_domains_match_only_subdomains() {
    let t = table("From:.example.com REJECT\n");
    assert_eq!(sender(&t, "a@mx.example.com"), s("1 REJECT"));
    assert_eq!(sender(&t, "a@a.b.example.com"), s("1 REJECT"));
    assert_eq!(sender(&t, "a@example.com"), None);
}

#[test]
fn comments_blank_lines_and_errors_with_line_numbers() {
    let text = "# access file\n\
        \n\
        \t  # indented comment\n\
        From:a.example\tRELAY\n\
        From:b.example REJCT\n\
        From:c.example\n\
        Connect:192.0.300 REJECT\n\
        From:d.example ERROR:5.7.1:\"450 x\"\n\
        From:e.example ERROR:\"250 fine\"\n\
        \x20  From:f.example   ERROR:5.7.1:\"550 indented is fine\"   \n";
    let (t, errors) = AccessTable::parse(text);
    assert_eq!(t.len(), 2);
    assert_eq!(t.entries().map(|e| e.line).collect::<Vec<_>>(), [4, 10]);
    assert_eq!(
        t.entries().next().unwrap().action,
        Action::Ok,
        "RELAY is OK"
    );
    let got: Vec<(usize, &str)> = errors.iter().map(|e| (e.line, e.reason.as_str())).collect();
    assert_eq!(got[0], (5, "unknown action `REJCT`"));
    assert_eq!(got[1].0, 6);
    assert!(got[1].1.starts_with("missing value"), "{}", got[1].1);
    assert_eq!(got[2].0, 7);
    assert!(got[2].1.starts_with("bad IP prefix"), "{}", got[2].1);
    assert_eq!(got[3].0, 8);
    assert!(
        got[3].1.contains("does not match reply code 450"),
        "{}",
        got[3].1
    );
    assert_eq!(got[4].0, 9);
    assert!(got[4].1.contains("not a 4xx"), "{}", got[4].1);
    assert_eq!(errors.len(), 5);
    assert_eq!(errors[0].to_string(), "line 5: unknown action `REJCT`");
}

#[test]
fn seed_error_reply_is_exact() {
    let t = table("From:spam.example ERROR:\"550 Sender banned. Please use legitimate domain\"\n");
    let m = t.lookup_sender("x@spam.example").unwrap();
    let Action::Error(reply) = &m.entry.action else {
        panic!("not an error: {:?}", m.entry.action)
    };
    assert_eq!(
        **reply,
        SmtpReply {
            code: 550,
            enhanced: None,
            text: "Sender banned. Please use legitimate domain".into()
        }
    );
    assert_eq!(
        reply.to_string(),
        "550 Sender banned. Please use legitimate domain"
    );
    assert!(!reply.is_temporary());
}

#[test]
fn quoted_local_parts_do_not_crash() {
    let t = table("From:\"a@b\"@example.com REJECT\nFrom:example.com DISCARD\n");
    assert_eq!(sender(&t, "\"a@b\"@example.com"), s("1 REJECT"));
    assert_eq!(sender(&t, "\"x@y\"@example.com"), s("2 DISCARD"));
    assert_eq!(sender(&t, "\"a@b\"@"), None);
    assert_eq!(sender(&t, "@"), None);
    assert_eq!(sender(&t, "@@@"), None);
}

fn rules(access: &str, regex: &[(&str, &str)]) -> SenderRules {
    SenderRules {
        access: table(access),
        regex: regex
            .iter()
            .map(|(p, a)| RegexRule::new(p, Action::parse(a).unwrap()).unwrap())
            .collect(),
    }
}

#[test]
fn regex_fallback() {
    let r = rules(
        "From:example.com OK\nFrom:skip.example.com SKIP\nConnect:192.0.2 REJECT\nTo:x@ DISCARD\n",
        &[
            (r"^[^@]+@emalsrv\.", "ERROR:\"550 5.7.1 Sender banned\""),
            (r"^exempt@", "SKIP"),
            (r"^[^@]+@(?i)COMPLAINS\.", "REJECT"),
            (r"@", "TEMPFAIL"),
        ],
    );
    let hit = r.sender_hit("<Bounce@emalsrv.example.net>").unwrap();
    assert_eq!(
        hit.describe(),
        r#"regex ^[^@]+@emalsrv\. ERROR:5.7.1:"550 Sender banned""#
    );
    assert!(matches!(hit.source, RuleSource::Regex(_)));
    // an access decision wins over the regexes
    let hit = r.sender_hit("bounce@emalsrv.example.com").unwrap();
    assert_eq!(hit.describe(), "access:1 From:example.com OK");
    // an access SKIP is no decision: the regexes run
    let hit = r.sender_hit("a@skip.example.com").unwrap();
    assert_eq!(*hit.action, Action::Tempfail);
    // first matching regex wins; a SKIP regex ends the search without a decision
    assert_eq!(
        *r.sender_hit("exempt@anything.test").unwrap().action,
        Action::Skip
    );
    assert_eq!(
        *r.sender_hit("a@complains.test").unwrap().action,
        Action::Reject
    );
    assert!(r.sender_hit("").is_none());
    let only_skip = rules("From:skip.example SKIP\n", &[]);
    assert_eq!(
        *only_skip.sender_hit("a@skip.example").unwrap().action,
        Action::Skip
    );
    // connect and recipient hits come from the access table only
    let hit = r.connect_hit(ip("192.0.2.1"), None).unwrap();
    assert_eq!(hit.describe(), "access:3 Connect:192.0.2 REJECT");
    assert_eq!(
        *r.recipient_hit("x@y.test").unwrap().action,
        Action::Discard
    );
    assert!(r.recipient_hit("bounce@emalsrv.example.net").is_none());
}

#[test]
fn hundred_thousand_entries() {
    let mut text = String::with_capacity(4_000_000);
    for i in 0..100_000u32 {
        let (a, b) = (i / 256, i % 256);
        let (hi, mid) = (i >> 16, (i >> 8) & 255);
        match i % 4 {
            0 => text.push_str(&format!("From:spam{i}.example REJECT\n")),
            1 => text.push_str(&format!("From:user{i}@example.org DISCARD\n")),
            2 => text.push_str(&format!("Connect:10.{hi}.{mid}.{b} REJECT\n")),
            _ => text.push_str(&format!("Connect:IPv6:2001:db8:{a:x}:{b:x} TEMPFAIL\n")),
        }
    }
    let t = table(&text);
    assert_eq!(t.len(), 100_000);
    assert_eq!(sender(&t, "x@mx.spam99996.example"), s("99997 REJECT"));
    assert_eq!(sender(&t, "user99997@example.org"), s("99998 DISCARD"));
    assert_eq!(sender(&t, "user99998@example.org"), None);
    assert_eq!(client(&t, "10.0.134.110", None), s("34415 REJECT"));
    assert_eq!(client(&t, "2001:db8:186:9f::1", None), s("100000 TEMPFAIL"));
    assert_eq!(client(&t, "2001:db8:186:a0::1", None), None);
}

#[test]
fn import_report_on_a_mixed_file() {
    let text = "# converted from sendmail\n\
        From:example.com DISCARD\n\
        \n\
        From:bad.example REJCT\n\
        Connect:192.0.2 RELAY\n\
        To:abuse@ OK\n\
        spam.example ERROR:5.7.1:550 Go away\n\
        Spam:abuse@ FRIEND\n";
    let (report, bad) = import_report(text);
    assert_eq!(bad, 2);
    assert_eq!(
        report,
        "line 2: From:example.com DISCARD\n\
         line 4: cannot use: unknown action `REJCT`: From:bad.example REJCT\n\
         line 5: Connect:192.0.2 OK\n\
         line 6: To:abuse@ OK\n\
         line 7: spam.example ERROR:5.7.1:\"550 Go away\"\n\
         line 8: cannot use: unsupported tag `Spam:` (mxsentry understands From:, To: and \
         Connect:): Spam:abuse@ FRIEND\n\
         4 rules understood, 2 lines not understood\n"
    );
    assert_eq!(
        import_report(""),
        ("0 rules understood, 0 lines not understood\n".into(), 0)
    );
}

#[test]
fn canonical_form_round_trips() {
    let text = "from:A.example relay\nCONNECT:IPv6:2001:DB8 skip\n<> ERROR:\"550 5.7.1 x y\"\n";
    let t = table(text);
    let canonical: String = t.entries().map(|e| format!("{e}\n")).collect();
    assert_eq!(
        canonical,
        "From:a.example OK\nConnect:ipv6:2001:db8 SKIP\n<> ERROR:5.7.1:\"550 x y\"\n"
    );
    let again = table(&canonical);
    let twice: String = again.entries().map(|e| format!("{e}\n")).collect();
    assert_eq!(canonical, twice);
}

proptest! {
    #[test]
    fn parse_and_lookups_never_panic(
        text in "([ -~\t]{0,40}\n){0,8}",
        addr in "\\PC{0,30}",
        a in any::<[u8; 16]>(),
    ) {
        let (t, errors) = AccessTable::parse(&text);
        prop_assert!(t.len() + errors.len() <= text.lines().count());
        let _ = t.lookup_sender(&addr);
        let _ = t.lookup_recipient(&addr);
        let _ = t.lookup_client(IpAddr::from(a), Some(&addr));
        let _ = import_report(&text);
    }

    #[test]
    fn octet_prefix_matches_exactly_its_network(
        o in any::<[u8; 4]>(),
        n in 1usize..=4,
        c in any::<[u8; 4]>(),
    ) {
        let key: Vec<String> = o[..n].iter().map(u8::to_string).collect();
        let t = table(&format!("Connect:{} REJECT\n", key.join(".")));
        let inside = o[..n] == c[..n];
        prop_assert_eq!(t.lookup_client(IpAddr::from(c), None).is_some(), inside);
    }
}
