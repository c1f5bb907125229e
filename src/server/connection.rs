//! One MTA connection: owns the socket and its buffers, reads frames, lets the session answer.
//!
//! Buffers are allocated once per connection and reused for every frame; frames are split off
//! the read buffer without copying (`BytesMut::split_to` + `freeze`).

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::protocol::command::decode_command;
use crate::protocol::frame::split_frame;
use crate::session::{Flow, Session};

/// Limits that protect the daemon from a slow or broken peer.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_frame: usize,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionEnd {
    #[error("peer closed the connection")]
    PeerClosed,
    #[error("peer closed the connection in the middle of a frame")]
    Truncated,
    #[error("quit")]
    Quit,
    #[error("idle for {0:?}")]
    IdleTimeout(Duration),
    #[error("write timed out after {0:?}")]
    WriteTimeout(Duration),
    #[error("bad frame: {0}")]
    Frame(#[from] crate::protocol::frame::FrameError),
    #[error("bad command: {0}")]
    Decode(#[from] crate::protocol::command::DecodeError),
    #[error("protocol error: {0}")]
    Session(#[from] crate::session::SessionError),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl ConnectionEnd {
    /// A normal end (no log line at warning level).
    pub fn is_clean(&self) -> bool {
        matches!(self, ConnectionEnd::PeerClosed | ConnectionEnd::Quit)
    }

    /// The `mxsentry_protocol_errors_total` reason (one of `metrics::PROTOCOL_ERRORS`), or
    /// `None` for a normal end (QUIT, the MTA closing between commands).
    pub fn metric_reason(&self) -> Option<&'static str> {
        use crate::protocol::command::DecodeError;
        use crate::protocol::frame::FrameError;
        use crate::session::SessionError;
        use ConnectionEnd as End;
        Some(match self {
            End::PeerClosed | End::Quit => return None,
            End::Truncated => "truncated",
            End::IdleTimeout(_) => "idle_timeout",
            End::WriteTimeout(_) => "write_timeout",
            End::Frame(FrameError::TooLarge { .. }) => "frame_too_large",
            End::Frame(_) => "malformed",
            End::Decode(DecodeError::UnknownCommand(_)) => "unknown_command",
            End::Decode(_) => "malformed",
            End::Session(SessionError::NotNegotiated(_)) => "not_negotiated",
            End::Session(_) => "malformed",
            End::Io(_) => "io",
        })
    }
}

/// Read buffer size, and its growth step.
const READ_CHUNK: usize = 2048;

/// Serves milter commands on `stream` until QUIT, EOF, a timeout or a protocol error.
pub async fn serve<S>(mut stream: S, mut session: Session, limits: Limits) -> ConnectionEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Small: with headers and body negotiated away the largest frame is a macro list of a few
    // hundred bytes, and an idle connection should cost little (10,000 of them are a target).
    // A bigger frame still arrives: the buffer grows by READ_CHUNK as it fills.
    let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
    let mut wbuf = BytesMut::with_capacity(1024);
    loop {
        // Answer everything already buffered before reading again (the MTA may pipeline
        // no-reply commands such as MACRO, CONNECT, HELO, MAIL behind each other).
        let frame = match split_frame(&mut rbuf, limits.max_frame) {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                if !wbuf.is_empty() {
                    if let Err(e) = flush(&mut stream, &mut wbuf, limits.write_timeout).await {
                        return e;
                    }
                }
                if rbuf.capacity() - rbuf.len() < READ_CHUNK / 4 {
                    rbuf.reserve(READ_CHUNK);
                }
                match tokio::time::timeout(limits.idle_timeout, stream.read_buf(&mut rbuf)).await {
                    Err(_) => return ConnectionEnd::IdleTimeout(limits.idle_timeout),
                    Ok(Err(e)) => return ConnectionEnd::Io(e),
                    Ok(Ok(0)) if rbuf.is_empty() => return ConnectionEnd::PeerClosed,
                    Ok(Ok(0)) => return ConnectionEnd::Truncated,
                    Ok(Ok(_)) => continue,
                }
            }
            Err(e) => return e.into(),
        };
        let command = match decode_command(frame) {
            Ok(c) => c,
            Err(e) => return e.into(),
        };
        match session.handle(command, &mut wbuf).await {
            Ok(Flow::Continue) => {}
            Ok(Flow::Close) => {
                let _ = flush(&mut stream, &mut wbuf, limits.write_timeout).await;
                return ConnectionEnd::Quit;
            }
            Err(e) => return e.into(),
        }
    }
}

async fn flush<S: AsyncWrite + Unpin>(
    stream: &mut S,
    wbuf: &mut BytesMut,
    timeout: Duration,
) -> Result<(), ConnectionEnd> {
    match tokio::time::timeout(timeout, stream.write_all(wbuf)).await {
        Err(_) => Err(ConnectionEnd::WriteTimeout(timeout)),
        Ok(Err(e)) => Err(ConnectionEnd::Io(e)),
        Ok(Ok(())) => {
            wbuf.clear();
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn protocol_error_reasons_from_connection_ends() {
        use super::ConnectionEnd as End;
        use crate::protocol::command::DecodeError;
        use crate::protocol::frame::FrameError;
        use crate::session::SessionError;
        let cases = [
            (End::PeerClosed, None),
            (End::Quit, None),
            (End::Truncated, Some("truncated")),
            (
                End::IdleTimeout(std::time::Duration::from_secs(1)),
                Some("idle_timeout"),
            ),
            (
                End::WriteTimeout(std::time::Duration::from_secs(1)),
                Some("write_timeout"),
            ),
            (
                End::Frame(FrameError::TooLarge { len: 9, max: 1 }),
                Some("frame_too_large"),
            ),
            (End::Frame(FrameError::Empty), Some("malformed")),
            (
                End::Decode(DecodeError::UnknownCommand(b'z')),
                Some("unknown_command"),
            ),
            (
                End::Session(SessionError::NotNegotiated("RCPT")),
                Some("not_negotiated"),
            ),
            (End::Io(std::io::Error::other("x")), Some("io")),
        ];
        for (end, want) in cases {
            let got = end.metric_reason();
            assert_eq!(got, want, "{end}");
            if let Some(r) = got {
                assert!(crate::metrics::PROTOCOL_ERRORS.contains(&r));
            }
        }
    }
}
