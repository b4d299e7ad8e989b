//! The web UI, served at `/`: server-rendered pages (maud escapes every
//! value it is given), one vendored stylesheet and one script under
//! `/ui/assets/`, no inline script (`PAGE_POLICY`).
//!
//! Every action calls the same core functions as the management API
//! (`mgmt`, `mgmt_replication`, `ferry_core`, `ferry_replication`), and
//! every permission is decided by `ferry_core::auth`, as there.
//!
//! Sessions: signing in with an API key creates a session in the metadata
//! database, so every node of an instance knows it ([`Sessions`], at most
//! [`MAX_SESSIONS`], each for [`SESSION_TTL`]; the database keeps the
//! id's SHA-256 and flashes sealed with a key derived from the id); the
//! cookie (`ferry_session_` and a short hash of the instance id, so that
//! instances on two ports of one host, which browsers do not tell apart
//! for cookies, keep their own sessions; HttpOnly, SameSite=Strict, Secure
//! over TLS) holds only a random id.
//!
//! Behind a reverse proxy under a path prefix (`base_url` with a path),
//! [`under_prefix`] puts the prefix in front of every link, form action,
//! asset and redirect the pages make; the cookie's `Path` carries it too. The session keeps the key's hash, and each
//! request looks the key up again, so a deleted key signs its sessions out.
//! Every POST goes through [`Posted`]: its `Origin` (or, without one, its
//! `Referer`) must be this instance, and its form must carry the session's
//! CSRF token.

mod feeds;
mod replication;

use std::time::Duration;

use axum::extract::{FromRequest, FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use ferry_core::{CoreError, Principal, auth};
use ferry_store::Permission;
use maud::{DOCTYPE, Markup, html};

use crate::AppState;
use crate::error::ApiError;

/// The Content-Security-Policy of every UI page: scripts and styles from
/// this origin only (no inline script), forms posted here only, never framed.
pub const PAGE_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// At most this many sessions are kept on the instance; past it, signing
/// in is refused until one ends (no key can end another key's sessions).
pub const MAX_SESSIONS: usize = 1000;
/// At most this many sessions per API key; signing in past it ends that
/// key's oldest session.
pub const MAX_SESSIONS_PER_KEY: usize = 20;
/// A session ends this long after sign-in.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);

const CSS: &str = include_str!("assets/ferry.css");
const JS: &str = include_str!("assets/ferry.js");

/// Marks requests that arrived over TLS (set by the binary), so the
/// session cookie is sent `Secure`.
#[derive(Clone, Copy, Debug)]
pub struct ServedOverTls;

/// A secret to show once on the page after a redirect (POST/redirect/GET
/// for forms that create one). Stored sealed ([`Sessions::set_flash`]).
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub(crate) enum Flash {
    /// A new API key: its name and secret.
    Key { name: String, secret: String },
    /// A sync token of replication `replication`; `created`: with the
    /// replication itself.
    Token {
        replication: String,
        token: String,
        created: bool,
    },
}

/// How many capped session ids are remembered at most.
const MAX_CAPPED: usize = 10 * MAX_SESSIONS;

/// The signed-in sessions, kept in the metadata database so that every
/// node of an instance knows them ([`ferry_store::SessionStore`]).
///
/// The session id is the cookie's value and nothing else holds it: the
/// database keeps its SHA-256, the CSRF token is derived from it
/// (HKDF-SHA256), and a flash is sealed with ChaCha20-Poly1305 under a
/// key derived from it, so the database alone opens no flash and forges
/// no form.
pub struct Sessions {
    store: std::sync::Arc<dyn ferry_store::MetadataStore>,
}

/// What a session id stands for on this request.
enum SessionLookup {
    /// Signed in with the key of this hash.
    Live { key_hash: [u8; 32] },
    /// Ended by its key's per-key cap.
    Capped,
    /// Not signed in.
    Unknown,
}

/// Label of the HKDF output used as a session's CSRF token.
const CSRF_INFO: &[u8] = b"ferry ui csrf v1";
/// Label of the HKDF output used as a session's flash key.
const FLASH_INFO: &[u8] = b"ferry ui flash v1";
/// The HKDF salt of every session secret (domain separation only: the
/// session id is 256 random bits).
const SESSION_SALT: &[u8] = b"ferry ui session";

/// An HKDF output length.
struct OutLen(usize);

impl ring::hkdf::KeyType for OutLen {
    fn len(&self) -> usize {
        self.0
    }
}

fn session_prk(id: &str) -> ring::hkdf::Prk {
    ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, SESSION_SALT).extract(id.as_bytes())
}

