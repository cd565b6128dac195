//! File data on block servers, as real processes: copy-on-write cases checked against a
//! local model, bad blocks and commits refused with clear errors that change nothing, a
//! corrupted replica detected on read and served from another, and a 1 GiB file written
//! while a block server is SIGKILLed, read back identical, with the writer's memory bounded.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use cffs_client::{Client, ClientOptions, FsError};
use cffs_proto::block_client::BlockClient;
use cffs_proto::data_port::PutHead;
use cffs_proto::metadata_client::MetadataClient;
use cffs_proto::{write_op, BlockRef, CommitRequest, ErrorCode, Inode, PutBlockRequest, WriteOp};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::ProcessCluster;

fn code(status: &tonic::Status) -> ErrorCode {
    cffs_proto::error_code::detail_code(&cffs_proto::error_code::detail(status))
}

/// A client with no caches, so every read goes to the servers.
fn cold_client(cluster: &ProcessCluster) -> Client {
    let options = ClientOptions { cache: false, block_cache_bytes: 0, ..ClientOptions::default() };
    Client::connect_with(&cluster.endpoints(), options).expect("valid endpoints")
}

/// One request on a block data port: `head`, then `data`; the reply's code and message
/// (`None` when the connection ended first).
async fn data_port_exchange(stream: &mut tokio::net::TcpStream, head: &[u8], data: &[u8]) -> Option<(u32, String)> {
    stream.write_all(head).await.ok()?;
    stream.write_all(data).await.ok()?;
    let mut reply = [0u8; cffs_proto::data_port::REPLY_HEAD_LEN];
    stream.read_exact(&mut reply).await.ok()?;
    let code = u32::from_le_bytes(reply[..4].try_into().unwrap());
    let mut message = vec![0u8; u32::from_le_bytes(reply[4..].try_into().unwrap()) as usize];
    stream.read_exact(&mut message).await.ok()?;
    Some((code, String::from_utf8_lossy(&message).into_owned()))
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| ((i.wrapping_mul(2_654_435_761) >> 7) as u8) ^ (seed as u8)).collect()
}

async fn write(client: &Client, path: &str, data: &[u8]) {
    let (p, d) = (path.to_string(), data.to_vec());
    client
        .run(|txn| {
            let (p, d) = (p.clone(), d.clone());
            async move { txn.write_file(&p, &d).await }
        })
        .await
        .expect("write the file");
}

async fn file(client: &Client, path: &str) -> Vec<u8> {
    let p = path.to_string();
    client
        .run(|txn| {
            let p = p.clone();
            async move { txn.read_file(&p).await }
        })
        .await
        .expect("read the file")
}

