//! Prompt elections after the leader goes silent.
//!
//! openraft 0.9 lets a follower campaign only after its leader lease (`election_timeout_max`
//! since it last heard from the leader) *plus* a random election timeout, checked on a tick
//! of 1.5 heartbeats: 0.8 to 1.35 s of silence with our timing, while the other voters refuse
//! votes only for the lease. So the cluster sat leaderless for a whole election timeout after
//! the lease had expired. This watcher asks openraft to elect (`trigger().elect()`) as soon
//! as the others can grant the vote: after the lease plus a short random stagger, so that the
//! two followers of a three-replica group rarely campaign at once.
//!
//! Only a follower is pushed. A candidate whose round failed (a split vote, a peer still in
//! its lease, or a peer with a longer log) is left to openraft's timer, which waits longer
//! after seeing a longer log: pushing such a candidate again only raises terms, and each
//! higher term it sends deposes whoever did win (seen in simulation). Granting a vote counts
//! as contact, as in Raft, so a follower that just elected a leader does not campaign before
//! that leader's first append arrives. Elections stay as safe as ever (votes, terms and log
//! checks are openraft's); only their timing changes.
//!
//! A follower whose log is behind cannot win, and openraft's voters do not take the term of a
//! vote request they refuse for its log: its failed round only makes the voter with the
//! longer log split the vote in that term when it campaigns in turn (seen in simulation: a
//! whole election timeout lost). So before campaigning, a follower asks the other voters for
//! their status and stands aside when one of them has a longer log; that one campaigns on its
//! own watch. The probe is the Raft service's own (`Probe`, on the shared channels), so a
//! group of any kind is watched the same way.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::{Raft, ServerState};
use tokio::time::Instant;

use super::network::Channels;
use super::{GroupId, GroupTypes};
use crate::clock::Clock;
use crate::constants::{
    PROMPT_ELECTION_CHECK, PROMPT_ELECTION_PROBE_TIMEOUT, PROMPT_ELECTION_STAGGER, RAFT_ELECTION_TIMEOUT_MAX,
};

/// When this replica last heard from a leader (an append or snapshot it accepted) or granted
/// a vote.
#[derive(Clone)]
pub struct LeaderContact {
    last: Arc<Mutex<Instant>>,
    /// The replica's clock (`last` is one of its readings).
    clock: Clock,
}

impl LeaderContact {
    pub fn new(clock: Clock) -> Self {
        LeaderContact { last: Arc::new(Mutex::new(clock.now())), clock }
    }

    pub fn touch(&self) {
        *self.last.lock().expect("leader contact lock") = self.clock.now();
    }

    fn silence(&self) -> Duration {
        self.clock.since(*self.last.lock().expect("leader contact lock"))
    }
}

// madsim's generator: deterministic in simulation (rand's outside, which is what the
// disallowed-method rule cannot tell apart).
#[allow(clippy::disallowed_methods)]
fn stagger() -> Duration {
    use rand::Rng;
    let (min, max) = (PROMPT_ELECTION_STAGGER.start.as_millis() as u64, PROMPT_ELECTION_STAGGER.end.as_millis() as u64);
    Duration::from_millis(madsim::rand::thread_rng().gen_range(min..max))
}

/// Watches the silence in `group` and starts elections; runs for the life of the replica.
pub async fn watch<C: GroupTypes>(raft: Raft<C>, group: GroupId, contact: LeaderContact, channels: Channels) {
    let mut stagger = stagger();
    loop {
        contact.clock.sleep(PROMPT_ELECTION_CHECK).await;
        let state = raft.metrics().borrow().state;
        let wait = match state {
            // openraft's leader lease is `election_timeout_max` (its EngineConfig).
            ServerState::Follower => RAFT_ELECTION_TIMEOUT_MAX + stagger,
            ServerState::Candidate | ServerState::Leader | ServerState::Learner | ServerState::Shutdown => {
                contact.touch();
                continue;
            }
        };
        if contact.silence() < wait {
            continue;
        }
        if a_peer_has_a_longer_log(&raft, group, &channels).await {
            contact.touch();
            stagger = self::stagger();
            continue;
        }
        // The probe took a round trip: a leader may have been elected meanwhile (this replica
        // granting it a vote, or hearing its first append); campaigning now would depose it.
        if contact.silence() < wait || raft.metrics().borrow().state != ServerState::Follower {
            continue;
        }
        tracing::info!(
            group,
            silence_ms = contact.silence().as_millis() as u64,
            ?state,
            "no leader heard from; starting an election"
        );
        if raft.trigger().elect().await.is_err() {
            return; // the replica is shutting down
        }
        contact.touch();
        stagger = self::stagger();
    }
}

/// True when another voter reports a longer log than this replica's (so it, not this one, can
/// win the next election). Peers that do not answer within the probe timeout count as not.
async fn a_peer_has_a_longer_log<C: GroupTypes>(raft: &Raft<C>, group: GroupId, channels: &Channels) -> bool {
    let (me, mine, peers) = {
        let metrics = raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        let peers: Vec<String> = membership
            .voter_ids()
            .filter(|id| *id != metrics.id)
            .filter_map(|id| membership.get_node(&id).map(|node| node.addr.clone()))
            .collect();
        (metrics.id, metrics.last_log_index.unwrap_or(0), peers)
    };
    let probes = peers.iter().map(|addr| async move {
        channels.probe(addr, group, PROMPT_ELECTION_PROBE_TIMEOUT).await.map(|reply| reply.last_log_index)
    });
    let longest = futures::future::join_all(probes).await.into_iter().flatten().max().unwrap_or(0);
    if longest > mine {
        tracing::info!(node_id = me, group, mine, longest, "a peer has a longer log; leaving the election to it");
    }
    longest > mine
}
