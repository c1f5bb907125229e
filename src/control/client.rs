//! The admin commands' side of the control socket: connect when a daemon answers, send a
//! request, read its response; and [`RemoteStore`], the daemon's greylist store seen through
//! the socket, so `greylist list|add|del|purge` and the importers work the same live or not.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::Mutex;

use super::protocol::{
    check_line, decode_response, encode_request, Frame, Request, Response, Status, WireEntry,
    BATCH_BYTES, MAX_RESPONSE,
};
use crate::store::{Entry, GreylistStore, StoreError, UpdateFn};

/// How long a response may take (a purge or a list of a large store included).
const RESPONSE_DEADLINE: Duration = Duration::from_secs(600);

/// How long connecting may take.
const CONNECT_DEADLINE: Duration = Duration::from_secs(5);

/// One connection to the daemon's control socket.
pub struct Connection {
    stream: UnixStream,
    buf: Vec<u8>,
    socket: PathBuf,
}

/// Connects to the daemon at `socket`: `Ok(None)` when no daemon answers there (no socket
/// file, or nobody listening: a stale file); an error for anything else (permission denied).
pub async fn connect(socket: &Path) -> Result<Option<Connection>, String> {
    let connected = tokio::time::timeout(CONNECT_DEADLINE, UnixStream::connect(socket)).await;
    match connected {
        Err(_) => Err(format!(
            "{}: the daemon does not accept control connections (timed out)",
            socket.display()
        )),
        Ok(Ok(stream)) => Ok(Some(Connection {
            stream,
            buf: Vec::new(),
            socket: socket.to_path_buf(),
        })),
        Ok(Err(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(None)
        }
        Ok(Err(e)) => Err(format!("{}: {e}", socket.display())),
    }
}

impl Connection {
    /// The socket this connection goes to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends `request` and reads its response; the daemon's error response is an `Err` with
    /// its text.
    pub async fn request(&mut self, request: &Request) -> Result<Response, String> {
        let sent = async {
            self.stream
                .write_all(&encode_request(request))
                .await
                .map_err(|e| format!("{}: cannot send: {e}", self.socket.display()))?;
            self.read_response().await
        };
        let response = tokio::time::timeout(RESPONSE_DEADLINE, sent)
            .await
            .map_err(|_| {
                format!(
                    "{}: no answer from the daemon within {}s",
                    self.socket.display(),
                    RESPONSE_DEADLINE.as_secs()
                )
            })??;
        match response {
            Response::Error { error } => Err(error),
            other => Ok(other),
        }
    }

    async fn read_response(&mut self) -> Result<Response, String> {
        let mut scanned = 0;
        loop {
            match check_line(&self.buf, scanned, MAX_RESPONSE) {
                Frame::Line(n) => {
                    let response = decode_response(&self.buf[..n]);
                    self.buf.drain(..=n);
                    return response;
                }
                Frame::TooLong => {
                    return Err(format!("response longer than {MAX_RESPONSE} bytes"));
                }
                Frame::Incomplete => scanned = self.buf.len(),
            }
            self.buf.reserve(256 * 1024);
            let n = self
                .stream
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| format!("{}: {e}", self.socket.display()))?;
            if n == 0 {
                return Err(format!(
                    "{}: the daemon closed the connection without an answer",
                    self.socket.display()
                ));
            }
        }
    }

    /// The daemon's status.
    pub async fn status(&mut self) -> Result<Status, String> {
        match self.request(&Request::Status).await? {
            Response::Status(s) => Ok(*s),
            other => Err(unexpected(&other)),
        }
    }
}

fn unexpected(r: &Response) -> String {
    format!("unexpected answer from the daemon: {r:?}")
}

/// The running daemon's greylist store, through its control socket. `read_only` (for
/// `explain`): `update` reads the entry and writes nothing.
pub struct RemoteStore {
    backend: &'static str,
    connection: Mutex<Connection>,
    read_only: bool,
}

impl RemoteStore {
    /// The daemon's store over `connection`; `None` when the daemon has no store open
    /// (greylisting off in its configuration: the store can then be opened directly). An
    /// error when its store is not at `expected` ([`super::store_location`] of the caller's
    /// configuration): the caller must not edit another store than the one it names.
    pub async fn over(
        mut connection: Connection,
        read_only: bool,
        expected: &str,
    ) -> Result<Option<RemoteStore>, String> {
        let status = connection.status().await?;
        let Some(store) = status.store else {
            return Ok(None);
        };
        if store.location != expected {
            return Err(format!(
                "the daemon answering on {} uses the store {}, not {expected}",
                connection.socket().display(),
                store.location
            ));
        }
        let backend = match store.kind.as_str() {
            "redis" => "redis",
            _ => "embedded",
        };
        Ok(Some(RemoteStore {
            backend,
            connection: Mutex::new(connection),
            read_only,
        }))
    }

