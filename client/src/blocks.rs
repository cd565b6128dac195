//! File data on the block servers: the cluster map (which block groups exist, who serves
//! them), block writes acknowledged by a majority of a group, block reads from any replica
//! with the crc32 checked on arrival, and the cache of blocks by id (docs/design/blocks.md).
//!
//! A block is immutable, so the cache needs no lease: a cached block is right for as long as
//! its id is referenced, and a new write is a new id. The cache is bounded in bytes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cffs_proto::block_client::BlockClient;
use cffs_proto::data_port::PutHead;
use cffs_proto::limits::BLOCK_ID_LEN;
use cffs_proto::{BlockGroup, BlockRef, ClusterMap, ErrorCode, GetBlockRequest, GetClusterMapRequest, PutBlockRequest};
use prost::bytes::Bytes;
use rand::Rng;
use tonic::transport::Channel;

use crate::client::Client;
use crate::data_port::{DataPorts, PutOutcome};
use crate::error::FsError;

/// Bytes of blocks a client caches by default.
pub const BLOCK_CACHE_BYTES_DEFAULT: usize = 256 * 1024 * 1024;
/// Blocks a streaming write or read keeps in flight: its memory is about this many blocks
/// (and their copies on the way to the servers), whatever the file's size.
pub const BLOCKS_IN_FLIGHT: usize = 4;
/// How long one block server has for one block request.
pub const BLOCK_RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// Once a majority has stored a block, how long the write waits for the rest of the group
/// before it goes on (the scrubber copies a block that a server missed).
pub const BLOCK_WRITE_STRAGGLER_WAIT: Duration = Duration::from_millis(200);
/// Attempts of one block write, each on a group (a fresh id each time).
pub const BLOCK_WRITE_ATTEMPTS: usize = 3;

/// Counters of the block path.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BlockStats {
    pub blocks_written: u64,
    pub bytes_written: u64,
    pub blocks_fetched: u64,
    pub bytes_fetched: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Copies that arrived with a wrong crc32 (or that the server found bad).
    pub crc_mismatches: u64,
}

#[derive(Default)]
struct Counters {
    blocks_written: AtomicU64,
    bytes_written: AtomicU64,
    blocks_fetched: AtomicU64,
    bytes_fetched: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    crc_mismatches: AtomicU64,
}

/// A byte-bounded LRU of blocks by id.
struct BlockCache {
    max_bytes: usize,
    bytes: usize,
    tick: u64,
    blocks: BTreeMap<Vec<u8>, (Bytes, u64)>,
    by_age: BTreeMap<u64, Vec<u8>>,
}

impl BlockCache {
    fn get(&mut self, id: &[u8]) -> Option<Bytes> {
        self.tick += 1;
        let tick = self.tick;
        let (data, age) = self.blocks.get_mut(id)?;
        self.by_age.remove(age);
        *age = tick;
        self.by_age.insert(tick, id.to_vec());
        Some(data.clone())
    }

    fn insert(&mut self, id: &[u8], data: Bytes) {
        if data.len() > self.max_bytes / 4 || self.blocks.contains_key(id) {
            return;
        }
        self.tick += 1;
        self.bytes += data.len();
        self.blocks.insert(id.to_vec(), (data, self.tick));
        self.by_age.insert(self.tick, id.to_vec());
        while self.bytes > self.max_bytes {
            let Some((_, oldest)) = self.by_age.pop_first() else { break };
            if let Some((data, _)) = self.blocks.remove(&oldest) {
                self.bytes -= data.len();
            }
        }
    }
}

pub(crate) struct BlockIo {
    map: Mutex<Option<Arc<ClusterMap>>>,
    channels: Mutex<BTreeMap<String, BlockClient<Channel>>>,
    cache: Mutex<BlockCache>,
    counters: Counters,
    /// Ids whose bad copy was logged: each is logged once, counted every time.
    logged_bad: Mutex<std::collections::BTreeSet<Vec<u8>>>,
    rotation: AtomicU64,
    /// The servers' data ports, when the client writes over them (`ClientOptions`).
    data_ports: Option<DataPorts>,
}

