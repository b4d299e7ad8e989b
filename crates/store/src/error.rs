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
    #[error("storage backend: {0}")]
    Backend(String),
    /// The backend cannot be reached (a database connection or a bucket
    /// that does not answer): nothing was written; the caller may retry.
    /// Answered 503.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The database aborted the transaction to break a deadlock or a
    /// serialization conflict with another writer; nothing was written.
    /// Stores retry it themselves a few times; answered 503 if it persists.
    #[error("storage contention: {0}; retry")]
    Contention(String),
    #[error("storage i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(format!("database: {e}")),
            sqlx::Error::Database(d) if matches!(d.code().as_deref(), Some("40P01" | "40001")) => {
                StoreError::Contention(d.to_string())
            }
            other => StoreError::Backend(other.to_string()),
        }
    }
}
