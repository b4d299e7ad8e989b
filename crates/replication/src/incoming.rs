//! The incoming side: what a peer holding one of this instance's sync
//! tokens may do. The replication's mode here is the peer's permission:
//! it may read only what this side pushes, and write only what this side
//! pulls.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use ferry_core::CoreError;
use ferry_store::{ByteStream, FeedRecord, ReplicationRecord, StagedBlob};
use ferry_types::{Digest, FeedName, ItemKey};
use subtle::ConstantTimeEq;

use crate::config::{Communication, ReplicationConfig};
use crate::diag::Level;
use crate::filter::Filter;
use crate::protocol::{anchor as anchor_of, *};
use crate::{ReplError, Replicator, token};

/// Longest an uploaded blob waits for the claim on its partial file (held
/// by another upload of the same blob) before it is stored on its own.
const CLAIM_WAIT: Duration = Duration::from_secs(5);

/// Which way a peer's blob bytes go through [`Replicator::guard_body`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// From this instance to the peer.
    Sent,
    /// From the peer to this instance.
    Received,
}

/// Who makes a request of the replication API, as its headers and
/// connection say: the instance and process ids it names
/// ([`crate::protocol::INSTANCE_HEADER`],
/// [`crate::protocol::PROCESS_HEADER`]; unchecked text) and the address
/// it comes from.
#[derive(Debug, Clone, Default)]
pub struct Caller<'a> {
    pub instance: Option<&'a str>,
    pub process: Option<&'a str>,
    pub address: Option<String>,
    /// The request is a handshake (`POST handshake`): a new instance is
    /// recorded under the rules for instances that shake hands.
    pub handshake: bool,
}

/// A verified peer: the replication its token belongs to, and the
/// instance it names itself as (see [`crate::peers`]).
#[derive(Clone)]
pub struct Session {
    pub record: ReplicationRecord,
    pub config: ReplicationConfig,
    /// The instance id the request named (`Ferry-Instance`), if valid
    /// and recorded as its peer.
    pub instance: Option<String>,
    /// The `Ferry-Instance` header as the request sent it, recorded or
    /// not (a handshake must name the same instance in its body).
    pub named: Option<String>,
    /// Notes the end of this request as contact with the peer.
    pub request: Option<std::sync::Arc<crate::peers::PeerRequest>>,
    /// The id of the sync token the request presented (checked again
    /// after a long poll's wait: a token revoked meanwhile gets nothing).
    pub token_id: String,
    /// The replication's include/exclude filter. New incoming
    /// replications cannot have one ([`ReplicationConfig::validate`]);
    /// one stored before that still narrows what is listed.
    pub filter: Filter,
}

const MAX_PAGE: usize = 1000;
use crate::protocol::{MAX_DIGESTS, MAX_KEYS};
const MAX_WAIT: u64 = 60;

/// What a request with sync token `token_id`, revoked here, is told (and
/// what the hub's view of the peer quotes: [`Replicator::peer_token_revoked`]
/// finds a batch cut by the revocation by this text).
pub(crate) fn revoked(token_id: &str) -> String {
    format!("sync token {token_id} was revoked on this instance")
}

impl Replicator {
    /// Verifies a sync token (constant-time comparison of its secret) and
    /// notes the request as contact with the peer the caller's instance
    /// id names, from its address and process. Errors: Unauthorized for a
    /// bad or revoked token; Invalid (400) for an instance or process id
    /// that is not 32 hex digits; Refused (409) for this instance's own
    /// id.
    pub async fn session(&self, presented: &str, caller: Caller<'_>) -> Result<Session, ReplError> {
        let Caller {
            instance,
            process,
            address,
            handshake,
        } = caller;
        let refuse = || ReplError::Unauthorized("invalid or revoked sync token".into());
        let (id, secret) = token::split(presented).ok_or_else(refuse)?;
        let rec = self.store().sync_token(id).await?.ok_or_else(refuse)?;
        let ok: bool = token::hash(secret).ct_eq(&rec.hash).into();
        if !ok || rec.revoked {
            self.diag().log(
                Level::Warn,
                format!("refused a request with invalid or revoked sync token {id}"),
            );
            if ok {
                // The caller holds the whole token: it may learn that it
                // was revoked (and so ask for a new one), and the peer
                // its header names, if listed, shows the refusal.
                if let Some(named) = instance.and_then(|n| n.parse::<ferry_types::InstanceId>().ok()) {
                    self.peer_token_revoked(rec.replication_id, &named.to_string(), id)
                        .await;
                }
                return Err(ReplError::Unauthorized(revoked(id)));
            }
            return Err(refuse());
        }
        let record = self
            .store()
            .replication_by_id(rec.replication_id)
            .await?
            .ok_or_else(refuse)?;
        let config: ReplicationConfig =
            serde_json::from_value(record.config.clone()).map_err(|e| ReplError::Invalid(e.to_string()))?;
        if config.communication != Communication::Incoming {
            return Err(refuse());
        }
        if let Some(named) = instance {
            let Ok(named) = named.parse::<ferry_types::InstanceId>() else {
                return Err(ReplError::Invalid(format!(
                    "the {} header names no instance id (32 hex digits): {:?}",
                    crate::protocol::INSTANCE_HEADER,
                    named.chars().take(64).collect::<String>()
                )));
            };
            // Every request, not only the handshake: a blob source or a
            // bundle peer that is this very instance (its own URL, or a
            // copy of its data directory answering elsewhere) is refused
            // as a replication to the same instance.
            if named == self.ferry().instance_id() {
                return Err(ReplError::Refused(format!(
                    "the request comes from this same instance ({named}): an instance does not replicate with itself (a URL naming this instance, or another instance started from a copy of its data directory)"
                )));
            }
        }
        if let Some(named) = process
            && named.parse::<ferry_types::InstanceId>().is_err()
        {
            return Err(ReplError::Invalid(format!(
                "the {} header names no process id (32 hex digits): {:?}",
                crate::protocol::PROCESS_HEADER,
                named.chars().take(64).collect::<String>()
            )));
        }
        let filter = Filter::new(&config.include, &config.exclude)?;
        let mut s = Session {
            record,
            config,
            instance: None,
            named: instance.map(str::to_owned),
            request: None,
            token_id: id.to_owned(),
            filter,
        };
        if let Some(request) = self
            .peer_request(&s, instance, process, id, address, handshake)
            .await
        {
            s.instance = instance.map(str::to_owned);
            s.request = Some(std::sync::Arc::new(request));
        }
        Ok(s)
    }

    /// Checks that the peer's configuration fits this one. The peer's
    /// name, Ferry version and interval are recorded whether or not it is
    /// accepted, so a refused one is listed under its name with the reason
    /// — under the id its `Ferry-Instance` header names, which must be the
    /// body's `instance_id` (a handshake without the header is answered
    /// but not recorded).
    pub async fn handshake(
        &self,
        s: &Session,
        req: HandshakeRequest,
    ) -> Result<HandshakeResponse, ReplError> {
        let version = req
            .protocol_versions
            .iter()
            .copied()
            .filter(|v| SUPPORTED_VERSIONS.contains(v))
            .max();
        if let Some(named) = s.named.as_deref()
            && named.parse::<ferry_types::InstanceId>().ok() != Some(req.instance_id)
        {
            // Recorded under neither id: one of them is not this peer's.
            return Err(ReplError::Invalid(format!(
                "the handshake names instance {} but its {} header names {named}: an instance has one id",
                req.instance_id,
                crate::protocol::INSTANCE_HEADER
            )));
        }
        let answer = self.check_handshake(s, &req, version).await;
        // Recorded only under the id its header names (a request without
        // one is not bound to a token: it would make an entry any other
        // token could take over).
        // Also when its requests are not recorded yet (its token names
        // many instances that never shook hands): a handshake is.
        if s.named.is_some() {
            self.peer_handshake(s, &req, version, answer.is_ok()).await;
            // A feed refused alone is this peer's error too, as seen here.
            if let Ok(a) = &answer
                && let Some(f) = a.refused_feeds.first()
            {
                self.peer_error(s, &ReplError::Refused(f.reason.clone()));
            }
        }
        answer
    }

