//! A small authoritative DNS server on loopback, for unit tests, integration tests and
//! benchmarks. Nothing in mxsentry's tests may query public DNS: they point
//! `[dns] nameservers` at one of these instead.
//!
//! It answers on `127.0.0.1:PORT` over UDP and TCP (the same port), from a zone given as text,
//! and stops when the [`TestDnsServer`] is dropped. UDP answers larger than the client's buffer
//! (512 bytes, or its EDNS payload size) are sent truncated (TC bit), so the client retries
//! over TCP, like a real server.
//!
//! # Zone format
//!
//! One record per line; `#` starts a comment (outside quotes); names are absolute, with or
//! without the trailing dot, matched case-insensitively.
//!
//! ```text
//! # name                      [DELAY d] [ttl]  type   data
//! 10.2.0.192.in-addr.arpa                300   PTR    good.fcrdns.test
//! good.fcrdns.test                             A      192.0.2.10
//! good.fcrdns.test                             AAAA   2001:db8::10
//! alias.fcrdns.test                            CNAME  good.fcrdns.test
//! example.test                                 MX     10 mx.example.test
//! example.test                                 NS     ns.example.test
//! 100.2.0.192.bl.test                          A      127.0.0.2
//! 100.2.0.192.bl.test                          TXT    "Listed: see https://bl.test/q?192.0.2.100"
//! multi.test                                   TXT    "part one, " "part two"
//! 50.2.0.192.in-addr.arpa                      SERVFAIL
//! 52.2.0.192.in-addr.arpa                      REFUSED
//! 51.2.0.192.in-addr.arpa                      DROP            # never answered
//! half.test                                    SERVFAIL AAAA   # only AAAA queries fail
//! gone.test                                    NXDOMAIN        # same as absent, explicit
//! 53.2.0.192.in-addr.arpa      DELAY 2s        PTR    slow.fcrdns.test
//! *.wild.test                                  A      192.0.2.1
//! $NEGATIVE_TTL 5                              # SOA minimum for negative answers (default 60)
//! ```
//!
//! * The TTL is optional (default 300). Types: `A`, `AAAA`, `PTR`, `CNAME`, `TXT`, `MX`, `NS`.
//! * `TXT` takes one or more strings, quoted (`\"` and `\\` escape) or bare; a string longer than
//!   255 bytes is split into 255-byte character-strings (one record), handy to force truncation.
//! * `SERVFAIL`, `REFUSED`, `NXDOMAIN` and `DROP` (no answer at all) apply to every query for the
//!   name, or only to queries of the record type that follows them.
//! * `DELAY d` (`200ms`, `2s`, `1.5s`) delays every answer for that name (the longest given
//!   wins), without blocking other queries. `name DELAY 2s` alone just marks the name as slow.
//! * Unknown names get NXDOMAIN, a known name (or an empty non-terminal, e.g.
//!   `2.0.192.in-addr.arpa` above) without records of the queried type gets NOERROR with no
//!   answers (no data); both carry an SOA in the authority section (TTL and minimum 60 unless
//!   `$NEGATIVE_TTL` says otherwise) so resolvers cache them.
//! * A CNAME is followed inside the zone (up to 8 links), answers carry the whole chain.
//! * `*.zone` matches names below `zone` that are not in the zone themselves.
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use mxsentry::testing::TestDnsServer;
//! let server = TestDnsServer::start("host.test A 192.0.2.1").await?;
//! // point DnsConfig::nameservers at vec![server.addr] ...
//! assert_eq!(server.queries(), 0);
//! # Ok(()) }
//! ```

#[cfg(test)]
mod tests;
mod zone;

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, NS, PTR, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};

use zone::*;

/// TTL of records that give none.
pub const DEFAULT_TTL: u32 = 300;
/// TTL and SOA minimum of negative answers, unless the zone has `$NEGATIVE_TTL`.
pub const DEFAULT_NEGATIVE_TTL: u32 = 60;
/// EDNS payload size this server announces.
const OUR_EDNS_PAYLOAD: u16 = 1232;
const MAX_CNAME_CHAIN: usize = 8;

/// A loopback DNS server for tests. See the [module documentation](self) for the zone format.
///
/// Stops (closes its sockets, drops pending answers) when dropped.
pub struct TestDnsServer {
    /// Where it listens: `127.0.0.1:PORT`, UDP and TCP.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    /// Dropping it stops every task of the server.
    shutdown: Option<watch::Sender<()>>,
    /// Set by [`TestDnsServer::start_in_thread`].
    thread: Option<std::thread::JoinHandle<()>>,
}

impl fmt::Debug for TestDnsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestDnsServer")
            .field("addr", &self.addr)
            .field("queries", &self.queries())
            .finish_non_exhaustive()
    }
}

