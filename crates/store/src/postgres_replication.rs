//! [`ReplicationStore`] on PostgreSQL.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use ferry_types::{Digest, InstanceId, ItemKey};
use sqlx::Row;
use sqlx::postgres::PgRow;

use crate::postgres::{bad_row, decode_blobs, digest_from, notify, stamp_from, store_tx};
use crate::replication::*;
use crate::{FeedId, PgStore, StoreError, now_millis};

fn json_text(v: &serde_json::Value) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Backend(e.to_string()))
}

fn replication_record(r: &PgRow) -> Result<ReplicationRecord, StoreError> {
    Ok(ReplicationRecord {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        config: serde_json::from_str(r.try_get::<&str, _>("config")?)
            .map_err(|_| bad_row("replication config"))?,
        created_at: r.try_get("created_at")?,
    })
}

const TOKEN_COLS: &str = "id, replication_id, hash, created_at, revoked";

fn token_record(r: &PgRow) -> Result<SyncTokenRecord, StoreError> {
    Ok(SyncTokenRecord {
        id: r.try_get("id")?,
        replication_id: r.try_get("replication_id")?,
        hash: r
            .try_get::<Vec<u8>, _>("hash")?
            .try_into()
            .map_err(|_| bad_row("token hash"))?,
        created_at: r.try_get("created_at")?,
        revoked: r.try_get("revoked")?,
    })
}

const ENTRY_COLS: &str = "key, deleted, meta, blobs, stamp_time, stamp_origin, created_at, downloads";

fn entry_record(r: &PgRow) -> Result<Entry, StoreError> {
    let live = if r.try_get::<bool, _>("deleted")? {
        None
    } else {
        Some(LiveEntry {
            meta: serde_json::from_str(r.try_get::<&str, _>("meta")?)
                .map_err(|_| bad_row("item metadata"))?,
            blobs: decode_blobs(r.try_get::<&str, _>("blobs")?)?,
            created_at: r.try_get("created_at")?,
            downloads: r.try_get::<i64, _>("downloads")? as u64,
        })
    };
    Ok(Entry {
        key: ItemKey::new(r.try_get::<String, _>("key")?).map_err(|_| bad_row("item key"))?,
        stamp: stamp_from(r.try_get("stamp_time")?, r.try_get::<&str, _>("stamp_origin")?)?,
        live,
    })
}

fn digests_param(digests: &[Digest]) -> Vec<Vec<u8>> {
    digests.iter().map(|d| d.as_bytes().to_vec()).collect()
}

/// The log line an execution cut by a stop of its instance ends with.
const INTERRUPTED: &str = "interrupted: the instance stopped while this execution ran; what it applied stays, \
                           and the next execution goes on from there";

