//! Serving blobs over HTTP: byte ranges, ETags, conditional requests.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferry_core::{CoreError, Ferry};
use ferry_types::Digest;

/// A parsed `Range` header against a body of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeRequest {
    Whole,
    Part(std::ops::Range<u64>),
    Unsatisfiable,
}

/// Parses a single-range `bytes=` header. Multiple ranges and other units
/// are served as the whole body, which RFC 9110 allows.
pub fn parse_range(value: Option<&HeaderValue>, size: u64) -> RangeRequest {
    let Some(spec) = value
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return RangeRequest::Whole;
    };
    if spec.contains(',') {
        return RangeRequest::Whole;
    }
    let Some((start, end)) = spec.trim().split_once('-') else {
        return RangeRequest::Unsatisfiable;
    };
    let parsed = match (start.trim(), end.trim()) {
        ("", "") => None,
        ("", suffix) => suffix
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .map(|n| size.saturating_sub(n)..size),
        (s, "") => s.parse::<u64>().ok().map(|s| s..size),
        (s, e) => match (s.parse::<u64>(), e.parse::<u64>()) {
            (Ok(s), Ok(e)) if s <= e => Some(s..(e.saturating_add(1)).min(size)),
            _ => None,
        },
    };
    match parsed {
        Some(r) if r.start < size && r.start < r.end => RangeRequest::Part(r),
        _ => RangeRequest::Unsatisfiable,
    }
}

pub fn etag(digest: &Digest) -> String {
    format!("\"{digest}\"")
}

/// Streams a blob as a response with the usual headers; honours `Range`,
/// `If-None-Match` and HEAD.
pub async fn serve_blob(
    ferry: &Ferry,
    method: &Method,
    headers: &HeaderMap,
    digest: &Digest,
    content_type: &str,
    last_modified: Option<i64>,
) -> Result<Response, CoreError> {
    let tag = etag(digest);
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',').any(|t| {
                let t = t.trim();
                t == tag || t == "*"
            })
        })
    {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, tag)]).into_response());
    }
    let size = ferry.stored_blob_size(digest).await?;
    let range = parse_range(headers.get(header::RANGE), size);
    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .header(header::ETAG, &tag)
        .header(header::ACCEPT_RANGES, "bytes");
    if let Some(ms) = last_modified {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
        builder = builder.header(header::LAST_MODIFIED, httpdate::fmt_http_date(t));
    }
    let (status, len, read_range) = match range {
        RangeRequest::Whole => (StatusCode::OK, size, None),
        RangeRequest::Part(r) => {
            builder = builder.header(
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{size}", r.start, r.end - 1),
            );
            (StatusCode::PARTIAL_CONTENT, r.end - r.start, Some(r))
        }
        RangeRequest::Unsatisfiable => {
            return Ok((
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{size}"))],
                format!("requested range not satisfiable for a body of {size} bytes\n"),
            )
                .into_response());
        }
    };
    builder = builder.status(status).header(header::CONTENT_LENGTH, len);
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::from_stream(ferry.read_blob(digest, read_range).await?.stream)
    };
    builder.body(body).map_err(|e| CoreError::Internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str, size: u64) -> RangeRequest {
        parse_range(Some(&HeaderValue::from_str(s).unwrap()), size)
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), RangeRequest::Whole);
        assert_eq!(r("bytes=0-3", 10), RangeRequest::Part(0..4));
        assert_eq!(r("bytes=5-", 10), RangeRequest::Part(5..10));
        assert_eq!(r("bytes=-3", 10), RangeRequest::Part(7..10));
        assert_eq!(r("bytes=8-100", 10), RangeRequest::Part(8..10));
        assert_eq!(r("bytes=10-", 10), RangeRequest::Unsatisfiable);
        assert_eq!(r("bytes=5-2", 10), RangeRequest::Unsatisfiable);
        assert_eq!(r("bytes=x-2", 10), RangeRequest::Unsatisfiable);
        assert_eq!(r("bytes=0-1,4-5", 10), RangeRequest::Whole);
        assert_eq!(r("items=0-1", 10), RangeRequest::Whole);
    }
}
