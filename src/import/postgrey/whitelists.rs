//! `mxsentry config import postgrey`: postgrey's whitelist files and settings as mxsentry's
//! greylist allow lists and a `[greylist]` fragment.
//!
//! Each line is read as postgrey 1.37 reads it (`read_clients_whitelists`,
//! `read_recipients_whitelists`): everything from `#` on is a comment, blanks around are
//! dropped. Clients: `/regex/` (searched in the client name), an IPv4 address or CIDR, a
//! partial IPv4 address (`a.b.c` is a /24; postgrey also makes `a.b` a /24 of `a.b.0.0`,
//! kept as it behaved), an IPv6 address or CIDR, else a host name (that name or any name
//! ending in `.name`). Recipients: `/regex/` (searched in the address), `user@domain`,
//! `user@`, `@domain`, `domain` (that domain and its subdomains). Every line that has no
//! faithful equivalent is reported as `FILE:LINE: reason` and left out.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;

/// The allow-list files `config import postgrey` writes into `--out-dir`.
pub const CLIENTS_FILE: &str = "greylist-allow-clients";
pub const RECIPIENTS_FILE: &str = "greylist-allow-recipients";

/// postgrey's default whitelist files, read when no file is named.
pub const DEFAULT_CLIENT_FILES: [&str; 2] = [
    "/etc/postgrey/whitelist_clients",
    "/etc/postgrey/whitelist_clients.local",
];
pub const DEFAULT_RECIPIENT_FILES: [&str; 2] = [
    "/etc/postgrey/whitelist_recipients",
    "/etc/postgrey/whitelist_recipients.local",
];

/// The lines of an allow-list file being built, and the input lines that did not map.
#[derive(Debug, Default)]
pub struct Mapping {
    pub lines: Vec<String>,
    pub unmapped: Vec<String>,
}

/// A line of a postgrey whitelist file as postgrey sees it: comment and blanks removed.
fn content(line: &str) -> &str {
    line.split('#').next().unwrap_or("").trim()
}

/// `/regex/` (postgrey: `^\/(\S+)\/$`): the pattern, if the line is one.
fn regex_of(line: &str) -> Option<&str> {
    let inner = line.strip_prefix('/')?.strip_suffix('/')?;
    (!inner.is_empty() && !inner.contains(char::is_whitespace)).then_some(inner)
}

/// Checks that mxsentry's regex engine (Rust `regex`) takes what Perl took.
fn check_regex(pattern: &str) -> Result<(), String> {
    regex::RegexBuilder::new(pattern)
        .case_insensitive(true)
        .build()
        .map(|_| ())
        .map_err(|e| {
            let first = e.to_string();
            let last = first.lines().last().unwrap_or("").trim().to_owned();
            format!("a regex mxsentry's engine refuses ({last})")
        })
}

fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .split('.')
            .all(|l| l.bytes().all(|b| b.is_ascii_digit()))
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn all_digits_dotted(line: &str, parts: usize) -> bool {
    let octets: Vec<&str> = line.split('.').collect();
    octets.len() == parts
        && octets
            .iter()
            .all(|o| (1..=3).contains(&o.len()) && o.bytes().all(|b| b.is_ascii_digit()))
}

/// One postgrey client whitelist line as allow-list lines (one).
pub fn map_client_line(line: &str) -> Result<Vec<String>, String> {
    map_client(line).map(|l| vec![l])
}

