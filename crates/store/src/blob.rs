//! Content-addressed blob storage.

use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use ferry_types::{Digest, Sha256Hasher};
use futures::{Stream, StreamExt};

use crate::StoreError;

/// A body of bytes, streamed.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send + 'static>>;

/// A blob read: the whole blob's size and a stream of the requested bytes.
pub struct BlobBody {
    pub total_size: u64,
    pub stream: ByteStream,
}

/// Bytes held in memory with their SHA-256, computed from these very bytes
/// by [`HashedBytes::new`] (it cannot be made otherwise): a store places
/// them without hashing them a second time. Bytes that came with a digest
/// someone else claims (a replication peer's) go through
/// [`BlobStore::put_many`], which verifies them.
#[derive(Clone, Debug)]
pub struct HashedBytes {
    digest: Digest,
    bytes: Bytes,
}

impl HashedBytes {
    /// Hashes `bytes` (blocking work for more than a few KiB: call it off
    /// the async threads).
    pub fn new(bytes: Bytes) -> Self {
        HashedBytes {
            digest: Digest::of(&bytes),
            bytes,
        }
    }

    /// The SHA-256 of the bytes.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// The bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }
}

/// An upload that has been written to the staging area and hashed, but is
/// not yet part of the store. Dropping it without committing removes it.
pub struct StagedBlob {
    path: PathBuf,
    digest: Digest,
    size: u64,
    committed: bool,
    /// The flush of the staged file, started when it was written and
    /// awaited before it is placed ([`StagedBlob::flushed`]): a caller
    /// staging many uploads one after another (a bulk upload's parts) does
    /// not wait for each flush before reading the next, and the device
    /// takes the flushes together.
    flushing: Option<tokio::task::JoinHandle<io::Result<()>>>,
}

impl StagedBlob {
    /// Waits until the staged bytes are on stable storage.
    ///
    /// Errors: the flush failed (the file cannot be trusted to survive a
    /// crash, so it must not be placed).
    pub(crate) async fn flushed(&mut self) -> Result<(), StoreError> {
        if let Some(h) = self.flushing.take() {
            h.await
                .map_err(|e| StoreError::Backend(format!("blob flush: {e}")))??;
        }
        Ok(())
    }

    pub fn digest(&self) -> Digest {
        self.digest
    }
    pub fn size(&self) -> u64 {
        self.size
    }
    /// The local file holding the staged bytes, for inspection (archives are
    /// checked here before anything is committed).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StagedBlob {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// An exclusive claim on the resumable transfer of one digest, from
/// [`BlobStore::begin_transfer`]: while it is held no other writer (another
/// execution, another replication) touches the same partial file. `offset`
/// is how many bytes of the blob the partial file already holds; the body
/// handed to [`BlobStore::continue_transfer`] must start there.
pub struct Transfer {
    digest: Digest,
    offset: u64,
    _claim: Box<dyn Send + Sync>,
}

impl Transfer {
    /// A transfer claim backed by `claim` (dropped when the transfer ends).
    pub fn new(digest: Digest, offset: u64, claim: Box<dyn Send + Sync>) -> Self {
        Self {
            digest,
            offset,
            _claim: claim,
        }
    }
    pub fn digest(&self) -> Digest {
        self.digest
    }
    /// Bytes already received of this blob; the next body starts here.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

/// The state of one stored blob, as found by re-hashing its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobCheck {
    /// Its bytes hash to its digest; `size` in bytes.
    Intact { size: u64 },
    /// No file (or object) holds it.
    Missing,
    /// Its bytes hash to `actual`, not to its digest.
    Corrupt { actual: Digest, size: u64 },
}

/// Immutable content addressed by sha256, one copy per instance.
///
/// Every writer of a digest is safe against every other writer of the same
/// digest: uploads stage into files of their own, resumable transfers hold
/// an exclusive [`Transfer`] claim, and a commit over an existing blob first
/// re-hashes what is stored — a committed blob is never replaced by
/// unverified bytes, and one found to be wrong is replaced by the verified
/// copy being committed.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Streams `body` into the staging area, hashing it on the way. Fails
    /// with [`StoreError::TooLarge`] (and keeps nothing) past `limit` bytes,
    /// and with [`StoreError::DigestMismatch`] if `expected` is given and
    /// differs.
    async fn stage(
        &self,
        body: ByteStream,
        limit: u64,
        expected: Option<Digest>,
    ) -> Result<StagedBlob, StoreError>;

    /// Makes a staged blob part of the store, atomically: readers see either
    /// nothing or the whole verified blob. If the digest is stored already,
    /// the stored bytes are re-hashed: intact, they stay (the staged copy is
    /// dropped); missing or wrong, the staged copy (verified) replaces them.
    /// Returns what was found in place before.
    async fn commit(&self, staged: StagedBlob) -> Result<BlobCheck, StoreError>;

    /// Re-hashes a stored blob and says whether it is intact, missing or
    /// corrupt. Reads the whole blob (off the async threads).
    async fn check(&self, digest: &Digest) -> Result<BlobCheck, StoreError>;

    /// The size of a stored blob, or `None`.
    async fn size(&self, digest: &Digest) -> Result<Option<u64>, StoreError>;

    /// Reads a blob, or the byte range `range` of it (already validated
    /// against the size by the caller, end exclusive).
    ///
    /// A read of the whole blob (no range, or a range covering all of it)
    /// is verified as it streams: the bytes are hashed on their way out
    /// and the last chunk is held back until the hash is known. If it is
    /// not the digest, the stream ends with an [`io::ErrorKind::InvalidData`]
    /// error naming the digest instead of that chunk (so no reader ever
    /// takes the wrong bytes for a complete blob), and the blob is
    /// quarantined at once (see [`BlobStore::quarantined`]). A range that
    /// leaves out part of the blob cannot be verified and is not.
    async fn get(&self, digest: &Digest, range: Option<Range<u64>>) -> Result<BlobBody, StoreError>;

