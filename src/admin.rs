//! `mxsentry greylist list|add|del|purge`: inspect and edit the greylist store.
//!
//! When the daemon answers on its control socket (`[control] socket`), these commands go
//! through it: it holds the embedded store (a single-writer file), and its view of Redis is
//! the one that counts. When nothing answers, they open the store directly. The output is the
//! same either way; stderr says "(via the running daemon)".

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

use crate::checks::greylist::{keys, rfc5322_date, unix_now};
use crate::config::Config;
use crate::control::client::RemoteStore;
use crate::store::{Entry, GreylistStore, OpenFor};

/// Which entry an `add`/`del` is about: a triplet (client + sender + recipient) or, without
/// sender and recipient, the client's autowhitelist entry.
pub struct Target {
    pub client_ip: IpAddr,
    pub client_name: Option<String>,
    pub from: Option<String>,
    pub rcpt: Option<String>,
    /// `add --permanent`: the entry never expires ([`Entry::PERMANENT`]).
    pub permanent: bool,
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

/// The store the commands work on: the running daemon's, or the file / server itself.
enum Store {
    Live(Arc<RemoteStore>),
    Direct(Arc<dyn GreylistStore>),
}

impl Store {
    fn get(&self) -> Arc<dyn GreylistStore> {
        match self {
            Store::Live(s) => s.clone(),
            Store::Direct(s) => s.clone(),
        }
    }
}

async fn open(config: &Config) -> Result<Store, String> {
    if let Some(live) = crate::control::commands::live_store(config, false).await? {
        eprintln!("(via the running daemon)");
        return Ok(Store::Live(Arc::new(live)));
    }
    let opened = crate::store::open(&config.greylist, OpenFor::Admin).await;
    opened.map(Store::Direct).map_err(|e| {
        if e.contains("in use by another process") {
            let socket = match config.control.socket.as_deref() {
                Some(p) => format!("its control socket {} does not answer", p.display()),
                None => "its control socket is off ([control] socket)".to_owned(),
            };
            format!("{e}\n(another process holds the embedded store and {socket}: stop it, or set [control] socket)")
        } else {
            e
        }
    })
}

/// `expires=...`: the date, or `never` for a permanent entry.
fn expiry(e: &Entry) -> String {
    if e.is_permanent() {
        "never".to_owned()
    } else {
        rfc5322_date(e.expires)
    }
}

fn describe(key: &str, e: &Entry, now: u64) -> String {
    let state = if e.is_expired(now) {
        "expired"
    } else if e.is_permanent() {
        "permanent"
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
        expiry(e)
    )
}

/// Lists entries whose key starts with `prefix` (`t:` triplets, `c:` clients).
pub async fn list(config: &Config, prefix: &str, limit: usize) -> Result<String, String> {
    let store = open(config).await?.get();
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
/// greylisting, `client_autowhite_after`), or for ever with `target.permanent`. Accepted
/// deliveries refresh a timed entry; a permanent one stays until `greylist del`.
pub async fn add(config: &Config, target: &Target) -> Result<String, String> {
    let key = target.key(config)?;
    let store = open(config).await?.get();
    let now = unix_now();
    let passed = if target.from.is_some() {
        1
    } else {
        config.greylist.client_autowhite_after.max(1)
    };
    let expires = if target.permanent {
        Entry::PERMANENT
    } else {
        now.saturating_add(config.greylist.autowhite.as_secs())
    };
    let entry = Entry {
        first_seen: now,
        last_seen: now,
        passed,
        blocked: 0,
        expires,
    };
    store.put(&key, entry).await.map_err(|e| e.to_string())?;
    store.flush().await.map_err(|e| e.to_string())?;
    let kind = if target.permanent {
        "whitelisted permanently (until `mxsentry greylist del`)".to_owned()
    } else {
        format!(
            "whitelisted until {} (greylist.autowhite = {}; each accepted delivery extends it)",
            rfc5322_date(expires),
            crate::config::format_duration(config.greylist.autowhite)
        )
    };
    Ok(format!("added {key}: {kind}\n"))
}

/// Removes a triplet or a client entry.
pub async fn del(config: &Config, target: &Target) -> Result<String, String> {
    let key = target.key(config)?;
    let store = open(config).await?.get();
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
    let store = open(config).await?.get();
    let n = store.purge(unix_now()).await.map_err(|e| e.to_string())?;
    store.flush().await.map_err(|e| e.to_string())?;
    Ok(format!("purged {n} expired entries\n"))
}

/// Writes many entries at once (the importers: `greylist import milter-greylist|postgrey`):
/// through the running daemon when it answers (in batches of about 1 MiB, each durable before
/// the next), else into the store directly. Entries already expired at `now` are skipped and
/// counted, not written. Returns (written, skipped as expired).
pub async fn put_entries(
    config: &Config,
    entries: &[(String, Entry)],
) -> Result<(u64, u64), String> {
    let store = open(config).await?;
    let now = unix_now();
    let (live, expired): (Vec<_>, Vec<_>) = entries.iter().partition(|(_, e)| !e.is_expired(now));
    let expired = expired.len() as u64;
    let written = match &store {
        Store::Live(remote) => remote.put_many(live).await.map_err(|e| e.to_string())?,
        Store::Direct(store) => {
            let mut written = 0u64;
            for (key, entry) in live {
                store.put(key, *entry).await.map_err(|e| e.to_string())?;
                written += 1;
            }
            written
        }
    };
    store.get().flush().await.map_err(|e| e.to_string())?;
    Ok((written, expired))
}
