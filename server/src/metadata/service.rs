//! The `cffs.v1.Metadata` gRPC service of one replica. Reads are linearizable: each waits
//! for openraft's read index (leadership confirmed by a quorum, state applied up to the
//! leader's commit) and then reads the local state. Commits are proposed as one Raft entry and
//! answered with the outcome the state machine computed at apply time. A replica that is not
//! the leader answers `NOT_LEADER` with a hint, and the client follows it.

use cffs_proto::error_code::{status, status_with_leader};
use cffs_proto::limits::{check_name, LOOKUP_PATH_COMPONENTS_MAX};
use cffs_proto::{
    command, AddLearnerRequest, AllocateInodesRequest, AllocateInodesResponse, ChangeMembershipRequest,
    ClusterStatusRequest, ClusterStatusResponse, Command, CommitRequest, CommitResponse, DirEntry, ErrorCode, FileKind,
    GetInodeRequest, GetInodeResponse, Key, LookupPathRequest, LookupPathResponse, LookupRequest, LookupResponse,
    LookupStep, Member, MembershipResponse, ReadDirRequest, ReadDirResponse, SessionRequest,
};
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::BasicNode;
use prost::Message;
use tonic::{Request, Response, Status};

use super::batcher::{self, Batcher, ProposeError};
use super::leases::LeaseConfig;
use super::read_index::{ReadIndex, ReadIndexError, RestartFloor};
use super::sessions::{self, EventStream, Sessions};
use super::state;
use super::txn::{self, CommandOutcome};
use crate::clock::Clock;
use crate::constants::{INODE_ALLOCATE_MAX, READDIR_PAGE_MAX, REQUEST_TIMEOUT};
use crate::metadata::state_machine::MetaState;
use crate::metadata::MetaRaft;
use crate::storage::keys;
use crate::storage::{Cf, StorageError};

type NodeId = u64;

#[derive(Clone)]
pub struct MetadataService {
    node_id: NodeId,
    raft: MetaRaft,
    state: MetaState,
    read_index: ReadIndex,
    sessions: Sessions,
    /// Checks a commit's new blocks on their block servers (connections kept).
    blocks: std::sync::Arc<crate::block::check::BlockCheck>,
    /// The scrubber's counters (it runs while this replica leads).
    scrub: std::sync::Arc<crate::block::scrub::ScrubStats>,
    /// The block collector's counters (it runs while this replica leads).
    gc: std::sync::Arc<crate::block::gc::GcStats>,
    /// Puts concurrent commits into shared log entries.
    batcher: Batcher,
    /// Commits by outcome, their latency, batch sizes (`/metrics`).
    commit_metrics: std::sync::Arc<crate::metrics::CommitMetrics>,
    /// This replica's clock (read only by a planted bug's path today).
    #[cfg_attr(not(madsim), allow(dead_code))]
    clock: Clock,
}

/// The term this replica leads, if it leads (as its metrics say: the lease table and the
/// batcher both read leadership here).
pub(super) fn leader_term(raft: &MetaRaft) -> Option<u64> {
    let metrics = raft.metrics();
    let metrics = metrics.borrow();
    (metrics.state == openraft::ServerState::Leader).then_some(metrics.current_term)
}

impl MetadataService {
    pub fn new(
        node_id: NodeId,
        raft: MetaRaft,
        state: MetaState,
        floor: Option<RestartFloor>,
        leases: LeaseConfig,
        clock: Clock,
        maintenance: crate::block::Maintenance,
    ) -> Self {
        let crate::block::Maintenance { scrub, gc } = maintenance;
        let read_index = ReadIndex::start(raft.clone(), floor, clock);
        let sessions = Sessions::new(leases, state.engine.clone(), clock, state.health.clone());
        sessions.watch_leadership(raft.clone());
        super::settings::watch(raft.clone(), state.clone(), sessions.clone(), super::settings::from_config(&leases));
        let blocks = std::sync::Arc::new(crate::block::check::BlockCheck::default());
        let scrub_stats = std::sync::Arc::new(crate::block::scrub::ScrubStats::default());
        crate::block::scrub::spawn(raft.clone(), state.clone(), blocks.clone(), scrub, scrub_stats.clone());
        let gc_stats = std::sync::Arc::new(crate::block::gc::GcStats::default());
        crate::block::gc::spawn(raft.clone(), state.clone(), blocks.clone(), gc, gc_stats.clone());
        let commit_metrics = std::sync::Arc::new(crate::metrics::CommitMetrics::default());
        let batcher = Batcher::start(raft.clone(), commit_metrics.clone());
        MetadataService {
            node_id,
            raft,
            state,
            read_index,
            sessions,
            blocks,
            scrub: scrub_stats,
            gc: gc_stats,
            batcher,
            commit_metrics,
            clock,
        }
    }

