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
    /// Stored content is missing or corrupt on this instance: a server
    /// fault whose message (which blob, what to do) is shown.
    #[error("{0}")]
    Damaged(String),
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
            e @ StoreError::BlobBusy(_) => CoreError::Unavailable(e.to_string()),
            e @ (StoreError::BlobMissing(_) | StoreError::Backend(_) | StoreError::Io(_)) => {
                CoreError::Internal(e.to_string())
            }
        }
    }
}

impl From<ferry_types::InvalidValue> for CoreError {
    fn from(e: ferry_types::InvalidValue) -> Self {
        CoreError::Invalid(e.to_string())
    }
}
