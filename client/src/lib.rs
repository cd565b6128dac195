//! `cffs-client`: the CFFS client library. `Client::connect` reaches a cluster;
//! `client.begin()` starts a `Transaction` with the POSIX-like namespace operations;
//! `client.run(|txn| async move { … })` is the function-invocation scope that re-runs the
//! function when its commit conflicts.
//!
//! ```no_run
//! # async fn example() -> Result<(), cffs_client::FsError> {
//! let client = cffs_client::Client::connect(&["127.0.0.1:7101"])?;
//! let count = client
//!     .run(|txn| async move {
//!         let old = txn.read_file("/counter").await.unwrap_or_default();
//!         let n: u64 = String::from_utf8_lossy(&old).parse().unwrap_or(0) + 1;
//!         txn.write_file("/counter", n.to_string().as_bytes()).await?;
//!         Ok(n)
//!     })
//!     .await?;
//! # Ok(()) }
//! ```

pub mod blocks;
pub mod cache;
mod calls;
pub use calls::{parse_address_map, set_address_map};
pub mod client;
mod data_port;
pub mod error;
mod file_data;
mod inode_ops;
pub mod membership;
#[cfg(madsim)]
pub mod planted;
mod session;
pub mod txn;

pub use blocks::BlockStats;
pub use cache::CacheStats;
pub use client::{Client, ClientOptions};
pub use error::FsError;
pub use inode_ops::{RenameMode, SetAttr};
pub use session::InvalidationListener;
pub use txn::{Attr, DirEntry, FileHandle, Kind, Outcome, Transaction};

#[cfg(not(madsim))]
pub mod cli;
