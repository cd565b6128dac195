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

    /// A buffer for a block of `len` bytes laid out as this store writes it, for a caller
    /// that fills it in place (the data port reads a block from its socket into it).
    fn put_buffer(&self, len: usize) -> PutBuffer {
        PutBuffer::new(len, 1, Vec::new())
    }

    /// `put` of a block filled in with `put_buffer`: the same contract, without the copy.
    fn put_from(&self, info: BlockInfo, buffer: PutBuffer, durable: bool) -> Result<(), StorageError> {
        self.put(info, buffer.data(), durable)
    }

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

/// A block's bytes on their way into a store, laid out as its record will be written: room
/// for the header, the data, and zeros up to the store's alignment, starting at an aligned
/// address. A store that writes with direct I/O writes the record from here as it is, so
/// the bytes are copied once between a socket and the disk (by the kernel, on receive).
pub struct PutBuffer {
    buf: Vec<u8>,
    /// Where the record starts in `buf` (aligned).
    start: usize,
    len: usize,
    align: usize,
}

impl PutBuffer {
    /// A buffer for `len` data bytes at `align` (a power of two), reusing `reuse`'s memory.
    pub fn new(len: usize, align: usize, mut reuse: Vec<u8>) -> PutBuffer {
        let padded = (HEADER_LEN + len).next_multiple_of(align);
        reuse.resize(padded + align, 0);
        let start = reuse.as_ptr().align_offset(align);
        PutBuffer { buf: reuse, start, len, align }
    }

    pub fn data(&self) -> &[u8] {
        &self.buf[self.start + HEADER_LEN..self.start + HEADER_LEN + self.len]
    }

    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start + HEADER_LEN..self.start + HEADER_LEN + self.len]
    }

    /// The whole record for `info` (header, data, zero padding to the alignment): what a
    /// direct write writes. Its first `HEADER_LEN + len` bytes are the record proper.
    pub fn record(&mut self, info: &BlockInfo) -> &[u8] {
        let len = HEADER_LEN + self.len;
        let padded = len.next_multiple_of(self.align);
        let record = &mut self.buf[self.start..self.start + padded];
        record[..HEADER_LEN].copy_from_slice(&header_encode(info));
        record[len..].fill(0);
        record
    }

    /// The memory, for the next buffer.
    pub fn into_vec(self) -> Vec<u8> {
        self.buf
    }
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

    #[test]
    fn a_put_buffer_is_aligned_and_its_record_is_header_data_and_zeros() {
        for (len, align) in [(1, 4096), (4096 - HEADER_LEN, 4096), (10_000, 4096), (77, 1)] {
            // A reused buffer with garbage in it: the padding must still be zeros.
            let mut buffer = PutBuffer::new(len, align, vec![0xee; 3 * align]);
            buffer.data_mut().iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
            let info = BlockInfo { id: [3; 16], len: len as u32, crc: 9, stored_at_ms: 5 };
            let record = buffer.record(&info).to_vec();
            assert_eq!(record.len(), (HEADER_LEN + len).next_multiple_of(align), "len {len}");
            assert_eq!(header_decode(info.id, &record).unwrap(), info);
            assert!(record[HEADER_LEN..HEADER_LEN + len].iter().enumerate().all(|(i, b)| *b == i as u8));
            assert!(record[HEADER_LEN + len..].iter().all(|b| *b == 0), "padding of len {len}");
            let start = buffer.data().as_ptr() as usize - HEADER_LEN;
            assert_eq!(start % align, 0, "record of len {len} starts unaligned");
        }
    }
}
