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

/// An upload that has been written to the staging area and hashed, but is
/// not yet part of the store. Dropping it without committing removes it.
pub struct StagedBlob {
    path: PathBuf,
    digest: Digest,
    size: u64,
    committed: bool,
}

impl StagedBlob {
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

/// Immutable content addressed by sha256, one copy per instance.
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
    /// nothing or the whole verified blob.
    async fn commit(&self, staged: StagedBlob) -> Result<(), StoreError>;

    /// The size of a stored blob, or `None`.
    async fn size(&self, digest: &Digest) -> Result<Option<u64>, StoreError>;

    /// Reads a blob, or the byte range `range` of it (already validated
    /// against the size by the caller, end exclusive).
    async fn get(&self, digest: &Digest, range: Option<Range<u64>>) -> Result<BlobBody, StoreError>;

    /// Removes a blob; removing a missing blob is not an error.
    async fn delete(&self, digest: &Digest) -> Result<(), StoreError>;

    /// Bytes already received of an interrupted transfer of `digest`
    /// (kept across restarts so a transfer resumes where it broke).
    async fn partial_len(&self, digest: &Digest) -> Result<u64, StoreError>;

    /// Appends `body` to the partial transfer of `digest`; once `body` ends,
    /// verifies the whole content against `digest` and returns it staged.
    /// On a mismatch the partial file is discarded. If `body` fails midway,
    /// what arrived is kept for the next attempt. The content is not yet
    /// durable: callers [`BlobStore::sync`] a batch of transfers at once
    /// before an item relies on them (cheaper than one flush per blob).
    async fn stage_resume(
        &self,
        digest: &Digest,
        body: ByteStream,
        limit: u64,
    ) -> Result<StagedBlob, StoreError>;

