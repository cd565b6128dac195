//! `cffs workload append` (a list-append workload that checks its own results, for chaos
//! runs against a real cluster) and `cffs fsck` (every file read back through its crc
//! checks).
//!
//! The workload: each worker appends unique elements (`worker.seq`, one line each) to one of
//! a few list files under `--dir`, one transaction per append (read the list, write it back
//! longer), and records each append whose commit was acknowledged, and each whose outcome
//! is unknown. At the end it reads every list and checks: every acknowledged element is
//! there exactly once, no element appears that was never attempted, and one worker's
//! acknowledged elements appear in the order it appended them. It prints a line per second
//! (appends acknowledged, errors) and the longest stretch with no acknowledgement, so a
//! chaos script can state how long the service was gone after each fault.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;

use crate::{Client, FsError};

#[derive(Args)]
pub struct AppendArgs {
    /// Concurrent workers (each its own client, as separate functions would be).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    clients: u32,
    /// List files the workers append to (fewer: more conflicts).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    keys: u32,
    /// Directory of the lists (created; a run starts from empty lists of its own run id).
    #[arg(long, default_value = "/chaos")]
    dir: String,
    /// Stop after this many seconds ...
    #[arg(long, default_value_t = 60)]
    duration_secs: u64,
    /// ... or as soon as this local file exists (a chaos script's stop signal).
    #[arg(long)]
    stop_file: Option<PathBuf>,
    /// Pause between one worker's appends, ms (0: as fast as it can).
    #[arg(long, default_value_t = 20)]
    pause_ms: u64,
}

