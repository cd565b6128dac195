//! Leases and the client cache in simulation (docs/design/leases.md):
//! - a client that caches a file never returns content older than an overwrite whose commit
//!   was acknowledged before its read began, also across a leader kill;
//! - a paused client does not block a writer beyond one lease span, and a transaction built on
//!   its reads from before the pause cannot commit after it wakes;
//! - with leases longer than an election, the new leader's wait is what keeps reads fresh,
//!   whether the old leader was cut off or frozen: planted away, the same scenario reads stale
//!   data;
//! - a client whose reads of a file race its own commits of it never caches a value its
//!   commit replaced (the own-write fence): planted away, its reads go stale;
//! - a writer leased what it wrote with its commit's answer never caches a value another
//!   client's commit replaced between its apply and its answer: planted away (no pending
//!   and stored-value checks), its next read is stale.
#![cfg(madsim)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cffs_client::{Client, FsError, Outcome};
use cffs_server::constants::LEASE_DURATION_DEFAULT;
use cffs_sim_tests::cluster::Cluster;
use cffs_sim_tests::runner::{self, Planted};
use tokio::time::Instant;

fn value(data: &[u8]) -> u64 {
    String::from_utf8_lossy(data).parse().expect("a number")
}

/// Acknowledged overwrites: (acknowledged at, value), in order.
type Acks = Arc<Mutex<Vec<(Instant, u64)>>>;

