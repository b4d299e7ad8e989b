//! Serving blobs over HTTP: byte ranges (RFC 9110 §14), validators and
//! conditional requests (§8.8, §13), and the content rule that keeps what
//! users upload from running in Ferry's origin ([`content_headers`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferry_core::{CoreError, Ferry};
use ferry_types::Digest;

/// A parsed `Range` header against a body of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable range: the whole representation (200).
    Whole,
    /// One satisfiable range (206).
    Part(std::ops::Range<u64>),
    /// A byte range none of whose bytes exist (416).
    Unsatisfiable,
}

/// Parses a single-range `bytes=` header (RFC 9110 §14.1.2; the unit is
/// case-insensitive). Multiple ranges and other units are served as the
/// whole body, which RFC 9110 §14.2 allows.
pub fn parse_range(value: Option<&HeaderValue>, size: u64) -> RangeRequest {
    let Some(spec) = value.and_then(|v| v.to_str().ok()).and_then(|v| {
        let v = v.trim();
        v.get(..6)
            .filter(|unit| unit.eq_ignore_ascii_case("bytes="))
            .map(|_| &v[6..])
    }) else {
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
        ("", suffix) => position(suffix)
            .filter(|n| *n > 0)
            .map(|n| size.saturating_sub(n)..size),
        (s, "") => position(s).map(|s| s..size),
        (s, e) => match (position(s), position(e)) {
            (Some(s), Some(e)) if s <= e => Some(s..(e.saturating_add(1)).min(size)),
            _ => None,
        },
    };
    match parsed {
        Some(r) if r.start < size && r.start < r.end => RangeRequest::Part(r),
        _ => RangeRequest::Unsatisfiable,
    }
}

/// A byte position or suffix length of a range (`1*DIGIT`, RFC 9110
/// §14.1.1); one past what a u64 holds is that much (an end past the
/// representation's is clamped to it, §14.1.2, however many digits).
fn position(digits: &str) -> Option<u64> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(digits.parse::<u64>().unwrap_or(u64::MAX))
}

/// The strong entity tag of a blob (RFC 9110 §8.8.3): its digest, quoted.
/// Content-addressed, so two representations with the same tag are the
/// same bytes, which is what strong comparison (§8.8.3.2) needs.
pub fn etag(digest: &Digest) -> String {
    format!("\"{digest}\"")
}

/// One entity tag of a request header (RFC 9110 §8.8.3).
#[derive(Debug, PartialEq, Eq)]
struct EntityTag<'a> {
    weak: bool,
    /// The opaque tag with its quotes.
    opaque: &'a str,
}

impl<'a> EntityTag<'a> {
    fn parse(s: &'a str) -> Option<Self> {
        let (weak, opaque) = match s.strip_prefix("W/") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let inner = opaque.strip_prefix('"')?.strip_suffix('"')?;
        // etagc = %x21 / %x23-7E / obs-text
        inner
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80)
            .then_some(Self { weak, opaque })
    }

    /// Strong comparison (§8.8.3.2): both strong, same opaque tag.
    fn strong_eq(&self, other: &EntityTag<'_>) -> bool {
        !self.weak && !other.weak && self.opaque == other.opaque
    }

    /// Weak comparison (§8.8.3.2): same opaque tag, either may be weak.
    fn weak_eq(&self, other: &EntityTag<'_>) -> bool {
        self.opaque == other.opaque
    }
}

/// The value of `If-Match` or `If-None-Match` (RFC 9110 §13.1.1-2): `*`
/// or a list of entity tags. Several header lines form one list; commas
/// inside quotes belong to the tag; members that are not entity tags are
/// skipped.
enum TagList<'a> {
    Any,
    Tags(Vec<EntityTag<'a>>),
}

impl<'a> TagList<'a> {
    fn from_headers(headers: &'a HeaderMap, name: header::HeaderName) -> Option<Self> {
        let mut values = headers.get_all(name).iter().peekable();
        values.peek()?;
        let mut tags = Vec::new();
        for value in values {
            let Ok(value) = value.to_str() else { continue };
            for member in split_list(value) {
                if member == "*" {
                    return Some(TagList::Any);
                }
                tags.extend(EntityTag::parse(member));
            }
        }
        Some(TagList::Tags(tags))
    }

