//! HELO/EHLO checks: the name a client gives for itself.
//!
//! [`check`] is pure: it looks only at the HELO argument, the client address and our own names
//! and addresses. It reports the first problem found, in this order:
//!
//! 1. [`HeloProblem::Empty`]: nothing (or only blanks) after HELO.
//! 2. Address literals `[192.0.2.1]` / `[IPv6:2001:db8::1]` (RFC 5321 4.1.3):
//!    malformed → [`HeloProblem::InvalidSyntax`]; one of `milter.local_addresses` (or a
//!    loopback address claimed by a client that is not that address) →
//!    [`HeloProblem::OurAddress`]; not the client's address → [`HeloProblem::LiteralMismatch`].
//!    An IPv4-mapped IPv6 address (`::ffff:192.0.2.1`) equals its IPv4 address on both sides.
//!    A literal that is the client's own address is fine (RFC 5321 says a client without a
//!    name should send exactly that).
//! 3. A bare address without brackets (`HELO 192.0.2.1`, `HELO 2001:db8::1`): one of ours →
//!    [`HeloProblem::OurAddress`], else [`HeloProblem::BareIp`].
//! 4. Syntax ([`HeloProblem::InvalidSyntax`]): characters other than letters, digits, `-`, `_`
//!    and `.`; an empty label (`a..b`, `.a`); a label that starts or ends with `-`; a label
//!    longer than 63 or a name longer than 253 characters; an all-numeric name that is not an
//!    address (`1.2.3`, `300.1.1.1`). One trailing dot is ignored.
//!
//!    Underscores are **tolerated**: Windows and appliance MTAs send NetBIOS-style names such as
//!    `MAIL_SRV01.corp.example`, and Postfix's `valid_hostname()` accepts `_` for the same
//!    reason ("grr.."), so refusing it would bounce real mail for no gain.
//! 5. [`HeloProblem::OurName`]: `milter.hostname` or one of `milter.local_names`
//!    (case-insensitive, a trailing dot ignored).
//! 6. [`HeloProblem::Unqualified`]: no dot inside the name (`LIILXQMAIL01`), and the
//!    placeholder names `localhost`, `localhost.localdomain`, `*.localhost`, `*.localdomain`
//!    (RFC 6761 reserved or distribution defaults: they name nobody on the Internet).
//!
//! Trusted networks and authenticated clients are bypassed by the policy, not here.
//!
//! [`resolves`] is the optional `helo.check_resolves` test (does the name have an A/AAAA).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::checks::Finding;
use crate::config::MilterConfig;
use crate::dns::{Dns, DnsError};

/// What is wrong with a HELO argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeloProblem {
    /// No dot inside the name (or a placeholder such as `localhost`).
    Unqualified,
    /// Our own host name or one of our local names.
    OurName,
    /// An address literal (or bare address) that is one of ours.
    OurAddress,
    /// An address literal that is not the client's address.
    LiteralMismatch,
    /// Not a syntactically valid host name or address literal.
    InvalidSyntax,
    /// An IP address without the brackets RFC 5321 requires.
    BareIp,
    /// An empty HELO argument.
    Empty,
}

impl HeloProblem {
    /// The stable word used as the finding's outcome, in logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            HeloProblem::Unqualified => "unqualified",
            HeloProblem::OurName => "our_name",
            HeloProblem::OurAddress => "our_address",
            HeloProblem::LiteralMismatch => "literal_mismatch",
            HeloProblem::InvalidSyntax => "invalid_syntax",
            HeloProblem::BareIp => "bare_ip",
            HeloProblem::Empty => "empty",
        }
    }

    /// A human explanation for `explain` and the logs.
    pub fn describe(&self) -> &'static str {
        match self {
            HeloProblem::Unqualified => "not a fully qualified domain name",
            HeloProblem::OurName => "claims to be our own host name",
            HeloProblem::OurAddress => "claims to be one of our own addresses",
            HeloProblem::LiteralMismatch => "address literal is not the client's address",
            HeloProblem::InvalidSyntax => "invalid host name or address literal syntax",
            HeloProblem::BareIp => "IP address without [brackets]",
            HeloProblem::Empty => "empty HELO",
        }
    }
}

