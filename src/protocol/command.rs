//! MTA → filter commands (`SMFIC_*`).
//!
//! Decoding is strict where a mistake would mean we misread the stream (missing terminators,
//! short integers, unknown address families, bytes left over), and lenient only where real
//! MTAs are known to vary:
//! * HELO and UNKNOWN may lack their trailing NUL (libmilter accepts that; the whole payload
//!   is then the string). Bytes after the first NUL are still an error.
//! * OPTNEG may carry bytes after its three integers; they are ignored, as libmilter does.
//! * CONNECT `'6'` addresses may carry sendmail's `IPv6:` prefix (any case) and a `%zone`
//!   suffix; an IPv4-mapped IPv6 address (or a dotted quad sent as `'6'`) becomes
//!   `IpAddr::V4`, so DNSBL and FCrDNS checks see the address the client really has.
//!   The port of a `'L'` (unix socket) connection is ignored (both MTAs send 0).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::{BufMut, Bytes, BytesMut};

use super::frame::write_frame_with;
use super::Cursor;
pub use super::{MacroPairs, NulStrings};

pub const SMFIC_ABORT: u8 = b'A';
pub const SMFIC_BODY: u8 = b'B';
pub const SMFIC_CONNECT: u8 = b'C';
pub const SMFIC_MACRO: u8 = b'D';
pub const SMFIC_BODYEOB: u8 = b'E';
pub const SMFIC_HELO: u8 = b'H';
pub const SMFIC_QUIT_NC: u8 = b'K';
pub const SMFIC_HEADER: u8 = b'L';
pub const SMFIC_MAIL: u8 = b'M';
pub const SMFIC_EOH: u8 = b'N';
pub const SMFIC_OPTNEG: u8 = b'O';
pub const SMFIC_QUIT: u8 = b'Q';
pub const SMFIC_RCPT: u8 = b'R';
pub const SMFIC_DATA: u8 = b'T';
pub const SMFIC_UNKNOWN: u8 = b'U';

/// Address family bytes of a CONNECT command (`SMFIA_*`).
pub const SMFIA_UNKNOWN: u8 = b'U';
pub const SMFIA_UNIX: u8 = b'L';
pub const SMFIA_INET: u8 = b'4';
pub const SMFIA_INET6: u8 = b'6';

/// Where the SMTP client connected from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAddress {
    Unknown,
    /// A unix-socket client; the socket path as the MTA reported it.
    Unix(Bytes),
    Inet {
        ip: IpAddr,
        port: u16,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    OptNeg {
        version: u32,
        actions: u32,
        protocol: u32,
    },
    /// `stage` is the command code the macros belong to (e.g. `b'C'`), not an SMFIM index.
    Macro {
        stage: u8,
        pairs: MacroPairs,
    },
    /// `hostname` is the client's verified name, or `[address]` when it has none.
    Connect {
        hostname: Bytes,
        address: ClientAddress,
    },
    Helo {
        name: Bytes,
    },
    /// First item = sender, e.g. `<a@b.example>` (may be `<>`), then ESMTP args.
    Mail {
        args: NulStrings,
    },
    /// First item = recipient, then ESMTP args.
    Rcpt {
        args: NulStrings,
    },
    Data,
    Header {
        name: Bytes,
        value: Bytes,
    },
    EndOfHeaders,
    Body {
        chunk: Bytes,
    },
    /// End of message; may carry a final body chunk (usually empty).
    EndOfMessage {
        chunk: Bytes,
    },
    Abort,
    Quit,
    QuitNewConnection,
    Unknown {
        line: Bytes,
    },
}

impl Command {
    /// The wire command byte (`SMFIC_*`).
    pub fn code(&self) -> u8 {
        match self {
            Command::OptNeg { .. } => SMFIC_OPTNEG,
            Command::Macro { .. } => SMFIC_MACRO,
            Command::Connect { .. } => SMFIC_CONNECT,
            Command::Helo { .. } => SMFIC_HELO,
            Command::Mail { .. } => SMFIC_MAIL,
            Command::Rcpt { .. } => SMFIC_RCPT,
            Command::Data => SMFIC_DATA,
            Command::Header { .. } => SMFIC_HEADER,
            Command::EndOfHeaders => SMFIC_EOH,
            Command::Body { .. } => SMFIC_BODY,
            Command::EndOfMessage { .. } => SMFIC_BODYEOB,
            Command::Abort => SMFIC_ABORT,
            Command::Quit => SMFIC_QUIT,
            Command::QuitNewConnection => SMFIC_QUIT_NC,
            Command::Unknown { .. } => SMFIC_UNKNOWN,
        }
    }

