//! The milter wire protocol (libmilter protocol version 6), as a pure codec: no I/O, no
//! async, no policy. The server feeds socket bytes through [`split_frame`] and
//! [`decode_command`], and writes [`encode_reply`] output back.
//!
//! Constants and framing were checked against libmilter's `mfdef.h` (sendmail 8.14+) and
//! Postfix's `milter8.c`, which is the MTA side most deployments talk to.
//!
//! Zero-copy: decoded strings are `Bytes` slices of the frame, which shares the read
//! buffer's allocation, so holding one keeps that whole allocation alive. Copy
//! (`Bytes::copy_from_slice`) what a session keeps for its lifetime, such as the HELO name.
//! Strings are raw bytes, not `str`: SMTP envelope data and headers need not be UTF-8.
//!
//! Typical server loop: `while let Some(frame) = split_frame(&mut buf, max)? { let cmd =
//! decode_command(frame)?; ... if negotiated.expects_reply(cmd.code()) { encode_reply(..) } }`.

pub mod command;
pub mod frame;
pub mod negotiate;
pub mod reply;

use std::fmt;

use bytes::{Buf, Bytes};

pub use command::{decode_command, encode_command, ClientAddress, Command, DecodeError};
pub use frame::{split_frame, write_frame, write_frame_with, FrameError, DEFAULT_MAX_FRAME_LEN};
pub use negotiate::{flags, negotiate, Needs, Negotiated, NegotiationError, StageSet};
pub use reply::{decode_reply, encode_reply, smtp_reply_text, Reply, ReplyTextError};

/// The protocol version we speak (and the highest we ever agree to).
pub const MILTER_VERSION: u32 = 6;

/// A list of NUL-terminated strings kept as one `Bytes` slice, so a MAIL or RCPT command
/// costs no `Vec` per frame. Invariant: the buffer is empty or ends with NUL.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct NulStrings(Bytes);

impl NulStrings {
    /// Builds the wire form of `items`. Items must not contain NUL (checked in debug builds);
    /// a NUL would silently split the item in two on the other side.
    pub fn from_items(items: &[&[u8]]) -> Self {
        let mut v = Vec::with_capacity(items.iter().map(|i| i.len() + 1).sum());
        for item in items {
            debug_assert!(!item.contains(&0), "NUL inside a milter string");
            v.extend_from_slice(item);
            v.push(0);
        }
        NulStrings(Bytes::from(v))
    }

    /// Wraps wire bytes; `None` unless the buffer is empty or NUL-terminated.
    pub fn from_wire(bytes: Bytes) -> Option<Self> {
        (bytes.is_empty() || bytes.last() == Some(&0)).then_some(NulStrings(bytes))
    }

    /// The items, without their terminators.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        nul_items(&self.0)
    }

    /// The first item: the address for MAIL/RCPT (e.g. `<a@b.example>`, or `<>`).
    pub fn first(&self) -> Option<&[u8]> {
        self.iter().next()
    }

    /// The items after the first: ESMTP parameters for MAIL/RCPT (e.g. `SIZE=1024`).
    pub fn rest(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.iter().skip(1)
    }

    pub fn len(&self) -> usize {
        self.0.iter().filter(|&&b| b == 0).count()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The wire form (every item NUL-terminated).
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }
}

impl fmt::Debug for NulStrings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.iter().map(String::from_utf8_lossy))
            .finish()
    }
}

/// Macro name/value pairs from a `D` (MACRO) command, kept as one `Bytes` slice.
/// Invariant: empty, or NUL-terminated with an even number of strings.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct MacroPairs(Bytes);

impl MacroPairs {
    /// Builds the wire form. Names and values must not contain NUL (checked in debug builds).
    pub fn from_pairs(pairs: &[(&[u8], &[u8])]) -> Self {
        let items: Vec<&[u8]> = pairs.iter().flat_map(|&(k, v)| [k, v]).collect();
        MacroPairs(NulStrings::from_items(&items).0)
    }

    /// Wraps wire bytes; `None` unless they hold complete name/value pairs.
    pub fn from_wire(bytes: Bytes) -> Option<Self> {
        let s = NulStrings::from_wire(bytes)?;
        (s.len() % 2 == 0).then_some(MacroPairs(s.0))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        let mut items = nul_items(&self.0);
        std::iter::from_fn(move || Some((items.next()?, items.next()?)))
    }

    /// Looks a macro up by name. Braces are ignored on both sides, as libmilter's
    /// `smfi_getsymval` does for one-letter names: `i`, `{i}` find either spelling.
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        let want = strip_braces(name);
        self.iter()
            .find(|(k, _)| strip_braces(k) == want)
            .map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }
}

