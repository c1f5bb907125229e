//! Per-connection state: what the MTA told us (macros, client, HELO, envelope) and the milter
//! state machine that answers each command.
//!
//! Connection state (client, HELO) lives until QUIT or QUIT_NC; message state (sender,
//! recipients, tags) is reset by ABORT and after end-of-message, as libmilter does.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::checks::rdns_mta::MtaClientMacros;
use crate::decision_log::{self, DecisionLine};
use crate::lookups::ClientLookups;
use crate::metrics::metrics;
use crate::policy::{
    Decision, Envelope, Policy, Verdict, DEFAULT_REJECT_REPLY, DEFAULT_TEMPFAIL_REPLY,
};
use crate::protocol::command::{ClientAddress, Command, MacroPairs};
use crate::protocol::flags;
use crate::protocol::negotiate::{negotiate, Negotiated};
use crate::protocol::reply::{encode_reply, smtp_reply_text, Reply};
use crate::reason::Reason;
use crate::shadow::{ShadowSession, ShadowVerdict};

/// Source of the current policy; sessions take a snapshot at each CONNECT so a reload never
/// changes the rules in the middle of an SMTP session.
pub trait PolicySource: Send + Sync {
    fn current(&self) -> Arc<Policy>;
}

/// What the connection loop should do after a command.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Close,
}

/// A protocol violation: the connection is closed with a log line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SessionError {
    #[error("{0} before option negotiation")]
    NotNegotiated(&'static str),
    #[error("option negotiation sent twice")]
    Renegotiation,
    #[error("negotiation failed: {0}")]
    Negotiation(String),
}

/// Macros by the stage they were sent for. Kept as the frame's own bytes: no copy per frame.
#[derive(Default)]
struct Macros {
    by_stage: [Option<MacroPairs>; 8],
}

impl Macros {
    fn slot(stage: u8) -> usize {
        match stage {
            b'C' => 0,
            b'H' => 1,
            b'M' => 2,
            b'R' => 3,
            b'T' => 4,
            b'N' => 5,
            b'E' => 6,
            _ => 7,
        }
    }

    fn set(&mut self, stage: u8, pairs: MacroPairs) {
        self.by_stage[Self::slot(stage)] = Some(pairs);
    }

    /// Latest value of a macro; `name` without braces matches `{name}` too.
    fn get(&self, name: &str) -> Option<&[u8]> {
        let bare = name.trim_start_matches('{').trim_end_matches('}');
        self.by_stage.iter().rev().flatten().find_map(|pairs| {
            pairs.iter().find_map(|(k, v)| {
                let k = trim_braces(k);
                (k == bare.as_bytes()).then_some(v)
            })
        })
    }

    /// Forget the message-stage macros (ABORT / end of message); keep CONNECT and HELO ones.
    fn reset_message(&mut self) {
        for slot in &mut self.by_stage[2..] {
            *slot = None;
        }
    }
}

