//! Filter → MTA replies (`SMFIR_*`) and SMTP reply text.
//!
//! Only the replies mxsentry sends are modelled. The recipient/sender/body modification
//! replies (`+`, `-`, `2`, `e`, `b`) and `4`/`f`/`l` are not: decoding them gives
//! `UnknownCommand`. Adding them as `Reply` variants later is a breaking change for
//! exhaustive matches, so it was left until something needs them.

use bytes::{BufMut, Bytes, BytesMut};

use super::command::{put_cstr, DecodeError};
use super::frame::write_frame_with;
use super::Cursor;

pub const SMFIR_ADDRCPT: u8 = b'+';
pub const SMFIR_DELRCPT: u8 = b'-';
pub const SMFIR_ADDRCPT_PAR: u8 = b'2';
pub const SMFIR_SHUTDOWN: u8 = b'4';
pub const SMFIR_ACCEPT: u8 = b'a';
pub const SMFIR_REPLBODY: u8 = b'b';
pub const SMFIR_CONTINUE: u8 = b'c';
pub const SMFIR_DISCARD: u8 = b'd';
pub const SMFIR_CHGFROM: u8 = b'e';
pub const SMFIR_CONN_FAIL: u8 = b'f';
pub const SMFIR_ADDHEADER: u8 = b'h';
pub const SMFIR_INSHEADER: u8 = b'i';
pub const SMFIR_SETSYMLIST: u8 = b'l';
pub const SMFIR_CHGHEADER: u8 = b'm';
pub const SMFIR_PROGRESS: u8 = b'p';
pub const SMFIR_QUARANTINE: u8 = b'q';
pub const SMFIR_REJECT: u8 = b'r';
pub const SMFIR_SKIP: u8 = b's';
pub const SMFIR_TEMPFAIL: u8 = b't';
pub const SMFIR_REPLYCODE: u8 = b'y';
/// The OPTNEG reply reuses the command's code.
pub const SMFIR_OPTNEG: u8 = b'O';

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Continue,
    Accept,
    Reject,
    Tempfail,
    Discard,
    Skip,
    Progress,
    /// Full SMTP reply text without the trailing NUL; build it with [`smtp_reply_text`].
    ReplyCode {
        text: Bytes,
    },
    AddHeader {
        name: Bytes,
        value: Bytes,
    },
    /// `index` 0 inserts before the first header (sendmail semantics).
    InsertHeader {
        index: u32,
        name: Bytes,
        value: Bytes,
    },
    /// `index` counts same-named headers from 1; an empty value deletes the header.
    ChangeHeader {
        index: u32,
        name: Bytes,
        value: Bytes,
    },
    Quarantine {
        reason: Bytes,
    },
    /// `macros`: (SMFIM_* stage, space-separated macro names) lists, protocol v6 only.
    OptNeg {
        version: u32,
        actions: u32,
        protocol: u32,
        macros: Vec<(u32, Bytes)>,
    },
}

impl Reply {
    /// The wire reply byte (`SMFIR_*`).
    pub fn code(&self) -> u8 {
        match self {
            Reply::Continue => SMFIR_CONTINUE,
            Reply::Accept => SMFIR_ACCEPT,
            Reply::Reject => SMFIR_REJECT,
            Reply::Tempfail => SMFIR_TEMPFAIL,
            Reply::Discard => SMFIR_DISCARD,
            Reply::Skip => SMFIR_SKIP,
            Reply::Progress => SMFIR_PROGRESS,
            Reply::ReplyCode { .. } => SMFIR_REPLYCODE,
            Reply::AddHeader { .. } => SMFIR_ADDHEADER,
            Reply::InsertHeader { .. } => SMFIR_INSHEADER,
            Reply::ChangeHeader { .. } => SMFIR_CHGHEADER,
            Reply::Quarantine { .. } => SMFIR_QUARANTINE,
            Reply::OptNeg { .. } => SMFIR_OPTNEG,
        }
    }

