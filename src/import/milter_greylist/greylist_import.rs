//! `mxsentry greylist import milter-greylist DUMPFILE`: streams the dump, turns each tuple into
//! an entry of ours ([`entries::entry_for`]), merges tuples that share one of our keys and
//! writes the entries in batches through [`crate::admin::put_entries`] (the store, or the
//! running daemon).
//!
//! Memory: one 16-byte digest and one entry per distinct key (to merge duplicates that are
//! far apart in the file), not the keys themselves: a million-tuple import peaks at ~250 MB,
//! the store's own cache included (docs/greylisting.md).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::BufRead;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::checks::greylist::{keys, Timing};
use crate::config::Config;
use crate::store::{unix_now, Entry};

use super::dump::{self, Kind, Line, Section};
use super::entries::{self, Kept};

/// Longest line read (a dump line is well under 1 KB; a longer one is corrupt).
const MAX_LINE: usize = 16 * 1024;

/// Entries written per `put_entries` call (bounded further by the store's `max_uncommitted`).
const BATCH: usize = 50_000;

/// What an import did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The header: milter-greylist's version and the dump's date (local time of that host).
    pub version: Option<String>,
    pub dumped_at: Option<String>,
    /// Sections seen: two (up to 4.3.1) or one `stored tuples` (4.3.2+).
    pub two_sections: bool,
    pub lines: u64,
    pub greylisted: u64,
    pub autowhitelisted: u64,
    pub tarpitted: u64,
    /// Distinct keys written, by their final state.
    pub imported_pending: u64,
    pub imported_autowhite: u64,
    pub expired: u64,
    pub merged: u64,
    pub bad: u64,
}

impl Summary {
    /// The report printed on stdout.
    pub fn text(&self, file: &str) -> String {
        let mut out = String::new();
        let version = self.version.as_deref().unwrap_or("unknown version");
        let date = self.dumped_at.as_deref().unwrap_or("an unknown date");
        let layout = if self.two_sections {
            "two sections, milter-greylist 4.3.1 or older"
        } else {
            "one section"
        };
        let _ = writeln!(
            out,
            "{file}: milter-greylist-{version} dump of {date} ({layout}), {} lines",
            self.lines
        );
        let _ = writeln!(
            out,
            "read: {} tuples ({} greylisted, {} autowhitelisted, {} tarpitted)",
            self.greylisted + self.autowhitelisted + self.tarpitted,
            self.greylisted,
            self.autowhitelisted,
            self.tarpitted
        );
        let _ = writeln!(
            out,
            "imported: {} pending triplets, {} autowhitelisted triplets",
            self.imported_pending, self.imported_autowhite
        );
        let _ = writeln!(
            out,
            "skipped: {} expired, {} merged into the entry of another tuple (same key under our rules), {} bad lines",
            self.expired, self.merged, self.bad
        );
        out
    }
}

/// A failure that stops the import (the dump or the store, not a bad line).
#[derive(Debug)]
pub struct Failed(pub String);

struct Slot {
    entry: Entry,
    line: u64,
}

/// Imports the dump at `path` into the store of `config`. Every skipped or bad line goes to
/// `report` as `FILE:LINE: reason`. Lines already written stay written if the store fails.
pub async fn import(
    config: &Config,
    path: &Path,
    report: &mut dyn FnMut(String),
) -> Result<Summary, Failed> {
    let name = path.display().to_string();
    let file =
        std::fs::File::open(path).map_err(|e| Failed(format!("{name}: cannot read: {e}")))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let g = &config.greylist;
    let timing = Timing::from_config(g);
    let now = unix_now();
    let batch_size = BATCH.min((g.max_uncommitted / 2).max(1) as usize);
    let mut summary = Summary::default();
    let mut seen: HashMap<[u8; 16], Slot> = HashMap::new();
    let mut batch: Vec<(String, Entry)> = Vec::with_capacity(batch_size);
    let mut buf = Vec::with_capacity(512);
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| Failed(format!("{name}:{}: cannot read: {e}", summary.lines + 1)))?;
        if n == 0 {
            break;
        }
        summary.lines += 1;
        let lineno = summary.lines;
        let mut bad = |summary: &mut Summary, reason: String| {
            summary.bad += 1;
            report(format!("{name}:{lineno}: {reason}"));
        };
        if buf.len() > MAX_LINE {
            bad(&mut summary, format!("line longer than {MAX_LINE} bytes"));
            continue;
        }
        let Ok(text) = std::str::from_utf8(&buf) else {
            bad(&mut summary, "not UTF-8 (a dump is ASCII)".into());
            continue;
        };
        let tuple = match dump::parse_line(text.trim_end_matches('\n')) {
            Ok(Line::Tuple(t)) => t,
            Ok(Line::Header { version, dumped_at }) => {
                summary.version = Some(version.to_owned());
                summary.dumped_at = Some(dumped_at.to_owned());
                continue;
            }
            Ok(Line::Section(s)) => {
                summary.two_sections |= s != Section::Stored;
                continue;
            }
            Ok(Line::Blank | Line::Comment) => continue,
            Err(reason) => {
                bad(&mut summary, reason);
                continue;
            }
        };
        match tuple.kind {
            Kind::Pending => summary.greylisted += 1,
            Kind::Auto => summary.autowhitelisted += 1,
            Kind::Tarpit { .. } => summary.tarpitted += 1,
        }
        let entry = entries::entry_for(&tuple, &timing, now);
        if entry.is_expired(now) {
            summary.expired += 1;
            let why = if entry.passed > 0 {
                "its autowhitelisting ended"
            } else {
                "our retry_window from its first attempt is over"
            };
            report(format!("{name}:{lineno}: skipped, expired: {why}"));
            continue;
        }
        let from = dump::bare(tuple.from);
        let rcpt = dump::bare(tuple.rcpt);
        let key = keys::triplet_key(g, tuple.ip, None, from, rcpt);
        let digest = digest(&key);
        match seen.get_mut(&digest) {
            None => {
                seen.insert(
                    digest,
                    Slot {
                        entry,
                        line: lineno,
                    },
                );
                batch.push((key, entry));
            }
            Some(slot) => {
                let (merged, kept) = entries::merge(slot.entry, entry);
                summary.merged += 1;
                let winner = match kept {
                    Kept::Earlier => slot.line,
                    Kept::Later => lineno,
                };
                report(format!(
                    "{name}:{lineno}: merged with line {} (one key under our rules: {key}); kept {} (line {winner})",
                    slot.line,
                    entries::kept_reason(&merged),
                ));
                if merged != slot.entry {
                    slot.entry = merged;
                    slot.line = winner;
                    batch.push((key, merged));
                }
            }
        }
        if batch.len() >= batch_size {
            write(config, &mut batch, &mut summary).await?;
        }
    }
    write(config, &mut batch, &mut summary).await?;
    for slot in seen.values() {
        if slot.entry.passed > 0 {
            summary.imported_autowhite += 1;
        } else {
            summary.imported_pending += 1;
        }
    }
    Ok(summary)
}

