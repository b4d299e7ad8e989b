//! RPM feeds (dnf/yum repositories): uploads of `.rpm`s, deletes, and the
//! signed repodata dnf reads, rendered per instance from the items.
//!
//! Item layout (see `ferry_formats::rpm`): one item per package, key
//! `rpm/NAME/EPOCH:VERSION-RELEASE/ARCH`, metadata an [`RpmMeta`] (the
//! header data read at upload: names, EVR, descriptions, sizes, header
//! range, dependencies, file list, the newest changelog entries), one
//! blob: the `.rpm`. Publishing never reopens packages.
//!
//! Repodata is never an item. Each instance renders `primary.xml.gz`,
//! `filelists.xml.gz` and `other.xml.gz` (createrepo's repodata format),
//! names them by their sha256 (`repodata/HEX-primary.xml.gz`), lists them
//! in `repomd.xml` and signs it with the feed's key ([`crate::signing`]):
//! `repomd.xml.asc`, detached and armored. A rendering is kept for the
//! feed's change-log position it was made at; the files of the last
//! [`GENERATIONS`] renderings, and of every rendering superseded less than
//! [`RETAIN_SUPERSEDED`] ago (at most [`MAX_GENERATIONS`]), stay served, so
//! a client holding a slightly older `repomd.xml` still finds what it names.
//!
//! Cost of a publish: each package's three XML fragments are rendered once
//! (when its item is first seen) and kept in one of [`BUCKETS`] buckets
//! (by a hash of the item key); each bucket's text is compressed into one
//! gzip member per file, kept until a package of that bucket changes. A
//! rendering reads the items changed since the last one, recompresses
//! their buckets, and concatenates members: a gzip file may hold a series
//! of members (RFC 1952 §2.2), which zlib's readers (libsolv, librepo,
//! createrepo_c) read as one stream. What remains proportional to the feed
//! is copying and hashing the concatenation (`checksum`, `open-checksum`).
//!
//! | request | answer |
//! | --- | --- |
//! | `PUT /rpm/FEED/upload` | [`upload`] |
//! | `POST /rpm/FEED/upload` (multipart) | [`inspect`] each, then [`publish`] |
//! | `DELETE /rpm/FEED/package/NAME/EVR/ARCH` | [`delete`] |
//! | `GET /rpm/FEED/repodata/...` | [`repodata_file`] |
//! | `GET /rpm/FEED/packages/...` | [`package_file`] |

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io::{BufReader, Write as _};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use ferry_formats::rpm::{self as fmt, RepoFile, RpmInfo, RpmMeta};
use ferry_store::{FeedId, FeedRecord, ItemMetaText, Precondition, StagedBlob, now_millis};
use ferry_types::{Digest, ItemKey};
use sha2::{Digest as _, Sha256};

use crate::bulk::UploadBody;
use crate::{CoreError, Ferry, LocalWrite};

pub use ferry_formats::rpm::RpmMeta as Meta;

/// How many renderings' repodata files stay served at least.
pub const GENERATIONS: usize = 4;
/// How long an older rendering's files stay served after it was
/// superseded, so that a client that has just read its `repomd.xml` finds
/// them even while publishes follow each other quickly...
pub const RETAIN_SUPERSEDED: std::time::Duration = std::time::Duration::from_secs(120);
/// ... up to this many renderings (bounding memory under a publish storm).
pub const MAX_GENERATIONS: usize = 32;
/// How many buckets each repodata file is split into.
pub const BUCKETS: usize = 256;
/// Key prefix of a feed's packages.
const PREFIX: &str = "rpm/";
/// Most changes read to bring a previous rendering up to date; past that,
/// the feed is read whole.
const MAX_INCREMENTAL_CHANGES: usize = 5000;

/// The bucket of an item key (FNV-1a, the same on every instance and run).
fn bucket_of(key: &str) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % BUCKETS as u64) as usize
}

/// The three repodata files, in the order they are kept.
const KINDS: [&str; 3] = ["primary", "filelists", "other"];

/// One rendering of a feed's repodata, signed.
#[derive(Debug)]
struct Publication {
    seq: i64,
    /// When it was rendered (ms since the epoch; see
    /// `debian::next_modified`).
    modified: i64,
    repomd: Bytes,
    asc: Bytes,
}

/// One bucket's text of one repodata file and its gzip member.
#[derive(Debug, Default)]
struct Member {
    plain: Bytes,
    gz: Bytes,
}

