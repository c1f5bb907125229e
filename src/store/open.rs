//! Opening the configured store (`greylist.store`), and reporting how it went.

use std::sync::Arc;

use super::embedded::{EmbeddedStore, Opened, Options};
use super::redis::{RedisSpec, RedisStore};
use super::GreylistStore;
use crate::config::{GreylistConfig, StoreKind};

/// Who opens the store: what an embedded file that cannot be opened or read leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenFor {
    /// The daemon's start ([`EmbeddedStore::open_for_daemon`]): an embedded store whose content
    /// is bad (corrupt, truncated, not a store, a format this version cannot read) is moved
    /// aside to `<path>.corrupt-<UTC time>` and the daemon starts with an empty store, logging
    /// an error and counting `mxsentry_greylist_store_recoveries_total`; a file that cannot be
    /// opened now (disk full, I/O error) leaves the store closed and retried while greylisting
    /// fails open. A daemon that refused to start would make the MTA refuse all mail; greylist
    /// entries are only a cache of delays. Operations problems (in use, not writable, no
    /// directory) still fail with their reason.
    Daemon,
    /// The admin commands: an unreadable file is an error, never touched.
    Admin,
}

/// Opens the configured store (`greylist.store`): the embedded store at `greylist.path`
/// (committing every `greylist.commit_interval`) or Redis (`greylist.redis_url`, or the primary `greylist.redis_sentinels` name). The error
/// names the file or server and the reason.
pub async fn open(
    cfg: &GreylistConfig,
    purpose: OpenFor,
) -> Result<Arc<dyn GreylistStore>, String> {
    let store: Arc<dyn GreylistStore> = match cfg.store {
        StoreKind::Embedded => {
            let path = cfg.path.clone();
            let options = Options {
                commit_interval: cfg.commit_interval,
                max_uncommitted: cfg.max_uncommitted,
                ..Options::default()
            };
            let (store, opened) = tokio::task::spawn_blocking(move || match purpose {
                OpenFor::Daemon => EmbeddedStore::open_for_daemon(&path, options),
                OpenFor::Admin => {
                    EmbeddedStore::open_with(&path, options).map(|s| (s, Opened::Fine))
                }
            })
            .await
            .map_err(|e| format!("greylist store: {e}"))?
            .map_err(|e| format!("greylist store: {e}"))?;
            match opened {
                Opened::Fine => {}
                Opened::MovedAside(m) => {
                    crate::metrics::metrics().greylist_store_recovered();
                    tracing::error!(
                        path = %m.path.display(),
                        moved_to = %m.moved_to.display(),
                        reason = %m.reason,
                        "greylist store unreadable: moved aside, starting with an empty store"
                    );
                }
                Opened::Closed { reason } => {
                    crate::metrics::metrics().greylist_error("embedded");
                    tracing::error!(
                        path = %cfg.path.display(),
                        reason = %reason,
                        "greylist store cannot be opened now: starting without it \
                         (greylisting fails open) and retrying every commit interval"
                    );
                }
            }
            Arc::new(store)
        }
        StoreKind::Redis => {
            let spec = RedisSpec::from_config(cfg);
            Arc::new(
                RedisStore::open(&spec)
                    .await
                    .map_err(|e| format!("greylist store {}: {e}", spec.describe()))?,
            )
        }
    };
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn open_reports_a_bad_path() {
        let cfg = GreylistConfig {
            path: "/nonexistent-mxsentry-dir/greylist.db".into(),
            ..GreylistConfig::default()
        };
        let Err(err) = open(&cfg, OpenFor::Admin).await else {
            panic!("opened a store in a missing directory");
        };
        assert!(err.contains("/nonexistent-mxsentry-dir"), "{err}");
    }
}
