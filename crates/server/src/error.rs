//! The one mapping from [`CoreError`] to HTTP responses. Feed protocols
//! differ only in how they word the body: npm and the management API want
//! JSON, OCI and cargo their `errors` arrays, the rest plain text. Failures the log must tell are handed to the
//! middleware in `lib.rs` as a [`Failure`] (it knows the feed and client).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferry_core::CoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Text,
    Json,
    /// OCI distribution: `{"errors":[{"code","message"}]}`.
    Oci,
    /// cargo's registry Web API: `{"errors":[{"detail"}]}`, which cargo
    /// shows after the status.
    Cargo,
    /// The web UI: a readable error page (`ui::error_page`).
    Html,
}

/// A failed request: the error and how its protocol wants it worded.
#[derive(Debug)]
pub struct ApiError {
    pub error: CoreError,
    pub flavor: Flavor,
}

impl ApiError {
    pub fn text(error: impl Into<CoreError>) -> Self {
        Self {
            error: error.into(),
            flavor: Flavor::Text,
        }
    }
    pub fn json(error: impl Into<CoreError>) -> Self {
        Self {
            error: error.into(),
            flavor: Flavor::Json,
        }
    }
    pub fn html(error: impl Into<CoreError>) -> Self {
        Self {
            error: error.into(),
            flavor: Flavor::Html,
        }
    }
}

/// A JSON body the extractor refused: 413 past the route's body cap,
/// 400 (with the parser's reason) for anything else.
pub fn json_rejection(e: &axum::extract::rejection::JsonRejection) -> CoreError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        // A body without a declared length ran past the route's cap
        // (`edge::BodyCap` refuses one that declares too much before
        // reading it); the cap is named as there.
        match crate::edge::ROUTE_BODY_LIMIT.try_with(|l| *l) {
            Ok(limit) => crate::edge::body_too_large(limit as u64),
            Err(_) => CoreError::TooLarge("the request body exceeds the limit of this route".into()),
        }
    } else {
        CoreError::invalid(e.body_text())
    }
}

/// A management API body: JSON that must be an object, read into `T`.
/// serde reads a struct from a JSON array too (`[]` as "no fields at
/// all"), which no client means, so anything but an object is refused.
///
/// Errors: [`CoreError::Invalid`] (400) naming what was sent instead or
/// what serde found wrong, [`CoreError::TooLarge`] (413) as
/// [`json_rejection`].
pub fn object_body<T: serde::de::DeserializeOwned>(
    body: Result<axum::Json<serde_json::Value>, axum::extract::rejection::JsonRejection>,
) -> Result<T, CoreError> {
    let axum::Json(v) = body.map_err(|e| json_rejection(&e))?;
    let kind = match &v {
        serde_json::Value::Object(_) => None,
        serde_json::Value::Array(_) => Some("an array"),
        serde_json::Value::String(_) => Some("a string"),
        serde_json::Value::Number(_) => Some("a number"),
        serde_json::Value::Bool(_) => Some("a boolean"),
        serde_json::Value::Null => Some("null"),
    };
    if let Some(kind) = kind {
        return Err(CoreError::invalid(format!(
            "the request body must be a JSON object, not {kind}"
        )));
    }
    serde_json::from_value(v).map_err(|e| CoreError::invalid(format!("invalid request body: {e}")))
}

pub fn status_of(e: &CoreError) -> StatusCode {
    match e {
        CoreError::NotFound(_) => StatusCode::NOT_FOUND,
        CoreError::Conflict(_) | CoreError::Superseded(_) => StatusCode::CONFLICT,
        CoreError::Invalid(_) | CoreError::BrokenBody(_) => StatusCode::BAD_REQUEST,
        CoreError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        CoreError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        CoreError::Forbidden(_) => StatusCode::FORBIDDEN,
        CoreError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        CoreError::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
        CoreError::Upstream(_) => StatusCode::BAD_GATEWAY,
        CoreError::Internal(_) | CoreError::Damaged(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A failure that the request log (the `guard` middleware in `lib.rs`)
/// reports, carried to it as a response extension by [`note_failure`].
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    /// A server fault: logged at ERROR with its cause, which the client
    /// does not see.
    Internal(String),
    /// The client's request body broke off: a client event, logged at WARN.
    BrokenBody(String),
}

/// The message the client sees for `e`: its text, except for internal
/// errors, whose cause goes to the log only.
pub(crate) fn public_message(e: &CoreError) -> String {
    match e {
        CoreError::Internal(_) => "internal server error".to_string(),
        e => e.to_string(),
    }
}

/// Hands the failure `e` to the request log, if it is one the log reports.
pub(crate) fn note_failure(resp: &mut Response, e: &CoreError) {
    let failure = match e {
        CoreError::Internal(cause) => Failure::Internal(cause.clone()),
        CoreError::BrokenBody(cause) => Failure::BrokenBody(cause.clone()),
        _ => return,
    };
    resp.extensions_mut().insert(failure);
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status_of(&self.error);
        let message = public_message(&self.error);
        let mut resp = match self.flavor {
            Flavor::Json => (status, Json(serde_json::json!({ "error": message }))).into_response(),
            Flavor::Text => (status, format!("{message}\n")).into_response(),
            Flavor::Oci => {
                let code = match status {
                    StatusCode::UNAUTHORIZED => "UNAUTHORIZED",
                    StatusCode::FORBIDDEN => "DENIED",
                    StatusCode::NOT_FOUND => "NAME_UNKNOWN",
                    StatusCode::PAYLOAD_TOO_LARGE => "SIZE_INVALID",
                    StatusCode::TOO_MANY_REQUESTS => "TOOMANYREQUESTS",
                    _ if status.is_client_error() => "UNSUPPORTED",
                    _ => "UNKNOWN",
                };
                let body = serde_json::json!({ "errors": [{ "code": code, "message": message }] });
                (status, Json(body)).into_response()
            }
            Flavor::Html => crate::ui::error_page(status, &message),
            Flavor::Cargo => (
                status,
                Json(serde_json::json!({ "errors": [{ "detail": message }] })),
            )
                .into_response(),
        };
        // Storage away, contention, a collector at work, a client past its
        // share: worth a retry soon.
        if matches!(
            status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        ) && !resp.headers().contains_key(header::RETRY_AFTER)
        {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        if status == StatusCode::UNAUTHORIZED && self.flavor != Flavor::Html {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"ferry\""),
            );
        }
        note_failure(&mut resp, &self.error);
        resp
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        ApiError::text(e)
    }
}
