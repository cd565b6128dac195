//! The whole keyspace of a metadata replica, and the encoding of every stored value.
//! Integers are big-endian and fixed-width so that keys sort numerically.
//!
//! Column family `state` (the replicated state machine):
//! - `i` ino:u64                 → versioned `Inode` (prost)
//! - `d` parent:u64 name:bytes   → versioned `Dentry` (prost); a directory's dentries are
//!   contiguous, in name order, so a listing is one range scan
//! - `l` ino:u64                 → versioned, empty payload: the directory's listing version
//! - `t` txn_id:[u8;16]          → dedup record: log index:u64, then `CommitResponse` (prost)
//! - `T` index:u64 txn_id:[u8;16] → empty: the dedup records in log order, for pruning
//! - `s` name                    → system keys: `applied` (last applied log id, bincode),
//!   `membership` (bincode), `next_ino` (u64)
//!
//! A versioned value is `format:u8 = 1`, `version:u64`, then the payload. The version is the
//! log index of the commit that last wrote the key; an absent key has version 0.
//!
//! Column family `raft_log`: log index:u64 → bincode `Entry`.
//! Column family `raft_meta`: `vote`, `committed`, `purged` (bincode), `snapshot_meta`
//! (bincode), `snapshot_data` (the snapshot bytes), `session_ids` (the session numbers this
//! replica reserved: `format:u8 = 1`, `term:u64`, `end:u64`, `crc32:u32` of the 17 bytes
//! before it).

use super::kv_engine::StorageError;

pub const VALUE_FORMAT: u8 = 1;

pub const PREFIX_INODE: u8 = b'i';
pub const PREFIX_DENTRY: u8 = b'd';
pub const PREFIX_LISTING: u8 = b'l';
pub const PREFIX_DEDUP: u8 = b't';
pub const PREFIX_DEDUP_BY_INDEX: u8 = b'T';
pub const PREFIX_SYSTEM: u8 = b's';

pub const SYSTEM_APPLIED: &[u8] = b"sapplied";
pub const SYSTEM_MEMBERSHIP: &[u8] = b"smembership";
pub const SYSTEM_NEXT_INO: &[u8] = b"snext_ino";

pub const META_VOTE: &[u8] = b"vote";
pub const META_COMMITTED: &[u8] = b"committed";
pub const META_PURGED: &[u8] = b"purged";
pub const META_SNAPSHOT_META: &[u8] = b"snapshot_meta";
pub const META_SNAPSHOT_DATA: &[u8] = b"snapshot_data";
pub const META_SESSION_IDS: &[u8] = b"session_ids";

const SESSION_IDS_FORMAT: u8 = 1;
const SESSION_IDS_LEN: usize = 1 + 8 + 8 + 4;

/// Encodes the session-number reservation: numbers below `end` of `term` may have been
/// handed out.
pub fn session_ids_encode(term: u64, end: u64) -> Vec<u8> {
    let mut value = Vec::with_capacity(SESSION_IDS_LEN);
    value.push(SESSION_IDS_FORMAT);
    value.extend_from_slice(&term.to_be_bytes());
    value.extend_from_slice(&end.to_be_bytes());
    let crc = crc32fast::hash(&value);
    value.extend_from_slice(&crc.to_be_bytes());
    value
}

/// Decodes a session-number reservation into (term, end).
pub fn session_ids_decode(value: &[u8]) -> Result<(u64, u64), StorageError> {
    if value.len() != SESSION_IDS_LEN || value[0] != SESSION_IDS_FORMAT {
        return Err(StorageError::corruption("session ids record header"));
    }
    let crc = u32::from_be_bytes(value[17..21].try_into().expect("4 bytes"));
    if crc32fast::hash(&value[..17]) != crc {
        return Err(StorageError::corruption("session ids record checksum"));
    }
    let term = u64::from_be_bytes(value[1..9].try_into().expect("8 bytes"));
    let end = u64::from_be_bytes(value[9..17].try_into().expect("8 bytes"));
    Ok((term, end))
}

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

pub fn log_key(index: u64) -> Vec<u8> {
    index.to_be_bytes().to_vec()
}

pub fn log_key_decode(key: &[u8]) -> Result<u64, StorageError> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| StorageError::corruption("log key"))?;
    Ok(u64::from_be_bytes(bytes))
}

/// Encodes a versioned value.
pub fn versioned_encode(version: u64, payload: &[u8]) -> Vec<u8> {
    assert!(version > 0, "a stored key always has the version of the commit that wrote it");
    let mut value = Vec::with_capacity(9 + payload.len());
    value.push(VALUE_FORMAT);
    value.extend_from_slice(&version.to_be_bytes());
    value.extend_from_slice(payload);
    value
}

/// Decodes a versioned value into (version, payload).
pub fn versioned_decode(value: &[u8]) -> Result<(u64, &[u8]), StorageError> {
    if value.len() < 9 || value[0] != VALUE_FORMAT {
        return Err(StorageError::corruption("versioned value header"));
    }
    let version = u64::from_be_bytes(value[1..9].try_into().expect("8 bytes"));
    if version == 0 {
        return Err(StorageError::corruption("versioned value with version 0"));
    }
    Ok((version, &value[9..]))
}

pub fn u64_decode(value: &[u8]) -> Result<u64, StorageError> {
    let bytes: [u8; 8] = value.try_into().map_err(|_| StorageError::corruption("u64 value"))?;
    Ok(u64::from_be_bytes(bytes))
}

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
    fn session_ids_roundtrip_and_a_flipped_byte_is_corruption() {
        let value = session_ids_encode(7, 4097);
        assert_eq!(session_ids_decode(&value).unwrap(), (7, 4097));
        for i in 0..value.len() {
            let mut bad = value.clone();
            bad[i] ^= 0x10;
            assert!(session_ids_decode(&bad).is_err(), "byte {i} flipped");
        }
    }

    #[test]
    fn versioned_roundtrip_and_corruption() {
        let value = versioned_encode(42, b"payload");
        assert_eq!(versioned_decode(&value).unwrap(), (42, &b"payload"[..]));
        assert!(versioned_decode(&value[..5]).is_err());
        let mut bad = value.clone();
        bad[0] = 9;
        assert!(versioned_decode(&bad).is_err());
    }
}
