//! The server: listeners, one task per MTA connection, reload and graceful shutdown.
//!
//! Connections are bounded by a semaphore (`milter.max_connections`), but every connection is
//! accepted at once: one over the limit is answered straight away with `overflow_action`
//! (`overflow.rs`) instead of waiting in the kernel's accept queue, where the MTA would sit out
//! its milter timeouts while mail stalls. The open file limit is raised and the limits fitted
//! inside it (`limits.rs`); should descriptors still run out, waiting connections are closed at
//! once rather than left to hang. SIGHUP swaps in a new policy for sessions that start
//! afterwards; SIGTERM stops accepting, closes connections between SMTP sessions and lets the
//! sessions in flight finish, up to a deadline.

pub mod connection;
pub mod limits;
pub mod listener;
pub mod overflow;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::checks::dnsbl::board::HealthBoard;
use crate::checks::dnsbl::probe;
use crate::config::{Config, OverflowAction};
use crate::log_limit::WarnEvery;
use crate::metrics::{self, metrics};
use crate::policy::{self, Policy};
use crate::protocol::negotiate::Negotiated;
use crate::session::{PolicySource, Session};
use crate::store::{self, purge_task, GreylistStore, Instrumented, OpenFor};
use connection::Limits;
use listener::Listener;

pub use limits::raise_nofile_limit;

/// How often expired greylist entries are purged.
const PURGE_INTERVAL: Duration = Duration::from_secs(600);

/// How long SIGTERM waits for sessions in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

/// The policy in force, swapped as a whole on reload, and the greylist store every policy
/// shares (a store is opened once: reloads keep it).
pub struct SharedPolicy {
    current: RwLock<Arc<Policy>>,
    store: Option<Arc<dyn GreylistStore>>,
    /// The zones' health, probed by a task of the daemon; kept across reloads.
    health: Arc<HealthBoard>,
    loads: Mutex<Loads>,
}

/// When the configuration in force was loaded, and how the last reload went (`mxsentry
/// status`). Unix seconds.
#[derive(Debug, Clone, Default)]
pub struct Loads {
    /// When the configuration in force was loaded (start or the last successful reload).
    pub loaded_at: u64,
    /// The last reload (SIGHUP or `mxsentry reload`): when, and its result.
    pub last_reload: Option<(u64, Result<String, String>)>,
}

impl SharedPolicy {
    pub fn new(policy: Policy, store: Option<Arc<dyn GreylistStore>>) -> SharedPolicy {
        let health = HealthBoard::new(&policy.config().dnsbl);
        let policy = attach(policy, &store, &health);
        SharedPolicy {
            current: RwLock::new(Arc::new(policy)),
            store,
            health,
            loads: Mutex::new(Loads {
                loaded_at: store::unix_now(),
                last_reload: None,
            }),
        }
    }

    pub fn replace(&self, policy: Policy) {
        self.health.reconcile(&policy.config().dnsbl);
        let policy = attach(policy, &self.store, &self.health);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(policy);
        // After the swap: the probe task reads the configuration in force when it wakes.
        self.health.wake();
    }

    /// The greylist store the daemon holds (the control socket's handle to it).
    pub fn store(&self) -> Option<&Arc<dyn GreylistStore>> {
        self.store.as_ref()
    }

    /// The zones' health (`mxsentry status`, the probe task).
    pub fn health(&self) -> &Arc<HealthBoard> {
        &self.health
    }

