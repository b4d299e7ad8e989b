//! RPM feeds, `/rpm/FEED/`: a dnf/yum repository
//! (`baseurl=http://HOST:PORT/rpm/FEED/`).
//!
//! | route | what |
//! | --- | --- |
//! | `PUT /rpm/FEED/upload` | upload an `.rpm` (the body, `curl -T`); 201 with name, epoch, version, release, arch, location |
//! | `POST /rpm/FEED/upload` | upload many `.rpm`s at once (`multipart/form-data`, one file part each: `curl -F rpm=@a.rpm -F rpm=@b.rpm`); all or nothing, a refusal names its part; 201 with one such object per part |
//! | `DELETE /rpm/FEED/package/NAME/EVR/ARCH` | delete one package (`EVR` is `[EPOCH:]VERSION-RELEASE`); 204 |
//! | `GET /rpm/FEED/repodata/repomd.xml`, `repomd.xml.asc` | the repository index and its detached signature |
//! | `GET /rpm/FEED/repodata/HEX-{primary,filelists,other}.xml.gz` | repodata of the current and recent renderings |
//! | `GET /rpm/FEED/packages/NAME/EPOCH/NAME-VERSION-RELEASE.ARCH.rpm` | the packages (Range, ETag) |
//! | `GET /rpm/FEED/key.asc` | the feed's public signing key, armored |
//! | `GET /rpm/FEED/config.repo` | a `.repo` file for `dnf config-manager --add-repo` |
//!
//! Rendering and signing happen in `ferry_core::rpm`; uploads stream into
//! the blob store's staging and are inspected off the async threads.

use axum::Router;
use axum::body::Body;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, put};
use ferry_core::{CoreError, rpm};
use futures::TryStreamExt;
use serde_json::json;

use crate::AppState;
use crate::access::FeedAccess;
use crate::blobs::{index_file_response, serve_download};
use crate::error::ApiError;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/rpm/{feed}/upload", put(upload).post(upload_many))
        .route("/rpm/{feed}/package/{name}/{evr}/{arch}", delete(delete_package))
        .route("/rpm/{feed}/repodata/{file}", get(repodata_file))
        .route("/rpm/{feed}/packages/{*path}", get(package_file))
        .route("/rpm/{feed}/key.asc", get(key_asc))
        .route("/rpm/{feed}/config.repo", get(config_repo))
}

async fn upload(
    State(st): State<AppState>,
    access: FeedAccess,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    crate::bulk::refuse_multipart_put(&headers, "rpm")?;
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
    let meta = rpm::upload(&st.ferry, &access.feed, staged).await?;
    Ok((StatusCode::CREATED, axum::Json(meta_json(&meta))).into_response())
}

fn meta_json(meta: &rpm::Meta) -> serde_json::Value {
    let i = &meta.info;
    json!({
        "name": i.name,
        "epoch": i.epoch,
        "version": i.version,
        "release": i.release,
        "arch": i.arch,
        "location": meta.location(),
        "size": meta.size,
        "sha256": meta.sha256,
    })
}

/// How rpm feeds read a bulk upload's packages (their headers).
#[derive(Clone)]
struct RpmHeaders;

impl crate::bulk::Inspect for RpmHeaders {
    type Info = ferry_formats::rpm::RpmInfo;
    fn memory(&self, _: &ferry_core::Ferry, bytes: &bytes::Bytes) -> Result<Self::Info, CoreError> {
        rpm::inspect_memory(bytes)
    }
    async fn staged(
        &self,
        _: ferry_core::Ferry,
        staged: ferry_store::StagedBlob,
    ) -> Result<(ferry_store::StagedBlob, Self::Info), CoreError> {
        let info = rpm::inspect(&staged).await?;
        Ok((staged, info))
    }
}

/// A bulk upload: every part of a `multipart/form-data` body is an `.rpm`
/// (a part that is not, a text field too, refuses the upload), read and inspected
/// ([`crate::bulk::read_parts`]), then all are published at once
/// ([`rpm::publish`]): one invalid or conflicting file refuses the whole
/// upload with its part named (`part N (FILE)`: 400, 409 or 413), and
/// nothing is stored. At most [`crate::bulk::MAX_PARTS`] parts, each within
/// the upload size limit. 201 with one object per part, in order.
async fn upload_many(
    State(st): State<AppState>,
    access: FeedAccess,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let (uploads, _held) = crate::bulk::read_parts(
        &st.ferry,
        multipart,
        "one .rpm per file part (curl -F rpm=@FILE ...)",
        RpmHeaders,
    )
    .await?;
    let metas = rpm::publish(&st.ferry, &access.feed, uploads).await?;
    let body: Vec<serde_json::Value> = metas.iter().map(meta_json).collect();
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

async fn delete_package(
    State(st): State<AppState>,
    access: FeedAccess,
    Path((_, name, evr, arch)): Path<(String, String, String, String)>,
) -> Result<StatusCode, ApiError> {
    rpm::delete(&st.ferry, &access.feed, &name, &evr, &arch).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn repodata_file(
    State(st): State<AppState>,
    access: FeedAccess,
    Path((_, file)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (body, modified) = rpm::repodata_file(&st.ferry, &access.feed, &file).await?;
    let content_type = match file.as_str() {
        "repomd.xml" => "application/xml",
        "repomd.xml.asc" => "application/pgp-signature",
        _ => "application/gzip",
    };
    // repomd.xml and its signature are revalidated (ETag, Last-Modified);
    // the parts are named by their hash and never change.
    Ok(index_file_response(
        &method,
        &headers,
        access.feed.private,
        body,
        content_type,
        modified,
        modified.is_none(),
    ))
}

async fn package_file(
    State(st): State<AppState>,
    access: FeedAccess,
    Path((_, path)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (digest, modified) = rpm::package_file(&st.ferry, &access.feed, &path).await?;
    let filename = path.rsplit('/').next();
    Ok(serve_download(
        &st.ferry,
        &method,
        &headers,
        &digest,
        "application/x-rpm",
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

/// A `.repo` file naming the feed: `repo_gpgcheck=1` with the feed's key;
/// `gpgcheck=0` since Ferry never signs packages (signatures inside them
/// are the uploader's: set `gpgcheck=1` and add the uploader's key to check them).
/// A private feed's file says, commented out, where the credentials go.
async fn config_repo(
    State(st): State<AppState>,
    access: FeedAccess,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let origin = crate::public_origin(&st.ferry, &headers, uri.authority().map(|a| a.as_str()))?;
    let feed = access.feed.name.to_string();
    let mut body = format!(
        "[ferry-{feed}]\nname=Ferry feed {feed}\nbaseurl={origin}/rpm/{feed}/\nenabled=1\ngpgcheck=0\nrepo_gpgcheck=1\ngpgkey={origin}/rpm/{feed}/key.asc\n"
    );
    if access.feed.private {
        body.push_str(
            "# A private feed: dnf sends these on every request (any user name; the\n\
             # password is an API key that may read the feed).\n\
             #username=ferry\n\
             #password=API_KEY\n",
        );
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
}
