//! The hub's view of its spokes: every instance that connects to one of
//! this instance's incoming replications, as this side sees it — which
//! token it uses, from where, which Ferry and protocol it speaks, when it
//! was first and last seen, how far behind it is in each feed it reads,
//! and the last error this side answered it.
//!
//! The outgoing side names its instance id on every request
//! ([`INSTANCE_HEADER`](crate::protocol::INSTANCE_HEADER)) and, in the handshake, its name and interval.
//! Peers are kept in memory and saved through
//! [`ReplicationStore::save_peer`](ferry_store::ReplicationStore::save_peer)
//! on each handshake and at most every [`SAVE_EVERY_MS`] otherwise, so the
//! view survives a restart of this side; a peer the book does not hold is
//! read back from what was saved when it connects again (after a restart,
//! or on another node of a cluster), so what it reported in its last
//! handshake is kept though it does not shake hands again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use ferry_core::Ferry;
use ferry_store::{FeedId, now_millis};
use serde::{Deserialize, Serialize};

use crate::config::MAX_INTERVAL_SECS;
use crate::incoming::Session;
use crate::protocol::{ChangesPage, HandshakeRequest};
use crate::{ReplError, Replicator};

/// How often, at most, a peer's state is saved outside handshakes.
pub const SAVE_EVERY_MS: i64 = 5_000;
/// The interval assumed for a peer that does not report one, in seconds.
pub const DEFAULT_INTERVAL_SECS: u64 = 60;
/// Longest instance name kept (longer ones are cut).
const MAX_NAME: usize = 128;
/// Most peers recorded per incoming replication; instances past it are
/// served but not listed (a token holder inventing instance ids cannot
/// grow the book, or `/metrics`, without bound).
pub const MAX_PEERS: usize = 10_000;
/// Most distinct intervals remembered per peer ([`PeerState::intervals`]).
const MAX_INTERVALS: usize = 8;
/// How long, beyond [`crate::HANDSHAKE_REUSE`] and two of its own
/// intervals, an interval not reported again is still counted
/// ([`effective_interval`]), in milliseconds: slack for an execution
/// that takes long before it shakes hands again.
const INTERVAL_SLACK_MS: i64 = 60_000;
/// Most peers listed per sync token that have not shaken hands (an
/// instance that names itself on requests but never handshakes: an
/// invented id, or a spoke between a `--forget` and its next handshake).
pub const MAX_UNNAMED_PER_TOKEN: usize = 16;
/// Most peers listed per sync token (a fleet may share one token).
pub const MAX_PEERS_PER_TOKEN: usize = MAX_PEERS / 4;
/// Most process ids remembered per peer ([`Entry::processes`]).
const MAX_PROCESSES: usize = 8;
/// How long after the last turn between two processes of one instance
/// id the peer is listed as shared ([`IdShared`]), in milliseconds: a
/// spoke makes a request at least every long poll (at most a minute)
/// while it runs.
pub const SHARED_WINDOW_MS: i64 = 180_000;
/// Turns between processes (an earlier one speaking again after a newer
/// one did) before the id counts as shared: one may be a request the
/// previous process sent just before it stopped.
const SHARED_TURNS: u32 = 2;

/// How far a peer is behind in one feed it reads: saved as of its last
/// page, shown as of the listing ([`Replicator::peers`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerFeed {
    /// The cursor (change log seq) it asked from.
    pub cursor: i64,
    /// Changes in the log after that cursor (when it asked; when listed,
    /// now).
    pub lag_changes: i64,
    /// Seconds from the oldest change after that cursor to its request
    /// (when listed: to now); 0 when it had read everything.
    pub lag_seconds: f64,
    /// When it asked (milliseconds since the epoch).
    pub at: i64,
}

/// An error this side answered a peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerError {
    /// Milliseconds since the epoch.
    pub at: i64,
    pub message: String,
    /// Set for a blob batch cut while it was sent: settled by the next
    /// batch sent whole, not by an accepted handshake (a spoke handshakes
    /// again on its new connection after every cut).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub transfer: bool,
    /// Set for an error answered with an accepted handshake (a feed it
    /// refused alone): settled by the next accepted handshake, which
    /// notes it again while the feed is still refused. Any other error is
    /// settled by the peer's next request that starts after it and is
    /// answered without an error (or an accepted handshake): it is shown
    /// only while it is the latest outcome.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub handshake: bool,
}

/// An interval a peer reported in an accepted handshake, and when it last
/// did ([`PeerState::intervals`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeardInterval {
    pub secs: u64,
    /// Milliseconds since the epoch.
    pub at: i64,
}

/// What this side knows of one peer (saved as JSON).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerState {
    pub instance_id: String,
    /// The name it reports (its `instance_name`, else its host name).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub ferry_version: Option<String>,
    #[serde(default)]
    pub protocol_version: Option<u32>,
    /// The address its last request came from.
    #[serde(default)]
    pub address: Option<String>,
    /// The id of the sync token (`fst_ID_…`) of its latest request. Not
    /// what identifies it: a request with any valid token of the
    /// replication that names its instance id is its contact (a spoke
    /// rotating its token, or a fleet doing so one spoke at a time, stays
    /// one peer each, never stale for it).
    #[serde(default)]
    pub token: Option<String>,
    /// Milliseconds since the epoch.
    pub first_contact: i64,
    /// Milliseconds since the epoch: the start or end of its latest request.
    pub last_contact: i64,
    /// Seconds between its scheduled executions, as its stale threshold
    /// counts them: the largest of [`PeerState::intervals`] heard
    /// recently ([`effective_interval`]); before any accepted handshake,
    /// the one its latest handshake reported.
    #[serde(default)]
    pub interval_secs: Option<u64>,
    /// Each distinct interval its replications reported in accepted
    /// handshakes, with when it was last reported (at most
    /// [`MAX_INTERVALS`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub intervals: Vec<HeardInterval>,
    /// By feed (this side's name).
    #[serde(default)]
    pub feeds: BTreeMap<String, PeerFeed>,
    #[serde(default)]
    pub last_error: Option<PeerError>,
}

