//! `milterload`: plays the MTA side of the milter protocol (v6) against a filter and reports
//! sessions per second, latency per stage and per session, errors and replies by kind, and the
//! CPU time the generator itself used (it competes with the filter for the same cores).
//!
//! It honours what the filter negotiated, as Postfix and sendmail do: stages negotiated away
//! are not sent (their macros still are, as Postfix does), no-reply stages are not awaited.
//! `--mta postfix` (default) also copies Postfix's write buffering: commands whose reply is not
//! awaited stay in the buffer until the next command that is awaited (Postfix's VSTREAM flushes
//! its write buffer only before it reads), plus one flush after the DATA stage, where smtpd
//! hands the milter connection to the cleanup server; `--mta sendmail` writes every command at
//! once. `--nagle` leaves TCP_NODELAY off, as Postfix does on its milter sockets.
//!
//! ```text
//! milterload --target inet:8890@127.0.0.1 --concurrency 16 --duration 5 [--json]
//! milterload --target ... --gap-ms 20 --clients clients.txt       # MTA pauses, client list
//! milterload --target ... --hold 10000 --hold-secs 30              # idle open connections
//! milterload --dns-zone zone.txt --dns-addr-file dns.addr --dns-only   # loopback DNS server
//! ```
//!
//! A session: [TCP connect + OPTNEG], MACRO+CONNECT, (gap) MACRO+HELO, (gap) MACRO+MAIL,
//! ((rcpt gap) MACRO+RCPT)×N, MACRO+DATA, HEADER×H, MACRO+EOH, BODY, MACRO+EOM, then QUIT (or
//! QUIT_NC with `--reuse`). `added` = time from issuing CONNECT to the last RCPT reply, minus
//! the time the generator spent in the MTA gaps: the latency the filter adds before RCPT.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use clap::{Parser, ValueEnum};
use mxsentry::config::ListenSpec;
use mxsentry::protocol::command::{encode_command, ClientAddress, Command, MacroPairs, NulStrings};
use mxsentry::protocol::frame::split_frame;
use mxsentry::protocol::negotiate::flags;
use mxsentry::protocol::reply::{decode_reply, Reply};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// `println!` that ignores a closed stdout (e.g. piped into `head`) instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

#[derive(Parser, Clone)]
#[command(about = "Milter load generator (MTA side of the milter protocol v6)")]
struct Args {
    /// Filter address in milter form: inet:PORT@HOST, inet6:PORT@HOST, unix:/path.
    #[arg(long, default_value = "inet:8890@127.0.0.1")]
    target: String,
    /// Parallel MTA connections.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Total sessions (ignored with --duration).
    #[arg(long, default_value_t = 10000)]
    sessions: u64,
    /// Run for this many seconds instead of a number of sessions.
    #[arg(long)]
    duration: Option<f64>,
    /// Reuse each connection for the next session (SMFIC_QUIT_NC), as Postfix can.
    #[arg(long)]
    reuse: bool,
    /// Recipients per message.
    #[arg(long, default_value_t = 1)]
    rcpts: usize,
    /// Envelope sender; `{n}` is replaced by the session number.
    #[arg(long, default_value = "user@sender.example")]
    from: String,
    /// A sender never seen before in every session (prefixes the local part with a run id and
    /// the session number): each session creates a new greylisting triplet.
    #[arg(long)]
    unique_from: bool,
    /// Recipient; `{r}` is the recipient index, `{n}` the session number.
    #[arg(long, default_value = "rcpt{r}@example.org")]
    to: String,
    /// Client list, one per line: `IP [CONNECT-HOSTNAME [HELO]]` (IPv4 or IPv6; the hostname
    /// defaults to `[IP]`, i.e. unverified, as Postfix sends it). Sessions take them in turn.
    /// Default: 192.0.2.1-200 and 2001:db8::1-200, alternating.
    #[arg(long)]
    clients: Option<PathBuf>,
    /// Start this many entries into the client list (so runs can use clients not seen yet).
    #[arg(long, default_value_t = 0)]
    client_offset: u64,
    /// HELO name for clients whose line gives none.
    #[arg(long, default_value = "client.example")]
    helo: String,
    /// Header fields per message (one SMFIC_HEADER each).
    #[arg(long, default_value_t = 10)]
    headers: usize,
    /// Body size in bytes (sent in chunks of at most 65535 bytes, as MTAs do).
    #[arg(long, default_value_t = 4096)]
    body_bytes: usize,
    /// Send no SMFIC_MACRO frames (by default Postfix's default macros are sent per stage, or
    /// the ones the filter asked for in its OPTNEG reply).
    #[arg(long)]
    no_macros: bool,
    /// Write behaviour: `postfix` keeps no-reply commands in the buffer until the next awaited
    /// command; `sendmail` writes every command as it is issued.
    #[arg(long, value_enum, default_value_t = Mta::Postfix)]
    mta: Mta,
    /// Leave Nagle's algorithm on (no TCP_NODELAY), as Postfix does on its milter sockets: with
    /// `--mta postfix` a filter that answers neither DATA nor EOH then waits for its own
    /// delayed ACK (~40 ms on Linux) before the EOM arrives.
    #[arg(long)]
    nagle: bool,
    /// MTA pause in milliseconds before HELO and before MAIL (the SMTP client's round trips).
    #[arg(long, default_value_t = 0.0)]
    gap_ms: f64,
    /// MTA pause in milliseconds before each RCPT (a client without PIPELINING).
    #[arg(long, default_value_t = 0.0)]
    gap_rcpt_ms: f64,
    /// Threads of the generator's runtime (1: a single-threaded runtime).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Run id used by --unique-from (default: letters derived from the pid and the clock; use
    /// letters only, greylisting folds tokens with digits).
    #[arg(long)]
    run_id: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Open this many MTA connections (OPTNEG, CONNECT, HELO), print `holding N`, keep them
    /// idle for --hold-secs, then close them. No sessions are run.
    #[arg(long)]
    hold: Option<usize>,
    /// How long --hold keeps the connections open (SIGTERM ends it earlier).
    #[arg(long, default_value_t = 30.0)]
    hold_secs: f64,
    /// Serve this zone (mxsentry::testing::TestDnsServer format, `DELAY` supported) on
    /// 127.0.0.1:random-port, UDP and TCP, for as long as this process runs.
    #[arg(long)]
    dns_zone: Option<PathBuf>,
    /// Write the DNS server's `IP:PORT` to this file once it listens.
    #[arg(long)]
    dns_addr_file: Option<PathBuf>,
    /// Only serve DNS (with --dns-zone) until SIGTERM/SIGINT; SIGUSR1 prints the query count.
    #[arg(long)]
    dns_only: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mta {
    Postfix,
    Sendmail,
}

// ---------------------------------------------------------------------------------------------
// Stages and statistics

/// Where latencies are recorded: reply latency per awaited stage, then derived figures.
#[derive(Clone, Copy)]
enum Stat {
    Optneg,
    Connect,
    Helo,
    Mail,
    Rcpt,
    Data,
    Header,
    Eoh,
    Body,
    Eom,
    Session,
    ConnectToRcpt,
    Added,
}
const NSTATS: usize = 13;
const STAT_NAMES: [&str; NSTATS] = [
    "optneg",
    "connect",
    "helo",
    "mail",
    "rcpt",
    "data",
    "header",
    "eoh",
    "body",
    "eom",
    "session",
    "connect_to_rcpt",
    "added",
];

#[derive(Default)]
struct Stats {
    lat_us: [Vec<u32>; NSTATS],
    sessions: u64,
    errors: u64,
    round_trips: u64,
    writes: u64,
    replies: BTreeMap<String, u64>,
    error_kinds: BTreeMap<String, u64>,
    protocol: Option<u32>,
}

impl Stats {
    fn record(&mut self, stat: Stat, d: Duration) {
        self.lat_us[stat as usize].push(d.as_micros().min(u32::MAX as u128) as u32);
    }

