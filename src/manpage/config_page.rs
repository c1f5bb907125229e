//! milter.toml(5), from the commented `milter.toml`: the comment block at the top is the
//! description, then each `[section]` (also the commented-out example ones, `#[[dnsbl.zones]]`)
//! with its keys, each key with the comment lines right above it. A comment separated by a blank
//! line belongs to what follows the blank line's section heading, or to the section it is in.

use std::fmt::Write as _;

use super::roff::{bold, escape, title};
use super::VERSION;

/// One line of milter.toml, as the page sees it.
#[derive(Debug, PartialEq)]
enum Line<'a> {
    Blank,
    Comment(&'a str),
    /// `[name]` or `[[name]]`; `shipped` is false when commented out (`#[[dnsbl.zones]]`).
    Section {
        header: &'a str,
        shipped: bool,
    },
    /// `key = value`; `shipped` is false for a commented-out `#key = value`.
    Key {
        key: &'a str,
        value: &'a str,
        shipped: bool,
    },
}

fn classify(raw: &str) -> Line<'_> {
    let line = raw.trim();
    if line.is_empty() {
        return Line::Blank;
    }
    let (body, shipped) = match line.strip_prefix('#') {
        Some(rest) => (rest, false),
        None => (line, true),
    };
    if body.starts_with('[') && body.ends_with(']') {
        return Line::Section {
            header: body,
            shipped,
        };
    }
    if let Some((key, value)) = body.split_once(" = ") {
        let is_key = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if is_key {
            return Line::Key {
                key,
                value: value.trim(),
                shipped,
            };
        }
    }
    match line.strip_prefix('#') {
        Some(text) => Line::Comment(text.strip_prefix(' ').unwrap_or(text)),
        // Not a shape milter.toml uses (e.g. a multi-line array): shown as it is.
        None => Line::Comment(line),
    }
}

/// The text of milter.toml(5) generated from `text`, a commented milter.toml.
pub fn milter_toml_5(text: &str) -> String {
    let mut page = title("milter.toml", "5", VERSION, "File Formats Manual");
    // No hyphenation: key names and values must stay whole to be searched and pasted.
    page.push_str(
        ".nh
",
    );
    page.push_str(".SH NAME\nmilter.toml \\- configuration of the mxsentry mail filter\n");
    page.push_str(".SH SYNOPSIS\n.I /etc/mxsentry/milter.toml\n.SH DESCRIPTION\n");
    page.push_str(
        "\\fBmxsentry\\fR(8) reads this TOML file at start and on SIGHUP; \
         \\fBmxsentry check\\-config\\fR validates it. Unknown keys and bad values are refused \
         with \\fIfile\\fR:\\fIline\\fR: \\fIreason\\fR.\n",
    );
    let mut lines = text.lines().map(classify).peekable();
    // The description: the comment block before the first section.
    let mut paragraph = Vec::new();
    while let Some(line) = lines.next_if(|l| !matches!(l, Line::Section { .. })) {
        match line {
            Line::Comment(c) if !c.trim().is_empty() => paragraph.push(c),
            _ => flush(&mut page, &mut paragraph),
        }
    }
    flush(&mut page, &mut paragraph);
    page.push_str(".SH SECTIONS AND KEYS\n");

    let mut pending: Vec<&str> = Vec::new(); // comment lines since the last blank line
    let mut loose: Vec<&str> = Vec::new(); // comment lines before that blank line
    for line in lines {
        match line {
            Line::Blank => {
                if !pending.is_empty() {
                    if !loose.is_empty() {
                        loose.push("");
                    }
                    loose.append(&mut pending);
                }
            }
            Line::Comment(c) => pending.push(c),
            Line::Section { header, shipped } => {
                let note = if shipped {
                    ""
                } else {
                    " (an example, commented out in the shipped file)"
                };
                let _ = writeln!(page, ".SS \"{}{}\"", escape(header), escape(note));
                loose.append(&mut pending);
                flush(&mut page, &mut loose);
            }
            Line::Key {
                key,
                value,
                shipped,
            } => {
                flush(&mut page, &mut loose);
                let _ = writeln!(page, ".TP\n{} = {}", bold(key), escape(value));
                let mut text = pending.join(" ");
                pending.clear();
                if !shipped {
                    text.push_str(" (Commented out in the shipped file.)");
                }
                let _ = writeln!(page, "{}", escape(text.trim()));
            }
        }
    }
    loose.append(&mut pending);
    flush(&mut page, &mut loose);
    page.push_str(".SH FILES\n.TP\n.I /etc/mxsentry/milter.toml\nThe configuration.\n");
    page.push_str(
        ".TP\n.I /usr/share/doc/mxsentry/examples/\n\
         Example configurations; milter.toml.all\\-keys is the file this page documents.\n",
    );
    page.push_str(".SH SEE ALSO\n\\fBmxsentry\\fR(8)\n");
    page
}

/// Writes `lines` as paragraphs (an empty line starts a new one) and empties it.
fn flush(page: &mut String, lines: &mut Vec<&str>) {
    if lines.iter().all(|l| l.trim().is_empty()) {
        lines.clear();
        return;
    }
    page.push_str(".PP\n");
    for line in lines.drain(..) {
        if line.trim().is_empty() {
            page.push_str(".PP\n");
        } else {
            let _ = writeln!(page, "{}", escape(line.trim()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_the_shapes_of_milter_toml() {
        assert_eq!(classify(""), Line::Blank);
        assert_eq!(classify("# Default: 5."), Line::Comment("Default: 5."));
        assert_eq!(
            classify("#[[dnsbl.zones]]"),
            Line::Section {
                header: "[[dnsbl.zones]]",
                shipped: false
            }
        );
        assert_eq!(
            classify("#zone = \"zen.example\""),
            Line::Key {
                key: "zone",
                value: "\"zen.example\"",
                shipped: false
            }
        );
        assert_eq!(
            classify("# Lines starting \"#key = ...\" are settings left out"),
            Line::Comment("Lines starting \"#key = ...\" are settings left out")
        );
    }

    #[test]
    fn keys_carry_their_comments_and_sections_their_intro() {
        let page = milter_toml_5(
            "# Top.\n\n[a]\n# One.\n# More.\nx = 1\n\n# About b.\n\n[b]\n# Example.\n#y = \"v\"\n",
        );
        assert!(
            page.contains(".PP\nTop.\n.SH SECTIONS AND KEYS\n"),
            "{page}"
        );
        assert!(page.contains(".TP\n\\fBx\\fR = 1\nOne. More.\n"), "{page}");
        assert!(page.contains(".SS \"[b]\"\n.PP\nAbout b.\n"), "{page}");
        assert!(
            page.contains("\\fBy\\fR = \"v\"\nExample. (Commented out in the shipped file.)"),
            "{page}"
        );
    }
}
