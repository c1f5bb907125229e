//! Configuration: the TOML file (`milter.toml`), its defaults and its validation.
//!
//! Every section and every key is optional; [`Config::default`] is a configuration that runs on
//! a fresh machine. [`Config::load`] reads and checks a file; errors name the file and, where a
//! value is at fault, its line (`/etc/mxsentry/milter.toml:7: unknown field ...`).
//!
//! Values are checked while they are deserialized (durations, listen addresses, networks,
//! return codes, SMTP replies, ranges), so serde's error carries the value's span; checks that
//! need more than one value run afterwards in `validate`.

mod check_sections;
mod control;
mod de;
mod duration;
mod listen;
mod sections;
mod shadow;
mod values;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use check_sections::{
    DnsConfig, DnsblConfig, DnsblZone, HealthCheck, HeloConfig, RdnsConfig, TempFailureAction,
};
pub use control::{ControlConfig, DEFAULT_CONTROL_SOCKET};
pub use de::MIN_MAX_FRAME;
pub use duration::{format_duration, parse_duration};
pub use listen::ListenSpec;
pub use sections::{
    Action, GreetingConfig, GreylistConfig, LogConfig, LogFormat, MetricsConfig, MilterConfig,
    Mode, OverflowAction, RegexRule, SenderRulesConfig, StoreKind, TrustedConfig,
};
pub use shadow::ShadowConfig;
pub use values::{is_listing_answer, ReturnCode};

