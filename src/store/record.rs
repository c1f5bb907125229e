//! The 33-byte record both stores keep per entry: a version byte (1), then `first_seen`,
//! `last_seen` (u64), `passed`, `blocked` (u32), `expires` (u64). The embedded file has always
//! written it little-endian and Redis big-endian; each keeps its byte order so stored data
//! stays readable.

use super::Entry;

/// The record's version byte.
pub const VERSION: u8 = 1;

/// Length of a record: version byte + 8 + 8 + 4 + 4 + 8.
pub const LEN: usize = 33;

/// The byte order of the numbers in a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// The embedded store's file.
    Little,
    /// Redis values.
    Big,
}

macro_rules! to_bytes {
    ($v:expr, $order:expr) => {
        match $order {
            Order::Little => $v.to_le_bytes(),
            Order::Big => $v.to_be_bytes(),
        }
    };
}

macro_rules! from_bytes {
    ($t:ty, $b:expr, $order:expr) => {
        match $order {
            Order::Little => <$t>::from_le_bytes(*$b),
            Order::Big => <$t>::from_be_bytes(*$b),
        }
    };
}

/// The record of `e`.
pub fn encode(e: &Entry, order: Order) -> [u8; LEN] {
    let mut b = [0u8; LEN];
    b[0] = VERSION;
    b[1..9].copy_from_slice(&to_bytes!(e.first_seen, order));
    b[9..17].copy_from_slice(&to_bytes!(e.last_seen, order));
    b[17..21].copy_from_slice(&to_bytes!(e.passed, order));
    b[21..25].copy_from_slice(&to_bytes!(e.blocked, order));
    b[25..33].copy_from_slice(&to_bytes!(e.expires, order));
    b
}

/// Decodes what [`encode`] wrote in `order`; `None` for another version or length.
pub fn decode(b: &[u8], order: Order) -> Option<Entry> {
    let [VERSION, rest @ ..] = b else {
        return None;
    };
    let (first_seen, rest) = rest.split_first_chunk()?;
    let (last_seen, rest) = rest.split_first_chunk()?;
    let (passed, rest) = rest.split_first_chunk()?;
    let (blocked, rest) = rest.split_first_chunk()?;
    let (expires, rest) = rest.split_first_chunk()?;
    rest.is_empty().then(|| Entry {
        first_seen: from_bytes!(u64, first_seen, order),
        last_seen: from_bytes!(u64, last_seen, order),
        passed: from_bytes!(u32, passed, order),
        blocked: from_bytes!(u32, blocked, order),
        expires: from_bytes!(u64, expires, order),
    })
}
