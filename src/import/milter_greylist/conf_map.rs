//! `mxsentry config import milter-greylist greylist.conf`: what of a greylist.conf mxsentry can
//! do, as a milter.toml fragment and rule files. Pure: text in, [`Mapping`] out.
//!
//! Maps: `greylist` → `delay`, `autowhite`, `timeout` → `retry_window` (milter-greylist counts
//! it from the moment a tuple becomes acceptable, we from the first attempt: `delay + timeout`),
//! `subnetmatch[6]` → `ipv4_prefix`/`ipv6_prefix`, `lazyaw` → `client_autowhite_after = 1`,
//! `quiet` → a reply without the seconds, `noauth` → `[trusted] authenticated = false`,
//! `racl`/`acl` (and old bare `addr`/`from`/`rcpt`/`domain` lines) with ONE `addr`, `domain`,
//! `from`, `rcpt`, `list` or `dnsrbl` clause: whitelist → the greylist-only allow lists (or a
//! DNSWL), blacklist → access-file entries, `[[sender_rules.regex]]` or a DNSBL zone;
//! `racl greylist default [delay D] [autowhite D]` → our delays. Everything else is reported.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use super::conf::{self, Statement, Token};
use super::rules::{self, Clause, Rules};

/// milter-greylist's built-in defaults (pending.h).
const MG_DELAY: u64 = 1800;
const MG_AUTOWHITE: u64 = 86_400;
const MG_TIMEOUT: u64 = 5 * 86_400;

/// A file `config import` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleFile {
    pub name: &'static str,
    pub content: String,
}

/// The result: the fragment for stdout, the files, and every line not mapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub toml: String,
    pub files: Vec<RuleFile>,
    pub unmapped: Vec<(usize, String)>,
}

/// What a list holds (`list "name" addr { ... }`).
#[derive(Debug, Clone)]
struct List {
    kind: String,
    items: Vec<Token>,
}

/// `dnsrbl "name" zone answer`.
#[derive(Debug, Clone)]
struct DnsRbl {
    zone: String,
    answer: String,
}

#[derive(Default)]
struct State {
    source: String,
    extended: bool,
    testmode: bool,
    delay: Option<(u64, usize)>,
    autowhite: Option<(u64, usize)>,
    timeout: Option<(u64, usize)>,
    v4: Option<(u8, usize)>,
    v6: Option<(u8, usize)>,
    lazyaw: Option<usize>,
    quiet: Option<usize>,
    noauth: Option<usize>,
    lists: HashMap<String, List>,
    dnsrbls: HashMap<String, DnsRbl>,
    rules: Rules,
    unmapped: Vec<(usize, String)>,
}

/// Maps `text` (the file `source`); rule files are named in the fragment as `out_dir/NAME`.
pub fn map(text: &str, source: &str, out_dir: &Path) -> Mapping {
    let mut st = State {
        source: source.to_owned(),
        ..State::default()
    };
    let statements: Vec<Statement> = conf::statements(text)
        .into_iter()
        .filter_map(|s| s.map_err(|e| st.unmapped.push(e)).ok())
        .collect();
    // A whitelist default makes every earlier `racl greylist` rule a selection: greylist
    // only these. Known before the rules are mapped.
    let whitelist_default = statements.iter().any(|s| {
        let words: Vec<String> = s.tokens.iter().filter_map(Token::keyword).collect();
        matches!(words.first().map(String::as_str), Some("racl" | "acl"))
            && words.iter().any(|w| w == "whitelist")
            && words.iter().any(|w| w == "default")
    });
    for s in &statements {
        if let Err(reason) = statement(&mut st, s, whitelist_default) {
            st.unmapped.push((s.line, reason));
        }
    }
    st.unmapped.sort_by_key(|(line, _)| *line);
    render(st, out_dir)
}

