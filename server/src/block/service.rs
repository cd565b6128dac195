//! The block server's gRPC service (`cffs.v1.Block`): stores and serves immutable blocks,
//! checking every block's crc32 when it arrives and again before it is sent.
//!
//! A block server knows nothing of files, groups or references: the metadata group holds
//! the cluster map and the block maps, the client chooses where a block goes, and the
//! collector decides what is garbage (docs/design/blocks.md).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cffs_proto::error_code::status;
use cffs_proto::limits::BLOCK_SIZE_MAX;
use cffs_proto::{
    BlockInfo as WireInfo, BlockStatusRequest, BlockStatusResponse, ErrorCode, GetBlockRequest, GetBlockResponse,
    ListBlocksRequest, ListBlocksResponse, PutBlockRequest, PutBlockResponse, StatBlocksRequest, StatBlocksResponse,
};
use tonic::{Request, Response, Status};

use super::store::{block_id, block_id_hex, BlockId, BlockInfo, BlockStore, PutBuffer};
use crate::storage::StorageError;

/// The tonic server type of the service (madsim's has an interceptor parameter).
#[cfg(not(madsim))]
pub type BlockServerOf = cffs_proto::block_server::BlockServer<BlockService>;
#[cfg(madsim)]
pub type BlockServerOf = cffs_proto::block_server::BlockServer<BlockService, tonic::codegen::IdentityInterceptor>;

/// Most ids one `StatBlocks` request may name.
pub const STAT_IDS_MAX: usize = 65_536;
/// Page size of `ListBlocks` (the default, and the most one page may hold).
pub const LIST_PAGE_MAX: usize = 4_096;

#[derive(Default)]
struct Counters {
    puts: AtomicU64,
    data_port_puts: AtomicU64,
    gets: AtomicU64,
    bytes_put: AtomicU64,
    bytes_got: AtomicU64,
    checksum_refusals: AtomicU64,
    checksum_failures: AtomicU64,
}

#[derive(Clone)]
pub struct BlockService {
    server_id: u64,
    store: Arc<dyn BlockStore>,
    counters: Arc<Counters>,
    /// Blocks already logged as corrupt: each is logged once, counted every time.
    logged_bad: Arc<Mutex<BTreeSet<BlockId>>>,
    /// The data port's TCP port, 0 until it listens.
    data_port: Arc<std::sync::atomic::AtomicU32>,
}

/// A block's bytes as they arrived: a gRPC message, or read by the data port into a buffer
/// of the store's.
pub(super) enum Incoming {
    Message(prost::bytes::Bytes),
    Buffer(PutBuffer),
}

impl Incoming {
    fn bytes(&self) -> &[u8] {
        match self {
            Incoming::Message(data) => data,
            Incoming::Buffer(buffer) => buffer.data(),
        }
    }
}

fn wire(info: &BlockInfo) -> WireInfo {
    WireInfo { id: info.id.to_vec(), len: info.len, crc: info.crc, stored_at_ms: info.stored_at_ms }
}

fn storage_status(error: StorageError) -> Status {
    status(ErrorCode::Storage, error.to_string())
}

fn parse_id(bytes: &[u8]) -> Result<BlockId, Status> {
    block_id(bytes).ok_or_else(|| status(ErrorCode::InvalidArgument, "a block id is 16 bytes"))
}

/// Wall-clock milliseconds (madsim's clock in simulation): when a block was stored, for the
/// collector's grace period.
fn now_ms() -> i64 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_millis()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

/// This process's resident memory (`VmRSS`), 0 where it cannot be read (and in simulation).
fn rss_bytes() -> u64 {
    #[cfg(madsim)]
    return 0;
    #[cfg(not(madsim))]
    {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    }
}

/// True when the block's crc is checked (always, but for the planted bug that trusts it).
pub fn crc_checked() -> bool {
    #[cfg(madsim)]
    if crate::planted::armed(crate::planted::Bug::TrustBlockCrc) {
        return false;
    }
    true
}

/// Runs a store call off the async workers: a real put writes and fsyncs megabytes. In
/// simulation the store is memory, and madsim has no blocking pool.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    #[cfg(not(madsim))]
    {
        tokio::task::spawn_blocking(work).await.expect("block store task panicked")
    }
    #[cfg(madsim)]
    {
        work()
    }
}

impl BlockService {
    pub fn new(server_id: u64, store: Arc<dyn BlockStore>) -> Self {
        BlockService {
            server_id,
            store,
            counters: Arc::default(),
            logged_bad: Arc::default(),
            data_port: Arc::default(),
        }
    }