impl BlockIo {
    pub(crate) fn new(cache_bytes: usize, data_port: bool) -> BlockIo {
        BlockIo {
            map: Mutex::new(None),
            channels: Mutex::new(BTreeMap::new()),
            cache: Mutex::new(BlockCache {
                max_bytes: cache_bytes,
                bytes: 0,
                tick: 0,
                blocks: BTreeMap::new(),
                by_age: BTreeMap::new(),
            }),
            counters: Counters::default(),
            logged_bad: Mutex::new(Default::default()),
            rotation: AtomicU64::new(0),
            data_ports: data_port.then(DataPorts::default),
        }
    }

    /// Stores a block on the server at `addr`: over its data port where it has one, else
    /// (or when that connection broke) over gRPC.
    async fn put_on_server(&self, addr: &str, id: &[u8; BLOCK_ID_LEN], crc: u32, data: Bytes) -> Result<(), FsError> {
        if let Some(ports) = &self.data_ports {
            if ports.needs_asking(addr) {
                // A server that does not answer is asked again by the next put.
                let _ = self.status_of(addr).await;
            }
            let head = PutHead { id: *id, crc, len: data.len() as u32 };
            match ports.put(addr, head, &data, BLOCK_RPC_TIMEOUT).await {
                PutOutcome::Answered(result) => return result,
                PutOutcome::UseGrpc => {}
            }
        }
        let mut client = self.channel(addr)?;
        let request = PutBlockRequest { id: id.to_vec(), crc, data, replace: false };
        match tokio::time::timeout(BLOCK_RPC_TIMEOUT, client.put_block(request)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) => Err(FsError::from_status(&status)),
            Err(_) => Err(FsError::Unavailable(format!("block server {addr} timed out"))),
        }
    }

    /// The status of the server at `addr` (which also says where its data port is).
    async fn status_of(&self, addr: &str) -> Result<cffs_proto::BlockStatusResponse, FsError> {
        let mut client = self.channel(addr)?;
        let call = client.block_status(cffs_proto::BlockStatusRequest {});
        let reply = match tokio::time::timeout(Duration::from_secs(2), call).await {
            Ok(Ok(reply)) => reply.into_inner(),
            Ok(Err(status)) => return Err(FsError::from_status(&status)),
            Err(_) => return Err(FsError::Unavailable(format!("{addr} did not answer"))),
        };
        if let Some(ports) = &self.data_ports {
            ports.learn(addr, reply.data_port);
        }
        Ok(reply)
    }

    fn channel(&self, addr: &str) -> Result<BlockClient<Channel>, FsError> {
        let mut channels = self.channels.lock().expect("block channels");
        if let Some(client) = channels.get(addr) {
            return Ok(client.clone());
        }
        let client = BlockClient::new(crate::calls::endpoint(addr)?.connect_lazy())
            .max_decoding_message_size(cffs_proto::limits::RPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(cffs_proto::limits::RPC_MESSAGE_BYTES_MAX);
        channels.insert(addr.to_string(), client.clone());
        Ok(client)
    }

    pub(crate) fn stats(&self) -> BlockStats {
        let c = &self.counters;
        BlockStats {
            blocks_written: c.blocks_written.load(Ordering::Relaxed),
            bytes_written: c.bytes_written.load(Ordering::Relaxed),
            blocks_fetched: c.blocks_fetched.load(Ordering::Relaxed),
            bytes_fetched: c.bytes_fetched.load(Ordering::Relaxed),
            cache_hits: c.cache_hits.load(Ordering::Relaxed),
            cache_misses: c.cache_misses.load(Ordering::Relaxed),
            crc_mismatches: c.crc_mismatches.load(Ordering::Relaxed),
        }
    }

    fn bad_copy(&self, id: &[u8], addr: &str, why: &str) {
        self.counters.crc_mismatches.fetch_add(1, Ordering::Relaxed);
        if self.logged_bad.lock().expect("logged set").insert(id.to_vec()) {
            tracing::warn!(block = %hex(id), %addr, why, "a block copy failed its check; reading another replica");
        }
    }
}

