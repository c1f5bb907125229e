//! `milterload`: plays the MTA side of the milter protocol against a filter and reports
//! sessions per second and latency. Honours the flags the filter negotiated, as Postfix does:
//! stages negotiated away are not sent, no-reply stages are not awaited.
//!
//!     milterload --target inet:8890@127.0.0.1 --concurrency 16 --sessions 20000 [--reuse] [--json]

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use clap::Parser;
use mxsentry::config::ListenSpec;
use mxsentry::protocol::command::{encode_command, ClientAddress, Command, NulStrings};
use mxsentry::protocol::frame::split_frame;
use mxsentry::protocol::negotiate::flags;
use mxsentry::protocol::reply::{decode_reply, Reply};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[derive(Parser, Clone)]
#[command(about = "Milter load generator (MTA side of the milter protocol v6)")]
struct Args {
    /// Filter address in milter form: inet:PORT@HOST, inet6:PORT@HOST, unix:/path.
    #[arg(long, default_value = "inet:8890@127.0.0.1")]
    target: String,
    /// Parallel MTA connections.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Total sessions.
    #[arg(long, default_value_t = 10000)]
    sessions: usize,
    /// Reuse each connection for the next session (SMFIC_QUIT_NC), as Postfix can.
    #[arg(long)]
    reuse: bool,
    /// Recipients per message.
    #[arg(long, default_value_t = 1)]
    rcpts: usize,
    /// Envelope sender.
    #[arg(long, default_value = "user@sender.example")]
    from: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Default)]
struct Stats {
    latencies_us: Vec<u64>,
    errors: u64,
    replies: std::collections::BTreeMap<String, u64>,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn open(target: &ListenSpec) -> std::io::Result<Box<dyn Io>> {
    Ok(match target {
        ListenSpec::Inet(addr) => {
            let s = tokio::net::TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            Box::new(s)
        }
        ListenSpec::Unix(p) => Box::new(tokio::net::UnixStream::connect(p).await?),
    })
}

struct Conn {
    io: Box<dyn Io>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    protocol: u32,
}

impl Conn {
    fn push(&mut self, cmd: &Command) {
        encode_command(cmd, &mut self.wbuf);
    }
    async fn flush(&mut self) -> std::io::Result<()> {
        self.io.write_all(&self.wbuf).await?;
        self.wbuf.clear();
        Ok(())
    }
    async fn recv(&mut self) -> std::io::Result<Reply> {
        loop {
            if let Some(f) = split_frame(&mut self.rbuf, 1 << 20)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?
            {
                return decode_reply(f)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e));
            }
            if self.io.read_buf(&mut self.rbuf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
    /// Sends a stage command unless negotiated away; waits for its reply unless no-reply.
    async fn stage(&mut self, cmd: Command, skip: u32, nr: u32) -> std::io::Result<Option<Reply>> {
        if self.protocol & skip != 0 {
            return Ok(None);
        }
        self.push(&cmd);
        if self.protocol & nr != 0 {
            return Ok(None);
        }
        self.flush().await?;
        self.recv().await.map(Some)
    }
}

async fn negotiate(target: &ListenSpec) -> std::io::Result<Conn> {
    let mut c = Conn {
        io: open(target).await?,
        rbuf: BytesMut::with_capacity(4096),
        wbuf: BytesMut::with_capacity(4096),
        protocol: 0,
    };
    c.push(&Command::OptNeg {
        version: 6,
        actions: 0x1ff,
        protocol: 0x001f_ffff,
    });
    c.flush().await?;
    match c.recv().await? {
        Reply::OptNeg { protocol, .. } => c.protocol = protocol,
        other => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("unexpected OPTNEG reply {other:?}"),
            ))
        }
    }
    Ok(c)
}

