//! Items an execution could not copy (a blob missing or damaged on the
//! side that sends it, a stamp too far ahead of this clock): the rest of
//! the feed goes on, and each such item is named in the report, kept as a
//! marker next to the replication's cursors, and retried by every later
//! execution until it is copied or gone.

use ferry_core::rfc3339;
use ferry_store::{FeedRecord, now_millis};
use ferry_types::{FeedName, ItemKey};

use super::*;
use crate::ReplError;

/// Items held back by the other side's filter named in one execution's
/// log per feed (the report lists them all).
const HELD_LOGGED: usize = 3;

impl Run<'_> {
    fn stuck_prefix(dir: Direction, local: &FeedRecord, remote: &FeedName) -> String {
        format!("stuck:{}", cursor_name(dir, &local.name, remote)) + ":"
    }

    /// Reads which items of this feed pair earlier executions could not
    /// copy (to retry them, and to clear them once copied).
    pub(super) async fn load_stuck(
        &mut self,
        dir: Direction,
        local: &FeedRecord,
        remote: &FeedName,
    ) -> Result<(), ReplError> {
        let prefix = Self::stuck_prefix(dir, local, remote);
        self.stuck_known = self
            .r
            .store()
            .cursors(self.rec.id, &prefix)
            .await?
            .into_iter()
            .filter_map(|(name, since)| {
                let key = ItemKey::new(name.strip_prefix(&prefix)?.to_string()).ok()?;
                Some((key, since))
            })
            .collect();
        Ok(())
    }

    /// Marks `stuck` as not copied (kept for the next execution, reported
    /// by name) and clears the marks of `copied`.
    pub(super) async fn record_stuck(
        &mut self,
        dir: Direction,
        local: &FeedRecord,
        remote: &FeedName,
        stuck: Vec<(ItemKey, String)>,
        copied: &[ItemKey],
    ) -> Result<(), ReplError> {
        let prefix = Self::stuck_prefix(dir, local, remote);
        let clear: Vec<String> = copied
            .iter()
            .filter(|k| self.stuck_known.remove(*k).is_some())
            .map(|k| format!("{prefix}{k}"))
            .collect();
        let mut set = Vec::new();
        for (key, reason) in stuck {
            let since = *self.stuck_known.entry(key.clone()).or_insert_with(now_millis);
            set.push((format!("{prefix}{key}"), since));
            // Retried and met again in the change log (deleted since, say):
            // named once.
            if self
                .report
                .stuck
                .iter()
                .any(|s| s.feed == local.name && s.key == key)
            {
                continue;
            }
            let held = reason == OUTSIDE_THEIR_FILTER;
            if held {
                // Named in the log a few at a time (every one is in the
                // report): a feed with many items outside the other
                // side's filter would otherwise fill each execution's log.
                let logged = self
                    .report
                    .stuck
                    .iter()
                    .filter(|s| s.feed == local.name && s.held)
                    .take(HELD_LOGGED + 1)
                    .count();
                if logged < HELD_LOGGED {
                    self.log(
                        "info",
                        format!("feed {}: {key} is held back: {reason}", local.name),
                    );
                } else if logged == HELD_LOGGED {
                    self.log(
                        "info",
                        format!(
                            "feed {}: more items are held back for the same reason (the execution's report lists every one)",
                            local.name
                        ),
                    );
                }
            } else {
                self.log(
                    "error",
                    format!(
                        "feed {}: {key} was not copied and will be retried: {reason}",
                        local.name
                    ),
                );
            }
            self.report.stuck.push(StuckItem {
                feed: local.name.clone(),
                key,
                reason,
                since: rfc3339(since),
                held,
            });
        }
        if !self.dry && (!set.is_empty() || !clear.is_empty()) {
            self.r.store().set_cursors(self.rec.id, &set, &clear).await?;
        }
        Ok(())
    }
}
