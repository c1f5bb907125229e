//! The admin and maintenance operations of the Redis store (`list`, `purge`, `len`): walks of
//! the key space with `SCAN`, in batches, each batch within the deadline.

use std::collections::BTreeSet;

use super::{decode, glob_escape, RedisStore, KEY_PREFIX, MGET_BATCH, SCAN_BATCH};
use crate::store::{Entry, StoreError};

impl RedisStore {
    /// One `SCAN` step over our keys matching `pattern`.
    pub(super) async fn scan_step(
        &self,
        cursor: u64,
        pattern: &str,
    ) -> Result<(u64, Vec<Vec<u8>>), StoreError> {
        self.run(self.deadline(), true, |mut con| async move {
            ::redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(SCAN_BATCH)
                .query_async(&mut con)
                .await
        })
        .await
    }

    async fn mget(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.run(self.deadline(), true, |mut con| async move {
            ::redis::cmd("MGET").arg(keys).query_async(&mut con).await
        })
        .await
    }

    pub(super) async fn list_entries(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Entry)>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let pattern = format!("{}{}*", glob_escape(KEY_PREFIX), glob_escape(prefix));
        // The `limit` smallest keys (key order, like the embedded store), deduplicated (SCAN may
        // return a key twice).
        let mut keys: BTreeSet<String> = BTreeSet::new();
        let mut cursor = 0;
        loop {
            let (next, batch) = self.scan_step(cursor, &pattern).await?;
            for raw_key in batch {
                let Ok(full) = String::from_utf8(raw_key) else {
                    continue;
                };
                if full.len() > KEY_PREFIX.len() && full.starts_with(KEY_PREFIX) {
                    keys.insert(full);
                    if keys.len() > limit {
                        keys.pop_last();
                    }
                }
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        let keys: Vec<String> = keys.into_iter().collect();
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(MGET_BATCH) {
            let values = self.mget(chunk).await?;
            for (full, value) in chunk.iter().zip(values) {
                let key = &full[KEY_PREFIX.len()..];
                match value.as_deref().map(decode) {
                    None => {} // expired since the scan
                    Some(Ok(entry)) => out.push((key.to_string(), entry)),
                    Some(Err(why)) => {
                        tracing::warn!(key, %why, "redis store: undecodable entry skipped")
                    }
                }
            }
        }
        Ok(out)
    }

    pub(super) async fn purge_expired(&self, now: u64) -> Result<u64, StoreError> {
        let pattern = format!("{}*", glob_escape(KEY_PREFIX));
        let mut removed = 0u64;
        let mut cursor = 0;
        loop {
            let (next, batch) = self.scan_step(cursor, &pattern).await?;
            let batch: Vec<String> = batch
                .into_iter()
                .filter_map(|k| String::from_utf8(k).ok())
                .collect();
            for chunk in batch.chunks(MGET_BATCH) {
                let values = self.mget(chunk).await?;
                let mut doomed_keys: Vec<&str> = Vec::new();
                let mut doomed_values: Vec<Vec<u8>> = Vec::new();
                for (key, value) in chunk.iter().zip(values) {
                    let Some(value) = value else { continue };
                    let expired = match decode(&value) {
                        Ok(entry) => entry.is_expired(now),
                        Err(why) => {
                            tracing::warn!(key, %why, "redis store: purging undecodable entry");
                            true
                        }
                    };
                    if expired {
                        doomed_keys.push(key);
                        doomed_values.push(value);
                    }
                }
                if doomed_keys.is_empty() {
                    continue;
                }
                let (doomed_keys, doomed_values) = (&doomed_keys, &doomed_values);
                let n: u64 = self
                    .run(self.deadline(), true, |mut con| async move {
                        let mut call = self.delete_if.prepare_invoke();
                        for (k, v) in doomed_keys.iter().zip(doomed_values) {
                            call.key(*k).arg(&v[..]);
                        }
                        call.invoke_async(&mut con).await
                    })
                    .await?;
                removed += n;
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        Ok(removed)
    }

    pub(super) async fn count(&self) -> Result<u64, StoreError> {
        if self.dedicated_db {
            return self
                .run(self.deadline(), true, |mut con| async move {
                    ::redis::cmd("DBSIZE").query_async(&mut con).await
                })
                .await;
        }
        let pattern = format!("{}*", glob_escape(KEY_PREFIX));
        let mut count = 0u64;
        let mut cursor = 0;
        loop {
            let (next, batch) = self.scan_step(cursor, &pattern).await?;
            count += batch.len() as u64;
            cursor = next;
            if cursor == 0 {
                return Ok(count);
            }
        }
    }
}
