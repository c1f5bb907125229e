//! A minimal HTTP/1.1 endpoint for Prometheus: `GET /metrics` (text exposition format) and
//! `GET /healthz` (`ok`); anything else is 404 (or 405 for a method other than GET/HEAD).
//!
//! The endpoint must keep answering scrapes whatever else connects to it: monitoring that
//! reads "down" while the milter serves mail is an outage of its own. So every connection is
//! bounded in space and time, and a new connection is never left waiting behind old ones:
//!
//! - **Connections**: at most [`MAX_CONNECTIONS`] open. Accepting never waits; at the cap the
//!   connection accepted earliest that has not yet sent a complete request is closed to make
//!   room (failing that, the earliest one lingering after its response, then the earliest one
//!   still being written to). A scraper sends its request as soon as it connects, so idle,
//!   slow or abandoned connections are the ones that go.
//! - **Request head**: at most [`MAX_REQUEST`] bytes, complete within [`READ_TIMEOUT`] of the
//!   accept. A deadline for the whole head, not for each read, so a client that sends a byte a
//!   second is cut as surely as a silent one (408).
//! - **Response**: written within [`WRITE_TIMEOUT`], for clients that never read.
//! - **Close**: one request per connection (`Connection: close`). After the response the
//!   server sends its FIN and reads what the client still sends, up to [`LINGER_BYTES`] for at
//!   most [`LINGER_TIMEOUT`], before closing: closing with unread input makes the kernel send
//!   a reset, and a client still writing a large request would then lose the 431 it has not
//!   read yet.
//!
//! Built on tokio alone. hyper (with hyper-util) was considered: its HTTP/1 server has a
//! header read timeout and a buffer limit, but no connection cap (let alone eviction), no
//! write deadline and no lingering close (it closes with the input unread: hyper 1.13 answers
//! a 5 MB head with a reset, not its 431; see also hyper#3078), so the accept loop, the cap
//! and the close would be written around it anyway, for eight more crates. The two fixed
//! documents here need none of its features (keep-alive, bodies, chunking, HTTP/2).

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::Metrics;

/// Largest request head (request line and headers) accepted.
pub const MAX_REQUEST: usize = 8 * 1024;
/// Longest wait for a complete request head, from the accept (not per read).
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait to write a response.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most connections open at once; at the cap a new one replaces the oldest idle one.
pub const MAX_CONNECTIONS: usize = 256;
/// Longest time spent reading (and dropping) what a client still sends after its response.
pub const LINGER_TIMEOUT: Duration = Duration::from_secs(2);
/// Most bytes read (and dropped) after a response: a 5 MB request head is drained whole, so
/// its sender reads the 431 instead of a reset.
pub const LINGER_BYTES: usize = 16 * 1024 * 1024;

/// The content type of the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub(super) max_request: usize,
    pub(super) read_timeout: Duration,
    pub(super) write_timeout: Duration,
    pub(super) max_connections: usize,
    pub(super) linger_timeout: Duration,
    pub(super) linger_bytes: usize,
}

pub(super) const LIMITS: Limits = Limits {
    max_request: MAX_REQUEST,
    read_timeout: READ_TIMEOUT,
    write_timeout: WRITE_TIMEOUT,
    max_connections: MAX_CONNECTIONS,
    linger_timeout: LINGER_TIMEOUT,
    linger_bytes: LINGER_BYTES,
};

/// Binds the metrics address, so the daemon can refuse to start when it is taken; serve the
/// result with [`serve_listener`]. The error names the address.
pub async fn bind(listen: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(listen).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on {listen} for metrics: {e}"),
        )
    })
}

/// Binds `listen` and serves it until `shutdown` becomes true (or its sender is dropped).
pub async fn serve(
    listen: SocketAddr,
    metrics: &'static Metrics,
    shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    serve_listener(bind(listen).await?, metrics, shutdown).await
}

/// Serves an already bound listener (from [`bind`], or one passed by systemd) until
/// `shutdown` becomes true or its sender is dropped. Requests in flight finish on their own,
/// bounded by the timeouts.
pub async fn serve_listener(
    listener: TcpListener,
    metrics: &'static Metrics,
    shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    serve_with(listener, metrics, shutdown, LIMITS).await
}

