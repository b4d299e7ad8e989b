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
//! - The request target is checked once, before any handler runs
//!   ([`target_refusal`]): a path or query with invalid percent-encoding,
//!   percent-encoded bytes that are not UTF-8, a NUL (`%00`), a path with a
//!   `.` or `..` segment (also when the dots or the slash are
//!   percent-encoded, or the separator is a backslash), or a query naming a
//!   parameter more than once where the route takes one value, is answered
//!   400 with the reason, in the error shape of the route's protocol. No
//!   route ever sees such a target.
//! - A 405 or 404 the router makes itself (empty) gets a plain-text
//!   reason.
//! - Every request is counted in `ferry_http_requests_total` and timed in
//!   `ferry_http_request_duration_seconds`, labelled by method, route
//!   template and status ([`RequestMetrics`]); one whose body stalled is
//!   counted as the 408 the server loop answers ([`BodyWatch`]), also when
//!   that cut its handler short.
//!
//! The layer is a plain [`tower::Service`] with a future of its own, not
//! `axum::middleware::from_fn`: that boxes the inner service and the future
//! on every call, and this path is taken by every index request a fleet
//! makes.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::body::HttpBody as _;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferry_core::CoreError;
use http_body_util::BodyExt;
use metrics::{Counter, Histogram};
use tower::{Layer, Service};

use crate::{access, blobs, client_addr, error};

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
    /// The listener's [`BodyWatch`] of a request with a body.
    stalled: Option<Arc<AtomicBool>>,
}

/// Put on a request with a body by the server loop that watches the body
/// for stalls: raised once the body sent nothing for the body timeout.
/// The client is then answered 408 by the server loop, whatever the
/// handler made of the broken body (or before it finished), and the
/// request is counted as that 408.
#[derive(Debug, Clone, Default)]
pub struct BodyWatch(pub Arc<AtomicBool>);

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
        let mut seen = Seen {
            start: Instant::now(),
            method: req.method().clone(),
            matched: req.extensions().get::<MatchedPath>().cloned(),
            uri: req.uri().clone(),
            client: client_addr(req.extensions()),
            stalled: None,
        };
        let route = seen.matched.as_ref().map(MatchedPath::as_str);
        // RFC 9112 §3.2: a request with more than one Host field is a 400;
        // links built from it would name whichever one came first.
        let hosts = req.headers().get_all(header::HOST).iter().count();
        let refusal = (hosts > 1)
            .then(|| {
                format!(
                    "the request has {hosts} Host header fields; send exactly one (RFC 9112, section 3.2)"
                )
            })
            .or_else(|| target_refusal(&seen.uri, route));
        if let Some(why) = refusal {
            let flavor = access::flavor_for_path(seen.uri.path());
            let refused = error::ApiError {
                error: CoreError::invalid(why),
                flavor,
            };
            return EdgeFuture {
                inner: None,
                refused: Some(refused.into_response()),
                seen: Some(seen),
            };
        }
        // A request without a body (most reads) has nothing to mark or lift.
        if !req.body().is_end_stream() {
            seen.stalled = req.extensions().get::<BodyWatch>().map(|w| w.0.clone());
            DefaultBodyLimit::disable().apply(&mut req);
            let form = req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .and_then(crate::form_guard::boundary_of);
            req = match form {
                Some(boundary) => req.map(|body| {
                    let guarded = crate::form_guard::FormGuard::new(body, &boundary);
                    Body::new(guarded.map_err(|e| {
                        if e.is::<crate::form_guard::FormError>() {
                            CoreError::client_body_refused(e)
                        } else {
                            CoreError::client_body_error(e)
                        }
                    }))
                }),
                None => req.map(|body| Body::new(body.map_err(CoreError::client_body_error))),
            };
        }
        EdgeFuture {
            inner: Some(self.inner.call(req)),
            refused: None,
            seen: Some(seen),
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner service's response, finished as the module says.
    pub(crate) struct EdgeFuture<F> {
        // None: the request was refused here (`refused`), never routed.
        #[pin]
        inner: Option<F>,
        refused: Option<Response>,
        seen: Option<Seen>,
    }

    impl<F> PinnedDrop for EdgeFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped unanswered: the server loop gave up on the request.
            // One whose body stalled was answered 408 there; count it.
            let this = this.project();
            if let Some(seen) = this.seen.take()
                && stalled(&seen)
            {
                record_seen(&seen, StatusCode::REQUEST_TIMEOUT.as_u16());
            }
        }
    }
}

/// Whether the request's body stalled ([`BodyWatch`]).
fn stalled(seen: &Seen) -> bool {
    seen.stalled.as_ref().is_some_and(|s| s.load(Ordering::Acquire))
}

