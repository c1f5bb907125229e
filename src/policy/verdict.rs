//! What the policy answers: the [`Verdict`] for one recipient, the [`Decision`] that carries it
//! with its findings and cause, and how an access-file action maps to a verdict.

use crate::checks::sender_rules::{Action, SmtpReply};
use crate::checks::Finding;
use crate::reason::Reason;

use super::outcome::default_reply;

/// Reply for a plain `REJECT` rule, as sendmail admins know it.
pub const DEFAULT_REJECT_REPLY: &str = "550 5.7.1 Access denied";
/// Reply for a `TEMPFAIL` rule.
pub const DEFAULT_TEMPFAIL_REPLY: &str = "451 4.7.1 Try again later";

/// What the MTA is told about one recipient (and, for discard, the whole message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Accept this recipient; later checks still run for later recipients.
    Continue,
    /// Accept the whole message without further checks (trusted client, `OK` rule).
    Accept,
    Reject(SmtpReply),
    Tempfail(SmtpReply),
    /// A 4xx from greylisting (unknown triplet, or retried too early).
    Greylist(SmtpReply),
    /// Accept and silently drop the message.
    Discard,
}

impl Verdict {
    /// The stable word used in logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Continue | Verdict::Accept => "accept",
            Verdict::Reject(_) => "reject",
            Verdict::Tempfail(_) => "tempfail",
            Verdict::Greylist(_) => "greylist",
            Verdict::Discard => "discard",
        }
    }

    /// The SMTP reply text the client sees, when the verdict carries one.
    pub fn reply(&self) -> Option<&SmtpReply> {
        match self {
            Verdict::Reject(r) | Verdict::Tempfail(r) | Verdict::Greylist(r) => Some(r),
            _ => None,
        }
    }

    /// True when the verdict refuses or drops mail (what dry-run must not do).
    pub fn is_blocking(&self) -> bool {
        matches!(
            self,
            Verdict::Reject(_) | Verdict::Tempfail(_) | Verdict::Greylist(_) | Verdict::Discard
        )
    }
}

/// The verdict for one recipient and why.
#[derive(Debug, Clone)]
pub struct Decision {
    /// What is enforced (in dry-run mode never blocking).
    pub verdict: Verdict,
    /// In dry-run mode: the blocking verdict that enforce mode would have given.
    pub would: Option<Verdict>,
    pub findings: Vec<Finding>,
    /// Values for the tag header (`tag` actions), e.g. `rdns=dynamic`.
    pub tags: Vec<String>,
    /// A finding asked for greylisting (step 6).
    pub greylist: bool,
    /// Headers to add to the message at end of message (`X-Greylist`).
    pub headers: Vec<(String, String)>,
    /// What decided, as `check=what` (`dnsbl=zen.example`, `sender_rules=access:3 ...`); empty
    /// when nothing did. Used in dry-run tags.
    pub cause: String,
    /// The stable code of what decided (docs/reasons.md): the cause of a blocking verdict (in
    /// dry-run, of the `would` one), or of an accept (`trusted.network`, `greylist.passed`,
    /// ...); `none` when nothing objected.
    pub reason: Reason,
}

impl Decision {
    /// The code of the enforced verdict: `dry_run` when dry-run mode let a blocking verdict
    /// through, else [`Decision::reason`].
    pub fn enforced_reason(&self) -> Reason {
        if self.would.is_some() {
            Reason::DryRun
        } else {
            self.reason
        }
    }
}

/// Maps an access-file action to a verdict; `None` means "no decision" (SKIP).
pub(super) fn verdict_for_action(action: &Action) -> Option<Verdict> {
    Some(match action {
        Action::Ok => Verdict::Accept,
        Action::Reject => Verdict::Reject(default_reply(DEFAULT_REJECT_REPLY)),
        Action::Tempfail => Verdict::Tempfail(default_reply(DEFAULT_TEMPFAIL_REPLY)),
        Action::Discard => Verdict::Discard,
        Action::Error(reply) if reply.is_temporary() => Verdict::Tempfail((**reply).clone()),
        Action::Error(reply) => Verdict::Reject((**reply).clone()),
        Action::Skip => return None,
    })
}

pub(super) fn action_word(action: &Action) -> &'static str {
    match action {
        Action::Ok => "ok",
        Action::Reject => "reject",
        Action::Tempfail => "tempfail",
        Action::Discard => "discard",
        Action::Error(r) if r.is_temporary() => "error_temp",
        Action::Error(_) => "error",
        Action::Skip => "skip",
    }
}
