//! The right-hand side of an access entry: `OK`, `REJECT`, `ERROR:5.7.1:"550 text"`, ...

use std::fmt;

/// Longest reply [`SmtpReply::parse`] accepts: RFC 5321's 512-octet reply line less CRLF.
pub const MAX_REPLY_LEN: usize = 510;

/// An SMTP error reply: `550 5.7.1 text` (the enhanced status code is optional).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpReply {
    pub code: u16,
    pub enhanced: Option<String>,
    pub text: String,
}

impl fmt::Display for SmtpReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(e) = &self.enhanced {
            write!(f, " {e}")?;
        }
        if !self.text.is_empty() {
            write!(f, " {}", self.text)?;
        }
        Ok(())
    }
}

impl SmtpReply {
    /// The same reply as a permanent (5) or temporary (4) one: `550 5.7.1 x` ↔ `450 4.7.1 x`.
    /// Used when an admin's action (reject or tempfail) and a reply text's class disagree:
    /// the action wins, so a temporary DNS problem can never produce a 5xx.
    pub fn with_class(&self, class: u16) -> SmtpReply {
        debug_assert!(class == 4 || class == 5);
        let mut reply = self.clone();
        reply.code = class * 100 + self.code % 100;
        if let Some(e) = &mut reply.enhanced {
            e.replace_range(0..1, if class == 4 { "4" } else { "5" });
        }
        reply
    }

    /// Parses `550 5.7.1 text` or `550 text`. The code must be a 4xx or 5xx error and the class
    /// digit of an enhanced status code must equal the code's first digit; the whole reply is
    /// one line of at most [`MAX_REPLY_LEN`] octets.
    pub fn parse(s: &str) -> Result<SmtpReply, String> {
        let s = s.trim();
        check_len(s)?;
        let digits = s.bytes().take_while(u8::is_ascii_digit).count();
        if digits != 3 {
            return Err(format!(
                "expected a 3-digit SMTP reply code (e.g. `550 text`), got `{s}`"
            ));
        }
        let (code_str, rest) = s.split_at(3);
        if !(rest.is_empty() || rest.starts_with([' ', '\t'])) {
            return Err(format!(
                "expected a space after the reply code `{code_str}` in `{s}`"
            ));
        }
        let code: u16 = code_str
            .parse()
            .map_err(|_| format!("bad reply code in `{s}`"))?;
        if !(400..=599).contains(&code) {
            return Err(format!(
                "reply code {code} is not a 4xx (temporary) or 5xx (permanent) error"
            ));
        }
        let rest = rest.trim_start();
        let (first, after) = match rest.find([' ', '\t']) {
            Some(i) => (&rest[..i], rest[i..].trim_start()),
            None => (rest, ""),
        };
        if rest.contains(|c: char| c.is_control() && c != '\t') {
            return Err("the reply text contains a control character".into());
        }
        let (enhanced, text) = if is_status_code(first) {
            check_class(first, code)?;
            (Some(first.to_string()), after)
        } else {
            (None, rest)
        };
        Ok(SmtpReply {
            code,
            enhanced,
            text: text.to_string(),
        })
    }

    /// A 4xx reply: the client should try again later.
    pub fn is_temporary(&self) -> bool {
        (400..500).contains(&self.code)
    }
}

/// `D.S.N` as in RFC 3463: class digit, subject and detail of 1-3 digits each.
fn is_status_code(s: &str) -> bool {
    let mut parts = s.split('.');
    let ok = |p: Option<&str>, max: usize| {
        p.is_some_and(|p| !p.is_empty() && p.len() <= max && p.bytes().all(|b| b.is_ascii_digit()))
    };
    ok(parts.next(), 1) && ok(parts.next(), 3) && ok(parts.next(), 3) && parts.next().is_none()
}

fn check_len(reply: &str) -> Result<(), String> {
    if reply.len() > MAX_REPLY_LEN {
        return Err(format!(
            "the reply is {} characters long; SMTP allows {MAX_REPLY_LEN}",
            reply.len()
        ));
    }
    Ok(())
}

fn check_class(status: &str, code: u16) -> Result<(), String> {
    let class = status.as_bytes()[0] - b'0';
    if u16::from(class) != code / 100 {
        return Err(format!(
            "enhanced status code {status} does not match reply code {code} (the class must be {}.x.x)",
            code / 100
        ));
    }
    Ok(())
}

