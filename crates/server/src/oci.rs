//! `/v2/`: the OCI Distribution API (v1.1), as skopeo, docker, podman,
//! crane and oras speak it. Image references look like
//! `HOST:PORT/FEED/NAME:TAG`: the first path segment after `/v2/` is the
//! feed, the repository name is everything up to `/blobs/`, `/manifests/`,
//! `/tags/list` or `/referrers/` (nested names allowed). One wildcard route
//! per method; the path is parsed here into a [`Target`].
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /v2/` | 200 with a valid key (or the empty basic credentials of an anonymous client); 401 + `WWW-Authenticate` without `Authorization` |
//! | `GET /v2/_catalog?n=&last=` | `FEED/NAME` of every readable OCI feed, `Link` to the next page |
//! | `HEAD/GET …/blobs/DIGEST` | the blob (Range), `Docker-Content-Digest` |
//! | `DELETE …/blobs/DIGEST` | 202; removes the repository's upload link (409 DENIED while a manifest of the repository lists the blob, naming it) |
//! | `POST …/blobs/uploads/` | 202 + session `Location`; `?digest=` with a body: 201 (monolithic); `?mount=&from=`: 201 if the blob is in the feed, else a session; content without `?digest=` → 400 BLOB_UPLOAD_INVALID; 429 TOOMANYREQUESTS + `Retry-After` past the open-session caps (per key, per feed, per instance; see [`Uploads`]) |
//! | `PATCH …/blobs/uploads/ID` | appends a chunk (`Content-Range` optional; out of order → 416) |
//! | `GET …/blobs/uploads/ID` | 204 with `Range` |
//! | `PUT …/blobs/uploads/ID?digest=` | 201; closes the session, optionally with a last chunk |
//! | `DELETE …/blobs/uploads/ID` | 204; cancels the session |
//! | `PUT …/manifests/REF` | 201, `Docker-Content-Digest`, `OCI-Subject` |
//! | `HEAD/GET …/manifests/REF` | the manifest as pushed, its media type |
//! | `DELETE …/manifests/REF` | 202; by digest the manifest and its tags (409 DENIED while an index of the repository lists it, naming the index), by tag the tag |
//! | `GET …/tags/list?n=&last=` | `{"name","tags"}`, `Link` to the next page |
//! | `GET …/referrers/DIGEST?artifactType=` | an image index, `OCI-Filters-Applied` |
//!
//! Errors are `{"errors":[{"code","message"}]}` with the spec's codes, and
//! every response carries `Docker-Distribution-API-Version: registry/2.0`.
//! `POST /api/v1/feeds/{name}/oci/prune-untagged?older_than_secs=N` (admin)
//! removes untagged manifests (see [`oci::prune_untagged`]).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use ferry_core::oci::{self, ErrorCode, Page, Uploads};
use ferry_core::{Action, CoreError, auth};
use ferry_formats::oci as format;
use ferry_formats::oci::OciDigest;
use ferry_store::ByteStream;
use ferry_types::FeedName;
use futures::TryStreamExt;
use serde::Deserialize;
use serde_json::json;

use crate::AppState;
use crate::access::{self, Admin, FeedAccess};
use crate::blobs::serve_blob;
use crate::error::{ApiError, Flavor, note_failure, public_message, status_of};

pub fn routes(state: &AppState) -> Router<AppState> {
    let uploads = Arc::new(Uploads::default());
    Router::new()
        .route("/v2", get(base))
        .route("/v2/", get(base))
        .route("/v2/_catalog", get(catalog))
        .route("/v2/token", get(token).post(oauth_token))
        .route(
            "/v2/{feed}/{*rest}",
            get(read).put(put).post(post_upload).patch(patch).delete(remove),
        )
        .layer(Extension(uploads))
        .layer(middleware::from_fn_with_state(state.clone(), challenge))
        .layer(middleware::map_response(api_version))
        .route("/api/v1/feeds/{name}/oci/prune-untagged", post(prune))
}

async fn api_version(mut resp: Response) -> Response {
    resp.headers_mut().insert(
        HeaderName::from_static("docker-distribution-api-version"),
        HeaderValue::from_static("registry/2.0"),
    );
    resp
}

const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";

/// The `service` of the registry token flow.
const SERVICE: &str = "ferry";

/// The registry as clients should see it: `Config::base_url` when set,
/// else `http(s)://HOST` from the request (`X-Forwarded-Proto`, `Host`).
fn registry_origin(st: &AppState, headers: &HeaderMap) -> Option<String> {
    crate::public_origin(&st.ferry, headers, None).ok()
}

