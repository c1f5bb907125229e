//! The one place that turns what the checks found into a verdict and an SMTP reply.
//!
//! The order is design.md's "decision semantics", read top to bottom in [`Policy::decide_recipient`]:
//! 1. trusted client (network or authenticated) → accept, no checks;
//! 2. recipient exemptions (`postmaster@`, `abuse@`) → never rejected (RFC 5321);
//! 3. sender rules (access file `Connect:`/`From:`/`To:`, then regex rules on the sender);
//! 4. DNSWL, 5. HELO/PTR/DNSBL findings, 6. greylisting (added by later checks);
//! 7. otherwise continue.
//!
//! Checks return findings, never replies; only this module chooses a reply, so logs, dry-run tags
//! and `explain` all show the same reasoning.

use std::net::IpAddr;
use std::path::Path;

use crate::checks::sender_rules::{AccessTable, Action, RegexRule, SenderRules, SmtpReply};
pub use crate::checks::Finding;
use crate::config::{Config, Mode, TrustedConfig};

/// Reply for a plain `REJECT` rule, as sendmail admins know it.
pub const DEFAULT_REJECT_REPLY: &str = "550 5.7.1 Access denied";
/// Reply for a `TEMPFAIL` rule.
pub const DEFAULT_TEMPFAIL_REPLY: &str = "451 4.7.1 Try again later";

/// What the MTA is told about one recipient (and, for discard, the whole message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Accept this recipient; later checks still run for later recipients.
    Continue,
    /// Accept the whole message without further checks (trusted client, `OK` rule).
    Accept,
    Reject(SmtpReply),
    Tempfail(SmtpReply),
    /// Accept and silently drop the message.
    Discard,
}

impl Verdict {
    /// The stable word used in logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Continue | Verdict::Accept => "accept",
            Verdict::Reject(_) => "reject",
            Verdict::Tempfail(_) => "tempfail",
            Verdict::Discard => "discard",
        }
    }

    /// The SMTP reply text the client sees, when the verdict carries one.
    pub fn reply(&self) -> Option<&SmtpReply> {
        match self {
            Verdict::Reject(r) | Verdict::Tempfail(r) => Some(r),
            _ => None,
        }
    }

    /// True when the verdict refuses or drops mail (what dry-run must not do).
    pub fn is_blocking(&self) -> bool {
        matches!(
            self,
            Verdict::Reject(_) | Verdict::Tempfail(_) | Verdict::Discard
        )
    }
}

/// The verdict for one recipient and why.
#[derive(Debug, Clone)]
pub struct Decision {
    /// What is enforced (in dry-run mode never blocking).
    pub verdict: Verdict,
    /// In dry-run mode: the blocking verdict that enforce mode would have given.
    pub would: Option<Verdict>,
    pub findings: Vec<Finding>,
}

/// Everything the policy needs to know about one recipient of one message.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    pub client_ip: Option<IpAddr>,
    /// The MTA's verified client name, or `[ip]` / `unknown` when it has none.
    pub client_name: &'a str,
    pub helo: &'a str,
    /// Envelope sender without angle brackets; empty for the null sender.
    pub sender: &'a str,
    /// Recipient without angle brackets.
    pub recipient: &'a str,
    /// The MTA said the client authenticated (`{auth_authen}` set).
    pub authenticated: bool,
}

/// The loaded rules; rebuilt on reload and shared read-only by sessions.
pub struct Policy {
    trusted: TrustedConfig,
    exempt_recipients: Vec<String>,
    dry_run: bool,
    tag_header: String,
    rules: SenderRules,
}

impl Policy {
    /// Builds the policy from a validated config, reading the access file it names.
    pub fn from_config(config: &Config) -> Result<Policy, String> {
        let access = match &config.sender_rules.access_file {
            Some(path) => AccessTable::load(path).map_err(|e| e.to_string())?,
            None => AccessTable::default(),
        };
        let mut regex = Vec::with_capacity(config.sender_rules.regex.len());
        for rule in &config.sender_rules.regex {
            let pattern = rule.pattern.get_ref().clone();
            let compiled = regex::RegexBuilder::new(&pattern)
                .case_insensitive(rule.case_insensitive)
                .build()
                .map_err(|e| format!("invalid regex `{pattern}`: {e}"))?;
            let action = Action::parse(rule.action.get_ref())?;
            regex.push(RegexRule {
                pattern,
                regex: compiled,
                action,
            });
        }
        Ok(Policy {
            trusted: config.trusted.clone(),
            exempt_recipients: config
                .milter
                .exempt_recipients
                .iter()
                .map(|s| s.to_ascii_lowercase())
                .collect(),
            dry_run: config.milter.mode == Mode::DryRun,
            tag_header: config.milter.tag_header.clone(),
            rules: SenderRules { access, regex },
        })
    }

