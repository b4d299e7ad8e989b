//! How a replication is configured on one instance.

use ferry_types::FeedName;
use serde::{Deserialize, Serialize};

use crate::ReplError;

/// Which way content and deletions move, from this instance's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flows {
    /// Copy items the other side has and this one lacks (or holds older).
    pub pull_missing: bool,
    /// Copy items this side has to the other.
    pub push_missing: bool,
    /// Delete here what was deleted there.
    pub delete_local: bool,
    /// Delete there what was deleted here.
    pub delete_remote: bool,
}

impl Flows {
    /// What the other end must be configured with for the two to agree.
    pub fn mirror_image(self) -> Flows {
        Flows {
            pull_missing: self.push_missing,
            push_missing: self.pull_missing,
            delete_local: self.delete_remote,
            delete_remote: self.delete_local,
        }
    }
    pub fn pulls(self) -> bool {
        self.pull_missing || self.delete_local
    }
    pub fn pushes(self) -> bool {
        self.push_missing || self.delete_remote
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModeName {
    Mirror,
    Pull,
    Push,
    Custom,
}

impl ModeName {
    pub fn parse(s: &str) -> Result<Self, ReplError> {
        match s {
            "mirror" => Ok(ModeName::Mirror),
            "pull" => Ok(ModeName::Pull),
            "push" => Ok(ModeName::Push),
            "custom" => Ok(ModeName::Custom),
            _ => Err(ReplError::Invalid(format!(
                "mode {s:?} is not one of mirror, pull, push, custom"
            ))),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            ModeName::Mirror => "mirror",
            ModeName::Pull => "pull",
            ModeName::Push => "push",
            ModeName::Custom => "custom",
        }
    }
}

/// A replication mode: a name and the flows it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mode {
    pub name: ModeName,
    pub flows: Flows,
}

impl Mode {
    pub fn mirror() -> Self {
        Mode {
            name: ModeName::Mirror,
            flows: Flows {
                pull_missing: true,
                push_missing: true,
                delete_local: true,
                delete_remote: true,
            },
        }
    }
    pub fn pull() -> Self {
        Mode {
            name: ModeName::Pull,
            flows: Flows {
                pull_missing: true,
                push_missing: false,
                delete_local: true,
                delete_remote: false,
            },
        }
    }
    pub fn push() -> Self {
        Mode {
            name: ModeName::Push,
            flows: Flows {
                pull_missing: false,
                push_missing: true,
                delete_local: false,
                delete_remote: true,
            },
        }
    }
    pub fn custom(flows: Flows) -> Result<Self, ReplError> {
        if flows
            == (Flows {
                pull_missing: false,
                push_missing: false,
                delete_local: false,
                delete_remote: false,
            })
        {
            return Err(ReplError::Invalid(
                "a custom mode needs at least one of --pull-missing, --push-missing, --delete-local, --delete-remote".into(),
            ));
        }
        Ok(Mode {
            name: ModeName::Custom,
            flows,
        })
    }

    /// Whether the flows are the ones the name stands for (any flows but
    /// none at all, for custom). A stored or received mode that is not is
    /// not one this protocol knows.
    pub fn is_consistent(&self) -> bool {
        match self.name {
            ModeName::Mirror => self.flows == Mode::mirror().flows,
            ModeName::Pull => self.flows == Mode::pull().flows,
            ModeName::Push => self.flows == Mode::push().flows,
            ModeName::Custom => Mode::custom(self.flows).is_ok(),
        }
    }

    /// Describes the mode in the words of the CLI, for error messages.
    pub fn describe(&self) -> String {
        match self.name {
            ModeName::Custom => {
                let f = self.flows;
                let mut parts = Vec::new();
                if f.pull_missing {
                    parts.push("pull-missing");
                }
                if f.push_missing {
                    parts.push("push-missing");
                }
                if f.delete_local {
                    parts.push("delete-local");
                }
                if f.delete_remote {
                    parts.push("delete-remote");
                }
                format!("custom ({})", parts.join(", "))
            }
            n => n.as_str().to_string(),
        }
    }

