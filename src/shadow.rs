//! The shadow policy inside a session: every recipient the live policy decides is decided again
//! by the candidate of `[shadow] config` (`policy::shadow`), and the pair is counted in
//! `mxsentry_shadow_verdicts_total{live,shadow}` and written in the decision line. The shadow
//! never changes what the MTA is told.
//!
//! Cost and waiting: the shadow is decided after the live verdict is computed. When it asks DNS
//! the same questions as the live policy it decides from the session's lookups (memoised: no
//! query is sent again); when it asks more, its own lookups start at CONNECT beside the live
//! ones, through the same resolver and cache. Either way it waits for DNS answers (and a
//! greylist store read) at most [`SHADOW_WAIT`] past the live verdict; a shadow that could not
//! decide by then counts as `undecided` (its lookups go on, and later recipients of the
//! connection use them). So a shadow never delays the MTA by more than that bound, and
//! usually not at all: the live decision has already waited for the lookups both share.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::checks::rdns_mta::MtaClientMacros;
use crate::lookups::ClientLookups;
use crate::policy::{Envelope, Policy, Verdict};

/// The longest the shadow waits for what only it needs, after the live verdict.
pub const SHADOW_WAIT: Duration = Duration::from_millis(250);

/// Verdict name of a shadow that did not decide within [`SHADOW_WAIT`].
pub const UNDECIDED: &str = "undecided";

/// The candidate's verdict for one recipient (or, at end of message, the most severe one of
/// the message's accepted recipients).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowVerdict {
    /// `accept`, `reject`, `tempfail`, `greylist`, `discard` or `undecided`.
    pub verdict: &'static str,
    /// What decided (the candidate's `cause`); empty when nothing did.
    pub cause: String,
}

impl ShadowVerdict {
    /// Keeps the more severe of two verdicts (the first on a tie).
    pub fn worst(a: Option<ShadowVerdict>, b: ShadowVerdict) -> ShadowVerdict {
        match a {
            Some(a) if rank(a.verdict) >= rank(b.verdict) => a,
            _ => b,
        }
    }
}

fn rank(verdict: &str) -> u8 {
    match verdict {
        "reject" => 5,
        "discard" => 4,
        "tempfail" => 3,
        "greylist" => 2,
        UNDECIDED => 1,
        _ => 0,
    }
}

/// The shadow's part of one connection.
#[derive(Default)]
pub struct ShadowSession {
    /// The candidate's own lookups, when it does not share the session's.
    lookups: Option<ClientLookups>,
    /// The candidate's answer for this client in its greylist allow lists (the session's
    /// lookups keep the live policy's).
    greylist_allow: Option<Option<String>>,
}

impl ShadowSession {
    /// At CONNECT: starts the candidate's own lookups unless it decides from the session's
    /// (`live_started`: the live policy started lookups for this client).
    pub fn start<'m>(
        policy: &Policy,
        ip: Option<IpAddr>,
        live_started: bool,
        mta: impl FnOnce() -> MtaClientMacros<'m>,
    ) -> ShadowSession {
        let lookups = match (policy.shadow(), ip) {
            (Some(shadow), Some(ip)) if !(policy.shadow_shares_lookups() && live_started) => {
                shadow.start_lookups(ip, mta)
            }
            _ => None,
        };
        ShadowSession {
            lookups,
            greylist_allow: None,
        }
    }

    pub fn start_helo(&mut self, helo: &str) {
        if let Some(l) = &mut self.lookups {
            l.start_helo(helo);
        }
    }

    pub fn start_sender(&mut self, sender: &str) {
        if let Some(l) = &mut self.lookups {
            l.start_sender(sender);
        }
    }

    /// Decides `env` with the candidate (after the live verdict `live`) and counts the pair.
    /// `None` when no candidate is configured.
    pub async fn decide(
        &mut self,
        policy: &Policy,
        env: &Envelope<'_>,
        session_lookups: Option<&mut ClientLookups>,
        live: &Verdict,
    ) -> Option<ShadowVerdict> {
        let shadow = policy.shadow()?;
        let lookups = match (&mut self.lookups, session_lookups) {
            (Some(own), _) => Some(own),
            (None, shared) if policy.shadow_shares_lookups() => shared,
            (None, _) => None,
        };
        let decided = match lookups {
            Some(l) => {
                // The session's lookups memoise the live policy's greylist allow-list answer:
                // the candidate's lists may differ, so it keeps its own.
                std::mem::swap(&mut l.greylist_allow, &mut self.greylist_allow);
                let d =
                    tokio::time::timeout(SHADOW_WAIT, shadow.decide_recipient(env, Some(l))).await;
                std::mem::swap(&mut l.greylist_allow, &mut self.greylist_allow);
                d
            }
            None => tokio::time::timeout(SHADOW_WAIT, shadow.decide_recipient(env, None)).await,
        };
        let verdict = match decided {
            // Never enforced anyway: what its rules decide, whatever its `mode`.
            Ok(d) => ShadowVerdict {
                verdict: d.would.as_ref().unwrap_or(&d.verdict).name(),
                cause: d.cause,
            },
            Err(_) => ShadowVerdict {
                verdict: UNDECIDED,
                cause: format!("no decision within {}ms", SHADOW_WAIT.as_millis()),
            },
        };
        count(live.name(), verdict.verdict);
        Some(verdict)
    }
}

static DECIDED: AtomicU64 = AtomicU64::new(0);
static DISAGREED: AtomicU64 = AtomicU64::new(0);

fn count(live: &str, shadow: &str) {
    crate::metrics::metrics().shadow_verdict(live, shadow);
    DECIDED.fetch_add(1, Ordering::Relaxed);
    if live != shadow {
        DISAGREED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Recipients decided by both policies since the daemon started, and how many of them got
/// another verdict from the shadow (`mxsentry status`).
pub fn counts() -> (u64, u64) {
    (
        DECIDED.load(Ordering::Relaxed),
        DISAGREED.load(Ordering::Relaxed),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(verdict: &'static str) -> ShadowVerdict {
        ShadowVerdict {
            verdict,
            cause: verdict.to_string(),
        }
    }

    #[test]
    fn the_message_keeps_its_most_severe_shadow_verdict() {
        let w = ShadowVerdict::worst(None, v("accept"));
        let w = ShadowVerdict::worst(Some(w), v("greylist"));
        assert_eq!(w.verdict, "greylist");
        let w = ShadowVerdict::worst(Some(w), v("reject"));
        let w = ShadowVerdict::worst(Some(w), v("tempfail"));
        assert_eq!(w, v("reject"));
        assert_eq!(
            ShadowVerdict::worst(Some(v("undecided")), v("accept")).verdict,
            "undecided"
        );
    }
}
