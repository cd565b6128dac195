//! The HTTP side of a server (real builds only): `/metrics` in Prometheus's text format and
//! `/health` (200 with a JSON body when the node can serve, 503 with the reason otherwise),
//! on a port of its own, so that a scraper or a container healthcheck needs no gRPC client.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::http::{header, StatusCode};
use axum::routing::get;
use axum::Router;

use crate::metrics::Health;

/// Renders the node's metrics when a scrape asks.
pub type RenderMetrics = Arc<dyn Fn() -> String + Send + Sync>;
/// Says whether the node can serve.
pub type ProbeHealth = Arc<dyn Fn() -> Health + Send + Sync>;

/// Serves `/metrics` and `/health` at `listen` (port 0: any free port). Returns the address
/// bound once the server task is spawned.
pub async fn serve(listen: SocketAddr, metrics: RenderMetrics, health: ProbeHealth) -> anyhow::Result<SocketAddr> {
    let listener =
        tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listen for metrics on {listen}"))?;
    let bound = listener.local_addr()?;
    let router = Router::new()
        .route(
            "/metrics",
            get(move || {
                let text = metrics();
                async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text) }
            }),
        )
        .route(
            "/health",
            get(move || {
                let health = health();
                let code = if health.healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
                async move { (code, [(header::CONTENT_TYPE, "application/json")], health.body) }
            }),
        );
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::error!(%error, %bound, "metrics server stopped");
        }
    });
    tracing::info!(%bound, "serving /metrics and /health");
    Ok(bound)
}
