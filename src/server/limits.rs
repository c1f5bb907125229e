//! The process's open file limit, and the connection limits fitted inside it.
//!
//! Every MTA connection is a descriptor. If `max_connections` did not fit in RLIMIT_NOFILE,
//! accept would fail with EMFILE under load and the MTA would be left waiting — the hang the
//! connection limit exists to prevent. So at start the soft limit is raised to the hard limit
//! (systemd's default soft limit is 1024, far below the default of 10,000 connections), and
//! if the connections, their overflow handlers and the descriptors the daemon needs for
//! itself still do not fit, `max_connections` is lowered, with a warning.

/// Descriptors for everything but MTA connections, besides DNS and metrics: stdio, the
/// listeners, the runtime's epoll and wake-up descriptors, the greylist store, a Redis
/// connection, the spare descriptor kept for EMFILE, and headroom.
const BASE_FDS: usize = 48;

/// Descriptors kept apart from MTA connections: [`BASE_FDS`], one UDP socket per DNS lookup
/// in flight (`dns.max_concurrent`) and the metrics endpoint's connections.
pub fn reserved_fds(dns_max_concurrent: usize) -> usize {
    BASE_FDS
        .saturating_add(dns_max_concurrent)
        .saturating_add(crate::metrics::http::MAX_CONNECTIONS)
}

/// Most overflow handlers (connections over `max_connections` being answered) at once: an
/// eighth of `max_connections`, at least 16 and at most 1024. Each lives a few milliseconds
/// (the MTA closes after the verdict) and at most a few seconds; beyond this bound an
/// overflow connection is closed unanswered.
pub fn overflow_handlers_for(max_connections: usize) -> usize {
    (max_connections / 8).clamp(16, 1024)
}

/// What fits: `(max_connections, overflow_handlers)` such that both plus `reserved` stay
/// within `limit` open files; the connections get 8/9 of what is left. Never below 1 each.
pub fn fit(
    max_connections: usize,
    overflow_handlers: usize,
    reserved: usize,
    limit: u64,
) -> (usize, usize) {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let wanted = max_connections
        .saturating_add(overflow_handlers)
        .saturating_add(reserved);
    if wanted <= limit {
        return (max_connections, overflow_handlers);
    }
    let left = limit.saturating_sub(reserved);
    let connections = (left / 9 * 8).clamp(1, max_connections);
    let handlers = left.saturating_sub(connections).clamp(1, overflow_handlers);
    (connections, handlers)
}

fn get_nofile() -> std::io::Result<libc::rlimit> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass, which lives for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rl)
}

/// RLIMIT_NOFILE as (soft, hard); `u64::MAX` for unlimited.
pub fn nofile_limit() -> std::io::Result<(u64, u64)> {
    let rl = get_nofile()?;
    Ok((as_u64(rl.rlim_cur), as_u64(rl.rlim_max)))
}

/// Raises RLIMIT_NOFILE's soft limit to its hard limit; returns `(soft before, soft now)`.
/// Also used by tests that hold many connections.
pub fn raise_nofile_limit() -> std::io::Result<(u64, u64)> {
    let mut rl = get_nofile()?;
    let before = as_u64(rl.rlim_cur);
    if rl.rlim_cur == rl.rlim_max {
        return Ok((before, before));
    }
    rl.rlim_cur = rl.rlim_max;
    // SAFETY: setrlimit only reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((before, as_u64(rl.rlim_cur)))
}

#[allow(clippy::unnecessary_cast)] // rlim_t is u64 on 64-bit Linux, not everywhere
fn as_u64(v: libc::rlim_t) -> u64 {
    if v == libc::RLIM_INFINITY {
        u64::MAX
    } else {
        v as u64
    }
}

/// Whether an accept error means the process or the system is out of descriptors.
pub fn is_out_of_fds(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_unchanged_when_there_is_room() {
        assert_eq!(fit(10_000, 1024, 368, 65_536), (10_000, 1024));
        assert_eq!(fit(10_000, 1024, 368, u64::MAX), (10_000, 1024));
        assert_eq!(fit(10_000, 1024, 368, 11_392), (10_000, 1024));
    }

    #[test]
    fn shrinks_to_the_limit() {
        // systemd's default soft limit, had the raise failed.
        let (c, h) = fit(10_000, 1024, 368, 1024);
        assert!(c + h + 368 <= 1024, "{c} {h}");
        assert_eq!((c, h), (576, 80));
        // Nothing left: still one of each (the warning says so).
        assert_eq!(fit(10_000, 1024, 368, 100), (1, 1));
        // Only the handlers are over: connections keep 8/9.
        let (c, h) = fit(100, 1024, 100, 400);
        assert!(c + h + 100 <= 400 && c == 100, "{c} {h}");
    }

    #[test]
    fn overflow_handlers_scale_with_the_limit() {
        assert_eq!(overflow_handlers_for(4), 16);
        assert_eq!(overflow_handlers_for(10_000), 1024);
        assert_eq!(overflow_handlers_for(1000), 125);
    }

    #[test]
    fn the_limit_can_be_read_and_raised() {
        let (soft, hard) = nofile_limit().unwrap();
        assert!(soft <= hard && soft > 0);
        let (_, now) = raise_nofile_limit().unwrap();
        assert_eq!(now, nofile_limit().unwrap().1);
    }
}
