//! Authorization decisions. Every request is reduced to a [`Principal`]
//! (or none) and an [`Action`] on a feed or on the instance; this module is
//! the only place that says yes or no.
//!
//! # Private feeds are invisible without access
//!
//! A caller who may not read a feed learns nothing about it: an existing
//! private feed answers exactly as a feed that does not exist (same
//! status, same message, same headers), whatever the action:
//!
//! * anonymous: a feed that is not public (private, or missing) answers
//!   401 "an API key is required to read|write to feed NAME", with the
//!   server's `WWW-Authenticate` challenge, so clients that send
//!   credentials only when challenged (pip, uv, OCI clients) do so;
//! * with a key that may not read the feed (scoped to other feeds): a
//!   private feed answers 404 "feed NAME not found", as a missing one does
//!   for any key ([`visible_feed`], [`hidden`]);
//! * a presented key that matches no key is refused (401) before the feed
//!   is looked at.
//!
//! Who may read a feed may learn more about it: its type (a request under
//! the wrong protocol names it), and that their key lacks the permission
//! for a write (403). Public feeds are readable by everyone, so these
//! apply to everyone on them. Keys are scoped to feeds by identity
//! ([`ApiKeyRecord::covers`]), never by name.

use ferry_store::{ApiKeyRecord, FeedRecord, Permission};
use ferry_types::FeedName;
use sha2::{Digest as _, Sha256};

use crate::CoreError;

/// Who is asking: the API key presented, already verified.
#[derive(Debug, Clone)]
pub struct Principal {
    pub key: ApiKeyRecord,
}

/// What a request does to a feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Read,
    Write,
}

impl Action {
    fn needs(self) -> Permission {
        match self {
            Action::Read => Permission::Read,
            Action::Write => Permission::Write,
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Write => "write to",
        }
    }
}

/// A new random API key secret: `ferry_` and 64 hex characters.
pub fn generate_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("ferry_{}", hex::encode(bytes))
}

/// What is stored for a secret: its sha256. The secrets are 256-bit random,
/// so a fast hash is enough, and the lookup is by hash, never by comparing
/// the secret itself.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// The error for a feed that does not exist, as any caller who may see
/// feeds is told.
pub fn no_such_feed(name: &FeedName) -> CoreError {
    CoreError::NotFound(format!("feed {name} not found"))
}

/// Whether `who` may know that `feed` exists (and read it): everyone for
/// a public feed, a key whose scope covers it for a private one.
pub fn may_see(who: Option<&Principal>, feed: &FeedRecord) -> bool {
    !feed.private || who.is_some_and(|p| p.key.covers(feed.id))
}

/// The answer for a feed called `name` that `who` may not see, the same
/// whether it exists or not: 401 without a key, 404 with one.
pub fn hidden(who: Option<&Principal>, name: &FeedName, action: Action) -> CoreError {
    match who {
        None => CoreError::Unauthorized(format!("an API key is required to {} feed {name}", action.verb())),
        Some(_) => no_such_feed(name),
    }
}

/// The feed a request names, if `who` may see it: `feed` is what the name
/// resolves to (`None`: no such feed). A missing feed and one `who` may
/// not see give the same error ([`hidden`]).
pub fn visible_feed(
    who: Option<&Principal>,
    name: &FeedName,
    feed: Option<FeedRecord>,
    action: Action,
) -> Result<FeedRecord, CoreError> {
    match feed {
        Some(f) if may_see(who, &f) => Ok(f),
        _ => Err(hidden(who, name, action)),
    }
}

/// May `who` perform `action` on `feed`? A feed `who` may not see is
/// refused as if it did not exist ([`hidden`]).
pub fn authorize_feed(who: Option<&Principal>, feed: &FeedRecord, action: Action) -> Result<(), CoreError> {
    if !may_see(who, feed) {
        return Err(hidden(who, &feed.name, action));
    }
    if action == Action::Read {
        return Ok(());
    }
    let Some(p) = who else {
        return Err(hidden(None, &feed.name, action));
    };
    if !p.key.covers(feed.id) {
        return Err(CoreError::Forbidden(format!(
            "API key {:?} is not scoped to feed {}",
            p.key.name, feed.name
        )));
    }
    if p.key.permission < action.needs() {
        return Err(CoreError::Forbidden(format!(
            "API key {:?} has {} permission; writing needs {}",
            p.key.name,
            p.key.permission.as_str(),
            action.needs().as_str()
        )));
    }
    Ok(())
}

