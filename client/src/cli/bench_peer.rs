//! `cffs bench --peer etcd`: the same workloads on CFFS and on a three-member etcd cluster in
//! one run, one after the other at each client count, printed side by side with their ratio
//! and each system's CPU time per operation (its server processes and this client, read from
//! /proc) and memory. `ops/scripts/bench-peer.sh` starts both clusters on loopback and runs
//! this. A benchmark: figures are printed, never asserted.
//!
//! The shape of work is the same on both sides. A create is one transaction that creates a
//! name only if it is absent (CFFS: `create` of a new file in a shared directory; etcd: a
//! transaction comparing the key's version with 0, then putting it). A read-modify-write reads
//! a per-client counter and writes it back plus one, atomically (CFFS: one transaction; etcd:
//! a get, then a transaction comparing the key's mod revision and putting, retried if it
//! fails). etcd's clients send to its leader, its best case: a follower would forward.

use std::time::{Duration, Instant};

use cffs_proto::etcd::compare::{CompareResult, CompareTarget, TargetUnion};
use cffs_proto::etcd::kv_client::KvClient;
use cffs_proto::etcd::maintenance_client::MaintenanceClient;
use cffs_proto::etcd::request_op::Request as EtcdOp;
use cffs_proto::etcd::{Compare, PutRequest, RangeRequest, RequestOp, StatusRequest, TxnRequest};
use tonic::transport::Channel;

use super::bench::{cffs_workload, run_dir, BenchArgs, Peer, Report, Workload};
use crate::{Client, FsError};

/// What `--peer` compares by default, and all it can: the peer has no files to stat or read.
const PEER_WORKLOADS: [Workload; 2] = [Workload::CreateShared, Workload::Rmw];

/// The kernel's clock tick for /proc's CPU times (USER_HZ, 100 on Linux's mainstream
/// architectures; the ABI fixes it, whatever the kernel's own HZ).
pub(super) const TICKS_PER_SECOND: f64 = 100.0;

/// How long `--peer etcd` waits for the etcd cluster to have a leader.
const ETCD_LEADER_WAIT: Duration = Duration::from_secs(20);

/// One system's processes, as /proc saw them at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    /// CPU time, user plus system, of every process named for the system, in ticks.
    server_ticks: u64,
    /// The same for this process (the benchmark's clients).
    client_ticks: u64,
    rss_bytes: u64,
    processes: usize,
}

/// The pids of every process whose name (`/proc/PID/comm`) is `comm`.
pub(super) fn pids_named(comm: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().to_string())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim_end() == comm)
        .collect()
}

/// CPU and memory of every process named `comm`, and this one's.
fn usage(comm: &str) -> Usage {
    let mut usage = Usage { client_ticks: stat_ticks("self").unwrap_or(0), ..Default::default() };
    for pid in pids_named(comm) {
        let Some(ticks) = stat_ticks(&pid) else { continue };
        usage.server_ticks += ticks;
        usage.rss_bytes += rss_bytes(&pid);
        usage.processes += 1;
    }
    usage
}