pub(crate) fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// The group a fresh block id goes to: by hash of the id over the map's groups, moved on
/// by `attempt` (a write that found its group without a majority tries the next one).
pub fn group_for<'a>(map: &'a ClusterMap, id: &[u8], attempt: usize) -> Option<&'a BlockGroup> {
    if map.groups.is_empty() {
        return None;
    }
    let hash = crc32fast::hash(id) as usize;
    map.groups.get((hash + attempt) % map.groups.len())
}

fn crc_checked() -> bool {
    #[cfg(madsim)]
    if crate::planted::trust_block_crc() {
        return false;
    }
    true
}

impl Client {
    pub(crate) fn blocks(&self) -> &BlockIo {
        &self.inner.blocks
    }

    /// Counters of the block path (writes, fetches, cache hits, crc mismatches).
    pub fn block_stats(&self) -> BlockStats {
        self.blocks().stats()
    }

    /// The cluster map: the cached one, or (when `refresh`, or none is cached) the leader's.
    pub async fn cluster_map(&self, refresh: bool) -> Result<Arc<ClusterMap>, FsError> {
        if !refresh {
            if let Some(map) = self.blocks().map.lock().expect("map lock").clone() {
                return Ok(map);
            }
        }
        let map = self
            .call("get cluster map", false, |mut client| async move {
                client.get_cluster_map(GetClusterMapRequest {}).await
            })
            .await?;
        let map = Arc::new(map);
        *self.blocks().map.lock().expect("map lock") = Some(map.clone());
        Ok(map)
    }

    /// The block size of new block-mapped files (the cluster's).
    pub(crate) async fn block_size(&self) -> Result<u32, FsError> {
        let map = self.cluster_map(false).await?;
        if map.groups.is_empty() {
            // Perhaps the map was cached before the first group was added.
            let map = self.cluster_map(true).await?;
            if map.groups.is_empty() {
                return Err(FsError::Unavailable(
                    "the cluster has no block groups: add one with `cffs cluster add-block-group`".into(),
                ));
            }
            return Ok(map.block_size);
        }
        Ok(map.block_size)
    }

    /// Writes one block: a fresh id, stored on a majority of its group before this returns.
    /// The returned ref has index 0: the caller places it.
    #[allow(clippy::disallowed_methods)] // madsim's generator: deterministic in simulation
    pub(crate) async fn put_block(&self, data: Bytes) -> Result<BlockRef, FsError> {
        let crc = crc32fast::hash(&data);
        let mut last_error = FsError::Unavailable("no block group".into());
        for attempt in 0..BLOCK_WRITE_ATTEMPTS {
            let map = self.cluster_map(attempt > 0).await?;
            let id: [u8; BLOCK_ID_LEN] = madsim::rand::thread_rng().gen();
            let Some(group) = group_for(&map, &id, attempt) else {
                return Err(FsError::Unavailable("the cluster has no block groups".into()));
            };
            match self.put_on_group(group, &id, crc, data.clone()).await {
                Ok(()) => {
                    let c = &self.blocks().counters;
                    c.blocks_written.fetch_add(1, Ordering::Relaxed);
                    c.bytes_written.fetch_add(data.len() as u64, Ordering::Relaxed);
                    return Ok(BlockRef { index: 0, id: id.to_vec(), group: group.id, len: data.len() as u32, crc });
                }
                Err(error) => {
                    tracing::debug!(group = group.id, %error, attempt, "block write failed; trying again");
                    last_error = error;
                }
            }
        }
        Err(last_error)
    }

