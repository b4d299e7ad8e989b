//! nuget feeds: push, unlist and relist, hard delete, and the queries the
//! v3 and v2 (OData) APIs answer (Microsoft Learn, "NuGet Server API";
//! OData v2 as NuGet 2.x and Chocolatey use it).
//!
//! Item layout (see `ferry_formats::nuget`): one item per version, key
//! `pkg/{id lowercase}/{normalized version lowercase}`, metadata a
//! [`PackageItem`] (nuspec fields, display-case id, `listed`, size,
//! SHA-512), blob: the `.nupkg`. Unlisting rewrites the item (a new stamp,
//! so it replicates); delete by an admin removes it. Every index, search
//! result and feed is derived from the items and cached until the feed
//! changes ([`cached`]), on every instance, so a spoke answers from what it
//! replicated.

use std::collections::BTreeMap;

use base64::Engine;
use bytes::Bytes;
use ferry_formats::nuget::odata::{self, Value};
use ferry_formats::nuget::{
    NuGetVersion, PackageItem, V2Entry, VersionRange, check_file_name, id_key, inspect_nupkg, package_prefix,
    supports_any, version_key,
};
use ferry_store::{FeedRecord, ItemRecord, Precondition, StagedBlob};
use ferry_types::{Digest, ItemKey};
use sha2::Digest as _;

use crate::{CoreError, Ferry, LocalWrite, Rendered};

/// Largest page a v2 query or v3 search returns.
pub const MAX_PAGE: usize = 100;

/// A stored version, as needed to serve it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Stored {
    pub key: String,
    pub item: PackageItem,
    /// The `.nupkg` blob's digest (hex).
    pub digest: String,
    /// When the item last changed (Unix ms).
    pub modified: i64,
    /// Downloads of this version recorded on this instance.
    #[serde(default)]
    pub downloads: u64,
}

impl Stored {
    fn from_record(rec: ItemRecord) -> Result<Self, CoreError> {
        let item = PackageItem::from_json(&rec.meta)?;
        let digest = rec
            .blobs
            .first()
            .ok_or_else(|| CoreError::Internal(format!("nuget item {} has no blob", rec.key)))?;
        Ok(Self {
            key: rec.key.as_str().to_owned(),
            item,
            digest: digest.hex(),
            modified: rec.modified(),
            downloads: rec.downloads,
        })
    }

    /// The `.nupkg` blob.
    pub fn blob(&self) -> Result<Digest, CoreError> {
        Digest::from_hex(&self.digest)
            .map_err(|_| CoreError::Internal(format!("nuget item {}: bad digest", self.key)))
    }

    pub fn item_key(&self) -> Result<ItemKey, CoreError> {
        ItemKey::new(self.key.clone()).map_err(|e| CoreError::Internal(e.to_string()))
    }
}

fn readable(rec: ItemRecord) -> Option<Stored> {
    let key = rec.key.clone();
    match Stored::from_record(rec) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(%key, error = %e, "skipping unreadable nuget item");
            None
        }
    }
}

