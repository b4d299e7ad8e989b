//! OCI feeds: blob uploads (monolithic, chunked sessions, cross-repository
//! mounts), manifests and tags, tag lists, the catalog, referrers, and the
//! pruning of untagged manifests.
//!
//! Item layout: see [`ferry_formats::oci`] — `manifest/{repo}/{digest}`,
//! `tag/{repo}/{tag}` and `blob/{repo}/{digest}` (upload links). A blob is
//! *in* a repository when one of that repository's manifest or link items
//! lists it; the set is derived from the items and cached until the feed
//! changes. Tag lists, the catalog and referrers are derived the same way.
//!
//! Upload sessions (chunked uploads) are recorded in the metadata database
//! and keep their bytes in the blob store's upload area, so any node of an
//! instance continues a session another began (see [`Uploads`]); a
//! one-process store loses the sessions in flight at a restart (clients
//! start the upload again). They are capped per API key, per feed and per
//! instance, and expire after minutes without a request.
//!
//! A manifest that an index of its repository lists (an OCI image index or
//! a Docker manifest list, possibly nested) is never deleted while the
//! index lives: [`delete_manifest`] refuses it (DENIED, naming the indexes)
//! and [`prune_untagged`] keeps it, or takes the index first. Manifest
//! writes, deletes and pruning of one repository are serialized on this
//! instance (see `lock_repository`), so a concurrent index push cannot
//! slip between the check and the delete. A delete received from
//! elsewhere (replication, bundles) is refused the same way, and also
//! while a live tag names the manifest (a client's delete takes the tags
//! with it), unless the same batch deletes the index or tag too (see
//! `refused_manifest_deletes`, called by
//! [`Ferry::check_replicated_batch`]).
//!
//! Every accepted client write takes a new stamp, even when it stores what
//! is there already (the same manifest bytes, the same tag, the same blob
//! link): with replication, the later stamp wins, and the user's latest
//! action must be the one that does. Pushing an index writes the manifests
//! it lists again too, so they are never older than the index.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
pub use ferry_formats::oci::ErrorCode;
use ferry_formats::oci::{
    self as format, BlobLinkMeta, ManifestMeta, OciDigest, OciError, OciItemKey, Reference, Referrer,
    Sha512Digest, Sha512Hasher, TagMeta,
};
use ferry_store::{
    ByteStream, Change, ChangeOp, FeedRecord, ItemRecord, Precondition, StagedBlob, StoreError, now_millis,
};
use ferry_types::{Digest, FeedName, FeedType, ItemKey, Stamp};
use serde::Serialize;

use crate::auth::{self, Action, Principal};
use crate::{CoreError, Ferry, LocalWrite};

// ---------------------------------------------------------------------------
// Errors

/// A failed OCI request: the error (which decides the HTTP status) and the
/// distribution spec's code for it, when one applies.
#[derive(Debug)]
pub struct Error {
    pub code: Option<ErrorCode>,
    pub error: CoreError,
    /// For TOOMANYREQUESTS: when trying again may succeed (`Retry-After`).
    pub retry_after: Option<Duration>,
}

impl Error {
    /// An error with the spec's `code`.
    pub fn new(code: ErrorCode, error: CoreError) -> Self {
        Self {
            code: Some(code),
            error,
            retry_after: None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            Some(c) => write!(f, "{c}: {}", self.error),
            None => write!(f, "{}", self.error),
        }
    }
}

impl std::error::Error for Error {}

impl From<CoreError> for Error {
    fn from(error: CoreError) -> Self {
        Self {
            code: None,
            error,
            retry_after: None,
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        CoreError::from(e).into()
    }
}

impl From<OciError> for Error {
    fn from(e: OciError) -> Self {
        let m = e.message;
        let error = match e.code {
            ErrorCode::BlobUnknown
            | ErrorCode::BlobUploadUnknown
            | ErrorCode::ManifestUnknown
            | ErrorCode::NameUnknown => CoreError::NotFound(m),
            ErrorCode::Unauthorized => CoreError::Unauthorized(m),
            ErrorCode::Denied => CoreError::Forbidden(m),
            ErrorCode::TooManyRequests => CoreError::Unavailable(m),
            _ => CoreError::Invalid(m),
        };
        Self::new(e.code, error)
    }
}

pub type Result<T> = std::result::Result<T, Error>;

fn blob_unknown(repo: &str, digest: &dyn fmt::Display) -> Error {
    Error::new(
        ErrorCode::BlobUnknown,
        CoreError::not_found(format!("blob {digest} is not in repository {repo}")),
    )
}

fn manifest_unknown(repo: &str, reference: &dyn fmt::Display) -> Error {
    Error::new(
        ErrorCode::ManifestUnknown,
        CoreError::not_found(format!("manifest {reference} is not in repository {repo}")),
    )
}

fn upload_unknown(id: &str) -> Error {
    Error::new(
        ErrorCode::BlobUploadUnknown,
        CoreError::not_found(format!(
            "upload {id} is unknown (finished, cancelled, expired, or lost in a restart)"
        )),
    )
}

/// Maps a blob store error of an upload to the spec's codes.
fn upload_error(e: StoreError) -> Error {
    match e {
        e @ StoreError::DigestMismatch { .. } => Error::new(
            ErrorCode::DigestInvalid,
            CoreError::invalid(format!("{e}; nothing was stored")),
        ),
        StoreError::TooLarge { limit } => Error::new(
            ErrorCode::SizeInvalid,
            CoreError::TooLarge(format!("the blob exceeds the upload limit of {limit} bytes")),
        ),
        StoreError::Conflict(m) => Error::new(ErrorCode::BlobUploadInvalid, CoreError::Conflict(m)),
        e => e.into(),
    }
}

fn join_error(e: tokio::task::JoinError) -> CoreError {
    CoreError::Internal(format!("oci worker task failed: {e}"))
}

fn meta_value<T: Serialize>(v: &T) -> Result<serde_json::Value> {
    serde_json::to_value(v).map_err(|e| CoreError::Internal(format!("oci item metadata: {e}")).into())
}

/// Validates a repository name (NAME_INVALID).
pub fn check_repository(repo: &str) -> Result<()> {
    Ok(format::validate_repository(repo)?)
}

// ---------------------------------------------------------------------------
// Which blobs a repository holds

/// The blobs of `items`, as sorted 32-byte digests (a cache entry).
fn digest_set<'a>(items: impl Iterator<Item = &'a ItemRecord>) -> Bytes {
    let set: BTreeSet<[u8; 32]> = items
        .flat_map(|i| i.blobs.iter().map(|d| *d.as_bytes()))
        .collect();
    Bytes::from(set.into_iter().flatten().collect::<Vec<u8>>())
}

fn set_contains(set: &Bytes, digest: &Digest) -> bool {
    find_entry(set, 32, digest.as_bytes()).is_some()
}

/// Binary search of the sorted `width`-byte entries of `set` for the one
/// that starts with `key`, in place (a lookup allocates nothing, however
/// large the set).
fn find_entry<'a>(set: &'a [u8], width: usize, key: &[u8]) -> Option<&'a [u8]> {
    let (mut lo, mut hi) = (0, set.len() / width);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let entry = &set[mid * width..(mid + 1) * width];
        match entry[..key.len()].cmp(key) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return Some(entry),
        }
    }
    None
}

/// The live items of `repo` under `prefix` (one of the repository prefixes),
/// leaving out nested repositories that share the prefix.
async fn repo_items(ferry: &Ferry, feed: &FeedRecord, repo: &str, prefix: &str) -> Result<Vec<ItemRecord>> {
    let items = ferry.items(feed, prefix).await?;
    Ok(items
        .into_iter()
        .filter(|i| {
            matches!(
                format::parse_item_key(&i.key),
                Some(OciItemKey::Manifest { repo: r, .. } | OciItemKey::Tag { repo: r, .. } | OciItemKey::Blob { repo: r, .. })
                    if r == repo
            )
        })
        .collect())
}

/// Every blob listed by the manifest and link items of `repo`.
async fn repo_blobs(ferry: &Ferry, feed: &FeedRecord, repo: &str) -> Result<Bytes> {
    let key = format!("oci\u{1f}repo-blobs\u{1f}{repo}");
    Ok(ferry
        .cached_index(feed, &key, || async {
            let mut items = repo_items(ferry, feed, repo, &format::manifest_prefix(repo))
                .await
                .map_err(|e| e.error)?;
            items.extend(
                repo_items(ferry, feed, repo, &format::blob_prefix(repo))
                    .await
                    .map_err(|e| e.error)?,
            );
            Ok(digest_set(items.iter()))
        })
        .await?)
}

/// Every blob any item of the feed lists.
async fn feed_blobs(ferry: &Ferry, feed: &FeedRecord) -> Result<Bytes> {
    Ok(ferry
        .cached_index(feed, "oci\u{1f}feed-blobs", || async {
            let items = ferry.items(feed, "").await?;
            Ok(digest_set(items.iter()))
        })
        .await?)
}

/// Whether `digest` is in `repo` (listed by one of its manifests or links).
pub async fn in_repository(ferry: &Ferry, feed: &FeedRecord, repo: &str, digest: &Digest) -> Result<bool> {
    Ok(set_contains(&repo_blobs(ferry, feed, repo).await?, digest))
}

/// One entry of a repository's alias set: a sha512 digest and the sha256
/// identity of the same content.
const ALIAS_ENTRY: usize = 64 + 32;

/// The sha512 aliases `repo`'s items record, as sorted (sha512, sha256)
/// pairs (a cache entry): each manifest's own, those its descriptors use,
/// and those of upload links pushed by sha512.
async fn repo_aliases(ferry: &Ferry, feed: &FeedRecord, repo: &str) -> Result<Bytes> {
    let key = format!("oci\u{1f}repo-aliases\u{1f}{repo}");
    Ok(ferry
        .cached_index(feed, &key, || async {
            let mut pairs: BTreeMap<Sha512Digest, Digest> = BTreeMap::new();
            for prefix in [format::manifest_prefix(repo), format::blob_prefix(repo)] {
                for item in repo_items(ferry, feed, repo, &prefix)
                    .await
                    .map_err(|e| e.error)?
                {
                    match format::parse_item_key(&item.key) {
                        Some(OciItemKey::Manifest { digest, .. }) => {
                            if let Ok(meta) = serde_json::from_value::<ManifestMeta>(item.meta) {
                                pairs.extend(meta.sha512.map(|s| (s, digest)));
                                pairs.extend(meta.aliases);
                            }
                        }
                        Some(OciItemKey::Blob { digest, .. }) => {
                            if let Ok(link) = serde_json::from_value::<BlobLinkMeta>(item.meta) {
                                pairs.extend(link.sha512.map(|s| (s, digest)));
                            }
                        }
                        _ => {}
                    }
                }
            }
            let mut out = Vec::with_capacity(pairs.len() * ALIAS_ENTRY);
            for (s, d) in pairs {
                out.extend_from_slice(s.as_bytes());
                out.extend_from_slice(d.as_bytes());
            }
            Ok(Bytes::from(out))
        })
        .await?)
}

/// The sha256 identity of `digest` in `repo`: a sha256 digest is its own;
/// a sha512 digest is known only through the repository's items (see
/// [`repo_aliases`]). None: nothing in the repository is stored under it.
/// Whether a sha256 digest is in the repository is for the caller to ask.
pub async fn resolve(
    ferry: &Ferry,
    feed: &FeedRecord,
    repo: &str,
    digest: &OciDigest,
) -> Result<Option<Digest>> {
    let sha512 = match digest {
        OciDigest::Sha256(d) => return Ok(Some(*d)),
        OciDigest::Sha512(s) => s,
    };
    Ok(alias_of(&repo_aliases(ferry, feed, repo).await?, sha512))
}

