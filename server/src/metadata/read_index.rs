//! Read-index rounds shared by concurrent reads. A linearizable read needs a read-index round
//! (openraft's `ensure_linearizable`: leadership confirmed by a quorum, state applied up to the
//! commit index) that *starts after the read arrived*. One round costs a heartbeat to every
//! follower, so rather than one round per read, reads queue here and a single task runs one
//! round for every read queued before the round began. A read arriving during a round waits
//! for the next one: that is what keeps each read linearizable.
//!
//! A leader that restarts keeps its leadership (openraft restores it from the stored vote),
//! and then openraft's read index is not enough. It is the larger of the commit index and the
//! first entry of the leader's term, and after a power loss the commit index is the one last
//! made durable, older than commits this leader acknowledged before it went down, later in the
//! same term. Those entries are in its log (the log is synced before an entry counts), so a
//! replica that starts as the leader of its stored term also waits, in that term, until it
//! has applied its whole log as found at startup: the [`RestartFloor`]. Found by chaos seed
//! 182: a read after an acknowledged commit missed it across such a restart.

use cffs_proto::error_code::{status, status_with_leader};
use cffs_proto::ErrorCode;
use openraft::{BasicNode, Vote};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::clock::Clock;
use crate::metadata::MetaRaft;

/// Most reads waiting for a round; beyond it a read fails at once as unavailable.
pub const READ_INDEX_QUEUE_MAX: usize = 16 * 1024;

#[derive(Debug, Clone)]
pub enum ReadIndexError {
    /// This replica is not the leader; openraft's hint at who is.
    NotLeader {
        leader_id: Option<u64>,
        leader_node: Option<BasicNode>,
    },
    Unavailable(String),
}

/// Answered with the instant its round started (a lease counts from there).
impl ReadIndexError {
    /// The error as a client sees it (a hint at the leader, when known).
    pub fn into_status(self) -> tonic::Status {
        match self {
            ReadIndexError::NotLeader { leader_id, leader_node } => status_with_leader(
                ErrorCode::NotLeader,
                "not the leader",
                leader_id.unwrap_or(0),
                leader_node.map(|node| node.addr).unwrap_or_default(),
            ),
            ReadIndexError::Unavailable(why) => status(ErrorCode::Unavailable, why),
        }
    }
}

type Waiter = oneshot::Sender<Result<Instant, ReadIndexError>>;

/// What a replica that may restart as leader must apply before it serves a read: its log's
/// last index at startup, while it still leads in the term of the vote it started with.
#[derive(Debug, Clone, Copy)]
pub struct RestartFloor {
    pub vote: Vote<u64>,
    pub last_log_index: u64,
}

impl RestartFloor {
    /// The floor for a replica that starts with `vote` and a log ending at `last_log_index`:
    /// none unless the vote is a committed vote for itself (openraft restores leadership only
    /// then; a later term's first entry follows, so covers, everything before it).
    pub fn at_startup(node_id: u64, vote: Option<Vote<u64>>, last_log_index: Option<u64>) -> Option<RestartFloor> {
        let vote = vote?;
        let leads = vote.is_committed() && vote.leader_id().voted_for() == Some(node_id);
        Some(RestartFloor { vote, last_log_index: last_log_index? }).filter(|_| leads)
    }
}

#[derive(Clone)]
pub struct ReadIndex {
    queue: mpsc::Sender<Waiter>,
}

impl ReadIndex {
    /// Starts the task that runs the rounds for `raft`, which started with `floor`.
    /// Round starts are readings of `clock` (the lease table's time line).
    pub fn start(raft: MetaRaft, floor: Option<RestartFloor>, clock: Clock) -> ReadIndex {
        let (queue, receiver) = mpsc::channel(READ_INDEX_QUEUE_MAX);
        tokio::spawn(run_rounds(raft, floor, clock, receiver));
        ReadIndex { queue }
    }

    /// Returns once a read of local state is linearizable, with the instant the read-index
    /// round that made it so started. Cancellation-safe: a dropped caller only leaves an
    /// unanswered sender behind.
    pub async fn wait(&self) -> Result<Instant, ReadIndexError> {
        let (sender, receiver) = oneshot::channel();
        self.queue
            .try_send(sender)
            .map_err(|_| ReadIndexError::Unavailable("too many reads waiting for the read index".into()))?;
        receiver.await.map_err(|_| ReadIndexError::Unavailable("read index task stopped".into()))?
    }
}

async fn run_rounds(
    raft: MetaRaft,
    mut floor: Option<RestartFloor>,
    clock: Clock,
    mut receiver: mpsc::Receiver<Waiter>,
) {
    while let Some(first) = receiver.recv().await {
        // Every read queued now arrived before this round starts.
        let mut waiters = vec![first];
        while let Ok(more) = receiver.try_recv() {
            waiters.push(more);
        }
        // The vote only grows, and metrics lag the core: a vote read here that differs from
        // the startup vote means the round below confirms a later term, whose first entry
        // covers the floor. If it still equals it, the floor holds for this round (at worst
        // one round waits for a floor it no longer needs).
        #[cfg(madsim)]
        if crate::planted::armed(crate::planted::Bug::NoRestartFloor) {
            floor = None;
        }
        if let Some(at_startup) = floor {
            if raft.metrics().borrow().vote != at_startup.vote {
                floor = None;
            }
        }
        let started = clock.now();
        let result = match raft.ensure_linearizable().await {
            Ok(_) => match floor {
                None => Ok(started),
                Some(floor) => wait_applied(&raft, floor.last_log_index).await.map(|()| started),
            },
            Err(error) => match error.forward_to_leader::<BasicNode>() {
                Some(forward) => Err(ReadIndexError::NotLeader {
                    leader_id: forward.leader_id,
                    leader_node: forward.leader_node.clone(),
                }),
                None => Err(ReadIndexError::Unavailable(format!("read index: {error}"))),
            },
        };
        if let (Ok(_), Some(at_startup)) = (&result, floor) {
            if raft.metrics().borrow().last_applied.map_or(0, |applied| applied.index) >= at_startup.last_log_index {
                floor = None;
            }
        }
        for waiter in waiters {
            // A waiter that gave up (timed out) is gone; nothing to tell it.
            let _ = waiter.send(result.clone());
        }
    }
}

async fn wait_applied(raft: &MetaRaft, index: u64) -> Result<(), ReadIndexError> {
    raft.wait(None)
        .applied_index_at_least(Some(index), "read index: restart floor")
        .await
        .map(|_| ())
        .map_err(|error| ReadIndexError::Unavailable(format!("read index: {error}")))
}
