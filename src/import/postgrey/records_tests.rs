use super::*;
use crate::import::postgrey::db_dump::parse_dump;

fn records(dump: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    parse_dump(dump.as_bytes(), |k, v| out.push((k.to_vec(), v.to_vec()))).unwrap();
    out
}

const DEFAULT: &str = include_str!("../../../tests/fixtures/postgrey/postgrey.db.dump");
const BY_HOST: &str =
    include_str!("../../../tests/fixtures/postgrey/postgrey-lookup-by-host.db.dump");
const PRIVACY: &str = include_str!("../../../tests/fixtures/postgrey/postgrey-privacy.db.dump");
const CLIENTS: &str = include_str!("../../../tests/fixtures/postgrey/postgrey_clients.db.dump");

fn greylist(extra: &str) -> GreylistConfig {
    let text = format!("[greylist]\nautowhite = \"35d\"\nretry_window = \"2d\"\n{extra}");
    crate::config::Config::parse(&text, std::path::Path::new("t.toml"))
        .unwrap()
        .greylist
}

fn triplets(dump: &str) -> Vec<Result<Triplet, String>> {
    let s = PostgreySettings::default();
    records(dump)
        .iter()
        .map(|(k, v)| parse_triplet(k, v, &s))
        .collect()
}

#[test]
fn real_postgrey_keys_parse() {
    let got = triplets(DEFAULT);
    let t = got[0].as_ref().unwrap();
    assert_eq!(
        (
            t.net.to_string(),
            t.prefix,
            t.sender.as_str(),
            t.recipient.as_str()
        ),
        (
            "192.0.2.0".to_owned(),
            24,
            "bounce@example.com",
            "user+x@dest.example"
        )
    );
    assert_eq!((t.first, t.last), (1_700_000_000, 1_700_000_400));
    assert!(t.passed(&PostgreySettings::default()));
    // the null sender is empty
    let t = got[1].as_ref().unwrap();
    assert_eq!(
        (t.sender.as_str(), t.passed(&PostgreySettings::default())),
        ("", false)
    );
    // postgrey's BATV removal
    assert_eq!(got[2].as_ref().unwrap().sender, "joe@b.example");
    let t = got[3].as_ref().unwrap();
    assert_eq!(
        (t.net.to_string(), t.prefix),
        ("2001:db8:1:2::".to_owned(), 64)
    );
    assert_eq!(got[4].as_ref().unwrap().sender, "news-#@list.example");

    let by_host = triplets(BY_HOST);
    let t = by_host[0].as_ref().unwrap();
    assert_eq!(
        (t.net.to_string(), t.prefix, t.sender.as_str()),
        ("192.0.2.10".to_owned(), 32, "a@b.example")
    );
    let t = by_host[1].as_ref().unwrap();
    assert_eq!(
        (t.net.to_string(), t.prefix),
        ("2001:db8::7".to_owned(), 128)
    );

    assert_eq!(triplets(PRIVACY), vec![Err(HASHED.to_owned())]);
}

#[test]
fn odd_keys_and_values_are_skipped_with_a_reason() {
    let s = PostgreySettings::default();
    let parse = |k: &str, v: &str| parse_triplet(k.as_bytes(), v.as_bytes(), &s);
    // postgrey before 1.35 wrote a /24 as three octets, and once kept the host in the value
    let t = parse("192.0.2/a@b.example/c@d.example", "10,20,77").unwrap();
    assert_eq!(
        (t.net.to_string(), t.prefix, t.first, t.last),
        ("192.0.2.0".to_owned(), 24, 10, 20)
    );
    assert_eq!(
        parse("192.0.2.0/a/b@c/d@e", "1,2").unwrap_err(),
        "a '/' in the sender or recipient makes the key ambiguous"
    );
    assert_eq!(
        parse("mx.example/a@b/c@d", "1,2").unwrap_err(),
        "\"mx.example\" is not a network address"
    );
    assert_eq!(
        parse("192.0.2.0/a@b/c@d", "1").unwrap_err(),
        "value \"1\" is not \"NUMBER,NUMBER\""
    );
    assert_eq!(
        parse("192.0.2.0", "1,2").unwrap_err(),
        "no '/' in the key (expected net/sender/recipient)"
    );
    assert_eq!(
        parse("192.0.2.1/33/a@b/c@d", "1,2").unwrap_err(),
        "prefix length /33 is too long for 192.0.2.1"
    );
    assert_eq!(
        parse_triplet(b"\xff/a/b", b"1,2", &s).unwrap_err(),
        "not UTF-8"
    );
}

