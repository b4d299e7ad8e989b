//! Debian feeds, `/debian/FEED/`: an apt repository
//! (`deb [signed-by=KEYRING] http://HOST:PORT/debian/FEED DIST COMPONENT`).
//!
//! | route | what |
//! | --- | --- |
//! | `PUT /debian/FEED/upload/DIST/COMPONENT` | upload a `.deb` (the body); 201 with name, version, architecture, pool path |
//! | `POST /debian/FEED/upload/DIST/COMPONENT` | upload many `.deb`s at once (`multipart/form-data`, one file part each: `curl -F deb=@a.deb -F deb=@b.deb`); all or nothing; 201 with one such object per part |
//! | `DELETE /debian/FEED/package/DIST/COMPONENT/NAME/VERSION/ARCH` | delete one package version; 204 |
//! | `GET /debian/FEED/dists/DIST/{Release,InRelease,Release.gpg}` | the signed release files |
//! | `GET /debian/FEED/dists/DIST/COMPONENT/binary-ARCH/Packages[.gz,.xz]` | indexes |
//! | `GET /debian/FEED/dists/DIST/COMPONENT/binary-ARCH/by-hash/SHA256/HEX` | current and recent indexes by hash |
//! | `GET /debian/FEED/pool/...` | the `.deb`s (Range, ETag) |
//! | `GET /debian/FEED/key.asc`, `key.gpg` | the feed's public signing key, armored and binary |
//!
//! Rendering and signing happen in `ferry_core::debian`; uploads stream
//! into the blob store's staging and are inspected off the async threads.

use axum::Router;
use axum::body::Body;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, Path, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, put};
use bytes::BytesMut;
use ferry_core::{CoreError, debian};
use ferry_store::StagedBlob;
use futures::TryStreamExt;
use serde_json::json;

use crate::AppState;
use crate::access::FeedAccess;
use crate::blobs::serve_download;
use crate::error::ApiError;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/debian/{feed}/upload/{dist}/{component}",
            put(upload).post(upload_many),
        )
        .route(
            "/debian/{feed}/package/{dist}/{component}/{name}/{version}/{arch}",
            delete(delete_package),
        )
        .route("/debian/{feed}/dists/{dist}/{*path}", get(dist_file))
        .route("/debian/{feed}/pool/{*path}", get(pool_file))
        .route("/debian/{feed}/key.asc", get(key_asc))
        .route("/debian/{feed}/key.gpg", get(key_gpg))
}