    /// A short upper-case name for logs and metrics labels.
    pub fn name(&self) -> &'static str {
        command_name(self.code()).unwrap_or("?")
    }
}

/// The name of a command byte, or `None` if it is not an MTA → filter command.
pub fn command_name(code: u8) -> Option<&'static str> {
    Some(match code {
        SMFIC_OPTNEG => "OPTNEG",
        SMFIC_MACRO => "MACRO",
        SMFIC_CONNECT => "CONNECT",
        SMFIC_HELO => "HELO",
        SMFIC_MAIL => "MAIL",
        SMFIC_RCPT => "RCPT",
        SMFIC_DATA => "DATA",
        SMFIC_HEADER => "HEADER",
        SMFIC_EOH => "EOH",
        SMFIC_BODY => "BODY",
        SMFIC_BODYEOB => "BODYEOB",
        SMFIC_ABORT => "ABORT",
        SMFIC_QUIT => "QUIT",
        SMFIC_QUIT_NC => "QUIT_NC",
        SMFIC_UNKNOWN => "UNKNOWN",
        _ => return None,
    })
}

/// Why a frame could not be decoded. All variants are protocol violations by the peer; the
/// connection should be dropped (the stream position is still fine, but the peer is not).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("empty frame")]
    Empty,
    #[error("unknown command 0x{0:02x}")]
    UnknownCommand(u8),
    #[error("malformed {command} frame: {reason}")]
    Malformed {
        command: &'static str,
        reason: &'static str,
    },
}

/// Decodes one frame as produced by `split_frame` (command byte first). Never panics.
pub fn decode_command(frame: Bytes) -> Result<Command, DecodeError> {
    let Some(&code) = frame.first() else {
        return Err(DecodeError::Empty);
    };
    let name = command_name(code).ok_or(DecodeError::UnknownCommand(code))?;
    let mut c = Cursor::new(frame.slice(1..), name);
    let cmd = match code {
        SMFIC_OPTNEG => {
            let cmd = Command::OptNeg {
                version: c.u32()?,
                actions: c.u32()?,
                protocol: c.u32()?,
            };
            // Later protocol versions may append fields; libmilter ignores them too.
            return Ok(cmd);
        }
        SMFIC_MACRO => {
            let stage = c.u8()?;
            let pairs = MacroPairs::from_wire(c.rest())
                .ok_or_else(|| c.malformed("incomplete name/value pair"))?;
            Command::Macro { stage, pairs }
        }
        SMFIC_CONNECT => {
            let hostname = c.cstr()?;
            let address = decode_address(&mut c)?;
            Command::Connect { hostname, address }
        }
        SMFIC_HELO => Command::Helo {
            name: lenient_cstr(&mut c)?,
        },
        SMFIC_UNKNOWN => Command::Unknown {
            line: lenient_cstr(&mut c)?,
        },
        SMFIC_MAIL | SMFIC_RCPT => {
            let args = NulStrings::from_wire(c.rest())
                .filter(|a| !a.is_empty())
                .ok_or_else(|| c.malformed("missing NUL-terminated address"))?;
            if code == SMFIC_MAIL {
                Command::Mail { args }
            } else {
                Command::Rcpt { args }
            }
        }
        SMFIC_HEADER => Command::Header {
            name: c.cstr()?,
            value: c.cstr()?,
        },
        SMFIC_BODY => Command::Body { chunk: c.rest() },
        SMFIC_BODYEOB => Command::EndOfMessage { chunk: c.rest() },
        SMFIC_DATA => Command::Data,
        SMFIC_EOH => Command::EndOfHeaders,
        SMFIC_ABORT => Command::Abort,
        SMFIC_QUIT => Command::Quit,
        SMFIC_QUIT_NC => Command::QuitNewConnection,
        _ => return Err(DecodeError::UnknownCommand(code)),
    };
    c.finish()?;
    Ok(cmd)
}