/// The sha256 identity `set` (from [`repo_aliases`]) gives `sha512`.
fn alias_of(set: &Bytes, sha512: &Sha512Digest) -> Option<Digest> {
    let entry = find_entry(set, ALIAS_ENTRY, sha512.as_bytes())?;
    <[u8; 32]>::try_from(&entry[64..]).ok().map(Digest::from_bytes)
}

/// Hashes the staged bytes with sha512: they must be `expected`
/// (DIGEST_INVALID otherwise; the caller drops the staged file).
async fn check_staged_sha512(staged: &StagedBlob, expected: &Sha512Digest) -> Result<()> {
    let path = staged.path().to_owned();
    let actual = tokio::task::spawn_blocking(move || -> std::io::Result<Sha512Digest> {
        use std::io::Read;
        let mut file = std::fs::File::open(path)?;
        let mut hasher = Sha512Hasher::default();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                return Ok(hasher.finish());
            }
            hasher.update(&buf[..n]);
        }
    })
    .await
    .map_err(join_error)?
    .map_err(|e| CoreError::Internal(format!("reading a staged upload: {e}")))?;
    if actual != *expected {
        return Err(Error::new(
            ErrorCode::DigestInvalid,
            CoreError::invalid(format!(
                "the content's digest is {actual}, not {expected}; nothing was stored"
            )),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Blobs

/// A blob of a repository, as needed to serve it.
#[derive(Debug, Clone, Copy)]
pub struct BlobInfo {
    pub digest: Digest,
    pub size: u64,
}

/// The blob `digest` (sha256, or a sha512 alias) of `repo` (BLOB_UNKNOWN
/// unless it is in the repository). The info names its sha256 identity.
pub async fn blob(ferry: &Ferry, feed: &FeedRecord, repo: &str, digest: &OciDigest) -> Result<BlobInfo> {
    check_repository(repo)?;
    let Some(id) = resolve(ferry, feed, repo, digest).await? else {
        return Err(blob_unknown(repo, digest));
    };
    if !in_repository(ferry, feed, repo, &id).await? {
        return Err(blob_unknown(repo, digest));
    }
    match ferry.blob_size(&id).await? {
        Some(size) => Ok(BlobInfo { digest: id, size }),
        None => Err(blob_unknown(repo, digest)),
    }
}

/// Links a present blob into `repo` (an upload or a mount). A link that is
/// there already is written again: every accepted client write takes a new
/// stamp, so it wins over an older delete of the link made elsewhere
/// (replication keeps the later stamp). `sha512` is the digest the client
/// named the blob by, if it used sha512; a link that has one keeps it.
async fn link(
    ferry: &Ferry,
    feed: &FeedRecord,
    repo: &str,
    digest: &Digest,
    size: u64,
    sha512: Option<Sha512Digest>,
) -> Result<()> {
    let key = format::blob_key(repo, digest)?;
    let sha512 = match sha512 {
        Some(s) => Some(s),
        None => ferry
            .item(feed, &key)
            .await?
            .and_then(|i| serde_json::from_value::<BlobLinkMeta>(i.meta).ok())
            .and_then(|l| l.sha512),
    };
    let meta = meta_value(&BlobLinkMeta { size, sha512 })?;
    ferry
        .write(
            feed,
            vec![LocalWrite::upsert(key, meta, vec![*digest], Precondition::Any)],
        )
        .await?;
    Ok(())
}

/// A monolithic upload (`POST …/blobs/uploads/?digest=` with the body):
/// streams `body` into staging, verifies it against `expected` (sha256 as
/// it streams; sha512 over the staged file; DIGEST_INVALID, nothing
/// stored), commits and links it. Returns its size.
pub async fn upload(
    ferry: &Ferry,
    feed: &FeedRecord,
    repo: &str,
    body: ByteStream,
    expected: &OciDigest,
) -> Result<u64> {
    check_repository(repo)?;
    let staged = ferry
        .blob_store()
        .stage(body, ferry.config().max_upload_bytes, expected.sha256())
        .await
        .map_err(upload_error)?;
    commit_upload(ferry, feed, repo, staged, expected).await
}

/// Commits verified upload bytes and links them into `repo`; a sha512
/// `expected` is checked first.
async fn commit_upload(
    ferry: &Ferry,
    feed: &FeedRecord,
    repo: &str,
    staged: StagedBlob,
    expected: &OciDigest,
) -> Result<u64> {
    let sha512 = match expected {
        OciDigest::Sha512(s) => {
            check_staged_sha512(&staged, s).await?;
            Some(*s)
        }
        OciDigest::Sha256(_) => None,
    };
    let size = staged.size();
    let digest = ferry.commit_blob(staged).await?;
    link(ferry, feed, repo, &digest, size, sha512).await?;
    Ok(size)
}

/// A cross-repository mount (`POST …/blobs/uploads/?mount=DIGEST&from=REPO`).
/// `from` is the source as the client names it, `FEED/NAME`. Mounts (and
/// returns true) when the blob is anywhere in this feed, or in repository
/// `NAME` of another OCI feed `principal` may read; false means "upload it".
pub async fn mount(
    ferry: &Ferry,
    feed: &FeedRecord,
    principal: Option<&Principal>,
    repo: &str,
    digest: &OciDigest,
    from: Option<&str>,
) -> Result<bool> {
    check_repository(repo)?;
    let source = from.and_then(|f| f.split_once('/'));
    let found = match source {
        Some((other_feed, other_repo)) if other_feed != feed.name.as_str() => {
            mountable_from(ferry, principal, other_feed, other_repo, digest).await
        }
        // This feed: the named repository first (cheap), then the whole
        // feed (by sha256: a sha512 alias is known per repository).
        _ => {
            let named = match source {
                Some((_, r)) if format::validate_repository(r).is_ok() => {
                    match resolve(ferry, feed, r, digest).await? {
                        Some(id) if in_repository(ferry, feed, r, &id).await? => Some(id),
                        _ => None,
                    }
                }
                _ => None,
            };
            match (named, digest) {
                (Some(id), _) => Some(id),
                (None, OciDigest::Sha256(d)) => {
                    set_contains(&feed_blobs(ferry, feed).await?, d).then_some(*d)
                }
                (None, OciDigest::Sha512(_)) => None,
            }
        }
    };
    let Some(id) = found else {
        return Ok(false);
    };
    let Some(size) = ferry.blob_size(&id).await? else {
        return Ok(false);
    };
    let sha512 = match digest {
        OciDigest::Sha512(s) => Some(*s),
        OciDigest::Sha256(_) => None,
    };
    link(ferry, feed, repo, &id, size, sha512).await?;
    Ok(true)
}

/// Whether `digest` is in repository `repo` of OCI feed `feed_name`, which
/// `principal` may read. Any doubt is a no (the client then uploads).
async fn mountable_from(
    ferry: &Ferry,
    principal: Option<&Principal>,
    feed_name: &str,
    repo: &str,
    digest: &OciDigest,
) -> Option<Digest> {
    let name = FeedName::new(feed_name).ok()?;
    let source = ferry.feed(&name).await.ok()?;
    if source.feed_type != FeedType::Oci
        || auth::authorize_feed(principal, &source, Action::Read).is_err()
        || format::validate_repository(repo).is_err()
    {
        return None;
    }
    let id = resolve(ferry, &source, repo, digest).await.ok()??;
    in_repository(ferry, &source, repo, &id)
        .await
        .unwrap_or(false)
        .then_some(id)
}

/// `DELETE …/blobs/DIGEST`: removes the repository's link to the blob. The
/// content stays readable through the repository while one of its
/// manifests lists it, and is collected once no item references it.
pub async fn delete_blob(ferry: &Ferry, feed: &FeedRecord, repo: &str, named: &OciDigest) -> Result<()> {
    check_repository(repo)?;
    let Some(id) = resolve(ferry, feed, repo, named).await? else {
        return Err(blob_unknown(repo, named));
    };
    let digest = &id;
    // A blob a manifest of the repository lists stays served while that
    // manifest is here: refuse rather than answer 202 and go on serving it.
    let users = manifests_listing(ferry, feed, repo, digest).await?;
    if !users.is_empty() {
        // The repository as clients name it: the feed is its first part.
        let full = format!("{}/{repo}", feed.name);
        let message = match users.as_slice() {
            [one] if one == &digest.to_string() => format!(
                "{named} is a manifest of repository {full}; delete it through /v2/{full}/manifests/{named}"
            ),
            [one] => format!(
                "blob {named} is used by manifest {one} of repository {full}; delete that manifest first"
            ),
            many => format!(
                "blob {named} is used by manifests {} of repository {full}; delete those manifests first",
                many.join(", ")
            ),
        };
        return Err(Error::new(ErrorCode::Denied, CoreError::Conflict(message)));
    }
    let key = format::blob_key(repo, digest)?;
    if ferry.item(feed, &key).await?.is_some() {
        match ferry
            .write(feed, vec![LocalWrite::delete(key, Precondition::Present)])
            .await
        {
            Ok(_) | Err(CoreError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
    Err(blob_unknown(repo, named))
}

/// The manifests of `repo` (as `sha256:…`, sorted) whose item lists
/// `digest`: the manifest itself, or one whose config, layers or
/// subject it is.
async fn manifests_listing(
    ferry: &Ferry,
    feed: &FeedRecord,
    repo: &str,
    digest: &Digest,
) -> Result<Vec<String>> {
    let mut users: Vec<String> = repo_items(ferry, feed, repo, &format::manifest_prefix(repo))
        .await?
        .into_iter()
        .filter(|i| i.blobs.contains(digest))
        .filter_map(|i| match format::parse_item_key(&i.key) {
            Some(OciItemKey::Manifest { digest, .. }) => Some(digest.to_string()),
            _ => None,
        })
        .collect();
    users.sort();
    users.dedup();
    Ok(users)
}

// ---------------------------------------------------------------------------
// Upload sessions

/// The upload sessions of one instance. Their records (feed, repository,
/// the API key that opened each, length, last use, and a request's hold)
/// are in the metadata database ([`ferry_store::UploadSessionStore`]), so
/// every node of an instance continues a session any node began; their
/// bytes are in the blob store's upload area, and a node that did not
/// receive a session's last chunk hashes its bytes again
/// ([`ferry_store::BlobStore::upload_resume`]) before it appends or
/// finishes.
///
/// Open sessions are capped per API key, per feed and on the whole
/// instance ([`Config`](crate::Config)'s `oci_max_upload_sessions_per_key`,
/// `oci_max_upload_sessions_per_feed` and `oci_max_upload_sessions`),
/// counted in the database, so a key or a feed can use up only its own
/// allowance on every node together; past a cap, opening a session is
/// TOOMANYREQUESTS (429), naming the cap and when a session will expire.
/// A session that gets no request for `oci_upload_idle_timeout` is
/// discarded with its file: by a sweep that runs on a node in the
/// background while sessions are open, and at once by a request that finds
/// it expired. A request in progress holds its session (a hold in the
/// database, renewed while the request runs, [`HOLD`] long, so a node that
/// dies mid-request lets go): a chunk that takes longer than the timeout
/// to arrive is never cut by expiry, a second request on the session
/// meanwhile is refused, and the end of the request counts as use.
/// Sessions opened by an API key that has since been deleted stop
/// counting: the sweep discards them (unless a request holds them), and so
/// does opening a session before it refuses one over a cap.
#[derive(Default)]
pub struct Uploads {
    /// Whether this node runs a sweep task.
    sweeping: Arc<Mutex<bool>>,
}

/// How long a request's hold on its session lasts unless renewed (every
/// third of it while the request runs).
pub const HOLD: Duration = Duration::from_secs(30);

/// The session limits of [`Config`](crate::Config).
#[derive(Debug, Clone, Copy)]
struct Limits {
    idle: Duration,
    per_key: usize,
    per_feed: usize,
    total: usize,
}

impl Limits {
    fn of(ferry: &Ferry) -> Self {
        let c = ferry.config();
        Self {
            idle: c.oci_upload_idle_timeout,
            per_key: c.oci_max_upload_sessions_per_key,
            per_feed: c.oci_max_upload_sessions_per_feed,
            total: c.oci_max_upload_sessions,
        }
    }

    fn idle_ms(&self) -> i64 {
        i64::try_from(self.idle.as_millis()).unwrap_or(i64::MAX)
    }

    fn store(&self) -> ferry_store::UploadLimits {
        ferry_store::UploadLimits {
            idle_ms: self.idle_ms(),
            per_key: self.per_key,
            per_feed: self.per_feed,
            total: self.total,
        }
    }
}

/// Where an upload session stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadStatus {
    /// The session's id (32 hex characters), as in its URL.
    pub id: String,
    /// Bytes received so far.
    pub size: u64,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// How the holder of a new session is named in a refusal.
struct Who<'a> {
    key: Option<&'a str>,
    feed: &'a str,
}

/// A duration as people read it: `10m`, `9m 58s`, `42s`, `350ms`.
fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    match (s / 60, s % 60) {
        (0, s) => format!("{s}s"),
        (m, 0) => format!("{m}m"),
        (m, s) => format!("{m}m {s}s"),
    }
}

/// TOOMANYREQUESTS: opening a session would pass `cap`. `left`: how long
/// until the first of that cap's idle sessions expires (None: all are in
/// use).
fn too_many(cap: ferry_store::UploadCap, who: &Who<'_>, limits: &Limits, left: Option<Duration>) -> Error {
    let whose = match cap {
        ferry_store::UploadCap::Key => format!(
            "for API key {:?}: {}, the limit per key",
            who.key.unwrap_or("?"),
            limits.per_key
        ),
        ferry_store::UploadCap::Feed => {
            format!("in feed {}: {}, the limit per feed", who.feed, limits.per_feed)
        }
        ferry_store::UploadCap::Instance => {
            format!("on this server: {}, the limit for all feeds", limits.total)
        }
    };
    let when = match left {
        Some(left) => format!("the next of these in {}", human(left)),
        None => "and all of these are in use by requests now".to_owned(),
    };
    let message = format!(
        "too many open upload sessions {whose}. Finish or cancel some (DELETE the upload's URL), \
         or retry later: a session expires {} after its last request, {when}",
        human(limits.idle)
    );
    let wait = left.unwrap_or(limits.idle);
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    Error {
        retry_after: Some(Duration::from_secs(secs.max(1))),
        ..Error::new(ErrorCode::TooManyRequests, CoreError::Unavailable(message))
    }
}

/// A request holding a session (see [`Uploads::enter`]): its hold is
/// renewed while it lives; released (the session touched, its new length
/// recorded) by [`InUse::release`], or when dropped.
struct InUse {
    ferry: Ferry,
    id: String,
    /// The session's length when the request took it.
    size: u64,
    renew: Option<tokio::task::JoinHandle<()>>,
    released: bool,
}

impl InUse {
    fn new(ferry: &Ferry, id: &str, size: u64) -> Self {
        let renew = tokio::runtime::Handle::try_current().ok().map(|rt| {
            let (ferry, id) = (ferry.clone(), id.to_owned());
            rt.spawn(async move {
                loop {
                    tokio::time::sleep(HOLD / 3).await;
                    let now = ferry_store::now_millis();
                    if let Err(e) = ferry.metadata().renew_upload(&id, now, now + ms(HOLD)).await {
                        tracing::warn!(upload = %id, "could not renew the hold on an upload session: {e}");
                    }
                }
            })
        });
        Self {
            ferry: ferry.clone(),
            id: id.to_owned(),
            size,
            renew,
            released: false,
        }
    }

    fn stop_renewing(&mut self) {
        if let Some(task) = self.renew.take() {
            task.abort();
        }
    }

    /// Ends the hold, recording the session's new length when given.
    async fn release(mut self, size: Option<u64>) -> Result<()> {
        self.stop_renewing();
        self.released = true;
        let now = ferry_store::now_millis();
        self.ferry.metadata().release_upload(&self.id, now, size).await?;
        Ok(())
    }

    /// Ends the hold of a session that is gone (finished or discarded).
    fn forget(mut self) {
        self.stop_renewing();
        self.released = true;
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        self.stop_renewing();
        if self.released {
            return;
        }
        // The request failed or went away: the session stays as it was.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (ferry, id) = (self.ferry.clone(), std::mem::take(&mut self.id));
            rt.spawn(async move {
                let now = ferry_store::now_millis();
                if let Err(e) = ferry.metadata().release_upload(&id, now, None).await {
                    tracing::warn!(upload = %id, "could not release an upload session: {e}");
                }
            });
        }
    }
}

/// Discards the files of forgotten sessions. A file that cannot be
/// removed is logged: the session is gone either way.
async fn discard(ferry: &Ferry, ids: &[String]) {
    for id in ids {
        if let Err(e) = ferry.blob_store().upload_abort(id).await {
            tracing::warn!(upload = %id, "could not discard an expired upload session: {e}");
        }
    }
}

/// How often the sweep looks for expired sessions: a quarter of the idle
/// timeout, between 10 ms and a minute.
fn sweep_period(idle: Duration) -> Duration {
    (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(60))
}

/// Discards the session files that no session record names and that
/// were last written more than the idle time ago (a file is created just
/// before its record, so a young one may be a session being opened).
async fn discard_orphans(ferry: &Ferry, idle: Duration) -> Result<()> {
    let Some(before) = std::time::SystemTime::now().checked_sub(idle) else {
        return Ok(());
    };
    let files = ferry.blob_store().stale_upload_files(before).await?;
    if files.is_empty() {
        return Ok(());
    }
    let known: HashSet<String> = ferry
        .metadata()
        .uploads_known(&files)
        .await?
        .into_iter()
        .collect();
    let orphans: Vec<String> = files.into_iter().filter(|f| !known.contains(f)).collect();
    discard(ferry, &orphans).await;
    Ok(())
}

/// Discards expired sessions, and those of deleted keys, until none is
/// left open on the instance; first, files no session names.
async fn sweep(sweeping: Arc<Mutex<bool>>, ferry: Ferry) {
    if let Err(e) = discard_orphans(&ferry, Limits::of(&ferry).idle).await {
        tracing::warn!("could not look for upload session files without a session: {e}");
    }
    loop {
        let idle = Limits::of(&ferry);
        tokio::time::sleep(sweep_period(idle.idle)).await;
        let now = ferry_store::now_millis();
        match ferry.metadata().sweep_uploads(now, idle.idle_ms(), true).await {
            Ok(gone) => discard(&ferry, &gone).await,
            Err(e) => tracing::warn!("could not look for expired upload sessions: {e}"),
        }
        if let Ok(0) = ferry.metadata().upload_count().await {
            if let Ok(mut s) = sweeping.lock() {
                *s = false;
            }
            // A session opened on this node meanwhile found the sweep
            // still running: take it on again rather than leave it.
            match ferry.metadata().upload_count().await {
                Ok(0) | Err(_) => return,
                Ok(_) => match sweeping.lock() {
                    Ok(mut s) if !*s => *s = true,
                    _ => return,
                },
            }
        }
    }
}

impl Uploads {
    /// How many sessions are open on the instance.
    pub async fn open_sessions(&self, ferry: &Ferry) -> Result<usize> {
        Ok(ferry.metadata().upload_count().await?)
    }

    /// Checks that session `id` belongs to `repo` of `feed` (and has not
    /// expired), touching it; its length.
    async fn lookup(&self, ferry: &Ferry, feed: &FeedRecord, repo: &str, id: &str) -> Result<u64> {
        let limits = Limits::of(ferry);
        let now = ferry_store::now_millis();
        match ferry
            .metadata()
            .upload_length(id, feed.id, repo, now, limits.idle_ms())
            .await?
        {
            ferry_store::UploadClaim::Claimed { size } => Ok(size),
            ferry_store::UploadClaim::Expired => {
                discard(ferry, &[id.to_owned()]).await;
                Err(upload_unknown(id))
            }
            ferry_store::UploadClaim::Unknown | ferry_store::UploadClaim::Busy => Err(upload_unknown(id)),
        }
    }

    /// Takes session `id` of `repo` in `feed` for one request: held in the
    /// database until the returned guard is released or dropped, and its
    /// bytes ready on this node (hashed again when another node received
    /// the last chunk).
    async fn enter(&self, ferry: &Ferry, feed: &FeedRecord, repo: &str, id: &str) -> Result<InUse> {
        let limits = Limits::of(ferry);
        let now = ferry_store::now_millis();
        let size = match ferry
            .metadata()
            .claim_upload(id, feed.id, repo, now, limits.idle_ms(), now + ms(HOLD))
            .await?
        {
            ferry_store::UploadClaim::Claimed { size } => size,
            ferry_store::UploadClaim::Busy => {
                return Err(upload_error(StoreError::Conflict(format!(
                    "upload {id} is busy with another request"
                ))));
            }
            ferry_store::UploadClaim::Unknown => return Err(upload_unknown(id)),
            ferry_store::UploadClaim::Expired => {
                discard(ferry, &[id.to_owned()]).await;
                return Err(upload_unknown(id));
            }
        };
        let held = InUse::new(ferry, id, size);
        match ferry.blob_store().upload_resume(id, size).await {
            Ok(()) => Ok(held),
            Err(StoreError::NotFound(_)) => {
                // Its bytes are out of this node's reach. Gone for good
                // when every node reaches every session's bytes; else it
                // may still go on through the node that has them.
                if ferry.blob_store().upload_sessions_everywhere() {
                    held.forget();
                    ferry.metadata().end_upload(id).await?;
                } else {
                    held.release(None).await?;
                }
                Err(upload_unknown(id))
            }
            Err(e) => {
                held.release(None).await?;
                Err(upload_error(e))
            }
        }
    }

    /// Starts the background sweep on this node unless it runs (or there
    /// is no runtime to run it on: expired sessions are then discarded
    /// when requests find them).
    fn sweep_in_background(&self, ferry: &Ferry) -> Result<()> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Ok(());
        };
        {
            let mut s = self
                .sweeping
                .lock()
                .map_err(|_| CoreError::Internal("upload sweep lock poisoned".into()))?;
            if *s {
                return Ok(());
            }
            *s = true;
        }
        runtime.spawn(sweep(self.sweeping.clone(), ferry.clone()));
        Ok(())
    }
}

/// `POST …/blobs/uploads/`: opens an upload session for `principal` (the
/// key the request came with), unless that would pass one of the caps (see
/// [`Uploads`]; TOOMANYREQUESTS, naming the cap and when a session
/// expires). Expired sessions are discarded first, and before refusing,
/// the sessions of deleted keys.
pub async fn start_upload(
    ferry: &Ferry,
    uploads: &Uploads,
    feed: &FeedRecord,
    principal: Option<&Principal>,
    repo: &str,
) -> Result<UploadStatus> {
    check_repository(repo)?;
    let limits = Limits::of(ferry);
    let who = Who {
        key: principal.map(|p| p.key.name.as_str()),
        feed: feed.name.as_str(),
    };
    let id = ferry.blob_store().upload_begin().await?;
    let meta = ferry.metadata();
    let mut purged = false;
    loop {
        let now = ferry_store::now_millis();
        let session = ferry_store::NewUploadSession {
            id: id.clone(),
            feed: feed.id,
            repo: repo.to_owned(),
            key: principal.map(|p| (p.key.id, p.key.created_at)),
            now,
        };
        let opened = match meta.open_upload(session, limits.store()).await {
            Ok(o) => o,
            Err(e) => {
                discard(ferry, std::slice::from_ref(&id)).await;
                return Err(e.into());
            }
        };
        match opened {
            ferry_store::UploadOpened::Opened { expired } => {
                discard(ferry, &expired).await;
                break;
            }
            ferry_store::UploadOpened::Refused {
                cap,
                next_expiry,
                expired,
            } => {
                discard(ferry, &expired).await;
                if !purged {
                    purged = true;
                    let gone = meta.sweep_uploads(now, limits.idle_ms(), true).await?;
                    if !gone.is_empty() {
                        discard(ferry, &gone).await;
                        continue;
                    }
                }
                discard(ferry, std::slice::from_ref(&id)).await;
                let left = next_expiry.map(|at| Duration::from_millis(u64::try_from(at - now).unwrap_or(0)));
                return Err(too_many(cap, &who, &limits, left));
            }
        }
    }
    uploads.sweep_in_background(ferry)?;
    Ok(UploadStatus { id, size: 0 })
}

/// `GET …/blobs/uploads/ID`: how far session `id` got.
pub async fn upload_status(
    ferry: &Ferry,
    uploads: &Uploads,
    feed: &FeedRecord,
    repo: &str,
    id: &str,
) -> Result<UploadStatus> {
    let size = uploads.lookup(ferry, feed, repo, id).await?;
    Ok(UploadStatus {
        id: id.to_owned(),
        size,
    })
}

/// Appends a chunk to a session the caller holds. `range` is the chunk's
/// `Content-Range` (inclusive): it must start where the session ends, and
/// the body may not run past its end (RANGE_INVALID, answered with 416;
/// the session is unchanged).
async fn append(
    ferry: &Ferry,
    held: &InUse,
    range: Option<(u64, u64)>,
    body: ByteStream,
) -> Result<UploadStatus> {
    let id = held.id.as_str();
    let current = held.size;
    let max = ferry.config().max_upload_bytes;
    let limit = match range {
        Some((start, _)) if start != current => {
            return Err(range_invalid(format!(
                "the chunk starts at byte {start} but the upload holds {current} bytes; send bytes from {current}"
            )));
        }
        Some((_, end)) => end.saturating_add(1).min(max),
        None => max,
    };
    match ferry.blob_store().upload_append(id, body, limit).await {
        Ok(size) => Ok(UploadStatus {
            id: id.to_owned(),
            size,
        }),
        Err(StoreError::TooLarge { .. }) if range.is_some_and(|(_, end)| end < max) => Err(range_invalid(
            "the chunk carries more bytes than its Content-Range says".into(),
        )),
        Err(StoreError::NotFound(_)) => {
            ferry.metadata().end_upload(id).await?;
            Err(upload_unknown(id))
        }
        Err(e) => Err(upload_error(e)),
    }
}

fn range_invalid(message: String) -> Error {
    Error::new(ErrorCode::RangeInvalid, CoreError::Invalid(message))
}

/// `PATCH …/blobs/uploads/ID`: appends a chunk (see [`append`]). The
/// session cannot expire while the chunk arrives.
pub async fn upload_chunk(
    ferry: &Ferry,
    uploads: &Uploads,
    feed: &FeedRecord,
    repo: &str,
    id: &str,
    range: Option<(u64, u64)>,
    body: ByteStream,
) -> Result<UploadStatus> {
    let held = uploads.enter(ferry, feed, repo, id).await?;
    match append(ferry, &held, range, body).await {
        Ok(status) => {
            held.release(Some(status.size)).await?;
            Ok(status)
        }
        Err(e) => {
            held.release(None).await?;
            Err(e)
        }
    }
}

/// `PUT …/blobs/uploads/ID?digest=`: appends the last chunk (possibly
/// empty), verifies the whole content against `expected` (DIGEST_INVALID;
/// the session is discarded and nothing stored), commits and links it.
/// Returns the blob's size.
#[allow(clippy::too_many_arguments)]
pub async fn finish_upload(
    ferry: &Ferry,
    uploads: &Uploads,
    feed: &FeedRecord,
    repo: &str,
    id: &str,
    expected: &OciDigest,
    range: Option<(u64, u64)>,
    body: ByteStream,
) -> Result<u64> {
    let held = uploads.enter(ferry, feed, repo, id).await?;
    let size = match append(ferry, &held, range, body).await {
        Ok(status) => status.size,
        Err(e) => {
            held.release(None).await?;
            return Err(e);
        }
    };
    let staged = ferry
        .blob_store()
        .upload_finish(id, expected.sha256().as_ref())
        .await;
    if matches!(staged, Err(StoreError::Conflict(_))) {
        held.release(Some(size)).await?;
    } else {
        held.forget();
        ferry.metadata().end_upload(id).await?;
    }
    let staged = match staged {
        Ok(s) => s,
        Err(StoreError::NotFound(_)) => return Err(upload_unknown(id)),
        Err(e) => return Err(upload_error(e)),
    };
    commit_upload(ferry, feed, repo, staged, expected).await
}

/// `DELETE …/blobs/uploads/ID`: discards the session.
pub async fn cancel_upload(
    ferry: &Ferry,
    uploads: &Uploads,
    feed: &FeedRecord,
    repo: &str,
    id: &str,
) -> Result<()> {
    uploads.lookup(ferry, feed, repo, id).await?;
    ferry.metadata().end_upload(id).await?;
    ferry.blob_store().upload_abort(id).await?;
    Ok(())
}

// ---------------------------------------------------------------------------
// References between manifests

static REPO_LOCKS: crate::name_locks::NameLocks = crate::name_locks::NameLocks::new();

/// Serializes, on this instance, what adds or removes references between
/// the manifests of repository `repo`: manifest PUTs (an index listing its
/// children, a tag naming a manifest), deletes by digest, and pruning. Each
/// reads the repository's items and writes while holding the lock, so
/// "no index lists this manifest" still holds when the delete commits, and
/// an index push that checked its children finds them still there.
///
/// The locks are process-wide stripes ([`crate::name_locks::NameLocks`]).
///
/// Changes applied by replication take no lock: a received delete of a
/// manifest that a live index lists is refused instead (see
/// `refused_manifest_deletes`; the puller keeps it as stuck and retries
/// it). Not covered: an index pushed on one instance while its child is
/// deleted later on another, before either has the other's change. The
/// instance holding the index refuses the child's delete (stuck, named,
/// until the index goes), but the other one receives the index without
/// the child; preventing that would take coordination between instances.
async fn lock_repository(feed: &FeedRecord, repo: &str) -> tokio::sync::MutexGuard<'static, ()> {
    REPO_LOCKS.lock(feed.id, repo).await
}

