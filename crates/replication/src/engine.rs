//! The engine: one execution of an outgoing replication. Per feed pair, a
//! pull phase and/or a push phase as the mode says. Each phase reads
//! changes by cursor (or, after a reset, every entry), filters them, moves
//! only missing blobs (streamed, resumable, verified), applies the entries
//! with their original stamps, and saves the cursor only once what it
//! covers is applied — so an interrupted execution resumes and converges.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ferry_core::rfc3339;
use ferry_store::{Entry, FeedRecord, ReplicationRecord, now_millis};
use ferry_types::{Digest, FeedName, InstanceId, ItemKey};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::client::Remote;
use crate::config::{Communication, ReplicationConfig};
use crate::filter::Filter;
use crate::protocol::*;
use crate::{ReplError, Replicator};

const PAGE: usize = 500;
/// Deletions within this window count together against the delete guard.
const GUARD_WINDOW_MS: i64 = 3_600_000;

fn guard_key(phase: &str, local: &FeedRecord, remote: &FeedName) -> String {
    format!("guard:{phase}:{}:{remote}", local.name)
}
const BLOB_PARALLELISM: usize = 8;

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub added: u64,
    pub updated: u64,
    pub deleted: u64,
    pub skipped: u64,
    pub conflicts: u64,
    pub blobs: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FeedReport {
    pub local: FeedName,
    pub remote: FeedName,
    pub pulled: Counts,
    pub pushed: Counts,
}

#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    pub time: String,
    pub level: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub remote_instance: Option<InstanceId>,
    pub feeds: Vec<FeedReport>,
    pub needs_confirmation: bool,
    pub log: Vec<LogLine>,
}

/// Live counters of a running execution.
#[derive(Debug, Default)]
pub struct Progress {
    pub items: AtomicU64,
    /// Changes to go through, as known from the cursors at the start.
    pub items_total: AtomicU64,
    pub bytes: AtomicU64,
    pub started: AtomicU64,
}

/// How far a pulled feed is behind the other side.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Lag {
    pub changes: i64,
    pub seconds: f64,
}

/// Which way a cursor follows a feed pair.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Direction {
    Pull,
    Push,
}

/// The name a replication's cursor for one feed pair and direction is
/// stored under.
pub(crate) fn cursor_name(dir: Direction, local: &FeedName, remote: &FeedName) -> String {
    let dir = match dir {
        Direction::Pull => "pull",
        Direction::Push => "push",
    };
    format!("{dir}:{local}:{remote}")
}

pub(crate) struct Run<'a> {
    r: &'a Replicator,
    rec: &'a ReplicationRecord,
    cfg: &'a ReplicationConfig,
    remote: Remote,
    filter: Filter,
    remote_id: Option<InstanceId>,
    /// Plan only: read and compare, change nothing.
    dry: bool,
    /// Full comparison instead of cursors (repair).
    full: bool,
    confirm_deletes: bool,
    pub report: Report,
    progress: Arc<Progress>,
    rate: Option<Arc<crate::throttle::Rate>>,
    pub lags: Vec<(FeedName, Lag)>,
}

impl<'a> Run<'a> {
    pub fn new(
        r: &'a Replicator,
        rec: &'a ReplicationRecord,
        cfg: &'a ReplicationConfig,
        progress: Arc<Progress>,
    ) -> Result<Self, ReplError> {
        let Communication::Outgoing { url, token } = &cfg.communication else {
            return Err(ReplError::Invalid(format!(
                "replication {} is incoming: executions run on the outgoing instance",
                rec.name
            )));
        };
        Ok(Self {
            r,
            rec,
            cfg,
            remote: Remote::new(r.http().clone(), url, token),
            filter: Filter::new(&cfg.include, &cfg.exclude)?,
            remote_id: None,
            dry: false,
            full: false,
            confirm_deletes: false,
            report: Report::default(),
            progress,
            rate: crate::throttle::Rate::new(cfg.bandwidth_limit),
            lags: Vec::new(),
        })
    }

    /// The client of the other instance this run talks to.
    pub fn remote(&self) -> &Remote {
        &self.remote
    }

    pub fn dry_run(mut self) -> Self {
        self.dry = true;
        self
    }
    pub fn full(mut self, full: bool) -> Self {
        self.full = full;
        self
    }
    pub fn confirm_deletes(mut self, yes: bool) -> Self {
        self.confirm_deletes = yes;
        self
    }

