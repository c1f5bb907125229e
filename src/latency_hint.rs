//! Scheduling hint for the threads a decision waits on.
//!
//! When the machine is busy (a compaction, a purge, the MTA itself), a thread that a session
//! waits on should run as soon as it wakes instead of queueing behind a long time slice of a
//! background thread. Linux ≥ 6.12 (EEVDF custom slices) lets a thread ask for a short slice
//! with `sched_setattr(sched_runtime)`: it gets an earlier deadline when it wakes, and so
//! preempts a thread running on a longer slice. It does not raise the thread's share of the
//! CPU (its nice value is kept) and needs no privilege. On older kernels the call fails or
//! the field is ignored; nothing else changes.

/// The slice asked for: short, but well above the ~10 µs a decision's work takes.
const SHORT_SLICE_NS: u64 = 200_000;

/// Children do not inherit the setting (linux/sched.h).
const SCHED_FLAG_RESET_ON_FORK: u64 = 0x01;

/// The kernel's `struct sched_attr` (SCHED_ATTR_SIZE_VER1).
#[repr(C)]
struct SchedAttr {
    size: u32,
    sched_policy: u32,
    sched_flags: u64,
    sched_nice: i32,
    sched_priority: u32,
    sched_runtime: u64,
    sched_deadline: u64,
    sched_period: u64,
    sched_util_min: u32,
    sched_util_max: u32,
}

/// Asks the kernel for a short time slice for the calling thread (see the module
/// documentation). Returns whether the kernel accepted it.
pub fn request_short_slice() -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and getpriority have no memory arguments.
        let tid = unsafe { libc::gettid() };
        // getpriority can return -1 legitimately; errno tells. Keep the thread's nice value:
        // sched_setattr sets it too, and lowering it would need privilege.
        unsafe { *libc::__errno_location() = 0 };
        let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) };
        if nice == -1 && std::io::Error::last_os_error().raw_os_error() != Some(0) {
            return false;
        }
        let attr = SchedAttr {
            size: std::mem::size_of::<SchedAttr>() as u32,
            sched_policy: libc::SCHED_OTHER as u32,
            // Threads this one starts (a store's background workers) get the default slice.
            sched_flags: SCHED_FLAG_RESET_ON_FORK,
            sched_nice: nice,
            sched_priority: 0,
            sched_runtime: SHORT_SLICE_NS,
            sched_deadline: 0,
            sched_period: 0,
            sched_util_min: 0,
            sched_util_max: 0,
        };
        // SAFETY: `attr` is a valid sched_attr of the size it declares, alive for the call.
        let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
        rc == 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel keeps the slice we asked for (where it supports custom slices) and the
    /// thread's nice value is unchanged.
    #[test]
    fn the_short_slice_is_applied_and_the_nice_value_kept() {
        std::thread::spawn(|| {
            let tid = unsafe { libc::gettid() };
            unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 3) };
            let accepted = request_short_slice();
            let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) };
            assert_eq!(nice, 3, "the nice value must be kept");
            if accepted {
                let sched =
                    std::fs::read_to_string(format!("/proc/self/task/{tid}/sched")).unwrap();
                let slice = sched
                    .lines()
                    .find(|l| l.starts_with("se.slice"))
                    .map(|l| l.to_string());
                if let Some(line) = slice {
                    let ns: f64 = line.split(':').nth(1).unwrap().trim().parse().unwrap();
                    // /proc shows milliseconds with 6 decimals.
                    assert!((ns - 0.2).abs() < 1e-6, "{line}");
                }
            }
        })
        .join()
        .unwrap();
    }
}
