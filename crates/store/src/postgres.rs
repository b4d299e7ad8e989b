//! [`MetadataStore`] on PostgreSQL, through a `sqlx` connection pool.
//!
//! Every method is one transaction. Where SQLite relies on its single
//! writer, this store takes row locks (see `ARCHITECTURE.md`, `PgStore`):
//! a write batch locks its feed's row and numbers its changes from the
//! row's `last_seq`, so a feed's changes commit in sequence order whichever
//! node writes them; writes lock the blob rows they reference `FOR SHARE`
//! and the collector marks rows it has locked `FOR UPDATE SKIP LOCKED`.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use ferry_types::{Digest, FeedName, FeedType, Hlc, InstanceId, ItemKey, Stamp};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions, PgRow};
use sqlx::{PgConnection, PgPool, Row};
use std::sync::Arc;
use tokio::sync::broadcast;

use crate::meta::*;
use crate::{ConnectFailure, StoreError, now_millis, prefix_end};

/// Schema migrations, applied in order; `ferry_schema.version` counts the
/// ones applied. Text columns that are compared or ordered use the `C`
/// collation, so keys order by their bytes as in SQLite, whatever the
/// database's locale.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE feeds (
    id BIGSERIAL PRIMARY KEY,
    name TEXT COLLATE "C" NOT NULL UNIQUE,
    type TEXT NOT NULL,
    private BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL,
    last_seq BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE items (
    feed_id BIGINT NOT NULL REFERENCES feeds(id) ON DELETE CASCADE,
    key TEXT COLLATE "C" NOT NULL,
    deleted BOOLEAN NOT NULL,
    meta TEXT NOT NULL,
    blobs TEXT NOT NULL,
    stamp_time BIGINT NOT NULL,
    stamp_origin TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    downloads BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (feed_id, key)
);
CREATE INDEX items_by_origin ON items (stamp_origin, stamp_time);
CREATE TABLE item_blobs (
    feed_id BIGINT NOT NULL,
    key TEXT COLLATE "C" NOT NULL,
    digest BYTEA NOT NULL,
    PRIMARY KEY (feed_id, key, digest),
    FOREIGN KEY (feed_id, key) REFERENCES items(feed_id, key) ON DELETE CASCADE
);
CREATE INDEX item_blobs_by_digest ON item_blobs (digest);
CREATE TABLE changes (
    feed_id BIGINT NOT NULL REFERENCES feeds(id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    key TEXT COLLATE "C" NOT NULL,
    kind SMALLINT NOT NULL,
    stamp_time BIGINT NOT NULL,
    stamp_origin TEXT NOT NULL,
    PRIMARY KEY (feed_id, seq)
);
CREATE INDEX changes_by_key ON changes (feed_id, key);
CREATE TABLE blobs (
    digest BYTEA PRIMARY KEY,
    size BIGINT NOT NULL,
    deleting BOOLEAN NOT NULL,
    lease_until BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE api_keys (
    id BIGSERIAL PRIMARY KEY,
    name TEXT COLLATE "C" NOT NULL UNIQUE,
    hash BYTEA NOT NULL UNIQUE,
    permission TEXT NOT NULL,
    scoped BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE api_key_feeds (
    key_id BIGINT NOT NULL REFERENCES api_keys(id) ON DELETE CASCADE,
    feed_id BIGINT NOT NULL REFERENCES feeds(id) ON DELETE CASCADE,
    PRIMARY KEY (key_id, feed_id)
);
CREATE INDEX api_key_feeds_by_feed ON api_key_feeds (feed_id);
CREATE TABLE signing_keys (
    feed_id BIGINT PRIMARY KEY REFERENCES feeds(id) ON DELETE CASCADE,
    secret TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE replications (
    id BIGSERIAL PRIMARY KEY,
    name TEXT COLLATE "C" NOT NULL UNIQUE,
    config TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE sync_tokens (
    id TEXT PRIMARY KEY,
    replication_id BIGINT NOT NULL REFERENCES replications(id) ON DELETE CASCADE,
    hash BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    revoked BOOLEAN NOT NULL DEFAULT false
);
CREATE TABLE cursors (
    replication_id BIGINT NOT NULL REFERENCES replications(id) ON DELETE CASCADE,
    name TEXT COLLATE "C" NOT NULL,
    value BIGINT NOT NULL,
    PRIMARY KEY (replication_id, name)
);
CREATE TABLE executions (
    id BIGSERIAL PRIMARY KEY,
    replication_id BIGINT NOT NULL REFERENCES replications(id) ON DELETE CASCADE,
    trigger TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    ended_at BIGINT,
    outcome TEXT,
    report TEXT NOT NULL
);
CREATE INDEX executions_by_replication ON executions (replication_id, id);
CREATE TABLE horizons (
    feed_id BIGINT PRIMARY KEY REFERENCES feeds(id) ON DELETE CASCADE,
    seq BIGINT NOT NULL
);
CREATE TABLE replication_peers (
    replication_id BIGINT NOT NULL REFERENCES replications(id) ON DELETE CASCADE,
    instance TEXT COLLATE "C" NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (replication_id, instance)
);
"#,
    // Which node runs a replication's executions, until when (ms).
    r#"
CREATE TABLE execution_leases (
    replication_id BIGINT PRIMARY KEY REFERENCES replications(id) ON DELETE CASCADE,
    holder TEXT NOT NULL,
    until BIGINT NOT NULL
);
"#,
    // Web UI sessions, shared by every node: the SHA-256 of the session id
    // (never the id), the key's hash, times (ms), whether the key's cap
    // ended it (kept until it would have expired, to say why), and the
    // sealed flash (only the browser holds the key that opens it).
    r#"
CREATE TABLE ui_sessions (
    id_hash BYTEA PRIMARY KEY,
    key_hash BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    capped BOOLEAN NOT NULL DEFAULT false,
    flash BYTEA
);
CREATE INDEX ui_sessions_by_key ON ui_sessions (key_hash, created_at);
"#,
    // OCI upload sessions, shared by every node: feed, repository, the key
    // that opened one (id and creation time), its length, when a request
    // last used it and until when a request holds it (ms). Their bytes are
    // in the blob store's upload area.
    r#"
CREATE TABLE oci_uploads (
    id TEXT COLLATE "C" PRIMARY KEY,
    feed_id BIGINT NOT NULL REFERENCES feeds(id) ON DELETE CASCADE,
    repo TEXT NOT NULL,
    key_id BIGINT,
    key_created_at BIGINT,
    size BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    touched_at BIGINT NOT NULL,
    held_until BIGINT NOT NULL DEFAULT 0
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

/// Every table [`MIGRATIONS`] creates (but `ferry_schema`, which says
/// which migrations ran), children before the tables they refer to.
const TABLES: &[&str] = &[
    "oci_uploads",
    "ui_sessions",
    "execution_leases",
    "replication_peers",
    "horizons",
    "executions",
    "cursors",
    "sync_tokens",
    "replications",
    "signing_keys",
    "api_key_feeds",
    "api_keys",
    "blobs",
    "changes",
    "item_blobs",
    "items",
    "feeds",
    "meta",
];

/// The advisory lock key under which migrations run (any constant; nodes
/// starting together wait for each other instead of racing).
const MIGRATION_LOCK: i64 = 0x4665_7272_7953_6368; // "FerrySch"

/// Connections a node keeps open at most.
const DEFAULT_MAX_CONNECTIONS: u32 = 16;

/// How long a request waits for a pooled connection before it is answered
/// "storage unavailable" (503).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// A pooled connection idle for longer than this is pinged (one round
/// trip) before a request gets it, so that one the server dropped (a
/// restart, a failover: they take longer than this) is replaced instead
/// of failing the request; one used more recently is handed over as it is
/// (a replication execution or a busy node takes its connections back
/// within milliseconds, and a ping on each would double its round trips).
const PING_IF_IDLE_FOR: Duration = Duration::from_millis(250);

/// The `LISTEN`/`NOTIFY` channel that carries [`StoreEvent`]s between the
/// nodes sharing a database. Payloads: `c FEED SEQ` (change log grew),
/// `d FEED NAME` (feed deleted), `k FEED` (signing key set), `K HASH` (the
/// API key with this secret hash, in hex, deleted or replaced), `s ID`
/// (asked to stop execution ID), `r` (a sync token revoked, a replication
/// updated or deleted).
const EVENTS_CHANNEL: &str = "ferry_events";

/// PostgreSQL metadata store. Cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// `host:port/database`, without credentials, for logs.
    target: String,
    events: Arc<Events>,
}

/// The events of every node's writes, as this node's listener connection
/// hears them; the listener stops with the last clone of the store.
struct Events {
    tx: broadcast::Sender<StoreEvent>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Events {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn parse_event(payload: &str) -> Option<StoreEvent> {
    if payload == "r" {
        return Some(StoreEvent::SessionsChanged);
    }
    if let Some(id) = payload.strip_prefix("s ") {
        return Some(StoreEvent::StopRequested {
            execution: id.parse().ok()?,
        });
    }
    if let Some(hex_hash) = payload.strip_prefix("K ") {
        let mut hash = [0u8; 32];
        hex::decode_to_slice(hex_hash, &mut hash).ok()?;
        return Some(StoreEvent::KeyRevoked { hash });
    }
    let mut parts = payload.split(' ');
    let kind = parts.next()?;
    let feed: FeedId = parts.next()?.parse().ok()?;
    match kind {
        "c" => Some(StoreEvent::FeedChanged {
            feed,
            seq: parts.next()?.parse().ok()?,
        }),
        "d" => Some(StoreEvent::FeedDeleted {
            feed,
            name: FeedName::new(parts.next()?).ok()?,
        }),
        "k" => Some(StoreEvent::SigningKeyChanged { feed }),
        _ => None,
    }
}

/// Forwards what the listener hears until the store is dropped. A broken
/// connection may have lost notifications: it says so with
/// [`StoreEvent::Resync`], and the listener reconnects (and listens
/// again) by itself.
async fn forward_events(mut listener: PgListener, tx: broadcast::Sender<StoreEvent>) {
    loop {
        match listener.try_recv().await {
            Ok(Some(n)) => match parse_event(n.payload()) {
                Some(ev) => {
                    let _ = tx.send(ev);
                }
                None => tracing::warn!(payload = n.payload(), "unknown store event"),
            },
            Ok(None) => {
                tracing::warn!("the database connection carrying change notifications broke; reconnecting");
                let _ = tx.send(StoreEvent::Resync);
            }
            Err(e) => {
                tracing::warn!(error = %e, "listening for change notifications failed; retrying in 1 s");
                let _ = tx.send(StoreEvent::Resync);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Queues a notification, sent when (and only if) the transaction commits.
pub(crate) async fn notify(c: &mut PgConnection, payload: String) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(EVENTS_CHANNEL)
        .bind(payload)
        .execute(&mut *c)
        .await?;
    Ok(())
}

/// The start error for a pool that could not connect: names the database
/// URL (without its password) and the cause. The pool retries a refused
/// connection until its timeout and then only says it timed out, so in that
/// case one more connection is tried alone to learn why.
async fn connect_error(opts: &PgConnectOptions, e: sqlx::Error) -> StoreError {
    use sqlx::Connection;
    let e = match e {
        sqlx::Error::PoolTimedOut => {
            match tokio::time::timeout(ACQUIRE_TIMEOUT, PgConnection::connect_with(opts)).await {
                Ok(Ok(c)) => {
                    let _ = c.close().await;
                    sqlx::Error::PoolTimedOut
                }
                Ok(Err(e)) => e,
                Err(_) => sqlx::Error::PoolTimedOut,
            }
        }
        e => e,
    };
    StoreError::Connect {
        url: redacted_url(opts),
        cause: connect_failure(opts, e),
    }
}

/// What a failed connection attempt says about its cause.
fn connect_failure(opts: &PgConnectOptions, e: sqlx::Error) -> ConnectFailure {
    match e {
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => ConnectFailure::Refused,
        sqlx::Error::Io(io) => ConnectFailure::Unreachable(io.to_string()),
        sqlx::Error::PoolTimedOut => ConnectFailure::NoAnswer(ACQUIRE_TIMEOUT.as_secs()),
        sqlx::Error::Tls(t) => ConnectFailure::Tls(t.to_string()),
        sqlx::Error::Database(d) => match d.code().as_deref() {
            // invalid_password, invalid_authorization_specification
            Some("28P01" | "28000") => ConnectFailure::Authentication {
                user: opts.get_username().to_string(),
                message: d.message().to_string(),
            },
            // invalid_catalog_name
            Some("3D000") => ConnectFailure::NoDatabase(
                opts.get_database()
                    .unwrap_or_else(|| opts.get_username())
                    .to_string(),
            ),
            _ => ConnectFailure::Other(d.message().to_string()),
        },
        other => ConnectFailure::Other(other.to_string()),
    }
}

/// The database's URL without its password or parameters:
/// `postgres://USER@HOST:PORT/DATABASE` (a Unix socket as `?host=DIR`).
fn redacted_url(opts: &PgConnectOptions) -> String {
    let user = opts.get_username();
    let db = opts.get_database().unwrap_or(user);
    match opts.get_socket() {
        Some(dir) => format!("postgres://{user}@/{db}?host={}", dir.display()),
        None => format!("postgres://{user}@{}:{}/{db}", opts.get_host(), opts.get_port()),
    }
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("target", &self.target).finish()
    }
}

impl PgStore {
    /// Connects to `url` (`postgres://USER[:PASSWORD]@HOST[:PORT]/DB`,
    /// libpq's URL form with its `sslmode` and other parameters) and runs
    /// the migrations this build knows that the database has not had.
    ///
    /// Errors: [`StoreError::Connect`] when no connection can be made,
    /// naming the URL without its password and the cause (refused, no
    /// answer, authentication failed, no such database);
    /// [`StoreError::Backend`] for a malformed URL or a database whose
    /// schema is newer than this build; [`StoreError::Unavailable`] if the
    /// server goes away while the store opens.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            let scheme = url.split_once("://").map_or("(none)", |(s, _)| s);
            return Err(StoreError::Backend(format!(
                "database URL: the scheme must be postgres:// or postgresql://, not {scheme}"
            )));
        }
        let opts =
            PgConnectOptions::from_str(url).map_err(|e| StoreError::Backend(format!("database URL: {e}")))?;
        let target = format!(
            "{}:{}/{}",
            opts.get_host(),
            opts.get_port(),
            opts.get_database().unwrap_or("")
        );
        let pool = match PgPoolOptions::new()
            .max_connections(DEFAULT_MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for > PING_IF_IDLE_FOR {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(opts.clone())
            .await
        {
            Ok(pool) => pool,
            Err(sqlx::Error::Configuration(m)) => {
                return Err(StoreError::Backend(format!("database URL: {m}")));
            }
            Err(e) => return Err(connect_error(&opts, e).await),
        };
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(EVENTS_CHANNEL).await?;
        let (tx, _) = broadcast::channel(4096);
        let task = tokio::spawn(forward_events(listener, tx.clone()));
        let store = Self {
            pool,
            target,
            events: Arc::new(Events { tx, task }),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// `host:port/database` of the server, without credentials.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Whether the database answers a trivial query now.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await?;
        // Looked up first: CREATE … IF NOT EXISTS on an existing table
        // makes the server send a notice each node would log at start.
        let known: Option<String> = sqlx::query_scalar("SELECT to_regclass('ferry_schema')::text")
            .fetch_one(&mut *tx)
            .await?;
        if known.is_none() {
            sqlx::raw_sql("CREATE TABLE ferry_schema (version INTEGER NOT NULL)")
                .execute(&mut *tx)
                .await?;
        }
        let version: Option<i32> = sqlx::query_scalar("SELECT version FROM ferry_schema")
            .fetch_optional(&mut *tx)
            .await?;
        let version = match version {
            Some(v) => v as usize,
            None => {
                sqlx::query("INSERT INTO ferry_schema (version) VALUES (0)")
                    .execute(&mut *tx)
                    .await?;
                0
            }
        };
        if version > MIGRATIONS.len() {
            return Err(StoreError::Backend(format!(
                "the database's schema is version {version}, newer than this build of Ferry knows ({}); \
                 run a newer Ferry",
                MIGRATIONS.len()
            )));
        }
        for sql in &MIGRATIONS[version..] {
            sqlx::raw_sql(sql).execute(&mut *tx).await?;
        }
        sqlx::query("UPDATE ferry_schema SET version = $1")
            .bind(MIGRATIONS.len() as i32)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Whether the database holds an instance: its id, made by the first
    /// start that opened the instance ([`MetadataStore::instance_id`]).
    pub async fn holds_instance(&self) -> Result<bool, StoreError> {
        let v: Option<String> = sqlx::query_scalar("SELECT v FROM meta WHERE k = 'instance_id'")
            .fetch_optional(&self.pool)
            .await?;
        Ok(v.is_some())
    }

    /// Undoes a refused first start: empties every table of the schema
    /// (sequences restarted), so the database holds no instance again, as
    /// before the start. Call it only when [`PgStore::holds_instance`] said
    /// no before the start opened the instance. The schema's tables stay
    /// (empty, as a start makes them). Nothing is removed — `Ok(false)` —
    /// once any API key exists: a start that completed (on another node
    /// starting at the same time) makes the admin key, and its instance
    /// stays. Runs under the migration lock, in one transaction.
    pub async fn undo_first_start(&self) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await?;
        sqlx::query("LOCK TABLE api_keys IN EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys")
            .fetch_one(&mut *tx)
            .await?;
        if keys > 0 {
            return Ok(false);
        }
        sqlx::raw_sql(&format!("TRUNCATE {} RESTART IDENTITY", TABLES.join(", ")))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }
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

pub(crate) fn digest_from(bytes: Vec<u8>) -> Result<Digest, StoreError> {
    let b: [u8; 32] = bytes.try_into().map_err(|_| bad_row("blob digest"))?;
    Ok(Digest::from_bytes(b))
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

/// Digests as `bytea[]` parameters, sorted and without repeats (row locks
/// are then always taken in one order, so two transactions never deadlock
/// on each other's blobs).
fn digest_params(digests: &[Digest]) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = digests.iter().map(|d| d.as_bytes().to_vec()).collect();
    v.sort();
    v.dedup();
    v
}

fn feed_record(r: &PgRow) -> Result<FeedRecord, StoreError> {
    Ok(FeedRecord {
        id: r.try_get("id")?,
        name: FeedName::new(r.try_get::<String, _>("name")?).map_err(|_| bad_row("feed name"))?,
        feed_type: r
            .try_get::<String, _>("type")?
            .parse::<FeedType>()
            .map_err(|_| bad_row("feed type"))?,
        private: r.try_get("private")?,
        created_at: r.try_get("created_at")?,
    })
}

const FEED_COLS: &str = "id, name, type, private, created_at";
const ITEM_COLS: &str = "key, meta, blobs, stamp_time, stamp_origin, created_at, updated_at, downloads";

fn item_record(r: &PgRow) -> Result<ItemRecord, StoreError> {
    Ok(ItemRecord {
        key: ItemKey::new(r.try_get::<String, _>("key")?).map_err(|_| bad_row("item key"))?,
        meta: serde_json::from_str(r.try_get::<&str, _>("meta")?).map_err(|_| bad_row("item metadata"))?,
        blobs: decode_blobs(r.try_get::<&str, _>("blobs")?)?,
        stamp: stamp_from(r.try_get("stamp_time")?, r.try_get::<&str, _>("stamp_origin")?)?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        downloads: r.try_get::<i64, _>("downloads")? as u64,
    })
}

const KEY_COLS: &str = "id, name, hash, permission, scoped, created_at";

/// The key of a row, with its scope as it is now (feeds deleted since the
/// key was made are no longer in it).
async fn key_record(c: &mut PgConnection, r: &PgRow) -> Result<ApiKeyRecord, StoreError> {
    let id: i64 = r.try_get("id")?;
    let feeds = if r.try_get::<bool, _>("scoped")? {
        let rows = sqlx::query(
            "SELECT f.id, f.name FROM api_key_feeds kf JOIN feeds f ON f.id = kf.feed_id
             WHERE kf.key_id = $1 ORDER BY f.name",
        )
        .bind(id)
        .fetch_all(&mut *c)
        .await?;
        let scope = rows
            .iter()
            .map(|row| {
                Ok(ScopedFeed {
                    id: row.try_get("id")?,
                    name: FeedName::new(row.try_get::<String, _>("name")?)
                        .map_err(|_| bad_row("feed name"))?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Some(scope)
    } else {
        None
    };
    Ok(ApiKeyRecord {
        id,
        name: r.try_get("name")?,
        hash: r
            .try_get::<Vec<u8>, _>("hash")?
            .try_into()
            .map_err(|_| bad_row("key hash"))?,
        permission: Permission::parse(r.try_get::<&str, _>("permission")?)
            .ok_or_else(|| bad_row("key permission"))?,
        feeds,
        created_at: r.try_get("created_at")?,
    })
}

/// The `BEGIN` of a bookkeeping transaction: its commit returns before
/// its WAL record is flushed (`synchronous_commit = off`, PostgreSQL
/// documentation, "Asynchronous Commit").
pub(crate) const BEGIN_BOOKKEEPING: &str = "BEGIN; SET LOCAL synchronous_commit = off";

/// Runs `$body` (an `async` block using the connection `$c`, returning
/// `Result<T, StoreError>`) in a transaction and commits it; runs it again,
/// up to three times in all, when PostgreSQL aborted it to break a
/// deadlock or a serialization conflict ([`StoreError::Contention`]).
///
/// `store_tx!(store, bookkeeping, |c| ...)` commits asynchronously
/// ([`BEGIN_BOOKKEEPING`]): for the replication engine's own records
/// (execution records and logs, leases, cursors, peers, download counts),
/// whose last fraction of a second may be lost when the *database server*
/// crashes — the durability SQLite gives every commit in WAL mode with
/// `synchronous=NORMAL` — never for items, changes, blobs, keys or
/// configuration. WAL order still holds: a later synchronous commit
/// flushes every earlier asynchronous one, so after a crash a cursor never
/// names a change whose items were lost (a lost cursor only moves back,
/// and pulling again is idempotent).
macro_rules! store_tx {
    ($store:expr, bookkeeping, |$c:ident| $body:expr) => {
        $crate::postgres::store_tx!(@run $store, $store.pool().begin_with($crate::postgres::BEGIN_BOOKKEEPING), |$c| $body)
    };
    ($store:expr, |$c:ident| $body:expr) => {
        $crate::postgres::store_tx!(@run $store, $store.pool().begin(), |$c| $body)
    };
    (@run $store:expr, $begin:expr, |$c:ident| $body:expr) => {{
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let mut tx = $begin.await?;
            let out: Result<_, StoreError> = {
                let $c: &mut sqlx::PgConnection = &mut tx;
                $body.await
            };
            let out = match out {
                Ok(v) => tx.commit().await.map(|()| v).map_err(StoreError::from),
                Err(e) => Err(e),
            };
            match out {
                Err(StoreError::Contention(_)) if attempt < 3 => continue,
                other => break other,
            }
        }
    }};
}
pub(crate) use store_tx;

/// An outcome of one change inside a write batch, before its sequence
/// number is known.
enum Applied {
    Done(WriteOutcome),
    Logged { kind: i16, stamp: Stamp },
}

async fn apply_change(
    c: &mut PgConnection,
    feed: FeedId,
    change: &Change,
    pre: Precondition,
    order: StampOrder,
) -> Result<Applied, StoreError> {
    let key = change.key.as_str();
    let existing =
        sqlx::query("SELECT deleted, stamp_time, stamp_origin FROM items WHERE feed_id = $1 AND key = $2")
            .bind(feed)
            .bind(key)
            .fetch_optional(&mut *c)
            .await?;
    let existing = match existing {
        Some(r) => Some((
            r.try_get::<bool, _>("deleted")?,
            stamp_from(r.try_get("stamp_time")?, r.try_get::<&str, _>("stamp_origin")?)?,
        )),
        None => None,
    };
    let stamp = match judge_change(existing, change, pre, order)? {
        Ok(stamp) => stamp,
        Err(outcome) => return Ok(Applied::Done(outcome)),
    };
    // Judged after the stamps: a change that would not be applied
    // (superseded, already there) is no conflict.
    if pre == Precondition::PathFree && matches!(change.op, ChangeOp::Upsert { .. }) {
        // Under the feed row's lock (`write_batch`): a racing write of a
        // path above or below this one, on any node, waits for this one.
        let (above, lo, hi) = path_neighbours(key);
        let file_above: Option<String> = sqlx::query_scalar(
            "SELECT key FROM items WHERE feed_id = $1 AND key = ANY($2) AND NOT deleted ORDER BY key LIMIT 1",
        )
        .bind(feed)
        .bind(&above)
        .fetch_optional(&mut *c)
        .await?;
        let below: Option<String> = sqlx::query_scalar(
            "SELECT key FROM items WHERE feed_id = $1 AND key >= $2 AND key < $3 AND NOT deleted LIMIT 1",
        )
        .bind(feed)
        .bind(&lo)
        .bind(&hi)
        .fetch_optional(&mut *c)
        .await?;
        if let Some(e) = path_conflict(key, file_above.as_deref(), below.as_deref()) {
            return Err(e);
        }
    }
    let now = now_millis();
    let stamp_time = stamp.time.0 as i64;
    let origin = stamp.origin.to_string();
    sqlx::query("DELETE FROM item_blobs WHERE feed_id = $1 AND key = $2")
        .bind(feed)
        .bind(key)
        .execute(&mut *c)
        .await?;
    let kind = match &change.op {
        ChangeOp::Upsert {
            meta,
            blobs,
            created_at,
        } => {
            let wanted = digest_params(blobs);
            if !wanted.is_empty() {
                // FOR SHARE: the collector cannot mark these rows while this
                // transaction may still reference them.
                let rows = sqlx::query(
                    "SELECT digest FROM blobs WHERE digest = ANY($1) AND NOT deleting ORDER BY digest FOR SHARE",
                )
                .bind(&wanted)
                .fetch_all(&mut *c)
                .await?;
                let present: std::collections::HashSet<Vec<u8>> = rows
                    .iter()
                    .map(|r| r.try_get::<Vec<u8>, _>("digest"))
                    .collect::<Result<_, _>>()?;
                if let Some(d) = blobs.iter().find(|d| !present.contains(d.as_bytes().as_slice())) {
                    return Err(StoreError::BlobMissing(*d));
                }
            }
            let meta = serde_json::to_string(meta).map_err(|e| StoreError::Backend(e.to_string()))?;
            sqlx::query(
                "INSERT INTO items (feed_id, key, deleted, meta, blobs, stamp_time, stamp_origin, created_at, updated_at)
                 VALUES ($1, $2, false, $3, $4, $5, $6, COALESCE($7, $8), $8)
                 ON CONFLICT (feed_id, key) DO UPDATE SET deleted = false, meta = $3, blobs = $4,
                   stamp_time = $5, stamp_origin = $6, updated_at = $8,
                   created_at = CASE WHEN $7::BIGINT IS NOT NULL THEN $7
                                     WHEN items.deleted THEN $8
                                     ELSE items.created_at END",
            )
            .bind(feed)
            .bind(key)
            .bind(meta)
            .bind(encode_blobs(blobs))
            .bind(stamp_time)
            .bind(&origin)
            .bind(*created_at)
            .bind(now)
            .execute(&mut *c)
            .await?;
            if !wanted.is_empty() {
                sqlx::query(
                    "INSERT INTO item_blobs (feed_id, key, digest) SELECT $1, $2, d FROM unnest($3::bytea[]) AS d
                     ON CONFLICT DO NOTHING",
                )
                .bind(feed)
                .bind(key)
                .bind(&wanted)
                .execute(&mut *c)
                .await?;
            }
            0
        }
        ChangeOp::Delete => {
            sqlx::query(
                "INSERT INTO items (feed_id, key, deleted, meta, blobs, stamp_time, stamp_origin, created_at, updated_at)
                 VALUES ($1, $2, true, 'null', '', $3, $4, $5, $5)
                 ON CONFLICT (feed_id, key) DO UPDATE SET deleted = true, meta = 'null', blobs = '',
                   stamp_time = $3, stamp_origin = $4, updated_at = $5",
            )
            .bind(feed)
            .bind(key)
            .bind(stamp_time)
            .bind(&origin)
            .bind(now)
            .execute(&mut *c)
            .await?;
            1
        }
    };
    Ok(Applied::Logged { kind, stamp })
}

/// One write batch inside its transaction: locks the feed's row (the
/// per-feed commit order of the change log), applies every change and
/// appends the applied ones to the log.
async fn write_batch(
    c: &mut PgConnection,
    feed: FeedId,
    changes: &[(Change, Precondition)],
    order: StampOrder,
) -> Result<Vec<WriteOutcome>, StoreError> {
    let last: Option<i64> = sqlx::query_scalar("SELECT last_seq FROM feeds WHERE id = $1 FOR UPDATE")
        .bind(feed)
        .fetch_optional(&mut *c)
        .await?;
    let Some(mut seq) = last else {
        return Err(StoreError::NotFound(format!("feed id {feed}")));
    };
    let first = seq;
    let mut out = Vec::with_capacity(changes.len());
    for (change, pre) in changes {
        match apply_change(c, feed, change, *pre, order).await? {
            Applied::Done(o) => out.push(o),
            Applied::Logged { kind, stamp } => {
                seq += 1;
                sqlx::query(
                    "INSERT INTO changes (feed_id, seq, key, kind, stamp_time, stamp_origin)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(feed)
                .bind(seq)
                .bind(change.key.as_str())
                .bind(kind)
                .bind(stamp.time.0 as i64)
                .bind(stamp.origin.to_string())
                .execute(&mut *c)
                .await?;
                out.push(WriteOutcome::Applied { seq });
            }
        }
    }
    if seq != first {
        sqlx::query("UPDATE feeds SET last_seq = $2 WHERE id = $1")
            .bind(feed)
            .bind(seq)
            .execute(&mut *c)
            .await?;
        notify(c, format!("c {feed} {seq}")).await?;
    }
    Ok(out)
}

#[async_trait]
impl MetadataStore for PgStore {
    async fn instance_secret(&self, name: &str) -> Result<[u8; 32], StoreError> {
        let k = format!("secret:{name}");
        // The first insert wins; every node reads the winner's secret.
        sqlx::query("INSERT INTO meta (k, v) VALUES ($1, $2) ON CONFLICT (k) DO NOTHING")
            .bind(&k)
            .bind(hex::encode(rand::random::<[u8; 32]>()))
            .execute(&self.pool)
            .await?;
        let v: String = sqlx::query_scalar("SELECT v FROM meta WHERE k = $1")
            .bind(&k)
            .fetch_one(&self.pool)
            .await?;
        crate::sqlite::decode_secret(&v)
    }

    async fn claim_periodic(&self, job: &str, now: i64, every_ms: i64) -> Result<bool, StoreError> {
        // The conflicting row's lock serializes nodes claiming at once: the
        // second sees the first one's time and updates nothing.
        let claimed: Option<String> = sqlx::query_scalar(
            "INSERT INTO meta (k, v) VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v
             WHERE CASE WHEN meta.v ~ '^-?[0-9]{1,18}$' THEN meta.v::BIGINT <= $3 ELSE true END
             RETURNING k",
        )
        .bind(format!("job:{job}"))
        .bind(now.to_string())
        .bind(now.saturating_sub(every_ms))
        .fetch_optional(&self.pool)
        .await?;
        Ok(claimed.is_some())
    }

    async fn instance_id(&self) -> Result<InstanceId, StoreError> {
        // Nodes starting together agree: the first insert wins, every node
        // reads the winner's id.
        sqlx::query("INSERT INTO meta (k, v) VALUES ('instance_id', $1) ON CONFLICT (k) DO NOTHING")
            .bind(InstanceId::random().to_string())
            .execute(&self.pool)
            .await?;
        let v: String = sqlx::query_scalar("SELECT v FROM meta WHERE k = 'instance_id'")
            .fetch_one(&self.pool)
            .await?;
        v.parse().map_err(|_| bad_row("instance id"))
    }

    async fn renew_instance_id(&self) -> Result<InstanceId, StoreError> {
        let id = InstanceId::random();
        sqlx::query(
            "INSERT INTO meta (k, v) VALUES ('instance_id', $1) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
        )
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(id)
    }

    async fn max_stamp_time(&self) -> Result<Hlc, StoreError> {
        let t: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(stamp_time), 0)::BIGINT FROM items
             WHERE stamp_origin = (SELECT v FROM meta WHERE k = 'instance_id')",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(Hlc(t as u64))
    }

    async fn create_feed(
        &self,
        name: &FeedName,
        ty: FeedType,
        private: bool,
    ) -> Result<FeedRecord, StoreError> {
        let now = now_millis();
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO feeds (name, type, private, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO NOTHING RETURNING id",
        )
        .bind(name.as_str())
        .bind(ty.as_str())
        .bind(private)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        let Some(id) = id else {
            return Err(StoreError::Conflict(format!("feed {name} already exists")));
        };
        Ok(FeedRecord {
            id,
            name: name.clone(),
            feed_type: ty,
            private,
            created_at: now,
        })
    }

    async fn feed(&self, name: &FeedName) -> Result<Option<FeedRecord>, StoreError> {
        sqlx::query(&format!("SELECT {FEED_COLS} FROM feeds WHERE name = $1"))
            .bind(name.as_str())
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(feed_record)
            .transpose()
    }

    async fn feeds(&self) -> Result<Vec<FeedRecord>, StoreError> {
        sqlx::query(&format!("SELECT {FEED_COLS} FROM feeds ORDER BY name"))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(feed_record)
            .collect()
    }

    async fn delete_feed(&self, name: &FeedName) -> Result<bool, StoreError> {
        store_tx!(self, |c| async {
            let id: Option<i64> = sqlx::query_scalar("DELETE FROM feeds WHERE name = $1 RETURNING id")
                .bind(name.as_str())
                .fetch_optional(&mut *c)
                .await?;
            match id {
                Some(id) => {
                    notify(c, format!("d {id} {name}")).await?;
                    Ok(true)
                }
                None => Ok(false),
            }
        })
    }

    async fn write_ordered(
        &self,
        feed: FeedId,
        changes: Vec<(Change, Precondition)>,
        order: StampOrder,
    ) -> Result<Vec<WriteOutcome>, StoreError> {
        store_tx!(self, |c| write_batch(c, feed, &changes, order))
    }

    async fn item(&self, feed: FeedId, key: &ItemKey) -> Result<Option<ItemRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {ITEM_COLS} FROM items WHERE feed_id = $1 AND key = $2 AND NOT deleted"
        ))
        .bind(feed)
        .bind(key.as_str())
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(item_record)
        .transpose()
    }

    async fn items_by_keys(
        &self,
        feed: FeedId,
        keys: &[ItemKey],
    ) -> Result<Vec<Option<ItemRecord>>, StoreError> {
        let wanted: Vec<&str> = keys.iter().map(|k| k.as_str()).collect();
        let rows = sqlx::query(&format!(
            "SELECT {ITEM_COLS} FROM items WHERE feed_id = $1 AND key = ANY($2) AND NOT deleted"
        ))
        .bind(feed)
        .bind(&wanted)
        .fetch_all(&self.pool)
        .await?;
        let mut found = std::collections::HashMap::with_capacity(rows.len());
        for row in &rows {
            let item = item_record(row)?;
            found.insert(item.key.clone(), item);
        }
        Ok(keys.iter().map(|k| found.get(k).cloned()).collect())
    }

    async fn items(
        &self,
        feed: FeedId,
        prefix: &str,
        after: Option<&ItemKey>,
        limit: usize,
    ) -> Result<Vec<ItemRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {ITEM_COLS} FROM items WHERE feed_id = $1 AND NOT deleted
             AND key >= $2 AND key < $3 AND key > $4 ORDER BY key LIMIT $5"
        ))
        .bind(feed)
        .bind(prefix)
        .bind(prefix_end(prefix))
        .bind(after.map(|k| k.as_str()).unwrap_or(""))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(item_record)
        .collect()
    }

    async fn item_metas(
        &self,
        feed: FeedId,
        prefix: &str,
        after: Option<&ItemKey>,
        limit: usize,
    ) -> Result<Vec<ItemMetaText>, StoreError> {
        sqlx::query(
            "SELECT key, meta FROM items WHERE feed_id = $1 AND NOT deleted
             AND key >= $2 AND key < $3 AND key > $4 ORDER BY key LIMIT $5",
        )
        .bind(feed)
        .bind(prefix)
        .bind(prefix_end(prefix))
        .bind(after.map(|k| k.as_str()).unwrap_or(""))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(ItemMetaText {
                key: ItemKey::new(r.try_get::<String, _>("key")?).map_err(|_| bad_row("item key"))?,
                meta: r.try_get("meta")?,
            })
        })
        .collect()
    }

    async fn tombstone(&self, feed: FeedId, key: &ItemKey) -> Result<Option<Stamp>, StoreError> {
        let row = sqlx::query(
            "SELECT stamp_time, stamp_origin FROM items WHERE feed_id = $1 AND key = $2 AND deleted",
        )
        .bind(feed)
        .bind(key.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| stamp_from(r.try_get("stamp_time")?, r.try_get::<&str, _>("stamp_origin")?))
            .transpose()
    }

    async fn changes_since(
        &self,
        feed: FeedId,
        since: i64,
        limit: usize,
    ) -> Result<Vec<ChangeRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, key, kind, stamp_time, stamp_origin FROM changes
             WHERE feed_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(feed)
        .bind(since)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ChangeRecord {
                    seq: r.try_get("seq")?,
                    key: ItemKey::new(r.try_get::<String, _>("key")?).map_err(|_| bad_row("change key"))?,
                    kind: if r.try_get::<i16, _>("kind")? == 0 {
                        ChangeKind::Upsert
                    } else {
                        ChangeKind::Delete
                    },
                    stamp: stamp_from(r.try_get("stamp_time")?, r.try_get::<&str, _>("stamp_origin")?)?,
                })
            })
            .collect()
    }

    async fn last_seq(&self, feed: FeedId) -> Result<i64, StoreError> {
        let v: Option<i64> = sqlx::query_scalar("SELECT last_seq FROM feeds WHERE id = $1")
            .bind(feed)
            .fetch_optional(&self.pool)
            .await?;
        Ok(v.unwrap_or(0))
    }

    async fn feed_usage(&self, feed: FeedId) -> Result<FeedUsage, StoreError> {
        let items: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM items WHERE feed_id = $1 AND NOT deleted")
            .bind(feed)
            .fetch_one(&self.pool)
            .await?;
        let (blobs, bytes): (i64, i64) = sqlx::query_as(
            "SELECT COUNT(*), COALESCE(SUM(size), 0)::BIGINT FROM blobs
             WHERE digest IN (SELECT digest FROM item_blobs WHERE feed_id = $1)",
        )
        .bind(feed)
        .fetch_one(&self.pool)
        .await?;
        Ok(FeedUsage {
            items: items.max(0) as u64,
            blobs: blobs.max(0) as u64,
            bytes: bytes.max(0) as u64,
        })
    }

    async fn add_downloads(&self, feed: FeedId, counts: &[(ItemKey, u64)]) -> Result<(), StoreError> {
        // One row per key (an UPDATE … FROM touches a row once).
        let mut sum: HashMap<&str, i64> = HashMap::new();
        for (k, n) in counts {
            *sum.entry(k.as_str()).or_default() += *n as i64;
        }
        let mut pairs: Vec<(&str, i64)> = sum.into_iter().collect();
        pairs.sort();
        let (keys, ns): (Vec<&str>, Vec<i64>) = pairs.into_iter().unzip();
        store_tx!(self, bookkeeping, |c| async {
            sqlx::query(
                "UPDATE items SET downloads = items.downloads + v.n
                 FROM unnest($2::text[], $3::bigint[]) AS v(k, n)
                 WHERE items.feed_id = $1 AND items.key = v.k",
            )
            .bind(feed)
            .bind(&keys)
            .bind(&ns)
            .execute(&mut *c)
            .await?;
            Ok(())
        })
    }

    async fn lease_blob(&self, digest: &Digest, size: u64, lease_until: i64) -> Result<(), StoreError> {
        let busy = self.lease_blobs(&[(*digest, size)], lease_until).await?;
        match busy.first() {
            Some(d) => Err(StoreError::BlobBusy(*d)),
            None => Ok(()),
        }
    }

    async fn lease_blobs(
        &self,
        blobs: &[(Digest, u64)],
        lease_until: i64,
    ) -> Result<Vec<Digest>, StoreError> {
        let mut sorted: Vec<(Vec<u8>, i64)> = blobs
            .iter()
            .map(|(d, s)| (d.as_bytes().to_vec(), *s as i64))
            .collect();
        sorted.sort();
        sorted.dedup_by(|a, b| a.0 == b.0);
        let (digests, sizes): (Vec<Vec<u8>>, Vec<i64>) = sorted.into_iter().unzip();
        let now = now_millis();
        // A row being deleted is not leased (the conflict update's WHERE
        // fails and returns nothing for it).
        let leased: Vec<Vec<u8>> = store_tx!(self, |c| async {
            let rows: Vec<Vec<u8>> = sqlx::query_scalar(
                "INSERT INTO blobs (digest, size, deleting, lease_until, created_at)
                 SELECT d, s, false, $3, $4 FROM unnest($1::bytea[], $2::bigint[]) AS v(d, s)
                 ON CONFLICT (digest) DO UPDATE SET lease_until = GREATEST(blobs.lease_until, EXCLUDED.lease_until)
                   WHERE NOT blobs.deleting
                 RETURNING digest",
            )
            .bind(&digests)
            .bind(&sizes)
            .bind(lease_until)
            .bind(now)
            .fetch_all(&mut *c)
            .await?;
            Ok(rows)
        })?;
        let leased: std::collections::HashSet<Vec<u8>> = leased.into_iter().collect();
        digests
            .into_iter()
            .filter(|d| !leased.contains(d))
            .map(digest_from)
            .collect()
    }

    async fn blob_present(&self, digest: &Digest) -> Result<bool, StoreError> {
        Ok(self.blobs_present(&[*digest]).await?.contains(digest))
    }

    async fn blob_in_use(&self, digest: &Digest) -> Result<bool, StoreError> {
        let found: Option<i32> = sqlx::query_scalar("SELECT 1 FROM item_blobs WHERE digest = $1 LIMIT 1")
            .bind(digest.as_bytes().as_slice())
            .fetch_optional(&self.pool)
            .await?;
        Ok(found.is_some())
    }

    async fn blobs_present(
        &self,
        digests: &[Digest],
    ) -> Result<std::collections::HashSet<Digest>, StoreError> {
        let rows: Vec<Vec<u8>> =
            sqlx::query_scalar("SELECT digest FROM blobs WHERE digest = ANY($1) AND NOT deleting")
                .bind(digest_params(digests))
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter().map(digest_from).collect()
    }

    async fn blob_sizes(
        &self,
        digests: &[Digest],
    ) -> Result<std::collections::HashMap<Digest, u64>, StoreError> {
        let rows = sqlx::query("SELECT digest, size FROM blobs WHERE digest = ANY($1) AND NOT deleting")
            .bind(digest_params(digests))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let size: i64 = r.try_get(1)?;
                Ok((digest_from(r.try_get(0)?)?, size.max(0) as u64))
            })
            .collect()
    }

    async fn blobs_after(
        &self,
        after: Option<&Digest>,
        limit: usize,
    ) -> Result<Vec<(Digest, u64)>, StoreError> {
        let after: Vec<u8> = after.map(|d| d.as_bytes().to_vec()).unwrap_or_default();
        let rows = sqlx::query(
            "SELECT digest, size FROM blobs WHERE NOT deleting AND digest > $1 ORDER BY digest LIMIT $2",
        )
        .bind(after)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    digest_from(r.try_get("digest")?)?,
                    r.try_get::<i64, _>("size")? as u64,
                ))
            })
            .collect()
    }

    async fn gc_mark(&self, now: i64, limit: usize) -> Result<Vec<Digest>, StoreError> {
        let marked: Vec<Vec<u8>> = store_tx!(self, |c| async {
            // Lock candidates first (skipping rows a writer holds FOR SHARE),
            // then judge them again in a statement of its own: it sees every
            // reference committed before the locks were granted.
            let candidates: Vec<Vec<u8>> = sqlx::query_scalar(
                "SELECT digest FROM blobs b WHERE (b.deleting OR b.lease_until < $1)
                 AND NOT EXISTS (SELECT 1 FROM item_blobs ib WHERE ib.digest = b.digest)
                 ORDER BY digest LIMIT $2 FOR UPDATE SKIP LOCKED",
            )
            .bind(now)
            .bind(limit as i64)
            .fetch_all(&mut *c)
            .await?;
            let marked: Vec<Vec<u8>> = sqlx::query_scalar(
                "UPDATE blobs b SET deleting = true WHERE b.digest = ANY($1)
                 AND NOT EXISTS (SELECT 1 FROM item_blobs ib WHERE ib.digest = b.digest)
                 RETURNING digest",
            )
            .bind(&candidates)
            .fetch_all(&mut *c)
            .await?;
            Ok(marked)
        })?;
        marked.into_iter().map(digest_from).collect()
    }

    async fn gc_forget(&self, digests: &[Digest]) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM blobs WHERE digest = ANY($1) AND deleting")
            .bind(digest_params(digests))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn create_key(&self, key: NewApiKey) -> Result<ApiKeyRecord, StoreError> {
        store_tx!(self, |c| async {
            let taken: Option<i64> = sqlx::query_scalar("SELECT id FROM api_keys WHERE name = $1")
                .bind(&key.name)
                .fetch_optional(&mut *c)
                .await?;
            if taken.is_some() {
                return Err(StoreError::Conflict(format!(
                    "an API key named {:?} already exists",
                    key.name
                )));
            }
            insert_key(c, &key).await
        })
    }

    async fn put_named_key(&self, key: NewApiKey) -> Result<ApiKeyRecord, StoreError> {
        store_tx!(self, |c| async {
            let replaced: Vec<Vec<u8>> =
                sqlx::query_scalar("DELETE FROM api_keys WHERE name = $1 RETURNING hash")
                    .bind(&key.name)
                    .fetch_all(&mut *c)
                    .await?;
            for old in replaced.iter().filter(|h| h.as_slice() != key.hash.as_slice()) {
                // A replaced secret ends the old one's UI sessions.
                sqlx::query("DELETE FROM ui_sessions WHERE key_hash = $1")
                    .bind(old)
                    .execute(&mut *c)
                    .await?;
                notify(c, format!("K {}", hex::encode(old))).await?;
            }
            insert_key(c, &key).await
        })
    }

    async fn key_by_hash(&self, hash: &[u8; 32]) -> Result<Option<ApiKeyRecord>, StoreError> {
        let mut c = self.pool.acquire().await?;
        let row = sqlx::query(&format!("SELECT {KEY_COLS} FROM api_keys WHERE hash = $1"))
            .bind(&hash[..])
            .fetch_optional(&mut *c)
            .await?;
        match row {
            Some(r) => Ok(Some(key_record(&mut c, &r).await?)),
            None => Ok(None),
        }
    }

    async fn keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let mut c = self.pool.acquire().await?;
        let rows = sqlx::query(&format!("SELECT {KEY_COLS} FROM api_keys ORDER BY name"))
            .fetch_all(&mut *c)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push(key_record(&mut c, r).await?);
        }
        Ok(out)
    }

    async fn delete_key(&self, name: &str) -> Result<bool, StoreError> {
        store_tx!(self, |c| async {
            let deleted: Vec<Vec<u8>> =
                sqlx::query_scalar("DELETE FROM api_keys WHERE name = $1 RETURNING hash")
                    .bind(name)
                    .fetch_all(&mut *c)
                    .await?;
            for hash in &deleted {
                // Its UI sessions end with it, on every node.
                sqlx::query("DELETE FROM ui_sessions WHERE key_hash = $1")
                    .bind(hash)
                    .execute(&mut *c)
                    .await?;
                notify(c, format!("K {}", hex::encode(hash))).await?;
            }
            Ok(!deleted.is_empty())
        })
    }

    async fn signing_key(&self, feed: FeedId) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT secret FROM signing_keys WHERE feed_id = $1")
                .bind(feed)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn put_signing_key(&self, feed: FeedId, secret: &str) -> Result<(), StoreError> {
        store_tx!(self, |c| async {
            let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM feeds WHERE id = $1 FOR SHARE")
                .bind(feed)
                .fetch_optional(&mut *c)
                .await?;
            if exists.is_none() {
                return Err(StoreError::NotFound(format!("feed id {feed}")));
            }
            sqlx::query(
                "INSERT INTO signing_keys (feed_id, secret, updated_at) VALUES ($1, $2, $3)
                 ON CONFLICT (feed_id) DO UPDATE SET secret = EXCLUDED.secret, updated_at = EXCLUDED.updated_at",
            )
            .bind(feed)
            .bind(secret)
            .bind(now_millis())
            .execute(&mut *c)
            .await?;
            notify(c, format!("k {feed}")).await?;
            Ok(())
        })
    }

    fn events(&self) -> Option<broadcast::Receiver<StoreEvent>> {
        Some(self.events.tx.subscribe())
    }
}

