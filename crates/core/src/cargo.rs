//! cargo feeds: publish, yank and unyank, index files, downloads, search
//! and owners of a private sparse registry (The Cargo Book, "Registry
//! Index" and "Registry Web API").
//!
//! Item layout (see `ferry_formats::cargo`): one item per version, key
//! `crate/{canonical name}/{version}`, metadata a [`CrateItem`] (the index
//! line, the description, the size), blob: the `.crate`. Index files are
//! rendered from the items and cached until the feed changes, on every
//! instance, so a spoke derives them from what it replicated.
//!
//! Names are compared as cargo compares them: case-insensitively, with `-`
//! and `_` equivalent. A crate keeps the spelling it was first published
//! with; a publish under another spelling of the same name is refused.
//! Not covered: two spellings published at the same moment (different
//! versions, so different keys, here or on two instances before either has
//! the other's) both get in; each index file then lists the versions whose
//! lowercased name is the one its path names.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ferry_formats::cargo::{
    self as format, CrateItem, IndexEntry, MAX_PUBLISH_JSON, canonical_name, crate_key_prefix, inspect_crate,
    parse_item_key, parse_length_prefix, parse_publish_json, render_index_file, search_entry, version_key,
};
use ferry_store::{ByteStream, FeedRecord, ItemRecord, Permission, Precondition, StagedBlob};
use ferry_types::{Digest, ItemKey};
use futures::StreamExt;

use crate::{CoreError, Ferry, LocalWrite, Principal};

/// Most results `cargo search` may ask for at once.
pub const MAX_PER_PAGE: usize = 100;

/// A request body being read from the front: the publish body's length
/// prefixes and JSON part are read into memory here (bounded), the rest is
/// handed on as a stream.
struct BodyReader {
    stream: ByteStream,
    pending: Bytes,
}

impl BodyReader {
    /// Exactly `n` bytes, or `None` when the body ends first.
    async fn read_exact(&mut self, n: usize) -> Result<Option<Vec<u8>>, CoreError> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            if self.pending.is_empty() {
                match self.stream.next().await {
                    Some(Ok(chunk)) => self.pending = chunk,
                    Some(Err(e)) => {
                        return Err(CoreError::from_body_error(&e).unwrap_or_else(|| {
                            CoreError::Internal(format!("reading the publish body: {e}"))
                        }));
                    }
                    None => return Ok(None),
                }
            }
            let take = (n - out.len()).min(self.pending.len());
            out.extend_from_slice(&self.pending.split_to(take));
        }
        Ok(Some(out))
    }

    async fn read_prefix(&mut self, what: &str) -> Result<u32, CoreError> {
        let bytes = self.read_exact(4).await?.ok_or_else(|| {
            CoreError::invalid(format!(
                "the publish body ended before the length of its {what} (a little-endian u32)"
            ))
        })?;
        let mut b = [0u8; 4];
        b.copy_from_slice(&bytes);
        Ok(parse_length_prefix(b))
    }
}

/// How the `.crate` part of a body compared with its declared length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Tail {
    #[default]
    Exact,
    /// Bytes followed the declared length.
    Trailing,
}

/// The next `remaining` bytes of `reader` as a stream of their own; bytes
/// after them are noted in `tail` (the stream ends at the declared length
/// either way; a body that ends early gives a shorter stream).
fn take_stream(reader: BodyReader, remaining: u64, tail: Arc<Mutex<Tail>>) -> ByteStream {
    Box::pin(futures::stream::unfold(
        (reader, remaining, tail, false),
        |(mut r, remaining, tail, done)| async move {
            if done {
                return None;
            }
            if remaining == 0 {
                // Whatever follows the declared length makes the body a lie.
                let extra = !r.pending.is_empty()
                    || loop {
                        match r.stream.next().await {
                            Some(Ok(c)) if c.is_empty() => continue,
                            Some(Ok(_)) => break true,
                            Some(Err(_)) | None => break false,
                        }
                    };
                if extra && let Ok(mut t) = tail.lock() {
                    *t = Tail::Trailing;
                }
                return None;
            }
            if r.pending.is_empty() {
                match r.stream.next().await {
                    Some(Ok(c)) => r.pending = c,
                    Some(Err(e)) => return Some((Err(e), (r, remaining, tail, true))),
                    None => return None,
                }
            }
            let take = remaining.min(r.pending.len() as u64) as usize;
            let chunk = r.pending.split_to(take);
            Some((Ok(chunk), (r, remaining - take as u64, tail, false)))
        },
    ))
}

