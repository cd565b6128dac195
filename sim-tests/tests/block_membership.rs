//! Block-group membership changes (docs/design/blocks.md, "Changing a group's members"):
//! while file clients write and read files of many blocks, every server of block group 2 is
//! replaced in turn by a new, empty one (`cffs cluster replace-node --block-group`), each
//! change as soon as the group takes it, and each old server dies for good as soon as its
//! replacement is in the map. After the third change no server of the original group is
//! left, so every block written before must have been copied to the new servers by the
//! scrubber's refills, one change at a time: each read is checked against what was written
//! (`file-data`), every file is read back by a client without a cache, and block fsck finds
//! every referenced block intact on a majority of its group. With the refill planted away
//! (`refill-skipped`: a change counts as refilled at once), the same run loses blocks.
//!
//! A second scenario lines up the commit fence's case: a commit whose block check saw its
//! blocks on two of group 2's old members (the third down) stalls before its proposal,
//! while one of those two is replaced (the refill ends before the commit applies, so it
//! never copies these blocks) and then the other. The commit must abort and be re-run
//! against the new members; with the fence planted away (`skip-group-change-fence`) it
//! applies, and its blocks are on no live member.
#![cfg(madsim)]

use std::sync::Arc;
use std::time::Duration;

use cffs_client::ClientOptions;
use cffs_sim_tests::checker;
use cffs_sim_tests::cluster::Cluster;
use cffs_sim_tests::file_workload;
use cffs_sim_tests::runner::{self, Planted};
use cffs_sim_tests::scenario::{spawn_client, spawn_client_with, wait_for_scrub};
use madsim::rand::Rng;

/// Seeds each test runs.
const SEEDS: u64 = 8;
/// Seeds of the refill's twin, caught in a quarter of them (whether blocks end on the dead
/// servers alone depends on where the writes fall against the changes).
const REFILL_TWIN_SEEDS: u64 = 16;
/// Changes and reads of each file client.
const FILE_OPS: usize = 60;

/// What one run saw.
#[derive(Debug, Default)]
struct Run {
    /// Servers replaced, and replacement requests refused while a refill ran.
    replaced: Vec<(u64, u64)>,
    refused: usize,
    writes: u64,
    /// What the checkers found: bad or lost reads, files that read back wrong, blocks on no
    /// member or on fewer than a majority of their group after a scrub pass.
    problems: Vec<String>,
}

