//! The block store trait every block server's disk implements, and the one on-disk block
//! record. Nothing above this trait names files: the simulated build swaps the store.
//!
//! Contract:
//! - `put` with `durable = true` returns only once the block is durable: after a power loss
//!   it is there, whole, with its crc. A put is atomic: before and after any crash the block
//!   is either absent or whole (never torn). `durable = false` exists only for the planted
//!   bug that acknowledges too early: such a block survives a process crash but not a power
//!   loss.
//! - A put of an id already stored with the same length and crc is a no-op that succeeds
//!   (a retried write); with a different length or crc it fails (ids are never reused).
//!   `repair` stores the bytes whatever is stored under the id (the scrubber's repair of a
//!   bad copy), atomically and durably as a put.
//! - `delete` is not synced: after a power loss a deleted block may be back. Only the
//!   collector deletes, and a block it found unreferenced stays unreferenced, so it is
//!   simply collected again.
//! - `get` returns the stored bytes with the stored crc; a record whose header fails its own
//!   check is `Corruption`. The caller verifies the data against the crc (the store does
//!   not, so that a corrupted copy is counted where it is served).

use cffs_proto::limits::BLOCK_ID_LEN;

use crate::storage::StorageError;

pub type BlockId = [u8; BLOCK_ID_LEN];

/// What the store knows of a block without reading its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockInfo {
    pub id: BlockId,
    pub len: u32,
    pub crc: u32,
    /// The store's wall clock when the block was stored, in ms since the epoch.
    pub stored_at_ms: i64,
}

pub trait BlockStore: Send + Sync + 'static {
    fn put(&self, info: BlockInfo, data: &[u8], durable: bool) -> Result<(), StorageError>;

    /// Stores the block over whatever copy is stored under its id.
    fn repair(&self, info: BlockInfo, data: &[u8]) -> Result<(), StorageError>;

    fn get(&self, id: &BlockId) -> Result<Option<(BlockInfo, Vec<u8>)>, StorageError>;

    fn stat(&self, id: &BlockId) -> Result<Option<BlockInfo>, StorageError>;

    /// Blocks with ids after `start_after` (all when None), in id order, at most `limit`.
    fn list(&self, start_after: Option<&BlockId>, limit: usize) -> Result<Vec<BlockInfo>, StorageError>;

    /// Removes a block; absent is not an error.
    fn delete(&self, id: &BlockId) -> Result<(), StorageError>;

    /// (blocks, bytes) stored.
    fn totals(&self) -> (u64, u64);
}

/// Parses a block id from the wire.
pub fn block_id(bytes: &[u8]) -> Option<BlockId> {
    bytes.try_into().ok()
}

pub fn block_id_hex(id: &BlockId) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// The header of a stored block: `CFFSBLK1`, len u32 LE, crc u32 LE, stored_at_ms i64 LE,
/// 4 reserved zero bytes, then the crc32 of those 28 bytes (u32 LE). The data follows.
pub const HEADER_LEN: usize = 32;
const MAGIC: &[u8; 8] = b"CFFSBLK1";

pub fn header_encode(info: &BlockInfo) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&info.len.to_le_bytes());
    header[12..16].copy_from_slice(&info.crc.to_le_bytes());
    header[16..24].copy_from_slice(&info.stored_at_ms.to_le_bytes());
    let check = crc32fast::hash(&header[..28]);
    header[28..32].copy_from_slice(&check.to_le_bytes());
    header
}

pub fn header_decode(id: BlockId, header: &[u8]) -> Result<BlockInfo, StorageError> {
    let bad = |what: &str| StorageError::corruption(format!("block {}: {what}", block_id_hex(&id)));
    if header.len() < HEADER_LEN {
        return Err(bad("short header"));
    }
    if &header[..8] != MAGIC {
        return Err(bad("bad magic"));
    }
    let check = u32::from_le_bytes(header[28..32].try_into().expect("4 bytes"));
    if crc32fast::hash(&header[..28]) != check {
        return Err(bad("header crc mismatch"));
    }
    Ok(BlockInfo {
        id,
        len: u32::from_le_bytes(header[8..12].try_into().expect("4 bytes")),
        crc: u32::from_le_bytes(header[12..16].try_into().expect("4 bytes")),
        stored_at_ms: i64::from_le_bytes(header[16..24].try_into().expect("8 bytes")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_detects_damage() {
        let info = BlockInfo { id: [7; 16], len: 4096, crc: 0xdead_beef, stored_at_ms: 1_700_000_000_000 };
        let header = header_encode(&info);
        assert_eq!(header_decode(info.id, &header).unwrap(), info);
        for byte in 0..HEADER_LEN {
            let mut bad = header;
            bad[byte] ^= 0x10;
            assert!(header_decode(info.id, &bad).is_err(), "flip in byte {byte} not detected");
        }
        assert!(header_decode(info.id, &header[..10]).is_err());
    }
}
