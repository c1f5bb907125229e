//! Helpers for tests, integration tests and benchmarks.
//!
//! Compiled into the library (not `#[cfg(test)]`) so that `tests/` and `benches/` can use them;
//! nothing in the daemon itself depends on this module.

pub mod dns_server;

pub use dns_server::TestDnsServer;

/// `n` in letters (`a`, `b`, ... `ba`): a unique sender token for tests and load generators.
/// Greylisting masks digit runs in sender addresses (they change from message to message), so
/// numbered senders would all be one triplet.
pub fn letters(mut n: u64) -> String {
    let mut out = Vec::new();
    loop {
        out.push(b'a' + (n % 26) as u8);
        n /= 26;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    out.into_iter().map(char::from).collect()
}
