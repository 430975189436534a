//! The process's malloc settings.
//!
//! glibc's malloc gives a thread that finds the arenas busy one of its own, up to eight per
//! core, and returns little of their freed memory to the system. The ingest allocates a
//! flush's batches on the consumer thread and frees them on tokio's and DataFusion's, so each
//! arena keeps a high-water mark of its own. In the 5-minute soak of `benches/ingest.rs` (50K
//! events/s) RSS reached 1.45 GiB with the default, 852 MiB with two arenas, and 1.07 GiB with
//! mimalloc instead. An explicit `MALLOC_ARENA_MAX` wins.

/// Limits glibc's malloc to two arenas; call before any thread starts.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a malloc parameter; no other thread allocates yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}
