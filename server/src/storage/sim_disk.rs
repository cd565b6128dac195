//! A simulated disk: an in-memory `KvEngine` with a page-cache view and a durable view.
//!
//! Reads see the page cache (every write so far). A write becomes durable only when it was
//! written with `sync = true` or a later `sync()` ran. A process crash keeps the page cache
//! (the OS still has it); a power loss rebuilds the page cache from the durable view plus the
//! unsynced batches that survive. Which survive follows the engine contract (kv_engine.rs),
//! i.e. what a write-ahead log gives after power loss: each unsynced batch, in order, is
//! kept, dropped or torn (as the caller's seeded random source decides); recovery replays
//! batches up to the first one that was dropped or torn (a torn record fails its checksum)
//! and loses everything after it. So a batch is never half applied, and batches survive as a
//! prefix. Everything is in memory and single-owner behind a mutex: deterministic under madsim.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex};

use super::kv_engine::{BatchOp, Cf, KvEngine, KvPair, KvPairs, Pages, StorageError, WriteBatch};

type Tree = BTreeMap<(Cf, Vec<u8>), Vec<u8>>;

#[derive(Default)]
struct Disk {
    cache: Tree,
    durable: Tree,
    /// Batches written since the last sync, oldest first.
    unsynced: Vec<WriteBatch>,
    /// When set, `sync` and synced writes fail (injected by the simulation).
    sync_fails: bool,
    /// When set, reads fail (a bad sector, a failing controller).
    reads_fail: bool,
    /// When set, every write fails (a full disk); nothing is written.
    full: bool,
    /// When set, every value read comes back with one byte flipped (a bad cable, a firmware
    /// bug): what the records' crcs are for.
    reads_corrupt: bool,
}

/// What happens to one unsynced batch on power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnsyncedFate {
    Kept,
    Dropped,
    /// Partly written: its checksum fails and recovery discards it (and what follows).
    Torn,
}

#[derive(Clone, Default)]
pub struct SimDisk {
    disk: Arc<Mutex<Disk>>,
}

impl SimDisk {
    pub fn new() -> Self {
        Self::default()
    }

    /// Power loss: the page cache is lost; unsynced batches survive up to the first one
    /// that `fate` drops or tears. Returns how many unsynced batches were lost.
    pub fn power_loss(&self, mut fate: impl FnMut(&WriteBatch) -> UnsyncedFate) -> usize {
        let mut disk = self.disk.lock().expect("sim disk lock");
        let unsynced = std::mem::take(&mut disk.unsynced);
        let mut tree = disk.durable.clone();
        let mut survived = 0;
        for batch in &unsynced {
            if fate(batch) != UnsyncedFate::Kept {
                break;
            }
            for op in &batch.ops {
                apply_op(&mut tree, op);
            }
            survived += 1;
        }
        disk.durable = tree.clone();
        disk.cache = tree;
        unsynced.len() - survived
    }

    pub fn set_sync_fails(&self, fails: bool) {
        self.disk.lock().expect("sim disk lock").sync_fails = fails;
    }

    pub fn set_reads_fail(&self, fails: bool) {
        self.disk.lock().expect("sim disk lock").reads_fail = fails;
    }

    pub fn set_full(&self, full: bool) {
        self.disk.lock().expect("sim disk lock").full = full;
    }

    pub fn set_reads_corrupt(&self, corrupt: bool) {
        self.disk.lock().expect("sim disk lock").reads_corrupt = corrupt;
    }

    /// Flips one bit of the stored value of `key` (in what reads see and what is durable):
    /// a record rotted on the medium. False when the key is absent.
    pub fn corrupt_stored(&self, cf: Cf, key: &[u8]) -> bool {
        let mut guard = self.disk.lock().expect("sim disk lock");
        let disk = &mut *guard;
        let mut found = false;
        for tree in [&mut disk.cache, &mut disk.durable] {
            if let Some(value) = tree.get_mut(&(cf, key.to_vec())) {
                flip(value);
                found = true;
            }
        }
        found
    }

    fn read_value(disk: &Disk, value: &[u8]) -> Vec<u8> {
        let mut value = value.to_vec();
        if disk.reads_corrupt {
            flip(&mut value);
        }
        value
    }

    fn read_check(disk: &Disk) -> Result<(), StorageError> {
        match disk.reads_fail {
            true => Err(StorageError::Io("injected read failure".into())),
            false => Ok(()),
        }
    }
}

