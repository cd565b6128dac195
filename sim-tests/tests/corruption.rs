//! A flipped bit on a replica's disk is caught by the record's crc, and a disk that fails
//! reads is not taken for one that holds nothing: the replica stops serving rather than
//! answer from state it cannot trust (`storage/codec.rs`, `storage/fail_stop.rs`):
//! - a rotted state value on the leader: the read that meets it fails, the leader stops, a
//!   new leader serves the right content;
//! - a rotted vote on a follower: the follower cannot start, the others go on;
//! - the leader's disk fails every read: the leader stops, a new leader serves the right
//!   content.
//!
//! With the checks planted away (`--plant skip-checksums`), the same rotted value is served;
//! with failed reads answered as absent keys (`--plant read-error-as-absent`), the file is
//! not found. Chaos catches that bug too (`tests/planted.rs`), but only in the seeds where a
//! failing disk meets a leader while clients read past their caches; this scenario makes
//! the meeting certain.
#![cfg(madsim)]

use std::time::Duration;

use cffs_server::storage::keys;
use cffs_server::storage::Cf;
use cffs_sim_tests::cluster::Cluster;
use cffs_sim_tests::runner::{self, Planted};

const SEEDS: u64 = 4;
const CONTENT: &[u8] = b"the content that must come back whole";

async fn write_f(cluster: &Cluster) -> u64 {
    cluster
        .with_client(|client| async move {
            client.run(|txn| async move { txn.write_file("/f", CONTENT).await }).await?;
            client.run(|txn| async move { txn.stat("/f").await.map(|attr| attr.ino) }).await
        })
        .await
        .expect("write /f")
}

/// What a fresh client reads at /f, trying for up to ten seconds.
async fn read_f(cluster: &Cluster) -> Option<Vec<u8>> {
    cluster
        .with_client(|client| async move {
            let read = client.run(|txn| async move { txn.read_file("/f").await });
            tokio::time::timeout(Duration::from_secs(10), read).await.ok().and_then(Result::ok)
        })
        .await
}

/// Rots /f's inode on the leader's disk; returns (what a client then read, whether the old
/// leader still leads).
async fn rotted_value_scenario() -> (Option<Vec<u8>>, bool) {
    let cluster = Cluster::start(3).await;
    let ino = write_f(&cluster).await;
    let leader = cluster.leader().await.expect("a leader");
    // Every replica applied the write before its value is rotted on the leader.
    cluster.wait_converged(Duration::from_secs(10)).await.expect("converged");
    assert!(cluster.disk(leader).corrupt_stored(Cf::State, &keys::inode_key(ino)));
    let read = read_f(&cluster).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still_leads = cluster.leader_quick().await == Some(leader);
    (read, still_leads)
}

#[test]
fn a_rotted_value_on_the_leader_stops_it_and_the_right_content_is_served() {
    for (seed, (read, still_leads)) in (1..).zip(runner::planted_seeds(None, SEEDS, rotted_value_scenario)) {
        assert_eq!(read.as_deref(), Some(CONTENT), "seed {seed}: a read after the rot");
        assert!(!still_leads, "seed {seed}: the replica that met the rot still leads");
    }
}

#[test]
fn with_checksums_planted_away_the_rotted_value_is_served() {
    let runs = runner::planted_seeds(Some(Planted::SkipChecksums), SEEDS, rotted_value_scenario);
    let wrong = runs.iter().filter(|(read, _)| read.as_deref() != Some(CONTENT)).count();
    eprintln!("planted skip-checksums: {wrong} of {SEEDS} seeds read a rotted value");
    assert!(wrong > 0, "the rot went unnoticed by the scenario: {runs:?}");
}

/// Makes the leader's disk fail every read once /f is on every replica; returns what a
/// fresh client then read at /f.
async fn failed_reads_scenario() -> Option<Vec<u8>> {
    let cluster = Cluster::start(3).await;
    write_f(&cluster).await;
    cluster.wait_converged(Duration::from_secs(10)).await.expect("converged");
    let leader = cluster.leader().await.expect("a leader");
    cluster.disk(leader).set_reads_fail(true);
    read_f(&cluster).await
}

#[test]
fn a_leader_whose_disk_fails_reads_stops_and_the_right_content_is_served() {
    for (seed, read) in (1..).zip(runner::planted_seeds(None, SEEDS, failed_reads_scenario)) {
        assert_eq!(read.as_deref(), Some(CONTENT), "seed {seed}: a read while the leader's disk fails reads");
    }
}

#[test]
fn with_failed_reads_taken_for_absent_keys_the_file_is_not_found() {
    let runs = runner::planted_seeds(Some(Planted::ReadErrorAsAbsent), SEEDS, failed_reads_scenario);
    let wrong = runs.iter().filter(|read| read.as_deref() != Some(CONTENT)).count();
    eprintln!("planted read-error-as-absent: {wrong} of {SEEDS} seeds did not read /f whole");
    assert!(wrong > 0, "the failing disk went unnoticed by the scenario: {runs:?}");
}

#[test]
fn a_rotted_vote_keeps_a_follower_down_and_the_others_serve() {
    runner::scenario_seeds(|| async {
        let cluster = Cluster::start(3).await;
        write_f(&cluster).await;
        let leader = cluster.leader().await.expect("a leader");
        let follower = (1..=3).find(|id| *id != leader).expect("a follower");
        cluster.kill(follower);
        let vote = keys::GroupKeys::new(cffs_server::metadata::METADATA_GROUP).meta(keys::META_VOTE);
        assert!(cluster.disk(follower).corrupt_stored(Cf::RaftMeta, &vote));
        cluster.restart(follower);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let all = cluster.with_client(|client| async move { client.cluster_status_all().await }).await;
        let answers = all.iter().filter(|(_, status)| status.is_ok()).count();
        assert_eq!(answers, 2, "the follower with a rotted vote must not serve: {all:?}");
        assert_eq!(read_f(&cluster).await.as_deref(), Some(CONTENT));
    });
}
