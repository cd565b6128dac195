//! Starts real `cffs-server meta` processes on loopback ports, each with its own data
//! directory, and stops them (SIGKILL) when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cffs_client::Client;

pub struct ProcessCluster {
    pub ports: Vec<u16>,
    children: Vec<Option<Child>>,
    pub dir: tempfile::TempDir,
    peers: String,
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

impl ProcessCluster {
    pub fn start(replicas: usize) -> ProcessCluster {
        let ports: Vec<u16> = (0..replicas).map(|_| free_port()).collect();
        let peers =
            ports.iter().enumerate().map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1)).collect::<Vec<_>>().join(",");
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cluster = ProcessCluster { ports, children: Vec::new(), dir, peers };
        for id in 1..=replicas as u64 {
            let child = cluster.spawn(id);
            cluster.children.push(Some(child));
        }
        cluster
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
        Command::new(env!("CARGO_BIN_EXE_cffs-server"))
            .args(["meta", "--id", &id.to_string(), "--listen", &format!("127.0.0.1:{}", self.ports[id as usize - 1])])
            .args(["--peers", &self.peers, "--data-dir"])
            .arg(self.data_dir(id))
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
        panic!("no leader within {limit:?}; logs in {}", self.dir.path().display());
    }

    pub fn logs(&self) -> String {
        let mut text = String::new();
        for id in 1..=self.ports.len() {
            let path = self.dir.path().join(format!("meta{id}.log"));
            text.push_str(&format!("--- meta{id}.log\n{}\n", std::fs::read_to_string(path).unwrap_or_default()));
        }
        text
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
