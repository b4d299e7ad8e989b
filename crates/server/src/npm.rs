//! `/npm/FEED/`: the npm registry protocol (publish, install, view,
//! dist-tag, deprecate, unpublish, whoami, ping, login, logout, search).
//!
//! `npm login` works as with other private registries: web login
//! (`POST /-/v1/login`) answers 404, so npm falls back to the classic
//! `PUT /-/user/org.couchdb.user:NAME`, where any user name and an API key
//! as the password are accepted: the answer's `token` is the key itself,
//! which npm stores in `.npmrc`. A password that is no key is refused (401,
//! saying so). `npm logout` (`DELETE /-/user/token/…`) answers success and
//! revokes nothing: the token is an API key the administrator manages
//! (other machines and CI may share it); npm forgets it locally.
//!
//! Scoped names contain a `/` once decoded (`@scope%2fpkg` from npm,
//! `@scope/pkg/-/pkg-1.0.0.tgz` in tarball URLs), so the path after
//! `/npm/{feed}/` is decoded once and parsed here into an [`Endpoint`],
//! behind one wildcard route per method. Errors are JSON
//! (`{"error": "..."}`), as npm shows them.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use ferry_core::npm::{self, PutOutcome};
use ferry_core::{CoreError, Ferry};
use ferry_formats::npm as format;
use ferry_store::{ByteStream, FeedRecord};
use futures::TryStreamExt as _;
use serde_json::json;

use crate::AppState;
use crate::access::FeedAccess;
use crate::blobs::{rendered_response, serve_download};
use crate::edge::{body_too_large, check_content_length};
use crate::error::ApiError;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/npm/{feed}", get(root))
        .route("/npm/{feed}/", get(root))
        .route(
            "/npm/{feed}/-/user/{*rest}",
            get(user_get).put(login).delete(logout).post(unsupported_post),
        )
        .route(
            "/npm/{feed}/{*rest}",
            get(read).put(write).delete(remove).post(unsupported_post),
        )
}

/// Largest `npm dist-tag add` body (a JSON string holding a version).
const DIST_TAG_BODY_LIMIT: usize = 4 << 10;

const LOGIN_UNSUPPORTED: &str = "web login is not supported by this registry: log in with any user \
     name and an API key as the password (npm falls back to that by itself)";

/// Largest `npm login` body (user name, password, email, date).
const LOGIN_BODY_LIMIT: usize = 64 << 10;

const LOGIN_HOW: &str = "log in with any user name and an API key of this registry as the password";

/// What a request under `/npm/{feed}/` is about.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    /// `-/ping`
    Ping,
    /// `-/whoami`
    Whoami,
    /// `-/v1/search`
    Search,
    /// `-/user/…` and `-/v1/login` (npm login / adduser)
    Login,
    /// `-/package/{name}/dist-tags`
    DistTags {
        name: String,
    },
    /// `-/package/{name}/dist-tags/{tag}`
    DistTag {
        name: String,
        tag: String,
    },
    /// `{name}` or `{name}/-rev/{rev}`
    Package {
        name: String,
        rev: Option<String>,
    },
    /// `{name}/{version-or-tag}`
    Version {
        name: String,
        spec: String,
    },
    /// `{name}/-/{file}`
    Tarball {
        name: String,
        file: String,
    },
    /// `{name}/-/{file}/-rev/{rev}`, sent after an unpublish (also with the
    /// registry prefix doubled).
    TarballRev,
    Unknown,
}

/// Parses the path (as sent, percent-encoded) of a request under
/// `/npm/{feed}/`.
fn endpoint(path: &str, feed: &str) -> Result<Endpoint, CoreError> {
    let raw = path
        .trim_start_matches('/')
        .splitn(3, '/')
        .nth(2)
        .unwrap_or_default();
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| CoreError::invalid("the request path is not valid UTF-8 once percent-decoded"))?;
    let segs: Vec<&str> = decoded.split('/').collect();
    let parsed = parse_segments(&segs);
    // npm resolves the tarball path of an unpublished version against the
    // registry root: `/npm/{feed}/npm/{feed}/{name}/-/{file}/-rev/{rev}`.
    if parsed == Endpoint::Unknown
        && segs.len() > 2
        && segs[0] == "npm"
        && segs[1] == feed
        && parse_segments(&segs[2..]) == Endpoint::TarballRev
    {
        return Ok(Endpoint::TarballRev);
    }
    Ok(parsed)
}

