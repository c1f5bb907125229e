//! Arbitrary bytes through frame splitting and both decoders. Must never panic; whatever
//! decodes must re-encode into something that decodes to the same value.
//!
//! Run: `bash tests/fuzz.sh decode` (stable toolchain), or `cargo +nightly fuzz run decode`.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use mxsentry::protocol::{
    decode_command, decode_reply, encode_command, encode_reply, negotiate, split_frame, Command,
    FrameError, Needs, StageSet,
};

/// Small enough that `TooLarge` is reachable from short inputs.
const MAX_FRAME: usize = 4096;

fuzz_target!(|data: &[u8]| {
    // As a byte stream off the socket.
    let whole = split_all(&[data]);
    // The same stream arriving in two reads must give the same frames.
    let (a, b) = data.split_at(data.len() / 2);
    assert_eq!(split_all(&[a, b]), whole);
    for frame in whole.0 {
        check(frame);
    }
    // As a single frame, so the decoders see inputs without a valid length prefix too.
    check(Bytes::copy_from_slice(data));
});

/// Splits the concatenated `reads`, returning the frames and how the stream ended.
fn split_all(reads: &[&[u8]]) -> (Vec<Bytes>, Option<FrameError>) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for read in reads {
        buf.extend_from_slice(read);
        loop {
            match split_frame(&mut buf, MAX_FRAME) {
                Ok(Some(frame)) => {
                    assert!(!frame.is_empty() && frame.len() <= MAX_FRAME);
                    frames.push(frame);
                }
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    (frames, None)
}

fn check(frame: Bytes) {
    if let Ok(cmd) = decode_command(frame.clone()) {
        let mut buf = BytesMut::new();
        encode_command(&cmd, &mut buf);
        let again = split_frame(&mut buf, usize::MAX)
            .expect("encoded command must frame")
            .expect("encoded command must be complete");
        assert!(buf.is_empty());
        assert_eq!(decode_command(again).as_ref(), Ok(&cmd));

        if let Command::OptNeg {
            version,
            actions,
            protocol,
        } = cmd
        {
            let needs = Needs {
                actions: actions.rotate_left(3),
                stages: StageSet::CONNECT | StageSet::RCPT,
                reply_stages: StageSet::RCPT,
                macros: vec![(0, "{client_addr} j".into())],
            };
            if let Ok(n) = negotiate(version, actions, protocol, &needs) {
                // Never grant more than was offered; MTAs drop filters that do.
                assert_eq!(n.actions & !actions, 0);
                assert_eq!(n.protocol & !protocol, 0);
                let mut out = BytesMut::new();
                encode_reply(&n.reply(&needs.macros), &mut out);
            }
        }
    }
    if let Ok(reply) = decode_reply(frame) {
        let mut buf = BytesMut::new();
        encode_reply(&reply, &mut buf);
        let again = split_frame(&mut buf, usize::MAX)
            .expect("encoded reply must frame")
            .expect("encoded reply must be complete");
        assert!(buf.is_empty());
        assert_eq!(decode_reply(again).as_ref(), Ok(&reply));
    }
}