/// A string whose NUL terminator is optional; nothing may follow the NUL.
fn lenient_cstr(c: &mut Cursor) -> Result<Bytes, DecodeError> {
    let mut rest = c.rest();
    match rest.iter().position(|&b| b == 0) {
        None => Ok(rest),
        Some(nul) if nul + 1 == rest.len() => Ok(rest.split_to(nul)),
        Some(_) => Err(c.malformed("trailing data")),
    }
}

fn decode_address(c: &mut Cursor) -> Result<ClientAddress, DecodeError> {
    let family = c.u8()?;
    if family == SMFIA_UNKNOWN {
        return Ok(ClientAddress::Unknown);
    }
    if ![SMFIA_UNIX, SMFIA_INET, SMFIA_INET6].contains(&family) {
        return Err(c.malformed("unknown address family"));
    }
    let port = c.u16()?;
    let addr = c.cstr()?;
    if family == SMFIA_UNIX {
        return Ok(ClientAddress::Unix(addr));
    }
    let text = std::str::from_utf8(&addr).map_err(|_| c.malformed("address is not ASCII"))?;
    let ip = if family == SMFIA_INET {
        text.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
    } else {
        parse_inet6(text)
    };
    let ip = ip.ok_or_else(|| c.malformed("unparsable IP address"))?;
    Ok(ClientAddress::Inet { ip, port })
}

fn parse_inet6(text: &str) -> Option<IpAddr> {
    let text = match text.get(..5) {
        Some(p) if p.eq_ignore_ascii_case("IPv6:") => &text[5..],
        _ => text,
    };
    let text = text.split_once('%').map_or(text, |(addr, _zone)| addr);
    match text.parse::<Ipv6Addr>() {
        Ok(v6) => Some(IpAddr::V6(v6).to_canonical()),
        Err(_) => text.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
    }
}

/// Appends `cmd` as one frame. Strings must not contain NUL (checked in debug builds).
/// Used by test clients and the load generator; the filter itself only decodes commands.
pub fn encode_command(cmd: &Command, buf: &mut BytesMut) {
    write_frame_with(buf, cmd.code(), |b| match cmd {
        Command::OptNeg {
            version,
            actions,
            protocol,
        } => {
            b.put_u32(*version);
            b.put_u32(*actions);
            b.put_u32(*protocol);
        }
        Command::Macro { stage, pairs } => {
            b.put_u8(*stage);
            b.put_slice(pairs.as_bytes());
        }
        Command::Connect { hostname, address } => {
            put_cstr(b, hostname);
            match address {
                ClientAddress::Unknown => b.put_u8(SMFIA_UNKNOWN),
                ClientAddress::Unix(path) => {
                    b.put_u8(SMFIA_UNIX);
                    b.put_u16(0);
                    put_cstr(b, path);
                }
                ClientAddress::Inet { ip, port } => {
                    b.put_u8(if ip.is_ipv4() {
                        SMFIA_INET
                    } else {
                        SMFIA_INET6
                    });
                    b.put_u16(*port);
                    // Postfix style: no "IPv6:" prefix. Writing into BytesMut cannot fail.
                    let _ = write!(b, "{ip}");
                    b.put_u8(0);
                }
            }
        }
        Command::Helo { name } => put_cstr(b, name),
        Command::Unknown { line } => put_cstr(b, line),
        Command::Mail { args } | Command::Rcpt { args } => b.put_slice(args.as_bytes()),
        Command::Header { name, value } => {
            put_cstr(b, name);
            put_cstr(b, value);
        }
        Command::Body { chunk } | Command::EndOfMessage { chunk } => b.put_slice(chunk),
        Command::Data
        | Command::EndOfHeaders
        | Command::Abort
        | Command::Quit
        | Command::QuitNewConnection => {}
    });
}

