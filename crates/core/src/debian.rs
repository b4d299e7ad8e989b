//! Debian feeds (apt repositories): uploads of `.deb`s, deletes, and the
//! signed indexes apt reads, rendered per distribution from the items.
//!
//! Item layout (see `ferry_formats::debian`): one item per `(distribution,
//! component, package, version, architecture)`, key
//! `deb/DIST/COMPONENT/NAME/VERSION/ARCH`, metadata a [`DebMeta`] (the
//! control paragraph read from the archive at upload, pool path, size,
//! sha256), one blob: the `.deb`. Publishing never reopens `.deb`s.
//!
//! Indexes are never items. Each instance renders a distribution's
//! `Packages` (plain, `.gz`, `.xz`) for every component and architecture,
//! its `Release`, and signs it with the feed's key ([`crate::signing`]):
//! `InRelease` (clearsigned) and `Release.gpg` (detached). A rendering is
//! kept in memory for the feed's change-log position it was made at; the
//! files of the last [`BY_HASH_GENERATIONS`] renderings of each
//! distribution stay served under `by-hash/SHA256/HEX`, so a client holding
//! a slightly older `InRelease` never meets a hash mismatch.
//!
//! What the next rendering starts from is kept too (`Model`): every
//! package's paragraph, in buckets by name, and every index bucket
//! compressed ([`crate::debindex`]). A publish reads the items changed
//! since and recompresses only their buckets, so its cost barely grows
//! with the number of other packages in the distribution.
//!
//! | request | answer |
//! | --- | --- |
//! | `PUT /debian/FEED/upload/DIST/COMPONENT` | [`upload`] |
//! | `POST /debian/FEED/upload/DIST/COMPONENT` (multipart) | [`inspect`] each, then [`publish`] |
//! | `DELETE /debian/FEED/package/DIST/COMPONENT/NAME/VERSION/ARCH` | [`delete`] |
//! | `GET /debian/FEED/dists/DIST/...` | [`dist_file`] |
//! | `GET /debian/FEED/pool/...` | [`pool_file`] |

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io::BufReader;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ferry_formats::debian::{
    self as deb, DebMeta, IndexFile, ReleaseInfo, dist_prefix, inspect_deb, item_key, release_architectures,
};
use ferry_store::{FeedId, FeedRecord, Precondition, StagedBlob, now_millis};
use ferry_types::Digest;

use crate::bulk::{UploadBody, in_part};
use crate::debindex::{self, BUCKETS, Packed, bucket_of};
use crate::{CoreError, Ferry, LocalWrite};

pub use ferry_formats::debian::DebMeta as Meta;

/// How many renderings of a distribution stay served by hash.
pub const BY_HASH_GENERATIONS: usize = 4;

/// Architectures a distribution holding only `all` packages announces.
const DEFAULT_ARCHITECTURES: [&str; 2] = ["amd64", "arm64"];

/// One rendering of a distribution, signed.
#[derive(Debug)]
pub struct Publication {
    seq: i64,
    /// When it was rendered (ms since the epoch; the `Last-Modified` of
    /// its files): a second past the previous rendering's at least, so a
    /// client's `If-Modified-Since` (whole seconds) never takes a newer
    /// rendering for the one it has.
    modified: i64,
    /// Files under `dists/DIST/`, by relative path.
    files: HashMap<String, Bytes>,
}

#[derive(Default)]
struct DistState {
    current: Option<Arc<Publication>>,
    /// What the next rendering starts from (taken while rendering).
    model: Option<Model>,
    /// Index files of recent renderings, by `SHA256/HEX` and `SHA512/HEX`,
    /// newest last.
    by_hash: VecDeque<(i64, HashMap<String, Bytes>)>,
}

/// A distribution's packages as the last rendering saw them: each
/// package's `Packages` paragraph in its bucket ([`debindex::bucket_of`]),
/// and each index bucket's text and compressed forms, dropped when a
/// package of that bucket changes. A publish reads the changed items and
/// recompresses their buckets only.
#[derive(Default)]
struct Model {
    seq: i64,
    entries: HashMap<String, Entry>,
    /// (component, bucket) → item keys, in key order.
    buckets: HashMap<(String, usize), BTreeSet<String>>,
    /// How many packages of each architecture, and of each component.
    archs: BTreeMap<String, usize>,
    comps: BTreeMap<String, usize>,
    /// (component, architecture, bucket) → that bucket of that index.
    packed: HashMap<(String, String, usize), Arc<Packed>>,
}