async fn replacements_scenario() -> Run {
    let mut run = Run::default();
    let cluster = Arc::new(Cluster::start_full(3, |_| {}, true).await);
    cluster.with_client(|c| async move { file_workload::setup(&c).await }).await.expect("setup");
    let pause = Duration::from_millis(30);
    let files: Vec<_> = (1..=2u64)
        .map(|id| spawn_client(&cluster, move |c| file_workload::file_client(c, id, FILE_OPS, pause)))
        .collect();

    // Files are written for a while; then each change follows the last as soon as the group
    // takes it (with the refill planted away, at once).
    let wait = madsim::rand::thread_rng().gen_range(1_000..2_500);
    tokio::time::sleep(Duration::from_millis(wait)).await;
    for old in [6, 5, 4] {
        loop {
            match cluster.replace_block_server(2, old).await {
                Ok(new) => {
                    cluster.kill_block(old);
                    run.replaced.push((old, new));
                    break;
                }
                Err(why) if why.contains("still refilling") => {
                    run.refused += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(why) => panic!("replacing block server {old}: {why}"),
            }
        }
    }

    let mut histories = Vec::new();
    for file in files {
        histories.push(file.await.expect("file client").0);
    }
    run.writes = histories.iter().map(|h| h.writes_committed).sum();
    run.problems.extend(histories.iter().flat_map(|h| h.bad_reads.iter().cloned()));
    let uncached = ClientOptions { cache: false, block_cache_bytes: 0, ..cluster.client_options };
    let finals = spawn_client_with(&cluster, uncached, move |client| async move {
        file_workload::check_finals(&client, &histories).await
    })
    .await
    .expect("file check client")
    .0;
    run.problems.extend(finals);

    if !wait_for_scrub(&cluster).await {
        run.problems.push("no scrub pass completed after the changes".into());
    }
    let leader = cluster.leader().await.expect("a leader");
    let found = checker::blocks::check(&cluster.state_of(leader), |id| cluster.block_store(id));
    if found.under_replicated > 0 {
        run.problems.push(format!("{} blocks under-replicated after a scrub pass", found.under_replicated));
    }
    run.problems.extend(found.problems);
    run
}

#[test]
fn block_servers_replaced_one_after_another_lose_no_block() {
    let runs = runner::planted_seeds(None, SEEDS, replacements_scenario);
    for (seed, run) in runs.iter().enumerate() {
        eprintln!(
            "seed {}: replaced {:?}, {} refused while refilling, {} writes, problems {:?}",
            seed + 1,
            run.replaced,
            run.refused,
            run.writes,
            run.problems
        );
        assert_eq!(run.replaced.len(), 3, "seed {}: every member of group 2 is replaced", seed + 1);
        assert!(run.writes > 0, "seed {}: the file clients wrote nothing", seed + 1);
        assert!(run.problems.is_empty(), "seed {}: {:?}", seed + 1, run.problems);
    }
    assert!(runs.iter().any(|run| run.refused > 0), "no change was ever refused while its group refilled");
}

/// The refill's twin: a group that takes its next change before the scrubber copied its
/// blocks to the new member loses the blocks only the dead members held.
#[test]
fn changes_that_do_not_wait_for_the_refill_are_caught() {
    let runs = runner::planted_seeds(Some(Planted::RefillSkipped), REFILL_TWIN_SEEDS, replacements_scenario);
    let caught = runs.iter().filter(|run| !run.problems.is_empty()).count();
    for run in &runs {
        eprintln!("planted refill-skipped: {} problems, first {:?}", run.problems.len(), run.problems.first());
    }
    eprintln!("planted refill-skipped: caught in {caught} of {REFILL_TWIN_SEEDS} seeds");
    assert!(caught > 0, "no lost block without the refill");
}

/// What the fence scenario saw: the problems the checkers found, and whether the commit's
/// stall outlasted both changes (the case the fence is for).
#[derive(Debug, Default)]
struct FenceRun {
    lined_up: bool,
    problems: Vec<String>,
}

async fn fence_scenario() -> FenceRun {
    use cffs_server::buggify::{force, Site};
    let mut run = FenceRun::default();
    // The collector must not take the stalled commit's blocks meanwhile (that case is the
    // tombstone rule's, `commit-ignores-tombstones`).
    let adjust = |config: &mut cffs_server::metadata::node::MetaNodeConfig| {
        config.gc.grace = Duration::from_secs(600);
    };
    let cluster = Arc::new(Cluster::start_full(3, adjust, true).await);
    cluster.with_client(|c| async move { file_workload::setup(&c).await }).await.expect("setup");
    // Server 4 is down for the writes: group 2's blocks are stored on 5 and 6 only.
    cluster.kill_block(4);
    force(Site::SlowBlockCommit, true);
    let data: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let written = data.clone();
    let writer = spawn_client(&cluster, move |c| async move {
        c.run(|txn| {
            let data = written.clone();
            async move { txn.write_file("/files/f", &data).await }
        })
        .await
    });
    // The blocks are written and checked; the commit stalls (5 s) before its proposal.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let started = tokio::time::Instant::now();
    for old in [6, 5] {
        loop {
            match cluster.replace_block_server(2, old).await {
                Ok(_) => break,
                Err(why) if why.contains("still refilling") => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(why) => panic!("replacing block server {old}: {why}"),
            }
        }
        cluster.kill_block(old);
    }
    run.lined_up = started.elapsed() < Duration::from_millis(3_000);
    force(Site::SlowBlockCommit, false);
    cluster.restart_block(4);
    if let Err(error) = writer.await.expect("writer").0 {
        run.problems.push(format!("the write failed: {error}"));
    }
    let uncached = ClientOptions { cache: false, block_cache_bytes: 0, ..cluster.client_options };
    let read = spawn_client_with(&cluster, uncached, |c| async move {
        c.run(|txn| async move { txn.read_file("/files/f").await }).await
    })
    .await
    .expect("reader")
    .0;
    match read {
        Ok(found) if found == data => {}
        Ok(found) => {
            run.problems.push(format!("/files/f reads {} bytes that differ from what was written", found.len()))
        }
        Err(error) => run.problems.push(format!("/files/f cannot be read: {error}")),
    }
    if wait_for_scrub(&cluster).await {
        let leader = cluster.leader().await.expect("a leader");
        run.problems.extend(checker::blocks::check(&cluster.state_of(leader), |id| cluster.block_store(id)).problems);
    }
    run
}

#[test]
fn a_commit_checked_before_its_groups_change_is_re_run() {
    let runs = runner::planted_seeds(None, SEEDS, fence_scenario);
    for (seed, run) in runs.iter().enumerate() {
        eprintln!("fence seed {}: lined up {}, problems {:?}", seed + 1, run.lined_up, run.problems);
        assert!(run.problems.is_empty(), "seed {}: {:?}", seed + 1, run.problems);
    }
    assert!(runs.iter().any(|run| run.lined_up), "the stalled commit never outlasted both changes");
}

/// The fence's twin: without it, the stalled commit applies, naming blocks that only the two
/// replaced (and dead) servers held.
#[test]
fn commits_checked_before_a_groups_change_are_caught_without_the_fence() {
    let runs = runner::planted_seeds(Some(Planted::SkipGroupChangeFence), SEEDS, fence_scenario);
    let caught = runs.iter().filter(|run| !run.problems.is_empty()).count();
    for run in &runs {
        eprintln!("planted skip-group-change-fence: lined up {}, problems {:?}", run.lined_up, run.problems.first());
    }
    eprintln!("planted skip-group-change-fence: caught in {caught} of {SEEDS} seeds");
    assert!(caught > 0, "no lost block without the fence");
}
