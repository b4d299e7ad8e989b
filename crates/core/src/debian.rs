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
//! | request | answer |
//! | --- | --- |
//! | `PUT /debian/FEED/upload/DIST/COMPONENT` | [`upload`] |
//! | `DELETE /debian/FEED/package/DIST/COMPONENT/NAME/VERSION/ARCH` | [`delete`] |
//! | `GET /debian/FEED/dists/DIST/...` | [`dist_file`] |
//! | `GET /debian/FEED/pool/...` | [`pool_file`] |

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io::{BufReader, Write};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ferry_formats::debian::{
    self as deb, DebMeta, IndexFile, ReleaseInfo, dist_prefix, inspect_deb, item_key, release_architectures,
};
use ferry_store::{FeedId, FeedRecord, Precondition, StagedBlob, now_millis};
use ferry_types::Digest;
use sha2::{Digest as _, Sha256, Sha512};

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
    /// The packages it was rendered from, by item key: the next rendering
    /// starts from them and reads only the keys changed since `seq`.
    pkgs: Arc<BTreeMap<String, DebMeta>>,
    /// Files under `dists/DIST/`, by relative path.
    files: HashMap<String, Bytes>,
}

#[derive(Default)]
struct DistState {
    current: Option<Arc<Publication>>,
    /// Index files of recent renderings, by sha256 hex, newest last.
    by_hash: VecDeque<(i64, HashMap<String, Bytes>)>,
}

/// Pool path → the items there (every distribution holding that
/// package version) and their `.deb`'s blob.
type PoolMap = Arc<HashMap<String, BTreeMap<String, Digest>>>;

/// What Ferry keeps in memory for debian feeds.
#[derive(Default)]
pub(crate) struct State {
    dists: Mutex<HashMap<(FeedId, String), DistState>>,
    pools: Mutex<HashMap<FeedId, (i64, PoolMap)>>,
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
    let path = staged.path().to_path_buf();
    let limits = ferry.config().archive;
    let info = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path)
            .map_err(|e| CoreError::Internal(format!("opening staged upload {}: {e}", path.display())))?;
        inspect_deb(BufReader::new(file), &limits).map_err(CoreError::from)
    })
    .await
    .map_err(|e| CoreError::Internal(format!("archive inspection failed: {e}")))??;
    let meta = DebMeta::new(dist, component, &info, staged.size(), staged.digest())?;
    let key = meta.key()?;
    if let Some(existing) = ferry.item(feed, &key).await? {
        if existing.blobs.first() == Some(&meta.sha256) {
            return Ok(meta);
        }
        return Err(changed_file(&meta));
    }
    if let Some(others) = pool_map(ferry, feed).await?.get(&meta.filename)
        && others.values().any(|d| *d != meta.sha256)
    {
        return Err(changed_file(&meta));
    }
    let digest = ferry.commit_blob(staged).await?;
    let write = LocalWrite::upsert(key, meta.to_json(), vec![digest], Precondition::Absent);
    match ferry.write(feed, vec![write]).await {
        Ok(_) => Ok(meta),
        Err(CoreError::Conflict(_)) => Err(changed_file(&meta)),
        Err(e) => Err(e),
    }
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
    for item in ferry.items(feed, &prefix).await? {
        match DebMeta::from_json(&item.meta) {
            Ok(m) => out.push(m),
            Err(e) => tracing::warn!(key = %item.key, "skipping unreadable debian item: {e}"),
        }
    }
    Ok(out)
}

