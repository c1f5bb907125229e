//! One MTA connection: owns the socket and its buffers, reads frames, lets the session answer.
//!
//! Buffers are allocated once per connection and reused for every frame; frames are split off
//! the read buffer without copying (`BytesMut::split_to` + `freeze`).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::protocol::command::{decode_command, Command, SMFIC_MACRO};
use crate::protocol::frame::split_frame;
use crate::session::{Flow, Session};

/// Limits that protect the daemon from a slow or broken peer.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_frame: usize,
    /// Largest MACRO frame (bytes, command byte included).
    pub max_macro_frame: usize,
    /// Most name/value pairs in one MACRO frame.
    pub max_macros: usize,
    /// From accept to a complete OPTNEG.
    pub negotiation_timeout: Duration,
    /// For each later frame, from the end of the previous one.
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
    #[error("closed between SMTP sessions for shutdown")]
    Shutdown,
    #[error("no option negotiation within {0:?}")]
    NegotiationTimeout(Duration),
    #[error("idle for {0:?}")]
    IdleTimeout(Duration),
    #[error("write timed out after {0:?}")]
    WriteTimeout(Duration),
    #[error("MACRO frame of {len} bytes exceeds max_macro_frame {max}")]
    MacroFrameTooLarge { len: usize, max: usize },
    #[error("MACRO frame with {count} macros exceeds max_macros {max}")]
    TooManyMacros { count: usize, max: usize },
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
        matches!(
            self,
            ConnectionEnd::PeerClosed | ConnectionEnd::Quit | ConnectionEnd::Shutdown
        )
    }

    /// The `mxsentry_protocol_errors_total` reason (one of `metrics::PROTOCOL_ERRORS`), or
    /// `None` for a normal end (QUIT, the MTA closing between commands, shutdown).
    pub fn metric_reason(&self) -> Option<&'static str> {
        use crate::protocol::command::DecodeError;
        use crate::protocol::frame::FrameError;
        use crate::session::SessionError;
        use ConnectionEnd as End;
        Some(match self {
            End::PeerClosed | End::Quit | End::Shutdown => return None,
            End::Truncated => "truncated",
            End::NegotiationTimeout(_) => "negotiation_timeout",
            End::IdleTimeout(_) => "idle_timeout",
            End::WriteTimeout(_) => "write_timeout",
            End::MacroFrameTooLarge { .. } | End::TooManyMacros { .. } => "macro_limit",
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

/// A read buffer grown beyond this (by a large frame) is given back once it is empty, so an
/// idle connection costs its small buffers again; and a MACRO frame cut from such a buffer is
/// copied out, so the session's stored macros do not pin the large allocation.
const GROWN: usize = 4 * READ_CHUNK;

/// Serves milter commands on `stream` until QUIT, EOF, a timeout, a protocol error or (once
/// `stop` turns true) the end of the SMTP session in progress. `read`: bytes already read
/// from the stream (by the overflow handler that hands a connection over).
pub async fn serve<S>(
    mut stream: S,
    mut session: Session,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
    read: &[u8],
) -> ConnectionEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Small: with headers and body negotiated away the largest frame is a macro list of a few
    // hundred bytes, and an idle connection should cost little (10,000 of them are a target).
    // A bigger frame still arrives: the buffer grows by READ_CHUNK as it fills.
    let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
    rbuf.extend_from_slice(read);
    let mut wbuf = BytesMut::with_capacity(1024);
    let mut stopping = *stop.borrow();
    // Set when the wait for a frame starts; partial reads do not move it, so a peer that
    // trickles a frame byte by byte is bounded like an idle one.
    let mut deadline: Option<(Instant, Duration)> = None;
    // One timer and one shutdown listener for the connection's life, not one of each per
    // wait: each registration and removal in tokio's timer wheel and the watch's waiter list
    // takes a lock. A later deadline only moves the timer's expiry (lock-free in tokio); an
    // earlier one re-registers it.
    let timer = tokio::time::sleep_until(Instant::now() + limits.negotiation_timeout);
    tokio::pin!(timer);
    let stop_changed = stop.changed();
    tokio::pin!(stop_changed);
    loop {
        // Answer everything already buffered before reading again (the MTA may pipeline
        // no-reply commands such as MACRO, CONNECT, HELO, MAIL behind each other).
        let backing = rbuf.capacity();
        let mut frame = match split_frame(&mut rbuf, limits.max_frame) {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                if !wbuf.is_empty() {
                    if let Err(e) = flush(&mut stream, &mut wbuf, limits.write_timeout).await {
                        return e;
                    }
                }
                if stopping && !session.in_smtp_session() {
                    return ConnectionEnd::Shutdown;
                }
                if rbuf.is_empty() && rbuf.capacity() > GROWN {
                    rbuf = BytesMut::with_capacity(READ_CHUNK);
                } else if rbuf.capacity() - rbuf.len() < READ_CHUNK / 4 {
                    rbuf.reserve(READ_CHUNK);
                }
                let (until, waited) = *deadline.get_or_insert_with(|| {
                    let t = if session.is_negotiated() {
                        limits.idle_timeout
                    } else {
                        limits.negotiation_timeout
                    };
                    (Instant::now() + t, t)
                });
                if timer.deadline() != until {
                    timer.as_mut().reset(until);
                }
                let read = tokio::select! {
                    biased;
                    r = stream.read_buf(&mut rbuf) => r,
                    _ = &mut timer => {
                        return if session.is_negotiated() {
                            ConnectionEnd::IdleTimeout(waited)
                        } else {
                            ConnectionEnd::NegotiationTimeout(waited)
                        };
                    }
                    _ = &mut stop_changed, if !stopping => {
                        // (an error means the server is gone: stop as well)
                        stopping = true;
                        continue;
                    }
                };
                match read {
                    Err(e) => return ConnectionEnd::Io(e),
                    Ok(0) if rbuf.is_empty() => return ConnectionEnd::PeerClosed,
                    Ok(0) => return ConnectionEnd::Truncated,
                    Ok(_) => continue,
                }
            }
            Err(e) => return e.into(),
        };
        if frame[0] == SMFIC_MACRO {
            if frame.len() > limits.max_macro_frame {
                return ConnectionEnd::MacroFrameTooLarge {
                    len: frame.len(),
                    max: limits.max_macro_frame,
                };
            }
            if backing > GROWN {
                frame = Bytes::copy_from_slice(&frame);
            }
        }
        let command = match decode_command(frame) {
            Ok(c) => c,
            Err(e) => return e.into(),
        };
        if let Command::Macro { pairs, .. } = &command {
            let count = pairs.len();
            if count > limits.max_macros {
                return ConnectionEnd::TooManyMacros {
                    count,
                    max: limits.max_macros,
                };
            }
        }
        let session_ends = matches!(command, Command::QuitNewConnection);
        let result = session.handle(command, &mut wbuf).await;
        // Until OPTNEG the negotiation deadline runs from accept, whatever else arrives.
        if session.is_negotiated() {
            deadline = None;
        }
        match result {
            Ok(Flow::Continue) if session_ends && stopping => {
                // The MTA would start its next SMTP session on this connection: shutting
                // down, it gets a closed connection instead (as a new one would be refused).
                let _ = flush(&mut stream, &mut wbuf, limits.write_timeout).await;
                return ConnectionEnd::Shutdown;
            }
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
            (End::Shutdown, None),
            (
                End::NegotiationTimeout(std::time::Duration::from_secs(1)),
                Some("negotiation_timeout"),
            ),
            (
                End::MacroFrameTooLarge { len: 9, max: 1 },
                Some("macro_limit"),
            ),
            (End::TooManyMacros { count: 9, max: 1 }, Some("macro_limit")),
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
