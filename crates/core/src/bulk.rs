//! Bulk imports: many packages in one request (`POST /rpm/FEED/upload`,
//! `POST /debian/FEED/upload/DIST/COMP` with `multipart/form-data`), as a
//! user would run `createrepo_c` over a directory or `reprepro includedeb
//! DIST *.deb`.
//!
//! Each package's bytes are an [`UploadBody`]: a large part streams into
//! the blob store's staging as any upload does (flushed on its own); a
//! small part is read whole, hashed and inspected in memory, and written
//! to the blob store only when the batch is published, all of them in one
//! pass made durable by one flush for the batch
//! ([`ferry_store::BlobStore::put_many_durable`]). Either way the blobs
//! are on stable storage before any item refers to them, and nothing is
//! written for a batch that is refused.

use bytes::Bytes;
use ferry_store::{HashedBytes, StagedBlob};
use ferry_types::Digest;

use crate::{CoreError, Ferry};

/// The bytes of one upload of a bulk import.
pub enum UploadBody {
    /// Streamed into the blob store's staging (a large part, or a single
    /// `PUT`); removed from staging if dropped before it is committed.
    Staged(StagedBlob),
    /// Read whole and hashed (a small part of a bulk upload); nothing is
    /// written before [`Ferry::commit_bodies`], which does not hash it again.
    Memory(HashedBytes),
}

impl UploadBody {
    /// Holds `bytes` in memory with their SHA-256 (computed here: call it
    /// off the async threads for anything but a few KiB).
    pub fn in_memory(bytes: Bytes) -> Self {
        UploadBody::Memory(HashedBytes::new(bytes))
    }

    /// The SHA-256 of the bytes.
    pub fn digest(&self) -> Digest {
        match self {
            UploadBody::Staged(s) => s.digest(),
            UploadBody::Memory(b) => b.digest(),
        }
    }

    /// The length of the bytes.
    pub fn size(&self) -> u64 {
        match self {
            UploadBody::Staged(s) => s.size(),
            UploadBody::Memory(b) => b.bytes().len() as u64,
        }
    }
}

/// One inspected package of a bulk import: how refusals name it (`part`:
/// e.g. `part 3 (hello-1.0-1.x86_64.rpm)`; empty for a single upload), its
/// bytes, and what its feed type read from it (`info`: RPM header data,
/// a `.deb`'s control data).
pub struct Upload<T> {
    pub part: String,
    pub body: UploadBody,
    pub info: T,
}

impl<T> Upload<T> {
    /// An upload refusals do not name (a single `PUT`).
    pub fn new(body: UploadBody, info: T) -> Self {
        Upload {
            part: String::new(),
            body,
            info,
        }
    }
}

/// `e` with the part it is about in front of its message (4xx errors
/// only): `part 3 (hello-1.0-1.x86_64.rpm): not an RPM …`. An empty `part`
/// (a single upload) leaves it as it is.
pub fn in_part(part: &str, e: CoreError) -> CoreError {
    if part.is_empty() {
        return e;
    }
    match e {
        CoreError::Invalid(m) => CoreError::Invalid(format!("{part}: {m}")),
        CoreError::TooLarge(m) => CoreError::TooLarge(format!("{part}: {m}")),
        CoreError::Conflict(m) => CoreError::Conflict(format!("{part}: {m}")),
        e => e,
    }
}

impl Ferry {
    /// Commits the blobs of a bulk import so items may reference them, and
    /// returns their digests in order. Staged bodies are placed as
    /// [`Ferry::commit_staged_blobs`] places them; in-memory ones in one
    /// pass of the blob store, durable when this returns
    /// ([`Ferry::commit_small_blobs`] with one flush for the batch). One
    /// lease transaction for each kind.
    ///
    /// Errors: the stores' own failures (then some blobs may be placed and
    /// leased, and are collected later if nothing references them).
    pub async fn commit_bodies(&self, bodies: Vec<UploadBody>) -> Result<Vec<Digest>, CoreError> {
        let mut digests = Vec::with_capacity(bodies.len());
        let (mut staged, mut memory) = (Vec::new(), Vec::new());
        for body in bodies {
            digests.push(body.digest());
            match body {
                UploadBody::Staged(s) => staged.push(s),
                UploadBody::Memory(b) => memory.push(b),
            }
        }
        if !memory.is_empty() {
            for outcome in self.commit_hashed_blobs(memory).await? {
                outcome?;
            }
        }
        if !staged.is_empty() {
            self.commit_staged_blobs(staged).await?;
        }
        Ok(digests)
    }
}
