//! Counters the simulation reads to show that a seed exercised what it meant to (snapshots
//! installed while faults ran, for one), and the callers it killed, compiled only under
//! `cfg(madsim)`. Process-wide: each chaos seed runs in a process of its own, and a scenario
//! resets them when it starts.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

static SNAPSHOTS_INSTALLED: AtomicU64 = AtomicU64::new(0);
static COMMIT_HANDLERS_DROPPED: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The callers killed in the simulation running on this thread (each seed runs on a thread
    /// of its own, with its own addresses).
    static CALLERS_KILLED: RefCell<BTreeSet<IpAddr>> = const { RefCell::new(BTreeSet::new()) };
    /// Woken when a caller is killed.
    static CALLER_KILLED: Arc<tokio::sync::Notify> = Arc::new(tokio::sync::Notify::new());
}

pub fn reset() {
    SNAPSHOTS_INSTALLED.store(0, Ordering::SeqCst);
    COMMIT_HANDLERS_DROPPED.store(0, Ordering::SeqCst);
    CALLERS_KILLED.with(|killed| killed.borrow_mut().clear());
}

/// The client at `ip` was killed. Real tonic (hyper) then drops the futures of the handlers
/// serving its connections; madsim's tonic runs them to their end, so the handlers that
/// matter (a commit's) wait on `caller_killed` to be dropped as they would be.
pub fn kill_caller(ip: IpAddr) {
    CALLERS_KILLED.with(|killed| killed.borrow_mut().insert(ip));
    CALLER_KILLED.with(|notify| notify.notify_waiters());
}

/// Resolves once the client at `ip` has been killed.
pub async fn caller_killed(ip: IpAddr) {
    let notify = CALLER_KILLED.with(Arc::clone);
    loop {
        let notified = notify.notified();
        if CALLERS_KILLED.with(|killed| killed.borrow().contains(&ip)) {
            return;
        }
        notified.await;
    }
}

/// A replica installed a snapshot sent by its leader.
pub fn snapshot_installed() {
    SNAPSHOTS_INSTALLED.fetch_add(1, Ordering::SeqCst);
}

pub fn snapshots_installed() -> u64 {
    SNAPSHOTS_INSTALLED.load(Ordering::SeqCst)
}

/// A commit's handler was dropped because its caller was killed.
pub fn commit_handler_dropped() {
    COMMIT_HANDLERS_DROPPED.fetch_add(1, Ordering::SeqCst);
}

pub fn commit_handlers_dropped() -> u64 {
    COMMIT_HANDLERS_DROPPED.load(Ordering::SeqCst)
}