    /// [`BlobStore::get`] for a reader that verifies every blob against its
    /// digest itself (another instance replicating): a whole blob whose
    /// file was hashed right a short while ago and has not changed since
    /// (e.g. just written) is served without hashing it once more. The
    /// reader's own check then stands for both.
    async fn get_for_verifier(
        &self,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<BlobBody, StoreError> {
        self.get(digest, range).await
    }

    /// Several small blobs read whole for a reader that verifies them
    /// itself, as [`Self::get_for_verifier`] reads one (checked against
    /// its digest unless hashed right a short while ago; a corrupt one is
    /// quarantined and answered with an I/O error of kind `InvalidData`
    /// naming its digest):
    /// per digest, in order, its bytes, or None when it is larger than
    /// `max_each` bytes (read it with `get_for_verifier`), or the error
    /// reading it gave ([`StoreError::BlobMissing`] for one not stored).
    /// The folder store reads them all in one blocking pass; the default
    /// reads them one by one.
    ///
    /// Errors: only those that concern no single blob.
    async fn get_small_for_verifier(
        &self,
        digests: &[Digest],
        max_each: u64,
    ) -> Result<Vec<Result<Option<Bytes>, StoreError>>, StoreError> {
        let mut out = Vec::with_capacity(digests.len());
        for d in digests {
            out.push(match self.size(d).await {
                Ok(Some(n)) if n <= max_each => match self.get_for_verifier(d, None).await {
                    Ok(body) => collect_small(body).await,
                    Err(e) => Err(e),
                },
                Ok(Some(_)) => Ok(None),
                Ok(None) => Err(StoreError::BlobMissing(*d)),
                Err(e) => Err(e),
            });
        }
        Ok(out)
    }

    /// Removes a blob; removing a missing blob is not an error.
    async fn delete(&self, digest: &Digest) -> Result<(), StoreError>;

    /// Takes a blob whose bytes are wrong out of service (kept aside for
    /// inspection where the store can), so it is never served under its
    /// digest again; reads then find it missing until a verified copy is
    /// committed.
    async fn quarantine(&self, digest: &Digest) -> Result<(), StoreError> {
        self.delete(digest).await
    }

    /// Blobs this store took out of service (by [`BlobStore::quarantine`]
    /// or a verifying read) that no verified copy has replaced since, with
    /// when (ms since the Unix epoch), in digest order. Kept across
    /// restarts; answered from memory.
    fn quarantined(&self) -> Vec<(Digest, i64)> {
        Vec::new()
    }

    /// Whether `digest` is among [`BlobStore::quarantined`].
    fn is_quarantined(&self, digest: &Digest) -> bool {
        self.quarantined().iter().any(|(d, _)| d == digest)
    }

    /// Stops counting `digest` as quarantined (nothing needs it any more);
    /// the bytes kept aside stay for inspection. Committing a verified copy
    /// and deleting the blob do this too.
    async fn release_quarantine(&self, digest: &Digest) -> Result<(), StoreError> {
        let _ = digest;
        Ok(())
    }

    /// The durable records of blobs found missing ([`BlobStore::mark_missing`],
    /// less those stored again since): digest and when it was found (ms),
    /// in digest order. Read when the store was opened and, where several
    /// nodes share the store, refreshed (see [`BlobStore::refresh_damage`]);
    /// answered from memory.
    fn missing_on_record(&self) -> Vec<(Digest, i64)> {
        Vec::new()
    }

    /// Records durably that `digest` was found missing at `at` (ms since
    /// the Unix epoch): one record of its own per digest, so nodes sharing
    /// the store never write over each other's records. Marking it again
    /// is harmless.
    async fn mark_missing(&self, digest: &Digest, at: i64) -> Result<(), StoreError> {
        let _ = (digest, at);
        Ok(())
    }

    /// Removes the record that `digest` was found missing (whichever node
    /// wrote it); none is fine.
    async fn unmark_missing(&self, digest: &Digest) -> Result<(), StoreError> {
        let _ = digest;
        Ok(())
    }

    /// Reads the damage records again (outstanding quarantines and blobs
    /// found missing), taking in those other nodes sharing the store wrote
    /// or removed since. A store opened for several nodes also does this by
    /// itself at a bounded interval; a caller that needs an answer now
    /// (`fsck`, repair) calls it first. Stores no other process writes to
    /// have nothing to do.
    async fn refresh_damage(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Removes the bytes kept of interrupted replication transfers
    /// (resumable from where they broke off) that no transfer has touched
    /// for `idle`: e.g. of a replication deleted mid-transfer, whose blob no
    /// execution asks for again. A transfer held now is left alone. Returns
    /// how many were removed. Stores that keep none do nothing.
    async fn sweep_partials(&self, _idle: std::time::Duration) -> Result<u64, StoreError> {
        Ok(0)
    }

    /// Claims the resumable transfer of `digest`, waiting while another
    /// writer holds it. The claim says how many bytes an interrupted earlier
    /// transfer left (kept across restarts, so a transfer resumes where it
    /// broke). Callers should check whether the blob got stored while they
    /// waited before fetching anything.
    async fn begin_transfer(&self, digest: &Digest) -> Result<Transfer, StoreError>;

    /// Appends `body` (the blob's bytes from `transfer.offset()` on) to the
    /// partial file; once `body` ends, verifies the bytes the file holds —
    /// all of them — against the digest and returns them staged. On a
    /// mismatch the partial file is discarded. If `body` fails midway, what
    /// arrived is kept for the next attempt. The content is not yet
    /// durable: callers [`BlobStore::sync`] a batch of transfers at once
    /// before an item relies on them (cheaper than one flush per blob).
    async fn continue_transfer(
        &self,
        transfer: Transfer,
        body: ByteStream,
        limit: u64,
    ) -> Result<StagedBlob, StoreError>;

    /// Discards what an interrupted transfer of `digest` left.
    async fn discard_transfer(&self, transfer: Transfer) -> Result<(), StoreError>;

    /// How many bytes interrupted transfers left of each of `digests`, in
    /// their order (0: none), without claiming them: what a sender may
    /// resume from (it can change before the sender's bytes arrive; the
    /// claim taken then decides). Stores that keep no partial transfers
    /// answer 0 for every digest.
    async fn partial_sizes(&self, digests: &[Digest]) -> Result<Vec<u64>, StoreError> {
        Ok(vec![0; digests.len()])
    }

    /// Makes committed blobs durable (flushed to stable storage).
    async fn sync(&self, digests: &[Digest]) -> Result<(), StoreError> {
        let _ = digests;
        Ok(())
    }

    /// [`BlobStore::size`] of each of `digests`, in their order (`None`:
    /// not stored). Stores that can look many up at once override it.
    async fn sizes(&self, digests: &[Digest]) -> Result<Vec<Option<u64>>, StoreError> {
        let mut out = Vec::with_capacity(digests.len());
        for d in digests {
            out.push(self.size(d).await?);
        }
        Ok(out)
    }

    /// [`BlobStore::begin_transfer`] of each of `digests`, taken in digest
    /// order (so two callers claiming overlapping sets never wait on each
    /// other in a circle) and returned in that order, duplicates dropped.
    async fn begin_transfers(&self, digests: &[Digest]) -> Result<Vec<Transfer>, StoreError> {
        let mut sorted = digests.to_vec();
        sorted.sort();
        sorted.dedup();
        let mut out = Vec::with_capacity(sorted.len());
        for d in &sorted {
            out.push(self.begin_transfer(d).await?);
        }
        Ok(out)
    }

    /// Stores small blobs held in memory, each as [`BlobStore::stage`] with
    /// its digest expected followed by [`BlobStore::commit`]: the bytes are
    /// verified against the digest (a mismatch is that blob's
    /// [`StoreError::DigestMismatch`], the others go on), an intact copy in
    /// place is kept, a missing or wrong one replaced. Returns each blob's
    /// outcome in order. Not yet durable: [`BlobStore::sync`] them. Stores
    /// that can do it in one pass override it.
    async fn put_many(
        &self,
        blobs: Vec<(Digest, Bytes)>,
    ) -> Result<Vec<Result<BlobCheck, StoreError>>, StoreError> {
        let mut out = Vec::with_capacity(blobs.len());
        for (d, bytes) in blobs {
            let limit = bytes.len() as u64;
            let body: ByteStream = Box::pin(futures::stream::once(async move { Ok(bytes) }));
            match self.stage(body, limit, Some(d)).await {
                Ok(staged) => out.push(Ok(self.commit(staged).await?)),
                Err(e @ StoreError::DigestMismatch { .. }) => out.push(Err(e)),
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// [`BlobStore::put_many`] of bytes hashed in this process (stores may
    /// skip hashing them again), then the stored blobs made durable
    /// ([`BlobStore::sync`]) before it returns: for a caller that writes
    /// items referencing them next (a bulk import of packages). Stores that
    /// can flush a whole batch at once override it.
    async fn put_many_durable(
        &self,
        blobs: Vec<HashedBytes>,
    ) -> Result<Vec<Result<BlobCheck, StoreError>>, StoreError> {
        let digests: Vec<Digest> = blobs.iter().map(HashedBytes::digest).collect();
        let out = self
            .put_many(blobs.into_iter().map(|b| (b.digest, b.bytes)).collect())
            .await?;
        let stored: Vec<Digest> = digests
            .into_iter()
            .zip(&out)
            .filter(|(_, r)| r.is_ok())
            .map(|(d, _)| d)
            .collect();
        self.sync(&stored).await?;
        Ok(out)
    }

    // ---- upload sessions: one client upload sent in several requests ----
    //
    // A session is kept in a per-session file and hashed as it grows; it
    // lives in memory and in the upload area, so a restart discards it. The
    // defaults refuse, for stores that do not keep sessions.

    /// Opens an empty upload session and returns its id (32 hex characters).
    async fn upload_begin(&self) -> Result<String, StoreError> {
        Err(StoreError::Backend(
            "this blob store does not keep upload sessions".into(),
        ))
    }

    /// Makes session `id` go on from its first `size` bytes on this
    /// process: a session it holds at that length stays as it is (its
    /// running hash kept: the fast path); otherwise, when the session's
    /// file is where every node of the instance reaches it (another node
    /// began it or appended last), that file's first `size` bytes are
    /// hashed again and the session continues from there.
    /// [`StoreError::NotFound`] when this store cannot reach the session's
    /// bytes (or holds fewer than `size`), [`StoreError::Conflict`] while
    /// a request on this process appends to it.
    async fn upload_resume(&self, id: &str, _size: u64) -> Result<(), StoreError> {
        Err(StoreError::NotFound(format!("upload {id}")))
    }

    /// The ids of the upload session files this store holds that were
    /// last written before `before` (to find files no session record
    /// names any more: left by a node that stopped between forgetting a
    /// session and removing its file, or by a deleted feed's sessions).
    async fn stale_upload_files(&self, _before: std::time::SystemTime) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }

    /// Whether every process serving this store reaches the bytes of every
    /// upload session (one process, or a folder all share): then a session
    /// whose bytes [`BlobStore::upload_resume`] cannot find is gone for good.
    fn upload_sessions_everywhere(&self) -> bool {
        true
    }

    /// The bytes received so far by session `id`, or None if there is none.
    async fn upload_len(&self, _id: &str) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }

    /// Appends `body` to session `id`, hashing it on the way, and returns
    /// the session's new length. If the total would pass `limit`
    /// ([`StoreError::TooLarge`]) or `body` fails midway, the session is
    /// cut back to where it was and stays usable. [`StoreError::NotFound`]
    /// for an unknown session, [`StoreError::Conflict`] while another
    /// request appends to or finishes the same session.
    async fn upload_append(&self, id: &str, _body: ByteStream, _limit: u64) -> Result<u64, StoreError> {
        Err(StoreError::NotFound(format!("upload {id}")))
    }

    /// Ends session `id`: its content, verified against `expected` when
    /// given (else the caller verifies it, e.g. against another
    /// algorithm's digest), becomes a staged blob. On a mismatch the
    /// session is discarded ([`StoreError::DigestMismatch`]).
    async fn upload_finish(&self, id: &str, _expected: Option<&Digest>) -> Result<StagedBlob, StoreError> {
        Err(StoreError::NotFound(format!("upload {id}")))
    }

    /// Discards session `id`; discarding an unknown session is not an error.
    async fn upload_abort(&self, _id: &str) -> Result<(), StoreError> {
        Ok(())
    }

    /// Whether the store can serve now: a cheap round trip to a remote
    /// backend ([`StoreError::Unavailable`] while it cannot be reached).
    /// Local stores are always ready.
    async fn ready(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Blobs as files under one directory: `sha256/ab/abcd…` for content,
/// `staging/` for uploads in flight (on the same file system, so that a
/// commit is a rename), `partial/` for resumable transfers, `uploads/` for
/// upload sessions and `corrupt/` for blobs taken out of service.
///
/// A blob taken out of service is renamed to `corrupt/HEX-MILLIS`; once a
/// verified copy replaces it (or nothing needs it) the name gets a
/// `.resolved` suffix, so what is still outstanding survives a restart
/// without any other record. Blobs found missing are recorded by one
/// marker file each, `damage/missing/HEX` (written atomically, removed
/// alone). Opened shared ([`FsBlobStore::open_shared`]), the store reads
/// `corrupt/` and `damage/missing/` again every [`crate::DAMAGE_REFRESH`]
/// ([`FsBlobStore::set_damage_refresh`]): two directory listings and one
/// small read per new marker, so what other nodes record or resolve is
/// seen here within that interval.
pub struct FsBlobStore {
    root: PathBuf,
    /// Where uploads are staged: `staging/`, or `staging/node-ID/` of this
    /// process when several nodes share the folder ([`FsBlobStore::open_shared`]).
    staging: PathBuf,
    /// The files of OCI upload sessions: `uploads/` for one process, or
    /// `upload-sessions/`, which every node sharing the folder reaches
    /// ([`FsBlobStore::open_shared`]; their records are in the database).
    uploads_dir: PathBuf,
    /// This node's liveness lock in a shared folder (held while open).
    _node_lock: Option<std::fs::File>,
    /// This node's name in a shared folder (`node-HEX`).
    node: Option<String>,
    uploads: Mutex<HashMap<String, UploadState>>,
    /// One lock per digest whose partial file a transfer is writing.
    transfers: std::sync::Arc<Mutex<TransferLocks>>,
    /// Outstanding quarantines: digest → the times of its `corrupt/` copies.
    quarantine: std::sync::Arc<Mutex<Quarantine>>,
    /// Held while a file is renamed into or out of a blob's place, so a
    /// verifying reader never moves aside a verified copy committed
    /// meanwhile.
    place: std::sync::Arc<Mutex<()>>,
    /// The blobs found missing, as last read or written here.
    missing: std::sync::Arc<Mutex<Vec<(Digest, i64)>>>,
    /// Serializes writes and readings of the damage records by this node.
    damage_io: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// The refresh interval, when the folder is shared.
    refresh_every: Option<std::sync::Arc<crate::refresh::RefreshEvery>>,
    /// Reads the damage records again periodically (shared folder only).
    _refresher: Option<crate::refresh::Refresher>,
    /// Blobs whose file was hashed whole and found right, with the length
    /// and modification time it had then: a partial range of such a file is
    /// served as it is; any other is verified whole first.
    verified: std::sync::Arc<Mutex<HashMap<Digest, (FileStamp, std::time::Instant)>>>,
}

/// What identifies a file's version cheaply: its length and mtime.
type FileStamp = (u64, Option<std::time::SystemTime>);

/// Most verified files remembered (then the memory starts over).
const VERIFIED_MAX: usize = 200_000;

fn file_stamp(meta: &std::fs::Metadata) -> FileStamp {
    (meta.len(), meta.modified().ok())
}

/// Notes that the file of `d` with `stamp` hashed right (bounded: past
/// [`VERIFIED_MAX`] the memory starts over).
fn remember_verified(
    verified: &Mutex<HashMap<Digest, (FileStamp, std::time::Instant)>>,
    d: Digest,
    stamp: FileStamp,
) {
    let mut v = locked(verified);
    if v.len() >= VERIFIED_MAX {
        v.clear();
    }
    v.insert(d, (stamp, std::time::Instant::now()));
}

/// How long a file hashed right (and unchanged since) is served without
/// hashing it again to a reader that verifies every blob itself
/// ([`BlobStore::get_for_verifier`]). Past it the file is hashed again, so
/// damage that came after the last hash is found here too.
const TRUST_VERIFIED_FOR: std::time::Duration = std::time::Duration::from_secs(600);

/// Whether the file of `d` with `stamp` hashed right since it last changed
/// (`within`: and no longer ago than that).
fn verified_since(
    verified: &Mutex<HashMap<Digest, (FileStamp, std::time::Instant)>>,
    d: &Digest,
    stamp: &FileStamp,
    within: Option<std::time::Duration>,
) -> bool {
    locked(verified)
        .get(d)
        .is_some_and(|(s, at)| s == stamp && within.is_none_or(|w| at.elapsed() < w))
}

type Quarantine = std::collections::BTreeMap<Digest, Vec<i64>>;

/// Locks a mutex whose data stays consistent even if a holder panicked.
fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `HEX-MILLIS` (an outstanding quarantine) → digest and time.
fn parse_quarantined(name: &str) -> Option<(Digest, i64)> {
    let (hex, millis) = name.split_once('-')?;
    Some((Digest::from_hex(hex).ok()?, millis.parse().ok()?))
}

/// Moves the blob at `path` to `corrupt/HEX-MILLIS` and counts it as
/// quarantined. With `same`, only if `path` still is that file (device and
/// inode): a verified copy renamed into place meanwhile stays.
fn quarantine_file(
    root: &Path,
    path: &Path,
    digest: &Digest,
    same: Option<&std::fs::Metadata>,
    place: &Mutex<()>,
    quarantine: &Mutex<Quarantine>,
) -> io::Result<bool> {
    let _placing = locked(place);
    let current = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if let Some(read) = same
        && !same_file(read, &current)
    {
        return Ok(false);
    }
    let dir = root.join("corrupt");
    std::fs::create_dir_all(&dir)?;
    let at = crate::now_millis();
    std::fs::rename(path, dir.join(format!("{}-{at}", digest.hex())))?;
    locked(quarantine).entry(*digest).or_default().push(at);
    Ok(true)
}

#[cfg(unix)]
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev() && a.ino() == b.ino()
}

#[cfg(not(unix))]
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    a.len() == b.len() && a.modified().ok() == b.modified().ok()
}

/// Marks the outstanding `corrupt/` copies of `digest` as resolved and
/// stops counting it as quarantined.
fn resolve_quarantine(root: &Path, digest: &Digest, quarantine: &Mutex<Quarantine>) -> io::Result<()> {
    let Some(times) = locked(quarantine).remove(digest) else {
        return Ok(());
    };
    let dir = root.join("corrupt");
    for at in times {
        let from = dir.join(format!("{}-{at}", digest.hex()));
        match std::fs::rename(&from, dir.join(format!("{}-{at}.resolved", digest.hex()))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The error a verifying read ends with when the bytes are wrong.
fn corrupt_read(digest: &Digest, actual: &Digest) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "blob {digest} is corrupt in this instance's storage (its bytes hash to {actual}); \
             taken out of service"
        ),
    )
}

type TransferLocks = HashMap<Digest, std::sync::Arc<tokio::sync::Mutex<()>>>;

/// Holds a digest's transfer lock; forgets the digest's entry once nobody
/// else holds or waits for it.
struct TransferClaim {
    digest: Digest,
    locks: std::sync::Arc<Mutex<TransferLocks>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for TransferClaim {
    fn drop(&mut self) {
        let Ok(mut locks) = self.locks.lock() else { return };
        drop(self.guard.take());
        // The map's own reference is the last one: nobody waits.
        if locks
            .get(&self.digest)
            .is_some_and(|l| std::sync::Arc::strong_count(l) == 1)
        {
            locks.remove(&self.digest);
        }
    }
}

/// Hashes a whole file, reading it in large chunks; its sha256 and size.
fn hash_file(path: &Path) -> io::Result<(Digest, u64)> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256Hasher::new();
    let mut buf = vec![0u8; SEND_CHUNK];
    let mut size = 0u64;
    loop {
        let n = match f.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok((h.finish(), size));
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
}

/// The running hash of the first `size` bytes of file `path` (a session
/// file another node wrote). NotFound when the file is missing or shorter.
fn hash_prefix(path: &Path, size: u64) -> io::Result<Sha256Hasher> {
    use std::io::Read;
    let f = std::fs::File::open(path)?;
    if f.metadata()?.len() < size {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "the upload session's file is shorter than its record",
        ));
    }
    let mut h = Sha256Hasher::new();
    let mut buf = vec![0u8; SEND_CHUNK];
    let mut left = size;
    let mut f = f.take(size);
    while left > 0 {
        let n = match f.read(&mut buf) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "the upload session's file ended early",
                ));
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(h)
}

/// What is known of an upload session: the hash and length of its content.
/// The file may hold more bytes past `size` (left by an interrupted
/// append); they are cut off before the next append or the finish.
struct UploadState {
    /// None while a request appends to the session.
    hasher: Option<Sha256Hasher>,
    size: u64,
    /// Held by the thread writing an append. When an append's request goes
    /// away, its writer may still be finishing; the next request waits here.
    writer: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// Puts a session's state back when an append ends, however it ends: the
/// new state on success, the previous one otherwise (the request failed,
/// or its future was dropped midway).
struct AppendGuard<'a> {
    store: &'a FsBlobStore,
    id: &'a str,
    restore: Option<(Sha256Hasher, u64)>,
}

impl AppendGuard<'_> {
    fn finish(mut self, hasher: Sha256Hasher, size: u64) -> bool {
        self.restore = None;
        self.store.put_back(self.id, hasher, size)
    }
}

impl Drop for AppendGuard<'_> {
    fn drop(&mut self) {
        if let Some((hasher, size)) = self.restore.take() {
            self.store.put_back(self.id, hasher, size);
        }
    }
}

/// The slice a blob writer hashes and then writes (small enough to stay
/// in a core's cache in between: copying a larger write into the page
/// cache costs several times more per byte here).
const WRITE_SLICE: usize = 64 << 10;

/// Most bytes of ready chunks [`pour`] hands to its writer at once.
const POUR_BATCH: usize = 1 << 20;

/// How long [`pour`]'s writer waits for the next chunks before it gives
/// its thread back (a fast body's next chunks are that close).
const POUR_LINGER: std::time::Duration = std::time::Duration::from_millis(1);

/// How many bytes a blob writer lets pile up in the page cache before it
/// starts writing them out ([`start_writeback`]).
const WRITEBACK_EVERY: usize = 8 << 20;

/// Starts writing the window `[offset, offset + len)` of a file to the
/// device without waiting for it, so that the flush at the end (before
/// the blob counts as stored) finds little left to do. Linux starts
/// write-back of a range on `POSIX_FADV_DONTNEED` and drops only its pages
/// that are already clean: asked for the window just written (all dirty),
/// it drops next to nothing and the pages stay cached — content just
/// pushed is often read at once (a pull right after a push, a spoke
/// fetching a fresh publish). Asking for the whole file, as the writer
/// once did, dropped every earlier window and made those first reads go to
/// the disk. A failure only means the final flush does all the work.
#[cfg(target_os = "linux")]
fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    if let Some(len) = std::num::NonZeroU64::new(len) {
        let _ = rustix::fs::fadvise(file, offset, Some(len), rustix::fs::Advice::DontNeed);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &std::fs::File, _offset: u64, _len: u64) {}

/// How [`pour`]'s writer puts the bytes into the file.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sink {
    /// Through the page cache, where they stay for the reads that often
    /// follow an upload at once; write-back is started every
    /// [`WRITEBACK_EVERY`] bytes.
    Cached,
    /// Past the page cache ([`crate::direct`]); the file was opened with
    /// `O_DIRECT` (`true`), or asked for it and was refused (`false`).
    Direct(bool),
}

/// What [`pour`] leaves: the file, the hash of what went through it (if it
/// was hashing), and the bytes the file now holds.
struct Poured {
    file: std::fs::File,
    hasher: Option<Sha256Hasher>,
    size: u64,
}

/// The writing end of [`pour`]: the file as `sink` says, and where the
/// cached sink's write-back stands. Moved to a blocking thread while there
/// are bytes to write, and back while there are none.
enum PourOut {
    Direct(crate::direct::DirectWriter),
    Cached {
        out: std::io::BufWriter<std::fs::File>,
        unflushed: usize,
        window_start: u64,
    },
}

impl PourOut {
    fn new(file: std::fs::File, sink: Sink, start: u64) -> Self {
        match sink {
            Sink::Direct(direct) => PourOut::Direct(crate::direct::DirectWriter::new(file, direct, start)),
            Sink::Cached => PourOut::Cached {
                out: std::io::BufWriter::with_capacity(WRITE_SLICE, file),
                unflushed: 0,
                window_start: start,
            },
        }
    }

    /// Hashes and writes one batch of chunks (blocking).
    fn write(&mut self, batch: Vec<Bytes>, hasher: &mut Option<Sha256Hasher>) -> io::Result<()> {
        use std::io::Write;
        match self {
            PourOut::Direct(out) => {
                for chunk in batch {
                    out.write(&chunk, hasher)?;
                }
            }
            PourOut::Cached {
                out,
                unflushed,
                window_start,
            } => {
                // Slices of a chunk are hashed and written one after the
                // other while they are still in the CPU's cache; a slice of
                // the buffer's size goes to the file without being copied
                // into it.
                for chunk in batch {
                    for piece in chunk.chunks(WRITE_SLICE) {
                        if let Some(h) = hasher {
                            h.update(piece);
                        }
                        out.write_all(piece)?;
                    }
                    *unflushed += chunk.len();
                }
                if *unflushed >= WRITEBACK_EVERY {
                    out.flush()?;
                    start_writeback(out.get_ref(), *window_start, *unflushed as u64);
                    *window_start += *unflushed as u64;
                    *unflushed = 0;
                }
            }
        }
        Ok(())
    }

    /// The file, with every byte handed over written (blocking).
    fn finish(self) -> io::Result<std::fs::File> {
        match self {
            // Also after a broken body: the file keeps every byte that came.
            PourOut::Direct(out) => out.finish(),
            PourOut::Cached { out, .. } => out.into_inner().map_err(|e| e.into_error()),
        }
    }
}

