//! What mxsentry negotiates with the MTA under a given configuration.

use crate::config::{Action as FindingAction, Config};
use crate::protocol::negotiate::{flags, Needs, StageSet};

/// What mxsentry asks of the MTA under `config`: the stages it reads, the ones it answers
/// (RCPT, where verdicts are given; CONNECT too when the banner may be held), the actions it
/// may take and the macros it wants per stage.
pub fn needs_for(config: &Config) -> Needs {
    let holds_banner =
        !config.greeting.networks.is_empty() || config.any_finding_action(FindingAction::Delay);
    let mut reply_stages = StageSet::RCPT;
    if holds_banner {
        reply_stages |= StageSet::CONNECT;
    }
    Needs {
        actions: flags::SMFIF_ADDHDRS,
        stages: StageSet::CONNECT | StageSet::HELO | StageSet::MAIL | StageSet::RCPT,
        reply_stages,
        macros: vec![
            (
                flags::SMFIM_CONNECT,
                "j _ {daemon_name} {if_addr} {client_addr} {client_name} {client_ptr} {client_resolve}"
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