impl std::fmt::Display for HeloProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

const MAX_NAME: usize = 253;
const MAX_LABEL: usize = 63;

/// Classifies a HELO argument; `None` means no problem was found. Pure (no DNS).
pub fn check(helo: &str, client_ip: Option<IpAddr>, milter: &MilterConfig) -> Option<HeloProblem> {
    let helo = helo.trim();
    if helo.is_empty() {
        return Some(HeloProblem::Empty);
    }

    if let Some(inner) = helo.strip_prefix('[') {
        let Some(literal) = inner.strip_suffix(']').and_then(parse_literal) else {
            return Some(HeloProblem::InvalidSyntax);
        };
        return check_address(literal, client_ip, milter, true);
    }

    if let Some(ip) = parse_bare_ip(helo) {
        return check_address(ip, client_ip, milter, false);
    }

    let name = helo.strip_suffix('.').unwrap_or(helo);
    if !valid_host_name(name) {
        return Some(HeloProblem::InvalidSyntax);
    }
    if milter.is_local_name(name) {
        return Some(HeloProblem::OurName);
    }
    if !name.contains('.') || is_placeholder_name(name) {
        return Some(HeloProblem::Unqualified);
    }
    None
}

/// The address inside `[...]`: `192.0.2.1` or `IPv6:2001:db8::1` (tag case-insensitive).
fn parse_literal(inner: &str) -> Option<IpAddr> {
    // `get`: the HELO comes from the client and byte 5 may fall inside a character.
    if let Some(v6) = inner
        .get(..5)
        .filter(|tag| tag.eq_ignore_ascii_case("ipv6:"))
        .map(|_| &inner[5..])
    {
        return v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    // `std` accepts only strict dotted quads (no octal, no leading zeros, four parts).
    inner.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

/// A HELO argument that is an address without brackets (IPv4 dotted quad or IPv6).
fn parse_bare_ip(helo: &str) -> Option<IpAddr> {
    let s = helo.strip_prefix("IPv6:").unwrap_or(helo);
    s.parse::<IpAddr>().ok()
}

fn check_address(
    claimed: IpAddr,
    client_ip: Option<IpAddr>,
    milter: &MilterConfig,
    bracketed: bool,
) -> Option<HeloProblem> {
    let claimed = claimed.to_canonical();
    let client = client_ip.map(|ip| ip.to_canonical());
    let ours = milter
        .local_addresses
        .iter()
        .any(|a| a.to_canonical() == claimed);
    // A loopback (or unspecified) address names this machine: like sendmail's `[127.0.0.1]`
    // in $=w. Only the client that really is that address may claim it.
    let localish = claimed.is_loopback() || claimed.is_unspecified();
    if client == Some(claimed) {
        return (!bracketed).then_some(HeloProblem::BareIp);
    }
    if ours || localish {
        return Some(HeloProblem::OurAddress);
    }
    if !bracketed {
        return Some(HeloProblem::BareIp);
    }
    // Without a client address (e.g. `sendmail -bs`) a literal cannot be compared.
    client.map(|_| HeloProblem::LiteralMismatch)
}

/// Host name syntax (see the module docs). `name` has no trailing dot.
pub(crate) fn valid_host_name(name: &str) -> bool {
    if name.is_empty() || name.len() > MAX_NAME {
        return false;
    }
    let mut all_numeric = true;
    for label in name.split('.') {
        if label.is_empty() || label.len() > MAX_LABEL {
            return false;
        }
        if label.starts_with('-') || label.ends_with('-') {
            return false;
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return false;
        }
        if !label.bytes().all(|b| b.is_ascii_digit()) {
            all_numeric = false;
        }
    }
    !all_numeric
}

/// `localhost`, `localhost.localdomain` and names under `.localhost` / `.localdomain`.
fn is_placeholder_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower == "localhost"
        || lower == "localdomain"
        || lower.ends_with(".localhost")
        || lower.ends_with(".localdomain")
}

/// Whether the HELO name has an address in DNS (`helo.check_resolves`).
#[derive(Debug, Clone, PartialEq)]
pub enum HeloResolve {
    /// The name has at least one A/AAAA record (or is an address literal: nothing to resolve).
    Resolves,
    /// The name does not exist or has no A/AAAA records (NXDOMAIN or NODATA).
    NxDomain,
    /// The lookup failed temporarily (timeout, SERVFAIL, ...): never a reason for a 5xx.
    Temp(DnsError),
}

impl HeloResolve {
    /// The stable word used as the finding's outcome.
    pub fn as_str(&self) -> &'static str {
        match self {
            HeloResolve::Resolves => "resolves",
            HeloResolve::NxDomain => "unresolvable",
            HeloResolve::Temp(_) => "temp",
        }
    }

    /// True for a temporary DNS failure.
    pub fn is_temporary(&self) -> bool {
        matches!(self, HeloResolve::Temp(_))
    }
}

