//! `cffs bench`: load against a running cluster, printing throughput and latency per
//! workload. Each operation is one transaction through `Client::run`, as a function
//! invocation would do it. Figures are measured, never asserted: this is a benchmark.

use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};

use crate::{Client, FsError};

#[derive(Args)]
pub struct BenchArgs {
    /// Concurrent clients, each with its own connection; a list (`1,16,64`) runs every
    /// workload at each count.
    #[arg(long, value_delimiter = ',', default_values_t = [16])]
    pub(super) clients: Vec<usize>,
    /// Seconds each workload runs.
    #[arg(long, default_value_t = 5)]
    pub(super) duration: u64,
    /// Workloads to run, in order [default: all of them; with --peer, create-shared,rmw].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub(super) workloads: Option<Vec<Workload>>,
    /// Directory the benchmark works under (a fresh subdirectory per run).
    #[arg(long, default_value = "/bench")]
    pub(super) dir: String,
    /// Local directory for the `read-tmpfs` baseline (a tmpfs, to compare with memory speed).
    #[arg(long, default_value = "/dev/shm")]
    pub(super) tmpfs_dir: std::path::PathBuf,
    /// Run the same workloads against a peer system in the same run, side by side, and print
    /// both with their ratio and each system's CPU time per operation (all its processes and
    /// this client, from /proc). `ops/scripts/bench-peer.sh` starts both clusters and runs it.
    #[arg(long, value_enum)]
    pub(super) peer: Option<Peer>,
    /// The peer's client endpoints (host:port), for --peer etcd.
    #[arg(long, value_delimiter = ',', default_values_t = ["127.0.0.1:23791".to_string(), "127.0.0.1:23792".to_string(), "127.0.0.1:23793".to_string()])]
    pub(super) etcd_endpoints: Vec<String>,
}

/// A system `cffs bench --peer` measures beside CFFS.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
pub enum Peer {
    /// etcd v3 (its KV API over gRPC): a create is a transaction comparing the key's version
    /// with 0 and putting it; a read-modify-write is a get, then a transaction comparing the
    /// key's mod revision and putting the new value.
    Etcd,
}

/// The most clients a run may ask for.
const CLIENTS_MAX: usize = 4096;

/// Size of the file the read workloads stat and read.
const READ_FILE_BYTES: usize = 4096;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
pub enum Workload {
    /// Every client creates files in one shared directory.
    CreateShared,
    /// Every client creates files in its own directory.
    CreatePrivate,
    /// stat of one existing file (a read-only transaction).
    Stat,
    /// Read-modify-write of a small file per client: read, add one, write back.
    Rmw,
    /// A read-only transaction, stat plus a 4 KiB read of a file per client, with the cache
    /// warm: served under leases, committed locally.
    ReadWarm,
    /// The same transaction with the cache off: every read goes to the leader.
    ReadCold,
    /// The same stat plus read as local syscalls on a tmpfs file (--tmpfs-dir): the baseline.
    ReadTmpfs,
}

impl Workload {
    pub(super) fn name(self) -> &'static str {
        match self {
            Workload::CreateShared => "create (shared dir)",
            Workload::CreatePrivate => "create (private dirs)",
            Workload::Stat => "stat",
            Workload::Rmw => "read-modify-write",
            Workload::ReadWarm => "read-only txn (warm)",
            Workload::ReadCold => "read-only txn (cold)",
            Workload::ReadTmpfs => "stat+read (tmpfs)",
        }
    }
}

pub(super) struct Report {
    pub(super) workload: Workload,
    pub(super) ops: usize,
    pub(super) errors: usize,
    pub(super) seconds: f64,
    /// Each operation's latency, in nanoseconds, sorted.
    pub(super) latencies_ns: Vec<u64>,
    /// The clients' cache counters over the workload (summed).
    pub(super) cache: crate::CacheStats,
    /// Requests the clients sent over the workload (every attempt).
    pub(super) requests: u64,
}

impl Report {
    /// Requests per operation (a warm read-only transaction sends none).
    pub(super) fn requests_per_op(&self) -> Option<f64> {
        (self.ops > 0 && self.workload != Workload::ReadTmpfs).then(|| self.requests as f64 / self.ops as f64)
    }

    fn hit_rate(&self) -> Option<f64> {
        let lookups = self.cache.hits + self.cache.misses;
        (lookups > 0).then(|| self.cache.hits as f64 / lookups as f64)
    }
}

impl Report {
    pub(super) fn percentile_us(&self, p: f64) -> f64 {
        if self.latencies_ns.is_empty() {
            return 0.0;
        }
        let rank = ((self.latencies_ns.len() as f64 * p).ceil() as usize).clamp(1, self.latencies_ns.len());
        self.latencies_ns[rank - 1] as f64 / 1000.0
    }
}

