//! The one place that turns what the checks found into a verdict and an SMTP reply.
//!
//! The order is design.md's "decision semantics", read top to bottom in [`Policy::decide_recipient`]:
//! 1. trusted client (network or authenticated) → accept, no checks;
//! 2. recipient exemptions (`postmaster@`, `abuse@`) → never rejected (RFC 5321);
//! 3. sender rules (access file `Connect:`/`From:`/`To:`, then regex rules on the sender);
//! 4. DNSWL: a listed client skips the IP block lists (and greylisting);
//! 5. HELO, PTR/FCrDNS and DNSBL/RHSBL findings, each with its configured action — a temporary
//!    DNS failure never gives a 5xx;
//! 6. greylisting (for everyone, or selected by a `greylist` action), unless the client, sender
//!    or recipient is in a greylist allow list (`[greylist] allow_*_files`: greylisting only);
//! 7. otherwise continue.
//!
//! The answer types ([`Verdict`], [`Decision`]) are in `verdict.rs`, DNS findings in `dns.rs`,
//! the replies chosen in `outcome.rs`, the shadow candidate in `shadow.rs`.
//!
//! Checks return findings, never replies; only this module chooses a reply, so logs, dry-run tags
//! and `explain` all show the same reasoning.

mod dns;
mod needs;
mod outcome;
mod shadow;
#[cfg(test)]
mod tests;
mod verdict;