fn record_seen(seen: &Seen, status: u16) {
    let route = seen.matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    let took = seen.start.elapsed().as_secs_f64();
    RequestMetrics::global().record(method_label(&seen.method), route, status, took);
}

impl<F, E> Future for EdgeFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut resp = match (this.inner.as_pin_mut(), this.refused.take()) {
            (Some(inner), _) => match inner.poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(resp)) => resp,
            },
            (None, Some(refused)) => refused,
            // (Never: a future is not polled again once it completed.)
            (None, None) => {
                let gone =
                    error::ApiError::text(CoreError::Internal("edge future polled after completion".into()));
                gone.into_response()
            }
        };
        if let Some(seen) = this.seen.take() {
            finish(&seen, &mut resp);
        }
        Poll::Ready(Ok(resp))
    }
}

fn finish(seen: &Seen, resp: &mut Response) {
    let status = if stalled(seen) {
        StatusCode::REQUEST_TIMEOUT
    } else {
        resp.status()
    };
    record_seen(seen, status.as_u16());

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

/// Query parameters a route takes more than once: (route template, name).
/// Everywhere else a parameter named twice is refused, since a route would
/// silently take one of the values.
const REPEATABLE: [(&str, &str); 4] = [
    // Docker and OCI clients ask for several scopes at once.
    ("/v2/token", "scope"),
    // OCI 1.1: a manifest pushed under several tags at once.
    ("/v2/{feed}/{*rest}", "tag"),
    ("/api/replication/v1/feeds/{feed}/digest", "include"),
    ("/api/replication/v1/feeds/{feed}/digest", "exclude"),
];

/// Why the request target (`uri`, matched to `route`) is refused, if it
/// is: see the module docs. Checked on every request, so the common case —
/// nothing percent-encoded, no dot segment — costs a scan of the path and
/// query bytes, and a query one small vector of its parameter names.
pub(crate) fn target_refusal(uri: &axum::http::Uri, route: Option<&str>) -> Option<String> {
    let path = uri.path();
    let decoded = match decode(path, false) {
        Ok(d) => d,
        Err(why) => return Some(format!("bad request path: {why}")),
    };
    if decoded.split(['/', '\\']).any(|seg| seg == "." || seg == "..") {
        return Some(format!(
            "bad request path {path:?}: '.' and '..' segments are not allowed (also when percent-encoded or separated by backslashes)"
        ));
    }
    let query = uri.query()?;
    let mut names: Vec<Cow<'_, str>> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = match decode(name, true) {
            Ok(n) => n,
            Err(why) => return Some(format!("bad query string: a parameter name has {why}")),
        };
        if let Err(why) = decode(value, true) {
            return Some(format!("bad query string: parameter {name:?} has {why}"));
        }
        names.push(name);
    }
    // Sorted, so that a query of many parameters costs n log n, not n².
    names.sort_unstable_by(|a, b| cmp_ignore_case(a, b));
    let mut i = 0;
    while i < names.len() {
        let same = names[i..]
            .iter()
            .take_while(|n| n.eq_ignore_ascii_case(&names[i]))
            .count();
        let repeatable = route.is_some_and(|r| {
            REPEATABLE
                .iter()
                .any(|(rt, n)| *rt == r && n.eq_ignore_ascii_case(&names[i]))
        });
        if same > 1 && !repeatable {
            return Some(format!(
                "bad query string: parameter {:?} is given {same} times; this route takes one value",
                names[i]
            ));
        }
        i += same;
    }
    None
}

fn cmp_ignore_case(a: &str, b: &str) -> std::cmp::Ordering {
    a.bytes()
        .map(|c| c.to_ascii_lowercase())
        .cmp(b.bytes().map(|c| c.to_ascii_lowercase()))
}

