//! Runs chaos seeds: each in its own madsim runtime with the disk simulator, in parallel
//! across threads, collecting the checker that caught each failing seed.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use crate::disk::DiskSim;
use crate::scenario::{self, Report};

/// Simulated time one seed may take before it counts as stuck (a liveness failure).
pub const SEED_TIME_LIMIT: Duration = Duration::from_secs(600);

pub struct SeedResult {
    pub seed: u64,
    pub report: Option<Report>,
    /// The panic message, when the run panicked (an assertion inside server or client code,
    /// or the time limit).
    pub panic: Option<String>,
    pub wall: Duration,
}

impl SeedResult {
    pub fn failed(&self) -> bool {
        self.panic.is_some() || self.report.as_ref().is_some_and(|r| !r.violations.is_empty())
    }

    /// The checkers that caught this seed ("panic" for a panic).
    pub fn caught_by(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> =
            self.report.iter().flat_map(|r| r.violations.iter().map(|(c, _)| *c)).collect();
        if self.panic.is_some() {
            names.push("panic");
        }
        names.sort_unstable();
        names.dedup();
        names
    }
}

/// A bug planted in the code under test (compiled only under madsim), for proving that the
/// checkers notice it. Process-wide: one at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Planted {
    /// Apply commits without checking their read sets.
    SkipReadValidation,
    /// Acknowledge log entries before they are synced.
    AckBeforeDurable,
    /// Forget deduplication: a retried commit applies twice.
    ForgetDedup,
    /// Serve reads from any replica without the read index.
    FollowerRead,
    /// Rename a directory without checking that it does not move under itself (client).
    RenameWithoutAncestorCheck,
    /// Apply a commutative parent update as a blind overwrite.
    BlindParentUpdate,
    /// A leader restarted in its stored term serves reads before applying its log.
    NoRestartFloor,
    /// A client that acknowledges invalidations without applying them (its cache goes stale).
    IgnoreInvalidations,
    /// A new leader that grants and writes without waiting out its predecessor's leases.
    SkipNewLeaderWait,
}

impl Planted {
    /// Switches this bug on or off for every simulation in the process.
    pub fn set(self, on: bool) {
        use cffs_server::planted::{arm, Bug};
        let server = |bug| arm(if on { Some(bug) } else { None });
        match self {
            Planted::SkipReadValidation => server(Bug::SkipReadValidation),
            Planted::AckBeforeDurable => server(Bug::AckBeforeDurable),
            Planted::ForgetDedup => server(Bug::ForgetDedup),
            Planted::FollowerRead => server(Bug::FollowerRead),
            Planted::BlindParentUpdate => server(Bug::BlindParentUpdate),
            Planted::NoRestartFloor => server(Bug::NoRestartFloor),
            Planted::SkipNewLeaderWait => server(Bug::SkipNewLeaderWait),
            Planted::IgnoreInvalidations => cffs_client::planted::arm_ignore_invalidations(on),
            Planted::RenameWithoutAncestorCheck => cffs_client::planted::arm_rename_without_ancestor_check(on),
        }
    }
}

fn runtime(seed: u64) -> madsim::runtime::Runtime {
    let mut runtime = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
    runtime.add_simulator::<DiskSim>();
    runtime.set_time_limit(SEED_TIME_LIMIT);
    runtime
}

/// Runs one seed.
pub fn run_seed(seed: u64) -> SeedResult {
    let started = Instant::now();
    // A run that panicked may have left the buggify sites on for this thread.
    cffs_server::buggify::enable(false);
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| runtime(seed).block_on(scenario::run())));
    let wall = started.elapsed();
    match outcome {
        Ok(report) => SeedResult { seed, report: Some(report), panic: None, wall },
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            SeedResult { seed, report: None, panic: Some(message), wall }
        }
    }
}

/// Runs `seed` twice; `Err` describes the first difference between the two runs' reports
/// (plan, faults, commits, violations, and a digest of every replica's final state).
pub fn check_determinism(seed: u64) -> Result<(), String> {
    let describe =
        |result: &SeedResult| format!("{:?} {:?}", result.report.as_ref().map(|r| format!("{r:?}")), result.panic);
    let (first, second) = (describe(&run_seed(seed)), describe(&run_seed(seed)));
    if first == second {
        Ok(())
    } else {
        Err(format!("seed {seed} diverged:\n  first:  {first}\n  second: {second}"))
    }
}

/// Runs seeds `first..first + count` on `jobs` threads; calls `on_result` as each finishes.
pub fn run_seeds(first: u64, count: u64, jobs: usize, on_result: impl Fn(&SeedResult) + Sync) -> Vec<SeedResult> {
    let next = std::sync::atomic::AtomicU64::new(first);
    let results = std::sync::Mutex::new(Vec::new());
    // Runner threads sit outside every simulation; each builds its own runtime.
    #[allow(clippy::disallowed_methods)]
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if seed >= first + count {
                    break;
                }
                let result = run_seed(seed);
                on_result(&result);
                results.lock().expect("results lock").push(result);
            });
        }
    });
    let mut results = results.into_inner().expect("results lock");
    results.sort_by_key(|r| r.seed);
    results
}
