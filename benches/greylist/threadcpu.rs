//! CPU time per thread group since the previous report, from `/proc/self/task/*/stat`: the
//! store's background work (fjall's workers: flushes and compactions; the committer) against
//! the decision path (the readers, the runtime's workers). A background thread that spins
//! shows here, not in the latency figures: fjall's flush-first worker once held a core
//! handing a compaction request back to itself (vendor/fjall/MXSENTRY-PATCH.md).

use std::collections::HashMap;
use std::sync::Mutex;

/// Per thread id: the CPU ticks already reported.
static SEEN: Mutex<Option<HashMap<u32, u64>>> = Mutex::new(None);

/// The group a thread's name belongs to ("greylist-read1" → "greylist-read").
fn group(comm: &str) -> String {
    comm.trim_end_matches(|c: char| c.is_ascii_digit())
        .to_string()
}

/// One line: CPU seconds per thread group since the last call.
pub fn report(label: &str) {
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut seen = SEEN.lock().unwrap();
    let seen = seen.get_or_insert_with(HashMap::new);
    let mut by_group: HashMap<String, u64> = HashMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    for task in tasks.flatten() {
        let Ok(tid) = task.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // "tid (comm) state ...": the name may hold spaces, so split at the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat, 12 and 13 after "state".
        let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
            + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
        let before = seen.insert(tid, ticks).unwrap_or(0);
        *by_group.entry(group(comm)).or_default() += ticks.saturating_sub(before);
    }
    let mut groups: Vec<_> = by_group.into_iter().filter(|(_, t)| *t > 0).collect();
    groups.sort_by_key(|g| std::cmp::Reverse(g.1));
    let parts: Vec<String> = groups
        .iter()
        .map(|(g, t)| format!("{g} {:.1}", *t as f64 / ticks_per_s))
        .collect();
    println!("cpu s {label}: {}", parts.join(", "));
}
