//! Storage: the `KvEngine` trait, its engines (RocksDB for real runs, a simulated disk for
//! simulation and tests), and the one keyspace file.

pub mod codec;
pub mod fail_stop;
pub mod keys;
pub mod kv_engine;
pub mod pending;
#[cfg(not(madsim))]
pub mod rocks;
pub mod sim_disk;

pub use kv_engine::{Cf, KvEngine, KvPairs, Pages, StorageError, WriteBatch};