pub(super) async fn serve_with(
    listener: TcpListener,
    metrics: &'static Metrics,
    mut shutdown: watch::Receiver<bool>,
    limits: Limits,
) -> io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(listen = %addr, "metrics endpoint listening");
    }
    let table: Table = Arc::default();
    let mut backoff = Duration::from_millis(10);
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let accepted = tokio::select! {
            a = listener.accept() => a,
            c = shutdown.changed() => { if c.is_err() { return Ok(()) } continue }
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(10);
                let (slot, evicted) = Slot::enter(&table, limits.max_connections);
                if let Some(victim) = evicted {
                    // A lingering connection has its response already: closing it drops
                    // nothing.
                    if victim.phase != Phase::Linger {
                        metrics.http_connection_dropped("evicted");
                    }
                    tracing::trace!(phase = ?victim.phase, "metrics connection cap: evicted");
                    if let Some(task) = victim.task {
                        task.abort();
                    }
                }
                let id = slot.id;
                let task = tokio::spawn(async move {
                    handle(stream, metrics, limits, &slot).await;
                    tracing::trace!(peer = %peer, "metrics connection closed");
                });
                // Recorded after the spawn, not under the lock in `enter`: a task dropped at
                // once (by a runtime shutting down) takes the lock in `Slot::drop`. Only this
                // loop evicts, so no eviction looks for the handle before it is set.
                if let Some(c) = lock(&table).open.get_mut(&id) {
                    c.task = Some(task.abort_handle());
                }
            }
            Err(e) => {
                tracing::warn!("metrics accept failed: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Where a connection is. The order is the eviction order at the cap: a connection waiting
/// for its request costs its client nothing to hold, and a scraper never waits there long;
/// a lingering one has its response; one being written to is evicted last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Head,
    Linger,
    Write,
}

/// An open connection, as the accept loop sees it.
#[derive(Debug)]
struct Conn {
    phase: Phase,
    /// Set right after the spawn.
    task: Option<AbortHandle>,
}

/// The open connections.
type Table = Arc<Mutex<Conns>>;

#[derive(Default)]
struct Conns {
    /// By accept order: ids only grow (never reused, so a dropped [`Slot`] removes only its
    /// own entry), and the first key is the oldest.
    open: BTreeMap<u64, Conn>,
    next_id: u64,
}

fn lock(table: &Table) -> MutexGuard<'_, Conns> {
    // The table stays consistent whatever a panicking holder did (each change is one call).
    table.lock().unwrap_or_else(|e| e.into_inner())
}

/// A connection's entry in the table; it leaves the table when dropped, also when its task is
/// aborted.
struct Slot {
    table: Table,
    id: u64,
}

impl Slot {
    /// Enters a new connection; at `cap` open ones, first removes (and returns) the one to
    /// evict: the lowest phase, the oldest within it.
    fn enter(table: &Table, cap: usize) -> (Slot, Option<Conn>) {
        let mut conns = lock(table);
        let victim = if conns.open.len() >= cap {
            let id = conns
                .open
                .iter()
                .min_by_key(|(id, c)| (c.phase, **id))
                .map(|(id, _)| *id);
            id.and_then(|id| conns.open.remove(&id))
        } else {
            None
        };
        let id = conns.next_id;
        conns.next_id += 1;
        conns.open.insert(
            id,
            Conn {
                phase: Phase::Head,
                task: None,
            },
        );
        let slot = Slot {
            table: table.clone(),
            id,
        };
        (slot, victim)
    }

    fn set(&self, phase: Phase) {
        if let Some(c) = lock(&self.table).open.get_mut(&self.id) {
            c.phase = phase;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.table).open.remove(&self.id);
    }
}

/// Why no request could be read.
#[derive(Debug, PartialEq, Eq)]
enum HeadError {
    /// The peer closed before sending anything: nothing to answer.
    Closed,
    /// Not a request head (or cut short).
    Malformed,
    /// More than `max_request` bytes without the end of the head.
    TooLarge,
    /// The head did not arrive in time.
    Timeout,
}

/// A parsed request line.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: String,
    path: String,
}

async fn handle(mut stream: TcpStream, metrics: &Metrics, limits: Limits, slot: &Slot) {
    let head = match tokio::time::timeout(
        limits.read_timeout,
        read_head(&mut stream, limits.max_request),
    )
    .await
    {
        Ok(Ok(head)) => parse_head(&head),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(HeadError::Timeout),
    };
    slot.set(Phase::Write);
    let (response, refused) = match head {
        Ok(req) => (respond(&req, metrics), None),
        Err(HeadError::Closed) => return,
        Err(HeadError::Malformed) => (
            response(400, "Bad Request", "text/plain", "bad request\n"),
            Some("malformed"),
        ),
        Err(HeadError::TooLarge) => (
            response(
                431,
                "Request Header Fields Too Large",
                "text/plain",
                "request too large\n",
            ),
            Some("too_large"),
        ),
        Err(HeadError::Timeout) => (
            response(408, "Request Timeout", "text/plain", "request timeout\n"),
            Some("head_timeout"),
        ),
    };
    if let Some(reason) = refused {
        metrics.http_connection_dropped(reason);
    }
    let write = async {
        stream.write_all(&response).await?;
        // Sends the FIN: the client sees the end of the response now, whatever follows.
        stream.shutdown().await
    };
    match tokio::time::timeout(limits.write_timeout, write).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return,
        Err(_) => {
            metrics.http_connection_dropped("write_timeout");
            return;
        }
    }
    slot.set(Phase::Linger);
    linger(&mut stream, limits).await;
}