/// Flips a bit of `value` in the last bytes before a record's crc (the end of its body:
/// an inode's inline data, for one).
fn flip(value: &mut [u8]) {
    let at = value.len().saturating_sub(6);
    if let Some(byte) = value.get_mut(at) {
        *byte ^= 0x04;
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

/// One end of a range over the simulated store's `(column family, key)` map.
type KeyBound = Bound<(Cf, Vec<u8>)>;

fn range_of(cf: Cf, start: &[u8], end: Option<&[u8]>) -> (KeyBound, KeyBound) {
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
        Self::read_check(&disk)?;
        Ok(disk.cache.get(&(cf, key.to_vec())).map(|v| Self::read_value(&disk, v)))
    }

    fn scan(&self, cf: Cf, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<KvPairs, StorageError> {
        let disk = self.disk.lock().expect("sim disk lock");
        Self::read_check(&disk)?;
        Ok(disk
            .cache
            .range(range_of(cf, start, end))
            .take(limit)
            .map(|((_, k), v)| (k.clone(), Self::read_value(&disk, v)))
            .collect())
    }

    /// A copy of the family as the page cache holds it now (this is a simulation: the copy
    /// is what RocksDB's snapshot is on a real disk).
    fn snapshot_pages(&self, cf: Cf, page_pairs: usize) -> Result<Pages, StorageError> {
        let disk = self.disk.lock().expect("sim disk lock");
        Self::read_check(&disk)?;
        let pairs: KvPairs = disk
            .cache
            .range(range_of(cf, &[], None))
            .map(|((_, k), v)| (k.clone(), Self::read_value(&disk, v)))
            .collect();
        let mut pairs = pairs.into_iter();
        let page_pairs = page_pairs.max(1);
        Ok(Box::new(std::iter::from_fn(move || {
            let page: KvPairs = pairs.by_ref().take(page_pairs).collect();
            (!page.is_empty()).then_some(Ok(page))
        })))
    }

    fn last(&self, cf: Cf, start: &[u8], end: &[u8]) -> Result<Option<KvPair>, StorageError> {
        let disk = self.disk.lock().expect("sim disk lock");
        Self::read_check(&disk)?;
        Ok(disk
            .cache
            .range(range_of(cf, start, Some(end)))
            .next_back()
            .map(|((_, k), v)| (k.clone(), Self::read_value(&disk, v))))
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StorageError> {
        let mut disk = self.disk.lock().expect("sim disk lock");
        if sync && disk.sync_fails {
            return Err(StorageError::Io("injected sync failure".into()));
        }
        if disk.full {
            return Err(StorageError::Io("injected: no space left on device".into()));
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
    fn unsynced_writes_survive_as_a_prefix_of_whole_batches() {
        for (fates, survivors) in [
            (vec![UnsyncedFate::Dropped, UnsyncedFate::Kept], [false, false]),
            (vec![UnsyncedFate::Kept, UnsyncedFate::Kept], [true, true]),
            (vec![UnsyncedFate::Kept, UnsyncedFate::Torn], [true, false]),
            (vec![UnsyncedFate::Torn, UnsyncedFate::Kept], [false, false]),
        ] {
            let disk = SimDisk::new();
            put(&disk, b"a", false);
            put(&disk, b"b", false);
            assert!(has(&disk, b"a") && has(&disk, b"b"), "the page cache serves unsynced writes");
            let mut fate = fates.clone().into_iter();
            let lost = disk.power_loss(|_| fate.next().unwrap());
            assert_eq!([has(&disk, b"a"), has(&disk, b"b")], survivors, "{fates:?}");
            // A batch is never half there.
            assert_eq!(has(&disk, b"a"), has(&disk, b"a-2"), "{fates:?}");
            assert_eq!(has(&disk, b"b"), has(&disk, b"b-2"), "{fates:?}");
            assert_eq!(lost, survivors.iter().filter(|s| !**s).count());
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
    fn injected_read_failures_and_a_full_disk_fail_and_change_nothing() {
        let disk = SimDisk::new();
        put(&disk, b"a", true);
        disk.set_reads_fail(true);
        assert!(disk.get(Cf::State, b"a").is_err());
        assert!(disk.scan(Cf::State, &[], None, 10).is_err());
        disk.set_reads_fail(false);
        disk.set_full(true);
        let mut batch = WriteBatch::default();
        batch.put(Cf::State, b"b".to_vec(), b"v".to_vec());
        assert!(disk.write(batch, false).is_err());
        disk.set_full(false);
        assert!(has(&disk, b"a") && !has(&disk, b"b"));
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
