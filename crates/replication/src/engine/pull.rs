//! The pull phase: the other side's changes (or, after a reset, all its
//! entries) come here; only missing blobs move, streamed, resumable and
//! verified; entries are applied with their original stamps.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use ferry_store::{Entry, FeedRecord};
use ferry_types::{Digest, FeedName, ItemKey};

use super::fetch::Fetched;
use super::*;
use crate::ReplError;

/// Changes of this instance's own log read at a time when looking for
/// local divergence to put back.
const LOCAL_PAGE: usize = 2000;

impl Run<'_> {
    pub(super) async fn pull_feed(
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

    async fn pull_feed_inner(
        &mut self,
        local: &FeedRecord,
        remote: &FeedName,
        fr: &mut FeedReport,
    ) -> Result<(), ReplError> {
        let cursor_name = cursor_name(Direction::Pull, &local.name, remote);
        let anchor_name = format!("{cursor_name}:anchor");
        self.guard_held = false;
        let store = self.r.store().clone();
        self.load_stuck(Direction::Pull, local, remote).await?;
        let (mut since, mut anchor) = if self.full {
            (0, 0)
        } else {
            (
                store.cursor(self.rec.id, &cursor_name).await?,
                store.cursor(self.rec.id, &anchor_name).await?,
            )
        };
        // An execution that reads the other side from its beginning (or in
        // full) compares every key it has with the local entries, so the
        // replica check need not read local writes up to here again.
        let local_last = self.r.ferry().metadata().last_seq(local.id).await?;
        let from_start = since == 0;
        let guarded = self.cfg.mode.flows.delete_local && !self.confirm_deletes;
        let inline_max = self.cfg.inline_from_peer();
        let blob_sizes = self.cfg.sizes_from_peer();
        let extras = PageExtras {
            count_deletes: guarded,
            count_bytes: true,
            bytes_after: None,
            inline_max,
            blob_sizes,
        };
        // A page the long poll brought is the first page of the run it
        // woke, if it starts at this cursor (no round trip at all for a
        // small change). It shows the other side as it was when it came:
        // any other run (run now, a schedule) asks afresh, or it would end
        // before what was written there since.
        let polled = (self.from_change && !self.full && !self.dry)
            .then(|| self.r.take_polled(self.rec.id, &local.name, since, anchor))
            .flatten();
        let mut page = match polled {
            Some(p) => p,
            _ => {
                self.remote
                    .changes(remote, since, anchor, PAGE, 0, extras)
                    .await?
            }
        };
        self.check_same_remote(&page)?;
        if page.reset || self.full {
            if page.diverged {
                self.remote_went_back = true;
                self.log("warn", format!(
                    "feed {}: the other side's change log is not the one cursor {since} was taken from (restored from a backup, re-created, or its sequence reset); comparing in full",
                    local.name
                ));
            } else if page.reset {
                self.log("warn", format!("feed {}: cursor {since} is older than the other side's tombstone horizon; comparing in full", local.name));
            }
            let (last, last_anchor) = (page.last_seq, page.last_anchor.unwrap_or(0));
            self.full_pull(local, remote, fr).await?;
            self.save_pull_cursor(&cursor_name, &anchor_name, Some((last, last_anchor)))
                .await?;
            self.lags.push((local.name.clone(), Lag::now(0, 0.0)));
            return self
                .restore_local_divergence(local, remote, Some(local_last), fr)
                .await;
        }
        // Items earlier executions could not copy, as they are there now
        // (a plan looks too, to count what it would delete).
        let retried = self.look_up_stuck(local, remote).await?;
        let retried_items = retried.iter().map(|p| p.len()).sum::<usize>() as u64;
        self.expect_items((page.last_seq - since).max(0) as u64 + retried_items);
        // The other side counts the whole feed's backlog: with a filter
        // here, what will move is unknown (no byte estimate, items only).
        if let Some(ahead) = page.bytes_ahead
            && self.filter.is_everything()
        {
            self.begin_feed_bytes(ahead);
        }
        let more_pages = page.next < page.last_seq;
        // The other side counted the deletions ahead: none, nothing to
        // guard (and its later pages are read once, not twice).
        // Deletions among the retried items (an item stuck on a missing
        // blob, deleted there since) count toward the guard like new ones.
        let retried_deletions = if guarded {
            self.deleting_live_here(local, retried.iter().flatten()).await?
        } else {
            HashSet::new()
        };
        let in_log = page.deletes_ahead != Some(0) && (more_pages || page.entries.iter().any(|e| e.deleted));
        if guarded && (in_log || !retried_deletions.is_empty()) {
            let mut n = retried_deletions.len() as u64;
            if in_log {
                n += self
                    .count_pull_deletions(local, remote, since, page.clone(), &retried_deletions)
                    .await?;
            }
            let size = self.r.store().live_count(local.id).await?;
            let key = guard_key("pull", local, remote);
            if n > 0 && self.guard_trips(local, &key, n, size).await? {
                // A plan goes on counting, to show the deletions it would stop for.
                if !self.dry {
                    return Ok(());
                }
                self.guard_held = true;
            }
        }
        if !self.dry {
            // Behind the cursor: their blobs join the bytes to go as they
            // come (the count of the bytes ahead left them out).
            self.unbudgeted = true;
            let mut result = Ok(());
            for found in retried {
                result = self.pull_entries(local, remote, &found, fr).await;
                if result.is_err() {
                    break;
                }
            }
            self.unbudgeted = false;
            result?;
        }
        // The page before the one whose blobs move, being applied.
        let mut pending: Option<Pending> = None;
        // The end of the other side's change log as last seen: changes
        // written there during the execution join the items to go, and
        // the bytes their items need the bytes to go (each later page asks
        // the other side for those past this end: otherwise the moved bytes
        // would run past the total and leave it unknown).
        let mut known_end = page.last_seq;
        loop {
            let bytes_after = self.feed_bytes.is_some().then_some(known_end);
            // The next page is asked for while this one's blobs move and
            // the one before is applied.
            let next = (page.next > since && page.next < page.last_seq).then(|| {
                let (client, feed) = (self.remote.clone(), remote.clone());
                let (from, at) = (page.next, page.next_anchor.unwrap_or(0));
                async move {
                    client
                        .changes(
                            &feed,
                            from,
                            at,
                            PAGE,
                            0,
                            PageExtras {
                                count_deletes: false,
                                count_bytes: false,
                                bytes_after,
                                inline_max,
                                blob_sizes,
                            },
                        )
                        .await
                }
            });
            let entries = std::mem::take(&mut page.entries);
            self.take_inline(std::mem::take(&mut page.inline));
            self.sizes = std::mem::take(&mut page.sizes);
            let this = async {
                if entries.is_empty() {
                    Ok(None)
                } else {
                    self.prepare_page(local, remote, &entries, fr).await
                }
            };
            let (prepared, prefetched) = match next {
                Some(next) => {
                    let (a, p) = tokio::join!(this, next);
                    (a, Some(p))
                }
                None => (this.await, None),
            };
            // The page before, applied while this one's blobs moved, is
            // finished first (its cursor saved), also when this one failed.
            if let Some(before) = pending.take() {
                self.finish_pending(local, remote, before, fr, &cursor_name, &anchor_name)
                    .await?;
            }
            let prepared = prepared?;
            let advanced = page.next > since;
            since = page.next.max(since);
            if advanced {
                anchor = page.next_anchor.unwrap_or(0);
            }
            let cursor = advanced.then_some((since, anchor));
            match prepared {
                // Applied in the background while the next page's blobs
                // move; its cursor is saved once it is applied.
                Some(mut prepared) => {
                    let applying = start_apply(self.r.ferry().clone(), local.clone(), &mut prepared);
                    pending = Some(Pending {
                        page: prepared,
                        applying,
                        cursor,
                    });
                }
                None => self.save_pull_cursor(&cursor_name, &anchor_name, cursor).await?,
            }
            if since >= page.last_seq || !advanced {
                if let Some(last) = pending.take() {
                    self.finish_pending(local, remote, last, fr, &cursor_name, &anchor_name)
                        .await?;
                }
                let lag = Lag::now((page.last_seq - since).max(0), 0.0);
                self.lags.push((local.name.clone(), lag));
                self.end_feed_bytes();
                break;
            }
            let following = match prefetched {
                Some(p) => p,
                None => {
                    let extras = PageExtras {
                        bytes_after,
                        blob_sizes,
                        ..PageExtras::default()
                    };
                    self.remote.changes(remote, since, anchor, PAGE, 0, extras).await
                }
            };
            let following = following.and_then(|p| {
                self.check_same_remote(&p)?;
                if p.reset {
                    return Err(ReplError::Conflict(format!(
                        "the other side's change log of feed {} was pruned or replaced during the execution; the next execution compares in full",
                        local.name
                    )));
                }
                Ok(p)
            });
            page = match following {
                Ok(p) => p,
                Err(e) => {
                    // What was fetched for the page before is applied
                    // (and its cursor saved) before the execution ends.
                    if let Some(last) = pending.take() {
                        self.finish_pending(local, remote, last, fr, &cursor_name, &anchor_name)
                            .await?;
                    }
                    return Err(e);
                }
            };
            if page.last_seq > known_end {
                self.expect_items((page.last_seq - known_end) as u64);
                if let Some(late) = page.bytes_late {
                    self.add_feed_bytes(late);
                }
                known_end = page.last_seq;
            }
        }
        self.restore_local_divergence(local, remote, from_start.then_some(local_last), fr)
            .await
    }

    /// Finishes a page applied in the background ([`Self::finish_page`])
    /// and saves the cursor past it.
    async fn finish_pending(
        &mut self,
        local: &FeedRecord,
        remote: &FeedName,
        pending: Pending,
        fr: &mut FeedReport,
        cursor_name: &str,
        anchor_name: &str,
    ) -> Result<(), ReplError> {
        let Pending {
            page,
            applying,
            cursor,
        } = pending;
        self.finish_page(local, remote, page, applying, fr).await?;
        self.save_pull_cursor(cursor_name, anchor_name, cursor).await
    }

    /// Saves a feed pair's pull cursor and its anchor (`at`: None leaves
    /// them as they are; a plan saves nothing).
    async fn save_pull_cursor(
        &self,
        cursor_name: &str,
        anchor_name: &str,
        at: Option<(i64, i64)>,
    ) -> Result<(), ReplError> {
        if let Some((since, anchor)) = at
            && !self.dry
        {
            self.r
                .store()
                .set_cursors(
                    self.rec.id,
                    &[
                        (cursor_name.to_string(), since),
                        (anchor_name.to_string(), anchor),
                    ],
                    &[],
                )
                .await?;
        }
        Ok(())
    }

    /// The items earlier executions could not copy, as they are on the
    /// other side now (entries or tombstones, in pages of at most
    /// [`PAGE`]), to be tried again; the marks of those the other side
    /// has no entry for at all (never written there, or pruned) are
    /// cleared, as there is nothing to copy.
    async fn look_up_stuck(
        &mut self,
        local: &FeedRecord,
        remote: &FeedName,
    ) -> Result<Vec<Vec<WireEntry>>, ReplError> {
        let keys: Vec<ItemKey> = self.stuck_known.keys().cloned().collect();
        let mut out = Vec::new();
        for chunk in keys.chunks(PAGE) {
            let page = self
                .remote
                .lookup(remote, chunk.to_vec(), self.cfg.sizes_from_peer())
                .await?;
            self.sizes.extend(page.sizes);
            let found = page.entries;
            let absent: Vec<ItemKey> = chunk
                .iter()
                .filter(|k| !found.iter().any(|e| &e.key == *k))
                .cloned()
                .collect();
            self.record_stuck(Direction::Pull, local, remote, Vec::new(), &absent)
                .await?;
            if !found.is_empty() {
                out.push(found);
            }
        }
        Ok(out)
    }

    /// The keys of `entries` that are tombstones (within the filter) of an
    /// item live here at an older stamp: what applying them would delete.
    async fn deleting_live_here<'e>(
        &self,
        local: &FeedRecord,
        entries: impl Iterator<Item = &'e WireEntry>,
    ) -> Result<HashSet<ItemKey>, ReplError> {
        let tombs: Vec<&WireEntry> = entries
            .filter(|e| e.deleted && self.filter.admits(local.feed_type, &e.key))
            .collect();
        self.r.live_deleted_by(local, &tombs).await
    }

    // ------------------------------------------------ replica divergence

    /// Whether a local version that is newer than the other side's and was
    /// written here is a divergence of this replica, to be put back to the
    /// other side's version: the change is one this replication does not
    /// send, and the other side's version is one it takes.
    fn reverts_local(&self, local_live: bool, theirs: &WireEntry) -> bool {
        let f = self.cfg.mode.flows;
        let takes_theirs = if theirs.deleted {
            f.delete_local
        } else {
            f.pull_missing
        };
        let sends_ours = if local_live {
            f.push_missing
        } else {
            f.delete_remote
        };
        takes_theirs && !sends_ours
    }

    /// A plain run puts back what was changed or deleted only here, in a
    /// replica of the other side: items the other side holds and this
    /// replication does not send back. (ProGet's pull "copies what is
    /// missing here".) Items that exist only here are left alone. Reads
    /// this instance's change log from its own cursor, so a run costs in
    /// proportion to local writes; after a full comparison (`compared`:
    /// the local log position it covered) only what came after.
    async fn restore_local_divergence(
        &mut self,
        local: &FeedRecord,
        remote: &FeedName,
        compared: Option<i64>,
        fr: &mut FeedReport,
    ) -> Result<(), ReplError> {
        let f = self.cfg.mode.flows;
        if !f.pulls() || (f.push_missing && f.delete_remote) {
            return Ok(());
        }
        let name = format!("local:{}", cursor_name(Direction::Pull, &local.name, remote));
        if let Some(covered) = compared
            && !self.dry
        {
            let at = self.r.store().cursor(self.rec.id, &name).await?;
            if covered > at {
                self.r.store().set_cursor(self.rec.id, &name, covered).await?;
            }
        }
        let me = self.r.ferry().instance_id();
        let meta = self.r.ferry().metadata().clone();
        let mut since = self.r.store().cursor(self.rec.id, &name).await?;
        loop {
            let changes = meta.changes_since(local.id, since, LOCAL_PAGE).await?;
            let Some(last) = changes.last().map(|c| c.seq) else {
                return Ok(());
            };
            // A short page is the log's end: no read to find it empty.
            let end = changes.len() < LOCAL_PAGE;
            let mut seen = HashSet::new();
            let keys: Vec<ItemKey> = changes
                .into_iter()
                .filter(|c| c.stamp.origin == me && self.filter.admits(local.feed_type, &c.key))
                .filter(|c| seen.insert(c.key.clone()))
                .map(|c| c.key)
                .collect();
            for chunk in keys.chunks(PAGE) {
                let page = self
                    .remote
                    .lookup(remote, chunk.to_vec(), self.cfg.sizes_from_peer())
                    .await?;
                self.sizes = page.sizes;
                let theirs = page.entries;
                if !theirs.is_empty() {
                    self.pull_entries(local, remote, &theirs, fr).await?;
                }
            }
            since = last;
            // A plan counts the repairs (in `pull_entries`) and moves nothing.
            if !self.dry {
                self.r.store().set_cursor(self.rec.id, &name, since).await?;
            }
            if end {
                return Ok(());
            }
        }
    }

    /// How many live items here the remaining pages would delete.
    async fn count_pull_deletions(
        &mut self,
        local: &FeedRecord,
        remote: &FeedName,
        mut since: i64,
        mut page: ChangesPage,
        counted: &HashSet<ItemKey>,
    ) -> Result<u64, ReplError> {
        let mut n = 0;
        loop {
            let deleting = self.deleting_live_here(local, page.entries.iter()).await?;
            n += deleting.difference(counted).count() as u64;
            if page.next <= since || page.next >= page.last_seq {
                return Ok(n);
            }
            since = page.next;
            page = self
                .remote
                .changes(remote, since, 0, PAGE, 0, PageExtras::default())
                .await?;
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
            let mut page = self
                .remote
                .entries(remote, after.as_ref(), PAGE, self.cfg.sizes_from_peer())
                .await?;
            self.sizes = std::mem::take(&mut page.sizes);
            // The other side's item count is not known ahead: the total
            // grows page by page.
            self.expect_items(page.entries.len() as u64);
            seen.extend(page.entries.iter().map(|e| e.key.clone()));
            if !page.entries.is_empty() {
                self.pull_entries(local, remote, &page.entries, fr).await?;
            }
            match page.next_after {
                Some(k) => after = Some(k),
                None => break,
            }
        }
        self.pull_expired_deletions(local, remote, &seen, fr).await
    }

    /// After a full comparison: items that came here from elsewhere and that
    /// the other side no longer has at all — neither the item nor its
    /// tombstone, which it has pruned — may have been deleted there. They
    /// are reported, and deleted only when an operator confirms. Items
    /// written on this instance are deleted this way only by the repair of
    /// a replica (`verify --repair --confirm-deletes`).
    async fn pull_expired_deletions(
        &mut self,
        local: &FeedRecord,
        remote: &FeedName,
        seen: &HashSet<ItemKey>,
        fr: &mut FeedReport,
    ) -> Result<(), ReplError> {
        let f = self.cfg.mode.flows;
        if !(f.pull_missing && f.delete_local) {
            return Ok(());
        }
        // After the other side went back, what it lost goes back to it by
        // the push phase when this replication sends content.
        if self.remote_went_back && f.push_missing {
            return Ok(());
        }
        // A replica (which sends nothing back) is repaired to equal its
        // source: what was written only here goes too, once confirmed.
        let replica = !f.push_missing && !f.delete_remote;
        let me = self.r.ferry().instance_id();
        let mut gone = Vec::new();
        let mut after: Option<ItemKey> = None;
        loop {
            let page = self.r.store().entries(local.id, after.as_ref(), 2000).await?;
            let done = page.len() < 2000;
            after = page.last().map(|e| e.key.clone());
            for e in page {
                if e.live.is_some()
                    && (e.stamp.origin != me || (replica && self.repair))
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
        // Not absent there but left out by the other side's own filter
        // (narrowed since they came): kept, and not offered for deletion.
        if !gone.is_empty() {
            let hidden: HashSet<ItemKey> = self
                .remote
                .outside_filter(remote, gone.iter().map(|e| e.key.clone()).collect())
                .await?
                .into_iter()
                .collect();
            if !hidden.is_empty() {
                gone.retain(|e| !hidden.contains(&e.key));
                self.log(
                    "info",
                    format!(
                        "feed {}: {} items here are outside the other side's filter; kept (the replication carries them neither way)",
                        local.name,
                        hidden.len()
                    ),
                );
            }
        }
        if gone.is_empty() {
            return Ok(());
        }
        // Absent is ambiguous — deleted there with the tombstone expired, or
        // never there (a feed that also pulls from another instance) — so
        // these deletions always wait for an operator's confirmation.
        if self.dry {
            let why = (!self.confirm_deletes).then(|| {
                "held until confirmed: absent on the other side, whose tombstone has expired (run with --full --confirm-deletes)".to_string()
            });
            for e in &gone {
                fr.plan_item(true, "pull", &e.key, "delete", why.clone());
            }
        }
        if !self.confirm_deletes {
            self.report.needs_confirmation = true;
            let named: Vec<&str> = gone.iter().take(10).map(|e| e.key.as_str()).collect();
            let named = format!(
                " ({}{})",
                named.join(", "),
                if gone.len() > 10 { ", …" } else { "" }
            );
            let message = if self.remote_went_back {
                format!(
                    "feed {}: {} items here{named} are absent on the other side, whose change log went back (restored from a backup, or re-created); nothing was deleted. {}",
                    local.name,
                    gone.len(),
                    if replica {
                        format!(
                            "To make this replica equal to its source again, run `ferry replication verify {} --repair --confirm-deletes`; to keep them, restore them on the other side",
                            self.rec.name
                        )
                    } else {
                        format!(
                            "If they should go, run `ferry replication run {} --full --confirm-deletes`",
                            self.rec.name
                        )
                    }
                )
            } else if self.repair && replica {
                format!(
                    "feed {}: {} items here{named} are absent on the other side (written only here, or deleted there with their tombstones expired); nothing was deleted. To make this replica equal to its source, run `ferry replication verify {} --repair --confirm-deletes`",
                    local.name,
                    gone.len(),
                    self.rec.name
                )
            } else {
                format!(
                    "feed {}: {} items that came from elsewhere{named} are absent on the other side, whose tombstones have expired; nothing was deleted. If they were deleted there, run `ferry replication run {} --full --confirm-deletes`",
                    local.name,
                    gone.len(),
                    self.rec.name
                )
            };
            self.log("warn", message);
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

    /// Applies a page of the other side's entries here: compares stamps,
    /// fetches the blobs that are missing, applies what is newer (and puts
    /// back local divergence, see [`Self::reverts_local`]). An entry that
    /// cannot be copied now — its blob is missing or damaged on the other
    /// side, or its stamp is ahead of this instance's clock beyond the
    /// allowed skew — is left out and marked to be retried; the rest goes
    /// ahead. A broken link fails the execution.
    async fn pull_entries(
        &mut self,
        local: &FeedRecord,
        remote: &FeedName,
        entries: &[WireEntry],
        fr: &mut FeedReport,
    ) -> Result<(), ReplError> {
        let Some(mut page) = self.prepare_page(local, remote, entries, fr).await? else {
            return Ok(());
        };
        let applying = start_apply(self.r.ferry().clone(), local.clone(), &mut page);
        self.finish_page(local, remote, page, applying, fr).await
    }

    /// The first half of [`Self::pull_entries`]: compares the page's
    /// entries with the local ones and fetches the blobs that are missing
    /// (their flushes started). Returns what is to be applied, or None
    /// when there is nothing (a plan: it only lists). The page's entries
    /// that need nothing more are settled here; those that cannot be
    /// copied are marked stuck when the page is finished.
    async fn prepare_page(
        &mut self,
        local: &FeedRecord,
        remote: &FeedName,
        entries: &[WireEntry],
        fr: &mut FeedReport,
    ) -> Result<Option<PreparedPage>, ReplError> {
        if self.dry {
            for e in entries.iter().filter(|e| !self.wanted_from_remote(local, e)) {
                let flow = if e.deleted {
                    "delete items here"
                } else {
                    "copy items here"
                };
                let why = not_carried(&self.filter, local.feed_type, e, flow);
                fr.plan_item(true, "pull", &e.key, "none", Some(why));
            }
        }
        let admitted: Vec<&WireEntry> = entries
            .iter()
            .filter(|e| self.wanted_from_remote(local, e))
            .collect();
        let keys: Vec<ItemKey> = admitted.iter().map(|e| e.key.clone()).collect();
        let locals: HashMap<ItemKey, Entry> = self
            .r
            .store()
            .entries_for(local.id, &keys)
            .await?
            .into_iter()
            .map(|e| (e.key.clone(), e))
            .collect();
        let me = self.r.ferry().instance_id();
        let mut todo: Vec<&WireEntry> = Vec::new();
        let mut reverts: HashSet<ItemKey> = HashSet::new();
        let mut settled: Vec<ItemKey> = Vec::new();
        let mut stuck: Vec<(ItemKey, String)> = Vec::new();
        for e in admitted {
            if let Err(refused) = self.r.ferry().check_stamp(&e.key, &e.stamp) {
                let why = format!("{refused}; it is retried until this clock catches up");
                fr.plan_item(self.dry, "pull", &e.key, "none", Some(why.clone()));
                stuck.push((e.key.clone(), why));
                continue;
            }
            match locals.get(&e.key) {
                // One stamp, two contents: two instances wrote under one
                // instance id (started from copies of one data directory)
                // in the same instant. Nothing orders them; it is said.
                Some(l)
                    if l.stamp == e.stamp
                        && (l.live.is_none() != e.deleted
                            || l.live.as_ref().is_some_and(|x| x.blobs != e.blobs)) =>
                {
                    // Nothing orders the two (a stamp is written once,
                    // even by a repair): the next write of the item, with
                    // a new stamp, settles it everywhere.
                    fr.pulled.conflicts += 1;
                    settled.push(e.key.clone());
                    self.log(
                        "error",
                        format!(
                            "{} in feed {} has the same stamp ({}) here and on the other side but not the same content: two running instances use instance id {} (copies of one data directory; give the copy its own id with `ferry instance new-id`); both are kept until the item is written again (upload it once more where it is right)",
                            e.key, local.name, e.stamp, e.stamp.origin
                        ),
                    );
                }
                Some(l) if l.stamp == e.stamp => {
                    fr.pulled.skipped += 1;
                    fr.plan_item(
                        self.dry,
                        "pull",
                        &e.key,
                        "none",
                        Some(super::same_on_both_sides(e)),
                    );
                    settled.push(e.key.clone());
                }
                Some(l)
                    if l.stamp > e.stamp
                        && l.stamp.origin == me
                        && self.reverts_local(l.live.is_some(), e) =>
                {
                    self.log(
                        "warn",
                        format!(
                            "{} in feed {} was {} only here; putting back the other side's version ({})",
                            e.key,
                            local.name,
                            if l.live.is_some() { "changed" } else { "deleted" },
                            e.stamp
                        ),
                    );
                    reverts.insert(e.key.clone());
                    todo.push(e);
                }
                // A version the other side wrote itself and no longer has:
                // its content went back (restored from a backup, or itself
                // repaired from its own source). A replica follows it back.
                Some(l)
                    if l.stamp > e.stamp
                        && Some(l.stamp.origin) == self.remote_id
                        && self.reverts_local(l.live.is_some(), e) =>
                {
                    self.log(
                        "warn",
                        format!(
                            "{} in feed {}: the other side no longer has the version it wrote ({}), it went back to {}; following it",
                            e.key, local.name, l.stamp, e.stamp
                        ),
                    );
                    reverts.insert(e.key.clone());
                    todo.push(e);
                }
                Some(l) if l.stamp > e.stamp => {
                    settled.push(e.key.clone());
                    let why = if l.stamp.origin != e.stamp.origin {
                        format!(
                            "older stamp: the other side's version ({}) conflicts with this instance's newer one ({}), which is kept",
                            e.stamp, l.stamp
                        )
                    } else {
                        format!(
                            "older stamp: this instance already has a newer version ({} after {})",
                            l.stamp, e.stamp
                        )
                    };
                    fr.plan_item(self.dry, "pull", &e.key, "none", Some(why));
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
            // Sizes: each blob once; what is here already is not moved.
            let mut seen: HashSet<Digest> = HashSet::new();
            for e in &todo {
                let live_here = locals.get(&e.key).is_some_and(|l| l.live.is_some());
                count_planned(&mut fr.pulled, e, live_here);
                let mut size = None;
                if !e.deleted {
                    let mut total = 0u64;
                    for d in &e.blobs {
                        let (n, here) = match self.r.ferry().blob_size(d).await? {
                            Some(n) => (n, true),
                            None => (self.remote.blob_size(d).await?.unwrap_or(0), false),
                        };
                        total += n;
                        if !here && seen.insert(*d) {
                            fr.pulled.bytes += n;
                        }
                    }
                    size = Some(total);
                }
                plan_planned(fr, "pull", e, live_here, self.guard_held, size);
            }
            return Ok(None);
        }
        // Items judged to need nothing copied are done now; those to copy,
        // once applied (a page of large files read "0/100 items" until its
        // last blob arrived).
        let to_copy = todo.len() as u64;
        self.progress
            .items
            .fetch_add((entries.len() as u64).saturating_sub(to_copy), Ordering::Relaxed);
        // Blobs first: an item becomes visible only with all its blobs.
        let mut wanted: Vec<Digest> = Vec::new();
        let mut seen = HashSet::new();
        for e in &todo {
            for d in &e.blobs {
                if seen.insert(*d) {
                    wanted.push(*d);
                }
            }
        }
        let here = self.r.ferry().present_blob_sizes(&wanted).await?;
        let need: Vec<Digest> = wanted.into_iter().filter(|d| !here.contains_key(d)).collect();
        // Each item to copy counts as gone through once its last blob is
        // stored (a page of 500 large files read 0 done until its end).
        self.start_tally(
            todo.iter()
                .map(|e| {
                    e.blobs
                        .iter()
                        .filter(|d| !here.contains_key(*d))
                        .copied()
                        .collect()
                })
                .collect(),
        );
        // What is here already is known before anything moves.
        self.skip_bytes(here.values().sum());
        let t_fetch = std::time::Instant::now();
        let fetched = self.fetch_blobs(need).await;
        let tallied = self.end_tally();
        let Fetched {
            blobs,
            bytes,
            source_bytes,
            notes,
            unsynced,
            gone,
            damaged,
        } = fetched?;
        for note in notes {
            self.log("warn", note);
        }
        fr.pulled.source_bytes += source_bytes;
        if !gone.is_empty() {
            let (kept, missing) = self
                .drop_changed_meanwhile(local, remote, todo, &gone, fr)
                .await?;
            todo = kept;
            stuck.extend(missing);
        }
        if !damaged.is_empty() {
            let (hit, kept): (Vec<&WireEntry>, Vec<&WireEntry>) = todo
                .into_iter()
                .partition(|e| e.blobs.iter().any(|d| damaged.contains_key(d)));
            for e in hit {
                let reason = e
                    .blobs
                    .iter()
                    .find_map(|d| damaged.get(d))
                    .cloned()
                    .unwrap_or_default();
                stuck.push((e.key.clone(), reason));
            }
            todo = kept;
        }
        fr.pulled.blobs += blobs;
        fr.pulled.bytes += bytes;
        let (reverted, normal): (Vec<WireEntry>, Vec<WireEntry>) =
            todo.into_iter().cloned().partition(|e| reverts.contains(&e.key));
        Ok(Some(PreparedPage {
            normal,
            reverted,
            locals,
            settled,
            stuck,
            unsynced,
            passed: to_copy.min(entries.len() as u64).saturating_sub(tallied),
            blobs,
            bytes,
            fetch_ms: t_fetch.elapsed().as_millis(),
        }))
    }

    /// The second half of [`Self::pull_entries`]: once `applying` (the
    /// page's flushes awaited, then its entries applied, see
    /// [`start_apply`]) is done, counts what became of each entry, marks
    /// the entries that could not be copied as stuck (and clears the marks
    /// of those settled) and adds the download counts.
    async fn finish_page(
        &mut self,
        local: &FeedRecord,
        remote: &FeedName,
        page: PreparedPage,
        applying: Applying,
        fr: &mut FeedReport,
    ) -> Result<(), ReplError> {
        let PreparedPage {
            normal,
            reverted,
            locals,
            mut settled,
            mut stuck,
            unsynced: _,
            passed,
            blobs,
            bytes,
            fetch_ms,
        } = page;
        let (outcomes, flush_ms, apply_ms) = applying
            .await
            .map_err(|e| ReplError::Transport(format!("applying a page: {e}")))??;
        let todo: Vec<&WireEntry> = normal.iter().chain(reverted.iter()).collect();
        for (e, o) in todo.iter().zip(outcomes) {
            let live_here = locals.get(&e.key).is_some_and(|l| l.live.is_some());
            match WireOutcome::from(o) {
                WireOutcome::Refused { reason } => {
                    stuck.push((e.key.clone(), reason));
                    continue;
                }
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
            settled.push(e.key.clone());
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
        self.record_stuck(Direction::Pull, local, remote, stuck, &settled)
            .await?;
        // Every change of the page is gone through, applied or not (left
        // out by the filter, equal here already, or stuck).
        self.progress.items.fetch_add(passed, Ordering::Relaxed);
        tracing::debug!(target: "replication", replication = %self.rec.name, feed = %local.name,
            items = todo.len(), blobs, bytes, fetch_ms, flush_ms, apply_ms, "pulled a page");
        Ok(())
    }

    /// The other side no longer serves some blobs that entries of this page
    /// need: normally because those items changed or went away there after
    /// the page was listed. Such entries are left out (their newer change
    /// comes after this page's cursor, so nothing is lost). An entry whose
    /// item is unchanged there means the blob is missing on the other side:
    /// it is returned with the reason, to be retried later.
    async fn drop_changed_meanwhile<'e>(
        &mut self,
        local: &FeedRecord,
        remote: &FeedName,
        todo: Vec<&'e WireEntry>,
        gone: &HashSet<Digest>,
        fr: &mut FeedReport,
    ) -> Result<(Vec<&'e WireEntry>, Vec<(ItemKey, String)>), ReplError> {
        let (hit, kept): (Vec<&WireEntry>, Vec<&WireEntry>) = todo
            .into_iter()
            .partition(|e| e.blobs.iter().any(|d| gone.contains(d)));
        let now = self
            .remote
            .stamps(remote, hit.iter().map(|e| e.key.clone()).collect())
            .await?;
        let outside: HashSet<usize> = now.outside.iter().map(|i| *i as usize).collect();
        let mut stuck = Vec::new();
        for (i, (e, current)) in hit.iter().zip(now.stamps).enumerate() {
            if outside.contains(&i) {
                // The other side's filter was narrowed since the page was
                // listed: the item is not to be copied (nor retried).
                fr.pulled.skipped += 1;
                self.log(
                    "info",
                    format!(
                        "{} in feed {} was left out: the other instance's include/exclude filter for this replication no longer admits it",
                        e.key, local.name
                    ),
                );
                continue;
            }
            if current.is_some_and(|(stamp, _)| stamp == e.stamp) {
                let d = e.blobs.iter().find(|d| gone.contains(d)).copied();
                stuck.push((
                    e.key.clone(),
                    format!(
                        "it needs blob {} that the other instance cannot serve (missing or damaged there: its /health and `ferry fsck` say which)",
                        d.map(|d| d.to_string()).unwrap_or_default()
                    ),
                ));
                continue;
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
        Ok((kept, stuck))
    }
}

/// A page whose blobs are here (their flushes under way) and whose entries
/// are not applied yet ([`Run::prepare_page`]).
pub(super) struct PreparedPage {
    /// Entries to apply as usual, and those that put back the other side's
    /// version over a local divergence (applied with `overwrite`).
    normal: Vec<WireEntry>,
    reverted: Vec<WireEntry>,
    /// The local entries of the page's keys before it was applied.
    locals: HashMap<ItemKey, Entry>,
    settled: Vec<ItemKey>,
    stuck: Vec<(ItemKey, String)>,
    /// Its blobs not flushed yet ([`super::fetch::Fetched::unsynced`]).
    unsynced: super::fetch::UnsyncedBlobs,
    /// Changes of the page to count as gone through once it is applied
    /// (applied or not): those it judged to copy (the others were counted
    /// when judged).
    passed: u64,
    blobs: u64,
    bytes: u64,
    fetch_ms: u128,
}

/// A page being applied in the background: each entry's outcome, and the
/// milliseconds its flushes and its apply took.
pub(super) type Applying = tokio::task::JoinHandle<Result<(Vec<ferry_core::Applied>, u128, u128), ReplError>>;

/// Applies `page` in a task of its own once its blobs are durable: one
/// flush of them all first (an item is visible only with every blob it
/// needs on disk; the folder store takes a page's blobs with one `syncfs`
/// when little else is dirty), then its entries with their original stamps — each checked as
/// its feed type checks an upload; what fails comes back as refused — and
/// the reverting ones with `overwrite`. The next page's blobs can move
/// meanwhile; pages are still applied one after the other, since the next
/// one is applied only once this one's outcome was awaited.
pub(super) fn start_apply(ferry: ferry_core::Ferry, local: FeedRecord, page: &mut PreparedPage) -> Applying {
    let normal: Vec<_> = page.normal.iter().map(WireEntry::to_change).collect();
    let reverted: Vec<_> = page.reverted.iter().map(WireEntry::to_change).collect();
    let unsynced = page.unsynced.take();
    tokio::spawn(async move {
        let t = std::time::Instant::now();
        ferry.blob_store().sync(&unsynced).await?;
        let flush_ms = t.elapsed().as_millis();
        let mut outcomes = ferry.apply_each(&local, normal, false).await?;
        if !reverted.is_empty() {
            outcomes.extend(ferry.apply_each(&local, reverted, true).await?);
        }
        Ok((outcomes, flush_ms, t.elapsed().as_millis() - flush_ms))
    })
}

/// A page of the main pull loop being applied while the next one's blobs
/// move, with the cursor (and anchor) to save once it is applied (None
/// when the page did not advance it).
struct Pending {
    page: PreparedPage,
    applying: Applying,
    cursor: Option<(i64, i64)>,
}