/// The manifests an item of repository manifest `digest` lists as
/// children. An item whose metadata cannot be read is taken to list every
/// digest among its blobs (an index's blobs include its children's
/// manifest bytes): in doubt, a manifest counts as referenced.
fn listed_children(digest: &Digest, item: &ItemRecord, meta: Option<&ManifestMeta>) -> Vec<Digest> {
    match meta {
        Some(m) => m.children.clone(),
        None => item.blobs.iter().filter(|b| *b != digest).copied().collect(),
    }
}

/// The manifests a manifest or tag item of one repository points at: an
/// index's children (see [`listed_children`]), a tag's manifest (by its
/// blob when its metadata cannot be read). Upload links point at none.
fn item_refs(key: &OciItemKey, meta: &serde_json::Value, blobs: &[Digest]) -> Vec<Digest> {
    match key {
        OciItemKey::Manifest { digest, .. } => match serde_json::from_value::<ManifestMeta>(meta.clone()) {
            Ok(m) => m.children,
            Err(_) => blobs.iter().filter(|b| *b != digest).copied().collect(),
        },
        OciItemKey::Tag { .. } => match serde_json::from_value::<TagMeta>(meta.clone()) {
            Ok(t) => vec![t.digest],
            Err(_) => blobs.to_vec(),
        },
        OciItemKey::Blob { .. } => Vec::new(),
    }
}

