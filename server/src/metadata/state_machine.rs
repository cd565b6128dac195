//! The metadata state machine on a `KvEngine` (column family `state`).
//!
//! Each entry is applied with one write batch that also holds the new applied log id (and
//! membership), so the state and the applied index never disagree, even after a crash. State
//! writes are not synced: the log is, and a restarted replica re-applies the entries after its
//! applied index. Before a snapshot is reported built, the engine is synced, because openraft
//! may then purge the log that the unsynced state depended on.
//!
//! A snapshot is built off the apply path: the builder takes a point-in-time view of the
//! state from the engine (`KvEngine::snapshot_pages`) while apply waits, which costs about
//! nothing, and openraft then runs the build (paging through that view, writing frames) in a
//! task of its own while entries go on being applied.
//!
//! A snapshot is the whole `state` family (applied log id and membership included, since they
//! live there), streamed through the engine in frames, each crc-checked before it is sent or
//! installed (`snapshot_file.rs`); installing one replaces the state machine, frame by frame,
//! under a marker a restart finishes the install from.

use std::sync::{Arc, RwLock};

use super::raft_types::RaftOutcome;
use super::txn;
use super::TypeConfig;
use crate::constants::ROOT_INO;
use crate::raft::log_store::storage_error;
use crate::raft::snapshot_file::{self, SnapshotFile, SnapshotStore};
use crate::storage::codec;
use crate::storage::keys::{self, GroupKeys};
use crate::storage::{self as kv, Cf, KvEngine, WriteBatch};
use openraft::storage::RaftStateMachine;
use openraft::{
    Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageError, StoredMembership,
};

type NodeId = u64;
type Membership = StoredMembership<NodeId, openraft::BasicNode>;

/// The state machine's storage, shared with the read path. Readers that need several keys to
/// be from one state (a listing version and its entries) hold `apply_lock` for reading;
/// apply holds it for writing while it writes a batch.
#[derive(Clone)]
pub struct MetaState {
    pub engine: Arc<dyn KvEngine>,
    pub apply_lock: Arc<RwLock<()>>,
    /// Where a storage error found above the engine (a record that fails its crc) stops the
    /// replica, as one inside the engine does.
    pub health: Arc<crate::storage::fail_stop::Health>,
    /// The cluster-wide settings as this replica has applied them (None until the first
    /// leader's settings entry is applied here).
    pub settings: Arc<tokio::sync::watch::Sender<Option<cffs_proto::ClusterSettings>>>,
}

impl MetaState {
    pub fn new(engine: Arc<dyn KvEngine>, health: Arc<crate::storage::fail_stop::Health>) -> Self {
        let settings = Arc::new(tokio::sync::watch::Sender::new(None));
        MetaState { engine, apply_lock: Arc::new(RwLock::new(())), health, settings }
    }

    /// Publishes the settings stored in the state (after a load or a snapshot install).
    fn publish_settings(&self) -> Result<(), kv::StorageError> {
        let stored = super::state::read_cluster_settings(self.engine.as_ref())?;
        self.settings.send_replace(stored);
        Ok(())
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), kv::StorageError> {
        let _guard = self.apply_lock.write().expect("apply lock");
        self.engine.write(batch, sync)
    }
}

pub struct StateMachine {
    state: MetaState,
    snapshots: SnapshotStore,
    /// The file the last snapshot receipt began, until it is installed: a receipt abandoned
    /// for a newer one is discarded when that one begins.
    receiving: Option<u64>,
    applied: Option<LogId<NodeId>>,
    membership: Membership,
}

fn sm_error(verb: ErrorVerb, error: kv::StorageError) -> StorageError<NodeId> {
    storage_error(ErrorSubject::StateMachine, verb, error)
}

impl StateMachine {
    pub fn open(state: MetaState) -> Result<Self, kv::StorageError> {
        let snapshots = SnapshotStore::open(state.engine.clone(), GroupKeys::new(super::METADATA_GROUP))?;
        let mut machine =
            StateMachine { state, snapshots, receiving: None, applied: None, membership: Membership::default() };
        machine.finish_install()?;
        let current = machine.snapshots.current()?.map(|(_, file, _)| file);
        machine.snapshots.collect_garbage(&current.into_iter().collect::<Vec<_>>())?;
        machine.load()?;
        Ok(machine)
    }

    /// An install a crash cut short is done again, from its complete and durable file.
    fn finish_install(&mut self) -> Result<(), kv::StorageError> {
        let Some((meta, file, lens)) = snapshot_file::installing(self.state.engine.as_ref(), self.snapshots.keys())?
        else {
            return Ok(());
        };
        tracing::warn!(snapshot = %meta.snapshot_id, "finishing a snapshot install cut short");
        self.install_file(&meta, file, &lens)
    }

