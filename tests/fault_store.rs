//! Faults of the embedded greylist store, through the real daemon (what a user sees: the SMTP
//! reply, the log line, the metric, the file on disk):
//!
//! * an unreadable store directory `greylist.db` at start (a table truncated or overwritten,
//!   the format marker garbled, a garbage file where the directory should be): the daemon
//!   moves it aside and starts afresh; the admin commands report it and never rename;
//!   operations problems (in use, a socket at the path, a missing directory) still refuse to
//!   start;
//! * the disk filling up under load (a small tmpfs), and the file system turning read-only
//!   under load (ext4 on a loop device with `errors=remount-ro`, forced by its
//!   `trigger_fs_error` knob: a mount cannot be remounted read-only while the daemon has the
//!   file open for writing, the kernel answers EBUSY, so a file system error is how it happens
//!   for real): every session is answered promptly, never 5xx, the failure is logged and
//!   counted, memory stays bounded, and the store recovers without a restart;
//! * a full disk at start: a new store cannot be created, the daemon starts with it closed,
//!   fails open, and opens it once space returns (an existing store may open: fjall frees its
//!   obsolete journal at open); mail is never refused;
//! * the store directory removed under the running daemon: SIGTERM still stops it, within the
//!   bound a clean stop waits for the memtable's last write, with a log line that says why;
//! * `kill -9` under load in a loop: the file always opens, and no acknowledged triplet is
//!   missing once a commit that took it has finished (the daemon logs each commit at debug
//!   level); losses are reported split by age (within `commit_interval` + 1 s or older).
//!
//! The mounts need root, loop devices, `mkfs.ext4` and `e2fsck` (e2fsprogs): the tests FAIL
//! (never skip) without them. `MXSENTRY_KILL9_CYCLES` sets
//! the number of kill cycles (default 20); `MXSENTRY_SOAK=1` runs 200 (a soak, ~12 minutes):
//! `MXSENTRY_SOAK=1 cargo test --test fault_store kill_9 -- --nocapture`.
//! `MXSENTRY_KILL9_SEED` replays the kill times of an earlier run (printed at the start).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::load::{assert_450_or_accept, greylisted, judge, rand_u64, wait_for, Load};
use common::{try_rcpt, Daemon};
use mxsentry::protocol::reply::Reply;

/// Greylisting for everyone, a delay no test waits out, no client autowhitelisting (every
/// new sender is a new triplet).
const GREYLIST: &str = "[greylist]\nenabled = true\ndelay = \"1h\"\nretry_window = \"2d\"\n\
    autowhite = \"1d\"\nclient_autowhite_after = 0\n";

const ERRORS: &str = "mxsentry_greylist_errors_total{backend=\"embedded\"}";
const RECOVERIES: &str = "mxsentry_greylist_store_recoveries_total";

fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn require_root(what: &str) {
    let (_, uid) = run("id", &["-u"]);
    assert_eq!(
        uid.trim(),
        "0",
        "{what} needs root (it mounts file systems); run the tests as root, as CI does"
    );
}

/// `mxsentry greylist ARGS --config CONFIG` (the daemon stopped): (success, stdout+stderr).
fn greylist_cli(config: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mxsentry"))
        .arg("greylist")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The senders of the stored triplets (`mxsentry greylist list`, the daemon stopped).
fn stored_senders(config: &Path) -> std::collections::HashSet<String> {
    let (ok, text) = greylist_cli(config, &["list", "--prefix", "t:", "--limit", "100000000"]);
    assert!(ok, "greylist list: {text}");
    text.lines()
        .filter_map(|l| l.split('|').nth(1).map(str::to_owned))
        .collect()
}

/// `mxsentry run --config CONFIG` expected to refuse to start: its stderr.
fn refused_start(config: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_mxsentry"))
        .args(["run", "--config"])
        .arg(config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "started: {stderr}");
    stderr
}

fn stop(d: &mut Daemon) {
    d.signal("TERM");
    let status = d.wait_exit(Duration::from_secs(30)).expect("exited");
    assert!(status.success(), "exit status {status:?}: {}", d.log());
}

/// Every file under `dir` (relative path, bytes), sorted: what a store holds on disk.
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_path_buf();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    if dir.is_dir() {
        walk(dir, dir, &mut out);
    } else {
        out.push((PathBuf::new(), std::fs::read(dir).unwrap()));
    }
    out.sort();
    out
}