/// The CSRF token of session `id`: 32 bytes derived from the id, in hex.
fn csrf_of(id: &str) -> String {
    let mut out = [0u8; 32];
    let prk = session_prk(id);
    let filled = prk
        .expand(&[CSRF_INFO], OutLen(out.len()))
        .and_then(|okm| okm.fill(&mut out));
    match filled {
        Ok(()) => hex::encode(out),
        // Unreachable (32 bytes is far below HKDF's limit); a token
        // nobody can send is the safe answer.
        Err(_) => auth::generate_secret(),
    }
}

fn flash_key(id: &str) -> Result<ring::aead::LessSafeKey, ring::error::Unspecified> {
    let prk = session_prk(id);
    let okm = prk.expand(&[FLASH_INFO], &ring::aead::CHACHA20_POLY1305)?;
    Ok(ring::aead::LessSafeKey::new(ring::aead::UnboundKey::from(okm)))
}

/// `flash` sealed for session `id`: a random nonce, then the ciphertext
/// and its tag; the id's hash is the associated data.
fn seal_flash(id: &str, flash: &Flash) -> Result<Vec<u8>, CoreError> {
    let fail = |what: &str| CoreError::Internal(format!("sealing a UI flash: {what}"));
    let key = flash_key(id).map_err(|_| fail("key"))?;
    let mut text = serde_json::to_vec(flash).map_err(|e| fail(&e.to_string()))?;
    let nonce: [u8; ring::aead::NONCE_LEN] = rand_nonce().map_err(|_| fail("nonce"))?;
    key.seal_in_place_append_tag(
        ring::aead::Nonce::assume_unique_for_key(nonce),
        ring::aead::Aad::from(auth::hash_secret(id)),
        &mut text,
    )
    .map_err(|_| fail("seal"))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&text);
    Ok(out)
}

fn rand_nonce() -> Result<[u8; ring::aead::NONCE_LEN], ring::error::Unspecified> {
    use ring::rand::SecureRandom;
    let mut n = [0u8; ring::aead::NONCE_LEN];
    ring::rand::SystemRandom::new().fill(&mut n)?;
    Ok(n)
}

/// The flash `sealed` for session `id`, or None when it does not open
/// (sealed for another session, or altered).
fn open_flash(id: &str, sealed: &[u8]) -> Option<Flash> {
    let key = flash_key(id).ok()?;
    if sealed.len() < ring::aead::NONCE_LEN {
        return None;
    }
    let (nonce, text) = sealed.split_at(ring::aead::NONCE_LEN);
    let nonce = ring::aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut text = text.to_vec();
    let plain = key
        .open_in_place(nonce, ring::aead::Aad::from(auth::hash_secret(id)), &mut text)
        .ok()?;
    serde_json::from_slice(plain).ok()
}

fn now_ms() -> i64 {
    ferry_store::now_millis()
}

impl Sessions {
    /// Sessions kept in `store`.
    pub fn new(store: std::sync::Arc<dyn ferry_store::MetadataStore>) -> Self {
        Self { store }
    }

    /// A new session for the key: its id. Expired sessions go first; at
    /// [`MAX_SESSIONS_PER_KEY`] the key's own oldest session ends; None at
    /// [`MAX_SESSIONS`] (sessions of other keys are never ended to make
    /// room).
    async fn create(&self, key_hash: [u8; 32]) -> Result<Option<String>, CoreError> {
        let id = auth::generate_secret();
        let now = now_ms();
        let created = self
            .store
            .create_ui_session(
                ferry_store::NewUiSession {
                    id_hash: auth::hash_secret(&id),
                    key_hash,
                    created_at: now,
                    expires_at: now.saturating_add(SESSION_TTL.as_millis() as i64),
                },
                ferry_store::UiSessionLimits {
                    per_key: MAX_SESSIONS_PER_KEY,
                    total: MAX_SESSIONS,
                    capped: MAX_CAPPED,
                },
            )
            .await?;
        Ok(match created {
            ferry_store::UiSessionCreated::Created => Some(id),
            ferry_store::UiSessionCreated::Full => None,
        })
    }

