//! Greylist keys: the client part (network or sender pool), sender and recipient
//! normalisation, and optional hashing. The rules are listed in docs/greylisting.md; keep the
//! two in step.

use std::net::IpAddr;
use std::sync::LazyLock;

use ipnet::IpNet;
use regex::Regex;
use sha2::{Digest, Sha256};

use crate::config::GreylistConfig;

/// Prefix of triplet keys.
pub const TRIPLET_PREFIX: &str = "t:";
/// Prefix of client autowhitelist keys.
pub const CLIENT_PREFIX: &str = "c:";
/// Prefix of the client part when it is a sender pool (FCrDNS-verified rDNS domain).
pub const POOL_PREFIX: &str = "pool:";
/// The normalised null sender.
pub const NULL_SENDER: &str = "<>";

/// The client part of the keys: `pool:<domain>` when `cfg.pool_by_rdns` and the client has a
/// forward-confirmed name (see [`pool_domain`]), else the client network (`192.0.2.0/24`,
/// `2001:db8:1:2::/64`; an IPv4-mapped IPv6 address counts as IPv4).
///
/// `verified_name` must be a name that passed FCrDNS (`RdnsResult::verified_name`), never a
/// bare PTR name: anyone can publish a PTR record ending in `outbound.protection.outlook.com`,
/// but only the owner of that zone can make it resolve back to the address. Callers should
/// also pass `None` for names that look dynamic (`RdnsResult::dynamic`): a whole ISP's
/// dial-up pool is forward-confirmed too, and must not share one key.
pub fn client_part(cfg: &GreylistConfig, client_ip: IpAddr, verified_name: Option<&str>) -> String {
    if cfg.pool_by_rdns {
        if let Some(domain) = verified_name.and_then(pool_domain) {
            return format!("{POOL_PREFIX}{domain}");
        }
    }
    network(client_ip, cfg.ipv4_prefix, cfg.ipv6_prefix).to_string()
}

/// The network of `ip` for the given prefix lengths (IPv4-mapped IPv6 as IPv4).
pub fn network(ip: IpAddr, ipv4_prefix: u8, ipv6_prefix: u8) -> IpNet {
    let ip = match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    let prefix = match ip {
        IpAddr::V4(_) => ipv4_prefix.min(32),
        IpAddr::V6(_) => ipv6_prefix.min(128),
    };
    #[allow(
        clippy::expect_used,
        reason = "`new` fails only for a prefix longer than the address; clamped above"
    )]
    let net = IpNet::new(ip, prefix).expect("prefix clamped");
    net.trunc()
}

/// Second-level labels that, under a two-letter country TLD, are public suffixes
/// (`co.uk`, `com.au`, `ne.jp`, ...). A small stand-in for the Public Suffix List: it only
/// has to stop [`pool_domain`] from pooling unrelated owners under a registry suffix.
const SUFFIX_SECOND_LEVELS: &[&str] = &[
    "ac", "co", "com", "edu", "go", "gob", "gov", "gv", "ltd", "mil", "ne", "net", "nic", "nom",
    "or", "org", "plc", "sch",
];

/// The sender pool a forward-confirmed host name belongs to: the name without its first
/// label when it has at least three labels (`mail-eopbgr10051.outbound.protection.outlook.com`
/// → `outbound.protection.outlook.com`, `a10-219.smtp-out.amazonses.com` →
/// `smtp-out.amazonses.com`), else the name itself. The name itself is also kept when
/// stripping would leave a public-suffix-like pair such as `co.uk` (`example.co.uk` stays
/// `example.co.uk`). Lowercased, trailing dot removed; `None` for an empty name.
pub fn pool_domain(name: &str) -> Option<String> {
    let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
    if name.is_empty() {
        return None;
    }
    let labels: Vec<&str> = name.split('.').collect();
    if labels.len() < 3 || labels.iter().any(|l| l.is_empty()) {
        return Some(name);
    }
    let rest = &labels[1..];
    if rest.len() == 2 && rest[1].len() == 2 && SUFFIX_SECOND_LEVELS.contains(&rest[0]) {
        return Some(name);
    }
    Some(rest.join("."))
}

/// Strips `<...>`, surrounding blanks and an RFC 5321 source route (`@a,@b:user@d`).
fn bare(addr: &str) -> &str {
    let a = addr.trim();
    let a = a
        .strip_prefix('<')
        .and_then(|x| x.strip_suffix('>'))
        .unwrap_or(a)
        .trim();
    if a.starts_with('@') {
        if let Some((_, rest)) = a.split_once(':') {
            return rest;
        }
    }
    a
}