/// Pushes a `.nupkg` already streamed into staging. It is read off the
/// async threads ([`inspect_nupkg`]: zip paths, bombs, one nuspec) and
/// hashed (SHA-512, v2's `PackageHash`). `file_name` is the name the
/// client sent with the file part, checked against the package
/// ([`check_file_name`]). Errors: Invalid for bad packages, Conflict when
/// the id and version exist (whatever their spelling), TooLarge for bombs.
pub async fn push(
    ferry: &Ferry,
    feed: &FeedRecord,
    staged: StagedBlob,
    file_name: Option<&str>,
) -> Result<PackageItem, CoreError> {
    let path = staged.path().to_path_buf();
    let limits = ferry.config().archive;
    let (spec, sha512) = tokio::task::spawn_blocking(move || -> Result<_, CoreError> {
        let open = || {
            std::fs::File::open(&path)
                .map_err(|e| CoreError::Internal(format!("opening staged .nupkg {}: {e}", path.display())))
        };
        let spec = inspect_nupkg(std::io::BufReader::new(open()?), &limits)?;
        let mut hasher = sha2::Sha512::new();
        std::io::copy(&mut open()?, &mut hasher)
            .map_err(|e| CoreError::Internal(format!("hashing staged .nupkg: {e}")))?;
        let sha512 = base64::engine::general_purpose::STANDARD.encode(hasher.finalize());
        Ok((spec, sha512))
    })
    .await
    .map_err(|e| CoreError::Internal(format!(".nupkg inspection failed: {e}")))??;
    if let Some(name) = file_name {
        check_file_name(name, &spec)?;
    }
    let key = version_key(&spec.id, &spec.item.version)?;
    let exists = || {
        CoreError::conflict(format!(
            "package {} {} already exists in feed {}; versions cannot be overwritten",
            spec.id, spec.item.version, feed.name
        ))
    };
    if ferry.item(feed, &key).await?.is_some() {
        return Err(exists());
    }
    let mut item = spec.item.clone();
    item.size = staged.size();
    item.sha512 = sha512;
    item.published = ferry_store::now_millis();
    let digest = ferry.commit_blob(staged).await?;
    // Keep the display case the id already has in this feed: looked up and
    // written under the package's lock, so versions pushed at once in
    // different cases (`Case.Pkg 1.0`, `CASE.PKG 2.0`) end in one case.
    let _guard = lock_package(feed, &item.id).await;
    if let Some(first) = ferry
        .items_page(feed, &package_prefix(&item.id), None, 1)
        .await?
        .first()
        && let Ok(other) = PackageItem::from_json(&first.meta)
    {
        item.id = other.id;
    }
    let write = LocalWrite::upsert(key, item.to_json(), vec![digest], Precondition::Absent);
    match ferry.write(feed, vec![write]).await {
        Ok(_) => Ok(item),
        Err(CoreError::Conflict(_)) => Err(exists()),
        Err(e) => Err(e),
    }
}

static PACKAGE_LOCKS: crate::name_locks::NameLocks = crate::name_locks::NameLocks::new();

/// Serializes, on this instance, the display-case lookup and the write of
/// pushes of one package id (any case).
async fn lock_package(feed: &FeedRecord, id: &str) -> tokio::sync::MutexGuard<'static, ()> {
    PACKAGE_LOCKS.lock(feed.id, &id_key(id)).await
}

/// One version by any id case and version spelling. NotFound otherwise.
pub async fn version(ferry: &Ferry, feed: &FeedRecord, id: &str, version: &str) -> Result<Stored, CoreError> {
    let missing = || CoreError::not_found(format!("package {id} {version} not found in feed {}", feed.name));
    let key = version_key(id, version).map_err(|_| missing())?;
    let rec = ferry.item(feed, &key).await?.ok_or_else(missing)?;
    Stored::from_record(rec)
}

/// Unlists (`listed: false`) or relists a version: a rewrite of the item
/// with a new stamp, so it replicates and the latest action wins.
pub async fn set_listed(
    ferry: &Ferry,
    feed: &FeedRecord,
    id: &str,
    ver: &str,
    listed: bool,
) -> Result<(), CoreError> {
    let mut v = version(ferry, feed, id, ver).await?;
    v.item.listed = listed;
    let write = LocalWrite::upsert(
        v.item_key()?,
        v.item.to_json(),
        vec![v.blob()?],
        Precondition::Present,
    );
    ferry.write(feed, vec![write]).await?;
    Ok(())
}

/// Deletes a version for good (administrators; the route checks). The
/// deletion replicates.
pub async fn delete(ferry: &Ferry, feed: &FeedRecord, id: &str, ver: &str) -> Result<(), CoreError> {
    let v = version(ferry, feed, id, ver).await?;
    ferry
        .write(
            feed,
            vec![LocalWrite::delete(v.item_key()?, Precondition::Present)],
        )
        .await?;
    Ok(())
}

/// Every version of one package (any id case), unordered.
pub async fn package(ferry: &Ferry, feed: &FeedRecord, id: &str) -> Result<Vec<Stored>, CoreError> {
    Ok(ferry
        .items(feed, &package_prefix(id))
        .await?
        .into_iter()
        .filter_map(readable)
        .collect())
}

