//! PyPI feeds over HTTP. Under `/pypi/FEED`:
//!
//! | method | path | what |
//! | --- | --- | --- |
//! | GET | `/simple/` | root index, PEP 503 HTML or PEP 691 JSON by `Accept` (`Vary: Accept`); every page has a strong `ETag` (304 on `If-None-Match`) |
//! | GET | `/simple/{project}/` | project page; other spellings (and a missing `/`) redirect (301) to the normalized URL |
//! | GET, HEAD | `/files/{project}/{filename}` | the file (Range, ETag); counts downloads |
//! | GET, HEAD | `/files/{project}/{filename}.metadata` | a wheel's core metadata (PEP 658) |
//! | POST | `/` (or no trailing `/`) | upload, twine's legacy API (`multipart/form-data`, file in `content`); 200, or 409 if the file exists |
//! | POST | `/yank/{project}/{version}` | yank (PEP 592) every file of a version; optional body `{"reason": "..."}` (JSON) or `reason=...` (form) |
//! | POST | `/unyank/{project}/{version}` | undo a yank |
//! | DELETE | `/files/{project}/{filename}` | delete one file (204) |
//! | DELETE | `/project/{project}/{version}` | delete every file of a version |
//!
//! Yank, unyank and delete have no standard client; they are Ferry's own.
//! Reads need a key on private feeds only; everything else needs a write
//! key (Bearer, or basic auth with the key as password, as twine, pip and
//! uv send it).

use std::io;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::multipart::{Field, MultipartError, MultipartRejection};
use axum::extract::{Multipart, Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use ferry_core::pypi::{self, FileMeta, UploadForm};
use ferry_core::{CoreError, Ferry};
use ferry_formats::pypi::negotiate;
use ferry_store::{ByteStream, StagedBlob};
use serde::Serialize;

use crate::AppState;
use crate::access::FeedAccess;
use crate::blobs::serve_download;
use crate::error::ApiError;

/// Longest text field of the upload form that is read (longer ones: 400).
const MAX_FORM_FIELD: usize = 64 << 10;
/// Room for the form's other fields (description, classifiers, ...) on top
/// of the upload limit, when judging a request by its `Content-Length`.
pub(crate) const FORM_SLACK: u64 = 16 << 20;
/// Largest yank request body.
const MAX_YANK_BODY: usize = 64 << 10;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/pypi/{feed}", get(base_redirect).post(upload))
        .route("/pypi/{feed}/", get(base_redirect).post(upload))
        .route("/pypi/{feed}/simple", get(base_redirect))
        .route("/pypi/{feed}/simple/", get(root_index))
        .route("/pypi/{feed}/simple/{project}", get(project_redirect))
        .route("/pypi/{feed}/simple/{project}/", get(project_index))
        .route(
            "/pypi/{feed}/files/{project}/{filename}",
            get(download).delete(delete_file),
        )
        .route("/pypi/{feed}/yank/{project}/{version}", post(yank))
        .route("/pypi/{feed}/unyank/{project}/{version}", post(unyank))
        .route("/pypi/{feed}/project/{project}/{version}", delete(delete_version))
}

/// Where file links of a project page (`/pypi/FEED/simple/PROJECT/`)
/// point: relative to the page (`../../files/...`), so pages work behind
/// any host name and under any path prefix a reverse proxy adds (PEP 503
/// and PEP 691 let links be relative; pip and uv resolve them against the
/// page URL).
const FILES_BASE: &str = "../..";

/// A redirect to the feed-local path `target` (e.g. `/pypi/F/simple/`),
/// written relative to the request's own path so it survives a path
/// prefix added by a reverse proxy (RFC 9110 §10.2.2 allows a relative
/// `Location`).
fn moved(request_path: &str, target: &str) -> Response {
    let location = relative_reference(request_path, target);
    (StatusCode::MOVED_PERMANENTLY, [(header::LOCATION, location)]).into_response()
}

