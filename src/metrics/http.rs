//! A minimal HTTP/1.1 endpoint for Prometheus: `GET /metrics` (text exposition format) and
//! `GET /healthz` (`ok`); anything else is 404 (or 405 for a method other than GET/HEAD).
//!
//! Built on tokio alone — the daemon serves two fixed documents to a scraper on a private
//! address, which does not justify an HTTP stack as a dependency. It is bounded like the milter
//! side: a request head is at most [`MAX_REQUEST`] bytes and must arrive within
//! [`READ_TIMEOUT`], at most [`MAX_SCRAPES`] requests are served at once (more wait in the
//! accept queue), and every response closes the connection.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use super::Metrics;

/// Largest request head (request line and headers) accepted.
pub const MAX_REQUEST: usize = 8 * 1024;
/// Longest wait for a complete request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait to write a response.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most requests served at once.
pub const MAX_SCRAPES: usize = 64;

/// The content type of the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub(super) max_request: usize,
    pub(super) read_timeout: Duration,
    pub(super) write_timeout: Duration,
    pub(super) max_scrapes: usize,
}

const LIMITS: Limits = Limits {
    max_request: MAX_REQUEST,
    read_timeout: READ_TIMEOUT,
    write_timeout: WRITE_TIMEOUT,
    max_scrapes: MAX_SCRAPES,
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
    let slots = Arc::new(Semaphore::new(limits.max_scrapes));
    let mut backoff = Duration::from_millis(10);
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return Ok(()) },
            c = shutdown.changed() => { if c.is_err() { return Ok(()) } continue }
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            c = shutdown.changed() => { if c.is_err() { return Ok(()) } continue }
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(10);
                tokio::spawn(async move {
                    handle(stream, metrics, limits).await;
                    tracing::trace!(peer = %peer, "metrics request served");
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!("metrics accept failed: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
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

async fn handle(mut stream: TcpStream, metrics: &Metrics, limits: Limits) {
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
    // Read (and drop) what the client may still be sending, briefly, so closing the socket
    // with unread data does not reset the connection before the client has read the response.
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        let mut left: usize = 64 * 1024;
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
