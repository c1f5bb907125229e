//! The checks. Each takes what the MTA told us and returns findings; none of them picks an SMTP
//! reply (that is `policy`'s job).

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

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}({})", self.check, self.outcome, self.detail)
    }
}