    fn any(&self, f: impl Fn(&EntityTag<'_>) -> bool) -> bool {
        match self {
            TagList::Any => true,
            TagList::Tags(tags) => tags.iter().any(f),
        }
    }
}

/// Splits a comma-separated header list, not splitting inside quotes.
fn split_list(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (i, b) in value.bytes().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                out.push(value[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(value[start..].trim());
    out.retain(|m| !m.is_empty());
    out
}

/// Whether `If-None-Match` names the representation whose entity tag is
/// `etag` (strong `"…"` or weak `W/"…"`): `*`, or a member equal by weak
/// comparison (RFC 9110 §13.1.2, §8.8.3.2). For rendered indexes that
/// answer 304 themselves; blobs go through [`serve_download`].
pub fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    let Some(current) = EntityTag::parse(etag) else {
        return false;
    };
    TagList::from_headers(headers, header::IF_NONE_MATCH)
        .is_some_and(|list| list.any(|t| t.weak_eq(&current)))
}

/// A rendered answer (an index, a search, a feed document) with its
/// validator, for every protocol that serves one: `ETag: etag`,
/// `Cache-Control: no-cache` (`private, no-cache` on a private feed: a
/// shared cache must not keep it) so clients revalidate, and 304 without
/// a body when `If-None-Match` names `etag` ([`if_none_match`]). A HEAD
/// gets the headers and `Content-Length` of the GET. Callers add what
/// their protocol needs more (`Vary`, …) to what this returns, 304 or not.
pub fn rendered_response(
    method: &Method,
    headers: &HeaderMap,
    private: bool,
    body: bytes::Bytes,
    content_type: &'static str,
    etag: String,
) -> Response {
    let fresh = headers.contains_key(header::IF_NONE_MATCH) && if_none_match(headers, &etag);
    respond_rendered(method, fresh, private, body, content_type, etag)
}

/// A file of a signed repository index (apt's `Release`, `InRelease`,
/// `Packages*`, by-hash files; dnf's `repomd.xml` and its parts) as
/// [`rendered_response`] answers it, with the validators these clients
/// use: `ETag` is the SHA-256 of the bytes (`"sha256:HEX"`, the same on
/// every node for the same rendering), and `Last-Modified` is `modified`
/// (ms since the epoch) when given — apt revalidates with
/// `If-Modified-Since` only, which answers 304 when no `If-None-Match` is
/// sent and the file is not newer than the date (RFC 9110 §13.1.3).
/// `immutable` files (named by their hash) may be kept for a day instead
/// of revalidated.
pub fn index_file_response(
    method: &Method,
    headers: &HeaderMap,
    private: bool,
    body: bytes::Bytes,
    content_type: &'static str,
    modified: Option<i64>,
    immutable: bool,
) -> Response {
    let etag = format!("\"{}\"", Digest::of(&body));
    let modified = modified.map(|ms| UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64));
    let fresh = if headers.contains_key(header::IF_NONE_MATCH) {
        if_none_match(headers, &etag)
    } else {
        matches!(
            (http_date(headers, header::IF_MODIFIED_SINCE), modified),
            (Some(date), Some(lm)) if secs(lm) <= secs(date)
        )
    };
    let mut resp = respond_rendered(method, fresh, private, body, content_type, etag);
    let h = resp.headers_mut();
    if let Some(t) = modified
        && let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(t))
    {
        h.insert(header::LAST_MODIFIED, v);
    }
    if immutable {
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static(if private {
                "private, max-age=86400"
            } else {
                "max-age=86400"
            }),
        );
    }
    resp
}

