//! Serde glue: every value is checked while it is deserialized, inside the visitor, so that
//! the TOML deserializer attaches the value's own span (an array element's, not the array's) to
//! the error and `ConfigError` can name the line.

use std::fmt;
use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::de::{self, Deserialize, Deserializer, SeqAccess, Unexpected, Visitor};

use super::duration::parse_duration;
use super::listen::ListenSpec;
use super::values;
use super::values::ReturnCode;

/// A setting written as a string, checked and converted by `parse`.
pub(super) trait StrParser {
    type Out;
    const EXPECTING: &'static str;
    fn parse(s: &str) -> Result<Self::Out, String>;
    /// How an integer is taken, if at all (`None`: "invalid type").
    fn parse_int(_v: i64) -> Option<Result<Self::Out, String>> {
        None
    }
}

struct StrVisitor<P>(PhantomData<P>);

impl<'de, P: StrParser> Visitor<'de> for StrVisitor<P> {
    type Value = P::Out;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(P::EXPECTING)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<P::Out, E> {
        P::parse(v).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<P::Out, E> {
        match P::parse_int(v) {
            Some(result) => result.map_err(E::custom),
            None => Err(E::invalid_type(Unexpected::Signed(v), &self)),
        }
    }
}

/// One parsed element; used for arrays so each element carries its own span.
struct Parsed<P: StrParser>(P::Out);

impl<'de, P: StrParser> Deserialize<'de> for Parsed<P> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrVisitor::<P>(PhantomData)).map(Parsed)
    }
}

/// `deserialize_with` for a single string setting.
pub(super) fn one<'de, D: Deserializer<'de>, P: StrParser>(d: D) -> Result<P::Out, D::Error> {
    d.deserialize_str(StrVisitor::<P>(PhantomData))
}

/// `deserialize_with` for an optional string setting.
pub(super) fn opt<'de, D: Deserializer<'de>, P: StrParser>(
    d: D,
) -> Result<Option<P::Out>, D::Error> {
    one::<D, P>(d).map(Some)
}

/// `deserialize_with` for an array of string settings.
pub(super) fn list<'de, D: Deserializer<'de>, P: StrParser>(d: D) -> Result<Vec<P::Out>, D::Error> {
    let items = Vec::<Parsed<P>>::deserialize(d)?;
    Ok(items.into_iter().map(|p| p.0).collect())
}

macro_rules! parser {
    ($name:ident, $out:ty, $expecting:literal, $parse:expr) => {
        pub(super) struct $name;
        impl StrParser for $name {
            type Out = $out;
            const EXPECTING: &'static str = $expecting;
            fn parse(s: &str) -> Result<$out, String> {
                #[allow(clippy::redundant_closure_call)]
                ($parse)(s)
            }
        }
    };
}

/// Durations; also the integer `0`.
pub(super) struct DurationP;

impl StrParser for DurationP {
    type Out = Duration;
    const EXPECTING: &'static str = "a duration string like \"300s\" or \"5m\"";
    fn parse(s: &str) -> Result<Duration, String> {
        parse_duration(s)
    }
    fn parse_int(v: i64) -> Option<Result<Duration, String>> {
        Some(match v {
            0 => Ok(Duration::ZERO),
            _ => Err(format!(
                "invalid duration {v}: durations need a unit, e.g. \"{v}s\""
            )),
        })
    }
}

/// Durations that must be longer than zero.
pub(super) struct NonZeroDurationP;

impl StrParser for NonZeroDurationP {
    type Out = Duration;
    const EXPECTING: &'static str = DurationP::EXPECTING;
    fn parse(s: &str) -> Result<Duration, String> {
        nonzero(parse_duration(s)?, s)
    }
    fn parse_int(v: i64) -> Option<Result<Duration, String>> {
        DurationP::parse_int(v).map(|r| r.and_then(|d| nonzero(d, &v.to_string())))
    }
}

fn nonzero(d: Duration, s: &str) -> Result<Duration, String> {
    if d.is_zero() {
        Err(format!("invalid duration {s:?}: must be longer than zero"))
    } else {
        Ok(d)
    }
}