/// Every change of a model file, applied to CFFS in its own transaction, and the whole
/// file compared after each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_on_write_changes_match_a_local_model() {
    const BLOCK: usize = 16 * 1024;
    let cluster = ProcessCluster::start_with_blocks(BLOCK as u32).await;
    let client = cluster.client();
    let mut model: Vec<u8> = Vec::new();
    type Step = (&'static str, Box<dyn Fn(&mut Vec<u8>)>, u64, Vec<u8>, Option<u64>);
    let write_at = |offset: usize, data: Vec<u8>| {
        move |m: &mut Vec<u8>| {
            if m.len() < offset + data.len() {
                m.resize(offset + data.len(), 0);
            }
            m[offset..offset + data.len()].copy_from_slice(&data);
        }
    };
    let steps: Vec<Step> = vec![
        ("write 200 KiB", Box::new(write_at(0, pattern(1, 200 * 1024))), 0, pattern(1, 200 * 1024), None),
        (
            "overwrite a middle range over four blocks",
            Box::new(write_at(30_000, pattern(2, 50_000))),
            30_000,
            pattern(2, 50_000),
            None,
        ),
        (
            "append 10,000 bytes",
            Box::new(write_at(200 * 1024, pattern(3, 10_000))),
            200 * 1024,
            pattern(3, 10_000),
            None,
        ),
        ("truncate into a block", Box::new(|m: &mut Vec<u8>| m.truncate(100_000)), 0, vec![], Some(100_000)),
        ("grow by truncate: zeros", Box::new(|m: &mut Vec<u8>| m.resize(180_000, 0)), 0, vec![], Some(180_000)),
        (
            "write past the end: a hole",
            Box::new(write_at(500_000, pattern(4, 5_000))),
            500_000,
            pattern(4, 5_000),
            None,
        ),
        ("one byte in the hole", Box::new(write_at(300_001, vec![7])), 300_001, vec![7], None),
        ("truncate to inline size", Box::new(|m: &mut Vec<u8>| m.truncate(1_000)), 0, vec![], Some(1_000)),
        ("grow an inline file into blocks", Box::new(write_at(70_000, pattern(5, 100))), 70_000, pattern(5, 100), None),
        ("truncate to nothing", Box::new(|m: &mut Vec<u8>| m.truncate(0)), 0, vec![], Some(0)),
        ("write 1 MiB again", Box::new(write_at(0, pattern(6, 1 << 20))), 0, pattern(6, 1 << 20), None),
    ];
    for (what, change, offset, data, truncate) in steps {
        change(&mut model);
        client
            .run(|txn| {
                let data = data.clone();
                async move {
                    match truncate {
                        Some(size) => txn.truncate("/f", size).await,
                        None if offset == 0 && what.starts_with("write") => txn.write_file("/f", &data).await,
                        None => txn.write_at("/f", offset, &data).await,
                    }
                }
            })
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let got = file(&cold_client(&cluster), "/f").await;
        assert_eq!(got.len(), model.len(), "{what}: size");
        assert!(got == model, "{what}: contents differ from the model");
        // The streaming read (holes and short blocks written out as zeros) agrees too.
        let mut streamed: Vec<u8> = Vec::new();
        cold_client(&cluster).begin().read_stream("/f", &mut streamed, &mut |_| {}).await.expect("stream");
        assert!(streamed == model, "{what}: the streamed contents differ from the model");
        let attr = client.run(|txn| async move { txn.stat("/f").await }).await.expect("stat");
        assert_eq!(attr.size, model.len() as u64, "{what}: stat size");
    }
    // A ranged read fetches only the block it touches.
    let reader = cold_client(&cluster);
    let range =
        reader.run(|txn| async move { txn.read_at("/f", (5 * BLOCK + 10) as u64, 100).await }).await.expect("read_at");
    assert_eq!(range, model[5 * BLOCK + 10..5 * BLOCK + 110]);
    assert_eq!(reader.block_stats().blocks_fetched, 1, "a 100-byte read fetches one block");
    // Blocks are spread over both groups.
    let map = client.cluster_map(true).await.expect("cluster map");
    let status = client.block_server_status(&map).await;
    let holding = status.values().filter(|s| s.as_ref().is_ok_and(|s| s.blocks > 0)).count();
    assert_eq!(holding, 6, "every block server holds blocks: {status:?}");
}

