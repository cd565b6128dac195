//! `cffs-sim`: the chaos runner. Runs K seeds of the mixed workload under the swarm nemesis,
//! in parallel, and prints one line per failing seed (with the checker that caught it and the
//! command that replays it) and a summary. Build and run it under madsim:
//!
//! ```sh
//! RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR=~/.cache/cffs/target/sim \
//!   cargo run --release -p cffs-sim-tests --bin cffs-sim -- --seeds 10000
//! ```

#[cfg(madsim)]
fn main() -> std::process::ExitCode {
    use clap::Parser;

    #[derive(Parser)]
    #[command(name = "cffs-sim", about = "Run CFFS chaos simulations (seeds of the mixed workload under swarm faults)")]
    struct Args {
        /// How many seeds to run.
        #[arg(long, default_value_t = 100)]
        seeds: u64,
        /// The first seed.
        #[arg(long, default_value_t = 1)]
        start: u64,
        /// Parallel runs (default: one per core).
        #[arg(long)]
        jobs: Option<usize>,
        /// Replay exactly one seed, printing its whole report.
        #[arg(long)]
        seed: Option<u64>,
        /// With --seed: run it twice and fail at the first divergence.
        #[arg(long)]
        check_determinism: bool,
        /// Plant a known bug in the code under test, to see which checker catches it and how
        /// soon (the planted-bug tests do this for each).
        #[arg(long, value_enum)]
        plant: Option<cffs_sim_tests::runner::Planted>,
        /// With --seed: run it in this process and print its result as one JSON line (what
        /// the runner reads from each seed's process).
        #[arg(long, requires = "seed")]
        json: bool,
        /// Digest the run's whole event trace (every debug event, with its simulated time)
        /// into its report; what --check-determinism compares.
        #[arg(long)]
        trace_hash: bool,
    }

    let args = Args::parse();
    // Logs of the simulated nodes, when asked for (RUST_LOG=...), to stderr.
    if args.trace_hash && args.seed.is_some() && !args.check_determinism {
        cffs_sim_tests::trace_hash::install();
    } else if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .init();
    }
    let exe = std::env::current_exe().expect("the path of cffs-sim");
    let launcher = cffs_sim_tests::runner::Launcher::new(exe, args.plant);
    if let Some(seed) = args.seed {
        if args.check_determinism {
            return match launcher.check_determinism(seed) {
                Ok(()) => {
                    println!("seed {seed}: two runs identical");
                    std::process::ExitCode::SUCCESS
                }
                Err(difference) => {
                    println!("{difference}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
        if let Some(bug) = args.plant {
            bug.set(true);
        }
        let result = cffs_sim_tests::runner::run_seed_here(seed);
        if args.json {
            let json = serde_json::to_string(&result).expect("a seed result serializes");
            println!("{}{json}", cffs_sim_tests::runner::JSON_PREFIX);
        } else {
            print_result(&result, args.plant, true);
        }
        return if result.failed() { std::process::ExitCode::FAILURE } else { std::process::ExitCode::SUCCESS };
    }
    let jobs = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let started = std::time::Instant::now();
    let done = std::sync::atomic::AtomicU64::new(0);
    let results = launcher.run_seeds(args.start, args.seeds, jobs, |result| {
        let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if result.failed() {
            print_result(result, args.plant, false);
        }
        if n.is_multiple_of(10) || n == args.seeds {
            eprintln!("cffs-sim: {n}/{} seeds, {:.0} s", args.seeds, started.elapsed().as_secs_f64());
        }
    });
    let failed: Vec<_> = results.iter().filter(|r| r.failed()).collect();
    let seconds = started.elapsed().as_secs_f64();
    let commits: u64 = results.iter().filter_map(|r| r.report.as_ref()).map(|r| r.commits).sum();
    let faults: u64 = results.iter().filter_map(|r| r.report.as_ref()).map(|r| r.faults).sum();
    let anomalies: usize = results.iter().filter_map(|r| r.report.as_ref()).map(|r| r.violations.len()).sum::<usize>()
        + results.iter().filter(|r| r.panic.is_some()).count();
    let reports: Vec<&cffs_sim_tests::scenario::Report> = results.iter().filter_map(|r| r.report.as_ref()).collect();
    let sum = |f: fn(&cffs_sim_tests::scenario::Report) -> u64| reports.iter().map(|r| f(r)).sum::<u64>();
    let count = |f: fn(&cffs_sim_tests::scenario::Report) -> bool| reports.iter().filter(|r| f(r)).count();
    println!(
        "summary: {} seeds in {seconds:.1} s ({:.1} seeds/min, {jobs} jobs), {} failed, {anomalies} anomalies; {commits} commits, {faults} faults injected",
        results.len(),
        results.len() as f64 / seconds * 60.0,
        failed.len()
    );
    println!(
        "  cache: {} reads served from caches ({} seeds), {} local read-only commits ({} seeds); {} snapshots installed ({} seeds); {} client faults ({} seeds, {} clients killed); {} seeds with a majority impaired at once; {} replicas replaced ({} seeds); {} block servers replaced ({} seeds); {} seeds with skewed replica clocks",
        sum(|r| r.cache_hits),
        count(|r| r.cache_hits > 0),
        sum(|r| r.local_commits),
        count(|r| r.local_commits > 0),
        sum(|r| r.snapshots_installed),
        count(|r| r.snapshots_installed > 0),
        sum(|r| r.client_faults),
        count(|r| r.client_faults > 0),
        sum(|r| r.clients_killed),
        count(|r| r.impaired_max >= 2),
        sum(|r| r.replacements),
        count(|r| r.replacements > 0),
        sum(|r| r.block_servers_replaced),
        count(|r| r.block_servers_replaced > 0),
        count(|r| r.skewed_clocks),
    );
    // A run in which no seed served a cached read did not test the caches at all.
    let untested_cache = !reports.is_empty() && sum(|r| r.cache_hits) == 0;
    if untested_cache {
        println!("FAIL: no seed served a read from a client's cache");
    }
    if failed.is_empty() && !untested_cache {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

#[cfg(madsim)]
fn print_result(
    result: &cffs_sim_tests::runner::SeedResult,
    plant: Option<cffs_sim_tests::runner::Planted>,
    verbose: bool,
) {
    use clap::ValueEnum;
    let plant = plant
        .and_then(|bug| bug.to_possible_value())
        .map(|value| format!(" --plant {}", value.get_name()))
        .unwrap_or_default();
    let replay = format!(
        "RUSTFLAGS=\"--cfg madsim\" CARGO_TARGET_DIR=~/.cache/cffs/target/sim cargo run --release -p cffs-sim-tests --bin cffs-sim -- --seed {}{plant}",
        result.seed
    );
    if result.failed() {
        println!("FAIL seed {} caught by {:?}; replay: {replay}", result.seed, result.caught_by());
    } else {
        println!("ok seed {} ({:.1} s)", result.seed, result.wall.as_secs_f64());
    }
    if verbose || result.failed() {
        if let Some(panic) = &result.panic {
            println!("  panic: {panic}");
        }
        if let Some(report) = &result.report {
            println!("  plan: {}", report.plan.as_deref().unwrap_or("none"));
            println!("  faults {}, power losses {}, commits {}", report.faults, report.power_losses, report.commits);
            println!(
                "  cache hits {}, misses {}, local commits {}; snapshots installed {}; most replicas impaired at once {}; client faults {} ({} clients killed); replicas replaced {}",
                report.cache_hits,
                report.cache_misses,
                report.local_commits,
                report.snapshots_installed,
                report.impaired_max,
                report.client_faults,
                report.clients_killed,
                report.replacements
            );
            if report.file_writes > 0 || report.block_faults > 0 {
                println!(
                    "  blocks: {} block faults ({} servers replaced), {} file writes committed, {} file reads checked, {} blocks referenced at the end ({} under-replicated); collector: {} marked, {} copies deleted",
                    report.block_faults,
                    report.block_servers_replaced,
                    report.file_writes,
                    report.file_reads,
                    report.blocks_referenced,
                    report.blocks_under_replicated,
                    report.gc_tombstoned,
                    report.gc_deleted
                );
            }
            for skipped in &report.skipped {
                println!("  skipped: {skipped}");
            }
            for (checker, violation) in &report.violations {
                println!("  [{checker}] {violation}");
            }
        }
    }
}

#[cfg(not(madsim))]
fn main() {
    eprintln!("cffs-sim runs only in the simulated build: RUSTFLAGS=\"--cfg madsim\" (see its doc comment)");
}