/// A peer as the API shows it: its state, whether a request of it is in
/// progress right now, and whether it is stale.
#[derive(Debug, Clone, Serialize)]
pub struct PeerView {
    #[serde(flatten)]
    pub state: PeerState,
    /// A request of it (such as a long poll) is in progress.
    pub connected: bool,
    /// Seconds since its last contact (0 while connected).
    pub seconds_since_contact: f64,
    /// Its largest lag in seconds over the feeds it reads.
    pub lag_seconds: f64,
    /// Not seen for longer than `peer_stale_intervals` of its intervals.
    pub stale: bool,
    /// Set while two or more running processes use this instance id
    /// (see [`IdShared`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_shared: Option<IdShared>,
}

/// Two or more processes that take turns under one instance id: instances
/// started from copies of one data directory (a cloned machine, a backup
/// restored beside its original). Peers cannot tell them apart, and each
/// takes the other's writes for its own. Listed until
/// [`SHARED_WINDOW_MS`] after the last turn.
#[derive(Debug, Clone, Serialize)]
pub struct IdShared {
    /// Processes seen within the window.
    pub processes: usize,
    /// The addresses they came from (distinct, as seen).
    pub addresses: Vec<String>,
    /// First turn noticed (milliseconds since the epoch).
    pub since: i64,
    /// What it means and what to do.
    pub message: String,
}

/// One process seen under a peer's instance id.
#[derive(Debug, Clone)]
struct ProcessSeen {
    id: String,
    address: Option<String>,
    /// Milliseconds since the epoch.
    last: i64,
}

#[derive(Default)]
struct Entry {
    state: PeerState,
    /// Requests of it in progress.
    in_flight: u32,
    /// When its state was last saved (0: never).
    saved_at: i64,
    /// The processes seen under its id, the one that spoke last at the
    /// end (at most [`MAX_PROCESSES`]; in memory only).
    processes: Vec<ProcessSeen>,
    /// Turns between processes counted (an earlier process speaking
    /// again after a newer one), and the first and latest turn's time.
    turns: u32,
    first_turn: i64,
    last_turn: i64,
}

impl Entry {
    /// Notes a request of process `id` from `address` at `now`. Returns
    /// true when this turn makes the id count as shared (to log once).
    fn note_process(&mut self, id: &str, address: Option<&str>, now: i64) -> bool {
        let seen = ProcessSeen {
            id: id.to_owned(),
            address: address.map(str::to_owned),
            last: now,
        };
        match self.processes.iter().position(|p| p.id == id) {
            Some(i) if i + 1 == self.processes.len() => {
                self.processes[i] = seen;
                false
            }
            Some(i) => {
                // One that had been followed by another speaks again.
                self.processes.remove(i);
                self.processes.push(seen);
                if now - self.last_turn > SHARED_WINDOW_MS {
                    self.turns = 0;
                    self.first_turn = now;
                }
                self.turns += 1;
                self.last_turn = now;
                self.turns == SHARED_TURNS
            }
            None => {
                // A new process: a restart, or another copy's first request.
                if self.processes.len() == MAX_PROCESSES {
                    self.processes.remove(0);
                }
                self.processes.push(seen);
                false
            }
        }
    }

    /// Whether processes take turns under this id as of `now`.
    fn id_shared(&self, instance: &str, now: i64) -> Option<IdShared> {
        if self.turns < SHARED_TURNS || now - self.last_turn > SHARED_WINDOW_MS {
            return None;
        }
        let live: Vec<&ProcessSeen> = self
            .processes
            .iter()
            // Those heard since the turns began (one that stopped before,
            // such as the original's previous run, is not one of them).
            .filter(|p| p.last >= self.first_turn && now - p.last <= SHARED_WINDOW_MS)
            .collect();
        let mut addresses: Vec<String> = Vec::new();
        for a in live.iter().filter_map(|p| p.address.clone()) {
            if !addresses.contains(&a) {
                addresses.push(a);
            }
        }
        let processes = live.len().max(2);
        Some(IdShared {
            processes,
            message: format!(
                "{processes} running processes use instance id {instance} (from {}): instances started from copies of one data directory (a cloned machine, a backup restored beside its original) cannot be told apart and take each other's writes for their own; give each copy an id of its own: `ferry instance new-id` on the copy, then restart it",
                if addresses.is_empty() {
                    "unknown addresses".to_string()
                } else {
                    addresses.join(", ")
                }
            ),
            addresses,
            since: self.first_turn,
        })
    }
}

/// The peers of every incoming replication, by replication id and
/// instance id.
#[derive(Default)]
pub(crate) struct PeerBook {
    entries: Mutex<HashMap<(i64, String), Entry>>,
    /// Refusals already logged (replication, reason): one warning each
    /// per process, not one per request.
    warned: Mutex<std::collections::HashSet<(i64, String)>>,
    /// Replications whose saved peers are all in `entries`
    /// ([`Replicator::load_saved_peers`]).
    loaded: Mutex<std::collections::HashSet<i64>>,
}

/// A request of a peer in progress: its end counts as contact, and,
/// answered without an error, as an outcome later than any error noted
/// before it started.
pub struct PeerRequest {
    r: Replicator,
    key: (i64, String),
    /// When it started (milliseconds since the epoch).
    started: i64,
    /// An error was noted for it ([`Replicator::peer_error`]).
    failed: std::sync::atomic::AtomicBool,
    /// It is a handshake, accepted ([`Replicator::peer_handshake`]).
    accepted_handshake: std::sync::atomic::AtomicBool,
}

