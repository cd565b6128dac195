//! The scrubber: run by the metadata leader, it re-reads every copy of every block a
//! committed inode references, at a bounded rate, and repairs a copy that is bad (its bytes
//! fail the crc32) or missing (a server that was down when the block was written, or one
//! replaced by an empty server) from a member holding an intact copy.
//!
//! The leader runs it because the leader knows both sides: the references (its state) and
//! the groups (the cluster map). A pass reads the references from the local state in pages,
//! then checks each block on each member of its group: `GetBlock` (the server checks its
//! copy's crc before answering, and the scrubber checks what it received). A repair is a
//! `PutBlock` with `replace`, which overwrites a bad copy; the server checks its crc as for
//! any put. A block with no intact copy anywhere is counted and logged as lost (nothing can
//! repair it). Only a leader scrubs; a pass stops when the replica stops leading.
//!
//! A group whose member was replaced (`refilling` in the map) is refilled by these passes:
//! the new member is missing every block, and the member it replaced is one more source of
//! intact copies while it answers. A pass that began after the change and ended with an
//! intact copy of every block of the group on the new member proposes `refill_done`, which
//! lets the group take its next change (docs/design/blocks.md, "Changing a group's members").

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cffs_proto::{BlockRef, ErrorCode, GetBlockRequest, Inode, PutBlockRequest};
use prost::Message;

use super::check::BlockCheck;
use super::store::block_id_hex;
use crate::metadata::state;
use crate::metadata::state_machine::MetaState;
use crate::metadata::MetaRaft;
use crate::storage::{keys, Cf};

/// How fast, and how often, the scrubber reads.
#[derive(Debug, Clone, Copy)]
pub struct ScrubConfig {
    /// Most bytes of block copies read per second (every member's copy counts).
    pub bytes_per_sec: u64,
    /// The pause between two passes.
    pub pass_pause: Duration,
}

impl Default for ScrubConfig {
    fn default() -> Self {
        ScrubConfig { bytes_per_sec: 32 * 1024 * 1024, pass_pause: Duration::from_secs(60) }
    }
}

/// How long one member has to answer one scrub read or repair.
const SCRUB_RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// Inodes read from the state per page of a pass.
const SCRUB_PAGE_INODES: usize = 256;

/// The scrubber's counters, since this replica started.
#[derive(Debug, Default)]
pub struct ScrubStats {
    pub passes: AtomicU64,
    pub blocks_checked: AtomicU64,
    pub bytes_read: AtomicU64,
    pub copies_bad: AtomicU64,
    pub copies_missing: AtomicU64,
    pub copies_repaired: AtomicU64,
    pub blocks_lost: AtomicU64,
    /// Blocks checked in the pass under way (0 between passes).
    pub pass_blocks: AtomicU64,
    /// Refills of replaced members ended by a pass (`refill_done` applied).
    pub refills_done: AtomicU64,
}

impl ScrubStats {
    pub fn wire(&self) -> cffs_proto::ScrubMetrics {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        cffs_proto::ScrubMetrics {
            passes: get(&self.passes),
            blocks_checked: get(&self.blocks_checked),
            bytes_read: get(&self.bytes_read),
            copies_bad: get(&self.copies_bad),
            copies_missing: get(&self.copies_missing),
            copies_repaired: get(&self.copies_repaired),
            blocks_lost: get(&self.blocks_lost),
            pass_blocks: get(&self.pass_blocks),
            refills_done: get(&self.refills_done),
        }
    }
}

fn leads(raft: &MetaRaft) -> bool {
    raft.metrics().borrow().state == openraft::ServerState::Leader
}

/// Starts the scrubber task of this replica (it works only while the replica leads).
pub fn spawn(raft: MetaRaft, state: MetaState, blocks: Arc<BlockCheck>, config: ScrubConfig, stats: Arc<ScrubStats>) {
    tokio::spawn(async move {
        loop {
            // The pause between passes, cut short when a group starts refilling (a change of
            // its members): the refill's pass starts within `REFILL_PASS_PAUSE`.
            let mut paused = Duration::ZERO;
            while paused < config.pass_pause {
                let step = REFILL_PASS_PAUSE.min(config.pass_pause - paused);
                tokio::time::sleep(step).await;
                paused += step;
                if refilling(&state) {
                    break;
                }
            }
            if !leads(&raft) {
                continue;
            }
            if let Err(error) = pass(&raft, &state, &blocks, config, &stats).await {
                tracing::warn!(%error, "scrub pass stopped");
            }
        }
    });
}

