//! Starts real `cffs-server meta` processes on loopback ports, each with its own data
//! directory (and, for a cluster with block groups, `cffs-server block` processes), and
//! stops them (SIGKILL) when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cffs_client::Client;

pub struct ProcessCluster {
    pub ports: Vec<u16>,
    /// Each replica's HTTP port (/metrics, /health), then each block-only server's.
    pub metrics_ports: Vec<u16>,
    children: Vec<Option<Child>>,
    pub dir: tempfile::TempDir,
    peers: String,
    /// Replicas serve block group 1 too (`--block-dir`).
    with_blocks: bool,
    /// The collector's grace period (`--gc-grace-secs`).
    gc_grace_secs: u64,
    /// Block-only servers (ids 4, 5, 6: block group 2; 7 and up: started later).
    pub block_ports: Vec<u16>,
    block_children: Vec<Option<Child>>,
}

/// A port no one listens on, below Linux's ephemeral range (32768 and up): a port the OS
/// hands out for `bind(0)` may next be taken as the local port of some outgoing connection
/// (the tests open many), and then a replica cannot listen on it. Each test process walks
/// its own stretch of ports, so that parallel test binaries rarely meet.
fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let base = 10_000 + (std::process::id() % 200) * 100;
    loop {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = (base + n % 22_000) % 22_000 + 10_000;
        if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
}

