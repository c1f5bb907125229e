//! Logging: one line per decision with stable keys, human-readable or JSON.
//!
//! Key order is fixed so admins can grep and parse it the way they parse Postfix's log. Text:
//! `queue_id client_ip client_name helo from rcpt verdict reason reply findings delay_ms`, then
//! `shadow` where a `[shadow]` candidate decided otherwise.
//! JSON adds what `mxsentry replay` needs to decide a recipient again without lookups
//! (`client_verified`, `authenticated`, `would`, `would_reason`, and `evidence`: every
//! finding's reason code with the DNS answers behind it, bounded — see [`evidence_json`]),
//! and with a `[shadow]` candidate `shadow_verdict` and `shadow_cause`.
//! `reason` is the verdict's stable code (docs/reasons.md); on a line that covers several
//! accepted recipients, their distinct codes joined by `,`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use crate::checks::{Evidence, Finding};
use crate::config::{LogConfig, LogFormat};

/// The target of decision lines.
pub const TARGET: &str = "mxsentry::decision";

/// The fields of one decision line.
#[derive(Debug)]
pub struct DecisionLine<'a> {
    pub queue_id: &'a str,
    pub client_ip: &'a str,
    pub client_name: &'a str,
    /// The MTA's client name is a verified host name (not `[ip]` or `unknown`).
    pub client_verified: bool,
    pub helo: &'a str,
    pub from: &'a str,
    pub rcpt: &'a str,
    pub authenticated: bool,
    pub verdict: &'a str,
    /// The verdict's reason code(s).
    pub reason: &'a str,
    /// Dry-run: the verdict enforce mode would have given, and its reason code.
    pub would: Option<(&'a str, &'a str)>,
    pub reply: &'a str,
    pub findings: &'a str,
    /// JSON only: the findings' evidence objects ([`evidence_json`]), each already JSON.
    pub evidence: &'a [String],
    pub delay_ms: u64,
    /// The `[shadow]` candidate's verdict and cause, when one is configured.
    pub shadow: Option<&'a crate::shadow::ShadowVerdict>,
}

/// Set when the JSON formatter is installed: JSON quotes every string itself, the text format
/// needs `reply` and `findings` quoted (they contain spaces).
static JSON: AtomicBool = AtomicBool::new(false);

/// Whether decision lines are written as JSON (then sessions collect the evidence).
pub fn is_json() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// Emits the line at INFO under the `mxsentry::decision` target.
pub fn emit(line: &DecisionLine<'_>) {
    if is_json() {
        let body = json_body(line);
        tracing::info!(target: TARGET, decision_json = body.as_str(), "decision");
        return;
    }
    tracing::info!(
        target: TARGET,
        queue_id = %line.queue_id,
        client_ip = %line.client_ip,
        client_name = %line.client_name,
        helo = %line.helo,
        from = %format_args!("<{}>", line.from),
        rcpt = %format_args!("<{}>", line.rcpt),
        verdict = %line.verdict,
        reason = %line.reason,
        reply = ?line.reply,
        findings = ?line.findings,
        delay_ms = line.delay_ms,
        // The text line names the shadow's verdict only where it differs.
        shadow = line
            .shadow
            .filter(|s| s.verdict != line.verdict)
            .map(|s| tracing::field::display(s.verdict)),
        "decision"
    );
}