    async fn put_on_group(
        &self,
        group: &BlockGroup,
        id: &[u8; BLOCK_ID_LEN],
        crc: u32,
        data: Bytes,
    ) -> Result<(), FsError> {
        use futures::StreamExt;
        let majority = group.members.len() / 2 + 1;
        let mut calls = futures::stream::FuturesUnordered::new();
        for member in &group.members {
            calls.push(self.blocks().put_on_server(&member.addr, id, crc, data.clone()));
        }
        let (mut stored, mut last_error) = (0, None);
        while let Some(result) = calls.next().await {
            match result {
                Ok(()) => stored += 1,
                Err(error) => last_error = Some(error),
            }
            if stored >= majority {
                // The rest of the group gets a moment; a server that misses the block is
                // filled in by the scrubber.
                let _ =
                    tokio::time::timeout(BLOCK_WRITE_STRAGGLER_WAIT, async { while calls.next().await.is_some() {} })
                        .await;
                return Ok(());
            }
        }
        Err(FsError::Unavailable(format!(
            "block group {}: {stored} of {} servers stored the block, a majority is {majority}: {}",
            group.id,
            group.members.len(),
            last_error.map(|e| e.to_string()).unwrap_or_default()
        )))
    }

    /// The bytes of `block`: from the cache, else from a replica of its group, checked
    /// against its length and crc32 (a bad copy is counted, logged once, and another replica
    /// is tried).
    pub(crate) async fn get_block(&self, block: &BlockRef) -> Result<Bytes, FsError> {
        let io = self.blocks();
        if let Some(data) = io.cache.lock().expect("block cache").get(&block.id) {
            io.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(data);
        }
        io.counters.cache_misses.fetch_add(1, Ordering::Relaxed);
        let mut map = self.cluster_map(false).await?;
        if !map.groups.iter().any(|g| g.id == block.group) {
            map = self.cluster_map(true).await?;
        }
        let result = self.get_from_group(&map, block).await;
        if result.is_ok() {
            return result;
        }
        // The cached map may be older than a change of the group (its members replaced):
        // the map is read again, and the read tried on the new members.
        let fresh = self.cluster_map(true).await?;
        match fresh.version == map.version {
            true => result,
            false => self.get_from_group(&fresh, block).await,
        }
    }

    /// `get_block` on the members of `block`'s group in `map` (and the member a change
    /// replaced, while the group refills, last).
    async fn get_from_group(&self, map: &ClusterMap, block: &BlockRef) -> Result<Bytes, FsError> {
        let io = self.blocks();
        let Some(group) = map.groups.iter().find(|g| g.id == block.group) else {
            return Err(FsError::DataLost(format!("block group {} is not in the cluster map", block.group)));
        };
        let start = io.rotation.fetch_add(1, Ordering::Relaxed) as usize;
        let mut failures = Vec::new();
        // Members that could not be asked (down, cut off, slow): with any of them, the block
        // may still be intact there, and the read is unavailable rather than lost.
        let mut unanswered = 0;
        let replaced = group.replaced.as_ref().filter(|_| group.refilling != 0);
        let order = (0..group.members.len()).map(|k| &group.members[(start + k) % group.members.len()]);
        for (k, member) in order.chain(replaced).enumerate() {
            let is_replaced = k == group.members.len();
            let mut client = io.channel(&member.addr)?;
            let request = GetBlockRequest { id: block.id.clone() };
            let reply = match tokio::time::timeout(BLOCK_RPC_TIMEOUT, client.get_block(request)).await {
                Ok(Ok(reply)) => reply.into_inner(),
                Ok(Err(status)) => {
                    let code = cffs_proto::error_code::detail_code(&cffs_proto::error_code::detail(&status));
                    match code {
                        ErrorCode::Checksum => io.bad_copy(&block.id, &member.addr, "the server found its copy bad"),
                        ErrorCode::BlockMissing => {}
                        // A replaced member that is gone says nothing of the group's copies.
                        _ if is_replaced => {}
                        _ => unanswered += 1,
                    }
                    failures.push(format!("{}: {}", member.addr, status.message()));
                    continue;
                }
                Err(_) => {
                    unanswered += usize::from(!is_replaced);
                    failures.push(format!("{}: timed out", member.addr));
                    continue;
                }
            };
            let data = reply.data;
            if crc_checked() && (data.len() != block.len as usize || crc32fast::hash(&data) != block.crc) {
                io.bad_copy(&block.id, &member.addr, "crc32 mismatch on arrival");
                failures.push(format!("{}: crc32 mismatch", member.addr));
                continue;
            }
            io.counters.blocks_fetched.fetch_add(1, Ordering::Relaxed);
            io.counters.bytes_fetched.fetch_add(data.len() as u64, Ordering::Relaxed);
            io.cache.lock().expect("block cache").insert(&block.id, data.clone());
            return Ok(data);
        }
        let what = format!("block {} (index {}): {}", hex(&block.id), block.index, failures.join("; "));
        match unanswered {
            0 => Err(FsError::DataLost(what)),
            _ => Err(FsError::Unavailable(what)),
        }
    }
}

