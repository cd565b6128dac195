//! One metadata replica: opens its Raft log and state machine on an engine, starts openraft,
//! serves the metadata and Raft gRPC services, and bootstraps a fresh cluster.
//!
//! Bootstrap rule: every node of a new cluster is started with the same peer list. The node
//! with the lowest id initializes the cluster, once, and only when neither it nor any peer it
//! can reach has ever voted or logged. A restarted node never re-initializes: its own log or
//! vote says it belongs to a cluster already.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;
use tracing::{info, warn};

use super::leases::LeaseConfig;
use super::read_index::RestartFloor;
use super::service::MetadataService;
use super::state_machine::{MetaState, StateMachine};
use super::{MetaRaft, METADATA_GROUP};
use crate::clock::{Clock, ClockSkew};
use crate::constants::*;
use crate::raft::log_store::{self, LogStore};
use crate::raft::network::{Channels, Network, RaftService};
use crate::raft::prompt_election::{self, LeaderContact};
use crate::storage::fail_stop::FailStop;
use crate::storage::KvEngine;

pub struct MetaNodeConfig {
    pub id: u64,
    pub listen: SocketAddr,
    /// Every voter of the initial cluster, this node included: id → host:port.
    pub peers: BTreeMap<u64, String>,
    /// Build a snapshot (and purge the log before it) every this many entries.
    pub snapshot_every_entries: u64,
    /// Log entries kept behind the last snapshot, for followers that lag a little.
    pub log_keep_after_snapshot: u64,
    /// Client leases (docs/design/leases.md).
    pub leases: LeaseConfig,
    /// This replica's clock: the machine's, or (in simulation) one with a rate and offset of
    /// its own.
    pub clock: ClockSkew,
    /// A block service this process also serves, on the same address (`cffs-server meta
    /// --block-dir`, and `dev`).
    pub block_service: Option<crate::block::service::BlockService>,
    /// The scrubber's rate and pauses (it runs on the leader).
    pub scrub: crate::block::scrub::ScrubConfig,
    /// The block collector's grace period and pace (it runs on the leader).
    pub gc: crate::block::gc::GcConfig,
}

impl MetaNodeConfig {
    pub fn new(id: u64, listen: SocketAddr, peers: BTreeMap<u64, String>) -> Self {
        MetaNodeConfig {
            id,
            listen,
            peers,
            snapshot_every_entries: RAFT_SNAPSHOT_EVERY_ENTRIES,
            log_keep_after_snapshot: RAFT_LOG_KEEP_AFTER_SNAPSHOT,
            leases: LeaseConfig { duration: LEASE_DURATION_DEFAULT, drift_ppm: LEASE_DRIFT_PPM_DEFAULT },
            clock: ClockSkew::NONE,
            block_service: None,
            scrub: Default::default(),
            gc: Default::default(),
        }
    }
}

pub struct MetaNode {
    pub raft: MetaRaft,
    /// The replica's metadata service (its figures and health: `metrics_text`, `health`).
    pub service: MetadataService,
    /// The block service this process also serves, if any.
    pub block_service: Option<crate::block::service::BlockService>,
}

impl MetaNode {
    /// This process's figures in Prometheus's text format: the replica's, and its block
    /// server's when it is one.
    pub fn metrics_text(&self) -> String {
        let mut out = crate::metrics::Exposition::default();
        self.service.render_metrics(&mut out);
        if let Some(blocks) = &self.block_service {
            blocks.render_metrics(&mut out);
        }
        out.finish()
    }

    pub fn health(&self) -> crate::metrics::Health {
        self.service.health()
    }
}

/// This replica's snapshot interval: the configured one, longer by an eighth per step of
/// its id (mod 3). Replicas that all built at the same index would build at the same moment
/// ever after, and three builds at once on a small machine take the CPU the commits need
/// (measured: 15 MB snapshots, 0.5 s each, p999 at 64 clients 15× p50 in the run that
/// built one); with different intervals their builds seldom meet.
fn snapshot_interval(node: &MetaNodeConfig) -> u64 {
    node.snapshot_every_entries + node.snapshot_every_entries / 8 * (node.id % 3)
}

