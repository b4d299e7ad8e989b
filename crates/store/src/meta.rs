//! The metadata store: feeds, items, change log, blob bookkeeping, API keys.

use async_trait::async_trait;
use ferry_types::{Digest, FeedName, FeedType, Hlc, InstanceId, ItemKey, Stamp};
use serde::{Deserialize, Serialize};

use crate::StoreError;

/// Database id of a feed. Only meaningful inside one instance.
pub type FeedId = i64;

/// A feed's contents in figures ([`MetadataStore::feed_usage`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct FeedUsage {
    /// Live items.
    pub items: u64,
    /// Distinct blobs the live items name.
    pub blobs: u64,
    /// Those blobs' sizes summed, in bytes.
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FeedRecord {
    #[serde(skip)]
    pub id: FeedId,
    pub name: FeedName,
    #[serde(rename = "type")]
    pub feed_type: FeedType,
    pub private: bool,
    pub created_at: i64,
}

/// A live item as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemRecord {
    pub key: ItemKey,
    pub meta: serde_json::Value,
    pub blobs: Vec<Digest>,
    pub stamp: Stamp,
    /// When the item was first written (ms); carried by replication.
    pub created_at: i64,
    /// When this instance last stored the item (ms): on a replica, when
    /// the change was applied here. What users see as the item's time is
    /// [`ItemRecord::modified`].
    pub updated_at: i64,
    pub downloads: u64,
}

impl ItemRecord {
    /// When this version of the item was written at its origin, in ms since
    /// the Unix epoch: its stamp's clock reading ([`ferry_types::Hlc::millis`]).
    /// The same on every instance holding this version (a spoke shows the
    /// hub's upload time, not when it replicated the item), and later for
    /// every later version of the item.
    pub fn modified(&self) -> i64 {
        i64::try_from(self.stamp.time.millis()).unwrap_or(i64::MAX)
    }
}

/// A live item's key and its metadata as stored: JSON text, not parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemMetaText {
    pub key: ItemKey,
    /// The item's metadata, a JSON object as text (as written).
    pub meta: String,
}

/// One write to a feed: an upsert or a delete (tombstone), with its stamp.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub key: ItemKey,
    pub stamp: Stamp,
    pub op: ChangeOp,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ChangeOp {
    Upsert {
        meta: serde_json::Value,
        blobs: Vec<Digest>,
        /// When the item was first written (carried by replication). `None`
        /// for a local write: the live item's own time is kept, or now for a
        /// new (or deleted) item.
        created_at: Option<i64>,
    },
    Delete,
}

/// What must hold for a write to go ahead; checked in the write's transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// Write whatever is there (subject to stamp order).
    Any,
    /// There must be no live item under the key (a new version); else Conflict.
    Absent,
    /// There must be a live item under the key; else NotFound.
    Present,
    /// As [`Precondition::Any`], and the key, read as a `/`-separated
    /// path, must be neither under a live item (no live key is a folder
    /// above it) nor above one (no live key starts with it and a `/`);
    /// else Conflict, naming the one in the way. A file and a folder of
    /// one name never both exist, also when two writers race on separate
    /// nodes: it is judged in the write's transaction, under the feed's
    /// write lock ([`path_conflict`] words the refusal).
    PathFree,
}

/// The refusal of a [`Precondition::PathFree`] write of `key`: `file_above`
/// is a live key that is a folder above it, `below` a live key under it.
pub fn path_conflict(key: &str, file_above: Option<&str>, below: Option<&str>) -> Option<StoreError> {
    if let Some(above) = file_above {
        return Some(StoreError::Conflict(format!(
            "{above} is a file, so {key} cannot be stored under it: delete {above} first, or choose another path"
        )));
    }
    below.map(|_| {
        StoreError::Conflict(format!(
            "{key} is a folder holding files, so a file cannot be stored there: choose another path, or delete the folder's files first"
        ))
    })
}

/// The folders above `key` read as a `/`-separated path (`a/b/c` → `a`,
/// `a/b`), and the bounds of the keys under it (`key/` ≤ k < `key0`:
/// `0` follows `/` in byte order).
pub fn path_neighbours(key: &str) -> (Vec<&str>, String, String) {
    let above = key
        .match_indices('/')
        .map(|(i, _)| &key[..i])
        .filter(|a| !a.is_empty())
        .collect();
    (above, format!("{key}/"), format!("{key}0"))
}