struct Entry {
    component: String,
    architecture: String,
    bucket: usize,
    paragraph: String,
}

impl Model {
    fn insert(&mut self, key: String, meta: &DebMeta) {
        self.remove(&key);
        let bucket = bucket_of(&meta.package);
        self.invalidate(&meta.component, &meta.architecture, bucket);
        *self.archs.entry(meta.architecture.clone()).or_default() += 1;
        *self.comps.entry(meta.component.clone()).or_default() += 1;
        self.buckets
            .entry((meta.component.clone(), bucket))
            .or_default()
            .insert(key.clone());
        self.entries.insert(
            key,
            Entry {
                component: meta.component.clone(),
                architecture: meta.architecture.clone(),
                bucket,
                paragraph: meta.paragraph(),
            },
        );
    }

    fn remove(&mut self, key: &str) {
        let Some(e) = self.entries.remove(key) else {
            return;
        };
        self.invalidate(&e.component, &e.architecture, e.bucket);
        decrement(&mut self.archs, &e.architecture);
        decrement(&mut self.comps, &e.component);
        let id = (e.component, e.bucket);
        if let Some(keys) = self.buckets.get_mut(&id) {
            keys.remove(key);
            if keys.is_empty() {
                self.buckets.remove(&id);
            }
        }
    }

    /// Drops the compressed buckets a package of `arch` in `bucket` is part
    /// of: its architecture's, or every architecture's for `all`.
    fn invalidate(&mut self, component: &str, arch: &str, bucket: usize) {
        if arch == "all" {
            self.packed
                .retain(|(c, _, b), _| !(c == component && *b == bucket));
        } else {
            self.packed
                .remove(&(component.to_owned(), arch.to_owned(), bucket));
        }
    }

    /// The text of one bucket of `component`'s `binary-ARCH/Packages`:
    /// its packages of `arch` and of `all`.
    fn bucket_text(&self, component: &str, arch: &str, bucket: usize) -> String {
        let mut text = String::new();
        if let Some(keys) = self.buckets.get(&(component.to_owned(), bucket)) {
            for e in keys.iter().filter_map(|k| self.entries.get(k)) {
                if e.architecture == arch || e.architecture == "all" {
                    text.push_str(&e.paragraph);
                }
            }
        }
        text
    }
}

fn decrement(counts: &mut BTreeMap<String, usize>, key: &str) {
    if let Some(n) = counts.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(key);
        }
    }
}

/// Pool path → the items there (every distribution holding that
/// package version) and their `.deb`'s blob.
type PoolMap = HashMap<String, BTreeMap<String, (Digest, i64)>>;

/// What Ferry keeps in memory for debian feeds.
#[derive(Default)]
pub(crate) struct State {
    dists: Mutex<HashMap<(FeedId, String), DistState>>,
    pools: Mutex<HashMap<FeedId, (i64, Arc<PoolMap>)>>,
    /// Serializes bringing pool maps up to date (each is updated in place).
    pool_refresh: tokio::sync::Mutex<()>,
    render: tokio::sync::Mutex<()>,
}

fn lock_err<T>(_: T) -> CoreError {
    CoreError::Internal("lock poisoned".into())
}

/// Forgets what is kept for a feed (deleted, or its key replaced).
pub(crate) fn forget_feed(ferry: &Ferry, feed: FeedId) {
    if let Ok(mut d) = ferry.0.debian.dists.lock() {
        d.retain(|(f, _), _| *f != feed);
    }
    if let Ok(mut p) = ferry.0.debian.pools.lock() {
        p.remove(&feed);
    }
}

/// Serializes the final check and write of a feed's publishes on this
/// node (one stripe per feed).
static PUBLISH_LOCKS: crate::name_locks::NameLocks = crate::name_locks::NameLocks::new();