/// Splits at the last `@`; the domain lowercased without a trailing dot.
fn split(addr: &str) -> (String, Option<String>) {
    match addr.rsplit_once('@') {
        Some((l, d)) => (
            l.to_lowercase(),
            Some(d.trim_end_matches('.').to_ascii_lowercase()),
        ),
        None => (addr.to_lowercase(), None),
    }
}

fn join(local: &str, domain: Option<&str>) -> String {
    match domain {
        Some(d) => format!("{local}@{d}"),
        None => local.to_owned(),
    }
}

/// The envelope sender as used in a key. Rules, in order (docs/greylisting.md lists them):
///
/// 1. `<...>`, blanks and a source route are removed; an empty sender is the null sender
///    [`NULL_SENDER`] (`<>`): bounces are keyed by client and recipient only.
/// 2. The whole address is lowercased: the domain is case-insensitive, and although a local
///    part is case-sensitive in theory, no real mailbox differs from another only by case
///    (lowercasing can only merge keys, never split a sender's retries).
/// 3. Repeated until nothing changes (BATV and SRS nest):
///    * BATV: `prvs=TAG=user`, `msprvs1=TAG=user`, `btv1==TAG==user` → `user`;
///    * SRS: `SRS0=HHH=TT=domain=user@forwarder` → `user@domain`;
///      `SRS1=HHH=forwarder==HHH=TT=domain=user@forwarder2` → `user@domain`.
/// 4. VERP/sub-address: everything from the first `+` of the local part (`user+tag`,
///    `bounces+1234-abcd=example.org`).
/// 5. Per-message tokens in the local part become `#`: UUIDs; then, splitting the local part
///    at `-`, `_`, `.`, `=`, every token that is all digits (`bounces-12345`), hex of at least
///    8 characters with a digit, base32 (`a-z2-7`) of at least 8 characters with a digit, or
///    16+ letters and digits with a digit; and a run of 5+ digits ending a token
///    (`bounce123456` → `bounce#`).
///
/// So MailChimp's `bounce-md_10612303.5adf1f70.v1-0f662aa357fe4841870c6a233ce23b66@...`
/// becomes `bounce-md_#.#.v1-#@...` for every message, and Amazon SES's
/// `01000156e5986888-b6a0e7cf-dc11-4c3c-be7b-06d369aed7a1-000000@...` becomes `#-#-#@...`.
pub fn normalize_sender(sender: &str) -> String {
    let a = bare(sender);
    if a.is_empty() || a == "<>" {
        return NULL_SENDER.to_owned();
    }
    let (mut local, mut domain) = split(a);
    for _ in 0..4 {
        let before = (local.clone(), domain.clone());
        if let Some(user) = strip_batv(&local) {
            local = user;
        }
        if let Some((user, d)) = strip_srs(&local) {
            // SRS carries a full address: its user part may itself carry a domain-less tag.
            local = user;
            domain = Some(d);
        }
        if before == (local.clone(), domain.clone()) {
            break;
        }
    }
    if let Some((head, _)) = local.split_once('+') {
        if !head.is_empty() {
            local = head.to_owned();
        }
    }
    let local = mask_tokens(&local);
    join(&local, domain.as_deref())
}

/// The recipient as used in a key: `<>` and blanks removed, lowercased, `+detail` removed.
pub fn normalize_rcpt(rcpt: &str) -> String {
    let (mut local, domain) = split(bare(rcpt));
    if let Some((head, _)) = local.split_once('+') {
        if !head.is_empty() {
            local = head.to_owned();
        }
    }
    join(&local, domain.as_deref())
}

/// BATV (`prvs=TAG=user`, also `msprvs1=`, `btv1==TAG==user`): the user part, lowercased
/// input.
fn strip_batv(local: &str) -> Option<String> {
    let rest = ["prvs=", "msprvs1=", "btv1="]
        .iter()
        .find_map(|p| local.strip_prefix(p))?;
    let rest = rest.trim_start_matches('=');
    let (_tag, user) = rest.split_once('=')?;
    let user = user.trim_start_matches('=');
    (!user.is_empty()).then(|| user.to_owned())
}

