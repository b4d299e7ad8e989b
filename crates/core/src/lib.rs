//! Ferry's use cases, generic over the storage traits: feeds, API keys,
//! blob uploads, item writes through the change log, reads, index caching,
//! download counting and garbage collection. No HTTP, no SQL.
//!
//! Feed-type modules (`assets`, `npm`, `pypi`, `oci`, `cargo`, `nuget`,
//! `debian`, `rpm`) turn client requests that the server has parsed into item
//! writes, using `ferry-formats`; `signing` keeps the OpenPGP keys of the
//! feed types that sign their indexes.

pub mod assets;
pub mod auth;
mod blob_reader;
pub mod bulk;
mod cache;
pub mod cargo;
mod clock;
pub mod debian;
mod debindex;
mod error;
mod integrity;
mod name_locks;
pub mod npm;
pub mod nuget;
pub mod oci;
pub mod pypi;
mod replicated;
pub mod rpm;
pub mod signing;

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use ferry_formats::ArchiveLimits;
use ferry_store::{
    ApiKeyRecord, BlobBody, BlobCheck, BlobStore, ByteStream, Change, ChangeOp, FeedId, FeedRecord,
    HashedBytes, ItemMetaText, ItemRecord, MetadataStore, NewApiKey, Permission, Precondition, ScopedFeed,
    StagedBlob, StampOrder, StoreError, StoreEvent, WriteOutcome, now_millis,
};
use ferry_types::{Digest, FeedName, FeedType, InstanceId, ItemKey, Stamp};
use tokio::sync::watch;

/// What [`Ferry::lease_small_blobs`] gives: an outcome slot per blob
/// (filled for those committed alone), and the others for one pass of the
/// blob store (`batch`), with their slots and digests.
struct SmallBatch<T> {
    out: Vec<Option<Result<(), CoreError>>>,
    slots: Vec<usize>,
    digests: Vec<Digest>,
    batch: Vec<T>,
}

pub use auth::{Action, Principal};
pub use cache::{IndexCache, Rendered, content_etag};
pub use clock::Clock;
pub use error::CoreError;
pub use integrity::{Damage, DamageKind, FsckReport};

/// How long `/metrics` waits for the metadata store before taking it as
/// down ([`Ferry::metadata_reachable`], [`Ferry::authenticate_metrics`]).
pub const STORE_CHECK_WAIT: Duration = Duration::from_secs(2);

/// Limits, timings and exposure settings of one instance.
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest upload accepted, in bytes (413 beyond).
    pub max_upload_bytes: u64,
    /// Limits applied when inspecting uploaded archives.
    pub archive: ArchiveLimits,
    /// How long a freshly uploaded blob is protected from collection while
    /// the item that will reference it is written.
    pub blob_lease: Duration,
    /// How far ahead of this instance's wall clock a stamp received from
    /// elsewhere (replication, bundles) may be. Further ahead, the change
    /// is refused: one bad clock must not freeze a key everywhere.
    pub max_clock_skew: Duration,
    /// The name this instance reports to the instances it replicates with
    /// (shown in their view of their peers). `None`: the host name.
    pub instance_name: Option<String>,
    /// A peer of an incoming replication not seen for this many of its
    /// intervals (as it reports them; 60 s when it does not) is stale.
    /// A request in progress (a long poll) counts as seen. Default 3.
    pub peer_stale_intervals: u32,
    /// Most long polls (`changes?wait=`) one sync token may hold waiting
    /// at once; past it a long poll is answered 429 (a quarter of the
    /// server's connection cap).
    pub long_polls_per_token: usize,
    /// Most blob transfers (blobs or batches being sent, uploads being
    /// received, on the replication API) one sync token may hold at once;
    /// past it a transfer is answered 429 (a sixteenth of the server's
    /// connection cap). Each holds up to about a megabyte while its other
    /// end is slow, so this bounds what one token's holders can pin.
    pub transfers_per_token: usize,
    /// Whether `/metrics` answers without a key. Off by default: metrics
    /// name every feed, private ones too, and every replication (see
    /// [`auth::authorize_metrics`]).
    pub metrics_public: bool,
    /// The URL clients reach this instance at when it is behind a reverse
    /// proxy (`https://example.test/registry`, no trailing `/`): every
    /// absolute URL Ferry emits starts with it. `None`: taken from each
    /// request. Checked by [`validate_base_url`].
    pub base_url: Option<String>,
    /// An OCI upload session that gets no request for this long is
    /// discarded with its file (`blobs/uploads/`); a request in progress
    /// (a chunk still arriving) keeps it, and its end counts as use.
    /// Default 10 minutes.
    pub oci_upload_idle_timeout: Duration,
    /// Most OCI upload sessions one API key may hold open at once, across
    /// feeds (429 TOOMANYREQUESTS beyond). Default 100.
    pub oci_max_upload_sessions_per_key: usize,
    /// Most OCI upload sessions open at once in one feed, whatever the
    /// keys. Default 1000.
    pub oci_max_upload_sessions_per_feed: usize,
    /// Most OCI upload sessions open at once on the instance. Default
    /// 10000.
    pub oci_max_upload_sessions: usize,
    /// How long a node's claim to run a replication's executions lasts
    /// without renewal (renewed every third of it while one runs). When
    /// nodes share a database, a dead node's executions are taken over
    /// after at most this long.
    pub execution_lease: Duration,
    /// This node's name among the nodes sharing a database (the holder of
    /// its execution leases). Stable across restarts of the node, so that
    /// a restarted node takes its own leases back at once; distinct per
    /// node. `None`: a random name per process.
    pub node_name: Option<String>,
    /// The file the binary keeps this node's admin key in
    /// (`DATA_DIR/admin.key`): removed when the key it holds is deleted,
    /// so that no restart brings a revoked key back.
    pub admin_key_file: Option<std::path::PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_upload_bytes: 4 << 30,
            archive: ArchiveLimits::default(),
            blob_lease: Duration::from_secs(3600),
            max_clock_skew: Duration::from_secs(300),
            instance_name: None,
            peer_stale_intervals: 3,
            long_polls_per_token: 1024,
            transfers_per_token: 256,
            metrics_public: false,
            base_url: None,
            oci_upload_idle_timeout: Duration::from_secs(600),
            oci_max_upload_sessions_per_key: 100,
            oci_max_upload_sessions_per_feed: 1000,
            oci_max_upload_sessions: 10_000,
            execution_lease: Duration::from_secs(30),
            node_name: None,
            admin_key_file: None,
        }
    }
}

