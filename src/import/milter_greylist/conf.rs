//! greylist.conf read as milter-greylist's conf_lex.l does: statements of words, quoted
//! strings, `/regexes/` and `{ }` lists, one per line (a `\` continues it on the next line,
//! ignoring what follows the backslash), `#` comments. Keywords are case-insensitive and may
//! end with `:` (`greylist:`). Pure.

/// One token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    /// A bare word (keyword, address, network, number, duration), as written.
    Word(String),
    /// `"..."` without the quotes (`\"` unescaped).
    Quoted(String),
    /// `/.../` without the slashes, as written inside.
    Regex(String),
    Open,
    Close,
}

impl Token {
    /// The keyword this token is (lowercase, a trailing `:` dropped), if a word.
    pub fn keyword(&self) -> Option<String> {
        match self {
            Token::Word(w) => Some(w.trim_end_matches(':').to_ascii_lowercase()),
            _ => None,
        }
    }

    /// How it was written, for messages.
    pub fn show(&self) -> String {
        match self {
            Token::Word(w) => w.clone(),
            Token::Quoted(q) => format!("\"{q}\""),
            Token::Regex(r) => format!("/{r}/"),
            Token::Open => "{".into(),
            Token::Close => "}".into(),
        }
    }
}

/// A statement: its tokens and the line it starts on (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub line: usize,
    pub tokens: Vec<Token>,
}

/// Splits the file into statements; a line that cannot be tokenised gives an error entry.
pub fn statements(text: &str) -> Vec<Result<Statement, (usize, String)>> {
    let mut out = Vec::new();
    let mut pending: Option<Statement> = None;
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        let (tokens, continued) = match tokenize(raw) {
            Ok(v) => v,
            Err(reason) => {
                // The statement this line belongs to cannot be read: report it once.
                let start = pending.take().map_or(line, |p| p.line);
                out.push(Err((start, reason)));
                continue;
            }
        };
        let stmt = pending.get_or_insert_with(|| Statement {
            line,
            tokens: Vec::new(),
        });
        stmt.tokens.extend(tokens);
        if !continued {
            if let Some(s) = pending.take().filter(|s| !s.tokens.is_empty()) {
                out.push(Ok(s));
            }
        }
    }
    if let Some(s) = pending.filter(|s| !s.tokens.is_empty()) {
        out.push(Ok(s));
    }
    out
}

/// The tokens of one physical line and whether a `\` continues it.
fn tokenize(line: &str) -> Result<(Vec<Token>, bool), String> {
    let chars: Vec<char> = line.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            ' ' | '\t' => i += 1,
            '#' => break,
            '\\' => return Ok((tokens, true)),
            '{' => {
                tokens.push(Token::Open);
                i += 1;
            }
            '}' => {
                tokens.push(Token::Close);
                i += 1;
            }
            '"' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err("unterminated quoted string".into()),
                        Some('"') => break,
                        Some('\\') if chars.get(i + 1) == Some(&'"') => {
                            s.push('"');
                            i += 2;
                        }
                        Some(&ch) => {
                            s.push(ch);
                            i += 1;
                        }
                    }
                }
                tokens.push(Token::Quoted(s));
                i += 1;
            }
            '/' if closing_slash(&chars, i).is_some() => {
                let end = closing_slash(&chars, i).unwrap_or(i);
                tokens.push(Token::Regex(chars[i + 1..end].iter().collect()));
                i = end + 1;
            }
            _ => {
                let start = i;
                while i < chars.len() && !matches!(chars[i], ' ' | '\t' | '{' | '}' | '"') {
                    i += 1;
                }
                tokens.push(Token::Word(chars[start..i].iter().collect()));
            }
        }
    }
    Ok((tokens, false))
}

/// The index of the `/` closing a regex that opens at `open` (`\/` does not close it); `None`
/// when there is none (`/24` is a CIDR mask, not a regex).
fn closing_slash(chars: &[char], open: usize) -> Option<usize> {
    let mut j = open + 1;
    while j < chars.len() {
        match chars[j] {
            '\\' => j += 2,
            '/' => return (j > open + 1).then_some(j),
            _ => j += 1,
        }
    }
    None
}

/// A milter-greylist duration (`-?[0-9]+[smhdw]?`, seconds without a unit) in seconds.
pub fn duration(word: &str) -> Result<u64, String> {
    let digits = word.trim_end_matches(['s', 'm', 'h', 'd', 'w']);
    let unit = &word[digits.len()..];
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{word}` is not a duration (e.g. 30m, 2h, 5d)"))?;
    let factor = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("`{word}` is not a duration (e.g. 30m, 2h, 5d)")),
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("duration `{word}` is too large"))
}

/// Seconds written the way milter.toml likes them (`"30m"`, `"5d"`, `"90s"`).
pub fn toml_duration(secs: u64) -> String {
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs >= size && secs % size == 0 {
            return format!("{}{unit}", secs / size);
        }
    }
    format!("{secs}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<Token> {
        tokenize(line).unwrap().0
    }

    #[test]
    fn tokens_as_conf_lex_reads_them() {
        assert_eq!(
            words("racl whitelist rcpt /@example\\.net$/ # comment"),
            vec![
                Token::Word("racl".into()),
                Token::Word("whitelist".into()),
                Token::Word("rcpt".into()),
                Token::Regex("@example\\.net$".into()),
            ]
        );
        assert_eq!(
            words("list \"my users\" rcpt { a@x b@y }"),
            vec![
                Token::Word("list".into()),
                Token::Quoted("my users".into()),
                Token::Word("rcpt".into()),
                Token::Open,
                Token::Word("a@x".into()),
                Token::Word("b@y".into()),
                Token::Close,
            ]
        );
        assert_eq!(
            words("subnetmatch /24"),
            vec![Token::Word("subnetmatch".into()), Token::Word("/24".into())]
        );
        assert_eq!(
            words("msg \"say \\\"no\\\"\"")[1],
            Token::Quoted("say \"no\"".into())
        );
        assert!(tokenize("msg \"open").is_err());
    }

    #[test]
    fn continuation_lines_make_one_statement() {
        let s = statements(
            "greylist 10m\nracl blacklist addr 192.0.2.0/24 \\ ignored\n  msg \"go\"\n\n# c\n",
        );
        assert_eq!(s.len(), 2);
        let second = s[1].as_ref().unwrap();
        assert_eq!(second.line, 2);
        assert_eq!(second.tokens.len(), 6);
    }

    #[test]
    fn durations() {
        assert_eq!(duration("300"), Ok(300));
        assert_eq!(duration("45m"), Ok(2700));
        assert_eq!(duration("2w"), Ok(14 * 86_400));
        assert!(duration("5x").is_err());
        assert!(duration("-5m").is_err());
        assert_eq!(toml_duration(2700), "45m");
        assert_eq!(toml_duration(90), "90s");
        assert_eq!(toml_duration(5 * 86_400 + 1800), "7230m");
    }
}
