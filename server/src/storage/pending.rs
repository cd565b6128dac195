//! A read view of an engine with writes not yet written laid over it: what the commands of
//! one log entry after the first see while the entry is applied (a batch of commits, each
//! validated against the state its predecessors in the batch left, `metadata/txn.rs`). Reads
//! (get, scan, last) see the pending puts and deletes; the view never writes: its owner
//! writes the whole entry's batch at once (an entry applies atomically, as before).

use std::collections::BTreeMap;
use std::ops::Bound;

use super::kv_engine::{BatchOp, Cf, KvEngine, KvPair, KvPairs, StorageError, WriteBatch};

pub struct Pending<'a> {
    engine: &'a dyn KvEngine,
    /// The latest pending value of each key written (None: deleted).
    writes: BTreeMap<(Cf, Vec<u8>), Option<Vec<u8>>>,
}

impl<'a> Pending<'a> {
    pub fn new(engine: &'a dyn KvEngine) -> Self {
        Pending { engine, writes: BTreeMap::new() }
    }

    /// Lays `ops` over the view (the ops a command just added to the entry's batch). Only
    /// puts and deletes: no command deletes a range.
    pub fn absorb(&mut self, ops: &[BatchOp]) {
        for op in ops {
            match op {
                BatchOp::Put { cf, key, value } => {
                    self.writes.insert((*cf, key.clone()), Some(value.clone()));
                }
                BatchOp::Delete { cf, key } => {
                    self.writes.insert((*cf, key.clone()), None);
                }
                BatchOp::DeleteRange { .. } => panic!("a command's batch deletes no range"),
            }
        }
    }

    /// Pending writes of `cf` in `[start, end)` (`end = None`: to the end of the family),
    /// in key order.
    fn pending_in(&self, cf: Cf, start: &[u8], end: Option<&[u8]>) -> Vec<(&Vec<u8>, &Option<Vec<u8>>)> {
        let lower = Bound::Included((cf, start.to_vec()));
        self.writes
            .range((lower, Bound::Unbounded))
            .take_while(|((family, key), _)| *family == cf && end.is_none_or(|end| key.as_slice() < end))
            .map(|((_, key), value)| (key, value))
            .collect()
    }
}

impl KvEngine for Pending<'_> {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        match self.writes.get(&(cf, key.to_vec())) {
            Some(value) => Ok(value.clone()),
            None => self.engine.get(cf, key),
        }
    }

    fn scan(&self, cf: Cf, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<KvPairs, StorageError> {
        let pending = self.pending_in(cf, start, end);
        // Pending deletes may hide stored keys: ask the engine for that many more. If it
        // returns all it was asked for, its answer covers keys up to the last it returned,
        // and at least `limit` of those are live: pending puts past that key cannot be among
        // the first `limit`.
        let asked = limit.saturating_add(pending.len());
        let stored = self.engine.scan(cf, start, end, asked)?;
        let complete = stored.len() < asked;
        let covered_to = stored.last().map(|(key, _)| key.clone());
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = stored.into_iter().collect();
        for (key, value) in pending {
            match value {
                None => {
                    merged.remove(key);
                }
                Some(value) if complete || covered_to.as_ref().is_some_and(|last| key <= last) => {
                    merged.insert(key.clone(), value.clone());
                }
                Some(_) => {}
            }
        }
        Ok(merged.into_iter().take(limit).collect())
    }

    fn last(&self, cf: Cf, start: &[u8], end: &[u8]) -> Result<Option<KvPair>, StorageError> {
        let mut upper = end.to_vec();
        loop {
            let stored = self.engine.last(cf, start, &upper)?;
            // Pending writes at or after the stored last key decide; the latest live one wins.
            let after: Vec<_> = self
                .pending_in(cf, start, Some(&upper))
                .into_iter()
                .filter(|(key, _)| stored.as_ref().is_none_or(|(last, _)| *key >= last))
                .collect();
            if let Some((key, Some(value))) = after.iter().rev().find(|(_, value)| value.is_some()) {
                return Ok(Some(((*key).clone(), value.clone())));
            }
            match stored {
                // Deleted while pending: look below it.
                Some((key, _)) if after.iter().any(|(deleted, _)| **deleted == key) => upper = key,
                found => return Ok(found),
            }
        }
    }

    fn write(&self, _batch: WriteBatch, _sync: bool) -> Result<(), StorageError> {
        Err(StorageError::Io("a pending view is read-only".into()))
    }

    fn sync(&self) -> Result<(), StorageError> {
        Ok(())
    }

    fn snapshot_pages(&self, _cf: Cf, _page_pairs: usize) -> Result<super::Pages, StorageError> {
        Err(StorageError::Io("a pending view has no snapshots: it lives for one entry's apply".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sim_disk::SimDisk;

    fn put(batch: &mut WriteBatch, key: &str) {
        batch.put(Cf::State, key.as_bytes().to_vec(), format!("v-{key}").into_bytes());
    }

    #[test]
    fn reads_see_pending_puts_and_deletes_over_the_engine() {
        let disk = SimDisk::new();
        let mut stored = WriteBatch::default();
        for key in ["a", "c", "e", "g"] {
            put(&mut stored, key);
        }
        disk.write(stored, true).unwrap();
        let mut view = Pending::new(&disk);
        let mut pending = WriteBatch::default();
        put(&mut pending, "b");
        pending.delete(Cf::State, b"c".to_vec());
        put(&mut pending, "h");
        pending.delete(Cf::State, b"g".to_vec());
        view.absorb(&pending.ops);

        assert_eq!(view.get(Cf::State, b"b").unwrap(), Some(b"v-b".to_vec()));
        assert_eq!(view.get(Cf::State, b"c").unwrap(), None);
        assert_eq!(view.get(Cf::State, b"e").unwrap(), Some(b"v-e".to_vec()));
        assert_eq!(view.get(Cf::RaftMeta, b"b").unwrap(), None, "families stay apart");
        let keys = |pairs: KvPairs| pairs.into_iter().map(|(k, _)| String::from_utf8(k).unwrap()).collect::<Vec<_>>();
        assert_eq!(keys(view.scan(Cf::State, b"", None, 10).unwrap()), ["a", "b", "e", "h"]);
        for limit in 0..5 {
            let want: Vec<_> = ["a", "b", "e", "h"].into_iter().take(limit).collect();
            assert_eq!(keys(view.scan(Cf::State, b"", None, limit).unwrap()), want, "limit {limit}");
        }
        assert_eq!(keys(view.scan(Cf::State, b"b", Some(b"h"), 10).unwrap()), ["b", "e"]);
        assert_eq!(view.last(Cf::State, b"", b"z").unwrap().map(|(k, _)| k), Some(b"h".to_vec()));
        assert_eq!(view.last(Cf::State, b"", b"h").unwrap().map(|(k, _)| k), Some(b"e".to_vec()), "g is deleted");
        assert_eq!(view.last(Cf::State, b"", b"b").unwrap().map(|(k, _)| k), Some(b"a".to_vec()));
        assert!(view.write(WriteBatch::default(), false).is_err());
        assert_eq!(disk.get(Cf::State, b"c").unwrap(), Some(b"v-c".to_vec()), "the engine is untouched");
    }
}
