//! Planted bugs, compiled only under `cfg(madsim)`: each switches off one thing correctness
//! depends on, so the chaos harness can prove it would notice (sim-tests/tests/planted.rs).
//! Switched on for the whole process by the simulation runner; never present in a real build.

use std::sync::atomic::{AtomicU8, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Bug {
    /// Apply commits without checking their read sets.
    SkipReadValidation = 1,
    /// Report log entries flushed before they are synced.
    AckBeforeDurable = 2,
    /// Forget the deduplication table: a retried commit applies twice.
    ForgetDedup = 3,
    /// Serve reads (and read-only validation) from any replica without a read index.
    FollowerRead = 4,
    /// Apply a commutative directory update as a blind overwrite of nlink.
    BlindParentUpdate = 5,
    /// A replica restarted as the leader of its stored term serves reads at openraft's read
    /// index alone, without waiting to apply the log it found at startup (chaos seed 182).
    NoRestartFloor = 6,
    /// A new leader grants leases and writes at once, without waiting out its
    /// predecessor's leases.
    SkipNewLeaderWait = 7,
    /// A leader process ignores the session numbers reserved by earlier processes of its
    /// replica, so a replica restarted into its stored term hands out ids again from 1
    /// (chaos seed 4494).
    ReuseSessionIds = 8,
    /// A failed read answers "absent" and the replica goes on serving (fail-stop planted
    /// away: `storage/fail_stop.rs`).
    ReadErrorAsAbsent = 9,
    /// Stored records' crcs are not checked (`storage/codec.rs`).
    SkipChecksums = 10,
    /// A replica that believes it leads serves reads without a read-index round (no quorum
    /// confirms it still leads): a leader cut off from its peers goes on answering clients.
    LeaderReadWithoutQuorum = 11,
    /// A leader sends a write's invalidations and goes on without waiting for their
    /// acknowledgements or the leases' expiry: a holder that is slow, paused or cut off
    /// serves the old value from its cache after the write is acknowledged.
    SkipLeaseWait = 12,
    /// A commit's write runs in the gRPC handler's own future rather than a task of its
    /// own: a caller that goes away mid-commit drops the write's pending marks while its
    /// entry may still commit, so a reader is granted a lease on the old value that no
    /// invalidation will end.
    WriteInHandler = 13,
    /// Inode ranges overlap by one: the last number of a range is the first of the next, so
    /// two clients that run out and allocate again create different files on one inode.
    OverlappingInodeRanges = 14,
    /// A snapshot install leaves out the snapshot's last frame of pairs (an off-by-one in
    /// the frame loop): the follower's state lacks what that frame held.
    SnapshotFrameSkipped = 15,
    /// Applying a membership change (after the first membership, the cluster's bootstrap)
    /// leaves the state machine's membership as it was: a
    /// snapshot then carries the old voters, and a replica that installs it, or restarts
    /// from it after the log is purged, counts votes and quorums among them.
    StaleAppliedMembership = 16,
    /// A block server acknowledges a block before it is durable (no fsync): a power loss
    /// of a majority of its group loses a block a committed file references.
    BlockAckBeforeDurable = 17,
    /// Block crcs are trusted, not checked: neither the block server before it answers a
    /// read nor the client after it, so a corrupted copy is served as the file's data.
    /// (With the client's twin, `cffs_client::planted::arm_trust_block_crc`.)
    TrustBlockCrc = 18,
    /// Commits ignore the collector's tombstones and fence: a transaction still in flight
    /// when the collector marks its (old enough, not yet referenced) blocks commits a
    /// reference to blocks that are then deleted. The twin of "GC without the grace rule":
    /// here what protects an in-flight transaction is the tombstone rule, not the clock.
    CommitIgnoresTombstones = 19,
    /// A batch of commits validated against the state before the batch: a later commit in
    /// one entry does not see what an earlier one wrote (a read of a key the earlier one
    /// changed passes validation), so one of two conflicting read-modify-writes is lost.
    BatchValidatesAgainstBase = 20,
    /// Only the first commit of a batch keeps a dedup record: a retry of any other one
    /// applies it a second time.
    BatchSharesDedup = 21,
    /// A block group's new member counts as refilled as soon as the change applies: the
    /// group takes its next change before the scrubber has copied the old blocks, so a few
    /// replacements in a row leave blocks on no member at all.
    RefillSkipped = 22,
    /// Commits whose block check ran before their group's last membership change are not
    /// aborted: a block the check saw on a majority of the old members may be on one member
    /// of the new group, past the refill pass.
    SkipGroupChangeFence = 23,
    /// A committed write is leased to its writer even while another write of its keys is
    /// pending, and without checking that the state still holds what it wrote: a writer
    /// whose commit raced another client's caches a value that the other commit replaced,
    /// under a lease that other commit never revoked.
    CommitLeaseUnchecked = 24,
    /// The keys a replica wrote before Raft groups had ids are left where they are at start
    /// (`raft::log_store::migrate_ungrouped` does nothing): the replica comes back with no
    /// vote and no log over a state applied far past them.
    UngroupedKeysLeft = 25,
    /// A commit of a transaction its client has settled (`CommitRequest.settled_below`) is
    /// not refused: a late copy whose dedup record was dropped applies a second time.
    SettledUnchecked = 26,
}

static ARMED: AtomicU8 = AtomicU8::new(0);

/// Arms `bug` (or none) for every simulation in this process.
pub fn arm(bug: Option<Bug>) {
    ARMED.store(bug.map_or(0, |b| b as u8), Ordering::SeqCst);
}

pub fn armed(bug: Bug) -> bool {
    ARMED.load(Ordering::Relaxed) == bug as u8
}