    async fn get(&self, id: &str) -> Result<SessionLookup, CoreError> {
        Ok(
            match self.store.ui_session(&auth::hash_secret(id), now_ms()).await? {
                ferry_store::UiSessionState::Live(r) => SessionLookup::Live { key_hash: r.key_hash },
                ferry_store::UiSessionState::Capped => SessionLookup::Capped,
                ferry_store::UiSessionState::Unknown => SessionLookup::Unknown,
            },
        )
    }

    /// Keeps `flash`, sealed, for the session's next page that asks for it.
    pub(crate) async fn set_flash(&self, id: &str, flash: Flash) -> Result<(), CoreError> {
        let sealed = seal_flash(id, &flash)?;
        self.store.put_ui_flash(&auth::hash_secret(id), sealed).await?;
        Ok(())
    }

    /// The session's flash, once (removed from the database as it is read).
    pub(crate) async fn take_flash(&self, id: &str) -> Result<Option<Flash>, CoreError> {
        let sealed = self.store.take_ui_flash(&auth::hash_secret(id)).await?;
        Ok(sealed.and_then(|s| open_flash(id, &s)))
    }

    async fn remove(&self, id: &str) -> Result<(), CoreError> {
        self.store.end_ui_session(&auth::hash_secret(id)).await?;
        Ok(())
    }

    /// How many live sessions the instance holds.
    pub async fn live(&self) -> Result<usize, CoreError> {
        Ok(self.store.ui_session_count(now_ms()).await?)
    }
}

pub fn routes(st: &AppState) -> Router<AppState> {
    Router::new()
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/ui/assets/{file}", get(asset))
        .merge(replication::routes())
        .merge(feeds::routes())
        .layer(crate::edge::BodyCap { limit: 1 << 20 })
        .layer(axum::middleware::from_fn_with_state(st.clone(), under_prefix))
}

/// The session cookie's name on this instance: `ferry_session_` and the
/// first 8 hex digits of the SHA-256 of the instance id.
pub fn cookie_name(st: &AppState) -> String {
    let h = auth::hash_secret(&st.ferry.instance_id().to_string());
    let short: String = h[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("ferry_session_{short}")
}

/// The path part of `base_url` without its trailing '/' ("" when Ferry is
/// served at the root of its host, "/registry" behind a proxy that serves
/// it under `/registry/`).
pub(crate) fn base_path(st: &AppState) -> String {
    let Some(base) = &st.ferry.config().base_url else {
        return String::new();
    };
    let rest = base.split_once("://").map_or(base.as_str(), |(_, r)| r);
    match rest.find('/') {
        Some(i) => rest[i..].trim_end_matches('/').to_owned(),
        None => String::new(),
    }
}

/// Puts the `base_url` path prefix in front of the UI's own URLs: the
/// `Location` of redirects, and `href`, `action`, `src` and `data-poll`
/// attributes that start with one '/' in pages (and in HTML carried in the
/// overview's JSON). Every value from users is escaped by maud (`"` too),
/// so such an attribute can only come from the templates.
async fn under_prefix(State(st): State<AppState>, req: Request, next: axum::middleware::Next) -> Response {
    let prefix = base_path(&st);
    let resp = next.run(req).await;
    if prefix.is_empty() {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    if let Some(loc) = parts.headers.get(header::LOCATION).and_then(|v| v.to_str().ok())
        && loc.starts_with('/')
        && !loc.starts_with("//")
        && let Ok(v) = HeaderValue::from_str(&format!("{prefix}{loc}"))
    {
        parts.headers.insert(header::LOCATION, v);
    }
    let rewrite = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("text/html") || t.starts_with("application/json"));
    if !rewrite {
        return Response::from_parts(parts, body);
    }
    let bytes = match axum::body::to_bytes(body, 32 << 20).await {
        Ok(b) => b,
        Err(e) => return ApiError::html(CoreError::Internal(format!("UI page body: {e}"))).into_response(),
    };
    let text = prefixed_links(&String::from_utf8_lossy(&bytes), &prefix);
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(text))
}

