//! Who is asking, and may they? Every feed route takes a [`FeedAccess`],
//! which authenticates the caller, resolves the feed from the URL and
//! authorizes the action the HTTP method implies (GET/HEAD read, anything
//! else writes) before the handler runs. A handler cannot reach a feed
//! without one.
//!
//! Private feeds are invisible to callers who may not read them (the rule
//! is [`ferry_core::auth`]'s): for every route family (assets, npm, PyPI,
//! OCI, cargo, nuget) an existing private feed answers such a caller exactly as a
//! missing feed does. Without a key, any feed that is not public answers
//! 401 with the `WWW-Authenticate` challenge; with a key that may not read
//! it, 404 "feed NAME not found"; a wrong key, 401 before anything else.
//! Only a caller who may read a feed is told that it is of another type
//! than the URL's protocol.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use base64::Engine;
use ferry_core::auth::RegistryClaims;
use ferry_core::{Action, CoreError, Principal, auth};
use ferry_store::FeedRecord;
use ferry_types::{FeedName, FeedType};

use crate::AppState;
use crate::error::{ApiError, Flavor};

/// The API key presented, if any: `Authorization: Bearer KEY`, basic auth
/// with any user name and the key as password, or the key alone as the
/// whole header value (`Authorization: KEY`, what cargo sends).
///
/// Errors: Invalid (400) for a request carrying two `Authorization` headers
/// (RFC 9110 §11.6.2 defines one credential per request: which of two
/// counts would depend on the proxy in front); Unauthorized for a header
/// that cannot be read.
pub fn presented_secret(headers: &HeaderMap) -> Result<Option<String>, CoreError> {
    let Some(value) = single(headers, header::AUTHORIZATION.as_str())? else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| CoreError::Unauthorized("malformed Authorization header".into()))?;
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    match scheme.to_ascii_lowercase().as_str() {
        "bearer" => Ok(Some(rest.trim().to_string())),
        "basic" => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| CoreError::Unauthorized("malformed basic credentials".into()))?;
            let (_, password) = decoded.split_once(':').unwrap_or(("", decoded.as_str()));
            Ok(Some(password.to_string()))
        }
        // No scheme: the value is the key itself (cargo's token).
        _ if rest.is_empty() => Ok(Some(scheme.to_string())),
        _ => Err(CoreError::Unauthorized(format!(
            "unsupported authorization scheme {scheme:?}"
        ))),
    }
}

/// The one value of credential header `name`, or None; two are refused.
fn single<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h axum::http::HeaderValue>, CoreError> {
    let mut all = headers.get_all(name).iter();
    let first = all.next();
    if all.next().is_some() {
        return Err(CoreError::invalid(format!(
            "the request carries more than one {name} header; send one credential"
        )));
    }
    Ok(first)
}

/// The authenticated principal, or None when no key was presented. A key
/// that was presented but is wrong is refused (401), even for public reads.
pub async fn principal(state: &AppState, headers: &HeaderMap) -> Result<Option<Principal>, CoreError> {
    match presented_secret(headers)? {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(secret) => state.ferry.authenticate(&secret).await.map(Some),
    }
}

/// Who asks a nuget route: the `X-NuGet-ApiKey` header NuGet clients send
/// with pushes and deletes, unless an `Authorization` header is present
/// (which then decides, as on every route). A wrong `X-NuGet-ApiKey` is
/// Forbidden (403), not Unauthorized.
pub async fn nuget_principal(state: &AppState, headers: &HeaderMap) -> Result<Option<Principal>, CoreError> {
    if headers.contains_key(header::AUTHORIZATION) {
        return principal(state, headers).await;
    }
    match single(headers, "x-nuget-apikey")? {
        None => Ok(None),
        Some(v) => {
            let key = v
                .to_str()
                .map_err(|_| CoreError::Unauthorized("malformed X-NuGet-ApiKey header".into()))?
                .trim();
            if key.is_empty() {
                return Ok(None);
            }
            // NuGet clients answer a 401 by prompting for a user name and
            // password; a key they sent that is wrong is 403, as
            // nuget.org and NuGet.Server answer it.
            match state.ferry.authenticate(key).await {
                Ok(p) => Ok(Some(p)),
                Err(CoreError::Unauthorized(_)) => Err(CoreError::Forbidden(
                    "the API key (X-NuGet-ApiKey) is invalid".into(),
                )),
                Err(e) => Err(e),
            }
        }
    }
}

