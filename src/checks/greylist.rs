//! Greylisting: (client, sender, recipient) triplets and client autowhitelisting.
//!
//! The rules are pure ([`step`], [`client_step`], the key functions in [`keys`]); the only I/O
//! goes through a [`GreylistStore`], each call bounded by a deadline (and timed and counted by
//! the store layer, [`Instrumented`]). A store that fails or is slow makes the check *fail
//! open*: the mail is accepted and the finding says `error`. Opening the configured store is
//! [`crate::store::open`]; the periodic purge is [`crate::store::purge_task`].
//!
//! Lifecycle of a triplet (times from `[greylist]`):
//!
//! | stored entry | outcome | reply | entry afterwards |
//! |---|---|---|---|
//! | none, expired, or unpassed and `retry_window` over | [`GreylistOutcome::New`] | 450, `delay` | `first_seen = now`, `expires = now + retry_window` |
//! | unpassed, `now - first_seen < delay` | [`GreylistOutcome::TooEarly`] | 450, what is left | `blocked + 1` (first_seen kept) |
//! | unpassed, `delay` over, within `retry_window` | [`GreylistOutcome::Passed`] | accept, `X-Greylist` | `passed = 1`, `expires = now + autowhite` |
//! | passed, not expired | [`GreylistOutcome::Whitelisted`] | accept | `passed + 1`, `expires = now + autowhite` |
//!
//! After `Passed` or `Whitelisted` the client's entry (`c:<client>`) counts one more accepted
//! delivery (`expires = now + autowhite`); from `client_autowhite_after` deliveries on (0: never)
//! the client skips greylisting ([`GreylistOutcome::ClientWhitelisted`], which refreshes it).
//! A permanent entry (`greylist add --permanent`, [`Entry::PERMANENT`]) keeps its `expires`
//! through every refresh.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::checks::{Evidence, Finding};
use crate::config::GreylistConfig;
use crate::store::{Entry, GreylistStore, Instrumented, Op, Write};

pub mod allow;
pub mod keys;

/// The clock the rules are given (`now`), re-exported for the callers of [`Greylister::check`].
pub use crate::store::unix_now;

pub use keys::{
    client_key, client_part, normalize_rcpt, normalize_sender, pool_domain, store_key, triplet_key,
};

/// The store deadline per call: past it the check fails open.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(1);

/// The lifecycle times, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// A new triplet is refused for this long.
    pub delay: u64,
    /// A retry is accepted up to this long after the first attempt.
    pub retry_window: u64,
    /// A passed triplet (and a counting client) stays known this long after its last delivery.
    pub autowhite: u64,
}

impl Timing {
    pub fn from_config(cfg: &GreylistConfig) -> Timing {
        Timing {
            delay: cfg.delay.as_secs(),
            retry_window: cfg.retry_window.as_secs(),
            autowhite: cfg.autowhite.as_secs(),
        }
    }
}

/// What greylisting decided for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GreylistOutcome {
    /// Unknown (or expired) triplet: 450, retry in `retry_in` seconds (the delay).
    New { retry_in: u64 },
    /// Retried before the delay was over: 450 with the seconds left; `first_seen` is kept.
    TooEarly { retry_in: u64 },
    /// First retry after the delay: accept (with `X-Greylist`), triplet autowhitelisted.
    Passed { waited: u64 },
    /// The triplet passed before: accept, autowhitelist refreshed.
    Whitelisted,
    /// The client network (or pool) passed `client_autowhite_after` deliveries: accept.
    ClientWhitelisted,
    /// The store failed or timed out: accept (fail open).
    StoreError(String),
}

impl GreylistOutcome {
    /// The finding outcome word: `new`, `too_early`, `passed`, `whitelisted`,
    /// `client_whitelisted`, `error`.
    pub fn as_str(&self) -> &'static str {
        match self {
            GreylistOutcome::New { .. } => "new",
            GreylistOutcome::TooEarly { .. } => "too_early",
            GreylistOutcome::Passed { .. } => "passed",
            GreylistOutcome::Whitelisted => "whitelisted",
            GreylistOutcome::ClientWhitelisted => "client_whitelisted",
            GreylistOutcome::StoreError(_) => "error",
        }
    }

    /// True when the mail is to be accepted (everything but `New` and `TooEarly`).
    pub fn accepts(&self) -> bool {
        self.retry_in().is_none()
    }

    /// The seconds to announce in the 450 reply (`New`, `TooEarly`).
    pub fn retry_in(&self) -> Option<u64> {
        match self {
            GreylistOutcome::New { retry_in } | GreylistOutcome::TooEarly { retry_in } => {
                Some(*retry_in)
            }
            _ => None,
        }
    }
}

