//! `cffs-server`: the CFFS metadata replica and block server. The binary in `main.rs` is a
//! thin shell over `metadata::node::MetaNode` and `block::node::BlockNode`; the simulation
//! tests start the same nodes on simulated disks.

pub mod block;
#[cfg(madsim)]
pub mod buggify;
pub mod clock;
#[cfg(not(madsim))]
pub mod config;
pub mod constants;
#[cfg(not(madsim))]
pub mod http;
pub mod metadata;
pub mod metrics;
#[cfg(madsim)]
pub mod planted;
pub mod raft;
#[cfg(madsim)]
pub mod sim_stats;
pub mod storage;
