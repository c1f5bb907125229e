use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::keys::*;
use super::*;
use crate::store::memory::MemStore;
use crate::store::{StoreError, UpdateFn};

const T: Timing = Timing {
    delay: 300,
    retry_window: 2 * 86_400,
    autowhite: 86_400,
};

fn e(first_seen: u64, passed: u32, blocked: u32, expires: u64) -> Entry {
    Entry {
        first_seen,
        last_seen: first_seen,
        passed,
        blocked,
        expires,
    }
}

fn put(w: Write) -> Entry {
    match w {
        Write::Put(e) => e,
        other => panic!("expected Put, got {other:?}"),
    }
}

// ---- step -------------------------------------------------------------------------------

#[test]
fn step_table() {
    let now = 1_000_000;
    let fresh = e(now - 100, 0, 1, now - 100 + T.retry_window);
    let cases: Vec<(&str, Option<Entry>, GreylistOutcome)> = vec![
        ("unknown", None, GreylistOutcome::New { retry_in: 300 }),
        (
            "expired passed entry",
            Some(e(now - 90_000, 3, 1, now)),
            GreylistOutcome::New { retry_in: 300 },
        ),
        (
            "retry window over without a pass",
            Some(e(now - T.retry_window, 0, 4, now + 10)),
            GreylistOutcome::New { retry_in: 300 },
        ),
        (
            "too early",
            Some(fresh),
            GreylistOutcome::TooEarly { retry_in: 200 },
        ),
        (
            "retry 1s before the delay",
            Some(e(now - 299, 0, 1, now + 1_000)),
            GreylistOutcome::TooEarly { retry_in: 1 },
        ),
        (
            "retry exactly at the delay",
            Some(e(now - 300, 0, 1, now + 1_000)),
            GreylistOutcome::Passed { waited: 300 },
        ),
        (
            "retry 1s before the window closes",
            Some(e(now - T.retry_window + 1, 0, 9, now + 1)),
            GreylistOutcome::Passed {
                waited: T.retry_window - 1,
            },
        ),
        (
            "already passed",
            Some(e(now - 5_000, 2, 1, now + 50)),
            GreylistOutcome::Whitelisted,
        ),
        (
            "clock went backwards",
            Some(e(now + 60, 0, 1, now + 60 + T.retry_window)),
            GreylistOutcome::TooEarly { retry_in: 300 },
        ),
    ];
    for (name, old, want) in cases {
        let (_, got) = step(old, now, &T);
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn step_writes() {
    let now = 1_000_000;
    // New: first_seen now, one block, expires after the retry window.
    let w = put(step(None, now, &T).0);
    assert_eq!(
        w,
        Entry {
            first_seen: now,
            last_seen: now,
            passed: 0,
            blocked: 1,
            expires: now + T.retry_window
        }
    );
    // Too early: first_seen kept (no reset), blocked counted, expiry unchanged.
    let old = e(now - 100, 0, 1, now - 100 + T.retry_window);
    let w = put(step(Some(old), now, &T).0);
    assert_eq!(
        w,
        Entry {
            last_seen: now,
            blocked: 2,
            ..old
        }
    );
    // Passed: autowhitelisted for `autowhite`.
    let old = e(now - 400, 0, 2, now - 400 + T.retry_window);
    let w = put(step(Some(old), now, &T).0);
    assert_eq!(
        w,
        Entry {
            last_seen: now,
            passed: 1,
            expires: now + T.autowhite,
            ..old
        }
    );
    // Whitelisted: refreshed, counted.
    let old = e(now - 90_000, 4, 2, now + 5);
    let w = put(step(Some(old), now, &T).0);
    assert_eq!(
        w,
        Entry {
            last_seen: now,
            passed: 5,
            expires: now + T.autowhite,
            ..old
        }
    );
    // Expired: starts over.
    let w = put(step(Some(e(1, 7, 7, now)), now, &T).0);
    assert_eq!((w.first_seen, w.passed, w.blocked), (now, 0, 1));
}

#[test]
fn step_walks_the_whole_lifecycle_with_an_injected_clock() {
    let mut entry = None;
    let mut run = |now: u64| {
        let (w, o) = step(entry, now, &T);
        entry = Some(put(w));
        o
    };
    assert_eq!(run(1_000), GreylistOutcome::New { retry_in: 300 });
    assert_eq!(run(1_060), GreylistOutcome::TooEarly { retry_in: 240 });
    assert_eq!(run(1_200), GreylistOutcome::TooEarly { retry_in: 100 });
    assert_eq!(run(1_301), GreylistOutcome::Passed { waited: 301 });
    assert_eq!(run(1_302), GreylistOutcome::Whitelisted);
    // Refreshed by each delivery: 23h later still whitelisted, and again 23h after that.
    assert_eq!(run(1_302 + 82_800), GreylistOutcome::Whitelisted);
    assert_eq!(run(1_302 + 2 * 82_800), GreylistOutcome::Whitelisted);
    // Silent for longer than `autowhite`: greylisted again.
    assert_eq!(
        run(1_302 + 2 * 82_800 + 86_400),
        GreylistOutcome::New { retry_in: 300 }
    );
}

#[test]
fn client_steps() {
    let now = 5_000;
    let w = put(client_step(None, now, &T));
    assert_eq!((w.passed, w.expires), (1, now + T.autowhite));
    let w = put(client_step(Some(w), now + 10, &T));
    assert_eq!((w.passed, w.expires), (2, now + 10 + T.autowhite));
    // Expired: counts from 1 again.
    let w = put(client_step(Some(w), now + 10 + T.autowhite, &T));
    assert_eq!(w.passed, 1);
    let five = e(0, 5, 0, now + 1);
    assert!(client_is_whitelisted(Some(&five), now, 5));
    assert!(!client_is_whitelisted(Some(&five), now, 6));
    assert!(!client_is_whitelisted(Some(&five), now, 0), "0 = off");
    assert!(!client_is_whitelisted(Some(&five), now + 1, 5), "expired");
    assert!(!client_is_whitelisted(None, now, 1));
}

#[test]
fn permanent_entries_stay_permanent_through_deliveries() {
    let now = 1_000_000;
    let triplet = e(10, 1, 0, Entry::PERMANENT);
    let (w, outcome) = step(Some(triplet), now, &T);
    assert_eq!(outcome, GreylistOutcome::Whitelisted);
    let w = put(w);
    assert_eq!((w.passed, w.expires), (2, Entry::PERMANENT));
    // years later it is still whitelisted
    let (_, outcome) = step(Some(w), now + 10 * 365 * 86_400, &T);
    assert_eq!(outcome, GreylistOutcome::Whitelisted);
    let client = e(10, 5, 0, Entry::PERMANENT);
    let w = put(client_step(Some(client), now, &T));
    assert_eq!((w.passed, w.expires), (6, Entry::PERMANENT));
    assert!(client_is_whitelisted(Some(&w), u64::MAX - 1, 5));
}

// ---- keys -------------------------------------------------------------------------------

#[test]
fn sender_normalisation() {
    let cases = [
        ("<User@Example.COM>", "user@example.com"),
        ("user@example.com.", "user@example.com"),
        ("", "<>"),
        ("<>", "<>"),
        (" <> ", "<>"),
        ("MAILER-DAEMON", "mailer-daemon"),
        (
            "<@relay.example,@b.example:user@example.com>",
            "user@example.com",
        ),
        // BATV
        ("prvs=0123abcdef=alice@example.com", "alice@example.com"),
        ("prvs=1234567890=alice@example.com", "alice@example.com"),
        (
            "msprvs1=17543vwllqcgn=bounces-1234@example.com",
            "bounces-#@example.com",
        ),
        ("btv1==0a1b2c3d4e5==alice@example.com", "alice@example.com"),
        // SRS
        (
            "SRS0=HHH=TT=example.org=alice@forwarder.example",
            "alice@example.org",
        ),
        (
            "SRS0+abcd=x9=Example.ORG=Alice@fwd.example",
            "alice@example.org",
        ),
        (
            "SRS1=HHH=first.example==HHH=TT=example.org=alice@second.example",
            "alice@example.org",
        ),
        // SRS of a BATV address.
        (
            "SRS0=h1=t2=example.org=prvs=0123456789=alice@fwd.example",
            "alice@example.org",
        ),
        // VERP, sub-addresses
        ("user+tag@example.com", "user@example.com"),
        (
            "bounces+1234-abcd-alice=example.org@sendgrid.example",
            "bounces@sendgrid.example",
        ),
        ("+onlytag@example.com", "+onlytag@example.com"),
        // numeric ids
        ("bounces-12345@example.com", "bounces-#@example.com"),
        ("news-20240101-77@example.com", "news-#-#@example.com"),
        ("bounce123456@example.com", "bounce#@example.com"),
        // hex / base32 tokens
        ("noreply.3f9a2b7c1d@example.com", "noreply.#@example.com"),
        ("reply_mfrggzdfmztwq2lk@example.com", "reply_#@example.com"),
        (
            "01000156e5986888-b6a0e7cf-dc11-4c3c-be7b-06d369aed7a1-000000@email.dropbox.com",
            "#-#-#@email.dropbox.com",
        ),
        // Ordinary addresses are left alone.
        ("john.smith@example.com", "john.smith@example.com"),
        ("john1985@example.com", "john1985@example.com"),
        ("newsletter@example.com", "newsletter@example.com"),
        (
            "no-reply@accounts.example.com",
            "no-reply@accounts.example.com",
        ),
        ("deadbeef@example.com", "deadbeef@example.com"),
    ];
    for (input, want) in cases {
        assert_eq!(normalize_sender(input), want, "{input}");
    }
}

#[test]
fn mailchimp_and_ses_senders_keep_one_key_across_messages() {
    let a = "bounce-md_10612303.5adf1f70.v1-0f662aa357fe4841870c6a233ce23b66@systemalerts.mailchimp.com";
    let b = "bounce-md_10612303.5ae07a11.v1-9a1c24b0e5d64f6c8c2f7d1e3b9a0c55@systemalerts.mailchimp.com";
    assert_eq!(normalize_sender(a), normalize_sender(b));
    assert_eq!(
        normalize_sender(a),
        "bounce-md_#.#.v1-#@systemalerts.mailchimp.com"
    );
    let a = "01000156e5986888-b6a0e7cf-dc11-4c3c-be7b-06d369aed7a1-000000@email.dropbox.com";
    let b = "0100017a2b3c4d5e-1f2e3d4c-aaaa-4bbb-8ccc-0123456789ab-000000@email.dropbox.com";
    assert_eq!(normalize_sender(a), normalize_sender(b));
    let cfg = GreylistConfig::default();
    let ip: IpAddr = "198.51.100.7".parse().unwrap();
    assert_eq!(
        triplet_key(&cfg, ip, None, a, "x@example.org"),
        triplet_key(&cfg, ip, None, b, "x@example.org")
    );
}

#[test]
fn recipient_normalisation() {
    assert_eq!(
        normalize_rcpt("<Alice+Lists@Example.ORG>"),
        "alice@example.org"
    );
    assert_eq!(normalize_rcpt("bob@example.org."), "bob@example.org");
    assert_eq!(normalize_rcpt("postmaster"), "postmaster");
}

#[test]
fn client_networks() {
    let cfg = GreylistConfig::default();
    let c = |ip: &str| client_part(&cfg, ip.parse().unwrap(), None);
    assert_eq!(c("198.51.100.77"), "198.51.100.0/24");
    assert_eq!(c("::ffff:198.51.100.77"), "198.51.100.0/24");
    assert_eq!(c("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64");
    let cfg = GreylistConfig {
        ipv4_prefix: 32,
        ipv6_prefix: 48,
        ..GreylistConfig::default()
    };
    let c = |ip: &str| client_part(&cfg, ip.parse().unwrap(), None);
    assert_eq!(c("198.51.100.77"), "198.51.100.77/32");
    assert_eq!(c("2001:db8:1:2:3:4:5:6"), "2001:db8:1::/48");
}

#[test]
fn pool_keys() {
    assert_eq!(
        pool_domain("mail-eopbgr10051.outbound.protection.outlook.com").as_deref(),
        Some("outbound.protection.outlook.com")
    );
    assert_eq!(
        pool_domain("mail-he1eur01on0047.outbound.protection.outlook.com.").as_deref(),
        Some("outbound.protection.outlook.com")
    );
    assert_eq!(
        pool_domain("a10-219.smtp-out.amazonses.com").as_deref(),
        Some("smtp-out.amazonses.com")
    );
    assert_eq!(
        pool_domain("Mail.Example.com").as_deref(),
        Some("example.com")
    );
    assert_eq!(pool_domain("example.com").as_deref(), Some("example.com"));
    // Never pool under a registry suffix.
    assert_eq!(
        pool_domain("example.co.uk").as_deref(),
        Some("example.co.uk")
    );
    assert_eq!(pool_domain("shop.com.au").as_deref(), Some("shop.com.au"));
    assert_eq!(
        pool_domain("mx1.example.co.uk").as_deref(),
        Some("example.co.uk")
    );
    assert_eq!(pool_domain(""), None);

    let cfg = GreylistConfig::default();
    let a: IpAddr = "40.107.1.51".parse().unwrap();
    let b: IpAddr = "52.100.9.47".parse().unwrap();
    let outlook_a = "mail-eopbgr10051.outbound.protection.outlook.com";
    let outlook_b = "mail-he1eur01on0047.outbound.protection.outlook.com";
    // Verified names from different /24s share the pool key...
    assert_eq!(
        triplet_key(&cfg, a, Some(outlook_a), "s@example.com", "r@example.org"),
        triplet_key(&cfg, b, Some(outlook_b), "s@example.com", "r@example.org")
    );
    assert_eq!(
        client_key(&cfg, a, Some(outlook_a)),
        "c:pool:outbound.protection.outlook.com"
    );
    // ...unverified clients (no verified name) are keyed by their network.
    assert_eq!(
        triplet_key(&cfg, a, None, "s@example.com", "r@example.org"),
        "t:40.107.1.0/24|s@example.com|r@example.org"
    );
    // pool_by_rdns = false: always the network.
    let off = GreylistConfig {
        pool_by_rdns: false,
        ..GreylistConfig::default()
    };
    assert_eq!(client_key(&off, a, Some(outlook_a)), "c:40.107.1.0/24");
}

#[test]
fn hashed_keys() {
    let cfg = GreylistConfig {
        hash_keys: true,
        ..GreylistConfig::default()
    };
    let ip: IpAddr = "198.51.100.7".parse().unwrap();
    let t = triplet_key(&cfg, ip, None, "a@example.com", "b@example.org");
    let c = client_key(&cfg, ip, None);
    assert!(t.starts_with("t:") && t.len() == 34, "{t}");
    assert!(c.starts_with("c:") && c.len() == 34, "{c}");
    assert!(!t.contains("example"));
    assert_eq!(
        t,
        store_key("t:198.51.100.0/24|a@example.com|b@example.org", true)
    );
    assert_ne!(
        t,
        triplet_key(&cfg, ip, None, "a@example.com", "c@example.org")
    );
    // Normalisation happens before hashing.
    assert_eq!(
        t,
        triplet_key(&cfg, ip, None, "<A+x@Example.com>", "b@example.org")
    );
}

// ---- results ----------------------------------------------------------------------------

fn result(outcome: GreylistOutcome) -> GreylistResult {
    GreylistResult {
        outcome,
        key: "t:198.51.100.0/24|a@example.com|b@example.org".into(),
        client: "198.51.100.0/24".into(),
    }
}

#[test]
fn replies_headers_findings() {
    let cfg = GreylistConfig::default();
    let r = result(GreylistOutcome::New { retry_in: 300 });
    assert_eq!(
        r.reply(&cfg).as_deref(),
        Some("450 4.7.1 Greylisted, try again in 300 seconds")
    );
    assert_eq!(r.header("0.1.0", 0), None);
    assert_eq!(r.finding().outcome, "new");
    assert_eq!(r.finding().check, "greylist");
    let r = result(GreylistOutcome::TooEarly { retry_in: 42 });
    assert!(r.reply(&cfg).unwrap().contains("in 42 seconds"));
    assert_eq!(r.finding().outcome, "too_early");

    let r = result(GreylistOutcome::Passed { waited: 301 });
    assert_eq!(r.reply(&cfg), None);
    assert_eq!(
        r.header("0.1.0", 1_767_269_045),
        Some((
            "X-Greylist".to_string(),
            "delayed 301 seconds by mxsentry-0.1.0; Thu, 01 Jan 2026 12:04:05 +0000".to_string()
        ))
    );
    assert_eq!(r.finding().outcome, "passed");
    for (o, word) in [
        (GreylistOutcome::Whitelisted, "whitelisted"),
        (GreylistOutcome::ClientWhitelisted, "client_whitelisted"),
        (GreylistOutcome::StoreError("down".into()), "error"),
    ] {
        let r = result(o);
        assert_eq!(r.reply(&cfg), None);
        assert_eq!(r.header("0.1.0", 0), None);
        assert_eq!(r.finding().outcome, word);
    }
    assert!(result(GreylistOutcome::StoreError("down".into()))
        .finding()
        .detail
        .contains("fail open"));
}

#[test]
fn dates() {
    assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
    assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
    assert_eq!(
        rfc5322_date(1_709_251_199),
        "Thu, 29 Feb 2024 23:59:59 +0000"
    );
    assert_eq!(
        rfc5322_date(4_102_444_800),
        "Fri, 01 Jan 2100 00:00:00 +0000"
    );
}

// ---- Greylister with test stores ---------------------------------------------------------

/// A store that fails every call, or (with a delay) hangs past the deadline.
struct BrokenStore {
    hang: Option<Duration>,
}

#[async_trait]
impl GreylistStore for BrokenStore {
    fn backend(&self) -> &'static str {
        "broken"
    }
    async fn update(&self, _: &str, _: &UpdateFn<'_>) -> Result<Option<Entry>, StoreError> {
        if let Some(d) = self.hang {
            tokio::time::sleep(d).await;
        }
        Err(StoreError::Unavailable("connection refused".into()))
    }
    async fn get(&self, _: &str) -> Result<Option<Entry>, StoreError> {
        Err(StoreError::Unavailable("connection refused".into()))
    }
    async fn put(&self, _: &str, _: Entry) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("connection refused".into()))
    }
    async fn delete(&self, _: &str) -> Result<bool, StoreError> {
        Err(StoreError::Unavailable("connection refused".into()))
    }
    async fn list(&self, _: &str, _: usize) -> Result<Vec<(String, Entry)>, StoreError> {
        Err(StoreError::Unavailable("connection refused".into()))
    }
    async fn purge(&self, _: u64) -> Result<u64, StoreError> {
        Err(StoreError::Unavailable("connection refused".into()))
    }
    async fn len(&self) -> Result<u64, StoreError> {
        Err(StoreError::Unavailable("connection refused".into()))
    }
    async fn flush(&self) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("connection refused".into()))
    }
}

