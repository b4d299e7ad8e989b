//! What every request and response goes through, so that no handler can
//! forget it: one tower layer ([`Edge`]) applied to every route.
//!
//! - The request body's errors are marked as the client's
//!   ([`CoreError::client_body_error`]): a client that goes away mid-upload
//!   becomes [`CoreError::BrokenBody`] wherever the body was being read.
//!   Upload limits are enforced per route while streaming, so axum's
//!   default body limit is lifted for requests that have a body.
//! - Every response gets `X-Content-Type-Options: nosniff`, and the
//!   sandboxing `Content-Security-Policy` [`blobs::SANDBOX_POLICY`] unless
//!   it set a policy of its own (the web UI's pages do:
//!   [`ui::PAGE_POLICY`](crate::ui::PAGE_POLICY)), so user content and
//!   pages rendered from user data can never run script in Ferry's origin
//!   (per-type rule: [`blobs::content_headers`]).
//! - A request that failed is logged here, once, with its feed and the
//!   client's address: a server fault at ERROR (its cause is not shown to
//!   the client), a broken request body at WARN, as the client event it is.
//! - A 405 or 404 the router makes itself (empty) gets a plain-text
//!   reason.
//! - Every request is counted in `ferry_http_requests_total` and timed in
//!   `ferry_http_request_duration_seconds`, labelled by method, route
//!   template and status ([`RequestMetrics`]).
//!
//! The layer is a plain [`tower::Service`] with a future of its own, not
//! `axum::middleware::from_fn`: that boxes the inner service and the future
//! on every call, and this path is taken by every index request a fleet
//! makes.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::body::HttpBody as _;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use ferry_core::CoreError;
use http_body_util::BodyExt;
use metrics::{Counter, Histogram};
use tower::{Layer, Service};

use crate::{blobs, client_addr, error};

/// The layer: wraps each route's service in [`EdgeService`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Edge;

impl<S> Layer<S> for Edge {
    type Service = EdgeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EdgeService { inner }
    }
}

/// One route's service behind the [`Edge`] layer.
#[derive(Debug, Clone)]
pub(crate) struct EdgeService<S> {
    inner: S,
}

/// What is kept of a request while its response is made: shared parts,
/// for the metrics and the failure log.
struct Seen {
    start: Instant,
    method: Method,
    matched: Option<MatchedPath>,
    uri: axum::http::Uri,
    client: Option<SocketAddr>,
}

impl<S> Service<Request> for EdgeService<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = EdgeFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let seen = Seen {
            start: Instant::now(),
            method: req.method().clone(),
            matched: req.extensions().get::<MatchedPath>().cloned(),
            uri: req.uri().clone(),
            client: client_addr(req.extensions()),
        };
        // A request without a body (most reads) has nothing to mark or lift.
        if !req.body().is_end_stream() {
            DefaultBodyLimit::disable().apply(&mut req);
            req = req.map(|body| Body::new(body.map_err(CoreError::client_body_error)));
        }
        EdgeFuture {
            inner: self.inner.call(req),
            seen: Some(seen),
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner service's response, finished as the module says.
    pub(crate) struct EdgeFuture<F> {
        #[pin]
        inner: F,
        seen: Option<Seen>,
    }
}

impl<F, E> Future for EdgeFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut resp = match this.inner.poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(resp)) => resp,
        };
        if let Some(seen) = this.seen.take() {
            finish(&seen, &mut resp);
        }
        Poll::Ready(Ok(resp))
    }
}

fn finish(seen: &Seen, resp: &mut Response) {
    let route = seen.matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    let (count, time) = RequestMetrics::global().handles(&seen.method, route, resp.status().as_u16());
    count.increment(1);
    time.record(seen.start.elapsed().as_secs_f64());

    if let Some(failure) = resp.extensions_mut().remove::<error::Failure>() {
        log_failure(seen, failure);
    }
    give_reason(seen, resp);
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
}

