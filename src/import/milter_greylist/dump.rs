//! milter-greylist's text dump (`greylist.db`), one line at a time. Pure: no I/O.
//!
//! What milter-greylist writes (dump.c `dump_header`, pending.c `pending_textdump`, and up to
//! 4.3.1 autowhite.c `autowhite_textdump`), and reads back (dump_lex.l, dump_yacc.y):
//!
//! ```text
//! #
//! # milter-greylist databases, dumped by milter-greylist-4.6.2 on 2020-01-02 03:04:05.
//! # DO NOT EDIT while milter-greylist is running, changes will be overwritten.
//! #
//!
//!
//! #
//! # stored tuples
//! #
//! # Sender IP<TAB>Sender e-mail<TAB>Recipient e-mail<TAB>Time accepted<TAB>Unsuccessful shortest tarpit
//! 192.0.2.1<TAB><a@example.com><TAB><b@example.org><TAB>1577934245 # 2020-01-02 04:04:05
//! 192.0.2.2<TAB><><TAB><b@example.org><TAB>1578106445 AUTO # 2020-01-04 04:04:05
//! 192.0.2.3<TAB><a@example.com><TAB><b@example.org><TAB>1577934245<TAB>30 TARPIT # ...
//! #
//! # Summary: 3 records, 1 greylisted, 1 whitelisted, 1 tarpitted
//! #
//! ```
//!
//! * Up to 4.3.1 (so all of 4.2 and older) the dump has two sections: `# greylisted tuples`
//!   (header column `Time accepted`), then `# Auto-whitelisted tuples` (column `Expire`), and a
//!   summary `N records, N greylisted, N whitelisted`. From 4.3.2 (4.4, 4.6) one section,
//!   `# stored tuples`, holds both kinds, plus `TARPIT` tuples (4.4+).
//! * The time is always a number of seconds since the epoch. `dump_no_time_translation` only
//!   drops the `# YYYY-MM-DD HH:MM:SS` comment (local time) after it; 4.3.2+ then leaves a
//!   space before the newline of a greylisted tuple (`1577934245 \n`).
//! * What the time means: for a greylisted (and a tarpitted) tuple, *when it becomes
//!   acceptable* (first attempt + the delay in force then); the tuple is dropped `timeout`
//!   (default 5d) after that time. For an `AUTO` tuple, *when it expires* (last accepted
//!   delivery + `autowhite`). `TARPIT` tuples carry a second number, the shortest unsuccessful
//!   tarpit in seconds.
//! * Addresses are as the MTA handed them, normally in brackets (`<a@example.com>`, `<>` for
//!   the null sender); milter-greylist has already cut a sender at its last `=` (BATV, SRS).
//!   Dumps before late 2005 padded them to 32 columns with spaces.
//! * Fields are separated by blanks (spaces or tabs); `#` at the start of a field begins a
//!   comment; IPv6 addresses may carry a `%scope`.

use std::net::IpAddr;

/// What a tuple is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Greylisted: the time is when it becomes acceptable.
    Pending,
    /// `AUTO`: autowhitelisted; the time is when it expires.
    Auto,
    /// `TARPIT` (4.4+): greylisted and tarpitted; the time is as for `Pending`, `shortest` the
    /// shortest unsuccessful tarpit in seconds.
    Tarpit { shortest: u64 },
}

/// One tuple line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuple<'a> {
    pub ip: IpAddr,
    /// The sender as written (`<a@example.com>`, `<>`).
    pub from: &'a str,
    /// The recipient as written.
    pub rcpt: &'a str,
    /// Seconds since the epoch (see [`Kind`] for what it means).
    pub time: u64,
    pub kind: Kind,
}

/// A section header comment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// `# greylisted tuples` (up to 4.3.1).
    Greylisted,
    /// `# Auto-whitelisted tuples` (up to 4.3.1).
    AutoWhitelisted,
    /// `# stored tuples` (4.3.2 and later).
    Stored,
}

/// What one line of a dump is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line<'a> {
    /// Empty, or only blanks.
    Blank,
    /// `# milter-greylist databases, dumped by milter-greylist-VERSION on DATE.`
    Header {
        version: &'a str,
        dumped_at: &'a str,
    },
    /// A section title.
    Section(Section),
    /// Any other comment (column titles, summary, `#`).
    Comment,
    Tuple(Tuple<'a>),
}

