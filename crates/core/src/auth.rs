//! Authorization decisions. Every request is reduced to a [`Principal`]
//! (or none) and an [`Action`] on a feed or on the instance; this module is
//! the only place that says yes or no.

use ferry_store::{ApiKeyRecord, FeedRecord, Permission};
use sha2::{Digest as _, Sha256};

use crate::CoreError;

/// Who is asking: the API key presented, already verified.
#[derive(Debug, Clone)]
pub struct Principal {
    pub key: ApiKeyRecord,
}

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

/// May `who` perform `action` on `feed`?
pub fn authorize_feed(who: Option<&Principal>, feed: &FeedRecord, action: Action) -> Result<(), CoreError> {
    if action == Action::Read && !feed.private {
        return Ok(());
    }
    let Some(p) = who else {
        return Err(CoreError::Unauthorized(format!(
            "an API key is required to {} feed {}",
            if action == Action::Read {
                "read"
            } else {
                "write to"
            },
            feed.name
        )));
    };
    let in_scope = p.key.feeds.as_ref().is_none_or(|fs| fs.contains(&feed.name));
    if !in_scope {
        return Err(CoreError::Forbidden(format!(
            "API key {:?} is not scoped to feed {}",
            p.key.name, feed.name
        )));
    }
    if p.key.permission < action.needs() {
        return Err(CoreError::Forbidden(format!(
            "API key {:?} has {} permission; {} needs {}",
            p.key.name,
            p.key.permission.as_str(),
            if action == Action::Read {
                "reading"
            } else {
                "writing"
            },
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

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_types::{FeedName, FeedType};

    fn feed(name: &str, private: bool) -> FeedRecord {
        FeedRecord {
            id: 1,
            name: FeedName::new(name).unwrap(),
            feed_type: FeedType::Npm,
            private,
            created_at: 0,
        }
    }

    fn key(p: Permission, feeds: Option<&[&str]>) -> Principal {
        Principal {
            key: ApiKeyRecord {
                id: 1,
                name: "k".into(),
                hash: [0; 32],
                permission: p,
                feeds: feeds.map(|f| f.iter().map(|n| FeedName::new(*n).unwrap()).collect()),
                created_at: 0,
            },
        }
    }

    #[test]
    fn decisions() {
        let public = feed("pub", false);
        let private = feed("priv", true);
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
        let scoped = key(Permission::Write, Some(&["pub"]));
        assert!(authorize_feed(Some(&scoped), &public, Action::Write).is_ok());
        assert!(matches!(
            authorize_feed(Some(&scoped), &private, Action::Read),
            Err(CoreError::Forbidden(_))
        ));
        assert!(authorize_admin(Some(&key(Permission::Admin, None))).is_ok());
        assert!(authorize_admin(Some(&key(Permission::Admin, Some(&["pub"])))).is_err());
        assert!(authorize_admin(Some(&scoped)).is_err());
    }

    #[test]
    fn secrets_are_random_and_hashed() {
        let a = generate_secret();
        assert!(a.starts_with("ferry_") && a.len() == 70);
        assert_ne!(a, generate_secret());
        assert_eq!(hash_secret(&a), hash_secret(&a));
    }
}
