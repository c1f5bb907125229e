//! The sections of the configuration file, their defaults and their value types (the DNS-based
//! checks' sections are in `check_sections.rs`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net};
use serde::Deserialize;
use toml::Spanned;

use super::check_sections::TempFailureAction;
use super::de;
use super::listen::ListenSpec;
use super::values;

/// Whether mxsentry acts on its verdicts or only logs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// `"enforce"`: verdicts are sent to the MTA.
    #[default]
    Enforce,
    /// `"dry-run"`: every message is accepted; verdicts are logged and counted.
    DryRun,
}

/// What to do about one finding (a bogus HELO, a missing PTR, a DNSBL listing, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// `"reject"`: permanent 5xx refusal.
    Reject,
    /// `"tempfail"`: temporary 4xx refusal.
    Tempfail,
    /// `"greylist"`: greylist the message even if greylisting would otherwise skip it.
    Greylist,
    /// `"delay"`: hold the reply to CONNECT for `[greeting] delay` (sendmail's greet_pause):
    /// the MTA sends its 220 banner late, and impatient spam engines talk first or leave.
    Delay,
    /// `"tag"`: accept and add the tag header.
    Tag,
    /// `"log"`: accept and log.
    Log,
    /// `"off"`: ignore the finding.
    Off,
}

impl Action {
    /// What a check whose lookup failed temporarily may do, given the strongest action its
    /// outcomes are configured with: a refusal becomes a temporary refusal (when
    /// `[dns] temp_failure` says so), `greylist` stays greylisting, anything else (`delay`,
    /// `tag`, `log`, `off`) leaves the verdict alone. A check that cannot refuse never refuses
    /// because its lookup failed.
    pub fn on_temp_failure(actions: &[Action], temp_failure: TempFailureAction) -> Action {
        if actions
            .iter()
            .any(|a| matches!(a, Action::Reject | Action::Tempfail))
        {
            match temp_failure {
                TempFailureAction::Tempfail => Action::Tempfail,
                TempFailureAction::Ignore => Action::Log,
            }
        } else if actions.contains(&Action::Greylist) {
            Action::Greylist
        } else {
            Action::Log
        }
    }
}

/// What a connection beyond `milter.max_connections` gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OverflowAction {
    /// `"tempfail"`: negotiate, then TEMPFAIL at CONNECT; Postfix answers the SMTP client
    /// `451 4.7.1` at once.
    #[default]
    Tempfail,
    /// `"accept"`: negotiate, then ACCEPT at CONNECT: the session goes on unchecked (fail open).
    Accept,
    /// `"close"`: close the connection at once; the MTA applies its milter_default_action.
    Close,
}

impl OverflowAction {
    /// The word used in logs and the `action` label of `mxsentry_connections_overflow_total`.
    pub fn name(self) -> &'static str {
        match self {
            OverflowAction::Tempfail => "tempfail",
            OverflowAction::Accept => "accept",
            OverflowAction::Close => "close",
        }
    }
}