/// Publishes a staged `.deb` into `dist`/`component`: reads its control
/// file (off the async threads), checks it, commits the blob and writes
/// the item. The same package version again with the same bytes is a
/// no-op; with other bytes (here, or under the same pool path in another
/// distribution) it is a conflict. Invalid input is refused before
/// anything is stored.
pub async fn upload(
    ferry: &Ferry,
    feed: &FeedRecord,
    dist: &str,
    component: &str,
    staged: StagedBlob,
) -> Result<DebMeta, CoreError> {
    deb::check_dist(dist)?;
    deb::check_component(component)?;
    let info = inspect(ferry, &staged).await?;
    let upload = Upload::new(UploadBody::Staged(staged), info);
    let mut metas = publish(ferry, feed, dist, component, vec![upload]).await?;
    metas
        .pop()
        .ok_or_else(|| CoreError::Internal("upload published nothing".into()))
}

/// Reads a staged upload's control file (Debian Policy §5.3, `deb(5)`),
/// off the async threads. Invalid: not a `.deb`, or its control file
/// lacks or misspells `Package`, `Version` or `Architecture`.
pub async fn inspect(ferry: &Ferry, staged: &StagedBlob) -> Result<deb::DebInfo, CoreError> {
    let path = staged.path().to_path_buf();
    let limits = ferry.config().archive;
    tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path)
            .map_err(|e| CoreError::Internal(format!("opening staged upload {}: {e}", path.display())))?;
        inspect_deb(BufReader::new(file), &limits).map_err(CoreError::from)
    })
    .await
    .map_err(|e| CoreError::Internal(format!("archive inspection failed: {e}")))?
}

/// Reads the control file of a `.deb` held in memory (a small part of a
/// bulk upload), as [`inspect`] does a staged one. Blocking work: call it
/// off the async threads.
pub fn inspect_memory(ferry: &Ferry, bytes: &Bytes) -> Result<deb::DebInfo, CoreError> {
    inspect_deb(std::io::Cursor::new(bytes.as_ref()), &ferry.config().archive).map_err(CoreError::from)
}

/// One inspected `.deb` of a [`publish`], its control data read by
/// [`inspect`] or [`inspect_memory`].
pub type Upload = crate::bulk::Upload<deb::DebInfo>;

/// Publishes inspected `.deb`s into `dist`/`component` all at once (a bulk
/// import, like `reprepro includedeb DIST FILES...`): every package is
/// checked first, and one that conflicts (another file under a published
/// version, here or at its pool path, or two different files of one
/// version in the batch) refuses the whole batch with nothing stored.
/// Versions already published with the same bytes are no-ops. The new
/// items are written in one transaction. Returns each upload's metadata,
/// in order.
pub async fn publish(
    ferry: &Ferry,
    feed: &FeedRecord,
    dist: &str,
    component: &str,
    uploads: Vec<Upload>,
) -> Result<Vec<DebMeta>, CoreError> {
    deb::check_dist(dist)?;
    deb::check_component(component)?;
    let mut metas = Vec::with_capacity(uploads.len());
    let mut parts: Vec<String> = Vec::with_capacity(uploads.len());
    let mut staged = Vec::with_capacity(uploads.len());
    // Each pool file of the upload: its digest and the part it came in.
    let mut in_batch: HashMap<String, (Digest, usize)> = HashMap::new();
    for Upload { part, body, info } in uploads {
        let meta = DebMeta::new(dist, component, &info, body.size(), body.digest())
            .map_err(|e| in_part(&part, e.into()))?;
        match in_batch.get(&meta.filename) {
            Some((d, first)) if *d != meta.sha256 => {
                return Err(in_part(&part, changed_in_batch(&meta, &parts[*first])));
            }
            Some(_) => {
                metas.push(meta);
                parts.push(part);
                continue;
            }
            None => {}
        }
        in_batch.insert(meta.filename.clone(), (meta.sha256, metas.len()));
        staged.push((
            meta.key().map_err(|e| in_part(&part, e.into()))?,
            metas.len(),
            body,
        ));
        metas.push(meta);
        parts.push(part);
    }
    let fresh = unpublished(ferry, feed, &metas, &parts, staged).await?;
    if fresh.is_empty() {
        return Ok(metas);
    }
    let (places, bodies): (Vec<(ferry_types::ItemKey, usize)>, Vec<UploadBody>) =
        fresh.into_iter().map(|(key, i, body)| ((key, i), body)).unzip();
    let digests = ferry.commit_bodies(bodies).await?;
    // Checked again under the feed's publish lock, against what uploads
    // that ran beside this one wrote meanwhile: the same bytes are a no-op
    // here too (two clients publishing one package at once both succeed),
    // other bytes — also under the same pool path in another
    // distribution — the conflict.
    let _publishing = PUBLISH_LOCKS.lock(feed.id, "").await;
    let committed: Vec<(ferry_types::ItemKey, usize, Digest)> = places
        .into_iter()
        .zip(digests)
        .map(|((key, i), d)| (key, i, d))
        .collect();
    let committed = unpublished(ferry, feed, &metas, &parts, committed).await?;
    if committed.is_empty() {
        return Ok(metas);
    }
    let writes: Vec<LocalWrite> = committed
        .iter()
        .map(|(key, i, digest)| {
            LocalWrite::upsert(
                key.clone(),
                metas[*i].to_json(),
                vec![*digest],
                Precondition::Absent,
            )
        })
        .collect();
    match ferry.write(feed, writes).await {
        Ok(outcomes) => {
            let written = committed
                .iter()
                .map(|(_, i, d)| (metas[*i].filename.clone(), metas[*i].key(), *d));
            note_in_pool_map(ferry, feed, &outcomes, written);
            Ok(metas)
        }
        Err(CoreError::Conflict(_)) if committed.len() == 1 => {
            let i = committed[0].1;
            Err(in_part(&parts[i], changed_file(&metas[i])))
        }
        Err(CoreError::Conflict(e)) => Err(CoreError::conflict(format!(
            "{e}: another upload of one of these versions (on another node) came first; \
             nothing of this batch was published"
        ))),
        Err(e) => Err(e),
    }
}