struct Entry {
    bucket: usize,
    /// The package's fragments of primary, filelists, other.
    xml: [String; 3],
    /// When it was uploaded, seconds since the epoch.
    uploaded: u64,
}

/// A feed's packages as the last rendering saw them.
#[derive(Default)]
struct Model {
    seq: i64,
    entries: HashMap<String, Entry>,
    buckets: HashMap<usize, BTreeSet<String>>,
    /// (file, bucket) → that bucket's member; dropped when it changes.
    packed: HashMap<(usize, usize), Arc<Member>>,
}

impl Entry {
    /// The package of item `key` with its fragments rendered.
    fn of(key: &str, meta: &RpmMeta) -> Entry {
        Entry {
            bucket: bucket_of(key),
            xml: [
                fmt::primary_package(meta),
                fmt::filelists_package(meta),
                fmt::other_package(meta),
            ],
            uploaded: meta.uploaded,
        }
    }
}

impl Model {
    fn insert(&mut self, key: String, meta: &RpmMeta) {
        let entry = Entry::of(&key, meta);
        self.put(key, entry);
    }

    /// [`Model::insert`] of a rendered entry.
    fn put(&mut self, key: String, entry: Entry) {
        self.remove(&key);
        self.invalidate(entry.bucket);
        self.buckets.entry(entry.bucket).or_default().insert(key.clone());
        self.entries.insert(key, entry);
    }

    fn remove(&mut self, key: &str) {
        let Some(e) = self.entries.remove(key) else {
            return;
        };
        self.invalidate(e.bucket);
        if let Some(keys) = self.buckets.get_mut(&e.bucket) {
            keys.remove(key);
            if keys.is_empty() {
                self.buckets.remove(&e.bucket);
            }
        }
    }

    fn invalidate(&mut self, bucket: usize) {
        for k in 0..KINDS.len() {
            self.packed.remove(&(k, bucket));
        }
    }

    fn bucket_text(&self, kind: usize, bucket: usize) -> String {
        let mut text = String::new();
        if let Some(keys) = self.buckets.get(&bucket) {
            for e in keys.iter().filter_map(|k| self.entries.get(k)) {
                text.push_str(&e.xml[kind]);
            }
        }
        text
    }
}

#[derive(Default)]
struct FeedState {
    current: Option<Arc<Publication>>,
    model: Option<Model>,
    /// Repodata files of recent renderings by file name, newest last,
    /// each with when it was superseded (None: the current one).
    generations: VecDeque<(Option<std::time::Instant>, HashMap<String, Bytes>)>,
}

/// What Ferry keeps in memory for rpm feeds.
#[derive(Default)]
pub(crate) struct State {
    feeds: Mutex<HashMap<FeedId, FeedState>>,
    render: tokio::sync::Mutex<()>,
}

fn lock_err<T>(_: T) -> CoreError {
    CoreError::Internal("lock poisoned".into())
}

/// Forgets what is kept for a feed (deleted, or its key replaced).
pub(crate) fn forget_feed(ferry: &Ferry, feed: FeedId) {
    if let Ok(mut f) = ferry.0.rpm.feeds.lock() {
        f.remove(&feed);
    }
}

/// Reads a staged upload's headers (the RPM file format), off the async
/// threads. Invalid (400, with the reason): not an RPM, truncated, a
/// source RPM, a name/version/release/arch or file list that would
/// escape a path; too large (413): headers over `MAX_HEADER_BYTES`.
pub async fn inspect(staged: &StagedBlob) -> Result<RpmInfo, CoreError> {
    let path = staged.path().to_path_buf();
    let len = staged.size();
    tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path)
            .map_err(|e| CoreError::Internal(format!("opening staged upload {}: {e}", path.display())))?;
        fmt::inspect_rpm(BufReader::new(file), len).map_err(CoreError::from)
    })
    .await
    .map_err(|e| CoreError::Internal(format!("rpm inspection failed: {e}")))?
}

/// Reads the headers of an `.rpm` held in memory (a small part of a bulk
/// upload), as [`inspect`] does a staged one. Blocking work: call it off
/// the async threads.
pub fn inspect_memory(bytes: &Bytes) -> Result<RpmInfo, CoreError> {
    fmt::inspect_rpm(std::io::Cursor::new(bytes.as_ref()), bytes.len() as u64).map_err(CoreError::from)
}