/// utime + stime of `/proc/<pid>/stat` (fields 14 and 15; the name in field 2 may hold
/// spaces, so fields are counted after its closing parenthesis).
pub(super) fn stat_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn rss_bytes(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// One system's run of one workload at one client count.
struct Row {
    report: Report,
    /// Server plus client CPU per operation, in µs.
    cpu_us_per_op: Option<f64>,
    /// Server CPU alone, per operation.
    server_cpu_us_per_op: Option<f64>,
    rss_mib: u64,
    processes: usize,
}

fn row(report: Report, before: Usage, after: Usage) -> Row {
    let per_op = |ticks: u64| (report.ops > 0).then(|| ticks as f64 / TICKS_PER_SECOND * 1e6 / report.ops as f64);
    let server = after.server_ticks.saturating_sub(before.server_ticks);
    let client = after.client_ticks.saturating_sub(before.client_ticks);
    Row {
        cpu_us_per_op: per_op(server + client),
        server_cpu_us_per_op: per_op(server),
        rss_mib: after.rss_bytes >> 20,
        processes: after.processes,
        report,
    }
}

pub async fn run(client: &Client, args: BenchArgs, json: bool) -> Result<(), FsError> {
    let Some(Peer::Etcd) = args.peer else { return Err(FsError::Invalid("no peer".into())) };
    let workloads = args.workloads.clone().unwrap_or_else(|| PEER_WORKLOADS.to_vec());
    if let Some(bad) = workloads.iter().find(|w| !PEER_WORKLOADS.contains(w)) {
        return Err(FsError::Invalid(format!(
            "--peer etcd runs create-shared and rmw only (etcd has no files for {bad:?})"
        )));
    }
    let etcd = EtcdCluster::connect(&args.etcd_endpoints).await?;
    let probe = usage("etcd");
    if probe.processes == 0 {
        eprintln!("bench: no process named etcd on this machine: etcd's CPU and memory read as 0");
    }
    eprintln!("bench: etcd leader at {} (of {})", etcd.leader, args.etcd_endpoints.join(","));
    let run_id = run_dir(&args.dir);
    let mut rows = Vec::new();
    for clients in args.clients.iter().copied() {
        for workload in workloads.iter().copied() {
            eprintln!("bench: {} with {clients} clients for {} s, cffs then etcd ...", workload.name(), args.duration);
            let before = usage("cffs-server");
            let report = cffs_workload(client, &run_id, workload, clients, &args).await?;
            let cffs = row(report, before, usage("cffs-server"));
            let before = usage("etcd");
            let report = etcd.workload(&run_id, workload, clients, Duration::from_secs(args.duration)).await?;
            let peer = row(report, before, usage("etcd"));
            rows.push((clients, cffs, peer));
        }
    }
    if json {
        print_json(&rows);
    } else {
        print_table(&rows);
    }
    Ok(())
}

fn print_json(rows: &[(usize, Row, Row)]) {
    let one = |system: &str, clients: usize, row: &Row| {
        let r = &row.report;
        serde_json::json!({
            "system": system, "workload": format!("{:?}", r.workload), "clients": clients, "ops": r.ops,
            "errors": r.errors, "ops_per_second": r.ops as f64 / r.seconds,
            "latency_us_p50": r.percentile_us(0.50), "latency_us_p99": r.percentile_us(0.99),
            "latency_us_p999": r.percentile_us(0.999), "cpu_us_per_op": row.cpu_us_per_op,
            "server_cpu_us_per_op": row.server_cpu_us_per_op, "rss_mib": row.rss_mib,
            "server_processes": row.processes, "requests_per_op": r.requests_per_op(),
        })
    };
    let out: Vec<_> = rows
        .iter()
        .flat_map(|(clients, cffs, etcd)| [one("cffs", *clients, cffs), one("etcd", *clients, etcd)])
        .collect();
    println!("{}", serde_json::Value::Array(out));
}

fn print_table(rows: &[(usize, Row, Row)]) {
    println!(
        "{:<20} {:>7} {:<7} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>8} {:>7}",
        "WORKLOAD",
        "CLIENTS",
        "SYSTEM",
        "OPS/S",
        "P50 us",
        "P99 us",
        "P999 us",
        "CPU us/op",
        "SRV us/op",
        "RSS MiB",
        "REQ/OP"
    );
    let fmt = |value: Option<f64>| value.map_or("-".to_string(), |v| format!("{v:.0}"));
    for (clients, cffs, etcd) in rows {
        for (system, row) in [("cffs", cffs), ("etcd", etcd)] {
            let r = &row.report;
            println!(
                "{:<20} {:>7} {:<7} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>10} {:>10} {:>8} {:>7}{}",
                r.workload.name(),
                clients,
                system,
                r.ops as f64 / r.seconds,
                r.percentile_us(0.50),
                r.percentile_us(0.99),
                r.percentile_us(0.999),
                fmt(row.cpu_us_per_op),
                fmt(row.server_cpu_us_per_op),
                row.rss_mib,
                r.requests_per_op().map_or("-".to_string(), |n| format!("{n:.2}")),
                if r.errors > 0 { format!("  ({} errors)", r.errors) } else { String::new() },
            );
        }
        // Throughput: CFFS over etcd (above 1 is better); latency and CPU: CFFS over etcd
        // (below 1 is better).
        let ratio = |a: f64, b: f64| if b > 0.0 { format!("{:.2}x", a / b) } else { "-".to_string() };
        let (a, b) = (&cffs.report, &etcd.report);
        let cpu = match (cffs.cpu_us_per_op, etcd.cpu_us_per_op) {
            (Some(x), Some(y)) => ratio(x, y),
            _ => "-".to_string(),
        };
        let srv = match (cffs.server_cpu_us_per_op, etcd.server_cpu_us_per_op) {
            (Some(x), Some(y)) => ratio(x, y),
            _ => "-".to_string(),
        };
        println!(
            "{:<20} {:>7} {:<7} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>8} {:>7}",
            "",
            "",
            "ratio",
            ratio(a.ops as f64 / a.seconds, b.ops as f64 / b.seconds),
            ratio(a.percentile_us(0.50), b.percentile_us(0.50)),
            ratio(a.percentile_us(0.99), b.percentile_us(0.99)),
            ratio(a.percentile_us(0.999), b.percentile_us(0.999)),
            cpu,
            srv,
            ratio(cffs.rss_mib as f64, etcd.rss_mib as f64),
            "",
        );
    }
    println!("ratio = cffs / etcd: above 1 is better for OPS/S, below 1 for latency, CPU and RSS");
}

/// A three-member etcd cluster, reached through its leader.
struct EtcdCluster {
    leader: String,
}

impl EtcdCluster {
    /// Finds the leader among `endpoints` (each member's Status names the leader's member id
    /// and its own), waiting up to `ETCD_LEADER_WAIT` for one: a cluster just started may
    /// still be electing.
    async fn connect(endpoints: &[String]) -> Result<EtcdCluster, FsError> {
        let deadline = Instant::now() + ETCD_LEADER_WAIT;
        loop {
            match Self::find_leader(endpoints).await {
                Ok(cluster) => return Ok(cluster),
                Err(error) if Instant::now() >= deadline => return Err(error),
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    async fn find_leader(endpoints: &[String]) -> Result<EtcdCluster, FsError> {
        let mut last_error = String::from("no endpoints given (--etcd-endpoints)");
        for addr in endpoints {
            let channel = match crate::calls::endpoint(addr)?.connect().await {
                Ok(channel) => channel,
                Err(error) => {
                    last_error = format!("{addr}: {error}");
                    continue;
                }
            };
            match MaintenanceClient::new(channel).status(StatusRequest {}).await {
                Ok(status) => {
                    let status = status.into_inner();
                    if status.header.is_some_and(|h| h.member_id == status.leader) {
                        return Ok(EtcdCluster { leader: addr.clone() });
                    }
                    last_error = format!("{addr} does not lead");
                }
                Err(status) => last_error = format!("{addr}: {}", status.message()),
            }
        }
        Err(FsError::Unavailable(format!("no etcd leader among {}: {last_error}", endpoints.join(","))))
    }

    async fn channel(&self) -> Result<Channel, FsError> {
        crate::calls::endpoint(&self.leader)?
            .connect()
            .await
            .map_err(|e| FsError::Unavailable(format!("etcd {}: {e}", self.leader)))
    }

    async fn workload(
        &self,
        run_id: &str,
        workload: Workload,
        clients: usize,
        duration: Duration,
    ) -> Result<Report, FsError> {
        let prefix = format!("{run_id}/c{clients}/{workload:?}");
        let mut tasks = Vec::new();
        let started = Instant::now();
        for task in 0..clients {
            // One connection per client, as on the CFFS side.
            let mut kv = KvClient::new(self.channel().await?);
            let prefix = prefix.clone();
            tasks.push(tokio::spawn(async move {
                let deadline = Instant::now() + duration;
                let (mut latencies, mut errors, mut requests) = (Vec::new(), 0usize, 0u64);
                let mut op_start = Instant::now();
                let mut i = 0u64;
                while op_start < deadline {
                    let result = match workload {
                        Workload::Rmw => {
                            etcd_rmw(&mut kv, format!("{prefix}/counter-{task}").into_bytes(), &mut requests).await
                        }
                        _ => {
                            etcd_create(&mut kv, format!("{prefix}/shared/t{task}-{i}").into_bytes(), &mut requests)
                                .await
                        }
                    };
                    let op_end = Instant::now();
                    match result {
                        Ok(()) => latencies.push((op_end - op_start).as_nanos() as u64),
                        Err(_) => errors += 1,
                    }
                    op_start = op_end;
                    i += 1;
                }
                (latencies, errors, requests)
            }));
        }
        let (mut latencies_ns, mut errors, mut requests) = (Vec::new(), 0, 0);
        for task in tasks {
            let (l, e, r) = task.await.map_err(|e| FsError::Internal(format!("bench task: {e}")))?;
            latencies_ns.extend(l);
            errors += e;
            requests += r;
        }
        let seconds = started.elapsed().as_secs_f64();
        latencies_ns.sort_unstable();
        Ok(Report {
            workload,
            ops: latencies_ns.len(),
            errors,
            seconds,
            latencies_ns,
            cache: crate::CacheStats::default(),
            requests,
        })
    }
}

fn put(key: Vec<u8>, value: Vec<u8>) -> RequestOp {
    RequestOp { request: Some(EtcdOp::RequestPut(PutRequest { key, value, ..Default::default() })) }
}

fn etcd_error(status: tonic::Status) -> FsError {
    FsError::Unavailable(format!("etcd: {}", status.message()))
}

/// Creates `key` if it is absent, in one transaction.
async fn etcd_create(kv: &mut KvClient<Channel>, key: Vec<u8>, requests: &mut u64) -> Result<(), FsError> {
    let txn = TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Version as i32,
            key: key.clone(),
            target_union: Some(TargetUnion::Version(0)),
        }],
        success: vec![put(key, Vec::new())],
        failure: vec![],
    };
    *requests += 1;
    match kv.txn(txn).await.map_err(etcd_error)?.into_inner().succeeded {
        true => Ok(()),
        false => Err(FsError::Exists),
    }
}

/// Adds one to the counter at `key`: a get, then a transaction that puts the new value if
/// the key's mod revision is still the one read (0 while it is absent); again if it is not.
async fn etcd_rmw(kv: &mut KvClient<Channel>, key: Vec<u8>, requests: &mut u64) -> Result<(), FsError> {
    loop {
        *requests += 2;
        let range = kv.range(RangeRequest { key: key.clone(), ..Default::default() }).await.map_err(etcd_error)?;
        let (n, revision) = range.into_inner().kvs.first().map_or((0, 0), |found| {
            (String::from_utf8_lossy(&found.value).parse::<u64>().unwrap_or(0), found.mod_revision)
        });
        let txn = TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Mod as i32,
                key: key.clone(),
                target_union: Some(TargetUnion::ModRevision(revision)),
            }],
            success: vec![put(key.clone(), (n + 1).to_string().into_bytes())],
            failure: vec![],
        };
        if kv.txn(txn).await.map_err(etcd_error)?.into_inner().succeeded {
            return Ok(());
        }
    }
}