pub async fn run(client: &Client, args: BenchArgs, json: bool) -> Result<(), FsError> {
    if let Some(bad) = args.clients.iter().find(|n| **n == 0 || **n > CLIENTS_MAX) {
        return Err(FsError::Invalid(format!("--clients {bad}: each count must be 1..={CLIENTS_MAX}")));
    }
    if args.peer.is_some() {
        return super::bench_peer::run(client, args, json).await;
    }
    let workloads = args.workloads.clone().unwrap_or_else(|| Workload::value_variants().to_vec());
    let run_id = run_dir(&args.dir);
    let mut reports = Vec::new();
    for clients in args.clients.iter().copied() {
        for workload in workloads.iter().copied() {
            eprintln!("bench: {} with {clients} clients for {} s ...", workload.name(), args.duration);
            let report = cffs_workload(client, &run_id, workload, clients, &args).await?;
            reports.push((clients, report));
        }
    }
    if json {
        let rows: Vec<_> = reports
            .iter()
            .map(|(clients, r)| serde_json::json!({
                "workload": format!("{:?}", r.workload), "clients": clients, "ops": r.ops, "errors": r.errors,
                "ops_per_second": r.ops as f64 / r.seconds,
                "latency_us_p50": r.percentile_us(0.50), "latency_us_p99": r.percentile_us(0.99), "latency_us_p999": r.percentile_us(0.999),
                "cache_hit_rate": r.hit_rate(), "local_commits": r.cache.local_commits,
                "requests_per_op": r.requests_per_op(),
            }))
            .collect();
        println!("{}", serde_json::Value::Array(rows));
    } else {
        println!(
            "{:<22} {:>8} {:>9} {:>10} {:>9} {:>9} {:>9} {:>7} {:>7}",
            "WORKLOAD", "CLIENTS", "OPS", "OPS/S", "P50 us", "P99 us", "P999 us", "HITS", "REQ/OP"
        );
        for (clients, r) in &reports {
            println!(
                "{:<22} {:>8} {:>9} {:>10.0} {:>9.1} {:>9.1} {:>9.1} {:>7} {:>7}{}",
                r.workload.name(),
                clients,
                r.ops,
                r.ops as f64 / r.seconds,
                r.percentile_us(0.50),
                r.percentile_us(0.99),
                r.percentile_us(0.999),
                r.hit_rate().map_or("-".to_string(), |rate| format!("{:.1}%", rate * 100.0)),
                r.requests_per_op().map_or("-".to_string(), |requests| format!("{requests:.2}")),
                if r.errors > 0 { format!("  ({} errors)", r.errors) } else { String::new() },
            );
        }
    }
    Ok(())
}

/// A fresh directory name for this run under `dir`.
pub(super) fn run_dir(dir: &str) -> String {
    format!(
        "{}/run-{}",
        dir.trim_end_matches('/'),
        std::process::id() as u64 * 1000 + rand::random::<u16>() as u64 % 1000
    )
}

/// Runs one workload on CFFS with `clients` clients for the run's duration.
pub(super) async fn cffs_workload(
    client: &Client,
    run_id: &str,
    workload: Workload,
    clients: usize,
    args: &BenchArgs,
) -> Result<Report, FsError> {
    let endpoints: Vec<String> =
        client.cluster_status().await.map(|s| s.members.into_iter().map(|m| m.addr).collect()).unwrap_or_default();
    let run_id = format!("{run_id}/c{clients}");
    run_workload(client, &endpoints, &run_id, workload, clients, Duration::from_secs(args.duration), &args.tmpfs_dir)
        .await
}