/// `html` with `prefix` before every local URL in a link attribute.
fn prefixed_links(html: &str, prefix: &str) -> String {
    let mut out = html.to_owned();
    for attr in ["href", "action", "src", "data-poll"] {
        // As written in a page, and inside a JSON string.
        for quote in ["\"", "\\\""] {
            let needle = format!(" {attr}={quote}/");
            let mut result = String::with_capacity(out.len());
            let mut rest = out.as_str();
            while let Some(i) = rest.find(&needle) {
                let end = i + needle.len();
                result.push_str(&rest[..end - 1]);
                if !rest[end..].starts_with('/') {
                    result.push_str(prefix);
                }
                result.push('/');
                rest = &rest[end..];
            }
            result.push_str(rest);
            out = result;
        }
    }
    out
}

// ------------------------------------------------------------ sessions

/// A signed-in caller: the key (looked up again on this request) and the
/// session's CSRF token. Without a session, pages redirect to `/login`.
pub(crate) struct Signed {
    pub principal: Principal,
    pub csrf: String,
    pub session: String,
}

impl Signed {
    pub fn is_admin(&self) -> bool {
        auth::authorize_admin(Some(&self.principal)).is_ok()
    }

    /// The management API's rule: an instance admin key.
    pub fn admin(&self) -> Result<(), ApiError> {
        auth::authorize_admin(Some(&self.principal)).map_err(ApiError::html)
    }
}

fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

impl FromRequestParts<AppState> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Self::Rejection> {
        let to_login = || Redirect::to("/login").into_response();
        let id = cookie_value(&parts.headers, &cookie_name(st)).ok_or_else(to_login)?;
        let failed = |e: CoreError| ApiError::html(e).into_response();
        let key_hash = match st.sessions.get(&id).await.map_err(failed)? {
            SessionLookup::Live { key_hash } => key_hash,
            SessionLookup::Capped => return Err(Redirect::to("/login?ended=cap").into_response()),
            SessionLookup::Unknown => return Err(to_login()),
        };
        let key = st
            .ferry
            .metadata()
            .key_by_hash(&key_hash)
            .await
            .map_err(|e| failed(CoreError::from(e)))?;
        let Some(key) = key else {
            // The key is gone (deleted on any node): so is the session.
            st.sessions.remove(&id).await.map_err(failed)?;
            return Err(to_login());
        };
        Ok(Signed {
            principal: Principal { key },
            csrf: csrf_of(&id),
            session: id,
        })
    }
}

/// Whether the request says it comes from a page of this instance: its
/// `Origin`, or without one its `Referer`, is this instance's origin (as
/// the request names it, or the configured base URL).
fn same_origin(st: &AppState, headers: &HeaderMap, authority: Option<&str>) -> bool {
    let mut ours = Vec::new();
    if let Ok(o) = crate::request_origin(headers, authority) {
        ours.push(o.to_ascii_lowercase());
        // Behind TLS the request names no scheme; accept https for the same host.
        ours.push(o.to_ascii_lowercase().replacen("http://", "https://", 1));
    }
    if let Some(base) = &st.ferry.config().base_url {
        let u = base.trim_end_matches('/').to_ascii_lowercase();
        // The origin part of the base URL (scheme://host[:port]).
        let origin = match u.find("://") {
            Some(i) => match u[i + 3..].find('/') {
                Some(j) => u[..i + 3 + j].to_owned(),
                None => u,
            },
            None => u,
        };
        ours.push(origin);
    }
    let theirs = match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        Some(o) => o.to_ascii_lowercase(),
        None => match headers.get(header::REFERER).and_then(|v| v.to_str().ok()) {
            Some(r) => {
                let r = r.to_ascii_lowercase();
                match ours.iter().find(|o| r.starts_with(&format!("{o}/")) || r == **o) {
                    Some(o) => o.clone(),
                    None => return false,
                }
            }
            None => return false,
        },
    };
    ours.contains(&theirs)
}

