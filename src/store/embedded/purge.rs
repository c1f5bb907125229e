//! Purging expired entries, on the committer thread.
//!
//! **Purge** scans the file in key order and deletes expired entries 1,000 per write
//! transaction, running the regular group commit between batches, so sessions (which only
//! touch the overlay) never wait for it.

use std::time::Instant;

use redb::Durability;

use super::file::db_err;
use super::format::{decode, TABLE};
use super::Shared;
use crate::store::StoreError;

/// Expired keys deleted per purge write transaction.
const PURGE_BATCH: usize = 1_000;

/// Entries examined per purge read transaction.
const PURGE_SCAN: usize = 20_000;

impl Shared {
    /// Deletes entries expired at `now` in batches, running due group commits in between.
    pub(super) fn purge(&self, now: u64, last_commit: &mut Instant) -> Result<u64, StoreError> {
        let mut total = 0u64;
        let mut cursor: Option<String> = None;
        loop {
            let (expired, next) = self.scan_expired(now, cursor.as_deref())?;
            let doomed: Vec<String> = expired
                .into_iter()
                .filter(|k| !self.in_overlay(k))
                .collect();
            let last_batch = next.is_none();
            if !doomed.is_empty() || last_batch {
                let db = self.db()?;
                let mut tx = db.begin_write().map_err(|e| db_err(&self.path, e))?;
                if last_batch {
                    // Makes this and the earlier non-durable purge batches durable.
                    tx.set_durability(Durability::Immediate);
                    tx.set_quick_repair(true);
                } else {
                    tx.set_durability(Durability::None);
                }
                {
                    let mut table = tx.open_table(TABLE).map_err(|e| db_err(&self.path, e))?;
                    for k in &doomed {
                        if table
                            .remove(k.as_str())
                            .map_err(|e| db_err(&self.path, e))?
                            .is_some()
                        {
                            total += 1;
                        }
                    }
                }
                tx.commit().map_err(|e| db_err(&self.path, e))?;
            }
            if !self.commit_interval.is_zero() && last_commit.elapsed() >= self.commit_interval
                || self.commit_interval.is_zero()
            {
                self.commit();
                *last_commit = Instant::now();
            }
            match next {
                Some(n) => cursor = Some(n),
                None => return Ok(total),
            }
        }
    }

    /// Up to [`PURGE_BATCH`] expired (or undecodable) keys after `cursor`, examining at most
    /// [`PURGE_SCAN`] entries; and where to go on (`None`: end of table).
    fn scan_expired(
        &self,
        now: u64,
        cursor: Option<&str>,
    ) -> Result<(Vec<String>, Option<String>), StoreError> {
        use std::ops::Bound;
        let e = |e| db_err(&self.path, e);
        let tx = self.db()?.begin_read().map_err(e)?;
        let table = tx.open_table(TABLE).map_err(|x| db_err(&self.path, x))?;
        let lower = match cursor {
            Some(c) => Bound::Excluded(c),
            None => Bound::Unbounded,
        };
        let range = table
            .range::<&str>((lower, Bound::Unbounded))
            .map_err(|x| db_err(&self.path, x))?;
        let mut expired = Vec::new();
        let mut last = None;
        for (n, item) in range.enumerate() {
            let (k, v) = item.map_err(|x| db_err(&self.path, x))?;
            let key = k.value();
            if decode(v.value()).is_none_or(|e| e.is_expired(now)) {
                expired.push(key.to_owned());
            }
            if expired.len() >= PURGE_BATCH || n + 1 >= PURGE_SCAN {
                last = Some(key.to_owned());
                break;
            }
        }
        Ok((expired, last))
    }
}