/// Every version in the feed, in key order, with its download count: read
/// once per feed change or recording of counts.
pub async fn all(ferry: &Ferry, feed: &FeedRecord) -> Result<Vec<Stored>, CoreError> {
    let bytes = ferry
        .cached_index_counted(feed, "nuget:all", || async {
            let all: Vec<Stored> = ferry
                .items(feed, "pkg/")
                .await?
                .into_iter()
                .filter_map(readable)
                .collect();
            serde_json::to_vec(&all)
                .map(Bytes::from)
                .map_err(|e| CoreError::Internal(format!("nuget summary: {e}")))
        })
        .await?;
    serde_json::from_slice(&bytes).map_err(|e| CoreError::Internal(format!("nuget summary: {e}")))
}

/// A response rendered by `render` and kept until the feed changes (and,
/// when it shows download counts, `counted`, until new counts are
/// recorded), with its entity tag; `key` names it (the request URL, base
/// included, is a good key).
pub async fn cached<F, Fut>(
    ferry: &Ferry,
    feed: &FeedRecord,
    key: &str,
    counted: bool,
    render: F,
) -> Result<Rendered, CoreError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<Bytes, CoreError>>,
{
    ferry
        .cached_rendered(feed, &format!("nuget:r:{key}"), counted, render)
        .await
}

/// The newest change of any version (Unix ms), for feed `updated` dates.
pub fn newest(items: &[Stored]) -> i64 {
    items.iter().map(|s| s.modified).max().unwrap_or(0)
}

// ---------------------------------------------------------------------------
// v3 search

/// v3 search: packages whose id, title, description or tags contain `q`
/// (case-insensitively; `id:x` or `packageid:x` matches the id exactly),
/// exact id first then by id; listed versions only, without prereleases
/// unless `prerelease`, without SemVer 2 versions unless `semver2`.
/// Returns the total and the `skip`/`take` page.
pub fn search(
    all: &[Stored],
    q: &str,
    skip: usize,
    take: usize,
    prerelease: bool,
    semver2: bool,
) -> (usize, Vec<SearchHit>) {
    let q = q.trim().to_lowercase();
    let exact = q
        .strip_prefix("packageid:")
        .or_else(|| q.strip_prefix("id:"))
        .map(str::to_owned);
    let mut groups: BTreeMap<String, Vec<(PackageItem, u64)>> = BTreeMap::new();
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    for s in all {
        *totals.entry(id_key(&s.item.id)).or_default() += s.downloads;
        if visible(&s.item, prerelease, semver2) {
            groups
                .entry(id_key(&s.item.id))
                .or_default()
                .push((s.item.clone(), s.downloads));
        }
    }
    let mut hits: Vec<(bool, SearchHit)> = groups
        .into_iter()
        .filter_map(|(id, mut vs)| {
            vs.sort_by_key(|v| v.0.parsed_version());
            let latest = &vs.last()?.0;
            let hit = match &exact {
                Some(e) => &id == e,
                None => vs.iter().any(|v| v.0.matches(&q)) || latest.matches(&q),
            };
            let total_downloads = totals.get(&id).copied().unwrap_or_default();
            hit.then(|| {
                (
                    id != q,
                    SearchHit {
                        versions: vs,
                        total_downloads,
                    },
                )
            })
        })
        .collect();
    hits.sort_by_key(|h| h.0);
    let total = hits.len();
    (
        total,
        hits.into_iter()
            .skip(skip)
            .take(take.min(MAX_PAGE))
            .map(|h| h.1)
            .collect(),
    )
}

/// One package found by [`search`].
#[derive(Debug, Clone)]
pub struct SearchHit {
    /// The versions shown, ascending, with their downloads.
    pub versions: Vec<(PackageItem, u64)>,
    /// Downloads of every version of the package, unlisted ones included.
    pub total_downloads: u64,
}

fn visible(item: &PackageItem, prerelease: bool, semver2: bool) -> bool {
    item.listed && (prerelease || !item.parsed_version().is_prerelease()) && (semver2 || !item.is_semver2())
}