/// What a publish stored.
#[derive(Debug, Clone)]
pub struct Published {
    /// The version's item metadata (its index line included).
    pub item: CrateItem,
}

/// The conflict cargo shows when a version exists already.
fn already_uploaded(name: &str, vers: &str) -> CoreError {
    CoreError::conflict(format!("crate version `{name}@{vers}` is already uploaded"))
}

/// Publishes a crate from the body of `PUT /api/v1/crates/new`: a
/// little-endian `u32` length, that much JSON (at most
/// [`MAX_PUBLISH_JSON`] bytes, read into memory), another `u32` length and
/// the `.crate`, which is streamed into staging while it is hashed (its
/// sha256 becomes the index line's `cksum`). A body whose lengths lie
/// (ends early, has bytes after the `.crate`, declares more metadata than
/// allowed or a `.crate` over the upload limit) is refused (400 / 413)
/// without reading further than needed. The `.crate` is inspected off the
/// async threads ([`inspect_crate`]: paths, size bombs, its `Cargo.toml`
/// against the JSON). Errors: Conflict when the version exists (any build
/// metadata) or the crate exists under another spelling; Invalid for bad
/// names, versions, dependencies and archives.
pub async fn publish(ferry: &Ferry, feed: &FeedRecord, body: ByteStream) -> Result<Published, CoreError> {
    let mut reader = BodyReader {
        stream: body,
        pending: Bytes::new(),
    };
    let json_len = reader.read_prefix("metadata").await?;
    if json_len > MAX_PUBLISH_JSON {
        return Err(CoreError::invalid(format!(
            "the publish body declares {json_len} bytes of metadata, more than the {MAX_PUBLISH_JSON} allowed"
        )));
    }
    let json = reader.read_exact(json_len as usize).await?.ok_or_else(|| {
        CoreError::invalid(format!(
            "the publish body ended before the {json_len} bytes of metadata it declares"
        ))
    })?;
    let publish = parse_publish_json(&json)?;
    let name = publish.entry.name.clone();
    let vers = publish.entry.vers.clone();
    let key = version_key(&name, &vers)?;
    // Early, before the .crate is received; again at the write.
    check_new_version(ferry, feed, &key, &name, &vers).await?;
    let crate_len = u64::from(reader.read_prefix(".crate file").await?);
    let limit = ferry.config().max_upload_bytes;
    if crate_len > limit {
        return Err(CoreError::TooLarge(format!(
            "the publish body declares a .crate of {crate_len} bytes, over the upload limit of {limit} bytes"
        )));
    }
    let tail = Arc::new(Mutex::new(Tail::Exact));
    let staged = ferry
        .stage(take_stream(reader, crate_len, tail.clone()), None)
        .await?;
    if staged.size() < crate_len {
        return Err(CoreError::invalid(format!(
            "the publish body ended after {} of the {crate_len} bytes of .crate it declares",
            staged.size()
        )));
    }
    if *tail
        .lock()
        .map_err(|_| CoreError::Internal("publish tail lock poisoned".into()))?
        == Tail::Trailing
    {
        return Err(CoreError::invalid(format!(
            "the publish body has bytes after the {crate_len} bytes of .crate it declares"
        )));
    }
    inspect(ferry, &staged, &name, &vers).await?;
    let size = staged.size();
    let digest = ferry.commit_blob(staged).await?;
    let item = publish.into_item(&digest, size);
    let _crate_lock = lock_crate(feed, &name).await;
    check_new_version(ferry, feed, &key, &name, &vers).await?;
    let write = LocalWrite::upsert(key, item.to_json(), vec![digest], Precondition::Absent);
    match ferry.write(feed, vec![write]).await {
        Ok(_) => Ok(Published { item }),
        Err(CoreError::Conflict(_)) => Err(already_uploaded(&name, &vers)),
        Err(e) => Err(e),
    }
}

