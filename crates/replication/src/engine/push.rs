//! The push phase: this side's changes go to the other side, through
//! `stamps`, `blobs/missing`, `PUT blobs/DIGEST` and `apply`.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use ferry_store::FeedRecord;
use ferry_types::{Digest, FeedName, ItemKey};

use super::*;
use crate::ReplError;

/// Largest JSON body of one `apply` request (the incoming side refuses
/// bodies over 16 MiB).
const APPLY_BYTES: usize = 4 << 20;

impl Run<'_> {
    pub(super) async fn push_feed(
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

    async fn push_feed_inner(
        &mut self,
        local: &FeedRecord,
        remote: &FeedName,
        fr: &mut FeedReport,
    ) -> Result<(), ReplError> {
        let cursor_name = cursor_name(Direction::Push, &local.name, remote);
        self.guard_held = false;
        let meta = self.r.ferry().metadata().clone();
        let mut since = if self.full {
            0
        } else {
            self.r.store().cursor(self.rec.id, &cursor_name).await?
        };
        let horizon = self.r.store().horizon(local.id).await?;
        // The other side went back (seen by the pull phase): what it lost,
        // including what it wrote itself, is compared and sent in full.
        if self.full || since < horizon || self.remote_went_back {
            let last = meta.last_seq(local.id).await?;
            // Every tombstone here is compared: those that would remove a
            // live item there meet the delete guard first.
            if !self.dry && self.tombstones_trip_the_guard(local, remote).await? {
                return Ok(());
            }
            // Every live item is gone through (tombstones are added as
            // their pages come), with every byte they reference.
            let live = self.r.store().live_count(local.id).await?;
            self.expect_items(live);
            if !self.dry && live > 0 && self.filter.is_everything() {
                let ahead = self.r.store().live_bytes_after(local.id, 0).await?;
                self.begin_feed_bytes(ahead);
            }
            // Live items met past the count taken at the start were written
            // during the execution: they join the items and bytes to go.
            let mut live_seen = 0u64;
            let mut after: Option<ItemKey> = None;
            loop {
                let page = self.r.store().entries(local.id, after.as_ref(), PAGE).await?;
                let done = page.len() < PAGE;
                after = page.last().map(|e| e.key.clone());
                self.expect_items(page.iter().filter(|e| e.live.is_none()).count() as u64);
                let wire: Vec<WireEntry> = page.into_iter().map(WireEntry::from).collect();
                let page_live = wire.iter().filter(|e| !e.deleted).count() as u64;
                let past = (live_seen + page_live).saturating_sub(live.max(live_seen));
                live_seen += page_live;
                if past > 0 {
                    self.expect_items(past);
                    let late = wire.iter().filter(|e| !e.deleted).rev().take(past as usize);
                    let n = self.bytes_of(late).await?;
                    self.add_feed_bytes(n);
                }
                self.push_entries(local, remote, wire, fr).await?;
                if done {
                    break;
                }
            }
            self.end_feed_bytes();
            if !self.dry {
                self.r.store().set_cursor(self.rec.id, &cursor_name, last).await?;
            }
            return Ok(());
        }
        // Items earlier executions could not send, as they are here now.
        let mut retried: Vec<Vec<WireEntry>> = Vec::new();
        if !self.dry {
            self.load_stuck(Direction::Push, local, remote).await?;
            let keys: Vec<ItemKey> = self.stuck_known.keys().cloned().collect();
            for chunk in keys.chunks(PAGE) {
                let found = self.r.store().entries_for(local.id, chunk).await?;
                let absent: Vec<ItemKey> = chunk
                    .iter()
                    .filter(|k| !found.iter().any(|e| &e.key == *k))
                    .cloned()
                    .collect();
                self.record_stuck(Direction::Push, local, remote, Vec::new(), &absent)
                    .await?;
                retried.push(found.into_iter().map(WireEntry::from).collect());
            }
            // Deletions held back until now (by the other side's filter,
            // say) count toward the delete guard like new ones.
            if self
                .retried_deletions_trip_the_guard(local, remote, since, &retried)
                .await?
            {
                return Ok(());
            }
        }
        let mut known_end = meta.last_seq(local.id).await?;
        let pending = known_end - since;
        let retried_items = retried.iter().map(Vec::len).sum::<usize>() as u64;
        self.expect_items(pending.max(0) as u64 + retried_items);
        // Counted for the whole feed: with a filter, what will move is
        // unknown (no byte estimate, items only). The retried items lie
        // behind the cursor, most of them held back by the other side's
        // filter: their bytes count once the other side is asked and they
        // are to be sent, not before (a held item's bytes never go).
        if !self.dry && (pending > 0 || retried_items > 0) && self.filter.is_everything() {
            let ahead = self.r.store().live_bytes_after(local.id, since).await?;
            self.begin_feed_bytes(ahead);
            self.uncounted = retried.iter().flatten().map(|e| e.key.clone()).collect();
        }
        for wire in retried {
            self.push_entries(local, remote, wire, fr).await?;
        }
        // Met again in the change log, an item counts as the log counted it.
        self.uncounted.clear();
        let mut guard_checked = false;
        loop {
            let changes = meta.changes_since(local.id, since, PAGE).await?;
            let Some(last) = changes.last().map(|c| c.seq) else {
                self.end_feed_bytes();
                return Ok(());
            };
            // Changes written during the execution, past the end counted at
            // its start: they join the items and bytes to go (not counted,
            // the moved bytes would run past the total and leave it unknown).
            let late: HashSet<ItemKey> = changes
                .iter()
                .filter(|c| c.seq > known_end)
                .map(|c| c.key.clone())
                .collect();
            let late_changes = changes.iter().filter(|c| c.seq > known_end).count() as u64;
            known_end = known_end.max(last);
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
            if late_changes > 0 && !self.dry {
                self.expect_items(late_changes);
                let n = self
                    .bytes_of(entries.iter().filter(|e| late.contains(&e.key)))
                    .await?;
                self.add_feed_bytes(n);
            }
            if !guard_checked
                && self.cfg.mode.flows.delete_remote
                && !self.confirm_deletes
                && entries.iter().any(|e| e.deleted)
            {
                guard_checked = true;
                let n = self.count_push_deletions(local, remote, since).await?;
                if n > 0 && self.push_guard_trips(local, remote, n).await? {
                    if !self.dry {
                        return Ok(());
                    }
                    // A plan goes on, listing the deletions as held.
                    self.guard_held = true;
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

    /// Whether the local tombstones (within the filter) that would remove
    /// a live item on the other side trip the delete guard, for a push
    /// that compares every entry.
    async fn tombstones_trip_the_guard(
        &mut self,
        local: &FeedRecord,
        remote: &FeedName,
    ) -> Result<bool, ReplError> {
        if !self.cfg.mode.flows.delete_remote || self.confirm_deletes {
            return Ok(false);
        }
        let mut keys: Vec<ItemKey> = Vec::new();
        let mut after: Option<ItemKey> = None;
        loop {
            let page = self.r.store().entries(local.id, after.as_ref(), PAGE).await?;
            let done = page.len() < PAGE;
            after = page.last().map(|e| e.key.clone());
            keys.extend(
                page.into_iter()
                    .filter(|e| e.live.is_none() && self.filter.admits(local.feed_type, &e.key))
                    .map(|e| e.key),
            );
            if done {
                break;
            }
        }
        let live = self.live_there(remote, &keys).await?;
        Ok(live > 0 && self.push_guard_trips(local, remote, live).await?)
    }

    /// Whether the deletions among `retried` (items earlier executions
    /// could not push) that would remove a live item on the other side,
    /// with those the change log holds after `since`, trip the delete
    /// guard (which then says so and stops the feed pair).
    async fn retried_deletions_trip_the_guard(
        &mut self,
        local: &FeedRecord,
        remote: &FeedName,
        since: i64,
        retried: &[Vec<WireEntry>],
    ) -> Result<bool, ReplError> {
        if !self.cfg.mode.flows.delete_remote || self.confirm_deletes {
            return Ok(false);
        }
        let keys: Vec<ItemKey> = retried
            .iter()
            .flatten()
            .filter(|e| e.deleted && self.filter.admits(local.feed_type, &e.key))
            .map(|e| e.key.clone())
            .collect();
        let live = self.live_there(remote, &keys).await?;
        if live == 0 {
            return Ok(false);
        }
        let n = live + self.count_push_deletions(local, remote, since).await?;
        self.push_guard_trips(local, remote, n).await
    }

    /// Whether pushing `n` deletions of live items there trips the delete
    /// guard, against the other side's feed size (it then says so).
    async fn push_guard_trips(
        &mut self,
        local: &FeedRecord,
        remote: &FeedName,
        n: u64,
    ) -> Result<bool, ReplError> {
        let size = self.remote.digest(remote, &[], &[]).await?.items;
        let key = guard_key("push", local, remote);
        self.guard_trips(local, &key, n, size).await
    }

    /// How many of `keys` the other side holds as live items (a tombstone
    /// of one of them would delete something there).
    async fn live_there(&self, remote: &FeedName, keys: &[ItemKey]) -> Result<u64, ReplError> {
        let mut live = 0;
        for chunk in keys.chunks(1000) {
            let stamps = self.remote.stamps(remote, chunk.to_vec()).await?;
            live += stamps
                .stamps
                .iter()
                .filter(|s| matches!(s, Some((_, false))))
                .count() as u64;
        }
        Ok(live)
    }

    /// How many items the deletions to push after `since` would remove on
    /// the other side: the keys whose latest local change is a deletion
    /// (within the filter), of which the other side holds a live item.
    async fn count_push_deletions(
        &self,
        local: &FeedRecord,
        remote: &FeedName,
        mut since: i64,
    ) -> Result<u64, ReplError> {
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
        // Only a tombstone whose item the other side holds deletes
        // anything there: tombstones of items it never had (or deleted
        // itself, the pulled ones among them) do not count.
        let keys: Vec<ItemKey> = keys.into_iter().collect();
        self.live_there(remote, &keys).await
    }

    fn wanted_by_remote(&self, local: &FeedRecord, e: &WireEntry) -> bool {
        let f = self.cfg.mode.flows;
        // What the other instance wrote, it has (or has something newer),
        // unless it went back.
        (self.remote_went_back || Some(e.stamp.origin) != self.remote_id)
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
        if self.dry {
            for e in entries.iter().filter(|e| !self.wanted_by_remote(local, e)) {
                let why = if !self.remote_went_back && Some(e.stamp.origin) == self.remote_id {
                    "written by the other instance: it has this version or a newer one".to_string()
                } else {
                    let flow = if e.deleted {
                        "delete items there"
                    } else {
                        "copy items there"
                    };
                    not_carried(&self.filter, local.feed_type, e, flow)
                };
                fr.plan_item(true, "push", &e.key, "none", Some(why));
            }
        }
        // Every change of the page is gone through, sent or not (left out
        // by the filter, or the same there already).
        let passed = entries.len() as u64;
        // The blobs of the page's live items: those of items not sent
        // (left out by a filter, held back, the same there) are counted
        // as needing no transfer, so the bytes to go stay true.
        let page_blobs: HashSet<Digest> = if self.feed_bytes.is_some() && !self.dry {
            entries
                .iter()
                .filter(|e| !e.deleted && !self.uncounted.contains(&e.key))
                .flat_map(|e| e.blobs.iter().copied())
                .collect()
        } else {
            HashSet::new()
        };
        let admitted: Vec<WireEntry> = entries
            .into_iter()
            .filter(|e| self.wanted_by_remote(local, e))
            .collect();
        if admitted.is_empty() {
            self.skip_unsent(page_blobs, &[]).await?;
            self.progress.items.fetch_add(passed, Ordering::Relaxed);
            return Ok(());
        }
        let StampList {
            stamps: theirs,
            outside,
        } = self
            .remote
            .stamps(remote, admitted.iter().map(|e| e.key.clone()).collect())
            .await?;
        let outside: HashSet<usize> = outside.into_iter().map(|i| i as usize).collect();
        let mut todo = Vec::new();
        let mut live_there = Vec::new();
        // Keys with nothing (more) to send: their stuck marks, if any, go.
        let mut settled: Vec<ItemKey> = Vec::new();
        // Keys that cannot be copied now (kept, retried by later executions).
        let mut stuck = Vec::new();
        for (i, (e, t)) in admitted.into_iter().zip(theirs).enumerate() {
            if outside.contains(&i) {
                // The other side would refuse the entry: neither it nor
                // its blobs are sent (they would only wait there for gc).
                // Held back (retried by later executions, which do not
                // fail for it) until that side's filter admits it.
                if self.dry {
                    fr.plan_item(
                        true,
                        "push",
                        &e.key,
                        "none",
                        Some(OUTSIDE_THEIR_FILTER.to_string()),
                    );
                } else {
                    stuck.push((e.key.clone(), OUTSIDE_THEIR_FILTER.to_string()));
                }
                continue;
            }
            if matches!(t, Some((s, _)) if s >= e.stamp) {
                settled.push(e.key.clone());
            }
            match t {
                Some((s, _)) if s == e.stamp => {
                    fr.pushed.skipped += 1;
                    fr.plan_item(
                        self.dry,
                        "push",
                        &e.key,
                        "none",
                        Some(super::same_on_both_sides(&e)),
                    );
                }
                Some((s, _)) if s > e.stamp => {
                    let why = format!(
                        "older stamp: the other instance has a newer version ({s} after {})",
                        e.stamp
                    );
                    fr.plan_item(self.dry, "push", &e.key, "none", Some(why));
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
            // Sizes: each blob once; what the other side holds is not moved.
            let mut digests: Vec<Digest> = todo
                .iter()
                .filter(|e| !e.deleted)
                .flat_map(|e| e.blobs.iter().copied())
                .collect();
            digests.sort();
            digests.dedup();
            let mut missing: HashSet<Digest> = if digests.is_empty() {
                HashSet::new()
            } else {
                self.remote.missing(digests).await?.digests.into_iter().collect()
            };
            for (e, live) in todo.iter().zip(&live_there) {
                count_planned(&mut fr.pushed, e, *live);
                let mut size = None;
                if !e.deleted {
                    let mut total = 0u64;
                    for d in &e.blobs {
                        let n = self.r.ferry().blob_size(d).await?.unwrap_or(0);
                        total += n;
                        if missing.remove(d) {
                            fr.pushed.bytes += n;
                        }
                    }
                    size = Some(total);
                }
                plan_planned(fr, "push", e, *live, self.guard_held, size);
            }
            return Ok(());
        }
        // Retried items to be sent after all: their bytes join the budget.
        if !self.uncounted.is_empty() {
            let late: Vec<&WireEntry> = todo.iter().filter(|e| self.uncounted.contains(&e.key)).collect();
            let n = self.bytes_of(late.into_iter()).await?;
            self.add_feed_bytes(n);
        }
        self.skip_unsent(page_blobs, &todo).await?;
        // Items judged to need nothing sent are done now; those to send,
        // once their last blob has left (tallied), or else once they are
        // applied there (a page of large files read "0/80 items" until
        // its last upload ended).
        let to_send = todo.len() as u64;
        self.progress
            .items
            .fetch_add(passed.saturating_sub(to_send), Ordering::Relaxed);
        let passed = passed.min(to_send);
        if todo.is_empty() {
            self.progress.items.fetch_add(passed, Ordering::Relaxed);
            return self
                .record_stuck(Direction::Push, local, remote, stuck, &settled)
                .await;
        }
        let mut digests: Vec<Digest> = todo.iter().flat_map(|e| e.blobs.iter().copied()).collect();
        digests.sort();
        digests.dedup();
        let DigestList {
            digests: missing,
            partial,
        } = if digests.is_empty() {
            DigestList::default()
        } else {
            self.remote.missing(digests.clone()).await?
        };
        // Bytes an upload that broke off left there: sent from there on.
        let kept: HashMap<Digest, u64> = partial.into_iter().map(|w| (w.digest, w.offset)).collect();
        if self.feed_bytes.is_some() {
            // What the other side holds already needs no transfer.
            let held: Vec<Digest> = {
                let missing: HashSet<&Digest> = missing.iter().collect();
                digests.into_iter().filter(|d| !missing.contains(d)).collect()
            };
            let found: u64 = self.r.ferry().present_blob_sizes(&held).await?.values().sum();
            self.skip_bytes(found);
        }
        // A blob that is damaged here holds back the items that need it
        // (named, retried by later executions); the others go on.
        let mut damaged: HashMap<Digest, String> = HashMap::new();
        let mut send = Vec::with_capacity(missing.len());
        for d in &missing {
            match self.r.ferry().stored_blob_size(d).await {
                Ok(size) => send.push((*d, size, kept.get(d).copied().filter(|o| *o < size).unwrap_or(0))),
                Err(e @ ferry_core::CoreError::Damaged(_)) => {
                    damaged.insert(*d, e.to_string());
                }
                Err(e) => return Err(e.into()),
            }
        }
        // Each item to send counts as gone through once its last missing
        // blob has left (those missing none, now).
        {
            let leaving: HashSet<Digest> = send.iter().map(|(d, _, _)| *d).collect();
            self.start_tally(
                todo.iter()
                    .map(|e| e.blobs.iter().filter(|d| leaving.contains(*d)).copied().collect())
                    .collect(),
            );
        }
        let sent = self.send_blobs(send, fr).await;
        let tallied = self.end_tally();
        let passed = passed.saturating_sub(tallied);
        damaged.extend(sent?);
        if !damaged.is_empty() {
            let mut kept_live = Vec::new();
            let mut kept = Vec::new();
            for (e, live) in todo.into_iter().zip(live_there) {
                match e.blobs.iter().find_map(|d| damaged.get(d)) {
                    Some(reason) => stuck.push((e.key.clone(), reason.clone())),
                    None => {
                        kept.push(e);
                        kept_live.push(live);
                    }
                }
            }
            todo = kept;
            live_there = kept_live;
        }
        if todo.is_empty() {
            self.progress.items.fetch_add(passed, Ordering::Relaxed);
            return self
                .record_stuck(Direction::Push, local, remote, stuck, &settled)
                .await;
        }
        // Sent in batches of at most APPLY_BYTES of JSON (the other side
        // reads an apply body whole, and caps it).
        let mut outcomes = Vec::with_capacity(todo.len());
        let mut batch: Vec<WireEntry> = Vec::new();
        let mut batch_bytes = 0;
        for e in &todo {
            let size = serde_json::to_vec(e).map_or(0, |v| v.len());
            if !batch.is_empty() && batch_bytes + size > APPLY_BYTES {
                outcomes.extend(
                    self.remote
                        .apply(remote, std::mem::take(&mut batch))
                        .await?
                        .outcomes,
                );
                batch_bytes = 0;
            }
            batch_bytes += size;
            batch.push(e.clone());
        }
        if !batch.is_empty() {
            outcomes.extend(self.remote.apply(remote, batch).await?.outcomes);
        }
        for ((e, live), o) in todo.iter().zip(live_there).zip(outcomes) {
            match o {
                WireOutcome::Refused { reason } => {
                    stuck.push((e.key.clone(), format!("the other instance refused it: {reason}")));
                    continue;
                }
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
            settled.push(e.key.clone());
        }
        self.progress.items.fetch_add(passed, Ordering::Relaxed);
        self.record_stuck(Direction::Push, local, remote, stuck, &settled)
            .await
    }

    /// Counts the bytes of `page_blobs` that no entry of `todo` needs as
    /// needing no transfer ([`Run::skip_bytes`]): blobs of items this page
    /// does not send.
    async fn skip_unsent(
        &self,
        mut page_blobs: HashSet<Digest>,
        todo: &[WireEntry],
    ) -> Result<(), ReplError> {
        for e in todo {
            for d in &e.blobs {
                page_blobs.remove(d);
            }
        }
        if page_blobs.is_empty() {
            return Ok(());
        }
        let unsent: Vec<Digest> = page_blobs.into_iter().collect();
        let n: u64 = self.r.ferry().present_blob_sizes(&unsent).await?.values().sum();
        self.skip_bytes(n);
        Ok(())
    }
}