/// Every 401 of the registry (but the token endpoint's own) challenges
/// with the token flow: `Bearer realm="BASE/v2/token",service="ferry"`.
/// Clients that send basic credentials up front never see it.
async fn challenge(
    State(st): State<AppState>,
    req: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    let realm = registry_origin(&st, req.headers()).map(|o| format!("{o}/v2/token"));
    let is_token_endpoint = req.uri().path() == "/v2/token";
    // The scope this request needs, so a client knows what to ask for.
    let path = req.uri().path().to_owned();
    let scope = scope_of(&path, req.method()).and_then(|(repo, push)| {
        let feed = path.trim_start_matches('/').split('/').nth(1)?;
        let ok = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._/".contains(&b))
        };
        (ok(feed) && ok(&repo)).then(|| {
            format!(
                ",scope=\"repository:{feed}/{repo}:{}\"",
                if push { "pull,push" } else { "pull" }
            )
        })
    });
    let mut resp = next.run(req).await;
    if resp.status() == StatusCode::UNAUTHORIZED
        && !is_token_endpoint
        && let Some(realm) = realm
        && let Ok(v) = HeaderValue::from_str(&format!(
            "Bearer realm=\"{realm}\",service=\"{SERVICE}\"{}",
            scope.unwrap_or_default()
        ))
    {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

// ---------------------------------------------------------------------------
// Errors

/// A failed OCI request, rendered as `{"errors":[{"code","message"}]}`.
#[derive(Debug)]
struct Fail {
    error: oci::Error,
    /// Overrides the status the error implies (405, 416).
    status: Option<StatusCode>,
    headers: Vec<(HeaderName, String)>,
}

impl Fail {
    fn code(code: ErrorCode, error: CoreError) -> Self {
        oci::Error::new(code, error).into()
    }

    fn method_not_allowed(method: &Method) -> Self {
        Self {
            error: oci::Error::new(
                ErrorCode::Unsupported,
                CoreError::invalid(format!("{method} is not supported here")),
            ),
            status: Some(StatusCode::METHOD_NOT_ALLOWED),
            headers: Vec::new(),
        }
    }
}

impl From<oci::Error> for Fail {
    fn from(error: oci::Error) -> Self {
        let status = match error.code {
            Some(ErrorCode::RangeInvalid) => Some(StatusCode::RANGE_NOT_SATISFIABLE),
            Some(ErrorCode::TooManyRequests) => Some(StatusCode::TOO_MANY_REQUESTS),
            _ => None,
        };
        let headers = error
            .retry_after
            .map(|d| (header::RETRY_AFTER, d.as_secs().to_string()))
            .into_iter()
            .collect();
        Self {
            error,
            status,
            headers,
        }
    }
}

impl From<CoreError> for Fail {
    fn from(e: CoreError) -> Self {
        oci::Error::from(e).into()
    }
}

impl From<format::OciError> for Fail {
    fn from(e: format::OciError) -> Self {
        oci::Error::from(e).into()
    }
}

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        let mut resp = match self.error.code {
            // No precise code: the generic rendering by status.
            None => ApiError {
                error: self.error.error,
                flavor: Flavor::Oci,
            }
            .into_response(),
            Some(code) => {
                let status = self.status.unwrap_or_else(|| status_of(&self.error.error));
                let message = public_message(&self.error.error);
                let body = json!({ "errors": [{ "code": code.as_str(), "message": message }] });
                let mut resp = (status, Json(body)).into_response();
                if status == StatusCode::UNAUTHORIZED {
                    resp.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Basic realm=\"ferry\""),
                    );
                }
                note_failure(&mut resp, &self.error.error);
                resp
            }
        };
        if let Some(status) = self.status {
            *resp.status_mut() = status;
        }
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                resp.headers_mut().insert(name, v);
            }
        }
        resp
    }
}

type Reply = Result<Response, Fail>;

// ---------------------------------------------------------------------------
// Paths

/// What a request under `/v2/{feed}/` is about; each with the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// `NAME/blobs/uploads/`
    UploadStart,
    /// `NAME/blobs/uploads/ID`
    Upload(String),
    /// `NAME/blobs/DIGEST`
    Blob(String),
    /// `NAME/manifests/REFERENCE`
    Manifest(String),
    /// `NAME/tags/list`
    Tags,
    /// `NAME/referrers/DIGEST`
    Referrers(String),
}

/// The feed as named in the URL, the repository, and the target of a path
/// `/v2/FEED/…` (as sent, percent-encoded).
fn target(path: &str) -> Result<(String, String, Target), Fail> {
    let rest = path.strip_prefix("/v2/").unwrap_or(path);
    let (feed, rest) = rest.split_once('/').unwrap_or((rest, ""));
    let decoded = percent_encoding::percent_decode_str(rest)
        .decode_utf8()
        .map_err(|_| {
            Fail::code(
                ErrorCode::NameInvalid,
                CoreError::invalid("the request path is not valid UTF-8 once percent-decoded"),
            )
        })?;
    let segs: Vec<&str> = decoded.split('/').collect();
    let n = segs.len();
    let tail = |k: usize| segs.get(n.wrapping_sub(k)).copied().unwrap_or_default();
    let (name_len, t) = if n >= 3 && tail(3) == "blobs" && tail(2) == "uploads" && tail(1).is_empty() {
        (n - 3, Target::UploadStart)
    } else if n >= 2 && tail(2) == "blobs" && tail(1) == "uploads" {
        (n - 2, Target::UploadStart)
    } else if n >= 3 && tail(3) == "blobs" && tail(2) == "uploads" {
        (n - 3, Target::Upload(tail(1).to_owned()))
    } else if n >= 2 && tail(2) == "blobs" {
        (n - 2, Target::Blob(tail(1).to_owned()))
    } else if n >= 2 && tail(2) == "manifests" {
        (n - 2, Target::Manifest(tail(1).to_owned()))
    } else if n >= 2 && tail(2) == "tags" && tail(1) == "list" {
        (n - 2, Target::Tags)
    } else if n >= 2 && tail(2) == "referrers" {
        (n - 2, Target::Referrers(tail(1).to_owned()))
    } else {
        return Err(
            CoreError::not_found(format!("{path} is not an endpoint of the OCI distribution API")).into(),
        );
    };
    let repo = segs[..name_len].join("/");
    Ok((feed.to_owned(), repo, t))
}