fn new_triplet(now: u64, t: &Timing) -> (Write, GreylistOutcome) {
    let e = Entry {
        first_seen: now,
        last_seen: now,
        passed: 0,
        blocked: 1,
        expires: now.saturating_add(t.retry_window),
    };
    (Write::Put(e), GreylistOutcome::New { retry_in: t.delay })
}

/// The triplet lifecycle: from the stored entry (if any) and the time, what to store and what
/// to answer. Pure; the store may call it again when it lost a race (Redis).
///
/// An entry counts as absent when it is expired, or when it never passed and its retry window
/// (from `first_seen`) is over. A clock that went backwards (`now < first_seen`, e.g. MX hosts
/// whose clocks disagree) counts as no time waited.
pub fn step(old: Option<Entry>, now: u64, t: &Timing) -> (Write, GreylistOutcome) {
    let Some(old) = old else {
        return new_triplet(now, t);
    };
    let window_over = old.passed == 0 && now >= old.first_seen.saturating_add(t.retry_window);
    if old.is_expired(now) || window_over {
        return new_triplet(now, t);
    }
    if old.passed > 0 {
        let e = Entry {
            last_seen: now,
            passed: old.passed.saturating_add(1),
            expires: old.refreshed_expiry(now, t.autowhite),
            ..old
        };
        return (Write::Put(e), GreylistOutcome::Whitelisted);
    }
    let waited = now.saturating_sub(old.first_seen);
    if waited < t.delay {
        let e = Entry {
            last_seen: now,
            blocked: old.blocked.saturating_add(1),
            ..old
        };
        return (
            Write::Put(e),
            GreylistOutcome::TooEarly {
                retry_in: t.delay - waited,
            },
        );
    }
    let e = Entry {
        last_seen: now,
        passed: 1,
        expires: now.saturating_add(t.autowhite),
        ..old
    };
    (Write::Put(e), GreylistOutcome::Passed { waited })
}

/// The client entry after one more accepted delivery: `passed + 1` (from 1 when absent or
/// expired), `expires = now + autowhite`.
pub fn client_step(old: Option<Entry>, now: u64, t: &Timing) -> Write {
    let e = match old {
        Some(o) if !o.is_expired(now) => Entry {
            last_seen: now,
            passed: o.passed.saturating_add(1),
            expires: o.refreshed_expiry(now, t.autowhite),
            ..o
        },
        _ => Entry {
            first_seen: now,
            last_seen: now,
            passed: 1,
            blocked: 0,
            expires: now.saturating_add(t.autowhite),
        },
    };
    Write::Put(e)
}

/// True when a client entry lets its client skip greylisting (`after` = 0: never).
pub fn client_is_whitelisted(e: Option<&Entry>, now: u64, after: u32) -> bool {
    after > 0 && e.is_some_and(|e| !e.is_expired(now) && e.passed >= after)
}

/// The client check as an update: refresh a whitelisted client's entry, leave others alone.
fn client_refresh(old: Option<Entry>, now: u64, t: &Timing, after: u32) -> Write {
    if client_is_whitelisted(old.as_ref(), now, after) {
        client_step(old, now, t)
    } else {
        Write::Keep
    }
}

/// The result of [`Greylister::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GreylistResult {
    pub outcome: GreylistOutcome,
    /// The readable triplet key (`t:<client>|<sender>|<rcpt>`, never hashed) for logs and
    /// `explain`. Contains addresses: never use it as a metric label.
    pub key: String,
    /// The client part of the key (`192.0.2.0/24` or `pool:<domain>`).
    pub client: String,
}