    /// A short upper-case name for logs.
    pub fn name(&self) -> &'static str {
        reply_name(self.code()).unwrap_or("?")
    }

    /// `ReplyCode` with text built (and validated) by [`smtp_reply_text`].
    pub fn reply_code(
        code: u16,
        enhanced: Option<&str>,
        lines: &[&str],
    ) -> Result<Reply, ReplyTextError> {
        let text = smtp_reply_text(code, enhanced, lines)?;
        Ok(Reply::ReplyCode {
            text: Bytes::from(text),
        })
    }
}

/// Name of a reply byte this module can decode.
pub fn reply_name(code: u8) -> Option<&'static str> {
    Some(match code {
        SMFIR_CONTINUE => "CONTINUE",
        SMFIR_ACCEPT => "ACCEPT",
        SMFIR_REJECT => "REJECT",
        SMFIR_TEMPFAIL => "TEMPFAIL",
        SMFIR_DISCARD => "DISCARD",
        SMFIR_SKIP => "SKIP",
        SMFIR_PROGRESS => "PROGRESS",
        SMFIR_REPLYCODE => "REPLYCODE",
        SMFIR_ADDHEADER => "ADDHEADER",
        SMFIR_INSHEADER => "INSHEADER",
        SMFIR_CHGHEADER => "CHGHEADER",
        SMFIR_QUARANTINE => "QUARANTINE",
        SMFIR_OPTNEG => "OPTNEG",
        _ => return None,
    })
}

/// Appends `reply` as one frame. Strings must not contain NUL (checked in debug builds).
pub fn encode_reply(reply: &Reply, buf: &mut BytesMut) {
    write_frame_with(buf, reply.code(), |b| match reply {
        Reply::Continue
        | Reply::Accept
        | Reply::Reject
        | Reply::Tempfail
        | Reply::Discard
        | Reply::Skip
        | Reply::Progress => {}
        Reply::ReplyCode { text } => put_cstr(b, text),
        Reply::Quarantine { reason } => put_cstr(b, reason),
        Reply::AddHeader { name, value } => {
            put_cstr(b, name);
            put_cstr(b, value);
        }
        Reply::InsertHeader { index, name, value } | Reply::ChangeHeader { index, name, value } => {
            b.put_u32(*index);
            put_cstr(b, name);
            put_cstr(b, value);
        }
        Reply::OptNeg {
            version,
            actions,
            protocol,
            macros,
        } => {
            b.put_u32(*version);
            b.put_u32(*actions);
            b.put_u32(*protocol);
            for (stage, names) in macros {
                b.put_u32(*stage);
                put_cstr(b, names);
            }
        }
    });
}

/// Decodes one reply frame (command byte first), strictly: what the MTA would reject, we
/// reject. Used by test clients and the fuzzer. Never panics.
pub fn decode_reply(frame: Bytes) -> Result<Reply, DecodeError> {
    let Some(&code) = frame.first() else {
        return Err(DecodeError::Empty);
    };
    let name = reply_name(code).ok_or(DecodeError::UnknownCommand(code))?;
    let mut c = Cursor::new(frame.slice(1..), name);
    let reply = match code {
        SMFIR_CONTINUE => Reply::Continue,
        SMFIR_ACCEPT => Reply::Accept,
        SMFIR_REJECT => Reply::Reject,
        SMFIR_TEMPFAIL => Reply::Tempfail,
        SMFIR_DISCARD => Reply::Discard,
        SMFIR_SKIP => Reply::Skip,
        SMFIR_PROGRESS => Reply::Progress,
        SMFIR_REPLYCODE => Reply::ReplyCode { text: c.cstr()? },
        SMFIR_QUARANTINE => Reply::Quarantine { reason: c.cstr()? },
        SMFIR_ADDHEADER => Reply::AddHeader {
            name: c.cstr()?,
            value: c.cstr()?,
        },
        SMFIR_INSHEADER => Reply::InsertHeader {
            index: c.u32()?,
            name: c.cstr()?,
            value: c.cstr()?,
        },
        SMFIR_CHGHEADER => Reply::ChangeHeader {
            index: c.u32()?,
            name: c.cstr()?,
            value: c.cstr()?,
        },
        SMFIR_OPTNEG => {
            let (version, actions, protocol) = (c.u32()?, c.u32()?, c.u32()?);
            let mut macros = Vec::new();
            while !c.is_empty() {
                macros.push((c.u32()?, c.cstr()?));
            }
            Reply::OptNeg {
                version,
                actions,
                protocol,
                macros,
            }
        }
        _ => return Err(DecodeError::UnknownCommand(code)),
    };
    c.finish()?;
    Ok(reply)
}