/// May `who` manage the instance (feeds, keys, replications)? Only an admin
/// key that is not limited to some feeds may.
pub fn authorize_admin(who: Option<&Principal>) -> Result<(), CoreError> {
    match who {
        None => Err(CoreError::Unauthorized("an admin API key is required".into())),
        Some(p) if p.key.permission == Permission::Admin && p.key.feeds.is_none() => Ok(()),
        Some(p) => Err(CoreError::Forbidden(format!(
            "API key {:?} is not an instance admin key",
            p.key.name
        ))),
    }
}

/// May `who` read the instance's metrics? They name every feed (private
/// ones too) and replication, so: everyone when `public` (the operator's
/// choice, [`crate::Config::metrics_public`]), else any key that is not
/// limited to some feeds, whatever its permission (a read key is enough
/// for a Prometheus scraper).
pub fn authorize_metrics(who: Option<&Principal>, public: bool) -> Result<(), CoreError> {
    match who {
        _ if public => Ok(()),
        None => Err(CoreError::Unauthorized(
            "an API key is required to read metrics".into(),
        )),
        Some(p) if p.key.feeds.is_none() => Ok(()),
        Some(p) => Err(CoreError::Forbidden(format!(
            "API key {:?} is limited to some feeds; metrics need a key for every feed",
            p.key.name
        ))),
    }
}

// ---------------------------------------------------------------------------
// Keys remembered for the metrics scrape during a metadata outage

/// How long a key verified against the metadata store keeps opening
/// `/metrics` while the store cannot be reached (from its last successful
/// check). Short, because a key revoked on another node while this node
/// heard nothing (its connection to the database broken) stays usable for
/// metrics alone until then.
pub const REMEMBERED_KEY_TTL: std::time::Duration = std::time::Duration::from_secs(900);

/// Most keys remembered at once (a scraper or two use one key each).
pub const REMEMBERED_KEYS_MAX: usize = 64;

/// Keys that may read metrics, recently verified against the metadata
/// store, by secret hash: while the store is unreachable, a scrape with one
/// of them still gets the metrics (which then say the database is down)
/// instead of a 503. Bounded ([`REMEMBERED_KEYS_MAX`], oldest check
/// dropped first) and expiring ([`REMEMBERED_KEY_TTL`]); a key deleted or
/// replaced on another node is forgotten when the store's event says so
/// ([`crate::Ferry`] follows them), one deleted on this node empties it,
/// and a key the store no longer knows is dropped when next presented.
#[derive(Default)]
pub(crate) struct RememberedKeys {
    entries: std::sync::Mutex<std::collections::HashMap<[u8; 32], (ApiKeyRecord, std::time::Instant)>>,
}

