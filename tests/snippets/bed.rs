//! Running a configuration for real: what is rewritten to be test-safe, check-config, run.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mxsentry::protocol::reply::Reply;

use crate::common::{self, free_port, Client};
use crate::{mxsentry, read, BIN, ROOT};

/// What a test configuration needs around it: a directory, the loopback DNS server, the files
/// the package installs (by installed path), and whether this build has `[control] socket`.
pub struct Bed {
    dir: tempfile::TempDir,
    dns: mxsentry::testing::dns_server::TestDnsServer,
    packaged: HashMap<String, PathBuf>,
    has_control_socket: bool,
    count: std::cell::Cell<usize>,
}

impl Bed {
    pub fn new() -> Bed {
        let dir = tempfile::tempdir().unwrap();
        let dns = mxsentry::testing::dns_server::TestDnsServer::start_in_thread(common::TEST_ZONE)
            .unwrap();
        let mut bed = Bed {
            dir,
            dns,
            packaged: packaged_files(),
            has_control_socket: false,
            count: std::cell::Cell::new(0),
        };
        // The control socket (issue 12) defaults to /run/mxsentry: where this build knows the
        // key, every test configuration gets its own socket.
        let probe = bed.dir.path().join("probe.toml");
        std::fs::write(
            &probe,
            format!(
                "[control]\nsocket = {:?}\n",
                bed.dir.path().join("probe.sock").display()
            ),
        )
        .unwrap();
        bed.has_control_socket =
            mxsentry(&["check-config", "--config", probe.to_str().unwrap()]).0 == 0;
        bed
    }

    /// A fresh path in the bed's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.count.set(self.count.get() + 1);
        self.dir.path().join(format!("{}-{name}", self.count.get()))
    }

    /// The file to use for `path` named by a snippet: the packaged source of what the package
    /// installs there, else an empty file (an admin's own rule file, empty to begin with).
    pub fn file_for(&self, path: &str) -> String {
        let name = Path::new(path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "file".into());
        let copy = self.path(&name);
        match self.packaged.get(path) {
            Some(src) => std::fs::copy(src, &copy).map(|_| ()).unwrap(),
            // A secret file must hold something (an empty one is refused, rightly).
            None if name.contains("pass") => {
                std::fs::write(&copy, "snippet-test-secret\n").unwrap();
                std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o600)).unwrap();
            }
            // A CA file must hold a certificate: a throwaway self-signed one (openssl CLI).
            None if name.ends_with(".pem") || name.ends_with(".crt") => {
                let key = self.path(&format!("{name}.key"));
                let ok = std::process::Command::new("openssl")
                    .args([
                        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    ])
                    .args(["-subj", "/CN=snippet-test-ca", "-keyout"])
                    .arg(&key)
                    .arg("-out")
                    .arg(&copy)
                    .stderr(std::process::Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                assert!(ok, "openssl could not make a stand-in CA for {path}");
            }
            None => std::fs::write(&copy, "").unwrap(),
        }
        copy.display().to_string()
    }
}

/// Installed path → source file, from Cargo.toml's [package.metadata.deb] assets.
pub fn packaged_files() -> HashMap<String, PathBuf> {
    let manifest: toml::Table = toml::from_str(&read("Cargo.toml")).unwrap();
    let assets = manifest["package"]["metadata"]["deb"]["assets"]
        .as_array()
        .unwrap();
    let mut map = HashMap::new();
    for asset in assets {
        let a = asset.as_array().unwrap();
        let (src, dest) = (a[0].as_str().unwrap(), a[1].as_str().unwrap());
        if src.contains('*') || src.starts_with("target/") {
            continue;
        }
        let dest = if dest.ends_with('/') {
            format!(
                "/{dest}{}",
                Path::new(src).file_name().unwrap().to_string_lossy()
            )
        } else {
            format!("/{dest}")
        };
        map.insert(dest, Path::new(ROOT).join(src));
    }
    map
}

/// Where a started configuration can be reached.
pub enum Endpoint {
    Tcp(u16),
    Unix(PathBuf),
}

pub fn table<'a>(t: &'a mut toml::Table, name: &str) -> &'a mut toml::Table {
    t.entry(name)
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .unwrap()
}

