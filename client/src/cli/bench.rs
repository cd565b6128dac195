//! `cffs bench`: load against a running cluster, printing throughput and latency per
//! workload. Each operation is one transaction through `Client::run`, as a function
//! invocation would do it. Figures are measured, never asserted: this is a benchmark.

use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};

use crate::{Client, FsError};

#[derive(Args)]
pub struct BenchArgs {
    /// Concurrent clients, each with its own connection.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Seconds each workload runs.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Workloads to run, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Workload::CreateShared, Workload::CreatePrivate, Workload::Stat, Workload::Rmw])]
    workloads: Vec<Workload>,
    /// Directory the benchmark works under (a fresh subdirectory per run).
    #[arg(long, default_value = "/bench")]
    dir: String,
}

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
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::CreateShared => "create (shared dir)",
            Workload::CreatePrivate => "create (private dirs)",
            Workload::Stat => "stat",
            Workload::Rmw => "read-modify-write",
        }
    }
}

struct Report {
    workload: Workload,
    ops: usize,
    errors: usize,
    seconds: f64,
    latencies_us: Vec<u64>,
}

impl Report {
    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let rank = ((self.latencies_us.len() as f64 * p).ceil() as usize).clamp(1, self.latencies_us.len());
        self.latencies_us[rank - 1] as f64 / 1000.0
    }
}

pub async fn run(client: &Client, args: BenchArgs, json: bool) -> Result<(), FsError> {
    if args.clients == 0 || args.clients > 4096 {
        return Err(FsError::Invalid("--clients must be 1..=4096".into()));
    }
    let run_id = format!(
        "{}/run-{}",
        args.dir.trim_end_matches('/'),
        std::process::id() as u64 * 1000 + rand::random::<u16>() as u64 % 1000
    );
    let root = run_id.clone();
    client
        .run(|txn| {
            let root = root.clone();
            async move { txn.mkdir_all(&root, 0o755).await }
        })
        .await?;
    let endpoints: Vec<String> =
        client.cluster_status().await.map(|s| s.members.into_iter().map(|m| m.addr).collect()).unwrap_or_default();
    let mut reports = Vec::new();
    for workload in args.workloads.clone() {
        eprintln!("bench: {} with {} clients for {} s ...", workload.name(), args.clients, args.duration);
        reports.push(
            run_workload(client, &endpoints, &run_id, workload, args.clients, Duration::from_secs(args.duration))
                .await?,
        );
    }
    if json {
        let rows: Vec<_> = reports
            .iter()
            .map(|r| serde_json::json!({
                "workload": format!("{:?}", r.workload), "clients": args.clients, "ops": r.ops, "errors": r.errors,
                "ops_per_second": r.ops as f64 / r.seconds,
                "latency_ms_p50": r.percentile_ms(0.50), "latency_ms_p99": r.percentile_ms(0.99), "latency_ms_p999": r.percentile_ms(0.999),
            }))
            .collect();
        println!("{}", serde_json::Value::Array(rows));
    } else {
        println!(
            "{:<22} {:>8} {:>9} {:>10} {:>9} {:>9} {:>9}",
            "WORKLOAD", "CLIENTS", "OPS", "OPS/S", "P50 ms", "P99 ms", "P999 ms"
        );
        for r in &reports {
            println!(
                "{:<22} {:>8} {:>9} {:>10.0} {:>9.2} {:>9.2} {:>9.2}{}",
                r.workload.name(),
                args.clients,
                r.ops,
                r.ops as f64 / r.seconds,
                r.percentile_ms(0.50),
                r.percentile_ms(0.99),
                r.percentile_ms(0.999),
                if r.errors > 0 { format!("  ({} errors)", r.errors) } else { String::new() },
            );
        }
    }
    Ok(())
}

async fn run_workload(
    client: &Client,
    endpoints: &[String],
    run_id: &str,
    workload: Workload,
    clients: usize,
    duration: Duration,
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
        let client = if endpoints.is_empty() { client.clone() } else { Client::connect(endpoints)? };
        let dir = dir.clone();
        tasks.push(tokio::spawn(async move {
            let private = format!("{dir}/t{task}");
            if workload == Workload::CreatePrivate {
                let p = private.clone();
                client
                    .run(|txn| {
                        let p = p.clone();
                        async move { txn.mkdir(&p, 0o755).await.map(|_| ()) }
                    })
                    .await?;
            }
            let deadline = Instant::now() + duration;
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            let mut i = 0u64;
            while Instant::now() < deadline {
                let op_start = Instant::now();
                let result = one_op(&client, workload, &dir, &private, task, i).await;
                match result {
                    Ok(()) => latencies.push(op_start.elapsed().as_micros() as u64),
                    Err(_) => errors += 1,
                }
                i += 1;
            }
            Ok::<_, FsError>((latencies, errors))
        }));
    }
    let mut latencies_us = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (l, e) = task.await.map_err(|e| FsError::Internal(format!("bench task: {e}")))??;
        latencies_us.extend(l);
        errors += e;
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies_us.sort_unstable();
    Ok(Report { workload, ops: latencies_us.len(), errors, seconds, latencies_us })
}

async fn one_op(
    client: &Client,
    workload: Workload,
    dir: &str,
    private: &str,
    task: usize,
    i: u64,
) -> Result<(), FsError> {
    match workload {
        Workload::CreateShared => {
            let path = format!("{dir}/shared/t{task}-{i}");
            client
                .run(|txn| {
                    let path = path.clone();
                    async move { txn.create(&path, 0o644, true).await.map(|_| ()) }
                })
                .await
        }
        Workload::CreatePrivate => {
            let path = format!("{private}/f{i}");
            client
                .run(|txn| {
                    let path = path.clone();
                    async move { txn.create(&path, 0o644, true).await.map(|_| ()) }
                })
                .await
        }
        Workload::Stat => {
            let path = format!("{dir}/stat-target");
            client
                .run(|txn| {
                    let path = path.clone();
                    async move { txn.stat(&path).await.map(|_| ()) }
                })
                .await
        }
        Workload::Rmw => {
            let path = format!("{dir}/counter-{task}");
            client
                .run(|txn| {
                    let path = path.clone();
                    async move {
                        let old = match txn.read_file(&path).await {
                            Ok(data) => data,
                            Err(FsError::NotFound) => Vec::new(),
                            Err(e) => return Err(e),
                        };
                        let n: u64 = String::from_utf8_lossy(&old).parse().unwrap_or(0);
                        txn.write_file(&path, (n + 1).to_string().as_bytes()).await
                    }
                })
                .await
        }
    }
}
