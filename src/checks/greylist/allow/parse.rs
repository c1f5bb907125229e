//! The entries of the allow files, one line at a time: pure parsing, no lookups.

use std::net::IpAddr;

use ipnet::IpNet;
use regex::RegexBuilder;

use super::REGEX_SIZE_LIMIT;

/// One line of a client file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEntry {
    /// An address (as a host network) or a network, host bits cleared.
    Net(IpNet),
    /// A domain: the verified name equal to it or below it. Lowercase, no trailing dot.
    Name(String),
    /// A regex searched in the verified name.
    Regex(String),
}

/// One line of a sender or recipient file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressEntry {
    /// `user@example.com`, lowercase.
    Address(String),
    /// `example.com`: the domain and its subdomains.
    Domain(String),
    /// `user@`: the local part at any domain (stored without the `@`).
    LocalPart(String),
    /// `@example.com`: exactly that domain (stored without the `@`).
    ExactDomain(String),
    /// `/regex/`, searched in the whole address.
    Regex(String),
}

/// The entry of a line: the text before a comment, trimmed; `None` for a blank or comment line.
pub fn line_entry(line: &str) -> Option<&str> {
    let bytes = line.as_bytes();
    let cut = (0..bytes.len())
        .find(|&i| bytes[i] == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()))
        .unwrap_or(bytes.len());
    let entry = line[..cut].trim();
    (!entry.is_empty()).then_some(entry)
}

/// `/pattern/` → the pattern, checked to compile.
fn parse_regex(entry: &str) -> Result<Option<String>, String> {
    if !entry.starts_with('/') {
        return Ok(None);
    }
    let pattern = entry
        .strip_prefix('/')
        .and_then(|r| r.strip_suffix('/'))
        .filter(|p| !p.is_empty())
        .ok_or_else(|| format!("`{entry}`: a regex is written /pattern/"))?;
    RegexBuilder::new(pattern)
        .case_insensitive(true)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("invalid regex /{pattern}/: {e}"))?;
    Ok(Some(pattern.to_owned()))
}

fn one_word(entry: &str) -> Result<(), String> {
    match entry.split_whitespace().nth(1) {
        Some(extra) => Err(format!(
            "one entry per line: `{extra}` follows `{}` (a comment starts with ` #`)",
            entry.split_whitespace().next().unwrap_or_default()
        )),
        None => Ok(()),
    }
}

/// A domain name, lowercase without its trailing dot; refuses what cannot be one.
fn parse_domain(text: &str) -> Result<String, String> {
    if text.starts_with('.') {
        return Err(format!(
            "`{text}`: write the domain without the leading dot (`{}` matches it and its subdomains)",
            text.trim_start_matches('.')
        ));
    }
    let name = text.strip_suffix('.').unwrap_or(text).to_lowercase();
    let labels_ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
        });
    if !labels_ok {
        return Err(format!("`{text}`: not a domain name"));
    }
    if name
        .split('.')
        .all(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!(
            "`{text}`: a partial IP address; write a network such as 192.0.2.0/24"
        ));
    }
    Ok(name)
}

/// Parses one entry of a client file.
pub fn parse_client_entry(entry: &str) -> Result<ClientEntry, String> {
    if let Some(pattern) = parse_regex(entry)? {
        return Ok(ClientEntry::Regex(pattern));
    }
    one_word(entry)?;
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Ok(ClientEntry::Net(host_net(ip)));
    }
    if entry.contains('/') {
        let net: IpNet = entry
            .parse()
            .map_err(|_| format!("`{entry}`: not a network (192.0.2.0/24, 2001:db8::/32)"))?;
        return Ok(ClientEntry::Net(net.trunc()));
    }
    if entry.contains('@') {
        return Err(format!(
            "`{entry}`: an address; client files hold IP addresses, networks, host names and \
             /regexes/ (addresses go in allow_sender_files or allow_recipient_files)"
        ));
    }
    if entry.contains(':') {
        return Err(format!("`{entry}`: not an IP address"));
    }
    parse_domain(entry).map(ClientEntry::Name)
}

/// Parses one entry of a sender or recipient file.
pub fn parse_address_entry(entry: &str) -> Result<AddressEntry, String> {
    if let Some(pattern) = parse_regex(entry)? {
        return Ok(AddressEntry::Regex(pattern));
    }
    one_word(entry)?;
    let entry = entry
        .strip_prefix('<')
        .and_then(|e| e.strip_suffix('>'))
        .unwrap_or(entry);
    let Some((local, domain)) = entry.rsplit_once('@') else {
        return parse_domain(entry).map(AddressEntry::Domain);
    };
    match (local.is_empty(), domain.is_empty()) {
        (true, true) => Err("`@`: neither a local part nor a domain".into()),
        (false, true) => Ok(AddressEntry::LocalPart(local.to_lowercase())),
        (true, false) => parse_domain(domain).map(AddressEntry::ExactDomain),
        (false, false) => {
            let domain = parse_domain(domain)?;
            Ok(AddressEntry::Address(format!(
                "{}@{domain}",
                local.to_lowercase()
            )))
        }
    }
}

/// An address as a host network; an IPv4-mapped IPv6 address as the IPv4 address.
fn host_net(ip: IpAddr) -> IpNet {
    IpNet::from(canonical(ip))
}

pub(super) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}
