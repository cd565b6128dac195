//! The block service: file data as immutable, checksummed blocks (docs/design/blocks.md).
//! `store.rs` is the disk trait and record, `file_store.rs` the real disk, `sim_store.rs` the
//! simulated one, `service.rs` the gRPC service, `data_port.rs` the TCP port that takes block
//! writes without gRPC's copies, `node.rs` a block server process, and
//! `check.rs` the metadata leader's check that a commit's new blocks are stored, and
//! `scrub.rs` the leader's scrubber, which re-reads every copy and repairs bad or missing ones,
//! and `gc.rs` the leader's collector of unreferenced blocks.

pub mod check;
pub mod data_port;
#[cfg(not(madsim))]
pub mod file_store;
pub mod gc;
pub mod node;
pub mod scrub;
pub mod service;
pub mod sim_store;
pub mod store;

/// How the metadata leader looks after the blocks: the scrubber's and the collector's pace.
#[derive(Debug, Clone, Copy, Default)]
pub struct Maintenance {
    pub scrub: scrub::ScrubConfig,
    pub gc: gc::GcConfig,
}
