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
    /// The S3 bucket (named by the string: `bucket B at ENDPOINT`) does not
    /// exist. Refused at start; answered 503 (like
    /// [`StoreError::Unavailable`]) if it goes away later.
    #[error("S3 {0} does not exist (NoSuchBucket): create it, or correct `bucket` in [blob_store]")]
    NoBucket(String),
    /// The database aborted the transaction to break a deadlock or a
    /// serialization conflict with another writer; nothing was written.
    /// Stores retry it themselves a few times; answered 503 if it persists.
    #[error("storage contention: {0}; retry")]
    Contention(String),
    #[error("storage i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The database could not be connected to at start: `url` is its URL
    /// without the password, `cause` why (the server refused the
    /// connection, the login failed, the database does not exist...).
    #[error("cannot connect to the database at {url}: {cause}")]
    Connect { url: String, cause: ConnectFailure },
}

/// Why a connection to the database failed, as far as the client can tell.
#[derive(Debug, thiserror::Error)]
pub enum ConnectFailure {
    /// Nothing listens at the address (connection refused).
    #[error("the server refused the connection (is PostgreSQL running and listening on that host and port?)")]
    Refused,
    /// The address could not be reached (no route, name not resolved...).
    #[error("the server cannot be reached: {0}")]
    Unreachable(String),
    /// The server did not answer in time.
    #[error("the server did not answer within {0} s")]
    NoAnswer(u64),
    /// The login was refused (wrong password, no `pg_hba.conf` entry...).
    #[error("authentication failed for user {user:?}: {message}")]
    Authentication { user: String, message: String },
    /// The database named in the URL does not exist on the server.
    #[error("database {0:?} does not exist (create it first, e.g. `createdb`)")]
    NoDatabase(String),
    /// TLS negotiation failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// Anything else the server or the driver said.
    #[error("{0}")]
    Other(String),
}

/// What a write whose feed (or item) another request deleted meanwhile
/// says: every foreign key of the schema names a feed, or an item of one,
/// so a violated one means the row it points to is gone.
const REFERENT_GONE: &str =
    "the feed or item this request writes to (deleted while the request was under way) was";

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error() {
            Some(f) if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY => {
                StoreError::NotFound(REFERENT_GONE.to_owned())
            }
            _ => StoreError::Backend(e.to_string()),
        }
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
            // 23503: foreign_key_violation.
            sqlx::Error::Database(d) if d.code().as_deref() == Some("23503") => {
                StoreError::NotFound(REFERENT_GONE.to_owned())
            }
            // The server going away as seen from a connection it ends:
            // SQLSTATE class 08 (connection exception), 57P01–57P05
            // (shut down, crashed, not accepting connections yet, …) and
            // 53300 (too many connections), PostgreSQL documentation,
            // Appendix A. Unavailable (503, try again), not a fault.
            sqlx::Error::Database(d)
                if d.code()
                    .is_some_and(|c| c.starts_with("08") || c.starts_with("57P") || c == "53300") =>
            {
                StoreError::Unavailable(format!("database: {d}"))
            }
            other => StoreError::Backend(other.to_string()),
        }
    }
}
