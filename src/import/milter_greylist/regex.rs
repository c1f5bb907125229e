//! milter-greylist's regexes (POSIX `regcomp` with `REG_ICASE`: basic syntax, or extended with
//! `extendedregex`) in the syntax of the `regex` crate. Pure.

/// Translates the body of a `/.../` clause (escaped slashes `\/` included). Errors name what
/// has no equivalent (back-references, `[=...=]`, `[. .]`).
pub fn translate(posix: &str, extended: bool) -> Result<String, String> {
    let chars: Vec<char> = posix.chars().collect();
    let mut out = String::with_capacity(posix.len() + 8);
    let mut i = 0;
    // Where a `*` is literal in a basic regex: at the start, after `\(`, `^` or `\|`.
    let mut at_start = true;
    while i < chars.len() {
        let c = chars[i];
        let was_start = at_start;
        at_start = false;
        match c {
            '\\' => {
                let Some(&next) = chars.get(i + 1) else {
                    return Err("the regex ends with a lone backslash".into());
                };
                i += 2;
                match next {
                    '/' => out.push('/'),
                    '<' | '>' => out.push_str(r"\b"),
                    '1'..='9' => {
                        return Err(format!("back-reference \\{next} has no equivalent"));
                    }
                    '(' | ')' | '{' | '}' | '|' | '+' | '?' if !extended => {
                        out.push(next);
                        at_start = matches!(next, '(' | '|');
                    }
                    'w' | 'W' | 's' | 'S' | 'b' | 'B' => {
                        out.push('\\');
                        out.push(next);
                    }
                    other => push_literal(&mut out, other),
                }
                continue;
            }
            '[' => {
                i = bracket(&chars, i, &mut out)?;
                continue;
            }
            '(' | ')' | '{' | '}' | '|' | '+' | '?' if !extended => push_literal(&mut out, c),
            '*' if !extended && was_start => push_literal(&mut out, c),
            '^' => {
                out.push('^');
                at_start = true;
            }
            '(' | '|' => {
                out.push(c);
                at_start = true;
            }
            _ => out.push(c),
        }
        i += 1;
    }
    regex::RegexBuilder::new(&out)
        .case_insensitive(true)
        .build()
        .map_err(|e| format!("no equivalent regex: {e}"))?;
    Ok(out)
}

fn push_literal(out: &mut String, c: char) {
    if c.is_ascii_punctuation() {
        out.push('\\');
    }
    out.push(c);
}

/// A POSIX bracket expression from `chars[start]` (`[`); returns the index after its `]`.
fn bracket(chars: &[char], start: usize, out: &mut String) -> Result<usize, String> {
    let mut i = start + 1;
    out.push('[');
    if chars.get(i) == Some(&'^') {
        out.push('^');
        i += 1;
    }
    // A `]` first in the list is a member.
    if chars.get(i) == Some(&']') {
        out.push_str(r"\]");
        i += 1;
    }
    while i < chars.len() {
        let c = chars[i];
        match c {
            ']' => {
                out.push(']');
                return Ok(i + 1);
            }
            '[' => match chars.get(i + 1) {
                Some(':') => {
                    let end = (i + 2..chars.len().saturating_sub(1))
                        .find(|&j| chars[j] == ':' && chars[j + 1] == ']')
                        .ok_or("unterminated [: :] class")?;
                    out.extend(&chars[i..end + 2]);
                    i = end + 2;
                    continue;
                }
                Some('=' | '.') => {
                    return Err("collating elements ([= =], [. .]) have no equivalent".into())
                }
                _ => out.push_str(r"\["),
            },
            // Literal inside POSIX brackets; operators or escapes in the regex crate's classes.
            '\\' | '&' | '~' => {
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
        i += 1;
    }
    Err("unterminated bracket expression [".into())
}

/// For an address regex: milter-greylist matches `<user@example.com>` (brackets included),
/// we match the bare address. A leading `<` (after an optional `^`) becomes `^`, a trailing
/// `>` (before an optional `$`) becomes `$`. A pattern anchored with `^`/`$` but without the
/// bracket never matched in milter-greylist: that is an error (mapping it would widen it).
pub fn unbracket(re: &str) -> Result<String, String> {
    let mut s = re;
    let mut head = "";
    if let Some(rest) = s.strip_prefix("^<").or_else(|| s.strip_prefix(r"^\<")) {
        (head, s) = ("^", rest);
    } else if let Some(rest) = s.strip_prefix('<').or_else(|| s.strip_prefix(r"\<")) {
        (head, s) = ("^", rest);
    } else if s.starts_with('^') {
        return Err(
            "anchored with ^ but milter-greylist sees the address as <...>: it never matched"
                .into(),
        );
    }
    let mut tail = "";
    if let Some(rest) = s.strip_suffix(">$").or_else(|| s.strip_suffix(r"\>$")) {
        (tail, s) = ("$", rest);
    } else if let Some(rest) = s.strip_suffix('>').filter(|r| !r.ends_with('\\')) {
        (tail, s) = ("$", rest);
    } else if let Some(rest) = s.strip_suffix(r"\>") {
        (tail, s) = ("$", rest);
    } else if s.ends_with('$') && !s.ends_with(r"\$") {
        return Err(
            "anchored with $ but milter-greylist sees the address as <...>: it never matched"
                .into(),
        );
    }
    Ok(format!("{head}{s}{tail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_and_extended_syntax() {
        assert_eq!(
            translate(r"@example\.net$", false).unwrap(),
            r"@example\.net$"
        );
        assert_eq!(translate(r"a\(b\|c\)\{2\}", false).unwrap(), r"a(b|c){2}");
        assert_eq!(
            translate(r"a(b)+?{x}|", false).unwrap(),
            r"a\(b\)\+\?\{x\}\|"
        );
        assert_eq!(translate(r"*x", false).unwrap(), r"\*x");
        assert_eq!(translate(r"a(b|c)+", true).unwrap(), r"a(b|c)+");
        assert_eq!(translate(r"[]a&~\]x", true).unwrap(), r"[\]a\&\~\\]x");
        assert_eq!(translate(r"[[:digit:]]+", true).unwrap(), r"[[:digit:]]+");
        assert_eq!(translate(r"\<spam\>", true).unwrap(), r"\bspam\b");
        assert_eq!(translate(r"a\/b", false).unwrap(), "a/b");
        assert!(translate(r"\(a\)\1", false)
            .unwrap_err()
            .contains("back-reference"));
        assert!(translate(r"[a", false)
            .unwrap_err()
            .contains("unterminated"));
    }

    #[test]
    fn brackets_of_the_address() {
        assert_eq!(unbracket(r"@example\.com>$").unwrap(), r"@example\.com$");
        assert_eq!(unbracket(r"^<spam@").unwrap(), "^spam@");
        assert_eq!(unbracket(r"<spam@.*>").unwrap(), "^spam@.*$");
        assert_eq!(unbracket("spam").unwrap(), "spam");
        assert!(unbracket("^spam@").is_err());
        assert!(unbracket(r"example\.com$").is_err());
    }
}
