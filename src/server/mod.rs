//! The server: listeners, one task per MTA connection, reload and graceful shutdown.
//!
//! Connections are bounded by a semaphore (`milter.max_connections`); a connection over the limit
//! waits in the accept queue rather than being refused, as libmilter does. SIGHUP swaps in a new
//! policy for sessions that start afterwards; SIGTERM stops accepting and lets sessions in flight
//! finish up to a deadline.

pub mod connection;
pub mod listener;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{watch, Semaphore};

use crate::checks::greylist::{purge_task, Greylister};
use crate::config::Config;
use crate::metrics::{self, metrics};
use crate::policy::{self, Policy};
use crate::session::{PolicySource, Session};
use crate::store::GreylistStore;
use connection::Limits;
use listener::Listener;

/// How often expired greylist entries are purged.
const PURGE_INTERVAL: Duration = Duration::from_secs(600);

/// How long SIGTERM waits for sessions in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

/// The policy in force, swapped as a whole on reload, and the greylist store every policy
/// shares (a store is opened once: reloads keep it).
pub struct SharedPolicy {
    current: RwLock<Arc<Policy>>,
    store: Option<Arc<dyn GreylistStore>>,
}

impl SharedPolicy {
    pub fn new(policy: Policy, store: Option<Arc<dyn GreylistStore>>) -> SharedPolicy {
        let policy = attach(policy, &store);
        SharedPolicy {
            current: RwLock::new(Arc::new(policy)),
            store,
        }
    }

    pub fn replace(&self, policy: Policy) {
        let policy = attach(policy, &self.store);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(policy);
    }
}

fn attach(policy: Policy, store: &Option<Arc<dyn GreylistStore>>) -> Policy {
    match store {
        Some(s) => policy.with_greylist_store(s.clone()),
        None => policy,
    }
}

/// Whether the configuration can greylist at all (for everyone, or selected by a finding).
fn uses_greylisting(config: &Config) -> bool {
    config.greylist.enabled || config.any_finding_action(crate::config::Action::Greylist)
}

impl PolicySource for SharedPolicy {
    fn current(&self) -> Arc<Policy> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A running daemon's shared parts.
pub struct Server {
    config_path: PathBuf,
    config: Config,
    policy: Policy,
}

impl Server {
    pub fn new(config_path: PathBuf, config: Config, policy: Policy) -> Server {
        Server {
            config_path,
            config,
            policy,
        }
    }

    /// Binds every listener, serves until SIGTERM/SIGINT, then drains.
    pub async fn run(self) -> Result<(), String> {
        let signals = Signals::install()?;
        // The greylist store first: an unwritable file stops the start with its reason; an
        // unreadable one is moved aside (greylisting starts afresh rather than mail stopping).
        let greylister = if uses_greylisting(&self.config) {
            Some(Greylister::open_for_daemon(&self.config.greylist).await?)
        } else {
            None
        };
        let store = greylister.as_ref().map(|g| g.store().clone());
        if let Some(s) = &store {
            if let Ok(n) = s.len().await {
                metrics().greylist_entries(s.backend(), n as i64);
            }
        }
        let policy = Arc::new(SharedPolicy::new(self.policy, store.clone()));
        let activated = listener::from_systemd()?;
        let socket_activated = activated.is_some();
        let listeners = match activated {
            Some(l) => l,
            None => {
                let mut listeners = Vec::new();
                for spec in &self.config.milter.listen {
                    listeners.push(listener::bind(spec, &self.config.milter).await?);
                }
                listeners
            }
        };
        let metrics_listener = match self.config.metrics.listen {
            Some(addr) => Some(metrics::bind(addr).await.map_err(|e| e.to_string())?),
            None => None,
        };
        metrics().config_loaded();
        let listen_list = listeners
            .iter()
            .map(Listener::describe)
            .collect::<Vec<_>>()
            .join(" ");
        let (access, regex) = policy.current().rule_counts();
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            config = %self.config_path.display(),
            listen = %listen_list,
            socket_activated,
            mode = ?self.config.milter.mode,
            access_rules = access,
            regex_rules = regex,
            greylist_store = store.as_ref().map_or("none", |s| s.backend()),
            "mxsentry started"
        );

