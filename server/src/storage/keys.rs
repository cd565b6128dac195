//! The whole keyspace of a metadata replica, and the encoding of every stored value.
//! Integers are big-endian and fixed-width so that keys sort numerically.
//!
//! Column family `state` (the replicated state machine):
//! - `i` ino:u64                 → versioned `Inode` (prost)
//! - `d` parent:u64 name:bytes   → versioned `Dentry` (prost); a directory's dentries are
//!   contiguous, in name order, so a listing is one range scan
//! - `l` ino:u64                 → versioned, empty payload: the directory's listing version
//! - `t` txn_id:[u8;16]          → dedup record: versioned (the commit's log index), then
//!   `CommitResponse` (prost)
//! - `T` index:u64 txn_id:[u8;16] → empty: the dedup records in log order, for pruning (and
//!   each client's settled floor, under the txn id `client ‖ ff×8`)
//! - `f` client:[u8;8]           → versioned, payload floor:u64: the client's transactions
//!   below `floor` are settled (their records dropped, a late one refused)
//! - `b` block id:[u8;16]        → versioned, payload ino:u64: the inode that references the
//!   block (the reference index, kept at apply time from every inode put and delete)
//! - `g` block id:[u8;16]        → versioned, empty: a tombstone (the collector's mark)
//! - `s` name                    → system keys: `applied` (last applied log id),
//!   `membership`, `next_ino`, `cluster_settings` (set once, by the first leader),
//!   `cluster_map` (the block groups; changed by `AddBlockGroup` entries), `gc_fence` (the
//!   log index of the collector's last `DropTombstones`)
//!
//! A versioned value holds `version:u64` and then the payload: the version is the log index
//! of the commit that last wrote the key; an absent key has version 0.
//!
//! Column family `raft_log`: group:u32 log index:u64 → `Entry` record.
//! Column family `raft_meta`, each key after group:u32: `vote`, `committed`, `purged`,
//! `snapshot_meta`, `snapshot_file` and `snapshot_frame` file n (the current snapshot, in
//! frames; `raft/snapshot_file.rs`), `snapshot_installing` (an install under way),
//! `session_ids` (the session numbers this replica reserved). `GroupKeys` builds them: every
//! Raft group a server hosts has its own log and meta keys in one engine (group 0 is the
//! metadata group). Keys written before groups (a log key of 8 bytes, a meta key that starts
//! with its name) are moved under group 0 at start (`migrate_ungrouped`).
//!
//! Every value is a record of `codec.rs` (kind, format, body, crc32), checked on every read;
//! docs/design/storage.md has each byte by byte.

use super::kv_engine::StorageError;

pub const PREFIX_INODE: u8 = b'i';
pub const PREFIX_DENTRY: u8 = b'd';
pub const PREFIX_LISTING: u8 = b'l';
pub const PREFIX_DEDUP: u8 = b't';
pub const PREFIX_DEDUP_BY_INDEX: u8 = b'T';
pub const PREFIX_SETTLED: u8 = b'f';
/// The bytes of a transaction id that name its client (the rest is its sequence number).
pub const TXN_CLIENT_LEN: usize = 8;
pub const PREFIX_SYSTEM: u8 = b's';
pub const PREFIX_BLOCK_REF: u8 = b'b';
pub const PREFIX_TOMBSTONE: u8 = b'g';

pub const SYSTEM_APPLIED: &[u8] = b"sapplied";
pub const SYSTEM_MEMBERSHIP: &[u8] = b"smembership";
pub const SYSTEM_NEXT_INO: &[u8] = b"snext_ino";
pub const SYSTEM_CLUSTER_SETTINGS: &[u8] = b"scluster_settings";
/// The cluster map (block groups, block size): `codec::cluster_map_encode`.
pub const SYSTEM_CLUSTER_MAP: &[u8] = b"scluster_map";
/// The collector's fence: versioned, payload the log index of the last `DropTombstones`.
pub const SYSTEM_GC_FENCE: &[u8] = b"sgc_fence";

/// `b` id → versioned, payload the referencing inode's number (u64 BE).
pub fn block_ref_key(id: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + id.len());
    key.push(PREFIX_BLOCK_REF);
    key.extend_from_slice(id);
    key
}

/// `g` id → versioned, empty: a tombstone (the block is being collected).
pub fn tombstone_key(id: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + id.len());
    key.push(PREFIX_TOMBSTONE);
    key.extend_from_slice(id);
    key
}