impl RememberedKeys {
    fn entries(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<[u8; 32], (ApiKeyRecord, std::time::Instant)>>
    {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Remembers `key` as verified now under its secret hash `hash`.
    pub(crate) fn remember(&self, hash: [u8; 32], key: ApiKeyRecord) {
        let now = std::time::Instant::now();
        let mut entries = self.entries();
        entries.retain(|_, (_, at)| now.duration_since(*at) < REMEMBERED_KEY_TTL);
        if entries.len() >= REMEMBERED_KEYS_MAX && !entries.contains_key(&hash) {
            let oldest = entries.iter().min_by_key(|(_, (_, at))| *at).map(|(h, _)| *h);
            if let Some(h) = oldest {
                entries.remove(&h);
            }
        }
        entries.insert(hash, (key, now));
    }

    /// The key verified under `hash` less than [`REMEMBERED_KEY_TTL`] ago.
    pub(crate) fn recall(&self, hash: &[u8; 32]) -> Option<ApiKeyRecord> {
        let entries = self.entries();
        let (key, at) = entries.get(hash)?;
        (at.elapsed() < REMEMBERED_KEY_TTL).then(|| key.clone())
    }

    /// Drops the key remembered under `hash` (revoked, or unknown to the store).
    pub(crate) fn forget(&self, hash: &[u8; 32]) {
        self.entries().remove(hash);
    }

    /// Drops every remembered key (a key was deleted or replaced).
    pub(crate) fn clear(&self) {
        self.entries().clear();
    }
}

// ---------------------------------------------------------------------------
// Registry tokens (the OCI / Docker token flow)

/// How long a registry token is valid.
pub const REGISTRY_TOKEN_TTL_SECS: u64 = 300;

/// What starts every registry token, so it is never taken for an API key.
pub const REGISTRY_TOKEN_PREFIX: &str = "fbt.";

/// One repository a registry token grants actions on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RegistryGrant {
    /// `FEED/NAME`, as in image references.
    pub repository: String,
    /// `pull`, `push`.
    pub actions: Vec<String>,
}

/// The claims a registry token carries, signed with this process's secret.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RegistryClaims {
    /// The instance that issued it (a token of another instance in the
    /// same process is refused).
    pub iss: String,
    /// Hex sha256 of the API key it was issued for; None: anonymous. In
    /// the signed token it is masked (XOR with `HMAC(secret, "key:" +
    /// nonce)`), so a token seen in a log does not show the key's hash.
    pub key: Option<String>,
    /// Random per token (hex), the mask's input; set when issued.
    #[serde(default)]
    pub nonce: String,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// Expires at, seconds since the epoch.
    pub exp: u64,
    pub access: Vec<RegistryGrant>,
    /// Granted `registry:catalog:*`: `GET /v2/_catalog` lists every
    /// repository the key (or, anonymous, everyone) may read. Without it
    /// the catalog lists only the repositories the token grants `pull` on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub catalog: bool,
}

impl RegistryClaims {
    /// Does the token grant `action` (`pull`/`push`) on `repository`?
    pub fn grants(&self, repository: &str, action: &str) -> bool {
        self.access
            .iter()
            .any(|g| g.repository == repository && g.actions.iter().any(|a| a == action))
    }

    /// May the token's holder see `repository` (`FEED/NAME`) listed in
    /// the catalog? With `registry:catalog:*` every repository its key may
    /// read (the caller checks that), otherwise those it grants `pull` on.
    pub fn lists(&self, repository: &str) -> bool {
        self.catalog || self.grants(repository, "pull")
    }

    /// Does the token grant anything on `repository`?
    pub fn names(&self, repository: &str) -> bool {
        self.access
            .iter()
            .any(|g| g.repository == repository && !g.actions.is_empty())
    }

    /// The key hash it was issued for, if any.
    pub fn key_hash(&self) -> Option<[u8; 32]> {
        let hex = self.key.as_deref()?;
        hex::decode(hex).ok()?.try_into().ok()
    }
}

/// HMAC-SHA256 (RFC 2104).
fn hmac_sha256(key: &[u8; 32], message: &[u8]) -> [u8; 32] {
    let mut ipad = [0x36u8; 64];
    let mut opad = [0x5cu8; 64];
    for (i, b) in key.iter().enumerate() {
        ipad[i] ^= b;
        opad[i] ^= b;
    }
    let inner = Sha256::new().chain_update(ipad).chain_update(message).finalize();
    Sha256::new()
        .chain_update(opad)
        .chain_update(inner)
        .finalize()
        .into()
}

/// The current time in seconds since the epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// XORs a hex key hash with the pad of `nonce` (its own inverse); None if
/// `hex_hash` is not 32 bytes of hex.
fn mask_key(secret: &[u8; 32], hex_hash: &str, nonce: &str) -> Option<String> {
    let hash: [u8; 32] = hex::decode(hex_hash).ok()?.try_into().ok()?;
    let pad = hmac_sha256(secret, format!("key:{nonce}").as_bytes());
    Some(hex::encode(std::array::from_fn::<u8, 32, _>(|i| {
        hash[i] ^ pad[i]
    })))
}