/// Which of `candidates` (item key, index into `metas` and `parts`, and
/// what goes with it) are not published yet: one published with the same
/// bytes is a no-op; one published with other bytes, or whose pool path
/// holds other bytes (in another distribution), is [`changed_file`],
/// naming its part.
async fn unpublished<T>(
    ferry: &Ferry,
    feed: &FeedRecord,
    metas: &[DebMeta],
    parts: &[String],
    candidates: Vec<(ferry_types::ItemKey, usize, T)>,
) -> Result<Vec<(ferry_types::ItemKey, usize, T)>, CoreError> {
    let keys: Vec<ferry_types::ItemKey> = candidates.iter().map(|(key, _, _)| key.clone()).collect();
    let existing = ferry.items_by_keys(feed, &keys).await?;
    let pools = pool_map(ferry, feed).await?;
    let mut out = Vec::with_capacity(candidates.len());
    for ((key, i, with), found) in candidates.into_iter().zip(existing) {
        let meta = &metas[i];
        match found.and_then(|item| item.blobs.first().copied()) {
            Some(stored) if stored == meta.sha256 => continue,
            Some(_) => return Err(in_part(&parts[i], changed_file(meta))),
            None => {}
        }
        if let Some(others) = pools.get(&meta.filename)
            && others.values().any(|(other, _)| *other != meta.sha256)
        {
            return Err(in_part(&parts[i], changed_file(meta)));
        }
        out.push((key, i, with));
    }
    Ok(out)
}

/// The same pool file as `first` (the earlier part's label) with other
/// bytes.
fn changed_in_batch(meta: &DebMeta, first: &str) -> CoreError {
    CoreError::conflict(format!(
        "{} {} ({}) is in this upload twice with different content (also as {first}); \
         nothing of this batch was published",
        meta.package, meta.version, meta.architecture
    ))
}

fn changed_file(meta: &DebMeta) -> CoreError {
    CoreError::conflict(format!(
        "{} {} ({}) already exists with other content as {}; a published version cannot change \
         (apt caches it by version): delete it first, or upload a new version",
        meta.package, meta.version, meta.architecture, meta.filename
    ))
}

