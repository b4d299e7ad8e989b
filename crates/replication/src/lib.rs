//! Feed replication between Ferry instances.
//!
//! * [`config`]: how a replication is configured (communication mode,
//!   replication mode as [`config::Flows`], feed pairs, filters, guards).
//! * [`protocol`]: the v1 wire types.
//! * [`incoming`]: what a peer holding a sync token may do here.
//! * [`engine`]: one execution on the outgoing side.
//! * [`scheduler`]: when executions run (interval, long polling, local
//!   changes, on demand), one at a time per replication.
//!
//! Everything feed-type specific is already in the items: the engine moves
//! entries (key, metadata, blob digests, stamp) and blobs, nothing else.

pub mod batch;
pub mod bundle;
pub mod client;
pub mod config;
pub mod declare;
pub mod diag;
pub mod engine;
mod error;
pub mod filter;
pub mod incoming;
pub mod peers;
pub mod protocol;
pub mod repair;
mod scheduler;
mod throttle;
pub mod token;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use ferry_core::Ferry;
use ferry_store::{ExecutionRecord, FeedRecord, ReplicationRecord, ReplicationStore, now_millis};
use ferry_types::{Digest, FeedName, ItemKey};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

pub use error::ReplError;

use crate::config::{Communication, ReplicationConfig, UpdateRequest};
use crate::diag::DiagLog;
use crate::engine::{Direction, Lag, Progress, Report, Run};
use crate::filter::Filter;
use crate::protocol::{FeedDigest, MAX_KEYS};

/// The replication service of one instance. Cheap to clone.
#[derive(Clone)]
pub struct Replicator(Arc<Inner>);

struct Inner {
    /// The configuration file `ferry serve` applies (at start and on
    /// SIGHUP) and the replications it declares: a change made through the
    /// API to one of them lasts until the file is applied again. Each name
    /// says whether its declaration lists `accept_tokens` (a token made
    /// through the API is then not among them).
    file_declared: Mutex<Option<(String, HashMap<String, bool>)>>,
    /// Long polls waiting now, by sync token id (see
    /// [`incoming::WaitSlot`]).
    waiting: Mutex<HashMap<String, usize>>,
    /// Blob transfers running now, by sync token id (see
    /// [`incoming::TransferSlot`]).
    transferring: Mutex<HashMap<String, usize>>,
    ferry: Ferry,
    store: Arc<dyn ReplicationStore>,
    /// This node's name as the holder of execution leases: the configured
    /// node name (or a random one) when nodes share the store, one fixed
    /// name otherwise (a restarted instance takes its own leases back at
    /// once).
    node: String,
    /// This process's id for [`protocol::PROCESS_HEADER`]: None when
    /// nodes share the store (they are one instance by design).
    process: Option<String>,
    http: reqwest::Client,
    diag: DiagLog,
    locks: Mutex<HashMap<i64, Arc<tokio::sync::Mutex<()>>>>,
    running: Mutex<HashMap<i64, (i64, Arc<Progress>)>>,
    status: Mutex<HashMap<i64, Status>>,
    scheduler: scheduler::Scheduler,
    /// Becomes true when the instance shuts down: long polls end at once.
    stopping: tokio::sync::watch::Sender<bool>,
    /// Counts changes to what peers' sessions rest on (a token revoked, a
    /// replication changed or deleted): waiting long polls wake on it and
    /// check their session again.
    sessions: tokio::sync::watch::Sender<u64>,
    /// Blobs each incoming replication's peer sent recently (by
    /// replication id), which its `apply` may then reference.
    received: Mutex<HashMap<i64, HashMap<Digest, std::time::Instant>>>,
    /// The instance each incoming replication's peer last handshook as
    /// (by replication id): it may read back blobs of items it wrote.
    peers: Mutex<HashMap<i64, ferry_types::InstanceId>>,
    /// The hub's view of the instances connecting to incoming
    /// replications (see [`peers`]).
    peer_book: peers::PeerBook,
    /// Pages long polls brought, by replication id and local feed, with the
    /// cursor and anchor they were asked from and when: an execution
    /// starting there begins with it instead of asking again.
    polled: Mutex<HashMap<(i64, FeedName), Polled>>,
    /// Handshakes an execution may reuse, by replication id.
    handshakes: Mutex<HashMap<i64, (std::time::Instant, protocol::HandshakeResponse)>>,
    /// The feeds the other side's last handshake refused, by replication
    /// id (kept when the handshake itself is forgotten).
    refused_feeds: Mutex<HashMap<i64, Vec<FeedName>>>,
    /// Items deleted by bundle imports, by feed: when the count started
    /// (ms) and how many since, so bundles imported within the delete
    /// guard's hour count together (kept by this node while it runs).
    bundle_deletions: Mutex<HashMap<ferry_store::FeedId, (i64, u64)>>,
    /// The executions the last stop cut were closed
    /// ([`Replicator::close_interrupted`]): done once, before any starts.
    recovered: std::sync::atomic::AtomicBool,
    /// Work a stopped execution left to finish in the background (the
    /// small blobs it had received whole, being committed): a graceful
    /// stop waits for it ([`Replicator::release_leases`]).
    kept: tokio_util::task::TaskTracker,
}

/// A page a long poll brought: asked from `since` with `anchor`, at `at`.
struct Polled {
    since: i64,
    anchor: i64,
    at: std::time::Instant,
    page: protocol::ChangesPage,
}

/// How long a long poll's page may wait for the execution it woke.
/// The trigger of an execution a node goes on with after the node that
/// ran it died (its lease ran out).
pub(crate) const TAKEOVER: &str = "takeover";

const POLLED_TTL: std::time::Duration = std::time::Duration::from_secs(30);
/// How long [`Replicator::check_connection`] waits for the other end.
pub const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);
/// How long a handshake is reused by later executions (a failed execution
/// or a change of the replication forgets it at once).
pub(crate) const HANDSHAKE_REUSE: std::time::Duration = std::time::Duration::from_secs(300);

/// How long a blob a peer sent counts as sent by it, awaiting the `apply`
/// that references it; and how many such blobs are kept per replication.
const RECEIVED_TTL: std::time::Duration = std::time::Duration::from_secs(3600);
const RECEIVED_MAX: usize = 100_000;

/// The live state of one replication, for the overview.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    pub state: String,
    pub last_execution: Option<i64>,
    pub last_outcome: Option<String>,
    pub last_error: Option<String>,
    pub next_run: Option<String>,
    /// Per (local) feed, how far it is behind, as last measured (see
    /// [`Lag::measured_at`]).
    pub lag: HashMap<String, Lag>,
    /// Set while the long poll of a pulling replication cannot reach the
    /// other instance: since when (RFC 3339) and why. The lag is then not
    /// known; it stays as last measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreachable: Option<Unreachable>,
    /// Set while the other instance sees two running instances use this
    /// instance's id (this one started from a copy of another's data
    /// directory, or the other way round): what it says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_shared: Option<String>,
}

/// Longest a graceful stop waits for blobs stopped executions had
/// received to be committed ([`Replicator::release_leases`]).
pub const KEPT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The other instance out of reach, as a long poll found it.
#[derive(Debug, Clone, Serialize)]
pub struct Unreachable {
    /// First failed long poll of this outage (RFC 3339).
    pub since: String,
    /// The last failure's message.
    pub error: String,
}

/// What `run` returns.
#[derive(Debug, Clone, Serialize)]
pub struct ExecutionResult {
    pub id: i64,
    pub outcome: String,
    pub error: Option<String>,
    pub report: Report,
    /// The execution that was already running when this one was asked
    /// for, which [`Replicator::run`] waited for (as it ended).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waited_for: Option<ExecutionRecord>,
}

/// How one feed pair compares on both ends ([`Replicator::verify`]).
#[derive(Debug, Clone, Serialize)]
pub struct PairVerdict {
    pub local: FeedName,
    pub remote: FeedName,
    /// Both ends hold the same live items at the same versions, and (when
    /// the other side computes it) with the same contents.
    pub same: bool,
    pub local_items: u64,
    pub remote_items: u64,
    /// Whether the contents (each version's blob digests) were compared
    /// too; false against an older peer, which compares versions only.
    pub contents_compared: bool,
    /// The versions agree and their contents do not: some version was
    /// written twice with other contents (copies under one instance id).
    pub contents_differ: bool,
    /// Live items here that the other side's own filter leaves out (kept
    /// from before it was narrowed, say): not compared, as the replication
    /// carries them neither way.
    #[serde(skip_serializing_if = "is_zero")]
    pub outside_their_filter: u64,
    /// Items held at the same version on both ends with other contents
    /// (the first [`VERIFY_NAMED`], by key), and how many there are in
    /// all: what two instances under one instance id wrote in the same
    /// instant. A new write of each settles it everywhere.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub same_version_other_content: Vec<ItemKey>,
    #[serde(skip_serializing_if = "is_zero")]
    pub same_version_other_content_count: u64,
}

