//! `cffs-server`: the CFFS metadata replica (and later the block server). The binary in
//! `main.rs` is a thin shell over `metadata::node::MetaNode`; the simulation tests start the
//! same node on a simulated disk.

#[cfg(madsim)]
pub mod buggify;
pub mod clock;
pub mod constants;
pub mod metadata;
#[cfg(madsim)]
pub mod planted;
pub mod raft;
#[cfg(madsim)]
pub mod sim_stats;
pub mod storage;