/// Deletes one package version. NotFound if there is none.
pub async fn delete(
    ferry: &Ferry,
    feed: &FeedRecord,
    dist: &str,
    component: &str,
    name: &str,
    version: &str,
    arch: &str,
) -> Result<(), CoreError> {
    let key =
        item_key(dist, component, name, version, arch).map_err(|e| CoreError::not_found(e.to_string()))?;
    ferry
        .write(feed, vec![LocalWrite::delete(key, Precondition::Present)])
        .await?;
    Ok(())
}

/// Every live package of the feed (or of one distribution), in key order.
pub async fn packages(
    ferry: &Ferry,
    feed: &FeedRecord,
    dist: Option<&str>,
) -> Result<Vec<DebMeta>, CoreError> {
    let prefix = match dist {
        Some(d) => dist_prefix(d)?,
        None => "deb/".to_owned(),
    };
    let mut out = Vec::new();
    for item in ferry.item_metas(feed, &prefix).await? {
        match DebMeta::from_json_text(&item.meta) {
            Ok(m) => out.push(m),
            Err(e) => tracing::warn!(key = %item.key, "skipping unreadable debian item: {e}"),
        }
    }
    Ok(out)
}

/// Pool path → blob, for the feed's current change-log position. The map
/// kept from the last call is updated in place with the keys changed since.
async fn pool_map(ferry: &Ferry, feed: &FeedRecord) -> Result<Arc<PoolMap>, CoreError> {
    let seq = ferry.current_seq(feed.id).await?;
    let cached = |ferry: &Ferry| -> Result<Option<Arc<PoolMap>>, CoreError> {
        Ok(ferry
            .0
            .debian
            .pools
            .lock()
            .map_err(lock_err)?
            .get(&feed.id)
            .filter(|(at, _)| *at >= seq)
            .map(|(_, map)| map.clone()))
    };
    if let Some(map) = cached(ferry)? {
        return Ok(map);
    }
    let _refreshing = ferry.0.debian.pool_refresh.lock().await;
    if let Some(map) = cached(ferry)? {
        return Ok(map);
    }
    // Taken out so that, once readers let go of it, it is updated in place.
    let previous = ferry.0.debian.pools.lock().map_err(lock_err)?.remove(&feed.id);
    let seq = ferry.current_seq(feed.id).await?;
    let mut changed = None;
    if let Some((at, _)) = &previous {
        let changes = ferry
            .metadata()
            .changes_since(feed.id, *at, MAX_INCREMENTAL_CHANGES)
            .await?;
        if changes.len() < MAX_INCREMENTAL_CHANGES {
            changed = Some(changes.into_iter().map(|c| c.key).collect::<BTreeSet<_>>());
        }
    }
    let map = match (previous, changed) {
        (Some((_, mut map)), Some(keys)) => {
            let inner = Arc::make_mut(&mut map);
            let keyed: Vec<(ferry_types::ItemKey, String)> = keys
                .into_iter()
                .filter_map(|key| pool_path_of_key(&key).map(|path| (key, path)))
                .collect();
            let wanted: Vec<ferry_types::ItemKey> = keyed.iter().map(|(k, _)| k.clone()).collect();
            let items = ferry.items_by_keys(feed, &wanted).await?;
            for ((key, path), live) in keyed.into_iter().zip(items) {
                let entry = inner.entry(path.clone()).or_default();
                match live.and_then(|i| i.blobs.first().map(|d| (*d, i.modified()))) {
                    Some(d) => {
                        entry.insert(key.as_str().to_owned(), d);
                    }
                    None => {
                        entry.remove(key.as_str());
                        if entry.is_empty() {
                            inner.remove(&path);
                        }
                    }
                }
            }
            map
        }
        _ => {
            let mut map: PoolMap = HashMap::new();
            for item in ferry.items(feed, "deb/").await? {
                if let (Some(path), Some(d)) = (pool_path_of_key(&item.key), item.blobs.first()) {
                    map.entry(path)
                        .or_default()
                        .insert(item.key.as_str().to_owned(), (*d, item.modified()));
                }
            }
            Arc::new(map)
        }
    };
    ferry
        .0
        .debian
        .pools
        .lock()
        .map_err(lock_err)?
        .insert(feed.id, (seq, map.clone()));
    Ok(map)
}

