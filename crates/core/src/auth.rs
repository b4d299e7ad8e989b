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

#[cfg(test)]
mod tests {
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
}
