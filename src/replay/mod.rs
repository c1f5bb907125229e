//! `mxsentry replay --config NEW --log FILE [--json] [--no-dns]`: decides the recipients of a
//! JSON decision log (`[log] format = "json"`) again with the NEW configuration and prints
//! every flip (old verdict → new verdict, with NEW's cause) and the totals.
//!
//! - The file is streamed line by line: any size, constant memory. Other log events are
//!   skipped and counted; a line that is not JSON is reported (`FILE:LINE: reason`) and
//!   skipped; the first text-format decision line stops the replay (exit 2): text lines lack
//!   the evidence.
//! - Each recipient is decided by the real policy ([`crate::policy::Policy`], rule files
//!   included) on the DNS answers the line carries ([`decide`]); what the line lacks is
//!   looked up through NEW's `[dns]` resolver, or with `--no-dns` the recipient is counted
//!   and listed as undecidable, with what was missing.
//! - Greylisting never reads or writes a store: when NEW greylists, the daemon's logged
//!   greylist step for the recipient is taken again (`greylist.new`/`early` → greylist,
//!   `passed`/`autowhite`/... → accept); when the old decision never reached greylisting,
//!   the recipient counts as greylisted, "state unknown: would be new".
//! - Zone health is as logged: a listing the daemon logged as untrusted stays log-only; other
//!   zones are trusted (replay sends no probes).
//! - Exit status: 0 when the log was read (flips or not), 1 when the NEW configuration is
//!   invalid, 2 when the log cannot be read or is a text log.

mod decide;
mod parse;
mod report;

pub use decide::{load_policy, rdns_from_log, zone_from_log, NewVerdict, Redecided, Replayer};
pub use parse::{parse_line, EvidenceItem, Line, Record};
pub use report::Totals;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use report::At;

/// Most malformed lines named on stderr (the rest are only counted).
const MAX_MALFORMED_SHOWN: u64 = 100;

/// Longest line read whole (a decision line is a few KiB: the evidence is bounded); a longer
/// one is skipped as malformed, so a file without newlines cannot fill the memory.
const MAX_LINE: u64 = 1 << 20;

/// What the command line asked for.
pub struct Options<'a> {
    pub config: &'a Path,
    pub log: &'a Path,
    pub json: bool,
    pub no_dns: bool,
}

/// Runs a replay; returns the exit status.
pub fn run(opts: &Options<'_>) -> u8 {
    let policy = match load_policy(opts.config) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{}: {e}", opts.config.display());
            return 1;
        }
    };
    let file = match std::fs::File::open(opts.log) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{}: cannot read: {e}", opts.log.display());
            return 2;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return 2;
        }
    };
    let replayer = Replayer::new(policy, opts.no_dns);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let result = runtime.block_on(replay(&replayer, BufReader::new(file), opts, &mut out));
    let _ = out.flush();
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            2
        }
    }
}

/// Reads `input` to the end, printing flips as found and the totals last.
pub async fn replay(
    replayer: &Replayer,
    mut input: impl BufRead,
    opts: &Options<'_>,
    out: &mut impl Write,
) -> Result<(), String> {
    let file = opts.log.display().to_string();
    let mut totals = Totals::default();
    let mut buf = Vec::with_capacity(4096);
    loop {
        buf.clear();
        let cannot_read =
            |e: std::io::Error| format!("{file}:{}: cannot read: {e}", totals.lines + 1);
        let n = std::io::Read::take(input.by_ref(), MAX_LINE)
            .read_until(b'\n', &mut buf)
            .map_err(cannot_read)?;
        if n == 0 {
            break;
        }
        let too_long = buf.last() != Some(&b'\n') && n as u64 == MAX_LINE;
        if too_long {
            // The rest of the line, read and dropped a piece at a time.
            loop {
                buf.clear();
                let more = std::io::Read::take(input.by_ref(), MAX_LINE)
                    .read_until(b'\n', &mut buf)
                    .map_err(cannot_read)?;
                if more == 0 || buf.last() == Some(&b'\n') {
                    break;
                }
            }
            buf.clear();
        }
        totals.lines += 1;
        let text = String::from_utf8_lossy(&buf);
        let at = At {
            file: &file,
            line: totals.lines,
        };
        let parsed = match too_long {
            true => Line::Malformed(format!("line longer than {MAX_LINE} bytes")),
            false => parse_line(text.trim_end_matches(['\n', '\r'])),
        };
        let rec = match parsed {
            Line::Decision(r) => r,
            Line::Other => {
                totals.other_lines += 1;
                continue;
            }
            Line::Text => {
                return Err(format!(
                    "{file}:{}: a text log line; replay needs [log] format = \"json\"",
                    at.line
                ))
            }
            Line::Malformed(why) => {
                totals.malformed_lines += 1;
                if totals.malformed_lines <= MAX_MALFORMED_SHOWN {
                    eprintln!("{file}:{}: {why} (skipped)", at.line);
                }
                continue;
            }
        };
        totals.decision_lines += 1;
        let mut prepared = replayer.prepare(&rec).await;
        for rcpt in rec.recipients() {
            totals.recipients += 1;
            let shown = match replayer.decide(&rec, &mut prepared, rcpt).await {
                Redecided::Undecidable(missing) => {
                    totals.undecidable += 1;
                    Some(match opts.json {
                        true => report::undecidable_json(&at, &rec, rcpt, &missing),
                        false => report::undecidable_text(&at, &rec, rcpt, &missing),
                    })
                }
                Redecided::Decided(new) => {
                    totals.decided += 1;
                    totals.greylist_unknown += u64::from(new.greylist_unknown);
                    (new.verdict != rec.verdict).then(|| {
                        let key = (rec.verdict.clone(), new.verdict.to_string());
                        *totals.flips.entry(key).or_default() += 1;
                        match opts.json {
                            true => report::flip_json(&at, &rec, rcpt, &new),
                            false => report::flip_text(&at, &rec, rcpt, &new),
                        }
                    })
                }
            };
            if let Some(line) = shown {
                writeln!(out, "{line}").map_err(|e| format!("cannot write: {e}"))?;
            }
        }
    }
    if totals.malformed_lines > MAX_MALFORMED_SHOWN {
        eprintln!(
            "{file}: {} more malformed lines skipped",
            totals.malformed_lines - MAX_MALFORMED_SHOWN
        );
    }
    let summary = if opts.json {
        totals.json() + "\n"
    } else {
        totals.text()
    };
    out.write_all(summary.as_bytes())
        .map_err(|e| format!("cannot write: {e}"))
}

#[cfg(test)]
mod tests;