/// Adds what an upload just wrote to the feed's pool map, if the map was
/// up to date until the upload's first change and the upload's changes
/// follow each other in the log: the next upload then finds it current
/// instead of reading back this upload's items.
fn note_in_pool_map(
    ferry: &Ferry,
    feed: &FeedRecord,
    outcomes: &[ferry_store::WriteOutcome],
    written: impl Iterator<
        Item = (
            String,
            Result<ferry_types::ItemKey, ferry_formats::FormatError>,
            Digest,
        ),
    >,
) {
    let seqs: Option<Vec<i64>> = outcomes
        .iter()
        .map(|o| match o {
            ferry_store::WriteOutcome::Applied { seq } => Some(*seq),
            _ => None,
        })
        .collect();
    let Some(seqs) = seqs else { return };
    let (Some(first), Some(last)) = (seqs.iter().min(), seqs.iter().max()) else {
        return;
    };
    if last - first + 1 != seqs.len() as i64 {
        return;
    }
    let Ok(mut pools) = ferry.0.debian.pools.lock() else {
        return;
    };
    let Some((at, map)) = pools.get_mut(&feed.id) else {
        return;
    };
    if *at != first - 1 {
        return;
    }
    let inner = Arc::make_mut(map);
    // Just written: changed now (as its stamp says, to the millisecond or so).
    let modified = now_millis();
    for (path, key, digest) in written {
        let Ok(key) = key else { return };
        inner
            .entry(path)
            .or_default()
            .insert(key.as_str().to_owned(), (digest, modified));
    }
    *at = *last;
}

/// The pool path of the package an item key names (None: not a package key).
fn pool_path_of_key(key: &ferry_types::ItemKey) -> Option<String> {
    let parts: Vec<&str> = key.as_str().splitn(6, '/').collect();
    let ["deb", _, comp, name, version, arch] = parts[..] else {
        return None;
    };
    deb::pool_path(comp, name, version, arch).ok()
}

/// The blob of `pool/...` (`path` without the leading `pool/`) and when
/// its item last changed (ms since the epoch). NotFound when no package
/// of the feed lives there.
pub async fn pool_file(ferry: &Ferry, feed: &FeedRecord, path: &str) -> Result<(Digest, i64), CoreError> {
    let full = format!("pool/{path}");
    pool_map(ferry, feed)
        .await?
        .get(&full)
        .and_then(|items| items.values().next().copied())
        .ok_or_else(|| CoreError::not_found(format!("{full} not found")))
}

/// When a rendering that follows one of `previous` (ms) is dated: now, or
/// a second past `previous` when now is not (HTTP-dates have whole
/// seconds).
pub(crate) fn next_modified(previous: Option<i64>) -> i64 {
    let now = now_millis();
    match previous {
        Some(p) if now < p + 1000 => p + 1000,
        _ => now,
    }
}

/// A file under `dists/DIST/`: `Release`, `InRelease`, `Release.gpg`,
/// `COMPONENT/binary-ARCH/Packages[.gz|.xz]`, or
/// `COMPONENT/binary-ARCH/by-hash/{SHA256,SHA512}/HEX` (current and recent
/// renderings; Release lists both hashes with `Acquire-By-Hash: yes`, and
/// apt asks by the strongest), with when the current rendering was made
/// (ms since the epoch; `None` for a by-hash file, named by its content).
/// NotFound for a distribution without packages.
pub async fn dist_file(
    ferry: &Ferry,
    feed: &FeedRecord,
    dist: &str,
    path: &str,
) -> Result<(Bytes, Option<i64>), CoreError> {
    deb::check_dist(dist).map_err(|e| CoreError::not_found(e.to_string()))?;
    let publication = publication(ferry, feed, dist).await?;
    if let Some(body) = publication.files.get(path) {
        let modified = (!path.contains("/by-hash/")).then_some(publication.modified);
        return Ok((body.clone(), modified));
    }
    let not_found = || CoreError::not_found(format!("dists/{dist}/{path} not found"));
    if let Some((_, hash)) = path.split_once("/by-hash/") {
        let states = ferry.0.debian.dists.lock().map_err(lock_err)?;
        if let Some(state) = states.get(&(feed.id, dist.to_owned())) {
            for (_, files) in state.by_hash.iter().rev() {
                if let Some(b) = files.get(hash) {
                    return Ok((b.clone(), None));
                }
            }
        }
    }
    Err(not_found())
}