/// Pool path → blob, for the feed's current change-log position.
async fn pool_map(ferry: &Ferry, feed: &FeedRecord) -> Result<PoolMap, CoreError> {
    let seq = ferry.current_seq(feed.id).await?;
    let previous = ferry
        .0
        .debian
        .pools
        .lock()
        .map_err(lock_err)?
        .get(&feed.id)
        .cloned();
    if let Some((at, map)) = &previous
        && *at == seq
    {
        return Ok(map.clone());
    }
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
        (Some((_, prev)), Some(keys)) => {
            let mut map = (*prev).clone();
            for key in keys {
                let Some(path) = pool_path_of_key(&key) else {
                    continue;
                };
                let live = ferry.item(feed, &key).await?;
                let entry = map.entry(path.clone()).or_default();
                match live.and_then(|i| i.blobs.first().copied()) {
                    Some(d) => {
                        entry.insert(key.as_str().to_owned(), d);
                    }
                    None => {
                        entry.remove(key.as_str());
                        if entry.is_empty() {
                            map.remove(&path);
                        }
                    }
                }
            }
            map
        }
        _ => {
            let mut map: HashMap<String, BTreeMap<String, Digest>> = HashMap::new();
            for item in ferry.items(feed, "deb/").await? {
                if let (Some(path), Some(d)) = (pool_path_of_key(&item.key), item.blobs.first()) {
                    map.entry(path)
                        .or_default()
                        .insert(item.key.as_str().to_owned(), *d);
                }
            }
            map
        }
    };
    let map = Arc::new(map);
    ferry
        .0
        .debian
        .pools
        .lock()
        .map_err(lock_err)?
        .insert(feed.id, (seq, map.clone()));
    Ok(map)
}

/// The pool path of the package an item key names (None: not a package key).
fn pool_path_of_key(key: &ferry_types::ItemKey) -> Option<String> {
    let parts: Vec<&str> = key.as_str().splitn(6, '/').collect();
    let ["deb", _, comp, name, version, arch] = parts[..] else {
        return None;
    };
    deb::pool_path(comp, name, version, arch).ok()
}

/// The blob of `pool/...` (`path` without the leading `pool/`). NotFound
/// when no package of the feed lives there.
pub async fn pool_file(ferry: &Ferry, feed: &FeedRecord, path: &str) -> Result<Digest, CoreError> {
    let full = format!("pool/{path}");
    pool_map(ferry, feed)
        .await?
        .get(&full)
        .and_then(|items| items.values().next().copied())
        .ok_or_else(|| CoreError::not_found(format!("{full} not found")))
}