/// The store's largest table file (`keyspaces/<id>/tables/<n>`) and its length.
fn largest_table(store: &Path) -> (PathBuf, usize) {
    tree(store)
        .into_iter()
        .filter(|(p, _)| p.parent().is_some_and(|d| d.ends_with("tables")))
        .map(|(p, b)| (store.join(p), b.len()))
        .max_by_key(|(_, n)| *n)
        .expect("a table file (the store flushes its memtable at a clean stop)")
}

/// The `<store>.corrupt-*` files or directories beside `path`.
fn moved_aside(path: &Path) -> Vec<PathBuf> {
    let prefix = format!("{}.corrupt-", path.file_name().unwrap().to_string_lossy());
    let mut found: Vec<PathBuf> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&prefix)
        })
        .collect();
    found.sort();
    found
}

#[test]
fn daemon_starts_over_an_unreadable_store_and_moves_it_aside() {
    let mut d = Daemon::start("", GREYLIST);
    let path = d.config_dir().join("greylist.db");
    for i in 0..300 {
        let r = try_rcpt(d.port, &format!("s{i}@sender.example"), "u@example.org");
        assert!(r.as_ref().is_some_and(greylisted), "{r:?}");
    }
    stop(&mut d);
    let pristine = tree(&path);
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let garbage: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (x >> 33) as u8
        })
        .collect();
    // Damage a crash cannot cause (a torn journal tail is what a crash leaves, and opening
    // repairs that), applied to a copy of the store as the first start left it.
    type Damage = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Damage)> = vec![
        (
            "a garbage file where the store directory should be",
            Box::new(move |p: &Path| {
                std::fs::remove_dir_all(p).unwrap();
                std::fs::write(p, &garbage).unwrap();
            }),
        ),
        (
            "a table truncated to half",
            Box::new(|p: &Path| {
                let (t, n) = largest_table(p);
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(t)
                    .unwrap()
                    .set_len(n as u64 / 2)
                    .unwrap();
            }),
        ),
        (
            "a table truncated to 0 bytes",
            Box::new(|p: &Path| std::fs::write(largest_table(p).0, b"").unwrap()),
        ),
        (
            "a table overwritten",
            Box::new(|p: &Path| {
                let (t, n) = largest_table(p);
                std::fs::write(t, b"not a table\n".repeat(n / 12 + 1)).unwrap();
            }),
        ),
        (
            "the format marker garbled",
            Box::new(|p: &Path| std::fs::write(p.join("version"), b"garbage").unwrap()),
        ),
    ];
    for (n, (what, damage)) in cases.into_iter().enumerate() {
        // The store as the first start left it, then damaged.
        let _ = std::fs::remove_dir_all(&path);
        let _ = std::fs::remove_file(&path);
        for (rel, bytes) in &pristine {
            let p = path.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, bytes).unwrap();
        }
        damage(&path);
        let bytes = tree(&path);
        if n == 0 {
            // The admin commands report it and leave it where it is.
            let (ok, text) = greylist_cli(&d.config_path, &["list"]);
            assert!(!ok && text.contains("corrupt"), "{text}");
            assert!(text.contains(&path.display().to_string()), "{text}");
            assert!(moved_aside(&path).is_empty(), "the CLI moved it");
        }
        let before = moved_aside(&path);
        let started = Instant::now();
        d.restart_stopped();
        let took = started.elapsed();
        // A milter session gets its verdict: greylisting works on the fresh store.
        let r = try_rcpt(d.port, &format!("new{n}@sender.example"), "u@example.org");
        assert!(r.as_ref().is_some_and(greylisted), "{what}: {r:?}");
        let r = try_rcpt(d.port, "s7@sender.example", "u@example.org");
        assert!(
            r.as_ref().is_some_and(greylisted),
            "{what}: an old triplet is new again: {r:?}"
        );
        // The old bytes are kept beside it, under a name that says when.
        let after = moved_aside(&path);
        let new: Vec<&PathBuf> = after.iter().filter(|p| !before.contains(p)).collect();
        assert_eq!(new.len(), 1, "{what}: {after:?}");
        // Its tables (the data) are kept byte for byte; fjall may have rewritten its small
        // version files while it tried to open the store.
        let tables = |t: Vec<(PathBuf, Vec<u8>)>| -> Vec<(PathBuf, Vec<u8>)> {
            t.into_iter()
                .filter(|(p, _)| {
                    p.parent().is_some_and(|d| d.ends_with("tables")) || p.as_os_str().is_empty()
                })
                .collect()
        };
        let (kept, damaged) = (tables(tree(new[0])), tables(bytes));
        assert!(!damaged.is_empty(), "{what}");
        assert!(
            kept == damaged,
            "{what}: the damaged store's tables are kept as they were"
        );
        d.wait_log_count(
            "greylist store unreadable: moved aside, starting with an empty store",
            n + 1,
        );
        let log = d.log();
        let line = log
            .lines()
            .rfind(|l| l.contains("moved aside, starting with an empty store"))
            .unwrap();
        assert!(
            line.contains(&path.display().to_string())
                && line.contains(&new[0].display().to_string())
                && line.contains("corrupt"),
            "{what}: {line}"
        );
        assert_eq!(d.try_metric(RECOVERIES), Some(1.0), "{what}");
        eprintln!("{what}: started in {took:?}, moved to {}", new[0].display());
        stop(&mut d);
    }
    // A clean start counts nothing.
    d.restart_stopped();
    assert_eq!(d.try_metric(RECOVERIES), Some(0.0));
    stop(&mut d);
}

