//! Configuration as code: feeds and replications declared in the TOML
//! configuration file (`[[feeds]]`, `[[replications]]`), applied at start,
//! on SIGHUP, and by `ferry config apply FILE` (`PUT /api/v1/config`);
//! `ferry config export` (`GET /api/v1/config`) gives the running
//! configuration back in the same shape, without secrets.
//!
//! Applying is all or nothing as far as anything can be checked first:
//! every declaration is validated, every declared feed's type compared,
//! and every outgoing replication that is new or changes how it reaches
//! the other end is checked by a handshake *before* anything changes; a
//! failure is an error naming the declaration's line in the file and
//! leaves the running configuration as it was. Then feeds are created
//! (never changed or deleted), replications created or updated in place
//! (cursors, tokens and history kept), declared tokens added, and, when the
//! file says `prune = true`, replications it does not declare deleted.

use std::collections::HashSet;

use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::routing::get;
use axum::{Json, Router};
use ferry_core::{CoreError, Ferry};
use ferry_replication::config::{CreateRequest, DeleteGuard};
use ferry_replication::declare::{AcceptedToken, Change, TokenState};
use ferry_replication::{ReplError, Replicator};
use ferry_types::{FeedName, FeedType};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::AppState;
use crate::access::Admin;
use crate::error::ApiError;

/// The declarations of one configuration file (its `prune`, `[[feeds]]`
/// and `[[replications]]`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Declarations {
    /// Delete replications the file does not declare (feeds are never
    /// deleted by a file).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prune: bool,
    #[serde(default)]
    pub feeds: Vec<FeedDecl>,
    #[serde(default)]
    pub replications: Vec<ReplicationDecl>,
}

/// `[[feeds]]`: created at apply when missing.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FeedDecl {
    pub name: String,
    #[serde(rename = "type")]
    pub feed_type: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub private: bool,
    /// The declaration's line in its file (set by the reader, for errors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
}

/// `[[replications]]`: every option of `replication create`. Outgoing when
/// `outgoing` (the other instance's URL) is set (else incoming; `incoming =
/// true` may say so), with its sync token given
/// as `token`, `token_file` (relative to the file) or `token_env` (a
/// variable's name); the reader of the file resolves the last two into
/// `token` before applying. An incoming replication may list the tokens it
/// accepts (`accept_tokens`), so a hub can be provisioned ahead of time.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReplicationDecl {
    pub name: String,
    /// `LOCAL[=REMOTE]` pairs.
    pub feeds: Vec<String>,
    /// The other instance connects here (say it, or leave `outgoing` out).
    /// `Some(true)` when said; `Some(false)` needs `outgoing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incoming: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outgoing: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    pub mode: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pull_missing: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub push_missing: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delete_local: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delete_remote: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// Seconds between executions (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub carry_downloads: bool,
    /// Bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline_max_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_guard: Option<DeleteGuard>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accept_tokens: Vec<TokenDecl>,
    /// Outgoing: other instances asked first for blobs, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blob_sources: Vec<BlobSourceDecl>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
}

/// `blob_sources = [{ url = "...", token_file = "..." }]` of an outgoing
/// replication: another instance to take blobs from, with a sync token of
/// an incoming replication there, given like the replication's own token
/// (`token`, `token_file` or `token_env`; the reader of the file resolves
/// the last two into `token`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BlobSourceDecl {
    pub url: String,
    /// The line of its `url` in the file (set by the reader, for errors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
}

/// A sync token an incoming replication accepts: its id (the 16 hex digits
/// after `fst_`) and the sha256 (hex) of its secret part (the 64 hex digits
/// after the second `_`). `ferry config token` prints a new pair.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenDecl {
    pub id: String,
    pub sha256: String,
}

/// What an apply did, per declaration.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Applied {
    /// Feed name → created or unchanged.
    pub feeds: Vec<(String, Change)>,
    /// Replication name → created, updated or unchanged.
    pub replications: Vec<(String, Change)>,
    /// Tokens added to incoming replications.
    pub tokens_added: usize,
    /// Declared accepted tokens that are revoked here (`REPLICATION:
    /// TOKEN-ID`): they stay revoked; the file should drop them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tokens_revoked: Vec<String>,
    /// Replications deleted by `prune`.
    pub pruned: Vec<String>,
    /// Accepted tokens revoked by `prune` (`REPLICATION: TOKEN-ID`): an
    /// incoming replication that declares `accept_tokens` keeps only
    /// those (without `prune`, each other one is a warning).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens_pruned: Vec<String>,
    /// What `replication create` would have warned about (`NAME: why`):
    /// the other end not reachable yet, a feed two replications only pull
    /// into.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// A message of the replication engine, which names the CLI's flags, in