impl Client {
    /// Adds a block group of `members` (the first group also sets the cluster's block size;
    /// 0: the default). Returns the new cluster map.
    pub async fn add_block_group(
        &self,
        members: Vec<cffs_proto::BlockMember>,
        block_size: u32,
    ) -> Result<Arc<ClusterMap>, FsError> {
        let response = self
            .call("add block group", true, |mut client| {
                let request = cffs_proto::AddBlockGroupRequest { members: members.clone(), block_size };
                async move { client.add_block_group(request).await }
            })
            .await?;
        let map = Arc::new(response.map.unwrap_or_default());
        *self.blocks().map.lock().expect("map lock") = Some(map.clone());
        Ok(map)
    }

    /// Replaces member `old` of block group `group` by `new` (docs/design/blocks.md,
    /// "Changing a group's members"). Returns the new cluster map.
    pub async fn replace_block_server(
        &self,
        group: u32,
        old: u64,
        new: cffs_proto::BlockMember,
    ) -> Result<Arc<ClusterMap>, FsError> {
        let response = self
            .call("replace block server", true, |mut client| {
                let request = cffs_proto::ReplaceBlockServerRequest { group, old, new_member: Some(new.clone()) };
                async move { client.replace_block_server(request).await }
            })
            .await;
        let response = match response {
            Ok(response) => response,
            Err(error) => {
                // A retry of a change that applied is refused ("still refilling" the new
                // server, or the old one no longer a member), and a lost answer leaves the
                // outcome unknown: the map says whether this change is in (found by chaos
                // seed 1500, where the retry's refusal hid the applied change).
                let map = self.cluster_map(true).await.map_err(|_| error.clone())?;
                let applied = map
                    .groups
                    .iter()
                    .any(|g| g.id == group && g.members.iter().any(|m| m.id == new.id && m.addr == new.addr));
                return if applied { Ok(map) } else { Err(error) };
            }
        };
        let map = Arc::new(response.map.unwrap_or_default());
        *self.blocks().map.lock().expect("map lock") = Some(map.clone());
        Ok(map)
    }

    /// Drops the cached cluster map: the next use reads it from the leader.
    pub(crate) fn forget_cluster_map(&self) {
        *self.blocks().map.lock().expect("map lock") = None;
    }

    /// Every block server's own status, by address (`Err` for those that did not answer).
    pub async fn block_server_status(
        &self,
        map: &ClusterMap,
    ) -> BTreeMap<String, Result<cffs_proto::BlockStatusResponse, FsError>> {
        let mut all = BTreeMap::new();
        for member in map.groups.iter().flat_map(|g| g.members.iter()) {
            let result = self.blocks().status_of(&member.addr).await;
            all.insert(member.addr.clone(), result);
        }
        all
    }
}
