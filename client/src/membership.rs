//! Membership changes as `cffs cluster add-node`, `remove-node` and `replace-node` make them
//! (and the simulation, `sim-tests/tests/membership.rs`): changes of the metadata group's
//! voters, each as openraft makes them safe (a new replica joins as a learner, catches up
//! with the log, and only then becomes a voter, in one joint-consensus change), refused
//! before anything changes when the new voters could not form a quorum: a majority of them
//! must answer now and hold the log up to the leader's applied index (less `CATCH_UP_SLACK`).

use std::collections::{BTreeMap, BTreeSet};

use cffs_proto::ClusterStatusResponse;

use crate::Client;

/// Entries a voter may trail the leader's applied index by and still count as caught up.
pub const CATCH_UP_SLACK: u64 = 1_000;

/// What each prospective voter said (`None`: did not answer).
pub type Answers = BTreeMap<u64, Option<ClusterStatusResponse>>;

/// Refuses a set of voters that would not hold a quorum of caught-up, answering replicas.
pub fn check_quorum(voters: &BTreeSet<u64>, answers: &Answers, leader_applied: u64) -> Result<(), String> {
    if voters.is_empty() {
        return Err("a metadata group needs at least one voter".into());
    }
    let floor = leader_applied.saturating_sub(CATCH_UP_SLACK);
    let mut down = Vec::new();
    let mut behind = Vec::new();
    for id in voters {
        match answers.get(id).and_then(Option::as_ref) {
            None => down.push(*id),
            Some(status) if status.last_applied < floor => {
                behind.push(format!("{id} (applied {})", status.last_applied))
            }
            Some(_) => {}
        }
    }
    let good = voters.len() - down.len() - behind.len();
    let quorum = voters.len() / 2 + 1;
    if good >= quorum {
        return Ok(());
    }
    let mut why =
        format!("refused: the new voters {voters:?} need {quorum} replicas up and caught up, and only {good} are");
    if !down.is_empty() {
        why.push_str(&format!("; not answering: {down:?}"));
    }
    if !behind.is_empty() {
        why.push_str(&format!("; behind the leader's applied index {leader_applied}: {}", behind.join(", ")));
    }
    Err(why + ". Nothing was changed.")
}