/// How a write orders its stamp against the stamp stored under its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StampOrder {
    /// The later stamp wins; a change that loses is reported as
    /// [`WriteOutcome::Superseded`] and the rest of the batch goes ahead
    /// (replication: the loser is a conflict to log, not an error).
    LaterWins,
    /// A local write: it happens after whatever is stored under its key,
    /// so a stored stamp at or after the write's own (a version received
    /// from an instance whose clock runs ahead) makes the write take the
    /// reading just after the stored one, with its own origin — as long as
    /// that stays at or below `ceiling` (the wall clock plus the allowed
    /// skew). Past it, the whole batch fails with [`StoreError::Superseded`]:
    /// a client must never be told a write succeeded that changed nothing.
    /// The instance's clock itself never follows received stamps.
    LocalWrite { ceiling: Hlc },
    /// The change replaces what is stored whatever its stamp (repair of a
    /// replica from its source). The same stamp again is still a no-op.
    Overwrite,
}

/// Judges one change against what is stored under its key (`existing`:
/// whether that is a tombstone, and its stamp), the same for every
/// backend: the precondition first, then the stamp order. `Ok(Err(o))`:
/// nothing to write, the outcome is `o`; `Ok(Ok(stamp))`: write with
/// `stamp` (a local write may move past the stored one).
///
/// Errors: Conflict / NotFound for a failed precondition;
/// [`StoreError::Superseded`] for a local write that cannot pass the
/// stored stamp below its ceiling.
pub fn judge_change(
    existing: Option<(bool, Stamp)>,
    change: &Change,
    pre: Precondition,
    order: StampOrder,
) -> Result<Result<Stamp, WriteOutcome>, StoreError> {
    let key = change.key.as_str();
    let live = matches!(existing, Some((false, _)));
    match pre {
        Precondition::Absent if live => return Err(StoreError::Conflict(format!("{key} already exists"))),
        Precondition::Present if !live => return Err(StoreError::NotFound(key.to_string())),
        _ => {}
    }
    let mut stamp = change.stamp;
    if let Some((_, current)) = existing {
        if current == change.stamp && !matches!(order, StampOrder::LocalWrite { .. }) {
            return Ok(Err(WriteOutcome::AlreadyApplied));
        }
        if current >= change.stamp {
            match order {
                StampOrder::LaterWins => return Ok(Err(WriteOutcome::Superseded { current })),
                StampOrder::LocalWrite { ceiling } => {
                    let after = Hlc(current.time.0.saturating_add(1));
                    if after == current.time || after > ceiling {
                        return Err(StoreError::Superseded {
                            key: key.to_string(),
                            current,
                        });
                    }
                    stamp.time = after;
                }
                StampOrder::Overwrite => {}
            }
        }
    }
    Ok(Ok(stamp))
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Applied and appended to the change log at `seq`.
    Applied { seq: i64 },
    /// The stored item or tombstone carries a later stamp: the write lost.
    Superseded { current: Stamp },
    /// This exact stamp is already stored: nothing to do (idempotence).
    AlreadyApplied,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Upsert,
    Delete,
}

/// One entry of a feed's change log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeRecord {
    pub seq: i64,
    pub key: ItemKey,
    pub kind: ChangeKind,
    pub stamp: Stamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    Read,
    Write,
    Admin,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Write => "write",
            Permission::Admin => "admin",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "read" => Some(Permission::Read),
            "write" => Some(Permission::Write),
            "admin" => Some(Permission::Admin),
            _ => None,
        }
    }
}

/// A feed an API key is limited to. The key holds the feed's identity
/// ([`FeedId`]), not its name: a feed deleted and created again under the
/// same name is another feed, outside the key's scope. The name is carried
/// for display, and serializes as the bare name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ScopedFeed {
    pub id: FeedId,
    pub name: FeedName,
}

impl From<&FeedRecord> for ScopedFeed {
    fn from(f: &FeedRecord) -> Self {
        Self {
            id: f.id,
            name: f.name.clone(),
        }
    }
}

impl Serialize for ScopedFeed {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.name.serialize(s)
    }
}

