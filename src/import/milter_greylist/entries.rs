//! From dump tuples to our greylist entries: the time mapping and the merge of tuples that
//! fall on one key under our (coarser) rules. Pure.

use crate::checks::greylist::Timing;
use crate::store::Entry;

use super::dump::{Kind, Tuple};

/// Our entry for a tuple, so that it behaves as it did under milter-greylist:
///
/// * Greylisted (and tarpitted) tuples: milter-greylist's time is the moment the tuple
///   becomes acceptable. Our rule accepts a retry once `now - first_seen >= delay`, so
///   `first_seen = time - delay` (our `delay`) makes it acceptable at that same moment,
///   whatever delay milter-greylist used. The entry then lives for our `retry_window` from
///   that `first_seen` (`expires = first_seen + retry_window`); `config import` maps
///   milter-greylist's `timeout`, which it counts from the acceptable time, to
///   `retry_window = delay + timeout`, so the tuple is dropped at the same moment too.
///   `blocked = 1` (it was refused at least once), `passed = 0`.
/// * `AUTO` tuples: the time is when the autowhitelisting ends: `expires = time`,
///   `passed = 1`. milter-greylist keeps no date of the last delivery; `last_seen` is
///   estimated as `time - autowhite` (our `autowhite`), never later than `now`.
/// * The tarpit duration of a `TARPIT` tuple has no equivalent and is not kept.
pub fn entry_for(tuple: &Tuple<'_>, timing: &Timing, now: u64) -> Entry {
    match tuple.kind {
        Kind::Pending | Kind::Tarpit { .. } => {
            let first_seen = tuple.time.saturating_sub(timing.delay);
            Entry {
                first_seen,
                last_seen: first_seen,
                passed: 0,
                blocked: 1,
                expires: first_seen.saturating_add(timing.retry_window),
            }
        }
        Kind::Auto => {
            let last_seen = tuple.time.saturating_sub(timing.autowhite).min(now);
            Entry {
                first_seen: last_seen,
                last_seen,
                passed: 1,
                blocked: 1,
                expires: tuple.time,
            }
        }
    }
}

/// Which of two merged entries decided the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// The earlier tuple's entry.
    Earlier,
    /// The later tuple's entry.
    Later,
}

/// Merges two entries for one key (several tuples of milter-greylist become one triplet of
/// ours: same network, senders equal after our normalisation). The most permissive wins:
/// an autowhitelisted entry over a greylisted one; of two autowhitelisted entries the one
/// that expires last; of two greylisted entries the one acceptable first. Counts add up
/// (each tuple was refused at least once; each `AUTO` tuple passed at least once).
pub fn merge(earlier: Entry, later: Entry) -> (Entry, Kept) {
    let kept = match (earlier.passed > 0, later.passed > 0) {
        (true, false) => Kept::Earlier,
        (false, true) => Kept::Later,
        (true, true) if later.expires > earlier.expires => Kept::Later,
        (true, true) => Kept::Earlier,
        (false, false) if later.first_seen < earlier.first_seen => Kept::Later,
        (false, false) => Kept::Earlier,
    };
    let base = match kept {
        Kept::Earlier => earlier,
        Kept::Later => later,
    };
    let merged = Entry {
        passed: earlier.passed.saturating_add(later.passed),
        blocked: earlier.blocked.saturating_add(later.blocked),
        last_seen: earlier.last_seen.max(later.last_seen),
        ..base
    };
    (merged, kept)
}

/// Why a merge kept what it kept, for the report.
pub fn kept_reason(merged: &Entry) -> &'static str {
    if merged.passed > 0 {
        "the autowhitelisted tuple that expires last"
    } else {
        "the greylisted tuple acceptable first"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing {
        delay: 300,
        retry_window: 2 * 86_400,
        autowhite: 86_400,
    };

    fn tuple(time: u64, kind: Kind) -> Tuple<'static> {
        Tuple {
            ip: "192.0.2.1".parse().unwrap(),
            from: "<a@x>",
            rcpt: "<b@y>",
            time,
            kind,
        }
    }

    #[test]
    fn pending_becomes_acceptable_at_milter_greylists_time() {
        let now = 1_000_000;
        // accepted at now + 1200 under milter-greylist (it used a 30 min delay)
        let e = entry_for(&tuple(now + 1200, Kind::Pending), &T, now);
        assert_eq!(e.first_seen + T.delay, now + 1200);
        assert_eq!((e.passed, e.blocked), (0, 1));
        assert_eq!(e.expires, e.first_seen + T.retry_window);
        // our rules: refused just before, accepted from that moment
        use crate::checks::greylist::{step, GreylistOutcome};
        assert_eq!(
            step(Some(e), now + 1199, &T).1,
            GreylistOutcome::TooEarly { retry_in: 1 }
        );
        assert!(matches!(
            step(Some(e), now + 1200, &T).1,
            GreylistOutcome::Passed { .. }
        ));
        let tarpit = entry_for(&tuple(now + 1200, Kind::Tarpit { shortest: 30 }), &T, now);
        assert_eq!(tarpit, e);
    }

    #[test]
    fn auto_is_whitelisted_until_its_expiry() {
        let now = 1_000_000;
        let e = entry_for(&tuple(now + 3600, Kind::Auto), &T, now);
        assert_eq!((e.passed, e.expires), (1, now + 3600));
        assert!(e.last_seen <= now);
        use crate::checks::greylist::{step, GreylistOutcome};
        assert_eq!(
            step(Some(e), now + 3599, &T).1,
            GreylistOutcome::Whitelisted
        );
        assert!(matches!(
            step(Some(e), now + 3600, &T).1,
            GreylistOutcome::New { .. }
        ));
    }

    #[test]
    fn merge_keeps_the_most_permissive() {
        let now = 1_000_000;
        let pending = entry_for(&tuple(now + 100, Kind::Pending), &T, now);
        let sooner = entry_for(&tuple(now + 50, Kind::Pending), &T, now);
        let auto = entry_for(&tuple(now + 500, Kind::Auto), &T, now);
        let auto_later = entry_for(&tuple(now + 900, Kind::Auto), &T, now);

        let (m, kept) = merge(pending, auto);
        assert_eq!(
            (kept, m.passed, m.blocked, m.expires),
            (Kept::Later, 1, 2, now + 500)
        );
        let (m, kept) = merge(auto, pending);
        assert_eq!((kept, m.expires), (Kept::Earlier, now + 500));
        let (m, kept) = merge(auto_later, auto);
        assert_eq!((kept, m.passed, m.expires), (Kept::Earlier, 2, now + 900));
        let (m, kept) = merge(pending, sooner);
        assert_eq!(
            (kept, m.first_seen, m.passed),
            (Kept::Later, sooner.first_seen, 0)
        );
        assert_eq!(kept_reason(&m), "the greylisted tuple acceptable first");
    }
}