    fn log(&mut self, level: &'static str, message: String) {
        match level {
            "error" => tracing::error!(target: "replication", replication = %self.rec.name, "{message}"),
            "warn" => tracing::warn!(target: "replication", replication = %self.rec.name, "{message}"),
            _ => tracing::info!(target: "replication", replication = %self.rec.name, "{message}"),
        }
        self.report.log.push(LogLine {
            time: rfc3339(now_millis()),
            level,
            message,
        });
    }

    pub async fn handshake(&mut self) -> Result<HandshakeResponse, ReplError> {
        let mut feeds = Vec::new();
        for p in &self.cfg.feeds {
            let local = self.r.ferry().feed(&p.local).await?;
            feeds.push(WireFeed {
                outgoing: p.local.clone(),
                incoming: p.remote.clone(),
                feed_type: local.feed_type,
            });
        }
        let req = HandshakeRequest {
            protocol_versions: SUPPORTED_VERSIONS.to_vec(),
            instance_id: self.r.ferry().instance_id(),
            ferry_version: env!("CARGO_PKG_VERSION").into(),
            mode: self.cfg.mode,
            feeds,
        };
        let resp = self.remote.handshake(&req).await?;
        self.remote_id = Some(resp.instance_id);
        self.report.remote_instance = Some(resp.instance_id);
        Ok(resp)
    }

