//! Sender rules: a sendmail-compatible access table plus regex rules on the envelope sender.
//!
//! # Access file
//!
//! One entry per line, `KEY<whitespace>VALUE`; blank lines and lines whose first non-blank
//! character is `#` are ignored (there are no trailing comments: like makemap, everything after
//! the key is the value). Keys are case-insensitive and stored lowercase. A key that appears
//! twice (after normalisation) is an error, as it is for makemap.
//!
//! Tags: `From:` (envelope sender), `To:` (recipient), `Connect:` (client host name or IP
//! address). An untagged key is consulted by all three, right after the tagged form of the same
//! key (sendmail: "tried first with the corresponding tag in front, then ... without any tag").
//!
//! Keys: `user@example.com`; `user@` (that local part at any domain); `example.com` (the domain
//! and all its subdomains; `.example.com`, sendmail's lookupdotdomain form, only the
//! subdomains); `<>` (the null sender, mxsentry extension: sendmail always accepts it); IPv4
//! octet prefixes `10`, `192.0.2`, `192.0.2.1`; IPv6 group prefixes `IPv6:2001:db8` and hosts
//! `IPv6:2001:db8::1` (compared as fully expanded groups, so `IPv6:2001:0db8:0:0:0:0:0:1` is
//! the same key); address literals `[192.0.2.1]`, `[1.2.4]`, `[IPv6:...]` (same as the bare
//! forms); and (mxsentry extension) CIDR networks `192.0.2.0/25`, `2001:db8::/32`.
//!
//! Values: see [`Action::parse`].
//!
//! # Lookup order (sendmail's cf/m4/proto.m4)
//!
//! Each step tries `Tag:key`, then the untagged `key`. The first step that finds an entry with a
//! decision wins. `SKIP` (only allowed on host/domain/network keys) ends its own step (so the
//! parents of that domain or network are not searched) without a decision; later steps still
//! run, and if none decides the SKIP entry itself is returned so explanations can show it.
//!
//! * Sender (check_mail: `<F:user@domain> <U:user@> <D:domain>`):
//!   1. F: `user@domain` (with `+detail`: `user+detail@domain`, `user+*@domain`, `user@domain`),
//!   2. U: `user@` (with `+detail`: `user+detail@`, `user+*@`, `user@`),
//!   3. D: `host.sub.domain`, `sub.domain`, `domain`, `tld` — most specific first; an address
//!      literal `user@[192.0.2.1]` is searched like a client IP address (below).
//!
//!   A sender without `@` is a local user: U only. The null sender (`""` or `<>`): `From:<>`,
//!   then `<>`.
//! * Recipient (check_rcpt with blocklist_recipients): the same three steps with `To:`
//!   (sendmail tries U only for its local domains; mxsentry has no list of those and always
//!   tries it).
//! * Client (check_relay): D on the verified host name, then A on the IP address: the address
//!   itself and then each shorter network present in the table (`192.0.2.1`, `192.0.2`,
//!   `192.0`, `192`; CIDR keys are merged in by prefix length), most specific first.

use std::fmt;
use std::net::IpAddr;

mod access;
mod action;
mod key;
#[cfg(test)]
mod tests;

pub use access::{AccessLoadError, AccessTable};
pub use action::{Action, SmtpReply, MAX_REPLY_LEN};

/// Which lookup an entry applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    From,
    To,
    Connect,
    Untagged,
}

impl Tag {
    /// `From:`, `To:`, `Connect:` or `""`.
    pub fn prefix(self) -> &'static str {
        match self {
            Tag::From => "From:",
            Tag::To => "To:",
            Tag::Connect => "Connect:",
            Tag::Untagged => "",
        }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.prefix())
    }
}

/// One understood line of the access file.
#[derive(Debug, Clone)]
pub struct Entry {
    pub tag: Tag,
    /// Lowercase, without the tag (`example.com`, `user@`, `192.0.2`, `ipv6:2001:db8`).
    pub key: Box<str>,
    pub action: Action,
    /// 1-based line number in the file (u32: 100k entries are held in memory).
    pub line: u32,
}

/// Canonical form: `From:example.com REJECT`.
impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{} {}", self.tag, self.key, self.action)
    }
}

/// A line that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// What matched: for logs and `explain` ("access:12: From:example.com REJECT").
#[derive(Debug, Clone, Copy)]
pub struct Match<'a> {
    pub entry: &'a Entry,
}

impl fmt::Display for Match<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "access:{}: {}", self.entry.line, self.entry)
    }
}