#[test]
fn passed_and_pending_triplets_become_our_entries() {
    let g = greylist("client_autowhite_after = 3\n");
    let s = PostgreySettings::default();
    let got = triplets(DEFAULT);
    let day = 86_400;
    // passed: autowhitelisted, expiring `autowhite` after postgrey last saw it; the key is ours
    // (our sender normalisation of postgrey's sender, the recipient without +detail)
    assert_eq!(
        map_triplet(got[0].as_ref().unwrap(), &s, &g),
        Mapped::Entry(
            "t:192.0.2.0/24|bounce@example.com|user@dest.example".to_owned(),
            Entry {
                first_seen: 1_700_000_000,
                last_seen: 1_700_000_400,
                passed: 1,
                blocked: 1,
                expires: 1_700_000_400 + 35 * day,
            }
        )
    );
    // pending: first_seen kept, expiring `retry_window` after it; the null sender is `<>`
    assert_eq!(
        map_triplet(got[1].as_ref().unwrap(), &s, &g),
        Mapped::Entry(
            "t:198.51.100.0/24|<>|c@d.example".to_owned(),
            Entry {
                first_seen: 1_700_000_020,
                last_seen: 1_700_000_020,
                passed: 0,
                blocked: 1,
                expires: 1_700_000_020 + 2 * day,
            }
        )
    );
    let Mapped::Entry(key, _) = map_triplet(got[3].as_ref().unwrap(), &s, &g) else {
        panic!("IPv6 maps")
    };
    assert_eq!(key, "t:2001:db8:1:2::/64|a@b.example|c@d.example");
    // a longer delay in postgrey: the same record had not passed
    let slow = PostgreySettings { delay: 600, ..s };
    let Mapped::Entry(_, e) = map_triplet(got[0].as_ref().unwrap(), &slow, &g) else {
        panic!("maps")
    };
    assert_eq!(e.passed, 0);
    // --lookup-by-host keys fit any of our prefixes
    let host = triplets(BY_HOST);
    let Mapped::Entry(key, _) = map_triplet(host[0].as_ref().unwrap(), &s, &g) else {
        panic!("maps")
    };
    assert_eq!(key, "t:192.0.2.0/24|a@b.example|c@d.example");
    // hashed keys when greylist.hash_keys: the same key a session computes
    let hashed = greylist("hash_keys = true\n");
    let Mapped::Entry(key, _) = map_triplet(got[0].as_ref().unwrap(), &s, &hashed) else {
        panic!("maps")
    };
    assert_eq!(
        key,
        keys::triplet_key(
            &hashed,
            "192.0.2.77".parse().unwrap(),
            None,
            "Bounce+x@Example.com",
            "user@dest.example"
        )
    );
}

#[test]
fn a_postgrey_network_wider_than_ours_is_skipped() {
    let g = greylist("ipv4_prefix = 32\n");
    let t = triplets(DEFAULT).remove(0).unwrap();
    assert_eq!(
        map_triplet(&t, &PostgreySettings::default(), &g),
        Mapped::Skip(
            "postgrey's network /24 is wider than greylist.ipv4_prefix /32: it stands for \
             several of mxsentry's networks"
                .to_owned()
        )
    );
}

#[test]
fn clients_at_the_threshold_are_autowhitelisted() {
    let g = greylist("client_autowhite_after = 3\n");
    let clients: Vec<Client> = records(CLIENTS)
        .iter()
        .map(|(k, v)| parse_client(k, v).unwrap())
        .collect();
    let s = PostgreySettings {
        auto_whitelist_clients: 2,
        ..PostgreySettings::default()
    };
    assert_eq!(
        map_client(&clients[0], &s, &g),
        Mapped::Skip("fewer passes than --auto-whitelist-clients=2".to_owned())
    );
    assert_eq!(
        map_client(&clients[1], &s, &g),
        Mapped::Entry(
            "c:203.0.113.0/24".to_owned(),
            Entry {
                first_seen: 1_700_004_400,
                last_seen: 1_700_004_400,
                passed: 3,
                blocked: 0,
                expires: 1_700_004_400 + 35 * 86_400,
            }
        )
    );
    let off = greylist("client_autowhite_after = 0\n");
    assert!(
        matches!(map_client(&clients[1], &s, &off), Mapped::Skip(r) if r.contains("client_autowhite_after = 0"))
    );
    assert_eq!(
        parse_client(b"mx.example", b"1,2").unwrap_err(),
        "\"mx.example\" is not an IP address"
    );
    assert_eq!(
        parse_client(b"2001:db8:0:0:0:0:0:7", b"5,9").unwrap(),
        Client {
            ip: "2001:db8::7".parse().unwrap(),
            count: 5,
            last: 9
        }
    );
}
