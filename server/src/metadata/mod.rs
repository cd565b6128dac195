//! The metadata service: the namespace state (inodes, dentries, listing versions), the
//! transaction validator that runs at apply time, the metadata group's Raft types and state
//! machine, and the gRPC service in front of Raft.

pub mod batcher;
pub mod leases;
pub mod node;
pub mod raft_types;
pub mod read_index;
pub mod service;
pub mod session_ids;
pub mod sessions;
pub mod settings;
pub mod state;
pub mod state_machine;
pub mod txn;

pub use raft_types::{MetaRaft, TypeConfig};

/// The metadata group's id: its log and meta keys, and its Raft calls, carry it.
pub const METADATA_GROUP: crate::raft::GroupId = 0;