/// The tags among `tags` (tag items, with what they point at) that name
/// `digest`, sorted.
fn tags_naming<'a>(tags: impl Iterator<Item = (&'a str, &'a [Digest])>, digest: &Digest) -> Vec<String> {
    let mut names: Vec<String> = tags
        .filter(|(_, refs)| refs.contains(digest))
        .map(|(t, _)| t.to_string())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// `index (tags: a, b)` or `index (untagged)`, for refusals.
/// Each of `indexes` with the tags (of `tags`, tag → what it points at)
/// naming it, for messages.
fn describe_indexes(indexes: &[Digest], tags: &[(String, Vec<Digest>)]) -> Vec<String> {
    indexes
        .iter()
        .map(|index| {
            let names = tags_naming(tags.iter().map(|(t, r)| (t.as_str(), r.as_slice())), index);
            describe_index(index, &names)
        })
        .collect()
}

fn describe_index(index: &Digest, tags: &[String]) -> String {
    if tags.is_empty() {
        format!("{index} (untagged)")
    } else {
        format!("{index} (tags: {})", tags.join(", "))
    }
}

/// The indexes among `manifests` (one repository's manifest items) that
/// list `target`, sorted.
fn indexes_listing(manifests: &[ItemRecord], target: &Digest) -> Vec<Digest> {
    let mut out: Vec<Digest> = manifests
        .iter()
        .filter_map(|item| {
            let Some(OciItemKey::Manifest { digest, .. }) = format::parse_item_key(&item.key) else {
                return None;
            };
            let meta = serde_json::from_value::<ManifestMeta>(item.meta.clone()).ok();
            listed_children(&digest, item, meta.as_ref())
                .contains(target)
                .then_some(digest)
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// DENIED (409): `digest` is listed by `indexes` (with the tags naming
/// each, from `tags`: the repository's tag items).
fn referenced_by_index(digest: &Digest, indexes: &[Digest], tags: &[ItemRecord]) -> Error {
    let tags: Vec<(String, Vec<Digest>)> = tags
        .iter()
        .filter_map(|t| {
            let meta = serde_json::from_value::<TagMeta>(t.meta.clone()).ok()?;
            match format::parse_item_key(&t.key) {
                Some(OciItemKey::Tag { tag, .. }) => Some((tag, vec![meta.digest])),
                _ => None,
            }
        })
        .collect();
    let described = describe_indexes(indexes, &tags);
    let message = match described.as_slice() {
        [one] => format!("manifest {digest} is referenced by index {one}; delete the index first"),
        many => format!(
            "manifest {digest} is referenced by indexes {}; delete those indexes first",
            many.join(", ")
        ),
    };
    Error::new(ErrorCode::Denied, CoreError::Conflict(message))
}

// ---------------------------------------------------------------------------
// Deletes received from elsewhere

/// Whether a received change stamped `change` takes the place of what is
/// stored under its key (stamped `stored`; `None`: nothing), as the store
/// will decide it: the later stamp wins, or, when `overwrite`s (the repair
/// of a replica), any other stamp.
fn takes_over(stored: Option<Stamp>, change: Stamp, overwrite: bool) -> bool {
    match stored {
        None => true,
        Some(s) if overwrite => s != change,
        Some(s) => change > s,
    }
}

/// The manifest deletes among `changes` — received from elsewhere (a
/// peer's push, a pulled page, a bundle) and to be applied together, in
/// order — that must be refused, with the reason naming the key: those
/// that would delete a live manifest here while a manifest item of its
/// repository that stays live lists it (an image index or manifest list,
/// as [`delete_manifest`] refuses a client), or while a tag that stays
/// live names it (a client's delete by digest takes the manifest's tags
/// with it, so a delete that comes without them comes from an instance
/// that did not know the tag).
///
/// "Stays live" is judged on the state after the batch: an index (or
/// tag) the same batch deletes, or points elsewhere, no longer holds the
/// manifest back, whether its change comes before or after the
/// manifest's; a change that would lose to what is stored here (see
/// [`takes_over`]) changes nothing, and neither does a refused one, so
/// refusals are found to a fixpoint (an index kept by its own index keeps
/// its children). A delete that would lose anyway, or of a manifest not
/// live here, is never refused: it changes nothing.
pub(crate) async fn refused_manifest_deletes(
    ferry: &Ferry,
    feed: &FeedRecord,
    changes: &[&Change],
    overwrite: bool,
) -> std::result::Result<HashMap<usize, String>, CoreError> {
    let parsed: Vec<Option<OciItemKey>> = changes.iter().map(|c| format::parse_item_key(&c.key)).collect();
    let mut repos = BTreeSet::new();
    for (c, k) in changes.iter().zip(&parsed) {
        if let (ChangeOp::Delete, Some(OciItemKey::Manifest { repo, .. })) = (&c.op, k) {
            repos.insert(repo.clone());
        }
    }
    let mut refused: HashMap<usize, String> = HashMap::new();
    for repo in repos {
        // The repository's live manifests and tags, and the batch's changes to them.
        let mut stored: HashMap<ItemKey, ItemRecord> = HashMap::new();
        for prefix in [format::manifest_prefix(&repo), format::tag_prefix(&repo)] {
            for item in repo_items(ferry, feed, &repo, &prefix)
                .await
                .map_err(|e| e.error)?
            {
                stored.insert(item.key.clone(), item);
            }
        }
        let touching: Vec<usize> = (0..changes.len())
            .filter(|i| {
                matches!(&parsed[*i], Some(OciItemKey::Manifest { repo: r, .. } | OciItemKey::Tag { repo: r, .. }) if *r == repo)
            })
            .collect();
        let mut before: HashMap<ItemKey, Option<Stamp>> = HashMap::new();
        for i in &touching {
            let key = &changes[*i].key;
            if before.contains_key(key) {
                continue;
            }
            let stamp = match stored.get(key) {
                Some(item) => Some(item.stamp),
                None => ferry.metadata().tombstone(feed.id, key).await?,
            };
            before.insert(key.clone(), stamp);
        }
        loop {
            // Key → (stamp, what the item points at while live) after the
            // batch, leaving out the refused changes.
            let mut after: HashMap<ItemKey, (Option<Stamp>, Option<Vec<Digest>>)> = stored
                .iter()
                .filter_map(|(k, item)| {
                    let parsed = format::parse_item_key(k)?;
                    Some((
                        k.clone(),
                        (
                            Some(item.stamp),
                            Some(item_refs(&parsed, &item.meta, &item.blobs)),
                        ),
                    ))
                })
                .collect();
            for i in &touching {
                if refused.contains_key(i) {
                    continue;
                }
                let (c, Some(k)) = (changes[*i], &parsed[*i]) else {
                    continue;
                };
                let current = match after.get(&c.key) {
                    Some((stamp, _)) => *stamp,
                    None => before.get(&c.key).copied().flatten(),
                };
                if !takes_over(current, c.stamp, overwrite) {
                    continue;
                }
                let refs = match &c.op {
                    ChangeOp::Upsert { meta, blobs, .. } => Some(item_refs(k, meta, blobs)),
                    ChangeOp::Delete => None,
                };
                after.insert(c.key.clone(), (Some(c.stamp), refs));
            }
            let mut grew = false;
            for i in &touching {
                let (c, Some(OciItemKey::Manifest { digest, .. })) = (changes[*i], &parsed[*i]) else {
                    continue;
                };
                if !matches!(c.op, ChangeOp::Delete) || refused.contains_key(i) {
                    continue;
                }
                // Only a delete that removes a live manifest here can leave
                // something pointing at nothing.
                let Some(here) = stored.get(&c.key) else {
                    continue;
                };
                if !takes_over(Some(here.stamp), c.stamp, overwrite)
                    || after.get(&c.key).is_some_and(|(_, live)| live.is_some())
                {
                    continue;
                }
                let mut indexes = Vec::new();
                let mut tags: Vec<(String, Vec<Digest>)> = Vec::new();
                for (k, (_, refs)) in &after {
                    let Some(refs) = refs else { continue };
                    match format::parse_item_key(k) {
                        Some(OciItemKey::Manifest { digest: d, .. })
                            if d != *digest && refs.contains(digest) =>
                        {
                            indexes.push(d)
                        }
                        Some(OciItemKey::Tag { tag, .. }) => tags.push((tag, refs.clone())),
                        _ => {}
                    }
                }
                indexes.sort();
                let naming = tags_naming(tags.iter().map(|(t, r)| (t.as_str(), r.as_slice())), digest);
                if indexes.is_empty() && naming.is_empty() {
                    continue;
                }
                refused.insert(*i, still_referenced(&c.key, digest, &indexes, &naming, &tags));
                grew = true;
            }
            if !grew {
                break;
            }
        }
    }
    Ok(refused)
}

/// Why a received delete of manifest item `key` (manifest `digest`) is
/// refused: `indexes` list it and `naming` tags name it here, and stay.
fn still_referenced(
    key: &ItemKey,
    digest: &Digest,
    indexes: &[Digest],
    naming: &[String],
    tags: &[(String, Vec<Digest>)],
) -> String {
    let mut why = Vec::new();
    if !indexes.is_empty() {
        let described = describe_indexes(indexes, tags);
        why.push(match described.as_slice() {
            [one] => format!("is referenced here by index {one}"),
            many => format!("is referenced here by indexes {}", many.join(", ")),
        });
    }
    match naming {
        [] => {}
        [one] => why.push(format!("is named here by tag {one}")),
        many => why.push(format!("is named here by tags {}", many.join(", "))),
    }
    let until = match (indexes.len(), naming.len()) {
        (0, 1) => "the tag is deleted too",
        (0, _) => "those tags are deleted too",
        (1, _) => "the index is deleted first",
        _ => "those indexes are deleted first",
    };
    format!(
        "OCI item {key}: manifest {digest} {}; its delete is refused until {until}",
        why.join(" and ")
    )
}

// ---------------------------------------------------------------------------
// Manifests and tags

/// What a manifest PUT stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutManifest {
    /// The manifest's sha256 identity.
    pub digest: Digest,
    /// The digest to answer with (`Location`, `Docker-Content-Digest`):
    /// the reference's when it is a digest (sha256 or sha512), else the
    /// sha256 identity.
    pub named: OciDigest,
    /// The `subject` the manifest refers to, as it writes it (answered as
    /// `OCI-Subject`).
    pub subject: Option<OciDigest>,
}

/// `PUT …/manifests/REFERENCE`: validates the manifest (media type,
/// structure; the digest when the reference is one), refuses it
/// (MANIFEST_BLOB_UNKNOWN) unless its config and layers — or, for an index,
/// its child manifests — are in the repository, stores the bytes exactly
/// as pushed, and writes the manifest item (and the tag item) in one
/// transaction.
pub async fn put_manifest(
    ferry: &Ferry,
    feed: &FeedRecord,
    repo: &str,
    reference: &str,
    content_type: Option<&str>,
    body: Bytes,
) -> Result<PutManifest> {
    check_repository(repo)?;
    let reference = format::parse_reference(reference)?;
    if body.len() > format::MAX_MANIFEST_BYTES {
        return Err(Error::new(
            ErrorCode::SizeInvalid,
            CoreError::TooLarge(format!(
                "the manifest is {} bytes; the limit is {} bytes",
                body.len(),
                format::MAX_MANIFEST_BYTES
            )),
        ));
    }
    let ct = content_type.map(str::to_owned);
    let parse_body = body.clone();
    let (parsed, digest, sha512) = tokio::task::spawn_blocking(move || {
        (
            format::parse_manifest(&parse_body, ct.as_deref()),
            Digest::of(&parse_body),
            Sha512Digest::of(&parse_body),
        )
    })
    .await
    .map_err(join_error)?;
    let manifest = parsed?;
    let named = match &reference {
        Reference::Digest(d) => {
            let actual = match d {
                OciDigest::Sha256(_) => OciDigest::Sha256(digest),
                OciDigest::Sha512(_) => OciDigest::Sha512(sha512),
            };
            if actual != *d {
                return Err(Error::new(
                    ErrorCode::DigestInvalid,
                    CoreError::invalid(format!(
                        "the manifest's digest is {actual}, not {d} as the reference says"
                    )),
                ));
            }
            *d
        }
        Reference::Tag(_) => OciDigest::Sha256(digest),
    };

    // Everything the manifest needs must be in the repository (a sha512
    // digest through the aliases the repository's items record).
    let have = repo_blobs(ferry, feed, repo).await?;
    let mut blobs = vec![digest];
    for (named_blob, claimed) in manifest.required_blobs() {
        let d = match resolve(ferry, feed, repo, &named_blob).await? {
            Some(d) if set_contains(&have, &d) => d,
            _ => {
                return Err(Error::new(
                    ErrorCode::ManifestBlobUnknown,
                    CoreError::invalid(format!(
                        "blob {named_blob} referenced by the manifest is not in repository {repo}; push it first"
                    )),
                ));
            }
        };
        match ferry.blob_size(&d).await? {
            Some(actual) if actual == claimed => {}
            Some(actual) => {
                return Err(Error::new(
                    ErrorCode::ManifestInvalid,
                    CoreError::invalid(format!(
                        "the manifest gives blob {d} a size of {claimed} bytes; it is {actual} bytes"
                    )),
                ));
            }
            None => {
                return Err(Error::new(
                    ErrorCode::ManifestBlobUnknown,
                    CoreError::invalid(format!("blob {d} referenced by the manifest is not stored")),
                ));
            }
        }
        blobs.push(d);
    }
    // From here to the write: no delete of a child in between (nor a prune
    // that would miss the new index or tag).
    let _repo_lock = lock_repository(feed, repo).await;
    let aliases = repo_aliases(ferry, feed, repo).await?;
    let known = |s: &Sha512Digest| alias_of(&aliases, s);
    let size = body.len() as u64;
    let meta = manifest.item_meta(size, sha512, known).map_err(|d| {
        Error::new(
            ErrorCode::ManifestBlobUnknown,
            CoreError::invalid(format!(
                "{d}, which the manifest refers to, is not in repository {repo}; push it first"
            )),
        )
    })?;
    let mut writes = Vec::new();
    for child in &meta.children {
        let Some(item) = ferry.item(feed, &format::manifest_key(repo, child)?).await? else {
            return Err(child_unknown(repo, child));
        };
        blobs.extend(item.blobs.iter().copied());
    }
    // The manifests the index lists (and theirs, for nested indexes) are
    // written again with the index: they take stamps as new as its own, so
    // an older delete of one of them made elsewhere loses to this push
    // instead of leaving the index without its child once replicated.
    writes.extend(restamp_listed(ferry, feed, repo, &meta.children).await?);
    let mut seen = HashSet::new();
    blobs.retain(|d| seen.insert(*d));

    let staged = ferry.stage_bytes(body).await?;
    ferry.commit_blob(staged).await?;

    // Pushing the same bytes again writes the same item again, with a new
    // stamp: the client's latest action wins over an older delete of the
    // manifest or the tag made on another instance (or not yet replicated
    // here), as last-writer-wins decides it.
    writes.push(LocalWrite::upsert(
        format::manifest_key(repo, &digest)?,
        meta_value(&meta)?,
        blobs,
        Precondition::Any,
    ));
    if let Reference::Tag(tag) = &reference {
        let tag_meta = TagMeta {
            digest,
            media_type: meta.media_type.clone(),
        };
        writes.push(LocalWrite::upsert(
            format::tag_key(repo, tag)?,
            meta_value(&tag_meta)?,
            vec![digest],
            Precondition::Any,
        ));
    }
    match ferry.write(feed, writes).await {
        Ok(_) => {}
        // A listed manifest deleted by replication since it was read.
        Err(CoreError::NotFound(m)) => {
            return Err(Error::new(
                ErrorCode::ManifestBlobUnknown,
                CoreError::invalid(format!(
                    "a manifest listed by the index left repository {repo} meanwhile ({m}); push it again"
                )),
            ));
        }
        Err(e) => return Err(e.into()),
    }
    Ok(PutManifest {
        digest,
        named,
        subject: manifest.subject.as_ref().map(|s| s.digest),
    })
}

fn child_unknown(repo: &str, child: &Digest) -> Error {
    Error::new(
        ErrorCode::ManifestBlobUnknown,
        CoreError::invalid(format!(
            "manifest {child} listed by the index is not in repository {repo}; push it first"
        )),
    )
}

/// Rewrites of the manifest items of `repo` that an index being pushed
/// lists (`children`), and of those they list in turn, unchanged but for
/// their new stamps. A nested manifest missing here is left out (the
/// direct children were checked by the caller).
async fn restamp_listed(
    ferry: &Ferry,
    feed: &FeedRecord,
    repo: &str,
    children: &[Digest],
) -> Result<Vec<LocalWrite>> {
    let mut writes = Vec::new();
    let mut seen: HashSet<Digest> = HashSet::new();
    let mut queue: Vec<Digest> = children.to_vec();
    while let Some(d) = queue.pop() {
        if !seen.insert(d) {
            continue;
        }
        let Some(item) = ferry.item(feed, &format::manifest_key(repo, &d)?).await? else {
            continue;
        };
        let meta = serde_json::from_value::<ManifestMeta>(item.meta.clone()).ok();
        queue.extend(listed_children(&d, &item, meta.as_ref()));
        writes.push(LocalWrite::upsert(
            item.key,
            item.meta,
            item.blobs,
            Precondition::Present,
        ));
    }
    Ok(writes)
}

/// A stored manifest, as needed to serve it.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    /// The manifest item (downloads are counted on it).
    pub key: ItemKey,
    /// Its sha256 identity (the blob served).
    pub digest: Digest,
    /// The digest to answer with: the reference's when it is a digest,
    /// else the sha256 identity.
    pub named: OciDigest,
    pub media_type: String,
    pub size: u64,
    pub created_at: i64,
}

fn manifest_meta(item: &ItemRecord) -> Result<ManifestMeta> {
    serde_json::from_value(item.meta.clone())
        .map_err(|e| CoreError::Internal(format!("manifest item {}: {e}", item.key)).into())
}

/// The digest a stored tag points at, if the tag exists.
async fn tag_target(ferry: &Ferry, feed: &FeedRecord, repo: &str, tag: &str) -> Result<Option<Digest>> {
    let Some(item) = ferry.item(feed, &format::tag_key(repo, tag)?).await? else {
        return Ok(None);
    };
    let meta: TagMeta = serde_json::from_value(item.meta)
        .map_err(|e| CoreError::Internal(format!("tag item {}: {e}", item.key)))?;
    Ok(Some(meta.digest))
}

/// `GET/HEAD …/manifests/REFERENCE`. A tag resolves only through an
/// existing manifest item (MANIFEST_UNKNOWN otherwise).
pub async fn manifest(
    ferry: &Ferry,
    feed: &FeedRecord,
    repo: &str,
    reference: &str,
) -> Result<StoredManifest> {
    check_repository(repo)?;
    let reference = format::parse_reference(reference)?;
    let (digest, named) = match &reference {
        Reference::Digest(d) => (
            resolve(ferry, feed, repo, d)
                .await?
                .ok_or_else(|| manifest_unknown(repo, &reference))?,
            *d,
        ),
        Reference::Tag(t) => {
            let d = tag_target(ferry, feed, repo, t)
                .await?
                .ok_or_else(|| manifest_unknown(repo, &reference))?;
            (d, OciDigest::Sha256(d))
        }
    };
    let key = format::manifest_key(repo, &digest)?;
    let item = ferry
        .item(feed, &key)
        .await?
        .ok_or_else(|| manifest_unknown(repo, &reference))?;
    let meta = manifest_meta(&item)?;
    Ok(StoredManifest {
        key,
        digest,
        named,
        media_type: meta.media_type,
        size: meta.size,
        created_at: item.created_at,
    })
}

/// `DELETE …/manifests/REFERENCE`: by digest, removes the manifest and every
/// tag of the repository pointing at it; by tag, removes the tag only.
///
/// A manifest that an index of the repository lists (an image index or a
/// manifest list, whether tagged or not) is not deleted: DENIED, as a
/// conflict, naming the indexes and their tags. Deleting the indexes first
/// lets it go. The check and the delete happen under the repository's lock
/// (see `lock_repository`).
pub async fn delete_manifest(ferry: &Ferry, feed: &FeedRecord, repo: &str, reference: &str) -> Result<()> {
    check_repository(repo)?;
    let reference = format::parse_reference(reference)?;
    let _repo_lock;
    let writes = match &reference {
        Reference::Tag(tag) => vec![LocalWrite::delete(
            format::tag_key(repo, tag)?,
            Precondition::Present,
        )],
        Reference::Digest(named) => {
            _repo_lock = lock_repository(feed, repo).await;
            let Some(digest) = resolve(ferry, feed, repo, named).await? else {
                return Err(manifest_unknown(repo, &reference));
            };
            let digest = &digest;
            let key = format::manifest_key(repo, digest)?;
            if ferry.item(feed, &key).await?.is_none() {
                return Err(manifest_unknown(repo, &reference));
            }
            let tags = repo_items(ferry, feed, repo, &format::tag_prefix(repo)).await?;
            let manifests = repo_items(ferry, feed, repo, &format::manifest_prefix(repo)).await?;
            let indexes = indexes_listing(&manifests, digest);
            if !indexes.is_empty() {
                return Err(referenced_by_index(digest, &indexes, &tags));
            }
            let mut writes = vec![LocalWrite::delete(key, Precondition::Present)];
            for item in tags {
                let points_here = serde_json::from_value::<TagMeta>(item.meta)
                    .ok()
                    .is_some_and(|t| t.digest == *digest);
                if points_here {
                    writes.push(LocalWrite::delete(item.key, Precondition::Present));
                }
            }
            writes
        }
    };
    match ferry.write(feed, writes).await {
        Ok(_) => Ok(()),
        Err(CoreError::NotFound(_)) => Err(manifest_unknown(repo, &reference)),
        Err(e) => Err(e.into()),
    }
}

// ---------------------------------------------------------------------------
// Listings

/// Page size when the client gives no `n`.
pub const DEFAULT_PAGE: usize = 1000;
/// Largest page served.
pub const MAX_PAGE: usize = 10_000;

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub entries: Vec<String>,
    /// Whether more entries follow the last one.
    pub more: bool,
}