/// Why [`smtp_reply_text`] refused to build a reply. These are configuration errors (the
/// texts come from the config file), so they should surface at startup, not per message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplyTextError {
    #[error("SMTP reply code {0} is not a 4xx or 5xx code")]
    InvalidCode(u16),
    #[error("enhanced status code {0:?} is not of the form class.subject.detail")]
    InvalidEnhanced(String),
    #[error("enhanced status class {class} does not match reply code {code}")]
    ClassMismatch { code: u16, class: char },
    #[error("reply line {0} contains CR, LF or NUL")]
    BadChar(usize),
    #[error("reply line {0} is longer than 510 characters")]
    LineTooLong(usize),
    #[error("{0} reply lines exceed libmilter's limit of 32")]
    TooManyLines(usize),
}

/// Most lines libmilter's `smfi_setmlreply` accepts.
pub const MAX_REPLY_LINES: usize = 32;
/// RFC 5321 4.5.3.1.5: 512 octets per reply line including CRLF.
const MAX_LINE: usize = 510;

/// Builds SMTP reply text for `Reply::ReplyCode`: `code`, an optional enhanced status
/// (RFC 3463, e.g. `"5.7.1"`) and text lines. Several lines give the multi-line form
/// `"550-5.7.1 a\r\n550 5.7.1 b"`; no lines give just the code (and status).
///
/// `%` is doubled to `%%`: sendmail uses the text as a format string (libmilter refuses a
/// lone `%`) and Postfix turns `%%` back into `%`, so both MTAs show a single `%`.
/// A line without text still gets the separator (`"550 "`), because Postfix checks that the
/// fourth character is a space or dash.
pub fn smtp_reply_text(
    code: u16,
    enhanced: Option<&str>,
    lines: &[&str],
) -> Result<String, ReplyTextError> {
    if !(400..600).contains(&code) {
        return Err(ReplyTextError::InvalidCode(code));
    }
    if let Some(e) = enhanced {
        check_enhanced(code, e)?;
    }
    let lines: &[&str] = if lines.is_empty() { &[""] } else { lines };
    if lines.len() > MAX_REPLY_LINES {
        return Err(ReplyTextError::TooManyLines(lines.len()));
    }
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        if line.contains(['\r', '\n', '\0']) {
            return Err(ReplyTextError::BadChar(i));
        }
        let enh_len = enhanced.map_or(0, |e| e.len() + 1);
        if 4 + enh_len + line.len() > MAX_LINE {
            return Err(ReplyTextError::LineTooLong(i));
        }
        if i > 0 {
            out.push_str("\r\n");
        }
        let sep = if i + 1 == lines.len() { ' ' } else { '-' };
        out.push_str(&code.to_string());
        out.push(sep);
        if let Some(e) = enhanced {
            out.push_str(e);
            if !line.is_empty() {
                out.push(' ');
            }
        }
        out.push_str(&line.replace('%', "%%"));
    }
    Ok(out)
}

