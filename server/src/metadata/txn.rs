//! Commit validation and apply: the pure core of the metadata state machine.
//!
//! `apply_command` takes one committed log entry's command and the state as it stands before
//! it, and returns the outcome and the write batch that carries the entry's effects. It reads
//! the state but never writes it, never awaits, never reads a clock: the caller (the Raft
//! state machine) writes the batch, with the applied index, atomically. Every replica applies
//! the same entries in the same order, so every replica reaches the same outcome.
//!
//! Rules (see docs/design/transactions.md):
//! - a transaction id seen before is answered with its recorded outcome and changes nothing;
//! - every read key's current version must equal the version read (absent = 0), else the
//!   entry aborts with `Conflict { key }` and changes nothing;
//! - writes are applied in order; each written key takes the entry's log index as version;
//! - `AdjustDir` is commutative: it adds to `nlink`, raises `mtime`/`ctime`, and bumps the
//!   listing version of a directory without having read it.

use std::collections::BTreeMap;

use cffs_proto::limits::{
    check_name, file_size_max, is_valid_block_size, BLOCK_ID_LEN, BLOCK_SIZE_DEFAULT, INLINE_DATA_MAX,
    SYMLINK_TARGET_MAX, TXN_BYTES_MAX, TXN_ID_LEN, TXN_KEYS_MAX,
};
use cffs_proto::{
    command, commit_response, write_op, AddBlockGroupRequest, AllocateInodesResponse, BlockGroup, ClusterMap, Command,
    CommitRequest, CommitResponse, Conflict, FileKind, Inode, Key, ReplaceBlockServerRequest,
};
use prost::Message;

use super::state;
use crate::constants::{DEDUP_RETAIN_ENTRIES, INODE_ALLOCATE_MAX, INO_FIRST_ALLOCATED, ROOT_INO};
use crate::storage::keys;
use crate::storage::{Cf, KvEngine, StorageError, WriteBatch};

/// What applying one command produced.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandOutcome {
    Commit(CommitResponse),
    AllocateInodes(AllocateInodesResponse),
    /// The cluster settings now stored (the proposed ones, or those stored before).
    Settings(cffs_proto::ClusterSettings),
    /// The cluster map after a block group was added.
    ClusterMap(ClusterMap),
    /// The blocks a `tombstone_blocks` entry marked (those still unreferenced at apply).
    Tombstoned(Vec<Vec<u8>>),
    /// A `drop_tombstones` entry applied: the fence is now its index.
    TombstonesDropped,
    /// The command was malformed; it had no effect. (The leader checks requests before
    /// proposing them, so this is reached only by a bug or a corrupted entry.)
    Rejected(String),
    /// A batch of commits: each one's outcome (`Commit` or `Rejected`), in order.
    Commits(Vec<CommandOutcome>),
}

/// Why a commit request is refused before it is proposed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitRequestError {
    #[error("transaction id must be {TXN_ID_LEN} bytes")]
    TxnIdLength,
    #[error("transaction has {0} keys, more than the limit of {TXN_KEYS_MAX}")]
    TooManyKeys(usize),
    #[error("transaction is {0} bytes, more than the limit of {TXN_BYTES_MAX}")]
    TooManyBytes(usize),
    #[error("malformed transaction: {0}")]
    Malformed(String),
    #[error("a file of {0} bytes is over the file size limit")]
    FileTooLarge(u64),
}

impl CommitRequestError {
    pub fn is_too_large(&self) -> bool {
        matches!(
            self,
            CommitRequestError::TooManyKeys(_)
                | CommitRequestError::TooManyBytes(_)
                | CommitRequestError::FileTooLarge(_)
        )
    }
}

fn malformed(what: impl Into<String>) -> CommitRequestError {
    CommitRequestError::Malformed(what.into())
}

fn check_key(key: &Option<Key>) -> Result<(), CommitRequestError> {
    use cffs_proto::key::Kind;
    match key.as_ref().and_then(|k| k.kind.as_ref()) {
        None => Err(malformed("empty key")),
        Some(Kind::Inode(0)) | Some(Kind::Listing(0)) => Err(malformed("inode number 0")),
        Some(Kind::Dentry(d)) => check_dentry_key(d),
        Some(_) => Ok(()),
    }
}

fn check_dentry_key(key: &cffs_proto::DentryKey) -> Result<(), CommitRequestError> {
    if key.parent == 0 {
        return Err(malformed("dentry parent 0"));
    }
    check_name(&key.name).map_err(|e| malformed(format!("dentry name: {e}")))
}

fn check_inode(inode: &Inode) -> Result<(), CommitRequestError> {
    if inode.ino == 0 {
        return Err(malformed("inode number 0"));
    }
    let kind = FileKind::try_from(inode.kind).map_err(|_| malformed("inode kind"))?;
    if kind == FileKind::Unspecified {
        return Err(malformed("inode kind unspecified"));
    }
    if inode.data.len() > INLINE_DATA_MAX {
        return Err(malformed(format!("inline data over {INLINE_DATA_MAX} bytes")));
    }
    if inode.symlink_target.len() > SYMLINK_TARGET_MAX {
        return Err(malformed("symlink target too long"));
    }
    if kind != FileKind::Regular {
        if inode.block_size != 0 || !inode.blocks.is_empty() {
            return Err(malformed("only regular files have blocks"));
        }
        return Ok(());
    }
    if inode.block_size == 0 {
        if !inode.blocks.is_empty() {
            return Err(malformed("blocks without a block size"));
        }
        if inode.size != inode.data.len() as u64 {
            return Err(malformed("inline file size differs from its data"));
        }
        return Ok(());
    }
    check_block_map(inode)
}

/// A block-mapped file: a valid block size, no inline data, a size over the inline limit and
/// within the file size limit, and a map sorted by index whose blocks lie within the size.
fn check_block_map(inode: &Inode) -> Result<(), CommitRequestError> {
    let block_size = inode.block_size;
    if !is_valid_block_size(block_size) {
        return Err(malformed(format!("block size {block_size}")));
    }
    if !inode.data.is_empty() {
        return Err(malformed("a file with both inline data and blocks"));
    }
    if inode.size <= INLINE_DATA_MAX as u64 {
        return Err(malformed(format!("a file of at most {INLINE_DATA_MAX} bytes keeps its data inline")));
    }
    if inode.size > file_size_max(block_size) {
        return Err(CommitRequestError::FileTooLarge(inode.size));
    }
    let mut previous: Option<u64> = None;
    for block in &inode.blocks {
        if previous.is_some_and(|p| p >= block.index) {
            return Err(malformed("block map not sorted by index, or an index twice"));
        }
        previous = Some(block.index);
        if block.id.len() != BLOCK_ID_LEN {
            return Err(malformed(format!("a block id is {BLOCK_ID_LEN} bytes")));
        }
        if block.group == 0 {
            return Err(malformed("block group 0"));
        }
        if block.len == 0 || block.len > block_size {
            return Err(malformed(format!("block length {} with block size {block_size}", block.len)));
        }
        let end =
            block.index.checked_mul(u64::from(block_size)).and_then(|start| start.checked_add(u64::from(block.len)));
        if end.is_none_or(|end| end > inode.size) {
            return Err(malformed(format!("block {} lies past the file's size {}", block.index, inode.size)));
        }
    }
    Ok(())
}

/// Block servers per block group.
pub const BLOCK_GROUP_REPLICAS: usize = 3;

/// Checks a request to add a block group to `map`: three distinct servers (ids and
/// addresses) that no group has yet, and a block size that is valid and, after the first
/// group, the cluster's.
pub fn check_add_block_group(map: &ClusterMap, request: &AddBlockGroupRequest) -> Result<(), String> {
    if request.members.len() != BLOCK_GROUP_REPLICAS {
        return Err(format!("a block group has {BLOCK_GROUP_REPLICAS} servers, not {}", request.members.len()));
    }
    let mut ids = std::collections::BTreeSet::new();
    let mut addrs = std::collections::BTreeSet::new();
    for member in &request.members {
        if member.id == 0 || member.addr.is_empty() || !member.addr.contains(':') {
            return Err(format!(
                "block server {} at '{}': ids start at 1, addresses are HOST:PORT",
                member.id, member.addr
            ));
        }
        if !ids.insert(member.id) || !addrs.insert(member.addr.as_str()) {
            return Err(format!("block server {} ({}) is named twice", member.id, member.addr));
        }
    }
    for group in &map.groups {
        for member in &group.members {
            if ids.contains(&member.id) || addrs.contains(member.addr.as_str()) {
                return Err(format!("block server {} ({}) is in group {} already", member.id, member.addr, group.id));
            }
        }
    }
    if request.block_size != 0 && !is_valid_block_size(request.block_size) {
        return Err(format!("block size {} is not a power of two in 4 KiB..=8 MiB", request.block_size));
    }
    if !map.groups.is_empty() && request.block_size != 0 && request.block_size != map.block_size {
        return Err(format!("the cluster's block size is {} already", map.block_size));
    }
    Ok(())
}