/// `name` (one segment) or `@scope/name` (two), and what follows.
fn split_name<'a>(segs: &'a [&'a str]) -> Option<(String, &'a [&'a str])> {
    let first = *segs.first()?;
    if first.is_empty() {
        return None;
    }
    if first.starts_with('@') {
        let second = *segs.get(1)?;
        Some((format!("{first}/{second}"), &segs[2..]))
    } else {
        Some((first.to_owned(), &segs[1..]))
    }
}

fn parse_segments(segs: &[&str]) -> Endpoint {
    if segs.first() == Some(&"-") {
        return match &segs[1..] {
            ["ping"] => Endpoint::Ping,
            ["whoami"] => Endpoint::Whoami,
            ["v1", "search"] => Endpoint::Search,
            ["user", ..] | ["v1", "login", ..] => Endpoint::Login,
            ["package", rest @ ..] => match split_name(rest) {
                Some((name, ["dist-tags"])) => Endpoint::DistTags { name },
                Some((name, ["dist-tags", tag])) if !tag.is_empty() => Endpoint::DistTag {
                    name,
                    tag: (*tag).to_owned(),
                },
                _ => Endpoint::Unknown,
            },
            _ => Endpoint::Unknown,
        };
    }
    let Some((name, rest)) = split_name(segs) else {
        return Endpoint::Unknown;
    };
    match rest {
        [] => Endpoint::Package { name, rev: None },
        ["-rev", rev] if !rev.is_empty() => Endpoint::Package {
            name,
            rev: Some((*rev).to_owned()),
        },
        ["-", file @ ..] => {
            // The file is one segment, or two for the old scoped form
            // `@scope/pkg-1.0.0.tgz`; then optionally `-rev/{rev}`.
            let (file, after) = match file {
                [scope, f, after @ ..] if scope.starts_with('@') => (format!("{scope}/{f}"), after),
                [f, after @ ..] if !f.is_empty() => ((*f).to_owned(), after),
                _ => return Endpoint::Unknown,
            };
            let file = match file.split_once('/') {
                Some((scope, f)) if name.starts_with(&format!("{scope}/")) => f.to_owned(),
                Some(_) => return Endpoint::Unknown,
                None => file,
            };
            match after {
                [] => Endpoint::Tarball { name, file },
                ["-rev", rev] if !rev.is_empty() => Endpoint::TarballRev,
                _ => Endpoint::Unknown,
            }
        }
        [spec] if !spec.is_empty() && !spec.starts_with('-') => Endpoint::Version {
            name,
            spec: (*spec).to_owned(),
        },
        _ => Endpoint::Unknown,
    }
}

/// The registry root as clients should see it, for absolute tarball URLs
/// (npm needs them absolute): `{base_url}/npm/FEED` when the instance has
/// an external base URL (behind a reverse proxy, with or without a path
/// prefix); otherwise as the client reached it, with the scheme from
/// `X-Forwarded-Proto` (else http) and the host from `Host` (else the
/// request target's authority).
fn registry_base(
    ferry: &Ferry,
    headers: &HeaderMap,
    uri: &Uri,
    feed: &FeedRecord,
) -> Result<String, CoreError> {
    if ferry.config().base_url.is_some() {
        let origin = crate::public_origin(ferry, headers, None)?;
        return Ok(format!("{origin}/npm/{}", feed.name));
    }
    request_base(headers, uri, feed)
}

fn request_base(headers: &HeaderMap, uri: &Uri, feed: &FeedRecord) -> Result<String, CoreError> {
    let authority = uri.authority().map(|a| a.as_str());
    crate::request_origin_with(headers, authority, &["/npm/", feed.name.as_str()])
}

fn json_response(status: StatusCode, value: serde_json::Value) -> Response {
    (status, axum::Json(value)).into_response()
}

fn not_found() -> CoreError {
    CoreError::not_found(npm::NOT_FOUND)
}

// ---------------------------------------------------------------------------
// Handlers

async fn root(_access: FeedAccess) -> Result<Response, ApiError> {
    Err(ApiError::json(not_found()))
}

async fn read(State(st): State<AppState>, access: FeedAccess, req: Request) -> Result<Response, ApiError> {
    // The request's own parts, borrowed (extracting `Method`, `Uri` and
    // `HeaderMap` would copy them).
    let (parts, _) = req.into_parts();
    read_inner(&st.ferry, &access, &parts.method, &parts.uri, &parts.headers)
        .await
        .map_err(ApiError::json)
}

async fn write(
    State(st): State<AppState>,
    access: FeedAccess,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    write_inner(&st.ferry, &access, &uri, &headers, body)
        .await
        .map_err(ApiError::json)
}

async fn remove(State(st): State<AppState>, access: FeedAccess, uri: Uri) -> Result<Response, ApiError> {
    remove_inner(&st.ferry, &access, &uri)
        .await
        .map_err(ApiError::json)
}

/// Nothing under an npm feed takes POST (npm audit, npm login): answer in
/// npm's JSON error form rather than with a bare 405.
async fn unsupported_post(uri: Uri) -> Result<Response, ApiError> {
    let feed = uri
        .path()
        .trim_start_matches('/')
        .split('/')
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    match endpoint(uri.path(), &feed) {
        Ok(Endpoint::Login) => Err(ApiError::json(CoreError::not_found(LOGIN_UNSUPPORTED))),
        _ => Err(ApiError::json(not_found())),
    }
}

/// `PUT /-/user/org.couchdb.user:NAME` (npm login, npm adduser): the
/// password must be an API key that may read the feed; the answer's token
/// is that key.
async fn login(
    State(st): State<AppState>,
    Path((feed, rest)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    login_inner(&st.ferry, &feed, &rest, &headers, body)
        .await
        .map_err(ApiError::json)
}

/// The user name of `org.couchdb.user:NAME` (optionally `/-rev/REV`).
fn login_user(rest: &str) -> Option<String> {
    let first = rest.split('/').next()?;
    let decoded = percent_encoding::percent_decode_str(first).decode_utf8().ok()?;
    let name = decoded.strip_prefix("org.couchdb.user:")?;
    (!name.is_empty() && name.len() <= 214 && !name.chars().any(char::is_control)).then(|| name.to_owned())
}

async fn login_inner(
    ferry: &Ferry,
    feed: &str,
    rest: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, CoreError> {
    let user = login_user(rest)
        .ok_or_else(|| CoreError::invalid("expected PUT /-/user/org.couchdb.user:NAME (npm login)"))?;
    let body = read_body(headers, body, LOGIN_BODY_LIMIT).await?;
    let doc: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| CoreError::invalid(format!("the login body is not JSON: {e}")))?;
    // The password; without one, a key presented in the request (a
    // client already holding a token logs in again).
    let presented = crate::access::presented_secret(headers)?.filter(|k| !k.is_empty());
    let password = doc
        .get("password")
        .and_then(serde_json::Value::as_str)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .or(presented)
        .ok_or_else(|| CoreError::Unauthorized(format!("no password was given: {LOGIN_HOW}")))?;
    let password = password.as_str();
    let principal = ferry.authenticate(password).await.map_err(|e| match e {
        CoreError::Unauthorized(_) => CoreError::Unauthorized(format!(
            "incorrect password for user {user}: the password is not an API key of this registry; {LOGIN_HOW}"
        )),
        e => e,
    })?;
    // The feed as a read would see it with this key: a private feed the
    // key may not read is no feed.
    let name = ferry_types::FeedName::new(feed).map_err(|e| CoreError::not_found(e.to_string()))?;
    let found = match ferry.feed(&name).await {
        Ok(f) => Some(f),
        Err(CoreError::NotFound(_)) => None,
        Err(e) => return Err(e),
    };
    let record = ferry_core::auth::visible_feed(Some(&principal), &name, found, ferry_core::Action::Read)?;
    if record.feed_type != ferry_types::FeedType::Npm {
        return Err(CoreError::not_found(format!(
            "feed {name} is a {} feed, not npm",
            record.feed_type
        )));
    }
    Ok(json_response(
        StatusCode::CREATED,
        json!({
            "ok": true,
            "id": format!("org.couchdb.user:{user}"),
            "rev": "1-ferry",
            "token": password,
            "key": principal.key.name,
        }),
    ))
}

/// `GET /-/user/org.couchdb.user:NAME`: there are no user documents.
async fn user_get() -> Result<Response, ApiError> {
    Err(ApiError::json(CoreError::not_found(format!(
        "this registry has no user accounts; {LOGIN_HOW}"
    ))))
}

/// `DELETE /-/user/token/TOKEN` (npm logout): success, revoking nothing
/// (the token is an API key, which only the management API deletes).
async fn logout(Path((_feed, rest)): Path<(String, String)>) -> Result<Response, ApiError> {
    if !rest.starts_with("token/") {
        return Err(ApiError::json(not_found()));
    }
    Ok(json_response(StatusCode::OK, json!({ "ok": true })))
}

async fn read_inner(
    ferry: &Ferry,
    access: &FeedAccess,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Response, CoreError> {
    let feed = &access.feed;
    match endpoint(uri.path(), feed.name.as_str())? {
        Endpoint::Ping => Ok(json_response(StatusCode::OK, json!({}))),
        Endpoint::Whoami => match &access.principal {
            Some(p) => Ok(json_response(StatusCode::OK, json!({ "username": p.key.name }))),
            None => Err(CoreError::Unauthorized(
                "not logged in: no API key was presented".into(),
            )),
        },
        Endpoint::Package { name, rev: None } => {
            let base = registry_base(ferry, headers, uri, feed)?;
            let p = npm::packument(ferry, feed, &name, &base).await?;
            let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
            let (body, content_type, etag) = if format::wants_abbreviated(accept, uri.query()) {
                (
                    p.abbreviated,
                    format::ABBREVIATED_MEDIA_TYPE,
                    ["W/\"", &p.rev, "-abbreviated\""].concat(),
                )
            } else {
                (p.full, "application/json", ["\"", &p.rev, "\""].concat())
            };
            Ok(index_response(method, headers, feed, body, content_type, etag))
        }
        Endpoint::Version { name, spec } => {
            let base = registry_base(ferry, headers, uri, feed)?;
            let p = npm::packument(ferry, feed, &name, &base).await?;
            let doc: serde_json::Value = serde_json::from_slice(&p.full)
                .map_err(|e| CoreError::Internal(format!("packument of {name}: {e}")))?;
            let version = doc["dist-tags"][spec.as_str()]
                .as_str()
                .unwrap_or(spec.as_str())
                .to_owned();
            match doc["versions"].get(&version) {
                Some(manifest) => Ok(json_response(StatusCode::OK, manifest.clone())),
                None => Err(CoreError::not_found(format!("{name}@{spec} not found"))),
            }
        }
        Endpoint::DistTags { name } => {
            let base = registry_base(ferry, headers, uri, feed)?;
            let p = npm::packument(ferry, feed, &name, &base).await?;
            Ok(([(header::CONTENT_TYPE, "application/json")], p.dist_tags).into_response())
        }
        Endpoint::DistTag { name, tag } => {
            let version = npm::dist_tag(ferry, feed, &name, &tag).await?;
            Ok(json_response(StatusCode::OK, json!(version)))
        }
        Endpoint::Tarball { name, file } => {
            let t = npm::tarball(ferry, feed, &name, &file).await?;
            let resp = serve_download(
                ferry,
                method,
                headers,
                &t.digest,
                "application/octet-stream",
                Some(t.published),
                Some(&file),
            )
            .await?;
            if method == Method::GET && resp.status() == StatusCode::OK {
                ferry.count_download(feed, &t.key);
            }
            Ok(resp)
        }
        Endpoint::Search => {
            let q = SearchQuery::parse(uri.query())?;
            let base = registry_base(ferry, headers, uri, feed)?;
            let page = npm::search(ferry, feed, &q.text, q.from, q.size).await?;
            let mut resp = json_response(StatusCode::OK, render_search(&page, &base));
            let cache = if feed.private {
                "private, no-cache"
            } else {
                "no-cache"
            };
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
            Ok(resp)
        }
        Endpoint::Login => Err(CoreError::not_found(LOGIN_UNSUPPORTED)),
        Endpoint::Package { rev: Some(_), .. } | Endpoint::TarballRev | Endpoint::Unknown => Err(not_found()),
    }
}

/// The parameters of `GET /-/v1/search`.
#[derive(Debug, PartialEq)]
struct SearchQuery {
    text: String,
    size: usize,
    from: usize,
}

/// Longest search text accepted.
const MAX_SEARCH_TEXT: usize = 1024;

impl SearchQuery {
    /// `text`, `size` (default 20, at most [`npm::MAX_SEARCH_SIZE`]: more
    /// is capped), `from` (default 0); `quality`, `popularity` and
    /// `maintenance` weights must be numbers if given, and are otherwise
    /// ignored. Anything malformed is refused (400) naming it.
    fn parse(query: Option<&str>) -> Result<Self, CoreError> {
        let mut q = SearchQuery {
            text: String::new(),
            size: 20,
            from: 0,
        };
        for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8()
                .map_err(|_| CoreError::invalid(format!("search parameter {k} is not valid UTF-8")))?
                .into_owned();
            let number = |v: &str| {
                v.trim().parse::<usize>().map_err(|_| {
                    CoreError::invalid(format!(
                        "search parameter {k} must be a non-negative integer, not {v:?}"
                    ))
                })
            };
            match k {
                "text" => q.text = v,
                "size" => q.size = number(&v)?.min(npm::MAX_SEARCH_SIZE),
                "from" => q.from = number(&v)?,
                "quality" | "popularity" | "maintenance"
                    if !v.is_empty() && v.trim().parse::<f64>().map_or(true, |f| !f.is_finite()) =>
                {
                    return Err(CoreError::invalid(format!(
                        "search parameter {k} must be a number, not {v:?}"
                    )));
                }
                _ => {}
            }
        }
        if q.text.chars().count() > MAX_SEARCH_TEXT {
            return Err(CoreError::invalid(format!(
                "the search text is longer than {MAX_SEARCH_TEXT} characters"
            )));
        }
        if q.size == 0 {
            return Err(CoreError::invalid("search parameter size must be at least 1"));
        }
        Ok(q)
    }
}

/// A search page in the shape of the npm registry's answer.
fn render_search(page: &npm::SearchPage, base: &str) -> serde_json::Value {
    let objects: Vec<serde_json::Value> = page
        .hits
        .iter()
        .map(|(e, score)| {
            let publisher = e
                .publisher
                .clone()
                .or_else(|| e.maintainers.first().map(|(u, _)| u.clone()))
                .unwrap_or_default();
            // A package that names no maintainers is maintained by whoever
            // published it (npm prints an empty list as a blank line).
            let mut maintainers: Vec<serde_json::Value> = e
                .maintainers
                .iter()
                .map(|(u, m)| json!({ "username": u, "email": m }))
                .collect();
            if maintainers.is_empty() && !publisher.is_empty() {
                maintainers.push(json!({ "username": publisher, "email": "" }));
            }
            let mut links = serde_json::Map::new();
            links.insert("npm".into(), json!(format!("{base}/{}", e.name)));
            for (k, v) in [
                ("homepage", &e.homepage),
                ("repository", &e.repository),
                ("bugs", &e.bugs),
            ] {
                if let Some(v) = v {
                    links.insert(k.into(), json!(v));
                }
            }
            let fin = score / (score + 10.0);
            json!({
                "package": {
                    "name": e.name,
                    "scope": e.name.strip_prefix('@').and_then(|s| s.split_once('/')).map_or("unscoped", |(s, _)| s),
                    "version": e.version,
                    "description": e.description,
                    "keywords": e.keywords,
                    "date": e.date,
                    "publisher": { "username": publisher },
                    "maintainers": maintainers,
                    "links": links,
                },
                "score": {
                    "final": fin,
                    "detail": { "quality": fin, "popularity": fin, "maintenance": fin },
                },
                "searchScore": score,
            })
        })
        .collect();
    let now = ferry_store::now_millis();
    json!({
        "objects": objects,
        "total": page.total,
        "time": ferry_types::rfc3339_millis(now),
    })
}

/// A rendered index with its validators ([`rendered_response`]); 304 when
/// the client has it. The abbreviated and full packuments share the URL.
fn index_response(
    method: &Method,
    headers: &HeaderMap,
    feed: &FeedRecord,
    body: Bytes,
    content_type: &'static str,
    etag: String,
) -> Response {
    let mut resp = rendered_response(method, headers, feed.private, body, content_type, etag);
    resp.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("Accept"));
    resp
}

async fn write_inner(
    ferry: &Ferry,
    access: &FeedAccess,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, CoreError> {
    let feed = &access.feed;
    match endpoint(uri.path(), feed.name.as_str())? {
        Endpoint::Package { name, rev } => {
            // Streamed: a publish body carries the whole tarball.
            check_content_length(headers, npm::put_body_limit(ferry))?;
            let body: ByteStream = Box::pin(body.into_data_stream().map_err(std::io::Error::other));
            let publisher = access.principal.as_ref().map(|p| p.key.name.as_str());
            match npm::put_package(ferry, feed, &name, body, rev.as_deref(), publisher).await? {
                PutOutcome::Published { version, dist_tags } => Ok(json_response(
                    StatusCode::CREATED,
                    json!({ "ok": true, "id": name, "version": version, "dist-tags": dist_tags }),
                )),
                PutOutcome::Updated {
                    deprecated,
                    undeprecated,
                    removed,
                } => Ok(json_response(
                    StatusCode::OK,
                    json!({
                        "ok": true,
                        "id": name,
                        "deprecated": deprecated,
                        "undeprecated": undeprecated,
                        "removed": removed,
                    }),
                )),
            }
        }
        Endpoint::DistTag { name, tag } => {
            let body = read_body(headers, body, DIST_TAG_BODY_LIMIT).await?;
            let version = npm::set_dist_tag(ferry, feed, &name, &tag, &body).await?;
            Ok(json_response(
                StatusCode::CREATED,
                json!({ "ok": true, "id": name, "dist-tags": { tag: version } }),
            ))
        }
        Endpoint::Login => Err(CoreError::not_found(LOGIN_UNSUPPORTED)),
        _ => Err(not_found()),
    }
}

async fn remove_inner(ferry: &Ferry, access: &FeedAccess, uri: &Uri) -> Result<Response, CoreError> {
    let feed = &access.feed;
    match endpoint(uri.path(), feed.name.as_str())? {
        Endpoint::Package { name, rev } => {
            let removed = npm::delete_package(ferry, feed, &name, rev.as_deref()).await?;
            Ok(json_response(
                StatusCode::OK,
                json!({ "ok": true, "id": name, "removed": removed }),
            ))
        }
        Endpoint::DistTag { name, tag } => {
            npm::delete_dist_tag(ferry, feed, &name, &tag).await?;
            Ok(json_response(StatusCode::OK, json!({ "ok": true, "id": name })))
        }
        // The tarball goes with its version, which the unpublish PUT before
        // this request already removed.
        Endpoint::TarballRev => Ok(json_response(StatusCode::OK, json!({ "ok": true }))),
        _ => Err(not_found()),
    }
}

/// Reads a whole (small) request body, refusing (413) one over `limit` bytes.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, CoreError> {
    check_content_length(headers, limit as u64)?;
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let e = e.into_inner();
        if e.is::<http_body_util::LengthLimitError>() {
            body_too_large(limit as u64)
        } else {
            CoreError::from_body_error(&*e)
                .unwrap_or_else(|| CoreError::invalid(format!("could not read the request body: {e}")))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(path: &str) -> Endpoint {
        endpoint(path, "f").unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn s(v: &str) -> String {
        v.to_owned()
    }

    #[test]
    fn paths() {
        assert_eq!(ep("/npm/f/-/ping"), Endpoint::Ping);
        assert_eq!(ep("/npm/f/-/whoami"), Endpoint::Whoami);
        assert_eq!(ep("/npm/f/-/user/org.couchdb.user:me"), Endpoint::Login);
        assert_eq!(
            ep("/npm/f/left-pad"),
            Endpoint::Package {
                name: s("left-pad"),
                rev: None
            }
        );
        assert_eq!(
            ep("/npm/f/@s%2fp"),
            Endpoint::Package {
                name: s("@s/p"),
                rev: None
            }
        );
        assert_eq!(
            ep("/npm/f/@s%2Fp/-rev/3-abc"),
            Endpoint::Package {
                name: s("@s/p"),
                rev: Some(s("3-abc"))
            }
        );
        assert_eq!(
            ep("/npm/f/@s/p/-/p-1.0.0.tgz"),
            Endpoint::Tarball {
                name: s("@s/p"),
                file: s("p-1.0.0.tgz")
            }
        );
        assert_eq!(
            ep("/npm/f/@s%2fp/-/p-1.0.0.tgz"),
            Endpoint::Tarball {
                name: s("@s/p"),
                file: s("p-1.0.0.tgz")
            }
        );
        assert_eq!(
            ep("/npm/f/@s/p/-/@s/p-1.0.0.tgz"),
            Endpoint::Tarball {
                name: s("@s/p"),
                file: s("p-1.0.0.tgz")
            }
        );
        assert_eq!(
            ep("/npm/f/p/-/p-1.0.0.tgz"),
            Endpoint::Tarball {
                name: s("p"),
                file: s("p-1.0.0.tgz")
            }
        );
        assert_eq!(ep("/npm/f/p/-/p-1.0.0.tgz/-rev/4-x"), Endpoint::TarballRev);
        assert_eq!(
            ep("/npm/f/npm/f/@s/p/-/p-1.0.0.tgz/-rev/4-x"),
            Endpoint::TarballRev
        );
        assert_eq!(ep("/npm/f/npm/g/p/-/p-1.0.0.tgz/-rev/4-x"), Endpoint::Unknown);
        assert_eq!(
            ep("/npm/f/p/1.0.0"),
            Endpoint::Version {
                name: s("p"),
                spec: s("1.0.0")
            }
        );
        assert_eq!(
            ep("/npm/f/@s%2fp/latest"),
            Endpoint::Version {
                name: s("@s/p"),
                spec: s("latest")
            }
        );
        assert_eq!(
            ep("/npm/f/-/package/@s%2fp/dist-tags"),
            Endpoint::DistTags { name: s("@s/p") }
        );
        assert_eq!(
            ep("/npm/f/-/package/p/dist-tags/beta"),
            Endpoint::DistTag {
                name: s("p"),
                tag: s("beta")
            }
        );
        assert_eq!(ep("/npm/f/-/v1/search"), Endpoint::Search);
        for unknown in [
            "/npm/f/-/v1/search/x",
            "/npm/f/p/",
            "/npm/f/@s",
            "/npm/f/p/-/",
            "/npm/f/p/a/b",
        ] {
            assert_eq!(ep(unknown), Endpoint::Unknown, "{unknown}");
        }
        assert!(endpoint("/npm/f/%ff", "f").is_err());
    }

    #[test]
    fn login_paths_and_search_parameters() {
        assert_eq!(login_user("org.couchdb.user:alice").as_deref(), Some("alice"));
        assert_eq!(
            login_user("org.couchdb.user:a%40b/-rev/1-x").as_deref(),
            Some("a@b")
        );
        assert_eq!(login_user("org.couchdb.user:"), None);
        assert_eq!(login_user("alice"), None);
        assert_eq!(login_user("org.couchdb.user:%ff"), None);
        let q = SearchQuery::parse(Some("text=left+pad&size=5&from=2&quality=0.5"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            q,
            SearchQuery {
                text: s("left pad"),
                size: 5,
                from: 2
            }
        );
        let q = SearchQuery::parse(None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((q.text.as_str(), q.size, q.from), ("", 20, 0));
        let q = SearchQuery::parse(Some("size=9999")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(q.size, npm::MAX_SEARCH_SIZE);
        for bad in [
            "size=x",
            "size=0",
            "from=-1",
            "popularity=NaN",
            "maintenance=x",
            "text=%ff",
        ] {
            assert!(SearchQuery::parse(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn base_from_host_and_forwarded_proto() {
        let feed = FeedRecord {
            id: 1,
            name: ferry_types::FeedName::new("f").unwrap_or_else(|e| panic!("{e}")),
            feed_type: ferry_types::FeedType::Npm,
            private: false,
            created_at: 0,
        };
        let uri: Uri = "/npm/f/p".parse().unwrap_or_else(|e| panic!("{e}"));
        let mut h = HeaderMap::new();
        assert!(request_base(&h, &uri, &feed).is_err());
        h.insert(header::HOST, HeaderValue::from_static("example.org:8080"));
        assert_eq!(
            request_base(&h, &uri, &feed).ok().as_deref(),
            Some("http://example.org:8080/npm/f")
        );
        h.insert("x-forwarded-proto", HeaderValue::from_static("https, http"));
        assert_eq!(
            request_base(&h, &uri, &feed).ok().as_deref(),
            Some("https://example.org:8080/npm/f")
        );
        h.insert(header::HOST, HeaderValue::from_static("evil\"host"));
        assert!(request_base(&h, &uri, &feed).is_err());
    }
}
