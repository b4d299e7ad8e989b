//! `/cargo/FEED/`: a private sparse registry for cargo (The Cargo Book,
//! "Registries", "Registry Index", "Registry Web API"). Configure it as
//! `index = "sparse+http://HOST:PORT/cargo/FEED/"`.
//!
//! | method | path | what |
//! | --- | --- | --- |
//! | GET | `config.json` | `dl`, `api`, and `auth-required: true` on private feeds |
//! | GET | `1/a`, `2/ab`, `3/a/abc`, `ab/cd/abcd…` | index file: one JSON line per version (ETag, Last-Modified, 304) |
//! | PUT | `api/v1/crates/new` | publish (length-prefixed JSON + `.crate`) |
//! | DELETE | `api/v1/crates/{name}/{version}/yank` | yank |
//! | PUT | `api/v1/crates/{name}/{version}/unyank` | unyank |
//! | GET | `api/v1/crates/{name}/owners` | who may publish: the feed's write keys (to an admin key), else a stand-in naming the feed |
//! | GET | `api/v1/crates?q=&per_page=` | search |
//! | GET, HEAD | `api/v1/crates/{name}/{version}/download` | the `.crate` (the `dl` URL; Range, ETag); counts downloads |
//! | DELETE | `api/v1/crates/{name}/{version}` | delete a version (Ferry's own: cargo has no such command) |
//!
//! Errors are cargo's `{"errors":[{"detail":"..."}]}` with a 4xx/5xx status,
//! which cargo prints. cargo sends its token as the bare `Authorization`
//! value; Bearer and basic work too ([`crate::access::presented_secret`]).
//! Changing owners is not supported: publishing is a matter of API keys.

use std::time::{Duration, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, put};
use ferry_core::CoreError;
use ferry_core::cargo::{self, IndexFile};
use ferry_formats::cargo::parse_index_path;
use ferry_store::{ByteStream, FeedRecord};
use futures::TryStreamExt as _;
use serde::Deserialize;
use serde_json::json;

use crate::AppState;
use crate::access::FeedAccess;
use crate::blobs::{if_none_match, serve_download};
use crate::error::{ApiError, Flavor};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/cargo/{feed}/config.json", get(config))
        .route("/cargo/{feed}/api/v1/crates", get(search))
        .route("/cargo/{feed}/api/v1/crates/new", put(publish))
        .route(
            "/cargo/{feed}/api/v1/crates/{name}/owners",
            get(owners).put(change_owners).delete(change_owners),
        )
        .route(
            "/cargo/{feed}/api/v1/crates/{name}/{version}/download",
            get(download),
        )
        .route(
            "/cargo/{feed}/api/v1/crates/{name}/{version}",
            delete(delete_version),
        )
        .route("/cargo/{feed}/api/v1/crates/{name}/{version}/yank", delete(yank))
        .route("/cargo/{feed}/api/v1/crates/{name}/{version}/unyank", put(unyank))
        .route("/cargo/{feed}/{*path}", get(index_file))
}

fn err(e: impl Into<CoreError>) -> ApiError {
    ApiError {
        error: e.into(),
        flavor: Flavor::Cargo,
    }
}

fn cache_control(feed: &FeedRecord) -> HeaderValue {
    HeaderValue::from_static(if feed.private {
        "private, no-cache"
    } else {
        "no-cache"
    })
}

/// The index root as clients reach it: `{origin}/cargo/{feed}`.
fn index_root(st: &AppState, headers: &HeaderMap, uri: &Uri, feed: &FeedRecord) -> Result<String, CoreError> {
    let origin = crate::public_origin(&st.ferry, headers, uri.authority().map(|a| a.as_str()))?;
    Ok(format!("{origin}/cargo/{}", feed.name))
}

async fn config(
    State(st): State<AppState>,
    access: FeedAccess,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let root = index_root(&st, &headers, &uri, &access.feed).map_err(err)?;
    let body = cargo::config(&root, access.feed.private);
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("application/json")),
            (header::CACHE_CONTROL, cache_control(&access.feed)),
        ],
        body,
    )
        .into_response())
}

