//! Replications declared as code (a configuration file applied at start,
//! on SIGHUP or by `ferry config apply`): what declaring a configuration
//! under a name would change, checked without changing anything, and then
//! doing it. The file format and the all-or-nothing apply across feeds and
//! replications live in the server crate (`ferry_server::declare`); this
//! module only knows one replication at a time.

use std::sync::Arc;

use ferry_store::ReplicationRecord;
use ferry_types::Digest;
use serde::Serialize;

use crate::batch::BlobWant;
use crate::client::{NOT_FERRY, one_line_whole};
use crate::config::{BlobSource, Communication, ReplicationConfig};
use crate::engine::{Progress, Run};
use crate::{ReplError, Replicator, token};

/// What declaring a replication does to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Created,
    Updated,
    Unchanged,
}

/// A sync token an incoming replication accepts, declared ahead of time
/// by its public id (16 hex digits) and the sha256 of its secret part
/// (`fst_<id>_<secret>`, see [`crate::token`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedToken {
    pub id: String,
    pub secret_sha256: [u8; 32],
}

/// A declared accepted token as this instance holds it
/// ([`Replicator::check_token`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    /// Not held yet: accepting adds it.
    New,
    /// Held and valid.
    Held,
    /// Held and revoked: it stays revoked.
    Revoked,
}

impl Replicator {
    /// What [`Replicator::declare`] would do with `cfg` under `name`,
    /// changing nothing. The local feeds must exist. An outgoing
    /// replication that is new, or whose URL, token, mode or feeds change,
    /// is checked against the other end by a handshake: a refusal (wrong or
    /// revoked token, mode mismatch, feed type mismatch, the same instance)
    /// is an error; an end that cannot be reached is not (the scheduler
    /// keeps trying, as after `replication create`).
    ///
    /// Errors: [`ReplError::Invalid`] for a bad name or configuration, a
    /// missing feed or a change of direction (incoming ↔ outgoing: delete
    /// the replication first); the handshake's refusals.
    pub async fn check_declaration(&self, name: &str, cfg: &ReplicationConfig) -> Result<Change, ReplError> {
        self.check_new_config(name, cfg, " and is not declared").await?;
        let old = match self.store().replication(name).await? {
            Some(rec) => Some(Self::parse(&rec)?),
            None => None,
        };
        let change = match &old {
            None => Change::Created,
            Some(old) if old == cfg => return Ok(Change::Unchanged),
            Some(old) if old.is_outgoing() != cfg.is_outgoing() => {
                let was = if old.is_outgoing() { "outgoing" } else { "incoming" };
                return Err(ReplError::Invalid(format!(
                    "replication {name} exists as {was}; a declaration cannot change its direction \
                     (delete it first: ferry replication delete {name})"
                )));
            }
            Some(_) => Change::Updated,
        };
        let reconnects = old.as_ref().is_none_or(|old| {
            old.communication != cfg.communication || old.mode != cfg.mode || old.feeds != cfg.feeds
        });
        if cfg.is_outgoing() && reconnects {
            self.probe_other_end(&unsaved(name), cfg).await?;
        }
        let sources_changed = old
            .as_ref()
            .is_none_or(|old| old.blob_sources != cfg.blob_sources);
        if sources_changed {
            // Unreachable sources are warned about by `declare` (through
            // `create`) or left to the log for an update.
            self.probe_sources(name, &cfg.blob_sources).await?;
        }
        Ok(change)
    }

    /// What `create` and a declaration check of a configuration before
    /// anything is stored: the name, the configuration itself, and that
    /// each local feed exists (`missing` ends the message for one that
    /// does not).
    pub(crate) async fn check_new_config(
        &self,
        name: &str,
        cfg: &ReplicationConfig,
        missing: &str,
    ) -> Result<(), ReplError> {
        check_name(name)?;
        cfg.validate()?;
        if let Communication::Outgoing { url, .. } = &cfg.communication {
            check_no_user_info("the outgoing URL", url)?;
        }
        for (i, src) in cfg.blob_sources.iter().enumerate() {
            check_no_user_info(&format!("blob source {}", i + 1), &src.url)?;
        }
        for p in &cfg.feeds {
            self.ferry().feed(&p.local).await.map_err(|_| {
                ReplError::Invalid(format!(
                    "feed {} does not exist on this instance{missing}",
                    p.local
                ))
            })?;
        }
        Ok(())
    }