/// Checks a request to replace member `old` of block group `group` by `new_member`
/// (docs/design/blocks.md, "Changing a group's members"): the group exists and is not still
/// refilling its previous change, `old` is one of its members, and the new server is named
/// well and is no member of any group.
pub fn check_replace_block_server(map: &ClusterMap, request: &ReplaceBlockServerRequest) -> Result<(), String> {
    let Some(group) = map.groups.iter().find(|g| g.id == request.group) else {
        return Err(format!("the cluster map has no block group {}", request.group));
    };
    if group.refilling != 0 {
        return Err(format!(
            "block group {} is still refilling server {} (the change at index {}): one change per group at a \
             time; the scrubber ends the refill after a whole pass (`cffs cluster blocks` shows it), then try again",
            group.id, group.refilling, group.changed_at
        ));
    }
    if !group.members.iter().any(|m| m.id == request.old) {
        let ids: Vec<u64> = group.members.iter().map(|m| m.id).collect();
        return Err(format!("block server {} is not a member of group {} (members: {ids:?})", request.old, group.id));
    }
    let Some(new) = request.new_member.as_ref() else {
        return Err("the new block server is missing".into());
    };
    if new.id == 0 || new.addr.is_empty() || !new.addr.contains(':') {
        return Err(format!("block server {} at '{}': ids start at 1, addresses are HOST:PORT", new.id, new.addr));
    }
    for other in &map.groups {
        for member in &other.members {
            if member.id == new.id || member.addr == new.addr {
                return Err(format!("block server {} ({}) is in group {} already", member.id, member.addr, other.id));
            }
        }
    }
    Ok(())
}

/// Checks a commit request's shape and limits. The leader calls it before proposing; apply
/// calls it again, so a malformed entry can never change the state.
pub fn check_commit_request(request: &CommitRequest) -> Result<(), CommitRequestError> {
    if request.txn_id.len() != TXN_ID_LEN {
        return Err(CommitRequestError::TxnIdLength);
    }
    // The last sequence names a client's settled floor in the log-ordered index.
    if request.txn_id[keys::TXN_CLIENT_LEN..].iter().all(|b| *b == 0xff) {
        return Err(malformed("a transaction id's sequence must be below 2^64 - 1"));
    }
    let keys = request.reads.len() + request.writes.len();
    if keys > TXN_KEYS_MAX {
        return Err(CommitRequestError::TooManyKeys(keys));
    }
    let bytes = request.encoded_len();
    if bytes > TXN_BYTES_MAX {
        return Err(CommitRequestError::TooManyBytes(bytes));
    }
    for read in &request.reads {
        check_key(&read.key)?;
    }
    for write in &request.writes {
        match write.op.as_ref() {
            None => return Err(malformed("empty write")),
            Some(write_op::Op::PutInode(inode)) => check_inode(inode)?,
            Some(write_op::Op::DeleteInode(0)) => return Err(malformed("inode number 0")),
            Some(write_op::Op::DeleteInode(ROOT_INO)) => return Err(malformed("the root cannot be deleted")),
            Some(write_op::Op::DeleteInode(_)) => {}
            Some(write_op::Op::PutDentry(put)) => {
                check_dentry_key(put.key.as_ref().ok_or_else(|| malformed("dentry key missing"))?)?;
                let dentry = put.dentry.as_ref().ok_or_else(|| malformed("dentry missing"))?;
                if dentry.ino == 0 || dentry.ino == ROOT_INO {
                    return Err(malformed("dentry points at inode 0 or the root"));
                }
            }
            Some(write_op::Op::DeleteDentry(key)) => check_dentry_key(key)?,
            Some(write_op::Op::AdjustDir(adjust)) => {
                if adjust.ino == 0 {
                    return Err(malformed("inode number 0"));
                }
            }
        }
    }
    Ok(())
}

/// The state a commit sees: the engine's state, overlaid with the entry's own writes so far.
struct Overlay<'a> {
    engine: &'a dyn KvEngine,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// The entry's log index: the version of everything it writes.
    index: u64,
}

impl Overlay<'_> {
    fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, StorageError> {
        let key = key.as_ref();
        match self.writes.get(key) {
            Some(value) => Ok(value.clone()),
            None => self.engine.get(Cf::State, key),
        }
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert(key, Some(value));
    }

    fn delete(&mut self, key: Vec<u8>) {
        self.writes.insert(key, None);
    }

    fn into_batch(self, batch: &mut WriteBatch) {
        for (key, value) in self.writes {
            match value {
                Some(value) => batch.put(Cf::State, key, value),
                None => batch.delete(Cf::State, key),
            }
        }
    }
}

/// The root directory as created by the first applied entry.
pub fn root_inode() -> Inode {
    Inode {
        ino: ROOT_INO,
        kind: FileKind::Directory as i32,
        mode: 0o755,
        nlink: 2,
        parent: ROOT_INO,
        ..Default::default()
    }
}

/// Writes the root directory into `batch`, at version `index`. Called for the first entry
/// a fresh state machine applies.
pub fn create_root(index: u64, batch: &mut WriteBatch) {
    batch.put(Cf::State, keys::inode_key(ROOT_INO), keys::versioned_encode(index, &root_inode().encode_to_vec()));
    batch.put(Cf::State, keys::listing_key(ROOT_INO), keys::versioned_encode(index, &[]));
}

/// Applies one command at log index `index`, returning its outcome; its effects are appended
/// to `batch`. Storage errors are returned as errors: the caller must stop the replica.
pub fn apply_command(
    engine: &dyn KvEngine,
    index: u64,
    command: &Command,
    batch: &mut WriteBatch,
) -> Result<CommandOutcome, StorageError> {
    assert!(index > 0, "index 0 holds only the initial membership");
    match command.kind.as_ref() {
        Some(command::Kind::Commit(request)) => apply_commit(engine, index, request, batch),
        Some(command::Kind::CommitBatch(commits)) => apply_commit_batch(engine, index, &commits.commits, batch),
        Some(command::Kind::AllocateInodes(request)) => apply_allocate_inodes(engine, request.count, batch),
        Some(command::Kind::ClusterSettings(settings)) => apply_cluster_settings(engine, settings, batch),
        Some(command::Kind::AddBlockGroup(request)) => apply_add_block_group(engine, index, request, batch),
        Some(command::Kind::ReplaceBlockServer(request)) => apply_replace_block_server(engine, index, request, batch),
        Some(command::Kind::RefillDone(done)) => apply_refill_done(engine, index, done, batch),
        Some(command::Kind::TombstoneBlocks(ids)) => apply_tombstones(engine, index, &ids.ids, batch),
        Some(command::Kind::DropTombstones(ids)) => {
            for id in &ids.ids {
                batch.delete(Cf::State, keys::tombstone_key(id));
            }
            batch.put(Cf::State, keys::SYSTEM_GC_FENCE.to_vec(), keys::versioned_encode(index, &index.to_be_bytes()));
            Ok(CommandOutcome::TombstonesDropped)
        }
        None => Ok(CommandOutcome::Rejected("empty command".into())),
    }
}

/// Applies a batch of commits in order, as if each had an entry of its own: each reads (its
/// dedup record, its validation, its overlay) through a view that holds what the ones before
/// it wrote, and keeps its own outcome and dedup record. All of them write at version
/// `index`: two commits of one batch that both write a key leave the later one's value, and
/// no reader can have seen the earlier one's (nothing of the entry is visible before all of
/// it is applied).
fn apply_commit_batch(
    engine: &dyn KvEngine,
    index: u64,
    commits: &[CommitRequest],
    batch: &mut WriteBatch,
) -> Result<CommandOutcome, StorageError> {
    #[cfg(madsim)]
    let blind = crate::planted::armed(crate::planted::Bug::BatchValidatesAgainstBase);
    #[cfg(not(madsim))]
    let blind = false;
    #[cfg(madsim)]
    let shared_dedup = crate::planted::armed(crate::planted::Bug::BatchSharesDedup);
    #[cfg(not(madsim))]
    let shared_dedup = false;
    let mut view = crate::storage::pending::Pending::new(engine);
    let mut outcomes = Vec::with_capacity(commits.len());
    for (i, request) in commits.iter().enumerate() {
        let from = batch.ops.len();
        let reads: &dyn KvEngine = if blind { engine } else { &view };
        outcomes.push(apply_commit(reads, index, request, batch)?);
        if shared_dedup && i > 0 {
            if let Ok(txn_id) = <[u8; TXN_ID_LEN]>::try_from(request.txn_id.as_slice()) {
                let (record, by_index) = (keys::dedup_key(&txn_id), keys::dedup_by_index_key(index, &txn_id));
                let tail = batch.ops.split_off(from);
                batch.ops.extend(tail.into_iter().filter(|op| {
                    !matches!(op, crate::storage::kv_engine::BatchOp::Put { key, .. } if *key == record || *key == by_index)
                }));
            }
        }
        view.absorb(&batch.ops[from..]);
    }
    Ok(CommandOutcome::Commits(outcomes))
}

/// Stores the cluster settings if none are stored yet; never changes stored ones.
fn apply_cluster_settings(
    engine: &dyn KvEngine,
    settings: &cffs_proto::ClusterSettings,
    batch: &mut WriteBatch,
) -> Result<CommandOutcome, StorageError> {
    if let Some(stored) = crate::metadata::state::read_cluster_settings(engine)? {
        return Ok(CommandOutcome::Settings(stored));
    }
    if settings.lease_ms == 0 {
        return Ok(CommandOutcome::Rejected("a lease of 0 ms".into()));
    }
    batch.put(
        Cf::State,
        keys::SYSTEM_CLUSTER_SETTINGS.to_vec(),
        crate::storage::codec::cluster_settings_encode(settings),
    );
    Ok(CommandOutcome::Settings(*settings))
}