    fn term(&self) -> Option<u64> {
        leader_term(&self.raft)
    }

    fn not_leader(&self, leader_id: Option<NodeId>, leader_node: Option<&BasicNode>) -> Status {
        let leader_id = leader_id.or_else(|| self.raft.metrics().borrow().current_leader);
        let leader_addr = match (leader_node, leader_id) {
            (Some(node), _) => node.addr.clone(),
            (None, Some(id)) => self.member_addr(id).unwrap_or_default(),
            (None, None) => String::new(),
        };
        status_with_leader(ErrorCode::NotLeader, "not the leader", leader_id.unwrap_or(0), leader_addr)
    }

    fn member_addr(&self, id: NodeId) -> Option<String> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        metrics.membership_config.membership().get_node(&id).map(|n| n.addr.clone())
    }

    /// Waits until a read of local state is linearizable: this replica is the leader, a quorum
    /// confirmed it, and everything committed before the read began is applied here. Returns
    /// when the read-index round that confirmed it started.
    async fn linearizable(&self) -> Result<tokio::time::Instant, Status> {
        #[cfg(madsim)]
        if crate::planted::armed(crate::planted::Bug::FollowerRead)
            || (crate::planted::armed(crate::planted::Bug::LeaderReadWithoutQuorum) && self.term().is_some())
        {
            return Ok(self.clock.now());
        }
        match tokio::time::timeout(REQUEST_TIMEOUT, self.read_index.wait()).await {
            Err(_) => Err(status(ErrorCode::Unavailable, "read index timed out")),
            Ok(Ok(round_start)) => Ok(round_start),
            Ok(Err(ReadIndexError::NotLeader { leader_id, leader_node })) => {
                Err(self.not_leader(leader_id, leader_node.as_ref()))
            }
            Ok(Err(ReadIndexError::Unavailable(why))) => Err(status(ErrorCode::Unavailable, why)),
        }
    }

    async fn propose(&self, command: Command) -> Result<CommandOutcome, Status> {
        batcher::propose(&self.raft, command).await.map_err(|error| self.propose_status(error))
    }

    fn propose_status(&self, error: ProposeError) -> Status {
        match error {
            ProposeError::Timeout => status(ErrorCode::Timeout, "commit timed out; its outcome is unknown"),
            ProposeError::NotLeader { leader_id, leader_node } => self.not_leader(leader_id, leader_node.as_ref()),
            ProposeError::Failed(why) => status(ErrorCode::LeaderChanged, why),
            ProposeError::Internal(why) => status(ErrorCode::Internal, why),
            ProposeError::TermChanged => {
                status(ErrorCode::LeaderChanged, "the leader's term changed before the commit was proposed")
            }
        }
    }

    fn status_response(&self) -> ClusterStatusResponse {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| Member { id: *id, addr: node.addr.clone(), voter: voters.contains(id) })
            .collect();
        ClusterStatusResponse {
            node_id: self.node_id,
            members,
            leader_id: metrics.current_leader.unwrap_or(0),
            term: metrics.current_term,
            last_applied: metrics.last_applied.map_or(0, |l| l.index),
            log_committed: quorum_matched(&metrics, &voters),
            last_log_index: metrics.last_log_index.unwrap_or(0),
            state: format!("{:?}", metrics.state),
            initialized: metrics.last_log_index.is_some() || metrics.vote.leader_id().term > 0,
            snapshot_index: metrics.snapshot.map_or(0, |l| l.index),
            purged_index: metrics.purged.map_or(0, |l| l.index),
            leases: (metrics.state == openraft::ServerState::Leader).then(|| self.sessions.metrics()),
            scrub: Some(self.scrub.wire()),
            gc: Some(self.gc.wire(crate::block::gc::tombstones(&self.state).map_or(0, |t| t.len() as u64))),
        }
    }
}

