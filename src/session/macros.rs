//! The MTA's macros, kept per stage as the frame's own bytes, and the small text helpers the
//! session uses on what the MTA sends.

use crate::protocol::command::MacroPairs;

/// Macros by the stage they were sent for. Kept as the frame's own bytes: no copy per frame.
#[derive(Default)]
pub(super) struct Macros {
    by_stage: [Option<MacroPairs>; 8],
}

impl Macros {
    fn slot(stage: u8) -> usize {
        match stage {
            b'C' => 0,
            b'H' => 1,
            b'M' => 2,
            b'R' => 3,
            b'T' => 4,
            b'N' => 5,
            b'E' => 6,
            _ => 7,
        }
    }

    pub(super) fn set(&mut self, stage: u8, pairs: MacroPairs) {
        self.by_stage[Self::slot(stage)] = Some(pairs);
    }

    /// Latest value of a macro; `name` without braces matches `{name}` too.
    pub(super) fn get(&self, name: &str) -> Option<&[u8]> {
        let bare = name.trim_start_matches('{').trim_end_matches('}');
        self.by_stage.iter().rev().flatten().find_map(|pairs| {
            pairs.iter().find_map(|(k, v)| {
                let k = trim_braces(k);
                (k == bare.as_bytes()).then_some(v)
            })
        })
    }

    /// Forget the message-stage macros (ABORT / end of message); keep CONNECT and HELO ones.
    pub(super) fn reset_message(&mut self) {
        for slot in &mut self.by_stage[2..] {
            *slot = None;
        }
    }
}

fn trim_braces(k: &[u8]) -> &[u8] {
    match k {
        [b'{', inner @ .., b'}'] => inner,
        _ => k,
    }
}

pub(super) fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Strips `<...>` from an envelope address as the MTA sends it.
pub(super) fn bare_address(arg: &[u8]) -> String {
    let s = String::from_utf8_lossy(arg);
    let s = s.trim();
    let s = s.strip_prefix('<').unwrap_or(s);
    let s = s.strip_suffix('>').unwrap_or(s);
    s.to_string()
}