/// What one run of the overwrite scenario saw.
#[derive(Debug)]
struct Run {
    overwrites: usize,
    hits: u64,
    local_commits: u64,
    /// Reads that returned content older than an overwrite acknowledged before they began.
    stale: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeaderFault {
    /// The leader is killed for two seconds: its clients' sessions end with it.
    Kill,
    /// The leader is cut off from everyone for two seconds: its clients hear nothing, and
    /// keep trusting their caches until the leases it granted run out, while a new leader
    /// takes writes.
    Isolate,
    /// The leader's process is frozen (it answers nobody, renews nothing), then wakes to the
    /// messages queued for it. A request sent to it meanwhile waits for its client's timeout.
    Pause,
}

/// How long the default overwrite scenario runs, and how long its fault lasts.
const SPAN: Duration = Duration::from_secs(6);
const FAULT_FOR: Duration = Duration::from_secs(2);

/// One writer overwrites /f with increasing numbers while two readers read it through their
/// caches, for `span`; two seconds in, the leader fails (`fault`) for `fault_for`.
async fn overwrite_scenario(cluster: Cluster, fault: LeaderFault, fault_for: Duration, span: Duration) -> Run {
    cluster
        .with_client(|client| async move { client.run(|txn| async move { txn.write_file("/f", b"0").await }).await })
        .await
        .expect("setup");
    let acks: Acks = Arc::new(Mutex::new(Vec::new()));
    let stop_at = Instant::now() + span;

    let endpoints = cluster.endpoints();
    let writer_acks = acks.clone();
    let writer = cluster.client_node().spawn(async move {
        let client = Client::connect(&endpoints).expect("endpoints");
        let mut n = 0u64;
        while Instant::now() < stop_at {
            n += 1;
            let data = n.to_string();
            let write = client.run(|txn| {
                let data = data.clone();
                async move { txn.write_file("/f", data.as_bytes()).await }
            });
            match write.await {
                Ok(()) => writer_acks.lock().unwrap().push((Instant::now(), n)),
                Err(FsError::OutcomeUnknown(_)) => {}
                Err(error) => panic!("overwrite failed: {error}"),
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    });

    let mut readers = Vec::new();
    for _ in 0..2 {
        let endpoints = cluster.endpoints();
        readers.push(cluster.client_node().spawn(async move {
            let client = Client::connect(&endpoints).expect("endpoints");
            let mut reads = Vec::new();
            while Instant::now() < stop_at {
                let invoked = Instant::now();
                if let Ok(data) = client.run(|txn| async move { txn.read_file("/f").await }).await {
                    reads.push((invoked, value(&data)));
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            (reads, client.cache_stats())
        }));
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    let leader = cluster.leader().await.expect("a leader");
    match fault {
        LeaderFault::Kill => {
            cluster.kill(leader);
            tokio::time::sleep(fault_for).await;
            cluster.restart(leader);
        }
        LeaderFault::Isolate => {
            let net = madsim::net::NetSim::current();
            let leader_node = cluster.node_id(leader);
            net.clog_node(leader_node);
            tokio::time::sleep(fault_for).await;
            net.unclog_node(leader_node);
        }
        LeaderFault::Pause => {
            cluster.pause_replica(leader);
            tokio::time::sleep(fault_for).await;
            cluster.resume_replica(leader);
        }
    }

    writer.await.expect("writer");
    let acks = acks.lock().unwrap().clone();
    let mut run = Run { overwrites: acks.len(), hits: 0, local_commits: 0, stale: Vec::new() };
    for reader in readers {
        let (reads, stats) = reader.await.expect("reader");
        run.hits += stats.hits;
        run.local_commits += stats.local_commits;
        for (invoked, seen) in reads {
            // The latest overwrite acknowledged before this read began.
            let floor = acks.iter().filter(|(acked, _)| *acked < invoked).map(|(_, v)| *v).max().unwrap_or(0);
            if seen < floor {
                run.stale.push(format!("a read begun at {invoked:?} returned {seen}, older than acknowledged {floor}"));
            }
        }
    }
    run
}

/// Runs the overwrite scenario under `fault` and checks it: no stale read, at least
/// `min_overwrites` acknowledged overwrites, and reads committed from the cache.
async fn overwrites_checked(fault: LeaderFault, label: &'static str, min_overwrites: usize) {
    let run = overwrite_scenario(Cluster::start(3).await, fault, FAULT_FOR, SPAN).await;
    eprintln!("leases ({label}): {run:?}");
    assert!(run.stale.is_empty(), "stale reads: {:?}", run.stale);
    assert!(run.overwrites >= min_overwrites, "the writer made progress: {run:?}");
    assert!(run.local_commits > 0, "the readers committed from their cache at least once: {run:?}");
}

#[test]
fn cached_reads_never_miss_an_acknowledged_overwrite_even_with_the_leader_cut_off() {
    cffs_sim_tests::runner::scenario_seeds(|| overwrites_checked(LeaderFault::Isolate, "leader cut off", 0));
}

#[test]
fn cached_reads_never_miss_an_acknowledged_overwrite_even_with_the_leader_paused() {
    cffs_sim_tests::runner::scenario_seeds(|| overwrites_checked(LeaderFault::Pause, "leader paused", 0));
}

#[test]
fn cached_reads_never_miss_an_acknowledged_overwrite_even_across_a_leader_kill() {
    cffs_sim_tests::runner::scenario_seeds(|| overwrites_checked(LeaderFault::Kill, "leader killed", 21));
}

/// Leases longer than an election make the new leader's wait matter: without it the new
/// leader overwrites /f while readers still trust what the old one leased them.
const LONG_LEASE: Duration = Duration::from_secs(2);
const LONG_LEASE_SEEDS: u64 = 8;

/// With the leader frozen, the writer's request to it waits out the client's RPC timeout
/// (6 s) before the writer finds the new leader, so the pause runs longer than that, and the
/// leases longer still: the new leader then takes writes while the readers' leases last.
const PAUSE_LEASE: Duration = Duration::from_secs(8);
const PAUSE_FOR: Duration = Duration::from_secs(10);
const PAUSE_SPAN: Duration = Duration::from_secs(16);

fn long_lease_runs(plant: Option<Planted>, fault: LeaderFault) -> Vec<Run> {
    runner::planted_seeds(plant, LONG_LEASE_SEEDS, move || async move {
        let (lease, fault_for, span) = match fault {
            LeaderFault::Pause => (PAUSE_LEASE, PAUSE_FOR, PAUSE_SPAN),
            _ => (LONG_LEASE, FAULT_FOR, SPAN),
        };
        let cluster = Cluster::start_with(3, move |config| config.leases.duration = lease).await;
        overwrite_scenario(cluster, fault, fault_for, span).await
    })
}

#[test]
fn with_leases_longer_than_an_election_the_new_leaders_wait_keeps_reads_fresh() {
    for fault in [LeaderFault::Isolate, LeaderFault::Pause] {
        for (seed, run) in (1..).zip(long_lease_runs(None, fault)) {
            assert!(run.stale.is_empty(), "{fault:?}, seed {seed}: stale reads: {:?}", run.stale);
            assert!(run.local_commits > 0, "{fault:?}, seed {seed}: {run:?}");
        }
    }
}

/// Without the new leader's wait, readers that cached /f under the old leader's leases read
/// it stale once the new leader takes writes, whether the old leader was cut off or frozen
/// (the replica-pause class's twin).
#[test]
fn a_new_leader_that_skips_its_wait_is_caught() {
    for fault in [LeaderFault::Isolate, LeaderFault::Pause] {
        let runs = long_lease_runs(Some(Planted::SkipNewLeaderWait), fault);
        let caught = runs.iter().filter(|run| !run.stale.is_empty()).count();
        eprintln!("planted skip-new-leader-wait, {fault:?}: caught in {caught} of {LONG_LEASE_SEEDS} seeds");
        assert!(caught > 0, "{fault:?}: no stale read without the new leader's wait: {runs:?}");
    }
}

#[test]
fn a_paused_client_blocks_writers_for_one_lease_at_most_and_cannot_commit_stale_reads() {
    cffs_sim_tests::runner::scenario_seeds(
        a_paused_client_blocks_writers_for_one_lease_at_most_and_cannot_commit_stale_reads_scenario,
    );
}

async fn a_paused_client_blocks_writers_for_one_lease_at_most_and_cannot_commit_stale_reads_scenario() {
    let cluster = Cluster::start(3).await;
    cluster
        .with_client(|client| async move { client.run(|txn| async move { txn.write_file("/g", b"1").await }).await })
        .await
        .expect("setup");

    // The client to pause: it caches /g, begins a transaction that reads it, tells the test,
    // and commits (writing /h from /g) only after it wakes.
    let endpoints = cluster.endpoints();
    let (read_done, read_seen) = tokio::sync::oneshot::channel();
    let frozen_node = cluster.client_node();
    let frozen = frozen_node.spawn(async move {
        let client = Client::connect(&endpoints).expect("endpoints");
        // Warm: a session, and /g cached under a lease.
        client.run(|txn| async move { txn.read_file("/g").await }).await.expect("warm read");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let txn = client.begin();
        let g = txn.read_file("/g").await.expect("read /g");
        read_done.send(()).expect("test waits");
        tokio::time::sleep(Duration::from_millis(100)).await;
        txn.write_file("/h", &g).await.expect("write /h");
        txn.commit().await
    });
    read_seen.await.expect("the frozen client read /g");
    cluster.pause(&frozen_node);

    // The writer's commit waits for the paused holder's lease, no longer.
    let started = Instant::now();
    cluster
        .with_client(|client| async move { client.run(|txn| async move { txn.write_file("/g", b"2").await }).await })
        .await
        .expect("overwrite while the holder is paused");
    let waited = started.elapsed();
    eprintln!("leases: a writer waited {waited:?} for a paused holder");
    let span = LEASE_DURATION_DEFAULT.mul_f64(1.01);
    assert!(waited <= span + Duration::from_millis(200), "the writer waited {waited:?} for a paused client");

    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.resume(&frozen_node);
    let outcome = frozen.await.expect("frozen task").expect("commit answered");
    assert!(matches!(outcome, Outcome::Conflict { .. }), "a commit on reads from before the pause: {outcome:?}");
}

/// How long the own-commit race runs.
const OWN_RACE_SPAN: Duration = Duration::from_secs(4);
const OWN_RACE_SEEDS: u64 = 8;

/// Increments /n in one transaction; the new value when acknowledged.
async fn increment(client: &Client) -> Result<u64, FsError> {
    client
        .run(|txn| async move {
            let n = value(&txn.read_file("/n").await?) + 1;
            txn.write_file("/n", n.to_string().as_bytes()).await?;
            Ok(n)
        })
        .await
}

/// Client A reads /n in a loop while another task of the same client increments it, so its
/// reads race its own commits; client B increments /n too. No read of A returns a value
/// older than an increment acknowledged before the read began. (Found by reading the code:
/// the leader drops, rather than invalidates, the writer's own lease on what it writes, so a
/// read granted just before A's commit reached the leader, and answered after A dropped its
/// entry, was cached under a lease the leader no longer tracked; B's later increments never
/// invalidated it, and A's session renewals kept it valid.)
async fn own_commit_race_scenario() -> Run {
    let cluster = Cluster::start(3).await;
    cluster
        .with_client(|client| async move { client.run(|txn| async move { txn.write_file("/n", b"0").await }).await })
        .await
        .expect("setup");
    let acks: Acks = Arc::new(Mutex::new(Vec::new()));
    let stop_at = Instant::now() + OWN_RACE_SPAN;

    let (endpoints, a_acks) = (cluster.endpoints(), acks.clone());
    let a = cluster.client_node().spawn(async move {
        let client = Client::connect(&endpoints).expect("endpoints");
        let reader_client = client.clone();
        let reader = tokio::spawn(async move {
            let mut reads = Vec::new();
            while Instant::now() < stop_at {
                let invoked = Instant::now();
                if let Ok(data) = reader_client.run(|txn| async move { txn.read_file("/n").await }).await {
                    reads.push((invoked, value(&data)));
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            reads
        });
        while Instant::now() < stop_at {
            if let Ok(n) = increment(&client).await {
                a_acks.lock().unwrap().push((Instant::now(), n));
            }
            tokio::time::sleep(Duration::from_millis(4)).await;
        }
        (reader.await.expect("reader"), client.cache_stats())
    });
    let (endpoints, b_acks) = (cluster.endpoints(), acks.clone());
    let b = cluster.client_node().spawn(async move {
        let client = Client::connect(&endpoints).expect("endpoints");
        while Instant::now() < stop_at {
            if let Ok(n) = increment(&client).await {
                b_acks.lock().unwrap().push((Instant::now(), n));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    });
    b.await.expect("client b");
    let (reads, stats) = a.await.expect("client a");
    let acks = acks.lock().unwrap().clone();
    let mut run =
        Run { overwrites: acks.len(), hits: stats.hits, local_commits: stats.local_commits, stale: Vec::new() };
    for (invoked, seen) in reads {
        let floor = acks.iter().filter(|(acked, _)| *acked < invoked).map(|(_, v)| *v).max().unwrap_or(0);
        if seen < floor {
            run.stale.push(format!("a read begun at {invoked:?} returned {seen}, older than acknowledged {floor}"));
        }
    }
    run
}

#[test]
fn reads_that_race_the_clients_own_commits_never_cache_a_replaced_value() {
    for (seed, run) in (1..).zip(runner::planted_seeds(None, OWN_RACE_SEEDS, own_commit_race_scenario)) {
        eprintln!("leases (own-commit race), seed {seed}: {} increments, {} hits", run.overwrites, run.hits);
        assert!(run.stale.is_empty(), "seed {seed}: stale reads: {:?}", &run.stale[..run.stale.len().min(5)]);
        assert!(run.overwrites >= 20 && run.hits > 0, "seed {seed}: {run:?}");
    }
}

/// The fence's twin: a cache that takes such a read's reply serves a stale value.
#[test]
fn a_cache_without_the_own_write_fence_is_caught() {
    let runs = runner::planted_seeds(Some(Planted::NoOwnWriteFence), OWN_RACE_SEEDS, own_commit_race_scenario);
    let caught = runs.iter().filter(|run| !run.stale.is_empty()).count();
    eprintln!("planted no-own-write-fence: caught in {caught} of {OWN_RACE_SEEDS} seeds");
    assert!(caught > 0, "no stale read without the own-write fence");
}

/// Leases on commit, lined up: client A increments /n, and its commit's end (pending marks,
/// lease on commit) is held back 500 ms after its entry applied; meanwhile client B reads A's
/// value and increments it again, so when A's commit ends the state holds B's value, not
/// A's. A's next read, begun after both increments were acknowledged, must see B's value.
async fn commit_lease_race_scenario() -> Run {
    use cffs_server::buggify::{force, Site};
    let cluster = Cluster::start(3).await;
    cluster
        .with_client(|client| async move { client.run(|txn| async move { txn.write_file("/n", b"0").await }).await })
        .await
        .expect("setup");
    let endpoints = cluster.endpoints();
    let outcome = cluster
        .client_node()
        .spawn(async move {
            let a = Client::connect(&endpoints).expect("endpoints");
            let b = Client::connect(&endpoints).expect("endpoints");
            // Both warm: sessions open, /n read once.
            for client in [&a, &b] {
                client.run(|txn| async move { txn.read_file("/n").await }).await.expect("warm-up read");
            }
            force(Site::CommitEndDelay, true);
            let a_client = a.clone();
            let first = tokio::spawn(async move { increment(&a_client).await });
            tokio::time::sleep(Duration::from_millis(100)).await;
            let second = increment(&b).await;
            let first = first.await.expect("a's increment");
            force(Site::CommitEndDelay, false);
            let read = a.run(|txn| async move { txn.read_file("/n").await }).await.map(|d| value(&d));
            (first, second, read, a.cache_stats())
        })
        .await
        .expect("clients");
    let (first, second, read, stats) = outcome;
    let mut run = Run { overwrites: 0, hits: stats.hits, local_commits: stats.local_commits, stale: Vec::new() };
    let (first, second, read) = match (first, second, read) {
        (Ok(first), Ok(second), Ok(read)) => (first, second, read),
        failed => {
            run.stale.push(format!("an operation failed: {failed:?}"));
            return run;
        }
    };
    run.overwrites = 2;
    let latest = first.max(second);
    if read < latest {
        run.stale.push(format!("a read after increments to {first} (a) and {second} (b) returned {read}"));
    }
    run
}

#[test]
fn a_writer_never_caches_a_value_replaced_before_its_commit_ended() {
    for (seed, run) in (1..).zip(runner::planted_seeds(None, OWN_RACE_SEEDS, commit_lease_race_scenario)) {
        eprintln!("leases on commit, seed {seed}: {run:?}");
        assert!(run.stale.is_empty(), "seed {seed}: {:?}", run.stale);
        assert_eq!(run.overwrites, 2, "seed {seed}: {run:?}");
    }
}

/// The checks' twin: leased without them, the writer caches its own value, which the other
/// client's increment replaced before the writer's commit ended, and reads it back stale.
#[test]
fn a_lease_on_commit_without_its_checks_is_caught() {
    let runs = runner::planted_seeds(Some(Planted::CommitLeaseUnchecked), OWN_RACE_SEEDS, commit_lease_race_scenario);
    let caught = runs.iter().filter(|run| !run.stale.is_empty()).count();
    eprintln!("planted commit-lease-unchecked: caught in {caught} of {OWN_RACE_SEEDS} seeds");
    assert!(caught > 0, "no stale read without the checks of a lease on commit");
}