/// What became of one change given to [`Ferry::apply_each`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Passed the checks and written (or already there, or lost to a
    /// later stamp: see [`WriteOutcome`]).
    Written(WriteOutcome),
    /// Refused by [`Ferry::check_replicated`]; the reason names the key.
    Refused(String),
}

/// One local write, before it is stamped.
#[derive(Debug, Clone)]
pub struct LocalWrite {
    pub key: ItemKey,
    pub op: LocalOp,
    pub pre: Precondition,
}

#[derive(Debug, Clone)]
pub enum LocalOp {
    Upsert {
        meta: serde_json::Value,
        blobs: Vec<Digest>,
    },
    Delete,
}

impl LocalWrite {
    pub fn upsert(key: ItemKey, meta: serde_json::Value, blobs: Vec<Digest>, pre: Precondition) -> Self {
        Self {
            key,
            op: LocalOp::Upsert { meta, blobs },
            pre,
        }
    }
    pub fn delete(key: ItemKey, pre: Precondition) -> Self {
        Self {
            key,
            op: LocalOp::Delete,
            pre,
        }
    }
}

/// What a garbage collection pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    pub blobs_deleted: u64,
    /// Kept bytes of interrupted replication transfers no transfer touched
    /// for [`PARTIAL_IDLE`], removed.
    pub partials_removed: u64,
}

/// How long the bytes of an interrupted replication transfer are kept for
/// it to resume (7 days); after that, the collector removes them.
pub const PARTIAL_IDLE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The instance: cheap to clone, shared by every request handler.
#[derive(Clone)]
pub struct Ferry(Arc<Inner>);

struct Inner {
    meta: Arc<dyn MetadataStore>,
    blobs: Arc<dyn BlobStore>,
    clock: Clock,
    config: Config,
    feeds: RwLock<HashMap<FeedName, FeedRecord>>,
    seqs: Mutex<HashMap<FeedId, watch::Sender<i64>>>,
    cache: IndexCache,
    downloads: Mutex<HashMap<(FeedId, ItemKey), u64>>,
    /// Per feed: how many times download counts were recorded for it
    /// since start-up ([`Ferry::cached_index_counted`]).
    counted: Mutex<HashMap<FeedId, u64>>,
    damage: integrity::DamageLog,
    /// Parsed signing keys by feed ([`signing`]).
    signing_keys: Mutex<HashMap<FeedId, signing::SigningKey>>,
    /// Held while a feed's first signing key is generated.
    signing_gen: tokio::sync::Mutex<()>,
    debian: debian::State,
    rpm: rpm::State,
    /// Keys verified for `/metrics`, usable while the store is away.
    remembered_keys: auth::RememberedKeys,
    /// The key registry tokens are signed with: the instance's, so a token
    /// one node issued is good on every node.
    registry_token_key: [u8; 32],
}

/// A key limited to a feed that does not exist is refused.
fn no_feed_for_key(feed: &str) -> CoreError {
    CoreError::Invalid(format!(
        "feed {feed} does not exist; an API key can only be limited to existing feeds"
    ))
}

fn lock_err<T>(_: T) -> CoreError {
    CoreError::Internal("lock poisoned".into())
}

impl Ferry {
    pub async fn open(
        meta: Arc<dyn MetadataStore>,
        blobs: Arc<dyn BlobStore>,
        config: Config,
    ) -> Result<Self, CoreError> {
        let instance = meta.instance_id().await?;
        let registry_token_key = meta.instance_secret("registry-tokens").await?;
        // A floor further ahead than the skew allows comes from a stamp
        // that should never have been stored; the clock does not follow it
        // (writes to that key are then refused as superseded, visibly).
        let stored = meta.max_stamp_time().await?;
        let ceiling = clock::ceiling(config.max_clock_skew);
        if stored > ceiling {
            tracing::warn!(
                stored = stored.0,
                "the newest stored stamp is further ahead of the wall clock than the allowed skew; the clock starts below it"
            );
        }
        let floor = stored.min(ceiling);
        let events = meta.events();
        let ferry = Self(Arc::new(Inner {
            meta,
            blobs,
            clock: Clock::new(instance, floor),
            registry_token_key,
            config,
            feeds: RwLock::new(HashMap::new()),
            seqs: Mutex::new(HashMap::new()),
            cache: IndexCache::default(),
            downloads: Mutex::new(HashMap::new()),
            counted: Mutex::new(HashMap::new()),
            damage: Default::default(),
            signing_keys: Mutex::new(HashMap::new()),
            signing_gen: tokio::sync::Mutex::new(()),
            debian: Default::default(),
            rpm: Default::default(),
            remembered_keys: Default::default(),
        }));
        if let Some(rx) = events {
            tokio::spawn(follow_store_events(Arc::downgrade(&ferry.0), rx));
        }
        Ok(ferry)
    }

    pub fn instance_id(&self) -> InstanceId {
        self.0.clock.instance()
    }
    /// The key registry tokens of this instance are signed with
    /// ([`auth::issue_registry_token`]), the same on every node.
    pub fn registry_token_key(&self) -> &[u8; 32] {
        &self.0.registry_token_key
    }
    pub fn config(&self) -> &Config {
        &self.0.config
    }
    pub fn clock(&self) -> &Clock {
        &self.0.clock
    }
    pub fn metadata(&self) -> &Arc<dyn MetadataStore> {
        &self.0.meta
    }
    pub fn blob_store(&self) -> &Arc<dyn BlobStore> {
        &self.0.blobs
    }

    // ---- feeds ----

    pub async fn create_feed(
        &self,
        name: &FeedName,
        ty: FeedType,
        private: bool,
    ) -> Result<FeedRecord, CoreError> {
        // An OCI feed's name begins every repository name in it.
        if ty == FeedType::Oci && !ferry_formats::oci::valid_feed_component(name.as_str()) {
            return Err(CoreError::invalid(format!(
                "{name} cannot name an OCI feed: image references begin with it (HOST/{name}/IMAGE), and OCI repository names \
                 separate letters and digits only by '.', '_', '__' or '-' and never end in one"
            )));
        }
        let f = self.0.meta.create_feed(name, ty, private).await?;
        // Instance-local state keyed by id must not outlive a deleted
        // feed whose id the store gives again.
        self.0.signing_keys.lock().map_err(lock_err)?.remove(&f.id);
        debian::forget_feed(self, f.id);
        rpm::forget_feed(self, f.id);
        if signing::signs(ty) {
            self.signing_key(&f).await?;
        }
        self.0
            .feeds
            .write()
            .map_err(lock_err)?
            .insert(f.name.clone(), f.clone());
        Ok(f)
    }

