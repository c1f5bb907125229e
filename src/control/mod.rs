//! Live control: the daemon answers admin commands on a unix socket (`[control] socket`,
//! default `/run/mxsentry/control.sock`, mode 0600).
//!
//! The embedded greylist store is a single-writer file the daemon holds, so `mxsentry greylist
//! list|add|del|purge`, the importers (`admin::put_entries`), `status`, `reload` and `explain`
//! ask the daemon when it answers there, and open the store directly when nothing answers: the
//! admin never has to know which.
//!
//! * `protocol`: the wire format, pure (one JSON line per request and per response).
//! * `server`: the daemon's side (bind, bounded reads under a deadline, a few clients at once,
//!   requests applied to the daemon's own store and reload path).
//! * `client`: the commands' side, and [`client::RemoteStore`], the daemon's store seen through
//!   the socket.
//! * `commands`: `mxsentry status` and `mxsentry reload`, and how the admin commands find a
//!   live daemon.

pub mod client;
pub mod commands;
pub mod protocol;
pub mod server;

use crate::config::{GreylistConfig, StoreKind};

/// Where a configuration's greylist store is, as `status` shows it and as the commands compare
/// it with their own configuration's (a daemon that answers on the socket but works on another
/// store is not used): the embedded file's canonical path, or the Redis URL without its
/// password.
pub fn store_location(g: &GreylistConfig) -> String {
    match g.store {
        StoreKind::Embedded => std::fs::canonicalize(&g.path)
            .unwrap_or_else(|_| g.path.clone())
            .display()
            .to_string(),
        StoreKind::Redis if !g.redis_sentinels.is_empty() || !g.redis_cluster.is_empty() => {
            crate::store::redis::RedisSpec::from_config(g).describe()
        }
        StoreKind::Redis => server::without_password(&g.redis_url),
    }
}
