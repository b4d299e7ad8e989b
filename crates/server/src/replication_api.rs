//! The replication API v1 (`/api/replication/v1`), served to peers holding
//! a sync token of one of this instance's incoming replications. The
//! replication's mode decides what the peer may read and write
//! (`ferry_replication::incoming`).

use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Query, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use ferry_core::CoreError;
use ferry_replication::incoming::{Flow, Session};
use ferry_replication::protocol::*;
use ferry_types::{Digest, ItemKey};
use futures::TryStreamExt;
use serde::Deserialize;

use crate::AppState;
use crate::access::presented_secret;
use crate::error::ApiError;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/replication/v1/handshake", post(handshake))
        .route("/api/replication/v1/feeds/{feed}/changes", get(changes))
        .route(
            "/api/replication/v1/feeds/{feed}/entries",
            get(entries).post(lookup),
        )
        .route("/api/replication/v1/feeds/{feed}/digest", get(digest))
        .route("/api/replication/v1/feeds/{feed}/stamps", post(stamps))
        .route("/api/replication/v1/feeds/{feed}/apply", post(apply))
        .route("/api/replication/v1/blobs/missing", post(missing))
        .route("/api/replication/v1/blobs/batch", post(blob_batch))
        // JSON bodies are read whole, so they are capped at 16 MiB (one
        // that declares more is refused at once): an `apply` page is split
        // by the pushing side to stay well below it.
        .layer(crate::edge::BodyCap { limit: MAX_JSON_BODY })
        // Blob bodies stream and are not held to it.
        .route("/api/replication/v1/blobs/upload", post(upload_batch))
        .route(
            "/api/replication/v1/blobs/{digest}",
            get(get_blob).head(get_blob).merge(put(put_blob)),
        )
}

/// The most a JSON body of the replication API may be (bytes).
const MAX_JSON_BODY: usize = 16 << 20;

fn err(e: impl Into<CoreError>) -> ApiError {
    ApiError::json(e.into())
}

fn repl(e: ferry_replication::ReplError) -> ApiError {
    ApiError::json(CoreError::from(e))
}

/// A peer authenticated by its sync token.
pub struct Peer(Session);

impl FromRequestParts<AppState> for Peer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Self::Rejection> {
        let token = presented_secret(&parts.headers)
            .map_err(err)?
            .ok_or_else(|| err(CoreError::Unauthorized("a sync token is required".into())))?;
        use ferry_replication::protocol::{INSTANCE_HEADER, PROCESS_HEADER};
        for (header, what) in [(INSTANCE_HEADER, "an instance"), (PROCESS_HEADER, "a process")] {
            if parts.headers.get_all(header).iter().nth(1).is_some() {
                return Err(err(CoreError::invalid(format!(
                    "the {header} header is given more than once: {what} has one id"
                ))));
            }
        }
        // Not text: refused as naming no id.
        let named = |header| {
            parts
                .headers
                .get(header)
                .map(|v| v.to_str().unwrap_or("(not text)"))
        };
        let caller = ferry_replication::incoming::Caller {
            instance: named(INSTANCE_HEADER),
            process: named(PROCESS_HEADER),
            address: crate::client_addr(&parts.extensions).map(|a| a.ip().to_string()),
            handshake: parts.uri.path().ends_with("/handshake"),
        };
        st.replicator
            .session(&token, caller)
            .await
            .map(Peer)
            .map_err(repl)
    }
}

/// An error answered to the peer of `s`: noted in the hub's view of its
/// peers, then mapped like any.
fn failed(
    st: &AppState,
    s: &ferry_replication::incoming::Session,
    e: ferry_replication::ReplError,
) -> ApiError {
    st.replicator.peer_error(s, &e);
    repl(e)
}

type JsonResult<T> = Result<Json<T>, ApiError>;

fn json_body<T>(body: Result<Json<T>, axum::extract::rejection::JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(b)| b)
        .map_err(|e| err(crate::error::json_rejection(&e)))
}

/// Query parameters, or a 400 in the API's JSON error shape saying which
/// one is wrong (not the parser's answer as plain text).
fn query_params<T>(q: Result<Query<T>, axum::extract::rejection::QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q).map_err(|e| {
        let why = e.body_text();
        let why = why
            .strip_prefix("Failed to deserialize query string: ")
            .unwrap_or(&why);
        err(CoreError::invalid(format!("bad query string: {why}")))
    })
}

