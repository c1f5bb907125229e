//! Bounding glibc malloc's arenas, the largest part of the store's memory after its caches.

/// Arenas glibc malloc may create: 2, unless `MALLOC_ARENA_MAX` is set.
///
/// glibc gives each thread that allocates while another holds an arena a new one, up to 8 per
/// core, and returns little of their free space to the kernel. The store allocates from many
/// threads (sessions, readers, committer, fjall's flush and compaction workers): measured with
/// `cargo bench --bench greylist` at 1M entries, peak RSS 205 MB with the default and 145 MB
/// with 2 arenas, at the same throughput within run-to-run noise (102,514 vs 85,125
/// decisions/s at load 7-9). Call it at the start of the process, before other threads.
pub fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tunable of the allocator; it takes no pointers.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
