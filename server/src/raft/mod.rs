//! The Raft glue, generic over a group: the log store and the snapshot files over a
//! `KvEngine` (each group's keys start with its id), the transport between replicas (each
//! call names its group, and one server routes calls to every group it hosts), prompt
//! elections, and (under madsim) the async runtime. A group's own types, state machine and
//! service live with that service (the metadata group's in `metadata/`); nothing here knows
//! what a group's entries mean.

pub mod log_store;
pub mod network;
pub mod prompt_election;
#[cfg(madsim)]
pub mod runtime;
pub mod snapshot_file;

use openraft::{BasicNode, Entry, RaftTypeConfig};

/// A Raft group's id. Group 0 is the metadata group.
pub type GroupId = u32;

#[cfg(madsim)]
pub type Runtime = runtime::MadsimRuntime;
#[cfg(not(madsim))]
pub type Runtime = openraft::TokioRuntime;

/// How a group's log entry payload is stored: explicit bytes (a versioned record such as
/// protobuf, never a Rust layout), since the log outlives the binary that wrote it.
pub trait LogPayload: Sized {
    fn encode_payload(&self) -> Vec<u8>;
    fn decode_payload(bytes: &[u8]) -> Result<Self, String>;
}

/// What the glue asks of a group's openraft types: node ids and nodes as every group has
/// them, entries whose payload it can store, and snapshots streamed through the engine.
pub trait GroupTypes:
    RaftTypeConfig<
    NodeId = u64,
    Node = BasicNode,
    Entry = Entry<Self>,
    SnapshotData = snapshot_file::SnapshotFile,
    AsyncRuntime = Runtime,
    D: LogPayload,
>
{
}

impl<C> GroupTypes for C where
    C: RaftTypeConfig<
        NodeId = u64,
        Node = BasicNode,
        Entry = Entry<C>,
        SnapshotData = snapshot_file::SnapshotFile,
        AsyncRuntime = Runtime,
        D: LogPayload,
    >
{
}
