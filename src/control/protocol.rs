//! The control protocol, pure (no I/O): one JSON object per line each way.
//!
//! A client sends a request line (`{"op":"status"}`), the daemon answers one response line
//! (`{"result":"status",...}` or `{"result":"error","error":"..."}`), and the client may send
//! the next request on the same connection. A request line is at most [`MAX_REQUEST`] bytes:
//! a longer one, or one that is not a known request, gets an error response and the
//! connection is closed (the daemon is never at risk: it reads at most that much).
//!
//! Greylist entries travel as arrays `[key, first_seen, last_seen, passed, blocked, expires]`
//! (Unix seconds; `expires` = 18446744073709551615 for a permanent entry), half the size of
//! objects: an import of a million entries is sent in batches of [`BATCH_BYTES`].

use serde::{Deserialize, Serialize};

use crate::store::Entry;

/// Longest request line the daemon reads, newline included.
pub const MAX_REQUEST: usize = 4 << 20;

/// A client fills a `put` request up to about this many bytes (well under [`MAX_REQUEST`]).
pub const BATCH_BYTES: usize = 1 << 20;

/// Most entries one `list` answers (about 200 MB of JSON): the daemon's memory stays bounded
/// whatever `--limit` an admin gives.
pub const MAX_LIST: usize = 1_000_000;

/// Longest response line a client reads (a `list` of every entry of a large store).
pub const MAX_RESPONSE: usize = 1 << 30;

/// One request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// The daemon's state ([`Status`]).
    Status,
    /// Re-read the configuration and rule files the daemon was started with (as SIGHUP).
    Reload,
    /// Entries whose key starts with `prefix`, at most `limit`.
    List { prefix: String, limit: usize },
    /// One entry.
    Get { key: String },
    /// Write these entries (as they are: the client skips expired ones).
    Put { entries: Vec<WireEntry> },
    /// Remove one entry.
    Delete { key: String },
    /// Remove expired entries now.
    Purge,
    /// Make everything written so far durable.
    Flush,
}

impl Request {
    /// The `op` label of `mxsentry_control_requests_total`.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Reload => "reload",
            Request::List { .. } => "list",
            Request::Get { .. } => "get",
            Request::Put { .. } => "put",
            Request::Delete { .. } => "delete",
            Request::Purge => "purge",
            Request::Flush => "flush",
        }
    }
}

/// One response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// The request failed; the daemon goes on.
    Error {
        error: String,
    },
    Status(Box<Status>),
    /// The reload succeeded: what was loaded.
    Reloaded {
        message: String,
    },
    Entries {
        entries: Vec<WireEntry>,
    },
    Entry {
        entry: Option<WireEntry>,
    },
    Written {
        count: u64,
    },
    Deleted {
        existed: bool,
    },
    Purged {
        count: u64,
    },
    Flushed,
}

impl Response {
    pub fn error(e: impl std::fmt::Display) -> Response {
        Response::Error {
            error: e.to_string(),
        }
    }
}

/// A greylist entry on the wire: `[key, first_seen, last_seen, passed, blocked, expires]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireEntry(pub String, pub u64, pub u64, pub u32, pub u32, pub u64);

impl WireEntry {
    pub fn new(key: &str, e: &Entry) -> WireEntry {
        WireEntry(
            key.to_owned(),
            e.first_seen,
            e.last_seen,
            e.passed,
            e.blocked,
            e.expires,
        )
    }

    pub fn into_parts(self) -> (String, Entry) {
        let WireEntry(key, first_seen, last_seen, passed, blocked, expires) = self;
        (
            key,
            Entry {
                first_seen,
                last_seen,
                passed,
                blocked,
                expires,
            },
        )
    }

    /// About how many bytes the entry takes in a request (for batching).
    pub fn approx_len(key: &str) -> usize {
        key.len() + 72
    }
}