pub const META_VOTE: &[u8] = b"vote";
pub const META_COMMITTED: &[u8] = b"committed";
pub const META_PURGED: &[u8] = b"purged";
pub const META_SNAPSHOT_META: &[u8] = b"snapshot_meta";
/// The current snapshot's file (`SnapshotFile` record): which frames hold it.
pub const META_SNAPSHOT_FILE: &[u8] = b"snapshot_file";
/// A snapshot being installed (its `SnapshotFile`, and its meta under the next key): present
/// only between the install's first and last batch, so a restart finishes the install.
pub const META_SNAPSHOT_INSTALLING: &[u8] = b"snapshot_installing";
pub const META_SNAPSHOT_INSTALLING_META: &[u8] = b"snapshot_installing_meta";
/// The format before frames (one record with the whole state): removed when found.
pub const META_SNAPSHOT_DATA_OLD: &[u8] = b"snapshot_data";
/// `snapshot_frame` file:u64 n:u64 → a snapshot's frame `n` (a frame or, last, the trailer).
pub const META_SNAPSHOT_FRAME_PREFIX: &[u8] = b"snapshot_frame";

/// The `raft_log` and `raft_meta` keys of one Raft group: each starts with the group's id
/// (u32 BE), so the groups of one engine never share a key and each group's log is one
/// contiguous range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupKeys {
    group: u32,
}

impl GroupKeys {
    pub const fn new(group: u32) -> Self {
        GroupKeys { group }
    }

    pub fn group(&self) -> u32 {
        self.group
    }

    fn prefixed(&self, capacity: usize) -> Vec<u8> {
        let mut key = Vec::with_capacity(4 + capacity);
        key.extend_from_slice(&self.group.to_be_bytes());
        key
    }

    /// The `raft_log` key of entry `index`.
    pub fn log(&self, index: u64) -> Vec<u8> {
        let mut key = self.prefixed(8);
        key.extend_from_slice(&index.to_be_bytes());
        key
    }

    /// The first key after every entry of this group's log.
    pub fn log_end(&self) -> Vec<u8> {
        let mut key = self.prefixed(9);
        key.extend_from_slice(&[0xff; 9]);
        key
    }

    /// The index a `raft_log` key of this group names.
    pub fn log_decode(&self, key: &[u8]) -> Result<u64, StorageError> {
        match key.strip_prefix(&self.group.to_be_bytes()[..]).and_then(|rest| <[u8; 8]>::try_from(rest).ok()) {
            Some(index) => Ok(u64::from_be_bytes(index)),
            None => Err(StorageError::corruption(format!("a log key of group {}", self.group))),
        }
    }

    /// The `raft_meta` key `name` (one of the `META_` names) of this group.
    pub fn meta(&self, name: &[u8]) -> Vec<u8> {
        let mut key = self.prefixed(name.len());
        key.extend_from_slice(name);
        key
    }

    pub fn snapshot_frame(&self, file: u64, n: u64) -> Vec<u8> {
        let mut key = self.snapshot_file_start(file);
        key.extend_from_slice(&n.to_be_bytes());
        key
    }

    /// The first key of file `file`'s frames (and, for `file + 1`, the end of them).
    pub fn snapshot_file_start(&self, file: u64) -> Vec<u8> {
        let mut key = self.meta(META_SNAPSHOT_FRAME_PREFIX);
        key.extend_from_slice(&file.to_be_bytes());
        key
    }

    pub fn snapshot_frame_decode(&self, key: &[u8]) -> Result<(u64, u64), StorageError> {
        let rest = key
            .strip_prefix(self.meta(META_SNAPSHOT_FRAME_PREFIX).as_slice())
            .filter(|rest| rest.len() == 16)
            .ok_or_else(|| StorageError::corruption("a snapshot frame key"))?;
        let file = u64::from_be_bytes(rest[..8].try_into().expect("8 bytes"));
        Ok((file, u64::from_be_bytes(rest[8..].try_into().expect("8 bytes"))))
    }
}

/// The keys a replica wrote before Raft groups had ids: `raft_log` keys of 8 bytes (the
/// index alone), `raft_meta` keys that start with their name (every grouped key starts with
/// a group id below 2^24, so with 0). True for a key in the old layout.
pub fn is_ungrouped(cf_is_log: bool, key: &[u8]) -> bool {
    match cf_is_log {
        true => key.len() == 8,
        false => key.first().is_some_and(|b| *b != 0),
    }
}

pub const META_SESSION_IDS: &[u8] = b"session_ids";

pub use cffs_proto::limits::TXN_ID_LEN;

pub fn inode_key(ino: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(9);
    key.push(PREFIX_INODE);
    key.extend_from_slice(&ino.to_be_bytes());
    key
}