/// Bad blocks and bad block maps, sent straight to the servers: each is refused with a
/// clear error and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_blocks_and_block_maps_are_refused() {
    let cluster = ProcessCluster::start_with_blocks(64 * 1024).await;
    let mut block = BlockClient::connect(format!("http://{}", cluster.block_addr(4))).await.expect("connect");
    let data = pattern(1, 5_000);
    let crc = crc32fast::hash(&data);
    let cases = [
        (
            "wrong crc",
            PutBlockRequest { id: vec![1; 16], crc: crc ^ 1, data: data.clone().into(), replace: false },
            ErrorCode::Checksum,
        ),
        (
            "short id",
            PutBlockRequest { id: vec![1; 3], crc, data: data.clone().into(), replace: false },
            ErrorCode::InvalidArgument,
        ),
        (
            "empty block",
            PutBlockRequest { id: vec![2; 16], crc: 0, data: Vec::new().into(), replace: false },
            ErrorCode::InvalidArgument,
        ),
        (
            "block over the size limit",
            PutBlockRequest { id: vec![3; 16], crc: 0, data: vec![0u8; 8 * 1024 * 1024 + 1].into(), replace: false },
            ErrorCode::TooLarge,
        ),
    ];
    for (what, request, expected) in cases {
        let status = block.put_block(request).await.expect_err(what);
        assert_eq!(code(&status), expected, "{what}: {status:?}");
    }
    let status = block.block_status(cffs_proto::BlockStatusRequest {}).await.expect("status").into_inner();
    assert_eq!((status.blocks, status.checksum_refusals), (0, 1), "nothing stored; one crc refusal counted");

    // The same over the data port: each refused with its code; a wrong crc leaves the
    // connection usable, a head that breaks framing closes it.
    assert_ne!(status.data_port, 0, "a block server announces its data port");
    let data_addr = format!("127.0.0.1:{}", status.data_port);
    let head = |id: u8, crc: u32, len: u32| PutHead { id: [id; 16], crc, len }.encode();
    let mut stream = tokio::net::TcpStream::connect(&data_addr).await.expect("connect to the data port");
    let reply = data_port_exchange(&mut stream, &head(1, crc ^ 1, data.len() as u32), &data).await;
    assert_eq!(reply.map(|r| r.0), Some(ErrorCode::Checksum as u32), "wrong crc over the data port");
    let reply = data_port_exchange(&mut stream, &head(5, crc, data.len() as u32), &data).await;
    assert_eq!(reply.map(|r| r.0), Some(0), "a good block on the same connection is stored");
    let mut bad_magic = head(6, crc, 10);
    bad_magic[0] = b'X';
    let refusals = [
        ("bad magic", bad_magic, ErrorCode::InvalidArgument),
        ("empty block", head(6, 0, 0), ErrorCode::InvalidArgument),
        ("block over the size limit", head(6, 0, 8 * 1024 * 1024 + 1), ErrorCode::TooLarge),
    ];
    for (what, head, expected) in refusals {
        let mut stream = tokio::net::TcpStream::connect(&data_addr).await.expect("connect to the data port");
        let reply = data_port_exchange(&mut stream, &head, &[]).await.unwrap_or_else(|| panic!("{what}: no reply"));
        assert_eq!(reply.0, expected as u32, "{what}: {}", reply.1);
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
        assert!(matches!(closed, Ok(Ok(0))), "{what}: the server closes the connection");
    }
    let status = block.block_status(cffs_proto::BlockStatusRequest {}).await.expect("status").into_inner();
    assert_eq!((status.blocks, status.checksum_refusals), (1, 2), "only the good block stored; two crc refusals");

    // Commits naming blocks.
    let client = cluster.client();
    client.run(|txn| async move { txn.write_file("/f", b"small").await }).await.expect("create /f");
    let ino = client.run(|txn| async move { txn.stat("/f").await }).await.expect("stat").ino;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let mut meta = MetadataClient::connect(format!("http://127.0.0.1:{}", cluster.ports[leader as usize - 1]))
        .await
        .expect("connect");
    let inode = |size: u64, blocks: Vec<BlockRef>| Inode {
        ino,
        kind: cffs_proto::FileKind::Regular as i32,
        mode: 0o644,
        nlink: 1,
        size,
        block_size: 64 * 1024,
        blocks,
        ..Default::default()
    };
    let missing = BlockRef { index: 0, id: vec![9; 16], group: 1, len: 5_000, crc };
    let commit = |inode: Inode, id: u8| CommitRequest {
        txn_id: vec![id; 16],
        reads: vec![],
        writes: vec![WriteOp { op: Some(write_op::Op::PutInode(inode)) }],
        session_id: 0,
        blocks_checked_at: 0,
        lease_writes: false,
        settled_below: 0,
    };
    let cases = [
        ("a block no server holds", commit(inode(100_000, vec![missing.clone()]), 1), ErrorCode::BlockMissing),
        (
            "a block past the file's size",
            commit(inode(100_000, vec![BlockRef { index: 5, ..missing.clone() }]), 2),
            ErrorCode::InvalidArgument,
        ),
        (
            "a group the map lacks",
            commit(inode(100_000, vec![BlockRef { group: 9, ..missing.clone() }]), 3),
            ErrorCode::InvalidArgument,
        ),
        ("a size over the file size limit", commit(inode(1 << 50, vec![]), 4), ErrorCode::TooLarge),
        ("a block-mapped file of inline size", commit(inode(10, vec![]), 5), ErrorCode::InvalidArgument),
    ];
    for (what, request, expected) in cases {
        let status = meta.commit(request).await.expect_err(what);
        assert_eq!(code(&status), expected, "{what}: {status:?}");
    }
    assert_eq!(file(&client, "/f").await, b"small", "the file is unchanged");
    // Through the library: an offset past the file size limit.
    let error = client
        .run(|txn| async move { txn.write_at("/f", cffs_proto::limits::FILE_SIZE_MAX, b"x").await })
        .await
        .expect_err("past the limit");
    assert_eq!(error, FsError::FileTooLarge);
    assert_eq!(file(&client, "/f").await, b"small", "the file is unchanged");
}

