//! `ferry serve`: wires the concrete backends and runs the HTTP server.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ferry_core::Ferry;
use ferry_replication::Replicator;
use ferry_store::{
    BlobStore, FsBlobStore, MetadataStore, PgStore, ReplicationStore, S3BlobStore, SqliteStore,
};

use crate::config::{BlobStoreConfig, Config};
use crate::{listener, tls};

/// Runs the instance until SIGTERM/SIGINT: opens the stores, declares the
/// configured feeds, starts replication and background work, then serves
/// HTTP (HTTPS with `tls_cert`/`tls_key`) under the limits of
/// [`crate::listener`]. On the signal it stops accepting, ends peers' long
/// polls, gives requests in flight `shutdown_grace_secs` to finish, closes
/// what is still open, and returns `Ok` (exit 0).
///
/// Errors: unreadable data directory, database or TLS files, a declared feed
/// that exists with another type, or an address that cannot be bound. A
/// start refused before it serves — the configuration file cannot be
/// applied, a store cannot be opened — on a data directory that held no
/// instance (SQLite) leaves that directory as it found it
/// ([`FirstStart`]); one that held an instance keeps it as it was. With
/// PostgreSQL, a database that held no instance is emptied again
/// ([`PgStore::undo_first_start`]) and the data directory put back the
/// same way; a database that held one is never touched.
/// The long polls one sync token may hold waiting at once: a quarter of
/// the connection cap (at least 8), so no token holder can take every
/// connection with them.
fn long_polls_per_token(max_connections: Option<usize>) -> usize {
    (max_connections.unwrap_or(4096) / 4).max(8)
}

/// The blob transfers one sync token may hold at once: a sixteenth of the
/// connection cap (at least 16; 256 with the default cap), well above what
/// a fleet of spokes sharing one token asks for (4 batch streams each), so
/// no token holder can pin a megabyte per connection on all of them.
fn transfers_per_token(max_connections: Option<usize>) -> usize {
    (max_connections.unwrap_or(4096) / 16).max(16)
}

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let fd_limit = listener::raise_fd_limit();
    let limits = listener::Limits {
        header_read_timeout: Duration::from_secs(cfg.header_read_timeout_secs),
        keep_alive_timeout: Duration::from_secs(cfg.keep_alive_timeout_secs),
        body_timeout: Duration::from_secs(cfg.body_timeout_secs),
        max_connections: cfg
            .max_connections
            .unwrap_or_else(|| listener::default_max_connections(fd_limit)),
        shutdown_grace: Duration::from_secs(cfg.shutdown_grace_secs),
    };
    if let (Some(max), Some(n)) = (cfg.max_connections, fd_limit)
        && listener::descriptors_needed(max) > n
    {
        tracing::warn!(
            max_connections = max,
            open_file_limit = n,
            "max_connections may need more descriptors than the open-file limit allows"
        );
    }
    // What the connection cap came to: the long polls one sync token may
    // hold are a share of it.
    let mut cfg = cfg;
    cfg.max_connections.get_or_insert(limits.max_connections);
    let tls = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(tls::ServerTls::load(cert, key).await?)),
        _ => None,
    };
    let ca_file = cfg.tls_ca_file.clone();
    let client_tls = tokio::task::spawn_blocking(move || tls::client_config(ca_file.as_deref()))
        .await
        .context("loading TLS roots")?
        .context("loading TLS roots for outgoing replications")?;
    let http = Replicator::http_client_builder()
        .use_preconfigured_tls(client_tls)
        .build()
        .context("building the replication HTTP client")?;

    // A file that does not parse, or names a secret that cannot be read,
    // is refused before anything is written to the data directory; one
    // that cannot be applied on a data directory that held no instance
    // leaves it as it was found.
    let decls = cfg.declarations()?;
    // Bound before the data directory is opened: a port in use refuses
    // the start before anything is written (no instance, no admin key).
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    let first = FirstStart::note(&cfg.data_dir, cfg.database_url.is_none());
    let mut empty_database = None;
    let (ferry, replicator) = match open_and_declare(&cfg, decls, http, &mut empty_database).await {
        Ok(opened) => opened,
        Err(e) => {
            let undo = match (&cfg.database_url, empty_database) {
                (None, _) => true,
                // The database held an instance before (or was never
                // reached): neither it nor the data directory is touched.
                (Some(_), None) => false,
                (Some(_), Some(db)) => match db.undo_first_start().await {
                    Ok(undone) => undone,
                    Err(undo) => {
                        tracing::warn!(error = %undo, "could not remove what the refused start wrote to the database");
                        false
                    }
                },
            };
            if undo && let Some(first) = first {
                first.undo();
            }
            return Err(e);
        }
    };
    if let Some(path) = cfg.source.clone() {
        reapply_on_sighup(path, ferry.clone(), replicator.clone())?;
    }

    spawn_background(ferry.clone(), cfg.gc_interval_secs);
    spawn_fsck(ferry.clone(), cfg.fsck_interval_secs, cfg.fsck_sample);
    replicator.start().await?;
    spawn_tombstone_pruning(replicator.clone(), cfg.tombstone_retention_secs);

    let addr = listener.local_addr()?;
    let acceptor = match &tls {
        Some(t) => {
            t.clone().reload_on_sighup()?;
            Some(t.acceptor())
        }
        None => None,
    };
    tracing::info!(
        max_connections = limits.max_connections,
        header_read_timeout_secs = cfg.header_read_timeout_secs,
        keep_alive_timeout_secs = cfg.keep_alive_timeout_secs,
        body_timeout_secs = cfg.body_timeout_secs,
        shutdown_grace_secs = cfg.shutdown_grace_secs,
        "connection limits"
    );
    let scheme = if acceptor.is_some() { "https" } else { "http" };
    // Scripts wait for this line; a reader gone by now (`| head -1`) does
    // not stop the server.
    say!("listening on {scheme}://{addr}");
    let stopping = replicator.clone();
    let leases = replicator.clone();
    let router = ferry_server::router(ferry.clone(), replicator).into_router();
    // The web UI sends its session cookie `Secure` over TLS.
    let router = if acceptor.is_some() {
        router.layer(axum::Extension(ferry_server::ui::ServedOverTls))
    } else {
        router
    };
    let grace = cfg.shutdown_grace_secs;
    listener::serve(
        listener,
        router,
        acceptor,
        limits,
        async move {
            shutdown_signal(grace).await;
            // Peers' long polls answer now instead of holding the stop.
            stopping.shutdown();
        },
        // Awaited only once stopping: a second signal cuts the drain short.
        stop_signal(),
    )
    .await?;
    leases.release_leases().await;
    ferry.flush_downloads().await?;
    tracing::info!("stopped");
    Ok(())
}