    async fn check_handshake(
        &self,
        s: &Session,
        req: &HandshakeRequest,
        version: Option<u32>,
    ) -> Result<HandshakeResponse, ReplError> {
        let name = &s.record.name;
        let Some(version) = version else {
            let msg = format!(
                "no common replication protocol version: the other instance speaks {:?}, this one {:?}; upgrade the older Ferry",
                req.protocol_versions, SUPPORTED_VERSIONS
            );
            self.diag().log(Level::Error, format!("{name}: {msg}"));
            return Err(ReplError::Invalid(msg));
        };
        if !req.mode.is_consistent() {
            return Err(ReplError::Invalid(format!(
                "the handshake's mode is named {} but its flows are not that mode's (use custom for other flows)",
                req.mode.name.as_str()
            )));
        }
        if req.instance_id == self.ferry().instance_id() {
            let msg = format!(
                "replication to the same instance ({}) is not allowed: to copy between feeds of one instance, point the outgoing URL at another instance",
                req.instance_id
            );
            self.diag().log(Level::Error, format!("{name}: {msg}"));
            return Err(ReplError::Refused(msg));
        }
        let ours = s.config.mode;
        if req.mode.flows != ours.flows.mirror_image() {
            let msg = format!(
                "replication mode mismatch: replication {name} on the incoming instance is set to {}, which pairs with {} on the outgoing side, but the outgoing instance is set to {}; set the outgoing side to {} (or the incoming side to {})",
                ours.describe(),
                ours.expected_peer(),
                req.mode.describe(),
                ours.expected_peer(),
                req.mode.expected_peer()
            );
            self.diag().log(Level::Error, msg.clone());
            return Err(ReplError::Refused(msg));
        }
        // A feed this side does not serve is refused alone (the others go
        // on); only a handshake with nothing left is refused whole.
        let mut refused_feeds = Vec::new();
        for f in &req.feeds {
            let local = match s.config.feeds.iter().find(|p| p.local == f.incoming) {
                None => Err(format!(
                    "feed {} is not part of replication {name} on the incoming instance",
                    f.incoming
                )),
                Some(pair) => self.ferry().feed(&pair.local).await.map_err(|_| {
                    format!(
                        "feed {} of replication {name} does not exist on the incoming instance",
                        pair.local
                    )
                }),
            };
            let local = match local {
                Ok(local) => local,
                Err(reason) => {
                    self.diag().log(Level::Error, reason.clone());
                    refused_feeds.push(crate::protocol::RefusedFeed {
                        feed: f.incoming.clone(),
                        reason,
                    });
                    continue;
                }
            };
            if local.feed_type != f.feed_type {
                let msg = format!(
                    "feed type mismatch: {} is {} on the outgoing instance but {} is {} on the incoming instance",
                    f.outgoing, f.feed_type, local.name, local.feed_type
                );
                self.diag().log(Level::Error, msg.clone());
                return Err(ReplError::Refused(msg));
            }
        }
        if refused_feeds.len() == req.feeds.len()
            && let Some(why) = crate::protocol::RefusedFeed::summary(&refused_feeds)
        {
            return Err(ReplError::Refused(why));
        }
        if let Ok(mut peers) = self.0.peers.lock() {
            peers.insert(s.record.id, req.instance_id);
        }
        self.diag().log(
            Level::Debug,
            format!(
                "{name}: handshake from instance {} (Ferry {}), protocol v{version}",
                req.instance_id, req.ferry_version
            ),
        );
        Ok(HandshakeResponse {
            protocol_version: version,
            instance_id: self.ferry().instance_id(),
            ferry_version: env!("CARGO_PKG_VERSION").into(),
            replication: name.clone(),
            mode: ours,
            features: vec![crate::batch::BLOB_BATCH.to_string()],
            filter: Some(filter_fingerprint(&s.config)),
            refused_feeds,
        })
    }

    async fn session_feed(&self, s: &Session, feed: &str) -> Result<FeedRecord, ReplError> {
        let name = FeedName::new(feed).map_err(|e| ReplError::Invalid(e.to_string()))?;
        if !s.config.feeds.iter().any(|p| p.local == name) {
            return Err(ReplError::Forbidden(format!(
                "feed {name} is not part of replication {}",
                s.record.name
            )));
        }
        Ok(self.ferry().feed(&name).await?)
    }

    fn require_read(&self, s: &Session) -> Result<(), ReplError> {
        if s.config.mode.flows.pushes() {
            return Ok(());
        }
        let msg = format!(
            "replication {} on this instance is {}: it does not send content or deletions",
            s.record.name,
            s.config.mode.describe()
        );
        self.diag().log(Level::Warn, msg.clone());
        Err(ReplError::Forbidden(msg))
    }

    /// Keeps what this side's mode sends: content if it pushes missing
    /// items, tombstones if it propagates deletions.
    fn readable(s: &Session, feed: &FeedRecord, e: &WireEntry) -> bool {
        let f = s.config.mode.flows;
        let flows = if e.deleted {
            f.delete_remote
        } else {
            f.push_missing
        };
        flows && s.filter.admits(feed.feed_type, &e.key)
    }

    /// Checks, after a long poll waited, that the session still holds:
    /// its token not revoked, its replication still incoming, sending,
    /// and holding `feed`. Errors: as [`Replicator::session`] and
    /// [`Replicator::changes`] would refuse a new request.
    async fn still_valid(&self, s: &Session, feed: &FeedName) -> Result<(), ReplError> {
        let config = self.session_holds(&s.token_id, s.record.id).await?;
        let now = Session {
            record: s.record.clone(),
            config,
            instance: None,
            named: None,
            request: None,
            token_id: s.token_id.clone(),
            filter: s.filter.clone(),
        };
        self.require_read(&now)?;
        self.session_feed(&now, feed.as_str()).await?;
        if now.config.include != s.config.include || now.config.exclude != s.config.exclude {
            return Err(ReplError::Conflict(format!(
                "replication {}'s filters changed while the request waited; ask again",
                s.record.name
            )));
        }
        // A feed added back (or another dropped): the peer handshakes
        // again, which tells it what it may read now.
        if now.config.feeds != s.config.feeds {
            return Err(ReplError::Conflict(format!(
                "replication {}'s feeds changed while the request waited; ask again",
                s.record.name
            )));
        }
        Ok(())
    }

    /// The configuration of replication `replication` now, if sync token
    /// `token_id` still opens it: not revoked, and the replication still
    /// there and incoming. Errors: Unauthorized otherwise.
    async fn session_holds(&self, token_id: &str, replication: i64) -> Result<ReplicationConfig, ReplError> {
        let gone = || ReplError::Unauthorized(revoked(token_id));
        let token = self.store().sync_token(token_id).await?.ok_or_else(gone)?;
        if token.revoked || token.replication_id != replication {
            return Err(gone());
        }
        let record = self
            .store()
            .replication_by_id(replication)
            .await?
            .ok_or_else(|| ReplError::Unauthorized("invalid or revoked sync token".into()))?;
        let config: ReplicationConfig =
            serde_json::from_value(record.config).map_err(|e| ReplError::Invalid(e.to_string()))?;
        if config.communication != Communication::Incoming {
            return Err(ReplError::Unauthorized("invalid or revoked sync token".into()));
        }
        Ok(config)
    }