/// A block whose copy on one replica went bad is served from another, and the bad copy is
/// counted by the server and the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_replica_is_detected_and_read_around() {
    let cluster = ProcessCluster::start_with_blocks(64 * 1024).await;
    let client = cluster.client();
    let data = pattern(9, 100_000);
    write(&client, "/f", &data).await;
    let map = client.cluster_map(true).await.expect("map");
    // Flip a byte of every block file of the first member of each group: a fresh client's
    // first read of a block goes to that member.
    let mut flipped = 0;
    for group in &map.groups {
        let server = group.members[0].id;
        for path in walk(&cluster.block_dir(server).join("blocks")) {
            let mut bytes = std::fs::read(&path).expect("read block file");
            bytes[32 + 10] ^= 0xff;
            std::fs::write(&path, bytes).expect("write block file");
            flipped += 1;
        }
    }
    assert!(flipped >= 1, "no block file found");
    let reader = cold_client(&cluster);
    assert!(file(&reader, "/f").await == data, "the data is served intact from another replica");
    assert!(reader.block_stats().crc_mismatches >= 1, "the client counted the bad copy: {:?}", reader.block_stats());
    // (Asked until every server answers: a parallel test may keep this machine busy.)
    let mut status = reader.block_server_status(&map).await;
    for _ in 0..50 {
        if status.values().all(|s| s.is_ok()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        status = reader.block_server_status(&map).await;
    }
    let found: u64 = status.values().filter_map(|s| s.as_ref().ok()).map(|s| s.checksum_failures).sum();
    assert!(found >= 1, "a server counted its bad copy: {status:?}");
}