#[async_trait]
impl ReplicationStore for PgStore {
    async fn create_replication(
        &self,
        name: &str,
        config: serde_json::Value,
    ) -> Result<ReplicationRecord, StoreError> {
        let now = now_millis();
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO replications (name, config, created_at) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO NOTHING RETURNING id",
        )
        .bind(name)
        .bind(json_text(&config)?)
        .bind(now)
        .fetch_optional(self.pool())
        .await?;
        let Some(id) = id else {
            return Err(StoreError::Conflict(format!("replication {name} already exists")));
        };
        Ok(ReplicationRecord {
            id,
            name: name.to_string(),
            config,
            created_at: now,
        })
    }

    async fn update_replication(&self, name: &str, config: serde_json::Value) -> Result<(), StoreError> {
        let n = sqlx::query("UPDATE replications SET config = $2 WHERE name = $1")
            .bind(name)
            .bind(json_text(&config)?)
            .execute(self.pool())
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound(format!("replication {name}")));
        }
        self.sessions_changed().await
    }

    async fn replication(&self, name: &str) -> Result<Option<ReplicationRecord>, StoreError> {
        sqlx::query("SELECT id, name, config, created_at FROM replications WHERE name = $1")
            .bind(name)
            .fetch_optional(self.pool())
            .await?
            .as_ref()
            .map(replication_record)
            .transpose()
    }

    async fn replications(&self) -> Result<Vec<ReplicationRecord>, StoreError> {
        sqlx::query("SELECT id, name, config, created_at FROM replications ORDER BY name")
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(replication_record)
            .collect()
    }

    async fn replication_by_id(&self, id: i64) -> Result<Option<ReplicationRecord>, StoreError> {
        sqlx::query("SELECT id, name, config, created_at FROM replications WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .as_ref()
            .map(replication_record)
            .transpose()
    }

    async fn delete_replication(&self, name: &str) -> Result<bool, StoreError> {
        let n = sqlx::query("DELETE FROM replications WHERE name = $1")
            .bind(name)
            .execute(self.pool())
            .await?
            .rows_affected();
        if n > 0 {
            self.sessions_changed().await?;
        }
        Ok(n > 0)
    }

    async fn add_sync_token(&self, replication: i64, id: &str, hash: [u8; 32]) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO sync_tokens (id, replication_id, hash, created_at) VALUES ($1, $2, $3, $4)")
            .bind(id)
            .bind(replication)
            .bind(&hash[..])
            .bind(now_millis())
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn sync_token(&self, id: &str) -> Result<Option<SyncTokenRecord>, StoreError> {
        sqlx::query(&format!("SELECT {TOKEN_COLS} FROM sync_tokens WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .as_ref()
            .map(token_record)
            .transpose()
    }

    async fn sync_tokens(&self, replication: i64) -> Result<Vec<SyncTokenRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {TOKEN_COLS} FROM sync_tokens WHERE replication_id = $1 ORDER BY created_at, id"
        ))
        .bind(replication)
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(token_record)
        .collect()
    }

    async fn revoke_sync_token(&self, replication: i64, id: &str) -> Result<bool, StoreError> {
        let n = sqlx::query("UPDATE sync_tokens SET revoked = true WHERE replication_id = $1 AND id = $2")
            .bind(replication)
            .bind(id)
            .execute(self.pool())
            .await?
            .rows_affected();
        if n > 0 {
            self.sessions_changed().await?;
        }
        Ok(n > 0)
    }

    async fn cursor(&self, replication: i64, name: &str) -> Result<i64, StoreError> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT value FROM cursors WHERE replication_id = $1 AND name = $2")
                .bind(replication)
                .bind(name)
                .fetch_optional(self.pool())
                .await?;
        Ok(v.unwrap_or(0))
    }

    async fn set_cursor(&self, replication: i64, name: &str, value: i64) -> Result<(), StoreError> {
        self.set_cursors(replication, &[(name.to_string(), value)], &[])
            .await
    }

    async fn set_cursors(
        &self,
        replication: i64,
        set: &[(String, i64)],
        clear: &[String],
    ) -> Result<(), StoreError> {
        store_tx!(self, bookkeeping, |c| async {
            for (name, value) in set {
                sqlx::query(
                    "INSERT INTO cursors (replication_id, name, value) VALUES ($1, $2, $3)
                     ON CONFLICT (replication_id, name) DO UPDATE SET value = EXCLUDED.value",
                )
                .bind(replication)
                .bind(name)
                .bind(*value)
                .execute(&mut *c)
                .await?;
            }
            if !clear.is_empty() {
                sqlx::query("DELETE FROM cursors WHERE replication_id = $1 AND name = ANY($2)")
                    .bind(replication)
                    .bind(clear)
                    .execute(&mut *c)
                    .await?;
            }
            Ok(())
        })
    }

    async fn cursors(&self, replication: i64, prefix: &str) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, value FROM cursors WHERE replication_id = $1 AND name >= $2 AND name < $3 ORDER BY name",
        )
        .bind(replication)
        .bind(prefix)
        .bind(crate::prefix_end(prefix))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("name")?, r.try_get("value")?)))
            .collect()
    }

    async fn save_peer(
        &self,
        replication: i64,
        instance: &str,
        state: serde_json::Value,
    ) -> Result<(), StoreError> {
        let state = json_text(&state)?;
        store_tx!(self, bookkeeping, |c| async {
            sqlx::query(
                "INSERT INTO replication_peers (replication_id, instance, state) VALUES ($1, $2, $3)
                 ON CONFLICT (replication_id, instance) DO UPDATE SET state = EXCLUDED.state",
            )
            .bind(replication)
            .bind(instance)
            .bind(&state)
            .execute(&mut *c)
            .await?;
            Ok(())
        })
    }

    async fn peers(&self, replication: i64) -> Result<Vec<(String, serde_json::Value)>, StoreError> {
        let rows = sqlx::query(
            "SELECT instance, state FROM replication_peers WHERE replication_id = $1 ORDER BY instance",
        )
        .bind(replication)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let state = serde_json::from_str(r.try_get::<&str, _>("state")?)
                    .map_err(|e| StoreError::Backend(format!("replication peer state: {e}")))?;
                Ok((r.try_get("instance")?, state))
            })
            .collect()
    }

    async fn peer(&self, replication: i64, instance: &str) -> Result<Option<serde_json::Value>, StoreError> {
        let state: Option<String> = sqlx::query_scalar(
            "SELECT state FROM replication_peers WHERE replication_id = $1 AND instance = $2",
        )
        .bind(replication)
        .bind(instance)
        .fetch_optional(self.pool())
        .await?;
        state
            .map(|s| {
                serde_json::from_str(&s)
                    .map_err(|e| StoreError::Backend(format!("replication peer state: {e}")))
            })
            .transpose()
    }

    async fn forget_peer(&self, replication: i64, instance: &str) -> Result<bool, StoreError> {
        let n = sqlx::query("DELETE FROM replication_peers WHERE replication_id = $1 AND instance = $2")
            .bind(replication)
            .bind(instance)
            .execute(self.pool())
            .await?
            .rows_affected();
        Ok(n > 0)
    }

    async fn start_execution(&self, replication: i64, trigger: &str) -> Result<i64, StoreError> {
        store_tx!(self, bookkeeping, |c| async {
            Ok(sqlx::query_scalar(
                "INSERT INTO executions (replication_id, trigger, started_at, report) VALUES ($1, $2, $3, '{}') RETURNING id",
            )
            .bind(replication)
            .bind(trigger)
            .bind(now_millis())
            .fetch_one(&mut *c)
            .await?)
        })
    }

    async fn finish_execution(
        &self,
        id: i64,
        outcome: &str,
        report: serde_json::Value,
        holder: &str,
    ) -> Result<(), StoreError> {
        let report = json_text(&report)?;
        store_tx!(self, bookkeeping, |c| async {
            let replication: Option<i64> = sqlx::query_scalar(
                "UPDATE executions SET ended_at = $2, outcome = $3, report = $4
                 WHERE id = $1 AND outcome IS NULL
                   AND NOT EXISTS (SELECT 1 FROM execution_leases l WHERE l.replication_id = executions.replication_id
                                   AND l.holder <> $5 AND l.until >= $2)
                 RETURNING replication_id",
            )
            .bind(id)
            .bind(now_millis())
            .bind(outcome)
            .bind(&report)
            .bind(holder)
            .fetch_optional(&mut *c)
            .await?;
            if let Some(replication) = replication {
                // Keep the newest 200 executions per replication.
                sqlx::query(
                    "DELETE FROM executions WHERE replication_id = $1 AND id NOT IN
                     (SELECT id FROM executions WHERE replication_id = $1 ORDER BY id DESC LIMIT 200)",
                )
                .bind(replication)
                .execute(&mut *c)
                .await?;
            }
            Ok(())
        })
    }

    async fn save_execution_report(
        &self,
        id: i64,
        report: serde_json::Value,
        holder: &str,
    ) -> Result<(), StoreError> {
        let report = json_text(&report)?;
        store_tx!(self, bookkeeping, |c| async {
            sqlx::query(
                "UPDATE executions SET report = $3
                 WHERE id = $1 AND outcome IS NULL
                   AND NOT EXISTS (SELECT 1 FROM execution_leases l WHERE l.replication_id = executions.replication_id
                                   AND l.holder <> $4 AND l.until >= $2)",
            )
            .bind(id)
            .bind(now_millis())
            .bind(&report)
            .bind(holder)
            .execute(&mut *c)
            .await?;
            Ok(())
        })
    }

    async fn request_execution_stop(&self, replication: i64, by: &str) -> Result<Option<i64>, StoreError> {
        store_tx!(self, bookkeeping, |c| async {
            let id: Option<i64> = sqlx::query_scalar(
                "UPDATE executions SET stop_by = $2
                 WHERE id = (SELECT id FROM executions WHERE replication_id = $1 AND outcome IS NULL
                             ORDER BY id DESC LIMIT 1)
                 RETURNING id",
            )
            .bind(replication)
            .bind(by)
            .fetch_optional(&mut *c)
            .await?;
            if let Some(id) = id {
                crate::postgres::notify(&mut *c, format!("s {id}")).await?;
            }
            Ok(id)
        })
    }

    async fn execution_stop_request(&self, id: i64) -> Result<Option<String>, StoreError> {
        let by: Option<Option<String>> = sqlx::query_scalar("SELECT stop_by FROM executions WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        Ok(by.flatten())
    }

    async fn close_interrupted_executions(&self, holder: &str, now: i64) -> Result<u64, StoreError> {
        store_tx!(self, bookkeeping, |c| close_running(c, None, holder, now, None))
    }

    async fn take_execution_lease(
        &self,
        replication: i64,
        holder: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, StoreError> {
        store_tx!(self, bookkeeping, |c| async {
            // The replication's row serializes nodes racing for its lease.
            let exists: Option<i64> =
                sqlx::query_scalar("SELECT id FROM replications WHERE id = $1 FOR UPDATE")
                    .bind(replication)
                    .fetch_optional(&mut *c)
                    .await?;
            if exists.is_none() {
                return Err(StoreError::NotFound(format!("replication id {replication}")));
            }
            let current = sqlx::query("SELECT holder, until FROM execution_leases WHERE replication_id = $1")
                .bind(replication)
                .fetch_optional(&mut *c)
                .await?;
            let current: Option<(String, i64)> = match current {
                Some(r) => Some((r.try_get("holder")?, r.try_get("until")?)),
                None => None,
            };
            match &current {
                Some((h, u)) if h != holder && *u >= now => return Ok(false),
                Some((h, _)) if h == holder => {}
                // Taken over (or first taken): what the last holder left
                // running is the new holder's to go on with (adopt_execution).
                _ => {}
            }
            sqlx::query(
                "INSERT INTO execution_leases (replication_id, holder, until) VALUES ($1, $2, $3)
                 ON CONFLICT (replication_id) DO UPDATE SET holder = EXCLUDED.holder, until = EXCLUDED.until",
            )
            .bind(replication)
            .bind(holder)
            .bind(until)
            .execute(&mut *c)
            .await?;
            Ok(true)
        })
    }

    async fn adopt_execution(
        &self,
        replication: i64,
        holder: &str,
        now: i64,
    ) -> Result<Option<i64>, StoreError> {
        store_tx!(self, bookkeeping, |c| async {
            let held: Option<i32> = sqlx::query_scalar(
                "SELECT 1 FROM execution_leases WHERE replication_id = $1 AND holder = $2 AND until >= $3 FOR UPDATE",
            )
            .bind(replication)
            .bind(holder)
            .bind(now)
            .fetch_optional(&mut *c)
            .await?;
            if held.is_none() {
                return Ok(None);
            }
            let newest: Option<i64> = sqlx::query_scalar(
                "SELECT max(id) FROM executions WHERE replication_id = $1 AND outcome IS NULL",
            )
            .bind(replication)
            .fetch_one(&mut *c)
            .await?;
            if let Some(id) = newest {
                close_running(c, Some(replication), holder, now, Some(id)).await?;
            }
            Ok(newest)
        })
    }

    async fn release_execution_lease(&self, replication: i64, holder: &str) -> Result<(), StoreError> {
        store_tx!(self, bookkeeping, |c| async {
            sqlx::query("DELETE FROM execution_leases WHERE replication_id = $1 AND holder = $2")
                .bind(replication)
                .bind(holder)
                .execute(&mut *c)
                .await?;
            Ok(())
        })
    }

    fn shared_by_nodes(&self) -> bool {
        true
    }

    async fn executions(&self, replication: i64, limit: usize) -> Result<Vec<ExecutionRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, replication_id, trigger, started_at, ended_at, outcome, report FROM executions
             WHERE replication_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(replication)
        .bind(limit as i64)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ExecutionRecord {
                    id: r.try_get("id")?,
                    replication_id: r.try_get("replication_id")?,
                    trigger: r.try_get("trigger")?,
                    started_at: r.try_get("started_at")?,
                    ended_at: r.try_get("ended_at")?,
                    outcome: r.try_get("outcome")?,
                    report: serde_json::from_str(r.try_get::<&str, _>("report")?)
                        .map_err(|_| bad_row("execution report"))?,
                })
            })
            .collect()
    }

    async fn entries_for(&self, feed: FeedId, keys: &[ItemKey]) -> Result<Vec<Entry>, StoreError> {
        let names: Vec<&str> = keys.iter().map(|k| k.as_str()).collect();
        let rows = sqlx::query(&format!(
            "SELECT {ENTRY_COLS} FROM items WHERE feed_id = $1 AND key = ANY($2)"
        ))
        .bind(feed)
        .bind(&names)
        .fetch_all(self.pool())
        .await?;
        let mut found: HashMap<String, Entry> = HashMap::with_capacity(rows.len());
        for r in &rows {
            let e = entry_record(r)?;
            found.insert(e.key.as_str().to_string(), e);
        }
        // In the order asked, as SQLite answers.
        Ok(names.iter().filter_map(|k| found.get(*k).cloned()).collect())
    }

    async fn entries(
        &self,
        feed: FeedId,
        after: Option<&ItemKey>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        sqlx::query(&format!(
            "SELECT {ENTRY_COLS} FROM items WHERE feed_id = $1 AND key > $2 ORDER BY key LIMIT $3"
        ))
        .bind(feed)
        .bind(after.map(|k| k.as_str()).unwrap_or(""))
        .bind(limit as i64)
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(entry_record)
        .collect()
    }

    async fn live_count(&self, feed: FeedId) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM items WHERE feed_id = $1 AND NOT deleted")
            .bind(feed)
            .fetch_one(self.pool())
            .await?;
        Ok(n as u64)
    }

    async fn blob_referenced(&self, digest: &Digest, feeds: &[FeedId]) -> Result<bool, StoreError> {
        Ok(self.blobs_referenced(&[*digest], feeds).await?.contains(digest))
    }

    async fn blob_keys(
        &self,
        digest: &Digest,
        feed: FeedId,
        limit: usize,
    ) -> Result<Vec<ItemKey>, StoreError> {
        let keys: Vec<String> = sqlx::query_scalar(
            "SELECT key FROM item_blobs WHERE digest = $1 AND feed_id = $2 ORDER BY key LIMIT $3",
        )
        .bind(digest.as_bytes().as_slice())
        .bind(feed)
        .bind(limit as i64)
        .fetch_all(self.pool())
        .await?;
        keys.iter()
            .map(|k| ItemKey::new(k).map_err(|e| StoreError::Backend(e.to_string())))
            .collect()
    }

    async fn blobs_referenced(
        &self,
        digests: &[Digest],
        feeds: &[FeedId],
    ) -> Result<HashSet<Digest>, StoreError> {
        let rows: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT DISTINCT digest FROM item_blobs WHERE digest = ANY($1) AND feed_id = ANY($2)",
        )
        .bind(digests_param(digests))
        .bind(feeds)
        .fetch_all(self.pool())
        .await?;
        rows.into_iter().map(digest_from).collect()
    }

    async fn deletions_after(&self, feed: FeedId, since: i64) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(DISTINCT c.key) FROM changes c
             JOIN items i ON i.feed_id = c.feed_id AND i.key = c.key
             WHERE c.feed_id = $1 AND c.seq > $2 AND i.deleted",
        )
        .bind(feed)
        .bind(since)
        .fetch_one(self.pool())
        .await?;
        Ok(n as u64)
    }

    async fn live_bytes_after(&self, feed: FeedId, since: i64) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COALESCE(SUM(b.size), 0)::BIGINT FROM blobs b WHERE b.digest IN (
                 SELECT ib.digest FROM changes c
                 JOIN items i ON i.feed_id = c.feed_id AND i.key = c.key AND NOT i.deleted
                 JOIN item_blobs ib ON ib.feed_id = c.feed_id AND ib.key = c.key
                 WHERE c.feed_id = $1 AND c.seq > $2)",
        )
        .bind(feed)
        .bind(since)
        .fetch_one(self.pool())
        .await?;
        Ok(n.max(0) as u64)
    }

    async fn blob_written_by(
        &self,
        digest: &Digest,
        feeds: &[FeedId],
        origin: InstanceId,
    ) -> Result<bool, StoreError> {
        let hit: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM item_blobs b JOIN items i ON i.feed_id = b.feed_id AND i.key = b.key
             WHERE b.digest = $1 AND b.feed_id = ANY($2) AND NOT i.deleted AND i.stamp_origin = $3 LIMIT 1",
        )
        .bind(digest.as_bytes().as_slice())
        .bind(feeds)
        .bind(origin.to_string())
        .fetch_optional(self.pool())
        .await?;
        Ok(hit.is_some())
    }

    async fn prune_tombstones(&self, feed: FeedId, before: i64) -> Result<u64, StoreError> {
        store_tx!(self, |c| async {
            // Under the feed's lock, as every write: no change is numbered
            // while its neighbours are pruned.
            let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM feeds WHERE id = $1 FOR UPDATE")
                .bind(feed)
                .fetch_optional(&mut *c)
                .await?;
            if exists.is_none() {
                return Ok(0);
            }
            let max_seq: Option<i64> = sqlx::query_scalar(
                "SELECT MAX(c.seq) FROM changes c JOIN items i ON i.feed_id = c.feed_id AND i.key = c.key
                 WHERE c.feed_id = $1 AND i.deleted AND i.updated_at < $2",
            )
            .bind(feed)
            .bind(before)
            .fetch_one(&mut *c)
            .await?;
            let Some(max_seq) = max_seq else { return Ok(0) };
            sqlx::query(
                "DELETE FROM changes WHERE feed_id = $1 AND key IN
                 (SELECT key FROM items WHERE feed_id = $1 AND deleted AND updated_at < $2)",
            )
            .bind(feed)
            .bind(before)
            .execute(&mut *c)
            .await?;
            let n = sqlx::query("DELETE FROM items WHERE feed_id = $1 AND deleted AND updated_at < $2")
                .bind(feed)
                .bind(before)
                .execute(&mut *c)
                .await?
                .rows_affected();
            sqlx::query(
                "INSERT INTO horizons (feed_id, seq) VALUES ($1, $2)
                 ON CONFLICT (feed_id) DO UPDATE SET seq = GREATEST(horizons.seq, EXCLUDED.seq)",
            )
            .bind(feed)
            .bind(max_seq)
            .execute(&mut *c)
            .await?;
            Ok(n)
        })
    }

    async fn horizon(&self, feed: FeedId) -> Result<i64, StoreError> {
        let v: Option<i64> = sqlx::query_scalar("SELECT seq FROM horizons WHERE feed_id = $1")
            .bind(feed)
            .fetch_optional(self.pool())
            .await?;
        Ok(v.unwrap_or(0))
    }
}

