//! A block server process: the block service on its own address, over a block store. (A
//! metadata replica may serve the same service on its own address too: `MetaNodeConfig`.)

use std::net::SocketAddr;
use std::sync::Arc;

use super::service::BlockService;
use super::store::BlockStore;

pub struct BlockNode {
    pub service: BlockService,
}

impl BlockNode {
    /// Serves the block service at `listen` until the process ends. Returns once the server
    /// task is spawned.
    pub async fn start(id: u64, listen: SocketAddr, store: Arc<dyn BlockStore>) -> anyhow::Result<BlockNode> {
        let service = BlockService::new(id, store);
        let (blocks, bytes) = service.totals();
        let router = tonic::transport::Server::builder()
            .initial_stream_window_size(cffs_proto::limits::HTTP2_STREAM_WINDOW_BYTES)
            .initial_connection_window_size(cffs_proto::limits::HTTP2_CONNECTION_WINDOW_BYTES)
            .max_frame_size(cffs_proto::limits::HTTP2_MAX_FRAME_BYTES)
            .add_service(service.clone().server());
        tokio::spawn(async move {
            if let Err(error) = router.serve(listen).await {
                tracing::error!(%error, %listen, "block server stopped");
            }
        });
        tracing::info!(server_id = id, %listen, blocks, bytes, "block server started");
        Ok(BlockNode { service })
    }
}
