//! A client of one cluster: hands out inode numbers from ranges allocated in advance, starts
//! transactions and runs functions as transactions (`run`), and holds the caches. Finding
//! the leader, connections and the retry rules of every call are in `calls.rs`.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cffs_proto::metadata_client::MetadataClient;
use cffs_proto::{AllocateInodesRequest, ClusterStatusRequest, ClusterStatusResponse, CommitRequest, CommitResponse};
use rand::Rng;
use tonic::transport::Channel;

use crate::cache::{Cache, CacheStats, CACHE_BYTES_DEFAULT};
use crate::calls::Calls;
use crate::error::FsError;
use crate::session::InvalidationListener;
use crate::txn::{Outcome, Transaction};

pub use crate::calls::{RPC_ATTEMPTS_MAX, RPC_BACKOFF_MAX, RPC_BACKOFF_MIN, RPC_RETRY_DURATION_MAX, RPC_TIMEOUT};

/// How long a client may go without beginning a transaction before its session rests
/// (`ClientOptions::session_rest_after`). A function invoked every few seconds keeps its
/// warm cache; one idle for half a minute starts its next invocation cold, and costs the
/// leader nothing meanwhile (a session renews every quarter lease: with 250 ms leases, 16
/// messages a second each way per idle client).
pub const SESSION_REST_AFTER_DEFAULT: Duration = Duration::from_secs(30);

/// Inode numbers fetched per allocation.
pub const INODE_BATCH: u32 = 1024;
/// How many times `run` re-runs a function that conflicted, before `FsError::Busy`.
pub const RUN_ATTEMPTS_MAX: u32 = 100;
/// Backoff between re-runs of a conflicting function: jittered, doubling, capped.
pub const RUN_BACKOFF_MIN: Duration = Duration::from_millis(1);
pub const RUN_BACKOFF_MAX: Duration = Duration::from_millis(100);

/// A connection to one CFFS cluster. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

/// How a client caches (docs/design/leases.md).
#[derive(Debug, Clone, Copy)]
pub struct ClientOptions {
    /// Cache inodes, dentries and listings under leases, with a session to the leader.
    pub cache: bool,
    /// Most bytes the cache holds.
    pub cache_bytes: usize,
    /// Inode numbers fetched per allocation (1..=the server's `INODE_ALLOCATE_MAX`): fewer
    /// wastes fewer numbers when a client ends, more costs fewer allocation round trips.
    pub inode_batch: u32,
    /// Most bytes of file blocks the client caches (blocks are immutable: no lease).
    pub block_cache_bytes: usize,
    /// Ask the leader to lease what each commit writes back to this client, so a
    /// read-modify-write of what it wrote last sends only its commit (docs/design/leases.md,
    /// "Leases on commit"). Turn it off for a process that ends after its commit (a one-shot
    /// command): its leases would outlive it, and the next writer of those keys would wait
    /// them out (about one lease).
    pub lease_writes: bool,
    /// End the session after this long without a transaction begun (`None`: never), so an
    /// idle client costs the leader nothing; the next transaction opens a new session and
    /// reads without the cache (docs/design/leases.md, "Resting sessions").
    pub session_rest_after: Option<Duration>,
    /// Write blocks over each block server's data port (plain TCP, without gRPC's copies)
    /// where it has one; off, every block goes over gRPC (docs/design/blocks.md).
    pub block_data_port: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            cache: true,
            cache_bytes: CACHE_BYTES_DEFAULT,
            inode_batch: INODE_BATCH,
            block_cache_bytes: crate::blocks::BLOCK_CACHE_BYTES_DEFAULT,
            lease_writes: true,
            session_rest_after: Some(SESSION_REST_AFTER_DEFAULT),
            block_data_port: true,
        }
    }
}

