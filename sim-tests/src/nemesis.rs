//! The swarm nemesis: which faults a run uses, and how hard, is drawn from its seed; then it
//! injects them until told to stop, and heals everything.
//!
//! Faults on replicas: kill and restart (a process crash, or a power loss of its unsynced
//! writes), a blackout (every replica loses power at once), a disk whose syncs or reads fail,
//! that is full, or whose reads come back corrupted (the replica must stop serving until
//! restarted), isolation
//! from everyone (the leader, sometimes), a cut from its peers only (clients still reach it:
//! a deposed leader that still answers), a bridge (two replicas cut from each other, both
//! still reaching the third), a one-way link, swizzle-clogging (clog links one by one, then
//! unclog them in random order), a pause (a frozen process, for longer than a lease), packet
//! loss and delay. Faults on clients: a client paused past its leases, cut off from every
//! replica, while it holds leases and commits, or killed for good in its commit (a
//! list-append client, whose history is kept outside its node; `kill_clients`). Settings
//! drawn per seed beside the faults:
//! small snapshot intervals (followers install snapshots while faults run) and small inode
//! ranges (clients run out and allocate again across failovers), and a clock of its own for
//! each replica (a rate within the lease drift bound, and an offset).
//!
//! Without `overlap`, every step heals what the last one broke, and at most a minority of
//! replicas is impaired at once. With it, faults stand until healed at random, and up to all
//! replicas but one may be impaired together (a kill while another replica is cut off, a
//! failing disk while the leader is isolated): the cluster may stall, and must be safe.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cffs_server::clock::ClockSkew;
use cffs_server::constants::LEASE_DRIFT_PPM_DEFAULT;
use cffs_server::metadata::node::MetaNodeConfig;
use madsim::net::NetSim;
use madsim::rand::Rng;
use madsim::task::NodeId;

use crate::cluster::Cluster;
use crate::disk::DiskSim;

#[derive(Debug, Clone)]
pub struct NemesisPlan {
    pub kill: bool,
    pub power_loss: bool,
    /// Every replica loses power at once (and restarts): only synced writes survive.
    pub blackout: bool,
    /// A replica's disk starts failing syncs; the replica must stop serving (until it is
    /// restarted, with a working disk, when the fault heals).
    pub sync_failure: bool,
    /// A replica's disk fails reads, fills up (every write fails), or returns corrupted
    /// values; the replica must stop serving, as for failing syncs.
    pub disk_errors: bool,
    pub isolate: bool,
    /// Cut a replica from its peers only, or two replicas from each other (a bridge).
    pub peer_partition: bool,
    pub one_way: bool,
    pub swizzle: bool,
    /// Pause a replica's process for longer than a lease.
    pub pause: bool,
    /// Pause a client past its leases, or cut it off from the replicas.
    pub client_faults: bool,
    /// Faults stand together until healed at random (see the module comment).
    pub overlap: bool,
    /// Per-packet loss probability while faults run.
    pub packet_loss: f64,
    /// Extra send latency range while faults run, in milliseconds.
    pub latency_ms: (u64, u64),
    /// Pause between faults, in milliseconds.
    pub interval_ms: (u64, u64),
    /// Snapshot every this many entries, keeping this many behind it (None: the defaults).
    pub snapshots: Option<(u64, u64)>,
    /// Inode numbers a client allocates at once (None: the client's default).
    pub inode_batch: Option<u32>,
    /// Each replica's clock, by id (`clocks[(id - 1) % len]`): a rate within the lease drift
    /// bound, fast or slow, and an offset. None: every replica keeps true time.
    pub clocks: Option<Vec<ClockSkew>>,
    /// Replace replicas through membership changes while faults run: a new replica (new id,
    /// empty disk) joins as a learner and takes a voter's place, and the voter is stopped for
    /// good; half the time the voter's disk was lost first (it is down, and comes back empty,
    /// under the new id).
    pub membership: bool,
    /// How many list-append clients to kill for good, each in its commit (0 in two seeds in
    /// three; drawn from a hash of the seed).
    pub client_kills: u64,
    /// File data on block servers (half the seeds, drawn from a hash of the seed): replicas
    /// 1-3 also serve block group 1, three block-only servers form group 2, file clients
    /// run, and `block_faults` kills, pauses and powers off block servers (group 2 all at
    /// once, too) and corrupts or loses stored copies on one of them. Replacements of
    /// replicas are off in these seeds: a replaced replica would take its block-group
    /// membership with it, and moving a block server's membership is not built yet.
    pub blocks: bool,
    /// Clients rest their sessions after this long without a transaction (`ClientOptions::
    /// session_rest_after`), in one seed in three (drawn from a hash of the seed): sessions
    /// then end and open again all through the run, under the faults. None: the client's
    /// default (longer than a run).
    pub session_rest_ms: Option<u64>,
}