/// Streams `body` into `file` (which already holds `size` bytes and is
/// positioned after them) the way `sink` says: hashing and writing happen
/// on a blocking thread, so the async workers only move chunks. The thread
/// is held only while there are bytes to write: when the body has sent
/// nothing more yet, it is given back, and taken again with the next
/// bytes, so bodies that trickle (a slow link, a hostile client) hold no
/// thread of the runtime's bounded blocking pool while they wait. Past
/// `limit` bytes in all it stops with [`StoreError::TooLarge`]. If `body`
/// fails midway, the error is returned once everything before it is
/// written. If the caller's future is dropped, the writer finishes what it
/// was handed and stops; `hold` is dropped when the writer ends.
async fn pour(
    mut body: ByteStream,
    file: std::fs::File,
    sink: Sink,
    hasher: Option<Sha256Hasher>,
    mut size: u64,
    limit: u64,
    hold: impl Send + 'static,
) -> Result<Poured, StoreError> {
    use futures::FutureExt as _;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Bytes>>(4);
    let start = size;
    let writer = tokio::spawn(async move {
        let _hold = hold;
        let mut out = PourOut::new(file, sink, start);
        let mut hasher = hasher;
        while let Some(first) = rx.recv().await {
            // Writes what is handed over for as long as more is ready,
            // then gives the thread back.
            let (o, h, r, written) = tokio::task::spawn_blocking(move || {
                let mut written = out.write(first, &mut hasher);
                // A body arriving at speed leaves the channel empty for
                // moments only: the thread lingers up to POUR_LINGER for
                // the next batch before it is given back.
                let mut idle_since = None;
                while written.is_ok() {
                    match rx.try_recv() {
                        Ok(batch) => {
                            idle_since = None;
                            written = out.write(batch, &mut hasher);
                        }
                        Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {
                            let since = *idle_since.get_or_insert_with(std::time::Instant::now);
                            if since.elapsed() >= POUR_LINGER {
                                break;
                            }
                            std::thread::sleep(std::time::Duration::from_micros(50));
                        }
                        Err(_) => break,
                    }
                }
                (out, hasher, rx, written)
            })
            .await
            .map_err(io::Error::other)?;
            (out, hasher, rx) = (o, h, r);
            written?;
        }
        let file = tokio::task::spawn_blocking(move || out.finish())
            .await
            .map_err(io::Error::other)??;
        io::Result::Ok((file, hasher))
    });
    let mut failure = None;
    let mut ended = false;
    while !ended {
        // The chunks that are ready go to the writer together (up to
        // POUR_BATCH bytes): each hand-over can wake the writer's thread,
        // and each wake-up costs as much as hashing a few kilobytes.
        let mut batch = Vec::new();
        let mut batched = 0;
        let mut next = body.next().await;
        loop {
            match next {
                Some(Ok(chunk)) => {
                    size += chunk.len() as u64;
                    if size > limit {
                        drop(tx);
                        let _ = writer.await;
                        return Err(StoreError::TooLarge { limit });
                    }
                    batched += chunk.len();
                    batch.push(chunk);
                }
                Some(Err(e)) => {
                    failure = Some(e);
                    ended = true;
                    break;
                }
                None => {
                    ended = true;
                    break;
                }
            }
            if batched >= POUR_BATCH {
                break;
            }
            match body.next().now_or_never() {
                Some(n) => next = n,
                None => break, // nothing more yet: hand over what is here
            }
        }
        if !batch.is_empty() && tx.send(batch).await.is_err() {
            break; // the writer failed; its error is below
        }
    }
    drop(tx);
    let (file, hasher) = writer
        .await
        .map_err(|e| StoreError::Backend(format!("blob writer: {e}")))??;
    if let Some(e) = failure {
        return Err(e.into());
    }
    Ok(Poured { file, hasher, size })
}
/// Chunk size when serving a blob.
const SEND_CHUNK: usize = 1024 * 1024;
/// Blobs up to this size read whole are read, verified and handed over in
/// one piece, in one blocking call.
const SMALL_READ: u64 = SEND_CHUNK as u64;
/// Most idle read buffers kept for reuse (then [`SEND_CHUNK`] bytes each).
const READ_BUFFERS_KEPT: usize = 8;

/// Read buffers of [`SEND_CHUNK`] bytes, reused from one served chunk to
/// the next. A fresh megabyte from the allocator is fresh pages from the
/// kernel (the C allocator gives freed ones back), and faulting them in
/// and zeroing them cost as much as a tenth of a large transfer's CPU.
static READ_BUFFERS: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// An empty buffer with room for [`SEND_CHUNK`] bytes.
fn read_buffer() -> Vec<u8> {
    locked(&READ_BUFFERS)
        .pop()
        .unwrap_or_else(|| Vec::with_capacity(SEND_CHUNK))
}

/// A chunk being served, in a buffer that goes back to [`READ_BUFFERS`]
/// when the last `Bytes` of it is dropped.
struct PooledChunk(Vec<u8>);

impl AsRef<[u8]> for PooledChunk {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for PooledChunk {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.0);
        if buf.capacity() != SEND_CHUNK {
            return;
        }
        buf.clear();
        let mut kept = locked(&READ_BUFFERS);
        if kept.len() < READ_BUFFERS_KEPT {
            kept.push(buf);
        }
    }
}

/// A small blob's bytes read whole: in a pooled buffer, handed back to the
/// pool when dropped, or in one of its own.
fn small_chunk(buf: Vec<u8>, pooled: bool) -> Bytes {
    if pooled {
        Bytes::from_owner(PooledChunk(buf))
    } else {
        Bytes::from(buf)
    }
}

/// What opening a blob for reading found: a small blob read whole (its
/// size, and its bytes or why they cannot be served), or a file to stream.
/// What reading a small blob whole needs of the folder store (on a
/// blocking thread: [`SmallRead::open`]).
struct SmallRead {
    root: PathBuf,
    verified: std::sync::Arc<Mutex<HashMap<Digest, (FileStamp, std::time::Instant)>>>,
    place: std::sync::Arc<Mutex<()>>,
    quarantine: std::sync::Arc<Mutex<Quarantine>>,
    /// The reader verifies what it gets: a blob hashed right a short while
    /// ago is not hashed again.
    trust_recent: bool,
}

impl SmallRead {
    /// Opens blob `d` at `path`: read whole, hashed and judged when it is
    /// wanted whole (`wants_whole`, up to `wanted_end`) and at most
    /// [`SMALL_READ`] bytes; otherwise the open file, to stream. Blocking.
    fn open(
        &self,
        path: &Path,
        d: Digest,
        wants_whole: bool,
        wanted_end: Option<u64>,
    ) -> Result<Opened, StoreError> {
        use std::io::Read;
        let SmallRead {
            root,
            verified,
            place,
            quarantine,
            trust_recent,
        } = self;
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StoreError::BlobMissing(d)),
            Err(e) => return Err(e.into()),
        };
        let meta = file.metadata()?;
        let size = meta.len();
        let whole = wants_whole && wanted_end.is_none_or(|end| end >= size);
        if !whole || size > SMALL_READ {
            return Ok(Opened::Large(file, meta));
        }
        // Half a pooled buffer or more: one from the pool (no fresh
        // pages to fault in), which a caller keeping the bytes holds
        // at most twice over. Smaller ones get their own.
        let pooled = size >= SEND_CHUNK as u64 / 2;
        let mut buf = if pooled {
            read_buffer()
        } else {
            Vec::with_capacity(size as usize)
        };
        (&file).take(size).read_to_end(&mut buf)?;
        if buf.len() as u64 != size {
            return Ok(Opened::Small(
                size,
                Err(io::Error::new(io::ErrorKind::UnexpectedEof, "blob shrank")),
            ));
        }
        if *trust_recent && verified_since(verified, &d, &file_stamp(&meta), Some(TRUST_VERIFIED_FOR)) {
            return Ok(Opened::Small(size, Ok(small_chunk(buf, pooled))));
        }
        let actual = Digest::of(&buf);
        if actual == d {
            remember_verified(verified, d, file_stamp(&meta));
            return Ok(Opened::Small(size, Ok(small_chunk(buf, pooled))));
        }
        tracing::error!(blob = %d, %actual, "stored blob is corrupt (found while reading it); taken out of service");
        if let Err(e) = quarantine_file(root, path, &d, Some(&meta), place, quarantine) {
            tracing::error!(blob = %d, error = %e, "could not move the corrupt blob aside");
        }
        Ok(Opened::Small(size, Err(corrupt_read(&d, &actual))))
    }
}

/// A small body read whole into one buffer.
async fn collect_small(body: BlobBody) -> Result<Option<Bytes>, StoreError> {
    let mut stream = body.stream;
    let mut buf = bytes::BytesMut::with_capacity(usize::try_from(body.total_size).unwrap_or(0));
    while let Some(chunk) = stream.next().await {
        buf.extend_from_slice(&chunk?);
    }
    Ok(Some(buf.freeze()))
}

enum Opened {
    Small(u64, io::Result<Bytes>),
    Large(std::fs::File, std::fs::Metadata),
}

/// The file of blob `digest` under `root`.
fn blob_path_in(root: &Path, digest: &Digest) -> PathBuf {
    let hex = digest.hex();
    root.join("sha256").join(&hex[..2]).join(hex)
}

/// The outstanding quarantines in `root/corrupt/`. A copy whose blob is in
/// place again (a verified copy was committed just before a crash) is
/// marked resolved.
fn load_quarantine(root: &Path) -> io::Result<Quarantine> {
    let mut out = Quarantine::new();
    let dir = root.join("corrupt");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some((digest, at)) = name.to_str().and_then(parse_quarantined) else {
            continue; // resolved, or not ours
        };
        out.entry(digest).or_default().push(at);
    }
    let mut outstanding = Quarantine::new();
    for (digest, times) in out {
        if blob_path_in(root, &digest).exists() {
            let one = Mutex::new(Quarantine::from([(digest, times)]));
            resolve_quarantine(root, &digest, &one)?;
        } else {
            outstanding.insert(digest, times);
        }
    }
    Ok(outstanding)
}

/// The single record file of blobs found missing an earlier version
/// rewrote whole (nodes sharing the folder overwrote each other's): turned
/// into markers at open, then removed.
const LEGACY_MISSING_RECORD: &str = "missing";
/// One marker file per blob found missing (`damage/missing/HEX`, holding
/// the time found in ms), written atomically (temporary file + rename) and
/// removed one by one: never read, changed and written back.
const MISSING_MARKERS: &str = "damage/missing";

fn parse_record(text: &str) -> Vec<(Digest, i64)> {
    text.lines()
        .filter_map(|l| {
            let (d, at) = l.split_once(' ')?;
            Some((d.parse::<Digest>().ok()?, at.trim().parse::<i64>().ok()?))
        })
        .collect()
}

/// Writes `d`'s missing marker: a temporary file of this writer's own,
/// flushed, renamed into place, and the directory flushed.
fn write_missing_marker(root: &Path, d: &Digest, at: i64) -> io::Result<()> {
    use std::io::Write;
    let dir = root.join(MISSING_MARKERS);
    std::fs::create_dir_all(&dir)?;
    let tmp = dir.join(format!(".{}.{:016x}.tmp", d.hex(), rand::random::<u64>()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(at.to_string().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(d.hex()))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    std::fs::File::open(&dir)?.sync_all()
}

/// Removes `d`'s missing marker; none there is fine.
fn remove_missing_marker(root: &Path, d: &Digest) -> io::Result<()> {
    match std::fs::remove_file(root.join(MISSING_MARKERS).join(d.hex())) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Turns the single record file of an earlier version into one marker
/// per digest, then removes it (a marker already there is kept).
fn migrate_missing_record(root: &Path) -> io::Result<()> {
    let path = root.join(LEGACY_MISSING_RECORD);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for (d, at) in parse_record(&text) {
        if !root.join(MISSING_MARKERS).join(d.hex()).exists() {
            write_missing_marker(root, &d, at)?;
        }
    }
    std::fs::remove_file(&path)
}

/// The blobs found missing, from their markers, less those stored again
/// since (whose markers are removed). `known` gives the times of markers
/// read before, so a refresh reads only new markers.
fn load_missing(root: &Path, known: &[(Digest, i64)]) -> io::Result<Vec<(Digest, i64)>> {
    let entries = match std::fs::read_dir(root.join(MISSING_MARKERS)) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let known: HashMap<Digest, i64> = known.iter().copied().collect();
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let Some(d) = entry.file_name().to_str().and_then(|n| Digest::from_hex(n).ok()) else {
            continue; // a writer's temporary file, or not ours
        };
        if blob_path_in(root, &d).exists() {
            remove_missing_marker(root, &d)?;
            continue;
        }
        let at = match known.get(&d) {
            Some(at) => *at,
            None => match std::fs::read_to_string(entry.path()) {
                Ok(t) => t.trim().parse().unwrap_or_else(|_| crate::now_millis()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // removed meanwhile
                Err(e) => return Err(e),
            },
        };
        out.push((d, at));
    }
    out.sort();
    Ok(out)
}

/// What reading the damage records again needs (shared with the refresher).
#[derive(Clone)]
struct FsDamage {
    root: PathBuf,
    quarantine: std::sync::Arc<Mutex<Quarantine>>,
    place: std::sync::Arc<Mutex<()>>,
    missing: std::sync::Arc<Mutex<Vec<(Digest, i64)>>>,
    io: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl FsDamage {
    /// Reads `corrupt/` and `damage/missing/` again. The quarantines are
    /// read and replaced while no file is moved into or out of a blob's
    /// place, so none this node makes meanwhile is lost.
    async fn refresh(&self) -> Result<(), StoreError> {
        let _one = self.io.lock().await;
        let me = self.clone();
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            {
                let _placing = locked(&me.place);
                let q = load_quarantine(&me.root)?;
                *locked(&me.quarantine) = q;
            }
            let known = locked(&me.missing).clone();
            let m = load_missing(&me.root, &known)?;
            *locked(&me.missing) = m;
            Ok(())
        })
        .await
        .map_err(|e| StoreError::Backend(format!("blob store: {e}")))??;
        Ok(())
    }
}

/// Where the nodes sharing a blob folder keep their liveness locks:
/// `staging/.nodes/node-ID.lock`, held (`flock`) for as long as the node's
/// store is open.
const NODE_LOCKS: &str = ".nodes";

/// The directory of OCI upload session files in a shared folder: any node
/// may append to a session another began, so none is a node's own; a
/// session's file goes when the session ends or expires (its record in the
/// database says when).
const SHARED_UPLOADS: &str = "upload-sessions";

/// Takes this node's liveness lock, then removes the scratch of every node
/// that no longer holds its lock (it stopped or died): its `staging/` and
/// `uploads/` directories and its lock file. The lock is taken before the
/// node's own directories exist, so a starting node never mistakes a live
/// node's new directory for a dead one's. Loose files directly under
/// `staging/` and `uploads/` (left by a store opened for one process) go
/// too. Blocking: run it on the blocking pool.
fn claim_shared_scratch(root: &Path, node: &str) -> io::Result<std::fs::File> {
    use rustix::fs::{FlockOperation, flock};
    let locks = root.join("staging").join(NODE_LOCKS);
    std::fs::create_dir_all(&locks)?;
    std::fs::create_dir_all(root.join("uploads"))?;
    let own = std::fs::File::create(locks.join(format!("{node}.lock")))?;
    flock(&own, FlockOperation::NonBlockingLockExclusive).map_err(io::Error::from)?;
    // Whose lock can be taken is gone.
    let mut alive: std::collections::HashSet<String> = std::collections::HashSet::new();
    for e in std::fs::read_dir(&locks)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(other) = name.strip_suffix(".lock") else {
            continue;
        };
        if other == node {
            alive.insert(other.to_string());
            continue;
        }
        let f = match std::fs::File::open(e.path()) {
            Ok(f) => f,
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        };
        match flock(&f, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {
                // Dead: its lock file goes last, while this holds it.
                for dir in ["staging", "uploads"] {
                    remove_all_quietly(&root.join(dir).join(other))?;
                }
                remove_all_quietly(&e.path())?;
            }
            Err(_) => {
                alive.insert(other.to_string());
            }
        }
    }
    for dir in ["staging", "uploads"] {
        for e in std::fs::read_dir(root.join(dir))? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name == NODE_LOCKS || alive.contains(&name) {
                continue;
            }
            // A directory of a node without a lock file is garbage of an
            // older layout; a loose file is an upload of a one-process store.
            remove_all_quietly(&e.path())?;
        }
    }
    Ok(own)
}

