//! [`ReplicationStore`] on SQLite.

use async_trait::async_trait;
use ferry_types::{Digest, InstanceId, ItemKey};
use rusqlite::{OptionalExtension, Row, params};

use crate::replication::*;
use crate::sqlite::{bad_row, decode_blobs, stamp_from};
use crate::{FeedId, SqliteStore, StoreError, now_millis};

fn json_text(v: &serde_json::Value) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Backend(e.to_string()))
}

fn replication_row(r: &Row<'_>) -> rusqlite::Result<(i64, String, String, i64)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

fn replication_record(raw: (i64, String, String, i64)) -> Result<ReplicationRecord, StoreError> {
    Ok(ReplicationRecord {
        id: raw.0,
        name: raw.1,
        config: serde_json::from_str(&raw.2).map_err(|_| bad_row("replication config"))?,
        created_at: raw.3,
    })
}

type RawToken = (String, i64, Vec<u8>, i64, bool);
fn token_row(r: &Row<'_>) -> rusqlite::Result<RawToken> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}
fn token_record(raw: RawToken) -> Result<SyncTokenRecord, StoreError> {
    Ok(SyncTokenRecord {
        id: raw.0,
        replication_id: raw.1,
        hash: raw.2.try_into().map_err(|_| bad_row("token hash"))?,
        created_at: raw.3,
        revoked: raw.4,
    })
}

type RawEntry = (String, bool, String, String, i64, String, i64, i64);
const ENTRY_COLS: &str = "key, deleted, meta, blobs, stamp_time, stamp_origin, created_at, downloads";
fn entry_row(r: &Row<'_>) -> rusqlite::Result<RawEntry> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
    ))
}
fn entry_record(raw: RawEntry) -> Result<Entry, StoreError> {
    let live = if raw.1 {
        None
    } else {
        Some(LiveEntry {
            meta: serde_json::from_str(&raw.2).map_err(|_| bad_row("item metadata"))?,
            blobs: decode_blobs(&raw.3)?,
            created_at: raw.6,
            downloads: raw.7 as u64,
        })
    };
    Ok(Entry {
        key: ItemKey::new(raw.0).map_err(|_| bad_row("item key"))?,
        stamp: stamp_from(raw.4, &raw.5)?,
        live,
    })
}

#[async_trait]
impl ReplicationStore for SqliteStore {
    async fn create_replication(
        &self,
        name: &str,
        config: serde_json::Value,
    ) -> Result<ReplicationRecord, StoreError> {
        let name = name.to_string();
        self.write_tx(move |tx| {
            let taken: Option<i64> = tx
                .query_row("SELECT id FROM replications WHERE name = ?1", [&name], |r| {
                    r.get(0)
                })
                .optional()?;
            if taken.is_some() {
                return Err(StoreError::Conflict(format!("replication {name} already exists")));
            }
            let now = now_millis();
            tx.execute(
                "INSERT INTO replications (name, config, created_at) VALUES (?1, ?2, ?3)",
                params![name, json_text(&config)?, now],
            )?;
            Ok(ReplicationRecord {
                id: tx.last_insert_rowid(),
                name,
                config,
                created_at: now,
            })
        })
        .await
    }

