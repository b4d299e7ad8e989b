//! Ferry's HTTP surface: one axum router per feed protocol, the management
//! API, operations endpoints. Handlers parse HTTP, call `ferry-core`, and
//! map errors in one place ([`error`]).

pub mod access;
mod assets;
pub mod blobs;
pub mod error;
mod mgmt;
mod mgmt_replication;
mod npm;
mod oci;
mod openapi;
mod ops;
mod pypi;
mod replication_api;

use std::sync::OnceLock;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use ferry_core::Ferry;
use ferry_replication::Replicator;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// What every handler gets.
#[derive(Clone)]
pub struct AppState {
    pub ferry: Ferry,
    pub replicator: Replicator,
    pub metrics: PrometheusHandle,
}

/// The process-wide Prometheus recorder (installed once, shared by every
/// router built in this process).
fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; then ours just stays empty.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// The whole HTTP application for one instance.
pub fn router(ferry: Ferry, replicator: Replicator) -> Router {
    let state = AppState {
        ferry,
        replicator,
        metrics: prometheus(),
    };
    Router::new()
        .merge(ops::routes())
        .merge(mgmt::routes())
        .merge(mgmt_replication::routes())
        .merge(replication_api::routes())
        .merge(assets::routes())
        .merge(npm::routes())
        .merge(pypi::routes())
        .merge(oci::routes())
        // Upload limits are enforced per route while streaming, not by buffering.
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn(track))
        .with_state(state)
}

async fn track(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let resp = next.run(req).await;
    let labels = [
        ("method", method),
        ("route", route.unwrap_or_else(|| "unmatched".into())),
        ("status", resp.status().as_u16().to_string()),
    ];
    metrics::counter!("ferry_http_requests_total", &labels).increment(1);
    metrics::histogram!("ferry_http_request_duration_seconds", &labels).record(start.elapsed().as_secs_f64());
    resp
}
