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

/// Raft timing. A follower that hears nothing from a leader campaigns after openraft 0.9's
/// leader lease (`max`: until then the other voters refuse to vote) plus a random stagger
/// (`PROMPT_ELECTION_STAGGER`, see `raft/prompt_election.rs`); openraft's own timer, at the
/// lease plus a random `min..max` on a 1.5-heartbeat tick, is the fallback. `min` is 400 ms
/// so that timer rarely fires before the watcher's (lease + stagger + check + probe, at most
/// lease + 300 ms): with 200 ms, both followers' timers fired in one tick and split the vote.
pub const RAFT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);
pub const RAFT_ELECTION_TIMEOUT_MIN: Duration = Duration::from_millis(400);
pub const RAFT_ELECTION_TIMEOUT_MAX: Duration = Duration::from_millis(600);

/// How often the prompt-election watcher looks at the silence since the last leader contact.
pub const PROMPT_ELECTION_CHECK: Duration = Duration::from_millis(20);
/// The random part of a follower's wait past the lease: wide enough against simultaneous
/// candidates, small enough that an election after a leader's death ends within two election
/// timeouts (`2 × max`).
pub const PROMPT_ELECTION_STAGGER: std::ops::Range<Duration> = Duration::from_millis(30)..Duration::from_millis(230);
/// How long a follower about to campaign waits for the other voters' status (log length).
pub const PROMPT_ELECTION_PROBE_TIMEOUT: Duration = Duration::from_millis(50);

/// Leases (docs/design/leases.md): how long a grant or a session renewal is good for, and
/// the most a clock's rate may err, in parts per million. A writer waits at most one span
/// (`duration × (1 + drift)`) for a silent holder; a new leader waits one span before it
/// grants or writes. Clients renew their session every quarter of the duration, so a cached
/// item stays good as long as its session lives: the duration bounds only those two waits,
/// and short is better for both. 250 ms keeps a failover (election plus the new leader's
/// wait) within two election timeouts.
pub const LEASE_DURATION_DEFAULT: Duration = Duration::from_millis(250);
pub const LEASE_DRIFT_PPM_DEFAULT: u32 = 10_000;
/// Session numbers a leader reserves on disk with one synced write (`metadata/session_ids.rs`):
/// one fsync per this many sessions opened.
pub const SESSION_IDS_RESERVED_PER_WRITE: u64 = 4096;
/// Most live sessions one leader holds; one more is refused (the client retries, uncached
/// meanwhile) after a sweep of the expired ones. 64 Ki sessions cost the leader a keepalive
/// each every quarter lease, far past what one leader serves (README, "Many clients").
pub const SESSIONS_MAX: usize = 65_536;
/// Most keys one leader holds leases on; a read that would pass it is served without a
/// lease (after a sweep of the expired ones).
pub const LEASED_KEYS_MAX: usize = 1 << 20;
/// Most keys marked pending by the writes in flight on one leader (each commit marks the keys
/// it writes until it is applied); a commit that would pass it is refused as unavailable, to
/// be retried by its client.
pub const PENDING_WRITE_KEYS_MAX: usize = 1 << 20;
/// Most keepalives of one session waiting for their read-index rounds; a client that sends
/// more without waiting for the answers loses its session.
pub const SESSION_KEEPALIVES_IN_FLIGHT_MAX: usize = 64;
/// Most invalidations one session may leave unacknowledged. A session at it is sent no more,
/// is renewed and granted nothing, and writes on its keys wait out its leases instead; an
/// unanswered invalidation already ends a session after one lease, so this bounds what a
/// client that stops answering can make the leader hold within that lease.
pub const SESSION_INVALIDATIONS_UNACKED_MAX: usize = 4096;
/// Most events (invalidations, keepalive acks) queued for one session stream; a client that
/// lets more pile up gets none, and its leases run out instead.
pub const SESSION_EVENTS_QUEUE_MAX: usize = 1024;

/// A snapshot is built after this many log entries since the last one; the log before the
/// snapshot is then purged, keeping `RAFT_LOG_KEEP_AFTER_SNAPSHOT` entries for slow followers.
pub const RAFT_SNAPSHOT_EVERY_ENTRIES: u64 = 5_000;
pub const RAFT_LOG_KEEP_AFTER_SNAPSHOT: u64 = 1_000;

/// A snapshot frame holds about this many bytes of state pairs (`raft/snapshot_file.rs`):
/// what a snapshot's build, send, receipt or install holds in memory at once.
pub const SNAPSHOT_FRAME_BYTES: usize = 256 * 1024;
/// The longest snapshot frame record accepted: one pair may pass `SNAPSHOT_FRAME_BYTES`
/// alone, never this (a length past it in a received stream is corruption).
pub const SNAPSHOT_FRAME_RECORD_MAX: usize = 64 * 1024 * 1024;
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