/// `s` percent-decoded (`+` as a space when `plus_is_space`, as in a query),
/// or what is wrong with it: a `%` not followed by two hex digits, decoded
/// bytes that are not UTF-8, a NUL. Borrowed when nothing needs decoding.
fn decode(s: &str, plus_is_space: bool) -> Result<Cow<'_, str>, String> {
    let needs = |b: &u8| *b == b'%' || (plus_is_space && *b == b'+');
    if !s.as_bytes().iter().any(needs) {
        // (A URI cannot carry a raw NUL; checked anyway, it costs nothing.)
        if s.contains('\0') {
            return Err("a NUL character".to_owned());
        }
        return Ok(Cow::Borrowed(s));
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| {
                    let h = std::str::from_utf8(h).ok()?;
                    u8::from_str_radix(h, 16)
                        .ok()
                        .filter(|_| h.bytes().all(|c| c.is_ascii_hexdigit()))
                });
                let Some(b) = hex else {
                    let shown: String = s[i..].chars().take(3).collect();
                    return Err(format!(
                        "invalid percent-encoding {shown:?} (a '%' must be followed by two hex digits)"
                    ));
                };
                if b == 0 {
                    return Err("a NUL character (%00)".to_owned());
                }
                out.push(b);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| "percent-encoded bytes that are not UTF-8".to_owned())
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
            "method {} is not allowed on {path:?}; the Allow header lists the methods that are",
            seen.method
        )
    } else {
        format!("{path:?} not found")
    };
    let (body, content_type) = refusal_body(path, status, &reason);
    *resp.body_mut() = Body::from(body);
    resp.headers_mut().remove(header::CONTENT_LENGTH);
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
}