async fn inspect(ferry: &Ferry, staged: &StagedBlob, name: &str, vers: &str) -> Result<(), CoreError> {
    let path = staged.path().to_path_buf();
    let limits = ferry.config().archive;
    let (name, vers) = (name.to_owned(), vers.to_owned());
    tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path)
            .map_err(|e| CoreError::Internal(format!("opening staged .crate {}: {e}", path.display())))?;
        inspect_crate(std::io::BufReader::new(file), &name, &vers, &limits).map_err(CoreError::from)
    })
    .await
    .map_err(|e| CoreError::Internal(format!(".crate inspection failed: {e}")))?
}

/// The one spelling a crate is shown under: that of its earliest-written
/// version (ties by version key), the same on every instance. Versions
/// that arrived under another spelling (published on two instances before
/// either saw the other) are shown under it too, so a crate has one index
/// file and one name whatever its versions were published as.
fn display_name(versions: &[StoredVersion]) -> Option<&str> {
    versions
        .iter()
        .min_by(|a, b| a.created.cmp(&b.created).then_with(|| a.key.cmp(&b.key)))
        .map(|v| v.item.index.name.as_str())
}

static CRATE_LOCKS: crate::name_locks::NameLocks = crate::name_locks::NameLocks::new();

/// Serializes, on this instance, the last check and the write of publishes
/// of one crate (any spelling), so two spellings published at once cannot
/// both pass the check.
async fn lock_crate(feed: &FeedRecord, name: &str) -> tokio::sync::MutexGuard<'static, ()> {
    CRATE_LOCKS.lock(feed.id, &canonical_name(name)).await
}

/// Refuses a version the crate has (Conflict, as cargo shows it), and a
/// crate name spelled otherwise than the crate's existing versions.
async fn check_new_version(
    ferry: &Ferry,
    feed: &FeedRecord,
    key: &ItemKey,
    name: &str,
    vers: &str,
) -> Result<(), CoreError> {
    if ferry.item(feed, key).await?.is_some() {
        return Err(already_uploaded(name, vers));
    }
    let existing = versions(ferry, feed, name).await?;
    if let Some(shown) = display_name(&existing)
        && shown != name
    {
        return Err(CoreError::conflict(format!(
            "crate `{name}` is the existing crate `{shown}` spelled otherwise (names differing only in case or \
             `-`/`_` are the same crate); publish it as `{shown}`"
        )));
    }
    Ok(())
}

/// A stored version, as needed to serve it.
#[derive(Debug, Clone)]
pub struct StoredVersion {
    pub key: ItemKey,
    pub item: CrateItem,
    /// The `.crate` blob (its sha256 is the index line's `cksum`).
    pub digest: Digest,
    /// When the item last changed (Unix ms).
    pub modified: i64,
    /// When the version was first written (Unix ms; the same on every
    /// instance, replication carries it).
    pub created: i64,
}

impl StoredVersion {
    fn from_record(rec: ItemRecord) -> Result<Self, CoreError> {
        let item = CrateItem::from_json(&rec.meta)?;
        let digest = *rec
            .blobs
            .first()
            .ok_or_else(|| CoreError::Internal(format!("cargo item {} has no blob", rec.key)))?;
        let modified = rec.modified();
        Ok(Self {
            key: rec.key,
            item,
            digest,
            modified,
            created: rec.created_at,
        })
    }
}

/// One version of a crate, by any spelling of its name and the version
/// with or without build metadata. NotFound otherwise.
pub async fn version(
    ferry: &Ferry,
    feed: &FeedRecord,
    name: &str,
    vers: &str,
) -> Result<StoredVersion, CoreError> {
    let missing = || CoreError::not_found(format!("crate `{name}` does not have a version `{vers}`"));
    let key = version_key(name, vers).map_err(|_| missing())?;
    let rec = ferry.item(feed, &key).await?.ok_or_else(missing)?;
    StoredVersion::from_record(rec)
}

/// Yanks (`yanked: true`) or unyanks a version. Written even when it
/// changes nothing: the new stamp makes this, the user's latest action,
/// win over an older yank or unyank made elsewhere.
pub async fn set_yanked(
    ferry: &Ferry,
    feed: &FeedRecord,
    name: &str,
    vers: &str,
    yanked: bool,
) -> Result<(), CoreError> {
    let mut v = version(ferry, feed, name, vers).await?;
    v.item.index.yanked = yanked;
    let write = LocalWrite::upsert(v.key, v.item.to_json(), vec![v.digest], Precondition::Present);
    ferry.write(feed, vec![write]).await?;
    Ok(())
}