impl Drop for PeerRequest {
    fn drop(&mut self) {
        let now = now_millis();
        let save = {
            let Ok(mut m) = self.r.0.peer_book.entries.lock() else {
                return;
            };
            let Some(e) = m.get_mut(&self.key) else {
                return;
            };
            e.in_flight = e.in_flight.saturating_sub(1);
            e.state.last_contact = now;
            let succeeded = !self.failed.load(std::sync::atomic::Ordering::Relaxed);
            let settled = succeeded
                && e.state.last_error.as_ref().is_some_and(|err| {
                    // Superseded: this request started after it and was
                    // answered without an error (a refused `config apply`
                    // probe, then the running replication's executions).
                    !err.transfer && !err.handshake && err.at < self.started
                });
            if settled {
                e.state.last_error = None;
            }
            take_save(e, now, settled)
        };
        if let Some(state) = save
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let r = self.r.clone();
            let id = self.key.0;
            rt.spawn(async move { r.save_peer_state(id, state).await });
        }
    }
}

/// Whether a peer not listed yet is recorded ([`Replicator::claim`]).
enum Admission {
    /// Listed already.
    Known,
    /// Recorded.
    Room,
    /// Recorded in the place of this instance (one that never shook hands).
    Evict(String),
    /// Not recorded, and why.
    Refused(&'static str),
}

/// Whether a new peer of replication `replication`, naming itself with
/// sync token `token`, is recorded: one that has not shaken hands only
/// while its token has fewer than [`MAX_UNNAMED_PER_TOKEN`] such peers
/// listed (requests naming invented instance ids cannot fill the book); one
/// that shakes hands while its token lists fewer than
/// [`MAX_PEERS_PER_TOKEN`], in the place of one that never shook hands when
/// the book holds [`MAX_PEERS`] already.
fn admission(m: &HashMap<(i64, String), Entry>, replication: i64, token: &str, handshake: bool) -> Admission {
    let of_replication = || m.iter().filter(move |((r, _), _)| *r == replication);
    let of_token = || of_replication().filter(|(_, e)| e.state.token.as_deref() == Some(token));
    if !handshake {
        if of_token()
            .filter(|(_, e)| e.state.ferry_version.is_none())
            .count()
            >= MAX_UNNAMED_PER_TOKEN
        {
            return Admission::Refused(
                "a sync token names too many instances that never shook hands (invented instance ids?)",
            );
        }
    } else if of_token().count() >= MAX_PEERS_PER_TOKEN {
        return Admission::Refused("one sync token names the most instances one token may");
    }
    if of_replication().count() < MAX_PEERS {
        return Admission::Room;
    }
    if !handshake {
        return Admission::Refused("the most peers a replication lists are listed");
    }
    of_replication()
        .filter(|(_, e)| e.state.ferry_version.is_none() && e.in_flight == 0)
        .min_by_key(|(_, e)| e.state.last_contact)
        .map_or(
            Admission::Refused("the most peers a replication lists are listed, each of which shook hands"),
            |((_, instance), _)| Admission::Evict(instance.clone()),
        )
}

/// The entry of peer `key` (replication id, instance id), first seen
/// `now` if it is new.
fn entry_for<'a>(m: &'a mut HashMap<(i64, String), Entry>, key: &(i64, String), now: i64) -> &'a mut Entry {
    m.entry(key.clone()).or_insert_with(|| Entry {
        state: PeerState {
            instance_id: key.1.clone(),
            first_contact: now,
            ..PeerState::default()
        },
        ..Entry::default()
    })
}

/// The state to save now, if it is due (or `force`d).
fn take_save(e: &mut Entry, now: i64, force: bool) -> Option<PeerState> {
    if force || now - e.saved_at >= SAVE_EVERY_MS {
        e.saved_at = now;
        Some(e.state.clone())
    } else {
        None
    }
}

/// Notes that a peer reported interval `secs` in an accepted handshake at
/// `now`, and forgets the intervals no longer heard ([`effective_interval`]).
fn hear_interval(heard: &mut Vec<HeardInterval>, secs: u64, now: i64) {
    match heard.iter_mut().find(|h| h.secs == secs) {
        Some(h) => h.at = h.at.max(now),
        None => heard.push(HeardInterval { secs, at: now }),
    }
    let latest = heard.iter().map(|h| h.at).max().unwrap_or(now);
    heard.retain(|h| recent(h, latest));
    while heard.len() > MAX_INTERVALS {
        // The one heard longest ago goes.
        if let Some(i) = heard.iter().enumerate().min_by_key(|(_, h)| h.at).map(|(i, _)| i) {
            heard.remove(i);
        }
    }
}

/// Whether interval `h` was reported recently enough, as of the peer's
/// latest accepted handshake at `latest`, to count: a replication that
/// runs shakes hands again at least every [`crate::HANDSHAKE_REUSE`] plus
/// one of its intervals (two here, and [`INTERVAL_SLACK_MS`], for slow
/// executions).
fn recent(h: &HeardInterval, latest: i64) -> bool {
    let secs = i64::try_from(h.secs).unwrap_or(i64::MAX / 4_000);
    let window = i64::try_from(crate::HANDSHAKE_REUSE.as_millis())
        .unwrap_or(300_000)
        .saturating_add(secs.saturating_mul(2_000))
        .saturating_add(INTERVAL_SLACK_MS);
    latest - h.at <= window
}

/// The interval a peer's stale threshold counts: the largest of those
/// its replications reported recently (within [`recent`] of its latest
/// accepted handshake — not of now, so the threshold of a peer gone
/// silent stays where it was instead of moving as time passes).
///
/// Why the largest: a peer is one instance, and it is stale when the
/// instance is not heard from, not when one of its replications is. One
/// spoke with two outgoing replications to this one (every 5 s and every
/// 60 s) is heard at least every 60 s while either runs; counting the
/// interval of whichever shook hands last moved its threshold between
/// 10 s and 120 s, and the smaller one flags it stale while only its
/// slower replication runs (the faster one paused or failing on its own
/// side, which its own status shows). An interval no longer reported (its
/// replication deleted, or given another interval) stops counting once
/// the others have shaken hands again past its window, so the threshold
/// comes down by itself. None when no accepted handshake reported one.
fn effective_interval(heard: &[HeardInterval]) -> Option<u64> {
    let latest = heard.iter().map(|h| h.at).max()?;
    heard.iter().filter(|h| recent(h, latest)).map(|h| h.secs).max()
}