fn forbidden(msg: &str) -> Response {
    ApiError::html(CoreError::Forbidden(msg.to_owned())).into_response()
}

fn constant_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A form posted by a signed-in caller from a page of this instance, with
/// the session's CSRF token. Every UI POST but sign-in takes one.
pub(crate) struct Posted {
    pub who: Signed,
    pub form: Fields,
}

/// A posted form's fields, in order (a name may repeat).
pub(crate) struct Fields(Vec<(String, String)>);

impl Fields {
    pub fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
    pub fn on(&self, name: &str) -> bool {
        !self.get(name).is_empty()
    }
}

impl FromRequest<AppState> for Posted {
    type Rejection = Response;

    async fn from_request(req: Request, st: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        if !same_origin(st, &parts.headers, parts.uri.authority().map(|a| a.as_str())) {
            return Err(forbidden(
                "this form was not sent from a page of this Ferry instance (its Origin is another site), so it was refused",
            ));
        }
        let who = Signed::from_request_parts(&mut parts, st).await?;
        let req = Request::from_parts(parts, body);
        let Form(fields) = Form::<Vec<(String, String)>>::from_request(req, st)
            .await
            .map_err(|e| ApiError::html(CoreError::invalid(e.body_text())).into_response())?;
        let form = Fields(fields);
        if !constant_eq(form.get("csrf"), &who.csrf) {
            return Err(forbidden(
                "this form's security token is missing or out of date; reload the page and try again",
            ));
        }
        Ok(Posted { who, form })
    }
}

// ------------------------------------------------------------ pages

/// Which part of the navigation a page belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    Replication,
    Executions,
    Feeds,
    Diagnostics,
    Keys,
    None,
}

/// A complete page: the layout around `body`, with the UI's CSP.
pub(crate) fn page(title: &str, who: Option<&Signed>, nav: Nav, body: Markup) -> Response {
    let admin = who.is_some_and(|w| w.is_admin());
    let link = |n: Nav, href: &'static str, label: &'static str| {
        html! { a href=(href) aria-current=[(nav == n).then_some("page")] { (label) } }
    };
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Ferry" }
                link rel="stylesheet" href="/ui/assets/ferry.css";
                script src="/ui/assets/ferry.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/" { "Ferry" }
                    @if let Some(w) = who {
                        nav {
                            @if admin {
                                (link(Nav::Replication, "/", "Replication"))
                                (link(Nav::Executions, "/executions", "Executions"))
                            }
                            (link(Nav::Feeds, "/feeds", "Feeds"))
                            @if admin {
                                (link(Nav::Diagnostics, "/diagnostics", "Diagnostics"))
                                (link(Nav::Keys, "/keys", "API keys"))
                            }
                        }
                        form.signout method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(w.csrf);
                            span.who title="signed in with this API key" {
                                (w.principal.key.name) " · " (w.principal.key.permission.as_str())
                            }
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    };
    html_response(StatusCode::OK, markup)
}

pub(crate) fn html_response(status: StatusCode, markup: Markup) -> Response {
    let mut resp = (status, markup.into_string()).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_POLICY),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    resp
}

/// The page a failed UI request shows (the error mapping in `error.rs`
/// calls it for [`crate::error::Flavor::Html`]).
pub fn error_page(status: StatusCode, message: &str) -> Response {
    let title = match status {
        StatusCode::FORBIDDEN => "Not allowed",
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::UNAUTHORIZED => "Sign-in needed",
        StatusCode::CONFLICT => "Conflict",
        s if s.is_client_error() => "That did not work",
        _ => "Something went wrong",
    };
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Ferry" }
                link rel="stylesheet" href="/ui/assets/ferry.css";
            }
            body {
                header.top { a.brand href="/" { "Ferry" } }
                main {
                    h1 { (title) }
                    p.error role="alert" { (message) }
                    p { a href="/" { "Back to the start page" } }
                }
            }
        }
    };
    html_response(status, markup)
}

