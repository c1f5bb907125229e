//! The daemon's side of the control socket: binding it (a stale file removed, a live one left
//! alone), accepting a few clients at once, reading bounded request lines under a deadline,
//! and answering them with the daemon's own store handle and reload path.
//!
//! Nothing here may stop mail: a socket that cannot be bound is a warning and the daemon
//! serves without it; a bad request closes that one connection.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use super::protocol::{
    check_line, decode_request, encode_response, Frame, ReloadStatus, Request, Response,
    ShadowStatus, Status, StoreStatus, WireEntry, ZoneHealth, MAX_LIST, MAX_REQUEST,
};
use crate::config::Config;
use crate::metrics::metrics;
use crate::server::SharedPolicy;
use crate::store::{unix_now, GreylistStore, Instrumented};

/// Clients served at once; one more is told the daemon is busy and closed.
pub const MAX_CLIENTS: usize = 4;

/// How long a client may take to send each request line (idle connections end after it).
pub const READ_DEADLINE: Duration = Duration::from_secs(10);

/// How long writing a response may take.
const WRITE_DEADLINE: Duration = Duration::from_secs(30);

/// How long `status` waits for the store to count its entries (Redis `SCAN`s).
const COUNT_DEADLINE: Duration = Duration::from_secs(5);

/// What the handler works with: the daemon's own policy (its reload path) and store.
pub struct Context {
    config_path: PathBuf,
    config_shown: String,
    policy: Arc<SharedPolicy>,
    started_at: u64,
    store_location: String,
}

impl Context {
    pub fn new(config_path: &Path, config: &Config, policy: Arc<SharedPolicy>) -> Context {
        Context {
            config_path: config_path.to_path_buf(),
            // Absolute in `status`; reloads read the path as given (a symlink may be moved).
            config_shown: std::fs::canonicalize(config_path)
                .unwrap_or_else(|_| config_path.to_path_buf())
                .display()
                .to_string(),
            policy,
            started_at: unix_now(),
            store_location: super::store_location(&config.greylist),
        }
    }

    fn store(&self) -> Result<&Arc<dyn GreylistStore>, Response> {
        self.policy.store().ok_or_else(|| {
            Response::error(
                "greylisting is off in the running daemon's configuration: no store is open",
            )
        })
    }
}

/// `redis://user:secret@host/0` → `redis://user:***@host/0`.
pub(super) fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => format!("{scheme}://***@{host}"),
        },
        None => url.to_owned(),
    }
}

/// Binds the control socket and serves it until `stop` turns true; `None` when it is off or
/// cannot be bound (logged: the daemon serves mail without it). The socket file is removed
/// when serving ends, if it is still ours.
pub fn start(
    socket: Option<&Path>,
    ctx: Context,
    stop: watch::Receiver<bool>,
) -> Option<JoinHandle<()>> {
    let path = socket?;
    match bind(path) {
        Ok((listener, identity)) => {
            tracing::info!(socket = %path.display(), "control socket ready");
            let path = path.to_path_buf();
            Some(tokio::spawn(async move {
                accept_loop(listener, Arc::new(ctx), stop).await;
                remove_if_ours(&path, identity);
            }))
        }
        Err(e) => {
            tracing::warn!(
                socket = %path.display(),
                "control socket unavailable: {e}; mail is served as usual, but `mxsentry \
                 status`, `reload` and `greylist` cannot reach this daemon ([control] socket)"
            );
            None
        }
    }
}

/// Binds `path` (mode 0600); a stale socket file (nobody answers) is replaced, a live one or
/// any other file is left alone. Returns the listener and the file's (device, inode).
fn bind(path: &Path) -> Result<(UnixListener, (u64, u64)), String> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(
                        "another process answers on it (a second mxsentry daemon?); \
                                it is left alone"
                            .into(),
                    )
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(path)
                        .map_err(|e| format!("cannot remove the stale socket: {e}"))?;
                }
                Err(e) => return Err(format!("cannot tell whether it is in use: {e}")),
            }
        }
        Ok(_) => return Err("the path exists and is not a socket; it is left alone".into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.to_string()),
    }
    let listener = UnixListener::bind(path).map_err(|e| e.to_string())?;
    // Only the daemon's user (and root) may administer it.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot set its mode to 0600: {e}"))?;
    let meta = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    Ok((listener, (meta.dev(), meta.ino())))
}