/// Who asks an OCI route (`/v2/`): a key (bearer or basic, as anywhere),
/// or a registry token from `GET /v2/token` (bearer `fbt.…`), which stands
/// for the key it was issued for (None: anonymous) limited to the
/// repositories and actions it grants. A token whose key was deleted since
/// is refused.
pub async fn oci_credentials(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<(Option<Principal>, Option<Arc<RegistryClaims>>), CoreError> {
    let Some(secret) = presented_secret(headers)?.filter(|s| auth::is_registry_token(s)) else {
        return Ok((principal(state, headers).await?, None));
    };
    let instance = state.ferry.instance_id().to_string();
    let claims = auth::verify_registry_token(
        state.ferry.registry_token_key(),
        &secret,
        &instance,
        auth::unix_now(),
    )?;
    let principal = match claims.key_hash() {
        None => None,
        Some(hash) => match state.ferry.metadata().key_by_hash(&hash).await? {
            Some(key) => Some(Principal { key }),
            None => {
                return Err(CoreError::Unauthorized(
                    "the API key this registry token was issued for no longer exists".into(),
                ));
            }
        },
    };
    Ok((principal, Some(Arc::new(claims))))
}

/// Refuses an OCI request whose registry token does not grant `action`
/// (`pull`/`push`) on `FEED/repo`: 401 (the client asks for a token with
/// that scope) when it grants nothing there, 403 when it grants less.
pub fn check_token_scope(claims: &RegistryClaims, repository: &str, action: &str) -> Result<(), CoreError> {
    if claims.grants(repository, action) {
        Ok(())
    } else if claims.names(repository) {
        Err(CoreError::Forbidden(format!(
            "the registry token does not grant {action} on repository {repository} \
             (the key's permission or scope does not allow it)"
        )))
    } else {
        Err(CoreError::Unauthorized(format!(
            "the registry token grants no access to repository {repository}; \
             ask the token endpoint for scope repository:{repository}:{action}"
        )))
    }
}

/// A feed the caller may use for the request's action.
#[derive(Debug, Clone)]
pub struct FeedAccess {
    /// The feed the URL names.
    pub feed: FeedRecord,
    /// Who is asking (None: no key).
    pub principal: Option<Principal>,
    /// The registry token presented on an OCI route, if any: what it
    /// grants limits the request beyond the key's own permission.
    pub token: Option<Arc<RegistryClaims>>,
}

fn type_for_prefix(prefix: &str) -> Option<(FeedType, Flavor)> {
    match prefix {
        "assets" => Some((FeedType::Assets, Flavor::Text)),
        "npm" => Some((FeedType::Npm, Flavor::Json)),
        "pypi" => Some((FeedType::Pypi, Flavor::Text)),
        "v2" => Some((FeedType::Oci, Flavor::Oci)),
        "cargo" => Some((FeedType::Cargo, Flavor::Cargo)),
        "nuget" => Some((FeedType::Nuget, Flavor::Text)),
        "debian" => Some((FeedType::Debian, Flavor::Text)),
        "rpm" => Some((FeedType::Rpm, Flavor::Text)),
        _ => None,
    }
}

/// How refusals on `path` are worded: the feed protocol's own error shape
/// under a feed prefix, JSON on the management and replication APIs,
/// plain text elsewhere.
pub(crate) fn flavor_for_path(path: &str) -> Flavor {
    let prefix = path.trim_start_matches('/').split('/').next().unwrap_or_default();
    match type_for_prefix(prefix) {
        Some((_, flavor)) => flavor,
        None if prefix == "api" => Flavor::Json,
        None => Flavor::Text,
    }
}

impl FromRequestParts<AppState> for FeedAccess {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let path = parts.uri.path();
        let mut segs = path.trim_start_matches('/').splitn(3, '/');
        let prefix = segs.next().unwrap_or_default();
        let Some((ty, flavor)) = type_for_prefix(prefix) else {
            return Err(ApiError::text(CoreError::not_found(format!("{path} not found"))));
        };
        let err = |e: CoreError| ApiError { error: e, flavor };
        // Who asks comes first: a wrong key is refused alike for every feed.
        let (principal, token) = if ty == FeedType::Oci {
            oci_credentials(state, &parts.headers).await.map_err(err)?
        } else if ty == FeedType::Nuget {
            (nuget_principal(state, &parts.headers).await.map_err(err)?, None)
        } else {
            (principal(state, &parts.headers).await.map_err(err)?, None)
        };
        let action = if matches!(parts.method, Method::GET | Method::HEAD) {
            Action::Read
        } else {
            Action::Write
        };
        let name = segs.next().unwrap_or_default();
        // An invalid name can be no feed, private or not.
        let name = FeedName::new(name).map_err(|e| err(CoreError::not_found(e.to_string())))?;
        let found = match state.ferry.feed(&name).await {
            Ok(f) => Some(f),
            Err(CoreError::NotFound(_)) => None,
            Err(e) => return Err(err(e)),
        };
        let feed = auth::visible_feed(principal.as_ref(), &name, found, action).map_err(err)?;
        if feed.feed_type != ty {
            return Err(err(CoreError::not_found(format!(
                "feed {name} is a {} feed, not {ty}",
                feed.feed_type
            ))));
        }
        auth::authorize_feed(principal.as_ref(), &feed, action).map_err(err)?;
        if let Some(claims) = &token {
            // What the token must grant: push for writes and upload
            // sessions, pull for the rest.
            // (A path that names no endpoint is answered 404 by the handler.)
            if let Some((repo, push)) = crate::oci::scope_of(path, &parts.method) {
                let repository = format!("{name}/{repo}");
                check_token_scope(claims, &repository, if push { "push" } else { "pull" }).map_err(err)?;
            }
        }
        Ok(FeedAccess {
            feed,
            principal,
            token,
        })
    }
}

/// A caller holding an instance admin key (management API).
pub struct Admin(pub Principal);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let p = principal(state, &parts.headers).await.map_err(ApiError::json)?;
        auth::authorize_admin(p.as_ref()).map_err(ApiError::json)?;
        p.map(Admin)
            .ok_or_else(|| ApiError::json(CoreError::Unauthorized("an admin API key is required".into())))
    }
}
