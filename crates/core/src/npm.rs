//! npm feeds: publish, metadata updates (deprecate, unpublish a version),
//! whole-package unpublish, dist-tags, packuments and tarballs.
//!
//! Item layout (see [`ferry_formats::npm`]): `pkg/{name}/{version}` with
//! `{"manifest": …}` and the tarball as its one blob; `tag/{name}/{tag}`
//! with `{"version": …}`. The packument is never stored: it is rendered from
//! the items on whichever instance serves it, and cached until the feed
//! changes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;

use bytes::{Buf as _, Bytes};
use ferry_formats::npm::{self as format, NpmItemKey, PendingPublish, Publish, PutRequest, StoredVersion};
use ferry_store::{ByteStream, FeedRecord, Precondition, StagedBlob, StoreError};
use ferry_types::{Digest, ItemKey};
use futures::StreamExt as _;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::{CoreError, Ferry, LocalWrite};

/// Most npm publish bodies parsed at once (each holds a blocking thread
/// while its body comes; tokio's blocking pool has 512).
const MAX_PUBLISH_PARSES: usize = 64;
static PUBLISH_PARSES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_PUBLISH_PARSES);

/// The message of every "no such package" answer (`{"error":"not found"}`).
pub const NOT_FOUND: &str = "not found";

fn not_found() -> CoreError {
    CoreError::not_found(NOT_FOUND)
}

/// A rendered packument, as cached: every form shares one render.
#[derive(Debug, Clone)]
pub struct Packument {
    /// The full document (`application/json`).
    pub full: Bytes,
    /// The abbreviated document ([`format::ABBREVIATED_MEDIA_TYPE`]).
    pub abbreviated: Bytes,
    /// The effective dist-tags, a JSON object.
    pub dist_tags: Bytes,
    /// The revision (`_rev`), usable as an ETag.
    pub rev: String,
}

/// What a `PUT /{name}` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    /// A new version was published, with these dist-tags pointing at it.
    Published {
        version: String,
        dist_tags: BTreeMap<String, String>,
    },
    /// A metadata update was applied (possibly changing nothing).
    Updated {
        deprecated: Vec<String>,
        undeprecated: Vec<String>,
        removed: Vec<String>,
    },
}

/// A package as stored.
#[derive(Default)]
struct Package {
    versions: Vec<StoredVersion>,
    /// The blobs of each version item (the tarball).
    blobs: HashMap<String, Vec<Digest>>,
    /// The stored dist-tag items: tag → version.
    tags: BTreeMap<String, String>,
    /// Every item key of the package, versions and tags.
    keys: Vec<ItemKey>,
    /// Time of the package's latest change (the newest item stamp), in ms.
    modified: Option<i64>,
}

impl Package {
    fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The current revision, as rendered into `_rev`.
    fn rev(&self, name: &str) -> String {
        format::render_packument(name, &self.versions, &self.tags, "", self.modified).rev
    }
}

fn stamp_millis(stamp: &ferry_types::Stamp) -> i64 {
    i64::try_from(stamp.time.millis()).unwrap_or(i64::MAX)
}

fn join_error(e: tokio::task::JoinError) -> CoreError {
    CoreError::Internal(format!("npm worker task failed: {e}"))
}

/// Reads every item of package `name`.
async fn load(ferry: &Ferry, feed: &FeedRecord, name: &str) -> Result<Package, CoreError> {
    let mut pkg = Package::default();
    let touch = |pkg: &mut Package, millis: i64| {
        pkg.modified = Some(pkg.modified.map_or(millis, |m| m.max(millis)));
    };
    for mut item in ferry.items(feed, &format::version_key_prefix(name)).await? {
        let version = match format::parse_item_key(&item.key) {
            Ok(NpmItemKey::Version { name: n, version }) if n == name => version,
            _ => continue,
        };
        let millis = stamp_millis(&item.stamp);
        touch(&mut pkg, millis);
        pkg.keys.push(item.key.clone());
        let manifest = match item.meta.get_mut("manifest").map(Value::take) {
            Some(m @ Value::Object(_)) => m,
            _ => {
                tracing::warn!(key = %item.key, feed = %feed.name, "npm version item without a manifest; skipped");
                continue;
            }
        };
        pkg.blobs.insert(version.clone(), std::mem::take(&mut item.blobs));
        pkg.versions.push(StoredVersion {
            version,
            manifest,
            published_millis: item.created_at,
        });
    }
    for item in ferry.items(feed, &format::tag_key_prefix(name)).await? {
        let tag = match format::parse_item_key(&item.key) {
            Ok(NpmItemKey::Tag { name: n, tag }) if n == name => tag,
            _ => continue,
        };
        touch(&mut pkg, stamp_millis(&item.stamp));
        pkg.keys.push(item.key.clone());
        match item.meta.get("version").and_then(Value::as_str) {
            Some(v) => {
                pkg.tags.insert(tag, v.to_owned());
            }
            None => {
                tracing::warn!(key = %item.key, feed = %feed.name, "npm dist-tag item without a version; skipped")
            }
        }
    }
    Ok(pkg)
}

