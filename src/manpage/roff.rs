//! Just enough roff for the generated pages: text that groff prints as written.

/// Escapes `text` for a roff text line: backslashes, a leading `.` or `'` (which would make the
/// line a request), and every non-ASCII character as `\[uXXXX]` (groff reads the page as ASCII).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    if text.starts_with(['.', '\'']) {
        out.push_str("\\&");
    }
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\e"),
            '-' => out.push_str("\\-"),
            c if c.is_ascii() => out.push(c),
            c => out.push_str(&format!("\\[u{:04X}]", u32::from(c))),
        }
    }
    out
}

/// `text` in bold, escaped.
pub fn bold(text: &str) -> String {
    format!("\\fB{}\\fR", escape(text))
}

/// `text` in italics, escaped.
pub fn italic(text: &str) -> String {
    format!("\\fI{}\\fR", escape(text))
}

/// The `.TH` line. The date is left out so that a build reproduces the same bytes.
pub fn title(name: &str, section: &str, version: &str, manual: &str) -> String {
    format!(
        ".TH {} {section} \"\" \"mxsentry {version}\" \"{manual}\"\n",
        name.to_ascii_uppercase()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_roff_would_interpret() {
        assert_eq!(escape(".hidden"), "\\&.hidden");
        assert_eq!(escape("'quote"), "\\&'quote");
        assert_eq!(escape("a\\b"), "a\\eb");
        assert_eq!(escape("--config"), "\\-\\-config");
        assert_eq!(escape("a — b"), "a \\[u2014] b");
        assert_eq!(bold("x"), "\\fBx\\fR");
    }
}
