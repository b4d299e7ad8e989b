//! Blobs in an S3-compatible object store.
//!
//! Content lives in the bucket under `{prefix}sha256/ab/abcdef…` (the same
//! layout as the filesystem store). Everything that is still being received
//! — staged uploads, resumable replication transfers, upload sessions — is
//! kept in a node-local spool directory (an [`FsBlobStore`] used only for
//! those areas) while it is hashed. Only once its sha256 is known and
//! matches does a blob go to the bucket, under its content key, as one PUT
//! (up to one part size) or as a multipart upload of parts of at least
//! 5 MiB. So no unverified byte is ever written under a content key, and a
//! content key's object, once written, only ever holds its digest's bytes.
//!
//! Multipart uploads this store starts are journalled in the spool
//! (`multipart/`) until completed or aborted: a failed or dropped upload is
//! aborted at once, and whatever a crash left is aborted at the next open.
//! Blobs taken out of service are copied to `{prefix}corrupt/HEX-MILLIS`
//! (where S3's CopyObject allows, up to 5 GiB) and deleted from their key.
//! The outstanding quarantines and the blobs found missing are one small
//! marker object per digest (`{prefix}damage/quarantined/HEX`,
//! `{prefix}damage/missing/HEX`, holding the time in milliseconds),
//! written and deleted one by one, never read, changed and written back:
//! several nodes sharing the bucket record and resolve damage without
//! losing each other's records. A store opened shared lists the markers
//! again every [`crate::DAMAGE_REFRESH`] (two ListObjectsV2, plus one
//! GetObject per marker it has not read before and one HeadObject per new
//! missing marker), so what other nodes record or resolve is seen within
//! that interval; `fsck` and repair ask for a listing first
//! ([`BlobStore::refresh_damage`]).
//!
//! Several nodes may share one bucket (and prefix): each keeps its spool
//! in its own data directory, or — when the data directory is shared too —
//! opens it with [`S3BlobStore::open_shared`], which stages in a directory
//! of its own and journals its multipart uploads under
//! `multipart/node-ID/`, so that a starting node aborts only the uploads of
//! nodes that died, never one another node is sending.
//!
//! Every failure to reach the bucket is [`StoreError::Unavailable`] (503 at
//! the HTTP edge), a bucket that does not exist [`StoreError::NoBucket`]
//! (asked at open and by `ready`, with a list request); a missing object
//! is [`StoreError::BlobMissing`] or `None`/[`BlobCheck::Missing`] as the
//! trait says.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use ferry_types::{Digest, Sha256Hasher};
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as Key;
use object_store::{
    ClientOptions, GetOptions, GetRange, MultipartId, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};

mod sessions;

use crate::StoreError;
use crate::blob::{BlobBody, BlobCheck, BlobStore, ByteStream, FsBlobStore, StagedBlob, Transfer};

/// The smallest part S3 accepts in a multipart upload (except the last).
pub const MIN_PART_SIZE: usize = 5 << 20;
/// The part size used unless configured otherwise.
pub const DEFAULT_PART_SIZE: usize = 8 << 20;
/// S3 allows at most this many parts per upload; larger blobs get larger parts.
const MAX_PARTS: u64 = 10_000;
/// Parts uploaded at once by one commit.
const PARTS_IN_FLIGHT: usize = 2;
/// Objects looked up or written at once by `sizes` and `put_many`.
const REQUESTS_IN_FLIGHT: usize = 8;
/// Most verified objects remembered (then the memory starts over).
const VERIFIED_MAX: usize = 200_000;

/// Where and how to reach the bucket. Credentials left `None` fall back to
/// object_store's provider chain (web identity, instance metadata).
#[derive(Clone, Default)]
pub struct S3Config {
    /// The S3 API's base URL (`https://s3.eu-west-1.amazonaws.com`,
    /// `http://127.0.0.1:9000`); `None` for AWS itself, by region.
    pub endpoint: Option<String>,
    pub bucket: String,
    /// Signing region (`us-east-1` when the server does not care).
    pub region: String,
    /// Path-style requests (`endpoint/bucket/key`), which most self-hosted
    /// servers need; otherwise virtual-hosted (`bucket.endpoint/key`).
    pub path_style: bool,
    /// Prepended to every key (`ferry/` puts content under `ferry/sha256/…`).
    pub prefix: String,
    /// Allows `http://` endpoints.
    pub allow_http: bool,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    /// Multipart part size in bytes; at least [`MIN_PART_SIZE`] (smaller
    /// values are raised), [`DEFAULT_PART_SIZE`] when 0. Blobs up to one
    /// part go up in one PUT.
    pub part_size: usize,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("prefix", &self.prefix)
            .field("allow_http", &self.allow_http)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key.as_ref().map(|_| "…"))
            .field("session_token", &self.session_token.as_ref().map(|_| "…"))
            .field("part_size", &self.part_size)
            .finish()
    }
}

impl S3Config {
    /// `bucket B at ENDPOINT` (or `in region R`), for logs and errors.
    pub fn describe(&self) -> String {
        match &self.endpoint {
            Some(e) => format!("bucket {} at {e}", self.bucket),
            None => format!("bucket {} in AWS region {}", self.bucket, self.region),
        }
    }
}

/// A [`BlobStore`] over an S3-compatible bucket, with a node-local spool
/// directory for what is still being received (see the module docs).
///
/// S3 operations used: ListObjectsV2 (one key, to check that the bucket
/// exists: at open and in [`BlobStore::ready`]), GetObject (whole and with
/// `Range`), HeadObject, PutObject, DeleteObject, CopyObject (quarantine only),
/// CreateMultipartUpload, UploadPart, CompleteMultipartUpload and
/// AbortMultipartUpload.
pub struct S3BlobStore {
    inner: Arc<Inner>,
    /// The refresh interval of the damage records, when shared.
    refresh_every: Option<Arc<crate::refresh::RefreshEvery>>,
    /// Lists the damage markers again periodically (shared only).
    _refresher: Option<crate::refresh::Refresher>,
}