fn statement(st: &mut State, s: &Statement, whitelist_default: bool) -> Result<(), String> {
    let line = s.line;
    let Some(keyword) = s.tokens.first().and_then(Token::keyword) else {
        return Err(format!("unexpected `{}`", s.tokens[0].show()));
    };
    let args = &s.tokens[1..];
    let one_word = || match args {
        [Token::Word(w)] => Ok(w.as_str()),
        _ => Err(format!("`{keyword}` expects one value")),
    };
    match keyword.as_str() {
        "greylist" => st.delay = Some((conf::duration(one_word()?)?, line)),
        "autowhite" => st.autowhite = Some((conf::duration(one_word()?)?, line)),
        "timeout" => st.timeout = Some((conf::duration(one_word()?)?, line)),
        "subnetmatch" => st.v4 = Some((prefix(one_word()?, 32)?, line)),
        "subnetmatch6" => st.v6 = Some((prefix(one_word()?, 128)?, line)),
        "lazyaw" => st.lazyaw = Some(line),
        "quiet" => st.quiet = Some(line),
        "noauth" => st.noauth = Some(line),
        "extendedregex" => st.extended = true,
        "testmode" => {
            st.testmode = true;
            return Err("testmode: deprecated; only changes how bare `rcpt` lines act".into());
        }
        // Our names always match on label boundaries.
        "domainexact" => {}
        "list" => return define_list(st, args),
        "dnsrbl" => match args {
            [Token::Quoted(name), zone, answer] => {
                let text = |t: &Token| match t {
                    Token::Word(w) | Token::Quoted(w) => Some(w.clone()),
                    _ => None,
                };
                let (Some(zone), Some(answer)) = (text(zone), text(answer)) else {
                    return Err("dnsrbl: expected `dnsrbl \"name\" zone answer`".into());
                };
                st.dnsrbls.insert(name.clone(), DnsRbl { zone, answer });
            }
            _ => return Err("dnsrbl: expected `dnsrbl \"name\" zone answer`".into()),
        },
        "racl" | "acl" | "dacl" => return acl(st, line, &keyword, args, whitelist_default),
        // Before `racl` existed: one clause per line, a whitelist (`rcpt` in test mode: greylist).
        "addr" | "from" | "rcpt" | "domain" => {
            if keyword == "rcpt" && st.testmode {
                return Err("rcpt in test mode: greylists only this recipient, which mxsentry cannot express".into());
            }
            return acl(
                st,
                line,
                "acl",
                &[&[Token::Word("whitelist".into())], &s.tokens[..]].concat(),
                whitelist_default,
            );
        }
        "socket" => {
            let listen = match args.first() {
                Some(Token::Quoted(path) | Token::Word(path)) => listen_spec(path),
                _ => None,
            };
            return Err(match listen {
                Some(l) => format!(
                    "socket: set [milter] listen = {} so the MTA's milter line keeps working once milter-greylist is stopped",
                    toml_str(&l)
                ),
                None => unmapped_reason("socket"),
            });
        }
        other => return Err(unmapped_reason(other)),
    }
    Ok(())
}

/// Why a statement has no equivalent (and what to do instead, where there is something).
fn unmapped_reason(keyword: &str) -> String {
    let why = match keyword {
        "socket" => "the MTA's milter socket: set [milter] listen (e.g. \"unix:/path\") so the MTA's milter line keeps working",
        "user" => "run as this user with the service unit (User=)",
        "pidfile" | "nodetach" => "systemd runs mxsentry in the foreground",
        "dumpfile" | "dumpfreq" | "dump_no_time_translation" => {
            "mxsentry's store commits by itself (greylist.commit_interval); import the dump with `mxsentry greylist import milter-greylist`"
        }
        "peer" | "syncaddr" | "syncsrcaddr" | "syncmaxqlen" => {
            "MX sync: share one store instead (greylist.store = \"redis\" on every MX)"
        }
        "logfac" | "verbose" | "logexpired" | "stat" => "logging goes to the journal (RUST_LOG); decisions are in the decision log",
        "report" => "X-Greylist is added only when a message was delayed",
        "nospf" => "mxsentry has no SPF whitelisting, so there is nothing to turn off",
        "noaccessdb" => "mxsentry does not read sendmail's {greylist} macro",
        "delayedreject" => "mxsentry refuses at RCPT",
        "multiracl" | "unbracket" | "maxpeek" | "localaddr" => "no equivalent",
        "geoipdb" | "geoipv6db" | "p0fsock" | "spamdsock" | "ldapconf" | "ldapcheck" | "urlcheck"
        | "fixldapcheck" | "ratelimit" | "sm_macro" | "tsig" | "nsupdate" | "drac" | "nodrac"
        | "tarpit" | "tarpit_scope" => "no equivalent in mxsentry",
        _ => "unknown statement",
    };
    format!("{keyword}: {why}")
}

/// milter-greylist's socket (libmilter's `local:/path`, `unix:/path`, `/path`,
/// `inet:PORT@HOST`, `inet6:PORT@HOST`) as our `listen`.
fn listen_spec(socket: &str) -> Option<String> {
    if let Some(path) = socket
        .strip_prefix("local:")
        .or_else(|| socket.strip_prefix("unix:"))
    {
        return Some(format!("unix:{path}"));
    }
    if socket.starts_with('/') {
        return Some(format!("unix:{socket}"));
    }
    (socket.starts_with("inet:") || socket.starts_with("inet6:")).then(|| socket.to_owned())
}