    /// The feed called `name`; NotFound if there is none. Says nothing of
    /// who may know about it: requests reach feeds through
    /// [`auth::visible_feed`].
    pub async fn feed(&self, name: &FeedName) -> Result<FeedRecord, CoreError> {
        if let Some(f) = self.0.feeds.read().map_err(lock_err)?.get(name) {
            return Ok(f.clone());
        }
        let f = self
            .0
            .meta
            .feed(name)
            .await?
            .ok_or_else(|| auth::no_such_feed(name))?;
        self.0
            .feeds
            .write()
            .map_err(lock_err)?
            .insert(f.name.clone(), f.clone());
        Ok(f)
    }

    pub async fn feeds(&self) -> Result<Vec<FeedRecord>, CoreError> {
        Ok(self.0.meta.feeds().await?)
    }

    /// Deletes a feed with its items, and takes it out of every API key's
    /// scope (a key left with no feed stays, scoped to nothing).
    /// Deletes a feed with its items, and forgets everything kept in
    /// memory under its id (rendered indexes, change-log watchers, pending
    /// download counts): the store may give the id to the next feed
    /// created, which must start from nothing.
    pub async fn delete_feed(&self, name: &FeedName) -> Result<(), CoreError> {
        let removed = self.0.feeds.write().map_err(lock_err)?.remove(name);
        let id = match removed {
            Some(f) => Some(f.id),
            None => self.0.meta.feed(name).await?.map(|f| f.id),
        };
        if !self.0.meta.delete_feed(name).await? {
            return Err(CoreError::not_found(format!("feed {name} not found")));
        }
        if let Some(id) = id {
            self.forget_feed_state(id)?;
        }
        Ok(())
    }

    /// Forgets what this process keeps in memory under a feed id that no
    /// longer names a feed.
    fn forget_feed_state(&self, id: FeedId) -> Result<(), CoreError> {
        self.0.cache.forget_feed(id);
        self.0.signing_keys.lock().map_err(lock_err)?.remove(&id);
        debian::forget_feed(self, id);
        rpm::forget_feed(self, id);
        self.0.seqs.lock().map_err(lock_err)?.remove(&id);
        self.0
            .downloads
            .lock()
            .map_err(lock_err)?
            .retain(|(f, _), _| *f != id);
        self.0.counted.lock().map_err(lock_err)?.remove(&id);
        Ok(())
    }

    /// Applies one event of a store shared with other nodes
    /// ([`MetadataStore::events`]) to what this process keeps in memory:
    /// change-log positions (which wake long polls and retire rendered
    /// indexes), the feeds by name, parsed signing keys.
    async fn apply_store_event(&self, event: StoreEvent) -> Result<(), CoreError> {
        match event {
            StoreEvent::FeedChanged { feed, seq } => {
                self.notify(feed, &[WriteOutcome::Applied { seq }])?;
            }
            StoreEvent::FeedDeleted { feed, name } => {
                let mut feeds = self.0.feeds.write().map_err(lock_err)?;
                if feeds.get(&name).is_some_and(|f| f.id == feed) {
                    feeds.remove(&name);
                }
                drop(feeds);
                self.forget_feed_state(feed)?;
            }
            StoreEvent::SigningKeyChanged { feed } => {
                self.0.signing_keys.lock().map_err(lock_err)?.remove(&feed);
                debian::forget_feed(self, feed);
                rpm::forget_feed(self, feed);
            }
            StoreEvent::KeyRevoked { hash } => self.0.remembered_keys.forget(&hash),
            // The replication engine listens for these itself.
            StoreEvent::StopRequested { .. } | StoreEvent::SessionsChanged => {}
            StoreEvent::Resync => {
                // Remembered keys stay: a broken listener is what an outage
                // looks like, and they are what serves metrics then.
                // Feeds are looked up again; every watched change log is
                // read again (a long poll whose feed moved answers).
                self.0.feeds.write().map_err(lock_err)?.clear();
                self.0.signing_keys.lock().map_err(lock_err)?.clear();
                let watched: Vec<FeedId> = self.0.seqs.lock().map_err(lock_err)?.keys().copied().collect();
                for feed in watched {
                    let seq = self.0.meta.last_seq(feed).await?;
                    self.notify(feed, &[WriteOutcome::Applied { seq }])?;
                }
            }
        }
        Ok(())
    }

    // ---- API keys ----

    /// The principal for a presented secret; Unauthorized if no key matches.
    pub async fn authenticate(&self, secret: &str) -> Result<Principal, CoreError> {
        match self.0.meta.key_by_hash(&auth::hash_secret(secret)).await? {
            Some(key) => Ok(Principal { key }),
            None => Err(CoreError::Unauthorized("invalid API key".into())),
        }
    }

