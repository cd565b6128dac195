//! Cluster-wide settings (`server/src/metadata/settings.rs`): the first leader stores its
//! lease settings in the replicated state, and a replica started with other ones stops as
//! soon as it learns them (its Raft core shut down), while the rest of the cluster serves.
#![cfg(madsim)]

use std::time::Duration;

use cffs_sim_tests::cluster::Cluster;

#[test]
fn a_replica_with_other_lease_settings_stops_and_the_others_serve() {
    cffs_sim_tests::runner::scenario_seeds(|| async {
        // Replica 3 asks for twice the lease: it must never lead or follow with it.
        let cluster = Cluster::start_with(3, |config| {
            if config.id == 3 {
                config.leases.duration *= 2;
            }
        })
        .await;
        cluster
            .with_client(
                |client| async move { client.run(|txn| async move { txn.write_file("/f", b"1").await }).await },
            )
            .await
            .expect("the cluster commits with two replicas that agree");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let all = cluster.with_client(|client| async move { client.cluster_status_all().await }).await;
        for (addr, status) in &all {
            let status = status.as_ref().unwrap_or_else(|e| panic!("{addr}: {e}"));
            let serving = status.state == "Leader" || status.state == "Follower";
            assert_eq!(serving, status.node_id != 3, "{addr} is {}", status.state);
        }
        // Restarted with the same flags, it refuses to start at all.
        cluster.kill(3);
        cluster.restart(3);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let all = cluster.with_client(|client| async move { client.cluster_status_all().await }).await;
        assert_eq!(all.iter().filter(|(_, s)| s.is_ok()).count(), 2, "{all:?}");
    });
}
