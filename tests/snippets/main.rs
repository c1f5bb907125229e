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

#[path = "../common/mod.rs"]
mod common;

mod bed;
mod commands;
mod markdown;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;

use bed::{
    check_and_start, make_test_safe, merge, minimal_config, parse_toml, table, uncommented, Bed,
};
use commands::check_command_line;
use markdown::{code_blocks, is_access_block, is_toml_block, mxsentry_command_lines};

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
