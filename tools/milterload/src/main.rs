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

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use mxsentry::config::ListenSpec;

/// `println!` that ignores a closed stdout (e.g. piped into `head`) instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
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

mod conn;
mod hold;
mod report;
mod session;
mod stats;

use hold::hold;
use mxsentry::testing::letters;
use report::{cpu_seconds, print_report, Report};
use session::{worker, Client, Ctx};
use stats::Stats;

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
