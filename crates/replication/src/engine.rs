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
use ferry_store::{FeedRecord, ReplicationRecord, now_millis};
use ferry_types::{Digest, FeedName, InstanceId, ItemKey, Stamp};
use serde::Serialize;

use crate::client::Remote;
use crate::config::{Communication, ReplicationConfig};
use crate::filter::Filter;
use crate::protocol::*;
use crate::{ReplError, Replicator};

mod fetch;
mod guard;
mod pull;
mod push;
mod send;
mod stuck;

pub(crate) const PAGE: usize = 500;
/// Deletions within this window count together against the delete guard.
const GUARD_WINDOW_MS: i64 = 3_600_000;

fn guard_key(phase: &str, local: &FeedRecord, remote: &FeedName) -> String {
    format!("guard:{phase}:{}:{remote}", local.name)
}
const BLOB_PARALLELISM: usize = 8;
/// The cursor that keeps the other side's filter fingerprint (see
/// [`Run::follow_remote_filter`]).
const REMOTE_FILTER: &str = "remote-filter";

/// What one phase (pull or push) of one feed pair did, in items, blobs and
/// bytes. Entries the replication does not carry at all (left out by its
/// filters or its mode, or the other side's own writes coming back) are
/// not counted.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub added: u64,
    pub updated: u64,
    pub deleted: u64,
    /// Compared and found already there (the same version, or a version
    /// from the same origin that is newer).
    pub skipped: u64,
    /// The two sides had different versions from different origins; the
    /// later stamp won.
    pub conflicts: u64,
    pub blobs: u64,
    pub bytes: u64,
    /// Of `bytes`, those fetched from blob sources instead of the other
    /// side (pulling).
    #[serde(skip_serializing_if = "is_zero")]
    pub source_bytes: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Serialize)]
pub struct FeedReport {
    pub local: FeedName,
    pub remote: FeedName,
    /// Whether the replication's mode pulls into this feed pair (else
    /// `pulled` stays zero and is not shown).
    pub pulls: bool,
    /// Whether it pushes from this feed pair (else `pushed` stays zero and
    /// is not shown).
    pub pushes: bool,
    pub pulled: Counts,
    pub pushed: Counts,
    /// A plan only ([`crate::Replicator::plan`]): the items it looked at,
    /// what a run would do with each and, for one that would not move or
    /// would be held, why. The first [`PLAN_ITEMS`], with the total.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanItems>,
}

/// How many items a plan lists per feed pair (the rest are counted).
pub const PLAN_ITEMS: usize = 500;

/// The items a plan lists for one feed pair (see [`FeedReport::plan`]).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PlanItems {
    pub items: Vec<PlannedItem>,
    /// How many items the plan looked at (more than `items` holds past
    /// [`PLAN_ITEMS`]).
    pub total: u64,
}

/// One item of a plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedItem {
    pub key: ItemKey,
    /// "pull" or "push".
    pub direction: &'static str,
    /// "copy", "update", "delete", or "none" when it would not move.
    pub action: &'static str,
    /// Why it would not move, or why a deletion would be held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// For an item a run would copy or update: its size (the bytes of its
    /// blobs; what is already on the receiving side included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

impl FeedReport {
    /// Notes one item of a plan (nothing outside a plan: `dry` false).
    fn plan_item(
        &mut self,
        dry: bool,
        direction: &'static str,
        key: &ItemKey,
        action: &'static str,
        why: Option<String>,
    ) {
        if !dry {
            return;
        }
        let plan = self.plan.get_or_insert_with(PlanItems::default);
        plan.total += 1;
        if plan.items.len() < PLAN_ITEMS {
            plan.items.push(PlannedItem {
                key: key.clone(),
                direction,
                action,
                why,
                size: None,
            });
        }
    }
}

/// One line of an execution's log: `time` (RFC 3339, UTC), `level`
/// (`info`, `warn` or `error`) and what happened.
#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    pub time: String,
    pub level: &'static str,
    pub message: String,
}

