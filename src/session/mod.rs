//! Per-connection state: what the MTA told us (macros, client, HELO, envelope) and the milter
//! state machine that answers each command.
//!
//! Connection state (client, HELO) lives until QUIT or QUIT_NC; message state (sender,
//! recipients, tags) is reset by ABORT and after end-of-message, as libmilter does.

mod macros;
mod record;
mod reply;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::checks::rdns_mta::MtaClientMacros;
use crate::lookups::ClientLookups;
use crate::metrics::metrics;
use crate::policy::{Envelope, Policy, Verdict};
use crate::protocol::command::{ClientAddress, Command};
use crate::protocol::flags;
use crate::protocol::negotiate::{negotiate, Negotiated};
use crate::protocol::reply::{encode_reply, Reply};
use crate::reason::Reason;
use crate::shadow::{ShadowSession, ShadowVerdict};
use macros::{bare_address, lossy, Macros};
use record::Beside;
pub use reply::verdict_reply;

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
