//! The storage trait every engine implements. Nothing above this trait names RocksDB: madsim
//! refuses the system threads RocksDB starts, so the simulated build swaps the engine.
//!
//! Contract: a `write` is atomic (all of the batch or none of it is visible, before and after
//! a crash). A write with `sync = true` is durable when it returns. A write with
//! `sync = false` survives a process crash but may be lost on power loss, until a later
//! `sync`: what survives is a prefix of the unsynced batches, each whole (a write-ahead log's
//! recovery stops at the first missing or torn record).

use std::fmt;

/// Column families. Each engine keeps them apart; keys of different families never mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cf {
    /// Raft log entries, keyed by group and log index.
    RaftLog,
    /// Raft's own durable state, keyed by group: vote, committed and purged log ids, the last
    /// snapshot.
    RaftMeta,
    /// The replicated state machine: inodes, dentries, listing versions, dedup, system keys.
    State,
}

impl Cf {
    pub const ALL: [Cf; 3] = [Cf::RaftLog, Cf::RaftMeta, Cf::State];

    pub fn name(self) -> &'static str {
        match self {
            Cf::RaftLog => "raft_log",
            Cf::RaftMeta => "raft_meta",
            Cf::State => "state",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp {
    Put {
        cf: Cf,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        cf: Cf,
        key: Vec<u8>,
    },
    /// Deletes every key in `[start, end)`.
    DeleteRange {
        cf: Cf,
        start: Vec<u8>,
        end: Vec<u8>,
    },
}

/// An atomic group of writes.
#[derive(Debug, Default, Clone)]
pub struct WriteBatch {
    pub ops: Vec<BatchOp>,
}

impl WriteBatch {
    pub fn put(&mut self, cf: Cf, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(BatchOp::Put { cf, key, value });
    }

    pub fn delete(&mut self, cf: Cf, key: Vec<u8>) {
        self.ops.push(BatchOp::Delete { cf, key });
    }

    pub fn delete_range(&mut self, cf: Cf, start: Vec<u8>, end: Vec<u8>) {
        self.ops.push(BatchOp::DeleteRange { cf, start, end });
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// The engine failed to read or write. The replica stops serving until restarted.
    #[error("storage i/o: {0}")]
    Io(String),
    /// Bytes read back do not decode: this replica's copy is not to be trusted.
    #[error("storage corruption: {0}")]
    Corruption(String),
}

impl StorageError {
    pub fn corruption(what: impl fmt::Display) -> Self {
        StorageError::Corruption(what.to_string())
    }
}

pub type KvPair = (Vec<u8>, Vec<u8>);
pub type KvPairs = Vec<KvPair>;

/// One family's pairs as they were at one moment, in key order, a page at a time
/// (`KvEngine::snapshot_pages`).
pub type Pages = Box<dyn Iterator<Item = Result<KvPairs, StorageError>> + Send>;

pub trait KvEngine: Send + Sync {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;

    /// Keys in `[start, end)` in order (`end = None`: to the end of the family), at most
    /// `limit` of them.
    fn scan(&self, cf: Cf, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<KvPairs, StorageError>;

    /// The last key in `[start, end)`, if any.
    fn last(&self, cf: Cf, start: &[u8], end: &[u8]) -> Result<Option<KvPair>, StorageError>;

    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StorageError>;

    /// Makes every write so far durable.
    fn sync(&self) -> Result<(), StorageError>;

    /// Every pair of `cf` as it is when this returns, in pages of at most `page_pairs`, read
    /// as they are asked for: writes after this returns are never seen (a point-in-time
    /// view, what a snapshot is built from while apply goes on). The view lives as long as
    /// the pages do.
    fn snapshot_pages(&self, cf: Cf, page_pairs: usize) -> Result<Pages, StorageError>;
}
