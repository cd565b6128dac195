//! The chaos harness in CI: seeds of the mixed workload (bank, counters, namespace) under the
//! swarm nemesis, every checker on, and one seed replayed twice to the same report.
//! `CFFS_CHAOS_SEEDS` (default 20) and `CFFS_CHAOS_START` choose the seeds.
#![cfg(madsim)]

use cffs_sim_tests::runner;

/// Seeds that fail because of a bug found and not yet fixed; each stays here, named, until
/// it is fixed (then it becomes a regression seed like any other). Any other failing seed
/// fails the test.
///
/// 182: G-single-realtime under power loss + blackout + one-way links. One client commits
/// an append to /la/k4 (T15, acknowledged at 4.80 s simulated), then its next transaction (T16,
/// 4.83 s .. 5.77 s, spanning a failover) reads /la/k4 without that append; T17 sees it. A
/// stale linearizable read after an acknowledged commit. Replay: `cffs-sim --seed 182` with
/// `CFFS_DEBUG_HISTORY=1` for the list-append history. Root cause under investigation.
const KNOWN_FAILING_SEEDS: &[u64] = &[182];

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
fn chaos_seeds_pass_every_checker() {
    let (start, seeds) = (env_u64("CFFS_CHAOS_START", 1), env_u64("CFFS_CHAOS_SEEDS", 20));
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let results = runner::run_seeds(start, seeds, jobs, |_| {});
    for known in results.iter().filter(|r| KNOWN_FAILING_SEEDS.contains(&r.seed)) {
        eprintln!(
            "known-bug seed {}: {}",
            known.seed,
            if known.failed() {
                "still fails (see KNOWN_FAILING_SEEDS)"
            } else {
                "now passes: remove it from KNOWN_FAILING_SEEDS"
            }
        );
    }
    let failed: Vec<String> = results
        .iter()
        .filter(|r| r.failed() && !KNOWN_FAILING_SEEDS.contains(&r.seed))
        .map(|r| {
            format!(
                "seed {} caught by {:?}: {:?} {:?}",
                r.seed,
                r.caught_by(),
                r.panic,
                r.report.as_ref().map(|r| &r.violations)
            )
        })
        .collect();
    let faults: u64 = results.iter().filter_map(|r| r.report.as_ref()).map(|r| r.faults).sum();
    eprintln!("{} seeds, {} failed, {faults} faults injected", results.len(), failed.len());
    assert!(failed.is_empty(), "failing seeds (replay with cffs-sim --seed N):\n{}", failed.join("\n"));
    assert!(faults > 0, "the nemesis injected no fault at all");
}

#[test]
fn a_seed_replays_identically() {
    runner::check_determinism(env_u64("CFFS_CHAOS_START", 1)).expect("same seed, same run");
}
