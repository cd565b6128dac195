//! Command line of `cffs-server`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use cffs_server::block::file_store::FileBlockStore;
use cffs_server::block::gc::GcConfig;
use cffs_server::block::node::BlockNode;
use cffs_server::block::scrub::ScrubConfig;
use cffs_server::block::service::BlockService;
use cffs_server::block::Maintenance;
use cffs_server::constants::{LEASE_DRIFT_PPM_DEFAULT, LEASE_DURATION_DEFAULT};
use cffs_server::metadata::leases::LeaseConfig;
use cffs_server::metadata::node::{MetaNode, MetaNodeConfig};
use cffs_server::storage::rocks::RocksEngine;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cffs-server", version, about = "CFFS server: metadata replicas and block servers of a CFFS cluster")]
struct Cli {
    #[command(subcommand)]
    command: Role,
}

#[derive(Subcommand)]
enum Role {
    /// Run one metadata replica (one member of the metadata Raft group).
    ///
    /// Start every replica of a new cluster with the same --peers; the lowest id initializes
    /// the cluster. A restarted replica rejoins from its --data-dir and never re-initializes.
    Meta {
        /// This replica's id: a positive integer listed in --peers.
        #[arg(long)]
        id: u64,
        /// Address to listen on, HOST:PORT (e.g. 0.0.0.0:7101).
        #[arg(long)]
        listen: SocketAddr,
        /// Every replica of the initial cluster: ID=HOST:PORT,ID=HOST:PORT,...
        #[arg(long, value_parser = parse_peers)]
        peers: BTreeMap<u64, String>,
        /// Directory of this replica's RocksDB data (created if missing).
        #[arg(long)]
        data_dir: PathBuf,
        /// Client lease duration in milliseconds: how long a cached item stays good without
        /// news; also how long a writer may wait for a silent client, and a new leader for
        /// its predecessor's leases. Every replica should use the same value.
        #[arg(long, default_value_t = LEASE_DURATION_DEFAULT.as_millis() as u64,
              value_parser = clap::value_parser!(u64).range(50..=60_000))]
        lease_ms: u64,
        /// Bound on clock rate error (parts per million) that leases allow for.
        #[arg(long, default_value_t = LEASE_DRIFT_PPM_DEFAULT,
              value_parser = clap::value_parser!(u32).range(0..=500_000))]
        lease_drift_ppm: u32,
        /// Also serve as a block server (block server id = --id), on the same address, with
        /// its blocks in this directory. Add it to a block group with `cffs cluster
        /// add-block-group`.
        #[arg(long)]
        block_dir: Option<PathBuf>,
        /// The scrubber's rate (it runs on the leader, re-reading every copy of every block
        /// and repairing bad or missing ones): bytes of copies read per second.
        #[arg(long, default_value_t = 32 * 1024 * 1024)]
        scrub_bytes_per_sec: u64,
        /// Seconds between two scrub passes.
        #[arg(long, default_value_t = 60)]
        scrub_pause_secs: u64,
        /// Blocks unreferenced and stored longer ago than this are deleted by the collector
        /// (it runs on the leader). Safety does not depend on it (docs/design/blocks.md); it
        /// keeps the collector from aborting slow transactions.
        #[arg(long, default_value_t = 3600)]
        gc_grace_secs: u64,
        /// Seconds between two collection rounds.
        #[arg(long, default_value_t = 300)]
        gc_interval_secs: u64,
    },
    /// Run one block server: stores file data as immutable, checksummed blocks.
    ///
    /// A block server joins the cluster when a block group naming it is added
    /// (`cffs cluster add-block-group ID=HOST:PORT,ID=HOST:PORT,ID=HOST:PORT`).
    Block {
        /// This block server's id: a positive integer, unique among block servers.
        #[arg(long)]
        id: u64,
        /// Address to listen on, HOST:PORT.
        #[arg(long)]
        listen: SocketAddr,
        /// Directory of this server's blocks (created if missing).
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Run a local cluster on loopback: three metadata replicas that are also block servers
    /// (block group 1), and three more block servers (block group 2), as six processes.
    ///
    /// Data goes under --data-dir (one folder per process, and their logs); starting again
    /// keeps the data. Ctrl-C stops them all.
    Dev {
        #[arg(long, default_value = "./cffs-data")]
        data_dir: PathBuf,
        /// The replicas listen on 127.0.0.1 at this port and the next two, the other block
        /// servers on the three after.
        #[arg(long, default_value_t = 7101)]
        base_port: u16,
        /// Block size of the cluster's files, in bytes (set when the cluster is created).
        #[arg(long, default_value_t = cffs_proto::limits::BLOCK_SIZE_DEFAULT, value_parser = parse_block_size)]
        block_size: u32,
    },
}

fn parse_block_size(text: &str) -> Result<u32, String> {
    let size: u32 = text.parse().map_err(|_| format!("'{text}' is not a number of bytes"))?;
    if !cffs_proto::limits::is_valid_block_size(size) {
        return Err(format!("{size} is not a power of two from 4096 to 8388608"));
    }
    Ok(size)
}

