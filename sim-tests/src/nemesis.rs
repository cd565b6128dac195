//! The swarm nemesis: which faults a run uses, and how hard, is drawn from its seed; then it
//! injects them until told to stop, and heals everything.
//!
//! Faults: kill and restart a replica (a process crash, or a power loss of its unsynced
//! writes), a blackout (every replica loses power at once), a disk whose syncs fail, isolate a replica (the leader, sometimes), cut a one-way link, swizzle-clog (clog
//! links one by one, then unclog them in random order), packet loss and delay. Apart from a
//! blackout (which ends with every replica restarted), at most a minority of replicas is down
//! or isolated at any moment, so the cluster can make progress.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use madsim::net::NetSim;
use madsim::rand::Rng;

use crate::cluster::Cluster;
use crate::disk::DiskSim;

#[derive(Debug, Clone)]
pub struct NemesisPlan {
    pub kill: bool,
    pub power_loss: bool,
    /// Every replica loses power at once (and restarts): only synced writes survive.
    pub blackout: bool,
    /// A replica's disk starts failing syncs; the replica must stop serving (until it is
    /// restarted, with a working disk, at the next step).
    pub sync_failure: bool,
    pub isolate: bool,
    pub one_way: bool,
    pub swizzle: bool,
    /// Per-packet loss probability while faults run.
    pub packet_loss: f64,
    /// Extra send latency range while faults run, in milliseconds.
    pub latency_ms: (u64, u64),
    /// Pause between faults, in milliseconds.
    pub interval_ms: (u64, u64),
}

impl NemesisPlan {
    /// Draws a plan from the simulation's RNG: every fault is on or off per seed (swarm
    /// testing), so that some runs stress one fault hard and others mix them.
    pub fn draw() -> NemesisPlan {
        let mut rng = madsim::rand::thread_rng();
        NemesisPlan {
            kill: rng.gen_bool(0.7),
            power_loss: rng.gen_bool(0.5),
            blackout: rng.gen_bool(0.3),
            sync_failure: rng.gen_bool(0.3),
            isolate: rng.gen_bool(0.5),
            one_way: rng.gen_bool(0.3),
            swizzle: rng.gen_bool(0.3),
            packet_loss: if rng.gen_bool(0.3) { rng.gen_range(0.001..0.05) } else { 0.0 },
            latency_ms: if rng.gen_bool(0.3) { (1, rng.gen_range(2..50)) } else { (1, 10) },
            interval_ms: (rng.gen_range(100..500), rng.gen_range(600..2000)),
        }
    }

    pub fn is_quiet(&self) -> bool {
        !(self.kill || self.blackout || self.sync_failure || self.isolate || self.one_way || self.swizzle)
            && self.packet_loss == 0.0
    }
}

