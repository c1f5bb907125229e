//! What a run records: reply latency per awaited stage and the derived figures, counts of
//! sessions, errors, round trips and replies by kind.

use std::collections::BTreeMap;
use std::time::Duration;

/// Where latencies are recorded: reply latency per awaited stage, then derived figures.
#[derive(Clone, Copy)]
pub(crate) enum Stat {
    Optneg,
    Connect,
    Helo,
    Mail,
    Rcpt,
    Data,
    Header,
    Eoh,
    Body,
    Eom,
    Session,
    ConnectToRcpt,
    Added,
}
const NSTATS: usize = 13;
pub(crate) const STAT_NAMES: [&str; NSTATS] = [
    "optneg",
    "connect",
    "helo",
    "mail",
    "rcpt",
    "data",
    "header",
    "eoh",
    "body",
    "eom",
    "session",
    "connect_to_rcpt",
    "added",
];

#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) lat_us: [Vec<u32>; NSTATS],
    pub(crate) sessions: u64,
    pub(crate) errors: u64,
    pub(crate) round_trips: u64,
    pub(crate) writes: u64,
    pub(crate) replies: BTreeMap<String, u64>,
    pub(crate) error_kinds: BTreeMap<String, u64>,
    pub(crate) protocol: Option<u32>,
}

impl Stats {
    pub(crate) fn record(&mut self, stat: Stat, d: Duration) {
        self.lat_us[stat as usize].push(d.as_micros().min(u32::MAX as u128) as u32);
    }

    pub(crate) fn merge(&mut self, other: Stats) {
        for (a, b) in self.lat_us.iter_mut().zip(other.lat_us) {
            a.extend(b);
        }
        self.sessions += other.sessions;
        self.errors += other.errors;
        self.round_trips += other.round_trips;
        self.writes += other.writes;
        for (k, v) in other.replies {
            *self.replies.entry(k).or_default() += v;
        }
        for (k, v) in other.error_kinds {
            *self.error_kinds.entry(k).or_default() += v;
        }
        self.protocol = self.protocol.or(other.protocol);
    }
}
