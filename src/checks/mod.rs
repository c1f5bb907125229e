//! The checks. Each takes what the MTA told us and returns findings; none of them picks an SMTP
//! reply (that is `policy`'s job).

pub mod dnsbl;
pub mod greylist;
pub mod helo;
pub mod rdns;
pub mod rdns_mta;
pub mod sender_rules;

/// One observation of one check, with the evidence behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Check name: `trusted`, `exemption`, `sender_rules`, ...
    pub check: &'static str,
    /// Short outcome word: `reject`, `discard`, `ok`, `network`, ...
    pub outcome: String,
    /// Evidence: the rule that matched, the network, ...
    pub detail: String,
}

impl Finding {
    /// False for the "all is well" outcomes (`ok`, `not_listed`, `resolves`) that `explain`
    /// shows but a log line need not repeat for every message.
    pub fn is_notable(&self) -> bool {
        !matches!(self.outcome.as_str(), "ok" | "not_listed" | "resolves")
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}({})", self.check, self.outcome, self.detail)
    }
}
