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
pub use direct::AlignedBytes;
pub use error::{ConnectFailure, StoreError};
pub use meta::*;
pub use postgres::PgStore;
pub use refresh::DAMAGE_REFRESH;
pub use replication::*;
pub use s3::{DEFAULT_PART_SIZE, MIN_PART_SIZE, S3BlobStore, S3Config};
pub use sessions::*;
pub use sqlite::SqliteStore;

/// An exclusive upper bound for the keys (and names) that start with
/// `prefix`, compared as UTF-8 bytes (SQLite's default, PostgreSQL's
/// `COLLATE "C"`): `prefix` and 257 U+10FFFF, the greatest character.
/// What follows the prefix in a key is at most 1,024 bytes (an item key's
/// limit), so it differs from 257 of the greatest character at or before
/// the 257th character, or is shorter: every key with the prefix sorts
/// below the bound, also one whose rest begins with U+10FFFF (which a
/// bound of one such character cut off), and every key at or past the
/// prefix without it sorts above.
pub(crate) fn prefix_end(prefix: &str) -> String {
    let mut end = String::with_capacity(prefix.len() + 257 * 4);
    end.push_str(prefix);
    end.extend(std::iter::repeat_n('\u{10FFFF}', 257));
    end
}

/// Milliseconds since the Unix epoch, the one time unit stored.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