/// A `[[sender_rules.regex]]` rule, matched against the envelope sender.
#[derive(Debug, Clone)]
pub struct RegexRule {
    pub pattern: String,
    pub regex: regex::Regex,
    pub action: Action,
}

impl RegexRule {
    /// Compiles `pattern` (case-sensitive; use `(?i)` or build the `Regex` yourself otherwise).
    pub fn new(pattern: &str, action: Action) -> Result<RegexRule, regex::Error> {
        Ok(RegexRule {
            pattern: pattern.to_string(),
            regex: regex::Regex::new(pattern)?,
            action,
        })
    }
}

/// Access table + regex rules; the check the policy calls.
#[derive(Debug, Default)]
pub struct SenderRules {
    pub access: AccessTable,
    pub regex: Vec<RegexRule>,
}

/// Where a hit came from.
#[derive(Debug, Clone, Copy)]
pub enum RuleSource<'a> {
    Access(&'a Entry),
    Regex(&'a RegexRule),
}

/// A rule that matched. `action` may be `Skip` (found, but no decision): callers filter it.
#[derive(Debug, Clone, Copy)]
pub struct RuleHit<'a> {
    pub action: &'a Action,
    pub source: RuleSource<'a>,
}

impl<'a> From<Match<'a>> for RuleHit<'a> {
    fn from(m: Match<'a>) -> RuleHit<'a> {
        RuleHit {
            action: &m.entry.action,
            source: RuleSource::Access(m.entry),
        }
    }
}

impl RuleHit<'_> {
    /// Stable text for logs: `access:12 From:example.com REJECT`,
    /// `regex ^[^@]+@emalsrv\. ERROR:"550 text"`.
    pub fn describe(&self) -> String {
        match self.source {
            RuleSource::Access(e) => format!("access:{} {e}", e.line),
            RuleSource::Regex(r) => format!("regex {} {}", r.pattern, r.action),
        }
    }
}

impl SenderRules {
    /// The access entry for the client (host name, then IP address).
    pub fn connect_hit(&self, ip: IpAddr, hostname: Option<&str>) -> Option<RuleHit<'_>> {
        self.access.lookup_client(ip, hostname).map(RuleHit::from)
    }

    /// Access lookup first; if no decision there (None or Skip), regex rules in order (first
    /// match). Regexes see the sender without `<>` and with its case preserved (the null sender
    /// is `""`). A matching regex rule whose action is SKIP ends the search without a decision.
    /// If only a SKIP was found, it is returned.
    pub fn sender_hit(&self, sender: &str) -> Option<RuleHit<'_>> {
        let access = self.access.lookup_sender(sender);
        if let Some(m) = access.filter(|m| m.entry.action.is_decision()) {
            return Some(m.into());
        }
        let subject = access::strip_brackets(sender);
        self.regex
            .iter()
            .find(|r| r.regex.is_match(subject))
            .map(|r| RuleHit {
                action: &r.action,
                source: RuleSource::Regex(r),
            })
            .or_else(|| access.map(RuleHit::from))
    }

    /// The access entry for a recipient.
    pub fn recipient_hit(&self, rcpt: &str) -> Option<RuleHit<'_>> {
        self.access.lookup_recipient(rcpt).map(RuleHit::from)
    }
}

/// `mxsentry access import FILE`: the report printed to stdout. One line per understood rule
/// ("line 3: From:example.com DISCARD" in canonical form) and one per line it could not
/// understand ("line 7: cannot use: unknown action `REJCT`: ORIGINAL LINE"), in file
/// order, then "N rules understood, M lines not understood". Returns (report, bad lines).
pub fn import_report(text: &str) -> (String, usize) {
    use fmt::Write as _;
    let (table, errors) = AccessTable::parse(text);
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    let mut bad = errors.iter().peekable();
    let write_bad = |out: &mut String, e: &LineError| {
        let original = lines.get(e.line - 1).map_or("", |l| access::trim_line(l));
        let _ = writeln!(out, "line {}: cannot use: {}: {original}", e.line, e.reason);
    };
    for entry in table.entries() {
        while let Some(e) = bad.next_if(|e| e.line < entry.line as usize) {
            write_bad(&mut out, e);
        }
        let _ = writeln!(out, "line {}: {entry}", entry.line);
    }
    for e in bad {
        write_bad(&mut out, e);
    }
    let _ = writeln!(
        out,
        "{} rules understood, {} lines not understood",
        table.len(),
        errors.len()
    );
    (out, errors.len())
}