async fn insert_key(c: &mut PgConnection, key: &NewApiKey) -> Result<ApiKeyRecord, StoreError> {
    let mut scope: Option<Vec<ScopedFeed>> = None;
    if let Some(feeds) = &key.feeds {
        let mut checked: Vec<ScopedFeed> = Vec::with_capacity(feeds.len());
        for f in feeds {
            // FOR SHARE: the feed cannot be deleted before the scope row
            // referring to it is in.
            let exists: Option<i32> =
                sqlx::query_scalar("SELECT 1 FROM feeds WHERE id = $1 AND name = $2 FOR SHARE")
                    .bind(f.id)
                    .bind(f.name.as_str())
                    .fetch_optional(&mut *c)
                    .await?;
            if exists.is_none() {
                return Err(StoreError::NotFound(format!("feed {}", f.name)));
            }
            if !checked.iter().any(|x| x.id == f.id) {
                checked.push(f.clone());
            }
        }
        checked.sort_by(|a, b| a.name.cmp(&b.name));
        scope = Some(checked);
    }
    let now = now_millis();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO api_keys (name, hash, permission, scoped, created_at) VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(&key.name)
    .bind(&key.hash[..])
    .bind(key.permission.as_str())
    .bind(scope.is_some())
    .bind(now)
    .fetch_one(&mut *c)
    .await?;
    for f in scope.iter().flatten() {
        sqlx::query("INSERT INTO api_key_feeds (key_id, feed_id) VALUES ($1, $2)")
            .bind(id)
            .bind(f.id)
            .execute(&mut *c)
            .await?;
    }
    Ok(ApiKeyRecord {
        id,
        name: key.name.clone(),
        hash: key.hash,
        permission: key.permission,
        feeds: scope,
        created_at: now,
    })
}

#[cfg(test)]
mod table_list {
    /// [`super::TABLES`] names exactly the tables the migrations create.
    #[test]
    fn names_every_table_the_migrations_create() {
        let mut made: Vec<String> = super::MIGRATIONS
            .iter()
            .flat_map(|m| m.split("CREATE TABLE ").skip(1))
            .filter_map(|rest| rest.split([' ', '(']).next().map(str::to_owned))
            .collect();
        made.sort();
        let mut listed: Vec<String> = super::TABLES.iter().map(|t| t.to_string()).collect();
        listed.sort();
        assert_eq!(made, listed);
    }
}