fn cfg() -> GreylistConfig {
    GreylistConfig {
        delay: Duration::from_secs(300),
        client_autowhite_after: 3,
        ..GreylistConfig::default()
    }
}

#[tokio::test]
async fn check_lifecycle_and_client_autowhitelist() {
    let store = Arc::new(MemStore::default());
    let g = Greylister::new(store.clone(), &cfg());
    let ip: IpAddr = "198.51.100.7".parse().unwrap();
    let check = |sender: &'static str, now: u64| {
        let g = &g;
        async move { g.check(ip, None, sender, "rcpt@example.org", now).await }
    };
    let r = check("a@example.com", 1_000).await;
    assert_eq!(r.outcome, GreylistOutcome::New { retry_in: 300 });
    assert_eq!(r.key, "t:198.51.100.0/24|a@example.com|rcpt@example.org");
    assert_eq!(r.client, "198.51.100.0/24");
    assert_eq!(
        check("a@example.com", 1_100).await.outcome,
        GreylistOutcome::TooEarly { retry_in: 200 }
    );
    let r = check("a@example.com", 1_300).await;
    assert_eq!(r.outcome, GreylistOutcome::Passed { waited: 300 });
    assert!(r.header("1.2.3", 1_300).is_some());
    assert_eq!(
        check("a@example.com", 1_301).await.outcome,
        GreylistOutcome::Whitelisted
    );
    // Two accepted deliveries so far: a new sender from the client is still greylisted.
    assert_eq!(
        store
            .get("c:198.51.100.0/24")
            .await
            .unwrap()
            .unwrap()
            .passed,
        2
    );
    assert_eq!(
        check("b@example.com", 1_302).await.outcome,
        GreylistOutcome::New { retry_in: 300 }
    );
    // The third accepted delivery makes the client autowhitelisted (K = 3).
    assert_eq!(
        check("a@example.com", 1_303).await.outcome,
        GreylistOutcome::Whitelisted
    );
    let r = check("c@example.com", 1_304).await;
    assert_eq!(r.outcome, GreylistOutcome::ClientWhitelisted);
    assert_eq!(r.finding().outcome, "client_whitelisted");
    // A client-whitelisted delivery refreshes the client entry.
    let c = store.get("c:198.51.100.0/24").await.unwrap().unwrap();
    assert_eq!((c.passed, c.expires), (4, 1_304 + 86_400));
    // The triplet of a client-whitelisted delivery is not stored.
    assert_eq!(
        store
            .get("t:198.51.100.0/24|c@example.com|rcpt@example.org")
            .await
            .unwrap(),
        None
    );
    // After `autowhite` without mail, the client's entry has expired.
    assert_eq!(
        check("d@example.com", 1_304 + 86_400).await.outcome,
        GreylistOutcome::New { retry_in: 300 }
    );
}