/// Deletes a version (Ferry's own; cargo has no command for it): the
/// index file drops its line, the `.crate` is no longer served, and the
/// deletion replicates. NotFound when there is no such version.
pub async fn delete_version(
    ferry: &Ferry,
    feed: &FeedRecord,
    name: &str,
    vers: &str,
) -> Result<(), CoreError> {
    let v = version(ferry, feed, name, vers).await?;
    ferry
        .write(feed, vec![LocalWrite::delete(v.key, Precondition::Present)])
        .await?;
    Ok(())
}

/// A rendered index file with its validators.
#[derive(Debug, Clone)]
pub struct IndexFile {
    pub body: Bytes,
    /// A strong entity tag of the body (`"…"`).
    pub etag: String,
    /// The newest change of the crate's versions (Unix ms).
    pub modified: i64,
}

/// The index file of the crate whose lowercase name is `lower` (the name an
/// index path holds): one line per version, every line under the crate's
/// one shown spelling ([`display_name`]). Rendered from the items and
/// cached until the feed changes. NotFound when the crate is not shown
/// under a spelling that lowercases to `lower` (cargo then tries the other
/// spellings by itself, and names the right one).
pub async fn index_file(ferry: &Ferry, feed: &FeedRecord, lower: &str) -> Result<IndexFile, CoreError> {
    let cached = ferry
        .cached_index(feed, &format!("cargo:index:{lower}"), || async {
            let all = versions(ferry, feed, lower).await?;
            let Some(shown) = display_name(&all).map(str::to_owned) else {
                return Ok(Bytes::new());
            };
            if shown.to_ascii_lowercase() != lower {
                return Ok(Bytes::new());
            }
            let modified = all.iter().map(|v| v.modified).max().unwrap_or(0);
            let entries: Vec<IndexEntry> = all
                .into_iter()
                .map(|v| IndexEntry {
                    name: shown.clone(),
                    ..v.item.index
                })
                .collect();
            let body = render_index_file(&entries);
            let etag = crate::content_etag(&body);
            // Cached as one value: a header line with the validators, then
            // the file.
            let mut out = format!("{modified} {etag}\n").into_bytes();
            out.extend_from_slice(&body);
            Ok(Bytes::from(out))
        })
        .await?;
    let not_found = || CoreError::not_found(format!("crate `{lower}` not found in feed {}", feed.name));
    let split = cached.iter().position(|b| *b == b'\n').ok_or_else(not_found)?;
    let header = std::str::from_utf8(&cached[..split]).map_err(|_| not_found())?;
    let (modified, etag) = header.split_once(' ').ok_or_else(not_found)?;
    Ok(IndexFile {
        etag: etag.to_owned(),
        modified: modified.parse().unwrap_or(0),
        body: cached.slice(split + 1..),
    })
}

/// Every readable version of a crate (any spelling), in key order.
async fn versions(ferry: &Ferry, feed: &FeedRecord, name: &str) -> Result<Vec<StoredVersion>, CoreError> {
    Ok(ferry
        .items(feed, &crate_key_prefix(name))
        .await?
        .into_iter()
        .filter_map(readable)
        .collect())
}

fn readable(rec: ItemRecord) -> Option<StoredVersion> {
    let key = rec.key.clone();
    match StoredVersion::from_record(rec) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(%key, error = %e, "skipping unreadable cargo item");
            None
        }
    }
}

/// One crate in the search summary: its canonical name, what search shows
/// of it, and its versions' descriptions, lowercased (matched against).
#[derive(serde::Serialize, serde::Deserialize)]
struct SearchRow {
    canonical: String,
    shown: serde_json::Value,
    descriptions: Vec<String>,
}