/// Most items [`PairVerdict::same_version_other_content`] names.
pub const VERIFY_NAMED: usize = 20;

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    pub name: String,
    pub config: ReplicationConfig,
    pub status: Status,
    /// Running execution: id, items and bytes done.
    pub running: Option<serde_json::Value>,
}

impl Replicator {
    pub fn new(ferry: Ferry, store: Arc<dyn ReplicationStore>) -> Self {
        let http = Self::http_client_builder().build().unwrap_or_default();
        Self::with_http_client(ferry, store, http)
    }

    /// The settings of the client used to reach other instances (connect
    /// timeout, connection pool); add TLS roots to it and pass the client to
    /// [`Replicator::with_http_client`].
    pub fn http_client_builder() -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .pool_max_idle_per_host(8)
    }

    /// Like [`Replicator::new`], reaching other instances with `http`
    /// (built from [`Replicator::http_client_builder`], e.g. trusting a
    /// private CA).
    pub fn with_http_client(ferry: Ferry, store: Arc<dyn ReplicationStore>, http: reqwest::Client) -> Self {
        let node = if store.shared_by_nodes() {
            ferry
                .config()
                .node_name
                .clone()
                .unwrap_or_else(|| format!("node-{}", ferry_types::InstanceId::random()))
        } else {
            "this-instance".to_string()
        };
        let process = (!store.shared_by_nodes()).then(|| ferry_types::InstanceId::random().to_string());
        Replicator(Arc::new(Inner {
            ferry,
            store,
            node,
            process,
            http,
            diag: DiagLog::default(),
            locks: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            status: Mutex::new(HashMap::new()),
            scheduler: scheduler::Scheduler::default(),
            stopping: tokio::sync::watch::channel(false).0,
            sessions: tokio::sync::watch::channel(0).0,
            received: Mutex::new(HashMap::new()),
            peers: Mutex::new(HashMap::new()),
            peer_book: peers::PeerBook::default(),
            polled: Mutex::new(HashMap::new()),
            handshakes: Mutex::new(HashMap::new()),
            refused_feeds: Mutex::new(HashMap::new()),
            bundle_deletions: Mutex::new(HashMap::new()),
            waiting: Mutex::new(HashMap::new()),
            transferring: Mutex::new(HashMap::new()),
            file_declared: Mutex::new(None),
            recovered: std::sync::atomic::AtomicBool::new(false),
            kept: tokio_util::task::TaskTracker::new(),
        }))
    }

    /// Starts shutting down: long polls of peers answer at once (so a
    /// graceful stop does not wait for them), and scheduled executions stop.
    pub fn shutdown(&self) {
        self.0.stopping.send_replace(true);
        self.0.scheduler.stop_all();
    }

    /// After a graceful stop: waits (up to [`KEPT_WAIT`]) for what stopped
    /// executions left committing in the background — small blobs they
    /// had received whole, so the next start does not move them again —
    /// then gives up the execution leases this node holds (so other nodes,
    /// or this node restarted under another name, need not wait for them
    /// to run out). Failures are only logged.
    pub async fn release_leases(&self) {
        self.0.kept.close();
        if tokio::time::timeout(KEPT_WAIT, self.0.kept.wait()).await.is_err() {
            tracing::warn!(target: "replication", "blobs received before the stop were still being committed after {KEPT_WAIT:?}; the next execution fetches what was not");
        }
        let Ok(recs) = self.store().replications().await else {
            return;
        };
        for rec in recs {
            if let Err(e) = self.store().release_execution_lease(rec.id, &self.0.node).await {
                tracing::warn!(target: "replication", error = %e, "giving up an execution lease failed; it runs out by itself");
            }
        }
    }

    /// Waits (up to twice the lease) for this node to hold replication
    /// `id`'s execution lease: another node's execution ends, or the lease
    /// of a node that died runs out. Conflict if it never does.
    async fn wait_for_lease(&self, rec: &ReplicationRecord) -> Result<(), ReplError> {
        let lease = self.ferry().config().execution_lease;
        let deadline = tokio::time::Instant::now() + lease * 2;
        loop {
            if self.take_lease(rec.id).await? {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ReplError::Conflict(format!(
                    "an execution of {} is running on another node of this instance",
                    rec.name
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }

    /// Runs `work` in the background, awaited by a graceful stop
    /// ([`Replicator::release_leases`]).
    pub(crate) fn keep(&self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        self.0.kept.spawn(work);
    }

    /// A receiver that turns true when [`Replicator::shutdown`] is called.
    pub fn shutdown_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.0.stopping.subscribe()
    }

    /// A receiver that changes whenever a sync token is revoked or a
    /// replication is updated or deleted on this node.
    pub(crate) fn sessions_signal(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.sessions.subscribe()
    }

    fn sessions_changed(&self) {
        self.0.sessions.send_modify(|g| *g = g.wrapping_add(1));
    }

    pub fn ferry(&self) -> &Ferry {
        &self.0.ferry
    }
    pub fn store(&self) -> &Arc<dyn ReplicationStore> {
        &self.0.store
    }
    pub fn http(&self) -> &reqwest::Client {
        &self.0.http
    }
    /// Notes that the configuration file `file` (applied at start and on
    /// SIGHUP) declares the replications `names`.
    pub fn set_file_declared(&self, file: String, names: HashMap<String, bool>) {
        if let Ok(mut d) = self.0.file_declared.lock() {
            *d = Some((file, names));
        }
    }

    /// The configuration file that declares replication `name`, if one
    /// does (see [`Replicator::set_file_declared`]).
    pub fn declared_in_file(&self, name: &str) -> Option<String> {
        let d = self.0.file_declared.lock().ok()?;
        d.as_ref()
            .filter(|(_, names)| names.contains_key(name))
            .map(|(file, _)| file.clone())
    }

    /// The configuration file whose declaration of replication `name` lists
    /// the tokens it accepts (`accept_tokens`), if one does: a token made
    /// through the API is not among them, so the file's next application
    /// names it in a warning, or revokes it with `prune`.
    pub fn tokens_listed_in_file(&self, name: &str) -> Option<String> {
        let d = self.0.file_declared.lock().ok()?;
        d.as_ref()
            .filter(|(_, names)| names.get(name).copied().unwrap_or(false))
            .map(|(file, _)| file.clone())
    }

    /// A client of the replication API of the instance at `url` with sync
    /// token `token`, naming this instance (and process) on every request.
    pub fn remote(&self, url: &str, token: &str) -> client::Remote {
        client::Remote::new(self.0.http.clone(), url, token, self.ferry().instance_id())
            .with_process(self.0.process.as_deref())
    }
    pub fn diag(&self) -> &DiagLog {
        &self.0.diag
    }

    /// Remembers that the peer of incoming replication `id` sent `digest`.
    pub(crate) fn note_received(&self, id: i64, digest: Digest) {
        let Ok(mut all) = self.0.received.lock() else {
            return;
        };
        let sent = all.entry(id).or_default();
        if sent.len() >= RECEIVED_MAX {
            let now = std::time::Instant::now();
            sent.retain(|_, at| now.duration_since(*at) < RECEIVED_TTL);
            if sent.len() >= RECEIVED_MAX {
                // Oldest first out: a peer that sends more than this
                // between applies sends the oldest again.
                if let Some(oldest) = sent.iter().min_by_key(|(_, at)| **at).map(|(d, _)| *d) {
                    sent.remove(&oldest);
                }
            }
        }
        sent.insert(digest, std::time::Instant::now());
    }

    /// Whether the peer of incoming replication `id` sent `digest` recently.
    pub(crate) fn received_by(&self, id: i64, digest: &Digest) -> bool {
        self.0.received.lock().is_ok_and(|all| {
            all.get(&id)
                .and_then(|sent| sent.get(digest))
                .is_some_and(|at| at.elapsed() < RECEIVED_TTL)
        })
    }

    /// Whether the blob is committed here (registered and its file present).
    pub async fn has_blob(&self, d: &Digest) -> Result<bool, ReplError> {
        Ok(self.ferry().metadata().blob_present(d).await? && self.ferry().blob_size(d).await?.is_some())
    }

    fn parse(rec: &ReplicationRecord) -> Result<ReplicationConfig, ReplError> {
        serde_json::from_value(rec.config.clone()).map_err(|e| {
            ReplError::Invalid(format!("stored configuration of {} is unreadable: {e}", rec.name))
        })
    }

    async fn record(&self, name: &str) -> Result<(ReplicationRecord, ReplicationConfig), ReplError> {
        let rec = self
            .store()
            .replication(name)
            .await?
            .ok_or_else(|| ReplError::NotFound(format!("replication {name} not found")))?;
        let cfg = Self::parse(&rec)?;
        Ok((rec, cfg))
    }

    // ------------------------------------------------------------ configure

    /// Creates replication `name`. An outgoing one is checked against the
    /// other end at once (a refused handshake refuses the creation); one
    /// whose other end cannot be reached yet is created, and the returned
    /// warning says so (it retries every interval).
    pub async fn create(
        &self,
        name: &str,
        cfg: ReplicationConfig,
    ) -> Result<(ReplicationRecord, Option<String>), ReplError> {
        self.check_new_config(name, &cfg, "; create it first").await?;
        let value = serde_json::to_value(&cfg).map_err(|e| ReplError::Invalid(e.to_string()))?;
        let rec = self.store().create_replication(name, value).await?;
        let mut warning = None;
        if cfg.is_outgoing() {
            // Check the other end now, so an impossible setup is refused at once.
            let probed = match self.probe_other_end(&rec, &cfg).await {
                Ok(w) => {
                    warning = w;
                    self.probe_sources(name, &cfg.blob_sources).await
                }
                Err(e) => Err(e),
            };
            let probed = probed.map(|w| {
                if let Some(w) = w {
                    warning = Some(join_warnings(warning.take(), w));
                }
            });
            if let Err(e) = probed {
                self.store().delete_replication(name).await?;
                return Err(e);
            }
            self.0.scheduler.start(self.clone(), rec.id, name.to_string());
            if let Some(w) = self.also_filled_by(name, &cfg).await? {
                warning = Some(join_warnings(warning.take(), w));
            }
        }
        Ok((rec, warning))
    }

    /// When outgoing `cfg` (replication `name`) only pulls into a feed
    /// that another outgoing replication only pulls into too: a warning
    /// naming them. The feed holds what both other sides hold, so neither
    /// replication verifies as the same as its side.
    pub(crate) async fn also_filled_by(
        &self,
        name: &str,
        cfg: &ReplicationConfig,
    ) -> Result<Option<String>, ReplError> {
        // Replications that also send back (mirrors of a mesh) bring
        // every side to the union: no warning for those.
        let pulls_only = |c: &ReplicationConfig| c.mode.flows.pull_missing && !c.mode.flows.push_missing;
        if !pulls_only(cfg) {
            return Ok(None);
        }
        // Per feed of `cfg`, the other replications pulling into it.
        let mut by_feed: Vec<(&FeedName, Vec<String>)> =
            cfg.feeds.iter().map(|p| (&p.local, Vec::new())).collect();
        for other in self.store().replications().await? {
            if other.name == name {
                continue;
            }
            let Ok(o) = Self::parse(&other) else { continue };
            if !o.is_outgoing() || !pulls_only(&o) {
                continue;
            }
            for (feed, names) in by_feed.iter_mut() {
                if o.feeds.iter().any(|q| &q.local == *feed) {
                    names.push(other.name.clone());
                }
            }
        }
        let shared: Vec<String> = by_feed
            .into_iter()
            .filter(|(_, names)| !names.is_empty())
            .map(|(feed, names)| {
                let which = if names.len() == 1 {
                    "replication"
                } else {
                    "replications"
                };
                format!(
                    "feed {feed} is pulled into by {which} {} too",
                    names.join(" and ")
                )
            })
            .collect();
        Ok((!shared.is_empty()).then(|| {
            format!(
                "{}: the feed then holds both other sides' items, so neither replication verifies as the same",
                shared.join(", ")
            )
        }))
    }

    /// Handshakes with the other end that outgoing configuration `cfg`
    /// (named `name`, not stored) points at, and says what went wrong,
    /// unreachable included: the web UI's check on the spot. It is the
    /// handshake `create` and `update` make ([`Run::handshake`]), without
    /// their leniency for an end that cannot be reached yet; nothing is
    /// stored here. Gives up after [`CHECK_TIMEOUT`].
    pub async fn check_connection(
        &self,
        name: &str,
        cfg: &ReplicationConfig,
    ) -> Result<protocol::HandshakeResponse, ReplError> {
        cfg.validate()?;
        let rec = declare::unsaved(name);
        let mut run = Run::new(self, &rec, cfg, Arc::new(Progress::default()))?;
        tokio::time::timeout(CHECK_TIMEOUT, run.handshake_whole())
            .await
            .unwrap_or_else(|_| {
                Err(ReplError::Transport(format!(
                    "no answer within {} s",
                    CHECK_TIMEOUT.as_secs()
                )))
            })
    }

    /// [`Replicator::check_connection`] for the configuration `req` would
    /// give replication `name` (its current token when `req` names none).
    pub async fn check_update(
        &self,
        name: &str,
        req: &UpdateRequest,
    ) -> Result<protocol::HandshakeResponse, ReplError> {
        let (_, old) = self.record(name).await?;
        let cfg = req.clone().apply_to(&old)?;
        self.check_connection(name, &cfg).await
    }

    /// Changes a replication's connection, filters or schedule. A new URL or
    /// token is checked against the other end first and refused, leaving the
    /// replication as it was, if that end refuses it. A narrower filter never
    /// deletes anything: items it leaves out simply stop being copied.
    ///
    /// Returns the stored record, and a warning when the new URL could not
    /// be reached yet (stored all the same, as `create` does).
    pub async fn update(
        &self,
        name: &str,
        req: UpdateRequest,
    ) -> Result<(ReplicationRecord, Option<String>), ReplError> {
        let (rec, old) = self.record(name).await?;
        let reconnect = req.changes_connection();
        let cfg = req.apply_to(&old)?;
        let mut warning = None;
        if reconnect {
            warning = self.probe_other_end(&rec, &cfg).await?;
        }
        if cfg.blob_sources != old.blob_sources
            && let Some(w) = self.probe_sources(name, &cfg.blob_sources).await?
        {
            warning = Some(join_warnings(warning.take(), w));
        }
        if cfg == old && !reconnect {
            // Nothing changes: nothing stored, no execution woken.
            return Ok((rec, None));
        }
        let value = self.replace_config(&rec, &old, &cfg, reconnect).await?;
        Ok((ReplicationRecord { config: value, ..rec }, warning))
    }

    /// Stores `cfg` as replication `rec`'s configuration (once no execution
    /// runs with the old one), restarts its cursors when the filters
    /// changed, and wakes it; `reconnect` restarts its long polls (new URL,
    /// token, mode or feeds). Returns the stored JSON.
    async fn replace_config(
        &self,
        rec: &ReplicationRecord,
        old: &ReplicationConfig,
        cfg: &ReplicationConfig,
        reconnect: bool,
    ) -> Result<serde_json::Value, ReplError> {
        let value = serde_json::to_value(cfg).map_err(|e| ReplError::Invalid(e.to_string()))?;
        let filters_changed = cfg.include != old.include || cfg.exclude != old.exclude;
        let mut stopped = false;
        if filters_changed {
            // Items a filter left out were passed over by the cursors; from
            // the start again, so a wider filter brings them (what both ends
            // already hold is skipped by its stamp). Not while an execution
            // runs with the old filter (the cursors it saves would undo
            // this): a running one is stopped first (it keeps what it
            // moved) and the next starts at once.
            stopped = self
                .stop_execution(&rec.name, "an update of its filters")
                .await?
                .is_some();
            let lock = self.lock_for(rec.id);
            let _guard = lock.lock().await;
            self.store().update_replication(&rec.name, value.clone()).await?;
            self.sessions_changed();
            for p in &cfg.feeds {
                for dir in [Direction::Pull, Direction::Push] {
                    let cursor = engine::cursor_name(dir, &p.local, &p.remote);
                    self.store().set_cursor(rec.id, &cursor, 0).await?;
                }
            }
        } else {
            // Any other setting: stored at once; an execution already
            // running goes on with the settings it started with (a cap
            // set too low is undone without waiting for it).
            self.store().update_replication(&rec.name, value.clone()).await?;
            self.sessions_changed();
        }
        self.forget_handshake(rec.id);
        if cfg.is_outgoing() {
            if reconnect {
                // The long polls hold the old URL and token; the main loop
                // reads the configuration afresh every time.
                self.0
                    .scheduler
                    .restart_watchers(self.clone(), rec.id, rec.name.clone());
            }
            if stopped {
                self.0.scheduler.wake_manual(rec.id);
            } else {
                self.0.scheduler.wake(rec.id);
            }
        }
        Ok(value)
    }

    pub async fn delete(&self, name: &str) -> Result<(), ReplError> {
        let (rec, _) = self.record(name).await?;
        self.0.scheduler.stop(rec.id);
        self.store().delete_replication(name).await?;
        self.sessions_changed();
        // The store may give this id to the next replication created: none
        // of this one's live state may pass to it.
        let id = rec.id;
        if let Ok(mut m) = self.0.status.lock() {
            m.remove(&id);
        }
        if let Ok(mut m) = self.0.received.lock() {
            m.remove(&id);
        }
        if let Ok(mut m) = self.0.peers.lock() {
            m.remove(&id);
        }
        self.forget_peers(id);
        if let Ok(mut m) = self.0.polled.lock() {
            m.retain(|(i, _), _| *i != id);
        }
        self.forget_handshake(id);
        if let Ok(mut m) = self.0.refused_feeds.lock() {
            m.remove(&id);
        }
        // Its lag gauges go with its status (rendered from it).
        if let Ok(mut st) = self.0.status.lock() {
            st.remove(&id);
        }
        Ok(())
    }

    /// A new sync token for an incoming replication, returned once.
    pub async fn new_token(&self, name: &str) -> Result<String, ReplError> {
        let (rec, cfg) = self.record(name).await?;
        if cfg.communication != Communication::Incoming {
            return Err(ReplError::Invalid(format!(
                "replication {name} is outgoing: tokens are generated on the incoming instance"
            )));
        }
        let (full, id, hash) = token::generate();
        self.store().add_sync_token(rec.id, &id, hash).await?;
        Ok(full)
    }

    pub async fn revoke_token(&self, name: &str, id: &str) -> Result<(), ReplError> {
        let (rec, _) = self.record(name).await?;
        let id = token::split(id).map_or(id, |(i, _)| i);
        if !self.store().revoke_sync_token(rec.id, id).await? {
            return Err(ReplError::NotFound(format!(
                "replication {name} has no token {id}"
            )));
        }
        self.sessions_changed();
        Ok(())
    }

    pub async fn tokens(&self, name: &str) -> Result<Vec<serde_json::Value>, ReplError> {
        let (rec, _) = self.record(name).await?;
        Ok(self
            .store()
            .sync_tokens(rec.id)
            .await?
            .into_iter()
            .map(|t| serde_json::json!({ "id": t.id, "created_at": t.created_at, "revoked": t.revoked }))
            .collect())
    }

    pub async fn overview(&self) -> Result<Vec<Overview>, ReplError> {
        let mut out = Vec::new();
        for rec in self.store().replications().await? {
            out.push(self.overview_of(&rec)?);
        }
        Ok(out)
    }

    pub async fn get(&self, name: &str) -> Result<Overview, ReplError> {
        let (rec, _) = self.record(name).await?;
        self.overview_of(&rec)
    }

    fn overview_of(&self, rec: &ReplicationRecord) -> Result<Overview, ReplError> {
        let config = Self::parse(rec)?;
        let mut status = self
            .0
            .status
            .lock()
            .ok()
            .and_then(|s| s.get(&rec.id).cloned())
            .unwrap_or_default();
        let running = self
            .0
            .running
            .lock()
            .ok()
            .and_then(|r| r.get(&rec.id).cloned())
            .map(|(id, p)| {
                let secs =
                    (now_millis() as u64).saturating_sub(p.started.load(Ordering::Relaxed)) as f64 / 1000.0;
                let bytes = p.bytes.load(Ordering::Relaxed);
                let (done, total) = (
                    p.items.load(Ordering::Relaxed),
                    p.items_total.load(Ordering::Relaxed),
                );
                let items_rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
                let bytes_rate = if secs > 0.0 { bytes as f64 / secs } else { 0.0 };
                let bytes_remaining = p.bytes_remaining();
                let (eta, basis) = eta(
                    (total.saturating_sub(done), items_rate),
                    bytes_remaining.map(|left| (left, bytes_rate)),
                );
                serde_json::json!({
                    "execution": id,
                    "items_done": done,
                    "items_total": total,
                    "bytes_done": bytes,
                    "bytes_total": bytes_remaining.map(|_| p.bytes_total.load(Ordering::Relaxed)),
                    "bytes_remaining": bytes_remaining,
                    // Of bytes_total, what needed no transfer (already
                    // there, shared, items not sent): done + skipped +
                    // remaining = total.
                    "bytes_skipped": bytes_remaining.map(|_| p.bytes_skipped.load(Ordering::Relaxed)),
                    "bytes_per_second": bytes_rate,
                    "eta_seconds": eta,
                    "eta_basis": basis,
                })
            });
        if status.state.is_empty() {
            status.state = if config.is_outgoing() {
                "idle".into()
            } else {
                "incoming".into()
            };
        }
        if running.is_some() {
            status.state = "running".into();
        }
        Ok(Overview {
            name: rec.name.clone(),
            config: config.redacted(),
            status,
            running,
        })
    }

    pub async fn executions(&self, name: &str, limit: usize) -> Result<Vec<ExecutionRecord>, ReplError> {
        let (rec, _) = self.record(name).await?;
        Ok(self.store().executions(rec.id, limit).await?)
    }

    // ------------------------------------------------------------ run

    fn lock_for(&self, id: i64) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.0.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(id).or_default().clone()
    }

    /// Runs one execution now, waiting for one already running to end first.
    pub async fn run(
        &self,
        name: &str,
        trigger: &str,
        confirm_deletes: bool,
        full: bool,
    ) -> Result<ExecutionResult, ReplError> {
        let (rec, cfg) = self.record(name).await?;
        if !cfg.is_outgoing() {
            return Err(ReplError::Invalid(format!(
                "replication {name} is incoming: run it from the outgoing instance"
            )));
        }
        // An execution already running (the one `create` started, say)
        // ends first; the answer says how it ended too, since it may have
        // done what this one was asked for.
        let running = match self.store().executions(rec.id, 1).await?.first() {
            Some(e) if e.outcome.is_none() => Some(e.id),
            _ => None,
        };
        let lock = self.lock_for(rec.id);
        let _guard = lock.lock().await;
        // Read again: an update may have changed it while this waited.
        let (rec, cfg) = self.record(name).await?;
        // Another node's execution of it ends first, too.
        self.wait_for_lease(&rec).await?;
        let waited_for = match running {
            Some(id) => self
                .store()
                .executions(rec.id, 20)
                .await?
                .into_iter()
                .find(|e| e.id == id),
            None => None,
        };
        let mut result = self
            .execute_locked(&rec, &cfg, trigger, confirm_deletes, full)
            .await?;
        result.waited_for = waited_for;
        Ok(result)
    }

    /// Stops the running execution of replication `name`, if any: it ends
    /// at its next await point with outcome `stopped` and a log line naming
    /// `by`; the replication itself stays scheduled (its next run goes on
    /// from the cursors saved so far). Returns the stopped execution's id,
    /// or None when nothing was running.
    ///
    /// Errors: [`ReplError::NotFound`] for an unknown replication.
    pub async fn stop_execution(&self, name: &str, by: &str) -> Result<Option<i64>, ReplError> {
        let (rec, _) = self.record(name).await?;
        let running = self.0.running.lock().ok().and_then(|r| r.get(&rec.id).cloned());
        if running.is_none() && self.store().shared_by_nodes() {
            // Another node may run it: ask it through the store; it stops
            // at once where the store carries events, else at its next
            // lease renewal (a third of the lease).
            let by = format!("{by} (through node {})", self.0.node);
            return Ok(self.store().request_execution_stop(rec.id, &by).await?);
        }
        Ok(running.map(|(exec_id, progress)| {
            if let Ok(mut b) = progress.stopped_by.lock() {
                *b = Some(by.to_string());
            }
            progress.stop.notify_one();
            exec_id
        }))
    }

    /// Runs one execution unless one is already running (then returns None).
    pub(crate) async fn run_if_idle(
        &self,
        rec_id: i64,
        trigger: &str,
    ) -> Result<Option<ExecutionResult>, ReplError> {
        let lock = self.lock_for(rec_id);
        let Ok(_guard) = lock.try_lock() else {
            return Ok(None);
        };
        let Some(rec) = self.store().replication_by_id(rec_id).await? else {
            return Ok(None);
        };
        // Another node of this instance runs it: its turn, not an error.
        if !self.take_lease(rec.id).await? {
            return Ok(None);
        }
        if trigger == TAKEOVER {
            // Only an execution still left running is taken over. Holding
            // the lease, this node reads the last one's state for good (its
            // old holder can no longer close it): one that ended between the
            // look that asked for a takeover and the lease is not followed
            // by a new execution in its name.
            let orphaned = match self.store().executions(rec.id, 1).await {
                Ok(list) => list.first().is_some_and(|e| e.outcome.is_none()),
                Err(e) => {
                    self.give_up_lease(rec.id).await;
                    return Err(e.into());
                }
            };
            if !orphaned {
                self.give_up_lease(rec.id).await;
                return Ok(None);
            }
        }
        let cfg = Self::parse(&rec)?;
        self.execute_locked(&rec, &cfg, trigger, false, false)
            .await
            .map(Some)
    }

    /// Takes (or renews) this node's lease on running replication `id`'s
    /// executions ([`ReplicationStore::take_execution_lease`]).
    async fn take_lease(&self, id: i64) -> Result<bool, ReplError> {
        let now = now_millis();
        let until = now + self.ferry().config().execution_lease.as_millis() as i64;
        Ok(self
            .store()
            .take_execution_lease(id, &self.0.node, now, until)
            .await?)
    }

    /// Renews the lease while an execution runs; returns (ending the
    /// execution) only when the lease is lost: another node took it over,
    /// or it ran out while the store could not be reached.
    /// Renews replication `id`'s execution lease every third of it while
    /// execution `exec` runs, saving what it reported so far each time
    /// (so a node taking it over, and every node showing it, has its log).
    /// Returns who stopped it: once the lease is lost, or when a Stop was
    /// asked through another node (heard at once where the store carries
    /// events, else at the next renewal).
    async fn hold_lease(&self, id: i64, exec: i64, adopted: bool, progress: &Progress) -> String {
        let lease = self.ferry().config().execution_lease;
        let mut held_until = now_millis() + lease.as_millis() as i64;
        let mut events = self
            .store()
            .shared_by_nodes()
            .then(|| self.ferry().metadata().events())
            .flatten();
        // A Stop asked before this node took the execution over (one asked
        // for a new execution finds it only once it runs: nothing to read).
        if adopted && let Some(by) = self.stop_requested(exec).await {
            return by;
        }
        loop {
            let renew = tokio::time::sleep(lease / 3);
            tokio::pin!(renew);
            loop {
                tokio::select! {
                    _ = &mut renew => break,
                    ev = next_event(&mut events) => {
                        let ask = match ev {
                            Some(ferry_store::StoreEvent::StopRequested { execution }) => execution == exec,
                            Some(ferry_store::StoreEvent::Resync) => true,
                            _ => false,
                        };
                        if ask && let Some(by) = self.stop_requested(exec).await {
                            return by;
                        }
                    }
                }
            }
            if let Some(by) = self.stop_requested(exec).await {
                return by;
            }
            match self.take_lease(id).await {
                Ok(true) => {
                    held_until = now_millis() + lease.as_millis() as i64;
                    if let Err(e) = self
                        .store()
                        .save_execution_report(exec, progress.snapshot(), &self.0.node)
                        .await
                    {
                        tracing::warn!(target: "replication", error = %e, "saving a running execution's log failed");
                    }
                }
                Ok(false) => {
                    return "this node (another node of the instance took over its execution lease)".into();
                }
                Err(e) => {
                    tracing::warn!(target: "replication", error = %e, "renewing the execution lease failed");
                    if now_millis() >= held_until {
                        return format!("this node (its execution lease ran out: {e})");
                    }
                }
            }
        }
    }

    /// Who asked execution `exec` to stop through another node, if anyone
    /// did (a store error counts as no).
    async fn stop_requested(&self, exec: i64) -> Option<String> {
        if !self.store().shared_by_nodes() {
            return None;
        }
        match self.store().execution_stop_request(exec).await {
            Ok(by) => by,
            Err(e) => {
                tracing::warn!(target: "replication", error = %e, "could not read whether an execution was asked to stop");
                None
            }
        }
    }

    /// Runs one execution while this node holds replication `rec`'s
    /// execution lease (its callers have just taken it: `run` through
    /// `wait_for_lease`, `run_if_idle`), then gives the lease up.
    async fn execute_locked(
        &self,
        rec: &ReplicationRecord,
        cfg: &ReplicationConfig,
        trigger: &str,
        confirm_deletes: bool,
        full: bool,
    ) -> Result<ExecutionResult, ReplError> {
        let result = self
            .execute_leased(rec, cfg, trigger, confirm_deletes, full)
            .await;
        self.give_up_lease(rec.id).await;
        result
    }

    /// Gives up this node's lease on replication `id`'s executions (a
    /// failure is only logged: the lease runs out by itself).
    async fn give_up_lease(&self, id: i64) {
        if let Err(e) = self.store().release_execution_lease(id, &self.0.node).await {
            tracing::warn!(target: "replication", error = %e, "giving up the execution lease failed; it runs out by itself");
        }
    }

    async fn execute_leased(
        &self,
        rec: &ReplicationRecord,
        cfg: &ReplicationConfig,
        trigger: &str,
        confirm_deletes: bool,
        full: bool,
    ) -> Result<ExecutionResult, ReplError> {
        // An execution a node of this instance left running when its lease
        // ran out (it died) goes on here under its own id. (A store only
        // one process opens closes its cut executions at start instead.)
        let adopted = if self.store().shared_by_nodes() {
            self.store()
                .adopt_execution(rec.id, &self.0.node, now_millis())
                .await?
        } else {
            None
        };
        let exec_id = match adopted {
            Some(id) => id,
            None => self.store().start_execution(rec.id, trigger).await?,
        };
        let progress = Arc::new(Progress::default());
        progress.started.store(now_millis() as u64, Ordering::Relaxed);
        if let Ok(mut r) = self.0.running.lock() {
            r.insert(rec.id, (exec_id, progress.clone()));
        }
        let mut run = Run::new(self, rec, cfg, progress.clone())?
            .confirm_deletes(confirm_deletes)
            .full(full)
            .trigger(trigger)
            .repair(trigger == "repair");
        if adopted.is_some() {
            tracing::warn!(target: "replication", replication = %rec.name, execution = exec_id, "taking over an execution another node left running");
            // The log the other node saved while it ran comes first.
            let saved = self
                .store()
                .executions(rec.id, 10)
                .await?
                .into_iter()
                .find(|e| e.id == exec_id)
                .map(|e| e.report);
            let earlier = saved
                .as_ref()
                .and_then(|r| r.get("log"))
                .and_then(|l| l.as_array())
                .map(|lines| {
                    lines
                        .iter()
                        .filter_map(engine::LogLine::from_saved)
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            for line in earlier {
                progress.note(&line);
                run.report.log.push(line);
            }
            let line = engine::LogLine {
                time: ferry_core::rfc3339(now_millis()),
                level: "warn",
                message: format!(
                    "taken over by node {}: the node running this execution stopped renewing its lease; \
                     what it applied stays, and this node goes on from the cursors it saved",
                    self.0.node
                ),
            };
            progress.note(&line);
            run.report.log.push(line);
        }
        // A stop drops the execution at its next await point: as after a
        // kill, what was applied stays (each change is applied with its
        // item, cursors only move past applied changes) and a partial blob
        // is resumed by the next execution.
        let result = tokio::select! {
            r = run.execute() => Some(r),
            _ = progress.stop.notified() => None,
            by = self.hold_lease(rec.id, exec_id, adopted.is_some(), &progress) => {
                if let Ok(mut b) = progress.stopped_by.lock() {
                    *b = Some(by);
                }
                None
            }
        };
        if let Ok(mut r) = self.0.running.lock() {
            r.remove(&rec.id);
        }
        if !matches!(result, Some(Ok(()))) {
            self.forget_handshake(rec.id);
        }
        let (outcome, error) = match &result {
            None => {
                let by = progress
                    .stopped_by
                    .lock()
                    .ok()
                    .and_then(|b| b.clone())
                    .unwrap_or_else(|| "an operator".into());
                run.report.log.push(engine::LogLine {
                    time: ferry_core::rfc3339(now_millis()),
                    level: "warn",
                    message: format!(
                        "stopped by {by} after {} items and {} bytes; the next execution goes on from there",
                        progress.items.load(Ordering::Relaxed),
                        progress.bytes.load(Ordering::Relaxed)
                    ),
                });
                ("stopped", None)
            }
            Some(Err(e)) => ("failed", Some(e.to_string())),
            Some(Ok(())) if run.report.needs_confirmation => ("needs-confirmation", None),
            Some(Ok(())) => ("succeeded", None),
        };
        if !matches!(result, Some(Ok(()))) {
            run.report.moved = Some(engine::Moved {
                changes: progress.items.load(Ordering::Relaxed),
                bytes: progress.bytes.load(Ordering::Relaxed),
            });
        }
        if let Some(e) = &error {
            // A failure before the first feed (handshake) has no log line yet.
            if run.report.log.iter().all(|l| l.level != "error") {
                run.report.log.push(engine::LogLine {
                    time: ferry_core::rfc3339(now_millis()),
                    level: "error",
                    message: e.clone(),
                });
            }
            metrics::counter!("ferry_replication_errors_total", "replication" => rec.name.clone())
                .increment(1);
        }
        metrics::counter!("ferry_replication_executions_total", "replication" => rec.name.clone(), "outcome" => outcome)
            .increment(1);
        let conflicts: u64 = run
            .report
            .feeds
            .iter()
            .map(|f| f.pulled.conflicts + f.pushed.conflicts)
            .sum();
        if conflicts > 0 {
            metrics::counter!("ferry_replication_conflicts_total", "replication" => rec.name.clone())
                .increment(conflicts);
        }
        for (feed, lag) in &run.lags {
            self.set_lag(rec.id, feed, *lag);
        }
        let mut report_json =
            serde_json::to_value(&run.report).map_err(|e| ReplError::Invalid(e.to_string()))?;
        if let Some(e) = &error {
            report_json["error"] = serde_json::json!(e);
        }
        self.store()
            .finish_execution(exec_id, outcome, report_json, &self.0.node)
            .await?;
        if let Ok(mut st) = self.0.status.lock() {
            let s = st.entry(rec.id).or_default();
            s.state = "idle".into();
            s.last_execution = Some(exec_id);
            s.last_outcome = Some(outcome.to_string());
            s.last_error = error.clone();
            if error.is_none() {
                s.unreachable = None;
            }
        }
        Ok(ExecutionResult {
            id: exec_id,
            outcome: outcome.into(),
            error,
            report: run.report,
            waited_for: None,
        })
    }

    /// Keeps a page a long poll brought (asked from `since`/`anchor`).
    pub(crate) fn keep_polled(
        &self,
        id: i64,
        feed: &FeedName,
        since: i64,
        anchor: i64,
        page: protocol::ChangesPage,
    ) {
        if let Ok(mut p) = self.0.polled.lock() {
            p.insert(
                (id, feed.clone()),
                Polled {
                    since,
                    anchor,
                    at: std::time::Instant::now(),
                    page,
                },
            );
        }
    }

    /// The page a long poll brought for this feed pair, if it was asked
    /// from this very cursor and anchor, recently.
    pub(crate) fn take_polled(
        &self,
        id: i64,
        feed: &FeedName,
        since: i64,
        anchor: i64,
    ) -> Option<protocol::ChangesPage> {
        let p = self.0.polled.lock().ok()?.remove(&(id, feed.clone()))?;
        (p.since == since && p.anchor == anchor && p.at.elapsed() < POLLED_TTL).then_some(p.page)
    }

    pub(crate) fn cached_handshake(&self, id: i64) -> Option<protocol::HandshakeResponse> {
        let h = self.0.handshakes.lock().ok()?;
        h.get(&id)
            .filter(|(at, _)| at.elapsed() < HANDSHAKE_REUSE)
            .map(|(_, r)| r.clone())
    }

    pub(crate) fn keep_handshake(&self, id: i64, resp: protocol::HandshakeResponse) {
        // A feed the other side refused before is served again: its
        // watcher, waiting out the refusal, asks again now.
        let now_refused: Vec<FeedName> = resp.refused_feeds.iter().map(|f| f.feed.clone()).collect();
        let served_again = self.0.refused_feeds.lock().is_ok_and(|mut r| {
            let before = r.insert(id, now_refused.clone()).unwrap_or_default();
            before.iter().any(|f| !now_refused.contains(f))
        });
        if let Ok(mut h) = self.0.handshakes.lock() {
            h.insert(id, (std::time::Instant::now(), resp));
        }
        if served_again {
            self.0.scheduler.recheck(id);
        }
    }

    pub(crate) fn forget_handshake(&self, id: i64) {
        if let Ok(mut h) = self.0.handshakes.lock() {
            h.remove(&id);
        }
    }

    pub(crate) fn set_next_run(&self, id: i64, at_millis: i64) {
        if let Ok(mut st) = self.0.status.lock() {
            st.entry(id).or_default().next_run = Some(ferry_core::rfc3339(at_millis));
        }
    }

    /// Notes whether the long poll of replication `id` reached the other
    /// instance (`None`) or failed with `error` ([`Status::unreachable`]).
    pub(crate) fn set_reachable(&self, id: i64, error: Option<&ReplError>) {
        if let Ok(mut st) = self.0.status.lock() {
            let s = st.entry(id).or_default();
            s.unreachable = error.map(|e| Unreachable {
                since: s
                    .unreachable
                    .take()
                    .map_or_else(|| ferry_core::rfc3339(now_millis()), |u| u.since),
                error: without_request_url(&e.to_string()),
            });
        }
    }

    /// Notes that an execution of replication `id` reached the other
    /// instance (a handshake answered): no longer listed as unreachable,
    /// whatever the long poll last said.
    pub(crate) fn reached(&self, id: i64) {
        if let Ok(mut st) = self.0.status.lock()
            && let Some(s) = st.get_mut(&id)
        {
            s.unreachable = None;
        }
    }

    /// Notes what the other instance said of this one's id on the last page
    /// it answered ([`ChangesPage::id_shared`]); logged when it starts.
    pub(crate) fn set_id_shared(&self, id: i64, said: Option<String>) {
        if let Ok(mut st) = self.0.status.lock() {
            let s = st.entry(id).or_default();
            if said.is_some() && s.id_shared.is_none() {
                tracing::error!(target: "replication", "the other instance says: {}", said.as_deref().unwrap_or_default());
            }
            s.id_shared = said;
        }
    }

    pub(crate) fn set_lag(&self, id: i64, feed: &FeedName, lag: Lag) {
        if let Ok(mut st) = self.0.status.lock() {
            st.entry(id).or_default().lag.insert(feed.to_string(), lag);
        }
    }

    /// What an execution would copy and delete, changing nothing.
    pub async fn plan(&self, name: &str) -> Result<Report, ReplError> {
        let (rec, cfg) = self.record(name).await?;
        let mut run = Run::new(self, &rec, &cfg, Arc::new(Progress::default()))?.dry_run();
        run.execute().await?;
        // A run compares only what changed since the last one: the plan
        // also lists what is already the same on both sides.
        run.plan_unchanged().await?;
        Ok(run.report)
    }

    /// Compares every feed pair's state on both ends without moving items.
    pub async fn verify(&self, name: &str) -> Result<Vec<PairVerdict>, ReplError> {
        let (rec, cfg) = self.record(name).await?;
        let mut run = Run::new(self, &rec, &cfg, Arc::new(Progress::default()))?;
        let hs = run.handshake_whole().await?;
        // The other side's own include/exclude filter (its fingerprint
        // says whether it has one, not what it is) hides items there.
        let they_filter = hs
            .filter
            .as_deref()
            .is_some_and(|fp| fp != incoming::patterns_fingerprint(&[], &[]));
        let filter = Filter::new(&cfg.include, &cfg.exclude)?;
        let remote = run.remote();
        let mut out = Vec::new();
        for p in &cfg.feeds {
            let local = self.ferry().feed(&p.local).await?;
            let mut mine = self.feed_digest(&local, &filter, &HashSet::new()).await?;
            let theirs = remote.digest(&p.remote, &cfg.include, &cfg.exclude).await?;
            // Items here that the other side's filter leaves out are not
            // compared: they are not carried either way.
            let mut outside_their_filter = 0;
            if they_filter && (mine.digest != theirs.digest || mine.items != theirs.items) {
                let hidden = self
                    .outside_their_filter(&local, &p.remote, &filter, remote)
                    .await?;
                if !hidden.is_empty() {
                    outside_their_filter = hidden.len() as u64;
                    mine = self.feed_digest(&local, &filter, &hidden).await?;
                }
            }
            let versions_same = mine.digest == theirs.digest && mine.items == theirs.items;
            let (contents_compared, contents_same) = match (&mine.content, &theirs.content) {
                (Some(a), Some(b)) => (true, a == b),
                _ => (false, true),
            };
            let mut verdict = PairVerdict {
                local: p.local.clone(),
                remote: p.remote.clone(),
                same: versions_same && contents_same,
                local_items: mine.items,
                remote_items: theirs.items,
                contents_compared,
                contents_differ: versions_same && !contents_same,
                outside_their_filter,
                same_version_other_content: Vec::new(),
                same_version_other_content_count: 0,
            };
            // Same versions, other contents: one version written twice
            // (copies under one id). Named where the other side lets this
            // one read its entries (a side that only receives does not).
            if versions_same && !contents_same {
                match self
                    .name_other_contents(&local, &p.remote, &filter, remote, &mut verdict)
                    .await
                {
                    Ok(()) => {}
                    Err(ReplError::Forbidden(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            out.push(verdict);
        }
        Ok(out)
    }

    /// The live items of `local` admitted by `filter` that the other side's
    /// filter leaves out of its `remote` feed (asked with `stamps`, in
    /// pages of [`MAX_KEYS`] keys).
    pub(crate) async fn outside_their_filter(
        &self,
        local: &FeedRecord,
        remote: &FeedName,
        filter: &Filter,
        client: &client::Remote,
    ) -> Result<HashSet<ItemKey>, ReplError> {
        let mut out = HashSet::new();
        let mut after = None;
        loop {
            let page = self.store().entries(local.id, after.as_ref(), MAX_KEYS).await?;
            let done = page.len() < MAX_KEYS;
            after = page.last().map(|e| e.key.clone());
            let keys: Vec<ItemKey> = page
                .into_iter()
                .filter(|e| e.live.is_some() && filter.admits(local.feed_type, &e.key))
                .map(|e| e.key)
                .collect();
            out.extend(client.outside_filter(remote, keys).await?);
            if done {
                return Ok(out);
            }
        }
    }

    /// Finds the items `local` and the other side's `remote` feed hold at
    /// the same version with other blobs (read in pages of [`MAX_KEYS`]
    /// keys): named in `verdict`, the first [`VERIFY_NAMED`] of them.
    async fn name_other_contents(
        &self,
        local: &FeedRecord,
        remote: &FeedName,
        filter: &Filter,
        client: &client::Remote,
        verdict: &mut PairVerdict,
    ) -> Result<(), ReplError> {
        let mut after = None;
        loop {
            let page = self.store().entries(local.id, after.as_ref(), MAX_KEYS).await?;
            let done = page.len() < MAX_KEYS;
            after = page.last().map(|e| e.key.clone());
            let mine: HashMap<ItemKey, (ferry_types::Stamp, Vec<Digest>)> = page
                .into_iter()
                .filter(|e| filter.admits(local.feed_type, &e.key))
                .filter_map(|e| Some((e.key, (e.stamp, e.live?.blobs))))
                .collect();
            if !mine.is_empty() {
                let there = client
                    .lookup(remote, mine.keys().cloned().collect(), false)
                    .await?
                    .entries;
                let mut differ: Vec<ItemKey> = there
                    .into_iter()
                    .filter(|t| !t.deleted)
                    .filter(|t| {
                        mine.get(&t.key)
                            .is_some_and(|(s, b)| *s == t.stamp && *b != t.blobs)
                    })
                    .map(|t| t.key)
                    .collect();
                differ.sort();
                verdict.same_version_other_content_count += differ.len() as u64;
                let room = VERIFY_NAMED.saturating_sub(verdict.same_version_other_content.len());
                verdict
                    .same_version_other_content
                    .extend(differ.into_iter().take(room));
            }
            if done {
                return Ok(());
            }
        }
    }

    /// Digests over the feed's live items admitted by `filter`: the same
    /// set of (key, stamp) gives the same [`FeedDigest::digest`] on every
    /// instance, and the same contents too the same
    /// [`FeedDigest::content`].
    /// `leave_out`: keys not to count (those the other side's filter
    /// hides, for `verify`).
    pub async fn feed_digest(
        &self,
        feed: &FeedRecord,
        filter: &Filter,
        leave_out: &HashSet<ItemKey>,
    ) -> Result<FeedDigest, ReplError> {
        let mut h = Sha256::new();
        let mut c = Sha256::new();
        let mut items = 0u64;
        let mut after = None;
        loop {
            let page = self.store().entries(feed.id, after.as_ref(), 2000).await?;
            let done = page.len() < 2000;
            after = page.last().map(|e| e.key.clone());
            for e in page
                .iter()
                .filter(|e| filter.admits(feed.feed_type, &e.key) && !leave_out.contains(&e.key))
            {
                let Some(live) = &e.live else { continue };
                let version = format!("{}\t{}", e.key, e.stamp);
                h.update(version.as_bytes());
                h.update(b"\n");
                c.update(version.as_bytes());
                c.update(b"\t");
                for (i, d) in live.blobs.iter().enumerate() {
                    if i > 0 {
                        c.update(b",");
                    }
                    c.update(d.hex().as_bytes());
                }
                c.update(b"\n");
                items += 1;
            }
            if done {
                break;
            }
        }
        Ok(FeedDigest {
            digest: hex::encode(h.finalize()),
            items,
            content: Some(hex::encode(c.finalize())),
        })
    }

    /// Drops tombstones last written more than `retention` ago, in every
    /// feed. Readers whose cursor is older then compare in full.
    pub async fn prune_tombstones(&self, retention: std::time::Duration) -> Result<u64, ReplError> {
        let before = now_millis() - retention.as_millis() as i64;
        let mut n = 0;
        for f in self.ferry().feeds().await? {
            n += self.store().prune_tombstones(f.id, before).await?;
        }
        Ok(n)
    }

    /// Starts the schedulers of every outgoing replication.
    pub async fn start(&self) -> Result<(), ReplError> {
        self.close_interrupted().await?;
        for rec in self.store().replications().await? {
            if Self::parse(&rec)?.is_outgoing() {
                // The overview shows the last execution before the restart
                // until a new one ends.
                if let Some(last) = self.store().executions(rec.id, 1).await?.into_iter().next() {
                    self.show_last_execution(rec.id, &last, "idle");
                }
                self.0.scheduler.start(self.clone(), rec.id, rec.name.clone());
            }
        }
        if self.store().shared_by_nodes() {
            tokio::spawn(self.clone().follow_other_nodes());
            if let Some(mut events) = self.ferry().metadata().events() {
                // A token revoked or a replication changed through another
                // node ends the long polls waiting here as one through
                // this node does.
                let me = self.clone();
                let mut stopping = self.shutdown_signal();
                tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            ev = events.recv() => match ev {
                                Ok(ferry_store::StoreEvent::SessionsChanged | ferry_store::StoreEvent::Resync)
                                | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => me.sessions_changed(),
                                Ok(_) => {}
                                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                            },
                            _ = stopping.changed() => return,
                        }
                    }
                });
            }
        }
        Ok(())
    }

    /// Marks the executions this node's last stop cut short as
    /// `interrupted`, once per process: call it before anything can start
    /// an execution (a configuration file's replications), so that none
    /// of this run's own executions is taken for one of them. [`start`]
    /// calls it if it was not called yet.
    ///
    /// [`start`]: Replicator::start
    pub async fn close_interrupted(&self) -> Result<(), ReplError> {
        if self.0.recovered.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let n = self
            .store()
            .close_interrupted_executions(&self.0.node, now_millis())
            .await?;
        if n > 0 {
            tracing::warn!(target: "replication", executions = n, "executions cut short by the last stop are marked interrupted");
        }
        Ok(())
    }

    /// With nodes sharing the store: schedules here the outgoing
    /// replications another node created, and stops those another node
    /// deleted, every third of the execution lease (so every node can take
    /// over any replication's executions).
    async fn follow_other_nodes(self) {
        let period = (self.ferry().config().execution_lease / 3).max(std::time::Duration::from_secs(1));
        let mut stopping = self.shutdown_signal();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = stopping.changed() => return,
            }
            if *stopping.borrow() {
                return;
            }
            let Ok(recs) = self.store().replications().await else {
                continue;
            };
            let mut present = std::collections::HashSet::new();
            for rec in recs {
                if Self::parse(&rec).is_ok_and(|c| c.is_outgoing()) {
                    present.insert(rec.id);
                    // A no-op for one already scheduled here.
                    self.0.scheduler.start(self.clone(), rec.id, rec.name.clone());
                    self.take_over_if_orphaned(rec.id).await;
                }
            }
            for id in self.0.scheduler.ids() {
                if !present.contains(&id) {
                    self.0.scheduler.stop(id);
                }
            }
        }
    }

    /// Shows `last` as replication `id`'s last execution in the overview,
    /// in `state`.
    fn show_last_execution(&self, id: i64, last: &ExecutionRecord, state: &str) {
        if let Ok(mut st) = self.0.status.lock() {
            let s = st.entry(id).or_default();
            s.state = state.into();
            s.last_execution = Some(last.id);
            s.last_outcome = last.outcome.clone();
            s.last_error = last
                .report
                .get("error")
                .and_then(|e| e.as_str())
                .map(str::to_owned);
        }
    }

    /// Goes on at once with replication `id`'s execution if a node left it
    /// running and its lease ran out (the node died): rather than at that
    /// replication's next scheduled time. While the node that runs it is
    /// alive its lease holds, and this does nothing. Also shows here the
    /// last execution another node ran.
    async fn take_over_if_orphaned(&self, id: i64) {
        let running_here = self.0.running.lock().is_ok_and(|r| r.contains_key(&id));
        if running_here {
            return;
        }
        let Ok(list) = self.store().executions(id, 1).await else {
            return;
        };
        let last = list.into_iter().next();
        // What the other nodes ran shows here too (the overview of every
        // node tells the instance's state, not only its own executions).
        if let Some(e) = &last {
            let state = if e.outcome.is_none() {
                "running on another node"
            } else {
                "idle"
            };
            self.show_last_execution(id, e, state);
        }
        let orphaned = last.is_some_and(|e| e.outcome.is_none());
        if !orphaned {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.run_if_idle(id, TAKEOVER).await {
                tracing::warn!(target: "replication", replication = id, error = %e, "taking over an execution failed");
            }
        });
    }

    /// An operator's "Run now": wakes the replication's scheduler to run an
    /// execution in the background (recorded with trigger `manual`; after
    /// a stop, this is what resumes it before its schedule).
    pub async fn trigger(&self, name: &str) -> Result<(), ReplError> {
        let (rec, cfg) = self.record(name).await?;
        if !cfg.is_outgoing() {
            return Err(ReplError::Invalid(format!(
                "replication {name} is incoming: run it from the outgoing instance"
            )));
        }
        self.0.scheduler.wake_manual(rec.id);
        Ok(())
    }
}