/// Marks each block that no inode references with a tombstone; a referenced one is skipped
/// (a commit that referenced it was applied first, in log order).
fn apply_tombstones(
    engine: &dyn KvEngine,
    index: u64,
    ids: &[Vec<u8>],
    batch: &mut WriteBatch,
) -> Result<CommandOutcome, StorageError> {
    let mut marked = Vec::new();
    for id in ids.iter().filter(|id| id.len() == BLOCK_ID_LEN) {
        if engine.get(Cf::State, &keys::block_ref_key(id))?.is_some() {
            continue;
        }
        batch.put(Cf::State, keys::tombstone_key(id), keys::versioned_encode(index, &[]));
        marked.push(id.clone());
    }
    Ok(CommandOutcome::Tombstoned(marked))
}

/// The collector's fence: the log index of its last `drop_tombstones` (0: none yet).
pub fn gc_fence(engine: &dyn KvEngine) -> Result<u64, StorageError> {
    match engine.get(Cf::State, keys::SYSTEM_GC_FENCE)? {
        None => Ok(0),
        Some(value) => {
            let (_, payload) = keys::versioned_decode(&value)?;
            let bytes: [u8; 8] = payload.try_into().map_err(|_| StorageError::corruption("gc fence"))?;
            Ok(u64::from_be_bytes(bytes))
        }
    }
}

/// Planted (simulation only): commits checked before a group's change are not aborted.
fn planted_skip_group_fence() -> bool {
    #[cfg(madsim)]
    if crate::planted::armed(crate::planted::Bug::SkipGroupChangeFence) {
        return true;
    }
    false
}

/// Keeps the reference index (`b` id → ino) in step with an inode's block map going from
/// `old` to `new`. A block the commit newly references must not be tombstoned nor held by
/// another inode, and the leader must have checked it after the collector's fence; else the
/// commit aborts (a conflict on the inode), and nothing is applied.
fn update_block_refs(
    overlay: &mut Overlay<'_>,
    ino: u64,
    old: &[cffs_proto::BlockRef],
    new: &[cffs_proto::BlockRef],
    checked_at: u64,
) -> Result<Result<(), CommitResponse>, StorageError> {
    let old_ids: std::collections::BTreeSet<&[u8]> = old.iter().map(|b| b.id.as_slice()).collect();
    let new_ids: std::collections::BTreeSet<&[u8]> = new.iter().map(|b| b.id.as_slice()).collect();
    #[cfg(madsim)]
    let ignore_tombstones = crate::planted::armed(crate::planted::Bug::CommitIgnoresTombstones);
    #[cfg(not(madsim))]
    let ignore_tombstones = false;
    let added: Vec<&[u8]> = new_ids.difference(&old_ids).copied().collect();
    if !added.is_empty() && !ignore_tombstones {
        let fence = match overlay.get(keys::SYSTEM_GC_FENCE)? {
            None => 0,
            Some(value) => {
                let (_, payload) = keys::versioned_decode(&value)?;
                u64::from_be_bytes(payload.try_into().map_err(|_| StorageError::corruption("gc fence"))?)
            }
        };
        if checked_at < fence {
            return Ok(Err(conflict(Key::inode(ino), checked_at, fence)));
        }
        // A block check counts holders among its group's members: one that ran before the
        // group's last change counted the old ones, and a block it passed may sit on a
        // single member of the new group (nothing refills it: the refill pass may be past
        // this inode already). The commit aborts; its re-run is checked against the new map.
        if let Some(value) = overlay.get(keys::SYSTEM_CLUSTER_MAP)? {
            let map = crate::storage::codec::cluster_map_decode(&value)?;
            let added_groups: std::collections::BTreeSet<u32> =
                new.iter().filter(|b| !old_ids.contains(b.id.as_slice())).map(|b| b.group).collect();
            for group in map.groups.iter().filter(|g| added_groups.contains(&g.id)) {
                if checked_at < group.changed_at && !planted_skip_group_fence() {
                    return Ok(Err(conflict(Key::inode(ino), checked_at, group.changed_at)));
                }
            }
        }
    }
    for id in added {
        if !ignore_tombstones && overlay.get(keys::tombstone_key(id))?.is_some() {
            return Ok(Err(conflict(Key::inode(ino), 0, 0)));
        }
        if let Some(value) = overlay.get(keys::block_ref_key(id))? {
            let (version, payload) = keys::versioned_decode(&value)?;
            if payload != ino.to_be_bytes() {
                return Ok(Err(conflict(Key::inode(ino), version, version)));
            }
        }
        overlay.put(keys::block_ref_key(id), keys::versioned_encode(overlay.index, &ino.to_be_bytes()));
    }
    for id in old_ids.difference(&new_ids) {
        overlay.delete(keys::block_ref_key(id));
    }
    Ok(Ok(()))
}

/// The inode stored (or written earlier in this entry) under `ino`, if any.
fn overlay_inode(overlay: &Overlay<'_>, ino: u64) -> Result<Option<(u64, Inode)>, StorageError> {
    match overlay.get(keys::inode_key(ino))? {
        None => Ok(None),
        Some(value) => {
            let (version, payload) = keys::versioned_decode(&value)?;
            let inode = Inode::decode(payload).map_err(|e| StorageError::corruption(format!("inode: {e}")))?;
            Ok(Some((version, inode)))
        }
    }
}

/// Adds a block group to the cluster map (the first one also sets the block size).
fn apply_add_block_group(
    engine: &dyn KvEngine,
    index: u64,
    request: &AddBlockGroupRequest,
    batch: &mut WriteBatch,
) -> Result<CommandOutcome, StorageError> {
    let mut map = state::read_cluster_map(engine)?;
    if let Err(why) = check_add_block_group(&map, request) {
        return Ok(CommandOutcome::Rejected(why));
    }
    if map.groups.is_empty() {
        map.block_size = match request.block_size {
            0 => BLOCK_SIZE_DEFAULT,
            size => size,
        };
    }
    let id = map.groups.iter().map(|g| g.id).max().unwrap_or(0) + 1;
    map.groups.push(BlockGroup { id, members: request.members.clone(), ..Default::default() });
    map.version = index;
    batch.put(Cf::State, keys::SYSTEM_CLUSTER_MAP.to_vec(), crate::storage::codec::cluster_map_encode(&map));
    Ok(CommandOutcome::ClusterMap(map))
}

/// Swaps a block group's member: the new one is refilled by the scrubber (`refilling`), the
/// old one kept as `replaced` until then. The group's `changed_at` becomes `index`: a commit
/// whose block check ran before this entry aborts (`update_block_refs`), since it counted
/// holders among the old members.
fn apply_replace_block_server(
    engine: &dyn KvEngine,
    index: u64,
    request: &ReplaceBlockServerRequest,
    batch: &mut WriteBatch,
) -> Result<CommandOutcome, StorageError> {
    let mut map = state::read_cluster_map(engine)?;
    if let Err(why) = check_replace_block_server(&map, request) {
        return Ok(CommandOutcome::Rejected(why));
    }
    let new = request.new_member.clone().expect("checked above");
    let group = map.groups.iter_mut().find(|g| g.id == request.group).expect("checked above");
    let slot = group.members.iter_mut().find(|m| m.id == request.old).expect("checked above");
    let old = std::mem::replace(slot, new.clone());
    group.changed_at = index;
    group.refilling = new.id;
    group.replaced = Some(old);
    #[cfg(madsim)]
    if crate::planted::armed(crate::planted::Bug::RefillSkipped) {
        // Planted: the new member counts as refilled at once.
        group.refilling = 0;
        group.replaced = None;
    }
    map.version = index;
    batch.put(Cf::State, keys::SYSTEM_CLUSTER_MAP.to_vec(), crate::storage::codec::cluster_map_encode(&map));
    Ok(CommandOutcome::ClusterMap(map))
}

/// Ends a group's refill, if the pass that proposed it saw the group's latest change.
fn apply_refill_done(
    engine: &dyn KvEngine,
    index: u64,
    done: &cffs_proto::RefillDone,
    batch: &mut WriteBatch,
) -> Result<CommandOutcome, StorageError> {
    let mut map = state::read_cluster_map(engine)?;
    let Some(group) = map.groups.iter_mut().find(|g| g.id == done.group) else {
        return Ok(CommandOutcome::Rejected(format!("the cluster map has no block group {}", done.group)));
    };
    if group.refilling == 0 || group.changed_at != done.changed_at {
        return Ok(CommandOutcome::Rejected(format!(
            "block group {}: no refill of the change at index {} is under way",
            done.group, done.changed_at
        )));
    }
    group.refilling = 0;
    group.replaced = None;
    map.version = index;
    batch.put(Cf::State, keys::SYSTEM_CLUSTER_MAP.to_vec(), crate::storage::codec::cluster_map_encode(&map));
    Ok(CommandOutcome::ClusterMap(map))
}