/// Item metadata built by the format module, as the store keeps it.
fn meta_value(bytes: &[u8]) -> Result<Value, CoreError> {
    serde_json::from_slice(bytes).map_err(|e| CoreError::Internal(format!("npm item metadata: {e}")))
}

// ---------------------------------------------------------------------------
// Packuments

/// The packument of `name`, with tarball URLs under `tarball_base` (the
/// registry root the client used, e.g. `http://host:8765/npm/feed`).
/// Rendered once per feed change and base, then served from memory.
/// NotFound (`"not found"`) when the package has no version.
pub async fn packument(
    ferry: &Ferry,
    feed: &FeedRecord,
    name: &str,
    tarball_base: &str,
) -> Result<Packument, CoreError> {
    format::validate_existing_package_name(name)?;
    // Everything the bytes depend on: the package, and the base of its
    // tarball URLs (the host the client reached). Both forms (full and
    // abbreviated) and the dist-tags are rendered together and kept in one
    // entry.
    // (One allocation of the exact length; `format!` guesses and grows.)
    let key = ["npm\u{1f}packument\u{1f}", name, "\u{1f}", tarball_base].concat();
    let cached = ferry
        .cached_index(feed, &key, || async {
            let pkg = load(ferry, feed, name).await?;
            if pkg.versions.is_empty() {
                return Ok(Bytes::new());
            }
            let (name, base) = (name.to_owned(), tarball_base.to_owned());
            let rendered = tokio::task::spawn_blocking(move || {
                format::render_packument(&name, &pkg.versions, &pkg.tags, &base, pkg.modified)
            })
            .await
            .map_err(join_error)?;
            Ok(encode(&rendered))
        })
        .await?;
    if cached.is_empty() {
        return Err(not_found());
    }
    decode(&cached)
}

/// One cache entry: four length-prefixed parts (full, abbreviated,
/// dist-tags, rev).
fn encode(p: &format::Packument) -> Bytes {
    let parts: [&[u8]; 4] = [&p.full, &p.abbreviated, &p.dist_tags, p.rev.as_bytes()];
    let mut out = Vec::with_capacity(parts.iter().map(|x| x.len() + 8).sum());
    for part in parts {
        out.extend_from_slice(&(part.len() as u64).to_le_bytes());
        out.extend_from_slice(part);
    }
    Bytes::from(out)
}

fn decode(entry: &Bytes) -> Result<Packument, CoreError> {
    let corrupt = || CoreError::Internal("corrupt cached packument".into());
    let mut at = 0usize;
    let mut next = || -> Result<Bytes, CoreError> {
        let len_bytes: [u8; 8] = entry
            .get(at..at + 8)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(corrupt)?;
        let len = usize::try_from(u64::from_le_bytes(len_bytes)).map_err(|_| corrupt())?;
        let start = at + 8;
        let end = start
            .checked_add(len)
            .filter(|e| *e <= entry.len())
            .ok_or_else(corrupt)?;
        at = end;
        Ok(entry.slice(start..end))
    };
    let full = next()?;
    let abbreviated = next()?;
    let dist_tags = next()?;
    let rev = String::from_utf8(next()?.to_vec()).map_err(|_| corrupt())?;
    Ok(Packument {
        full,
        abbreviated,
        dist_tags,
        rev,
    })
}

// ---------------------------------------------------------------------------
// PUT /{name}: publish or metadata update

/// Headroom over the base64 of the largest tarball for the rest of a
/// publish body (manifest, readme), in [`put_body_limit`].
const PUBLISH_SLACK: u64 = 1 << 20;

