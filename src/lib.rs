//! mxsentry: a mail filter (milter) that decides, per SMTP session, whether mail is accepted,
//! temp-failed, rejected or discarded.
//!
//! Layout: `protocol` is the pure wire codec; `server` owns sockets and connections; `session`
//! is the per-connection milter state machine; `checks` each turn what the MTA told us into
//! findings; `policy` is the one place that turns findings into a verdict.

// No unwrap/expect outside tests: input must never panic the daemon. An invariant that cannot
// fail is allowed one by one, with its reason (`#[allow(clippy::expect_used, reason = ...)]`).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod admin;
pub mod checks;
pub mod civil_time;
pub mod config;
pub mod control;
pub mod decision_log;
pub mod dns;
pub mod explain;
pub mod import;
pub mod log_limit;
pub mod lookups;
pub mod manpage;
pub mod metrics;
pub mod policy;
pub mod protocol;
pub mod reason;
pub mod replay;
pub mod server;
pub mod session;
pub mod shadow;
pub mod store;
pub mod testing;