/// Opens the stores and the instance in the data directory, closes the
/// executions the last stop cut, applies the declarations and makes sure
/// of the admin key: everything a start does before it serves. An error
/// here is a refused start ([`FirstStart::undo`] then puts a data
/// directory that held no instance back as it was). `empty_database` is
/// set to the PostgreSQL store when the database held no instance before
/// this start, for the undo.
async fn open_and_declare(
    cfg: &Config,
    decls: Option<ferry_server::declare::Declarations>,
    http: reqwest::Client,
    empty_database: &mut Option<Arc<PgStore>>,
) -> anyhow::Result<(Ferry, Replicator)> {
    check_admin_key_env()?;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data directory {}", cfg.data_dir.display()))?;
    if cfg.database_url.is_none() {
        lock_data_dir(&cfg.data_dir)?;
    }
    let (meta, replication_store): (Arc<dyn MetadataStore>, Arc<dyn ReplicationStore>) =
        match &cfg.database_url {
            Some(url) => {
                let store = Arc::new(
                    PgStore::connect(url)
                        .await
                        .context("connecting to the PostgreSQL database")?,
                );
                say!("metadata: PostgreSQL at {}", store.target());
                if !store
                    .holds_instance()
                    .await
                    .context("reading the PostgreSQL database")?
                {
                    *empty_database = Some(store.clone());
                }
                (store.clone(), store)
            }
            None => {
                let path = cfg.data_dir.join("ferry.db");
                let store = Arc::new(
                    SqliteStore::open(&path)
                        .await
                        .context("opening metadata database")?,
                );
                say!("metadata: SQLite at {}", path.display());
                (store.clone(), store)
            }
        };
    let blobs = open_blobs(cfg).await?;
    let core_cfg = ferry_core::Config {
        max_upload_bytes: cfg.max_upload_bytes,
        max_clock_skew: Duration::from_secs(cfg.max_clock_skew_secs),
        instance_name: cfg.instance_name.clone(),
        peer_stale_intervals: cfg.peer_stale_intervals.max(1),
        long_polls_per_token: long_polls_per_token(cfg.max_connections),
        transfers_per_token: transfers_per_token(cfg.max_connections),
        metrics_public: cfg.metrics_public,
        base_url: cfg.base_url.clone(),
        execution_lease: Duration::from_secs(cfg.execution_lease_secs.max(3)),
        node_name: cfg.node_name.clone().or_else(|| default_node_name(cfg.listen)),
        admin_key_file: Some(cfg.data_dir.join("admin.key")),
        ..Default::default()
    };
    let ferry = Ferry::open(meta, blobs, core_cfg).await?;
    let replicator = Replicator::with_http_client(ferry.clone(), replication_store, http);
    // The absolute data directory: a relative one depends on where the
    // process was started (or, written in the file, where the file is).
    let data_dir = std::path::absolute(&cfg.data_dir).unwrap_or_else(|_| cfg.data_dir.clone());
    tracing::info!(instance = %ferry.instance_id(), data_dir = %data_dir.display(), "instance opened");

    // Executions the last stop cut are closed before a declaration can
    // start one of this run's.
    replicator.close_interrupted().await?;
    if let Some(decls) = decls {
        let applied = ferry_server::declare::apply(&ferry, &replicator, &decls)
            .await
            .with_context(|| format!("applying {}", source_name(cfg)))?;
        log_applied(&applied);
        replicator.set_file_declared(source_name(cfg), declared_names(&decls));
    }
    // After the declarations: a file refused on an empty data directory
    // leaves no admin key behind (the fixed file's start makes it).
    ensure_admin_key(&ferry, &cfg.data_dir, cfg.database_url.is_some()).await?;
    Ok((ferry, replicator))
}