#[tokio::test]
async fn client_autowhitelist_off() {
    let store = Arc::new(MemStore::default());
    let cfg = GreylistConfig {
        client_autowhite_after: 0,
        ..cfg()
    };
    let g = Greylister::new(store.clone(), &cfg);
    let ip: IpAddr = "198.51.100.7".parse().unwrap();
    g.check(ip, None, "a@example.com", "r@example.org", 0).await;
    for now in [300, 301, 302, 303, 304, 305, 306] {
        assert!(g
            .check(ip, None, "a@example.com", "r@example.org", now)
            .await
            .outcome
            .accepts());
    }
    assert_eq!(
        g.check(ip, None, "new@example.com", "r@example.org", 400)
            .await
            .outcome,
        GreylistOutcome::New { retry_in: 300 }
    );
    assert_eq!(store.get("c:198.51.100.0/24").await.unwrap(), None);
}

#[tokio::test]
async fn pool_retry_from_another_subnet_passes() {
    let store = Arc::new(MemStore::default());
    let g = Greylister::new(store, &cfg());
    let a: IpAddr = "54.240.1.219".parse().unwrap();
    let b: IpAddr = "54.240.77.220".parse().unwrap();
    let (na, nb) = (
        "a10-219.smtp-out.amazonses.com",
        "a10-220.smtp-out.amazonses.com",
    );
    let r = g
        .check(a, Some(na), "s@example.com", "r@example.org", 0)
        .await;
    assert_eq!(r.outcome, GreylistOutcome::New { retry_in: 300 });
    assert_eq!(r.client, "pool:smtp-out.amazonses.com");
    let r = g
        .check(b, Some(nb), "s@example.com", "r@example.org", 400)
        .await;
    assert_eq!(r.outcome, GreylistOutcome::Passed { waited: 400 });
    // The same retry without a verified name is a new triplet.
    let r = g
        .check(b, None, "s@example.com", "r@example.org", 401)
        .await;
    assert_eq!(r.outcome, GreylistOutcome::New { retry_in: 300 });
}

