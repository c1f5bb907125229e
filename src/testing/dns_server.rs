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

// ---------------------------------------------------------------------------------------------
// Zone

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    ServFail,
    Refused,
    NxDomain,
    Drop,
}

#[derive(Debug, Default, Clone)]
struct Node {
    /// Records with their TTL; the owner name is filled in when answering.
    records: Vec<(u32, RData)>,
    /// Failure for every query (`None`) or for queries of one type.
    failures: Vec<(Option<RecordType>, Failure)>,
    delay: Duration,
}

impl Node {
    fn failure_for(&self, qtype: RecordType) -> Option<Failure> {
        let typed = self
            .failures
            .iter()
            .find(|(t, _)| *t == Some(qtype))
            .map(|(_, f)| *f);
        typed.or_else(|| {
            self.failures
                .iter()
                .find(|(t, _)| t.is_none())
                .map(|(_, f)| *f)
        })
    }

    fn cname(&self) -> Option<(u32, &Name)> {
        self.records.iter().find_map(|(ttl, rdata)| match rdata {
            RData::CNAME(CNAME(target)) => Some((*ttl, target)),
            _ => None,
        })
    }
}

#[derive(Debug, Clone)]
struct Zone {
    /// Keyed by lowercased name without trailing dot (wildcards as `*.rest`).
    nodes: HashMap<String, Node>,
    negative_ttl: u32,
}

/// Lowercases and strips the trailing dot.
fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

enum Found<'a> {
    Node(&'a Node),
    EmptyNonTerminal,
    Missing,
}

impl Zone {
    fn parse(text: &str) -> Result<Zone, String> {
        let mut zone = Zone {
            nodes: HashMap::new(),
            negative_ttl: DEFAULT_NEGATIVE_TTL,
        };
        for (index, line) in text.lines().enumerate() {
            zone.parse_line(line)
                .map_err(|e| format!("zone line {}: {e}: {}", index + 1, line.trim()))?;
        }
        Ok(zone)
    }

    fn parse_line(&mut self, line: &str) -> Result<(), String> {
        let tokens = tokenize(line)?;
        let mut tokens = tokens.iter().map(String::as_str).peekable();
        let Some(owner) = tokens.next() else {
            return Ok(()); // blank or comment
        };
        if owner.eq_ignore_ascii_case("$NEGATIVE_TTL") {
            let ttl = tokens.next().ok_or("$NEGATIVE_TTL needs a number")?;
            self.negative_ttl = ttl.parse().map_err(|_| format!("bad TTL {ttl:?}"))?;
            return no_more(tokens);
        }
        let key = normalize(owner);
        if key.is_empty() {
            return Err("empty name".into());
        }
        parse_name(&key)?;

        let mut delay = Duration::ZERO;
        if tokens
            .peek()
            .is_some_and(|t| t.eq_ignore_ascii_case("DELAY"))
        {
            tokens.next();
            let text = tokens.next().ok_or("DELAY needs a duration")?;
            delay = parse_duration(text)?;
        }
        let mut ttl = DEFAULT_TTL;
        if let Some(text) = tokens
            .peek()
            .filter(|t| t.bytes().all(|b| b.is_ascii_digit()))
        {
            ttl = text.parse().map_err(|_| format!("bad TTL {text:?}"))?;
            tokens.next();
        }

        let node = self.nodes.entry(key).or_default();
        node.delay = node.delay.max(delay);
        let Some(kind) = tokens.next() else {
            return if delay.is_zero() {
                Err("missing record type".into())
            } else {
                Ok(())
            };
        };
        let kind = kind.to_ascii_uppercase();
        let failure = match kind.as_str() {
            "SERVFAIL" => Some(Failure::ServFail),
            "REFUSED" => Some(Failure::Refused),
            "NXDOMAIN" => Some(Failure::NxDomain),
            "DROP" => Some(Failure::Drop),
            _ => None,
        };
        if let Some(failure) = failure {
            let only = match tokens.next() {
                Some(t) => Some(parse_type(t)?),
                None => None,
            };
            node.failures.push((only, failure));
            return no_more(tokens);
        }

        let need = format!("{kind} needs data");
        let mut data = || tokens.next().ok_or_else(|| need.clone());
        let rdata = match kind.as_str() {
            "A" => {
                let text = data()?;
                RData::A(A(text
                    .parse::<Ipv4Addr>()
                    .map_err(|_| format!("bad IPv4 address {text:?}"))?))
            }
            "AAAA" => {
                let text = data()?;
                RData::AAAA(AAAA(
                    text.parse::<Ipv6Addr>()
                        .map_err(|_| format!("bad IPv6 address {text:?}"))?,
                ))
            }
            "PTR" => RData::PTR(PTR(parse_name(data()?)?)),
            "CNAME" => RData::CNAME(CNAME(parse_name(data()?)?)),
            "NS" => RData::NS(NS(parse_name(data()?)?)),
            "MX" => {
                let text = data()?;
                let preference = text
                    .parse::<u16>()
                    .map_err(|_| format!("bad MX preference {text:?}"))?;
                RData::MX(MX::new(preference, parse_name(data()?)?))
            }
            "TXT" => {
                let strings: Vec<&str> = std::iter::from_fn(|| data().ok()).collect();
                if strings.is_empty() {
                    return Err("TXT needs data".into());
                }
                let chunks: Vec<&[u8]> = strings
                    .iter()
                    .flat_map(|s| {
                        let bytes = s.as_bytes();
                        if bytes.is_empty() {
                            vec![bytes]
                        } else {
                            bytes.chunks(255).collect()
                        }
                    })
                    .collect();
                RData::TXT(TXT::from_bytes(chunks))
            }
            other => return Err(format!("unknown record type {other:?}")),
        };
        if node.cname().is_some() || (matches!(rdata, RData::CNAME(_)) && !node.records.is_empty())
        {
            return Err("a CNAME cannot coexist with other records".into());
        }
        node.records.push((ttl, rdata));
        no_more(tokens)
    }

