//! The `sandlink` binary: parses the command line and hands over to the LSP server or a CLI command.

fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    sandlink::cli::main()
}

/// glibc gives each thread that allocates an arena of its own (up to eight per core), and each keeps what was freed
/// in it: the sync's walker, packing and unpacking threads made the server's peak RSS in an initial sync of 50,000
/// files 107 MB with them against 83 MB with two arenas, one per core of the machines it is measured on.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tunable of the allocator; it runs before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