fn apply_allocate_inodes(
    engine: &dyn KvEngine,
    count: u32,
    batch: &mut WriteBatch,
) -> Result<CommandOutcome, StorageError> {
    if count == 0 || count > INODE_ALLOCATE_MAX {
        return Ok(CommandOutcome::Rejected(format!("allocate count must be 1..={INODE_ALLOCATE_MAX}")));
    }
    let first = match engine.get(Cf::State, keys::SYSTEM_NEXT_INO)? {
        None => INO_FIRST_ALLOCATED,
        Some(value) => crate::storage::codec::next_ino_decode(&value)?,
    };
    let next =
        first.checked_add(u64::from(count)).ok_or_else(|| StorageError::corruption("inode numbers exhausted"))?;
    #[cfg(madsim)]
    let next = match crate::planted::armed(crate::planted::Bug::OverlappingInodeRanges) && count > 1 {
        true => next - 1,
        false => next,
    };
    batch.put(Cf::State, keys::SYSTEM_NEXT_INO.to_vec(), crate::storage::codec::next_ino_encode(next));
    Ok(CommandOutcome::AllocateInodes(AllocateInodesResponse { first, count }))
}

fn conflict(key: Key, version_read: u64, version_now: u64) -> CommitResponse {
    CommitResponse {
        outcome: Some(commit_response::Outcome::Conflict(Conflict { key: Some(key), version_read, version_now })),
        lease: None,
    }
}

/// Checks a read set against the state: the first read whose version changed, if any.
/// Used at apply and by read-only commits (after a linearizable read).
pub fn validate_reads(engine: &dyn KvEngine, request: &CommitRequest) -> Result<Option<CommitResponse>, StorageError> {
    for read in &request.reads {
        let key = read.key.clone().expect("checked by check_commit_request");
        let storage_key = state::storage_key(&key).expect("checked by check_commit_request");
        let version_now = state::read_version(engine, &storage_key)?;
        if version_now != read.version {
            return Ok(Some(conflict(key, read.version, version_now)));
        }
    }
    Ok(None)
}

/// True when `txn_id` is below its client's settled floor: a late copy, refused.
pub fn settled_by_client(engine: &dyn KvEngine, txn_id: &[u8]) -> Result<bool, StorageError> {
    let Ok(txn_id) = <[u8; TXN_ID_LEN]>::try_from(txn_id) else { return Ok(false) };
    #[cfg(madsim)]
    if crate::planted::armed(crate::planted::Bug::SettledUnchecked) {
        return Ok(false);
    }
    let (client, seq) = split_txn_id(&txn_id);
    Ok(read_settled(engine, &client)?.is_some_and(|(_, floor)| seq < floor))
}

/// The recorded outcome of transaction `txn_id`, if it was decided (its dedup record).
pub fn decided(engine: &dyn KvEngine, txn_id: &[u8]) -> Result<Option<CommitResponse>, StorageError> {
    let Ok(txn_id) = <[u8; TXN_ID_LEN]>::try_from(txn_id) else { return Ok(None) };
    #[cfg(madsim)]
    if crate::planted::armed(crate::planted::Bug::ForgetDedup) {
        return Ok(None);
    }
    let Some(record) = engine.get(Cf::State, &keys::dedup_key(&txn_id))? else { return Ok(None) };
    let (_, payload) = keys::versioned_decode(&record)?;
    CommitResponse::decode(payload).map(Some).map_err(|e| StorageError::corruption(format!("dedup record: {e}")))
}

fn apply_commit(
    engine: &dyn KvEngine,
    index: u64,
    request: &CommitRequest,
    batch: &mut WriteBatch,
) -> Result<CommandOutcome, StorageError> {
    if let Err(error) = check_commit_request(request) {
        return Ok(CommandOutcome::Rejected(error.to_string()));
    }
    let txn_id: [u8; TXN_ID_LEN] = request.txn_id.as_slice().try_into().expect("length checked");
    let dedup_key = keys::dedup_key(&txn_id);
    #[cfg(madsim)]
    let forget_dedup = crate::planted::armed(crate::planted::Bug::ForgetDedup);
    #[cfg(not(madsim))]
    let forget_dedup = false;
    if let Some(record) = engine.get(Cf::State, &dedup_key)?.filter(|_| !forget_dedup) {
        // A retry of a commit already decided: answer as then, change nothing.
        let (_, payload) = keys::versioned_decode(&record)?;
        let response =
            CommitResponse::decode(payload).map_err(|e| StorageError::corruption(format!("dedup record: {e}")))?;
        return Ok(CommandOutcome::Commit(response));
    }
    // A transaction its client has settled is a late copy (a retry overtaken by another that
    // was answered, and the client gone on): its record may be gone, so it is refused, never
    // applied a second time.
    let (client, seq) = split_txn_id(&txn_id);
    let settled = read_settled(engine, &client)?;
    #[cfg(madsim)]
    let late_unchecked = crate::planted::armed(crate::planted::Bug::SettledUnchecked);
    #[cfg(not(madsim))]
    let late_unchecked = false;
    if settled.is_some_and(|(_, floor)| seq < floor) && !late_unchecked {
        return Ok(CommandOutcome::Rejected(format!(
            "transaction {} was settled by its client before this copy of it came: not applied",
            hex(&txn_id)
        )));
    }

    #[cfg(madsim)]
    let skip_validation = crate::planted::armed(crate::planted::Bug::SkipReadValidation);
    #[cfg(not(madsim))]
    let skip_validation = false;
    let conflict = if skip_validation { None } else { validate_reads(engine, request)? };
    let response = match conflict {
        Some(conflict) => conflict,
        None => match apply_commit_writes(engine, index, request)? {
            Ok(overlay) => {
                overlay.into_batch(batch);
                CommitResponse { outcome: Some(commit_response::Outcome::CommittedVersion(index)), lease: None }
            }
            Err(conflict) => conflict,
        },
    };
    batch.put(Cf::State, dedup_key, keys::versioned_encode(index, &response.encode_to_vec()));
    batch.put(Cf::State, keys::dedup_by_index_key(index, &txn_id), Vec::new());
    // Pruning before settling: both read the state before this commit, so a floor the prune
    // drops (this client silent for the window until now) is written again by the settle
    // that follows it in the batch, never the other way round.
    prune_dedup(engine, index, DEDUP_RETAIN_ENTRIES, batch)?;
    // Never this transaction itself: its own retries need its record.
    settle(engine, index, &client, request.settled_below.min(seq), settled, batch)?;
    Ok(CommandOutcome::Commit(response))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A transaction id's client (its first bytes) and sequence number (the rest, big-endian).
fn split_txn_id(txn_id: &[u8; TXN_ID_LEN]) -> ([u8; keys::TXN_CLIENT_LEN], u64) {
    let (client, seq) = txn_id.split_at(keys::TXN_CLIENT_LEN);
    (client.try_into().expect("8 bytes"), u64::from_be_bytes(seq.try_into().expect("8 bytes")))
}

fn txn_id_of(client: &[u8; keys::TXN_CLIENT_LEN], seq: u64) -> [u8; TXN_ID_LEN] {
    let mut id = [0; TXN_ID_LEN];
    id[..keys::TXN_CLIENT_LEN].copy_from_slice(client);
    id[keys::TXN_CLIENT_LEN..].copy_from_slice(&seq.to_be_bytes());
    id
}

/// A client's settled floor: (the index that wrote it, the floor).
fn read_settled(
    engine: &dyn KvEngine,
    client: &[u8; keys::TXN_CLIENT_LEN],
) -> Result<Option<(u64, u64)>, StorageError> {
    let Some(record) = engine.get(Cf::State, &keys::settled_key(client))? else { return Ok(None) };
    let (version, payload) = keys::versioned_decode(&record)?;
    let floor = <[u8; 8]>::try_from(payload).map_err(|_| StorageError::corruption("a settled floor"))?;
    Ok(Some((version, u64::from_be_bytes(floor))))
}

/// Most of a client's settled dedup records dropped per commit (a client that commits one
/// transaction at a time settles one per commit).
const SETTLED_DROP_PER_COMMIT: usize = 16;

/// Raises `client`'s settled floor to `floor` (never lowers it) and drops the dedup records
/// of its transactions below it: a run of keys, its sequences in order. The floor is itself
/// in the log-ordered index, so a client silent for the dedup window is forgotten with its
/// records.
fn settle(
    engine: &dyn KvEngine,
    index: u64,
    client: &[u8; keys::TXN_CLIENT_LEN],
    floor: u64,
    stored: Option<(u64, u64)>,
    batch: &mut WriteBatch,
) -> Result<(), StorageError> {
    let old = stored.map_or(0, |(_, floor)| floor);
    if floor <= old {
        return Ok(());
    }
    // From the old floor, not from 0: below it the records are gone already, and a scan over
    // their deletions would cost a step per one (RocksDB keeps them until it compacts), every
    // commit. A client that settles more than the limit at once leaves the rest to the window.
    let (start, end) = (keys::dedup_key(&txn_id_of(client, old)), keys::dedup_key(&txn_id_of(client, floor)));
    for (key, record) in engine.scan(Cf::State, &start, Some(&end), SETTLED_DROP_PER_COMMIT)? {
        let (version, _) = keys::versioned_decode(&record)?;
        let txn_id: [u8; TXN_ID_LEN] =
            key[1..].try_into().map_err(|_| StorageError::corruption("a dedup record's key"))?;
        batch.delete(Cf::State, keys::dedup_by_index_key(version, &txn_id));
        batch.delete(Cf::State, key);
    }
    let index_id = keys::settled_index_id(client);
    if let Some((version, _)) = stored {
        batch.delete(Cf::State, keys::dedup_by_index_key(version, &index_id));
    }
    batch.put(Cf::State, keys::settled_key(client), keys::versioned_encode(index, &floor.to_be_bytes()));
    batch.put(Cf::State, keys::dedup_by_index_key(index, &index_id), Vec::new());
    Ok(())
}

/// Most dedup records dropped per applied commit: pruning keeps pace with commits (each adds
/// one) without making any one apply slow.
const DEDUP_PRUNE_PER_COMMIT: usize = 4;

/// Drops dedup records older than `retain` log entries before `index`, oldest first. Runs at
/// apply time, so every replica drops the same records at the same index.
fn prune_dedup(engine: &dyn KvEngine, index: u64, retain: u64, batch: &mut WriteBatch) -> Result<(), StorageError> {
    let Some(cutoff) = index.checked_sub(retain) else {
        return Ok(());
    };
    let start = [keys::PREFIX_DEDUP_BY_INDEX];
    let end = keys::dedup_by_index_key(cutoff, &[0; TXN_ID_LEN]);
    for (key, _) in engine.scan(Cf::State, &start, Some(&end), DEDUP_PRUNE_PER_COMMIT)? {
        let (_, txn_id) = keys::dedup_by_index_key_decode(&key)?;
        let (client, _) = split_txn_id(&txn_id);
        if txn_id == keys::settled_index_id(&client) {
            // A client silent for the whole window: its floor goes too, if this entry is the
            // floor's own (the floor moves its entry when it is raised).
            let (version, _) = keys::dedup_by_index_key_decode(&key)?;
            if read_settled(engine, &client)?.is_some_and(|(at, _)| at == version) {
                batch.delete(Cf::State, keys::settled_key(&client));
            }
        } else {
            batch.delete(Cf::State, keys::dedup_key(&txn_id));
        }
        batch.delete(Cf::State, key);
    }
    Ok(())
}

/// Applies the write set to an overlay. A commutative update of a directory that no longer
/// exists (or is no longer a directory) aborts the commit with a conflict on that inode.
fn apply_commit_writes<'a>(
    engine: &'a dyn KvEngine,
    index: u64,
    request: &CommitRequest,
) -> Result<Result<Overlay<'a>, CommitResponse>, StorageError> {
    let mut overlay = Overlay { engine, writes: BTreeMap::new(), index };
    for write in &request.writes {
        match write.op.as_ref().expect("checked by check_commit_request") {
            write_op::Op::PutInode(inode) => {
                let old = overlay_inode(&overlay, inode.ino)?.map(|(_, old)| old.blocks).unwrap_or_default();
                if !old.is_empty() || !inode.blocks.is_empty() {
                    if let Err(conflict) =
                        update_block_refs(&mut overlay, inode.ino, &old, &inode.blocks, request.blocks_checked_at)?
                    {
                        return Ok(Err(conflict));
                    }
                }
                overlay.put(keys::inode_key(inode.ino), keys::versioned_encode(index, &inode.encode_to_vec()));
            }
            write_op::Op::DeleteInode(ino) => {
                if let Some((_, old)) = overlay_inode(&overlay, *ino)? {
                    if !old.blocks.is_empty() {
                        update_block_refs(&mut overlay, *ino, &old.blocks, &[], 0)?
                            .expect("dropping refs never aborts");
                    }
                }
                overlay.delete(keys::inode_key(*ino));
                overlay.delete(keys::listing_key(*ino));
            }
            write_op::Op::PutDentry(put) => {
                let key = put.key.as_ref().expect("checked");
                let dentry = put.dentry.as_ref().expect("checked");
                overlay.put(
                    keys::dentry_key(key.parent, &key.name),
                    keys::versioned_encode(index, &dentry.encode_to_vec()),
                );
            }
            write_op::Op::DeleteDentry(key) => overlay.delete(keys::dentry_key(key.parent, &key.name)),
            write_op::Op::AdjustDir(adjust) => {
                let inode_key = keys::inode_key(adjust.ino);
                let current = match overlay.get(&inode_key)? {
                    None => None,
                    Some(value) => {
                        let (version, payload) = keys::versioned_decode(&value)?;
                        let inode =
                            Inode::decode(payload).map_err(|e| StorageError::corruption(format!("inode: {e}")))?;
                        Some((version, inode))
                    }
                };
                let Some((version, mut inode)) = current.filter(|(_, i)| i.kind == FileKind::Directory as i32) else {
                    return Ok(Err(conflict(Key::inode(adjust.ino), 0, 0)));
                };
                let Some(nlink) = inode.nlink.checked_add_signed(adjust.nlink_delta).filter(|n| *n >= 2) else {
                    // A directory's nlink never drops below 2: a delta that would is stale.
                    return Ok(Err(conflict(Key::inode(adjust.ino), version, version)));
                };
                inode.nlink = nlink;
                #[cfg(madsim)]
                if crate::planted::armed(crate::planted::Bug::BlindParentUpdate) {
                    // The client's view of the directory, written over whatever is there.
                    inode.nlink = 2u32.saturating_add_signed(adjust.nlink_delta).max(2);
                }
                inode.mtime_ns = inode.mtime_ns.max(adjust.mtime_ns);
                inode.ctime_ns = inode.ctime_ns.max(adjust.mtime_ns);
                overlay.put(inode_key, keys::versioned_encode(index, &inode.encode_to_vec()));
                if adjust.bump_listing {
                    overlay.put(keys::listing_key(adjust.ino), keys::versioned_encode(index, &[]));
                }
            }
        }
    }
    Ok(Ok(overlay))
}

