//! [`MetadataStore`] on SQLite: one writer connection, a small pool of
//! readers, WAL journal, schema migrations by `user_version`. Every call runs
//! on tokio's blocking pool so async callers never block.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ferry_types::{Digest, FeedName, FeedType, Hlc, InstanceId, ItemKey, Stamp};
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

use crate::meta::*;
use crate::{StoreError, now_millis, prefix_end};

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE feeds (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    private INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE items (
    feed_id INTEGER NOT NULL REFERENCES feeds(id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    deleted INTEGER NOT NULL,
    meta TEXT NOT NULL,
    blobs TEXT NOT NULL,
    stamp_time INTEGER NOT NULL,
    stamp_origin TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    downloads INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (feed_id, key)
) WITHOUT ROWID;
CREATE TABLE item_blobs (
    feed_id INTEGER NOT NULL,
    key TEXT NOT NULL,
    digest BLOB NOT NULL,
    PRIMARY KEY (feed_id, key, digest),
    FOREIGN KEY (feed_id, key) REFERENCES items(feed_id, key) ON DELETE CASCADE
) WITHOUT ROWID;
CREATE INDEX item_blobs_by_digest ON item_blobs(digest);
CREATE TABLE changes (
    feed_id INTEGER NOT NULL REFERENCES feeds(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    key TEXT NOT NULL,
    kind INTEGER NOT NULL,
    stamp_time INTEGER NOT NULL,
    stamp_origin TEXT NOT NULL,
    PRIMARY KEY (feed_id, seq)
) WITHOUT ROWID;
CREATE TABLE blobs (
    digest BLOB PRIMARY KEY,
    size INTEGER NOT NULL,
    deleting INTEGER NOT NULL,
    lease_until INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE api_keys (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    hash BLOB NOT NULL UNIQUE,
    permission TEXT NOT NULL,
    feeds TEXT,
    created_at INTEGER NOT NULL
);
"#,
    r#"
CREATE TABLE replications (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    config TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE sync_tokens (
    id TEXT PRIMARY KEY,
    replication_id INTEGER NOT NULL REFERENCES replications(id) ON DELETE CASCADE,
    hash BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE cursors (
    replication_id INTEGER NOT NULL REFERENCES replications(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (replication_id, name)
) WITHOUT ROWID;
CREATE TABLE executions (
    id INTEGER PRIMARY KEY,
    replication_id INTEGER NOT NULL REFERENCES replications(id) ON DELETE CASCADE,
    trigger TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    ended_at INTEGER,
    outcome TEXT,
    report TEXT NOT NULL
);
CREATE INDEX executions_by_replication ON executions(replication_id, id);
CREATE TABLE horizons (
    feed_id INTEGER PRIMARY KEY REFERENCES feeds(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL
);
"#,
    // API keys are scoped to feed ids, not names: a feed deleted and
    // created again is another feed. Scopes naming no feed are dropped
    // (`warn_dropped_key_scopes` says which, before this runs).
    r#"
CREATE TABLE api_key_feeds (
    key_id INTEGER NOT NULL REFERENCES api_keys(id) ON DELETE CASCADE,
    feed_id INTEGER NOT NULL REFERENCES feeds(id) ON DELETE CASCADE,
    PRIMARY KEY (key_id, feed_id)
) WITHOUT ROWID;
CREATE INDEX api_key_feeds_by_feed ON api_key_feeds(feed_id);
ALTER TABLE api_keys ADD COLUMN scoped INTEGER NOT NULL DEFAULT 0;
UPDATE api_keys SET scoped = 1 WHERE feeds IS NOT NULL;
INSERT OR IGNORE INTO api_key_feeds (key_id, feed_id)
    SELECT k.id, f.id FROM api_keys k, json_each(k.feeds) j JOIN feeds f ON f.name = j.value
    WHERE k.feeds IS NOT NULL;
ALTER TABLE api_keys DROP COLUMN feeds;
"#,
    // The instances that connect to an incoming replication, as last seen
    // (the hub's view of its spokes): state is the replication layer's JSON.
    r#"
CREATE TABLE replication_peers (
    replication_id INTEGER NOT NULL REFERENCES replications(id) ON DELETE CASCADE,
    instance TEXT NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (replication_id, instance)
) WITHOUT ROWID;
"#,
    // Feed signing keys (debian, rpm): the armored OpenPGP secret key of a
    // feed. Never part of an item, a change or a bundle.
    r#"
CREATE TABLE signing_keys (
    feed_id INTEGER PRIMARY KEY REFERENCES feeds(id) ON DELETE CASCADE,
    secret TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
"#,
    // Who runs a replication's executions, until when (ms).
    r#"
CREATE TABLE execution_leases (
    replication_id INTEGER PRIMARY KEY REFERENCES replications(id) ON DELETE CASCADE,
    holder TEXT NOT NULL,
    until INTEGER NOT NULL
);
"#,
    // Web UI sessions, shared by every node: the SHA-256 of the session id
    // (never the id), the key's hash, times (ms), whether the key's cap
    // ended it (kept until it would have expired, to say why), and the
    // sealed flash (only the browser holds the key that opens it).
    r#"
CREATE TABLE ui_sessions (
    id_hash BLOB PRIMARY KEY,
    key_hash BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    capped INTEGER NOT NULL DEFAULT 0,
    flash BLOB
) WITHOUT ROWID;
CREATE INDEX ui_sessions_by_key ON ui_sessions(key_hash, created_at);
"#,
    // OCI upload sessions, shared by every node: feed, repository, the key
    // that opened one (id and creation time), its length, when a request
    // last used it and until when a request holds it (ms). Their bytes are
    // in the blob store's upload area.
    r#"
CREATE TABLE oci_uploads (
    id TEXT PRIMARY KEY,
    feed_id INTEGER NOT NULL REFERENCES feeds(id) ON DELETE CASCADE,
    repo TEXT NOT NULL,
    key_id INTEGER,
    key_created_at INTEGER,
    size INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    touched_at INTEGER NOT NULL,
    held_until INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX oci_uploads_by_feed ON oci_uploads(feed_id);
CREATE INDEX oci_uploads_by_key ON oci_uploads(key_id);
"#,
    // A Stop asked through a node that does not run the execution: who
    // asked, read by the node that runs it (or takes it over).
    r#"
ALTER TABLE executions ADD COLUMN stop_by TEXT;
"#,
];

/// Index in [`MIGRATIONS`] of the one that scopes keys by feed id.
const KEY_SCOPES_BY_ID: usize = 2;

/// Before keys' scopes move from feed names to feed ids: the `(key, feed
/// name)` scopes that name no existing feed, which the move drops.
fn dropped_key_scopes(c: &Connection) -> Result<Vec<(String, String)>, StoreError> {
    let mut st = c.prepare(
        "SELECT k.name, j.value FROM api_keys k, json_each(k.feeds) j
         WHERE k.feeds IS NOT NULL AND NOT EXISTS (SELECT 1 FROM feeds f WHERE f.name = j.value)
         ORDER BY k.name, j.value",
    )?;
    let rows = st
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Logs every scope [`dropped_key_scopes`] finds.
fn warn_dropped_key_scopes(c: &Connection) -> Result<(), StoreError> {
    for (key, feed) in dropped_key_scopes(c)? {
        tracing::warn!(
            key = %key,
            feed = %feed,
            "API key {key:?} was limited to feed {feed}, which does not exist: that scope is dropped (keys are now scoped to feeds by identity)"
        );
    }
    Ok(())
}

const READERS: usize = 4;

/// SQLite metadata store. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

/// Page size (bytes) of a database this version creates. `items` is a
/// `WITHOUT ROWID` table, whose rows SQLite keeps whole in a page only up
/// to about a quarter of it (1,002 bytes at 4 KiB, 2,030 at 8 KiB; the
/// SQLite file format, "B-tree Page Format"): a package's metadata of
/// 1-2 KiB (an rpm header's fields, a `.deb`'s control data) at 4 KiB
/// spilled ~0.8 KiB into an overflow page of its own, 4.5 KiB per item,
/// and a bulk import wrote and read four times the pages. A database
/// made with another page size keeps it (SQLite changes it only by a
/// `VACUUM` outside WAL mode).
const PAGE_SIZE: u32 = 8192;

fn open_conn(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    // page_size first: it applies only while the file is still empty.
    conn.execute_batch(&format!(
        "PRAGMA page_size={PAGE_SIZE}; PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; \
         PRAGMA foreign_keys=ON; PRAGMA busy_timeout=10000;"
    ))?;
    // Room for every hot statement (rusqlite keeps 16 by default; a write
    // alone uses seven).
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Mode 0600 for the database and its WAL files: they hold API key
/// hashes and feed signing keys (secret keys), for this instance's eyes only.
fn restrict_to_owner(db: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mut name = db.as_os_str().to_owned();
        for suffix in ["", "-wal", "-shm"] {
            name.push(suffix);
            let path = PathBuf::from(&name);
            if path.exists() {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| StoreError::Backend(format!("restricting {}: {e}", path.display())))?;
            }
            name = db.as_os_str().to_owned();
        }
    }
    Ok(())
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if i == KEY_SCOPES_BY_ID {
            warn_dropped_key_scopes(&tx)?;
        }
        tx.execute_batch(sql)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))?;
        tx.commit()?;
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating and migrating as needed) the database at `path`.
    pub async fn open(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let path = path.into();
        let p = path.clone();
        let writer = tokio::task::spawn_blocking(move || -> Result<Connection, StoreError> {
            let mut conn = open_conn(&p)?;
            migrate(&mut conn)?;
            restrict_to_owner(&p)?;
            Ok(conn)
        })
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))??;
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                writer: Mutex::new(writer),
                readers: Mutex::new(Vec::new()),
            }),
        })
    }

    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = inner.readers.lock().map_err(|_| poisoned())?.pop();
            let conn = match pooled {
                Some(c) => c,
                None => open_conn(&inner.path)?,
            };
            let out = f(&conn);
            let mut pool = inner.readers.lock().map_err(|_| poisoned())?;
            if pool.len() < READERS {
                pool.push(conn);
            }
            out
        })
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))?
    }

    pub(crate) async fn write_tx<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = inner.writer.lock().map_err(|_| poisoned())?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))?
    }
}

