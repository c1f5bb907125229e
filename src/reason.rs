//! The one vocabulary of reasons: a stable code for every finding and every verdict cause.
//!
//! The same code appears in the decision log (`reason=` and the JSON `evidence`), the tag
//! header, `explain`, and the `reason` label of `mxsentry_recipients_total` and
//! `mxsentry_dry_run_verdicts_total`. Codes are `check.outcome` words; they never contain a
//! zone, an address or a name, so a metric label made of them stays bounded. The table in
//! docs/reasons.md lists them all (a test keeps the two in step).
//!
//! Findings keep their older `check` and `outcome` words (`rdns`/`no_ptr`, used by
//! `mxsentry_findings_total`); [`Reason::of_finding`] is the one mapping from those words to
//! a code.

macro_rules! reasons {
    ($($variant:ident => $code:literal, [$($verdict:literal),*];)*) => {
        /// A stable reason code; see the module docs and docs/reasons.md.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Reason {
            $($variant,)*
        }

        impl Reason {
            /// Every code, in the order of docs/reasons.md.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            /// The stable code (`dnsbl.listed`).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$variant => $code,)*
                }
            }

            /// The verdicts (`mxsentry_recipients_total` words) this code is typically the
            /// reason for; empty for findings that never decide on their own (`dnsbl.not_listed`).
            pub fn typical_verdicts(self) -> &'static [&'static str] {
                match self {
                    $(Reason::$variant => &[$($verdict),*],)*
                }
            }
        }
    };
}

reasons! {
    None => "none", ["accept"];
    DryRun => "dry_run", ["accept"];
    TrustedNetwork => "trusted.network", ["accept"];
    TrustedAuth => "trusted.auth", ["accept"];
    ExemptRecipient => "exempt.recipient", ["accept"];
    SenderRulesOk => "sender_rules.ok", ["accept"];
    SenderRulesReject => "sender_rules.reject", ["reject"];
    SenderRulesTempfail => "sender_rules.tempfail", ["tempfail"];
    SenderRulesDiscard => "sender_rules.discard", ["discard"];
    SenderRulesError => "sender_rules.error", ["reject"];
    SenderRulesErrorTemp => "sender_rules.error_temp", ["tempfail"];
    DnswlListed => "dnswl.listed", ["accept"];
    DnswlNotListed => "dnswl.not_listed", [];
    DnswlRefused => "dnswl.refused", [];
    DnswlError => "dnswl.error", [];
    DnswlUntrusted => "dnswl.untrusted", [];
    DnsblListed => "dnsbl.listed", ["reject", "tempfail"];
    DnsblNotListed => "dnsbl.not_listed", [];
    DnsblRefused => "dnsbl.refused", [];
    DnsblError => "dnsbl.error", ["tempfail"];
    DnsblUntrusted => "dnsbl.untrusted", [];
    RhsblListed => "rhsbl.listed", ["reject", "tempfail"];
    RhsblNotListed => "rhsbl.not_listed", [];
    RhsblRefused => "rhsbl.refused", [];
    RhsblError => "rhsbl.error", [];
    RhsblUntrusted => "rhsbl.untrusted", [];
    RdnsOk => "rdns.ok", [];
    RdnsNone => "rdns.none", ["reject", "tempfail"];
    RdnsForged => "rdns.forged", ["reject", "tempfail"];
    RdnsDynamic => "rdns.dynamic", ["reject", "tempfail"];
    RdnsError => "rdns.error", ["tempfail"];
    HeloOk => "helo.ok", [];
    HeloUnqualified => "helo.unqualified", ["reject", "tempfail"];
    HeloOurName => "helo.our_name", ["reject", "tempfail"];
    HeloOurAddress => "helo.our_address", ["reject", "tempfail"];
    HeloBadLiteral => "helo.bad_literal", ["reject", "tempfail"];
    HeloInvalid => "helo.invalid", ["reject", "tempfail"];
    HeloBareIp => "helo.bare_ip", ["reject", "tempfail"];
    HeloEmpty => "helo.empty", ["reject", "tempfail"];
    HeloUnresolvable => "helo.unresolvable", ["reject", "tempfail"];
    HeloError => "helo.error", ["tempfail"];
    GreylistNew => "greylist.new", ["greylist"];
    GreylistEarly => "greylist.early", ["greylist"];
    GreylistPassed => "greylist.passed", ["accept"];
    GreylistAutowhite => "greylist.autowhite", ["accept"];
    GreylistClientAutowhite => "greylist.client_autowhite", ["accept"];
    GreylistAllowed => "greylist.allowed", ["accept"];
    GreylistStoreError => "greylist.store_error", ["accept"];
    GreylistNotChecked => "greylist.not_checked", [];
    TooManyRecipients => "limits.too_many_recipients", ["tempfail"];
    Other => "other", [];
}