impl ProcessCluster {
    pub fn start(replicas: usize) -> ProcessCluster {
        let ports: Vec<u16> = (0..replicas).map(|_| free_port()).collect();
        let peers =
            ports.iter().enumerate().map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1)).collect::<Vec<_>>().join(",");
        let dir = tempfile::tempdir().expect("temp dir");
        let metrics_ports: Vec<u16> = (0..ports.len() + 3).map(|_| free_port()).collect();
        let mut cluster = ProcessCluster {
            ports,
            metrics_ports,
            children: Vec::new(),
            dir,
            peers,
            with_blocks: false,
            gc_grace_secs: 3600,
            block_ports: Vec::new(),
            block_children: Vec::new(),
        };
        for id in 1..=replicas as u64 {
            let child = cluster.spawn(id);
            cluster.children.push(Some(child));
        }
        cluster
    }

    /// Three replicas that are also block servers 1-3 (group 1) and block servers 4-6
    /// (group 2), with `block_size` bytes per block; returns once both groups are added.
    pub async fn start_with_blocks(block_size: u32) -> ProcessCluster {
        Self::start_with_blocks_gc(block_size, 3600).await
    }

    /// `start_with_blocks`, with the collector's grace period (it runs every second).
    pub async fn start_with_blocks_gc(block_size: u32, gc_grace_secs: u64) -> ProcessCluster {
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let peers =
            ports.iter().enumerate().map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1)).collect::<Vec<_>>().join(",");
        let dir = tempfile::tempdir().expect("temp dir");
        let block_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let metrics_ports: Vec<u16> = (0..ports.len() + 3).map(|_| free_port()).collect();
        let mut cluster = ProcessCluster {
            ports,
            metrics_ports,
            children: Vec::new(),
            dir,
            peers,
            with_blocks: true,
            gc_grace_secs,
            block_ports,
            block_children: Vec::new(),
        };
        for id in 1..=3 {
            let child = cluster.spawn(id);
            cluster.children.push(Some(child));
        }
        for id in 4..=6 {
            let child = cluster.spawn_block(id);
            cluster.block_children.push(Some(child));
        }
        cluster.wait_for_leader(Duration::from_secs(60)).await;
        let client = cluster.client();
        let member = |id: u64, port: u16| cffs_proto::BlockMember { id, addr: format!("127.0.0.1:{port}") };
        let first: Vec<_> = cluster.ports.iter().enumerate().map(|(i, p)| member(i as u64 + 1, *p)).collect();
        let second: Vec<_> = cluster.block_ports.iter().enumerate().map(|(i, p)| member(i as u64 + 4, *p)).collect();
        client.add_block_group(first, block_size).await.expect("add block group 1");
        client.add_block_group(second, 0).await.expect("add block group 2");
        cluster
    }

    /// The directory of block server `id`'s blocks (1-3: in a replica's folder).
    pub fn block_dir(&self, id: u64) -> PathBuf {
        match id {
            1..=3 => self.data_dir(id).join("blocks"),
            _ => self.dir.path().join(format!("block{id}")),
        }
    }

    /// The address of block server `id`.
    pub fn block_addr(&self, id: u64) -> String {
        match id {
            1..=3 => format!("127.0.0.1:{}", self.ports[id as usize - 1]),
            _ => format!("127.0.0.1:{}", self.block_ports[id as usize - 4]),
        }
    }

    fn spawn_block(&self, id: u64) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("block{id}.log")))
            .expect("open log");
        Command::new(env!("CARGO_BIN_EXE_cffs-server"))
            .args(["block", "--id", &id.to_string(), "--listen", &self.block_addr(id), "--data-dir"])
            .arg(self.block_dir(id))
            .args(["--metrics-listen", &format!("127.0.0.1:{}", self.metrics_ports[id as usize - 1])])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start cffs-server block")
    }

    /// Starts one more block-only server (the next id, 7 and up, on a new port, with an empty
    /// directory); returns its id and address. It is in no group until the map names it
    /// (`cffs cluster replace-node --block-group`).
    pub fn start_extra_block_server(&mut self) -> (u64, String) {
        let id = 4 + self.block_ports.len() as u64;
        self.block_ports.push(free_port());
        while self.metrics_ports.len() < id as usize {
            self.metrics_ports.push(free_port());
        }
        let child = self.spawn_block(id);
        self.block_children.push(Some(child));
        (id, self.block_addr(id))
    }

    /// SIGKILL of block-only server `id` (4 and up).
    pub fn kill_block(&mut self, id: u64) {
        if let Some(mut child) = self.block_children[id as usize - 4].take() {
            child.kill().expect("kill block server");
            child.wait().expect("reap block server");
        }
    }

    pub fn restart_block(&mut self, id: u64) {
        assert!(self.block_children[id as usize - 4].is_none(), "block server {id} is running");
        let child = self.spawn_block(id);
        self.block_children[id as usize - 4] = Some(child);
    }

    fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("meta{id}"))
    }

    fn spawn(&self, id: u64) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("meta{id}.log")))
            .expect("open log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_cffs-server"));
        command
            .args(["meta", "--id", &id.to_string(), "--listen", &format!("127.0.0.1:{}", self.ports[id as usize - 1])])
            .args(["--peers", &self.peers, "--data-dir"])
            .arg(self.data_dir(id))
            .args(["--metrics-listen", &format!("127.0.0.1:{}", self.metrics_ports[id as usize - 1])]);
        if self.with_blocks {
            // A scrub pass every second, so that tests see repairs soon.
            command.arg("--block-dir").arg(self.block_dir(id)).args(["--scrub-pause-secs", "1"]);
            command.args(["--gc-grace-secs", &self.gc_grace_secs.to_string(), "--gc-interval-secs", "1"]);
        }
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start cffs-server")
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect()
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.endpoints()).expect("valid endpoints")
    }

    /// Starts one more replica (the next id, on a new port, listing the others and itself as
    /// peers, so it never bootstraps a cluster of its own); returns its id and address. It is
    /// not a member until added (`cffs cluster add-node`).
    pub fn start_extra_replica(&mut self) -> (u64, String) {
        let id = self.ports.len() as u64 + 1;
        let port = free_port();
        self.ports.push(port);
        while self.metrics_ports.len() < self.ports.len() {
            self.metrics_ports.push(free_port());
        }
        let addr = format!("127.0.0.1:{port}");
        self.peers = format!("{},{id}={addr}", self.peers);
        let child = self.spawn(id);
        self.children.push(Some(child));
        (id, addr)
    }

    /// SIGKILL: the process dies at once, with whatever it had not synced in the page cache.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.children[id as usize - 1].take() {
            child.kill().expect("kill replica");
            child.wait().expect("reap replica");
        }
    }

    pub fn restart(&mut self, id: u64) {
        assert!(self.children[id as usize - 1].is_none(), "replica {id} is running");
        let child = self.spawn(id);
        self.children[id as usize - 1] = Some(child);
    }

    /// Waits until some replica reports a leader that has applied an entry.
    pub async fn wait_for_leader(&self, limit: Duration) -> u64 {
        let client = self.client();
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            for (_, status) in client.cluster_status_all().await {
                if let Ok(status) = status {
                    if status.leader_id != 0 && status.last_applied > 0 {
                        return status.leader_id;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The logs go with the temporary directory: their ends go into the message.
        let tails: String = self
            .logs()
            .lines()
            .filter(|l| l.starts_with("---") || l.contains("ERROR") || l.contains("WARN") || l.contains("rror"))
            .take(40)
            .collect::<Vec<_>>()
            .join("\n");
        panic!("no leader within {limit:?}; from the logs:\n{tails}");
    }

    /// An HTTP GET of `path` from node `id`'s metrics port: (status code, body).
    pub fn http_get(&self, id: u64, path: &str) -> std::io::Result<(u16, String)> {
        use std::io::{Read, Write};
        let port = self.metrics_ports[id as usize - 1];
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let code = response.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = response.split_once("\r\n\r\n").map_or(String::new(), |(_, body)| body.to_string());
        Ok((code, body))
    }

    pub fn logs(&self) -> String {
        let mut text = String::new();
        for id in 1..=self.ports.len() {
            let path = self.dir.path().join(format!("meta{id}.log"));
            text.push_str(&format!("--- meta{id}.log\n{}\n", std::fs::read_to_string(path).unwrap_or_default()));
        }
        for id in 4..4 + self.block_ports.len() as u64 {
            let path = self.dir.path().join(format!("block{id}.log"));
            text.push_str(&format!("--- block{id}.log\n{}\n", std::fs::read_to_string(path).unwrap_or_default()));
        }
        text
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().chain(self.block_children.iter_mut()).flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