fn trim_braces(k: &[u8]) -> &[u8] {
    match k {
        [b'{', inner @ .., b'}'] => inner,
        _ => k,
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Strips `<...>` from an envelope address as the MTA sends it.
fn bare_address(arg: &[u8]) -> String {
    let s = String::from_utf8_lossy(arg);
    let s = s.trim();
    let s = s.strip_prefix('<').unwrap_or(s);
    let s = s.strip_suffix('>').unwrap_or(s);
    s.to_string()
}

/// The reply to a recipient beyond `milter.max_recipients` (RFC 5321 4.5.3.1.10; RFC 3463
/// 4.5.3 "too many recipients"): the client sends the rest in another transaction.
pub const TOO_MANY_RECIPIENTS: &str = "452 4.5.3 Too many recipients";

#[derive(Default)]
struct Message {
    sender: Option<String>,
    /// RCPT commands checked in this message (bounded by `max_recipients`).
    rcpts: usize,
    /// RCPT commands beyond `max_recipients`, answered without checks.
    over_limit: usize,
    accepted: Vec<String>,
    /// A verdict that covers the whole message (trusted client, OK rule), and its reason.
    whole_message: Option<(Verdict, Reason)>,
    /// The distinct reason codes of the accepted recipients (for the end-of-message line).
    reasons: Vec<Reason>,
    /// Dry-run: the first would-be verdict and its reason (for the end-of-message line).
    would: Option<(&'static str, Reason)>,
    /// JSON log only: the findings' evidence objects, once each.
    evidence: Vec<String>,
    /// Dry-run notes for the tag header, e.g. `would-reject sender_rules=...`.
    tags: Vec<String>,
    findings: Vec<String>,
    /// Headers to add at end of message (`X-Greylist`), once each.
    headers: Vec<(String, String)>,
    /// The longest the policy held a recipient's answer (waiting for DNS), for `delay_ms`.
    delay_ms: u64,
    /// The `[shadow]` candidate's most severe verdict for the accepted recipients.
    shadow: Option<ShadowVerdict>,
    /// The MTA said the client authenticated.
    authenticated: bool,
}

/// What a decision line carries beside the verdict: the findings' evidence (JSON lines) and
/// the `[shadow]` candidate's verdict.
struct Beside<'a> {
    evidence: &'a [String],
    shadow: Option<&'a ShadowVerdict>,
}

/// One MTA connection's milter session.
pub struct Session {
    policies: Arc<dyn PolicySource>,
    policy: Arc<Policy>,
    negotiated: Option<Negotiated>,
    lookups: Option<ClientLookups>,
    shadow: ShadowSession,
    macros: Macros,
    client_name: String,
    client_ip: Option<IpAddr>,
    helo: String,
    message: Message,
    started: Instant,
    /// The most severe verdict of this SMTP session so far (for the sessions metric);
    /// None until a CONNECT was seen.
    worst: Option<&'static str>,
}

impl Session {
    pub fn new(policies: Arc<dyn PolicySource>) -> Session {
        Session::with_negotiated(policies, None)
    }

    /// A session on a connection whose options were already agreed (a connection taken over
    /// from the overflow handler after QUIT_NC: the MTA sends no second OPTNEG).
    pub fn with_negotiated(
        policies: Arc<dyn PolicySource>,
        negotiated: Option<Negotiated>,
    ) -> Session {
        let policy = policies.current();
        Session {
            policies,
            policy,
            negotiated,
            lookups: None,
            shadow: ShadowSession::default(),
            macros: Macros::default(),
            client_name: String::new(),
            client_ip: None,
            helo: String::new(),
            message: Message::default(),
            started: Instant::now(),
            worst: None,
        }
    }

    /// Whether OPTNEG was answered.
    pub fn is_negotiated(&self) -> bool {
        self.negotiated.is_some()
    }

    /// Whether an SMTP session is in progress (from CONNECT to QUIT or QUIT_NC): a shutdown
    /// lets it finish, and closes the connection between sessions.
    pub fn in_smtp_session(&self) -> bool {
        self.worst.is_some()
    }

    /// Handles one command and appends any reply to `out`.
    pub async fn handle(&mut self, cmd: Command, out: &mut BytesMut) -> Result<Flow, SessionError> {
        let code = cmd.code();
        let reply = match cmd {
            Command::OptNeg {
                version,
                actions,
                protocol,
            } => {
                if self.negotiated.is_some() {
                    return Err(SessionError::Renegotiation);
                }
                let needs = self.policy.needs();
                let n = negotiate(version, actions, protocol, &needs)
                    .map_err(|e| SessionError::Negotiation(e.to_string()))?;
                encode_reply(&n.reply(&needs.macros), out);
                self.negotiated = Some(n);
                return Ok(Flow::Continue);
            }
            Command::Quit => {
                self.end_session();
                return Ok(Flow::Close);
            }
            Command::QuitNewConnection => {
                // The MTA reuses this connection for a new SMTP session (no new OPTNEG).
                self.reset_connection();
                return Ok(Flow::Continue);
            }
            Command::Macro { stage, pairs } => {
                self.macros.set(stage, pairs);
                return Ok(Flow::Continue);
            }
            Command::Abort => {
                self.reset_message();
                return Ok(Flow::Continue);
            }
            Command::Connect { hostname, address } => {
                self.reset_connection_keep_macros();
                self.policy = self.policies.current();
                self.client_name = lossy(&hostname);
                self.worst = Some("accept");
                self.client_ip = match address {
                    ClientAddress::Inet { ip, .. } => Some(ip),
                    _ => None,
                };
                // DNS starts now and runs while the MTA goes on with HELO and MAIL.
                let macros = &self.macros;
                let mta = || {
                    let text =
                        |name: &str| macros.get(name).and_then(|v| std::str::from_utf8(v).ok());
                    MtaClientMacros {
                        version: text("v"),
                        client_resolve: text("client_resolve"),
                        client_name: text("client_name"),
                    }
                };
                self.lookups = self
                    .client_ip
                    .and_then(|ip| self.policy.start_lookups(ip, mta));
                self.shadow =
                    ShadowSession::start(&self.policy, self.client_ip, self.lookups.is_some(), mta);
                if self
                    .negotiated
                    .as_ref()
                    .is_some_and(|n| n.expects_reply(code))
                {
                    self.hold_banner().await;
                }
                Reply::Continue
            }
            Command::Helo { name } => {
                self.helo = lossy(&name);
                if let Some(l) = &mut self.lookups {
                    l.start_helo(&self.helo);
                }
                self.shadow.start_helo(&self.helo);
                Reply::Continue
            }
            Command::Mail { args } => {
                self.reset_message_keep_macros();
                let sender = args.first().map(bare_address).unwrap_or_default();
                if let Some(l) = &mut self.lookups {
                    l.start_sender(&sender);
                }
                self.shadow.start_sender(&sender);
                self.message.sender = Some(sender);
                Reply::Continue
            }
            Command::Rcpt { args } => {
                if self.message.rcpts >= self.policy.config().milter.max_recipients {
                    self.over_recipient_limit()
                } else {
                    self.message.rcpts += 1;
                    let rcpt = args.first().map(bare_address).unwrap_or_default();
                    self.decide_recipient(rcpt).await
                }
            }
            Command::EndOfMessage { .. } => self.end_of_message(out),
            Command::Data
            | Command::Header { .. }
            | Command::EndOfHeaders
            | Command::Body { .. }
            | Command::Unknown { .. } => Reply::Continue,
        };
        let Some(negotiated) = &self.negotiated else {
            return Err(SessionError::NotNegotiated(command_name(code)));
        };
        if negotiated.expects_reply(code) {
            encode_reply(&reply, out);
        }
        if code == b'E' {
            self.reset_message();
        }
        Ok(Flow::Continue)
    }

    /// Holds the reply to CONNECT (so the MTA's banner) for configured networks, and for
    /// clients whose findings say `delay` — waiting at most the delay for those findings.
    async fn hold_banner(&mut self) {
        let Some(ip) = self.client_ip else { return };
        if let Some(delay) = self.policy.greeting_delay_for(ip) {
            tokio::time::sleep(delay).await;
            return;
        }
        if !self.policy.delay_by_findings() {
            return;
        }
        let delay = self.policy.greeting_delay();
        let until = tokio::time::Instant::now() + delay;
        let Some(lookups) = &mut self.lookups else {
            return;
        };
        let wants_delay =
            tokio::time::timeout_at(until, self.policy.wants_banner_delay(ip, lookups))
                .await
                .unwrap_or(false);
        if wants_delay {
            tokio::time::sleep_until(until).await;
        }
    }

    /// A recipient beyond `max_recipients`: answered without checks and not remembered, so a
    /// message costs bounded work and memory whatever the MTA sends. 452 asks the client for
    /// the rest in a new transaction (nothing is lost); never a 5xx. A message already decided
    /// as a whole (trusted, OK rule, discard) keeps its verdict; dry-run never refuses.
    fn over_recipient_limit(&mut self) -> Reply {
        self.message.over_limit += 1;
        if self.message.over_limit == 1 {
            tracing::warn!(
                client_ip = %self.client_ip.map_or_else(|| "-".to_string(), |ip| ip.to_string()),
                from = %format_args!("<{}>", self.message.sender.as_deref().unwrap_or("")),
                max_recipients = self.message.rcpts,
                "recipient limit reached: further recipients of this message get \"{TOO_MANY_RECIPIENTS}\""
            );
        }
        let m = metrics();
        m.recipient_over_limit();
        if let Some((whole, reason)) = &self.message.whole_message {
            m.recipient_verdict(whole.name(), *reason);
            return verdict_reply(whole);
        }
        if self.policy.dry_run() {
            m.recipient_verdict("accept", Reason::DryRun);
            m.dry_run_verdict("tempfail", Reason::TooManyRecipients);
            return Reply::Continue;
        }
        m.recipient_verdict("tempfail", Reason::TooManyRecipients);
        self.note_verdict("tempfail");
        Reply::ReplyCode {
            text: Bytes::from_static(TOO_MANY_RECIPIENTS.as_bytes()),
        }
    }

    async fn decide_recipient(&mut self, rcpt: String) -> Reply {
        if let Some((whole, _)) = &self.message.whole_message {
            // Trusted client or OK rule: the message is already decided.
            let reply = verdict_reply(whole);
            self.message.accepted.push(rcpt);
            return reply;
        }
        let sender = self.message.sender.clone().unwrap_or_default();
        let authenticated = self
            .macros
            .get("auth_authen")
            .is_some_and(|v| !v.is_empty());
        let env = Envelope {
            client_ip: self.client_ip,
            client_name: &self.client_name,
            helo: &self.helo,
            sender: &sender,
            recipient: &rcpt,
            authenticated,
        };
        let asked = Instant::now();
        let decision = self
            .policy
            .decide_recipient(&env, self.lookups.as_mut())
            .await;
        self.message.delay_ms = self
            .message
            .delay_ms
            .max(asked.elapsed().as_millis() as u64);
        let policy = self.policy.clone();
        let shadow = self
            .shadow
            .decide(&policy, &env, self.lookups.as_mut(), &decision.verdict)
            .await;
        self.record(&decision, rcpt, authenticated, shadow)
    }

    /// Logs a refusal now (the recipient never becomes part of a message); remembers an
    /// acceptance for the end-of-message log line.
    fn record(
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
    fn note_verdict(&mut self, verdict: &'static str) {
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
    fn end_session(&mut self) {
        if let Some(worst) = self.worst.take() {
            metrics().session_verdict(worst);
        }
    }

    /// Adds the dry-run tag header if any, logs the accepted message and gives the final reply.
    fn end_of_message(&mut self, out: &mut BytesMut) -> Reply {
        if matches!(self.message.whole_message, Some((Verdict::Discard, _))) {
            metrics().message_verdict("discard");
            return Reply::Discard; // already logged at RCPT
        }
        metrics().message_verdict("accept");
        let can_add = self
            .negotiated
            .as_ref()
            .is_some_and(|n| n.actions & flags::SMFIF_ADDHDRS != 0);
        if can_add {
            if !self.message.tags.is_empty() {
                let value = self.message.tags.join("; ");
                encode_reply(
                    &Reply::AddHeader {
                        name: Bytes::copy_from_slice(self.policy.tag_header().as_bytes()),
                        value: Bytes::from(value),
                    },
                    out,
                );
            }
            for (name, value) in &self.message.headers {
                encode_reply(
                    &Reply::AddHeader {
                        name: Bytes::copy_from_slice(name.as_bytes()),
                        value: Bytes::copy_from_slice(value.as_bytes()),
                    },
                    out,
                );
            }
        }
        let mut rcpts = self.message.accepted.join(",");
        if self.message.over_limit > 0 {
            rcpts.push_str(&format!(
                " (+{} beyond max_recipients)",
                self.message.over_limit
            ));
        }
        let findings = self.message.findings.join(",");
        let reasons: Vec<&str> = self.message.reasons.iter().map(|r| r.as_str()).collect();
        let reasons = if reasons.is_empty() {
            // Every recipient came in under a message-wide accept (logged at its RCPT).
            Reason::None.as_str().to_string()
        } else {
            reasons.join(",")
        };
        let evidence = std::mem::take(&mut self.message.evidence);
        let shadow = self.message.shadow.clone();
        self.log_line(
            "accept",
            &reasons,
            None,
            &rcpts,
            &findings,
            Beside {
                evidence: &evidence,
                shadow: shadow.as_ref(),
            },
        );
        Reply::Accept
    }

    fn log_line(
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

    fn reset_message_keep_macros(&mut self) {
        self.message = Message::default();
    }

    fn reset_message(&mut self) {
        self.message = Message::default();
        self.macros.reset_message();
    }

    fn reset_connection_keep_macros(&mut self) {
        self.end_session();
        self.message = Message::default();
        self.lookups = None;
        self.shadow = ShadowSession::default();
        self.client_name.clear();
        self.client_ip = None;
        self.helo.clear();
        self.started = Instant::now();
    }

    fn reset_connection(&mut self) {
        self.reset_connection_keep_macros();
        self.macros = Macros::default();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.end_session();
    }
}

/// The milter reply that carries a verdict to the MTA. Public for the fuzz targets, which
/// check what reaches the MTA for hostile DNS data (fuzz/fuzz_targets/dns_reply.rs).
pub fn verdict_reply(v: &Verdict) -> Reply {
    match v {
        Verdict::Continue => Reply::Continue,
        Verdict::Accept => Reply::Accept,
        Verdict::Discard => Reply::Discard,
        Verdict::Reject(r) | Verdict::Tempfail(r) | Verdict::Greylist(r) => {
            // Not `r.to_string()`: the milter text must have `%` doubled (sendmail reads it as
            // a format string and drops a reply with a lone `%`; Postfix undoes the doubling)
            // and a space after the code even without text (Postfix refuses a bare `550`).
            // Postfix reads a digit right after the code as an enhanced status code and
            // refuses the reply as malformed when its class differs (then milter_default_action
            // applies to the whole session): a HELO name, PTR name or TXT text first in a
            // template must not cause that, so such a text gets a status code in front.
            let enhanced = r.enhanced.as_deref().or_else(|| {
                r.text
                    .starts_with(|c: char| c.is_ascii_digit())
                    .then_some(if r.is_temporary() { "4.7.1" } else { "5.7.1" })
            });
            // The status code in front may push a reply of 510 octets past the line limit.
            let room = 510 - 4 - enhanced.map_or(0, |e| e.len() + 1);
            let mut end = r.text.len().min(room);
            while !r.text.is_char_boundary(end) {
                end -= 1;
            }
            let text = smtp_reply_text(r.code, enhanced, &[r.text[..end].trim_end()])
                .unwrap_or_else(|_| {
                    // Unreachable for parsed replies (one line, at most 510 octets); a reply
                    // built by hand still goes out well-formed, in its class.
                    let fallback = if r.is_temporary() {
                        DEFAULT_TEMPFAIL_REPLY
                    } else {
                        DEFAULT_REJECT_REPLY
                    };
                    fallback.to_string()
                });
            Reply::ReplyCode {
                text: Bytes::from(text),
            }
        }
    }
}

fn command_name(code: u8) -> &'static str {
    match code {
        b'C' => "CONNECT",
        b'H' => "HELO",
        b'M' => "MAIL",
        b'R' => "RCPT",
        b'T' => "DATA",
        b'L' => "HEADER",
        b'N' => "EOH",
        b'B' => "BODY",
        b'E' => "EOM",
        b'U' => "UNKNOWN",
        _ => "command",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::sender_rules::SmtpReply;

    fn wire(v: &Verdict) -> String {
        match verdict_reply(v) {
            Reply::ReplyCode { text } => String::from_utf8(text.to_vec()).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    fn reject(s: &str) -> Verdict {
        Verdict::Reject(SmtpReply::parse(s).unwrap())
    }

    #[test]
    fn reply_text_is_what_both_mtas_accept() {
        // Regressions found by fuzz/fuzz_targets/dns_reply.rs and access.rs.
        // `%` doubled: sendmail replaced a reply with a lone `%` by its own default.
        assert_eq!(wire(&reject("550 5.7.1 100% spam")), "550 5.7.1 100%% spam");
        // A space after the code: Postfix refused a bare `554` as malformed.
        assert_eq!(wire(&reject("554")), "554 ");
        // A text that starts with a digit (a HELO, PTR name or TXT text first in a template)
        // gets a status code: Postfix read `550 1.2.3.4 ...` as a malformed status code and
        // applied milter_default_action to the whole session.
        assert_eq!(
            wire(&reject("550 192.0.2.1 is not welcome")),
            "550 5.7.1 192.0.2.1 is not welcome"
        );
        let temp = Verdict::Tempfail(SmtpReply::parse("450 5 minutes").unwrap());
        assert_eq!(wire(&temp), "450 4.7.1 5 minutes");
        // ... which must not push a full-length reply past 510 octets.
        let long = format!("550 1{}", "x".repeat(505));
        let text = wire(&reject(&long));
        assert_eq!(text.len(), 510);
        assert!(text.starts_with("550 5.7.1 1xxx"), "{text}");
        // A hand-built reply that is no SMTP line still goes out as one, in its class.
        let bad = SmtpReply {
            code: 451,
            enhanced: None,
            text: "a\r\nb".into(),
        };
        assert_eq!(wire(&Verdict::Greylist(bad)), DEFAULT_TEMPFAIL_REPLY);
    }
}