fn prefix(word: &str, max: u8) -> Result<u8, String> {
    word.strip_prefix('/')
        .and_then(|n| n.parse::<u8>().ok())
        .filter(|n| *n <= max)
        .ok_or_else(|| format!("`{word}` is not a prefix length /0../{max}"))
}

fn define_list(st: &mut State, args: &[Token]) -> Result<(), String> {
    let [Token::Quoted(name), kind, Token::Open, items @ .., Token::Close] = args else {
        return Err("list: expected `list \"name\" TYPE { ... }`".into());
    };
    let kind = kind.keyword().unwrap_or_default();
    st.lists.insert(
        name.clone(),
        List {
            kind,
            items: items.to_vec(),
        },
    );
    Ok(())
}

/// The values an ACL may carry after its clauses.
#[derive(Default)]
struct Values {
    delay: Option<u64>,
    autowhite: Option<u64>,
    code: Option<String>,
    ecode: Option<String>,
    msg: Option<String>,
}

fn acl(
    st: &mut State,
    line: usize,
    keyword: &str,
    args: &[Token],
    whitelist_default: bool,
) -> Result<(), String> {
    let mut rest = args;
    if keyword != "acl" {
        if let [Token::Quoted(_), tail @ ..] = rest {
            rest = tail;
        }
    }
    let Some((action, tail)) = rest.split_first() else {
        return Err(format!("{keyword}: expected an action"));
    };
    let action = action.keyword().unwrap_or_default();
    let (clauses, values) = clauses_and_values(tail)?;
    let data_stage = keyword == "dacl";
    match action.as_str() {
        "whitelist" if data_stage => Err("dacl whitelist: a DATA-stage whitelist does not undo RCPT-stage greylisting".into()),
        "whitelist" => {
            let [clause] = clauses.as_slice() else {
                return Err(several(&clauses, "whitelist"));
            };
            whitelist(st, line, clause)
        }
        "blacklist" => {
            let [clause] = clauses.as_slice() else {
                return Err(several(&clauses, "blacklist"));
            };
            let action = reply_action(&values)?;
            blacklist(st, line, clause, &action, &values)
        }
        "greylist" if data_stage => Err("dacl greylist: mxsentry greylists at RCPT only".into()),
        "greylist" => match (clauses.as_slice(), values.delay, values.autowhite) {
            ([Clause::Default], delay, autowhite) => {
                if let Some(d) = delay {
                    st.delay = Some((d, line));
                }
                if let Some(a) = autowhite {
                    st.autowhite = Some((a, line));
                }
                Ok(())
            }
            (_, None, None) if !whitelist_default => Ok(()),
            (_, None, None) => Err("racl greylist with a later `racl whitelist default`: greylisting only selected mail cannot be expressed (mxsentry greylists all but its allow lists)".into()),
            _ => Err("racl greylist with its own delay/autowhite: per-rule delays cannot be expressed".into()),
        },
        "continue" => Err(format!("{keyword} continue: no equivalent")),
        other => Err(format!("{keyword}: unknown action `{other}`")),
    }
}

fn several(clauses: &[Clause], action: &str) -> String {
    if clauses.is_empty() {
        format!("racl {action} without a clause")
    } else {
        format!(
            "racl {action} combines {} clauses ({}): separate lists would match each alone, widening it",
            clauses.len(),
            clauses.iter().map(Clause::name).collect::<Vec<_>>().join(" AND ")
        )
    }
}

fn clauses_and_values(tokens: &[Token]) -> Result<(Vec<Clause>, Values), String> {
    let mut clauses = Vec::new();
    let mut values = Values::default();
    let mut i = 0;
    let next = |i: usize| tokens.get(i + 1).cloned();
    while i < tokens.len() {
        let word = tokens[i]
            .keyword()
            .ok_or_else(|| format!("unexpected `{}`", tokens[i].show()))?;
        let arg = next(i);
        let quoted = || match &arg {
            Some(Token::Quoted(q)) => Ok(q.clone()),
            _ => Err(format!("`{word}` expects a quoted string")),
        };
        let mut used = 2;
        match word.as_str() {
            "default" => {
                clauses.push(Clause::Default);
                used = 1;
            }
            "not" => return Err("negated clause (`not`): no equivalent".into()),
            "addr" | "domain" | "from" | "rcpt" => {
                let mut value = arg.ok_or_else(|| format!("`{word}` expects a value"))?;
                // `addr 192.0.2.0 /24` written apart
                if let (Token::Word(w), Some(Token::Word(mask))) = (&value, tokens.get(i + 2)) {
                    if word == "addr" && mask.starts_with('/') {
                        value = Token::Word(format!("{w}{mask}"));
                        used = 3;
                    }
                }
                clauses.push(Clause::Item {
                    kind: word.clone(),
                    value,
                });
            }
            "list" => clauses.push(Clause::List(quoted()?)),
            "dnsrbl" => clauses.push(Clause::DnsRbl(quoted()?)),
            "delay" => values.delay = Some(conf::duration(&word_arg(&arg, &word)?)?),
            "autowhite" => values.autowhite = Some(conf::duration(&word_arg(&arg, &word)?)?),
            "code" => values.code = Some(quoted()?),
            "ecode" => values.ecode = Some(quoted()?),
            "msg" => values.msg = Some(quoted()?),
            // Harmless here: logging and reporting options.
            "nolog" | "flushaddr" => used = 1,
            "report" | "addheader" | "subjtag" | "addfooter" | "maxpeek" => {}
            other => return Err(format!("clause `{other}`: no equivalent")),
        }
        i += used;
    }
    Ok((clauses, values))
}