pub fn dentry_key(parent: u64, name: &[u8]) -> Vec<u8> {
    let mut key = dentry_prefix(parent);
    key.extend_from_slice(name);
    key
}

/// The prefix shared by every dentry of directory `parent`.
pub fn dentry_prefix(parent: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + 16);
    key.push(PREFIX_DENTRY);
    key.extend_from_slice(&parent.to_be_bytes());
    key
}

/// The first key after every dentry of `parent`.
pub fn dentry_prefix_end(parent: u64) -> Vec<u8> {
    match parent.checked_add(1) {
        Some(next) => dentry_prefix(next),
        None => vec![PREFIX_DENTRY + 1],
    }
}

/// Splits a dentry key back into (parent, name).
pub fn dentry_key_decode(key: &[u8]) -> Result<(u64, &[u8]), StorageError> {
    if key.len() < 9 || key[0] != PREFIX_DENTRY {
        return Err(StorageError::corruption("dentry key"));
    }
    let parent = u64::from_be_bytes(key[1..9].try_into().expect("8 bytes"));
    Ok((parent, &key[9..]))
}

pub fn listing_key(ino: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(9);
    key.push(PREFIX_LISTING);
    key.extend_from_slice(&ino.to_be_bytes());
    key
}

pub fn dedup_key(txn_id: &[u8; TXN_ID_LEN]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + TXN_ID_LEN);
    key.push(PREFIX_DEDUP);
    key.extend_from_slice(txn_id);
    key
}

/// `f` client → versioned, payload the client's settled floor (u64 BE).
pub fn settled_key(client: &[u8; TXN_CLIENT_LEN]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + TXN_CLIENT_LEN);
    key.push(PREFIX_SETTLED);
    key.extend_from_slice(client);
    key
}

/// The id a client's settled floor has in the log-ordered index (so it is pruned with the
/// dedup records once the client has been silent for the window): the client, then ff×8,
/// a sequence no transaction has.
pub fn settled_index_id(client: &[u8; TXN_CLIENT_LEN]) -> [u8; TXN_ID_LEN] {
    let mut id = [0xff; TXN_ID_LEN];
    id[..TXN_CLIENT_LEN].copy_from_slice(client);
    id
}

/// The log-ordered index entry of a dedup record.
pub fn dedup_by_index_key(index: u64, txn_id: &[u8; TXN_ID_LEN]) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + TXN_ID_LEN);
    key.push(PREFIX_DEDUP_BY_INDEX);
    key.extend_from_slice(&index.to_be_bytes());
    key.extend_from_slice(txn_id);
    key
}

/// Splits a dedup index key into (log index, transaction id).
pub fn dedup_by_index_key_decode(key: &[u8]) -> Result<(u64, [u8; TXN_ID_LEN]), StorageError> {
    if key.len() != 9 + TXN_ID_LEN || key[0] != PREFIX_DEDUP_BY_INDEX {
        return Err(StorageError::corruption("dedup index key"));
    }
    let index = u64::from_be_bytes(key[1..9].try_into().expect("8 bytes"));
    Ok((index, key[9..].try_into().expect("16 bytes")))
}

pub use super::codec::{versioned_decode, versioned_encode};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dentries_of_one_directory_are_contiguous_and_ordered() {
        let a = dentry_key(7, b"a");
        let b = dentry_key(7, b"b");
        assert!(dentry_prefix(7) <= a && a < b && b < dentry_prefix_end(7));
        assert!(dentry_key(6, b"zzz") < dentry_prefix(7));
        assert_eq!(dentry_key_decode(&b).unwrap(), (7, &b"b"[..]));
    }

    #[test]
    fn groups_have_disjoint_contiguous_logs_and_meta_keys() {
        let (zero, one) = (GroupKeys::new(0), GroupKeys::new(1));
        assert!(zero.log(0) < zero.log(u64::MAX) && zero.log(u64::MAX) < zero.log_end());
        assert!(zero.log_end() < one.log(0));
        assert_eq!(one.log_decode(&one.log(42)).unwrap(), 42);
        assert!(zero.log_decode(&one.log(42)).is_err());
        assert_ne!(zero.meta(META_VOTE), one.meta(META_VOTE));
        assert_eq!(one.snapshot_frame_decode(&one.snapshot_frame(3, 9)).unwrap(), (3, 9));
        assert!(zero.snapshot_frame_decode(&one.snapshot_frame(3, 9)).is_err());
        assert!(!is_ungrouped(true, &zero.log(5)) && is_ungrouped(true, &5u64.to_be_bytes()));
        assert!(!is_ungrouped(false, &zero.meta(META_VOTE)) && is_ungrouped(false, META_VOTE));
    }
}
