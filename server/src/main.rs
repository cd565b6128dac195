//! The `cffs-server` binary: `meta` runs one metadata replica; `dev` runs a three-replica
//! cluster on loopback as three child processes, for a first try and for development.

#[cfg(not(madsim))]
mod cli;

#[cfg(not(madsim))]
fn main() -> std::process::ExitCode {
    cli::main()
}

#[cfg(madsim)]
fn main() {
    eprintln!("cffs-server is not built for the simulator; run the sim-tests instead");
}
