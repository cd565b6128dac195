//! Proof that the harness can fail: each planted bug, switched on for the whole run, must be
//! caught by a checker within `SEEDS_MAX` seeds. Runs the bugs one after another (they are
//! process-wide switches), and prints how many seeds each needed and which checker caught it.
#![cfg(madsim)]

use cffs_server::planted::{arm, Bug};
use cffs_sim_tests::runner;

const SEEDS_MAX: u64 = 50;

enum Planted {
    Server(Bug),
    RenameWithoutAncestorCheck,
}

fn set(bug: &Planted, on: bool) {
    match bug {
        Planted::Server(bug) => arm(if on { Some(*bug) } else { None }),
        Planted::RenameWithoutAncestorCheck => cffs_client::planted::arm_rename_without_ancestor_check(on),
    }
}

/// The first seed (from 1) whose run fails, and the checkers that caught it.
fn first_failing_seed(bug: &Planted) -> Option<(u64, Vec<&'static str>)> {
    set(bug, true);
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let mut found = None;
    let mut start = 1;
    while start <= SEEDS_MAX && found.is_none() {
        let results = runner::run_seeds(start, jobs.min(SEEDS_MAX - start + 1), jobs as usize, |_| {});
        found = results.into_iter().find(|r| r.failed()).map(|r| (r.seed, r.caught_by()));
        start += jobs;
    }
    set(bug, false);
    found
}

#[test]
fn every_planted_bug_is_caught_within_fifty_seeds() {
    let bugs = [
        ("skip read-set validation", Planted::Server(Bug::SkipReadValidation)),
        ("acknowledge before the log is durable", Planted::Server(Bug::AckBeforeDurable)),
        ("forget deduplication", Planted::Server(Bug::ForgetDedup)),
        ("serve reads without the read index", Planted::Server(Bug::FollowerRead)),
        ("rename without the ancestor check", Planted::RenameWithoutAncestorCheck),
        ("commutative parent update as blind overwrite", Planted::Server(Bug::BlindParentUpdate)),
    ];
    let mut missed = Vec::new();
    for (name, bug) in &bugs {
        match first_failing_seed(bug) {
            Some((seed, checkers)) => eprintln!("planted bug '{name}': caught at seed {seed} by {checkers:?}"),
            None => missed.push(*name),
        }
    }
    assert!(missed.is_empty(), "not caught within {SEEDS_MAX} seeds: {missed:?}");
}
