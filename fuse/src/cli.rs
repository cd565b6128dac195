//! `cffs mount` and `cffs run`, as the client crate's command line calls them.

use std::process::ExitCode;
use std::time::Duration;

use cffs_client::cli::{BenchMountArgs, Extensions, MountArgs, RunArgs};
use cffs_client::Client;

use crate::fs::Scope;
use crate::run::RunOptions;

/// How often `cffs mount` checks whether the kernel ended the session (an external umount).
const UNMOUNT_POLL: Duration = Duration::from_millis(200);

pub struct Commands;

impl Extensions for Commands {
    fn mount(&self, client: Client, runtime: &tokio::runtime::Runtime, args: MountArgs) -> ExitCode {
        let mounted = match crate::mount::mount(
            client,
            runtime.handle().clone(),
            &args.mountpoint,
            Scope::PerOperation,
            args.allow_other,
        ) {
            Ok(mounted) => mounted,
            Err(message) => {
                eprintln!("cffs mount: {message}");
                return ExitCode::from(1);
            }
        };
        eprintln!(
            "cffs mount: mounted at {} (unmount with `umount {0}`, or stop this with Ctrl-C)",
            args.mountpoint.display()
        );
        let signalled = runtime.block_on(async {
            let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(error) => return Err(format!("cannot watch SIGTERM: {error}")),
            };
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => return Ok(true),
                    _ = terminate.recv() => return Ok(true),
                    _ = tokio::time::sleep(UNMOUNT_POLL) => {
                        if mounted.is_finished() {
                            return Ok(false);
                        }
                    }
                }
            }
        });
        mounted.unmount();
        match signalled {
            Ok(true) => eprintln!("cffs mount: unmounted {}", args.mountpoint.display()),
            Ok(false) => {}
            Err(message) => {
                eprintln!("cffs mount: {message}");
                return ExitCode::from(1);
            }
        }
        ExitCode::SUCCESS
    }

    fn run(&self, client: Client, runtime: &tokio::runtime::Runtime, args: RunArgs) -> ExitCode {
        let options = RunOptions {
            retries: args.retries,
            at: args.at,
            keep_failed_output: args.keep_failed_output,
            command: args.command,
        };
        crate::run::run(client, runtime.handle().clone(), options)
    }

    fn bench_mount(&self, client: Client, runtime: &tokio::runtime::Runtime, args: BenchMountArgs) -> ExitCode {
        match crate::bench::run(client, runtime, &args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("cffs bench-mount: {message}");
                ExitCode::from(1)
            }
        }
    }
}
