//! `mxsentry status` and `mxsentry reload`, and how the greylist commands and `explain` find
//! the running daemon's store.

use std::fmt::Write as _;
use std::path::Path;

use super::client::{self, Connection, RemoteStore};
use super::protocol::{Request, Response, Status};
use crate::checks::greylist::rfc5322_date;
use crate::config::Config;
use crate::policy::Policy;

/// The running daemon's store, when a daemon answers on the configured control socket and has
/// this configuration's store open; `None` means: open the store directly. A socket this user
/// may not use, or a daemon working on another store, is said on stderr and treated as no
/// daemon (opening the store directly then says what holds it).
pub async fn live_store(config: &Config, read_only: bool) -> Result<Option<RemoteStore>, String> {
    let Some(socket) = config.control.socket.as_deref() else {
        return Ok(None);
    };
    let expected = super::store_location(&config.greylist);
    let live = match client::connect(socket).await {
        Ok(Some(c)) => RemoteStore::over(c, read_only, &expected).await,
        Ok(None) => return Ok(None),
        Err(e) => Err(e),
    };
    live.or_else(|e| {
        eprintln!("(not through the running daemon: {e}; opening the store directly)");
        Ok(None)
    })
}

/// `explain`: the policy with the running daemon's greylist store attached, read only, when
/// the daemon answers (true), so the findings show the triplet's real state; else as it was.
pub async fn with_live_greylist(config: &Config, policy: Policy) -> (Policy, bool) {
    match live_store(config, true).await {
        Ok(Some(store)) => (policy.with_greylist_store(std::sync::Arc::new(store)), true),
        _ => (policy, false),
    }
}

/// Connects to the daemon named by `config`, or says why there is none.
async fn daemon(config: &Config, config_path: &Path) -> Result<Connection, String> {
    let Some(socket) = config.control.socket.as_deref() else {
        return Err(format!(
            "{}: [control] socket = \"off\": the running daemon cannot be asked",
            config_path.display()
        ));
    };
    match client::connect(socket).await? {
        Some(c) => Ok(c),
        None => Err(format!(
            "no mxsentry daemon answers on {} (not running, or started with another \
             [control] socket)",
            socket.display()
        )),
    }
}

/// `mxsentry status`: the running daemon's state, one `name: value` line each.
pub async fn status(config_path: &Path) -> Result<String, String> {
    let config = Config::load(config_path).map_err(|e| e.to_string())?;
    let mut c = daemon(&config, config_path).await?;
    let s = c.status().await?;
    Ok(format_status(&s))
}

/// `mxsentry reload`: validates the file as `check-config` does, then asks the running daemon
/// to reload its configuration; prints what it loaded. A bad file is refused here with
/// `file:line: reason` and the daemon is not asked (it keeps its rules either way).
pub async fn reload(config_path: &Path) -> Result<String, String> {
    let (config, _) = crate::policy::load(config_path).map_err(|e| e.to_string())?;
    let mut c = daemon(&config, config_path).await?;
    let status = c.status().await?;
    let message = match c.request(&Request::Reload).await {
        Ok(Response::Reloaded { message }) => message,
        Ok(other) => return Err(format!("unexpected answer from the daemon: {other:?}")),
        Err(e) => {
            return Err(format!(
                "{e}\n(the daemon refused the reload and keeps its running configuration)"
            ))
        }
    };
    let mut out = format!("reloaded {message}\n");
    if !same_file(Path::new(&status.config_file), config_path) {
        let _ = writeln!(
            out,
            "note: the daemon runs with {}, not {}: it reloaded its own file",
            status.config_file,
            config_path.display()
        );
    }
    Ok(out)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// `2h03m04s`, `5m00s`, `12s`, `3d04h05m`.
fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h:02}h{m:02}m")
    } else if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// A time and how long ago it was (by the daemon's clock, `now`).
fn when(t: u64, now: u64) -> String {
    format!(
        "{} ({} ago)",
        rfc5322_date(t),
        duration(now.saturating_sub(t))
    )
}

