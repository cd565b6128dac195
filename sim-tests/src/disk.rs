//! The simulated disk as a madsim plugin: madsim calls `reset_node` on every registered
//! simulator when it kills a node, and this one turns the kill into a power loss of that
//! node's disk (and its block store, if it serves one) when the nemesis armed one (each unsynced batch kept, dropped or torn, drawn
//! from the simulation's seeded RNG; see `SimDisk::power_loss` for what survives). An unarmed kill is a process crash: the disk keeps every
//! write, as the OS page cache would.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use cffs_server::block::sim_store::SimBlockStore;
use cffs_server::storage::sim_disk::{SimDisk, UnsyncedFate};
use madsim::plugin::Simulator;
use madsim::rand::{GlobalRng, Rng};
use madsim::task::NodeId;

pub struct DiskSim {
    rand: GlobalRng,
    disks: Mutex<BTreeMap<NodeId, SimDisk>>,
    /// Block stores, by the node that serves them (a replica may serve one beside its disk).
    block_stores: Mutex<BTreeMap<NodeId, SimBlockStore>>,
    power_loss_armed: Mutex<BTreeSet<NodeId>>,
    power_losses: Mutex<u64>,
}

impl Simulator for DiskSim {
    fn new(rand: &GlobalRng, _time: &madsim::time::TimeHandle, _config: &madsim::Config) -> Self {
        DiskSim {
            rand: rand.clone(),
            disks: Mutex::new(BTreeMap::new()),
            block_stores: Mutex::new(BTreeMap::new()),
            power_loss_armed: Mutex::new(BTreeSet::new()),
            power_losses: Mutex::new(0),
        }
    }

    fn reset_node(&self, id: NodeId) {
        if !self.power_loss_armed.lock().expect("lock").remove(&id) {
            return; // a process crash: the page cache survives
        }
        let disk = self.disks.lock().expect("lock").get(&id).cloned();
        let blocks = self.block_stores.lock().expect("lock").get(&id).cloned();
        if disk.is_none() && blocks.is_none() {
            return;
        }
        let mut rng = self.rand.clone();
        if let Some(disk) = disk {
            disk.power_loss(|_| match rng.gen_range(0..3) {
                0 => UnsyncedFate::Kept,
                1 => UnsyncedFate::Dropped,
                _ => UnsyncedFate::Torn,
            });
        }
        if let Some(blocks) = blocks {
            // Each unsynced block write reaches the platter or not; each unsynced delete too.
            blocks.power_loss(|_| rng.gen_bool(0.5));
        }
        *self.power_losses.lock().expect("lock") += 1;
    }
}

impl DiskSim {
    pub fn current() -> std::sync::Arc<DiskSim> {
        madsim::plugin::simulator::<DiskSim>()
    }

    /// Registers `disk` as the disk of node `id`.
    pub fn attach(&self, id: NodeId, disk: SimDisk) {
        self.disks.lock().expect("lock").insert(id, disk);
    }

    /// Registers `store` as the block store node `id` serves.
    pub fn attach_blocks(&self, id: NodeId, store: SimBlockStore) {
        self.block_stores.lock().expect("lock").insert(id, store);
    }

    /// The next kill of node `id` is a power loss.
    pub fn arm_power_loss(&self, id: NodeId) {
        self.power_loss_armed.lock().expect("lock").insert(id);
    }

    pub fn power_losses(&self) -> u64 {
        *self.power_losses.lock().expect("lock")
    }
}
