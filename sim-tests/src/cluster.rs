//! A simulated cluster: metadata replicas as madsim nodes, each with a `SimDisk` that
//! outlives the node, so a kill and restart is a process crash (the page cache survives) and
//! `power_loss` drops unsynced writes.
//!
//! Replica ids are 1, 2, 3, … in the order replicas are made; a replica removed from the
//! group by a membership change keeps its id (never reused) and stays down.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU8};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cffs_client::{Client, ClientOptions};
use cffs_server::block::gc::GcConfig;
use cffs_server::block::node::BlockNode;
use cffs_server::block::scrub::ScrubConfig;
use cffs_server::block::service::BlockService;
use cffs_server::block::sim_store::SimBlockStore;
use cffs_server::metadata::node::{MetaNode, MetaNodeConfig};
use cffs_server::storage::sim_disk::SimDisk;
use madsim::runtime::{Handle, NodeHandle};

pub const META_PORT: u16 = 7101;
pub const BLOCK_PORT: u16 = 7201;
/// The block size of simulated clusters: small, so that files of a few hundred KiB span
/// many blocks.
pub const SIM_BLOCK_SIZE: u32 = 16 * 1024;
/// The collector's grace period in simulation.
pub const SIM_GC_GRACE: Duration = Duration::from_secs(1);

/// A block-only server (ids 4, 5, 6 start as block group 2, whose members may be replaced by
/// servers 7, 8, …; group 1 is served by replicas 1-3).
pub struct BlockServer {
    pub id: u64,
    node: NodeHandle,
    pub store: SimBlockStore,
}

/// Adjusts a replica's configuration (applied at every start and restart).
pub type Adjust = Arc<dyn Fn(&mut MetaNodeConfig) + Send + Sync>;

struct Replica {
    node: NodeHandle,
    disk: SimDisk,
    /// The block store it serves as a member of block group 1 (clusters with blocks).
    blocks: Option<SimBlockStore>,
    /// Taken out of the group by a membership change (and stopped for good).
    removed: bool,
}

pub struct Cluster {
    handle: Handle,
    /// Every replica made, by id - 1.
    replicas: Mutex<Vec<Replica>>,
    /// Applied to every replica's configuration, including replicas added later.
    adjust: Adjust,
    clients_made: AtomicU8,
    /// Every client node made, for the nemesis' client faults.
    client_nodes: Mutex<Vec<madsim::task::NodeId>>,
    /// What clients made by `connect` use.
    pub client_options: ClientOptions,
    /// The client node the nemesis prefers for client faults (the chaos run's lease watcher).
    watcher: Mutex<Option<madsim::task::NodeId>>,
    /// Client nodes the nemesis may kill, each with the flag its client raises while its
    /// commit runs (`workload::ListRecord::committing`).
    killable: Mutex<Vec<(madsim::task::NodeId, Arc<AtomicBool>)>>,
    /// Each client node's address (a killed client's handlers are dropped by address).
    client_ips: Mutex<BTreeMap<madsim::task::NodeId, IpAddr>>,
    /// Replicas 1-3 serve block group 1 (set before they are made).
    with_blocks: bool,
    /// Every block-only server made (group 2's first members, then their replacements).
    block_servers: Mutex<Vec<BlockServer>>,
    /// `attach_disks` was called: block servers made later register with the disk simulator.
    disks_attached: AtomicBool,
}

fn block_ip(id: u64) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 2, id as u8))
}

fn meta_ip(index: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, index as u8 + 1))
}

impl Cluster {
    /// Starts `replicas` metadata replicas (ids 1..=replicas) and waits for a leader.
    pub async fn start(replicas: usize) -> Cluster {
        Self::start_with(replicas, |_| {}).await
    }

    /// Like `start`, with `adjust` applied to every replica's configuration.
    pub async fn start_with(replicas: usize, adjust: impl Fn(&mut MetaNodeConfig) + Send + Sync + 'static) -> Cluster {
        Self::start_full(replicas, adjust, false).await
    }