/// What the workers saw, shared.
#[derive(Default)]
struct Record {
    /// (worker, seq) acknowledged, by key, in acknowledgement order per worker.
    acked: BTreeMap<u32, Vec<(u32, u64)>>,
    /// (worker, seq) whose commit outcome is unknown.
    unknown: BTreeSet<(u32, u64)>,
    /// Errors by kind.
    errors: BTreeMap<String, u64>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

pub async fn append(endpoints: &[String], args: AppendArgs) -> Result<(), String> {
    let run_id = format!("{:x}", now_ms());
    let dir = format!("{}/{run_id}", args.dir.trim_end_matches('/'));
    let setup = Client::connect(endpoints).map_err(|e| e.to_string())?;
    let mkdir = dir.clone();
    setup
        .run(|txn| {
            let dir = mkdir.clone();
            async move { txn.mkdir_all(&dir, 0o755).await }
        })
        .await
        .map_err(|e| format!("create {dir}: {e}"))?;
    eprintln!("workload: {} workers appending to {} lists under {dir}", args.clients, args.keys);

    let record = Arc::new(Mutex::new(Record::default()));
    let acked_total = Arc::new(AtomicU64::new(0));
    let last_ack_ms = Arc::new(AtomicU64::new(now_ms()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for worker in 0..args.clients {
        let client = Client::connect(endpoints).map_err(|e| e.to_string())?;
        let (record, acked_total, last_ack_ms, stop) =
            (record.clone(), acked_total.clone(), last_ack_ms.clone(), stop.clone());
        let (dir, keys, pause) = (dir.clone(), args.keys, Duration::from_millis(args.pause_ms));
        workers.push(tokio::spawn(async move {
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let key = ((worker as u64 * 7919 + seq * 104_729) % keys as u64) as u32;
                let path = format!("{dir}/{key}");
                let element = format!("{worker}.{seq}\n");
                let outcome = client
                    .run(|txn| {
                        let (path, element) = (path.clone(), element.clone());
                        async move { txn.append(&path, element.as_bytes()).await }
                    })
                    .await;
                {
                    let mut record = record.lock().expect("record lock");
                    match outcome {
                        Ok(()) => {
                            record.acked.entry(key).or_default().push((worker, seq));
                            acked_total.fetch_add(1, Ordering::Relaxed);
                            last_ack_ms.store(now_ms(), Ordering::Relaxed);
                        }
                        Err(error) => {
                            if matches!(error, FsError::OutcomeUnknown(_)) {
                                record.unknown.insert((worker, seq));
                            }
                            *record.errors.entry(error_kind(&error)).or_default() += 1;
                        }
                    }
                }
                tokio::time::sleep(pause).await;
            }
        }));
    }

    let started = Instant::now();
    let mut longest_stall = Duration::ZERO;
    let mut stall_started_at = 0u64;
    let mut last_print = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let since_ack = Duration::from_millis(now_ms().saturating_sub(last_ack_ms.load(Ordering::Relaxed)));
        if since_ack > longest_stall {
            longest_stall = since_ack;
            stall_started_at = last_ack_ms.load(Ordering::Relaxed);
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            let errors: u64 = record.lock().expect("record lock").errors.values().sum();
            println!(
                "t={} acked={} errors={} since_last_ack_ms={}",
                now_ms(),
                acked_total.load(Ordering::Relaxed),
                errors,
                since_ack.as_millis()
            );
        }
        let stop_asked = args.stop_file.as_ref().is_some_and(|file| file.exists());
        if stop_asked || started.elapsed() >= Duration::from_secs(args.duration_secs) {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let _ = worker.await;
    }

    let record = Arc::try_unwrap(record).map_err(|_| "a worker still holds the record")?.into_inner().expect("lock");
    let reader = Client::connect(endpoints).map_err(|e| e.to_string())?;
    let mut problems = Vec::new();
    let mut checked = 0u64;
    for key in 0..args.keys {
        let path = format!("{dir}/{key}");
        let text = match read_whole(&reader, &path).await {
            Ok(bytes) => String::from_utf8(bytes).map_err(|_| format!("{path} is not text"))?,
            Err(FsError::NotFound) => String::new(),
            Err(error) => return Err(format!("read {path} for the check: {error}")),
        };
        let acked = record.acked.get(&key).map(Vec::as_slice).unwrap_or(&[]);
        problems.extend(check_list(&path, &text, acked, &record.unknown));
        checked += acked.len() as u64;
    }
    println!(
        "workload: {checked} acknowledged appends checked in {} lists; {} with unknown outcome; errors {:?}; longest stretch without an acknowledgement {} ms (from t={stall_started_at})",
        args.keys,
        record.unknown.len(),
        record.errors,
        longest_stall.as_millis()
    );
    if problems.is_empty() {
        println!("workload: check passed");
        Ok(())
    } else {
        for problem in problems.iter().take(20) {
            println!("workload: VIOLATION {problem}");
        }
        Err(format!("{} violations", problems.len()))
    }
}

fn error_kind(error: &FsError) -> String {
    let text = format!("{error:?}");
    text.split(['(', ' ']).next().unwrap_or("Other").to_string()
}

/// Checks one list against what was acknowledged (in order per worker) and attempted with
/// an unknown outcome.
fn check_list(path: &str, text: &str, acked: &[(u32, u64)], unknown: &BTreeSet<(u32, u64)>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen: BTreeMap<(u32, u64), usize> = BTreeMap::new();
    for (position, line) in text.lines().enumerate() {
        let parsed = line.split_once('.').and_then(|(w, s)| Some((w.parse().ok()?, s.parse().ok()?)));
        let Some(element) = parsed else {
            problems.push(format!("{path}: line {} is '{line}', not WORKER.SEQ", position + 1));
            continue;
        };
        if seen.insert(element, position).is_some() {
            problems.push(format!("{path}: {line} appears twice"));
        }
    }
    let acked_set: BTreeSet<(u32, u64)> = acked.iter().copied().collect();
    for element in seen.keys() {
        if !acked_set.contains(element) && !unknown.contains(element) {
            problems.push(format!("{path}: {}.{} appears but its append failed definitely", element.0, element.1));
        }
    }
    let mut last_position: BTreeMap<u32, usize> = BTreeMap::new();
    for element in acked {
        match seen.get(element) {
            None => problems.push(format!("{path}: acknowledged append {}.{} is lost", element.0, element.1)),
            Some(position) => {
                if let Some(previous) = last_position.insert(element.0, *position) {
                    if previous > *position {
                        problems.push(format!(
                            "{path}: {}.{} is before an earlier append of its worker",
                            element.0, element.1
                        ));
                    }
                }
            }
        }
    }
    problems
}

/// The whole content of the file at `path`, read in a transaction of its own.
async fn read_whole(client: &Client, path: &str) -> Result<Vec<u8>, FsError> {
    client
        .run(|txn| {
            let path = path.to_string();
            async move { txn.read_file(&path).await }
        })
        .await
}

/// `cffs fsck`: walks the tree from `root` and reads every regular file whole (each block's
/// crc32 checked by the server and again here, from another replica on a mismatch), in one
/// read-only transaction per directory and per file. Returns (directories, files, bytes).
pub async fn fsck(client: &Client, root: &str) -> Result<(u64, u64, u64), Vec<String>> {
    let mut problems = Vec::new();
    let (mut dirs, mut files, mut bytes) = (0u64, 0u64, 0u64);
    let mut pending = vec![root.to_string()];
    while let Some(dir) = pending.pop() {
        let list = dir.clone();
        let entries = match client
            .run(|txn| {
                let dir = list.clone();
                async move { txn.readdir(&dir).await }
            })
            .await
        {
            Ok(entries) => entries,
            Err(error) => {
                problems.push(format!("{dir}: cannot list: {error}"));
                continue;
            }
        };
        dirs += 1;
        for entry in entries {
            let path = format!("{}/{}", dir.trim_end_matches('/'), entry.name);
            match entry.kind {
                crate::Kind::Dir => pending.push(path),
                crate::Kind::File => match read_whole(client, &path).await {
                    Ok(data) => {
                        files += 1;
                        bytes += data.len() as u64;
                    }
                    Err(error) => problems.push(format!("{path}: cannot read: {error}")),
                },
                crate::Kind::Symlink => {}
            }
        }
    }
    match problems.is_empty() {
        true => Ok((dirs, files, bytes)),
        false => Err(problems),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_check_finds_loss_duplicates_strays_and_reordering() {
        let unknown: BTreeSet<(u32, u64)> = [(1, 9)].into_iter().collect();
        let acked = [(0, 1), (1, 2), (0, 3)];
        assert!(check_list("l", "0.1\n1.2\n1.9\n0.3\n", &acked, &unknown).is_empty());
        assert!(check_list("l", "0.1\n1.2\n0.3\n", &acked, &unknown).is_empty(), "an unknown outcome may be absent");
        let lost = check_list("l", "0.1\n0.3\n", &acked, &unknown);
        assert!(lost.iter().any(|p| p.contains("1.2 is lost")), "{lost:?}");
        let twice = check_list("l", "0.1\n1.2\n0.3\n0.3\n", &acked, &unknown);
        assert!(twice.iter().any(|p| p.contains("appears twice")), "{twice:?}");
        let stray = check_list("l", "0.1\n1.2\n0.3\n2.5\n", &acked, &unknown);
        assert!(stray.iter().any(|p| p.contains("2.5 appears")), "{stray:?}");
        let reordered = check_list("l", "0.3\n1.2\n0.1\n", &acked, &unknown);
        assert!(reordered.iter().any(|p| p.contains("before an earlier append")), "{reordered:?}");
    }
}