    /// Makes committed blobs durable (flushed to stable storage).
    async fn sync(&self, digests: &[Digest]) -> Result<(), StoreError> {
        let _ = digests;
        Ok(())
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

    /// Ends session `id`: its content, verified against `expected`, becomes
    /// a staged blob. On a mismatch the session is discarded
    /// ([`StoreError::DigestMismatch`]).
    async fn upload_finish(&self, id: &str, _expected: &Digest) -> Result<StagedBlob, StoreError> {
        Err(StoreError::NotFound(format!("upload {id}")))
    }

    /// Discards session `id`; discarding an unknown session is not an error.
    async fn upload_abort(&self, _id: &str) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Blobs as files under one directory: `sha256/ab/abcd…` for content and
/// `staging/` for uploads in flight (on the same file system, so that a
/// commit is a rename).
pub struct FsBlobStore {
    root: PathBuf,
    uploads: Mutex<HashMap<String, UploadState>>,
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

const READ_CHUNK: usize = 256 * 1024;

/// How many bytes a blob writer lets pile up in the page cache before it
/// asks the kernel to start writing them out, so that the flush at the end
/// (before the blob counts as stored) finds little left to do.
const WRITEBACK_EVERY: usize = 8 << 20;

/// Starts writing a file's dirty pages to the device without waiting for
/// it (Linux starts write-back on this advice, and drops pages already
/// written, which a blob being received will not read again soon). A
/// failure only means the final flush does all the work.
#[cfg(target_os = "linux")]
fn start_writeback(file: &std::fs::File) {
    let _ = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::DontNeed);
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &std::fs::File) {}

/// What [`pour`] leaves: the file, the hash of what went through it (if it
/// was hashing), and the bytes the file now holds.
struct Poured {
    file: std::fs::File,
    hasher: Option<Sha256Hasher>,
    size: u64,
}

/// Streams `body` into `file` (which already holds `size` bytes and is
/// positioned after them): hashing and writing happen on one blocking
/// thread, so the async workers only move chunks. Past `limit` bytes in all
/// it stops with [`StoreError::TooLarge`]. If `body` fails midway, the error
/// is returned once everything before it is written. If the caller's future is dropped,
/// the writer finishes what it was handed and stops; `hold` is dropped when
/// the writer ends.
async fn pour(
    mut body: ByteStream,
    file: std::fs::File,
    hasher: Option<Sha256Hasher>,
    mut size: u64,
    limit: u64,
    hold: impl Send + 'static,
) -> Result<Poured, StoreError> {
    use std::io::Write;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let writer = tokio::task::spawn_blocking(move || -> io::Result<(std::fs::File, Option<Sha256Hasher>)> {
        let _hold = hold;
        let mut hasher = hasher;
        let mut out = std::io::BufWriter::with_capacity(READ_CHUNK, file);
        let mut unflushed = 0;
        while let Some(chunk) = rx.blocking_recv() {
            if let Some(h) = &mut hasher {
                h.update(&chunk);
            }
            out.write_all(&chunk)?;
            unflushed += chunk.len();
            if unflushed >= WRITEBACK_EVERY {
                start_writeback(out.get_ref());
                unflushed = 0;
            }
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        Ok((file, hasher))
    });
    let mut failure = None;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(chunk) => {
                size += chunk.len() as u64;
                if size > limit {
                    drop(tx);
                    let _ = writer.await;
                    return Err(StoreError::TooLarge { limit });
                }
                if tx.send(chunk).await.is_err() {
                    break; // the writer failed; its error is below
                }
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
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

impl FsBlobStore {
    pub async fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        tokio::fs::create_dir_all(root.join("sha256")).await?;
        let staging = root.join("staging");
        // Client uploads that were in flight when the process stopped are
        // garbage; replication transfers (`partial/`) resume instead.
        if tokio::fs::try_exists(&staging).await? {
            tokio::fs::remove_dir_all(&staging).await?;
        }
        tokio::fs::create_dir_all(&staging).await?;
        tokio::fs::create_dir_all(root.join("partial")).await?;
        // Upload sessions live in memory too: after a restart they are gone.
        let uploads = root.join("uploads");
        if tokio::fs::try_exists(&uploads).await? {
            tokio::fs::remove_dir_all(&uploads).await?;
        }
        tokio::fs::create_dir_all(&uploads).await?;
        Ok(Self {
            root,
            uploads: Mutex::new(HashMap::new()),
        })
    }

    /// The file of session `id`, or None if `id` is not a session id.
    fn upload_path(&self, id: &str) -> Option<PathBuf> {
        let valid = id.len() == 32
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        valid.then(|| self.root.join("uploads").join(id))
    }

    fn sessions(&self) -> Result<std::sync::MutexGuard<'_, HashMap<String, UploadState>>, StoreError> {
        self.uploads
            .lock()
            .map_err(|_| StoreError::Backend("upload sessions lock poisoned".into()))
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

    fn partial_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("partial").join(digest.hex())
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.root.join("sha256").join(&hex[..2]).join(hex)
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
        let path = self.root.join("staging").join(hex::encode(name));
        let file = tokio::fs::File::create(&path).await?.into_std().await;
        // From here on, dropping `staged` removes the file on every early return.
        let mut staged = StagedBlob {
            path,
            digest: Digest::from_bytes([0; 32]),
            size: 0,
            committed: false,
        };
        let poured = pour(body, file, Some(Sha256Hasher::new()), 0, limit, ()).await?;
        let file = poured.file;
        tokio::task::spawn_blocking(move || file.sync_all())
            .await
            .map_err(|e| StoreError::Backend(format!("blob writer: {e}")))??;
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

    async fn commit(&self, mut staged: StagedBlob) -> Result<(), StoreError> {
        let dest = self.blob_path(&staged.digest);
        if tokio::fs::try_exists(&dest).await? {
            return Ok(()); // same content already stored; `staged` is dropped
        }
        if let Some(dir) = dest.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        tokio::fs::rename(&staged.path, &dest).await?;
        staged.committed = true;
        Ok(())
    }

    async fn size(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        match tokio::fs::metadata(self.blob_path(digest)).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn get(&self, digest: &Digest, range: Option<Range<u64>>) -> Result<BlobBody, StoreError> {
        let path = self.blob_path(digest);
        let d = *digest;
        // One blocking reader per body, handing large chunks over a small
        // channel: far fewer thread hops than a read per poll.
        let (file, total_size) = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            let file = match std::fs::File::open(path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StoreError::BlobMissing(d)),
                Err(e) => return Err(e.into()),
            };
            let size = file.metadata()?.len();
            Ok((file, size))
        })
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))??;
        let (start, end) = match range {
            None => (0, total_size),
            Some(r) => (r.start, r.end.min(total_size)),
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(4);
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Seek};
            let mut file = file;
            if let Err(e) = file.seek(io::SeekFrom::Start(start)) {
                let _ = tx.blocking_send(Err(e));
                return;
            }
            let mut left = end.saturating_sub(start);
            while left > 0 {
                let want = left.min(SEND_CHUNK as u64);
                // read_to_end fills spare capacity without zeroing it first.
                let mut buf = Vec::with_capacity(want as usize);
                match (&mut file).take(want).read_to_end(&mut buf) {
                    Ok(0) => {
                        let _ = tx
                            .blocking_send(Err(io::Error::new(io::ErrorKind::UnexpectedEof, "blob shrank")));
                        return;
                    }
                    Ok(n) => {
                        left -= n as u64;
                        if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                            return; // the reader went away
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                }
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
        Ok(BlobBody {
            total_size,
            stream: Box::pin(stream),
        })
    }

    async fn delete(&self, digest: &Digest) -> Result<(), StoreError> {
        match tokio::fs::remove_file(self.blob_path(digest)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn sync(&self, digests: &[Digest]) -> Result<(), StoreError> {
        // Many flushes in flight at once let the device merge the writes.
        for batch in digests.chunks(32) {
            let flushes = batch.iter().map(|d| {
                let path = self.blob_path(d);
                async move { tokio::fs::File::open(path).await?.sync_data().await }
            });
            for r in futures::future::join_all(flushes).await {
                r?;
            }
        }
        Ok(())
    }

    async fn partial_len(&self, digest: &Digest) -> Result<u64, StoreError> {
        match tokio::fs::metadata(self.partial_path(digest)).await {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    async fn stage_resume(
        &self,
        digest: &Digest,
        body: ByteStream,
        limit: u64,
    ) -> Result<StagedBlob, StoreError> {
        let partial = self.partial_path(digest);
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&partial)
            .await?
            .into_std()
            .await;
        let start = file.metadata()?.len();
        let fresh = start == 0;
        let poured = match pour(body, file, fresh.then(Sha256Hasher::new), start, limit, ()).await {
            Ok(p) => p,
            Err(e @ StoreError::TooLarge { .. }) => {
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(e);
            }
            Err(e) => return Err(e), // a broken body: what arrived is kept
        };
        let size = poured.size;
        let actual = if let Some(hasher) = poured.hasher {
            hasher.finish()
        } else {
            // Resumed: hash the whole file once, off the async threads.
            let p = partial.clone();
            tokio::task::spawn_blocking(move || -> io::Result<Digest> {
                use std::io::Read;
                let mut f = std::fs::File::open(p)?;
                let mut h = Sha256Hasher::new();
                let mut buf = vec![0u8; READ_CHUNK];
                loop {
                    let n = f.read(&mut buf)?;
                    if n == 0 {
                        return Ok(h.finish());
                    }
                    h.update(&buf[..n]);
                }
            })
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))??
        };
        if actual != *digest {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(StoreError::DigestMismatch {
                expected: *digest,
                actual,
            });
        }
        let name: [u8; 16] = rand::random();
        let path = self.root.join("staging").join(hex::encode(name));
        tokio::fs::rename(&partial, &path).await?;
        Ok(StagedBlob {
            path,
            digest: actual,
            size,
            committed: false,
        })
    }

    async fn upload_begin(&self) -> Result<String, StoreError> {
        let id = hex::encode(rand::random::<[u8; 16]>());
        let path = self
            .upload_path(&id)
            .ok_or_else(|| StoreError::Backend("generated an invalid upload id".into()))?;
        tokio::fs::File::create(&path).await?;
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

    async fn upload_len(&self, id: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.sessions()?.get(id).map(|s| s.size))
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
        let poured = pour(body, file, Some(hasher), start, limit, writer).await?;
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

    async fn upload_finish(&self, id: &str, expected: &Digest) -> Result<StagedBlob, StoreError> {
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
        };
        if staged.digest != *expected {
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
        let dest = self
            .root
            .join("staging")
            .join(hex::encode(rand::random::<[u8; 16]>()));
        tokio::fs::rename(&staged.path, &dest).await?;
        staged.path = dest;
        Ok(staged)
    }

    async fn upload_abort(&self, id: &str) -> Result<(), StoreError> {
        let Some(path) = self.upload_path(id) else {
            return Ok(());
        };
        if self.sessions()?.remove(id).is_some() {
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
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

    #[tokio::test]
    async fn interrupted_transfer_resumes_and_is_verified() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).await.unwrap();
        let d = Digest::of(b"abcdefghij");
        let broken: ByteStream = Box::pin(futures::stream::iter(vec![
            Ok(Bytes::from_static(b"abcd")),
            Err(io::Error::other("link dropped")),
        ]));
        assert!(store.stage_resume(&d, broken, 100).await.is_err());
        // Survives a restart of the store.
        let store = FsBlobStore::open(dir.path()).await.unwrap();
        assert_eq!(store.partial_len(&d).await.unwrap(), 4);
        let staged = store.stage_resume(&d, body(&[b"efghij"]), 100).await.unwrap();
        assert_eq!((staged.digest(), staged.size()), (d, 10));
        store.commit(staged).await.unwrap();
        assert_eq!(read_all(store.get(&d, None).await.unwrap()).await, b"abcdefghij");
        assert_eq!(store.partial_len(&d).await.unwrap(), 0);
        // Wrong bytes are refused and discarded.
        let other = Digest::of(b"xyz");
        assert!(matches!(
            store.stage_resume(&other, body(&[b"xyq"]), 100).await,
            Err(StoreError::DigestMismatch { .. })
        ));
        assert_eq!(store.partial_len(&other).await.unwrap(), 0);
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
        let staged = store.upload_finish(&id, &Digest::of(b"abcdefgh")).await.unwrap();
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
            store.upload_finish(&id, &Digest::of(b"xyq")).await,
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
