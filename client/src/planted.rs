//! Planted client bugs, compiled only under `cfg(madsim)`, for the chaos harness to catch
//! (see the server's `planted` module).

use std::sync::atomic::{AtomicBool, Ordering};

static RENAME_WITHOUT_ANCESTOR_CHECK: AtomicBool = AtomicBool::new(false);

/// Arms (or disarms) a rename that does not check whether a directory moves under itself.
pub fn arm_rename_without_ancestor_check(armed: bool) {
    RENAME_WITHOUT_ANCESTOR_CHECK.store(armed, Ordering::SeqCst);
}

pub fn rename_without_ancestor_check() -> bool {
    RENAME_WITHOUT_ANCESTOR_CHECK.load(Ordering::Relaxed)
}

static IGNORE_INVALIDATIONS: AtomicBool = AtomicBool::new(false);

/// Arms (or disarms) a client that acknowledges invalidations without applying them.
pub fn arm_ignore_invalidations(armed: bool) {
    IGNORE_INVALIDATIONS.store(armed, Ordering::SeqCst);
}

pub fn ignore_invalidations() -> bool {
    IGNORE_INVALIDATIONS.load(Ordering::Relaxed)
}