/// Publishes a staged `.rpm`: reads its headers, then commits the blob
/// and writes the item ([`publish`] of one). The same NEVRA again with the
/// same bytes is a no-op (returning the stored metadata); with other bytes
/// it is a conflict (409). Invalid input is refused before anything is stored.
pub async fn upload(ferry: &Ferry, feed: &FeedRecord, staged: StagedBlob) -> Result<RpmMeta, CoreError> {
    let info = inspect(&staged).await?;
    let mut metas = publish(ferry, feed, vec![Upload::new(UploadBody::Staged(staged), info)]).await?;
    metas
        .pop()
        .ok_or_else(|| CoreError::Internal("upload published nothing".into()))
}

/// Serializes the final check and write of a feed's publishes on this
/// node (one stripe per feed).
static PUBLISH_LOCKS: crate::name_locks::NameLocks = crate::name_locks::NameLocks::new();

/// One inspected `.rpm` of a [`publish`], its header data read by
/// [`inspect`] or [`inspect_memory`].
pub type Upload = crate::bulk::Upload<RpmInfo>;

use crate::bulk::in_part;

/// Publishes inspected `.rpm`s all at once (a bulk import, like
/// `createrepo_c` over a directory): every package is checked first, and
/// one that conflicts (another file under a published NEVRA, or two
/// different files of one NEVRA in the batch) refuses the whole batch,
/// naming its part, with nothing stored. NEVRAs already published with
/// the same bytes are no-ops. The new blobs are committed together
/// ([`Ferry::commit_staged_blobs`]: one lease transaction, placed
/// concurrently) and the new items written in one transaction.
/// Returns each upload's metadata, in order (for a no-op, the stored one).
pub async fn publish(
    ferry: &Ferry,
    feed: &FeedRecord,
    uploads: Vec<Upload>,
) -> Result<Vec<RpmMeta>, CoreError> {
    let uploaded = (now_millis() / 1000).max(0) as u64;
    let mut metas = Vec::with_capacity(uploads.len());
    let mut parts: Vec<String> = Vec::with_capacity(uploads.len());
    let mut fresh = Vec::with_capacity(uploads.len());
    // Each package of the upload: its digest and the part it came in.
    let mut in_batch: HashMap<ItemKey, (Digest, usize)> = HashMap::new();
    for u in uploads {
        let meta = RpmMeta {
            info: u.info,
            size: u.body.size(),
            sha256: u.body.digest(),
            uploaded,
        };
        let key = meta.key().map_err(|e| in_part(&u.part, e.into()))?;
        match in_batch.get(&key) {
            Some((d, first)) if *d != meta.sha256 => {
                return Err(in_part(&u.part, changed_in_batch(&meta, &parts[*first])));
            }
            Some(_) => {}
            None => {
                in_batch.insert(key.clone(), (meta.sha256, metas.len()));
                fresh.push((key, metas.len(), u.body));
            }
        }
        metas.push(meta);
        parts.push(u.part);
    }
    let new = unpublished(ferry, feed, &mut metas, &parts, fresh).await?;
    if new.is_empty() {
        return Ok(metas);
    }
    let (places, blobs): (Vec<(ItemKey, usize)>, Vec<UploadBody>) =
        new.into_iter().map(|(key, i, blob)| ((key, i), blob)).unzip();
    let digests = ferry.commit_bodies(blobs).await?;
    // Checked again under the feed's publish lock, against what uploads
    // that ran beside this one wrote meanwhile: the same bytes are a
    // no-op here too (two clients publishing one package at once both
    // succeed), other bytes the conflict.
    let _publishing = PUBLISH_LOCKS.lock(feed.id, "").await;
    let committed: Vec<(ItemKey, usize, Digest)> = places
        .into_iter()
        .zip(digests)
        .map(|((key, i), d)| (key, i, d))
        .collect();
    let committed = unpublished(ferry, feed, &mut metas, &parts, committed).await?;
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
        Ok(_) => Ok(metas),
        Err(CoreError::Conflict(_)) if committed.len() == 1 => {
            let i = committed[0].1;
            Err(in_part(&parts[i], changed_file(&metas[i])))
        }
        Err(CoreError::Conflict(e)) => Err(CoreError::conflict(format!(
            "{e}: another upload of one of these packages (on another node) came first; \
             nothing of this batch was published"
        ))),
        Err(e) => Err(e),
    }
}

