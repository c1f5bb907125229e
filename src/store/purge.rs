//! The periodic purge of expired entries (the daemon's; `mxsentry greylist purge` calls the
//! store directly).

use std::sync::Arc;
use std::time::Duration;

use super::instrumented::Instrumented;
use super::{unix_now, GreylistStore};

/// Purges expired entries every `interval` until `shutdown` turns true (or its sender is
/// dropped). Runs beside the sessions: the stores purge in batches, so updates interleave.
/// Failures are logged and retried at the next tick. Each purge is timed and counted
/// ([`Instrumented::purge`]) and refreshes the entries gauge.
pub async fn purge_task(
    store: Arc<dyn GreylistStore>,
    interval: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let store = Instrumented::new(store);
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate: start one interval from now
    loop {
        if *shutdown.borrow() {
            return;
        }
        tokio::select! {
            _ = tick.tick() => {
                let started = std::time::Instant::now();
                let result = store.purge(unix_now()).await;
                store.count_entries().await;
                match result {
                    Ok(n) => tracing::debug!(
                        backend = store.backend(),
                        purged = n,
                        ms = started.elapsed().as_millis() as u64,
                        "greylist purge"
                    ),
                    Err(e) => tracing::warn!(backend = store.backend(), error = %e, "greylist purge failed"),
                }
            }
            r = shutdown.changed() => {
                if r.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemStore;
    use crate::store::Entry;

    #[tokio::test]
    async fn purge_task_purges_periodically_and_stops() {
        let store = Arc::new(MemStore::default());
        store
            .put(
                "t:old",
                Entry {
                    expires: 1,
                    ..Entry::default()
                },
            )
            .await
            .unwrap();
        store
            .put(
                "t:live",
                Entry {
                    expires: u64::MAX,
                    ..Entry::default()
                },
            )
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(purge_task(store.clone(), Duration::from_millis(30), rx));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(
            store.len().await.unwrap(),
            2,
            "not before the first interval"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(store.len().await.unwrap(), 1);
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("purge task stops on shutdown")
            .unwrap();
    }
}