struct Inner {
    s3: Arc<AmazonS3>,
    /// `""` or `"something/"`.
    prefix: String,
    spool: FsBlobStore,
    spool_root: PathBuf,
    location: String,
    part_size: usize,
    /// Where this node journals its multipart uploads:
    /// `spool/multipart/` or `spool/multipart/node-ID/`.
    journal_dir: PathBuf,
    /// Outstanding quarantines: digest → when (those on record when this
    /// node started and those it made since).
    quarantine: Mutex<BTreeMap<Digest, i64>>,
    /// Blobs found missing, by the markers last listed or written here.
    missing: Mutex<BTreeMap<Digest, i64>>,
    /// Serializes this node's writes of damage markers with its listings
    /// of them, so a listing never drops a marker written meanwhile.
    records: tokio::sync::Mutex<()>,
    /// Objects hashed whole and found right, by ETag: a part of such an
    /// object is served as it is; any other is verified whole first.
    verified: Mutex<HashMap<Digest, String>>,
    /// One lock per digest being committed (or quarantined) on this node.
    commits: Arc<Mutex<CommitLocks>>,
}

type CommitLocks = HashMap<Digest, Arc<tokio::sync::Mutex<()>>>;

/// Holds a digest's commit lock; forgets the digest's entry once nobody
/// else holds or waits for it.
struct CommitClaim {
    digest: Digest,
    locks: Arc<Mutex<CommitLocks>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for CommitClaim {
    fn drop(&mut self) {
        let mut locks = locked(&self.locks);
        drop(self.guard.take());
        if locks.get(&self.digest).is_some_and(|l| Arc::strong_count(l) == 1) {
            locks.remove(&self.digest);
        }
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked.
fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn is_not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
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

/// The single record objects an earlier version rewrote whole; read once,
/// turned into markers and deleted.
const LEGACY_QUARANTINE_RECORD: &str = "records/quarantined";
const LEGACY_MISSING_RECORD: &str = "records/missing";
/// One marker object per outstanding quarantine, under this. (Not under
/// `records/quarantined/`: on servers that keep objects as files, such as
/// s3s-fs, a key cannot be both an object and a folder of objects.)
const QUARANTINE_MARKERS: &str = "damage/quarantined/";
/// One marker object per blob found missing, under this.
const MISSING_MARKERS: &str = "damage/missing/";

#[cfg(test)]
fn render_record(list: &[(Digest, i64)]) -> Bytes {
    let mut out = String::new();
    for (d, at) in list {
        out.push_str(&format!("{d} {at}\n"));
    }
    Bytes::from(out)
}

fn parse_record(text: &str) -> Vec<(Digest, i64)> {
    text.lines()
        .filter_map(|l| {
            let (d, at) = l.split_once(' ')?;
            Some((d.parse::<Digest>().ok()?, at.trim().parse::<i64>().ok()?))
        })
        .collect()
}

impl S3BlobStore {
    /// Sets how often a shared store lists the damage markers again
    /// (default [`crate::DAMAGE_REFRESH`]); nothing for a store opened
    /// with [`S3BlobStore::open`].
    pub fn set_damage_refresh(&self, every: Duration) {
        if let Some(e) = &self.refresh_every {
            e.set(every);
        }
    }

    /// Connects to the bucket described by `cfg`, with `spool` (a local
    /// directory, created if needed) for blobs being received. Aborts the
    /// multipart uploads an earlier run of this store left unfinished and
    /// reads the quarantine and missing records.
    ///
    /// Errors: [`StoreError::Backend`] for an invalid configuration,
    /// [`StoreError::NoBucket`] if the bucket does not exist,
    /// [`StoreError::Unavailable`] if the bucket cannot be reached,
    /// [`StoreError::Io`] for the spool.
    pub async fn open(cfg: S3Config, spool: impl Into<PathBuf>) -> Result<Self, StoreError> {
        Self::open_with(cfg, spool.into(), false).await
    }

    /// Like [`S3BlobStore::open`], for a spool directory that other nodes
    /// of the instance may share (a data directory on a network file
    /// system): the spool is opened with [`FsBlobStore::open_shared`]
    /// (staging and upload sessions in directories of this node's own, a
    /// liveness lock held while open) and multipart uploads are journalled
    /// under `multipart/node-ID/`. At open, only the journals of nodes that
    /// no longer hold their liveness lock (stopped or died) are aborted.
    pub async fn open_shared(cfg: S3Config, spool: impl Into<PathBuf>) -> Result<Self, StoreError> {
        Self::open_with(cfg, spool.into(), true).await
    }

    async fn open_with(cfg: S3Config, spool_root: PathBuf, shared: bool) -> Result<Self, StoreError> {
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&cfg.bucket)
            .with_region(if cfg.region.is_empty() {
                "us-east-1"
            } else {
                &cfg.region
            })
            .with_virtual_hosted_style_request(!cfg.path_style)
            .with_allow_http(cfg.allow_http)
            // A stopped server must turn into a 503 within seconds, not
            // after minutes of retries; bodies of any size may stream as
            // long as they keep moving, so no whole-request timeout.
            .with_retry(RetryConfig {
                max_retries: 2,
                retry_timeout: Duration::from_secs(10),
                ..Default::default()
            })
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(cfg.allow_http)
                    .with_connect_timeout(Duration::from_secs(3))
                    .with_timeout_disabled(),
            );
        if let Some(e) = &cfg.endpoint {
            b = b.with_endpoint(e);
        }
        if let Some(k) = &cfg.access_key_id {
            b = b.with_access_key_id(k);
        }
        if let Some(s) = &cfg.secret_access_key {
            b = b.with_secret_access_key(s);
        }
        if let Some(t) = &cfg.session_token {
            b = b.with_token(t);
        }
        let s3 = b
            .build()
            .map_err(|e| StoreError::Backend(format!("S3 configuration: {e}")))?;
        let prefix = match cfg.prefix.trim_matches('/') {
            "" => String::new(),
            p => format!("{p}/"),
        };
        let part_size = match cfg.part_size {
            0 => DEFAULT_PART_SIZE,
            n => n.max(MIN_PART_SIZE),
        };
        let spool = if shared {
            FsBlobStore::open_shared(&spool_root).await?
        } else {
            FsBlobStore::open(&spool_root).await?
        };
        let journal_dir = match spool.node() {
            Some(node) => spool_root.join("multipart").join(node),
            None => spool_root.join("multipart"),
        };
        tokio::fs::create_dir_all(&journal_dir).await?;
        let inner = Inner {
            s3: Arc::new(s3),
            prefix,
            spool,
            spool_root,
            journal_dir,
            location: cfg.describe(),
            part_size,
            quarantine: Mutex::new(BTreeMap::new()),
            missing: Mutex::new(BTreeMap::new()),
            records: tokio::sync::Mutex::new(()),
            verified: Mutex::new(HashMap::new()),
            commits: Arc::default(),
        };
        inner.check_bucket().await?;
        inner.sweep_multipart().await?;
        inner
            .migrate_legacy_record(LEGACY_QUARANTINE_RECORD, QUARANTINE_MARKERS)
            .await?;
        inner
            .migrate_legacy_record(LEGACY_MISSING_RECORD, MISSING_MARKERS)
            .await?;
        inner.refresh_damage().await?;
        let inner = Arc::new(inner);
        let (refresh_every, refresher) = if shared {
            let every = crate::refresh::RefreshEvery::new(crate::DAMAGE_REFRESH);
            let weak = Arc::downgrade(&inner);
            let refresher = crate::refresh::spawn_refresher(every.clone(), move || {
                let inner = weak.upgrade();
                async move {
                    match inner {
                        Some(inner) => inner.refresh_damage().await,
                        None => Ok(()),
                    }
                }
            });
            (Some(every), Some(refresher))
        } else {
            (None, None)
        };
        Ok(Self {
            inner,
            refresh_every,
            _refresher: refresher,
        })
    }
}

/// One part of a staged file: its index and byte range.
fn part_ranges(size: u64, part_size: u64) -> Vec<Range<u64>> {
    let part = part_size.max(size.div_ceil(MAX_PARTS));
    (0..size.div_ceil(part))
        .map(|i| i * part..((i + 1) * part).min(size))
        .collect()
}

/// Reads `range` of the file at `path`.
async fn read_part(path: &FsPath, range: Range<u64>) -> io::Result<Bytes> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut f = tokio::fs::File::open(path).await?;
    f.seek(io::SeekFrom::Start(range.start)).await?;
    let mut buf = vec![0u8; (range.end - range.start) as usize];
    f.read_exact(&mut buf).await?;
    Ok(Bytes::from(buf))
}