impl Reason {
    /// The check part of the code (`dnsbl` for `dnsbl.listed`; the whole code when it has no
    /// dot).
    pub fn check(self) -> &'static str {
        let code = self.as_str();
        code.split_once('.').map_or(code, |(check, _)| check)
    }

    /// The code for a finding's `check` and `outcome` words; [`Reason::Other`] for a pair
    /// this table does not know (a bug: the unit tests walk every check's words).
    pub fn of_finding(check: &str, outcome: &str) -> Reason {
        use Reason::*;
        match (check, outcome) {
            ("trusted", "network") => TrustedNetwork,
            ("trusted", "authenticated") => TrustedAuth,
            ("exemption", "recipient") => ExemptRecipient,
            ("sender_rules", "ok") => SenderRulesOk,
            ("sender_rules", "reject") => SenderRulesReject,
            ("sender_rules", "tempfail") => SenderRulesTempfail,
            ("sender_rules", "discard") => SenderRulesDiscard,
            ("sender_rules", "error") => SenderRulesError,
            ("sender_rules", "error_temp") => SenderRulesErrorTemp,
            ("dnswl", "listed") => DnswlListed,
            ("dnswl", "not_listed") => DnswlNotListed,
            ("dnswl", "refused") => DnswlRefused,
            ("dnswl", "temp" | "error") => DnswlError,
            ("dnswl", "untrusted") => DnswlUntrusted,
            ("dnsbl", "listed") => DnsblListed,
            ("dnsbl", "not_listed") => DnsblNotListed,
            ("dnsbl", "refused") => DnsblRefused,
            ("dnsbl", "temp" | "error") => DnsblError,
            ("dnsbl", "untrusted") => DnsblUntrusted,
            ("rhsbl", "listed") => RhsblListed,
            ("rhsbl", "not_listed") => RhsblNotListed,
            ("rhsbl", "refused") => RhsblRefused,
            ("rhsbl", "temp" | "error") => RhsblError,
            ("rhsbl", "untrusted") => RhsblUntrusted,
            ("rdns", "ok") => RdnsOk,
            ("rdns", "no_ptr") => RdnsNone,
            ("rdns", "forged") => RdnsForged,
            ("rdns", "dynamic") => RdnsDynamic,
            ("rdns", "temp") => RdnsError,
            ("helo", "ok" | "resolves") => HeloOk,
            ("helo", "unqualified") => HeloUnqualified,
            ("helo", "our_name") => HeloOurName,
            ("helo", "our_address") => HeloOurAddress,
            ("helo", "literal_mismatch") => HeloBadLiteral,
            ("helo", "invalid_syntax") => HeloInvalid,
            ("helo", "bare_ip") => HeloBareIp,
            ("helo", "empty") => HeloEmpty,
            ("helo", "unresolvable") => HeloUnresolvable,
            ("helo", "temp") => HeloError,
            ("greylist", "new") => GreylistNew,
            ("greylist", "too_early") => GreylistEarly,
            ("greylist", "passed") => GreylistPassed,
            ("greylist", "whitelisted") => GreylistAutowhite,
            ("greylist", "client_whitelisted") => GreylistClientAutowhite,
            ("greylist", "allowed") => GreylistAllowed,
            ("greylist", "error") => GreylistStoreError,
            ("greylist", "not_checked") => GreylistNotChecked,
            _ => Other,
        }
    }

    /// The code's position in [`Reason::ALL`] (metrics index their counters by it).
    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::dnsbl::ZoneKind;
    use crate::checks::greylist::GreylistOutcome;
    use crate::checks::helo::HeloProblem;
    use crate::checks::rdns::RdnsOutcome;

    #[test]
    fn codes_are_unique_bounded_words_in_table_order() {
        let mut seen = std::collections::HashSet::new();
        for (i, r) in Reason::ALL.iter().enumerate() {
            let code = r.as_str();
            assert!(seen.insert(code), "duplicate {code}");
            assert_eq!(r.index(), i);
            assert!(code.len() <= 32, "{code}");
            assert!(
                code.bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'.'),
                "{code}"
            );
            for v in r.typical_verdicts() {
                assert!(crate::metrics::VERDICTS.contains(v), "{code}: {v}");
            }
        }
    }

    #[test]
    fn every_check_outcome_word_has_a_code() {
        let mut pairs: Vec<(&str, String)> = Vec::new();
        for p in [
            HeloProblem::Unqualified,
            HeloProblem::OurName,
            HeloProblem::OurAddress,
            HeloProblem::LiteralMismatch,
            HeloProblem::InvalidSyntax,
            HeloProblem::BareIp,
            HeloProblem::Empty,
        ] {
            pairs.push(("helo", p.as_str().into()));
        }
        for w in ["ok", "resolves", "unresolvable", "temp"] {
            pairs.push(("helo", w.into()));
        }
        for o in [
            RdnsOutcome::Ok,
            RdnsOutcome::NoPtr,
            RdnsOutcome::Forged,
            RdnsOutcome::Temp,
        ] {
            pairs.push(("rdns", o.as_str().into()));
        }
        pairs.push(("rdns", "dynamic".into()));
        for kind in [ZoneKind::Ip, ZoneKind::Domain, ZoneKind::Allow] {
            for w in [
                "listed",
                "not_listed",
                "refused",
                "temp",
                "error",
                "untrusted",
            ] {
                pairs.push((kind.check_name(), w.into()));
            }
        }
        for o in [
            GreylistOutcome::New { retry_in: 1 },
            GreylistOutcome::TooEarly { retry_in: 1 },
            GreylistOutcome::Passed { waited: 1 },
            GreylistOutcome::Whitelisted,
            GreylistOutcome::ClientWhitelisted,
            GreylistOutcome::StoreError("x".into()),
        ] {
            pairs.push(("greylist", o.as_str().into()));
        }
        for w in ["allowed", "not_checked"] {
            pairs.push(("greylist", w.into()));
        }
        for w in ["ok", "reject", "tempfail", "discard", "error", "error_temp"] {
            pairs.push(("sender_rules", w.into()));
        }
        pairs.push(("trusted", "network".into()));
        pairs.push(("trusted", "authenticated".into()));
        pairs.push(("exemption", "recipient".into()));
        for (check, outcome) in &pairs {
            let r = Reason::of_finding(check, outcome);
            assert_ne!(r, Reason::Other, "{check}:{outcome}");
        }
        // Spot checks of the renamed words.
        assert_eq!(Reason::of_finding("rdns", "no_ptr").as_str(), "rdns.none");
        assert_eq!(
            Reason::of_finding("helo", "literal_mismatch").as_str(),
            "helo.bad_literal"
        );
        assert_eq!(
            Reason::of_finding("greylist", "whitelisted").as_str(),
            "greylist.autowhite"
        );
        assert_eq!(Reason::of_finding("dnsbl", "temp").as_str(), "dnsbl.error");
        assert_eq!(Reason::of_finding("dnsbl", "made_up"), Reason::Other);
        assert_eq!(Reason::DnsblListed.check(), "dnsbl");
        assert_eq!(Reason::DryRun.check(), "dry_run");
    }

    #[test]
    fn docs_table_lists_every_code_and_no_other() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/reasons.md");
        let doc = std::fs::read_to_string(path).unwrap();
        let table = doc
            .split("\n## Codes\n")
            .nth(1)
            .and_then(|rest| rest.split("\n## ").next())
            .expect("a `## Codes` section");
        let mut documented = Vec::new();
        for row in table.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = row.split(" | ").map(str::trim).collect();
            let code = cells[0].trim_start_matches("| ").trim_matches('`');
            let verdict = cells[2];
            let reason = Reason::ALL
                .iter()
                .find(|r| r.as_str() == code)
                .unwrap_or_else(|| panic!("docs/reasons.md documents unknown code {code}"));
            let typical = reason.typical_verdicts();
            if typical.is_empty() {
                assert_eq!(verdict, "—", "{code}");
            } else {
                assert!(
                    typical.contains(&verdict),
                    "{code}: {verdict} not in {typical:?}"
                );
            }
            documented.push(code.to_string());
        }
        let all: Vec<String> = Reason::ALL.iter().map(|r| r.as_str().to_string()).collect();
        assert_eq!(
            documented, all,
            "docs/reasons.md must list every code, in order"
        );
    }
}