#[test]
fn operations_problems_still_refuse_to_start() {
    let mut d = Daemon::start("", GREYLIST);
    let path = d.config_dir().join("greylist.db");
    // In use by another process (the running daemon): refused, nothing moved.
    let err = refused_start(&d.config_path);
    assert!(err.contains("in use by another process"), "{err}");
    stop(&mut d);
    // A socket where the store directory should be.
    std::fs::remove_dir_all(&path).unwrap();
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let err = refused_start(&d.config_path);
    assert!(err.contains("not a directory"), "{err}");
    drop(listener);
    std::fs::remove_file(&path).unwrap();
    // Its directory does not exist.
    let config = std::fs::read_to_string(&d.config_path).unwrap();
    let missing = d.config_dir().join("no-such-dir/greylist.db");
    let elsewhere = d.config_dir().join("missing-dir.toml");
    std::fs::write(
        &elsewhere,
        config.replace(&path.display().to_string(), &missing.display().to_string()),
    )
    .unwrap();
    let err = refused_start(&elsewhere);
    assert!(err.contains("does not exist"), "{err}");
    assert!(moved_aside(&path).is_empty());
}

/// A tmpfs of `size` on a fresh directory, unmounted on drop (also when the test panics).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        require_root("a tmpfs mount");
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().display().to_string();
        let (ok, text) = run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                &target,
            ],
        );
        assert!(ok, "mount tmpfs: {text}");
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system with `filler` until it is full.
    fn fill(&self) -> u64 {
        use std::io::Write;
        let mut f = std::fs::File::create(self.path().join("filler")).unwrap();
        let chunk = vec![0x55u8; 64 * 1024];
        let mut written = 0u64;
        while let Ok(n) = f.write(&chunk) {
            if n == 0 {
                break;
            }
            written += n as u64;
        }
        written
    }

    fn free(&self) {
        std::fs::remove_file(self.path().join("filler")).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = self.dir.path().display().to_string();
        if !run("umount", &[&target]).0 {
            let _ = run("umount", &["-l", &target]);
        }
    }
}

/// The daemon's log lines about its store, without the per-commit debug lines, with the
/// continuation lines of multi-line messages (a caught panic's left/right and location).
fn store_log_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| {
            (l.contains("mxsentry::store") && !l.contains(" DEBUG "))
                || l.contains("store failed")
                || !l.starts_with(|c: char| c.is_ascii_digit())
        })
        .collect()
}