/// The scrubber repairs corrupted copies, and refills a block server replaced by an empty
/// one, from the intact copies of its group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scrubber_repairs_bad_copies_and_refills_an_empty_server() {
    let mut cluster = ProcessCluster::start_with_blocks(64 * 1024).await;
    let client = cluster.client();
    let data = pattern(3, 1_000_000);
    write(&client, "/f", &data).await;
    let map = client.cluster_map(true).await.expect("map");
    let blocks_on = |status: &std::collections::BTreeMap<String, Result<cffs_proto::BlockStatusResponse, FsError>>,
                     addr: &str| {
        status.get(addr).and_then(|s| s.as_ref().ok()).map_or(0, |s| s.blocks)
    };
    let before = client.block_server_status(&map).await;
    let held_by_4 = blocks_on(&before, &cluster.block_addr(4));
    assert!(held_by_4 > 0, "server 4 holds blocks: {before:?}");
    // Corrupt every copy on server 1 (group 1); replace server 4 (group 2) by an empty one.
    let mut flipped = 0;
    for path in walk(&cluster.block_dir(1).join("blocks")) {
        let mut bytes = std::fs::read(&path).expect("read block file");
        bytes[40] ^= 0x01;
        std::fs::write(&path, bytes).expect("write block file");
        flipped += 1;
    }
    cluster.kill_block(4);
    std::fs::remove_dir_all(cluster.block_dir(4)).expect("wipe server 4");
    cluster.restart_block(4);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let scrub = loop {
        let scrub = client.cluster_status().await.ok().and_then(|s| s.scrub).unwrap_or_default();
        if scrub.copies_repaired >= flipped + held_by_4 {
            break scrub;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no repair within 60 s: {scrub:?}, {flipped} flipped, {held_by_4} to refill"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(scrub.copies_bad >= flipped && scrub.copies_missing >= held_by_4, "{scrub:?}");
    assert_eq!(scrub.blocks_lost, 0, "{scrub:?}");
    let after = client.block_server_status(&map).await;
    assert_eq!(blocks_on(&after, &cluster.block_addr(4)), held_by_4, "server 4 refilled: {after:?}");
    // Every copy on server 1 reads intact again: a reader whose first choice is server 1
    // counts no bad copy.
    let reader = cold_client(&cluster);
    assert!(file(&reader, "/f").await == data);
    let status = reader.block_server_status(&map).await;
    let failures_now: u64 = status.values().filter_map(|s| s.as_ref().ok()).map(|s| s.checksum_failures).sum();
    let failures_scrub = scrub.copies_bad;
    assert!(failures_now <= failures_scrub, "no new bad copies found after the repair: {status:?}");
    assert_eq!(reader.block_stats().crc_mismatches, 0, "{:?}", reader.block_stats());
}

/// Garbage goes (an overwritten file's old blocks, a deleted file's, an aborted
/// transaction's), and no referenced block with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_removes_garbage_and_never_a_referenced_block() {
    let cluster = ProcessCluster::start_with_blocks_gc(64 * 1024, 2).await;
    let client = cluster.client();
    let (keep, gone, rewritten) = (pattern(1, 700_000), pattern(2, 300_000), pattern(3, 500_000));
    for (path, data) in [("/keep", &keep), ("/gone", &gone), ("/rewritten", &pattern(4, 500_000))] {
        let (p, d) = (path.to_string(), data.clone());
        client
            .run(|txn| {
                let (p, d) = (p.clone(), d.clone());
                async move { txn.write_file(&p, &d).await }
            })
            .await
            .expect("write");
    }
    let r = rewritten.clone();
    client
        .run(|txn| {
            let r = r.clone();
            async move { txn.write_file("/rewritten", &r).await }
        })
        .await
        .expect("rewrite");
    client.run(|txn| async move { txn.unlink("/gone").await }).await.expect("unlink");
    // A transaction that writes blocks and never commits.
    let abandoned = client.begin();
    abandoned.write_file("/abandoned", &pattern(5, 400_000)).await.expect("write blocks");
    drop(abandoned);
    // Referenced blocks: 11 + 8 of 64 KiB. Stored: those and the garbage, on 3 servers each.
    let referenced = 11 + 8;
    let map = client.cluster_map(true).await.expect("map");
    let stored = |status: &std::collections::BTreeMap<String, Result<cffs_proto::BlockStatusResponse, FsError>>| {
        status.values().filter_map(|s| s.as_ref().ok()).map(|s| s.blocks).sum::<u64>()
    };
    let before = stored(&client.block_server_status(&map).await);
    assert!(before > 3 * referenced, "garbage is stored: {before}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let now = stored(&client.block_server_status(&map).await);
        if now == 3 * referenced {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{now} copies left, {} referenced", 3 * referenced);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let gc = client.cluster_status().await.expect("status").gc.unwrap_or_default();
    assert!(gc.tombstoned >= 6 + 8 + 5 && gc.tombstones_pending == 0, "{gc:?}");
    let reader = cold_client(&cluster);
    assert!(file(&reader, "/keep").await == keep, "a referenced file is intact");
    assert!(file(&reader, "/rewritten").await == rewritten, "a rewritten file is intact");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// The bytes of the 1 GiB test file, generated on the fly.
struct PatternReader {
    at: u64,
    len: u64,
}

fn pattern_byte(at: u64) -> u8 {
    ((at.wrapping_mul(0x9E37_79B9) >> 11) ^ (at >> 22)) as u8
}

impl tokio::io::AsyncRead for PatternReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = (buf.remaining() as u64).min(self.len - self.at) as usize;
        let start = self.at;
        let chunk: Vec<u8> = (start..start + n as u64).map(pattern_byte).collect();
        buf.put_slice(&chunk);
        self.at += n as u64;
        Poll::Ready(Ok(()))
    }
}

/// Hashes what is written to it.
struct HashWriter(sha2::Sha256, u64);

impl tokio::io::AsyncWrite for HashWriter {
    fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.0.update(buf);
        self.1 += buf.len() as u64;
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

const BIG_FILE: u64 = 1 << 30;
/// The writer's peak RSS must stay under this while it streams 1 GiB: a few 4 MiB blocks in
/// flight and their copies to three servers, not the file.
const PUT_RSS_MAX_MIB: u64 = 200;

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The writer of the 1 GiB test, run as a process of its own (this test binary, started by
/// `a_gigabyte_survives_a_block_server_kill`) so that its memory is measured alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "started by a_gigabyte_survives_a_block_server_kill"]
async fn put_child() {
    let Ok(endpoints) = std::env::var("CFFS_PUT_CHILD_ENDPOINTS") else { return };
    let endpoints: Vec<&str> = endpoints.split(',').collect();
    let client = Client::connect(&endpoints).expect("endpoints");
    let txn = client.begin();
    let size = txn.write_stream("/big", PatternReader { at: 0, len: BIG_FILE }, &mut |_| {}).await.expect("stream");
    let outcome = txn.commit().await.expect("commit");
    assert!(matches!(outcome, cffs_client::Outcome::Committed { .. }), "{outcome:?}");
    println!("committed {size}");
}

/// 1 GiB streamed in by a separate writer process while block server 4 is SIGKILLed part
/// way; read back with the same sha256. The writer's peak RSS is measured and bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gigabyte_survives_a_block_server_kill() {
    let mut cluster = ProcessCluster::start_with_blocks(cffs_proto::limits::BLOCK_SIZE_DEFAULT).await;
    let child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["blocks::put_child", "--exact", "--ignored", "--nocapture"])
        .env("CFFS_PUT_CHILD_ENDPOINTS", cluster.endpoints().join(","))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the writer");
    let pid = child.id();
    let client = cluster.client();
    let map = client.cluster_map(true).await.expect("map");
    let (mut peak_kib, mut killed) = (0, false);
    let waiter = tokio::task::spawn_blocking(move || child.wait_with_output());
    while !waiter.is_finished() {
        if let Some(hwm) = vm_hwm_kib(pid) {
            peak_kib = peak_kib.max(hwm);
        }
        if !killed {
            let status = client.block_server_status(&map).await;
            let bytes = status.get(&cluster.block_addr(5)).and_then(|s| s.as_ref().ok()).map_or(0, |s| s.bytes);
            if bytes >= 128 << 20 {
                cluster.kill_block(4);
                killed = true;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let output = waiter.await.expect("join").expect("writer output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success() && stdout.contains(&format!("committed {BIG_FILE}")), "writer failed: {stdout}");
    assert!(killed, "block server 4 was never killed: the write finished first");
    // The writer's blocks went over the data port (a put falls back to gRPC only when its
    // connection breaks; the scrubber's repairs go over gRPC).
    let status = client.block_server_status(&map).await;
    for id in [5, 6] {
        let server = status[&cluster.block_addr(id)].as_ref().expect("the server answers");
        assert!(
            server.puts > 0 && server.data_port_puts * 10 >= server.puts * 9,
            "block server {id}: {} of {} puts over the data port",
            server.data_port_puts,
            server.puts
        );
    }
    println!("writer peak RSS while putting 1 GiB: {} MiB (bound {PUT_RSS_MAX_MIB} MiB)", peak_kib / 1024);
    assert!(peak_kib / 1024 < PUT_RSS_MAX_MIB, "writer peak RSS {} MiB", peak_kib / 1024);

    let mut expected = sha2::Sha256::new();
    let mut reader = PatternReader { at: 0, len: BIG_FILE };
    while reader.at < reader.len {
        let n = (1u64 << 20).min(reader.len - reader.at);
        let chunk: Vec<u8> = (reader.at..reader.at + n).map(pattern_byte).collect();
        expected.update(&chunk);
        reader.at += n;
    }
    // Back up without the blocks written while it was down: reads that ask it for those
    // find them missing and go to another replica.
    cluster.restart_block(4);
    let reader = cold_client(&cluster);
    let txn = reader.begin();
    let mut sink = HashWriter(sha2::Sha256::new(), 0);
    let size = txn.read_stream("/big", &mut sink, &mut |_| {}).await.expect("read back");
    assert_eq!((size, sink.1), (BIG_FILE, BIG_FILE));
    assert_eq!(sink.0.finalize(), expected.finalize(), "sha256 of the file read back");
}

/// Replacing block servers through the cluster map (`cffs cluster replace-node
/// --block-group`), on real processes: block server 6 dies; a replacement by a server that
/// does not answer is refused and changes nothing; a new, empty server 7 takes 6's place; a
/// second change of the group is refused while 7 refills; once the scrubber ends the refill,
/// servers 4 and 5 die too and every block of group 2 is read from server 7 alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_server_is_replaced_and_its_replacement_refilled() {
    let mut cluster = ProcessCluster::start_with_blocks(64 * 1024).await;
    let client = cluster.client();
    let data = pattern(11, 1_500_000);
    write(&client, "/f", &data).await;
    let member = |id: u64, addr: String| cffs_proto::BlockMember { id, addr };
    cluster.kill_block(6);

    let before = client.cluster_map(true).await.expect("map");
    let silent = format!("127.0.0.1:{}", 1); // nothing listens on port 1
    let why = client.replace_block_server(2, 6, member(9, silent)).await.expect_err("a silent server").to_string();
    assert!(why.contains("did not answer"), "{why}");
    let why = client.replace_block_server(2, 1, member(9, "127.0.0.1:2".into())).await.expect_err("not a member");
    assert!(why.to_string().contains("not a member of group 2"), "{why}");
    assert_eq!(client.cluster_map(true).await.expect("map").version, before.version, "a refusal changes nothing");

    let (new, addr) = cluster.start_extra_block_server();
    assert_eq!(new, 7);
    let mut map = None;
    for _ in 0..100 {
        match client.replace_block_server(2, 6, member(new, addr.clone())).await {
            Ok(m) => {
                map = Some(m);
                break;
            }
            // The new server may still be starting.
            Err(e) if e.to_string().contains("did not answer") => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("replace 6 by 7: {e}"),
        }
    }
    let map = map.expect("server 7 answered");
    let group = &map.groups[1];
    assert_eq!(group.members.iter().map(|m| m.id).collect::<Vec<_>>(), vec![4, 5, 7]);
    assert_eq!((group.refilling, group.replaced.as_ref().map(|m| m.id)), (7, Some(6)));
    let why = client.replace_block_server(2, 5, member(8, "127.0.0.1:3".into())).await.expect_err("a second change");
    assert!(why.to_string().contains("still refilling server 7"), "{why}");

    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let map = client.cluster_map(true).await.expect("map");
        if map.groups[1].refilling == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the refill never ended: {map:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let scrub = client.cluster_status().await.expect("status").scrub.unwrap_or_default();
    assert!(scrub.refills_done >= 1 && scrub.copies_repaired >= 1, "{scrub:?}");
    cluster.kill_block(4);
    cluster.kill_block(5);
    let reader = cold_client(&cluster);
    assert!(file(&reader, "/f").await == data, "group 2's blocks are read from server 7 alone");
}