#[tokio::test]
async fn store_errors_and_timeouts_fail_open() {
    let cfg = cfg();
    let ip: IpAddr = "198.51.100.7".parse().unwrap();
    let g = Greylister::new(Arc::new(BrokenStore { hang: None }), &cfg);
    let r = g.check(ip, None, "a@example.com", "r@example.org", 0).await;
    assert!(
        matches!(r.outcome, GreylistOutcome::StoreError(ref e) if e.contains("connection refused"))
    );
    assert!(r.outcome.accepts());
    assert_eq!(r.reply(&cfg), None);
    assert_eq!(r.finding().outcome, "error");

    // Also with client autowhitelisting off (the triplet call fails).
    let off = GreylistConfig {
        client_autowhite_after: 0,
        ..cfg.clone()
    };
    let g = Greylister::new(Arc::new(BrokenStore { hang: None }), &off);
    let r = g.check(ip, None, "a@example.com", "r@example.org", 0).await;
    assert_eq!(r.finding().outcome, "error");

    // A store that hangs: the deadline answers.
    let g = Greylister::new(
        Arc::new(BrokenStore {
            hang: Some(Duration::from_secs(30)),
        }),
        &cfg,
    )
    .with_deadline(Duration::from_millis(50));
    let started = std::time::Instant::now();
    let r = g.check(ip, None, "a@example.com", "r@example.org", 0).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        r.outcome,
        GreylistOutcome::StoreError(StoreError::Timeout.to_string())
    );
}