/// A refusal's body and `Content-Type` in the error shape of the protocol
/// `path` belongs to: JSON `{"error"}` under `/api/` and npm, OCI's and
/// cargo's `errors` arrays, plain text (one line) elsewhere. For answers
/// made before or without a route (the router's own 404/405, and the
/// server loop's 400/408/431/501/503), so they read like every other
/// refusal on that path.
pub fn refusal_body(path: &str, status: StatusCode, reason: &str) -> (String, &'static str) {
    let reason = reason.trim_end();
    match access::flavor_for_path(path) {
        error::Flavor::Json => (
            serde_json::json!({ "error": reason }).to_string(),
            "application/json",
        ),
        error::Flavor::Oci => {
            let code = match status {
                StatusCode::NOT_FOUND => "NAME_UNKNOWN",
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => "TOOMANYREQUESTS",
                _ => "UNSUPPORTED",
            };
            let errors = serde_json::json!({ "errors": [{ "code": code, "message": reason }] });
            (errors.to_string(), "application/json")
        }
        error::Flavor::Cargo => (
            serde_json::json!({ "errors": [{ "detail": reason }] }).to_string(),
            "application/json",
        ),
        error::Flavor::Text | error::Flavor::Html => (format!("{reason}\n"), "text/plain; charset=utf-8"),
    }
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

/// Counts a request the listener answered itself, never routed: under
/// route `unparsed` and method `OTHER` one hyper could not parse (400, 414
/// or 431; what it asked for is not known, so `method` is `None`), under
/// route `unrouted` one refused before routing (431 for a head past the
/// limits, 503 past the connection cap). Timed from `started` (its first
/// byte, or when it reached the listener) to the answer.
pub fn record_unrouted(method: Option<&Method>, status: u16, started: Instant) {
    let (method, route) = match method {
        Some(m) => (method_label(m), "unrouted"),
        None => ("OTHER", "unparsed"),
    };
    RequestMetrics::global().record(method, route, status, started.elapsed().as_secs_f64());
}

impl RequestMetrics {
    fn global() -> &'static RequestMetrics {
        static METRICS: OnceLock<RequestMetrics> = OnceLock::new();
        METRICS.get_or_init(RequestMetrics::default)
    }

    /// Counts a request and records the seconds it `took` under its
    /// labels, registering them on first use. A label set seen before is
    /// recorded through its handles where they are kept (no handle is
    /// cloned: that would be two more shared reference counts to move
    /// per request).
    fn record(&self, method: &'static str, route: &str, status: u16, took: f64) {
        if let Ok(map) = self.by_route.read()
            && let Some(h) = map
                .get(route)
                .and_then(|list| list.iter().find(|h| h.method == method && h.status == status))
        {
            h.count.increment(1);
            h.time.record(took);
            return;
        }
        let (count, time) = self.register(method, route, status);
        count.increment(1);
        time.record(took);
    }

    /// The counter and histogram of one label set, registered.
    fn register(&self, method: &'static str, route: &str, status: u16) -> (Counter, Histogram) {
        let labels = [
            ("method", method.to_owned()),
            ("route", route.to_owned()),
            ("status", status.to_string()),
        ];
        let count = metrics::counter!("ferry_http_requests_total", &labels);
        let time = metrics::histogram!("ferry_http_request_duration_seconds", &labels);
        if let Ok(mut map) = self.by_route.write() {
            let list = map.entry(Arc::from(route)).or_default();
            if !list.iter().any(|h| h.method == method && h.status == status) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn check(target: &str, route: Option<&str>) -> Option<String> {
        target_refusal(&target.parse().expect("a URI"), route)
    }

    #[test]
    fn ordinary_targets_pass() {
        for t in [
            "/",
            "/assets/files/dir/file-1.0.tar.gz",
            "/npm/js/@scope%2fpkg",
            "/npm/js/-/v1/search?text=a+b&size=20",
            "/pypi/py/simple/pkg/",
            "/nuget/nu/Search()?searchTerm='x'&$top=30&semVerLevel=2.0.0",
            "/assets/files/caf%C3%A9.txt",
            "/assets/files/..x/x..",
            "/health?",
            "/health?&&a=1&&b=",
        ] {
            assert_eq!(check(t, None), None, "{t}");
        }
    }

    #[test]
    fn encoding_nul_and_dot_segments_are_named() {
        for (t, says) in [
            ("/a%zz", "invalid percent-encoding \"%zz\""),
            ("/a%", "invalid percent-encoding \"%\""),
            ("/a%4", "invalid percent-encoding"),
            ("/a%-1", "invalid percent-encoding"),
            ("/a%c3", "not UTF-8"),
            ("/a%00", "NUL"),
            ("/a?b=%00", "parameter \"b\" has a NUL"),
            ("/a?%00=1", "a parameter name has a NUL"),
            ("/a/..", "'..' segments"),
            ("/a/%2E%2e/b", "'..' segments"),
            ("/a/.%2e", "'..' segments"),
            ("/a/b%2f..%2fc", "'..' segments"),
            ("/a/b%5c..%5cc", "'..' segments"),
            ("/a/./b", "'.' and '..'"),
        ] {
            let why = check(t, None).unwrap_or_else(|| panic!("{t} passed"));
            assert!(why.contains(says), "{t}: {why}");
        }
    }

    #[test]
    fn repeated_parameters_are_refused_unless_the_route_takes_a_list() {
        let why = check("/x?a=1&b=2&A=3", Some("/x")).unwrap();
        assert!(why.contains("\"a\" is given 2 times"), "{why}");
        let why = check("/x?q=1&q=2&q=3", None).unwrap();
        assert!(why.contains("given 3 times"), "{why}");
        assert_eq!(check("/v2/token?scope=a&scope=b", Some("/v2/token")), None);
        assert_eq!(
            check(
                "/v2/f/r/manifests/sha256:ab?tag=a&tag=b",
                Some("/v2/{feed}/{*rest}")
            ),
            None
        );
        assert!(check("/v2/token?service=a&service=b", Some("/v2/token")).is_some());
        // Many distinct names: no quadratic work, no refusal.
        let many: String = (0..5_000).map(|i| format!("p{i}=1&")).collect();
        assert_eq!(check(&format!("/x?{many}"), None), None);
    }
}

/// 413 for a body past `limit` bytes, in the words every capped route uses.
pub(crate) fn body_too_large(limit: u64) -> CoreError {
    CoreError::TooLarge(format!("the request body exceeds the limit of {limit} bytes"))
}

/// Refuses (413) a body whose Content-Length is over `limit` bytes.
pub(crate) fn check_content_length(headers: &axum::http::HeaderMap, limit: u64) -> Result<(), CoreError> {
    match headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    {
        Some(len) if len > limit => Err(body_too_large(limit)),
        _ => Ok(()),
    }
}

/// The cap of a group of routes whose bodies are read whole (JSON
/// documents, forms): a body that declares more in `Content-Length` is refused
/// 413 at once, before any byte of it is read (a client that declared
/// 2 MB and sent nothing would otherwise hold its connection until the
/// body timeout); others are read up to `limit` bytes (axum's
/// [`DefaultBodyLimit`]) and refused past it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyCap {
    /// Bytes.
    pub limit: usize,
}

impl<S> Layer<S> for BodyCap {
    type Service = BodyCapService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BodyCapService {
            inner,
            limit: self.limit,
        }
    }
}

/// A route's service behind [`BodyCap`].
#[derive(Debug, Clone)]
pub(crate) struct BodyCapService<S> {
    inner: S,
    limit: usize,
}

/// Bytes all bodies read whole may hold at once, across every route and
/// connection (in KiB, the unit of [`BODY_BUDGET`]'s permits): each such
/// request takes its declared length (else its cap) before its body is
/// read, so many connections each sending a body just under its cap cannot
/// exhaust memory together.
const BODY_BUDGET_KIB: usize = 256 << 10;

/// How long a request waits for its share of [`BODY_BUDGET_KIB`] before it
/// is answered 503.
const BODY_BUDGET_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl<S> BodyCapService<S>
where
    S: Service<Request, Response = Response> + Clone,
{
    /// Hands `req` to the service made ready, leaving a clone in its place.
    fn call_inner(&mut self, req: Request) -> S::Future {
        let clone = self.inner.clone();
        std::mem::replace(&mut self.inner, clone).call(req)
    }
}