/// The name this instance reports to its peers: `instance_name` from the
/// configuration, else the host name, else its instance id.
pub fn instance_name(ferry: &Ferry) -> String {
    if let Some(n) = ferry.config().instance_name.as_deref().filter(|n| !n.is_empty()) {
        return n.to_owned();
    }
    // Read once: the host name does not change under a running process.
    static HOST: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| cut(h.trim()))
            .filter(|h| !h.is_empty())
    })
    .clone()
    .unwrap_or_else(|| ferry.instance_id().to_string())
}

/// `s` as kept of what a peer reports: at most [`MAX_NAME`] characters,
/// control characters (escape sequences a terminal would act on, line
/// breaks) and invisible format characters (bidirectional overrides,
/// zero-width spaces: text that shows other than it reads) dropped.
fn cut(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() && !is_format_char(*c) && !matches!(c, '\u{2028}' | '\u{2029}'))
        .take(MAX_NAME)
        .collect()
}

/// Unicode's format characters (general category Cf): invisible, some
/// reorder the text around them (U+202E turns `exe.txt` around).
fn is_format_char(c: char) -> bool {
    matches!(
        c,
        '\u{ad}'
            | '\u{600}'..='\u{605}'
            | '\u{61c}'
            | '\u{6dd}'
            | '\u{70f}'
            | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}'
            | '\u{e0001}'
            | '\u{e0020}'..='\u{e007f}'
    )
}