    /// When the configuration was loaded and how the last reload went.
    pub fn loads(&self) -> Loads {
        self.loads.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn record_reload(&self, result: &Result<String, String>) {
        let now = store::unix_now();
        let mut loads = self.loads.lock().unwrap_or_else(|e| e.into_inner());
        if result.is_ok() {
            loads.loaded_at = now;
        }
        loads.last_reload = Some((now, result.clone()));
    }
}

fn attach(
    policy: Policy,
    store: &Option<Arc<dyn GreylistStore>>,
    health: &Arc<HealthBoard>,
) -> Policy {
    let policy = policy.with_zone_health(health.clone());
    match store {
        Some(s) => policy.with_greylist_store(s.clone()),
        None => policy,
    }
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
        // Before anything opens descriptors: the limit is the process's.
        let (max, handlers) = fit_open_files(&self.config);
        // The greylist store first: an unwritable file stops the start with its reason; an
        // unreadable one is moved aside (greylisting starts afresh rather than mail stopping).
        // A shadow that greylists reads the store (never writes it): open it for the shadow too.
        let store = if self.policy.may_greylist_any() {
            Some(store::open(&self.config.greylist, OpenFor::Daemon).await?)
        } else {
            None
        };
        if let Some(s) = &store {
            Instrumented::new(s.clone()).count_entries().await;
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
            greylist_allow_entries = policy.current().greylist_allow_entries(),
            greylist_store = store.as_ref().map_or("none", |s| s.backend()),
            max_connections = max,
            overflow_action = self.config.milter.overflow_action.name(),
            "mxsentry started"
        );
        log_shadow(
            &policy.current(),
            "shadow policy loaded (decided beside, never enforced)",
        );

        let m = &self.config.milter;
        metrics().connections_limit(max);
        let slots = Arc::new(Semaphore::new(max));
        let overflow_slots = Arc::new(Semaphore::new(handlers));
        let limits = Limits {
            max_frame: m.max_frame,
            max_macro_frame: m.max_macro_frame,
            max_macros: m.max_macros,
            negotiation_timeout: m.negotiation_timeout,
            idle_timeout: m.idle_timeout,
            write_timeout: m.write_timeout,
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
        // The control socket never stops mail: trouble with it is a warning (control/server.rs).
        let control = crate::control::server::start(
            self.config.control.socket.as_deref(),
            crate::control::server::Context::new(&self.config_path, &self.config, policy.clone()),
            stop_rx.clone(),
        );
        let action = m.overflow_action;
        let shared = Arc::new(Shared {
            slots: slots.clone(),
            overflow_slots: overflow_slots.clone(),
            policies: policy.clone() as Arc<dyn PolicySource>,
            limits,
            overflow_action: action,
            stop: stop_rx.clone(),
            overflow_warn: WarnEvery::new(WARN_PERIOD, move |n| {
                tracing::warn!(
                    max_connections = max,
                    overflow_action = action.name(),
                    "connection limit reached: {n} MTA connection(s) over max_connections \
                     answered at once instead of served (mxsentry_connections_overflow_total)"
                )
            }),
            fd_warn: WarnEvery::new(WARN_PERIOD, |n| {
                tracing::error!(
                    "out of open files: {n} MTA connection(s) closed at once instead of left \
                     waiting; raise LimitNOFILE or lower max_connections"
                )
            }),
        });
        // Zone health probes: the first round starts now (before the first
        // connection is accepted), then every health_check_interval.
        let probes = {
            let shared = policy.clone();
            let current = move || shared.current().config().clone();
            tokio::spawn(probe::run(
                policy.health().clone(),
                current,
                stop_rx.clone(),
            ))
        };
        let mut accept_tasks = Vec::new();
        for l in listeners {
            accept_tasks.push(tokio::spawn(accept_loop(l, shared.clone())));
        }
        drop(shared);

        if let Some(s) = &store {
            tokio::spawn(purge_task(s.clone(), PURGE_INTERVAL, stop_rx.clone()));
        }
        signals.run(&self.config_path, &policy).await;
        tracing::info!("shutting down: no new connections, draining sessions in flight");
        let _ = stop_tx.send(true);
        for t in accept_tasks {
            let _ = t.await;
        }
        probes.abort();
        if let Some(c) = control {
            let _ = c.await;
        }
        let all = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            let _s = slots.acquire_many(all(max)).await;
            let _o = overflow_slots.acquire_many(all(handlers)).await;
        })
        .await;
        match drained {
            Ok(()) => tracing::info!("all sessions finished; exiting"),
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
                _ = self.hup.recv() => {
                    let _ = reload(config_path, shared);
                }
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
            }
        }
    }
}

/// Re-reads the config and rule files; on any error keeps the policy in force. Returns what
/// was loaded (`file: N access rules, M regex rules`) or the error (`file:line: reason`).
pub fn reload(config_path: &std::path::Path, shared: &SharedPolicy) -> Result<String, String> {
    let result = match policy::load(config_path) {
        Ok((_config, policy)) => {
            let (access, regex) = policy.rule_counts();
            let allow = policy.greylist_allow_entries();
            shared.replace(policy);
            metrics().reload(true);
            tracing::info!(
                config = %config_path.display(),
                access_rules = access,
                regex_rules = regex,
                greylist_allow_entries = allow,
                "configuration reloaded"
            );
            let shadow = log_shadow(&shared.current(), "shadow policy reloaded");
            Ok(format!(
                "{}: {access} access rules, {regex} regex rules{shadow}",
                config_path.display()
            ))
        }
        Err(e) => {
            metrics().reload(false);
            tracing::error!("reload failed, keeping the running configuration: {e}");
            Err(e.to_string())
        }
    };
    shared.record_reload(&result);
    result
}