/// One `ferry serve` per data directory with SQLite metadata: an exclusive
/// `flock` on the directory itself, held until the process exits (a second
/// process on it would share the database and empty the first one's
/// staging area at its start). Error when another process holds it; a file
/// system without `flock` is served unlocked, with a warning. Nodes that
/// share a PostgreSQL database keep their own data directories and take
/// no lock here.
fn lock_data_dir(dir: &Path) -> anyhow::Result<()> {
    let handle =
        std::fs::File::open(dir).with_context(|| format!("opening data directory {}", dir.display()))?;
    match handle.try_lock() {
        Ok(()) => {
            // Held for the life of the process.
            static HELD: std::sync::OnceLock<std::fs::File> = std::sync::OnceLock::new();
            let _ = HELD.set(handle);
            Ok(())
        }
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "data directory {} is in use by another `ferry serve` (one process serves a data directory); \
             stop that one first, or start this one with another --data-dir",
            dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            tracing::warn!(dir = %dir.display(), error = %e, "could not lock the data directory; make sure no other `ferry serve` uses it");
            Ok(())
        }
    }
}

/// What a start may make in a data directory that held no instance: the
/// SQLite database and its journal files, the blob folders, the admin key.
const MADE_BY_A_FIRST_START: [&str; 6] = [
    "ferry.db",
    "ferry.db-wal",
    "ferry.db-shm",
    "blobs",
    "blob-spool",
    "admin.key",
];

/// A data directory as a start found it, when it held no instance (no
/// `ferry.db`; metadata in SQLite): which of [`MADE_BY_A_FIRST_START`]
/// were absent, what those that were there held (a blob folder without a
/// database gets the store's folders), and which directories of its path
/// did not exist. A refused start removes exactly what was not there
/// ([`FirstStart::undo`]) and nothing else: whatever was there before
/// stays. With a database URL the instance lives in the database: the
/// directory is noted whatever it holds, and put back only when the
/// database held no instance either (the caller decides).
struct FirstStart {
    data_dir: std::path::PathBuf,
    absent: Vec<&'static str>,
    /// Folders among [`MADE_BY_A_FIRST_START`] that were there, with the
    /// names they held.
    present: Vec<(std::path::PathBuf, std::collections::HashSet<std::ffi::OsString>)>,
    /// The data directory and the parents `create_dir_all` will make,
    /// deepest first.
    missing_dirs: Vec<std::path::PathBuf>,
}

