//! `/assets/FEED/PATH`: PUT, GET (Range), HEAD, DELETE; `GET .../DIR/` lists.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use ferry_core::{CoreError, assets};
use ferry_types::Digest;
use futures::TryStreamExt;

use crate::AppState;
use crate::access::FeedAccess;
use crate::blobs::serve_download;
use crate::error::ApiError;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/assets/{feed}", get(list_root))
        .route("/assets/{feed}/", get(list_root))
        .route(
            "/assets/{feed}/{*path}",
            get(get_asset).put(put_asset).delete(delete_asset),
        )
}

async fn list_root(
    State(st): State<AppState>,
    access: FeedAccess,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    listing(&st, &access, "", &headers).await
}

async fn get_asset(
    State(st): State<AppState>,
    access: FeedAccess,
    Path((_, path)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if path.ends_with('/') {
        return listing(&st, &access, &path, &headers).await;
    }
    let asset = assets::get(&st.ferry, &access.feed, &path).await?;
    let filename = path.rsplit('/').next();
    let resp = serve_download(
        &st.ferry,
        &method,
        &headers,
        &asset.digest,
        &asset.content_type,
        Some(asset.modified),
        filename,
    )
    .await?;
    if method == Method::GET && resp.status() == StatusCode::OK {
        st.ferry.count_download(
            &access.feed,
            &ferry_formats::assets::asset_key(&path).map_err(CoreError::from)?,
        );
    }
    Ok(resp)
}

async fn put_asset(
    State(st): State<AppState>,
    access: FeedAccess,
    Path((_, path)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && len > st.ferry.config().max_upload_bytes
    {
        return Err(CoreError::TooLarge(format!(
            "upload of {len} bytes exceeds the limit of {} bytes",
            st.ferry.config().max_upload_bytes
        ))
        .into());
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && *v != "application/x-www-form-urlencoded")
        .map(str::to_string)
        .unwrap_or_else(|| mime_guess::from_path(&path).first_or_octet_stream().to_string());
    let expected = match headers.get("x-checksum-sha256").and_then(|v| v.to_str().ok()) {
        Some(hex) => Some(Digest::from_hex(&hex.to_ascii_lowercase()).map_err(CoreError::from)?),
        None => None,
    };
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let asset = assets::put(
        &st.ferry,
        &access.feed,
        &path,
        Box::pin(stream),
        &content_type,
        expected,
    )
    .await?;
    Ok((StatusCode::CREATED, axum::Json(asset)).into_response())
}

async fn delete_asset(
    State(st): State<AppState>,
    access: FeedAccess,
    Path((_, path)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    assets::delete(&st.ferry, &access.feed, &path).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json"))
}

async fn listing(
    st: &AppState,
    access: &FeedAccess,
    dir: &str,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let entries = assets::list(&st.ferry, &access.feed, dir).await?;
    if wants_json(headers) {
        return Ok(axum::Json(entries).into_response());
    }
    let title = format!("/assets/{}/{}", access.feed.name, dir);
    let mut html = format!(
        "<!DOCTYPE html>\n<html><head><title>{0}</title></head><body><h1>{0}</h1><ul>\n",
        esc(&title)
    );
    if !dir.is_empty() {
        html.push_str("<li><a href=\"../\">../</a></li>\n");
    }
    for e in entries {
        let href = if e.kind == "folder" {
            format!("{}/", e.name)
        } else {
            e.name.clone()
        };
        // Always a relative path ("./x"): a name like `javascript:…` is
        // never read as a URL scheme.
        let href_enc = format!("./{}", percent_encoding::utf8_percent_encode(&href, PATH_SEGMENT));
        let size = e.size.map(|s| format!(" ({s} bytes)")).unwrap_or_default();
        html.push_str(&format!(
            "<li><a href=\"{}\">{}</a>{size}</li>\n",
            esc(&href_enc),
            esc(&href)
        ));
    }
    html.push_str("</ul></body></html>\n");
    Ok(Html(html).into_response())
}

const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'?')
    .add(b'<')
    .add(b'>');

/// Escapes `s` for HTML text and quoted attribute values.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#x27;")
}