/// A red box with a problem, for forms shown again.
pub(crate) fn problem(msg: Option<&str>) -> Markup {
    html! {
        @if let Some(m) = msg { p.error role="alert" { (m) } }
    }
}

pub(crate) fn csrf_field(who: &Signed) -> Markup {
    html! { input type="hidden" name="csrf" value=(who.csrf); }
}

/// A button that posts to `action` (with the CSRF token).
pub(crate) fn post_button(who: &Signed, action: &str, label: &str, class: &str) -> Markup {
    html! {
        form.inline method="post" action=(action) {
            (csrf_field(who))
            button type="submit" class=(class) { (label) }
        }
    }
}

/// What a path segment keeps as it is: RFC 3986's unreserved characters
/// (letters, digits, `-`, `.`, `_`, `~`); everything else is
/// percent-encoded. Feed routes outside the UI (downloads) take their
/// names literally, so a name's `-` must stay a `-`.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A path segment, percent-encoded (RFC 3986 section 3.3); a segment that
/// is only dots is encoded whole, so a browser never takes it for `.` or
/// `..` and resolves it away.
pub(crate) fn seg(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b == b'.') {
        return "%2E".repeat(s.len());
    }
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

pub(crate) fn when(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// An RFC 3339 UTC time (`2026-12-01T04:12:13.312Z`) the way the other
/// times are shown (`2026-12-01 04:12:13 UTC`); anything else as it is.
pub(crate) fn when_text(t: &str) -> String {
    let b = t.as_bytes();
    let digits = |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    if t.ends_with('Z')
        && b.get(10) == Some(&b'T')
        && digits(0..4)
        && digits(5..7)
        && digits(8..10)
        && digits(11..13)
        && digits(14..16)
        && digits(17..19)
    {
        format!("{} {} UTC", &t[..10], &t[11..19])
    } else {
        t.to_owned()
    }
}

/// A size as the CLI prints it too ([`ferry_types::binary_size`]).
pub(crate) fn bytes(n: u64) -> String {
    ferry_types::binary_size(n as f64)
}

/// A rate as the CLI prints it too: a size per second.
pub(crate) fn rate(bytes_per_second: f64) -> String {
    format!("{}/s", ferry_types::binary_size(bytes_per_second))
}

pub(crate) fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

// ------------------------------------------------------------ sign-in

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct LoginQuery {
    ended: String,
}

async fn login_page(who: Option<Signed>, Query(q): Query<LoginQuery>) -> Response {
    if who.is_some() {
        return Redirect::to("/").into_response();
    }
    let msg = (q.ended == "cap").then(|| {
        format!(
            "Signed out: this key signed in elsewhere more than {MAX_SESSIONS_PER_KEY} times, \
             which ends its oldest session. Sign in again."
        )
    });
    login_form(StatusCode::OK, msg.as_deref())
}

fn login_form(status: StatusCode, msg: Option<&str>) -> Response {
    let mut resp = page(
        "Sign in",
        None,
        Nav::None,
        html! {
            section.narrow {
                h1 { "Sign in to Ferry" }
                (problem(msg))
                form method="post" action="/login" {
                    label for="key" { "API key" }
                    input #key type="password" name="key" autocomplete="current-password" required autofocus;
                    p.hint { "The admin key is printed on the first start and kept in " code { "DATA_DIR/admin.key" } ". Any API key signs in; what it may do is what it may do on the API." }
                    button.primary type="submit" { "Sign in" }
                }
            }
        },
    );
    *resp.status_mut() = status;
    resp
}

impl axum::extract::OptionalFromRequestParts<AppState> for Signed {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Option<Self>, Self::Rejection> {
        Ok(
            <Signed as FromRequestParts<AppState>>::from_request_parts(parts, st)
                .await
                .ok(),
        )
    }
}

async fn login(State(st): State<AppState>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    if !same_origin(&st, &parts.headers, parts.uri.authority().map(|a| a.as_str())) {
        return forbidden("this sign-in was not sent from a page of this Ferry instance, so it was refused");
    }
    let secure = parts.extensions.get::<ServedOverTls>().is_some()
        || crate::public_origin(
            &st.ferry,
            &parts.headers,
            parts.uri.authority().map(|a| a.as_str()),
        )
        .is_ok_and(|o| o.starts_with("https://"));
    let req = Request::from_parts(parts, body);
    let Ok(Form(fields)) = Form::<Vec<(String, String)>>::from_request(req, &st).await else {
        return login_form(
            StatusCode::BAD_REQUEST,
            Some("The form could not be read; try again."),
        );
    };
    let key = Fields(fields).get("key").trim().to_owned();
    if key.is_empty() {
        return login_form(StatusCode::BAD_REQUEST, Some("Enter an API key."));
    }
    match st.ferry.authenticate(&key).await {
        Ok(p) => {
            let created = match st.sessions.create(p.key.hash).await {
                Ok(c) => c,
                Err(e) => return ApiError::html(e).into_response(),
            };
            let Some(id) = created else {
                return login_form(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Some(
                        "Too many people are signed in to this instance right now; try again when some sessions have ended.",
                    ),
                );
            };
            let cookie = format!(
                "{}={id}; Path={}/; HttpOnly; SameSite=Strict; Max-Age={}{}",
                cookie_name(&st),
                base_path(&st),
                SESSION_TTL.as_secs(),
                if secure { "; Secure" } else { "" }
            );
            let to = if p.key.permission == Permission::Admin {
                "/"
            } else {
                "/feeds"
            };
            let mut resp = Redirect::to(to).into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
            resp
        }
        Err(CoreError::Unauthorized(_)) => login_form(
            StatusCode::UNAUTHORIZED,
            Some(
                "That API key is not known here. Check that you copied all of it, and that it was not revoked.",
            ),
        ),
        Err(e) => ApiError::html(e).into_response(),
    }
}

async fn logout(State(st): State<AppState>, posted: Posted) -> Response {
    if let Err(e) = st.sessions.remove(&posted.who.session).await {
        return ApiError::html(e).into_response();
    }
    let mut resp = Redirect::to("/login").into_response();
    let gone = format!(
        "{}=; Path={}/; HttpOnly; SameSite=Strict; Max-Age=0",
        cookie_name(&st),
        base_path(&st)
    );
    if let Ok(v) = HeaderValue::from_str(&gone) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

// ------------------------------------------------------------ assets

async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    let (body, ty) = match file.as_str() {
        "ferry.css" => (CSS, "text/css; charset=utf-8"),
        "ferry.js" => (JS, "text/javascript; charset=utf-8"),
        _ => return ApiError::html(CoreError::not_found(format!("no asset {file}"))).into_response(),
    };
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ty));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_POLICY),
    );
    resp
}

