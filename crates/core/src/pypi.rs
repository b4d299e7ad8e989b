//! PyPI feeds: uploads (twine's legacy API), yanking (PEP 592), deletes,
//! and the simple repository pages (PEP 503 HTML, PEP 691 JSON).
//!
//! Item layout (see `ferry_formats::pypi`): one item per distribution
//! file, key `{normalized project}/{filename}`, metadata a [`FileMeta`],
//! blobs: the file, and for a wheel its core metadata file (PEP 658). Simple pages are derived from the items and cached
//! until the feed changes.
//!
//! A feed holds one file per [`FileIdentity`]: a file equivalent to one the
//! project has (same normalized name, PEP 440 version and wheel tags or
//! sdist format, however spelled) is refused like the same file name
//! twice. Uploads of one project are checked and written one at a time on
//! this instance (see `lock_project`), so two equivalent uploads at once
//! cannot both get in. Not covered: replication. Equivalent files uploaded
//! on two instances before either has the other's both stay (each keyed
//! by its own file name); preventing that would take coordination between
//! instances.

use std::io::BufReader;

use bytes::Bytes;
use ferry_formats::pypi::{
    self as dist, FileIdentity, check_upload, file_identity, inspect_distribution, normalized_project_name,
    parse_file_key, parse_filename, project_prefix, render_project, render_root, versions_match,
};
use ferry_store::{FeedRecord, ItemRecord, Precondition, StagedBlob, now_millis};
use ferry_types::{Digest, ItemKey};

pub use ferry_formats::pypi::{FileMeta, IndexFormat, UploadForm};

use crate::{CoreError, Ferry, LocalWrite};

/// Longest yank reason accepted, in characters.
pub const MAX_YANK_REASON: usize = 1000;

/// A stored distribution file, as needed to serve or list it.
#[derive(Debug, Clone)]
pub struct StoredFile {
    pub key: ItemKey,
    pub meta: FileMeta,
    /// The file's blob (equal to `meta.sha256`).
    pub digest: Digest,
    pub modified: i64,
    pub downloads: u64,
}

impl StoredFile {
    fn from_item(item: ItemRecord) -> Result<Self, CoreError> {
        let meta = FileMeta::from_json(&item.meta)?;
        let digest = *item
            .blobs
            .first()
            .ok_or_else(|| CoreError::Internal(format!("PyPI item {} has no blob", item.key)))?;
        let modified = item.modified();
        Ok(Self {
            key: item.key,
            meta,
            digest,
            modified,
            downloads: item.downloads,
        })
    }
}

/// The PEP 503 normalized form of a project name taken from a URL; an
/// invalid name cannot name a project, so it is "not found".
pub fn normalized_project(name: &str) -> Result<String, CoreError> {
    normalized_project_name(name).map_err(|e| CoreError::not_found(e.to_string()))
}

/// Checks an upload's file name before its content is received, so a
/// hopeless upload is refused early.
pub fn check_filename(filename: &str) -> Result<(), CoreError> {
    parse_filename(filename, None)?;
    Ok(())
}

