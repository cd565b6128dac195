//! Malformed and oversized requests sent straight to a replica over gRPC (no client library
//! in the way): each is refused with a clear error and changes nothing.

use std::time::Duration;

use cffs_proto::metadata_client::MetadataClient;
use cffs_proto::{
    write_op, CommitRequest, Dentry, DentryKey, ErrorCode, FileKind, Inode, LookupRequest, PutDentry, ReadDirRequest,
    ReadEntry, WriteOp,
};

use crate::harness::ProcessCluster;

fn put_dentry(name: &[u8]) -> WriteOp {
    WriteOp {
        op: Some(write_op::Op::PutDentry(PutDentry {
            key: Some(DentryKey { parent: 1, name: name.to_vec() }),
            dentry: Some(Dentry { ino: 99, kind: FileKind::Regular as i32 }),
        })),
    }
}

fn code(status: &tonic::Status) -> ErrorCode {
    cffs_proto::error_code::detail_code(&cffs_proto::error_code::detail(status))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused_and_change_nothing() {
    let cluster = ProcessCluster::start(3);
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
    let addr = format!("http://127.0.0.1:{}", cluster.ports[leader as usize - 1]);
    let mut rpc = MetadataClient::connect(addr).await.expect("connect to the leader");

    let txn_id = vec![7u8; 16];
    let cases: Vec<(&str, CommitRequest, ErrorCode)> = vec![
        (
            "short txn id",
            CommitRequest {
                session_id: 0,
                txn_id: vec![1, 2, 3],
                reads: vec![],
                writes: vec![put_dentry(b"x")],
                blocks_checked_at: 0,
                lease_writes: false,
                settled_below: 0,
            },
            ErrorCode::InvalidArgument,
        ),
        (
            "name ..",
            CommitRequest {
                session_id: 0,
                txn_id: txn_id.clone(),
                reads: vec![],
                writes: vec![put_dentry(b"..")],
                blocks_checked_at: 0,
                lease_writes: false,
                settled_below: 0,
            },
            ErrorCode::InvalidArgument,
        ),
        (
            "name with /",
            CommitRequest {
                session_id: 0,
                txn_id: txn_id.clone(),
                reads: vec![],
                writes: vec![put_dentry(b"a/b")],
                blocks_checked_at: 0,
                lease_writes: false,
                settled_below: 0,
            },
            ErrorCode::InvalidArgument,
        ),
        (
            "name with NUL",
            CommitRequest {
                session_id: 0,
                txn_id: txn_id.clone(),
                reads: vec![],
                writes: vec![put_dentry(b"a\0b")],
                blocks_checked_at: 0,
                lease_writes: false,
                settled_below: 0,
            },
            ErrorCode::InvalidArgument,
        ),
        (
            "name of 256 bytes",
            CommitRequest {
                session_id: 0,
                txn_id: txn_id.clone(),
                reads: vec![],
                writes: vec![put_dentry(&[b'n'; 256])],
                blocks_checked_at: 0,
                lease_writes: false,
                settled_below: 0,
            },
            ErrorCode::InvalidArgument,
        ),
        (
            "empty write",
            CommitRequest {
                session_id: 0,
                txn_id: txn_id.clone(),
                reads: vec![],
                writes: vec![WriteOp { op: None }],
                blocks_checked_at: 0,
                lease_writes: false,
                settled_below: 0,
            },
            ErrorCode::InvalidArgument,
        ),
        (
            "read of an empty key",
            CommitRequest {
                session_id: 0,
                txn_id: txn_id.clone(),
                reads: vec![ReadEntry { key: None, version: 0 }],
                writes: vec![put_dentry(b"x")],
                blocks_checked_at: 0,
                lease_writes: false,
                settled_below: 0,
            },
            ErrorCode::InvalidArgument,
        ),
        (
            "delete the root",
            CommitRequest {
                session_id: 0,
                txn_id: txn_id.clone(),
                reads: vec![],
                writes: vec![WriteOp { op: Some(write_op::Op::DeleteInode(1)) }],
                blocks_checked_at: 0,
                lease_writes: false,
                settled_below: 0,
            },
            ErrorCode::InvalidArgument,
        ),
        (
            "inline data over the limit",
            CommitRequest {
                session_id: 0,
                txn_id: txn_id.clone(),
                reads: vec![],
                writes: vec![WriteOp {
                    op: Some(write_op::Op::PutInode(Inode {
                        ino: 99,
                        kind: FileKind::Regular as i32,
                        size: 65_537,
                        data: vec![0; 65_537],
                        ..Default::default()
                    })),
                }],
                blocks_checked_at: 0,
                lease_writes: false,
                settled_below: 0,
            },
            ErrorCode::InvalidArgument,
        ),
        (
            "too many keys",
            CommitRequest {
                session_id: 0,
                txn_id: txn_id.clone(),
                reads: vec![],
                writes: (0..5000).map(|i| put_dentry(format!("k{i}").as_bytes())).collect(),
                blocks_checked_at: 0,
                lease_writes: false,
                settled_below: 0,
            },
            ErrorCode::TooLarge,
        ),
    ];
    for (what, request, expected) in cases {
        let status = rpc.commit(request).await.expect_err(what);
        assert_eq!(code(&status), expected, "{what}: {status}");
        assert!(!status.message().is_empty(), "{what}: the error says why");
    }
    let status = rpc
        .lookup(LookupRequest { session_id: 0, key: Some(DentryKey { parent: 1, name: b"".to_vec() }) })
        .await
        .expect_err("empty name");
    assert_eq!(code(&status), ErrorCode::InvalidArgument);
    let status = rpc
        .read_dir(ReadDirRequest { session_id: 0, ino: 0, start_after: vec![], limit: 0 })
        .await
        .expect_err("inode 0");
    assert_eq!(code(&status), ErrorCode::InvalidArgument);

    // A message over the transport limit is refused by the transport itself.
    let huge = CommitRequest {
        session_id: 0,
        txn_id: txn_id.clone(),
        reads: vec![],
        writes: vec![put_dentry(&vec![b'x'; 17 * 1024 * 1024])],
        blocks_checked_at: 0,
        lease_writes: false,
        settled_below: 0,
    };
    assert!(rpc.commit(huge).await.is_err());

    // Nothing changed: the root is still empty, and the replica still serves.
    let listing = rpc
        .read_dir(ReadDirRequest { session_id: 0, ino: 1, start_after: vec![], limit: 0 })
        .await
        .expect("readdir root")
        .into_inner();
    assert!(listing.entries.is_empty(), "{:?}", listing.entries);
}