    pub async fn execute(&mut self) -> Result<(), ReplError> {
        let hs = self.handshake().await?;
        let verb = if self.dry {
            "planning against"
        } else {
            "connected to"
        };
        self.log(
            "info",
            format!(
                "{verb} instance {} (replication {}, protocol v{})",
                hs.instance_id, hs.replication, hs.protocol_version
            ),
        );
        let flows = self.cfg.mode.flows;
        let mut first_error = None;
        for pair in self.cfg.feeds.clone() {
            let local = self.r.ferry().feed(&pair.local).await?;
            let mut fr = FeedReport {
                local: pair.local.clone(),
                remote: pair.remote.clone(),
                pulled: Counts::default(),
                pushed: Counts::default(),
            };
            let mut result = Ok(());
            if flows.pulls() {
                result = self.pull_feed(&local, &pair.remote, &mut fr).await;
            }
            if result.is_ok() && flows.pushes() {
                result = self.push_feed(&local, &pair.remote, &mut fr).await;
            }
            if let Err(e) = result {
                self.log("error", format!("feed {}: {e}", pair.local));
                first_error.get_or_insert(e);
            }
            let (p, q) = (&fr.pulled, &fr.pushed);
            let summary = format!(
                "feed {} ⇄ {}: pulled +{} ~{} -{} ({} skipped, {} conflicts, {} bytes); pushed +{} ~{} -{} ({} skipped, {} conflicts, {} bytes)",
                fr.local,
                fr.remote,
                p.added,
                p.updated,
                p.deleted,
                p.skipped,
                p.conflicts,
                p.bytes,
                q.added,
                q.updated,
                q.deleted,
                q.skipped,
                q.conflicts,
                q.bytes
            );
            self.log("info", summary);
            self.report.feeds.push(fr);
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    // ---------------------------------------------------------------- pull

    async fn pull_feed_inner(
        &mut self,
        local: &FeedRecord,
        remote: &FeedName,
        fr: &mut FeedReport,
    ) -> Result<(), ReplError> {
        let cursor_name = cursor_name(Direction::Pull, &local.name, remote);
        let mut since = if self.full {
            0
        } else {
            self.r.store().cursor(self.rec.id, &cursor_name).await?
        };
        let mut page = self.remote.changes(remote, since, PAGE, 0).await?;
        if page.reset || self.full {
            if page.reset {
                self.log("warn", format!("feed {}: cursor {since} is older than the other side's tombstone horizon; comparing in full", local.name));
            }
            let last = page.last_seq;
            self.full_pull(local, remote, fr).await?;
            if !self.dry {
                self.r.store().set_cursor(self.rec.id, &cursor_name, last).await?;
            }
            self.lags.push((local.name.clone(), Lag::default()));
            return Ok(());
        }
        self.progress
            .items_total
            .fetch_add((page.last_seq - since).max(0) as u64, Ordering::Relaxed);
        let more_pages = page.next < page.last_seq;
        if self.cfg.mode.flows.delete_local
            && !self.confirm_deletes
            && (more_pages || page.entries.iter().any(|e| e.deleted))
        {
            let n = self
                .count_pull_deletions(local, remote, since, page.clone())
                .await?;
            let size = self.r.store().live_count(local.id).await?;
            let key = guard_key("pull", local, remote);
            if n > 0 && self.guard_trips(local, &key, n, size).await? {
                // A plan goes on counting, to show the deletions it would stop for.
                if !self.dry {
                    return Ok(());
                }
            }
        }
        loop {
            if !page.entries.is_empty() {
                self.pull_entries(local, remote, &page.entries, fr).await?;
            }
            let advanced = page.next > since;
            since = page.next.max(since);
            if !self.dry && advanced {
                self.r
                    .store()
                    .set_cursor(self.rec.id, &cursor_name, since)
                    .await?;
            }
            if since >= page.last_seq || !advanced {
                let lag = Lag {
                    changes: (page.last_seq - since).max(0),
                    seconds: 0.0,
                };
                self.lags.push((local.name.clone(), lag));
                return Ok(());
            }
            page = self.remote.changes(remote, since, PAGE, 0).await?;
            if page.reset {
                return Err(ReplError::Conflict(format!(
                    "the other side pruned tombstones during the execution of feed {}; the next execution compares in full",
                    local.name
                )));
            }
        }
    }

    /// Whether deleting `pending` more items of a feed of `size` would pass
    /// the guard, counting what this replication deleted there in the last
    /// hour (so deletions arriving a few at a time cannot slip through).
    async fn guard_trips(
        &mut self,
        local: &FeedRecord,
        key: &str,
        pending: u64,
        size: u64,
    ) -> Result<bool, ReplError> {
        let recent = self.recent_deletions(key).await?;
        let g = self.cfg.delete_guard;
        if !g.trips(pending + recent, size + recent) {
            return Ok(false);
        }
        self.report.needs_confirmation = true;
        let earlier = if recent > 0 {
            format!(" ({recent} deleted in the last hour already)")
        } else {
            String::new()
        };
        self.log(
            "warn",
            format!(
                "feed {}: stopped before deleting {pending} of {size} items{earlier}; the limit is over {:.0}% and over {} items, and nothing more was deleted. Confirm with `ferry replication run {} --confirm-deletes`",
                local.name,
                g.max_share * 100.0,
                g.max_items,
                self.rec.name
            ),
        );
        Ok(true)
    }

    async fn recent_deletions(&self, key: &str) -> Result<u64, ReplError> {
        let store = self.r.store();
        let start = store.cursor(self.rec.id, &format!("{key}:since")).await?;
        if now_millis() - start > GUARD_WINDOW_MS {
            return Ok(0);
        }
        Ok(store.cursor(self.rec.id, &format!("{key}:count")).await?.max(0) as u64)
    }

    /// Adds to the deletions counted against the guard (or, after a
    /// confirmation, starts counting afresh).
    async fn record_deletions(&self, key: &str, n: u64) -> Result<(), ReplError> {
        if self.dry || (n == 0 && !self.confirm_deletes) {
            return Ok(());
        }
        let store = self.r.store();
        let (since_key, count_key) = (format!("{key}:since"), format!("{key}:count"));
        let recent = if self.confirm_deletes {
            0
        } else {
            self.recent_deletions(key).await?
        };
        if recent == 0 {
            store.set_cursor(self.rec.id, &since_key, now_millis()).await?;
        }
        let total = if self.confirm_deletes { 0 } else { recent + n };
        store.set_cursor(self.rec.id, &count_key, total as i64).await?;
        Ok(())
    }

    async fn pull_feed(
        &mut self,
        local: &FeedRecord,
        remote: &FeedName,
        fr: &mut FeedReport,
    ) -> Result<(), ReplError> {
        let before = fr.pulled.deleted;
        let result = self.pull_feed_inner(local, remote, fr).await;
        self.record_deletions(&guard_key("pull", local, remote), fr.pulled.deleted - before)
            .await?;
        result
    }

    async fn push_feed(
        &mut self,
        local: &FeedRecord,
        remote: &FeedName,
        fr: &mut FeedReport,
    ) -> Result<(), ReplError> {
        let before = fr.pushed.deleted;
        let result = self.push_feed_inner(local, remote, fr).await;
        self.record_deletions(&guard_key("push", local, remote), fr.pushed.deleted - before)
            .await?;
        result
    }

    async fn count_pull_deletions(
        &mut self,
        local: &FeedRecord,
        remote: &FeedName,
        mut since: i64,
        mut page: ChangesPage,
    ) -> Result<u64, ReplError> {
        let mut n = 0;
        loop {
            let tombs: Vec<&WireEntry> = page
                .entries
                .iter()
                .filter(|e| e.deleted && self.filter.admits(local.feed_type, &e.key))
                .collect();
            if !tombs.is_empty() {
                let keys: Vec<ItemKey> = tombs.iter().map(|e| e.key.clone()).collect();
                let locals = self.r.store().entries_for(local.id, &keys).await?;
                for t in tombs {
                    if locals
                        .iter()
                        .any(|l| l.key == t.key && l.live.is_some() && l.stamp < t.stamp)
                    {
                        n += 1;
                    }
                }
            }
            if page.next <= since || page.next >= page.last_seq {
                return Ok(n);
            }
            since = page.next;
            page = self.remote.changes(remote, since, PAGE, 0).await?;
        }
    }

    async fn full_pull(
        &mut self,
        local: &FeedRecord,
        remote: &FeedName,
        fr: &mut FeedReport,
    ) -> Result<(), ReplError> {
        let mut after: Option<ItemKey> = None;
        let mut seen: HashSet<ItemKey> = HashSet::new();
        loop {
            let page = self.remote.entries(remote, after.as_ref(), PAGE).await?;
            seen.extend(page.entries.iter().map(|e| e.key.clone()));
            if !page.entries.is_empty() {
                self.pull_entries(local, remote, &page.entries, fr).await?;
            }
            match page.next_after {
                Some(k) => after = Some(k),
                None => break,
            }
        }
        self.pull_expired_deletions(local, &seen, fr).await
    }

    /// After a full comparison: items that came here from elsewhere and that
    /// the other side no longer has at all — neither the item nor its
    /// tombstone, which it has pruned — may have been deleted there. They
    /// are reported, and deleted only when an operator confirms. Items
    /// written on this instance are never deleted this way.
    async fn pull_expired_deletions(
        &mut self,
        local: &FeedRecord,
        seen: &HashSet<ItemKey>,
        fr: &mut FeedReport,
    ) -> Result<(), ReplError> {
        let f = self.cfg.mode.flows;
        if !(f.pull_missing && f.delete_local) {
            return Ok(());
        }
        let me = self.r.ferry().instance_id();
        let mut gone = Vec::new();
        let mut after: Option<ItemKey> = None;
        loop {
            let page = self.r.store().entries(local.id, after.as_ref(), 2000).await?;
            let done = page.len() < 2000;
            after = page.last().map(|e| e.key.clone());
            for e in page {
                if e.live.is_some()
                    && e.stamp.origin != me
                    && !seen.contains(&e.key)
                    && self.filter.admits(local.feed_type, &e.key)
                {
                    gone.push(e);
                }
            }
            if done {
                break;
            }
        }
        if gone.is_empty() {
            return Ok(());
        }
        // Absent is ambiguous — deleted there with the tombstone expired, or
        // never there (a feed that also pulls from another instance) — so
        // these deletions always wait for an operator's confirmation.
        if !self.confirm_deletes {
            self.report.needs_confirmation = true;
            self.log(
                "warn",
                format!(
                    "feed {}: {} items that came from elsewhere are absent on the other side, whose tombstones have expired; nothing was deleted. If they were deleted there, run `ferry replication run {} --full --confirm-deletes`",
                    local.name,
                    gone.len(),
                    self.rec.name
                ),
            );
            return Ok(());
        }
        self.log(
            "warn",
            format!(
                "feed {}: deleting {} items absent on the other side (confirmed)",
                local.name,
                gone.len()
            ),
        );
        if self.dry {
            fr.pulled.deleted += gone.len() as u64;
            return Ok(());
        }
        // A tombstone just after the item's own stamp: any newer write wins over it.
        let changes: Vec<ferry_store::Change> = gone
            .iter()
            .map(|e| ferry_store::Change {
                key: e.key.clone(),
                stamp: ferry_types::Stamp {
                    time: ferry_types::Hlc(e.stamp.time.0 + 1),
                    origin: e.stamp.origin,
                },
                op: ferry_store::ChangeOp::Delete,
            })
            .collect();
        let outcomes = self.r.ferry().apply(local, changes).await?;
        fr.pulled.deleted += outcomes
            .iter()
            .filter(|o| matches!(o, ferry_store::WriteOutcome::Applied { .. }))
            .count() as u64;
        Ok(())
    }

    fn wanted_from_remote(&self, local: &FeedRecord, e: &WireEntry) -> bool {
        let f = self.cfg.mode.flows;
        self.filter.admits(local.feed_type, &e.key) && if e.deleted { f.delete_local } else { f.pull_missing }
    }

    async fn pull_entries(
        &mut self,
        local: &FeedRecord,
        remote: &FeedName,
        entries: &[WireEntry],
        fr: &mut FeedReport,
    ) -> Result<(), ReplError> {
        let admitted: Vec<&WireEntry> = entries
            .iter()
            .filter(|e| self.wanted_from_remote(local, e))
            .collect();
        fr.pulled.skipped += (entries.len() - admitted.len()) as u64;
        let keys: Vec<ItemKey> = admitted.iter().map(|e| e.key.clone()).collect();
        let locals: HashMap<ItemKey, Entry> = self
            .r
            .store()
            .entries_for(local.id, &keys)
            .await?
            .into_iter()
            .map(|e| (e.key.clone(), e))
            .collect();
        let mut todo: Vec<&WireEntry> = Vec::new();
        for e in admitted {
            match locals.get(&e.key) {
                Some(l) if l.stamp == e.stamp => fr.pulled.skipped += 1,
                Some(l) if l.stamp > e.stamp => {
                    if l.stamp.origin != e.stamp.origin {
                        fr.pulled.conflicts += 1;
                        self.log("warn", format!(
                            "conflict on {} in feed {}: this instance's version ({}) is newer than the other's ({}); keeping this one",
                            e.key, local.name, l.stamp, e.stamp
                        ));
                    } else {
                        fr.pulled.skipped += 1;
                    }
                }
                _ => todo.push(e),
            }
        }
        if self.dry {
            for e in &todo {
                let live_here = locals.get(&e.key).is_some_and(|l| l.live.is_some());
                count_planned(&mut fr.pulled, e, live_here);
            }
            return Ok(());
        }
        // Blobs first: an item becomes visible only with all its blobs.
        let mut need: Vec<Digest> = Vec::new();
        let mut seen = HashSet::new();
        for e in &todo {
            for d in &e.blobs {
                if seen.insert(*d) && !self.r.has_blob(d).await? {
                    need.push(*d);
                }
            }
        }
        let t_fetch = std::time::Instant::now();
        let mut gone: HashSet<Digest> = HashSet::new();
        let mut fetched: Vec<(u64, tokio::task::JoinHandle<Result<(), ferry_store::StoreError>>)> =
            Vec::with_capacity(need.len());
        {
            let mut pending = futures::stream::FuturesUnordered::new();
            let mut queue = need.iter();
            loop {
                while pending.len() < BLOB_PARALLELISM {
                    let Some(d) = queue.next() else { break };
                    let fetch = self.fetch_blob(*d);
                    pending.push(async move { (*d, fetch.await) });
                }
                match pending.next().await {
                    Some((_, Ok(r))) => fetched.push(r),
                    Some((d, Err(ReplError::Remote { status: 404, .. }))) => {
                        gone.insert(d);
                    }
                    Some((_, Err(e))) => return Err(e),
                    None => break,
                }
            }
        }
        if !gone.is_empty() {
            todo = self
                .drop_changed_meanwhile(local, remote, todo, &gone, fr)
                .await?;
        }
        let fetch_ms = t_fetch.elapsed().as_millis();
        // Durable before any item that needs them is applied.
        let mut bytes = 0;
        for (n, flush) in &mut fetched {
            bytes += *n;
            flush.await.map_err(|e| ReplError::Transport(e.to_string()))??;
        }
        let flush_ms = t_fetch.elapsed().as_millis() - fetch_ms;
        let t_apply = std::time::Instant::now();
        fr.pulled.blobs += fetched.len() as u64;
        fr.pulled.bytes += bytes;

        let changes = todo.iter().map(|e| e.to_change()).collect();
        let outcomes = self.r.ferry().apply(local, changes).await?;
        for (e, o) in todo.iter().zip(outcomes) {
            let live_here = locals.get(&e.key).is_some_and(|l| l.live.is_some());
            match WireOutcome::from(o) {
                WireOutcome::Applied => count_planned(&mut fr.pulled, e, live_here),
                WireOutcome::AlreadyApplied => fr.pulled.skipped += 1,
                WireOutcome::Superseded { current } => {
                    if current.origin != e.stamp.origin {
                        fr.pulled.conflicts += 1;
                        self.log("warn", format!(
                            "conflict on {} in feed {}: a local write ({current}) won over the other's ({})",
                            e.key, local.name, e.stamp
                        ));
                    } else {
                        fr.pulled.skipped += 1;
                    }
                }
            }
        }
        if self.cfg.carry_downloads {
            let mut counts = Vec::new();
            for e in todo.iter().filter(|e| !e.deleted) {
                let here = locals
                    .get(&e.key)
                    .and_then(|l| l.live.as_ref())
                    .map_or(0, |l| l.downloads);
                if e.downloads > here {
                    counts.push((e.key.clone(), e.downloads - here));
                }
            }
            if !counts.is_empty() {
                self.r.ferry().metadata().add_downloads(local.id, &counts).await?;
            }
        }
        self.progress
            .items
            .fetch_add(todo.len() as u64, Ordering::Relaxed);
        tracing::debug!(target: "replication", replication = %self.rec.name, feed = %local.name,
            items = todo.len(), blobs = fetched.len(), bytes, fetch_ms, flush_ms,
            apply_ms = t_apply.elapsed().as_millis(), "pulled a page");
        Ok(())
    }

    /// Fetches one blob, resuming a transfer that broke earlier; returns the
    /// bytes that crossed the wire.
    async fn fetch_blob(
        &self,
        d: Digest,
    ) -> Result<(u64, tokio::task::JoinHandle<Result<(), ferry_store::StoreError>>), ReplError> {
        let limit = self.r.ferry().config().max_upload_bytes.max(u64::MAX / 2);
        let mut attempt = 0;
        loop {
            let offset = self.r.ferry().blob_store().partial_len(&d).await?;
            let progress = self.progress.clone();
            let received = Arc::new(AtomicU64::new(0));
            let counter = received.clone();
            let result = async {
                let stream = self.remote.fetch_blob(&d, offset).await?;
                let counted = stream.inspect_ok(move |chunk| {
                    progress.bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                });
                let throttled = crate::throttle::limit(Box::pin(counted), self.rate.clone());
                let staged = self
                    .r
                    .ferry()
                    .blob_store()
                    .stage_resume(&d, throttled, limit)
                    .await?;
                self.r.ferry().commit_blob(staged).await?;
                // Flushed to disk in the background, overlapping the next
                // transfers; awaited before any item needs the blob.
                let store = self.r.ferry().blob_store().clone();
                Ok::<_, ReplError>(tokio::spawn(async move { store.sync(&[d]).await }))
            }
            .await;
            match result {
                Ok(flush) => {
                    let n = received.load(Ordering::Relaxed);
                    metrics::counter!("ferry_replication_bytes_total", "replication" => self.rec.name.clone(), "direction" => "pull")
                        .increment(n);
                    return Ok((n, flush));
                }
                Err(e @ (ReplError::Transport(_) | ReplError::Core(ferry_core::CoreError::Internal(_))))
                    if attempt < 3 =>
                {
                    attempt += 1;
                    tracing::warn!(target: "replication", blob = %d, attempt, error = %e, "blob transfer broke; resuming");
                    tokio::time::sleep(std::time::Duration::from_millis(200 * attempt)).await;
                }
                // A resumed transfer that does not verify was discarded by
                // the store; fetch the blob once more from its first byte.
                Err(ReplError::Core(ferry_core::CoreError::Invalid(m))) if offset > 0 && attempt < 3 => {
                    attempt += 1;
                    tracing::warn!(target: "replication", blob = %d, error = %m, "resumed transfer did not verify; starting over");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The other side no longer serves some blobs that entries of this page
    /// need: normally because those items changed or went away there after
    /// the page was listed. Such entries are left out (their newer change
    /// comes after this page's cursor, so nothing is lost); an entry whose
    /// item is unchanged there means the blob is missing on the other side,
    /// and the execution fails.
    async fn drop_changed_meanwhile<'e>(
        &mut self,
        local: &FeedRecord,
        remote: &FeedName,
        todo: Vec<&'e WireEntry>,
        gone: &HashSet<Digest>,
        fr: &mut FeedReport,
    ) -> Result<Vec<&'e WireEntry>, ReplError> {
        let (hit, kept): (Vec<&WireEntry>, Vec<&WireEntry>) = todo
            .into_iter()
            .partition(|e| e.blobs.iter().any(|d| gone.contains(d)));
        let now = self
            .remote
            .stamps(remote, hit.iter().map(|e| e.key.clone()).collect())
            .await?;
        for (e, current) in hit.iter().zip(now.stamps) {
            if current.is_some_and(|(stamp, _)| stamp == e.stamp) {
                let d = e.blobs.iter().find(|d| gone.contains(d)).copied();
                return Err(ReplError::Remote {
                    status: 404,
                    message: format!(
                        "item {} of feed {remote} needs blob {} that the other instance does not have",
                        e.key,
                        d.map(|d| d.to_string()).unwrap_or_default()
                    ),
                });
            }
            fr.pulled.skipped += 1;
            self.log(
                "info",
                format!(
                    "{} in feed {} changed on the other side while it was being copied; its newer version follows",
                    e.key, local.name
                ),
            );
        }
        Ok(kept)
    }

    // ---------------------------------------------------------------- push

    async fn push_feed_inner(
        &mut self,
        local: &FeedRecord,
        remote: &FeedName,
        fr: &mut FeedReport,
    ) -> Result<(), ReplError> {
        let cursor_name = cursor_name(Direction::Push, &local.name, remote);
        let meta = self.r.ferry().metadata().clone();
        let mut since = if self.full {
            0
        } else {
            self.r.store().cursor(self.rec.id, &cursor_name).await?
        };
        let horizon = self.r.store().horizon(local.id).await?;
        if self.full || since < horizon {
            let last = meta.last_seq(local.id).await?;
            let mut after: Option<ItemKey> = None;
            loop {
                let page = self.r.store().entries(local.id, after.as_ref(), PAGE).await?;
                let done = page.len() < PAGE;
                after = page.last().map(|e| e.key.clone());
                let wire: Vec<WireEntry> = page.into_iter().map(WireEntry::from).collect();
                self.push_entries(local, remote, wire, fr).await?;
                if done {
                    break;
                }
            }
            if !self.dry {
                self.r.store().set_cursor(self.rec.id, &cursor_name, last).await?;
            }
            return Ok(());
        }
        let pending = meta.last_seq(local.id).await? - since;
        self.progress
            .items_total
            .fetch_add(pending.max(0) as u64, Ordering::Relaxed);
        let mut guard_checked = false;
        loop {
            let changes = meta.changes_since(local.id, since, PAGE).await?;
            let Some(last) = changes.last().map(|c| c.seq) else {
                return Ok(());
            };
            let mut seen = HashSet::new();
            let keys: Vec<ItemKey> = changes
                .into_iter()
                .filter(|c| seen.insert(c.key.clone()))
                .map(|c| c.key)
                .collect();
            let entries: Vec<WireEntry> = self
                .r
                .store()
                .entries_for(local.id, &keys)
                .await?
                .into_iter()
                .map(WireEntry::from)
                .collect();
            if !guard_checked
                && self.cfg.mode.flows.delete_remote
                && !self.confirm_deletes
                && entries.iter().any(|e| e.deleted)
            {
                guard_checked = true;
                let n = self.count_push_deletions(local, since).await?;
                let size = self.remote.digest(remote, &[], &[]).await?.items;
                let key = guard_key("push", local, remote);
                if n > 0 && self.guard_trips(local, &key, n, size).await? && !self.dry {
                    return Ok(());
                }
            }
            self.push_entries(local, remote, entries, fr).await?;
            since = last;
            if !self.dry {
                self.r
                    .store()
                    .set_cursor(self.rec.id, &cursor_name, since)
                    .await?;
            }
        }
    }

    async fn count_push_deletions(&self, local: &FeedRecord, mut since: i64) -> Result<u64, ReplError> {
        let meta = self.r.ferry().metadata().clone();
        let mut keys = HashSet::new();
        loop {
            let changes = meta.changes_since(local.id, since, 5000).await?;
            let Some(last) = changes.last().map(|c| c.seq) else {
                break;
            };
            for c in changes {
                if c.kind == ferry_store::ChangeKind::Delete && self.filter.admits(local.feed_type, &c.key) {
                    keys.insert(c.key);
                } else {
                    keys.remove(&c.key);
                }
            }
            since = last;
        }
        Ok(keys.len() as u64)
    }

    fn wanted_by_remote(&self, local: &FeedRecord, e: &WireEntry) -> bool {
        let f = self.cfg.mode.flows;
        // What the other instance wrote, it has (or has something newer).
        Some(e.stamp.origin) != self.remote_id
            && self.filter.admits(local.feed_type, &e.key)
            && if e.deleted {
                f.delete_remote
            } else {
                f.push_missing
            }
    }

    async fn push_entries(
        &mut self,
        local: &FeedRecord,
        remote: &FeedName,
        entries: Vec<WireEntry>,
        fr: &mut FeedReport,
    ) -> Result<(), ReplError> {
        let total = entries.len();
        let admitted: Vec<WireEntry> = entries
            .into_iter()
            .filter(|e| self.wanted_by_remote(local, e))
            .collect();
        fr.pushed.skipped += (total - admitted.len()) as u64;
        if admitted.is_empty() {
            return Ok(());
        }
        let theirs = self
            .remote
            .stamps(remote, admitted.iter().map(|e| e.key.clone()).collect())
            .await?
            .stamps;
        let mut todo = Vec::new();
        let mut live_there = Vec::new();
        for (e, t) in admitted.into_iter().zip(theirs) {
            match t {
                Some((s, _)) if s == e.stamp => fr.pushed.skipped += 1,
                Some((s, _)) if s > e.stamp => {
                    if s.origin != e.stamp.origin {
                        fr.pushed.conflicts += 1;
                        self.log("warn", format!(
                            "conflict on {} in feed {}: the other instance's version ({s}) is newer than this one's ({}); keeping theirs",
                            e.key, local.name, e.stamp
                        ));
                    } else {
                        fr.pushed.skipped += 1;
                    }
                }
                other => {
                    live_there.push(matches!(other, Some((_, false))));
                    todo.push(e);
                }
            }
        }
        if self.dry {
            for (e, live) in todo.iter().zip(&live_there) {
                count_planned(&mut fr.pushed, e, *live);
            }
            return Ok(());
        }
        if todo.is_empty() {
            return Ok(());
        }
        let mut digests: Vec<Digest> = todo.iter().flat_map(|e| e.blobs.iter().copied()).collect();
        digests.sort();
        digests.dedup();
        let missing = if digests.is_empty() {
            Vec::new()
        } else {
            self.remote.missing(digests).await?
        };
        for d in &missing {
            let size = self.r.ferry().blob_size(d).await?.ok_or_else(|| {
                ReplError::Core(ferry_core::CoreError::Internal(format!(
                    "blob {d} missing locally"
                )))
            })?;
            let body = self.r.ferry().read_blob(d, None).await?.stream;
            let progress = self.progress.clone();
            let counted = body.inspect_ok(move |c| {
                progress.bytes.fetch_add(c.len() as u64, Ordering::Relaxed);
            });
            let throttled = crate::throttle::limit(Box::pin(counted), self.rate.clone());
            self.remote.put_blob(d, throttled, size).await?;
            fr.pushed.blobs += 1;
            fr.pushed.bytes += size;
            metrics::counter!("ferry_replication_bytes_total", "replication" => self.rec.name.clone(), "direction" => "push")
                .increment(size);
        }
        let n = todo.len() as u64;
        let outcomes = self.remote.apply(remote, todo.clone()).await?.outcomes;
        for ((e, live), o) in todo.iter().zip(live_there).zip(outcomes) {
            match o {
                WireOutcome::Applied => count_planned(&mut fr.pushed, e, live),
                WireOutcome::AlreadyApplied => fr.pushed.skipped += 1,
                WireOutcome::Superseded { current } => {
                    if current.origin != e.stamp.origin {
                        fr.pushed.conflicts += 1;
                        self.log(
                            "warn",
                            format!(
                                "conflict on {} in feed {}: the other instance's write ({current}) won",
                                e.key, local.name
                            ),
                        );
                    } else {
                        fr.pushed.skipped += 1;
                    }
                }
            }
        }
        self.progress.items.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }
}

fn count_planned(c: &mut Counts, e: &WireEntry, live_on_target: bool) {
    match (e.deleted, live_on_target) {
        (true, true) => c.deleted += 1,
        (true, false) => c.skipped += 1,
        (false, true) => c.updated += 1,
        (false, false) => c.added += 1,
    }
}