/// [`rendered_response`] once freshness is decided (`fresh`: 304).
fn respond_rendered(
    method: &Method,
    fresh: bool,
    private: bool,
    body: bytes::Bytes,
    content_type: &'static str,
    etag: String,
) -> Response {
    let head = fresh || *method == Method::HEAD;
    let len = body.len();
    let mut resp = Response::new(if head { Body::empty() } else { Body::from(body) });
    if fresh {
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
    }
    let h = resp.headers_mut();
    // Room for what this, the caller (`Vary`, …), the edge layer and
    // axum's `Content-Length` add: no growing on the way out.
    h.reserve(RESPONSE_HEADERS);
    if !fresh {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        if head {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
    }
    // (The tag's bytes are taken over, not copied.)
    if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(etag)) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if private { "private, no-cache" } else { "no-cache" }),
    );
    resp
}

/// The header fields a response of an index or a page is made with room
/// for: its own few, and the security headers and `Content-Length` added
/// on its way out (growing a header map moves every field).
pub const RESPONSE_HEADERS: usize = 10;

/// A single HTTP-date header (RFC 9110 §5.6.7); absent, repeated or not a
/// date → `None` (the condition is then ignored, §13.1.3-4).
fn http_date(headers: &HeaderMap, name: header::HeaderName) -> Option<SystemTime> {
    let mut values = headers.get_all(name).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    httpdate::parse_http_date(value.to_str().ok()?.trim()).ok()
}

/// Whole seconds since the epoch: HTTP-dates have one-second resolution.
fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// What the preconditions of a GET or HEAD decide (RFC 9110 §13.2.2).
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    /// Serve it; `honour_range` says whether the `Range` header applies.
    Serve {
        honour_range: bool,
    },
    NotModified,
    PreconditionFailed,
}

/// Evaluates the preconditions of a GET or HEAD of a representation whose
/// entity tag is `tag` (strong) and that was last modified at
/// `last_modified`, in the order of RFC 9110 §13.2.2:
///
/// 1. `If-Match` (§13.1.1): `*`, or one tag that matches `tag` by strong
///    comparison; otherwise 412.
/// 2. Without `If-Match`, `If-Unmodified-Since` (§13.1.4): 412 if the
///    representation changed after the date.
/// 3. `If-None-Match` (§13.1.2): `*`, or a tag matching by weak
///    comparison → 304.
/// 4. Without `If-None-Match`, `If-Modified-Since` (§13.1.3): 304 unless
///    the representation changed after the date.
/// 5. `If-Range` (§13.1.5), only with a `Range` on a GET (HEAD has no
///    ranges, §14.2): an entity tag must match `tag` by strong comparison;
///    an HTTP-date never matches (below). A validator that does not match
///    means the `Range` is ignored and the whole representation is sent
///    (200), so a client resuming an old download never splices old and
///    new bytes.
///
/// Why a date in `If-Range` never matches: a Last-Modified time is a strong
/// validator only if the server knows the representation did not change
/// twice within the second it names (§8.8.2.2). Ferry cannot know that (an
/// item can be replaced several times within a second, and a replica keeps
/// the time of the instance that wrote it), so it treats the date as weak,
/// which §13.1.5 says does not match. Clients resume with the entity tag,
/// which is the content's digest.
fn decide(headers: &HeaderMap, method: &Method, tag: &str, last_modified: Option<SystemTime>) -> Decision {
    let current = EntityTag {
        weak: false,
        opaque: tag,
    };
    match TagList::from_headers(headers, header::IF_MATCH) {
        Some(list) => {
            if !list.any(|t| t.strong_eq(&current)) {
                return Decision::PreconditionFailed;
            }
        }
        None => {
            if let (Some(date), Some(lm)) = (http_date(headers, header::IF_UNMODIFIED_SINCE), last_modified)
                && secs(lm) > secs(date)
            {
                return Decision::PreconditionFailed;
            }
        }
    }
    match TagList::from_headers(headers, header::IF_NONE_MATCH) {
        Some(list) => {
            if list.any(|t| t.weak_eq(&current)) {
                return Decision::NotModified;
            }
        }
        None => {
            if let (Some(date), Some(lm)) = (http_date(headers, header::IF_MODIFIED_SINCE), last_modified)
                && secs(lm) <= secs(date)
            {
                return Decision::NotModified;
            }
        }
    }
    if method != Method::GET || !headers.contains_key(header::RANGE) {
        return Decision::Serve { honour_range: false };
    }
    let honour_range = match headers.get(header::IF_RANGE).map(|v| v.to_str()) {
        None => true,
        Some(Ok(v)) => EntityTag::parse(v.trim()).is_some_and(|t| t.strong_eq(&current)),
        Some(Err(_)) => false,
    };
    Decision::Serve { honour_range }
}

