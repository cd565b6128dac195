//! The `cffs` command line (see `cffs --help`): the client crate's commands, and `mount` and
//! `run` from this crate.

#[cfg(not(madsim))]
fn main() -> std::process::ExitCode {
    cffs_client::cli::main(&cffs_fuse::cli::Commands)
}

#[cfg(madsim)]
fn main() {
    eprintln!("cffs is not built for the simulator");
}
