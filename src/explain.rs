//! `mxsentry explain`: what would happen to this client, HELO, sender and recipients, and why.
//!
//! Runs every check for real (DNS included, against the configured resolver) through the same
//! policy the daemon uses, so its answer is the daemon's answer.

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::checks::dnsbl::board::{HealthBoard, ZoneReport};
use crate::checks::dnsbl::health::Health;
use crate::checks::dnsbl::probe;
use crate::policy::{Decision, Envelope, Policy};

/// One explained SMTP transaction.
pub struct Query {
    pub client_ip: IpAddr,
    /// The MTA's verified client name; `None` → `[ip]`, as an MTA sends without one.
    pub client_name: Option<String>,
    pub helo: String,
    pub from: String,
    pub rcpts: Vec<String>,
    pub authenticated: bool,
}

/// The decision for each recipient.
pub struct Explanation {
    pub decisions: Vec<(String, Decision)>,
    /// The greylist findings come from the running daemon's store (read only: explain records
    /// nothing); false: no store was consulted.
    pub greylist_from_daemon: bool,
    /// The zones' health as explain's own probes found it (empty: health checks off or no
    /// zones): as in the daemon, a zone that did not pass lists log-only.
    pub zones: Vec<ZoneReport>,
}

/// Probes every configured zone once, as the daemon does at start, and attaches the result to
/// the policy so its listings count (or not) as they would in the daemon.
async fn probe_zones(policy: &Policy) -> Vec<ZoneReport> {
    let config = policy.config();
    let no_zones = crate::checks::dnsbl::board::configured(&config.dnsbl).is_empty();
    if config.dnsbl.health_check_interval.is_zero() || no_zones {
        return Vec::new();
    }
    let board = HealthBoard::new(&config.dnsbl);
    match probe::probe_resolver(&config.dns) {
        Ok(dns) => probe::probe_round(&board, &dns, &config.dnsbl).await,
        Err(e) => tracing::warn!("zone health probes cannot run: {e}"),
    }
    policy.set_zone_health(board.clone());
    board.report()
}

/// Runs the checks and the policy; must be called inside a tokio runtime.
pub async fn explain(policy: &Policy, q: &Query) -> Explanation {
    let client_name = q
        .client_name
        .clone()
        .unwrap_or_else(|| format!("[{}]", q.client_ip));
    let zones = probe_zones(policy).await;
    // No MTA here: the rDNS is looked up, whatever the MTA would have vouched for.
    let mut lookups = policy.start_lookups(q.client_ip, Default::default);
    if let Some(l) = &mut lookups {
        l.start_helo(&q.helo);
        l.start_sender(&q.from);
    }
    let rcpts = if q.rcpts.is_empty() {
        vec!["postmaster-check@invalid".to_string()]
    } else {
        q.rcpts.clone()
    };
    let mut decisions = Vec::new();
    for rcpt in rcpts {
        let env = Envelope {
            client_ip: Some(q.client_ip),
            client_name: &client_name,
            helo: &q.helo,
            sender: &q.from,
            recipient: &rcpt,
            authenticated: q.authenticated,
        };
        let d = policy.decide_recipient(&env, lookups.as_mut()).await;
        decisions.push((rcpt, d));
    }
    Explanation {
        decisions,
        greylist_from_daemon: false,
        zones,
    }
}

impl Explanation {
    /// Human-readable report.
    pub fn text(&self, q: &Query) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "client {} name {} helo {} from <{}>",
            q.client_ip,
            q.client_name.as_deref().unwrap_or("(unverified)"),
            if q.helo.is_empty() { "(none)" } else { &q.helo },
            q.from
        );
        if self.greylist_from_daemon {
            let _ = writeln!(
                out,
                "greylist state: the running daemon's store (read only: explain records nothing)"
            );
        }
        for z in &self.zones {
            let _ = writeln!(out, "{}", zone_line(z));
        }
        for (rcpt, d) in &self.decisions {
            let _ = writeln!(out, "\nrcpt <{rcpt}>:");
            if d.findings.is_empty() {
                let _ = writeln!(out, "  (no findings)");
            }
            for f in &d.findings {
                let _ = writeln!(out, "  {:<26} {}", f.reason().as_str(), f.detail);
            }
            if d.greylist {
                let _ = writeln!(out, "  -> selected for greylisting");
            }
            for t in &d.tags {
                let _ = writeln!(out, "  -> tag: {t}");
            }
            let reply = d
                .verdict
                .reply()
                .map(|r| r.to_string())
                .unwrap_or_else(|| "250 (the MTA's own reply)".into());
            let _ = writeln!(out, "  verdict: {}  reply: {}", d.verdict.name(), reply);
            let cause = if d.cause.is_empty() || d.would.is_some() {
                String::new()
            } else {
                format!(" ({})", d.cause)
            };
            let _ = writeln!(out, "  reason: {}{cause}", d.enforced_reason());
            if let Some(w) = &d.would {
                let reply = w.reply().map(|r| r.to_string()).unwrap_or_default();
                let _ = writeln!(
                    out,
                    "  dry-run: would {} {} (reason: {} ({}))",
                    w.name(),
                    reply,
                    d.reason,
                    d.cause
                );
            }
        }
        out
    }

    /// One JSON object, for scripts.
    pub fn json(&self, q: &Query) -> String {
        use serde_json::json;
        let recipients: Vec<_> = self
            .decisions
            .iter()
            .map(|(rcpt, d)| {
                json!({
                    "rcpt": rcpt,
                    "verdict": d.verdict.name(),
                    "reply": d.verdict.reply().map(|r| r.to_string()),
                    "reason": d.enforced_reason().as_str(),
                    "would": d.would.as_ref().map(|w| w.name()),
                    "would_reason": d.would.as_ref().map(|_| d.reason.as_str()),
                    "cause": d.cause,
                    "greylist": d.greylist,
                    "tags": d.tags,
                    "findings": d.findings.iter().map(|f| json!({
                        "code": f.reason().as_str(),
                        "check": f.check,
                        "outcome": f.outcome,
                        "detail": f.detail,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({
            "client_ip": q.client_ip.to_string(),
            "client_name": q.client_name,
            "helo": q.helo,
            "from": q.from,
            "recipients": recipients,
            "greylist_from_daemon": self.greylist_from_daemon,
            "zones": self.zones.iter().map(|z| json!({
                "zone": z.zone,
                "list": z.kind.check_name(),
                "healthy": z.state.health.is_healthy(),
                "probe": if z.probe_off { "off" } else { "rfc5782" },
                "reason": z.state.health.distrust_reason(),
            })).collect::<Vec<_>>(),
        })
        .to_string()
    }
}

/// `zone X (dnsbl): healthy` or `zone X (dnsbl) unhealthy: REASON -> its listing is log-only`;
/// `(dnsbl, probe off)` for a zone with `health_check = "off"`.
fn zone_line(z: &ZoneReport) -> String {
    let list = match z.probe_off {
        true => format!("{}, probe off", z.kind.check_name()),
        false => z.kind.check_name().to_string(),
    };
    match &z.state.health {
        Health::Healthy => format!("zone {} ({list}): healthy", z.zone),
        Health::Unknown => format!(
            "zone {} ({list}) unknown: no probe answered -> its listing is log-only",
            z.zone
        ),
        Health::Unhealthy(r) => format!(
            "zone {} ({list}) unhealthy: {r} -> its listing is log-only",
            z.zone
        ),
    }
}