/// A JSON string literal.
fn quoted(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// The decision's fields as the inside of a JSON object (no braces), in the fixed key order.
pub fn json_body(line: &DecisionLine<'_>) -> String {
    let mut out = String::with_capacity(512);
    let mut field = |key: &str, value: String| {
        if !out.is_empty() {
            out.push(',');
        }
        let _ = write!(out, "\"{key}\":{value}");
    };
    field("queue_id", quoted(line.queue_id));
    field("client_ip", quoted(line.client_ip));
    field("client_name", quoted(line.client_name));
    field("client_verified", line.client_verified.to_string());
    field("helo", quoted(line.helo));
    field("from", quoted(&format!("<{}>", line.from)));
    field("rcpt", quoted(&format!("<{}>", line.rcpt)));
    field("authenticated", line.authenticated.to_string());
    field("verdict", quoted(line.verdict));
    field("reason", quoted(line.reason));
    if let Some((would, reason)) = line.would {
        field("would", quoted(would));
        field("would_reason", quoted(reason));
    }
    field("reply", quoted(line.reply));
    field("findings", quoted(line.findings));
    field("evidence", format!("[{}]", line.evidence.join(",")));
    field("delay_ms", line.delay_ms.to_string());
    if let Some(shadow) = line.shadow {
        field("shadow_verdict", quoted(shadow.verdict));
        field("shadow_cause", quoted(&shadow.cause));
    }
    out
}

/// One finding as a JSON object for the `evidence` array: its reason code and the DNS answers
/// it was based on. `rcpt` is added for recipient-specific findings (greylisting). Bounded:
/// at most [`crate::checks::MAX_EVIDENCE_ANSWERS`] answers of each kind (the checks cut them),
/// TXT and error texts at most 255 characters, names at most 253 (DNS).
pub fn evidence_json(f: &Finding, rcpt: &str) -> String {
    use serde_json::{json, Map, Value};
    let mut o = Map::new();
    match &f.evidence {
        Evidence::None => {}
        Evidence::Zone {
            zone,
            query,
            answers,
            txt,
            error,
        } => {
            o.insert("zone".into(), zone.as_str().into());
            // An IP zone's query is the reversed client address + the zone: left out (up to
            // 73 characters per zone for IPv6). A domain zone's names the domain asked.
            if f.check == "rhsbl" {
                o.insert("query".into(), query.as_str().into());
            }
            if !answers.is_empty() {
                let a: Vec<String> = answers.iter().map(|a| a.to_string()).collect();
                o.insert("answers".into(), a.into());
            }
            if let Some(t) = txt {
                o.insert("txt".into(), t.as_str().into());
            }
            if let Some(e) = error {
                o.insert("error".into(), e.as_str().into());
            }
        }
        Evidence::Rdns(r) => {
            o.insert("ptr".into(), r.ptr.clone().into());
            let forward: Vec<Value> = r
                .forward
                .iter()
                .map(|fw| {
                    let addrs: Vec<String> = fw.addrs.iter().map(|a| a.to_string()).collect();
                    match &fw.error {
                        Some(e) => json!({ "name": fw.name, "error": e }),
                        None => json!({ "name": fw.name, "addrs": addrs }),
                    }
                })
                .collect();
            if !forward.is_empty() {
                o.insert("forward".into(), forward.into());
            }
            if let Some(e) = &r.error {
                o.insert("error".into(), e.as_str().into());
            }
            if r.by_mta {
                o.insert("by_mta".into(), true.into());
            }
        }
        Evidence::Greylist { seconds } => {
            o.insert("rcpt".into(), rcpt.into());
            if let Some(s) = seconds {
                o.insert("seconds".into(), (*s).into());
            }
        }
    }
    // The code first, for a reader (serde_json sorts the other keys).
    let code = quoted(f.reason().as_str());
    if o.is_empty() {
        return format!("{{\"code\":{code}}}");
    }
    let rest = Value::Object(o).to_string();
    format!("{{\"code\":{code},{}", &rest[1..])
}

/// Installs the global subscriber: `RUST_LOG` wins over the config's level.
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{},mxsentry={}", "warn", config.level)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(true);
    let result = match config.format {
        LogFormat::Json => {
            JSON.store(true, Ordering::Relaxed);
            let inner = tracing_subscriber::fmt::format()
                .json()
                .flatten_event(true)
                .with_target(true);
            builder
                .json()
                .flatten_event(true)
                .event_format(DecisionJson { inner })
                .try_init()
        }
        LogFormat::Text => builder.try_init(),
    };
    // A second init (tests) is harmless.
    let _ = result;
}

/// The JSON event format, except that a decision line's prebuilt body ([`json_body`]) is
/// written as nested JSON (the stock formatter would quote it as one string). The keys around
/// it are the stock formatter's: `timestamp`, `level`, `message`, ..., `target`.
struct DecisionJson<F> {
    inner: F,
}

