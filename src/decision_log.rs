//! Logging: one line per decision with stable keys, human-readable or JSON.
//!
//! Key order is fixed (`queue_id client_ip client_name helo from rcpt verdict reply findings
//! delay_ms`, then with a `[shadow]` candidate `shadow_verdict shadow_cause` in JSON, and
//! `shadow` in text where it differs) so admins can grep and parse it the way they parse
//! Postfix's log.

use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// The fields of one decision line.
#[derive(Debug)]
pub struct DecisionLine<'a> {
    pub queue_id: &'a str,
    pub client_ip: &'a str,
    pub client_name: &'a str,
    pub helo: &'a str,
    pub from: &'a str,
    pub rcpt: &'a str,
    pub verdict: &'a str,
    pub reply: &'a str,
    pub findings: &'a str,
    pub delay_ms: u64,
    /// The `[shadow]` candidate's verdict and cause, when one is configured.
    pub shadow: Option<&'a crate::shadow::ShadowVerdict>,
}

/// Set when the JSON formatter is installed: JSON quotes every string itself, the text format
/// needs `reply` and `findings` quoted (they contain spaces).
static JSON: AtomicBool = AtomicBool::new(false);

/// Emits the line at INFO under the `mxsentry::decision` target.
pub fn emit(line: &DecisionLine<'_>) {
    if JSON.load(Ordering::Relaxed) {
        tracing::info!(
            target: "mxsentry::decision",
            queue_id = %line.queue_id,
            client_ip = %line.client_ip,
            client_name = %line.client_name,
            helo = %line.helo,
            from = %format_args!("<{}>", line.from),
            rcpt = %format_args!("<{}>", line.rcpt),
            verdict = %line.verdict,
            reply = %line.reply,
            findings = %line.findings,
            delay_ms = line.delay_ms,
            shadow_verdict = line.shadow.map(|s| s.verdict),
            shadow_cause = line.shadow.map(|s| s.cause.as_str()),
            "decision"
        );
        return;
    }
    tracing::info!(
        target: "mxsentry::decision",
        queue_id = %line.queue_id,
        client_ip = %line.client_ip,
        client_name = %line.client_name,
        helo = %line.helo,
        from = %format_args!("<{}>", line.from),
        rcpt = %format_args!("<{}>", line.rcpt),
        verdict = %line.verdict,
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
            builder.json().flatten_event(true).try_init()
        }
        LogFormat::Text => builder.try_init(),
    };
    // A second init (tests) is harmless.
    let _ = result;
}