fn page_size(n: Option<usize>) -> usize {
    n.unwrap_or(DEFAULT_PAGE).min(MAX_PAGE)
}

/// `GET …/tags/list?n=&last=`: the repository's tags in lexical order,
/// after `last`. NAME_UNKNOWN when the repository holds nothing.
pub async fn tags(
    ferry: &Ferry,
    feed: &FeedRecord,
    repo: &str,
    n: Option<usize>,
    last: Option<&str>,
) -> Result<Page> {
    check_repository(repo)?;
    let n = page_size(n);
    let prefix = format::tag_prefix(repo);
    let mut after = match last {
        Some(l) if !l.is_empty() => Some(
            ItemKey::new(format!("{prefix}{l}"))
                .map_err(|e| Error::new(ErrorCode::Unsupported, CoreError::invalid(e.to_string())))?,
        ),
        _ => None,
    };
    let mut entries = Vec::new();
    let mut more = false;
    const BATCH: usize = 500;
    'scan: loop {
        let page = ferry.items_page(feed, &prefix, after.as_ref(), BATCH).await?;
        let done = page.len() < BATCH;
        after = page.last().map(|i| i.key.clone());
        for item in page {
            if let Some(OciItemKey::Tag { repo: r, tag }) = format::parse_item_key(&item.key)
                && r == repo
            {
                if entries.len() == n {
                    more = true;
                    break 'scan;
                }
                entries.push(tag);
            }
        }
        if done {
            break;
        }
    }
    if entries.is_empty() && last.is_none() && repo_blobs(ferry, feed, repo).await?.is_empty() {
        return Err(Error::new(
            ErrorCode::NameUnknown,
            CoreError::not_found(format!("repository {repo} is not in feed {}", feed.name)),
        ));
    }
    Ok(Page { entries, more })
}

