//! Where the store connects and how: one server (`redis_url`) or the primary that the
//! sentinels name (`redis_sentinels` + `redis_master`), with the credentials
//! (`redis_username`, `redis_password_file`) and TLS trust (`rediss://`, `redis_ca_file`)
//! that every data connection shares.
//!
//! Sentinel discovery is written here rather than taken from the redis crate's `sentinel`
//! feature: the crate builds the discovered primary's address without TLS parameters (so a
//! private CA cannot be used with it), asks with `SENTINEL MASTERS` over cached blocking-style
//! connections, and gives no bound per sentinel. Here one short round trip per sentinel
//! (`SENTINEL get-master-addr-by-name`), each bounded by the store's deadline, then a `ROLE`
//! check on the connection the store will use, so a stale sentinel never sends writes to a
//! replica.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use ::redis::cluster::ClusterClient;
use ::redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo,
    TlsCertificates, Value,
};

use super::link::Con;
use crate::config::GreylistConfig;

/// How the store reaches Redis, from `[greylist]`.
#[derive(Debug, Clone, Default)]
pub struct RedisSpec {
    /// `redis_url` (one server) — ignored when `sentinels` is not empty.
    pub url: String,
    /// `redis_sentinels`: sentinel URLs (`redis://host:26379[/db]`); the path's database number
    /// is the one used on the primary.
    pub sentinels: Vec<String>,
    /// `redis_cluster`: seed nodes of a Redis Cluster (`redis://host:7000`); the rest of the
    /// cluster is discovered from them.
    pub cluster: Vec<String>,
    /// `redis_master`: the name the sentinels monitor the primary under.
    pub master: String,
    /// `redis_username` (ACL user; or the user part of the URL).
    pub username: Option<String>,
    /// `redis_password_file`: one line, the password of the data servers.
    pub password_file: Option<PathBuf>,
    /// `redis_ca_file`: PEM CA certificates trusted for `rediss://` instead of the system's.
    pub ca_file: Option<PathBuf>,
}

impl RedisSpec {
    /// One server at `url`, no extra settings.
    pub fn url(url: &str) -> RedisSpec {
        RedisSpec {
            url: url.to_string(),
            ..RedisSpec::default()
        }
    }

    /// The `[greylist]` redis settings.
    pub fn from_config(g: &GreylistConfig) -> RedisSpec {
        RedisSpec {
            url: g.redis_url.clone(),
            sentinels: g.redis_sentinels.clone(),
            cluster: g.redis_cluster.clone(),
            master: g.redis_master.clone().unwrap_or_default(),
            username: g.redis_username.clone(),
            password_file: g.redis_password_file.clone(),
            ca_file: g.redis_ca_file.clone(),
        }
    }

    /// Where the store connects, for logs and `status` (never a password).
    pub fn describe(&self) -> String {
        if !self.cluster.is_empty() {
            let list: Vec<String> = self.cluster.iter().map(|s| redact(s)).collect();
            format!("cluster {}", list.join(","))
        } else if self.sentinels.is_empty() {
            redact(&self.url)
        } else {
            let list: Vec<String> = self.sentinels.iter().map(|s| redact(s)).collect();
            format!("master {:?} via sentinels {}", self.master, list.join(","))
        }
    }
}

/// A resolved [`RedisSpec`]: parsed addresses, the CA read, the password file checked.
pub(super) struct Target {
    mode: Mode,
    password_file: Option<PathBuf>,
    /// The password last read from `password_file` (kept when a later read fails).
    password: Mutex<Option<String>>,
    username: Option<String>,
    ca_pem: Option<Vec<u8>>,
    pub(super) describe: String,
    /// Sentinel to ask first next time (the one that answered last).
    next_sentinel: AtomicUsize,
    warned_password_read: AtomicBool,
}

enum Mode {
    Single(ConnectionInfo),
    Cluster(Vec<ConnectionInfo>),
    Sentinel {
        sentinels: Vec<ConnectionInfo>,
        master: String,
        /// Database on the primary, and whether the primary speaks TLS.
        db: i64,
        tls: bool,
    },
}

/// An established data connection and the server it goes to.
pub(super) struct Connected {
    pub con: Con,
    pub server: String,
}