/// Runs faults per `plan` until `stop` is set, then heals everything: every replica up, every
/// link open, no loss, base latency. Returns how many faults it injected.
pub async fn run(cluster: &Cluster, plan: &NemesisPlan, stop: Arc<AtomicBool>) -> u64 {
    let net = NetSim::current();
    let disk = DiskSim::current();
    let replicas = cluster.nodes.len();
    let minority = (replicas - 1) / 2;
    net.update_config(|config| {
        config.packet_loss_rate = plan.packet_loss;
        config.send_latency = Duration::from_millis(plan.latency_ms.0)..Duration::from_millis(plan.latency_ms.1.max(2));
    });
    let mut faults = 0u64;
    let mut down: Vec<u64> = Vec::new();
    let mut isolated: Vec<u64> = Vec::new();
    let mut clogged: Vec<(u64, u64)> = Vec::new();
    let mut failing_disks: Vec<u64> = Vec::new();
    let node_id = |id: u64| cluster.nodes[id as usize - 1].id();
    while !stop.load(Ordering::Relaxed) {
        let (pause, choice, victim, other, power) = {
            let mut rng = madsim::rand::thread_rng();
            (
                rng.gen_range(plan.interval_ms.0..=plan.interval_ms.1),
                rng.gen_range(0..7),
                rng.gen_range(1..=replicas as u64),
                rng.gen_range(1..=replicas as u64),
                rng.gen_bool(0.5),
            )
        };
        tokio::time::sleep(Duration::from_millis(pause)).await;
        // Heal what was broken before, so faults come and go.
        heal_replicas(cluster, &net, &mut failing_disks, &mut down, &mut isolated);
        let impaired = |down: &Vec<u64>, isolated: &Vec<u64>| down.len() + isolated.len();
        match choice {
            0 if plan.kill && impaired(&down, &isolated) < minority.max(1) => {
                if plan.power_loss && power {
                    disk.arm_power_loss(node_id(victim));
                }
                cluster.kill(victim);
                down.push(victim);
                faults += 1;
            }
            1 if plan.isolate && impaired(&down, &isolated) < minority.max(1) => {
                // Half the time isolate the leader itself.
                let target = if power { cluster.leader_quick().await.unwrap_or(victim) } else { victim };
                net.clog_node(node_id(target));
                isolated.push(target);
                faults += 1;
            }
            2 if plan.one_way && victim != other => {
                net.clog_link(node_id(victim), node_id(other));
                clogged.push((victim, other));
                faults += 1;
            }
            3 if plan.swizzle => {
                // Clog every link one by one, then open them again in random order.
                let mut links: Vec<(u64, u64)> = (1..=replicas as u64)
                    .flat_map(|a| (1..=replicas as u64).filter(move |b| *b != a).map(move |b| (a, b)))
                    .collect();
                for (a, b) in &links {
                    net.clog_link(node_id(*a), node_id(*b));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                {
                    use rand::seq::SliceRandom;
                    links.shuffle(&mut madsim::rand::thread_rng());
                }
                for (a, b) in &links {
                    net.unclog_link(node_id(*a), node_id(*b));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                faults += 1;
            }
            4 if plan.blackout && down.is_empty() && isolated.is_empty() => {
                for id in 1..=replicas as u64 {
                    disk.arm_power_loss(node_id(id));
                    cluster.kill(id);
                    down.push(id);
                }
                faults += 1;
            }
            5 if plan.sync_failure && impaired(&down, &isolated) + failing_disks.len() < minority.max(1) => {
                cluster.disks[victim as usize - 1].set_sync_fails(true);
                failing_disks.push(victim);
                faults += 1;
            }
            _ => {
                for (a, b) in clogged.drain(..) {
                    net.unclog_link(node_id(a), node_id(b));
                }
            }
        }
    }
    // Heal.
    heal_replicas(cluster, &net, &mut failing_disks, &mut down, &mut isolated);
    for id in 1..=replicas as u64 {
        net.unclog_node(node_id(id));
    }
    for (a, b) in clogged.drain(..) {
        net.unclog_link(node_id(a), node_id(b));
    }
    net.update_config(|config| {
        config.packet_loss_rate = 0.0;
        config.send_latency = Duration::from_millis(1)..Duration::from_millis(10);
    });
    faults
}

/// Gives failing disks their syncs back (restarting those replicas, which stopped serving),
/// restarts the replicas that are down, and reconnects the isolated ones.
fn heal_replicas(
    cluster: &Cluster,
    net: &NetSim,
    failing_disks: &mut Vec<u64>,
    down: &mut Vec<u64>,
    isolated: &mut Vec<u64>,
) {
    for id in failing_disks.drain(..) {
        cluster.disks[id as usize - 1].set_sync_fails(false);
        cluster.kill(id);
        down.push(id);
    }
    for id in down.drain(..) {
        cluster.restart(id);
    }
    for id in isolated.drain(..) {
        net.unclog_node(cluster.nodes[id as usize - 1].id());
    }
}