impl MetadataService {
    /// This replica's figures for `/metrics`: Raft, commits, leases (on the leader), the
    /// scrubber and the collector (which run on the leader), storage health.
    pub fn render_metrics(&self, out: &mut crate::metrics::Exposition) {
        use crate::metrics::Kind::{Counter, Gauge};
        let status = self.status_response();
        let group = [("group", "meta")];
        let gauges: [(&str, &str, u64); 8] = [
            ("cffs_raft_term", "This replica's current Raft term.", status.term),
            ("cffs_raft_leader_id", "The leader this replica knows of (0: none).", status.leader_id),
            ("cffs_raft_is_leader", "1 on the leader.", u64::from(status.state == "Leader")),
            ("cffs_raft_last_log_index", "Last index in this replica's log.", status.last_log_index),
            (
                "cffs_raft_commit_index",
                "On the leader, the highest index a majority holds (0 elsewhere).",
                status.log_committed,
            ),
            ("cffs_raft_applied_index", "Last index applied to this replica's state.", status.last_applied),
            ("cffs_raft_snapshot_index", "Last index in this replica's latest snapshot.", status.snapshot_index),
            (
                "cffs_raft_voters",
                "Voters in the group's membership.",
                status.members.iter().filter(|m| m.voter).count() as u64,
            ),
        ];
        for (name, help, value) in gauges {
            out.family(name, Gauge, help);
            out.sample(name, &group, value);
        }
        out.single(
            "cffs_storage_failed",
            Gauge,
            "1 once this replica's storage failed (it stops serving until restarted).",
            u64::from(self.state.health.failure().is_some()),
        );
        self.commit_metrics.render(out);
        let leases = status.leases.unwrap_or_default();
        out.single("cffs_lease_sessions", Gauge, "Client sessions in the leader's lease table.", leases.sessions);
        out.single("cffs_session_streams", Gauge, "Session streams open on this leader.", leases.streams);
        out.single("cffs_lease_keys", Gauge, "Keys under lease in the leader's lease table.", leases.leased_keys);
        let lease_counters: [(&str, &str, u64); 6] = [
            ("cffs_session_keepalives_total", "Session keepalives this leader answered.", leases.keepalives),
            ("cffs_lease_grants_total", "Leases granted by this leader.", leases.granted),
            ("cffs_lease_invalidations_sent_total", "Invalidations sent to lease holders.", leases.invalidations_sent),
            (
                "cffs_lease_invalidations_acked_total",
                "Invalidations acknowledged by holders.",
                leases.invalidations_acked,
            ),
            (
                "cffs_lease_writer_waits_total",
                "Commits that waited for lease holders to let go.",
                leases.commits_waited,
            ),
            (
                "cffs_lease_writer_wait_milliseconds_total",
                "Time commits spent waiting for lease holders.",
                leases.commit_wait_ms,
            ),
        ];
        for (name, help, value) in lease_counters {
            out.single(name, Counter, help, value);
        }
        let scrub = status.scrub.unwrap_or_default();
        let gc = status.gc.unwrap_or_default();
        let maintenance: [(&str, &str, u64); 11] = [
            ("cffs_scrub_passes_total", "Whole scrub passes over every referenced block.", scrub.passes),
            ("cffs_scrub_blocks_checked_total", "Blocks the scrubber checked.", scrub.blocks_checked),
            ("cffs_scrub_bytes_read_total", "Bytes of copies the scrubber read.", scrub.bytes_read),
            ("cffs_scrub_copies_bad_total", "Copies whose bytes failed their crc32.", scrub.copies_bad),
            ("cffs_scrub_copies_missing_total", "Members that did not hold a referenced block.", scrub.copies_missing),
            ("cffs_scrub_copies_repaired_total", "Copies the scrubber repaired.", scrub.copies_repaired),
            ("cffs_scrub_blocks_lost_total", "Referenced blocks with no intact copy.", scrub.blocks_lost),
            ("cffs_gc_rounds_total", "Block collection rounds.", gc.rounds),
            ("cffs_gc_blocks_listed_total", "Blocks the block servers listed to the collector.", gc.blocks_listed),
            ("cffs_gc_tombstoned_total", "Unreferenced blocks past the grace period, marked.", gc.tombstoned),
            ("cffs_gc_deleted_total", "Copies deleted from block servers.", gc.deleted),
        ];
        for (name, help, value) in maintenance {
            out.single(name, Counter, help, value);
        }
        out.single("cffs_gc_tombstones_pending", Gauge, "Marked blocks not yet deleted.", gc.tombstones_pending);
    }

    /// Whether this replica can serve: its storage works and it knows a leader. Read from
    /// Raft's metrics alone (not `status_response`, which reads the collector's tombstones
    /// from storage): the gRPC health task asks every second, container healthchecks as often.
    pub fn health(&self) -> crate::metrics::Health {
        let (state, term, leader_id, applied) = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            let applied = metrics.last_applied.map_or(0, |l| l.index);
            (format!("{:?}", metrics.state), metrics.current_term, metrics.current_leader.unwrap_or(0), applied)
        };
        let storage = self.state.health.failure();
        let healthy = storage.is_none() && leader_id != 0;
        let detail = match (&storage, leader_id) {
            (Some(error), _) => format!("storage failed: {error}"),
            (None, 0) => "no leader known".to_string(),
            (None, leader) => format!("leader {leader}"),
        };
        let body = serde_json::json!({
            "status": if healthy { "ok" } else { "unavailable" },
            "role": "meta",
            "node_id": self.node_id,
            "state": state,
            "term": term,
            "leader_id": leader_id,
            "applied": applied,
            "detail": detail,
        });
        crate::metrics::Health { healthy, body: body.to_string() }
    }
}