#[cfg(test)]
mod session_secret_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_flash_opens_only_for_its_session_and_unaltered() {
        let id = auth::generate_secret();
        let flash = Flash::Key {
            name: "ci".into(),
            secret: "ferry_secret_value".into(),
        };
        let sealed = seal_flash(&id, &flash).unwrap();
        assert!(
            !sealed
                .windows(b"ferry_secret_value".len())
                .any(|w| w == b"ferry_secret_value"),
            "not in clear"
        );
        assert!(
            matches!(open_flash(&id, &sealed), Some(Flash::Key { secret, .. }) if secret == "ferry_secret_value")
        );
        assert!(
            open_flash(&auth::generate_secret(), &sealed).is_none(),
            "another session"
        );
        let mut altered = sealed.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert!(open_flash(&id, &altered).is_none(), "altered");
        assert!(open_flash(&id, &sealed[..5]).is_none(), "cut");
        // Two seals of one flash differ (fresh nonce).
        assert_ne!(seal_flash(&id, &flash).unwrap(), sealed);
    }

    #[test]
    fn the_csrf_token_is_derived_from_the_session_id_alone() {
        let id = auth::generate_secret();
        assert_eq!(csrf_of(&id), csrf_of(&id));
        assert_eq!(csrf_of(&id).len(), 64);
        assert_ne!(csrf_of(&id), csrf_of(&auth::generate_secret()));
        assert!(!csrf_of(&id).contains(&id[6..]));
    }
}
