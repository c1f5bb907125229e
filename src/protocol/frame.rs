//! Packet framing shared by both directions of the milter protocol.
//!
//! Every packet is `u32 length (big-endian)`, then one command byte, then `length - 1`
//! data bytes. The length covers the command byte, so a length of 0 can never be valid.
//!
//! The splitter follows the mini-redis pattern: look at the buffered bytes first, and only
//! cut a frame when it is complete. "Not enough bytes yet" is an ordinary `Ok(None)`, so a
//! read loop can simply read more and call again; the buffer is left untouched in that case.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Bytes taken by the length prefix.
pub const LEN_BYTES: usize = 4;

/// A sensible default for `max_len`: 1 MiB.
///
/// libmilter's largest negotiable data size is 1 MiB - 1 (`SMFIP_MDS_1M`); Postfix does not
/// chunk headers, and its `header_size_limit` defaults to 100 KiB, so 64 KiB (libmilter's
/// default) would be too tight for a filter that receives headers from Postfix.
pub const DEFAULT_MAX_FRAME_LEN: usize = 1024 * 1024;

/// Why the byte stream can't be split into frames any more. Both are fatal for the connection:
/// after a bad length prefix there is no way to find the next frame boundary.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame length {len} exceeds limit {max}")]
    TooLarge { len: usize, max: usize },
    #[error("zero-length frame")]
    Empty,
}

/// Splits one complete frame (command byte + data, without the length prefix) off the front
/// of `buf`.
///
/// * `Ok(None)`: more bytes are needed; `buf` is untouched.
/// * `Ok(Some(frame))`: `frame[0]` is the command byte; it is never empty.
/// * `Err(_)`: the length prefix is 0 or larger than `max_len` (which bounds the length
///   field, i.e. command byte + data). The limit is checked as soon as the prefix is
///   readable, so an oversized frame is refused before its body is buffered.
///
/// Never allocates: the frame is cut off with `BytesMut::split_to` and frozen, sharing the
/// read buffer's storage. Feed the result to `decode_command` / `decode_reply`.
pub fn split_frame(buf: &mut BytesMut, max_len: usize) -> Result<Option<Bytes>, FrameError> {
    let Some(prefix) = buf.get(..LEN_BYTES) else {
        return Ok(None);
    };
    // u32 -> usize is lossless on every platform this can run on (>= 32-bit).
    let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > max_len {
        return Err(FrameError::TooLarge { len, max: max_len });
    }
    if buf.len() - LEN_BYTES < len {
        return Ok(None);
    }
    buf.advance(LEN_BYTES);
    Ok(Some(buf.split_to(len).freeze()))
}

/// Appends a frame: length prefix, `cmd`, then each of `parts` in order (the parts are
/// concatenated; they carry no separators of their own, so NUL terminators must be passed
/// as parts or be part of the slices).
///
/// # Panics
/// If the frame would exceed `u32::MAX` bytes, which no caller can reach by accident.
pub fn write_frame(buf: &mut BytesMut, cmd: u8, parts: &[&[u8]]) {
    let data_len: usize = parts.iter().map(|p| p.len()).sum();
    buf.reserve(LEN_BYTES + 1 + data_len);
    buf.put_u32(frame_len(data_len));
    buf.put_u8(cmd);
    for part in parts {
        buf.put_slice(part);
    }
}

/// Appends a frame whose payload is written by `fill` straight into `buf` (no temporary
/// buffer); the length prefix is patched in afterwards. This is what the encoders use.
///
/// # Panics
/// If `fill` writes more than `u32::MAX - 1` bytes.
pub fn write_frame_with<F: FnOnce(&mut BytesMut)>(buf: &mut BytesMut, cmd: u8, fill: F) {
    let start = buf.len();
    buf.put_u32(0);
    buf.put_u8(cmd);
    fill(buf);
    let data_len = buf.len() - start - LEN_BYTES - 1;
    buf[start..start + LEN_BYTES].copy_from_slice(&frame_len(data_len).to_be_bytes());
}

#[allow(
    clippy::expect_used,
    reason = "only our own replies are encoded: at most a few KiB, never 4 GiB"
)]
fn frame_len(data_len: usize) -> u32 {
    data_len
        .checked_add(1)
        .and_then(|n| u32::try_from(n).ok())
        .expect("milter frame longer than u32::MAX")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn framed(cmd: u8, data: &[u8]) -> BytesMut {
        let mut buf = BytesMut::new();
        write_frame(&mut buf, cmd, &[data]);
        buf
    }

    #[test]
    fn wire_layout() {
        let buf = framed(b'H', b"mx\0");
        assert_eq!(&buf[..], b"\0\0\0\x04Hmx\0");
        let mut with = BytesMut::new();
        write_frame_with(&mut with, b'H', |b| b.put_slice(b"mx\0"));
        assert_eq!(buf, with);
    }

    #[test]
    fn zero_length_is_error() {
        let mut buf = BytesMut::from(&b"\0\0\0\0rest"[..]);
        assert_eq!(split_frame(&mut buf, 100), Err(FrameError::Empty));
    }

    #[test]
    fn short_prefix_is_incomplete() {
        let mut buf = BytesMut::from(&b"\0\0\0"[..]);
        assert_eq!(split_frame(&mut buf, 100), Ok(None));
        assert_eq!(buf.len(), 3);
    }

    #[test]
    fn too_large_is_refused_before_body_arrives() {
        let mut buf = BytesMut::from(&b"\0\x01\0\0B"[..]);
        assert_eq!(
            split_frame(&mut buf, 65535),
            Err(FrameError::TooLarge {
                len: 65536,
                max: 65535
            })
        );
    }

    proptest! {
        #[test]
        fn over_limit_gives_too_large(data in proptest::collection::vec(any::<u8>(), 1..300),
                                      max in 0usize..300) {
            let mut buf = framed(b'B', &data);
            let len = data.len() + 1;
            let got = split_frame(&mut buf, max);
            if len > max {
                prop_assert_eq!(got, Err(FrameError::TooLarge { len, max }));
            } else {
                prop_assert_eq!(got.unwrap().unwrap().len(), len);
            }
        }

        #[test]
        fn random_chunking_reassembles(
            frames in proptest::collection::vec(
                (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..200)), 1..8),
            cuts in proptest::collection::vec(1usize..64, 1..64),
        ) {
            let mut wire = BytesMut::new();
            for (cmd, data) in &frames {
                write_frame(&mut wire, *cmd, &[data]);
            }
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            let mut cuts = cuts.into_iter().cycle();
            while !wire.is_empty() {
                let n = cuts.next().unwrap().min(wire.len());
                buf.extend_from_slice(&wire.split_to(n));
                loop {
                    let before = buf.len();
                    match split_frame(&mut buf, 1024).unwrap() {
                        Some(f) => got.push(f),
                        None => { prop_assert_eq!(buf.len(), before); break; }
                    }
                }
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(got.len(), frames.len());
            for (f, (cmd, data)) in got.iter().zip(&frames) {
                prop_assert_eq!(f[0], *cmd);
                prop_assert_eq!(&f[1..], &data[..]);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512),
                                       max in 0usize..600) {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(f)) = split_frame(&mut buf, max) {
                prop_assert!(!f.is_empty());
            }
        }
    }
}