/// On the leader, the highest log index a majority of voters hold (the committed index as
/// the leader knows it); 0 elsewhere, where the replication progress is unknown.
fn quorum_matched(
    metrics: &openraft::RaftMetrics<NodeId, BasicNode>,
    voters: &std::collections::BTreeSet<NodeId>,
) -> u64 {
    let Some(replication) = metrics.replication.as_ref() else {
        return 0;
    };
    let mut matched: Vec<u64> = voters
        .iter()
        .map(|id| match *id == metrics.id {
            true => metrics.last_log_index.unwrap_or(0),
            false => replication.get(id).and_then(|m| m.as_ref()).map_or(0, |l| l.index),
        })
        .collect();
    matched.sort_unstable_by(|a, b| b.cmp(a));
    matched.get(voters.len() / 2).copied().unwrap_or(0)
}

impl MetadataService {
    /// The gRPC commit: `handle_commit`, or (in simulation) its drop when the caller goes.
    async fn answer_commit(&self, request: Request<CommitRequest>) -> Result<Response<CommitResponse>, Status> {
        #[cfg(madsim)]
        let caller = request.remote_addr().map(|addr| addr.ip());
        let handled = self.handle_commit(request.into_inner());
        // What real tonic does and madsim's does not: the handler's future is dropped where it
        // stands when its caller is killed, or (buggify) when it goes away otherwise.
        #[cfg(madsim)]
        {
            let gone = async move {
                match caller {
                    Some(ip) => crate::sim_stats::caller_killed(ip).await,
                    None => std::future::pending().await,
                }
            };
            let cut_short = crate::buggify::fire(crate::buggify::Site::CallerGone, 0.05);
            let deadline = async move {
                match cut_short {
                    // Within a commit's usual span, so the drop lands in its wait or proposal.
                    true => crate::buggify::delay_up_to(10).await,
                    false => std::future::pending().await,
                }
            };
            tokio::select! {
                biased; // deterministic under madsim: no random branch order
                result = handled => result,
                _ = gone => {
                    tracing::info!("commit handler dropped: its caller was killed");
                    crate::sim_stats::commit_handler_dropped();
                    Err(status(ErrorCode::Timeout, "the caller was killed mid-commit"))
                }
                _ = deadline => Err(status(ErrorCode::Timeout, "buggify: the caller went away mid-commit")),
            }
        }
        #[cfg(not(madsim))]
        handled.await
    }

    /// A commit, checked, validated (read-only) or proposed (with writes).
    async fn handle_commit(&self, mut request: CommitRequest) -> Result<Response<CommitResponse>, Status> {
        // Only the leader says when blocks were checked (below).
        request.blocks_checked_at = 0;
        if let Err(error) = txn::check_commit_request(&request) {
            let code = if error.is_too_large() { ErrorCode::TooLarge } else { ErrorCode::InvalidArgument };
            return Err(status(code, error.to_string()));
        }
        if request.writes.is_empty() {
            // A read-only transaction: validated by a linearizable read, no log entry. It
            // serializes at the moment of this read.
            self.linearizable().await?;
            // All reads are checked against one state: an absent key created and deleted
            // between two checks would otherwise pass without ever holding with the others.
            let conflict = {
                let _guard = self.state.apply_lock.read().expect("apply lock");
                txn::validate_reads(self.state.engine.as_ref(), &request).map_err(|e| self.storage_failed(e))?
            };
            let response = conflict.unwrap_or(CommitResponse {
                outcome: Some(cffs_proto::commit_response::Outcome::CommittedVersion(0)),
                lease: None,
            });
            return Ok(Response::new(response));
        }
        // A retry of a commit already decided is answered as then, before anything else: its
        // blocks' servers may be down now, and a refusal would hide that the first attempt
        // applied; and its lease step would drop the writer's leases on its keys without
        // invalidating them, leases the client may hold again since it learned the outcome
        // (a delayed duplicate of an answered attempt; found in review). Deduplication at
        // apply stays what makes a commit apply once; this only answers early.
        // So is a late copy of a transaction its client has settled: its record is gone, and
        // it would drop the same leases (apply refuses it too).
        if let Some(decided) = self.decided(&request)? {
            return Ok(Response::new(decided));
        }
        if references_blocks(&request) {
            request.blocks_checked_at = self.check_new_blocks(&request).await?;
            #[cfg(madsim)]
            if crate::buggify::forced(crate::buggify::Site::SlowBlockCommit) {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            } else if crate::buggify::fire(crate::buggify::Site::SlowBlockCommit, 0.2) {
                crate::buggify::delay_up_to(2_500).await;
            }
        }
        // In its own task: tonic drops a handler's future when its caller goes away (the
        // client dies, or its deadline passes), and that must not cut the write short between
        // its invalidations and the end of its pending marks.
        let this = self.clone();
        let write = async move { this.write(request).await };
        let outcome = if write_in_handler() {
            write.await?
        } else {
            tokio::spawn(write).await.map_err(|e| status(ErrorCode::Internal, format!("commit task: {e}")))??
        };
        match outcome {
            CommandOutcome::Commit(response) => {
                #[cfg(madsim)]
                if crate::buggify::fire(crate::buggify::Site::DropCommitReply, 0.05) {
                    return Err(status(ErrorCode::Timeout, "buggify: reply dropped after the commit"));
                }
                Ok(Response::new(response))
            }
            CommandOutcome::Rejected(why) => Err(invalid(why)),
            _ => Err(status(ErrorCode::Internal, "commit answered as another command")),
        }
    }

