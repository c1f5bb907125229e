//! Value types and validators for single settings: DNSBL return codes, SMTP replies, DNS names,
//! networks, name servers.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;

use ipnet::IpNet;

/// Which DNSBL answers count as a listing.
///
/// Parsed from `"127.0.0.2"` (exact), `"127.0.0.2-127.0.0.11"` or Postfix's
/// `"127.0.0.[2..11]"` (inclusive range) and `"&4"` / `"&0x4"` (bitmask on the last octet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReturnCode {
    /// Exactly this answer.
    Exact(Ipv4Addr),
    /// Any answer from the first to the second address, both included.
    Range(Ipv4Addr, Ipv4Addr),
    /// Any answer in 127.0.0.0/8 (outside the 127.255.255.0/24 error codes) whose last octet
    /// has one of these bits set.
    Mask(u8),
}

impl ReturnCode {
    /// Whether the DNSBL answer `ip` is covered by this return code.
    pub fn matches(&self, ip: Ipv4Addr) -> bool {
        match *self {
            ReturnCode::Exact(a) => ip == a,
            ReturnCode::Range(a, b) => (u32::from(a)..=u32::from(b)).contains(&u32::from(ip)),
            ReturnCode::Mask(mask) => is_listing_answer(ip) && ip.octets()[3] & mask != 0,
        }
    }
}

/// The default listing test: an answer in 127.0.0.0/8 outside 127.255.255.0/24, the range
/// DNSBLs use for errors such as "query refused".
pub fn is_listing_answer(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    a == 127 && !(b == 255 && c == 255)
}

impl FromStr for ReturnCode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let text = s.trim();
        let err = |why: &str| format!("invalid return code {s:?}: {why}");
        let ip = |t: &str| {
            t.trim().parse::<Ipv4Addr>().map_err(|_| {
                err("expected an IPv4 address like \"127.0.0.2\", a range \
                     \"127.0.0.2-127.0.0.11\" or a bitmask \"&4\"")
            })
        };
        if let Some(mask) = text.strip_prefix('&') {
            let mask = mask.trim();
            let parsed = match mask.strip_prefix("0x").or_else(|| mask.strip_prefix("0X")) {
                Some(hex) => u8::from_str_radix(hex, 16),
                None => mask.parse::<u8>(),
            };
            return match parsed {
                Ok(0) => Err(err("a bitmask must have at least one bit set")),
                Ok(m) => Ok(ReturnCode::Mask(m)),
                Err(_) => Err(err("a bitmask must be a number from 1 to 255, e.g. \"&4\"")),
            };
        }
        let (start, end) = if let Some((prefix, bracket)) = text.split_once('[') {
            let range = bracket.strip_suffix(']').and_then(|r| r.split_once(".."));
            let Some((lo, hi)) = range else {
                return Err(err("expected a range like \"127.0.0.[2..11]\""));
            };
            (ip(&format!("{prefix}{lo}"))?, ip(&format!("{prefix}{hi}"))?)
        } else if let Some((a, b)) = text.split_once('-') {
            (ip(a)?, ip(b)?)
        } else {
            return Ok(ReturnCode::Exact(ip(text)?));
        };
        if start > end {
            return Err(err("the range starts after it ends"));
        }
        Ok(ReturnCode::Range(start, end))
    }
}

impl fmt::Display for ReturnCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReturnCode::Exact(a) => write!(f, "{a}"),
            ReturnCode::Range(a, b) => write!(f, "{a}-{b}"),
            ReturnCode::Mask(m) => write!(f, "&0x{m:x}"),
        }
    }
}

