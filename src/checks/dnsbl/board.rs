//! The daemon's live view of every configured zone's health ([`HealthBoard`]), shared by the
//! probe task (which judges), the sessions (which ask "does this zone's listing count?" and
//! feed the listing-rate window), `status` and the metrics.
//!
//! The hot path ([`HealthBoard::observe`]) takes a read lock on a short list of zones, one
//! small mutex for the zone's window (an O(1) write) and reads an atomic flag.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use super::health::{Health, ListingWindow, ProbeVerdict, ZoneState};
use super::{ZoneKind, ZoneOutcome, ZoneResult};
use crate::config::{DnsblConfig, HealthCheck};

/// One zone's live state.
#[derive(Debug)]
pub struct ZoneEntry {
    pub zone: String,
    pub kind: ZoneKind,
    /// `health_check = "off"`: never probed, trusted from the start; each round judges only
    /// its listing rate and the answers the sessions saw ([`Self::bad_answer`]).
    pub probe_off: bool,
    /// Mirrors `state.health == Healthy`, read without a lock on every lookup.
    trusted: AtomicBool,
    state: Mutex<ZoneState>,
    window: Mutex<ListingWindow>,
    /// A probe-off zone's first refusal (127.255.255.x) or non-127/8 answer since the last
    /// round: what a probe would have caught.
    bad_answer: Mutex<Option<String>>,
}

impl ZoneEntry {
    fn new(zone: &str, kind: ZoneKind, probe_off: bool) -> ZoneEntry {
        ZoneEntry {
            zone: zone.to_string(),
            kind,
            probe_off,
            trusted: AtomicBool::new(false),
            state: Mutex::new(ZoneState::default()),
            window: Mutex::new(ListingWindow::default()),
            bad_answer: Mutex::new(None),
        }
    }

    /// Takes the bad answer a probe-off zone gave since the last round.
    pub fn take_bad_answer(&self) -> Option<String> {
        self.bad_answer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    fn note_bad_answer(&self, result: &ZoneResult) {
        let reason = match result.outcome {
            ZoneOutcome::Refused(code) => Some(format!("answer {code} (refused by the list)")),
            _ => result
                .answers
                .iter()
                .find(|a| a.octets()[0] != 127)
                .map(|a| format!("answer {a} outside 127.0.0.0/8 (wildcard or squatted domain)")),
        };
        if let Some(reason) = reason {
            let mut bad = self.bad_answer.lock().unwrap_or_else(|e| e.into_inner());
            bad.get_or_insert(reason);
        }
    }

    pub fn state(&self) -> ZoneState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl ZoneEntry {
    /// A probe-off zone is healthy from the start (logged once).
    fn trust_unprobed(&self, now: u64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.health = Health::Healthy;
        state.since = Some(now);
        drop(state);
        self.trusted.store(true, Ordering::Relaxed);
        tracing::info!(
            zone = %self.zone,
            list = self.kind.check_name(),
            "DNS list zone health: {} probe off (health_check = \"off\") -> healthy; its \
             listings count unless it lists nearly every client or gives refusal answers",
            self.zone
        );
    }
}

/// A zone's state as shown by `status` and `explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneReport {
    pub zone: String,
    pub kind: ZoneKind,
    pub state: ZoneState,
    /// `health_check = "off"`.
    pub probe_off: bool,
}

/// Every configured zone's health; survives reloads (zones still configured keep their state).
#[derive(Debug, Default)]
pub struct HealthBoard {
    /// `health_check_interval` is not 0: listings count only from healthy zones.
    enabled: AtomicBool,
    zones: RwLock<Vec<Arc<ZoneEntry>>>,
    /// Woken on reload so new zones are probed at once.
    wake: tokio::sync::Notify,
}

impl HealthBoard {
    pub fn new(config: &DnsblConfig) -> Arc<HealthBoard> {
        let board = Arc::new(HealthBoard::default());
        board.reconcile(config);
        board
    }

    /// Adopts a (re)loaded configuration: zones still configured keep their state, new ones
    /// start unknown, removed ones are forgotten (and their metric dropped). Then [`wake`]
    /// the probe task once that configuration is in force.
    ///
    /// [`wake`]: Self::wake
    pub fn reconcile(&self, config: &DnsblConfig) {
        let enabled = !config.health_check_interval.is_zero();
        self.enabled.store(enabled, Ordering::Relaxed);
        let m = crate::metrics::metrics();
        let mut zones = self.zones.write().unwrap_or_else(|e| e.into_inner());
        let old = std::mem::take(&mut *zones);
        for (kind, z) in configured(config) {
            let probe_off = z.health_check == HealthCheck::Off;
            // A zone whose health_check changed starts afresh: trust comes from its new mode.
            let kept = old
                .iter()
                .find(|e| e.kind == kind && e.zone == z.zone && e.probe_off == probe_off);
            let entry = kept.cloned().unwrap_or_else(|| {
                let e = Arc::new(ZoneEntry::new(&z.zone, kind, probe_off));
                if enabled && !probe_off {
                    m.dnsbl_zone_healthy(&e.zone, false);
                }
                e
            });
            // Also a kept one that was never judged (the checks were off until this reload).
            if enabled && probe_off && entry.state().health == Health::Unknown {
                entry.trust_unprobed(crate::store::unix_now());
                m.dnsbl_zone_healthy(&entry.zone, true);
            }
            zones.push(entry);
        }
        for gone in old
            .iter()
            .filter(|e| !zones.iter().any(|z| Arc::ptr_eq(z, e)))
        {
            if !zones.iter().any(|z| z.zone == gone.zone) {
                m.dnsbl_zone_health_forget(&gone.zone);
            }
        }
    }