fn remove_if_ours(path: &Path, identity: (u64, u64)) {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if (meta.dev(), meta.ino()) == identity {
            let _ = std::fs::remove_file(path);
        }
    }
}

async fn accept_loop(listener: UnixListener, ctx: Arc<Context>, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        let mut stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("control socket: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics().control_request("invalid", "error");
            let busy = Response::error(format!(
                "busy: {MAX_CLIENTS} control clients are being served; try again"
            ));
            tokio::spawn(async move {
                let _ =
                    tokio::time::timeout(WRITE_DEADLINE, stream.write_all(&encode_response(&busy)))
                        .await;
            });
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            serve(stream, &ctx).await;
            drop(slot);
        });
    }
}

/// Answers requests on one connection until the client closes it, is idle past
/// [`READ_DEADLINE`], or sends a request that is malformed or too long.
async fn serve(mut stream: UnixStream, ctx: &Context) {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        let line = match tokio::time::timeout(READ_DEADLINE, read_line(&mut stream, &mut buf)).await
        {
            Err(_) => return, // idle or too slow: closed
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => return,
            Ok(Err(reason)) => {
                metrics().control_request("invalid", "error");
                tracing::warn!("control socket: {reason}; connection closed");
                let _ = write(&mut stream, &Response::error(reason)).await;
                return;
            }
        };
        let request = match decode_request(&line) {
            Ok(r) => r,
            Err(e) => {
                metrics().control_request("invalid", "error");
                tracing::warn!("control socket: {e}; connection closed");
                let _ = write(&mut stream, &Response::error(e)).await;
                return;
            }
        };
        let op = request.op();
        let response = handle(ctx, request).await;
        let result = if matches!(response, Response::Error { .. }) {
            "error"
        } else {
            "ok"
        };
        metrics().control_request(op, result);
        if write(&mut stream, &response).await.is_err() {
            return;
        }
    }
}

/// The next request line (without its newline); `None` at end of stream.
async fn read_line(stream: &mut UnixStream, buf: &mut Vec<u8>) -> Result<Option<Vec<u8>>, String> {
    let mut scanned = 0;
    loop {
        match check_line(buf, scanned, MAX_REQUEST) {
            Frame::Line(n) => {
                let mut line: Vec<u8> = buf.drain(..=n).collect();
                line.pop();
                return Ok(Some(line));
            }
            Frame::TooLong => {
                return Err(format!("request longer than {MAX_REQUEST} bytes"));
            }
            Frame::Incomplete => scanned = buf.len(),
        }
        // At most up to the bound (plus one byte to see that it is exceeded).
        let room = (MAX_REQUEST + 1).saturating_sub(buf.len()).min(64 * 1024);
        let mut chunk = stream.take(room as u64);
        buf.reserve(room);
        let n = chunk
            .read_buf(buf)
            .await
            .map_err(|e| format!("read failed: {e}"))?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err("request line without its newline".into())
            };
        }
    }
}