    async fn call(&self, request: &Request) -> Result<Response, StoreError> {
        self.connection
            .lock()
            .await
            .request(request)
            .await
            .map_err(StoreError::Unavailable)
    }

    /// Writes `entries` in requests of about [`BATCH_BYTES`]; each batch is durable before
    /// the next is sent. Returns how many were written.
    pub async fn put_many<'a>(
        &self,
        entries: impl IntoIterator<Item = &'a (String, Entry)>,
    ) -> Result<u64, StoreError> {
        let mut written = 0;
        let mut batch = Vec::new();
        let mut bytes = 0;
        for (key, entry) in entries {
            bytes += WireEntry::approx_len(key);
            batch.push(WireEntry::new(key, entry));
            if bytes >= BATCH_BYTES {
                written += self.put_batch(std::mem::take(&mut batch)).await?;
                bytes = 0;
            }
        }
        if !batch.is_empty() {
            written += self.put_batch(batch).await?;
        }
        Ok(written)
    }

    async fn put_batch(&self, entries: Vec<WireEntry>) -> Result<u64, StoreError> {
        match self.call(&Request::Put { entries }).await? {
            Response::Written { count } => Ok(count),
            other => Err(StoreError::Unavailable(unexpected(&other))),
        }
    }
}

#[async_trait]
impl GreylistStore for RemoteStore {
    fn backend(&self) -> &'static str {
        self.backend
    }

    /// Not atomic across the socket: the admin commands never call it; `explain` (read-only)
    /// gets the entry and nothing is written.
    async fn update(&self, key: &str, f: &UpdateFn<'_>) -> Result<Option<Entry>, StoreError> {
        let old = self.get(key).await?;
        if !self.read_only {
            match f(old) {
                crate::store::Write::Put(e) => self.put(key, e).await?,
                crate::store::Write::Delete => {
                    self.delete(key).await?;
                }
                crate::store::Write::Keep => {}
            }
        }
        Ok(old)
    }

    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        match self
            .call(&Request::Get {
                key: key.to_owned(),
            })
            .await?
        {
            Response::Entry { entry } => Ok(entry.map(|w| w.into_parts().1)),
            other => Err(StoreError::Unavailable(unexpected(&other))),
        }
    }

    async fn put(&self, key: &str, entry: Entry) -> Result<(), StoreError> {
        self.put_batch(vec![WireEntry::new(key, &entry)])
            .await
            .map(|_| ())
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        match self
            .call(&Request::Delete {
                key: key.to_owned(),
            })
            .await?
        {
            Response::Deleted { existed } => Ok(existed),
            other => Err(StoreError::Unavailable(unexpected(&other))),
        }
    }

    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<(String, Entry)>, StoreError> {
        let request = Request::List {
            prefix: prefix.to_owned(),
            limit,
        };
        match self.call(&request).await? {
            Response::Entries { entries } => {
                Ok(entries.into_iter().map(WireEntry::into_parts).collect())
            }
            other => Err(StoreError::Unavailable(unexpected(&other))),
        }
    }

    async fn purge(&self, _now: u64) -> Result<u64, StoreError> {
        // The daemon purges with its own clock.
        match self.call(&Request::Purge).await? {
            Response::Purged { count } => Ok(count),
            other => Err(StoreError::Unavailable(unexpected(&other))),
        }
    }

    async fn len(&self) -> Result<u64, StoreError> {
        match self.call(&Request::Status).await? {
            Response::Status(s) => s
                .store
                .ok_or_else(|| StoreError::Unavailable("the daemon has no store open".into()))?
                .entries
                .map_err(StoreError::Unavailable),
            other => Err(StoreError::Unavailable(unexpected(&other))),
        }
    }

    async fn flush(&self) -> Result<(), StoreError> {
        match self.call(&Request::Flush).await? {
            Response::Flushed => Ok(()),
            other => Err(StoreError::Unavailable(unexpected(&other))),
        }
    }
}
