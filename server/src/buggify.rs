//! Two-level buggify points, compiled only under `cfg(madsim)`: each site is armed for a whole
//! run or not (decided from the run's seed, so runs differ in which sites they stress), and an
//! armed site fires at random, drawn from the simulation's RNG. Off unless the simulation
//! enables it (for the thread the simulation runs on). madsim's own buggify switch is not used:
//! it also delays one network message in ten by seconds, which would drown every other fault.
//! Every site provokes something correct code must survive: slow disks, slow apply, a reply
//! lost after the work was done, snapshots at odd moments, leadership changes.

use std::cell::Cell;

thread_local! {
    static ENABLED: Cell<bool> = const { Cell::new(false) };
    /// Sites a targeted scenario forces on: each fires every time it is reached.
    static FORCED: Cell<u64> = const { Cell::new(0) };
}

/// Makes `site` fire every time it is reached (or stops forcing it), for the simulation
/// running on this thread, whether or not the sites are enabled: a targeted scenario lines a
/// fault up this way (`tests/client_kill.rs`: a slow apply).
pub fn force(site: Site, on: bool) {
    FORCED.with(|forced| {
        let bit = 1u64 << (site as u64);
        forced.set(if on { forced.get() | bit } else { forced.get() & !bit });
    });
}

/// True when a targeted scenario forces `site` (`force`).
pub fn forced(site: Site) -> bool {
    FORCED.with(|forced| forced.get() & (1u64 << (site as u64)) != 0)
}

/// Turns the buggify sites on or off for the simulation running on this thread.
pub fn enable(on: bool) {
    ENABLED.with(|enabled| enabled.set(on));
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// The log append's flush is reported late.
    LogAppendDelay = 1,
    /// Applying an entry takes a while.
    ApplyDelay = 2,
    /// A commit's reply is dropped after the commit was applied (the client sees a timeout).
    DropCommitReply = 3,
    /// A snapshot is built now.
    SnapshotNow = 4,
    /// A follower starts an election now, deposing the leader.
    ForceElection = 5,
    /// A commit's caller goes away mid-commit (its client dies or its deadline passes):
    /// tonic then drops the handler's future where it stands, which madsim's tonic never
    /// does. The caller sees a timeout.
    CallerGone = 6,
    /// A commit naming new blocks stalls between the leader's block check and its proposal
    /// (a slow leader, a long lease wait): the collector may mark and delete its blocks
    /// meanwhile, and the commit must then abort. Forced, it stalls its longest (5 s), so a
    /// scenario can change the block's group in the meantime.
    SlowBlockCommit = 7,
    /// A committed write's end (its pending marks, its lease on commit) comes late, after
    /// its entry applied: another write of its keys may apply meanwhile. Forced, it waits
    /// 500 ms.
    CommitEndDelay = 8,
    /// A snapshot's build (off the apply path, from the engine's point-in-time view) takes a
    /// while: entries go on being applied, snapshots installed, and the log purged meanwhile.
    SnapshotBuildDelay = 9,
}

/// True when `site` is armed in this run and fires this time (with probability `p`).
pub fn fire(site: Site, p: f64) -> bool {
    use rand::Rng;
    if forced(site) {
        return true;
    }
    if !ENABLED.with(|enabled| enabled.get()) {
        return false;
    }
    let seed = madsim::runtime::Handle::current().seed();
    // Armed for about half of the runs, a different half per site.
    let mixed = (seed ^ (site as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    (mixed >> 63) == 1 && madsim::rand::thread_rng().gen_bool(p)
}

/// A short random delay, for the delay sites.
pub async fn delay() {
    delay_up_to(50).await
}

/// A random delay of 1 to `ms_max - 1` ms.
pub async fn delay_up_to(ms_max: u64) {
    use rand::Rng;
    let ms = madsim::rand::thread_rng().gen_range(1..ms_max);
    madsim::time::sleep(std::time::Duration::from_millis(ms)).await;
}