pub(crate) fn poisoned() -> StoreError {
    StoreError::Backend("connection lock poisoned".into())
}

pub(crate) fn bad_row(what: &str) -> StoreError {
    StoreError::Backend(format!("corrupt {what} in database"))
}

pub(crate) fn stamp_from(time: i64, origin: &str) -> Result<Stamp, StoreError> {
    Ok(Stamp {
        time: Hlc(time as u64),
        origin: origin.parse().map_err(|_| bad_row("stamp origin"))?,
    })
}

fn feed_from_row(r: &Row<'_>) -> rusqlite::Result<(i64, String, String, bool, i64)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn feed_record(raw: (i64, String, String, bool, i64)) -> Result<FeedRecord, StoreError> {
    Ok(FeedRecord {
        id: raw.0,
        name: FeedName::new(raw.1).map_err(|_| bad_row("feed name"))?,
        feed_type: raw.2.parse::<FeedType>().map_err(|_| bad_row("feed type"))?,
        private: raw.3,
        created_at: raw.4,
    })
}

fn encode_blobs(blobs: &[Digest]) -> String {
    blobs.iter().map(|d| d.hex()).collect::<Vec<_>>().join(",")
}

pub(crate) fn decode_blobs(s: &str) -> Result<Vec<Digest>, StoreError> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(|h| Digest::from_hex(h).map_err(|_| bad_row("blob list")))
        .collect()
}