#[cfg(test)]
mod tests {
    //! Events in, effects out: each test builds commits the way a client would, applies them
    //! in a chosen log order to a fresh state, and checks outcomes and the resulting state.

    use cffs_proto::{AdjustDir, Dentry, DentryKey, PutDentry, ReadEntry, WriteOp};

    use super::*;
    use crate::storage::sim_disk::SimDisk;

    struct State {
        engine: SimDisk,
        index: u64,
    }

    impl State {
        fn new() -> Self {
            let engine = SimDisk::new();
            let mut batch = WriteBatch::default();
            create_root(1, &mut batch);
            engine.write(batch, false).unwrap();
            State { engine, index: 1 }
        }

        fn apply(&mut self, request: &CommitRequest) -> CommitResponse {
            self.index += 1;
            let mut batch = WriteBatch::default();
            let command = Command { kind: Some(command::Kind::Commit(request.clone())) };
            let outcome = apply_command(&self.engine, self.index, &command, &mut batch).unwrap();
            self.engine.write(batch, false).unwrap();
            match outcome {
                CommandOutcome::Commit(response) => response,
                other => panic!("unexpected outcome {other:?}"),
            }
        }

        /// Applies `requests` as one batch entry; each one's response.
        fn apply_batch(&mut self, requests: &[CommitRequest]) -> Vec<CommitResponse> {
            self.index += 1;
            let mut batch = WriteBatch::default();
            let command = Command {
                kind: Some(command::Kind::CommitBatch(cffs_proto::CommitBatch { commits: requests.to_vec() })),
            };
            let outcome = apply_command(&self.engine, self.index, &command, &mut batch).unwrap();
            self.engine.write(batch, false).unwrap();
            match outcome {
                CommandOutcome::Commits(outcomes) => outcomes
                    .into_iter()
                    .map(|outcome| match outcome {
                        CommandOutcome::Commit(response) => response,
                        other => panic!("unexpected outcome in a batch {other:?}"),
                    })
                    .collect(),
                other => panic!("unexpected outcome {other:?}"),
            }
        }

        fn version(&self, key: &Key) -> u64 {
            state::read_version(&self.engine, &state::storage_key(key).unwrap()).unwrap()
        }

        fn read(&self, key: Key) -> ReadEntry {
            let version = self.version(&key);
            ReadEntry { key: Some(key), version }
        }

        fn inode(&self, ino: u64) -> Option<Inode> {
            state::read_inode(&self.engine, ino).unwrap().1
        }
    }

    fn txn(id: u8, reads: Vec<ReadEntry>, writes: Vec<WriteOp>) -> CommitRequest {
        CommitRequest { txn_id: vec![id; 16], reads, writes, ..Default::default() }
    }

    fn committed(response: &CommitResponse) -> bool {
        matches!(response.outcome, Some(commit_response::Outcome::CommittedVersion(_)))
    }

    fn conflict_key(response: &CommitResponse) -> Option<Key> {
        match &response.outcome {
            Some(commit_response::Outcome::Conflict(c)) => c.key.clone(),
            _ => None,
        }
    }

    fn file(ino: u64, data: &[u8]) -> Inode {
        Inode {
            ino,
            kind: FileKind::Regular as i32,
            mode: 0o644,
            nlink: 1,
            size: data.len() as u64,
            data: data.to_vec(),
            ..Default::default()
        }
    }

    fn dir(ino: u64, parent: u64) -> Inode {
        Inode { ino, kind: FileKind::Directory as i32, mode: 0o755, nlink: 2, parent, ..Default::default() }
    }

    fn put_inode(inode: Inode) -> WriteOp {
        WriteOp { op: Some(write_op::Op::PutInode(inode)) }
    }

    fn put_dentry(parent: u64, name: &str, ino: u64, kind: FileKind) -> WriteOp {
        WriteOp {
            op: Some(write_op::Op::PutDentry(PutDentry {
                key: Some(DentryKey { parent, name: name.into() }),
                dentry: Some(Dentry { ino, kind: kind as i32 }),
            })),
        }
    }