/// Runs the daemon on a store at `store`, applies `fault` under load, checks what sessions got
/// and that the failure is counted and logged, then `repair`s and checks the recovery without
/// a restart. Returns the daemon (stopped) for more checks.
fn fault_under_load(
    name: &str,
    store: &Path,
    fault: impl FnOnce(),
    repair: impl FnOnce(),
) -> Daemon {
    let config = format!("{GREYLIST}commit_interval = \"200ms\"\nmax_uncommitted = 500\n");
    let mut d = Daemon::start_with_store_at(&config, store);
    for i in 0..20 {
        let r = try_rcpt(
            d.port,
            &format!("before{i}@sender.example"),
            "u@example.org",
        );
        assert!(r.as_ref().is_some_and(greylisted), "{r:?}");
    }
    std::thread::sleep(Duration::from_millis(500)); // committed
    assert_eq!(d.try_metric(ERRORS), Some(0.0));
    let load = Load::start(d.port, 3, &name.replace(' ', "-"));
    std::thread::sleep(Duration::from_secs(1));
    let healthy = load.count();
    let rss_before = d.rss_kb();

    fault();
    let detected = wait_for("commit failure counted", Duration::from_secs(20), || {
        d.try_metric(ERRORS).unwrap_or(0.0) > 0.0
    });
    eprintln!("{name}: first commit failure counted {detected:?} after the fault");
    let faulty_from = load.count();
    std::thread::sleep(Duration::from_secs(4));
    let rss_mid = d.rss_kb();
    std::thread::sleep(Duration::from_secs(4));
    let rss_after = d.rss_kb();
    let faulty_to = load.count();
    let errors = d.try_metric(ERRORS).unwrap_or(0.0);
    let log = d.wait_log("greylist commit failed");
    assert!(log.contains(&store.display().to_string()), "{log}");
    eprintln!(
        "{name}: RSS {rss_before} KiB before, {rss_mid} KiB after 4 s of faults, {rss_after} KiB after 8 s; {errors} errors counted"
    );
    assert!(
        rss_after < rss_mid + 16 * 1024,
        "{name}: memory grows while commits fail: {rss_mid} -> {rss_after} KiB"
    );

    repair();
    let repaired_at = load.count();
    let started = Instant::now();
    while !d.log().contains("greylist commits succeed again") {
        if started.elapsed() > Duration::from_secs(30) {
            let log = d.log();
            let store = store_log_lines(&log);
            panic!(
                "{name}: commits do not succeed 30 s after the repair:\n{}",
                store[store.len().saturating_sub(40)..].join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let recovered = started.elapsed();
    let greylisting_back = wait_for(
        "new triplets greylisted again",
        Duration::from_secs(30),
        || {
            try_rcpt(
                d.port,
                &format!("probe-{}@sender.example", rand_u64()),
                "u@example.org",
            )
            .is_some_and(|r| greylisted(&r))
        },
    );
    eprintln!(
        "{name}: commits succeed {recovered:?} after the repair; greylisting back {greylisting_back:?} later"
    );
    std::thread::sleep(Duration::from_secs(1));
    let results = load.finish();
    // What an admin reads in the journal (rate-limited: a few lines, not one per session).
    let log = d.log();
    let store_lines: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("greylist commit failed")
                || l.contains("greylist commits succeed again")
                || l.contains("greylist store failed")
                || l.contains("moved aside")
        })
        .collect();
    for l in &store_lines {
        eprintln!("{name}: log: {l}");
    }
    assert!(store_lines.len() < 40, "{name}: the log is flooded");
    judge(&format!("{name}: healthy"), &results[..healthy]);
    judge(&format!("{name}: fault"), &results[faulty_from..faulty_to]);
    judge(&format!("{name}: repair"), &results[repaired_at..]);

    // Durable again: what was greylisted from memory during the fault is on disk after a
    // restart, and so are the triplets from before it.
    let kept: Vec<String> = results[faulty_from..]
        .iter()
        .filter(|s| s.greylisted())
        .map(|s| s.sender.clone())
        .collect();
    stop(&mut d);
    let stored = stored_senders(&d.config_path);
    let lost: Vec<usize> = (0..20)
        .filter(|i| !stored.contains(&format!("before{i}@sender.example")))
        .collect();
    assert!(
        lost.is_empty(),
        "{name}: triplets committed before the fault lost after the restart: {lost:?} of 0..20 \
         ({} entries stored; stores moved aside: {:?}); the store's log lines:\n{}",
        stored.len(),
        moved_aside(store),
        store_log_lines(&d.log()).join("\n")
    );
    let missing = kept.iter().filter(|s| !stored.contains(*s)).count();
    eprintln!(
        "{name}: {} triplets greylisted during and after the fault, {missing} missing after the restart",
        kept.len()
    );
    assert_eq!(missing, 0, "acknowledged triplets lost");
    assert!(moved_aside(store).is_empty());
    d
}

#[test]
fn disk_full_under_load_fails_open_and_recovers_without_restart() {
    let fs = Tmpfs::mount("16m");
    let store = fs.path().join("greylist.db");
    let _d = fault_under_load(
        "disk full",
        &store,
        || {
            let n = fs.fill();
            eprintln!("disk full: filler of {} KiB", n >> 10);
        },
        || fs.free(),
    );
}

#[test]
fn disk_full_at_start_starts_failing_open_and_recovers() {
    let fs = Tmpfs::mount("16m");
    let store = fs.path().join("greylist.db");
    let mut d = Daemon::start_with_store_at(GREYLIST, &store);
    assert!(
        try_rcpt(d.port, "before@sender.example", "u@example.org").is_some_and(|r| greylisted(&r))
    );
    stop(&mut d);
    // An existing store, then a new install: both on a full disk.
    for (what, remove) in [("existing store", false), ("no store yet", true)] {
        if remove {
            std::fs::remove_dir_all(&store).unwrap();
        }
        fs.fill();
        let started = Instant::now();
        d.restart_stopped();
        eprintln!(
            "disk full at start ({what}): listening after {:?}",
            started.elapsed()
        );
        // A new store cannot be created on the full disk: the store starts closed. An existing
        // one may open: its journal, obsolete after the memtable was written to a table at the
        // clean stop, is deleted at open, which frees a few pages; then the store works (from
        // those pages, and from memory once commits fail). Either way mail is never refused.
        let closed = remove || {
            std::thread::sleep(Duration::from_millis(300));
            d.log()
                .contains("greylist store cannot be opened now: starting without it")
        };
        if remove {
            d.wait_log("greylist store cannot be opened now: starting without it");
        }
        let window: Vec<Option<Reply>> = (0..20)
            .map(|i| try_rcpt(d.port, &format!("full-{i}@sender.example"), "u@example.org"))
            .collect();
        for r in &window {
            if closed {
                assert_eq!(r, &Some(Reply::Continue), "{what}: fail open");
            } else {
                assert!(
                    r == &Some(Reply::Continue) || r.as_ref().is_some_and(greylisted),
                    "{what}: {r:?}"
                );
            }
        }
        if closed {
            assert!(d.try_metric(ERRORS).unwrap_or(0.0) > 0.0, "{what}");
        }
        eprintln!("disk full at start ({what}): store closed at start: {closed}");
        fs.free();
        let back = wait_for(
            "greylisting after space returned",
            Duration::from_secs(20),
            || {
                try_rcpt(
                    d.port,
                    &format!("back-{}@sender.example", rand_u64()),
                    "u@example.org",
                )
                .is_some_and(|r| greylisted(&r))
            },
        );
        eprintln!("disk full at start ({what}): greylisting back {back:?} after space returned");
        stop(&mut d);
        let stored = stored_senders(&d.config_path);
        assert_eq!(stored.contains("before@sender.example"), !remove, "{what}");
        assert!(moved_aside(&store).is_empty(), "{what}");
    }
}

/// ext4 on a loop device (`errors=remount-ro`), unmounted and its image removed on drop.
struct Ext4 {
    dir: tempfile::TempDir,
}

impl Ext4 {
    fn image(&self) -> String {
        self.dir.path().join("fs.img").display().to_string()
    }

    fn mountpoint(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    fn create() -> Ext4 {
        require_root("a loop mount");
        let fs = Ext4 {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir(fs.mountpoint()).unwrap();
        let (ok, text) = run("truncate", &["-s", "64M", &fs.image()]);
        assert!(ok, "{text}");
        let (ok, text) = run("mkfs.ext4", &["-q", "-F", &fs.image()]);
        assert!(ok, "mkfs.ext4 (e2fsprogs): {text}");
        fs.mount();
        fs
    }

    fn mount(&self) {
        let mnt = self.mountpoint().display().to_string();
        let (ok, text) = run(
            "mount",
            &["-o", "loop,errors=remount-ro", &self.image(), &mnt],
        );
        assert!(ok, "mount -o loop (needs loop devices): {text}");
    }

    /// What the kernel does on a file system error with `errors=remount-ro`: the file system
    /// turns read-only under every open file.
    fn fail(&self) {
        let mnt = self.mountpoint().display().to_string();
        let (_, source) = run("findmnt", &["-no", "SOURCE", &mnt]);
        let dev = Path::new(source.trim())
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        std::fs::write(
            format!("/sys/fs/ext4/{dev}/trigger_fs_error"),
            "mxsentry fault test\n",
        )
        .unwrap();
    }

    /// The admin's repair: unmount (possible because the daemon let go of the file), fsck,
    /// mount again.
    fn repair(&self) {
        let mnt = self.mountpoint().display().to_string();
        let (ok, text) = run("umount", &[&mnt]);
        assert!(
            ok,
            "umount: the daemon still holds the store on the failed file system: {text}"
        );
        let (_, text) = run("e2fsck", &["-fy", &self.image()]);
        let summary = text.lines().find(|l| l.contains(" files (")).unwrap_or("");
        eprintln!("read-only: e2fsck: {summary}");
        self.mount();
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        let mnt = self.mountpoint().display().to_string();
        if !run("umount", &[&mnt]).0 {
            let _ = run("umount", &["-l", &mnt]);
        }
    }
}

#[test]
fn read_only_file_system_under_load_fails_open_and_recovers_without_restart() {
    let fs = Ext4::create();
    let store = fs.mountpoint().join("greylist.db");
    let d = fault_under_load("read-only", &store, || fs.fail(), || fs.repair());
    // Read-only at start is an operations problem: refused with the reason, nothing moved.
    let mnt = fs.mountpoint().display().to_string();
    let (ok, text) = run("mount", &["-o", "remount,ro", &mnt]);
    assert!(ok, "{text}");
    let err = refused_start(&d.config_path);
    assert!(err.contains("not writable"), "{err}");
    assert!(moved_aside(&store).is_empty());
    let (ok, text) = run("mount", &["-o", "remount,rw", &mnt]);
    assert!(ok, "{text}");
}

/// A small xorshift generator (reproducible kill times from a printed seed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [lo, hi) milliseconds.
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo))
    }
}