pub(crate) fn put_cstr(b: &mut BytesMut, s: &[u8]) {
    debug_assert!(!s.contains(&0), "NUL inside a milter string");
    b.put_slice(s);
    b.put_u8(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(code: u8, data: &[u8]) -> Result<Command, DecodeError> {
        decode_command(Bytes::from([&[code][..], data].concat()))
    }

    fn malformed(code: u8, data: &[u8]) -> bool {
        matches!(decode(code, data), Err(DecodeError::Malformed { .. }))
    }

    #[test]
    fn connect_families() {
        let inet = |ip: &str, port| ClientAddress::Inet {
            ip: ip.parse().unwrap(),
            port,
        };
        let unix = ClientAddress::Unix(Bytes::from_static(b"/run/smtpd.sock"));
        let cases: [(&[u8], ClientAddress); 8] = [
            (b"4\x30\x39192.0.2.7\0", inet("192.0.2.7", 0x3039)),
            (b"6\0\x192001:db8::1\0", inet("2001:db8::1", 25)),
            (b"6\0\x19IPv6:2001:db8::1\0", inet("2001:db8::1", 25)),
            (b"6\0\x19ipv6:2001:db8::1\0", inet("2001:db8::1", 25)),
            (b"6\0\x19::ffff:192.0.2.9\0", inet("192.0.2.9", 25)),
            (b"6\0\x19fe80::1%eth0\0", inet("fe80::1", 25)),
            (b"L\0\0/run/smtpd.sock\0", unix),
            (b"U", ClientAddress::Unknown),
        ];
        for (tail, address) in cases {
            let hostname = Bytes::from_static(b"[192.0.2.7]");
            let data = [&hostname[..], b"\0", tail].concat();
            assert_eq!(
                decode(b'C', &data),
                Ok(Command::Connect { hostname, address })
            );
        }
        let bad: [&[u8]; 7] = [
            b"mx.example",                 // no NUL after hostname
            b"mx\0",                       // no family
            b"mx\0X\0\0x\0",               // unknown family
            b"mx\x004\0",                  // short port
            b"mx\x004\0\x19192.0.2.300\0", // bad IPv4
            b"mx\x004\0\x19192.0.2.1",     // address without NUL
            b"mx\0Ujunk",                  // trailing data after 'U'
        ];
        for data in bad {
            assert!(malformed(b'C', data), "{data:?}");
        }
    }

    #[test]
    fn helo_terminator_is_optional() {
        let helo = Ok(Command::Helo {
            name: Bytes::from_static(b"client.example"),
        });
        assert_eq!(decode(b'H', b"client.example\0"), helo);
        assert_eq!(decode(b'H', b"client.example"), helo);
        assert!(malformed(b'H', b"a\0b"));
    }

    #[test]
    fn malformed_and_unknown() {
        assert_eq!(decode_command(Bytes::new()), Err(DecodeError::Empty));
        assert_eq!(decode(b'z', b""), Err(DecodeError::UnknownCommand(b'z')));
        assert!(malformed(b'O', b"\0\0\0\x06\0\0\x01\xff\0\0\x1f")); // short OPTNEG
        assert!(malformed(b'M', b""));
        assert!(malformed(b'M', b"<a@b.example>"));
        assert!(malformed(b'R', b"<a@b.example>\0SIZE=1"));
        assert!(malformed(b'L', b"Subject\0hi"));
        assert!(malformed(b'L', b"Subject\0hi\0x"));
        assert!(malformed(b'D', b""));
        assert!(malformed(b'D', b"Cj\0"));
        assert!(malformed(b'T', b"x"));
        assert!(malformed(b'Q', b"\0"));
    }

    #[test]
    fn optneg_macros_and_mail() {
        // Postfix's offer, with bytes a future version might append.
        let optneg = decode(b'O', b"\0\0\0\x06\0\0\x01\xff\0\x1f\xff\xffextra");
        let expected = Command::OptNeg {
            version: 6,
            actions: 0x1ff,
            protocol: 0x1f_ffff,
        };
        assert_eq!(optneg, Ok(expected));

        let data = b"Cj\0mx.example\0{daemon_name}\0smtpd\0_\0\0";
        let Ok(Command::Macro { stage, pairs }) = decode(b'D', data) else {
            panic!("macro decode failed");
        };
        assert_eq!((stage, pairs.len()), (b'C', 3));
        assert_eq!(pairs.get(b"{j}"), Some(&b"mx.example"[..]));
        assert_eq!(pairs.get(b"daemon_name"), Some(&b"smtpd"[..]));
        assert_eq!(pairs.get(b"_"), Some(&b""[..]));
        assert_eq!(pairs.get(b"i"), None);

        let Ok(Command::Mail { args }) = decode(b'M', b"<>\0BODY=8BITMIME\0SIZE=10\0") else {
            panic!("mail decode failed");
        };
        assert_eq!(args.first(), Some(&b"<>"[..]));
        let rest: Vec<&[u8]> = args.rest().collect();
        assert_eq!(rest, [&b"BODY=8BITMIME"[..], b"SIZE=10"]);
    }
}
