//! Moving from postgrey: `mxsentry greylist import postgrey DBDIR` carries its learned state
//! over, `mxsentry config import postgrey` its whitelist files and settings
//! ([`whitelists`]). docs/greylisting.md, "Migrating from postgrey", is the admin's guide.
//!
//! The state is read through BerkeleyDB's own `db_recover` and `db_dump` on a private copy
//! of postgrey's environment, never by reading the btree pages here: postgrey's environment
//! is transactional, and its recent commits may be only in the log ([`db_dump`] explains).
//! What the records become is in [`records`]; everything is written with
//! [`crate::admin::put_entries`], so the import works the way every admin command does.

pub mod cli;
pub mod db_dump;
pub mod records;
pub mod whitelists;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;

use records::{Mapped, PostgreySettings};

use crate::config::Config;
use crate::store::Entry;

/// postgrey's triplet database in its `--dbdir`.
pub const TRIPLETS_DB: &str = "postgrey.db";
/// postgrey's client autowhitelist database (only with client autowhitelisting on).
pub const CLIENTS_DB: &str = "postgrey_clients.db";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Passed,
    Pending,
    Client,
}

/// The records read so far and what they became.
#[derive(Default)]
pub struct Plan {
    entries: HashMap<String, (Entry, Kind)>,
    triplets_read: u64,
    passed: u64,
    pending: u64,
    clients_read: u64,
    clients: u64,
    /// Reason → (how many, the first record skipped for it).
    skipped: BTreeMap<String, (u64, String)>,
    merged: u64,
}

fn record_text(key: &[u8], value: &[u8]) -> String {
    format!(
        "{} = {}",
        String::from_utf8_lossy(key),
        String::from_utf8_lossy(value)
    )
}

impl Plan {
    fn skip(&mut self, reason: String, key: &[u8], value: &[u8]) {
        let slot = self
            .skipped
            .entry(reason)
            .or_insert_with(|| (0, record_text(key, value)));
        slot.0 += 1;
    }

    /// Two records may map to one key (postgrey's /24 under a wider `ipv4_prefix`, two
    /// senders that our normalisation joins): a passed one wins over a pending one, then the
    /// one seen last.
    fn add(&mut self, key: String, entry: Entry, kind: Kind) {
        use std::collections::hash_map::Entry as Slot;
        match self.entries.entry(key) {
            Slot::Vacant(v) => {
                v.insert((entry, kind));
            }
            Slot::Occupied(mut o) => {
                self.merged += 1;
                let (old, _) = o.get();
                let better = (entry.passed > 0, entry.last_seen) > (old.passed > 0, old.last_seen);
                if better {
                    o.insert((entry, kind));
                }
            }
        }
    }

    /// One `postgrey.db` record.
    pub fn triplet(&mut self, key: &[u8], value: &[u8], s: &PostgreySettings, config: &Config) {
        self.triplets_read += 1;
        let triplet = match records::parse_triplet(key, value, s) {
            Ok(t) => t,
            Err(reason) => return self.skip(reason, key, value),
        };
        match records::map_triplet(&triplet, s, &config.greylist) {
            Mapped::Entry(k, e) => {
                let kind = if e.passed > 0 {
                    self.passed += 1;
                    Kind::Passed
                } else {
                    self.pending += 1;
                    Kind::Pending
                };
                self.add(k, e, kind);
            }
            Mapped::Skip(reason) => self.skip(reason, key, value),
        }
    }

    /// One `postgrey_clients.db` record.
    pub fn client(&mut self, key: &[u8], value: &[u8], s: &PostgreySettings, config: &Config) {
        self.clients_read += 1;
        let client = match records::parse_client(key, value) {
            Ok(c) => c,
            Err(reason) => return self.skip(reason, key, value),
        };
        match records::map_client(&client, s, &config.greylist) {
            Mapped::Entry(k, e) => {
                self.clients += 1;
                self.add(k, e, Kind::Client);
            }
            Mapped::Skip(reason) => self.skip(reason, key, value),
        }
    }

    /// The entries still alive at `now`, sorted by key (the store's order), and how many of
    /// each kind had already expired.
    fn live_entries(&self, now: u64) -> (Vec<(String, Entry)>, [u64; 3]) {
        let mut expired = [0u64; 3];
        let mut live = Vec::with_capacity(self.entries.len());
        for (key, (entry, kind)) in &self.entries {
            if entry.is_expired(now) {
                expired[*kind as usize] += 1;
            } else {
                live.push((key.clone(), *entry));
            }
        }
        live.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        (live, expired)
    }