impl Target {
    /// Checks and resolves `spec`; errors name the key or file and the reason.
    pub(super) fn resolve(spec: &RedisSpec) -> Result<Target, String> {
        let password = match &spec.password_file {
            Some(path) => Some(read_password_file(path, true)?),
            None => None,
        };
        let ca_pem = match &spec.ca_file {
            Some(path) => Some(read_ca_file(path)?),
            None => None,
        };
        let mode = if !spec.cluster.is_empty() {
            if !spec.sentinels.is_empty() {
                return Err("set one of redis_sentinels and redis_cluster, not both".into());
            }
            let mut nodes = Vec::new();
            for url in &spec.cluster {
                let info = check_tcp_url(url, "cluster node")?;
                if info.redis.db != 0 {
                    return Err(format!(
                        "cluster node {:?}: a Redis Cluster has only database 0",
                        redact(url)
                    ));
                }
                if password.is_some() && info.redis.password.is_some() {
                    return Err(format!(
                        "cluster node {:?} has a password and redis_password_file is set: keep \
                         the password in the file only",
                        redact(url)
                    ));
                }
                nodes.push(info);
            }
            Mode::Cluster(nodes)
        } else if spec.sentinels.is_empty() {
            let info = parse_url(&spec.url)?;
            if password.is_some() && info.redis.password.is_some() {
                return Err(format!(
                    "redis_url {:?} has a password and redis_password_file is set: keep the \
                     password in the file only",
                    redact(&spec.url)
                ));
            }
            Mode::Single(info)
        } else {
            if spec.master.is_empty() {
                return Err("redis_sentinels needs redis_master (the monitored name)".into());
            }
            let mut sentinels = Vec::new();
            for url in &spec.sentinels {
                sentinels.push(check_sentinel_url(url)?);
            }
            let tls = matches!(sentinels[0].addr, ConnectionAddr::TcpTls { .. });
            if sentinels
                .iter()
                .any(|s| matches!(s.addr, ConnectionAddr::TcpTls { .. }) != tls)
            {
                return Err("redis_sentinels mix redis:// and rediss://: use one scheme".into());
            }
            let db = sentinels[0].redis.db;
            for s in &mut sentinels {
                // The path's database is the primary's; a sentinel has no databases.
                s.redis.db = 0;
            }
            Mode::Sentinel {
                sentinels,
                master: spec.master.clone(),
                db,
                tls,
            }
        };
        Ok(Target {
            mode,
            password_file: spec.password_file.clone(),
            password: Mutex::new(password),
            username: spec.username.clone(),
            ca_pem,
            describe: spec.describe(),
            next_sentinel: AtomicUsize::new(0),
            warned_password_read: AtomicBool::new(false),
        })
    }

    /// The credentials of a data connection: the password file is read again for every new
    /// connection, so a rotated password applies from the next reconnect without a restart.
    fn credentials(&self, info: &mut ConnectionInfo) {
        if let Some(path) = &self.password_file {
            let mut kept = self.password.lock().unwrap_or_else(PoisonError::into_inner);
            match read_password_file(path, false) {
                Ok(fresh) => {
                    *kept = Some(fresh);
                    self.warned_password_read.store(false, Ordering::Relaxed);
                }
                Err(why) => {
                    if !self.warned_password_read.swap(true, Ordering::Relaxed) {
                        tracing::warn!(error = %why, "redis store: keeping the last password read");
                    }
                }
            }
            info.redis.password.clone_from(&kept);
        }
        if self.username.is_some() {
            info.redis.username.clone_from(&self.username);
        }
    }