/// Checks an SMTP reply: a 4xx or 5xx code, a space, an optional enhanced status code whose
/// class matches, and some text, on one line. With `temporary_only`, only 4xx is accepted.
pub fn check_smtp_reply(s: &str, temporary_only: bool) -> Result<(), String> {
    let b = s.as_bytes();
    let coded = b.len() >= 4
        && (b[0] == b'4' || b[0] == b'5')
        && b[1].is_ascii_digit()
        && b[2].is_ascii_digit()
        && b[3] == b' ';
    if !coded {
        return Err(format!(
            "invalid SMTP reply {s:?}: must start with a 4xx or 5xx code and a space, \
             e.g. \"550 5.7.1 Access denied\""
        ));
    }
    if temporary_only && b[0] != b'4' {
        return Err(format!(
            "invalid SMTP reply {s:?}: must be a temporary (4xx) reply"
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(format!(
            "invalid SMTP reply {s:?}: must be one line without control characters"
        ));
    }
    if s.len() > 510 {
        return Err(format!(
            "invalid SMTP reply {s:?}: longer than the 510 characters SMTP allows"
        ));
    }
    // The reply parser skips any run of spaces before the enhanced status code: so must this
    // check, or "550   4.7.1 x" would pass here and be refused when the reply is built.
    let mut text = s[4..].trim_start_matches(' ');
    let first = text.split(' ').next().unwrap_or("");
    if first.starts_with(|c: char| c.is_ascii_digit()) && first.contains('.') {
        text = &text[first.len()..];
        let parts: Vec<&str> = first.split('.').collect();
        let well_formed = parts.len() == 3
            && parts
                .iter()
                .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|c| c.is_ascii_digit()));
        if !well_formed || parts[0].as_bytes() != [b[0]] {
            return Err(format!(
                "invalid SMTP reply {s:?}: the enhanced status code must look like {}.X.Y \
                 to match the reply code",
                b[0] as char
            ));
        }
    }
    if text.trim().is_empty() {
        return Err(format!(
            "invalid SMTP reply {s:?}: needs text after the code"
        ));
    }
    Ok(())
}

/// Checks a DNS name (zone or host name) and returns it lowercased without a trailing dot.
pub fn check_dns_name(s: &str) -> Result<String, String> {
    let name = s.trim().strip_suffix('.').unwrap_or(s.trim());
    let err = |why: &str| format!("invalid DNS name {s:?}: {why}");
    if name.is_empty() {
        return Err(err("empty"));
    }
    if name.len() > 253 {
        return Err(err("longer than 253 characters"));
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(err("each dot-separated label must be 1 to 63 characters"));
        }
        if !label
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        {
            return Err(err("only letters, digits, '-' and '_' are allowed"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(err("a label cannot start or end with '-'"));
        }
    }
    Ok(name.to_ascii_lowercase())
}

/// Parses a network (`"10.0.0.0/8"`) or a bare address (as /32 or /128).
/// A DNS list's RFC 5782 test address (`test_address`): a listing answer that is not
/// 127.0.0.1, which every list must leave unlisted.
pub fn parse_test_address(s: &str) -> Result<Ipv4Addr, String> {
    let ip: Ipv4Addr = s
        .trim()
        .parse()
        .map_err(|_| format!("invalid test address {s:?}: not an IPv4 address"))?;
    if ip == Ipv4Addr::new(127, 0, 0, 1) {
        return Err(format!(
            "invalid test address {s:?}: 127.0.0.1 is the address a list must not list"
        ));
    }
    if !is_listing_answer(ip) {
        return Err(format!(
            "invalid test address {s:?}: must be in 127.0.0.0/8 and outside 127.255.255.0/24"
        ));
    }
    Ok(ip)
}

pub fn parse_network(s: &str) -> Result<IpNet, String> {
    let text = s.trim();
    let parsed = if text.contains('/') {
        text.parse::<IpNet>().map(|n| n.trunc()).ok()
    } else {
        text.parse::<IpAddr>().map(IpNet::from).ok()
    };
    parsed.ok_or_else(|| {
        format!(
            "invalid network {s:?}: expected an address or CIDR like \"10.0.0.0/8\" or \"::1/128\""
        )
    })
}

/// Parses a name server: `"127.0.0.1:5353"`, `"127.0.0.1"` (port 53), `"[::1]:53"`, `"::1"`.
pub fn parse_nameserver(s: &str) -> Result<SocketAddr, String> {
    let text = s.trim();
    let unbracketed = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    let addr = text.parse::<SocketAddr>().ok().or_else(|| {
        unbracketed
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, 53))
    });
    match addr {
        Some(a) if a.port() != 0 => Ok(a),
        Some(_) => Err(format!("invalid nameserver {s:?}: port 0")),
        None => Err(format!(
            "invalid nameserver {s:?}: expected IP or IP:PORT, e.g. \"127.0.0.1:5353\" or \"[::1]:53\""
        )),
    }
}

/// Parses a Unix permission string in octal, e.g. `"0660"`.
pub fn parse_octal_mode(s: &str) -> Result<u32, String> {
    let text = s.trim();
    let digits = text
        .strip_prefix("0o")
        .or_else(|| text.strip_prefix("0O"))
        .unwrap_or(text);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if !digits.is_empty() && mode <= 0o7777 => Ok(mode),
        _ => Err(format!(
            "invalid socket mode {s:?}: expected octal permissions like \"0660\""
        )),
    }
}

