//! Test helpers: start the real `mxsentry` binary on loopback with a generated config, and a
//! small blocking milter client that plays the MTA side as Postfix does.
#![allow(dead_code)]

pub mod load;
pub mod redis_server;
pub mod tls;

use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use mxsentry::protocol::command::{encode_command, ClientAddress, Command, MacroPairs, NulStrings};
use mxsentry::protocol::frame::split_frame;
use mxsentry::protocol::negotiate::flags;
use mxsentry::protocol::reply::{decode_reply, Reply};

/// Records of the loopback DNS server every test daemon uses (no test queries real DNS).
pub const TEST_ZONE: &str = "\
10.2.0.192.in-addr.arpa PTR client.example
client.example A 192.0.2.10
66.2.0.192.in-addr.arpa PTR client66.example
client66.example A 192.0.2.66
";

/// How a test daemon is started, beyond its configuration.
#[derive(Clone)]
pub struct Options {
    /// `RUST_LOG` for the daemon (default `mxsentry=debug`; a long soak wants `mxsentry=warn`).
    pub log_filter: &'static str,
    /// Start it under `prlimit --nofile=N:N` (its open file limit, soft and hard).
    pub nofile: Option<u64>,
    /// Its embedded greylist store here (e.g. on a file system a fault test controls) instead
    /// of in its own directory.
    pub greylist_path: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            log_filter: "mxsentry=debug",
            nofile: None,
            greylist_path: None,
        }
    }
}

fn spawn_daemon(config_path: &Path, log_path: &Path, opts: &Options) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .unwrap();
    let bin = env!("CARGO_BIN_EXE_mxsentry");
    // prlimit execs the daemon: the child's pid stays the daemon's.
    let mut cmd = match opts.nofile {
        Some(n) => {
            let mut c = Process::new("prlimit");
            c.arg(format!("--nofile={n}:{n}")).arg(bin);
            c
        }
        None => Process::new(bin),
    };
    cmd.arg("run")
        .arg("--config")
        .arg(config_path)
        .env("RUST_LOG", opts.log_filter)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// Runs the mxsentry binary once; (exit code, stdout, stderr).