/// `target` as a reference relative to `from` (both absolute paths): as
/// many `..` as `from`'s directory is deeper than their common directory,
/// then the rest of `target`.
fn relative_reference(from: &str, target: &str) -> String {
    let dir: Vec<&str> = match from.rfind('/') {
        Some(i) => from[..i].split('/').collect(),
        None => vec![""],
    };
    let goal: Vec<&str> = target.split('/').collect();
    let (goal_dir, goal_last) = goal.split_at(goal.len().saturating_sub(1));
    let common = dir.iter().zip(goal_dir).take_while(|(a, b)| a == b).count();
    let mut out = String::new();
    for _ in common..dir.len() {
        out.push_str("../");
    }
    for seg in &goal_dir[common..] {
        out.push_str(seg);
        out.push('/');
    }
    out.push_str(goal_last.first().copied().unwrap_or_default());
    if out.is_empty() { "./".into() } else { out }
}

async fn base_redirect(access: FeedAccess, uri: axum::http::Uri) -> Response {
    moved(uri.path(), &format!("/pypi/{}/simple/", access.feed.name))
}

async fn project_redirect(
    access: FeedAccess,
    uri: axum::http::Uri,
    Path((_, project)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let normalized = pypi::normalized_project(&project)?;
    Ok(moved(
        uri.path(),
        &format!("/pypi/{}/simple/{normalized}/", access.feed.name),
    ))
}

/// A simple API page with the negotiated type and its entity tag
/// ([`rendered_response`](crate::blobs::rendered_response): 304 on a
/// matching `If-None-Match`). Pages change whenever the feed does, so
/// clients must revalidate; private feeds' pages are not for shared
/// caches.
fn page(
    method: &Method,
    headers: &HeaderMap,
    content_type: &'static str,
    private: bool,
    page: pypi::Page,
) -> Response {
    let mut resp =
        crate::blobs::rendered_response(method, headers, private, page.body, content_type, page.etag);
    resp.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("Accept"));
    resp
}

fn accept(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok())
}

async fn root_index(
    State(st): State<AppState>,
    access: FeedAccess,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let n = negotiate(accept(&headers));
    let body = pypi::root_page(&st.ferry, &access.feed, n.format).await?;
    Ok(page(&method, &headers, n.content_type, access.feed.private, body))
}