/// The NUL-terminated items of `b` (which is empty or ends with NUL).
fn nul_items(b: &[u8]) -> impl Iterator<Item = &[u8]> + '_ {
    // "a\0b\0" minus its last NUL splits into exactly the items; an empty buffer has none
    // (while splitting "" would yield one empty item, hence the `take(0)`).
    let (body, n) = match b.strip_suffix(&[0]) {
        Some(body) => (body, usize::MAX),
        None => (&[][..], 0),
    };
    body.split(|&c| c == 0).take(n)
}

impl fmt::Debug for MacroPairs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.iter()
                    .map(|(k, v)| (String::from_utf8_lossy(k), String::from_utf8_lossy(v))),
            )
            .finish()
    }
}

fn strip_braces(name: &[u8]) -> &[u8] {
    match name {
        [b'{', inner @ .., b'}'] => inner,
        _ => name,
    }
}

/// Reads the fields of one frame's data. Every accessor fails with `Malformed` naming the
/// command, so decoders stay a flat sequence of `?`s.
pub(crate) struct Cursor {
    data: Bytes,
    command: &'static str,
}

impl Cursor {
    pub(crate) fn new(data: Bytes, command: &'static str) -> Self {
        Cursor { data, command }
    }

    pub(crate) fn malformed(&self, reason: &'static str) -> DecodeError {
        DecodeError::Malformed {
            command: self.command,
            reason,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn take(&mut self, n: usize, reason: &'static str) -> Result<Bytes, DecodeError> {
        if self.data.len() < n {
            return Err(self.malformed(reason));
        }
        Ok(self.data.split_to(n))
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1, "truncated")?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2, "truncated 16-bit field")?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4, "truncated 32-bit field")?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A NUL-terminated string, returned without its terminator.
    pub(crate) fn cstr(&mut self) -> Result<Bytes, DecodeError> {
        let Some(nul) = self.data.iter().position(|&b| b == 0) else {
            return Err(self.malformed("missing NUL terminator"));
        };
        let s = self.data.split_to(nul);
        self.data.advance(1);
        Ok(s)
    }

    /// Everything left.
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.data)
    }

    /// Fails if anything is left: extra bytes mean we misread the frame.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.data.is_empty() {
            Ok(())
        } else {
            Err(self.malformed("trailing data"))
        }
    }
}

#[cfg(test)]
mod tests {
    //! Cross-module properties: encode → split_frame → decode round trips, and garbage in.
    use super::*;
    use bytes::BytesMut;
    use proptest::prelude::*;
    use std::net::IpAddr;

