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

static TRUST_BLOCK_CRC: AtomicBool = AtomicBool::new(false);

/// Arms (or disarms) a client that takes a block's bytes without checking their crc32 (the
/// server's `TrustBlockCrc` is the other half).
pub fn arm_trust_block_crc(armed: bool) {
    TRUST_BLOCK_CRC.store(armed, Ordering::SeqCst);
}

pub fn trust_block_crc() -> bool {
    TRUST_BLOCK_CRC.load(Ordering::Relaxed)
}

static BLOCK_MAP_LOSES_RANGE: AtomicBool = AtomicBool::new(false);

/// Arms (or disarms) a copy-on-write of the block map that loses a range: a write that
/// spans several blocks leaves the old block in place of the last one it touches.
pub fn arm_block_map_loses_range(armed: bool) {
    BLOCK_MAP_LOSES_RANGE.store(armed, Ordering::SeqCst);
}

pub fn block_map_loses_range() -> bool {
    BLOCK_MAP_LOSES_RANGE.load(Ordering::Relaxed)
}

static NO_OWN_WRITE_FENCE: AtomicBool = AtomicBool::new(false);

/// Arms (or disarms) a cache that takes a read's reply while the client's own commit of the
/// same key is in flight (the lease it carries may be one the commit dropped).
pub fn arm_no_own_write_fence(armed: bool) {
    NO_OWN_WRITE_FENCE.store(armed, Ordering::SeqCst);
}

pub fn no_own_write_fence() -> bool {
    NO_OWN_WRITE_FENCE.load(Ordering::Relaxed)
}