/// the configuration file's words: `--pull-missing` is `pull_missing`,
/// `--feed` is `feeds`, `--token` is `token_file` (or `token_env`).
fn file_words(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(at) = rest.find("--") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let len = after
            .find(|c: char| !(c.is_ascii_lowercase() || c == '-'))
            .unwrap_or(after.len());
        let flag = &after[..len];
        match flag {
            "" => out.push_str("--"),
            "feed" => out.push_str("feeds"),
            "token" => out.push_str("token_file (or token_env)"),
            f => out.push_str(&f.replace('-', "_")),
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

/// A declaration that cannot be applied: where it is and why.
#[derive(Debug, thiserror::Error)]
#[error("{}{what}: {message}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
pub struct DeclareError {
    pub line: Option<u32>,
    /// "feed NAME" or "replication NAME".
    pub what: String,
    pub message: String,
}

impl DeclareError {
    fn new(line: Option<u32>, what: String, e: impl std::fmt::Display) -> Self {
        DeclareError {
            line,
            what,
            message: file_words(&e.to_string()),
        }
    }

    /// Says what a refusal before any change left: nothing, or the feeds
    /// created for the file that could not be removed again.
    fn undone(mut self, kept: &[FeedName]) -> Self {
        if kept.is_empty() {
            self.message.push_str("; nothing was changed");
        } else {
            let names: Vec<String> = kept.iter().map(ToString::to_string).collect();
            self.message.push_str(&format!(
                "; nothing else was changed, but feed {} created for the file was kept (something was stored in it meanwhile, or it could not be removed)",
                names.join(", ")
            ));
        }
        self
    }

    /// Says what was applied before this error stopped the apply.
    fn after(mut self, applied: &Applied) -> Self {
        let mut done: Vec<String> = applied
            .feeds
            .iter()
            .filter(|(_, c)| *c != Change::Unchanged)
            .map(|(n, c)| format!("feed {n} {c:?}").to_lowercase())
            .collect();
        done.extend(
            applied
                .replications
                .iter()
                .filter(|(_, c)| *c != Change::Unchanged)
                .map(|(n, c)| format!("replication {n} {c:?}").to_lowercase()),
        );
        done.extend(
            applied
                .pruned
                .iter()
                .map(|n| format!("replication {n} deleted (prune)")),
        );
        if done.is_empty() {
            self.message.push_str("; nothing was changed before it");
        } else {
            self.message
                .push_str(&format!("; applied before it: {}", done.join(", ")));
        }
        self
    }
}

impl ReplicationDecl {
    /// The line an error `message` about this declaration points at: the
    /// line of the blob source it names (by URL, by host, or as "blob
    /// source N"), else the declaration's own.
    fn line_of(&self, message: &str) -> Option<u32> {
        let named = self.blob_sources.iter().enumerate().find(|(i, b)| {
            let host = b
                .url
                .split("://")
                .nth(1)
                .and_then(|rest| rest.split(['/', '?', '#']).next())
                .map(|authority| authority.rsplit('@').next().unwrap_or(authority))
                .map(|hostport| hostport.split(':').next().unwrap_or(hostport));
            message.contains("blob source")
                && (message.contains(b.url.as_str())
                    || message.contains(&format!("blob source {} ", i + 1))
                    || host.is_some_and(|h| !h.is_empty() && message.contains(&format!("blob source {h}:"))))
        });
        named.and_then(|(_, b)| b.line).or(self.line)
    }

    /// The replication's configuration; the token must be resolved.
    fn request(&self) -> Result<CreateRequest, ReplError> {
        if self.token_file.is_some() || self.token_env.is_some() {
            return Err(ReplError::Invalid(
                "token_file and token_env are read by the program that reads the file; send token".into(),
            ));
        }
        match (self.incoming, &self.outgoing) {
            (Some(true), Some(_)) => {
                return Err(ReplError::Invalid(
                    "incoming = true and outgoing = URL exclude each other".into(),
                ));
            }
            (Some(false), None) => {
                return Err(ReplError::Invalid(
                    "incoming = false needs outgoing = URL (the instance this one connects to); \
                     an incoming replication says incoming = true, or leaves both out"
                        .into(),
                ));
            }
            _ => {}
        }
        let mut blob_sources = Vec::new();
        for b in &self.blob_sources {
            if b.token_file.is_some() || b.token_env.is_some() {
                return Err(ReplError::Invalid(
                    "a blob source's token_file and token_env are read by the program that reads the file; send token".into(),
                ));
            }
            let Some(token) = b.token.clone() else {
                return Err(ReplError::Invalid(format!(
                    "blob source {} needs token, token_file or token_env",
                    b.url
                )));
            };
            blob_sources.push(ferry_replication::config::BlobSource {
                url: b.url.clone(),
                token,
            });
        }
        if self.outgoing.is_some() && !self.accept_tokens.is_empty() {
            return Err(ReplError::Invalid(
                "accept_tokens goes with incoming replications (no outgoing URL)".into(),
            ));
        }
        Ok(CreateRequest {
            name: self.name.clone(),
            feeds: self.feeds.clone(),
            outgoing: self.outgoing.clone(),
            token: self.token.clone(),
            mode: self.mode.clone(),
            pull_missing: self.pull_missing,
            push_missing: self.push_missing,
            delete_local: self.delete_local,
            delete_remote: self.delete_remote,
            include: self.include.clone(),
            exclude: self.exclude.clone(),
            interval: self.interval,
            carry_downloads: self.carry_downloads,
            delete_guard: self.delete_guard,
            bandwidth_limit: self.bandwidth_limit,
            inline_max_bytes: self.inline_max_bytes,
            blob_sources,
        })
    }

    fn tokens(&self) -> Result<Vec<AcceptedToken>, ReplError> {
        self.accept_tokens
            .iter()
            .map(|t| {
                let mut hash = [0u8; 32];
                hex::decode_to_slice(&t.sha256, &mut hash).map_err(|_| {
                    ReplError::Invalid(format!(
                        "accept_tokens: sha256 of token {} must be 64 hex digits",
                        t.id
                    ))
                })?;
                Ok(AcceptedToken {
                    id: t.id.clone(),
                    secret_sha256: hash,
                })
            })
            .collect()
    }
}

/// Applies `decls` (see the module docs for the order and what is
/// checked first).
///
/// Errors: [`DeclareError`] naming the first declaration that cannot be
/// applied; when it comes from a check, nothing has changed.
pub async fn apply(
    ferry: &Ferry,
    replicator: &Replicator,
    decls: &Declarations,
) -> Result<Applied, DeclareError> {
    // One apply at a time on this node: two identical files applied at
    // once would both find a feed missing and the second fail to create it.
    static APPLYING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one = APPLYING.lock().await;
    let mut applied = Applied::default();
    // 1. Feeds: names, types, duplicates; which are missing.
    let mut seen = HashSet::new();
    let mut missing = Vec::new();
    for f in &decls.feeds {
        let what = format!("feed {}", f.name);
        let err = |e: &dyn std::fmt::Display| DeclareError::new(f.line, what.clone(), e).undone(&[]);
        let name = FeedName::new(f.name.clone()).map_err(|e| err(&e))?;
        let ty: FeedType = f.feed_type.parse().map_err(|e| err(&e))?;
        if !seen.insert(name.clone()) {
            return Err(err(&"declared twice"));
        }
        match ferry.feed(&name).await {
            Ok(existing) if existing.feed_type != ty => {
                return Err(err(&format_args!("exists as {}, not {ty}", existing.feed_type)));
            }
            Ok(existing) if existing.private != f.private => {
                let (is, says) = if existing.private {
                    ("private", "public")
                } else {
                    ("public", "private")
                };
                return Err(err(&format_args!(
                    "exists as a {is} feed; the file says {says} (a feed's visibility is not changed in place)"
                )));
            }
            Ok(_) => applied.feeds.push((f.name.clone(), Change::Unchanged)),
            Err(CoreError::NotFound(_)) => missing.push((name, ty, f)),
            Err(e) => return Err(err(&e)),
        }
    }
    // 2. Replications: each configuration on its own.
    let mut names = HashSet::new();
    let mut token_ids = HashSet::new();
    let mut planned = Vec::new();
    for r in &decls.replications {
        let what = format!("replication {}", r.name);
        let err = |e: &dyn std::fmt::Display| DeclareError::new(r.line, what.clone(), e).undone(&[]);
        if !names.insert(r.name.clone()) {
            return Err(err(&"declared twice"));
        }
        let cfg = r
            .request()
            .and_then(CreateRequest::into_config)
            .map_err(|e| DeclareError::new(r.line_of(&e.to_string()), what.clone(), e).undone(&[]))?;
        // A feed neither declared nor here is refused now, before any feed
        // is created for the file.
        for p in &cfg.feeds {
            if !seen.contains(&p.local) {
                match ferry.feed(&p.local).await {
                    Ok(_) => {}
                    Err(CoreError::NotFound(_)) => {
                        return Err(err(&format_args!(
                            "feed {} is neither declared in the file nor on this instance",
                            p.local
                        )));
                    }
                    Err(e) => return Err(err(&e)),
                }
            }
        }
        let tokens = r.tokens().map_err(|e| err(&e))?;
        if let Some(t) = tokens.iter().find(|t| !token_ids.insert(t.id.clone())) {
            return Err(err(&format_args!("token {} is declared twice", t.id)));
        }
        planned.push((r, cfg, tokens));
    }
    // 3. Missing feeds are created (and removed again if a check fails:
    //    they are empty), so that replications can be checked against them.
    let mut created: Vec<FeedName> = Vec::new();
    for (name, ty, f) in &missing {
        if let Err(e) = ferry.create_feed(name, *ty, f.private).await {
            let kept = undo_feeds(ferry, &created).await;
            return Err(DeclareError::new(f.line, format!("feed {name}"), e).undone(&kept));
        }
        match f.line {
            Some(line) => tracing::info!(feed = %name, line, "created declared feed"),
            None => tracing::info!(feed = %name, "created declared feed"),
        }
        created.push(name.clone());
    }
    // 4. Every replication checked (the other end included) before any
    //    changes: all at once, so ends that are slow to answer cost one
    //    probe's bound together, not one each; the first refusal in the
    //    file's order is the one reported.
    let checks = futures::future::join_all(planned.iter().map(|(r, cfg, tokens)| async move {
        replicator.check_declaration(&r.name, cfg).await?;
        for t in tokens {
            replicator.check_token(&r.name, t).await?;
        }
        Ok::<_, ferry_replication::ReplError>(())
    }))
    .await;
    for ((r, _, _), check) in planned.iter().zip(checks) {
        if let Err(e) = check {
            let kept = undo_feeds(ferry, &created).await;
            let line = r.line_of(&e.to_string());
            return Err(DeclareError::new(line, format!("replication {}", r.name), e).undone(&kept));
        }
    }
    let prune: Vec<String> = if decls.prune {
        match replicator.overview().await {
            Ok(all) => all
                .into_iter()
                .map(|o| o.name)
                .filter(|n| !names.contains(n))
                .collect(),
            Err(e) => {
                let kept = undo_feeds(ferry, &created).await;
                return Err(DeclareError::new(None, "prune".into(), e).undone(&kept));
            }
        }
    } else {
        Vec::new()
    };
    // `prune = true` in a file that declares no replication at all would
    // delete every one (a file cut short, the wrong file): refused, as
    // `kubectl apply --prune` wants a selector. Deleting them all is
    // `ferry replication delete NAME` for each.
    if decls.replications.is_empty() && !prune.is_empty() {
        let kept = undo_feeds(ferry, &created).await;
        return Err(DeclareError::new(
            None,
            "prune".into(),
            format!(
                "prune = true in a file that declares no [[replications]] would delete every replication here ({}); declare the ones to keep, or delete them with `ferry replication delete NAME`",
                prune.join(", ")
            ),
        )
        .undone(&kept));
    }
    for name in &created {
        applied.feeds.push((name.to_string(), Change::Created));
    }
    // 5. Changes.
    for (r, cfg, tokens) in &planned {
        let what = format!("replication {}", r.name);
        let (change, warning) = replicator
            .declare(&r.name, cfg)
            .await
            .map_err(|e| DeclareError::new(r.line, what.clone(), e).after(&applied))?;
        if let Some(w) = warning {
            applied
                .warnings
                .push(format!("replication {}: {}", r.name, file_words(&w)));
        }
        for t in tokens {
            match replicator
                .accept_token(&r.name, t)
                .await
                .map_err(|e| DeclareError::new(r.line, what.clone(), e).after(&applied))?
            {
                TokenState::New => applied.tokens_added += 1,
                TokenState::Revoked => applied.tokens_revoked.push(format!("{}: {}", r.name, t.id)),
                TokenState::Held => {}
            }
        }
        if change != Change::Unchanged {
            tracing::info!(replication = %r.name, change = ?change, "applied declared replication");
        }
        applied.replications.push((r.name.clone(), change));
    }
    for name in prune {
        replicator
            .delete(&name)
            .await
            .map_err(|e| DeclareError::new(None, format!("replication {name}"), e).after(&applied))?;
        tracing::info!(replication = %name, "deleted undeclared replication (prune)");
        applied.pruned.push(name);
    }
    // The tokens of an incoming replication that declares `accept_tokens`
    // are those; one without the key keeps its tokens untouched.
    for r in decls
        .replications
        .iter()
        .filter(|r| r.outgoing.is_none() && !r.accept_tokens.is_empty())
    {
        let ids: Vec<String> = r.accept_tokens.iter().map(|t| t.id.clone()).collect();
        let (revoked, left) = replicator
            .settle_undeclared_tokens(&r.name, &ids, decls.prune)
            .await
            .map_err(|e| DeclareError::new(None, format!("replication {}", r.name), e).after(&applied))?;
        applied
            .tokens_pruned
            .extend(revoked.into_iter().map(|id| format!("{}: {id}", r.name)));
        applied.warnings.extend(left.into_iter().map(|id| {
            format!(
                "{}: accepted token {id} is not declared in accept_tokens; left alone without prune",
                r.name
            )
        }));
    }
    Ok(applied)
}

/// Removes the feeds a refused apply created, each only while nothing was
/// ever written to it: a feed a client stored into while the other ends
/// were checked keeps what it was given (and is logged as kept). Returns
/// the feeds kept.
async fn undo_feeds(ferry: &Ferry, created: &[FeedName]) -> Vec<FeedName> {
    let mut kept = Vec::new();
    for name in created {
        let written = match ferry.feed(name).await {
            Ok(feed) => ferry
                .metadata()
                .last_seq(feed.id)
                .await
                .map(|seq| seq > 0)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match written {
            Ok(false) => {}
            Ok(true) => {
                tracing::warn!(feed = %name, "kept the declared feed although the apply was refused: content was stored in it meanwhile");
                kept.push(name.clone());
                continue;
            }
            Err(e) => {
                tracing::warn!(feed = %name, error = %e, "kept the declared feed although the apply was refused: cannot tell whether it holds anything");
                kept.push(name.clone());
                continue;
            }
        }
        match ferry.delete_feed(name).await {
            Ok(_) => tracing::info!(feed = %name, "removed the declared feed again: the apply was refused"),
            Err(e) => {
                tracing::warn!(feed = %name, error = %e, "could not remove a feed created by a failed apply");
                kept.push(name.clone());
            }
        }
    }
    kept
}

/// The running configuration as declarations: every feed, every
/// replication with its options; outgoing tokens are replaced by
/// `token_env = "FERRY_TOKEN_<NAME>"` (a secret never leaves), incoming
/// replications list the tokens they accept by id and secret hash.
pub async fn export(ferry: &Ferry, replicator: &Replicator) -> Result<Declarations, CoreError> {
    let mut decls = Declarations::default();
    // Names that map to one variable ("x-y" and "x.y") get one each: the
    // export applied back must give each replication its own token.
    let mut taken = std::collections::HashSet::new();
    for f in ferry.feeds().await? {
        decls.feeds.push(FeedDecl {
            name: f.name.to_string(),
            feed_type: f.feed_type.to_string(),
            private: f.private,
            line: None,
        });
    }
    for o in replicator.overview().await? {
        let c = &o.config;
        let f = c.mode.flows;
        let custom = c.mode.name == ferry_replication::config::ModeName::Custom;
        let mut r = ReplicationDecl {
            name: o.name.clone(),
            feeds: c
                .feeds
                .iter()
                .map(|p| {
                    if p.local == p.remote {
                        p.local.to_string()
                    } else {
                        format!("{}={}", p.local, p.remote)
                    }
                })
                .collect(),
            mode: c.mode.name.as_str().into(),
            pull_missing: custom && f.pull_missing,
            push_missing: custom && f.push_missing,
            delete_local: custom && f.delete_local,
            delete_remote: custom && f.delete_remote,
            include: c.include.clone(),
            exclude: c.exclude.clone(),
            interval: Some(c.interval_secs),
            carry_downloads: c.carry_downloads,
            bandwidth_limit: c.bandwidth_limit,
            inline_max_bytes: (c.inline_max_bytes != ferry_replication::config::default_inline_max())
                .then_some(c.inline_max_bytes),
            delete_guard: (c.delete_guard != DeleteGuard::default()).then_some(c.delete_guard),
            ..Default::default()
        };
        match &c.communication {
            ferry_replication::config::Communication::Outgoing { url, .. } => {
                r.outgoing = Some(url.clone());
                let base = unique_env(token_env_name(&o.name), &mut taken);
                r.blob_sources = c
                    .blob_sources
                    .iter()
                    .enumerate()
                    .map(|(i, b)| BlobSourceDecl {
                        url: b.url.clone(),
                        token_env: Some(unique_env(format!("{base}_SOURCE_{}", i + 1), &mut taken)),
                        ..Default::default()
                    })
                    .collect();
                r.token_env = Some(base);
            }
            ferry_replication::config::Communication::Incoming => {
                r.incoming = Some(true);
                r.accept_tokens = replicator
                    .accepted_tokens(&o.name)
                    .await?
                    .into_iter()
                    .map(|t| TokenDecl {
                        id: t.id,
                        sha256: hex::encode(t.secret_sha256),
                    })
                    .collect();
            }
        }
        decls.replications.push(r);
    }
    Ok(decls)
}

/// `name`, or the first of `name_2`, `name_3`, … not in `taken`; added
/// to `taken`.
fn unique_env(name: String, taken: &mut std::collections::HashSet<String>) -> String {
    let mut candidate = name.clone();
    let mut n = 1;
    while taken.contains(&candidate) {
        n += 1;
        candidate = format!("{name}_{n}");
    }
    taken.insert(candidate.clone());
    candidate
}

/// The variable an exported outgoing replication takes its token from:
/// `FERRY_TOKEN_` and the name in capitals, other characters as `_`.
pub fn token_env_name(replication: &str) -> String {
    let tail: String = replication
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("FERRY_TOKEN_{tail}")
}

/// The most a `PUT /api/v1/config` body may be, as every management API
/// body (`mgmt`): past it, 413 before more is read.
const MAX_CONFIG_BODY: usize = 1 << 20;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/config", get(get_config).put(put_config))
        .layer(crate::edge::BodyCap {
            limit: MAX_CONFIG_BODY,
        })
}

async fn get_config(State(st): State<AppState>, _: Admin) -> Result<Json<Value>, ApiError> {
    let decls = export(&st.ferry, &st.replicator).await.map_err(ApiError::json)?;
    Ok(Json(json!(decls)))
}

/// `PUT /api/v1/config`: 200 with what changed, or 400 naming the
/// declaration (and its line, when the client sent lines).
async fn put_config(
    State(st): State<AppState>,
    _: Admin,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let decls: Declarations = crate::error::object_body(body).map_err(ApiError::json)?;
    // Applied to its end (or undone) even if the client goes away while
    // the other ends are checked: a dropped request must not leave half
    // of a file applied.
    let (ferry, replicator) = (st.ferry.clone(), st.replicator.clone());
    let applied = tokio::spawn(async move { apply(&ferry, &replicator, &decls).await })
        .await
        .map_err(|e| ApiError::json(CoreError::Internal(format!("applying the configuration: {e}"))))?
        .map_err(|e| ApiError::json(CoreError::invalid(e.to_string())))?;
    Ok(Json(json!(applied)))
}
