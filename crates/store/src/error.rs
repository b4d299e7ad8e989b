use ferry_types::Digest;

/// Errors of the storage layer. Messages are safe to show to users except
/// for [`StoreError::Backend`] and [`StoreError::Io`], which are logged and
/// answered with a generic 500/503.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// A local write lost to a later stamp already stored under its key.
    #[error("{key} holds a newer version ({current}) than this write; nothing was changed")]
    Superseded {
        key: String,
        current: ferry_types::Stamp,
    },
    #[error("blob {0} is not stored")]
    BlobMissing(Digest),
    #[error("blob {0} is being collected; retry")]
    BlobBusy(Digest),
    #[error("upload exceeds the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("content digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    /// A remote backend (an S3 bucket) cannot be reached or refused the
    /// request; retrying later may work (503 at the HTTP edge).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("storage backend: {0}")]
    Backend(String),
    #[error("storage i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}
