//! The run's report: latency percentiles per stage, rates, CPU per session, text or JSON.

use std::fmt::Write as _;
use std::time::Duration;

use crate::stats::{Stat, Stats, STAT_NAMES};
use crate::{Args, Mta};
use mxsentry::protocol::negotiate::flags;

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// utime + stime of this process (all threads), from /proc (USER_HZ is 100 on Linux).
pub(crate) fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(0.0)
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn protocol_summary(p: u32) -> (String, String) {
    use flags::*;
    let stages = [
        ("connect", SMFIP_NOCONNECT, SMFIP_NR_CONN),
        ("helo", SMFIP_NOHELO, SMFIP_NR_HELO),
        ("mail", SMFIP_NOMAIL, SMFIP_NR_MAIL),
        ("rcpt", SMFIP_NORCPT, SMFIP_NR_RCPT),
        ("data", SMFIP_NODATA, SMFIP_NR_DATA),
        ("header", SMFIP_NOHDRS, SMFIP_NR_HDR),
        ("eoh", SMFIP_NOEOH, SMFIP_NR_EOH),
        ("body", SMFIP_NOBODY, SMFIP_NR_BODY),
    ];
    let sent: Vec<&str> = stages
        .iter()
        .filter(|s| p & s.1 == 0)
        .map(|s| s.0)
        .collect();
    let awaited: Vec<&str> = stages
        .iter()
        .filter(|s| p & s.1 == 0 && p & s.2 == 0)
        .map(|s| s.0)
        .collect();
    (sent.join(","), awaited.join(","))
}

pub(crate) struct Report {
    pub(crate) stats: Stats,
    pub(crate) elapsed: Duration,
    pub(crate) cpu: f64,
    pub(crate) held: Option<(usize, Duration)>,
}

pub(crate) fn print_report(args: &Args, mut r: Report) {
    for v in r.stats.lat_us.iter_mut() {
        v.sort_unstable();
    }
    let s = &r.stats;
    let secs = r.elapsed.as_secs_f64();
    let rate = s.sessions as f64 / secs.max(1e-9);
    let per = |x: u64| x as f64 / (s.sessions.max(1)) as f64;
    let cpu_us_per_session = r.cpu * 1e6 / (s.sessions.max(1)) as f64;
    let protocol = s.protocol.unwrap_or(0);
    let (sent, awaited) = protocol_summary(protocol);
    let summary = |i: usize| {
        let v = &s.lat_us[i];
        (
            v.len(),
            percentile(v, 0.5),
            percentile(v, 0.99),
            percentile(v, 0.999),
            v.last().copied().unwrap_or(0),
        )
    };
    if args.json {
        let mut o = String::new();
        let sess = summary(Stat::Session as usize);
        let _ = write!(
            o,
            "{{\"target\":{},\"mta\":{},\"concurrency\":{},\"sessions\":{},\"errors\":{},\"seconds\":{secs:.3},\"sessions_per_sec\":{rate:.1},\"loadgen_cpu_s\":{:.2},\"loadgen_cpu_us_per_session\":{cpu_us_per_session:.1},\"p50_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{},\"round_trips_per_session\":{:.2},\"writes_per_session\":{:.2},\"protocol\":\"0x{protocol:06x}\",\"stages_sent\":{},\"stages_awaited\":{},\"gap_ms\":{},\"gap_rcpt_ms\":{},\"headers\":{},\"body_bytes\":{},\"rcpts\":{}",
            json_str(&args.target),
            json_str(match args.mta {
                Mta::Postfix => "postfix",
                Mta::Sendmail => "sendmail",
            }),
            args.concurrency,
            s.sessions,
            s.errors,
            r.cpu,
            sess.1,
            sess.2,
            sess.3,
            sess.4,
            per(s.round_trips),
            per(s.writes),
            json_str(&sent),
            json_str(&awaited),
            args.gap_ms,
            args.gap_rcpt_ms,
            args.headers,
            args.body_bytes,
            args.rcpts,
        );
        o.push_str(",\"stages\":{");
        let mut first = true;
        for (i, name) in STAT_NAMES.iter().enumerate() {
            let (n, p50, p99, p999, max) = summary(i);
            if n == 0 {
                continue;
            }
            if !first {
                o.push(',');
            }
            first = false;
            let _ = write!(
                o,
                "\"{name}\":{{\"n\":{n},\"p50_us\":{p50},\"p99_us\":{p99},\"p999_us\":{p999},\"max_us\":{max}}}"
            );
        }
        o.push_str("},\"replies\":{");
        let replies: Vec<String> = s
            .replies
            .iter()
            .map(|(k, v)| format!("{}:{v}", json_str(k)))
            .collect();
        o.push_str(&replies.join(","));
        o.push_str("},\"error_kinds\":{");
        let errs: Vec<String> = s
            .error_kinds
            .iter()
            .map(|(k, v)| format!("{}:{v}", json_str(k)))
            .collect();
        o.push_str(&errs.join(","));
        o.push('}');
        if let Some((held, t)) = r.held {
            let _ = write!(
                o,
                ",\"held\":{held},\"open_seconds\":{:.3}",
                t.as_secs_f64()
            );
        }
        o.push('}');
        say!("{o}");
        return;
    }
    if let Some((held, t)) = r.held {
        say!(
            "held {held} connections ({} errors), opened in {:.2}s; load generator CPU {:.2}s",
            s.errors,
            t.as_secs_f64(),
            r.cpu
        );
    } else {
        say!(
            "{} sessions, {} errors in {secs:.2}s: {rate:.0} sessions/s; load generator CPU {:.2}s ({cpu_us_per_session:.0} us/session)",
            s.sessions, s.errors, r.cpu
        );
    }
    if r.held.is_none() {
        say!(
            "negotiated protocol 0x{protocol:06x}: stages sent [{sent}], awaited [{awaited}]; per session {:.1} round trips, {:.1} writes",
            per(s.round_trips),
            per(s.writes)
        );
    } else {
        say!("negotiated protocol 0x{protocol:06x}: stages sent [{sent}], awaited [{awaited}]");
    }
    say!(
        "{:<16} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "latency",
        "count",
        "p50_us",
        "p99_us",
        "p99.9_us",
        "max_us"
    );
    for (i, name) in STAT_NAMES.iter().enumerate() {
        let (n, p50, p99, p999, max) = summary(i);
        if n > 0 {
            say!("{name:<16} {n:>9} {p50:>9} {p99:>9} {p999:>9} {max:>9}");
        }
    }
    for (k, v) in &s.replies {
        say!("  reply {k}: {v}");
    }
    for (k, v) in &s.error_kinds {
        say!("  error {k}: {v}");
    }
}