/// v3 autocomplete: ids containing `q` (listed versions only), or with
/// `id` the versions of that package.
pub fn autocomplete(
    all: &[Stored],
    q: &str,
    id: Option<&str>,
    skip: usize,
    take: usize,
    prerelease: bool,
    semver2: bool,
) -> (usize, Vec<String>) {
    let shown = all.iter().filter(|s| visible(&s.item, prerelease, semver2));
    if let Some(id) = id {
        let mut vs: Vec<NuGetVersion> = shown
            .filter(|s| s.item.id.eq_ignore_ascii_case(id))
            .map(|s| s.item.parsed_version())
            .collect();
        vs.sort();
        let out: Vec<String> = vs.iter().map(NuGetVersion::normalized).collect();
        return (out.len(), out);
    }
    let q = q.trim().to_lowercase();
    let mut ids: Vec<String> = shown
        .filter(|s| s.item.id.to_ascii_lowercase().contains(&q))
        .map(|s| s.item.id.clone())
        .collect();
    ids.sort_by_key(|i| i.to_ascii_lowercase());
    ids.dedup_by_key(|i| i.to_ascii_lowercase());
    let total = ids.len();
    (
        total,
        ids.into_iter().skip(skip).take(take.min(MAX_PAGE)).collect(),
    )
}

// ---------------------------------------------------------------------------
// v2 (OData) queries

/// What a v2 request asks for, beyond `$filter`/`$orderby`/`$skip`/`$top`.
#[derive(Debug, Clone, Default)]
pub struct V2Query {
    pub filter: Option<String>,
    pub orderby: Option<String>,
    pub skip: usize,
    pub top: Option<usize>,
    /// `semVerLevel=2.0.0`: SemVer 2 versions are shown.
    pub semver2: bool,
    /// `Search()`: its `searchTerm` (unquoted, any case) and
    /// `includePrerelease`; `Packages()` and `FindPackagesById()` show
    /// prereleases.
    pub search_term: Option<String>,
    pub include_prerelease: bool,
    /// `FindPackagesById()`: the id.
    pub id: Option<String>,
    /// `GetUpdates()`: `(id, installed version, constraint)` for each
    /// package asked about (`versionConstraints`: only versions in the
    /// range are updates) and whether every newer version is wanted
    /// (`includeAllVersions`).
    pub updates: Option<(Vec<UpdateAsked>, bool)>,
    /// `$skiptoken='ID','VERSION'` (as nuget.org's next links carry): only
    /// entries after that package version, in the default order.
    pub after: Option<(String, NuGetVersion)>,
    /// `Search()`'s `targetFramework`, `GetUpdates()`'s
    /// `targetFrameworks`: versions whose dependency groups serve none of
    /// them are left out ([`supports_any`]); empty: no filter.
    pub target_frameworks: Vec<String>,
}

/// A package `GetUpdates()` asks about: id, installed version, and the
/// range updates must be in (`versionConstraints`), if any.
pub type UpdateAsked = (String, String, Option<VersionRange>);

/// One pair `GetUpdates()` asks about, parsed: the installed version, the
/// range updates must be in, and (without `includeAllVersions`) the newest
/// update found for it so far.
type AskedPair<'q> = (NuGetVersion, Option<&'q VersionRange>, Option<NuGetVersion>);

/// One page of a v2 answer.
#[derive(Debug)]
pub struct V2Page<'a> {
    pub entries: Vec<V2Entry<'a>>,
    pub total: usize,
    /// The `$skip` of the next page, when the server cut this one short.
    pub next_skip: Option<usize>,
}

