//! Reading the daemon's JSON decision lines (`[log] format = "json"`, see
//! [`crate::decision_log::json_body`]) into records replay can decide again.

use std::net::IpAddr;

use serde::Deserialize;

/// What one line of the log is.
#[derive(Debug)]
pub enum Line {
    /// A JSON decision line.
    Decision(Box<Record>),
    /// Another log event (startup, warnings, ...): skipped and counted.
    Other,
    /// A text-format decision line: replay needs the JSON format.
    Text,
    /// Not JSON, or a decision line without the fields replay needs: the reason.
    Malformed(String),
}

/// One decision line: the session's facts, the verdict given, and the findings' evidence.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Record {
    pub message: String,
    pub queue_id: String,
    pub client_ip: String,
    pub client_name: String,
    pub helo: String,
    pub from: String,
    pub rcpt: String,
    pub authenticated: bool,
    pub verdict: String,
    pub reason: String,
    pub evidence: Vec<EvidenceItem>,
}

/// One finding's evidence object ([`crate::decision_log::evidence_json`]).
#[derive(Debug, Default, Deserialize, Clone, PartialEq)]
#[serde(default)]
pub struct EvidenceItem {
    pub code: String,
    /// DNS lists.
    pub zone: Option<String>,
    pub query: Option<String>,
    pub answers: Vec<String>,
    pub txt: Option<String>,
    pub error: Option<String>,
    /// PTR/FCrDNS.
    pub ptr: Vec<String>,
    pub forward: Vec<Forward>,
    pub by_mta: bool,
    /// Greylisting: the recipient the step was for, and the seconds left or waited.
    pub rcpt: Option<String>,
    pub seconds: Option<u64>,
}

/// One PTR name's forward lookup in the evidence.
#[derive(Debug, Default, Deserialize, Clone, PartialEq)]
#[serde(default)]
pub struct Forward {
    pub name: String,
    pub addrs: Vec<String>,
    pub error: Option<String>,
}

impl Record {
    /// The client address; `None` for `-` (no address from the MTA).
    pub fn client_ip(&self) -> Option<IpAddr> {
        self.client_ip.parse().ok()
    }

    /// The sender without angle brackets (empty for the null sender).
    pub fn sender(&self) -> &str {
        strip_brackets(&self.from)
    }

    /// The recipients this line covers: one, or the accepted recipients of a message joined
    /// by `,` (session.rs), without the `(+N beyond max_recipients)` note (those recipients
    /// were never checked).
    pub fn recipients(&self) -> Vec<&str> {
        let mut list = strip_brackets(&self.rcpt);
        if let Some(at) = list.find(" (+") {
            list = &list[..at];
        }
        list.split(',').filter(|r| !r.is_empty()).collect()
    }

    /// The evidence objects whose code starts with `prefix` (`dnsbl.`, `rdns.`, ...).
    pub fn evidence_of<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a EvidenceItem> {
        self.evidence
            .iter()
            .filter(move |e| e.code.starts_with(prefix))
    }
}

fn strip_brackets(s: &str) -> &str {
    let s = s.strip_prefix('<').unwrap_or(s);
    s.strip_suffix('>').unwrap_or(s)
}

/// Classifies one line. A prefix before the JSON object (syslog, `journalctl -o short`) is
/// skipped.
pub fn parse_line(line: &str) -> Line {
    let Some(start) = line.find('{') else {
        return if is_text_decision(line) {
            Line::Text
        } else if line.trim().is_empty() || line.contains(" mxsentry::") {
            // Blank, or another event of a text log (its decision lines are refused).
            Line::Other
        } else {
            Line::Malformed("not a JSON log line".into())
        };
    };
    // Only a decision line is deserialised in full; other events are recognised cheaply.
    let json = &line[start..];
    if !json.contains("\"message\":\"decision\"") {
        if is_text_decision(line) {
            return Line::Text;
        }
        return match serde_json::from_str::<serde::de::IgnoredAny>(json) {
            Ok(_) => Line::Other,
            Err(e) => Line::Malformed(format!("not JSON: {e}")),
        };
    }
    match serde_json::from_str::<Record>(json) {
        Ok(r) if r.message != "decision" => Line::Other,
        Ok(r) if r.verdict.is_empty() || r.rcpt.is_empty() => {
            Line::Malformed("a decision line without verdict or rcpt".into())
        }
        Ok(r) => Line::Decision(Box::new(r)),
        Err(_) if is_text_decision(line) => Line::Text,
        Err(e) => Line::Malformed(format!("not JSON: {e}")),
    }
}