    /// Creates replication `name` with `cfg`, or replaces the configuration
    /// of the existing one in place (its cursors, tokens and history stay;
    /// a changed filter restarts its cursors, as `update` does; an
    /// execution in progress ends first). Call
    /// [`Replicator::check_declaration`] first: this checks the other end
    /// only where `create`/`update` would.
    ///
    /// Returns what changed, and a warning as `create` gives one (the
    /// other end not reachable yet, a feed another replication only
    /// pulls into too).
    ///
    /// Errors: as [`Replicator::create`]; a change of direction.
    pub async fn declare(
        &self,
        name: &str,
        cfg: &ReplicationConfig,
    ) -> Result<(Change, Option<String>), ReplError> {
        let Some(rec) = self.store().replication(name).await? else {
            let (_, warning) = self.create(name, cfg.clone()).await?;
            return Ok((Change::Created, warning));
        };
        let old = Self::parse(&rec)?;
        if &old == cfg {
            return Ok((Change::Unchanged, None));
        }
        if old.is_outgoing() != cfg.is_outgoing() {
            return Err(ReplError::Invalid(format!(
                "replication {name} cannot change its direction"
            )));
        }
        let reconnect =
            old.communication != cfg.communication || old.mode != cfg.mode || old.feeds != cfg.feeds;
        self.replace_config(&rec, &old, cfg, reconnect).await?;
        let warning = if cfg.is_outgoing() && old.feeds != cfg.feeds {
            self.also_filled_by(name, cfg).await?
        } else {
            None
        };
        Ok((Change::Updated, warning))
    }

    /// Whether incoming replication `name` (which may not exist yet) can
    /// accept token `t`, changing nothing: [`TokenState::New`] when it
    /// would be added, [`TokenState::Held`] when it is there already,
    /// [`TokenState::Revoked`] when it was revoked here (it stays revoked:
    /// revoking is the operator's word).
    ///
    /// Errors: [`ReplError::Invalid`] for a malformed id, an id another
    /// replication holds, or one accepted (or revoked) with another secret.
    pub async fn check_token(&self, name: &str, t: &AcceptedToken) -> Result<TokenState, ReplError> {
        check_token_id(&t.id)?;
        let own = self.store().replication(name).await?.map(|r| r.id);
        match self.store().sync_token(&t.id).await? {
            Some(existing) if Some(existing.replication_id) != own => Err(ReplError::Invalid(format!(
                "token {} belongs to another replication",
                t.id
            ))),
            Some(existing) if existing.revoked && existing.hash != t.secret_sha256 => {
                Err(ReplError::Invalid(format!(
                    "token {} was revoked here (with another secret): a revoked token's id is not used again; generate a new token (`ferry config token`)",
                    t.id
                )))
            }
            Some(existing) if existing.hash != t.secret_sha256 => Err(ReplError::Invalid(format!(
                "token {} is already accepted with another secret",
                t.id
            ))),
            Some(existing) if existing.revoked => Ok(TokenState::Revoked),
            Some(_) => Ok(TokenState::Held),
            None => Ok(TokenState::New),
        }
    }

    /// Adds token `t` to incoming replication `name` (see
    /// [`Replicator::check_token`]); returns what it was before
    /// ([`TokenState::New`]: added now).
    ///
    /// Errors: as `check_token`; [`ReplError::Invalid`] for an outgoing
    /// replication.
    pub async fn accept_token(&self, name: &str, t: &AcceptedToken) -> Result<TokenState, ReplError> {
        let (rec, cfg) = self.record(name).await?;
        if cfg.communication != Communication::Incoming {
            return Err(ReplError::Invalid(format!(
                "replication {name} is outgoing: only incoming replications accept tokens"
            )));
        }
        let state = self.check_token(name, t).await?;
        if state == TokenState::New {
            self.store()
                .add_sync_token(rec.id, &t.id, t.secret_sha256)
                .await?;
        }
        Ok(state)
    }