impl Replicator {
    /// The lag gauges of every replication that has run here, per feed
    /// pair, in Prometheus' text exposition format (0.0.4), rendered from
    /// what the last execution (or long poll) found:
    /// `ferry_replication_lag_changes` (changes the other side has that
    /// this one has not read) and `ferry_replication_lag_seconds` (how
    /// long the oldest of them has waited), labelled by replication and
    /// (local) feed. A deleted replication's series are gone from the next
    /// scrape. Empty when there is none or the store cannot be read.
    pub async fn lag_metrics(&self) -> String {
        let Ok(records) = self.store().replications().await else {
            return String::new();
        };
        let mut rows: Vec<(String, [f64; 3])> = Vec::new();
        if let Ok(st) = self.0.status.lock() {
            for rec in &records {
                let Some(status) = st.get(&rec.id) else { continue };
                let mut feeds: Vec<(&String, &Lag)> = status.lag.iter().collect();
                feeds.sort_by(|a, b| a.0.cmp(b.0));
                for (feed, lag) in feeds {
                    let labels = format!(
                        "replication=\"{}\",feed=\"{}\"",
                        peers::label_value(&rec.name),
                        peers::label_value(feed)
                    );
                    let age = (now_millis() - lag.measured_at).max(0) as f64 / 1000.0;
                    rows.push((labels, [lag.changes as f64, lag.seconds, age]));
                }
            }
        }
        peers::render_gauges(
            [
                (
                    "ferry_replication_lag_changes",
                    "Changes on the other side not yet read here",
                ),
                (
                    "ferry_replication_lag_seconds",
                    "Seconds the oldest change not yet read here has waited",
                ),
                (
                    "ferry_replication_lag_age_seconds",
                    "Seconds since the lag was measured (it grows while the other side cannot be reached)",
                ),
            ],
            &rows,
        )
    }
}

