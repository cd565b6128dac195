//! The Raft glue: openraft's type configuration, its log store and state machine over a
//! `KvEngine`, the transport between replicas, and (under madsim) the async runtime.

pub mod log_store;
pub mod network;
pub mod prompt_election;
#[cfg(madsim)]
pub mod runtime;
pub mod snapshot_file;
pub mod state_machine;
pub mod type_config;

pub use type_config::{MetaRaft, TypeConfig};
