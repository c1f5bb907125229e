//! Code blocks of the markdown files, what kind of snippet each is, and the mxsentry command
//! lines in them.

/// A code block: where it starts (1-based line of its first code line), the fence's language
/// (None for an indented block) and its text.
pub struct Block {
    pub line: usize,
    pub lang: Option<String>,
    pub text: String,
}

pub fn code_blocks(md: &str) -> Vec<Block> {
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

pub const ACTIONS: [&str; 6] = ["OK", "RELAY", "REJECT", "DISCARD", "TEMPFAIL", "SKIP"];

pub fn is_toml_block(b: &Block) -> bool {
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
pub fn is_access_block(b: &Block) -> bool {
    // Every rule line (comments and blank lines aside) must read `KEY ACTION`: one line that
    // merely has an action word second (`flips reject -> accept: 4`) does not make a block one.
    let mut rules = b
        .text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .peekable();
    !is_toml_block(b)
        && rules.peek().is_some()
        && rules.all(|l| {
            let mut words = l.split_whitespace();
            match (words.next(), words.next()) {
                (Some(_key), Some(action)) => {
                    let action = action.to_ascii_uppercase();
                    ACTIONS.contains(&action.as_str()) || action.starts_with("ERROR:")
                }
                _ => false,
            }
        })
}

/// Shell command lines in a code block that run mxsentry: `\` continuations joined, split at
/// `&&`, `;` and ` | `, trailing `# comments` dropped; returns the words after `mxsentry`
/// (or after `cargo run ... --`).
pub fn mxsentry_command_lines(text: &str) -> Vec<Vec<String>> {
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
