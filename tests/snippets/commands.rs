//! Command lines against the real binary's `--help`: subcommands and options that exist.

use std::collections::{BTreeSet, HashMap};

use crate::mxsentry;

/// The subcommand names under "Commands:" in a `--help` text (without `help`).
pub fn listed_commands(help: &str) -> Vec<String> {
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
pub fn listed_options(help: &str) -> BTreeSet<String> {
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
pub fn help_of(path: &[String], cache: &mut HashMap<Vec<String>, String>) -> String {
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
pub fn check_command_line(origin: &str, words: &[&str], cache: &mut HashMap<Vec<String>, String>) {
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
