//! The RFC 5782 §5 probes and the background task that runs them.
//!
//! Test points: IP zones (block and allow lists) must list 127.0.0.2 and must not list
//! 127.0.0.1; they are also asked for the IPv6 points ::ffff:7f00:2 / ::ffff:7f00:1 in nibble
//! form. Many lists carry no IPv6 data and answer NXDOMAIN for both, so the IPv6 points are
//! optional: a missing ::ffff:7f00:2 is neutral, a listed ::ffff:7f00:1 (a wildcard) fails the
//! zone. Domain zones must list `test` and must not list `invalid`.
//!
//! Probes go through a resolver of their own built from `[dns]` (the daemon's name servers
//! and timeout) with no cache, so every round asks the name servers afresh; the task runs
//! beside the sessions and never delays one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use super::board::{configured, HealthBoard};
use super::health::{judge_probe, ProbeVerdict, TestAnswer, TestPoint};
use super::{join_all, ZoneKind};
use crate::config::{Config, DnsConfig, DnsblConfig, DnsblZone, HealthCheck};
use crate::dns::{reversed_ip, Dns, DnsError};

/// The test points of a zone of a kind, with the name to prepend to the zone: RFC 5782's, or
/// the zone's `test_name` (domain lists) / `test_address` (IP lists) as the point it must list.
pub fn test_points(zone: &DnsblZone, kind: ZoneKind) -> Vec<(TestPoint, String)> {
    let point = |label: &str, must_list, optional| TestPoint {
        label: label.to_string(),
        must_list,
        optional,
    };
    match kind {
        ZoneKind::Domain => {
            let listed = zone.test_name.as_deref().unwrap_or("test");
            vec![
                (point(listed, true, false), listed.into()),
                (point("invalid", false, false), "invalid".into()),
            ]
        }
        ZoneKind::Ip | ZoneKind::Allow => {
            // Nibble form of the mapped address itself: `reversed_ip` would fold it to IPv4.
            let v6 = |last: u16| {
                let ip = Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0x7f00, last);
                nibbles(ip)
            };
            let listed = zone.test_address.unwrap_or(Ipv4Addr::new(127, 0, 0, 2));
            vec![
                (
                    point(&listed.to_string(), true, false),
                    reversed_ip(IpAddr::V4(listed)),
                ),
                (point("127.0.0.1", false, false), "1.0.0.127".into()),
                (point("::ffff:7f00:2", true, true), v6(2)),
                (point("::ffff:7f00:1", false, true), v6(1)),
            ]
        }
    }
}

fn nibbles(ip: Ipv6Addr) -> String {
    let hex: String = ip.octets().iter().map(|b| format!("{b:02x}")).collect();
    let mut out = String::with_capacity(64);
    for c in hex.chars().rev() {
        if !out.is_empty() {
            out.push('.');
        }
        out.push(c);
    }
    debug_assert_eq!(out.len(), 63, "{}", reversed_ip(IpAddr::V6(ip)));
    out
}

/// Probes one zone's test points (all at once) and judges the answers.
pub async fn probe_zone(dns: &Dns, zone: &DnsblZone, kind: ZoneKind) -> ProbeVerdict {
    let points = test_points(zone, kind);
    let answers = join_all(points.iter().map(|(_, prefix)| async move {
        let query = format!("{prefix}.{}", zone.zone);
        let lookup = dns.ipv4(&query);
        let answer: TestAnswer = match zone.timeout {
            Some(t) => tokio::time::timeout(t, lookup)
                .await
                .unwrap_or(Err(DnsError::Timeout)),
            None => lookup.await,
        };
        match answer {
            Err(e) if e.is_negative() => Ok(Vec::new()),
            other => other,
        }
    }))
    .await;
    let judged: Vec<(TestPoint, TestAnswer)> =
        points.into_iter().map(|(p, _)| p).zip(answers).collect();
    judge_probe(&judged)
}

/// The resolver probes use: the daemon's name servers and timeout, no cache.
pub fn probe_resolver(dns: &DnsConfig) -> Result<Dns, String> {
    Dns::new(&DnsConfig {
        cache_size: 0,
        ..dns.clone()
    })
}

/// One round: probes every configured zone at once and applies the verdicts. A probe-off
/// zone is not asked: it passes unless the sessions saw it give a bad answer since the last
/// round (its listing rate is judged either way).
pub async fn probe_round(board: &HealthBoard, dns: &Dns, config: &DnsblConfig) {
    let zones = configured(config);
    let verdicts = join_all(zones.iter().map(|(kind, zone)| async move {
        match zone.health_check {
            HealthCheck::Off => None,
            HealthCheck::Rfc5782 => Some(probe_zone(dns, zone, *kind).await),
        }
    }))
    .await;
    let now = crate::store::unix_now();
    for ((kind, zone), verdict) in zones.iter().zip(verdicts) {
        if let Some(entry) = board.entry(*kind, &zone.zone) {
            let verdict = verdict.unwrap_or_else(|| match entry.take_bad_answer() {
                Some(reason) => ProbeVerdict::Fail(reason),
                None => ProbeVerdict::Pass,
            });
            board.apply(&entry, &verdict, now);
        }
    }
}

/// The daemon's probe task: a round at once, then every `health_check_interval` of the
/// configuration in force (read afresh each round, so a reload applies), and at once after a
/// reload. Ends when `stop` turns true.
pub async fn run(
    board: Arc<HealthBoard>,
    current: impl Fn() -> Config + Send,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let config = current();
        let interval = config.dnsbl.health_check_interval;
        let zones = configured(&config.dnsbl).len();
        if !interval.is_zero() && zones > 0 {
            match probe_resolver(&config.dns) {
                Ok(dns) => probe_round(&board, &dns, &config.dnsbl).await,
                Err(e) => tracing::warn!("zone health probes cannot run: {e}"),
            }
        }
        // Off: sleep until a reload says otherwise.
        let wait = if interval.is_zero() {
            Duration::from_secs(3600)
        } else {
            interval
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = board.woken() => {}
            changed = stop.changed() => if changed.is_err() { return },
        }
        if *stop.borrow() {
            return;
        }
    }
}