    fn find(&self, key: &str) -> Found<'_> {
        if let Some(node) = self.nodes.get(key) {
            return Found::Node(node);
        }
        let below = format!(".{key}");
        if self.nodes.keys().any(|k| k.ends_with(&below)) {
            return Found::EmptyNonTerminal;
        }
        let mut rest = key;
        while let Some((_, parent)) = rest.split_once('.') {
            if let Some(node) = self.nodes.get(&format!("*.{parent}")) {
                return Found::Node(node);
            }
            rest = parent;
        }
        Found::Missing
    }

    /// The delay, and the response to send (`None`: send nothing).
    fn respond(&self, request: &Message) -> (Duration, Option<Message>) {
        let mut response = Message::new();
        response
            .set_id(request.id())
            .set_message_type(MessageType::Response)
            .set_op_code(request.op_code())
            .set_recursion_desired(request.recursion_desired())
            .set_recursion_available(true)
            .add_queries(request.queries().iter().cloned());
        if request.extensions().is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(OUR_EDNS_PAYLOAD).set_version(0);
            response.set_edns(edns);
        }
        if request.op_code() != OpCode::Query {
            response.set_response_code(ResponseCode::NotImp);
            return (Duration::ZERO, Some(response));
        }
        let [query] = request.queries() else {
            response.set_response_code(ResponseCode::FormErr);
            return (Duration::ZERO, Some(response));
        };
        let qtype = query.query_type();
        let mut owner = query.name().clone();
        let mut delay = Duration::ZERO;
        let mut answers = Vec::new();
        let mut code = ResponseCode::ServFail; // if the CNAME chain is too long
        let mut negative = false;
        for _ in 0..=MAX_CNAME_CHAIN {
            let node = match self.find(&normalize(&owner.to_ascii())) {
                Found::Node(node) => node,
                Found::EmptyNonTerminal => {
                    (code, negative) = (ResponseCode::NoError, true);
                    break;
                }
                Found::Missing => {
                    (code, negative) = (ResponseCode::NXDomain, true);
                    break;
                }
            };
            delay = delay.max(node.delay);
            match node.failure_for(qtype) {
                Some(Failure::Drop) => return (delay, None),
                Some(Failure::ServFail) => {
                    answers.clear();
                    code = ResponseCode::ServFail;
                    break;
                }
                Some(Failure::Refused) => {
                    answers.clear();
                    code = ResponseCode::Refused;
                    break;
                }
                Some(Failure::NxDomain) => {
                    (code, negative) = (ResponseCode::NXDomain, true);
                    break;
                }
                None => {}
            }
            let before = answers.len();
            answers.extend(
                node.records
                    .iter()
                    .filter(|(_, rdata)| qtype == RecordType::ANY || rdata.record_type() == qtype)
                    .map(|(ttl, rdata)| Record::from_rdata(owner.clone(), *ttl, rdata.clone())),
            );
            if answers.len() > before {
                code = ResponseCode::NoError;
                break;
            }
            match node.cname() {
                Some((ttl, target)) if qtype != RecordType::CNAME => {
                    answers.push(Record::from_rdata(
                        owner.clone(),
                        ttl,
                        RData::CNAME(CNAME(target.clone())),
                    ));
                    owner = target.clone();
                }
                _ => {
                    (code, negative) = (ResponseCode::NoError, true);
                    break;
                }
            }
        }
        response
            .set_authoritative(matches!(
                code,
                ResponseCode::NoError | ResponseCode::NXDomain
            ))
            .set_response_code(code)
            .add_answers(answers);
        if negative {
            response.add_name_server(self.soa(&owner));
        }
        (delay, Some(response))
    }

    /// The SOA of the (pretend) zone of `name`: its top-level domain.
    fn soa(&self, name: &Name) -> Record {
        let apex = if name.num_labels() == 0 {
            Name::root()
        } else {
            name.trim_to(1)
        };
        #[allow(clippy::expect_used, reason = "constant names, valid by inspection")]
        let (mname, rname) = (
            Name::from_ascii("ns.test.").expect("valid name"),
            Name::from_ascii("hostmaster.test.").expect("valid name"),
        );
        let ttl = self.negative_ttl;
        let soa = SOA::new(mname, rname, 1, 3600, 600, 86_400, ttl);
        Record::from_rdata(apex, ttl, RData::SOA(soa))
    }
}