    fn delete_dentry(parent: u64, name: &str) -> WriteOp {
        WriteOp { op: Some(write_op::Op::DeleteDentry(DentryKey { parent, name: name.into() })) }
    }

    fn adjust(ino: u64, nlink_delta: i32) -> WriteOp {
        WriteOp { op: Some(write_op::Op::AdjustDir(AdjustDir { ino, nlink_delta, mtime_ns: 5, bump_listing: true })) }
    }

    /// A create of `name` in `parent` as the client builds it: the name read as absent, the
    /// parent updated commutatively.
    fn create(state: &State, id: u8, parent: u64, name: &str, ino: u64) -> CommitRequest {
        txn(
            id,
            vec![state.read(Key::dentry(parent, name.as_bytes()))],
            vec![put_inode(file(ino, b"")), put_dentry(parent, name, ino, FileKind::Regular), adjust(parent, 0)],
        )
    }

    #[test]
    fn creates_of_different_names_in_one_directory_both_commit() {
        let mut state = State::new();
        let a = create(&state, 1, ROOT_INO, "a", 20);
        let b = create(&state, 2, ROOT_INO, "b", 21);
        assert!(committed(&state.apply(&a)));
        assert!(committed(&state.apply(&b)));
        assert!(state.inode(20).is_some() && state.inode(21).is_some());
    }

    #[test]
    fn a_batch_validates_each_commit_against_the_ones_before_it() {
        let mut state = State::new();
        // Two creates of one name and one of another, all built on the same reads: in one
        // entry the second create of "x" sees the first's dentry and conflicts.
        let a = create(&state, 1, ROOT_INO, "x", 20);
        let b = create(&state, 2, ROOT_INO, "x", 21);
        let c = create(&state, 3, ROOT_INO, "y", 22);
        let responses = state.apply_batch(&[a.clone(), b.clone(), c]);
        assert!(committed(&responses[0]));
        assert_eq!(conflict_key(&responses[1]), Some(Key::dentry(ROOT_INO, b"x")));
        assert!(committed(&responses[2]), "a create of another name is not touched");
        assert!(state.inode(20).is_some() && state.inode(21).is_none() && state.inode(22).is_some());
        // Each kept its own outcome: retried alone later, each is answered as in the batch.
        assert!(committed(&state.apply(&a)));
        assert_eq!(conflict_key(&state.apply(&b)), Some(Key::dentry(ROOT_INO, b"x")));
        assert!(state.inode(21).is_none());
    }

    #[test]
    fn a_retry_inside_the_same_batch_is_answered_from_the_first() {
        let mut state = State::new();
        let a = create(&state, 1, ROOT_INO, "x", 20);
        let responses = state.apply_batch(&[a.clone(), a]);
        assert!(committed(&responses[0]));
        assert_eq!(responses[0], responses[1], "one transaction id, one outcome");
        let listing = state.read(Key::listing(ROOT_INO)).version;
        assert_eq!(listing, state.index, "the directory changed once, in this entry");
    }

    #[test]
    fn a_batch_ends_in_the_state_its_commits_leave_in_separate_entries() {
        // Read-modify-writes of one counter file, each read at the version before the batch:
        // one commits, the others conflict, as they would one entry each.
        let mut batched = State::new();
        let mut separate = State::new();
        let setup = txn(9, vec![], vec![put_inode(file(30, b"0"))]);
        batched.apply(&setup);
        separate.apply(&setup);
        let rmw = |state: &State, id: u8, value: &[u8]| {
            txn(id, vec![state.read(Key::inode(30))], vec![put_inode(file(30, value))])
        };
        let requests: Vec<_> = (1..=3).map(|i| rmw(&batched, i, format!("{i}").as_bytes())).collect();
        let in_batch = batched.apply_batch(&requests);
        let one_by_one: Vec<_> = requests.iter().map(|r| separate.apply(r)).collect();
        let outcomes = |responses: &[CommitResponse]| responses.iter().map(committed).collect::<Vec<_>>();
        assert_eq!(outcomes(&in_batch), vec![true, false, false]);
        assert_eq!(outcomes(&in_batch), outcomes(&one_by_one));
        assert_eq!(batched.inode(30).unwrap().data, b"1");
        assert_eq!(separate.inode(30).unwrap().data, b"1");
    }

    #[test]
    fn creates_of_one_name_conflict_on_that_name() {
        let mut state = State::new();
        let a = create(&state, 1, ROOT_INO, "x", 20);
        let b = create(&state, 2, ROOT_INO, "x", 21);
        assert!(committed(&state.apply(&a)));
        assert_eq!(conflict_key(&state.apply(&b)), Some(Key::dentry(ROOT_INO, b"x")));
        assert!(state.inode(21).is_none(), "an aborted commit changes nothing");
    }

    #[test]
    fn readdir_conflicts_with_a_concurrent_create_in_that_directory() {
        let mut state = State::new();
        // T1 lists the root (reads the listing version) and writes a summary file elsewhere.
        let listing = state.read(Key::listing(ROOT_INO));
        let t1 = txn(1, vec![listing], vec![put_inode(file(30, b"summary"))]);
        let t2 = create(&state, 2, ROOT_INO, "new", 20);
        assert!(committed(&state.apply(&t2)));
        assert_eq!(conflict_key(&state.apply(&t1)), Some(Key::listing(ROOT_INO)));
    }

    #[test]
    fn read_of_an_absent_name_conflicts_with_its_creation() {
        let mut state = State::new();
        let absent = state.read(Key::dentry(ROOT_INO, b"lock"));
        assert_eq!(absent.version, 0);
        let t1 = txn(1, vec![absent], vec![put_inode(file(30, b"saw no lock"))]);
        assert!(committed(&state.apply(&create(&state, 2, ROOT_INO, "lock", 20))));
        assert_eq!(conflict_key(&state.apply(&t1)), Some(Key::dentry(ROOT_INO, b"lock")));
    }

    #[test]
    fn a_retried_commit_is_applied_once() {
        let mut state = State::new();
        let counter = create(&state, 1, ROOT_INO, "n", 20);
        assert!(committed(&state.apply(&counter)));
        // An increment: reads the file's inode, writes it back plus one.
        let read = state.read(Key::inode(20));
        let increment = txn(2, vec![read], vec![put_inode(file(20, b"1"))]);
        let first = state.apply(&increment);
        assert!(committed(&first));
        let version = state.version(&Key::inode(20));
        // The reply was lost; the client retries the same transaction id.
        let retry = state.apply(&increment);
        assert_eq!(retry, first, "the retry gets the first outcome");
        assert_eq!(state.version(&Key::inode(20)), version, "and changes nothing");
    }

    #[test]
    fn dedup_records_are_pruned_in_log_order_past_the_window() {
        let mut state = State::new();
        for id in 1..=6u8 {
            assert!(committed(&state.apply(&txn(id, vec![], vec![put_inode(file(20 + u64::from(id), b""))]))));
        }
        // Entries 2..=7 hold commits 1..=6. With a window of 3 at index 8, records of entries
        // before 5 go.
        let mut batch = WriteBatch::default();
        prune_dedup(&state.engine, 8, 3, &mut batch).unwrap();
        state.engine.write(batch, false).unwrap();
        let kept: Vec<u8> = (1..=6u8)
            .filter(|id| state.engine.get(Cf::State, &keys::dedup_key(&[*id; 16])).unwrap().is_some())
            .collect();
        assert_eq!(kept, vec![4, 5, 6]);
        let index_keys = state
            .engine
            .scan(Cf::State, &[keys::PREFIX_DEDUP_BY_INDEX], Some(&[keys::PREFIX_DEDUP_BY_INDEX + 1]), 100)
            .unwrap();
        assert_eq!(index_keys.len(), 3);
    }

    /// Transaction `seq` of client `client` (its id's first 8 bytes), saying `settled_below`.
    fn txn_of(client: u8, seq: u64, settled_below: u64, writes: Vec<WriteOp>) -> CommitRequest {
        let mut txn_id = vec![client; 8];
        txn_id.extend_from_slice(&seq.to_be_bytes());
        CommitRequest { txn_id, writes, settled_below, ..Default::default() }
    }

    fn has_record(state: &State, client: u8, seq: u64) -> bool {
        state.engine.get(Cf::State, &keys::dedup_key(&txn_id_of(&[client; 8], seq))).unwrap().is_some()
    }

