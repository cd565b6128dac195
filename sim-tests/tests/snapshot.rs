//! A replica that misses more of the log than the leader keeps must catch up by snapshot:
//! built by the leader, streamed in chunks over the Raft transport, installed atomically.
//! Afterwards every replica's state machine is identical, key for key.
#![cfg(madsim)]

use std::time::Duration;

use cffs_sim_tests::cluster::Cluster;

async fn cluster_status(cluster: &Cluster) -> Vec<cffs_proto::ClusterStatusResponse> {
    let all = cluster.with_client(|client| async move { client.cluster_status_all().await }).await;
    all.into_iter().filter_map(|(_, s)| s.ok()).collect()
}

async fn status_of(cluster: &Cluster, id: u64) -> cffs_proto::ClusterStatusResponse {
    cluster_status(cluster).await.into_iter().find(|s| s.node_id == id).expect("replica answers")
}

#[test]
fn a_lagging_replica_catches_up_by_snapshot_and_replicas_agree() {
    cffs_sim_tests::runner::scenario_seeds(a_lagging_replica_catches_up_by_snapshot_and_replicas_agree_scenario);
}

async fn a_lagging_replica_catches_up_by_snapshot_and_replicas_agree_scenario() {
    let cluster = Cluster::start_with(3, |config| {
        config.snapshot_every_entries = 100;
        config.log_keep_after_snapshot = 10;
    })
    .await;
    let leader = cluster.leader().await.expect("leader");
    let lagging = if leader == 3 { 2 } else { 3 };
    let applied_before = status_of(&cluster, lagging).await.last_applied;
    cluster.kill(lagging);

    // Well over one snapshot interval of commits while the replica is down.
    let files = 300;
    cluster
        .with_client(move |client| async move {
            client.run(|txn| async move { txn.mkdir("/s", 0o755).await.map(|_| ()) }).await.expect("mkdir");
            for i in 0..files {
                client
                    .run(|txn| async move { txn.write_file(&format!("/s/f{i}"), format!("{i}").as_bytes()).await })
                    .await
                    .expect("write");
            }
        })
        .await;

    // The leader no longer has the entries the lagging replica misses: only a snapshot can
    // bring it up to date.
    let leader_status = status_of(&cluster, leader).await;
    assert!(leader_status.snapshot_index > 0, "the leader built a snapshot");
    assert!(
        leader_status.purged_index > applied_before,
        "the leader purged its log past the lagging replica ({} <= {applied_before})",
        leader_status.purged_index
    );
    cluster.restart(lagging);
    // Converged: every replica reports the same applied index.
    let mut converged = false;
    for _ in 0..100 {
        let status = cluster.with_client(|client| async move { client.cluster_status_all().await }).await;
        let applied: Vec<u64> = status.iter().filter_map(|(_, s)| s.as_ref().ok()).map(|s| s.last_applied).collect();
        if applied.len() == 3 && applied.iter().all(|a| *a == applied[0]) {
            converged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(converged, "the restarted replica did not catch up");
    let states: Vec<_> = (1..=3).map(|id| cluster.state_of(id)).collect();
    assert!(states[0].len() > files, "the state holds the files ({} keys)", states[0].len());
    let lagging_status = status_of(&cluster, lagging).await;
    assert!(lagging_status.snapshot_index >= leader_status.purged_index, "the lagging replica installed a snapshot");
    for id in 2..=3 {
        assert!(states[id - 1] == states[0], "replica {id}'s state differs from replica 1's");
    }
    // And the data reads back through the restarted replica's group.
    let n = cluster
        .with_client(move |client| async move {
            client.run(|txn| async move { Ok(txn.readdir("/s").await?.len()) }).await.expect("readdir")
        })
        .await;
    assert_eq!(n, files);
}