/// The repository a request under `/v2/{feed}/` is about, and whether a
/// registry token must grant `push` for it (writes, and every upload
/// session route) rather than `pull`. None for a path that names no
/// endpoint.
pub(crate) fn scope_of(path: &str, method: &Method) -> Option<(String, bool)> {
    let (_, repo, t) = target(path).ok()?;
    let read = matches!(*method, Method::GET | Method::HEAD);
    let push = !read || matches!(t, Target::Upload(_) | Target::UploadStart);
    Some((repo, push))
}

/// The query parameters, percent-decoded.
fn query(uri: &Uri) -> Vec<(String, String)> {
    form_params(uri.query().unwrap_or_default())
}

/// `application/x-www-form-urlencoded` pairs (a query string or a form
/// body), percent-decoded, `+` as space.
fn form_params(s: &str) -> Vec<(String, String)> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn param<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// `n` of a paginated listing.
fn page_size(q: &[(String, String)]) -> Result<Option<usize>, Fail> {
    match param(q, "n") {
        None | Some("") => Ok(None),
        Some(n) => n
            .parse::<usize>()
            .map(Some)
            .map_err(|_| CoreError::invalid(format!("n must be a non-negative integer, not {n:?}")).into()),
    }
}

/// Characters escaped in a `last` query parameter of a `Link`.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'/')
    .remove(b'~');

/// A listing's JSON with a `Link` to the next page when there is one.
fn listing(body: Vec<u8>, page: &Page, path: &str, n: Option<usize>) -> Response {
    let mut resp = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    if page.more
        && let Some(last) = page.entries.last()
    {
        let n = n.unwrap_or(page.entries.len());
        let last = percent_encoding::utf8_percent_encode(last, QUERY_VALUE);
        if let Ok(v) = HeaderValue::from_str(&format!("<{path}?n={n}&last={last}>; rel=\"next\"")) {
            resp.headers_mut().insert(header::LINK, v);
        }
    }
    resp
}

fn digest_param(s: &str) -> Result<OciDigest, Fail> {
    Ok(format::parse_digest(s)?)
}

fn body_stream(body: Body) -> ByteStream {
    Box::pin(body.into_data_stream().map_err(std::io::Error::other))
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse().ok())
}

/// Refuses (413) a body announced larger than `limit`.
fn check_length(headers: &HeaderMap, limit: u64) -> Result<(), Fail> {
    match content_length(headers) {
        Some(len) if len > limit => Err(Fail::code(
            ErrorCode::SizeInvalid,
            CoreError::TooLarge(format!(
                "a body of {len} bytes exceeds the limit of {limit} bytes"
            )),
        )),
        _ => Ok(()),
    }
}

/// A chunk's `Content-Range`, checked against `Content-Length`; malformed
/// or inconsistent → RANGE_INVALID (416).
fn content_range(headers: &HeaderMap) -> Result<Option<(u64, u64)>, Fail> {
    let Some(v) = headers.get(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let invalid = |m: String| Fail::from(oci::Error::new(ErrorCode::RangeInvalid, CoreError::Invalid(m)));
    let text = v.to_str().unwrap_or_default();
    let (start, end) = format::parse_content_range(text)
        .ok_or_else(|| invalid(format!("malformed Content-Range {text:?}")))?;
    if let Some(len) = content_length(headers)
        && len != end - start + 1
    {
        return Err(invalid(format!(
            "Content-Range {text:?} is {} bytes but Content-Length is {len}",
            end - start + 1
        )));
    }
    Ok(Some((start, end)))
}

// ---------------------------------------------------------------------------
// Responses

fn base_path(feed: &str, repo: &str) -> String {
    format!("/v2/{feed}/{repo}")
}

fn empty(status: StatusCode, headers: Vec<(HeaderName, String)>) -> Response {
    let mut resp = status.into_response();
    for (name, value) in headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            resp.headers_mut().insert(name, v);
        }
    }
    resp
}

/// The headers describing an upload session.
fn session_headers(feed: &str, repo: &str, status: &oci::UploadStatus) -> Vec<(HeaderName, String)> {
    let end = status.size.saturating_sub(1);
    vec![
        (
            header::LOCATION,
            format!("{}/blobs/uploads/{}", base_path(feed, repo), status.id),
        ),
        (header::RANGE, format!("0-{end}")),
        (HeaderName::from_static("docker-upload-uuid"), status.id.clone()),
        (
            HeaderName::from_static("blob-upload-session-id"),
            status.id.clone(),
        ),
    ]
}