/// Answers a v2 query over every version of the feed: the function's own
/// selection (`Search`, `FindPackagesById`, `GetUpdates`), then `$filter`,
/// `$orderby` (default: id, then version), `$skip` and `$top` (at most
/// [`MAX_PAGE`] per page; a page cut short by that limit has a next page).
/// Unlisted versions are left out except by `FindPackagesById` and
/// single-package lookups, as on nuget.org. Errors: Invalid for a filter
/// or order outside the supported subset.
pub fn v2_query<'a>(all: &'a [Stored], q: &V2Query) -> Result<V2Page<'a>, CoreError> {
    // Latest flags per id, over listed versions this client may see; the
    // id's downloads over all its versions.
    let mut latest: BTreeMap<String, (Option<NuGetVersion>, Option<NuGetVersion>)> = BTreeMap::new();
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    for s in all {
        *totals.entry(id_key(&s.item.id)).or_default() += s.downloads;
        let i = &s.item;
        if !i.listed || (!q.semver2 && i.is_semver2()) {
            continue;
        }
        let v = i.parsed_version();
        let e = latest.entry(id_key(&i.id)).or_default();
        if !v.is_prerelease() && e.0.as_ref().is_none_or(|l| &v > l) {
            e.0 = Some(v.clone());
        }
        if e.1.as_ref().is_none_or(|l| &v > l) {
            e.1 = Some(v);
        }
    }
    let filter = q
        .filter
        .as_deref()
        .filter(|f| !f.trim().is_empty())
        .map(odata::parse_filter)
        .transpose()?;
    let term = q.search_term.as_deref().map(|t| t.trim().to_lowercase());
    // GetUpdates(): each pair asked about (id, installed version, range)
    // is answered on its own — the same id may come twice, with different
    // installed versions (projects on different versions) or ranges. The
    // pairs by id, so an item is compared only with its own id's pairs.
    let mut asked: BTreeMap<String, Vec<AskedPair<'_>>> = BTreeMap::new();
    if let Some((wanted, _)) = &q.updates {
        for (id, installed, constraint) in wanted {
            // (The server refuses versions that do not parse.)
            let Ok(installed) = NuGetVersion::parse(installed) else {
                continue;
            };
            asked
                .entry(id_key(id))
                .or_default()
                .push((installed, constraint.as_ref(), None));
        }
    }
    // A version this client may see that is an update for a pair: listed,
    // newer than the installed one, within the pair's range, a prerelease
    // only when asked for.
    let update_for =
        |i: &PackageItem, v: &NuGetVersion, installed: &NuGetVersion, c: Option<&VersionRange>| {
            i.listed
                && (q.semver2 || !i.is_semver2())
                && (q.include_prerelease || !v.is_prerelease())
                && v > installed
                && c.is_none_or(|c| c.contains(v))
        };
    // Without includeAllVersions: each pair's newest update.
    if matches!(&q.updates, Some((_, false))) {
        for s in all {
            let Some(pairs) = asked.get_mut(&id_key(&s.item.id)) else {
                continue;
            };
            let v = s.item.parsed_version();
            for (installed, c, newest) in pairs.iter_mut() {
                if update_for(&s.item, &v, installed, *c) && newest.as_ref().is_none_or(|n| v > *n) {
                    *newest = Some(v.clone());
                }
            }
        }
    }
    let mut out: Vec<V2Entry<'a>> = Vec::new();
    for s in all {
        let i = &s.item;
        if !q.semver2 && i.is_semver2() {
            continue;
        }
        let v = i.parsed_version();
        let (rel, abs) = latest.get(&id_key(&i.id)).cloned().unwrap_or_default();
        let entry = V2Entry {
            item: i,
            is_latest: i.listed && rel.as_ref() == Some(&v),
            is_absolute_latest: i.listed && abs.as_ref() == Some(&v),
            updated: s.modified,
            downloads: s.downloads,
            package_downloads: totals.get(&id_key(&i.id)).copied().unwrap_or_default(),
        };
        if let Some(id) = &q.id {
            if !i.id.eq_ignore_ascii_case(id) {
                continue;
            }
        } else if !i.listed {
            continue;
        }
        if let Some(t) = &term
            && ((!q.include_prerelease && v.is_prerelease()) || !t.split_whitespace().all(|w| i.matches(w)))
        {
            continue;
        }
        if let Some((_, all_versions)) = &q.updates {
            let answers = asked.get(&id_key(&i.id)).is_some_and(|pairs| {
                pairs.iter().any(|(installed, c, newest)| {
                    update_for(i, &v, installed, *c) && (*all_versions || newest.as_ref() == Some(&v))
                })
            });
            if !answers {
                continue;
            }
        }
        if !supports_any(i, &q.target_frameworks) {
            continue;
        }
        if let Some(f) = &filter {
            let prop = |p: &str| property(&entry, p);
            if !odata::matches(f, &prop)? {
                continue;
            }
        }
        out.push(entry);
    }
    let order = match q.orderby.as_deref() {
        Some(o) => odata::parse_orderby(o)?,
        None => Vec::new(),
    };
    for (p, _) in &order {
        if !ORDERABLE.contains(&p.as_str()) {
            return Err(CoreError::invalid(format!("unsupported $orderby property {p}")));
        }
    }
    out.sort_by(|a, b| {
        for (p, desc) in &order {
            let o = compare(a, b, p);
            let o = if *desc { o.reverse() } else { o };
            if o.is_ne() {
                return o;
            }
        }
        id_key(&a.item.id)
            .cmp(&id_key(&b.item.id))
            .then_with(|| a.item.parsed_version().cmp(&b.item.parsed_version()))
    });
    if let Some((id, version)) = &q.after {
        if !order.is_empty() {
            return Err(CoreError::invalid(
                "$skiptoken continues the default order (by Id, then Version); it cannot be used with $orderby",
            ));
        }
        let id = id_key(id);
        out.retain(|e| (id_key(&e.item.id), e.item.parsed_version()) > (id.clone(), version.clone()));
    }
    let total = out.len();
    let page = q.top.unwrap_or(MAX_PAGE).min(MAX_PAGE);
    let entries: Vec<V2Entry<'a>> = out.into_iter().skip(q.skip).take(page).collect();
    let end = q.skip + entries.len();
    let cut_short = q.top.is_none_or(|t| t > page);
    let next_skip = (cut_short && end < total).then_some(end);
    Ok(V2Page {
        entries,
        total,
        next_skip,
    })
}

