//! One chaos run: a three-replica cluster, bank, counter and namespace clients, and the swarm
//! nemesis (safety phase); then every fault healed and the cluster required to converge and
//! serve within a bound (liveness phase); then the checkers. Everything is drawn from the
//! seed, so a run replays exactly.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cffs_client::Client;

use crate::checker;
use crate::cluster::Cluster;
use crate::disk::DiskSim;
use crate::nemesis::{self, NemesisPlan};
use crate::workload::{self, BankHistory, CounterHistory, NamespaceHistory};

pub const ACCOUNTS: usize = 5;
pub const COUNTERS: usize = 3;
/// After the faults stop, the cluster must commit again within this long.
pub const LIVENESS_BOUND: Duration = Duration::from_secs(20);
/// Clients that must each commit in the liveness phase.
pub const LIVENESS_CLIENTS: usize = 4;

/// What a run found: the checker that caught each violation, and what it saw.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    /// The nemesis plan drawn for the run (its `Debug` text).
    pub plan: Option<String>,
    pub faults: u64,
    pub power_losses: u64,
    pub commits: u64,
    /// (checker, what it found).
    pub violations: Vec<(String, String)>,
    /// crc32 of every replica's final state, in order: equal runs have equal digests.
    pub state_digest: u32,
}

impl Report {
    fn check(&mut self, checker: &'static str, problems: Vec<String>) {
        self.violations.extend(problems.into_iter().map(|p| (checker.to_string(), p)));
    }
}