    #[test]
    fn a_settled_transaction_loses_its_record_and_a_late_copy_of_it_is_refused() {
        let mut state = State::new();
        let one = txn_of(7, 1, 0, vec![put_inode(file(30, b"one"))]);
        assert!(committed(&state.apply(&one)));
        let written_at = state.version(&Key::inode(30));
        assert_eq!(state.apply(&one), state.apply(&one), "a retry is answered from its record");
        // The client's next commit says 1 is settled (its oldest open transaction is 2).
        assert!(committed(&state.apply(&txn_of(7, 2, 2, vec![put_inode(file(30, b"two"))]))));
        assert!(!has_record(&state, 7, 1) && has_record(&state, 7, 2));
        // The late copy of 1: refused, and /30 keeps the later write.
        state.index += 1;
        let mut batch = WriteBatch::default();
        let command = Command { kind: Some(command::Kind::Commit(one.clone())) };
        let outcome = apply_command(&state.engine, state.index, &command, &mut batch).unwrap();
        state.engine.write(batch, false).unwrap();
        assert!(matches!(&outcome, CommandOutcome::Rejected(why) if why.contains("settled")), "{outcome:?}");
        assert_eq!(state.inode(30).unwrap().data, b"two");
        assert!(state.version(&Key::inode(30)) > written_at);
        // A floor never goes down, and never past the commit that carries it.
        assert!(committed(&state.apply(&txn_of(7, 5, 99, vec![]))));
        assert!(has_record(&state, 7, 5), "a commit never settles itself");
        assert_eq!(read_settled(&state.engine, &[7; 8]).unwrap().unwrap().1, 5);
        assert!(committed(&state.apply(&txn_of(7, 6, 3, vec![]))));
        assert_eq!(read_settled(&state.engine, &[7; 8]).unwrap().unwrap().1, 5);
        // Another client's floor is its own.
        assert!(committed(&state.apply(&txn_of(8, 1, 0, vec![]))));
        assert!(has_record(&state, 8, 1));
    }

    /// Applies `request` and returns its outcome, whatever it is.
    fn apply_raw(state: &mut State, request: &CommitRequest) -> CommandOutcome {
        state.index += 1;
        let mut batch = WriteBatch::default();
        let command = Command { kind: Some(command::Kind::Commit(request.clone())) };
        let outcome = apply_command(&state.engine, state.index, &command, &mut batch).unwrap();
        state.engine.write(batch, false).unwrap();
        outcome
    }

    #[test]
    fn a_floor_raised_by_the_commit_whose_prune_reaches_it_stays() {
        let mut state = State::new();
        assert!(committed(&state.apply(&txn_of(7, 1, 0, vec![]))));
        assert!(committed(&state.apply(&txn_of(7, 2, 2, vec![put_inode(file(30, b"two"))]))));
        let floor_at = read_settled(&state.engine, &[7; 8]).unwrap().unwrap().0;
        // The client's next commit comes just as the window's prune reaches its floor.
        state.index = floor_at + DEDUP_RETAIN_ENTRIES;
        assert!(committed(&state.apply(&txn_of(7, 3, 3, vec![]))));
        assert_eq!(read_settled(&state.engine, &[7; 8]).unwrap().map(|(_, floor)| floor), Some(3));
        // So a late copy of 2, whose record is gone, is still refused.
        let late = apply_raw(&mut state, &txn_of(7, 2, 2, vec![put_inode(file(30, b"two"))]));
        assert!(matches!(&late, CommandOutcome::Rejected(why) if why.contains("settled")), "{late:?}");
    }

    #[test]
    fn a_transaction_id_may_not_end_in_the_floors_sequence() {
        let request = txn_of(7, u64::MAX, 0, vec![]);
        assert!(check_commit_request(&request).is_err());
    }

    #[test]
    fn a_silent_clients_floor_is_pruned_with_the_window() {
        let mut state = State::new();
        assert!(committed(&state.apply(&txn_of(7, 1, 0, vec![]))));
        assert!(committed(&state.apply(&txn_of(7, 2, 2, vec![]))));
        assert!(read_settled(&state.engine, &[7; 8]).unwrap().is_some());
        let mut batch = WriteBatch::default();
        prune_dedup(&state.engine, state.index + 10, 1, &mut batch).unwrap();
        state.engine.write(batch, false).unwrap();
        assert!(read_settled(&state.engine, &[7; 8]).unwrap().is_none(), "the floor went with the window");
        assert!(!has_record(&state, 7, 2));
        let index_keys = state
            .engine
            .scan(Cf::State, &[keys::PREFIX_DEDUP_BY_INDEX], Some(&[keys::PREFIX_DEDUP_BY_INDEX + 1]), 100)
            .unwrap();
        assert!(index_keys.is_empty(), "{index_keys:?}");
    }

    #[test]
    fn a_retried_conflict_stays_a_conflict() {
        let mut state = State::new();
        let stale =
            txn(1, vec![ReadEntry { key: Some(Key::inode(ROOT_INO)), version: 999 }], vec![put_inode(file(40, b""))]);
        let first = state.apply(&stale);
        assert!(conflict_key(&first).is_some());
        assert_eq!(state.apply(&stale), first);
    }

    /// Two directory renames that would form a loop: `mv /a /b/a` and `mv /b /a/b`. Each
    /// reads the destination's ancestor chain (the dentries on its path), so the second to
    /// apply sees the first's change and aborts.
    #[test]
    fn two_renames_that_would_form_a_loop_cannot_both_commit() {
        let mut state = State::new();
        let setup = txn(
            1,
            vec![],
            vec![
                put_inode(dir(20, ROOT_INO)),
                put_dentry(ROOT_INO, "a", 20, FileKind::Directory),
                put_inode(dir(21, ROOT_INO)),
                put_dentry(ROOT_INO, "b", 21, FileKind::Directory),
                adjust(ROOT_INO, 2),
            ],
        );
        assert!(committed(&state.apply(&setup)));
        let rename =
            |state: &State, id: u8, source: &str, source_ino: u64, target_parent_name: &str, target_parent: u64| {
                let mut moved = dir(source_ino, target_parent);
                moved.ctime_ns = 1;
                txn(
                    id,
                    vec![
                        state.read(Key::dentry(ROOT_INO, source.as_bytes())),
                        state.read(Key::dentry(ROOT_INO, target_parent_name.as_bytes())),
                        state.read(Key::dentry(target_parent, source.as_bytes())),
                        state.read(Key::inode(source_ino)),
                    ],
                    vec![
                        delete_dentry(ROOT_INO, source),
                        put_dentry(target_parent, source, source_ino, FileKind::Directory),
                        put_inode(moved),
                        adjust(ROOT_INO, -1),
                        adjust(target_parent, 1),
                    ],
                )
            };
        let ab = rename(&state, 2, "a", 20, "b", 21);
        let ba = rename(&state, 3, "b", 21, "a", 20);
        assert!(committed(&state.apply(&ab)));
        // `mv /b /a/b` resolved its destination through `/a`, which the first rename removed.
        assert_eq!(conflict_key(&state.apply(&ba)), Some(Key::dentry(ROOT_INO, b"a")));
        assert_eq!(state.inode(ROOT_INO).unwrap().nlink, 3, "root: 2 + the one subdirectory left");
    }

    #[test]
    fn commutative_parent_updates_add_up() {
        let mut state = State::new();
        let mkdir = |id: u8, name: &str, ino: u64| {
            txn(
                id,
                vec![],
                vec![
                    put_inode(dir(ino, ROOT_INO)),
                    put_dentry(ROOT_INO, name, ino, FileKind::Directory),
                    adjust(ROOT_INO, 1),
                ],
            )
        };
        let (a, b) = (mkdir(1, "a", 20), mkdir(2, "b", 21));
        assert!(committed(&state.apply(&a)));
        assert!(committed(&state.apply(&b)));
        assert_eq!(state.inode(ROOT_INO).unwrap().nlink, 4);
    }

    #[test]
    fn adjusting_a_vanished_directory_aborts() {
        let mut state = State::new();
        let t = create(&state, 1, 99, "x", 20);
        assert_eq!(conflict_key(&state.apply(&t)), Some(Key::inode(99)));
        assert!(state.inode(20).is_none());
    }

    #[test]
    fn malformed_requests_are_refused() {
        let state = State::new();
        let mut bad_id = create(&state, 1, ROOT_INO, "x", 20);
        bad_id.txn_id = vec![1; 3];
        assert_eq!(check_commit_request(&bad_id), Err(CommitRequestError::TxnIdLength));
        for name in ["", ".", "..", "a/b", "a\0b"] {
            let t = txn(1, vec![], vec![put_dentry(ROOT_INO, name, 20, FileKind::Regular)]);
            assert!(check_commit_request(&t).is_err(), "{name:?}");
        }
        let long = "x".repeat(256);
        assert!(
            check_commit_request(&txn(1, vec![], vec![put_dentry(ROOT_INO, &long, 20, FileKind::Regular)])).is_err()
        );
        let many = txn(
            1,
            (0..=TXN_KEYS_MAX as u64).map(|i| ReadEntry { key: Some(Key::inode(i + 1)), version: 0 }).collect(),
            vec![],
        );
        assert!(check_commit_request(&many).unwrap_err().is_too_large());
        let mut big = file(20, &vec![0; INLINE_DATA_MAX + 1]);
        big.size = big.data.len() as u64;
        assert!(check_commit_request(&txn(1, vec![], vec![put_inode(big)])).is_err());
        assert!(check_commit_request(&txn(1, vec![], vec![WriteOp { op: Some(write_op::Op::DeleteInode(ROOT_INO)) }]))
            .is_err());
    }

    #[test]
    fn a_malformed_entry_changes_nothing_at_apply() {
        let mut state = State::new();
        state.index += 1;
        let command = Command {
            kind: Some(command::Kind::Commit(txn(1, vec![], vec![put_dentry(ROOT_INO, "..", 20, FileKind::Regular)]))),
        };
        let mut batch = WriteBatch::default();
        let outcome = apply_command(&state.engine, state.index, &command, &mut batch).unwrap();
        assert!(matches!(outcome, CommandOutcome::Rejected(_)));
        assert!(batch.is_empty());
    }