async fn upload(
    State(st): State<AppState>,
    access: FeedAccess,
    Path((_, dist, component)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // Hopeless uploads are refused before their body is read.
    ferry_formats::debian::check_dist(&dist).map_err(CoreError::from)?;
    ferry_formats::debian::check_component(&component).map_err(CoreError::from)?;
    let limit = st.ferry.config().max_upload_bytes;
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && len > limit
    {
        return Err(CoreError::TooLarge(format!(
            "upload of {len} bytes exceeds the limit of {limit} bytes"
        ))
        .into());
    }
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let staged = st.ferry.stage(Box::pin(stream), None).await?;
    let meta = debian::upload(&st.ferry, &access.feed, &dist, &component, staged).await?;
    Ok((StatusCode::CREATED, axum::Json(meta_json(&meta))).into_response())
}

fn meta_json(meta: &debian::Meta) -> serde_json::Value {
    json!({
        "package": meta.package,
        "version": meta.version,
        "architecture": meta.architecture,
        "distribution": meta.distribution,
        "component": meta.component,
        "filename": meta.filename,
        "size": meta.size,
        "sha256": meta.sha256,
    })
}

/// Parts up to this size are read whole and then staged concurrently (so
/// their fsyncs overlap); larger ones stream into staging one at a time.
const BUFFERED_PART: usize = 1 << 20;
/// How many buffered parts are staged and inspected at once.
const STAGING_CONCURRENCY: usize = 32;
/// Most `.deb`s one bulk upload may carry.
const MAX_PARTS: usize = 10_000;

type Inspected = Result<(StagedBlob, ferry_formats::debian::DebInfo), CoreError>;

/// A part being staged, or already staged.
enum Slot {
    Ready(Box<Inspected>),
    Running(tokio::task::JoinHandle<Inspected>),
}

impl Slot {
    async fn result(self) -> Inspected {
        match self {
            Slot::Ready(r) => *r,
            Slot::Running(h) => h
                .await
                .map_err(|e| CoreError::Internal(format!("staging an upload failed: {e}")))?,
        }
    }
}

/// A bulk upload: every file part of a `multipart/form-data` body is a
/// `.deb` for `DIST`/`COMPONENT`. Each is staged and inspected, then all
/// are published at once ([`debian::publish`]): one invalid or conflicting
/// file refuses the whole upload, and nothing is stored.
async fn upload_many(
    State(st): State<AppState>,
    access: FeedAccess,
    Path((_, dist, component)): Path<(String, String, String)>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    ferry_formats::debian::check_dist(&dist).map_err(CoreError::from)?;
    ferry_formats::debian::check_component(&component).map_err(CoreError::from)?;
    let mut multipart = multipart.map_err(|e| {
        CoreError::invalid(format!(
            "expected multipart/form-data with one .deb per file part (curl -F deb=@FILE ...): {}",
            e.body_text()
        ))
    })?;
    let mut slots: Vec<Slot> = Vec::new();
    let mut running = std::collections::VecDeque::new();
    while let Some(mut field) = multipart.next_field().await.map_err(crate::pypi::bad_multipart)? {
        if field.file_name().is_none() {
            continue;
        }
        if slots.len() == MAX_PARTS {
            return Err(
                CoreError::invalid(format!("a bulk upload carries at most {MAX_PARTS} files")).into(),
            );
        }
        let mut head = BytesMut::new();
        let mut over = None;
        while let Some(chunk) = field.chunk().await.map_err(crate::pypi::bad_multipart)? {
            if head.len() + chunk.len() > BUFFERED_PART {
                over = Some(chunk);
                break;
            }
            head.extend_from_slice(&chunk);
        }
        let ferry = st.ferry.clone();
        match over {
            Some(chunk) => {
                let staged =
                    crate::pypi::stage_field_after(&st.ferry, vec![head.freeze(), chunk], &mut field).await?;
                let info = debian::inspect(&st.ferry, &staged).await;
                slots.push(Slot::Ready(Box::new(info.map(|i| (staged, i)))));
            }
            None => {
                // At most STAGING_CONCURRENCY in flight: wait for the oldest.
                if running.len() >= STAGING_CONCURRENCY
                    && let Some(i) = running.pop_front()
                {
                    let slot = std::mem::replace(
                        &mut slots[i],
                        Slot::Ready(Box::new(Err(CoreError::Internal(String::new())))),
                    );
                    slots[i] = Slot::Ready(Box::new(slot.result().await));
                }
                running.push_back(slots.len());
                slots.push(Slot::Running(tokio::spawn(async move {
                    let staged = ferry.stage_bytes(head.freeze()).await?;
                    let info = debian::inspect(&ferry, &staged).await?;
                    Ok((staged, info))
                })));
            }
        }
    }
    if slots.is_empty() {
        return Err(CoreError::invalid("the upload has no file parts (curl -F deb=@FILE ...)").into());
    }
    let mut uploads = Vec::with_capacity(slots.len());
    for slot in slots {
        uploads.push(slot.result().await?);
    }
    let metas = debian::publish(&st.ferry, &access.feed, &dist, &component, uploads).await?;
    let body: Vec<serde_json::Value> = metas.iter().map(meta_json).collect();
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

async fn delete_package(
    State(st): State<AppState>,
    access: FeedAccess,
    Path((_, dist, component, name, version, arch)): Path<(String, String, String, String, String, String)>,
) -> Result<StatusCode, ApiError> {
    debian::delete(&st.ferry, &access.feed, &dist, &component, &name, &version, &arch).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn dist_file(
    State(st): State<AppState>,
    access: FeedAccess,
    Path((_, dist, path)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let body = debian::dist_file(&st.ferry, &access.feed, &dist, &path).await?;
    let content_type = if path.ends_with(".gz") {
        "application/gzip"
    } else if path.ends_with(".xz") {
        "application/x-xz"
    } else if path.contains("/by-hash/") {
        "application/octet-stream"
    } else {
        "text/plain; charset=utf-8"
    };
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            // Indexes change with every publish; by-hash files never do.
            (
                header::CACHE_CONTROL,
                if path.contains("/by-hash/") {
                    "max-age=86400"
                } else {
                    "no-cache"
                },
            ),
        ],
        body,
    )
        .into_response())
}

async fn pool_file(
    State(st): State<AppState>,
    access: FeedAccess,
    Path((_, path)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let digest = debian::pool_file(&st.ferry, &access.feed, &path).await?;
    let filename = path.rsplit('/').next();
    Ok(serve_download(
        &st.ferry,
        &method,
        &headers,
        &digest,
        "application/vnd.debian.binary-package",
        None,
        filename,
    )
    .await?)
}

async fn key_asc(State(st): State<AppState>, access: FeedAccess) -> Result<Response, ApiError> {
    let key = st.ferry.signing_key(&access.feed).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/pgp-keys")],
        key.public_armored()?,
    )
        .into_response())
}

async fn key_gpg(State(st): State<AppState>, access: FeedAccess) -> Result<Response, ApiError> {
    let key = st.ferry.signing_key(&access.feed).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        key.public_binary()?,
    )
        .into_response())
}
