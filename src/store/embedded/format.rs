//! The stored value: a fixed-size encoded entry, under the key text (`t:...`, `c:...`). The
//! same encoding was the value of the one redb table of older versions (read by `migrate.rs`).

use redb::TableDefinition;

use crate::store::record::{self, Order};
use crate::store::Entry;

/// The one table of an older version's redb file: key → [`encode`]d entry.
pub(super) const LEGACY_TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("greylist_v1");

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
