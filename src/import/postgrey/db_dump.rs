//! Reading postgrey's BerkeleyDB files through BerkeleyDB's own tools (Debian: `db5.3-util`).
//!
//! Why not read the btree pages ourselves: postgrey opens its databases in a transactional
//! environment (`DB_CREATE|DB_RECOVER|DB_INIT_TXN|DB_INIT_MPOOL|DB_INIT_LOG`, auto-commit). A
//! committed write is durable in the log (`log.NNNNNNNNNN`, flushed at commit) but reaches
//! `postgrey.db` only when the cache writes the page back: at a checkpoint (postgrey makes one
//! hourly, in its maintenance) or when it closes the database cleanly. While postgrey runs,
//! and after it was killed, `postgrey.db` lacks its recent entries (seen with postgrey 1.37:
//! after two requests and `kill -9` the file held no key at all). Only a replay of the log
//! finds them, and that is BerkeleyDB recovery, which a page reader cannot soundly redo.
//!
//! So the importer copies `postgrey.db`, `postgrey_clients.db` and the `log.*` files into a
//! private temporary directory (never the `__db.*` region files of the live environment),
//! runs `db_recover` there (it replays committed transactions and undoes uncommitted ones),
//! then `db_dump` prints each database in its hex ("bytevalue") format, parsed here as it
//! streams. postgrey's own directory is only read. While postgrey runs (it holds an exclusive
//! `flock` on `postgrey.lock`) the import refuses: a file copied while the cache writes it
//! back could hold a torn page.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The Debian package that brings the tools.
pub const TOOLS_PACKAGE: &str = "db5.3-util";

/// Finds BerkeleyDB's `tool` (`dump`, `recover`) on `PATH`: `db5.3_<tool>` (the version
/// postgrey's Perl module links on Debian) first, then the unversioned `db_<tool>`.
pub fn find_tool(tool: &str) -> Result<PathBuf, String> {
    let names = [format!("db5.3_{tool}"), format!("db_{tool}")];
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in &names {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(format!(
        "neither {} nor {} is in PATH: install the {TOOLS_PACKAGE} package \
         (apt-get install {TOOLS_PACKAGE}), BerkeleyDB's tools, to read postgrey's database",
        names[0], names[1]
    ))
}

/// Refuses when a running postgrey holds `DBDIR/postgrey.lock` (it `flock`s it for its whole
/// life). A missing lock file is fine: postgrey never ran there, or it was removed.
pub fn ensure_not_running(dbdir: &Path) -> Result<(), String> {
    use std::os::fd::AsRawFd as _;
    let lock = dbdir.join("postgrey.lock");
    let Ok(file) = std::fs::File::open(&lock) else {
        return Ok(());
    };
    // SAFETY: flock on a descriptor this function owns; closing `file` releases the lock.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock {
        return Err(format!(
            "postgrey is running ({} is locked): stop it first, so that its files are \
             complete and no page is half written while they are copied",
            lock.display()
        ));
    }
    Ok(())
}

/// The private copy of the environment the tools work on; removed when dropped.
pub struct Snapshot {
    dir: PrivateDir,
}