impl Replicator {
    /// Notes the start of a request of peer `instance` (from
    /// [`INSTANCE_HEADER`](crate::protocol::INSTANCE_HEADER)) on incoming replication `s` with token
    /// `token_id` from `address`; the returned guard notes its end.
    /// None when the request names no valid instance id (an older peer:
    /// it is known from its handshakes only).
    pub async fn peer_request(
        &self,
        s: &Session,
        instance: Option<&str>,
        process: Option<&str>,
        token_id: &str,
        address: Option<String>,
        handshake: bool,
    ) -> Option<PeerRequest> {
        let instance = instance?.parse::<ferry_types::InstanceId>().ok()?;
        // This instance's own id is never a peer of it (a handshake naming
        // it is refused as a replication to the same instance).
        if instance == self.ferry().instance_id() {
            return None;
        }
        let instance = instance.to_string();
        let key = (s.record.id, instance.clone());
        if !self.claim(&key, token_id, handshake).await {
            return None;
        }
        let now = now_millis();
        let mut m = self.0.peer_book.entries.lock().ok()?;
        let e = entry_for(&mut m, &key, now);
        e.in_flight += 1;
        e.state.last_contact = now;
        // Back under another token than the one it last used (a valid
        // one: this request opened a session): a batch cut before — its
        // token revoked, most often — is settled; the next batch, if any,
        // goes under the new token and is noted on its own.
        if e.state.token.as_deref().is_some_and(|t| t != token_id)
            && e.state.last_error.as_ref().is_some_and(|err| err.transfer)
        {
            e.state.last_error = None;
            e.saved_at = 0;
        }
        e.state.token = Some(token_id.to_owned());
        if let Some(p) = process
            && e.note_process(p, address.as_deref(), now)
            && let Some(shared) = e.id_shared(&instance, now)
        {
            tracing::warn!(replication = %s.record.name, instance = %instance, "{}", shared.message);
            self.diag().log(
                crate::diag::Level::Warn,
                format!("{}: {}", s.record.name, shared.message),
            );
        }
        if address.is_some() {
            e.state.address = address;
        }
        Some(PeerRequest {
            r: self.clone(),
            key,
            started: now,
            failed: std::sync::atomic::AtomicBool::new(false),
            accepted_handshake: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Records what a handshake says of its peer (`protocol_version`: the
    /// one agreed, None when none is shared), and saves it. An accepted
    /// handshake settles the error refused before; a refused one is noted
    /// by [`Replicator::peer_error`] as every refused request is.
    pub(crate) async fn peer_handshake(
        &self,
        s: &Session,
        req: &HandshakeRequest,
        protocol_version: Option<u32>,
        accepted: bool,
    ) {
        let key = (s.record.id, req.instance_id.to_string());
        if !self.claim(&key, &s.token_id, true).await {
            return;
        }
        if accepted && let Some(request) = &s.request {
            request
                .accepted_handshake
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let now = now_millis();
        let state = {
            let Ok(mut m) = self.0.peer_book.entries.lock() else {
                return;
            };
            let e = entry_for(&mut m, &key, now);
            e.state.last_contact = now;
            e.state.token = Some(s.token_id.clone());
            e.state.name = req.instance_name.as_deref().map(cut).filter(|n| !n.is_empty());
            e.state.ferry_version = Some(cut(&req.ferry_version));
            e.state.protocol_version = protocol_version;
            let interval = req.interval_secs.map(|i| i.clamp(1, MAX_INTERVAL_SECS));
            if accepted && let Some(secs) = interval {
                hear_interval(&mut e.state.intervals, secs, now);
            }
            // A refused handshake's interval is no replication that runs
            // (a `config apply` probe refused): it counts only while
            // no accepted one was heard.
            e.state.interval_secs =
                effective_interval(&e.state.intervals).or(if e.state.intervals.is_empty() {
                    interval
                } else {
                    e.state.interval_secs
                });
            if accepted && e.state.last_error.as_ref().is_some_and(|err| !err.transfer) {
                // Whatever was refused before is settled.
                e.state.last_error = None;
            }
            take_save(e, now, true)
        };
        if let Some(state) = state {
            self.save_peer_state(key.0, state).await;
        }
    }

    /// Records how far the peer of `s` is in `feed`, from the page it was
    /// answered for its cursor `since`.
    pub(crate) fn peer_page(&self, s: &Session, feed: &str, since: i64, page: &ChangesPage) {
        let now = now_millis();
        let lag_seconds = page.oldest_pending.map_or(0.0, |ms| {
            (now - i64::try_from(ms).unwrap_or(now)).max(0) as f64 / 1000.0
        });
        self.peer_feed(s, feed, since, (page.last_seq - since).max(0), lag_seconds, now);
    }

    /// Whether the peer of `s` (one recorded here) is listed without what
    /// its handshake tells (its name and versions), or no longer listed:
    /// it was forgotten (`--forget`), during this request or before it
    /// and then listed again by a request that was not a handshake.
    pub(crate) fn peer_id_shared(&self, s: &Session) -> Option<String> {
        let instance = s.instance.as_ref()?;
        let m = self.0.peer_book.entries.lock().ok()?;
        m.get(&(s.record.id, instance.clone()))?
            .id_shared(instance, now_millis())
            .map(|shared| shared.message)
    }

    /// Reads every saved peer of replication `id` into the book, once per
    /// process: the limits on what is recorded ([`admission`]) count them
    /// too, so a restart does not make room for more.
    /// Returns whether they are all in the book.
    async fn load_saved_peers(&self, id: i64) -> bool {
        let first = self.0.peer_book.loaded.lock().is_ok_and(|mut l| l.insert(id));
        if !first {
            return self.0.peer_book.loaded.lock().is_ok_and(|l| l.contains(&id));
        }
        let saved = match self.store().peers(id).await {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!("reading the saved peers of replication {id}: {e}");
                if let Ok(mut l) = self.0.peer_book.loaded.lock() {
                    l.remove(&id);
                }
                return false;
            }
        };
        let now = now_millis();
        if let Ok(mut m) = self.0.peer_book.entries.lock() {
            for (instance, value) in saved {
                if let Ok(state) = serde_json::from_value::<PeerState>(value) {
                    m.entry((id, instance)).or_insert_with(|| Entry {
                        state,
                        saved_at: now,
                        ..Entry::default()
                    });
                }
            }
        }
        true
    }

    /// The name of replication `id` (its id when it cannot be read).
    async fn replication_name(&self, id: i64) -> String {
        match self.store().replication_by_id(id).await {
            Ok(Some(rec)) => rec.name,
            _ => id.to_string(),
        }
    }

    /// Whether the peer of `s` is listed here without what its handshake
    /// tells (see [`ChangesPage::handshake_again`]).
    pub(crate) fn peer_unnamed(&self, s: &Session) -> bool {
        let Some(instance) = &s.instance else {
            return false;
        };
        self.0
            .peer_book
            .entries
            .lock()
            .ok()
            .map(|m| {
                m.get(&(s.record.id, instance.clone()))
                    .is_none_or(|e| e.state.ferry_version.is_none())
            })
            .unwrap_or(false)
    }

    /// Records that the peer of `s` has read all of `feed` up to `since`,
    /// the end of its change log: it waits for the next change (a long
    /// poll), and is not behind.
    pub(crate) fn peer_caught_up(&self, s: &Session, feed: &str, since: i64) {
        self.peer_feed(s, feed, since, 0, 0.0, now_millis());
    }

    /// Where the peer of `s` is in `feed` as of `now` (a contact too).
    fn peer_feed(&self, s: &Session, feed: &str, cursor: i64, lag_changes: i64, lag_seconds: f64, now: i64) {
        let Some(instance) = &s.instance else {
            return;
        };
        let Ok(mut m) = self.0.peer_book.entries.lock() else {
            return;
        };
        if let Some(e) = m.get_mut(&(s.record.id, instance.clone())) {
            e.state.feeds.insert(
                feed.to_owned(),
                PeerFeed {
                    cursor,
                    lag_changes,
                    lag_seconds,
                    at: now,
                },
            );
            e.state.last_contact = now;
        }
    }

    /// Records an error answered to the peer of `s`.
    pub fn peer_error(&self, s: &Session, err: &ReplError) {
        self.note_peer_error(s, Some((err.to_string(), false)));
    }

    /// Records that instance `instance`, a listed peer of replication
    /// `replication` last seen with sync token `token_id`, presented that
    /// token (its whole secret) after it was revoked here: the request was
    /// refused, and the refusal is that peer's last error in the hub's
    /// view, so an operator sees why a spoke stopped following. Not a
    /// contact (the spoke is not served, and turns stale). An instance not
    /// listed is not added (the request opened no session), nor is a peer
    /// last seen with another token touched (the holder of a revoked
    /// token cannot pin its refusal on another spoke). A batch cut by the
    /// revocation stays the last error; any other is replaced (a plain
    /// refusal's time is the latest refusal's).
    pub(crate) async fn peer_token_revoked(&self, replication: i64, instance: &str, token_id: &str) {
        let key = (replication, instance.to_owned());
        self.restore_peer(&key).await;
        let message = crate::incoming::revoked(token_id);
        let now = now_millis();
        let state = {
            let Ok(mut m) = self.0.peer_book.entries.lock() else {
                return;
            };
            let Some(e) = m.get_mut(&key) else {
                return;
            };
            if e.state.token.as_deref() != Some(token_id) {
                return;
            }
            let refusal = format!(
                "{message}: the request was refused; give the other instance a token this replication accepts"
            );
            let same = match &e.state.last_error {
                Some(err) if err.transfer && err.message.contains(&message) => return,
                Some(err) => err.message == refusal,
                None => false,
            };
            e.state.last_error = Some(PeerError {
                at: now,
                message: refusal,
                transfer: false,
                handshake: false,
            });
            take_save(e, now, !same)
        };
        if let Some(state) = state {
            self.save_peer_state(replication, state).await;
        }
    }

    /// Records a blob batch to the peer of `s` cut while it was sent
    /// (`Some(why)`), or sent whole (`None`: settles such a cut).
    pub(crate) fn peer_transfer(&self, s: &Session, cut: Option<String>) {
        self.note_peer_error(s, cut.map(|why| (why, true)));
    }

    fn note_peer_error(&self, s: &Session, err: Option<(String, bool)>) {
        let Some(instance) = &s.instance else {
            return;
        };
        // Answered with an accepted handshake: a feed refused alone.
        let mut handshake = false;
        if err.is_some()
            && let Some(request) = &s.request
        {
            handshake = request
                .accepted_handshake
                .load(std::sync::atomic::Ordering::Relaxed);
            request.failed.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if let Ok(mut m) = self.0.peer_book.entries.lock()
            && let Some(e) = m.get_mut(&(s.record.id, instance.clone()))
        {
            match err {
                Some((message, transfer)) => {
                    e.state.last_error = Some(PeerError {
                        at: now_millis(),
                        message: cut_message(&message),
                        transfer,
                        handshake: handshake && !transfer,
                    });
                }
                None if e.state.last_error.as_ref().is_some_and(|err| err.transfer) => {
                    e.state.last_error = None;
                }
                None => return,
            }
            e.saved_at = 0;
        }
    }

    /// Whether a request made with sync token `token_id` is recorded for
    /// peer `key` (replication id, instance id). A peer is one instance,
    /// identified by its instance id alone: a request with any token the
    /// replication accepts refreshes it (and shows that token), whatever
    /// token it used before — a spoke given a second token, or a fleet
    /// rotating its tokens one spoke at a time, is one peer each, never
    /// split nor stale for it. (Every such token was given out by this
    /// side's operator for this replication.) Only a peer not yet listed
    /// is judged, by [`admission`]: a refused one is logged once per
    /// replication and reason; its request is served as any with a valid
    /// token, only not recorded.
    async fn claim(&self, key: &(i64, String), token_id: &str, handshake: bool) -> bool {
        self.restore_peer(key).await;
        let admission = {
            let Ok(m) = self.0.peer_book.entries.lock() else {
                return false;
            };
            if m.contains_key(key) {
                Admission::Known
            } else {
                admission(&m, key.0, token_id, handshake)
            }
        };
        match admission {
            Admission::Known | Admission::Room => true,
            Admission::Evict(victim) => {
                // Room for an instance that shook hands: the one
                // silent longest among those that never did goes.
                if let Ok(mut m) = self.0.peer_book.entries.lock() {
                    m.remove(&(key.0, victim.clone()));
                }
                if let Err(e) = self.store().forget_peer(key.0, &victim).await {
                    tracing::warn!("forgetting replication peer {victim}: {e}");
                }
                true
            }
            Admission::Refused(why) => {
                // Logged once per replication and reason, not per
                // invented id.
                let first = self
                    .0
                    .peer_book
                    .warned
                    .lock()
                    .is_ok_and(|mut w| w.insert((key.0, why.to_string())));
                let name = self.replication_name(key.0).await;
                if first {
                    let msg = format!(
                        "replication {name}: {why}; requests of further such instances are served but not recorded"
                    );
                    // (the replication log writes it to the server's log too)
                    self.diag().log(crate::diag::Level::Warn, msg);
                }
                metrics::counter!("ferry_replication_peers_unrecorded_total", "replication" => name)
                    .increment(1);
                false
            }
        }
    }

    /// Puts the saved state of peer `key` (replication id, instance id)
    /// in the book when the book does not hold it: after a restart, or on
    /// another node of a cluster, a peer that connects again keeps its
    /// name, versions, interval, first contact and cursors instead of
    /// starting over as a stranger (one read per peer and process).
    async fn restore_peer(&self, key: &(i64, String)) {
        // With the replication's saved peers read and no other node
        // saving more, one not in the book has nothing saved: no read per
        // new instance id.
        if self.load_saved_peers(key.0).await && !self.store().shared_by_nodes() {
            return;
        }
        let known = self
            .0
            .peer_book
            .entries
            .lock()
            .map_or(true, |m| m.contains_key(key));
        if known {
            return;
        }
        let saved = match self.store().peer(key.0, &key.1).await {
            Ok(value) => value.and_then(|v| serde_json::from_value::<PeerState>(v).ok()),
            Err(e) => {
                tracing::warn!("reading the saved state of replication peer {}: {e}", key.1);
                None
            }
        };
        if let Some(state) = saved
            && let Ok(mut m) = self.0.peer_book.entries.lock()
        {
            m.entry(key.clone()).or_insert_with(|| Entry {
                state,
                in_flight: 0,
                // As saved: nothing new to save yet.
                saved_at: now_millis(),
                ..Entry::default()
            });
        }
    }

    async fn save_peer_state(&self, replication: i64, state: PeerState) {
        let Ok(value) = serde_json::to_value(&state) else {
            return;
        };
        if let Err(e) = self
            .store()
            .save_peer(replication, &state.instance_id, value)
            .await
        {
            tracing::warn!("saving replication peer {}: {e}", state.instance_id);
        }
    }

    /// The peers of incoming replication `name`, saved and live, by last
    /// contact (newest first). NotFound for an unknown replication;
    /// Invalid for an outgoing one (its peer is the one it connects to).
    pub async fn peers(&self, name: &str) -> Result<Vec<PeerView>, ReplError> {
        let (rec, cfg) = self.record(name).await?;
        if cfg.is_outgoing() {
            return Err(ReplError::Invalid(format!(
                "replication {name} is outgoing: peers are listed on the incoming side, where other instances connect"
            )));
        }
        let mut states: HashMap<String, (PeerState, u32, Option<IdShared>)> = HashMap::new();
        for (instance, value) in self.store().peers(rec.id).await? {
            if let Ok(state) = serde_json::from_value::<PeerState>(value) {
                states.insert(instance, (state, 0, None));
            }
        }
        let now = now_millis();
        if let Ok(m) = self.0.peer_book.entries.lock() {
            for ((id, instance), e) in m.iter() {
                if *id == rec.id {
                    let shared = e.id_shared(instance, now);
                    states.insert(instance.clone(), (e.state.clone(), e.in_flight, shared));
                }
            }
        }
        // The lag as of now, not as of the peer's last request: a peer that
        // stopped falls further behind with every change made here since.
        // (Peers of one feed mostly share a cursor: each feed and each
        // cursor is read once per listing.)
        let mut feed_ids: HashMap<String, Option<(FeedId, i64)>> = HashMap::new();
        let mut oldest_after: HashMap<(FeedId, i64), Option<i64>> = HashMap::new();
        for (state, _, _) in states.values_mut() {
            for (name, f) in state.feeds.iter_mut() {
                if let std::collections::hash_map::Entry::Vacant(slot) = feed_ids.entry(name.clone()) {
                    slot.insert(self.feed_position(name).await);
                }
                let Some(Some((feed, last_seq))) = feed_ids.get(name).copied() else {
                    continue;
                };
                if last_seq <= f.cursor {
                    continue;
                }
                f.lag_changes = last_seq - f.cursor;
                if let std::collections::hash_map::Entry::Vacant(slot) = oldest_after.entry((feed, f.cursor))
                {
                    let first = self
                        .ferry()
                        .metadata()
                        .changes_since(feed, f.cursor, 1)
                        .await?
                        .first()
                        .map(|c| i64::try_from(c.stamp.time.millis()).unwrap_or(now));
                    slot.insert(first);
                }
                if let Some(Some(ms)) = oldest_after.get(&(feed, f.cursor)).copied() {
                    f.lag_seconds = f.lag_seconds.max((now - ms).max(0) as f64 / 1000.0);
                }
            }
        }
        let multiple = u64::from(self.ferry().config().peer_stale_intervals.max(1));
        // A peer that only sends (this side sends it nothing) makes no
        // request while it has nothing to send, and shakes hands again
        // only once its handshake is [`crate::HANDSHAKE_REUSE`] old: so
        // long plus one interval is not silence.
        let quiet_floor = if cfg.mode.flows.pushes() {
            0
        } else {
            crate::HANDSHAKE_REUSE.as_secs()
        };
        let mut out: Vec<PeerView> = states
            .into_values()
            .map(|(state, in_flight, id_shared)| {
                let connected = in_flight > 0;
                let since = if connected {
                    0.0
                } else {
                    (now - state.last_contact).max(0) as f64 / 1000.0
                };
                let interval = state.interval_secs.unwrap_or(DEFAULT_INTERVAL_SECS).max(1);
                let allowed = multiple
                    .saturating_mul(interval)
                    .max(quiet_floor.saturating_add(interval));
                let lag_seconds = state.feeds.values().map(|f| f.lag_seconds).fold(0.0, f64::max);
                PeerView {
                    connected,
                    seconds_since_contact: since,
                    lag_seconds,
                    stale: !connected && since > allowed as f64,
                    id_shared,
                    state,
                }
            })
            .collect();
        out.sort_by(|a, b| {
            b.state
                .last_contact
                .cmp(&a.state.last_contact)
                .then_with(|| a.state.instance_id.cmp(&b.state.instance_id))
        });
        Ok(out)
    }

    /// Feed `name`'s id and last change-log position, if it exists.
    async fn feed_position(&self, name: &str) -> Option<(FeedId, i64)> {
        let name = ferry_types::FeedName::new(name).ok()?;
        let feed = self.ferry().feed(&name).await.ok()?;
        let last = self.ferry().metadata().last_seq(feed.id).await.ok()?;
        Some((feed.id, last))
    }

    /// The per-peer gauges of every incoming replication, in Prometheus'
    /// text exposition format (0.0.4), rendered from the peers listed now:
    /// `ferry_replication_peer_lag_seconds`,
    /// `ferry_replication_peer_last_contact_seconds` (seconds since) and
    /// `ferry_replication_peer_stale` and `ferry_replication_peer_id_shared`
    /// (1 or 0), labelled by replication,
    /// instance id and reported name. A forgotten peer, or one of a deleted
    /// replication, is gone from the next scrape (a registered gauge would
    /// stay until restart). Empty when no peer is listed or the store
    /// cannot be read.
    pub async fn peer_metrics(&self) -> String {
        let Ok(records) = self.store().replications().await else {
            return String::new();
        };
        let mut rows = Vec::new();
        for rec in records {
            let Ok(list) = self.peers(&rec.name).await else {
                continue;
            };
            for p in list {
                let labels = format!(
                    "replication=\"{}\",instance=\"{}\",name=\"{}\"",
                    label_value(&rec.name),
                    label_value(&p.state.instance_id),
                    label_value(p.state.name.as_deref().unwrap_or_default())
                );
                let stale = if p.stale { 1.0 } else { 0.0 };
                let shared = if p.id_shared.is_some() { 1.0 } else { 0.0 };
                rows.push((labels, [p.lag_seconds, p.seconds_since_contact, stale, shared]));
            }
        }
        render_gauges(
            [
                (
                    "ferry_replication_peer_lag_seconds",
                    "Seconds the peer's oldest change not yet read has waited",
                ),
                (
                    "ferry_replication_peer_last_contact_seconds",
                    "Seconds since the peer's last request",
                ),
                (
                    "ferry_replication_peer_stale",
                    "1 when the peer has not been seen for its stale multiple of its interval",
                ),
                (
                    "ferry_replication_peer_id_shared",
                    "1 while two or more running processes take turns under the peer's instance id (copies of one data directory)",
                ),
            ],
            &rows,
        )
    }

    /// Forgets peer `instance` of incoming replication `name` (one that
    /// will not come back: a decommissioned spoke, a refused attempt):
    /// it is no longer listed, until it connects again. NotFound for an
    /// unknown replication or a peer it does not list; Invalid for an
    /// outgoing replication.
    pub async fn forget_peer(&self, name: &str, instance: &str) -> Result<(), ReplError> {
        let (rec, cfg) = self.record(name).await?;
        if cfg.is_outgoing() {
            return Err(ReplError::Invalid(format!(
                "replication {name} is outgoing: peers are kept on the incoming side"
            )));
        }
        let live = self
            .0
            .peer_book
            .entries
            .lock()
            .is_ok_and(|mut m| m.remove(&(rec.id, instance.to_owned())).is_some());
        let saved = self.store().forget_peer(rec.id, instance).await?;
        if !live && !saved {
            return Err(ReplError::NotFound(format!(
                "replication {name} lists no peer {instance}"
            )));
        }
        Ok(())
    }

    /// Forgets the live state of every peer of replication `id` (it was
    /// deleted; the store drops the saved state with it).
    pub(crate) fn forget_peers(&self, id: i64) {
        if let Ok(mut m) = self.0.peer_book.entries.lock() {
            m.retain(|(r, _), _| *r != id);
        }
    }
}

/// An error message as kept: at most 1000 characters, control
/// characters (a peer's words may be quoted in it) shown as spaces.
fn cut_message(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') {
                ' '
            } else {
                c
            }
        })
        .take(1000)
        .collect()
}

/// Gauges in Prometheus' text exposition format (0.0.4): for each of
/// `gauges` (name, help), its `# HELP` and `# TYPE` lines and one sample
/// per row — the row's labels (rendered, values escaped with
/// [`label_value`]) and its `i`th value for the `i`th gauge. Empty when
/// there is no row.
pub(crate) fn render_gauges<const N: usize>(
    gauges: [(&str, &str); N],
    rows: &[(String, [f64; N])],
) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if rows.is_empty() {
        return out;
    }
    for (i, (name, help)) in gauges.iter().enumerate() {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (labels, values) in rows {
            let _ = writeln!(out, "{name}{{{labels}}} {}", values[i]);
        }
    }
    out
}

/// `v` as a Prometheus label value: backslash, double quote and line feed
/// escaped (text exposition format 0.0.4).
pub(crate) fn label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const P1: &str = "11111111111111111111111111111111";
    const P2: &str = "22222222222222222222222222222222";