async fn project_index(
    State(st): State<AppState>,
    access: FeedAccess,
    uri: axum::http::Uri,
    Path((_, project)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let normalized = pypi::normalized_project(&project)?;
    if normalized != project {
        return Ok(moved(
            uri.path(),
            &format!("/pypi/{}/simple/{normalized}/", access.feed.name),
        ));
    }
    let n = negotiate(accept(&headers));
    let body = pypi::project_page(&st.ferry, &access.feed, &normalized, n.format, FILES_BASE).await?;
    Ok(page(&method, &headers, n.content_type, access.feed.private, body))
}

async fn download(
    State(st): State<AppState>,
    access: FeedAccess,
    Path((_, project, filename)): Path<(String, String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(dist) = filename.strip_suffix(".metadata") {
        // PEP 658: the core metadata of a wheel, for resolvers.
        let file = pypi::file(&st.ferry, &access.feed, &project, dist).await?;
        let digest = file
            .meta
            .core_metadata
            .ok_or_else(|| CoreError::not_found(format!("{dist} has no separate core metadata file")))?;
        return Ok(serve_download(
            &st.ferry,
            &method,
            &headers,
            &digest,
            "text/plain; charset=utf-8",
            Some(file.modified),
            Some(&filename),
        )
        .await?);
    }
    let file = pypi::file(&st.ferry, &access.feed, &project, &filename).await?;
    let resp = serve_download(
        &st.ferry,
        &method,
        &headers,
        &file.digest,
        "application/octet-stream",
        Some(file.modified),
        Some(&filename),
    )
    .await?;
    if method == Method::GET && resp.status() == StatusCode::OK {
        st.ferry.count_download(&access.feed, &file.key);
    }
    Ok(resp)
}

async fn delete_file(
    State(st): State<AppState>,
    access: FeedAccess,
    Path((_, project, filename)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    pypi::delete_file(&st.ferry, &access.feed, &project, &filename).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize)]
struct Deleted {
    project: String,
    version: String,
    deleted: Vec<String>,
}

async fn delete_version(
    State(st): State<AppState>,
    access: FeedAccess,
    Path((_, project, version)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let deleted = pypi::delete_version(&st.ferry, &access.feed, &project, &version).await?;
    Ok(axum::Json(Deleted {
        project: pypi::normalized_project(&project)?,
        version,
        deleted,
    })
    .into_response())
}

#[derive(Serialize)]
struct YankState {
    project: String,
    version: String,
    yanked: bool,
    files: Vec<YankedFile>,
}

#[derive(Serialize)]
struct YankedFile {
    filename: String,
    yanked: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    yanked_reason: Option<String>,
}

fn yank_state(
    project: &str,
    version: String,
    yanked: bool,
    files: Vec<FileMeta>,
) -> Result<Response, ApiError> {
    let files = files
        .into_iter()
        .map(|f| YankedFile {
            filename: f.filename,
            yanked: f.yanked,
            yanked_reason: f.yanked_reason,
        })
        .collect();
    let project = pypi::normalized_project(project)?;
    Ok(axum::Json(YankState {
        project,
        version,
        yanked,
        files,
    })
    .into_response())
}

async fn yank(
    State(st): State<AppState>,
    access: FeedAccess,
    Path((_, project, version)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let reason = yank_reason(&headers, body).await?;
    let files = pypi::yank(&st.ferry, &access.feed, &project, &version, reason).await?;
    yank_state(&project, version, true, files)
}

async fn unyank(
    State(st): State<AppState>,
    access: FeedAccess,
    Path((_, project, version)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let files = pypi::unyank(&st.ferry, &access.feed, &project, &version).await?;
    yank_state(&project, version, false, files)
}

/// The optional reason of a yank: `{"reason": "..."}` as JSON, or
/// `reason=...` as a form; an empty body gives none.
async fn yank_reason(headers: &HeaderMap, body: Body) -> Result<Option<String>, CoreError> {
    let bytes = axum::body::to_bytes(body, MAX_YANK_BODY).await.map_err(|e| {
        CoreError::from_body_error(&e).unwrap_or_else(|| {
            CoreError::TooLarge(format!(
                "a yank request body may have at most {MAX_YANK_BODY} bytes"
            ))
        })
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let reason = if content_type.starts_with("application/x-www-form-urlencoded") {
        let text =
            std::str::from_utf8(&bytes).map_err(|_| CoreError::invalid("the yank form is not UTF-8"))?;
        form_value(text, "reason")?
    } else {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Body {
            reason: Option<String>,
        }
        let parsed: Body = serde_json::from_slice(&bytes).map_err(|e| {
            CoreError::invalid(format!(
                "the yank body must be JSON {{\"reason\": \"...\"}} or a form reason=...: {e}"
            ))
        })?;
        parsed.reason
    };
    Ok(reason.filter(|r| !r.trim().is_empty()))
}

/// The value of `key` in an `application/x-www-form-urlencoded` body.
fn form_value(text: &str, key: &str) -> Result<Option<String>, CoreError> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8()
            .map(|v| v.into_owned())
            .map_err(|_| CoreError::invalid("the yank form is not valid UTF-8 once decoded"))
    };
    for pair in text.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if decode(k)? == key {
            return decode(v).map(Some);
        }
    }
    Ok(None)
}

/// A multipart error: the client's body broke off, or the form is malformed.
pub(crate) fn bad_multipart(e: MultipartError) -> CoreError {
    CoreError::from_body_error(&e)
        .unwrap_or_else(|| CoreError::invalid(format!("malformed multipart upload: {}", e.body_text())))
}

/// Handles twine's legacy upload: the text fields are read (bounded), the
/// file part is streamed into staging, then the core checks and publishes.
async fn upload(
    State(st): State<AppState>,
    access: FeedAccess,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let limit = st.ferry.config().max_upload_bytes;
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && len > limit.saturating_add(FORM_SLACK)
    {
        return Err(CoreError::TooLarge(format!(
            "upload of {len} bytes exceeds the limit of {limit} bytes"
        ))
        .into());
    }
    let mut multipart = multipart.map_err(|e| {
        CoreError::invalid(format!(
            "expected a multipart/form-data upload (twine's legacy upload API): {}",
            e.body_text()
        ))
    })?;
    let mut form = UploadForm::default();
    let mut content: Option<(String, StagedBlob)> = None;
    while let Some(mut field) = multipart.next_field().await.map_err(bad_multipart)? {
        let name = field.name().unwrap_or_default().to_owned();
        if name == UploadForm::CONTENT_FIELD {
            if content.is_some() {
                return Err(CoreError::invalid("the upload has more than one content field").into());
            }
            let filename = crate::bulk::file_name_of(&field)
                .filter(|f| !f.is_empty())
                .ok_or_else(|| CoreError::invalid("the content field of the upload has no file name"))?;
            pypi::check_filename(&filename)?;
            let staged = stage_field(&st.ferry, &mut field).await?;
            content = Some((filename, staged));
        } else if UploadForm::knows_field(&name) {
            let value = read_text(&name, &mut field).await?;
            form.set_field(&name, value);
            if let Some(action) = &form.action
                && action != "file_upload"
            {
                return Err(CoreError::invalid(format!(
                    "upload :action {action:?} is not supported (only \"file_upload\" is)"
                ))
                .into());
            }
        } else {
            while field.chunk().await.map_err(bad_multipart)?.is_some() {}
        }
    }
    let Some((filename, staged)) = content else {
        return Err(CoreError::invalid(format!(
            "the upload has no {:?} field carrying the distribution file",
            UploadForm::CONTENT_FIELD
        ))
        .into());
    };
    let meta = pypi::upload(&st.ferry, &access.feed, &form, &filename, staged).await?;
    Ok((
        StatusCode::OK,
        format!(
            "uploaded {} ({} bytes, sha256 {})\n",
            meta.filename,
            meta.size,
            meta.sha256.hex()
        ),
    )
        .into_response())
}

/// Reads one text field of the form, refusing values over [`MAX_FORM_FIELD`].
async fn read_text(name: &str, field: &mut Field<'_>) -> Result<String, CoreError> {
    let mut buf = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(bad_multipart)? {
        if buf.len() + chunk.len() > MAX_FORM_FIELD {
            return Err(CoreError::invalid(format!(
                "upload form field {name:?} is longer than {MAX_FORM_FIELD} bytes"
            )));
        }
        buf.extend_from_slice(&chunk);
    }
    String::from_utf8(buf).map_err(|_| CoreError::invalid(format!("upload form field {name:?} is not UTF-8")))
}

/// Streams the file part into staging. The part borrows the request, so it
/// is pumped through a small channel into the `'static` stream staging
/// wants, in this same task; memory stays bounded by the channel.
pub(crate) async fn stage_field(ferry: &Ferry, field: &mut Field<'_>) -> Result<StagedBlob, CoreError> {
    stage_field_after(ferry, Vec::new(), field).await
}

/// [`stage_field`] of a part whose first bytes (`read`) were already taken
/// from it (e.g. to look at them first): those, then the rest as it comes.
pub(crate) async fn stage_field_after(
    ferry: &Ferry,
    read: Vec<Bytes>,
    field: &mut Field<'_>,
) -> Result<StagedBlob, CoreError> {
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(4);
    let body: ByteStream = Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    let mut broken: Option<CoreError> = None;
    let result = {
        let pump = async {
            for b in read {
                if tx.send(Ok(b)).await.is_err() {
                    return;
                }
            }
            loop {
                match field.chunk().await {
                    Ok(Some(chunk)) => {
                        if tx.send(Ok(chunk)).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let _ = tx.send(Err(io::Error::other(e.body_text()))).await;
                        broken = Some(bad_multipart(e));
                        break;
                    }
                }
            }
            // Dropping the sender ends the stream.
            drop(tx);
        };
        let stage = ferry.stage(body, None);
        tokio::pin!(pump, stage);
        let mut pumped = false;
        loop {
            tokio::select! {
                r = &mut stage => break r,
                () = &mut pump, if !pumped => pumped = true,
            }
        }
    };
    match (result, broken) {
        (Err(_), Some(why)) => Err(why),
        (r, _) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::relative_reference;

    #[test]
    fn redirects_are_relative_to_the_request() {
        assert_eq!(relative_reference("/pypi/f", "/pypi/f/simple/"), "f/simple/");
        assert_eq!(relative_reference("/pypi/f/", "/pypi/f/simple/"), "simple/");
        assert_eq!(relative_reference("/pypi/f/simple", "/pypi/f/simple/"), "simple/");
        assert_eq!(
            relative_reference("/pypi/f/simple/Foo", "/pypi/f/simple/foo/"),
            "foo/"
        );
        assert_eq!(
            relative_reference("/pypi/f/simple/Foo/", "/pypi/f/simple/foo/"),
            "../foo/"
        );
    }
}
