//! Command line of `cffs-server`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use cffs_server::constants::{LEASE_DRIFT_PPM_DEFAULT, LEASE_DURATION_DEFAULT};
use cffs_server::metadata::leases::LeaseConfig;
use cffs_server::metadata::node::{MetaNode, MetaNodeConfig};
use cffs_server::storage::rocks::RocksEngine;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cffs-server", version, about = "CFFS server: metadata replicas of a CFFS cluster")]
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
    },
    /// Run a local three-replica cluster on loopback, as three `meta` processes.
    ///
    /// Data goes under --data-dir (one folder per replica, and their logs); starting again
    /// keeps the data. Ctrl-C stops all three.
    Dev {
        #[arg(long, default_value = "./cffs-data")]
        data_dir: PathBuf,
        /// The replicas listen on 127.0.0.1 at this port and the next two.
        #[arg(long, default_value_t = 7101)]
        base_port: u16,
    },
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
            Role::Meta { id, listen, peers, data_dir, lease_ms, lease_drift_ppm } => {
                let leases = LeaseConfig { duration: Duration::from_millis(lease_ms), drift_ppm: lease_drift_ppm };
                run_meta(id, listen, peers, &data_dir, leases).await
            }
            Role::Dev { data_dir, base_port } => run_dev(&data_dir, base_port).await,
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
) -> anyhow::Result<()> {
    if !peers.contains_key(&id) {
        bail!("--peers does not list this replica's id {id}");
    }
    std::fs::create_dir_all(data_dir).with_context(|| format!("create data directory {}", data_dir.display()))?;
    let engine = RocksEngine::open(&data_dir.join("rocksdb"))
        .with_context(|| format!("open data directory {}", data_dir.display()))?;
    let mut config = MetaNodeConfig::new(id, listen, peers);
    config.leases = leases;
    let node = MetaNode::start(config, Arc::new(engine)).await?;
    shutdown_signal().await;
    tracing::info!(node_id = id, "shutting down");
    node.raft.shutdown().await.ok();
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

async fn run_dev(data_dir: &Path, base_port: u16) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir).with_context(|| format!("create {}", data_dir.display()))?;
    let exe = std::env::current_exe().context("find the cffs-server executable")?;
    let ports: Vec<u16> = (0..3).map(|i| base_port + i).collect();
    let peers =
        ports.iter().enumerate().map(|(i, port)| format!("{}=127.0.0.1:{port}", i + 1)).collect::<Vec<_>>().join(",");
    let mut children: Vec<Child> = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let id = i + 1;
        let node_dir = data_dir.join(format!("meta{id}"));
        let log_path = data_dir.join(format!("meta{id}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("open {}", log_path.display()))?;
        let child = Command::new(&exe)
            .args(["meta", "--id", &id.to_string(), "--listen", &format!("127.0.0.1:{port}")])
            .args(["--peers", &peers, "--data-dir"])
            .arg(&node_dir)
            // Own process group: Ctrl-C reaches `dev`, which then stops the replicas in order.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start replica {id}"))?;
        children.push(child);
    }
    let endpoints = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
    let ready = wait_for_leader(&endpoints, &mut children).await;
    match ready {
        Ok(leader) => {
            println!("CFFS dev cluster: 3 metadata replicas, leader is replica {leader}");
            println!("data and logs: {}", data_dir.display());
            println!();
            println!("  export CFFS_ENDPOINTS={endpoints}");
            println!("  cffs mkdir /hello && cffs ls -l /");
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

async fn wait_for_leader(endpoints: &str, children: &mut [Child]) -> anyhow::Result<u64> {
    for _ in 0..300 {
        for (i, child) in children.iter_mut().enumerate() {
            if let Some(status) = child.try_wait()? {
                bail!("replica {} exited during startup ({status}); see its log in the data directory", i + 1);
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

async fn watch_children(children: &mut [Child]) -> anyhow::Error {
    loop {
        for (i, child) in children.iter_mut().enumerate() {
            if let Ok(Some(status)) = child.try_wait() {
                return anyhow::anyhow!("replica {} exited ({status}); stopping the cluster", i + 1);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Asks every replica to stop (SIGTERM), then kills what is left after five seconds.
async fn stop_children(children: &mut [Child]) {
    for child in children.iter() {
        // The child may have exited already; then there is nothing to signal. kill(2)
        // directly: a minimal image may have no `kill` program.
        let _ = rustix::process::kill_process(rustix::process::Pid::from_child(child), rustix::process::Signal::TERM);
    }
    for _ in 0..50 {
        if children.iter_mut().all(|c| matches!(c.try_wait(), Ok(Some(_)))) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for child in children.iter_mut() {
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
