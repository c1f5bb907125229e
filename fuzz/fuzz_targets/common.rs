//! Invariants shared by the targets: what the MTA receives must be one well-formed SMTP reply
//! line, whatever DNS, the SMTP client or an admin's file put into it.
#![allow(dead_code)] // each target uses a part

use bytes::BytesMut;
use mxsentry::checks::sender_rules::SmtpReply;
use mxsentry::policy::Verdict;
use mxsentry::protocol::{decode_reply, encode_reply, split_frame, Reply};
use mxsentry::session::verdict_reply;

/// RFC 5321 4.5.3.1.5: 512 octets per reply line including CRLF.
pub const MAX_REPLY_LINE: usize = 510;

/// Encodes `verdict` as the session does, decodes the frame like an MTA, and checks the text.
pub fn check_verdict_on_wire(verdict: &Verdict) {
    let reply = verdict_reply(verdict);
    let mut buf = BytesMut::new();
    encode_reply(&reply, &mut buf);
    let frame = split_frame(&mut buf, usize::MAX)
        .expect("our reply frames")
        .expect("our reply is complete");
    assert!(buf.is_empty(), "one reply, one frame");
    let decoded = decode_reply(frame).expect("an MTA decodes our reply");
    assert_eq!(decoded, reply);
    let class = match verdict {
        Verdict::Reject(_) => b'5',
        Verdict::Tempfail(_) | Verdict::Greylist(_) => b'4',
        _ => {
            assert!(!matches!(decoded, Reply::ReplyCode { .. }));
            return;
        }
    };
    let Reply::ReplyCode { text } = decoded else {
        panic!("a verdict with a reply must go out as SMFIR_REPLYCODE: {decoded:?}");
    };
    let shown = check_reply_text(&text, class);
    // What the MTA shows is the reply the policy decided on; a text that starts with a digit
    // gets an enhanced status code in front (Postfix would read the digit as one).
    let want = verdict.reply().expect("verdict carries a reply");
    let got = SmtpReply::parse(&shown).unwrap_or_else(|e| panic!("{shown:?}: {e}"));
    if want.enhanced.is_some() || !want.text.starts_with(|c: char| c.is_ascii_digit()) {
        assert_eq!(&got, want, "{shown:?}");
    } else {
        // The code in front may have cut the end of a long text.
        assert_eq!(got.code, want.code, "{shown:?}");
        assert!(want.text.starts_with(&got.text), "{shown:?} from {want:?}");
    }
}

/// Checks one SMFIR_REPLYCODE text and returns it as the client sees it (`%%` → `%`).
/// * one line: no CR, LF or NUL;
/// * `%` doubled (sendmail treats the text as a format string and drops a reply with a lone
///   `%`; Postfix undoes the doubling);
/// * `DDD ` with the first digit `class`, and an enhanced code of the same class (Postfix
///   refuses `550 4.x.x`);
/// * at most 510 octets as shown.
pub fn check_reply_text(text: &[u8], class: u8) -> String {
    assert!(
        !text.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)),
        "CR, LF or NUL in a reply: {text:?}"
    );
    let text = std::str::from_utf8(text).expect("reply text is UTF-8");
    let mut shown = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '%' {
            assert_eq!(chars.next(), Some('%'), "lone % in {text:?}");
        }
        shown.push(c);
    }
    let b = shown.as_bytes();
    assert!(b.len() >= 4, "too short: {shown:?}");
    assert_eq!(b[0], class, "class changed: {shown:?}");
    assert!(b[1].is_ascii_digit() && b[2].is_ascii_digit(), "{shown:?}");
    assert_eq!(b[3], b' ', "{shown:?}");
    if b.len() > 4 && b[4].is_ascii_digit() {
        assert_eq!(b[4], class, "enhanced status class differs: {shown:?}");
    }
    assert!(
        shown.len() <= MAX_REPLY_LINE,
        "reply of {} octets: {shown:?}",
        shown.len()
    );
    shown
}

/// A header value or log word built from hostile data: no CR, LF or NUL (they would end the
/// header or the milter string early), no other control characters but tab (white space in
/// headers and SMTP replies alike).
pub fn check_one_line(what: &str, s: &str) {
    assert!(
        !s.chars().any(|c| c.is_control() && c != '\t'),
        "control character in {what}: {s:?}"
    );
}