    /// The recorded outcome of a commit whose transaction id was decided before (its entry
    /// is applied here, so its outcome is final).
    /// A late copy of a transaction its client has settled is refused. Both are read under
    /// one apply-lock guard: the entry that settles a transaction drops its record in the
    /// same batch, so one of the two is always seen.
    fn decided(&self, request: &CommitRequest) -> Result<Option<CommitResponse>, Status> {
        let _guard = self.state.apply_lock.read().expect("apply lock");
        let engine = self.state.engine.as_ref();
        if let Some(decided) = txn::decided(engine, &request.txn_id).map_err(|e| self.storage_failed(e))? {
            return Ok(Some(decided));
        }
        if txn::settled_by_client(engine, &request.txn_id).map_err(|e| self.storage_failed(e))? {
            return Err(invalid("this transaction was settled by its client before this copy of it came: not applied"));
        }
        Ok(None)
    }

    /// Refuses a commit that references a block not stored on a majority of its group
    /// (`block/check.rs`); blocks the committed inodes reference already are not checked.
    /// Returns the applied index the check started at (the commit carries it: a commit
    /// checked before the collector's fence aborts at apply).
    async fn check_new_blocks(&self, request: &CommitRequest) -> Result<u64, Status> {
        // Only the leader checks, on a state that holds every committed change of the map
        // (a follower, or a leader still applying, could miss a group just added).
        self.linearizable().await?;
        let checked_at = self.raft.metrics().borrow().last_applied.map_or(0, |l| l.index);
        let (fresh, map) = {
            let _guard = self.state.apply_lock.read().expect("apply lock");
            let engine = self.state.engine.as_ref();
            let fresh = crate::block::check::new_blocks(engine, request).map_err(|e| self.storage_failed(e))?;
            (fresh, state::read_cluster_map(engine).map_err(|e| self.storage_failed(e))?)
        };
        if fresh.is_empty() {
            return Ok(checked_at);
        }
        self.blocks.check(&map, &fresh).await?;
        Ok(checked_at)
    }

    /// A read met a storage error: this replica stops serving (its Raft core stops too), and
    /// the client tries another replica.
    fn storage_failed(&self, error: StorageError) -> Status {
        let error = self.state.health.fail(error);
        status(ErrorCode::Storage, format!("storage: {error}"))
    }
}

/// A write leased on commit: its wire key, its storage key, and the payload its stored record
/// holds (the record is `versioned_encode(commit index, payload)`).
fn leased_record(write: &cffs_proto::LeasedWrite<'_>) -> Option<(Key, Vec<u8>, Vec<u8>)> {
    let key = write.key();
    let storage_key = state::storage_key(&key)?;
    let payload = match write {
        cffs_proto::LeasedWrite::Inode(inode) => inode.encode_to_vec(),
        cffs_proto::LeasedWrite::Dentry(_, dentry) => dentry.encode_to_vec(),
    };
    Some((key, storage_key, payload))
}

/// How a commit request's answer is counted (`/metrics`).
fn commit_outcome(result: &Result<Response<CommitResponse>, Status>) -> crate::metrics::CommitOutcome {
    use crate::metrics::CommitOutcome;
    use cffs_proto::commit_response::Outcome;
    match result {
        Ok(response) => match response.get_ref().outcome {
            Some(Outcome::CommittedVersion(0)) => CommitOutcome::ReadOnly,
            Some(Outcome::CommittedVersion(_)) => CommitOutcome::Committed,
            Some(Outcome::Conflict(_)) => CommitOutcome::Conflict,
            None => CommitOutcome::Failed(ErrorCode::Internal),
        },
        Err(status) => {
            CommitOutcome::Failed(cffs_proto::error_code::detail_code(&cffs_proto::error_code::detail(status)))
        }
    }
}