fn word_arg(arg: &Option<Token>, word: &str) -> Result<String, String> {
    match arg {
        Some(Token::Word(w)) => Ok(w.clone()),
        _ => Err(format!("`{word}` expects a value")),
    }
}

/// The access-file action of a blacklist: `REJECT`, or `ERROR:` with its code/ecode/msg
/// (milter-greylist's defaults `551`, `5.7.1`, `Go away!` fill what is not given).
fn reply_action(v: &Values) -> Result<String, String> {
    if v.code.is_none() && v.ecode.is_none() && v.msg.is_none() {
        return Ok("REJECT".into());
    }
    let code = v.code.as_deref().unwrap_or("551");
    let ecode = v.ecode.as_deref().unwrap_or("5.7.1");
    let msg = v.msg.as_deref().unwrap_or("Go away!").replace('"', "'");
    let action = format!("ERROR:{ecode}:\"{code} {msg}\"");
    crate::checks::sender_rules::Action::parse(&action)
        .map_err(|e| format!("reply {code} {ecode} {msg:?}: {e}"))?;
    Ok(action)
}

fn whitelist(st: &mut State, line: usize, clause: &Clause) -> Result<(), String> {
    match clause {
        Clause::Default => Err("racl whitelist default: milter-greylist then greylists only what earlier racl greylist lines select; mxsentry greylists everyone but its allow lists".into()),
        Clause::Item { kind, value } => rules::allow(&mut st.rules, line, kind, value, st.extended),
        Clause::List(name) => {
            let list = st.lists.get(name).cloned().ok_or_else(|| format!("list \"{name}\" is not defined before"))?;
            let mut errors = Vec::new();
            for item in &list.items {
                if let Err(e) = rules::allow(&mut st.rules, line, &list.kind, item, st.extended) {
                    errors.push(e);
                }
            }
            list_errors(name, errors)
        }
        Clause::DnsRbl(name) => {
            let rbl = st.dnsrbls.get(name).cloned().ok_or_else(|| format!("dnsrbl \"{name}\" is not defined before"))?;
            rules::dns_zone(&mut st.rules, line, &rbl.zone, &rbl.answer, None, true)
        }
    }
}

fn blacklist(
    st: &mut State,
    line: usize,
    clause: &Clause,
    action: &str,
    v: &Values,
) -> Result<(), String> {
    match clause {
        Clause::Default => {
            Err("racl blacklist default: rejects all mail that no earlier rule matched".into())
        }
        Clause::Item { kind, value } => {
            rules::deny(&mut st.rules, line, kind, value, action, st.extended)
        }
        Clause::List(name) => {
            let list = st
                .lists
                .get(name)
                .cloned()
                .ok_or_else(|| format!("list \"{name}\" is not defined before"))?;
            let mut errors = Vec::new();
            for item in &list.items {
                if let Err(e) =
                    rules::deny(&mut st.rules, line, &list.kind, item, action, st.extended)
                {
                    errors.push(e);
                }
            }
            list_errors(name, errors)
        }
        Clause::DnsRbl(name) => {
            let rbl = st
                .dnsrbls
                .get(name)
                .cloned()
                .ok_or_else(|| format!("dnsrbl \"{name}\" is not defined before"))?;
            let message = if v.code.is_none() && v.msg.is_none() && v.ecode.is_none() {
                None
            } else {
                Some(format!(
                    "{} {} {}",
                    v.code.as_deref().unwrap_or("551"),
                    v.ecode.as_deref().unwrap_or("5.7.1"),
                    v.msg.as_deref().unwrap_or("Go away!")
                ))
            };
            rules::dns_zone(&mut st.rules, line, &rbl.zone, &rbl.answer, message, false)
        }
    }
}

