//! The admin and maintenance operations of the Redis store (`list`, `purge`, `len`): walks of
//! the key space with `SCAN`, in batches, each batch within the deadline. On a Redis Cluster
//! the walk visits every primary in turn (`CLUSTER SLOTS` names them), and values are read and
//! deleted key by key (keys of one batch live in many slots).

use std::collections::BTreeMap;

use ::redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use ::redis::Value;

use super::link::Con;
use super::{decode, glob_escape, store_key_of, RedisStore, KEY_PREFIX, MGET_BATCH, SCAN_BATCH};
use crate::store::{Entry, StoreError};

/// One server to scan: the single server (`None`) or a cluster primary.
type Node = Option<(String, u16)>;

impl RedisStore {
    /// The pattern of our keys whose store key starts with `prefix`.
    fn pattern(&self, prefix: &str) -> String {
        if self.cluster {
            format!(
                "{}\\{{*\\}}{}*",
                glob_escape(KEY_PREFIX),
                glob_escape(prefix)
            )
        } else {
            format!("{}{}*", glob_escape(KEY_PREFIX), glob_escape(prefix))
        }
    }

    /// The servers a walk of the key space visits.
    async fn scan_nodes(&self) -> Result<Vec<Node>, StoreError> {
        if !self.cluster {
            return Ok(vec![None]);
        }
        let slots: Value = self
            .run(self.deadline(), true, |con| async move {
                let Con::Cluster(mut con) = con else {
                    return Ok(Value::Nil);
                };
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
                con.route_command(::redis::cmd("CLUSTER").arg("SLOTS"), routing)
                    .await
            })
            .await?;
        let mut nodes: Vec<Node> = Vec::new();
        let Value::Array(ranges) = slots else {
            return Err(StoreError::Unavailable(
                "redis: unexpected CLUSTER SLOTS reply".into(),
            ));
        };
        for range in ranges {
            let Value::Array(parts) = range else { continue };
            let Some(Value::Array(primary)) = parts.get(2) else {
                continue;
            };
            let host = match primary.first() {
                Some(Value::BulkString(h)) => String::from_utf8_lossy(h).into_owned(),
                _ => continue,
            };
            let Some(Value::Int(port)) = primary.get(1) else {
                continue;
            };
            let node = Some((host, u16::try_from(*port).unwrap_or(0)));
            if !nodes.contains(&node) {
                nodes.push(node);
            }
        }
        Ok(nodes)
    }

    /// One `SCAN` step on `node` over our keys matching `pattern`.
    async fn scan_step(
        &self,
        node: &Node,
        cursor: u64,
        pattern: &str,
    ) -> Result<(u64, Vec<Vec<u8>>), StoreError> {
        self.run(self.deadline(), true, |con| async move {
            let mut scan = ::redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(SCAN_BATCH);
            match (con, node) {
                (Con::Cluster(mut con), Some((host, port))) => {
                    let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                        host: host.clone(),
                        port: *port,
                    });
                    let reply = con.route_command(&scan, routing).await?;
                    ::redis::from_redis_value(&reply)
                }
                (mut con, _) => scan.query_async(&mut con).await,
            }
        })
        .await
    }

    /// The values of `keys` (`MGET`; on a cluster, one `GET` per key).
    async fn mget(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        if self.cluster {
            let mut values = Vec::with_capacity(keys.len());
            for key in keys {
                values.push(self.get_raw(self.deadline(), key).await?);
            }
            return Ok(values);
        }
        self.run(self.deadline(), true, |mut con| async move {
            ::redis::cmd("MGET").arg(keys).query_async(&mut con).await
        })
        .await
    }

    /// Deletes each key that still holds its value; how many were deleted.
    async fn delete_if_unchanged(
        &self,
        keys: &[&str],
        values: &[Vec<u8>],
    ) -> Result<u64, StoreError> {
        // One script call per batch; on a cluster per key (a script's keys must share a slot).
        let per_call = if self.cluster { 1 } else { keys.len().max(1) };
        let mut removed = 0;
        for (keys, values) in keys.chunks(per_call).zip(values.chunks(per_call)) {
            let n: u64 = self
                .run(self.deadline(), true, |mut con| async move {
                    let mut call = self.delete_if.prepare_invoke();
                    for (k, v) in keys.iter().zip(values) {
                        call.key(*k).arg(&v[..]);
                    }
                    call.invoke_async(&mut con).await
                })
                .await?;
            removed += n;
        }
        Ok(removed)
    }

    pub(super) async fn list_entries(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Entry)>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let pattern = self.pattern(prefix);
        // The `limit` smallest store keys (key order, like the embedded store), deduplicated
        // (SCAN may return a key twice); each with its Redis key.
        let mut keys: BTreeMap<String, String> = BTreeMap::new();
        for node in self.scan_nodes().await? {
            let mut cursor = 0;
            loop {
                let (next, batch) = self.scan_step(&node, cursor, &pattern).await?;
                for raw_key in batch {
                    let Ok(full) = String::from_utf8(raw_key) else {
                        continue;
                    };
                    if let Some(key) = store_key_of(&full, self.cluster) {
                        keys.insert(key.to_string(), full);
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
        }
        let keys: Vec<(String, String)> = keys.into_iter().collect();
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(MGET_BATCH) {
            let fulls: Vec<String> = chunk.iter().map(|(_, full)| full.clone()).collect();
            let values = self.mget(&fulls).await?;
            for ((key, _), value) in chunk.iter().zip(values) {
                match value.as_deref().map(decode) {
                    None => {} // expired since the scan
                    Some(Ok(entry)) => out.push((key.clone(), entry)),
                    Some(Err(why)) => {
                        tracing::warn!(key, %why, "redis store: undecodable entry skipped")
                    }
                }
            }
        }
        Ok(out)
    }

    pub(super) async fn purge_expired(&self, now: u64) -> Result<u64, StoreError> {
        let pattern = self.pattern("");
        let mut removed = 0u64;
        for node in self.scan_nodes().await? {
            let mut cursor = 0;
            loop {
                let (next, batch) = self.scan_step(&node, cursor, &pattern).await?;
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
                    if !doomed_keys.is_empty() {
                        removed += self
                            .delete_if_unchanged(&doomed_keys, &doomed_values)
                            .await?;
                    }
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        Ok(removed)
    }

    pub(super) async fn count(&self) -> Result<u64, StoreError> {
        if self.dedicated_db {
            // On a cluster the crate sends DBSIZE to every primary and adds the answers.
            return self
                .run(self.deadline(), true, |mut con| async move {
                    ::redis::cmd("DBSIZE").query_async(&mut con).await
                })
                .await;
        }
        let pattern = self.pattern("");
        let mut count = 0u64;
        for node in self.scan_nodes().await? {
            let mut cursor = 0;
            loop {
                let (next, batch) = self.scan_step(&node, cursor, &pattern).await?;
                count += batch.len() as u64;
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        Ok(count)
    }
}