/// Most bytes of JSON a `PUT /{name}` body may carry besides the tarball's
/// base64: this part (manifest, readme, a packument sent back by `npm
/// deprecate`) is read into memory (413 beyond).
pub const MAX_PUT_METADATA_BYTES: u64 = 16 << 20;

/// Most JSON values (strings, numbers, arrays, objects, …) of that JSON a
/// `PUT /{name}` body may have parsed into memory (413 beyond), some 100
/// bytes each besides their text. Members nothing uses (`time`,
/// `maintainers`, …) are dropped as they are read, and the manifests of an
/// update (a packument sent back by `npm deprecate`) are kept as text and
/// read only for their `deprecated`; the one manifest of a publish counts.
pub const MAX_PUT_METADATA_VALUES: u64 = 100_000;

/// Body chunks queued between the connection and the body parser, and
/// decoded tarball chunks (up to 192 KiB each) between the parser and the
/// blob store: what a publish holds in memory besides its metadata.
const QUEUE: usize = 4;

/// The largest `PUT /{name}` body: the base64 of a tarball of
/// `max_upload_bytes` and some headroom for the rest (413 beyond).
pub fn put_body_limit(ferry: &Ferry) -> u64 {
    ferry.config().max_upload_bytes.saturating_mul(4) / 3 + PUBLISH_SLACK
}

/// Handles the body of `PUT /{name}` or `PUT /{name}/-rev/{rev}` (`url_rev`):
/// a publish when it carries a tarball, else a metadata update (deprecate,
/// unpublish one version).
///
/// The body is read as it arrives, on a blocking thread: its JSON is kept
/// (up to [`MAX_PUT_METADATA_BYTES`]), the tarball's base64 is decoded and
/// hashed on the way into the blob store's staging area, so a publish holds
/// a few chunks in memory however large its tarball. Past
/// [`put_body_limit`] bytes the body is refused (413). Once it has ended,
/// the body is checked, then the staged tarball is inspected from its file
/// (off the async threads). Nothing is written unless everything is valid:
/// a refused publish drops what it staged. Each request is one transaction.
pub async fn put_package(
    ferry: &Ferry,
    feed: &FeedRecord,
    name: &str,
    body: ByteStream,
    url_rev: Option<&str>,
    publisher: Option<&str>,
) -> Result<PutOutcome, CoreError> {
    format::validate_existing_package_name(name)?;
    let pkg = load(ferry, feed, name).await?;
    let limits = format::BodyLimits {
        max_metadata_bytes: MAX_PUT_METADATA_BYTES,
        max_metadata_values: MAX_PUT_METADATA_VALUES,
        max_tarball_bytes: ferry.config().max_upload_bytes,
    };
    let (body_tx, body_rx) = mpsc::channel::<io::Result<Bytes>>(QUEUE);
    let (blob_tx, blob_rx) = mpsc::channel::<Bytes>(QUEUE);
    let owned_name = name.to_owned();
    // The parser holds a blocking thread for as long as the body takes to
    // come: publishes being parsed at once are capped, so slow ones (a far
    // client, a hostile one) cannot take the runtime's blocking pool, which
    // every file and database access needs. The others wait here, holding
    // no thread.
    let permit = PUBLISH_PARSES
        .acquire()
        .await
        .map_err(|_| CoreError::Internal("the publish parser cap was closed".into()))?;
    let parse = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let reader = ChannelReader {
            rx: body_rx,
            chunk: Bytes::new(),
        };
        let read = format::read_put_body(reader, &limits, &mut |chunk: &[u8]| {
            blob_tx
                .blocking_send(Bytes::copy_from_slice(chunk))
                .map_err(|_| io::Error::other("the tarball's staging stopped"))
        });
        drop(blob_tx); // ends the staged stream
        let put = read.and_then(|b| {
            b.into_request(&owned_name, &pkg.versions)
                .map_err(format::BodyError::Format)
        });
        (put, pkg)
    });
    let (pumped, staged, parsed) = tokio::join!(
        pump(body, body_tx, put_body_limit(ferry)),
        stage_if_sent(ferry, blob_rx),
        parse
    );
    let (put, pkg) = parsed.map_err(join_error)?;
    let put = match put {
        Ok(put) => put,
        Err(format::BodyError::Format(e)) => return Err(e.into()),
        Err(format::BodyError::Io(e)) => {
            // The body broke off or was too long (the pump says which), or
            // the tarball could not be staged (staging says why).
            pumped?;
            staged?;
            return Err(CoreError::Internal(format!("reading an npm PUT body: {e}")));
        }
    };
    pumped?;
    let staged = staged?;
    match put {
        PutRequest::Publish(p) => {
            let staged = staged
                .filter(|s| s.size() == p.size())
                .ok_or_else(|| CoreError::Internal("the staged tarball is not the one streamed".into()))?;
            publish(ferry, feed, &pkg, *p, staged, publisher).await
        }
        PutRequest::Update(u) => {
            drop(staged);
            update(ferry, feed, name, pkg, u, url_rev).await
        }
    }
}

