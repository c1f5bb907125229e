//! The sections of the DNS-based checks: `[dns]` (the resolver), `[helo]`, `[rdns]` and
//! `[dnsbl]` with its zones.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;

use super::de;
use super::sections::Action;
use super::values::{is_listing_answer, ReturnCode};

/// What to do when a DNS lookup fails temporarily (timeout, SERVFAIL, REFUSED).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TempFailureAction {
    /// `"tempfail"`: answer with `dns.tempfail_reply`.
    #[default]
    Tempfail,
    /// `"ignore"`: treat the check as passed (counted and logged).
    Ignore,
}

/// `[dns]`: the resolver.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    /// Name servers as `IP` (port 53) or `IP:PORT`; empty uses the system resolver
    /// (/etc/resolv.conf). Default: empty.
    #[serde(deserialize_with = "de::list::<_, de::NameserverP>")]
    pub nameservers: Vec<SocketAddr>,
    /// Timeout of one lookup. Default: 3s.
    #[serde(deserialize_with = "de::one::<_, de::NonZeroDurationP>")]
    pub timeout: Duration,
    /// Cached answers kept (0 disables the cache). Default: 10000.
    pub cache_size: usize,
    /// Most lookups in flight at once (at least 1). Default: 256.
    #[serde(deserialize_with = "de::max_concurrent")]
    pub max_concurrent: usize,
    /// Refresh a cached answer in the background when it is used in the last
    /// `prefetch_percent` of its TTL, so a returning client finds it fresh. Default: true.
    pub prefetch: bool,
    /// The share of an answer's TTL, in percent (1 to 90), at whose end a use triggers the
    /// refresh. Default: 25 (Unbound uses 10; a mail client comes back far less often than a
    /// popular name is asked for, see docs/performance.md).
    #[serde(deserialize_with = "de::prefetch_percent")]
    pub prefetch_percent: u8,
    /// `"tempfail"` or `"ignore"` when the rDNS or HELO lookups fail temporarily, for checks
    /// whose action can refuse (a check that is `off`, `log` or `tag` never refuses because
    /// of DNS). DNS lists have their own per-zone `temp_failure`. Default: tempfail.
    pub temp_failure: TempFailureAction,
    /// The 4xx reply for a temporary DNS failure.
    /// Default: `451 4.4.3 Temporary DNS failure, please try again later`.
    #[serde(deserialize_with = "de::one::<_, de::TempReplyP>")]
    pub tempfail_reply: String,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            nameservers: Vec::new(),
            timeout: Duration::from_secs(3),
            cache_size: 10_000,
            max_concurrent: 256,
            prefetch: true,
            prefetch_percent: 25,
            temp_failure: TempFailureAction::Tempfail,
            tempfail_reply: "451 4.4.3 Temporary DNS failure, please try again later".into(),
        }
    }
}

/// `[helo]`: HELO/EHLO checks (our own name or address claimed, malformed names, ...).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeloConfig {
    /// Action on a bogus HELO. Default: reject.
    pub action: Action,
    /// Reply for a bogus HELO; `{helo}` is the name given.
    /// Default: `550 5.7.1 Access denied - bogus HELO {helo}`.
    #[serde(deserialize_with = "de::one::<_, de::ReplyP>")]
    pub reply: String,
    /// Also require the HELO name to resolve in DNS. Default: false.
    pub check_resolves: bool,
}

impl Default for HeloConfig {
    fn default() -> Self {
        HeloConfig {
            action: Action::Reject,
            reply: "550 5.7.1 Access denied - bogus HELO {helo}".into(),
            check_resolves: false,
        }
    }
}

/// `[rdns]`: reverse DNS of the client address.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RdnsConfig {
    /// Action when the client address has no PTR record. Default: tempfail.
    pub no_ptr: Action,
    /// Action when the PTR name does not resolve back to the address. Default: tempfail.
    pub forged: Action,
    /// Action when the PTR name looks like a dynamic (end-user) address. Default: greylist.
    pub dynamic: Action,
    /// Extra regexes (case-insensitive) for dynamic host names. Default: none.
    #[serde(deserialize_with = "de::list::<_, de::RegexP>")]
    pub dynamic_patterns: Vec<String>,
    /// Reply for `no_ptr`; `{client_ip}` is the address.
    /// Default: `450 4.7.25 Client host rejected: cannot find your hostname, [{client_ip}]`.
    #[serde(deserialize_with = "de::one::<_, de::ReplyP>")]
    pub no_ptr_reply: String,
    /// Reply for `forged`; `{client_name}` is the PTR name. Default:
    /// `450 4.7.25 Client host rejected: hostname {client_name} does not resolve to address {client_ip}`.
    #[serde(deserialize_with = "de::one::<_, de::ReplyP>")]
    pub forged_reply: String,
    /// Use the MTA's own FCrDNS verification when it reports one (Postfix's `{client_name}`,
    /// sendmail's `{client_resolve}` = `OK`) instead of repeating the PTR and forward lookups;
    /// anything else (no verified name, a failure) is still looked up. Default: true.
    pub trust_mta: bool,
}

