//! Ferry's HTTP surface: one axum router per feed protocol, the management
//! API, operations endpoints. Handlers parse HTTP, call `ferry-core`, and
//! map errors in one place ([`error`]).

pub mod access;
mod assets;
pub mod blobs;
mod bulk;
mod cargo;
mod debian;
pub mod declare;
mod edge;
pub mod error;
mod form_guard;
mod mgmt;
mod mgmt_replication;
mod npm;
mod nuget;
mod oci;
mod openapi;
mod ops;
mod pypi;
mod replication_api;
mod rpm;
pub mod ui;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::connect_info::{ConnectInfo, MockConnectInfo};
use axum::http::{Extensions, header};
use axum::middleware::AddExtension;
use axum::serve::{IncomingStream, Listener};
use ferry_core::{CoreError, Ferry};
use ferry_replication::Replicator;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tower::{Layer, Service};

/// What every handler gets: [`AppParts`] behind one shared pointer, so
/// that handing it to a handler (axum does so on every request, and the
/// `State` extractor once more) costs one reference count, not one per
/// part.
#[derive(Clone)]
pub struct AppState(std::sync::Arc<AppParts>);

/// The parts of [`AppState`].
pub struct AppParts {
    pub ferry: Ferry,
    pub replicator: Replicator,
    pub metrics: PrometheusHandle,
    /// The web UI's signed-in sessions (in the metadata database, capped).
    pub sessions: std::sync::Arc<ui::Sessions>,
}

impl std::ops::Deref for AppState {
    type Target = AppParts;

    fn deref(&self) -> &AppParts {
        &self.0
    }
}

/// How often the recorder's pending histogram samples are folded into
/// their summaries ([`PrometheusHandle::run_upkeep`]).
pub const METRICS_UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The process-wide Prometheus recorder (installed once, shared by every
/// router built in this process), with its upkeep thread.
///
/// A recorder made by `build_recorder` keeps every histogram sample (8
/// bytes per request for `ferry_http_request_duration_seconds`) until
/// something drains it, and only a scrape of `/metrics` would: an instance
/// nobody scrapes grew its heap with every request it answered. One thread
/// per process drains them every [`METRICS_UPKEEP_INTERVAL`], whatever
/// runtime the routers run on.
fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; then ours just stays empty.
            let _ = metrics::set_global_recorder(recorder);
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("ferry-metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(METRICS_UPKEEP_INTERVAL);
                        upkeep.run_upkeep();
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start the metrics upkeep thread; histogram samples are drained only when /metrics is scraped");
            }
            handle
        })
        .clone()
}

/// The whole HTTP application for one instance: the [`Router`], which,
/// given to `axum::serve` as it is, records each connection's peer address
/// for the handlers and the log (`ConnectInfo<SocketAddr>`; in-process
/// tests use [`App::into_router`] and, to name a client,
/// `MockConnectInfo`).
#[derive(Clone)]
pub struct App(Router);

impl App {
    /// The router without the connection layer.
    pub fn into_router(self) -> Router {
        self.0
    }
}

/// `axum::serve(listener, app)` asks the app for one service per accepted
/// connection: the router, with that connection's peer address as the
/// request extension `ConnectInfo<SocketAddr>`.
impl<L> Service<IncomingStream<'_, L>> for App
where
    L: Listener<Addr = SocketAddr>,
{
    type Response = AddExtension<Router, ConnectInfo<SocketAddr>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, stream: IncomingStream<'_, L>) -> Self::Future {
        let info = ConnectInfo(*stream.remote_addr());
        std::future::ready(Ok(axum::Extension(info).layer(self.0.clone())))
    }
}

/// The whole HTTP application for one instance.
pub use edge::{BodyWatch, record_unrouted, refusal_body};

pub fn router(ferry: Ferry, replicator: Replicator) -> App {
    let sessions = std::sync::Arc::new(ui::Sessions::new(ferry.metadata().clone()));
    let state = AppState(std::sync::Arc::new(AppParts {
        ferry,
        replicator,
        metrics: prometheus(),
        sessions,
    }));
    let router = Router::new()
        .merge(ops::routes())
        .merge(mgmt::routes())
        .merge(mgmt_replication::routes())
        .merge(declare::routes())
        .merge(replication_api::routes())
        .merge(assets::routes())
        .merge(npm::routes())
        .merge(pypi::routes())
        .merge(cargo::routes())
        .merge(nuget::routes())
        .merge(debian::routes())
        .merge(rpm::routes())
        .merge(oci::routes(&state))
        .merge(ui::routes(&state))
        // One layer around every route: body errors, limits, security
        // headers, failure log and request metrics (see `edge`).
        .layer(edge::Edge)
        .with_state(state);
    App(router)
}

/// The peer address of the request's connection, if the server recorded
/// it ([`App`]) or a test set one.
pub(crate) fn client_addr(ext: &Extensions) -> Option<SocketAddr> {
    ext.get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .or_else(|| ext.get::<MockConnectInfo<SocketAddr>>().map(|c| c.0))
}

/// The origin clients reach this instance at: `Config::base_url` when set,
/// else `http(s)://HOST` from the request (`Host`, or the URI's authority;
/// the scheme from `X-Forwarded-Proto`, http or https only). Errors
/// (`CoreError::Invalid`): no host, or one that is not a plain host name.
pub(crate) fn public_origin(
    ferry: &Ferry,
    headers: &axum::http::HeaderMap,
    authority: Option<&str>,
) -> Result<String, CoreError> {
    match &ferry.config().base_url {
        Some(base) => Ok(base.trim_end_matches('/').to_owned()),
        None => request_origin(headers, authority),
    }
}

/// [`public_origin`] as the request shows it (no configured base URL).
pub(crate) fn request_origin(
    headers: &axum::http::HeaderMap,
    authority: Option<&str>,
) -> Result<String, CoreError> {
    request_origin_with(headers, authority, &[])
}

/// [`request_origin`] followed by the pieces of a `path`, built in one
/// string.
pub(crate) fn request_origin_with(
    headers: &axum::http::HeaderMap,
    authority: Option<&str>,
    path: &[&str],
) -> Result<String, CoreError> {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or(authority)
        .ok_or_else(|| CoreError::invalid("a Host header is required"))?;
    let valid = !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b));
    if !valid {
        return Err(CoreError::invalid(format!("invalid Host header {host:?}")));
    }
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(str::trim)
        .and_then(|v| ["http", "https"].into_iter().find(|s| v.eq_ignore_ascii_case(s)))
        .unwrap_or("http");
    let len = scheme.len() + 3 + host.len() + path.iter().map(|p| p.len()).sum::<usize>();
    let mut origin = String::with_capacity(len);
    for piece in [scheme, "://", host].iter().chain(path) {
        origin.push_str(piece);
    }
    Ok(origin)
}
