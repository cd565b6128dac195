//! Leases and the client cache against real processes on loopback (docs/design/leases.md):
//! - one client caches a file while another overwrites it: after an overwrite is
//!   acknowledged, the first never returns older content;
//! - a client process frozen with SIGSTOP while it holds a lease blocks a writer for about
//!   one lease at most, and the transaction it built on its reads cannot commit after
//!   SIGCONT;
//! - a read-only transaction served from the cache sends no request at all, and the same
//!   transaction with the cache off sends three (the path in one lookup, the inode, the
//!   commit);
//! - a create of a fresh name in a cached directory sends one request (the commit), and a
//!   create of a name that exists is still refused or finds the file there;
//! - a read-modify-write of a file the client just wrote sends only its commit (the leader
//!   leased what it wrote with the commit's answer), and another client's write of the file
//!   still reaches it;
//! - an idle client's session rests: its keepalives stop and its stream ends on the leader,
//!   and its next transaction opens a new session, after which its reads are warm again.
//!
//! The frozen client is this test binary run again, as the `lease_holder_process` test with
//! `CFFS_IT_LEASE_HOLDER` set (without it, that test does nothing).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cffs_client::{Client, ClientOptions, FsError, Outcome, Transaction};

use crate::harness::ProcessCluster;

fn number(data: &[u8]) -> u64 {
    String::from_utf8_lossy(data).parse().expect("a number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_read_never_returns_content_older_than_an_acknowledged_overwrite() {
    let cluster = ProcessCluster::start(3);
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    let writer = cluster.client();
    let reader = cluster.client();
    writer.run(|txn| async move { txn.write_file("/f", b"0").await }).await.expect("setup");

    let mut acknowledged = 0u64;
    let mut reads = 0u64;
    for n in 1..=60u64 {
        // A few reads between overwrites: the first after an overwrite may miss, the rest hit.
        for _ in 0..5 {
            let data = reader.run(|txn| async move { txn.read_file("/f").await }).await.expect("read");
            let seen = number(&data);
            assert!(seen >= acknowledged, "read {seen} after overwrite {acknowledged} was acknowledged");
            reads += 1;
        }
        let data = n.to_string();
        writer
            .run(|txn| {
                let data = data.clone();
                async move { txn.write_file("/f", data.as_bytes()).await }
            })
            .await
            .expect("overwrite");
        acknowledged = n;
    }
    let stats = reader.cache_stats();
    eprintln!("leases: {reads} reads, {stats:?}");
    assert!(stats.local_commits > 0, "the reader committed from its cache: {stats:?}");
    assert!(stats.invalidations_received > 0, "the reader's leases were invalidated: {stats:?}");
}

/// The warm function of the benchmark: stat a file and read it.
async fn stat_and_read(txn: Transaction) -> Result<Vec<u8>, FsError> {
    let attr = txn.stat("/a/b/c/f").await?;
    let data = txn.read_file("/a/b/c/f").await?;
    assert_eq!(attr.size, data.len() as u64);
    Ok(data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_read_only_transaction_sends_no_request_and_a_cold_one_three() {
    let cluster = ProcessCluster::start(3);
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    let warm = cluster.client();
    warm.run(|txn| async move {
        txn.mkdir_all("/a/b/c", 0o755).await?;
        txn.write_file("/a/b/c/f", b"content").await
    })
    .await
    .expect("setup");

    // Cold: one request finds the leader first, then the count is exact.
    let cold =
        Client::connect_with(&cluster.endpoints(), ClientOptions { cache: false, ..Default::default() }).unwrap();
    cold.run(stat_and_read).await.expect("cold read");
    let before = cold.requests_sent();
    cold.run(stat_and_read).await.expect("cold read");
    assert_eq!(cold.requests_sent() - before, 3, "LookupPath for a/b/c/f, GetInode, Commit");

    // Warm: once a read committed locally, every transaction that commits locally sent
    // nothing (one may still miss, if a keepalive came late on a loaded machine).
    let deadline = Instant::now() + Duration::from_secs(10);
    while warm.cache_stats().local_commits == 0 {
        assert!(Instant::now() < deadline, "no local commit: {:?}", warm.cache_stats());
        warm.run(stat_and_read).await.expect("warm read");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut local = 0;
    for _ in 0..200 {
        let (requests, commits) = (warm.requests_sent(), warm.cache_stats().local_commits);
        assert_eq!(warm.run(stat_and_read).await.expect("warm read"), b"content");
        if warm.cache_stats().local_commits > commits {
            local += 1;
            assert_eq!(warm.requests_sent(), requests, "a local commit sent a request");
        }
    }
    eprintln!("round trips: cold 3 requests per transaction; warm {local} of 200 local, with none");
    assert!(local > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_create_sends_only_its_commit_and_an_existing_name_is_still_found() {
    let cluster = ProcessCluster::start(3);
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    let client = cluster.client();
    client.run(|txn| async move { txn.mkdir_all("/d", 0o755).await }).await.expect("setup");
    let first = client.run(|txn| async move { txn.create("/d/f0", 0o644, true).await }).await.expect("create f0");

    // Each create's requests: the commit alone while /d stays cached (a lease that lapsed
    // on a loaded machine costs one lookup more), and an inode range now and then.
    let mut counts = Vec::new();
    for i in 1..=20 {
        let before = client.requests_sent();
        let path = format!("/d/f{i}");
        let path = path.as_str();
        client.run(|txn| async move { txn.create(path, 0o644, true).await }).await.expect("create");
        counts.push(client.requests_sent() - before);
    }
    let ones = counts.iter().filter(|n| **n == 1).count();
    eprintln!("requests per fresh create: {counts:?}");
    assert!(ones >= counts.len() / 2, "most fresh creates send their commit alone: {counts:?}");

    // A name that exists: the first attempt takes it for absent, its commit conflicts, the
    // re-run looks it up.
    let again = client.run(|txn| async move { txn.create("/d/f0", 0o644, true).await }).await;
    assert!(matches!(again, Err(FsError::Exists)), "exclusive create of an existing name: {again:?}");
    let found = client.run(|txn| async move { txn.create("/d/f0", 0o644, false).await }).await.expect("create f0");
    assert_eq!(found.ino, first.ino, "a non-exclusive create of an existing name finds that file");
    let other = cluster.client();
    let listing = other.run(|txn| async move { txn.readdir("/d").await }).await.expect("readdir");
    assert_eq!(listing.len(), 21, "f0..f20, each once: {listing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_client_blocks_writers_for_about_a_lease_and_cannot_commit_stale_reads() {
    let cluster = ProcessCluster::start(3);
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    let writer = cluster.client();
    writer.run(|txn| async move { txn.write_file("/g", b"1").await }).await.expect("setup");

    let mut holder = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "leases::lease_holder_process", "--nocapture", "--test-threads", "1"])
        .env("CFFS_IT_LEASE_HOLDER", cluster.endpoints().join(","))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the lease holder");
    let pid = rustix::process::Pid::from_child(&holder);
    let mut lines = BufReader::new(holder.stdout.take().expect("piped")).lines();
    let mut next_line = move || loop {
        // libtest may print its own words on the same line ("test … ... holder: read 1").
        let line = lines.next().expect("holder output").expect("holder output");
        if let Some(at) = line.find("holder: ") {
            return line[at..].to_string();
        }
    };
    assert_eq!(next_line(), "holder: read 1");
    // Signals sent directly (kill(2)), not through a `kill` binary a minimal machine may lack.
    let signal = |signal| rustix::process::kill_process(pid, signal).expect("signal the holder");
    signal(rustix::process::Signal::STOP);

    let started = Instant::now();
    writer.run(|txn| async move { txn.write_file("/g", b"2").await }).await.expect("overwrite");
    let waited = started.elapsed();
    eprintln!("leases: a writer waited {waited:?} for a frozen holder (lease 250 ms)");
    // About one lease (250 ms); generous, since a loaded CI machine is slow (the simulation
    // checks the bound exactly).
    assert!(waited < Duration::from_secs(3), "the writer waited {waited:?} for a frozen client");

    std::thread::sleep(Duration::from_millis(1000));
    signal(rustix::process::Signal::CONT);
    assert_eq!(next_line(), "holder: conflict");
    assert!(holder.wait().expect("holder exit").success());
    let h = writer.run(|txn| async move { txn.exists("/h").await }).await.expect("read /h");
    assert!(!h, "the stale transaction wrote nothing");
}

/// The frozen client: caches /g, reads it in a transaction, says so, and commits a write of
/// /h built on that read 300 ms later (after the test has frozen and thawed it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_holder_process() {
    let Ok(endpoints) = std::env::var("CFFS_IT_LEASE_HOLDER") else { return };
    let client = Client::connect(&endpoints.split(',').collect::<Vec<_>>()).expect("endpoints");
    // Warm: a session, and /g cached under a lease.
    while client.cache_stats().hits == 0 {
        client.run(|txn| async move { txn.read_file("/g").await }).await.expect("warm read");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let txn = client.begin();
    let g = txn.read_file("/g").await.expect("read /g");
    println!("holder: read {}", String::from_utf8_lossy(&g));
    tokio::time::sleep(Duration::from_millis(300)).await;
    txn.write_file("/h", &g).await.expect("write /h");
    match txn.commit().await.expect("commit answered") {
        Outcome::Conflict { .. } => println!("holder: conflict"),
        Outcome::Committed { .. } => println!("holder: committed"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_modify_write_of_a_file_the_client_just_wrote_sends_only_its_commit() {
    let cluster = ProcessCluster::start(3);
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    let client = cluster.client();
    client.run(|txn| async move { txn.write_file("/counter", b"0").await }).await.expect("setup");
    let increment = |client: &Client| {
        let client = client.clone();
        async move {
            client
                .run(|txn| async move {
                    let n = number(&txn.read_file("/counter").await?);
                    txn.write_file("/counter", (n + 1).to_string().as_bytes()).await?;
                    Ok(n + 1)
                })
                .await
        }
    };
    // Each increment's requests: the commit alone while the lease its last commit brought
    // back holds (a lease that lapsed on a loaded machine costs the read again).
    let mut counts = Vec::new();
    for i in 1..=20u64 {
        let before = client.requests_sent();
        assert_eq!(increment(&client).await.expect("increment"), i);
        counts.push(client.requests_sent() - before);
    }
    let ones = counts.iter().filter(|n| **n == 1).count();
    eprintln!("requests per read-modify-write: {counts:?}");
    assert!(ones >= counts.len() / 2, "most read-modify-writes send their commit alone: {counts:?}");
    // Another client's increment revokes the lease: the first client reads it, never 20.
    let other = cluster.client();
    assert_eq!(increment(&other).await.expect("other's increment"), 21);
    assert_eq!(increment(&client).await.expect("increment after the other's"), 22);
    let read = client.run(|txn| async move { txn.read_file("/counter").await }).await.expect("read");
    assert_eq!(number(&read), 22);
    // A client that asks for no leases on commit (a one-shot command) reads again each time.
    let options = ClientOptions { lease_writes: false, ..ClientOptions::default() };
    let one_shot = Client::connect_with(&cluster.endpoints(), options).expect("client");
    increment(&one_shot).await.expect("warm-up increment");
    let before = one_shot.requests_sent();
    increment(&one_shot).await.expect("increment");
    let sent = one_shot.requests_sent() - before;
    assert!(sent >= 2, "its inode is read again before the commit: {sent} requests");
}

/// The leader's (session streams open, keepalives answered).
async fn leader_sessions(client: &Client) -> (u64, u64) {
    let leases = client.cluster_status().await.expect("status").leases.expect("the leader's lease figures");
    (leases.streams, leases.keepalives)
}

/// Reads `path` until a read sends no request (its session is open and its cache warm),
/// for ten seconds at most.
async fn until_warm(client: &Client, path: &'static str, when: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = client.requests_sent();
        let data = client.run(|txn| async move { txn.read_file(path).await }).await.expect("read");
        assert_eq!(data, b"content");
        if client.requests_sent() == before {
            return;
        }
        assert!(Instant::now() < deadline, "the client's reads never became warm {when}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_rests_its_session_and_its_next_transaction_wakes_it() {
    let cluster = ProcessCluster::start(3);
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    let observer = Client::connect_with(&cluster.endpoints(), ClientOptions { cache: false, ..Default::default() })
        .expect("observer");
    observer.run(|txn| async move { txn.write_file("/rest", b"content").await }).await.expect("setup");
    let rest_after = Duration::from_secs(1);
    let options = ClientOptions { session_rest_after: Some(rest_after), ..ClientOptions::default() };
    let client = Client::connect_with(&cluster.endpoints(), options).expect("client");

    // Warm: after the session opens, a read sends nothing.
    until_warm(&client, "/rest", "before the rest").await;
    let (streams, _) = leader_sessions(&observer).await;
    assert_eq!(streams, 1, "the client's session is open");

    // Idle past the rest and two leases (250 ms): the stream ends, and no keepalive comes.
    tokio::time::sleep(rest_after + Duration::from_millis(1_500)).await;
    let (streams, keepalives) = leader_sessions(&observer).await;
    assert_eq!(streams, 0, "an idle client's session stream has ended");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, keepalives_later) = leader_sessions(&observer).await;
    assert_eq!(keepalives_later, keepalives, "a resting client sends no keepalive");

    // The next transaction wakes it: it reads without the cache, and soon warm again.
    let before = client.requests_sent();
    let data = client.run(|txn| async move { txn.read_file("/rest").await }).await.expect("read after rest");
    assert_eq!(data, b"content");
    assert!(client.requests_sent() > before, "the first read after a rest goes to the leader");
    until_warm(&client, "/rest", "after waking").await;
    let (streams, _) = leader_sessions(&observer).await;
    assert_eq!(streams, 1, "the woken client has a session again");
}