/// Parses one line (without its newline). The error says why the line is not a tuple.
pub fn parse_line(line: &str) -> Result<Line<'_>, String> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let trimmed = line.trim_matches([' ', '\t']);
    if trimmed.is_empty() {
        return Ok(Line::Blank);
    }
    if let Some(comment) = trimmed.strip_prefix('#') {
        return Ok(parse_comment(comment.trim()));
    }
    let fields: Vec<&str> = trimmed
        .split([' ', '\t'])
        .filter(|f| !f.is_empty())
        .take_while(|f| !f.starts_with('#'))
        .collect();
    let [ip, from, rcpt, time, rest @ ..] = fields.as_slice() else {
        return Err(format!(
            "expected `IP <sender> <recipient> TIME [AUTO]`, got {} field{}",
            fields.len(),
            if fields.len() == 1 { "" } else { "s" }
        ));
    };
    let ip = parse_ip(ip)?;
    let from = check_address(from, "sender")?;
    let rcpt = check_address(rcpt, "recipient")?;
    if bare(rcpt).is_empty() {
        return Err("empty recipient `<>`".into());
    }
    let time = parse_time(time)?;
    let kind = match rest {
        [] => Kind::Pending,
        [word] if word.eq_ignore_ascii_case("AUTO") => Kind::Auto,
        [shortest, word] if word.eq_ignore_ascii_case("TARPIT") => Kind::Tarpit {
            shortest: parse_time(shortest)?,
        },
        [other, ..] => {
            return Err(format!(
            "unexpected `{other}` after the time (expected AUTO, `SECONDS TARPIT` or a # comment)"
        ))
        }
    };
    Ok(Line::Tuple(Tuple {
        ip,
        from,
        rcpt,
        time,
        kind,
    }))
}

fn parse_comment(text: &str) -> Line<'_> {
    const HEADER: &str = "milter-greylist databases, dumped by milter-greylist-";
    if let Some(rest) = text.strip_prefix(HEADER) {
        if let Some((version, date)) = rest.split_once(" on ") {
            return Line::Header {
                version,
                dumped_at: date.trim_end_matches('.'),
            };
        }
    }
    match text.to_ascii_lowercase().as_str() {
        "greylisted tuples" => Line::Section(Section::Greylisted),
        "auto-whitelisted tuples" => Line::Section(Section::AutoWhitelisted),
        "stored tuples" => Line::Section(Section::Stored),
        _ => Line::Comment,
    }
}

/// An IPv4 or IPv6 address as inet_ntop writes it; an IPv6 `%scope` is dropped.
fn parse_ip(field: &str) -> Result<IpAddr, String> {
    let addr = field.split_once('%').map_or(field, |(a, _)| a);
    addr.parse()
        .map_err(|_| format!("`{field}` is not an IP address"))
}

/// Seconds since the epoch (or a tarpit duration): digits only, as `%ld` prints them.
fn parse_time(field: &str) -> Result<u64, String> {
    if field.is_empty() || !field.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "`{field}` is not a time in seconds since the epoch"
        ));
    }
    field
        .parse()
        .map_err(|_| format!("time `{field}` is out of range"))
}

/// An address field: brackets optional, printable ASCII without blanks (what dump_lex.l's
/// `email` accepts).
fn check_address<'a>(field: &'a str, what: &str) -> Result<&'a str, String> {
    if !field.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{what} `{field}` has characters a dump never holds"
        ));
    }
    if field.starts_with('<') != field.ends_with('>') || (field.len() == 1 && field == "<") {
        return Err(format!("{what} `{field}` has unbalanced brackets"));
    }
    Ok(field)
}