fn map_client(line: &str) -> Result<String, String> {
    if let Some(pattern) = regex_of(line) {
        check_regex(pattern)?;
        return Ok(line.to_owned());
    }
    let (addr, mask) = match line.split_once('/') {
        Some((a, m)) => (a, Some(m)),
        None => (line, None),
    };
    let is_ipv4 = all_digits_dotted(addr, 4);
    let is_ipv6 = addr.contains(':');
    if is_ipv4 || is_ipv6 {
        let text = match mask {
            Some(m) => format!("{addr}/{m}"),
            None => {
                return addr
                    .parse::<IpAddr>()
                    .map(|ip| ip.to_string())
                    .map_err(|_| format!("{line:?} is not an IP address"))
            }
        };
        return text
            .parse::<IpNet>()
            .map(|net| net.trunc().to_string())
            .map_err(|_| format!("{line:?} is not an IP network"));
    }
    if mask.is_none() && (all_digits_dotted(line, 3) || all_digits_dotted(line, 2)) {
        // postgrey: NetAddr::IP->new($_, 24) for both forms (`10.1` is 10.1.0.0/24).
        let padded = if all_digits_dotted(line, 3) {
            format!("{line}.0/24")
        } else {
            format!("{line}.0.0/24")
        };
        return padded
            .parse::<IpNet>()
            .map(|net| net.trunc().to_string())
            .map_err(|_| format!("{line:?} is not a partial IPv4 address"));
    }
    if line.contains(char::is_whitespace) {
        return Err("doesn't look like a host name (postgrey skips it too)".to_owned());
    }
    if !is_host_name(line) {
        return Err(format!(
            "{line:?} is not a host name (letters, digits, '-', '_' and dots between labels; \
             not all digits)"
        ));
    }
    Ok(line.to_ascii_lowercase())
}

/// One postgrey recipient whitelist line as allow-list lines.
pub fn map_recipient_line(line: &str) -> Result<Vec<String>, String> {
    if let Some(pattern) = regex_of(line) {
        // Searched in the address by both.
        check_regex(pattern)?;
        return Ok(vec![line.to_owned()]);
    }
    if line.contains(char::is_whitespace) {
        return Err("doesn't look like an address (postgrey skips it too)".to_owned());
    }
    let lower = line.to_lowercase();
    // postgrey's `user@domain` and `user@` also match `user+extension@...`: a regex keeps that.
    let with_extension = |user: &str, domain: &str| {
        let domain = if domain.is_empty() {
            String::new()
        } else {
            format!("{}$", regex::escape(domain))
        };
        format!("/^{}\\+[^@]+@{domain}/", regex::escape(user))
    };
    match lower.split_once('@') {
        Some((_, domain)) if domain.contains('@') => {
            Err("more than one '@': not an address".to_owned())
        }
        Some((user, domain)) if user.is_empty() && domain.is_empty() => {
            Err("a lone '@' names no address".to_owned())
        }
        Some((_, domain)) if !domain.is_empty() && !is_host_name(domain) => {
            Err(format!("{domain:?} is not a domain name"))
        }
        Some(("", _)) => Ok(vec![lower.clone()]),
        Some((user, domain)) => Ok(vec![lower.clone(), with_extension(user, domain)]),
        None if is_host_name(&lower) => Ok(vec![lower]),
        None => Err(format!("{line:?} is not a domain name")),
    }
}

/// How one kind of file maps a line.
pub type LineMapper = fn(&str) -> Result<Vec<String>, String>;

/// Maps the lines of one postgrey file (`name` as reported) into `m`.
pub fn map_file(name: &str, text: &str, map_line: LineMapper, m: &mut Mapping) {
    m.lines.push(format!("# from {name}"));
    for (index, raw) in text.lines().enumerate() {
        let line = content(raw);
        if line.is_empty() {
            continue;
        }
        match map_line(line) {
            Ok(mapped) => m.lines.extend(mapped),
            Err(reason) => m.unmapped.push(format!("{name}:{}: {reason}", index + 1)),
        }
    }
}

/// postgrey's command-line settings (`None`: not given, postgrey's default applies).
#[derive(Debug, Default, Clone)]
pub struct PostgreyFlags {
    /// `--delay=N` seconds (default 300).
    pub delay: Option<u64>,
    /// `--max-age=N` days (default 35).
    pub max_age: Option<u64>,
    /// `--retry-window=N` days or `Nh` hours (default 2 days).
    pub retry_window: Option<String>,
    /// `--auto-whitelist-clients=N` (default 5).
    pub auto_whitelist_clients: Option<u32>,
    /// `--ipv4cidr=N` (default 24).
    pub ipv4cidr: Option<u8>,
    /// `--ipv6cidr=N` (default 64).
    pub ipv6cidr: Option<u8>,
    /// `--lookup-by-host`: the whole address is the key.
    pub lookup_by_host: bool,
}

