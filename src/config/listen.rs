//! Milter socket specifications: `inet:8890@127.0.0.1`, `inet6:8890@::1`, `unix:/path`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

/// Where the milter accepts connections from the MTA.
///
/// Parsed from the milter forms `inet:PORT@HOST`, `inet6:PORT@HOST`, `unix:/path` and
/// `local:/path`, and from Postfix's `inet:HOST:PORT` and `inet:[IPV6]:PORT`. HOST is an IP
/// literal or `localhost` (127.0.0.1 for `inet:`, ::1 for `inet6:`). Displayed in the milter form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenSpec {
    /// A TCP socket.
    Inet(SocketAddr),
    /// A Unix-domain socket at an absolute path.
    Unix(PathBuf),
}

const FORMS: &str = "expected inet:PORT@HOST, inet6:PORT@HOST, inet:HOST:PORT or unix:/path";

impl FromStr for ListenSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let text = s.trim();
        let Some((proto, rest)) = text.split_once(':') else {
            return Err(format!("invalid listen address {s:?}: {FORMS}"));
        };
        match proto.to_ascii_lowercase().as_str() {
            "unix" | "local" => {
                if !rest.starts_with('/') {
                    return Err(format!(
                        "invalid listen address {s:?}: the socket path must be absolute"
                    ));
                }
                Ok(ListenSpec::Unix(PathBuf::from(rest)))
            }
            "inet" => parse_inet(s, rest, false),
            "inet6" => parse_inet(s, rest, true),
            _ => Err(format!(
                "invalid listen address {s:?}: unknown socket type {proto:?}; {FORMS}"
            )),
        }
    }
}

fn parse_inet(orig: &str, rest: &str, inet6: bool) -> Result<ListenSpec, String> {
    let err = |why: &str| format!("invalid listen address {orig:?}: {why}");
    let (host, port) = if let Some((port, host)) = rest.split_once('@') {
        (host, port)
    } else if let Some(bracketed) = rest.strip_prefix('[') {
        let Some((host, port)) = bracketed.split_once("]:") else {
            return Err(err("expected inet:[IPV6]:PORT"));
        };
        (host, port)
    } else if let Some((host, port)) = rest.rsplit_once(':') {
        if host.contains(':') {
            return Err(err("write IPv6 hosts in brackets, e.g. inet:[::1]:8890"));
        }
        (host, port)
    } else {
        return Err(err(FORMS));
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if port.is_empty() {
        return Err(err("missing port"));
    }
    let port = match port.parse::<u16>() {
        Ok(0) | Err(_) => return Err(err("the port must be a number from 1 to 65535")),
        Ok(port) => port,
    };
    if host.is_empty() {
        return Err(err("missing host"));
    }
    let ip = if host.eq_ignore_ascii_case("localhost") {
        if inet6 {
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        } else {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        }
    } else {
        host.parse::<IpAddr>()
            .map_err(|_| err("the host must be an IP address or localhost"))?
    };
    if inet6 && ip.is_ipv4() {
        return Err(err("inet6: needs an IPv6 address; use inet: for IPv4"));
    }
    Ok(ListenSpec::Inet(SocketAddr::new(ip, port)))
}

impl fmt::Display for ListenSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenSpec::Inet(SocketAddr::V4(a)) => write!(f, "inet:{}@{}", a.port(), a.ip()),
            ListenSpec::Inet(SocketAddr::V6(a)) => write!(f, "inet6:{}@{}", a.port(), a.ip()),
            ListenSpec::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inet(s: &str) -> ListenSpec {
        ListenSpec::Inet(s.parse().unwrap())
    }

    #[test]
    fn parses_milter_forms() {
        assert_eq!("inet:8890@127.0.0.1".parse(), Ok(inet("127.0.0.1:8890")));
        assert_eq!("inet6:8890@::1".parse(), Ok(inet("[::1]:8890")));
        assert_eq!("inet6:8890@[::1]".parse(), Ok(inet("[::1]:8890")));
        assert_eq!("inet:8890@::1".parse(), Ok(inet("[::1]:8890")));
        assert_eq!("inet:8890@localhost".parse(), Ok(inet("127.0.0.1:8890")));
        assert_eq!("inet6:8890@localhost".parse(), Ok(inet("[::1]:8890")));
        assert_eq!("inet:1@0.0.0.0".parse(), Ok(inet("0.0.0.0:1")));
        assert_eq!("inet:65535@10.1.2.3".parse(), Ok(inet("10.1.2.3:65535")));
        assert_eq!(
            "unix:/run/mxsentry/milter.sock".parse(),
            Ok(ListenSpec::Unix("/run/mxsentry/milter.sock".into()))
        );
        assert_eq!(
            "local:/var/run/m.sock".parse(),
            Ok(ListenSpec::Unix("/var/run/m.sock".into()))
        );
    }

    #[test]
    fn parses_postfix_forms() {
        assert_eq!("inet:127.0.0.1:8890".parse(), Ok(inet("127.0.0.1:8890")));
        assert_eq!("inet:localhost:8890".parse(), Ok(inet("127.0.0.1:8890")));
        assert_eq!("inet:[::1]:8890".parse(), Ok(inet("[::1]:8890")));
        assert_eq!("inet6:[::1]:8890".parse(), Ok(inet("[::1]:8890")));
    }

    #[test]
    fn displays_in_milter_form() {
        for (input, shown) in [
            ("inet:127.0.0.1:8890", "inet:8890@127.0.0.1"),
            ("inet:[::1]:8890", "inet6:8890@::1"),
            ("inet6:8890@::1", "inet6:8890@::1"),
            ("local:/run/m.sock", "unix:/run/m.sock"),
        ] {
            let spec: ListenSpec = input.parse().unwrap();
            assert_eq!(spec.to_string(), shown);
            assert_eq!(shown.parse::<ListenSpec>().unwrap(), spec);
        }
    }

    #[test]
    fn rejects_bad_specs() {
        for (bad, why) in [
            ("8890", "expected inet:PORT@HOST"),
            ("tcp:8890@127.0.0.1", "unknown socket type"),
            ("inet:8890", "expected inet:PORT@HOST"),
            ("inet:0@127.0.0.1", "1 to 65535"),
            ("inet:65536@127.0.0.1", "1 to 65535"),
            ("inet:port@127.0.0.1", "1 to 65535"),
            ("inet:@127.0.0.1", "missing port"),
            ("inet:8890@", "missing host"),
            ("inet:127.0.0.1:", "missing port"),
            ("inet:8890@mx.example.org", "IP address or localhost"),
            ("inet:mx.example.org:8890", "IP address or localhost"),
            ("inet:::1:8890", "brackets"),
            ("inet:[::1]8890", "inet:[IPV6]:PORT"),
            ("inet6:8890@127.0.0.1", "needs an IPv6 address"),
            ("inet6:127.0.0.1:8890", "needs an IPv6 address"),
            ("unix:relative/path.sock", "absolute"),
            ("unix:", "absolute"),
        ] {
            let err = bad.parse::<ListenSpec>().expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }
}