/// Checks a header field name (printable ASCII without ':').
pub fn check_header_name(s: &str) -> Result<(), String> {
    if !s.is_empty() && s.bytes().all(|c| (33..=126).contains(&c) && c != b':') {
        Ok(())
    } else {
        Err(format!(
            "invalid header name {s:?}: use printable ASCII without spaces or ':'"
        ))
    }
}

/// Checks a Redis URL: `redis://`, `rediss://` (TLS), `unix://` or `redis+unix://`. The same check the store runs when it connects, so `check-config` refuses what
/// `run` would refuse.
pub fn check_redis_url(s: &str) -> Result<(), String> {
    crate::store::redis::check_url(s)
}

/// Compiles a regular expression the way the configuration uses it, for validation, and
/// returns a one-line message on failure.
pub fn check_regex(pattern: &str, case_insensitive: bool) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(pattern)
        .case_insensitive(case_insensitive)
        .build()
        .map_err(|e| {
            let text = e.to_string();
            let why = match text.rsplit_once("error: ") {
                Some((_, why)) => why.trim().to_string(),
                None => text.split_whitespace().collect::<Vec<_>>().join(" "),
            };
            format!("invalid regex {pattern:?}: {why}")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_return_codes() {
        assert_eq!("127.0.0.2".parse(), Ok(ReturnCode::Exact(ip("127.0.0.2"))));
        assert_eq!(
            "127.0.0.2-127.0.0.11".parse(),
            Ok(ReturnCode::Range(ip("127.0.0.2"), ip("127.0.0.11")))
        );
        assert_eq!(
            "127.0.0.[2..11]".parse(),
            Ok(ReturnCode::Range(ip("127.0.0.2"), ip("127.0.0.11")))
        );
        assert_eq!("&4".parse(), Ok(ReturnCode::Mask(4)));
        assert_eq!("&0x4".parse(), Ok(ReturnCode::Mask(4)));
        assert_eq!("&0X0c".parse(), Ok(ReturnCode::Mask(12)));
    }

    #[test]
    fn rejects_bad_return_codes() {
        for (bad, why) in [
            ("127.0.0.11-127.0.0.2", "starts after it ends"),
            ("127.0.0.256", "expected an IPv4 address"),
            ("::1", "expected an IPv4 address"),
            ("127.0.0.2-", "expected an IPv4 address"),
            ("&0", "at least one bit"),
            ("&256", "1 to 255"),
            ("&0x", "1 to 255"),
            ("&x4", "1 to 255"),
            ("127.0.0.[2-11]", "127.0.0.[2..11]"),
            ("", "expected an IPv4 address"),
        ] {
            let err = bad.parse::<ReturnCode>().expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn return_codes_match() {
        let exact = ReturnCode::Exact(ip("127.0.0.2"));
        assert!(exact.matches(ip("127.0.0.2")));
        assert!(!exact.matches(ip("127.0.0.3")));
        let range: ReturnCode = "127.0.0.2-127.0.0.11".parse().unwrap();
        assert!(range.matches(ip("127.0.0.2")));
        assert!(range.matches(ip("127.0.0.11")));
        assert!(!range.matches(ip("127.0.0.12")));
        assert!(!range.matches(ip("127.0.0.1")));
        let mask = ReturnCode::Mask(4);
        assert!(mask.matches(ip("127.0.0.4")));
        assert!(mask.matches(ip("127.0.0.6")));
        assert!(!mask.matches(ip("127.0.0.2")));
        assert!(!mask.matches(ip("10.0.0.4")));
        assert!(!mask.matches(ip("127.255.255.254")));
        assert!(is_listing_answer(ip("127.0.0.2")));
        assert!(!is_listing_answer(ip("127.255.255.252")));
        assert!(!is_listing_answer(ip("10.0.0.2")));
    }

    #[test]
    fn return_codes_display_and_reparse() {
        for s in ["127.0.0.2", "127.0.0.2-127.0.0.11", "&4"] {
            let code: ReturnCode = s.parse().unwrap();
            assert_eq!(code.to_string().parse::<ReturnCode>(), Ok(code));
        }
    }

    #[test]
    fn checks_smtp_replies() {
        for good in [
            "550 5.7.1 Access denied",
            "450 4.7.25 Client host rejected",
            "451 Try later",
            "554 5.7.1 Mail from {client_ip} refused, listed in {zone}",
        ] {
            assert_eq!(check_smtp_reply(good, false), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("", "4xx or 5xx"),
            ("250 OK", "4xx or 5xx"),
            ("550", "4xx or 5xx"),
            ("550-5.7.1 multi", "4xx or 5xx"),
            ("55 short", "4xx or 5xx"),
            ("550 ", "needs text"),
            ("550 5.7.1", "needs text"),
            ("550 4.7.1 Mismatch", "5.X.Y"),
            // found by the config fuzz target: spaces before the status code
            ("550      4.7.1 {zone}", "5.X.Y"),
            ("450 4.7 Short", "4.X.Y"),
            ("550 5.7.1 two\r\nlines", "one line"),
        ] {
            let err = check_smtp_reply(bad, false).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
        assert!(check_smtp_reply("550 5.7.1 No", true)
            .unwrap_err()
            .contains("temporary"));
        assert_eq!(check_smtp_reply("451 4.4.3 Later", true), Ok(()));
        assert!(check_smtp_reply(&format!("550 {}", "x".repeat(600)), false).is_err());
    }

    #[test]
    fn checks_dns_names() {
        assert_eq!(check_dns_name("Zen.Example."), Ok("zen.example".into()));
        assert_eq!(
            check_dns_name("_dmarc.example.org"),
            Ok("_dmarc.example.org".into())
        );
        for bad in [
            "",
            ".",
            "a..b",
            "-a.example",
            "a-.example",
            "a b.example",
            "bl.example/x",
        ] {
            assert!(check_dns_name(bad).is_err(), "{bad}");
        }
        assert!(check_dns_name(&format!("{}.example", "a".repeat(64))).is_err());
        assert!(check_dns_name(&["abcdefghi"; 30].join(".")).is_err());
    }

    #[test]
    fn parses_networks() {
        assert_eq!(
            parse_network("10.0.0.0/8"),
            Ok("10.0.0.0/8".parse().unwrap())
        );
        assert_eq!(
            parse_network("10.1.2.3/8"),
            Ok("10.0.0.0/8".parse().unwrap())
        );
        assert_eq!(
            parse_network("192.0.2.1"),
            Ok("192.0.2.1/32".parse().unwrap())
        );
        assert_eq!(parse_network("::1"), Ok("::1/128".parse().unwrap()));
        for bad in ["10.0.0.0/33", "example.org", "", "10.0.0.0/"] {
            assert!(
                parse_network(bad).unwrap_err().contains("invalid network"),
                "{bad}"
            );
        }
    }

    #[test]
    fn parses_nameservers() {
        let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(parse_nameserver("127.0.0.1:5353"), Ok(sa("127.0.0.1:5353")));
        assert_eq!(parse_nameserver("127.0.0.1"), Ok(sa("127.0.0.1:53")));
        assert_eq!(parse_nameserver("[::1]:53"), Ok(sa("[::1]:53")));
        assert_eq!(parse_nameserver("::1"), Ok(sa("[::1]:53")));
        assert_eq!(parse_nameserver("[::1]"), Ok(sa("[::1]:53")));
        assert!(parse_nameserver("127.0.0.1:0").is_err());
        assert!(parse_nameserver("ns.example.org").is_err());
        assert!(parse_nameserver("127.0.0.1:99999").is_err());
    }

    #[test]
    fn parses_octal_modes() {
        assert_eq!(parse_octal_mode("0660"), Ok(0o660));
        assert_eq!(parse_octal_mode("660"), Ok(0o660));
        assert_eq!(parse_octal_mode("0o600"), Ok(0o600));
        for bad in ["", "0880", "rw-rw----", "17777"] {
            assert!(parse_octal_mode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn checks_small_values() {
        assert!(check_header_name("X-Mxsentry").is_ok());
        assert!(check_header_name("X Bad").is_err());
        assert!(check_header_name("X-Bad:").is_err());
        assert!(check_header_name("").is_err());
        assert!(check_redis_url("redis://127.0.0.1:6379/0").is_ok());
        assert!(check_redis_url("redis+unix:///run/redis.sock").is_ok());
        assert!(check_redis_url("rediss://cache.example:6380").is_ok());
        let tls = check_redis_url("redis-tls://cache.example:6380").unwrap_err();
        assert!(tls.contains("rediss:// (TLS)"), "{tls}");
        assert!(check_redis_url("unix:///run/redis.sock").is_ok());
        assert!(check_redis_url("http://127.0.0.1").is_err());
        assert!(check_redis_url("redis://").is_err());
        assert!(check_regex("^a+$", true).is_ok());
        let err = check_regex("(unclosed", true).unwrap_err();
        assert!(err.starts_with("invalid regex \"(unclosed\": "), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }
}
