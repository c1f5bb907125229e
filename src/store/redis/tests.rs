//! Unit tests of the Redis store's pure parts (the server tests are in tests/redis_store.rs).

use super::*;

#[test]
fn encoding_round_trips_and_is_fixed_size() {
    let entry = Entry {
        first_seen: 1_700_000_000,
        last_seen: 1_700_000_300,
        passed: 7,
        blocked: u32::MAX,
        expires: u64::MAX,
    };
    let bytes = encode(&entry);
    assert_eq!(bytes.len(), 33);
    assert_eq!(bytes[0], 1);
    assert_eq!(decode(&bytes), Ok(entry));
    assert_eq!(decode(&encode(&Entry::default())), Ok(Entry::default()));
}

#[test]
fn decoding_refuses_other_lengths_and_versions() {
    assert!(decode(b"").is_err());
    assert!(decode(b"junk").is_err());
    let mut bytes = encode(&Entry::default());
    bytes[0] = 2;
    assert!(decode(&bytes).is_err());
    let mut long = encode(&Entry::default()).to_vec();
    long.push(0);
    assert!(decode(&long).is_err());
}

#[test]
fn glob_characters_are_escaped() {
    assert_eq!(
        glob_escape("t:10.0.0|a*b?c[d]e\\f"),
        "t:10.0.0|a\\*b\\?c\\[d\\]e\\\\f"
    );
    assert_eq!(glob_escape(KEY_PREFIX), KEY_PREFIX);
}

#[test]
fn ttl_is_what_is_left_and_at_least_one_second() {
    let now = now_secs();
    assert!((99..=100).contains(&ttl_secs(now + 100)));
    assert_eq!(ttl_secs(now.saturating_sub(10)), 1);
    assert_eq!(ttl_secs(0), 1);
    assert_eq!(ttl_secs(u64::MAX), MAX_TTL_SECS);
}

#[test]
fn passwords_are_redacted() {
    assert_eq!(redact("redis://:secret@h:6379/0"), "redis://:***@h:6379/0");
    assert_eq!(redact("redis://u:secret@h/0"), "redis://u:***@h/0");
    assert_eq!(redact("redis://h:6379"), "redis://h:6379");
}

#[test]
fn cas_replies_are_parsed() {
    assert_eq!(parse_cas_reply(Value::Array(vec![Value::Int(1)])), Ok(None));
    assert_eq!(
        parse_cas_reply(Value::Array(vec![
            Value::Int(0),
            Value::BulkString(Vec::new())
        ])),
        Ok(Some(None))
    );
    assert_eq!(
        parse_cas_reply(Value::Array(vec![
            Value::Int(0),
            Value::BulkString(b"x".to_vec())
        ])),
        Ok(Some(Some(b"x".to_vec())))
    );
    assert!(parse_cas_reply(Value::Nil).is_err());
}

#[tokio::test]
async fn unknown_schemes_and_bad_urls_are_refused_clearly() {
    let err = RedisStore::connect("http://127.0.0.1/").await.unwrap_err();
    assert!(err.to_string().contains("redis://"), "{err}");
    let err = RedisStore::connect("redis://:pw@[bad").await.unwrap_err();
    assert!(!err.to_string().contains("pw@"), "{err}");
}

#[test]
fn password_files_are_one_trimmed_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pass");
    std::fs::write(&path, "s3cret\n").unwrap();
    assert_eq!(read_password_file(&path, true).unwrap(), "s3cret");
    std::fs::write(&path, "s3cret\r\n").unwrap();
    assert_eq!(read_password_file(&path, false).unwrap(), "s3cret");
    std::fs::write(&path, "").unwrap();
    let err = read_password_file(&path, false).unwrap_err();
    assert!(err.ends_with(":1: the password file is empty"), "{err}");
    std::fs::write(&path, "a\nb\n").unwrap();
    let err = read_password_file(&path, false).unwrap_err();
    assert!(err.contains("pass:2: "), "{err}");
    let err = read_password_file(&dir.path().join("missing"), false).unwrap_err();
    assert!(
        err.contains("missing: cannot read redis_password_file"),
        "{err}"
    );
}

#[test]
fn specs_are_checked_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "pw\n").unwrap();
    let mut spec = RedisSpec::url("redis://:inline@127.0.0.1:6379/0");
    spec.password_file = Some(pass);
    let err = check_spec(&spec).unwrap_err();
    assert!(err.contains("keep the password in the file only"), "{err}");
    assert!(!err.contains("inline"), "{err}");

    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "not a certificate").unwrap();
    let mut spec = RedisSpec::url("rediss://127.0.0.1:6380/0");
    spec.ca_file = Some(ca);
    let err = check_spec(&spec).unwrap_err();
    assert!(
        err.contains("ca.pem: redis_ca_file holds no PEM certificate"),
        "{err}"
    );

    let spec = RedisSpec {
        sentinels: vec!["redis://127.0.0.1:26379".into()],
        ..RedisSpec::default()
    };
    assert!(check_spec(&spec).unwrap_err().contains("redis_master"));
    let spec = RedisSpec {
        sentinels: vec!["redis://127.0.0.1:26379".into(), "rediss://h:26379".into()],
        master: "m".into(),
        ..RedisSpec::default()
    };
    assert!(check_spec(&spec).unwrap_err().contains("one scheme"));
    assert!(check_sentinel_url("unix:///run/sentinel.sock").is_err());
}

#[test]
fn cluster_tags_put_a_clients_keys_in_one_slot() {
    assert_eq!(
        cluster_tag("t:192.0.2.0/24|a@b.example|c@d.example"),
        "192.0.2.0/24"
    );
    assert_eq!(cluster_tag("c:192.0.2.0/24"), "192.0.2.0/24");
    assert_eq!(
        cluster_tag("t:pool:outlook.com|a@b|c@d"),
        "pool:outlook.com"
    );
    assert_eq!(
        cluster_tag("c:pool:odd}name{.example"),
        "pool:oddname.example"
    );
    // hashed keys: each its own tag
    let hashed = "t:0123456789abcdef0123456789abcdef";
    assert_eq!(cluster_tag(hashed), hashed);
    let full = format!("{KEY_PREFIX}{{192.0.2.0/24}}t:192.0.2.0/24|a|b");
    assert_eq!(store_key_of(&full, true), Some("t:192.0.2.0/24|a|b"));
    assert_eq!(store_key_of("mxsentry:gl:t:x", false), Some("t:x"));
    assert_eq!(store_key_of("mxsentry:gl:", false), None);
    assert_eq!(store_key_of("other", false), None);
}
