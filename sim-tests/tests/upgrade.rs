//! A cluster whose disks hold the Raft keys of the layout before groups had ids (a log key of
//! the index alone, meta keys that start with their name) comes back whole: each replica moves
//! its keys under the metadata group when it starts (`raft::log_store::migrate_ungrouped`).
//!
//! The scenario stops the whole cluster the hard way, a power loss on every replica, so the
//! state machines lose their unsynced writes and only the log (synced) holds the commits: a
//! replica that did not move its keys finds no log and no vote, and comes back without them.
//! Its planted twin, `ungrouped-keys-left`, does exactly that.
#![cfg(madsim)]

use std::time::Duration;

use cffs_server::storage::sim_disk::{SimDisk, UnsyncedFate};
use cffs_server::storage::{Cf, KvEngine, WriteBatch};
use cffs_sim_tests::cluster::Cluster;
use cffs_sim_tests::runner::{self, Planted};

const SEEDS: u64 = 4;
const FILES: usize = 12;

fn content(i: usize) -> Vec<u8> {
    format!("file {i}, written before the upgrade").into_bytes()
}

/// Rewrites `disk`'s Raft keys as the layout before groups wrote them: the group id (4
/// bytes, 0 for the metadata group) dropped from every `raft_log` and `raft_meta` key.
fn to_layout_before_groups(disk: &SimDisk) -> usize {
    let mut batch = WriteBatch::default();
    let mut moved = 0;
    for cf in [Cf::RaftLog, Cf::RaftMeta] {
        for (key, value) in disk.scan(cf, &[], None, usize::MAX).expect("scan") {
            let old = key.strip_prefix(&[0u8; 4][..]).expect("every key is the metadata group's").to_vec();
            batch.delete(cf, key);
            batch.put(cf, old, value);
            moved += 1;
        }
    }
    disk.write(batch, true).expect("write the old layout");
    moved
}

/// Writes the files, stops every replica with a power loss, puts its disk in the old layout,
/// starts them all; returns the files a client then failed to read back whole (and whether a
/// commit after the upgrade failed).
async fn upgrade_scenario() -> Vec<String> {
    let cluster = Cluster::start(3).await;
    for i in 0..FILES {
        let write = cluster
            .with_client(move |client| async move {
                client.run(|txn| async move { txn.write_file(&format!("/f{i}"), &content(i)).await }).await
            })
            .await;
        write.expect("a write before the upgrade");
    }
    cluster.wait_converged(Duration::from_secs(10)).await.expect("converged before the upgrade");
    for id in 1..=3 {
        cluster.kill(id);
    }
    for id in 1..=3 {
        let disk = cluster.disk(id);
        disk.power_loss(|_| UnsyncedFate::Dropped);
        assert!(to_layout_before_groups(&disk) > 0, "replica {id} had raft keys");
    }
    for id in 1..=3 {
        cluster.restart(id);
    }
    let mut wrong = Vec::new();
    for i in 0..FILES {
        let read = cluster
            .with_client(move |client| async move {
                let read = client.run(|txn| async move { txn.read_file(&format!("/f{i}")).await });
                tokio::time::timeout(Duration::from_secs(20), read).await.ok().and_then(Result::ok)
            })
            .await;
        if read != Some(content(i)) {
            wrong.push(format!("/f{i}: {:?}", read.map(|bytes| String::from_utf8_lossy(&bytes).into_owned())));
        }
    }
    let after = cluster
        .with_client(|client| async move {
            let write = client.run(|txn| async move { txn.write_file("/after", b"after").await });
            tokio::time::timeout(Duration::from_secs(20), write).await
        })
        .await;
    if !matches!(after, Ok(Ok(()))) {
        wrong.push(format!("a commit after the upgrade: {after:?}"));
    }
    wrong
}

#[test]
fn a_cluster_written_before_groups_comes_back_with_every_commit() {
    for (seed, wrong) in (1..).zip(runner::planted_seeds(None, SEEDS, upgrade_scenario)) {
        assert!(wrong.is_empty(), "seed {seed}: {wrong:?}");
    }
}

#[test]
fn with_the_old_keys_left_in_place_commits_are_lost() {
    let runs = runner::planted_seeds(Some(Planted::UngroupedKeysLeft), SEEDS, upgrade_scenario);
    let caught = runs.iter().filter(|wrong| !wrong.is_empty()).count();
    eprintln!("planted ungrouped-keys-left: caught in {caught} of {SEEDS} seeds");
    assert!(caught > 0, "the keys left in place went unnoticed: {runs:?}");
}