/// How long to look for a leader (an election after a replica was lost may be under way).
const LEADER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The leader's view: its status, and each member's address. Waits out an election.
async fn leader_view(client: &Client) -> Result<(ClusterStatusResponse, BTreeMap<u64, String>), String> {
    let deadline = tokio::time::Instant::now() + LEADER_WAIT;
    loop {
        let why = match find_leader(client).await {
            Ok(leader) => {
                let addrs = leader.members.iter().map(|m| (m.id, m.addr.clone())).collect();
                return Ok((leader, addrs));
            }
            Err(why) => why,
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("no leader found within {LEADER_WAIT:?} ({why}); nothing was changed"));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The leader's own status. Any replica answers a status request: the one that answers may
/// be a follower, whose status names the leader to ask, or a replica outside the group (a
/// new one not yet added) that knows none, and then every endpoint is asked.
async fn find_leader(client: &Client) -> Result<ClusterStatusResponse, String> {
    let status = client.cluster_status().await.map_err(|e| format!("cluster status: {e}"))?;
    if status.state == "Leader" {
        return Ok(status);
    }
    let named = status.members.iter().find(|m| m.id == status.leader_id && status.leader_id != 0);
    if let Some(member) = named {
        if let Ok(leader) = client.replica_status(&member.addr).await {
            if leader.state == "Leader" {
                return Ok(leader);
            }
        }
    }
    let all = client.cluster_status_all().await;
    all.into_iter()
        .filter_map(|(_, status)| status.ok())
        .find(|status| status.state == "Leader")
        .ok_or_else(|| format!("replica {} is {} and no endpoint leads", status.node_id, status.state))
}

async fn answers(client: &Client, voters: &BTreeSet<u64>, addrs: &BTreeMap<u64, String>) -> Answers {
    let mut all = Answers::new();
    for id in voters {
        let answer = match addrs.get(id) {
            Some(addr) => client.replica_status(addr).await.ok(),
            None => None,
        };
        all.insert(*id, answer);
    }
    all
}

fn voters_of(status: &ClusterStatusResponse) -> BTreeSet<u64> {
    status.members.iter().filter(|m| m.voter).map(|m| m.id).collect()
}

/// Checks that `id` and `addr` are new to the group and that the server at `addr` runs as
/// replica `id`, then adds it as a learner (returns once it has caught up).
async fn add_learner(client: &Client, id: u64, addr: &str, members: &BTreeMap<u64, String>) -> Result<(), String> {
    if members.contains_key(&id) {
        return Err(format!("replica {id} is a member already (at {})", members[&id]));
    }
    if let Some((other, _)) = members.iter().find(|(_, a)| a.as_str() == addr) {
        return Err(format!("{addr} is replica {other}'s address"));
    }
    let status = client.replica_status(addr).await.map_err(|e| {
        format!("replica {id} at {addr} does not answer ({e}); start it first with `cffs-server meta --id {id}` and the current members as --peers")
    })?;
    if status.node_id != id {
        return Err(format!("the server at {addr} is replica {}, not {id}", status.node_id));
    }
    eprintln!("adding replica {id} at {addr} as a learner; waiting for it to catch up with the log ...");
    client.add_learner(id, addr).await.map_err(|e| format!("cannot add replica {id} as a learner: {e}"))
}

async fn change(
    client: &Client,
    voters: &BTreeSet<u64>,
    addrs: &BTreeMap<u64, String>,
    leader_applied: u64,
) -> Result<(), String> {
    check_quorum(voters, &answers(client, voters, addrs).await, leader_applied)?;
    let list: Vec<u64> = voters.iter().copied().collect();
    eprintln!("changing the voters to {list:?} ...");
    client.change_membership(&list).await.map_err(|e| format!("cannot change the voters to {list:?}: {e}"))
}

/// A new voter: learner, catch-up, then promotion.
pub async fn add_node(client: &Client, id: u64, addr: &str) -> Result<(), String> {
    let (status, mut addrs) = leader_view(client).await?;
    add_learner(client, id, addr, &addrs).await?;
    addrs.insert(id, addr.to_string());
    let mut voters = voters_of(&status);
    voters.insert(id);
    change(client, &voters, &addrs, status.last_applied).await
}

/// A voter (or learner) leaves the group.
pub async fn remove_node(client: &Client, id: u64) -> Result<(), String> {
    let (status, addrs) = leader_view(client).await?;
    if !addrs.contains_key(&id) {
        return Err(format!("replica {id} is not a member"));
    }
    let mut voters = voters_of(&status);
    voters.remove(&id);
    change(client, &voters, &addrs, status.last_applied).await
}

/// `new_id` at `new_addr` takes `old`'s place: learner, catch-up, then one change of voters.
pub async fn replace_node(client: &Client, old: u64, new_id: u64, new_addr: &str) -> Result<(), String> {
    let (status, mut addrs) = leader_view(client).await?;
    let mut voters = voters_of(&status);
    if !voters.remove(&old) {
        return Err(format!("replica {old} is not a voter"));
    }
    add_learner(client, new_id, new_addr, &addrs).await?;
    addrs.insert(new_id, new_addr.to_string());
    voters.insert(new_id);
    change(client, &voters, &addrs, status.last_applied).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(applied: u64) -> Option<ClusterStatusResponse> {
        Some(ClusterStatusResponse { last_applied: applied, ..Default::default() })
    }

    #[test]
    fn a_change_needs_a_majority_of_new_voters_up_and_caught_up() {
        let voters: BTreeSet<u64> = [1, 2, 3].into_iter().collect();
        let all_up: Answers = [(1, up(5000)), (2, up(5000)), (3, up(4500))].into_iter().collect();
        assert!(check_quorum(&voters, &all_up, 5000).is_ok());
        let one_down: Answers = [(1, up(5000)), (2, None), (3, up(5000))].into_iter().collect();
        assert!(check_quorum(&voters, &one_down, 5000).is_ok(), "two of three is a quorum");
        let two_down: Answers = [(1, up(5000)), (2, None), (3, None)].into_iter().collect();
        let why = check_quorum(&voters, &two_down, 5000).unwrap_err();
        assert!(why.contains("need 2") && why.contains("only 1") && why.contains("[2, 3]"), "{why}");
        let behind: Answers = [(1, up(5000)), (2, None), (3, up(10))].into_iter().collect();
        let why = check_quorum(&voters, &behind, 5000).unwrap_err();
        assert!(why.contains("3 (applied 10)"), "{why}");
        // Removing a replica from two leaves one, which must answer.
        let single: BTreeSet<u64> = [1].into_iter().collect();
        assert!(check_quorum(&single, &all_up, 5000).is_ok());
        assert!(check_quorum(&BTreeSet::new(), &all_up, 5000).is_err());
    }
}