/// 201 for a blob now in the repository, named as the client named it.
fn blob_created(feed: &str, repo: &str, digest: &OciDigest) -> Response {
    empty(
        StatusCode::CREATED,
        vec![
            (
                header::LOCATION,
                format!("{}/blobs/{digest}", base_path(feed, repo)),
            ),
            (HeaderName::from_static(DOCKER_CONTENT_DIGEST), digest.to_string()),
        ],
    )
}

fn with_digest(mut resp: Response, digest: &OciDigest) -> Response {
    if let Ok(v) = HeaderValue::from_str(&digest.to_string()) {
        resp.headers_mut()
            .insert(HeaderName::from_static(DOCKER_CONTENT_DIGEST), v);
    }
    resp
}

/// Adds the session's headers to a 416, so the client can resume.
async fn resumable(
    fail: Fail,
    st: &AppState,
    uploads: &Uploads,
    access: &FeedAccess,
    repo: &str,
    id: &str,
) -> Fail {
    if fail.status != Some(StatusCode::RANGE_NOT_SATISFIABLE) {
        return fail;
    }
    let feed = access.feed.name.as_str();
    match oci::upload_status(&st.ferry, uploads, &access.feed, repo, id).await {
        Ok(status) => Fail {
            headers: session_headers(feed, repo, &status),
            ..fail
        },
        Err(_) => fail,
    }
}

// ---------------------------------------------------------------------------
// Handlers

/// `GET /v2/`: the API version check, where clients learn how to log in.
async fn base(State(st): State<AppState>, headers: HeaderMap) -> Reply {
    if !headers.contains_key(header::AUTHORIZATION) {
        return Err(Fail::code(
            ErrorCode::Unauthorized,
            CoreError::Unauthorized(
                "authentication required: use any user name and an API key as password".into(),
            ),
        ));
    }
    match access::oci_credentials(&st, &headers).await {
        Ok(_) => Ok(Json(json!({})).into_response()),
        Err(e) => Err(Fail::code(ErrorCode::Unauthorized, e)),
    }
}

/// `GET /v2/token?service=ferry&scope=repository:FEED/NAME:pull,push`: the
/// registry token endpoint. Basic credentials (any user, an API key as
/// password) or none (anonymous: pulls of public feeds); a wrong key is
/// refused (401). The token grants, of the actions asked, those the key
/// may do now: `pull` where it may read, `push` where it may write;
/// nothing on a feed it may not see or that does not exist.
async fn token(State(st): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    let issued = async {
        let principal = access::principal(&st, &headers).await.map_err(|e| match e {
            CoreError::Unauthorized(m) => CoreError::Unauthorized(format!(
                "{m}: log in with any user name and an API key as the password"
            )),
            e => e,
        })?;
        token_inner(&st, principal, &query(&uri)).await
    };
    token_answer(issued.await)
}

/// Largest form body of the OAuth2 token request.
const MAX_TOKEN_FORM: usize = 64 << 10;

/// `POST /v2/token` with an `application/x-www-form-urlencoded` body: the
/// OAuth2 form of the token endpoint (Docker's "token authentication with
/// OAuth2"), which containerd and the Docker CLI use first.
/// `grant_type=password` with `username` (any) and `password` (an API
/// key), `service` and `scope` as in the GET form; no refresh tokens are
/// issued, so `grant_type=refresh_token` is refused (400), and so is a
/// missing password (401: this form has no anonymous access).
async fn oauth_token(State(st): State<AppState>, body: Body) -> Response {
    let issued = async {
        let form = axum::body::to_bytes(body, MAX_TOKEN_FORM).await.map_err(|e| {
            let e = e.into_inner();
            if e.is::<http_body_util::LengthLimitError>() {
                CoreError::TooLarge(format!("the token request form exceeds {MAX_TOKEN_FORM} bytes"))
            } else {
                CoreError::from_body_error(&*e).unwrap_or_else(|| {
                    CoreError::invalid(format!("could not read the token request form: {e}"))
                })
            }
        })?;
        let form = std::str::from_utf8(&form)
            .map_err(|_| CoreError::invalid("the token request form is not UTF-8"))?;
        let params = form_params(form);
        match param(&params, "grant_type") {
            Some("password") => {}
            Some("refresh_token") => {
                return Err(CoreError::invalid(
                    "unsupported grant_type refresh_token: this registry issues no refresh tokens; use grant_type=password",
                ));
            }
            other => {
                return Err(CoreError::invalid(format!(
                    "unsupported grant_type {:?}; use grant_type=password",
                    other.unwrap_or_default()
                )));
            }
        }
        let password = param(&params, "password")
            .filter(|p| !p.is_empty())
            .ok_or_else(|| {
                CoreError::Unauthorized(
                    "no password: use any user name and an API key as the password".into(),
                )
            })?;
        let principal = st.ferry.authenticate(password).await.map_err(|e| match e {
            CoreError::Unauthorized(m) => CoreError::Unauthorized(format!(
                "{m}: log in with any user name and an API key as the password"
            )),
            e => e,
        })?;
        token_inner(&st, Some(principal), &params).await
    };
    token_answer(issued.await)
}