impl GreylistResult {
    /// The 4xx reply for `New`/`TooEarly`: `cfg.reply` with `{remaining}` replaced by the
    /// seconds left. `None` when the mail is accepted.
    pub fn reply(&self, cfg: &GreylistConfig) -> Option<String> {
        let secs = self.outcome.retry_in()?;
        Some(cfg.reply.replace("{remaining}", &secs.to_string()))
    }

    /// `("X-Greylist", "delayed N seconds by mxsentry-VERSION; <RFC 5322 date of now, UTC>")`
    /// for a triplet that just passed; `None` otherwise.
    pub fn header(&self, version: &str, now: u64) -> Option<(String, String)> {
        let GreylistOutcome::Passed { waited } = self.outcome else {
            return None;
        };
        Some((
            "X-Greylist".to_owned(),
            format!(
                "delayed {waited} seconds by mxsentry-{version}; {}",
                rfc5322_date(now)
            ),
        ))
    }

    /// The finding (check `greylist`, outcome as [`GreylistOutcome::as_str`]).
    pub fn finding(&self) -> Finding {
        let detail = match &self.outcome {
            GreylistOutcome::New { retry_in } => {
                format!("new triplet {}, retry in {retry_in}s", self.key)
            }
            GreylistOutcome::TooEarly { retry_in } => {
                format!("{} retried too early, {retry_in}s left", self.key)
            }
            GreylistOutcome::Passed { waited } => {
                format!("{} passed after {waited}s", self.key)
            }
            GreylistOutcome::Whitelisted => format!("{} autowhitelisted", self.key),
            GreylistOutcome::ClientWhitelisted => {
                format!("client {} autowhitelisted", self.client)
            }
            GreylistOutcome::StoreError(e) => {
                format!("store failed, accepting (fail open): {e}")
            }
        };
        let seconds = match self.outcome {
            GreylistOutcome::New { retry_in } | GreylistOutcome::TooEarly { retry_in } => {
                Some(retry_in)
            }
            GreylistOutcome::Passed { waited } => Some(waited),
            _ => None,
        };
        Finding {
            check: "greylist",
            outcome: self.outcome.as_str().to_owned(),
            detail,
            evidence: Evidence::Greylist { seconds },
        }
    }
}

/// An RFC 5322 date-time in UTC: `Thu, 01 Jan 2026 12:00:00 +0000`.
pub fn rfc5322_date(unix: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let t = crate::civil_time::Utc::from_unix(unix);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        DAYS[t.weekday_from_thursday as usize],
        t.day,
        MONTHS[(t.month - 1) as usize],
        t.year,
        t.hour,
        t.minute,
        t.second
    )
}

/// How often a store failure that goes on is logged again (each session's decision log line
/// carries its own finding; one line per session would flood the journal during an outage).
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);

/// Greylisting against one store.
pub struct Greylister {
    /// Every call of a check is timed and counted there (the store metrics).
    store: Instrumented,
    cfg: GreylistConfig,
    timing: Timing,
    deadline: Duration,
    /// When a store failure was last logged, and how many were not logged since.
    failure_log: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
    /// A shadow policy's greylister: reads the store, never writes it.
    read_only: bool,
}