impl NemesisPlan {
    /// Draws a plan from the simulation's RNG: every fault is on or off per seed (swarm
    /// testing), so that some runs stress one fault hard and others mix them.
    pub fn draw() -> NemesisPlan {
        let blocks = seed_hash(SALT_BLOCKS)().is_multiple_of(2);
        let mut rng = madsim::rand::thread_rng();
        NemesisPlan {
            kill: rng.gen_bool(0.7),
            power_loss: rng.gen_bool(0.5),
            blackout: rng.gen_bool(0.3),
            sync_failure: rng.gen_bool(0.3),
            disk_errors: rng.gen_bool(0.4),
            isolate: rng.gen_bool(0.5),
            peer_partition: rng.gen_bool(0.3),
            one_way: rng.gen_bool(0.3),
            swizzle: rng.gen_bool(0.3),
            pause: rng.gen_bool(0.3),
            client_faults: rng.gen_bool(0.3),
            overlap: rng.gen_bool(0.3),
            packet_loss: if rng.gen_bool(0.3) { rng.gen_range(0.001..0.05) } else { 0.0 },
            latency_ms: if rng.gen_bool(0.3) { (1, rng.gen_range(2..50)) } else { (1, 10) },
            interval_ms: (rng.gen_range(100..500), rng.gen_range(600..2000)),
            snapshots: rng.gen_bool(0.3).then(|| {
                let every = rng.gen_range(20..200);
                (every, rng.gen_range(0..every / 2))
            }),
            inode_batch: rng.gen_bool(0.3).then(|| rng.gen_range(1..8)),
            clocks: draw_clocks(),
            membership: seed_hash(SALT_MEMBERSHIP)().is_multiple_of(3) && !blocks,
            client_kills: match seed_hash(SALT_CLIENT_KILLS)() % 6 {
                0 => 1,
                1 => 2,
                _ => 0,
            },
            blocks,
            session_rest_ms: {
                let mut rest = seed_hash(SALT_SESSION_REST);
                rest().is_multiple_of(3).then(|| 100 + rest() % 1_500)
            },
        }
    }

    pub fn is_quiet(&self) -> bool {
        !(self.kill
            || self.blocks
            || self.membership
            || self.client_kills > 0
            || self.blackout
            || self.sync_failure
            || self.disk_errors
            || self.isolate
            || self.peer_partition
            || self.one_way
            || self.swizzle
            || self.pause
            || self.client_faults)
            && self.packet_loss == 0.0
    }

    /// The replicas' settings this plan asks for.
    pub fn adjust(&self, config: &mut MetaNodeConfig) {
        if let Some(clocks) = &self.clocks {
            config.clock = clocks[(config.id as usize - 1) % clocks.len()];
        }
        if let Some((every, keep)) = self.snapshots {
            config.snapshot_every_entries = every;
            config.log_keep_after_snapshot = keep;
        }
    }

    /// The clients' settings this plan asks for.
    pub fn client_options(&self) -> cffs_client::ClientOptions {
        let mut options = cffs_client::ClientOptions::default();
        if let Some(batch) = self.inode_batch {
            options.inode_batch = batch;
        }
        if let Some(rest) = self.session_rest_ms {
            options.session_rest_after = Some(Duration::from_millis(rest));
        }
        options
    }
}