// ---------------------------------------------------------------------------
// The content rule

/// The policy every response carries unless it sets its own (see
/// `crate::protect`): no script, no plugin, no fetch, no form, a unique
/// opaque origin (`sandbox`, so no cookies of Ferry's origin either). An
/// HTML body served under it cannot do anything in Ferry's origin.
pub const SANDBOX_POLICY: &str = "default-src 'none'; sandbox";

/// Passive media types: a browser shows them (or saves them) without
/// interpreting anything in them as markup or code. Served inline as stored.
const PASSIVE: &[&str] = &[
    "application/gzip",
    "application/java-archive",
    "application/json",
    "application/octet-stream",
    "application/vnd.debian.binary-package",
    "application/vnd.rar",
    "application/wasm",
    "application/x-7z-compressed",
    "application/x-bzip2",
    "application/x-gzip",
    "application/x-rpm",
    "application/x-tar",
    "application/x-xz",
    "application/zip",
    "application/zstd",
    "image/avif",
    "image/bmp",
    "image/gif",
    "image/jpeg",
    "image/png",
    "image/tiff",
    "image/vnd.microsoft.icon",
    "image/webp",
    "image/x-icon",
    "text/csv",
    "text/plain",
];

/// How a stored content type is served: see [`content_headers`].
#[derive(Debug, PartialEq, Eq)]
pub struct ContentHeaders {
    /// The `Content-Type` to send.
    pub content_type: HeaderValue,
    /// `Content-Disposition`, when the content must be saved, not shown.
    pub disposition: Option<HeaderValue>,
}

#[derive(Debug, PartialEq, Eq)]
enum Class {
    Passive,
    /// Markup or code a browser runs: HTML, XML (XHTML, SVG, XSLT, any
    /// `+xml`), JavaScript, CSS, and anything that does not parse as a
    /// media type.
    Active,
    /// Anything else (PDF, unknown types): may be active in some viewer.
    Other,
}

fn classify(content_type: &str) -> Class {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    let Some((kind, subtype)) = essence.split_once('/').filter(|(k, s)| token(k) && token(s)) else {
        return Class::Active;
    };
    let scripted = ["html", "xml", "script", "css", "xsl", "x-sgml"]
        .iter()
        .any(|word| subtype.contains(word));
    if scripted || kind == "multipart" {
        Class::Active
    } else if PASSIVE.contains(&essence.as_str())
        || kind == "audio"
        || kind == "video"
        || (kind == "application" && subtype.ends_with("+json"))
    {
        Class::Passive
    } else {
        Class::Other
    }
}

/// The rule for serving content whose type was chosen by whoever uploaded
/// it, so that nothing served from Ferry runs in Ferry's origin:
///
/// - **passive** types (the list [`PASSIVE`]: images other than SVG, plain
///   text, CSV, JSON as `application/json` and `application/*+json`,
///   octet-stream, archives and packages, audio, video) are served inline
///   with the stored `Content-Type`;
/// - **active** types, which browsers render as documents or run as code
///   (HTML, XHTML, SVG and anything XML, JavaScript/ECMAScript, CSS, XSLT,
///   `multipart/*`, and a type that does not parse), are served as
///   `application/octet-stream` with `Content-Disposition: attachment`;
/// - **anything else** (PDF, types this rule does not know) keeps its
///   `Content-Type` but is served with `Content-Disposition: attachment`.
///
/// The attachment carries the file name (RFC 6266 §4.3): an ASCII
/// `filename` and, when the name is not plain ASCII, `filename*` in UTF-8
/// (RFC 8187). This applies to every blob Ferry serves; the package
/// clients' types (npm and PyPI files as octet-stream, wheel metadata as
/// text/plain, OCI manifests as `application/vnd...+json`) are passive, so
/// what npm, pip, uv and skopeo receive is unchanged. On top of this every
/// response carries `X-Content-Type-Options: nosniff` and
/// [`SANDBOX_POLICY`] (the `edge` layer).
pub fn content_headers(stored: &str, filename: Option<&str>) -> ContentHeaders {
    let octet = || HeaderValue::from_static("application/octet-stream");
    let (content_type, attachment) = match classify(stored) {
        Class::Passive => (HeaderValue::from_str(stored).unwrap_or_else(|_| octet()), false),
        Class::Other => match HeaderValue::from_str(stored) {
            Ok(v) => (v, true),
            Err(_) => (octet(), true),
        },
        Class::Active => (octet(), true),
    };
    ContentHeaders {
        content_type,
        disposition: attachment.then(|| attachment_disposition(filename.unwrap_or_default())),
    }
}