impl std::fmt::Debug for Greylister {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Greylister")
            .field("backend", &self.store.backend())
            .field("timing", &self.timing)
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl Greylister {
    /// Greylisting with `cfg`'s rules on `store`, store deadline [`DEFAULT_DEADLINE`].
    pub fn new(store: Arc<dyn GreylistStore>, cfg: &GreylistConfig) -> Greylister {
        Greylister {
            store: Instrumented::new(store),
            cfg: cfg.clone(),
            timing: Timing::from_config(cfg),
            deadline: DEFAULT_DEADLINE,
            failure_log: Default::default(),
            read_only: false,
        }
    }

    /// A greylister that only reads the store (a shadow policy's): it answers what
    /// [`Self::check`] would, from the entries as stored, and changes nothing.
    pub fn read_only(mut self) -> Greylister {
        self.read_only = true;
        self
    }

    /// Sets the per-call store deadline (default [`DEFAULT_DEADLINE`]).
    pub fn with_deadline(mut self, deadline: Duration) -> Greylister {
        self.deadline = deadline;
        self
    }

    /// The store (calls made through it are not timed or counted).
    pub fn store(&self) -> &Arc<dyn GreylistStore> {
        self.store.store()
    }

    /// The configuration the rules use.
    pub fn config(&self) -> &GreylistConfig {
        &self.cfg
    }

    /// Greylists one recipient. `verified_name`: the FCrDNS-verified client name, if any (see
    /// [`keys::client_part`]); `now`: Unix seconds. Never fails: store trouble gives
    /// [`GreylistOutcome::StoreError`] (accept).
    pub async fn check(
        &self,
        client_ip: IpAddr,
        verified_name: Option<&str>,
        sender: &str,
        rcpt: &str,
        now: u64,
    ) -> GreylistResult {
        let client = client_part(&self.cfg, client_ip, verified_name);
        let key = keys::triplet_plain(&client, sender, rcpt);
        let outcome = self.decide(&client, &key, now).await;
        if let GreylistOutcome::StoreError(e) = &outcome {
            self.log_failure(e);
        }
        GreylistResult {
            outcome,
            key,
            client,
        }
    }

    /// Logs a failed check: the first, then at most one per [`FAILURE_LOG_EVERY`] with the
    /// number not logged in between.
    fn log_failure(&self, error: &str) {
        let mut log = self.failure_log.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        if log
            .0
            .is_some_and(|t| now.duration_since(t) < FAILURE_LOG_EVERY)
        {
            log.1 += 1;
            return;
        }
        let not_logged = std::mem::take(&mut log.1);
        log.0 = Some(now);
        tracing::warn!(
            backend = self.store.backend(),
            error,
            not_logged,
            "greylist store failed: accepting"
        );
    }

    async fn decide(&self, client: &str, plain_key: &str, now: u64) -> GreylistOutcome {
        if self.read_only {
            return self.decide_read_only(client, plain_key, now).await;
        }
        let t = self.timing;
        let after = self.cfg.client_autowhite_after;
        let hash = self.cfg.hash_keys;
        let client_key = store_key(&keys::client_plain(client), hash);
        if after > 0 {
            let refresh = move |old: Option<Entry>| client_refresh(old, now, &t, after);
            match self
                .store
                .update(Op::Lookup, self.deadline, &client_key, &refresh)
                .await
            {
                Ok(old) if client_is_whitelisted(old.as_ref(), now, after) => {
                    return GreylistOutcome::ClientWhitelisted
                }
                Ok(_) => {}
                Err(e) => return GreylistOutcome::StoreError(e.to_string()),
            }
        }
        let triplet_key = store_key(plain_key, hash);
        let f = move |old: Option<Entry>| step(old, now, &t).0;
        let outcome = match self
            .store
            .update(Op::Record, self.deadline, &triplet_key, &f)
            .await
        {
            Ok(old) => step(old, now, &t).1,
            Err(e) => return GreylistOutcome::StoreError(e.to_string()),
        };
        if after > 0 && outcome.accepts() {
            let count = move |old: Option<Entry>| client_step(old, now, &t);
            if let Err(e) = self
                .store
                .update(Op::Touch, self.deadline, &client_key, &count)
                .await
            {
                // The mail is accepted anyway; only the client's count is behind.
                tracing::warn!(backend = self.store.backend(), error = %e, "greylist: client count not updated");
            }
        }
        outcome
    }

    /// [`Self::decide`] without a write: the same pure steps on the entries as read.
    async fn decide_read_only(&self, client: &str, plain_key: &str, now: u64) -> GreylistOutcome {
        let after = self.cfg.client_autowhite_after;
        let hash = self.cfg.hash_keys;
        let get = |key: String| async move {
            match tokio::time::timeout(self.deadline, self.store.store().get(&key)).await {
                Ok(Ok(entry)) => Ok(entry),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {:?}", self.deadline)),
            }
        };
        if after > 0 {
            match get(store_key(&keys::client_plain(client), hash)).await {
                Ok(old) if client_is_whitelisted(old.as_ref(), now, after) => {
                    return GreylistOutcome::ClientWhitelisted
                }
                Ok(_) => {}
                Err(e) => return GreylistOutcome::StoreError(e),
            }
        }
        match get(store_key(plain_key, hash)).await {
            Ok(old) => step(old, now, &self.timing).1,
            Err(e) => GreylistOutcome::StoreError(e),
        }
    }
}

#[cfg(test)]
mod tests;