    /// The tokens incoming replication `name` accepts (not revoked), for
    /// exporting the configuration: ids and secret hashes, never secrets.
    pub async fn accepted_tokens(&self, name: &str) -> Result<Vec<AcceptedToken>, ReplError> {
        let (rec, _) = self.record(name).await?;
        Ok(self
            .store()
            .sync_tokens(rec.id)
            .await?
            .into_iter()
            .filter(|t| !t.revoked)
            .map(|t| AcceptedToken {
                id: t.id,
                secret_sha256: t.hash,
            })
            .collect())
    }

    /// The tokens incoming replication `name` accepts (not revoked) whose
    /// ids `declared` (its declared `accept_tokens`) does not list: with
    /// `prune` each is revoked (as `replication token revoke` does, its
    /// sessions end), else each is left alone. Returns the ids revoked and
    /// the ids left alone (the caller reports both).
    ///
    /// Errors: the replication is missing or outgoing; the store's.
    pub async fn settle_undeclared_tokens(
        &self,
        name: &str,
        declared: &[String],
        prune: bool,
    ) -> Result<(Vec<String>, Vec<String>), ReplError> {
        let (mut revoked, mut left) = (Vec::new(), Vec::new());
        for t in self.accepted_tokens(name).await? {
            if declared.contains(&t.id) {
                continue;
            }
            if prune {
                self.revoke_token(name, &t.id).await?;
                revoked.push(t.id);
            } else {
                left.push(t.id);
            }
        }
        Ok((revoked, left))
    }

    /// Handshakes with the other end of outgoing configuration `cfg`
    /// (nothing is stored). A refusal is an error, and so is an end that
    /// answered but not as a Ferry instance (a status below 500 other than
    /// the protocol's, or an answer that is not its JSON: a wrong URL, a
    /// web server, an S3 endpoint); an end that cannot be reached, or
    /// answers 5xx for now, is logged, and not an error (it may not be up
    /// yet).
    pub(crate) async fn probe_other_end(
        &self,
        rec: &ReplicationRecord,
        cfg: &ReplicationConfig,
    ) -> Result<Option<String>, ReplError> {
        // The check of a declaration just waited for this very
        // configuration's end in vain: its creation right after does not
        // wait again. An answer, accepting or refusing, is never reused
        // (a token revoked there since must be refused).
        let key = probe_key(&rec.name, cfg);
        if let Some(warning) = recently_unanswered(&key) {
            return Ok(Some(warning));
        }
        let outcome = self.handshake_probe(rec, cfg).await;
        if let Ok(Some(warning)) = &outcome {
            keep_unanswered(key, warning);
        }
        outcome
    }

    /// [`Replicator::probe_other_end`] itself: one handshake, given up
    /// after [`PROBE_WAIT`].
    async fn handshake_probe(
        &self,
        rec: &ReplicationRecord,
        cfg: &ReplicationConfig,
    ) -> Result<Option<String>, ReplError> {
        let mut run = Run::new(self, rec, cfg, Arc::new(Progress::default()))?;
        let answer = match tokio::time::timeout(PROBE_WAIT, run.handshake_whole()).await {
            Ok(answer) => answer,
            Err(_) => Err(ReplError::Transport(format!(
                "the other instance did not answer within {} s",
                PROBE_WAIT.as_secs()
            ))),
        };
        match answer {
            Ok(_) => Ok(None),
            Err(e @ (ReplError::Refused(_) | ReplError::Unauthorized(_) | ReplError::Forbidden(_))) => Err(e),
            // Something answered, but not as Ferry does: a status of its
            // own below 500, 501/505 (never Ferry's), or any status whose
            // body is not Ferry's JSON error (a web server, a proxy's page).
            Err(ReplError::Remote { status, message })
                if status < 500 || status == 501 || status == 505 || message.starts_with(NOT_FERRY) =>
            {
                let url = match &cfg.communication {
                    Communication::Outgoing { url, .. } => url.as_str(),
                    Communication::Incoming => "the other end",
                };
                Err(ReplError::Refused(format!(
                    "{url} answered HTTP {status} to the replication handshake ({}): \
                     not a Ferry instance at this URL",
                    one_line_whole(&message)
                )))
            }
            // An https:// URL whose address answers plain HTTP: it never
            // will answer TLS; the URL is wrong.
            Err(ReplError::Transport(m)) if m.contains(crate::client::PLAIN_HTTP) => {
                Err(ReplError::Refused(one_line_whole(&m)))
            }
            Err(e) => {
                let error = one_line_whole(&e.to_string());
                tracing::warn!(replication = %rec.name, %error, "other instance not reachable yet; will retry");
                Ok(Some(unreachable_warning(&error)))
            }
        }
    }
}