impl<S, N, F> FormatEvent<S, N> for DecisionJson<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        if event.metadata().target() == TARGET {
            let mut body = BodyVisitor(None);
            event.record(&mut body);
            if let Some(body) = body.0 {
                let mut time = String::new();
                SystemTime.format_time(&mut Writer::new(&mut time))?;
                return writeln!(
                    writer,
                    "{{\"timestamp\":{},\"level\":\"INFO\",\"message\":\"decision\",{body},\"target\":\"{TARGET}\"}}",
                    quoted(&time)
                );
            }
        }
        self.inner.format_event(ctx, writer, event)
    }
}

/// Picks the `decision_json` field out of an event.
struct BodyVisitor(Option<String>);

impl Visit for BodyVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "decision_json" {
            self.0 = Some(value.to_string());
        }
    }

    fn record_debug(&mut self, _field: &Field, _value: &dyn std::fmt::Debug) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::rdns::{ForwardAnswer, RdnsEvidence};

    fn line<'a>(evidence: &'a [String]) -> DecisionLine<'a> {
        DecisionLine {
            queue_id: "Q1",
            client_ip: "192.0.2.1",
            client_name: "[192.0.2.1]",
            client_verified: false,
            helo: "he\"lo",
            from: "a@example.org",
            rcpt: "b@example.com",
            authenticated: false,
            verdict: "reject",
            reason: "dnsbl.listed",
            would: None,
            reply: "550 5.7.1 listed",
            findings: "dnsbl.listed(bl.test)",
            evidence,
            delay_ms: 3,
            shadow: None,
        }
    }

    #[test]
    fn json_body_is_an_object_with_nested_evidence() {
        let zone = Finding {
            check: "dnsbl",
            outcome: "listed".into(),
            detail: String::new(),
            evidence: Evidence::Zone {
                zone: "bl.test".into(),
                query: "1.2.0.192.bl.test".into(),
                answers: vec!["127.0.0.2".parse().unwrap()],
                txt: Some("see \"x\"".into()),
                error: None,
            },
        };
        let rdns = Finding {
            check: "rdns",
            outcome: "forged".into(),
            detail: String::new(),
            evidence: Evidence::Rdns(Box::new(RdnsEvidence {
                ptr: vec!["a.example".into()],
                forward: vec![ForwardAnswer {
                    name: "a.example".into(),
                    addrs: vec!["192.0.2.9".parse().unwrap()],
                    error: None,
                }],
                error: None,
                by_mta: false,
            })),
        };
        let grey = Finding {
            check: "greylist",
            outcome: "new".into(),
            detail: String::new(),
            evidence: Evidence::Greylist { seconds: Some(300) },
        };
        let ev = vec![
            evidence_json(&zone, "b@example.com"),
            evidence_json(&rdns, "b@example.com"),
            evidence_json(&grey, "b@example.com"),
        ];
        let v: serde_json::Value =
            serde_json::from_str(&format!("{{{}}}", json_body(&line(&ev)))).unwrap();
        assert_eq!(v["reason"], "dnsbl.listed");
        assert_eq!(v["helo"], "he\"lo");
        assert_eq!(v["from"], "<a@example.org>");
        assert_eq!(v["client_verified"], false);
        assert_eq!(v["evidence"][0]["code"], "dnsbl.listed");
        assert_eq!(v["evidence"][0]["answers"][0], "127.0.0.2");
        assert_eq!(v["evidence"][0]["txt"], "see \"x\"");
        assert_eq!(v["evidence"][1]["code"], "rdns.forged");
        assert_eq!(v["evidence"][1]["forward"][0]["addrs"][0], "192.0.2.9");
        assert_eq!(v["evidence"][2]["code"], "greylist.new");
        assert_eq!(v["evidence"][2]["rcpt"], "b@example.com");
        assert_eq!(v["evidence"][2]["seconds"], 300);
        assert!(v.get("would").is_none());
    }
}