fn parse_peers(text: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut peers = BTreeMap::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let (id, addr) = part.split_once('=').ok_or_else(|| format!("'{part}' is not ID=HOST:PORT"))?;
        let id: u64 = id.trim().parse().map_err(|_| format!("'{id}' is not a replica id"))?;
        if id == 0 {
            return Err("replica ids start at 1".into());
        }
        if !addr.contains(':') {
            return Err(format!("'{addr}' is not HOST:PORT"));
        }
        if peers.insert(id, addr.trim().to_string()).is_some() {
            return Err(format!("replica id {id} is listed twice"));
        }
    }
    if peers.is_empty() {
        return Err("no peers given".into());
    }
    Ok(peers)
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Role::Meta {
                id,
                listen,
                peers,
                data_dir,
                lease_ms,
                lease_drift_ppm,
                block_dir,
                scrub_bytes_per_sec,
                scrub_pause_secs,
                gc_grace_secs,
                gc_interval_secs,
            } => {
                let leases = LeaseConfig { duration: Duration::from_millis(lease_ms), drift_ppm: lease_drift_ppm };
                let scrub = ScrubConfig {
                    bytes_per_sec: scrub_bytes_per_sec,
                    pass_pause: Duration::from_secs(scrub_pause_secs.max(1)),
                };
                let gc = GcConfig {
                    grace: Duration::from_secs(gc_grace_secs),
                    interval: Duration::from_secs(gc_interval_secs.max(1)),
                };
                run_meta(id, listen, peers, &data_dir, leases, block_dir.as_deref(), Maintenance { scrub, gc }).await
            }
            Role::Block { id, listen, data_dir } => run_block(id, listen, &data_dir).await,
            Role::Dev { data_dir, base_port, block_size } => run_dev(&data_dir, base_port, block_size).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cffs-server: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_meta(
    id: u64,
    listen: SocketAddr,
    peers: BTreeMap<u64, String>,
    data_dir: &Path,
    leases: LeaseConfig,
    block_dir: Option<&Path>,
    maintenance: Maintenance,
) -> anyhow::Result<()> {
    if !peers.contains_key(&id) {
        bail!("--peers does not list this replica's id {id}");
    }
    std::fs::create_dir_all(data_dir).with_context(|| format!("create data directory {}", data_dir.display()))?;
    let engine = RocksEngine::open(&data_dir.join("rocksdb"))
        .with_context(|| format!("open data directory {}", data_dir.display()))?;
    let mut config = MetaNodeConfig::new(id, listen, peers);
    config.leases = leases;
    config.scrub = maintenance.scrub;
    config.gc = maintenance.gc;
    if let Some(block_dir) = block_dir {
        config.block_service = Some(BlockService::new(id, open_block_store(block_dir)?));
    }
    let node = MetaNode::start(config, Arc::new(engine)).await?;
    shutdown_signal().await;
    tracing::info!(node_id = id, "shutting down");
    node.raft.shutdown().await.ok();
    Ok(())
}

fn open_block_store(dir: &Path) -> anyhow::Result<Arc<FileBlockStore>> {
    let store = FileBlockStore::open(dir).with_context(|| format!("open block directory {}", dir.display()))?;
    Ok(Arc::new(store))
}

async fn run_block(id: u64, listen: SocketAddr, data_dir: &Path) -> anyhow::Result<()> {
    if id == 0 {
        bail!("block server ids start at 1");
    }
    BlockNode::start(id, listen, open_block_store(data_dir)?).await?;
    shutdown_signal().await;
    tracing::info!(server_id = id, "shutting down");
    Ok(())
}

async fn shutdown_signal() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