/// Moves the request body to the parser, refusing it past `limit` bytes.
/// The parser learns of a failure as an error of its reader; the error
/// returned says what it was. Stops quietly when the parser stops reading
/// (it has its own reason).
async fn pump(
    mut body: ByteStream,
    tx: mpsc::Sender<io::Result<Bytes>>,
    limit: u64,
) -> Result<(), CoreError> {
    let mut total = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                let _ = tx.send(Err(io::Error::other("the request body broke off"))).await;
                // A client's broken body, or a fault, as when staging.
                return Err(StoreError::Io(e).into());
            }
        };
        total = total.saturating_add(chunk.len() as u64);
        if total > limit {
            let _ = tx
                .send(Err(io::Error::other("the request body is too large")))
                .await;
            return Err(CoreError::TooLarge(format!(
                "the request body exceeds the limit of {limit} bytes"
            )));
        }
        if tx.send(Ok(chunk)).await.is_err() {
            break;
        }
    }
    Ok(())
}

/// Stages what the parser decodes, if it decodes anything (a metadata
/// update stages nothing).
async fn stage_if_sent(
    ferry: &Ferry,
    mut rx: mpsc::Receiver<Bytes>,
) -> Result<Option<StagedBlob>, CoreError> {
    let Some(first) = rx.recv().await else {
        return Ok(None);
    };
    let rest = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (Ok(c), rx)) });
    let body: ByteStream = Box::pin(futures::stream::once(async move { Ok(first) }).chain(rest));
    ferry.stage(body, None).await.map(Some)
}

/// The request body as the blocking parser reads it: chunks from the pump.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    chunk: Bytes,
}

impl io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let avail = io::BufRead::fill_buf(self)?;
        let n = avail.len().min(buf.len());
        buf[..n].copy_from_slice(&avail[..n]);
        io::BufRead::consume(self, n);
        Ok(n)
    }
}

impl io::BufRead for ChannelReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.chunk = chunk,
                Some(Err(e)) => return Err(e),
                None => break, // the end of the body
            }
        }
        Ok(&self.chunk)
    }

    fn consume(&mut self, n: usize) {
        self.chunk.advance(n.min(self.chunk.len()));
    }
}

fn republish_refused(version: &str) -> CoreError {
    CoreError::Forbidden(format!(
        "cannot publish over the previously published versions: {version}"
    ))
}

/// Publishes a version whose body checked out and whose tarball is
/// `staged`: refuses a version that exists, inspects the tarball from the
/// staged file, then commits it and writes the version and its dist-tags.
async fn publish(
    ferry: &Ferry,
    feed: &FeedRecord,
    pkg: &Package,
    p: PendingPublish,
    staged: StagedBlob,
    publisher: Option<&str>,
) -> Result<PutOutcome, CoreError> {
    if pkg.versions.iter().any(|v| v.version == p.version()) {
        return Err(republish_refused(p.version()));
    }
    let path = staged.path().to_path_buf();
    let limits = ferry.config().archive;
    let p = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path)
            .map_err(|e| CoreError::Internal(format!("opening staged tarball {}: {e}", path.display())))?;
        p.finish(file, &limits).map_err(CoreError::from)
    })
    .await
    .map_err(join_error)??;
    let mut meta = meta_value(&p.item_metadata())?;
    // Who published it, as the registry knows them (the API key's name);
    // whatever `_npmUser` the client sent was dropped with the other `_`
    // fields. npm shows it as the publisher (`npm search`, `npm view`).
    if let Some(user) = publisher
        && let Some(m) = meta.get_mut("manifest").and_then(Value::as_object_mut)
    {
        m.insert("_npmUser".into(), serde_json::json!({ "name": user }));
    }
    let Publish {
        name,
        version,
        key,
        dist_tags,
        ..
    } = p;
    let digest = ferry.commit_blob(staged).await?;
    let mut writes = Vec::with_capacity(1 + dist_tags.len());
    writes.push(LocalWrite::upsert(key, meta, vec![digest], Precondition::Absent));
    let tag_meta = meta_value(&format::tag_item_metadata(&version))?;
    for tag in dist_tags.keys() {
        writes.push(LocalWrite::upsert(
            format::tag_key(&name, tag)?,
            tag_meta.clone(),
            Vec::new(),
            Precondition::Any,
        ));
    }
    match ferry.write(feed, writes).await {
        Ok(_) => Ok(PutOutcome::Published { version, dist_tags }),
        // Published concurrently by someone else.
        Err(CoreError::Conflict(_)) => Err(republish_refused(&version)),
        Err(e) => Err(e),
    }
}