    pub fn server(self) -> BlockServerOf {
        cffs_proto::block_server::BlockServer::new(self)
            .max_decoding_message_size(cffs_proto::limits::RPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(cffs_proto::limits::RPC_MESSAGE_BYTES_MAX)
    }

    /// This block server's figures for `/metrics`.
    pub fn render_metrics(&self, out: &mut crate::metrics::Exposition) {
        use crate::metrics::Kind::{Counter, Gauge};
        let (blocks, bytes) = self.totals();
        let c = &self.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        out.single("cffs_block_server_id", Gauge, "This block server's id.", self.server_id);
        out.single("cffs_block_stored_blocks", Gauge, "Blocks stored on this server.", blocks);
        out.single("cffs_block_stored_bytes", Gauge, "Bytes of blocks stored on this server.", bytes);
        let counters: [(&str, &str, u64); 7] = [
            ("cffs_block_puts_total", "Blocks written (durable before acknowledged).", get(&c.puts)),
            (
                "cffs_block_data_port_puts_total",
                "Of the blocks written, those that came over the data port.",
                get(&c.data_port_puts),
            ),
            ("cffs_block_put_bytes_total", "Bytes of blocks written.", get(&c.bytes_put)),
            ("cffs_block_gets_total", "Blocks served, crc checked.", get(&c.gets)),
            ("cffs_block_get_bytes_total", "Bytes of blocks served.", get(&c.bytes_got)),
            (
                "cffs_block_crc_refusals_total",
                "Blocks refused on write: bytes did not match their crc32.",
                get(&c.checksum_refusals),
            ),
            (
                "cffs_block_crc_mismatches_total",
                "Stored copies found bad (crc32 mismatch) when read.",
                get(&c.checksum_failures),
            ),
        ];
        for (name, help, value) in counters {
            out.single(name, Counter, help, value);
        }
    }

    pub fn server_id(&self) -> u64 {
        self.server_id
    }

    /// (blocks, bytes) stored.
    pub fn totals(&self) -> (u64, u64) {
        self.store.totals()
    }

    /// The checks and the write every block put goes through, from gRPC or the data port:
    /// a block of 1..=`BLOCK_SIZE_MAX` bytes whose bytes match its crc, durable before this
    /// returns. `replace` is the scrubber's repair (over whatever copy is stored).
    pub(super) async fn store_block(
        &self,
        id: BlockId,
        crc: u32,
        data: Incoming,
        replace: bool,
    ) -> Result<(), (ErrorCode, String)> {
        let len = data.bytes().len();
        if len == 0 {
            return Err((ErrorCode::InvalidArgument, "a block holds at least one byte".into()));
        }
        if len > BLOCK_SIZE_MAX as usize {
            return Err((ErrorCode::TooLarge, format!("a block of {len} bytes is over the limit of {BLOCK_SIZE_MAX}")));
        }
        if crc_checked() && crc32fast::hash(data.bytes()) != crc {
            self.counters.checksum_refusals.fetch_add(1, Ordering::Relaxed);
            return Err((ErrorCode::Checksum, "the block's bytes do not match its crc32".into()));
        }
        let info = BlockInfo { id, len: len as u32, crc, stored_at_ms: now_ms() };
        #[cfg(madsim)]
        let durable = !crate::planted::armed(crate::planted::Bug::BlockAckBeforeDurable);
        #[cfg(not(madsim))]
        let durable = true;
        let over_data_port = matches!(data, Incoming::Buffer(_));
        let store = self.store.clone();
        blocking(move || match (replace, data) {
            (true, data) => store.repair(info, data.bytes()),
            (false, Incoming::Message(data)) => store.put(info, &data, durable),
            (false, Incoming::Buffer(buffer)) => store.put_from(info, buffer, durable),
        })
        .await
        .map_err(|error| (ErrorCode::Storage, error.to_string()))?;
        self.counters.puts.fetch_add(1, Ordering::Relaxed);
        self.counters.bytes_put.fetch_add(len as u64, Ordering::Relaxed);
        if over_data_port {
            self.counters.data_port_puts.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// A buffer from the store for `len` bytes that the data port reads a block into.
    pub(super) fn put_buffer(&self, len: usize) -> PutBuffer {
        self.store.put_buffer(len)
    }

    /// Serves the data port at `listen` (port 0: any free port) and announces its port in
    /// `BlockStatus`. Returns the address it listens on.
    pub async fn start_data_port(&self, listen: SocketAddr) -> anyhow::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|error| anyhow::anyhow!("block data port: cannot listen on {listen}: {error}"))?;
        let bound = listener.local_addr()?;
        self.data_port.store(u32::from(bound.port()), Ordering::Relaxed);
        tokio::spawn(super::data_port::serve(listener, self.clone()));
        tracing::info!(server_id = self.server_id, data_port = %bound, "block data port listening");
        Ok(bound)
    }

    fn bad_copy(&self, id: &BlockId, why: &str) -> Status {
        self.counters.checksum_failures.fetch_add(1, Ordering::Relaxed);
        if self.logged_bad.lock().expect("logged set").insert(*id) {
            tracing::error!(server_id = self.server_id, block = %block_id_hex(id), why, "stored block copy is bad");
        }
        status(ErrorCode::Checksum, format!("block {}: stored copy is bad ({why})", block_id_hex(id)))
    }
}

#[tonic::async_trait]
impl cffs_proto::block_server::Block for BlockService {
    async fn put_block(&self, request: Request<PutBlockRequest>) -> Result<Response<PutBlockResponse>, Status> {
        let request = request.into_inner();
        let id = parse_id(&request.id)?;
        self.store_block(id, request.crc, Incoming::Message(request.data), request.replace)
            .await
            .map_err(|(code, message)| status(code, message))?;
        Ok(Response::new(PutBlockResponse {}))
    }