impl Replicator {
    /// Asks each blob source in `sources` for one blob no feed holds, as a
    /// run would ask it (`POST blobs/batch` with the source's token), so
    /// that a source that can never serve is refused when it is named
    /// rather than found out at each run. Refused (an error naming the
    /// source): a token it does not accept (401), a replication there that
    /// sends no content (403, per blob or whole), an instance without
    /// batched transfers. A source that cannot be reached, or does not
    /// answer within [`SOURCE_PROBE_TIMEOUT`], is not an error (a site
    /// cache may be down for a while); it is logged, and runs leave it out
    /// while it stays so. Returns a warning naming such sources.
    pub(crate) async fn probe_sources(
        &self,
        name: &str,
        sources: &[BlobSource],
    ) -> Result<Option<String>, ReplError> {
        let mut unreachable = Vec::new();
        for src in sources {
            let remote = self
                .remote(&src.url, &src.token)
                .with_stall_timeout(SOURCE_PROBE_TIMEOUT);
            let refusal = |why: String| {
                ReplError::Invalid(format!(
                    "blob source {} cannot serve replication {name}: {why}",
                    src.url
                ))
            };
            let want = vec![BlobWant {
                digest: Digest::of(b"ferry: blob source probe"),
                offset: 0,
            }];
            let mut frames = match remote.fetch_batch(want).await {
                Ok(frames) => frames,
                Err(ReplError::Unauthorized(m)) => {
                    return Err(refusal(format!("it does not accept the token ({m})")));
                }
                Err(ReplError::Forbidden(m)) => return Err(refusal(format!("it refuses the token ({m})"))),
                // This very instance (its own URL, or a copy of its data
                // directory answering there).
                Err(ReplError::Refused(m)) => return Err(refusal(m)),
                // Something answers there, but not as a Ferry instance's
                // base URL would (no batched transfers): refused. A server
                // error other than 501 may be a proxy in front of a cache
                // that is down for a while.
                Err(ReplError::Remote { status, message })
                    if ((400..500).contains(&status) && status != 408 && status != 429) || status == 501 =>
                {
                    return Err(refusal(format!(
                        "it answered HTTP {status} to a batched blob request ({}): not a Ferry instance offering batched transfers at this base URL",
                        one_line_whole(&message)
                    )));
                }
                Err(ReplError::Transport(m)) if m.contains(crate::client::PLAIN_HTTP) => {
                    return Err(refusal(one_line_whole(&m)));
                }
                Err(e) => {
                    let error = one_line_whole(&e.to_string());
                    tracing::warn!(replication = name, source = %src.url, %error, "blob source not reachable yet; runs leave it out while it stays so");
                    unreachable.push(format!(
                        "blob source {} could not be reached yet ({error})",
                        src.url
                    ));
                    continue;
                }
            };
            match frames.header().await {
                Ok(Some(h)) if h.status == Some(403) => {
                    return Err(refusal(format!(
                        "its replication for this token sends no content ({})",
                        h.error.unwrap_or_default()
                    )));
                }
                Ok(_) => {}
                Err(e) => {
                    let error = one_line_whole(&e.to_string());
                    tracing::warn!(replication = name, source = %src.url, %error, "blob source did not answer in full; runs leave it out while it stays so");
                    unreachable.push(format!(
                        "blob source {} did not answer in full ({error})",
                        src.url
                    ));
                }
            }
        }
        Ok((!unreachable.is_empty()).then(|| {
            format!(
                "{}; runs take those blobs from the other instance while it stays so",
                unreachable.join("; ")
            )
        }))
    }
}

