//! The `cffs` command line (see `cffs --help`).

#[cfg(not(madsim))]
fn main() -> std::process::ExitCode {
    cffs_client::cli::main()
}

#[cfg(madsim)]
fn main() {
    eprintln!("cffs is not built for the simulator");
}