/// Looks up the HELO name's A/AAAA records. Address literals and bare addresses are not
/// looked up ([`HeloResolve::Resolves`]); call this only for a HELO that [`check`] accepted.
pub async fn resolves(dns: &Dns, helo: &str) -> HeloResolve {
    let helo = helo.trim();
    if helo.starts_with('[') || parse_bare_ip(helo).is_some() {
        return HeloResolve::Resolves;
    }
    let name = helo.strip_suffix('.').unwrap_or(helo);
    match dns.ips(name).await {
        Ok(ips) if !ips.is_empty() => HeloResolve::Resolves,
        Ok(_) => HeloResolve::NxDomain,
        Err(e) if e.is_negative() => HeloResolve::NxDomain,
        Err(e) => HeloResolve::Temp(e),
    }
}

/// The HELO check's result for one session, for the policy and `explain`.
#[derive(Debug, Clone, PartialEq)]
pub struct HeloResult {
    /// The HELO argument as given.
    pub helo: String,
    /// The syntax/identity problem, if any ([`check`]).
    pub problem: Option<HeloProblem>,
    /// The DNS test, when `helo.check_resolves` asked for it.
    pub resolve: Option<HeloResolve>,
}

impl HeloResult {
    /// Runs [`check`] (no DNS).
    pub fn new(helo: &str, client_ip: Option<IpAddr>, milter: &MilterConfig) -> HeloResult {
        HeloResult {
            helo: helo.to_string(),
            problem: check(helo, client_ip, milter),
            resolve: None,
        }
    }

    /// Runs [`check`] and, when it passed and `check_resolves` is set, [`resolves`].
    pub async fn evaluate(
        dns: &Dns,
        helo: &str,
        client_ip: Option<IpAddr>,
        milter: &MilterConfig,
        check_resolves: bool,
    ) -> HeloResult {
        let mut result = HeloResult::new(helo, client_ip, milter);
        if check_resolves && result.problem.is_none() {
            result.resolve = Some(resolves(dns, helo).await);
        }
        result
    }

    /// Findings, check name `helo`. Outcomes: a [`HeloProblem::as_str`] word; `unresolvable`
    /// or `temp` from the DNS test; `ok` when nothing was wrong.
    pub fn findings(&self) -> Vec<Finding> {
        let shown = shown(&self.helo);
        let mut out = Vec::new();
        if let Some(p) = self.problem {
            out.push(Finding {
                check: "helo",
                outcome: p.as_str().into(),
                detail: format!("HELO {shown}: {}", p.describe()),
                ..Default::default()
            });
        }
        match &self.resolve {
            Some(HeloResolve::NxDomain) => out.push(Finding {
                check: "helo",
                outcome: "unresolvable".into(),
                detail: format!("HELO {shown}: no A/AAAA record (NXDOMAIN or NODATA)"),
                ..Default::default()
            }),
            Some(HeloResolve::Temp(e)) => out.push(Finding {
                check: "helo",
                outcome: "temp".into(),
                detail: format!("HELO {shown}: A/AAAA lookup failed temporarily: {e}"),
                ..Default::default()
            }),
            Some(HeloResolve::Resolves) | None => {}
        }
        if out.is_empty() {
            let how = if self.resolve.is_some() {
                " (resolves)"
            } else {
                ""
            };
            out.push(Finding {
                check: "helo",
                outcome: "ok".into(),
                detail: format!("HELO {shown}{how}"),
                ..Default::default()
            });
        }
        out
    }
}