    /// Creates a key and returns its record and the secret, which is shown
    /// once and never stored. `feeds` (`None`: every feed) must name
    /// existing feeds: the key is limited to those feeds themselves, not
    /// to their names, so a feed created later under a deleted one's name
    /// is outside its scope. A name that is no feed is refused (Invalid,
    /// naming it), and so is an empty list.
    pub async fn create_key(
        &self,
        name: &str,
        permission: Permission,
        feeds: Option<Vec<FeedName>>,
    ) -> Result<(ApiKeyRecord, String), CoreError> {
        if name.is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
            return Err(CoreError::invalid(
                "key name must be 1 to 100 printable characters",
            ));
        }
        let scope = match feeds {
            None => None,
            Some(names) if names.is_empty() => {
                return Err(CoreError::invalid(
                    "a key limited to some feeds needs at least one; give none for every feed",
                ));
            }
            Some(names) => {
                let mut scope = Vec::with_capacity(names.len());
                for n in &names {
                    // From the store, not the cache: the feed as it is now.
                    match self.0.meta.feed(n).await? {
                        Some(f) => scope.push(ScopedFeed::from(&f)),
                        None => return Err(no_feed_for_key(n.as_str())),
                    }
                }
                Some(scope)
            }
        };
        let secret = auth::generate_secret();
        let rec = self
            .0
            .meta
            .create_key(NewApiKey {
                name: name.into(),
                hash: auth::hash_secret(&secret),
                permission,
                feeds: scope,
            })
            .await
            .map_err(|e| match e {
                // Deleted meanwhile.
                StoreError::NotFound(what) => no_feed_for_key(what.strip_prefix("feed ").unwrap_or(&what)),
                e => e.into(),
            })?;
        Ok((rec, secret))
    }

    /// Makes `secret` the instance's admin key (replacing an earlier one).
    pub async fn set_admin_key(&self, secret: &str) -> Result<(), CoreError> {
        self.0
            .meta
            .put_named_key(NewApiKey {
                name: "admin".into(),
                hash: auth::hash_secret(secret),
                permission: Permission::Admin,
                feeds: None,
            })
            .await?;
        self.0.remembered_keys.clear();
        Ok(())
    }

    pub async fn keys(&self) -> Result<Vec<ApiKeyRecord>, CoreError> {
        Ok(self.0.meta.keys().await?)
    }

    /// Deletes (revokes) API key `name`. When it is the key this node's
    /// admin key file holds ([`Config::admin_key_file`]), the file goes
    /// too: a restart then makes a new admin key instead of bringing the
    /// revoked one back. NotFound for an unknown name.
    pub async fn delete_key(&self, name: &str) -> Result<(), CoreError> {
        let hash = self
            .0
            .meta
            .keys()
            .await?
            .into_iter()
            .find(|k| k.name == name)
            .map(|k| k.hash);
        if !self.0.meta.delete_key(name).await? {
            return Err(CoreError::not_found(format!("API key {name:?} not found")));
        }
        self.0.remembered_keys.clear();
        if let (Some(hash), Some(path)) = (hash, self.0.config.admin_key_file.clone()) {
            let removed = tokio::task::spawn_blocking(move || match std::fs::read_to_string(&path) {
                Ok(held) if auth::hash_secret(held.trim()) == hash => {
                    std::fs::remove_file(&path).map(|()| Some(path))
                }
                _ => Ok(None),
            })
            .await
            .map_err(|e| CoreError::Internal(format!("removing the admin key file: {e}")))?;
            match removed {
                Ok(Some(path)) => {
                    tracing::info!(file = %path.display(), "the deleted key was this node's admin key file's; the file is removed")
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(error = %e, "the deleted key is in this node's admin key file, which could not be removed: delete it by hand, or a restart brings the key back")
                }
            }
        }
        Ok(())
    }

    /// Whether the metadata store answers a feed listing within
    /// [`STORE_CHECK_WAIT`] (for `/metrics`, which must answer quickly
    /// during an outage rather than wait for the pool's timeout).
    pub async fn metadata_reachable(&self) -> bool {
        matches!(
            tokio::time::timeout(STORE_CHECK_WAIT, self.0.meta.feeds()).await,
            Ok(Ok(_))
        )
    }

    /// The principal for a metrics scrape's secret. While the metadata
    /// store answers (`store_up`, and the look-up does not fail as
    /// unavailable within [`STORE_CHECK_WAIT`]) this is
    /// [`Ferry::authenticate`], and a key that may read metrics is
    /// remembered; while it does not, a key verified less than
    /// [`auth::REMEMBERED_KEY_TTL`] ago is accepted as it was then, so a
    /// monitoring system keeps seeing the instance (and the outage).
    /// Errors: Unauthorized for a key the store does not know; Unavailable
    /// during an outage for a key not remembered.
    pub async fn authenticate_metrics(&self, secret: &str, store_up: bool) -> Result<Principal, CoreError> {
        let hash = auth::hash_secret(secret);
        let remembered = &self.0.remembered_keys;
        if store_up {
            match tokio::time::timeout(STORE_CHECK_WAIT, self.0.meta.key_by_hash(&hash)).await {
                Ok(Ok(Some(key))) => {
                    if key.feeds.is_none() {
                        remembered.remember(hash, key.clone());
                    }
                    return Ok(Principal { key });
                }
                Ok(Ok(None)) => {
                    remembered.forget(&hash);
                    return Err(CoreError::Unauthorized("invalid API key".into()));
                }
                Ok(Err(StoreError::Unavailable(m))) => {
                    tracing::debug!(cause = %m, "metrics: store unavailable; using remembered keys");
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => tracing::debug!("metrics: the store did not answer in time; using remembered keys"),
            }
        }
        match remembered.recall(&hash) {
            Some(key) => Ok(Principal { key }),
            None => Err(CoreError::Unavailable(
                "storage is unavailable and this key was not verified recently; retry later".into(),
            )),
        }
    }

    // ---- blobs ----

    /// Streams an upload into staging (hashing it; refusing it past the
    /// upload limit or on a digest mismatch). Nothing is visible yet.
    pub async fn stage(&self, body: ByteStream, expected: Option<Digest>) -> Result<StagedBlob, CoreError> {
        Ok(self
            .0
            .blobs
            .stage(body, self.0.config.max_upload_bytes, expected)
            .await?)
    }

    /// Stages an in-memory body (npm tarballs arrive inside JSON).
    pub async fn stage_bytes(&self, data: Bytes) -> Result<StagedBlob, CoreError> {
        let body: ByteStream = Box::pin(futures::stream::once(async move { Ok(data) }));
        self.stage(body, None).await
    }

    /// Commits a staged blob so items may reference it. Waits out a
    /// collection of the same content that is in progress.
    pub async fn commit_blob(&self, staged: StagedBlob) -> Result<Digest, CoreError> {
        let digest = staged.digest();
        let lease_until = now_millis() + self.0.config.blob_lease.as_millis() as i64;
        let mut tries = 0;
        loop {
            match self.0.meta.lease_blob(&digest, staged.size(), lease_until).await {
                Ok(()) => break,
                Err(StoreError::BlobBusy(_)) if tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        // The store re-hashes a copy already in place and replaces it if
        // it is wrong: a verified commit repairs a damaged blob.
        self.0.blobs.commit(staged).await?;
        self.clear_damage(&digest);
        Ok(digest)
    }

    /// Commits staged blobs, many at once: one lease transaction for all
    /// (instead of one per blob, as [`Ferry::commit_blob`] takes), then
    /// each placed as `commit_blob` places it, `BATCH` at a time. A blob
    /// the collector is deleting right now waits for it, alone, as in
    /// `commit_blob`. Returns the digests in order. Errors: the stores'
    /// own failures (then some blobs may be placed and leased, and are
    /// collected later if nothing references them).
    pub async fn commit_staged_blobs(&self, staged: Vec<StagedBlob>) -> Result<Vec<Digest>, CoreError> {
        use futures::{StreamExt as _, TryStreamExt as _};
        const BATCH: usize = 16;
        let lease_until = now_millis() + self.0.config.blob_lease.as_millis() as i64;
        let sizes: Vec<(Digest, u64)> = staged.iter().map(|s| (s.digest(), s.size())).collect();
        let busy: HashSet<Digest> = self
            .0
            .meta
            .lease_blobs(&sizes, lease_until)
            .await?
            .into_iter()
            .collect();
        let commits: Vec<_> = staged
            .into_iter()
            .map(|s| {
                let (ferry, busy) = (self.clone(), busy.contains(&s.digest()));
                async move {
                    if busy {
                        return ferry.commit_blob(s).await;
                    }
                    let digest = s.digest();
                    ferry.0.blobs.commit(s).await?;
                    ferry.clear_damage(&digest);
                    Ok::<_, CoreError>(digest)
                }
            })
            .collect();
        futures::stream::iter(commits).buffered(BATCH).try_collect().await
    }

    /// Commits small blobs held in memory, many at once: one lease
    /// transaction, then one pass of the blob store
    /// ([`BlobStore::put_many`]) that verifies each against its digest and
    /// places it as [`Ferry::commit_blob`] does (an intact copy in place
    /// stays, a wrong one is replaced). Returns each blob's outcome in
    /// order: a blob whose bytes do not match its digest is
    /// [`CoreError::Invalid`] alone. Blobs the collector is deleting right
    /// now wait for it, one by one, as in `commit_blob`. Not yet durable:
    /// [`BlobStore::sync`] them before an item relies on them.
    ///
    /// Errors: the stores' own failures (then some blobs may be placed,
    /// leased, and collected later if nothing references them).
    pub async fn commit_small_blobs(
        &self,
        blobs: Vec<(Digest, Bytes)>,
    ) -> Result<Vec<Result<(), CoreError>>, CoreError> {
        let s = self.lease_small_blobs(blobs, |(d, b)| (*d, b)).await?;
        let placed = self.0.blobs.put_many(s.batch).await?;
        Ok(self.small_blob_outcomes(s.out, s.slots, s.digests, placed))
    }

    /// [`Ferry::commit_small_blobs`] of bytes hashed here (not hashed
    /// again), on stable storage when it returns
    /// ([`BlobStore::put_many_durable`]): for a bulk import, whose items
    /// are written next.
    pub(crate) async fn commit_hashed_blobs(
        &self,
        blobs: Vec<HashedBytes>,
    ) -> Result<Vec<Result<(), CoreError>>, CoreError> {
        let s = self.lease_small_blobs(blobs, |b| (b.digest(), b.bytes())).await?;
        let placed = self.0.blobs.put_many_durable(s.batch).await?;
        Ok(self.small_blob_outcomes(s.out, s.slots, s.digests, placed))
    }

    /// Leases `blobs` (each one's digest and bytes given by `parts`) in one
    /// transaction. Those the collector is deleting right now are
    /// committed alone, one by one ([`Ferry::commit_small_blob_alone`]);
    /// the rest are returned for one pass of the blob store.
    async fn lease_small_blobs<T>(
        &self,
        blobs: Vec<T>,
        parts: for<'a> fn(&'a T) -> (Digest, &'a Bytes),
    ) -> Result<SmallBatch<T>, CoreError> {
        let sizes: Vec<(Digest, u64)> = blobs
            .iter()
            .map(|b| {
                let (d, bytes) = parts(b);
                (d, bytes.len() as u64)
            })
            .collect();
        let lease_until = now_millis() + self.0.config.blob_lease.as_millis() as i64;
        let busy: HashSet<Digest> = self
            .0
            .meta
            .lease_blobs(&sizes, lease_until)
            .await?
            .into_iter()
            .collect();
        let mut s = SmallBatch {
            out: (0..blobs.len()).map(|_| None).collect(),
            slots: Vec::with_capacity(blobs.len()),
            digests: Vec::with_capacity(blobs.len()),
            batch: Vec::with_capacity(blobs.len()),
        };
        for (i, b) in blobs.into_iter().enumerate() {
            let (d, bytes) = parts(&b);
            if busy.contains(&d) {
                s.out[i] = Some(self.commit_small_blob_alone(d, bytes.clone()).await?);
            } else {
                s.slots.push(i);
                s.digests.push(d);
                s.batch.push(b);
            }
        }
        Ok(s)
    }

    /// Rare: the collector is deleting this very blob; staging and
    /// committing it alone waits for it. Bytes that do not match `d` are
    /// the blob's [`CoreError::Invalid`]; other errors fail the batch.
    async fn commit_small_blob_alone(&self, d: Digest, b: Bytes) -> Result<Result<(), CoreError>, CoreError> {
        let body: ByteStream = Box::pin(futures::stream::once(async move { Ok(b) }));
        match self.stage(body, Some(d)).await {
            Ok(staged) => Ok(self.commit_blob(staged).await.map(|_| ())),
            Err(e @ CoreError::Invalid(_)) => Ok(Err(e)),
            Err(e) => Err(e),
        }
    }

    /// Each blob's outcome in order: those placed together (`slots` into
    /// `out`, with their `digests`) from `placed`, the rest as committed
    /// alone.
    fn small_blob_outcomes(
        &self,
        mut out: Vec<Option<Result<(), CoreError>>>,
        slots: Vec<usize>,
        digests: Vec<Digest>,
        placed: Vec<Result<BlobCheck, StoreError>>,
    ) -> Vec<Result<(), CoreError>> {
        for ((i, d), r) in slots.into_iter().zip(digests).zip(placed) {
            out[i] = Some(match r {
                Ok(_) => {
                    self.clear_damage(&d);
                    Ok(())
                }
                Err(e) => Err(e.into()),
            });
        }
        out.into_iter().map(|r| r.unwrap_or(Ok(()))).collect()
    }

    /// Which of `digests` are committed here: registered in the metadata
    /// store and their file present (one query and one pass over the files,
    /// whatever their number).
    pub async fn present_blobs(&self, digests: &[Digest]) -> Result<HashSet<Digest>, CoreError> {
        Ok(self.present_blob_sizes(digests).await?.into_keys().collect())
    }

    /// [`Ferry::present_blobs`] with each one's size in bytes.
    pub async fn present_blob_sizes(&self, digests: &[Digest]) -> Result<HashMap<Digest, u64>, CoreError> {
        let registered = self.0.meta.blobs_present(digests).await?;
        let candidates: Vec<Digest> = digests
            .iter()
            .filter(|d| registered.contains(d))
            .copied()
            .collect();
        let sizes = self.0.blobs.sizes(&candidates).await?;
        Ok(candidates
            .into_iter()
            .zip(sizes)
            .filter_map(|(d, s)| s.map(|n| (d, n)))
            .collect())
    }

    pub async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>, CoreError> {
        Ok(self.0.blobs.size(digest).await?)
    }

    /// Reads a stored blob (or a byte range of it). A blob an item needs
    /// whose file is gone is recorded as damaged and answered with
    /// [`CoreError::Damaged`].
    pub async fn read_blob(&self, digest: &Digest, range: Option<Range<u64>>) -> Result<BlobBody, CoreError> {
        self.read_blob_as(digest, range, false).await
    }

    /// [`Ferry::read_blob`] for another instance replicating, which
    /// verifies every blob against its digest itself: a blob hashed right
    /// here a short while ago and unchanged since is not hashed again on
    /// its way out ([`ferry_store::BlobStore::get_for_verifier`]).
    pub async fn read_blob_for_peer(
        &self,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<BlobBody, CoreError> {
        self.read_blob_as(digest, range, true).await
    }

    /// Several small blobs read whole for another instance replicating
    /// ([`Ferry::read_blob_for_peer`] of each, in one pass of the blob
    /// store: [`ferry_store::BlobStore::get_small_for_verifier`]): per
    /// digest, its bytes, None when it is larger than `max_each` bytes, or
    /// why it cannot be read (a blob missing or found corrupt is noted as
    /// damage, as a single read notes it).
    ///
    /// Errors: only those that concern no single blob.
    pub async fn read_small_blobs_for_peer(
        &self,
        digests: &[Digest],
        max_each: u64,
    ) -> Result<Vec<Result<Option<Bytes>, CoreError>>, CoreError> {
        let read = self.0.blobs.get_small_for_verifier(digests, max_each).await?;
        Ok(read
            .into_iter()
            .map(|r| match r {
                Ok(b) => Ok(b),
                Err(StoreError::BlobMissing(d)) => {
                    let kind = self.note_damage(d, DamageKind::Missing);
                    Err(integrity::damaged_error(&d, kind))
                }
                Err(e) => Err(e.into()),
            })
            .collect())
    }

    async fn read_blob_as(
        &self,
        digest: &Digest,
        range: Option<Range<u64>>,
        peer: bool,
    ) -> Result<BlobBody, CoreError> {
        let read = if peer {
            self.0.blobs.get_for_verifier(digest, range).await
        } else {
            self.0.blobs.get(digest, range).await
        };
        match read {
            Ok(b) => Ok(b),
            Err(StoreError::BlobMissing(d)) => {
                // A quarantined blob is missing because it was corrupt.
                let kind = self.note_damage(d, DamageKind::Missing);
                Err(integrity::damaged_error(&d, kind))
            }
            Err(e) => Err(e.into()),
        }
    }

    // ---- items ----

    /// Stamps and applies local writes in one transaction, then wakes
    /// whoever waits on the feed's change log.
    pub async fn write(
        &self,
        feed: &FeedRecord,
        writes: Vec<LocalWrite>,
    ) -> Result<Vec<WriteOutcome>, CoreError> {
        let mut changes = Vec::with_capacity(writes.len());
        for w in writes {
            let op = match w.op {
                LocalOp::Upsert { meta, blobs } => ChangeOp::Upsert {
                    meta,
                    blobs,
                    created_at: None,
                },
                LocalOp::Delete => ChangeOp::Delete,
            };
            changes.push((
                Change {
                    key: w.key,
                    stamp: self.0.clock.stamp(),
                    op,
                },
                w.pre,
            ));
        }
        // A change that loses to a later stamp fails the whole batch: the
        // client is told, instead of a success that changed nothing.
        let outcomes = self
            .0
            .meta
            .write_ordered(
                feed.id,
                changes,
                StampOrder::LocalWrite {
                    ceiling: clock::ceiling(self.0.config.max_clock_skew),
                },
            )
            .await?;
        self.notify(feed.id, &outcomes)?;
        Ok(outcomes)
    }

    /// Refuses a stamp received from elsewhere that is further ahead of
    /// this instance's wall clock than [`Config::max_clock_skew`].
    pub fn check_stamp(&self, key: &ItemKey, stamp: &Stamp) -> Result<(), CoreError> {
        let ceiling = clock::ceiling(self.0.config.max_clock_skew);
        if stamp.time <= ceiling {
            return Ok(());
        }
        let ahead_s = stamp.time.millis().saturating_sub(clock::wall_millis()) / 1000;
        Err(CoreError::Invalid(format!(
            "{key}: its stamp ({stamp}) is {ahead_s} s ahead of this instance's clock, more than the allowed skew of {} s; check the clock of instance {} (or of the instance whose version it was written over)",
            self.0.config.max_clock_skew.as_secs(),
            stamp.origin
        )))
    }

    /// Applies already-stamped changes (from replication or a bundle).
    /// The later stamp wins for each key. Each change is first checked as
    /// its feed type checks an upload, and its stamp against the clock
    /// ([`Self::check_replicated`]); one that fails fails the batch, and
    /// nothing is written.
    pub async fn apply(
        &self,
        feed: &FeedRecord,
        changes: Vec<Change>,
    ) -> Result<Vec<WriteOutcome>, CoreError> {
        let verdicts = self.check_replicated_batch(feed, &changes, false).await?;
        if let Some(why) = verdicts.into_iter().flatten().next() {
            return Err(CoreError::Invalid(why));
        }
        self.write_received(feed, changes, StampOrder::LaterWins).await
    }

    /// Applies already-stamped changes one by one as far as they pass
    /// [`Self::check_replicated`]: a change that fails it is left out and
    /// answered [`Applied::Refused`] with the reason; the others are written
    /// in one transaction, the later stamp winning for each key. With
    /// `overwrite`, they replace whatever is stored, even later stamps (the
    /// repair of a replica from its source). Outcomes are in the order of
    /// `changes`. Errors: only what is not the change's fault (storage).
    pub async fn apply_each(
        &self,
        feed: &FeedRecord,
        changes: Vec<Change>,
        overwrite: bool,
    ) -> Result<Vec<Applied>, CoreError> {
        let mut out: Vec<Option<Applied>> = Vec::with_capacity(changes.len());
        let mut passed = Vec::with_capacity(changes.len());
        // Judged as a batch: an OCI index and the manifests it lists may
        // be deleted together.
        let verdicts = self.check_replicated_batch(feed, &changes, overwrite).await?;
        for (c, verdict) in changes.into_iter().zip(verdicts) {
            match verdict {
                None => {
                    out.push(None);
                    passed.push(c);
                }
                Some(why) => out.push(Some(Applied::Refused(why))),
            }
        }
        let order = if overwrite {
            StampOrder::Overwrite
        } else {
            StampOrder::LaterWins
        };
        let mut written = self.write_received(feed, passed, order).await?.into_iter();
        Ok(out
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    written
                        .next()
                        .map_or(Applied::Refused(String::new()), Applied::Written)
                })
            })
            .collect())
    }

    async fn write_received(
        &self,
        feed: &FeedRecord,
        changes: Vec<Change>,
        order: StampOrder,
    ) -> Result<Vec<WriteOutcome>, CoreError> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        // Assets: a path is a file or a folder — judged before on the
        // state the batch leaves (`assets::path_conflicts`) and again in
        // the write, against a racing local upload. The write takes the
        // batch's deletes first, as that judgement does (stamps decide
        // between changes of one key, whatever their order), and the
        // outcomes are given back in the batch's order.
        let assets = feed.feed_type == ferry_types::FeedType::Assets;
        let mut at: Vec<usize> = (0..changes.len()).collect();
        if assets {
            at.sort_by_key(|i| !matches!(changes[*i].op, ChangeOp::Delete));
        }
        let pre = if assets {
            Precondition::PathFree
        } else {
            Precondition::Any
        };
        let mut slots: Vec<Option<Change>> = changes.into_iter().map(Some).collect();
        let ordered: Vec<(Change, Precondition)> = at
            .iter()
            .filter_map(|i| slots[*i].take().map(|c| (c, pre)))
            .collect();
        let written = self.0.meta.write_ordered(feed.id, ordered, order).await?;
        self.notify(feed.id, &written)?;
        let mut outcomes = written.clone();
        for (w, i) in written.into_iter().zip(&at) {
            outcomes[*i] = w;
        }
        Ok(outcomes)
    }

    fn notify(&self, feed: FeedId, outcomes: &[WriteOutcome]) -> Result<(), CoreError> {
        let max = outcomes
            .iter()
            .filter_map(|o| match o {
                WriteOutcome::Applied { seq } => Some(*seq),
                _ => None,
            })
            .max();
        if let Some(seq) = max {
            let mut seqs = self.0.seqs.lock().map_err(lock_err)?;
            let tx = seqs.entry(feed).or_insert_with(|| watch::channel(0).0);
            tx.send_if_modified(|cur| {
                let newer = seq > *cur;
                if newer {
                    *cur = seq;
                }
                newer
            });
        }
        Ok(())
    }

    /// A receiver that changes whenever the feed's change log grows.
    pub async fn subscribe(&self, feed: FeedId) -> Result<watch::Receiver<i64>, CoreError> {
        // Once a feed has a channel, every write here keeps it current.
        if let Some(tx) = self.0.seqs.lock().map_err(lock_err)?.get(&feed) {
            return Ok(tx.subscribe());
        }
        let last = self.0.meta.last_seq(feed).await?;
        let mut seqs = self.0.seqs.lock().map_err(lock_err)?;
        let tx = seqs.entry(feed).or_insert_with(|| watch::channel(last).0);
        tx.send_if_modified(|cur| {
            let newer = last > *cur;
            if newer {
                *cur = last;
            }
            newer
        });
        Ok(tx.subscribe())
    }

    pub async fn item(&self, feed: &FeedRecord, key: &ItemKey) -> Result<Option<ItemRecord>, CoreError> {
        Ok(self.0.meta.item(feed.id, key).await?)
    }

    /// The live item under each of `keys`, in order (`None` where there is
    /// none), read at once ([`MetadataStore::items_by_keys`]).
    pub async fn items_by_keys(
        &self,
        feed: &FeedRecord,
        keys: &[ItemKey],
    ) -> Result<Vec<Option<ItemRecord>>, CoreError> {
        Ok(self.0.meta.items_by_keys(feed.id, keys).await?)
    }

    /// Every live item whose key starts with `prefix`, in key order.
    /// Whether any live item's key starts with `prefix` (one row read).
    pub async fn has_items(&self, feed: &FeedRecord, prefix: &str) -> Result<bool, CoreError> {
        Ok(!self.0.meta.items(feed.id, prefix, None, 1).await?.is_empty())
    }

    pub async fn items(&self, feed: &FeedRecord, prefix: &str) -> Result<Vec<ItemRecord>, CoreError> {
        const PAGE: usize = 1000;
        let mut out: Vec<ItemRecord> = Vec::new();
        loop {
            let page = self
                .0
                .meta
                .items(feed.id, prefix, out.last().map(|i| &i.key), PAGE)
                .await?;
            let done = page.len() < PAGE;
            out.extend(page);
            if done {
                return Ok(out);
            }
        }
    }

    /// Keys and metadata text of every live item whose key starts with
    /// `prefix`, in key order ([`MetadataStore::item_metas`]): for index
    /// renderers, which parse the text into their own types.
    pub async fn item_metas(&self, feed: &FeedRecord, prefix: &str) -> Result<Vec<ItemMetaText>, CoreError> {
        const PAGE: usize = 2000;
        let mut out: Vec<ItemMetaText> = Vec::new();
        loop {
            let page = self
                .0
                .meta
                .item_metas(feed.id, prefix, out.last().map(|i| &i.key), PAGE)
                .await?;
            let done = page.len() < PAGE;
            out.extend(page);
            if done {
                return Ok(out);
            }
        }
    }

    /// A page of live items after `after`.
    pub async fn items_page(
        &self,
        feed: &FeedRecord,
        prefix: &str,
        after: Option<&ItemKey>,
        limit: usize,
    ) -> Result<Vec<ItemRecord>, CoreError> {
        Ok(self.0.meta.items(feed.id, prefix, after, limit).await?)
    }

    /// What `feed` holds in figures (live items, distinct blobs, their
    /// bytes: [`ferry_store::MetadataStore::feed_usage`]), counted once
    /// per change of the feed and kept in memory until the next.
    pub async fn feed_usage(&self, feed: &FeedRecord) -> Result<ferry_store::FeedUsage, CoreError> {
        let bytes = self
            .cached_index(feed, "core:usage", || async {
                let usage = self.0.meta.feed_usage(feed.id).await?;
                serde_json::to_vec(&usage)
                    .map(Bytes::from)
                    .map_err(|e| CoreError::Internal(format!("feed usage: {e}")))
            })
            .await?;
        serde_json::from_slice(&bytes).map_err(|e| CoreError::Internal(format!("feed usage: {e}")))
    }

    /// Serves a rendered index from memory while the feed has not changed
    /// since it was rendered; otherwise renders it again with `render`.
    pub async fn cached_index<F, Fut>(
        &self,
        feed: &FeedRecord,
        key: &str,
        render: F,
    ) -> Result<Bytes, CoreError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Bytes, CoreError>>,
    {
        self.cached_at(feed, key, 0, render).await
    }

    /// As [`Ferry::cached_index`], for an answer that also shows download
    /// counts: it is rendered again once the feed changes or new counts
    /// are recorded ([`Ferry::flush_downloads`], every few seconds while
    /// the feed is downloaded from).
    pub async fn cached_index_counted<F, Fut>(
        &self,
        feed: &FeedRecord,
        key: &str,
        render: F,
    ) -> Result<Bytes, CoreError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Bytes, CoreError>>,
    {
        let counts = self
            .0
            .counted
            .lock()
            .map_err(lock_err)?
            .get(&feed.id)
            .copied()
            .unwrap_or(0);
        self.cached_at(feed, key, counts, render).await
    }

    /// As [`Ferry::cached_index`] (with `counted`, as
    /// [`Ferry::cached_index_counted`]), for an answer served with an
    /// entity tag: the tag is computed once per rendering and kept with
    /// the body, so a hit costs no hashing.
    pub async fn cached_rendered<F, Fut>(
        &self,
        feed: &FeedRecord,
        key: &str,
        counted: bool,
        render: F,
    ) -> Result<Rendered, CoreError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Bytes, CoreError>>,
    {
        let packed = || async { render().await.map(|b| Rendered::pack(&b)) };
        let value = if counted {
            self.cached_index_counted(feed, key, packed).await?
        } else {
            self.cached_index(feed, key, packed).await?
        };
        Rendered::unpack(&value).ok_or_else(|| CoreError::Internal(format!("cached answer {key} is damaged")))
    }

    async fn cached_at<F, Fut>(
        &self,
        feed: &FeedRecord,
        key: &str,
        counts: u64,
        render: F,
    ) -> Result<Bytes, CoreError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Bytes, CoreError>>,
    {
        let seq = self.current_seq(feed.id).await?;
        if let Some(hit) = self.0.cache.get(feed.id, key, seq, counts) {
            return Ok(hit);
        }
        let body = render().await?;
        self.0.cache.put(feed.id, key, seq, counts, body.clone());
        Ok(body)
    }

    /// The feed's change-log position, from memory once known.
    pub(crate) async fn current_seq(&self, feed: FeedId) -> Result<i64, CoreError> {
        if let Some(tx) = self.0.seqs.lock().map_err(lock_err)?.get(&feed) {
            return Ok(*tx.borrow());
        }
        let seq = *self.subscribe(feed).await?.borrow();
        Ok(seq)
    }

    // ---- downloads ----

    /// Counts a download; counts are written to the store in batches.
    pub fn count_download(&self, feed: &FeedRecord, key: &ItemKey) {
        if let Ok(mut d) = self.0.downloads.lock() {
            *d.entry((feed.id, key.clone())).or_default() += 1;
        }
    }

    /// Writes the downloads counted since the last flush to the store (the
    /// server does so every few seconds).
    pub async fn flush_downloads(&self) -> Result<(), CoreError> {
        let pending = std::mem::take(&mut *self.0.downloads.lock().map_err(lock_err)?);
        let mut by_feed: HashMap<FeedId, Vec<(ItemKey, u64)>> = HashMap::new();
        for ((feed, key), n) in pending {
            by_feed.entry(feed).or_default().push((key, n));
        }
        for (feed, counts) in by_feed {
            self.0.meta.add_downloads(feed, &counts).await?;
            *self.0.counted.lock().map_err(lock_err)?.entry(feed).or_default() += 1;
        }
        Ok(())
    }

    // ---- garbage collection ----

    /// Removes blobs no item references and no upload in flight holds.
    /// Safe to run while the instance serves: the store marks a blob before
    /// its file is removed, and uploads of the same content wait for that.
    pub async fn collect_garbage(&self) -> Result<GcReport, CoreError> {
        self.collect_garbage_with(PARTIAL_IDLE).await
    }

    /// [`Ferry::collect_garbage`], removing interrupted transfers' bytes
    /// idle for `partial_idle`.
    pub async fn collect_garbage_with(&self, partial_idle: Duration) -> Result<GcReport, CoreError> {
        let mut report = GcReport {
            partials_removed: self.0.blobs.sweep_partials(partial_idle).await?,
            ..GcReport::default()
        };
        loop {
            let batch = self.0.meta.gc_mark(now_millis(), 500).await?;
            if batch.is_empty() {
                return Ok(report);
            }
            for d in &batch {
                self.0.blobs.delete(d).await?;
            }
            self.0.meta.gc_forget(&batch).await?;
            report.blobs_deleted += batch.len() as u64;
        }
    }
}