/// Two warnings as one (`first; second`).
fn join_warnings(first: Option<String>, second: String) -> String {
    match first {
        Some(f) => format!("{f}; {second}"),
        None => second,
    }
}

/// `message` without the " for url (…)" an HTTP client error names the
/// request by (a long poll's whole query string, cursors and all).
fn without_request_url(message: &str) -> String {
    match message.find(" for url (") {
        Some(at) => {
            let rest = &message[at + " for url (".len()..];
            let end = rest.find(')').map_or(rest.len(), |i| i + 1);
            format!("{}{}", &message[..at], &rest[end..])
        }
        None => message.to_string(),
    }
}

/// The time left of a running execution, in seconds, and what it was
/// judged by: `"bytes"` (bytes still to move at the byte rate so far) while
/// the backlog's bytes are known, some remain and some have moved; else
/// `"items"` (items left at the item rate so far). `items` and `bytes` are
/// (left, per second). `None`: nothing to judge by yet, or nothing left.
fn eta(items: (u64, f64), bytes: Option<(u64, f64)>) -> (Option<f64>, Option<&'static str>) {
    if let Some((left, rate)) = bytes
        && left > 0
        && rate > 0.0
    {
        return (Some(left as f64 / rate), Some("bytes"));
    }
    let (left, rate) = items;
    if left > 0 && rate > 0.0 {
        (Some(left as f64 / rate), Some("items"))
    } else {
        (None, None)
    }
}