async fn update(
    ferry: &Ferry,
    feed: &FeedRecord,
    name: &str,
    pkg: Package,
    u: format::MetadataUpdate,
    url_rev: Option<&str>,
) -> Result<PutOutcome, CoreError> {
    if pkg.is_empty() {
        return Err(not_found());
    }
    let claimed: Vec<&str> = [url_rev, u.rev.as_deref()].into_iter().flatten().collect();
    if claimed.is_empty() && !u.removed.is_empty() {
        return Err(CoreError::invalid(format!(
            "removing versions of {name} needs the revision that was edited (\"_rev\" or -rev/REV in the URL)"
        )));
    }
    let pkg = check_rev(name, pkg, &claimed).await?;
    apply_update(ferry, feed, name, pkg, u).await
}

/// Refuses (409) when any `claimed` revision is not the package's current
/// one: the client edited a stale copy. The revision is rendered off the
/// async threads; the package is handed back.
async fn check_rev(name: &str, pkg: Package, claimed: &[&str]) -> Result<Package, CoreError> {
    if claimed.is_empty() {
        return Ok(pkg);
    }
    let owned_name = name.to_owned();
    let (current, pkg) = tokio::task::spawn_blocking(move || (pkg.rev(&owned_name), pkg))
        .await
        .map_err(join_error)?;
    match claimed.iter().find(|r| **r != current) {
        Some(stale) => Err(stale_rev(name, stale, &current)),
        None => Ok(pkg),
    }
}

fn stale_rev(name: &str, claimed: &str, current: &str) -> CoreError {
    CoreError::conflict(format!(
        "{name} changed since revision {claimed} was read (now {current}); fetch it again and retry"
    ))
}

async fn apply_update(
    ferry: &Ferry,
    feed: &FeedRecord,
    name: &str,
    pkg: Package,
    u: format::MetadataUpdate,
) -> Result<PutOutcome, CoreError> {
    let mut writes = Vec::new();
    let (mut deprecated, mut undeprecated) = (Vec::new(), Vec::new());
    for (version, message) in &u.deprecations {
        let stored = pkg
            .versions
            .iter()
            .find(|v| &v.version == version)
            .ok_or_else(|| CoreError::not_found(format!("{name}@{version} not found")))?;
        let mut manifest = stored.manifest.clone();
        format::set_deprecated(&mut manifest, message.as_deref());
        let meta = meta_value(&format::version_item_metadata(&manifest))?;
        let blobs = pkg.blobs.get(version).cloned().unwrap_or_default();
        writes.push(LocalWrite::upsert(
            format::version_key(name, version)?,
            meta,
            blobs,
            Precondition::Present,
        ));
        match message {
            Some(_) => deprecated.push(version.clone()),
            None => undeprecated.push(version.clone()),
        }
    }
    let removed: HashSet<&str> = u.removed.iter().map(String::as_str).collect();
    for version in &u.removed {
        writes.push(LocalWrite::delete(
            format::version_key(name, version)?,
            Precondition::Present,
        ));
    }
    for (tag, version) in &pkg.tags {
        if removed.contains(version.as_str()) {
            writes.push(LocalWrite::delete(
                format::tag_key(name, tag)?,
                Precondition::Present,
            ));
        }
    }
    if !writes.is_empty() {
        ferry.write(feed, writes).await?;
    }
    Ok(PutOutcome::Updated {
        deprecated,
        undeprecated,
        removed: u.removed,
    })
}

