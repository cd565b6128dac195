//! The block collector: run by the metadata leader, it deletes blocks that no committed inode
//! references and that were stored longer ago than the grace period, without ever deleting
//! one that a transaction in flight may still commit (docs/design/blocks.md, "Garbage
//! collection", has the protocol and its safety argument).
//!
//! One round: finish any tombstones a previous round left (its leader may have died between
//! marking and dropping); list every block server's blocks; keep those older than the grace
//! period that the reference index does not name; propose `tombstone_blocks` for them (at
//! apply, a block referenced by then is skipped); delete the marked blocks from every member
//! of their group; propose `drop_tombstones`, which raises the fence. Safety rests on the
//! log order of those entries against commits, not on clocks: the grace period only keeps
//! the collector from aborting transactions that are merely slow.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cffs_proto::{command, BlockIds, Command, DeleteBlocksRequest, ListBlocksRequest};

use super::check::BlockCheck;
use crate::metadata::raft_types::RaftCommand;
use crate::metadata::state;
use crate::metadata::state_machine::MetaState;
use crate::metadata::txn::CommandOutcome;
use crate::metadata::MetaRaft;
use crate::storage::{keys, Cf};

#[derive(Debug, Clone, Copy)]
pub struct GcConfig {
    /// A block younger than this (by the time its server stored it) is never collected.
    pub grace: Duration,
    /// The pause between rounds.
    pub interval: Duration,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig { grace: Duration::from_secs(3600), interval: Duration::from_secs(300) }
    }
}

/// Ids per `tombstone_blocks` entry, and per delete request.
const GC_BATCH: usize = 1024;
const GC_RPC_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub struct GcStats {
    pub rounds: AtomicU64,
    pub blocks_listed: AtomicU64,
    pub tombstoned: AtomicU64,
    pub deleted: AtomicU64,
}

impl GcStats {
    pub fn wire(&self, pending: u64) -> cffs_proto::GcMetrics {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        cffs_proto::GcMetrics {
            rounds: get(&self.rounds),
            blocks_listed: get(&self.blocks_listed),
            tombstoned: get(&self.tombstoned),
            deleted: get(&self.deleted),
            tombstones_pending: pending,
        }
    }
}

fn leads(raft: &MetaRaft) -> bool {
    raft.metrics().borrow().state == openraft::ServerState::Leader
}

/// Wall-clock milliseconds (madsim's in simulation), to compare with blocks' stored times.
fn now_ms() -> i64 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_millis()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

/// Tombstones in the state now.
pub fn tombstones(state: &MetaState) -> Result<Vec<Vec<u8>>, crate::storage::StorageError> {
    let _guard = state.apply_lock.read().expect("apply lock");
    let start = [keys::PREFIX_TOMBSTONE];
    let end = [keys::PREFIX_TOMBSTONE + 1];
    let pairs = state.engine.scan(Cf::State, &start, Some(&end), usize::MAX)?;
    Ok(pairs.into_iter().map(|(key, _)| key[1..].to_vec()).collect())
}

pub fn spawn(raft: MetaRaft, state: MetaState, blocks: Arc<BlockCheck>, config: GcConfig, stats: Arc<GcStats>) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(config.interval).await;
            if !leads(&raft) {
                continue;
            }
            match round(&raft, &state, &blocks, config, &stats).await {
                Ok(()) => {
                    stats.rounds.fetch_add(1, Ordering::Relaxed);
                }
                Err(why) => tracing::info!(%why, "block collection round stopped"),
            }
        }
    });
}

pub(super) async fn propose(raft: &MetaRaft, command: command::Kind) -> Result<CommandOutcome, String> {
    let write = raft.client_write(RaftCommand(Command { kind: Some(command) }));
    match tokio::time::timeout(crate::constants::REQUEST_TIMEOUT, write).await {
        Ok(Ok(response)) => response.data.0.ok_or_else(|| "entry applied without an outcome".to_string()),
        Ok(Err(error)) => Err(format!("propose: {error}")),
        Err(_) => Err("propose timed out".into()),
    }
}

