//! What one replica's disk does per block under the two replication schemes the block
//! service could use (docs/design/blocks.md, "Choosing the replication scheme"):
//!
//! - quorum writes of immutable blocks: the block's bytes go to the block store once
//!   (`FileBlockStore::put`: write, fdatasync, rename, directory fsync);
//! - a Raft group per block group: the bytes go into the Raft log first (a synced RocksDB
//!   write, as `LogStore::append` does), and again into the state machine when the entry is
//!   applied (the same block store put) — the least any log-then-apply design writes.
//!
//! Run: `cargo run --release -p cffs-server --example block_write_cost -- [DIR] [BLOCKS]`
//! (DIR defaults to a temporary directory on the current disk, BLOCKS to 64 blocks of 4 MiB).
//! Prints each scheme's time and throughput, and the bytes the process wrote to the disk
//! (`/proc/self/io` write_bytes, which counts what reached the block layer).

#[cfg(not(madsim))]
fn main() -> anyhow::Result<()> {
    use std::time::Instant;

    use cffs_server::block::file_store::FileBlockStore;
    use cffs_server::block::store::{BlockInfo, BlockStore};
    use cffs_server::storage::rocks::RocksEngine;
    use cffs_server::storage::{Cf, KvEngine, WriteBatch};

    let mut args = std::env::args().skip(1);
    let base = args.next().map(std::path::PathBuf::from);
    let blocks: u64 = args.next().map(|n| n.parse()).transpose()?.unwrap_or(64);
    let dir = match &base {
        Some(base) => tempfile::tempdir_in(base)?,
        None => tempfile::tempdir_in(".")?,
    };
    const BLOCK: usize = 4 * 1024 * 1024;
    let data: Vec<u8> = (0..BLOCK as u64).map(|i| (i.wrapping_mul(0x9E37_79B9) >> 13) as u8).collect();
    let crc = crc32fast::hash(&data);
    let written = || -> u64 {
        let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
        io.lines().find_map(|l| l.strip_prefix("write_bytes: ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
    };
    let info = |n: u64, salt: u8| {
        let mut id = [salt; 16];
        id[..8].copy_from_slice(&n.to_be_bytes());
        BlockInfo { id, len: BLOCK as u32, crc, stored_at_ms: 0 }
    };
    let report = |scheme: &str, started: Instant, before: u64| {
        let seconds = started.elapsed().as_secs_f64();
        let mib = (blocks * BLOCK as u64) as f64 / (1024.0 * 1024.0);
        let disk = (written() - before) as f64 / (1024.0 * 1024.0);
        println!(
            "{scheme:<40} {blocks} blocks of 4 MiB in {seconds:6.2} s: {:7.1} MiB/s of blocks, {disk:8.1} MiB written to disk ({:.2}x the blocks)",
            mib / seconds,
            disk / mib
        );
    };

    let store = FileBlockStore::open(&dir.path().join("quorum"))?;
    let (started, before) = (Instant::now(), written());
    for n in 0..blocks {
        store.put(info(n, 1), &data, true)?;
    }
    report("quorum write (block store only)", started, before);

    let log = RocksEngine::open(&dir.path().join("raft-log"))?;
    let machine = FileBlockStore::open(&dir.path().join("raft-state"))?;
    let (started, before) = (Instant::now(), written());
    for n in 0..blocks {
        let mut batch = WriteBatch::default();
        batch.put(Cf::RaftLog, n.to_be_bytes().to_vec(), data.clone());
        log.write(batch, true)?;
        machine.put(info(n, 2), &data, true)?;
    }
    // What the log holds reaches its files too (a flush), as it would within a few blocks.
    log.sync()?;
    drop(log);
    report("raft group (log, then state machine)", started, before);
    Ok(())
}

#[cfg(madsim)]
fn main() {}