    /// The counts an admin reads after the import.
    fn report(&self, config: &Config, expired: [u64; 3], written: u64, late: u64) -> String {
        let g = &config.greylist;
        let mut out = String::new();
        let skipped_triplets = self.triplets_read - self.passed - self.pending;
        let _ = writeln!(
            out,
            "{TRIPLETS_DB}: {} triplets read: {} passed, {} pending, {skipped_triplets} skipped",
            self.triplets_read, self.passed, self.pending
        );
        let _ = writeln!(
            out,
            "{CLIENTS_DB}: {} clients read: {} autowhitelisted, {} skipped",
            self.clients_read,
            self.clients,
            self.clients_read - self.clients
        );
        for (reason, (n, first)) in &self.skipped {
            let _ = writeln!(out, "skipped {n}: {reason} (first: {first})");
        }
        let autowhite = duration_text(g.autowhite.as_secs());
        let retry = duration_text(g.retry_window.as_secs());
        let reasons = [
            format!("passed triplets last seen more than greylist.autowhite ({autowhite}) ago"),
            format!("pending triplets first seen more than greylist.retry_window ({retry}) ago"),
            format!("clients last seen more than greylist.autowhite ({autowhite}) ago"),
        ];
        for (n, reason) in expired.iter().zip(&reasons) {
            if *n > 0 {
                let _ = writeln!(out, "expired {n}: {reason}");
            }
        }
        if late > 0 {
            let _ = writeln!(out, "expired {late}: during the import");
        }
        if self.merged > 0 {
            let _ = writeln!(
                out,
                "merged {}: records with the same mxsentry key (kept: passed over pending, \
                 then the one seen last)",
                self.merged
            );
        }
        let _ = writeln!(out, "written {written} entries");
        if g.pool_by_rdns {
            let _ = writeln!(
                out,
                "note: greylist.pool_by_rdns = true: a client with a verified name is keyed by \
                 its rDNS pool, which postgrey did not record, so its imported entries are not \
                 found (it is greylisted once more); set pool_by_rdns = false to key by network \
                 as postgrey did"
            );
        }
        out
    }
}

/// `secs` as milter.toml writes a duration, in the largest unit that divides it (`"35d"`,
/// `"36h"`, `"300s"`).
pub fn duration_text(secs: u64) -> String {
    for (unit, len) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs > 0 && secs % len == 0 {
            return format!("{}{unit}", secs / len);
        }
    }
    format!("{secs}s")
}

/// `mxsentry greylist import postgrey DBDIR`: reads postgrey's databases in `dbdir` (postgrey
/// stopped) and writes what maps; returns the report.
pub async fn import(config: &Config, dbdir: &Path, s: &PostgreySettings) -> Result<String, String> {
    db_dump::ensure_not_running(dbdir)?;
    let snapshot = db_dump::Snapshot::take(dbdir)?;
    let mut plan = Plan::default();
    snapshot.dump(TRIPLETS_DB, |k, v| plan.triplet(k, v, s, config))?;
    if snapshot.has(CLIENTS_DB) {
        snapshot.dump(CLIENTS_DB, |k, v| plan.client(k, v, s, config))?;
    }
    drop(snapshot);
    let now = crate::store::unix_now();
    let (live, expired) = plan.live_entries(now);
    let (written, late) = crate::admin::put_entries(config, &live).await?;
    Ok(plan.report(config, expired, written, late))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_expired_and_skipped_records_are_reported() {
        let text = "[greylist]\nautowhite = \"1d\"\nretry_window = \"2d\"\npool_by_rdns = false\n\
                    ipv4_prefix = 16\n";
        let config = Config::parse(text, Path::new("t.toml")).unwrap();
        let s = PostgreySettings::default();
        let now = 1_700_000_000u64;
        let mut plan = Plan::default();
        let record = |net: &str, first: u64, last: u64| {
            (
                format!("{net}/a@b.example/c@d.example"),
                format!("{first},{last}"),
            )
        };
        // two postgrey /24s inside our /16: one key; the passed record wins over the pending
        for (k, v) in [
            record("192.0.2.0", now - 100, now - 90),
            record("192.0.3.0", now - 1000, now - 600),
            // passed 3 days ago: past autowhite (1d)
            record("198.51.100.0", now - 3 * 86_400, now - 3 * 86_400 + 400),
            (
                "5281d785ecd04f993e29cb1713bfdb07353c30da".to_owned(),
                "1,2".to_owned(),
            ),
        ] {
            plan.triplet(k.as_bytes(), v.as_bytes(), &s, &config);
        }
        let (live, expired) = plan.live_entries(now);
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].0, "t:192.0.0.0/16|a@b.example|c@d.example");
        assert_eq!(live[0].1.passed, 1);
        assert_eq!(expired, [1, 0, 0]);
        let report = plan.report(&config, expired, 1, 0);
        assert_eq!(
            report.lines().collect::<Vec<_>>(),
            vec![
                "postgrey.db: 4 triplets read: 2 passed, 1 pending, 1 skipped",
                "postgrey_clients.db: 0 clients read: 0 autowhitelisted, 0 skipped",
                "skipped 1: hashed by postgrey --privacy: the addresses cannot be recovered \
                 (first: 5281d785ecd04f993e29cb1713bfdb07353c30da = 1,2)",
                "expired 1: passed triplets last seen more than greylist.autowhite (1d) ago",
                "merged 1: records with the same mxsentry key (kept: passed over pending, then \
                 the one seen last)",
                "written 1 entries",
            ]
        );
    }

    #[test]
    fn durations_are_written_in_their_largest_unit() {
        assert_eq!(duration_text(35 * 86_400), "35d");
        assert_eq!(duration_text(36 * 3_600), "36h");
        assert_eq!(duration_text(300), "5m");
        assert_eq!(duration_text(301), "301s");
        assert_eq!(duration_text(0), "0s");
    }
}
