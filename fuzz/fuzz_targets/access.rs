//! Arbitrary text as an access file (`AccessTable::parse`) and through `mxsentry access
//! import` (`import_report`). Never panics; every understood line has a one-line canonical
//! form (it is shown in logs, `explain` and the dry-run tag header) that parses back to
//! itself; the report has one line per understood or refused line plus the total; an `ERROR:`
//! reply reaches the MTA as one well-formed reply line of its own class; lookups of addresses
//! taken from the file never panic.
//!
//! Run: `bash tests/fuzz.sh access` (stable toolchain), or `cargo fuzz run access`.
#![no_main]

#[path = "common.rs"]
mod common;

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use mxsentry::checks::sender_rules::{import_report, AccessTable, Action, Tag};
use mxsentry::policy::Verdict;

fuzz_target!(|data: &[u8]| {
    // `AccessTable::load` refuses lines that are not UTF-8; the rest is parsed as text.
    let text = String::from_utf8_lossy(data);
    let (table, errors) = AccessTable::parse(&text);
    let lines = text.lines().count();
    assert!(table.len() + errors.len() <= lines);

    let mut last_line = 0;
    for entry in table.entries() {
        assert!(entry.line as usize > last_line, "entries in file order");
        last_line = entry.line as usize;
        let canonical = entry.to_string();
        common::check_one_line("canonical access entry", &canonical);
        let (again, errs) = AccessTable::parse(&canonical);
        assert!(
            errs.is_empty(),
            "{canonical:?} does not parse back: {errs:?}"
        );
        let reparsed: Vec<String> = again.entries().map(ToString::to_string).collect();
        assert_eq!(reparsed, [canonical]);
        if let Action::Error(reply) = &entry.action {
            let verdict = if reply.is_temporary() {
                Verdict::Tempfail((**reply).clone())
            } else {
                Verdict::Reject((**reply).clone())
            };
            common::check_verdict_on_wire(&verdict);
        }
        // Look the key up as each kind of address it could be.
        let key = &*entry.key;
        let _ = table.lookup_sender(key);
        let _ = table.lookup_recipient(&format!("<x@{key}>"));
        // A client address key is found for that client (From:/To: keys are not asked).
        if let (Ok(ip), Tag::Connect | Tag::Untagged) = (key.parse::<IpAddr>(), entry.tag) {
            assert!(table.lookup_client(ip, None).is_some(), "{key}");
        }
    }
    for e in &errors {
        assert!(e.line >= 1 && e.line <= lines, "{e:?}");
    }

    let (report, bad) = import_report(&text);
    assert_eq!(bad, errors.len());
    assert_eq!(report.lines().count(), table.len() + errors.len() + 1);
});
