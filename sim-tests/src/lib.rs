//! Deterministic simulations of whole CFFS clusters: madsim nodes running the real server and
//! client code on simulated disks. Everything here compiles only under `--cfg madsim`; a plain
//! build of this crate is empty.

#[cfg(madsim)]
pub mod checker;
#[cfg(madsim)]
pub mod cluster;
#[cfg(madsim)]
pub mod disk;
#[cfg(madsim)]
pub mod file_workload;
#[cfg(madsim)]
pub mod nemesis;
#[cfg(madsim)]
pub mod runner;
#[cfg(madsim)]
pub mod scenario;
#[cfg(madsim)]
pub mod trace_hash;
#[cfg(madsim)]
pub mod workload;
