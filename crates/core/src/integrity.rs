//! Integrity of stored blobs: what is known to be missing or corrupt (from
//! reads that failed and from `fsck`), reported in health and metrics, and
//! `fsck` itself, which re-hashes stored blobs (all of them or a random
//! sample) and takes corrupt ones out of service so they are never served
//! under their digest.

use std::collections::BTreeMap;

use ferry_store::{BlobCheck, now_millis};
use ferry_types::Digest;
use serde::Serialize;

use crate::{CoreError, Ferry};

/// What is wrong with a stored blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DamageKind {
    /// Registered as stored, but no file holds it.
    Missing,
    /// Its bytes do not hash to its digest (taken out of service).
    Corrupt,
}

/// A blob known to be damaged on this instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Damage {
    pub digest: Digest,
    pub kind: DamageKind,
    /// When it was found (ms since the Unix epoch).
    pub found_at: i64,
}

/// What one `fsck` pass found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FsckReport {
    /// Blobs re-hashed, and their bytes.
    pub checked: u64,
    pub bytes: u64,
    /// Registered blobs not checked (left out of the sample).
    pub skipped: u64,
    pub missing: Vec<Digest>,
    pub corrupt: Vec<Digest>,
}

impl FsckReport {
    /// Every damaged digest found, missing first.
    pub fn damaged(&self) -> Vec<Digest> {
        self.missing.iter().chain(&self.corrupt).copied().collect()
    }
}

/// Known damage, by digest; kept in memory and rebuilt by `fsck`.
#[derive(Default)]
pub(crate) struct DamageLog(std::sync::Mutex<BTreeMap<Digest, Damage>>);

impl Ferry {
    /// Blobs known to be damaged, by digest.
    pub fn damaged(&self) -> Vec<Damage> {
        self.0
            .damage
            .0
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    pub(crate) fn note_damage(&self, digest: Digest, kind: DamageKind) {
        if let Ok(mut m) = self.0.damage.0.lock() {
            if m.get(&digest).is_none_or(|d| d.kind != kind) {
                tracing::error!(blob = %digest, ?kind, "stored blob is damaged; run `ferry fsck --repair`");
            }
            m.entry(digest).or_insert(Damage {
                digest,
                kind,
                found_at: now_millis(),
            });
            metrics::gauge!("ferry_blobs_damaged").set(m.len() as f64);
        }
    }

    pub(crate) fn clear_damage(&self, digest: &Digest) {
        if let Ok(mut m) = self.0.damage.0.lock()
            && m.remove(digest).is_some()
        {
            tracing::info!(blob = %digest, "damaged blob replaced by a verified copy");
            metrics::gauge!("ferry_blobs_damaged").set(m.len() as f64);
        }
    }

    /// The size of a blob an item references, for serving it. A blob that
    /// is registered but has no file is recorded as damaged and answered
    /// with [`CoreError::Damaged`], naming it.
    pub async fn stored_blob_size(&self, digest: &Digest) -> Result<u64, CoreError> {
        if let Some(size) = self.0.blobs.size(digest).await? {
            return Ok(size);
        }
        self.note_damage(*digest, DamageKind::Missing);
        Err(damaged_error(digest, DamageKind::Missing))
    }

    /// Re-hashes stored blobs: all of them (`sample` = 1.0) or each with
    /// probability `sample` (0.0 to 1.0). Corrupt blobs are taken out of
    /// service; everything found is recorded as known damage (and damage
    /// that is gone is forgotten).
    pub async fn fsck(&self, sample: f64) -> Result<FsckReport, CoreError> {
        if !(0.0..=1.0).contains(&sample) || sample.is_nan() {
            return Err(CoreError::invalid("the sample must be between 0 and 1"));
        }
        let mut report = FsckReport::default();
        let mut after: Option<Digest> = None;
        loop {
            let page = self.0.meta.blobs_after(after.as_ref(), 1000).await?;
            let done = page.len() < 1000;
            after = page.last().map(|(d, _)| *d);
            for (digest, _) in page {
                if sample < 1.0 && rand::random::<f64>() >= sample {
                    report.skipped += 1;
                    continue;
                }
                // Collected meanwhile: not damage.
                if !self.0.meta.blob_present(&digest).await? {
                    continue;
                }
                report.checked += 1;
                match self.0.blobs.check(&digest).await? {
                    BlobCheck::Intact { size } => {
                        report.bytes += size;
                        self.clear_damage(&digest);
                    }
                    BlobCheck::Missing => {
                        if self.0.meta.blob_present(&digest).await? {
                            self.note_damage(digest, DamageKind::Missing);
                            report.missing.push(digest);
                        }
                    }
                    BlobCheck::Corrupt { actual, size } => {
                        tracing::error!(blob = %digest, %actual, size, "stored blob is corrupt; taken out of service");
                        self.0.blobs.quarantine(&digest).await?;
                        self.note_damage(digest, DamageKind::Corrupt);
                        report.corrupt.push(digest);
                    }
                }
            }
            if done {
                return Ok(report);
            }
        }
    }
}

/// The error a read of a damaged blob answers with.
pub(crate) fn damaged_error(digest: &Digest, kind: DamageKind) -> CoreError {
    let what = match kind {
        DamageKind::Missing => "missing from",
        DamageKind::Corrupt => "corrupt in",
    };
    CoreError::Damaged(format!(
        "blob {digest} is {what} this instance's storage; an operator can restore it with `ferry fsck --repair`"
    ))
}