    /// Like `start_with`; with `blocks`, replicas 1-3 also serve block group 1 and three
    /// block-only servers (4-6) form group 2, with `SIM_BLOCK_SIZE` blocks.
    pub async fn start_full(
        replicas: usize,
        adjust: impl Fn(&mut MetaNodeConfig) + Send + Sync + 'static,
        blocks: bool,
    ) -> Cluster {
        let handle = Handle::current();
        let peers: BTreeMap<u64, String> =
            (0..replicas).map(|i| (i as u64 + 1, format!("{}:{META_PORT}", meta_ip(i)))).collect();
        let cluster = Cluster {
            handle,
            replicas: Mutex::new(Vec::new()),
            adjust: Arc::new(adjust),
            clients_made: AtomicU8::new(0),
            client_nodes: Mutex::new(Vec::new()),
            client_options: ClientOptions::default(),
            watcher: Mutex::new(None),
            killable: Mutex::new(Vec::new()),
            client_ips: Mutex::new(BTreeMap::new()),
            with_blocks: blocks,
            block_servers: Mutex::new(Vec::new()),
            disks_attached: AtomicBool::new(false),
        };
        for _ in 0..replicas {
            cluster.add_replica(peers.clone());
        }
        if blocks {
            let servers = (4..=6).map(|id| cluster.make_block_server(id)).collect();
            *cluster.block_servers.lock().expect("block servers") = servers;
        }
        cluster.wait_for_leader(Duration::from_secs(30)).await.expect("a leader is elected");
        if blocks {
            let groups: Vec<Vec<cffs_proto::BlockMember>> = vec![
                (1..=3).map(|id| cffs_proto::BlockMember { id, addr: Self::addr_of(id) }).collect(),
                (4..=6).map(|id| cffs_proto::BlockMember { id, addr: Self::block_addr_of(id) }).collect(),
            ];
            cluster
                .with_client(|client| async move {
                    for (i, members) in groups.into_iter().enumerate() {
                        let size = if i == 0 { SIM_BLOCK_SIZE } else { 0 };
                        client.add_block_group(members, size).await.expect("add a block group");
                    }
                })
                .await;
        }
        cluster
    }

    fn make_block_server(&self, id: u64) -> BlockServer {
        let store = SimBlockStore::new();
        let node_store = store.clone();
        let node = self
            .handle
            .create_node()
            .name(format!("block-{id}"))
            .ip(block_ip(id))
            .init(move || {
                let store = node_store.clone();
                async move {
                    let listen = SocketAddr::new(block_ip(id), BLOCK_PORT);
                    let data_listen = SocketAddr::new(block_ip(id), 0);
                    let _node =
                        BlockNode::start(id, listen, data_listen, Arc::new(store)).await.expect("block server starts");
                    futures::future::pending::<()>().await;
                }
            })
            .build();
        BlockServer { id, node, store }
    }

    /// The address block-only server `id` listens on.
    pub fn block_addr_of(id: u64) -> String {
        format!("{}:{BLOCK_PORT}", block_ip(id))
    }

    /// The store of block server `id` (1-3: a replica's), if the cluster has blocks.
    pub fn block_store(&self, id: u64) -> Option<SimBlockStore> {
        match id {
            1..=3 => self.lock().get(id as usize - 1).and_then(|r| r.blocks.clone()),
            _ => self.servers().iter().find(|s| s.id == id).map(|s| s.store.clone()),
        }
    }