// ---------------------------------------------------------------------------
// DELETE /{name}/-rev/{rev}: unpublish everything

/// Deletes every version and dist-tag of `name` in one transaction; with
/// `rev`, only if the package is still at that revision (else Conflict).
/// Returns the versions removed.
pub async fn delete_package(
    ferry: &Ferry,
    feed: &FeedRecord,
    name: &str,
    rev: Option<&str>,
) -> Result<Vec<String>, CoreError> {
    format::validate_existing_package_name(name)?;
    let pkg = load(ferry, feed, name).await?;
    if pkg.is_empty() {
        return Err(not_found());
    }
    let pkg = check_rev(name, pkg, rev.as_slice()).await?;
    let writes = pkg
        .keys
        .iter()
        .map(|k| LocalWrite::delete(k.clone(), Precondition::Present))
        .collect();
    ferry.write(feed, writes).await?;
    Ok(pkg.versions.into_iter().map(|v| v.version).collect())
}

// ---------------------------------------------------------------------------
// Dist-tags

/// The version a stored dist-tag points at (NotFound if there is none).
pub async fn dist_tag(ferry: &Ferry, feed: &FeedRecord, name: &str, tag: &str) -> Result<String, CoreError> {
    let key = format::tag_key(name, tag)?;
    let item = ferry
        .item(feed, &key)
        .await?
        .ok_or_else(|| tag_not_found(name, tag))?;
    item.meta
        .get("version")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| CoreError::Internal(format!("dist-tag item {key} has no version")))
}

fn tag_not_found(name: &str, tag: &str) -> CoreError {
    CoreError::not_found(format!("{tag} is not a dist-tag of {name}"))
}

/// `npm dist-tag add NAME@VERSION TAG`: points `tag` at an existing version.
/// `body` is the request body, a JSON string holding the version.
pub async fn set_dist_tag(
    ferry: &Ferry,
    feed: &FeedRecord,
    name: &str,
    tag: &str,
    body: &[u8],
) -> Result<String, CoreError> {
    let key = format::tag_key(name, tag)?;
    let version = format::parse_dist_tag_body(body)?;
    let version_key = format::version_key(name, &version)?;
    if ferry.item(feed, &version_key).await?.is_none() {
        return Err(CoreError::not_found(format!("{name}@{version} not found")));
    }
    let meta = meta_value(&format::tag_item_metadata(&version))?;
    ferry
        .write(
            feed,
            vec![LocalWrite::upsert(key, meta, Vec::new(), Precondition::Any)],
        )
        .await?;
    Ok(version)
}

/// `npm dist-tag rm NAME TAG`. `latest` cannot be removed (npm's rule).
pub async fn delete_dist_tag(
    ferry: &Ferry,
    feed: &FeedRecord,
    name: &str,
    tag: &str,
) -> Result<(), CoreError> {
    let key = format::tag_key(name, tag)?;
    if tag == "latest" {
        return Err(CoreError::invalid(format!(
            "the latest dist-tag of {name} cannot be removed; point it at another version with npm dist-tag add"
        )));
    }
    match ferry
        .write(feed, vec![LocalWrite::delete(key, Precondition::Present)])
        .await
    {
        Err(CoreError::NotFound(_)) => Err(tag_not_found(name, tag)),
        other => other.map(|_| ()),
    }
}

// ---------------------------------------------------------------------------
// Tarballs

/// A stored tarball, as needed to serve it.
#[derive(Debug, Clone)]
pub struct Tarball {
    /// The version item (downloads are counted on it).
    pub key: ItemKey,
    pub digest: Digest,
    pub published: i64,
}

