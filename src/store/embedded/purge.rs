//! Purging expired entries, on the committer thread.
//!
//! **Purge** scans the store in key order and deletes expired entries 1,000 per batch (a
//! tombstone each, dropped by the next compaction that reaches them), running the regular
//! group commit between batches, so sessions (which only touch the overlay) never wait for it.

use std::time::Instant;

use super::file::db_err;
use super::format::decode;
use super::Shared;
use crate::store::StoreError;

/// Expired keys deleted per purge batch.
const PURGE_BATCH: usize = 1_000;

/// Entries examined per scan.
const PURGE_SCAN: usize = 20_000;

/// Expired keys found by a scan, and the key to go on after (`None`: end of the store).
type Scanned = (Vec<Vec<u8>>, Option<Vec<u8>>);

impl Shared {
    /// Deletes entries expired at `now` in batches, running due group commits in between.
    pub(super) fn purge(&self, now: u64, last_commit: &mut Instant) -> Result<u64, StoreError> {
        let mut total = 0u64;
        let mut cursor: Option<Vec<u8>> = None;
        loop {
            let (expired, next) = self.scan_expired(now, cursor.as_deref())?;
            let doomed: Vec<Vec<u8>> = expired
                .into_iter()
                .filter(|k| std::str::from_utf8(k).map_or(true, |k| !self.in_overlay(k)))
                .collect();
            let last_batch = next.is_none();
            if !doomed.is_empty() {
                let db = self.db()?;
                let mut batch = db.db.batch();
                for k in &doomed {
                    batch.remove(&db.ks, k.as_slice());
                }
                total += doomed.len() as u64;
                batch.commit().map_err(|e| db_err(&self.path, e))?;
            }
            if last_batch {
                // Makes this and the earlier purge batches durable.
                self.db()?
                    .db
                    .persist(fjall::PersistMode::SyncAll)
                    .map_err(|e| db_err(&self.path, e))?;
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
    /// [`PURGE_SCAN`] entries; and where to go on (`None`: end of the store).
    fn scan_expired(&self, now: u64, cursor: Option<&[u8]>) -> Result<Scanned, StoreError> {
        use std::ops::Bound;
        let db = self.db()?;
        let lower = match cursor {
            Some(c) => Bound::Excluded(c),
            None => Bound::Unbounded,
        };
        let mut expired = Vec::new();
        let mut last = None;
        for (n, item) in db
            .ks
            .range::<&[u8], _>((lower, Bound::Unbounded))
            .enumerate()
        {
            let (k, v) = item.into_inner().map_err(|e| db_err(&self.path, e))?;
            if decode(&v).is_none_or(|e| e.is_expired(now)) {
                expired.push(k.to_vec());
            }
            if expired.len() >= PURGE_BATCH || n + 1 >= PURGE_SCAN {
                last = Some(k.to_vec());
                break;
            }
        }
        Ok((expired, last))
    }
}