/// The token endpoint's answer: the token, or the error in the
/// registry's error shape (401 with a Basic challenge).
fn token_answer(issued: Result<Response, CoreError>) -> Response {
    match issued {
        Ok(resp) => resp,
        Err(e) => {
            let status = status_of(&e);
            let code = if status == StatusCode::UNAUTHORIZED {
                "UNAUTHORIZED"
            } else if status.is_client_error() {
                "UNSUPPORTED"
            } else {
                "UNKNOWN"
            };
            let body = json!({ "errors": [{ "code": code, "message": public_message(&e) }] });
            let mut resp = (status, Json(body)).into_response();
            if status == StatusCode::UNAUTHORIZED {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"ferry\""),
                );
            }
            note_failure(&mut resp, &e);
            resp
        }
    }
}

/// Issues a token for `principal` (None: anonymous) over the `service`
/// and `scope` parameters in `q`.
async fn token_inner(
    st: &AppState,
    principal: Option<ferry_core::Principal>,
    q: &[(String, String)],
) -> Result<Response, CoreError> {
    if let Some(service) = param(q, "service")
        && !service.is_empty()
        && service != SERVICE
    {
        return Err(CoreError::invalid(format!(
            "unknown service {service:?}; this registry's service is {SERVICE:?}"
        )));
    }
    // Each scope once, its actions merged: `scope` may repeat, and hold
    // several scopes separated by spaces.
    let mut asked: Vec<(ferry_types::FeedName, String, Vec<String>)> = Vec::new();
    let mut catalog = false;
    for scope in q
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' '))
        .filter(|s| !s.is_empty())
    {
        if auth::is_catalog_scope(scope) {
            catalog = true;
            continue;
        }
        let Some(s) = auth::parse_scope(scope)? else {
            continue;
        };
        match asked.iter_mut().find(|(f, n, _)| *f == s.feed && *n == s.name) {
            Some((_, _, actions)) => actions.extend(s.actions),
            None => asked.push((s.feed, s.name, s.actions)),
        }
    }
    if asked.len() > 64 {
        return Err(CoreError::invalid("at most 64 repositories per token request"));
    }
    let mut access = Vec::new();
    for (feed_name, name, actions) in asked {
        let feed = match st.ferry.feed(&feed_name).await {
            Ok(f) if f.feed_type == ferry_types::FeedType::Oci => Some(f),
            Ok(_) | Err(CoreError::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        let granted = auth::granted_actions(principal.as_ref(), feed.as_ref(), &actions);
        if !granted.is_empty() {
            access.push(auth::RegistryGrant {
                repository: format!("{feed_name}/{name}"),
                actions: granted,
            });
        }
    }
    let now = auth::unix_now();
    let claims = auth::RegistryClaims {
        iss: st.ferry.instance_id().to_string(),
        key: principal.as_ref().map(|p| hex_encode(&p.key.hash)),
        nonce: String::new(),
        iat: now,
        exp: now + auth::REGISTRY_TOKEN_TTL_SECS,
        access,
        catalog,
    };
    let token = auth::issue_registry_token(st.ferry.registry_token_key(), &claims)?;
    let body = json!({
        "token": token,
        "access_token": token,
        "expires_in": auth::REGISTRY_TOKEN_TTL_SECS,
        "issued_at": ferry_types::rfc3339_millis(i64::try_from(now.saturating_mul(1000)).unwrap_or(i64::MAX)),
    });
    let mut resp = Json(body).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

fn hex_encode(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

async fn catalog(State(st): State<AppState>, headers: HeaderMap, uri: Uri) -> Reply {
    let (principal, claims) = access::oci_credentials(&st, &headers)
        .await
        .map_err(|e| Fail::code(ErrorCode::Unauthorized, e))?;
    let q = query(&uri);
    let n = page_size(&q)?;
    // A registry token lists what it was issued for: every readable
    // repository with `registry:catalog:*`, else those it may pull.
    let listed = |repository: &str| claims.as_ref().is_none_or(|c| c.lists(repository));
    let page = oci::catalog(&st.ferry, principal.as_ref(), listed, n, param(&q, "last")).await?;
    Ok(listing(
        format::render_catalog(&page.entries),
        &page,
        "/v2/_catalog",
        n,
    ))
}

async fn read(
    State(st): State<AppState>,
    access: FeedAccess,
    Extension(uploads): Extension<Arc<Uploads>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Reply {
    let ferry = &st.ferry;
    let feed = &access.feed;
    let (feed_name, repo, t) = target(uri.path())?;
    match t {
        Target::Blob(d) => {
            let digest = digest_param(&d)?;
            let blob = oci::blob(ferry, feed, &repo, &digest).await?;
            let resp = serve_blob(
                ferry,
                &method,
                &headers,
                &blob.digest,
                "application/octet-stream",
                None,
            )
            .await?;
            Ok(with_digest(resp, &digest))
        }
        Target::Manifest(reference) => {
            let m = oci::manifest(ferry, feed, &repo, &reference).await?;
            let resp = serve_blob(
                ferry,
                &method,
                &headers,
                &m.digest,
                &m.media_type,
                Some(m.created_at),
            )
            .await?;
            if method == Method::GET && resp.status() == StatusCode::OK {
                ferry.count_download(feed, &m.key);
            }
            Ok(with_digest(resp, &m.named))
        }
        Target::Tags => {
            let q = query(&uri);
            let n = page_size(&q)?;
            let page = oci::tags(ferry, feed, &repo, n, param(&q, "last")).await?;
            let name = format!("{feed_name}/{repo}");
            let path = format!("{}/tags/list", base_path(&feed_name, &repo));
            Ok(listing(
                format::render_tags(&name, &page.entries),
                &page,
                &path,
                n,
            ))
        }
        Target::Referrers(d) => {
            let digest = digest_param(&d)?;
            let q = query(&uri);
            let filter = param(&q, "artifactType").filter(|t| !t.is_empty());
            let body = oci::referrers(ferry, feed, &repo, &digest, filter).await?;
            let mut resp = ([(header::CONTENT_TYPE, format::OCI_INDEX)], body).into_response();
            if filter.is_some() {
                resp.headers_mut().insert(
                    HeaderName::from_static("oci-filters-applied"),
                    HeaderValue::from_static("artifactType"),
                );
            }
            Ok(resp)
        }
        Target::Upload(id) => {
            auth::authorize_feed(access.principal.as_ref(), feed, Action::Write)?;
            let status = oci::upload_status(ferry, &uploads, feed, &repo, &id).await?;
            Ok(empty(
                StatusCode::NO_CONTENT,
                session_headers(&feed_name, &repo, &status),
            ))
        }
        Target::UploadStart => Err(Fail::method_not_allowed(&method)),
    }
}

async fn post_upload(
    State(st): State<AppState>,
    access: FeedAccess,
    Extension(uploads): Extension<Arc<Uploads>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Reply {
    let ferry = &st.ferry;
    let feed = &access.feed;
    let (feed_name, repo, t) = target(uri.path())?;
    if t != Target::UploadStart {
        return Err(Fail::method_not_allowed(&method));
    }
    oci::check_repository(&repo)?;
    let q = query(&uri);
    // The session itself is the same for either algorithm: the digest
    // that closes it is what the content is verified against.
    if let Some(alg) = param(&q, "digest-algorithm")
        && alg != "sha256"
        && alg != "sha512"
    {
        return Err(Fail::code(
            ErrorCode::Unsupported,
            CoreError::invalid(format!(
                "digest-algorithm {alg:?} is not supported; this registry verifies uploads with sha256 or sha512"
            )),
        ));
    }
    // Only the monolithic form (`?digest=`) carries the blob; a POST that
    // starts a session (or mounts) carries none.
    let mut body = Some(body);
    if param(&q, "digest").is_none() {
        no_content(&headers, body.take()).await?;
    }
    // A mount that cannot be done falls back to an upload session; with a
    // registry token, only from a repository it grants pull on.
    let mount_allowed = |from: Option<&str>| match (&access.token, from) {
        (None, _) => true,
        (Some(claims), Some(from)) => claims.grants(from, "pull"),
        (Some(_), None) => false,
    };
    if let Some(digest) = param(&q, "mount").and_then(|m| format::parse_digest(m).ok())
        && mount_allowed(param(&q, "from"))
    {
        let from = param(&q, "from");
        if oci::mount(ferry, feed, access.principal.as_ref(), &repo, &digest, from).await? {
            return Ok(blob_created(&feed_name, &repo, &digest));
        }
    } else if let Some(d) = param(&q, "digest") {
        let digest = digest_param(d)?;
        check_length(&headers, ferry.config().max_upload_bytes)?;
        let body = body.take().unwrap_or_else(Body::empty);
        oci::upload(ferry, feed, &repo, body_stream(body), &digest).await?;
        return Ok(blob_created(&feed_name, &repo, &digest));
    }
    // A mount that fell back to a session, with `?digest=` as well.
    no_content(&headers, body.take()).await?;
    let status = oci::start_upload(ferry, &uploads, feed, access.principal.as_ref(), &repo).await?;
    Ok(empty(
        StatusCode::ACCEPTED,
        session_headers(&feed_name, &repo, &status),
    ))
}

/// Refuses a request body with content where the OCI distribution spec
/// has none (a POST that starts an upload session or mounts): 400
/// BLOB_UPLOAD_INVALID saying where the bytes go. A declared length other
/// than 0 is refused unread; a body without one is read for at most its
/// first byte.
async fn no_content(headers: &HeaderMap, body: Option<Body>) -> Result<(), Fail> {
    let refuse = || {
        Fail::code(
            ErrorCode::BlobUploadInvalid,
            CoreError::invalid(
                "a POST that starts an upload session carries no content; send the blob with PATCH or PUT \
                 to the session's Location, or in this POST with ?digest= (a monolithic upload)",
            ),
        )
    };
    let Some(body) = body else {
        return Ok(());
    };
    if let Some(len) = headers.get(header::CONTENT_LENGTH) {
        if len.as_bytes() != b"0" {
            return Err(refuse());
        }
        return Ok(());
    }
    match axum::body::to_bytes(body, 0).await {
        Ok(b) if b.is_empty() => Ok(()),
        _ => Err(refuse()),
    }
}

async fn patch(
    State(st): State<AppState>,
    access: FeedAccess,
    Extension(uploads): Extension<Arc<Uploads>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Reply {
    let (feed_name, repo, t) = target(uri.path())?;
    let Target::Upload(id) = t else {
        return Err(Fail::method_not_allowed(&method));
    };
    let result = async {
        check_length(&headers, st.ferry.config().max_upload_bytes)?;
        let range = content_range(&headers)?;
        Ok::<_, Fail>(
            oci::upload_chunk(
                &st.ferry,
                &uploads,
                &access.feed,
                &repo,
                &id,
                range,
                body_stream(body),
            )
            .await?,
        )
    }
    .await;
    match result {
        Ok(status) => Ok(empty(
            StatusCode::ACCEPTED,
            session_headers(&feed_name, &repo, &status),
        )),
        Err(fail) => Err(resumable(fail, &st, &uploads, &access, &repo, &id).await),
    }
}

async fn put(
    State(st): State<AppState>,
    access: FeedAccess,
    Extension(uploads): Extension<Arc<Uploads>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Reply {
    let ferry = &st.ferry;
    let feed = &access.feed;
    let (feed_name, repo, t) = target(uri.path())?;
    match t {
        Target::Manifest(reference) => {
            oci::check_repository(&repo)?;
            // `?tag=a&tag=b`: tags applied with the push (each checked
            // before anything is written), one `OCI-Tag` each.
            let q = query(&uri);
            let mut tags: Vec<&str> = Vec::new();
            for (_, tag) in q.iter().filter(|(k, _)| k == "tag") {
                format::validate_tag(tag)?;
                if !tags.contains(&tag.as_str()) {
                    tags.push(tag);
                }
            }
            if tags.len() > 100 {
                return Err(Fail::code(
                    ErrorCode::ManifestInvalid,
                    CoreError::invalid("at most 100 tag parameters per manifest push"),
                ));
            }
            let body = read_manifest_body(&headers, body).await?;
            let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
            let put = oci::put_manifest(ferry, feed, &repo, &reference, content_type, body.clone()).await?;
            for tag in &tags {
                let tagged = oci::put_manifest(ferry, feed, &repo, tag, content_type, body.clone()).await?;
                if tagged.digest != put.digest {
                    return Err(Fail::from(CoreError::Internal(format!(
                        "tag {tag} was written for {} instead of {}",
                        tagged.digest, put.digest
                    ))));
                }
            }
            let mut h = vec![
                (
                    header::LOCATION,
                    format!("{}/manifests/{}", base_path(&feed_name, &repo), put.named),
                ),
                (
                    HeaderName::from_static(DOCKER_CONTENT_DIGEST),
                    put.named.to_string(),
                ),
            ];
            if let Some(subject) = put.subject {
                h.push((HeaderName::from_static("oci-subject"), subject.to_string()));
            }
            let mut resp = empty(StatusCode::CREATED, h);
            for tag in tags {
                if let Ok(v) = HeaderValue::from_str(tag) {
                    resp.headers_mut().append(HeaderName::from_static("oci-tag"), v);
                }
            }
            Ok(resp)
        }
        Target::Upload(id) => {
            let result = async {
                let d = param(&query(&uri), "digest").map(str::to_owned).ok_or_else(|| {
                    Fail::code(
                        ErrorCode::DigestInvalid,
                        CoreError::invalid("closing an upload needs ?digest=sha256:… (or sha512:…)"),
                    )
                })?;
                let digest = digest_param(&d)?;
                check_length(&headers, ferry.config().max_upload_bytes)?;
                let range = content_range(&headers)?;
                oci::finish_upload(
                    ferry,
                    &uploads,
                    feed,
                    &repo,
                    &id,
                    &digest,
                    range,
                    body_stream(body),
                )
                .await?;
                Ok::<_, Fail>(digest)
            }
            .await;
            match result {
                Ok(digest) => Ok(blob_created(&feed_name, &repo, &digest)),
                Err(fail) => Err(resumable(fail, &st, &uploads, &access, &repo, &id).await),
            }
        }
        _ => Err(Fail::method_not_allowed(&method)),
    }
}

/// Reads a manifest body, refusing (413, SIZE_INVALID) one over the limit.
async fn read_manifest_body(headers: &HeaderMap, body: Body) -> Result<Bytes, Fail> {
    let limit = format::MAX_MANIFEST_BYTES;
    let too_large = || {
        Fail::code(
            ErrorCode::SizeInvalid,
            CoreError::TooLarge(format!("the manifest exceeds the limit of {limit} bytes")),
        )
    };
    if content_length(headers).is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let e = e.into_inner();
        if e.is::<http_body_util::LengthLimitError>() {
            too_large()
        } else if let Some(broken) = CoreError::from_body_error(&*e) {
            Fail::from(broken)
        } else {
            Fail::code(
                ErrorCode::ManifestInvalid,
                CoreError::invalid(format!("could not read the manifest: {e}")),
            )
        }
    })
}

async fn remove(
    State(st): State<AppState>,
    access: FeedAccess,
    Extension(uploads): Extension<Arc<Uploads>>,
    method: Method,
    uri: Uri,
) -> Reply {
    let ferry = &st.ferry;
    let feed = &access.feed;
    let (_, repo, t) = target(uri.path())?;
    match t {
        Target::Manifest(reference) => {
            oci::delete_manifest(ferry, feed, &repo, &reference).await?;
            Ok(StatusCode::ACCEPTED.into_response())
        }
        Target::Blob(d) => {
            let digest = digest_param(&d)?;
            oci::delete_blob(ferry, feed, &repo, &digest).await?;
            Ok(StatusCode::ACCEPTED.into_response())
        }
        Target::Upload(id) => {
            oci::cancel_upload(ferry, &uploads, feed, &repo, &id).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        _ => Err(Fail::method_not_allowed(&method)),
    }
}

// ---------------------------------------------------------------------------
// Management

#[derive(Deserialize)]
struct PruneQuery {
    /// Only manifests (and upload links) written longer ago than this.
    older_than_secs: Option<u64>,
}

/// Default age below which nothing is pruned: pushes in progress upload
/// child manifests and links before the tagged manifest that keeps them.
const DEFAULT_PRUNE_AGE: Duration = Duration::from_secs(3600);

async fn prune(
    State(st): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
    q: Result<Query<PruneQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::json(CoreError::invalid(e.body_text())))?;
    let name = FeedName::new(name).map_err(|e| ApiError::json(CoreError::from(e)))?;
    let feed = st.ferry.feed(&name).await.map_err(ApiError::json)?;
    let age = q.older_than_secs.map_or(DEFAULT_PRUNE_AGE, Duration::from_secs);
    let report = oci::prune_untagged(&st.ferry, &feed, age)
        .await
        .map_err(ApiError::json)?;
    Ok(Json(json!(report)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(path: &str) -> (String, String, Target) {
        target(path).unwrap_or_else(|e| panic!("{path}: {e:?}"))
    }

    fn s(v: &str) -> String {
        v.to_owned()
    }

    #[test]
    fn paths() {
        assert_eq!(
            t("/v2/f/app/blobs/uploads/"),
            (s("f"), s("app"), Target::UploadStart)
        );
        assert_eq!(
            t("/v2/f/app/blobs/uploads"),
            (s("f"), s("app"), Target::UploadStart)
        );
        assert_eq!(
            t("/v2/f/team/app/blobs/uploads/abc"),
            (s("f"), s("team/app"), Target::Upload(s("abc")))
        );
        assert_eq!(
            t("/v2/f/a/b/c/blobs/sha256:00"),
            (s("f"), s("a/b/c"), Target::Blob(s("sha256:00")))
        );
        assert_eq!(
            t("/v2/f/app/blobs/sha256%3A00"),
            (s("f"), s("app"), Target::Blob(s("sha256:00")))
        );
        assert_eq!(
            t("/v2/f/app/manifests/latest"),
            (s("f"), s("app"), Target::Manifest(s("latest")))
        );
        // A repository may be called like an endpoint.
        assert_eq!(
            t("/v2/f/x/manifests/manifests/v1"),
            (s("f"), s("x/manifests"), Target::Manifest(s("v1")))
        );
        assert_eq!(t("/v2/f/app/tags/list"), (s("f"), s("app"), Target::Tags));
        assert_eq!(
            t("/v2/f/app/referrers/sha256:00"),
            (s("f"), s("app"), Target::Referrers(s("sha256:00")))
        );
        // No repository: the name is empty (NAME_INVALID later).
        assert_eq!(
            t("/v2/f/manifests/latest"),
            (s("f"), s(""), Target::Manifest(s("latest")))
        );
        assert!(target("/v2/f/app").is_err());
        assert!(target("/v2/f/app/tags").is_err());
    }

    #[test]
    fn token_scopes() {
        let get = Method::GET;
        assert_eq!(
            scope_of("/v2/f/team/app/manifests/v1", &get),
            Some((s("team/app"), false))
        );
        assert_eq!(
            scope_of("/v2/f/app/blobs/sha256:00", &Method::HEAD),
            Some((s("app"), false))
        );
        assert_eq!(
            scope_of("/v2/f/app/manifests/v1", &Method::PUT),
            Some((s("app"), true))
        );
        assert_eq!(
            scope_of("/v2/f/app/blobs/uploads/", &Method::POST),
            Some((s("app"), true))
        );
        // Reading an upload session's status is part of a push.
        assert_eq!(
            scope_of("/v2/f/app/blobs/uploads/abc", &get),
            Some((s("app"), true))
        );
        assert_eq!(scope_of("/v2/f/app", &get), None);
    }

    #[test]
    fn queries() {
        let uri: Uri = "/x?mount=sha256%3Aab&from=f/app&n=&last=a+b"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        let q = query(&uri);
        assert_eq!(param(&q, "mount"), Some("sha256:ab"));
        assert_eq!(param(&q, "from"), Some("f/app"));
        assert_eq!(param(&q, "last"), Some("a b"));
        assert_eq!(page_size(&q).ok(), Some(None));
        assert_eq!(param(&q, "digest"), None);
    }
}