async fn index_file(
    State(st): State<AppState>,
    access: FeedAccess,
    Path((_, path)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some(lower) = parse_index_path(&path) else {
        return Err(err(CoreError::not_found(format!(
            "{path} is not an index file of this registry"
        ))));
    };
    let file = cargo::index_file(&st.ferry, &access.feed, &lower)
        .await
        .map_err(err)?;
    Ok(index_response(&headers, &access.feed, file))
}

/// Whether the client's copy is current: `If-None-Match` names the ETag,
/// or (without `If-None-Match`) `If-Modified-Since` is not before the last
/// change (RFC 9110 §13.1.3, at the second). `Last-Modified` is the newest
/// change of a live version, so deleting the newest version moves it back:
/// the ETag (a hash of the file, which cargo revalidates with) is exact.
fn not_modified(headers: &HeaderMap, file: &IndexFile) -> bool {
    if headers.contains_key(header::IF_NONE_MATCH) {
        return if_none_match(headers, &file.etag);
    }
    let Some(since) = headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v.trim()).ok())
    else {
        return false;
    };
    let since_s = since.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    (file.modified.max(0) as u64) / 1000 <= since_s
}

fn index_response(headers: &HeaderMap, feed: &FeedRecord, file: IndexFile) -> Response {
    let modified = UNIX_EPOCH + Duration::from_millis(file.modified.max(0) as u64);
    let fresh = not_modified(headers, &file);
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = file.body.into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&file.etag) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(modified)) {
        h.insert(header::LAST_MODIFIED, v);
    }
    h.insert(header::CACHE_CONTROL, cache_control(feed));
    resp
}

async fn publish(State(st): State<AppState>, access: FeedAccess, body: Body) -> Result<Response, ApiError> {
    let body: ByteStream = Box::pin(body.into_data_stream().map_err(std::io::Error::other));
    cargo::publish(&st.ferry, &access.feed, body).await.map_err(err)?;
    Ok(axum::Json(json!({
        "warnings": { "invalid_categories": [], "invalid_badges": [], "other": [] }
    }))
    .into_response())
}

async fn yank(
    State(st): State<AppState>,
    access: FeedAccess,
    Path((_, name, version)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    cargo::set_yanked(&st.ferry, &access.feed, &name, &version, true)
        .await
        .map_err(err)?;
    Ok(axum::Json(json!({ "ok": true })).into_response())
}

async fn unyank(
    State(st): State<AppState>,
    access: FeedAccess,
    Path((_, name, version)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    cargo::set_yanked(&st.ferry, &access.feed, &name, &version, false)
        .await
        .map_err(err)?;
    Ok(axum::Json(json!({ "ok": true })).into_response())
}

async fn delete_version(
    State(st): State<AppState>,
    access: FeedAccess,
    Path((_, name, version)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    cargo::delete_version(&st.ferry, &access.feed, &name, &version)
        .await
        .map_err(err)?;
    Ok(axum::Json(json!({ "ok": true })).into_response())
}

async fn owners(
    State(st): State<AppState>,
    access: FeedAccess,
    Path((_, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let users = cargo::owners(&st.ferry, &access.feed, &name, access.principal.as_ref())
        .await
        .map_err(err)?;
    Ok(axum::Json(json!({ "users": users })).into_response())
}

async fn change_owners(_access: FeedAccess) -> ApiError {
    err(CoreError::invalid(
        "owners are not managed per crate here: API keys with write permission on the feed may publish \
         (manage them with `ferry key`)",
    ))
}

#[derive(Deserialize)]
struct SearchParams {
    #[serde(default)]
    q: String,
    #[serde(default)]
    per_page: Option<String>,
}

async fn search(
    State(st): State<AppState>,
    access: FeedAccess,
    query: Result<Query<SearchParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(p) = query.map_err(|e| err(CoreError::invalid(e.body_text())))?;
    let per_page = match p.per_page.as_deref() {
        None | Some("") => 10,
        Some(n) => n
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=cargo::MAX_PER_PAGE).contains(n))
            .ok_or_else(|| {
                err(CoreError::invalid(format!(
                    "per_page must be a number from 1 to {}",
                    cargo::MAX_PER_PAGE
                )))
            })?,
    };
    let (crates, total) = cargo::search(&st.ferry, &access.feed, &p.q, per_page)
        .await
        .map_err(err)?;
    Ok(axum::Json(json!({ "crates": crates, "meta": { "total": total } })).into_response())
}

async fn download(
    State(st): State<AppState>,
    access: FeedAccess,
    Path((_, name, version)): Path<(String, String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let v = cargo::version(&st.ferry, &access.feed, &name, &version)
        .await
        .map_err(err)?;
    let filename = format!("{}-{}.crate", v.item.index.name, v.item.index.vers);
    let resp = serve_download(
        &st.ferry,
        &method,
        &headers,
        &v.digest,
        "application/x-tar",
        Some(v.modified),
        Some(&filename),
    )
    .await
    .map_err(err)?;
    if method == Method::GET && resp.status() == StatusCode::OK {
        st.ferry.count_download(&access.feed, &v.key);
    }
    Ok(resp)
}