pub fn raft_config(node: &MetaNodeConfig) -> anyhow::Result<Arc<openraft::Config>> {
    anyhow::ensure!(
        node.log_keep_after_snapshot < node.snapshot_every_entries,
        "the log kept after a snapshot must be shorter than the snapshot interval"
    );
    // openraft's timers run on the machine's clock: a replica whose clock runs fast or slow
    // fires them after the true time its own clock would take.
    let millis = |timeout: std::time::Duration| node.clock.to_real(timeout).as_millis().max(1) as u64;
    let config = openraft::Config {
        cluster_name: "cffs-meta".into(),
        heartbeat_interval: millis(RAFT_HEARTBEAT_INTERVAL),
        election_timeout_min: millis(RAFT_ELECTION_TIMEOUT_MIN),
        election_timeout_max: millis(RAFT_ELECTION_TIMEOUT_MAX),
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_interval(node)),
        max_in_snapshot_log_to_keep: node.log_keep_after_snapshot,
        snapshot_max_chunk_size: RAFT_SNAPSHOT_CHUNK_BYTES,
        max_payload_entries: 256,
        ..Default::default()
    };
    Ok(Arc::new(config.validate()?))
}

impl MetaNode {
    /// Starts the replica and serves until the process ends. Returns once the server task is
    /// spawned.
    pub async fn start(config: MetaNodeConfig, engine: Arc<dyn KvEngine>) -> anyhow::Result<MetaNode> {
        // After any storage error this replica stops serving (until restarted).
        let fail_stop = Arc::new(FailStop::new(engine));
        let health = fail_stop.health();
        let engine: Arc<dyn KvEngine> = fail_stop;
        anyhow::ensure!(config.peers.contains_key(&config.id), "--peers must include this node's own id {}", config.id);
        let moved = log_store::migrate_ungrouped(engine.as_ref(), METADATA_GROUP)?;
        if moved > 0 {
            info!(node_id = config.id, moved, "moved the raft keys of an older layout under the metadata group");
        }
        let mut log_store = LogStore::new(engine.clone(), METADATA_GROUP);
        let initialized = log_store.is_initialized()?;
        let floor = {
            use openraft::storage::RaftLogStorage;
            let vote = log_store.read_vote().await?;
            let last_log_index = log_store.get_log_state().await?.last_log_id.map(|id| id.index);
            RestartFloor::at_startup(config.id, vote, last_log_index)
        };
        let state = MetaState::new(engine, health.clone());
        let state_machine = StateMachine::open(state.clone())?;
        if let Some(stored) = state.settings.borrow().as_ref() {
            if let Some(why) = super::settings::mismatch(&super::settings::from_config(&config.leases), stored) {
                anyhow::bail!("{why}");
            }
        }
        let channels = Channels::default();
        let network = Network::new(channels.clone(), METADATA_GROUP);
        let raft = MetaRaft::new(config.id, raft_config(&config)?, network, log_store, state_machine).await?;

        if let Some(floor) = floor {
            info!(node_id = config.id, vote = %floor.vote, last_log_index = floor.last_log_index, "restarting as the leader of its stored term; reads wait for the log found at startup");
        }
        let clock = Clock::new(config.clock);
        let metadata = MetadataService::new(
            config.id,
            raft.clone(),
            state.clone(),
            floor,
            config.leases,
            clock,
            crate::block::Maintenance { scrub: config.scrub, gc: config.gc },
        );
        {
            let (raft, node_id) = (raft.clone(), config.id);
            tokio::spawn(async move {
                health.stopped().await;
                tracing::error!(node_id, "stopping raft after a storage failure");
                let _ = raft.shutdown().await;
            });
        }
        let service = metadata.clone();
        let contact = LeaderContact::new(clock);
        tokio::spawn(prompt_election::watch(raft.clone(), METADATA_GROUP, contact.clone(), channels.clone()));
        let router = tonic::transport::Server::builder()
            .initial_stream_window_size(cffs_proto::limits::HTTP2_STREAM_WINDOW_BYTES)
            .initial_connection_window_size(cffs_proto::limits::HTTP2_CONNECTION_WINDOW_BYTES)
            .max_frame_size(cffs_proto::limits::HTTP2_MAX_FRAME_BYTES)
            .add_service(
                cffs_proto::metadata_server::MetadataServer::new(metadata)
                    .max_decoding_message_size(RPC_MESSAGE_BYTES_MAX)
                    .max_encoding_message_size(RPC_MESSAGE_BYTES_MAX),
            )
            .add_service(
                cffs_proto::raft_server::RaftServer::new(RaftService::default().with_group(
                    METADATA_GROUP,
                    raft.clone(),
                    contact,
                ))
                .max_decoding_message_size(RPC_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(RPC_MESSAGE_BYTES_MAX),
            )
            .add_optional_service(config.block_service.clone().map(|service| service.server()));
        #[cfg(not(madsim))]
        let router = router.add_service(grpc_health(service.clone()));
        let listen = config.listen;
        tokio::spawn(async move {
            if let Err(error) = router.serve(listen).await {
                tracing::error!(%error, %listen, "metadata server stopped");
            }
        });
        info!(node_id = config.id, %listen, initialized, "metadata replica started");

        let lowest = *config.peers.keys().next().expect("peers is not empty");
        if !initialized && config.id == lowest {
            let raft = raft.clone();
            let peers = config.peers.clone();
            let id = config.id;
            tokio::spawn(async move { bootstrap(id, raft, peers, channels).await });
        }
        #[cfg(madsim)]
        {
            let raft = raft.clone();
            tokio::spawn(async move { buggify_background(raft).await });
        }
        Ok(MetaNode { raft, service, block_service: config.block_service })
    }
}

/// The standard gRPC health service (`grpc.health.v1.Health`): the whole server ("") and
/// `cffs.v1.Metadata` are SERVING while the replica's own health check passes (its storage
/// works and it knows a leader), re-read every second.
#[cfg(not(madsim))]
fn grpc_health(
    service: MetadataService,
) -> tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health> {
    let (reporter, server) = tonic_health::server::health_reporter();
    tokio::spawn(async move {
        let mut last = None;
        loop {
            let serving = service.health().healthy;
            if last != Some(serving) {
                let status = match serving {
                    true => tonic_health::ServingStatus::Serving,
                    false => tonic_health::ServingStatus::NotServing,
                };
                reporter.set_service_status("", status).await;
                reporter.set_service_status("cffs.v1.Metadata", status).await;
                last = Some(serving);
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    });
    server
}

/// Initializes a new cluster from the lowest-id node, unless a peer already belongs to one.
async fn bootstrap(id: u64, raft: MetaRaft, peers: BTreeMap<u64, String>, channels: Channels) {
    loop {
        let mut peer_initialized = false;
        for (peer, addr) in peers.iter().filter(|(peer, _)| **peer != id) {
            let probe = channels.probe(addr, METADATA_GROUP, Duration::from_secs(1)).await;
            if probe.is_some_and(|probe| probe.initialized) {
                info!(peer, "peer belongs to a cluster already; not bootstrapping");
                peer_initialized = true;
            }
        }
        if peer_initialized {
            return;
        }
        let members: BTreeMap<u64, BasicNode> =
            peers.iter().map(|(id, addr)| (*id, BasicNode { addr: addr.clone() })).collect();
        match raft.initialize(members).await {
            Ok(()) => {
                info!(node_id = id, voters = peers.len(), "cluster initialized");
                return;
            }
            Err(error) => {
                if raft.metrics().borrow().last_log_index.is_some() {
                    return;
                }
                warn!(%error, "cluster initialization failed; retrying");
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Snapshots at odd moments and forced elections, when those buggify sites are armed.
#[cfg(madsim)]
async fn buggify_background(raft: MetaRaft) {
    use crate::buggify::{fire, Site};
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if fire(Site::SnapshotNow, 0.2) {
            let _ = raft.trigger().snapshot().await;
        }
        if fire(Site::ForceElection, 0.01) {
            let _ = raft.trigger().elect().await;
        }
    }
}