    async fn update_replication(&self, name: &str, config: serde_json::Value) -> Result<(), StoreError> {
        let name = name.to_string();
        self.write_tx(move |tx| {
            let n = tx.execute(
                "UPDATE replications SET config = ?2 WHERE name = ?1",
                params![name, json_text(&config)?],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("replication {name}")));
            }
            Ok(())
        })
        .await
    }

    async fn replication(&self, name: &str) -> Result<Option<ReplicationRecord>, StoreError> {
        let name = name.to_string();
        self.read(move |c| {
            c.query_row(
                "SELECT id, name, config, created_at FROM replications WHERE name = ?1",
                [&name],
                replication_row,
            )
            .optional()?
            .map(replication_record)
            .transpose()
        })
        .await
    }

    async fn replications(&self) -> Result<Vec<ReplicationRecord>, StoreError> {
        self.read(|c| {
            let mut st = c.prepare("SELECT id, name, config, created_at FROM replications ORDER BY name")?;
            let rows = st
                .query_map([], replication_row)?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter().map(replication_record).collect()
        })
        .await
    }

    async fn replication_by_id(&self, id: i64) -> Result<Option<ReplicationRecord>, StoreError> {
        self.read(move |c| {
            c.query_row(
                "SELECT id, name, config, created_at FROM replications WHERE id = ?1",
                [id],
                replication_row,
            )
            .optional()?
            .map(replication_record)
            .transpose()
        })
        .await
    }

    async fn delete_replication(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.write_tx(move |tx| Ok(tx.execute("DELETE FROM replications WHERE name = ?1", [&name])? > 0))
            .await
    }

    async fn add_sync_token(&self, replication: i64, id: &str, hash: [u8; 32]) -> Result<(), StoreError> {
        let id = id.to_string();
        self.write_tx(move |tx| {
            tx.execute(
                "INSERT INTO sync_tokens (id, replication_id, hash, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![id, replication, &hash[..], now_millis()],
            )?;
            Ok(())
        })
        .await
    }

    async fn sync_token(&self, id: &str) -> Result<Option<SyncTokenRecord>, StoreError> {
        let id = id.to_string();
        self.read(move |c| {
            c.query_row(
                "SELECT id, replication_id, hash, created_at, revoked FROM sync_tokens WHERE id = ?1",
                [&id],
                token_row,
            )
            .optional()?
            .map(token_record)
            .transpose()
        })
        .await
    }

    async fn sync_tokens(&self, replication: i64) -> Result<Vec<SyncTokenRecord>, StoreError> {
        self.read(move |c| {
            let mut st = c.prepare(
                "SELECT id, replication_id, hash, created_at, revoked FROM sync_tokens WHERE replication_id = ?1 ORDER BY created_at",
            )?;
            let rows = st.query_map([replication], token_row)?.collect::<Result<Vec<_>, _>>()?;
            rows.into_iter().map(token_record).collect()
        })
        .await
    }

    async fn revoke_sync_token(&self, replication: i64, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.write_tx(move |tx| {
            Ok(tx.execute(
                "UPDATE sync_tokens SET revoked = 1 WHERE replication_id = ?1 AND id = ?2",
                params![replication, id],
            )? > 0)
        })
        .await
    }

    async fn cursor(&self, replication: i64, name: &str) -> Result<i64, StoreError> {
        let name = name.to_string();
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT value FROM cursors WHERE replication_id = ?1 AND name = ?2",
                params![replication, name],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0))
        })
        .await
    }

    async fn set_cursor(&self, replication: i64, name: &str, value: i64) -> Result<(), StoreError> {
        let name = name.to_string();
        self.write_tx(move |tx| {
            tx.execute(
                "INSERT INTO cursors (replication_id, name, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (replication_id, name) DO UPDATE SET value = ?3",
                params![replication, name, value],
            )?;
            Ok(())
        })
        .await
    }

    async fn set_cursors(
        &self,
        replication: i64,
        set: &[(String, i64)],
        clear: &[String],
    ) -> Result<(), StoreError> {
        let (set, clear) = (set.to_vec(), clear.to_vec());
        self.write_tx(move |tx| {
            for (name, value) in &set {
                tx.execute(
                    "INSERT INTO cursors (replication_id, name, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT (replication_id, name) DO UPDATE SET value = ?3",
                    params![replication, name, value],
                )?;
            }
            for name in &clear {
                tx.execute(
                    "DELETE FROM cursors WHERE replication_id = ?1 AND name = ?2",
                    params![replication, name],
                )?;
            }
            Ok(())
        })
        .await
    }

    async fn cursors(&self, replication: i64, prefix: &str) -> Result<Vec<(String, i64)>, StoreError> {
        let (lo, hi) = (prefix.to_string(), crate::prefix_end(prefix));
        self.read(move |c| {
            let mut st = c.prepare(
                "SELECT name, value FROM cursors WHERE replication_id = ?1 AND name >= ?2 AND name < ?3 ORDER BY name",
            )?;
            let rows = st
                .query_map(params![replication, lo, hi], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<Vec<(String, i64)>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn save_peer(
        &self,
        replication: i64,
        instance: &str,
        state: serde_json::Value,
    ) -> Result<(), StoreError> {
        let instance = instance.to_string();
        let state = state.to_string();
        self.write_tx(move |tx| {
            tx.execute(
                "INSERT INTO replication_peers (replication_id, instance, state) VALUES (?1, ?2, ?3)
                 ON CONFLICT (replication_id, instance) DO UPDATE SET state = excluded.state",
                params![replication, instance, state],
            )?;
            Ok(())
        })
        .await
    }

    async fn peers(&self, replication: i64) -> Result<Vec<(String, serde_json::Value)>, StoreError> {
        self.read(move |c| {
            let mut st = c.prepare(
                "SELECT instance, state FROM replication_peers WHERE replication_id = ?1 ORDER BY instance",
            )?;
            let rows = st
                .query_map(params![replication], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(i, s)| {
                    serde_json::from_str(&s)
                        .map(|v| (i, v))
                        .map_err(|e| StoreError::Backend(format!("replication peer state: {e}")))
                })
                .collect()
        })
        .await
    }

    async fn peer(&self, replication: i64, instance: &str) -> Result<Option<serde_json::Value>, StoreError> {
        let instance = instance.to_string();
        self.read(move |c| {
            let state: Option<String> = c
                .query_row(
                    "SELECT state FROM replication_peers WHERE replication_id = ?1 AND instance = ?2",
                    params![replication, instance],
                    |r| r.get(0),
                )
                .optional()?;
            state
                .map(|s| {
                    serde_json::from_str(&s)
                        .map_err(|e| StoreError::Backend(format!("replication peer state: {e}")))
                })
                .transpose()
        })
        .await
    }

    async fn forget_peer(&self, replication: i64, instance: &str) -> Result<bool, StoreError> {
        let instance = instance.to_string();
        self.write_tx(move |tx| {
            Ok(tx.execute(
                "DELETE FROM replication_peers WHERE replication_id = ?1 AND instance = ?2",
                params![replication, instance],
            )? > 0)
        })
        .await
    }

    async fn start_execution(&self, replication: i64, trigger: &str) -> Result<i64, StoreError> {
        let trigger = trigger.to_string();
        self.write_tx(move |tx| {
            tx.execute(
                "INSERT INTO executions (replication_id, trigger, started_at, report) VALUES (?1, ?2, ?3, '{}')",
                params![replication, trigger, now_millis()],
            )?;
            Ok(tx.last_insert_rowid())
        })
        .await
    }

    async fn finish_execution(
        &self,
        id: i64,
        outcome: &str,
        report: serde_json::Value,
        holder: &str,
    ) -> Result<(), StoreError> {
        let (outcome, holder) = (outcome.to_string(), holder.to_string());
        self.write_tx(move |tx| {
            let now = now_millis();
            tx.execute(
                "UPDATE executions SET ended_at = ?2, outcome = ?3, report = ?4
                 WHERE id = ?1 AND outcome IS NULL
                   AND NOT EXISTS (SELECT 1 FROM execution_leases l WHERE l.replication_id = executions.replication_id
                                   AND l.holder != ?5 AND l.until >= ?2)",
                params![id, now, outcome, json_text(&report)?, holder],
            )?;
            // Keep the newest 200 executions per replication.
            tx.execute(
                "DELETE FROM executions WHERE replication_id = (SELECT replication_id FROM executions WHERE id = ?1)
                 AND id NOT IN (SELECT id FROM executions WHERE replication_id =
                   (SELECT replication_id FROM executions WHERE id = ?1) ORDER BY id DESC LIMIT 200)",
                [id],
            )?;
            Ok(())
        })
        .await
    }

    async fn save_execution_report(
        &self,
        id: i64,
        report: serde_json::Value,
        holder: &str,
    ) -> Result<(), StoreError> {
        let holder = holder.to_string();
        self.write_tx(move |tx| {
            tx.execute(
                "UPDATE executions SET report = ?3
                 WHERE id = ?1 AND outcome IS NULL
                   AND NOT EXISTS (SELECT 1 FROM execution_leases l WHERE l.replication_id = executions.replication_id
                                   AND l.holder != ?4 AND l.until >= ?2)",
                params![id, now_millis(), json_text(&report)?, holder],
            )?;
            Ok(())
        })
        .await
    }

    async fn request_execution_stop(&self, replication: i64, by: &str) -> Result<Option<i64>, StoreError> {
        let by = by.to_string();
        self.write_tx(move |tx| {
            let id: Option<i64> = tx
                .query_row(
                    "SELECT id FROM executions WHERE replication_id = ?1 AND outcome IS NULL ORDER BY id DESC LIMIT 1",
                    [replication],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(id) = id {
                tx.execute("UPDATE executions SET stop_by = ?2 WHERE id = ?1", params![id, by])?;
            }
            Ok(id)
        })
        .await
    }

    async fn execution_stop_request(&self, id: i64) -> Result<Option<String>, StoreError> {
        self.read(move |c| {
            Ok(
                c.query_row("SELECT stop_by FROM executions WHERE id = ?1", [id], |r| r.get(0))
                    .optional()?
                    .flatten(),
            )
        })
        .await
    }

    async fn close_interrupted_executions(&self, holder: &str, now: i64) -> Result<u64, StoreError> {
        let holder = holder.to_string();
        self.write_tx(move |tx| close_running(tx, None, &holder, now, None))
            .await
    }

    async fn take_execution_lease(
        &self,
        replication: i64,
        holder: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, StoreError> {
        let holder = holder.to_string();
        self.write_tx(move |tx| {
            let current: Option<(String, i64)> = tx
                .query_row(
                    "SELECT holder, until FROM execution_leases WHERE replication_id = ?1",
                    [replication],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            match &current {
                Some((h, u)) if *h != holder && *u >= now => return Ok(false),
                Some((h, _)) if *h == holder => {}
                // Taken over (or first taken): what the last holder left
                // running is the new holder's to go on with (adopt_execution).
                _ => {}
            }
            tx.execute(
                "INSERT INTO execution_leases (replication_id, holder, until) VALUES (?1, ?2, ?3)
                 ON CONFLICT (replication_id) DO UPDATE SET holder = ?2, until = ?3",
                params![replication, holder, until],
            )?;
            Ok(true)
        })
        .await
    }

    async fn adopt_execution(
        &self,
        replication: i64,
        holder: &str,
        now: i64,
    ) -> Result<Option<i64>, StoreError> {
        let holder = holder.to_string();
        self.write_tx(move |tx| {
            let held: Option<i64> = tx
                .query_row(
                    "SELECT 1 FROM execution_leases WHERE replication_id = ?1 AND holder = ?2 AND until >= ?3",
                    params![replication, holder, now],
                    |r| r.get(0),
                )
                .optional()?;
            if held.is_none() {
                return Ok(None);
            }
            let newest: Option<i64> = tx
                .query_row(
                    "SELECT max(id) FROM executions WHERE replication_id = ?1 AND outcome IS NULL",
                    [replication],
                    |r| r.get(0),
                )
                .optional()?
                .flatten();
            if let Some(id) = newest {
                close_running(tx, Some(replication), &holder, now, Some(id))?;
            }
            Ok(newest)
        })
        .await
    }

    async fn release_execution_lease(&self, replication: i64, holder: &str) -> Result<(), StoreError> {
        let holder = holder.to_string();
        self.write_tx(move |tx| {
            tx.execute(
                "DELETE FROM execution_leases WHERE replication_id = ?1 AND holder = ?2",
                params![replication, holder],
            )?;
            Ok(())
        })
        .await
    }

    async fn executions(&self, replication: i64, limit: usize) -> Result<Vec<ExecutionRecord>, StoreError> {
        self.read(move |c| {
            let mut st = c.prepare(
                "SELECT id, replication_id, trigger, started_at, ended_at, outcome, report FROM executions
                 WHERE replication_id = ?1 ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = st
                .query_map(params![replication, limit as i64], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, Option<i64>>(4)?,
                        r.get::<_, Option<String>>(5)?,
                        r.get::<_, String>(6)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(
                    |(id, replication_id, trigger, started_at, ended_at, outcome, report)| {
                        Ok(ExecutionRecord {
                            id,
                            replication_id,
                            trigger,
                            started_at,
                            ended_at,
                            outcome,
                            report: serde_json::from_str(&report).map_err(|_| bad_row("execution report"))?,
                        })
                    },
                )
                .collect()
        })
        .await
    }

    async fn entries_for(&self, feed: FeedId, keys: &[ItemKey]) -> Result<Vec<Entry>, StoreError> {
        let keys: Vec<String> = keys.iter().map(|k| k.as_str().to_string()).collect();
        self.read(move |c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {ENTRY_COLS} FROM items WHERE feed_id = ?1 AND key = ?2"
            ))?;
            let mut out = Vec::with_capacity(keys.len());
            for k in &keys {
                if let Some(raw) = st.query_row(params![feed, k], entry_row).optional()? {
                    out.push(entry_record(raw)?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn entries(
        &self,
        feed: FeedId,
        after: Option<&ItemKey>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let after = after.map(|k| k.as_str().to_string()).unwrap_or_default();
        self.read(move |c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {ENTRY_COLS} FROM items WHERE feed_id = ?1 AND key > ?2 ORDER BY key LIMIT ?3"
            ))?;
            let rows = st
                .query_map(params![feed, after, limit as i64], entry_row)?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter().map(entry_record).collect()
        })
        .await
    }

    async fn live_count(&self, feed: FeedId) -> Result<u64, StoreError> {
        self.read(move |c| {
            let n: i64 = c.query_row(
                "SELECT COUNT(*) FROM items WHERE feed_id = ?1 AND deleted = 0",
                [feed],
                |r| r.get(0),
            )?;
            Ok(n as u64)
        })
        .await
    }

    async fn blob_referenced(&self, digest: &Digest, feeds: &[FeedId]) -> Result<bool, StoreError> {
        let d = *digest;
        let feeds = feeds.to_vec();
        self.read(move |c| {
            let mut st =
                c.prepare_cached("SELECT 1 FROM item_blobs WHERE digest = ?1 AND feed_id = ?2 LIMIT 1")?;
            for f in feeds {
                if st
                    .query_row(params![d.as_bytes(), f], |_| Ok(()))
                    .optional()?
                    .is_some()
                {
                    return Ok(true);
                }
            }
            Ok(false)
        })
        .await
    }

    async fn blob_keys(
        &self,
        digest: &Digest,
        feed: FeedId,
        limit: usize,
    ) -> Result<Vec<ItemKey>, StoreError> {
        let d = *digest;
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT key FROM item_blobs WHERE digest = ?1 AND feed_id = ?2 ORDER BY key LIMIT ?3",
            )?;
            let keys = st
                .query_map(params![d.as_bytes(), feed, limit as i64], |r| {
                    r.get::<_, String>(0)
                })?
                .collect::<Result<Vec<_>, _>>()?;
            keys.into_iter()
                .map(|k| ItemKey::new(&k).map_err(|e| StoreError::Backend(e.to_string())))
                .collect()
        })
        .await
    }

    async fn blobs_referenced(
        &self,
        digests: &[Digest],
        feeds: &[FeedId],
    ) -> Result<std::collections::HashSet<Digest>, StoreError> {
        let (digests, feeds) = (digests.to_vec(), feeds.to_vec());
        self.read(move |c| {
            let mut st =
                c.prepare_cached("SELECT 1 FROM item_blobs WHERE digest = ?1 AND feed_id = ?2 LIMIT 1")?;
            let mut out = std::collections::HashSet::new();
            for d in digests {
                for f in &feeds {
                    if st
                        .query_row(params![d.as_bytes(), f], |_| Ok(()))
                        .optional()?
                        .is_some()
                    {
                        out.insert(d);
                        break;
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn deletions_after(&self, feed: FeedId, since: i64) -> Result<u64, StoreError> {
        self.read(move |c| {
            let n: i64 = c.query_row(
                "SELECT COUNT(DISTINCT c.key) FROM changes c
                 JOIN items i ON i.feed_id = c.feed_id AND i.key = c.key
                 WHERE c.feed_id = ?1 AND c.seq > ?2 AND i.deleted = 1",
                params![feed, since],
                |r| r.get(0),
            )?;
            Ok(n as u64)
        })
        .await
    }

    async fn live_bytes_after(&self, feed: FeedId, since: i64) -> Result<u64, StoreError> {
        self.read(move |c| {
            let n: i64 = c.query_row(
                "SELECT COALESCE(SUM(b.size), 0) FROM blobs b WHERE b.digest IN (
                     SELECT ib.digest FROM changes c
                     JOIN items i ON i.feed_id = c.feed_id AND i.key = c.key AND i.deleted = 0
                     JOIN item_blobs ib ON ib.feed_id = c.feed_id AND ib.key = c.key
                     WHERE c.feed_id = ?1 AND c.seq > ?2)",
                params![feed, since],
                |r| r.get(0),
            )?;
            Ok(n.max(0) as u64)
        })
        .await
    }

    async fn blob_written_by(
        &self,
        digest: &Digest,
        feeds: &[FeedId],
        origin: InstanceId,
    ) -> Result<bool, StoreError> {
        let d = *digest;
        let feeds = feeds.to_vec();
        let origin = origin.to_string();
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT 1 FROM item_blobs b JOIN items i ON i.feed_id = b.feed_id AND i.key = b.key
                 WHERE b.digest = ?1 AND b.feed_id = ?2 AND i.deleted = 0 AND i.stamp_origin = ?3 LIMIT 1",
            )?;
            for f in feeds {
                if st
                    .query_row(params![d.as_bytes(), f, origin], |_| Ok(()))
                    .optional()?
                    .is_some()
                {
                    return Ok(true);
                }
            }
            Ok(false)
        })
        .await
    }

    async fn prune_tombstones(&self, feed: FeedId, before: i64) -> Result<u64, StoreError> {
        self.write_tx(move |tx| {
            let max_seq: Option<i64> = tx.query_row(
                "SELECT MAX(c.seq) FROM changes c JOIN items i ON i.feed_id = c.feed_id AND i.key = c.key
                 WHERE c.feed_id = ?1 AND i.deleted = 1 AND i.updated_at < ?2",
                params![feed, before],
                |r| r.get(0),
            )?;
            let Some(max_seq) = max_seq else { return Ok(0) };
            tx.execute(
                "DELETE FROM changes WHERE feed_id = ?1 AND key IN
                 (SELECT key FROM items WHERE feed_id = ?1 AND deleted = 1 AND updated_at < ?2)",
                params![feed, before],
            )?;
            let n = tx.execute(
                "DELETE FROM items WHERE feed_id = ?1 AND deleted = 1 AND updated_at < ?2",
                params![feed, before],
            )?;
            tx.execute(
                "INSERT INTO horizons (feed_id, seq) VALUES (?1, ?2)
                 ON CONFLICT (feed_id) DO UPDATE SET seq = MAX(seq, ?2)",
                params![feed, max_seq],
            )?;
            Ok(n as u64)
        })
        .await
    }

    async fn horizon(&self, feed: FeedId) -> Result<i64, StoreError> {
        self.read(move |c| {
            Ok(
                c.query_row("SELECT seq FROM horizons WHERE feed_id = ?1", [feed], |r| {
                    r.get(0)
                })
                .optional()?
                .unwrap_or(0),
            )
        })
        .await
    }
}

/// Ends executions left running as interrupted — of one replication, or
/// of every replication whose lease no other holder than `holder` holds at
/// `now` — with a log line saying why (the report of a running execution
/// is still the empty one it started with). With `before`, only those
/// older than that execution (the one a new lease holder goes on with).
fn close_running(
    tx: &rusqlite::Transaction<'_>,
    replication: Option<i64>,
    holder: &str,
    now: i64,
    before: Option<i64>,
) -> Result<u64, StoreError> {
    let n = tx.execute(
        "UPDATE executions SET outcome = 'interrupted', ended_at = ?1,
             report = json_insert(
                 CASE WHEN json_valid(report) AND json_type(report, '$.log') = 'array'
                      THEN report ELSE '{\"log\":[]}' END,
                 '$.log[#]',
                 json_object('time', strftime('%Y-%m-%dT%H:%M:%fZ', ?1 / 1000.0, 'unixepoch'),
                             'level', 'warn', 'message', ?2))
         WHERE outcome IS NULL
           AND (?3 IS NULL OR replication_id = ?3)
           AND (?5 IS NULL OR id < ?5)
           AND NOT EXISTS (SELECT 1 FROM execution_leases l WHERE l.replication_id = executions.replication_id
                           AND l.holder != ?4 AND l.until >= ?1)",
        params![now, INTERRUPTED, replication, holder, before],
    )?;
    Ok(n as u64)
}

/// The log line an execution cut by a stop of its node ends with.
pub(crate) const INTERRUPTED: &str = "interrupted: the instance stopped while this execution ran; what it applied stays, \
                                      and the next execution goes on from there";