/// Signs `claims` into a registry token: `fbt.HEX(JSON).HEX(HMAC)`, the
/// key hash masked under a fresh nonce. `secret`: the instance's token
/// key ([`crate::Ferry::registry_token_key`]; the same on every node).
pub fn issue_registry_token(secret: &[u8; 32], claims: &RegistryClaims) -> Result<String, CoreError> {
    let mut claims = claims.clone();
    claims.nonce = hex::encode(rand::random::<[u8; 16]>());
    if let Some(k) = &claims.key {
        claims.key = Some(
            mask_key(secret, k, &claims.nonce)
                .ok_or_else(|| CoreError::Internal("registry token: the key hash is not 32 bytes".into()))?,
        );
    }
    let json =
        serde_json::to_vec(&claims).map_err(|e| CoreError::Internal(format!("registry token: {e}")))?;
    let payload = hex::encode(json);
    let mac = hmac_sha256(secret, payload.as_bytes());
    Ok(format!("{REGISTRY_TOKEN_PREFIX}{payload}.{}", hex::encode(mac)))
}

/// Is `secret` shaped like a registry token (rather than an API key)?
pub fn is_registry_token(secret: &str) -> bool {
    secret.starts_with(REGISTRY_TOKEN_PREFIX)
}

/// Checks a registry token's signature (under `secret`, as
/// [`issue_registry_token`]), issuer and expiry at `now` (seconds);
/// Unauthorized with the reason otherwise.
pub fn verify_registry_token(
    secret: &[u8; 32],
    token: &str,
    instance: &str,
    now: u64,
) -> Result<RegistryClaims, CoreError> {
    use subtle::ConstantTimeEq as _;
    let bad =
        || CoreError::Unauthorized("invalid registry token; ask the token endpoint for a new one".into());
    let rest = token.strip_prefix(REGISTRY_TOKEN_PREFIX).ok_or_else(bad)?;
    let (payload, mac) = rest.split_once('.').ok_or_else(bad)?;
    // The signature exactly as issued (lower-case hex): a token string
    // that differs in any byte is not the token that was issued.
    let expected = hex::encode(hmac_sha256(secret, payload.as_bytes()));
    if !bool::from(expected.as_bytes().ct_eq(mac.as_bytes())) {
        return Err(bad());
    }
    let json = hex::decode(payload).map_err(|_| bad())?;
    let mut claims: RegistryClaims = serde_json::from_slice(&json).map_err(|_| bad())?;
    if let Some(k) = &claims.key {
        claims.key = Some(mask_key(secret, k, &claims.nonce).ok_or_else(bad)?);
    }
    if claims.iss != instance {
        return Err(bad());
    }
    if now >= claims.exp {
        return Err(CoreError::Unauthorized(
            "the registry token has expired; ask the token endpoint for a new one".into(),
        ));
    }
    Ok(claims)
}

/// A scope a client asks the token endpoint for: `repository:FEED/NAME:ACTIONS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositoryScope {
    pub feed: FeedName,
    /// The repository inside the feed.
    pub name: String,
    /// `pull`, `push`, `delete`, `*` as asked.
    pub actions: Vec<String>,
}

/// Is `scope` the catalog scope, `registry:catalog:*` (Docker's token
/// authentication: listing `GET /v2/_catalog`)?
pub fn is_catalog_scope(scope: &str) -> bool {
    scope
        .strip_prefix("registry:catalog:")
        .is_some_and(|actions| actions.split(',').any(|a| a == "*"))
}

/// Parses one scope of a token request. `Ok(None)` for resource types
/// other than `repository` (e.g. `registry:catalog:*`, see
/// [`is_catalog_scope`]); Invalid for a malformed one.
pub fn parse_scope(scope: &str) -> Result<Option<RepositoryScope>, CoreError> {
    let bad = |why: &str| {
        CoreError::invalid(format!(
            "invalid scope {scope:?}: {why}; expected repository:FEED/NAME:pull,push"
        ))
    };
    let (ty, rest) = scope.split_once(':').ok_or_else(|| bad("no resource type"))?;
    // The name may hold a port-less host only in other registries; the
    // actions follow the last colon.
    let (name, actions) = rest.rsplit_once(':').ok_or_else(|| bad("no actions"))?;
    if ty != "repository" {
        return Ok(None);
    }
    let (feed, repo) = name
        .split_once('/')
        .ok_or_else(|| bad("the name must be FEED/NAME"))?;
    let feed = FeedName::new(feed).map_err(|e| bad(&e.to_string()))?;
    if repo.is_empty() {
        return Err(bad("the name must be FEED/NAME"));
    }
    ferry_formats::oci::validate_repository(repo).map_err(|e| bad(&e.message))?;
    let actions: Vec<String> = actions
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect();
    if let Some(a) = actions
        .iter()
        .find(|a| !matches!(a.as_str(), "pull" | "push" | "delete" | "*"))
    {
        return Err(bad(&format!("unknown action {a:?}")));
    }
    Ok(Some(RepositoryScope {
        feed,
        name: repo.to_owned(),
        actions,
    }))
}