/// A file under `dists/DIST/`: `Release`, `InRelease`, `Release.gpg`,
/// `COMPONENT/binary-ARCH/Packages[.gz|.xz]`, or
/// `COMPONENT/binary-ARCH/by-hash/SHA256/HEX` (current and recent
/// renderings). NotFound for a distribution without packages.
pub async fn dist_file(ferry: &Ferry, feed: &FeedRecord, dist: &str, path: &str) -> Result<Bytes, CoreError> {
    deb::check_dist(dist).map_err(|e| CoreError::not_found(e.to_string()))?;
    let publication = publication(ferry, feed, dist).await?;
    if let Some(body) = publication.files.get(path) {
        return Ok(body.clone());
    }
    let not_found = || CoreError::not_found(format!("dists/{dist}/{path} not found"));
    if let Some((_, hex)) = path.split_once("/by-hash/SHA256/") {
        let states = ferry.0.debian.dists.lock().map_err(lock_err)?;
        if let Some(state) = states.get(&(feed.id, dist.to_owned())) {
            for (_, files) in state.by_hash.iter().rev() {
                if let Some(b) = files.get(hex) {
                    return Ok(b.clone());
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
            .filter(|p| p.seq == seq))
    };
    if let Some(p) = cached(ferry)? {
        return Ok(p);
    }
    let _rendering = ferry.0.debian.render.lock().await;
    if let Some(p) = cached(ferry)? {
        return Ok(p);
    }
    let previous = ferry
        .0
        .debian
        .dists
        .lock()
        .map_err(lock_err)?
        .get(&id)
        .and_then(|s| s.current.clone());
    let pkgs = Arc::new(current_packages(ferry, feed, dist, previous.as_deref()).await?);
    if pkgs.is_empty() {
        return Err(CoreError::not_found(format!(
            "distribution {dist} of feed {} has no packages",
            feed.name
        )));
    }
    let origin = feed.name.to_string();
    let suite = dist.to_owned();
    let input = pkgs.clone();
    let (release, files, by_hash) =
        tokio::task::spawn_blocking(move || render(&origin, &suite, &input, previous.as_deref()))
            .await
            .map_err(|e| CoreError::Internal(format!("rendering failed: {e}")))??;
    let (inrelease, detached) = ferry.sign_text(feed, release.clone()).await?;
    let mut files = files;
    files.insert("Release".into(), Bytes::from(release));
    files.insert("InRelease".into(), Bytes::from(inrelease));
    files.insert("Release.gpg".into(), Bytes::from(detached));
    let p = Arc::new(Publication { seq, pkgs, files });
    let mut states = ferry.0.debian.dists.lock().map_err(lock_err)?;
    let state = states.entry(id).or_default();
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

/// The distribution's live packages by key: the previous rendering's,
/// updated with the keys changed since (each read as it is now), or all
/// of them read from the store when there is no previous rendering or too
/// much changed.
async fn current_packages(
    ferry: &Ferry,
    feed: &FeedRecord,
    dist: &str,
    previous: Option<&Publication>,
) -> Result<BTreeMap<String, DebMeta>, CoreError> {
    let prefix = dist_prefix(dist)?;
    if let Some(prev) = previous {
        let changes = ferry
            .metadata()
            .changes_since(feed.id, prev.seq, MAX_INCREMENTAL_CHANGES)
            .await?;
        if changes.len() < MAX_INCREMENTAL_CHANGES {
            let mut pkgs = (*prev.pkgs).clone();
            let keys: BTreeSet<_> = changes
                .into_iter()
                .map(|c| c.key)
                .filter(|k| k.as_str().starts_with(&prefix))
                .collect();
            for key in keys {
                let live = ferry.item(feed, &key).await?.map(|i| DebMeta::from_json(&i.meta));
                match live {
                    Some(Ok(m)) => {
                        pkgs.insert(key.as_str().to_owned(), m);
                    }
                    Some(Err(e)) => {
                        tracing::warn!(key = %key, "skipping unreadable debian item: {e}");
                        pkgs.remove(key.as_str());
                    }
                    None => {
                        pkgs.remove(key.as_str());
                    }
                }
            }
            return Ok(pkgs);
        }
    }
    let mut pkgs = BTreeMap::new();
    for item in ferry.items(feed, &prefix).await? {
        match DebMeta::from_json(&item.meta) {
            Ok(m) => {
                pkgs.insert(item.key.as_str().to_owned(), m);
            }
            Err(e) => tracing::warn!(key = %item.key, "skipping unreadable debian item: {e}"),
        }
    }
    Ok(pkgs)
}

type Rendered = (String, HashMap<String, Bytes>, HashMap<String, Bytes>);

/// Renders a distribution's indexes and its (unsigned) `Release`.
/// `Packages.gz` and `.xz` of an index whose text did not change since
/// `previous` are taken from it rather than compressed again; the others
/// are compressed in parallel.
fn render(
    origin: &str,
    dist: &str,
    pkgs: &BTreeMap<String, DebMeta>,
    previous: Option<&Publication>,
) -> Result<Rendered, CoreError> {
    let pkgs: Vec<&DebMeta> = pkgs.values().collect();
    let archs = release_architectures(
        pkgs.iter().map(|p| p.architecture.as_str()),
        &DEFAULT_ARCHITECTURES,
    );
    let components: Vec<String> = pkgs
        .iter()
        .map(|p| p.component.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut texts: BTreeMap<(String, String), String> = BTreeMap::new();
    for c in &components {
        for a in &archs {
            texts.insert((c.clone(), a.clone()), String::new());
        }
    }
    for p in pkgs {
        let para = p.paragraph();
        for a in &archs {
            if (p.architecture == *a || p.architecture == "all")
                && let Some(t) = texts.get_mut(&(p.component.clone(), a.clone()))
            {
                t.push_str(&para);
            }
        }
    }
    let mut files = HashMap::new();
    let mut by_hash = HashMap::new();
    let mut listed = Vec::new();
    let texts: Vec<((String, String), Bytes)> = texts
        .into_iter()
        .map(|(k, t)| (k, Bytes::from(t.into_bytes())))
        .collect();
    let compressed: Vec<Result<(Bytes, Bytes), CoreError>> = std::thread::scope(|scope| {
        let jobs: Vec<Job<'_>> = texts
            .iter()
            .map(
                |((c, a), plain)| match unchanged(previous, &format!("{c}/binary-{a}/"), plain) {
                    Some((gz, xz)) => Job::Reused(gz, xz),
                    None => {
                        Job::Compressing(scope.spawn(move || gzip(plain)), scope.spawn(move || xz(plain)))
                    }
                },
            )
            .collect();
        jobs.into_iter()
            .map(|job| match job {
                Job::Reused(gz, xz) => Ok((gz, xz)),
                Job::Compressing(gz, xz) => Ok((Bytes::from(joined(gz)?), Bytes::from(joined(xz)?))),
            })
            .collect()
    });
    for (((c, a), plain), packed) in texts.into_iter().zip(compressed) {
        let (gz, xz) = packed?;
        for (name, body) in [("Packages", plain), ("Packages.gz", gz), ("Packages.xz", xz)] {
            let path = format!("{c}/binary-{a}/{name}");
            let sha256 = hex::encode(Sha256::digest(&body));
            let sha512 = hex::encode(Sha512::digest(&body));
            listed.push(IndexFile {
                path: path.clone(),
                size: body.len() as u64,
                sha256: sha256.clone(),
                sha512,
            });
            by_hash.insert(sha256, body.clone());
            files.insert(path, body);
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

/// One index's compressed forms: taken from the previous rendering, or
/// being made on threads of their own.
enum Job<'scope> {
    Reused(Bytes, Bytes),
    Compressing(
        std::thread::ScopedJoinHandle<'scope, Result<Vec<u8>, CoreError>>,
        std::thread::ScopedJoinHandle<'scope, Result<Vec<u8>, CoreError>>,
    ),
}

fn joined(h: std::thread::ScopedJoinHandle<'_, Result<Vec<u8>, CoreError>>) -> Result<Vec<u8>, CoreError> {
    h.join()
        .map_err(|_| CoreError::Internal("compression thread panicked".into()))?
}

/// The `.gz` and `.xz` of `dir`'s `Packages` in `previous`, if its text is `plain`.
fn unchanged(previous: Option<&Publication>, dir: &str, plain: &Bytes) -> Option<(Bytes, Bytes)> {
    let p = previous?;
    if p.files.get(&format!("{dir}Packages"))? != plain {
        return None;
    }
    Some((
        p.files.get(&format!("{dir}Packages.gz"))?.clone(),
        p.files.get(&format!("{dir}Packages.xz"))?.clone(),
    ))
}

fn gzip(data: &[u8]) -> Result<Vec<u8>, CoreError> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data)
        .and_then(|_| enc.finish())
        .map_err(|e| CoreError::Internal(format!("gzip: {e}")))
}

fn xz(data: &[u8]) -> Result<Vec<u8>, CoreError> {
    // Preset 0 (and gzip level 1): apt reads them alike, and publishing
    // a large distribution stays fast.
    let mut enc = xz2::write::XzEncoder::new(Vec::new(), 0);
    enc.write_all(data)
        .and_then(|_| enc.finish())
        .map_err(|e| CoreError::Internal(format!("xz: {e}")))
}