async fn round(
    raft: &MetaRaft,
    state: &MetaState,
    blocks: &BlockCheck,
    config: GcConfig,
    stats: &GcStats,
) -> Result<(), String> {
    let map = {
        let _guard = state.apply_lock.read().expect("apply lock");
        state::read_cluster_map(state.engine.as_ref()).map_err(|e| e.to_string())?
    };
    if map.groups.is_empty() {
        return Ok(());
    }
    // Leftovers of a round that stopped between marking and dropping: deleted and dropped
    // first (tombstoned blocks are never referenced again, so this is always safe).
    let leftover = tombstones(state).map_err(|e| e.to_string())?;
    if !leftover.is_empty() {
        delete_everywhere(&map, blocks, &leftover, stats).await;
        propose(raft, command::Kind::DropTombstones(BlockIds { ids: leftover })).await?;
    }
    // Every server's blocks past the grace period, with the group that holds them.
    let cutoff = now_ms() - i64::try_from(config.grace.as_millis()).unwrap_or(i64::MAX);
    let mut old: BTreeMap<Vec<u8>, u32> = BTreeMap::new();
    for group in &map.groups {
        for member in &group.members {
            let mut start_after = Vec::new();
            loop {
                if !leads(raft) {
                    return Err("no longer the leader".into());
                }
                let Ok(mut client) = blocks.client(&member.addr) else { break };
                let request = ListBlocksRequest { start_after: start_after.clone(), limit: 0 };
                let page = match tokio::time::timeout(GC_RPC_TIMEOUT, client.list_blocks(request)).await {
                    Ok(Ok(page)) => page.into_inner(),
                    _ => break, // a server down now: its blocks wait for a later round
                };
                stats.blocks_listed.fetch_add(page.blocks.len() as u64, Ordering::Relaxed);
                for info in &page.blocks {
                    if info.stored_at_ms < cutoff {
                        old.insert(info.id.clone(), group.id);
                    }
                }
                match (page.more, page.blocks.last()) {
                    (true, Some(last)) => start_after = last.id.clone(),
                    _ => break,
                }
            }
        }
    }
    // Not referenced now (the tombstone entry checks again at apply).
    let candidates: Vec<Vec<u8>> = {
        let _guard = state.apply_lock.read().expect("apply lock");
        let mut candidates = Vec::new();
        for id in old.keys() {
            if state.engine.get(Cf::State, &keys::block_ref_key(id)).map_err(|e| e.to_string())?.is_none() {
                candidates.push(id.clone());
            }
        }
        candidates
    };
    for batch in candidates.chunks(GC_BATCH) {
        let marked = match propose(raft, command::Kind::TombstoneBlocks(BlockIds { ids: batch.to_vec() })).await? {
            CommandOutcome::Tombstoned(marked) => marked,
            other => return Err(format!("tombstones answered {other:?}")),
        };
        stats.tombstoned.fetch_add(marked.len() as u64, Ordering::Relaxed);
        if marked.is_empty() {
            continue;
        }
        delete_everywhere(&map, blocks, &marked, stats).await;
        propose(raft, command::Kind::DropTombstones(BlockIds { ids: marked })).await?;
    }
    Ok(())
}

/// Deletes `ids` from every block server (a block is only on its group's members, but a
/// tombstone does not say which group, and a delete of an absent block is a no-op). A server
/// that does not answer keeps its copies; they are listed and collected again later.
async fn delete_everywhere(map: &cffs_proto::ClusterMap, blocks: &BlockCheck, ids: &[Vec<u8>], stats: &GcStats) {
    for member in map.groups.iter().flat_map(|g| g.members.iter()) {
        let Ok(mut client) = blocks.client(&member.addr) else { continue };
        for chunk in ids.chunks(GC_BATCH) {
            let request = DeleteBlocksRequest { ids: chunk.to_vec() };
            if let Ok(Ok(reply)) = tokio::time::timeout(GC_RPC_TIMEOUT, client.delete_blocks(request)).await {
                stats.deleted.fetch_add(u64::from(reply.into_inner().deleted), Ordering::Relaxed);
            }
        }
    }
}
