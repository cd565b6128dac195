//! Every bound of the metadata server and its protocol, in one place, with why it is what it
//! is. Clients read the ones that shape requests from `OpenSession`.

use std::time::Duration;

pub use cffs_proto::limits::{
    INLINE_DATA_MAX, NAME_LEN_MAX, ROOT_INO, RPC_MESSAGE_BYTES_MAX, SYMLINK_TARGET_MAX, TXN_BYTES_MAX, TXN_ID_LEN,
    TXN_KEYS_MAX,
};

/// Most entries one ReadDir page returns.
pub const READDIR_PAGE_MAX: usize = 1024;

/// Most inode numbers one AllocateInodes call hands out.
pub const INODE_ALLOCATE_MAX: u32 = 65_536;

/// Inode numbers below this are reserved (the root is `ROOT_INO`).
pub const INO_FIRST_ALLOCATED: u64 = 16;

/// Raft timing. Elections fire between the min and max timeout without a heartbeat. openraft
/// 0.9 followers refuse votes for `max` after the last heartbeat, so the first round after a
/// leader dies usually fails and the second wins; a wide window (min = max / 3) makes the
/// second round come sooner. Measured over 100 madsim seeds of the counter test: with
/// 200..600 ms, 80 elections took at most 2 × max (with 300..600: 68; with 450..600: 19).
pub const RAFT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);
pub const RAFT_ELECTION_TIMEOUT_MIN: Duration = Duration::from_millis(200);
pub const RAFT_ELECTION_TIMEOUT_MAX: Duration = Duration::from_millis(600);

/// A snapshot is built after this many log entries since the last one; the log before the
/// snapshot is then purged, keeping `RAFT_LOG_KEEP_AFTER_SNAPSHOT` entries for slow followers.
pub const RAFT_SNAPSHOT_EVERY_ENTRIES: u64 = 5_000;
pub const RAFT_LOG_KEEP_AFTER_SNAPSHOT: u64 = 1_000;

/// Size of one install-snapshot chunk.
pub const RAFT_SNAPSHOT_CHUNK_BYTES: u64 = 1024 * 1024;

/// How long a replica waits on one Raft RPC to a peer.
pub const RAFT_RPC_TIMEOUT: Duration = Duration::from_millis(1_000);

/// How long a client-facing request waits on Raft (commit or read index) before answering
/// with an unknown outcome.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Deduplication entries are kept for this many log indexes after the commit they record;
/// a client retries an unknown outcome for far less than that (see the client's
/// `COMMIT_RETRY_MAX`). Older entries are dropped when a snapshot is built.
pub const DEDUP_RETAIN_ENTRIES: u64 = 1_000_000;

const _: () = assert!((RAFT_SNAPSHOT_CHUNK_BYTES as usize) < RPC_MESSAGE_BYTES_MAX);
const _: () = assert!(ROOT_INO < INO_FIRST_ALLOCATED);
const _: () = assert!(RAFT_LOG_KEEP_AFTER_SNAPSHOT < RAFT_SNAPSHOT_EVERY_ENTRIES);