    /// The mode the other end must have, described.
    pub fn expected_peer(&self) -> String {
        match self.name {
            ModeName::Mirror => "mirror".into(),
            ModeName::Pull => "push".into(),
            ModeName::Push => "pull".into(),
            ModeName::Custom => Mode {
                name: ModeName::Custom,
                flows: self.flows.mirror_image(),
            }
            .describe(),
        }
    }
}

/// Who opens the connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "direction", rename_all = "lowercase")]
pub enum Communication {
    /// The other instance connects here with a sync token.
    Incoming,
    /// This instance connects to `url` with `token`.
    Outgoing { url: String, token: String },
}

/// Another Ferry instance an outgoing replication may take blobs from
/// (a site cache, a neighbouring spoke), with a sync token of one of its
/// incoming replications that sends content. Metadata never comes from a
/// source, only blobs, each verified against its digest like any transfer;
/// a blob no source has (or a source that fails) comes from the
/// replication's own peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobSource {
    /// The source's base URL (`http://` or `https://`).
    pub url: String,
    /// A sync token (`fst_ID_SECRET`) of an incoming replication there.
    pub token: String,
}

/// Most blob sources one replication may name.
pub const MAX_BLOB_SOURCES: usize = 8;

/// One feed pair: a local feed and the feed of the same type on the other side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedPair {
    pub local: FeedName,
    pub remote: FeedName,
}

impl FeedPair {
    /// Parses `LOCAL[=REMOTE]`.
    pub fn parse(s: &str) -> Result<Self, ReplError> {
        let (l, r) = s.split_once('=').unwrap_or((s, s));
        Ok(FeedPair {
            local: FeedName::new(l).map_err(|e| ReplError::Invalid(e.to_string()))?,
            remote: FeedName::new(r).map_err(|e| ReplError::Invalid(e.to_string()))?,
        })
    }
}

/// When an execution stops before deleting (until an operator confirms).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteGuard {
    /// Stop when deletions exceed this share of the feed's items ...
    pub max_share: f64,
    /// ... and also exceed this many items.
    pub max_items: u64,
}

/// A change to a [`DeleteGuard`] in an update: a field left out stays as
/// it is.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteGuardChange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_share: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_items: Option<u64>,
}

impl Default for DeleteGuard {
    fn default() -> Self {
        Self {
            max_share: 0.10,
            max_items: 100,
        }
    }
}

impl DeleteGuard {
    pub fn trips(&self, deletions: u64, feed_size: u64) -> bool {
        deletions > self.max_items && (deletions as f64) > self.max_share * feed_size as f64
    }
}

/// Everything configured for one replication on this instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicationConfig {
    #[serde(flatten)]
    pub communication: Communication,
    pub mode: Mode,
    pub feeds: Vec<FeedPair>,
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Seconds between scheduled executions (outgoing).
    pub interval_secs: u64,
    /// Carry download counts with items.
    #[serde(default)]
    pub carry_downloads: bool,
    #[serde(default)]
    pub delete_guard: DeleteGuard,
    /// Bytes per second for blob transfers (None: unlimited).
    #[serde(default)]
    pub bandwidth_limit: Option<u64>,
    /// Blobs up to this many bytes travel inline with the entries of a
    /// page (pulling; at most 1 MiB of them per page), saving their round
    /// trip; 0 turns it off.
    #[serde(default = "default_inline_max")]
    pub inline_max_bytes: u64,
    /// Outgoing, pulling: other instances asked first for the blobs a
    /// page needs, in this order ([`BlobSource`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blob_sources: Vec<BlobSource>,
}

/// Longest interval between executions, in seconds (30 days): longer
/// ones are refused, and peers report none longer.
pub const MAX_INTERVAL_SECS: u64 = 30 * 24 * 3600;

/// Lowest bandwidth cap accepted, in bytes per second (1 KiB/s).
pub const MIN_BANDWIDTH: u64 = 1024;

/// Longest URL of another instance accepted (characters).
const MAX_URL: usize = 2048;

/// Default of [`ReplicationConfig::inline_max_bytes`]: 64 KiB.
pub fn default_inline_max() -> u64 {
    64 << 10
}

