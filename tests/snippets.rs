//! Every snippet a newcomer can paste works. From README.md, docs/*.md, examples/*.toml, the
//! repository's and the package's milter.toml and access file:
//! - each configuration passes `mxsentry check-config` and starts (`mxsentry run` answers the
//!   milter option negotiation on loopback). Only what cannot be the same on a test machine is
//!   rewritten: listen addresses (to free loopback ports and sockets in a temporary directory),
//!   name servers (the loopback test DNS server), the Redis host (a closed loopback port: the
//!   store fails open, as documented), and file paths (a file the package installs at that path
//!   is replaced by its packaged source, any other by an empty file in the temporary directory).
//!   Fragments (a section alone) are merged into a minimal configuration first;
//! - each access-file snippet passes `mxsentry access import` and `check-config`, with every
//!   rule line understood;
//! - each `mxsentry ...` and `cargo run ... -- ...` command line in a code block names
//!   subcommands and options the real binary's `--help` lists;
//! - the DNSBL `message` placeholders of README and milter.toml are the ones the code fills in;
//! - every guide an installed doc links to is in the repository and installed by the .deb.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, Client};
use mxsentry::protocol::reply::Reply;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const BIN: &str = env!("CARGO_BIN_EXE_mxsentry");

fn mxsentry(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// README.md and every docs/*.md, as (path relative to the root, text).
fn markdown_files() -> Vec<(String, String)> {
    let mut names: Vec<String> = std::fs::read_dir(Path::new(ROOT).join("docs"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md"))
        .map(|n| format!("docs/{n}"))
        .collect();
    names.sort();
    names.insert(0, "README.md".to_string());
    names.into_iter().map(|n| (n.clone(), read(&n))).collect()
}

// ---------------------------------------------------------------------------------------------
// Code blocks of a markdown file, and what kind of snippet each is.

/// A code block: where it starts (1-based line of its first code line), the fence's language
/// (None for an indented block) and its text.
struct Block {
    line: usize,
    lang: Option<String>,
    text: String,
}

fn code_blocks(md: &str) -> Vec<Block> {
    let lines: Vec<&str> = md.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    let mut prev_blank = true;
    while i < lines.len() {
        let line = lines[i];
        if let Some(lang) = line.trim_start().strip_prefix("```") {
            let start = i + 1;
            let mut j = start;
            while j < lines.len() && !lines[j].trim_start().starts_with("```") {
                j += 1;
            }
            let lang = lang.trim();
            blocks.push(Block {
                line: start + 1,
                lang: Some(lang.to_string()),
                text: lines[start..j.min(lines.len())].join("\n"),
            });
            i = j + 1;
            prev_blank = false;
            continue;
        }
        if prev_blank && line.starts_with("    ") && !line.trim().is_empty() {
            let start = i;
            let mut j = i;
            while j < lines.len()
                && (lines[j].starts_with("    ")
                    || (lines[j].trim().is_empty()
                        && lines.get(j + 1).is_some_and(|n| n.starts_with("    "))))
            {
                j += 1;
            }
            let text = lines[start..j]
                .iter()
                .map(|l| l.get(4..).unwrap_or(""))
                .collect::<Vec<_>>()
                .join("\n");
            blocks.push(Block {
                line: start + 1,
                lang: None,
                text,
            });
            i = j;
            prev_blank = false;
            continue;
        }
        prev_blank = line.trim().is_empty();
        i += 1;
    }
    blocks
}

const ACTIONS: [&str; 6] = ["OK", "RELAY", "REJECT", "DISCARD", "TEMPFAIL", "SKIP"];

fn is_toml_block(b: &Block) -> bool {
    if b.lang.as_deref() == Some("toml") {
        return true;
    }
    let first = b
        .text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'));
    first.is_some_and(|l| l.starts_with('[') && l.ends_with(']'))
}

/// An access-file block: some line reads `key ACTION` with one of the access file's actions.
fn is_access_block(b: &Block) -> bool {
    !is_toml_block(b)
        && b.text.lines().any(|l| {
            let mut words = l.split_whitespace();
            match (words.next(), words.next()) {
                (Some(key), Some(action)) if !key.starts_with('#') => {
                    let action = action.to_ascii_uppercase();
                    ACTIONS.contains(&action.as_str()) || action.starts_with("ERROR:")
                }
                _ => false,
            }
        })
}

// ---------------------------------------------------------------------------------------------
// Running a configuration for real.

/// What a test configuration needs around it: a directory, the loopback DNS server, the files
/// the package installs (by installed path), and whether this build has `[control] socket`.
struct Bed {
    dir: tempfile::TempDir,
    dns: mxsentry::testing::dns_server::TestDnsServer,
    packaged: HashMap<String, PathBuf>,
    has_control_socket: bool,
    count: std::cell::Cell<usize>,
}

impl Bed {
    fn new() -> Bed {
        let dir = tempfile::tempdir().unwrap();
        let dns = mxsentry::testing::dns_server::TestDnsServer::start_in_thread(common::TEST_ZONE)
            .unwrap();
        let mut bed = Bed {
            dir,
            dns,
            packaged: packaged_files(),
            has_control_socket: false,
            count: std::cell::Cell::new(0),
        };
        // The control socket (issue 12) defaults to /run/mxsentry: where this build knows the
        // key, every test configuration gets its own socket.
        let probe = bed.dir.path().join("probe.toml");
        std::fs::write(
            &probe,
            format!(
                "[control]\nsocket = {:?}\n",
                bed.dir.path().join("probe.sock").display()
            ),
        )
        .unwrap();
        bed.has_control_socket =
            mxsentry(&["check-config", "--config", probe.to_str().unwrap()]).0 == 0;
        bed
    }

    /// A fresh path in the bed's directory.
    fn path(&self, name: &str) -> PathBuf {
        self.count.set(self.count.get() + 1);
        self.dir.path().join(format!("{}-{name}", self.count.get()))
    }

    /// The file to use for `path` named by a snippet: the packaged source of what the package
    /// installs there, else an empty file (an admin's own rule file, empty to begin with).
    fn file_for(&self, path: &str) -> String {
        let name = Path::new(path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "file".into());
        let copy = self.path(&name);
        match self.packaged.get(path) {
            Some(src) => std::fs::copy(src, &copy).map(|_| ()).unwrap(),
            None => std::fs::write(&copy, "").unwrap(),
        }
        copy.display().to_string()
    }
}

/// Installed path → source file, from Cargo.toml's [package.metadata.deb] assets.
fn packaged_files() -> HashMap<String, PathBuf> {
    let manifest: toml::Table = toml::from_str(&read("Cargo.toml")).unwrap();
    let assets = manifest["package"]["metadata"]["deb"]["assets"]
        .as_array()
        .unwrap();
    let mut map = HashMap::new();
    for asset in assets {
        let a = asset.as_array().unwrap();
        let (src, dest) = (a[0].as_str().unwrap(), a[1].as_str().unwrap());
        if src.contains('*') || src.starts_with("target/") {
            continue;
        }
        let dest = if dest.ends_with('/') {
            format!(
                "/{dest}{}",
                Path::new(src).file_name().unwrap().to_string_lossy()
            )
        } else {
            format!("/{dest}")
        };
        map.insert(dest, Path::new(ROOT).join(src));
    }
    map
}

/// Where a started configuration can be reached.
enum Endpoint {
    Tcp(u16),
    Unix(PathBuf),
}

fn table<'a>(t: &'a mut toml::Table, name: &str) -> &'a mut toml::Table {
    t.entry(name)
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .unwrap()
}

/// Rewrites what cannot be the same on a test machine (see the module comment) and returns
/// where the milter will listen.
fn make_test_safe(origin: &str, config: &mut toml::Table, bed: &Bed) -> Vec<Endpoint> {
    let mut endpoints = Vec::new();
    let milter = table(config, "milter");
    let specs: Vec<String> = match milter.get("listen") {
        Some(toml::Value::String(s)) => vec![s.clone()],
        Some(toml::Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect(),
        _ => vec!["inet:8890@127.0.0.1".into()],
    };
    let rewritten: Vec<toml::Value> = specs
        .iter()
        .map(|spec| {
            if spec.starts_with("unix:") {
                let p = bed.path("milter.sock");
                endpoints.push(Endpoint::Unix(p.clone()));
                toml::Value::String(format!("unix:{}", p.display()))
            } else {
                assert_pasteable_host(origin, spec, milter_listen_host(spec));
                let port = free_port();
                endpoints.push(Endpoint::Tcp(port));
                toml::Value::String(format!("inet:{port}@127.0.0.1"))
            }
        })
        .collect();
    milter.insert("listen".into(), toml::Value::Array(rewritten));

    let metrics = table(config, "metrics");
    if let Some(listen) = metrics.get("listen").and_then(|v| v.as_str()) {
        if listen != "off" {
            let host = listen.rsplit_once(':').map_or(listen, |(h, _)| h);
            assert_pasteable_host(origin, listen, host.trim_matches(['[', ']']));
        }
    }
    if metrics.get("listen").and_then(|v| v.as_str()) != Some("off") {
        metrics.insert("listen".into(), format!("127.0.0.1:{}", free_port()).into());
    }
    let dns = table(config, "dns");
    dns.insert(
        "nameservers".into(),
        toml::Value::Array(vec![bed.dns.addr.to_string().into()]),
    );
    let greylist = table(config, "greylist");
    greylist.insert(
        "path".into(),
        bed.path("greylist.db").display().to_string().into(),
    );
    if let Some(url) = greylist.get("redis_url").and_then(|v| v.as_str()) {
        greylist.insert("redis_url".into(), loopback_redis(url).into());
    }
    if bed.has_control_socket {
        let control = table(config, "control");
        if control.get("socket").and_then(|v| v.as_str()) != Some("off") {
            control.insert(
                "socket".into(),
                bed.path("control.sock").display().to_string().into(),
            );
        }
    }
    // Rule files: `*_file` and `*_files` keys of any section.
    for (_, section) in config.iter_mut() {
        if let Some(section) = section.as_table_mut() {
            for (key, value) in section.iter_mut() {
                if key.ends_with("_file") {
                    if let Some(p) = value.as_str() {
                        *value = bed.file_for(p).into();
                    }
                } else if key.ends_with("_files") {
                    if let Some(list) = value.as_array_mut() {
                        for v in list.iter_mut() {
                            if let Some(p) = v.as_str() {
                                *v = bed.file_for(p).into();
                            }
                        }
                    }
                }
            }
        }
    }
    endpoints
}

/// The host of a milter listen spec: `inet:PORT@HOST`, `inet6:PORT@HOST` or `inet:HOST:PORT`.
fn milter_listen_host(spec: &str) -> &str {
    let rest = spec.split_once(':').map_or(spec, |(_, r)| r);
    match rest.split_once('@') {
        Some((_, host)) => host,
        None => rest.rsplit_once(':').map_or(rest, |(h, _)| h),
    }
}

/// Only the port of a listen address is rewritten: an address that only one host has (say
/// 10.10.0.11) would fail on the machine the snippet is pasted on, so it fails here too.
/// Loopback and the unspecified address (0.0.0.0, ::) work anywhere.
fn assert_pasteable_host(origin: &str, spec: &str, host: &str) {
    let ok = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified());
    assert!(
        ok,
        "{origin}: `{spec}` binds {host}, an address of one host: pasted anywhere else it cannot start"
    );
}

/// `url` with its host and port replaced by a closed loopback port (password, db kept).
fn loopback_redis(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    if scheme.contains("unix") {
        return url.to_string();
    }
    let (auth, hostpart) = match rest.rfind('@') {
        Some(at) => (&rest[..=at], &rest[at + 1..]),
        None => ("", rest),
    };
    let path = hostpart.find('/').map_or("", |i| &hostpart[i..]);
    format!("{scheme}://{auth}127.0.0.1:{}{path}", free_port())
}

/// Merges `fragment` into `base` (the fragment's keys win; sections merge key by key).
fn merge(base: &mut toml::Table, fragment: toml::Table) {
    for (k, v) in fragment {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(f)) => merge(b, f),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// check-config must pass, then `run` must answer the option negotiation on every listener.
fn check_and_start(origin: &str, mut config: toml::Table, bed: &Bed) {
    let endpoints = make_test_safe(origin, &mut config, bed);
    let path = bed.path("milter.toml");
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    let p = path.to_str().unwrap();
    let (code, out, err) = mxsentry(&["check-config", "--config", p]);
    assert_eq!(
        code, 0,
        "{origin}: check-config refused it:\n{err}{out}\n(test-safe copy: {p})"
    );
    assert!(out.contains(": OK"), "{origin}: {out}");

    let log_path = bed.path("run.log");
    let mut child = Command::new(BIN)
        .args(["run", "--config", p])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    for endpoint in &endpoints {
        let mut client = loop {
            let connected = match endpoint {
                Endpoint::Tcp(port) => std::net::TcpStream::connect(("127.0.0.1", *port))
                    .ok()
                    .map(Client::tcp_stream),
                Endpoint::Unix(path) => std::os::unix::net::UnixStream::connect(path)
                    .ok()
                    .map(|_| Client::unix(path)),
            };
            if let Some(c) = connected {
                break c;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "{origin}: run exited with {status} instead of listening:\n{}",
                    log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{origin}: run did not listen:\n{}",
                log()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            matches!(client.negotiate(), Reply::OptNeg { .. }),
            "{origin}: no option negotiation:\n{}",
            log()
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The smallest configuration a fragment is merged into (everything else: defaults).
fn minimal_config() -> toml::Table {
    toml::Table::new()
}

/// milter.toml with its "#key = ..." settings and "#[table]" headers enabled, as its header
/// invites ("remove the # to use them").
fn uncommented(text: &str) -> String {
    text.lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if !rest.starts_with(' ') && !rest.is_empty() => rest,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn parse_toml(origin: &str, text: &str) -> toml::Table {
    toml::from_str(text).unwrap_or_else(|e| panic!("{origin}: not valid TOML: {e}"))
}

#[test]
fn every_shipped_and_example_config_passes_check_config_and_starts() {
    let bed = Bed::new();
    let mut files = vec![
        "milter.toml".to_string(),
        "packaging/milter.toml".to_string(),
    ];
    let mut examples: Vec<String> = std::fs::read_dir(Path::new(ROOT).join("examples"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| format!("examples/{}", e.file_name().to_string_lossy()))
        .filter(|n| n.ends_with(".toml"))
        .collect();
    examples.sort();
    assert!(examples.len() >= 2, "{examples:?}");
    files.extend(examples);
    for file in &files {
        check_and_start(file, parse_toml(file, &read(file)), &bed);
    }
    let all_keys = uncommented(&read("milter.toml"));
    check_and_start(
        "milter.toml with its commented-out settings enabled",
        parse_toml("milter.toml (uncommented)", &all_keys),
        &bed,
    );
}

#[test]
fn every_toml_snippet_in_the_docs_passes_check_config_and_starts() {
    let bed = Bed::new();
    let mut seen = 0;
    for (file, text) in markdown_files() {
        for block in code_blocks(&text).iter().filter(|b| is_toml_block(b)) {
            let origin = format!("{file}:{}", block.line);
            let mut config = minimal_config();
            merge(&mut config, parse_toml(&origin, &block.text));
            check_and_start(&origin, config, &bed);
            seen += 1;
        }
    }
    // README's [[sender_rules.regex]] and greylisting.md's [greylist] at least.
    assert!(
        seen >= 2,
        "only {seen} TOML snippets found: is the extractor still right?"
    );
}

/// `access import` understands every rule line, and check-config takes the file.
fn check_access(origin: &str, text: &str, bed: &Bed) {
    let path = bed.path("access");
    std::fs::write(&path, text).unwrap();
    let p = path.to_str().unwrap();
    let rules = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();
    let (code, out, err) = mxsentry(&["access", "import", p]);
    assert_eq!(
        code, 0,
        "{origin}: access import refused lines:\n{err}{out}"
    );
    assert!(
        out.contains(&format!("{rules} rules understood, 0 lines not understood")),
        "{origin}: {out}"
    );
    let mut config = minimal_config();
    make_test_safe(origin, &mut config, bed);
    table(&mut config, "sender_rules").insert("access_file".into(), p.into());
    let config_path = bed.path("milter.toml");
    std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();
    let (code, out, err) = mxsentry(&["check-config", "--config", config_path.to_str().unwrap()]);
    assert_eq!(code, 0, "{origin}: check-config refused it:\n{err}{out}");
    assert!(
        out.contains(&format!("({rules} access rules,")),
        "{origin}: {out}"
    );
}

#[test]
fn every_access_file_snippet_is_understood_whole() {
    let bed = Bed::new();
    let mut seen = 0;
    for (file, text) in markdown_files() {
        for block in code_blocks(&text).iter().filter(|b| is_access_block(b)) {
            check_access(&format!("{file}:{}", block.line), &block.text, &bed);
            seen += 1;
        }
    }
    assert!(
        seen >= 1,
        "no access-file snippet found: is the extractor still right?"
    );
    let shipped = read("packaging/access");
    check_access("packaging/access", &shipped, &bed);
    // Its examples say "remove the # to use": they must work when uncommented.
    let examples: String = shipped
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .filter(|l| !l.is_empty() && !l.starts_with([' ', '#']))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(examples.lines().count() >= 5, "{examples}");
    check_access("packaging/access, examples uncommented", &examples, &bed);
}

#[test]
fn readme_access_example_with_a_trailing_comment_is_refused_with_the_reason() {
    // The old README form: refused (sendmail's makemap would keep the comment in the value).
    let bed = Bed::new();
    let path = bed.path("access");
    std::fs::write(&path, "From:linkedin.com   DISCARD   # any sub-domain\n").unwrap();
    let (code, out, _) = mxsentry(&["access", "import", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("line 1: cannot use:"), "{out}");
    assert!(out.contains("must be on a line of its own"), "{out}");
    let config = bed.path("milter.toml");
    std::fs::write(
        &config,
        format!("[sender_rules]\naccess_file = {:?}\n", path.display()),
    )
    .unwrap();
    let (code, _, err) = mxsentry(&["check-config", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("{}:1:", path.display())), "{err}");
    assert!(err.contains("must be on a line of its own"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Command lines.

/// The subcommand names under "Commands:" in a `--help` text (without `help`).
fn listed_commands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

/// The option names (`-c`, `--config`) under "Options:" in a `--help` text.
fn listed_options(help: &str) -> BTreeSet<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Options:")
        .skip(1)
        .map(str::trim)
        .filter(|l| l.starts_with('-'))
        .flat_map(|l| l.split("  ").next().unwrap_or("").split_whitespace())
        .map(|w| w.trim_end_matches(','))
        .filter(|w| w.starts_with('-'))
        .map(str::to_string)
        .collect()
}

/// `--help` of a command path, cached.
fn help_of(path: &[String], cache: &mut HashMap<Vec<String>, String>) -> String {
    cache
        .entry(path.to_vec())
        .or_insert_with(|| {
            let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
            args.push("--help");
            let (code, out, err) = mxsentry(&args);
            assert_eq!(code, 0, "mxsentry {}: {err}", args.join(" "));
            out
        })
        .clone()
}

/// Checks the words after `mxsentry`: subcommands (`a|b` alternatives each) while the command
/// has some, then every option against the options of each command reached.
fn check_command_line(origin: &str, words: &[&str], cache: &mut HashMap<Vec<String>, String>) {
    let mut paths: Vec<Vec<String>> = vec![Vec::new()];
    let mut rest = words;
    loop {
        let subs = listed_commands(&help_of(&paths[0], cache));
        if subs.is_empty() {
            break;
        }
        let Some((word, tail)) = rest.split_first() else {
            panic!(
                "{origin}: `mxsentry {}` needs a subcommand",
                paths[0].join(" ")
            );
        };
        let alternatives: Vec<&str> = word.trim_matches(['[', ']']).split('|').collect();
        for alt in &alternatives {
            assert!(
                subs.iter().any(|s| s == alt),
                "{origin}: `mxsentry {} {alt}`: no such command (there are: {subs:?})",
                paths[0].join(" ")
            );
        }
        paths = paths
            .iter()
            .flat_map(|p| {
                alternatives.iter().map(move |alt| {
                    let mut p = p.clone();
                    p.push(alt.to_string());
                    p
                })
            })
            .collect();
        rest = tail;
    }
    for word in rest {
        let word = word.trim_matches(['[', ']']);
        if !word.starts_with('-') || word == "-" || word.starts_with("---") {
            continue;
        }
        let name = word.split('=').next().unwrap_or(word);
        for path in &paths {
            let options = listed_options(&help_of(path, cache));
            assert!(
                options.contains(name),
                "{origin}: `mxsentry {}` has no option {name} (it has: {options:?})",
                path.join(" ")
            );
        }
    }
}

/// Shell command lines in a code block that run mxsentry: `\` continuations joined, split at
/// `&&`, `;` and ` | `, trailing `# comments` dropped; returns the words after `mxsentry`
/// (or after `cargo run ... --`).
fn mxsentry_command_lines(text: &str) -> Vec<Vec<String>> {
    let joined = text.replace("\\\n", " ");
    let mut out = Vec::new();
    for line in joined.lines() {
        let line = match line.find(" #") {
            Some(i) => &line[..i],
            None => line,
        };
        for part in line
            .split("&&")
            .flat_map(|p| p.split(';'))
            .flat_map(|p| p.split(" | "))
        {
            let words: Vec<&str> = part.split_whitespace().collect();
            let words: &[&str] = match words.first() {
                Some(&"sudo") => &words[1..],
                _ => &words,
            };
            match words {
                ["mxsentry" | "/usr/bin/mxsentry", rest @ ..] => {
                    out.push(rest.iter().map(|w| w.to_string()).collect())
                }
                ["cargo", "run", rest @ ..] => {
                    let after = rest
                        .iter()
                        .position(|w| *w == "--")
                        .map_or(&[][..], |i| &rest[i + 1..]);
                    out.push(after.iter().map(|w| w.to_string()).collect())
                }
                _ => {}
            }
        }
    }
    out
}

#[test]
fn every_documented_command_line_uses_commands_and_options_that_exist() {
    let mut cache = HashMap::new();
    let mut seen = 0;
    for (file, text) in markdown_files() {
        for block in code_blocks(&text) {
            for words in mxsentry_command_lines(&block.text) {
                let words: Vec<&str> = words.iter().map(String::as_str).collect();
                check_command_line(&format!("{file}:{}", block.line), &words, &mut cache);
                seen += 1;
            }
        }
    }
    // README alone: cargo run, run, check-config, explain, greylist, access import.
    assert!(
        seen >= 6,
        "only {seen} command lines found: is the extractor still right?"
    );
}

#[test]
fn cargo_run_means_the_daemon() {
    // The README's first command, `cargo run --release -- run --config milter.toml`, needs the
    // root package to have exactly one binary (the load generator is tools/milterload).
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(ROOT)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = meta["packages"].as_array().unwrap();
    let bins = |name: &str| -> Vec<String> {
        let p = packages.iter().find(|p| p["name"] == name).unwrap();
        p["targets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(bins("mxsentry"), vec!["mxsentry".to_string()]);
    assert_eq!(bins("milterload"), vec!["milterload".to_string()]);
    let mxsentry = packages.iter().find(|p| p["name"] == "mxsentry").unwrap();
    assert_eq!(
        mxsentry["publish"],
        serde_json::Value::Null,
        "mxsentry is publishable"
    );
    let milterload = packages.iter().find(|p| p["name"] == "milterload").unwrap();
    assert_eq!(
        milterload["publish"],
        serde_json::json!([]),
        "milterload must not be published"
    );
}

// ---------------------------------------------------------------------------------------------
// One set of DNSBL placeholders, and every linked doc installed.

fn placeholders(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) => {
                let name = &after[..close];
                if !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                    out.insert(name.to_string());
                }
                rest = &after[close + 1..];
            }
            None => break,
        }
    }
    out
}

#[test]
fn dnsbl_message_placeholders_are_the_codes_in_readme_and_milter_toml() {
    // The code's set: the names render_message fills in (its match arms), each checked by
    // rendering it.
    let source = read("src/checks/dnsbl.rs");
    let body = &source[source.find("pub fn render_message").unwrap()..];
    let body = &body[..body.find("\n}\n").unwrap()];
    let code: BTreeSet<String> = body
        .lines()
        .filter_map(|l| l.trim().strip_prefix('"'))
        .filter_map(|l| l.split_once("\" =>").map(|(name, _)| name.to_string()))
        .collect();
    assert!(code.len() >= 4, "{code:?}");
    let vars = mxsentry::checks::dnsbl::MessageVars {
        client_ip: Some("192.0.2.1".parse().unwrap()),
        zone: "zone.test",
        txt: Some("listed"),
        sender_domain: Some("example.org"),
    };
    for name in &code {
        let template = format!("{{{name}}}");
        let rendered = mxsentry::checks::dnsbl::render_message(&template, &vars);
        assert_ne!(rendered, template, "{{{name}}} is not filled in");
    }

    let readme = read("README.md");
    let row = readme
        .lines()
        .find(|l| l.starts_with("| DNSBL"))
        .expect("README's DNSBL row");
    let listed = &row[row
        .find("`message` (")
        .expect("README lists message placeholders")..];
    let listed = &listed[..listed.find(')').unwrap()];
    assert_eq!(
        placeholders(listed),
        code,
        "README's DNSBL message placeholders"
    );

    let toml = read("milter.toml");
    let before_message = &toml[..toml
        .find("\n#message = ")
        .expect("milter.toml's message example")];
    let comment = before_message
        .lines()
        .rev()
        .take_while(|l| l.starts_with("# "))
        .collect::<Vec<_>>()
        .join(" ");
    assert_eq!(
        placeholders(&comment),
        code,
        "milter.toml's DNSBL message placeholders"
    );
}

#[test]
fn every_doc_an_installed_doc_links_to_exists_and_is_installed() {
    let manifest: toml::Table = toml::from_str(&read("Cargo.toml")).unwrap();
    let assets = manifest["package"]["metadata"]["deb"]["assets"]
        .as_array()
        .unwrap();
    // Installed markdown files, by source path (globs expanded).
    let mut installed: BTreeSet<String> = BTreeSet::new();
    for asset in assets {
        let src = asset.as_array().unwrap()[0].as_str().unwrap();
        if let Some(dir) = src.strip_suffix("/*.md") {
            for (name, _) in markdown_files()
                .iter()
                .filter(|(n, _)| n.starts_with(&format!("{dir}/")))
            {
                installed.insert(name.clone());
            }
        } else if src.ends_with(".md") {
            installed.insert(src.to_string());
        }
    }
    assert!(
        installed.contains("README.md") && installed.contains("docs/greylisting.md"),
        "{installed:?}"
    );
    for doc in installed.clone() {
        let text = read(&doc);
        for word in text.split(|c: char| c.is_whitespace() || "`()[]<>,;\"'".contains(c)) {
            let word = word.trim_end_matches(['.', ':']);
            if !word.ends_with(".md") || word.contains("://") {
                continue;
            }
            // Benchmark results are outputs of bench/run.sh in a checkout, not guides.
            if word.starts_with("bench/") {
                continue;
            }
            let target = if word.contains('/') {
                word.to_string()
            } else if Path::new(ROOT).join("docs").join(word).exists() {
                format!("docs/{word}")
            } else {
                word.to_string()
            };
            assert!(
                Path::new(ROOT).join(&target).exists(),
                "{doc} points to {word}, which is not in the repository"
            );
            assert!(
                installed.contains(&target),
                "{doc} points to {word}, which the .deb does not install"
            );
        }
    }
}