/// postgrey's `--retry-window` (`N` days or `Nh` hours) in seconds.
pub fn retry_window_secs(value: &str) -> Result<u64, String> {
    let v = value.trim();
    let (number, unit) = match v.strip_suffix(['h', 'H']) {
        Some(hours) => (hours, 3_600),
        None => (v, 86_400),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| {
            format!("--retry-window {value:?}: expected a number of days or hours (\"2\", \"36h\")")
        })
}

/// The `[greylist]` fragment: postgrey's settings (its defaults where a flag is absent), the
/// network keying imported entries need, and the allow-list files written.
pub fn fragment(
    flags: &PostgreyFlags,
    client_file: Option<&Path>,
    recipient_file: Option<&Path>,
) -> Result<String, String> {
    let text = super::duration_text;
    let given = |set: bool, flag: &str| {
        if set {
            format!("postgrey {flag}")
        } else {
            format!("postgrey's default {flag}")
        }
    };
    let retry = match &flags.retry_window {
        Some(v) => retry_window_secs(v)?,
        None => 2 * 86_400,
    };
    let (v4, v6) = if flags.lookup_by_host {
        (32, 128)
    } else {
        (flags.ipv4cidr.unwrap_or(24), flags.ipv6cidr.unwrap_or(64))
    };
    if v4 > 32 || v6 > 128 {
        return Err(format!("--ipv4cidr {v4} / --ipv6cidr {v6}: too long"));
    }
    let mut out = String::from(
        "# From mxsentry config import postgrey: merge into milter.toml's [greylist].\n[greylist]\n",
    );
    let mut row = |setting: String, why: String| {
        let _ = writeln!(out, "{setting:<40} # {why}");
    };
    let delay = flags.delay.unwrap_or(300);
    row(
        format!("delay = \"{}\"", text(delay)),
        given(flags.delay.is_some(), &format!("--delay={delay}")),
    );
    let max_age = flags.max_age.unwrap_or(35);
    row(
        format!("autowhite = \"{}\"", text(max_age.saturating_mul(86_400))),
        given(flags.max_age.is_some(), &format!("--max-age={max_age}")),
    );
    row(
        format!("retry_window = \"{}\"", text(retry)),
        given(flags.retry_window.is_some(), "--retry-window"),
    );
    let awl = flags.auto_whitelist_clients.unwrap_or(5);
    row(
        format!("client_autowhite_after = {awl}"),
        given(
            flags.auto_whitelist_clients.is_some(),
            &format!("--auto-whitelist-clients={awl}"),
        ),
    );
    let by_host = flags.lookup_by_host;
    row(
        format!("ipv4_prefix = {v4}"),
        given(
            by_host || flags.ipv4cidr.is_some(),
            if by_host {
                "--lookup-by-host"
            } else {
                "--ipv4cidr"
            },
        ),
    );
    row(
        format!("ipv6_prefix = {v6}"),
        given(
            by_host || flags.ipv6cidr.is_some(),
            if by_host {
                "--lookup-by-host"
            } else {
                "--ipv6cidr"
            },
        ),
    );
    row(
        "pool_by_rdns = false".to_owned(),
        "postgrey keys clients by network only: imported entries are found only so".to_owned(),
    );
    let list = |p: &Path| format!("[{:?}]", p.display().to_string());
    if let Some(p) = client_file {
        row(
            format!("allow_client_files = {}", list(p)),
            "postgrey --whitelist-clients".into(),
        );
    }
    if let Some(p) = recipient_file {
        row(
            format!("allow_recipient_files = {}", list(p)),
            "postgrey --whitelist-recipients".into(),
        );
    }
    Ok(out)
}