parser!(
    ListenP,
    ListenSpec,
    "a listen address like \"inet:8890@127.0.0.1\"",
    |s: &str| s.parse::<ListenSpec>()
);
parser!(
    NetworkP,
    IpNet,
    "a network like \"10.0.0.0/8\"",
    values::parse_network
);
parser!(
    NameserverP,
    SocketAddr,
    "a name server like \"127.0.0.1:53\"",
    values::parse_nameserver
);
parser!(
    ReturnCodeP,
    ReturnCode,
    "a return code like \"127.0.0.2\"",
    |s: &str| s.parse::<ReturnCode>()
);
parser!(IpAddrP, IpAddr, "an IP address", |s: &str| s
    .trim()
    .parse::<IpAddr>()
    .map_err(|_| format!("invalid IP address {s:?}")));
parser!(DnsNameP, String, "a DNS name", values::check_dns_name);
parser!(
    TestAddressP,
    std::net::Ipv4Addr,
    "an IPv4 test address in 127.0.0.0/8",
    values::parse_test_address
);
parser!(
    OctalModeP,
    u32,
    "an octal mode string like \"0660\"",
    values::parse_octal_mode
);
parser!(
    ReplyP,
    String,
    "an SMTP reply like \"550 5.7.1 Access denied\"",
    |s: &str| { values::check_smtp_reply(s, false).map(|()| s.to_string()) }
);
parser!(
    TempReplyP,
    String,
    "a 4xx SMTP reply like \"451 4.7.1 Try later\"",
    |s: &str| { values::check_smtp_reply(s, true).map(|()| s.to_string()) }
);
parser!(RegexP, String, "a regular expression", |s: &str| {
    values::check_regex(s, true).map(|_| s.to_string())
});
parser!(HeaderNameP, String, "a header name", |s: &str| {
    values::check_header_name(s).map(|()| s.to_string())
});
parser!(
    RedisUrlP,
    String,
    "a URL like \"redis://127.0.0.1:6379/0\"",
    |s: &str| { values::check_redis_url(s).map(|()| s.to_string()) }
);
parser!(
    RedisSentinelUrlP,
    String,
    "a sentinel URL like \"redis://127.0.0.1:26379\"",
    |s: &str| { crate::store::redis::check_sentinel_url(s).map(|_| s.to_string()) }
);
parser!(
    RedisClusterUrlP,
    String,
    "a cluster node URL like \"redis://127.0.0.1:7000\"",
    |s: &str| { crate::store::redis::check_cluster_url(s).map(|_| s.to_string()) }
);
parser!(
    LocalPartP,
    String,
    "a local part like \"postmaster\"",
    |s: &str| {
        let t = s.trim();
        if t.is_empty() || t.contains('@') || t.chars().any(char::is_whitespace) {
            Err(format!(
                "invalid recipient {s:?}: give a local part like \"postmaster\", not an address"
            ))
        } else {
            Ok(t.to_string())
        }
    }
);
parser!(NonEmptyP, String, "a non-empty string", |s: &str| {
    if s.trim().is_empty() {
        Err("must not be empty".to_string())
    } else {
        Ok(s.to_string())
    }
});
parser!(PathP, PathBuf, "a file path", |s: &str| {
    if s.trim().is_empty() {
        Err("the path must not be empty".to_string())
    } else {
        Ok(PathBuf::from(s))
    }
});

/// `milter.listen`: one string or an array of at least one string.
pub(super) fn listen_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ListenSpec>, D::Error> {
    struct ListenVisitor;

    impl<'de> Visitor<'de> for ListenVisitor {
        type Value = Vec<ListenSpec>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a listen address or an array of them")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            ListenP::parse(v).map(|spec| vec![spec]).map_err(E::custom)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut specs = Vec::new();
            while let Some(Parsed(spec)) = seq.next_element::<Parsed<ListenP>>()? {
                if specs.contains(&spec) {
                    return Err(de::Error::custom(format!(
                        "listen address {spec} given twice"
                    )));
                }
                specs.push(spec);
            }
            if specs.is_empty() {
                return Err(de::Error::custom(
                    "listen needs at least one address, e.g. \"inet:8890@127.0.0.1\"",
                ));
            }
            Ok(specs)
        }
    }

    d.deserialize_any(ListenVisitor)
}

