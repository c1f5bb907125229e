//! The greylist store on a real Redis Cluster (three primaries on loopback, made with
//! `redis-cli --cluster create`): 10,000 unique triplets from 400 client networks through the
//! daemon are all greylisted, spread over the three nodes (`DBSIZE` per node), and a client's
//! triplet and autowhitelist keys share one hash slot; a retry after the delay passes. One
//! node restarted under load: every session is answered (450 or accept, never 5xx), then
//! greylisting resumes on every node without a restart of the daemon.
//!
//! Needs `redis-server` and `redis-cli` (Debian: redis-server, redis-tools).

mod common;

use std::process::Command;
use std::time::Duration;

use common::load::{assert_450_or_accept, greylisted, letters, rand_u64, wait_for};
use common::redis_server::RedisServer;
use common::{Client, Daemon};
use mxsentry::protocol::reply::Reply;

const TRIPLETS: usize = 10_000;
const NETWORKS: usize = 400;
const THREADS: usize = 4;

fn start_cluster() -> Vec<RedisServer> {
    let nodes: Vec<RedisServer> = (0..3)
        .map(|_| RedisServer::start_cluster_node(5000))
        .collect();
    let mut create = Command::new("redis-cli");
    create.arg("--cluster").arg("create");
    for n in &nodes {
        create.arg(format!("127.0.0.1:{}", n.port));
    }
    let out = create
        .arg("--cluster-yes")
        .output()
        .expect("redis-cli (Debian package redis-tools) is needed");
    assert!(
        out.status.success(),
        "redis-cli --cluster create: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for_cluster_ok(&nodes);
    nodes
}

fn wait_for_cluster_ok(nodes: &[RedisServer]) {
    for n in nodes {
        wait_for("cluster_state:ok", Duration::from_secs(30), || {
            n.raw(&["CLUSTER", "INFO"])
                .is_some_and(|r| r.contains("cluster_state:ok"))
        });
    }
}

fn config(nodes: &[RedisServer]) -> String {
    let urls: Vec<String> = nodes
        .iter()
        .map(|n| format!("\"redis://127.0.0.1:{}\"", n.port))
        .collect();
    format!(
        "[greylist]\nenabled = true\ndelay = \"1s\"\nretry_window = \"2d\"\nautowhite = \"1d\"\n\
         client_autowhite_after = 1000\nstore = \"redis\"\nredis_cluster = [{}]\n\
         [rdns]\nno_ptr = \"off\"\n",
        urls.join(", ")
    )
}

/// Client network `i` (a /24 of its own).
fn client_ip(i: usize) -> String {
    format!("10.{}.{}.7", i / 250, i % 250)
}

/// One session from `ip`: the RCPT reply.
fn session(port: u16, ip: &str, from: &str) -> Option<Reply> {
    let s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    s.set_nodelay(true).ok()?; // else Nagle and delayed ACKs add ~40 ms per session
    let mut c = Client::tcp_stream(s);
    c.try_negotiate()?;
    c.connect(&format!("[{ip}]"), ip);
    c.helo("client.example");
    c.mail(from);
    c.rcpt("u@example.org")
}

fn sender(run: &str, n: usize) -> String {
    format!("{run}.{}@sender.example", letters(n as u64))
}

#[test]
fn ten_thousand_triplets_spread_over_the_nodes_and_a_node_restart_fails_open() {
    let mut nodes = start_cluster();
    let mx = Daemon::start("", &config(&nodes));
    let run = letters(rand_u64() % 1_000_000_000);

    let replies: Vec<Option<Reply>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let run = &run;
                let port = mx.port;
                scope.spawn(move || {
                    (t..TRIPLETS)
                        .step_by(THREADS)
                        .map(|n| session(port, &client_ip(n % NETWORKS), &sender(run, n)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let greylisted_count = replies
        .iter()
        .filter(|r| r.as_ref().is_some_and(greylisted))
        .count();
    let odd: Vec<&Option<Reply>> = replies
        .iter()
        .filter(|r| !r.as_ref().is_some_and(greylisted))
        .take(3)
        .collect();
    assert_eq!(
        greylisted_count, TRIPLETS,
        "every new triplet greylisted: {odd:?}"
    );

    let per_node: Vec<i64> = nodes.iter().map(|n| n.int(&["DBSIZE"])).collect();
    eprintln!("cluster: {TRIPLETS} triplets from {NETWORKS} networks, keys per node {per_node:?}");
    assert_eq!(
        per_node.iter().sum::<i64>(),
        TRIPLETS as i64,
        "one key per triplet"
    );
    for n in &per_node {
        assert!(
            *n > (TRIPLETS / 10) as i64,
            "spread over the nodes: {per_node:?}"
        );
    }

    // The retry after the delay passes, and the client's autowhitelist key lands in the slot
    // of its triplet keys.
    std::thread::sleep(Duration::from_millis(1100));
    for n in 0..50 {
        let r = session(mx.port, &client_ip(n % NETWORKS), &sender(&run, n));
        assert_eq!(r, Some(Reply::Continue), "retry of triplet {n} passes");
    }
    let slot = |key: &str| nodes[0].int(&["CLUSTER", "KEYSLOT", key]);
    let client_key = "mxsentry:gl:{10.0.0.0/24}c:10.0.0.0/24";
    let triplet_key = format!(
        "mxsentry:gl:{{10.0.0.0/24}}t:10.0.0.0/24|{}|u@example.org",
        sender(&run, 0)
    );
    assert_eq!(slot(client_key), slot(&triplet_key));
    let holder = nodes
        .iter()
        .find(|n| n.int(&["CLUSTER", "COUNTKEYSINSLOT", &slot(client_key).to_string()]) > 0)
        .expect("a node holds the client's slot");
    assert_eq!(holder.int(&["EXISTS", client_key]), 1, "client key written");
    assert_eq!(
        holder.int(&["EXISTS", &triplet_key]),
        1,
        "triplet key beside it"
    );

    // A node restarted (SIGKILL, then started again on its port and directory: it rejoins with
    // its slots, empty) under load: answered, never 5xx; then greylisting everywhere again.
    let load_run = format!("{run}x");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let during: Vec<Option<Reply>> = std::thread::scope(|scope| {
        let worker = scope.spawn(|| {
            let mut out = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                out.push(session(
                    mx.port,
                    &client_ip(n % NETWORKS),
                    &sender(&load_run, n),
                ));
                n += 1;
            }
            out
        });
        std::thread::sleep(Duration::from_millis(300));
        nodes[1].restart();
        wait_for_cluster_ok(&nodes);
        let probe_run = format!("{run}y");
        let mut probe = 0;
        let back = wait_for(
            "greylisting on every node again",
            Duration::from_secs(60),
            || {
                // 30 new triplets from 30 networks (slots on every node) all greylisted.
                (0..30).all(|i| {
                    probe += 1;
                    session(mx.port, &client_ip(i * 13), &sender(&probe_run, probe))
                        .is_some_and(|r| greylisted(&r))
                })
            },
        );
        eprintln!("cluster: node restarted; greylisting on every node {back:?} after it was up");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        worker.join().unwrap()
    });
    for r in &during {
        assert_450_or_accept(r, "during the node restart");
    }
    let accepted = during
        .iter()
        .filter(|r| **r == Some(Reply::Continue))
        .count();
    eprintln!(
        "cluster: {} sessions during the restart, {accepted} accepted (fail open), the rest 450",
        during.len()
    );
    assert!(accepted > 0, "the restarted node's clients failed open");
    assert_eq!(mx.log().matches("mxsentry started").count(), 1);
}