/// The repositories of a feed that hold manifests, sorted.
async fn repositories(ferry: &Ferry, feed: &FeedRecord) -> Result<Vec<String>> {
    let list = ferry
        .cached_index(feed, "oci\u{1f}repositories", || async {
            let mut repos = BTreeSet::new();
            for item in ferry.items(feed, "manifest/").await? {
                if let Some(OciItemKey::Manifest { repo, .. }) = format::parse_item_key(&item.key) {
                    repos.insert(repo);
                }
            }
            Ok(Bytes::from(repos.into_iter().collect::<Vec<_>>().join("\n")))
        })
        .await?;
    let text =
        std::str::from_utf8(&list).map_err(|e| CoreError::Internal(format!("cached repositories: {e}")))?;
    Ok(text
        .split('\n')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect())
}

/// `GET /v2/_catalog?n=&last=`: the repositories, as `FEED/NAME`, of every
/// OCI feed `principal` may read and for which `listed` holds (a registry
/// token's scope), in lexical order after `last`.
pub async fn catalog(
    ferry: &Ferry,
    principal: Option<&Principal>,
    listed: impl Fn(&str) -> bool,
    n: Option<usize>,
    last: Option<&str>,
) -> Result<Page> {
    let n = page_size(n);
    let mut names = Vec::new();
    for feed in ferry.feeds().await? {
        if feed.feed_type != FeedType::Oci || auth::authorize_feed(principal, &feed, Action::Read).is_err() {
            continue;
        }
        for repo in repositories(ferry, &feed).await? {
            let name = format!("{}/{repo}", feed.name);
            if listed(&name) {
                names.push(name);
            }
        }
    }
    names.sort();
    let start = last.map_or(0, |l| names.partition_point(|x| x.as_str() <= l));
    let rest = names.get(start..).unwrap_or_default();
    Ok(Page {
        entries: rest.iter().take(n).cloned().collect(),
        more: rest.len() > n,
    })
}

/// `GET …/referrers/DIGEST[?artifactType=]`: an image index of the
/// descriptors of the repository's manifests whose `subject` is `digest`,
/// filtered by artifact type when one is given. Cached until the feed changes.
pub async fn referrers(
    ferry: &Ferry,
    feed: &FeedRecord,
    repo: &str,
    subject: &OciDigest,
    artifact_type: Option<&str>,
) -> Result<Bytes> {
    check_repository(repo)?;
    // A subject nothing here is stored under has no referrers (yet).
    let Some(digest) = resolve(ferry, feed, repo, subject).await? else {
        return Ok(Bytes::from(format::render_referrers(&[])));
    };
    let digest = &digest;
    let key = format!(
        "oci\u{1f}referrers\u{1f}{repo}\u{1f}{digest}\u{1f}{}",
        artifact_type.unwrap_or_default()
    );
    Ok(ferry
        .cached_index(feed, &key, || async {
            let items = repo_items(ferry, feed, repo, &format::manifest_prefix(repo))
                .await
                .map_err(|e| e.error)?;
            let mut found = Vec::new();
            for item in &items {
                let Some(OciItemKey::Manifest { digest: d, .. }) = format::parse_item_key(&item.key) else {
                    continue;
                };
                let meta = match manifest_meta(item) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(key = %item.key, feed = %feed.name, "OCI manifest item skipped: {e}");
                        continue;
                    }
                };
                let wanted = meta.subject == Some(*digest)
                    && artifact_type.is_none_or(|t| meta.artifact_type.as_deref() == Some(t));
                if wanted {
                    found.push(Referrer { digest: d, meta });
                }
            }
            Ok(Bytes::from(format::render_referrers(&found)))
        })
        .await?)
}