/// The longest a handshake probe of [`Replicator::probe_other_end`] waits
/// for the other end: past it, the end counts as not reachable yet (a
/// warning, never an error).
pub const PROBE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long an end that did not answer a probe counts as not answering
/// for the next probe of the same configuration under the same name (a
/// declaration's check, then its creation, wait for it once).
pub const PROBED_FOR: std::time::Duration = std::time::Duration::from_secs(30);

/// The warnings of ends that did not answer a probe, by probe key, with
/// when.
type Probed = std::collections::HashMap<String, (std::time::Instant, String)>;

fn probed() -> &'static std::sync::Mutex<Probed> {
    static PROBED: std::sync::OnceLock<std::sync::Mutex<Probed>> = std::sync::OnceLock::new();
    PROBED.get_or_init(Default::default)
}

fn probe_key(name: &str, cfg: &ReplicationConfig) -> String {
    format!("{name}\n{}", serde_json::to_string(cfg).unwrap_or_default())
}

/// The warning of a probe of `key` that found its end not answering less
/// than [`PROBED_FOR`] ago.
fn recently_unanswered(key: &str) -> Option<String> {
    let mut map = probed().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    map.retain(|_, (at, _)| at.elapsed() < PROBED_FOR);
    map.get(key).map(|(_, warning)| warning.clone())
}

/// Keeps the warning of a probe whose end did not answer (its wait is
/// what costs, and it is never a verdict).
fn keep_unanswered(key: String, warning: &str) {
    let mut map = probed().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    map.insert(key, (std::time::Instant::now(), warning.to_string()));
}

fn unreachable_warning(error: &str) -> String {
    format!(
        "the other instance could not be reached yet ({error}); the replication is stored and retries every interval"
    )
}

/// A URL with user info (`http://user:pw@host`): refused, the sync token
/// goes in token_file/token_env (`what` names the URL's role).
fn check_no_user_info(what: &str, url: &str) -> Result<(), ReplError> {
    let authority = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default();
    if authority.contains('@') {
        return Err(ReplError::Invalid(format!(
            "{what} must not carry a user name or password (user:password@ in the URL): \
             Ferry instances authenticate with a sync token, which goes in --token"
        )));
    }
    Ok(())
}

/// How long a blob source may take to answer the probe of
/// [`Replicator::probe_sources`].
pub(crate) const SOURCE_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A record for a configuration not stored (yet): what a handshake needs
/// to name the replication.
pub(crate) fn unsaved(name: &str) -> ReplicationRecord {
    ReplicationRecord {
        id: 0,
        name: name.to_string(),
        config: serde_json::Value::Null,
        created_at: 0,
    }
}

/// Replication names: 1 to 100 letters, digits, `-`, `_` or `.`.
pub(crate) fn check_name(name: &str) -> Result<(), ReplError> {
    if name.is_empty()
        || name.len() > 100
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(ReplError::Invalid(format!(
            "replication name {:?} must be 1 to 100 letters, digits, '-', '_' or '.'",
            ferry_types::shortened(name, 120)
        )));
    }
    Ok(())
}

/// A token id as [`token::generate`] makes them: 16 lowercase hex digits.
fn check_token_id(id: &str) -> Result<(), ReplError> {
    let probe = format!("fst_{id}_{}", "0".repeat(64));
    if token::split(&probe).is_none_or(|(i, _)| i != id)
        || !id.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    {
        return Err(ReplError::Invalid(format!(
            "token id {id:?} must be 16 lowercase hex digits (the part after fst_)"
        )));
    }
    Ok(())
}