/// The actions `who` is granted on a repository of `feed` (None: a feed
/// that does not exist, or is of the wrong type), of those `asked`: `pull`
/// where it may read, `push` (asked as `push`, `delete` or `*`) where it
/// may write. A feed it may not see grants nothing, as a missing one.
pub fn granted_actions(who: Option<&Principal>, feed: Option<&FeedRecord>, asked: &[String]) -> Vec<String> {
    let Some(feed) = feed else {
        return Vec::new();
    };
    let wants = |a: &str| asked.iter().any(|x| x == a || x == "*");
    let mut out = Vec::new();
    if wants("pull") && authorize_feed(who, feed, Action::Read).is_ok() {
        out.push("pull".to_owned());
    }
    let wants_push = wants("push") || wants("delete");
    if wants_push && authorize_feed(who, feed, Action::Write).is_ok() {
        out.push("push".to_owned());
    }
    out
}

#[cfg(test)]
mod tests {
    /// A registry token key, as an instance's would be.
    const KEY: [u8; 32] = [7; 32];

    use super::*;
    use ferry_store::ScopedFeed;
    use ferry_types::FeedType;

    fn feed(id: i64, name: &str, private: bool) -> FeedRecord {
        FeedRecord {
            id,
            name: FeedName::new(name).unwrap(),
            feed_type: FeedType::Npm,
            private,
            created_at: 0,
        }
    }

    fn key(p: Permission, feeds: Option<&[&FeedRecord]>) -> Principal {
        Principal {
            key: ApiKeyRecord {
                id: 1,
                name: "k".into(),
                hash: [0; 32],
                permission: p,
                feeds: feeds.map(|f| f.iter().map(|r| ScopedFeed::from(*r)).collect()),
                created_at: 0,
            },
        }
    }

    #[test]
    fn decisions() {
        let public = feed(1, "pub", false);
        let private = feed(2, "priv", true);
        assert!(authorize_feed(None, &public, Action::Read).is_ok());
        assert!(matches!(
            authorize_feed(None, &private, Action::Read),
            Err(CoreError::Unauthorized(_))
        ));
        assert!(matches!(
            authorize_feed(None, &public, Action::Write),
            Err(CoreError::Unauthorized(_))
        ));
        let reader = key(Permission::Read, None);
        assert!(authorize_feed(Some(&reader), &private, Action::Read).is_ok());
        assert!(matches!(
            authorize_feed(Some(&reader), &public, Action::Write),
            Err(CoreError::Forbidden(_))
        ));
        let scoped = key(Permission::Write, Some(&[&public]));
        assert!(authorize_feed(Some(&scoped), &public, Action::Write).is_ok());
        // A private feed outside the key's scope does not exist for it.
        assert!(matches!(
            authorize_feed(Some(&scoped), &private, Action::Read),
            Err(CoreError::NotFound(_))
        ));
        assert!(authorize_admin(Some(&key(Permission::Admin, None))).is_ok());
        assert!(authorize_admin(Some(&key(Permission::Admin, Some(&[&public])))).is_err());
        assert!(authorize_admin(Some(&scoped)).is_err());
    }

    #[test]
    fn scopes_are_feed_identities_not_names() {
        let old = feed(7, "x", true);
        let again = feed(8, "x", true);
        let k = key(Permission::Admin, Some(&[&old]));
        assert!(authorize_feed(Some(&k), &old, Action::Write).is_ok());
        assert!(matches!(
            authorize_feed(Some(&k), &again, Action::Read),
            Err(CoreError::NotFound(_))
        ));
        let nothing = key(Permission::Admin, Some(&[]));
        assert!(authorize_feed(Some(&nothing), &again, Action::Read).is_err());
        assert!(authorize_admin(Some(&nothing)).is_err());
    }

