//! Binding the `milter.listen` sockets: inet, inet6 and unix (stale socket removed, mode and
//! owner applied).

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use tokio::net::{TcpListener, UnixListener};

use crate::config::{ListenSpec, MilterConfig};

/// A bound listening socket.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, std::path::PathBuf),
}

/// Listening sockets passed by systemd socket activation (`LISTEN_FDS`/`LISTEN_PID`, fds from 3
/// on), if this process is their recipient. They replace `milter.listen`.
pub fn from_systemd() -> Result<Option<Vec<Listener>>, String> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let (Ok(pid), Ok(count)) = (std::env::var("LISTEN_PID"), std::env::var("LISTEN_FDS")) else {
        return Ok(None);
    };
    if pid.trim() != std::process::id().to_string() {
        return Ok(None);
    }
    let count: i32 = count
        .trim()
        .parse()
        .map_err(|_| format!("bad LISTEN_FDS `{count}`"))?;
    // The fds must not leak into anything we might start later.
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_FDNAMES");
    let mut out = Vec::new();
    for fd in 3..3 + count {
        // Taking over a closed fd would abort at drop (I/O safety): check it first.
        if !Path::new(&format!("/proc/self/fd/{fd}")).exists() {
            return Err(format!(
                "LISTEN_FDS says fd {fd} is passed, but it is not open"
            ));
        }
        // SAFETY: systemd hands these fds to this process (LISTEN_PID checked above); each is
        // taken over exactly once.
        let tcp = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        if let Ok(addr) = tcp.local_addr() {
            tcp.set_nonblocking(true)
                .map_err(|e| format!("socket-activated fd {fd} ({addr}): {e}"))?;
            let l = TcpListener::from_std(tcp)
                .map_err(|e| format!("socket-activated fd {fd} ({addr}): {e}"))?;
            out.push(Listener::Tcp(l));
            continue;
        }
        let raw = tcp.into_raw_fd();
        // SAFETY: the same fd, now known not to be an inet socket.
        let unix = unsafe { std::os::unix::net::UnixListener::from_raw_fd(raw) };
        let path = unix
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(Path::to_path_buf))
            .ok_or_else(|| {
                format!("socket-activated fd {fd} is neither inet nor a unix path socket")
            })?;
        unix.set_nonblocking(true)
            .map_err(|e| format!("socket-activated fd {fd}: {e}"))?;
        let l =
            UnixListener::from_std(unix).map_err(|e| format!("socket-activated fd {fd}: {e}"))?;
        out.push(Listener::Unix(l, path));
    }
    Ok(Some(out))
}

impl Listener {
    /// The address in milter form, for the startup log line.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| ListenSpec::Inet(a).to_string())
                .unwrap_or_else(|_| "inet:?".into()),
            Listener::Unix(_, p) => format!("unix:{}", p.display()),
        }
    }
}

impl Listener {
    /// Sets TCP_NODELAY on a TCP listener. Linux copies a listener's socket options into every
    /// connection it accepts, so the connections have it from the start: one setsockopt per
    /// listener instead of one per connection. Returns whether accepted connections have it
    /// (false: set it on each one).
    pub fn nodelay_for_accepted(&self) -> bool {
        #[cfg(target_os = "linux")]
        if let Listener::Tcp(l) = self {
            use std::os::fd::AsRawFd;
            let on: libc::c_int = 1;
            // SAFETY: `l` owns a valid socket descriptor for this call; the option value is a
            // c_int that lives across the call, with its size given.
            let rc = unsafe {
                libc::setsockopt(
                    l.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_NODELAY,
                    (&on as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            return rc == 0;
        }
        false
    }
}

/// Binds one listener; errors name the address.
pub async fn bind(spec: &ListenSpec, milter: &MilterConfig) -> Result<Listener, String> {
    match spec {
        ListenSpec::Inet(addr) => TcpListener::bind(addr)
            .await
            .map(Listener::Tcp)
            .map_err(|e| format!("cannot listen on {spec}: {e}")),
        ListenSpec::Unix(path) => {
            remove_stale_socket(path).map_err(|e| format!("cannot listen on {spec}: {e}"))?;
            let listener =
                UnixListener::bind(path).map_err(|e| format!("cannot listen on {spec}: {e}"))?;
            apply_socket_permissions(path, milter)
                .map_err(|e| format!("cannot set permissions of {spec}: {e}"))?;
            Ok(Listener::Unix(listener, path.clone()))
        }
    }
}

/// A socket file left by a crashed daemon is removed; one that still answers is in use.
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process is listening on this socket",
                ));
            }
            std::fs::remove_file(path)
        }
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "path exists and is not a socket",
        )),
    }
}

/// Mode of a unix socket without `socket_mode`: the owner and the group (the MTA's, through
/// `socket_group`) may connect, nobody else, whatever the umask would have given.
pub const DEFAULT_SOCKET_MODE: u32 = 0o660;

fn apply_socket_permissions(path: &Path, milter: &MilterConfig) -> io::Result<()> {
    let mode = milter.socket_mode.unwrap_or(DEFAULT_SOCKET_MODE);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    let uid = match &milter.socket_owner {
        Some(name) => Some(lookup_id("/etc/passwd", name)?),
        None => None,
    };
    let gid = match &milter.socket_group {
        Some(name) => Some(lookup_id("/etc/group", name)?),
        None => None,
    };
    if uid.is_some() || gid.is_some() {
        std::os::unix::fs::chown(path, uid, gid)?;
    }
    Ok(())
}

/// Resolves a user or group name (or a number) from /etc/passwd or /etc/group.
fn lookup_id(file: &str, name: &str) -> io::Result<u32> {
    if let Ok(n) = name.parse() {
        return Ok(n);
    }
    let text = std::fs::read_to_string(file)?;
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            Some((f.next()?, f.nth(1)?))
        })
        .find(|(n, _)| *n == name)
        .and_then(|(_, id)| id.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no such name `{name}` in {file}"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_tcp_connections_have_nodelay_from_the_listener() {
        let spec = ListenSpec::Inet("127.0.0.1:0".parse().unwrap());
        let listener = bind(&spec, &MilterConfig::default()).await.unwrap();
        let Listener::Tcp(l) = &listener else {
            panic!("not a TCP listener")
        };
        let addr = l.local_addr().unwrap();
        let inherited = listener.nodelay_for_accepted();
        assert_eq!(inherited, cfg!(target_os = "linux"));
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = l.accept().await.unwrap();
        // What dispatch relies on when it skips set_nodelay per connection.
        assert_eq!(accepted.nodelay().unwrap(), inherited);
    }
}
