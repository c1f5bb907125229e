//! Helpers for tests, integration tests and benchmarks.
//!
//! Compiled into the library (not `#[cfg(test)]`) so that `tests/` and `benches/` can use them;
//! nothing in the daemon itself depends on this module.

pub mod dns_server;

pub use dns_server::TestDnsServer;
