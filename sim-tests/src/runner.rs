//! Runs chaos seeds: each in its own madsim runtime with the disk simulator, collecting the
//! checker that caught each failing seed. A batch runs every seed in a process of its own
//! (`cffs-sim --seed N --json`), several at once: two runs in one process do not replay the
//! same, because openraft's unbiased `tokio::select!` draws from tokio's thread-local RNG,
//! which tokio seeds from a process-wide counter. A fresh process starts that counter over,
//! so a seed run in a batch is exactly the seed replayed alone.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use crate::disk::DiskSim;
use crate::scenario::{self, Report};

/// Simulated time one seed may take before it counts as stuck (a liveness failure).
pub const SEED_TIME_LIMIT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
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
    pub fn caught_by(&self) -> Vec<String> {
        let mut names: Vec<String> =
            self.report.iter().flat_map(|r| r.violations.iter().map(|(c, _)| c.clone())).collect();
        if self.panic.is_some() {
            names.push("panic".into());
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
    /// A client cache that takes a read's reply while (or after) its own commit of the same
    /// key was in flight: the lease it carries may be one the commit dropped.
    NoOwnWriteFence,
    /// A new leader that grants and writes without waiting out its predecessor's leases.
    SkipNewLeaderWait,
    /// A leader restarted into its stored term hands out session ids its previous process
    /// already gave to other clients (chaos seed 4494).
    ReuseSessionIds,
    /// A replica that fails a read answers as if the key were absent, and goes on serving.
    ReadErrorAsAbsent,
    /// Stored records' crcs are not checked: a corrupted record is believed.
    SkipChecksums,
    /// A replica that believes it leads serves reads without confirming it with a quorum (a
    /// leader cut off from its peers still answers clients).
    LeaderReadWithoutQuorum,
    /// A leader sends a write's invalidations and commits it without waiting for their
    /// acknowledgements or the leases' expiry.
    SkipLeaseWait,
    /// A commit's write runs in the gRPC handler's future: a caller that goes away
    /// mid-commit drops its pending marks while the entry may still commit.
    WriteInHandler,
    /// Inode ranges that overlap by one number (small ranges: clients allocate often).
    OverlappingInodeRanges,
    /// A snapshot install that leaves out the snapshot's last frame of pairs.
    SnapshotFrameSkipped,
    /// Membership changes applied without updating the state machine's membership.
    StaleAppliedMembership,
    /// Block servers acknowledge blocks before they are durable.
    BlockAckBeforeDurable,
    /// Block crcs are trusted by the block servers and the client, not checked.
    TrustBlockCrc,
    /// A copy-on-write write over several blocks keeps the old block for the last one.
    BlockMapLosesRange,
    /// Commits ignore the block collector's tombstones and fence.
    CommitIgnoresTombstones,
    /// A batch of commits validated against the state before the batch, not each against
    /// what the ones before it in the batch wrote.
    BatchValidatesAgainstBase,
    /// Only the first commit of a batch keeps a dedup record.
    BatchSharesDedup,
    /// A block group's new member counts as refilled at once: its next change may come
    /// before the old blocks were copied.
    RefillSkipped,
    /// Commits checked before their block group's last change are not aborted.
    SkipGroupChangeFence,
    /// A commit's writes leased to its writer without the pending and stored-value checks.
    CommitLeaseUnchecked,
    /// Raft keys written before groups had ids are not moved under the metadata group.
    UngroupedKeysLeft,
    /// Late copies of transactions their client settled are applied, not refused.
    SettledUnchecked,
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
            Planted::ReuseSessionIds => server(Bug::ReuseSessionIds),
            Planted::ReadErrorAsAbsent => server(Bug::ReadErrorAsAbsent),
            Planted::SkipChecksums => server(Bug::SkipChecksums),
            Planted::LeaderReadWithoutQuorum => server(Bug::LeaderReadWithoutQuorum),
            Planted::SkipLeaseWait => server(Bug::SkipLeaseWait),
            Planted::WriteInHandler => server(Bug::WriteInHandler),
            Planted::OverlappingInodeRanges => server(Bug::OverlappingInodeRanges),
            Planted::SnapshotFrameSkipped => server(Bug::SnapshotFrameSkipped),
            Planted::StaleAppliedMembership => server(Bug::StaleAppliedMembership),
            Planted::BlockAckBeforeDurable => server(Bug::BlockAckBeforeDurable),
            Planted::TrustBlockCrc => {
                server(Bug::TrustBlockCrc);
                cffs_client::planted::arm_trust_block_crc(on);
            }
            Planted::BlockMapLosesRange => cffs_client::planted::arm_block_map_loses_range(on),
            Planted::CommitIgnoresTombstones => server(Bug::CommitIgnoresTombstones),
            Planted::BatchValidatesAgainstBase => server(Bug::BatchValidatesAgainstBase),
            Planted::BatchSharesDedup => server(Bug::BatchSharesDedup),
            Planted::RefillSkipped => server(Bug::RefillSkipped),
            Planted::SkipGroupChangeFence => server(Bug::SkipGroupChangeFence),
            Planted::CommitLeaseUnchecked => server(Bug::CommitLeaseUnchecked),
            Planted::UngroupedKeysLeft => server(Bug::UngroupedKeysLeft),
            Planted::SettledUnchecked => server(Bug::SettledUnchecked),
            Planted::IgnoreInvalidations => cffs_client::planted::arm_ignore_invalidations(on),
            Planted::NoOwnWriteFence => cffs_client::planted::arm_no_own_write_fence(on),
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

/// Stack of the thread a seed runs on (the simulation's tasks run on it; debug builds nest
/// deep futures).
const SEED_THREAD_STACK_BYTES: usize = 64 * 1024 * 1024;

/// Runs one seed in this process, on a thread of its own (std's `HashMap` keys are seeded by
/// madsim only in a thread that has made none yet). Deterministic as the first seed a
/// process runs; use `run_seeds` for more than one.
pub fn run_seed_here(seed: u64) -> SeedResult {
    std::thread::Builder::new()
        .name(format!("seed-{seed}"))
        .stack_size(SEED_THREAD_STACK_BYTES)
        .spawn(move || run_on_this_thread(seed))
        .expect("spawn a seed thread")
        .join()
        .unwrap_or_else(|_| SeedResult {
            seed,
            report: None,
            panic: Some("the seed's thread panicked".into()),
            wall: Duration::ZERO,
        })
}

fn run_on_this_thread(seed: u64) -> SeedResult {
    let started = Instant::now();
    cffs_server::buggify::enable(false);
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| runtime(seed).block_on(scenario::run())));
    let wall = started.elapsed();
    match outcome {
        Ok(mut report) => {
            report.trace_digest = crate::trace_hash::digest();
            SeedResult { seed, report: Some(report), panic: None, wall }
        }
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

/// How to start a seed in a process of its own: the `cffs-sim` binary, and the bug to plant.
#[derive(Debug, Clone)]
pub struct Launcher {
    pub exe: std::path::PathBuf,
    pub plant: Option<Planted>,
    /// Digest each seed's whole event trace (slower: every debug event is formatted).
    pub trace_hash: bool,
}

/// The `cffs-sim` binary to launch seeds with: `CFFS_SIM_EXE` when set (the test command
/// points it at the release build, several times faster per seed), else `built` (the test
/// binary's own debug build, `env!("CARGO_BIN_EXE_cffs-sim")`).
pub fn sim_exe(built: &str) -> std::path::PathBuf {
    std::env::var_os("CFFS_SIM_EXE").map_or_else(|| built.into(), Into::into)
}

impl Launcher {
    pub fn new(exe: impl Into<std::path::PathBuf>, plant: Option<Planted>) -> Launcher {
        Launcher { exe: exe.into(), plant, trace_hash: false }
    }

    /// Runs `seed` in a child process (`cffs-sim --seed N --json`).
    pub fn run_seed(&self, seed: u64) -> SeedResult {
        use clap::ValueEnum;
        let mut command = std::process::Command::new(&self.exe);
        command.args(["--seed", &seed.to_string(), "--json"]);
        if self.trace_hash {
            command.arg("--trace-hash");
        }
        if let Some(value) = self.plant.and_then(|bug| bug.to_possible_value()) {
            command.args(["--plant", value.get_name()]);
        }
        let failed = |why: String| SeedResult { seed, report: None, panic: Some(why), wall: Duration::ZERO };
        let output = match command.stderr(std::process::Stdio::null()).output() {
            Ok(output) => output,
            Err(error) => return failed(format!("start {}: {error}", self.exe.display())),
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        match stdout.lines().rev().find_map(|line| line.strip_prefix(JSON_PREFIX)) {
            Some(json) => serde_json::from_str(json).unwrap_or_else(|e| failed(format!("seed result: {e}"))),
            None => failed(format!("the seed's process ended ({}) without a result", output.status)),
        }
    }

    /// Runs `seed` twice, each in a process of its own, digesting each run's whole event
    /// trace; `Err` describes the first difference between the two runs' reports (plan,
    /// faults, commits, violations, a digest of every replica's final state, and the trace
    /// digest).
    pub fn check_determinism(&self, seed: u64) -> Result<(), String> {
        let traced = Launcher { trace_hash: true, ..self.clone() };
        let describe = |result: &SeedResult| format!("{:?} {:?}", result.report, result.panic);
        let (first, second) = (describe(&traced.run_seed(seed)), describe(&traced.run_seed(seed)));
        if first == second {
            Ok(())
        } else {
            Err(format!("seed {seed} diverged:\n  first:  {first}\n  second: {second}"))
        }
    }

    /// Runs seeds `first..first + count`, `jobs` processes at a time; calls `on_result` as
    /// each finishes. Results come back in seed order.
    pub fn run_seeds(
        &self,
        first: u64,
        count: u64,
        jobs: usize,
        on_result: impl Fn(&SeedResult) + Sync,
    ) -> Vec<SeedResult> {
        let next = std::sync::atomic::AtomicU64::new(first);
        let results = std::sync::Mutex::new(Vec::new());
        // Runner threads only wait for child processes.
        #[allow(clippy::disallowed_methods)]
        std::thread::scope(|scope| {
            for _ in 0..jobs.max(1) {
                scope.spawn(|| loop {
                    let seed = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if seed >= first + count {
                        break;
                    }
                    let result = self.run_seed(seed);
                    on_result(&result);
                    results.lock().expect("results lock").push(result);
                });
            }
        });
        let mut results = results.into_inner().expect("results lock");
        results.sort_by_key(|r| r.seed);
        results
    }
}

/// The line of `cffs-sim --seed N --json` that carries the result.
pub const JSON_PREFIX: &str = "seed-result: ";

/// Runs a scenario test for the seeds `MADSIM_TEST_SEED` (default 1) and on
/// (`MADSIM_TEST_NUM`, default 1), each on a fresh thread with nothing else running in the
/// process meanwhile, so that the same seeds replay the same in another process. (madsim's
/// own test harness runs a tokio runtime on the calling thread alongside the seed's thread,
/// and both draw tokio's process-wide seed counter in whatever order they happen to run.)
pub fn scenario_seeds<F, Fut>(scenario: F)
where
    F: Fn() -> Fut + Send + Clone + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let env_u64 = |name: &str, default: u64| -> u64 {
        match std::env::var(name) {
            Ok(text) => text.parse().unwrap_or_else(|_| panic!("{name} must be an integer, not {text:?}")),
            Err(_) => default,
        }
    };
    let first = env_u64("MADSIM_TEST_SEED", 1);
    let count = env_u64("MADSIM_TEST_NUM", 1);
    // Planted switches are process-wide: no planted run of another test may overlap these.
    let _turn = PLANTING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    for seed in first..first + count {
        if let Err(panic) = on_seed_thread(seed, scenario.clone()) {
            eprintln!("note: replay this seed alone with MADSIM_TEST_SEED={seed} MADSIM_TEST_NUM=1");
            std::panic::resume_unwind(panic);
        }
    }
}

/// Runs `scenario` in a simulation seeded with `seed`, on a fresh thread.
fn on_seed_thread<T, F, Fut>(seed: u64, scenario: F) -> std::thread::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
{
    std::thread::Builder::new()
        .name(format!("seed-{seed}"))
        .stack_size(SEED_THREAD_STACK_BYTES)
        .spawn(move || {
            let mut runtime = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
            runtime.set_time_limit(SEED_TIME_LIMIT);
            runtime.block_on(scenario())
        })
        .expect("spawn a seed thread")
        .join()
}

/// Planted switches are process-wide: tests that plant, and the scenario runs beside them in
/// one test binary, take turns.
static PLANTING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `scenario` for seeds `1..=seeds` with `plant` (if any) switched on, and returns what
/// each seed's run returned. For targeted scenarios that show a planted bug next to the same
/// scenario without it.
pub fn planted_seeds<T, F, Fut>(plant: Option<Planted>, seeds: u64, scenario: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn() -> Fut + Send + Clone + 'static,
    Fut: std::future::Future<Output = T> + 'static,
{
    let _turn = PLANTING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(bug) = plant {
        bug.set(true);
    }
    let runs: Vec<std::thread::Result<T>> = (1..=seeds).map(|seed| on_seed_thread(seed, scenario.clone())).collect();
    if let Some(bug) = plant {
        bug.set(false);
    }
    runs.into_iter().map(|run| run.unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
}
