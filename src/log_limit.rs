//! Rate-limited warnings: a fault that hits every session (a dead DNS list, connections over
//! the limit, no open files left) must be visible in the log without flooding it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A warning said at most once per `period` while its cause lasts: the first occurrence at
/// once, then the count of each period. A flood of connections over the limit must not become
/// a flood of log lines; the exact numbers are in the metrics.
pub struct WarnEvery {
    period: Duration,
    pending: AtomicU64,
    armed: AtomicBool,
    say: Box<dyn Fn(u64) + Send + Sync>,
}

impl WarnEvery {
    pub fn new(period: Duration, say: impl Fn(u64) + Send + Sync + 'static) -> Arc<WarnEvery> {
        Arc::new(WarnEvery {
            period,
            pending: AtomicU64::new(0),
            armed: AtomicBool::new(false),
            say: Box::new(say),
        })
    }

    /// Counts one occurrence; logs now if no line was written in the current period.
    pub fn hit(self: &Arc<Self>) {
        self.pending.fetch_add(1, Ordering::AcqRel);
        if self.armed.swap(true, Ordering::AcqRel) {
            return;
        }
        (self.say)(self.pending.swap(0, Ordering::AcqRel));
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(me.period).await;
                let n = me.pending.swap(0, Ordering::AcqRel);
                if n > 0 {
                    (me.say)(n);
                    continue;
                }
                me.armed.store(false, Ordering::Release);
                // A hit between the swap and the store found us armed and left its count.
                if me.pending.load(Ordering::Acquire) == 0 || me.armed.swap(true, Ordering::AcqRel)
                {
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn warn_every_says_the_first_at_once_then_counts_per_period() {
        let said = Arc::new(Mutex::new(Vec::new()));
        let log = said.clone();
        // Generous margins around a 100 ms period: a busy machine delays timers.
        let w = WarnEvery::new(Duration::from_millis(100), move |n| {
            log.lock().unwrap().push(n)
        });
        for _ in 0..5 {
            w.hit();
        }
        assert_eq!(*said.lock().unwrap(), [1], "the first at once");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(*said.lock().unwrap(), [1, 4], "then the rest of the period");
        // A quiet period disarms it: the next occurrence is said at once again.
        tokio::time::sleep(Duration::from_millis(400)).await;
        w.hit();
        assert_eq!(*said.lock().unwrap(), [1, 4, 1]);
    }
}