/// Replica clocks drawn per seed.
const CLOCKS_DRAWN: usize = 8;
/// Replacements per seed at most (each replica made takes an address for good).
const REPLACEMENTS_MAX: u32 = 2;
/// How long one step of a membership change (catch-up as a learner, the change of voters)
/// may take before the nemesis moves on; the change is finished when the faults heal.
const MEMBERSHIP_STEP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long finishing a pending change may take once everything is healed.
const MEMBERSHIP_FINISH_TIMEOUT: Duration = Duration::from_secs(60);

const SALT_CLOCKS: u64 = 0x636c_6f63_6b73; // "clocks"
const SALT_MEMBERSHIP: u64 = 0x6d65_6d62_6572; // "member"
const SALT_CLIENT_KILLS: u64 = 0x6b69_6c6c_6564; // "killed"
const SALT_BLOCKS: u64 = 0x626c_6f63_6b73; // "blocks"
const SALT_SESSION_REST: u64 = 0x7265_7374_6564; // "rested"

/// A generator drawn from a hash of the seed and `salt` (splitmix64), for plan settings added
/// after the seeds' plans were fixed: drawing them from the simulation's generator would
/// change every later draw, so no earlier seed would replay the run it had.
fn seed_hash(salt: u64) -> impl FnMut() -> u64 {
    let mut state = madsim::runtime::Handle::current().seed() ^ salt;
    move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Half the seeds give every replica a clock of its own: a rate anywhere within the lease
/// drift bound (the clients' clocks already run at rates within it, `cffs_client::cache`)
/// and an offset of up to an hour. Drawn from a hash of the seed rather than the simulation's
/// generator, so that a seed without skewed clocks replays exactly as it did before clocks
/// were drawn (the regression seeds keep their runs).
fn draw_clocks() -> Option<Vec<ClockSkew>> {
    let mut next = seed_hash(SALT_CLOCKS);
    if next().is_multiple_of(2) {
        return None;
    }
    let bound = i64::from(LEASE_DRIFT_PPM_DEFAULT);
    let clocks = (0..CLOCKS_DRAWN)
        .map(|_| ClockSkew {
            rate_ppm: ((next() % (2 * bound as u64 + 1)) as i64 - bound) as i32,
            offset: Duration::from_millis(next() % 3_600_000),
        })
        .collect();
    Some(clocks)
}

/// A fault in place until healed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    Down(u64),
    Isolated(u64),
    /// Cut from every other replica, both ways; clients still reach it.
    PeerCut(u64),
    /// These two replicas cannot reach each other; both reach the rest.
    Bridge(u64, u64),
    OneWay(u64, u64),
    Paused(u64),
    FailingDisk(u64, DiskFault),
    /// Its disk was lost: down until a membership change takes it out of the group (it never
    /// restarts under its id).
    Lost(u64),
    ClientPaused(NodeId),
    ClientCut(NodeId),
}

impl Standing {
    /// The replica this fault takes out of the quorum, if any.
    fn impairs(&self) -> Option<u64> {
        match *self {
            Standing::Down(id)
            | Standing::Isolated(id)
            | Standing::PeerCut(id)
            | Standing::Paused(id)
            | Standing::FailingDisk(id, _)
            | Standing::Lost(id) => Some(id),
            _ => None,
        }
    }
}

/// How a failing disk fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DiskFault {
    Syncs,
    Reads,
    Full,
    /// Every value read comes back with a flipped bit.
    Corrupt,
}

impl DiskFault {
    fn set(self, disk: &cffs_server::storage::sim_disk::SimDisk, on: bool) {
        match self {
            DiskFault::Syncs => disk.set_sync_fails(on),
            DiskFault::Reads => disk.set_reads_fail(on),
            DiskFault::Full => disk.set_full(on),
            DiskFault::Corrupt => disk.set_reads_corrupt(on),
        }
    }
}

