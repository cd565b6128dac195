//! The leader's commit batcher: concurrent commits share one log entry, so one append, one
//! fsync on each replica and one replication round carry many transactions
//! (docs/design/transactions.md, "Batched commits").
//!
//! Group commit without a timer: a commit that arrives while fewer than
//! `BATCH_PROPOSALS_IN_FLIGHT` entries are in flight is proposed at once (alone, if nothing
//! else is queued: one client pays no added latency); commits that arrive while that many
//! are in flight queue, and the next entry takes all of them (up to `BATCH_COMMITS_MAX`
//! commits and `TXN_BYTES_MAX` bytes, the most one commit alone may carry, so a batch entry
//! is never larger than an entry could be before). Each commit keeps its own outcome and
//! dedup record (`txn::apply_commit_batch`); a failure of the proposal (a timeout, a lost
//! leadership) is every one of its commits' failure.

use std::sync::Arc;

use cffs_proto::{command, Command, CommitBatch, CommitRequest};
use openraft::error::{ClientWriteError, RaftError};
use openraft::BasicNode;
use prost::Message;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::txn::CommandOutcome;
use crate::constants::REQUEST_TIMEOUT;
use crate::metadata::raft_types::RaftCommand;
use crate::metadata::MetaRaft;
use crate::metrics::CommitMetrics;

type NodeId = u64;

/// Entries of batched commits proposed and not yet applied, at most.
pub const BATCH_PROPOSALS_IN_FLIGHT: usize = 2;
/// Commits in one entry, at most.
pub const BATCH_COMMITS_MAX: usize = 256;
/// Commits waiting for an entry, at most; more wait to be queued (back-pressure on callers).
const QUEUE_MAX: usize = 4096;

/// Why a proposal has no outcome; the caller turns it into its status.
#[derive(Debug, Clone)]
pub enum ProposeError {
    /// No answer within `REQUEST_TIMEOUT`: the outcome is unknown.
    Timeout,
    NotLeader {
        leader_id: Option<NodeId>,
        leader_node: Option<BasicNode>,
    },
    /// Leadership was lost or the core stopped: the outcome is unknown.
    Failed(String),
    /// The entry applied without an outcome, or with one that is not its commits'.
    Internal(String),
    /// This replica's term is no longer the one the commit's write began in: it was not
    /// proposed (its invalidations belong to the old term's lease table).
    TermChanged,
}

/// Proposes one command and waits for its outcome.
pub async fn propose(raft: &MetaRaft, command: Command) -> Result<CommandOutcome, ProposeError> {
    let write = raft.client_write(RaftCommand(command));
    match tokio::time::timeout(REQUEST_TIMEOUT, write).await {
        Err(_) => Err(ProposeError::Timeout),
        Ok(Ok(response)) => {
            response.data.0.ok_or_else(|| ProposeError::Internal("entry applied without an outcome".into()))
        }
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward)))) => {
            Err(ProposeError::NotLeader { leader_id: forward.leader_id, leader_node: forward.leader_node })
        }
        Ok(Err(error)) => Err(ProposeError::Failed(format!("commit: {error}"))),
    }
}

struct Queued {
    request: CommitRequest,
    /// The term the write began in (`WriteGuard::term`).
    term: Option<u64>,
    bytes: usize,
    reply: oneshot::Sender<Result<CommandOutcome, ProposeError>>,
}

#[derive(Clone)]
pub struct Batcher {
    queue: mpsc::Sender<Queued>,
}

impl Batcher {
    pub fn start(raft: MetaRaft, metrics: Arc<CommitMetrics>) -> Batcher {
        let (queue, receiver) = mpsc::channel(QUEUE_MAX);
        tokio::spawn(run(raft, receiver, metrics));
        Batcher { queue }
    }

    /// Commits `request`, whose write began in `term`, in the next entry with room; its
    /// own outcome.
    pub async fn commit(&self, request: CommitRequest, term: Option<u64>) -> Result<CommandOutcome, ProposeError> {
        let (reply, outcome) = oneshot::channel();
        let bytes = request.encoded_len();
        self.queue
            .send(Queued { request, term, bytes, reply })
            .await
            .map_err(|_| ProposeError::Failed("the commit batcher stopped".into()))?;
        outcome.await.map_err(|_| ProposeError::Failed("the commit batcher dropped a commit".into()))?
    }
}

async fn run(raft: MetaRaft, mut receiver: mpsc::Receiver<Queued>, metrics: Arc<CommitMetrics>) {
    let in_flight = Arc::new(Semaphore::new(BATCH_PROPOSALS_IN_FLIGHT));
    let mut carried: Option<Queued> = None;
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        let first = match carried.take() {
            Some(first) => first,
            None => match receiver.recv().await {
                Some(first) => first,
                None => return,
            },
        };
        let mut bytes = first.bytes;
        let mut batch = vec![first];
        while batch.len() < BATCH_COMMITS_MAX {
            let Ok(next) = receiver.try_recv() else { break };
            if bytes + next.bytes > cffs_proto::limits::TXN_BYTES_MAX {
                carried = Some(next);
                break;
            }
            bytes += next.bytes;
            batch.push(next);
        }
        let (raft, metrics) = (raft.clone(), metrics.clone());
        tokio::spawn(async move {
            let _permit = permit;
            propose_batch(&raft, batch, &metrics).await;
        });
    }
}

async fn propose_batch(raft: &MetaRaft, batch: Vec<Queued>, metrics: &CommitMetrics) {
    // A commit that waited in the queue across a change of term is not proposed: a new term
    // starts a new lease table, whose holders its invalidations never reached. (Without the
    // queue the same could happen only between the end of the write's wait and its
    // proposal, with no await between them.)
    let term = super::service::leader_term(raft);
    let (batch, stale): (Vec<Queued>, Vec<Queued>) =
        batch.into_iter().partition(|q| q.term.is_some() && q.term == term);
    for queued in stale {
        tracing::debug!(began = ?queued.term, now = ?term, "a queued commit's term changed; not proposed");
        let _ = queued.reply.send(Err(ProposeError::TermChanged));
    }
    if batch.is_empty() {
        return;
    }
    let (requests, replies): (Vec<CommitRequest>, Vec<_>) = batch.into_iter().map(|q| (q.request, q.reply)).unzip();
    let single = requests.len() == 1;
    metrics.record_batch(requests.len());
    let kind = match single {
        true => command::Kind::Commit(requests.into_iter().next().expect("one request")),
        false => command::Kind::CommitBatch(CommitBatch { commits: requests }),
    };
    let outcome = propose(raft, Command { kind: Some(kind) }).await;
    let outcomes: Vec<Result<CommandOutcome, ProposeError>> = match (outcome, single) {
        (Err(error), _) => replies.iter().map(|_| Err(error.clone())).collect(),
        (Ok(outcome), true) => vec![Ok(outcome)],
        (Ok(CommandOutcome::Commits(outcomes)), false) if outcomes.len() == replies.len() => {
            outcomes.into_iter().map(Ok).collect()
        }
        (Ok(other), false) => {
            let why = format!("a batch of {} commits answered {other:?}", replies.len());
            replies.iter().map(|_| Err(ProposeError::Internal(why.clone()))).collect()
        }
    };
    for (reply, outcome) in replies.into_iter().zip(outcomes) {
        // A caller that went away has nothing to be told.
        let _ = reply.send(outcome);
    }
}