impl LogLine {
    /// A line as saved in a report (`{"time", "level", "message"}`); an
    /// unknown level reads as `info`. None for anything else.
    pub fn from_saved(v: &serde_json::Value) -> Option<Self> {
        let level = match v.get("level")?.as_str()? {
            "error" => "error",
            "warn" => "warn",
            _ => "info",
        };
        Some(Self {
            time: v.get("time")?.as_str()?.to_owned(),
            level,
            message: v.get("message")?.as_str()?.to_owned(),
        })
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub remote_instance: Option<InstanceId>,
    pub feeds: Vec<FeedReport>,
    pub needs_confirmation: bool,
    /// Items that could not be copied in this execution; each is retried
    /// by the next one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stuck: Vec<StuckItem>,
    pub log: Vec<LogLine>,
    /// Set when the execution was stopped or failed before the end: what
    /// it had gone through by then, by its live counters, the feed pair
    /// it did not finish included (which [`Report::feeds`] lacks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moved: Option<Moved>,
}

/// What an execution that did not finish had gone through
/// ([`Report::moved`]): changes (applied or not) and bytes moved.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Moved {
    pub changes: u64,
    pub bytes: u64,
}

/// An item an execution could not copy, and why (its blob is missing or
/// damaged on the other side, or its stamp is too far ahead of this
/// instance's clock). Kept and retried until it is copied or gone.
#[derive(Debug, Clone, Serialize)]
pub struct StuckItem {
    pub feed: FeedName,
    pub key: ItemKey,
    pub reason: String,
    /// When it was first found stuck (RFC 3339).
    pub since: String,
    /// Held back by the other side's include/exclude filter
    /// ([`OUTSIDE_THEIR_FILTER`]), not by a fault: retried like the
    /// others, but the execution does not fail for it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
}

/// Why an item the other side's include/exclude filter refuses is not
/// sent (a [`StuckItem`] that is `held`).
pub(crate) const OUTSIDE_THEIR_FILTER: &str =
    "outside the other instance's include/exclude filter for this replication: sent once it admits it";

/// Live counters of a running execution.
#[derive(Debug, Default)]
pub struct Progress {
    pub items: AtomicU64,
    /// Changes to go through, as known from the cursors at the start.
    pub items_total: AtomicU64,
    /// Bytes moved (from the peer and blob sources, or pushed).
    pub bytes: AtomicU64,
    /// Bytes of the backlog: what the other side (pulling) or this side
    /// (pushing) counted at the start of each feed pair as referenced by
    /// live items changed after the cursor; 0 while unknown (a peer that
    /// does not count).
    pub bytes_total: AtomicU64,
    /// Of `bytes_total`, bytes that needed no transfer: blobs already on
    /// the receiving side, shared between items, or of items skipped.
    pub bytes_skipped: AtomicU64,
    pub started: AtomicU64,
    /// Signalled by [`crate::Replicator::stop_execution`]: the execution
    /// ends at its next await point.
    pub stop: tokio::sync::Notify,
    /// Who asked it to stop (for the log line).
    pub stopped_by: std::sync::Mutex<Option<String>>,
    /// The execution's log so far (a copy of [`Report::log`] that the
    /// node holding the lease saves while it runs).
    pub journal: std::sync::Mutex<Vec<LogLine>>,
}

impl Progress {
    /// Adds `line` to [`Progress::journal`].
    pub fn note(&self, line: &LogLine) {
        if let Ok(mut j) = self.journal.lock() {
            j.push(line.clone());
        }
    }

    /// What the execution reported so far, as saved while it runs:
    /// `{"log": [LogLine…], "running": {"items": N, "bytes": N}}`.
    pub fn snapshot(&self) -> serde_json::Value {
        let log = self.journal.lock().map(|j| j.clone()).unwrap_or_default();
        serde_json::json!({
            "log": log,
            "running": {
                "items": self.items.load(Ordering::Relaxed),
                "bytes": self.bytes.load(Ordering::Relaxed),
            },
        })
    }
    /// Bytes of the backlog still to move: [`Progress::bytes_total`] less
    /// what moved or needed no transfer; `None` while the total is unknown.
    /// Past the count (bytes the backlog did not include move: an item
    /// left over by an earlier execution, retried behind the cursor, or a
    /// blob fetched again after a cut) it is unknown again, not zero.
    pub fn bytes_remaining(&self) -> Option<u64> {
        let total = self.bytes_total.load(Ordering::Relaxed);
        let counted = self
            .bytes
            .load(Ordering::Relaxed)
            .saturating_add(self.bytes_skipped.load(Ordering::Relaxed));
        (total > 0 && counted <= total).then(|| total - counted)
    }
}

