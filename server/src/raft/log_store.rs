//! The Raft log and vote on a `KvEngine` (column families `raft_log` and `raft_meta`).
//!
//! Durability contract: `save_vote` returns after the vote is synced; `append` reports the
//! entries flushed (through openraft's callback) only after the batch holding them is synced.
//! `truncate` and `purge` need not be synced: a truncation lost in a crash leaves entries that
//! the leader truncates again; a purge lost in a crash leaves entries that are purged again.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use super::GroupTypes;

/// How long a purge waits for the snapshot it follows to be durable, and how often it looks.
const PURGE_WAIT_FOR_SNAPSHOT: std::time::Duration = std::time::Duration::from_secs(5);
const PURGE_POLL: std::time::Duration = std::time::Duration::from_millis(5);
use crate::storage::codec;
use crate::storage::keys::{self, GroupKeys};
use crate::storage::{self as kv, Cf, KvEngine, WriteBatch};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    Entry, ErrorSubject, ErrorVerb, LogId, LogState, OptionalSend, RaftLogId, RaftLogReader, StorageError,
    StorageIOError, Vote,
};

type NodeId = u64;

/// Converts an engine error into openraft's storage error for `subject`.
pub fn storage_error(subject: ErrorSubject<NodeId>, verb: ErrorVerb, error: kv::StorageError) -> StorageError<NodeId> {
    StorageError::IO { source: StorageIOError::new(subject, verb, openraft::AnyError::new(&error)) }
}

/// Keys moved per batch by `migrate_ungrouped`.
const MIGRATE_BATCH_KEYS: usize = 1024;

/// Moves every `raft_log` and `raft_meta` key written before groups had ids (`keys::
/// is_ungrouped`) under `group`: the metadata group, the only one there was. Each batch adds
/// the new keys and deletes the old ones, and the log moves before the meta keys, so a crash
/// part way leaves old meta keys that make the next start finish the move. Costs one seek
/// when there is nothing to move. Returns the number of keys moved.
pub fn migrate_ungrouped(engine: &dyn KvEngine, group: super::GroupId) -> Result<usize, kv::StorageError> {
    #[cfg(madsim)]
    if crate::planted::armed(crate::planted::Bug::UngroupedKeysLeft) {
        return Ok(0);
    }
    // Every replica of the old layout has an old meta key (a vote precedes any entry).
    if engine.scan(Cf::RaftMeta, &[1], None, 1)?.is_empty() {
        return Ok(0);
    }
    let keys = GroupKeys::new(group);
    let mut moved = 0;
    for cf in [Cf::RaftLog, Cf::RaftMeta] {
        let mut start = Vec::new();
        loop {
            let page = engine.scan(cf, &start, None, MIGRATE_BATCH_KEYS)?;
            let full = page.len() == MIGRATE_BATCH_KEYS;
            let mut batch = WriteBatch::default();
            for (key, value) in &page {
                if keys::is_ungrouped(cf == Cf::RaftLog, key) {
                    let new_key = match cf {
                        Cf::RaftLog => keys.log(u64::from_be_bytes(key[..].try_into().expect("8 bytes"))),
                        _ => keys.meta(key),
                    };
                    batch.put(cf, new_key, value.clone());
                    batch.delete(cf, key.clone());
                    moved += 1;
                }
            }
            engine.write(batch, false)?;
            match page.last() {
                Some((last, _)) if full => {
                    start = last.clone();
                    start.push(0);
                }
                _ => break,
            }
        }
    }
    engine.sync()?;
    Ok(moved)
}

/// One group's log and vote: its keys start with the group's id (`keys::GroupKeys`).
pub struct LogStore<C> {
    engine: Arc<dyn KvEngine>,
    keys: GroupKeys,
    _types: std::marker::PhantomData<fn() -> C>,
}

impl<C> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        LogStore { engine: self.engine.clone(), keys: self.keys, _types: std::marker::PhantomData }
    }
}

impl<C: GroupTypes> LogStore<C> {
    pub fn new(engine: Arc<dyn KvEngine>, group: super::GroupId) -> Self {
        LogStore { engine, keys: GroupKeys::new(group), _types: std::marker::PhantomData }
    }

    fn get_meta<T>(
        &self,
        key: &[u8],
        decode: fn(&[u8]) -> Result<T, kv::StorageError>,
    ) -> Result<Option<T>, kv::StorageError> {
        match self.engine.get(Cf::RaftMeta, &self.keys.meta(key))? {
            None => Ok(None),
            Some(bytes) => decode(&bytes).map(Some),
        }
    }