    fn client(&self, info: ConnectionInfo) -> Result<Client, String> {
        let tls = matches!(info.addr, ConnectionAddr::TcpTls { .. });
        let built = match (&self.ca_pem, tls) {
            (Some(pem), true) => Client::build_with_tls(
                info,
                TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                },
            ),
            _ => Client::open(info),
        };
        built.map_err(|e| e.to_string())
    }

    /// Whether keys must carry a hash tag (Redis Cluster).
    pub(super) fn is_cluster(&self) -> bool {
        matches!(self.mode, Mode::Cluster(_))
    }

    /// A cluster connection: the seed nodes with the shared credentials and TLS trust; node
    /// failures are retried once inside the crate (the store's deadline bounds the rest).
    async fn connect_cluster(
        &self,
        nodes: &[ConnectionInfo],
        timeout: Duration,
    ) -> Result<Connected, String> {
        let mut infos = Vec::new();
        for node in nodes {
            let mut info = node.clone();
            self.credentials(&mut info);
            infos.push(info);
        }
        let server = infos
            .iter()
            .map(|i| i.addr.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let mut builder = ClusterClient::builder(infos)
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .retries(1);
        if let Some(pem) = &self.ca_pem {
            if nodes
                .iter()
                .any(|n| matches!(n.addr, ConnectionAddr::TcpTls { .. }))
            {
                builder = builder.certs(TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                });
            }
        }
        let client = builder.build().map_err(|e| e.to_string())?;
        let con = bounded(timeout, async {
            client
                .get_async_connection()
                .await
                .map_err(|e| e.to_string())
        })
        .await?;
        Ok(Connected {
            con: Con::Cluster(con),
            server,
        })
    }

    /// Connects to the data server (for sentinels: asks them for the primary first), within
    /// `timeout` per step.
    pub(super) async fn connect(&self, timeout: Duration) -> Result<Connected, String> {
        let config = AsyncConnectionConfig::new().set_connection_timeout(timeout);
        match &self.mode {
            Mode::Single(base) => {
                let mut info = base.clone();
                self.credentials(&mut info);
                let server = info.addr.to_string();
                let con = bounded(timeout, async {
                    self.client(info)?
                        .get_multiplexed_async_connection_with_config(&config)
                        .await
                        .map_err(|e| e.to_string())
                })
                .await?;
                Ok(Connected {
                    con: Con::Single(con),
                    server,
                })
            }
            Mode::Cluster(nodes) => self.connect_cluster(nodes, timeout).await,
            Mode::Sentinel {
                sentinels,
                master,
                db,
                tls,
            } => {
                self.connect_via_sentinels(sentinels, master, *db, *tls, &config, timeout)
                    .await
            }
        }
    }

    /// Asks each sentinel in turn (starting with the one that answered last) for the primary,
    /// connects to it and checks with `ROLE` that it is a primary.
    async fn connect_via_sentinels(
        &self,
        sentinels: &[ConnectionInfo],
        master: &str,
        db: i64,
        tls: bool,
        config: &AsyncConnectionConfig,
        timeout: Duration,
    ) -> Result<Connected, String> {
        let first = self.next_sentinel.load(Ordering::Relaxed);
        let mut errors = Vec::new();
        for i in 0..sentinels.len() {
            let index = (first + i) % sentinels.len();
            let sentinel = &sentinels[index];
            let asked = async {
                // The sentinel's own credentials (from its URL); the CA file applies to it too.
                let client = self.client(sentinel.clone())?;
                ask_sentinel(client, master, config).await
            };
            let addr = match bounded(timeout, asked).await {
                Ok(addr) => addr,
                Err(why) => {
                    errors.push(format!("sentinel {}: {why}", sentinel.addr));
                    continue;
                }
            };
            let (host, port) = addr;
            let mut info = ConnectionInfo {
                addr: if tls {
                    ConnectionAddr::TcpTls {
                        host,
                        port,
                        insecure: false,
                        tls_params: None,
                    }
                } else {
                    ConnectionAddr::Tcp(host, port)
                },
                redis: Default::default(),
            };
            info.redis.db = db;
            self.credentials(&mut info);
            let server = info.addr.to_string();
            let attempt = bounded(timeout, async {
                let mut con = self
                    .client(info)?
                    .get_multiplexed_async_connection_with_config(config)
                    .await
                    .map_err(|e| e.to_string())?;
                let role: Value = ::redis::cmd("ROLE")
                    .query_async(&mut con)
                    .await
                    .map_err(|e| e.to_string())?;
                match role_name(&role).as_deref() {
                    Some("master") => Ok(con),
                    Some(other) => Err(format!("is a {other}, not the primary")),
                    None => Err("unexpected ROLE reply".to_string()),
                }
            })
            .await;
            match attempt {
                Ok(con) => {
                    self.next_sentinel.store(index, Ordering::Relaxed);
                    return Ok(Connected {
                        con: Con::Single(con),
                        server,
                    });
                }
                Err(why) => errors.push(format!(
                    "sentinel {} names {server}, which {why}",
                    sentinel.addr
                )),
            }
        }
        Err(errors.join("; "))
    }
}

