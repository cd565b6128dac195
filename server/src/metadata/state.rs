//! Typed reads of the metadata state machine: an inode, a dentry, a listing version, each
//! with the version of the commit that last wrote it (0 when absent). Shared by the
//! validator (at apply time) and the read RPCs. Bytes from disk are checked, never trusted.

use cffs_proto::{key, Dentry, Inode, Key};
use prost::Message;

use crate::storage::keys;
use crate::storage::{Cf, KvEngine, StorageError};

/// The cluster-wide settings, once the first leader stored them.
pub fn read_cluster_settings(engine: &dyn KvEngine) -> Result<Option<cffs_proto::ClusterSettings>, StorageError> {
    match engine.get(Cf::State, keys::SYSTEM_CLUSTER_SETTINGS)? {
        None => Ok(None),
        Some(value) => crate::storage::codec::cluster_settings_decode(&value).map(Some),
    }
}

/// The cluster map (an empty one, version 0, before the first block group is added).
pub fn read_cluster_map(engine: &dyn KvEngine) -> Result<cffs_proto::ClusterMap, StorageError> {
    match engine.get(Cf::State, crate::storage::keys::SYSTEM_CLUSTER_MAP)? {
        None => Ok(cffs_proto::ClusterMap::default()),
        Some(value) => crate::storage::codec::cluster_map_decode(&value),
    }
}

pub fn read_inode(engine: &dyn KvEngine, ino: u64) -> Result<(u64, Option<Inode>), StorageError> {
    match engine.get(Cf::State, &keys::inode_key(ino))? {
        None => Ok((0, None)),
        Some(value) => {
            let (version, payload) = keys::versioned_decode(&value)?;
            let inode = Inode::decode(payload).map_err(|e| StorageError::corruption(format!("inode {ino}: {e}")))?;
            Ok((version, Some(inode)))
        }
    }
}

pub fn read_dentry(engine: &dyn KvEngine, parent: u64, name: &[u8]) -> Result<(u64, Option<Dentry>), StorageError> {
    match engine.get(Cf::State, &keys::dentry_key(parent, name))? {
        None => Ok((0, None)),
        Some(value) => decode_dentry(&value).map(|(version, dentry)| (version, Some(dentry))),
    }
}

pub fn decode_dentry(value: &[u8]) -> Result<(u64, Dentry), StorageError> {
    let (version, payload) = keys::versioned_decode(value)?;
    let dentry = Dentry::decode(payload).map_err(|e| StorageError::corruption(format!("dentry: {e}")))?;
    Ok((version, dentry))
}

pub fn read_listing_version(engine: &dyn KvEngine, ino: u64) -> Result<u64, StorageError> {
    match engine.get(Cf::State, &keys::listing_key(ino))? {
        None => Ok(0),
        Some(value) => Ok(keys::versioned_decode(&value)?.0),
    }
}

/// The storage key of a wire key, or None when the wire key is malformed.
pub fn storage_key(key: &Key) -> Option<Vec<u8>> {
    match key.kind.as_ref()? {
        key::Kind::Inode(ino) => Some(keys::inode_key(*ino)),
        key::Kind::Dentry(d) => Some(keys::dentry_key(d.parent, &d.name)),
        key::Kind::Listing(ino) => Some(keys::listing_key(*ino)),
    }
}

/// The current version of any key of the state (0 when absent).
pub fn read_version(engine: &dyn KvEngine, storage_key: &[u8]) -> Result<u64, StorageError> {
    match engine.get(Cf::State, storage_key)? {
        None => Ok(0),
        Some(value) => Ok(keys::versioned_decode(&value)?.0),
    }
}