    fn merge(&mut self, other: Stats) {
        for (a, b) in self.lat_us.iter_mut().zip(other.lat_us) {
            a.extend(b);
        }
        self.sessions += other.sessions;
        self.errors += other.errors;
        self.round_trips += other.round_trips;
        self.writes += other.writes;
        for (k, v) in other.replies {
            *self.replies.entry(k).or_default() += v;
        }
        for (k, v) in other.error_kinds {
            *self.error_kinds.entry(k).or_default() += v;
        }
        self.protocol = self.protocol.or(other.protocol);
    }
}

// ---------------------------------------------------------------------------------------------
// Connection

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn open(target: &ListenSpec, nagle: bool) -> std::io::Result<Box<dyn Io>> {
    Ok(match target {
        ListenSpec::Inet(addr) => {
            let s = tokio::net::TcpStream::connect(addr).await?;
            s.set_nodelay(!nagle)?;
            Box::new(s)
        }
        ListenSpec::Unix(p) => Box::new(tokio::net::UnixStream::connect(p).await?),
    })
}

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

struct Conn {
    io: Box<dyn Io>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    protocol: u32,
    /// Macro names the filter asked for, by SMFIM_* stage (empty: Postfix's defaults).
    macro_lists: Vec<(u32, Vec<Bytes>)>,
    mta: Mta,
}

impl Conn {
    async fn flush(&mut self, stats: &mut Stats) -> std::io::Result<()> {
        if !self.wbuf.is_empty() {
            self.io.write_all(&self.wbuf).await?;
            self.wbuf.clear();
            stats.writes += 1;
        }
        Ok(())
    }