/// `2026-12-05T00:14:22.947671Z` (the daemon's log timestamps, UTC) as a wall-clock time.
fn parse_utc(ts: &str) -> Option<SystemTime> {
    let n = |r: std::ops::Range<usize>| ts.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss) = (n(11..13)?, n(14..16)?, n(17..19)?);
    let frac = ts.get(19..)?.strip_prefix('.')?.strip_suffix('Z')?;
    let nanos = format!("{frac:0<9}").get(..9)?.parse::<u64>().ok()?;
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let secs = u64::try_from(days * 86_400 + hh * 3_600 + mm * 60 + ss).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_nanos(nanos))
}

/// The daemon's successful commits, from its debug log (`greylist commit entries=N ms=M`,
/// logged when the commit is on disk; `ms` counts from before it took its writes): (when it
/// took its writes, when it was on disk).
fn logged_commits(log: &str) -> Vec<(SystemTime, SystemTime)> {
    log.lines()
        .filter(|l| l.contains(" greylist commit entries="))
        .filter_map(|l| {
            let end = parse_utc(l.split(' ').next()?)?;
            let ms: f64 = l.split(" ms=").nth(1)?.split(' ').next()?.parse().ok()?;
            Some((end - Duration::from_secs_f64(ms / 1e3), end))
        })
        .collect()
}