/// True when a commit writes an inode with a block map.
fn references_blocks(request: &CommitRequest) -> bool {
    request
        .writes
        .iter()
        .any(|w| matches!(&w.op, Some(cffs_proto::write_op::Op::PutInode(inode)) if !inode.blocks.is_empty()))
}

/// Whether a commit's write runs in the handler's own future (the planted bug
/// `WriteInHandler`) instead of a task of its own.
fn write_in_handler() -> bool {
    #[cfg(madsim)]
    return crate::planted::armed(crate::planted::Bug::WriteInHandler);
    #[cfg(not(madsim))]
    false
}

fn invalid(message: impl Into<String>) -> Status {
    status(ErrorCode::InvalidArgument, message)
}

#[tonic::async_trait]
impl cffs_proto::metadata_server::Metadata for MetadataService {
    type SessionStream = EventStream;

    async fn session(
        &self,
        request: Request<tonic::Streaming<SessionRequest>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let raft = self.raft.clone();
        let events = self.sessions.serve(move || leader_term(&raft), self.read_index.clone(), request.into_inner());
        Ok(Response::new(events))
    }

    async fn get_inode(&self, request: Request<GetInodeRequest>) -> Result<Response<GetInodeResponse>, Status> {
        let GetInodeRequest { ino, session_id } = request.into_inner();
        if ino == 0 {
            return Err(invalid("inode number 0"));
        }
        let round = self.linearizable().await?;
        // The lease is recorded before the state is read (docs/design/leases.md).
        let lease = self.sessions.grant(self.term(), session_id, &[Key::inode(ino)], round);
        let (version, inode) =
            state::read_inode(self.state.engine.as_ref(), ino).map_err(|e| self.storage_failed(e))?;
        Ok(Response::new(GetInodeResponse { version, inode, lease }))
    }

    async fn lookup(&self, request: Request<LookupRequest>) -> Result<Response<LookupResponse>, Status> {
        let LookupRequest { key, session_id } = request.into_inner();
        let key = key.ok_or_else(|| invalid("key missing"))?;
        check_name(&key.name).map_err(|e| invalid(e.to_string()))?;
        let round = self.linearizable().await?;
        let lease = self.sessions.grant(self.term(), session_id, &[Key::dentry(key.parent, &key.name)], round);
        let (version, dentry) = state::read_dentry(self.state.engine.as_ref(), key.parent, &key.name)
            .map_err(|e| self.storage_failed(e))?;
        Ok(Response::new(LookupResponse { version, dentry, lease }))
    }

    async fn lookup_path(&self, request: Request<LookupPathRequest>) -> Result<Response<LookupPathResponse>, Status> {
        let request = request.into_inner();
        if request.parent == 0 {
            return Err(invalid("inode number 0"));
        }
        if request.names.is_empty() || request.names.len() > LOOKUP_PATH_COMPONENTS_MAX {
            return Err(invalid(format!("a path lookup names 1..={LOOKUP_PATH_COMPONENTS_MAX} components")));
        }
        for name in &request.names {
            check_name(name).map_err(|e| invalid(e.to_string()))?;
        }
        let round = self.linearizable().await?;
        // One state for the whole walk: apply is held off.
        let _guard = self.state.apply_lock.read().expect("apply lock");
        let mut steps = Vec::with_capacity(request.names.len());
        let mut parent = request.parent;
        for name in request.names {
            let (version, dentry) =
                state::read_dentry(self.state.engine.as_ref(), parent, &name).map_err(|e| self.storage_failed(e))?;
            let next = dentry.as_ref().filter(|d| d.kind == FileKind::Directory as i32).map(|d| d.ino);
            steps.push(LookupStep { parent, name, version, dentry });
            match next {
                Some(ino) => parent = ino,
                None => break,
            }
        }
        // Which keys the walk reads is known only after it; the lease is still recorded
        // before the state could change under it: apply is held off by the guard above.
        let keys: Vec<Key> = steps.iter().map(|step| Key::dentry(step.parent, &step.name)).collect();
        let lease = self.sessions.grant(self.term(), request.session_id, &keys, round);
        Ok(Response::new(LookupPathResponse { steps, lease }))
    }

