//! `cffs run`: one command as one function invocation. The command sees CFFS through a
//! private mount (at `/cffs` unless `--at`), in a mount namespace of its own, in which all
//! its reads and writes form one transaction: committed when the command exits 0, dropped
//! otherwise, and on a conflict the command is run again from the start.
//!
//! The mount namespace comes from util-linux's `unshare --mount --propagation private`,
//! which re-runs this binary inside it: the mount is seen by the command and its children
//! only, and vanishes with the namespace. Output of attempts that are re-run is discarded
//! unless `--keep-failed-output` (then it streams as the command writes it).

use std::ffi::OsString;
use std::io::{Seek, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use cffs_client::{Client, Outcome};
use tokio::runtime::Handle;

use crate::fs::Scope;

/// Set in the environment of the re-run inside the new mount namespace.
const INSIDE_ENV: &str = "CFFS_RUN_NAMESPACE";
/// Exit status when the attempts ran out on conflicts (sysexits' EX_TEMPFAIL).
pub const EXIT_CONFLICTS: u8 = 75;
/// Exit status when the run could not be set up, or its commit failed.
pub const EXIT_SETUP: u8 = 70;

/// What `cffs run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Re-runs allowed after the first attempt conflicts.
    pub retries: u32,
    pub at: PathBuf,
    pub keep_failed_output: bool,
    pub command: Vec<OsString>,
}

/// Enters a private mount namespace by re-running this binary under `unshare`; returns only
/// when already inside one (or on failure, with why).
fn enter_namespace() -> Result<(), String> {
    if std::env::var_os(INSIDE_ENV).is_some() {
        return Ok(());
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let error = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--"])
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env(INSIDE_ENV, "1")
        .exec();
    Err(format!("cannot run unshare (util-linux) for a private mount namespace: {error}"))
}

/// An attempt's output, held until it is known whether the attempt counts.
struct Captured {
    stdout: std::fs::File,
    stderr: std::fs::File,
}

impl Captured {
    fn new() -> std::io::Result<Captured> {
        Ok(Captured { stdout: tempfile::tempfile()?, stderr: tempfile::tempfile()? })
    }

    fn replay(mut self) -> std::io::Result<()> {
        self.stdout.rewind()?;
        std::io::copy(&mut self.stdout, &mut std::io::stdout().lock())?;
        std::io::stdout().flush()?;
        self.stderr.rewind()?;
        std::io::copy(&mut self.stderr, &mut std::io::stderr().lock())?;
        Ok(())
    }
}

/// Runs `options.command` as one transaction; the exit status is the command's, or
/// `EXIT_CONFLICTS` / `EXIT_SETUP`.
pub fn run(client: Client, runtime: Handle, options: RunOptions) -> ExitCode {
    match run_inner(client, runtime, &options) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("cffs run: {message}");
            ExitCode::from(EXIT_SETUP)
        }
    }
}

fn run_inner(client: Client, runtime: Handle, options: &RunOptions) -> Result<ExitCode, String> {
    let Some((program, args)) = options.command.split_first() else {
        return Err("no command given (cffs run [OPTIONS] -- COMMAND [ARGS...])".into());
    };
    enter_namespace()?;
    make_mountpoint(&options.at)?;
    let mounted = crate::mount::mount(client, runtime, &options.at, Scope::OneTransaction, false)?;
    let mut last_conflict = String::new();
    for attempt in 0..=options.retries {
        mounted.begin_attempt();
        let mut command = Command::new(program);
        command.args(args).stdin(Stdio::inherit());
        let captured = match options.keep_failed_output {
            true => None,
            false => {
                let captured = Captured::new().map_err(|e| format!("cannot hold the command's output: {e}"))?;
                let (out, err) = (
                    captured.stdout.try_clone().map_err(|e| e.to_string())?,
                    captured.stderr.try_clone().map_err(|e| e.to_string())?,
                );
                command.stdout(out).stderr(err);
                Some(captured)
            }
        };
        let status = command.status().map_err(|e| format!("cannot run {}: {e}", program.to_string_lossy()))?;
        if !status.success() {
            // Discarded: nothing the command did to the file system stays.
            drop(mounted);
            if let Some(captured) = captured {
                captured.replay().map_err(|e| format!("cannot copy the command's output: {e}"))?;
            }
            let code =
                status.code().unwrap_or(128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0));
            return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
        }
        match mounted.commit_attempt() {
            Ok(Outcome::Committed { .. }) => {
                drop(mounted);
                if let Some(captured) = captured {
                    captured.replay().map_err(|e| format!("cannot copy the command's output: {e}"))?;
                }
                return Ok(ExitCode::SUCCESS);
            }
            Ok(Outcome::Conflict { key }) => {
                tracing::info!(attempt, %key, "the command's reads went stale: running it again");
                last_conflict = key;
            }
            Err(error) => {
                return Err(format!("the commit failed, nothing was applied or its outcome is unknown: {error}"))
            }
        }
    }
    drop(mounted);
    eprintln!(
        "cffs run: {} attempts conflicted (the last on {last_conflict}); nothing was applied",
        options.retries + 1
    );
    Ok(ExitCode::from(EXIT_CONFLICTS))
}

/// The mount directory, created when missing (it is only a mount point: nothing is
/// written in it outside the namespace).
fn make_mountpoint(at: &Path) -> Result<(), String> {
    if !at.is_absolute() {
        return Err(format!("--at {}: give an absolute path", at.display()));
    }
    std::fs::create_dir_all(at).map_err(|e| format!("cannot create the mount point {}: {e}", at.display()))
}
