//! The RocksDB engine: the only file that names `rocksdb::`. One database per node, one
//! column family per `Cf`. Synced writes go through the WAL with `sync = true`; `sync()`
//! flushes and syncs the WAL.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, ReadOptions, DB};

use super::kv_engine::{BatchOp, Cf, KvEngine, KvPair, KvPairs, Pages, StorageError, WriteBatch};

pub struct RocksEngine {
    /// Shared with the threads that read snapshots.
    db: Arc<DB>,
}

fn io(context: &str, error: rocksdb::Error) -> StorageError {
    StorageError::Io(format!("{context}: {error}"))
}

impl RocksEngine {
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        // Explicit settings: a metadata store favours small values and point reads.
        options.set_max_background_jobs(2);
        options.set_bytes_per_sync(1 << 20);
        options.set_keep_log_file_num(4);
        options.set_max_log_file_size(16 << 20);
        options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let families =
            Cf::ALL.iter().map(|cf| ColumnFamilyDescriptor::new(cf.name(), Options::default())).collect::<Vec<_>>();
        let db = DB::open_cf_descriptors(&options, path, families).map_err(|e| io("open rocksdb", e))?;
        Ok(RocksEngine { db: Arc::new(db) })
    }

    fn handle(&self, cf: Cf) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(cf.name()).expect("every column family is created at open")
    }
}