/// Link clogs counted, so that two faults on one link do not undo each other.
struct Links<'a> {
    net: &'a NetSim,
    clogged: BTreeMap<(NodeId, NodeId), u32>,
}

impl Links<'_> {
    fn clog(&mut self, a: NodeId, b: NodeId) {
        let count = self.clogged.entry((a, b)).or_default();
        *count += 1;
        if *count == 1 {
            self.net.clog_link(a, b);
        }
    }

    fn unclog(&mut self, a: NodeId, b: NodeId) {
        let Some(count) = self.clogged.get_mut(&(a, b)) else { return };
        *count -= 1;
        if *count == 0 {
            self.clogged.remove(&(a, b));
            self.net.unclog_link(a, b);
        }
    }
}

/// Client kills (`NemesisPlan::client_kills`): up to that many list-append clients killed for
/// good, each in its commit, at moments drawn from a hash of the seed (so the simulation's own
/// generator is not drawn from, and seeds without kills replay as before). One is always
/// left. Returns how many were killed.
pub async fn kill_clients(cluster: &Cluster, plan: &NemesisPlan, stop: &AtomicBool) -> u64 {
    let mut next = seed_hash(SALT_CLIENT_KILLS ^ 1);
    let mut killed = 0;
    while killed < plan.client_kills {
        let wait = Duration::from_millis(200 + next() % 2_000);
        tokio::time::sleep(wait).await;
        let killable = cluster.killable();
        if stop.load(Ordering::Relaxed) || killable.len() < 2 {
            break;
        }
        let (node, committing) = &killable[(next() % killable.len() as u64) as usize];
        // In its commit: the client raises the flag when its transaction's body is done, and
        // the commit request follows at once; a moment later it is in the server's hands.
        for _ in 0..500 {
            if committing.load(Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_micros(next() % 4_000)).await;
        tracing::info!(?node, committing = committing.load(Ordering::SeqCst), "client killed");
        cluster.kill_client(*node);
        killed += 1;
    }
    killed
}

/// The block server whose stored copies `block_faults` damages or wipes: one server of
/// group 2, so that no block ever loses two copies to damage (losing one server loses no
/// block: that is the promise; two at once is beyond it).
pub const DAMAGED_BLOCK_SERVER: u64 = 6;

/// Block faults (`NemesisPlan::blocks`) until `stop` is set, then every block server up:
/// a block-only server killed (a crash, or a power loss of its unsynced blocks) or paused,
/// all of group 2 powered off at once, copies on the damaged server (`DAMAGED_BLOCK_SERVER`
/// at first) corrupted (a byte flipped) or lost, and that server replaced by an empty one:
/// under its own id (its disk wiped), or by a new server through a change of group 2 in the
/// cluster map, the old one then dying or left running outside the group. Either way the
/// scrubber must refill the empty one. The damaged server is always the one replaced, so no
/// block loses two copies to damage. Returns how many faults it injected, and how many
/// servers it replaced through the map.
pub async fn block_faults(cluster: &Cluster, stop: &AtomicBool) -> (u64, u64) {
    let disk = DiskSim::current();
    let mut servers: Vec<u64> = cluster.block_server_ids();
    let mut damaged_server = DAMAGED_BLOCK_SERVER;
    let mut down: Vec<u64> = Vec::new();
    let mut paused: Vec<u64> = Vec::new();
    let (mut faults, mut replaced) = (0, 0);
    while !stop.load(Ordering::Relaxed) {
        let (wait, choice, victim, at) = {
            let mut rng = madsim::rand::thread_rng();
            (
                rng.gen_range(200..1_500),
                rng.gen_range(0..6),
                servers[rng.gen_range(0..servers.len())],
                rng.gen_range(0..usize::MAX),
            )
        };
        tokio::time::sleep(Duration::from_millis(wait)).await;
        for id in down.drain(..) {
            cluster.restart_block(id);
        }
        for id in paused.drain(..) {
            cluster.resume_block(id);
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let damaged = cluster.block_store(damaged_server).expect("a block server's store");
        match choice {
            0 => {
                if at % 2 == 0 {
                    disk.arm_power_loss(cluster.block_node_id(victim));
                }
                cluster.kill_block(victim);
                down.push(victim);
            }
            1 => {
                for id in servers.iter().copied() {
                    disk.arm_power_loss(cluster.block_node_id(id));
                    cluster.kill_block(id);
                    down.push(id);
                }
            }
            2 | 3 => {
                let ids = damaged.ids();
                if ids.is_empty() {
                    continue;
                }
                for k in 0..3 {
                    let id = ids[(at / (k + 1)) % ids.len()];
                    match choice {
                        2 => damaged.corrupt(&id, at),
                        _ => damaged.lose(&id),
                    };
                }
            }
            4 => {
                cluster.pause_block(victim);
                paused.push(victim);
            }
            _ if at % 2 == 0 => cluster.replace_block(damaged_server),
            _ => match cluster.replace_block_server(2, damaged_server).await {
                Ok(new) => {
                    tracing::info!(old = damaged_server, new, "block server replaced in group 2");
                    let old = std::mem::replace(&mut damaged_server, new);
                    servers.retain(|id| *id != old);
                    servers.push(new);
                    replaced += 1;
                    if at % 4 == 1 {
                        cluster.kill_block(old); // for good
                    }
                }
                // Refused while the group still refills its last change.
                Err(why) => tracing::info!(%why, "block server replacement refused"),
            },
        }
        tracing::info!(choice, victim, "block fault");
        faults += 1;
    }
    for id in down {
        cluster.restart_block(id);
    }
    for id in paused {
        cluster.resume_block(id);
    }
    (faults, replaced)
}

/// What the nemesis did, for the report.
#[derive(Debug, Default, Clone, Copy)]
pub struct NemesisCounts {
    pub faults: u64,
    /// The most replicas impaired at one moment.
    pub impaired_max: u64,
    pub client_faults: u64,
    /// Replicas replaced through a membership change (the change committed).
    pub replacements: u64,
}

/// Runs faults per `plan` until `stop` is set, then heals everything: every replica up, every
/// link open, no loss, base latency, every client running and connected.
pub async fn run(cluster: &Cluster, plan: &NemesisPlan, stop: Arc<AtomicBool>) -> NemesisCounts {
    let net = NetSim::current();
    let disk = DiskSim::current();
    let replicas = cluster.members().len() as u64;
    let minority = (replicas - 1) / 2;
    let limit = if plan.overlap { replicas - 1 } else { minority.max(1) };
    let mut replacements = 0;
    // A replacement whose change of voters did not commit yet: (old, new).
    let mut pending: Option<(u64, u64)> = None;
    net.update_config(|config| {
        config.packet_loss_rate = plan.packet_loss;
        config.send_latency = Duration::from_millis(plan.latency_ms.0)..Duration::from_millis(plan.latency_ms.1.max(2));
    });
    let mut counts = NemesisCounts::default();
    let mut standing: Vec<Standing> = Vec::new();
    let mut links = Links { net: &net, clogged: BTreeMap::new() };
    let node_id = |id: u64| cluster.node_id(id);
    while !stop.load(Ordering::Relaxed) {
        let members = cluster.members();
        let (pause, choice, victim, other, coin) = {
            let mut rng = madsim::rand::thread_rng();
            (
                rng.gen_range(plan.interval_ms.0..=plan.interval_ms.1),
                // The membership fault widens the draw only where it is on (old seeds replay).
                rng.gen_range(0..if plan.membership { 11 } else { 10 }),
                members[rng.gen_range(0..members.len())],
                members[rng.gen_range(0..members.len())],
                rng.gen_bool(0.5),
            )
        };
        tokio::time::sleep(Duration::from_millis(pause)).await;
        // Heal what was broken before, all of it or (overlapping) each at random.
        // A lost replica stays so until a membership change retires it.
        let healed: Vec<Standing> = if plan.overlap {
            let mut rng = madsim::rand::thread_rng();
            standing.iter().copied().filter(|s| !matches!(s, Standing::Lost(_))).filter(|_| rng.gen_bool(0.5)).collect()
        } else {
            standing.iter().copied().filter(|s| !matches!(s, Standing::Lost(_))).collect()
        };
        for fault in healed {
            standing.retain(|s| *s != fault);
            heal(cluster, &net, &mut links, fault);
        }
        let impaired: Vec<u64> = standing.iter().filter_map(Standing::impairs).collect();
        let free = |id: u64| !impaired.contains(&id);
        let room = (impaired.len() as u64) < limit && free(victim);
        let fault = match choice {
            0 if plan.kill && room => {
                if plan.power_loss && coin {
                    disk.arm_power_loss(node_id(victim));
                }
                cluster.kill(victim);
                Some(Standing::Down(victim))
            }
            1 if plan.isolate && room => {
                // Half the time isolate the leader itself.
                let leader = if coin { cluster.leader_quick().await.filter(|id| free(*id)) } else { None };
                let target = leader.unwrap_or(victim);
                net.clog_node(node_id(target));
                Some(Standing::Isolated(target))
            }
            2 if plan.one_way && victim != other => {
                links.clog(node_id(victim), node_id(other));
                Some(Standing::OneWay(victim, other))
            }
            3 if plan.swizzle && standing.is_empty() => {
                swizzle(cluster, &mut links).await;
                counts.faults += 1;
                None
            }
            4 if plan.blackout && standing.is_empty() => {
                for id in members.iter().copied() {
                    disk.arm_power_loss(node_id(id));
                    cluster.kill(id);
                    standing.push(Standing::Down(id));
                }
                counts.faults += 1;
                None
            }
            5 if (plan.sync_failure || plan.disk_errors) && room => {
                // Half the time the leader's disk: the replica whose failure matters most.
                let leader = if coin { cluster.leader_quick().await.filter(|id| free(*id)) } else { None };
                let victim = leader.unwrap_or(victim);
                let kind = match (plan.sync_failure, plan.disk_errors, madsim::rand::thread_rng().gen_bool(0.5)) {
                    (true, false, _) | (true, true, true) => DiskFault::Syncs,
                    _ => match madsim::rand::thread_rng().gen_range(0..4) {
                        0 | 1 => DiskFault::Reads,
                        2 => DiskFault::Full,
                        _ => DiskFault::Corrupt,
                    },
                };
                kind.set(&cluster.disk(victim), true);
                Some(Standing::FailingDisk(victim, kind))
            }
            6 if plan.peer_partition && coin && room => {
                // Half the time cut the leader from its followers: it still answers clients.
                let leader = cluster.leader_quick().await.filter(|id| free(*id));
                let target = leader.unwrap_or(victim);
                for peer in members.iter().copied().filter(|p| *p != target) {
                    links.clog(node_id(target), node_id(peer));
                    links.clog(node_id(peer), node_id(target));
                }
                if leader == Some(target) {
                    // A deposed leader its clients still reach, for long enough that some of
                    // them go on reading there while others write through the new leader
                    // (a write on the old one waits 5 s before its client moves on).
                    let hold = madsim::rand::thread_rng().gen_range(2_000..8_000);
                    tokio::time::sleep(Duration::from_millis(hold)).await;
                }
                Some(Standing::PeerCut(target))
            }
            6 if plan.peer_partition && victim != other => {
                links.clog(node_id(victim), node_id(other));
                links.clog(node_id(other), node_id(victim));
                Some(Standing::Bridge(victim, other))
            }
            7 if plan.pause && room => {
                cluster.pause_replica(victim);
                Some(Standing::Paused(victim))
            }
            8 | 9 if plan.client_faults => {
                let clients = cluster.client_nodes();
                let taken: Vec<NodeId> = standing
                    .iter()
                    .filter_map(|s| match s {
                        Standing::ClientPaused(n) | Standing::ClientCut(n) => Some(*n),
                        _ => None,
                    })
                    .collect();
                let candidates: Vec<NodeId> = clients.into_iter().filter(|n| !taken.contains(n)).collect();
                if candidates.is_empty() {
                    None
                } else {
                    let watcher = cluster.watcher().filter(|w| candidates.contains(w));
                    let node = match watcher {
                        // Three times in four the lease watcher, whose cached reads show a lease
                        // the leader did not wait out.
                        Some(watcher) if madsim::rand::thread_rng().gen_bool(0.75) => watcher,
                        _ => candidates[madsim::rand::thread_rng().gen_range(0..candidates.len())],
                    };
                    counts.client_faults += 1;
                    tracing::info!(
                        ?node,
                        watcher = cluster.watcher() == Some(node),
                        pause = choice == 8,
                        "client fault"
                    );
                    if choice == 8 {
                        cluster.pause_node(node);
                        Some(Standing::ClientPaused(node))
                    } else {
                        net.clog_node(node);
                        Some(Standing::ClientCut(node))
                    }
                }
            }
            10 if pending.is_none() && replacements < REPLACEMENTS_MAX && room => {
                replacements += 1;
                let wiped = coin;
                if wiped {
                    // The disk is lost: the replica is down, and comes back empty, as a new id.
                    cluster.kill(victim);
                    standing.push(Standing::Lost(victim));
                }
                let new = join(cluster, victim).await;
                cluster.attach_disks(&disk);
                if change_voters(cluster, victim, new, MEMBERSHIP_STEP_TIMEOUT).await {
                    retire(cluster, &net, &mut links, &mut standing, victim);
                    counts.replacements += 1;
                } else {
                    pending = Some((victim, new));
                }
                counts.faults += 1;
                None
            }
            10 if plan.membership => {
                // A replacement left pending: try to finish it.
                if let Some((old, new)) = pending {
                    if change_voters(cluster, old, new, MEMBERSHIP_STEP_TIMEOUT).await {
                        retire(cluster, &net, &mut links, &mut standing, old);
                        counts.replacements += 1;
                        pending = None;
                    }
                }
                None
            }
            _ => {
                // A quiet step: one-way links open again.
                for fault in standing.iter().copied().filter(|s| matches!(s, Standing::OneWay(..))).collect::<Vec<_>>()
                {
                    standing.retain(|s| *s != fault);
                    heal(cluster, &net, &mut links, fault);
                }
                None
            }
        };
        if let Some(fault) = fault {
            standing.push(fault);
            counts.faults += 1;
        }
        let impaired: std::collections::BTreeSet<u64> = standing.iter().filter_map(Standing::impairs).collect();
        counts.impaired_max = counts.impaired_max.max(impaired.len() as u64);
    }
    // Heal everything, then finish a replacement left pending.
    for fault in std::mem::take(&mut standing) {
        heal(cluster, &net, &mut links, fault);
    }
    for ((a, b), _) in std::mem::take(&mut links.clogged) {
        net.unclog_link(a, b);
    }
    if let Some((old, new)) = pending {
        if change_voters(cluster, old, new, MEMBERSHIP_FINISH_TIMEOUT).await {
            retire(cluster, &net, &mut links, &mut standing, old);
            counts.replacements += 1;
        } else {
            tracing::warn!(old, new, "the replacement did not commit after healing");
        }
    }
    net.update_config(|config| {
        config.packet_loss_rate = 0.0;
        config.send_latency = Duration::from_millis(1)..Duration::from_millis(10);
    });
    counts
}

/// Clogs every replica link one by one, then opens them again in random order.
async fn swizzle(cluster: &Cluster, links: &mut Links<'_>) {
    let members = cluster.members();
    let node_id = |id: u64| cluster.node_id(id);
    let mut pairs: Vec<(u64, u64)> =
        members.iter().flat_map(|a| members.iter().filter(move |b| *b != a).map(move |b| (*a, *b))).collect();
    for (a, b) in &pairs {
        links.clog(node_id(*a), node_id(*b));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    {
        use rand::seq::SliceRandom;
        pairs.shuffle(&mut madsim::rand::thread_rng());
    }
    for (a, b) in &pairs {
        links.unclog(node_id(*a), node_id(*b));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A new replica (the next id, an empty disk) joins the group as a learner in place of `old`:
/// started with the group's members as its peers. Returns its id.
async fn join(cluster: &Cluster, old: u64) -> u64 {
    let new = cluster.replicas_made() + 1;
    let peers: BTreeMap<u64, String> =
        cluster.members().into_iter().chain([new]).map(|id| (id, Cluster::addr_of(id))).collect();
    assert_eq!(cluster.add_replica(peers), new);
    tracing::info!(old, new, "replacing a replica");
    new
}

/// Adds `new` as a learner (it catches up) and makes the voters those of the group with `new`
/// in place of `old`; true once the change committed. Each step is bounded by `limit`.
async fn change_voters(cluster: &Cluster, old: u64, new: u64, limit: Duration) -> bool {
    let voters: Vec<u64> = cluster.members().into_iter().filter(|id| *id != old).collect();
    debug_assert!(voters.contains(&new));
    cluster
        .with_client(move |client| async move {
            let addr = Cluster::addr_of(new);
            let deadline = tokio::time::Instant::now() + limit;
            while tokio::time::Instant::now() < deadline {
                let step = async {
                    client.add_learner(new, &addr).await?;
                    client.change_membership(&voters).await
                };
                match tokio::time::timeout(limit, step).await {
                    Ok(Ok(())) => return true,
                    Ok(Err(error)) => tracing::info!(%error, old, new, "membership change failed; retrying"),
                    Err(_) => tracing::info!(old, new, "membership change timed out; retrying"),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            false
        })
        .await
}

/// `old` left the group: its standing faults are healed (links opened, nothing restarted)
/// and it is stopped for good.
fn retire(cluster: &Cluster, net: &NetSim, links: &mut Links<'_>, standing: &mut Vec<Standing>, old: u64) {
    cluster.remove(old);
    let involved = |fault: &Standing| match *fault {
        Standing::Down(id)
        | Standing::Isolated(id)
        | Standing::PeerCut(id)
        | Standing::Paused(id)
        | Standing::FailingDisk(id, _)
        | Standing::Lost(id) => id == old,
        Standing::Bridge(a, b) | Standing::OneWay(a, b) => a == old || b == old,
        Standing::ClientPaused(_) | Standing::ClientCut(_) => false,
    };
    for fault in standing.iter().copied().filter(involved).collect::<Vec<_>>() {
        standing.retain(|s| *s != fault);
        heal(cluster, net, links, fault);
    }
}

/// Undoes one fault. A failing disk gets its syncs back and its replica (which stopped
/// serving) is restarted. A replica out of the group is never restarted or resumed.
fn heal(cluster: &Cluster, net: &NetSim, links: &mut Links<'_>, fault: Standing) {
    let node_id = |id: u64| cluster.node_id(id);
    let members = cluster.members();
    let member = |id: u64| members.contains(&id);
    match fault {
        Standing::Down(id) if member(id) => cluster.restart(id),
        Standing::Down(_) | Standing::Lost(_) => {}
        Standing::Isolated(id) => net.unclog_node(node_id(id)),
        Standing::PeerCut(id) => {
            for peer in (1..=cluster.replicas_made()).filter(|p| *p != id) {
                links.unclog(node_id(id), node_id(peer));
                links.unclog(node_id(peer), node_id(id));
            }
        }
        Standing::Bridge(a, b) => {
            links.unclog(node_id(a), node_id(b));
            links.unclog(node_id(b), node_id(a));
        }
        Standing::OneWay(a, b) => links.unclog(node_id(a), node_id(b)),
        Standing::Paused(id) if member(id) => cluster.resume_replica(id),
        Standing::Paused(_) => {}
        Standing::FailingDisk(id, kind) => {
            kind.set(&cluster.disk(id), false);
            if member(id) {
                cluster.kill(id);
                cluster.restart(id);
            }
        }
        Standing::ClientPaused(node) => cluster.resume_node(node),
        Standing::ClientCut(node) => net.unclog_node(node),
    }
}
