//! Rate-limited log lines: a fault that hits every session (a dead DNS list, a full disk, a
//! connection flood) must be visible in the log without flooding it. At most one line per key
//! per interval; the line says how many events it stands for.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Events per key since the last line, and when that line was written.
pub struct LogLimiter {
    interval: Duration,
    /// (key, last line, events since): few keys (configured zones, one per fault kind), so
    /// a scan is cheaper than hashing; and `Vec::new` lets a limiter be a `static`.
    keys: Mutex<Vec<(String, Option<Instant>, u64)>>,
}

/// Most distinct keys remembered (keys come from the configuration, e.g. zone names; the bound
/// only guards against a wiring mistake).
const MAX_KEYS: usize = 256;

impl LogLimiter {
    pub const fn new(interval: Duration) -> LogLimiter {
        LogLimiter {
            interval,
            keys: Mutex::new(Vec::new()),
        }
    }

    /// Records one event for `key`. Returns `Some(n)` when a line is due now: `n` events
    /// (this one included) happened since the last line for the key.
    pub fn event(&self, key: &str) -> Option<u64> {
        self.event_at(key, Instant::now())
    }

    fn event_at(&self, key: &str, now: Instant) -> Option<u64> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let i = match keys.iter().position(|(k, ..)| k == key) {
            Some(i) => i,
            None => {
                if keys.len() >= MAX_KEYS {
                    keys.clear();
                }
                keys.push((key.to_string(), None, 0));
                keys.len() - 1
            }
        };
        let (_, last, count) = &mut keys[i];
        *count += 1;
        if last.is_some_and(|t| now.duration_since(t) < self.interval) {
            return None;
        }
        *last = Some(now);
        Some(std::mem::take(count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_counting_what_it_stands_for() {
        let l = LogLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(l.event_at("a", t0), Some(1));
        assert_eq!(l.event_at("a", t0 + Duration::from_secs(1)), None);
        assert_eq!(l.event_at("b", t0 + Duration::from_secs(1)), Some(1));
        assert_eq!(l.event_at("a", t0 + Duration::from_secs(5)), None);
        assert_eq!(l.event_at("a", t0 + Duration::from_secs(11)), Some(3));
        assert_eq!(l.event_at("a", t0 + Duration::from_secs(12)), None);
    }
}