impl FirstStart {
    fn note(data_dir: &Path, sqlite: bool) -> Option<FirstStart> {
        let exists = |p: &Path| p.symlink_metadata().is_ok();
        if sqlite && exists(&data_dir.join("ferry.db")) {
            return None;
        }
        let mut missing_dirs = Vec::new();
        let mut dir = data_dir;
        while !dir.as_os_str().is_empty() && !exists(dir) {
            missing_dirs.push(dir.to_path_buf());
            match dir.parent() {
                Some(parent) => dir = parent,
                None => break,
            }
        }
        let (absent, there): (Vec<&'static str>, Vec<&'static str>) = MADE_BY_A_FIRST_START
            .into_iter()
            .partition(|name| !exists(&data_dir.join(name)));
        let present = there
            .into_iter()
            .map(|name| data_dir.join(name))
            .filter(|p| p.is_dir())
            .filter_map(|p| {
                // Unreadable: nothing in it is removed.
                let names = std::fs::read_dir(&p)
                    .ok()?
                    .filter_map(|e| e.ok().map(|e| e.file_name()))
                    .collect();
                Some((p, names))
            })
            .collect();
        Some(FirstStart {
            data_dir: data_dir.to_path_buf(),
            absent,
            present,
            missing_dirs,
        })
    }