    #[test]
    fn hidden_feeds_answer_like_missing_ones() {
        let private = feed(2, "priv", true);
        let name = private.name.clone();
        let elsewhere = key(Permission::Write, Some(&[&feed(1, "pub", false)]));
        for action in [Action::Read, Action::Write] {
            for who in [None, Some(&elsewhere)] {
                let missing = visible_feed(who, &name, None, action).unwrap_err();
                let private = visible_feed(who, &name, Some(private.clone()), action).unwrap_err();
                assert_eq!(format!("{missing:?}"), format!("{private:?}"));
            }
        }
        assert!(visible_feed(None, &name, None, Action::Read).is_err());
        let reader = key(Permission::Read, None);
        assert!(visible_feed(Some(&reader), &name, Some(private.clone()), Action::Write).is_ok());
    }

    #[test]
    fn metrics_need_an_unscoped_key_unless_public() {
        assert!(matches!(
            authorize_metrics(None, false),
            Err(CoreError::Unauthorized(_))
        ));
        assert!(authorize_metrics(None, true).is_ok());
        assert!(authorize_metrics(Some(&key(Permission::Read, None)), false).is_ok());
        let scoped = key(Permission::Admin, Some(&[&feed(1, "pub", false)]));
        assert!(matches!(
            authorize_metrics(Some(&scoped), false),
            Err(CoreError::Forbidden(_))
        ));
    }

    #[test]
    fn secrets_are_random_and_hashed() {
        let a = generate_secret();
        assert!(a.starts_with("ferry_") && a.len() == 70);
        assert_ne!(a, generate_secret());
        assert_eq!(hash_secret(&a), hash_secret(&a));
    }

    fn claims(access: Vec<RegistryGrant>, exp: u64) -> RegistryClaims {
        RegistryClaims {
            iss: "inst".into(),
            key: Some(hex::encode(hash_secret("k"))),
            nonce: String::new(),
            iat: 100,
            exp,
            access,
            catalog: false,
        }
    }

    #[test]
    fn a_registry_token_of_another_instance_key_is_refused() {
        let t = issue_registry_token(&[8; 32], &claims(vec![], 400)).unwrap();
        assert!(verify_registry_token(&KEY, &t, "inst", 399).is_err());
        assert!(verify_registry_token(&[8; 32], &t, "inst", 399).is_ok());
    }

    #[test]
    fn registry_tokens_are_signed_scoped_and_expire() {
        let grant = RegistryGrant {
            repository: "f/app".into(),
            actions: vec!["pull".into()],
        };
        let t = issue_registry_token(&KEY, &claims(vec![grant], 400)).unwrap();
        assert!(is_registry_token(&t));
        let c = verify_registry_token(&KEY, &t, "inst", 399).unwrap();
        assert!(c.grants("f/app", "pull"));
        assert!(!c.grants("f/app", "push"));
        assert!(!c.grants("f/other", "pull"));
        assert!(c.names("f/app") && !c.names("f/other"));
        assert_eq!(c.key_hash(), Some(hash_secret("k")));
        // The key's hash is not readable in the token, and two tokens for
        // the same key do not share its masked form.
        let hash_hex = hex::encode(hash_secret("k"));
        let json = String::from_utf8(hex::decode(t[4..].split_once('.').unwrap().0).unwrap()).unwrap();
        assert!(!json.contains(&hash_hex), "{json}");
        let t2 = issue_registry_token(&KEY, &claims(vec![], 400)).unwrap();
        let json2 = String::from_utf8(hex::decode(t2[4..].split_once('.').unwrap().0).unwrap()).unwrap();
        let masked = |j: &str| serde_json::from_str::<serde_json::Value>(j).unwrap()["key"].clone();
        assert_ne!(masked(&json), masked(&json2));
        assert_eq!(
            verify_registry_token(&KEY, &t2, "inst", 0).unwrap().key_hash(),
            Some(hash_secret("k"))
        );
        // Expired, another instance, tampered with, garbage.
        assert!(
            matches!(verify_registry_token(&KEY, &t, "inst", 400), Err(CoreError::Unauthorized(m)) if m.contains("expired"))
        );
        assert!(verify_registry_token(&KEY, &t, "other", 399).is_err());
        let (payload, mac) = t.rsplit_once('.').unwrap();
        // The same signature spelled otherwise is another string: refused.
        let upper = format!("{payload}.{}", mac.to_uppercase());
        assert!(verify_registry_token(&KEY, &upper, "inst", 399).is_err());
        let forged = hex::encode(
            serde_json::to_vec(&claims(
                vec![RegistryGrant {
                    repository: "f/app".into(),
                    actions: vec!["push".into()],
                }],
                400,
            ))
            .unwrap(),
        );
        assert!(
            verify_registry_token(
                &KEY,
                &format!("{REGISTRY_TOKEN_PREFIX}{forged}.{mac}"),
                "inst",
                399
            )
            .is_err()
        );
        assert!(verify_registry_token(&KEY, &format!("{payload}.00"), "inst", 399).is_err());
        for junk in ["", "fbt.", "fbt.zz.zz", "fbt.00", "ferry_abc"] {
            assert!(verify_registry_token(&KEY, junk, "inst", 0).is_err(), "{junk}");
        }
    }