/// An unfinished multipart upload: aborted (and its journal entry removed)
/// if dropped before [`PendingUpload::done`].
struct PendingUpload {
    s3: Arc<AmazonS3>,
    key: Key,
    id: MultipartId,
    journal: PathBuf,
    armed: bool,
}

impl PendingUpload {
    async fn done(mut self) {
        self.armed = false;
        let _ = tokio::fs::remove_file(&self.journal).await;
    }

    async fn abort(mut self) {
        self.armed = false;
        match self.s3.abort_multipart(&self.key, &self.id).await {
            Ok(()) => {
                let _ = tokio::fs::remove_file(&self.journal).await;
            }
            Err(e) => {
                tracing::warn!(key = %self.key, error = %e, "could not abort a multipart upload; retried at the next start")
            }
        }
    }
}

impl Drop for PendingUpload {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (s3, key, id, journal) = (
            self.s3.clone(),
            self.key.clone(),
            std::mem::take(&mut self.id),
            std::mem::take(&mut self.journal),
        );
        rt.spawn(async move {
            if s3.abort_multipart(&key, &id).await.is_ok() {
                let _ = tokio::fs::remove_file(&journal).await;
            }
        });
    }
}

impl Inner {
    fn key(&self, digest: &Digest) -> Key {
        let hex = digest.hex();
        Key::from(format!("{}sha256/{}/{hex}", self.prefix, &hex[..2]))
    }

    fn unavailable(&self, op: &str, e: object_store::Error) -> StoreError {
        StoreError::Unavailable(format!("S3 {op} on {}: {e}", self.location))
    }

    /// Serializes commits and quarantines of `d` on this node.
    async fn commit_lock(&self, d: &Digest) -> CommitClaim {
        let lock = locked(&self.commits).entry(*d).or_default().clone();
        CommitClaim {
            digest: *d,
            locks: self.commits.clone(),
            guard: Some(lock.lock_owned().await),
        }
    }