/// Which of `candidates` (item key, index into `metas` and `parts`, and
/// what goes with it) are not published yet. One published with the same
/// bytes is a no-op (its `metas` entry becomes the stored metadata); one
/// published with other bytes is [`changed_file`], naming its part.
async fn unpublished<T>(
    ferry: &Ferry,
    feed: &FeedRecord,
    metas: &mut [RpmMeta],
    parts: &[String],
    candidates: Vec<(ItemKey, usize, T)>,
) -> Result<Vec<(ItemKey, usize, T)>, CoreError> {
    let keys: Vec<ItemKey> = candidates.iter().map(|(key, _, _)| key.clone()).collect();
    let existing = ferry.items_by_keys(feed, &keys).await?;
    let mut out = Vec::with_capacity(candidates.len());
    for ((key, i, with), found) in candidates.into_iter().zip(existing) {
        match found {
            None => out.push((key, i, with)),
            Some(item) if item.blobs.first() == Some(&metas[i].sha256) => {
                if let Ok(stored) = RpmMeta::from_json(&item.meta) {
                    metas[i] = stored;
                }
            }
            Some(_) => return Err(in_part(&parts[i], changed_file(&metas[i]))),
        }
    }
    Ok(out)
}

/// The same NEVRA as `first` (the earlier part's label) with other bytes.
fn changed_in_batch(meta: &RpmMeta, first: &str) -> CoreError {
    CoreError::conflict(format!(
        "{}-{}.{} is in this upload twice with different content (also as {first}); \
         nothing of this batch was published",
        meta.info.name,
        meta.evr(),
        meta.info.arch
    ))
}

fn changed_file(meta: &RpmMeta) -> CoreError {
    CoreError::conflict(format!(
        "{}-{}.{} already exists with other content; a published package cannot change \
         (dnf caches it by NEVRA): delete it first, or upload a new release",
        meta.info.name,
        meta.evr(),
        meta.info.arch
    ))
}

/// Deletes one package; `evr` is `[EPOCH:]VERSION-RELEASE`. NotFound if
/// there is none.
pub async fn delete(
    ferry: &Ferry,
    feed: &FeedRecord,
    name: &str,
    evr: &str,
    arch: &str,
) -> Result<(), CoreError> {
    let not_found = |e: ferry_formats::FormatError| CoreError::not_found(e.to_string());
    let (epoch, version, release) = fmt::parse_evr(evr).map_err(not_found)?;
    let key = fmt::item_key(name, epoch, &version, &release, arch).map_err(not_found)?;
    ferry
        .write(feed, vec![LocalWrite::delete(key, Precondition::Present)])
        .await?;
    Ok(())
}

/// Every live package of the feed, in key order.
pub async fn packages(ferry: &Ferry, feed: &FeedRecord) -> Result<Vec<RpmMeta>, CoreError> {
    let mut out = Vec::new();
    for item in ferry.item_metas(feed, PREFIX).await? {
        match RpmMeta::from_json_text(&item.meta) {
            Ok(m) => out.push(m),
            Err(e) => tracing::warn!(key = %item.key, "skipping unreadable rpm item: {e}"),
        }
    }
    Ok(out)
}

/// The blob of `packages/PATH` (`path` without `packages/`) and when its
/// item last changed (ms since the epoch). NotFound when no package of the
/// feed lives there.
pub async fn package_file(ferry: &Ferry, feed: &FeedRecord, path: &str) -> Result<(Digest, i64), CoreError> {
    let not_found = || CoreError::not_found(format!("packages/{path} not found"));
    let key: ItemKey = fmt::key_of_location(path).ok_or_else(not_found)?;
    ferry
        .item(feed, &key)
        .await?
        .and_then(|i| i.blobs.first().map(|d| (*d, i.modified())))
        .ok_or_else(not_found)
}

/// A file under `repodata/`: `repomd.xml`, `repomd.xml.asc`, or a
/// `HEX-TYPE.xml.gz` of the current or a recent rendering; with when the
/// rendering was made (ms since the epoch) for the first two, `None` for
/// a part named by its hash.
pub async fn repodata_file(
    ferry: &Ferry,
    feed: &FeedRecord,
    name: &str,
) -> Result<(Bytes, Option<i64>), CoreError> {
    let publication = publication(ferry, feed).await?;
    match name {
        "repomd.xml" => return Ok((publication.repomd.clone(), Some(publication.modified))),
        "repomd.xml.asc" => return Ok((publication.asc.clone(), Some(publication.modified))),
        _ => {}
    }
    let feeds = ferry.0.rpm.feeds.lock().map_err(lock_err)?;
    if let Some(state) = feeds.get(&feed.id) {
        for (_, files) in state.generations.iter().rev() {
            if let Some(b) = files.get(name) {
                return Ok((b.clone(), None));
            }
        }
    }
    Err(CoreError::not_found(format!("repodata/{name} not found")))
}