/// What `mxsentry status` shows. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub started_at: u64,
    /// The daemon's clock when it answered (uptime = now - started_at).
    pub now: u64,
    /// The configuration file the daemon runs with (and reloads).
    pub config_file: String,
    /// When the configuration in force was loaded (start or last successful reload).
    pub config_loaded_at: u64,
    pub last_reload: Option<ReloadStatus>,
    /// MTA connections being served.
    pub connections_open: i64,
    /// `None`: greylisting is off, no store is open.
    pub store: Option<StoreStatus>,
    /// DNSBL zone health, once the daemon tracks it; `None`: this daemon does not.
    #[serde(default)]
    pub dnsbl_zones: Option<Vec<ZoneHealth>>,
    /// The `[shadow]` candidate, when one is configured.
    #[serde(default)]
    pub shadow: Option<ShadowStatus>,
}

/// The shadow policy: its file, and recipients decided by both policies since the start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowStatus {
    pub config: String,
    pub decided: u64,
    /// Recipients the shadow gave another verdict than the live policy.
    pub disagreed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadStatus {
    pub at: u64,
    pub ok: bool,
    /// What was loaded, or the error (`file:line: reason`).
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStatus {
    /// `embedded` or `redis`.
    pub kind: String,
    /// The file, or the Redis server without its password.
    pub location: String,
    /// Entries (embedded: committed ones), or why they could not be counted.
    pub entries: Result<u64, String>,
    /// Last successful commit, where the store commits by itself (embedded).
    pub last_commit: Option<u64>,
    /// The last commit's error, when it failed.
    pub commit_error: Option<String>,
}

/// One DNSBL zone's health (RFC 5782 probes); filled by the zone health checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneHealth {
    pub zone: String,
    pub healthy: bool,
    /// Since when it is in this state.
    pub since: Option<u64>,
    /// Why it is unhealthy.
    pub reason: Option<String>,
    /// `health_check = "off"`: trusted without probes (absent from older daemons).
    #[serde(default)]
    pub probe_off: bool,
}

/// A request line: the JSON and a newline.
pub fn encode_request(r: &Request) -> Vec<u8> {
    line(r)
}

/// A response line: the JSON and a newline.
pub fn encode_response(r: &Response) -> Vec<u8> {
    line(r)
}

fn line<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing these types cannot fail (string keys, no maps with other keys).
    let mut out = serde_json::to_vec(v).unwrap_or_else(|e| {
        format!(r#"{{"result":"error","error":"cannot encode: {e}"}}"#).into_bytes()
    });
    out.push(b'\n');
    out
}

/// Decodes a request line (without its newline).
pub fn decode_request(line: &[u8]) -> Result<Request, String> {
    serde_json::from_slice(line).map_err(|e| format!("malformed request: {e}"))
}

/// Decodes a response line (without its newline).
pub fn decode_response(line: &[u8]) -> Result<Response, String> {
    serde_json::from_slice(line).map_err(|e| format!("malformed response from the daemon: {e}"))
}

/// What the bytes read so far hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// A whole line: its length without the newline (`len + 1` bytes to consume).
    Line(usize),
    /// No newline yet, and room for more.
    Incomplete,
    /// No newline within `max` bytes.
    TooLong,
}

