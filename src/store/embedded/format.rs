//! The file format: one redb table of fixed-size encoded entries.

use redb::TableDefinition;

use crate::store::record::{self, Order};
use crate::store::Entry;

/// The one table: key → [`encode`]d entry.
pub(super) const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("greylist_v1");

/// Length of an encoded entry (the shared [`record`] layout).
pub const ENCODED_LEN: usize = record::LEN;

/// Encodes an entry: the [`record`] layout, little-endian.
pub fn encode(e: &Entry) -> [u8; ENCODED_LEN] {
    record::encode(e, Order::Little)
}

/// Decodes what [`encode`] wrote; `None` for another version or length.
pub fn decode(b: &[u8]) -> Option<Entry> {
    record::decode(b, Order::Little)
}