    /// An append must continue what this replica holds: consecutive entries, the first no
    /// further than one past the last entry it has (in its log, purged, or covered by its
    /// snapshot). A hole could never be applied past (chaos seed 13929 made one, through a
    /// leader's read across a purge); refused, it stops the replica loudly instead of
    /// stalling it. Costs one seek when the append follows the last entry.
    fn check_continuous(&self, entries: &[Entry<C>]) -> Result<(), kv::StorageError> {
        let Some(first) = entries.first().map(|e| e.get_log_id().index) else { return Ok(()) };
        for (i, entry) in entries.iter().enumerate() {
            if entry.get_log_id().index != first + i as u64 {
                return Err(kv::StorageError::corruption(format!(
                    "an append of entries from {first} holds {} at position {i}",
                    entry.get_log_id().index
                )));
            }
        }
        let last = match self.engine.last(Cf::RaftLog, &self.keys.log(0), &self.keys.log_end())? {
            Some((key, _)) => Some(self.keys.log_decode(&key)?),
            None => None,
        };
        if last.is_some_and(|last| first <= last + 1) {
            return Ok(());
        }
        let purged = self.get_meta(keys::META_PURGED, codec::log_id_decode)?.flatten().map(|l| l.index);
        let snapshot = self
            .get_meta(keys::META_SNAPSHOT_META, codec::snapshot_meta_decode)?
            .and_then(|meta| meta.last_log_id)
            .map(|l| l.index);
        let held = [last, purged, snapshot].into_iter().flatten().max();
        match held {
            // Nothing held yet: a new replica's first entries may start anywhere.
            None => Ok(()),
            Some(held) if first <= held + 1 => Ok(()),
            Some(held) => Err(kv::StorageError::corruption(format!(
                "an append of entries from {first} would leave a hole after entry {held}"
            ))),
        }
    }

    /// The last log id a restart can rebuild the state machine from without the log: the
    /// durable snapshot's, or that of an install under way (redone at start).
    fn durable_state_index(&self) -> Result<Option<LogId<NodeId>>, kv::StorageError> {
        let snapshot =
            self.get_meta(keys::META_SNAPSHOT_META, codec::snapshot_meta_decode)?.and_then(|m| m.last_log_id);
        let installing = super::snapshot_file::installing(self.engine.as_ref(), self.keys)?
            .and_then(|(meta, _, _)| meta.last_log_id);
        Ok(snapshot.max(installing))
    }

    /// True when this replica has ever voted or logged: it belongs to an initialized cluster.
    pub fn is_initialized(&self) -> Result<bool, kv::StorageError> {
        let has_vote = self.engine.get(Cf::RaftMeta, &self.keys.meta(keys::META_VOTE))?.is_some();
        let has_log = !self.engine.scan(Cf::RaftLog, &self.keys.log(0), Some(&self.keys.log_end()), 1)?.is_empty();
        let has_purged = self.engine.get(Cf::RaftMeta, &self.keys.meta(keys::META_PURGED))?.is_some();
        Ok(has_vote || has_log || has_purged)
    }
}

