//! postgrey's records, as its source (postgrey 1.37, `smtpd_access_policy`) writes them, and
//! what each becomes in mxsentry's store.
//!
//! `postgrey.db`: key `lc "$client_net/$sender/$recipient"`, value `"$first,$last"` (older
//! versions add `,$host`). `$client_net` is the client's network address for `--ipv4cidr`
//! (default 24) / `--ipv6cidr` (default 64), written in full (`192.0.2.0`,
//! `2001:db8:1:2:0:0:0:0`); with `--lookup-by-host` the host with its length
//! (`192.0.2.10/32`, `2001:db8:0:0:0:0:0:7/128`); postgrey before 1.35 wrote a /24 as three
//! octets (`192.0.2`). `$sender` is normalised (`do_sender_substitutions`): BATV `prvs=`
//! removed, everything from the first `+` of the local part removed, every digit run between
//! word boundaries replaced by `#`. The recipient is raw (lowercased). A triplet passed when
//! `last - first >= --delay`.
//!
//! `postgrey_clients.db`: key the client's address, value `"$count,$last"`: `count`
//! greylisting passes (one per hour counts); from `--auto-whitelist-clients` (default 5) on
//! the client skips greylisting.
//!
//! With `--privacy` both keys are SHA-1 hex digests: nothing can be mapped from them.

use std::net::{IpAddr, Ipv4Addr};

use crate::checks::greylist::keys;
use crate::config::GreylistConfig;
use crate::store::Entry;

/// postgrey's settings the import needs: its database does not record them. Defaults are
/// postgrey's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostgreySettings {
    /// `--delay` in seconds (default 300).
    pub delay: u64,
    /// `--auto-whitelist-clients` (default 5; 0: off).
    pub auto_whitelist_clients: u64,
    /// `--ipv4cidr` (default 24).
    pub ipv4cidr: u8,
    /// `--ipv6cidr` (default 64).
    pub ipv6cidr: u8,
}

impl Default for PostgreySettings {
    fn default() -> Self {
        PostgreySettings {
            delay: 300,
            auto_whitelist_clients: 5,
            ipv4cidr: 24,
            ipv6cidr: 64,
        }
    }
}

/// One `postgrey.db` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Triplet {
    /// The client network's address and prefix length as postgrey keyed it.
    pub net: IpAddr,
    pub prefix: u8,
    /// postgrey's normalised sender (empty: the null sender).
    pub sender: String,
    pub recipient: String,
    pub first: u64,
    pub last: u64,
}

impl Triplet {
    /// True when the triplet passed greylisting in postgrey.
    pub fn passed(&self, s: &PostgreySettings) -> bool {
        self.last.saturating_sub(self.first) >= s.delay
    }
}

/// One `postgrey_clients.db` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub ip: IpAddr,
    pub count: u64,
    pub last: u64,
}

fn text(bytes: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_owned())
}

/// A SHA-1 hex digest: what `--privacy` stores instead of the key.
fn is_hashed(key: &str) -> bool {
    key.len() == 40 && key.bytes().all(|b| b.is_ascii_hexdigit())
}

pub const HASHED: &str = "hashed by postgrey --privacy: the addresses cannot be recovered";

/// Parses a `postgrey.db` record; the error is the reason it is skipped.
pub fn parse_triplet(key: &[u8], value: &[u8], s: &PostgreySettings) -> Result<Triplet, String> {
    let key = text(key)?;
    if is_hashed(key) {
        return Err(HASHED.to_owned());
    }
    let (net, rest) = key
        .split_once('/')
        .ok_or("no '/' in the key (expected net/sender/recipient)")?;
    // `--lookup-by-host` writes the host with its length: `192.0.2.10/32/...`. A sender
    // cannot start with a digit run and '/': postgrey turns such a run into '#'.
    let (explicit_prefix, rest) = match rest.split_once('/') {
        Some((len, after)) if !len.is_empty() && len.bytes().all(|b| b.is_ascii_digit()) => {
            let len: u8 = len
                .parse()
                .map_err(|_| format!("bad prefix length {len:?}"))?;
            (Some(len), after)
        }
        _ => (None, rest),
    };
    let (ip, prefix) = parse_net(net, explicit_prefix, s)?;
    let mut parts = rest.split('/');
    let (Some(sender), Some(recipient), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err("a '/' in the sender or recipient makes the key ambiguous".to_owned());
    };
    let (first, last) = two_numbers(text(value)?)?;
    Ok(Triplet {
        net: ip,
        prefix,
        sender: sender.to_owned(),
        recipient: recipient.to_owned(),
        first,
        last,
    })
}