    /// Whether the token of session `s` still opens its replication (see
    /// [`Self::guard_body`]). Errors: Unauthorized, naming the
    /// revocation, when it no longer does.
    pub async fn session_still_holds(&self, s: &Session) -> Result<(), ReplError> {
        self.session_holds(&s.token_id, s.record.id).await.map(|_| ())
    }

    /// `body` (blob bytes sent to or received from the peer of `s`), cut
    /// with an error as soon as its session no longer holds
    /// ([`Self::session_holds`]) or its replication's filters or feeds
    /// changed — checked whenever a token is revoked or a replication
    /// changed, on this node or another: a transfer under way ends with
    /// the revocation of its token or the narrowing of what it may read,
    /// not when its bytes run out (which a bandwidth cap can make hours).
    /// Its bytes are counted in `ferry_replication_peer_bytes_total`,
    /// labelled by replication and `direction` (`sent` or `received`,
    /// `flow`), as they pass.
    pub fn guard_body<B>(&self, s: &Session, body: B, flow: Flow) -> ByteStream
    where
        B: futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + Unpin + 'static,
    {
        use futures::StreamExt as _;
        struct Guard<B> {
            body: B,
            counted: metrics::Counter,
            sessions: Option<tokio::sync::watch::Receiver<u64>>,
            r: Replicator,
            token_id: String,
            replication: i64,
            /// What the peer could read when the transfer began.
            include: Vec<String>,
            exclude: Vec<String>,
            feeds: Vec<crate::config::FeedPair>,
            cut: bool,
        }
        let direction = match flow {
            Flow::Sent => "sent",
            Flow::Received => "received",
        };
        impl<B> Guard<B> {
            fn count(self, c: std::io::Result<bytes::Bytes>) -> (std::io::Result<bytes::Bytes>, Self) {
                if let Ok(b) = &c {
                    self.counted.increment(b.len() as u64);
                }
                (c, self)
            }
        }
        let state = Guard {
            body,
            counted: metrics::counter!("ferry_replication_peer_bytes_total", "replication" => s.record.name.clone(), "direction" => direction),
            sessions: Some(self.sessions_signal()),
            r: self.clone(),
            token_id: s.token_id.clone(),
            replication: s.record.id,
            include: s.config.include.clone(),
            exclude: s.config.exclude.clone(),
            feeds: s.config.feeds.clone(),
            cut: false,
        };
        Box::pin(futures::stream::unfold(state, |mut g| async move {
            if g.cut {
                return None;
            }
            loop {
                let changed = match g.sessions.as_mut() {
                    // The signal first: a body always ready (a file read
                    // from cache) must not hide a revocation.
                    Some(rx) => tokio::select! {
                        biased;
                        r = rx.changed() => r.is_ok(),
                        chunk = g.body.next() => return chunk.map(|c| g.count(c)),
                    },
                    None => return g.body.next().await.map(|c| g.count(c)),
                };
                if !changed {
                    g.sessions = None; // no more signals: only the body
                    continue;
                }
                let why = match g.r.session_holds(&g.token_id, g.replication).await {
                    Err(e) => Some(e.to_string()),
                    // What the peer may read narrowed (or changed): what
                    // is under way was allowed by the old filter.
                    Ok(now)
                        if now.include != g.include || now.exclude != g.exclude || now.feeds != g.feeds =>
                    {
                        Some(
                            "the replication's filters or feeds changed during the transfer; ask again"
                                .to_owned(),
                        )
                    }
                    Ok(_) => None,
                };
                if let Some(why) = why {
                    g.cut = true;
                    return Some((Err(std::io::Error::other(why)), g));
                }
            }
        }))
    }

    /// A page of the change log after `since`, waiting up to `wait` seconds
    /// for something new when there is nothing yet (long polling; a
    /// shutdown of this instance ends the wait at once). With `anchor`
    /// (from the page that gave `since`), a log that is not the one the
    /// cursor was taken from answers `reset` and `diverged`.
    pub async fn changes(&self, s: &Session, feed: &str, q: PageQuery) -> Result<ChangesPage, ReplError> {
        let since = q.since;
        let mut page = self.changes_page(s, feed, q).await?;
        self.peer_page(s, feed, since, &page);
        page.handshake_again = self.peer_unnamed(s);
        page.id_shared = self.peer_id_shared(s);
        Ok(page)
    }

    async fn changes_page(&self, s: &Session, feed: &str, q: PageQuery) -> Result<ChangesPage, ReplError> {
        let PageQuery {
            since,
            anchor,
            limit,
            wait,
            count_deletes,
            count_bytes,
            bytes_after,
            inline_max,
            blob_sizes,
        } = q;
        let extras = PageExtras {
            count_deletes,
            count_bytes,
            bytes_after,
            inline_max,
            blob_sizes,
        };
        self.require_read(s)?;
        if since < 0 {
            return Err(ReplError::Invalid(format!(
                "since={since}: a cursor is a change sequence number, 0 or more"
            )));
        }
        let feed = self.session_feed(s, feed).await?;
        let limit = limit.clamp(1, MAX_PAGE);
        let meta = self.ferry().metadata().clone();
        let horizon = self.store().horizon(feed.id).await?;
        let reset = |last_seq: i64, last_anchor: Option<i64>, diverged: bool| ChangesPage {
            entries: Vec::new(),
            handshake_again: false,
            id_shared: None,
            next: since,
            last_seq,
            reset: true,
            oldest_pending: None,
            diverged,
            next_anchor: None,
            last_anchor,
            deletes_ahead: None,
            bytes_ahead: None,
            bytes_late: None,
            inline: Vec::new(),
            sizes: HashMap::new(),
            instance_id: Some(self.ferry().instance_id()),
        };
        if since < horizon {
            let last_seq = meta.last_seq(feed.id).await?;
            return Ok(reset(last_seq, self.anchor_at(feed.id, last_seq).await?, false));
        }
        if since > 0 {
            let last_seq = meta.last_seq(feed.id).await?;
            let diverged = if since > last_seq {
                true
            } else if let Some(expected) = anchor.filter(|a| *a != 0) {
                // The change at `since` is gone only when its tombstone
                // was pruned (since == horizon); then there is nothing to
                // compare, and the horizon check covers older cursors.
                self.anchor_at(feed.id, since)
                    .await?
                    .is_some_and(|found| found != expected)
            } else {
                false
            };
            if diverged {
                self.diag().log(
                    Level::Warn,
                    format!(
                        "{}: a peer's cursor {since} on feed {} was taken from another change log (this one ends at {last_seq}); it will compare in full",
                        s.record.name, feed.name
                    ),
                );
                return Ok(reset(last_seq, self.anchor_at(feed.id, last_seq).await?, true));
            }
        }
        let mut rx = self.ferry().subscribe(feed.id).await?;
        if wait > 0 && *rx.borrow() <= since {
            let _slot = self.wait_slot(&s.token_id)?;
            // Caught up: so it is listed while it waits, not as far behind
            // as its last answered page said.
            self.peer_caught_up(s, feed.name.as_str(), since);
            let mut stop = self.shutdown_signal();
            let mut sessions = self.sessions_signal();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(wait.min(MAX_WAIT));
            loop {
                let woken = tokio::select! {
                    _ = tokio::time::timeout_at(deadline, rx.wait_for(|seq| *seq > since)) => false,
                    _ = stop.wait_for(|stopping| *stopping) => false,
                    // A token revoked or a replication changed: checked
                    // at once, not when the wait ends.
                    r = sessions.changed() => r.is_ok(),
                };
                // What waited may have been revoked or narrowed meanwhile.
                self.still_valid(s, &feed.name).await?;
                if !woken {
                    break;
                }
                // Another session's change: wait on.
            }
        }
        let changes = meta.changes_since(feed.id, since, limit).await?;
        let last_seq = meta.last_seq(feed.id).await?;
        let next = changes.last().map_or(since, |c| c.seq);
        let next_anchor = match changes.last() {
            Some(c) => Some(anchor_of(&c.stamp)),
            None => anchor,
        };
        let last_anchor = if last_seq == next {
            next_anchor
        } else {
            self.anchor_at(feed.id, last_seq).await?
        };
        let oldest_pending = changes.first().map(|c| c.stamp.time.millis());
        // Counted by feed, not by the replication's filter: a filtered
        // replication's peer is not told (it then reads the pages).
        let counted = s.filter.is_everything();
        let deletes_ahead = if extras.count_deletes && counted {
            Some(self.store().deletions_after(feed.id, since).await?)
        } else {
            None
        };
        let bytes_ahead = if extras.count_bytes && counted {
            Some(self.store().live_bytes_after(feed.id, since).await?)
        } else {
            None
        };
        let bytes_late = match extras.bytes_after {
            Some(seq) if counted && last_seq > seq.max(since) => {
                Some(self.store().live_bytes_after(feed.id, seq.max(since)).await?)
            }
            Some(_) if counted => Some(0),
            _ => None,
        };
        let mut seen = HashSet::new();
        let keys: Vec<ItemKey> = changes
            .into_iter()
            .filter(|c| seen.insert(c.key.clone()))
            .map(|c| c.key)
            .collect();
        let entries: Vec<WireEntry> = self
            .store()
            .entries_for(feed.id, &keys)
            .await?
            .into_iter()
            .map(WireEntry::from)
            .filter(|e| Self::readable(s, &feed, e))
            .collect();
        let inline = self.inline_blobs(&entries, extras.inline_max).await;
        let sizes = if extras.blob_sizes {
            self.sizes_of(&entries).await?
        } else {
            HashMap::new()
        };
        Ok(ChangesPage {
            handshake_again: false,
            id_shared: None,
            entries,
            next,
            last_seq,
            reset: false,
            oldest_pending,
            diverged: false,
            next_anchor,
            last_anchor,
            deletes_ahead,
            bytes_ahead,
            bytes_late,
            inline,
            sizes,
            instance_id: Some(self.ferry().instance_id()),
        })
    }

