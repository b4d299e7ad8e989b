//! Ferry's HTTP surface: one axum router per feed protocol, the management
//! API, operations endpoints. Handlers parse HTTP, call `ferry-core`, and
//! map errors in one place ([`error`]).

pub mod access;
mod assets;
pub mod blobs;
mod cargo;
mod debian;
pub mod declare;
pub mod error;
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
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::{ConnectInfo, MockConnectInfo};
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{Extensions, HeaderValue, header};
use axum::middleware::{self, AddExtension, Next};
use axum::response::Response;
use axum::serve::{IncomingStream, Listener};
use ferry_core::{CoreError, Ferry};
use ferry_replication::Replicator;
use http_body_util::BodyExt;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tower::{Layer, Service};

/// What every handler gets.
#[derive(Clone)]
pub struct AppState {
    pub ferry: Ferry,
    pub replicator: Replicator,
    pub metrics: PrometheusHandle,
    /// The web UI's signed-in sessions (in memory, capped).
    pub sessions: std::sync::Arc<ui::Sessions>,
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
pub fn router(ferry: Ferry, replicator: Replicator) -> App {
    let state = AppState {
        ferry,
        replicator,
        metrics: prometheus(),
        sessions: std::sync::Arc::new(ui::Sessions::default()),
    };
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
        // Upload limits are enforced per route while streaming, not by buffering.
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn(track))
        .layer(middleware::from_fn(guard))
        .with_state(state);
    App(router)
}

/// What every request and response goes through, so that no handler can
/// forget it:
///
/// - the request body's errors are marked as the client's
///   ([`CoreError::client_body_error`]): a client that goes away mid-upload
///   becomes [`CoreError::BrokenBody`] wherever the body was being read;
/// - every response gets `X-Content-Type-Options: nosniff`, and the
///   sandboxing `Content-Security-Policy` [`blobs::SANDBOX_POLICY`] unless
///   it set a policy of its own (the web UI's pages do: [`ui::PAGE_POLICY`]), so user content and pages rendered from user data can never
///   run script in Ferry's origin (per-type rule: [`blobs::content_headers`]);
/// - a request that failed is logged here, once, with its feed and the
///   client's address: a server fault at ERROR (its cause is not shown to
///   the client), a broken request body at WARN, as the client event it is.
async fn guard(req: Request, next: Next) -> Response {
    // Kept for the failure log only: clones of shared parts, no copies.
    let client = client_addr(req.extensions());
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let method = req.method().clone();
    let uri = req.uri().clone();
    let req = req.map(|body| Body::new(body.map_err(CoreError::client_body_error)));
    let mut resp = next.run(req).await;
    if let Some(failure) = resp.extensions_mut().remove::<error::Failure>() {
        let path = uri.path();
        let feed = matched.and_then(|m| feed_of(m.as_str(), path));
        let feed = feed.as_deref().unwrap_or("-");
        let client = client.map_or_else(|| "unknown".to_owned(), |a| a.to_string());
        match failure {
            error::Failure::Internal(cause) => {
                tracing::error!(feed, client, %method, ?path, %cause, "request failed");
            }
            error::Failure::BrokenBody(cause) => tracing::warn!(
                feed,
                client,
                %method,
                ?path,
                %cause,
                "client's request body broke off (the client went away or sent a broken stream); nothing was stored"
            ),
        }
    }
    let headers = resp.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if !headers.contains_key(header::CONTENT_SECURITY_POLICY) {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(blobs::SANDBOX_POLICY),
        );
    }
    resp
}

/// The peer address of the request's connection, if the server recorded
/// it ([`App`]) or a test set one.
pub(crate) fn client_addr(ext: &Extensions) -> Option<SocketAddr> {
    ext.get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .or_else(|| ext.get::<MockConnectInfo<SocketAddr>>().map(|c| c.0))
}

/// The feed a request is about: the segment of `path` that the matched
/// route's `template` calls `{feed}` (every feed protocol and the
/// replication API name it so).
fn feed_of(template: &str, path: &str) -> Option<String> {
    let at = template.split('/').position(|seg| seg == "{feed}")?;
    let seg = path.split('/').nth(at)?;
    Some(
        percent_encoding::percent_decode_str(seg)
            .decode_utf8_lossy()
            .into_owned(),
    )
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
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| v == "http" || v == "https")
        .unwrap_or_else(|| "http".to_owned());
    Ok(format!("{scheme}://{host}"))
}