    fn entry(token: &str, handshook: bool, last_contact: i64) -> Entry {
        Entry {
            state: PeerState {
                token: Some(token.into()),
                ferry_version: handshook.then(|| "1.0".into()),
                last_contact,
                ..PeerState::default()
            },
            ..Entry::default()
        }
    }

    #[test]
    fn a_full_book_makes_room_for_a_handshake_only_in_place_of_one_that_never_made_one() {
        let mut m = HashMap::new();
        // Full: every token at its share, all shook hands but the oldest
        // silent few of token t0.
        for i in 0..MAX_PEERS {
            let token = format!("t{}", i % 4);
            let handshook = i >= 3;
            m.insert(
                (1, format!("{i:032x}")),
                entry(&token, handshook, 1000 + i as i64),
            );
        }
        assert!(matches!(admission(&m, 1, "t9", false), Admission::Refused(_)));
        // A new token's handshake takes the place of the silent longest
        // that never shook hands.
        match admission(&m, 1, "t9", true) {
            Admission::Evict(victim) => assert_eq!(victim, format!("{:032x}", 0)),
            _ => panic!("expected an eviction"),
        }
        // A token at its share is refused even with room elsewhere.
        assert!(matches!(admission(&m, 1, "t1", true), Admission::Refused(_)));
        // Another replication is not affected.
        assert!(matches!(admission(&m, 2, "t0", false), Admission::Room));
        // Every one shook hands: nothing to evict.
        for e in m.values_mut() {
            e.state.ferry_version = Some("1.0".into());
        }
        assert!(matches!(admission(&m, 1, "t9", true), Admission::Refused(_)));
    }