/// The network part of a key: `192.0.2.0` (`--ipv4cidr`), `192.0.2` (old postgrey, /24),
/// an IPv6 address (`--ipv6cidr`), or any of them with the explicit length of
/// `--lookup-by-host`.
fn parse_net(
    net: &str,
    explicit: Option<u8>,
    s: &PostgreySettings,
) -> Result<(IpAddr, u8), String> {
    let bad = || format!("{net:?} is not a network address");
    let octets: Vec<&str> = net.split('.').collect();
    let (ip, implied) = if octets.len() == 3 && !net.contains(':') {
        let mut b = [0u8; 4];
        for (i, o) in octets.iter().enumerate() {
            b[i] = o.parse().map_err(|_| bad())?;
        }
        (IpAddr::V4(Ipv4Addr::from(b)), 24)
    } else {
        let ip: IpAddr = net.parse().map_err(|_| bad())?;
        let implied = if ip.is_ipv4() { s.ipv4cidr } else { s.ipv6cidr };
        (ip, implied)
    };
    let prefix = explicit.unwrap_or(implied);
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(format!("prefix length /{prefix} is too long for {net}"));
    }
    Ok((ip, prefix))
}

/// `"A,B"` or `"A,B,anything"`: the two numbers.
fn two_numbers(value: &str) -> Result<(u64, u64), String> {
    let mut it = value.split(',');
    let number = |f: Option<&str>| f.and_then(|f| f.trim().parse::<u64>().ok());
    match (number(it.next()), number(it.next())) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => Err(format!("value {value:?} is not \"NUMBER,NUMBER\"")),
    }
}

/// Parses a `postgrey_clients.db` record; the error is the reason it is skipped.
pub fn parse_client(key: &[u8], value: &[u8]) -> Result<Client, String> {
    let key = text(key)?;
    if is_hashed(key) {
        return Err(HASHED.to_owned());
    }
    let ip: IpAddr = key
        .parse()
        .map_err(|_| format!("{key:?} is not an IP address"))?;
    let (count, last) = two_numbers(text(value)?)?;
    Ok(Client { ip, count, last })
}

/// What a record becomes in mxsentry: a key and an entry, or why it cannot.
#[derive(Debug, PartialEq, Eq)]
pub enum Mapped {
    Entry(String, Entry),
    Skip(String),
}

/// A `postgrey.db` triplet as mxsentry's entry, keyed by our rules (`keys::triplet_key`,
/// without a client name: postgrey never recorded one). A passed triplet becomes an
/// autowhitelisted one (`passed = 1`) that expires `greylist.autowhite` after postgrey last
/// saw it, as if mxsentry had accepted it then; a pending one keeps `first_seen` and expires
/// `greylist.retry_window` after it, as mxsentry's own.
pub fn map_triplet(t: &Triplet, s: &PostgreySettings, g: &GreylistConfig) -> Mapped {
    let ours = if t.net.is_ipv4() {
        g.ipv4_prefix
    } else {
        g.ipv6_prefix
    };
    if t.prefix < ours {
        return Mapped::Skip(format!(
            "postgrey's network /{} is wider than greylist.{}_prefix /{ours}: it stands for \
             several of mxsentry's networks",
            t.prefix,
            if t.net.is_ipv4() { "ipv4" } else { "ipv6" }
        ));
    }
    let key = keys::triplet_key(g, t.net, None, &t.sender, &t.recipient);
    let entry = if t.passed(s) {
        Entry {
            first_seen: t.first,
            last_seen: t.last,
            passed: 1,
            blocked: 1,
            expires: t.last.saturating_add(g.autowhite.as_secs()),
        }
    } else {
        Entry {
            first_seen: t.first,
            last_seen: t.last,
            passed: 0,
            blocked: 1,
            expires: t.first.saturating_add(g.retry_window.as_secs()),
        }
    };
    Mapped::Entry(key, entry)
}

/// A `postgrey_clients.db` client as mxsentry's client entry (`keys::client_key`): one that
/// reached `--auto-whitelist-clients` gets `greylist.client_autowhite_after` passes (so it
/// skips greylisting at once), expiring `greylist.autowhite` after postgrey last saw it.
/// Clients below the threshold are skipped: postgrey did not whitelist them either.
pub fn map_client(c: &Client, s: &PostgreySettings, g: &GreylistConfig) -> Mapped {
    if s.auto_whitelist_clients == 0 {
        return Mapped::Skip(
            "postgrey's client autowhitelist is off (--auto-whitelist-clients=0)".into(),
        );
    }
    if g.client_autowhite_after == 0 {
        return Mapped::Skip(
            "greylist.client_autowhite_after = 0: mxsentry does not autowhitelist clients".into(),
        );
    }
    if c.count < s.auto_whitelist_clients {
        return Mapped::Skip(format!(
            "fewer passes than --auto-whitelist-clients={}",
            s.auto_whitelist_clients
        ));
    }
    let key = keys::client_key(g, c.ip, None);
    Mapped::Entry(
        key,
        Entry {
            first_seen: c.last,
            last_seen: c.last,
            passed: g.client_autowhite_after,
            blocked: 0,
            expires: c.last.saturating_add(g.autowhite.as_secs()),
        },
    )
}

#[cfg(test)]
#[path = "records_tests.rs"]
mod tests;
