//! `cffs-fuse`: CFFS through the kernel's file system interface. `cffs mount DIR` serves a
//! cluster at DIR (each operation a transaction, file data committed at close), and
//! `cffs run -- CMD` runs one command as one transaction in a private mount. The `cffs`
//! binary is built here: the client crate's commands plus these two.

#[cfg(not(madsim))]
pub mod bench;
#[cfg(not(madsim))]
pub mod cli;
#[cfg(not(madsim))]
pub mod fs;
#[cfg(not(madsim))]
pub mod mount;
#[cfg(not(madsim))]
pub mod run;
pub mod write_buffer;

#[cfg(not(madsim))]
pub use fs::Scope;