/// The tarball `file` (`{unscoped-name}-{version}.tgz`) of package `name`.
pub async fn tarball(ferry: &Ferry, feed: &FeedRecord, name: &str, file: &str) -> Result<Tarball, CoreError> {
    format::validate_existing_package_name(name)?;
    let version =
        format::parse_tarball_file_name(name, file).map_err(|e| CoreError::not_found(e.to_string()))?;
    let key = format::version_key(name, &version)?;
    let item = ferry
        .item(feed, &key)
        .await?
        .ok_or_else(|| CoreError::not_found(format!("{name}@{version} not found")))?;
    let digest = *item
        .blobs
        .first()
        .ok_or_else(|| CoreError::Internal(format!("npm version {key} has no tarball")))?;
    Ok(Tarball {
        key,
        digest,
        published: item.created_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_entries_round_trip() {
        let p = format::Packument {
            full: b"{\"a\":1}".to_vec(),
            abbreviated: b"{}".to_vec(),
            dist_tags: Vec::new(),
            rev: "1-abc".into(),
            latest: None,
        };
        let d = decode(&encode(&p)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&d.full[..], p.full.as_slice());
        assert_eq!(&d.abbreviated[..], b"{}");
        assert!(d.dist_tags.is_empty());
        assert_eq!(d.rev, "1-abc");
        let mut broken = encode(&p).to_vec();
        broken.truncate(broken.len() - 1);
        assert!(decode(&Bytes::from(broken)).is_err());
    }
}

// ---------------------------------------------------------------------------
// Search (`npm search`, `GET /-/v1/search`)

/// Most results one search page may ask for (`size`).
pub const MAX_SEARCH_SIZE: usize = 250;

/// One package of a feed as `npm search` shows it: its current version
/// (the `latest` dist-tag, else the version published last).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SearchEntry {
    pub name: String,
    pub version: String,
    pub description: String,
    pub keywords: Vec<String>,
    /// Publication time of that version, RFC 3339.
    pub date: String,
    /// The `_npmUser` who published it (npm's `publisher.username`).
    pub publisher: Option<String>,
    /// `(username, email)` of each maintainer.
    pub maintainers: Vec<(String, String)>,
    pub homepage: Option<String>,
    pub repository: Option<String>,
    pub bugs: Option<String>,
}

/// A page of search results: the entries of the page with their score,
/// and how many matched in all.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchPage {
    pub hits: Vec<(SearchEntry, f64)>,
    pub total: usize,
}