impl<C: GroupTypes> RaftLogReader<C> for LogStore<C> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<C>>, StorageError<NodeId>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Some(i + 1),
            Bound::Excluded(i) => Some(*i),
            Bound::Unbounded => None,
        };
        let end_key = end.map_or_else(|| self.keys.log_end(), |end| self.keys.log(end));
        let pairs = self
            .engine
            .scan(Cf::RaftLog, &self.keys.log(start), Some(&end_key), usize::MAX)
            .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        let mut entries = Vec::with_capacity(pairs.len());
        for (key, value) in pairs {
            let index =
                self.keys.log_decode(&key).map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Read, e))?;
            // Only a contiguous run from `start`: openraft's replication sends what this
            // returns right after the entry before `start`, so a range whose start was purged
            // meanwhile must not come back as the entries after it (chaos seed 13929: a
            // follower got 59.. after 57 and could never apply past the hole).
            if index != start + entries.len() as u64 {
                tracing::warn!(start, index, "log read stops at a missing entry");
                break;
            }
            let entry =
                codec::entry_decode::<C>(&value).map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Read, e))?;
            if entry.get_log_id().index != index {
                return Err(storage_error(
                    ErrorSubject::Logs,
                    ErrorVerb::Read,
                    kv::StorageError::corruption(format!(
                        "log entry at {index} has index {}",
                        entry.get_log_id().index
                    )),
                ));
            }
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl<C: GroupTypes> RaftLogStorage<C> for LogStore<C> {
    type LogReader = LogStore<C>;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<NodeId>> {
        let read_error = |e| storage_error(ErrorSubject::Logs, ErrorVerb::Read, e);
        let last_purged_log_id: Option<LogId<NodeId>> =
            self.get_meta(keys::META_PURGED, codec::log_id_decode).map_err(read_error)?.flatten();
        let last = self.engine.last(Cf::RaftLog, &self.keys.log(0), &self.keys.log_end()).map_err(read_error)?;
        let last_log_id = match last {
            None => last_purged_log_id,
            Some((_, value)) => Some(codec::entry_index(&value).map_err(read_error)?),
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut batch = WriteBatch::default();
        batch.put(Cf::RaftMeta, self.keys.meta(keys::META_VOTE), codec::vote_encode(vote));
        // The vote is durable before this returns.
        self.engine.write(batch, true).map_err(|e| storage_error(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.get_meta(keys::META_VOTE, codec::vote_decode)
            .map_err(|e| storage_error(ErrorSubject::Vote, ErrorVerb::Read, e))
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError<NodeId>> {
        let mut batch = WriteBatch::default();
        batch.put(Cf::RaftMeta, self.keys.meta(keys::META_COMMITTED), codec::log_id_encode(&committed));
        self.engine.write(batch, false).map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Write, e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self
            .get_meta(keys::META_COMMITTED, codec::log_id_decode)
            .map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Read, e))?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<C>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<C>> = entries.into_iter().collect();
        if let Err(error) = self.check_continuous(&entries) {
            tracing::error!(%error, "refusing a log append that would leave a hole; the replica stops");
            callback.log_io_completed(Err(std::io::Error::other(error.to_string())));
            return Err(storage_error(ErrorSubject::Logs, ErrorVerb::Write, error));
        }
        let mut batch = WriteBatch::default();
        for entry in &entries {
            batch.put(Cf::RaftLog, self.keys.log(entry.get_log_id().index), codec::entry_encode(entry));
        }
        // One synced write for the whole group of entries: the group commit's single fsync.
        // The entries are durable before the callback reports them flushed.
        #[cfg(madsim)]
        let sync = !crate::planted::armed(crate::planted::Bug::AckBeforeDurable);
        #[cfg(not(madsim))]
        let sync = true;
        let result = self.engine.write(batch, sync);
        #[cfg(madsim)]
        if crate::buggify::fire(crate::buggify::Site::LogAppendDelay, 0.1) {
            crate::buggify::delay().await;
        }
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(error) => {
                callback.log_io_completed(Err(std::io::Error::other(error.to_string())));
                Err(storage_error(ErrorSubject::Logs, ErrorVerb::Write, error))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut batch = WriteBatch::default();
        batch.delete_range(Cf::RaftLog, self.keys.log(log_id.index), self.keys.log_end());
        // Synced: an entry that the leader truncated must not come back after a power loss
        // under an index that later holds a different entry.
        self.engine.write(batch, true).map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        // Never past what a restart can rebuild the state from: the durable snapshot, or an
        // install under way (its marker is synced, and the install is redone at start).
        // openraft 0.9 queues the purge that follows a snapshot install without waiting for
        // the install, so the purge waits for it here (a while); an install that failed on
        // a disk error or was cut off never comes, and the purge then stops at the snapshot
        // on disk (chaos seed 1036: purged 472, snapshot 393, and openraft refused to start).
        // Entries kept are purged by a later call; openraft never reads below its own purge
        // point. Not holding the purge back past an install matters too: a new replica's log
        // starts after the installed snapshot, and only the purge point says so (chaos seed
        // 1507, when this waited for nothing).
        let read = |e| storage_error(ErrorSubject::Logs, ErrorVerb::Read, e);
        let deadline = tokio::time::Instant::now() + PURGE_WAIT_FOR_SNAPSHOT;
        let log_id = loop {
            let durable = self.durable_state_index().map_err(read)?;
            match durable {
                Some(durable) if durable.index >= log_id.index => break log_id,
                _ if tokio::time::Instant::now() < deadline => tokio::time::sleep(PURGE_POLL).await,
                Some(durable) => {
                    tracing::warn!(asked = %log_id, kept_after = %durable, "log purge held back to the durable snapshot");
                    break durable;
                }
                None => return Ok(()),
            }
        };
        if self
            .get_meta(keys::META_PURGED, codec::log_id_decode)
            .map_err(read)?
            .flatten()
            .is_some_and(|purged| purged.index >= log_id.index)
        {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        batch.put(Cf::RaftMeta, self.keys.meta(keys::META_PURGED), codec::log_id_encode(&Some(log_id)));
        batch.delete_range(Cf::RaftLog, self.keys.log(0), self.keys.log(log_id.index + 1));
        self.engine.write(batch, false).map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sim_disk::SimDisk;
    use openraft::{CommittedLeaderId, EntryPayload, SnapshotMeta, StoredMembership};

    /// A group of the glue's own, for its tests: its entries are bytes.
    #[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    pub struct Payload(Vec<u8>);

    impl std::fmt::Display for Payload {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{} bytes", self.0.len())
        }
    }

    impl super::super::LogPayload for Payload {
        fn encode_payload(&self) -> Vec<u8> {
            self.0.clone()
        }
        fn decode_payload(bytes: &[u8]) -> Result<Self, String> {
            Ok(Payload(bytes.to_vec()))
        }
    }

    openraft::declare_raft_types!(
        pub Types:
            D = Payload,
            R = (),
            NodeId = u64,
            Node = openraft::BasicNode,
            Entry = openraft::Entry<Types>,
            SnapshotData = super::super::snapshot_file::SnapshotFile,
            AsyncRuntime = super::super::Runtime,
    );

    const GROUP: u32 = 3;

    fn entry(index: u64) -> Entry<Types> {
        Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), index), payload: EntryPayload::Blank }
    }

    fn store_with(indexes: impl IntoIterator<Item = u64>) -> LogStore<Types> {
        let disk = Arc::new(SimDisk::new());
        let mut batch = WriteBatch::default();
        for index in indexes {
            batch.put(Cf::RaftLog, GroupKeys::new(GROUP).log(index), codec::entry_encode(&entry(index)));
        }
        // Another group's entries, which this group's store never sees.
        batch.put(Cf::RaftLog, GroupKeys::new(GROUP + 1).log(100), codec::entry_encode(&entry(100)));
        disk.write(batch, true).unwrap();
        LogStore::new(disk, GROUP)
    }

    #[test]
    fn an_append_that_would_leave_a_hole_is_refused() {
        let store = store_with(1..=3);
        assert!(store.check_continuous(&[entry(4), entry(5)]).is_ok());
        // Overwriting a suffix (after a truncation openraft did not report) is not a hole.
        assert!(store.check_continuous(&[entry(3)]).is_ok());
        let error = store.check_continuous(&[entry(5)]).unwrap_err();
        assert!(error.to_string().contains("hole after entry 3"), "{error}");
        assert!(store.check_continuous(&[entry(4), entry(6)]).is_err(), "entries must be consecutive");
        // A new replica's first entries may start anywhere.
        assert!(store_with(std::iter::empty()).check_continuous(&[entry(7)]).is_ok());
    }

    /// Stores a durable snapshot meta covering the log up to `index`.
    fn snapshot_at(store: &LogStore<Types>, index: u64) {
        let meta = SnapshotMeta {
            last_log_id: Some(entry(index).log_id),
            last_membership: StoredMembership::default(),
            snapshot_id: format!("1-{index}"),
        };
        let mut batch = WriteBatch::default();
        batch.put(Cf::RaftMeta, store.keys.meta(keys::META_SNAPSHOT_META), codec::snapshot_meta_encode(&meta));
        store.engine.write(batch, true).unwrap();
    }

    #[tokio::test]
    async fn a_purge_never_passes_the_durable_snapshot() {
        let mut store = store_with(1..=20);
        // No snapshot yet (and none comes within the wait): nothing is purged.
        store.purge(entry(5).log_id).await.unwrap();
        assert!(store.get_meta(keys::META_PURGED, codec::log_id_decode).unwrap().is_none());
        snapshot_at(&store, 10);
        // A snapshot at 15 that never becomes durable: the purge stops at 10.
        store.purge(entry(15).log_id).await.unwrap();
        let purged = store.get_meta(keys::META_PURGED, codec::log_id_decode).unwrap().flatten().unwrap();
        assert_eq!(purged.index, 10);
        assert!(store.engine.get(Cf::RaftLog, &store.keys.log(11)).unwrap().is_some(), "entry 11 is kept");
        assert!(store.engine.get(Cf::RaftLog, &store.keys.log(10)).unwrap().is_none());
        // An install under way (its marker synced) lets the purge through at once.
        let meta = SnapshotMeta {
            last_log_id: Some(entry(18).log_id),
            last_membership: StoredMembership::default(),
            snapshot_id: "1-18".into(),
        };
        super::super::snapshot_file::mark_installing(store.engine.as_ref(), store.keys, &meta, 1, &[]).unwrap();
        store.purge(entry(18).log_id).await.unwrap();
        let purged = store.get_meta(keys::META_PURGED, codec::log_id_decode).unwrap().flatten().unwrap();
        assert_eq!(purged.index, 18);
    }

    #[test]
    fn a_snapshot_covers_the_entries_it_replaced() {
        let store = store_with(1..=3);
        snapshot_at(&store, 10);
        assert!(store.check_continuous(&[entry(11)]).is_ok());
        assert!(store.check_continuous(&[entry(12)]).is_err());
    }

    #[tokio::test]
    async fn a_group_reads_only_its_own_log() {
        let mut store = store_with(1..=3);
        let entries = store.try_get_log_entries(1..).await.unwrap();
        assert_eq!(entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(store.get_log_state().await.unwrap().last_log_id.unwrap().index, 3);
        store.truncate(entry(2).log_id).await.unwrap();
        let other = GroupKeys::new(GROUP + 1).log(100);
        assert!(store.engine.get(Cf::RaftLog, &other).unwrap().is_some(), "a truncation stays in its group");
    }

    #[tokio::test]
    async fn keys_written_before_groups_are_moved_under_the_metadata_group() {
        let disk = Arc::new(SimDisk::new());
        let mut batch = WriteBatch::default();
        for index in 5..=7u64 {
            batch.put(Cf::RaftLog, index.to_be_bytes().to_vec(), codec::entry_encode(&entry(index)));
        }
        let vote = openraft::Vote::new(4, 1);
        batch.put(Cf::RaftMeta, keys::META_VOTE.to_vec(), codec::vote_encode(&vote));
        let mut frame = keys::META_SNAPSHOT_FRAME_PREFIX.to_vec();
        frame.extend_from_slice(&[0; 16]);
        batch.put(Cf::RaftMeta, frame, b"frame".to_vec());
        disk.write(batch, true).unwrap();

        assert_eq!(migrate_ungrouped(disk.as_ref(), 0).unwrap(), 5);
        let mut store = LogStore::<Types>::new(disk.clone(), 0);
        let entries = store.try_get_log_entries(5..).await.unwrap();
        assert_eq!(entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), vec![5, 6, 7]);
        assert_eq!(store.read_vote().await.unwrap(), Some(vote));
        assert_eq!(disk.get(Cf::RaftMeta, &store.keys.snapshot_frame(0, 0)).unwrap().unwrap(), b"frame");
        assert!(disk.scan(Cf::RaftMeta, &[1], None, 10).unwrap().is_empty(), "no old meta key is left");
        assert_eq!(migrate_ungrouped(disk.as_ref(), 0).unwrap(), 0, "a second start moves nothing");
    }

    #[tokio::test]
    async fn a_move_of_old_keys_cut_short_by_power_loss_is_finished_at_the_next_start() {
        use crate::storage::sim_disk::UnsyncedFate;
        let entries = 2_500u64; // three pages of the log
        let old_layout = || {
            let disk = Arc::new(SimDisk::new());
            let mut batch = WriteBatch::default();
            for index in 1..=entries {
                batch.put(Cf::RaftLog, index.to_be_bytes().to_vec(), codec::entry_encode(&entry(index)));
            }
            batch.put(Cf::RaftMeta, keys::META_VOTE.to_vec(), codec::vote_encode(&openraft::Vote::new(4, 1)));
            disk.write(batch, true).unwrap();
            disk
        };
        let mut cut = 0;
        loop {
            let disk = old_layout();
            disk.set_sync_fails(true);
            assert!(migrate_ungrouped(disk.as_ref(), 0).is_err(), "the final sync fails");
            let mut n = 0;
            let lost = disk.power_loss(|_| {
                n += 1;
                if n <= cut {
                    UnsyncedFate::Kept
                } else {
                    UnsyncedFate::Dropped
                }
            });
            disk.set_sync_fails(false);
            migrate_ungrouped(disk.as_ref(), 0).unwrap();
            let mut store = LogStore::<Types>::new(disk.clone(), 0);
            let read = store.try_get_log_entries(1..).await.unwrap();
            assert_eq!(read.len() as u64, entries, "cut after {cut} batches");
            assert!(store.read_vote().await.unwrap().is_some(), "cut after {cut} batches");
            let left = disk.scan(Cf::RaftLog, &[], None, usize::MAX).unwrap();
            assert!(left.iter().all(|(key, _)| key.len() == 12), "cut after {cut}: an old log key is left");
            if lost == 0 {
                break;
            }
            cut += 1;
        }
        assert!(cut >= 4, "the move took {cut} batches: the cuts fell inside it");
    }
}