    /// The small blobs of a page's live entries, up to [`INLINE_BUDGET`]
    /// bytes in all. A blob that cannot be read whole here is left out
    /// (the receiver then asks for it as usual, and learns what is wrong).
    async fn inline_blobs(&self, entries: &[WireEntry], max: u64) -> Vec<InlineBlob> {
        use base64::Engine as _;
        use futures::TryStreamExt;
        let mut out = Vec::new();
        if max == 0 {
            return out;
        }
        let mut used = 0u64;
        let mut seen = HashSet::new();
        for d in entries.iter().filter(|e| !e.deleted).flat_map(|e| e.blobs.iter()) {
            if !seen.insert(*d) {
                continue;
            }
            let Ok(Some(size)) = self.ferry().blob_size(d).await else {
                continue;
            };
            if size > max || used + size > INLINE_BUDGET {
                continue;
            }
            let Ok(body) = self.ferry().read_blob_for_peer(d, None).await else {
                continue;
            };
            let Ok(chunks) = body.stream.try_collect::<Vec<bytes::Bytes>>().await else {
                continue;
            };
            let bytes: Vec<u8> = chunks.concat();
            if bytes.len() as u64 != size {
                continue;
            }
            used += size;
            out.push(InlineBlob {
                digest: *d,
                data: base64::engine::general_purpose::STANDARD.encode(&bytes),
            });
        }
        out
    }

    /// The anchor of the change at `seq` of a feed's log, if it is there.
    async fn anchor_at(&self, feed: ferry_store::FeedId, seq: i64) -> Result<Option<i64>, ReplError> {
        if seq <= 0 {
            return Ok(None);
        }
        let found = self.ferry().metadata().changes_since(feed, seq - 1, 1).await?;
        Ok(found
            .first()
            .filter(|c| c.seq == seq)
            .map(|c| anchor_of(&c.stamp)))
    }

    /// The current state of `keys` (item or tombstone) in a feed of the
    /// session, as this side's mode lets the peer read it; keys that are
    /// unknown here are left out. At most [`MAX_PAGE`] keys.
    pub async fn lookup(
        &self,
        s: &Session,
        feed: &str,
        keys: Vec<ItemKey>,
    ) -> Result<Vec<WireEntry>, ReplError> {
        self.require_read(s)?;
        if keys.len() > MAX_KEYS {
            return Err(ReplError::Invalid(format!("at most {MAX_KEYS} keys per lookup")));
        }
        // Each key answered once, however often it is named (a small
        // request must not buy a large answer).
        let mut seen = HashSet::with_capacity(keys.len());
        let keys: Vec<ItemKey> = keys.into_iter().filter(|k| seen.insert(k.clone())).collect();
        let feed = self.session_feed(s, feed).await?;
        Ok(self
            .store()
            .entries_for(feed.id, &keys)
            .await?
            .into_iter()
            .map(WireEntry::from)
            .filter(|e| Self::readable(s, &feed, e))
            .collect())
    }

    /// The size in bytes of each blob held here that `entries` (live ones)
    /// reference, keyed by digest ([`ChangesPage::sizes`]).
    pub async fn sizes_of(&self, entries: &[WireEntry]) -> Result<HashMap<Digest, u64>, ReplError> {
        let mut seen = HashSet::new();
        let digests: Vec<Digest> = entries
            .iter()
            .filter(|e| !e.deleted)
            .flat_map(|e| e.blobs.iter().copied())
            .filter(|d| seen.insert(*d))
            .collect();
        Ok(self.ferry().metadata().blob_sizes(&digests).await?)
    }

    /// Every item and tombstone after `after`, for a full comparison; with
    /// `sizes`, their blobs' sizes too ([`EntriesPage::sizes`]).
    pub async fn entries(
        &self,
        s: &Session,
        feed: &str,
        after: Option<ItemKey>,
        limit: usize,
        sizes: bool,
    ) -> Result<EntriesPage, ReplError> {
        self.require_read(s)?;
        let feed = self.session_feed(s, feed).await?;
        let limit = limit.clamp(1, MAX_PAGE);
        let page = self.store().entries(feed.id, after.as_ref(), limit).await?;
        let next_after = if page.len() == limit {
            page.last().map(|e| e.key.clone())
        } else {
            None
        };
        let entries: Vec<WireEntry> = page
            .into_iter()
            .map(WireEntry::from)
            .filter(|e| Self::readable(s, &feed, e))
            .collect();
        let sizes = if sizes {
            self.sizes_of(&entries).await?
        } else {
            HashMap::new()
        };
        Ok(EntriesPage {
            entries,
            next_after,
            sizes,
        })
    }

    pub async fn feed_digest_for(
        &self,
        s: &Session,
        feed: &str,
        include: &[String],
        exclude: &[String],
    ) -> Result<FeedDigest, ReplError> {
        let feed = self.session_feed(s, feed).await?;
        // The peer's filter narrows the replication's; it cannot widen it.
        let filter = Filter::new(include, exclude)?.and(s.filter.clone());
        self.feed_digest(&feed, &filter, &HashSet::new()).await
    }