/// The properties `$orderby` may name.
const ORDERABLE: &[&str] = &[
    "Id",
    "Version",
    "NormalizedVersion",
    "Title",
    "Description",
    "Summary",
    "Tags",
    "Authors",
    "IsLatestVersion",
    "IsAbsoluteLatestVersion",
    "IsPrerelease",
    "Listed",
    "DownloadCount",
    "VersionDownloadCount",
    "PackageSize",
    "Published",
    "Created",
    "LastUpdated",
    "LastEdited",
];

fn compare(a: &V2Entry<'_>, b: &V2Entry<'_>, p: &str) -> std::cmp::Ordering {
    match p {
        "Version" | "NormalizedVersion" => a.item.parsed_version().cmp(&b.item.parsed_version()),
        "Published" | "Created" => a.item.published.cmp(&b.item.published),
        "LastUpdated" | "LastEdited" => a.updated.cmp(&b.updated),
        "Id" => id_key(&a.item.id).cmp(&id_key(&b.item.id)),
        _ => match (property(a, p), property(b, p)) {
            (Some(Value::Str(x)), Some(Value::Str(y))) => x.to_lowercase().cmp(&y.to_lowercase()),
            (Some(Value::Num(x)), Some(Value::Num(y))) => x.cmp(&y),
            (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(&y),
            _ => std::cmp::Ordering::Equal,
        },
    }
}

/// The v2 properties a filter or order may name.
fn property(e: &V2Entry<'_>, p: &str) -> Option<Value> {
    let i = e.item;
    let s = |v: &str| Some(Value::Str(v.to_owned()));
    match p {
        "Id" => s(&i.id),
        "Version" | "NormalizedVersion" => s(&i.version),
        "Title" => s(&i.title),
        "Description" => s(&i.description),
        "Summary" => s(&i.summary),
        "Tags" => s(&i.tags.join(" ")),
        "Authors" => s(&i.authors),
        "IsLatestVersion" => Some(Value::Bool(e.is_latest)),
        "IsAbsoluteLatestVersion" => Some(Value::Bool(e.is_absolute_latest)),
        "IsPrerelease" => Some(Value::Bool(i.parsed_version().is_prerelease())),
        "Listed" => Some(Value::Bool(i.listed)),
        "DownloadCount" => Some(Value::Num(i64::try_from(e.package_downloads).unwrap_or(i64::MAX))),
        "VersionDownloadCount" => Some(Value::Num(i64::try_from(e.downloads).unwrap_or(i64::MAX))),
        "PackageSize" => Some(Value::Num(i.size as i64)),
        "Published" | "Created" | "LastUpdated" | "LastEdited" => s(""),
        _ => None,
    }
}
