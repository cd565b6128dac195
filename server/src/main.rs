//! The `cffs-server` binary: `meta` runs one metadata replica; `dev` runs a three-replica
//! cluster on loopback as three child processes, for a first try and for development.

#[cfg(not(madsim))]
mod cli;

/// mimalloc, not glibc's malloc: a block arrives as one 4 MiB message, and glibc serves an
/// allocation that large with a fresh mmap and returns it with munmap, so every block
/// page-faulted its buffers in anew (10 % of all CPU during a three-replica put, with the
/// kernel zeroing each page). mimalloc keeps freed memory for the next block.
#[cfg(not(madsim))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(not(madsim))]
fn main() -> std::process::ExitCode {
    cli::main()
}

#[cfg(madsim)]
fn main() {
    eprintln!("cffs-server is not built for the simulator; run the sim-tests instead");
}