pub(crate) struct Inner {
    /// Leader following and calls to the metadata group (shared, weakly, with the session).
    pub(crate) calls: Arc<Calls>,
    /// Inode numbers allocated to this client and not yet used: [next, end).
    inodes: Mutex<(u64, u64)>,
    /// Random per client; with `txn_seq`, makes transaction ids unique.
    client_id: u64,
    txn_seq: AtomicU64,
    /// The sequence numbers of this client's transactions begun and not yet dropped: the
    /// lowest says what every commit may tell the leader is settled.
    open_txns: Mutex<std::collections::BTreeSet<u64>>,
    options: ClientOptions,
    pub(crate) cache: Arc<Mutex<Cache>>,
    /// Told of every invalidation the session applies (the mount drops the kernel's copies).
    listener: Arc<Mutex<Option<InvalidationListener>>>,
    /// Block servers, the cluster map and the block cache.
    pub(crate) blocks: crate::blocks::BlockIo,
    session_started: AtomicBool,
    /// When a transaction last began: the session rests when there is none for a while.
    activity: Arc<crate::session::Activity>,
}

/// Splits an endpoints list (`host:port,host:port`) and checks it.
pub fn parse_endpoints(text: &str) -> Result<Vec<String>, FsError> {
    let endpoints: Vec<String> = text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
    if endpoints.is_empty() {
        return Err(FsError::Invalid("no endpoints given".into()));
    }
    for endpoint in &endpoints {
        if !endpoint.contains(':') || endpoint.contains('/') {
            return Err(FsError::Invalid(format!("endpoint '{endpoint}' is not HOST:PORT")));
        }
    }
    Ok(endpoints)
}

impl Client {
    /// Connects to a cluster through any of its metadata replicas (HOST:PORT each). No
    /// request is sent until the first operation: connecting never blocks.
    pub fn connect<S: AsRef<str>>(endpoints: &[S]) -> Result<Client, FsError> {
        Self::connect_with(endpoints, ClientOptions::default())
    }

    /// `connect`, with the cache set by `options`.
    // madsim's generator for the client id: deterministic in simulation (rand's outside,
    // which is what the disallowed-method rule cannot tell apart).
    #[allow(clippy::disallowed_methods)]
    pub fn connect_with<S: AsRef<str>>(endpoints: &[S], options: ClientOptions) -> Result<Client, FsError> {
        let endpoints = parse_endpoints(&endpoints.iter().map(|e| e.as_ref()).collect::<Vec<_>>().join(","))?;
        Ok(Client {
            inner: Arc::new(Inner {
                calls: Arc::new(Calls::new(endpoints)),
                inodes: Mutex::new((0, 0)),
                client_id: madsim::rand::thread_rng().gen(),
                txn_seq: AtomicU64::new(1),
                open_txns: Mutex::new(std::collections::BTreeSet::new()),
                options,
                cache: Arc::new(Mutex::new(Cache::new(options.cache_bytes))),
                listener: Arc::new(Mutex::new(None)),
                blocks: crate::blocks::BlockIo::new(options.block_cache_bytes, options.block_data_port),
                session_started: AtomicBool::new(false),
                activity: Arc::new(crate::session::Activity::new()),
            }),
        })
    }

    /// Whether commits ask for leases on what they write (`ClientOptions::lease_writes`).
    pub(crate) fn lease_writes(&self) -> bool {
        self.inner.options.lease_writes
    }

    /// The cache, when this client caches; starts its session on first use.
    pub(crate) fn cache(&self) -> Option<&Mutex<Cache>> {
        if !self.inner.options.cache {
            return None;
        }
        // A load first: the read path calls this on every cache access.
        if !self.inner.session_started.load(Ordering::Acquire)
            && !self.inner.session_started.swap(true, Ordering::SeqCst)
        {
            let link = crate::session::SessionLink {
                calls: Arc::downgrade(&self.inner.calls),
                cache: self.inner.cache.clone(),
                listener: self.inner.listener.clone(),
                activity: self.inner.activity.clone(),
                rest_after: self.inner.options.session_rest_after,
            };
            tokio::spawn(crate::session::run(link));
        }
        Some(&self.inner.cache)
    }

    /// The cache, shared (for what outlives a borrow of the client: a commit's own write).
    pub(crate) fn cache_shared(&self) -> Option<Arc<Mutex<Cache>>> {
        self.cache().map(|_| self.inner.cache.clone())
    }

    /// Calls `listener` with the keys of every invalidation the session applies to the cache,
    /// before it is acknowledged (so before the writer's commit completes), and with `None`
    /// when the session is lost and the whole cache dropped. A FUSE mount drops the kernel's
    /// copies of what changed here. The listener must not block.
    pub fn on_invalidate(&self, listener: InvalidationListener) {
        *self.inner.listener.lock().expect("listener lock") = Some(listener);
    }