fn list_errors(name: &str, errors: Vec<String>) -> Result<(), String> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "list \"{name}\": the other items are mapped, not these: {}",
            errors.join("; ")
        ))
    }
}

/// The fragment and the files.
fn render(st: State, out_dir: &Path) -> Mapping {
    let src = &st.source;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# milter.toml fragment from {src} (mxsentry config import milter-greylist)."
    );
    let _ = writeln!(
        t,
        "# Lines not mapped are listed on stderr. Order differs from milter-greylist's ACL:"
    );
    let _ = writeln!(
        t,
        "# mxsentry applies access-file rejects first, then the allow lists (greylisting only)."
    );
    let at = |l: Option<usize>| {
        l.map_or_else(
            || "milter-greylist's default".to_string(),
            |l| format!("{src}:{l}"),
        )
    };
    let delay = st.delay.map_or(MG_DELAY, |d| d.0);
    let timeout = st.timeout.map_or(MG_TIMEOUT, |d| d.0);
    let _ = writeln!(t, "[greylist]");
    let _ = writeln!(
        t,
        "delay = \"{}\"  # {}",
        conf::toml_duration(delay),
        at(st.delay.map(|d| d.1))
    );
    let _ = writeln!(
        t,
        "retry_window = \"{}\"  # {}: timeout {} counts from the end of the delay; ours from the first attempt",
        conf::toml_duration(delay + timeout),
        at(st.timeout.map(|d| d.1)),
        conf::toml_duration(timeout)
    );
    let _ = writeln!(
        t,
        "autowhite = \"{}\"  # {}",
        conf::toml_duration(st.autowhite.map_or(MG_AUTOWHITE, |d| d.0)),
        at(st.autowhite.map(|d| d.1))
    );
    match st.v4 {
        Some((p, l)) => {
            let _ = writeln!(t, "ipv4_prefix = {p}  # {src}:{l} subnetmatch");
        }
        None => {
            let _ = writeln!(t, "# ipv4_prefix: milter-greylist matched single addresses (/32) by default; mxsentry's /24 is kept");
        }
    }
    match st.v6 {
        Some((p, l)) => {
            let _ = writeln!(t, "ipv6_prefix = {p}  # {src}:{l} subnetmatch6");
        }
        None => {
            let _ = writeln!(t, "# ipv6_prefix: milter-greylist matched single addresses (/128) by default; mxsentry's /64 is kept");
        }
    }
    if let Some(l) = st.lazyaw {
        let _ = writeln!(t, "client_autowhite_after = 1  # {src}:{l} lazyaw: one passed triplet whitelists the client");
    }
    if let Some(l) = st.quiet {
        let _ = writeln!(
            t,
            "reply = \"450 4.7.1 Greylisted, please try again later\"  # {src}:{l} quiet"
        );
    }
    let files = rules::files(&st.rules, src);
    for (key, name) in [
        ("allow_client_files", rules::CLIENTS),
        ("allow_sender_files", rules::SENDERS),
        ("allow_recipient_files", rules::RECIPIENTS),
    ] {
        if files.iter().any(|f| f.name == name) {
            let _ = writeln!(
                t,
                "{key} = [{}]",
                toml_str(&out_dir.join(name).display().to_string())
            );
        }
    }
    if let Some(l) = st.noauth {
        let _ = writeln!(t, "\n[trusted]\nauthenticated = false  # {src}:{l} noauth");
    }
    let has_access = files.iter().any(|f| f.name == rules::ACCESS);
    if has_access || !st.rules.sender_regex.is_empty() {
        let _ = writeln!(t, "\n[sender_rules]");
        if has_access {
            let _ = writeln!(
                t,
                "access_file = {}",
                toml_str(&out_dir.join(rules::ACCESS).display().to_string())
            );
        }
        for (pattern, action, line) in &st.rules.sender_regex {
            let _ = writeln!(
                t,
                "[[sender_rules.regex]]  # {src}:{line}\npattern = {}\naction = {}",
                toml_str(pattern),
                toml_str(action)
            );
        }
    }
    for (table, keys, line) in &st.rules.zones {
        let _ = write!(t, "\n[[{table}]]  # {src}:{line}\n{keys}");
    }
    Mapping {
        toml: t,
        files,
        unmapped: st.unmapped,
    }
}

/// A TOML basic string.
pub fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

#[cfg(test)]
#[path = "conf_map_tests.rs"]
mod tests;