    #[test]
    fn the_largest_interval_heard_recently_counts_whichever_shook_hands_last() {
        let mut heard = Vec::new();
        let s = |secs: i64| 1_000_000_000 + secs * 1000;
        assert_eq!(effective_interval(&heard), None);
        // Two replications of one spoke, every 5 s and every 60 s, shaking
        // hands in either order: 60 each time.
        hear_interval(&mut heard, 5, s(0));
        assert_eq!(effective_interval(&heard), Some(5));
        hear_interval(&mut heard, 60, s(1));
        assert_eq!(effective_interval(&heard), Some(60));
        hear_interval(&mut heard, 5, s(300));
        assert_eq!(effective_interval(&heard), Some(60));
        hear_interval(&mut heard, 60, s(361));
        hear_interval(&mut heard, 5, s(605));
        assert_eq!(effective_interval(&heard), Some(60));
        // The 60 s one is deleted: once the 5 s one has shaken hands past
        // its window (300 + 120 + 60 s), 5 again.
        hear_interval(&mut heard, 5, s(361 + 480));
        assert_eq!(effective_interval(&heard), Some(60));
        hear_interval(&mut heard, 5, s(361 + 481));
        assert_eq!(effective_interval(&heard), Some(5));
        assert_eq!(heard.len(), 1);
        // At most MAX_INTERVALS kept, the oldest heard going first.
        for i in 0..20 {
            hear_interval(&mut heard, 100 + i, s(900 + i as i64));
        }
        assert_eq!(heard.len(), MAX_INTERVALS);
        assert_eq!(effective_interval(&heard), Some(119));
    }

