//! `cffs bench-sessions`: what idle clients cost the metadata replicas. Opens many clients
//! (each its own session, as many function instances on many machines would), has each run
//! one transaction so its session opens and its cache is warm, and then leaves them all
//! idle. Measured twice over the same length of time: while the sessions are alive and
//! renewing (right after the transactions), and once they have rested
//! (`ClientOptions::session_rest_after`). Each phase prints the CPU the replicas used (every
//! `cffs-server` process on this machine, from /proc, and the busiest one alone, the leader),
//! the keepalives the leader answered and the session streams open on it. Then every client
//! runs a transaction again, and the time until all have is printed (the wake-up).
//! Figures are measured and printed, never asserted.

use std::time::{Duration, Instant};

use clap::Args;

use super::bench_peer::{pids_named, stat_ticks, TICKS_PER_SECOND};
use crate::{Client, ClientOptions, FsError};

#[derive(Args)]
pub struct SessionsBenchArgs {
    /// Idle clients, each with its own session.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Seconds each phase is measured over.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds without a transaction after which a client's session rests.
    #[arg(long, default_value_t = crate::client::SESSION_REST_AFTER_DEFAULT.as_secs())]
    rest_after: u64,
    /// Where in CFFS the file the clients read goes.
    #[arg(long, default_value = "/bench-sessions")]
    path: String,
}

/// The most clients a run may open.
const CLIENTS_MAX: usize = 10_000;

/// CPU ticks of every process named `cffs-server`, by pid.
fn server_ticks() -> Vec<(String, u64)> {
    pids_named("cffs-server").into_iter().filter_map(|pid| stat_ticks(&pid).map(|t| (pid, t))).collect()
}

/// The leader's (keepalives answered, session streams open).
async fn leader_sessions(client: &Client) -> (u64, u64) {
    match client.cluster_status().await.ok().and_then(|status| status.leases) {
        Some(leases) => (leases.keepalives, leases.streams),
        None => (0, 0),
    }
}

struct Phase {
    /// Share of one core, all replicas together, and the busiest alone.
    cpu_all: f64,
    cpu_busiest: f64,
    keepalives_per_second: f64,
    streams: u64,
}

/// Measures the replicas over `duration`.
async fn measure(client: &Client, duration: Duration) -> Phase {
    let before = server_ticks();
    let (keepalives_before, _) = leader_sessions(client).await;
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    let after = server_ticks();
    let (keepalives_after, streams) = leader_sessions(client).await;
    let seconds = started.elapsed().as_secs_f64();
    let used: Vec<f64> = after
        .iter()
        .filter_map(|(pid, t)| {
            before.iter().find(|(p, _)| p == pid).map(|(_, b)| t.saturating_sub(*b) as f64 / TICKS_PER_SECOND / seconds)
        })
        .collect();
    Phase {
        cpu_all: used.iter().sum(),
        cpu_busiest: used.iter().copied().fold(0.0, f64::max),
        keepalives_per_second: keepalives_after.saturating_sub(keepalives_before) as f64 / seconds,
        streams,
    }
}

/// Every client reads `path` in a transaction of its own, all at once.
async fn read_all(clients: &[Client], path: &str) -> Result<(), FsError> {
    let reads = clients.iter().map(|c| c.run(|txn| async move { txn.read_file(path).await }));
    futures::future::try_join_all(reads).await.map(|_| ())
}

pub async fn run(client: &Client, endpoints: &[String], args: SessionsBenchArgs) -> Result<(), FsError> {
    if args.clients == 0 || args.clients > CLIENTS_MAX {
        return Err(FsError::Invalid(format!("--clients {}: must be 1..={CLIENTS_MAX}", args.clients)));
    }
    if args.duration == 0 {
        return Err(FsError::Invalid("--duration must be at least 1 second".into()));
    }
    if server_ticks().is_empty() {
        eprintln!("bench-sessions: no cffs-server process on this machine: CPU figures will read 0");
    }
    let path = args.path.as_str();
    client.run(|txn| async move { txn.write_file(path, b"read by every idle client").await }).await?;
    let rest_after = Duration::from_secs(args.rest_after);
    let options = ClientOptions { session_rest_after: Some(rest_after), ..ClientOptions::default() };
    eprintln!("bench-sessions: opening {} clients ...", args.clients);
    let mut clients = Vec::with_capacity(args.clients);
    for _ in 0..args.clients {
        clients.push(Client::connect_with(endpoints, options)?);
    }
    read_all(&clients, path).await?;
    let idle_since = Instant::now();
    // The sessions open in the background, after each client's first cache access.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let duration = Duration::from_secs(args.duration);
    eprintln!("bench-sessions: {} idle clients, sessions alive: measuring {} s ...", args.clients, args.duration);
    let alive = measure(client, duration).await;
    // Rested: past the rest time, plus two leases for the streams to end, plus a second.
    let rested_at = rest_after + Duration::from_secs(2);
    if let Some(wait) = rested_at.checked_sub(idle_since.elapsed()) {
        eprintln!("bench-sessions: waiting {} s for the sessions to rest ...", wait.as_secs());
        tokio::time::sleep(wait).await;
    }
    eprintln!("bench-sessions: sessions rested: measuring {} s ...", args.duration);
    let rested = measure(client, duration).await;
    let woke = Instant::now();
    read_all(&clients, path).await?;
    let wake = woke.elapsed();

    println!("{} idle clients, each its own session (rest after {} s idle)", args.clients, args.rest_after);
    println!(
        "{:<16} {:>16} {:>18} {:>14} {:>14}",
        "phase", "replicas' CPU", "busiest replica", "keepalives/s", "streams open"
    );
    for (name, phase) in [("sessions alive", &alive), ("sessions rested", &rested)] {
        println!(
            "{:<16} {:>15.1}% {:>17.1}% {:>14.0} {:>14}",
            name,
            phase.cpu_all * 100.0,
            phase.cpu_busiest * 100.0,
            phase.keepalives_per_second,
            phase.streams
        );
    }
    println!(
        "wake-up: every client ran one transaction again in {:.0} ms (its session opening anew)",
        wake.as_secs_f64() * 1000.0
    );
    Ok(())
}