fn no_more<'a>(mut tokens: impl Iterator<Item = &'a str>) -> Result<(), String> {
    match tokens.next() {
        None => Ok(()),
        Some(extra) => Err(format!("unexpected {extra:?}")),
    }
}

fn parse_name(text: &str) -> Result<Name, String> {
    let text = text.strip_suffix('.').unwrap_or(text);
    let mut name = Name::from_ascii(text).map_err(|e| format!("bad name {text:?}: {e}"))?;
    name.set_fqdn(true);
    Ok(name)
}

fn parse_type(text: &str) -> Result<RecordType, String> {
    RecordType::from_str(&text.to_ascii_uppercase())
        .map_err(|_| format!("unknown record type {text:?}"))
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("bad duration {text:?} (like 200ms, 2s, 1.5s)");
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number.parse().map_err(|_| bad())?;
    Duration::try_from_secs_f64(value * scale).map_err(|_| bad())
}

/// Splits a line into words; `"..."` is one word (with `\"` and `\\`); `#` outside quotes ends
/// the line.
fn tokenize(line: &str) -> Result<Vec<String>, String> {
    let mut tokens = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '#' {
            break;
        } else if c == '"' {
            chars.next();
            let mut word = String::new();
            loop {
                match chars.next() {
                    None => return Err("unterminated quote".into()),
                    Some('"') => break,
                    Some('\\') => word.push(chars.next().ok_or("unterminated quote")?),
                    Some(c) => word.push(c),
                }
            }
            tokens.push(word);
        } else {
            let mut word = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() || c == '"' || c == '#' {
                    break;
                }
                word.push(c);
                chars.next();
            }
            tokens.push(word);
        }
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;

    fn query_message(name: &str, qtype: RecordType, edns: bool) -> Message {
        let mut message = Message::new();
        message
            .set_id(4242)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true)
            .add_query(Query::query(parse_name(name).unwrap(), qtype));
        if edns {
            let mut e = Edns::new();
            e.set_max_payload(1232);
            message.set_edns(e);
        }
        message
    }

    fn answer(zone: &str, name: &str, qtype: RecordType) -> Message {
        let zone = Zone::parse(zone).unwrap();
        let (_, response) = zone.respond(&query_message(name, qtype, false));
        response.expect("an answer")
    }

    async fn udp_exchange(server: &TestDnsServer, request: &Message) -> Message {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        socket
            .send_to(&request.to_vec().unwrap(), server.addr)
            .await
            .unwrap();
        let mut buf = vec![0u8; 65_535];
        let (len, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
            .await
            .expect("answer in time")
            .unwrap();
        Message::from_vec(&buf[..len]).unwrap()
    }

    async fn tcp_exchange(server: &TestDnsServer, request: &Message) -> Message {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let bytes = request.to_vec().unwrap();
        stream
            .write_all(&(bytes.len() as u16).to_be_bytes())
            .await
            .unwrap();
        stream.write_all(&bytes).await.unwrap();
        let frame = read_frame(&mut stream).await.unwrap().unwrap();
        Message::from_vec(&frame).unwrap()
    }

    #[test]
    fn tokenizer_handles_quotes_and_comments() {
        assert_eq!(
            tokenize(r#"a.test 60 TXT "x # y" "say \"hi\"" bare # comment"#).unwrap(),
            vec!["a.test", "60", "TXT", "x # y", "say \"hi\"", "bare"]
        );
        assert!(tokenize("  # only a comment").unwrap().is_empty());
        assert!(tokenize(r#"a TXT "open"#).is_err());
    }

    #[test]
    fn parse_rejects_bad_lines() {
        for bad in [
            "a.test",
            "a.test A",
            "a.test A 300.1.1.1",
            "a.test AAAA 192.0.2.1",
            "a.test BOGUS x",
            "a.test A 192.0.2.1 extra",
            "a.test DELAY soon A 192.0.2.1",
            "a.test SERVFAIL NOTATYPE",
            "a.test CNAME b.test\na.test A 192.0.2.1",
            "$NEGATIVE_TTL x",
        ] {
            assert!(Zone::parse(bad).is_err(), "accepted {bad:?}");
        }
        let error = Zone::parse("ok.test A 192.0.2.1\n\nbad.test A nope").unwrap_err();
        assert!(error.contains("line 3"), "{error}");
    }

    #[test]
    fn parse_durations() {
        assert_eq!(parse_duration("200ms").unwrap(), Duration::from_millis(200));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn answers_records_case_insensitively_with_ttls() {
        let response = answer("Host.Test. 42 A 192.0.2.1", "HOST.test", RecordType::A);
        assert_eq!(response.response_code(), ResponseCode::NoError);
        assert!(response.authoritative());
        let [record] = response.answers() else {
            panic!("{response:?}")
        };
        assert_eq!(record.ttl(), 42);
        assert_eq!(record.data(), &RData::A(A::new(192, 0, 2, 1)));
        // The owner is spelled as asked.
        assert_eq!(record.name().to_ascii(), "HOST.test.");
    }

    #[test]
    fn negative_answers_carry_an_soa() {
        let zone = "$NEGATIVE_TTL 7\na.b.test A 192.0.2.1";
        let nx = answer(zone, "nope.test", RecordType::A);
        assert_eq!(nx.response_code(), ResponseCode::NXDomain);
        let [soa] = nx.name_servers() else {
            panic!("{nx:?}")
        };
        assert_eq!(soa.ttl(), 7);
        assert!(matches!(soa.data(), RData::SOA(s) if s.minimum() == 7));

        let nodata = answer(zone, "a.b.test", RecordType::AAAA);
        assert_eq!(nodata.response_code(), ResponseCode::NoError);
        assert!(nodata.answers().is_empty());
        assert_eq!(nodata.name_servers().len(), 1);

        // Empty non-terminal: exists, has no data.
        let ent = answer(zone, "b.test", RecordType::A);
        assert_eq!(ent.response_code(), ResponseCode::NoError);
        assert!(ent.answers().is_empty());
    }

    #[test]
    fn cname_chains_and_wildcards() {
        let zone = "a.test CNAME b.test\nb.test CNAME c.test\nc.test A 192.0.2.3\n\
                    dangling.test CNAME missing.test\n*.wild.test 10 A 192.0.2.9";
        let response = answer(zone, "a.test", RecordType::A);
        assert_eq!(response.response_code(), ResponseCode::NoError);
        let types: Vec<_> = response.answers().iter().map(Record::record_type).collect();
        assert_eq!(
            types,
            vec![RecordType::CNAME, RecordType::CNAME, RecordType::A]
        );
        // Asking for the CNAME itself does not follow it.
        assert_eq!(answer(zone, "a.test", RecordType::CNAME).answers().len(), 1);

        let dangling = answer(zone, "dangling.test", RecordType::A);
        assert_eq!(dangling.response_code(), ResponseCode::NXDomain);
        assert_eq!(dangling.answers().len(), 1);

        let wild = answer(zone, "x.y.wild.test", RecordType::A);
        assert_eq!(wild.answers()[0].name().to_ascii(), "x.y.wild.test.");
        assert_eq!(
            answer(zone, "wild.test", RecordType::A).response_code(),
            ResponseCode::NoError // empty non-terminal, not the wildcard
        );
    }

    #[test]
    fn failures_per_name_and_per_type() {
        let zone = "sf.test SERVFAIL\nre.test REFUSED\nhalf.test A 192.0.2.1\n\
                    half.test SERVFAIL AAAA\ndrop.test DELAY 50ms DROP\nnx.test NXDOMAIN";
        assert_eq!(
            answer(zone, "sf.test", RecordType::TXT).response_code(),
            ResponseCode::ServFail
        );
        assert_eq!(
            answer(zone, "re.test", RecordType::A).response_code(),
            ResponseCode::Refused
        );
        assert_eq!(answer(zone, "half.test", RecordType::A).answers().len(), 1);
        assert_eq!(
            answer(zone, "half.test", RecordType::AAAA).response_code(),
            ResponseCode::ServFail
        );
        assert_eq!(
            answer(zone, "nx.test", RecordType::A).response_code(),
            ResponseCode::NXDomain
        );
        let parsed = Zone::parse(zone).unwrap();
        let (delay, response) = parsed.respond(&query_message("drop.test", RecordType::A, false));
        assert_eq!(delay, Duration::from_millis(50));
        assert!(response.is_none());
    }

    #[test]
    fn long_txt_is_split_into_character_strings() {
        let long = "x".repeat(600);
        let response = answer(
            &format!("t.test TXT \"{long}\" short"),
            "t.test",
            RecordType::TXT,
        );
        let RData::TXT(txt) = response.answers()[0].data() else {
            panic!()
        };
        let lens: Vec<usize> = txt.txt_data().iter().map(|s| s.len()).collect();
        assert_eq!(lens, vec![255, 255, 90, 5]);
    }

    #[tokio::test]
    async fn serves_udp_and_tcp_and_truncates() {
        let long = "y".repeat(2000);
        let server =
            TestDnsServer::start(&format!("host.test A 192.0.2.1\nbig.test TXT \"{long}\""))
                .await
                .unwrap();
        assert_eq!(server.addr.ip(), Ipv4Addr::LOCALHOST);

        let udp = udp_exchange(&server, &query_message("host.test", RecordType::A, false)).await;
        assert_eq!(udp.id(), 4242);
        assert_eq!(udp.answers().len(), 1);

        let big = query_message("big.test", RecordType::TXT, true);
        let truncated = udp_exchange(&server, &big).await;
        assert!(truncated.truncated());
        assert!(truncated.answers().is_empty());

        let full = tcp_exchange(&server, &big).await;
        assert!(!full.truncated());
        assert_eq!(full.answers().len(), 1);

        assert_eq!(server.queries(), 3);
        assert_eq!(server.queries_for("BIG.test."), 2);
        assert_eq!(server.in_flight(), 0);
        assert_eq!(server.max_in_flight(), 1);

        server.set_zone("host.test A 192.0.2.2");
        let changed =
            udp_exchange(&server, &query_message("host.test", RecordType::A, false)).await;
        assert_eq!(changed.answers()[0].data(), &RData::A(A::new(192, 0, 2, 2)));
        assert!(server.try_set_zone("host.test A nope").is_err());

        server.reset_counters();
        assert_eq!(server.queries(), 0);
        assert_eq!(server.queries_for("host.test"), 0);
    }

    #[tokio::test]
    async fn delay_does_not_block_other_queries() {
        let server = TestDnsServer::start("slow.test DELAY 1s A 192.0.2.1\nfast.test A 192.0.2.2")
            .await
            .unwrap();
        let slow_query = query_message("slow.test", RecordType::A, false);
        let slow = udp_exchange(&server, &slow_query);
        let fast = async {
            // Ask once the slow one is being worked on.
            while server.in_flight() == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let started = std::time::Instant::now();
            let fast_query = query_message("fast.test", RecordType::A, false);
            let response = udp_exchange(&server, &fast_query).await;
            (started.elapsed(), response)
        };
        let (slow, (fast_elapsed, fast)) = tokio::join!(slow, fast);
        assert_eq!(slow.answers().len(), 1);
        assert_eq!(fast.answers().len(), 1);
        assert!(
            fast_elapsed < Duration::from_millis(900),
            "{fast_elapsed:?}"
        );
        assert_eq!(server.max_in_flight(), 2);
    }

    #[test]
    fn start_in_thread_serves_sync_callers_and_stops_on_drop() {
        let server = TestDnsServer::start_in_thread("host.test A 192.0.2.1").unwrap();
        let addr = server.addr;
        let socket = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let request = query_message("host.test", RecordType::A, false)
            .to_vec()
            .unwrap();
        socket.send_to(&request, addr).unwrap();
        let mut buf = [0u8; 512];
        let (len, _) = socket.recv_from(&mut buf).unwrap();
        assert_eq!(Message::from_vec(&buf[..len]).unwrap().answers().len(), 1);
        assert_eq!(server.queries(), 1);
        drop(server);
        // The TCP port is closed once dropped.
        assert!(std::net::TcpStream::connect(addr).is_err());
    }

    #[tokio::test]
    async fn start_rejects_a_bad_zone() {
        let error = TestDnsServer::start("x.test A 999.1.1.1")
            .await
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(TestDnsServer::start_in_thread("x.test NOPE").is_err());
    }
}