/// The text format writes the target followed by `: decision`.
fn is_text_decision(line: &str) -> bool {
    line.contains("mxsentry::decision: decision")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::checks::{Evidence, Finding};
    use crate::decision_log::{evidence_json, json_body, DecisionLine};

    /// A decision line as the daemon writes it (the body from the real `json_body`, framed the
    /// way the JSON formatter frames it).
    pub(crate) fn daemon_line(rcpt: &str, verdict: &str, findings: &[Finding]) -> String {
        let evidence: Vec<String> = findings.iter().map(|f| evidence_json(f, rcpt)).collect();
        let body = json_body(&DecisionLine {
            queue_id: "Q1",
            client_ip: "192.0.2.1",
            client_name: "[192.0.2.1]",
            client_verified: false,
            helo: "mail.example.org",
            from: "a@example.org",
            rcpt,
            authenticated: false,
            verdict,
            reason: "none",
            would: None,
            reply: "",
            findings: "",
            evidence: &evidence,
            delay_ms: 1,
            shadow: None,
        });
        format!(
            "{{\"timestamp\":\"2026-12-05T04:00:00Z\",\"level\":\"INFO\",\"message\":\"decision\",{body},\"target\":\"mxsentry::decision\"}}"
        )
    }

    fn listed(zone: &str) -> Finding {
        Finding {
            check: "dnsbl",
            outcome: "listed".into(),
            detail: String::new(),
            evidence: Evidence::Zone {
                zone: zone.into(),
                query: format!("1.2.0.192.{zone}"),
                answers: vec!["127.0.0.2".parse().unwrap()],
                txt: Some("listed".into()),
                error: None,
            },
        }
    }

    #[test]
    fn a_decision_line_gives_its_fields_and_evidence() {
        let line = daemon_line("b@example.com", "reject", &[listed("bl.test")]);
        let Line::Decision(r) = parse_line(&line) else {
            panic!("{line}")
        };
        assert_eq!(r.client_ip(), Some("192.0.2.1".parse().unwrap()));
        assert_eq!(r.sender(), "a@example.org");
        assert_eq!(r.recipients(), vec!["b@example.com"]);
        assert_eq!(r.verdict, "reject");
        assert_eq!(r.evidence.len(), 1);
        assert_eq!(r.evidence[0].code, "dnsbl.listed");
        assert_eq!(r.evidence[0].zone.as_deref(), Some("bl.test"));
        assert_eq!(r.evidence[0].answers, vec!["127.0.0.2"]);
    }

    #[test]
    fn an_accepted_message_line_covers_each_recipient() {
        let line = daemon_line(
            "a@x.example,b@x.example (+3 beyond max_recipients)",
            "accept",
            &[],
        );
        let Line::Decision(r) = parse_line(&line) else {
            panic!("{line}")
        };
        assert_eq!(r.recipients(), vec!["a@x.example", "b@x.example"]);
    }

    #[test]
    fn a_syslog_prefix_is_skipped() {
        let line = format!(
            "Dec  5 04:00:00 mx mxsentry[42]: {}",
            daemon_line("b@example.com", "accept", &[])
        );
        assert!(matches!(parse_line(&line), Line::Decision(_)));
    }

    #[test]
    fn other_events_text_lines_and_garbage_are_told_apart() {
        let other =
            r#"{"timestamp":"t","level":"INFO","message":"listening","target":"mxsentry::server"}"#;
        assert!(matches!(parse_line(other), Line::Other));
        let text = "2026-12-05T04:00:00Z  INFO mxsentry::decision: decision queue_id=Q1 client_ip=192.0.2.1 verdict=accept";
        assert!(matches!(parse_line(text), Line::Text));
        assert!(matches!(
            parse_line("{\"message\":\"decision\",\"verdict\":"),
            Line::Malformed(_)
        ));
        assert!(matches!(parse_line("garbage"), Line::Malformed(_)));
        assert!(matches!(parse_line(""), Line::Other));
    }
}
