//! The metadata service: the namespace state (inodes, dentries, listing versions), the
//! transaction validator that runs at apply time, and the gRPC service in front of Raft.

pub mod batcher;
pub mod leases;
pub mod node;
pub mod read_index;
pub mod service;
pub mod session_ids;
pub mod sessions;
pub mod settings;
pub mod state;
pub mod txn;
