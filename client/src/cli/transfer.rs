//! `cffs put` and `cffs get`: stream a file between the local machine and CFFS, in one
//! transaction, with memory bounded by blocks in flight (`file_data.rs`). A progress bar is
//! drawn on a terminal; the size and throughput are printed at the end unless `--quiet`.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use super::{fail, Failure};
use crate::{Client, FsError, Outcome};

/// How many times a `put` from a file is re-run when it conflicts with a concurrent change
/// of the same file (standard input cannot be read twice: it is not re-run).
const PUT_ATTEMPTS_MAX: u32 = 5;

fn progress_bar(total: Option<u64>, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    match total {
        Some(total) => ProgressBar::new(total).with_style(
            ProgressStyle::with_template("{bytes}/{total_bytes} [{bar:40}] {bytes_per_sec}, {eta} left")
                .expect("a valid template")
                .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner()
            .with_style(ProgressStyle::with_template("{bytes} {bytes_per_sec}").expect("a valid template")),
    }
}

fn human(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.2} {}", UNITS[unit])
}

fn summary(verb: &str, bytes: u64, started: Instant, quiet: bool) {
    if quiet {
        return;
    }
    let seconds = started.elapsed().as_secs_f64().max(1e-6);
    eprintln!("{verb} {} ({bytes} bytes) in {seconds:.2} s: {}/s", human(bytes as f64), human(bytes as f64 / seconds));
}

/// Streams `local` (`-`: standard input) into the CFFS file `remote`, replacing it.
pub async fn put(client: &Client, local: &Path, remote: &str, quiet: bool) -> Result<(), Failure> {
    let started = Instant::now();
    let from_stdin = local.as_os_str() == "-";
    let total = match from_stdin {
        true => None,
        false => Some(
            std::fs::metadata(local).map_err(|e| Failure(format!("cannot read '{}': {e}", local.display())))?.len(),
        ),
    };
    let bar = progress_bar(total, quiet);
    for _ in 0..PUT_ATTEMPTS_MAX {
        bar.set_position(0);
        let txn = client.begin();
        let mut progress = |done: u64| bar.set_position(done);
        let written = match from_stdin {
            true => txn.write_stream(remote, tokio::io::stdin(), &mut progress).await,
            false => {
                let file = tokio::fs::File::open(local)
                    .await
                    .map_err(|e| Failure(format!("cannot read '{}': {e}", local.display())))?;
                txn.write_stream(remote, file, &mut progress).await
            }
        };
        let size = written.map_err(|e| fail("write", remote, e))?;
        match txn.commit().await {
            Ok(Outcome::Committed { .. }) => {
                bar.finish_and_clear();
                summary("put", size, started, quiet);
                return Ok(());
            }
            Ok(Outcome::Conflict { .. }) | Err(FsError::BlockMissing(_)) if !from_stdin => continue,
            Ok(Outcome::Conflict { key }) => {
                return Err(fail(
                    "write",
                    remote,
                    FsError::Busy(format!("a concurrent change of {key}; standard input cannot be read again")),
                ))
            }
            Err(error) => return Err(fail("write", remote, error)),
        }
    }
    Err(fail("write", remote, FsError::Busy(format!("still conflicting after {PUT_ATTEMPTS_MAX} attempts"))))
}

/// Streams the CFFS file `remote` into `local` (`-`: standard output).
pub async fn get(client: &Client, remote: &str, local: &Path, quiet: bool) -> Result<(), Failure> {
    let started = Instant::now();
    let to_stdout = local.as_os_str() == "-";
    let total = {
        let txn = client.begin();
        txn.stat(remote).await.map_err(|e| fail("read", remote, e))?.size
    };
    let bar = progress_bar(Some(total), quiet);
    let mut progress = |done: u64| bar.set_position(done);
    // A read-only transaction: the commit checks that the file did not change while it was
    // read (a torn read would conflict and be reported, never written out as the file).
    let txn = client.begin();
    let size = match to_stdout {
        true => txn.read_stream(remote, tokio::io::stdout(), &mut progress).await,
        false => {
            let file = tokio::fs::File::create(local)
                .await
                .map_err(|e| Failure(format!("cannot write '{}': {e}", local.display())))?;
            txn.read_stream(remote, file, &mut progress).await
        }
    }
    .map_err(|e| fail("read", remote, e))?;
    match txn.commit().await.map_err(|e| fail("read", remote, e))? {
        Outcome::Committed { .. } => {}
        Outcome::Conflict { .. } => {
            return Err(fail("read", remote, FsError::Busy("the file changed while it was read; run get again".into())))
        }
    }
    bar.finish_and_clear();
    summary("got", size, started, quiet);
    Ok(())
}