/// The distribution's rendering for the feed's current position, rendered
/// (and signed) first if there is none.
async fn publication(ferry: &Ferry, feed: &FeedRecord, dist: &str) -> Result<Arc<Publication>, CoreError> {
    let id = (feed.id, dist.to_owned());
    let seq = ferry.current_seq(feed.id).await?;
    let cached = |ferry: &Ferry| -> Result<Option<Arc<Publication>>, CoreError> {
        Ok(ferry
            .0
            .debian
            .dists
            .lock()
            .map_err(lock_err)?
            .get(&id)
            .and_then(|s| s.current.clone())
            .filter(|p| p.seq >= seq))
    };
    if let Some(p) = cached(ferry)? {
        return Ok(p);
    }
    let _rendering = ferry.0.debian.render.lock().await;
    if let Some(p) = cached(ferry)? {
        return Ok(p);
    }
    let seq = ferry.current_seq(feed.id).await?;
    let previous = ferry
        .0
        .debian
        .dists
        .lock()
        .map_err(lock_err)?
        .get_mut(&id)
        .and_then(|s| s.model.take());
    let mut model = current_model(ferry, feed, dist, previous, seq).await?;
    if model.entries.is_empty() {
        return Err(CoreError::not_found(format!(
            "distribution {dist} of feed {} has no packages",
            feed.name
        )));
    }
    let origin = feed.name.to_string();
    let suite = dist.to_owned();
    let (model, rendered) = tokio::task::spawn_blocking(move || {
        let rendered = render(&origin, &suite, &mut model);
        (model, rendered)
    })
    .await
    .map_err(|e| CoreError::Internal(format!("rendering failed: {e}")))?;
    let (release, mut files, by_hash) = rendered?;
    let signed = ferry.sign_text(feed, release.clone()).await;
    let mut states = ferry.0.debian.dists.lock().map_err(lock_err)?;
    let state = states.entry(id).or_default();
    state.model = Some(model);
    let (inrelease, detached) = signed?;
    files.insert("Release".into(), Bytes::from(release));
    files.insert("InRelease".into(), Bytes::from(inrelease));
    files.insert("Release.gpg".into(), Bytes::from(detached));
    let modified = next_modified(state.current.as_ref().map(|c| c.modified));
    let p = Arc::new(Publication { seq, modified, files });
    state.current = Some(p.clone());
    state.by_hash.push_back((seq, by_hash));
    while state.by_hash.len() > BY_HASH_GENERATIONS {
        state.by_hash.pop_front();
    }
    Ok(p)
}

/// Most changes read to bring a previous rendering's packages up to date;
/// past that, the distribution is read whole.
const MAX_INCREMENTAL_CHANGES: usize = 5000;

/// The distribution's live packages at `seq`: the previous model updated
/// with the keys changed since (each read as it is now), or all of them
/// read from the store when there is none or too much changed.
async fn current_model(
    ferry: &Ferry,
    feed: &FeedRecord,
    dist: &str,
    previous: Option<Model>,
    seq: i64,
) -> Result<Model, CoreError> {
    let prefix = dist_prefix(dist)?;
    if let Some(mut model) = previous {
        let changes = ferry
            .metadata()
            .changes_since(feed.id, model.seq, MAX_INCREMENTAL_CHANGES)
            .await?;
        if changes.len() < MAX_INCREMENTAL_CHANGES {
            let keys: BTreeSet<_> = changes
                .into_iter()
                .map(|c| c.key)
                .filter(|k| k.as_str().starts_with(&prefix))
                .collect();
            let keys: Vec<ferry_types::ItemKey> = keys.into_iter().collect();
            let items = ferry.items_by_keys(feed, &keys).await?;
            for (key, item) in keys.into_iter().zip(items) {
                match item.map(|i| DebMeta::from_json(&i.meta)) {
                    Some(Ok(m)) => model.insert(key.as_str().to_owned(), &m),
                    Some(Err(e)) => {
                        tracing::warn!(key = %key, "skipping unreadable debian item: {e}");
                        model.remove(key.as_str());
                    }
                    None => model.remove(key.as_str()),
                }
            }
            model.seq = seq;
            return Ok(model);
        }
    }
    let items = ferry.item_metas(feed, &prefix).await?;
    // Parsing and rendering every package's paragraph is CPU work.
    tokio::task::spawn_blocking(move || {
        let mut model = Model {
            seq,
            ..Model::default()
        };
        for item in items {
            match DebMeta::from_json_text(&item.meta) {
                Ok(m) => model.insert(item.key.as_str().to_owned(), &m),
                Err(e) => tracing::warn!(key = %item.key, "skipping unreadable debian item: {e}"),
            }
        }
        model
    })
    .await
    .map_err(|e| CoreError::Internal(format!("reading the distribution's packages failed: {e}")))
}