    /// Removes what this start made: the entries noted absent, what is
    /// new in the folders noted present, then the directories it created,
    /// each only if empty by then. A failure is logged; the start's own
    /// error is what the caller reports.
    fn undo(self) {
        let remove = |path: &Path| {
            let removed = match path.symlink_metadata() {
                Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
                Ok(_) => std::fs::remove_file(path),
                Err(_) => return,
            };
            if let Err(e) = removed {
                tracing::warn!(path = %path.display(), error = %e, "could not remove what the refused start made");
            }
        };
        for name in self.absent {
            remove(&self.data_dir.join(name));
        }
        for (dir, held) in self.present {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.filter_map(Result::ok) {
                if !held.contains(&e.file_name()) {
                    remove(&e.path());
                }
            }
        }
        for dir in self.missing_dirs {
            // Not empty: something else is in it now, and it stays.
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

/// Refuses a `FERRY_ADMIN_KEY` that is set but too weak to be a full admin
/// credential (under [`MIN_ADMIN_KEY`] characters, or with spaces or
/// control characters), before the start opens or creates anything.
fn check_admin_key_env() -> anyhow::Result<()> {
    if let Ok(key) = std::env::var("FERRY_ADMIN_KEY")
        && !key.is_empty()
        && (key.chars().count() < MIN_ADMIN_KEY || key.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        anyhow::bail!(
            "FERRY_ADMIN_KEY must be at least {MIN_ADMIN_KEY} characters without spaces or control characters \
             (it is a full admin credential); unset it to have a random one made"
        );
    }
    Ok(())
}

/// Shortest `FERRY_ADMIN_KEY` accepted (a generated key is 43 characters).
const MIN_ADMIN_KEY: usize = 12;

/// The admin key (named `admin`): `FERRY_ADMIN_KEY` if set; else the one in
/// `DATA_DIR/admin.key`; else a new one, printed once and saved there (0600).
///
/// A key is installed only while the instance has a key named `admin`
/// (the variable then replaces it, as on every node sharing the database)
/// or has no admin key at all (the first start, or an instance locked out
/// by deleting its last admin key, which gets a new one). A deleted
/// `admin` with other admin keys left stays deleted; deleting it also
/// removes the file holding it ([`ferry_core::Ferry::delete_key`]), so no
/// restart brings a revoked key back. Errors: a `FERRY_ADMIN_KEY` shorter
/// than [`MIN_ADMIN_KEY`] or with spaces or control characters.
async fn ensure_admin_key(ferry: &Ferry, data_dir: &Path, shared: bool) -> anyhow::Result<()> {
    let keys = ferry.keys().await?;
    let named = keys.iter().find(|k| k.name == "admin").map(|k| k.hash);
    // A key a user made under the name `admin` with less permission is
    // replaced when an admin key is installed: said, never silently.
    let lesser = keys
        .iter()
        .find(|k| k.name == "admin" && k.permission != ferry_store::Permission::Admin)
        .map(|k| format!("{:?}", k.permission).to_lowercase());
    let replacing_lesser = |installing: bool| -> anyhow::Result<()> {
        if let (true, Some(perm)) = (installing, &lesser) {
            tracing::warn!(
                "the key named admin ({perm} permission) is replaced by the admin key; its secret stops working"
            );
            say!(
                "admin API key: the key named admin ({perm} permission) was replaced by the admin key; its secret stops working"
            );
        }
        Ok(())
    };
    let any_admin = keys
        .iter()
        .any(|k| k.permission == ferry_store::Permission::Admin);
    // Nodes sharing a database are one instance with one admin key: a node
    // never replaces the key another node made (its own admin.key, or none,
    // is not a reason to lock everyone else out).
    let stored = if shared { named } else { None };
    let may_install = named.is_some() || !any_admin;
    if let Ok(key) = std::env::var("FERRY_ADMIN_KEY")
        && !key.is_empty()
    {
        check_admin_key_env()?;
        if !may_install {
            tracing::warn!(
                "FERRY_ADMIN_KEY is not installed: the admin key was deleted and other admin keys remain \
                 (a deleted key does not come back); unset FERRY_ADMIN_KEY or use an existing admin key"
            );
            return Ok(());
        }
        if named.is_none() && !keys.is_empty() {
            tracing::warn!("no admin key was left: FERRY_ADMIN_KEY is installed as the admin key");
        }
        // With nodes sharing a database, a different key here replaces the
        // one every node uses: said loudly, never silently.
        if stored.is_some_and(|hash| hash != ferry_core::auth::hash_secret(&key)) {
            tracing::warn!(
                "FERRY_ADMIN_KEY is not the instance's admin key: it replaces it for every node sharing this database \
                 (the old key stops working everywhere); give every node the same FERRY_ADMIN_KEY"
            );
            say!("admin API key: FERRY_ADMIN_KEY replaced the instance's admin key on every node");
        }
        // Already the admin key: left as it is (its creation time too).
        if named != Some(ferry_core::auth::hash_secret(&key)) || lesser.is_some() {
            replacing_lesser(true)?;
            ferry.set_admin_key(&key).await?;
        }
        return Ok(());
    }
    let path = data_dir.join("admin.key");
    match std::fs::read_to_string(&path) {
        Ok(key) => match stored {
            Some(hash) if hash != ferry_core::auth::hash_secret(key.trim()) => {
                tracing::warn!(
                    file = %path.display(),
                    "this node's admin.key is not the admin key of the instance (another node sharing the database set it); it is not used, and the instance's key stays"
                );
            }
            Some(_) => {}
            None if may_install => {
                let same = named == Some(ferry_core::auth::hash_secret(key.trim())) && lesser.is_none();
                if !same {
                    replacing_lesser(true)?;
                    ferry.set_admin_key(key.trim()).await?
                }
            }
            None => tracing::warn!(
                file = %path.display(),
                "the key in this file was deleted as the admin key and other admin keys remain: it is not installed again"
            ),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if stored.is_some() {
                say!(
                    "admin API key: the instance has one already (made by another node sharing its database); \
                     copy that node's admin.key to {} or set FERRY_ADMIN_KEY",
                    path.display()
                );
                return Ok(());
            }
            if any_admin {
                // Deleted on purpose; other admin keys manage the instance.
                return Ok(());
            }
            let key = ferry_core::auth::generate_secret();
            write_private(&path, &key)?;
            replacing_lesser(true)?;
            ferry.set_admin_key(&key).await?;
            if keys.is_empty() {
                say!("admin API key (shown once; saved to {}): {key}", path.display());
            } else {
                say!(
                    "admin API key (shown once; saved to {}; the instance had no admin key left): {key}",
                    path.display()
                );
            }
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    Ok(())
}

/// The replications a configuration file declares.
fn declared_names(d: &ferry_server::declare::Declarations) -> std::collections::HashMap<String, bool> {
    d.replications
        .iter()
        .map(|r| (r.name.clone(), !r.accept_tokens.is_empty()))
        .collect()
}

fn source_name(cfg: &Config) -> String {
    cfg.source
        .as_ref()
        .map_or_else(|| "the configuration".into(), |p| p.display().to_string())
}

fn log_applied(a: &ferry_server::declare::Applied) {
    use ferry_replication::declare::Change;
    let count = |list: &[(String, Change)], c: Change| list.iter().filter(|(_, x)| *x == c).count();
    tracing::info!(
        feeds_created = count(&a.feeds, Change::Created),
        replications_created = count(&a.replications, Change::Created),
        replications_updated = count(&a.replications, Change::Updated),
        unchanged = count(&a.feeds, Change::Unchanged) + count(&a.replications, Change::Unchanged),
        tokens_added = a.tokens_added,
        pruned = a.pruned.len(),
        tokens_pruned = a.tokens_pruned.len(),
        "configuration applied"
    );
    for t in &a.tokens_pruned {
        tracing::info!(token = %t, "revoked an accepted token the file does not declare (prune)");
    }
    for t in &a.tokens_revoked {
        tracing::warn!(token = %t, "a declared accepted token is revoked here and stays revoked: remove it from accept_tokens");
    }
    for w in &a.warnings {
        tracing::warn!("configuration applied with a warning: {w}");
    }
}

/// On SIGHUP, reads the configuration file again and applies its feeds and
/// replications (other settings take effect at the next start). A file
/// that cannot be read or applied is logged and changes nothing.
fn reapply_on_sighup(path: std::path::PathBuf, ferry: Ferry, replicator: Replicator) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).context("listening for SIGHUP")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            // Read (the file, its token files) off the runtime's threads:
            // a slow disk or a stalled network mount delays this reload
            // only, never serving or stopping.
            let file = path.clone();
            let decls =
                tokio::task::spawn_blocking(move || Config::reload(&file).and_then(|c| c.declarations()))
                    .await
                    .unwrap_or_else(|e| Err(anyhow::anyhow!("reading the file: {e}")));
            let result = match decls {
                Ok(Some(d)) => {
                    let applied = ferry_server::declare::apply(&ferry, &replicator, &d).await;
                    if applied.is_ok() {
                        replicator.set_file_declared(path.display().to_string(), declared_names(&d));
                    }
                    applied.map_err(anyhow::Error::from)
                }
                Ok(None) => continue,
                Err(e) => Err(e),
            };
            match result {
                Ok(applied) => log_applied(&applied),
                Err(e) => tracing::error!(
                    file = %path.display(),
                    error = format!("{e:#}"),
                    "configuration not applied; the running one stays"
                ),
            }
        }
    });
    Ok(())
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    Ok(())
}

