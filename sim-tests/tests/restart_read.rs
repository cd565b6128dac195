//! A leader that loses power and restarts keeps its leadership (openraft restores it from the
//! stored vote), with a commit index and state machine older than commits it acknowledged.
//! Its reads must still see those commits (the read index's restart floor; chaos seed 182
//! found the stale read). The scenario sets up that race: the only live follower is behind
//! and confirms the leader's term at once, while the commit index can move only after the
//! leader's replication stream, backing off after failing to reach it, has caught it up.
//!
//! The same scenario with the floor planted away must read stale data in some seed, which
//! shows the scenario exercises what it claims to.
#![cfg(madsim)]

use std::time::Duration;

use cffs_server::storage::sim_disk::UnsyncedFate;
use cffs_sim_tests::cluster::Cluster;
use cffs_sim_tests::runner::{self, Planted};

const SEEDS: u64 = 12;
const LAG_COMMITS: usize = 40;

/// What one run saw.
#[derive(Debug)]
struct Run {
    restarted_as_leader: bool,
    read: Vec<u8>,
}

async fn scenario() -> Run {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await.expect("a leader");
    let others: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let (lagging, follower) = (others[0], others[1]);
    write(&cluster, "v0").await;

    // The lagging replica misses every commit from here on.
    cluster.kill(lagging);
    for i in 0..LAG_COMMITS {
        write(&cluster, &format!("v{}", i + 1)).await;
    }
    let last = format!("v{LAG_COMMITS}");
    let term =
        cluster.with_client(|client| async move { client.cluster_status().await }).await.expect("cluster status").term;

    // The up-to-date follower goes down and the leader loses power: its unsynced commit index
    // and state are gone, its synced log is not. It restarts as the leader of its term while
    // the lagging replica is still down, so its replication stream to that replica fails and
    // backs off; the replica then comes back (its vote is still this term's, so it follows
    // this leader) and answers the read rounds' heartbeats long before that stream retries.
    cluster.kill(follower);
    cluster.kill(leader);
    cluster.disk(leader).power_loss(|_| UnsyncedFate::Dropped);
    cluster.restart(leader);
    tokio::time::sleep(Duration::from_millis(50)).await;
    cluster.restart(lagging);

    // The reader asks the restarted leader directly.
    let only_leader = [Cluster::addr_of(leader)];
    let read = cluster
        .client_node()
        .spawn(async move {
            let client = cffs_client::Client::connect(&only_leader).expect("endpoint is valid");
            loop {
                match client.begin().read_file("/f").await {
                    Ok(data) => return data,
                    Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
        })
        .await
        .expect("reader task");
    let status = cluster.with_client(|client| async move { client.cluster_status_all().await }).await;
    let restarted_as_leader = status
        .iter()
        .filter_map(|(_, s)| s.as_ref().ok())
        .any(|s| s.node_id == leader && s.state == "Leader" && s.term == term);
    assert!(!read.is_empty(), "the file exists");
    Run { restarted_as_leader, read: if read == last.as_bytes() { b"latest".to_vec() } else { read } }
}

async fn write(cluster: &Cluster, value: &str) {
    let value = value.to_string();
    cluster
        .with_client(move |client| async move {
            client
                .run(|txn| {
                    let value = value.clone();
                    async move { txn.write_file("/f", value.as_bytes()).await }
                })
                .await
        })
        .await
        .expect("write");
}

fn run_seeds(plant: Option<Planted>) -> Vec<Run> {
    runner::planted_seeds(plant, SEEDS, scenario)
}

#[test]
fn a_leader_restarted_after_power_loss_reads_its_acknowledged_commits() {
    let runs = run_seeds(None);
    let restored = runs.iter().filter(|r| r.restarted_as_leader).count();
    eprintln!("restart floor: {restored} of {SEEDS} seeds restored the leader in its term");
    assert!(restored > 0, "the scenario restarts a leader in its own term: {runs:?}");
    for (seed, run) in (1..).zip(&runs) {
        assert_eq!(run.read, b"latest", "seed {seed}: a read after the restart missed acknowledged commits: {run:?}");
    }
}

#[test]
fn without_the_restart_floor_the_same_scenario_reads_stale_data() {
    let runs = run_seeds(Some(Planted::NoRestartFloor));
    let stale = runs.iter().filter(|r| r.read != b"latest").count();
    eprintln!("planted no-restart-floor: {stale} of {SEEDS} seeds read stale data");
    assert!(stale > 0, "the scenario must expose a missing restart floor: {runs:?}");
}