    async fn read_dir(&self, request: Request<ReadDirRequest>) -> Result<Response<ReadDirResponse>, Status> {
        let request = request.into_inner();
        if request.ino == 0 {
            return Err(invalid("inode number 0"));
        }
        let limit = match request.limit as usize {
            0 => READDIR_PAGE_MAX,
            n => n.min(READDIR_PAGE_MAX),
        };
        let round = self.linearizable().await?;
        let lease = self.sessions.grant(self.term(), request.session_id, &[Key::listing(request.ino)], round);
        let start = if request.start_after.is_empty() {
            keys::dentry_prefix(request.ino)
        } else {
            let mut key = keys::dentry_key(request.ino, &request.start_after);
            key.push(0); // the smallest key after `start_after`
            key
        };
        let end = keys::dentry_prefix_end(request.ino);
        // The listing version and the entries come from one state: apply is held off.
        let _guard = self.state.apply_lock.read().expect("apply lock");
        let engine = self.state.engine.as_ref();
        let listing_version = state::read_listing_version(engine, request.ino).map_err(|e| self.storage_failed(e))?;
        let pairs = engine.scan(Cf::State, &start, Some(&end), limit + 1).map_err(|e| self.storage_failed(e))?;
        let more = pairs.len() > limit;
        let mut entries = Vec::with_capacity(pairs.len().min(limit));
        for (key, value) in pairs.into_iter().take(limit) {
            let (_, name) = keys::dentry_key_decode(&key).map_err(|e| self.storage_failed(e))?;
            let (_, dentry) = state::decode_dentry(&value).map_err(|e| self.storage_failed(e))?;
            entries.push(DirEntry { name: name.to_vec(), dentry: Some(dentry) });
        }
        Ok(Response::new(ReadDirResponse { listing_version, entries, more, lease }))
    }

    async fn commit(&self, request: Request<CommitRequest>) -> Result<Response<CommitResponse>, Status> {
        let started = tokio::time::Instant::now();
        let result = self.answer_commit(request).await;
        self.commit_metrics.record(commit_outcome(&result), started.elapsed());
        result
    }

    async fn allocate_inodes(
        &self,
        request: Request<AllocateInodesRequest>,
    ) -> Result<Response<AllocateInodesResponse>, Status> {
        let request = request.into_inner();
        if request.count == 0 || request.count > INODE_ALLOCATE_MAX {
            return Err(invalid(format!("count must be 1..={INODE_ALLOCATE_MAX}")));
        }
        match self.propose(Command { kind: Some(command::Kind::AllocateInodes(request)) }).await? {
            CommandOutcome::AllocateInodes(response) => Ok(Response::new(response)),
            CommandOutcome::Rejected(why) => Err(invalid(why)),
            _ => Err(status(ErrorCode::Internal, "allocation answered as another command")),
        }
    }

    async fn cluster_status(
        &self,
        _request: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        Ok(Response::new(self.status_response()))
    }

    async fn add_learner(&self, request: Request<AddLearnerRequest>) -> Result<Response<MembershipResponse>, Status> {
        let member = request.into_inner().member.ok_or_else(|| invalid("member missing"))?;
        if member.id == 0 || member.addr.is_empty() {
            return Err(invalid("member needs an id above 0 and an address"));
        }
        let result = self.raft.add_learner(member.id, BasicNode { addr: member.addr }, true).await;
        self.membership_result(result)
    }

    async fn get_cluster_map(
        &self,
        _request: Request<cffs_proto::GetClusterMapRequest>,
    ) -> Result<Response<cffs_proto::ClusterMap>, Status> {
        self.linearizable().await?;
        let _guard = self.state.apply_lock.read().expect("apply lock");
        let map = state::read_cluster_map(self.state.engine.as_ref()).map_err(|e| self.storage_failed(e))?;
        Ok(Response::new(map))
    }

    async fn add_block_group(
        &self,
        request: Request<cffs_proto::AddBlockGroupRequest>,
    ) -> Result<Response<cffs_proto::AddBlockGroupResponse>, Status> {
        let request = request.into_inner();
        {
            let _guard = self.state.apply_lock.read().expect("apply lock");
            let map = state::read_cluster_map(self.state.engine.as_ref()).map_err(|e| self.storage_failed(e))?;
            txn::check_add_block_group(&map, &request).map_err(invalid)?;
        }
        match self.propose(Command { kind: Some(command::Kind::AddBlockGroup(request)) }).await? {
            CommandOutcome::ClusterMap(map) => Ok(Response::new(cffs_proto::AddBlockGroupResponse { map: Some(map) })),
            CommandOutcome::Rejected(why) => Err(invalid(why)),
            _ => Err(status(ErrorCode::Internal, "a block group answered as another command")),
        }
    }

