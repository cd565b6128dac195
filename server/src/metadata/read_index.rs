//! Read-index rounds shared by concurrent reads. A linearizable read needs a read-index round
//! (openraft's `ensure_linearizable`: leadership confirmed by a quorum, state applied up to the
//! commit index) that *starts after the read arrived*. One round costs a heartbeat to every
//! follower, so rather than one round per read, reads queue here and a single task runs one
//! round for every read queued before the round began. A read arriving during a round waits
//! for the next one: that is what keeps each read linearizable.

use openraft::BasicNode;
use tokio::sync::{mpsc, oneshot};

use crate::raft::MetaRaft;

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

type Waiter = oneshot::Sender<Result<(), ReadIndexError>>;

#[derive(Clone)]
pub struct ReadIndex {
    queue: mpsc::Sender<Waiter>,
}

impl ReadIndex {
    /// Starts the task that runs the rounds for `raft`.
    pub fn start(raft: MetaRaft) -> ReadIndex {
        let (queue, receiver) = mpsc::channel(READ_INDEX_QUEUE_MAX);
        tokio::spawn(run_rounds(raft, receiver));
        ReadIndex { queue }
    }

    /// Returns once a read of local state is linearizable. Cancellation-safe: a dropped
    /// caller only leaves an unanswered sender behind.
    pub async fn wait(&self) -> Result<(), ReadIndexError> {
        let (sender, receiver) = oneshot::channel();
        self.queue
            .try_send(sender)
            .map_err(|_| ReadIndexError::Unavailable("too many reads waiting for the read index".into()))?;
        receiver.await.map_err(|_| ReadIndexError::Unavailable("read index task stopped".into()))?
    }
}

async fn run_rounds(raft: MetaRaft, mut receiver: mpsc::Receiver<Waiter>) {
    while let Some(first) = receiver.recv().await {
        // Every read queued now arrived before this round starts.
        let mut waiters = vec![first];
        while let Ok(more) = receiver.try_recv() {
            waiters.push(more);
        }
        let result = match raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(error) => match error.forward_to_leader::<BasicNode>() {
                Some(forward) => Err(ReadIndexError::NotLeader {
                    leader_id: forward.leader_id,
                    leader_node: forward.leader_node.clone(),
                }),
                None => Err(ReadIndexError::Unavailable(format!("read index: {error}"))),
            },
        };
        for waiter in waiters {
            // A waiter that gave up (timed out) is gone; nothing to tell it.
            let _ = waiter.send(result.clone());
        }
    }
}
