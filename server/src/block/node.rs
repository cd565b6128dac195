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
    /// Serves the block service at `listen` and its data port at `data_listen` until the
    /// process ends. Returns once the server tasks are spawned.
    pub async fn start(
        id: u64,
        listen: SocketAddr,
        data_listen: SocketAddr,
        store: Arc<dyn BlockStore>,
    ) -> anyhow::Result<BlockNode> {
        let service = BlockService::new(id, store);
        service.start_data_port(data_listen).await?;
        let (blocks, bytes) = service.totals();
        let router = tonic::transport::Server::builder()
            .initial_stream_window_size(cffs_proto::limits::HTTP2_STREAM_WINDOW_BYTES)
            .initial_connection_window_size(cffs_proto::limits::HTTP2_CONNECTION_WINDOW_BYTES)
            .max_frame_size(cffs_proto::limits::HTTP2_MAX_FRAME_BYTES)
            .add_service(service.clone().server());
        #[cfg(not(madsim))]
        let router = {
            let (reporter, health) = tonic_health::server::health_reporter();
            reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
            reporter.set_service_status("cffs.v1.Block", tonic_health::ServingStatus::Serving).await;
            router.add_service(health)
        };
        tokio::spawn(async move {
            if let Err(error) = router.serve(listen).await {
                tracing::error!(%error, %listen, "block server stopped");
            }
        });
        tracing::info!(server_id = id, %listen, blocks, bytes, "block server started");
        Ok(BlockNode { service })
    }

    pub fn metrics_text(&self) -> String {
        let mut out = crate::metrics::Exposition::default();
        self.service.render_metrics(&mut out);
        out.finish()
    }

    /// A block server serves whenever its process runs: its store was opened at start, and a
    /// failed read or write fails that request alone (the reader tries another replica).
    pub fn health(&self) -> crate::metrics::Health {
        let (blocks, bytes) = self.service.totals();
        let body = serde_json::json!({
            "status": "ok", "role": "block", "server_id": self.service.server_id(),
            "blocks": blocks, "bytes": bytes,
        });
        crate::metrics::Health { healthy: true, body: body.to_string() }
    }
}
