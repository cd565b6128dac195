//! Command line of `cffs-server`.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use cffs_server::block::file_store::FileBlockStore;
use cffs_server::block::node::BlockNode;
use cffs_server::block::service::BlockService;
use cffs_server::config::{self, BlockSettings, LogFormat, MetaSettings, RawConfig};
use cffs_server::http;
use cffs_server::metadata::node::{MetaNode, MetaNodeConfig};
use cffs_server::storage::rocks::RocksEngine;
use clap::{Args, Parser, Subcommand};

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
    /// Start every replica of a new cluster with the same peers; the lowest id initializes
    /// the cluster. A restarted replica rejoins from its data directory and never
    /// re-initializes. Settings come from --config (TOML; see ops/config/), overridden by
    /// CFFS_* environment variables, overridden by flags.
    Meta(NodeArgs),
    /// Run one block server: stores file data as immutable, checksummed blocks.
    ///
    /// A block server joins the cluster when a block group naming it is added
    /// (`cffs cluster add-block-group ID=HOST:PORT,ID=HOST:PORT,ID=HOST:PORT`). Takes id,
    /// listen, metrics_listen, data_listen, data_dir and log_format (file, CFFS_* or flags).
    Block(NodeArgs),
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
        /// (Their /metrics and /health are served over HTTP at these ports plus 1000.)
        #[arg(long, default_value_t = 7101, value_parser = clap::value_parser!(u16).range(1..=64_000))]
        base_port: u16,
        /// Block size of the cluster's files, in bytes (set when the cluster is created).
        #[arg(long, default_value_t = cffs_proto::limits::BLOCK_SIZE_DEFAULT, value_parser = parse_block_size)]
        block_size: u32,
    },
}

/// A node's settings as flags and environment (each optional: the config file may give it).
#[derive(Args)]
struct NodeArgs {
    /// A TOML file of this node's settings (keys as the flags, with `_`; lease, scrub and gc
    /// settings in [leases], [scrub], [gc] tables; peers in a [peers] table of ID = "HOST:PORT").
    #[arg(long, env = "CFFS_CONFIG")]
    config: Option<PathBuf>,
    /// This node's id: a positive integer (a replica's is listed in its peers).
    #[arg(long, env = "CFFS_ID")]
    id: Option<u64>,
    /// Address to listen on for gRPC, IP:PORT (e.g. 0.0.0.0:7100).
    #[arg(long, env = "CFFS_LISTEN")]
    listen: Option<String>,
    /// Address to serve Prometheus /metrics and /health on over HTTP, IP:PORT (none when unset).
    #[arg(long, env = "CFFS_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// Address of the block data port, IP:PORT: block writes over plain TCP, without gRPC's
    /// copies (docs/design/blocks.md). Default: the --listen IP, any free port, which the
    /// server announces to clients (a replica has one only with --block-dir).
    #[arg(long, env = "CFFS_DATA_LISTEN")]
    data_listen: Option<String>,
    /// Directory of this node's data (created if missing): a replica's RocksDB, a block
    /// server's blocks.
    #[arg(long, env = "CFFS_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Log lines as text or json (one object per line). The level filter is RUST_LOG.
    #[arg(long, env = "CFFS_LOG_FORMAT")]
    log_format: Option<String>,
    /// Replica only. Every replica of the initial cluster: ID=HOST:PORT,ID=HOST:PORT,...
    #[arg(long, env = "CFFS_PEERS", value_parser = config::peers_from_list)]
    peers: Option<BTreeMap<String, String>>,
    /// Replica only. Also serve as a block server (block server id = --id), on the same
    /// address, with its blocks in this directory.
    #[arg(long, env = "CFFS_BLOCK_DIR")]
    block_dir: Option<PathBuf>,
    /// Replica only. Client lease duration in milliseconds (50..=60000; default 250): how
    /// long a cached item stays good without news. A cluster-wide setting: the first leader
    /// stores it, and a replica given another value refuses to start.
    #[arg(long, env = "CFFS_LEASE_MS")]
    lease_ms: Option<u64>,
    /// Replica only. Bound on clock rate error (parts per million) that leases allow for;
    /// cluster-wide like --lease-ms.
    #[arg(long, env = "CFFS_LEASE_DRIFT_PPM")]
    lease_drift_ppm: Option<u32>,
    /// Replica only. The scrubber's rate (it runs on the leader, re-reading every copy of every
    /// block and repairing bad or missing ones): bytes read per second (default 32 MiB/s).
    #[arg(long, env = "CFFS_SCRUB_BYTES_PER_SEC")]
    scrub_bytes_per_sec: Option<u64>,
    /// Replica only. Seconds between two scrub passes (default 60).
    #[arg(long, env = "CFFS_SCRUB_PAUSE_SECS")]
    scrub_pause_secs: Option<u64>,
    /// Replica only. Blocks unreferenced and stored longer ago than this are deleted by the
    /// collector (default 3600). Safety does not depend on it (docs/design/blocks.md).
    #[arg(long, env = "CFFS_GC_GRACE_SECS")]
    gc_grace_secs: Option<u64>,
    /// Replica only. Seconds between two collection rounds (default 300).
    #[arg(long, env = "CFFS_GC_INTERVAL_SECS")]
    gc_interval_secs: Option<u64>,
}

