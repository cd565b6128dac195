//! The block data port under a kill (docs/design/blocks.md, "The data port"): a client
//! writes a file of many blocks, so it holds idle data connections to every block server;
//! block server 5 is killed and restarted (its data port may come back on another port), and
//! the same client writes a second file. The put that meets a dead connection must fall back
//! to gRPC, the client must find the restarted server's new port and use it again, and both
//! files must read back whole from a client without a cache.
#![cfg(madsim)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cffs_client::{Client, ClientOptions, FsError};
use cffs_sim_tests::cluster::{Cluster, SIM_BLOCK_SIZE};
use cffs_sim_tests::runner;

const SEEDS: u64 = 4;
/// Blocks per file: about half land on group 2 (servers 4 to 6).
const FILE_BLOCKS: u64 = 24;

fn content(file: u8) -> Vec<u8> {
    (0..FILE_BLOCKS * u64::from(SIM_BLOCK_SIZE)).map(|i| (i.wrapping_mul(31) >> 3) as u8 ^ file).collect()
}

#[derive(Debug, Default)]
struct Run {
    /// Of server 5's puts after its restart, how many came over the data port, and all.
    data_port_puts_after_restart: u64,
    puts_after_restart: u64,
    /// Data-port puts summed over every block server before the kill.
    data_port_puts_before: u64,
    problems: Vec<String>,
}

async fn scenario() -> Run {
    let cluster = Arc::new(Cluster::start_full(3, |_| {}, true).await);
    let node = cluster.client_node();
    // The whole run on the client's node: one client writes both files, so the second
    // write meets the connections the first left idle.
    let on_node = cluster.clone();
    node.spawn(async move { run_on_client_node(&on_node).await }).await.expect("the client's task")
}

async fn write(client: &Client, path: &'static str, data: Vec<u8>) -> Result<(), FsError> {
    client
        .run(|txn| {
            let data = data.clone();
            async move { txn.write_file(path, &data).await }
        })
        .await
}

async fn statuses(client: &Client) -> BTreeMap<String, Result<cffs_proto::BlockStatusResponse, FsError>> {
    let map = client.cluster_map(true).await.expect("map");
    client.block_server_status(&map).await
}

async fn run_on_client_node(cluster: &Cluster) -> Run {
    let mut run = Run::default();
    let client = Cluster::connect(&cluster.endpoints(), ClientOptions::default());
    if let Err(error) = write(&client, "/a", content(1)).await {
        run.problems.push(format!("writing /a: {error}"));
        return run;
    }
    let before = statuses(&client).await;
    run.data_port_puts_before = before.values().filter_map(|s| s.as_ref().ok()).map(|s| s.data_port_puts).sum();

    cluster.kill_block(5);
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.restart_block(5);
    tokio::time::sleep(Duration::from_secs(1)).await;
    if let Err(error) = write(&client, "/b", content(2)).await {
        run.problems.push(format!("writing /b after the restart: {error}"));
    }
    match &statuses(&client).await[&Cluster::block_addr_of(5)] {
        Ok(server) => {
            run.data_port_puts_after_restart = server.data_port_puts;
            run.puts_after_restart = server.puts;
        }
        Err(error) => run.problems.push(format!("server 5 did not answer after its restart: {error}")),
    }

    let cold = ClientOptions { cache: false, block_cache_bytes: 0, ..ClientOptions::default() };
    let reader = Cluster::connect(&cluster.endpoints(), cold);
    for (path, file) in [("/a", 1), ("/b", 2)] {
        match reader.run(|txn| async move { txn.read_file(path).await }).await {
            Ok(data) if data == content(file) => {}
            Ok(data) => run.problems.push(format!("{path} read back {} bytes, not what was written", data.len())),
            Err(error) => run.problems.push(format!("reading {path}: {error}")),
        }
    }
    run
}

#[test]
fn a_restarted_block_server_s_data_port_is_found_again_and_no_block_is_lost() {
    let runs = runner::planted_seeds(None, SEEDS, scenario);
    for (seed, run) in runs.iter().enumerate() {
        eprintln!("data port seed {}: {run:?}", seed + 1);
        assert!(run.problems.is_empty(), "seed {}: {:?}", seed + 1, run.problems);
        assert!(run.data_port_puts_before > 0, "seed {}: the first file went over gRPC only", seed + 1);
        assert!(
            run.data_port_puts_after_restart > 0,
            "seed {}: the restarted server took {} puts, none over its data port",
            seed + 1,
            run.puts_after_restart
        );
    }
}
