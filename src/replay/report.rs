//! What replay prints: every flip (and every undecidable recipient) as it is found, then the
//! totals; as text lines or, with `--json`, one JSON object per line.

use std::collections::BTreeMap;

use serde_json::json;

use super::decide::NewVerdict;
use super::parse::Record;

/// The counts printed at the end.
#[derive(Debug, Default)]
pub struct Totals {
    pub lines: u64,
    pub decision_lines: u64,
    /// Other log events, skipped.
    pub other_lines: u64,
    /// Lines that are not JSON or lack a decision's fields, skipped (reported on stderr).
    pub malformed_lines: u64,
    pub recipients: u64,
    pub decided: u64,
    pub undecidable: u64,
    /// Recipients NEW greylists where the old decision never reached greylisting.
    pub greylist_unknown: u64,
    /// (old verdict, new verdict) → recipients, for the verdicts that changed.
    pub flips: BTreeMap<(String, String), u64>,
}

impl Totals {
    pub fn flipped(&self) -> u64 {
        self.flips.values().sum()
    }

    pub fn text(&self) -> String {
        let mut out = format!(
            "lines {}: decision lines {}, other lines {}, malformed lines {}\n\
             recipients {}: decided {}, undecidable {}, flipped {}\n",
            self.lines,
            self.decision_lines,
            self.other_lines,
            self.malformed_lines,
            self.recipients,
            self.decided,
            self.undecidable,
            self.flipped()
        );
        for ((old, new), n) in &self.flips {
            out.push_str(&format!("flips {old} -> {new}: {n}\n"));
        }
        if self.greylist_unknown > 0 {
            out.push_str(&format!(
                "greylist (state unknown: would be new): {}\n",
                self.greylist_unknown
            ));
        }
        out
    }

    pub fn json(&self) -> String {
        let flips: Vec<_> = self
            .flips
            .iter()
            .map(|((old, new), n)| json!({"old": old, "new": new, "recipients": n}))
            .collect();
        json!({
            "type": "totals",
            "lines": self.lines,
            "decision_lines": self.decision_lines,
            "other_lines": self.other_lines,
            "malformed_lines": self.malformed_lines,
            "recipients": self.recipients,
            "decided": self.decided,
            "undecidable": self.undecidable,
            "flipped": self.flipped(),
            "greylist_state_unknown": self.greylist_unknown,
            "flips": flips,
        })
        .to_string()
    }
}

/// Where a recipient comes from: the log's file and line.
pub struct At<'a> {
    pub file: &'a str,
    pub line: u64,
}

/// `FILE:LINE queue Q client IP (NAME) from <S> rcpt <R>: OLD -> `: what every text line about
/// one recipient starts with.
fn recipient_prefix(at: &At<'_>, rec: &Record, rcpt: &str) -> String {
    format!(
        "{}:{} queue {} client {} ({}) from <{}> rcpt <{rcpt}>: {} -> ",
        at.file,
        at.line,
        rec.queue_id,
        rec.client_ip,
        rec.client_name,
        rec.sender(),
        rec.verdict,
    )
}

/// `FILE:LINE queue Q client IP (NAME) from <S> rcpt <R>: OLD -> NEW (CODE: CAUSE)`.
pub fn flip_text(at: &At<'_>, rec: &Record, rcpt: &str, new: &NewVerdict) -> String {
    let cause = if new.cause.is_empty() {
        String::new()
    } else {
        format!(": {}", new.cause)
    };
    format!(
        "{}{} ({}{cause})",
        recipient_prefix(at, rec, rcpt),
        new.verdict,
        new.reason
    )
}

pub fn flip_json(at: &At<'_>, rec: &Record, rcpt: &str, new: &NewVerdict) -> String {
    json!({
        "type": "flip",
        "file": at.file,
        "line": at.line,
        "queue_id": rec.queue_id,
        "client_ip": rec.client_ip,
        "client_name": rec.client_name,
        "from": rec.sender(),
        "rcpt": rcpt,
        "old": rec.verdict,
        "old_reason": rec.reason,
        "new": new.verdict,
        "new_reason": new.reason,
        "cause": new.cause,
        "greylist_state_unknown": new.greylist_unknown,
    })
    .to_string()
}

/// `FILE:LINE ... rcpt <R>: undecidable without DNS: missing dnsbl zone X, ...`.
pub fn undecidable_text(at: &At<'_>, rec: &Record, rcpt: &str, missing: &[String]) -> String {
    format!(
        "{}undecidable (--no-dns; missing {})",
        recipient_prefix(at, rec, rcpt),
        missing.join(", ")
    )
}

pub fn undecidable_json(at: &At<'_>, rec: &Record, rcpt: &str, missing: &[String]) -> String {
    json!({
        "type": "undecidable",
        "file": at.file,
        "line": at.line,
        "queue_id": rec.queue_id,
        "client_ip": rec.client_ip,
        "from": rec.sender(),
        "rcpt": rcpt,
        "old": rec.verdict,
        "missing": missing,
    })
    .to_string()
}