/// `SENTINEL get-master-addr-by-name`: the primary's host and port.
async fn ask_sentinel(
    client: Client,
    master: &str,
    config: &AsyncConnectionConfig,
) -> Result<(String, u16), String> {
    let mut con = client
        .get_multiplexed_async_connection_with_config(config)
        .await
        .map_err(|e| e.to_string())?;
    let reply: Option<(String, u16)> = ::redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(master)
        .query_async(&mut con)
        .await
        .map_err(|e| e.to_string())?;
    reply.ok_or_else(|| format!("does not know a master named {master:?}"))
}

fn role_name(reply: &Value) -> Option<String> {
    let Value::Array(items) = reply else {
        return None;
    };
    match items.first()? {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

async fn bounded<T>(
    timeout: Duration,
    f: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout(timeout, f)
        .await
        .unwrap_or_else(|_| Err(format!("timed out after {} ms", timeout.as_millis())))
}

/// Reads a password file: one line (a trailing newline is trimmed), not empty. With `warn`, a
/// file that group or others can read gets a warning (the secret should be readable by the
/// daemon's user only).
pub fn read_password_file(path: &Path, warn: bool) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read redis_password_file: {e}", path.display()))?;
    if warn {
        warn_if_readable_by_others(path);
    }
    let line = text.strip_suffix('\n').unwrap_or(&text);
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.contains('\n') {
        return Err(format!(
            "{}:2: the password file must hold one line (the password)",
            path.display()
        ));
    }
    if line.is_empty() {
        return Err(format!("{}:1: the password file is empty", path.display()));
    }
    Ok(line.to_string())
}

fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o044 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{:o}", mode & 0o777),
                "redis_password_file is readable by group or others: chmod 600 (or 640 with \
                 the daemon's group)"
            );
        }
    }
}

/// Reads a PEM CA file and checks that it holds at least one certificate.
pub fn read_ca_file(path: &Path) -> Result<Vec<u8>, String> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("{}: cannot read redis_ca_file: {e}", path.display()))?;
    let text = String::from_utf8_lossy(&pem);
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "{}: redis_ca_file holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(pem)
}

/// Checks the files a `[greylist]` redis setup names (password file, CA file) and the
/// combination of keys, as `run` will use them: `check-config` calls this too.
pub fn check_spec(spec: &RedisSpec) -> Result<(), String> {
    Target::resolve(spec).map(|_| ())
}

/// Checks a `redis_url` the way the store will use it, without connecting: `check-config` and
/// the configuration loader call this, so they refuse exactly what `run` refuses.
pub fn check_url(url: &str) -> Result<(), String> {
    parse_url(url).map(|_| ())
}

/// Checks one `redis_sentinels` entry: `redis://` or `rediss://` with a host.
pub fn check_sentinel_url(url: &str) -> Result<ConnectionInfo, String> {
    check_tcp_url(url, "sentinel")
}

/// Checks one `redis_cluster` entry: `redis://` or `rediss://` with a host, database 0.
pub fn check_cluster_url(url: &str) -> Result<ConnectionInfo, String> {
    check_tcp_url(url, "cluster node")
}

fn check_tcp_url(url: &str, what: &str) -> Result<ConnectionInfo, String> {
    let info = parse_url(url)?;
    match info.addr {
        ConnectionAddr::Tcp(..) | ConnectionAddr::TcpTls { .. } => Ok(info),
        ConnectionAddr::Unix(_) => Err(format!(
            "{what} {:?}: a {what} is reached over TCP (redis:// or rediss://)",
            redact(url)
        )),
    }
}

/// The one place that decides whether a Redis URL is usable (scheme, then the redis crate's
/// own parse).
fn parse_url(url: &str) -> Result<ConnectionInfo, String> {
    let scheme = url.split("://").next().unwrap_or("").to_ascii_lowercase();
    if !matches!(scheme.as_str(), "redis" | "rediss" | "unix" | "redis+unix") {
        return Err(format!(
            "invalid redis URL {:?}: must start with redis://, rediss:// (TLS), unix:// or \
             redis+unix://",
            redact(url)
        ));
    }
    url.into_connection_info()
        .map_err(|e| format!("invalid redis URL {:?}: {e}", redact(url)))
}

/// `url` without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!("{}{}:***{}", &url[..s + 3], &userinfo[..colon], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