/// The address without its brackets.
pub fn bare(addr: &str) -> &str {
    addr.strip_prefix('<')
        .and_then(|a| a.strip_suffix('>'))
        .unwrap_or(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(line: &str) -> Tuple<'_> {
        match parse_line(line) {
            Ok(Line::Tuple(t)) => t,
            other => panic!("{line:?}: {other:?}"),
        }
    }

    #[test]
    fn every_tuple_form_milter_greylist_prints() {
        // 4.2 greylisted section, with and without dump_no_time_translation
        let t =
            tuple("192.0.2.1\t<a@example.com>\t<b@example.org>\t1577934245 # 2020-01-02 04:04:05");
        assert_eq!(t.ip, "192.0.2.1".parse::<IpAddr>().unwrap());
        assert_eq!(
            (t.from, t.rcpt, t.time),
            ("<a@example.com>", "<b@example.org>", 1577934245)
        );
        assert_eq!(t.kind, Kind::Pending);
        assert_eq!(
            tuple("192.0.2.1\t<a@example.com>\t<b@example.org>\t1577934245").kind,
            Kind::Pending
        );
        // 4.3.2+: trailing blank after a greylisted tuple's time
        assert_eq!(
            tuple("192.0.2.1\t<a@example.com>\t<b@example.org>\t1577934245 ").kind,
            Kind::Pending
        );
        // AUTO, with and without the date comment
        assert_eq!(
            tuple("192.0.2.2\t<>\t<b@example.org>\t1578106445 AUTO # 2020-01-04 04:04:05").kind,
            Kind::Auto
        );
        let t = tuple("2001:db8::25\t<>\t<b@example.org>\t1578106445 AUTO");
        assert_eq!((t.from, t.kind), ("<>", Kind::Auto));
        assert!(t.ip.is_ipv6());
        // TARPIT (4.4+)
        let t = tuple("192.0.2.3\t<a@example.com>\t<b@example.org>\t1577934245\t30 TARPIT # 2020-01-02 04:04:05");
        assert_eq!(t.kind, Kind::Tarpit { shortest: 30 });
        // 2004-2005: addresses right-aligned in 32 columns
        let t = tuple("192.0.2.4\t                 <a@example.com>\t                 <b@example.org>\t1577934245 # 2020-01-02 04:04:05");
        assert_eq!((t.from, t.rcpt), ("<a@example.com>", "<b@example.org>"));
        // a scoped IPv6 address, a CRLF line
        assert!(tuple("fe80::1%em0\t<a@x>\t<b@y>\t1 AUTO\r").ip.is_ipv6());
        // '#' inside an address is not a comment
        assert_eq!(tuple("192.0.2.5\t<a#b@x>\t<c@y>\t10").from, "<a#b@x>");
    }

    #[test]
    fn header_sections_and_comments() {
        assert_eq!(
            parse_line("# milter-greylist databases, dumped by milter-greylist-4.2.7 on 2011-05-06 07:08:09."),
            Ok(Line::Header { version: "4.2.7", dumped_at: "2011-05-06 07:08:09" })
        );
        assert_eq!(
            parse_line("# greylisted tuples"),
            Ok(Line::Section(Section::Greylisted))
        );
        assert_eq!(
            parse_line("# Auto-whitelisted tuples"),
            Ok(Line::Section(Section::AutoWhitelisted))
        );
        assert_eq!(
            parse_line("# stored tuples"),
            Ok(Line::Section(Section::Stored))
        );
        assert_eq!(
            parse_line("# Summary: 3 records, 1 greylisted, 1 whitelisted, 1 tarpitted"),
            Ok(Line::Comment)
        );
        assert_eq!(parse_line("#"), Ok(Line::Comment));
        assert_eq!(parse_line(""), Ok(Line::Blank));
        assert_eq!(parse_line(" \t"), Ok(Line::Blank));
    }

    #[test]
    fn corrupt_lines_say_why() {
        let err = |l: &str| parse_line(l).unwrap_err();
        assert!(err("192.0.2.1\t<a@x>\t<b@y>").contains("got 3 fields"));
        assert!(err("192.0.2.300\t<a@x>\t<b@y>\t1").contains("not an IP address"));
        assert!(err("192.0.2.1\t<a@x>\t<b@y>\t2020-01-02").contains("not a time"));
        assert!(err("192.0.2.1\t<a@x>\t<b@y>\t1 WHITE").contains("unexpected `WHITE`"));
        assert!(err("192.0.2.1\t<a@x>\t<b@y>\t1\t5").contains("unexpected `5`"));
        assert!(err("192.0.2.1\t<a@x\t<b@y>\t1").contains("unbalanced"));
        assert!(err("192.0.2.1\t<a@x>\t<>\t1").contains("empty recipient"));
        assert!(err("192.0.2.1\t<a\u{e9}@x>\t<b@y>\t1").contains("characters"));
        assert!(err("192.0.2.1\t<a@x>\t<b@y>\t99999999999999999999999").contains("out of range"));
    }
}

#[cfg(test)]
#[path = "dump_fixtures.rs"]
mod fixtures;
