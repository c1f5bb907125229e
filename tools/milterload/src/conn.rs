//! One milter connection from the MTA side: open it, negotiate, write commands as the chosen
//! MTA buffers them, read replies.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use mxsentry::config::ListenSpec;
use mxsentry::protocol::command::{encode_command, Command};
use mxsentry::protocol::frame::split_frame;
use mxsentry::protocol::negotiate::flags;
use mxsentry::protocol::reply::{decode_reply, Reply};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::stats::{Stat, Stats};
use crate::Mta;

pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub(crate) async fn open(target: &ListenSpec, nagle: bool) -> std::io::Result<Box<dyn Io>> {
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

pub(crate) struct Conn {
    pub(crate) io: Box<dyn Io>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    pub(crate) protocol: u32,
    /// Macro names the filter asked for, by SMFIM_* stage (empty: Postfix's defaults).
    pub(crate) macro_lists: Vec<(u32, Vec<Bytes>)>,
    pub(crate) mta: Mta,
}

impl Conn {
    pub(crate) async fn flush(&mut self, stats: &mut Stats) -> std::io::Result<()> {
        if !self.wbuf.is_empty() {
            self.io.write_all(&self.wbuf).await?;
            self.wbuf.clear();
            stats.writes += 1;
        }
        Ok(())
    }

    pub(crate) async fn recv(&mut self) -> std::io::Result<Reply> {
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
    pub(crate) async fn issue(
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

    pub(crate) fn push(&mut self, cmd: &Command) {
        encode_command(cmd, &mut self.wbuf);
    }
}

/// Postfix 3.7's default macro lists per stage (milter_*_macros).
pub(crate) fn default_macro_names(stage: u32) -> &'static [&'static str] {
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

pub(crate) async fn negotiate(
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
