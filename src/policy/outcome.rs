//! Combining findings' actions into one verdict, and the reply texts.

use crate::checks::sender_rules::{SmtpReply, MAX_REPLY_LEN};
use crate::config::Action as FindingAction;
use crate::reason::Reason;

use super::Verdict;

/// Reply for a client whose rDNS name looks dynamic (when its action blocks).
pub(super) const DYNAMIC_REPLY: &str =
    "550 5.7.1 Client host {client_name} [{client_ip}] looks like a dynamic address; use your provider's relay";

/// The strongest action among the findings, and its reply.
#[derive(Default)]
pub(super) struct Outcome {
    /// (strength, action, reply, cause text, reason code) of the strongest blocking action
    /// so far.
    pub(super) blocking: Option<(u8, FindingAction, SmtpReply, String, Reason)>,
    pub(super) greylist: bool,
    /// An allow list (DNSWL) vouches for the client: no IP lists, no greylisting.
    pub(super) allow_listed: bool,
    /// The client's FCrDNS-verified name (greylist pools).
    pub(super) verified_name: Option<String>,
    /// A finding asked to hold the banner (`delay`, acted on at CONNECT).
    pub(super) delay: bool,
    pub(super) tags: Vec<String>,
}

impl Outcome {
    /// One finding's action. `what` names it in the cause text (`check=what`: the zone, or
    /// the outcome word); `reason` is its stable code.
    pub(super) fn add(
        &mut self,
        action: FindingAction,
        reply: SmtpReply,
        reason: Reason,
        what: &str,
    ) {
        let check = reason.check();
        let strength = match action {
            FindingAction::Reject => 2,
            FindingAction::Tempfail => 1,
            FindingAction::Greylist => {
                self.greylist = true;
                return;
            }
            FindingAction::Tag => {
                self.tags.push(format!("{check}={what} reason={reason}"));
                return;
            }
            FindingAction::Delay => {
                // Acted on at CONNECT: the session holds the banner.
                self.delay = true;
                return;
            }
            FindingAction::Log | FindingAction::Off => return,
        };
        if self.blocking.as_ref().is_none_or(|(s, ..)| strength > *s) {
            self.blocking = Some((strength, action, reply, format!("{check}={what}"), reason));
        }
    }

    pub(super) fn verdict(&self) -> Verdict {
        match &self.blocking {
            Some((_, FindingAction::Reject, reply, ..)) => Verdict::Reject(reply.with_class(5)),
            Some((_, _, reply, ..)) => Verdict::Tempfail(reply.with_class(4)),
            None => Verdict::Continue,
        }
    }

    pub(super) fn cause(&self) -> String {
        self.blocking
            .as_ref()
            .map(|(.., cause, _)| cause.clone())
            .unwrap_or_default()
    }

    /// The code of the strongest blocking action, if any.
    pub(super) fn reason(&self) -> Option<Reason> {
        self.blocking.as_ref().map(|(.., reason)| *reason)
    }
}

pub(super) fn parse_reply(text: &str) -> SmtpReply {
    // Config validation checked the templates, but not with their values substituted: a long
    // PTR name or HELO can push a reply past SMTP's line length. Cut it there (the code and
    // class are at the start) rather than lose the whole text.
    let mut end = text.len().min(MAX_REPLY_LEN);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let text = &text[..end];
    // A substituted value can still break a template (a control character in a TXT record,
    // say): fall back to a plain reply of the same class.
    SmtpReply::parse(text).unwrap_or_else(|_| {
        let temporary = text.starts_with('4');
        default_reply(if temporary {
            "451 4.7.1 Try again later"
        } else {
            "550 5.7.1 Access denied"
        })
    })
}

pub(super) fn render_helo(template: &str, helo: &str) -> SmtpReply {
    let safe: String = helo.chars().filter(|c| !c.is_control()).take(100).collect();
    parse_reply(&template.replace("{helo}", &safe))
}

#[allow(
    clippy::expect_used,
    reason = "called with the built-in reply constants only, checked by the unit tests"
)]
pub(super) fn default_reply(text: &str) -> SmtpReply {
    SmtpReply::parse(text).expect("built-in reply texts are valid")
}