impl ReplicationConfig {
    pub fn validate(&self) -> Result<(), ReplError> {
        // (Every way in checks it: create, update, a declaration in the
        // configuration file.)
        if !(0.0..=1.0).contains(&self.delete_guard.max_share) {
            return Err(ReplError::Invalid(format!(
                "the delete guard's share must be between 0 and 1 (got {})",
                self.delete_guard.max_share
            )));
        }
        if self.feeds.is_empty() {
            return Err(ReplError::Invalid(
                "a replication needs at least one feed (--feed)".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for p in &self.feeds {
            if !seen.insert(&p.local) {
                return Err(ReplError::Invalid(format!("feed {} appears twice", p.local)));
            }
        }
        if let Communication::Outgoing { url, token } = &self.communication {
            if url.len() > MAX_URL {
                return Err(ReplError::Invalid(format!(
                    "the other instance's URL is {} characters long; at most {MAX_URL} are accepted",
                    url.len()
                )));
            }
            let parsed = reqwest::Url::parse(url).ok().filter(|u| {
                matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty())
            });
            if parsed.is_none() {
                return Err(ReplError::Invalid(format!(
                    "--outgoing {url:?} must be an http:// or https:// URL with a host"
                )));
            }
            if token.is_empty() {
                return Err(ReplError::Invalid("--outgoing needs --token".into()));
            }
            if crate::token::split(token).is_none() {
                return Err(ReplError::Invalid(crate::token::malformed(token)));
            }
        }
        self.validate_blob_sources()?;
        if self.interval_secs == 0 {
            return Err(ReplError::Invalid("--interval must be at least 1 second".into()));
        }
        if self.bandwidth_limit.is_some_and(|b| b < MIN_BANDWIDTH) {
            return Err(ReplError::Invalid(format!(
                "--bandwidth-limit must be 0 (no cap) or at least {MIN_BANDWIDTH} bytes per second"
            )));
        }
        if self.interval_secs > MAX_INTERVAL_SECS {
            return Err(ReplError::Invalid(format!(
                "--interval must be at most {MAX_INTERVAL_SECS} seconds (30 days; got {})",
                self.interval_secs
            )));
        }
        crate::filter::Filter::new(&self.include, &self.exclude)?;
        Ok(())
    }

    fn validate_blob_sources(&self) -> Result<(), ReplError> {
        if self.blob_sources.is_empty() {
            return Ok(());
        }
        let Communication::Outgoing { url: peer, .. } = &self.communication else {
            return Err(ReplError::Invalid(
                "blob sources go with outgoing replications (this side fetches the blobs)".into(),
            ));
        };
        if self.blob_sources.len() > MAX_BLOB_SOURCES {
            return Err(ReplError::Invalid(format!(
                "{} blob sources named; at most {MAX_BLOB_SOURCES} are accepted",
                self.blob_sources.len()
            )));
        }
        let same = |a: &str, b: &str| a.trim_end_matches('/') == b.trim_end_matches('/');
        for (i, s) in self.blob_sources.iter().enumerate() {
            if s.url.len() > MAX_URL {
                return Err(ReplError::Invalid(format!(
                    "blob source {} is {} characters long; at most {MAX_URL} are accepted",
                    i + 1,
                    s.url.len()
                )));
            }
            let parsed = reqwest::Url::parse(&s.url).ok().filter(|u| {
                matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty())
            });
            let Some(parsed) = parsed else {
                return Err(ReplError::Invalid(format!(
                    "blob source {:?} must be an http:// or https:// URL with a host",
                    ferry_types::shortened(&s.url, 200)
                )));
            };
            if !parsed.username().is_empty() || parsed.password().is_some() {
                return Err(ReplError::Invalid(format!(
                    "blob source {}: leave the user and password out of the URL (the sync token authenticates)",
                    parsed.host_str().unwrap_or_default()
                )));
            }
            if parsed.query().is_some() || parsed.fragment().is_some() {
                return Err(ReplError::Invalid(format!(
                    "blob source {:?}: give the instance's base URL, without ? or #",
                    ferry_types::shortened(&s.url, 200)
                )));
            }
            if crate::token::split(&s.token).is_none() {
                return Err(ReplError::Invalid(format!(
                    "blob source {} needs a sync token (fst_...) of an incoming replication there",
                    s.url
                )));
            }
            if same(&s.url, peer) {
                return Err(ReplError::Invalid(format!(
                    "blob source {} is the replication's own peer; name other instances",
                    s.url
                )));
            }
            if self.blob_sources[..i].iter().any(|o| same(&o.url, &s.url)) {
                return Err(ReplError::Invalid(format!(
                    "blob source {} is named twice",
                    s.url
                )));
            }
        }
        Ok(())
    }

    /// The largest blob the other side is asked to carry inline with its
    /// pages: [`Self::inline_max_bytes`], or none when blob sources are
    /// named (small blobs then come from the sources too, sparing the
    /// other side's link).
    pub fn inline_from_peer(&self) -> u64 {
        if self.blob_sources.is_empty() {
            self.inline_max_bytes
        } else {
            0
        }
    }

    /// Whether pages are asked to tell their blobs' sizes
    /// ([`crate::protocol::PageExtras::blob_sizes`]): when blob sources are
    /// named, so a source's frame of another length than the blob is
    /// refused before its bytes are written.
    pub fn sizes_from_peer(&self) -> bool {
        !self.blob_sources.is_empty()
    }

    pub fn is_outgoing(&self) -> bool {
        matches!(self.communication, Communication::Outgoing { .. })
    }

    /// The configuration to show: an outgoing token keeps its id (to tell
    /// which of the other side's tokens it is) and loses its secret.
    pub fn redacted(mut self) -> Self {
        let redact = |token: &mut String| {
            *token = match crate::token::split(token) {
                Some((id, _)) => format!("fst_{id}_…"),
                None => "…".into(),
            };
        };
        if let Communication::Outgoing { token, .. } = &mut self.communication {
            redact(token);
        }
        for s in &mut self.blob_sources {
            redact(&mut s.token);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_their_mirror_images() {
        assert_eq!(Mode::pull().flows.mirror_image(), Mode::push().flows);
        assert_eq!(Mode::mirror().flows.mirror_image(), Mode::mirror().flows);
        let c = Mode::custom(Flows {
            pull_missing: true,
            push_missing: false,
            delete_local: false,
            delete_remote: true,
        })
        .unwrap();
        assert_eq!(c.expected_peer(), "custom (push-missing, delete-local)");
        assert!(
            Mode::custom(Flows {
                pull_missing: false,
                push_missing: false,
                delete_local: false,
                delete_remote: false
            })
            .is_err()
        );
    }

    #[test]
    fn feed_pairs_and_guard() {
        let p = FeedPair::parse("local=remote").unwrap();
        assert_eq!((p.local.as_str(), p.remote.as_str()), ("local", "remote"));
        assert_eq!(FeedPair::parse("same").unwrap().remote.as_str(), "same");
        assert!(FeedPair::parse("Bad=x").is_err());
        let g = DeleteGuard::default();
        assert!(!g.trips(100, 200), "100 items is not over 100");
        assert!(!g.trips(150, 10_000), "1.5% is not over 10%");
        assert!(g.trips(150, 1000));
    }
}

/// A request to create a replication, as the CLI and the API send it.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    pub name: String,
    /// `LOCAL[=REMOTE]` pairs.
    pub feeds: Vec<String>,
    /// Outgoing: the other instance's base URL. Absent: incoming.
    #[serde(default)]
    pub outgoing: Option<String>,
    #[serde(default)]
    pub token: Option<String>,
    pub mode: String,
    #[serde(default)]
    pub pull_missing: bool,
    #[serde(default)]
    pub push_missing: bool,
    #[serde(default)]
    pub delete_local: bool,
    #[serde(default)]
    pub delete_remote: bool,
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Seconds between executions; `interval_secs` (as a GET shows it)
    /// is taken too.
    #[serde(default, alias = "interval_secs")]
    pub interval: Option<u64>,
    #[serde(default)]
    pub carry_downloads: bool,
    #[serde(default)]
    pub delete_guard: Option<DeleteGuard>,
    #[serde(default)]
    pub bandwidth_limit: Option<u64>,
    #[serde(default)]
    pub inline_max_bytes: Option<u64>,
    /// Other instances to take blobs from first ([`BlobSource`]).
    #[serde(default)]
    pub blob_sources: Vec<BlobSource>,
}

impl CreateRequest {
    pub fn into_config(self) -> Result<ReplicationConfig, ReplError> {
        let name = ModeName::parse(&self.mode)?;
        let custom_flags = self.pull_missing || self.push_missing || self.delete_local || self.delete_remote;
        let mode = match name {
            ModeName::Custom => Mode::custom(Flows {
                pull_missing: self.pull_missing,
                push_missing: self.push_missing,
                delete_local: self.delete_local,
                delete_remote: self.delete_remote,
            })?,
            _ if custom_flags => {
                return Err(ReplError::Invalid(
                    "--pull-missing, --push-missing, --delete-local and --delete-remote go with --mode custom".into(),
                ));
            }
            ModeName::Mirror => Mode::mirror(),
            ModeName::Pull => Mode::pull(),
            ModeName::Push => Mode::push(),
        };
        let communication = match (self.outgoing, self.token) {
            (Some(url), Some(token)) => Communication::Outgoing { url, token },
            (Some(_), None) => return Err(ReplError::Invalid("--outgoing needs --token".into())),
            (None, Some(_)) => {
                return Err(ReplError::Invalid(
                    "--token goes with --outgoing; incoming replications generate tokens".into(),
                ));
            }
            (None, None) => Communication::Incoming,
        };
        let feeds = self
            .feeds
            .iter()
            .map(|f| FeedPair::parse(f))
            .collect::<Result<Vec<_>, _>>()?;
        let cfg = ReplicationConfig {
            communication,
            mode,
            feeds,
            include: self.include,
            exclude: self.exclude,
            interval_secs: self.interval.unwrap_or(60),
            carry_downloads: self.carry_downloads,
            delete_guard: self.delete_guard.unwrap_or_default(),
            bandwidth_limit: self.bandwidth_limit,
            inline_max_bytes: self.inline_max_bytes.unwrap_or_else(default_inline_max),
            blob_sources: self.blob_sources,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Changes to an existing replication, as the CLI and the API send them.
/// Absent fields stay as they are. The mode, the feed pairs and the
/// direction do not change here: they are part of what the other end agreed
/// to (delete and create the replication again for those).
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct UpdateRequest {
    /// Outgoing: the other instance's new base URL.
    #[serde(default)]
    pub outgoing: Option<String>,
    /// Outgoing: a new sync token from the other instance.
    #[serde(default)]
    pub token: Option<String>,
    /// Replaces the include filters (an empty list: everything).
    #[serde(default)]
    pub include: Option<Vec<String>>,
    /// Replaces the exclude filters.
    #[serde(default)]
    pub exclude: Option<Vec<String>>,
    /// Seconds between executions; `interval_secs` (as a GET shows it)
    /// is taken too.
    #[serde(default, alias = "interval_secs")]
    pub interval: Option<u64>,
    #[serde(default)]
    pub carry_downloads: Option<bool>,
    /// Bytes per second; 0 removes the cap.
    #[serde(default)]
    pub bandwidth_limit: Option<u64>,
    #[serde(default)]
    pub delete_guard: Option<DeleteGuardChange>,
    /// Blobs up to this many bytes travel inline with pages; 0 turns it off.
    #[serde(default)]
    pub inline_max_bytes: Option<u64>,
    /// Replaces the blob sources (an empty list: none). A source given
    /// with an empty token keeps the token stored for its URL.
    #[serde(default)]
    pub blob_sources: Option<Vec<BlobSource>>,
}

impl UpdateRequest {
    /// The configuration after the change, validated.
    pub fn apply_to(self, old: &ReplicationConfig) -> Result<ReplicationConfig, ReplError> {
        let mut cfg = old.clone();
        match &mut cfg.communication {
            Communication::Outgoing { url, token } => {
                if let Some(u) = self.outgoing {
                    *url = u;
                }
                if let Some(t) = self.token {
                    *token = t;
                }
            }
            Communication::Incoming => {
                if self.outgoing.is_some() || self.token.is_some() {
                    return Err(ReplError::Invalid(
                        "this replication is incoming: the other instance holds the URL and the token \
                         (use `ferry replication token` and `revoke` here)"
                            .into(),
                    ));
                }
            }
        }
        if let Some(v) = self.include {
            cfg.include = v;
        }
        if let Some(v) = self.exclude {
            cfg.exclude = v;
        }
        if let Some(v) = self.interval {
            cfg.interval_secs = v;
        }
        if let Some(v) = self.carry_downloads {
            cfg.carry_downloads = v;
        }
        if let Some(v) = self.bandwidth_limit {
            cfg.bandwidth_limit = (v > 0).then_some(v);
        }
        if let Some(v) = self.inline_max_bytes {
            cfg.inline_max_bytes = v;
        }
        if let Some(mut v) = self.blob_sources {
            // A source named again without a token keeps the one stored
            // for its URL (as an update without `token` keeps the
            // outgoing one): a form that never shows stored tokens can
            // send the list back.
            let same = |a: &str, b: &str| a.trim_end_matches('/') == b.trim_end_matches('/');
            for s in v.iter_mut().filter(|s| s.token.is_empty()) {
                if let Some(kept) = old.blob_sources.iter().find(|o| same(&o.url, &s.url)) {
                    s.token = kept.token.clone();
                }
            }
            cfg.blob_sources = v;
        }
        if let Some(g) = self.delete_guard {
            cfg.delete_guard = DeleteGuard {
                max_share: g.max_share.unwrap_or(cfg.delete_guard.max_share),
                max_items: g.max_items.unwrap_or(cfg.delete_guard.max_items),
            };
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Whether the change touches how this instance reaches the other one.
    pub fn changes_connection(&self) -> bool {
        self.outgoing.is_some() || self.token.is_some()
    }
}

#[cfg(test)]
mod update_tests {
    use super::*;

    fn source(url: &str) -> BlobSource {
        BlobSource {
            url: url.into(),
            token: format!("fst_0123456789abcdef_{}", "5e".repeat(32)),
        }
    }

    #[test]
    fn blob_sources_are_checked_and_their_tokens_never_shown() {
        let with = |sources: Vec<BlobSource>| {
            UpdateRequest {
                blob_sources: Some(sources),
                ..Default::default()
            }
            .apply_to(&outgoing())
        };
        let ok = with(vec![source("http://cache:8765"), source("https://neighbour/")]).unwrap();
        assert_eq!(ok.blob_sources.len(), 2);
        let shown = serde_json::to_string(&ok.clone().redacted()).unwrap();
        assert!(
            !shown.contains("5e5e5e") && shown.contains("fst_0123456789abcdef_"),
            "{shown}"
        );
        assert!(
            with(vec![]).unwrap().blob_sources.is_empty(),
            "an empty list removes them"
        );
        let refused = |sources: Vec<BlobSource>| with(sources).unwrap_err().to_string();
        assert!(refused(vec![source("ftp://cache")]).contains("http"));
        for bad in ["http://", "http://12 7.0.0.1:x/%%", "http://127.0.0.1:99999"] {
            assert!(refused(vec![source(bad)]).contains("with a host"), "{bad}");
        }
        assert!(refused(vec![source("http://user:pw@cache")]).contains("password"));
        assert!(refused(vec![source("http://cache/x?y=1")]).contains("without ? or #"));
        assert!(refused(vec![source("http://hub:8765/")]).contains("own peer"));
        assert!(refused(vec![source("http://c"), source("http://c/")]).contains("twice"));
        assert!(refused((0..9).map(|i| source(&format!("http://c{i}"))).collect()).contains("at most 8"));
        let mut no_token = source("http://c");
        no_token.token = "secret".into();
        assert!(refused(vec![no_token]).contains("sync token"));
        let incoming = CreateRequest {
            name: "r".into(),
            feeds: vec!["files".into()],
            mode: "pull".into(),
            blob_sources: vec![source("http://c")],
            ..Default::default()
        }
        .into_config()
        .unwrap_err()
        .to_string();
        assert!(incoming.contains("outgoing"), "{incoming}");
    }

    #[test]
    fn a_source_named_again_without_its_token_keeps_the_stored_one() {
        let mut old = outgoing();
        old.blob_sources = vec![source("http://cache:8765")];
        let again = |url: &str, token: &str| {
            UpdateRequest {
                blob_sources: Some(vec![BlobSource {
                    url: url.into(),
                    token: token.into(),
                }]),
                ..Default::default()
            }
            .apply_to(&old)
        };
        // The same URL (a final / aside): the stored token stays.
        let kept = again("http://cache:8765/", "").unwrap();
        assert_eq!(kept.blob_sources[0].token, old.blob_sources[0].token);
        assert_eq!(kept.blob_sources[0].url, "http://cache:8765/");
        // A new token replaces it.
        let other = format!("fst_fedcba9876543210_{}", "7a".repeat(32));
        assert_eq!(
            again("http://cache:8765", &other).unwrap().blob_sources[0].token,
            other
        );
        // Another URL has no stored token to keep.
        let e = again("http://other:8765", "").unwrap_err().to_string();
        assert!(e.contains("needs a sync token"), "{e}");
    }

    fn outgoing() -> ReplicationConfig {
        CreateRequest {
            name: "r".into(),
            feeds: vec!["files".into()],
            outgoing: Some("http://hub:8765".into()),
            token: Some(format!("fst_aaaaaaaaaaaaaaaa_{}", "b".repeat(64))),
            mode: "pull".into(),
            include: vec!["docs/**".into()],
            bandwidth_limit: Some(100_000),
            ..Default::default()
        }
        .into_config()
        .unwrap()
    }

    #[test]
    fn updates_change_only_what_they_name() {
        let old = outgoing();
        let new = UpdateRequest {
            token: Some(format!("fst_cccccccccccccccc_{}", "d".repeat(64))),
            include: Some(vec![]),
            bandwidth_limit: Some(0),
            ..Default::default()
        }
        .apply_to(&old)
        .unwrap();
        assert_eq!(
            new.communication,
            Communication::Outgoing {
                url: "http://hub:8765".into(),
                token: format!("fst_cccccccccccccccc_{}", "d".repeat(64))
            }
        );
        assert!(new.include.is_empty());
        assert_eq!(new.bandwidth_limit, None);
        assert_eq!(
            (new.mode, new.feeds.clone(), new.interval_secs),
            (old.mode, old.feeds, 60)
        );
    }

    #[test]
    fn bad_updates_are_refused() {
        let old = outgoing();
        let bad = |u: UpdateRequest| u.apply_to(&old).unwrap_err().to_string();
        assert!(
            bad(UpdateRequest {
                outgoing: Some("ftp://x".into()),
                ..Default::default()
            })
            .contains("http")
        );
        let long = bad(UpdateRequest {
            outgoing: Some(format!("http://hub/{}", "a".repeat(200_000))),
            ..Default::default()
        });
        assert!(long.contains("at most 2048") && long.len() < 200, "{long}");
        assert!(
            bad(UpdateRequest {
                interval: Some(0),
                ..Default::default()
            })
            .contains("interval")
        );
        assert!(
            bad(UpdateRequest {
                include: Some(vec!["[".into()]),
                ..Default::default()
            })
            .contains("[")
        );
        // What cannot be a sync token is refused, and not repeated.
        let e = bad(UpdateRequest {
            token: Some("fst_half-pasted".into()),
            ..Default::default()
        });
        assert!(
            e.contains("has not the shape of one") && !e.contains("half-pasted"),
            "{e}"
        );
        let incoming = CreateRequest {
            name: "r".into(),
            feeds: vec!["files".into()],
            mode: "push".into(),
            ..Default::default()
        }
        .into_config()
        .unwrap();
        let e = UpdateRequest {
            token: Some(format!("fst_eeeeeeeeeeeeeeee_{}", "f".repeat(64))),
            ..Default::default()
        }
        .apply_to(&incoming)
        .unwrap_err();
        assert!(e.to_string().contains("incoming"), "{e}");
    }
}