/// Removes a file or a directory tree; already gone is fine.
fn remove_all_quietly(path: &Path) -> io::Result<()> {
    let r = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match r {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

impl FsBlobStore {
    /// Opens (creating as needed) the blob folder `root`, for this process
    /// alone: uploads left in `staging/` and `uploads/` by a stopped process
    /// are removed.
    pub async fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        Self::open_with(root.into(), None).await
    }

    /// Opens a blob folder that several nodes of one instance share (a
    /// network file system with working `flock`): this process stages its
    /// uploads in `staging/node-ID/` and `uploads/node-ID/` of its own,
    /// holds a liveness lock while open, and removes the scratch of nodes
    /// that no longer hold theirs (stopped or died) — never the uploads
    /// other nodes are receiving.
    pub async fn open_shared(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let node = format!("node-{}", hex::encode(rand::random::<[u8; 8]>()));
        Self::open_with(root.into(), Some(node)).await
    }

    async fn open_with(root: PathBuf, node: Option<String>) -> Result<Self, StoreError> {
        tokio::fs::create_dir_all(root.join("sha256")).await?;
        let mut node_lock = None;
        tokio::fs::create_dir_all(root.join("partial")).await?;
        let (staging, uploads) = match &node {
            None => {
                // Client uploads that were in flight when the process
                // stopped are garbage; replication transfers (`partial/`)
                // resume instead. Upload sessions live in memory too: after
                // a restart they are gone.
                for dir in ["staging", "uploads"] {
                    let dir = root.join(dir);
                    if tokio::fs::try_exists(&dir).await? {
                        tokio::fs::remove_dir_all(&dir).await?;
                    }
                }
                (root.join("staging"), root.join("uploads"))
            }
            Some(node) => {
                let (r, n) = (root.clone(), node.clone());
                let lock = tokio::task::spawn_blocking(move || claim_shared_scratch(&r, &n))
                    .await
                    .map_err(|e| StoreError::Backend(format!("blob store: {e}")))??;
                node_lock = Some(lock);
                (root.join("staging").join(node), root.join(SHARED_UPLOADS))
            }
        };
        tokio::fs::create_dir_all(&staging).await?;
        tokio::fs::create_dir_all(&uploads).await?;
        let (quarantine, missing) = {
            let root = root.clone();
            tokio::task::spawn_blocking(move || -> io::Result<_> {
                migrate_missing_record(&root)?;
                Ok((load_quarantine(&root)?, load_missing(&root, &[])?))
            })
            .await
            .map_err(|e| StoreError::Backend(format!("blob store: {e}")))??
        };
        let quarantine = std::sync::Arc::new(Mutex::new(quarantine));
        let missing = std::sync::Arc::new(Mutex::new(missing));
        let place: std::sync::Arc<Mutex<()>> = Default::default();
        let damage_io: std::sync::Arc<tokio::sync::Mutex<()>> = Default::default();
        let (refresh_every, refresher) = match &node {
            None => (None, None),
            Some(_) => {
                let every = crate::refresh::RefreshEvery::new(crate::DAMAGE_REFRESH);
                let records = FsDamage {
                    root: root.clone(),
                    quarantine: quarantine.clone(),
                    place: place.clone(),
                    missing: missing.clone(),
                    io: damage_io.clone(),
                };
                let refresher = crate::refresh::spawn_refresher(every.clone(), move || {
                    let records = records.clone();
                    async move { records.refresh().await }
                });
                (Some(every), Some(refresher))
            }
        };
        Ok(Self {
            root,
            staging,
            uploads_dir: uploads,
            _node_lock: node_lock,
            node,
            uploads: Mutex::new(HashMap::new()),
            transfers: Default::default(),
            quarantine,
            place,
            missing,
            damage_io,
            refresh_every,
            _refresher: refresher,
            verified: std::sync::Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// Sets how often a shared store reads the damage records again
    /// (default [`crate::DAMAGE_REFRESH`]); nothing for a store opened
    /// alone, which no other process writes to.
    pub fn set_damage_refresh(&self, every: std::time::Duration) {
        if let Some(e) = &self.refresh_every {
            e.set(every);
        }
    }

    fn damage(&self) -> FsDamage {
        FsDamage {
            root: self.root.clone(),
            quarantine: self.quarantine.clone(),
            place: self.place.clone(),
            missing: self.missing.clone(),
            io: self.damage_io.clone(),
        }
    }

    /// This node's name when the folder is shared
    /// ([`FsBlobStore::open_shared`]), else None.
    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }

    /// Whether the node named `node` (another node sharing this folder) is
    /// gone: it holds no liveness lock (it stopped or died, or its lock
    /// file was removed by a node that found it dead). A name that is not
    /// a node name is never gone.
    pub async fn node_is_gone(&self, node: &str) -> Result<bool, StoreError> {
        let valid = node
            .strip_prefix("node-")
            .is_some_and(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit()));
        if !valid {
            return Ok(false);
        }
        let path = self
            .root
            .join("staging")
            .join(NODE_LOCKS)
            .join(format!("{node}.lock"));
        tokio::task::spawn_blocking(move || -> io::Result<bool> {
            use rustix::fs::{FlockOperation, flock};
            let f = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
                Err(e) => return Err(e),
            };
            // Taken: nobody holds it. Released when `f` closes.
            Ok(flock(&f, FlockOperation::NonBlockingLockExclusive).is_ok())
        })
        .await
        .map_err(|e| StoreError::Backend(format!("blob store: {e}")))?
        .map_err(StoreError::from)
    }

    /// The file of session `id`, or None if `id` is not a session id.
    /// The file of upload session `id` (None for an id that is not 32
    /// lowercase hex characters).
    pub(crate) fn upload_path(&self, id: &str) -> Option<PathBuf> {
        let valid = id.len() == 32
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        valid.then(|| self.uploads_dir.join(id))
    }

    /// How this process holds upload session `id`: its length here and
    /// whether a request appends to or finishes it now; None when not held.
    pub(crate) fn upload_held(&self, id: &str) -> Result<Option<(u64, bool)>, StoreError> {
        Ok(self.sessions()?.get(id).map(|st| (st.size, st.hasher.is_none())))
    }

    fn sessions(&self) -> Result<std::sync::MutexGuard<'_, HashMap<String, UploadState>>, StoreError> {
        self.uploads
            .lock()
            .map_err(|_| StoreError::Backend("upload sessions lock poisoned".into()))
    }

    /// In a shared folder, forgets the running hashes of sessions whose
    /// file is gone (finished or discarded through another node), once
    /// this process holds many: they would otherwise stay until it stops.
    async fn forget_sessions_gone_elsewhere(&self) -> Result<(), StoreError> {
        const MANY: usize = 256;
        let ids: Vec<String> = {
            let sessions = self.sessions()?;
            if sessions.len() < MANY {
                return Ok(());
            }
            sessions
                .iter()
                .filter(|(_, st)| st.hasher.is_some())
                .map(|(id, _)| id.clone())
                .collect()
        };
        let dir = self.uploads_dir.clone();
        let gone = tokio::task::spawn_blocking(move || {
            ids.into_iter()
                .filter(|id| !dir.join(id).exists())
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| StoreError::Backend(format!("blob store: {e}")))?;
        let mut sessions = self.sessions()?;
        for id in gone {
            if sessions.get(&id).is_some_and(|st| st.hasher.is_some()) {
                sessions.remove(&id);
            }
        }
        Ok(())
    }

    /// Returns a session's state after an append; false if the session was
    /// aborted meanwhile.
    fn put_back(&self, id: &str, hasher: Sha256Hasher, size: u64) -> bool {
        let Ok(mut sessions) = self.uploads.lock() else {
            return false;
        };
        match sessions.get_mut(id) {
            Some(state) => {
                state.hasher = Some(hasher);
                state.size = size;
                true
            }
            None => false,
        }
    }

    /// Takes the hasher of session `id` for an append or finish.
    /// Waits until no thread writes to the file of session `id` any more,
    /// then takes its hasher. Returns the writer lock, held for the thread
    /// that writes next.
    async fn claim(
        &self,
        id: &str,
    ) -> Result<(Sha256Hasher, u64, tokio::sync::OwnedMutexGuard<()>), StoreError> {
        let busy = || StoreError::Conflict(format!("upload {id} is busy with another request"));
        let missing = || StoreError::NotFound(format!("upload {id}"));
        let writer = {
            let sessions = self.sessions()?;
            let state = sessions.get(id).ok_or_else(missing)?;
            if state.hasher.is_none() {
                return Err(busy());
            }
            state.writer.clone()
        };
        let held = writer.lock_owned().await;
        let mut sessions = self.sessions()?;
        let state = sessions.get_mut(id).ok_or_else(missing)?;
        let hasher = state.hasher.take().ok_or_else(busy)?;
        Ok((hasher, state.size, held))
    }

    /// Takes the exclusive claim on `digest`'s transfer, waiting while
    /// another writer holds it.
    async fn claim_transfer(&self, digest: &Digest) -> Result<TransferClaim, StoreError> {
        let guard = self.transfer_lock(digest)?.lock_owned().await;
        Ok(self.transfer_claim(digest, guard))
    }

    /// [`FsBlobStore::claim_transfer`] without waiting: None while another
    /// writer holds the transfer.
    fn try_claim_transfer(&self, digest: &Digest) -> Result<Option<TransferClaim>, StoreError> {
        Ok(self
            .transfer_lock(digest)?
            .try_lock_owned()
            .ok()
            .map(|guard| self.transfer_claim(digest, guard)))
    }

    /// The lock of `digest`'s transfer (made on first use).
    fn transfer_lock(&self, digest: &Digest) -> Result<std::sync::Arc<tokio::sync::Mutex<()>>, StoreError> {
        let mut locks = self
            .transfers
            .lock()
            .map_err(|_| StoreError::Backend("transfer locks poisoned".into()))?;
        Ok(locks.entry(*digest).or_default().clone())
    }

    fn transfer_claim(&self, digest: &Digest, guard: tokio::sync::OwnedMutexGuard<()>) -> TransferClaim {
        TransferClaim {
            digest: *digest,
            locks: self.transfers.clone(),
            guard: Some(guard),
        }
    }

    fn partial_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("partial").join(digest.hex())
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        blob_path_in(&self.root, digest)
    }

    /// Marks `digest`'s outstanding quarantine resolved, off the async threads.
    async fn resolve(&self, digest: &Digest) -> Result<(), StoreError> {
        if !locked(&self.quarantine).contains_key(digest) {
            return Ok(());
        }
        let (root, d, q, place) = (
            self.root.clone(),
            *digest,
            self.quarantine.clone(),
            self.place.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let _placing = locked(&place);
            resolve_quarantine(&root, &d, &q)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("blob store: {e}")))??;
        Ok(())
    }
}

/// A [`FsBlobStore::put_many_flushed`] batch of at least this many blobs
/// is flushed as a whole: with one `syncfs(2)` when little else waits to
/// be written ([`SYNCFS_WHILE_DIRTY_BELOW`]), else by [`FLUSHERS`]
/// threads while it is written, instead of one file after another.
const FLUSH_IN_PARALLEL_FROM: usize = 16;
/// Threads flushing the files of one large batch.
const FLUSHERS: usize = 8;
/// A large batch is flushed with one `syncfs(2)` of the blob folder's file
/// system while the system holds fewer dirty and writeback bytes than this
/// (`/proc/meminfo`, read before the batch is written): syncfs writes out
/// every dirty page of the file system, not only the batch's, so with 300
/// MB dirty elsewhere (a large upload in progress) it took 108 ms where
/// per-file flushes took 27 ms for 500 files; with little dirty it is the
/// cheaper one (10,000 small files: 0.15 s against ~0.7 s), and it also
/// makes the batch's renames durable.
const SYNCFS_WHILE_DIRTY_BELOW: u64 = 32 << 20;

/// Dirty and writeback bytes of the whole system (`/proc/meminfo`), or
/// None where that cannot be read (not Linux).
fn system_dirty_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let mut sum = 0u64;
    let mut found = 0;
    for line in text.lines() {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        if name == "Dirty" || name == "Writeback" {
            let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
            sum = sum.saturating_add(kib.saturating_mul(1024));
            found += 1;
        }
    }
    (found == 2).then_some(sum)
}

/// Flushes the whole file system holding `dir` (`syncfs(2)`).
#[cfg(target_os = "linux")]
fn sync_file_system(dir: &Path) -> io::Result<()> {
    let fs = std::fs::File::open(dir)?;
    rustix::fs::syncfs(&fs).map_err(io::Error::from)
}

/// What [`place_blobs`] needs of the folder store.
struct Placing {
    root: PathBuf,
    staging: PathBuf,
    place: std::sync::Arc<Mutex<()>>,
    quarantine: std::sync::Arc<Mutex<Quarantine>>,
    verified: std::sync::Arc<Mutex<HashMap<Digest, (FileStamp, std::time::Instant)>>>,
    /// Blobs of [`DIRECT_FROM`] bytes or more are written past the page
    /// cache ([`crate::direct`]).
    direct: bool,
}

/// The smallest blob [`place_blobs`] writes past the page cache when asked
/// to: below it, the device's latency for each file written on its own
/// costs more than the copy into the cache saves.
const DIRECT_FROM: usize = 256 << 10;

impl FsBlobStore {
    /// [`BlobStore::put_many`] in one blocking pass; with `durable`, the
    /// written blobs are on stable storage when it returns (each file
    /// flushed with `fdatasync`; a large batch with one `syncfs` while
    /// little else is dirty, else on [`FLUSHERS`] threads while the next
    /// files are written).
    /// With `hashed`, each digest was computed from its bytes in this
    /// process ([`HashedBytes`]) and is not checked again. With `direct`,
    /// blobs of [`DIRECT_FROM`] bytes or more are written past the page
    /// cache.
    async fn put_many_flushed(
        &self,
        blobs: Vec<(Digest, Bytes)>,
        durable: bool,
        hashed: bool,
        direct: bool,
    ) -> Result<Vec<Result<BlobCheck, StoreError>>, StoreError> {
        let ctx = Placing {
            root: self.root.clone(),
            staging: self.staging.clone(),
            place: self.place.clone(),
            quarantine: self.quarantine.clone(),
            verified: self.verified.clone(),
            direct,
        };
        tokio::task::spawn_blocking(move || {
            // (Reading /proc/meminfo is file I/O: here, off the async threads.)
            let flush = match durable {
                false => Flush::None,
                true if blobs.len() < FLUSH_IN_PARALLEL_FROM => Flush::EachFile,
                true if cfg!(target_os = "linux")
                    && system_dirty_bytes().is_some_and(|d| d < SYNCFS_WHILE_DIRTY_BELOW) =>
                {
                    Flush::FileSystem
                }
                true => Flush::Flushers,
            };
            place_batch(&ctx, blobs, flush, hashed)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("blob put: {e}")))?
    }
}

/// How [`place_batch`] makes a batch durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flush {
    /// Not at all (`put_many`).
    None,
    /// Each file flushed as it is written.
    EachFile,
    /// Each file handed to [`FLUSHERS`] threads as it is written.
    Flushers,
    /// One `syncfs(2)` once every file is written.
    FileSystem,
}

/// [`place_blobs`], made durable as `flush` says. Blocking.
fn place_batch(
    ctx: &Placing,
    blobs: Vec<(Digest, Bytes)>,
    flush: Flush,
    hashed: bool,
) -> Result<Vec<Result<BlobCheck, StoreError>>, StoreError> {
    match flush {
        Flush::None => place_blobs(ctx, blobs, hashed, false, None),
        Flush::EachFile => place_blobs(ctx, blobs, hashed, true, None),
        #[cfg(target_os = "linux")]
        Flush::FileSystem => {
            let out = place_blobs(ctx, blobs, hashed, false, None)?;
            sync_file_system(&ctx.staging)?;
            Ok(out)
        }
        #[cfg(not(target_os = "linux"))]
        Flush::FileSystem => place_blobs(ctx, blobs, hashed, true, None),
        Flush::Flushers => {
            let (tx, rx) = std::sync::mpsc::channel::<std::fs::File>();
            let rx = Mutex::new(rx);
            std::thread::scope(|scope| {
                let workers: Vec<_> = (0..FLUSHERS)
                    .map(|_| {
                        let rx = &rx;
                        scope.spawn(move || -> io::Result<()> {
                            let mut outcome = Ok(());
                            loop {
                                let next = locked(rx).recv();
                                let Ok(file) = next else { break };
                                if let Err(e) = file.sync_data()
                                    && outcome.is_ok()
                                {
                                    outcome = Err(e);
                                }
                            }
                            outcome
                        })
                    })
                    .collect();
                let out = place_blobs(ctx, blobs, hashed, false, Some(&tx));
                drop(tx);
                for w in workers {
                    w.join()
                        .map_err(|_| StoreError::Backend("blob flush thread panicked".into()))??;
                }
                out
            })
        }
    }
}