/// What an access entry (or a regex rule) says to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `OK` or `RELAY`: accept, skipping the other sender rules.
    Ok,
    /// `REJECT`: permanent rejection with the policy's default reply.
    Reject,
    /// `DISCARD`: accept and silently drop.
    Discard,
    /// `TEMPFAIL` (mxsentry extension): temporary rejection with the default reply.
    Tempfail,
    /// `SKIP`: stop searching this host/domain/network's parents; no decision.
    Skip,
    /// `ERROR:...`: reject (5xx) or temp-fail (4xx) with this reply. Boxed: every access
    /// entry holds an Action, and most are not errors (40 bytes less per entry).
    Error(Box<SmtpReply>),
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Ok => f.write_str("OK"),
            Action::Reject => f.write_str("REJECT"),
            Action::Discard => f.write_str("DISCARD"),
            Action::Tempfail => f.write_str("TEMPFAIL"),
            Action::Skip => f.write_str("SKIP"),
            Action::Error(r) => {
                // `ERROR:5.7.1:"550 text"`, except for a text that starts with a status code
                // itself: `ERROR:5.7.1:"550 4.2.2 x"` would read back as conflicting codes, so
                // it is written `ERROR:"550 5.7.1 4.2.2 x"` (found by the access fuzz target).
                let first = r.text.split([' ', '\t']).next().unwrap_or("");
                match &r.enhanced {
                    Some(e) if is_status_code(first) => {
                        return write!(f, "ERROR:\"{} {e} {}\"", r.code, r.text);
                    }
                    Some(e) => write!(f, "ERROR:{e}:\"{}", r.code)?,
                    None => write!(f, "ERROR:\"{}", r.code)?,
                }
                if !r.text.is_empty() {
                    write!(f, " {}", r.text)?;
                }
                f.write_str("\"")
            }
        }
    }
}

const KEYWORDS: [(&str, Action); 6] = [
    ("OK", Action::Ok),
    ("RELAY", Action::Ok),
    ("REJECT", Action::Reject),
    ("DISCARD", Action::Discard),
    ("TEMPFAIL", Action::Tempfail),
    ("SKIP", Action::Skip),
];

impl Action {
    /// Parses an access-map value (keywords are case-insensitive):
    /// `OK`, `RELAY` (= OK), `REJECT`, `DISCARD`, `TEMPFAIL`, `SKIP`,
    /// `ERROR:"550 text"`, `ERROR:550 text`, `ERROR:5.7.1:"550 text"`, `ERROR:"550 5.7.1 text"`,
    /// and sendmail's deprecated bare `"550 text"`.
    pub fn parse(s: &str) -> Result<Action, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty action".into());
        }
        let word_end = s.find(|c: char| c.is_whitespace()).unwrap_or(s.len());
        let (word, trailing) = (&s[..word_end], s[word_end..].trim());
        if let Some((_, action)) = KEYWORDS.iter().find(|(k, _)| k.eq_ignore_ascii_case(word)) {
            if !trailing.is_empty() {
                return Err(format!(
                    "unexpected text after `{}`: `{trailing}`{}",
                    word.to_ascii_uppercase(),
                    comment_hint(trailing)
                ));
            }
            return Ok(action.clone());
        }
        if let Some(rest) = strip_prefix_ignore_case(s, "ERROR:") {
            return parse_error(rest).map(|r| Action::Error(Box::new(r)));
        }
        if s.starts_with(|c: char| c.is_ascii_digit() || c == '"') {
            // sendmail's deprecated form: the value is the reply itself.
            return parse_error(s).map(|r| Action::Error(Box::new(r)));
        }
        let upper = word.to_ascii_uppercase();
        if upper == "ERROR" {
            return Err(format!(
                "`ERROR` needs a colon and a reply, e.g. `ERROR:\"550 text\"`, got `{s}`"
            ));
        }
        if upper.starts_with("QUARANTINE") {
            return Err("unsupported action `QUARANTINE` (mxsentry does not quarantine)".into());
        }
        Err(format!("unknown action `{s}`"))
    }

    /// True for the actions that end the search with a verdict (everything but `SKIP`).
    pub fn is_decision(&self) -> bool {
        !matches!(self, Action::Skip)
    }
}

/// Explains a `# comment` after a rule: sendmail's makemap skips only lines that start with `#`,
/// so a trailing comment becomes part of the value there; we refuse it rather than guess.
fn comment_hint(trailing: &str) -> &'static str {
    if trailing.trim_start().starts_with('#') {
        " (a # comment must be on a line of its own: sendmail's makemap would take it as part of the value)"
    } else {
        ""
    }
}