/// The status as `name: value` lines (stable names: scripts may grep them).
pub fn format_status(s: &Status) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "version: {}", s.version);
    let _ = writeln!(o, "pid: {}", s.pid);
    let _ = writeln!(
        o,
        "uptime: {} (started {})",
        duration(s.now.saturating_sub(s.started_at)),
        rfc5322_date(s.started_at)
    );
    let _ = writeln!(o, "config: {}", s.config_file);
    let _ = writeln!(o, "config loaded: {}", when(s.config_loaded_at, s.now));
    match &s.last_reload {
        None => {
            let _ = writeln!(o, "last reload: none since start");
        }
        Some(r) => {
            let result = if r.ok { "ok" } else { "failed" };
            let _ = writeln!(
                o,
                "last reload: {result} {}: {}",
                when(r.at, s.now),
                r.message
            );
        }
    }
    let _ = writeln!(o, "connections open: {}", s.connections_open);
    match &s.store {
        None => {
            let _ = writeln!(o, "store: none (greylisting is off)");
        }
        Some(st) => {
            let _ = writeln!(o, "store: {} {}", st.kind, st.location);
            match &st.entries {
                Ok(n) => {
                    let _ = writeln!(o, "store entries: {n}");
                }
                Err(e) => {
                    let _ = writeln!(o, "store entries: unknown ({e})");
                }
            }
            if st.kind == "embedded" {
                let last = st
                    .last_commit
                    .map_or_else(|| "none since start".to_owned(), |t| when(t, s.now));
                let _ = writeln!(o, "store last commit: {last}");
            }
            if let Some(e) = &st.commit_error {
                let _ = writeln!(o, "store commit error: {e}");
            }
        }
    }
    match &s.dnsbl_zones {
        None => {
            let _ = writeln!(
                o,
                "dnsbl zones: health not tracked (dnsbl.health_check_interval = \"0s\")"
            );
        }
        Some(zones) if zones.is_empty() => {
            let _ = writeln!(o, "dnsbl zones: none configured");
        }
        Some(zones) => {
            for z in zones {
                let state = match (z.healthy, z.probe_off) {
                    (true, false) => "healthy",
                    (true, true) => "healthy (probe off)",
                    (false, false) => "UNHEALTHY",
                    (false, true) => "UNHEALTHY (probe off)",
                };
                let since = z
                    .since
                    .map(|t| format!(" since {}", when(t, s.now)))
                    .unwrap_or_default();
                let why = z
                    .reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default();
                let _ = writeln!(o, "dnsbl zone {}: {state}{since}{why}", z.zone);
            }
        }
    }
    if let Some(sh) = &s.shadow {
        let _ = writeln!(o, "shadow: {}", sh.config);
        let _ = writeln!(
            o,
            "shadow verdicts: {} recipients, {} different from the live verdict",
            sh.decided, sh.disagreed
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::super::protocol::{ReloadStatus, StoreStatus, ZoneHealth};
    use super::*;

    fn status() -> Status {
        Status {
            version: "0.1.0".into(),
            pid: 42,
            started_at: 1_000_000,
            now: 1_000_000 + 3_725,
            config_file: "/etc/mxsentry/milter.toml".into(),
            config_loaded_at: 1_000_000 + 3_600,
            last_reload: None,
            connections_open: 3,
            store: Some(StoreStatus {
                kind: "embedded".into(),
                location: "/var/lib/mxsentry/greylist.db".into(),
                entries: Ok(12),
                last_commit: Some(1_000_000 + 3_724),
                commit_error: None,
            }),
            dnsbl_zones: None,
            shadow: None,
        }
    }

    #[test]
    fn status_lines() {
        let text = format_status(&status());
        for line in [
            "version: 0.1.0\n",
            "pid: 42\n",
            "uptime: 1h02m05s (started ",
            "config: /etc/mxsentry/milter.toml\n",
            "config loaded: ",
            "(2m05s ago)\n",
            "last reload: none since start\n",
            "connections open: 3\n",
            "store: embedded /var/lib/mxsentry/greylist.db\n",
            "store entries: 12\n",
            "store last commit: ",
            "(1s ago)\n",
            "dnsbl zones: health not tracked (dnsbl.health_check_interval = \"0s\")\n",
        ] {
            assert!(text.contains(line), "{line:?} missing:\n{text}");
        }
    }

    #[test]
    fn status_shows_failures_and_zones() {
        let mut s = status();
        s.last_reload = Some(ReloadStatus {
            at: s.now - 5,
            ok: false,
            message: "/etc/mxsentry/access:3: bad action".into(),
        });
        s.store = None;
        s.dnsbl_zones = Some(vec![
            ZoneHealth {
                zone: "bl.example".into(),
                healthy: false,
                since: Some(s.now - 60),
                reason: Some("lists 127.0.0.1".into()),
                probe_off: false,
            },
            ZoneHealth {
                zone: "dbl.example".into(),
                healthy: true,
                since: Some(s.now - 60),
                reason: None,
                probe_off: true,
            },
        ]);
        let text = format_status(&s);
        assert!(
            text.contains("last reload: failed ")
                && text.contains(": /etc/mxsentry/access:3: bad action\n"),
            "{text}"
        );
        assert!(
            text.contains("store: none (greylisting is off)\n"),
            "{text}"
        );
        assert!(
            text.contains("dnsbl zone bl.example: UNHEALTHY since ")
                && text.contains("lists 127.0.0.1"),
            "{text}"
        );
        assert!(
            text.contains("dnsbl zone dbl.example: healthy (probe off) since "),
            "{text}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(60), "1m00s");
        assert_eq!(duration(3_661), "1h01m01s");
        assert_eq!(duration(2 * 86_400 + 3_600 + 60), "2d01h01m");
    }
}
