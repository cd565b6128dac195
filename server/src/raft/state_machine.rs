//! The metadata state machine on a `KvEngine` (column family `state`).
//!
//! Each entry is applied with one write batch that also holds the new applied log id (and
//! membership), so the state and the applied index never disagree, even after a crash. State
//! writes are not synced: the log is, and a restarted replica re-applies the entries after its
//! applied index. Before a snapshot is reported built, the engine is synced, because openraft
//! may then purge the log that the unsynced state depended on.
//!
//! A snapshot is the whole `state` family (applied log id and membership included, since they
//! live there), so installing one replaces the state machine in a single batch. Its bytes are
//! one `codec` record, crc-checked before it is installed or sent.

use std::io::Cursor;
use std::sync::{Arc, RwLock};

use super::log_store::storage_error;
use super::type_config::RaftOutcome;
use super::TypeConfig;
use crate::constants::ROOT_INO;
use crate::metadata::txn;
use crate::storage::codec;
use crate::storage::keys;
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
        let stored = crate::metadata::state::read_cluster_settings(self.engine.as_ref())?;
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
    applied: Option<LogId<NodeId>>,
    membership: Membership,
}

fn sm_error(verb: ErrorVerb, error: kv::StorageError) -> StorageError<NodeId> {
    storage_error(ErrorSubject::StateMachine, verb, error)
}

impl StateMachine {
    pub fn open(state: MetaState) -> Result<Self, kv::StorageError> {
        let mut machine = StateMachine { state, applied: None, membership: Membership::default() };
        machine.load()?;
        Ok(machine)
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

    fn snapshot_file(&self) -> Result<Vec<u8>, kv::StorageError> {
        let pairs = self.state.engine.scan(Cf::State, &[], None, usize::MAX)?;
        Ok(codec::snapshot_data_encode(&pairs))
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
                let root = crate::metadata::state::read_inode(self.state.engine.as_ref(), ROOT_INO)
                    .map_err(|e| sm_error(ErrorVerb::Read, e))?;
                if root.1.is_none() {
                    txn::create_root(index, &mut batch);
                }
            }
            let outcome = match entry.payload {
                EntryPayload::Blank => None,
                EntryPayload::Normal(command) => Some(
                    txn::apply_command(self.state.engine.as_ref(), index, &command.0, &mut batch)
                        .map_err(|e| sm_error(ErrorVerb::Read, e))?,
                ),
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
        // The copy is taken here, while apply cannot run, so it matches `applied` exactly.
        let data = self.snapshot_file();
        SnapshotBuilder {
            engine: self.state.engine.clone(),
            applied: self.applied,
            membership: self.membership.clone(),
            data,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let subject = ErrorSubject::Snapshot(Some(meta.signature()));
        let bytes = snapshot.into_inner();
        // Checked whole (its crc) before anything is installed.
        let pairs =
            codec::snapshot_data_decode(&bytes).map_err(|e| storage_error(subject.clone(), ErrorVerb::Read, e))?;
        let mut batch = WriteBatch::default();
        batch.delete_range(Cf::State, Vec::new(), vec![0xff; 16]);
        for (key, value) in pairs {
            batch.put(Cf::State, key, value);
        }
        // The snapshot's own applied id and membership are in its pairs; write them as the
        // meta says, so the two can never disagree.
        batch.put(Cf::State, keys::SYSTEM_APPLIED.to_vec(), codec::log_id_encode(&meta.last_log_id));
        batch.put(Cf::State, keys::SYSTEM_MEMBERSHIP.to_vec(), codec::membership_encode(&meta.last_membership));
        batch.put(Cf::RaftMeta, keys::META_SNAPSHOT_META.to_vec(), codec::snapshot_meta_encode(meta));
        batch.put(Cf::RaftMeta, keys::META_SNAPSHOT_DATA.to_vec(), bytes);
        // Installed state is durable before this returns: the log it replaces may be purged.
        self.state.write(batch, true).map_err(|e| storage_error(subject.clone(), ErrorVerb::Write, e))?;
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
        let read = |key| self.state.engine.get(Cf::RaftMeta, key).map_err(|e| sm_error(ErrorVerb::Read, e));
        let (Some(meta), Some(data)) = (read(keys::META_SNAPSHOT_META)?, read(keys::META_SNAPSHOT_DATA)?) else {
            return Ok(None);
        };
        let meta = codec::snapshot_meta_decode(&meta).map_err(|e| sm_error(ErrorVerb::Read, e))?;
        // The snapshot's bytes are checked here too: a corrupted copy is never sent.
        codec::snapshot_data_decode(&data).map_err(|e| sm_error(ErrorVerb::Read, e))?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}

pub struct SnapshotBuilder {
    engine: Arc<dyn KvEngine>,
    applied: Option<LogId<NodeId>>,
    membership: Membership,
    data: Result<Vec<u8>, kv::StorageError>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let data = std::mem::replace(&mut self.data, Ok(Vec::new())).map_err(|e| sm_error(ErrorVerb::Read, e))?;
        let snapshot_id = match self.applied {
            Some(log_id) => format!("{}-{}", log_id.leader_id, log_id.index),
            None => "empty".to_string(),
        };
        let meta = SnapshotMeta { last_log_id: self.applied, last_membership: self.membership.clone(), snapshot_id };
        let mut batch = WriteBatch::default();
        batch.put(Cf::RaftMeta, keys::META_SNAPSHOT_META.to_vec(), codec::snapshot_meta_encode(&meta));
        batch.put(Cf::RaftMeta, keys::META_SNAPSHOT_DATA.to_vec(), data.clone());
        // Synced: the state up to `applied` and the snapshot are durable before openraft may
        // purge the log they cover.
        self.engine.write(batch, true).map_err(|e| storage_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}
