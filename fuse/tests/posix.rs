//! The POSIX conformance run (`posix/suite.rs`): first on a local directory, where every
//! check must pass (the expectations are Linux's own), then on a `cffs mount`, where the
//! checks that fail must be exactly the known deviations below, each with its reason; a
//! deviation that starts passing fails the run too, so the list (and the README's counts,
//! which this run prints) stays true.
#![cfg(not(madsim))]

#[macro_use]
mod common;
#[path = "posix/suite.rs"]
mod suite;

use common::{start_dev, Mount};

/// The checks CFFS fails on purpose, and why (ARCHITECTURE.md, "The mount").
const KNOWN_DEVIATIONS: &[(&str, &str)] = &[
    ("mkfifo: a FIFO is created", "CFFS stores files, directories and symlinks only: mknod of a FIFO is EPERM"),
    ("mknod: a character device keeps its numbers", "no device nodes in a shared file system: EPERM"),
    ("socket: bind makes a socket file", "no socket files (a socket cannot cross hosts anyway): EPERM"),
];

fn print(place: &str, report: &suite::Report) {
    let total = report.passed.len() + report.failed.len();
    println!("posix: {place}: {} of {total} checks passed, {} failed", report.passed.len(), report.failed.len());
    for (name, why) in &report.failed {
        println!("posix:   FAIL {name}: {why}");
    }
}

#[test]
fn posix_checks_pass_except_the_known_deviations() {
    skip_unless_mountable!();
    let local = tempfile::tempdir().expect("a local directory");
    let report = suite::run(local.path());
    print(&format!("local directory {}", local.path().display()), &report);
    assert!(report.failed.is_empty(), "the suite's expectations do not hold on a local directory");

    let dev = start_dev();
    let mount = Mount::start(&dev);
    let report = suite::run(mount.dir.path());
    print("cffs mount", &report);
    let failed: Vec<&str> = report.failed.iter().map(|(name, _)| *name).collect();
    let known: Vec<&str> = KNOWN_DEVIATIONS.iter().map(|(name, _)| *name).collect();
    let unexpected: Vec<_> = failed.iter().filter(|name| !known.contains(name)).collect();
    let now_passing: Vec<_> = known.iter().filter(|name| !failed.contains(name)).collect();
    assert!(unexpected.is_empty(), "checks failed on the mount: {unexpected:?}");
    assert!(now_passing.is_empty(), "known deviations now pass (remove them from the list): {now_passing:?}");
}
