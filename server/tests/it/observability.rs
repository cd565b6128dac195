//! Every server's HTTP side on a running cluster: `/metrics` answers in Prometheus's format
//! and its counters move with the work done, `/health` says who can serve; and node
//! configuration from a file, overridden by the environment, with bad files refused.

use std::time::{Duration, Instant};

use cffs_server::metrics::sample_value;

use crate::harness::ProcessCluster;

fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    sample_value(text, name, labels).unwrap_or_else(|| panic!("no sample {name} {labels:?} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_commits_and_health_follows_quorum() {
    let mut cluster = ProcessCluster::start_with_blocks(64 * 1024).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(60)).await;
    let scrape = |id: u64| {
        let (code, body) = cluster.http_get(id, "/metrics").expect("scrape /metrics");
        assert_eq!(code, 200, "{body}");
        body
    };
    let before = scrape(leader);
    assert_eq!(metric(&before, "cffs_raft_is_leader", &[("group", "meta")]), 1.0);
    assert!(before.contains("# TYPE cffs_commit_duration_seconds histogram"));
    let committed = |text: &str| metric(text, "cffs_commits_total", &[("outcome", "committed")]);

    let client = cluster.client();
    for i in 0..20 {
        let path = format!("/m{i}");
        client
            .run(|txn| {
                let path = path.clone();
                async move { txn.mkdir(&path, 0o755).await.map(|_| ()) }
            })
            .await
            .expect("mkdir");
    }
    let data = vec![7u8; 300 * 1024];
    client
        .run(|txn| {
            let data = data.clone();
            async move { txn.write_file("/big", &data).await }
        })
        .await
        .expect("write a file of blocks");

    let after = scrape(leader);
    assert!(committed(&after) >= committed(&before) + 21.0, "before:\n{before}\nafter:\n{after}");
    let commits = metric(&after, "cffs_commit_duration_seconds_count", &[]);
    assert!(commits >= 21.0, "{after}");
    assert!(metric(&after, "cffs_commit_batch_commits_count", &[]) >= 1.0);
    let applied = |text: &str| metric(text, "cffs_raft_applied_index", &[("group", "meta")]);
    assert!(applied(&after) >= applied(&before) + 21.0);
    assert!(metric(&after, "cffs_lease_sessions", &[]) >= 1.0, "the client's session is in the lease table");
    // The file's 5 blocks of 64 KiB went to one group of three: 15 copies, 300 KiB each way
    // counted on the servers that took them.
    let mut put_bytes = 0.0;
    for id in 1..=6 {
        put_bytes += metric(&scrape(id), "cffs_block_put_bytes_total", &[]);
    }
    assert_eq!(put_bytes, 3.0 * 300.0 * 1024.0);
    // Exactly one replica says it leads; followers count nothing as leader.
    let leaders: f64 = (1..=3).map(|id| metric(&scrape(id), "cffs_raft_is_leader", &[("group", "meta")])).sum();
    assert_eq!(leaders, 1.0);

    for id in 1..=6 {
        let (code, body) = cluster.http_get(id, "/health").expect("/health");
        assert_eq!(code, 200, "node {id}: {body}");
        assert!(body.contains("\"status\":\"ok\""), "{body}");
    }
    let (code, _) = cluster.http_get(leader, "/nowhere").expect("GET");
    assert_eq!(code, 404);

    // A replica left alone loses its leader: its /health says so (503) within a few
    // election timeouts, and comes back when a peer returns.
    let others: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let alone = others[0];
    cluster.kill(leader);
    cluster.kill(others[1]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = cluster.http_get(alone, "/health").expect("/health");
        if code == 503 {
            assert!(body.contains("\"status\":\"unavailable\""), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "replica {alone} still healthy alone: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.restart(others[1]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while cluster.http_get(alone, "/health").map(|(code, _)| code).unwrap_or(0) != 200 {
        assert!(Instant::now() < deadline, "replica {alone} not healthy again with a peer back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn cffs_server(args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_cffs-server"));
    command.args(args).env_remove("CFFS_ID").env_remove("CFFS_LISTEN");
    for (key, value) in envs {
        command.env(key, value);
    }
    command.output().expect("run cffs-server")
}

/// A config file, environment variables, and what the error must say.
type Case = (&'static str, &'static [(&'static str, &'static str)], &'static str);

#[test]
fn bad_configuration_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("node.toml");
    let cases: [Case; 5] = [
        (
            "id = 1\nlease = 3\nlisten = \"127.0.0.1:1\"\ndata_dir = \"d\"\n[peers]\n1 = \"h:1\"\n",
            &[],
            "unknown field `lease`",
        ),
        ("listen = \"127.0.0.1:1\"\ndata_dir = \"d\"\n[peers]\n1 = \"h:1\"\n", &[], "`id` (--id, CFFS_ID) is not set"),
        (
            "id = 1\nlisten = \"127.0.0.1:1\"\ndata_dir = \"d\"\n[peers]\n1 = \"h:1\"\n",
            &[("CFFS_ID", "2")],
            "does not list this replica's id 2",
        ),
        ("id = 1\nlisten = \"localhost\"\ndata_dir = \"d\"\n[peers]\n1 = \"h:1\"\n", &[], "is not IP:PORT"),
        (
            "id = 1\nlisten = \"127.0.0.1:1\"\ndata_dir = \"d\"\n[peers]\n1 = \"h:1\"\n[leases]\nduration_ms = 5\n",
            &[],
            "leases.duration_ms",
        ),
    ];
    for (text, envs, expected) in cases {
        // The data directory inside the temporary one, so the check below means something.
        let text = text.replace("\"d\"", &format!("{:?}", dir.path().join("d")));
        std::fs::write(&file, &text).expect("write config");
        let output = cffs_server(&["meta", "--config", file.to_str().expect("utf-8 path")], envs);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{text}: {stderr}");
        assert!(stderr.contains(expected), "{text}: expected '{expected}' in: {stderr}");
        assert!(!dir.path().join("d").exists(), "a refused configuration created nothing");
    }
    let missing = cffs_server(&["block", "--config", "/nonexistent/node.toml"], &[]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("read config file /nonexistent/node.toml"));
}
