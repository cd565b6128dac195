//! Membership changes through the admin API: a fourth replica joins as a learner, becomes a
//! voter in place of replica 3, and the group keeps committing after replica 3 is gone.
#![cfg(madsim)]

use std::time::Duration;

use cffs_sim_tests::cluster::Cluster;

/// Writes `data` to `path` in one transaction, from a client node.
async fn write(cluster: &Cluster, path: &'static str, data: &'static [u8]) -> Result<(), cffs_client::FsError> {
    cluster
        .with_client(
            move |client| async move { client.run(|txn| async move { txn.write_file(path, data).await }).await },
        )
        .await
}

#[test]
fn a_replica_joins_as_learner_then_replaces_a_voter() {
    cffs_sim_tests::runner::scenario_seeds(a_replica_joins_as_learner_then_replaces_a_voter_scenario);
}

async fn a_replica_joins_as_learner_then_replaces_a_voter_scenario() {
    let cluster = Cluster::start(3).await;
    write(&cluster, "/before", b"1").await.expect("write before the change");

    let peers = (1..=4).map(|id| (id, Cluster::addr_of(id))).collect();
    let new = cluster.add_replica(peers);
    assert_eq!(new, 4);
    let addr = Cluster::addr_of(new);
    cluster.with_client(move |client| async move { client.add_learner(new, &addr).await }).await.expect("add learner");
    cluster
        .with_client(|client| async move { client.change_membership(&[1, 2, 4]).await })
        .await
        .expect("change voters");

    cluster.remove(3);
    let status = cluster.with_client(|client| async move { client.cluster_status().await }).await.expect("status");
    let voters: Vec<u64> = status.members.iter().filter(|m| m.voter).map(|m| m.id).collect();
    assert_eq!(voters, vec![1, 2, 4]);
    write(&cluster, "/after", b"2").await.expect("the new configuration commits without replica 3");

    // The new replica holds the same state as the others once it has applied everything.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(cluster.state_of(4) == cluster.state_of(1), "replica 4's state differs from replica 1's");
}

/// The client's membership functions (`cffs cluster remove-node`, `replace-node`): with a
/// voter down, a removal that would leave the new voters without a quorum is refused and
/// changes nothing; replacing the dead voter by a new, empty replica goes through learner,
/// catch-up and one change of voters, and the group commits with the new member in it.
#[test]
fn membership_changes_that_would_lose_quorum_are_refused() {
    cffs_sim_tests::runner::scenario_seeds(membership_changes_that_would_lose_quorum_are_refused_scenario);
}

async fn membership_changes_that_would_lose_quorum_are_refused_scenario() {
    use cffs_client::membership;

    let cluster = Cluster::start(3).await;
    write(&cluster, "/before", b"1").await.expect("write before the change");
    let leader = cluster.leader().await.expect("a leader");
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let (dead, alive) = (followers[0], followers[1]);
    cluster.kill(dead);

    let refused = cluster.with_client(move |client| async move { membership::remove_node(&client, alive).await }).await;
    let why = refused.expect_err("removing the live follower leaves {leader, dead}");
    assert!(why.contains("refused") && why.contains(&format!("[{dead}]")), "{why}");

    let peers = (1..=4).map(|id| (id, Cluster::addr_of(id))).collect();
    let new = cluster.add_replica(peers);
    let addr = Cluster::addr_of(new);
    cluster
        .with_client(move |client| async move { membership::replace_node(&client, dead, new, &addr).await })
        .await
        .expect("replace the dead voter");
    let status = cluster.with_client(|client| async move { client.cluster_status().await }).await.expect("status");
    let mut voters: Vec<u64> = status.members.iter().filter(|m| m.voter).map(|m| m.id).collect();
    voters.sort_unstable();
    let mut expected = vec![leader, alive, new];
    expected.sort_unstable();
    assert_eq!(voters, expected);
    write(&cluster, "/after", b"2").await.expect("the new configuration commits");
    // With the new replica a voter, losing the old leader's follower still leaves a quorum.
    cluster.kill(alive);
    write(&cluster, "/last", b"3").await.expect("the leader and the new replica commit alone");
}
