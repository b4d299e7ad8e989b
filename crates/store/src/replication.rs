//! What replication keeps: replication configurations (opaque JSON owned by
//! the `replication` crate), sync tokens, cursors, executions, and the
//! reads a replication needs beyond live items (tombstones, the horizon).

use async_trait::async_trait;
use ferry_types::{Digest, InstanceId, ItemKey, Stamp};
use serde::Serialize;

use crate::StoreError;
use crate::meta::FeedId;

#[derive(Debug, Clone, PartialEq)]
pub struct ReplicationRecord {
    pub id: i64,
    pub name: String,
    pub config: serde_json::Value,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncTokenRecord {
    /// Public part of the token, used to find it.
    pub id: String,
    pub replication_id: i64,
    /// sha256 of the secret part.
    pub hash: [u8; 32],
    pub created_at: i64,
    pub revoked: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExecutionRecord {
    pub id: i64,
    #[serde(skip)]
    pub replication_id: i64,
    pub trigger: String,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    /// `None` while running; then e.g. "succeeded", "failed", "needs-confirmation".
    pub outcome: Option<String>,
    /// Per-feed counts and log lines.
    pub report: serde_json::Value,
}

/// An item or a tombstone, as replication sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: ItemKey,
    pub stamp: Stamp,
    /// `None` for a tombstone.
    pub live: Option<LiveEntry>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LiveEntry {
    pub meta: serde_json::Value,
    pub blobs: Vec<Digest>,
    pub created_at: i64,
    pub downloads: u64,
}

#[async_trait]
pub trait ReplicationStore: Send + Sync + 'static {
    async fn create_replication(
        &self,
        name: &str,
        config: serde_json::Value,
    ) -> Result<ReplicationRecord, StoreError>;
    async fn update_replication(&self, name: &str, config: serde_json::Value) -> Result<(), StoreError>;
    async fn replication(&self, name: &str) -> Result<Option<ReplicationRecord>, StoreError>;
    async fn replications(&self) -> Result<Vec<ReplicationRecord>, StoreError>;
    async fn replication_by_id(&self, id: i64) -> Result<Option<ReplicationRecord>, StoreError>;
    /// Deletes a replication with its tokens, cursors and executions.
    async fn delete_replication(&self, name: &str) -> Result<bool, StoreError>;

    async fn add_sync_token(&self, replication: i64, id: &str, hash: [u8; 32]) -> Result<(), StoreError>;
    async fn sync_token(&self, id: &str) -> Result<Option<SyncTokenRecord>, StoreError>;
    async fn sync_tokens(&self, replication: i64) -> Result<Vec<SyncTokenRecord>, StoreError>;
    async fn revoke_sync_token(&self, replication: i64, id: &str) -> Result<bool, StoreError>;

    /// A named position (0 if never set).
    async fn cursor(&self, replication: i64, name: &str) -> Result<i64, StoreError>;
    async fn set_cursor(&self, replication: i64, name: &str, value: i64) -> Result<(), StoreError>;
    /// Sets the named positions in `set` and removes those in `clear`, in
    /// one transaction (a cursor and its anchor move together).
    async fn set_cursors(
        &self,
        replication: i64,
        set: &[(String, i64)],
        clear: &[String],
    ) -> Result<(), StoreError>;
    /// Every named position whose name starts with `prefix`, by name.
    async fn cursors(&self, replication: i64, prefix: &str) -> Result<Vec<(String, i64)>, StoreError>;

    /// Saves what this instance knows of `instance`, a peer of incoming
    /// replication `replication` (opaque JSON of the replication layer),
    /// replacing what was saved before.
    async fn save_peer(
        &self,
        replication: i64,
        instance: &str,
        state: serde_json::Value,
    ) -> Result<(), StoreError>;
    /// Every peer saved for `replication`: `(instance, state)`, by instance.
    async fn peers(&self, replication: i64) -> Result<Vec<(String, serde_json::Value)>, StoreError>;
    /// The saved state of peer `instance` of `replication`, if any (one
    /// lookup, whatever the number of peers).
    async fn peer(&self, replication: i64, instance: &str) -> Result<Option<serde_json::Value>, StoreError>;
    /// Forgets peer `instance` of `replication`; whether it was saved.
    async fn forget_peer(&self, replication: i64, instance: &str) -> Result<bool, StoreError>;

    async fn start_execution(&self, replication: i64, trigger: &str) -> Result<i64, StoreError>;
    /// Ends execution `id` with `outcome` and `report`, as run by `holder`
    /// (a node). Does nothing to an execution that already ended, nor to
    /// one whose replication's lease another holder holds now: that node
    /// took it over ([`ReplicationStore::adopt_execution`]) and ends it.
    async fn finish_execution(
        &self,
        id: i64,
        outcome: &str,
        report: serde_json::Value,
        holder: &str,
    ) -> Result<(), StoreError>;
    /// Records what running execution `id` has reported so far (`report`,
    /// as [`ReplicationStore::finish_execution`] takes it), as run by
    /// `holder`, so that a node taking it over, and every node showing
    /// it, has its log. Does nothing to an execution that ended, nor to
    /// one whose replication's lease another holder holds now.
    async fn save_execution_report(
        &self,
        id: i64,
        report: serde_json::Value,
        holder: &str,
    ) -> Result<(), StoreError>;
    /// Asks the node running replication `replication`'s execution to stop
    /// it, on behalf of `by` (for its log): marks the newest execution of
    /// it that has not ended, and returns its id (None when none runs).
    /// Nodes sharing the store hear of it at once
    /// ([`crate::StoreEvent::StopRequested`]) where the store carries events.
    async fn request_execution_stop(&self, replication: i64, by: &str) -> Result<Option<i64>, StoreError>;
    /// Who asked execution `id` to stop through
    /// [`ReplicationStore::request_execution_stop`], if anyone did.
    async fn execution_stop_request(&self, id: i64) -> Result<Option<String>, StoreError>;
    /// Takes over the execution of replication `replication` that a node
    /// whose lease ran out left running, for `holder`, which must hold the
    /// lease at `now` (ms): returns the newest execution of it that never
    /// ended (it goes on under the same id), after closing any older ones
    /// as interrupted. None when there is none, or `holder` does not hold
    /// the lease.
    async fn adopt_execution(
        &self,
        replication: i64,
        holder: &str,
        now: i64,
    ) -> Result<Option<i64>, StoreError>;
    /// Closes executions that never ended (the process stopped during them)
    /// with the outcome "interrupted" and a log line saying so (after the
    /// lines saved with [`ReplicationStore::save_execution_report`]); returns how
    /// many. Executions of a replication whose execution lease another
    /// holder than `holder` still holds at `now` (ms) are left alone: that
    /// node is running them.
    async fn close_interrupted_executions(&self, holder: &str, now: i64) -> Result<u64, StoreError>;

    /// Takes, or renews, the lease that lets `holder` (a node) run
    /// executions of replication `replication`, until `until` (ms). True if
    /// `holder` holds it now; false while another holder's lease runs
    /// (`until` of that lease at or after `now`). Taking over a lease that
    /// ran out leaves the execution its holder left running as it is, for
    /// the new holder to go on with ([`ReplicationStore::adopt_execution`]).
    async fn take_execution_lease(
        &self,
        replication: i64,
        holder: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, StoreError>;
    /// Gives the lease up (if `holder` holds it) so another node need not
    /// wait for it to run out.
    async fn release_execution_lease(&self, replication: i64, holder: &str) -> Result<(), StoreError>;
    /// Whether several processes (nodes) may share this store, so that
    /// execution leases must tell them apart. False for a store only one
    /// process opens (SQLite): its leases survive that process's restart
    /// under the same holder.
    fn shared_by_nodes(&self) -> bool {
        false
    }
    /// Newest first.
    async fn executions(&self, replication: i64, limit: usize) -> Result<Vec<ExecutionRecord>, StoreError>;

    /// The current state of these keys (live or tombstone); absent keys are left out.
    async fn entries_for(&self, feed: FeedId, keys: &[ItemKey]) -> Result<Vec<Entry>, StoreError>;
    /// Every item and tombstone after `after`, in key order.
    async fn entries(
        &self,
        feed: FeedId,
        after: Option<&ItemKey>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError>;
    /// Number of live items.
    async fn live_count(&self, feed: FeedId) -> Result<u64, StoreError>;
    /// Whether an item of one of `feeds` references the blob.
    async fn blob_referenced(&self, digest: &Digest, feeds: &[FeedId]) -> Result<bool, StoreError>;
    /// Keys of the items of `feed` that reference the blob, in key order,
    /// at most `limit` of them.
    async fn blob_keys(
        &self,
        digest: &Digest,
        feed: FeedId,
        limit: usize,
    ) -> Result<Vec<ItemKey>, StoreError>;
    /// Which of `digests` an item of one of `feeds` references (as
    /// [`ReplicationStore::blob_referenced`], for many at once; stores
    /// that can look them up in one go override it).
    async fn blobs_referenced(
        &self,
        digests: &[Digest],
        feeds: &[FeedId],
    ) -> Result<std::collections::HashSet<Digest>, StoreError> {
        let mut out = std::collections::HashSet::new();
        for d in digests {
            if self.blob_referenced(d, feeds).await? {
                out.insert(*d);
            }
        }
        Ok(out)
    }
    /// How many keys of the feed are deleted now (tombstones) and were
    /// changed after `since`: what a peer reading the log from `since`
    /// would be asked to delete, at most.
    async fn deletions_after(&self, feed: FeedId, since: i64) -> Result<u64, StoreError>;
    /// Bytes of the distinct blobs that live items of the feed changed
    /// after `since` reference (each digest once, sizes as stored): what a
    /// peer reading the log from `since` may have to move, at most. One
    /// scan of the changes after `since`.
    async fn live_bytes_after(&self, feed: FeedId, since: i64) -> Result<u64, StoreError>;
    /// Whether a live item of one of `feeds` whose stamp has origin
    /// `origin` references the blob.
    async fn blob_written_by(
        &self,
        digest: &Digest,
        feeds: &[FeedId],
        origin: InstanceId,
    ) -> Result<bool, StoreError>;
    /// Drops tombstones last written before `before` (ms) and their change
    /// entries; returns how many. Raises the feed's horizon.
    async fn prune_tombstones(&self, feed: FeedId, before: i64) -> Result<u64, StoreError>;
    /// The highest change seq that has been pruned: a reader whose cursor
    /// is below it may have missed deletions and must compare in full.
    async fn horizon(&self, feed: FeedId) -> Result<i64, StoreError>;
}
