//! A real `redis-server` on loopback for the tests (Debian package `redis-server`).

use std::io::{Read, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// A `redis-server` on 127.0.0.1:`port` (and a unix socket), killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    /// More arguments (TLS, `requirepass`, `replicaof`, ...).
    extra: Vec<String>,
    /// Sent with `AUTH` before each of the harness's own commands.
    password: Option<String>,
    /// A sentinel: its generated configuration file (`redis-server <file> --sentinel`).
    sentinel_conf: Option<PathBuf>,
}

fn redis_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("MXSENTRY_REDIS_SERVER") {
        return PathBuf::from(path);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
            .map(|dir| dir.join("redis-server"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "redis-server not found: these tests need a real Redis. Install the Debian package \
             `redis-server` (apt-get install -y redis-server) or set MXSENTRY_REDIS_SERVER"
        )
    })
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_on(free_port())
    }

    /// Starts on a given port (e.g. one a daemon was configured with before Redis was up).
    pub fn start_on(port: u16) -> RedisServer {
        RedisServer::start_custom(port, Vec::new(), None, None)
    }

    /// Starts with more arguments; `password` is the `requirepass` the harness authenticates with.
    pub fn start_with(extra: Vec<String>, password: Option<&str>) -> RedisServer {
        let mut extra = extra;
        if let Some(p) = password {
            extra.extend(["--requirepass".to_string(), p.to_string()]);
        }
        RedisServer::start_custom(free_port(), extra, password, None)
    }

    /// A Redis Cluster node (`cluster-enabled yes`, its `nodes.conf` in its directory) on a free
    /// port whose cluster bus port (port + 10000) is free too.
    pub fn start_cluster_node(node_timeout_ms: u64) -> RedisServer {
        let port = loop {
            let port = free_port();
            if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
                break port;
            }
        };
        let extra = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            &node_timeout_ms.to_string(),
        ]
        .map(String::from)
        .to_vec();
        RedisServer::start_custom(port, extra, None, None)
    }

    /// A sentinel monitoring `master_name` at 127.0.0.1:`master_port` with quorum 2, fast
    /// failure detection (`down_after_ms`) and failover timeout.
    pub fn start_sentinel(master_name: &str, master_port: u16, down_after_ms: u64) -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "sentinel monitor {master_name} 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds {master_name} {down_after_ms}\n\
                 sentinel failover-timeout {master_name} 5000\n\
                 sentinel parallel-syncs {master_name} 1\n"
            ),
        )
        .unwrap();
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            dir,
            extra: Vec::new(),
            password: None,
            sentinel_conf: Some(conf),
        };
        server.spawn();
        server
    }

    fn start_custom(
        port: u16,
        extra: Vec<String>,
        password: Option<&str>,
        sentinel_conf: Option<PathBuf>,
    ) -> RedisServer {
        let mut server = RedisServer {
            child: None,
            port,
            dir: tempfile::tempdir().unwrap(),
            extra,
            password: password.map(str::to_string),
            sentinel_conf,
        };
        server.spawn();
        server
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::File::create(self.dir.path().join("redis.log")).unwrap();
        let mut command = Command::new(redis_server_binary());
        if let Some(conf) = &self.sentinel_conf {
            command.arg(conf).arg("--sentinel");
        }
        let child = command
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .args(["--dir", &self.dir.path().display().to_string()])
            .args(["--unixsocket", &self.socket().display().to_string()])
            .args(["--unixsocketperm", "700"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server: {e}"));
        self.child = Some(child);
        let start = Instant::now();
        while !self.answers_ping() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "redis-server exited with {status}: {}",
                    std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "redis-server did not answer PING on port {} within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn answers_ping(&self) -> bool {
        self.raw(&["PING"]).is_some_and(|r| r.starts_with("+PONG"))
    }

    /// One command over a plain socket (the tests check the store, not with the store).
    pub fn raw(&self, args: &[&str]) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        if let Some(p) = &self.password {
            let auth = format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{p}\r\n", p.len());
            s.write_all(auth.as_bytes()).ok()?;
            let mut ok = [0u8; 5];
            s.read_exact(&mut ok).ok()?;
        }
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).ok()?;
        let mut buf = [0u8; 65536];
        let n = s.read(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// An integer reply (`:N`).
    pub fn int(&self, args: &[&str]) -> i64 {
        let reply = self.raw(args).expect("redis answers");
        reply
            .strip_prefix(':')
            .and_then(|r| r.trim().parse().ok())
            .unwrap_or_else(|| panic!("{args:?}: not an integer reply: {reply:?}"))
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {pid}");
    }

    /// Restarts on the same port (empty: no persistence).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
