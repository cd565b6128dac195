//! A simulated block disk: an in-memory `BlockStore` with the store contract's crash
//! behaviour, and the faults the simulation injects.
//!
//! A durable put is on the "platter" when it returns. A put with `durable = false` (only the
//! planted bug makes one) and every delete are pending: a process crash keeps them (the OS
//! has them), a power loss drops each pending put and reverts each pending delete as the
//! caller's seeded random source decides (`power_loss`). Faults: a stored copy corrupted
//! (one byte flipped, as bit rot would), a stored copy lost.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::store::{BlockId, BlockInfo, BlockStore};
use crate::storage::StorageError;

#[derive(Default)]
struct Disk {
    blocks: BTreeMap<BlockId, (BlockInfo, Arc<Vec<u8>>)>,
    /// Ids put without a sync, and deleted ids with what they held: undone by power loss.
    unsynced_puts: Vec<BlockId>,
    unsynced_deletes: Vec<(BlockId, BlockInfo, Arc<Vec<u8>>)>,
}

#[derive(Clone, Default)]
pub struct SimBlockStore {
    disk: Arc<Mutex<Disk>>,
}

impl SimBlockStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn disk(&self) -> std::sync::MutexGuard<'_, Disk> {
        self.disk.lock().expect("sim block disk")
    }

    /// Power loss: `keep(true)` decides for each pending put whether it reached the disk,
    /// `keep(false)` for each pending delete. Returns how many pending changes were undone.
    pub fn power_loss(&self, mut keep: impl FnMut(bool) -> bool) -> usize {
        let mut disk = self.disk();
        let mut undone = 0;
        for id in std::mem::take(&mut disk.unsynced_puts) {
            if !keep(true) && disk.blocks.remove(&id).is_some() {
                undone += 1;
            }
        }
        for (id, info, data) in std::mem::take(&mut disk.unsynced_deletes) {
            if !keep(false) {
                disk.blocks.insert(id, (info, data));
                undone += 1;
            }
        }
        undone
    }

    /// Flips one byte of the stored copy of `id` (at `at` modulo its length). False when
    /// the block is not stored.
    pub fn corrupt(&self, id: &BlockId, at: usize) -> bool {
        let mut disk = self.disk();
        let Some((_, data)) = disk.blocks.get_mut(id) else { return false };
        let data = Arc::make_mut(data);
        if data.is_empty() {
            return false;
        }
        let at = at % data.len();
        data[at] ^= 0x40;
        true
    }

    /// Loses the stored copy of `id` for good (a bad sector under it).
    pub fn lose(&self, id: &BlockId) -> bool {
        self.disk().blocks.remove(id).is_some()
    }

    /// Empties the store: the server is replaced by a new one with an empty disk.
    pub fn wipe(&self) {
        let mut disk = self.disk();
        disk.blocks.clear();
        disk.unsynced_puts.clear();
        disk.unsynced_deletes.clear();
    }

    /// Every stored id, in order.
    pub fn ids(&self) -> Vec<BlockId> {
        self.disk().blocks.keys().copied().collect()
    }
}

impl BlockStore for SimBlockStore {
    fn put(&self, info: BlockInfo, data: &[u8], durable: bool) -> Result<(), StorageError> {
        let mut disk = self.disk();
        if let Some((stored, _)) = disk.blocks.get(&info.id) {
            if stored.len == info.len && stored.crc == info.crc {
                return Ok(());
            }
            return Err(StorageError::Io("block id stored with other contents".into()));
        }
        disk.blocks.insert(info.id, (info, Arc::new(data.to_vec())));
        if !durable {
            disk.unsynced_puts.push(info.id);
        }
        Ok(())
    }

    fn repair(&self, info: BlockInfo, data: &[u8]) -> Result<(), StorageError> {
        self.disk().blocks.insert(info.id, (info, Arc::new(data.to_vec())));
        Ok(())
    }

    fn get(&self, id: &BlockId) -> Result<Option<(BlockInfo, Vec<u8>)>, StorageError> {
        Ok(self.disk().blocks.get(id).map(|(info, data)| (*info, data.to_vec())))
    }

    fn stat(&self, id: &BlockId) -> Result<Option<BlockInfo>, StorageError> {
        Ok(self.disk().blocks.get(id).map(|(info, _)| *info))
    }

    fn list(&self, start_after: Option<&BlockId>, limit: usize) -> Result<Vec<BlockInfo>, StorageError> {
        let disk = self.disk();
        let range = match start_after {
            None => disk.blocks.range::<BlockId, _>(..),
            Some(after) => disk.blocks.range((std::ops::Bound::Excluded(*after), std::ops::Bound::Unbounded)),
        };
        Ok(range.take(limit).map(|(_, (info, _))| *info).collect())
    }

    fn delete(&self, id: &BlockId) -> Result<(), StorageError> {
        let mut disk = self.disk();
        if let Some((info, data)) = disk.blocks.remove(id) {
            disk.unsynced_deletes.push((*id, info, data));
        }
        Ok(())
    }

    fn totals(&self) -> (u64, u64) {
        let disk = self.disk();
        (disk.blocks.len() as u64, disk.blocks.values().map(|(info, _)| u64::from(info.len)).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: u8, data: &[u8]) -> BlockInfo {
        BlockInfo { id: [id; 16], len: data.len() as u32, crc: crc32fast::hash(data), stored_at_ms: 0 }
    }

    #[test]
    fn power_loss_keeps_durable_puts_and_may_undo_the_rest() {
        let store = SimBlockStore::new();
        store.put(info(1, b"durable"), b"durable", true).unwrap();
        store.put(info(2, b"early ack"), b"early ack", false).unwrap();
        store.delete(&[1; 16]).unwrap();
        // The worst power loss: nothing pending reached the disk.
        assert_eq!(store.power_loss(|_| false), 2);
        assert_eq!(store.get(&[1; 16]).unwrap().unwrap().1, b"durable");
        assert!(store.stat(&[2; 16]).unwrap().is_none());
        // Corruption changes the bytes but not the stored crc: the reader's check finds it.
        assert!(store.corrupt(&[1; 16], 3));
        let (stored, data) = store.get(&[1; 16]).unwrap().unwrap();
        assert_ne!(crc32fast::hash(&data), stored.crc);
        assert!(store.lose(&[1; 16]));
        assert_eq!(store.totals(), (0, 0));
    }
}