    async fn replace_block_server(
        &self,
        request: Request<cffs_proto::ReplaceBlockServerRequest>,
    ) -> Result<Response<cffs_proto::ReplaceBlockServerResponse>, Status> {
        let request = request.into_inner();
        self.linearizable().await?;
        let map = {
            let _guard = self.state.apply_lock.read().expect("apply lock");
            state::read_cluster_map(self.state.engine.as_ref()).map_err(|e| self.storage_failed(e))?
        };
        txn::check_replace_block_server(&map, &request).map_err(invalid)?;
        self.blocks.check_replacement_quorum(&map, &request).await.map_err(invalid)?;
        match self.propose(Command { kind: Some(command::Kind::ReplaceBlockServer(request)) }).await? {
            CommandOutcome::ClusterMap(map) => {
                Ok(Response::new(cffs_proto::ReplaceBlockServerResponse { map: Some(map) }))
            }
            CommandOutcome::Rejected(why) => Err(invalid(why)),
            _ => Err(status(ErrorCode::Internal, "a block server replacement answered as another command")),
        }
    }

    async fn change_membership(
        &self,
        request: Request<ChangeMembershipRequest>,
    ) -> Result<Response<MembershipResponse>, Status> {
        let voters: std::collections::BTreeSet<NodeId> = request.into_inner().voters.into_iter().collect();
        if voters.is_empty() {
            return Err(invalid("a cluster needs at least one voter"));
        }
        let result = self.raft.change_membership(voters, false).await;
        self.membership_result(result)
    }
}

impl MetadataService {
    /// Proposes a commit that writes, once the holders of leases on its keys have let go
    /// (docs/design/leases.md). The keys stay pending (no new grants) until the entry is
    /// decided: when its outcome is unknown, until everything logged by then is applied.
    async fn write(&self, request: CommitRequest) -> Result<CommandOutcome, Status> {
        let raft = self.raft.clone();
        let pending = self
            .sessions
            .before_write(move || leader_term(&raft), request.session_id, sessions::written_keys(&request))
            .await?;
        // Leases on commit (docs/design/leases.md): what the writer wrote whole, with the
        // stored record each must still be once the commit is applied.
        let writer = request.session_id;
        let leased: Vec<(Key, Vec<u8>, Vec<u8>)> = match writer != 0 && request.lease_writes {
            false => Vec::new(),
            true => request.leased_writes().iter().filter_map(|write| leased_record(write)).collect(),
        };
        let proposed_at = self.sessions.now();
        let outcome = self.batcher.commit(request, pending.term()).await.map_err(|error| self.propose_status(error));
        let version = match &outcome {
            Err(_) => {
                pending.release_when_applied(self.raft.clone());
                return outcome;
            }
            Ok(CommandOutcome::Commit(CommitResponse {
                outcome: Some(cffs_proto::commit_response::Outcome::CommittedVersion(version)),
                ..
            })) if *version > 0 && !leased.is_empty() => *version,
            Ok(_) => return outcome,
        };
        #[cfg(madsim)]
        if crate::buggify::forced(crate::buggify::Site::CommitEndDelay) {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        } else if crate::buggify::fire(crate::buggify::Site::CommitEndDelay, 0.05) {
            crate::buggify::delay().await;
        }
        let keys: Vec<Key> = leased.iter().map(|(key, _, _)| key.clone()).collect();
        let still_stored = || {
            let _guard = self.state.apply_lock.read().expect("apply lock");
            leased.iter().all(|(_, storage_key, payload)| {
                let stored = self.state.engine.get(Cf::State, storage_key);
                // Decoded as every read is (its crc checked), not re-encoded to compare.
                let same = |value: &[u8]| {
                    keys::versioned_decode(value).is_ok_and(|(v, p)| v == version && p == payload.as_slice())
                };
                matches!(stored, Ok(Some(value)) if same(&value))
            })
        };
        let grant = pending.end_granting(leader_term(&self.raft), writer, &keys, proposed_at, still_stored);
        outcome.map(|outcome| match outcome {
            CommandOutcome::Commit(mut response) => {
                response.lease = grant;
                CommandOutcome::Commit(response)
            }
            other => other,
        })
    }

    fn membership_result<T>(
        &self,
        result: Result<T, RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>>,
    ) -> Result<Response<MembershipResponse>, Status> {
        match result {
            Ok(_) => Ok(Response::new(MembershipResponse { status: Some(self.status_response()) })),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                Err(self.not_leader(forward.leader_id, forward.leader_node.as_ref()))
            }
            // Another change is still being committed: the same request succeeds shortly.
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(ChangeMembershipError::InProgress(
                busy,
            )))) => Err(status(ErrorCode::Unavailable, busy.to_string())),
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(error))) => Err(invalid(error.to_string())),
            Err(error) => Err(status(ErrorCode::Unavailable, format!("membership change: {error}"))),
        }
    }
}