fn reply_kind(r: &Reply) -> String {
    match r {
        Reply::ReplyCode { text } => format!(
            "replycode {}",
            String::from_utf8_lossy(&text[..3.min(text.len())])
        ),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// One SMTP session; returns the final verdict's kind.
async fn session(c: &mut Conn, n: usize, args: &Args) -> std::io::Result<String> {
    let ip = IpAddr::V4(Ipv4Addr::from(0xc000_0200u32 + (n % 250) as u32 + 1));
    c.stage(
        Command::Connect {
            hostname: Bytes::from(format!("[{ip}]")),
            address: ClientAddress::Inet { ip, port: 25000 },
        },
        flags::SMFIP_NOCONNECT,
        flags::SMFIP_NR_CONN,
    )
    .await?;
    c.stage(
        Command::Helo {
            name: Bytes::from_static(b"client.example"),
        },
        flags::SMFIP_NOHELO,
        flags::SMFIP_NR_HELO,
    )
    .await?;
    let from = format!("<{}>", args.from);
    c.stage(
        Command::Mail {
            args: NulStrings::from_items(&[from.as_bytes()]),
        },
        flags::SMFIP_NOMAIL,
        flags::SMFIP_NR_MAIL,
    )
    .await?;
    for r in 0..args.rcpts {
        let to = format!("<rcpt{r}@example.org>");
        if let Some(reply) = c
            .stage(
                Command::Rcpt {
                    args: NulStrings::from_items(&[to.as_bytes()]),
                },
                flags::SMFIP_NORCPT,
                flags::SMFIP_NR_RCPT,
            )
            .await?
        {
            if !matches!(reply, Reply::Continue) {
                return Ok(reply_kind(&reply));
            }
        }
    }
    c.stage(Command::Data, flags::SMFIP_NODATA, flags::SMFIP_NR_DATA)
        .await?;
    c.stage(
        Command::Header {
            name: Bytes::from_static(b"Subject"),
            value: Bytes::from_static(b"load"),
        },
        flags::SMFIP_NOHDRS,
        flags::SMFIP_NR_HDR,
    )
    .await?;
    c.stage(
        Command::EndOfHeaders,
        flags::SMFIP_NOEOH,
        flags::SMFIP_NR_EOH,
    )
    .await?;
    c.stage(
        Command::Body {
            chunk: Bytes::from_static(b"hello\r\n"),
        },
        flags::SMFIP_NOBODY,
        flags::SMFIP_NR_BODY,
    )
    .await?;
    c.push(&Command::EndOfMessage {
        chunk: Bytes::new(),
    });
    c.flush().await?;
    loop {
        let r = c.recv().await?;
        if !matches!(
            r,
            Reply::AddHeader { .. }
                | Reply::InsertHeader { .. }
                | Reply::ChangeHeader { .. }
                | Reply::Progress
        ) {
            return Ok(reply_kind(&r));
        }
    }
}

async fn worker(id: usize, count: usize, args: Args, target: ListenSpec) -> Stats {
    let mut stats = Stats::default();
    let mut conn: Option<Conn> = None;
    for i in 0..count {
        let t0 = Instant::now();
        let result = async {
            if conn.is_none() {
                conn = Some(negotiate(&target).await?);
            }
            let c = conn.as_mut().expect("connected");
            let kind = session(c, id * count + i, &args).await?;
            if args.reuse {
                c.push(&Command::QuitNewConnection);
            } else {
                c.push(&Command::Quit);
                c.flush().await?;
                conn = None;
            }
            Ok::<_, std::io::Error>(kind)
        }
        .await;
        match result {
            Ok(kind) => {
                stats.latencies_us.push(t0.elapsed().as_micros() as u64);
                *stats.replies.entry(kind).or_default() += 1;
            }
            Err(_) => {
                stats.errors += 1;
                conn = None;
            }
        }
    }
    stats
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn cpu_seconds() -> f64 {
    // utime + stime of this process, from /proc (clock ticks are 100 Hz on Linux).
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(0.0)
}

fn main() {
    let args = Args::parse();
    let target: ListenSpec = match args.target.parse() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("bad --target: {e}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let per = args.sessions.div_ceil(args.concurrency.max(1));
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let all = rt.block_on(async {
        let tasks: Vec<_> = (0..args.concurrency.max(1))
            .map(|id| tokio::spawn(worker(id, per, args.clone(), target.clone())))
            .collect();
        let mut all = Stats::default();
        for t in tasks {
            let s = t.await.expect("worker");
            all.latencies_us.extend(s.latencies_us);
            all.errors += s.errors;
            for (k, v) in s.replies {
                *all.replies.entry(k).or_default() += v;
            }
        }
        all
    });
    let elapsed = t0.elapsed();
    let cpu = cpu_seconds() - cpu0;
    let mut lat = all.latencies_us;
    lat.sort_unstable();
    let ok = lat.len();
    let rate = ok as f64 / elapsed.as_secs_f64();
    let (p50, p99, max) = (
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(0),
    );
    if args.json {
        let replies: Vec<String> = all
            .replies
            .iter()
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect();
        println!(
            "{{\"sessions\":{ok},\"errors\":{},\"seconds\":{:.3},\"sessions_per_sec\":{rate:.1},\"p50_us\":{p50},\"p99_us\":{p99},\"max_us\":{max},\"loadgen_cpu_s\":{cpu:.2},\"replies\":{{{}}}}}",
            all.errors,
            elapsed.as_secs_f64(),
            replies.join(",")
        );
    } else {
        println!(
            "{ok} sessions, {} errors in {:.2}s: {rate:.0} sessions/s; session latency p50 {p50} us, p99 {p99} us, max {max} us; load generator CPU {cpu:.2}s",
            all.errors,
            elapsed.as_secs_f64()
        );
        for (k, v) in &all.replies {
            println!("  {k}: {v}");
        }
    }
}