    /// Wakes the probe task: call once the policy with the reconciled configuration is in
    /// force (the task reads the configuration when it wakes), so new zones are probed at once.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// The zone's entry.
    pub fn entry(&self, kind: ZoneKind, zone: &str) -> Option<Arc<ZoneEntry>> {
        let zones = self.zones.read().unwrap_or_else(|e| e.into_inner());
        zones
            .iter()
            .find(|e| e.kind == kind && e.zone == zone)
            .cloned()
    }

    /// Hot path, once per zone answer: records the answer in the zone's listing-rate window and
    /// marks the result log-only (`distrust`) when the zone is not healthy.
    pub fn observe(&self, result: &mut ZoneResult, now: u64) {
        if !self.enabled() {
            return;
        }
        let zones = self.zones.read().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = zones
            .iter()
            .find(|e| e.kind == result.kind && e.zone == result.zone)
        else {
            return;
        };
        if entry.probe_off {
            entry.note_bad_answer(result);
        }
        let listed = match result.outcome {
            ZoneOutcome::Listed { .. } => true,
            ZoneOutcome::NotListed => false,
            ZoneOutcome::Refused(_) | ZoneOutcome::Error(_) => return mark(entry, result),
        };
        // The query name (client + zone) identifies the client within this zone.
        entry
            .window
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(&result.query, listed, now);
        mark(entry, result);
    }

    /// Applies a probe round's verdict to one zone at `now`: updates the state, the metric,
    /// and logs the change.
    pub fn apply(&self, entry: &ZoneEntry, verdict: &ProbeVerdict, now: u64) {
        let overlisting = entry
            .window
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .overlisting(now);
        let mut state = entry.state.lock().unwrap_or_else(|e| e.into_inner());
        let change = state.apply(verdict, overlisting, now);
        let healthy = state.health.is_healthy();
        drop(state);
        entry.trusted.store(healthy, Ordering::Relaxed);
        crate::metrics::metrics().dnsbl_zone_healthy(&entry.zone, healthy);
        let Some(change) = change else {
            if let ProbeVerdict::NoAnswer(e) = verdict {
                tracing::debug!(zone = %entry.zone, "zone health probe got no answer: {e}");
            }
            return;
        };
        let (old, new) = (change.old.describe(), change.new.describe());
        match &change.new {
            Health::Unhealthy(reason) => tracing::warn!(
                zone = %entry.zone,
                list = entry.kind.check_name(),
                old = %old,
                new = "unhealthy",
                reason = %reason,
                "DNS list zone health: {} {old} -> unhealthy: {reason}; its listings are \
                 log-only until it passes again",
                entry.zone
            ),
            _ => tracing::info!(
                zone = %entry.zone,
                list = entry.kind.check_name(),
                old = %old,
                new = %new,
                "DNS list zone health: {} {old} -> {new}; its listings count",
                entry.zone
            ),
        }
    }

    /// Every zone's state, in configuration order.
    pub fn report(&self) -> Vec<ZoneReport> {
        let zones = self.zones.read().unwrap_or_else(|e| e.into_inner());
        zones
            .iter()
            .map(|e| ZoneReport {
                zone: e.zone.clone(),
                kind: e.kind,
                state: e.state(),
                probe_off: e.probe_off,
            })
            .collect()
    }

    /// Resolves when [`wake`](Self::wake) was called (or had been called before).
    pub async fn woken(&self) {
        self.wake.notified().await
    }

    /// The entries, for the probe task.
    pub fn entries(&self) -> Vec<Arc<ZoneEntry>> {
        self.zones.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn mark(entry: &ZoneEntry, result: &mut ZoneResult) {
    if !entry.trusted.load(Ordering::Relaxed) {
        result.distrust = Some(
            entry
                .state()
                .health
                .distrust_reason()
                .unwrap_or_else(|| "not yet probed".into()),
        );
    }
}

/// Every configured zone with its kind, in configuration order.
pub fn configured(config: &DnsblConfig) -> Vec<(ZoneKind, &crate::config::DnsblZone)> {
    let ip = config.zones.iter().map(|z| (ZoneKind::Ip, z));
    let domain = config.domain_zones.iter().map(|z| (ZoneKind::Domain, z));
    let allow = config.allow_zones.iter().map(|z| (ZoneKind::Allow, z));
    ip.chain(domain).chain(allow).collect()
}

#[cfg(test)]
#[path = "board_tests.rs"]
mod tests;