async fn handshake(
    State(st): State<AppState>,
    Peer(s): Peer,
    body: Result<Json<HandshakeRequest>, axum::extract::rejection::JsonRejection>,
) -> JsonResult<HandshakeResponse> {
    Ok(Json(
        st.replicator
            .handshake(&s, json_body(body)?)
            .await
            .map_err(|e| failed(&st, &s, e))?,
    ))
}

async fn changes(
    State(st): State<AppState>,
    Peer(s): Peer,
    Path(feed): Path<String>,
    q: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> JsonResult<ChangesPage> {
    let q = query_params(q)?;
    Ok(Json(
        st.replicator
            .changes(&s, &feed, q)
            .await
            .map_err(|e| failed(&st, &s, e))?,
    ))
}

fn default_limit() -> usize {
    500
}

#[derive(Deserialize)]
struct EntriesQuery {
    after: Option<String>,
    #[serde(default = "default_limit")]
    limit: usize,
    #[serde(default)]
    blob_sizes: bool,
}

async fn entries(
    State(st): State<AppState>,
    Peer(s): Peer,
    Path(feed): Path<String>,
    q: Result<Query<EntriesQuery>, axum::extract::rejection::QueryRejection>,
) -> JsonResult<EntriesPage> {
    let q = query_params(q)?;
    let after = q
        .after
        .map(ItemKey::new)
        .transpose()
        .map_err(|e| err(CoreError::from(e)))?;
    Ok(Json(
        st.replicator
            .entries(&s, &feed, after, q.limit, q.blob_sizes)
            .await
            .map_err(|e| failed(&st, &s, e))?,
    ))
}

async fn lookup(
    State(st): State<AppState>,
    Peer(s): Peer,
    Path(feed): Path<String>,
    body: Result<Json<KeyList>, axum::extract::rejection::JsonRejection>,
) -> JsonResult<EntriesPage> {
    let asked = json_body(body)?;
    let entries = st
        .replicator
        .lookup(&s, &feed, asked.keys)
        .await
        .map_err(|e| failed(&st, &s, e))?;
    let sizes = if asked.blob_sizes {
        st.replicator
            .sizes_of(&entries)
            .await
            .map_err(|e| failed(&st, &s, e))?
    } else {
        Default::default()
    };
    Ok(Json(EntriesPage {
        entries,
        next_after: None,
        sizes,
    }))
}

async fn digest(
    State(st): State<AppState>,
    Peer(s): Peer,
    Path(feed): Path<String>,
    RawQuery(q): RawQuery,
) -> JsonResult<FeedDigest> {
    // Repeated `include=`/`exclude=` parameters.
    let (mut include, mut exclude) = (Vec::new(), Vec::new());
    for (k, v) in url_pairs(q.as_deref().unwrap_or("")) {
        match k.as_str() {
            "include" => include.push(v),
            "exclude" => exclude.push(v),
            _ => {}
        }
    }
    Ok(Json(
        st.replicator
            .feed_digest_for(&s, &feed, &include, &exclude)
            .await
            .map_err(|e| failed(&st, &s, e))?,
    ))
}

fn url_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (dec(k), dec(v))
        })
        .collect()
}

async fn stamps(
    State(st): State<AppState>,
    Peer(s): Peer,
    Path(feed): Path<String>,
    body: Result<Json<KeyList>, axum::extract::rejection::JsonRejection>,
) -> JsonResult<StampList> {
    Ok(Json(
        st.replicator
            .stamps(&s, &feed, json_body(body)?.keys)
            .await
            .map_err(|e| failed(&st, &s, e))?,
    ))
}

async fn apply(
    State(st): State<AppState>,
    Peer(s): Peer,
    Path(feed): Path<String>,
    body: Result<Json<ApplyRequest>, axum::extract::rejection::JsonRejection>,
) -> JsonResult<ApplyResponse> {
    Ok(Json(
        st.replicator
            .apply_pushed(&s, &feed, json_body(body)?.entries)
            .await
            .map_err(|e| failed(&st, &s, e))?,
    ))
}

async fn missing(
    State(st): State<AppState>,
    Peer(s): Peer,
    body: Result<Json<DigestList>, axum::extract::rejection::JsonRejection>,
) -> JsonResult<DigestList> {
    let answer = st
        .replicator
        .missing_blobs(&s, json_body(body)?.digests)
        .await
        .map_err(|e| failed(&st, &s, e))?;
    Ok(Json(answer))
}

