//! DNS prefetch through the real daemon: a client that comes back late in its answers' TTL
//! gets its reply from the cache while the refresh is still on its way, and the session after
//! it finds the refreshed answers without asking DNS.
//!
//! Every answer is 2 s late (`DELAY 2s`) and lives 10 s; `prefetch_percent = 90` makes a use
//! from 1 s after an answer was stored start its refresh. "The session did not wait" is shown
//! without timing: its reply arrived while no refresh had finished (a refresh cannot finish
//! before the server's 2 s delay).

mod common;

use std::time::Duration;

use common::{Client, Daemon};
use mxsentry::protocol::reply::Reply;

const ZONE: &str = "\
$NEGATIVE_TTL 10
10.2.0.192.in-addr.arpa DELAY 2s 10 PTR good.fcrdns.test
good.fcrdns.test DELAY 2s 10 A 192.0.2.10
10.2.0.192.bl.test DELAY 2s NXDOMAIN
";

/// The four queries of one client: PTR, then A and AAAA of its name (no data), and the block
/// list (NXDOMAIN).
const QUERIES_PER_CLIENT: usize = 4;

fn config(prefetch: bool) -> String {
    format!(
        "[dns]\ntimeout = \"5s\"\nprefetch = {prefetch}\nprefetch_percent = 90\n\
         [[dnsbl.zones]]\nzone = \"bl.test\"\n"
    )
}

fn session(d: &Daemon) -> Reply {
    let mut c = Client::tcp(d.port);
    c.negotiate();
    c.connect("[unverified]", "192.0.2.10");
    c.helo("good.fcrdns.test");
    c.mail("a@sender.test");
    c.rcpt("u@example.org").expect("RCPT answered")
}

fn prefetch(d: &Daemon, result: &str) -> f64 {
    d.metric(&format!(
        "mxsentry_dns_prefetch_total{{result=\"{result}\"}}"
    ))
}

fn cache(d: &Daemon, result: &str) -> f64 {
    d.metric(&format!(
        "mxsentry_dns_cache_lookups_total{{result=\"{result}\"}}"
    ))
}

#[test]
fn returning_client_is_answered_from_the_cache_and_refreshed_in_the_background() {
    let d = Daemon::start_with_zone("", &config(true), ZONE);
    // First visit: every answer from the (slow) server.
    assert_eq!(session(&d), Reply::Continue);
    assert_eq!(d.dns.queries(), QUERIES_PER_CLIENT);
    assert_eq!(cache(&d, "miss"), QUERIES_PER_CLIENT as f64);
    assert_eq!(prefetch(&d, "started"), 0.0);

    // Back late in the answers' TTL: answered from the cache, one refresh per answer started,
    // none finished when the reply came.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(session(&d), Reply::Continue);
    assert_eq!(
        prefetch(&d, "refreshed"),
        0.0,
        "the session waited for a refresh"
    );
    assert_eq!(prefetch(&d, "started"), QUERIES_PER_CLIENT as f64);
    assert_eq!(cache(&d, "hit"), QUERIES_PER_CLIENT as f64);

    d.wait_metric(
        "mxsentry_dns_prefetch_total{result=\"refreshed\"}",
        QUERIES_PER_CLIENT as f64,
    );
    assert_eq!(d.dns.queries(), 2 * QUERIES_PER_CLIENT);
    // The next visit: all hits, no query, no new refresh (the answers are fresh again).
    assert_eq!(session(&d), Reply::Continue);
    assert_eq!(cache(&d, "hit"), 2.0 * QUERIES_PER_CLIENT as f64);
    assert_eq!(d.dns.queries(), 2 * QUERIES_PER_CLIENT);
    assert_eq!(prefetch(&d, "started"), QUERIES_PER_CLIENT as f64);
    assert_eq!(prefetch(&d, "failed") + prefetch(&d, "dropped"), 0.0);
}

#[test]
fn prefetch_off_sends_no_background_query() {
    let d = Daemon::start_with_zone("", &config(false), ZONE);
    assert_eq!(session(&d), Reply::Continue);
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(session(&d), Reply::Continue);
    assert_eq!(cache(&d, "hit"), QUERIES_PER_CLIENT as f64);
    assert_eq!(prefetch(&d, "started"), 0.0);
    assert_eq!(d.dns.queries(), QUERIES_PER_CLIENT);
}