        let max = self.config.milter.max_connections;
        let slots = Arc::new(Semaphore::new(max));
        let limits = Limits {
            max_frame: self.config.milter.max_frame,
            idle_timeout: self.config.milter.idle_timeout,
            write_timeout: self.config.milter.write_timeout,
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        if let Some(l) = metrics_listener {
            let stop = stop_rx.clone();
            tokio::spawn(async move {
                if let Err(e) = metrics::serve_listener(l, metrics(), stop).await {
                    tracing::error!("metrics endpoint stopped: {e}");
                }
            });
        }
        let mut accept_tasks = Vec::new();
        for l in listeners {
            accept_tasks.push(tokio::spawn(accept_loop(
                l,
                slots.clone(),
                policy.clone() as Arc<dyn PolicySource>,
                limits,
                stop_rx.clone(),
            )));
        }

        if let Some(s) = &store {
            tokio::spawn(purge_task(s.clone(), PURGE_INTERVAL, stop_rx.clone()));
        }
        signals.run(&self.config_path, &policy).await;
        tracing::info!("shutting down: no new connections, draining sessions in flight");
        let _ = stop_tx.send(true);
        for t in accept_tasks {
            let _ = t.await;
        }
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, slots.acquire_many(max as u32)).await;
        match drained {
            Ok(_) => tracing::info!("all sessions finished; exiting"),
            Err(_) => tracing::warn!(
                in_flight = max - slots.available_permits(),
                "sessions still open after {SHUTDOWN_GRACE:?}; exiting anyway"
            ),
        }
        if let Some(s) = &store {
            match s.flush().await {
                Ok(()) => tracing::info!(backend = s.backend(), "greylist store flushed"),
                Err(e) => {
                    tracing::error!(backend = s.backend(), "greylist store flush failed: {e}")
                }
            }
        }
        if !socket_activated {
            for spec in &self.config.milter.listen {
                if let crate::config::ListenSpec::Unix(path) = spec {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        Ok(())
    }
}

/// The signals the daemon handles. Installed before any socket is bound: a SIGHUP that arrives
/// as soon as the MTA can connect must reload, not kill the process (the default action).
struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals, String> {
        use tokio::signal::unix::{signal, SignalKind};
        let install = |kind: SignalKind| {
            signal(kind).map_err(|e| format!("cannot install signal handlers: {e}"))
        };
        Ok(Signals {
            hup: install(SignalKind::hangup())?,
            term: install(SignalKind::terminate())?,
            int: install(SignalKind::interrupt())?,
        })
    }

    /// Serves SIGHUP (reload) until SIGTERM or SIGINT arrives.
    async fn run(mut self, config_path: &std::path::Path, shared: &SharedPolicy) {
        loop {
            tokio::select! {
                _ = self.hup.recv() => reload(config_path, shared),
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
            }
        }
    }
}

/// Re-reads the config and rule files; on any error keeps the policy in force.
pub fn reload(config_path: &std::path::Path, shared: &SharedPolicy) {
    match policy::load(config_path) {
        Ok((_config, policy)) => {
            let (access, regex) = policy.rule_counts();
            shared.replace(policy);
            metrics().reload(true);
            tracing::info!(
                config = %config_path.display(),
                access_rules = access,
                regex_rules = regex,
                "configuration reloaded"
            );
        }
        Err(e) => {
            metrics().reload(false);
            tracing::error!("reload failed, keeping the running configuration: {e}")
        }
    }
}

async fn accept_loop(
    listener: Listener,
    slots: Arc<Semaphore>,
    policies: Arc<dyn PolicySource>,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(10);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.changed() => return,
        };
        let accepted = tokio::select! {
            a = accept(&listener) => a,
            _ = stop.changed() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(10);
                let session = Session::new(policies.clone());
                // Boxed: the connection future is ~3.4 KB, which tokio would otherwise copy
                // into the task at spawn and again when it stores the task's output.
                tokio::spawn(Box::pin(async move {
                    let _open = metrics().connection();
                    let end = match stream {
                        Stream::Tcp(s) => {
                            let _ = s.set_nodelay(true);
                            connection::serve(s, session, limits).await
                        }
                        Stream::Unix(s) => connection::serve(s, session, limits).await,
                    };
                    if let Some(reason) = end.metric_reason() {
                        metrics().protocol_error(reason);
                    }
                    if end.is_clean() {
                        tracing::debug!(peer = %peer, "connection closed: {end}");
                    } else {
                        tracing::warn!(peer = %peer, "connection closed: {end}");
                    }
                    drop(permit);
                }));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::error!("accept failed: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> std::io::Result<(Stream, String)> {
    match listener {
        Listener::Tcp(l) => {
            let (s, a) = l.accept().await?;
            Ok((Stream::Tcp(s), a.to_string()))
        }
        Listener::Unix(l, path) => {
            let (s, _) = l.accept().await?;
            Ok((Stream::Unix(s), format!("unix:{}", path.display())))
        }
    }
}