async fn run_workload(
    client: &Client,
    endpoints: &[String],
    run_id: &str,
    workload: Workload,
    clients: usize,
    duration: Duration,
    tmpfs_dir: &std::path::Path,
) -> Result<Report, FsError> {
    let dir = format!("{run_id}/{workload:?}");
    let setup = dir.clone();
    client
        .run(|txn| {
            let setup = setup.clone();
            async move {
                txn.mkdir_all(&format!("{setup}/shared"), 0o755).await?;
                txn.write_file(&format!("{setup}/stat-target"), b"x").await
            }
        })
        .await?;
    let mut tasks = Vec::new();
    let started = Instant::now();
    for task in 0..clients {
        // One connection per client, as separate function instances would have.
        let options = crate::ClientOptions { cache: workload != Workload::ReadCold, ..Default::default() };
        let client = if endpoints.is_empty() { client.clone() } else { Client::connect_with(endpoints, options)? };
        let dir = dir.clone();
        let tmpfs = tmpfs_dir.join(format!("cffs-bench-{}-{task}", std::process::id()));
        tasks.push(tokio::spawn(async move {
            let paths = Paths {
                private: format!("{dir}/t{task}"),
                stat: format!("{dir}/stat-target"),
                read: format!("{dir}/read-{task}"),
                counter: format!("{dir}/counter-{task}"),
                dir,
            };
            if matches!(workload, Workload::ReadWarm | Workload::ReadCold) {
                let path = paths.read.clone();
                client
                    .run(|txn| {
                        let path = path.clone();
                        async move { txn.write_file(&path, &[7u8; READ_FILE_BYTES]).await }
                    })
                    .await?;
                if workload == Workload::ReadWarm {
                    // Warm: one read before the clock starts (and the session opened).
                    while client.cache_stats().hits == 0 {
                        one_op(&client, workload, &paths, task, 0).await?;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
            if workload == Workload::ReadTmpfs {
                std::fs::write(&tmpfs, [7u8; READ_FILE_BYTES])
                    .map_err(|e| FsError::Invalid(format!("{}: {e}", tmpfs.display())))?;
            }
            if workload == Workload::CreatePrivate {
                let p = paths.private.clone();
                client
                    .run(|txn| {
                        let p = p.clone();
                        async move { txn.mkdir(&p, 0o755).await.map(|_| ()) }
                    })
                    .await?;
            }
            let before = client.cache_stats();
            let requests_before = client.requests_sent();
            let deadline = Instant::now() + duration;
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            let mut i = 0u64;
            // Two clock reads per operation, as few as the latency figures allow: the end of
            // one operation starts the next.
            let mut op_start = Instant::now();
            while op_start < deadline {
                let result = if workload == Workload::ReadTmpfs {
                    tmpfs_op(&tmpfs)
                } else {
                    one_op(&client, workload, &paths, task, i).await
                };
                let op_end = Instant::now();
                match result {
                    Ok(()) => latencies.push((op_end - op_start).as_nanos() as u64),
                    Err(_) => errors += 1,
                }
                op_start = op_end;
                i += 1;
            }
            if workload == Workload::ReadTmpfs {
                let _ = std::fs::remove_file(&tmpfs);
            }
            let after = client.cache_stats();
            let requests = client.requests_sent() - requests_before;
            let cache = crate::CacheStats {
                hits: after.hits - before.hits,
                misses: after.misses - before.misses,
                local_commits: after.local_commits - before.local_commits,
                ..Default::default()
            };
            Ok::<_, FsError>((latencies, errors, cache, requests))
        }));
    }
    let mut latencies_ns = Vec::new();
    let mut errors = 0;
    let mut cache = crate::CacheStats::default();
    let mut requests = 0;
    for task in tasks {
        let (l, e, c, r) = task.await.map_err(|e| FsError::Internal(format!("bench task: {e}")))??;
        latencies_ns.extend(l);
        errors += e;
        cache.hits += c.hits;
        cache.misses += c.misses;
        cache.local_commits += c.local_commits;
        requests += r;
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies_ns.sort_unstable();
    Ok(Report { workload, ops: latencies_ns.len(), errors, seconds, latencies_ns, cache, requests })
}

/// The baseline: stat plus a read of a local file, as two syscalls (std::fs).
fn tmpfs_op(path: &std::path::Path) -> Result<(), FsError> {
    let io = |e: std::io::Error| FsError::Invalid(format!("{}: {e}", path.display()));
    let metadata = std::fs::metadata(path).map_err(io)?;
    let data = std::fs::read(path).map_err(io)?;
    if data.len() as u64 != metadata.len() {
        return Err(FsError::Internal("tmpfs file changed size".into()));
    }
    Ok(())
}

/// The paths one client's operations use, formatted before the clock starts (as the tmpfs
/// baseline's path is).
struct Paths {
    dir: String,
    private: String,
    stat: String,
    read: String,
    counter: String,
}

async fn one_op(client: &Client, workload: Workload, paths: &Paths, task: usize, i: u64) -> Result<(), FsError> {
    match workload {
        Workload::CreateShared => {
            let path = format!("{}/shared/t{task}-{i}", paths.dir);
            let path = path.as_str();
            client.run(|txn| async move { txn.create(path, 0o644, true).await.map(|_| ()) }).await
        }
        Workload::CreatePrivate => {
            let path = format!("{}/f{i}", paths.private);
            let path = path.as_str();
            client.run(|txn| async move { txn.create(path, 0o644, true).await.map(|_| ()) }).await
        }
        Workload::Stat => {
            let path = paths.stat.as_str();
            client.run(|txn| async move { txn.stat(path).await.map(|_| ()) }).await
        }
        Workload::ReadWarm | Workload::ReadCold => {
            let path = paths.read.as_str();
            client
                .run(|txn| async move {
                    let attr = txn.stat(path).await?;
                    let data = txn.read_file(path).await?;
                    if data.len() as u64 != attr.size {
                        return Err(FsError::Internal("size and content disagree".into()));
                    }
                    Ok(())
                })
                .await
        }
        Workload::ReadTmpfs => Err(FsError::Internal("the tmpfs baseline runs no transaction".into())),
        Workload::Rmw => {
            let path = paths.counter.as_str();
            client
                .run(|txn| async move {
                    let old = match txn.read_file(path).await {
                        Ok(data) => data,
                        Err(FsError::NotFound) => Vec::new(),
                        Err(e) => return Err(e),
                    };
                    let n: u64 = String::from_utf8_lossy(&old).parse().unwrap_or(0);
                    txn.write_file(path, (n + 1).to_string().as_bytes()).await
                })
                .await
        }
    }
}
