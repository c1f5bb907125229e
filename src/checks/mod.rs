//! The checks. Each takes what the MTA told us and returns findings; none of them picks an SMTP
//! reply (that is `policy`'s job).

pub mod dnsbl;
pub mod greylist;
pub mod helo;
pub mod rdns;
pub mod rdns_mta;
pub mod sender_rules;

/// One observation of one check, with the evidence behind it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Finding {
    /// Check name: `trusted`, `exemption`, `sender_rules`, ...
    pub check: &'static str,
    /// Short outcome word: `reject`, `discard`, `ok`, `network`, ...
    pub outcome: String,
    /// Evidence: the rule that matched, the network, ...
    pub detail: String,
    /// The DNS answers behind the finding, for the JSON decision line (what `replay` needs to
    /// decide again without lookups).
    pub evidence: Evidence,
}

/// Most DNS answers (A records, PTR names, forward addresses per name) kept per finding as
/// evidence: the JSON decision line stays bounded whatever a zone answers.
pub const MAX_EVIDENCE_ANSWERS: usize = 8;

/// The DNS answers a finding was based on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Evidence {
    /// Nothing from DNS (HELO syntax, sender rules, trusted networks, ...).
    #[default]
    None,
    /// A DNS list: the zone, the name queried, its A answers (at most
    /// [`MAX_EVIDENCE_ANSWERS`]), the TXT text of a listing, or the lookup error.
    Zone {
        zone: String,
        query: String,
        answers: Vec<std::net::Ipv4Addr>,
        txt: Option<String>,
        error: Option<String>,
    },
    /// PTR/FCrDNS: the PTR names and each checked name's forward addresses (or error), at most
    /// [`MAX_EVIDENCE_ANSWERS`] of each; `by_mta` when the MTA vouched and nothing was looked up.
    Rdns(Box<rdns::RdnsEvidence>),
    /// Greylisting: the seconds left (`new`, `too_early`) or waited (`passed`).
    Greylist { seconds: Option<u64> },
}

impl Finding {
    /// The finding's stable reason code.
    pub fn reason(&self) -> crate::reason::Reason {
        crate::reason::Reason::of_finding(self.check, &self.outcome)
    }
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
        write!(f, "{}({})", self.reason(), self.detail)
    }
}
