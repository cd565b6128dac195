//! A client's settled transactions (docs/design/transactions.md, "Deduplication records"):
//! once a commit says that every transaction of its client below N is settled, their dedup
//! records go, and a late copy of one of them (a retry overtaken by another copy that was
//! answered) is refused, never applied a second time.
//!
//! The scenario sends the copies itself, over the raw gRPC client, as one client would: A
//! writes "one" to /f blindly (no reads, so a second application would succeed), B settles A
//! and writes "two", then A's request comes again. /f must still read "two". Its planted twin,
//! `settled-unchecked`, applies the late copy, and /f reads "one": B's acknowledged write is
//! lost.
#![cfg(madsim)]

use std::time::Duration;

use cffs_proto::metadata_client::MetadataClient;
use cffs_proto::{write_op, CommitRequest, DentryKey, GetInodeRequest, LookupRequest, WriteOp};
use cffs_server::constants::ROOT_INO;
use cffs_server::raft::network::channel;
use cffs_sim_tests::cluster::Cluster;
use cffs_sim_tests::runner::{self, Planted};

const SEEDS: u64 = 4;
const CLIENT: [u8; 8] = [0xc1; 8];

/// Writes /f through the cluster, then A, B and A's late copy over the raw client; returns
/// what a fresh client then reads at /f.
async fn late_copy_scenario() -> Vec<u8> {
    let cluster = Cluster::start(3).await;
    cluster
        .with_client(|client| async move { client.run(|txn| async move { txn.write_file("/f", b"0").await }).await })
        .await
        .expect("create /f");
    let leader = cluster.leader().await.expect("a leader");
    cluster
        .with_client(move |client| async move {
            let mut grpc = MetadataClient::new(channel(&Cluster::addr_of(leader)).expect("address"));
            let key = DentryKey { parent: ROOT_INO, name: b"f".to_vec() };
            let lookup = grpc.lookup(LookupRequest { key: Some(key), session_id: 0 }).await.expect("lookup /f");
            let ino = lookup.into_inner().dentry.expect("/f exists").ino;
            let inode = grpc.get_inode(GetInodeRequest { ino, session_id: 0 }).await.expect("inode");
            let inode = inode.into_inner().inode.expect("the inode exists");
            let write = |seq: u64, settled_below: u64, data: &[u8]| {
                let mut txn_id = CLIENT.to_vec();
                txn_id.extend_from_slice(&seq.to_be_bytes());
                let mut inode = inode.clone();
                inode.data = data.to_vec();
                inode.size = data.len() as u64;
                CommitRequest {
                    txn_id,
                    writes: vec![WriteOp { op: Some(write_op::Op::PutInode(inode)) }],
                    settled_below,
                    ..Default::default()
                }
            };
            let a = write(1, 0, b"one");
            grpc.commit(a.clone()).await.expect("A commits");
            grpc.commit(write(2, 2, b"two")).await.expect("B commits, settling A");
            // The late copy: refused with the fix, applied with the planted bug.
            let _ = grpc.commit(a).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            client.run(|txn| async move { txn.read_file("/f").await }).await.expect("read /f")
        })
        .await
}

#[test]
fn a_late_copy_of_a_settled_transaction_is_refused() {
    for (seed, read) in (1..).zip(runner::planted_seeds(None, SEEDS, late_copy_scenario)) {
        assert_eq!(read, b"two", "seed {seed}: /f after the late copy");
    }
}

#[test]
fn with_settled_transactions_unchecked_a_late_copy_undoes_a_later_write() {
    let runs = runner::planted_seeds(Some(Planted::SettledUnchecked), SEEDS, late_copy_scenario);
    let caught = runs.iter().filter(|read| read.as_slice() != b"two").count();
    eprintln!("planted settled-unchecked: caught in {caught} of {SEEDS} seeds");
    assert!(caught > 0, "the late copy went unnoticed: {runs:?}");
}
