//! Storage for one Ferry instance, behind two small traits:
//!
//! * [`BlobStore`]: immutable content addressed by sha256. Uploads stream to
//!   a staging area, are hashed on the way, and are committed atomically.
//! * [`MetadataStore`]: feeds, items, the change log, blob bookkeeping and
//!   API keys. Every item write appends to the change log in the same
//!   transaction; deletes leave tombstones.
//!
//! Metadata backends: [`SqliteStore`] (embedded default) and [`PgStore`]
//! (PostgreSQL). [`conformance`] is the one test suite every metadata
//! backend must pass; [`blob_conformance`] the one every blob backend
//! ([`FsBlobStore`], [`S3BlobStore`]) must pass.

mod blob;
pub mod blob_conformance;
pub mod conformance;
mod direct;
mod error;
mod meta;
mod postgres;
mod postgres_replication;
mod postgres_sessions;
mod refresh;
mod replication;
mod s3;
mod sessions;
mod sqlite;
mod sqlite_replication;
mod sqlite_sessions;

pub use blob::{BlobBody, BlobCheck, BlobStore, ByteStream, FsBlobStore, HashedBytes, StagedBlob, Transfer};
pub use error::{ConnectFailure, StoreError};
pub use meta::*;
pub use postgres::PgStore;
pub use refresh::DAMAGE_REFRESH;
pub use replication::*;
pub use s3::{DEFAULT_PART_SIZE, MIN_PART_SIZE, S3BlobStore, S3Config};
pub use sessions::*;
pub use sqlite::SqliteStore;

/// Milliseconds since the Unix epoch, the one time unit stored.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
