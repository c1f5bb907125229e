//! Recording a recipient's decision: metrics, the decision log line, and what the message
//! keeps for its end-of-message line.

use super::reply::verdict_reply;
use super::{lossy, Session};
use crate::decision_log::{self, DecisionLine};
use crate::metrics::metrics;
use crate::policy::{Decision, Verdict};
use crate::protocol::reply::Reply;
use crate::shadow::ShadowVerdict;

/// What a decision line carries beside the verdict: the findings' evidence (JSON lines) and
/// the `[shadow]` candidate's verdict.
pub(super) struct Beside<'a> {
    pub(super) evidence: &'a [String],
    pub(super) shadow: Option<&'a ShadowVerdict>,
}

impl Session {
    /// Logs a refusal now (the recipient never becomes part of a message); remembers an
    /// acceptance for the end-of-message log line.
    pub(super) fn record(
        &mut self,
        decision: &Decision,
        rcpt: String,
        authenticated: bool,
        shadow: Option<ShadowVerdict>,
    ) -> Reply {
        let m = metrics();
        let reason = decision.enforced_reason();
        m.recipient_verdict(decision.verdict.name(), reason);
        m.decision_duration(self.started.elapsed().as_secs_f64());
        if let Some(would) = &decision.would {
            m.dry_run_verdict(would.name(), decision.reason);
        }
        self.message.authenticated |= authenticated;
        let mut evidence = Vec::new();
        if decision_log::is_json() {
            for f in &decision.findings {
                let e = decision_log::evidence_json(f, &rcpt);
                if !evidence.contains(&e) {
                    evidence.push(e);
                }
            }
        }
        for f in &decision.findings {
            m.finding(f.check, &f.outcome);
        }
        self.note_verdict(decision.verdict.name());
        let notable: Vec<String> = decision
            .findings
            .iter()
            .filter(|f| f.is_notable())
            .map(|f| f.to_string())
            .collect();
        let reply = verdict_reply(&decision.verdict);
        // A refused or discarded recipient never reaches end-of-message (the MTA sends ABORT
        // after a discard), and after ACCEPT the MTA stops calling us for this message: those
        // lines are written now. Other accepted recipients are logged with the message at EOM.
        match &decision.verdict {
            Verdict::Reject(_)
            | Verdict::Tempfail(_)
            | Verdict::Greylist(_)
            | Verdict::Discard
            | Verdict::Accept => {
                if matches!(decision.verdict, Verdict::Accept | Verdict::Discard) {
                    self.message.whole_message = Some((decision.verdict.clone(), reason));
                }
                self.log_line(
                    decision.verdict.name(),
                    reason.as_str(),
                    decision.verdict.reply().map(|r| r.to_string()),
                    &rcpt,
                    &notable.join(","),
                    Beside {
                        evidence: &evidence,
                        shadow: shadow.as_ref(),
                    },
                );
                return reply;
            }
            Verdict::Continue => {}
        }
        if let Some(s) = shadow {
            self.message.shadow = Some(ShadowVerdict::worst(self.message.shadow.take(), s));
        }
        // The log line keeps what is notable; `explain` shows every finding.
        for f in notable {
            if !self.message.findings.contains(&f) {
                self.message.findings.push(f);
            }
        }
        for h in &decision.headers {
            if !self.message.headers.iter().any(|(n, _)| *n == h.0) {
                self.message.headers.push(h.clone());
            }
        }
        for t in &decision.tags {
            if !self.message.tags.contains(t) {
                self.message.tags.push(t.clone());
            }
        }
        for e in evidence {
            if !self.message.evidence.contains(&e) {
                self.message.evidence.push(e);
            }
        }
        if !self.message.reasons.contains(&reason) {
            self.message.reasons.push(reason);
        }
        if let Some(would) = &decision.would {
            self.message
                .would
                .get_or_insert((would.name(), decision.reason));
            let tag = format!(
                "would-{} {} reason={}",
                would.name(),
                decision.cause,
                decision.reason
            );
            if !self.message.tags.contains(&tag) {
                self.message.tags.push(tag);
            }
        }
        self.message.accepted.push(rcpt);
        reply
    }

    /// Remembers the most severe verdict of the SMTP session.
    pub(super) fn note_verdict(&mut self, verdict: &'static str) {
        let rank = |v: &str| match v {
            "reject" => 4,
            "discard" => 3,
            "tempfail" => 2,
            "greylist" => 1,
            _ => 0,
        };
        if self.worst.is_none_or(|w| rank(verdict) > rank(w)) {
            self.worst = Some(verdict);
        }
    }

    /// Counts the finished SMTP session (at QUIT, QUIT_NC, a new CONNECT or the end of the
    /// connection).
    pub(super) fn end_session(&mut self) {
        if let Some(worst) = self.worst.take() {
            metrics().session_verdict(worst);
        }
    }

    pub(super) fn log_line(
        &self,
        verdict: &str,
        reason: &str,
        reply: Option<String>,
        rcpt: &str,
        findings: &str,
        beside: Beside<'_>,
    ) {
        let Beside { evidence, shadow } = beside;
        let queue_id = self.macros.get("i").map(lossy);
        let would = self.message.would.map(|(v, r)| (v, r.as_str()));
        decision_log::emit(&DecisionLine {
            queue_id: queue_id.as_deref().unwrap_or("-"),
            client_ip: &self
                .client_ip
                .map_or_else(|| "-".to_string(), |ip| ip.to_string()),
            client_name: &self.client_name,
            client_verified: crate::policy::is_verified_name(&self.client_name),
            helo: &self.helo,
            from: self.message.sender.as_deref().unwrap_or(""),
            rcpt,
            authenticated: self.message.authenticated,
            verdict,
            reason,
            would,
            reply: reply.as_deref().unwrap_or(""),
            findings,
            evidence,
            delay_ms: self.message.delay_ms,
            shadow,
        });
    }
}