/// SRS0/SRS1 (lowercased input): the original `(user, domain)`.
fn strip_srs(local: &str) -> Option<(String, String)> {
    let sep = |s: &str| {
        s.strip_prefix('=')
            .or_else(|| s.strip_prefix('+'))
            .or_else(|| s.strip_prefix('-'))
            .map(str::to_owned)
    };
    let srs0_body = |body: &str| -> Option<(String, String)> {
        // HHH=TT=domain=user
        let mut it = body.splitn(4, '=');
        let (_hash, _ts, domain, user) = (it.next()?, it.next()?, it.next()?, it.next()?);
        (!domain.is_empty() && !user.is_empty()).then(|| (user.to_owned(), domain.to_owned()))
    };
    if let Some(rest) = local.strip_prefix("srs0") {
        return srs0_body(&sep(rest)?);
    }
    if let Some(rest) = local.strip_prefix("srs1") {
        // HHH=forwarder==HHH=TT=domain=user
        let rest = sep(rest)?;
        let mut it = rest.splitn(3, '=');
        let (_hash, _fwd, srs0) = (it.next()?, it.next()?, it.next()?);
        return srs0_body(&sep(srs0)?);
    }
    None
}

#[allow(
    clippy::expect_used,
    reason = "a constant, valid pattern (tests::sender_normalisation runs it)"
)]
static UUID: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new("[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}").expect("valid")
});

/// True for a token that changes from message to message (see [`normalize_sender`], rule 5).
fn is_volatile(t: &str) -> bool {
    let has_digit = t.bytes().any(|b| b.is_ascii_digit());
    if t.is_empty() || !has_digit {
        return false;
    }
    let all = |f: fn(u8) -> bool| t.bytes().all(f);
    all(|b| b.is_ascii_digit())
        || (t.len() >= 8 && all(|b| b.is_ascii_hexdigit()))
        || (t.len() >= 8 && all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b)))
        || (t.len() >= 16 && all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
}

/// Rule 5 of [`normalize_sender`].
fn mask_tokens(local: &str) -> String {
    if local.starts_with('"') {
        return local.to_owned();
    }
    let local = UUID.replace_all(local, "#");
    let mut out = String::with_capacity(local.len());
    let mut token = String::new();
    let flush = |token: &mut String, out: &mut String| {
        if is_volatile(token) {
            out.push('#');
        } else {
            let digits = token.bytes().rev().take_while(u8::is_ascii_digit).count();
            if digits >= 5 {
                out.push_str(&token[..token.len() - digits]);
                out.push('#');
            } else {
                out.push_str(token);
            }
        }
        token.clear();
    };
    for c in local.chars() {
        if matches!(c, '-' | '_' | '.' | '=') {
            flush(&mut token, &mut out);
            out.push(c);
        } else {
            token.push(c);
        }
    }
    flush(&mut token, &mut out);
    out
}

/// The readable triplet key: `t:<client>|<sender>|<rcpt>` (addresses normalised).
pub fn triplet_plain(client: &str, sender: &str, rcpt: &str) -> String {
    format!(
        "{TRIPLET_PREFIX}{client}|{}|{}",
        normalize_sender(sender),
        normalize_rcpt(rcpt)
    )
}

/// The readable client key: `c:<client>`.
pub fn client_plain(client: &str) -> String {
    format!("{CLIENT_PREFIX}{client}")
}

/// The key as stored: `plain` itself, or with `hash` its prefix (`t:`/`c:`) followed by the
/// first 128 bits of SHA-256 of the whole plain key in hex (32 characters). Hashing is
/// pseudonymisation, not encryption: an address can be confirmed by hashing a guess.
pub fn store_key(plain: &str, hash: bool) -> String {
    if !hash {
        return plain.to_owned();
    }
    let prefix = if plain.starts_with(CLIENT_PREFIX) {
        CLIENT_PREFIX
    } else {
        TRIPLET_PREFIX
    };
    let digest = Sha256::digest(plain.as_bytes());
    let mut out = String::with_capacity(prefix.len() + 32);
    out.push_str(prefix);
    for b in &digest[..16] {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The store key of a triplet (hashed when `greylist.hash_keys`). For `mxsentry greylist
/// add|del` and anything else that must find the entry a session would use.
pub fn triplet_key(
    cfg: &GreylistConfig,
    client_ip: IpAddr,
    verified_name: Option<&str>,
    sender: &str,
    rcpt: &str,
) -> String {
    let client = client_part(cfg, client_ip, verified_name);
    store_key(&triplet_plain(&client, sender, rcpt), cfg.hash_keys)
}

/// The store key of a client's autowhitelist entry (hashed when `greylist.hash_keys`).
pub fn client_key(cfg: &GreylistConfig, client_ip: IpAddr, verified_name: Option<&str>) -> String {
    let client = client_part(cfg, client_ip, verified_name);
    store_key(&client_plain(&client), cfg.hash_keys)
}