pub fn mxsentry(args: &[&str]) -> (i32, String, String) {
    let out = Process::new(env!("CARGO_BIN_EXE_mxsentry"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running daemon; killed on drop.
pub struct Daemon {
    pub dns: mxsentry::testing::dns_server::TestDnsServer,
    pub metrics_port: u16,
    child: Child,
    pub port: u16,
    pub socket: PathBuf,
    pub dir: tempfile::TempDir,
    pub log_path: PathBuf,
    pub config_path: PathBuf,
    opts: Options,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Daemon {
    /// `mxsentry <args> --config <this daemon's config>`; (exit code, stdout, stderr).
    pub fn cmd(&self, args: &[&str]) -> (i32, String, String) {
        let config = self.config_path.to_str().unwrap().to_owned();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--config", &config]);
        mxsentry(&all)
    }

    /// Starts the daemon with `access` as its access file and `extra` appended to the config.
    pub fn start(access: &str, extra: &str) -> Daemon {
        Daemon::start_with_zone(access, extra, TEST_ZONE)
    }

    /// Starts the daemon with its own loopback DNS server serving `zone`.
    pub fn start_with_zone(access: &str, extra: &str, zone: &str) -> Daemon {
        Daemon::start_full(access, extra, zone, Options::default())
    }

    /// Starts the daemon with the test zone and `opts`.
    pub fn start_opts(access: &str, extra: &str, opts: Options) -> Daemon {
        Daemon::start_full(access, extra, TEST_ZONE, opts)
    }

    /// Starts the daemon with its embedded greylist store at `greylist_path` (e.g. on a file
    /// system a fault test controls) instead of in its own directory.
    pub fn start_with_store_at(extra: &str, greylist_path: &Path) -> Daemon {
        let opts = Options {
            greylist_path: Some(greylist_path.to_path_buf()),
            ..Options::default()
        };
        Daemon::start_full("", extra, TEST_ZONE, opts)
    }

    fn start_full(access: &str, extra: &str, zone: &str, opts: Options) -> Daemon {
        let dns = mxsentry::testing::dns_server::TestDnsServer::start_in_thread(zone).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let metrics_port = free_port();
        let socket = dir.path().join("milter.sock");
        let access_path = dir.path().join("access");
        std::fs::write(&access_path, access).unwrap();
        let config_path = dir.path().join("milter.toml");
        // `extra` may bring its own [dns] section: the test server is put into it.
        let nameservers = format!("[dns]\nnameservers = [\"{}\"]\n", dns.addr);
        let (extra, dns_section) = if extra.contains("[dns]\n") {
            (extra.replace("[dns]\n", &nameservers), String::new())
        } else {
            (
                extra.to_string(),
                format!("{nameservers}timeout = \"2s\"\n"),
            )
        };
        // ... and so may [greylist]: its store file goes into the test's directory.
        let db_path = opts
            .greylist_path
            .clone()
            .unwrap_or_else(|| dir.path().join("greylist.db"));
        let db = format!("[greylist]\npath = \"{}\"\n", db_path.display());
        let (extra, greylist_section) = if extra.contains("[greylist]\n") {
            (extra.replace("[greylist]\n", &db), String::new())
        } else {
            (extra, format!("{db}enabled = false\n"))
        };
        // ... and its own control socket (never the system's /run/mxsentry/control.sock).
        let control = if extra.contains("[control]") {
            String::new()
        } else {
            format!(
                "[control]\nsocket = \"{}\"\n",
                dir.path().join("control.sock").display()
            )
        };
        // ... and no zone health probes unless the test asks for them: the test zones do not
        // carry the RFC 5782 test points, and a listing counts only once a probe passed.
        let (extra, health_section) = if extra.contains("health_check_interval") {
            (extra, String::new())
        } else if extra.contains("[dnsbl]\n") {
            let off = "[dnsbl]\nhealth_check_interval = \"0s\"\n";
            (extra.replace("[dnsbl]\n", off), String::new())
        } else {
            (
                extra,
                "[dnsbl]\nhealth_check_interval = \"0s\"\n".to_string(),
            )
        };
        // ... and its own idle_timeout.
        let idle = if extra.contains("idle_timeout") {
            ""
        } else {
            "idle_timeout = \"20s\"\n"
        };
        let config = format!(
            "[milter]\nlisten = [\"inet:{port}@127.0.0.1\", \"unix:{}\"]\nhostname = \"mx.example.org\"\n\
             {idle}{extra}\n{dns_section}{greylist_section}{control}\
             [sender_rules]\naccess_file = \"{}\"\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n\
             {health_section}",
            socket.display(),
            access_path.display()
        );
        std::fs::write(&config_path, config).unwrap();
        let log_path = dir.path().join("mxsentry.log");
        let child = spawn_daemon(&config_path, &log_path, &opts);
        let mut d = Daemon {
            dns,
            metrics_port,
            child,
            port,
            socket,
            dir,
            log_path,
            config_path,
            opts,
        };
        d.wait_listening();
        d
    }

    /// Waits until the milter port and the metrics endpoint (bound just after it) accept
    /// connections; fails at once, with the log, if the daemon exits instead.
    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let up = |port: u16| TcpStream::connect(("127.0.0.1", port)).is_ok();
        while !(up(self.port) && up(self.metrics_port)) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "daemon exited with {status} instead of listening: {}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not listen: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // The control socket is ready (bound, mode set) a moment after the ports answer: a command run at once
        // would otherwise open the store itself instead of asking the daemon.
        let control = self.dir.path().join("control.sock");
        let config = std::fs::read_to_string(&self.config_path).unwrap_or_default();
        if config.contains(&*control.to_string_lossy()) {
            let settled = |log: &str| {
                log.contains("control socket ready") || log.contains("control socket unavailable")
            };
            while !settled(&self.log()) {
                if self.child.try_wait().unwrap().is_some() || Instant::now() >= deadline {
                    break; // the caller's own assertions will say what went wrong
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Starts the daemon again after it exited.
    pub fn restart_stopped(&mut self) {
        self.child = spawn_daemon(&self.config_path, &self.log_path, &self.opts);
        self.wait_listening();
    }

    /// Stops the daemon with SIGTERM (it must exit 0) and starts it again on the same files.
    pub fn restart(&mut self) {
        self.signal("TERM");
        let status = self.wait_exit(Duration::from_secs(30)).expect("exited");
        assert!(status.success(), "exit status {status:?}: {}", self.log());
        self.child = spawn_daemon(&self.config_path, &self.log_path, &self.opts);
        self.wait_listening();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the log contains `needle` (the daemon logs asynchronously).
    pub fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "log never contained {needle:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the log contains `needle` at least `n` times.
    pub fn wait_log_count(&self, needle: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.log().matches(needle).count() < n {
            assert!(
                Instant::now() < deadline,
                "log never had {n}x {needle:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// GET a path from the metrics endpoint; returns (status line, body).
    pub fn http_get(&self, path: &str) -> (String, String) {
        let mut s = TcpStream::connect(("127.0.0.1", self.metrics_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        (
            head.lines().next().unwrap_or("").to_string(),
            body.to_string(),
        )
    }

    /// The value of one sample of `/metrics`, e.g. `mxsentry_connections_open` or
    /// `mxsentry_connections_overflow_total{action="tempfail"}`; panics if it is absent.
    pub fn metric(&self, series: &str) -> f64 {
        self.try_metric(series)
            .unwrap_or_else(|| panic!("no sample {series} in /metrics"))
    }

    /// Polls `/metrics` until `series` is at least `value` (the daemon counts asynchronously:
    /// a peer may see its connection closed before the counter moves).
    pub fn wait_metric_at_least(&self, series: &str, value: f64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.try_metric(series).unwrap_or(0.0);
            if got >= value {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{series} is {got}, never reached {value}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls `/metrics` until `series` has `value` (the daemon counts asynchronously).
    pub fn wait_metric(&self, series: &str, value: f64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.metric(series);
            if got == value {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{series} is {got}, never {value}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the start-up probe connection (`wait_listening`) has come and gone, so the
    /// connection counters start from it.
    pub fn wait_idle(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.metric("mxsentry_connections_total") < 1.0
            || self.metric("mxsentry_connections_open") != 0.0
        {
            assert!(
                Instant::now() < deadline,
                "the probe connection never ended"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's resident memory in KiB (VmRSS).
    pub fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`: no flush, no cleanup. Start it again with [`Daemon::restart_stopped`].
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// The value of one series of `/metrics`, written as it appears there
    /// (`mxsentry_greylist_errors_total{backend="embedded"}`); None when absent.
    pub fn try_metric(&self, series: &str) -> Option<f64> {
        let (_, body) = self.http_get("/metrics");
        body.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Process::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn config_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// The MTA side of the milter protocol, honouring the flags the filter negotiated.
pub struct Client {
    stream: Box<dyn Stream>,
    rbuf: BytesMut,
    pub protocol: u32,
    pub actions: u32,
}

impl Client {
    pub fn tcp(port: u16) -> Client {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Client::over(Box::new(s))
    }

    pub fn unix(path: &Path) -> Client {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Client::over(Box::new(s))
    }

    /// Over a connected stream (its timeouts set by the caller).
    pub fn tcp_stream(s: TcpStream) -> Client {
        Client::over(Box::new(s))
    }

    fn over(stream: Box<dyn Stream>) -> Client {
        Client {
            stream,
            rbuf: BytesMut::new(),
            protocol: 0,
            actions: 0,
        }
    }

    pub fn send(&mut self, cmd: &Command) {
        let mut buf = BytesMut::new();
        encode_command(cmd, &mut buf);
        self.stream.write_all(&buf).unwrap();
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads one reply; None when the filter closed the connection.
    pub fn recv(&mut self) -> Option<Reply> {
        loop {
            if let Some(frame) = split_frame(&mut self.rbuf, 1 << 24).unwrap() {
                return Some(decode_reply(frame).unwrap());
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.rbuf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// True when the peer closed the connection (EOF or reset) within the read timeout.
    pub fn closed_by_peer(&mut self) -> bool {
        closed_by_peer(&mut self.stream)
    }

    /// OPTNEG as Postfix 3.7 sends it: version 6, all actions, every protocol bit offered.
    pub fn negotiate(&mut self) -> Reply {
        self.try_negotiate().expect("OPTNEG reply")
    }

    /// OPTNEG; None when the filter closed the connection instead of answering.
    pub fn try_negotiate(&mut self) -> Option<Reply> {
        if self
            .send_raw(&[
                0, 0, 0, 13, b'O', 0, 0, 0, 6, 0, 0, 1, 0xff, 0, 0x1f, 0xff, 0xff,
            ])
            .is_err()
        {
            return None;
        }
        let reply = self.recv()?;
        if let Reply::OptNeg {
            protocol, actions, ..
        } = &reply
        {
            self.protocol = *protocol;
            self.actions = *actions;
        }
        Some(reply)
    }

    fn wants_reply(&self, nr_flag: u32) -> bool {
        self.protocol & nr_flag == 0
    }

    /// Sends a command for a stage; returns the reply when the filter answers that stage.
    pub fn stage(&mut self, cmd: Command, skip_flag: u32, nr_flag: u32) -> Option<Reply> {
        if self.protocol & skip_flag != 0 {
            return None;
        }
        self.send(&cmd);
        if self.wants_reply(nr_flag) {
            Some(self.recv().expect("stage reply"))
        } else {
            None
        }
    }

    pub fn macros(&mut self, stage: u8, pairs: &[(&str, &str)]) {
        self.send(&macro_command(stage, pairs));
    }

    pub fn connect(&mut self, hostname: &str, ip: &str) -> Option<Reply> {
        self.connect_with_macros(hostname, ip, &[])
    }

    /// CONNECT with extra CONNECT-stage macros (`v`, `{client_name}`, ...).
    pub fn connect_with_macros(
        &mut self,
        hostname: &str,
        ip: &str,
        extra: &[(&str, &str)],
    ) -> Option<Reply> {
        let ip: IpAddr = ip.parse().unwrap();
        let mut pairs = vec![("j", "mx.example.org"), ("{daemon_name}", "test")];
        pairs.extend_from_slice(extra);
        self.macros(b'C', &pairs);
        self.stage(
            Command::Connect {
                hostname: Bytes::copy_from_slice(hostname.as_bytes()),
                address: ClientAddress::Inet { ip, port: 40000 },
            },
            flags::SMFIP_NOCONNECT,
            flags::SMFIP_NR_CONN,
        )
    }

    pub fn helo(&mut self, name: &str) -> Option<Reply> {
        self.stage(
            Command::Helo {
                name: Bytes::copy_from_slice(name.as_bytes()),
            },
            flags::SMFIP_NOHELO,
            flags::SMFIP_NR_HELO,
        )
    }

    pub fn mail(&mut self, from: &str) -> Option<Reply> {
        self.stage(
            Command::Mail {
                args: NulStrings::from_items(&[format!("<{from}>").as_bytes()]),
            },
            flags::SMFIP_NOMAIL,
            flags::SMFIP_NR_MAIL,
        )
    }

    pub fn rcpt(&mut self, to: &str) -> Option<Reply> {
        self.stage(
            Command::Rcpt {
                args: NulStrings::from_items(&[format!("<{to}>").as_bytes()]),
            },
            flags::SMFIP_NORCPT,
            flags::SMFIP_NR_RCPT,
        )
    }

    /// DATA, one header, EOH, a body chunk (each only if not negotiated away), then EOM;
    /// returns every reply to EOM (header changes, then the final verdict).
    pub fn message(&mut self) -> Vec<Reply> {
        self.stage(Command::Data, flags::SMFIP_NODATA, flags::SMFIP_NR_DATA);
        self.stage(
            Command::Header {
                name: Bytes::from_static(b"Subject"),
                value: Bytes::from_static(b"test"),
            },
            flags::SMFIP_NOHDRS,
            flags::SMFIP_NR_HDR,
        );
        self.stage(
            Command::EndOfHeaders,
            flags::SMFIP_NOEOH,
            flags::SMFIP_NR_EOH,
        );
        self.stage(
            Command::Body {
                chunk: Bytes::from_static(b"hello\r\n"),
            },
            flags::SMFIP_NOBODY,
            flags::SMFIP_NR_BODY,
        );
        self.send(&Command::EndOfMessage {
            chunk: Bytes::new(),
        });
        let mut replies = Vec::new();
        loop {
            let r = self.recv().expect("EOM reply");
            let last = !matches!(
                r,
                Reply::AddHeader { .. }
                    | Reply::InsertHeader { .. }
                    | Reply::ChangeHeader { .. }
                    | Reply::Progress
            );
            replies.push(r);
            if last {
                return replies;
            }
        }
    }
}

/// True when the peer of `stream` closes it (EOF or reset) before a read times out; what it
/// sends first is skipped.
pub fn closed_by_peer(stream: &mut impl Read) -> bool {
    let mut chunk = [0u8; 256];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => {
                return matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                )
            }
        }
    }
}

impl Client {
    /// Like [`Client::send`], but a connection failure is `None` instead of a panic.
    fn try_send(&mut self, cmd: &Command) -> Option<()> {
        let mut buf = BytesMut::new();
        encode_command(cmd, &mut buf);
        self.stream.write_all(&buf).ok()
    }

    /// Like [`Client::stage`] without panicking: `None` when the connection failed,
    /// `Some(None)` when the stage gets no reply.
    fn try_stage(&mut self, cmd: Command, skip_flag: u32, nr_flag: u32) -> Option<Option<Reply>> {
        if self.protocol & skip_flag != 0 {
            return Some(None);
        }
        self.try_send(&cmd)?;
        if self.wants_reply(nr_flag) {
            Some(Some(self.recv()?))
        } else {
            Some(None)
        }
    }
}

/// A MACRO command for `stage` (a command byte such as `b'C'`).
pub fn macro_command(stage: u8, pairs: &[(&str, &str)]) -> Command {
    let pairs: Vec<(&[u8], &[u8])> = pairs
        .iter()
        .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
        .collect();
    Command::Macro {
        stage,
        pairs: MacroPairs::from_pairs(&pairs),
    }
}

/// One session from 192.0.2.10 (client.example) up to the RCPT reply, then QUIT, for fault
/// tests: `None` when the daemon is gone or the connection fails (never a panic, so load
/// threads survive a `kill -9`). Each call is a fresh connection, as Postfix makes per session.
pub fn try_rcpt(port: u16, from: &str, rcpt: &str) -> Option<Reply> {
    try_rcpt_timed(port, from, rcpt).map(|(r, _)| r)
}

/// [`try_rcpt`] with the time from sending RCPT to its reply (how long the MTA waits for
/// the verdict).
pub fn try_rcpt_timed(port: u16, from: &str, rcpt: &str) -> Option<(Reply, Duration)> {
    let s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    // Frames without a reply (macros) are followed at once by the next: without this, Nagle
    // and the peer's delayed ACK would add ~40 ms to a session.
    s.set_nodelay(true).ok()?;
    let mut c = Client::over(Box::new(s));
    c.try_send(&Command::OptNeg {
        version: 6,
        actions: 0x1ff,
        protocol: 0x001f_ffff,
    })?;
    let Reply::OptNeg {
        protocol, actions, ..
    } = c.recv()?
    else {
        return None;
    };
    c.protocol = protocol;
    c.actions = actions;
    let mut pairs = Vec::new();
    for (k, v) in [("j", "mx.example.org"), ("{daemon_name}", "test")] {
        pairs.extend_from_slice(k.as_bytes());
        pairs.push(0);
        pairs.extend_from_slice(v.as_bytes());
        pairs.push(0);
    }
    c.try_send(&Command::Macro {
        stage: b'C',
        pairs: MacroPairs::from_wire(Bytes::from(pairs))?,
    })?;
    let ip: IpAddr = "192.0.2.10".parse().ok()?;
    c.try_stage(
        Command::Connect {
            hostname: Bytes::from_static(b"client.example"),
            address: ClientAddress::Inet { ip, port: 40000 },
        },
        flags::SMFIP_NOCONNECT,
        flags::SMFIP_NR_CONN,
    )?;
    c.try_stage(
        Command::Helo {
            name: Bytes::from_static(b"helo.example"),
        },
        flags::SMFIP_NOHELO,
        flags::SMFIP_NR_HELO,
    )?;
    c.try_stage(
        Command::Mail {
            args: NulStrings::from_items(&[format!("<{from}>").as_bytes()]),
        },
        flags::SMFIP_NOMAIL,
        flags::SMFIP_NR_MAIL,
    )?;
    let sent = Instant::now();
    let reply = c.try_stage(
        Command::Rcpt {
            args: NulStrings::from_items(&[format!("<{rcpt}>").as_bytes()]),
        },
        flags::SMFIP_NORCPT,
        flags::SMFIP_NR_RCPT,
    )??;
    let waited = sent.elapsed();
    let _ = c.try_send(&Command::Quit);
    Some((reply, waited))
}

/// The reply text of a REPLYCODE, for assertions.
pub fn reply_text(r: &Reply) -> String {
    match r {
        Reply::ReplyCode { text } => String::from_utf8_lossy(text).into_owned(),
        other => format!("{other:?}"),
    }
}

/// One whole SMTP session from 192.0.2.10 (client.example): the RCPT reply and, when the
/// recipient was accepted, every reply to end-of-message.
pub fn transaction(d: &Daemon, from: &str, rcpt: &str) -> (Reply, Vec<Reply>) {
    let mut c = Client::tcp(d.port);
    c.negotiate();
    c.connect("client.example", "192.0.2.10");
    c.helo("helo.example");
    c.mail(from);
    let r = c.rcpt(rcpt).expect("RCPT answered");
    let eom = if r == Reply::Continue {
        c.message()
    } else {
        Vec::new()
    };
    c.send(&Command::Quit);
    (r, eom)
}