/// A configuration error: `file:line: reason`, or `file: reason` when no line applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The configuration file.
    pub file: PathBuf,
    /// The 1-based line of the offending key or value, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file.display(), line, self.reason),
            None => write!(f, "{}: {}", self.file.display(), self.reason),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[milter]`: sockets, our names, mode, limits.
    pub milter: MilterConfig,
    /// `[trusted]`: clients that skip all checks.
    pub trusted: TrustedConfig,
    /// `[dns]`: resolver settings.
    pub dns: DnsConfig,
    /// `[helo]`: HELO/EHLO checks.
    pub helo: HeloConfig,
    /// `[rdns]`: reverse-DNS (FCrDNS) checks.
    pub rdns: RdnsConfig,
    /// `[dnsbl]`: DNS block and allow lists.
    pub dnsbl: DnsblConfig,
    /// `[greeting]`: delayed SMTP banner (greet_pause).
    pub greeting: GreetingConfig,
    /// `[greylist]`: greylisting.
    pub greylist: GreylistConfig,
    /// `[sender_rules]`: access file and sender regexes.
    pub sender_rules: SenderRulesConfig,
    /// `[metrics]`: the Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// `[log]`: logging.
    pub log: LogConfig,
    /// `[control]`: the control socket (live administration).
    pub control: ControlConfig,
    /// `[shadow]`: a candidate configuration decided beside this one, never enforced.
    pub shadow: ShadowConfig,
}

impl Config {
    /// Whether any finding is configured with `action` (HELO, the rDNS outcomes, the DNSBL
    /// actions): decides what to negotiate and which stores to open.
    pub fn any_finding_action(&self, action: Action) -> bool {
        [
            self.helo.action,
            self.rdns.no_ptr,
            self.rdns.forged,
            self.rdns.dynamic,
            self.dnsbl.action,
            self.dnsbl.below_threshold,
        ]
        .contains(&action)
    }

    /// Whether any DNS finding can matter: with every rDNS action `off`, no lists and no HELO
    /// resolution check, no lookup is started at all. (An allow list counts: it skips
    /// greylisting.)
    pub fn dns_checks_active(&self) -> bool {
        let d = &self.dnsbl;
        self.rdns_checks_active()
            || !d.zones.is_empty()
            || !d.domain_zones.is_empty()
            || (!d.allow_zones.is_empty() && self.may_greylist())
            || self.helo.check_resolves
    }

    /// Whether any rDNS outcome has an action other than `off`.
    pub fn rdns_checks_active(&self) -> bool {
        let r = &self.rdns;
        [r.no_ptr, r.forged, r.dynamic]
            .iter()
            .any(|a| *a != Action::Off)
    }

    /// Whether greylisting can apply: for everyone, or for clients a finding selects.
    pub fn may_greylist(&self) -> bool {
        self.greylist.enabled || self.any_finding_action(Action::Greylist)
    }

    /// Where the daemon looks for its configuration unless told otherwise.
    pub const DEFAULT_PATH: &'static str = "/etc/mxsentry/milter.toml";

    /// Reads and checks the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: None,
            reason: format!("cannot read: {e}"),
        })?;
        let config = Config::parse(&text, path)?;
        config.check_files(&text, path)?;
        Ok(config)
    }

    /// The checks that read other files the configuration names (`parse` reads nothing but
    /// its text): the Redis password and CA files, as the store will read them.
    fn check_files(&self, text: &str, path: &Path) -> Result<(), ConfigError> {
        let g = &self.greylist;
        if g.store != StoreKind::Redis {
            return Ok(());
        }
        let spec = crate::store::redis::RedisSpec::from_config(g);
        crate::store::redis::check_spec(&spec).map_err(|reason| {
            let key = if reason.contains("redis_ca_file") {
                "redis_ca_file"
            } else if reason.contains("password") {
                "redis_password_file"
            } else {
                "redis_url"
            };
            ConfigError {
                file: path.to_path_buf(),
                line: key_line(text, "greylist", key),
                reason,
            }
        })
    }

    /// Parses and checks configuration text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let mut reason = e
                .message()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(": ");
            if reason.is_empty() {
                // toml says nothing about some characters it refuses (a NUL in a comment,
                // found by fuzz/fuzz_targets/config.rs): the error must still say something.
                reason = match e.span() {
                    Some(span) => format!(
                        "invalid TOML at column {} (a control character?)",
                        column_at(text, span.start)
                    ),
                    None => "invalid TOML".into(),
                };
            }
            ConfigError {
                file: path.to_path_buf(),
                line: e.span().map(|span| line_at(text, span.start)),
                reason,
            }
        })?;
        config.validate(text, path)?;
        Ok(config)
    }

    /// The checks that need more than one value, or that run on `Spanned` fields.
    fn validate(&self, text: &str, path: &Path) -> Result<(), ConfigError> {
        let error = |line: Option<usize>, reason: String| ConfigError {
            file: path.to_path_buf(),
            line,
            reason,
        };
        if self.greeting.delay > std::time::Duration::from_secs(25) {
            return Err(error(
                key_line(text, "greeting", "delay"),
                "greeting.delay must be at most 25s: the MTA gives up on the milter after its \
                 command timeout (30s in Postfix) and applies milter_default_action"
                    .into(),
            ));
        }
        let interval = self.dnsbl.health_check_interval;
        if !interval.is_zero() && interval < std::time::Duration::from_secs(1) {
            return Err(error(
                key_line(text, "dnsbl", "health_check_interval"),
                format!(
                    "dnsbl.health_check_interval {} is too short: \"0s\" (off) or at least 1s",
                    duration::format_duration(interval)
                ),
            ));
        }
        self.validate_zone_probes(text, path)?;
        let g = &self.greylist;
        if g.delay >= g.retry_window {
            return Err(error(
                key_line(text, "greylist", "retry_window").or(key_line(text, "greylist", "delay")),
                format!(
                    "greylist.delay ({}) must be shorter than greylist.retry_window ({})",
                    duration::format_duration(g.delay),
                    duration::format_duration(g.retry_window)
                ),
            ));
        }
        if !g.redis_cluster.is_empty() {
            let other = ["redis_url", "redis_sentinels"]
                .into_iter()
                .find(|k| key_line(text, "greylist", k).is_some());
            if let Some(other) = other {
                return Err(error(
                    key_line(text, "greylist", other),
                    format!("greylist: set one of {other} and redis_cluster, not both"),
                ));
            }
        }
        if !g.redis_sentinels.is_empty() {
            if key_line(text, "greylist", "redis_url").is_some() {
                return Err(error(
                    key_line(text, "greylist", "redis_url"),
                    "greylist: set one of redis_url and redis_sentinels, not both".into(),
                ));
            }
            if g.redis_master.is_none() {
                return Err(error(
                    key_line(text, "greylist", "redis_sentinels"),
                    "greylist.redis_sentinels needs redis_master (the name the sentinels \
                     monitor the primary under)"
                        .into(),
                ));
            }
        } else if g.redis_master.is_some() {
            return Err(error(
                key_line(text, "greylist", "redis_master"),
                "greylist.redis_master is only used with redis_sentinels".into(),
            ));
        }
        if let Some(socket) = &self.control.socket {
            let clash = self.milter.listen.iter().any(|l| match l {
                ListenSpec::Unix(p) => p == socket,
                _ => false,
            });
            if clash {
                return Err(error(
                    key_line(text, "control", "socket"),
                    format!(
                        "control.socket {} is also a milter.listen socket: give each its own path",
                        socket.display()
                    ),
                ));
            }
        }
        for rule in &self.sender_rules.regex {
            if let Err(reason) = values::check_regex(rule.pattern.get_ref(), rule.case_insensitive)
            {
                return Err(error(
                    Some(line_at(text, rule.pattern.span().start)),
                    reason,
                ));
            }
            if let Err(reason) = crate::checks::sender_rules::Action::parse(rule.action.get_ref()) {
                let line = Some(line_at(text, rule.action.span().start));
                return Err(error(line, reason.to_string()));
            }
        }
        Ok(())
    }
}

impl Config {
    /// `test_name` belongs to domain lists, `test_address` to IP lists, and neither to a list
    /// whose `health_check` is `"off"` (nothing would probe it).
    fn validate_zone_probes(&self, text: &str, path: &Path) -> Result<(), ConfigError> {
        let sections = [
            ("dnsbl.zones", &self.dnsbl.zones, false),
            ("dnsbl.domain_zones", &self.dnsbl.domain_zones, true),
            ("dnsbl.allow_zones", &self.dnsbl.allow_zones, false),
        ];
        for (section, zones, domain) in sections {
            for (index, zone) in zones.iter().enumerate() {
                let at = |key| ConfigError {
                    file: path.to_path_buf(),
                    line: table_key_line(text, section, index, key),
                    reason: String::new(),
                };
                let wrong = match (zone.test_name.is_some(), zone.test_address.is_some()) {
                    (true, _) if !domain => {
                        Some(("test_name", "an IP list is probed at test_address"))
                    }
                    (_, true) if domain => {
                        Some(("test_address", "a domain list is probed at test_name"))
                    }
                    _ => None,
                };
                if let Some((key, why)) = wrong {
                    return Err(ConfigError {
                        reason: format!(
                            "[[{section}]] {}: {key} is not used here: {why}",
                            zone.zone
                        ),
                        ..at(key)
                    });
                }
                let key = if zone.test_name.is_some() {
                    "test_name"
                } else {
                    "test_address"
                };
                if zone.health_check == HealthCheck::Off
                    && (zone.test_name.is_some() || zone.test_address.is_some())
                {
                    return Err(ConfigError {
                        reason: format!(
                            "[[{section}]] {}: {key} is not used with health_check = \"off\" \
                             (nothing is probed): remove one of them",
                            zone.zone
                        ),
                        ..at(key)
                    });
                }
            }
        }
        Ok(())
    }
}

/// The line of `key = ...` in the `index`th (0-based) `[[section]]` table of `text`.
fn table_key_line(text: &str, section: &str, index: usize, key: &str) -> Option<usize> {
    let mut seen = 0;
    let mut inside = false;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('[') {
            let header: String = line
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            inside = line.starts_with("[[") && header == section && {
                seen += 1;
                seen == index + 1
            };
        } else if inside {
            if let Some(rest) = line.strip_prefix(key) {
                if rest.trim_start().starts_with('=') {
                    return Some(n + 1);
                }
            }
        }
    }
    None
}

/// The 1-based line holding byte `offset` of `text`.
fn line_at(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The 1-based column (in characters) of byte `offset` of `text`.
fn column_at(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    let start = text.as_bytes()[..end]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    text.get(start..end).map_or(1, |s| s.chars().count() + 1)
}

/// The line of `key = ...` inside the `[section]` table, for checks that run after
/// deserializing plain values (found by a simple scan: dotted or inline forms give `None`).
fn key_line(text: &str, section: &str, key: &str) -> Option<usize> {
    let mut current = String::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('[') {
            let header = line.trim_start_matches('[').split(']').next().unwrap_or("");
            current = header.chars().filter(|c| !c.is_whitespace()).collect();
        } else if current == section {
            if let Some(rest) = line.strip_prefix(key) {
                if rest.trim_start().starts_with('=') {
                    return Some(index + 1);
                }
            }
        }
    }
    None
}