/// A pulled page's items waiting for their blobs: blob → the items (by
/// index) that need it, and how many blobs each still waits for.
#[derive(Debug, Default)]
pub(crate) struct PageTally {
    waiting: HashMap<Digest, Vec<usize>>,
    left: Vec<usize>,
    /// Items counted as gone through so far.
    pub counted: u64,
}

impl PageTally {
    /// The tally of items each needing `needs[i]` (blobs not stored yet);
    /// those needing none count at once (returned in `counted`).
    pub(crate) fn new(needs: Vec<Vec<Digest>>) -> Self {
        let mut t = PageTally::default();
        for (i, blobs) in needs.into_iter().enumerate() {
            let mut n = 0;
            for d in blobs {
                let items = t.waiting.entry(d).or_default();
                if items.last() != Some(&i) {
                    items.push(i);
                    n += 1;
                }
            }
            t.left.push(n);
            if n == 0 {
                t.counted += 1;
            }
        }
        t
    }

    /// Notes `stored` blobs; returns how many items they completed.
    fn stored(&mut self, stored: &[Digest]) -> u64 {
        let mut done = 0;
        for d in stored {
            for i in self.waiting.remove(d).unwrap_or_default() {
                if let Some(left) = self.left.get_mut(i) {
                    *left = left.saturating_sub(1);
                    if *left == 0 {
                        done += 1;
                    }
                }
            }
        }
        self.counted += done;
        done
    }
}

/// Notes `stored` blobs in the page's `tally` (if one is running) and
/// adds the items they completed to `progress`.
fn tick(tally: &std::sync::Mutex<Option<PageTally>>, progress: &Progress, stored: &[Digest]) {
    if let Ok(mut t) = tally.lock()
        && let Some(t) = t.as_mut()
    {
        let done = t.stored(stored);
        progress.items.fetch_add(done, Ordering::Relaxed);
    }
}

/// The byte budget of the feed pair being replicated: what its backlog
/// was counted at, and the run's bytes moved and skipped when it began.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FeedBytes {
    pub ahead: u64,
    pub base: u64,
}

/// How far a pulled feed is behind the other side, as last measured.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Lag {
    /// Changes on the other side not yet read here.
    pub changes: i64,
    /// Seconds the oldest of them had waited.
    pub seconds: f64,
    /// When it was measured (milliseconds since the Unix epoch; RFC 3339
    /// in JSON): the end of the last execution or long poll that reached
    /// the other side. While the other side cannot be reached the lag is
    /// not known, and stays what it was then.
    #[serde(serialize_with = "serialize_rfc3339")]
    pub measured_at: i64,
}

impl Lag {
    /// A lag measured now.
    pub fn now(changes: i64, seconds: f64) -> Self {
        Lag {
            changes,
            seconds,
            measured_at: now_millis(),
        }
    }
}

