//! The file format: one redb table of fixed-size encoded entries.

use redb::TableDefinition;

use crate::store::Entry;

/// The one table: key → [`encode`]d entry.
pub(super) const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("greylist_v1");

/// Entry layout version (first byte of a stored value).
const FORMAT_V1: u8 = 1;

/// Length of an encoded entry: version byte + 8 + 8 + 4 + 4 + 8.
pub const ENCODED_LEN: usize = 33;

/// Encodes an entry: version byte 1, then `first_seen`, `last_seen` (u64), `passed`, `blocked`
/// (u32), `expires` (u64), all little-endian.
pub fn encode(e: &Entry) -> [u8; ENCODED_LEN] {
    let mut b = [0u8; ENCODED_LEN];
    b[0] = FORMAT_V1;
    b[1..9].copy_from_slice(&e.first_seen.to_le_bytes());
    b[9..17].copy_from_slice(&e.last_seen.to_le_bytes());
    b[17..21].copy_from_slice(&e.passed.to_le_bytes());
    b[21..25].copy_from_slice(&e.blocked.to_le_bytes());
    b[25..33].copy_from_slice(&e.expires.to_le_bytes());
    b
}

/// Decodes what [`encode`] wrote; `None` for another version or length.
pub fn decode(b: &[u8]) -> Option<Entry> {
    let [FORMAT_V1, rest @ ..] = b else {
        return None;
    };
    let (first_seen, rest) = rest.split_first_chunk()?;
    let (last_seen, rest) = rest.split_first_chunk()?;
    let (passed, rest) = rest.split_first_chunk()?;
    let (blocked, rest) = rest.split_first_chunk()?;
    let (expires, rest) = rest.split_first_chunk()?;
    rest.is_empty().then(|| Entry {
        first_seen: u64::from_le_bytes(*first_seen),
        last_seen: u64::from_le_bytes(*last_seen),
        passed: u32::from_le_bytes(*passed),
        blocked: u32::from_le_bytes(*blocked),
        expires: u64::from_le_bytes(*expires),
    })
}
