//! Membership from the CLI's functions (`cffs cluster add-node`, `remove-node`,
//! `replace-node`) on real processes: a change that would leave the new voters without a
//! quorum is refused and changes nothing; a replica added joins with the data; a dead one is
//! removed and replaced, and the group serves on with the new members alone.

use std::collections::BTreeSet;
use std::time::Duration;

use cffs_client::membership;
use cffs_client::Client;

use crate::harness::ProcessCluster;

async fn voters(client: &Client) -> BTreeSet<u64> {
    let status = client.cluster_status().await.expect("cluster status");
    status.members.iter().filter(|m| m.voter).map(|m| m.id).collect()
}

/// Waits until a just-started replica answers.
async fn answers(client: &Client, addr: &str) {
    for _ in 0..200 {
        if client.replica_status(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{addr} never answered");
}

async fn write(client: &Client, path: &str) {
    let path = path.to_string();
    client
        .run(|txn| {
            let path = path.clone();
            async move { txn.write_file(&path, path.as_bytes()).await }
        })
        .await
        .expect("write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_are_added_removed_and_replaced_and_quorum_losing_changes_refused() {
    let mut cluster = ProcessCluster::start(3);
    let leader = cluster.wait_for_leader(Duration::from_secs(60)).await;
    let client = cluster.client();
    write(&client, "/before").await;

    // With one follower down, removing the other would leave {leader, dead}: refused.
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let (dead, alive) = (followers[0], followers[1]);
    cluster.kill(dead);
    let refused = membership::remove_node(&client, alive).await.unwrap_err();
    assert!(refused.contains("refused") && refused.contains(&format!("[{dead}]")), "{refused}");
    assert_eq!(voters(&client).await, BTreeSet::from([1, 2, 3]), "a refused change changes nothing");

    // A replica that was never started cannot be added.
    let missing = membership::add_node(&client, 9, "127.0.0.1:1").await.unwrap_err();
    assert!(missing.contains("does not answer"), "{missing}");

    // Replica 4 joins: learner, catch-up, voter; the dead one is then removed.
    let (four, four_addr) = cluster.start_extra_replica();
    answers(&client, &four_addr).await;
    membership::add_node(&client, four, &four_addr).await.expect("add replica 4");
    assert_eq!(voters(&client).await, BTreeSet::from([1, 2, 3, four]));
    membership::remove_node(&client, dead).await.expect("remove the dead replica");
    let expected: BTreeSet<u64> = [leader, alive, four].into_iter().collect();
    assert_eq!(voters(&client).await, expected);

    // Replace the living follower by replica 5 in one change; then the old leader goes too:
    // replicas 4 and 5, which joined empty, hold the data and a quorum of {leader, 4, 5}.
    let (five, five_addr) = cluster.start_extra_replica();
    answers(&client, &five_addr).await;
    membership::replace_node(&client, alive, five, &five_addr).await.expect("replace a follower");
    let expected: BTreeSet<u64> = [leader, four, five].into_iter().collect();
    assert_eq!(voters(&client).await, expected);
    write(&client, "/after").await;
    cluster.kill(alive);
    cluster.kill(leader);
    // A quorum of {leader, 4, 5} is 2: 4 and 5 elect one of themselves and serve.
    let survivors = Client::connect(&[four_addr.as_str(), five_addr.as_str()]).expect("endpoints");
    cluster.restart(leader);
    for path in ["/before", "/after"] {
        let p = path.to_string();
        let data = survivors
            .run(|txn| {
                let p = p.clone();
                async move { txn.read_file(&p).await }
            })
            .await
            .expect("read through the new members");
        assert_eq!(data, path.as_bytes());
    }
    write(&survivors, "/with-new-members").await;
}