impl Default for RdnsConfig {
    fn default() -> Self {
        RdnsConfig {
            no_ptr: Action::Tempfail,
            forged: Action::Tempfail,
            dynamic: Action::Greylist,
            dynamic_patterns: Vec::new(),
            no_ptr_reply:
                "450 4.7.25 Client host rejected: cannot find your hostname, [{client_ip}]".into(),
            trust_mta: true,
            forged_reply: "450 4.7.25 Client host rejected: hostname {client_name} does not \
                           resolve to address {client_ip}"
                .into(),
        }
    }
}

/// `[dnsbl]`: DNS block lists (scored) and allow lists.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsblConfig {
    /// Summed weight of listings at which `action` applies (at least 1). Default: 1.
    #[serde(deserialize_with = "de::threshold")]
    pub threshold: u32,
    /// Action when the threshold is reached. Default: reject.
    pub action: Action,
    /// Action for listings whose summed weight stays under the threshold. Default: log.
    pub below_threshold: Action,
    /// IP block lists (`[[dnsbl.zones]]`), queried with the reversed client address.
    /// Default: none.
    pub zones: Vec<DnsblZone>,
    /// Domain block lists (`[[dnsbl.domain_zones]]`), queried with domain names.
    /// Default: none.
    pub domain_zones: Vec<DnsblZone>,
    /// IP allow lists (`[[dnsbl.allow_zones]]`): a listed client skips the DNSBL verdict.
    /// Default: none.
    pub allow_zones: Vec<DnsblZone>,
    /// How often every zone is probed with its RFC 5782 test points (first probe at start);
    /// a zone that fails its probes never blocks (its findings become log-only) until it
    /// passes again. `"0s"`: no probes, every zone trusted. Default: 60s.
    #[serde(deserialize_with = "de::one::<_, de::DurationP>")]
    pub health_check_interval: Duration,
}

impl Default for DnsblConfig {
    fn default() -> Self {
        DnsblConfig {
            threshold: 1,
            action: Action::Reject,
            below_threshold: Action::Log,
            zones: Vec::new(),
            domain_zones: Vec::new(),
            allow_zones: Vec::new(),
            health_check_interval: Duration::from_secs(60),
        }
    }
}

/// One DNS list. `zone` is required; the rest have defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsblZone {
    /// The list's DNS zone (lowercased, no trailing dot). Required.
    #[serde(deserialize_with = "de::one::<_, de::DnsNameP>")]
    pub zone: String,
    /// Weight a listing adds (may be negative). Default: 1.
    #[serde(default = "default_weight")]
    pub weight: i32,
    /// Answers that count as a listing; empty means any 127.0.0.0/8 answer except the
    /// 127.255.255.0/24 error codes. Default: empty.
    #[serde(default, deserialize_with = "de::list::<_, de::ReturnCodeP>")]
    pub returncodes: Vec<ReturnCode>,
    /// Reply when this list causes a refusal; `{client_ip}`, `{zone}` available.
    /// Default: none (the generic reply).
    #[serde(default, deserialize_with = "de::opt::<_, de::ReplyP>")]
    pub message: Option<String>,
    /// Lookup timeout for this list. Default: `dns.timeout`.
    #[serde(default, deserialize_with = "de::opt::<_, de::NonZeroDurationP>")]
    pub timeout: Option<Duration>,
    /// When the list cannot be reached (timeout, SERVFAIL, REFUSED): `"ignore"` counts it as
    /// not listed (logged and counted), as sendmail's FEATURE(dnsbl), Exim and rspamd do;
    /// `"tempfail"` answers `dns.tempfail_reply` when this list's weight could have reached
    /// the threshold. Default: ignore.
    #[serde(default = "ignore")]
    pub temp_failure: TempFailureAction,
    /// Zone health for this list: `"rfc5782"` probes its RFC 5782 test points every
    /// `health_check_interval`; `"off"` trusts it without probes (for lists that publish no
    /// test entries), the listing-rate and answer guards still apply. Default: rfc5782.
    #[serde(default)]
    pub health_check: HealthCheck,
    /// Domain lists: the name probed in place of `test`, for a list that publishes another
    /// test entry. Default: `test`.
    #[serde(default, deserialize_with = "de::opt::<_, de::DnsNameP>")]
    pub test_name: Option<String>,
    /// IP lists: the address probed in place of 127.0.0.2. Default: 127.0.0.2.
    #[serde(default, deserialize_with = "de::opt::<_, de::TestAddressP>")]
    pub test_address: Option<Ipv4Addr>,
}

/// `health_check` of a DNS list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheck {
    /// `"rfc5782"`: probed; listings count once a probe passed.
    #[default]
    Rfc5782,
    /// `"off"`: no probes; trusted unless the listing-rate or answer guards trip.
    Off,
}

fn ignore() -> TempFailureAction {
    TempFailureAction::Ignore
}

fn default_weight() -> i32 {
    1
}

impl Default for DnsblZone {
    fn default() -> Self {
        DnsblZone {
            zone: String::new(),
            weight: 1,
            returncodes: Vec::new(),
            message: None,
            timeout: None,
            temp_failure: TempFailureAction::Ignore,
            health_check: HealthCheck::Rfc5782,
            test_name: None,
            test_address: None,
        }
    }
}

impl DnsblZone {
    /// Whether the answer `ip` counts as a listing under `returncodes`.
    pub fn is_listed(&self, ip: Ipv4Addr) -> bool {
        if self.returncodes.is_empty() {
            is_listing_answer(ip)
        } else {
            self.returncodes.iter().any(|code| code.matches(ip))
        }
    }
}