async fn run_dev(data_dir: &Path, base_port: u16, block_size: u32) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir).with_context(|| format!("create {}", data_dir.display()))?;
    let exe = std::env::current_exe().context("find the cffs-server executable")?;
    let meta_ports: Vec<u16> = (0..3).map(|i| base_port + i).collect();
    let block_ports: Vec<u16> = (3..6).map(|i| base_port + i).collect();
    let peers = meta_ports
        .iter()
        .enumerate()
        .map(|(i, port)| format!("{}=127.0.0.1:{port}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut children: Vec<(String, Child)> = Vec::new();
    let spawn = |name: String, args: Vec<String>, children: &mut Vec<(String, Child)>| -> anyhow::Result<()> {
        let log_path = data_dir.join(format!("{name}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("open {}", log_path.display()))?;
        let child = Command::new(&exe)
            .args(&args)
            // Own process group: Ctrl-C reaches `dev`, which then stops the others in order.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {name}"))?;
        children.push((name, child));
        Ok(())
    };
    for (i, port) in meta_ports.iter().enumerate() {
        let id = i + 1;
        let dir = |sub: &str| data_dir.join(format!("meta{id}")).join(sub).display().to_string();
        let args = vec![
            "meta".into(),
            "--id".into(),
            id.to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--peers".into(),
            peers.clone(),
            "--data-dir".into(),
            data_dir.join(format!("meta{id}")).display().to_string(),
            "--block-dir".into(),
            dir("blocks"),
        ];
        spawn(format!("meta{id}"), args, &mut children)?;
    }
    for (i, port) in block_ports.iter().enumerate() {
        let id = i + 4;
        let args = vec![
            "block".into(),
            "--id".into(),
            id.to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--data-dir".into(),
            data_dir.join(format!("block{id}")).display().to_string(),
        ];
        spawn(format!("block{id}"), args, &mut children)?;
    }
    let endpoints = meta_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
    let ready = match wait_for_leader(&endpoints, &mut children).await {
        Ok(leader) => {
            add_dev_block_groups(&endpoints, &meta_ports, &block_ports, block_size).await.map(|map| (leader, map))
        }
        Err(error) => Err(error),
    };
    match ready {
        Ok((leader, map)) => {
            println!("CFFS dev cluster: 3 metadata replicas (leader: replica {leader}), {} block groups of 3 servers, {} KiB blocks", map.groups.len(), map.block_size / 1024);
            println!("data and logs: {}", data_dir.display());
            println!();
            println!("  export CFFS_ENDPOINTS={endpoints}");
            println!("  cffs mkdir /hello && cffs ls -l /");
            println!("  cffs put ./some-big-file /hello/big && cffs get /hello/big - | sha256sum");
            println!();
            println!("Ctrl-C stops the cluster.");
        }
        Err(error) => {
            stop_children(&mut children).await;
            return Err(error);
        }
    }
    let outcome = tokio::select! {
        _ = shutdown_signal() => Ok(()),
        exited = watch_children(&mut children) => Err(exited),
    };
    stop_children(&mut children).await;
    outcome
}

/// Adds the dev cluster's two block groups, unless an earlier start added them.
async fn add_dev_block_groups(
    endpoints: &str,
    meta_ports: &[u16],
    block_ports: &[u16],
    block_size: u32,
) -> anyhow::Result<cffs_proto::ClusterMap> {
    let groups: [Vec<cffs_proto::BlockMember>; 2] = [
        meta_ports.iter().enumerate().map(|(i, p)| member(i as u64 + 1, *p)).collect(),
        block_ports.iter().enumerate().map(|(i, p)| member(i as u64 + 4, *p)).collect(),
    ];
    let mut last_error = None;
    for _ in 0..100 {
        for addr in endpoints.split(',') {
            let Ok(channel) = cffs_server::raft::network::channel(addr) else { continue };
            let mut client = cffs_proto::metadata_client::MetadataClient::new(channel);
            let map = match client.get_cluster_map(cffs_proto::GetClusterMapRequest {}).await {
                Ok(map) => map.into_inner(),
                Err(error) => {
                    last_error = Some(error.message().to_string());
                    continue;
                }
            };
            let Some(next) = groups.get(map.groups.len()) else { return Ok(map) };
            let request = cffs_proto::AddBlockGroupRequest { members: next.clone(), block_size };
            if let Err(error) = client.add_block_group(request).await {
                last_error = Some(error.message().to_string());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("could not add the block groups: {}", last_error.unwrap_or_default())
}

fn member(id: u64, port: u16) -> cffs_proto::BlockMember {
    cffs_proto::BlockMember { id, addr: format!("127.0.0.1:{port}") }
}

async fn wait_for_leader(endpoints: &str, children: &mut [(String, Child)]) -> anyhow::Result<u64> {
    for _ in 0..300 {
        for (name, child) in children.iter_mut() {
            if let Some(status) = child.try_wait()? {
                bail!("{name} exited during startup ({status}); see {name}.log in the data directory");
            }
        }
        for addr in endpoints.split(',') {
            if let Ok(channel) = cffs_server::raft::network::channel(addr) {
                let mut client = cffs_proto::metadata_client::MetadataClient::new(channel);
                let call = client.cluster_status(cffs_proto::ClusterStatusRequest {});
                if let Ok(Ok(reply)) = tokio::time::timeout(Duration::from_millis(500), call).await {
                    let status = reply.into_inner();
                    if status.leader_id != 0 && status.last_applied > 0 {
                        return Ok(status.leader_id);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the cluster elected no leader within 30 seconds")
}

async fn watch_children(children: &mut [(String, Child)]) -> anyhow::Error {
    loop {
        for (name, child) in children.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                return anyhow::anyhow!("{name} exited ({status}); stopping the cluster");
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Asks every process to stop (SIGTERM), then kills what is left after five seconds.
async fn stop_children(children: &mut [(String, Child)]) {
    for (_, child) in children.iter() {
        // The child may have exited already; then there is nothing to signal. kill(2)
        // directly: a minimal image may have no `kill` program.
        let _ = rustix::process::kill_process(rustix::process::Pid::from_child(child), rustix::process::Signal::TERM);
    }
    for _ in 0..50 {
        if children.iter_mut().all(|(_, c)| matches!(c.try_wait(), Ok(Some(_)))) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (_, child) in children.iter_mut() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_reject_bad_input() {
        let peers = parse_peers("1=127.0.0.1:7101,2=h:2").unwrap();
        assert_eq!(peers[&2], "h:2");
        for bad in ["", "1", "0=a:1", "x=a:1", "1=a:1,1=b:2", "1=nohost"] {
            assert!(parse_peers(bad).is_err(), "{bad}");
        }
    }
}