#[test]
fn kill_9_under_load_loses_at_most_the_commit_interval() {
    let cycles: usize = match std::env::var("MXSENTRY_SOAK") {
        Ok(v) if v == "1" => 200,
        _ => std::env::var("MXSENTRY_KILL9_CYCLES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20),
    };
    let seed = std::env::var("MXSENTRY_KILL9_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| rand_u64() | 1);
    eprintln!("kill -9: {cycles} cycles, MXSENTRY_KILL9_SEED={seed}");
    let mut rng = Rng(seed);
    // The default commit interval (1 s), and 1 s of slack for the commit in flight.
    let allowed = Duration::from_secs(2);
    let mut d = Daemon::start("", GREYLIST);
    let path = d.config_dir().join("greylist.db");
    let mut totals = [0usize; 4]; // acknowledged, lost within, lost to a slow commit, broken
                                  // Acknowledgements a logged commit took and finished before the kill (the oracle must
                                  // not be vacuous: a log it cannot read would find nothing broken).
    let mut confirmed = 0usize;
    let mut commits_seen = 0usize;
    // The oldest acknowledgement lost to a kill, and the slowest commit: measured bounds.
    let mut oldest_lost = Duration::ZERO;
    let mut slowest_commit = Duration::ZERO;
    for cycle in 0..cycles {
        if cycle > 0 {
            d.restart_stopped(); // the file opens after every crash
        }
        assert!(
            moved_aside(&path).is_empty(),
            "cycle {cycle}: the file was found unreadable after kill -9: {}",
            d.log()
        );
        let load = Load::start(d.port, 3, &format!("c{cycle}"));
        std::thread::sleep(rng.millis(300, 3000));
        let (killed_at, killed_wall) = (Instant::now(), SystemTime::now());
        d.kill9();
        let results = load.finish();
        let stored = stored_senders(&d.config_path);
        let commits = logged_commits(&d.log());
        commits_seen = commits.len();
        for (start, end) in &commits {
            slowest_commit = slowest_commit.max(end.duration_since(*start).unwrap_or_default());
        }
        // [acknowledged, lost within `allowed`, lost beyond it because no commit that took
        // it had finished (a slow commit in flight: allowed), lost though a commit that took
        // it had finished before the kill (broken durability)]
        let mut n = [0usize; 4];
        for s in &results {
            if !s.greylisted() || s.at > killed_at {
                continue;
            }
            n[0] += 1;
            let covered = commits
                .iter()
                .any(|(start, end)| *start > s.wall && *end < killed_wall);
            confirmed += usize::from(covered);
            if stored.contains(&s.sender) {
                continue;
            }
            let age = killed_at - s.at;
            oldest_lost = oldest_lost.max(age);
            let kind = if covered {
                3
            } else if age <= allowed {
                1
            } else {
                2
            };
            n[kind] += 1;
            if kind == 3 || (kind == 2 && n[2] == 1) {
                eprintln!(
                    "cycle {cycle}: {} acknowledged {age:?} before the kill, lost{}",
                    s.sender,
                    if covered {
                        " although a commit that took it finished before the kill"
                    } else {
                        "; no commit that took it had finished"
                    }
                );
            }
        }
        for s in results.iter().filter(|s| s.reply.is_some()) {
            assert_450_or_accept(&s.reply, &format!("cycle {cycle}: {}", s.sender));
        }
        eprintln!(
            "cycle {cycle}: {} acknowledged before the kill; lost: {} within {allowed:?} (allowed), {} beyond it with the commit still in flight (allowed), {} after their commit finished",
            n[0], n[1], n[2], n[3]
        );
        for (t, x) in totals.iter_mut().zip(n) {
            *t += x;
        }
    }
    d.restart_stopped();
    assert!(moved_aside(&path).is_empty());
    let r = try_rcpt(d.port, "after-the-loop@sender.example", "u@example.org");
    assert!(r.as_ref().is_some_and(greylisted), "{r:?}");
    let [acked, within, slow, broken] = totals;
    eprintln!(
        "kill -9: {cycles} cycles, {acked} triplets acknowledged; lost: {within} within {allowed:?}, {slow} beyond it while their commit was in flight, {broken} after their commit finished; the oldest lost was acknowledged {oldest_lost:?} before its kill; slowest commit {slowest_commit:?}"
    );
    eprintln!(
        "kill -9: {commits_seen} commits logged, {confirmed} acknowledgements taken by a commit that finished before its kill"
    );
    assert!(
        commits_seen > 0 && confirmed > 0,
        "the commits in the daemon's log were not found"
    );
    assert!(acked > within + slow, "hardly anything was ever committed");
    assert_eq!(
        broken, 0,
        "triplets acknowledged before a commit that finished before the kill -9 were lost"
    );
}

#[test]
fn daemon_stops_when_its_store_directory_was_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("greylist.db");
    let mut d = Daemon::start_with_store_at(GREYLIST, &store);
    for i in 0..20 {
        let r = try_rcpt(d.port, &format!("s{i}@removed.example"), "u@example.org").expect("reply");
        assert!(greylisted(&r), "{r:?}");
    }
    // Committed (the commit interval is 1 s), then gone: an admin's `rm -rf`, a lost mount.
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::remove_dir_all(&store).unwrap();
    d.signal("TERM");
    // Hang guard, far above the 10 s the stop waits for the memtable's write.
    let status = d.wait_exit(Duration::from_secs(120));
    let log = d.log();
    assert!(status.is_some(), "still running 120 s after SIGTERM: {log}");
    assert!(
        log.contains("memtable could not be written to a table"),
        "no log line says why the stop waited: {log}"
    );
}
