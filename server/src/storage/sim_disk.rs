//! A simulated disk: an in-memory `KvEngine` with a page-cache view and a durable view.
//!
//! Reads see the page cache (every write so far). A write becomes durable only when it was
//! written with `sync = true` or a later `sync()` ran. A process crash keeps the page cache
//! (the OS still has it); a power loss rebuilds the page cache from the durable view plus a
//! random choice of the unsynced batches: each is kept, dropped, or torn (some of its
//! operations applied), as chosen by the caller's seeded random source. Everything is in
//! memory and single-owner behind a mutex, so it is deterministic under madsim.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex};

use super::kv_engine::{BatchOp, Cf, KvEngine, KvPairs, StorageError, WriteBatch};

type Tree = BTreeMap<(Cf, Vec<u8>), Vec<u8>>;

#[derive(Default)]
struct Disk {
    cache: Tree,
    durable: Tree,
    /// Batches written since the last sync, oldest first.
    unsynced: Vec<WriteBatch>,
    /// When set, `sync` and synced writes fail (injected by the simulation).
    sync_fails: bool,
}

/// What happens to one unsynced batch on power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnsyncedFate {
    Kept,
    Dropped,
    /// Only the first n operations of the batch reach the disk.
    Torn(usize),
}

#[derive(Clone, Default)]
pub struct SimDisk {
    disk: Arc<Mutex<Disk>>,
}

impl SimDisk {
    pub fn new() -> Self {
        Self::default()
    }

    /// Power loss: the page cache is lost; unsynced batches survive as `fate` decides, in
    /// order (a batch after a dropped one may still survive: disks reorder writes).
    pub fn power_loss(&self, mut fate: impl FnMut(&WriteBatch) -> UnsyncedFate) {
        let mut disk = self.disk.lock().expect("sim disk lock");
        let unsynced = std::mem::take(&mut disk.unsynced);
        let mut tree = disk.durable.clone();
        for batch in &unsynced {
            let applied = match fate(batch) {
                UnsyncedFate::Kept => batch.ops.len(),
                UnsyncedFate::Dropped => 0,
                UnsyncedFate::Torn(n) => n.min(batch.ops.len()),
            };
            for op in &batch.ops[..applied] {
                apply_op(&mut tree, op);
            }
        }
        disk.durable = tree.clone();
        disk.cache = tree;
    }

    pub fn set_sync_fails(&self, fails: bool) {
        self.disk.lock().expect("sim disk lock").sync_fails = fails;
    }

    pub fn unsynced_batches(&self) -> usize {
        self.disk.lock().expect("sim disk lock").unsynced.len()
    }
}

fn apply_op(tree: &mut Tree, op: &BatchOp) {
    match op {
        BatchOp::Put { cf, key, value } => {
            tree.insert((*cf, key.clone()), value.clone());
        }
        BatchOp::Delete { cf, key } => {
            tree.remove(&(*cf, key.clone()));
        }
        BatchOp::DeleteRange { cf, start, end } => {
            let doomed: Vec<_> = tree.range((*cf, start.clone())..(*cf, end.clone())).map(|(k, _)| k.clone()).collect();
            for key in doomed {
                tree.remove(&key);
            }
        }
    }
}

fn range_of(cf: Cf, start: &[u8], end: Option<&[u8]>) -> (Bound<(Cf, Vec<u8>)>, Bound<(Cf, Vec<u8>)>) {
    let lower = Bound::Included((cf, start.to_vec()));
    let upper = match end {
        Some(end) => Bound::Excluded((cf, end.to_vec())),
        None => match next_cf(cf) {
            Some(next) => Bound::Excluded((next, Vec::new())),
            None => Bound::Unbounded,
        },
    };
    (lower, upper)
}

fn next_cf(cf: Cf) -> Option<Cf> {
    let position = Cf::ALL.iter().position(|c| *c == cf).expect("cf listed");
    Cf::ALL.get(position + 1).copied()
}