    #[test]
    fn a_restart_is_not_a_shared_id_but_processes_taking_turns_are() {
        let mut e = Entry::default();
        let at = |s: i64| 1_000_000 + s * 1000;
        // A restart: the old process is never heard again.
        for (t, p) in [(0, P1), (1, P1), (2, P2), (3, P2), (4, P2)] {
            assert!(!e.note_process(p, Some("10.0.0.1"), at(t)));
        }
        assert!(e.id_shared("x", at(4)).is_none());
        // One late request of the old process is not enough either.
        assert!(!e.note_process(P1, Some("10.0.0.1"), at(5)));
        assert!(e.id_shared("x", at(5)).is_none());
        // Turns again: two processes at once, from two addresses.
        assert!(e.note_process(P2, Some("10.0.0.2"), at(6)));
        let shared = e.id_shared("x", at(6)).unwrap();
        assert_eq!(shared.processes, 2);
        assert_eq!(
            shared.addresses,
            vec!["10.0.0.1".to_string(), "10.0.0.2".to_string()]
        );
        // Listed until the window has passed since the last turn.
        assert!(!e.note_process(P2, None, at(7)));
        assert!(e.id_shared("x", at(7) + SHARED_WINDOW_MS - 1000).is_some());
        assert!(e.id_shared("x", at(6) + SHARED_WINDOW_MS + 1).is_none());
    }
}
