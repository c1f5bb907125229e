//! The shadow policy: a candidate milter.toml (`[shadow] config`) decided beside the live
//! policy for every recipient, never enforced.
//!
//! It is loaded with the same loader and rule files as the live one and validated alike (a bad
//! candidate is refused with `file:line: reason`, at start and at reload). Its `[milter]
//! listen`, `[metrics]`, `[control]` and `[shadow]` keys are ignored: the daemon has one set of
//! sockets; so are its resolver settings (`[dns] nameservers`, `cache_size`, `max_concurrent`):
//! it uses the live resolver. It never writes the greylist store (its greylister is read-only) and shares the
//! live policy's resolver, so its cache: where both policies ask DNS the same questions the
//! shadow reuses the session's lookups and asks nothing (see [`Policy::shadow_shares_lookups`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::checks::greylist::Greylister;
use crate::config::Config;
use crate::store::GreylistStore;

use super::Policy;

/// The candidate attached to a live policy.
pub(super) struct Shadow {
    pub(super) path: PathBuf,
    pub(super) policy: Box<Policy>,
    /// The candidate asks DNS exactly what the live policy asks: it decides from the session's
    /// lookups.
    pub(super) shares_lookups: bool,
}

impl Policy {
    /// The candidate policy, when `[shadow] config` names one.
    pub fn shadow(&self) -> Option<&Policy> {
        self.shadow.as_ref().map(|s| &*s.policy)
    }

    /// The candidate's file.
    pub fn shadow_path(&self) -> Option<&Path> {
        self.shadow.as_ref().map(|s| s.path.as_path())
    }

    /// Whether the candidate decides from the session's own DNS lookups (it asks the same
    /// questions); otherwise it has lookups of its own, through the same resolver and cache.
    pub fn shadow_shares_lookups(&self) -> bool {
        self.shadow.as_ref().is_some_and(|s| s.shares_lookups)
    }

    /// Whether the live policy or its candidate may greylist (then the store is opened).
    pub fn may_greylist_any(&self) -> bool {
        self.config.may_greylist() || self.shadow().is_some_and(|s| s.config.may_greylist())
    }

    /// Loads the candidate `[shadow] config` names (if any) and attaches it.
    pub(super) fn load_shadow(mut self, live_path: &Path) -> Result<Policy, String> {
        let Some(path) = self.config.shadow.config.clone() else {
            return Ok(self);
        };
        if path == live_path {
            return Err(format!(
                "{}: [shadow] config names this file itself: give the candidate its own file",
                live_path.display()
            ));
        }
        let config = Config::load(&path).map_err(|e| e.to_string())?;
        let mut candidate = Policy::from_config(&config)
            .map_err(|e| format!("{} (shadow candidate): {e}", path.display()))?;
        if let Some(dns) = Arc::get_mut(&mut candidate.dns) {
            // One resolver, one cache, one bound on queries in flight for both policies; the
            // candidate's own lookups are not counted in the DNS list metrics twice.
            dns.dns = self.dns.dns.clone();
            dns.quiet = true;
        }
        let ignored = ignored_keys_that_differ(&self.config, &config);
        if !ignored.is_empty() {
            tracing::info!(
                shadow = %path.display(),
                "shadow candidate: {} ignored (the live configuration's apply)",
                ignored.join(", ")
            );
        }
        let shares_lookups = same_lookups(&self, &candidate);
        self.shadow = Some(Shadow {
            path,
            policy: Box::new(candidate),
            shares_lookups,
        });
        Ok(self)
    }

    /// Gives the candidate the store, read-only (called by [`Policy::with_greylist_store`]).
    pub(super) fn attach_shadow_store(&mut self, store: &Arc<dyn GreylistStore>) {
        if let Some(s) = &mut self.shadow {
            let g = Greylister::new(store.clone(), &s.policy.config.greylist).read_only();
            s.policy.greylister = Some(Arc::new(g));
        }
    }
}

/// The candidate's keys the daemon ignores, where they differ from the live ones.
fn ignored_keys_that_differ(live: &Config, candidate: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    if format!("{:?}", live.milter.listen) != format!("{:?}", candidate.milter.listen) {
        keys.push("[milter] listen");
    }
    if format!("{:?}", live.metrics) != format!("{:?}", candidate.metrics) {
        keys.push("[metrics]");
    }
    let resolver = |c: &Config| {
        let d = &c.dns;
        format!("{:?} {} {}", d.nameservers, d.cache_size, d.max_concurrent)
    };
    if resolver(live) != resolver(candidate) {
        keys.push("[dns] nameservers, cache_size, max_concurrent");
    }
    if live.control.socket != candidate.control.socket {
        keys.push("[control]");
    }
    if candidate.shadow.config.is_some() {
        keys.push("[shadow]");
    }
    keys
}

/// Whether both policies start the same lookups with the same settings (so the results of one
/// mean the same to the other: zone weights, replies and temp-failure handling are carried in
/// them).
fn same_lookups(live: &Policy, candidate: &Policy) -> bool {
    let (l, c) = (&live.dns, &candidate.dns);
    let key = |p: &Policy| {
        let cfg = &p.config;
        format!(
            "{:?} {:?} {:?} {:?} {:?} {}",
            cfg.dns.timeout,
            cfg.dnsbl.zones,
            cfg.dnsbl.domain_zones,
            cfg.dnsbl.allow_zones,
            cfg.rdns.dynamic_patterns,
            cfg.rdns.trust_mta
        )
    };
    (l.active, l.rdns, l.helo_resolves) == (c.active, c.rdns, c.helo_resolves)
        && key(live) == key(candidate)
}