#[tokio::test]
async fn check_on_the_embedded_store_with_hashed_keys() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = GreylistConfig {
        path: dir.path().join("greylist.db"),
        hash_keys: true,
        ..cfg()
    };
    let store = crate::store::open(&cfg, crate::store::OpenFor::Admin)
        .await
        .unwrap();
    let g = Greylister::new(store, &cfg);
    assert_eq!(g.store().backend(), "embedded");
    let ip: IpAddr = "2001:db8::25".parse().unwrap();
    let r = g
        .check(ip, None, "a@example.com", "r@example.org", 10)
        .await;
    assert_eq!(r.outcome, GreylistOutcome::New { retry_in: 300 });
    assert_eq!(
        r.key, "t:2001:db8::/64|a@example.com|r@example.org",
        "logs see the plain key"
    );
    let r = g
        .check(ip, None, "a@example.com", "r@example.org", 400)
        .await;
    assert_eq!(r.outcome, GreylistOutcome::Passed { waited: 390 });
    g.store().flush().await.unwrap();
    let stored = g.store().list("", 10).await.unwrap();
    assert_eq!(stored.len(), 2, "triplet and client");
    assert!(stored
        .iter()
        .all(|(k, _)| !k.contains("example") && !k.contains("2001")));
    let tk = triplet_key(&cfg, ip, None, "a@example.com", "r@example.org");
    assert_eq!(g.store().get(&tk).await.unwrap().unwrap().passed, 1);
}

