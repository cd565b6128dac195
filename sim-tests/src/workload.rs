//! Workloads run by simulated clients, recorded as histories of (operation, outcome).
//! A timed-out or otherwise unknown outcome is recorded as unknown, never as a failure.

use std::time::Duration;

use cffs_client::{Client, FsError};

use crate::cluster::Cluster;

/// What one client saw of its increments, per counter file.
#[derive(Debug, Default, Clone)]
pub struct CounterHistory {
    /// Increments acknowledged as committed.
    pub acked: Vec<u64>,
    /// Increments whose outcome is unknown (may or may not have been applied, at most once).
    pub unknown: Vec<u64>,
    /// Increments that definitely failed (nothing applied).
    pub failed: u64,
}

pub fn counter_path(file: usize) -> String {
    format!("/counters/c{file}")
}

/// Creates the counter files, all zero.
pub async fn counter_setup(client: &Client, files: usize) -> Result<(), FsError> {
    client
        .run(|txn| async move {
            txn.mkdir_all("/counters", 0o755).await?;
            for file in 0..files {
                txn.write_file(&counter_path(file), b"0").await?;
            }
            Ok(())
        })
        .await
}

/// Reads every counter in one transaction.
pub async fn counter_values(client: &Client, files: usize) -> Result<Vec<u64>, FsError> {
    client
        .run(|txn| async move {
            let mut values = Vec::new();
            for file in 0..files {
                let data = txn.read_file(&counter_path(file)).await?;
                values
                    .push(String::from_utf8_lossy(&data).parse::<u64>().map_err(|e| FsError::Internal(e.to_string()))?);
            }
            Ok(values)
        })
        .await
}

/// One client: `ops` increments, each of a counter chosen at random, each one
/// `Client::run` (read, add one, write back).
pub async fn counter_client(client: Client, files: usize, ops: usize, pause: Duration) -> CounterHistory {
    use rand::Rng;
    let mut history = CounterHistory { acked: vec![0; files], unknown: vec![0; files], failed: 0 };
    for _ in 0..ops {
        let file = madsim::rand::thread_rng().gen_range(0..files);
        let result = client
            .run(|txn| async move {
                let path = counter_path(file);
                let data = txn.read_file(&path).await?;
                let n: u64 = String::from_utf8_lossy(&data).parse().map_err(|_| FsError::Internal("counter".into()))?;
                txn.write_file(&path, (n + 1).to_string().as_bytes()).await
            })
            .await;
        match result {
            Ok(()) => history.acked[file] += 1,
            Err(FsError::OutcomeUnknown(_)) => history.unknown[file] += 1,
            Err(error) => {
                tracing::info!(%error, "increment failed");
                history.failed += 1
            }
        }
        tokio::time::sleep(pause).await;
    }
    history
}

/// Runs `clients` counter clients on their own nodes; returns their join handles.
pub fn counter_clients(
    cluster: &Cluster,
    clients: usize,
    files: usize,
    ops: usize,
    pause: Duration,
) -> Vec<madsim::task::JoinHandle<CounterHistory>> {
    (0..clients)
        .map(|_| {
            let endpoints = cluster.endpoints();
            cluster.client_node().spawn(async move {
                let client = Client::connect(&endpoints).expect("endpoints are valid");
                counter_client(client, files, ops, pause).await
            })
        })
        .collect()
}
