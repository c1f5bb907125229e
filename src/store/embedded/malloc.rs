//! The allocator settings that keep the store's memory small: jemalloc's, and glibc malloc's
//! arenas for what C code still allocates there.
//!
//! The daemon (src/main.rs) and the bench allocate with jemalloc (`tikv-jemallocator`). Under
//! glibc malloc the store's memory was mostly free memory malloc kept: fjall's memtables are
//! millions of small allocations freed at once when a memtable is flushed, between blocks that
//! stay (cached blocks, pinned filters, the overlay), and glibc returns only the top of a heap
//! to the kernel. Measured with `cargo bench --bench greylist` at 10M entries after churn:
//! RSS 348 MB with 168 MB in use (`mallinfo2`); `malloc_trim(0)` brought it to 191 MB but took
//! 135 ms with the arenas locked, too long to run while sessions allocate. With jemalloc and
//! [`JEMALLOC_CONF`]: RSS 137-147 MB at the same point (docs/performance.md). What remains
//! above 200 MB while writes pour in (peaks of 230-320 MB during the bench's bulk writes) is
//! memory in use: memtables waiting for their flush and the overlay.

/// jemalloc's settings, read before `main` through the `malloc_conf` symbol that src/main.rs
/// and the bench export (`_rjem_malloc_conf`, the prefixed name `tikv-jemalloc-sys` uses):
/// * `background_thread:true`: one jemalloc thread gives free pages back to the kernel, so no
///   allocating session pays for it;
/// * `dirty_decay_ms:1000`: freed pages go back after about a second (default 10 s: a freed
///   memtable would stay in the RSS 10 s longer);
/// * `muzzy_decay_ms:0`: returned with `MADV_DONTNEED` at once (RSS drops), not lazily.
///
/// The `_RJEM_MALLOC_CONF` environment variable overrides them (jemalloc's `MALLOC_CONF`).
pub const JEMALLOC_CONF: &[u8; 60] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// Arenas glibc malloc may create: 2, unless `MALLOC_ARENA_MAX` is set.
///
/// Only what C code allocates with glibc malloc remains there (the Rust code allocates with
/// jemalloc). glibc gives each thread that allocates while another holds an arena a new one,
/// up to 8 per core, and returns little of their free space to the kernel; with glibc as the
/// Rust allocator (before jemalloc) `cargo bench --bench greylist` at 1M entries peaked at
/// 205 MB RSS with the default and 145 MB with 2 arenas. Call it at the start of the process,
/// before other threads.
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
