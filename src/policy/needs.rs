//! What mxsentry negotiates with the MTA under a given configuration.

use crate::config::{Action as FindingAction, Config};
use crate::protocol::negotiate::{flags, Needs, StageSet};

/// What mxsentry asks of the MTA under `config`: the stages it reads, the ones it answers, the
/// actions it may take and the macros it wants per stage.
///
/// Answered stages:
/// - RCPT, where verdicts are given;
/// - DATA, although nothing is decided there: the reply makes the MTA's socket idle before it
///   writes the end-of-message macros and command. Without it Postfix (no `TCP_NODELAY` on milter
///   sockets) holds the second of those writes behind Nagle until our delayed ACK, ~40 ms per
///   message (docs/performance.md);
/// - CONNECT when the banner may be held, and when DNS checks run: Postfix keeps commands whose
///   reply it does not await in its buffer, so without a reply the CONNECT (and the lookups it
///   starts) would reach us only with the RCPT, and the lookups could not overlap HELO and MAIL;
///   HELO and MAIL for the same reason when a lookup starts there.
pub fn needs_for(config: &Config) -> Needs {
    let holds_banner =
        !config.greeting.networks.is_empty() || config.any_finding_action(FindingAction::Delay);
    let mut reply_stages = StageSet::RCPT | StageSet::DATA;
    if holds_banner || config.dns_checks_active() {
        reply_stages |= StageSet::CONNECT;
    }
    // Likewise for the lookups that start later: the HELO name's (at HELO) and the sender
    // domain's lists (at MAIL).
    if config.helo.check_resolves {
        reply_stages |= StageSet::HELO;
    }
    if !config.dnsbl.domain_zones.is_empty() {
        reply_stages |= StageSet::MAIL;
    }
    Needs {
        actions: flags::SMFIF_ADDHDRS,
        stages: StageSet::CONNECT
            | StageSet::HELO
            | StageSet::MAIL
            | StageSet::RCPT
            | StageSet::DATA,
        reply_stages,
        macros: vec![
            (
                flags::SMFIM_CONNECT,
                "j _ v {daemon_name} {if_addr} {client_addr} {client_name} {client_ptr} {client_resolve}"
                    .into(),
            ),
            (
                flags::SMFIM_ENVFROM,
                "i {auth_type} {auth_authen} {mail_addr}".into(),
            ),
            (flags::SMFIM_ENVRCPT, "i {rcpt_addr}".into()),
            (flags::SMFIM_EOM, "i".into()),
        ],
    }
}
