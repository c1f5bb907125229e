//! The rule files and DNS list sections `config import milter-greylist` produces from ACL
//! clauses: greylist-only allow lists for `racl whitelist`, sendmail access entries and sender
//! regexes for `racl blacklist`. Pure.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;

use super::conf::Token;
use super::conf_map::{toml_str, RuleFile};
use super::regex;

/// Names of the files written into `--out-dir`.
pub const CLIENTS: &str = "greylist-allow-clients";
pub const SENDERS: &str = "greylist-allow-senders";
pub const RECIPIENTS: &str = "greylist-allow-recipients";
pub const ACCESS: &str = "access";

/// One ACL clause that may map.
#[derive(Debug, Clone)]
pub enum Clause {
    Default,
    /// `addr`, `domain`, `from` or `rcpt` with its value.
    Item {
        kind: String,
        value: Token,
    },
    List(String),
    DnsRbl(String),
}

impl Clause {
    pub fn name(&self) -> String {
        match self {
            Clause::Default => "default".into(),
            Clause::Item { kind, .. } => kind.clone(),
            Clause::List(n) => format!("list \"{n}\""),
            Clause::DnsRbl(n) => format!("dnsrbl \"{n}\""),
        }
    }
}

/// What the ACL lines became, each entry with its source line.
#[derive(Default)]
pub struct Rules {
    clients: Vec<(String, usize)>,
    senders: Vec<(String, usize)>,
    recipients: Vec<(String, usize)>,
    access: Vec<(String, usize)>,
    /// Access keys already written (lowercase) and their line: the first match wins, as in
    /// milter-greylist's ACL; a second entry for a key would be refused by the access parser.
    access_keys: HashMap<String, usize>,
    /// `[[sender_rules.regex]]`: pattern, action, line.
    pub sender_regex: Vec<(String, String, usize)>,
    /// `[[dnsbl.zones]]` / `[[dnsbl.allow_zones]]`: the table name, its keys, the line.
    pub zones: Vec<(&'static str, String, usize)>,
}

/// A `racl whitelist` clause → an allow-list entry.
pub fn allow(
    r: &mut Rules,
    line: usize,
    kind: &str,
    value: &Token,
    extended: bool,
) -> Result<(), String> {
    allow_entry(r, line, kind, value, extended).map_err(|e| with_clause(kind, value, e))
}

fn with_clause(kind: &str, value: &Token, e: String) -> String {
    if e.starts_with(kind) {
        e
    } else {
        format!("{kind} {}: {e}", value.show())
    }
}

fn allow_entry(
    r: &mut Rules,
    line: usize,
    kind: &str,
    value: &Token,
    extended: bool,
) -> Result<(), String> {
    let entry = match (kind, value) {
        ("addr", Token::Word(w)) => network(w)?.to_string(),
        ("domain", Token::Word(w)) => domain_entry(w)?,
        ("domain", Token::Regex(re)) => regex_entry(&regex::translate(re, extended)?)?,
        ("from" | "rcpt", Token::Word(w)) => address(w)?,
        ("from" | "rcpt", Token::Regex(re)) => {
            regex_entry(&regex::unbracket(&regex::translate(re, extended)?)?)?
        }
        (kind, _) => {
            return Err(format!(
                "{kind} `{}`: no equivalent in the allow lists",
                value.show()
            ))
        }
    };
    let list = match kind {
        "addr" | "domain" => &mut r.clients,
        "from" => &mut r.senders,
        _ => &mut r.recipients,
    };
    list.push((entry, line));
    Ok(())
}

/// A `racl blacklist` clause → an access entry or a sender regex rule.
pub fn deny(
    r: &mut Rules,
    line: usize,
    kind: &str,
    value: &Token,
    action: &str,
    extended: bool,
) -> Result<(), String> {
    deny_entry(r, line, kind, value, action, extended).map_err(|e| with_clause(kind, value, e))
}

fn deny_entry(
    r: &mut Rules,
    line: usize,
    kind: &str,
    value: &Token,
    action: &str,
    extended: bool,
) -> Result<(), String> {
    let key = match (kind, value) {
        ("addr", Token::Word(w)) => {
            let net = network(w)?;
            match net {
                IpNet::V4(n) if n.prefix_len() == 32 => format!("Connect:{}", n.addr()),
                net => format!("Connect:{net}"),
            }
        }
        ("domain", Token::Word(w)) => {
            domain_entry(w).map_err(|e| format!("domain: {e}"))?;
            format!("Connect:{}", w.to_ascii_lowercase())
        }
        ("from", Token::Word(w)) => format!("From:{}", address(w)?),
        ("rcpt", Token::Word(w)) => format!("To:{}", address(w)?),
        ("from", Token::Regex(re)) => {
            let pattern = regex::unbracket(&regex::translate(re, extended)?)?;
            r.sender_regex.push((pattern, action.to_owned(), line));
            return Ok(());
        }
        ("domain" | "rcpt", Token::Regex(_)) => {
            return Err(format!(
                "{kind} /regex/ blacklist: mxsentry's regex rules match senders only"
            ))
        }
        (kind, _) => {
            return Err(format!(
                "{kind} `{}`: no equivalent in access rules",
                value.show()
            ))
        }
    };
    let lower = key.to_ascii_lowercase();
    if let Some(first) = r.access_keys.get(&lower) {
        return Err(format!(
            "`{key}` already mapped from line {first} (the first match wins)"
        ));
    }
    r.access_keys.insert(lower, line);
    r.access.push((format!("{key} {action}"), line));
    Ok(())
}

/// A `dnsrbl` used by a blacklist (`[[dnsbl.zones]]`) or a whitelist (`[[dnsbl.allow_zones]]`).
pub fn dns_zone(
    r: &mut Rules,
    line: usize,
    zone: &str,
    answer: &str,
    message: Option<String>,
    allow: bool,
) -> Result<(), String> {
    let zone = zone.trim_end_matches('.').to_ascii_lowercase();
    domain_entry(&zone).map_err(|e| format!("dnsrbl zone: {e}"))?;
    let code = match answer.parse::<IpNet>() {
        Ok(IpNet::V4(n)) if n.prefix_len() == 32 => n.addr().to_string(),
        Ok(IpNet::V4(n)) => format!("{}-{}", n.network(), n.broadcast()),
        _ => answer
            .parse::<std::net::Ipv4Addr>()
            .map_err(|_| format!("dnsrbl answer `{answer}`: not an IPv4 address or network"))?
            .to_string(),
    };
    let mut s = String::new();
    let table = if allow {
        "dnsbl.allow_zones"
    } else {
        "dnsbl.zones"
    };
    let _ = writeln!(
        s,
        "zone = {}\nreturncodes = [{}]",
        toml_str(&zone),
        toml_str(&code)
    );
    if let Some(m) = message {
        crate::checks::sender_rules::SmtpReply::parse(&m)
            .map_err(|e| format!("reply `{m}`: {e}"))?;
        let _ = writeln!(s, "message = {}", toml_str(&m.replace('%', "%%")));
    }
    r.zones.push((table, s, line));
    Ok(())
}

fn network(w: &str) -> Result<IpNet, String> {
    let w = w.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = w.split('%').next().unwrap_or(w).parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    w.parse::<IpNet>()
        .map(|n| n.trunc())
        .map_err(|_| format!("`{w}` is not an address or network"))
}

/// `example.net` (label boundaries; milter-greylist's plain suffix match also took
/// `badexample.net`: the mapping is narrower, never wider) or `.example.net` (subdomains only:
/// a regex).
fn domain_entry(w: &str) -> Result<String, String> {
    let name = w.trim_end_matches('.').to_ascii_lowercase();
    let (sub_only, name) = match name.strip_prefix('.') {
        Some(n) => (true, n.to_owned()),
        None => (false, name),
    };
    let ok = !name.is_empty()
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if !ok {
        return Err(format!("`{w}` is not a domain name"));
    }
    if sub_only {
        return Ok(format!("/\\.{}$/", name.replace('.', "\\.")));
    }
    Ok(name)
}

fn address(w: &str) -> Result<String, String> {
    let a = w
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_lowercase();
    match a.rsplit_once('@') {
        Some((l, d)) if !l.is_empty() && !d.is_empty() && !a.contains(char::is_whitespace) => Ok(a),
        _ => Err(format!("`{w}` is not an address")),
    }
}

/// `/pattern/` as the allow-list files take it (one line, no ` #`, which would start a comment).
fn regex_entry(pattern: &str) -> Result<String, String> {
    if pattern.contains(" #") || pattern.contains("\t#") || pattern.contains('\n') {
        return Err(format!(
            "regex `{pattern}` cannot be written on one allow-list line"
        ));
    }
    Ok(format!("/{pattern}/"))
}

/// The files with entries, each entry after a comment naming its source line.
pub fn files(r: &Rules, source: &str) -> Vec<RuleFile> {
    let make = |name: &'static str, what: &str, entries: &[(String, usize)]| {
        let mut content =
            format!("# {what}, from {source} by `mxsentry config import milter-greylist`.\n");
        for (entry, line) in entries {
            let _ = writeln!(content, "# {source}:{line}\n{entry}");
        }
        RuleFile { name, content }
    };
    let mut out = Vec::new();
    for (name, what, entries) in [
        (
            CLIENTS,
            "Clients that skip greylisting (racl whitelist addr/domain)",
            &r.clients,
        ),
        (
            SENDERS,
            "Senders that skip greylisting (racl whitelist from)",
            &r.senders,
        ),
        (
            RECIPIENTS,
            "Recipients that skip greylisting (racl whitelist rcpt)",
            &r.recipients,
        ),
        (
            ACCESS,
            "sendmail access entries (racl blacklist)",
            &r.access,
        ),
    ] {
        if !entries.is_empty() {
            out.push(make(name, what, entries));
        }
    }
    out
}
