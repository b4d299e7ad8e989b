//! Changes that arrive from elsewhere — pushed by a peer, pulled from the
//! other side, imported from a bundle — are checked as their feed type
//! checks a client upload before they are applied: keys, metadata and blob
//! lists by the type's validator in `formats`, and what can only be checked
//! against the stored bytes here (sizes, npm `dist.integrity`, an OCI
//! manifest's own bytes). A peer's token is no licence to store what no
//! client could.

use ferry_formats::{assets, npm, oci, pypi};
use ferry_store::{Change, ChangeOp, FeedRecord};
use ferry_types::{Digest, FeedType};
use futures::StreamExt;

use crate::{CoreError, Ferry};

/// Largest OCI manifest read back to check a replicated manifest item.
const MAX_MANIFEST_BYTES: u64 = 4 << 20;

impl Ferry {
    /// Checks one change received from elsewhere: its stamp (see
    /// [`Ferry::check_stamp`]) and its item as the feed type would check an
    /// upload. The blobs a live item names must be stored already.
    /// [`CoreError::Invalid`] says what is wrong, naming the key.
    pub async fn check_replicated(&self, feed: &FeedRecord, change: &Change) -> Result<(), CoreError> {
        self.check_stamp(&change.key, &change.stamp)?;
        let key = &change.key;
        let live = match &change.op {
            ChangeOp::Upsert { meta, blobs, .. } => Some((meta, blobs.as_slice())),
            ChangeOp::Delete => None,
        };
        match feed.feed_type {
            FeedType::Assets => {
                assets::validate_item(key, live)?;
                if let Some((meta, blobs)) = live {
                    let size = meta.get("size").and_then(|v| v.as_u64());
                    self.check_size(key.as_str(), &blobs[0], size).await?;
                }
            }
            FeedType::Npm => {
                if let (Some(sri), Some((_, blobs))) = (npm::validate_item(key, live)?, live) {
                    let mut hasher = npm::IntegrityHasher::default();
                    self.replicated_blob_size(key.as_str(), &blobs[0]).await?;
                    let mut body = self.read_blob(&blobs[0], None).await?.stream;
                    while let Some(chunk) = body.next().await {
                        hasher.update(&chunk.map_err(|e| CoreError::Internal(e.to_string()))?);
                    }
                    hasher
                        .check(&sri)
                        .map_err(|e| CoreError::invalid(format!("npm item {key}: {e}")))?;
                }
            }
            FeedType::Pypi => {
                if let Some(file) = pypi::validate_item(key, live)? {
                    self.check_size(key.as_str(), &file.sha256, Some(file.size))
                        .await?;
                }
            }
            FeedType::Oci => {
                let check = oci::validate_item(key, live).map_err(|e| CoreError::invalid(e.to_string()))?;
                if let (oci::ItemCheck::Manifest { digest, meta }, Some((_, blobs))) = (check, live) {
                    let size = self.replicated_blob_size(key.as_str(), &digest).await?;
                    if size > MAX_MANIFEST_BYTES {
                        return Err(CoreError::invalid(format!(
                            "OCI item {key}: the manifest is {size} bytes, over {MAX_MANIFEST_BYTES}"
                        )));
                    }
                    let mut bytes = Vec::with_capacity(size as usize);
                    let mut body = self.read_blob(&digest, None).await?.stream;
                    while let Some(chunk) = body.next().await {
                        bytes.extend_from_slice(&chunk.map_err(|e| CoreError::Internal(e.to_string()))?);
                    }
                    oci::check_manifest_item(&bytes, &meta, blobs)
                        .map_err(|e| CoreError::invalid(format!("OCI item {key}: {e}")))?;
                }
            }
        }
        Ok(())
    }

    /// The size of a blob a received item names; it must have been
    /// transferred first.
    async fn replicated_blob_size(&self, key: &str, blob: &Digest) -> Result<u64, CoreError> {
        let registered = self.0.meta.blob_present(blob).await?;
        match self.0.blobs.size(blob).await? {
            Some(size) if registered => Ok(size),
            _ => Err(CoreError::invalid(format!(
                "{key} needs blob {blob}, which is not stored here (send it first)"
            ))),
        }
    }

    /// The stored blob must be as long as the item's metadata says.
    async fn check_size(&self, key: &str, blob: &Digest, claimed: Option<u64>) -> Result<(), CoreError> {
        let stored = self.replicated_blob_size(key, blob).await?;
        match claimed {
            Some(n) if n == stored => Ok(()),
            _ => Err(CoreError::invalid(format!(
                "{key}: its metadata says {} bytes, but its blob {blob} holds {stored}",
                claimed.map_or("no size".to_string(), |n| n.to_string())
            ))),
        }
    }
}