    /// Number of access-file entries and regex rules loaded (for the startup/reload log line).
    pub fn rule_counts(&self) -> (usize, usize) {
        (self.rules.access.len(), self.rules.regex.len())
    }

    pub fn dry_run(&self) -> bool {
        self.dry_run
    }

    /// Header name used to tag messages (dry-run verdicts).
    pub fn tag_header(&self) -> &str {
        &self.tag_header
    }

    /// Is this client trusted (step 1)? Returns the finding that says why.
    pub fn trusted(&self, env: &Envelope<'_>) -> Option<Finding> {
        if let Some(ip) = env.client_ip {
            if self.trusted.is_trusted_ip(ip) {
                return Some(Finding {
                    check: "trusted",
                    outcome: "network".into(),
                    detail: ip.to_string(),
                });
            }
        }
        if env.authenticated && self.trusted.authenticated {
            return Some(Finding {
                check: "trusted",
                outcome: "authenticated".into(),
                detail: String::new(),
            });
        }
        None
    }

    /// Decides one recipient, in design.md's order. The first step that decides wins.
    pub fn decide_recipient(&self, env: &Envelope<'_>) -> Decision {
        let mut findings = Vec::new();

        // 1. Trusted networks and authenticated clients bypass every check.
        if let Some(f) = self.trusted(env) {
            findings.push(f);
            return self.finish(Verdict::Accept, findings);
        }

        // 2. postmaster@ and abuse@ must always be reachable (RFC 5321 4.5.1).
        if let Some(local) = self.exempt_local_part(env.recipient) {
            findings.push(Finding {
                check: "exemption",
                outcome: "recipient".into(),
                detail: local.to_string(),
            });
            return self.finish(Verdict::Continue, findings);
        }

        // 3. Sender rules: client (Connect:), sender (From:, then regex), recipient (To:).
        let hit = env
            .client_ip
            .and_then(|ip| {
                self.rules
                    .connect_hit(ip, verified_name(env.client_name))
                    .filter(|h| !matches!(h.action, Action::Skip))
            })
            .or_else(|| {
                self.rules
                    .sender_hit(env.sender)
                    .filter(|h| !matches!(h.action, Action::Skip))
            })
            .or_else(|| {
                self.rules
                    .recipient_hit(env.recipient)
                    .filter(|h| !matches!(h.action, Action::Skip))
            });
        if let Some(hit) = hit {
            let verdict = verdict_for_action(hit.action);
            findings.push(Finding {
                check: "sender_rules",
                outcome: action_word(hit.action).into(),
                detail: hit.describe(),
            });
            if let Some(verdict) = verdict {
                return self.finish(verdict, findings);
            }
        }

        // 7. Nothing decided.
        self.finish(Verdict::Continue, findings)
    }

    /// Applies the mode: in dry-run a blocking verdict becomes a note and the mail goes on.
    fn finish(&self, verdict: Verdict, findings: Vec<Finding>) -> Decision {
        if self.dry_run && verdict.is_blocking() {
            Decision {
                verdict: Verdict::Continue,
                would: Some(verdict),
                findings,
            }
        } else {
            Decision {
                verdict,
                would: None,
                findings,
            }
        }
    }

    fn exempt_local_part<'a>(&self, recipient: &'a str) -> Option<&'a str> {
        let local = recipient.rsplit_once('@').map_or(recipient, |(l, _)| l);
        self.exempt_recipients
            .iter()
            .any(|e| e.eq_ignore_ascii_case(local))
            .then_some(local)
    }
}

/// The MTA's client name only when it is a verified host name (not `[ip]` nor `unknown`).
fn verified_name(name: &str) -> Option<&str> {
    if name.is_empty() || name.starts_with('[') || name.eq_ignore_ascii_case("unknown") {
        None
    } else {
        Some(name)
    }
}

/// Maps an access-file action to a verdict; `None` means "no decision" (SKIP).
fn verdict_for_action(action: &Action) -> Option<Verdict> {
    Some(match action {
        Action::Ok => Verdict::Accept,
        Action::Reject => Verdict::Reject(default_reply(DEFAULT_REJECT_REPLY)),
        Action::Tempfail => Verdict::Tempfail(default_reply(DEFAULT_TEMPFAIL_REPLY)),
        Action::Discard => Verdict::Discard,
        Action::Error(reply) if reply.is_temporary() => Verdict::Tempfail(reply.clone()),
        Action::Error(reply) => Verdict::Reject(reply.clone()),
        Action::Skip => return None,
    })
}

fn action_word(action: &Action) -> &'static str {
    match action {
        Action::Ok => "ok",
        Action::Reject => "reject",
        Action::Tempfail => "tempfail",
        Action::Discard => "discard",
        Action::Error(r) if r.is_temporary() => "error_temp",
        Action::Error(_) => "error",
        Action::Skip => "skip",
    }
}

fn default_reply(text: &str) -> SmtpReply {
    SmtpReply::parse(text).expect("built-in reply texts are valid")
}