    async fn get_block(&self, request: Request<GetBlockRequest>) -> Result<Response<GetBlockResponse>, Status> {
        let id = parse_id(&request.into_inner().id)?;
        let store = self.store.clone();
        let found = match blocking(move || store.get(&id)).await {
            Ok(found) => found,
            Err(StorageError::Corruption(why)) => return Err(self.bad_copy(&id, &why)),
            Err(error) => return Err(storage_status(error)),
        };
        let Some((info, data)) = found else {
            return Err(status(ErrorCode::BlockMissing, format!("block {} is not stored here", block_id_hex(&id))));
        };
        if crc_checked() && crc32fast::hash(&data) != info.crc {
            return Err(self.bad_copy(&id, "crc mismatch"));
        }
        self.counters.gets.fetch_add(1, Ordering::Relaxed);
        self.counters.bytes_got.fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(Response::new(GetBlockResponse { crc: info.crc, data: data.into() }))
    }

    async fn stat_blocks(&self, request: Request<StatBlocksRequest>) -> Result<Response<StatBlocksResponse>, Status> {
        let request = request.into_inner();
        if request.ids.len() > STAT_IDS_MAX {
            return Err(status(ErrorCode::TooLarge, format!("more than {STAT_IDS_MAX} ids")));
        }
        let mut blocks = Vec::new();
        for id in &request.ids {
            let id = parse_id(id)?;
            if let Some(info) = self.store.stat(&id).map_err(storage_status)? {
                blocks.push(wire(&info));
            }
        }
        Ok(Response::new(StatBlocksResponse { blocks }))
    }

    async fn list_blocks(&self, request: Request<ListBlocksRequest>) -> Result<Response<ListBlocksResponse>, Status> {
        let request = request.into_inner();
        let after = match request.start_after.is_empty() {
            true => None,
            false => Some(parse_id(&request.start_after)?),
        };
        let limit = match request.limit as usize {
            0 => LIST_PAGE_MAX,
            n => n.min(LIST_PAGE_MAX),
        };
        let mut page = self.store.list(after.as_ref(), limit + 1).map_err(storage_status)?;
        let more = page.len() > limit;
        page.truncate(limit);
        Ok(Response::new(ListBlocksResponse { blocks: page.iter().map(wire).collect(), more }))
    }

    async fn delete_blocks(
        &self,
        request: Request<cffs_proto::DeleteBlocksRequest>,
    ) -> Result<Response<cffs_proto::DeleteBlocksResponse>, Status> {
        let request = request.into_inner();
        if request.ids.len() > STAT_IDS_MAX {
            return Err(status(ErrorCode::TooLarge, format!("more than {STAT_IDS_MAX} ids")));
        }
        let ids = request.ids.iter().map(|id| parse_id(id)).collect::<Result<Vec<_>, _>>()?;
        let store = self.store.clone();
        let deleted = blocking(move || {
            let mut deleted = 0u32;
            for id in &ids {
                if store.stat(id)?.is_some() {
                    store.delete(id)?;
                    deleted += 1;
                }
            }
            Ok::<_, StorageError>(deleted)
        })
        .await
        .map_err(storage_status)?;
        Ok(Response::new(cffs_proto::DeleteBlocksResponse { deleted }))
    }

    async fn block_status(
        &self,
        _request: Request<BlockStatusRequest>,
    ) -> Result<Response<BlockStatusResponse>, Status> {
        let (blocks, bytes) = self.store.totals();
        let c = &self.counters;
        Ok(Response::new(BlockStatusResponse {
            server_id: self.server_id,
            blocks,
            bytes,
            puts: c.puts.load(Ordering::Relaxed),
            gets: c.gets.load(Ordering::Relaxed),
            checksum_refusals: c.checksum_refusals.load(Ordering::Relaxed),
            checksum_failures: c.checksum_failures.load(Ordering::Relaxed),
            rss_bytes: rss_bytes(),
            data_port: self.data_port.load(Ordering::Relaxed),
            data_port_puts: c.data_port_puts.load(Ordering::Relaxed),
        }))
    }
}