async fn write(
    config: &Config,
    batch: &mut Vec<(String, Entry)>,
    summary: &mut Summary,
) -> Result<(), Failed> {
    if batch.is_empty() {
        return Ok(());
    }
    let (_, expired) = crate::admin::put_entries(config, batch)
        .await
        .map_err(Failed)?;
    // Entries checked a moment ago may expire while being written: count them.
    summary.expired += expired;
    batch.clear();
    Ok(())
}

fn digest(key: &str) -> [u8; 16] {
    let d = Sha256::digest(key.as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 4.2 dump (two sections, autowhite.c's `%ld AUTO # date` lines, pending.c's
    /// `%ld # date`), with times around now.
    fn dump_42(now: u64) -> String {
        format!(
            "#\n# milter-greylist databases, dumped by milter-greylist-4.2.7 on 2011-05-06 07:08:09.\n\
             # DO NOT EDIT while milter-greylist is running, changes will be overwritten.\n#\n\
             \n\n#\n# greylisted tuples\n#\n# Sender IP\tSender e-mail\tRecipient e-mail\tTime accepted\n\
             192.0.2.1\t<a@x.example>\t<u@example.org>\t{p} # 2011-05-06 07:38:09\n\
             192.0.2.2\t<a@x.example>\t<u@example.org>\t{p2} # 2011-05-06 07:38:09\n\
             \n\n#\n# Auto-whitelisted tuples\n#\n# Sender IP\tSender e-mail\tRecipient e-mail\tExpire\n\
             192.0.2.3\t<b@x.example>\t<u@example.org>\t{a} AUTO # 2011-05-07 07:08:09\n\
             #\n# Summary: 3 records, 2 greylisted, 1 whitelisted\n#\n",
            p = now + 600,
            p2 = now + 300,
            a = now + 86_400
        )
    }

    #[tokio::test]
    async fn two_section_dump_into_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.greylist.path = dir.path().join("greylist.db");
        let dump = dir.path().join("greylist.db.mg");
        std::fs::write(&dump, dump_42(unix_now())).unwrap();
        let mut reported = Vec::new();
        let summary = import(&config, &dump, &mut |l| reported.push(l))
            .await
            .unwrap();
        assert!(summary.two_sections);
        assert_eq!(summary.version.as_deref(), Some("4.2.7"));
        assert_eq!(
            (
                summary.greylisted,
                summary.autowhitelisted,
                summary.merged,
                summary.bad
            ),
            (2, 1, 1, 0)
        );
        assert_eq!(
            (summary.imported_pending, summary.imported_autowhite),
            (1, 1)
        );
        // 192.0.2.1 and .2 share 192.0.2.0/24: the one acceptable first (line 12) is kept
        assert_eq!(reported.len(), 1, "{reported:?}");
        assert!(
            reported[0].ends_with("kept the greylisted tuple acceptable first (line 12)"),
            "{reported:?}"
        );
        let text = summary.text("greylist.db");
        assert!(text.contains("milter-greylist-4.2.7 dump of 2011-05-06 07:08:09 (two sections, milter-greylist 4.3.1 or older), 22 lines"), "{text}");
    }
}