    fn servers(&self) -> std::sync::MutexGuard<'_, Vec<BlockServer>> {
        self.block_servers.lock().expect("block servers")
    }

    /// The ids of every block-only server made.
    pub fn block_server_ids(&self) -> Vec<u64> {
        self.servers().iter().map(|s| s.id).collect()
    }

    /// Starts one more block-only server, with the next id and an empty store (it belongs to
    /// no group until the cluster map names it). Returns its id.
    pub fn add_block_server(&self) -> u64 {
        let id = self.servers().iter().map(|s| s.id).max().unwrap_or(6).max(6) + 1;
        let server = self.make_block_server(id);
        if self.disks_attached.load(std::sync::atomic::Ordering::SeqCst) {
            crate::disk::DiskSim::current().attach_blocks(server.node.id(), server.store.clone());
        }
        self.servers().push(server);
        id
    }

    /// The madsim node of block-only server `id`.
    pub fn block_node_id(&self, id: u64) -> madsim::task::NodeId {
        self.servers().iter().find(|s| s.id == id).expect("a block server").node.id()
    }

    pub fn kill_block(&self, id: u64) {
        self.handle.kill(self.block_node_id(id));
    }

    pub fn restart_block(&self, id: u64) {
        self.handle.restart(self.block_node_id(id));
    }

    /// Replaces block server `id` by one with an empty disk (same id and address): it comes
    /// back holding nothing, and the scrubber refills it.
    pub fn replace_block(&self, id: u64) {
        self.kill_block(id);
        if let Some(store) = self.block_store(id) {
            store.wipe();
        }
        self.restart_block(id);
    }

    /// Replaces member `old` of block group `group` by a new, empty block server through the
    /// cluster map (`cffs cluster replace-node --block-group`): Ok with the new server's id
    /// once the change is applied; Err with the refusal (the new server is stopped then).
    /// `old` keeps running: the caller decides whether it dies.
    pub async fn replace_block_server(&self, group: u32, old: u64) -> Result<u64, String> {
        // A refill under way refuses the change: asked first, so no server is made for it.
        let map = self.with_client(|client| async move { client.cluster_map(true).await }).await;
        let map = map.map_err(|e| e.to_string())?;
        if let Some(g) = map.groups.iter().find(|g| g.id == group && g.refilling != 0) {
            return Err(format!("block group {group} is still refilling server {}", g.refilling));
        }
        let new = self.add_block_server();
        let member = cffs_proto::BlockMember { id: new, addr: Self::block_addr_of(new) };
        let result =
            self.with_client(move |client| async move { client.replace_block_server(group, old, member).await }).await;
        let error = match result {
            Ok(_) => return Ok(new),
            Err(error) => error.to_string(),
        };
        // The answer may be lost while the change applied (an unknown outcome under faults):
        // the map says. A server the map names stays up (found by chaos seed 1500, where the
        // harness killed a member it took for refused, and the collector could not reach it).
        for _ in 0..20 {
            let map = self.with_client(|client| async move { client.cluster_map(true).await }).await;
            match map {
                Ok(map) if map.groups.iter().any(|g| g.id == group && g.members.iter().any(|m| m.id == new)) => {
                    return Ok(new)
                }
                Ok(_) => {
                    self.kill_block(new);
                    return Err(error);
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
        // Still unknown: the new server is left running, outside the harness's faults.
        Err(error)
    }

    pub fn pause_block(&self, id: u64) {
        self.handle.pause(self.block_node_id(id));
    }

    pub fn resume_block(&self, id: u64) {
        self.handle.resume(self.block_node_id(id));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Replica>> {
        self.replicas.lock().expect("replicas lock")
    }

    /// Starts one more replica, with the next id, on a fresh disk. `peers` is what it is
    /// started with (`--peers`, which must include its own id); only a cluster's lowest id
    /// ever bootstraps.
    pub fn add_replica(&self, peers: BTreeMap<u64, String>) -> u64 {
        let adjust = self.adjust.clone();
        let mut replicas = self.lock();
        let i = replicas.len();
        let id = i as u64 + 1;
        let disk = SimDisk::new();
        let node_disk = disk.clone();
        let blocks = (self.with_blocks && id <= 3).then(SimBlockStore::new);
        let node_blocks = blocks.clone();
        let node = self
            .handle
            .create_node()
            .name(format!("meta-{id}"))
            .ip(meta_ip(i))
            .init(move || {
                let disk = node_disk.clone();
                let peers = peers.clone();
                let adjust = adjust.clone();
                let blocks = node_blocks.clone();
                async move {
                    let mut config = MetaNodeConfig::new(id, SocketAddr::new(meta_ip(i), META_PORT), peers);
                    if blocks.is_some() {
                        // Passes back to back: the simulation's runs are short.
                        config.scrub = ScrubConfig { bytes_per_sec: 0, pass_pause: Duration::from_millis(500) };
                        // A grace period shorter than many transactions under faults: the
                        // collector marks blocks of transactions still in flight, which must
                        // then abort (and re-run), never commit a deleted block.
                        config.gc = GcConfig { grace: SIM_GC_GRACE, interval: Duration::from_millis(500) };
                    }
                    // Last: a scenario may change the block settings too.
                    adjust(&mut config);
                    config.block_service = blocks.map(|store| BlockService::new(id, Arc::new(store)));
                    if let Some(blocks) = &config.block_service {
                        let data_listen = SocketAddr::new(meta_ip(i), 0);
                        blocks.start_data_port(data_listen).await.expect("the data port listens");
                    }
                    // A replica whose disk fails while it starts stays down, as a process that
                    // exits would, until the nemesis restarts it.
                    let _node = match MetaNode::start(config, Arc::new(disk)).await {
                        Ok(node) => Some(node),
                        Err(error) => {
                            tracing::warn!(%error, "replica failed to start");
                            None
                        }
                    };
                    futures::future::pending::<()>().await;
                }
            })
            .build();
        replicas.push(Replica { node, disk, blocks, removed: false });
        id
    }

    /// Registers every replica's disk with the disk simulator, so a kill can be a power loss.
    pub fn attach_disks(&self, disk_sim: &crate::disk::DiskSim) {
        for replica in self.lock().iter() {
            disk_sim.attach(replica.node.id(), replica.disk.clone());
            if let Some(blocks) = &replica.blocks {
                disk_sim.attach_blocks(replica.node.id(), blocks.clone());
            }
        }
        for server in self.servers().iter() {
            disk_sim.attach_blocks(server.node.id(), server.store.clone());
        }
        self.disks_attached.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// The madsim node of replica `id`.
    pub fn node_id(&self, id: u64) -> madsim::task::NodeId {
        self.lock()[id as usize - 1].node.id()
    }

    /// The disk of replica `id` (shared with the replica).
    pub fn disk(&self, id: u64) -> SimDisk {
        self.lock()[id as usize - 1].disk.clone()
    }

    /// The replicas in the group (every one made, but those removed), by id.
    pub fn members(&self) -> Vec<u64> {
        (1..).zip(self.lock().iter()).filter(|(_, r)| !r.removed).map(|(id, _)| id).collect()
    }

    /// How many replicas were ever made (the next one gets this plus one as its id).
    pub fn replicas_made(&self) -> u64 {
        self.lock().len() as u64
    }

    /// Stops replica `id` for good: a membership change took it out of the group.
    pub fn remove(&self, id: u64) {
        let node = {
            let mut replicas = self.lock();
            let replica = &mut replicas[id as usize - 1];
            replica.removed = true;
            replica.node.id()
        };
        self.handle.kill(node);
    }

    /// The address replica `id` listens on.
    pub fn addr_of(id: u64) -> String {
        format!("{}:{META_PORT}", meta_ip(id as usize - 1))
    }
    /// The addresses of the group's replicas (a client learns of later ones from leader hints).
    pub fn endpoints(&self) -> Vec<String> {
        self.members().into_iter().map(Self::addr_of).collect()
    }

    /// A new client node (its own address), for running client code.
    pub fn client_node(&self) -> NodeHandle {
        let n = self.clients_made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 1, n + 1));
        let node = self.handle.create_node().name(format!("client-{n}")).ip(ip).build();
        self.client_nodes.lock().expect("client nodes lock").push(node.id());
        self.client_ips.lock().expect("client ips lock").insert(node.id(), ip);
        node
    }

    /// Marks `node` as the client the nemesis prefers for client faults.
    pub fn set_watcher(&self, node: madsim::task::NodeId) {
        *self.watcher.lock().expect("watcher lock") = Some(node);
    }

    pub fn watcher(&self) -> Option<madsim::task::NodeId> {
        *self.watcher.lock().expect("watcher lock")
    }

    /// Lets the nemesis kill `node`, whose client raises `committing` while its commit runs
    /// and records its history outside the node.
    pub fn set_killable(&self, node: madsim::task::NodeId, committing: Arc<AtomicBool>) {
        self.killable.lock().expect("killable lock").push((node, committing));
    }

    /// The client nodes that may still be killed.
    pub fn killable(&self) -> Vec<(madsim::task::NodeId, Arc<AtomicBool>)> {
        self.killable.lock().expect("killable lock").clone()
    }

    /// Kills a client node for good (a function instance that dies): its tasks are dropped
    /// where they stand, and no later fault picks it.
    pub fn kill_client(&self, node: madsim::task::NodeId) {
        self.handle.kill(node);
        if let Some(ip) = self.client_ips.lock().expect("client ips lock").get(&node) {
            cffs_server::sim_stats::kill_caller(*ip);
        }
        self.killable.lock().expect("killable lock").retain(|(n, _)| *n != node);
        self.client_nodes.lock().expect("client nodes lock").retain(|n| *n != node);
    }

    /// Every client node made so far.
    pub fn client_nodes(&self) -> Vec<madsim::task::NodeId> {
        self.client_nodes.lock().expect("client nodes lock").clone()
    }

    /// A client with this cluster's client options.
    pub fn connect(endpoints: &[String], options: ClientOptions) -> Client {
        Client::connect_with(endpoints, options).expect("endpoints are valid")
    }

    /// Runs `f` with a connected client on a fresh client node.
    pub async fn with_client<T, F, Fut>(&self, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce(Client) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T> + Send + 'static,
    {
        let endpoints = self.endpoints();
        self.client_node()
            .spawn(async move { f(Client::connect(&endpoints).expect("endpoints are valid")).await })
            .await
            .expect("client task")
    }

    /// The current leader's id, as a client learns it.
    pub async fn leader(&self) -> Option<u64> {
        let status = self.with_client(|client| async move { client.cluster_status().await }).await;
        status.ok().map(|s| s.leader_id).filter(|id| *id != 0)
    }

    pub async fn wait_for_leader(&self, limit: Duration) -> Option<u64> {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            if let Some(leader) = self.leader().await {
                return Some(leader);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// Waits until a replica other than `old` reports itself leader; returns how long that
    /// took, polling every 10 ms.
    pub async fn wait_for_new_leader(&self, old: u64, limit: Duration) -> Option<Duration> {
        let started = tokio::time::Instant::now();
        let endpoints = self.endpoints();
        self.client_node()
            .spawn(async move {
                let client = Client::connect(&endpoints).expect("endpoints are valid");
                while started.elapsed() < limit {
                    let all = client.cluster_status_all().await;
                    let elected = all
                        .iter()
                        .filter_map(|(_, status)| status.as_ref().ok())
                        .any(|s| s.state == "Leader" && s.node_id != old);
                    if elected {
                        return Some(started.elapsed());
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                None
            })
            .await
            .expect("watcher task")
    }

    /// The replica that reports itself leader right now, asking each for at most two seconds.
    pub async fn leader_quick(&self) -> Option<u64> {
        let all = self.with_client(|client| async move { client.cluster_status_all().await }).await;
        all.into_iter().filter_map(|(_, s)| s.ok()).find(|s| s.state == "Leader").map(|s| s.node_id)
    }

    /// Waits until every replica answers with the same applied index; returns it.
    pub async fn wait_converged(&self, limit: Duration) -> Option<u64> {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            let all = self.with_client(|client| async move { client.cluster_status_all().await }).await;
            let applied: Vec<u64> = all.iter().filter_map(|(_, s)| s.as_ref().ok()).map(|s| s.last_applied).collect();
            if applied.len() == self.members().len() && applied.iter().all(|a| *a == applied[0]) {
                return Some(applied[0]);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        None
    }

    /// The state machine of replica `id` as its disk holds it: every key and value.
    pub fn state_of(&self, id: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
        use cffs_server::storage::{Cf, KvEngine};
        self.disk(id).scan(Cf::State, &[], None, usize::MAX).expect("sim disk scan")
    }

    /// Kills replica `id` (a process crash: its disk keeps every write).
    pub fn kill(&self, id: u64) {
        self.handle.kill(self.node_id(id));
    }

    /// Pauses a node (a frozen process: nothing on it runs, its clock keeps going).
    pub fn pause(&self, node: &NodeHandle) {
        self.handle.pause(node.id());
    }

    pub fn resume(&self, node: &NodeHandle) {
        self.handle.resume(node.id());
    }

    /// Pauses or resumes any node by id (a client node, for the nemesis).
    pub fn pause_node(&self, node: madsim::task::NodeId) {
        self.handle.pause(node);
    }

    pub fn resume_node(&self, node: madsim::task::NodeId) {
        self.handle.resume(node);
    }

    /// Pauses replica `id`: a frozen process, its clock (and everyone else's) going on.
    pub fn pause_replica(&self, id: u64) {
        self.handle.pause(self.node_id(id));
    }

    pub fn resume_replica(&self, id: u64) {
        self.handle.resume(self.node_id(id));
    }

    /// Restarts replica `id` from its disk.
    pub fn restart(&self, id: u64) {
        self.handle.restart(self.node_id(id));
    }
}