    async fn recv(&mut self) -> std::io::Result<Reply> {
        loop {
            if let Some(f) =
                split_frame(&mut self.rbuf, 1 << 20).map_err(|e| invalid(e.to_string()))?
            {
                return decode_reply(f).map_err(|e| invalid(e.to_string()));
            }
            if self.rbuf.capacity() - self.rbuf.len() < 512 {
                self.rbuf.reserve(4096);
            }
            if self.io.read_buf(&mut self.rbuf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Issues one stage command: not sent if negotiated away, not awaited if no-reply.
    /// Returns the reply when one was awaited; records its latency under `stat`.
    async fn issue(
        &mut self,
        cmd: &Command,
        skip: u32,
        nr: u32,
        stat: Stat,
        stats: &mut Stats,
    ) -> std::io::Result<Option<Reply>> {
        if self.protocol & skip != 0 {
            if self.mta == Mta::Sendmail {
                self.flush(stats).await?;
            }
            return Ok(None);
        }
        encode_command(cmd, &mut self.wbuf);
        if self.protocol & nr != 0 {
            if self.mta == Mta::Sendmail {
                self.flush(stats).await?;
            }
            return Ok(None);
        }
        let t = Instant::now();
        self.flush(stats).await?;
        let r = self.recv_final().await?;
        stats.round_trips += 1;
        stats.record(stat, t.elapsed());
        Ok(Some(r))
    }

    /// Reads replies until a final one (skipping progress and header edits, as at EOM).
    async fn recv_final(&mut self) -> std::io::Result<Reply> {
        loop {
            let r = self.recv().await?;
            if !matches!(
                r,
                Reply::AddHeader { .. }
                    | Reply::InsertHeader { .. }
                    | Reply::ChangeHeader { .. }
                    | Reply::Progress
                    | Reply::Quarantine { .. }
            ) {
                return Ok(r);
            }
        }
    }

    fn push(&mut self, cmd: &Command) {
        encode_command(cmd, &mut self.wbuf);
    }
}

/// Postfix 3.7's default macro lists per stage (milter_*_macros).
fn default_macro_names(stage: u32) -> &'static [&'static str] {
    match stage {
        flags::SMFIM_CONNECT => &["j", "{daemon_name}", "{daemon_addr}", "v", "_"],
        flags::SMFIM_HELO => &[
            "{tls_version}",
            "{cipher}",
            "{cipher_bits}",
            "{cert_subject}",
            "{cert_issuer}",
        ],
        flags::SMFIM_ENVFROM => &[
            "i",
            "{auth_type}",
            "{auth_authen}",
            "{auth_author}",
            "{mail_addr}",
            "{mail_host}",
            "{mail_mailer}",
        ],
        flags::SMFIM_ENVRCPT => &["i", "{rcpt_addr}", "{rcpt_host}", "{rcpt_mailer}"],
        flags::SMFIM_DATA | flags::SMFIM_EOH | flags::SMFIM_EOM => &["i"],
        _ => &[],
    }
}

async fn negotiate(
    target: &ListenSpec,
    mta: Mta,
    nagle: bool,
    stats: &mut Stats,
) -> std::io::Result<Conn> {
    let mut c = Conn {
        io: open(target, nagle).await?,
        rbuf: BytesMut::with_capacity(4096),
        wbuf: BytesMut::with_capacity(8192),
        protocol: 0,
        macro_lists: Vec::new(),
        mta,
    };
    let t = Instant::now();
    c.push(&Command::OptNeg {
        version: 6,
        actions: flags::SMFI_CURR_ACTS,
        protocol: flags::SMFI_CURR_PROT,
    });
    c.flush(stats).await?;
    match c.recv().await? {
        Reply::OptNeg {
            protocol, macros, ..
        } => {
            c.protocol = protocol;
            c.macro_lists = macros
                .into_iter()
                .map(|(stage, names)| {
                    let list = names
                        .split(|b| *b == b' ' || *b == b',')
                        .filter(|n| !n.is_empty())
                        .map(Bytes::copy_from_slice)
                        .collect();
                    (stage, list)
                })
                .collect();
        }
        other => return Err(invalid(format!("unexpected OPTNEG reply {other:?}"))),
    }
    stats.round_trips += 1;
    stats.record(Stat::Optneg, t.elapsed());
    stats.protocol = Some(c.protocol);
    Ok(c)
}

// ---------------------------------------------------------------------------------------------
// Sessions

#[derive(Clone)]
struct Client {
    ip: IpAddr,
    hostname: Bytes,
    helo: Bytes,
}

/// Everything sessions share.
struct Ctx {
    args: Args,
    target: ListenSpec,
    clients: Vec<Client>,
    headers: Vec<(Bytes, Bytes)>,
    body: Vec<Bytes>,
    run_id: String,
    next: AtomicU64,
    deadline: Option<Instant>,
}

impl Ctx {
    /// Claims the next session number, or None when the run is over.
    fn claim(&self) -> Option<u64> {
        if let Some(d) = self.deadline {
            if Instant::now() >= d {
                return None;
            }
            return Some(self.next.fetch_add(1, Ordering::Relaxed));
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        (n < self.args.sessions).then_some(n)
    }
}

/// Per-session values of the macros the generator knows.
fn macro_value(name: &[u8], s: &SessionVars<'_>) -> Option<Vec<u8>> {
    let bare = match name {
        [b'{', inner @ .., b'}'] => inner,
        other => other,
    };
    let ip = s.client.ip.to_string();
    let v: Vec<u8> = match bare {
        b"j" => b"mx.bench.test".to_vec(),
        b"daemon_name" => b"smtpd".to_vec(),
        b"daemon_addr" | b"if_addr" => b"127.0.0.1".to_vec(),
        b"v" => b"Postfix 3.7.11".to_vec(),
        b"_" => {
            let host = String::from_utf8_lossy(&s.client.hostname);
            let name = if host.starts_with('[') {
                "unknown"
            } else {
                &host
            };
            format!("{name} [{ip}]").into_bytes()
        }
        b"client_addr" => ip.into_bytes(),
        b"client_name" => s.client.hostname.to_vec(),
        b"client_ptr" => s.client.hostname.to_vec(),
        b"client_resolve" => {
            if s.client.hostname.starts_with(b"[") {
                b"FAIL".to_vec()
            } else {
                b"OK".to_vec()
            }
        }
        b"i" => s.queue_id.as_bytes().to_vec(),
        b"mail_addr" => s.from.as_bytes().to_vec(),
        b"mail_host" => s.from.rsplit('@').next().unwrap_or("").as_bytes().to_vec(),
        b"mail_mailer" | b"rcpt_mailer" => b"smtp".to_vec(),
        b"rcpt_addr" => s.rcpt.as_bytes().to_vec(),
        b"rcpt_host" => s.rcpt.rsplit('@').next().unwrap_or("").as_bytes().to_vec(),
        _ => return None, // {auth_*} (not authenticated), {tls_*}, {cert_*}: undefined
    };
    Some(v)
}

struct SessionVars<'a> {
    client: &'a Client,
    queue_id: String,
    from: String,
    rcpt: String,
}

/// Appends the MACRO frame for `stage` (SMFIM_*) unless no macro has a value.
fn push_macros(c: &mut Conn, code: u8, stage: u32, vars: &SessionVars<'_>, no_macros: bool) {
    if no_macros {
        return;
    }
    let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let asked = c.macro_lists.iter().find(|(s, _)| *s == stage);
    match asked {
        Some((_, names)) => {
            for n in names {
                if let Some(v) = macro_value(n, vars) {
                    pairs.push((n.to_vec(), v));
                }
            }
        }
        None => {
            for n in default_macro_names(stage) {
                if let Some(v) = macro_value(n.as_bytes(), vars) {
                    pairs.push((n.as_bytes().to_vec(), v));
                }
            }
        }
    }
    if pairs.is_empty() {
        return;
    }
    let refs: Vec<(&[u8], &[u8])> = pairs
        .iter()
        .map(|(k, v)| (k.as_slice(), v.as_slice()))
        .collect();
    c.push(&Command::Macro {
        stage: code,
        pairs: MacroPairs::from_pairs(&refs),
    });
}

/// `n` in base 26, `a`..`z`: a unique local-part token without digits.
fn letters(mut n: u64) -> String {
    let mut out = Vec::new();
    loop {
        out.push(b'a' + (n % 26) as u8);
        n /= 26;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ASCII")
}

fn reply_kind(r: &Reply) -> String {
    match r {
        Reply::ReplyCode { text } => format!(
            "replycode {}",
            String::from_utf8_lossy(&text[..3.min(text.len())])
        ),
        other => other.name().to_ascii_lowercase(),
    }
}

/// What a session ended with.
enum End {
    /// The message went through to EOM (or was accepted early): the final reply's kind.
    Verdict(String),
}

struct Timing {
    connect_at: Option<Instant>,
    rcpt_done_at: Option<Instant>,
    slept: Duration,
}

async fn gap(ms: f64, timing: &mut Timing) {
    if ms > 0.0 {
        let t = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(ms / 1000.0)).await;
        if timing.connect_at.is_some() && timing.rcpt_done_at.is_none() {
            timing.slept += t.elapsed();
        }
    }
}

/// One SMTP session on an open, negotiated connection.
async fn session(
    c: &mut Conn,
    n: u64,
    ctx: &Ctx,
    stats: &mut Stats,
    timing: &mut Timing,
) -> std::io::Result<End> {
    use flags::*;
    let args = &ctx.args;
    let client = &ctx.clients[((n + args.client_offset) % ctx.clients.len() as u64) as usize];
    let mut from = args.from.replace("{n}", &n.to_string());
    if args.unique_from {
        // Letters only: greylisting masks digit-bearing tokens as per-message noise
        // (`bounce-12345`), which would fold these senders into one triplet.
        from = format!("{}.{}.{from}", ctx.run_id, letters(n));
    }
    let mut vars = SessionVars {
        client,
        queue_id: format!("4B{:010X}", n),
        from,
        rcpt: String::new(),
    };

    // CONNECT
    push_macros(c, b'C', SMFIM_CONNECT, &vars, args.no_macros);
    timing.connect_at = Some(Instant::now());
    let connect = Command::Connect {
        hostname: client.hostname.clone(),
        address: ClientAddress::Inet {
            ip: client.ip,
            port: 40000 + (n % 20000) as u16,
        },
    };
    if let Some(r) = c
        .issue(
            &connect,
            SMFIP_NOCONNECT,
            SMFIP_NR_CONN,
            Stat::Connect,
            stats,
        )
        .await?
    {
        if !matches!(r, Reply::Continue) {
            return Ok(End::Verdict(format!("connect {}", reply_kind(&r))));
        }
    }

    // HELO
    gap(args.gap_ms, timing).await;
    push_macros(c, b'H', SMFIM_HELO, &vars, args.no_macros);
    let helo = Command::Helo {
        name: client.helo.clone(),
    };
    if let Some(r) = c
        .issue(&helo, SMFIP_NOHELO, SMFIP_NR_HELO, Stat::Helo, stats)
        .await?
    {
        if !matches!(r, Reply::Continue) {
            return Ok(End::Verdict(format!("helo {}", reply_kind(&r))));
        }
    }

    // MAIL
    gap(args.gap_ms, timing).await;
    push_macros(c, b'M', SMFIM_ENVFROM, &vars, args.no_macros);
    let mail = Command::Mail {
        args: NulStrings::from_items(&[format!("<{}>", vars.from).as_bytes(), b"BODY=8BITMIME"]),
    };
    if let Some(r) = c
        .issue(&mail, SMFIP_NOMAIL, SMFIP_NR_MAIL, Stat::Mail, stats)
        .await?
    {
        if !matches!(r, Reply::Continue) {
            push_abort(c, stats).await?;
            return Ok(End::Verdict(format!("mail {}", reply_kind(&r))));
        }
    }

    // RCPT
    let mut accepted = 0usize;
    let mut last_refusal = None;
    let mut message_accepted = false;
    for r in 0..args.rcpts {
        gap(args.gap_rcpt_ms, timing).await;
        vars.rcpt = args
            .to
            .replace("{r}", &r.to_string())
            .replace("{n}", &n.to_string());
        push_macros(c, b'R', SMFIM_ENVRCPT, &vars, args.no_macros);
        let rcpt = Command::Rcpt {
            args: NulStrings::from_items(&[format!("<{}>", vars.rcpt).as_bytes()]),
        };
        match c
            .issue(&rcpt, SMFIP_NORCPT, SMFIP_NR_RCPT, Stat::Rcpt, stats)
            .await?
        {
            None | Some(Reply::Continue) => accepted += 1,
            Some(Reply::Accept) => {
                accepted += 1;
                message_accepted = true;
                break;
            }
            Some(Reply::Discard) => {
                timing.rcpt_done_at = Some(Instant::now());
                push_abort(c, stats).await?;
                return Ok(End::Verdict("discard".into()));
            }
            Some(other) => last_refusal = Some(reply_kind(&other)),
        }
    }
    timing.rcpt_done_at = Some(Instant::now());
    if accepted == 0 {
        push_abort(c, stats).await?;
        return Ok(End::Verdict(
            last_refusal.unwrap_or_else(|| "no recipient".into()),
        ));
    }
    if message_accepted {
        // SMFIR_ACCEPT at RCPT: Postfix sends nothing more for this message.
        return Ok(End::Verdict("accept".into()));
    }

    // DATA, headers, EOH, body, EOM
    gap(args.gap_rcpt_ms, timing).await;
    push_macros(c, b'T', SMFIM_DATA, &vars, args.no_macros);
    if let Some(r) = c
        .issue(
            &Command::Data,
            SMFIP_NODATA,
            SMFIP_NR_DATA,
            Stat::Data,
            stats,
        )
        .await?
    {
        if !matches!(r, Reply::Continue) {
            return content_end(c, r, stats).await;
        }
    }
    if c.mta == Mta::Postfix {
        // Postfix's smtpd hands the milter connection to the cleanup server here and flushes
        // first (milter8_send): whatever is buffered (at least the DATA macros, which Postfix
        // sends even to a filter that negotiated DATA away) goes out on its own.
        c.flush(stats).await?;
    }
    for (name, value) in &ctx.headers {
        let h = Command::Header {
            name: name.clone(),
            value: value.clone(),
        };
        if let Some(r) = c
            .issue(&h, SMFIP_NOHDRS, SMFIP_NR_HDR, Stat::Header, stats)
            .await?
        {
            if matches!(r, Reply::Skip) {
                break;
            }
            if !matches!(r, Reply::Continue) {
                return content_end(c, r, stats).await;
            }
        }
    }
    push_macros(c, b'N', SMFIM_EOH, &vars, args.no_macros);
    if let Some(r) = c
        .issue(
            &Command::EndOfHeaders,
            SMFIP_NOEOH,
            SMFIP_NR_EOH,
            Stat::Eoh,
            stats,
        )
        .await?
    {
        if !matches!(r, Reply::Continue) {
            return content_end(c, r, stats).await;
        }
    }
    for chunk in &ctx.body {
        let b = Command::Body {
            chunk: chunk.clone(),
        };
        if let Some(r) = c
            .issue(&b, SMFIP_NOBODY, SMFIP_NR_BODY, Stat::Body, stats)
            .await?
        {
            if matches!(r, Reply::Skip) {
                break;
            }
            if !matches!(r, Reply::Continue) {
                return content_end(c, r, stats).await;
            }
        }
    }
    push_macros(c, b'E', SMFIM_EOM, &vars, args.no_macros);
    // EOM is never negotiated away and always answered.
    let r = c
        .issue(
            &Command::EndOfMessage {
                chunk: Bytes::new(),
            },
            0,
            0,
            Stat::Eom,
            stats,
        )
        .await?
        .expect("EOM is awaited");
    let kind = match r {
        Reply::Continue | Reply::Accept => "accept".to_string(),
        other => reply_kind(&other),
    };
    Ok(End::Verdict(kind))
}

/// A final reply before EOM: Postfix stops sending this message to the filter.
async fn content_end(c: &mut Conn, r: Reply, stats: &mut Stats) -> std::io::Result<End> {
    if !matches!(r, Reply::Accept) {
        push_abort(c, stats).await?;
    }
    Ok(End::Verdict(match r {
        Reply::Accept => "accept".into(),
        other => reply_kind(&other),
    }))
}

/// The message ends without EOM (refused): ABORT, which is never answered.
async fn push_abort(c: &mut Conn, stats: &mut Stats) -> std::io::Result<()> {
    c.push(&Command::Abort);
    if c.mta == Mta::Sendmail {
        c.flush(stats).await?;
    }
    Ok(())
}

async fn worker(ctx: Arc<Ctx>) -> Stats {
    let mut stats = Stats::default();
    let mut conn: Option<Conn> = None;
    let args = &ctx.args;
    while let Some(n) = ctx.claim() {
        let t0 = Instant::now();
        let mut timing = Timing {
            connect_at: None,
            rcpt_done_at: None,
            slept: Duration::ZERO,
        };
        let result = async {
            if conn.is_none() {
                conn = Some(negotiate(&ctx.target, args.mta, args.nagle, &mut stats).await?);
            }
            let c = conn.as_mut().expect("connected");
            let end = session(c, n, &ctx, &mut stats, &mut timing).await?;
            let elapsed = t0.elapsed();
            if args.reuse {
                c.push(&Command::QuitNewConnection);
                if args.mta == Mta::Sendmail {
                    c.flush(&mut stats).await?;
                }
            } else {
                c.push(&Command::Quit);
                c.flush(&mut stats).await?;
                conn = None;
            }
            Ok::<_, std::io::Error>((end, elapsed))
        }
        .await;
        match result {
            Ok((End::Verdict(kind), elapsed)) => {
                stats.sessions += 1;
                stats.record(Stat::Session, elapsed);
                if let (Some(a), Some(b)) = (timing.connect_at, timing.rcpt_done_at) {
                    let total = b.duration_since(a);
                    stats.record(Stat::ConnectToRcpt, total);
                    stats.record(Stat::Added, total.saturating_sub(timing.slept));
                }
                *stats.replies.entry(kind).or_default() += 1;
            }
            Err(e) => {
                stats.errors += 1;
                *stats.error_kinds.entry(e.to_string()).or_default() += 1;
                conn = None;
                // Do not spin on a dead target.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    if let Some(mut c) = conn {
        c.push(&Command::Quit);
        let _ = c.flush(&mut stats).await;
    }
    stats
}

// ---------------------------------------------------------------------------------------------
// Idle connections (--hold)

async fn hold(ctx: Arc<Ctx>, count: usize) -> (Stats, usize, Duration) {
    let t0 = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(ctx.args.concurrency.max(1)));
    let mut tasks = Vec::with_capacity(count);
    for n in 0..count {
        let (ctx, sem) = (ctx.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await.ok()?;
            let mut stats = Stats::default();
            let r = async {
                let mut c =
                    negotiate(&ctx.target, Mta::Sendmail, ctx.args.nagle, &mut stats).await?;
                let client = &ctx.clients[(n as u64 % ctx.clients.len() as u64) as usize];
                let vars = SessionVars {
                    client,
                    queue_id: String::new(),
                    from: String::new(),
                    rcpt: String::new(),
                };
                push_macros(
                    &mut c,
                    b'C',
                    flags::SMFIM_CONNECT,
                    &vars,
                    ctx.args.no_macros,
                );
                let connect = Command::Connect {
                    hostname: client.hostname.clone(),
                    address: ClientAddress::Inet {
                        ip: client.ip,
                        port: 40000 + (n % 20000) as u16,
                    },
                };
                c.issue(
                    &connect,
                    flags::SMFIP_NOCONNECT,
                    flags::SMFIP_NR_CONN,
                    Stat::Connect,
                    &mut stats,
                )
                .await?;
                push_macros(&mut c, b'H', flags::SMFIM_HELO, &vars, ctx.args.no_macros);
                let helo = Command::Helo {
                    name: client.helo.clone(),
                };
                c.issue(
                    &helo,
                    flags::SMFIP_NOHELO,
                    flags::SMFIP_NR_HELO,
                    Stat::Helo,
                    &mut stats,
                )
                .await?;
                c.flush(&mut stats).await?;
                Ok::<_, std::io::Error>(c)
            }
            .await;
            Some(match r {
                Ok(c) => (Some(c), stats),
                Err(e) => {
                    stats.errors += 1;
                    *stats.error_kinds.entry(e.to_string()).or_default() += 1;
                    (None, stats)
                }
            })
        }));
    }
    let mut all = Stats::default();
    let mut conns = Vec::with_capacity(count);
    for t in tasks {
        if let Ok(Some((c, s))) = t.await {
            all.merge(s);
            conns.extend(c);
        }
    }
    let open_time = t0.elapsed();
    let held = conns.len();
    say!("holding {held} connections");
    let _ = std::io::stdout().flush();
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs_f64(ctx.args.hold_secs)) => {}
        _ = terminate() => {}
    }
    drop(conns);
    (all, held, open_time)
}

