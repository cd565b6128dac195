//! The chaos harness in CI: seeds of the mixed workload (bank, counters, namespace) under the
//! swarm nemesis, every checker on, and one seed replayed twice to the same report.
//! `CFFS_CHAOS_SEEDS` (default 20) and `CFFS_CHAOS_START` choose the seeds.
#![cfg(madsim)]

use cffs_sim_tests::runner::{sim_exe, Launcher};

/// Each seed runs in a `cffs-sim` process of its own (see `runner`).
fn launcher() -> Launcher {
    Launcher::new(sim_exe(env!("CARGO_BIN_EXE_cffs-sim")), None)
}

/// Seeds that found real bugs, fixed since; they run on every test run, whatever range of
/// seeds is chosen, each named with what it found.
///
/// 182: G-single-realtime (a stale read after an acknowledged commit). A leader that lost
/// power restarted as the leader of its stored term with an older commit index, and served
/// reads at openraft's read index before applying commits it had acknowledged before the
/// crash. Fixed by the read index's restart floor (`server/src/metadata/read_index.rs`);
/// `tests/restart_read.rs` is the targeted scenario, and `cffs-sim --seed 182 --plant
/// no-restart-floor` shows the failure again.
///
/// 10: G-single-realtime with leases (a read served from a client's cache missed an
/// acknowledged append). A session whose expiry had passed, and whose leases the leader had
/// already forgotten, was renewed by a late keepalive, and its client trusted those leases
/// again. Fixed: a session past its expiry is never renewed (`LeaseTable::renew`).
///
/// 4494: bank (an audit committed locally from the cache read a total of 515, not 500). The
/// leader was killed and restarted into its stored term; its new lease table handed out
/// session ids its previous process had given to other clients, and a commit retried with
/// such an id dropped the new holder's lease as "the writer's own", without an invalidation.
/// Fixed: session numbers are reserved on disk per term (`metadata/session_ids.rs`);
/// `tests/session_ids.rs` is the targeted scenario, and `cffs-sim --seed 4494 --plant
/// reuse-session-ids` shows the failure again.
///
/// 13929: liveness (a replica could never apply past a hole in its log). A leader purged its
/// log past a follower's match (a 35-entry snapshot interval), its replication read the range
/// from the purged index and got the entries after it, and sent them as if they followed the
/// follower's last entry. Fixed on our side: a log read returns only a contiguous run from
/// its start (`LogStore::try_get_log_entries`). Why openraft purged past the follower's match
/// is not yet known, so there is no targeted scenario yet.
///
/// 147: file-data (an append applied twice). A commit naming new blocks timed out at one
/// leader and was applied; its retry reached the next leader while group 2's servers were
/// down, was refused for a missing block, and the client took that refusal as definite, so
/// `run` re-ran the function. Fixed on both sides: a refusal after an attempt with an unknown
/// outcome is still unknown (`Client::call`), and the leader answers a decided transaction
/// from its dedup record before it checks blocks (`MetadataService::handle_commit`).
///
/// 1036: panic (openraft refused to start a replica: its log was purged to 472, its snapshot
/// at 393). A snapshot install at 472 failed on a disk error after openraft had already
/// queued the purge that follows an install (openraft 0.9 does not wait for the install), so
/// the purge reached the disk and the install did not. Fixed: `LogStore::purge` never purges
/// past the durable snapshot (`a_purge_never_passes_the_durable_snapshot` is the targeted
/// test).
///
/// 1507: liveness (a replacement replica could not restart: "try to get log at index 0").
/// The first fix for 1036 held back a purge that came before the install it follows had
/// written anything, and a new replica's log then started after its snapshot with no purge
/// point to say so. Fixed: a purge waits for the install (its synced marker, or the
/// snapshot on disk) before it is held back.
///
/// 3360: replica-divergence, a false one. The final states were read while the leader's
/// collector was still proposing entries: the replicas had just reported one applied index,
/// and were read at 443 and 444. Fixed in the harness: the states are compared at one
/// applied index, read again until they agree on it (`scenario::run`).
///
/// 411: stale-read (a counter read 34 after 35 was acknowledged), found by the first run of
/// batched commits. In its trace replica 1 leads term 3, loses it to a vote for term 4 and
/// leads again in term 5 within half a second, while commits wait in its batcher's queue
/// behind proposals stuck on a cut-off peer. A commit that began in term 3 and is proposed in
/// term 5 applies without invalidating readers leased in the new term's lease table, which
/// never held its pending keys: the stale read. Fixed: a write remembers the term it began
/// in, and the batcher proposes it only in that term (`batcher::propose_batch`; otherwise it
/// is answered, unproposed, "term changed"). The fixed replay diverges earlier (two queued
/// commits of the deposed term-2 leader are refused at 36.49 s), so it does not replay the
/// path itself; a targeted scenario for it is still to write.
///
/// 1500: block-gc (a block server held an unreferenced block after collection), found by the
/// first CI run with block servers replaced through the map. The replacement of server 6 by
/// 7 applied, but its answer was lost and the client's retry was refused ("still refilling
/// server 7"); the harness took the change for refused and killed server 7, a member now,
/// which the collector could not reach. Fixed in the client (`Client::replace_block_server`
/// reads the map after a failed attempt and answers Ok when the change is in: `cffs cluster
/// replace-node --block-group` no longer reports an applied change as refused) and in the
/// harness (a server the map names is never killed as unused). The fixed replay diverges
/// before the path.
const REGRESSION_SEEDS: &[u64] = &[10, 147, 182, 411, 1036, 1500, 1507, 3360, 4494, 13929];

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
fn chaos_seeds_pass_every_checker() {
    let (start, seeds) = (env_u64("CFFS_CHAOS_START", 1), env_u64("CFFS_CHAOS_SEEDS", 20));
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let launcher = launcher();
    let mut results = launcher.run_seeds(start, seeds, jobs, |_| {});
    for &seed in REGRESSION_SEEDS.iter().filter(|seed| !(start..start + seeds).contains(*seed)) {
        results.push(launcher.run_seed(seed));
    }
    let failed: Vec<String> = results
        .iter()
        .filter(|r| r.failed())
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
    let start = env_u64("CFFS_CHAOS_START", 1);
    for seed in start..start + 3 {
        launcher().check_determinism(seed).expect("same seed, same run");
    }
}
