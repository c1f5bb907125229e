//! The Lua scripts: compare-and-set of one key (the greylist decision's write) and the
//! conditional delete of purge. Each touches only the keys it is given, so a decision stays one
//! round trip (and, on a cluster, one hash slot).

use ::redis::Value;

use crate::store::StoreError;

/// Compare-and-set: `KEYS[1]` key; `ARGV[1]` expected bytes (empty = absent); `ARGV[2]` `p` (put)
/// or `d` (delete); `ARGV[3]` new value; `ARGV[4]` TTL in seconds. Returns `{1}` when applied,
/// `{0, current}` (empty = absent) when the key changed.
pub(super) const CAS_SCRIPT: &str = r#"
local cur = redis.call('GET', KEYS[1])
if not cur then cur = '' end
if cur ~= ARGV[1] then return {0, cur} end
if ARGV[2] == 'p' then
  redis.call('SET', KEYS[1], ARGV[3], 'EX', ARGV[4])
else
  redis.call('DEL', KEYS[1])
end
return {1}
"#;

/// Deletes `KEYS[i]` if it still holds `ARGV[i]`; returns how many were deleted.
pub(super) const DELETE_IF_SCRIPT: &str = r#"
local n = 0
for i, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[i] then
    redis.call('DEL', k)
    n = n + 1
  end
end
return n
"#;

/// `None` when the compare-and-set was applied, else the value the key holds now.
pub(super) fn parse_cas_reply(reply: Value) -> Result<Option<Option<Vec<u8>>>, StoreError> {
    let bad = || StoreError::Unavailable("redis: unexpected compare-and-set reply".to_string());
    let Value::Array(items) = reply else {
        return Err(bad());
    };
    match items.as_slice() {
        [Value::Int(1)] => Ok(None),
        [Value::Int(0), Value::BulkString(cur)] => Ok(Some(if cur.is_empty() {
            None
        } else {
            Some(cur.clone())
        })),
        _ => Err(bad()),
    }
}