/// `[milter]`: how the MTA talks to us and who we are.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MilterConfig {
    /// Sockets to accept MTA connections on; one string or an array.
    /// Default: `inet:8890@127.0.0.1`.
    #[serde(deserialize_with = "de::listen_list")]
    pub listen: Vec<ListenSpec>,
    /// Our host name (lowercased, no trailing dot); HELO checks refuse clients that claim it.
    /// Default: `/proc/sys/kernel/hostname`, else `localhost`.
    #[serde(deserialize_with = "de::one::<_, de::DnsNameP>")]
    pub hostname: String,
    /// More names of ours (lowercased, no trailing dot). Default: none.
    #[serde(deserialize_with = "de::list::<_, de::DnsNameP>")]
    pub local_names: Vec<String>,
    /// Our IP addresses, for HELO `[ip]` literal checks. Default: none.
    #[serde(deserialize_with = "de::list::<_, de::IpAddrP>")]
    pub local_addresses: Vec<IpAddr>,
    /// `"enforce"` or `"dry-run"`. Default: enforce.
    pub mode: Mode,
    /// Recipient local parts that are never refused (case-insensitive).
    /// Default: `["postmaster", "abuse"]`.
    #[serde(deserialize_with = "de::list::<_, de::LocalPartP>")]
    pub exempt_recipients: Vec<String>,
    /// Most MTA connections served at once (at least 1). More are still accepted and answered
    /// at once with `overflow_action`. Sized so that the MTA's own process limits are reached
    /// first (an idle connection costs ~8 KB). Default: 10000.
    #[serde(deserialize_with = "de::max_connections")]
    pub max_connections: usize,
    /// What a connection over `max_connections` gets: `"tempfail"` (OPTNEG, then TEMPFAIL at
    /// CONNECT), `"accept"` (ACCEPT at CONNECT: fail open) or `"close"` (closed at once: the
    /// MTA applies its milter_default_action). Default: tempfail.
    pub overflow_action: OverflowAction,
    /// Longest wait for a new connection's option negotiation (OPTNEG). Default: 10s.
    #[serde(deserialize_with = "de::one::<_, de::NonZeroDurationP>")]
    pub negotiation_timeout: Duration,
    /// Longest wait for the MTA's next command (a whole frame). Default: 300s.
    #[serde(deserialize_with = "de::one::<_, de::NonZeroDurationP>")]
    pub idle_timeout: Duration,
    /// Longest wait to write a reply to the MTA. Default: 30s.
    #[serde(deserialize_with = "de::one::<_, de::NonZeroDurationP>")]
    pub write_timeout: Duration,
    /// Largest milter frame accepted, in bytes (at least [`MIN_MAX_FRAME`](super::MIN_MAX_FRAME)
    /// = 65540: a 64 KiB body chunk, what libmilter itself accepts). Headers and body are
    /// negotiated away, so the largest frame a real MTA sends us is a macro list or a command
    /// line. Default: 65540.
    #[serde(deserialize_with = "de::max_frame")]
    pub max_frame: usize,
    /// Largest MACRO frame, in bytes (at least 1024); a larger one closes the connection.
    /// Default: 16384.
    #[serde(deserialize_with = "de::max_macro_frame")]
    pub max_macro_frame: usize,
    /// Most macros (name/value pairs) in one MACRO frame (at least 16); more close the
    /// connection. Default: 128.
    #[serde(deserialize_with = "de::max_macros")]
    pub max_macros: usize,
    /// Most recipients checked per message (at least 1); each further RCPT gets
    /// `452 4.5.3 Too many recipients` (RFC 5321 4.5.3.1.10), never a 5xx. Default: 1000
    /// (Postfix's smtpd_recipient_limit).
    #[serde(deserialize_with = "de::max_recipients")]
    pub max_recipients: usize,
    /// Threads that serve MTA connections (0: one per CPU). One thread serves some 12,000
    /// sessions/s on a small VM; more only pay off when mxsentry keeps a whole core busy,
    /// because every hand-off between threads costs a wake-up (docs/performance.md).
    /// Default: 1.
    #[serde(deserialize_with = "de::worker_threads")]
    pub worker_threads: usize,
    /// Permissions of Unix sockets, from an octal string like `"0660"`. Default: 0660 (the
    /// owner and `socket_group` may connect), whatever the umask.
    #[serde(deserialize_with = "de::opt::<_, de::OctalModeP>")]
    pub socket_mode: Option<u32>,
    /// Owner (user name) of Unix sockets. Default: unchanged.
    pub socket_owner: Option<String>,
    /// Group of Unix sockets. Default: unchanged.
    pub socket_group: Option<String>,
    /// Header added by the `tag` action. Default: `X-Mxsentry`.
    #[serde(deserialize_with = "de::one::<_, de::HeaderNameP>")]
    pub tag_header: String,
}