impl KvEngine for RocksEngine {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.db.get_cf(self.handle(cf), key).map_err(|e| io("read key", e))
    }

    fn scan(&self, cf: Cf, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<KvPairs, StorageError> {
        let mut read_options = ReadOptions::default();
        if let Some(end) = end {
            read_options.set_iterate_upper_bound(end.to_vec());
        }
        let iterator =
            self.db.iterator_cf_opt(self.handle(cf), read_options, IteratorMode::From(start, Direction::Forward));
        let mut pairs = Vec::new();
        for item in iterator.take(limit) {
            let (key, value) = item.map_err(|e| io("scan keys", e))?;
            pairs.push((key.to_vec(), value.to_vec()));
        }
        Ok(pairs)
    }

    /// A RocksDB snapshot, read by a thread of its own: the snapshot borrows the database, so
    /// it lives in that thread's frame, and the pages come over a channel of one (one page
    /// read ahead). Dropping the pages ends the thread, and with it the snapshot. (This file
    /// is never compiled under madsim, and RocksDB runs threads of its own anyway.)
    fn snapshot_pages(&self, cf: Cf, page_pairs: usize) -> Result<Pages, StorageError> {
        let (pages, received) = std::sync::mpsc::sync_channel::<Result<KvPairs, StorageError>>(1);
        let (taken, view_taken) = std::sync::mpsc::sync_channel::<()>(1);
        let db = self.db.clone();
        let page_pairs = page_pairs.max(1);
        std::thread::Builder::new()
            .name("cffs-snapshot".into())
            .spawn(move || {
                let snapshot = db.snapshot();
                let _ = taken.send(());
                let handle = db.cf_handle(cf.name()).expect("every column family is created at open");
                let mut page = Vec::with_capacity(page_pairs);
                for item in snapshot.iterator_cf(handle, IteratorMode::Start) {
                    match item {
                        Ok((key, value)) => page.push((key.to_vec(), value.to_vec())),
                        Err(error) => {
                            let _ = pages.send(Err(io("read a snapshot", error)));
                            return;
                        }
                    }
                    if page.len() == page_pairs && pages.send(Ok(std::mem::take(&mut page))).is_err() {
                        return; // the pages were dropped
                    }
                }
                if !page.is_empty() {
                    let _ = pages.send(Ok(page));
                }
            })
            .map_err(|e| StorageError::Io(format!("start a snapshot reader: {e}")))?;
        view_taken.recv().map_err(|_| StorageError::Io("the snapshot reader ended before its view".into()))?;
        Ok(Box::new(received.into_iter()))
    }

    fn last(&self, cf: Cf, start: &[u8], end: &[u8]) -> Result<Option<KvPair>, StorageError> {
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_lower_bound(start.to_vec());
        read_options.set_iterate_upper_bound(end.to_vec());
        let mut iterator = self.db.iterator_cf_opt(self.handle(cf), read_options, IteratorMode::End);
        match iterator.next() {
            None => Ok(None),
            Some(item) => {
                let (key, value) = item.map_err(|e| io("seek last key", e))?;
                Ok(Some((key.to_vec(), value.to_vec())))
            }
        }
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StorageError> {
        let mut rocks_batch = rocksdb::WriteBatch::default();
        for op in &batch.ops {
            match op {
                BatchOp::Put { cf, key, value } => rocks_batch.put_cf(self.handle(*cf), key, value),
                BatchOp::Delete { cf, key } => rocks_batch.delete_cf(self.handle(*cf), key),
                BatchOp::DeleteRange { cf, start, end } => rocks_batch.delete_range_cf(self.handle(*cf), start, end),
            }
        }
        let mut write_options = rocksdb::WriteOptions::default();
        write_options.set_sync(sync);
        self.db.write_opt(rocks_batch, &write_options).map_err(|e| io("write batch", e))
    }

    fn sync(&self) -> Result<(), StorageError> {
        self.db.flush_wal(true).map_err(|e| io("sync wal", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_scan_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let engine = RocksEngine::open(dir.path()).unwrap();
            let mut batch = WriteBatch::default();
            for i in 0u8..5 {
                batch.put(Cf::RaftLog, vec![i], vec![i]);
            }
            batch.put(Cf::State, b"k".to_vec(), b"v".to_vec());
            engine.write(batch, true).unwrap();
            assert_eq!(engine.scan(Cf::RaftLog, &[1], Some(&[3]), 10).unwrap().len(), 2);
            assert_eq!(engine.last(Cf::RaftLog, &[0], &[0xff]).unwrap().unwrap().0, vec![4]);
            let mut batch = WriteBatch::default();
            batch.delete_range(Cf::RaftLog, vec![0], vec![3]);
            engine.write(batch, false).unwrap();
            engine.sync().unwrap();
        }
        let engine = RocksEngine::open(dir.path()).unwrap();
        assert_eq!(engine.get(Cf::State, b"k").unwrap(), Some(b"v".to_vec()));
        assert_eq!(engine.scan(Cf::RaftLog, &[], None, 10).unwrap().len(), 2);
        assert_eq!(engine.get(Cf::RaftMeta, b"k").unwrap(), None, "families are apart");
    }

    /// Pages of a snapshot see the family as it was when taken, and dropping them early
    /// ends the reader.
    #[test]
    fn snapshot_pages_see_the_family_as_it_was_when_taken() {
        let dir = tempfile::tempdir().unwrap();
        let engine = RocksEngine::open(dir.path()).unwrap();
        let mut batch = WriteBatch::default();
        for i in 0u16..2_500 {
            batch.put(Cf::State, i.to_be_bytes().to_vec(), b"before".to_vec());
        }
        engine.write(batch, false).unwrap();
        let pages = engine.snapshot_pages(Cf::State, 1_000).unwrap();
        let mut batch = WriteBatch::default();
        batch.put(Cf::State, 7u16.to_be_bytes().to_vec(), b"after".to_vec());
        batch.put(Cf::State, 9_999u16.to_be_bytes().to_vec(), b"after".to_vec());
        batch.delete(Cf::State, 8u16.to_be_bytes().to_vec());
        engine.write(batch, false).unwrap();
        let pages: Vec<KvPairs> = pages.map(Result::unwrap).collect();
        assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), vec![1_000, 1_000, 500]);
        assert!(pages.iter().flatten().all(|(_, value)| value == b"before"), "no write after the view is seen");
        let mut early = engine.snapshot_pages(Cf::State, 10).unwrap();
        assert_eq!(early.next().unwrap().unwrap().len(), 10);
        drop(early);
        assert_eq!(engine.get(Cf::State, &7u16.to_be_bytes()).unwrap(), Some(b"after".to_vec()));
    }
}
