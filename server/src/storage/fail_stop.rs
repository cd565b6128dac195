//! A fail-stop wrapper around a replica's engine: after the first storage error (an I/O
//! failure or a corruption), every later call fails with that error, so the replica stops
//! serving rather than go on with state it cannot trust. Raft's log and state-machine calls
//! then fail too, which stops openraft's core; reads fail before they answer. The replica
//! serves again only when restarted (on a disk that works), when it recovers from what its
//! disk holds. What it must never do is answer from a state that missed a write, or treat a
//! failed read as an absent key.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::kv_engine::{Cf, KvEngine, KvPair, KvPairs, Pages, StorageError, WriteBatch};

/// Whether a replica's storage has failed, shared by its engine and the code above it that
/// decodes what the engine returns (a bad crc is found there, not in the engine).
#[derive(Default)]
pub struct Health {
    /// Set with `failed`: what every engine call checks, without taking the lock.
    stopped_flag: AtomicBool,
    failed: Mutex<Option<StorageError>>,
    /// Notified once, at the first failure: the replica's node stops its Raft core then (a
    /// leader that only fails its reads would keep heartbeating, and nobody would replace it).
    stopped: tokio::sync::Notify,
}

impl Health {
    /// The error that stopped this replica's storage, if one did.
    pub fn failure(&self) -> Option<StorageError> {
        if !self.stopped_flag.load(Ordering::Acquire) {
            return None;
        }
        self.failed.lock().expect("fail-stop lock").clone()
    }

    /// Records a failure (the first one counts) and returns it.
    pub fn fail(&self, error: StorageError) -> StorageError {
        let mut failed = self.failed.lock().expect("fail-stop lock");
        if failed.is_none() {
            tracing::error!(%error, "storage failed; this replica stops serving until restarted");
            *failed = Some(error.clone());
            self.stopped_flag.store(true, Ordering::Release);
            // notify_one keeps the wakeup for a waiter that registers later.
            self.stopped.notify_one();
        }
        error
    }

    /// Resolves once storage has failed.
    pub async fn stopped(self: Arc<Self>) {
        if self.failure().is_none() {
            self.stopped.notified().await;
        }
    }
}

pub struct FailStop {
    inner: Arc<dyn KvEngine>,
    health: Arc<Health>,
}

impl FailStop {
    pub fn new(inner: Arc<dyn KvEngine>) -> Self {
        FailStop { inner, health: Arc::new(Health::default()) }
    }

    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    pub fn failure(&self) -> Option<StorageError> {
        self.health.failure()
    }

    /// Records the error of a call made after `stopped` passed.
    fn check<T>(&self, result: Result<T, StorageError>) -> Result<T, StorageError> {
        result.map_err(|error| self.health.fail(error))
    }

    fn stopped(&self) -> Result<(), StorageError> {
        match self.failure() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

impl KvEngine for FailStop {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.stopped()?;
        let result = self.inner.get(cf, key);
        #[cfg(madsim)]
        let result = planted_read_error_as_absent(result);
        self.check(result)
    }

    fn scan(&self, cf: Cf, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<KvPairs, StorageError> {
        self.stopped()?;
        let result = self.inner.scan(cf, start, end, limit);
        #[cfg(madsim)]
        let result = planted_read_error_as_absent(result);
        self.check(result)
    }

    fn snapshot_pages(&self, cf: Cf, page_pairs: usize) -> Result<Pages, StorageError> {
        self.stopped()?;
        let pages = self.check(self.inner.snapshot_pages(cf, page_pairs))?;
        // A page that fails stops the replica as any read that fails does.
        let health = self.health.clone();
        Ok(Box::new(pages.map(move |page| page.map_err(|error| health.fail(error)))))
    }

    fn last(&self, cf: Cf, start: &[u8], end: &[u8]) -> Result<Option<KvPair>, StorageError> {
        self.stopped()?;
        let result = self.inner.last(cf, start, end);
        #[cfg(madsim)]
        let result = planted_read_error_as_absent(result);
        self.check(result)
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StorageError> {
        self.stopped()?;
        self.check(self.inner.write(batch, sync))
    }

    fn sync(&self) -> Result<(), StorageError> {
        self.stopped()?;
        self.check(self.inner.sync())
    }
}

/// The planted twin of fail-stop: a failed read answers "absent" and the replica goes on.
#[cfg(madsim)]
fn planted_read_error_as_absent<T: Default>(result: Result<T, StorageError>) -> Result<T, StorageError> {
    match result {
        Err(StorageError::Io(_)) if crate::planted::armed(crate::planted::Bug::ReadErrorAsAbsent) => Ok(T::default()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sim_disk::SimDisk;

    #[test]
    fn after_one_error_every_call_fails_until_a_new_engine_is_opened() {
        let disk = SimDisk::new();
        let engine = FailStop::new(Arc::new(disk.clone()));
        let mut batch = WriteBatch::default();
        batch.put(Cf::State, b"a".to_vec(), b"1".to_vec());
        engine.write(batch, true).unwrap();
        disk.set_reads_fail(true);
        assert!(engine.get(Cf::State, b"a").is_err());
        disk.set_reads_fail(false);
        assert!(engine.get(Cf::State, b"a").is_err(), "stopped, though the disk reads again");
        assert!(engine.sync().is_err());
        assert!(engine.failure().is_some());
        // A restart opens the disk afresh.
        let restarted = FailStop::new(Arc::new(disk));
        assert_eq!(restarted.get(Cf::State, b"a").unwrap(), Some(b"1".to_vec()));
    }
}
