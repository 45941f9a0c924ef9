//! The worker's optional HTTP server (`worker.http_listen`): `GET /healthz`
//! and `GET /metrics`, on the worker's own runtime.
//!
//! `/healthz` answers while the process runs (the broker may be away: a
//! worker reconnects by itself, and `warren_worker_broker_connected` says
//! whether it is connected). There is no authentication: bind it to
//! loopback or a trusted network.

use crate::metrics::Metrics;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;
use warren_common::exposition;

/// The routes, serving `metrics`.
pub(crate) fn router(metrics: Metrics) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(serve_metrics))
        .with_state(metrics)
}

/// Serves [`router`] on `listener` until `stop` is cancelled.
pub(crate) async fn serve(listener: TcpListener, metrics: Metrics, stop: CancellationToken) {
    let served = axum::serve(listener, router(metrics))
        .with_graceful_shutdown(stop.cancelled_owned())
        .await;
    if let Err(error) = served {
        warn!(%error, "the HTTP server (worker.http_listen) stopped");
    }
}

async fn healthz() -> &'static str {
    "ok"
}

/// OpenMetrics for scrapers that ask for it, the Prometheus text format
/// for the rest (`warren_common::exposition`).
async fn serve_metrics(State(metrics): State<Metrics>, headers: HeaderMap) -> impl IntoResponse {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok());
    let (content_type, body) = exposition::negotiate(metrics.encode(), accept);
    ([(header::CONTENT_TYPE, content_type)], body)
}