/// The longest pause between passes while a group is refilling.
const REFILL_PASS_PAUSE: Duration = Duration::from_secs(1);

/// True when a block group of the applied map is refilling a new member (a read error counts
/// as no: the pass itself will meet it).
fn refilling(state: &MetaState) -> bool {
    let _guard = state.apply_lock.read().expect("apply lock");
    state::read_cluster_map(state.engine.as_ref()).is_ok_and(|map| map.groups.iter().any(|g| g.refilling != 0))
}

/// One pass over every referenced block; after it, `refill_done` for each group whose new
/// member it found holding every block. Err when the state could not be read.
async fn pass(
    raft: &MetaRaft,
    state: &MetaState,
    blocks: &BlockCheck,
    config: ScrubConfig,
    stats: &ScrubStats,
) -> Result<(), crate::storage::StorageError> {
    let mut start = keys::inode_key(0);
    let end = [keys::PREFIX_INODE + 1];
    stats.pass_blocks.store(0, Ordering::Relaxed);
    // The refills under way as the pass begins (their changes are applied here, so every
    // block referenced by then is in the pages below, and every block referenced later was
    // checked against the new members): group -> (change index, new member).
    let refills: BTreeMap<u32, (u64, u64)> = {
        let _guard = state.apply_lock.read().expect("apply lock");
        state::read_cluster_map(state.engine.as_ref())?
            .groups
            .iter()
            .filter(|g| g.refilling != 0)
            .map(|g| (g.id, (g.changed_at, g.refilling)))
            .collect()
    };
    // Groups whose new member missed a block this pass (unreachable, or no intact source).
    let mut unfilled: BTreeSet<u32> = BTreeSet::new();
    loop {
        let (page, map) = {
            let _guard = state.apply_lock.read().expect("apply lock");
            let engine = state.engine.as_ref();
            let page = engine.scan(Cf::State, &start, Some(&end), SCRUB_PAGE_INODES)?;
            (page, state::read_cluster_map(engine)?)
        };
        let Some((last, _)) = page.last() else { break };
        start = last.clone();
        start.push(0); // the next page starts after this key
        for (_, value) in &page {
            let (_, payload) = keys::versioned_decode(value)?;
            let inode =
                Inode::decode(payload).map_err(|e| crate::storage::StorageError::corruption(format!("inode: {e}")))?;
            for block in &inode.blocks {
                if !leads(raft) {
                    return Ok(());
                }
                let (read, filled) = scrub_block(&map, state, blocks, block, stats).await;
                if !filled {
                    unfilled.insert(block.group);
                }
                stats.blocks_checked.fetch_add(1, Ordering::Relaxed);
                stats.pass_blocks.fetch_add(1, Ordering::Relaxed);
                if config.bytes_per_sec > 0 && read > 0 {
                    tokio::time::sleep(Duration::from_secs_f64(read as f64 / config.bytes_per_sec as f64)).await;
                }
            }
        }
        if page.len() < SCRUB_PAGE_INODES {
            break;
        }
    }
    stats.passes.fetch_add(1, Ordering::Relaxed);
    for (group, (changed_at, member)) in refills {
        if unfilled.contains(&group) {
            continue;
        }
        let done = cffs_proto::RefillDone { group, changed_at };
        match super::gc::propose(raft, cffs_proto::command::Kind::RefillDone(done)).await {
            Ok(crate::metadata::txn::CommandOutcome::ClusterMap(_)) => {
                stats.refills_done.fetch_add(1, Ordering::Relaxed);
                tracing::info!(group, member, changed_at, "block server refilled");
            }
            Ok(other) => tracing::info!(group, ?other, "refill not ended"),
            Err(error) => tracing::warn!(group, %error, "refill not ended"),
        }
    }
    Ok(())
}

/// What one member's copy is.
enum Copy {
    Good(prost::bytes::Bytes),
    Bad,
    Missing,
    Unreachable,
}