impl TestDnsServer {
    /// Binds 127.0.0.1:0 (UDP and TCP on the same port) and serves `zone`.
    ///
    /// Must be called inside a tokio runtime; the server's tasks run on it. Fails with
    /// [`io::ErrorKind::InvalidData`] if the zone text is malformed.
    pub async fn start(zone: &str) -> io::Result<TestDnsServer> {
        let shared = Arc::new(Shared::new(Zone::parse(zone).map_err(invalid_data)?));
        let (shutdown_tx, shutdown_rx) = watch::channel(());
        let addr = spawn_server(shared.clone(), shutdown_rx).await?;
        Ok(TestDnsServer {
            addr,
            shared,
            shutdown: Some(shutdown_tx),
            thread: None,
        })
    }

    /// Same as [`start`](Self::start), but runs its own tokio runtime on a background thread:
    /// for synchronous tests, and for integration tests that spawn the mxsentry binary.
    pub fn start_in_thread(zone: &str) -> io::Result<TestDnsServer> {
        let shared = Arc::new(Shared::new(Zone::parse(zone).map_err(invalid_data)?));
        let (addr, shutdown, thread) = spawn_thread(shared.clone(), None)?;
        Ok(TestDnsServer {
            addr,
            shared,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// Stops serving, as a DNS server that died: its sockets are closed, so queries to
    /// [`addr`](Self::addr) get "port unreachable". [`restart`](Self::restart) brings it back
    /// on the same address. Only for servers from [`start_in_thread`](Self::start_in_thread).
    pub fn stop(&mut self) {
        drop(self.shutdown.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// Serves again on the same address and zone after [`stop`](Self::stop).
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop();
        let (_, shutdown, thread) = spawn_thread(self.shared.clone(), Some(self.addr.port()))?;
        self.shutdown = Some(shutdown);
        self.thread = Some(thread);
        Ok(())
    }

    /// Queries received so far (UDP and TCP, answered or dropped), e.g. to prove that a
    /// resolver answered from its cache. A query retried over TCP after a truncated UDP answer
    /// counts twice.
    pub fn queries(&self) -> usize {
        self.shared.queries.load(Ordering::SeqCst)
    }

    /// Queries received so far for `name` (any type, case-insensitive, trailing dot optional).
    pub fn queries_for(&self, name: &str) -> usize {
        let key = normalize(name);
        let per_name = self
            .shared
            .per_name
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        per_name.get(&key).copied().unwrap_or(0)
    }

    /// Queries being worked on right now (received, not yet answered or dropped).
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// The most queries ever in flight at once (see [`in_flight`](Self::in_flight)).
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// Sets [`queries`](Self::queries), [`queries_for`](Self::queries_for) and
    /// [`max_in_flight`](Self::max_in_flight) back to zero.
    pub fn reset_counters(&self) {
        self.shared.queries.store(0, Ordering::SeqCst);
        self.shared.max_in_flight.store(0, Ordering::SeqCst);
        self.shared
            .per_name
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Replaces all records (and failures, delays) by those of `zone`; queries already received
    /// are answered from the old zone.
    ///
    /// # Panics
    /// If the zone text is malformed (this is test code: fail loudly). See
    /// [`try_set_zone`](Self::try_set_zone).
    pub fn set_zone(&self, zone: &str) {
        if let Err(e) = self.try_set_zone(zone) {
            panic!("invalid test zone: {e}");
        }
    }

    /// Like [`set_zone`](Self::set_zone), returning an error instead of panicking.
    pub fn try_set_zone(&self, zone: &str) -> Result<(), String> {
        let zone = Zone::parse(zone)?;
        *self
            .shared
            .zone
            .write()
            .unwrap_or_else(PoisonError::into_inner) = zone;
        Ok(())
    }
}

impl Drop for TestDnsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs a server on its own runtime and thread (on `port`, or a free one); returns its address,
/// the sender whose drop stops it, and the thread.
fn spawn_thread(
    shared: Arc<Shared>,
    port: Option<u16>,
) -> io::Result<(SocketAddr, watch::Sender<()>, std::thread::JoinHandle<()>)> {
    let (shutdown_tx, shutdown_rx) = watch::channel(());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<SocketAddr>>();
    let thread = std::thread::Builder::new()
        .name("test-dns-server".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("test-dns-server")
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            runtime.block_on(async move {
                let mut shutdown = shutdown_rx.clone();
                let started = spawn_server_on(shared, shutdown_rx, port).await;
                let ok = started.is_ok();
                let _ = ready_tx.send(started);
                if ok {
                    // Returns once the sender is dropped.
                    let _ = shutdown.changed().await;
                }
            });
            // Dropping the runtime here cancels whatever is still pending.
        })?;
    let addr = ready_rx
        .recv()
        .map_err(|_| io::Error::other("the test DNS server thread died"))??;
    Ok((addr, shutdown_tx, thread))
}

fn invalid_data(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

// ---------------------------------------------------------------------------------------------
// Serving

struct Shared {
    zone: RwLock<Zone>,
    queries: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    per_name: Mutex<HashMap<String, usize>>,
}

impl Shared {
    fn new(zone: Zone) -> Shared {
        Shared {
            zone: RwLock::new(zone),
            queries: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            per_name: Mutex::new(HashMap::new()),
        }
    }
}

/// Counts a query as in flight while alive.
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared) -> InFlight<'a> {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Binds UDP and TCP on one loopback port and spawns the serving tasks on the current runtime.
async fn spawn_server(
    shared: Arc<Shared>,
    shutdown: watch::Receiver<()>,
) -> io::Result<SocketAddr> {
    spawn_server_on(shared, shutdown, None).await
}

async fn spawn_server_on(
    shared: Arc<Shared>,
    shutdown: watch::Receiver<()>,
    port: Option<u16>,
) -> io::Result<SocketAddr> {
    let (udp, tcp) = match port {
        Some(port) => (
            UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).await?,
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await?,
        ),
        None => bind_pair().await?,
    };
    let addr = udp.local_addr()?;
    tokio::spawn(serve_udp(Arc::new(udp), shared.clone(), shutdown.clone()));
    tokio::spawn(serve_tcp(tcp, shared, shutdown));
    Ok(addr)
}

async fn bind_pair() -> io::Result<(UdpSocket, TcpListener)> {
    let mut last_error = None;
    for _ in 0..32 {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let port = udp.local_addr()?.port();
        match TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::other("no free port")))
}

async fn serve_udp(socket: Arc<UdpSocket>, shared: Arc<Shared>, shutdown: watch::Receiver<()>) {
    let mut buf = vec![0u8; 65_535];
    let mut stop = shutdown.clone();
    loop {
        let (len, peer) = tokio::select! {
            _ = stop.changed() => return,
            received = socket.recv_from(&mut buf) => match received {
                Ok(received) => received,
                Err(_) => continue,
            },
        };
        let request = buf[..len].to_vec();
        let (socket, shared, shutdown) = (socket.clone(), shared.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Some(answer) = handle(&shared, &request, true, shutdown).await {
                let _ = socket.send_to(&answer, peer).await;
            }
        });
    }
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>, shutdown: watch::Receiver<()>) {
    let mut stop = shutdown.clone();
    loop {
        let stream = tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        tokio::spawn(serve_tcp_connection(
            stream,
            shared.clone(),
            shutdown.clone(),
        ));
    }
}

/// Serves one TCP connection; queries on it are answered concurrently (a DELAYed one does not
/// hold up the others), in whatever order they complete, as DNS over TCP allows.
async fn serve_tcp_connection(
    stream: TcpStream,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<()>,
) {
    let (mut reader, mut writer) = stream.into_split();
    let (answers_tx, mut answers_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        while let Some(answer) = answers_rx.recv().await {
            let Ok(len) = u16::try_from(answer.len()) else {
                continue;
            };
            let mut frame = Vec::with_capacity(answer.len() + 2);
            frame.extend_from_slice(&len.to_be_bytes());
            frame.extend_from_slice(&answer);
            if writer.write_all(&frame).await.is_err() {
                break;
            }
        }
    });
    let mut stop = shutdown.clone();
    loop {
        let request = tokio::select! {
            _ = stop.changed() => return,
            request = read_frame(&mut reader) => match request {
                Ok(Some(request)) => request,
                _ => return,
            },
        };
        let (shared, shutdown, answers_tx) = (shared.clone(), shutdown.clone(), answers_tx.clone());
        tokio::spawn(async move {
            if let Some(answer) = handle(&shared, &request, false, shutdown).await {
                let _ = answers_tx.send(answer);
            }
        });
    }
}

