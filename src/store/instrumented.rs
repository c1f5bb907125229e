//! Store calls timed and counted: the one place that records what the sessions and the purge
//! task see of the greylist store, in `mxsentry_greylist_operation_duration_seconds{backend,op}`,
//! `mxsentry_greylist_errors_total{backend}` and `mxsentry_greylist_entries{backend}`. (Failed
//! commits, which no call returns, and how opening went are counted where they happen: in the
//! embedded store and in [`store::open`](fn@super::open).)
//!
//! [`Instrumented`] wraps a store with methods of its own rather than implementing
//! [`GreylistStore`]: the `op` label says what a call is *for* (the greylist check makes three
//! different `update` calls), which the trait's methods do not tell; and a second
//! `#[async_trait]` layer would box every call's future once more.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Entry, GreylistStore, StoreError, UpdateFn};
use crate::metrics::metrics;

/// What a timed call is for: its `op` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// The client's autowhitelist entry, read (and refreshed when it whitelists the client).
    Lookup,
    /// The triplet's entry, read and moved along its lifecycle.
    Record,
    /// The client's count of accepted deliveries, after one more.
    Touch,
    /// The periodic purge of expired entries.
    Purge,
}

impl Op {
    /// The label value (one of [`crate::metrics::GREYLIST_OPS`]).
    pub fn label(self) -> &'static str {
        match self {
            Op::Lookup => "lookup",
            Op::Record => "record",
            Op::Touch => "touch",
            Op::Purge => "purge",
        }
    }
}

/// A greylist store whose calls are timed and counted.
#[derive(Clone)]
pub struct Instrumented {
    store: Arc<dyn GreylistStore>,
}

impl Instrumented {
    pub fn new(store: Arc<dyn GreylistStore>) -> Instrumented {
        Instrumented { store }
    }

    /// The store itself (calls made through it are not counted).
    pub fn store(&self) -> &Arc<dyn GreylistStore> {
        &self.store
    }