/// Writes each blob under a staging name and renames it into place (an
/// intact copy in place stays; bytes that do not match their digest are
/// that blob's [`StoreError::DigestMismatch`]; with `hashed`, each digest
/// was computed from its bytes in this process and is not checked again).
/// Each written file is flushed here with `flush_here`, or handed to
/// `flushers`.
fn place_blobs(
    ctx: &Placing,
    blobs: Vec<(Digest, Bytes)>,
    hashed: bool,
    flush_here: bool,
    flushers: Option<&std::sync::mpsc::Sender<std::fs::File>>,
) -> Result<Vec<Result<BlobCheck, StoreError>>, StoreError> {
    let mut out = Vec::with_capacity(blobs.len());
    let mut made_dirs = std::collections::HashSet::new();
    for (digest, bytes) in blobs {
        let staging = ctx.staging.join(hex::encode(rand::random::<[u8; 16]>()));
        // A blob written past the page cache is hashed as it is copied into
        // the writer's buffer (one pass over its bytes, not two): written
        // first, checked before anything else looks at it.
        let mut staged = None;
        if ctx.direct && bytes.len() >= DIRECT_FROM {
            let mut hasher = (!hashed).then(Sha256Hasher::new);
            let written = (|| {
                let (f, direct) = crate::direct::open_for_writing(&staging, true)?;
                let mut w = crate::direct::DirectWriter::new(f, direct, 0);
                w.write(&bytes, &mut hasher)?;
                w.finish()
            })();
            let f = match written {
                Ok(f) => f,
                Err(e) => {
                    let _ = std::fs::remove_file(&staging);
                    return Err(StoreError::Io(e));
                }
            };
            if let Some(actual) = hasher.map(Sha256Hasher::finish)
                && actual != digest
            {
                drop(f);
                let _ = std::fs::remove_file(&staging);
                out.push(Err(StoreError::DigestMismatch {
                    expected: digest,
                    actual,
                }));
                continue;
            }
            staged = Some(f);
        } else if !hashed {
            let actual = Digest::of(&bytes);
            if actual != digest {
                out.push(Err(StoreError::DigestMismatch {
                    expected: digest,
                    actual,
                }));
                continue;
            }
        }
        let dest = blob_path_in(&ctx.root, &digest);
        // As `commit`: what is in place is re-hashed first.
        let found = match hash_file(&dest) {
            Ok((a, size)) if a == digest => BlobCheck::Intact { size },
            Ok((a, size)) => {
                tracing::warn!(blob = %digest, actual = %a, size, "stored blob was corrupt; replaced by a verified copy");
                BlobCheck::Corrupt { actual: a, size }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => BlobCheck::Missing,
            Err(e) => {
                if staged.is_some() {
                    let _ = std::fs::remove_file(&staging);
                }
                return Err(StoreError::Io(e));
            }
        };
        if let BlobCheck::Intact { .. } = found {
            if staged.is_some() {
                let _ = std::fs::remove_file(&staging);
            }
            out.push(Ok(found));
            continue;
        }
        let written = (|| {
            use std::io::Write;
            let f = match staged {
                Some(f) => f,
                None => {
                    let mut f = std::fs::File::create(&staging)?;
                    f.write_all(&bytes)?;
                    f
                }
            };
            if flush_here {
                f.sync_data()?;
            }
            if let Some(dir) = dest.parent()
                && made_dirs.insert(dir.to_path_buf())
            {
                std::fs::create_dir_all(dir)?;
            }
            let _placing = locked(&ctx.place);
            std::fs::rename(&staging, &dest)?;
            remember_verified(&ctx.verified, digest, file_stamp(&f.metadata()?));
            if let Some(tx) = flushers {
                // The flushers end only when the sender is dropped.
                let _ = tx.send(f);
            }
            Ok::<_, io::Error>(())
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&staging);
            return Err(StoreError::Io(e));
        }
        if locked(&ctx.quarantine).contains_key(&digest) {
            let _placing = locked(&ctx.place);
            resolve_quarantine(&ctx.root, &digest, &ctx.quarantine)?;
        }
        out.push(Ok(found));
    }
    Ok(out)
}

/// Bytes of a blob served as a stream read at once (in one blocking
/// call) while its reader takes them slowly; the next read waits until
/// this one is taken.
const STREAM_CHUNK: u64 = 256 << 10;
/// The most read at once for a reader that waits for each read (a fast
/// one): fewer thread hops per GiB.
const STREAM_CHUNK_MAX: u64 = 1 << 20;

/// A large blob being served ([`FsBlobStore::read`]): the open file, where
/// it stands, and the verification of a whole read. Moved to a blocking
/// thread for each read and back.
struct StreamRead {
    file: std::fs::File,
    /// Where to seek before the first read.
    start: Option<u64>,
    /// Bytes still to send.
    left: u64,
    /// Hashing a whole read, to judge the bytes before the last chunk goes.
    hasher: Option<Sha256Hasher>,
    /// None if the hash is the digest; otherwise the blob was moved aside
    /// and this is the error to end with.
    verdict: Box<dyn Fn(Sha256Hasher) -> Option<io::Error> + Send>,
    /// Nothing more to read (the end, or an error sent).
    done: bool,
    /// Bytes the next read takes: [`STREAM_CHUNK`], doubled up to
    /// [`STREAM_CHUNK_MAX`] while the reader waits for each read, back to
    /// [`STREAM_CHUNK`] when a read waits for the reader.
    chunk: u64,
}

impl StreamRead {
    /// Reads the next chunk (blocking): the chunk, an error that ends the
    /// stream, or None at its end.
    fn step(mut self) -> (Self, Option<io::Result<Bytes>>) {
        let item = self.next_chunk();
        if !matches!(item, Some(Ok(_))) || (self.left == 0 && self.hasher.is_none()) {
            self.done = true;
        }
        (self, item)
    }

    fn next_chunk(&mut self) -> Option<io::Result<Bytes>> {
        use std::io::{Read, Seek};
        if let Some(start) = self.start.take()
            && let Err(e) = self.file.seek(io::SeekFrom::Start(start))
        {
            return Some(Err(e));
        }
        if self.left == 0 {
            return self.hasher.take().and_then(&self.verdict).map(Err);
        }
        loop {
            let want = self.left.min(self.chunk);
            // read_to_end fills spare capacity without zeroing it first.
            let mut buf = Vec::with_capacity(want as usize);
            match (&mut self.file).take(want).read_to_end(&mut buf) {
                Ok(0) => {
                    return Some(Err(io::Error::new(io::ErrorKind::UnexpectedEof, "blob shrank")));
                }
                Ok(n) => {
                    self.left -= n as u64;
                    if let Some(h) = &mut self.hasher {
                        h.update(&buf);
                    }
                    // The last chunk goes out only if the whole is right.
                    if self.left == 0
                        && let Some(e) = self.hasher.take().and_then(&self.verdict)
                    {
                        return Some(Err(e));
                    }
                    return Some(Ok(Bytes::from(buf)));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

impl FsBlobStore {
    /// [`BlobStore::get`]; with `trust_recent`, as
    /// [`BlobStore::get_for_verifier`].
    /// What reading a small blob whole on a blocking thread needs.
    fn small_read(&self, trust_recent: bool) -> SmallRead {
        SmallRead {
            root: self.root.clone(),
            verified: self.verified.clone(),
            place: self.place.clone(),
            quarantine: self.quarantine.clone(),
            trust_recent,
        }
    }

    async fn read(
        &self,
        digest: &Digest,
        range: Option<Range<u64>>,
        trust_recent: bool,
    ) -> Result<BlobBody, StoreError> {
        let path = self.blob_path(digest);
        let d = *digest;
        let wants_whole = range.as_ref().is_none_or(|r| r.start == 0);
        let wanted_end = range.as_ref().map(|r| r.end);
        // One blocking reader per body, handing large chunks over a small
        // channel: far fewer thread hops than a read per poll. A small blob
        // read whole is read, hashed and judged in this first hop already.
        let small = self.small_read(trust_recent);
        let opened = tokio::task::spawn_blocking(move || small.open(&path, d, wants_whole, wanted_end))
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))??;
        let (file, opened) = match opened {
            Opened::Large(file, meta) => (file, meta),
            Opened::Small(total_size, chunk) => {
                let stream: ByteStream = match chunk {
                    Ok(b) if b.is_empty() => Box::pin(futures::stream::empty()),
                    chunk => Box::pin(futures::stream::once(async move { chunk })),
                };
                return Ok(BlobBody { total_size, stream });
            }
        };
        let total_size = opened.len();
        let (start, end) = match range {
            None => (0, total_size),
            Some(r) => (r.start, r.end.min(total_size)),
        };
        let whole = start == 0 && end == total_size;
        let (root, path) = (self.root.clone(), self.blob_path(digest));
        let (place, quarantine) = (self.place.clone(), self.quarantine.clone());
        let stamp = file_stamp(&opened);
        let verified = self.verified.clone();
        // A part of a file not known to be right is served only after the
        // whole file was hashed (once per version of the file): a range, a
        // resumed download, is never a way around the check.
        let known_good = verified_since(&verified, &d, &stamp, None);
        if !whole && !known_good {
            let (root, path, place, quarantine, opened) = (
                root.clone(),
                path.clone(),
                place.clone(),
                quarantine.clone(),
                opened.clone(),
            );
            let verified = verified.clone();
            let check = tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
                let (actual, _) = hash_file(&path).map_err(|e| match e.kind() {
                    io::ErrorKind::NotFound => StoreError::BlobMissing(d),
                    _ => e.into(),
                })?;
                if actual != d {
                    tracing::error!(blob = %d, %actual, "stored blob is corrupt (found before serving a part of it); taken out of service");
                    if let Err(e) = quarantine_file(&root, &path, &d, Some(&opened), &place, &quarantine) {
                        tracing::error!(blob = %d, error = %e, "could not move the corrupt blob aside");
                    }
                    // Found missing from now on; the store reports it as
                    // quarantined, so callers learn it is corrupt.
                    return Err(StoreError::BlobMissing(d));
                }
                remember_verified(&verified, d, stamp);
                Ok(())
            });
            check.await.map_err(|e| StoreError::Backend(e.to_string()))??;
        }
        // The whole blob is read: verify it on the way (unless its reader
        // verifies it and it was hashed right a short while ago).
        let trusted = trust_recent && verified_since(&verified, &d, &stamp, Some(TRUST_VERIFIED_FOR));
        let hasher = (whole && !trusted).then(Sha256Hasher::new);
        // The verdict on the bytes read: None if they hash to the digest;
        // otherwise the blob is moved aside and the error to end with.
        let verdict = move |hasher: Sha256Hasher| -> Option<io::Error> {
            let actual = hasher.finish();
            if actual == d {
                remember_verified(&verified, d, stamp);
                return None;
            }
            tracing::error!(blob = %d, %actual, "stored blob is corrupt (found while reading it); taken out of service");
            if let Err(e) = quarantine_file(&root, &path, &d, Some(&opened), &place, &quarantine) {
                tracing::error!(blob = %d, error = %e, "could not move the corrupt blob aside");
            }
            Some(corrupt_read(&d, &actual))
        };
        // Read on demand, one chunk ahead of the one being sent, each read
        // a short blocking call: a reader that takes its bytes slowly (a
        // far client, a hostile one) holds no blocking thread and at most
        // two chunks while it does.
        let reading = StreamRead {
            file,
            start: Some(start),
            left: end.saturating_sub(start),
            hasher,
            verdict: Box::new(verdict),
            done: false,
            chunk: STREAM_CHUNK,
        };
        let first = tokio::task::spawn_blocking(move || reading.step());
        let stream = futures::stream::unfold(Some(first), |ahead| async move {
            let ahead = ahead?;
            // The read ahead already done when the reader comes for it:
            // the reader is the slow side, and small reads keep what it
            // holds small; still going: larger reads, fewer hops.
            let waited_for_reader = ahead.is_finished();
            let (mut reading, item) = match ahead.await {
                Ok(r) => r,
                Err(e) => return Some((Err(io::Error::other(e)), None)),
            };
            reading.chunk = if waited_for_reader {
                STREAM_CHUNK
            } else {
                (reading.chunk * 2).min(STREAM_CHUNK_MAX)
            };
            let next = (!reading.done).then(|| tokio::task::spawn_blocking(move || reading.step()));
            item.map(|chunk| (chunk, next))
        });
        Ok(BlobBody {
            total_size,
            stream: Box::pin(stream),
        })
    }
}

#[async_trait]
impl BlobStore for FsBlobStore {
    async fn stage(
        &self,
        body: ByteStream,
        limit: u64,
        expected: Option<Digest>,
    ) -> Result<StagedBlob, StoreError> {
        let name: [u8; 16] = rand::random();
        let path = self.staging.join(hex::encode(name));
        let file = tokio::fs::File::create(&path).await?.into_std().await;
        // From here on, dropping `staged` removes the file on every early return.
        let mut staged = StagedBlob {
            path,
            digest: Digest::from_bytes([0; 32]),
            size: 0,
            committed: false,
            flushing: None,
        };
        let poured = pour(body, file, Sink::Cached, Some(Sha256Hasher::new()), 0, limit, ()).await?;
        let file = poured.file;
        staged.flushing = Some(tokio::task::spawn_blocking(move || file.sync_all()));
        staged.size = poured.size;
        let Some(hasher) = poured.hasher else {
            return Err(StoreError::Backend("blob writer lost its hash".into()));
        };
        staged.digest = hasher.finish();
        if let Some(expected) = expected
            && expected != staged.digest
        {
            return Err(StoreError::DigestMismatch {
                expected,
                actual: staged.digest,
            });
        }
        Ok(staged)
    }

    async fn commit(&self, mut staged: StagedBlob) -> Result<BlobCheck, StoreError> {
        staged.flushed().await?;
        let dest = self.blob_path(&staged.digest);
        let (from, place) = (staged.path.clone(), self.place.clone());
        let (verified, d) = (self.verified.clone(), staged.digest);
        // One blocking call for the look at what is in place, the folder
        // and the rename (each a thread hand-over of its own otherwise).
        let found = tokio::task::spawn_blocking(move || -> Result<BlobCheck, StoreError> {
            let found = match hash_file(&dest) {
                Ok((actual, size)) if actual == d => return Ok(BlobCheck::Intact { size }),
                Ok((actual, size)) => BlobCheck::Corrupt { actual, size },
                Err(e) if e.kind() == io::ErrorKind::NotFound => BlobCheck::Missing,
                Err(e) => return Err(StoreError::Io(e)),
            };
            if let BlobCheck::Corrupt { actual, size } = &found {
                tracing::warn!(
                    blob = %d, %actual, size,
                    "stored blob was corrupt; replaced by a verified copy"
                );
            }
            if let Some(dir) = dest.parent() {
                std::fs::create_dir_all(dir)?;
            }
            // A rename replaces atomically: readers that opened the old
            // file keep reading it, new readers get the verified copy. It
            // holds the place lock, so a reader that found the old bytes
            // wrong moves aside only the old file.
            let _placing = locked(&place);
            std::fs::rename(from, &dest)?;
            // Hashed on its way in: known good as it now lies.
            if let Ok(meta) = std::fs::metadata(&dest) {
                remember_verified(&verified, d, file_stamp(&meta));
            }
            Ok(found)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("blob commit: {e}")))??;
        if let BlobCheck::Intact { .. } = found {
            return Ok(found); // `staged` is dropped
        }
        staged.committed = true;
        self.resolve(&staged.digest).await?;
        Ok(found)
    }

    async fn check(&self, digest: &Digest) -> Result<BlobCheck, StoreError> {
        let path = self.blob_path(digest);
        let want = *digest;
        tokio::task::spawn_blocking(move || match hash_file(&path) {
            Ok((actual, size)) if actual == want => Ok(BlobCheck::Intact { size }),
            Ok((actual, size)) => Ok(BlobCheck::Corrupt { actual, size }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BlobCheck::Missing),
            Err(e) => Err(StoreError::Io(e)),
        })
        .await
        .map_err(|e| StoreError::Backend(format!("blob check: {e}")))?
    }

    async fn size(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        match tokio::fs::metadata(self.blob_path(digest)).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn get(&self, digest: &Digest, range: Option<Range<u64>>) -> Result<BlobBody, StoreError> {
        self.read(digest, range, false).await
    }

    async fn get_for_verifier(
        &self,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<BlobBody, StoreError> {
        self.read(digest, range, true).await
    }

    async fn get_small_for_verifier(
        &self,
        digests: &[Digest],
        max_each: u64,
    ) -> Result<Vec<Result<Option<Bytes>, StoreError>>, StoreError> {
        let small = self.small_read(true);
        let wanted: Vec<(Digest, PathBuf)> = digests.iter().map(|d| (*d, self.blob_path(d))).collect();
        let max_each = max_each.min(SMALL_READ);
        // One blocking pass for all of them: a hop to a blocking thread
        // and back costs as much as reading a few small files.
        tokio::task::spawn_blocking(move || {
            wanted
                .into_iter()
                .map(|(d, path)| match small.open(&path, d, true, Some(max_each)) {
                    Ok(Opened::Small(_, read)) => read.map(Some).map_err(StoreError::from),
                    Ok(Opened::Large(..)) => Ok(None),
                    Err(e) => Err(e),
                })
                .collect()
        })
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))
    }

    async fn delete(&self, digest: &Digest) -> Result<(), StoreError> {
        match tokio::fs::remove_file(self.blob_path(digest)).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        // Collected: nothing needs it, so its quarantine is over too.
        self.resolve(digest).await
    }

    async fn quarantine(&self, digest: &Digest) -> Result<(), StoreError> {
        let (root, path, d) = (self.root.clone(), self.blob_path(digest), *digest);
        let (place, quarantine) = (self.place.clone(), self.quarantine.clone());
        tokio::task::spawn_blocking(move || quarantine_file(&root, &path, &d, None, &place, &quarantine))
            .await
            .map_err(|e| StoreError::Backend(format!("blob quarantine: {e}")))??;
        Ok(())
    }

    fn quarantined(&self) -> Vec<(Digest, i64)> {
        locked(&self.quarantine)
            .iter()
            .map(|(d, times)| (*d, times.iter().copied().max().unwrap_or_default()))
            .collect()
    }

    fn is_quarantined(&self, digest: &Digest) -> bool {
        locked(&self.quarantine).contains_key(digest)
    }

    async fn release_quarantine(&self, digest: &Digest) -> Result<(), StoreError> {
        self.resolve(digest).await
    }

    fn missing_on_record(&self) -> Vec<(Digest, i64)> {
        locked(&self.missing).clone()
    }

    async fn mark_missing(&self, digest: &Digest, at: i64) -> Result<(), StoreError> {
        let _one = self.damage_io.lock().await;
        let (root, d) = (self.root.clone(), *digest);
        tokio::task::spawn_blocking(move || write_missing_marker(&root, &d, at))
            .await
            .map_err(|e| StoreError::Backend(format!("blob store: {e}")))??;
        let mut missing = locked(&self.missing);
        match missing.binary_search_by(|(m, _)| m.cmp(digest)) {
            Ok(i) => missing[i].1 = at,
            Err(i) => missing.insert(i, (*digest, at)),
        }
        Ok(())
    }

    async fn unmark_missing(&self, digest: &Digest) -> Result<(), StoreError> {
        let _one = self.damage_io.lock().await;
        let (root, d) = (self.root.clone(), *digest);
        tokio::task::spawn_blocking(move || remove_missing_marker(&root, &d))
            .await
            .map_err(|e| StoreError::Backend(format!("blob store: {e}")))??;
        locked(&self.missing).retain(|(m, _)| m != digest);
        Ok(())
    }

    async fn refresh_damage(&self) -> Result<(), StoreError> {
        self.damage().refresh().await
    }

    async fn sweep_partials(&self, idle: std::time::Duration) -> Result<u64, StoreError> {
        let dir = self.root.join("partial");
        let listed =
            tokio::task::spawn_blocking(move || -> io::Result<Vec<(Digest, std::time::SystemTime)>> {
                let mut out = Vec::new();
                let entries = match std::fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
                    Err(e) => return Err(e),
                };
                for entry in entries {
                    let entry = entry?;
                    let name = entry.file_name();
                    let Some(digest) = name.to_str().and_then(|n| Digest::from_hex(n).ok()) else {
                        continue;
                    };
                    if let Ok(modified) = entry.metadata().and_then(|m| m.modified()) {
                        out.push((digest, modified));
                    }
                }
                Ok(out)
            })
            .await
            .map_err(|e| StoreError::Backend(format!("partial transfers: {e}")))??;
        let mut removed = 0;
        for (digest, modified) in listed {
            if modified.elapsed().unwrap_or_default() < idle {
                continue;
            }
            // Only a transfer no one holds: claimed here without waiting.
            let Some(claim) = self.try_claim_transfer(&digest)? else {
                continue;
            };
            let path = self.partial_path(&digest);
            // Touched again since it was listed: still in use.
            let idle_still = tokio::fs::metadata(&path)
                .await
                .ok()
                .and_then(|m| m.modified().ok())
                .is_some_and(|m| m.elapsed().unwrap_or_default() >= idle);
            if idle_still {
                match tokio::fs::remove_file(&path).await {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
            drop(claim);
        }
        Ok(removed)
    }

    async fn sync(&self, digests: &[Digest]) -> Result<(), StoreError> {
        // Many files with little else dirty: one syncfs, as a durable
        // batch is flushed (each fdatasync is a journal commit and a hop
        // to a blocking thread of its own).
        #[cfg(target_os = "linux")]
        if digests.len() >= FLUSH_IN_PARALLEL_FROM {
            let dir = self.root.clone();
            let synced = tokio::task::spawn_blocking(move || -> io::Result<bool> {
                if system_dirty_bytes().is_some_and(|d| d < SYNCFS_WHILE_DIRTY_BELOW) {
                    sync_file_system(&dir)?;
                    return Ok(true);
                }
                Ok(false)
            })
            .await
            .map_err(|e| StoreError::Backend(format!("blob flush: {e}")))??;
            if synced {
                return Ok(());
            }
        }
        // Many flushes in flight at once let the device merge the writes.
        for batch in digests.chunks(32) {
            let flushes = batch.iter().map(|d| {
                let path = self.blob_path(d);
                tokio::task::spawn_blocking(move || std::fs::File::open(path)?.sync_data())
            });
            for r in futures::future::join_all(flushes).await {
                r.map_err(|e| StoreError::Backend(format!("blob flush: {e}")))??;
            }
        }
        Ok(())
    }

    async fn sizes(&self, digests: &[Digest]) -> Result<Vec<Option<u64>>, StoreError> {
        let paths: Vec<PathBuf> = digests.iter().map(|d| self.blob_path(d)).collect();
        tokio::task::spawn_blocking(move || {
            paths
                .iter()
                .map(|p| match std::fs::metadata(p) {
                    Ok(m) => Ok(Some(m.len())),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(StoreError::Io(e)),
                })
                .collect()
        })
        .await
        .map_err(|e| StoreError::Backend(format!("blob sizes: {e}")))?
    }

    async fn begin_transfers(&self, digests: &[Digest]) -> Result<Vec<Transfer>, StoreError> {
        let mut sorted = digests.to_vec();
        sorted.sort();
        sorted.dedup();
        let mut claims = Vec::with_capacity(sorted.len());
        for d in &sorted {
            claims.push(self.claim_transfer(d).await?);
        }
        let partials: Vec<PathBuf> = sorted.iter().map(|d| self.partial_path(d)).collect();
        let offsets = tokio::task::spawn_blocking(move || {
            partials
                .iter()
                .map(|p| match std::fs::metadata(p) {
                    // Empty: nothing to resume (held exclusively by the claim).
                    Ok(m) if m.len() == 0 => {
                        let _ = std::fs::remove_file(p);
                        Ok(0)
                    }
                    Ok(m) => Ok(m.len()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
                    Err(e) => Err(StoreError::Io(e)),
                })
                .collect::<Result<Vec<u64>, StoreError>>()
        })
        .await
        .map_err(|e| StoreError::Backend(format!("blob transfers: {e}")))??;
        Ok(sorted
            .into_iter()
            .zip(offsets)
            .zip(claims)
            .map(|((d, offset), claim)| Transfer::new(d, offset, Box::new(claim)))
            .collect())
    }

    async fn put_many(
        &self,
        blobs: Vec<(Digest, Bytes)>,
    ) -> Result<Vec<Result<BlobCheck, StoreError>>, StoreError> {
        // Bytes from another instance: past the page cache (`crate::direct`).
        self.put_many_flushed(blobs, false, false, true).await
    }

    async fn put_many_durable(
        &self,
        blobs: Vec<HashedBytes>,
    ) -> Result<Vec<Result<BlobCheck, StoreError>>, StoreError> {
        let blobs = blobs.into_iter().map(|b| (b.digest, b.bytes)).collect();
        self.put_many_flushed(blobs, true, true, false).await
    }

    async fn partial_sizes(&self, digests: &[Digest]) -> Result<Vec<u64>, StoreError> {
        let paths: Vec<PathBuf> = digests.iter().map(|d| self.partial_path(d)).collect();
        tokio::task::spawn_blocking(move || {
            paths
                .iter()
                .map(|p| match std::fs::metadata(p) {
                    Ok(m) => Ok(m.len()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
                    Err(e) => Err(StoreError::from(e)),
                })
                .collect()
        })
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))?
    }

    async fn begin_transfer(&self, digest: &Digest) -> Result<Transfer, StoreError> {
        let claim = self.claim_transfer(digest).await?;
        let offset = match tokio::fs::metadata(self.partial_path(digest)).await {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e.into()),
        };
        Ok(Transfer::new(*digest, offset, Box::new(claim)))
    }

    async fn continue_transfer(
        &self,
        transfer: Transfer,
        body: ByteStream,
        limit: u64,
    ) -> Result<StagedBlob, StoreError> {
        let digest = transfer.digest();
        let partial = self.partial_path(&digest);
        // The claim makes this the only writer, and the body starts at the
        // claim's offset: anything past it in the file is cut off.
        let start = transfer.offset();
        let p = partial.clone();
        // Bytes from another instance go past the page cache (see
        // `crate::direct`): a spoke writes a copy once and serves little
        // of it at once, and the flush before commit finds them written.
        let (file, direct) = tokio::task::spawn_blocking(move || -> io::Result<(std::fs::File, bool)> {
            use std::io::Seek;
            let (mut file, direct) = crate::direct::open_for_writing(&p, true)?;
            file.set_len(start)?;
            file.seek(io::SeekFrom::Start(start))?;
            Ok((file, direct))
        })
        .await
        .map_err(|e| StoreError::Backend(format!("blob transfer: {e}")))??;
        let fresh = start == 0;
        let sink = Sink::Direct(direct);
        let poured = match pour(body, file, sink, fresh.then(Sha256Hasher::new), start, limit, ()).await {
            Ok(p) => p,
            Err(e @ StoreError::TooLarge { .. }) => {
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(e);
            }
            Err(e) => return Err(e), // a broken body: what arrived is kept
        };
        let size = poured.size;
        let name: [u8; 16] = rand::random();
        let path = self.staging.join(hex::encode(name));
        let (p, to) = (partial.clone(), path.clone());
        let file = poured.file;
        let hasher = poured.hasher;
        // One blocking call: the length on disk, the hash of a resumed
        // file, and (when it is right) the move to staging.
        let (actual, on_disk) = tokio::task::spawn_blocking(move || -> io::Result<(Digest, u64)> {
            let on_disk = file.metadata()?.len();
            drop(file);
            let actual = match hasher {
                // Fresh and exclusive: the file holds exactly the bytes
                // hashed, which its length confirms.
                Some(hasher) if on_disk == size => hasher.finish(),
                // Resumed (or a length that does not add up): hash what
                // the file holds.
                _ => hash_file(&p)?.0,
            };
            if actual == digest {
                std::fs::rename(&p, &to)?;
            } else {
                let _ = std::fs::remove_file(&p);
            }
            Ok((actual, on_disk))
        })
        .await
        .map_err(|e| StoreError::Backend(format!("blob transfer: {e}")))??;
        if actual != digest {
            return Err(StoreError::DigestMismatch {
                expected: digest,
                actual,
            });
        }
        drop(transfer);
        Ok(StagedBlob {
            path,
            digest: actual,
            size: on_disk,
            committed: false,
            flushing: None,
        })
    }

    async fn discard_transfer(&self, transfer: Transfer) -> Result<(), StoreError> {
        match tokio::fs::remove_file(self.partial_path(&transfer.digest())).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn upload_begin(&self) -> Result<String, StoreError> {
        let id = hex::encode(rand::random::<[u8; 16]>());
        let path = self
            .upload_path(&id)
            .ok_or_else(|| StoreError::Backend("generated an invalid upload id".into()))?;
        tokio::fs::File::create(&path).await?;
        if self.node.is_some() {
            self.forget_sessions_gone_elsewhere().await?;
        }
        self.sessions()?.insert(
            id.clone(),
            UploadState {
                hasher: Some(Sha256Hasher::new()),
                size: 0,
                writer: std::sync::Arc::new(tokio::sync::Mutex::new(())),
            },
        );
        Ok(id)
    }

    async fn upload_resume(&self, id: &str, size: u64) -> Result<(), StoreError> {
        let missing = || StoreError::NotFound(format!("upload {id}"));
        let busy = || StoreError::Conflict(format!("upload {id} is busy with another request"));
        let path = self.upload_path(id).ok_or_else(missing)?;
        let writer = {
            let sessions = self.sessions()?;
            match sessions.get(id) {
                Some(st) if st.hasher.is_none() => return Err(busy()),
                Some(st) if st.size == size => None,
                Some(st) => Some(Some(st.writer.clone())),
                None => Some(None),
            }
        };
        let Some(writer) = writer else {
            // Held here at this length: the fast path, if the session was
            // not finished or discarded through another node meanwhile.
            return match tokio::fs::metadata(&path).await {
                Ok(m) if m.len() >= size => Ok(()),
                Ok(_) => Err(missing()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.sessions()?.remove(id);
                    Err(missing())
                }
                Err(e) => Err(e.into()),
            };
        };
        // Not held here at this length: the bytes are in the shared file.
        // Wait for a writer of this process that may still be finishing.
        let writer = writer.unwrap_or_else(|| std::sync::Arc::new(tokio::sync::Mutex::new(())));
        let held = writer.clone().lock_owned().await;
        let p = path.clone();
        let hashed = tokio::task::spawn_blocking(move || hash_prefix(&p, size))
            .await
            .map_err(|e| StoreError::Backend(format!("blob store: {e}")))?;
        let hasher = match hashed {
            Ok(h) => h,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(missing()),
            Err(e) => return Err(e.into()),
        };
        let mut sessions = self.sessions()?;
        if sessions.get(id).is_some_and(|st| st.hasher.is_none()) {
            return Err(busy());
        }
        sessions.insert(
            id.to_owned(),
            UploadState {
                hasher: Some(hasher),
                size,
                writer,
            },
        );
        drop(held);
        Ok(())
    }

    async fn upload_len(&self, id: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.sessions()?.get(id).map(|s| s.size))
    }

    async fn stale_upload_files(&self, before: std::time::SystemTime) -> Result<Vec<String>, StoreError> {
        let dir = self.uploads_dir.clone();
        tokio::task::spawn_blocking(move || -> io::Result<Vec<String>> {
            let mut out = Vec::new();
            for e in std::fs::read_dir(&dir)? {
                let e = e?;
                let name = e.file_name().to_string_lossy().into_owned();
                let is_id = name.len() == 32
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
                if !is_id {
                    continue;
                }
                let written = match e.metadata().and_then(|m| m.modified()) {
                    Ok(t) => t,
                    Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                    Err(err) => return Err(err),
                };
                if written < before {
                    out.push(name);
                }
            }
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("blob store: {e}")))?
        .map_err(StoreError::from)
    }

    async fn upload_append(&self, id: &str, body: ByteStream, limit: u64) -> Result<u64, StoreError> {
        let path = self
            .upload_path(id)
            .ok_or_else(|| StoreError::NotFound(format!("upload {id}")))?;
        let (hasher, start, writer) = self.claim(id).await?;
        let guard = AppendGuard {
            store: self,
            id,
            restore: Some((hasher.clone(), start)),
        };
        let file = tokio::fs::OpenOptions::new().write(true).open(&path).await?;
        // Drop whatever an interrupted append left past the known length.
        file.set_len(start).await?;
        let mut file = file.into_std().await;
        {
            use std::io::Seek;
            file.seek(io::SeekFrom::Start(start))?;
        }
        let poured = pour(body, file, Sink::Cached, Some(hasher), start, limit, writer).await?;
        let size = poured.size;
        let Some(hasher) = poured.hasher else {
            return Err(StoreError::Backend("blob writer lost its hash".into()));
        };
        if !guard.finish(hasher, size) {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(StoreError::NotFound(format!("upload {id}")));
        }
        Ok(size)
    }

    async fn upload_finish(&self, id: &str, expected: Option<&Digest>) -> Result<StagedBlob, StoreError> {
        let path = self
            .upload_path(id)
            .ok_or_else(|| StoreError::NotFound(format!("upload {id}")))?;
        let (hasher, size, _held) = self.claim(id).await?;
        self.sessions()?.remove(id);
        // From here on the session is gone; `staged` removes the file on error.
        let mut staged = StagedBlob {
            path,
            digest: hasher.finish(),
            size,
            committed: false,
            flushing: None,
        };
        if let Some(expected) = expected
            && staged.digest != *expected
        {
            return Err(StoreError::DigestMismatch {
                expected: *expected,
                actual: staged.digest,
            });
        }
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .open(&staged.path)
            .await?;
        file.set_len(size).await?;
        file.sync_all().await?;
        drop(file);
        let dest = self.staging.join(hex::encode(rand::random::<[u8; 16]>()));
        tokio::fs::rename(&staged.path, &dest).await?;
        staged.path = dest;
        Ok(staged)
    }

    async fn upload_abort(&self, id: &str) -> Result<(), StoreError> {
        let Some(path) = self.upload_path(id) else {
            return Ok(());
        };
        // The file goes even when this process does not hold the session:
        // in a shared folder it may be another node's, and a file no
        // session names is left over.
        self.sessions()?.remove(id);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(parts: &[&'static [u8]]) -> ByteStream {
        let items: Vec<io::Result<Bytes>> = parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        Box::pin(futures::stream::iter(items))
    }

    async fn read_all(b: BlobBody) -> Vec<u8> {
        let mut out = Vec::new();
        let mut s = b.stream;
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c.unwrap());
        }
        out
    }

    /// Every way a batch is flushed, and written (through the page cache
    /// or past it), places the same blobs, intact, and refuses only the one
    /// whose bytes do not match its digest.
    #[tokio::test]
    async fn a_batch_is_placed_alike_whichever_way_it_is_flushed() {
        let ways = [Flush::None, Flush::EachFile, Flush::Flushers, Flush::FileSystem];
        for (flush, direct) in ways.into_iter().flat_map(|f| [(f, false), (f, true)]) {
            let dir = tempfile::tempdir().unwrap();
            let store = FsBlobStore::open(dir.path()).await.unwrap();
            let ctx = Placing {
                root: store.root.clone(),
                staging: store.staging.clone(),
                place: store.place.clone(),
                quarantine: store.quarantine.clone(),
                verified: store.verified.clone(),
                direct,
            };
            // Some past DIRECT_FROM (of lengths no block size divides), the
            // rest small.
            let mut blobs: Vec<(Digest, Bytes)> = (0..40u32)
                .map(|i| {
                    let times = if i % 9 == 4 {
                        20_000 + i as usize
                    } else {
                        i as usize + 1
                    };
                    let b = Bytes::from(format!("blob {i} of a batch").repeat(times));
                    (Digest::of(&b), b)
                })
                .collect();
            assert!(blobs.iter().filter(|(_, b)| b.len() >= DIRECT_FROM).count() >= 3);
            // Liars: one small, one written past the page cache.
            let liar = Digest::of(b"other bytes");
            blobs[7].0 = liar;
            blobs[13].0 = Digest::of(b"yet other bytes");
            let expected: Vec<(Digest, Bytes)> = blobs.clone();
            let out = tokio::task::spawn_blocking(move || place_batch(&ctx, blobs, flush, false))
                .await
                .unwrap()
                .unwrap();
            for (i, ((d, b), r)) in expected.iter().zip(&out).enumerate() {
                if i == 7 || i == 13 {
                    assert!(
                        matches!(r, Err(StoreError::DigestMismatch { .. })),
                        "{flush:?} {direct}"
                    );
                    assert_eq!(store.size(d).await.unwrap(), None);
                    continue;
                }
                assert!(
                    matches!(r, Ok(BlobCheck::Missing)),
                    "{flush:?} {direct} {i}: {r:?}"
                );
                let got = read_all(store.get(d, None).await.unwrap()).await;
                assert!(
                    got == b.to_vec(),
                    "{flush:?} {direct} {i}: {} bytes read",
                    got.len()
                );
            }
            assert_eq!(std::fs::read_dir(&store.staging).unwrap().count(), 0, "{flush:?}");
        }
        #[cfg(target_os = "linux")]
        assert!(system_dirty_bytes().is_some());
    }

    #[tokio::test]
    async fn stage_commit_read_range() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).await.unwrap();
        let staged = store
            .stage(body(&[b"hello ", b"world"]), 100, None)
            .await
            .unwrap();
        let d = staged.digest();
        assert_eq!(d, Digest::of(b"hello world"));
        assert_eq!(store.size(&d).await.unwrap(), None, "visible before commit");
        store.commit(staged).await.unwrap();
        assert_eq!(store.size(&d).await.unwrap(), Some(11));
        assert_eq!(read_all(store.get(&d, None).await.unwrap()).await, b"hello world");
        assert_eq!(read_all(store.get(&d, Some(6..9)).await.unwrap()).await, b"wor");
        // A second identical upload commits to the same single copy.
        let again = store.stage(body(&[b"hello world"]), 100, Some(d)).await.unwrap();
        store.commit(again).await.unwrap();
        assert_eq!(std::fs::read_dir(dir.path().join("staging")).unwrap().count(), 0);
        store.delete(&d).await.unwrap();
        assert!(matches!(
            store.get(&d, None).await,
            Err(StoreError::BlobMissing(_))
        ));
    }

    /// Large blobs are served in reused buffers: what one read leaves in a
    /// buffer never shows in another's chunks, whole or ranged, even while
    /// chunks of both are held at once.
    #[tokio::test]
    async fn large_reads_in_reused_buffers_serve_exactly_their_own_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).await.unwrap();
        let a: Vec<u8> = (0..SEND_CHUNK * 3 + 1234).map(|i| (i % 251) as u8).collect();
        let b: Vec<u8> = (0..SEND_CHUNK * 2 + 77).map(|i| (i % 13) as u8 ^ 0xA5).collect();
        let mut digests = Vec::new();
        for bytes in [&a, &b] {
            let one: ByteStream = Box::pin(futures::stream::iter([Ok(Bytes::from(bytes.clone()))]));
            let staged = store.stage(one, u64::MAX, None).await.unwrap();
            digests.push(staged.digest());
            store.commit(staged).await.unwrap();
        }
        for _ in 0..3 {
            let (ra, rb) = tokio::join!(
                async { read_all(store.get(&digests[0], None).await.unwrap()).await },
                async { read_all(store.get(&digests[1], None).await.unwrap()).await },
            );
            assert!(ra == a && rb == b, "a whole read came back wrong");
            let end = SEND_CHUNK as u64 * 2 + 10;
            let part = read_all(store.get(&digests[0], Some(5..end)).await.unwrap()).await;
            assert_eq!(part, a[5..end as usize], "a ranged read came back wrong");
            let tail = read_all(
                store
                    .get(&digests[1], Some(SEND_CHUNK as u64..b.len() as u64))
                    .await
                    .unwrap(),
            )
            .await;
            assert_eq!(tail, b[SEND_CHUNK..], "a short last chunk came back wrong");
        }
    }

    #[tokio::test]
    async fn a_node_opening_a_shared_folder_leaves_other_nodes_uploads_alone() {
        let dir = tempfile::tempdir().unwrap();
        let a = FsBlobStore::open_shared(dir.path()).await.unwrap();
        // A node that died left an upload behind.
        let dying = FsBlobStore::open_shared(dir.path()).await.unwrap();
        let left = dying.stage(body(&[b"cut short"]), 100, None).await.unwrap();
        let dying_dir = dying.staging.clone();
        std::mem::forget(left);
        drop(dying);
        assert!(dying_dir.exists());
        // Node a is receiving an upload when node b starts.
        let staged = a.stage(body(&[b"in flight on a"]), 100, None).await.unwrap();
        let b = FsBlobStore::open_shared(dir.path()).await.unwrap();
        assert!(!dying_dir.exists(), "a dead node's scratch stays");
        let d = staged.digest();
        a.commit(staged).await.unwrap();
        assert_eq!(read_all(b.get(&d, None).await.unwrap()).await, b"in flight on a");
        // Only the live nodes' directories (and the locks) remain.
        let names: std::collections::BTreeSet<String> = std::fs::read_dir(dir.path().join("staging"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        // A store of one process still empties what a stopped one left.
        let single = dir.path().join("single");
        let s = FsBlobStore::open(&single).await.unwrap();
        let left = s.stage(body(&[b"left"]), 100, None).await.unwrap();
        std::mem::forget(left);
        drop(s);
        FsBlobStore::open(&single).await.unwrap();
        assert_eq!(std::fs::read_dir(single.join("staging")).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn interrupted_transfer_resumes_and_is_verified() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).await.unwrap();
        let d = Digest::of(b"abcdefghij");
        let broken: ByteStream = Box::pin(futures::stream::iter(vec![
            Ok(Bytes::from_static(b"abcd")),
            Err(io::Error::other("link dropped")),
        ]));
        let t = store.begin_transfer(&d).await.unwrap();
        assert_eq!(t.offset(), 0);
        assert!(store.continue_transfer(t, broken, 100).await.is_err());
        // Survives a restart of the store.
        let store = FsBlobStore::open(dir.path()).await.unwrap();
        let t = store.begin_transfer(&d).await.unwrap();
        assert_eq!(t.offset(), 4);
        let staged = store.continue_transfer(t, body(&[b"efghij"]), 100).await.unwrap();
        assert_eq!((staged.digest(), staged.size()), (d, 10));
        assert_eq!(store.commit(staged).await.unwrap(), BlobCheck::Missing);
        assert_eq!(read_all(store.get(&d, None).await.unwrap()).await, b"abcdefghij");
        assert_eq!(store.begin_transfer(&d).await.unwrap().offset(), 0);
        // Wrong bytes are refused and discarded.
        let other = Digest::of(b"xyz");
        let t = store.begin_transfer(&other).await.unwrap();
        assert!(matches!(
            store.continue_transfer(t, body(&[b"xyq"]), 100).await,
            Err(StoreError::DigestMismatch { .. })
        ));
        assert_eq!(store.begin_transfer(&other).await.unwrap().offset(), 0);
    }

    /// The kept bytes of a transfer idle past the sweep's age are removed
    /// (the next transfer of that blob starts from its first byte); a
    /// recent one, and one held by a transfer now, stay.
    #[tokio::test]
    async fn idle_interrupted_transfers_are_swept_and_busy_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).await.unwrap();
        let broken = |bytes: &'static [u8]| -> ByteStream {
            Box::pin(futures::stream::iter(vec![
                Ok(Bytes::from_static(bytes)),
                Err(io::Error::other("link dropped")),
            ]))
        };
        let (old, held, fresh) = (
            Digest::of(b"old transfer"),
            Digest::of(b"held transfer"),
            Digest::of(b"fresh transfer"),
        );
        for (d, part) in [(old, &b"old"[..]), (held, b"held"), (fresh, b"fresh")] {
            let t = store.begin_transfer(&d).await.unwrap();
            assert!(store.continue_transfer(t, broken(part), 100).await.is_err());
        }
        let day_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(86_400);
        for d in [old, held] {
            let f = std::fs::File::options()
                .write(true)
                .open(store.partial_path(&d))
                .unwrap();
            f.set_modified(day_ago).unwrap();
        }
        let busy = store.begin_transfer(&held).await.unwrap();
        let hour = std::time::Duration::from_secs(3600);
        assert_eq!(store.sweep_partials(hour).await.unwrap(), 1);
        assert!(!store.partial_path(&old).exists());
        assert!(store.partial_path(&held).exists() && store.partial_path(&fresh).exists());
        assert_eq!(busy.offset(), 4);
        drop(busy);
        assert_eq!(store.begin_transfer(&old).await.unwrap().offset(), 0);
        assert_eq!(store.begin_transfer(&fresh).await.unwrap().offset(), 5);
    }

    /// Two writers of one digest at once (two replications fetching the
    /// same blob): the second waits for the first's claim, and what is
    /// stored is exactly the blob, never both bodies in one file.
    #[tokio::test]
    async fn concurrent_transfers_of_one_digest_take_turns() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(FsBlobStore::open(dir.path()).await.unwrap());
        let content = vec![7u8; 3 << 20];
        let d = Digest::of(&content);
        let slow = |data: Vec<u8>| -> ByteStream {
            let chunks: Vec<io::Result<Bytes>> = data
                .chunks(64 << 10)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            Box::pin(futures::stream::iter(chunks).then(|c| async move {
                tokio::task::yield_now().await;
                c
            }))
        };
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (store, content) = (store.clone(), content.clone());
            tasks.push(tokio::spawn(async move {
                let t = store.begin_transfer(&d).await.unwrap();
                if store.size(&d).await.unwrap().is_some() {
                    return; // stored meanwhile: nothing to fetch
                }
                assert_eq!(t.offset(), 0, "a claim never sees another writer's bytes");
                let staged = store.continue_transfer(t, slow(content), u64::MAX).await.unwrap();
                store.commit(staged).await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            store.check(&d).await.unwrap(),
            BlobCheck::Intact { size: 3 << 20 }
        );
        assert!(store.transfers.lock().unwrap().is_empty(), "claims are forgotten");
    }

    /// A stored blob whose bytes went wrong is replaced by the next
    /// verified copy committed; an intact one is left as it is.
    /// A read for a verifying peer skips the second hash only for a file
    /// unchanged since it was hashed: a file changed behind the store's
    /// back (bit rot rewritten, an operator's edit) is hashed on the way
    /// out, found wrong and taken out of service as by any read.
    #[tokio::test]
    async fn reads_for_a_verifying_peer_hash_a_file_that_changed_since_its_last_check() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).await.unwrap();
        for size in [100usize, 3 << 20] {
            let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let one: ByteStream = Box::pin(futures::stream::iter([Ok(Bytes::from(data.clone()))]));
            let staged = store.stage(one, u64::MAX, None).await.unwrap();
            let d = staged.digest();
            store.commit(staged).await.unwrap();
            assert_eq!(
                read_all(store.get_for_verifier(&d, None).await.unwrap()).await,
                data
            );
            // Same length, other bytes, a later mtime.
            let mut wrong = data.clone();
            wrong[size / 2] ^= 0xff;
            std::thread::sleep(std::time::Duration::from_millis(20));
            std::fs::write(store.blob_path(&d), &wrong).unwrap();
            let body = store.get_for_verifier(&d, None).await.unwrap();
            let mut stream = body.stream;
            let mut got = Vec::new();
            let mut failed = None;
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(c) => got.extend_from_slice(&c),
                    Err(e) => failed = Some(e),
                }
            }
            let e = failed.unwrap_or_else(|| panic!("{size} bytes: the changed file was served unchecked"));
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
            assert_ne!(got, wrong, "{size} bytes: the wrong bytes went out whole");
            assert!(store.is_quarantined(&d), "{size} bytes: not taken out of service");
        }
    }

    #[tokio::test]
    async fn commit_replaces_a_corrupt_blob_and_keeps_an_intact_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).await.unwrap();
        let staged = store.stage(body(&[b"right bytes"]), 100, None).await.unwrap();
        let d = staged.digest();
        store.commit(staged).await.unwrap();
        std::fs::write(store.blob_path(&d), b"right bytesright bytes").unwrap();
        assert!(matches!(
            store.check(&d).await.unwrap(),
            BlobCheck::Corrupt { size: 22, .. }
        ));
        let again = store.stage(body(&[b"right bytes"]), 100, Some(d)).await.unwrap();
        assert!(matches!(
            store.commit(again).await.unwrap(),
            BlobCheck::Corrupt { .. }
        ));
        assert_eq!(store.check(&d).await.unwrap(), BlobCheck::Intact { size: 11 });
        let third = store.stage(body(&[b"right bytes"]), 100, Some(d)).await.unwrap();
        assert_eq!(store.commit(third).await.unwrap(), BlobCheck::Intact { size: 11 });
        std::fs::remove_file(store.blob_path(&d)).unwrap();
        assert_eq!(store.check(&d).await.unwrap(), BlobCheck::Missing);
    }

    #[tokio::test]
    async fn an_upload_session_goes_on_through_any_node_of_a_shared_folder() {
        let dir = tempfile::tempdir().unwrap();
        let a = FsBlobStore::open_shared(dir.path()).await.unwrap();
        let b = FsBlobStore::open_shared(dir.path()).await.unwrap();
        let id = a.upload_begin().await.unwrap();
        assert_eq!(a.upload_append(&id, body(&[b"abc"]), 100).await.unwrap(), 3);
        // b re-hashes what a wrote and appends.
        assert!(
            matches!(b.upload_resume(&id, 4).await, Err(StoreError::NotFound(_))),
            "past the file"
        );
        b.upload_resume(&id, 3).await.unwrap();
        assert_eq!(b.upload_append(&id, body(&[b"de"]), 100).await.unwrap(), 5);
        // b goes on with its own running hash (the fast path).
        b.upload_resume(&id, 5).await.unwrap();
        assert_eq!(b.upload_append(&id, body(&[b"f"]), 100).await.unwrap(), 6);
        // a's state (3 bytes) is stale: resumed at 6, it hashes the file again.
        a.upload_resume(&id, 6).await.unwrap();
        assert_eq!(a.upload_append(&id, body(&[b"gh"]), 100).await.unwrap(), 8);
        let d = Digest::of(b"abcdefgh");
        let staged = a.upload_finish(&id, Some(&d)).await.unwrap();
        assert_eq!((staged.digest(), staged.size()), (d, 8));
        a.commit(staged).await.unwrap();
        // A wrong digest through the other node is refused, and the session goes.
        let id = a.upload_begin().await.unwrap();
        a.upload_append(&id, body(&[b"xyz"]), 100).await.unwrap();
        b.upload_resume(&id, 3).await.unwrap();
        assert!(matches!(
            b.upload_finish(&id, Some(&d)).await,
            Err(StoreError::DigestMismatch { .. })
        ));
        assert!(matches!(
            a.upload_resume(&id, 3).await,
            Err(StoreError::NotFound(_))
        ));
        // Aborted through a node that never saw it, its file goes.
        let id = a.upload_begin().await.unwrap();
        b.upload_abort(&id).await.unwrap();
        assert!(matches!(
            a.upload_resume(&id, 0).await,
            Err(StoreError::NotFound(_))
        ));
        // Files written before a time are listed as candidates for cleanup.
        let old = a.upload_begin().await.unwrap();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(1);
        assert!(b.stale_upload_files(later).await.unwrap().contains(&old));
        assert!(
            !b.stale_upload_files(std::time::UNIX_EPOCH)
                .await
                .unwrap()
                .contains(&old)
        );
        // A node starting on the folder leaves live sessions alone.
        let id = a.upload_begin().await.unwrap();
        a.upload_append(&id, body(&[b"kept"]), 100).await.unwrap();
        let c = FsBlobStore::open_shared(dir.path()).await.unwrap();
        c.upload_resume(&id, 4).await.unwrap();
    }

    #[tokio::test]
    async fn upload_sessions_append_verify_and_recover() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).await.unwrap();
        let id = store.upload_begin().await.unwrap();
        assert_eq!(id.len(), 32);
        assert_eq!(store.upload_len(&id).await.unwrap(), Some(0));
        assert_eq!(store.upload_append(&id, body(&[b"abc"]), 100).await.unwrap(), 3);
        // A body that breaks midway leaves the session as it was.
        let broken: ByteStream = Box::pin(futures::stream::iter(vec![
            Ok(Bytes::from_static(b"zzzz")),
            Err(io::Error::other("client went away")),
        ]));
        assert!(store.upload_append(&id, broken, 100).await.is_err());
        assert_eq!(store.upload_len(&id).await.unwrap(), Some(3));
        // So does one past the limit.
        assert!(matches!(
            store.upload_append(&id, body(&[b"0123456789"]), 10).await,
            Err(StoreError::TooLarge { limit: 10 })
        ));
        assert_eq!(
            store.upload_append(&id, body(&[b"de", b"f"]), 100).await.unwrap(),
            6
        );
        // A dropped append (the request future cancelled) also restores it.
        {
            let pending: ByteStream = Box::pin(
                futures::stream::iter(vec![Ok(Bytes::from_static(b"junk"))])
                    .chain(futures::stream::pending()),
            );
            let fut = store.upload_append(&id, pending, 100);
            assert!(
                tokio::time::timeout(std::time::Duration::from_millis(50), fut)
                    .await
                    .is_err()
            );
        }
        assert_eq!(store.upload_len(&id).await.unwrap(), Some(6));
        // The next append follows at once; whatever the dropped one's writer
        // still had in hand must not end up in the content.
        assert_eq!(store.upload_append(&id, body(&[b"gh"]), 100).await.unwrap(), 8);
        let staged = store
            .upload_finish(&id, Some(&Digest::of(b"abcdefgh")))
            .await
            .unwrap();
        assert_eq!((staged.digest(), staged.size()), (Digest::of(b"abcdefgh"), 8));
        store.commit(staged).await.unwrap();
        assert_eq!(
            read_all(store.get(&Digest::of(b"abcdefgh"), None).await.unwrap()).await,
            b"abcdefgh"
        );
        assert_eq!(
            store.upload_len(&id).await.unwrap(),
            None,
            "finished sessions are gone"
        );
        assert!(matches!(
            store.upload_append(&id, body(&[b"x"]), 100).await,
            Err(StoreError::NotFound(_))
        ));

        // A wrong digest discards the session and stores nothing.
        let id = store.upload_begin().await.unwrap();
        store.upload_append(&id, body(&[b"xyz"]), 100).await.unwrap();
        assert!(matches!(
            store.upload_finish(&id, Some(&Digest::of(b"xyq"))).await,
            Err(StoreError::DigestMismatch { .. })
        ));
        assert_eq!(store.upload_len(&id).await.unwrap(), None);
        assert_eq!(store.size(&Digest::of(b"xyz")).await.unwrap(), None);

        // Abort, bad ids, and a restart discard sessions.
        let id = store.upload_begin().await.unwrap();
        store.upload_abort(&id).await.unwrap();
        store.upload_abort(&id).await.unwrap();
        assert_eq!(store.upload_len(&id).await.unwrap(), None);
        assert!(
            store
                .upload_append("../../etc", body(&[b"x"]), 100)
                .await
                .is_err()
        );
        let id = store.upload_begin().await.unwrap();
        store.upload_append(&id, body(&[b"x"]), 100).await.unwrap();
        let store = FsBlobStore::open(dir.path()).await.unwrap();
        assert_eq!(store.upload_len(&id).await.unwrap(), None);
        assert_eq!(std::fs::read_dir(dir.path().join("uploads")).unwrap().count(), 0);
        assert_eq!(std::fs::read_dir(dir.path().join("staging")).unwrap().count(), 0);
    }

    /// Reads a body to its end: the bytes before the first error, and the error.
    async fn read_until_error(b: BlobBody) -> (Vec<u8>, Option<io::Error>) {
        let mut out = Vec::new();
        let mut s = b.stream;
        while let Some(c) = s.next().await {
            match c {
                Ok(c) => out.extend_from_slice(&c),
                Err(e) => return (out, Some(e)),
            }
        }
        (out, None)
    }

    /// A whole read of a blob whose bytes went wrong never hands out the
    /// last chunk: it ends with an error naming the digest, and the blob is
    /// quarantined at once (and stays so across a restart) until a
    /// verified copy is committed. Ranges are not verified.
    #[tokio::test]
    async fn a_part_of_a_file_is_served_only_once_the_whole_file_verified() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).await.unwrap();
        let content: Vec<u8> = (0..(SEND_CHUNK + 10)).map(|i| (i % 249) as u8).collect();
        let staged = store
            .stage(
                futures::stream::iter(vec![Ok(Bytes::from(content.clone()))]).boxed(),
                u64::MAX,
                None,
            )
            .await
            .unwrap();
        let d = staged.digest();
        store.commit(staged).await.unwrap();
        // Never read whole: the first part read checks the file first.
        assert_eq!(
            read_all(store.get(&d, Some(5..15)).await.unwrap()).await,
            &content[5..15]
        );
        // The file changes (same length, other bytes): a part is refused,
        // and the blob taken out of service.
        std::thread::sleep(std::time::Duration::from_millis(10));
        let mut rotten = content.clone();
        rotten[10] ^= 1;
        std::fs::write(store.blob_path(&d), &rotten).unwrap();
        assert!(matches!(store.get(&d, Some(5..15)).await, Err(StoreError::BlobMissing(x)) if x == d));
        assert!(store.is_quarantined(&d));
    }

    #[tokio::test]
    async fn whole_reads_are_verified_and_wrong_bytes_are_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).await.unwrap();
        let content: Vec<u8> = (0..(SEND_CHUNK * 2 + 10)).map(|i| (i % 251) as u8).collect();
        let staged = store
            .stage(
                futures::stream::iter(vec![Ok(Bytes::from(content.clone()))]).boxed(),
                u64::MAX,
                None,
            )
            .await
            .unwrap();
        let d = staged.digest();
        store.commit(staged).await.unwrap();
        // Intact: whole, and a range covering it all, are served as stored.
        assert_eq!(read_all(store.get(&d, None).await.unwrap()).await, content);
        let all = 0..content.len() as u64;
        assert_eq!(read_all(store.get(&d, Some(all)).await.unwrap()).await, content);

        let mut rotten = content.clone();
        rotten[SEND_CHUNK + 5] ^= 1;
        std::fs::write(store.blob_path(&d), &rotten).unwrap();
        let (got, err) = read_until_error(store.get(&d, None).await.unwrap()).await;
        let err = err.expect("a corrupt blob read to its end without an error");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains(&d.to_string()), "{err}");
        // The chunks before the last went out as read; the last did not.
        assert!(got.len() < content.len(), "the last chunk went out");
        assert_eq!(got, rotten[..got.len()]);
        assert!(store.is_quarantined(&d));
        assert_eq!(store.size(&d).await.unwrap(), None);
        assert!(matches!(
            store.get(&d, None).await,
            Err(StoreError::BlobMissing(_))
        ));
        assert_eq!(std::fs::read_dir(dir.path().join("corrupt")).unwrap().count(), 1);

        // Remembered across a restart, without re-hashing anything.
        let store = FsBlobStore::open(dir.path()).await.unwrap();
        assert_eq!(
            store.quarantined().iter().map(|q| q.0).collect::<Vec<_>>(),
            vec![d]
        );
        // A verified copy ends the quarantine (the bad bytes stay aside).
        let again = store
            .stage(
                futures::stream::iter(vec![Ok(Bytes::from(content.clone()))]).boxed(),
                u64::MAX,
                Some(d),
            )
            .await
            .unwrap();
        assert_eq!(store.commit(again).await.unwrap(), BlobCheck::Missing);
        assert!(!store.is_quarantined(&d));
        assert_eq!(read_all(store.get(&d, None).await.unwrap()).await, content);
        let store = FsBlobStore::open(dir.path()).await.unwrap();
        assert!(store.quarantined().is_empty());
        assert_eq!(std::fs::read_dir(dir.path().join("corrupt")).unwrap().count(), 1);

        // A blob of one chunk (and an empty file) never hands out a byte.
        let small = store.stage(body(&[b"tiny"]), 100, None).await.unwrap();
        let s = small.digest();
        store.commit(small).await.unwrap();
        std::fs::write(store.blob_path(&s), b"tinY").unwrap();
        let (got, err) = read_until_error(store.get(&s, None).await.unwrap()).await;
        assert!(got.is_empty() && err.is_some());
        let e = store.stage(body(&[b"e"]), 100, None).await.unwrap();
        let ed = e.digest();
        store.commit(e).await.unwrap();
        std::fs::write(store.blob_path(&ed), b"").unwrap();
        let (got, err) = read_until_error(store.get(&ed, None).await.unwrap()).await;
        assert!(got.is_empty() && err.is_some());
        assert!(store.is_quarantined(&s) && store.is_quarantined(&ed));
        // Collecting a quarantined blob ends its quarantine, and releasing does too.
        store.delete(&s).await.unwrap();
        store.release_quarantine(&ed).await.unwrap();
        assert!(store.quarantined().is_empty());
    }

    /// A reader that found the old bytes wrong never moves aside a
    /// verified copy committed meanwhile.
    #[tokio::test]
    async fn a_verifying_reader_leaves_a_copy_committed_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).await.unwrap();
        // More chunks than the reader's channel holds: it is mid-blob when
        // the verified copy is committed.
        let content = vec![3u8; SEND_CHUNK * 8];
        let staged = store
            .stage(
                futures::stream::iter(vec![Ok(Bytes::from(content.clone()))]).boxed(),
                u64::MAX,
                None,
            )
            .await
            .unwrap();
        let d = staged.digest();
        store.commit(staged).await.unwrap();
        let mut rotten = content.clone();
        rotten[0] = 4;
        std::fs::write(store.blob_path(&d), &rotten).unwrap();
        let mut reading = store.get(&d, None).await.unwrap().stream;
        let first = reading.next().await.unwrap().unwrap();
        assert_eq!(first[0], 4);
        let again = store
            .stage(
                futures::stream::iter(vec![Ok(Bytes::from(content.clone()))]).boxed(),
                u64::MAX,
                Some(d),
            )
            .await
            .unwrap();
        store.commit(again).await.unwrap();
        let mut failed = false;
        while let Some(c) = reading.next().await {
            failed |= c.is_err();
        }
        assert!(failed, "the old bytes were not refused");
        assert!(!store.is_quarantined(&d));
        assert_eq!(read_all(store.get(&d, None).await.unwrap()).await, content);
    }

    #[tokio::test]
    async fn the_missing_record_survives_a_restart_less_what_came_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).await.unwrap();
        assert!(store.missing_on_record().is_empty());
        let staged = store.stage(body(&[b"back"]), 100, None).await.unwrap();
        let (back, gone) = (staged.digest(), Digest::of(b"gone"));
        store.mark_missing(&back, 1).await.unwrap();
        store.mark_missing(&gone, 2).await.unwrap();
        let mut both = vec![(back, 1), (gone, 2)];
        both.sort();
        assert_eq!(store.missing_on_record(), both);
        store.commit(staged).await.unwrap();
        let store = FsBlobStore::open(dir.path()).await.unwrap();
        assert_eq!(store.missing_on_record(), vec![(gone, 2)]);
        store.unmark_missing(&gone).await.unwrap();
        let store = FsBlobStore::open(dir.path()).await.unwrap();
        assert!(store.missing_on_record().is_empty());
    }

    #[tokio::test]
    async fn refuses_oversize_and_mismatch_leaving_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).await.unwrap();
        let r = store.stage(body(&[b"0123456789", b"abc"]), 10, None).await;
        assert!(matches!(r, Err(StoreError::TooLarge { limit: 10 })));
        let r = store.stage(body(&[b"abc"]), 10, Some(Digest::of(b"abd"))).await;
        assert!(matches!(r, Err(StoreError::DigestMismatch { .. })));
        let staged = store.stage(body(&[b"abc"]), 10, None).await.unwrap();
        drop(staged);
        assert_eq!(std::fs::read_dir(dir.path().join("staging")).unwrap().count(), 0);
    }
}