/// Reads one length-prefixed DNS message; `None` at a clean end of stream.
async fn read_frame(reader: &mut (impl AsyncReadExt + Unpin)) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(len))];
    reader.read_exact(&mut message).await?;
    Ok(Some(message))
}

/// Works out the answer to one request: `None` means no answer (undecodable, or DROP, or the
/// server is stopping).
async fn handle(
    shared: &Shared,
    request: &[u8],
    udp: bool,
    mut shutdown: watch::Receiver<()>,
) -> Option<Vec<u8>> {
    let request = Message::from_vec(request).ok()?;
    if request.message_type() != MessageType::Query {
        return None;
    }
    shared.queries.fetch_add(1, Ordering::SeqCst);
    let _in_flight = InFlight::enter(shared);
    if let Some(query) = request.queries().first() {
        let key = normalize(&query.name().to_ascii());
        *shared
            .per_name
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key)
            .or_default() += 1;
    }

    let (delay, response) = {
        let zone = shared.zone.read().unwrap_or_else(PoisonError::into_inner);
        zone.respond(&request)
    };
    if !delay.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return None,
        }
    }
    let response = response?;
    let bytes = response.to_vec().ok()?;
    if udp && bytes.len() > usize::from(request.max_payload()) {
        return response.truncate().to_vec().ok();
    }
    Some(bytes)
}