/// Whether this node runs this period's turn of the instance's periodic
/// job `job` (every `every`): the nodes sharing a store take turns, so
/// the job runs about once per period however many nodes there are
/// (counted per node in `ferry_periodic_job_runs_total{job}`)
/// ([`ferry_store::MetadataStore::claim_periodic`]; claims count from a
/// tenth of a period early, so a node whose tick comes a little early
/// does not miss its turn). A store error skips the turn.
async fn my_turn(ferry: &Ferry, job: &str, every: Duration) -> bool {
    let every_ms = (every.as_millis() as i64).saturating_mul(9) / 10;
    match ferry
        .metadata()
        .claim_periodic(job, ferry_store::now_millis(), every_ms)
        .await
    {
        Ok(mine) => {
            if mine {
                metrics::counter!("ferry_periodic_job_runs_total", "job" => job.to_string()).increment(1);
            }
            mine
        }
        Err(e) => {
            tracing::warn!(job, error = %e, "could not claim a periodic job's turn; skipped");
            false
        }
    }
}

fn spawn_background(ferry: Ferry, gc_interval_secs: u64) {
    let f = ferry.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            if let Err(e) = f.flush_downloads().await {
                tracing::warn!(error = %e, "could not record download counts");
            }
        }
    });
    if gc_interval_secs > 0 {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(gc_interval_secs));
            tick.tick().await; // not at start-up
            loop {
                tick.tick().await;
                if !my_turn(&ferry, "gc", Duration::from_secs(gc_interval_secs)).await {
                    continue;
                }
                match ferry.collect_garbage().await {
                    Ok(r) => tracing::info!(
                        blobs_deleted = r.blobs_deleted,
                        partials_removed = r.partials_removed,
                        "garbage collection"
                    ),
                    Err(e) => tracing::warn!(error = %e, "garbage collection failed"),
                }
            }
        });
    }
}