/// A refusal the router made itself (405 for a method the route does not
/// take, 404 for a path no route matches) comes with an empty body; it
/// gets a plain-text reason, as every other refusal has. HEAD answers stay
/// bodiless.
fn give_reason(seen: &Seen, resp: &mut Response) {
    let status = resp.status();
    if seen.method == Method::HEAD
        || !matches!(status, StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_FOUND)
        || resp.body().size_hint().exact() != Some(0)
        || resp.headers().contains_key(header::CONTENT_TYPE)
    {
        return;
    }
    let path = seen.uri.path();
    // (The router adds `Allow` after this layer has run.)
    let reason = if status == StatusCode::METHOD_NOT_ALLOWED {
        format!(
            "method {} is not allowed on {path:?}; the Allow header lists the methods that are\n",
            seen.method
        )
    } else {
        format!("{path:?} not found\n")
    };
    *resp.body_mut() = Body::from(reason);
    resp.headers_mut().remove(header::CONTENT_LENGTH);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
}

fn log_failure(seen: &Seen, failure: error::Failure) {
    let path = seen.uri.path();
    let method = &seen.method;
    let feed = seen.matched.as_ref().and_then(|m| feed_of(m.as_str(), path));
    let feed = feed.as_deref().unwrap_or("-");
    let client = seen
        .client
        .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
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

/// The feed a request is about: the segment of `path` that the matched
/// route's `template` calls `{feed}` (every feed protocol and the
/// replication API name it so).
pub(crate) fn feed_of(template: &str, path: &str) -> Option<String> {
    let at = template.split('/').position(|seg| seg == "{feed}")?;
    let seg = path.split('/').nth(at)?;
    Some(
        percent_encoding::percent_decode_str(seg)
            .decode_utf8_lossy()
            .into_owned(),
    )
}

/// The request metrics' handles, registered once per label set and found
/// again without building a metrics key (which allocates its labels) on
/// every request.
///
/// Labels: `method` is one of the methods Ferry routes (GET, HEAD, POST,
/// PUT, PATCH, DELETE, OPTIONS) or `OTHER`, so a client inventing methods
/// cannot add series; `route` is the matched route's template (finite) or
/// `unmatched`; `status` is the answer's code (chosen by Ferry).
#[derive(Default)]
pub(crate) struct RequestMetrics {
    by_route: RwLock<HashMap<Arc<str>, Vec<Handles>>>,
}

struct Handles {
    method: &'static str,
    status: u16,
    count: Counter,
    time: Histogram,
}

/// The `method` label of a request.
pub(crate) fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

impl RequestMetrics {
    fn global() -> &'static RequestMetrics {
        static METRICS: OnceLock<RequestMetrics> = OnceLock::new();
        METRICS.get_or_init(RequestMetrics::default)
    }

    /// The counter and histogram of one label set, registered on first use.
    fn handles(&self, method: &Method, route: &str, status: u16) -> (Counter, Histogram) {
        let method = method_label(method);
        let find = |list: &Vec<Handles>| {
            list.iter()
                .find(|h| h.method == method && h.status == status)
                .map(|h| (h.count.clone(), h.time.clone()))
        };
        if let Ok(map) = self.by_route.read()
            && let Some(found) = map.get(route).and_then(find)
        {
            return found;
        }
        let labels = [
            ("method", method.to_owned()),
            ("route", route.to_owned()),
            ("status", status.to_string()),
        ];
        let count = metrics::counter!("ferry_http_requests_total", &labels);
        let time = metrics::histogram!("ferry_http_request_duration_seconds", &labels);
        if let Ok(mut map) = self.by_route.write() {
            let list = map.entry(Arc::from(route)).or_default();
            if find(list).is_none() {
                list.push(Handles {
                    method,
                    status,
                    count: count.clone(),
                    time: time.clone(),
                });
            }
        }
        (count, time)
    }
}