/// Loads the config file and builds a policy from it: what `run`, `check-config` and reload share.
pub fn load(path: &Path) -> Result<(Config, Policy), String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    let policy = Policy::from_config(&config)?;
    Ok((config, policy))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy_with(access: &str, extra_toml: &str) -> Policy {
        let dir = tempfile::tempdir().unwrap();
        let access_path = dir.path().join("access");
        std::fs::write(&access_path, access).unwrap();
        let text = format!(
            "[sender_rules]\naccess_file = {:?}\n{extra_toml}",
            access_path.display().to_string()
        );
        let config = Config::parse(&text, Path::new("test.toml")).unwrap();
        Policy::from_config(&config).unwrap()
    }

    fn env<'a>(ip: &str, sender: &'a str, rcpt: &'a str) -> Envelope<'a> {
        Envelope {
            client_ip: Some(ip.parse().unwrap()),
            client_name: "[192.0.2.10]",
            helo: "helo.test",
            sender,
            recipient: rcpt,
            authenticated: false,
        }
    }

    const ACCESS: &str = "From:reject.example REJECT\nFrom:discard.example DISCARD\n\
        From:banned.example ERROR:\"550 Sender banned. Please use legitimate domain\"\n\
        From:later.example ERROR:4.7.1:\"451 Later\"\nFrom:friend.example OK\n\
        Connect:192.0.2.66 REJECT\nTo:blocked@example.org REJECT\n";

    #[test]
    fn decision_order() {
        let p = policy_with(ACCESS, "");
        let d = p.decide_recipient(&env("192.0.2.10", "a@reject.example", "u@example.org"));
        assert_eq!(d.verdict.name(), "reject");
        assert_eq!(
            d.verdict.reply().unwrap().to_string(),
            "550 5.7.1 Access denied"
        );
        // postmaster exemption beats the sender rule
        let d = p.decide_recipient(&env(
            "192.0.2.10",
            "a@reject.example",
            "Postmaster@example.org",
        ));
        assert_eq!(d.verdict, Verdict::Continue);
        assert_eq!(d.findings[0].check, "exemption");
        // trusted network beats everything
        let d = p.decide_recipient(&env("127.0.0.1", "a@reject.example", "u@example.org"));
        assert_eq!(d.verdict, Verdict::Accept);
        let d = p.decide_recipient(&env("192.0.2.10", "a@discard.example", "u@example.org"));
        assert_eq!(d.verdict, Verdict::Discard);
        let d = p.decide_recipient(&env("192.0.2.10", "x@banned.example", "u@example.org"));
        assert_eq!(
            d.verdict.reply().unwrap().to_string(),
            "550 Sender banned. Please use legitimate domain"
        );
        let d = p.decide_recipient(&env("192.0.2.10", "x@later.example", "u@example.org"));
        assert_eq!(d.verdict.name(), "tempfail");
        let d = p.decide_recipient(&env("192.0.2.66", "x@friend.example", "u@example.org"));
        assert_eq!(d.verdict.name(), "reject", "Connect: is looked up first");
        let d = p.decide_recipient(&env("192.0.2.10", "x@ok.example", "blocked@example.org"));
        assert_eq!(d.verdict.name(), "reject");
        let d = p.decide_recipient(&env("192.0.2.10", "x@ok.example", "u@example.org"));
        assert_eq!(d.verdict, Verdict::Continue);
        assert!(d.findings.is_empty());
    }

    #[test]
    fn authenticated_clients_are_trusted_when_configured() {
        let p = policy_with(ACCESS, "");
        let mut e = env("192.0.2.10", "a@reject.example", "u@example.org");
        e.authenticated = true;
        assert_eq!(p.decide_recipient(&e).verdict, Verdict::Accept);
        let p = policy_with(ACCESS, "[trusted]\nauthenticated = false\n");
        assert_eq!(p.decide_recipient(&e).verdict.name(), "reject");
    }

    #[test]
    fn regex_rules_match_the_sender() {
        let p = policy_with(
            "",
            "[[sender_rules.regex]]\npattern = '^[^@]+@(emalsrv|complains)\\.'\naction = 'ERROR:\"550 5.7.1 Sender banned\"'\n",
        );
        let d = p.decide_recipient(&env(
            "192.0.2.10",
            "bounce@emalsrv.example.com",
            "u@example.org",
        ));
        assert_eq!(
            d.verdict.reply().unwrap().to_string(),
            "550 5.7.1 Sender banned"
        );
    }

    #[test]
    fn dry_run_never_blocks_but_remembers() {
        let p = policy_with(ACCESS, "[milter]\nmode = \"dry-run\"\n");
        let d = p.decide_recipient(&env("192.0.2.10", "a@reject.example", "u@example.org"));
        assert_eq!(d.verdict, Verdict::Continue);
        assert_eq!(d.would.unwrap().name(), "reject");
    }
}
