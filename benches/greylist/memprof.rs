//! Where the bench process's memory is (issue 15 item 2: RSS ≤ 200 MB at 10M): RSS split into
//! anonymous pages (the heap: the store, and the bench's own few MB) and file-backed ones (the
//! binary and libraries; fjall reads its tables with `pread`, nothing is mapped), from
//! `/proc/self/smaps_rollup`, and the highest RSS since the previous report (sampled every
//! 100 ms), so that a peak is put down to the phase it happened in.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Highest RSS (KiB) sampled since the last [`report`].
static PEAK_KB: AtomicU64 = AtomicU64::new(0);

fn status_kb(field: &str) -> u64 {
    super::status_kb("self", field).unwrap_or(0)
}

/// Starts the sampling thread (once, at the start of the bench).
pub fn start_sampler() {
    std::thread::spawn(|| loop {
        PEAK_KB.fetch_max(status_kb("VmRSS:"), Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(100));
    });
}

/// One line: RSS, anonymous and file-backed, and the highest RSS since the last report, in MB.
pub fn report(label: &str) {
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    let mb = |field: &str| {
        rollup
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    let peak = PEAK_KB.swap(0, Ordering::Relaxed) as f64 / 1024.0;
    println!(
        "memory {label}: RSS {:.0} MB (anonymous {:.0}, file {:.0}); highest since the last \
         report {peak:.0} MB",
        mb("Rss:"),
        mb("Anonymous:"),
        mb("Rss:") - mb("Anonymous:"),
    );
    super::threadcpu::report(label);
}