    /// HeadObject: size and ETag, or None.
    async fn head(&self, d: &Digest) -> Result<Option<(u64, Option<String>)>, StoreError> {
        match self.s3.head(&self.key(d)).await {
            Ok(m) => Ok(Some((m.size, m.e_tag))),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.unavailable("HeadObject", e)),
        }
    }

    fn remember_verified(&self, d: Digest, etag: Option<String>) {
        let Some(etag) = etag else { return };
        let mut v = locked(&self.verified);
        if v.len() >= VERIFIED_MAX {
            v.clear();
        }
        v.insert(d, etag);
    }

    fn known_good(&self, d: &Digest, etag: Option<&String>) -> bool {
        etag.is_some() && locked(&self.verified).get(d) == etag
    }

    /// GetObject of the whole object, hashed as it streams (never held
    /// whole); its check and ETag.
    async fn hash_object(&self, d: &Digest) -> Result<(BlobCheck, Option<String>), StoreError> {
        let got = match self.s3.get(&self.key(d)).await {
            Ok(g) => g,
            Err(e) if is_not_found(&e) => return Ok((BlobCheck::Missing, None)),
            Err(e) => return Err(self.unavailable("GetObject", e)),
        };
        let etag = got.meta.e_tag.clone();
        let mut body = got.into_stream();
        let mut h = Sha256Hasher::new();
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| self.unavailable("GetObject", e))?;
            size += chunk.len() as u64;
            h.update(&chunk);
        }
        let actual = h.finish();
        if actual == *d {
            self.remember_verified(*d, etag.clone());
            Ok((BlobCheck::Intact { size }, etag))
        } else {
            Ok((BlobCheck::Corrupt { actual, size }, etag))
        }
    }

    /// What is stored under `d`'s key, re-hashed unless this node already
    /// verified that very object (same ETag).
    async fn found(&self, d: &Digest) -> Result<BlobCheck, StoreError> {
        match self.head(d).await? {
            None => Ok(BlobCheck::Missing),
            Some((size, etag)) if self.known_good(d, etag.as_ref()) => Ok(BlobCheck::Intact { size }),
            Some(_) => Ok(self.hash_object(d).await?.0),
        }
    }

    /// Writes the verified file `path` (`size` bytes) under `d`'s key: one
    /// PutObject up to a part, else a multipart upload (journalled, aborted
    /// on failure or drop).
    async fn upload_file(&self, d: &Digest, path: &FsPath, size: u64) -> Result<(), StoreError> {
        let e_tag = self.put_file_range(&self.key(d), path, 0..size).await?;
        self.remember_verified(*d, e_tag);
        Ok(())
    }

    /// Writes bytes `range` of the file at `path` as the object `key`: one
    /// PutObject up to a part, else a multipart upload (journalled, aborted
    /// on failure or drop). Returns the new object's ETag.
    async fn put_file_range(
        &self,
        key: &Key,
        path: &FsPath,
        range: Range<u64>,
    ) -> Result<Option<String>, StoreError> {
        let size = range.end.saturating_sub(range.start);
        if size <= self.part_size as u64 {
            let bytes = read_part(path, range).await?;
            let put = self
                .s3
                .put(key, PutPayload::from(bytes))
                .await
                .map_err(|e| self.unavailable("PutObject", e))?;
            return Ok(put.e_tag);
        }
        let id = self
            .s3
            .create_multipart(key)
            .await
            .map_err(|e| self.unavailable("CreateMultipartUpload", e))?;
        let journal = self.journal_dir.join(hex::encode(rand::random::<[u8; 16]>()));
        let pending = PendingUpload {
            s3: self.s3.clone(),
            key: key.clone(),
            id: id.clone(),
            journal: journal.clone(),
            armed: true,
        };
        if let Err(e) = tokio::fs::write(&journal, format!("{key}\n{id}\n")).await {
            pending.abort().await;
            return Err(e.into());
        }
        let base = range.start;
        let parts = part_ranges(size, self.part_size as u64);
        let uploaded: Result<Vec<PartId>, StoreError> = futures::stream::iter(parts.into_iter().enumerate())
            .map(|(i, part)| {
                let id = &id;
                async move {
                    let bytes = read_part(path, base + part.start..base + part.end).await?;
                    self.s3
                        .put_part(key, id, i, PutPayload::from(bytes))
                        .await
                        .map_err(|e| self.unavailable("UploadPart", e))
                }
            })
            .buffered(PARTS_IN_FLIGHT)
            .try_collect()
            .await;
        let parts = match uploaded {
            Ok(p) => p,
            Err(e) => {
                pending.abort().await;
                return Err(e);
            }
        };
        match self.s3.complete_multipart(key, &id, parts).await {
            Ok(put) => {
                pending.done().await;
                Ok(put.e_tag)
            }
            Err(e) => {
                pending.abort().await;
                Err(self.unavailable("CompleteMultipartUpload", e))
            }
        }
    }

    /// Asks about the bucket itself (ListObjectsV2 for at most one key under
    /// the prefix): a GET or HEAD of a key cannot tell a missing bucket
    /// from a missing key on every server (s3s-fs answers NoSuchKey), a
    /// list request can. [`StoreError::NoBucket`] when the bucket does not
    /// exist, [`StoreError::Unavailable`] when the request fails otherwise
    /// (server away, credentials refused, no `s3:ListBucket` permission).
    async fn check_bucket(&self) -> Result<(), StoreError> {
        let opts = PaginatedListOptions {
            max_keys: Some(1),
            ..Default::default()
        };
        let prefix = (!self.prefix.is_empty()).then_some(self.prefix.as_str());
        match self.s3.list_paginated(prefix, opts).await {
            Ok(_) => Ok(()),
            // object_store keeps S3's error code only in the message (its
            // request error type is not public).
            Err(e) if e.to_string().contains("NoSuchBucket") => {
                Err(StoreError::NoBucket(self.location.clone()))
            }
            Err(e) => Err(self.unavailable("ListObjectsV2", e)),
        }
    }

    /// Aborts the multipart uploads journalled by an earlier run: every
    /// journal when this store has the spool to itself; with a shared
    /// spool, loose journals (a one-process run's) and those of nodes that
    /// no longer hold their liveness lock, never a live node's.
    async fn sweep_multipart(&self) -> Result<(), StoreError> {
        let root = self.spool_root.join("multipart");
        let own = self.spool.node();
        let mut dir = tokio::fs::read_dir(&root).await?;
        while let Some(entry) = dir.next_entry().await? {
            if !entry.file_type().await?.is_dir() {
                self.abort_journalled(&entry.path()).await?;
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if own == Some(name.as_str()) {
                continue;
            }
            if own.is_some() && !self.spool.node_is_gone(&name).await? {
                continue; // a live node's uploads in flight
            }
            let mut journals = tokio::fs::read_dir(entry.path()).await?;
            while let Some(j) = journals.next_entry().await? {
                self.abort_journalled(&j.path()).await?;
            }
            match tokio::fs::remove_dir(entry.path()).await {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Aborts the multipart upload journalled in `path` and removes the
    /// journal.
    async fn abort_journalled(&self, path: &FsPath) -> Result<(), StoreError> {
        let text = tokio::fs::read_to_string(path).await.unwrap_or_default();
        let mut lines = text.lines();
        let (Some(key), Some(id)) = (lines.next(), lines.next()) else {
            let _ = tokio::fs::remove_file(path).await;
            return Ok(());
        };
        match self.s3.abort_multipart(&Key::from(key), &id.to_string()).await {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(self.unavailable("AbortMultipartUpload", e)),
        }
        tracing::info!(key, "aborted a multipart upload left by an earlier run");
        match tokio::fs::remove_file(path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The key of `d`'s marker under `markers` (a `damage/…/` prefix).
    fn marker(&self, markers: &str, d: &Digest) -> Key {
        Key::from(format!("{}{markers}{}", self.prefix, d.hex()))
    }

    /// The digests marked under `markers`, each with the time its marker
    /// holds (its LastModified if it holds none); markers in `known` are
    /// not read again (their time is taken from there).
    async fn list_markers(
        &self,
        markers: &str,
        known: &BTreeMap<Digest, i64>,
    ) -> Result<Vec<(Digest, i64)>, StoreError> {
        let prefix = Key::from(format!("{}{markers}", self.prefix));
        let metas: Vec<object_store::ObjectMeta> = self
            .s3
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| self.unavailable("ListObjectsV2", e))?;
        let found: Vec<Option<(Digest, i64)>> = futures::stream::iter(metas)
            .map(|m| async move {
                let Some(d) = m.location.filename().and_then(|f| Digest::from_hex(f).ok()) else {
                    return Ok(None);
                };
                if let Some(at) = known.get(&d) {
                    return Ok(Some((d, *at)));
                }
                let got = match self.s3.get(&m.location).await {
                    Ok(g) => g,
                    Err(e) if is_not_found(&e) => return Ok(None), // resolved meanwhile
                    Err(e) => return Err(self.unavailable("GetObject", e)),
                };
                let body = got.bytes().await.map_err(|e| self.unavailable("GetObject", e))?;
                let at = String::from_utf8_lossy(&body)
                    .trim()
                    .parse()
                    .unwrap_or_else(|_| m.last_modified.timestamp_millis());
                Ok(Some((d, at)))
            })
            .buffered(REQUESTS_IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(found.into_iter().flatten().collect())
    }

    /// Lists the damage markers again: the quarantines, and the blobs found
    /// missing less those stored again since (whose markers are deleted).
    async fn refresh_damage(&self) -> Result<(), StoreError> {
        let _one = self.records.lock().await;
        let known_q = locked(&self.quarantine).clone();
        let quarantined = self.list_markers(QUARANTINE_MARKERS, &known_q).await?;
        let known_m = locked(&self.missing).clone();
        let mut missing = BTreeMap::new();
        for (d, at) in self.list_markers(MISSING_MARKERS, &known_m).await? {
            if !known_m.contains_key(&d) && self.head(&d).await?.is_some() {
                self.delete_marker(MISSING_MARKERS, &d).await?;
                continue;
            }
            missing.insert(d, at);
        }
        *locked(&self.quarantine) = quarantined.into_iter().collect();
        *locked(&self.missing) = missing;
        Ok(())
    }

    /// Marks `d` under `markers`, found at `at` (ms); rewriting a marker
    /// is harmless.
    async fn put_marker(&self, markers: &str, d: &Digest, at: i64) -> Result<(), StoreError> {
        self.s3
            .put(&self.marker(markers, d), PutPayload::from(at.to_string()))
            .await
            .map_err(|e| self.unavailable("PutObject", e))?;
        Ok(())
    }

    /// Removes `d`'s marker under `markers`; none there is fine.
    async fn delete_marker(&self, markers: &str, d: &Digest) -> Result<(), StoreError> {
        match self.s3.delete(&self.marker(markers, d)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(self.unavailable("DeleteObject", e)),
        }
    }

    /// Turns a record object an earlier version rewrote whole into one
    /// marker per digest, then deletes it.
    async fn migrate_legacy_record(&self, name: &str, markers: &str) -> Result<(), StoreError> {
        let key = Key::from(format!("{}{name}", self.prefix));
        let got = match self.s3.get(&key).await {
            Ok(g) => g,
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) => return Err(self.unavailable("GetObject", e)),
        };
        let bytes = got.bytes().await.map_err(|e| self.unavailable("GetObject", e))?;
        for (d, at) in parse_record(&String::from_utf8_lossy(&bytes)) {
            self.put_marker(markers, &d, at).await?;
        }
        match self.s3.delete(&key).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(self.unavailable("DeleteObject", e)),
        }
    }

    /// Takes `d`'s object out of service: copied aside (best effort), then
    /// deleted from its key. With `etag`, only if the key still holds that
    /// object (a verified copy committed meanwhile stays).
    async fn quarantine_object(&self, d: &Digest, etag: Option<&str>) -> Result<(), StoreError> {
        let key = self.key(d);
        let _placing = self.commit_lock(d).await;
        match self.head(d).await? {
            None => return Ok(()),
            Some((_, now)) if etag.is_some() && now.as_deref() != etag => return Ok(()),
            Some(_) => {}
        }
        let at = crate::now_millis();
        let aside = Key::from(format!("{}corrupt/{}-{at}", self.prefix, d.hex()));
        if let Err(e) = self.s3.copy(&key, &aside).await {
            tracing::warn!(blob = %d, error = %e, "could not keep a copy of the corrupt blob aside");
        }
        self.s3
            .delete(&key)
            .await
            .map_err(|e| self.unavailable("DeleteObject", e))?;
        locked(&self.verified).remove(d);
        let _records = self.records.lock().await;
        self.put_marker(QUARANTINE_MARKERS, d, at).await?;
        locked(&self.quarantine).insert(*d, at);
        Ok(())
    }

    /// Ends `d`'s quarantine. `placed`: a verified copy was just written
    /// under its key, so a quarantine another node made is ended too (its
    /// marker deleted whether or not this node knew of it); otherwise only
    /// a quarantine this node knows of is ended.
    async fn resolve(&self, d: &Digest, placed: bool) -> Result<(), StoreError> {
        let known = locked(&self.quarantine).contains_key(d);
        if !known && !placed {
            return Ok(());
        }
        let _records = self.records.lock().await;
        self.delete_marker(QUARANTINE_MARKERS, d).await?;
        locked(&self.quarantine).remove(d);
        Ok(())
    }

    /// Stores `bytes` (already verified to be `d`) unless an intact copy is
    /// in place.
    async fn put_small(&self, d: Digest, bytes: Bytes) -> Result<BlobCheck, StoreError> {
        let _one = self.commit_lock(&d).await;
        let found = self.found(&d).await?;
        if let BlobCheck::Intact { .. } = found {
            return Ok(found);
        }
        if let BlobCheck::Corrupt { actual, size } = found {
            tracing::warn!(blob = %d, %actual, size, "stored blob was corrupt; replaced by a verified copy");
        }
        let put = self
            .s3
            .put(&self.key(&d), PutPayload::from(bytes))
            .await
            .map_err(|e| self.unavailable("PutObject", e))?;
        self.remember_verified(d, put.e_tag);
        Ok(found)
    }
}

/// State of a verifying whole-blob read.
struct Verifying {
    body: futures::stream::BoxStream<'static, object_store::Result<Bytes>>,
    hasher: Option<Sha256Hasher>,
    held: Option<Bytes>,
    digest: Digest,
    etag: Option<String>,
    inner: Arc<Inner>,
}

fn verifying_stream(st: Verifying) -> ByteStream {
    Box::pin(futures::stream::unfold(st, |mut st| async move {
        let hasher = st.hasher.as_mut()?;
        loop {
            match st.body.next().await {
                Some(Ok(chunk)) if chunk.is_empty() => {}
                Some(Ok(chunk)) => {
                    hasher.update(&chunk);
                    if let Some(prev) = st.held.replace(chunk) {
                        return Some((Ok(prev), st));
                    }
                }
                Some(Err(e)) => {
                    st.hasher = None;
                    let e = io::Error::other(format!("S3 GetObject on {}: {e}", st.inner.location));
                    return Some((Err(e), st));
                }
                None => {
                    let actual = st.hasher.take()?.finish();
                    if actual == st.digest {
                        st.inner.remember_verified(st.digest, st.etag.clone());
                        let held = st.held.take();
                        return held.map(move |b| (Ok(b), st));
                    }
                    tracing::error!(blob = %st.digest, %actual, "stored blob is corrupt (found while reading it); taken out of service");
                    let (inner, d, etag) = (st.inner.clone(), st.digest, st.etag.clone());
                    // Out of service before the reader hears of it (a retry
                    // must not get the object again); spawned, so that a
                    // reader dropping the stream meanwhile does not stop it.
                    let taken_out = tokio::spawn(async move {
                        if let Err(e) = inner.quarantine_object(&d, etag.as_deref()).await {
                            tracing::error!(blob = %d, error = %e, "could not take the corrupt blob out of service");
                        }
                    });
                    let _ = taken_out.await;
                    let e = corrupt_read(&st.digest, &actual);
                    return Some((Err(e), st));
                }
            }
        }
    }))
}

#[async_trait]
impl BlobStore for S3BlobStore {
    async fn stage(
        &self,
        body: ByteStream,
        limit: u64,
        expected: Option<Digest>,
    ) -> Result<StagedBlob, StoreError> {
        self.inner.spool.stage(body, limit, expected).await
    }

    /// Uploads the staged (verified) file to its content key unless an
    /// intact copy is there; the staged file is removed either way.
    async fn commit(&self, staged: StagedBlob) -> Result<BlobCheck, StoreError> {
        let inner = &self.inner;
        let d = staged.digest();
        let _one = inner.commit_lock(&d).await;
        let found = inner.found(&d).await?;
        match found {
            BlobCheck::Intact { .. } => return Ok(found),
            BlobCheck::Corrupt { actual, size } => tracing::warn!(
                blob = %d, %actual, size,
                "stored blob was corrupt; replaced by a verified copy"
            ),
            BlobCheck::Missing => {}
        }
        inner.upload_file(&d, staged.path(), staged.size()).await?;
        drop(staged);
        inner.resolve(&d, true).await?;
        Ok(found)
    }

    async fn check(&self, digest: &Digest) -> Result<BlobCheck, StoreError> {
        Ok(self.inner.hash_object(digest).await?.0)
    }

    async fn size(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        Ok(self.inner.head(digest).await?.map(|(s, _)| s))
    }

    async fn sizes(&self, digests: &[Digest]) -> Result<Vec<Option<u64>>, StoreError> {
        let inner = &self.inner;
        futures::stream::iter(digests.to_vec())
            .map(|d| async move { Ok(inner.head(&d).await?.map(|(s, _)| s)) })
            .buffered(REQUESTS_IN_FLIGHT)
            .try_collect()
            .await
    }

    async fn get(&self, digest: &Digest, range: Option<Range<u64>>) -> Result<BlobBody, StoreError> {
        let inner = &self.inner;
        let d = *digest;
        let Some((total_size, etag)) = inner.head(&d).await? else {
            return Err(StoreError::BlobMissing(d));
        };
        let (start, end) = match &range {
            None => (0, total_size),
            Some(r) => (r.start.min(total_size), r.end.min(total_size)),
        };
        let whole = start == 0 && end == total_size;
        if !whole && !inner.known_good(&d, etag.as_ref()) {
            // A part is served only from an object verified whole.
            match inner.hash_object(&d).await? {
                (BlobCheck::Intact { .. }, _) => {}
                (BlobCheck::Missing, _) => return Err(StoreError::BlobMissing(d)),
                (BlobCheck::Corrupt { actual, .. }, etag) => {
                    tracing::error!(blob = %d, %actual, "stored blob is corrupt (found before serving a part of it); taken out of service");
                    inner.quarantine_object(&d, etag.as_deref()).await?;
                    return Err(StoreError::BlobMissing(d));
                }
            }
        }
        if start >= end {
            let actual = Sha256Hasher::new().finish();
            if whole && actual != d {
                inner.quarantine_object(&d, etag.as_deref()).await?;
                let e = corrupt_read(&d, &actual);
                return Ok(BlobBody {
                    total_size,
                    stream: Box::pin(futures::stream::once(async move { Err(e) })),
                });
            }
            return Ok(BlobBody {
                total_size,
                stream: Box::pin(futures::stream::empty()),
            });
        }
        let opts = GetOptions {
            range: (!whole).then_some(GetRange::Bounded(start..end)),
            ..Default::default()
        };
        let got = match inner.s3.get_opts(&inner.key(&d), opts).await {
            Ok(g) => g,
            Err(e) if is_not_found(&e) => return Err(StoreError::BlobMissing(d)),
            Err(e) => return Err(inner.unavailable("GetObject", e)),
        };
        let etag = got.meta.e_tag.clone();
        let body = got.into_stream();
        if !whole {
            let location = inner.location.clone();
            let stream = body
                .map(move |c| c.map_err(|e| io::Error::other(format!("S3 GetObject on {location}: {e}"))));
            return Ok(BlobBody {
                total_size,
                stream: Box::pin(stream),
            });
        }
        let stream = verifying_stream(Verifying {
            body,
            hasher: Some(Sha256Hasher::new()),
            held: None,
            digest: d,
            etag,
            inner: self.inner.clone(),
        });
        Ok(BlobBody { total_size, stream })
    }

    async fn delete(&self, digest: &Digest) -> Result<(), StoreError> {
        let inner = &self.inner;
        match inner.s3.delete(&inner.key(digest)).await {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(inner.unavailable("DeleteObject", e)),
        }
        locked(&inner.verified).remove(digest);
        inner.resolve(digest, true).await
    }

    async fn quarantine(&self, digest: &Digest) -> Result<(), StoreError> {
        self.inner.quarantine_object(digest, None).await
    }

    fn quarantined(&self) -> Vec<(Digest, i64)> {
        locked(&self.inner.quarantine)
            .iter()
            .map(|(d, at)| (*d, *at))
            .collect()
    }

    fn is_quarantined(&self, digest: &Digest) -> bool {
        locked(&self.inner.quarantine).contains_key(digest)
    }

    async fn release_quarantine(&self, digest: &Digest) -> Result<(), StoreError> {
        self.inner.resolve(digest, true).await
    }

    fn missing_on_record(&self) -> Vec<(Digest, i64)> {
        locked(&self.inner.missing)
            .iter()
            .map(|(d, at)| (*d, *at))
            .collect()
    }

    /// Puts `digest`'s missing marker (its own object: no other node's
    /// marker is touched).
    async fn mark_missing(&self, digest: &Digest, at: i64) -> Result<(), StoreError> {
        let inner = &self.inner;
        let _one = inner.records.lock().await;
        inner.put_marker(MISSING_MARKERS, digest, at).await?;
        locked(&inner.missing).insert(*digest, at);
        Ok(())
    }

    /// Deletes `digest`'s missing marker, whichever node put it.
    async fn unmark_missing(&self, digest: &Digest) -> Result<(), StoreError> {
        let inner = &self.inner;
        let _one = inner.records.lock().await;
        inner.delete_marker(MISSING_MARKERS, digest).await?;
        locked(&inner.missing).remove(digest);
        Ok(())
    }

    async fn refresh_damage(&self) -> Result<(), StoreError> {
        self.inner.refresh_damage().await
    }

    async fn begin_transfer(&self, digest: &Digest) -> Result<Transfer, StoreError> {
        self.inner.spool.begin_transfer(digest).await
    }

    async fn sweep_partials(&self, idle: std::time::Duration) -> Result<u64, StoreError> {
        self.inner.spool.sweep_partials(idle).await
    }

    async fn partial_sizes(&self, digests: &[Digest]) -> Result<Vec<u64>, StoreError> {
        self.inner.spool.partial_sizes(digests).await
    }

    async fn begin_transfers(&self, digests: &[Digest]) -> Result<Vec<Transfer>, StoreError> {
        self.inner.spool.begin_transfers(digests).await
    }

    async fn continue_transfer(
        &self,
        transfer: Transfer,
        body: ByteStream,
        limit: u64,
    ) -> Result<StagedBlob, StoreError> {
        self.inner.spool.continue_transfer(transfer, body, limit).await
    }

    async fn discard_transfer(&self, transfer: Transfer) -> Result<(), StoreError> {
        self.inner.spool.discard_transfer(transfer).await
    }

    /// A completed PutObject or CompleteMultipartUpload is durable.
    async fn sync(&self, _digests: &[Digest]) -> Result<(), StoreError> {
        Ok(())
    }

    async fn put_many(
        &self,
        blobs: Vec<(Digest, Bytes)>,
    ) -> Result<Vec<Result<BlobCheck, StoreError>>, StoreError> {
        let inner = &self.inner;
        let outcomes: Vec<Result<Result<BlobCheck, StoreError>, StoreError>> = futures::stream::iter(blobs)
            .map(|(d, bytes)| async move {
                let actual = Digest::of(&bytes);
                if actual != d {
                    return Ok(Err(StoreError::DigestMismatch { expected: d, actual }));
                }
                let found = inner.put_small(d, bytes).await?;
                let placed = !matches!(found, BlobCheck::Intact { .. });
                inner.resolve(&d, placed).await?;
                Ok(Ok(found))
            })
            .buffered(REQUESTS_IN_FLIGHT)
            .collect()
            .await;
        outcomes.into_iter().collect()
    }

    async fn upload_begin(&self) -> Result<String, StoreError> {
        self.inner.spool.upload_begin().await
    }

    /// One process, or several whose sessions go through the bucket
    /// (`s3/sessions.rs`): either way every node reaches every session.
    fn upload_sessions_everywhere(&self) -> bool {
        true
    }

    async fn stale_upload_files(&self, before: std::time::SystemTime) -> Result<Vec<String>, StoreError> {
        let mut ids = self.inner.spool.stale_upload_files(before).await?;
        if self.inner.sessions_in_bucket() {
            for id in self.inner.stale_sessions(before).await? {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        Ok(ids)
    }

    /// On a store shared by nodes, a session this node does not hold at
    /// `size` is fetched from its chunks in the bucket first.
    async fn upload_resume(&self, id: &str, size: u64) -> Result<(), StoreError> {
        let here = self.inner.spool.upload_held(id)?.map(|(len, _)| len);
        if !self.inner.sessions_in_bucket() || here == Some(size) {
            return self.inner.spool.upload_resume(id, size).await;
        }
        self.inner.fetch_session(id, size).await
    }

    async fn upload_len(&self, id: &str) -> Result<Option<u64>, StoreError> {
        self.inner.spool.upload_len(id).await
    }

    /// On a store shared by nodes, the appended bytes are also put in the
    /// bucket before this returns (the session's new length is recorded
    /// only after).
    async fn upload_append(&self, id: &str, body: ByteStream, limit: u64) -> Result<u64, StoreError> {
        let before = self.inner.spool.upload_held(id)?.map(|(len, _)| len);
        let after = self.inner.spool.upload_append(id, body, limit).await?;
        if self.inner.sessions_in_bucket()
            && let Some(before) = before
            && after > before
        {
            self.inner.put_session_chunk(id, before..after).await?;
        }
        Ok(after)
    }

    async fn upload_finish(&self, id: &str, expected: Option<&Digest>) -> Result<StagedBlob, StoreError> {
        let staged = self.inner.spool.upload_finish(id, expected).await;
        if self.inner.sessions_in_bucket() && !matches!(staged, Err(StoreError::Conflict(_))) {
            // The session has ended; chunks left behind are found by the
            // sweep (`stale_upload_files`).
            if let Err(e) = self.inner.delete_session(id).await {
                tracing::warn!(upload = %id, "could not delete an upload session's chunks: {e}");
            }
        }
        staged
    }

    async fn upload_abort(&self, id: &str) -> Result<(), StoreError> {
        self.inner.spool.upload_abort(id).await?;
        if self.inner.sessions_in_bucket() {
            self.inner.delete_session(id).await?;
        }
        Ok(())
    }

    /// ListObjectsV2 of one key under the prefix: the bucket answered.
    async fn ready(&self) -> Result<(), StoreError> {
        self.inner.check_bucket().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_the_file_and_respect_the_part_limit() {
        let p = part_ranges(20 << 20, 8 << 20);
        assert_eq!(p, vec![0..8 << 20, 8 << 20..16 << 20, 16 << 20..20 << 20]);
        let huge = 200u64 << 30;
        let p = part_ranges(huge, 8 << 20);
        assert!(p.len() as u64 <= MAX_PARTS);
        assert_eq!(p.last().map(|r| r.end), Some(huge));
    }

    #[test]
    fn records_round_trip() {
        let list = vec![(Digest::of(b"a"), 5), (Digest::of(b"b"), 7)];
        assert_eq!(
            parse_record(&String::from_utf8_lossy(&render_record(&list))),
            list
        );
    }
}