// ---------------------------------------------------------------------------
// Pruning

/// What [`prune_untagged`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    pub manifests_deleted: u64,
    pub links_deleted: u64,
}

/// Deletes, in every repository of an OCI feed, the manifests written more
/// than `older_than` ago that nothing keeps: a manifest is kept when it is
/// tagged, younger than that, a child of a kept index, or a referrer
/// (`subject`) of a kept manifest. Upload links older than that whose blob
/// no remaining manifest of the repository lists are deleted too, so the
/// next garbage collection frees their content.
///
/// A manifest a remaining index lists is never deleted, and an index goes
/// before its children (even across write batches), so no state on the
/// way leaves an index naming a missing manifest. Each repository is read
/// and pruned under its lock (see `lock_repository`): a manifest tagged,
/// or listed by an index pushed, while the pass runs is seen and kept.
pub async fn prune_untagged(
    ferry: &Ferry,
    feed: &FeedRecord,
    older_than: Duration,
) -> std::result::Result<PruneReport, CoreError> {
    if feed.feed_type != FeedType::Oci {
        return Err(CoreError::invalid(format!(
            "feed {} is not an OCI feed",
            feed.name
        )));
    }
    let cutoff = now_millis().saturating_sub(i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX));
    let mut repos = BTreeSet::new();
    for item in ferry.items(feed, "").await? {
        if let Some(
            OciItemKey::Manifest { repo, .. } | OciItemKey::Tag { repo, .. } | OciItemKey::Blob { repo, .. },
        ) = format::parse_item_key(&item.key)
        {
            repos.insert(repo);
        }
    }

    const BATCH: usize = 500;
    let mut report = PruneReport::default();
    for repo in repos {
        let _repo_lock = lock_repository(feed, &repo).await;
        let mut items = Vec::new();
        for prefix in [
            format::manifest_prefix(&repo),
            format::tag_prefix(&repo),
            format::blob_prefix(&repo),
        ] {
            items.extend(
                repo_items(ferry, feed, &repo, &prefix)
                    .await
                    .map_err(|e| e.error)?,
            );
        }
        let plan = plan_prune(&feed.name, items, cutoff);
        let mut deletes = plan.deletes.into_iter().peekable();
        while deletes.peek().is_some() {
            let batch: Vec<LocalWrite> = deletes
                .by_ref()
                .take(BATCH)
                .map(|key| LocalWrite::delete(key, Precondition::Any))
                .collect();
            ferry.write(feed, batch).await?;
        }
        report.manifests_deleted += plan.report.manifests_deleted;
        report.links_deleted += plan.report.links_deleted;
    }
    Ok(report)
}

/// What pruning one repository deletes, in order.
struct PrunePlan {
    /// Manifests, each after every manifest that lists it; then links.
    deletes: Vec<ItemKey>,
    report: PruneReport,
}

/// Decides what [`prune_untagged`] deletes among `items` (the manifest,
/// tag and link items of one repository), for manifests and links written
/// before `cutoff`.
fn plan_prune(feed: &FeedName, items: Vec<ItemRecord>, cutoff: i64) -> PrunePlan {
    // Digest → item, metadata (None: unreadable), the manifests it lists.
    let mut manifests: HashMap<Digest, (ItemRecord, Option<ManifestMeta>, Vec<Digest>)> = HashMap::new();
    let mut tagged: HashSet<Digest> = HashSet::new();
    let mut links: Vec<(ItemRecord, Digest)> = Vec::new();
    for item in items {
        match format::parse_item_key(&item.key) {
            Some(OciItemKey::Manifest { digest, .. }) => {
                let meta = match serde_json::from_value::<ManifestMeta>(item.meta.clone()) {
                    Ok(m) => Some(m),
                    Err(e) => {
                        // Unreadable: never pruned, and taken to keep every
                        // manifest among its blobs.
                        tracing::warn!(key = %item.key, feed = %feed, "unreadable OCI manifest item left alone: {e}");
                        None
                    }
                };
                let children = listed_children(&digest, &item, meta.as_ref());
                manifests.insert(digest, (item, meta, children));
            }
            Some(OciItemKey::Tag { .. }) => {
                if let Ok(t) = serde_json::from_value::<TagMeta>(item.meta) {
                    tagged.insert(t.digest);
                }
            }
            Some(OciItemKey::Blob { digest, .. }) => links.push((item, digest)),
            None => {}
        }
    }

    // Roots: tagged, young or unreadable manifests. Then what they keep, to
    // a fixpoint.
    let mut kept: HashSet<Digest> = manifests
        .iter()
        .filter(|(d, (item, meta, _))| tagged.contains(d) || item.created_at >= cutoff || meta.is_none())
        .map(|(d, _)| *d)
        .collect();
    loop {
        let mut grew = false;
        for (d, (_, meta, children)) in &manifests {
            if kept.contains(d) {
                for c in children {
                    if manifests.contains_key(c) && kept.insert(*c) {
                        grew = true;
                    }
                }
            } else if meta
                .as_ref()
                .and_then(|m| m.subject)
                .is_some_and(|s| kept.contains(&s))
            {
                kept.insert(*d);
                grew = true;
            }
        }
        if !grew {
            break;
        }
    }

    // The doomed manifests, parents first: each round takes those no
    // remaining doomed manifest lists (digests only cycle by a sha256
    // collision; should one appear, the rest goes in one round).
    let mut doomed: HashSet<Digest> = manifests.keys().filter(|d| !kept.contains(d)).copied().collect();
    let mut deletes = Vec::new();
    let mut report = PruneReport::default();
    while !doomed.is_empty() {
        let listed: HashSet<Digest> = doomed
            .iter()
            .flat_map(|d| manifests.get(d).map(|(_, _, c)| c.as_slice()).unwrap_or_default())
            .filter(|c| doomed.contains(c))
            .copied()
            .collect();
        let mut round: Vec<Digest> = doomed.iter().filter(|d| !listed.contains(d)).copied().collect();
        if round.is_empty() {
            round = doomed.iter().copied().collect();
        }
        round.sort();
        for d in round {
            doomed.remove(&d);
            if let Some((item, _, _)) = manifests.get(&d) {
                deletes.push(item.key.clone());
                report.manifests_deleted += 1;
            }
        }
    }

    let still_listed: HashSet<Digest> = manifests
        .iter()
        .filter(|(d, _)| kept.contains(d))
        .flat_map(|(_, (item, _, _))| item.blobs.iter().copied())
        .collect();
    for (item, digest) in links {
        if item.created_at < cutoff && !still_listed.contains(&digest) {
            deletes.push(item.key);
            report.links_deleted += 1;
        }
    }
    PrunePlan { deletes, report }
}

#[cfg(test)]
mod tests {
    use super::*;

    // ---- against a real store ----

    use std::sync::Arc;

    use ferry_store::{FsBlobStore, SqliteStore};
    use ferry_types::{Hlc, InstanceId};
    use serde_json::json;

