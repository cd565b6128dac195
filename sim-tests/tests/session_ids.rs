//! A leader restarted into its stored term is a new process leading an old term: the session
//! ids it hands out must not be ones its previous process gave to other clients (chaos seed
//! 4494). The scenario: the leader crashes and restarts at once, keeping its leadership; a
//! reader caches /f under a lease from the new process; then commits stamped with the ids the
//! old process handed out first, to clients that warmed up before the restart (as a commit
//! retried across the restart is), overwrite /f.
//! Each commit must invalidate the reader's lease, so the reader's next read-only transaction
//! sees the overwrite. With session numbers reserved on disk that holds; planted away
//! (`--plant reuse-session-ids`), a stamped commit drops the reader's lease as the writer's
//! own, without an invalidation, and the reader commits a stale read from its cache.
#![cfg(madsim)]

use std::time::Duration;

use cffs_proto::metadata_client::MetadataClient;
use cffs_proto::{write_op, CommitRequest, DentryKey, GetInodeRequest, Key, LookupRequest, ReadEntry, WriteOp};
use cffs_server::constants::ROOT_INO;
use cffs_server::raft::network::channel;
use cffs_sim_tests::cluster::Cluster;
use cffs_sim_tests::runner::{self, Planted};

const SEEDS: u64 = 16;
/// The ids stamped on the overwrites: the first ones the leader's first process handed out
/// in its term (to the clients that warm up before the restart).
const STAMPED_SESSION_NUMBERS: u64 = 4;

#[derive(Debug)]
struct Run {
    /// The leader came back as the leader of its stored term (the case under test).
    restored: bool,
    /// Reads that missed an overwrite acknowledged before they began.
    stale: Vec<String>,
    /// Reads the reader served from its cache.
    hits: u64,
}

async fn scenario() -> Run {
    let cluster = Cluster::start(3).await;
    cluster
        .with_client(|client| async move { client.run(|txn| async move { txn.write_file("/f", b"0").await }).await })
        .await
        .expect("setup");
    // Clients with sessions on the leader before it restarts: the ids stamped below are ones
    // its first process really handed out (each client's first cache hit proves its session).
    for _ in 0..STAMPED_SESSION_NUMBERS {
        cluster
            .with_client(|client| async move {
                for _ in 0..50 {
                    let _ = client.run(|txn| async move { txn.read_file("/f").await }).await;
                    if client.cache_stats().hits > 0 {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                panic!("no session opened before the restart");
            })
            .await;
    }
    let status = cluster.with_client(|client| async move { client.cluster_status().await }).await.expect("status");
    let (leader, term) = (status.leader_id, status.term);
    cluster.kill(leader);
    cluster.restart(leader);
    let restored = wait_for_leader_in(&cluster, leader, term).await;
    if !restored {
        return Run { restored, stale: Vec::new(), hits: 0 };
    }

    let endpoints = cluster.endpoints();
    let leader_addr = Cluster::addr_of(leader);
    cluster
        .client_node()
        .spawn(async move {
            let reader = cffs_client::Client::connect(&endpoints).expect("endpoints");
            let read = || reader.run(|txn| async move { txn.read_file("/f").await });
            // Warm: /f cached under a lease of the restarted process's session.
            for _ in 0..20 {
                let _ = read().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let mut grpc = MetadataClient::new(channel(&leader_addr).expect("address"));
            let ino = grpc
                .lookup(LookupRequest { key: Some(DentryKey { parent: ROOT_INO, name: b"f".to_vec() }), session_id: 0 })
                .await
                .expect("lookup /f")
                .into_inner()
                .dentry
                .expect("/f exists")
                .ino;
            let mut stale = Vec::new();
            for number in 1..=STAMPED_SESSION_NUMBERS {
                let value = number.to_string();
                overwrite(&leader_addr, ino, value.as_bytes(), (term << 32) | number).await;
                let seen = read().await.expect("read /f");
                if seen != value.as_bytes() {
                    stale.push(format!(
                        "after an overwrite stamped with session {term}:{number} was acknowledged, /f read {:?}",
                        String::from_utf8_lossy(&seen)
                    ));
                }
            }
            Run { restored, stale, hits: reader.cache_stats().hits }
        })
        .await
        .expect("reader task")
}

/// Waits for a leader; true when it is `leader` in `term` (restored from its stored vote).
async fn wait_for_leader_in(cluster: &Cluster, leader: u64, term: u64) -> bool {
    for _ in 0..100 {
        let all = cluster.with_client(|client| async move { client.cluster_status_all().await }).await;
        if let Some(now) = all.iter().filter_map(|(_, s)| s.as_ref().ok()).find(|s| s.state == "Leader") {
            return now.node_id == leader && now.term == term;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Overwrites the inline data of inode `ino`, with a commit stamped with `session_id`, and
/// waits for it to be acknowledged.
async fn overwrite(addr: &str, ino: u64, data: &[u8], session_id: u64) {
    let mut grpc = MetadataClient::new(channel(addr).expect("address"));
    loop {
        let Ok(reply) = grpc.get_inode(GetInodeRequest { ino, session_id: 0 }).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let reply = reply.into_inner();
        let mut inode = reply.inode.expect("the inode exists");
        inode.data = data.to_vec();
        inode.size = data.len() as u64;
        let txn_id: [u8; 16] = madsim::rand::random();
        let request = CommitRequest {
            txn_id: txn_id.to_vec(),
            reads: vec![ReadEntry { key: Some(Key::inode(ino)), version: reply.version }],
            writes: vec![WriteOp { op: Some(write_op::Op::PutInode(inode)) }],
            session_id,
            blocks_checked_at: 0,
            lease_writes: false,
            settled_below: 0,
        };
        match grpc.commit(request).await.map(|r| r.into_inner().outcome) {
            Ok(Some(cffs_proto::commit_response::Outcome::CommittedVersion(_))) => return,
            // A conflict, an unknown outcome or a refusal: read again and retry.
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[test]
fn a_leader_restarted_in_its_term_never_hands_out_an_id_twice() {
    let runs = runner::planted_seeds(None, SEEDS, scenario);
    let restored = runs.iter().filter(|r| r.restored).count();
    eprintln!("session ids: {restored} of {SEEDS} seeds restored the leader in its term");
    assert!(restored > 0, "the scenario restarts a leader into its own term: {runs:?}");
    for (seed, run) in (1..).zip(&runs) {
        assert!(run.stale.is_empty(), "seed {seed}: {:?}", run.stale);
    }
    assert!(runs.iter().any(|r| r.hits > 0), "the reader served reads from its cache: {runs:?}");
}

#[test]
fn a_leader_that_reuses_session_ids_is_caught() {
    let runs = runner::planted_seeds(Some(Planted::ReuseSessionIds), SEEDS, scenario);
    let caught = runs.iter().position(|run| !run.stale.is_empty());
    eprintln!("planted reuse-session-ids: first caught at seed {:?} of {SEEDS}", caught.map(|i| i + 1));
    assert!(caught.is_some(), "no stale read with reused session ids: {runs:?}");
}