    /// [`GreylistStore::backend`]: the `backend` label.
    pub fn backend(&self) -> &'static str {
        self.store.backend()
    }

    /// [`GreylistStore::update`] for `op`, failing with [`StoreError::Timeout`] once `deadline`
    /// is over. Timed up to its result (a timed-out call: up to the deadline); a failure, the
    /// timeout included, counts as a store error.
    pub async fn update(
        &self,
        op: Op,
        deadline: Duration,
        key: &str,
        f: &UpdateFn<'_>,
    ) -> Result<Option<Entry>, StoreError> {
        let call = self.store.update(key, f);
        let started = Instant::now();
        let result = match tokio::time::timeout(deadline, call).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Timeout),
        };
        self.record(op, started, result.is_ok());
        result
    }

    /// [`GreylistStore::purge`], timed and counted as [`Op::Purge`]. No deadline: a purge
    /// works through the whole store in batches.
    pub async fn purge(&self, now: u64) -> Result<u64, StoreError> {
        let started = Instant::now();
        let result = self.store.purge(now).await;
        self.record(Op::Purge, started, result.is_ok());
        result
    }

    /// Sets the entries gauge from [`GreylistStore::len`]; a failed count leaves it as it was
    /// (and is not an error: the purge or session that meets the failure counts it).
    pub async fn count_entries(&self) {
        if let Ok(n) = self.store.len().await {
            metrics().greylist_entries(self.store.backend(), n as i64);
        }
    }

    fn record(&self, op: Op, started: Instant, ok: bool) {
        metrics().greylist_op(
            self.store.backend(),
            op.label(),
            started.elapsed().as_secs_f64(),
            ok,
        );
    }
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;

    use super::*;

    /// A store named `backend` (a name of its own, so that the counts below are this test's
    /// alone) whose updates take `delay`, whose purges fail and which holds 7 entries.
    struct Slow {
        backend: &'static str,
        delay: Duration,
    }

    fn unused() -> StoreError {
        StoreError::Unavailable("not used here".into())
    }

    #[async_trait]
    impl GreylistStore for Slow {
        fn backend(&self) -> &'static str {
            self.backend
        }
        async fn update(&self, _: &str, _: &UpdateFn<'_>) -> Result<Option<Entry>, StoreError> {
            tokio::time::sleep(self.delay).await;
            Ok(None)
        }
        async fn get(&self, _: &str) -> Result<Option<Entry>, StoreError> {
            Err(unused())
        }
        async fn put(&self, _: &str, _: Entry) -> Result<(), StoreError> {
            Err(unused())
        }
        async fn delete(&self, _: &str) -> Result<bool, StoreError> {
            Err(unused())
        }
        async fn list(&self, _: &str, _: usize) -> Result<Vec<(String, Entry)>, StoreError> {
            Err(unused())
        }
        async fn purge(&self, _: u64) -> Result<u64, StoreError> {
            Err(StoreError::Unavailable("disk on fire".into()))
        }
        async fn len(&self) -> Result<u64, StoreError> {
            Ok(7)
        }
        async fn flush(&self) -> Result<(), StoreError> {
            Err(unused())
        }
    }

    fn slow(backend: &'static str, delay: Duration) -> Instrumented {
        Instrumented::new(Arc::new(Slow { backend, delay }))
    }

    /// The value of the sample `series` (`name{labels}`) in the global registry, if any.
    fn sample(series: &str) -> Option<f64> {
        metrics().render().lines().find_map(|l| {
            let (s, v) = l.rsplit_once(' ')?;
            (s == series).then(|| v.parse().ok())?
        })
    }

    #[tokio::test]
    async fn a_call_past_its_deadline_is_timed_to_the_deadline_and_counted_as_an_error() {
        let s = slow("instrumented_timeout", Duration::from_secs(30));
        let deadline = Duration::from_millis(50);
        let keep = |_: Option<Entry>| crate::store::Write::Keep;
        let r = s.update(Op::Lookup, deadline, "c:x", &keep).await;
        assert_eq!(r, Err(StoreError::Timeout));
        let op = r#"{backend="instrumented_timeout",op="lookup"}"#;
        let count = "mxsentry_greylist_operation_duration_seconds_count";
        let sum = "mxsentry_greylist_operation_duration_seconds_sum";
        assert_eq!(sample(&format!("{count}{op}")), Some(1.0));
        let took = sample(&format!("{sum}{op}")).unwrap_or_default();
        assert!((0.05..5.0).contains(&took), "{took}");
        assert_eq!(
            sample(r#"mxsentry_greylist_errors_total{backend="instrumented_timeout"}"#),
            Some(1.0)
        );
    }

    #[tokio::test]
    async fn calls_are_counted_under_their_op_and_failures_as_errors() {
        let s = slow("instrumented_ops", Duration::ZERO);
        let keep = |_: Option<Entry>| crate::store::Write::Keep;
        let deadline = Duration::from_secs(5);
        assert_eq!(s.update(Op::Record, deadline, "t:x", &keep).await, Ok(None));
        assert_eq!(s.update(Op::Touch, deadline, "c:x", &keep).await, Ok(None));
        assert_eq!(s.update(Op::Touch, deadline, "c:x", &keep).await, Ok(None));
        let errors = r#"mxsentry_greylist_errors_total{backend="instrumented_ops"}"#;
        assert_eq!(sample(errors), None, "no error yet");
        assert!(s.purge(0).await.is_err());
        s.count_entries().await;
        let count = |op: &str| {
            sample(&format!(
                r#"mxsentry_greylist_operation_duration_seconds_count{{backend="instrumented_ops",op="{op}"}}"#
            ))
        };
        assert_eq!(count("record"), Some(1.0));
        assert_eq!(count("touch"), Some(2.0));
        assert_eq!(count("purge"), Some(1.0));
        assert_eq!(count("lookup"), None);
        assert_eq!(sample(errors), Some(1.0), "the failed purge");
        assert_eq!(
            sample(r#"mxsentry_greylist_entries{backend="instrumented_ops"}"#),
            Some(7.0)
        );
    }
}
