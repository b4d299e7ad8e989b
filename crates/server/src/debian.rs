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
//! | `GET /debian/FEED/dists/DIST/COMPONENT/binary-ARCH/by-hash/{SHA256,SHA512}/HEX` | current and recent indexes by hash |
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
use ferry_core::{CoreError, debian};
use ferry_store::StagedBlob;
use futures::TryStreamExt;
use serde_json::json;

use crate::AppState;
use crate::access::FeedAccess;
use crate::blobs::{index_file_response, serve_download};
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
    crate::bulk::refuse_multipart_put(&headers, "deb")?;
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

/// How debian feeds read a bulk upload's packages (their control files).
#[derive(Clone)]
struct ControlFiles;

impl crate::bulk::Inspect for ControlFiles {
    type Info = ferry_formats::debian::DebInfo;
    fn memory(&self, ferry: &ferry_core::Ferry, bytes: &bytes::Bytes) -> Result<Self::Info, CoreError> {
        debian::inspect_memory(ferry, bytes)
    }
    async fn staged(
        &self,
        ferry: ferry_core::Ferry,
        staged: StagedBlob,
    ) -> Result<(StagedBlob, Self::Info), CoreError> {
        let info = debian::inspect(&ferry, &staged).await?;
        Ok((staged, info))
    }
}

/// A bulk upload: every part of a `multipart/form-data` body is a
/// `.deb` for `DIST`/`COMPONENT`, read and inspected
/// ([`crate::bulk::read_parts`]), then all are published at once
/// ([`debian::publish`]): one invalid or conflicting file refuses the
/// whole upload with its part named (`part N (FILE)`), and nothing is
/// stored.
async fn upload_many(
    State(st): State<AppState>,
    access: FeedAccess,
    Path((_, dist, component)): Path<(String, String, String)>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    ferry_formats::debian::check_dist(&dist).map_err(CoreError::from)?;
    ferry_formats::debian::check_component(&component).map_err(CoreError::from)?;
    let (uploads, _held) = crate::bulk::read_parts(
        &st.ferry,
        multipart,
        "one .deb per file part (curl -F deb=@FILE ...)",
        ControlFiles,
    )
    .await?;
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
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (body, modified) = debian::dist_file(&st.ferry, &access.feed, &dist, &path).await?;
    let content_type = if path.ends_with(".gz") {
        "application/gzip"
    } else if path.ends_with(".xz") {
        "application/x-xz"
    } else if path.contains("/by-hash/") {
        "application/octet-stream"
    } else {
        "text/plain; charset=utf-8"
    };
    // Indexes change with every publish (revalidated: ETag, Last-Modified);
    // by-hash files never do.
    Ok(index_file_response(
        &method,
        &headers,
        access.feed.private,
        body,
        content_type,
        modified,
        path.contains("/by-hash/"),
    ))
}

async fn pool_file(
    State(st): State<AppState>,
    access: FeedAccess,
    Path((_, path)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (digest, modified) = debian::pool_file(&st.ferry, &access.feed, &path).await?;
    let filename = path.rsplit('/').next();
    Ok(serve_download(
        &st.ferry,
        &method,
        &headers,
        &digest,
        "application/vnd.debian.binary-package",
        Some(modified),
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