/// KiB of [`BODY_BUDGET_KIB`] held per client address (entries go when
/// they reach 0).
static ADDRESS_SHARES: std::sync::LazyLock<std::sync::Mutex<HashMap<std::net::IpAddr, usize>>> =
    std::sync::LazyLock::new(Default::default);

/// One request's part of its address's share of the body budget, given
/// back when dropped.
struct AddressShare {
    ip: std::net::IpAddr,
    kib: usize,
}

impl AddressShare {
    /// `kib` more for `ip`, unless that takes it past a quarter of the
    /// budget.
    fn take(ip: std::net::IpAddr, kib: u32) -> Option<AddressShare> {
        let kib = kib as usize;
        let mut m = ADDRESS_SHARES.lock().ok()?;
        let held = m.entry(ip).or_insert(0);
        if *held + kib > BODY_BUDGET_KIB / 4 {
            if *held == 0 {
                m.remove(&ip);
            }
            return None;
        }
        *held += kib;
        Some(AddressShare { ip, kib })
    }
}

impl Drop for AddressShare {
    fn drop(&mut self) {
        if let Ok(mut m) = ADDRESS_SHARES.lock()
            && let Some(held) = m.get_mut(&self.ip)
        {
            *held = held.saturating_sub(self.kib);
            if *held == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

tokio::task_local! {
    /// The cap ([`BodyCap::limit`], bytes) of the route whose request is
    /// being served, for the 413 of a body without a declared length that
    /// ran past it ([`crate::error::json_rejection`] names the number).
    pub(crate) static ROUTE_BODY_LIMIT: usize;
}

static BODY_BUDGET: std::sync::LazyLock<Arc<tokio::sync::Semaphore>> =
    std::sync::LazyLock::new(|| Arc::new(tokio::sync::Semaphore::new(BODY_BUDGET_KIB)));

impl<S> Service<Request> for BodyCapService<S>
where
    S: Service<Request, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let flavor = access::flavor_for_path(req.uri().path());
        if let Err(error) = check_content_length(req.headers(), self.limit as u64) {
            let refused = error::ApiError { error, flavor };
            return Box::pin(std::future::ready(Ok(refused.into_response())));
        }
        DefaultBodyLimit::max(self.limit).apply(&mut req);
        // What the body may hold: its length when known (declared), else
        // the cap; nothing without a body (a GET, a long poll).
        let body = req.body();
        let bytes = if body.is_end_stream() {
            0
        } else {
            let hint = body.size_hint();
            let most = hint.exact().or(hint.upper()).unwrap_or(u64::MAX);
            usize::try_from(most).unwrap_or(usize::MAX).min(self.limit)
        };
        let limit = self.limit;
        if bytes == 0 {
            return Box::pin(ROUTE_BODY_LIMIT.scope(limit, self.call_inner(req)));
        }
        let kib = u32::try_from(bytes.div_ceil(1024).min(BODY_BUDGET_KIB)).unwrap_or(u32::MAX);
        // One address holds at most a quarter of the budget: a client
        // trickling large bodies slowly cannot hold all of it.
        let share = match crate::client_addr(req.extensions()) {
            Some(addr) => match AddressShare::take(addr.ip(), kib) {
                Some(share) => Some(share),
                None => {
                    let refused = error::ApiError {
                        error: CoreError::TooMany(format!(
                            "this address is already sending {} MiB of request bodies at once, its share; retry shortly",
                            BODY_BUDGET_KIB / 4 / 1024
                        )),
                        flavor,
                    };
                    return Box::pin(std::future::ready(Ok(refused.into_response())));
                }
            },
            None => None,
        };
        let call = self.call_inner(req);
        Box::pin(async move {
            let _share = share;
            let budget = BODY_BUDGET.clone();
            let permit = match budget.clone().try_acquire_many_owned(kib) {
                Ok(p) => Some(p),
                Err(_) => tokio::time::timeout(BODY_BUDGET_WAIT, budget.acquire_many_owned(kib))
                    .await
                    .ok()
                    .and_then(Result::ok),
            };
            let Some(permit) = permit else {
                let refused = error::ApiError {
                    error: CoreError::Unavailable(
                        "too many large request bodies are being read at once; retry shortly".into(),
                    ),
                    flavor,
                };
                return Ok(refused.into_response());
            };
            let response = ROUTE_BODY_LIMIT.scope(limit, call).await;
            drop(permit);
            response
        })
    }
}
