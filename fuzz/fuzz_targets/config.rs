//! Arbitrary text as `milter.toml` (`Config::parse`). Never panics; an error names a line of
//! the file; a configuration that passes (what `mxsentry check-config` accepts) must also
//! build a policy (what `mxsentry run` does at start and on reload), and its reply templates,
//! filled with ordinary values, are replies of their own class that reach the MTA intact.
//!
//! Run: `bash tests/fuzz.sh config` (stable toolchain), or `cargo fuzz run config`.
#![no_main]

#[path = "common.rs"]
mod common;

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use mxsentry::checks::sender_rules::SmtpReply;
use mxsentry::config::Config;
use mxsentry::policy::{Policy, Verdict};

fuzz_target!(|data: &[u8]| {
    // `Config::load` refuses a file that is not UTF-8 before parsing.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/etc/mxsentry/milter.toml");
    let mut config = match Config::parse(text, path) {
        Ok(config) => config,
        Err(e) => {
            assert_eq!(e.file, path);
            if let Some(line) = e.line {
                assert!(line >= 1 && line <= text.lines().count().max(1) + 1, "{e}");
            }
            assert!(!e.reason.is_empty());
            return;
        }
    };
    // The access file is another target's (and would be read from disk here).
    config.sender_rules.access_file = None;
    if let Err(e) = Policy::from_config(&config) {
        panic!("check-config accepts what the daemon refuses: {e}");
    }

    let fill = |t: &str| {
        t.replace("{helo}", "helo.example")
            .replace("{client_ip}", "192.0.2.1")
            .replace("{client_name}", "host.example")
            .replace("{remaining}", "300")
            .replace("{zone}", "bl.example")
            .replace("{txt}", "listed")
            .replace("{sender_domain}", "example.com")
    };
    let d = &config.dnsbl;
    let templates = [
        &config.helo.reply,
        &config.rdns.no_ptr_reply,
        &config.rdns.forged_reply,
        &config.dns.tempfail_reply,
        &config.greylist.reply,
    ]
    .into_iter()
    .chain(
        d.zones
            .iter()
            .chain(&d.domain_zones)
            .chain(&d.allow_zones)
            .filter_map(|z| z.message.as_ref()),
    );
    for template in templates {
        let reply = SmtpReply::parse(&fill(template))
            .unwrap_or_else(|e| panic!("accepted template {template:?} is no reply: {e}"));
        let verdict = if reply.is_temporary() {
            Verdict::Tempfail(reply)
        } else {
            Verdict::Reject(reply)
        };
        common::check_verdict_on_wire(&verdict);
    }
    for zone in d.zones.iter().chain(&d.domain_zones).chain(&d.allow_zones) {
        common::check_one_line("zone", &zone.zone);
    }
    common::check_one_line("tag header name", &config.milter.tag_header);
    for rule in &config.sender_rules.regex {
        // The rule is shown in the dry-run tag header (`would-reject sender_rules=regex ...`).
        common::check_one_line("regex rule pattern", rule.pattern.get_ref());
    }
});