/// Reads and drops what the client still sends, until it closes or a bound is reached, so the
/// close that follows finds no unread input and sends a FIN, not a reset that would destroy
/// the response in the client's receive buffer.
async fn linger(stream: &mut TcpStream, limits: Limits) {
    let mut sink = vec![0u8; 16 * 1024];
    let mut left = limits.linger_bytes;
    let _ = tokio::time::timeout(limits.linger_timeout, async {
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// Reads up to the blank line that ends the request head.
async fn read_head(stream: &mut TcpStream, max: usize) -> Result<Vec<u8>, HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|_| HeadError::Malformed)?;
        if n == 0 {
            return Err(if buf.is_empty() {
                HeadError::Closed
            } else {
                HeadError::Malformed
            });
        }
        let searched_from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&buf[searched_from..]) {
            let end = searched_from + end;
            if end > max {
                return Err(HeadError::TooLarge);
            }
            buf.truncate(end);
            return Ok(buf);
        }
        if buf.len() > max {
            return Err(HeadError::TooLarge);
        }
    }
}

/// End of the head (`\r\n\r\n`, or `\n\n` from lenient clients), exclusive of the blank line.
fn head_end(buf: &[u8]) -> Option<usize> {
    (0..buf.len()).find(|&i| buf[i..].starts_with(b"\r\n\r\n") || buf[i..].starts_with(b"\n\n"))
}

/// Checks the request line and header syntax; keeps the method and the path.
fn parse_head(head: &[u8]) -> Result<Request, HeadError> {
    let text = std::str::from_utf8(head).map_err(|_| HeadError::Malformed)?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().ok_or(HeadError::Malformed)?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Malformed);
    };
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    if !token(method)
        || !target.starts_with('/')
        || target.bytes().any(|b| b.is_ascii_control())
        || !matches!(version, "HTTP/1.0" | "HTTP/1.1")
    {
        return Err(HeadError::Malformed);
    }
    for line in lines {
        match line.split_once(':') {
            Some((name, _)) if token(name) => {}
            _ => return Err(HeadError::Malformed),
        }
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    Ok(Request {
        method: method.to_string(),
        path: path.to_string(),
    })
}

fn respond(req: &Request, metrics: &Metrics) -> Vec<u8> {
    let head_only = req.method == "HEAD";
    if req.method != "GET" && !head_only {
        let mut r = response(
            405,
            "Method Not Allowed",
            "text/plain",
            "method not allowed\n",
        );
        // Insert the Allow header after the status line.
        let at = r.windows(2).position(|w| w == b"\r\n").map_or(0, |p| p + 2);
        r.splice(at..at, b"Allow: GET, HEAD\r\n".iter().copied());
        return r;
    }
    let mut r = match req.path.as_str() {
        "/metrics" => response(200, "OK", CONTENT_TYPE, &metrics.render()),
        "/healthz" => response(200, "OK", "text/plain", "ok\n"),
        _ => response(404, "Not Found", "text/plain", "not found\n"),
    };
    if head_only {
        if let Some(p) = r.windows(4).position(|w| w == b"\r\n\r\n") {
            r.truncate(p + 4);
        }
    }
    r
}

fn response(code: u16, reason: &str, content_type: &str, body: &str) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body.as_bytes());
    r
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn parses_request_lines() {
        let r = parse_head(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept: */*").unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/metrics");
        assert!(parse_head(b"GET /metrics HTTP/1.0").is_ok());
        for bad in [
            &b""[..],
            b"GET",
            b"GET /metrics",
            b"GET /metrics HTTP/2",
            b"GET  /metrics HTTP/1.1",
            b"GET metrics HTTP/1.1",
            b"GET /metrics HTTP/1.1 extra",
            b"G\x00T /metrics HTTP/1.1",
            b"GET /metrics HTTP/1.1\r\nno colon here",
            b"\xff\xfe /metrics HTTP/1.1",
        ] {
            assert_eq!(parse_head(bad), Err(HeadError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn finds_the_end_of_the_head() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\n"), Some(14));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(14));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
    }

    #[test]
    fn head_and_405() {
        let m = Metrics::new();
        let head = String::from_utf8(respond(
            &Request {
                method: "HEAD".into(),
                path: "/healthz".into(),
            },
            &m,
        ))
        .unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(head.ends_with("\r\n\r\n"));
        assert!(head.contains("Content-Length: 3\r\n"));
        let post = String::from_utf8(respond(
            &Request {
                method: "POST".into(),
                path: "/metrics".into(),
            },
            &m,
        ))
        .unwrap();
        assert!(post.starts_with("HTTP/1.1 405 Method Not Allowed\r\nAllow: GET, HEAD\r\n"));
    }
}
