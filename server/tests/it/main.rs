#![cfg(not(madsim))]
//! Integration tests of `cffs-server` as real processes on loopback, driven through the
//! `cffs-client` library: POSIX namespace semantics, and a three-replica cluster that loses
//! its leader to SIGKILL mid-run without losing an acknowledged commit, and leases with
//! the client cache (a frozen client under SIGSTOP), and file data on block servers (copy-on-write
//! cases, bad blocks, a corrupted replica, a 1 GiB file with a block server killed mid-write).

mod bad_input;
mod blocks;
mod harness;
mod kill_leader;
mod leases;
mod membership;
mod namespace;
mod observability;