/// Logs the shadow candidate `policy` carries, if any; returns `; shadow FILE: N access rules,
/// M regex rules` for the reload message (empty without one).
fn log_shadow(policy: &Policy, message: &str) -> String {
    let (Some(shadow), Some(path)) = (policy.shadow(), policy.shadow_path()) else {
        return String::new();
    };
    let (access, regex) = shadow.rule_counts();
    tracing::info!(
        shadow = %path.display(),
        access_rules = access,
        regex_rules = regex,
        shares_session_lookups = policy.shadow_shares_lookups(),
        "{message}"
    );
    format!(
        "; shadow {}: {access} access rules, {regex} regex rules",
        path.display()
    )
}

/// How often a warning that repeats (connections over the limit, out of files) is logged.
const WARN_PERIOD: Duration = Duration::from_secs(10);

/// Raises the open file limit and fits the connection limits in it; returns
/// `(max_connections, overflow handlers)`.
fn fit_open_files(config: &Config) -> (usize, usize) {
    let wanted = config.milter.max_connections;
    let handlers = limits::overflow_handlers_for(wanted);
    let reserved = limits::reserved_fds(config.dns.max_concurrent);
    let nofile = match limits::raise_nofile_limit() {
        Ok((before, now)) => {
            if now != before {
                tracing::info!("open file limit raised from {before} to {now}");
            }
            now
        }
        Err(e) => {
            let soft = limits::nofile_limit().map_or(1024, |(soft, _)| soft);
            tracing::warn!("cannot raise the open file limit ({soft}): {e}");
            soft
        }
    };
    let (max, handlers) = limits::fit(wanted, handlers, reserved, nofile);
    if max < wanted {
        tracing::warn!(
            open_file_limit = nofile,
            "max_connections = {wanted} does not fit in the open file limit ({nofile}, with \
             {reserved} descriptors kept for DNS, metrics and the daemon): serving at most {max} \
             connections at once, the rest get the overflow action; raise LimitNOFILE"
        );
    }
    (max, handlers)
}

/// What every connection task of the daemon shares.
pub(crate) struct Shared {
    /// `max_connections` permits: a served connection holds one for its life.
    slots: Arc<Semaphore>,
    /// Overflow handlers at once; beyond them an overflow connection is closed unanswered.
    overflow_slots: Arc<Semaphore>,
    policies: Arc<dyn PolicySource>,
    limits: Limits,
    overflow_action: OverflowAction,
    /// Turns true at SIGTERM.
    stop: watch::Receiver<bool>,
    overflow_warn: Arc<WarnEvery>,
    fd_warn: Arc<WarnEvery>,
}

impl Shared {
    /// Counts a connection over the limit that gets `overflow_action`.
    fn overflowed(&self) {
        metrics().connection_overflow(self.overflow_action.name());
        self.overflow_warn.hit();
    }

    /// Counts a connection closed unanswered (overflow handlers busy, or out of files).
    fn closed_unanswered(&self, warn: &Arc<WarnEvery>) {
        metrics().connection_overflow(OverflowAction::Close.name());
        warn.hit();
    }
}

async fn accept_loop(listener: Listener, shared: Arc<Shared>) {
    let mut stop = shared.stop.clone();
    // Kept open to be closed when descriptors run out: one free descriptor is what it takes
    // to accept a waiting connection and close it (the MTA then learns at once).
    let mut spare = spare_fd();
    let mut backoff = Duration::from_millis(10);
    let nodelay_inherited = listener.nodelay_for_accepted();
    loop {
        let accepted = tokio::select! {
            a = accept(&listener) => a,
            _ = stop.changed() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(10);
                dispatch(stream, peer, nodelay_inherited, &shared);
            }
            Err(e) if limits::is_out_of_fds(&e) && spare.is_some() => {
                let n = shed(&listener, &mut spare).await;
                for _ in 0..n {
                    shared.closed_unanswered(&shared.fd_warn);
                }
                if n == 0 {
                    // The freed descriptor was taken by something else: do not spin.
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                // Out of files with no spare descriptor to free (it could not be taken back),
                // or another error: wait for things to change.
                tracing::error!("accept failed: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                if spare.is_none() {
                    spare = spare_fd();
                }
            }
        }
    }
}

