//! Counters the simulation reads to show that a seed exercised what it meant to (snapshots
//! installed while faults ran, for one), compiled only under `cfg(madsim)`. Process-wide:
//! each chaos seed runs in a process of its own, and a scenario resets them when it starts.

use std::sync::atomic::{AtomicU64, Ordering};

static SNAPSHOTS_INSTALLED: AtomicU64 = AtomicU64::new(0);

pub fn reset() {
    SNAPSHOTS_INSTALLED.store(0, Ordering::SeqCst);
}

/// A replica installed a snapshot sent by its leader.
pub fn snapshot_installed() {
    SNAPSHOTS_INSTALLED.fetch_add(1, Ordering::SeqCst);
}

pub fn snapshots_installed() -> u64 {
    SNAPSHOTS_INSTALLED.load(Ordering::SeqCst)
}