/// The next event of a store shared by nodes; never, without one. A
/// receiver that lagged behind says [`ferry_store::StoreEvent::Resync`]
/// (events were missed); a closed one is dropped.
async fn next_event(
    events: &mut Option<tokio::sync::broadcast::Receiver<ferry_store::StoreEvent>>,
) -> Option<ferry_store::StoreEvent> {
    let Some(rx) = events else {
        return std::future::pending().await;
    };
    match rx.recv().await {
        Ok(ev) => Some(ev),
        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Some(ferry_store::StoreEvent::Resync),
        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
            *events = None;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{eta, without_request_url};

    #[test]
    fn an_unreachable_peer_is_named_without_the_request_url() {
        assert_eq!(
            without_request_url(
                "error sending request for url (http://h:1/api/replication/v1/feeds/f/changes?since=3&anchor=9): connection refused"
            ),
            "error sending request: connection refused"
        );
        assert_eq!(
            without_request_url("no answer within 5 s"),
            "no answer within 5 s"
        );
    }

    #[test]
    fn time_left_is_judged_by_bytes_while_they_are_known() {
        // 3 large files: 1 item of 3 done, 200 MB left at 10 MB/s → 20 s,
        // whatever the item rate says.
        assert_eq!(
            eta((2, 0.5), Some((200_000_000, 10_000_000.0))),
            (Some(20.0), Some("bytes"))
        );
        // No byte count from the other side: by items.
        assert_eq!(eta((2, 0.5), None), (Some(4.0), Some("items")));
        // Every byte moved, deletions left: by items.
        assert_eq!(eta((10, 5.0), Some((0, 1.0))), (Some(2.0), Some("items")));
        // Nothing moved yet, no item done: no guess.
        assert_eq!(eta((3, 0.0), Some((100, 0.0))), (None, None));
        assert_eq!(eta((0, 1.0), Some((0, 1.0))), (None, None));
    }
}