/// Ends executions left running as interrupted — of one replication, or
/// of every replication whose lease no other holder than `holder` holds at
/// `now` — with a log line saying why (the report of a running execution
/// is still the empty one it started with). With `before`, only those
/// older than that execution (the one a new lease holder goes on with). `json_build_object` keeps the
/// keys in the order given, as the report's other lines have them.
async fn close_running(
    c: &mut sqlx::PgConnection,
    replication: Option<i64>,
    holder: &str,
    now: i64,
    before: Option<i64>,
) -> Result<u64, StoreError> {
    let n = sqlx::query(
        "UPDATE executions SET outcome = 'interrupted', ended_at = $1,
             report = (SELECT jsonb_set(r, '{log}',
                              CASE WHEN jsonb_typeof(r -> 'log') = 'array' THEN r -> 'log' ELSE '[]'::jsonb END
                              || jsonb_build_array(jsonb_build_object(
                                 'time', to_char(to_timestamp($1::bigint / 1000.0) AT TIME ZONE 'UTC',
                                                 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
                                 'level', 'warn',
                                 'message', $2::text)))
                       FROM (SELECT CASE WHEN jsonb_typeof(report::jsonb) = 'object'
                                         THEN report::jsonb ELSE '{}'::jsonb END AS r) AS cur)::text
         WHERE outcome IS NULL
           AND ($3::bigint IS NULL OR replication_id = $3)
           AND ($5::bigint IS NULL OR id < $5)
           AND NOT EXISTS (SELECT 1 FROM execution_leases l WHERE l.replication_id = executions.replication_id
                           AND l.holder <> $4 AND l.until >= $1)",
    )
    .bind(now)
    .bind(INTERRUPTED)
    .bind(replication)
    .bind(holder)
    .bind(before)
    .execute(&mut *c)
    .await?
    .rows_affected();
    Ok(n)
}

impl PgStore {
    /// Tells every node that peers' sessions may have ended
    /// ([`crate::StoreEvent::SessionsChanged`]).
    async fn sessions_changed(&self) -> Result<(), StoreError> {
        let mut c = self.pool().acquire().await?;
        notify(&mut c, "r".into()).await
    }
}
