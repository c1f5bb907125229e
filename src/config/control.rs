//! `[control]`: the daemon's control socket (live administration: `mxsentry status`,
//! `reload`, `greylist ...` while the daemon holds the store).

use std::path::PathBuf;

use serde::Deserialize;

use super::de::{self, StrParser};

/// The default control socket: in the unit's `RuntimeDirectory=mxsentry`.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/mxsentry/control.sock";

/// Longest unix socket path the kernel takes (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// `[control]`: where the daemon answers the admin commands.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlConfig {
    /// The unix socket (mode 0600, owned by the daemon's user); `"off"` disables it.
    /// Default: `/run/mxsentry/control.sock`.
    #[serde(deserialize_with = "de::one::<_, ControlSocketP>")]
    pub socket: Option<PathBuf>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            socket: Some(PathBuf::from(DEFAULT_CONTROL_SOCKET)),
        }
    }
}

/// `"off"`, or a path a unix socket can be bound at. A relative path is relative to the
/// daemon's working directory, as `greylist.path` is (a development run without root); the
/// admin commands resolve it the same way, so run them from the same directory.
pub(super) struct ControlSocketP;

impl StrParser for ControlSocketP {
    type Out = Option<PathBuf>;
    const EXPECTING: &'static str = "a socket path like \"/run/mxsentry/control.sock\" or \"off\"";
    fn parse(s: &str) -> Result<Option<PathBuf>, String> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        if t.is_empty() {
            return Err(format!(
                "invalid control socket {s:?}: give a path like \
                 \"{DEFAULT_CONTROL_SOCKET}\", or \"off\""
            ));
        }
        if t.ends_with('/') || t == "." || t == ".." || t.ends_with("/.") || t.ends_with("/..") {
            return Err(format!(
                "invalid control socket {s:?}: names a directory, not a socket file"
            ));
        }
        if t.len() > MAX_SOCKET_PATH {
            return Err(format!(
                "invalid control socket {s:?}: {} bytes, a unix socket path has at most \
                 {MAX_SOCKET_PATH}",
                t.len()
            ));
        }
        Ok(Some(PathBuf::from(t)))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::Config;
    use super::*;

    fn parse(text: &str) -> Result<Config, super::super::ConfigError> {
        Config::parse(text, Path::new("/etc/mxsentry/milter.toml"))
    }

    #[test]
    fn default_is_the_runtime_directory_and_off_disables() {
        let c = parse("").unwrap();
        assert_eq!(
            c.control.socket.as_deref(),
            Some(Path::new(DEFAULT_CONTROL_SOCKET))
        );
        let c = parse("[control]\nsocket = \"off\"\n").unwrap();
        assert_eq!(c.control.socket, None);
        // Relative to the working directory, like greylist.path (the repo's milter.toml).
        let c = parse("[control]\nsocket = \"control.sock\"\n").unwrap();
        assert_eq!(c.control.socket.as_deref(), Some(Path::new("control.sock")));
        let c = parse("[control]\nsocket = \"/tmp/x/c.sock\"\n").unwrap();
        assert_eq!(
            c.control.socket.as_deref(),
            Some(Path::new("/tmp/x/c.sock"))
        );
    }

    #[test]
    fn bad_sockets_are_refused_with_file_and_line() {
        for (text, needle) in [
            ("[control]\n\nsocket = \"  \"\n", "give a path"),
            ("[control]\n\nsocket = \"..\"\n", "directory"),
            ("[control]\n\nsocket = \"/run/mxsentry/\"\n", "directory"),
            ("[control]\n\nsocket = 5\n", "socket path"),
            ("[control]\n\nsokcet = \"/x\"\n", "sokcet"),
        ] {
            let e = parse(text).expect_err(text).to_string();
            assert!(e.starts_with("/etc/mxsentry/milter.toml:3: "), "{e}");
            assert!(e.contains(needle), "{e}");
        }
        let long = format!("[control]\n\nsocket = \"/{}\"\n", "a".repeat(120));
        let e = parse(&long).expect_err("too long").to_string();
        assert!(e.starts_with("/etc/mxsentry/milter.toml:3: "), "{e}");
        assert!(e.contains("at most 107"), "{e}");
    }

    #[test]
    fn the_control_socket_cannot_be_a_milter_socket() {
        let e =
            parse("[milter]\nlisten = \"unix:/run/m.sock\"\n[control]\nsocket = \"/run/m.sock\"\n")
                .expect_err("clash")
                .to_string();
        assert!(e.starts_with("/etc/mxsentry/milter.toml:4: "), "{e}");
        assert!(e.contains("milter.listen"), "{e}");
    }
}