impl Default for MilterConfig {
    fn default() -> Self {
        MilterConfig {
            listen: vec![ListenSpec::Inet(SocketAddr::from((
                Ipv4Addr::LOCALHOST,
                8890,
            )))],
            hostname: system_hostname(),
            local_names: Vec::new(),
            local_addresses: Vec::new(),
            mode: Mode::Enforce,
            exempt_recipients: vec!["postmaster".into(), "abuse".into()],
            max_connections: 10_000,
            overflow_action: OverflowAction::Tempfail,
            negotiation_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            write_timeout: Duration::from_secs(30),
            max_frame: super::MIN_MAX_FRAME,
            max_macro_frame: 16 * 1024,
            max_macros: 128,
            max_recipients: 1000,
            worker_threads: 1,
            socket_mode: None,
            socket_owner: None,
            socket_group: None,
            tag_header: "X-Mxsentry".into(),
        }
    }
}

impl MilterConfig {
    /// Whether `name` is our host name or one of `local_names` (case-insensitive, a trailing
    /// dot ignored).
    pub fn is_local_name(&self, name: &str) -> bool {
        let name = name.strip_suffix('.').unwrap_or(name);
        self.hostname.eq_ignore_ascii_case(name)
            || self
                .local_names
                .iter()
                .any(|n| n.eq_ignore_ascii_case(name))
    }

    /// Whether the recipient local part is in `exempt_recipients` (case-insensitive).
    pub fn is_exempt_recipient(&self, local_part: &str) -> bool {
        self.exempt_recipients
            .iter()
            .any(|r| r.eq_ignore_ascii_case(local_part))
    }
}

/// The machine's host name, lowercased, or `localhost`.
fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .and_then(|h| values::check_dns_name(h.trim()).ok())
        .unwrap_or_else(|| "localhost".to_string())
}

/// `[trusted]`: clients that skip every check.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrustedConfig {
    /// Trusted client networks; bare addresses are /32 or /128.
    /// Default: `127.0.0.0/8`, `::1/128`.
    #[serde(deserialize_with = "de::list::<_, de::NetworkP>")]
    pub networks: Vec<IpNet>,
    /// Whether SMTP-AUTHenticated clients are trusted. Default: true.
    pub authenticated: bool,
}

impl Default for TrustedConfig {
    #[allow(clippy::expect_used, reason = "a constant prefix length of 8")]
    fn default() -> Self {
        TrustedConfig {
            networks: vec![
                IpNet::V4(Ipv4Net::new(Ipv4Addr::new(127, 0, 0, 0), 8).expect("prefix <= 32")),
                IpNet::from(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            ],
            authenticated: true,
        }
    }
}

impl TrustedConfig {
    /// Whether `ip` is in a trusted network; an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`)
    /// counts as its IPv4 address.
    pub fn is_trusted_ip(&self, ip: IpAddr) -> bool {
        let mapped = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.networks
            .iter()
            .any(|net| net.contains(&ip) || mapped.is_some_and(|v4| net.contains(&v4)))
    }
}
/// Where greylisting state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// `"embedded"`: a local store directory at `greylist.path`.
    #[default]
    Embedded,
    /// `"redis"`: a Redis server at `greylist.redis_url`, shared between MX hosts.
    Redis,
}

/// `[greeting]`: hold the reply to CONNECT (so the MTA's 220 banner) for some clients.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GreetingConfig {
    /// How long the banner is held, for `networks` and for findings whose action is
    /// `"delay"`. Must stay below the MTA's milter command timeout (Postfix
    /// `milter_command_timeout`, 30s by default; sendmail `T=S:`), so at most 25s. Default: 5s.
    #[serde(deserialize_with = "de::one::<_, de::DurationP>")]
    pub delay: Duration,
    /// Client networks whose banner is always held. Default: none.
    #[serde(deserialize_with = "de::list::<_, de::NetworkP>")]
    pub networks: Vec<IpNet>,
}

impl Default for GreetingConfig {
    fn default() -> Self {
        GreetingConfig {
            delay: Duration::from_secs(5),
            networks: Vec::new(),
        }
    }
}

