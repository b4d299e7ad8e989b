use ferry_core::CoreError;
use ferry_store::StoreError;

/// Errors of replication. Mapped to HTTP through [`CoreError`].
#[derive(Debug, thiserror::Error)]
pub enum ReplError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    /// The two ends' configurations do not fit together.
    #[error("{0}")]
    Refused(String),
    /// The other instance answered with an error.
    #[error("the other instance answered {status}: {message}")]
    Remote { status: u16, message: String },
    /// The other instance could not be reached or the transfer broke.
    #[error("cannot reach the other instance: {0}")]
    Transport(String),
    /// The execution went through, but some items could not be copied;
    /// they are named, and retried by the next execution.
    #[error("{0}")]
    Incomplete(String),
    #[error(transparent)]
    Core(#[from] CoreError),
}

impl From<StoreError> for ReplError {
    fn from(e: StoreError) -> Self {
        ReplError::Core(e.into())
    }
}

impl From<ReplError> for CoreError {
    fn from(e: ReplError) -> Self {
        match e {
            ReplError::Invalid(m) => CoreError::Invalid(m),
            ReplError::NotFound(m) => CoreError::NotFound(m),
            ReplError::Conflict(m) | ReplError::Refused(m) | ReplError::Incomplete(m) => {
                CoreError::Conflict(m)
            }
            ReplError::Unauthorized(m) => CoreError::Unauthorized(m),
            ReplError::Forbidden(m) => CoreError::Forbidden(m),
            e @ (ReplError::Remote { .. } | ReplError::Transport(_)) => CoreError::Upstream(e.to_string()),
            ReplError::Core(c) => c,
        }
    }
}
