//! The stale-listing checker on a real cluster: listing writers create and remove entries
//! while warm readers list and stat the directories from their caches. With correct leases
//! the checker finds nothing (and the readers do commit locally); with a client that
//! acknowledges invalidations without applying them, it sees the stale listings, dentries
//! and directory inodes.
#![cfg(madsim)]

use std::time::Duration;

use cffs_client::{CacheStats, Client, ClientOptions};
use cffs_sim_tests::checker::listing;
use cffs_sim_tests::cluster::Cluster;
use cffs_sim_tests::runner::{self, Planted};
use cffs_sim_tests::workload;

const WRITERS: u64 = 2;
const READERS: usize = 2;
const OPS: usize = 30;
const SEEDS: u64 = 3;

/// One run: what the checker found, and the readers' cache counters summed.
async fn listing_scenario() -> (Vec<String>, CacheStats) {
    let cluster = Cluster::start(3).await;
    cluster.with_client(|client| async move { workload::listing_setup(&client).await }).await.expect("setup");
    let pause = Duration::from_millis(30);
    let writers: Vec<_> = (1..=WRITERS)
        .map(|writer| {
            let endpoints = cluster.endpoints();
            cluster.client_node().spawn(async move {
                let options = ClientOptions { cache: false, ..ClientOptions::default() };
                let client = Client::connect_with(&endpoints, options).expect("endpoints are valid");
                workload::listing_writer(client, writer, OPS, pause).await
            })
        })
        .collect();
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let endpoints = cluster.endpoints();
            cluster.client_node().spawn(async move {
                let client = Client::connect(&endpoints).expect("endpoints are valid");
                let reads = workload::listing_reader(client.clone(), WRITERS, OPS, pause).await;
                (reads, client.cache_stats())
            })
        })
        .collect();
    let mut ops = Vec::new();
    for handle in writers {
        ops.extend(handle.await.expect("writer"));
    }
    let mut reads = Vec::new();
    let mut stats = CacheStats::default();
    for handle in readers {
        let (history, reader_stats) = handle.await.expect("reader");
        reads.extend(history);
        stats.hits += reader_stats.hits;
        stats.local_commits += reader_stats.local_commits;
    }
    assert!(reads.len() > OPS, "most reads commit without faults: {} of {}", reads.len(), OPS * READERS);
    (listing::check(&ops, &reads), stats)
}

#[test]
fn correct_leases_give_no_stale_listing() {
    for (seed, (problems, stats)) in runner::planted_seeds(None, SEEDS, listing_scenario).into_iter().enumerate() {
        assert_eq!(problems, Vec::<String>::new(), "seed {}", seed + 1);
        // The readers were warm: the check was of cached reads, not only of the leader's.
        assert!(stats.hits > 0 && stats.local_commits > 0, "seed {}: {stats:?}", seed + 1);
    }
}

#[test]
fn ignored_invalidations_give_stale_listings() {
    let runs = runner::planted_seeds(Some(Planted::IgnoreInvalidations), SEEDS, listing_scenario);
    for (seed, (problems, _)) in runs.iter().enumerate() {
        eprintln!("seed {}: {} problems, first {:?}", seed + 1, problems.len(), problems.first());
        assert!(problems.iter().any(|p| p.starts_with("stale:")), "seed {}: {problems:?}", seed + 1);
    }
}
