//! The delete guard: an execution that would delete more than the
//! configured share of a feed stops before deleting, until confirmed.
//! Deletions within an hour count together, so they cannot slip through a
//! few at a time.

use ferry_store::{FeedRecord, now_millis};

use super::*;
use crate::ReplError;

impl Run<'_> {
    pub(super) async fn guard_trips(
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
                "feed {}: stopped before deleting {pending} of {size} items{earlier}; the limit is over {:.0}% and over {} items, and nothing more was deleted. Deletions made on the other side since are counted by the next execution (within 30 s while it holds); `ferry replication plan {}` shows the count now. Confirm with `ferry replication run {} --confirm-deletes`",
                local.name,
                g.max_share * 100.0,
                g.max_items,
                self.rec.name,
                self.rec.name
            ),
        );
        Ok(true)
    }

    pub(super) async fn recent_deletions(&self, key: &str) -> Result<u64, ReplError> {
        let store = self.r.store();
        let start = store.cursor(self.rec.id, &format!("{key}:since")).await?;
        if now_millis() - start > GUARD_WINDOW_MS {
            return Ok(0);
        }
        Ok(store.cursor(self.rec.id, &format!("{key}:count")).await?.max(0) as u64)
    }

    /// Adds to the deletions counted against the guard (or, after a
    /// confirmation, starts counting afresh).
    pub(super) async fn record_deletions(&self, key: &str, n: u64) -> Result<(), ReplError> {
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
}