impl NodeArgs {
    /// The flags and environment over the config file, not yet validated.
    fn raw(self) -> anyhow::Result<RawConfig> {
        let file = match &self.config {
            Some(path) => RawConfig::load(path)?,
            None => RawConfig::default(),
        };
        let flags = RawConfig {
            id: self.id,
            listen: self.listen,
            metrics_listen: self.metrics_listen,
            data_listen: self.data_listen,
            data_dir: self.data_dir,
            block_dir: self.block_dir,
            peers: self.peers,
            log_format: self.log_format,
            leases: config::RawLeases { duration_ms: self.lease_ms, drift_ppm: self.lease_drift_ppm },
            scrub: config::RawScrub { bytes_per_sec: self.scrub_bytes_per_sec, pause_secs: self.scrub_pause_secs },
            gc: config::RawGc { grace_secs: self.gc_grace_secs, interval_secs: self.gc_interval_secs },
        };
        Ok(flags.over(file))
    }
}

fn parse_block_size(text: &str) -> Result<u32, String> {
    let size: u32 = text.parse().map_err(|_| format!("'{text}' is not a number of bytes"))?;
    if !cffs_proto::limits::is_valid_block_size(size) {
        return Err(format!("{size} is not a power of two from 4096 to 8388608"));
    }
    Ok(size)
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Settings are validated before logging starts: its format is one of them.
    let command = match Validated::from(cli.command) {
        Ok(command) => command,
        Err(error) => {
            eprintln!("cffs-server: {error:#}");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,openraft=warn".into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match command.log_format() {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(async {
        match command {
            Validated::Meta(settings) => run_meta(settings).await,
            Validated::Block(settings) => run_block(settings).await,
            Validated::Dev { data_dir, base_port, block_size } => run_dev(&data_dir, base_port, block_size).await,
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

/// A role with its settings validated.
enum Validated {
    Meta(MetaSettings),
    Block(BlockSettings),
    Dev { data_dir: PathBuf, base_port: u16, block_size: u32 },
}

impl Validated {
    fn from(role: Role) -> anyhow::Result<Validated> {
        Ok(match role {
            Role::Meta(args) => Validated::Meta(args.raw()?.into_meta()?),
            Role::Block(args) => Validated::Block(args.raw()?.into_block()?),
            Role::Dev { data_dir, base_port, block_size } => Validated::Dev { data_dir, base_port, block_size },
        })
    }

    fn log_format(&self) -> LogFormat {
        match self {
            Validated::Meta(settings) => settings.log_format,
            Validated::Block(settings) => settings.log_format,
            Validated::Dev { .. } => LogFormat::Text,
        }
    }
}

async fn run_meta(settings: MetaSettings) -> anyhow::Result<()> {
    let data_dir = &settings.data_dir;
    std::fs::create_dir_all(data_dir).with_context(|| format!("create data directory {}", data_dir.display()))?;
    let engine = RocksEngine::open(&data_dir.join("rocksdb"))
        .with_context(|| format!("open data directory {}", data_dir.display()))?;
    let mut config = MetaNodeConfig::new(settings.id, settings.listen, settings.peers.clone());
    config.leases = settings.leases;
    config.scrub = settings.scrub;
    config.gc = settings.gc;
    if let Some(block_dir) = &settings.block_dir {
        let blocks = BlockService::new(settings.id, open_block_store(block_dir)?);
        blocks.start_data_port(settings.data_listen).await?;
        config.block_service = Some(blocks);
    }
    let node = Arc::new(MetaNode::start(config, Arc::new(engine)).await?);
    if let Some(listen) = settings.metrics_listen {
        let (metrics, health) = (node.clone(), node.clone());
        http::serve(listen, Arc::new(move || metrics.metrics_text()), Arc::new(move || health.health())).await?;
    }
    shutdown_signal().await;
    tracing::info!(node_id = settings.id, "shutting down");
    node.raft.shutdown().await.ok();
    Ok(())
}

fn open_block_store(dir: &Path) -> anyhow::Result<Arc<FileBlockStore>> {
    let store = FileBlockStore::open(dir).with_context(|| format!("open block directory {}", dir.display()))?;
    Ok(Arc::new(store))
}

async fn run_block(settings: BlockSettings) -> anyhow::Result<()> {
    let node = Arc::new(
        BlockNode::start(settings.id, settings.listen, settings.data_listen, open_block_store(&settings.data_dir)?)
            .await?,
    );
    if let Some(listen) = settings.metrics_listen {
        let (metrics, health) = (node.clone(), node.clone());
        http::serve(listen, Arc::new(move || metrics.metrics_text()), Arc::new(move || health.health())).await?;
    }
    shutdown_signal().await;
    tracing::info!(server_id = settings.id, "shutting down");
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

/// A dev process's HTTP port (/metrics, /health) is its gRPC port plus this.
const DEV_METRICS_PORT_OFFSET: u16 = 1000;

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
            "--metrics-listen".into(),
            format!("127.0.0.1:{}", port + DEV_METRICS_PORT_OFFSET),
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
            "--metrics-listen".into(),
            format!("127.0.0.1:{}", port + DEV_METRICS_PORT_OFFSET),
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
            let first = base_port + DEV_METRICS_PORT_OFFSET;
            println!("metrics and health: http://127.0.0.1:{first}/metrics .. :{}/metrics, /health", first + 5);
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