/// `s` without `prefix` (ASCII, compared case-insensitively), if it starts with it.
pub(super) fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Parses what follows `ERROR:`: `[D.S.N:]reply`, the reply optionally in double quotes.
fn parse_error(rest: &str) -> Result<SmtpReply, String> {
    let rest = rest.trim();
    let (status, reply) = match rest.split_once(':') {
        Some((head, tail)) if is_status_code(head) => (Some(head), tail.trim()),
        _ => (None, rest),
    };
    if reply.is_empty() {
        return Err("ERROR needs a reply, e.g. `ERROR:5.7.1:\"550 text\"`".into());
    }
    let reply = match reply.strip_prefix('"') {
        Some(inner) => match inner.rfind('"') {
            Some(end) if end + 1 == inner.len() => &inner[..end],
            Some(end) => {
                let trailing = &inner[end + 1..];
                return Err(format!(
                    "unexpected text after the closing quote: `{trailing}`{}",
                    comment_hint(trailing)
                ));
            }
            None => return Err(format!("unterminated quote in `{reply}`")),
        },
        None => reply,
    };
    let mut parsed = SmtpReply::parse(reply)?;
    if let Some(status) = status {
        check_class(status, parsed.code)?;
        match &parsed.enhanced {
            Some(inner) if inner != status => {
                return Err(format!(
                    "conflicting enhanced status codes {status} and {inner}"
                ))
            }
            _ => parsed.enhanced = Some(status.to_string()),
        }
        // `ERROR:5.7.1:"550 text"` is sent as `550 5.7.1 text`: six octets more.
        check_len(&parsed.to_string())?;
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reply(code: u16, enhanced: Option<&str>, text: &str) -> SmtpReply {
        SmtpReply {
            code,
            enhanced: enhanced.map(str::to_string),
            text: text.into(),
        }
    }

    #[test]
    fn reply_parse_and_display() {
        let r = SmtpReply::parse("550 5.7.1 Go away").unwrap();
        assert_eq!(r, reply(550, Some("5.7.1"), "Go away"));
        assert_eq!(r.to_string(), "550 5.7.1 Go away");
        let r = SmtpReply::parse("451 try later").unwrap();
        assert_eq!(r, reply(451, None, "try later"));
        assert!(r.is_temporary());
        assert_eq!(r.to_string(), "451 try later");
        assert_eq!(SmtpReply::parse("554").unwrap(), reply(554, None, ""));
        assert_eq!(SmtpReply::parse("554").unwrap().to_string(), "554");
        // A DSN-looking word that is not one stays text.
        assert_eq!(
            SmtpReply::parse("550 5.7 text").unwrap(),
            reply(550, None, "5.7 text")
        );
    }

    #[test]
    fn reply_validation() {
        for bad in [
            "250 ok",
            "600 x",
            "55 x",
            "5500 x",
            "550-x",
            "abc",
            "",
            "550 4.7.1 x",
        ] {
            assert!(SmtpReply::parse(bad).is_err(), "{bad:?} should fail");
        }
        let e = SmtpReply::parse("450 5.2.2 full").unwrap_err();
        assert!(e.contains("does not match reply code 450"), "{e}");
        let e = SmtpReply::parse("250 ok").unwrap_err();
        assert!(e.contains("not a 4xx"), "{e}");
        // One SMTP line at most (found by fuzz/fuzz_targets/access.rs: access-file replies
        // had no bound, unlike the config's).
        let long = format!("550 {}", "x".repeat(506));
        assert_eq!(SmtpReply::parse(&long).unwrap().text.len(), 506);
        let e = SmtpReply::parse(&format!("{long}x")).unwrap_err();
        assert!(e.contains("SMTP allows 510"), "{e}");
        let e = Action::parse(&format!("ERROR:5.7.1:\"{long}\"")).unwrap_err();
        assert!(e.contains("516 characters"), "{e}");
    }

    #[test]
    fn keywords() {
        assert_eq!(Action::parse("OK"), Ok(Action::Ok));
        assert_eq!(Action::parse("RELAY"), Ok(Action::Ok));
        assert_eq!(Action::parse("relay"), Ok(Action::Ok));
        assert_eq!(Action::parse("REJECT"), Ok(Action::Reject));
        assert_eq!(Action::parse(" Discard "), Ok(Action::Discard));
        assert_eq!(Action::parse("TEMPFAIL"), Ok(Action::Tempfail));
        assert_eq!(Action::parse("SKIP"), Ok(Action::Skip));
        assert_eq!(
            Action::parse("REJCT"),
            Err("unknown action `REJCT`".to_string())
        );
        assert_eq!(Action::parse(" "), Err("empty action".to_string()));
        let e = Action::parse("REJECT # spammer").unwrap_err();
        assert!(e.starts_with("unexpected text after `REJECT`"), "{e}");
        assert!(e.contains("must be on a line of its own"), "{e}");
        let e = Action::parse("ERROR:\"550 no\" # why").unwrap_err();
        assert!(e.contains("must be on a line of its own"), "{e}");
        let e = Action::parse("REJECT now").unwrap_err();
        assert!(!e.contains("line of its own"), "{e}");
        assert!(Action::parse("QUARANTINE:why")
            .unwrap_err()
            .contains("unsupported"));
        assert!(Action::parse("ERROR 550 x")
            .unwrap_err()
            .contains("needs a colon"));
    }

    #[test]
    fn error_variants() {
        let seed = Action::parse("ERROR:\"550 Sender banned. Please use legitimate domain\"");
        assert_eq!(
            seed,
            Ok(Action::Error(Box::new(reply(
                550,
                None,
                "Sender banned. Please use legitimate domain"
            ))))
        );
        let want = Action::Error(Box::new(reply(550, Some("5.7.1"), "go away")));
        for s in [
            "ERROR:5.7.1:\"550 go away\"",
            "ERROR:5.7.1:550 go away",
            "ERROR:\"550 5.7.1 go away\"",
            "ERROR:550 5.7.1 go away",
            "error:5.7.1:\"550 5.7.1 go away\"",
            "\"550 5.7.1 go away\"",
            "550 5.7.1 go away",
        ] {
            assert_eq!(Action::parse(s), Ok(want.clone()), "{s}");
        }
        assert_eq!(
            Action::parse("ERROR:550 unquoted text"),
            Ok(Action::Error(Box::new(reply(550, None, "unquoted text"))))
        );
        assert_eq!(
            Action::parse("ERROR:4.2.2:450 mailbox full"),
            Ok(Action::Error(Box::new(reply(
                450,
                Some("4.2.2"),
                "mailbox full"
            ))))
        );
    }

    #[test]
    fn error_validation() {
        let cases = [
            ("ERROR:", "needs a reply"),
            ("ERROR:\"550 text", "unterminated quote"),
            (
                "ERROR:\"550 text\" # why",
                "after the closing quote: ` # why`",
            ),
            ("ERROR:550 line\nbreak", "control character"),
            ("ERROR:250 fine", "not a 4xx"),
            ("ERROR:5.7.1:450 x", "does not match reply code 450"),
            ("ERROR:4.7.1:\"550 x\"", "does not match reply code 550"),
            ("ERROR:5.7.1:\"550 5.1.1 x\"", "conflicting"),
            ("ERROR:text only", "3-digit"),
        ];
        for (s, want) in cases {
            let e = Action::parse(s).unwrap_err();
            assert!(e.contains(want), "{s}: {e}");
        }
    }

    #[test]
    fn display_is_canonical() {
        assert_eq!(Action::Ok.to_string(), "OK");
        assert_eq!(Action::Reject.to_string(), "REJECT");
        assert_eq!(
            Action::parse("ERROR:550 5.7.1 text").unwrap().to_string(),
            "ERROR:5.7.1:\"550 text\""
        );
        assert_eq!(
            Action::parse("ERROR:550 text").unwrap().to_string(),
            "ERROR:\"550 text\""
        );
        // A text that starts with a status code keeps the code inside the quotes, so the
        // canonical form reads back as itself (found by fuzz/fuzz_targets/access.rs).
        let a = Action::parse("ERROR:\"550 5.7.150 5.7.1 x y\"").unwrap();
        assert_eq!(a.to_string(), "ERROR:\"550 5.7.150 5.7.1 x y\"");
        assert_eq!(Action::parse(&a.to_string()), Ok(a));
    }

    fn action_strategy() -> impl Strategy<Value = Action> {
        let text = "[ -~]{0,30}".prop_map(|s| s.trim().to_string());
        let err = (
            prop_oneof![400u16..500, 500u16..600],
            any::<bool>(),
            0u8..10,
            0u16..1000,
            text,
        )
            .prop_map(|(code, with_dsn, s, d, text)| {
                let enhanced = with_dsn.then(|| format!("{}.{s}.{d}", code / 100));
                // A text that itself starts with a status code would be read back as one.
                let text = if is_status_code(text.split(' ').next().unwrap_or("")) {
                    format!("x{text}")
                } else {
                    text
                };
                Action::Error(Box::new(SmtpReply {
                    code,
                    enhanced,
                    text,
                }))
            });
        prop_oneof![
            Just(Action::Ok),
            Just(Action::Reject),
            Just(Action::Discard),
            Just(Action::Tempfail),
            Just(Action::Skip),
            err,
        ]
    }

    proptest! {
        #[test]
        fn display_round_trips(a in action_strategy()) {
            prop_assert_eq!(Action::parse(&a.to_string()), Ok(a.clone()));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,40}") {
            let _ = Action::parse(&s);
            let _ = SmtpReply::parse(&s);
        }
    }
}