async fn write(stream: &mut UnixStream, r: &Response) -> Result<(), ()> {
    match tokio::time::timeout(WRITE_DEADLINE, stream.write_all(&encode_response(r))).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// Applies one request.
async fn handle(ctx: &Context, request: Request) -> Response {
    match request {
        Request::Status => Response::Status(Box::new(status(ctx).await)),
        Request::Reload => {
            let (path, policy) = (ctx.config_path.clone(), ctx.policy.clone());
            match tokio::task::spawn_blocking(move || crate::server::reload(&path, &policy)).await {
                Ok(Ok(message)) => Response::Reloaded { message },
                Ok(Err(e)) => Response::error(e),
                Err(e) => Response::error(format!("reload task failed: {e}")),
            }
        }
        other => match ctx.store() {
            Ok(store) => greylist(store, other).await,
            Err(response) => response,
        },
    }
}

/// The greylist requests, on the daemon's store.
async fn greylist(store: &Arc<dyn GreylistStore>, request: Request) -> Response {
    let result = match request {
        Request::List { prefix, limit } => {
            store
                .list(&prefix, limit.min(MAX_LIST))
                .await
                .map(|rows| Response::Entries {
                    entries: rows.iter().map(|(k, e)| WireEntry::new(k, e)).collect(),
                })
        }
        Request::Get { key } => store.get(&key).await.map(|e| Response::Entry {
            entry: e.map(|e| WireEntry::new(&key, &e)),
        }),
        Request::Put { entries } => put(store, entries).await,
        Request::Delete { key } => store
            .delete(&key)
            .await
            .map(|existed| Response::Deleted { existed }),
        Request::Purge => {
            let instrumented = Instrumented::new(store.clone());
            let purged = instrumented.purge(unix_now()).await;
            instrumented.count_entries().await;
            purged.map(|count| Response::Purged { count })
        }
        Request::Flush => store.flush().await.map(|()| Response::Flushed),
        Request::Status | Request::Reload => return Response::error("not a greylist request"),
    };
    result.unwrap_or_else(Response::error)
}

/// Writes a batch, then waits until it is durable: an import then moves at the pace of the
/// store's commits and never fills the memory the sessions' writes need.
async fn put(
    store: &Arc<dyn GreylistStore>,
    entries: Vec<WireEntry>,
) -> Result<Response, crate::store::StoreError> {
    let mut count = 0u64;
    for wire in entries {
        let (key, entry) = wire.into_parts();
        store.put(&key, entry).await?;
        count += 1;
    }
    store.flush().await?;
    Ok(Response::Written { count })
}

async fn status(ctx: &Context) -> Status {
    let loads = ctx.policy.loads();
    let store = match ctx.policy.store() {
        Some(s) => {
            let entries = match tokio::time::timeout(COUNT_DEADLINE, s.len()).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err(format!("not counted within {}s", COUNT_DEADLINE.as_secs())),
            };
            let commits = s.commit_status();
            Some(StoreStatus {
                kind: s.backend().to_owned(),
                location: ctx.store_location.clone(),
                entries,
                last_commit: commits.as_ref().and_then(|c| c.last_commit),
                commit_error: commits.and_then(|c| c.error),
            })
        }
        None => None,
    };
    Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        started_at: ctx.started_at,
        now: unix_now(),
        config_file: ctx.config_shown.clone(),
        config_loaded_at: loads.loaded_at,
        last_reload: loads.last_reload.map(|(at, r)| ReloadStatus {
            at,
            ok: r.is_ok(),
            message: r.unwrap_or_else(|e| e),
        }),
        connections_open: metrics().connections_open_now(),
        store,
        dnsbl_zones: zone_health(ctx.policy.health()),
        shadow: crate::session::PolicySource::current(&*ctx.policy)
            .shadow_path()
            .map(|path| {
                let (decided, disagreed) = crate::shadow::counts();
                ShadowStatus {
                    config: path.display().to_string(),
                    decided,
                    disagreed,
                }
            }),
    }
}

/// Every configured zone's health; `None` when the checks are off (`health_check_interval =
/// "0s"`: every zone is trusted).
fn zone_health(board: &crate::checks::dnsbl::board::HealthBoard) -> Option<Vec<ZoneHealth>> {
    use crate::checks::dnsbl::health::Health;
    if !board.enabled() {
        return None;
    }
    let zones = board.report().into_iter().map(|z| ZoneHealth {
        healthy: z.state.health.is_healthy(),
        since: z.state.since,
        reason: match &z.state.health {
            Health::Healthy => None,
            Health::Unknown => Some("not yet probed: listings are log-only".into()),
            Health::Unhealthy(r) => Some(format!("{r}: listings are log-only")),
        },
        zone: z.zone,
        probe_off: z.probe_off,
    });
    Some(zones.collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_passwords_are_not_shown() {
        assert_eq!(
            without_password("redis://user:secret@10.0.0.1:6379/0"),
            "redis://user:***@10.0.0.1:6379/0"
        );
        assert_eq!(without_password("rediss://secret@h/0"), "rediss://***@h/0");
        assert_eq!(
            without_password("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
    }
}