fn parse_digest(s: &str) -> Result<Digest, ApiError> {
    s.parse::<Digest>().map_err(|e| err(CoreError::from(e)))
}

async fn get_blob(
    State(st): State<AppState>,
    Peer(s): Peer,
    Path(digest): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let d = parse_digest(&digest)?;
    st.replicator
        .may_read_blob(&s, &d)
        .await
        .map_err(|e| failed(&st, &s, e))?;
    // Counted among the token's transfers until the body is sent or given
    // up (a HEAD sends none).
    let slot = if method == Method::HEAD {
        None
    } else {
        Some(st.replicator.transfer_slot(&s).map_err(|e| failed(&st, &s, e))?)
    };
    let resp = crate::blobs::serve_blob(&st.ferry, &method, &headers, &d, "application/octet-stream", None)
        .await
        .map_err(err)?;
    if resp.status() == axum::http::StatusCode::RANGE_NOT_SATISFIABLE {
        // In the API's JSON error shape, with the blob's size as RFC 9110
        // §14.4 says (`Content-Range: bytes */SIZE`).
        let range = resp.headers().get(axum::http::header::CONTENT_RANGE).cloned();
        let size = range
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("bytes */"))
            .unwrap_or("?")
            .to_owned();
        let mut out = (
            axum::http::StatusCode::RANGE_NOT_SATISFIABLE,
            Json(serde_json::json!({
                "error": format!(
                    "the range asked for ({}) cannot be served from blob {d} ({size} bytes): it begins past the end or is not one valid byte range",
                    headers
                        .get(axum::http::header::RANGE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("?")
                        .chars()
                        .take(100)
                        .collect::<String>()
                )
            })),
        )
            .into_response();
        if let Some(v) = range {
            out.headers_mut().insert(axum::http::header::CONTENT_RANGE, v);
        }
        return Ok(out);
    }
    // Cut at once if the peer's token is revoked while the blob is sent.
    Ok(resp.map(|body| {
        let bytes = body
            .into_data_stream()
            .map_err(std::io::Error::other)
            .map_ok(move |c| {
                let _held = &slot;
                c
            });
        Body::from_stream(st.replicator.guard_body(&s, bytes, Flow::Sent))
    }))
}

/// `POST blobs/batch`: many blobs in one streamed answer (frames, see
/// `ferry_replication::batch`).
async fn blob_batch(
    State(st): State<AppState>,
    Peer(s): Peer,
    body: Result<Json<ferry_replication::batch::BatchRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let stream = st
        .replicator
        .blob_batch(&s, json_body(body)?)
        .await
        .map_err(|e| failed(&st, &s, e))?;
    Response::builder()
        .header("content-type", "application/vnd.ferry.blob-batch")
        .body(Body::from_stream(stream))
        .map_err(|e| err(CoreError::Internal(e.to_string())))
}

/// `POST blobs/upload`: many blobs pushed in one streamed body (frames).
async fn upload_batch(
    State(st): State<AppState>,
    Peer(s): Peer,
    body: Body,
) -> JsonResult<ferry_replication::batch::UploadResponse> {
    // Cut at once if the peer's token is revoked while the upload runs.
    let stream = st.replicator.guard_body(
        &s,
        body.into_data_stream().map_err(std::io::Error::other),
        Flow::Received,
    );
    match st.replicator.receive_batch(&s, stream).await {
        Ok(r) => Ok(Json(r)),
        Err(e) => Err(failed(&st, &s, cut_reason(&st, &s, e).await)),
    }
}

async fn put_blob(
    State(st): State<AppState>,
    Peer(s): Peer,
    Path(digest): Path<String>,
    body: Body,
) -> Result<(), ApiError> {
    let d = parse_digest(&digest)?;
    let stream = st.replicator.guard_body(
        &s,
        body.into_data_stream().map_err(std::io::Error::other),
        Flow::Received,
    );
    match st.replicator.receive_blob(&s, &d, stream).await {
        Ok(()) => Ok(()),
        Err(e) => Err(failed(&st, &s, cut_reason(&st, &s, e).await)),
    }
}

/// Why an upload failed: the revocation of its token when that is what
/// cut its body (see `Replicator::guard_body`), else `e` itself.
async fn cut_reason(
    st: &AppState,
    s: &Session,
    e: ferry_replication::ReplError,
) -> ferry_replication::ReplError {
    match st.replicator.session_still_holds(s).await {
        Err(revoked) => revoked,
        Ok(()) => e,
    }
}