/// Checks an external base URL (see [`Config::base_url`]): `http://` or
/// `https://`, a host, an optional path prefix, no query or fragment;
/// returns it without a trailing `/`.
pub fn validate_base_url(url: &str) -> Result<String, CoreError> {
    let bad = |why: &str| CoreError::invalid(format!("base_url {url:?}: {why}"));
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| bad("must start with http:// or https://"))?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    if url.contains(['?', '#', ' ', '"', '<', '>', '\\']) || url.chars().any(char::is_control) {
        return Err(bad("must not contain a query, a fragment, spaces or quotes"));
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// RFC 3339 (UTC, milliseconds) for a millisecond timestamp; used in indexes.
pub fn rfc3339(millis: i64) -> String {
    ferry_types::rfc3339_millis(millis)
}

/// Follows the events of a shared store for as long as the instance
/// lives. Events missed because this process fell behind are made up for
/// by a [`StoreEvent::Resync`].
async fn follow_store_events(
    ferry: std::sync::Weak<Inner>,
    mut rx: tokio::sync::broadcast::Receiver<StoreEvent>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let event = match rx.recv().await {
            Ok(ev) => ev,
            Err(RecvError::Lagged(n)) => {
                tracing::warn!(
                    missed = n,
                    "fell behind the store's change notifications; re-reading"
                );
                StoreEvent::Resync
            }
            Err(RecvError::Closed) => return,
        };
        let Some(inner) = ferry.upgrade() else { return };
        if let Err(e) = Ferry(inner).apply_store_event(event).await {
            tracing::warn!(error = %e, "applying a change notification of the shared store failed");
        }
    }
}