async fn terminate() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending::<()>().await,
    }
}

// ---------------------------------------------------------------------------------------------
// Setup and report

fn default_clients(helo: &str) -> Vec<Client> {
    let mut v = Vec::with_capacity(400);
    for i in 1..=200u32 {
        for ip in [
            IpAddr::V4(Ipv4Addr::from(0xc000_0200u32 + i)),
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i as u16)),
        ] {
            v.push(Client {
                ip,
                hostname: Bytes::from(format!("[{ip}]")),
                helo: Bytes::copy_from_slice(helo.as_bytes()),
            });
        }
    }
    v
}

fn load_clients(path: &PathBuf, helo: &str) -> Result<Vec<Client>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut v = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut f = line.split_whitespace();
        let ip: IpAddr = f
            .next()
            .unwrap_or("")
            .parse()
            .map_err(|_| format!("{}:{}: bad IP address", path.display(), i + 1))?;
        let hostname = f.next().map_or_else(|| format!("[{ip}]"), str::to_string);
        let helo = f.next().unwrap_or(helo).to_string();
        v.push(Client {
            ip,
            hostname: Bytes::from(hostname),
            helo: Bytes::from(helo),
        });
    }
    if v.is_empty() {
        return Err(format!("{}: no clients", path.display()));
    }
    Ok(v)
}