    /// The stored stamp (and whether a tombstone) of each of `keys`, in
    /// order, and which are outside the replication's filter. Errors:
    /// more than [`MAX_KEYS`] keys (Invalid, 400).
    pub async fn stamps(&self, s: &Session, feed: &str, keys: Vec<ItemKey>) -> Result<StampList, ReplError> {
        if keys.len() > MAX_KEYS {
            return Err(ReplError::Invalid(format!("at most {MAX_KEYS} keys per request")));
        }
        let feed = self.session_feed(s, feed).await?;
        let found: HashMap<ItemKey, ferry_store::Entry> = self
            .store()
            .entries_for(feed.id, &keys)
            .await?
            .into_iter()
            .map(|e| (e.key.clone(), e))
            .collect();
        let mut outside = Vec::new();
        let stamps = keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                // Outside the replication's filter, nothing is said but
                // that it is outside (a pusher then sends nothing of it).
                if !s.filter.admits(feed.feed_type, k) {
                    outside.push(i as u32);
                    return None;
                }
                found.get(k).map(|e| (e.stamp, e.live.is_none()))
            })
            .collect();
        Ok(StampList { stamps, outside })
    }

    /// Applies entries the peer pushes, if this side's mode pulls them.
    pub async fn apply_pushed(
        &self,
        s: &Session,
        feed: &str,
        entries: Vec<WireEntry>,
    ) -> Result<ApplyResponse, ReplError> {
        let feed = self.session_feed(s, feed).await?;
        let f = s.config.mode.flows;
        if !f.pulls() {
            // Refuse even an empty batch: this side accepts no writes at all.
            let msg = format!(
                "replication {} on this instance is {}: it does not accept content or deletions from the other instance",
                s.record.name,
                s.config.mode.describe()
            );
            self.diag().log(Level::Warn, msg.clone());
            return Err(ReplError::Forbidden(msg));
        }
        if entries.len() > MAX_PAGE {
            return Err(ReplError::Invalid(format!(
                "at most {MAX_PAGE} entries per apply"
            )));
        }
        for e in &entries {
            let allowed = if e.deleted { f.delete_local } else { f.pull_missing };
            if !allowed {
                let what = if e.deleted { "deletions" } else { "content" };
                let msg = format!(
                    "replication {} on this instance is {}: it does not accept {what} from the other instance",
                    s.record.name,
                    s.config.mode.describe()
                );
                self.diag().log(Level::Warn, msg.clone());
                return Err(ReplError::Forbidden(msg));
            }
        }
        // Every blob an entry names was sent by this replication itself, or
        // is already referenced by one of its feeds: a token cannot make a
        // blob of another feed (a private one) appear in its own.
        let ids = self.session_feed_ids(s).await?;
        let mut allowed: HashSet<Digest> = HashSet::new();
        for e in &entries {
            for d in &e.blobs {
                if allowed.contains(d) {
                    continue;
                }
                if !self.received_by(s.record.id, d) && !self.store().blob_referenced(d, &ids).await? {
                    return Err(ReplError::Invalid(format!(
                        "{} needs blob {d}, which was not sent first",
                        e.key
                    )));
                }
                allowed.insert(*d);
            }
        }
        let n = entries.len();
        // An entry outside the replication's filter here is refused alone.
        let inside: Vec<usize> = (0..n)
            .filter(|&i| s.filter.admits(feed.feed_type, &entries[i].key))
            .collect();
        // An entry this side refuses (its stamp too far ahead of this
        // clock, say) is answered as refused; the others are applied.
        let outcomes = self
            .ferry()
            .apply_each(
                &feed,
                inside.iter().map(|&i| entries[i].to_change()).collect(),
                false,
            )
            .await?;
        let mut out: Vec<WireOutcome> = (0..n)
            .map(|_| WireOutcome::Refused {
                reason: format!(
                    "outside replication {}'s include/exclude filter on this instance",
                    s.record.name
                ),
            })
            .collect();
        for (i, o) in inside.into_iter().zip(outcomes) {
            out[i] = WireOutcome::from(o);
        }
        // Versions pushed from elsewhere that lose to a newer one of
        // another instance here: a conflict, told on this side too (the
        // pusher's execution log names each one).
        let lost: Vec<String> = entries
            .iter()
            .zip(&out)
            .filter_map(|(e, o)| match o {
                WireOutcome::Superseded { current } if current.origin != e.stamp.origin => {
                    Some(format!("{} (theirs {}, kept {current})", e.key, e.stamp))
                }
                _ => None,
            })
            .collect();
        if !lost.is_empty() {
            metrics::counter!("ferry_replication_conflicts_total", "replication" => s.record.name.clone())
                .increment(lost.len() as u64);
            self.diag().log(
                Level::Warn,
                format!(
                    "{}: conflict: {} pushed versions in feed {} lost to newer ones written elsewhere, which are kept: {}{}",
                    s.record.name,
                    lost.len(),
                    feed.name,
                    lost.iter().take(3).cloned().collect::<Vec<_>>().join(", "),
                    if lost.len() > 3 { ", …" } else { "" }
                ),
            );
        }
        let applied = out.iter().filter(|o| **o == WireOutcome::Applied).count();
        self.diag().log(
            Level::Debug,
            format!(
                "{}: applied {applied} of {n} pushed changes to feed {}",
                s.record.name, feed.name
            ),
        );
        Ok(ApplyResponse { outcomes: out })
    }

    /// The blobs of `digests` this side lacks, and of those the ones an
    /// upload that broke off left the first bytes of (with how many: the
    /// peer may resume them). Errors: this side does not accept content,
    /// more than [`MAX_DIGESTS`] digests.
    pub async fn missing_blobs(&self, s: &Session, digests: Vec<Digest>) -> Result<DigestList, ReplError> {
        if !s.config.mode.flows.pull_missing {
            return Err(ReplError::Forbidden(format!(
                "replication {} on this instance is {}: it does not accept content",
                s.record.name,
                s.config.mode.describe()
            )));
        }
        if digests.len() > MAX_DIGESTS {
            return Err(ReplError::Invalid(format!(
                "at most {MAX_DIGESTS} digests per request"
            )));
        }
        // Answered within the replication's own feeds (and what it sent):
        // whether a digest exists elsewhere on this instance is not the
        // peer's to learn. A blob stored for another feed is simply sent
        // again, verified, and stored once.
        let ids = self.session_feed_ids(s).await?;
        let mut out = Vec::new();
        // Each digest once (asked twice, it is answered once).
        let mut asked = HashSet::with_capacity(digests.len());
        for d in digests {
            if !asked.insert(d) {
                continue;
            }
            let known = self.received_by(s.record.id, &d) || self.store().blob_referenced(&d, &ids).await?;
            if !(known && self.has_blob(&d).await?) {
                out.push(d);
            }
        }
        let held = self.ferry().blob_store().partial_sizes(&out).await?;
        let partial = out
            .iter()
            .zip(held)
            .filter(|(_, n)| *n > 0)
            .map(|(d, offset)| crate::batch::BlobWant { digest: *d, offset })
            .collect();
        Ok(DigestList {
            digests: out,
            partial,
        })
    }

    /// Receives a blob the peer pushes; verified against its digest.
    pub async fn receive_blob(
        &self,
        s: &Session,
        digest: &Digest,
        body: ByteStream,
    ) -> Result<(), ReplError> {
        if !s.config.mode.flows.pull_missing {
            return Err(ReplError::Forbidden(format!(
                "replication {} on this instance is {}: it does not accept content",
                s.record.name,
                s.config.mode.describe()
            )));
        }
        let _slot = self.transfer_slot(s)?;
        let staged: StagedBlob = self.ferry().stage(body, Some(*digest)).await?;
        self.ferry().commit_blob(staged).await?;
        self.note_received(s.record.id, *digest);
        Ok(())
    }

    /// Receives many blobs the peer pushes in one request (`POST
    /// blobs/upload`, frames as in [`crate::batch`]): each appended to what
    /// an earlier, broken upload left of it (a frame from byte 0 starts it
    /// over; one from the offset `blobs/missing` gave resumes it; bytes
    /// this side holds already are skipped), verified against its digest
    /// as a whole and committed. A blob whose bytes are wrong is answered
    /// as refused, one that starts past what this side holds is answered
    /// with where to resume; the others are kept, and flushed before the
    /// answer. Errors: this side does not accept content, a malformed
    /// frame, more than [`crate::batch::MAX_BATCH`] blobs, or a body cut
    /// short (what arrived is kept: the next upload resumes it).
    pub async fn receive_batch(
        &self,
        s: &Session,
        body: ByteStream,
    ) -> Result<crate::batch::UploadResponse, ReplError> {
        use crate::batch::{FrameReader, MAX_BATCH, UploadResult, channel_stream};
        if !s.config.mode.flows.pull_missing {
            return Err(ReplError::Forbidden(format!(
                "replication {} on this instance is {}: it does not accept content",
                s.record.name,
                s.config.mode.describe()
            )));
        }
        let _slot = self.transfer_slot(s)?;
        let store = self.ferry().blob_store().clone();
        let limit = self.ferry().config().max_upload_bytes;
        let mut reader = FrameReader::new(body);
        let mut results = Vec::new();
        let mut stored = Vec::new();
        let broke =
            |d: &Digest, e: std::io::Error| ReplError::Invalid(format!("blob upload broke inside {d}: {e}"));
        let outcome = async {
            loop {
                let header = reader
                    .header()
                    .await
                    .map_err(|e| ReplError::Invalid(format!("blob upload: {e}")))?;
                let Some(h) = header else { break };
                if results.len() >= MAX_BATCH {
                    return Err(ReplError::Invalid(format!("at most {MAX_BATCH} blobs per upload")));
                }
                if h.status.is_some() {
                    return Err(ReplError::Invalid(format!(
                        "blob upload: the frame of {} carries a status; an upload carries blobs",
                        h.digest
                    )));
                }
                let d = h.digest;
                // The claim on the blob's partial file is held by another
                // upload of it for as long as that one sends (a slow peer,
                // or a hostile one trickling): past [`CLAIM_WAIT`] this one
                // does not wait on. Sent whole, its bytes are staged on
                // their own and verified as ever; sent from an offset, it is
                // asked to send the blob whole.
                let (tx, rx) = tokio::sync::mpsc::channel(8);
                let (pumped, staged, held) = match tokio::time::timeout(CLAIM_WAIT, store.begin_transfer(&d)).await {
                    Ok(transfer) => {
                        let mut transfer = transfer?;
                        if h.offset == 0 && transfer.offset() > 0 {
                            // Sent whole: what an earlier upload left goes.
                            store.discard_transfer(transfer).await?;
                            transfer = store.begin_transfer(&d).await?;
                        }
                        let held = transfer.offset();
                        if h.offset > held {
                            drop(transfer);
                            reader.skip(h.length).await.map_err(|e| broke(&d, e))?;
                            results.push(UploadResult::resend(d, held));
                            continue;
                        }
                        // Bytes held already (another upload moved on since
                        // `blobs/missing` answered) are read past.
                        let overlap = (held - h.offset).min(h.length);
                        reader.skip(overlap).await.map_err(|e| broke(&d, e))?;
                        let (pumped, staged) = tokio::join!(
                            reader.pump(h.length - overlap, tx),
                            store.continue_transfer(transfer, channel_stream(rx), limit)
                        );
                        (pumped, staged.map_err(CoreError::from), held)
                    }
                    Err(_) if h.offset == 0 => {
                        let (pumped, staged) = tokio::join!(
                            reader.pump(h.length, tx),
                            self.ferry().stage(channel_stream(rx), Some(d))
                        );
                        (pumped, staged, 0)
                    }
                    Err(_) => {
                        reader.skip(h.length).await.map_err(|e| broke(&d, e))?;
                        results.push(UploadResult::resend(d, 0));
                        continue;
                    }
                };
                // A cut keeps what arrived in the partial file.
                pumped.map_err(|e| broke(&d, e))?;
                match staged {
                    Ok(staged) => {
                        self.ferry().commit_blob(staged).await?;
                        self.note_received(s.record.id, d);
                        stored.push(d);
                        results.push(UploadResult {
                            digest: d,
                            error: None,
                            resume_from: None,
                        });
                    }
                    // The bytes kept of a broken upload did not verify with
                    // the rest (they were discarded): not the sender's
                    // fault; it sends the blob again from its first byte.
                    Err(CoreError::Invalid(m)) if held > 0 => {
                        tracing::warn!(target: "replication", blob = %d, held, "a resumed upload did not verify ({m}); asking for it again from its first byte");
                        results.push(UploadResult::resend(d, 0));
                    }
                    Err(CoreError::Invalid(m)) | Err(CoreError::TooLarge(m)) => {
                        results.push(UploadResult {
                            digest: d,
                            error: Some(m),
                            resume_from: None,
                        });
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        }
        .await;
        // What was committed is flushed before it is reported kept (the
        // peer applies items that need it next), also when the body broke.
        store.sync(&stored).await.map_err(CoreError::from)?;
        outcome?;
        Ok(crate::batch::UploadResponse { results })
    }

    /// The ids of the session's feeds that exist here.
    /// Whether an item the replication's filter admits references
    /// `digest` (always, without a filter): a filtered replication's peer
    /// reads no blob only items outside the filter hold.
    async fn blob_admitted(&self, s: &Session, digest: &Digest) -> Result<bool, ReplError> {
        if s.filter.is_everything() {
            return Ok(true);
        }
        for p in &s.config.feeds {
            let Ok(feed) = self.ferry().feed(&p.local).await else {
                continue;
            };
            for key in self.store().blob_keys(digest, feed.id, 1000).await? {
                if s.filter.admits(feed.feed_type, &key) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    async fn session_feed_ids(&self, s: &Session) -> Result<Vec<ferry_store::FeedId>, ReplError> {
        let mut ids = Vec::new();
        for p in &s.config.feeds {
            if let Ok(f) = self.ferry().feed(&p.local).await {
                ids.push(f.id);
            }
        }
        Ok(ids)
    }

    /// May the peer read this blob? If this side sends content, when an item
    /// of one of the replication's feeds references it. Otherwise only to
    /// read back what the peer itself wrote (the repair of its damaged
    /// copy, `ferry fsck --repair`): a live item of those feeds whose stamp
    /// has the origin the peer handshook as must reference it.
    pub async fn may_read_blob(&self, s: &Session, digest: &Digest) -> Result<(), ReplError> {
        let ids = self.session_feed_ids(s).await?;
        if s.config.mode.flows.push_missing {
            if !self.store().blob_referenced(digest, &ids).await? || !self.blob_admitted(s, digest).await? {
                return Err(ReplError::NotFound(format!(
                    "blob {digest} is not in the feeds of this replication"
                )));
            }
            return Ok(());
        }
        let peer = self
            .0
            .peers
            .lock()
            .ok()
            .and_then(|p| p.get(&s.record.id).copied());
        let refuse = || {
            ReplError::Forbidden(format!(
                "replication {} on this instance is {}: it does not send content, except blobs of items the other instance wrote itself (after a handshake)",
                s.record.name,
                s.config.mode.describe()
            ))
        };
        let Some(peer) = peer else {
            return Err(refuse());
        };
        if !self.store().blob_written_by(digest, &ids, peer).await? {
            return Err(refuse());
        }
        Ok(())
    }
}

/// Counts one more request of sync token `token` in `counts` unless it
/// already holds `max`: true when counted.
fn count_in(counts: &std::sync::Mutex<HashMap<String, usize>>, token: &str, max: usize) -> bool {
    let mut m = lock(counts);
    let n = m.entry(token.to_owned()).or_insert(0);
    if *n >= max {
        return false;
    }
    *n += 1;
    true
}

/// Counts out one request of `token` that [`count_in`] counted.
fn count_out(counts: &std::sync::Mutex<HashMap<String, usize>>, token: &str) {
    let mut m = lock(counts);
    if let Some(n) = m.get_mut(token) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            m.remove(token);
        }
    }
}

/// A long poll counted against its sync token's share while it waits
/// ([`ferry_core::Config::long_polls_per_token`]); freed when dropped.
pub(crate) struct WaitSlot {
    r: Replicator,
    token: String,
}

impl Drop for WaitSlot {
    fn drop(&mut self) {
        count_out(&self.r.0.waiting, &self.token);
    }
}

/// A blob transfer counted against its sync token's share while it runs
/// ([`ferry_core::Config::transfers_per_token`]): a blob or a batch being
/// sent (held by its body until the connection has taken it or given
/// up), an upload being received. Freed when dropped.
pub struct TransferSlot {
    r: Replicator,
    token: String,
}

impl Drop for TransferSlot {
    fn drop(&mut self) {
        count_out(&self.r.0.transferring, &self.token);
    }
}

impl Replicator {
    /// A slot for one more long poll of sync token `token`. Errors:
    /// TooMany (429) when the token already holds its share waiting.
    fn wait_slot(&self, token: &str) -> Result<WaitSlot, ReplError> {
        let max = self.ferry().config().long_polls_per_token.max(1);
        if !count_in(&self.0.waiting, token, max) {
            return Err(ReplError::Core(CoreError::TooMany(format!(
                "sync token {token} already holds {max} long polls waiting (a quarter of this instance's connections); ask again later"
            ))));
        }
        Ok(WaitSlot {
            r: self.clone(),
            token: token.to_owned(),
        })
    }

    /// A slot for one more blob transfer of session `s`'s sync token, to
    /// hold while the transfer runs. Errors: TooMany (429) when the token
    /// already holds its share ([`ferry_core::Config::transfers_per_token`]).
    pub fn transfer_slot(&self, s: &Session) -> Result<TransferSlot, ReplError> {
        let max = self.ferry().config().transfers_per_token.max(1);
        let token = &s.token_id;
        if !count_in(&self.0.transferring, token, max) {
            let msg = format!(
                "sync token {token} already holds {max} blob transfers in progress, its share of this instance's connections; ask again when one has ended"
            );
            // Said in the replication log too (once a minute at most).
            self.diag()
                .log(Level::Warn, format!("replication {}: {msg}", s.record.name));
            return Err(ReplError::Core(CoreError::TooMany(msg)));
        }
        Ok(TransferSlot {
            r: self.clone(),
            token: token.clone(),
        })
    }
}

impl Replicator {
    /// Serves a batch of blobs (`POST blobs/batch`, see [`crate::batch`]):
    /// each blob the peer may read (as [`Replicator::may_read_blob`]
    /// decides) as a frame of its bytes from the requested offset, the
    /// others as frames saying why not. The frames are produced as the
    /// peer reads them; a blob found damaged while it is being sent cuts
    /// the body. Errors: more than [`crate::batch::MAX_BATCH`] blobs, or a
    /// blob named twice (Invalid, 400).
    pub async fn blob_batch(
        &self,
        s: &Session,
        req: crate::batch::BatchRequest,
    ) -> Result<ByteStream, ReplError> {
        use crate::batch::MAX_BATCH;
        if req.blobs.len() > MAX_BATCH {
            return Err(ReplError::Invalid(format!("at most {MAX_BATCH} blobs per batch")));
        }
        // Each blob once: a batch naming one many times would have it sent
        // as many times (a small request for a large answer).
        let mut named = std::collections::HashSet::with_capacity(req.blobs.len());
        if let Some(w) = req.blobs.iter().find(|w| !named.insert(w.digest)) {
            return Err(ReplError::Invalid(format!(
                "blob {} is named more than once in this batch; name each blob once",
                w.digest
            )));
        }
        let slot = self.transfer_slot(s)?;
        let mut plan: Vec<Planned> = Vec::with_capacity(req.blobs.len());
        // A side that sends content: one lookup for the whole batch.
        let referenced = if s.config.mode.flows.push_missing {
            let ids = self.session_feed_ids(s).await?;
            let digests: Vec<Digest> = req.blobs.iter().map(|w| w.digest).collect();
            Some(self.store().blobs_referenced(&digests, &ids).await?)
        } else {
            None
        };
        for w in req.blobs {
            let allowed = match &referenced {
                Some(set) if set.contains(&w.digest) && self.blob_admitted(s, &w.digest).await? => Ok(()),
                Some(_) => Err(ReplError::NotFound(format!(
                    "blob {} is not in the feeds of this replication",
                    w.digest
                ))),
                None => self.may_read_blob(s, &w.digest).await,
            };
            let refusal = match allowed {
                Ok(()) => None,
                Err(ReplError::Forbidden(m)) => Some((403, m)),
                Err(ReplError::NotFound(m)) => Some((404, m)),
                Err(e) => return Err(e),
            };
            plan.push((w, refusal));
        }
        // Sizes of everything that may be sent, in one pass.
        let readable: Vec<Digest> = plan
            .iter()
            .filter(|(_, r)| r.is_none())
            .map(|(w, _)| w.digest)
            .collect();
        let sizes: HashMap<Digest, Option<u64>> = readable
            .iter()
            .copied()
            .zip(self.ferry().blob_store().sizes(&readable).await?)
            .collect();
        let ferry = self.ferry().clone();
        // One chunk waits between the producer and the connection: a peer
        // that stops reading pins that, the chunk read ahead and hyper's
        // (with 8 waiting it pinned about 10 MiB per batch).
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(1);
        let tally = Arc::new(BatchTally::default());
        let producer = tally.clone();
        let blobs = plan.len();
        tokio::spawn(async move {
            let sent = send_batch(&ferry, &tx, plan, &sizes, &producer).await;
            *lock(&producer.outcome) = Some(sent);
        });
        // What became of the batch is known once the connection has taken
        // its bytes, or given up on them: see `Delivered`.
        let delivered = Delivered {
            body: crate::batch::channel_stream(rx),
            tally,
            taken: 0,
            ended: false,
            r: self.clone(),
            session: s.clone(),
            blobs,
            _slot: slot,
        };
        Ok(self.guard_body(s, delivered, Flow::Sent))
    }
}

/// One planned blob of a batch: what was asked, and why it is refused
/// (status and reason) when it is.
type Planned = (crate::batch::BlobWant, Option<(u16, String)>);

/// What a batch's producer and the stream the connection reads share:
/// where each blob frame sent whole ends in the body (bytes), and how the
/// producer ended.
#[derive(Default)]
struct BatchTally {
    ends: std::sync::Mutex<Vec<u64>>,
    outcome: std::sync::Mutex<Option<Result<(), crate::batch::FrameCut>>>,
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A batch's body as the connection takes it. When it is dropped — read
/// to its end, or given up (the peer gone, the body cut by
/// `Replicator::guard_body` or by a blob that failed) — the peer's
/// transfer is noted ([`Replicator::peer_transfer`]): sent whole, or cut
/// after how many blobs the connection had taken whole, and why.
struct Delivered {
    body: ByteStream,
    tally: Arc<BatchTally>,
    /// Bytes the connection took so far.
    taken: u64,
    /// The body gave its end (every byte taken).
    ended: bool,
    r: Replicator,
    session: Session,
    /// Blobs the batch was asked for.
    blobs: usize,
    /// Its place among the token's transfers, held until the connection
    /// has taken the body or given up on it.
    _slot: TransferSlot,
}

impl futures::Stream for Delivered {
    type Item = std::io::Result<bytes::Bytes>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let next = self.body.as_mut().poll_next(cx);
        match &next {
            std::task::Poll::Ready(Some(Ok(c))) => self.taken += c.len() as u64,
            std::task::Poll::Ready(None) => self.ended = true,
            _ => {}
        }
        next
    }
}

impl Drop for Delivered {
    fn drop(&mut self) {
        let outcome = lock(&self.tally.outcome).clone();
        let taken = self.taken;
        let whole = lock(&self.tally.ends).iter().filter(|end| **end <= taken).count();
        if self.ended && matches!(outcome, Some(Ok(()))) {
            // Every blob asked for sent whole (none refused) settles a cut
            // noted before.
            if whole == self.blobs {
                self.r.peer_transfer(&self.session, None);
            }
            return;
        }
        let (r, session, blobs) = (self.r.clone(), self.session.clone(), self.blobs);
        let note = async move {
            let why = match outcome {
                Some(Err(crate::batch::FrameCut::Failed(why))) => why,
                // Cut here by `guard_body` (its token revoked, what it may
                // read changed), or by the other side.
                _ => match r.session_still_holds(&session).await {
                    Err(e) => e.to_string(),
                    Ok(()) => {
                        "the other instance stopped reading (it closed the connection or gave up)".to_owned()
                    }
                },
            };
            r.peer_transfer(
                &session,
                Some(format!(
                    "a blob batch was cut after {whole} of its {blobs} blobs were sent whole: {why}"
                )),
            );
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(note);
        }
    }
}

/// Sends the frames of a batch's `plan` into `tx` in order, noting in
/// `tally` where each blob frame sent whole ends (refusals are not
/// counted). Errors: why the stream ended early.
async fn send_batch(
    ferry: &ferry_core::Ferry,
    tx: &crate::batch::FrameSender,
    plan: Vec<Planned>,
    sizes: &HashMap<Digest, Option<u64>>,
    tally: &BatchTally,
) -> Result<(), crate::batch::FrameCut> {
    let mut at = 0u64;
    let mut frame = |(blob, bytes): (bool, u64)| {
        at += bytes;
        if blob {
            lock(&tally.ends).push(at);
        }
    };
    use crate::batch::{FrameCut, FrameHeader};
    let small = |(w, refusal): &Planned| {
        refusal.is_none()
            && w.offset == 0
            && sizes
                .get(&w.digest)
                .copied()
                .flatten()
                .is_some_and(|n| n <= SMALL_BLOB)
    };
    // A refusal: its header only, no blob sent.
    let refuse = |h: FrameHeader| async move {
        let head = h.encode();
        let n = head.len() as u64;
        tx.send(Ok(head))
            .await
            .map(|()| (false, n))
            .map_err(|_| FrameCut::ReaderGone)
    };
    let mut plan = plan.into_iter().peekable();
    while let Some(first) = plan.next() {
        // A run of small whole blobs is read in one pass of the store (one
        // hop to a blocking thread for all of them).
        if small(&first) {
            let mut run = vec![first.0];
            let mut bytes = 0;
            while run.len() < SMALL_RUN && bytes < SMALL_RUN_BYTES {
                match plan.next_if(|p| small(p)) {
                    Some((w, _)) => {
                        bytes += sizes.get(&w.digest).copied().flatten().unwrap_or(0);
                        run.push(w);
                    }
                    None => break,
                }
            }
            let digests: Vec<Digest> = run.iter().map(|w| w.digest).collect();
            let read = match ferry.read_small_blobs_for_peer(&digests, SMALL_BLOB).await {
                Ok(r) => r,
                Err(e) => {
                    let why = e.to_string();
                    let _ = tx.send(Err(std::io::Error::other(why.clone()))).await;
                    return Err(FrameCut::Failed(why));
                }
            };
            for (w, r) in run.into_iter().zip(read) {
                frame(match r {
                    Ok(Some(bytes)) => {
                        let head = FrameHeader::blob(w.digest, 0, bytes.len() as u64);
                        let body: ByteStream = Box::pin(futures::stream::once(async move { Ok(bytes) }));
                        (true, crate::batch::send_frame(tx, &head, body).await?)
                    }
                    // Grown past a small read since it was sized: streamed
                    // as a large one.
                    Ok(None) => send_blob(ferry, tx, &w, sizes).await?,
                    Err(e) => refuse(FrameHeader::refusal(w.digest, frame_status(&e), e.to_string())).await?,
                });
            }
            continue;
        }
        let (w, refusal) = first;
        frame(match refusal {
            Some((status, error)) => refuse(FrameHeader::refusal(w.digest, status, error)).await?,
            None => send_blob(ferry, tx, &w, sizes).await?,
        });
    }
    Ok(())
}

/// Blobs of at most this many bytes, asked for whole, are read in runs
/// ([`Replicator::blob_batch`]): up to [`SMALL_RUN`] of them or
/// [`SMALL_RUN_BYTES`] at a time.
const SMALL_BLOB: u64 = 1 << 20;
const SMALL_RUN: usize = 64;
const SMALL_RUN_BYTES: u64 = 2 << 20;

/// Sends blob `w` as one frame of a batch (from its offset), or the frame
/// that says why it cannot be (not stored, its offset past its end,
/// unreadable): whether it was the former, and the frame's size in bytes.
/// Errors: the receiving side is gone or the body broke.
async fn send_blob(
    ferry: &ferry_core::Ferry,
    tx: &crate::batch::FrameSender,
    w: &crate::batch::BlobWant,
    sizes: &HashMap<Digest, Option<u64>>,
) -> Result<(bool, u64), crate::batch::FrameCut> {
    use crate::batch::FrameHeader;
    let refuse = |status: u16, error: String| FrameHeader::refusal(w.digest, status, error);
    let header = match sizes.get(&w.digest).copied().flatten() {
        Some(size) if w.offset <= size => {
            match ferry.read_blob_for_peer(&w.digest, Some(w.offset..size)).await {
                Ok(body) => {
                    let head = FrameHeader::blob(w.digest, w.offset, size - w.offset);
                    return crate::batch::send_frame(tx, &head, body.stream)
                        .await
                        .map(|n| (true, n));
                }
                Err(e) => refuse(frame_status(&e), e.to_string()),
            }
        }
        Some(size) => refuse(
            416,
            format!(
                "offset {} is past the end of blob {} ({size} bytes)",
                w.offset, w.digest
            ),
        ),
        None => refuse(404, format!("blob {} is not stored here", w.digest)),
    };
    let head = header.encode();
    let n = head.len() as u64;
    tx.send(Ok(head))
        .await
        .map(|()| (false, n))
        .map_err(|_| crate::batch::FrameCut::ReaderGone)
}

/// The status a frame gives for a blob that cannot be read.
fn frame_status(e: &ferry_core::CoreError) -> u16 {
    match e {
        ferry_core::CoreError::NotFound(_) => 404,
        _ => 500,
    }
}

/// A fingerprint of `config`'s include/exclude filter: the first 16 hex
/// digits of the SHA-256 of the patterns as JSON (see
/// [`HandshakeResponse::filter`]).
pub(crate) fn filter_fingerprint(config: &ReplicationConfig) -> String {
    patterns_fingerprint(&config.include, &config.exclude)
}

/// [`filter_fingerprint`] of these patterns (of none: no filter at all).
pub(crate) fn patterns_fingerprint(include: &[String], exclude: &[String]) -> String {
    let patterns = serde_json::json!([include, exclude]).to_string();
    ferry_types::Digest::of(patterns.as_bytes()).hex()[..16].to_owned()
}