/// Finds the first line in `buf`, allowing `max` bytes for it (newline included). The first
/// `scanned` bytes are known to hold no newline (checked by an earlier call): a long line
/// read in many pieces is scanned once, not once per piece.
pub fn check_line(buf: &[u8], scanned: usize, max: usize) -> Frame {
    let end = buf.len().min(max);
    let start = scanned.min(end);
    match buf[start..end].iter().position(|&b| b == b'\n') {
        Some(n) => Frame::Line(start + n),
        None if buf.len() >= max => Frame::TooLong,
        None => Frame::Incomplete,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_one_line() {
        let reqs = [
            Request::Status,
            Request::Reload,
            Request::List {
                prefix: "t:".into(),
                limit: 10,
            },
            Request::Get { key: "c:x".into() },
            Request::Put {
                entries: vec![WireEntry("t:a|b|c".into(), 1, 2, 3, 4, Entry::PERMANENT)],
            },
            Request::Delete { key: "t:a".into() },
            Request::Purge,
            Request::Flush,
        ];
        for r in reqs {
            let bytes = encode_request(&r);
            assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 1);
            assert_eq!(*bytes.last().unwrap(), b'\n');
            assert_eq!(decode_request(&bytes[..bytes.len() - 1]).unwrap(), r);
        }
        assert_eq!(
            String::from_utf8(encode_request(&Request::Status)).unwrap(),
            "{\"op\":\"status\"}\n"
        );
    }

    #[test]
    fn permanent_expiry_survives_json() {
        let e = Entry {
            first_seen: 1,
            last_seen: 2,
            passed: 1,
            blocked: 0,
            expires: Entry::PERMANENT,
        };
        let r = Response::Entries {
            entries: vec![WireEntry::new("k", &e)],
        };
        let bytes = encode_response(&r);
        let Response::Entries { entries } = decode_response(&bytes[..bytes.len() - 1]).unwrap()
        else {
            panic!("not entries");
        };
        let (k, back) = entries[0].clone().into_parts();
        assert_eq!((k.as_str(), back), ("k", e));
        assert!(back.is_permanent());
    }

    #[test]
    fn bad_requests_are_errors_not_panics() {
        for bad in [
            &b""[..],
            b"{",
            b"null",
            b"{\"op\":\"shutdown\"}",
            b"{\"op\":\"list\"}",
            b"{\"op\":\"put\",\"entries\":[[\"k\",1]]}",
            b"\xff\xfe",
        ] {
            let e = decode_request(bad).expect_err("refused");
            assert!(e.starts_with("malformed request"), "{e}");
        }
    }

    #[test]
    fn lines_are_bounded() {
        assert_eq!(check_line(b"abc\nrest", 0, 10), Frame::Line(3));
        assert_eq!(check_line(b"abc", 0, 10), Frame::Incomplete);
        assert_eq!(check_line(b"abcdefghij", 0, 10), Frame::TooLong);
        assert_eq!(check_line(b"abcdefghi\n", 0, 10), Frame::Line(9));
        assert_eq!(check_line(b"abcdefghijk\n", 0, 10), Frame::TooLong);
        assert_eq!(check_line(b"", 0, 10), Frame::Incomplete);
        // resuming after bytes already scanned finds the same line
        assert_eq!(check_line(b"abcdef\ng", 3, 10), Frame::Line(6));
        assert_eq!(check_line(b"abcdef", 6, 10), Frame::Incomplete);
        assert_eq!(check_line(b"ab", 5, 10), Frame::Incomplete);
        assert_eq!(check_line(b"abcdefghij\n", 9, 10), Frame::TooLong);
    }

    #[test]
    fn status_with_errors_round_trips() {
        let s = Status {
            version: "0.1.0".into(),
            pid: 7,
            started_at: 100,
            now: 160,
            config_file: "/etc/mxsentry/milter.toml".into(),
            config_loaded_at: 150,
            last_reload: Some(ReloadStatus {
                at: 150,
                ok: false,
                message: "/etc/mxsentry/access:3: bad".into(),
            }),
            connections_open: 2,
            store: Some(StoreStatus {
                kind: "embedded".into(),
                location: "/var/lib/mxsentry/greylist.db".into(),
                entries: Err("disk".into()),
                last_commit: None,
                commit_error: Some("full".into()),
            }),
            dnsbl_zones: None,
            shadow: Some(ShadowStatus {
                config: "/etc/mxsentry/candidate.toml".into(),
                decided: 10,
                disagreed: 3,
            }),
        };
        let r = Response::Status(Box::new(s));
        let bytes = encode_response(&r);
        assert_eq!(decode_response(&bytes[..bytes.len() - 1]).unwrap(), r);
    }
}