/// `metrics.listen`: an address, or `""` / `"off"` / `false` for no metrics endpoint.
pub(super) fn metrics_listen<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<SocketAddr>, D::Error> {
    struct MetricsVisitor;

    impl Visitor<'_> for MetricsVisitor {
        type Value = Option<SocketAddr>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an address like \"127.0.0.1:9890\" or \"off\"")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            let t = v.trim();
            if t.is_empty() || t.eq_ignore_ascii_case("off") {
                return Ok(None);
            }
            t.parse::<SocketAddr>().map(Some).map_err(|_| {
                E::custom(format!(
                    "invalid metrics address {v:?}: expected IP:PORT like \"127.0.0.1:9890\" or \"off\""
                ))
            })
        }

        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
            if v {
                Err(E::invalid_value(Unexpected::Bool(v), &self))
            } else {
                Ok(None)
            }
        }
    }

    d.deserialize_any(MetricsVisitor)
}

/// An integer within `min..=max`, named in the message.
fn ranged<'de, D: Deserializer<'de>>(
    d: D,
    name: &'static str,
    min: u64,
    max: u64,
) -> Result<u64, D::Error> {
    struct RangeVisitor {
        name: &'static str,
        min: u64,
        max: u64,
    }

    impl RangeVisitor {
        fn check<E: de::Error>(&self, v: i128) -> Result<u64, E> {
            if (i128::from(self.min)..=i128::from(self.max)).contains(&v) {
                Ok(v as u64)
            } else if self.max == u64::MAX {
                Err(E::custom(format!(
                    "invalid {} {v}: must be at least {}",
                    self.name, self.min
                )))
            } else {
                Err(E::custom(format!(
                    "invalid {} {v}: must be from {} to {}",
                    self.name, self.min, self.max
                )))
            }
        }
    }

    impl Visitor<'_> for RangeVisitor {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "an integer from {} to {}", self.min, self.max)
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            self.check(i128::from(v))
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            self.check(i128::from(v))
        }
    }

    d.deserialize_any(RangeVisitor { name, min, max })
}

fn usize_max() -> u64 {
    u64::try_from(usize::MAX).unwrap_or(u64::MAX)
}

pub(super) fn max_connections<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    ranged(d, "max_connections", 1, usize_max()).map(|v| v as usize)
}

pub(super) fn max_uncommitted<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    ranged(d, "max_uncommitted", 1, u64::MAX)
}

pub(super) fn max_concurrent<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    ranged(d, "max_concurrent", 1, usize_max()).map(|v| v as usize)
}

pub(super) fn prefetch_percent<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    ranged(d, "prefetch_percent", 1, 90).map(|v| v as u8)
}

/// The smallest `max_frame` (and its default): a 64 KiB body chunk plus the frame's length and
/// command bytes. libmilter accepts no more, so every MTA works within it.
pub const MIN_MAX_FRAME: usize = 65_540;

pub(super) fn max_frame<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    ranged(d, "max_frame", MIN_MAX_FRAME as u64, usize_max()).map(|v| v as usize)
}

pub(super) fn max_macro_frame<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    ranged(d, "max_macro_frame", 1024, usize_max()).map(|v| v as usize)
}

pub(super) fn max_macros<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    ranged(d, "max_macros", 16, usize_max()).map(|v| v as usize)
}

pub(super) fn max_recipients<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    ranged(d, "max_recipients", 1, usize_max()).map(|v| v as usize)
}

pub(super) fn worker_threads<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    ranged(d, "worker_threads", 0, 1024).map(|v| v as usize)
}

pub(super) fn threshold<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    ranged(d, "threshold", 1, u64::from(u32::MAX)).map(|v| v as u32)
}

pub(super) fn ipv4_prefix<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    ranged(d, "ipv4_prefix", 0, 32).map(|v| v as u8)
}

pub(super) fn ipv6_prefix<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    ranged(d, "ipv6_prefix", 0, 128).map(|v| v as u8)
}