/// An API key as stored: only the sha256 of the secret is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiKeyRecord {
    pub id: i64,
    pub name: String,
    #[serde(skip)]
    pub hash: [u8; 32],
    pub permission: Permission,
    /// `None`: every feed, present and future. `Some`: only these feeds
    /// (by identity, listed by name). Deleting a feed takes it out of
    /// every key's scope; a key whose feeds were all deleted stays, scoped
    /// to nothing (`Some(vec![])`): it may use no feed until it is deleted.
    pub feeds: Option<Vec<ScopedFeed>>,
    pub created_at: i64,
}

impl ApiKeyRecord {
    /// Whether the key may be used on feed `feed` at all (its scope
    /// includes the feed; permission aside).
    pub fn covers(&self, feed: FeedId) -> bool {
        self.feeds
            .as_ref()
            .is_none_or(|fs| fs.iter().any(|f| f.id == feed))
    }
}

/// A key to create. `feeds` must name feeds that exist (by id and name):
/// the store refuses the key otherwise.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub name: String,
    pub hash: [u8; 32],
    pub permission: Permission,
    /// `None`: every feed. `Some`: only these.
    pub feeds: Option<Vec<ScopedFeed>>,
}

/// What another node sharing this store did, that a node keeping state in
/// memory must hear about ([`MetadataStore::events`]). Every event is
/// also delivered to the node that caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// The feed's change log grew to `seq` (a long poll on it may answer,
    /// an index rendered below `seq` is stale).
    FeedChanged { feed: FeedId, seq: i64 },
    /// The feed was deleted: forget everything kept under its id and name.
    FeedDeleted { feed: FeedId, name: FeedName },
    /// The feed's signing key was set or replaced.
    SigningKeyChanged { feed: FeedId },
    /// Someone asked through a node to stop execution `execution`
    /// ([`crate::ReplicationStore::request_execution_stop`]).
    StopRequested { execution: i64 },
    /// The API key with this secret hash was deleted or replaced: whatever
    /// was remembered of it (a credential verified for the metrics scrape)
    /// is forgotten.
    KeyRevoked { hash: [u8; 32] },
    /// A sync token was revoked, or a replication updated or deleted: a
    /// peer's long poll waiting on this node checks its session again.
    SessionsChanged,
    /// Events may have been lost (the connection that carries them broke):
    /// re-read whatever is kept from the store.
    Resync,
}