/// The feed's rendering for its current position, rendered and signed
/// first if there is none.
async fn publication(ferry: &Ferry, feed: &FeedRecord) -> Result<Arc<Publication>, CoreError> {
    let seq = ferry.current_seq(feed.id).await?;
    let cached = |ferry: &Ferry| -> Result<Option<Arc<Publication>>, CoreError> {
        Ok(ferry
            .0
            .rpm
            .feeds
            .lock()
            .map_err(lock_err)?
            .get(&feed.id)
            .and_then(|s| s.current.clone())
            .filter(|p| p.seq >= seq))
    };
    if let Some(p) = cached(ferry)? {
        return Ok(p);
    }
    let _rendering = ferry.0.rpm.render.lock().await;
    if let Some(p) = cached(ferry)? {
        return Ok(p);
    }
    let seq = ferry.current_seq(feed.id).await?;
    let previous = ferry
        .0
        .rpm
        .feeds
        .lock()
        .map_err(lock_err)?
        .get_mut(&feed.id)
        .and_then(|s| s.model.take());
    let mut model = current_model(ferry, feed, previous, seq).await?;
    let (model, rendered) = tokio::task::spawn_blocking(move || {
        let rendered = render(&mut model);
        (model, rendered)
    })
    .await
    .map_err(|e| CoreError::Internal(format!("rendering failed: {e}")))?;
    let (repomd, files) = rendered?;
    let asc = ferry.sign_detached(feed, repomd.clone()).await;
    let mut feeds = ferry.0.rpm.feeds.lock().map_err(lock_err)?;
    let state = feeds.entry(feed.id).or_default();
    state.model = Some(model);
    let modified = crate::debian::next_modified(state.current.as_ref().map(|c| c.modified));
    let p = Arc::new(Publication {
        seq,
        modified,
        repomd,
        asc: Bytes::from(asc?),
    });
    state.current = Some(p.clone());
    let now = std::time::Instant::now();
    if let Some(last) = state.generations.back_mut() {
        last.0 = Some(now);
    }
    state.generations.push_back((None, files));
    while state.generations.len() > GENERATIONS
        && state.generations.front().is_some_and(|(superseded, _)| {
            state.generations.len() > MAX_GENERATIONS
                || superseded.is_some_and(|t| now.duration_since(t) > RETAIN_SUPERSEDED)
        })
    {
        state.generations.pop_front();
    }
    Ok(p)
}

/// The feed's live packages at `seq`: the previous model updated with the
/// keys changed since, or all of them read when there is none or too much
/// changed.
async fn current_model(
    ferry: &Ferry,
    feed: &FeedRecord,
    previous: Option<Model>,
    seq: i64,
) -> Result<Model, CoreError> {
    if let Some(mut model) = previous {
        let changes = ferry
            .metadata()
            .changes_since(feed.id, model.seq, MAX_INCREMENTAL_CHANGES)
            .await?;
        if changes.len() < MAX_INCREMENTAL_CHANGES {
            let keys: BTreeSet<_> = changes
                .into_iter()
                .map(|c| c.key)
                .filter(|k| k.as_str().starts_with(PREFIX))
                .collect();
            let keys: Vec<ItemKey> = keys.into_iter().collect();
            let items = ferry.items_by_keys(feed, &keys).await?;
            for (key, item) in keys.into_iter().zip(items) {
                match item.map(|i| RpmMeta::from_json(&i.meta)) {
                    Some(Ok(m)) => model.insert(key.as_str().to_owned(), &m),
                    Some(Err(e)) => {
                        tracing::warn!(key = %key, "skipping unreadable rpm item: {e}");
                        model.remove(key.as_str());
                    }
                    None => model.remove(key.as_str()),
                }
            }
            model.seq = seq;
            return Ok(model);
        }
    }
    let items = ferry.item_metas(feed, PREFIX).await?;
    // Parsing and rendering every package's fragments is CPU work.
    tokio::task::spawn_blocking(move || {
        let mut model = Model {
            seq,
            ..Model::default()
        };
        for (key, entry) in entries_of(items)? {
            model.put(key, entry);
        }
        Ok(model)
    })
    .await
    .map_err(|e| CoreError::Internal(format!("reading the feed's packages failed: {e}")))?
}