/// Re-hashes a random sample of stored blobs every `interval_secs`
/// (first after one interval); what it finds shows in `/health` and
/// `ferry_blobs_damaged`.
fn spawn_fsck(ferry: Ferry, interval_secs: u64, sample: f64) {
    if interval_secs == 0 || sample <= 0.0 {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(interval_secs));
        tick.tick().await;
        loop {
            tick.tick().await;
            if !my_turn(&ferry, "fsck-sample", Duration::from_secs(interval_secs)).await {
                continue;
            }
            match ferry.fsck(sample).await {
                Ok(r) if r.missing.is_empty() && r.corrupt.is_empty() => {
                    tracing::info!(
                        checked = r.checked,
                        bytes = r.bytes,
                        "integrity check: all intact"
                    )
                }
                Ok(r) => tracing::error!(
                    checked = r.checked,
                    missing = r.missing.len(),
                    corrupt = r.corrupt.len(),
                    "integrity check found damaged blobs; run `ferry fsck --repair`"
                ),
                Err(e) => tracing::warn!(error = %e, "integrity check failed"),
            }
        }
    });
}

/// Drops tombstones older than the retention, hourly for the instance
/// (nodes take turns, [`my_turn`]), and once at each node's start.
fn spawn_tombstone_pruning(replicator: Replicator, retention_secs: u64) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        let mut at_start = true;
        loop {
            tick.tick().await;
            // At start a node prunes whatever the others did (a restart
            // applies a shorter retention at once); then they take turns.
            let mine = my_turn(replicator.ferry(), "prune-tombstones", Duration::from_secs(3600)).await;
            let first = std::mem::take(&mut at_start);
            if !(mine || first) {
                continue;
            }
            match replicator
                .prune_tombstones(Duration::from_secs(retention_secs))
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::info!(tombstones = n, "pruned tombstones past the retention"),
                Err(e) => tracing::warn!(error = %e, "tombstone pruning failed"),
            }
        }
    });
}

async fn shutdown_signal(grace_secs: u64) {
    stop_signal().await;
    tracing::info!(
        grace_secs,
        "shutting down: finishing requests in flight (connections still open after the grace period are closed; a second signal closes them now)"
    );
}

/// Completes at the next SIGTERM or SIGINT.
async fn stop_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// `HOSTNAME:LISTEN`, the same at every start of a node on a fixed
/// address; `None` (a random name) for port 0, whose address changes.
fn default_node_name(listen: std::net::SocketAddr) -> Option<String> {
    if listen.port() == 0 {
        return None;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    Some(format!("{host}:{listen}"))
}

/// Opens the configured blob store and says which it is: the folder
/// `data_dir/blobs`, or an S3 bucket (with `data_dir/blob-spool` for what
/// is still being received).
async fn open_blobs(cfg: &Config) -> anyhow::Result<Arc<dyn BlobStore>> {
    Ok(match &cfg.blob_store {
        BlobStoreConfig::Fs => {
            let dir = cfg.data_dir.join("blobs");
            say!("blob store: filesystem {}", dir.display());
            // With a shared database, other nodes may share the folder too:
            // each node stages its uploads apart from the others'.
            let store = if cfg.database_url.is_some() {
                FsBlobStore::open_shared(&dir).await
            } else {
                FsBlobStore::open(&dir).await
            };
            Arc::new(store.context("opening blob store")?)
        }
        BlobStoreConfig::S3(s3) => {
            // Reads the secret's file, if any: off the async threads.
            let (settings, source) = (s3.clone(), cfg.source.clone());
            let store_cfg = tokio::task::spawn_blocking(move || settings.resolve(source.as_deref()))
                .await
                .context("reading the blob store's settings")??;
            let what = store_cfg.describe();
            say!("blob store: s3 {what}");
            // With a shared database, other nodes may share the bucket and
            // even the data directory: the spool then keeps this node's
            // uploads and multipart journals apart from the others'.
            let spool = cfg.data_dir.join("blob-spool");
            let store = if cfg.database_url.is_some() {
                S3BlobStore::open_shared(store_cfg, spool).await
            } else {
                S3BlobStore::open(store_cfg, spool).await
            };
            Arc::new(store.with_context(|| format!("opening blob store (s3 {what})"))?)
        }
    })
}