fn message_shape(headers: usize, body_bytes: usize) -> (Vec<(Bytes, Bytes)>, Vec<Bytes>) {
    const NAMES: [&str; 10] = [
        "Received",
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        "MIME-Version",
        "Content-Type",
        "DKIM-Signature",
        "List-Unsubscribe",
    ];
    let hs = (0..headers)
        .map(|i| {
            let name = NAMES[i % NAMES.len()];
            let value =
                format!("bench header {i} for milterload, a value of typical length for {name}");
            (Bytes::from_static(name.as_bytes()), Bytes::from(value))
        })
        .collect();
    let line = b"The quick brown fox jumps over the lazy dog; milterload body line 0123456789\r\n";
    let mut body = Vec::with_capacity(body_bytes);
    while body.len() < body_bytes {
        let take = line.len().min(body_bytes - body.len());
        body.extend_from_slice(&line[..take]);
    }
    let body = Bytes::from(body);
    let chunks = (0..body.len())
        .step_by(65535)
        .map(|i| body.slice(i..(i + 65535).min(body.len())))
        .collect();
    (hs, chunks)
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// utime + stime of this process (all threads), from /proc (USER_HZ is 100 on Linux).
fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(0.0)
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn protocol_summary(p: u32) -> (String, String) {
    use flags::*;
    let stages = [
        ("connect", SMFIP_NOCONNECT, SMFIP_NR_CONN),
        ("helo", SMFIP_NOHELO, SMFIP_NR_HELO),
        ("mail", SMFIP_NOMAIL, SMFIP_NR_MAIL),
        ("rcpt", SMFIP_NORCPT, SMFIP_NR_RCPT),
        ("data", SMFIP_NODATA, SMFIP_NR_DATA),
        ("header", SMFIP_NOHDRS, SMFIP_NR_HDR),
        ("eoh", SMFIP_NOEOH, SMFIP_NR_EOH),
        ("body", SMFIP_NOBODY, SMFIP_NR_BODY),
    ];
    let sent: Vec<&str> = stages
        .iter()
        .filter(|s| p & s.1 == 0)
        .map(|s| s.0)
        .collect();
    let awaited: Vec<&str> = stages
        .iter()
        .filter(|s| p & s.1 == 0 && p & s.2 == 0)
        .map(|s| s.0)
        .collect();
    (sent.join(","), awaited.join(","))
}

struct Report {
    stats: Stats,
    elapsed: Duration,
    cpu: f64,
    held: Option<(usize, Duration)>,
}

fn print_report(args: &Args, mut r: Report) {
    for v in r.stats.lat_us.iter_mut() {
        v.sort_unstable();
    }
    let s = &r.stats;
    let secs = r.elapsed.as_secs_f64();
    let rate = s.sessions as f64 / secs.max(1e-9);
    let per = |x: u64| x as f64 / (s.sessions.max(1)) as f64;
    let cpu_us_per_session = r.cpu * 1e6 / (s.sessions.max(1)) as f64;
    let protocol = s.protocol.unwrap_or(0);
    let (sent, awaited) = protocol_summary(protocol);
    let summary = |i: usize| {
        let v = &s.lat_us[i];
        (
            v.len(),
            percentile(v, 0.5),
            percentile(v, 0.99),
            v.last().copied().unwrap_or(0),
        )
    };
    if args.json {
        let mut o = String::new();
        let sess = summary(Stat::Session as usize);
        let _ = write!(
            o,
            "{{\"target\":{},\"mta\":{},\"concurrency\":{},\"sessions\":{},\"errors\":{},\"seconds\":{secs:.3},\"sessions_per_sec\":{rate:.1},\"loadgen_cpu_s\":{:.2},\"loadgen_cpu_us_per_session\":{cpu_us_per_session:.1},\"p50_us\":{},\"p99_us\":{},\"max_us\":{},\"round_trips_per_session\":{:.2},\"writes_per_session\":{:.2},\"protocol\":\"0x{protocol:06x}\",\"stages_sent\":{},\"stages_awaited\":{},\"gap_ms\":{},\"gap_rcpt_ms\":{},\"headers\":{},\"body_bytes\":{},\"rcpts\":{}",
            json_str(&args.target),
            json_str(match args.mta {
                Mta::Postfix => "postfix",
                Mta::Sendmail => "sendmail",
            }),
            args.concurrency,
            s.sessions,
            s.errors,
            r.cpu,
            sess.1,
            sess.2,
            sess.3,
            per(s.round_trips),
            per(s.writes),
            json_str(&sent),
            json_str(&awaited),
            args.gap_ms,
            args.gap_rcpt_ms,
            args.headers,
            args.body_bytes,
            args.rcpts,
        );
        o.push_str(",\"stages\":{");
        let mut first = true;
        for (i, name) in STAT_NAMES.iter().enumerate() {
            let (n, p50, p99, max) = summary(i);
            if n == 0 {
                continue;
            }
            if !first {
                o.push(',');
            }
            first = false;
            let _ = write!(
                o,
                "\"{name}\":{{\"n\":{n},\"p50_us\":{p50},\"p99_us\":{p99},\"max_us\":{max}}}"
            );
        }
        o.push_str("},\"replies\":{");
        let replies: Vec<String> = s
            .replies
            .iter()
            .map(|(k, v)| format!("{}:{v}", json_str(k)))
            .collect();
        o.push_str(&replies.join(","));
        o.push_str("},\"error_kinds\":{");
        let errs: Vec<String> = s
            .error_kinds
            .iter()
            .map(|(k, v)| format!("{}:{v}", json_str(k)))
            .collect();
        o.push_str(&errs.join(","));
        o.push('}');
        if let Some((held, t)) = r.held {
            let _ = write!(
                o,
                ",\"held\":{held},\"open_seconds\":{:.3}",
                t.as_secs_f64()
            );
        }
        o.push('}');
        say!("{o}");
        return;
    }
    if let Some((held, t)) = r.held {
        say!(
            "held {held} connections ({} errors), opened in {:.2}s; load generator CPU {:.2}s",
            s.errors,
            t.as_secs_f64(),
            r.cpu
        );
    } else {
        say!(
            "{} sessions, {} errors in {secs:.2}s: {rate:.0} sessions/s; load generator CPU {:.2}s ({cpu_us_per_session:.0} us/session)",
            s.sessions, s.errors, r.cpu
        );
    }
    if r.held.is_none() {
        say!(
            "negotiated protocol 0x{protocol:06x}: stages sent [{sent}], awaited [{awaited}]; per session {:.1} round trips, {:.1} writes",
            per(s.round_trips),
            per(s.writes)
        );
    } else {
        say!("negotiated protocol 0x{protocol:06x}: stages sent [{sent}], awaited [{awaited}]");
    }
    say!(
        "{:<16} {:>9} {:>9} {:>9} {:>9}",
        "latency",
        "count",
        "p50_us",
        "p99_us",
        "max_us"
    );
    for (i, name) in STAT_NAMES.iter().enumerate() {
        let (n, p50, p99, max) = summary(i);
        if n > 0 {
            say!("{name:<16} {n:>9} {p50:>9} {p99:>9} {max:>9}");
        }
    }
    for (k, v) in &s.replies {
        say!("  reply {k}: {v}");
    }
    for (k, v) in &s.error_kinds {
        say!("  error {k}: {v}");
    }
}

fn serve_dns_until_signalled(server: &mxsentry::testing::TestDnsServer) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut usr1)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::user_defined1()),
        ) else {
            eprintln!("cannot install signal handlers");
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = usr1.recv() => {
                    say!("queries {} in_flight {} max_in_flight {}",
                        server.queries(), server.in_flight(), server.max_in_flight());
                    let _ = std::io::stdout().flush();
                }
            }
        }
    });
    say!("queries {} (exit)", server.queries());
}