/// The HELO argument quoted for logs: control characters escaped, at most 100 characters.
fn shown(helo: &str) -> String {
    let mut s: String = helo.chars().take(100).collect();
    if helo.chars().count() > 100 {
        s.push_str("...");
    }
    format!("{s:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn milter() -> MilterConfig {
        MilterConfig {
            hostname: "mx.example.org".into(),
            local_names: vec!["example.org".into(), "mail.example.org".into()],
            local_addresses: vec![
                "198.51.100.25".parse().unwrap(),
                "2001:db8::25".parse().unwrap(),
            ],
            ..MilterConfig::default()
        }
    }

    fn chk(helo: &str, client: &str) -> Option<HeloProblem> {
        check(helo, Some(client.parse().unwrap()), &milter())
    }

    const CLIENT: &str = "192.0.2.10";

    #[test]
    fn good_names_pass() {
        for h in [
            "mail.example.com",
            "MAIL.Example.COM",
            "mail.example.com.",
            "a10-219.smtp-out.amazonses.com",
            "mail-eopbgr10051.outbound.protection.outlook.com",
            "MAIL_SRV01.corp.example",
            "xn--bcher-kva.example",
            "1and1.example",
            "  mx1.example.net  ",
        ] {
            assert_eq!(chk(h, CLIENT), None, "{h}");
        }
    }

    #[test]
    fn empty() {
        assert_eq!(chk("", CLIENT), Some(HeloProblem::Empty));
        assert_eq!(chk("   ", CLIENT), Some(HeloProblem::Empty));
    }

    #[test]
    fn unqualified() {
        for h in [
            "LIILXQMAIL01",
            "localhost",
            "localhost.",
            "LocalHost.localdomain",
            "box.localdomain",
            "foo.localhost",
            "exchange",
            "win_pc01",
        ] {
            assert_eq!(chk(h, CLIENT), Some(HeloProblem::Unqualified), "{h}");
        }
    }

    #[test]
    fn our_names() {
        for h in [
            "mx.example.org",
            "MX.EXAMPLE.ORG",
            "mx.example.org.",
            "example.org",
            "Mail.Example.Org",
        ] {
            assert_eq!(chk(h, CLIENT), Some(HeloProblem::OurName), "{h}");
        }
        assert_eq!(chk("other.example.org", CLIENT), None);
    }

    #[test]
    fn literals() {
        assert_eq!(chk("[192.0.2.10]", CLIENT), None);
        assert_eq!(
            chk("[192.0.2.11]", CLIENT),
            Some(HeloProblem::LiteralMismatch)
        );
        assert_eq!(
            chk("[198.51.100.25]", CLIENT),
            Some(HeloProblem::OurAddress)
        );
        assert_eq!(chk("[127.0.0.1]", CLIENT), Some(HeloProblem::OurAddress));
        assert_eq!(chk("[IPv6:::1]", CLIENT), Some(HeloProblem::OurAddress));
        assert_eq!(
            chk("[IPv6:2001:db8::25]", CLIENT),
            Some(HeloProblem::OurAddress)
        );
        assert_eq!(chk("[ipv6:2001:DB8::7]", "2001:db8::7"), None);
        assert_eq!(
            chk("[IPv6:2001:db8::8]", "2001:db8::7"),
            Some(HeloProblem::LiteralMismatch)
        );
        // IPv4-mapped equivalence, both ways.
        assert_eq!(chk("[IPv6:::ffff:192.0.2.10]", CLIENT), None);
        assert_eq!(chk("[192.0.2.10]", "::ffff:192.0.2.10"), None);
        assert_eq!(
            chk("[IPv6:::ffff:198.51.100.25]", CLIENT),
            Some(HeloProblem::OurAddress)
        );
        // A loopback client may call itself loopback.
        assert_eq!(chk("[127.0.0.1]", "127.0.0.1"), None);
        // Unknown client address: nothing to compare with.
        assert_eq!(check("[192.0.2.99]", None, &milter()), None);
        assert_eq!(
            check("[198.51.100.25]", None, &milter()),
            Some(HeloProblem::OurAddress)
        );
    }

    #[test]
    fn invalid_literals() {
        for h in [
            "[192.0.2]",
            "[192.0.2.256]",
            "[192.0.2.010]",
            "[192.0.2.10",
            "[]",
            "[IPv6:192.0.2.10]",
            "[2001:db8::1]",
            "[IPv6:2001:db8:::1]",
            "[x-tag:whatever]",
            "[192.0.2.10]x",
        ] {
            assert_eq!(chk(h, CLIENT), Some(HeloProblem::InvalidSyntax), "{h}");
        }
    }

    #[test]
    fn literal_with_a_multibyte_character_at_byte_5() {
        // Found by fuzz/fuzz_targets/dns_reply.rs: `inner[..5]` panicked inside `ć`, so any
        // SMTP client could crash the session with `EHLO [1234ć]`.
        for h in ["[1\u{fffd}\u{fffd}]", "[1234ć]", "[ipv6ć:1]", "[ipv6:ć]"] {
            assert_eq!(chk(h, CLIENT), Some(HeloProblem::InvalidSyntax), "{h}");
        }
    }

    #[test]
    fn bare_ips() {
        assert_eq!(chk("192.0.2.10", CLIENT), Some(HeloProblem::BareIp));
        assert_eq!(chk("192.0.2.99", CLIENT), Some(HeloProblem::BareIp));
        assert_eq!(chk("2001:db8::7", CLIENT), Some(HeloProblem::BareIp));
        assert_eq!(chk("198.51.100.25", CLIENT), Some(HeloProblem::OurAddress));
        assert_eq!(chk("127.0.0.1", CLIENT), Some(HeloProblem::OurAddress));
    }

    #[test]
    fn invalid_syntax() {
        let long_label = format!("{}.example", "a".repeat(64));
        let ok_label = format!("{}.example", "a".repeat(63));
        let long_name = format!("{}example", "abcdefghi.".repeat(25));
        for h in [
            "mail example.com",
            "mail.example.com!",
            "mail..example.com",
            ".example.com",
            "-mail.example.com",
            "mail-.example.com",
            "mail.-example.com",
            "mäil.example.com",
            "mail.exa\rmple.com",
            "1.2.3",
            "300.1.1.1",
            "mail@example.com",
            "mail.example.com..",
            long_label.as_str(),
            long_name.as_str(),
        ] {
            assert_eq!(chk(h, CLIENT), Some(HeloProblem::InvalidSyntax), "{h:?}");
        }
        assert_eq!(chk(&ok_label, CLIENT), None);
    }

    #[test]
    fn words_are_stable() {
        let all = [
            (HeloProblem::Unqualified, "unqualified"),
            (HeloProblem::OurName, "our_name"),
            (HeloProblem::OurAddress, "our_address"),
            (HeloProblem::LiteralMismatch, "literal_mismatch"),
            (HeloProblem::InvalidSyntax, "invalid_syntax"),
            (HeloProblem::BareIp, "bare_ip"),
            (HeloProblem::Empty, "empty"),
        ];
        for (p, w) in all {
            assert_eq!(p.as_str(), w);
        }
    }

    #[test]
    fn findings_carry_evidence() {
        let r = HeloResult::new("LIILXQMAIL01", Some(CLIENT.parse().unwrap()), &milter());
        let f = r.findings();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].check, "helo");
        assert_eq!(f[0].outcome, "unqualified");
        assert!(f[0].detail.contains("LIILXQMAIL01"), "{}", f[0].detail);

        let r = HeloResult::new("mail.example.com", None, &milter());
        assert_eq!(r.findings()[0].outcome, "ok");

        let r = HeloResult {
            helo: "gone.example".into(),
            problem: None,
            resolve: Some(HeloResolve::Temp(DnsError::ServFail)),
        };
        assert_eq!(r.findings()[0].outcome, "temp");
        // Control characters never reach the log line raw.
        let r = HeloResult::new("bad\r\nname", None, &milter());
        assert!(!r.findings()[0].detail.contains('\n'));
    }
}
