//! The SMTP sessions a worker plays over its connections: macros as the MTA sends them, the
//! stages in order, MTA gaps, and what each reply costs.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mxsentry::config::ListenSpec;
use mxsentry::protocol::command::{ClientAddress, Command, MacroPairs, NulStrings};
use mxsentry::protocol::reply::Reply;

use mxsentry::testing::letters;

use crate::conn::{default_macro_names, negotiate, Conn};
use crate::stats::{Stat, Stats};
use crate::{Args, Mta};
use mxsentry::protocol::negotiate::flags;

#[derive(Clone)]
pub(crate) struct Client {
    pub(crate) ip: IpAddr,
    pub(crate) hostname: Bytes,
    pub(crate) helo: Bytes,
}

/// Everything sessions share.
pub(crate) struct Ctx {
    pub(crate) args: Args,
    pub(crate) target: ListenSpec,
    pub(crate) clients: Vec<Client>,
    pub(crate) headers: Vec<(Bytes, Bytes)>,
    pub(crate) body: Vec<Bytes>,
    pub(crate) run_id: String,
    pub(crate) next: AtomicU64,
    pub(crate) deadline: Option<Instant>,
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

pub(crate) struct SessionVars<'a> {
    pub(crate) client: &'a Client,
    pub(crate) queue_id: String,
    pub(crate) from: String,
    pub(crate) rcpt: String,
}

/// Appends the MACRO frame for `stage` (SMFIM_*) unless no macro has a value.
pub(crate) fn push_macros(
    c: &mut Conn,
    code: u8,
    stage: u32,
    vars: &SessionVars<'_>,
    no_macros: bool,
) {
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
pub(crate) enum End {
    /// The message went through to EOM (or was accepted early): the final reply's kind.
    Verdict(String),
}

pub(crate) struct Timing {
    connect_at: Option<Instant>,
    rcpt_done_at: Option<Instant>,
    slept: Duration,
}

pub(crate) async fn gap(ms: f64, timing: &mut Timing) {
    if ms > 0.0 {
        let t = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(ms / 1000.0)).await;
        if timing.connect_at.is_some() && timing.rcpt_done_at.is_none() {
            timing.slept += t.elapsed();
        }
    }
}

/// One SMTP session on an open, negotiated connection.
pub(crate) async fn session(
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

pub(crate) async fn worker(ctx: Arc<Ctx>) -> Stats {
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