type Rendered = (String, HashMap<String, Bytes>, HashMap<String, Bytes>);

/// Renders a distribution's indexes and its (unsigned) `Release`: the
/// buckets the model has no compressed form of are compressed (in
/// parallel), then every index is assembled from its buckets and hashed.
fn render(origin: &str, dist: &str, model: &mut Model) -> Result<Rendered, CoreError> {
    let archs = release_architectures(model.archs.keys().map(String::as_str), &DEFAULT_ARCHITECTURES);
    let components: Vec<String> = model.comps.keys().cloned().collect();
    let mut todo = Vec::new();
    for c in &components {
        for a in &archs {
            for b in 0..BUCKETS {
                let id = (c.clone(), a.clone(), b);
                if !model.packed.contains_key(&id) {
                    let text = Bytes::from(model.bucket_text(c, a, b).into_bytes());
                    todo.push((id, text));
                }
            }
        }
    }
    model.packed.extend(compress_all(todo)?);
    let mut files = HashMap::new();
    let mut by_hash = HashMap::new();
    let mut listed = Vec::new();
    for c in &components {
        for a in &archs {
            let parts = (0..BUCKETS)
                .map(|b| {
                    model
                        .packed
                        .get(&(c.clone(), a.clone(), b))
                        .map(|p| &**p)
                        .ok_or_else(|| CoreError::Internal("index bucket missing".into()))
                })
                .collect::<Result<Vec<&Packed>, CoreError>>()?;
            let hashed = debindex::assemble(&parts)?;
            for (name, h) in ["Packages", "Packages.gz", "Packages.xz"].into_iter().zip(hashed) {
                let path = format!("{c}/binary-{a}/{name}");
                // apt asks by the strongest hash Release lists (SHA512).
                by_hash.insert(format!("SHA256/{}", h.sha256), h.body.clone());
                by_hash.insert(format!("SHA512/{}", h.sha512), h.body.clone());
                listed.push(IndexFile {
                    path: path.clone(),
                    size: h.body.len() as u64,
                    sha256: h.sha256,
                    sha512: h.sha512,
                });
                files.insert(path, h.body);
            }
        }
    }
    let info = ReleaseInfo {
        origin,
        label: origin,
        suite: dist,
        codename: dist,
        date: deb::rfc2822_utc(now_millis()),
        architectures: &archs,
        components: &components,
    };
    Ok((deb::render_release(&info, &listed), files, by_hash))
}

type BucketId = (String, String, usize);

/// Compresses bucket texts on as many threads as there are cores.
fn compress_all(todo: Vec<(BucketId, Bytes)>) -> Result<Vec<(BucketId, Arc<Packed>)>, CoreError> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(todo.len());
    if threads <= 1 {
        return todo
            .into_iter()
            .map(|(id, text)| Ok((id, Arc::new(Packed::new(text)?))))
            .collect();
    }
    let mut shares: Vec<Vec<(BucketId, Bytes)>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, job) in todo.into_iter().enumerate() {
        shares[i % threads].push(job);
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = shares
            .into_iter()
            .map(|share| {
                scope.spawn(move || {
                    share
                        .into_iter()
                        .map(|(id, text)| Ok((id, Arc::new(Packed::new(text)?))))
                        .collect::<Result<Vec<_>, CoreError>>()
                })
            })
            .collect();
        let mut out = Vec::new();
        for h in handles {
            out.extend(
                h.join()
                    .map_err(|_| CoreError::Internal("compression thread panicked".into()))??,
            );
        }
        Ok(out)
    })
}