/// Checks every member's copy of `block` and repairs the bad and missing ones from a good
/// one; returns the bytes read, and whether the member its group is refilling (if any) now
/// holds an intact copy.
async fn scrub_block(
    map: &cffs_proto::ClusterMap,
    state: &MetaState,
    blocks: &BlockCheck,
    block: &BlockRef,
    stats: &ScrubStats,
) -> (u64, bool) {
    let Some(group) = map.groups.iter().find(|g| g.id == block.group) else { return (0, true) };
    let mut copies = Vec::with_capacity(group.members.len());
    let mut read = 0u64;
    for member in &group.members {
        copies.push((member, read_copy(blocks, member, block, &mut read).await));
    }
    // A replaced member is one more source while its group refills (never repaired).
    let mut spare = None;
    if let Some(replaced) = group.replaced.as_ref().filter(|_| group.refilling != 0) {
        if !copies.iter().any(|(_, c)| matches!(c, Copy::Good(_))) {
            if let Copy::Good(data) = read_copy(blocks, replaced, block, &mut read).await {
                spare = Some(data);
            }
        }
    }
    stats.bytes_read.fetch_add(read, Ordering::Relaxed);
    // The page of inodes was read before the copies: a block overwritten or deleted since
    // (and collected) is garbage, neither to repair nor to count as lost.
    if !still_referenced(state, &block.id) {
        return (read, true);
    }
    let good = copies
        .iter()
        .find_map(|(_, c)| match c {
            Copy::Good(data) => Some(data.clone()),
            _ => None,
        })
        .or(spare);
    // Members holding an intact copy once the repairs are done, and whether the member being
    // refilled is one of them.
    let (mut intact, mut new_intact) = (0, false);
    for (member, copy) in &copies {
        let counter = match copy {
            Copy::Bad => &stats.copies_bad,
            Copy::Missing => &stats.copies_missing,
            Copy::Good(_) => {
                intact += 1;
                new_intact |= member.id == group.refilling;
                continue;
            }
            Copy::Unreachable => continue,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let Some(data) = &good else { continue };
        let Ok(mut client) = blocks.client(&member.addr) else { continue };
        let request = PutBlockRequest { id: block.id.clone(), crc: block.crc, data: data.clone(), replace: true };
        if let Ok(Ok(_)) = tokio::time::timeout(SCRUB_RPC_TIMEOUT, client.put_block(request)).await {
            stats.copies_repaired.fetch_add(1, Ordering::Relaxed);
            intact += 1;
            new_intact |= member.id == group.refilling;
            tracing::info!(block = %hex(&block.id), server = member.id, "block copy repaired");
        }
    }
    let reachable_all = copies.iter().all(|(_, c)| !matches!(c, Copy::Unreachable));
    if good.is_none() && reachable_all {
        stats.blocks_lost.fetch_add(1, Ordering::Relaxed);
        tracing::error!(block = %hex(&block.id), group = block.group, "block lost: no intact copy on any member");
    }
    // A refill is done when every block is on the new member and on a majority of the
    // group, as every block written after the change is (the block check).
    let filled = group.refilling == 0 || (new_intact && intact > group.members.len() / 2);
    (read, filled)
}

/// Reads `member`'s copy of `block` (adding the bytes received to `read`).
async fn read_copy(blocks: &BlockCheck, member: &cffs_proto::BlockMember, block: &BlockRef, read: &mut u64) -> Copy {
    match blocks.client(&member.addr) {
        Err(_) => Copy::Unreachable,
        Ok(mut client) => {
            let call = client.get_block(GetBlockRequest { id: block.id.clone() });
            match tokio::time::timeout(SCRUB_RPC_TIMEOUT, call).await {
                Ok(Ok(reply)) => {
                    let data = reply.into_inner().data;
                    *read += data.len() as u64;
                    match data.len() == block.len as usize && crc32fast::hash(&data) == block.crc {
                        true => Copy::Good(data),
                        false => Copy::Bad,
                    }
                }
                Ok(Err(status)) => {
                    match cffs_proto::error_code::detail_code(&cffs_proto::error_code::detail(&status)) {
                        ErrorCode::Checksum => Copy::Bad,
                        ErrorCode::BlockMissing => Copy::Missing,
                        _ => Copy::Unreachable,
                    }
                }
                Err(_) => Copy::Unreachable,
            }
        }
    }
}

fn still_referenced(state: &MetaState, id: &[u8]) -> bool {
    let _guard = state.apply_lock.read().expect("apply lock");
    // A read error counts as referenced: the scrubber then errs on the side of repairing.
    !matches!(state.engine.get(Cf::State, &keys::block_ref_key(id)), Ok(None))
}

fn hex(id: &[u8]) -> String {
    match <[u8; 16]>::try_from(id) {
        Ok(id) => block_id_hex(&id),
        Err(_) => format!("{id:?}"),
    }
}