/// Every crate of the feed as search sees it, in canonical order: rendered
/// from the items and cached until the feed changes, like index files.
async fn search_summary(ferry: &Ferry, feed: &FeedRecord) -> Result<Vec<SearchRow>, CoreError> {
    let cached = ferry
        .cached_index(feed, "cargo:search", || async {
            let mut groups: Vec<(String, Vec<StoredVersion>)> = Vec::new();
            for v in ferry
                .items(feed, "crate/")
                .await?
                .into_iter()
                .filter_map(readable)
            {
                let Ok((canonical, _)) = parse_item_key(&v.key) else {
                    continue;
                };
                let canonical = canonical.to_owned();
                match groups.last_mut() {
                    Some((c, versions)) if *c == canonical => versions.push(v),
                    _ => groups.push((canonical, vec![v])),
                }
            }
            let rows: Vec<SearchRow> = groups
                .into_iter()
                .filter_map(|(canonical, versions)| {
                    let name = display_name(&versions)?.to_owned();
                    let items: Vec<CrateItem> = versions.into_iter().map(|v| v.item).collect();
                    let mut shown = search_entry(&items)?;
                    shown["name"] = serde_json::Value::String(name);
                    let mut descriptions: Vec<String> = items
                        .iter()
                        .filter_map(|i| i.description.as_deref().map(str::to_lowercase))
                        .collect();
                    descriptions.sort();
                    descriptions.dedup();
                    Some(SearchRow {
                        canonical,
                        shown,
                        descriptions,
                    })
                })
                .collect();
            serde_json::to_vec(&rows)
                .map(Bytes::from)
                .map_err(|e| CoreError::Internal(format!("cargo search summary: {e}")))
        })
        .await?;
    serde_json::from_slice(&cached).map_err(|e| CoreError::Internal(format!("cargo search summary: {e}")))
}

/// `cargo search`: crates whose name or description contains `query`
/// (case-insensitively, `-` and `_` alike in names; empty: every crate),
/// exact name first, then by name; at most `per_page` of them, and how many
/// matched in all. Each is `{"name", "max_version", "description"}`, the
/// highest version that is not yanked.
pub async fn search(
    ferry: &Ferry,
    feed: &FeedRecord,
    query: &str,
    per_page: usize,
) -> Result<(Vec<serde_json::Value>, usize), CoreError> {
    let q = query.trim().to_lowercase();
    let q_name = canonical_name(&q);
    let mut hits: Vec<(bool, SearchRow)> = search_summary(ferry, feed)
        .await?
        .into_iter()
        .filter(|r| {
            q.is_empty() || r.canonical.contains(&q_name) || r.descriptions.iter().any(|d| d.contains(&q))
        })
        .map(|r| (r.canonical != q_name, r))
        .collect();
    // Exact name first; the summary is in name order already.
    hits.sort_by_key(|h| h.0);
    let total = hits.len();
    Ok((
        hits.into_iter()
            .take(per_page.min(MAX_PER_PAGE))
            .map(|h| h.1.shown)
            .collect(),
        total,
    ))
}

/// The crate's owners, as `cargo owner --list` shows them. Ferry has no
/// per-crate owners: whoever holds a key that may write to the feed may
/// publish. An unscoped admin key is shown those keys (write or admin
/// permission, covering the feed), by name; anyone else, who may not learn
/// other keys' names, one stand-in entry naming the feed. NotFound when
/// the crate has no versions.
pub async fn owners(
    ferry: &Ferry,
    feed: &FeedRecord,
    name: &str,
    who: Option<&Principal>,
) -> Result<Vec<serde_json::Value>, CoreError> {
    if versions(ferry, feed, name).await?.is_empty() {
        return Err(CoreError::not_found(format!(
            "crate `{name}` not found in feed {}",
            feed.name
        )));
    }
    let admin = who.is_some_and(|p| p.key.permission == Permission::Admin && p.key.feeds.is_none());
    if !admin {
        return Ok(vec![serde_json::json!({
            "id": 0,
            "login": format!("ferry:{}", feed.name),
            "name": format!("API keys with write permission on feed {}", feed.name),
        })]);
    }
    Ok(ferry
        .keys()
        .await?
        .into_iter()
        .filter(|k| k.permission >= Permission::Write && k.covers(feed.id))
        .map(|k| serde_json::json!({ "id": k.id, "login": k.name, "name": k.name }))
        .collect())
}

/// The feed's `config.json` ([`format::render_config`]): `root` is the
/// absolute URL of the index root without its final `/`.
pub fn config(root: &str, private: bool) -> Bytes {
    Bytes::from(format::render_config(root, private))
}