fn keywords_of(manifest: &Value) -> Vec<String> {
    match manifest.get("keywords") {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        Some(Value::String(s)) => s
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// A URL field that may be a string or `{ "url": … }`.
fn url_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("url").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

fn entry_of(name: &str, version: &StoredVersion) -> SearchEntry {
    let m = &version.manifest;
    let s = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_owned);
    let maintainers = m
        .get("maintainers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|p| {
                    let n = p.get("name").and_then(Value::as_str)?;
                    let e = p.get("email").and_then(Value::as_str).unwrap_or_default();
                    Some((n.to_owned(), e.to_owned()))
                })
                .collect()
        })
        .unwrap_or_default();
    SearchEntry {
        name: name.to_owned(),
        version: version.version.clone(),
        description: s("description").unwrap_or_default(),
        keywords: keywords_of(m),
        date: ferry_types::rfc3339_millis(version.published_millis),
        publisher: m
            .get("_npmUser")
            .and_then(|u| u.get("name"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        maintainers,
        homepage: s("homepage"),
        repository: url_of(m.get("repository")),
        bugs: url_of(m.get("bugs")),
    }
}

/// Every package of the feed, for search; rendered once per feed change.
async fn search_index(ferry: &Ferry, feed: &FeedRecord) -> Result<Vec<SearchEntry>, CoreError> {
    let cached = ferry
        .cached_index(feed, "npm\u{1f}search", || async {
            let mut versions: BTreeMap<String, Vec<StoredVersion>> = BTreeMap::new();
            for mut item in ferry.items(feed, "pkg/").await? {
                let Ok(NpmItemKey::Version { name, version }) = format::parse_item_key(&item.key) else {
                    continue;
                };
                let Some(manifest @ Value::Object(_)) = item.meta.get_mut("manifest").map(Value::take) else {
                    continue;
                };
                versions.entry(name).or_default().push(StoredVersion {
                    version,
                    manifest,
                    published_millis: item.created_at,
                });
            }
            let mut latest: HashMap<String, String> = HashMap::new();
            for item in ferry.items(feed, "tag/").await? {
                if let Ok(NpmItemKey::Tag { name, tag }) = format::parse_item_key(&item.key)
                    && tag == "latest"
                    && let Some(v) = item.meta.get("version").and_then(Value::as_str)
                {
                    latest.insert(name, v.to_owned());
                }
            }
            let entries: Vec<SearchEntry> = versions
                .iter()
                .filter_map(|(name, vs)| {
                    let current = latest
                        .get(name)
                        .and_then(|l| vs.iter().find(|v| &v.version == l))
                        .or_else(|| vs.iter().max_by_key(|v| v.published_millis))?;
                    Some(entry_of(name, current))
                })
                .collect();
            serde_json::to_vec(&entries)
                .map(Bytes::from)
                .map_err(|e| CoreError::Internal(format!("npm search index: {e}")))
        })
        .await?;
    serde_json::from_slice(&cached).map_err(|e| CoreError::Internal(format!("npm search index: {e}")))
}

/// How well `entry` matches every term of `text` (lowercase words; a
/// `keywords:K` term matches keyword K exactly); None if one does not.
pub fn search_score(entry: &SearchEntry, text: &str) -> Option<f64> {
    let name = entry.name.to_lowercase();
    let description = entry.description.to_lowercase();
    let keywords: Vec<String> = entry.keywords.iter().map(|k| k.to_lowercase()).collect();
    let mut score = 0.0;
    for term in text.split_whitespace().map(str::to_lowercase) {
        if let Some(k) = term.strip_prefix("keywords:") {
            let wanted: Vec<&str> = k.split(',').filter(|k| !k.is_empty()).collect();
            if !wanted.iter().any(|w| keywords.iter().any(|k| k == w)) {
                return None;
            }
            score += 5.0;
            continue;
        }
        let term = term.as_str();
        score += if name == term {
            100.0
        } else if name.contains(term) {
            10.0
        } else if keywords.iter().any(|k| k == term) {
            5.0
        } else if keywords.iter().any(|k| k.contains(term)) {
            2.0
        } else if description.contains(term) {
            1.0
        } else {
            return None;
        };
    }
    Some(score)
}

/// `npm search`: the packages of `feed` matching every term of `text` in
/// their name, description or keywords, best first (then by name);
/// `size` results from `from`.
pub async fn search(
    ferry: &Ferry,
    feed: &FeedRecord,
    text: &str,
    from: usize,
    size: usize,
) -> Result<SearchPage, CoreError> {
    let mut hits: Vec<(SearchEntry, f64)> = search_index(ferry, feed)
        .await?
        .into_iter()
        .filter_map(|e| search_score(&e, text).map(|s| (e, s)))
        .collect();
    hits.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.name.cmp(&b.0.name)));
    let total = hits.len();
    let hits = hits
        .into_iter()
        .skip(from)
        .take(size.min(MAX_SEARCH_SIZE))
        .collect();
    Ok(SearchPage { hits, total })
}

#[cfg(test)]
mod search_tests {
    use super::*;

    fn entry(name: &str, description: &str, keywords: &[&str]) -> SearchEntry {
        SearchEntry {
            name: name.into(),
            version: "1.0.0".into(),
            description: description.into(),
            keywords: keywords.iter().map(|k| (*k).to_owned()).collect(),
            date: String::new(),
            publisher: None,
            maintainers: Vec::new(),
            homepage: None,
            repository: None,
            bugs: None,
        }
    }

    #[test]
    fn terms_match_name_description_keywords() {
        let e = entry("@acme/left-pad", "Pads strings on the left", &["String", "pad"]);
        assert!(search_score(&e, "left-pad").is_some());
        assert!(search_score(&e, "LEFT strings").is_some());
        assert!(search_score(&e, "string").is_some());
        assert!(search_score(&e, "keywords:pad").is_some());
        assert!(search_score(&e, "keywords:left").is_none());
        assert!(search_score(&e, "right").is_none());
        assert!(search_score(&e, "left right").is_none());
        assert_eq!(search_score(&e, ""), Some(0.0));
        let exact = entry("pad", "", &[]);
        assert!(search_score(&exact, "pad") > search_score(&e, "pad"));
    }

    #[test]
    fn keywords_as_string_or_array() {
        assert_eq!(
            keywords_of(&serde_json::json!({"keywords": "a, b c"})),
            vec!["a", "b", "c"]
        );
        assert_eq!(keywords_of(&serde_json::json!({"keywords": ["x", 1]})), vec!["x"]);
        assert!(keywords_of(&serde_json::json!({})).is_empty());
    }
}
