//! The milter reply that carries a verdict to the MTA.

use bytes::Bytes;

use crate::policy::{Verdict, DEFAULT_REJECT_REPLY, DEFAULT_TEMPFAIL_REPLY};
use crate::protocol::reply::{smtp_reply_text, Reply};

/// The milter reply that carries a verdict to the MTA. Public for the fuzz targets, which
/// check what reaches the MTA for hostile DNS data (fuzz/fuzz_targets/dns_reply.rs).
pub fn verdict_reply(v: &Verdict) -> Reply {
    match v {
        Verdict::Continue => Reply::Continue,
        Verdict::Accept => Reply::Accept,
        Verdict::Discard => Reply::Discard,
        Verdict::Reject(r) | Verdict::Tempfail(r) | Verdict::Greylist(r) => {
            // Not `r.to_string()`: the milter text must have `%` doubled (sendmail reads it as
            // a format string and drops a reply with a lone `%`; Postfix undoes the doubling)
            // and a space after the code even without text (Postfix refuses a bare `550`).
            // Postfix reads a digit right after the code as an enhanced status code and
            // refuses the reply as malformed when its class differs (then milter_default_action
            // applies to the whole session): a HELO name, PTR name or TXT text first in a
            // template must not cause that, so such a text gets a status code in front.
            let enhanced = r.enhanced.as_deref().or_else(|| {
                r.text
                    .starts_with(|c: char| c.is_ascii_digit())
                    .then_some(if r.is_temporary() { "4.7.1" } else { "5.7.1" })
            });
            // The status code in front may push a reply of 510 octets past the line limit.
            let room = 510 - 4 - enhanced.map_or(0, |e| e.len() + 1);
            let mut end = r.text.len().min(room);
            while !r.text.is_char_boundary(end) {
                end -= 1;
            }
            let text = smtp_reply_text(r.code, enhanced, &[r.text[..end].trim_end()])
                .unwrap_or_else(|_| {
                    // Unreachable for parsed replies (one line, at most 510 octets); a reply
                    // built by hand still goes out well-formed, in its class.
                    let fallback = if r.is_temporary() {
                        DEFAULT_TEMPFAIL_REPLY
                    } else {
                        DEFAULT_REJECT_REPLY
                    };
                    fallback.to_string()
                });
            Reply::ReplyCode {
                text: Bytes::from(text),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::sender_rules::SmtpReply;

    fn wire(v: &Verdict) -> String {
        match verdict_reply(v) {
            Reply::ReplyCode { text } => String::from_utf8(text.to_vec()).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    fn reject(s: &str) -> Verdict {
        Verdict::Reject(SmtpReply::parse(s).unwrap())
    }

    #[test]
    fn reply_text_is_what_both_mtas_accept() {
        // Regressions found by fuzz/fuzz_targets/dns_reply.rs and access.rs.
        // `%` doubled: sendmail replaced a reply with a lone `%` by its own default.
        assert_eq!(wire(&reject("550 5.7.1 100% spam")), "550 5.7.1 100%% spam");
        // A space after the code: Postfix refused a bare `554` as malformed.
        assert_eq!(wire(&reject("554")), "554 ");
        // A text that starts with a digit (a HELO, PTR name or TXT text first in a template)
        // gets a status code: Postfix read `550 1.2.3.4 ...` as a malformed status code and
        // applied milter_default_action to the whole session.
        assert_eq!(
            wire(&reject("550 192.0.2.1 is not welcome")),
            "550 5.7.1 192.0.2.1 is not welcome"
        );
        let temp = Verdict::Tempfail(SmtpReply::parse("450 5 minutes").unwrap());
        assert_eq!(wire(&temp), "450 4.7.1 5 minutes");
        // ... which must not push a full-length reply past 510 octets.
        let long = format!("550 1{}", "x".repeat(505));
        let text = wire(&reject(&long));
        assert_eq!(text.len(), 510);
        assert!(text.starts_with("550 5.7.1 1xxx"), "{text}");
        // A hand-built reply that is no SMTP line still goes out as one, in its class.
        let bad = SmtpReply {
            code: 451,
            enhanced: None,
            text: "a\r\nb".into(),
        };
        assert_eq!(wire(&Verdict::Greylist(bad)), DEFAULT_TEMPFAIL_REPLY);
    }
}