/// `[greylist]`: greylisting of (client, sender, recipient) triplets.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GreylistConfig {
    /// Whether greylisting runs. Default: true.
    pub enabled: bool,
    /// How long a new triplet is refused (must be shorter than `retry_window`). Default: 5m.
    #[serde(deserialize_with = "de::one::<_, de::DurationP>")]
    pub delay: Duration,
    /// How long after first sight a retry is accepted. Default: 2d.
    #[serde(deserialize_with = "de::one::<_, de::DurationP>")]
    pub retry_window: Duration,
    /// How long a passed triplet stays allowed without a new delay. Default: 24h.
    #[serde(deserialize_with = "de::one::<_, de::DurationP>")]
    pub autowhite: Duration,
    /// IPv4 clients are grouped by this prefix length (0..=32). Default: 24.
    #[serde(deserialize_with = "de::ipv4_prefix")]
    pub ipv4_prefix: u8,
    /// IPv6 clients are grouped by this prefix length (0..=128). Default: 64.
    #[serde(deserialize_with = "de::ipv6_prefix")]
    pub ipv6_prefix: u8,
    /// Group clients by the domain of a verified PTR name (outbound pools). Default: true.
    pub pool_by_rdns: bool,
    /// A client that passed this many triplets skips greylisting (0: never). Default: 5.
    pub client_autowhite_after: u32,
    /// `"embedded"` or `"redis"`. Default: embedded.
    pub store: StoreKind,
    /// Directory of the embedded store (a file there, from mxsentry 0.1, is migrated at the first
    /// open). Default: `/var/lib/mxsentry/greylist.db`.
    #[serde(deserialize_with = "de::one::<_, de::PathP>")]
    pub path: PathBuf,
    /// Redis server (`redis://`, `rediss://` for TLS, or `unix://`). Default: `redis://127.0.0.1:6379/0`.
    #[serde(deserialize_with = "de::one::<_, de::RedisUrlP>")]
    pub redis_url: String,
    /// Redis Sentinels (`redis://host:26379[/db]` or `rediss://`) that name the primary for
    /// `redis_master`; instead of `redis_url`. Failovers are followed without a restart.
    #[serde(deserialize_with = "de::list::<_, de::RedisSentinelUrlP>")]
    pub redis_sentinels: Vec<String>,
    /// Seed nodes of a Redis Cluster (`redis://host:7000`; the others are discovered); instead
    /// of `redis_url`. A client's keys share one hash slot.
    #[serde(deserialize_with = "de::list::<_, de::RedisClusterUrlP>")]
    pub redis_cluster: Vec<String>,
    /// The name the sentinels monitor the primary under (with `redis_sentinels`).
    #[serde(deserialize_with = "de::opt::<_, de::NonEmptyP>")]
    pub redis_master: Option<String>,
    /// ACL user name for Redis (instead of one in the URL). Default: none.
    #[serde(deserialize_with = "de::opt::<_, de::NonEmptyP>")]
    pub redis_username: Option<String>,
    /// File holding the Redis password (one line), so no secret sits in milter.toml; read at
    /// start and for every new connection. Default: none.
    #[serde(deserialize_with = "de::opt::<_, de::PathP>")]
    pub redis_password_file: Option<PathBuf>,
    /// PEM CA certificate(s) trusted for `rediss://` instead of the system's. Default: none.
    #[serde(deserialize_with = "de::opt::<_, de::PathP>")]
    pub redis_ca_file: Option<PathBuf>,
    /// How often the embedded store commits durably (group commit): what `kill -9` can lose at
    /// most. `"0s"`: every update is durable before the reply goes out. Default: 1s.
    #[serde(deserialize_with = "de::one::<_, de::DurationP>")]
    pub commit_interval: Duration,
    /// Most greylist writes the embedded store keeps in memory while the disk does not take
    /// them (slow, full, read-only); beyond it greylisting fails open. ~150 bytes each.
    /// Default: 100000.
    #[serde(deserialize_with = "de::max_uncommitted")]
    pub max_uncommitted: u64,
    /// Store hashed triplet keys instead of addresses (privacy). Default: false.
    pub hash_keys: bool,
    /// The 4xx reply while greylisted; `{remaining}` is the seconds left.
    /// Default: `450 4.7.1 Greylisted, try again in {remaining} seconds`.
    #[serde(deserialize_with = "de::one::<_, de::TempReplyP>")]
    pub reply: String,
    /// Files of clients that skip greylisting (and nothing else): IPs, networks, FCrDNS-verified
    /// names, `/regex/`. Reloaded with SIGHUP. Default: none.
    #[serde(deserialize_with = "de::list::<_, de::PathP>")]
    pub allow_client_files: Vec<PathBuf>,
    /// Files of senders that skip greylisting (`user@domain`, `domain`, `user@`, `@domain`,
    /// `/regex/`). Default: none.
    #[serde(deserialize_with = "de::list::<_, de::PathP>")]
    pub allow_sender_files: Vec<PathBuf>,
    /// Files of recipients that skip greylisting (same format as senders). Default: none.
    #[serde(deserialize_with = "de::list::<_, de::PathP>")]
    pub allow_recipient_files: Vec<PathBuf>,
}