/// A new directory of mode 0700 under the temporary directory, removed with its files when
/// dropped (`tempfile` is only a test dependency; this is all the importer needs of it).
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn create() -> Result<PrivateDir, String> {
        use std::os::unix::fs::DirBuilderExt as _;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path =
            std::env::temp_dir().join(format!("mxsentry-postgrey-{}-{nanos}", std::process::id()));
        // `create` (not `create_all`) fails if the name exists: never a directory made by another.
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(PrivateDir(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Snapshot {
    /// Copies the databases and logs of `dbdir` and recovers them (see the module doc).
    pub fn take(dbdir: &Path) -> Result<Snapshot, String> {
        let recover = find_tool("recover")?;
        find_tool("dump")?;
        let main_db = dbdir.join(super::TRIPLETS_DB);
        if !main_db.is_file() {
            return Err(format!(
                "{}: no such file (is {} postgrey's --dbdir?)",
                main_db.display(),
                dbdir.display()
            ));
        }
        let dir = PrivateDir::create()?;
        let entries = std::fs::read_dir(dbdir).map_err(|e| format!("{}: {e}", dbdir.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("{}: {e}", dbdir.display()))?;
            let name = entry.file_name();
            let name_str = name.to_string_lossy();
            let wanted = name_str == super::TRIPLETS_DB
                || name_str == super::CLIENTS_DB
                || name_str.starts_with("log.");
            if wanted {
                let from = entry.path();
                std::fs::copy(&from, dir.path().join(&name))
                    .map_err(|e| format!("cannot copy {}: {e}", from.display()))?;
            }
        }
        let out = Command::new(&recover)
            .arg("-h")
            .arg(dir.path())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", recover.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} -h {} failed ({}): {}",
                recover.display(),
                dir.path().display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Snapshot { dir })
    }

    /// True when the snapshot has database `name` (postgrey_clients.db exists only with
    /// client autowhitelisting on).
    pub fn has(&self, name: &str) -> bool {
        self.dir.path().join(name).is_file()
    }

    /// Streams every (key, value) pair of database `name` to `each`; returns how many.
    pub fn dump(&self, name: &str, each: impl FnMut(&[u8], &[u8])) -> Result<u64, String> {
        let dump = find_tool("dump")?;
        let mut child = Command::new(&dump)
            .arg("-h")
            .arg(self.dir.path())
            .arg(name)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", dump.display()))?;
        let parsed = match child.stdout.take() {
            Some(stdout) => parse_dump(BufReader::new(stdout), each),
            None => Err("no output pipe".to_owned()),
        };
        let out = child
            .wait_with_output()
            .map_err(|e| format!("{}: {e}", dump.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} {name} failed ({}): {}",
                dump.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        parsed.map_err(|e| format!("{} {name}: {e}", dump.display()))
    }
}

/// Parses `db_dump`'s default output (`format=bytevalue`): header lines up to `HEADER=END`,
/// then one line per key and one per value, each a space and the bytes in hex, up to
/// `DATA=END`. Calls `each` per pair; returns how many. Errors name the line.
pub fn parse_dump(input: impl BufRead, mut each: impl FnMut(&[u8], &[u8])) -> Result<u64, String> {
    let mut in_header = true;
    let mut key: Option<Vec<u8>> = None;
    let mut pairs = 0u64;
    let mut ended = false;
    for (index, line) in input.lines().enumerate() {
        let n = index + 1;
        let line = line.map_err(|e| format!("line {n}: {e}"))?;
        if in_header {
            if line == "HEADER=END" {
                in_header = false;
            } else if let Some(format) = line.strip_prefix("format=") {
                if format != "bytevalue" {
                    return Err(format!("line {n}: format {format:?}, expected bytevalue"));
                }
            } else if let Some(kind) = line.strip_prefix("type=") {
                if kind != "btree" {
                    return Err(format!("line {n}: type {kind:?}, expected btree"));
                }
            }
            continue;
        }
        if line == "DATA=END" {
            if key.is_some() {
                return Err(format!("line {n}: a key without its value"));
            }
            ended = true;
            // A dump of several databases would go on with a new header: postgrey's have one.
            in_header = true;
            continue;
        }
        let hex = line
            .strip_prefix(' ')
            .ok_or_else(|| format!("line {n}: expected a space and hex digits"))?;
        let bytes = decode_hex(hex).ok_or_else(|| format!("line {n}: not hex"))?;
        match key.take() {
            None => key = Some(bytes),
            Some(k) => {
                each(&k, &bytes);
                pairs += 1;
            }
        }
    }
    if !ended {
        return Err("the output ends before DATA=END".to_owned());
    }
    Ok(pairs)
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    let digits = hex.as_bytes();
    if digits.len() % 2 != 0 {
        return None;
    }
    let value = |d: u8| (d as char).to_digit(16);
    digits
        .chunks_exact(2)
        .map(|pair| Some((value(pair[0])? * 16 + value(pair[1])?) as u8))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(text: &str) -> Result<Vec<(String, String)>, String> {
        let mut out = Vec::new();
        parse_dump(text.as_bytes(), |k, v| {
            out.push((
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            ))
        })?;
        Ok(out)
    }

    /// Written by `db5.3_dump -h DIR postgrey.db` after the real postgrey 1.37 answered
    /// tests/fixtures/postgrey/make.sh's requests.
    #[test]
    fn parses_a_real_dump() {
        let text = include_str!("../../../tests/fixtures/postgrey/postgrey.db.dump");
        let got = pairs(text).unwrap();
        assert_eq!(got.len(), 6);
        assert_eq!(
            got[0],
            (
                "192.0.2.0/bounce@example.com/user+x@dest.example".to_owned(),
                "1700000000,1700000400".to_owned()
            )
        );
        assert_eq!(got[1].0, "198.51.100.0//c@d.example");
        assert_eq!(got[3].0, "2001:db8:1:2:0:0:0:0/a@b.example/c@d.example");
        let clients = include_str!("../../../tests/fixtures/postgrey/postgrey_clients.db.dump");
        assert_eq!(
            pairs(clients).unwrap(),
            vec![
                ("192.0.2.10".to_owned(), "1,1700000400".to_owned()),
                ("203.0.113.9".to_owned(), "2,1700004400".to_owned()),
            ]
        );
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        let head = "VERSION=3\nformat=bytevalue\ntype=btree\nHEADER=END\n";
        assert_eq!(
            pairs(&format!("{head} 61\n 62\nDATA=END\n")).unwrap(),
            vec![("a".to_owned(), "b".to_owned())]
        );
        assert_eq!(
            pairs(&format!("{head} 6\n")).unwrap_err(),
            "line 5: not hex"
        );
        assert_eq!(
            pairs(&format!("{head} 61\nDATA=END\n")).unwrap_err(),
            "line 6: a key without its value"
        );
        assert_eq!(
            pairs(&format!("{head}61\n")).unwrap_err(),
            "line 5: expected a space and hex digits"
        );
        assert_eq!(
            pairs(&format!("{head} 61\n 62\n")).unwrap_err(),
            "the output ends before DATA=END"
        );
        assert_eq!(
            pairs("VERSION=3\nformat=print\n").unwrap_err(),
            "line 2: format \"print\", expected bytevalue"
        );
        assert_eq!(
            pairs("VERSION=3\ntype=hash\n").unwrap_err(),
            "line 2: type \"hash\", expected btree"
        );
    }
}