    #[test]
    fn inode_ranges_never_overlap() {
        let state = State::new();
        let mut batch = WriteBatch::default();
        let CommandOutcome::AllocateInodes(first) = apply_allocate_inodes(&state.engine, 100, &mut batch).unwrap()
        else {
            panic!()
        };
        state.engine.write(batch, false).unwrap();
        let mut batch = WriteBatch::default();
        let CommandOutcome::AllocateInodes(second) = apply_allocate_inodes(&state.engine, 10, &mut batch).unwrap()
        else {
            panic!()
        };
        assert_eq!(first.first, INO_FIRST_ALLOCATED);
        assert_eq!(second.first, first.first + 100);
        assert!(matches!(
            apply_allocate_inodes(&state.engine, 0, &mut WriteBatch::default()).unwrap(),
            CommandOutcome::Rejected(_)
        ));
    }

    fn mapped(ino: u64, ids: &[u8]) -> Inode {
        let blocks = ids
            .iter()
            .enumerate()
            .map(|(i, id)| cffs_proto::BlockRef { index: i as u64, id: vec![*id; 16], group: 1, len: 4096, crc: 7 })
            .collect();
        Inode {
            ino,
            kind: FileKind::Regular as i32,
            mode: 0o644,
            nlink: 1,
            size: 100_000,
            block_size: 64 * 1024,
            blocks,
            ..Default::default()
        }
    }

    impl State {
        fn run(&mut self, kind: command::Kind) -> CommandOutcome {
            self.index += 1;
            let mut batch = WriteBatch::default();
            let outcome = apply_command(&self.engine, self.index, &Command { kind: Some(kind) }, &mut batch).unwrap();
            self.engine.write(batch, false).unwrap();
            outcome
        }

        fn referenced(&self, id: u8) -> bool {
            self.engine.get(Cf::State, &keys::block_ref_key(&[id; 16])).unwrap().is_some()
        }
    }

    fn ids(list: &[u8]) -> cffs_proto::BlockIds {
        cffs_proto::BlockIds { ids: list.iter().map(|id| vec![*id; 16]).collect() }
    }

    fn checked(mut request: CommitRequest, at: u64) -> CommitRequest {
        request.blocks_checked_at = at;
        request
    }

    #[test]
    fn the_reference_index_follows_block_maps() {
        let mut state = State::new();
        assert!(committed(&state.apply(&txn(1, vec![], vec![put_inode(mapped(20, &[1, 2]))]))));
        assert!(state.referenced(1) && state.referenced(2));
        // Copy-on-write of block 1: the old block loses its reference, the new one gains it.
        let read = state.read(Key::inode(20));
        assert!(committed(&state.apply(&txn(2, vec![read], vec![put_inode(mapped(20, &[3, 2]))]))));
        assert!(!state.referenced(1) && state.referenced(2) && state.referenced(3));
        // Another inode may not reference a block this one holds.
        assert_eq!(
            conflict_key(&state.apply(&txn(3, vec![], vec![put_inode(mapped(21, &[2]))]))),
            Some(Key::inode(21))
        );
        // Deleting the inode drops its references.
        let delete = WriteOp { op: Some(write_op::Op::DeleteInode(20)) };
        assert!(committed(&state.apply(&txn(4, vec![], vec![delete]))));
        assert!(!state.referenced(2) && !state.referenced(3));
    }

    #[test]
    fn tombstones_skip_referenced_blocks_and_stop_commits_of_marked_ones() {
        let mut state = State::new();
        assert!(committed(&state.apply(&txn(1, vec![], vec![put_inode(mapped(20, &[1]))]))));
        // Block 1 is referenced: skipped; block 5 (written, not yet committed) is marked.
        let CommandOutcome::Tombstoned(marked) = state.run(command::Kind::TombstoneBlocks(ids(&[1, 5]))) else {
            panic!()
        };
        assert_eq!(marked, vec![vec![5u8; 16]]);
        // The transaction that wrote block 5 commits after the tombstone: it aborts.
        let late = checked(txn(2, vec![], vec![put_inode(mapped(21, &[5]))]), state.index);
        assert_eq!(conflict_key(&state.apply(&late)), Some(Key::inode(21)));
        assert!(!state.referenced(5));
    }

    #[test]
    fn a_commit_checked_before_the_fence_aborts() {
        let mut state = State::new();
        state.run(command::Kind::TombstoneBlocks(ids(&[5])));
        let checked_before = state.index;
        assert_eq!(state.run(command::Kind::DropTombstones(ids(&[5]))), CommandOutcome::TombstonesDropped);
        let fence = state.index;
        assert_eq!(gc_fence(&state.engine).unwrap(), fence);
        // Its blocks were checked before the deletion finished: it may name a deleted block.
        let stale = checked(txn(1, vec![], vec![put_inode(mapped(21, &[5]))]), checked_before);
        assert_eq!(conflict_key(&state.apply(&stale)), Some(Key::inode(21)));
        // Checked after the fence: the check saw what exists now.
        let fresh = checked(txn(2, vec![], vec![put_inode(mapped(21, &[6]))]), fence);
        assert!(committed(&state.apply(&fresh)));
        assert!(state.referenced(6));
    }

    fn member(id: u64) -> cffs_proto::BlockMember {
        cffs_proto::BlockMember { id, addr: format!("10.0.2.{id}:7201") }
    }

    fn replace(group: u32, old: u64, new: u64) -> command::Kind {
        command::Kind::ReplaceBlockServer(ReplaceBlockServerRequest { group, old, new_member: Some(member(new)) })
    }

    fn map_of(outcome: CommandOutcome) -> ClusterMap {
        match outcome {
            CommandOutcome::ClusterMap(map) => map,
            other => panic!("expected a cluster map, got {other:?}"),
        }
    }

    #[test]
    fn a_block_group_takes_one_change_at_a_time_until_its_refill_ends() {
        let mut state = State::new();
        let add = AddBlockGroupRequest { members: (4..=6).map(member).collect(), block_size: 0 };
        map_of(state.run(command::Kind::AddBlockGroup(add)));
        // Bad requests change nothing.
        for (kind, why) in [
            (replace(2, 6, 7), "no block group 2"),
            (replace(1, 9, 7), "not a member"),
            (replace(1, 6, 5), "in group 1 already"),
            (replace(1, 6, 0), "ids start at 1"),
        ] {
            let CommandOutcome::Rejected(text) = state.run(kind) else { panic!("{why}: not rejected") };
            assert!(text.contains(why), "{text}");
        }
        assert_eq!(state::read_cluster_map(&state.engine).unwrap().groups[0].changed_at, 0);

        let map = map_of(state.run(replace(1, 6, 7)));
        let changed_at = state.index;
        let group = &map.groups[0];
        let ids: Vec<u64> = group.members.iter().map(|m| m.id).collect();
        assert_eq!(ids, vec![4, 5, 7], "the new member takes the old one's place");
        assert_eq!((group.changed_at, group.refilling), (changed_at, 7));
        assert_eq!(group.replaced.as_ref().map(|m| m.id), Some(6));
        assert_eq!(map.version, changed_at);
        // While 7 refills, the group takes no other change.
        let CommandOutcome::Rejected(text) = state.run(replace(1, 5, 8)) else { panic!("a second change") };
        assert!(text.contains("still refilling server 7"), "{text}");
        // A refill end for another change is refused; the right one ends the refill.
        let stale = cffs_proto::RefillDone { group: 1, changed_at: changed_at - 1 };
        assert!(matches!(state.run(command::Kind::RefillDone(stale)), CommandOutcome::Rejected(_)));
        let done = cffs_proto::RefillDone { group: 1, changed_at };
        let map = map_of(state.run(command::Kind::RefillDone(done)));
        assert_eq!((map.groups[0].refilling, map.groups[0].replaced.clone()), (0, None));
        assert_eq!(map.groups[0].changed_at, changed_at, "the change index stays: the commit fence uses it");
        // Now the next change is accepted.
        let map = map_of(state.run(replace(1, 5, 8)));
        assert_eq!(map.groups[0].refilling, 8);
    }

    #[test]
    fn a_commit_whose_blocks_were_checked_before_their_groups_change_aborts() {
        let mut state = State::new();
        let add = AddBlockGroupRequest { members: (4..=6).map(member).collect(), block_size: 0 };
        map_of(state.run(command::Kind::AddBlockGroup(add)));
        let checked_before = state.index;
        map_of(state.run(replace(1, 6, 7)));
        // Its block check counted holders among 4, 5 and 6: the block may be on 4 alone of
        // the new group.
        let stale = checked(txn(1, vec![], vec![put_inode(mapped(21, &[5]))]), checked_before);
        assert_eq!(conflict_key(&state.apply(&stale)), Some(Key::inode(21)));
        assert!(!state.referenced(5));
        // Checked against the new members: it commits.
        let fresh = checked(txn(2, vec![], vec![put_inode(mapped(21, &[5]))]), state.index);
        assert!(committed(&state.apply(&fresh)));
        // A commit that names no new block (a rename, a chmod of the file) is not refused.
        let read = state.read(Key::inode(21));
        let mut chmod = mapped(21, &[5]);
        chmod.mode = 0o600;
        assert!(committed(&state.apply(&checked(txn(3, vec![read], vec![put_inode(chmod)]), 0))));
    }
}