    struct Fixture {
        ferry: Ferry,
        feed: FeedRecord,
        _dir: tempfile::TempDir,
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let meta = SqliteStore::open(dir.path().join("m.db"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let blobs = FsBlobStore::open(dir.path().join("blobs"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let ferry = Ferry::open(Arc::new(meta), Arc::new(blobs), crate::Config::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let name = FeedName::new("img").unwrap_or_else(|e| panic!("{e}"));
        let feed = ferry
            .create_feed(&name, FeedType::Oci, false)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        Fixture {
            ferry,
            feed,
            _dir: dir,
        }
    }

    fn ok<T, E: fmt::Display>(r: std::result::Result<T, E>) -> T {
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    fn bytes_stream(data: &[u8]) -> ByteStream {
        let data = Bytes::copy_from_slice(data);
        Box::pin(futures::stream::once(async move { Ok(data) }))
    }

    fn descriptor(media_type: &str, data: &[u8]) -> serde_json::Value {
        json!({ "mediaType": media_type, "digest": Digest::of(data).to_string(), "size": data.len() })
    }

    impl Fixture {
        async fn blob(&self, repo: &str, data: &[u8]) {
            ok(upload(
                &self.ferry,
                &self.feed,
                repo,
                bytes_stream(data),
                &Digest::of(data).into(),
            )
            .await);
        }

        /// Pushes an image whose layer is `seed`; returns its manifest digest.
        async fn image(&self, repo: &str, reference: &str, seed: &str) -> Digest {
            let config = format!("{{\"seed\":\"{seed}\"}}").into_bytes();
            let layer = format!("layer {seed}").into_bytes();
            self.blob(repo, &config).await;
            self.blob(repo, &layer).await;
            let m = ok(serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": format::OCI_MANIFEST,
                "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
                "layers": [descriptor("application/vnd.oci.image.layer.v1.tar+gzip", &layer)],
            })));
            self.put(repo, reference, format::OCI_MANIFEST, &m).await
        }

        async fn index(&self, repo: &str, reference: &str, children: &[Digest]) -> Digest {
            let mut manifests = Vec::new();
            for c in children {
                let item = self.item(&format!("manifest/{repo}/{c}")).await;
                let size = item.as_ref().map_or(0, |i| i.meta["size"].as_u64().unwrap_or(0));
                manifests.push(
                    json!({ "mediaType": format::OCI_MANIFEST, "digest": c.to_string(), "size": size }),
                );
            }
            let body = ok(serde_json::to_vec(&json!({
                "schemaVersion": 2, "mediaType": format::OCI_INDEX, "manifests": manifests,
            })));
            self.put(repo, reference, format::OCI_INDEX, &body).await
        }

        async fn put(&self, repo: &str, reference: &str, media_type: &str, body: &[u8]) -> Digest {
            let put = put_manifest(
                &self.ferry,
                &self.feed,
                repo,
                reference,
                Some(media_type),
                Bytes::copy_from_slice(body),
            )
            .await;
            ok(put).digest
        }

        async fn item(&self, key: &str) -> Option<ItemRecord> {
            ok(self.ferry.item(&self.feed, &ok(ItemKey::new(key))).await)
        }

        async fn stamp(&self, key: &str) -> Stamp {
            self.item(key)
                .await
                .unwrap_or_else(|| panic!("{key} is not live"))
                .stamp
        }

        /// What `check_replicated_batch` refuses among `changes`, by key.
        async fn refused(&self, changes: &[Change]) -> Vec<(String, String)> {
            let verdicts = ok(self
                .ferry
                .check_replicated_batch(&self.feed, changes, false)
                .await);
            changes
                .iter()
                .zip(verdicts)
                .filter_map(|(c, v)| v.map(|why| (c.key.to_string(), why)))
                .collect()
        }
    }

    /// A delete received from another instance, later than anything here.
    fn received_delete(ferry: &Ferry, key: &str) -> Change {
        let mine = ferry.clock().stamp();
        Change {
            key: ok(ItemKey::new(key)),
            stamp: Stamp {
                time: mine.time,
                origin: InstanceId::from_bytes([7; 16]),
            },
            op: ChangeOp::Delete,
        }
    }

    #[tokio::test]
    async fn pushing_the_same_manifest_or_blob_again_takes_a_new_stamp() {
        let f = fixture().await;
        let d = f.image("app", "v1", "a").await;
        let (m, t) = (format!("manifest/app/{d}"), "tag/app/v1");
        let (m1, t1) = (f.stamp(&m).await, f.stamp(t).await);
        // By tag: the manifest and the tag.
        let again = f.image("app", "v1", "a").await;
        assert_eq!(again, d);
        let (m2, t2) = (f.stamp(&m).await, f.stamp(t).await);
        assert!(m2 > m1 && t2 > t1, "{m1} → {m2}, {t1} → {t2}");
        // By digest: the manifest.
        let body = ok(f.ferry.read_blob(&d, None).await).stream;
        let body: Vec<Bytes> = futures::StreamExt::collect::<Vec<_>>(body)
            .await
            .into_iter()
            .map(|c| c.unwrap_or_else(|e| panic!("{e}")))
            .collect();
        f.put("app", &d.to_string(), format::OCI_MANIFEST, &body.concat())
            .await;
        assert!(f.stamp(&m).await > m2);
        assert_eq!(f.stamp(t).await, t2, "a push by digest leaves the tags");
        // An upload link uploaded again.
        let layer = b"layer a";
        let l = format!("blob/app/{}", Digest::of(layer));
        let l1 = f.stamp(&l).await;
        f.blob("app", layer).await;
        assert!(f.stamp(&l).await > l1);
        // An index pushed again takes new stamps for its children too.
        let i = f.index("app", "multi", &[d]).await;
        let (c1, i1) = (f.stamp(&m).await, f.stamp(&format!("manifest/app/{i}")).await);
        f.index("app", "multi", &[d]).await;
        assert!(f.stamp(&m).await > c1 && f.stamp(&format!("manifest/app/{i}")).await > i1);
    }

    #[tokio::test]
    async fn a_received_delete_of_a_listed_or_tagged_manifest_is_refused_unless_the_batch_frees_it() {
        let f = fixture().await;
        // An untagged platform manifest (its tag deleted) and an index over it.
        let child = f.image("app", "child", "c").await;
        let ckey = format!("manifest/app/{child}");
        ok(delete_manifest(&f.ferry, &f.feed, "app", "child").await);
        let index = f.index("app", "multi", &[child]).await;
        let ikey = format!("manifest/app/{index}");
        let del_child = received_delete(&f.ferry, &ckey);
        let del_index = received_delete(&f.ferry, &ikey);
        let del_tag = received_delete(&f.ferry, "tag/app/multi");

        // Alone: refused, naming the index and its tag.
        let refused = f.refused(std::slice::from_ref(&del_child)).await;
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(
            refused[0].1,
            format!(
                "OCI item {ckey}: manifest {child} is referenced here by index {index} (tags: multi); its delete is refused until the index is deleted first"
            )
        );
        let one = f.ferry.check_replicated(&f.feed, &del_child).await;
        assert!(matches!(one, Err(CoreError::Invalid(_))), "{one:?}");
        // With the index (and its tag, which names the index): accepted in either order.
        for batch in [
            vec![del_index.clone(), del_tag.clone(), del_child.clone()],
            vec![del_child.clone(), del_tag.clone(), del_index.clone()],
        ] {
            assert!(f.refused(&batch).await.is_empty());
        }
        // The index's delete without its tag's: the index is refused (the
        // tag names it), so the child is too.
        let refused = f.refused(&[del_index.clone(), del_child.clone()]).await;
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert!(refused[0].1.contains("is named here by tag multi"), "{refused:?}");
        // An index delete older than the stored index loses: it frees nothing.
        let mut stale = del_index.clone();
        stale.stamp = Stamp {
            time: Hlc::from_parts(1, 0),
            origin: InstanceId::from_bytes([7; 16]),
        };
        let refused = f.refused(&[del_tag.clone(), stale, del_child.clone()]).await;
        assert_eq!(
            refused.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            [ckey.as_str()]
        );
        // A child delete older than the stored child loses anyway: not refused.
        let mut old = del_child.clone();
        old.stamp = Stamp {
            time: Hlc::from_parts(1, 0),
            origin: InstanceId::from_bytes([7; 16]),
        };
        assert!(f.refused(&[old]).await.is_empty());

        // A tag naming a manifest holds it back the same way.
        let app = f.image("app", "v1", "v").await;
        let akey = format!("manifest/app/{app}");
        let del_app = received_delete(&f.ferry, &akey);
        let refused = f.refused(std::slice::from_ref(&del_app)).await;
        assert_eq!(
            refused,
            [(
                akey.clone(),
                format!(
                    "OCI item {akey}: manifest {app} is named here by tag v1; its delete is refused until the tag is deleted too"
                )
            )]
        );
        assert!(
            f.refused(&[del_app.clone(), received_delete(&f.ferry, "tag/app/v1")])
                .await
                .is_empty()
        );
        // A manifest nothing refers to goes; one already gone is not refused.
        let lone = f.image("app", "lone", "l").await;
        ok(delete_manifest(&f.ferry, &f.feed, "app", "lone").await);
        let lkey = format!("manifest/app/{lone}");
        assert!(f.item(&lkey).await.is_some());
        assert!(f.refused(&[received_delete(&f.ferry, &lkey)]).await.is_empty());
        assert!(
            f.refused(&[received_delete(
                &f.ferry,
                "manifest/app/sha256:0000000000000000000000000000000000000000000000000000000000000000"
            )])
            .await
            .is_empty()
        );
    }

    #[test]
    fn durations_in_refusals() {
        let ms = Duration::from_millis;
        assert_eq!(human(ms(350)), "350ms");
        assert_eq!(human(ms(2000)), "2s");
        assert_eq!(human(ms(2001)), "3s");
        assert_eq!(human(Duration::from_secs(600)), "10m");
        assert_eq!(human(Duration::from_secs(598)), "9m 58s");
        assert_eq!(sweep_period(Duration::from_secs(600)), Duration::from_secs(60));
        assert_eq!(sweep_period(ms(100)), ms(25));
        assert_eq!(sweep_period(Duration::ZERO), ms(10));
        let limits = Limits {
            idle: Duration::from_secs(600),
            per_key: 1,
            per_feed: 5,
            total: 9,
        };
        let who = Who {
            key: None,
            feed: "img",
        };
        let e = too_many(ferry_store::UploadCap::Feed, &who, &limits, None);
        assert_eq!(e.code, Some(ErrorCode::TooManyRequests));
        assert_eq!(e.retry_after, Some(Duration::from_secs(600)));
        assert!(
            e.error.to_string().contains("in feed img: 5, the limit per feed"),
            "{}",
            e.error
        );
    }

    #[test]
    fn digest_sets() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let c = Digest::of(b"c");
        let item = |blobs: Vec<Digest>| ItemRecord {
            key: ItemKey::new("k").unwrap_or_else(|e| panic!("{e}")),
            meta: serde_json::Value::Null,
            blobs,
            stamp: ferry_types::Stamp {
                time: ferry_types::Hlc::from_parts(1, 0),
                origin: ferry_types::InstanceId::from_bytes([0; 16]),
            },
            created_at: 0,
            updated_at: 0,
            downloads: 0,
        };
        let items = [item(vec![b, a]), item(vec![a])];
        let set = digest_set(items.iter());
        assert_eq!(set.len(), 64);
        assert!(set_contains(&set, &a) && set_contains(&set, &b));
        assert!(!set_contains(&set, &c));
        assert!(!set_contains(&Bytes::new(), &a));
    }

    fn record(key: String, meta: serde_json::Value, blobs: Vec<Digest>, created_at: i64) -> ItemRecord {
        ItemRecord {
            key: ItemKey::new(key).unwrap_or_else(|e| panic!("{e}")),
            meta,
            blobs,
            stamp: ferry_types::Stamp {
                time: ferry_types::Hlc::from_parts(1, 0),
                origin: ferry_types::InstanceId::from_bytes([0; 16]),
            },
            created_at,
            updated_at: created_at,
            downloads: 0,
        }
    }

    /// A manifest item of repository `app` listing `children`, written at 0.
    fn manifest(d: Digest, children: &[Digest]) -> ItemRecord {
        let meta = ManifestMeta {
            media_type: format::OCI_INDEX.into(),
            size: 1,
            artifact_type: None,
            subject: None,
            config: None,
            layers: Vec::new(),
            children: children.to_vec(),
            annotations: None,
            sha512: None,
            aliases: Default::default(),
        };
        let mut blobs = vec![d];
        blobs.extend(children);
        record(
            format!("manifest/app/{d}"),
            serde_json::to_value(meta).unwrap_or_default(),
            blobs,
            0,
        )
    }

    fn tag(name: &str, d: Digest) -> ItemRecord {
        let meta = TagMeta {
            digest: d,
            media_type: format::OCI_INDEX.into(),
        };
        record(
            format!("tag/app/{name}"),
            serde_json::to_value(meta).unwrap_or_default(),
            vec![d],
            0,
        )
    }

    fn feed_name() -> FeedName {
        FeedName::new("img").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn pruning_deletes_indexes_before_their_children() {
        let [child, index, outer, other] = [b"c", b"i", b"o", b"x"].map(|b| Digest::of(b));
        let items = vec![
            manifest(child, &[]),
            manifest(index, &[child]),
            manifest(outer, &[index]),
            manifest(other, &[]),
        ];
        let plan = plan_prune(&feed_name(), items, 10);
        assert_eq!(plan.report.manifests_deleted, 4);
        let pos = |d: Digest| {
            plan.deletes
                .iter()
                .position(|k| k.as_str() == format!("manifest/app/{d}"))
                .unwrap_or_else(|| panic!("{d} not deleted"))
        };
        assert!(pos(outer) < pos(index) && pos(index) < pos(child));
    }

    #[test]
    fn pruning_keeps_what_a_kept_or_unreadable_index_lists() {
        let [a, b, tagged, unreadable] = [b"a", b"b", b"t", b"u"].map(|b| Digest::of(b));
        let items = vec![
            manifest(a, &[]),
            manifest(b, &[]),
            manifest(tagged, &[a]),
            tag("v1", tagged),
            // Metadata it cannot read: its blobs say it lists `b`.
            record(
                format!("manifest/app/{unreadable}"),
                serde_json::json!("garbage"),
                vec![unreadable, b],
                0,
            ),
        ];
        let plan = plan_prune(&feed_name(), items, 10);
        assert_eq!(plan.report.manifests_deleted, 0, "{:?}", plan.deletes);
    }

    #[test]
    fn a_listed_manifest_names_its_indexes_and_their_tags() {
        let [child, one, two] = [b"c", b"1", b"2"].map(|b| Digest::of(b));
        let manifests = vec![
            manifest(child, &[]),
            manifest(one, &[child]),
            manifest(two, &[child]),
        ];
        let tags = vec![tag("multi", one), tag("latest", one)];
        assert!(indexes_listing(&manifests, &one).is_empty());
        let e = referenced_by_index(&child, &indexes_listing(&manifests[..2], &child), &tags);
        assert_eq!(e.code, Some(ErrorCode::Denied));
        assert!(matches!(e.error, CoreError::Conflict(_)));
        assert_eq!(
            e.error.to_string(),
            format!(
                "manifest {child} is referenced by index {one} (tags: latest, multi); delete the index first"
            )
        );
        let mut both = [one, two];
        both.sort();
        assert_eq!(indexes_listing(&manifests, &child), both);
        let e = referenced_by_index(&child, &both, &tags);
        let described = |d: Digest| {
            if d == one {
                format!("{one} (tags: latest, multi)")
            } else {
                format!("{two} (untagged)")
            }
        };
        assert_eq!(
            e.error.to_string(),
            format!(
                "manifest {child} is referenced by indexes {}, {}; delete those indexes first",
                described(both[0]),
                described(both[1])
            )
        );
    }
}
