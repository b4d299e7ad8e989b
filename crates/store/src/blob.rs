//! Content-addressed blob storage.

use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use ferry_types::{Digest, Sha256Hasher};
use futures::{Stream, StreamExt};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

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
    /// what arrived is kept for the next attempt.
    async fn stage_resume(
        &self,
        digest: &Digest,
        body: ByteStream,
        limit: u64,
    ) -> Result<StagedBlob, StoreError>;
}

/// Blobs as files under one directory: `sha256/ab/abcd…` for content and
/// `staging/` for uploads in flight (on the same file system, so that a
/// commit is a rename).
pub struct FsBlobStore {
    root: PathBuf,
}

const READ_CHUNK: usize = 256 * 1024;

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
        Ok(Self { root })
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
        mut body: ByteStream,
        limit: u64,
        expected: Option<Digest>,
    ) -> Result<StagedBlob, StoreError> {
        let name: [u8; 16] = rand::random();
        let path = self.root.join("staging").join(hex::encode(name));
        let file = tokio::fs::File::create(&path).await?;
        // From here on, dropping `staged` removes the file on every early return.
        let mut staged = StagedBlob {
            path,
            digest: Digest::from_bytes([0; 32]),
            size: 0,
            committed: false,
        };
        let mut out = tokio::io::BufWriter::with_capacity(READ_CHUNK, file);
        let mut hasher = Sha256Hasher::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            staged.size += chunk.len() as u64;
            if staged.size > limit {
                return Err(StoreError::TooLarge { limit });
            }
            hasher.update(&chunk);
            out.write_all(&chunk).await?;
        }
        out.flush().await?;
        let file = out.into_inner();
        file.sync_all().await?;
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
        let mut file = match tokio::fs::File::open(self.blob_path(digest)).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StoreError::BlobMissing(*digest)),
            Err(e) => return Err(e.into()),
        };
        let total_size = file.metadata().await?.len();
        let stream: ByteStream = match range {
            None => Box::pin(tokio_util::io::ReaderStream::with_capacity(file, READ_CHUNK)),
            Some(r) => {
                file.seek(io::SeekFrom::Start(r.start)).await?;
                let limited = file.take(r.end.saturating_sub(r.start));
                Box::pin(tokio_util::io::ReaderStream::with_capacity(limited, READ_CHUNK))
            }
        };
        Ok(BlobBody { total_size, stream })
    }

    async fn delete(&self, digest: &Digest) -> Result<(), StoreError> {
        match tokio::fs::remove_file(self.blob_path(digest)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
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
        mut body: ByteStream,
        limit: u64,
    ) -> Result<StagedBlob, StoreError> {
        let partial = self.partial_path(digest);
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&partial)
            .await?;
        let mut size = file.metadata().await?.len();
        let fresh = size == 0;
        let mut hasher = Sha256Hasher::new();
        let mut out = tokio::io::BufWriter::with_capacity(READ_CHUNK, file);
        let mut failure = None;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(chunk) => {
                    size += chunk.len() as u64;
                    if size > limit {
                        drop(out);
                        let _ = tokio::fs::remove_file(&partial).await;
                        return Err(StoreError::TooLarge { limit });
                    }
                    if fresh {
                        hasher.update(&chunk);
                    }
                    out.write_all(&chunk).await?;
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        out.flush().await?;
        let file = out.into_inner();
        file.sync_all().await?;
        drop(file);
        if let Some(e) = failure {
            return Err(e.into()); // keep what arrived
        }
        let actual = if fresh {
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