    /// Requests this client has sent (every attempt of every call; the session stream's
    /// keepalives and acknowledgements are not counted). A transaction served from the cache
    /// sends none.
    pub fn requests_sent(&self) -> u64 {
        self.inner.calls.requests_sent()
    }

    /// The cache's counters (all zero when the cache is off).
    pub fn cache_stats(&self) -> CacheStats {
        self.inner.cache.lock().expect("cache lock").stats()
    }

    /// Starts a transaction. Nothing is sent until it reads something that is not cached.
    pub fn begin(&self) -> Transaction {
        self.inner.activity.touch();
        // Taken and recorded under one lock: a commit racing this begin must not see a later
        // sequence open and not this one, or it would settle this one before it started.
        let seq = {
            let mut open = self.inner.open_txns.lock().expect("open transactions lock");
            let seq = self.inner.txn_seq.fetch_add(1, Ordering::Relaxed);
            open.insert(seq);
            seq
        };
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.inner.client_id.to_be_bytes());
        id[8..].copy_from_slice(&seq.to_be_bytes());
        Transaction::new(self.clone(), id)
    }

    /// A transaction of this client is dropped: it will never send its commit again.
    pub(crate) fn txn_ended(&self, txn_id: &[u8; 16]) {
        if let Some(seq) = self.own_seq(txn_id) {
            self.inner.open_txns.lock().expect("open transactions lock").remove(&seq);
        }
    }

    /// The sequence number of `txn_id` when it is one of this client's.
    fn own_seq(&self, txn_id: &[u8]) -> Option<u64> {
        let (client, seq) = (txn_id.get(..8)?, txn_id.get(8..16)?);
        (client == self.inner.client_id.to_be_bytes()).then(|| u64::from_be_bytes(seq.try_into().expect("8 bytes")))
    }

    /// What a commit of `txn_id` tells the leader is settled: every transaction of this
    /// client below the oldest one still open (the committing one is open, so never itself).
    fn settled_below(&self, txn_id: &[u8]) -> u64 {
        match self.own_seq(txn_id) {
            Some(seq) => self.inner.open_txns.lock().expect("open transactions lock").first().copied().unwrap_or(seq),
            None => 0,
        }
    }

    /// Runs `function` as one transaction, the way a function invocation runs: it commits
    /// when the function returns `Ok`, and re-runs the function from the start (with a new
    /// transaction) when the commit conflicts, with jittered backoff, at most
    /// `RUN_ATTEMPTS_MAX` times. An error the function returns is returned as is, unless
    /// the transaction's reads were already stale (then the error may be an artifact of
    /// reading an inconsistent state, and the function is re-run).
    pub async fn run<T, F, Fut>(&self, mut function: F) -> Result<T, FsError>
    where
        F: FnMut(Transaction) -> Fut,
        Fut: Future<Output = Result<T, FsError>>,
    {
        let mut backoff = RUN_BACKOFF_MIN;
        let mut last_conflict = String::new();
        for attempt in 0..RUN_ATTEMPTS_MAX {
            let txn = self.begin();
            // A first attempt may take fresh names for absent without a lookup; a re-run
            // (after a conflict, perhaps on such a name) looks every name up.
            txn.state().assume_new_names = attempt == 0;
            let retry = match function(txn.clone()).await {
                Ok(value) => match txn.commit().await {
                    Ok(Outcome::Committed { .. }) => return Ok(value),
                    Ok(Outcome::Conflict { key }) => {
                        last_conflict = key;
                        true
                    }
                    // Blocks it wrote were lost (or collected) before the commit: nothing was
                    // applied; a new run writes them again.
                    Err(FsError::BlockMissing(why)) => {
                        last_conflict = why;
                        true
                    }
                    Err(error) => return Err(error),
                },
                Err(error) if error.is_transient() => return Err(error),
                Err(error) => match txn.validate().await? {
                    Outcome::Committed { .. } => return Err(error),
                    Outcome::Conflict { key } => {
                        last_conflict = key;
                        true
                    }
                },
            };
            debug_assert!(retry);
            // madsim's generator: deterministic in simulation (rand's outside, which is what
            // the disallowed-method rule cannot tell apart).
            #[allow(clippy::disallowed_methods)]
            let jitter = madsim::rand::thread_rng().gen_range(0..=backoff.as_micros() as u64);
            tokio::time::sleep(Duration::from_micros(jitter)).await;
            backoff = (backoff * 2).min(RUN_BACKOFF_MAX);
        }
        Err(FsError::Busy(format!("still conflicting after {RUN_ATTEMPTS_MAX} attempts on {last_conflict}")))
    }

    /// Calls the leader with `call`, following leader hints (`Calls::call`).
    pub(crate) async fn call<T, F, Fut>(&self, what: &str, mutates: bool, call: F) -> Result<T, FsError>
    where
        F: Fn(MetadataClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.inner.calls.call(what, mutates, call).await
    }

    /// Sends a commit, retrying with the same id until its outcome is known.
    pub(crate) async fn commit_request(&self, request: &CommitRequest) -> Result<CommitResponse, FsError> {
        // Read once: every retry of this commit says the same (a lower floor is always safe).
        let settled_below = self.settled_below(&request.txn_id);
        self.call("commit", true, |mut client| {
            let request = CommitRequest { settled_below, ..request.clone() };
            async move { client.commit(request).await }
        })
        .await
    }

    /// A fresh inode number, from this client's allocated range.
    pub(crate) async fn allocate_ino(&self) -> Result<u64, FsError> {
        {
            let mut range = self.inner.inodes.lock().expect("inodes lock");
            if range.0 < range.1 {
                range.0 += 1;
                return Ok(range.0 - 1);
            }
        }
        // An allocation whose reply is lost wastes its range, which is harmless: retry it.
        let count = self.inner.options.inode_batch.max(1);
        let allocated = self
            .call("allocate inodes", true, |mut client| async move {
                client.allocate_inodes(AllocateInodesRequest { count }).await
            })
            .await?;
        if allocated.count == 0 {
            return Err(FsError::Internal("empty inode allocation".into()));
        }
        let mut range = self.inner.inodes.lock().expect("inodes lock");
        *range = (allocated.first + 1, allocated.first + u64::from(allocated.count));
        Ok(allocated.first)
    }

    /// The cluster's status as one replica sees it (the leader when reachable).
    pub async fn cluster_status(&self) -> Result<ClusterStatusResponse, FsError> {
        self.call(
            "cluster status",
            false,
            |mut client| async move { client.cluster_status(ClusterStatusRequest {}).await },
        )
        .await
    }

    /// Adds replica `id` at `addr` as a learner; returns once it has caught up with the log.
    pub async fn add_learner(&self, id: u64, addr: &str) -> Result<(), FsError> {
        let member = cffs_proto::Member { id, addr: addr.to_string(), voter: false };
        self.call("add learner", true, |mut client| {
            let request = cffs_proto::AddLearnerRequest { member: Some(member.clone()) };
            async move { client.add_learner(request).await }
        })
        .await
        .map(|_| ())
    }

    /// Makes `voters` the voters of the metadata group (joint consensus inside openraft).
    pub async fn change_membership(&self, voters: &[u64]) -> Result<(), FsError> {
        let voters = voters.to_vec();
        self.call("change membership", true, |mut client| {
            let request = cffs_proto::ChangeMembershipRequest { voters: voters.clone() };
            async move { client.change_membership(request).await }
        })
        .await
        .map(|_| ())
    }

    /// The status reported by every endpoint given at connect, in order; `Err` for those that
    /// did not answer.
    pub async fn cluster_status_all(&self) -> Vec<(String, Result<ClusterStatusResponse, FsError>)> {
        let mut all = Vec::new();
        for addr in self.inner.calls.endpoints().to_vec() {
            let result = self.replica_status(&addr).await;
            all.push((addr, result));
        }
        all
    }

    /// The status of the replica at `addr` as it sees itself (any replica, or a server not yet
    /// a member), within two seconds.
    pub async fn replica_status(&self, addr: &str) -> Result<ClusterStatusResponse, FsError> {
        let mut client = self.inner.calls.channel(addr)?;
        match tokio::time::timeout(Duration::from_secs(2), client.cluster_status(ClusterStatusRequest {})).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(FsError::from_status(&status)),
            Err(_) => Err(FsError::Unavailable(format!("{addr} did not answer"))),
        }
    }
}
