//! POSIX namespace semantics, end to end: client library → real replicas → back. One
//! cluster; each case works in its own directory.

use std::time::Duration;

use cffs_client::{Client, FsError, Kind, Outcome};

use crate::harness::ProcessCluster;

async fn ok<T>(client: &Client, f: impl AsyncFn(cffs_client::Transaction) -> Result<T, FsError>) -> T {
    let txn = client.begin();
    let value = f(txn.clone()).await.expect("operation");
    assert!(matches!(txn.commit().await.expect("commit"), Outcome::Committed { .. }));
    value
}

async fn err<T: std::fmt::Debug>(
    client: &Client,
    f: impl AsyncFn(cffs_client::Transaction) -> Result<T, FsError>,
) -> FsError {
    let txn = client.begin();
    f(txn.clone()).await.expect_err("the operation must fail")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posix_namespace_semantics() {
    let cluster = ProcessCluster::start(3);
    cluster.wait_for_leader(Duration::from_secs(30)).await;
    let c = cluster.client();

    // mkdir, create, write, read back, stat, readdir.
    ok(&c, async |t| {
        t.mkdir("/a", 0o755).await?;
        t.write_file("/a/f", b"hello").await?;
        // Reads of the transaction's own writes.
        assert_eq!(t.read_file("/a/f").await?, b"hello");
        Ok(())
    })
    .await;
    let (attr, dir, list) =
        ok(&c, async |t| Ok((t.stat("/a/f").await?, t.stat("/a").await?, t.readdir("/a").await?))).await;
    assert_eq!((attr.kind, attr.size, attr.nlink), (Kind::File, 5, 1));
    assert_eq!((dir.kind, dir.nlink), (Kind::Dir, 2));
    assert_eq!(list.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), vec!["f"]);
    assert_eq!(err(&c, async |t| t.mkdir("/a", 0o755).await).await, FsError::Exists);
    assert_eq!(err(&c, async |t| t.create("/a/f", 0o644, true).await).await, FsError::Exists);
    assert_eq!(err(&c, async |t| t.stat("/nope").await).await, FsError::NotFound);
    assert_eq!(err(&c, async |t| t.stat("/a/f/x").await).await, FsError::NotDir);

    // Directory link counts: 2 + subdirectories.
    ok(&c, async |t| t.mkdir_all("/a/sub1/deep", 0o755).await).await;
    ok(&c, async |t| t.mkdir("/a/sub2", 0o755).await).await;
    assert_eq!(ok(&c, async |t| t.stat("/a").await).await.nlink, 4);

    // Wrong kinds.
    assert_eq!(err(&c, async |t| t.readdir("/a/f").await).await, FsError::NotDir);
    assert_eq!(err(&c, async |t| t.rmdir("/a/f").await).await, FsError::NotDir);
    assert_eq!(err(&c, async |t| t.unlink("/a/sub2").await).await, FsError::IsDir);
    assert_eq!(err(&c, async |t| t.read_file("/a").await).await, FsError::IsDir);
    assert_eq!(err(&c, async |t| t.rmdir("/a/sub1").await).await, FsError::NotEmpty);

    // Bad names and paths change nothing.
    let long = format!("/a/{}", "x".repeat(256));
    assert_eq!(err(&c, async |t| t.mkdir(&long, 0o755).await).await, FsError::NameTooLong);
    assert!(matches!(err(&c, async |t| t.mkdir("a/relative", 0o755).await).await, FsError::Invalid(_)));
    assert!(matches!(err(&c, async |t| t.mkdir("/a/.", 0o755).await).await, FsError::Invalid(_) | FsError::Exists));
    assert!(matches!(err(&c, async |t| t.mkdir("/a/..", 0o755).await).await, FsError::Invalid(_) | FsError::Exists));
    ok(&c, async |t| t.mkdir(&format!("/a/{}", "y".repeat(255)), 0o755).await).await;

    // Files over the inline limit need block servers; this cluster has none: a clear error,
    // nothing written (tests/it/blocks.rs has clusters with block groups).
    let big = vec![7u8; cffs_proto::limits::INLINE_DATA_MAX + 1];
    match err(&c, async |t| t.write_file("/a/big", &big).await).await {
        FsError::Unavailable(why) => assert!(why.contains("no block groups"), "{why}"),
        other => panic!("a large write without block groups: {other:?}"),
    }
    assert!(!ok(&c, async |t| t.exists("/a/big").await).await);
    let max = vec![7u8; cffs_proto::limits::INLINE_DATA_MAX];
    ok(&c, async |t| t.write_file("/a/max", &max).await).await;
    assert_eq!(ok(&c, async |t| t.read_file("/a/max").await).await.len(), max.len());

    // rename: over an existing file replaces it (its inode goes with its last name).
    ok(&c, async |t| {
        t.mkdir("/r", 0o755).await?;
        t.write_file("/r/src", b"new").await?;
        t.write_file("/r/dst", b"old").await
    })
    .await;
    let old_ino = ok(&c, async |t| t.stat("/r/dst").await).await.ino;
    ok(&c, async |t| t.rename("/r/src", "/r/dst").await).await;
    assert_eq!(ok(&c, async |t| t.read_file("/r/dst").await).await, b"new");
    assert!(!ok(&c, async |t| t.exists("/r/src").await).await);
    assert_ne!(ok(&c, async |t| t.stat("/r/dst").await).await.ino, old_ino);
    // A directory over an empty directory: allowed; over a non-empty one: ENOTEMPTY.
    ok(&c, async |t| {
        t.mkdir_all("/r/d1/inner", 0o755).await?;
        t.mkdir("/r/empty", 0o755).await?;
        t.mkdir_all("/r/full/x", 0o755).await
    })
    .await;
    assert_eq!(err(&c, async |t| t.rename("/r/d1", "/r/full").await).await, FsError::NotEmpty);
    ok(&c, async |t| t.rename("/r/d1", "/r/empty").await).await;
    assert!(ok(&c, async |t| t.exists("/r/empty/inner").await).await);
    // Kind mismatches.
    assert_eq!(err(&c, async |t| t.rename("/r/dst", "/r/full").await).await, FsError::IsDir);
    assert_eq!(err(&c, async |t| t.rename("/r/full", "/r/dst").await).await, FsError::NotDir);
    // Into its own subtree: EINVAL.
    assert!(matches!(err(&c, async |t| t.rename("/r/full", "/r/full/x/y").await).await, FsError::Invalid(_)));
    // Across directories: link counts move with the directory.
    ok(&c, async |t| t.rename("/r/full/x", "/a/x").await).await;
    assert_eq!(ok(&c, async |t| t.stat("/r/full").await).await.nlink, 2);
    assert_eq!(ok(&c, async |t| t.stat("/a").await).await.nlink, 6); // sub1 sub2 yyy… x

    // Hard links.
    ok(&c, async |t| t.link("/a/f", "/r/f-link").await).await;
    assert_eq!(ok(&c, async |t| t.stat("/a/f").await).await.nlink, 2);
    assert_eq!(ok(&c, async |t| t.read_file("/r/f-link").await).await, b"hello");
    ok(&c, async |t| t.unlink("/a/f").await).await;
    assert_eq!(ok(&c, async |t| t.stat("/r/f-link").await).await.nlink, 1);
    assert_eq!(err(&c, async |t| t.link("/a", "/r/dir-link").await).await, FsError::NotPermitted);

    // Unlink of an open name: the handle still reads it within the transaction.
    ok(&c, async |t| t.write_file("/r/open", b"still here").await).await;
    ok(&c, async |t| {
        let handle = t.open("/r/open").await?;
        t.unlink("/r/open").await?;
        assert!(!t.exists("/r/open").await?);
        assert_eq!(t.read_handle(handle).await?, b"still here");
        Ok(())
    })
    .await;
    assert!(!ok(&c, async |t| t.exists("/r/open").await).await);

    // Symlinks.
    ok(&c, async |t| t.symlink("/r/dst", "/r/sym").await).await;
    assert_eq!(ok(&c, async |t| t.readlink("/r/sym").await).await, "/r/dst");
    assert_eq!(ok(&c, async |t| t.read_file("/r/sym").await).await, b"new");
    assert_eq!(ok(&c, async |t| t.lstat("/r/sym").await).await.kind, Kind::Symlink);
    ok(&c, async |t| {
        t.symlink("/r/loop2", "/r/loop1").await?;
        t.symlink("/r/loop1", "/r/loop2").await
    })
    .await;
    assert_eq!(err(&c, async |t| t.read_file("/r/loop1").await).await, FsError::Loop);

    // truncate, chmod.
    ok(&c, async |t| t.truncate("/r/dst", 1).await).await;
    assert_eq!(ok(&c, async |t| t.read_file("/r/dst").await).await, b"n");
    ok(&c, async |t| t.chmod("/r/dst", 0o600).await).await;
    assert_eq!(ok(&c, async |t| t.stat("/r/dst").await).await.mode, 0o600);

    // Narrow conflicts, through the servers.
    ok(&c, async |t| t.mkdir("/n", 0o755).await).await;
    let (t1, t2) = (c.begin(), c.begin());
    t1.create("/n/one", 0o644, true).await.unwrap();
    t2.create("/n/two", 0o644, true).await.unwrap();
    assert!(matches!(t1.commit().await.unwrap(), Outcome::Committed { .. }));
    assert!(
        matches!(t2.commit().await.unwrap(), Outcome::Committed { .. }),
        "creates of different names in one directory both commit"
    );
    let (reader, writer) = (c.begin(), c.begin());
    assert_eq!(reader.readdir("/n").await.unwrap().len(), 2);
    reader.write_file("/n-summary", b"2 files").await.unwrap();
    writer.create("/n/three", 0o644, true).await.unwrap();
    assert!(matches!(writer.commit().await.unwrap(), Outcome::Committed { .. }));
    assert!(
        matches!(reader.commit().await.unwrap(), Outcome::Conflict { .. }),
        "a readdir conflicts with a concurrent create there"
    );
    assert!(!ok(&c, async |t| t.exists("/n-summary").await).await, "a conflicting commit changes nothing");

    // Over the key limit: refused whole.
    let huge = c.begin();
    for i in 0..(cffs_proto::limits::TXN_KEYS_MAX / 2) {
        huge.create(&format!("/n/many-{i}"), 0o644, true).await.unwrap();
    }
    assert!(matches!(huge.commit().await, Err(FsError::TooLarge(_))));
    assert!(!ok(&c, async |t| t.exists("/n/many-0").await).await);

    // rmdir of an empty directory; the root cannot be removed.
    ok(&c, async |t| t.rmdir("/r/full").await).await;
    assert!(matches!(err(&c, async |t| t.rmdir("/").await).await, FsError::Busy(_)));
}
