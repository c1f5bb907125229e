//! `mxsentry greylist list|add|del|purge`: inspect and edit the greylist store.
//!
//! The embedded store is a single-writer database file: while the daemon runs, it holds it, and
//! these commands say so (stop the daemon, or share a Redis store, which both can use at once).

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

use crate::checks::greylist::{keys, rfc5322_date, unix_now};
use crate::config::Config;
use crate::store::{Entry, GreylistStore, OpenFor};

/// Which entry an `add`/`del` is about: a triplet (client + sender + recipient) or, without
/// sender and recipient, the client's autowhitelist entry.
pub struct Target {
    pub client_ip: IpAddr,
    pub client_name: Option<String>,
    pub from: Option<String>,
    pub rcpt: Option<String>,
}

impl Target {
    fn key(&self, config: &Config) -> Result<String, String> {
        let g = &config.greylist;
        let name = self.client_name.as_deref();
        match (&self.from, &self.rcpt) {
            (Some(from), Some(rcpt)) => Ok(keys::triplet_key(g, self.client_ip, name, from, rcpt)),
            (None, None) => Ok(keys::client_key(g, self.client_ip, name)),
            _ => Err("give both --from and --rcpt (a triplet), or neither (the client)".into()),
        }
    }
}

async fn open(config: &Config) -> Result<Arc<dyn GreylistStore>, String> {
    let opened = crate::store::open(&config.greylist, OpenFor::Admin).await;
    opened.map_err(|e| {
        if e.to_lowercase().contains("already open") || e.to_lowercase().contains("lock") {
            format!("{e}\n(the running daemon holds the embedded store: stop it first, or use the redis store)")
        } else {
            e
        }
    })
}

fn describe(key: &str, e: &Entry, now: u64) -> String {
    let state = if e.is_expired(now) {
        "expired"
    } else if e.passed > 0 {
        "whitelisted"
    } else {
        "greylisted"
    };
    format!(
        "{key}  {state}  passed={} blocked={} first={} last={} expires={}",
        e.passed,
        e.blocked,
        rfc5322_date(e.first_seen),
        rfc5322_date(e.last_seen),
        rfc5322_date(e.expires)
    )
}

/// Lists entries whose key starts with `prefix` (`t:` triplets, `c:` clients).
pub async fn list(config: &Config, prefix: &str, limit: usize) -> Result<String, String> {
    let store = open(config).await?;
    let rows = store.list(prefix, limit).await.map_err(|e| e.to_string())?;
    let now = unix_now();
    let mut out = String::new();
    for (key, e) in &rows {
        let _ = writeln!(out, "{}", describe(key, e, now));
    }
    let _ = writeln!(out, "{} entries", rows.len());
    Ok(out)
}

/// Whitelists a triplet or a client for `greylist.autowhite` (a client: enough passes to skip
/// greylisting, `client_autowhite_after`).
pub async fn add(config: &Config, target: &Target) -> Result<String, String> {
    let key = target.key(config)?;
    let store = open(config).await?;
    let now = unix_now();
    let passed = if target.from.is_some() {
        1
    } else {
        config.greylist.client_autowhite_after.max(1)
    };
    let entry = Entry {
        first_seen: now,
        last_seen: now,
        passed,
        blocked: 0,
        expires: now + config.greylist.autowhite.as_secs(),
    };
    store.put(&key, entry).await.map_err(|e| e.to_string())?;
    store.flush().await.map_err(|e| e.to_string())?;
    Ok(format!("added {}\n", describe(&key, &entry, now)))
}

/// Removes a triplet or a client entry.
pub async fn del(config: &Config, target: &Target) -> Result<String, String> {
    let key = target.key(config)?;
    let store = open(config).await?;
    let existed = store.delete(&key).await.map_err(|e| e.to_string())?;
    store.flush().await.map_err(|e| e.to_string())?;
    Ok(if existed {
        format!("deleted {key}\n")
    } else {
        format!("no entry {key}\n")
    })
}

/// Removes expired entries now.
pub async fn purge(config: &Config) -> Result<String, String> {
    let store = open(config).await?;
    let n = store.purge(unix_now()).await.map_err(|e| e.to_string())?;
    store.flush().await.map_err(|e| e.to_string())?;
    Ok(format!("purged {n} expired entries\n"))
}

/// Writes many entries at once (the importers: `greylist import milter-greylist|postgrey`).
/// Entries already expired at `now` are skipped and counted, not written. Returns (written,
/// skipped as expired).
pub async fn put_entries(
    config: &Config,
    entries: &[(String, Entry)],
) -> Result<(u64, u64), String> {
    let store = open(config).await?;
    let now = unix_now();
    let (mut written, mut expired) = (0u64, 0u64);
    for (key, entry) in entries {
        if entry.is_expired(now) {
            expired += 1;
            continue;
        }
        store.put(key, *entry).await.map_err(|e| e.to_string())?;
        written += 1;
    }
    store.flush().await.map_err(|e| e.to_string())?;
    Ok((written, expired))
}
