//! A real three-process cluster: concurrent clients increment counters through
//! `Client::run`; the leader is SIGKILLed mid-run and restarted. Every acknowledged increment
//! must be in the final values, none applied twice.

use std::time::{Duration, Instant};

use cffs_client::{Client, FsError};

use crate::harness::ProcessCluster;

const FILES: usize = 4;
const CLIENTS: usize = 6;

async fn increment(client: &Client, file: usize) -> Result<(), FsError> {
    client
        .run(|txn| async move {
            let path = format!("/counters/c{file}");
            let n: u64 = String::from_utf8_lossy(&txn.read_file(&path).await?).parse().unwrap_or(0);
            txn.write_file(&path, (n + 1).to_string().as_bytes()).await
        })
        .await
}

/// Every replica's Raft service answers a probe of the metadata group (group 0) with its log,
/// and refuses a group it does not host, by name. A leader is elected by a majority, so the
/// third replica may not have its first entries yet: each replica is probed until its log is
/// initialized (within a few seconds), not once.
async fn raft_probes_name_their_group(cluster: &ProcessCluster) {
    use cffs_proto::raft_client::RaftClient;
    use cffs_proto::RaftProbeRequest;
    for addr in cluster.endpoints() {
        let mut raft = RaftClient::connect(format!("http://{addr}")).await.expect("connect");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let probe = raft.probe(RaftProbeRequest { group: 0 }).await.expect("probe group 0").into_inner();
            if probe.initialized && probe.last_log_index > 0 {
                break;
            }
            assert!(Instant::now() < deadline, "{addr} has no log 10 s after the election: {probe:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let refused = raft.probe(RaftProbeRequest { group: 9 }).await.expect_err("group 9 is not hosted");
        assert!(refused.message().contains("no raft group 9"), "{addr}: {refused:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_sigkill_loses_no_acknowledged_commit() {
    let mut cluster = ProcessCluster::start(3);
    cluster.wait_for_leader(Duration::from_secs(30)).await;
    raft_probes_name_their_group(&cluster).await;
    let setup = cluster.client();
    setup
        .run(|txn| async move {
            txn.mkdir_all("/counters", 0o755).await?;
            for file in 0..FILES {
                txn.write_file(&format!("/counters/c{file}"), b"0").await?;
            }
            Ok(())
        })
        .await
        .expect("setup");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let client = cluster.client();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = [0u64; FILES];
            let mut unknown = [0u64; FILES];
            let mut i = c;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let file = i % FILES;
                i += 1;
                match increment(&client, file).await {
                    Ok(()) => acked[file] += 1,
                    Err(FsError::OutcomeUnknown(_)) => unknown[file] += 1,
                    Err(error) => panic!("increment failed: {error}"),
                }
            }
            (acked, unknown)
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(5)).await;
    cluster.kill(leader);
    let killed = Instant::now();
    // A fresh client's first commit after the kill measures how long the cluster was down.
    let probe = cluster.client();
    probe.run(|txn| async move { txn.write_file("/probe", b"x").await }).await.expect("commit after the kill");
    let down = killed.elapsed();
    eprintln!("leader {leader} SIGKILLed; the cluster committed again after {down:?}");
    // Two election timeouts (600 ms each) plus the client's retry backoff; generous, since a
    // loaded CI machine is slow (the simulation checks the bound exactly).
    assert!(down < Duration::from_secs(10), "cluster down for {down:?}\n{}", cluster.logs());

    tokio::time::sleep(Duration::from_millis(1000)).await;
    cluster.restart(leader);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    let mut acked = [0u64; FILES];
    let mut unknown = [0u64; FILES];
    for task in tasks {
        let (a, u) = task.await.expect("client task");
        for file in 0..FILES {
            acked[file] += a[file];
            unknown[file] += u[file];
        }
    }
    let values: Vec<u64> = setup
        .run(|txn| async move {
            let mut values = Vec::new();
            for file in 0..FILES {
                values.push(
                    String::from_utf8_lossy(&txn.read_file(&format!("/counters/c{file}")).await?)
                        .parse()
                        .unwrap_or(u64::MAX),
                );
            }
            Ok(values)
        })
        .await
        .expect("final read");
    eprintln!("acknowledged {acked:?}, unknown {unknown:?}, final {values:?}");
    assert!(acked.iter().sum::<u64>() > 0);
    for file in 0..FILES {
        assert!(
            acked[file] <= values[file] && values[file] <= acked[file] + unknown[file],
            "counter {file}: final {} but {} acknowledged, {} unknown",
            values[file],
            acked[file],
            unknown[file]
        );
    }

    // The restarted replica caught up: every replica reports the same applied index once
    // writes stop.
    let client = cluster.client();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let applied: Vec<u64> =
            client.cluster_status_all().await.into_iter().filter_map(|(_, s)| s.ok()).map(|s| s.last_applied).collect();
        if applied.len() == 3 && applied.iter().all(|a| *a == applied[0]) {
            break;
        }
        assert!(Instant::now() < deadline, "replicas did not converge: {applied:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