/// Rewrites what cannot be the same on a test machine (see the module comment) and returns
/// where the milter will listen.
pub fn make_test_safe(origin: &str, config: &mut toml::Table, bed: &Bed) -> Vec<Endpoint> {
    let mut endpoints = Vec::new();
    let milter = table(config, "milter");
    let specs: Vec<String> = match milter.get("listen") {
        Some(toml::Value::String(s)) => vec![s.clone()],
        Some(toml::Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect(),
        _ => vec!["inet:8890@127.0.0.1".into()],
    };
    let rewritten: Vec<toml::Value> = specs
        .iter()
        .map(|spec| {
            if spec.starts_with("unix:") {
                let p = bed.path("milter.sock");
                endpoints.push(Endpoint::Unix(p.clone()));
                toml::Value::String(format!("unix:{}", p.display()))
            } else {
                assert_pasteable_host(origin, spec, milter_listen_host(spec));
                let port = free_port();
                endpoints.push(Endpoint::Tcp(port));
                toml::Value::String(format!("inet:{port}@127.0.0.1"))
            }
        })
        .collect();
    milter.insert("listen".into(), toml::Value::Array(rewritten));

    let metrics = table(config, "metrics");
    if let Some(listen) = metrics.get("listen").and_then(|v| v.as_str()) {
        if listen != "off" {
            let host = listen.rsplit_once(':').map_or(listen, |(h, _)| h);
            assert_pasteable_host(origin, listen, host.trim_matches(['[', ']']));
        }
    }
    if metrics.get("listen").and_then(|v| v.as_str()) != Some("off") {
        metrics.insert("listen".into(), format!("127.0.0.1:{}", free_port()).into());
    }
    let dns = table(config, "dns");
    dns.insert(
        "nameservers".into(),
        toml::Value::Array(vec![bed.dns.addr.to_string().into()]),
    );
    let greylist = table(config, "greylist");
    greylist.insert(
        "path".into(),
        bed.path("greylist.db").display().to_string().into(),
    );
    if let Some(url) = greylist.get("redis_url").and_then(|v| v.as_str()) {
        greylist.insert("redis_url".into(), loopback_redis(url).into());
    }
    if bed.has_control_socket {
        let control = table(config, "control");
        if control.get("socket").and_then(|v| v.as_str()) != Some("off") {
            control.insert(
                "socket".into(),
                bed.path("control.sock").display().to_string().into(),
            );
        }
    }
    // The shadow candidate is a site's own milter.toml: a minimal valid one stands in for it.
    if let Some(shadow) = config.get_mut("shadow").and_then(|v| v.as_table_mut()) {
        if shadow.contains_key("config") {
            let candidate = bed.path("candidate.toml");
            let text = format!(
                "[dns]\nnameservers = [\"{}\"]\n[metrics]\nlisten = \"off\"\n[control]\nsocket = \"off\"\n",
                bed.dns.addr
            );
            std::fs::write(&candidate, text).expect("write the stand-in candidate");
            shadow.insert("config".into(), candidate.display().to_string().into());
        }
    }
    // Rule files: `*_file` and `*_files` keys of any section.
    for (_, section) in config.iter_mut() {
        if let Some(section) = section.as_table_mut() {
            for (key, value) in section.iter_mut() {
                if key.ends_with("_file") {
                    if let Some(p) = value.as_str() {
                        *value = bed.file_for(p).into();
                    }
                } else if key.ends_with("_files") {
                    if let Some(list) = value.as_array_mut() {
                        for v in list.iter_mut() {
                            if let Some(p) = v.as_str() {
                                *v = bed.file_for(p).into();
                            }
                        }
                    }
                }
            }
        }
    }
    endpoints
}

/// The host of a milter listen spec: `inet:PORT@HOST`, `inet6:PORT@HOST` or `inet:HOST:PORT`.
pub fn milter_listen_host(spec: &str) -> &str {
    let rest = spec.split_once(':').map_or(spec, |(_, r)| r);
    match rest.split_once('@') {
        Some((_, host)) => host,
        None => rest.rsplit_once(':').map_or(rest, |(h, _)| h),
    }
}

/// Only the port of a listen address is rewritten: an address that only one host has (say
/// 10.10.0.11) would fail on the machine the snippet is pasted on, so it fails here too.
/// Loopback and the unspecified address (0.0.0.0, ::) work anywhere.
pub fn assert_pasteable_host(origin: &str, spec: &str, host: &str) {
    let ok = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified());
    assert!(
        ok,
        "{origin}: `{spec}` binds {host}, an address of one host: pasted anywhere else it cannot start"
    );
}

/// `url` with its host and port replaced by a closed loopback port (password, db kept).
pub fn loopback_redis(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    if scheme.contains("unix") {
        return url.to_string();
    }
    let (auth, hostpart) = match rest.rfind('@') {
        Some(at) => (&rest[..=at], &rest[at + 1..]),
        None => ("", rest),
    };
    let path = hostpart.find('/').map_or("", |i| &hostpart[i..]);
    format!("{scheme}://{auth}127.0.0.1:{}{path}", free_port())
}

/// Merges `fragment` into `base` (the fragment's keys win; sections merge key by key).
pub fn merge(base: &mut toml::Table, fragment: toml::Table) {
    for (k, v) in fragment {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(f)) => merge(b, f),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// check-config must pass, then `run` must answer the option negotiation on every listener.
pub fn check_and_start(origin: &str, mut config: toml::Table, bed: &Bed) {
    let endpoints = make_test_safe(origin, &mut config, bed);
    let path = bed.path("milter.toml");
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    let p = path.to_str().unwrap();
    let (code, out, err) = mxsentry(&["check-config", "--config", p]);
    assert_eq!(
        code, 0,
        "{origin}: check-config refused it:\n{err}{out}\n(test-safe copy: {p})"
    );
    assert!(out.contains(": OK"), "{origin}: {out}");

    let log_path = bed.path("run.log");
    let mut child = Command::new(BIN)
        .args(["run", "--config", p])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    for endpoint in &endpoints {
        let mut client = loop {
            let connected = match endpoint {
                Endpoint::Tcp(port) => std::net::TcpStream::connect(("127.0.0.1", *port))
                    .ok()
                    .map(Client::tcp_stream),
                Endpoint::Unix(path) => std::os::unix::net::UnixStream::connect(path)
                    .ok()
                    .map(|_| Client::unix(path)),
            };
            if let Some(c) = connected {
                break c;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "{origin}: run exited with {status} instead of listening:\n{}",
                    log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{origin}: run did not listen:\n{}",
                log()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            matches!(client.negotiate(), Reply::OptNeg { .. }),
            "{origin}: no option negotiation:\n{}",
            log()
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The smallest configuration a fragment is merged into (everything else: defaults).
pub fn minimal_config() -> toml::Table {
    toml::Table::new()
}

/// milter.toml with its "#key = ..." settings and "#[table]" headers enabled, as its header
/// invites ("remove the # to use them").
pub fn uncommented(text: &str) -> String {
    text.lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if !rest.starts_with(' ') && !rest.is_empty() => rest,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn parse_toml(origin: &str, text: &str) -> toml::Table {
    toml::from_str(text).unwrap_or_else(|e| panic!("{origin}: not valid TOML: {e}"))
}