fn gzip(data: &[u8]) -> Result<Bytes, CoreError> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data)
        .and_then(|_| enc.finish())
        .map(Bytes::from)
        .map_err(|e| CoreError::Internal(format!("gzip: {e}")))
}

/// Renders `repomd.xml` (unsigned) and the repodata files it names, by
/// file name: missing bucket members are compressed (on as many threads
/// as there are cores), then each file is assembled and hashed.
fn render(model: &mut Model) -> Result<(Bytes, HashMap<String, Bytes>), CoreError> {
    let mut todo = Vec::new();
    for kind in 0..KINDS.len() {
        for bucket in 0..BUCKETS {
            if !model.packed.contains_key(&(kind, bucket)) {
                todo.push((
                    (kind, bucket),
                    Bytes::from(model.bucket_text(kind, bucket).into_bytes()),
                ));
            }
        }
    }
    model.packed.extend(compress_all(todo)?);
    let count = model.entries.len();
    let heads = [
        (fmt::primary_head(count), fmt::PRIMARY_TAIL),
        (fmt::filelists_head(count), fmt::FILELISTS_TAIL),
        (fmt::other_head(count), fmt::OTHER_TAIL),
    ];
    let mut listed = Vec::new();
    let mut files = HashMap::new();
    for (kind, (head, tail)) in heads.into_iter().enumerate() {
        let members = (0..BUCKETS)
            .map(|b| {
                model
                    .packed
                    .get(&(kind, b))
                    .cloned()
                    .ok_or_else(|| CoreError::Internal("repodata bucket missing".into()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (head_gz, tail_gz) = (gzip(head.as_bytes())?, gzip(tail.as_bytes())?);
        let mut open = Sha256::new();
        open.update(head.as_bytes());
        let mut open_size = head.len() + tail.len();
        let mut gz = BytesMut::with_capacity(
            head_gz.len() + tail_gz.len() + members.iter().map(|m| m.gz.len()).sum::<usize>(),
        );
        gz.extend_from_slice(&head_gz);
        for m in &members {
            open.update(&m.plain);
            open_size += m.plain.len();
            gz.extend_from_slice(&m.gz);
        }
        open.update(tail.as_bytes());
        gz.extend_from_slice(&tail_gz);
        let gz = gz.freeze();
        let sha256 = hex::encode(Sha256::digest(&gz));
        let name = format!("{sha256}-{}.xml.gz", KINDS[kind]);
        listed.push(RepoFile {
            kind: KINDS[kind],
            href: format!("repodata/{name}"),
            sha256,
            size: gz.len() as u64,
            open_sha256: hex::encode(open.finalize()),
            open_size: open_size as u64,
        });
        files.insert(name, gz);
    }
    // The revision is the newest package's upload time, not the time of
    // rendering: the same packages give the same `repomd.xml` after a
    // restart and on every instance the feed is replicated to, so clients
    // see no change where there is none.
    let revision = model.entries.values().map(|e| e.uploaded).max().unwrap_or(0);
    let repomd = fmt::render_repomd(revision, &listed);
    Ok((Bytes::from(repomd.into_bytes()), files))
}

type BucketId = (usize, usize);

fn pack(text: Bytes) -> Result<Arc<Member>, CoreError> {
    if text.is_empty() {
        return Ok(Arc::new(Member::default()));
    }
    let gz = gzip(&text)?;
    Ok(Arc::new(Member { plain: text, gz }))
}

/// Parses the items' metadata and renders their fragments, on as many
/// threads as there are cores (the items split in as many runs); an
/// unreadable item is left out with a warning. Blocking.
fn entries_of(items: Vec<ItemMetaText>) -> Result<Vec<(String, Entry)>, CoreError> {
    let entries = |run: &[ItemMetaText]| -> Vec<(String, Entry)> {
        run.iter()
            .filter_map(|item| match RpmMeta::from_json_text(&item.meta) {
                Ok(m) => Some((item.key.as_str().to_owned(), Entry::of(item.key.as_str(), &m))),
                Err(e) => {
                    tracing::warn!(key = %item.key, "skipping unreadable rpm item: {e}");
                    None
                }
            })
            .collect()
    };
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    if threads <= 1 || items.len() < 256 {
        return Ok(entries(&items));
    }
    let run = items.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(run)
            .map(|c| scope.spawn(move || entries(c)))
            .collect();
        let mut out = Vec::with_capacity(items.len());
        for h in handles {
            out.extend(
                h.join()
                    .map_err(|_| CoreError::Internal("rendering thread panicked".into()))?,
            );
        }
        Ok(out)
    })
}

/// Compresses bucket texts on as many threads as there are cores.
fn compress_all(todo: Vec<(BucketId, Bytes)>) -> Result<Vec<(BucketId, Arc<Member>)>, CoreError> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(todo.len());
    if threads <= 1 || todo.len() < 8 {
        return todo.into_iter().map(|(id, t)| Ok((id, pack(t)?))).collect();
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
                        .map(|(id, t)| Ok((id, pack(t)?)))
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

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn meta(name: &str) -> RpmMeta {
        RpmMeta {
            info: RpmInfo {
                name: name.into(),
                epoch: 0,
                version: "1.0".into(),
                release: "1".into(),
                arch: "noarch".into(),
                summary: "s".into(),
                description: "d <&>".into(),
                license: "MIT".into(),
                url: String::new(),
                vendor: String::new(),
                group: String::new(),
                packager: String::new(),
                buildhost: String::new(),
                sourcerpm: String::new(),
                buildtime: 1,
                installed_size: 2,
                archive_size: 3,
                header_start: 4,
                header_end: 5,
                deps: Default::default(),
                files: vec![],
                changelog: vec![],
            },
            size: 10,
            sha256: Digest::of(name.as_bytes()),
            uploaded: 1,
        }
    }

    #[test]
    fn a_rendering_is_one_valid_gzip_stream_of_every_package() {
        let mut model = Model::default();
        for i in 0..50 {
            let m = meta(&format!("p{i}"));
            model.insert(m.key().unwrap().as_str().to_owned(), &m);
        }
        let (repomd, files) = render(&mut model).unwrap();
        let repomd = String::from_utf8(repomd.to_vec()).unwrap();
        let (name, gz) = files
            .iter()
            .find(|(n, _)| n.ends_with("-primary.xml.gz"))
            .unwrap();
        assert!(repomd.contains(&format!("repodata/{name}")));
        let mut text = String::new();
        flate2::read::MultiGzDecoder::new(gz.as_ref())
            .read_to_string(&mut text)
            .unwrap();
        assert!(text.starts_with("<?xml"));
        assert!(text.contains("packages=\"50\""));
        assert_eq!(text.matches("<package type=\"rpm\">").count(), 50);
        assert!(text.ends_with("</metadata>\n"));
        assert!(repomd.contains(&hex::encode(Sha256::digest(text.as_bytes()))));
        // One change recompresses one bucket of each file only.
        let m = meta("p0");
        model.remove(m.key().unwrap().as_str());
        assert_eq!(model.packed.len(), 3 * BUCKETS - 3);
    }

    /// A feed read whole is parsed and rendered on several threads: every
    /// readable package comes out once, with the fragments one package
    /// alone gets, and an unreadable one is left out.
    #[test]
    fn a_feed_read_whole_renders_every_package_once() {
        let mut items: Vec<ItemMetaText> = (0..1001)
            .map(|i| {
                let m = meta(&format!("p{i:04}"));
                ItemMetaText {
                    key: m.key().unwrap(),
                    meta: serde_json::to_string(&m.to_json()).unwrap(),
                }
            })
            .collect();
        items[500].meta = "{\"not\": \"an rpm\"}".into();
        let entries = entries_of(items).unwrap();
        assert_eq!(entries.len(), 1000);
        let keys: BTreeSet<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys.len(), 1000);
        for i in [0, 499, 501, 1000] {
            let m = meta(&format!("p{i:04}"));
            let key = m.key().unwrap();
            let (_, e) = entries.iter().find(|(k, _)| k == key.as_str()).unwrap();
            let alone = Entry::of(key.as_str(), &m);
            assert_eq!((e.bucket, &e.xml), (alone.bucket, &alone.xml), "{key}");
        }
        assert!(keys.iter().all(|k| !k.contains("p0500")));
    }
}