/// Publishes an uploaded distribution file that has been staged: inspects
/// the archive (off the async threads), checks the form against it, then
/// commits the blob and writes the item. A file the project already has —
/// the same file name, or an equivalent one (the same [`FileIdentity`]:
/// `Dupe-1.0.0-py3-none-any.whl` after `dupe-1.0-py3-none-any.whl`) — is a
/// conflict naming the file there; nothing is written when any check
/// fails. Checked and written under the project's lock, so of two
/// equivalent uploads at once exactly one gets in.
pub async fn upload(
    ferry: &Ferry,
    feed: &FeedRecord,
    form: &UploadForm,
    filename: &str,
    staged: StagedBlob,
) -> Result<FileMeta, CoreError> {
    check_filename(filename)?;
    let path = staged.path().to_path_buf();
    let limits = ferry.config().archive;
    let name = filename.to_owned();
    let info = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path)
            .map_err(|e| CoreError::Internal(format!("opening staged upload {}: {e}", path.display())))?;
        inspect_distribution(&name, BufReader::new(file), &limits).map_err(CoreError::from)
    })
    .await
    .map_err(|e| CoreError::Internal(format!("archive inspection failed: {e}")))??;
    let digest = staged.digest();
    check_upload(form, &info, &digest)?;
    let identity = file_identity(filename, Some(&info.normalized_name))?;
    let mut meta = FileMeta::new(&info, digest, staged.size(), crate::rfc3339(now_millis()));
    let key = meta.key()?;
    // Early, to refuse before committing anything; again under the lock.
    refuse_equivalent(ferry, feed, &identity, filename).await?;
    let digest = ferry.commit_blob(staged).await?;
    let mut blobs = vec![digest];
    if let Some(core) = info.core_metadata {
        // Served on its own (PEP 658), so resolvers need not fetch the wheel.
        let staged = ferry.stage_bytes(Bytes::from(core)).await?;
        let md = ferry.commit_blob(staged).await?;
        meta.core_metadata = Some(md);
        blobs.push(md);
    }
    let _project = lock_project(feed, &identity.project).await;
    refuse_equivalent(ferry, feed, &identity, filename).await?;
    let write = LocalWrite::upsert(key, meta.to_json(), blobs, Precondition::Absent);
    match ferry.write(feed, vec![write]).await {
        Ok(_) => Ok(meta),
        // Written meanwhile by replication, which takes no lock.
        Err(CoreError::Conflict(_)) => Err(already_exists(feed, filename)),
        Err(e) => Err(e),
    }
}

/// The conflict of a file name the project has already.
fn already_exists(feed: &FeedRecord, filename: &str) -> CoreError {
    CoreError::conflict(format!(
        "{filename} already exists in feed {}; a file cannot be replaced (delete it first, or upload a new version)",
        feed.name
    ))
}

/// Refuses (Conflict, naming the file there) an upload of `filename` when
/// the project already has a file of the same identity. Reads every live
/// file of the project, by key: an item whose metadata cannot be read
/// still counts.
async fn refuse_equivalent(
    ferry: &Ferry,
    feed: &FeedRecord,
    identity: &FileIdentity,
    filename: &str,
) -> Result<(), CoreError> {
    let prefix = project_prefix(&identity.project)?;
    for item in ferry.items(feed, &prefix).await? {
        let Ok((project, existing)) = parse_file_key(&item.key) else {
            continue;
        };
        if existing == filename {
            return Err(already_exists(feed, filename));
        }
        if file_identity(existing, Some(project)).is_ok_and(|other| other == *identity) {
            return Err(CoreError::conflict(format!(
                "{filename} is equivalent to {existing}, which already exists in feed {}: both are {identity}, \
                 and installers cannot tell them apart; a file cannot be replaced (delete {existing} first, \
                 or upload a new version)",
                feed.name
            )));
        }
    }
    Ok(())
}

static PROJECT_LOCKS: crate::name_locks::NameLocks = crate::name_locks::NameLocks::new();

/// Serializes, on this instance, the final check and the write of uploads
/// to project `normalized` of `feed`: an upload reads the project's files
/// and writes its own while holding the lock, so of two equivalent uploads
/// at once (different file names, so different keys, which a store
/// precondition cannot catch) the second sees the first. The check and
/// write do no archive work.
async fn lock_project(feed: &FeedRecord, normalized: &str) -> tokio::sync::MutexGuard<'static, ()> {
    PROJECT_LOCKS.lock(feed.id, normalized).await
}

/// Every file of `project` (any spelling), in key order. Items whose
/// metadata cannot be read are skipped (and logged).
pub async fn project_files(
    ferry: &Ferry,
    feed: &FeedRecord,
    project: &str,
) -> Result<Vec<StoredFile>, CoreError> {
    let prefix = project_prefix(project).map_err(|e| CoreError::not_found(e.to_string()))?;
    Ok(ferry
        .items(feed, &prefix)
        .await?
        .into_iter()
        .filter_map(readable)
        .collect())
}

