//! The `sandlink` binary: parses the command line and hands over to the LSP server or a CLI command.

fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    sandlink::cli::main()
}

/// Keeps glibc from holding on to freed memory, which the server's peak RSS counts as its own:
/// - each thread that allocates gets an arena of its own (up to eight per core), and each keeps what was freed in it:
///   the sync's walker, packing and unpacking threads made the peak RSS of an initial sync of 50,000 files 107 MB
///   with them against 83 MB with two arenas, one per core of the machines it is measured on;
/// - blocks of 128 KiB and more (archive and read buffers) are mapped on their own and returned when freed, where
///   glibc's default threshold grows with every such block freed until they come from the heap and stay there:
///   57-58 MB against 61-64 MB for that sync, at the same speed (`GLIBC_TUNABLES` runs, paired).
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets tunables of the allocator; it runs before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 * 1024);
    }
}