/// Everything `config import postgrey` takes.
#[derive(Debug, Default, Clone)]
pub struct ConfigImport {
    /// Client whitelist files; none: postgrey's defaults that exist.
    pub client_files: Vec<PathBuf>,
    /// Recipient whitelist files; none: postgrey's defaults that exist.
    pub recipient_files: Vec<PathBuf>,
    pub out_dir: PathBuf,
    pub force: bool,
    pub flags: PostgreyFlags,
}

/// What the command prints and its exit code: 0 all mapped, 1 some lines not mapped (the
/// output is still written), 2 unreadable input or nothing written.
pub struct Outcome {
    pub stdout: String,
    pub stderr: String,
    pub code: u8,
}

fn fail(message: String) -> Outcome {
    Outcome {
        stdout: String::new(),
        stderr: format!("{message}\n"),
        code: 2,
    }
}

/// Reads `files`, or the defaults that exist when none is named; `Err` for a named file
/// that cannot be read.
fn read_all(files: &[PathBuf], defaults: &[&str]) -> Result<Vec<(PathBuf, String)>, String> {
    if files.is_empty() {
        return Ok(defaults
            .iter()
            .filter_map(|d| Some((PathBuf::from(d), std::fs::read_to_string(d).ok()?)))
            .collect());
    }
    files
        .iter()
        .map(|f| {
            std::fs::read_to_string(f)
                .map(|t| (f.clone(), t))
                .map_err(|e| format!("{}: {e}", f.display()))
        })
        .collect()
}

/// `mxsentry config import postgrey`.
pub fn run(args: &ConfigImport) -> Outcome {
    let clients = match read_all(&args.client_files, &DEFAULT_CLIENT_FILES) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let recipients = match read_all(&args.recipient_files, &DEFAULT_RECIPIENT_FILES) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let out_dir = match std::fs::canonicalize(&args.out_dir) {
        Ok(d) => d,
        Err(e) => return fail(format!("--out-dir {}: {e}", args.out_dir.display())),
    };
    let mut writes: Vec<(PathBuf, Mapping)> = Vec::new();
    for (inputs, name, map_line) in [
        (&clients, CLIENTS_FILE, map_client_line as LineMapper),
        (&recipients, RECIPIENTS_FILE, map_recipient_line),
    ] {
        if inputs.is_empty() {
            continue;
        }
        let mut m = Mapping::default();
        m.lines
            .push("# Written by mxsentry config import postgrey.".to_owned());
        for (path, text) in inputs.iter() {
            map_file(&path.display().to_string(), text, map_line, &mut m);
        }
        writes.push((out_dir.join(name), m));
    }
    let client_path = writes
        .iter()
        .find(|(p, _)| p.ends_with(CLIENTS_FILE))
        .map(|(p, _)| p.as_path());
    let recipient_path = writes
        .iter()
        .find(|(p, _)| p.ends_with(RECIPIENTS_FILE))
        .map(|(p, _)| p.as_path());
    let fragment = match fragment(&args.flags, client_path, recipient_path) {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    if !args.force {
        if let Some((p, _)) = writes.iter().find(|(p, _)| p.exists()) {
            return fail(format!(
                "{} exists: not overwritten (--force replaces it)",
                p.display()
            ));
        }
    }
    let mut stderr = String::new();
    let mut unmapped = 0;
    for (path, m) in &writes {
        let mut body = m.lines.join("\n");
        body.push('\n');
        if let Err(e) = std::fs::write(path, body) {
            return fail(format!("cannot write {}: {e}", path.display()));
        }
        for line in &m.unmapped {
            let _ = writeln!(stderr, "{line}");
        }
        unmapped += m.unmapped.len();
        let _ = writeln!(
            stderr,
            "wrote {} ({} entries)",
            path.display(),
            m.lines.iter().filter(|l| !l.starts_with('#')).count()
        );
    }
    if unmapped > 0 {
        let _ = writeln!(stderr, "{unmapped} lines not mapped (listed above)");
    }
    Outcome {
        stdout: fragment,
        stderr,
        code: u8::from(unmapped > 0),
    }
}

#[cfg(test)]
#[path = "whitelists_tests.rs"]
mod tests;