type RawItem = (String, String, String, i64, String, i64, i64, i64);
const ITEM_COLS: &str = "key, meta, blobs, stamp_time, stamp_origin, created_at, updated_at, downloads";

fn raw_item(r: &Row<'_>) -> rusqlite::Result<RawItem> {
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

fn item_record(raw: RawItem) -> Result<ItemRecord, StoreError> {
    Ok(ItemRecord {
        key: ItemKey::new(raw.0).map_err(|_| bad_row("item key"))?,
        meta: serde_json::from_str(&raw.1).map_err(|_| bad_row("item metadata"))?,
        blobs: decode_blobs(&raw.2)?,
        stamp: stamp_from(raw.3, &raw.4)?,
        created_at: raw.5,
        updated_at: raw.6,
        downloads: raw.7 as u64,
    })
}

type RawKey = (i64, String, Vec<u8>, String, bool, i64);
const KEY_COLS: &str = "id, name, hash, permission, scoped, created_at";

fn raw_key(r: &Row<'_>) -> rusqlite::Result<RawKey> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
}

/// The key of a row, with its scope as it is now (feeds deleted since the
/// key was made are no longer in it).
fn key_record(c: &Connection, raw: RawKey) -> Result<ApiKeyRecord, StoreError> {
    let feeds = if raw.4 {
        let mut st = c.prepare_cached(
            "SELECT f.id, f.name FROM api_key_feeds kf JOIN feeds f ON f.id = kf.feed_id
             WHERE kf.key_id = ?1 ORDER BY f.name",
        )?;
        let rows = st
            .query_map([raw.0], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        let scope = rows
            .into_iter()
            .map(|(id, name)| {
                Ok(ScopedFeed {
                    id,
                    name: FeedName::new(name).map_err(|_| bad_row("feed name"))?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Some(scope)
    } else {
        None
    };
    Ok(ApiKeyRecord {
        id: raw.0,
        name: raw.1,
        hash: raw.2.try_into().map_err(|_| bad_row("key hash"))?,
        permission: Permission::parse(&raw.3).ok_or_else(|| bad_row("key permission"))?,
        feeds,
        created_at: raw.5,
    })
}

fn apply_change(
    tx: &rusqlite::Transaction<'_>,
    feed: FeedId,
    change: &Change,
    pre: Precondition,
    order: StampOrder,
) -> Result<WriteOutcome, StoreError> {
    let key = change.key.as_str();
    // Every statement from the connection's cache: a bulk write applies
    // hundreds of changes in one transaction, and parsing the SQL again for
    // each was a tenth of the server's CPU.
    let existing: Option<(bool, i64, String)> = tx
        .prepare_cached(
            "SELECT deleted, stamp_time, stamp_origin FROM items WHERE feed_id = ?1 AND key = ?2",
        )?
        .query_row(params![feed, key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let existing = match existing {
        Some((deleted, time, origin)) => Some((deleted, stamp_from(time, &origin)?)),
        None => None,
    };
    let stamp = match judge_change(existing, change, pre, order)? {
        Ok(stamp) => stamp,
        Err(outcome) => return Ok(outcome),
    };
    // Judged after the stamps: a change that would not be applied
    // (superseded, already there) is no conflict.
    if pre == Precondition::PathFree && matches!(change.op, ChangeOp::Upsert { .. }) {
        let (above, lo, hi) = path_neighbours(key);
        let mut file_above = None;
        for a in above {
            let live: Option<i64> = tx
                .prepare_cached("SELECT 1 FROM items WHERE feed_id = ?1 AND key = ?2 AND deleted = 0")?
                .query_row(params![feed, a], |r| r.get(0))
                .optional()?;
            if live.is_some() {
                file_above = Some(a);
                break;
            }
        }
        let below: Option<String> = tx
            .prepare_cached(
                "SELECT key FROM items WHERE feed_id = ?1 AND key >= ?2 AND key < ?3 AND deleted = 0 LIMIT 1",
            )?
            .query_row(params![feed, lo, hi], |r| r.get(0))
            .optional()?;
        if let Some(e) = path_conflict(key, file_above, below.as_deref()) {
            return Err(e);
        }
    }
    let now = now_millis();
    let stamp_time = stamp.time.0 as i64;
    let origin = stamp.origin.to_string();
    tx.prepare_cached("DELETE FROM item_blobs WHERE feed_id = ?1 AND key = ?2")?
        .execute(params![feed, key])?;
    let kind = match &change.op {
        ChangeOp::Upsert {
            meta,
            blobs,
            created_at,
        } => {
            for d in blobs {
                let present: Option<bool> = tx
                    .prepare_cached("SELECT deleting FROM blobs WHERE digest = ?1")?
                    .query_row([d.as_bytes()], |r| r.get(0))
                    .optional()?;
                if present != Some(false) {
                    return Err(StoreError::BlobMissing(*d));
                }
            }
            let meta = serde_json::to_string(meta).map_err(|e| StoreError::Backend(e.to_string()))?;
            tx.prepare_cached(
                "INSERT INTO items (feed_id, key, deleted, meta, blobs, stamp_time, stamp_origin, created_at, updated_at)
                 VALUES (?1, ?2, 0, ?3, ?4, ?5, ?6, COALESCE(?7, ?8), ?8)
                 ON CONFLICT (feed_id, key) DO UPDATE SET deleted = 0, meta = ?3, blobs = ?4,
                   stamp_time = ?5, stamp_origin = ?6, updated_at = ?8,
                   created_at = CASE WHEN ?7 IS NOT NULL THEN ?7
                                     WHEN items.deleted = 1 THEN ?8
                                     ELSE items.created_at END",
            )?
            .execute(params![feed, key, meta, encode_blobs(blobs), stamp_time, origin, created_at, now])?;
            for d in blobs {
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO item_blobs (feed_id, key, digest) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![feed, key, d.as_bytes()])?;
            }
            0
        }
        ChangeOp::Delete => {
            tx.prepare_cached(
                "INSERT INTO items (feed_id, key, deleted, meta, blobs, stamp_time, stamp_origin, created_at, updated_at)
                 VALUES (?1, ?2, 1, 'null', '', ?3, ?4, ?5, ?5)
                 ON CONFLICT (feed_id, key) DO UPDATE SET deleted = 1, meta = 'null', blobs = '',
                   stamp_time = ?3, stamp_origin = ?4, updated_at = ?5",
            )?
            .execute(params![feed, key, stamp_time, origin, now])?;
            1
        }
    };
    let seq: i64 = tx
        .prepare_cached(
            "SELECT MAX(COALESCE((SELECT MAX(seq) FROM changes WHERE feed_id = ?1), 0),
                    COALESCE((SELECT seq FROM horizons WHERE feed_id = ?1), 0)) + 1",
        )?
        .query_row([feed], |r| r.get(0))?;
    tx.prepare_cached(
        "INSERT INTO changes (feed_id, seq, key, kind, stamp_time, stamp_origin) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![feed, seq, key, kind, stamp_time, origin])?;
    Ok(WriteOutcome::Applied { seq })
}

/// A secret as [`MetadataStore::instance_secret`] stores it: 64 hex digits.
pub(crate) fn decode_secret(v: &str) -> Result<[u8; 32], StoreError> {
    hex::decode(v)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad_row("instance secret"))
}

#[async_trait]
impl MetadataStore for SqliteStore {
    async fn instance_secret(&self, name: &str) -> Result<[u8; 32], StoreError> {
        let k = format!("secret:{name}");
        self.write_tx(move |tx| {
            tx.execute(
                "INSERT OR IGNORE INTO meta (k, v) VALUES (?1, ?2)",
                [&k, &hex::encode(rand::random::<[u8; 32]>())],
            )?;
            let v: String = tx.query_row("SELECT v FROM meta WHERE k = ?1", [&k], |r| r.get(0))?;
            decode_secret(&v)
        })
        .await
    }

    async fn claim_periodic(&self, job: &str, now: i64, every_ms: i64) -> Result<bool, StoreError> {
        let k = format!("job:{job}");
        self.write_tx(move |tx| {
            let last: Option<String> = tx
                .query_row("SELECT v FROM meta WHERE k = ?1", [&k], |r| r.get(0))
                .optional()?;
            let last = last.and_then(|v| v.parse::<i64>().ok());
            if last.is_some_and(|t| t > now.saturating_sub(every_ms)) {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO meta (k, v) VALUES (?1, ?2) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                [&k, &now.to_string()],
            )?;
            Ok(true)
        })
        .await
    }

    async fn instance_id(&self) -> Result<InstanceId, StoreError> {
        self.write_tx(|tx| {
            let existing: Option<String> = tx
                .query_row("SELECT v FROM meta WHERE k = 'instance_id'", [], |r| r.get(0))
                .optional()?;
            match existing {
                Some(s) => s.parse().map_err(|_| bad_row("instance id")),
                None => {
                    let id = InstanceId::random();
                    tx.execute(
                        "INSERT INTO meta (k, v) VALUES ('instance_id', ?1)",
                        [id.to_string()],
                    )?;
                    Ok(id)
                }
            }
        })
        .await
    }

    async fn renew_instance_id(&self) -> Result<InstanceId, StoreError> {
        let id = InstanceId::random();
        self.write_tx(move |tx| {
            tx.execute(
                "INSERT INTO meta (k, v) VALUES ('instance_id', ?1) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                [id.to_string()],
            )?;
            Ok(())
        })
        .await?;
        Ok(id)
    }

    async fn max_stamp_time(&self) -> Result<Hlc, StoreError> {
        self.read(|c| {
            let t: i64 = c.query_row(
                "SELECT COALESCE(MAX(stamp_time), 0) FROM items
                 WHERE stamp_origin = (SELECT v FROM meta WHERE k = 'instance_id')",
                [],
                |r| r.get(0),
            )?;
            Ok(Hlc(t as u64))
        })
        .await
    }

    async fn create_feed(
        &self,
        name: &FeedName,
        ty: FeedType,
        private: bool,
    ) -> Result<FeedRecord, StoreError> {
        let name = name.clone();
        self.write_tx(move |tx| {
            let exists: Option<i64> = tx
                .query_row("SELECT id FROM feeds WHERE name = ?1", [name.as_str()], |r| {
                    r.get(0)
                })
                .optional()?;
            if exists.is_some() {
                return Err(StoreError::Conflict(format!("feed {name} already exists")));
            }
            let now = now_millis();
            tx.execute(
                "INSERT INTO feeds (name, type, private, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![name.as_str(), ty.as_str(), private, now],
            )?;
            Ok(FeedRecord {
                id: tx.last_insert_rowid(),
                name,
                feed_type: ty,
                private,
                created_at: now,
            })
        })
        .await
    }

    async fn feed(&self, name: &FeedName) -> Result<Option<FeedRecord>, StoreError> {
        let name = name.clone();
        self.read(move |c| {
            c.query_row(
                "SELECT id, name, type, private, created_at FROM feeds WHERE name = ?1",
                [name.as_str()],
                feed_from_row,
            )
            .optional()?
            .map(feed_record)
            .transpose()
        })
        .await
    }

    async fn feeds(&self) -> Result<Vec<FeedRecord>, StoreError> {
        self.read(|c| {
            let mut st = c.prepare("SELECT id, name, type, private, created_at FROM feeds ORDER BY name")?;
            let rows = st.query_map([], feed_from_row)?.collect::<Result<Vec<_>, _>>()?;
            rows.into_iter().map(feed_record).collect()
        })
        .await
    }

    async fn delete_feed(&self, name: &FeedName) -> Result<bool, StoreError> {
        let name = name.clone();
        self.write_tx(move |tx| Ok(tx.execute("DELETE FROM feeds WHERE name = ?1", [name.as_str()])? > 0))
            .await
    }

    async fn write_ordered(
        &self,
        feed: FeedId,
        changes: Vec<(Change, Precondition)>,
        order: StampOrder,
    ) -> Result<Vec<WriteOutcome>, StoreError> {
        self.write_tx(move |tx| {
            changes
                .iter()
                .map(|(c, p)| apply_change(tx, feed, c, *p, order))
                .collect()
        })
        .await
    }

    async fn item(&self, feed: FeedId, key: &ItemKey) -> Result<Option<ItemRecord>, StoreError> {
        let key = key.clone();
        self.read(move |c| {
            c.query_row(
                &format!("SELECT {ITEM_COLS} FROM items WHERE feed_id = ?1 AND key = ?2 AND deleted = 0"),
                params![feed, key.as_str()],
                raw_item,
            )
            .optional()?
            .map(item_record)
            .transpose()
        })
        .await
    }

    async fn items_by_keys(
        &self,
        feed: FeedId,
        keys: &[ItemKey],
    ) -> Result<Vec<Option<ItemRecord>>, StoreError> {
        let keys = keys.to_vec();
        self.read(move |c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {ITEM_COLS} FROM items WHERE feed_id = ?1 AND key = ?2 AND deleted = 0"
            ))?;
            keys.iter()
                .map(|key| {
                    st.query_row(params![feed, key.as_str()], raw_item)
                        .optional()?
                        .map(item_record)
                        .transpose()
                })
                .collect()
        })
        .await
    }

    async fn items(
        &self,
        feed: FeedId,
        prefix: &str,
        after: Option<&ItemKey>,
        limit: usize,
    ) -> Result<Vec<ItemRecord>, StoreError> {
        let prefix = prefix.to_string();
        let after = after.map(|k| k.as_str().to_string()).unwrap_or_default();
        self.read(move |c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {ITEM_COLS} FROM items WHERE feed_id = ?1 AND deleted = 0
                 AND key >= ?2 AND key < ?3 AND key > ?4 ORDER BY key LIMIT ?5"
            ))?;
            let rows = st
                .query_map(
                    params![feed, prefix, prefix_end(&prefix), after, limit as i64],
                    raw_item,
                )?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter().map(item_record).collect()
        })
        .await
    }

    async fn item_metas(
        &self,
        feed: FeedId,
        prefix: &str,
        after: Option<&ItemKey>,
        limit: usize,
    ) -> Result<Vec<ItemMetaText>, StoreError> {
        let prefix = prefix.to_string();
        let after = after.map(|k| k.as_str().to_string()).unwrap_or_default();
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT key, meta FROM items WHERE feed_id = ?1 AND deleted = 0
                 AND key >= ?2 AND key < ?3 AND key > ?4 ORDER BY key LIMIT ?5",
            )?;
            let rows = st
                .query_map(
                    params![feed, prefix, prefix_end(&prefix), after, limit as i64],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
                )?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(key, meta)| {
                    Ok(ItemMetaText {
                        key: ItemKey::new(key).map_err(|_| bad_row("item key"))?,
                        meta,
                    })
                })
                .collect()
        })
        .await
    }

    async fn tombstone(&self, feed: FeedId, key: &ItemKey) -> Result<Option<Stamp>, StoreError> {
        let key = key.clone();
        self.read(move |c| {
            c.query_row(
                "SELECT stamp_time, stamp_origin FROM items WHERE feed_id = ?1 AND key = ?2 AND deleted = 1",
                params![feed, key.as_str()],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
            )
            .optional()?
            .map(|(t, o)| stamp_from(t, &o))
            .transpose()
        })
        .await
    }

    async fn changes_since(
        &self,
        feed: FeedId,
        since: i64,
        limit: usize,
    ) -> Result<Vec<ChangeRecord>, StoreError> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT seq, key, kind, stamp_time, stamp_origin FROM changes
                 WHERE feed_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )?;
            let rows = st
                .query_map(params![feed, since, limit as i64], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, String>(4)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(seq, key, kind, t, o)| {
                    Ok(ChangeRecord {
                        seq,
                        key: ItemKey::new(key).map_err(|_| bad_row("change key"))?,
                        kind: if kind == 0 {
                            ChangeKind::Upsert
                        } else {
                            ChangeKind::Delete
                        },
                        stamp: stamp_from(t, &o)?,
                    })
                })
                .collect()
        })
        .await
    }

    async fn last_seq(&self, feed: FeedId) -> Result<i64, StoreError> {
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT MAX(COALESCE((SELECT MAX(seq) FROM changes WHERE feed_id = ?1), 0),
                            COALESCE((SELECT seq FROM horizons WHERE feed_id = ?1), 0))",
                [feed],
                |r| r.get(0),
            )?)
        })
        .await
    }

    async fn feed_usage(&self, feed: FeedId) -> Result<FeedUsage, StoreError> {
        self.read(move |c| {
            let items: i64 = c.query_row(
                "SELECT COUNT(*) FROM items WHERE feed_id = ?1 AND deleted = 0",
                [feed],
                |r| r.get(0),
            )?;
            let (blobs, bytes): (i64, i64) = c.query_row(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM blobs
                 WHERE digest IN (SELECT digest FROM item_blobs WHERE feed_id = ?1)",
                [feed],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            Ok(FeedUsage {
                items: items.max(0) as u64,
                blobs: blobs.max(0) as u64,
                bytes: bytes.max(0) as u64,
            })
        })
        .await
    }

    async fn add_downloads(&self, feed: FeedId, counts: &[(ItemKey, u64)]) -> Result<(), StoreError> {
        let counts: Vec<(String, i64)> = counts
            .iter()
            .map(|(k, n)| (k.as_str().to_string(), *n as i64))
            .collect();
        self.write_tx(move |tx| {
            let mut st = tx.prepare_cached(
                "UPDATE items SET downloads = downloads + ?3 WHERE feed_id = ?1 AND key = ?2",
            )?;
            for (k, n) in &counts {
                st.execute(params![feed, k, n])?;
            }
            Ok(())
        })
        .await
    }

    async fn lease_blob(&self, digest: &Digest, size: u64, lease_until: i64) -> Result<(), StoreError> {
        let d = *digest;
        self.write_tx(move |tx| {
            let deleting: Option<bool> = tx
                .query_row("SELECT deleting FROM blobs WHERE digest = ?1", [d.as_bytes()], |r| r.get(0))
                .optional()?;
            if deleting == Some(true) {
                return Err(StoreError::BlobBusy(d));
            }
            tx.execute(
                "INSERT INTO blobs (digest, size, deleting, lease_until, created_at) VALUES (?1, ?2, 0, ?3, ?4)
                 ON CONFLICT (digest) DO UPDATE SET lease_until = MAX(lease_until, ?3)",
                params![d.as_bytes(), size as i64, lease_until, now_millis()],
            )?;
            Ok(())
        })
        .await
    }

    async fn lease_blobs(
        &self,
        blobs: &[(Digest, u64)],
        lease_until: i64,
    ) -> Result<Vec<Digest>, StoreError> {
        let blobs = blobs.to_vec();
        self.write_tx(move |tx| {
            let mut busy = Vec::new();
            let now = now_millis();
            let mut deleting = tx.prepare_cached("SELECT deleting FROM blobs WHERE digest = ?1")?;
            let mut lease = tx.prepare_cached(
                "INSERT INTO blobs (digest, size, deleting, lease_until, created_at) VALUES (?1, ?2, 0, ?3, ?4)
                 ON CONFLICT (digest) DO UPDATE SET lease_until = MAX(lease_until, ?3)",
            )?;
            for (d, size) in &blobs {
                let gone: Option<bool> = deleting.query_row([d.as_bytes()], |r| r.get(0)).optional()?;
                if gone == Some(true) {
                    busy.push(*d);
                    continue;
                }
                lease.execute(params![d.as_bytes(), *size as i64, lease_until, now])?;
            }
            Ok(busy)
        })
        .await
    }

    async fn blobs_present(
        &self,
        digests: &[Digest],
    ) -> Result<std::collections::HashSet<Digest>, StoreError> {
        let digests = digests.to_vec();
        self.read(move |c| {
            let mut st = c.prepare_cached("SELECT deleting FROM blobs WHERE digest = ?1")?;
            let mut out = std::collections::HashSet::new();
            for d in digests {
                let v: Option<bool> = st.query_row([d.as_bytes()], |r| r.get(0)).optional()?;
                if v == Some(false) {
                    out.insert(d);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn blob_sizes(
        &self,
        digests: &[Digest],
    ) -> Result<std::collections::HashMap<Digest, u64>, StoreError> {
        let digests = digests.to_vec();
        self.read(move |c| {
            let mut st = c.prepare_cached("SELECT size FROM blobs WHERE digest = ?1 AND deleting = 0")?;
            let mut out = std::collections::HashMap::new();
            for d in digests {
                let v: Option<i64> = st.query_row([d.as_bytes()], |r| r.get(0)).optional()?;
                if let Some(n) = v {
                    out.insert(d, n.max(0) as u64);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn blob_present(&self, digest: &Digest) -> Result<bool, StoreError> {
        let d = *digest;
        self.read(move |c| {
            let v: Option<bool> = c
                .query_row(
                    "SELECT deleting FROM blobs WHERE digest = ?1",
                    [d.as_bytes()],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(v == Some(false))
        })
        .await
    }

    async fn blob_in_use(&self, digest: &Digest) -> Result<bool, StoreError> {
        let d = *digest;
        self.read(move |c| {
            Ok(
                c.prepare_cached("SELECT 1 FROM item_blobs WHERE digest = ?1 LIMIT 1")?
                    .query_row([d.as_bytes()], |_| Ok(()))
                    .optional()?
                    .is_some(),
            )
        })
        .await
    }

    async fn blobs_after(
        &self,
        after: Option<&Digest>,
        limit: usize,
    ) -> Result<Vec<(Digest, u64)>, StoreError> {
        let after: Vec<u8> = after.map(|d| d.as_bytes().to_vec()).unwrap_or_default();
        self.read(move |c| {
            let mut st = c.prepare(
                "SELECT digest, size FROM blobs WHERE deleting = 0 AND digest > ?1 ORDER BY digest LIMIT ?2",
            )?;
            let rows = st
                .query_map(params![after, limit as i64], |r| {
                    Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(d, size)| {
                    let b: [u8; 32] = d.try_into().map_err(|_| bad_row("blob digest"))?;
                    Ok((Digest::from_bytes(b), size as u64))
                })
                .collect()
        })
        .await
    }

    async fn gc_mark(&self, now: i64, limit: usize) -> Result<Vec<Digest>, StoreError> {
        self.write_tx(move |tx| {
            let mut st = tx.prepare(
                "UPDATE blobs SET deleting = 1 WHERE digest IN (
                    SELECT digest FROM blobs b WHERE (b.deleting = 1 OR b.lease_until < ?1)
                    AND NOT EXISTS (SELECT 1 FROM item_blobs ib WHERE ib.digest = b.digest)
                    LIMIT ?2)
                 RETURNING digest",
            )?;
            let rows = st.query_map(params![now, limit as i64], |r| r.get::<_, Vec<u8>>(0))?;
            rows.map(|r| {
                let bytes: [u8; 32] = r?.try_into().map_err(|_| bad_row("blob digest"))?;
                Ok(Digest::from_bytes(bytes))
            })
            .collect()
        })
        .await
    }

    async fn gc_forget(&self, digests: &[Digest]) -> Result<(), StoreError> {
        let digests = digests.to_vec();
        self.write_tx(move |tx| {
            for d in &digests {
                tx.execute(
                    "DELETE FROM blobs WHERE digest = ?1 AND deleting = 1",
                    [d.as_bytes()],
                )?;
            }
            Ok(())
        })
        .await
    }

    async fn create_key(&self, key: NewApiKey) -> Result<ApiKeyRecord, StoreError> {
        self.write_tx(move |tx| {
            let taken: Option<i64> = tx
                .query_row("SELECT id FROM api_keys WHERE name = ?1", [&key.name], |r| {
                    r.get(0)
                })
                .optional()?;
            if taken.is_some() {
                return Err(StoreError::Conflict(format!(
                    "an API key named {:?} already exists",
                    key.name
                )));
            }
            insert_key(tx, key)
        })
        .await
    }

    async fn put_named_key(&self, key: NewApiKey) -> Result<ApiKeyRecord, StoreError> {
        self.write_tx(move |tx| {
            // A replaced secret ends the old one's UI sessions.
            tx.execute(
                "DELETE FROM ui_sessions WHERE key_hash IN (SELECT hash FROM api_keys WHERE name = ?1 AND hash <> ?2)",
                params![key.name, &key.hash[..]],
            )?;
            tx.execute("DELETE FROM api_keys WHERE name = ?1", [&key.name])?;
            insert_key(tx, key)
        })
        .await
    }

    async fn key_by_hash(&self, hash: &[u8; 32]) -> Result<Option<ApiKeyRecord>, StoreError> {
        let hash = *hash;
        self.read(move |c| {
            c.query_row(
                &format!("SELECT {KEY_COLS} FROM api_keys WHERE hash = ?1"),
                [&hash[..]],
                raw_key,
            )
            .optional()?
            .map(|raw| key_record(c, raw))
            .transpose()
        })
        .await
    }

    async fn keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.read(|c| {
            let mut st = c.prepare(&format!("SELECT {KEY_COLS} FROM api_keys ORDER BY name"))?;
            let rows = st.query_map([], raw_key)?.collect::<Result<Vec<_>, _>>()?;
            rows.into_iter().map(|raw| key_record(c, raw)).collect()
        })
        .await
    }

    async fn delete_key(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.write_tx(move |tx| {
            // Its UI sessions end with it, on every node.
            tx.execute(
                "DELETE FROM ui_sessions WHERE key_hash IN (SELECT hash FROM api_keys WHERE name = ?1)",
                [&name],
            )?;
            Ok(tx.execute("DELETE FROM api_keys WHERE name = ?1", [&name])? > 0)
        })
        .await
    }

    async fn signing_key(&self, feed: FeedId) -> Result<Option<String>, StoreError> {
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT secret FROM signing_keys WHERE feed_id = ?1",
                [feed],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await
    }

    async fn put_signing_key(&self, feed: FeedId, secret: &str) -> Result<(), StoreError> {
        let secret = secret.to_string();
        self.write_tx(move |tx| {
            let exists: Option<i64> = tx
                .query_row("SELECT id FROM feeds WHERE id = ?1", [feed], |r| r.get(0))
                .optional()?;
            if exists.is_none() {
                return Err(StoreError::NotFound(format!("feed id {feed}")));
            }
            tx.execute(
                "INSERT INTO signing_keys (feed_id, secret, updated_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (feed_id) DO UPDATE SET secret = excluded.secret, updated_at = excluded.updated_at",
                params![feed, secret, now_millis()],
            )?;
            Ok(())
        })
        .await
    }
}

fn insert_key(tx: &rusqlite::Transaction<'_>, key: NewApiKey) -> Result<ApiKeyRecord, StoreError> {
    let mut scope: Option<Vec<ScopedFeed>> = None;
    if let Some(feeds) = &key.feeds {
        let mut checked: Vec<ScopedFeed> = Vec::with_capacity(feeds.len());
        for f in feeds {
            let exists: Option<i64> = tx
                .query_row(
                    "SELECT 1 FROM feeds WHERE id = ?1 AND name = ?2",
                    params![f.id, f.name.as_str()],
                    |r| r.get(0),
                )
                .optional()?;
            if exists.is_none() {
                return Err(StoreError::NotFound(format!("feed {}", f.name)));
            }
            if !checked.iter().any(|c| c.id == f.id) {
                checked.push(f.clone());
            }
        }
        checked.sort_by(|a, b| a.name.cmp(&b.name));
        scope = Some(checked);
    }
    let now = now_millis();
    tx.execute(
        "INSERT INTO api_keys (name, hash, permission, scoped, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            key.name,
            &key.hash[..],
            key.permission.as_str(),
            scope.is_some(),
            now
        ],
    )?;
    let id = tx.last_insert_rowid();
    for f in scope.iter().flatten() {
        tx.execute(
            "INSERT INTO api_key_feeds (key_id, feed_id) VALUES (?1, ?2)",
            params![id, f.id],
        )?;
    }
    Ok(ApiKeyRecord {
        id,
        name: key.name,
        hash: key.hash,
        permission: key.permission,
        feeds: scope,
        created_at: now,
    })
}

#[cfg(test)]
mod key_scope_migration {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A database as it was before keys were scoped by feed id.
    fn before(path: &Path) {
        let mut conn = open_conn(path).unwrap();
        for (i, sql) in MIGRATIONS.iter().enumerate().take(KEY_SCOPES_BY_ID) {
            let tx = conn.transaction().unwrap();
            tx.execute_batch(sql).unwrap();
            tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))
                .unwrap();
            tx.commit().unwrap();
        }
        conn.execute_batch(
            r#"INSERT INTO feeds (id, name, type, private, created_at) VALUES
                 (1, 'alpha', 'npm', 1, 0), (2, 'beta', 'assets', 0, 0);
               INSERT INTO api_keys (name, hash, permission, feeds, created_at) VALUES
                 ('all', x'01', 'admin', NULL, 0),
                 ('some', x'02', 'write', '["alpha","gone","beta"]', 0),
                 ('none-left', x'03', 'read', '["gone","older"]', 0);"#,
        )
        .unwrap();
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn the_database_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        let _store = SqliteStore::open(&path).await.unwrap();
        for f in [path.clone(), dir.path().join("meta.db-wal")] {
            let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", f.display());
        }
    }

    /// A new database has 8 KiB pages, where an item of a package's usual
    /// metadata fits a page; one made by an earlier version (4 KiB) opens
    /// and works as it is.
    #[tokio::test]
    async fn new_databases_hold_package_metadata_without_overflow_pages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        let _store = SqliteStore::open(&path).await.unwrap();
        let conn = open_conn(&path).unwrap();
        let page: u32 = conn.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
        assert_eq!(page, PAGE_SIZE);
        // 1,500 bytes of metadata: whole in an 8 KiB page, not at 4 KiB.
        let meta = format!("{{\"m\":\"{}\"}}", "x".repeat(1500));
        let overflow = |conn: &Connection| -> i64 {
            conn.execute_batch("CREATE TABLE t (k TEXT PRIMARY KEY, meta TEXT) WITHOUT ROWID")
                .unwrap();
            for i in 0..50 {
                conn.execute("INSERT INTO t VALUES (?1, ?2)", params![i.to_string(), &meta])
                    .unwrap();
            }
            conn.query_row(
                "SELECT count(*) FROM dbstat WHERE name = 't' AND pagetype = 'overflow'",
                [],
                |r| r.get(0),
            )
            .unwrap()
        };
        assert_eq!(overflow(&conn), 0);

        let old = dir.path().join("old.db");
        let conn = Connection::open(&old).unwrap();
        conn.execute_batch("PRAGMA page_size=4096; PRAGMA journal_mode=WAL; CREATE TABLE x (a)")
            .unwrap();
        drop(conn);
        let store = SqliteStore::open(&old).await.unwrap();
        store
            .create_feed(&ferry_types::FeedName::new("f").unwrap(), FeedType::Assets, false)
            .await
            .unwrap();
        let conn = open_conn(&old).unwrap();
        let page: u32 = conn.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
        assert_eq!(page, 4096);
        assert_eq!(
            overflow(&conn),
            50,
            "at 4 KiB each such row spills into a page of its own"
        );
    }

    #[tokio::test]
    async fn scopes_by_name_become_scopes_by_id() {
        assert!(MIGRATIONS[KEY_SCOPES_BY_ID].contains("CREATE TABLE api_key_feeds"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        before(&path);
        assert_eq!(
            dropped_key_scopes(&open_conn(&path).unwrap()).unwrap(),
            [
                ("none-left".to_string(), "gone".to_string()),
                ("none-left".to_string(), "older".to_string()),
                ("some".to_string(), "gone".to_string()),
            ]
        );
        // Keys are stored with one-byte hashes above; give them real ones.
        let conn = open_conn(&path).unwrap();
        for (name, h) in [("all", 1u8), ("some", 2), ("none-left", 3)] {
            conn.execute(
                "UPDATE api_keys SET hash = ?1 WHERE name = ?2",
                params![&[h; 32][..], name],
            )
            .unwrap();
        }
        drop(conn);

        let store = SqliteStore::open(&path).await.unwrap();
        let scope = |k: Option<ApiKeyRecord>| {
            k.unwrap().feeds.map(|fs| {
                fs.into_iter()
                    .map(|f| (f.id, f.name.to_string()))
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(scope(store.key_by_hash(&[1; 32]).await.unwrap()), None);
        assert_eq!(
            scope(store.key_by_hash(&[2; 32]).await.unwrap()),
            Some(vec![(1, "alpha".to_string()), (2, "beta".to_string())])
        );
        assert_eq!(
            scope(store.key_by_hash(&[3; 32]).await.unwrap()),
            Some(vec![]),
            "a key whose feeds are all gone is scoped to nothing"
        );
        // Re-created under the same name, a feed is outside the old scopes.
        let alpha = FeedName::new("alpha").unwrap();
        assert!(store.delete_feed(&alpha).await.unwrap());
        let again = store.create_feed(&alpha, FeedType::Npm, true).await.unwrap();
        let some = store.key_by_hash(&[2; 32]).await.unwrap().unwrap();
        assert!(!some.covers(again.id));
        assert_eq!(scope(Some(some)), Some(vec![(2, "beta".to_string())]));
    }
}
