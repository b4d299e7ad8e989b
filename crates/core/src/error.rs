use ferry_formats::FormatError;
use ferry_store::StoreError;

/// Errors of Ferry's use cases. Each protocol maps these to its own
/// responses in one place in the server.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// A write lost to a later version already stored under its key
    /// (written elsewhere, or stamped by a clock ahead of this one).
    #[error("{0}")]
    Superseded(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    /// Something on our side failed; the cause is logged, not shown.
    #[error("internal error: {0}")]
    Internal(String),
    #[error("service busy, retry: {0}")]
    Unavailable(String),
    /// One client holds as much of a shared resource as it may (429).
    #[error("too many requests: {0}")]
    TooMany(String),
    /// Another instance this request needed (a replication's peer, for a
    /// plan or verify) could not be reached, timed out or answered with an
    /// error: HTTP 502, with what happened.
    #[error("{0}")]
    Upstream(String),
    /// Stored content is missing or corrupt on this instance: a server
    /// fault whose message (which blob, what to do) is shown.
    #[error("{0}")]
    Damaged(String),
    /// The client's request body broke off before its end: the client went
    /// away mid-upload, or its stream was malformed at the HTTP level (see
    /// [`CoreError::client_body_error`]). A client event, not a server fault: nothing was
    /// written, and it is logged as such, never as an internal error.
    #[error("the request body broke off before its end: {0}")]
    BrokenBody(String),
}

/// The error a client's request body stream yields when it fails
/// (connection closed mid-body, malformed chunked encoding, ...), as made by
/// [`CoreError::client_body_error`]. Wherever it ends up (inside
/// [`StoreError::Io`] after staging, inside a multipart error, a body read
/// failure), [`CoreError::from_body_error`] tells it from a server fault.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct BrokenBody(#[source] Box<dyn std::error::Error + Send + Sync>, Refused);

/// Whether the body was cut by the server's own check of it (a multipart
/// part head past its limit: the client's fault, 400 with the reason)
/// rather than broken by the client or its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Refused(bool);

impl BrokenBody {
    /// Finds a [`BrokenBody`] in `e` or its causes, looking inside
    /// [`std::io::Error`]s (whose `source` skips the error they carry).
    fn find<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a BrokenBody> {
        let mut cur = Some(e);
        while let Some(err) = cur {
            if let Some(b) = err.downcast_ref::<BrokenBody>() {
                return Some(b);
            }
            cur = match err.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
                Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
                None => err.source(),
            };
        }
        None
    }

    /// The whole chain of causes, for the log: `outer: inner: ...`.
    fn describe(&self) -> String {
        let mut text = self.0.to_string();
        let mut cur = self.0.source();
        while let Some(e) = cur {
            let next = e.to_string();
            if !text.ends_with(&next) {
                text.push_str(": ");
                text.push_str(&next);
            }
            cur = e.source();
        }
        text
    }
}

impl CoreError {
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::NotFound(m.into())
    }
    pub fn invalid(m: impl Into<String>) -> Self {
        Self::Invalid(m.into())
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        Self::Conflict(m.into())
    }

    /// Wraps an error of a client's request body stream. The HTTP layer
    /// does this for every request body, so that a client going away
    /// mid-upload reaches the response as [`CoreError::BrokenBody`]
    /// (through [`CoreError::from_body_error`] and `From<StoreError>`), not
    /// as an internal error. Streams that are not a client's request (a
    /// peer's response during replication, a bundle) are never wrapped: a
    /// failure there stays what it was.
    pub fn client_body_error(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> std::io::Error {
        std::io::Error::other(BrokenBody(e.into(), Refused(false)))
    }

    /// Wraps the error of a check the HTTP layer makes of a client's body
    /// as it streams (a multipart part head past its limit): it reaches the
    /// response as [`CoreError::Invalid`] with the check's reason, not as
    /// a body that broke off.
    pub fn client_body_refused(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> std::io::Error {
        std::io::Error::other(BrokenBody(e.into(), Refused(true)))
    }

    /// [`CoreError::BrokenBody`] if `e` or one of its causes was made by
    /// [`CoreError::client_body_error`]; `None` for any other error, which
    /// the caller maps as it would have.
    pub fn from_body_error(e: &(dyn std::error::Error + 'static)) -> Option<Self> {
        BrokenBody::find(e).map(|b| match b.1 {
            Refused(true) => CoreError::Invalid(b.0.to_string()),
            Refused(false) => CoreError::BrokenBody(b.describe()),
        })
    }
}

impl From<FormatError> for CoreError {
    fn from(e: FormatError) -> Self {
        match e {
            FormatError::Invalid(m) => CoreError::Invalid(m),
            FormatError::TooLarge(m) => CoreError::TooLarge(m),
        }
    }
}

impl From<StoreError> for CoreError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => CoreError::NotFound(format!("{m} not found")),
            StoreError::Conflict(m) => CoreError::Conflict(m),
            e @ StoreError::Superseded { .. } => CoreError::Superseded(e.to_string()),
            StoreError::TooLarge { limit } => {
                CoreError::TooLarge(format!("upload exceeds the limit of {limit} bytes"))
            }
            e @ StoreError::DigestMismatch { .. } => CoreError::Invalid(e.to_string()),
            e @ (StoreError::BlobBusy(_) | StoreError::Contention(_)) => {
                CoreError::Unavailable(e.to_string())
            }
            // The cause names the database or bucket (host, port, name):
            // the operator's log has it, a client gets the gist.
            e @ (StoreError::Unavailable(_) | StoreError::NoBucket(_) | StoreError::Connect { .. }) => {
                tracing::warn!(cause = %e, "storage unavailable");
                CoreError::Unavailable("storage is unavailable; retry later".into())
            }
            // `pour` hands back the body's own error: a client's broken
            // request body is the client's event, anything else our fault.
            StoreError::Io(e) => CoreError::from_body_error(&e)
                .unwrap_or_else(|| CoreError::Internal(StoreError::Io(e).to_string())),
            e @ (StoreError::BlobMissing(_) | StoreError::Backend(_)) => CoreError::Internal(e.to_string()),
        }
    }
}

impl From<ferry_types::InvalidValue> for CoreError {
    fn from(e: ferry_types::InvalidValue) -> Self {
        CoreError::Invalid(e.to_string())
    }
}