    #[test]
    fn hmac_matches_rfc_4231_shape() {
        // RFC 4231 test case 2 uses a short key; ours are 32 bytes, padded
        // with zeros as HMAC pads them.
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        assert_eq!(
            hex::encode(hmac_sha256(&key, b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn scopes() {
        let s = parse_scope("repository:img/team/app:pull,push").unwrap().unwrap();
        assert_eq!((s.feed.as_str(), s.name.as_str()), ("img", "team/app"));
        assert_eq!(s.actions, vec!["pull", "push"]);
        assert_eq!(parse_scope("registry:catalog:*").unwrap(), None);
        for bad in [
            "repository",
            "repository:img:pull",
            "repository:img/app:fly",
            "repository:/app:pull",
            "repository:img/:pull",
            "repository:img/App:pull",
            "repository:img/a//b:pull",
            "repository:img/../x:pull",
            "repository:img/a b:pull",
        ] {
            assert!(matches!(parse_scope(bad), Err(CoreError::Invalid(_))), "{bad}");
        }
        let public = feed(1, "pub", false);
        let private = feed(2, "priv", true);
        let asked = vec!["pull".to_owned(), "push".to_owned()];
        assert_eq!(granted_actions(None, Some(&public), &asked), vec!["pull"]);
        assert!(granted_actions(None, Some(&private), &asked).is_empty());
        let reader = key(Permission::Read, None);
        assert_eq!(
            granted_actions(Some(&reader), Some(&private), &asked),
            vec!["pull"]
        );
        let writer = key(Permission::Write, None);
        assert_eq!(
            granted_actions(Some(&writer), Some(&private), &asked),
            vec!["pull", "push"]
        );
        assert_eq!(
            granted_actions(Some(&writer), Some(&private), &["*".to_owned()]),
            vec!["pull", "push"]
        );
        assert!(granted_actions(Some(&writer), None, &asked).is_empty());
    }

    #[test]
    fn remembered_keys_are_bounded_and_forgotten_on_revocation() {
        let keys = RememberedKeys::default();
        let hash = |i: usize| {
            let mut h = [0u8; 32];
            h[..8].copy_from_slice(&(i as u64).to_le_bytes());
            h
        };
        for i in 0..REMEMBERED_KEYS_MAX + 10 {
            keys.remember(hash(i), key(Permission::Read, None).key);
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
        assert_eq!(keys.entries().len(), REMEMBERED_KEYS_MAX);
        assert!(keys.recall(&hash(0)).is_none(), "the oldest is dropped first");
        let newest = hash(REMEMBERED_KEYS_MAX + 9);
        assert!(keys.recall(&newest).is_some());
        keys.forget(&newest);
        assert!(keys.recall(&newest).is_none());
        keys.clear();
        assert!(keys.recall(&hash(20)).is_none());
    }
}
