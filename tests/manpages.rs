//! The man pages as a packager and an admin get them: `mxsentry generate-man DIR` writes
//! mxsentry.8 and milter.toml.5; the first names every command `--help` shows (nested ones
//! included) with its options, the second every section and key of the repository's
//! milter.toml; groff renders both without a warning.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::mxsentry;

/// The subcommand names listed under "Commands:" in a `--help` text (without `help`).
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

/// The long options listed under "Options:" in a `--help` text (without --help and --version).
fn listed_options(help: &str) -> BTreeSet<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Options:")
        .skip(1)
        .map(str::trim)
        .filter(|l| l.starts_with('-'))
        // "-c, --config <CONFIG>  The configuration file": the names end at the double space.
        .flat_map(|l| l.split("  ").next().unwrap_or("").split_whitespace())
        .map(|w| w.trim_end_matches(','))
        .filter(|w| w.starts_with("--") && *w != "--help" && *w != "--version")
        .map(str::to_string)
        .collect()
}

/// Every command path as `--help` shows it, depth first: ["run"], ["greylist", "list"], ...
fn command_paths(prefix: &[String], out: &mut Vec<Vec<String>>) {
    let mut args: Vec<&str> = prefix.iter().map(String::as_str).collect();
    args.push("--help");
    let (code, help, err) = mxsentry(&args);
    assert_eq!(code, 0, "{args:?}: {err}");
    for name in listed_commands(&help) {
        let mut path = prefix.to_vec();
        path.push(name);
        out.push(path.clone());
        command_paths(&path, out);
    }
}

/// The page's roff spelling of plain text (generate-man escapes `-` as `\-`).
fn roff(text: &str) -> String {
    text.replace('-', "\\-")
}

fn generate(dir: &Path) -> (String, String) {
    let d = dir.to_str().unwrap();
    let (code, out, err) = mxsentry(&["generate-man", d]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("mxsentry.8") && out.contains("milter.toml.5"),
        "{out}"
    );
    (
        std::fs::read_to_string(dir.join("mxsentry.8")).unwrap(),
        std::fs::read_to_string(dir.join("milter.toml.5")).unwrap(),
    )
}

#[test]
fn generate_man_is_hidden_from_help() {
    let (_, help, _) = mxsentry(&["--help"]);
    assert!(!help.contains("generate-man"), "{help}");
    assert!(
        listed_commands(&help).contains(&"run".to_string()),
        "{help}"
    );
}

#[test]
fn mxsentry_8_names_every_command_and_option() {
    let dir = tempfile::tempdir().unwrap();
    let (page, _) = generate(dir.path());
    assert!(page.contains("\n.TH mxsentry 8 "), "{}", &page[..120]);
    let mut paths = Vec::new();
    command_paths(&[], &mut paths);
    assert!(paths.len() >= 9, "{paths:?}");
    let mut options_checked = 0;
    for path in &paths {
        let heading = format!(".SS \"mxsentry {}\"", roff(&path.join(" ")));
        let start = page
            .find(&heading)
            .unwrap_or_else(|| panic!("no {heading} in mxsentry.8"));
        // The options of this command, in its own part of the page (up to the next heading).
        let part = &page[start + heading.len()..];
        let part = &part[..part.find(".SS ").unwrap_or(part.len())];
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let (_, help, _) = mxsentry(&args);
        for option in listed_options(&help) {
            options_checked += 1;
            assert!(
                part.contains(&format!("\\fB{}\\fR", roff(&option))),
                "mxsentry {}: {option} missing from its part of mxsentry.8:\n{part}",
                path.join(" ")
            );
        }
    }
    assert!(
        options_checked >= 20,
        "only {options_checked} options seen in --help"
    );
    assert!(
        !page.contains("generate\\-man"),
        "the hidden command is documented"
    );
    assert!(
        page.contains("\\fBmilter.toml\\fR(5)"),
        "no SEE ALSO milter.toml(5)"
    );
}

/// Every (section, key) of the repository's milter.toml, its commented-out examples included.
fn milter_toml_keys() -> Vec<(String, String)> {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/milter.toml")).unwrap();
    let uncommented: String = text
        .lines()
        .map(|l| {
            let rest = l.strip_prefix('#').unwrap_or(l);
            let is_setting = rest.starts_with('[')
                || rest.split_once(" = ").is_some_and(|(k, _)| {
                    !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                });
            if is_setting {
                rest
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let value: toml::Table = toml::from_str(&uncommented).unwrap();
    fn walk(path: &str, table: &toml::Table, header: &str, keys: &mut Vec<(String, String)>) {
        for (k, v) in table {
            let p = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            match v {
                toml::Value::Table(t) => walk(&p, t, &format!("[{p}]"), keys),
                toml::Value::Array(items)
                    if !items.is_empty() && items.iter().all(|i| i.is_table()) =>
                {
                    for item in items.iter().filter_map(toml::Value::as_table) {
                        walk(&p, item, &format!("[[{p}]]"), keys);
                    }
                }
                _ => keys.push((header.to_string(), k.clone())),
            }
        }
    }
    let mut keys = Vec::new();
    walk("", &value, "", &mut keys);
    keys
}

#[test]
fn milter_toml_5_names_every_section_and_key_with_its_comment() {
    let dir = tempfile::tempdir().unwrap();
    let (_, page) = generate(dir.path());
    assert!(page.starts_with(".TH MILTER.TOML 5 "), "{}", &page[..80]);
    let keys = milter_toml_keys();
    assert!(keys.len() >= 60, "{keys:?}");
    for (section, key) in &keys {
        let heading = format!(".SS \"{}", roff(section));
        let start = page
            .find(&heading)
            .unwrap_or_else(|| panic!("no {heading} in milter.toml.5"));
        let part = &page[start + heading.len()..];
        let part = &part[..part.find(".SS ").unwrap_or(part.len())];
        let item = format!(".TP\n\\fB{}\\fR = ", roff(key));
        let at = part
            .find(&item)
            .unwrap_or_else(|| panic!("{section} {key} missing from milter.toml.5:\n{part}"));
        // The key's comment follows it: the line after the key line is its text, not markup.
        let after = &part[at + item.len()..];
        let comment = after.lines().nth(1).unwrap_or("");
        assert!(
            !comment.is_empty() && !comment.starts_with('.'),
            "{section} {key} has no comment in milter.toml.5: {comment:?}"
        );
    }
}

#[test]
fn groff_renders_both_pages_without_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path());
    for page in ["mxsentry.8", "milter.toml.5"] {
        let out = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(dir.path().join(page))
            .output()
            .unwrap_or_else(|e| panic!("groff: {e} (the test bed installs groff-base)"));
        let warnings = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && warnings.is_empty(),
            "{page}: {warnings}"
        );
        // And man(1) itself, as an admin reads the page, when man-db is there.
        if let Ok(out) = Command::new("man")
            .args(["--warnings", "-l"])
            .arg(dir.path().join(page))
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "80")
            .output()
        {
            let warnings = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && warnings.is_empty(),
                "man -l {page}: {warnings}"
            );
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("SEE ALSO"), "{text}");
        }
    }
}