fn check_enhanced(code: u16, e: &str) -> Result<(), ReplyTextError> {
    let invalid = || ReplyTextError::InvalidEnhanced(e.to_owned());
    let digits = |s: &str| (1..=3).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
    let mut parts = e.split('.');
    let (Some(class), Some(subject), Some(detail), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid());
    };
    if !(class == "4" || class == "5") || !digits(subject) || !digits(detail) {
        return Err(invalid());
    }
    let class = char::from(class.as_bytes()[0]);
    if class.to_digit(10) != Some(u32::from(code / 100)) {
        return Err(ReplyTextError::ClassMismatch { code, class });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_text_single_and_multi_line() {
        assert_eq!(
            smtp_reply_text(550, Some("5.7.1"), &["Rejected by policy"]).unwrap(),
            "550 5.7.1 Rejected by policy"
        );
        assert_eq!(
            smtp_reply_text(451, Some("4.7.1"), &["Greylisted", "try again later"]).unwrap(),
            "451-4.7.1 Greylisted\r\n451 4.7.1 try again later"
        );
        assert_eq!(
            smtp_reply_text(554, None, &["go away"]).unwrap(),
            "554 go away"
        );
        assert_eq!(
            smtp_reply_text(550, Some("5.7.1"), &[]).unwrap(),
            "550 5.7.1"
        );
        assert_eq!(smtp_reply_text(550, None, &[]).unwrap(), "550 ");
        assert_eq!(
            smtp_reply_text(550, None, &["100% spam"]).unwrap(),
            "550 100%% spam"
        );
    }

    #[test]
    fn reply_text_errors() {
        use ReplyTextError::*;
        assert_eq!(smtp_reply_text(250, None, &["ok"]), Err(InvalidCode(250)));
        assert_eq!(smtp_reply_text(600, None, &["x"]), Err(InvalidCode(600)));
        assert_eq!(
            smtp_reply_text(550, Some("4.7.1"), &["x"]),
            Err(ClassMismatch {
                code: 550,
                class: '4'
            })
        );
        for bad in ["5.7", "5.7.1.1", "2.0.0", "5.x.1", "5.1234.1", "5..1", ""] {
            assert_eq!(
                smtp_reply_text(550, Some(bad), &["x"]),
                Err(InvalidEnhanced(bad.to_owned()))
            );
        }
        assert_eq!(
            smtp_reply_text(550, None, &["a", "b\r\nc"]),
            Err(BadChar(1))
        );
        assert_eq!(smtp_reply_text(550, None, &["a\n"]), Err(BadChar(0)));
        assert_eq!(smtp_reply_text(550, None, &["a\0"]), Err(BadChar(0)));
        assert_eq!(
            smtp_reply_text(550, None, &["x"; 33]),
            Err(TooManyLines(33))
        );
        assert!(smtp_reply_text(550, None, &["x"; 32]).is_ok());
        let long = "x".repeat(507);
        assert_eq!(smtp_reply_text(550, None, &[&long]), Err(LineTooLong(0)));
        assert!(smtp_reply_text(550, None, &[&long[1..]]).is_ok());
    }

    #[test]
    fn reply_wire_layout() {
        let mut buf = BytesMut::new();
        encode_reply(
            &Reply::reply_code(550, Some("5.7.1"), &["no"]).unwrap(),
            &mut buf,
        );
        assert_eq!(&buf[..], b"\0\0\0\x0ey550 5.7.1 no\0");
        buf.clear();
        encode_reply(&Reply::Continue, &mut buf);
        assert_eq!(&buf[..], b"\0\0\0\x01c");
    }

    #[test]
    fn decode_reply_malformed() {
        let bad: [&[u8]; 7] = [
            b"y550 no terminator",
            b"cjunk",
            b"h\x4e\0",
            b"i\0\0\0",
            b"m\0\0\0\x01X-A\0v\0junk",
            b"O\0\0\0\x06\0\0\0\x01\0\0\0\0\0\0\0\x01{i}",
            b"O\0\0\0\x06\0\0\0\x01\0\0\0\0\0\0",
        ];
        for f in bad {
            assert!(
                matches!(
                    decode_reply(Bytes::from_static(f)),
                    Err(DecodeError::Malformed { .. })
                ),
                "{f:?}"
            );
        }
        assert_eq!(
            decode_reply(Bytes::from_static(b"+x\0")),
            Err(DecodeError::UnknownCommand(b'+'))
        );
        assert_eq!(decode_reply(Bytes::new()), Err(DecodeError::Empty));
    }
}
