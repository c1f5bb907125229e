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

use super::rdns::{DynamicPatterns, RdnsOutcome, RdnsResult};

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

/// The client host name the MTA verified (lowercased, no trailing dot), if it says it did.
pub fn verified_name(m: MtaClientMacros<'_>) -> Option<String> {
    let vouched = match m.client_resolve {
        Some(resolve) => resolve.trim().eq_ignore_ascii_case("OK"),
        None => m
            .version
            .is_some_and(|v| v.trim_start().starts_with("Postfix")),
    };
    if !vouched {
        return None;
    }
    let name = m.client_name?.trim().trim_end_matches('.');
    let is_host_name = !name.is_empty()
        && name.len() <= 253
        && !name.eq_ignore_ascii_case("unknown")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    is_host_name.then(|| name.to_ascii_lowercase())
}

/// The rDNS result for a name the MTA verified: no lookup was made.
pub fn result_from_mta(
    ip: IpAddr,
    name: String,
    mta: &str,
    dynamic: &DynamicPatterns,
) -> RdnsResult {
    let ip = ip.to_canonical();
    let dynamic_why = dynamic.matches(&name, ip);
    RdnsResult {
        ip,
        outcome: RdnsOutcome::Ok,
        evidence: vec![format!("verified by the MTA ({mta}), not looked up")],
        ptr_names: vec![name.clone()],
        verified_name: Some(name),
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
            verified_name(postfix("Mail.Example.COM.")).as_deref(),
            Some("mail.example.com")
        );
        assert_eq!(verified_name(postfix("unknown")), None);
        assert_eq!(verified_name(postfix("")), None);
        assert_eq!(verified_name(postfix("[192.0.2.1]")), None);
    }

    #[test]
    fn sendmail_needs_client_resolve_ok() {
        let sendmail = |resolve: &'static str| MtaClientMacros {
            version: Some("8.17.1"),
            client_resolve: Some(resolve),
            client_name: Some("mail.example.com"),
        };
        assert_eq!(
            verified_name(sendmail("OK")).as_deref(),
            Some("mail.example.com")
        );
        for r in ["FORGED", "FAIL", "TEMP", ""] {
            assert_eq!(verified_name(sendmail(r)), None, "{r}");
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
        assert_eq!(verified_name(m), None);
        assert_eq!(verified_name(MtaClientMacros::default()), None);
    }

    #[test]
    fn result_judges_the_name_for_dynamic() {
        let d = DynamicPatterns::new::<&str>(&[]).unwrap();
        let ip: IpAddr = "192.0.2.60".parse().unwrap();
        let r = result_from_mta(ip, "192-0-2-60.dsl.example.net".into(), "Postfix 3.7", &d);
        assert_eq!(r.outcome, RdnsOutcome::Ok);
        assert!(r.dynamic.is_some());
        let ok = result_from_mta(ip, "mail.example.com".into(), "Postfix 3.7", &d);
        assert_eq!(ok.dynamic, None);
        assert!(ok.findings()[0].detail.contains("verified by the MTA"));
    }
}