    fn cstring() -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(1u8..=255, 0..40).prop_map(Bytes::from)
    }

    fn raw() -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from)
    }

    fn strings(min: usize) -> impl Strategy<Value = NulStrings> {
        proptest::collection::vec(cstring(), min..5)
            .prop_map(|v| NulStrings::from_items(&v.iter().map(|b| &b[..]).collect::<Vec<_>>()))
    }

    fn address() -> impl Strategy<Value = ClientAddress> {
        prop_oneof![
            Just(ClientAddress::Unknown),
            cstring().prop_map(ClientAddress::Unix),
            // Decoding canonicalises IPv4-mapped IPv6 addresses, so generate canonical ones.
            (any::<IpAddr>(), any::<u16>()).prop_map(|(ip, port)| ClientAddress::Inet {
                ip: ip.to_canonical(),
                port
            }),
        ]
    }

    fn command() -> impl Strategy<Value = Command> {
        let pairs = proptest::collection::vec((cstring(), cstring()), 0..5).prop_map(|v| {
            MacroPairs::from_pairs(&v.iter().map(|(k, v)| (&k[..], &v[..])).collect::<Vec<_>>())
        });
        prop_oneof![
            (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(version, actions, protocol)| {
                Command::OptNeg {
                    version,
                    actions,
                    protocol,
                }
            }),
            (any::<u8>(), pairs).prop_map(|(stage, pairs)| Command::Macro { stage, pairs }),
            (cstring(), address())
                .prop_map(|(hostname, address)| Command::Connect { hostname, address }),
            cstring().prop_map(|name| Command::Helo { name }),
            strings(1).prop_map(|args| Command::Mail { args }),
            strings(1).prop_map(|args| Command::Rcpt { args }),
            Just(Command::Data),
            (cstring(), cstring()).prop_map(|(name, value)| Command::Header { name, value }),
            Just(Command::EndOfHeaders),
            raw().prop_map(|chunk| Command::Body { chunk }),
            raw().prop_map(|chunk| Command::EndOfMessage { chunk }),
            Just(Command::Abort),
            Just(Command::Quit),
            Just(Command::QuitNewConnection),
            cstring().prop_map(|line| Command::Unknown { line }),
        ]
    }

    fn reply() -> impl Strategy<Value = Reply> {
        let header = || (any::<u32>(), cstring(), cstring());
        prop_oneof![
            Just(Reply::Continue),
            Just(Reply::Accept),
            Just(Reply::Reject),
            Just(Reply::Tempfail),
            Just(Reply::Discard),
            Just(Reply::Skip),
            Just(Reply::Progress),
            cstring().prop_map(|text| Reply::ReplyCode { text }),
            (cstring(), cstring()).prop_map(|(name, value)| Reply::AddHeader { name, value }),
            header().prop_map(|(index, name, value)| Reply::InsertHeader { index, name, value }),
            header().prop_map(|(index, name, value)| Reply::ChangeHeader { index, name, value }),
            cstring().prop_map(|reason| Reply::Quarantine { reason }),
            (
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                proptest::collection::vec((any::<u32>(), cstring()), 0..4)
            )
                .prop_map(|(version, actions, protocol, macros)| Reply::OptNeg {
                    version,
                    actions,
                    protocol,
                    macros
                }),
        ]
    }

    /// Feeds `wire` to `split_frame` in pieces of the given sizes and returns the frames.
    fn split_chunked(mut wire: BytesMut, cuts: &[usize]) -> Vec<Bytes> {
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        let mut cuts = cuts.iter().cycle();
        while !wire.is_empty() {
            let n = (*cuts.next().unwrap()).min(wire.len());
            buf.extend_from_slice(&wire.split_to(n));
            while let Some(f) = split_frame(&mut buf, DEFAULT_MAX_FRAME_LEN).unwrap() {
                frames.push(f);
            }
        }
        assert!(buf.is_empty());
        frames
    }

    /// Whatever decodes must re-encode to something that decodes to the same value.
    fn check_frame(frame: Bytes) {
        if let Ok(cmd) = decode_command(frame.clone()) {
            let mut buf = BytesMut::new();
            encode_command(&cmd, &mut buf);
            let again = split_frame(&mut buf, usize::MAX).unwrap().unwrap();
            assert_eq!(decode_command(again), Ok(cmd));
        }
        if let Ok(reply) = decode_reply(frame) {
            let mut buf = BytesMut::new();
            encode_reply(&reply, &mut buf);
            let again = split_frame(&mut buf, usize::MAX).unwrap().unwrap();
            assert_eq!(decode_reply(again), Ok(reply));
        }
    }

    proptest! {
        #[test]
        fn commands_round_trip(cmds in proptest::collection::vec(command(), 1..10),
                               cuts in proptest::collection::vec(1usize..100, 1..20)) {
            let mut wire = BytesMut::new();
            for c in &cmds {
                encode_command(c, &mut wire);
            }
            let frames = split_chunked(wire, &cuts);
            let decoded: Vec<_> = frames.into_iter().map(decode_command).collect();
            prop_assert_eq!(decoded, cmds.into_iter().map(Ok).collect::<Vec<_>>());
        }

        #[test]
        fn replies_round_trip(replies in proptest::collection::vec(reply(), 1..10),
                              cuts in proptest::collection::vec(1usize..100, 1..20)) {
            let mut wire = BytesMut::new();
            for r in &replies {
                encode_reply(r, &mut wire);
            }
            let frames = split_chunked(wire, &cuts);
            let decoded: Vec<_> = frames.into_iter().map(decode_reply).collect();
            prop_assert_eq!(decoded, replies.into_iter().map(Ok).collect::<Vec<_>>());
        }

        #[test]
        fn arbitrary_stream_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(frame)) = split_frame(&mut buf, 4096) {
                check_frame(frame);
            }
        }

        #[test]
        fn arbitrary_frame_never_panics(
            code in prop::sample::select(b"OCDHMRTLNBEAQKUcartdyhimqsp+z".to_vec()),
            data in proptest::collection::vec(
                prop_oneof![Just(0u8), Just(b'4'), Just(b'6'), any::<u8>()], 0..64),
        ) {
            let mut frame = vec![code];
            frame.extend_from_slice(&data);
            check_frame(Bytes::from(frame));
        }

        #[test]
        fn nul_strings_round_trip(items in proptest::collection::vec(cstring(), 0..6)) {
            let refs: Vec<&[u8]> = items.iter().map(|b| &b[..]).collect();
            let s = NulStrings::from_items(&refs);
            prop_assert_eq!(s.iter().collect::<Vec<_>>(), refs.clone());
            prop_assert_eq!(s.len(), refs.len());
            prop_assert_eq!(s.first(), refs.first().copied());
        }
    }
}