fn serialize_rfc3339<S: serde::Serializer>(millis: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*millis))
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
    /// Woken by a change the long poll heard: the page it brought is this
    /// run's first page. Any other run asks the other side afresh, so that
    /// it sees everything written there before it started.
    from_change: bool,
    /// Asked by an operator (run now, repair, plan): handshakes afresh
    /// too, so a changed mode or a revoked token shows at once.
    fresh: bool,
    /// Full comparison instead of cursors.
    full: bool,
    /// A repair (`verify --repair`): on a replica, items written only here
    /// count as drift too.
    repair: bool,
    confirm_deletes: bool,
    pub report: Report,
    progress: Arc<Progress>,
    rate: Option<Arc<crate::throttle::Rate>>,
    pub lags: Vec<(FeedName, Lag)>,
    /// Items of the current feed pair that earlier executions could not
    /// copy, with when they were first found (ms).
    stuck_known: HashMap<ItemKey, i64>,
    /// The other side's change log of the current feed pair went back
    /// (restored from a backup, re-created): what it wrote may be newer
    /// here than there, and pushing compares in full.
    remote_went_back: bool,
    /// The other side serves `blobs/batch` (from its handshake).
    batch: bool,
    /// Feeds (the other side's names) its handshake refused, with why:
    /// reported as failed while the others go on.
    refused: HashMap<FeedName, String>,
    /// Other instances asked for blobs before the other side.
    sources: Vec<fetch::Source>,
    /// Blobs the current page carried inline.
    inline: HashMap<Digest, bytes::Bytes>,
    /// Sizes of the current page's blobs, as the other side told them
    /// (asked only with blob sources): a source's frame of another length
    /// is refused before its bytes are written.
    sizes: HashMap<Digest, u64>,
    /// A plan only: the delete guard would hold the current phase's
    /// deletions (the plan lists them as held).
    guard_held: bool,
    /// The current feed pair's byte budget, when its backlog was counted.
    feed_bytes: Option<FeedBytes>,
    /// Bytes added to the current feed pair's budget after it began:
    /// transfers started over from their first byte (a kept partial that
    /// did not verify), which move twice, and blobs of pulled items the
    /// budget did not count ([`Run::add_to_go`]).
    refetched: AtomicU64,
    /// The items being pulled lie behind the cursor (retried from earlier
    /// executions): the other side's count of the bytes ahead left their
    /// blobs out, so each blob's length joins the bytes to go as its frame
    /// arrives.
    unbudgeted: bool,
    /// The page being pulled or pushed: which of its items wait for which
    /// blobs, so each counts as gone through when its last blob is stored
    /// here or has left for the other side ([`Run::arrived`]). Shared with
    /// upload tasks ([`Run::ticker`]).
    tally: Arc<std::sync::Mutex<Option<PageTally>>>,
    /// Items retried by a push whose bytes are not in the budget yet: they
    /// are added once the other side is asked and the item is to be sent
    /// (one its filter holds back again never counts as bytes to go).
    uncounted: HashSet<ItemKey>,
    /// Blobs claimed by this run so far: a partial transfer an earlier
    /// execution left is counted as needing no transfer up to the byte it
    /// reached, at the blob's first claim only.
    resumed: std::sync::Mutex<HashSet<Digest>>,
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
            remote: r.remote(url, token),
            filter: Filter::new(&cfg.include, &cfg.exclude)?,
            remote_id: None,
            dry: false,
            from_change: false,
            fresh: false,
            full: false,
            repair: false,
            confirm_deletes: false,
            report: Report::default(),
            progress,
            rate: crate::throttle::Rate::new(cfg.bandwidth_limit),
            lags: Vec::new(),
            stuck_known: HashMap::new(),
            remote_went_back: false,
            batch: false,
            refused: HashMap::new(),
            sources: cfg
                .blob_sources
                .iter()
                .map(|s| fetch::Source {
                    // One name per source in metrics and logs, however its
                    // URL ends.
                    url: s.url.trim_end_matches('/').to_owned(),
                    remote: r
                        .remote(&s.url, &s.token)
                        .with_stall_timeout(fetch::SOURCE_STALL)
                        .with_min_rate(fetch::SOURCE_MIN_RATE),
                    down: std::sync::atomic::AtomicBool::new(false),
                    refused: std::sync::atomic::AtomicBool::new(false),
                })
                .collect(),
            inline: HashMap::new(),
            sizes: HashMap::new(),
            guard_held: false,
            feed_bytes: None,
            refetched: AtomicU64::new(0),
            tally: Arc::new(std::sync::Mutex::new(None)),
            unbudgeted: false,
            uncounted: HashSet::new(),
            resumed: std::sync::Mutex::new(HashSet::new()),
        })
    }

    /// Starts the byte budget of a feed pair whose backlog was counted at
    /// `ahead` bytes ([`Progress::bytes_total`]).
    pub(crate) fn begin_feed_bytes(&mut self, ahead: u64) {
        self.progress.bytes_total.fetch_add(ahead, Ordering::Relaxed);
        self.feed_bytes = Some(FeedBytes {
            ahead,
            base: self.bytes_counted(),
        });
    }

    /// Adds `n` items to go through to [`Progress::items_total`]: every
    /// item an execution passes ([`Progress::items`]) is counted here first,
    /// so the items done never run past the total.
    pub(crate) fn expect_items(&self, n: u64) {
        self.progress.items_total.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds `n` bytes found to go after the feed pair's budget began (items
    /// judged to be sent that it did not count) to it.
    pub(crate) fn add_feed_bytes(&mut self, n: u64) {
        if let Some(b) = self.feed_bytes.as_mut() {
            b.ahead = b.ahead.saturating_add(n);
            self.progress.bytes_total.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Adds `n` bytes to the feed pair's budget that it did not count: a
    /// blob fetched again from its first byte (the bytes it moved before
    /// count, and move again), or one of an item behind the cursor. The
    /// bytes to go stay known.
    pub(crate) fn add_to_go(&self, n: u64) {
        if self.feed_bytes.is_some() {
            self.refetched.fetch_add(n, Ordering::Relaxed);
            self.progress.bytes_total.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Counts the items of the page being pulled or pushed that `stored`
    /// blobs completed as gone through ([`PageTally`]).
    pub(crate) fn arrived(&self, stored: &[Digest]) {
        tick(&self.tally, &self.progress, stored);
    }

    /// [`Self::arrived`] for a task that outlives the borrow of the run (a
    /// push's upload producer).
    pub(crate) fn ticker(&self) -> impl Fn(&[Digest]) + Send + Sync + 'static {
        let (tally, progress) = (self.tally.clone(), self.progress.clone());
        move |stored: &[Digest]| tick(&tally, &progress, stored)
    }

    /// Starts tallying a pulled page's items (`needs`: the blobs each
    /// waits for); those waiting for none count now.
    pub(crate) fn start_tally(&self, needs: Vec<Vec<Digest>>) {
        let t = PageTally::new(needs);
        self.progress.items.fetch_add(t.counted, Ordering::Relaxed);
        if let Ok(mut slot) = self.tally.lock() {
            *slot = Some(t);
        }
    }

    /// Ends the page's tally: how many of its items it counted.
    pub(crate) fn end_tally(&self) -> u64 {
        self.tally
            .lock()
            .ok()
            .and_then(|mut t| t.take())
            .map_or(0, |t| t.counted)
    }

    /// Bytes of the distinct blobs of the live `entries` stored here (a
    /// blob not here counts 0).
    pub(crate) async fn bytes_of(&self, entries: impl Iterator<Item = &WireEntry>) -> Result<u64, ReplError> {
        let blobs: HashSet<Digest> = entries
            .filter(|e| !e.deleted)
            .flat_map(|e| e.blobs.iter().copied())
            .collect();
        let blobs: Vec<Digest> = blobs.into_iter().collect();
        // One lookup for all of them.
        Ok(self.r.ferry().present_blob_sizes(&blobs).await?.values().sum())
    }

    /// Bytes moved and skipped so far in this run.
    fn bytes_counted(&self) -> u64 {
        self.progress
            .bytes
            .load(Ordering::Relaxed)
            .saturating_add(self.progress.bytes_skipped.load(Ordering::Relaxed))
    }

    /// Counts `found` bytes of the backlog that need no transfer (blobs
    /// already on the receiving side), as soon as they are known.
    pub(crate) fn skip_bytes(&self, found: u64) {
        // Not in the count (an item behind the cursor): counted in both.
        if self.unbudgeted {
            self.add_to_go(found);
        }
        self.progress.bytes_skipped.fetch_add(found, Ordering::Relaxed);
    }

    /// Counts the bytes a partial transfer of `digest` left by an earlier
    /// execution already holds (`offset` at its first claim in this run):
    /// they are not moved again.
    pub(crate) fn skip_resumed(&self, digest: Digest, offset: u64) {
        // The first claim in this run counts; a later one (after a cut in
        // this run) resumes bytes this run moved and counted already.
        let first = self.resumed.lock().is_ok_and(|mut seen| seen.insert(digest));
        if first && offset > 0 {
            tracing::info!(target: "replication", blob = %digest, offset, "resuming a transfer an earlier execution left: {offset} bytes are here already and are not moved again");
            self.skip_bytes(offset);
        }
    }

    /// Ends the feed pair's budget: what it was counted at but never moved
    /// (blobs shared between items, items skipped or settled) needs no
    /// transfer, so the next feed pair's remaining bytes start true.
    pub(crate) fn end_feed_bytes(&mut self) {
        self.uncounted.clear();
        let refetched = self.refetched.swap(0, Ordering::Relaxed);
        if let Some(b) = self.feed_bytes.take() {
            let done = self.bytes_counted().saturating_sub(b.base);
            self.skip_bytes(b.ahead.saturating_add(refetched).saturating_sub(done));
        }
    }

    /// The client of the other instance this run talks to.
    pub fn remote(&self) -> &Remote {
        &self.remote
    }

    pub fn dry_run(mut self) -> Self {
        self.dry = true;
        self.fresh = true;
        self
    }
    /// What started the run (an execution's trigger: `change`,
    /// `schedule`, `manual`, `repair`, `takeover`, ...): only a `change`
    /// run starts from the page its long poll brought, and `manual` and
    /// `repair` runs handshake afresh.
    pub fn trigger(mut self, trigger: &str) -> Self {
        self.from_change = trigger == "change";
        self.fresh |= matches!(trigger, "manual" | "repair");
        self
    }
    pub fn full(mut self, full: bool) -> Self {
        self.full = full;
        self
    }
    pub fn repair(mut self, yes: bool) -> Self {
        self.repair = yes;
        self.full |= yes;
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
        let line = LogLine {
            time: rfc3339(now_millis()),
            level,
            message,
        };
        self.progress.note(&line);
        self.report.log.push(line);
    }

    /// A plan only, after [`Self::execute`]: lists the live items the plan
    /// has not listed yet — the same on both sides, or left out by the
    /// filters — so "would not move" tells what is already in place, not
    /// only what changed since the last execution. A replication that
    /// pulls reads the other side's entries (as a full pull does); one that
    /// only pushes reads its own and asks the other side's stamps (as a
    /// push does: the other side does not send its entries then).
    /// Tombstones on both sides are not listed. Stops at [`PLAN_ITEMS`]
    /// per pair.
    pub async fn plan_unchanged(&mut self) -> Result<(), ReplError> {
        let pulls = self.cfg.mode.flows.pulls();
        let direction = if pulls { "pull" } else { "push" };
        let mut feeds = std::mem::take(&mut self.report.feeds);
        for fr in &mut feeds {
            let local = self.r.ferry().feed(&fr.local).await?;
            let listed: HashSet<ItemKey> = fr
                .plan
                .as_ref()
                .map(|p| p.items.iter().map(|i| i.key.clone()).collect())
                .unwrap_or_default();
            let mut after: Option<ItemKey> = None;
            loop {
                if fr.plan.as_ref().is_some_and(|p| p.items.len() >= PLAN_ITEMS) {
                    break;
                }
                // Live items not listed yet, each with whether the other
                // end holds it at the same stamp.
                let (fresh, next) = if pulls {
                    let page = self
                        .remote
                        .entries(&fr.remote, after.as_ref(), PAGE, false)
                        .await?;
                    let theirs: Vec<WireEntry> = page
                        .entries
                        .into_iter()
                        .filter(|e| !e.deleted && !listed.contains(&e.key))
                        .collect();
                    let keys: Vec<ItemKey> = theirs.iter().map(|e| e.key.clone()).collect();
                    let here: HashMap<ItemKey, Stamp> = self
                        .r
                        .store()
                        .entries_for(local.id, &keys)
                        .await?
                        .into_iter()
                        .filter(|e| e.live.is_some())
                        .map(|e| (e.key, e.stamp))
                        .collect();
                    let fresh: Vec<(WireEntry, bool)> = theirs
                        .into_iter()
                        .map(|e| {
                            let same = here.get(&e.key) == Some(&e.stamp);
                            (e, same)
                        })
                        .collect();
                    (fresh, page.next_after)
                } else {
                    let page = self.r.store().entries(local.id, after.as_ref(), PAGE).await?;
                    let next = (page.len() == PAGE)
                        .then(|| page.last().map(|e| e.key.clone()))
                        .flatten();
                    let mine: Vec<WireEntry> = page
                        .into_iter()
                        .map(WireEntry::from)
                        .filter(|e| !e.deleted && !listed.contains(&e.key))
                        .collect();
                    let theirs = if mine.is_empty() {
                        Vec::new()
                    } else {
                        let keys = mine.iter().map(|e| e.key.clone()).collect();
                        self.remote.stamps(&fr.remote, keys).await?.stamps
                    };
                    let fresh: Vec<(WireEntry, bool)> = mine
                        .into_iter()
                        .zip(theirs.into_iter().chain(std::iter::repeat(None)))
                        .map(|(e, t)| {
                            let same = matches!(t, Some((s, false)) if s == e.stamp);
                            (e, same)
                        })
                        .collect();
                    (fresh, next)
                };
                for (e, same) in &fresh {
                    if !self.filter.admits(local.feed_type, &e.key) {
                        let why = not_carried(&self.filter, local.feed_type, e, "carry it");
                        fr.plan_item(true, direction, &e.key, "none", Some(why));
                    } else if *same {
                        fr.plan_item(true, direction, &e.key, "none", Some(same_on_both_sides(e)));
                    }
                }
                match next {
                    Some(k) => after = Some(k),
                    None => break,
                }
            }
        }
        self.report.feeds = feeds;
        Ok(())
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
            instance_name: Some(crate::peers::instance_name(self.r.ferry())),
            interval_secs: Some(self.cfg.interval_secs),
        };
        let resp = self.remote.handshake(&req).await?;
        self.r.reached(self.rec.id);
        self.adopt(&resp);
        Ok(resp)
    }

    /// [`Run::handshake`] for checking a configuration (create, update,
    /// a declaration): a feed the other side refuses refuses it, as an
    /// older peer refuses the whole handshake.
    pub async fn handshake_whole(&mut self) -> Result<HandshakeResponse, ReplError> {
        let resp = self.handshake().await?;
        match RefusedFeed::summary(&resp.refused_feeds) {
            Some(why) => Err(ReplError::Refused(why)),
            None => Ok(resp),
        }
    }

    /// Takes what a handshake says of the other side: its instance and the
    /// optional parts of the protocol it serves.
    fn adopt(&mut self, hs: &HandshakeResponse) {
        self.remote_id = Some(hs.instance_id);
        self.report.remote_instance = Some(hs.instance_id);
        self.batch = hs.features.iter().any(|f| f == crate::batch::BLOB_BATCH);
        self.refused = hs
            .refused_feeds
            .iter()
            .map(|f| (f.feed.clone(), f.reason.clone()))
            .collect();
    }

    /// The handshake of a recent execution if there is one (no round
    /// trip), else a new one, kept for the next executions.
    async fn connect(&mut self) -> Result<(HandshakeResponse, bool), ReplError> {
        if !self.fresh
            && let Some(hs) = self.r.cached_handshake(self.rec.id)
        {
            self.adopt(&hs);
            return Ok((hs, true));
        }
        let hs = self.handshake().await?;
        if !self.dry {
            self.follow_remote_filter(&hs).await?;
        }
        self.r.keep_handshake(self.rec.id, hs.clone());
        Ok((hs, false))
    }

    /// When the other side's filter changed since the last handshake
    /// ([`HandshakeResponse::filter`]), the pull cursors start over: what
    /// a narrower filter there hid was passed over by them, and a wider
    /// one must bring it (what is already here is skipped by its stamp).
    /// The fingerprint is kept as a cursor (its first 15 hex digits, so
    /// never 0, which means "not seen yet").
    async fn follow_remote_filter(&mut self, hs: &HandshakeResponse) -> Result<(), ReplError> {
        let Some(fp) = hs.filter.as_deref() else {
            return Ok(());
        };
        let Ok(now) = i64::from_str_radix(fp.get(..15).unwrap_or(fp), 16) else {
            return Ok(());
        };
        let now = now | 1;
        let seen = self.r.store().cursor(self.rec.id, REMOTE_FILTER).await?;
        if seen == now {
            return Ok(());
        }
        if seen != 0 {
            for p in &self.cfg.feeds {
                let cursor = cursor_name(Direction::Pull, &p.local, &p.remote);
                self.r.store().set_cursor(self.rec.id, &cursor, 0).await?;
            }
            self.log(
                "info",
                "the other side's filter changed: its entries are compared in full from the start".into(),
            );
        }
        self.r.store().set_cursor(self.rec.id, REMOTE_FILTER, now).await?;
        Ok(())
    }

    pub async fn execute(&mut self) -> Result<(), ReplError> {
        let (hs, reused) = self.connect().await?;
        let verb = match (self.dry, reused) {
            (true, _) => "planning against",
            (false, false) => "connected to",
            (false, true) => "still connected to",
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
                pulls: flows.pulls(),
                pushes: flows.pushes(),
                pulled: Counts::default(),
                pushed: Counts::default(),
                plan: None,
            };
            let mut result = Ok(());
            self.remote_went_back = false;
            if let Some(why) = self.refused.get(&pair.remote) {
                result = Err(ReplError::Refused(format!(
                    "the other instance refuses it: {why}"
                )));
            } else if flows.pulls() {
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
            let from_sources = if p.source_bytes > 0 {
                format!(", {} of them from blob sources", p.source_bytes)
            } else {
                String::new()
            };
            // Only the directions the mode runs: a pull has nothing pushed
            // to tell, and the other way round.
            let mut said = Vec::new();
            if fr.pulls {
                said.push(format!(
                    "pulled +{} ~{} -{} ({} skipped, {} conflicts, {} bytes{})",
                    p.added, p.updated, p.deleted, p.skipped, p.conflicts, p.bytes, from_sources
                ));
            }
            if fr.pushes {
                // Items the other side's filter holds back, named in the
                // report's `stuck` list.
                let held = self
                    .report
                    .stuck
                    .iter()
                    .filter(|s| s.held && s.feed == fr.local)
                    .count();
                let held = if held > 0 {
                    format!(", {held} held back by the other side's filter")
                } else {
                    String::new()
                };
                said.push(format!(
                    "pushed +{} ~{} -{} ({} skipped, {} conflicts, {} bytes{held})",
                    q.added, q.updated, q.deleted, q.skipped, q.conflicts, q.bytes
                ));
            }
            let arrow = match (fr.pulls, fr.pushes) {
                (true, false) => "←",
                (false, true) => "→",
                _ => "⇄",
            };
            let summary = format!("feed {} {arrow} {}: {}", fr.local, fr.remote, said.join("; "));
            self.log("info", summary);
            self.report.feeds.push(fr);
        }
        let failed: Vec<&StuckItem> = self.report.stuck.iter().filter(|s| !s.held).collect();
        if first_error.is_none() && !failed.is_empty() {
            let names: Vec<String> = failed
                .iter()
                .take(10)
                .map(|s| format!("{} in feed {}", s.key, s.feed))
                .collect();
            let more = failed.len().saturating_sub(names.len());
            let n = failed.len();
            first_error = Some(ReplError::Incomplete(format!(
                "{n} {} could not be copied and will be retried: {}{}",
                if n == 1 { "item" } else { "items" },
                names.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            )));
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// What a plan lists for an entry a run would send to the other side
/// (`direction`), where it is `live_on_target` or not; `size` is the
/// item's size when it would be copied or updated.
fn plan_planned(
    fr: &mut FeedReport,
    direction: &'static str,
    e: &WireEntry,
    live_on_target: bool,
    held: bool,
    size: Option<u64>,
) {
    let (action, why) = match (e.deleted, live_on_target) {
        (true, true) if held => (
            "delete",
            Some(
                "held by the delete guard: a run stops before deleting until the deletions are confirmed"
                    .to_string(),
            ),
        ),
        (true, true) => ("delete", None),
        (true, false) => ("none", Some("already deleted there".to_string())),
        (false, true) => ("update", None),
        (false, false) => ("copy", None),
    };
    fr.plan_item(true, direction, &e.key, action, why);
    if !e.deleted
        && let Some(item) = fr
            .plan
            .as_mut()
            .and_then(|p| p.items.last_mut())
            .filter(|i| i.key == e.key)
    {
        item.size = size;
    }
}

/// Why a plan does not move an entry both sides hold at the same stamp.
fn same_on_both_sides(e: &WireEntry) -> String {
    if e.deleted {
        "deleted on both sides".into()
    } else {
        "already the same on both sides".into()
    }
}

/// Why a plan lists an entry that the replication does not carry: left
/// out by the filters, or by the mode (`flow` names what it does not do).
fn not_carried(filter: &Filter, ty: ferry_types::FeedType, e: &WireEntry, flow: &str) -> String {
    if !filter.admits(ty, &e.key) {
        "filtered out by the replication's include/exclude patterns".into()
    } else {
        format!("the replication's mode does not {flow}")
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes to go count down to zero while the backlog moves, and are
    /// unknown (not zero) once more moves than the backlog was counted at.
    #[test]
    fn bytes_to_go_are_unknown_past_the_count() {
        let p = Progress::default();
        assert_eq!(p.bytes_remaining(), None, "nothing counted yet");
        p.bytes_total.store(1000, Ordering::Relaxed);
        p.bytes.store(300, Ordering::Relaxed);
        p.bytes_skipped.store(200, Ordering::Relaxed);
        assert_eq!(p.bytes_remaining(), Some(500));
        p.bytes.store(800, Ordering::Relaxed);
        assert_eq!(p.bytes_remaining(), Some(0));
        // A left-over item retried behind the cursor moves more.
        p.bytes.store(900, Ordering::Relaxed);
        assert_eq!(p.bytes_remaining(), None);
    }
}