/// Runs one seed's scenario inside the current madsim runtime (which must have `DiskSim`).
pub async fn run() -> Report {
    let mut report = Report::default();
    let plan = NemesisPlan::draw();
    let cluster = Cluster::start(3).await;
    cluster.attach_disks(&DiskSim::current());
    cluster
        .with_client(|client| async move {
            workload::bank_setup(&client, ACCOUNTS).await?;
            workload::list_setup(&client).await?;
            workload::counter_setup(&client, COUNTERS).await
        })
        .await
        .expect("setup before faults");

    // Buggify points in the server fire during the safety phase only.
    cffs_server::buggify::enable(true);
    let pause = Duration::from_millis(30);
    let mut bank = Vec::new();
    let mut counters = Vec::new();
    let mut namespace = Vec::new();
    let mut lists = Vec::new();
    for client_id in 1..=3u64 {
        lists.push(spawn_client(&cluster, move |c| workload::list_append_client(c, client_id, 40, pause)));
    }
    for _ in 0..3 {
        bank.push(spawn_client(&cluster, move |c| workload::bank_client(c, ACCOUNTS, 40, pause)));
    }
    for _ in 0..2 {
        counters.push(spawn_client(&cluster, move |c| workload::counter_client(c, COUNTERS, 40, pause)));
        namespace.push(spawn_client(&cluster, move |c| workload::namespace_client(c, 40, pause)));
    }

    // Safety phase: faults while the clients run.
    let stop = Arc::new(AtomicBool::new(false));
    let nemesis_stop = stop.clone();
    let nemesis_plan = plan.clone();
    let cluster = Arc::new(cluster);
    let nemesis_cluster = cluster.clone();
    let nemesis = madsim::task::spawn(async move { nemesis::run(&nemesis_cluster, &nemesis_plan, nemesis_stop).await });

    let mut bank_histories: Vec<BankHistory> = Vec::new();
    for handle in bank {
        bank_histories.push(handle.await.expect("bank client"));
    }
    let mut counter_histories: Vec<CounterHistory> = Vec::new();
    for handle in counters {
        counter_histories.push(handle.await.expect("counter client"));
    }
    let mut namespace_histories: Vec<NamespaceHistory> = Vec::new();
    for handle in namespace {
        namespace_histories.push(handle.await.expect("namespace client"));
    }
    let mut list_history = Vec::new();
    for handle in lists {
        list_history.extend(handle.await.expect("list-append client"));
    }
    stop.store(true, Ordering::Relaxed);
    cffs_server::buggify::enable(false);
    report.faults = nemesis.await.expect("nemesis");
    report.power_losses = DiskSim::current().power_losses();
    report.plan = Some(format!("{plan:?}"));

    // Liveness phase: healed, every client (one per workload client, each on its own node)
    // must commit again within the bound.
    let live: Vec<_> = (0..LIVENESS_CLIENTS)
        .map(|i| {
            spawn_client(&cluster, move |client| async move {
                let path = format!("/liveness-{i}");
                let commit = client.run(|txn| {
                    let path = path.clone();
                    async move { txn.write_file(&path, b"ok").await }
                });
                tokio::time::timeout(LIVENESS_BOUND, commit).await
            })
        })
        .collect();
    for (i, handle) in live.into_iter().enumerate() {
        match handle.await.expect("liveness client") {
            Ok(Ok(())) => {}
            Ok(Err(error)) => report.check("liveness", vec![format!("client {i}: no commit after healing: {error}")]),
            Err(_) => {
                report.check("liveness", vec![format!("client {i}: no commit within {LIVENESS_BOUND:?} after healing")])
            }
        }
    }
    if !report.violations.is_empty() {
        return report;
    }

    // Checkers.
    let finals = cluster
        .with_client(|client| async move {
            let total = workload::bank_total(&client, ACCOUNTS).await?;
            let values = workload::counter_values(&client, COUNTERS).await?;
            let finals = workload::list_finals(&client).await?;
            Ok::<_, cffs_client::FsError>((total, values, finals))
        })
        .await;
    // The files all existed before the faults: failing to read them back means state was lost.
    let (total, values, finals) = match finals {
        Ok(finals) => finals,
        Err(error) => {
            report.check("lost-commit", vec![format!("the final read of the workloads' files failed: {error}")]);
            return report;
        }
    };
    if std::env::var_os("CFFS_DEBUG_HISTORY").is_some() {
        let base = list_history.iter().map(|t| t.invoked).min();
        for (i, t) in list_history.iter().enumerate() {
            if let Some(base) = base {
                eprintln!("T{i} {:?} [{:?} .. {:?}] {:?}", t.outcome, t.invoked - base, t.completed - base, t.ops);
            }
        }
        eprintln!("finals {finals:?}");
    }
    report.check("elle", checker::elle::check(&list_history, &finals));
    let audits: Vec<u64> = bank_histories.iter().flat_map(|h| h.audits.iter().copied()).collect();
    report.check("bank", checker::bank(&audits, total, ACCOUNTS as u64 * workload::BANK_BALANCE_INITIAL));
    report.check(
        "bank",
        bank_histories.iter().flat_map(|h| h.errors.iter().map(|e| format!("a bank operation failed: {e}"))).collect(),
    );
    let mut acked = vec![0; COUNTERS];
    let mut unknown = vec![0; COUNTERS];
    for history in &counter_histories {
        for i in 0..COUNTERS {
            acked[i] += history.acked[i];
            unknown[i] += history.unknown[i];
        }
    }
    report.check("lost-commit", checker::counters(&acked, &unknown, &values));
    let writes: Vec<_> = counter_histories.iter().flat_map(|h| h.writes.iter().copied()).collect();
    let reads: Vec<_> = counter_histories.iter().flat_map(|h| h.reads.iter().copied()).collect();
    report.check("stale-read", checker::stale_reads(&writes, &reads));
    report.commits = bank_histories.iter().map(|h| h.transfers_acked + h.audits.len() as u64).sum::<u64>()
        + acked.iter().sum::<u64>()
        + namespace_histories.iter().map(|h| h.committed).sum::<u64>()
        + list_history.iter().filter(|t| t.outcome == checker::elle::Outcome::Committed).count() as u64;

    // Every replica converges to the same applied index, with identical state, and passes fsck.
    match cluster.wait_converged(LIVENESS_BOUND).await {
        None => report.check("liveness", vec!["replicas did not converge after healing".into()]),
        Some(_) => {
            let states: Vec<_> = (1..=3).map(|id| cluster.state_of(id)).collect();
            let mut hasher = crc32fast::Hasher::new();
            for (key, value) in states.iter().flatten() {
                hasher.update(key);
                hasher.update(value);
            }
            report.state_digest = hasher.finalize();
            for (i, state) in states.iter().enumerate() {
                let problems = checker::fsck::fsck(state);
                report.check("fsck", problems.into_iter().map(|p| format!("replica {}: {p}", i + 1)).collect());
                if *state != states[0] {
                    report.check("replica-divergence", vec![format!("replica {} differs from replica 1", i + 1)]);
                }
            }
        }
    }
    report
}

fn spawn_client<T, F, Fut>(cluster: &Cluster, f: F) -> madsim::task::JoinHandle<T>
where
    T: Send + 'static,
    F: FnOnce(Client) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let endpoints = cluster.endpoints();
    cluster.client_node().spawn(async move { f(Client::connect(&endpoints).expect("endpoints are valid")).await })
}