fn spare_fd() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

/// Out of descriptors: closes the spare one, then accepts and closes every connection waiting
/// (each reuses the descriptor the previous one freed), then takes the spare back. Returns the
/// number closed.
async fn shed(listener: &Listener, spare: &mut Option<std::fs::File>) -> usize {
    drop(spare.take());
    let mut n = 0;
    // A zero timeout polls accept once: a connection that is waiting, or nothing.
    while let Ok(Ok((stream, _))) = tokio::time::timeout(Duration::ZERO, accept(listener)).await {
        drop(stream);
        n += 1;
        if n % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
    *spare = spare_fd();
    n
}

/// Serves an accepted connection, or answers it as overflow. `nodelay_inherited`: the
/// listener gave the connection TCP_NODELAY already.
fn dispatch(stream: Stream, peer: String, nodelay_inherited: bool, shared: &Arc<Shared>) {
    if let Stream::Tcp(s) = &stream {
        if !nodelay_inherited {
            let _ = s.set_nodelay(true);
        }
    }
    let Ok(permit) = shared.slots.clone().try_acquire_owned() else {
        return overflow(stream, peer, shared);
    };
    let shared = shared.clone();
    // Boxed: the connection future is ~3.4 KB, which tokio would otherwise copy into the task
    // at spawn and again when it stores the task's output.
    tokio::spawn(Box::pin(async move {
        match stream {
            Stream::Tcp(s) => run_connection(s, peer, permit, None, &[], &shared).await,
            Stream::Unix(s) => run_connection(s, peer, permit, None, &[], &shared).await,
        }
    }));
}

/// A connection over `max_connections`.
fn overflow(stream: Stream, peer: String, shared: &Arc<Shared>) {
    if shared.overflow_action == OverflowAction::Close {
        drop(stream);
        return shared.overflowed();
    }
    let Ok(handler) = shared.overflow_slots.clone().try_acquire_owned() else {
        drop(stream);
        return shared.closed_unanswered(&shared.overflow_warn);
    };
    shared.overflowed();
    let shared = shared.clone();
    tokio::spawn(async move {
        match stream {
            Stream::Tcp(s) => answer_overflow(s, peer, handler, shared).await,
            Stream::Unix(s) => answer_overflow(s, peer, handler, shared).await,
        }
    });
}

async fn answer_overflow<S>(
    mut stream: S,
    peer: String,
    handler: OwnedSemaphorePermit,
    shared: Arc<Shared>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let outcome = overflow::answer(&mut stream, &shared).await;
    drop(handler);
    if let overflow::Outcome::Upgrade(negotiated, slot, head) = outcome {
        tracing::debug!(peer = %peer, "overflow connection reused after QUIT_NC: now served");
        // Boxed: only a taken-over connection pays for the full connection future.
        Box::pin(run_connection(
            stream,
            peer,
            slot,
            Some(negotiated),
            &head,
            &shared,
        ))
        .await;
    }
}

/// Serves one connection holding a `max_connections` slot; `negotiated`: the options agreed by
/// the overflow handler that hands it over, with `read`, the bytes it already read.
async fn run_connection<S>(
    stream: S,
    peer: String,
    slot: OwnedSemaphorePermit,
    negotiated: Option<Negotiated>,
    read: &[u8],
    shared: &Shared,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _open = metrics().connection();
    // The session is made here, inside the call: made earlier and moved in, it would take room
    // in this future beside its copy in the connection's (some 1.4 KB per idle connection).
    let session = Session::with_negotiated(shared.policies.clone(), negotiated);
    let stop = shared.stop.clone();
    let end = connection::serve(stream, session, shared.limits, stop, read).await;
    if let Some(reason) = end.metric_reason() {
        metrics().protocol_error(reason);
    }
    if end.is_clean() {
        tracing::debug!(peer = %peer, "connection closed: {end}");
    } else {
        tracing::warn!(peer = %peer, "connection closed: {end}");
    }
    drop(slot);
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