fn readable(item: ItemRecord) -> Option<StoredFile> {
    let key = item.key.clone();
    match StoredFile::from_item(item) {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(%key, error = %e, "skipping unreadable PyPI item");
            None
        }
    }
}

/// One file, by project (any spelling) and file name.
pub async fn file(
    ferry: &Ferry,
    feed: &FeedRecord,
    project: &str,
    filename: &str,
) -> Result<StoredFile, CoreError> {
    let missing = || CoreError::not_found(format!("{project}/{filename} not found in feed {}", feed.name));
    let key = dist::file_key(project, filename).map_err(|_| missing())?;
    let item = ferry.item(feed, &key).await?.ok_or_else(missing)?;
    StoredFile::from_item(item)
}

/// The files of `project` whose version equals `version` (PEP 440
/// equality); NotFound when there are none.
async fn version_files(
    ferry: &Ferry,
    feed: &FeedRecord,
    project: &str,
    version: &str,
) -> Result<Vec<StoredFile>, CoreError> {
    let files: Vec<StoredFile> = project_files(ferry, feed, project)
        .await?
        .into_iter()
        .filter(|f| versions_match(&f.meta.version, version))
        .collect();
    if files.is_empty() {
        return Err(CoreError::not_found(format!(
            "project {project} has no files of version {version} in feed {}",
            feed.name
        )));
    }
    Ok(files)
}

/// Yanks (PEP 592) every file of one version, with an optional reason;
/// returns the files as they are now. Files stay downloadable. Yanking
/// again only updates the reason.
pub async fn yank(
    ferry: &Ferry,
    feed: &FeedRecord,
    project: &str,
    version: &str,
    reason: Option<String>,
) -> Result<Vec<FileMeta>, CoreError> {
    if let Some(r) = &reason
        && r.chars().count() > MAX_YANK_REASON
    {
        return Err(CoreError::invalid(format!(
            "the yank reason is longer than {MAX_YANK_REASON} characters"
        )));
    }
    set_yanked(ferry, feed, project, version, |m| m.yank(reason.clone())).await
}

/// Undoes [`yank`] for every file of one version.
pub async fn unyank(
    ferry: &Ferry,
    feed: &FeedRecord,
    project: &str,
    version: &str,
) -> Result<Vec<FileMeta>, CoreError> {
    set_yanked(ferry, feed, project, version, FileMeta::unyank).await
}

async fn set_yanked(
    ferry: &Ferry,
    feed: &FeedRecord,
    project: &str,
    version: &str,
    change: impl Fn(&mut FileMeta),
) -> Result<Vec<FileMeta>, CoreError> {
    let files = version_files(ferry, feed, project, version).await?;
    let mut writes = Vec::new();
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        let mut meta = f.meta.clone();
        change(&mut meta);
        // Written even when it changes nothing here: the new stamp makes
        // this, the user's latest action, win over an older yank or unyank
        // made elsewhere that has not arrived yet.
        // The file and its core metadata (PEP 658) stay the item's blobs.
        let mut blobs = vec![f.digest];
        blobs.extend(meta.core_metadata);
        writes.push(LocalWrite::upsert(
            f.key,
            meta.to_json(),
            blobs,
            Precondition::Present,
        ));
        out.push(meta);
    }
    if !writes.is_empty() {
        ferry.write(feed, writes).await?;
    }
    Ok(out)
}

/// Deletes one file.
pub async fn delete_file(
    ferry: &Ferry,
    feed: &FeedRecord,
    project: &str,
    filename: &str,
) -> Result<(), CoreError> {
    let f = file(ferry, feed, project, filename).await?;
    ferry
        .write(feed, vec![LocalWrite::delete(f.key, Precondition::Present)])
        .await?;
    Ok(())
}

/// Deletes every file of one version, at once; returns their names.
pub async fn delete_version(
    ferry: &Ferry,
    feed: &FeedRecord,
    project: &str,
    version: &str,
) -> Result<Vec<String>, CoreError> {
    let files = version_files(ferry, feed, project, version).await?;
    let names = files.iter().map(|f| f.meta.filename.clone()).collect();
    let writes = files
        .into_iter()
        .map(|f| LocalWrite::delete(f.key, Precondition::Present))
        .collect();
    ferry.write(feed, writes).await?;
    Ok(names)
}

