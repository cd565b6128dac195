//! Proof that the harness can fail: each planted bug, switched on for its test, must be caught
//! by a checker within `SEEDS_MAX` seeds. Every seed runs in a `cffs-sim` process of its own
//! with the bug planted there; each test prints the seed that caught its bug and the checkers
//! that did.
#![cfg(madsim)]

use cffs_sim_tests::runner::{Launcher, Planted};

const SEEDS_MAX: u64 = 50;

/// Runs seeds from 1 with `bug` planted until one fails; asserts that happens within
/// `SEEDS_MAX` seeds and returns the checkers that caught it.
fn caught_by(name: &str, bug: Planted) -> Vec<String> {
    // Each seed runs in a `cffs-sim` process of its own, with the bug planted there.
    let launcher = Launcher::new(env!("CARGO_BIN_EXE_cffs-sim"), Some(bug));
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let mut found = None;
    let mut start = 1;
    while start <= SEEDS_MAX && found.is_none() {
        let results = launcher.run_seeds(start, jobs.min(SEEDS_MAX - start + 1), jobs as usize, |_| {});
        found = results.into_iter().find(|r| r.failed()).map(|r| (r.seed, r.caught_by()));
        start += jobs;
    }
    let (seed, checkers) = found.unwrap_or_else(|| panic!("planted bug '{name}' not caught within {SEEDS_MAX} seeds"));
    eprintln!("planted bug '{name}': caught at seed {seed} by {checkers:?}");
    checkers
}

#[test]
fn skipped_read_set_validation_is_caught() {
    caught_by("skip read-set validation", Planted::SkipReadValidation);
}

#[test]
fn acknowledging_before_the_log_is_durable_is_caught() {
    caught_by("acknowledge before the log is durable", Planted::AckBeforeDurable);
}

#[test]
fn forgotten_deduplication_is_caught() {
    caught_by("forget deduplication", Planted::ForgetDedup);
}

#[test]
fn reads_without_the_read_index_are_caught() {
    caught_by("serve reads without the read index", Planted::FollowerRead);
}

#[test]
fn rename_without_the_ancestor_check_is_caught() {
    let checkers = caught_by("rename without the ancestor check", Planted::RenameWithoutAncestorCheck);
    assert!(checkers.iter().any(|c| c == "fsck"), "a directory loop is fsck's to find: {checkers:?}");
}

#[test]
fn blind_parent_updates_are_caught() {
    let checkers = caught_by("commutative parent update as blind overwrite", Planted::BlindParentUpdate);
    assert!(checkers.iter().any(|c| c == "fsck"), "a wrong link count is fsck's to find: {checkers:?}");
}

#[test]
fn a_client_that_ignores_invalidations_is_caught() {
    // (The other lease bug, a new leader that skips its wait, needs leases longer than an
    // election to show: `tests/leases.rs` plants it in a scenario built for it.)
    caught_by("client acknowledges invalidations without applying them", Planted::IgnoreInvalidations);
}