    /// Installs complete snapshot file `file` as the state and makes it the current snapshot,
    /// durably; the marker written first lets a restart finish it.
    fn install_file(
        &self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        file: u64,
        lens: &[u32],
    ) -> Result<(), kv::StorageError> {
        let _guard = self.state.apply_lock.write().expect("apply lock");
        snapshot_file::mark_installing(self.state.engine.as_ref(), self.snapshots.keys(), meta, file, lens)?;
        let last = snapshot_file::install_frames(&self.snapshots, file, lens, meta)?;
        // Installed state is durable before this returns: the log it replaces may be purged.
        self.snapshots.make_current(meta, file, lens, last, true)?;
        Ok(())
    }

    fn load(&mut self) -> Result<(), kv::StorageError> {
        let engine = &self.state.engine;
        self.applied = match engine.get(Cf::State, keys::SYSTEM_APPLIED)? {
            None => None,
            Some(bytes) => codec::log_id_decode(&bytes)?,
        };
        self.membership = match engine.get(Cf::State, keys::SYSTEM_MEMBERSHIP)? {
            None => Membership::default(),
            Some(bytes) => codec::membership_decode(&bytes)?,
        };
        self.state.publish_settings()
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId<NodeId>>, Membership), StorageError<NodeId>> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<RaftOutcome>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut outcomes = Vec::new();
        for entry in entries {
            #[cfg(madsim)]
            if crate::buggify::fire(crate::buggify::Site::ApplyDelay, 0.05) {
                crate::buggify::delay().await;
            }
            let index = entry.log_id.index;
            if let Some(applied) = self.applied {
                assert!(index > applied.index, "entries are applied once, in log order");
            }
            let mut batch = WriteBatch::default();
            let fresh = self.applied.is_none_or(|applied| applied.index == 0);
            if fresh && index > 0 {
                let root = super::state::read_inode(self.state.engine.as_ref(), ROOT_INO)
                    .map_err(|e| sm_error(ErrorVerb::Read, e))?;
                if root.1.is_none() {
                    txn::create_root(index, &mut batch);
                }
            }
            let outcome = match entry.payload {
                EntryPayload::Blank => None,
                EntryPayload::Normal(command) => {
                    let outcome = txn::apply_command(self.state.engine.as_ref(), index, &command.0, &mut batch)
                        .map_err(|e| sm_error(ErrorVerb::Read, e))?;
                    tracing::debug!(target: "cffs_apply", index, command = ?command, ?outcome, "applied");
                    Some(outcome)
                }
                #[cfg(madsim)]
                EntryPayload::Membership(_)
                    if crate::planted::armed(crate::planted::Bug::StaleAppliedMembership)
                        && self.membership.log_id().is_some() =>
                {
                    None
                }
                EntryPayload::Membership(membership) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), membership);
                    batch.put(Cf::State, keys::SYSTEM_MEMBERSHIP.to_vec(), codec::membership_encode(&self.membership));
                    None
                }
            };
            batch.put(Cf::State, keys::SYSTEM_APPLIED.to_vec(), codec::log_id_encode(&Some(entry.log_id)));
            self.state.write(batch, false).map_err(|e| sm_error(ErrorVerb::Write, e))?;
            self.applied = Some(entry.log_id);
            if let Some(txn::CommandOutcome::Settings(settings)) = &outcome {
                self.state.settings.send_replace(Some(*settings));
            }
            outcomes.push(RaftOutcome(outcome));
        }
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // The view is taken here, while apply cannot run, so it matches `applied` exactly;
        // the build reads it later, one page and one frame in memory at a time.
        let file = self.snapshots.allocate();
        let started = tokio::time::Instant::now();
        let pages = self.state.engine.snapshot_pages(Cf::State, snapshot_file::SCAN_PAGE_PAIRS);
        tracing::info!(
            applied = ?self.applied.map(|id| id.index),
            view_us = started.elapsed().as_micros() as u64,
            "snapshot view taken; the build goes on beside apply"
        );
        SnapshotBuilder {
            snapshots: self.snapshots.clone(),
            file,
            pages: std::sync::Mutex::new(Some(pages)),
            applied: self.applied,
            membership: self.membership.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotFile>, StorageError<NodeId>> {
        if let Some(abandoned) = self.receiving.take() {
            self.snapshots.discard(abandoned).map_err(|e| sm_error(ErrorVerb::Delete, e))?;
        }
        let file = self.snapshots.allocate();
        self.receiving = Some(file);
        Ok(Box::new(SnapshotFile::writer(self.snapshots.clone(), file)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<SnapshotFile>,
    ) -> Result<(), StorageError<NodeId>> {
        let subject = ErrorSubject::Snapshot(Some(meta.signature()));
        // Every frame was checked as it arrived; the trailer says none is missing.
        let (file, lens) = snapshot.complete().map_err(|e| storage_error(subject.clone(), ErrorVerb::Read, e))?;
        if self.receiving == Some(file) {
            self.receiving = None;
        }
        self.install_file(meta, file, &lens).map_err(|e| storage_error(subject.clone(), ErrorVerb::Write, e))?;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.state.publish_settings().map_err(|e| storage_error(subject, ErrorVerb::Read, e))?;
        #[cfg(madsim)]
        crate::sim_stats::snapshot_installed();
        Ok(())
    }

    // openraft's StorageError is what the trait returns, large or not.
    #[allow(clippy::result_large_err)]
    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        // Each frame's crc is checked as it is read: a corrupted copy is never sent.
        let current = self.snapshots.current().map_err(|e| sm_error(ErrorVerb::Read, e))?;
        Ok(current.map(|(meta, file, lens)| Snapshot {
            meta,
            snapshot: Box::new(SnapshotFile::reader(self.snapshots.clone(), file, lens)),
        }))
    }
}

pub struct SnapshotBuilder {
    snapshots: SnapshotStore,
    file: u64,
    /// The state as of `applied` (taken once: a builder builds one snapshot). In a mutex
    /// only because openraft asks a builder to be `Sync`; never locked, `build_snapshot` has
    /// it by `&mut`.
    pages: std::sync::Mutex<Option<Result<kv::Pages, kv::StorageError>>>,
    applied: Option<LogId<NodeId>>,
    membership: Membership,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let pages = self
            .pages
            .get_mut()
            .expect("snapshot pages lock")
            .take()
            .unwrap_or_else(|| Err(kv::StorageError::Io("a snapshot builder builds one snapshot".into())))
            .map_err(|e| sm_error(ErrorVerb::Read, e))?;
        #[cfg(madsim)]
        if crate::buggify::fire(crate::buggify::Site::SnapshotBuildDelay, 0.5) {
            crate::buggify::delay_up_to(500).await; // apply goes on meanwhile
        }
        let started = tokio::time::Instant::now();
        let lens = self.snapshots.write_pages(self.file, pages).map_err(|e| sm_error(ErrorVerb::Read, e))?;
        let snapshot_id = match self.applied {
            Some(log_id) => format!("{}-{}", log_id.leader_id, log_id.index),
            None => "empty".to_string(),
        };
        let meta = SnapshotMeta { last_log_id: self.applied, last_membership: self.membership.clone(), snapshot_id };
        // Synced: the state up to `applied` and the snapshot are durable before openraft may
        // purge the log they cover. A newer snapshot installed meanwhile stays current.
        let error = |e| storage_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, e);
        let current =
            self.snapshots.make_current(&meta, self.file, &lens, WriteBatch::default(), false).map_err(error)?;
        tracing::info!(
            snapshot = %meta.snapshot_id,
            frames = lens.len(),
            bytes = lens.iter().map(|len| u64::from(*len)).sum::<u64>(),
            build_ms = started.elapsed().as_millis() as u64,
            "snapshot built"
        );
        let snapshot = Box::new(SnapshotFile::reader(self.snapshots.clone(), self.file, lens));
        if !current {
            // Lost to a newer snapshot: gone once openraft lets go of it.
            self.snapshots.discard(self.file).map_err(error)?;
        }
        Ok(Snapshot { meta, snapshot })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::snapshot_file::mark_installing;
    use crate::raft::snapshot_file::tests::{build, meta, state_of_without_system, store_with_state};
    use crate::storage::keys::GroupKeys;
    use crate::storage::sim_disk::SimDisk;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn an_install_cut_short_is_finished_when_the_replica_starts() {
        let leader = store_with_state(2_000);
        let (_, _, bytes) = build(&leader);
        let disk: Arc<dyn KvEngine> = Arc::new(SimDisk::new());
        let follower = SnapshotStore::open(disk.clone(), GroupKeys::new(0)).unwrap();
        let mut received = SnapshotFile::writer(follower.clone(), follower.allocate());
        futures::executor::block_on(received.write_all(&bytes)).unwrap();
        let (file, lens) = received.complete().unwrap();
        mark_installing(disk.as_ref(), follower.keys(), &meta(10), file, &lens).unwrap();
        // The crash: the old state deleted and one frame written, nothing more.
        let mut batch = WriteBatch::default();
        batch.delete_range(Cf::State, Vec::new(), vec![0xff; 16]);
        batch.put(Cf::State, b"k000000".to_vec(), b"half".to_vec());
        disk.write(batch, false).unwrap();
        let health = Arc::new(crate::storage::fail_stop::Health::default());
        let state = MetaState::new(disk.clone(), health);
        StateMachine::open(state).unwrap();
        let mut expected = state_of_without_system(&leader);
        let installed = state_of_without_system(&follower);
        expected.sort();
        assert_eq!(installed, expected);
        let applied = disk.get(Cf::State, keys::SYSTEM_APPLIED).unwrap().unwrap();
        assert_eq!(codec::log_id_decode(&applied).unwrap(), meta(10).last_log_id);
        assert!(snapshot_file::installing(disk.as_ref(), GroupKeys::new(0)).unwrap().is_none(), "the marker is gone");
        assert_eq!(follower.current().unwrap().unwrap().1, file);
    }
}