fn format_tag(format: IndexFormat) -> &'static str {
    match format {
        IndexFormat::Html => "html",
        IndexFormat::Json => "json",
    }
}

/// A rendered simple API page and its entity tag.
#[derive(Debug, Clone)]
pub struct Page {
    /// The page (PEP 503 HTML or PEP 691 JSON).
    pub body: Bytes,
    /// A strong entity tag of `body` (RFC 9110 §8.8.3), quotes included:
    /// the first 128 bits of its SHA-256 in hex, so a client's
    /// `If-None-Match` is answered 304 until the page changes.
    pub etag: String,
}

/// Length of the hex tag a cached page starts with.
const PAGE_TAG: usize = 32;

/// A page as cached: its tag's hex, then the page; empty stays empty
/// ("no such project").
fn tagged(body: Vec<u8>) -> Bytes {
    if body.is_empty() {
        return Bytes::new();
    }
    use sha2::Digest as _;
    let sum = sha2::Sha256::digest(&body);
    let mut out = Vec::with_capacity(PAGE_TAG + body.len());
    out.extend_from_slice(hex::encode(&sum[..PAGE_TAG / 2]).as_bytes());
    out.extend_from_slice(&body);
    Bytes::from(out)
}

/// The page and its tag out of a cache entry made by [`tagged`].
fn untag(entry: Bytes) -> Result<Page, CoreError> {
    let tag = entry
        .get(..PAGE_TAG)
        .and_then(|t| std::str::from_utf8(t).ok())
        .ok_or_else(|| CoreError::Internal("corrupt cached simple page".into()))?;
    let etag = ["\"", tag, "\""].concat();
    Ok(Page {
        body: entry.slice(PAGE_TAG..),
        etag,
    })
}

/// The root page of the simple API: every project of the feed.
pub async fn root_page(ferry: &Ferry, feed: &FeedRecord, format: IndexFormat) -> Result<Page, CoreError> {
    let cache_key = format!("pypi:root:{}", format_tag(format));
    let entry = ferry
        .cached_index(feed, &cache_key, || async {
            let items = ferry.items(feed, "").await?;
            // Keys are in order, so one project's files are adjacent.
            let mut names: Vec<String> = Vec::new();
            let mut last: Option<String> = None;
            for item in &items {
                let Ok((project, _)) = parse_file_key(&item.key) else {
                    continue;
                };
                if last.as_deref() == Some(project) {
                    continue;
                }
                last = Some(project.to_owned());
                let shown = item.meta["name"].as_str().unwrap_or(project);
                names.push(shown.to_owned());
            }
            Ok(tagged(render_root(names.iter().map(String::as_str), format)))
        })
        .await?;
    untag(entry)
}

/// A project's page of the simple API, with file links under
/// `{files_base}/files/...`. NotFound when the project has no files.
pub async fn project_page(
    ferry: &Ferry,
    feed: &FeedRecord,
    project: &str,
    format: IndexFormat,
    files_base: &str,
) -> Result<Page, CoreError> {
    let normalized = normalized_project(project)?;
    // (One allocation of the exact length; `format!` guesses and grows.)
    let cache_key = [
        "pypi:project:",
        &normalized,
        ":",
        format_tag(format),
        ":",
        files_base,
    ]
    .concat();
    let body = ferry
        .cached_index(feed, &cache_key, || async {
            let files: Vec<FileMeta> = project_files(ferry, feed, &normalized)
                .await?
                .into_iter()
                .map(|f| f.meta)
                .collect();
            if files.is_empty() {
                // Cached as "no such project": rendered pages are never empty.
                return Ok(Bytes::new());
            }
            Ok(tagged(render_project(&normalized, &files, files_base, format)))
        })
        .await?;
    if body.is_empty() {
        return Err(CoreError::not_found(format!(
            "project {normalized} not found in feed {}",
            feed.name
        )));
    }
    untag(body)
}
