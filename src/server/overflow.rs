//! Connections over `max_connections`: answered at once, so the MTA never waits for its milter
//! timeouts (Postfix: 30 s to connect, then 30 s per command) while mail queues up.
//!
//! The handler is deliberately small: a 256-byte scratch buffer, frames read exactly (only
//! OPTNEG's three integers are kept; everything else is skipped unread), one deadline per SMTP
//! session. It negotiates what a full session would (so the connection can be taken over after
//! QUIT_NC), with CONNECT answered, and then gives `overflow_action` to CONNECT and to any other
//! command the MTA waits on. Postfix closes its side right after a CONNECT-stage verdict;
//! sendmail sends QUIT. After QUIT_NC (the MTA reuses the connection for a new SMTP session)
//! the connection becomes a normal one if a slot is free when that session's first frame
//! arrives, and otherwise that session gets the overflow verdict too.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{timeout_at, Instant};

use crate::config::OverflowAction;
use crate::protocol::command::{
    SMFIC_BODYEOB, SMFIC_CONNECT, SMFIC_OPTNEG, SMFIC_QUIT, SMFIC_QUIT_NC,
};
use crate::protocol::negotiate::{negotiate, Negotiated, StageSet};
use crate::protocol::reply::{encode_reply, Reply};

use super::Shared;

/// Longest an overflow connection lives per SMTP session: from accept (or QUIT_NC) to the
/// MTA's QUIT or close. Postfix and sendmail send OPTNEG, macros and CONNECT within
/// milliseconds, and Postfix closes right after the verdict.
pub const OVERFLOW_DEADLINE: Duration = Duration::from_secs(5);

/// How an overflow connection ended.
pub(crate) enum Outcome {
    /// Closed: QUIT, EOF, deadline, or a peer not speaking the protocol.
    Closed,
    /// The next SMTP session after QUIT_NC found a slot free: serve it for real, starting
    /// with the frame header already read.
    Upgrade(Negotiated, OwnedSemaphorePermit, [u8; 5]),
}

/// Answers one connection over the limit (`action` is `Tempfail` or `Accept`).
pub(crate) async fn answer<S>(stream: &mut S, shared: &Shared) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let verdict = match shared.overflow_action {
        OverflowAction::Accept => Reply::Accept,
        OverflowAction::Tempfail | OverflowAction::Close => Reply::Tempfail,
    };
    let mut scratch = [0u8; 256];
    let mut negotiated: Option<Negotiated> = None;
    let mut between_sessions = false;
    let mut deadline = Instant::now() + OVERFLOW_DEADLINE;
    loop {
        let mut head = [0u8; 5];
        if read_exact(stream, &mut head, deadline).await.is_err() {
            return Outcome::Closed;
        }
        if between_sessions {
            // The first frame of the SMTP session after QUIT_NC decides: served if a slot is
            // free now, otherwise this session gets the overflow verdict too.
            between_sessions = false;
            if let (Some(n), Ok(slot)) = (negotiated, shared.slots.clone().try_acquire_owned()) {
                return Outcome::Upgrade(n, slot, head);
            }
            shared.overflowed();
        }
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if len == 0 || len > shared.limits.max_frame {
            return Outcome::Closed;
        }
        let (code, mut data) = (head[4], len - 1);
        let reply = match (code, negotiated) {
            (SMFIC_OPTNEG, None) => {
                if data < 12 {
                    return Outcome::Closed;
                }
                let ints = &mut scratch[..12];
                if read_exact(stream, ints, deadline).await.is_err() {
                    return Outcome::Closed;
                }
                data -= 12;
                let int =
                    |i: usize| u32::from_be_bytes([ints[i], ints[i + 1], ints[i + 2], ints[i + 3]]);
                let (version, actions, protocol) = (int(0), int(4), int(8));
                // What a full session needs, with CONNECT sent and answered: that is where
                // the verdict goes, and the same options serve the connection if it is taken
                // over after QUIT_NC.
                let mut needs = (*shared.policies.current().needs()).clone();
                needs.stages |= StageSet::CONNECT;
                needs.reply_stages |= StageSet::CONNECT;
                let Ok(n) = negotiate(version, actions, protocol, &needs) else {
                    return Outcome::Closed;
                };
                negotiated = Some(n);
                Some(n.reply(&needs.macros))
            }
            (_, None) => return Outcome::Closed,
            (SMFIC_QUIT, Some(_)) => return Outcome::Closed,
            (SMFIC_QUIT_NC, Some(_)) => {
                between_sessions = true;
                deadline = Instant::now() + OVERFLOW_DEADLINE;
                None
            }
            (SMFIC_CONNECT | SMFIC_BODYEOB, Some(_)) => Some(verdict.clone()),
            // Any other stage the MTA waits on gets the verdict too (an MTA that goes on
            // after it must not hang); MACRO, ABORT and the no-reply stages are skipped.
            (code, Some(n)) => n.expects_reply(code).then(|| verdict.clone()),
        };
        if skip(stream, data, &mut scratch, deadline).await.is_err() {
            return Outcome::Closed;
        }
        if let Some(reply) = reply {
            let mut out = BytesMut::new();
            encode_reply(&reply, &mut out);
            match timeout_at(deadline, stream.write_all(&out)).await {
                Ok(Ok(())) => {}
                _ => return Outcome::Closed,
            }
        }
    }
}

async fn read_exact<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut [u8],
    deadline: Instant,
) -> Result<(), ()> {
    match timeout_at(deadline, stream.read_exact(buf)).await {
        Ok(Ok(_)) => Ok(()),
        _ => Err(()),
    }
}

/// Reads and drops `n` bytes.
async fn skip<S: AsyncRead + Unpin>(
    stream: &mut S,
    mut n: usize,
    scratch: &mut [u8],
    deadline: Instant,
) -> Result<(), ()> {
    while n > 0 {
        let chunk = n.min(scratch.len());
        read_exact(stream, &mut scratch[..chunk], deadline).await?;
        n -= chunk;
    }
    Ok(())
}