impl Default for GreylistConfig {
    fn default() -> Self {
        GreylistConfig {
            enabled: true,
            delay: Duration::from_secs(5 * 60),
            retry_window: Duration::from_secs(2 * 86_400),
            autowhite: Duration::from_secs(24 * 3_600),
            ipv4_prefix: 24,
            ipv6_prefix: 64,
            pool_by_rdns: true,
            client_autowhite_after: 5,
            store: StoreKind::Embedded,
            path: PathBuf::from("/var/lib/mxsentry/greylist.db"),
            redis_url: "redis://127.0.0.1:6379/0".into(),
            redis_sentinels: Vec::new(),
            redis_cluster: Vec::new(),
            redis_master: None,
            redis_username: None,
            redis_password_file: None,
            redis_ca_file: None,
            commit_interval: Duration::from_secs(1),
            max_uncommitted: crate::store::embedded::DEFAULT_MAX_UNCOMMITTED,
            hash_keys: false,
            reply: "450 4.7.1 Greylisted, try again in {remaining} seconds".into(),
            allow_client_files: Vec::new(),
            allow_sender_files: Vec::new(),
            allow_recipient_files: Vec::new(),
        }
    }
}

/// `[sender_rules]`: sendmail access file and sender regexes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SenderRulesConfig {
    /// Access file (`sender  ACTION` lines). Default: none.
    #[serde(deserialize_with = "de::opt::<_, de::PathP>")]
    pub access_file: Option<PathBuf>,
    /// Regex rules (`[[sender_rules.regex]]`), matched against the envelope sender in order.
    /// Default: none.
    pub regex: Vec<RegexRule>,
}

/// One `[[sender_rules.regex]]` rule. `pattern` and `action` are required.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexRule {
    /// The regex matched against the envelope sender address. Required.
    pub pattern: Spanned<String>,
    /// The action, as understood by `checks::sender_rules::Action::parse`. Required.
    pub action: Spanned<String>,
    /// Match regardless of case. Default: true.
    #[serde(default = "default_true")]
    pub case_insensitive: bool,
}

fn default_true() -> bool {
    true
}

impl RegexRule {
    /// The compiled pattern (validated when the configuration was parsed).
    pub fn compile(&self) -> Result<regex::Regex, regex::Error> {
        regex::RegexBuilder::new(self.pattern.get_ref())
            .case_insensitive(self.case_insensitive)
            .build()
    }
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the HTTP metrics endpoint; `""` or `"off"` disables it.
    /// Default: `127.0.0.1:9890`.
    #[serde(deserialize_with = "de::metrics_listen")]
    pub listen: Option<SocketAddr>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 9890))),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `"text"`: human-readable lines.
    #[default]
    Text,
    /// `"json"`: one JSON object per line.
    Json,
}

/// `[log]`: logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `"text"` or `"json"`. Default: text.
    pub format: LogFormat,
    /// Level or filter directives, e.g. `"info"` or `"info,mxsentry=debug"`.
    /// Default: `info`.
    #[serde(deserialize_with = "de::one::<_, de::NonEmptyP>")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}
