//! The MTA's own forward-confirmed reverse DNS, read from its CONNECT macros.
//!
//! Both MTAs verify the client's host name before they call the filter; repeating the PTR and
//! forward lookups only adds their latency to the session (two dependent DNS round trips).
//! Only a positive verification is taken: anything else (no name, a failure, a temporary
//! failure Postfix cannot tell apart from a permanent one) is looked up by mxsentry itself,
//! so a temporary DNS failure still tempfails and a forged name is still named.
//!
//! | MTA | verified when | name |
//! |---|---|---|
//! | sendmail | `{client_resolve}` is `OK` | `{client_name}` |
//! | Postfix (`v` starts with `Postfix`; it has no `{client_resolve}`) | `{client_name}` is not `unknown` | `{client_name}` (Postfix's verified name; `{client_ptr}` is the unverified one) |

use std::net::IpAddr;

use super::rdns::{DynamicPatterns, RdnsEvidence, RdnsOutcome, RdnsResult};

/// The CONNECT macros that carry the MTA's verification (values as sent, if sent).
#[derive(Debug, Default, Clone, Copy)]
pub struct MtaClientMacros<'a> {
    /// `v`: the MTA's name and version (`Postfix 3.7.11`).
    pub version: Option<&'a str>,
    /// `{client_resolve}`: sendmail's `OK`, `FAIL`, `FORGED` or `TEMP`.
    pub client_resolve: Option<&'a str>,
    /// `{client_name}`.
    pub client_name: Option<&'a str>,
}

/// A client host name the MTA verified itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtaVerified {
    /// Lowercased, no trailing dot.
    pub name: String,
    /// What vouched for it, for the evidence: `Postfix 3.7.11` or `{client_resolve}=OK`.
    pub by: String,
}

/// The client host name the MTA verified, if it says it did.
pub fn verified(m: MtaClientMacros<'_>) -> Option<MtaVerified> {
    let by = match m.client_resolve {
        Some(resolve) => resolve
            .trim()
            .eq_ignore_ascii_case("OK")
            .then(|| "{client_resolve}=OK".to_string()),
        None => m
            .version
            .filter(|v| v.trim_start().starts_with("Postfix"))
            .map(|v| v.trim().to_string()),
    }?;
    let name = m.client_name?.trim().trim_end_matches('.');
    let is_host_name = !name.is_empty()
        && name.len() <= 253
        && !name.eq_ignore_ascii_case("unknown")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    is_host_name.then(|| MtaVerified {
        name: name.to_ascii_lowercase(),
        by,
    })
}

/// The rDNS result for a name the MTA verified: no lookup was made.
pub fn result_from_mta(ip: IpAddr, verified: MtaVerified, dynamic: &DynamicPatterns) -> RdnsResult {
    let ip = ip.to_canonical();
    let dynamic_why = dynamic.matches(&verified.name, ip);
    RdnsResult {
        ip,
        outcome: RdnsOutcome::Ok,
        evidence: vec![format!(
            "verified by the MTA ({}), not looked up",
            verified.by
        )],
        ptr_names: vec![verified.name.clone()],
        answers: RdnsEvidence {
            ptr: vec![verified.name.clone()],
            by_mta: true,
            ..Default::default()
        },
        verified_name: Some(verified.name),
        dynamic: dynamic_why,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn postfix(name: &str) -> MtaClientMacros<'_> {
        MtaClientMacros {
            version: Some("Postfix 3.7.11"),
            client_resolve: None,
            client_name: Some(name),
        }
    }

    #[test]
    fn postfix_verified_name_is_taken() {
        assert_eq!(
            verified(postfix("Mail.Example.COM."))
                .map(|v| v.name)
                .as_deref(),
            Some("mail.example.com")
        );
        assert_eq!(verified(postfix("unknown")), None);
        assert_eq!(verified(postfix("")), None);
        assert_eq!(verified(postfix("[192.0.2.1]")), None);
    }

    #[test]
    fn sendmail_needs_client_resolve_ok() {
        let sendmail = |resolve: &'static str| MtaClientMacros {
            version: Some("8.17.1"),
            client_resolve: Some(resolve),
            client_name: Some("mail.example.com"),
        };
        assert_eq!(
            verified(sendmail("OK")).map(|v| v.name).as_deref(),
            Some("mail.example.com")
        );
        for r in ["FORGED", "FAIL", "TEMP", ""] {
            assert_eq!(verified(sendmail(r)), None, "{r}");
        }
    }

    #[test]
    fn an_unknown_mta_is_not_trusted() {
        // sendmail without {client_resolve}: its {client_name} may be an unverified PTR name.
        let m = MtaClientMacros {
            version: Some("8.17.1"),
            client_resolve: None,
            client_name: Some("mail.example.com"),
        };
        assert_eq!(verified(m), None);
        assert_eq!(verified(MtaClientMacros::default()), None);
    }

    #[test]
    fn result_judges_the_name_for_dynamic() {
        let d = DynamicPatterns::new::<&str>(&[]).unwrap();
        let ip: IpAddr = "192.0.2.60".parse().unwrap();
        let by_postfix = |name: &str| MtaVerified {
            name: name.into(),
            by: "Postfix 3.7".into(),
        };
        let r = result_from_mta(ip, by_postfix("192-0-2-60.dsl.example.net"), &d);
        assert_eq!(r.outcome, RdnsOutcome::Ok);
        assert!(r.dynamic.is_some());
        let ok = result_from_mta(ip, by_postfix("mail.example.com"), &d);
        assert_eq!(ok.dynamic, None);
        assert!(ok.findings()[0].detail.contains("verified by the MTA"));
    }
}