pub use needs::needs_for;
use outcome::{parse_reply, render_helo, Outcome};
use verdict::{action_word, verdict_for_action};
pub use verdict::{Decision, Verdict, DEFAULT_REJECT_REPLY, DEFAULT_TEMPFAIL_REPLY};

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use crate::checks::greylist::allow::AllowLists;
use crate::checks::greylist::Greylister;
use crate::checks::helo;
use crate::checks::rdns_mta::{self, MtaClientMacros};
use crate::checks::sender_rules::{AccessTable, Action, RegexRule, RuleHit, SenderRules};
pub use crate::checks::Finding;
use crate::config::{Action as FindingAction, Config, Mode, TrustedConfig};
use crate::lookups::{ClientLookups, DnsChecks};
use crate::protocol::negotiate::Needs;
use crate::reason::Reason;
use crate::store::GreylistStore;

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
    config: Config,
    trusted: TrustedConfig,
    exempt_recipients: Vec<String>,
    dry_run: bool,
    tag_header: String,
    rules: SenderRules,
    /// Some access entry applies to recipients (`To:` or untagged): an OK for the client or
    /// the sender cannot be answered ACCEPT, which would end the MTA's checks of the message.
    recipient_rules: bool,
    dns: Arc<DnsChecks>,
    needs: Arc<Needs>,
    /// Step 6; None where no store is open (`check-config`, `explain`).
    greylister: Option<Arc<Greylister>>,
    /// Step 6: clients, senders and recipients that skip greylisting (and nothing else).
    greylist_allow: AllowLists,
    /// The candidate of `[shadow] config`, decided beside this policy, never enforced.
    shadow: Option<shadow::Shadow>,
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
        let greylist_allow = AllowLists::load(&config.greylist)?;
        let mut dns = DnsChecks::from_config(config)?;
        if greylist_allow.needs_client_name() && config.may_greylist() {
            // A client allow-list name is matched against the FCrDNS-verified name only: look
            // it up even when no rDNS check is on.
            dns.active = true;
            dns.rdns = true;
        }
        Ok(Policy {
            config: config.clone(),
            dns: Arc::new(dns),
            greylist_allow,
            needs: Arc::new(needs_for(config)),
            greylister: None,
            shadow: None,
            trusted: config.trusted.clone(),
            exempt_recipients: config
                .milter
                .exempt_recipients
                .iter()
                .map(|s| s.to_ascii_lowercase())
                .collect(),
            dry_run: config.milter.mode == Mode::DryRun,
            tag_header: config.milter.tag_header.clone(),
            recipient_rules: access.applies_to_recipients(),
            rules: SenderRules { access, regex },
        })
    }

    /// Number of access-file entries and regex rules loaded (for the startup/reload log line).
    pub fn rule_counts(&self) -> (usize, usize) {
        (self.rules.access.len(), self.rules.regex.len())
    }

    /// Entries of the greylist allow lists (clients + senders + recipients), for log lines.
    pub fn greylist_allow_entries(&self) -> usize {
        let (c, s, r) = self.greylist_allow.counts();
        c + s + r
    }

    /// Attaches the greylist store (kept across reloads by the server) with this policy's rules.
    pub fn with_greylist_store(mut self, store: Arc<dyn GreylistStore>) -> Policy {
        self.attach_shadow_store(&store);
        self.greylister = Some(Arc::new(Greylister::new(store, &self.config.greylist)));
        self
    }

    /// Attaches the zones' health (kept across reloads by the server; built by `explain`):
    /// from then on a listing counts only from a zone whose probes passed.
    pub fn with_zone_health(self, board: Arc<crate::checks::dnsbl::board::HealthBoard>) -> Policy {
        self.set_zone_health(board);
        self
    }

    /// [`with_zone_health`](Self::with_zone_health) on a shared policy (`explain`). A policy
    /// keeps the first board it is given.
    pub fn set_zone_health(&self, board: Arc<crate::checks::dnsbl::board::HealthBoard>) {
        let _ = self.dns.health.set(board);
    }

    /// The greylister, when a store is attached.
    pub fn greylister(&self) -> Option<&Arc<Greylister>> {
        self.greylister.as_ref()
    }

    /// The configuration this policy was built from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// What to negotiate with the MTA under this policy.
    pub fn needs(&self) -> Arc<Needs> {
        self.needs.clone()
    }

    /// Starts the DNS lookups of a client at CONNECT, unless it is trusted or no DNS check is
    /// configured. `mta` (read only then): the MTA's CONNECT macros, whose own verification of
    /// the client's name is taken under `[rdns] trust_mta`.
    pub fn start_lookups<'m>(
        &self,
        ip: IpAddr,
        mta: impl FnOnce() -> MtaClientMacros<'m>,
    ) -> Option<ClientLookups> {
        if self.trusted.is_trusted_ip(ip) || !self.dns.active {
            return None;
        }
        let verified = if self.config.rdns.trust_mta {
            rdns_mta::verified(mta())
        } else {
            None
        };
        Some(ClientLookups::start(self.dns.clone(), ip, verified))
    }

    /// The banner delay for this client's network (`[greeting] networks`), if any.
    pub fn greeting_delay_for(&self, ip: IpAddr) -> Option<std::time::Duration> {
        let g = &self.config.greeting;
        g.networks
            .iter()
            .any(|n| n.contains(&ip))
            .then_some(g.delay)
    }

    /// Whether any finding may hold the banner (action `delay`); then CONNECT is answered.
    pub fn delay_by_findings(&self) -> bool {
        self.config.any_finding_action(FindingAction::Delay)
    }

    /// At CONNECT: do this client's DNS findings ask to hold the banner (action `delay`)?
    pub async fn wants_banner_delay(&self, ip: IpAddr, lookups: &mut ClientLookups) -> bool {
        let env = Envelope {
            client_ip: Some(ip),
            client_name: "",
            helo: "",
            sender: "",
            recipient: "",
            authenticated: false,
        };
        let results = lookups.results().await;
        let mut outcome = Outcome::default();
        self.dns_findings(&env, &results, &mut Vec::new(), &mut outcome);
        outcome.delay
    }

    pub fn greeting_delay(&self) -> std::time::Duration {
        self.config.greeting.delay
    }

    /// The DNS checks this policy runs (`replay` feeds them answers from the log).
    pub fn dns_checks(&self) -> &Arc<DnsChecks> {
        &self.dns
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
                    ..Default::default()
                });
            }
        }
        if env.authenticated && self.trusted.authenticated {
            return Some(Finding {
                check: "trusted",
                outcome: "authenticated".into(),
                detail: String::new(),
                ..Default::default()
            });
        }
        None
    }

    /// Decides one recipient, in design.md's order. The first step that decides wins. DNS
    /// results are awaited only when steps 1–3 did not decide.
    pub async fn decide_recipient(
        &self,
        env: &Envelope<'_>,
        lookups: Option<&mut ClientLookups>,
    ) -> Decision {
        let mut findings = Vec::new();

        // 1. Trusted networks and authenticated clients bypass every check.
        if let Some(f) = self.trusted(env) {
            let reason = f.reason();
            findings.push(f);
            return self.finish(Verdict::Accept, findings, String::new(), reason);
        }

        // 2. postmaster@ and abuse@ must always be reachable (RFC 5321 4.5.1).
        if let Some(local) = self.exempt_local_part(env.recipient) {
            findings.push(Finding {
                check: "exemption",
                outcome: "recipient".into(),
                detail: local.to_string(),
                ..Default::default()
            });
            return self.finish(
                Verdict::Continue,
                findings,
                String::new(),
                Reason::ExemptRecipient,
            );
        }

        // 3. Sender rules, stage by stage as sendmail applies its access file: the client
        //    (Connect:), the sender (From:, then regex), the recipient (To:). Each stage's entry
        //    applies on its own, so an OK for the client or the sender never overrides a To:
        //    entry for this recipient: the first refusal (in stage order) wins, else an OK.
        if let Some(d) = self.sender_rules_step(env, &mut findings) {
            return d;
        }

        // 4–5. DNS-based findings, each with its configured action.
        let mut outcome = Outcome::default();
        // No HELO at all (the MTA sent none before MAIL) is not a bogus HELO.
        let helo_problem = if env.helo.is_empty() {
            None
        } else {
            helo::check(env.helo, env.client_ip, &self.config.milter)
        };
        if let Some(helo) = helo_problem {
            let reply = render_helo(&self.config.helo.reply, env.helo);
            findings.push(Finding {
                check: "helo",
                outcome: helo.as_str().into(),
                detail: env.helo.to_string(),
                ..Default::default()
            });
            let reason = findings.last().map_or(Reason::Other, Finding::reason);
            outcome.add(self.config.helo.action, reply, reason, helo.as_str());
        }
        let mut lookups = lookups;
        if let Some(lookups) = lookups.as_deref_mut() {
            let results = lookups.results().await;
            self.dns_findings(env, &results, &mut findings, &mut outcome);
        }

        // 6. Greylisting: for everyone (`greylist.enabled`) or for clients a finding selected;
        //    never for a client a DNS allow list vouches for (step 4), nor for a client, sender
        //    or recipient in a greylist allow list (which skips nothing else, and also
        //    overrides a finding's `greylist` action).
        let greylist = outcome.greylist;
        let tags = std::mem::take(&mut outcome.tags);
        let mut verdict = outcome.verdict();
        let mut cause = outcome.cause();
        // An accept's reason: what let the client through (a DNS allow list, greylisting).
        let mut reason = outcome.reason().unwrap_or(if outcome.allow_listed {
            Reason::DnswlListed
        } else {
            Reason::None
        });
        let mut headers = Vec::new();
        let mut wanted = (self.config.greylist.enabled || greylist) && !outcome.allow_listed;
        if verdict == Verdict::Continue && wanted {
            if let Some(detail) = self.greylist_allowed(env, lookups) {
                findings.push(Finding {
                    check: "greylist",
                    outcome: "allowed".into(),
                    detail,
                    ..Default::default()
                });
                reason = Reason::GreylistAllowed;
                wanted = false;
            }
        }
        if verdict == Verdict::Continue && wanted {
            if let (Some(g), Some(ip)) = (&self.greylister, env.client_ip) {
                let now = crate::checks::greylist::unix_now();
                let r = g
                    .check(
                        ip,
                        outcome.verified_name.as_deref(),
                        env.sender,
                        env.recipient,
                        now,
                    )
                    .await;
                let finding = r.finding();
                reason = finding.reason();
                findings.push(finding);
                if let Some(text) = r.reply(&self.config.greylist) {
                    verdict = Verdict::Greylist(parse_reply(&text).with_class(4));
                    cause = format!("greylist={}", r.outcome.as_str());
                }
                headers.extend(r.header(env!("CARGO_PKG_VERSION"), now));
            } else {
                findings.push(Finding {
                    check: "greylist",
                    outcome: "not_checked".into(),
                    detail: "greylisting applies, but no store is open here (explain)".into(),
                    ..Default::default()
                });
            }
        }

        // 7. Otherwise the strongest action wins.
        let mut d = self.finish(verdict, findings, cause, reason);
        d.tags = tags;
        d.greylist = greylist;
        d.headers = headers;
        d
    }

    /// Step 6's allow lists: why this client, recipient or sender skips greylisting, if one
    /// does. The client's answer is worked out once per connection and kept in its lookups.
    fn greylist_allowed(
        &self,
        env: &Envelope<'_>,
        lookups: Option<&mut ClientLookups>,
    ) -> Option<String> {
        if self.greylist_allow.is_empty() {
            return None;
        }
        let client = |ip: IpAddr, name: Option<&str>| {
            let hit = self.greylist_allow.client(ip, name)?;
            let name = name.map(|n| format!(" ({n})")).unwrap_or_default();
            Some(format!(
                "greylisting skipped: client {ip}{name} in allow list {hit}"
            ))
        };
        let client = env.client_ip.and_then(|ip| match lookups {
            Some(l) => {
                if l.greylist_allow.is_none() {
                    l.greylist_allow = Some(client(ip, l.verified_name()));
                }
                l.greylist_allow.clone().flatten()
            }
            None => client(ip, None),
        });
        client
            .or_else(|| {
                let hit = self.greylist_allow.recipient(env.recipient)?;
                let rcpt = env.recipient;
                Some(format!(
                    "greylisting skipped: recipient <{rcpt}> in allow list {hit}"
                ))
            })
            .or_else(|| {
                let hit = self.greylist_allow.sender(env.sender)?;
                let sender = env.sender;
                Some(format!(
                    "greylisting skipped: sender <{sender}> in allow list {hit}"
                ))
            })
    }

    /// Step 3. `Some` when a rule decides: a refusal or discard from any stage, else an OK.
    /// An OK for the client or the sender covers the message, an OK for the recipient only
    /// that recipient: both skip steps 4–6. A message-wide OK is answered ACCEPT (the MTA then
    /// asks nothing more about the message) only when no `To:` rule could still refuse a later
    /// recipient; otherwise it is CONTINUE and each recipient comes back through here.
    fn sender_rules_step(
        &self,
        env: &Envelope<'_>,
        findings: &mut Vec<Finding>,
    ) -> Option<Decision> {
        let decides = |h: &RuleHit<'_>| !matches!(h.action, Action::Skip);
        let client = env
            .client_ip
            .and_then(|ip| self.rules.connect_hit(ip, verified_name(env.client_name)))
            .filter(decides);
        let sender = self.rules.sender_hit(env.sender).filter(decides);
        let recipient = self.rules.recipient_hit(env.recipient).filter(decides);
        let finding = |hit: &RuleHit<'_>| Finding {
            check: "sender_rules",
            outcome: action_word(hit.action).into(),
            detail: hit.describe(),
            ..Default::default()
        };
        let stages = [(client, true), (sender, true), (recipient, false)];
        let mut ok: Option<(RuleHit<'_>, bool)> = None;
        for (hit, message_wide) in stages.into_iter().filter_map(|(h, w)| Some((h?, w))) {
            match verdict_for_action(hit.action) {
                Some(Verdict::Accept) => {
                    // The first OK in stage order: a message-wide one if there is any.
                    ok.get_or_insert((hit, message_wide));
                }
                Some(verdict) => {
                    let f = finding(&hit);
                    let reason = f.reason();
                    findings.push(f);
                    let cause = format!("sender_rules={}", hit.describe());
                    return Some(self.finish(verdict, std::mem::take(findings), cause, reason));
                }
                None => {}
            }
        }
        let (hit, message_wide) = ok?;
        findings.push(finding(&hit));
        let verdict = if message_wide && !self.recipient_rules {
            Verdict::Accept
        } else {
            Verdict::Continue
        };
        let cause = format!("sender_rules={}", hit.describe());
        let reason = Reason::SenderRulesOk;
        Some(self.finish(verdict, std::mem::take(findings), cause, reason))
    }

    /// Applies the mode: in dry-run a blocking verdict becomes a note and the mail goes on.
    fn finish(
        &self,
        verdict: Verdict,
        findings: Vec<Finding>,
        cause: String,
        reason: Reason,
    ) -> Decision {
        if self.dry_run && verdict.is_blocking() {
            Decision {
                verdict: Verdict::Continue,
                would: Some(verdict),
                findings,
                tags: Vec::new(),
                greylist: false,
                headers: Vec::new(),
                cause,
                reason,
            }
        } else {
            Decision {
                verdict,
                would: None,
                findings,
                tags: Vec::new(),
                greylist: false,
                headers: Vec::new(),
                cause,
                reason,
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

/// Whether the MTA's client name is a verified host name (not `[ip]`, `unknown` or empty).
pub fn is_verified_name(name: &str) -> bool {
    verified_name(name).is_some()
}

/// The MTA's client name only when it is a verified host name (not `[ip]` nor `unknown`).
fn verified_name(name: &str) -> Option<&str> {
    if name.is_empty() || name.starts_with('[') || name.eq_ignore_ascii_case("unknown") {
        None
    } else {
        Some(name)
    }
}

/// Loads the config file and builds a policy from it, with the shadow candidate it names:
/// what `run`, `check-config` and reload share.
pub fn load(path: &Path) -> Result<(Config, Policy), String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    let policy = Policy::from_config(&config)?.load_shadow(path)?;
    Ok((config, policy))
}