/// `attachment; filename="…"; filename*=UTF-8''…` (RFC 6266 §4.1, RFC 8187
/// §3.2). The quoted `filename` holds only printable ASCII without `"`,
/// `\` and `%` (others become `_`); `filename*` is added when that changed
/// the name.
fn attachment_disposition(filename: &str) -> HeaderValue {
    if filename.is_empty() {
        return HeaderValue::from_static("attachment");
    }
    let ascii: String = filename
        .chars()
        .map(|c| match c {
            ' '..='~' if !matches!(c, '"' | '\\' | '%') => c,
            _ => '_',
        })
        .collect();
    let mut value = format!("attachment; filename=\"{ascii}\"");
    if ascii != filename {
        value.push_str("; filename*=UTF-8''");
        value.push_str(&percent_encoding::utf8_percent_encode(filename, ATTR_CHAR).to_string());
    }
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

/// Everything but RFC 8187's `attr-char` is percent-encoded.
const ATTR_CHAR: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

// ---------------------------------------------------------------------------
// Serving

/// [`serve_download`] without a file name (content never needs saving
/// under a name: replication peers, OCI, generated types).
pub async fn serve_blob(
    ferry: &Ferry,
    method: &Method,
    headers: &HeaderMap,
    digest: &Digest,
    content_type: &str,
    last_modified: Option<i64>,
) -> Result<Response, CoreError> {
    serve_download(ferry, method, headers, digest, content_type, last_modified, None).await
}

/// Streams a blob (GET, HEAD): the content rule of [`content_headers`]
/// (`filename` names an attachment), `ETag` (the digest) and
/// `Last-Modified` (`last_modified`, ms since the epoch), the conditional
/// requests of RFC 9110 §13 as [`decide`] evaluates them (412, 304,
/// `If-Range`), and one byte range on GET (206, 416; RFC 9110 §14). HEAD
/// answers as GET would without a range, with no body.
///
/// Integrity: a GET of the whole blob, or of a range that covers all of
/// it, is verified as it streams (the store hashes the bytes on its
/// reading thread and holds back the last chunk until the hash is known;
/// see `BlobStore::get`). If the bytes do not hash to the digest the
/// body ends with an error instead of that chunk: the connection is cut
/// short of `Content-Length`, so the client sees a broken transfer
/// (curl: exit 18), never a complete file under the right `ETag`. The blob
/// is quarantined at that moment, so the next request answers 500 naming
/// it, and `/health` and `ferry_blobs_damaged` count it. A range that
/// leaves part of the blob out is served only from a file the store has
/// hashed whole since it last changed; otherwise the whole file is hashed
/// first, and a corrupt one answers 500 like any other damaged blob.
pub async fn serve_download(
    ferry: &Ferry,
    method: &Method,
    headers: &HeaderMap,
    digest: &Digest,
    content_type: &str,
    last_modified: Option<i64>,
    filename: Option<&str>,
) -> Result<Response, CoreError> {
    let tag = etag(digest);
    let modified = last_modified.map(|ms| UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64));
    let honour_range = match decide(headers, method, &tag, modified) {
        Decision::NotModified => {
            return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, tag)]).into_response());
        }
        Decision::PreconditionFailed => {
            return Ok((
                StatusCode::PRECONDITION_FAILED,
                [(header::ETAG, tag)],
                "precondition failed: the representation does not match\n",
            )
                .into_response());
        }
        Decision::Serve { honour_range } => honour_range,
    };
    let size = ferry.stored_blob_size(digest).await?;
    let range = if honour_range {
        parse_range(headers.get(header::RANGE), size)
    } else {
        RangeRequest::Whole
    };
    let content = content_headers(content_type, filename);
    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, content.content_type)
        .header(header::ETAG, &tag)
        .header(header::ACCEPT_RANGES, "bytes");
    if let Some(disposition) = content.disposition {
        builder = builder.header(header::CONTENT_DISPOSITION, disposition);
    }
    if let Some(t) = modified {
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
        assert_eq!(r("Bytes=0-3", 10), RangeRequest::Part(0..4));
        assert_eq!(r("bytes=5-", 10), RangeRequest::Part(5..10));
        assert_eq!(r("bytes=-3", 10), RangeRequest::Part(7..10));
        assert_eq!(r("bytes=8-100", 10), RangeRequest::Part(8..10));
        assert_eq!(r("bytes=10-", 10), RangeRequest::Unsatisfiable);
        assert_eq!(r("bytes=5-2", 10), RangeRequest::Unsatisfiable);
        assert_eq!(r("bytes=x-2", 10), RangeRequest::Unsatisfiable);
        assert_eq!(r("bytes=0-1,4-5", 10), RangeRequest::Whole);
        assert_eq!(r("items=0-1", 10), RangeRequest::Whole);
        assert_eq!(r("byte", 10), RangeRequest::Whole);
        // Positions past a u64 are valid and clamp like any end past the
        // size; only digits are positions.
        assert_eq!(r("bytes=0-18446744073709551616", 10), RangeRequest::Part(0..10));
        assert_eq!(
            r("bytes=2-999999999999999999999999", 10),
            RangeRequest::Part(2..10)
        );
        assert_eq!(r("bytes=-99999999999999999999", 10), RangeRequest::Part(0..10));
        assert_eq!(r("bytes=99999999999999999999-", 10), RangeRequest::Unsatisfiable);
        assert_eq!(r("bytes=+1-2", 10), RangeRequest::Unsatisfiable);
    }

    const TAG: &str = "\"sha256:ab\"";

    fn decide_with(method: Method, pairs: &[(&str, &str)], lm: Option<u64>) -> Decision {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        decide(&h, &method, TAG, lm.map(|s| UNIX_EPOCH + Duration::from_secs(s)))
    }

    fn get(pairs: &[(&str, &str)]) -> Decision {
        decide_with(Method::GET, pairs, Some(1_000_000))
    }

    const SERVE: Decision = Decision::Serve { honour_range: false };
    const RANGE: Decision = Decision::Serve { honour_range: true };

    #[test]
    fn preconditions_in_rfc_9110_order() {
        let date = |s: u64| httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(get(&[]), SERVE);
        // If-Match: strong comparison; `*`; lists; commas inside quotes.
        assert_eq!(get(&[("if-match", TAG)]), SERVE);
        assert_eq!(get(&[("if-match", "*")]), SERVE);
        assert_eq!(get(&[("if-match", "\"x\", \"sha256:ab\"")]), SERVE);
        assert_eq!(get(&[("if-match", "\"x\""), ("if-match", TAG)]), SERVE);
        assert_eq!(
            get(&[("if-match", "W/\"sha256:ab\"")]),
            Decision::PreconditionFailed
        );
        assert_eq!(get(&[("if-match", "\"a,b\"")]), Decision::PreconditionFailed);
        assert_eq!(get(&[("if-match", "sha256:ab")]), Decision::PreconditionFailed);
        // If-Unmodified-Since, ignored under If-Match and when not a date.
        assert_eq!(
            get(&[("if-unmodified-since", &date(999_999))]),
            Decision::PreconditionFailed
        );
        assert_eq!(get(&[("if-unmodified-since", &date(1_000_000))]), SERVE);
        assert_eq!(
            get(&[("if-match", TAG), ("if-unmodified-since", &date(1))]),
            SERVE
        );
        assert_eq!(get(&[("if-unmodified-since", "yesterday")]), SERVE);
        // If-None-Match: weak comparison; `*`.
        assert_eq!(get(&[("if-none-match", TAG)]), Decision::NotModified);
        assert_eq!(
            get(&[("if-none-match", "W/\"sha256:ab\"")]),
            Decision::NotModified
        );
        assert_eq!(get(&[("if-none-match", "*")]), Decision::NotModified);
        assert_eq!(get(&[("if-none-match", "\"other\"")]), SERVE);
        // If-Modified-Since: only without If-None-Match.
        assert_eq!(
            get(&[("if-modified-since", &date(1_000_000))]),
            Decision::NotModified
        );
        assert_eq!(get(&[("if-modified-since", &date(999_999))]), SERVE);
        assert_eq!(
            get(&[
                ("if-none-match", "\"other\""),
                ("if-modified-since", &date(2_000_000))
            ]),
            SERVE
        );
        assert_eq!(
            decide_with(Method::GET, &[("if-modified-since", &date(2_000_000))], None),
            SERVE
        );
        // If-Range: only with a Range on GET; strong tags only; dates never.
        assert_eq!(get(&[("range", "bytes=1-")]), RANGE);
        assert_eq!(get(&[("range", "bytes=1-"), ("if-range", TAG)]), RANGE);
        assert_eq!(get(&[("range", "bytes=1-"), ("if-range", "\"old\"")]), SERVE);
        assert_eq!(
            get(&[("range", "bytes=1-"), ("if-range", "W/\"sha256:ab\"")]),
            SERVE
        );
        assert_eq!(
            get(&[("range", "bytes=1-"), ("if-range", &date(1_000_000))]),
            SERVE
        );
        assert_eq!(get(&[("if-range", "\"old\"")]), SERVE);
        assert_eq!(decide_with(Method::HEAD, &[("range", "bytes=1-")], None), SERVE);
    }

    fn served(stored: &str, name: &str) -> (String, Option<String>) {
        let c = content_headers(stored, Some(name));
        (
            c.content_type.to_str().unwrap().to_owned(),
            c.disposition.map(|d| d.to_str().unwrap().to_owned()),
        )
    }

    #[test]
    fn content_rule() {
        let inline = |t: &str| (t.to_owned(), None);
        let saved = |t: &str, d: &str| (t.to_owned(), Some(d.to_owned()));
        for passive in [
            "text/plain",
            "text/plain; charset=utf-8",
            "image/png",
            "application/json",
            "application/octet-stream",
            "application/gzip",
            "application/vnd.oci.image.manifest.v1+json",
            "video/mp4",
        ] {
            assert_eq!(served(passive, "f"), inline(passive), "{passive}");
        }
        for active in [
            "text/html",
            "TEXT/HTML; charset=utf-8",
            "application/xhtml+xml",
            "image/svg+xml",
            "text/xml",
            "application/xml",
            "application/rss+xml",
            "text/javascript",
            "application/javascript",
            "application/x-javascript",
            "application/ecmascript",
            "text/css",
            "text/xsl",
            "multipart/x-mixed-replace; boundary=x",
            "html",
            "text/html\"",
            "",
        ] {
            assert_eq!(
                served(active, "a.b"),
                saved("application/octet-stream", "attachment; filename=\"a.b\""),
                "{active}"
            );
        }
        assert_eq!(
            served("application/pdf", "doc.pdf"),
            saved("application/pdf", "attachment; filename=\"doc.pdf\"")
        );
        assert_eq!(
            served("text/html", "r\u{e9}sum\u{e9} \"1\".html"),
            saved(
                "application/octet-stream",
                "attachment; filename=\"r_sum_ _1_.html\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20%221%22.html"
            )
        );
        assert_eq!(
            content_headers("text/html", None).disposition,
            Some(HeaderValue::from_static("attachment"))
        );
    }
}