impl KvEngine for SimDisk {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let disk = self.disk.lock().expect("sim disk lock");
        Ok(disk.cache.get(&(cf, key.to_vec())).cloned())
    }

    fn scan(&self, cf: Cf, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<KvPairs, StorageError> {
        let disk = self.disk.lock().expect("sim disk lock");
        Ok(disk.cache.range(range_of(cf, start, end)).take(limit).map(|((_, k), v)| (k.clone(), v.clone())).collect())
    }

    fn last(&self, cf: Cf, start: &[u8], end: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>, StorageError> {
        let disk = self.disk.lock().expect("sim disk lock");
        Ok(disk.cache.range(range_of(cf, start, Some(end))).next_back().map(|((_, k), v)| (k.clone(), v.clone())))
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StorageError> {
        let mut disk = self.disk.lock().expect("sim disk lock");
        if sync && disk.sync_fails {
            return Err(StorageError::Io("injected sync failure".into()));
        }
        for op in &batch.ops {
            apply_op(&mut disk.cache, op);
        }
        if sync {
            // Everything before this batch is durable too: a sync flushes the whole file.
            disk.unsynced.clear();
            disk.durable = disk.cache.clone();
        } else {
            disk.unsynced.push(batch);
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), StorageError> {
        let mut disk = self.disk.lock().expect("sim disk lock");
        if disk.sync_fails {
            return Err(StorageError::Io("injected sync failure".into()));
        }
        disk.unsynced.clear();
        disk.durable = disk.cache.clone();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(disk: &SimDisk, key: &[u8], sync: bool) {
        let mut batch = WriteBatch::default();
        batch.put(Cf::State, key.to_vec(), b"v".to_vec());
        batch.put(Cf::State, [key, b"-2"].concat(), b"v".to_vec());
        disk.write(batch, sync).unwrap();
    }

    fn has(disk: &SimDisk, key: &[u8]) -> bool {
        disk.get(Cf::State, key).unwrap().is_some()
    }

    #[test]
    fn synced_write_survives_power_loss() {
        let disk = SimDisk::new();
        put(&disk, b"a", true);
        disk.power_loss(|_| UnsyncedFate::Dropped);
        assert!(has(&disk, b"a"));
    }

    #[test]
    fn unsynced_write_is_dropped_kept_or_torn_on_power_loss() {
        for (fate, first, second) in [
            (UnsyncedFate::Dropped, false, false),
            (UnsyncedFate::Kept, true, true),
            (UnsyncedFate::Torn(1), true, false),
        ] {
            let disk = SimDisk::new();
            put(&disk, b"a", false);
            assert!(has(&disk, b"a"), "the page cache serves unsynced writes");
            disk.power_loss(|_| fate);
            assert_eq!(has(&disk, b"a"), first, "{fate:?}");
            assert_eq!(has(&disk, b"a-2"), second, "{fate:?}");
        }
    }

    #[test]
    fn sync_makes_earlier_writes_durable() {
        let disk = SimDisk::new();
        put(&disk, b"a", false);
        disk.sync().unwrap();
        disk.power_loss(|_| UnsyncedFate::Dropped);
        assert!(has(&disk, b"a"));
    }

    #[test]
    fn injected_sync_failure_fails_synced_writes() {
        let disk = SimDisk::new();
        disk.set_sync_fails(true);
        let mut batch = WriteBatch::default();
        batch.put(Cf::State, b"a".to_vec(), b"v".to_vec());
        assert!(disk.write(batch, true).is_err());
        assert!(!has(&disk, b"a"), "a failed write changes nothing");
    }

    #[test]
    fn scan_and_last_stay_inside_the_family() {
        let disk = SimDisk::new();
        let mut batch = WriteBatch::default();
        batch.put(Cf::RaftLog, vec![1], vec![1]);
        batch.put(Cf::RaftLog, vec![2], vec![2]);
        batch.put(Cf::RaftMeta, vec![0], vec![0]);
        disk.write(batch, true).unwrap();
        assert_eq!(disk.scan(Cf::RaftLog, &[], None, 10).unwrap().len(), 2);
        assert_eq!(disk.last(Cf::RaftLog, &[], &[0xff]).unwrap().unwrap().0, vec![2]);
        let mut batch = WriteBatch::default();
        batch.delete_range(Cf::RaftLog, vec![0], vec![2]);
        disk.write(batch, false).unwrap();
        assert_eq!(disk.scan(Cf::RaftLog, &[], None, 10).unwrap(), vec![(vec![2], vec![2])]);
    }
}