fn main() {
    let args = Args::parse();

    let dns = match &args.dns_zone {
        Some(path) => {
            let zone = match std::fs::read_to_string(path) {
                Ok(z) => z,
                Err(e) => {
                    eprintln!("--dns-zone {}: {e}", path.display());
                    std::process::exit(2);
                }
            };
            match mxsentry::testing::TestDnsServer::start_in_thread(&zone) {
                Ok(server) => {
                    if let Some(f) = &args.dns_addr_file {
                        if let Err(e) = std::fs::write(f, format!("{}\n", server.addr)) {
                            eprintln!("--dns-addr-file {}: {e}", f.display());
                            std::process::exit(2);
                        }
                    }
                    say!("dns {}", server.addr);
                    let _ = std::io::stdout().flush();
                    Some(server)
                }
                Err(e) => {
                    eprintln!("--dns-zone {}: {e}", path.display());
                    std::process::exit(2);
                }
            }
        }
        None => None,
    };
    if args.dns_only {
        match &dns {
            Some(server) => serve_dns_until_signalled(server),
            None => {
                eprintln!("--dns-only needs --dns-zone");
                std::process::exit(2);
            }
        }
        return;
    }

    let target: ListenSpec = match args.target.parse() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("bad --target: {e}");
            std::process::exit(2);
        }
    };
    let clients = match &args.clients {
        Some(p) => match load_clients(p, &args.helo) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("--clients: {e}");
                std::process::exit(2);
            }
        },
        None => default_clients(&args.helo),
    };
    let (headers, body) = message_shape(args.headers, args.body_bytes);
    let run_id = args.run_id.clone().unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        letters((u64::from(std::process::id()) << 32) | (t % 0x1_0000_0000) as u64)
    });
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    };
    let rt = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let ctx = Arc::new(Ctx {
        deadline: args
            .duration
            .map(|d| Instant::now() + Duration::from_secs_f64(d)),
        args: args.clone(),
        target,
        clients,
        headers,
        body,
        run_id,
        next: AtomicU64::new(0),
    });
    let report = rt.block_on(async {
        if let Some(count) = args.hold {
            let (stats, held, open_time) = hold(ctx.clone(), count).await;
            return Report {
                stats,
                elapsed: t0.elapsed(),
                cpu: 0.0,
                held: Some((held, open_time)),
            };
        }
        let tasks: Vec<_> = (0..args.concurrency.max(1))
            .map(|_| tokio::spawn(worker(ctx.clone())))
            .collect();
        let mut all = Stats::default();
        for t in tasks {
            match t.await {
                Ok(s) => all.merge(s),
                Err(e) => {
                    all.errors += 1;
                    *all.error_kinds.entry(e.to_string()).or_default() += 1;
                }
            }
        }
        Report {
            stats: all,
            elapsed: t0.elapsed(),
            cpu: 0.0,
            held: None,
        }
    });
    let report = Report {
        cpu: cpu_seconds() - cpu0,
        ..report
    };
    let failed = report.stats.errors > 0
        || (report.held.is_none() && report.stats.sessions == 0)
        || report.held.is_some_and(|(h, _)| h == 0);
    print_report(&args, report);
    drop(dns);
    if failed {
        std::process::exit(1);
    }
}
