//! Feed signing keys: one OpenPGP key per feed whose type signs its
//! indexes (debian `InRelease`/`Release.gpg`; rpm `repomd.xml.asc`).
//!
//! A key is generated when such a feed is created (a v4 Ed25519 key,
//! "EdDSA legacy" in RFC 9580 terms, which gpgv and Debian's `sqv` both
//! accept, with SHA-256 self-signatures), or imported by an operator (an
//! armored transferable secret key, RFC 4880/9580 §10.2) so that a whole
//! fleet signs with one key. The secret key lives in the metadata store
//! only (`MetadataStore::signing_key`): it is never served, never part of
//! an item, a change or a bundle, and so never replicated. Only its public
//! part leaves the instance (`public_armored`, `public_binary`).
//!
//! Signing and key generation are CPU work: they run on the blocking pool.

use std::sync::Arc;

use ferry_store::FeedRecord;
use ferry_types::FeedType;
use pgp::composed::{
    CleartextSignedMessage, Deserializable, DetachedSignature, KeyType, SecretKeyParamsBuilder,
    SignedPublicKey, SignedSecretKey,
};
use pgp::crypto::hash::HashAlgorithm;
use pgp::ser::Serialize;
use pgp::types::{KeyDetails, Password};

use crate::{CoreError, Ferry};

/// Whether feeds of this type get a signing key.
pub fn signs(ty: FeedType) -> bool {
    matches!(ty, FeedType::Debian | FeedType::Rpm)
}

/// A feed's signing key, parsed.
#[derive(Clone)]
pub struct SigningKey(Arc<SignedSecretKey>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.fingerprint())
    }
}

fn pgp_err(what: &str) -> impl Fn(pgp::errors::Error) -> CoreError + '_ {
    move |e| CoreError::Internal(format!("{what}: {e}"))
}

impl SigningKey {
    /// Generates a new signing key whose user id names the feed.
    pub fn generate(user_id: &str) -> Result<Self, CoreError> {
        let mut params = SecretKeyParamsBuilder::default();
        params
            .key_type(KeyType::Ed25519Legacy)
            .can_certify(true)
            .can_sign(true)
            .primary_user_id(user_id.to_owned())
            .preferred_hash_algorithms(
                [HashAlgorithm::Sha256, HashAlgorithm::Sha512]
                    .into_iter()
                    .collect(),
            );
        let params = params
            .build()
            .map_err(|e| CoreError::Internal(format!("signing key parameters: {e}")))?;
        let key = params
            .generate(rand08::rngs::OsRng)
            .map_err(pgp_err("generating a signing key"))?;
        Ok(Self(Arc::new(key)))
    }

    /// Parses an armored secret key (as stored, or as an operator imports
    /// it). Invalid (with the reason) if it is not one, is protected by a
    /// passphrase, cannot sign, or its self-signatures do not verify.
    pub fn from_armored(text: &str) -> Result<Self, CoreError> {
        let bad = |why: String| CoreError::invalid(format!("not a usable OpenPGP secret key: {why}"));
        let (key, _) = SignedSecretKey::from_string(text).map_err(|e| bad(e.to_string()))?;
        key.verify_bindings()
            .map_err(|e| bad(format!("its self-signatures do not verify: {e}")))?;
        let probe = Self(Arc::new(key));
        probe
            .detached(b"probe")
            .map_err(|e| bad(format!("it cannot sign without a passphrase ({e})")))?;
        Ok(probe)
    }

    /// The secret key, armored, for the metadata store.
    pub fn secret_armored(&self) -> Result<String, CoreError> {
        self.0
            .to_armored_string(Default::default())
            .map_err(pgp_err("armoring the signing key"))
    }

    fn public(&self) -> SignedPublicKey {
        self.0.to_public_key()
    }

    /// The public key, armored (`key.asc`).
    pub fn public_armored(&self) -> Result<String, CoreError> {
        self.public()
            .to_armored_string(Default::default())
            .map_err(pgp_err("armoring the public key"))
    }

    /// The public key as binary packets (`key.gpg`, for apt's `signed-by`).
    pub fn public_binary(&self) -> Result<Vec<u8>, CoreError> {
        self.public()
            .to_bytes()
            .map_err(pgp_err("serializing the public key"))
    }

    /// The key's fingerprint, upper-case hex.
    pub fn fingerprint(&self) -> String {
        hex::encode_upper(self.0.fingerprint().as_bytes())
    }

    /// The key that makes signatures: the primary key if its
    /// self-signatures let it sign (the key flags subpacket, RFC 9580
    /// §5.2.3.29; a key whose self-signatures carry no flags at all is
    /// taken to sign), else the newest subkey whose binding signature
    /// gives it the signing flag (as gpg makes keys: a certify-only
    /// primary with a signing subkey). A signature names the key that
    /// made it, and apt's gpgv and `sqv` find it in the feed's public key.
    // rPGP takes `&impl SigningKey` and implements it for `Box<&dyn SigningKey>`
    // (not for `&dyn SigningKey`): the box lets one function return either key.
    #[allow(clippy::redundant_allocation)]
    fn signer(&self) -> Result<Box<&dyn pgp::types::SigningKey>, CoreError> {
        let key = &*self.0;
        let self_sigs: Vec<&pgp::packet::Signature> = key
            .details
            .users
            .iter()
            .flat_map(|u| u.signatures.iter())
            .chain(key.details.direct_signatures.iter())
            .collect();
        let has_flags = |s: &pgp::packet::Signature| {
            s.config().is_some_and(|c| {
                c.hashed_subpackets()
                    .any(|p| matches!(p.data, pgp::packet::SubpacketData::KeyFlags(_)))
            })
        };
        if self_sigs.iter().any(|s| s.key_flags().sign()) || !self_sigs.iter().any(|s| has_flags(s)) {
            return Ok(Box::new(&key.primary_key));
        }
        key.secret_subkeys
            .iter()
            .filter(|sub| sub.signatures.iter().any(|s| s.key_flags().sign()))
            .max_by_key(|sub| sub.key.created_at())
            .map(|sub| Box::new(&sub.key as &dyn pgp::types::SigningKey))
            .ok_or_else(|| CoreError::invalid("neither the key nor any of its subkeys may sign (key flags)"))
    }