/// The metadata of one Ferry instance. Implementations keep every method's
/// effect atomic; [`crate::conformance`] states the contract as tests.
/// Every metadata store also keeps the UI sessions ([`crate::SessionStore`])
/// and the OCI upload sessions ([`crate::UploadSessionStore`]).
#[async_trait]
pub trait MetadataStore: crate::SessionStore + crate::UploadSessionStore + Send + Sync + 'static {
    /// This instance's id, created (randomly) and stored on first use.
    async fn instance_id(&self) -> Result<InstanceId, StoreError>;
    /// Replaces the stored instance id with a new random one and returns
    /// it. A running instance keeps the id it read at its start: the new
    /// one is taken at the next start of every node. For a copy of another
    /// instance's data directory, which must not speak as that instance.
    async fn renew_instance_id(&self) -> Result<InstanceId, StoreError>;
    /// The instance's random 32-byte secret named `name` (e.g. the key
    /// registry tokens are signed with), created on first use and the same
    /// for every node sharing the store: nodes starting at once agree on
    /// the first one written. Kept in the `meta` table as `secret:NAME`
    /// (hex); whoever can read the database can read it.
    async fn instance_secret(&self, name: &str) -> Result<[u8; 32], StoreError>;
    /// Claims this period's run of the instance's periodic job `job` (GC,
    /// tombstone pruning, the integrity sample): true, recording `now` (ms
    /// since the epoch) as its last run, when no node of the instance ran
    /// it at or after `now - every_ms`; false when one did (this node
    /// skips its turn). Atomic across the nodes sharing the store: of
    /// nodes claiming at once, one wins. Kept in the `meta` table as
    /// `job:NAME` (the time as decimal text).
    async fn claim_periodic(&self, job: &str, now: i64, every_ms: i64) -> Result<bool, StoreError>;
    /// The highest stamp time of the items and tombstones this instance
    /// wrote (origin = [`MetadataStore::instance_id`]), so a restarted clock
    /// never goes backwards. Stamps received from elsewhere do not count:
    /// another instance's clock running ahead must not drag this one.
    async fn max_stamp_time(&self) -> Result<Hlc, StoreError>;

    async fn create_feed(
        &self,
        name: &FeedName,
        ty: FeedType,
        private: bool,
    ) -> Result<FeedRecord, StoreError>;
    async fn feed(&self, name: &FeedName) -> Result<Option<FeedRecord>, StoreError>;
    async fn feeds(&self) -> Result<Vec<FeedRecord>, StoreError>;
    /// Deletes a feed with its items and change log, and takes it out of
    /// every API key's scope (in the same transaction). Returns false if absent.
    async fn delete_feed(&self, name: &FeedName) -> Result<bool, StoreError>;

    /// Applies changes in one transaction, in order. For each: checks the
    /// precondition (a failed one aborts the whole batch), orders its stamp
    /// against the stored item or tombstone (later stamp wins), checks that
    /// every referenced blob is registered as present, writes the item or
    /// tombstone and appends to the change log.
    async fn write(
        &self,
        feed: FeedId,
        changes: Vec<(Change, Precondition)>,
    ) -> Result<Vec<WriteOutcome>, StoreError> {
        self.write_ordered(feed, changes, StampOrder::LaterWins).await
    }
    /// [`MetadataStore::write`] with an explicit stamp ordering (see
    /// [`StampOrder`]); the whole batch is one transaction either way.
    async fn write_ordered(
        &self,
        feed: FeedId,
        changes: Vec<(Change, Precondition)>,
        order: StampOrder,
    ) -> Result<Vec<WriteOutcome>, StoreError>;
    async fn item(&self, feed: FeedId, key: &ItemKey) -> Result<Option<ItemRecord>, StoreError>;
    /// The live item under each of `keys`, in the order given (`None`
    /// where there is none): one read for the lot, as a bulk import checks
    /// hundreds of keys at once. Backends override this default, which
    /// reads them one by one.
    async fn items_by_keys(
        &self,
        feed: FeedId,
        keys: &[ItemKey],
    ) -> Result<Vec<Option<ItemRecord>>, StoreError> {
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            out.push(self.item(feed, k).await?);
        }
        Ok(out)
    }
    /// Live items whose key starts with `prefix`, in key order, after `after`.
    async fn items(
        &self,
        feed: FeedId,
        prefix: &str,
        after: Option<&ItemKey>,
        limit: usize,
    ) -> Result<Vec<ItemRecord>, StoreError>;
    /// The keys and metadata text of the live items whose key starts with
    /// `prefix`, in key order, after `after`: what an index renderer
    /// reads, parsing each item's JSON straight into its own type (10,000
    /// rpm items: ~35 ms, against ~220 ms through a `serde_json::Value`).
    /// Backends override this default, which goes through [`Self::items`].
    async fn item_metas(
        &self,
        feed: FeedId,
        prefix: &str,
        after: Option<&ItemKey>,
        limit: usize,
    ) -> Result<Vec<ItemMetaText>, StoreError> {
        Ok(self
            .items(feed, prefix, after, limit)
            .await?
            .into_iter()
            .map(|i| ItemMetaText {
                key: i.key,
                meta: i.meta.to_string(),
            })
            .collect())
    }
    /// The stamp of a tombstone under `key`, if the key is deleted.
    async fn tombstone(&self, feed: FeedId, key: &ItemKey) -> Result<Option<Stamp>, StoreError>;
    /// Change log entries with `seq > since`, in order.
    async fn changes_since(
        &self,
        feed: FeedId,
        since: i64,
        limit: usize,
    ) -> Result<Vec<ChangeRecord>, StoreError>;
    /// The newest change's seq (0 for an empty log).
    async fn last_seq(&self, feed: FeedId) -> Result<i64, StoreError>;
    /// What `feed` holds: its live items (tombstones not counted), the
    /// distinct blobs they name and those blobs' bytes (a blob two items
    /// share counted once). One pass over the feed's rows, for overviews.
    async fn feed_usage(&self, feed: FeedId) -> Result<FeedUsage, StoreError>;
    /// Adds download counts; not a change (counts are carried separately).
    async fn add_downloads(&self, feed: FeedId, counts: &[(ItemKey, u64)]) -> Result<(), StoreError>;

    /// Registers a blob about to be committed, leased until `lease_until`
    /// (ms) so the collector leaves it alone until an item references it.
    /// Fails with [`StoreError::BlobBusy`] while the collector deletes it.
    async fn lease_blob(&self, digest: &Digest, size: u64, lease_until: i64) -> Result<(), StoreError>;
    /// Whether the blob is registered as present.
    async fn blob_present(&self, digest: &Digest) -> Result<bool, StoreError>;
    /// Whether a live item of any feed references the blob: what needs it
    /// (the collector keeps it for that, or for its lease). A registered
    /// blob nothing references — an upload still under way, or one a
    /// crash cut before its item was written — is not damage when its
    /// file is missing.
    async fn blob_in_use(&self, digest: &Digest) -> Result<bool, StoreError>;
    /// [`MetaStore::lease_blob`] for many blobs (digest, size) at once;
    /// returns the digests that were not leased because the collector is
    /// deleting them (the others are). Stores that can do it in one
    /// transaction override it.
    async fn lease_blobs(
        &self,
        blobs: &[(Digest, u64)],
        lease_until: i64,
    ) -> Result<Vec<Digest>, StoreError> {
        let mut busy = Vec::new();
        for (d, size) in blobs {
            match self.lease_blob(d, *size, lease_until).await {
                Ok(()) => {}
                Err(StoreError::BlobBusy(_)) => busy.push(*d),
                Err(e) => return Err(e),
            }
        }
        Ok(busy)
    }
    /// Which of `digests` are registered as present ([`MetaStore::blob_present`]).
    async fn blobs_present(
        &self,
        digests: &[Digest],
    ) -> Result<std::collections::HashSet<Digest>, StoreError> {
        let mut out = std::collections::HashSet::new();
        for d in digests {
            if self.blob_present(d).await? {
                out.insert(*d);
            }
        }
        Ok(out)
    }
    /// The size in bytes, as registered when each was committed, of those
    /// of `digests` registered as present (absent ones are left out): what
    /// a replication peer tells a receiver that fetches from blob sources,
    /// so a frame of another length is refused before its bytes land.
    async fn blob_sizes(
        &self,
        digests: &[Digest],
    ) -> Result<std::collections::HashMap<Digest, u64>, StoreError>;
    /// Blobs registered as present, with their sizes (bytes), in digest
    /// order after `after`, at most `limit` (for `fsck`).
    async fn blobs_after(
        &self,
        after: Option<&Digest>,
        limit: usize,
    ) -> Result<Vec<(Digest, u64)>, StoreError>;
    /// Marks up to `limit` blobs that no item references and whose lease
    /// ended before `now` as being deleted, and returns them.
    async fn gc_mark(&self, now: i64, limit: usize) -> Result<Vec<Digest>, StoreError>;
    /// Forgets blobs whose files the collector has removed.
    async fn gc_forget(&self, digests: &[Digest]) -> Result<(), StoreError>;

    /// Creates a key. Conflict if the name is taken; NotFound (naming the
    /// feed) if a feed of its scope does not exist with that id and name.
    /// Either way nothing is created.
    async fn create_key(&self, key: NewApiKey) -> Result<ApiKeyRecord, StoreError>;
    /// Creates or replaces the key called `key.name` (used for the admin
    /// key); its scope is checked as in [`MetadataStore::create_key`].
    async fn put_named_key(&self, key: NewApiKey) -> Result<ApiKeyRecord, StoreError>;
    /// The key with this secret hash, with its current scope.
    async fn key_by_hash(&self, hash: &[u8; 32]) -> Result<Option<ApiKeyRecord>, StoreError>;
    /// Every key, by name, with its current scope.
    async fn keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError>;
    async fn delete_key(&self, name: &str) -> Result<bool, StoreError>;

    /// The feed's signing key (an armored OpenPGP secret key), if it has
    /// one. Instance-local: never part of an item, a change or a bundle,
    /// and never served. Deleting the feed deletes it.
    async fn signing_key(&self, feed: FeedId) -> Result<Option<String>, StoreError>;
    /// Sets (or replaces) the feed's signing key. NotFound if the feed
    /// does not exist.
    async fn put_signing_key(&self, feed: FeedId, secret: &str) -> Result<(), StoreError>;

    /// Events of writes made through any handle on this store, including
    /// other nodes sharing its database, or `None` for a store only one
    /// process uses (SQLite: that process already knows what it wrote).
    fn events(&self) -> Option<tokio::sync::broadcast::Receiver<StoreEvent>> {
        None
    }
}