#[tokio::test]
async fn a_read_only_greylister_answers_as_the_store_says_and_writes_nothing() {
    let store = Arc::new(MemStore::default());
    let shadow = Greylister::new(store.clone(), &cfg()).read_only();
    let live = Greylister::new(store.clone(), &cfg());
    let ip: IpAddr = "198.51.100.7".parse().unwrap();
    let (from, rcpt) = ("a@example.com", "rcpt@example.org");
    // Unknown: new, every time, and nothing is stored.
    for now in [1_000, 1_400] {
        assert_eq!(
            shadow.check(ip, None, from, rcpt, now).await.outcome,
            GreylistOutcome::New { retry_in: 300 }
        );
    }
    assert_eq!(store.len().await.unwrap(), 0);
    // What the live greylister records, the read-only one reads (without changing it).
    live.check(ip, None, from, rcpt, 1_000).await;
    let before = store.list("", 10).await.unwrap();
    assert_eq!(
        shadow.check(ip, None, from, rcpt, 1_100).await.outcome,
        GreylistOutcome::TooEarly { retry_in: 200 }
    );
    assert_eq!(
        shadow.check(ip, None, from, rcpt, 1_300).await.outcome,
        GreylistOutcome::Passed { waited: 300 }
    );
    assert_eq!(store.list("", 10).await.unwrap(), before);
}