    /// A clearsigned message (`InRelease`), SHA-256.
    pub fn clearsign(&self, text: &str) -> Result<String, CoreError> {
        let msg =
            CleartextSignedMessage::sign(rand08::rngs::OsRng, text, &self.signer()?, &Password::empty())
                .map_err(pgp_err("clearsigning"))?;
        msg.to_armored_string(Default::default())
            .map_err(pgp_err("armoring a signature"))
    }

    /// A detached armored signature over `data` (`Release.gpg`), SHA-256.
    pub fn detached(&self, data: &[u8]) -> Result<String, CoreError> {
        let sig = DetachedSignature::sign_binary_data(
            rand08::rngs::OsRng,
            &self.signer()?,
            &Password::empty(),
            HashAlgorithm::Sha256,
            data,
        )
        .map_err(pgp_err("signing"))?;
        sig.to_armored_string(Default::default())
            .map_err(pgp_err("armoring a signature"))
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CoreError> + Send + 'static,
) -> Result<T, CoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CoreError::Internal(format!("signing task failed: {e}")))?
}

impl Ferry {
    /// The feed's signing key, generating and storing one first if the feed
    /// has none yet (a feed created before keys existed, or whose creation
    /// was interrupted). NotFound for feeds of a type that does not sign.
    pub async fn signing_key(&self, feed: &FeedRecord) -> Result<SigningKey, CoreError> {
        if !signs(feed.feed_type) {
            return Err(CoreError::not_found(format!(
                "feed {} has no signing key",
                feed.name
            )));
        }
        if let Some(key) = self.cached_signing_key(feed)? {
            return Ok(key);
        }
        let key = match self.metadata().signing_key(feed.id).await? {
            Some(text) => blocking(move || SigningKey::from_armored(&text)).await?,
            None => {
                let _guard = self.0.signing_gen.lock().await;
                match self.metadata().signing_key(feed.id).await? {
                    Some(text) => blocking(move || SigningKey::from_armored(&text)).await?,
                    None => {
                        let uid = format!("Ferry feed {} <{}@ferry.invalid>", feed.name, feed.name);
                        let key = blocking(move || SigningKey::generate(&uid)).await?;
                        let armored = key.secret_armored()?;
                        self.metadata().put_signing_key(feed.id, &armored).await?;
                        key
                    }
                }
            }
        };
        self.0
            .signing_keys
            .lock()
            .map_err(|e| CoreError::Internal(e.to_string()))?
            .insert(feed.id, key.clone());
        Ok(key)
    }

    fn cached_signing_key(&self, feed: &FeedRecord) -> Result<Option<SigningKey>, CoreError> {
        Ok(self
            .0
            .signing_keys
            .lock()
            .map_err(|e| CoreError::Internal(e.to_string()))?
            .get(&feed.id)
            .cloned())
    }

    /// Replaces the feed's signing key by an imported one (armored secret
    /// key). Invalid if it is not usable; NotFound for a type that does
    /// not sign. Indexes are signed with it from the next rendering on.
    pub async fn import_signing_key(
        &self,
        feed: &FeedRecord,
        armored: String,
    ) -> Result<SigningKey, CoreError> {
        if !signs(feed.feed_type) {
            return Err(CoreError::invalid(format!(
                "feed {} is of type {}, which signs nothing",
                feed.name,
                feed.feed_type.as_str()
            )));
        }
        let key = blocking(move || SigningKey::from_armored(&armored)).await?;
        let stored = key.secret_armored()?;
        self.metadata().put_signing_key(feed.id, &stored).await?;
        self.0
            .signing_keys
            .lock()
            .map_err(|e| CoreError::Internal(e.to_string()))?
            .insert(feed.id, key.clone());
        self.0.cache.forget_feed(feed.id);
        crate::debian::forget_feed(self, feed.id);
        crate::rpm::forget_feed(self, feed.id);
        Ok(key)
    }

    /// Signs `text` with the feed's key: `(clearsigned, detached)`.
    pub async fn sign_text(&self, feed: &FeedRecord, text: String) -> Result<(String, String), CoreError> {
        let key = self.signing_key(feed).await?;
        blocking(move || Ok((key.clearsign(&text)?, key.detached(text.as_bytes())?))).await
    }

    /// A detached armored signature over `data` with the feed's key
    /// (rpm's `repomd.xml.asc`).
    pub async fn sign_detached(&self, feed: &FeedRecord, data: bytes::Bytes) -> Result<String, CoreError> {
        let key = self.signing_key(feed).await?;
        blocking(move || key.detached(&data)).await
    }
}
