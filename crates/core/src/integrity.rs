//! Integrity of stored blobs: what is known to be missing or corrupt (from
//! reads that failed and from `fsck`), reported in health and metrics, and
//! `fsck` itself, which re-hashes stored blobs (all of them or a random
//! sample) and takes corrupt ones out of service so they are never served
//! under their digest.

use std::collections::{BTreeMap, BTreeSet};

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
    /// Blobs re-hashed, and their bytes (intact and corrupt alike; a
    /// missing blob has none).
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

/// Known damage, by digest. Lives in memory, backed by the blob store
/// across restarts: corrupt blobs are the store's outstanding quarantines
/// ([`BlobStore::quarantined`](ferry_store::BlobStore::quarantined)), and
/// missing ones its small durable record
/// ([`BlobStore::mark_missing`](ferry_store::BlobStore::mark_missing), one
/// record per digest), read on first use and followed on every use: records
/// other nodes sharing the blob store added or removed (the store re-reads
/// them at a bounded interval) are added or removed here too. No blob is
/// re-hashed to rebuild it.
#[derive(Default)]
pub(crate) struct DamageLog {
    state: std::sync::Mutex<Option<DamageState>>,
    /// Serializes writes of the missing record, each writing the latest state.
    writer: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct DamageState {
    known: BTreeMap<Digest, Damage>,
    /// Damage of blobs no live item needs (see [`Ferry::forget_damage`]):
    /// not reported until a read finds it again.
    forgotten: BTreeSet<Digest>,
    /// When [`Ferry::forget_unreferenced_damage`] last asked about a blob.
    asked_at: std::collections::HashMap<Digest, std::time::Instant>,
    /// The blob store's records of missing blobs as last seen here.
    on_record: BTreeSet<Digest>,
}

impl Ferry {
    /// Runs `f` on the damage state, reading the durable record first if
    /// this is the first use. None if the lock is poisoned.
    fn with_damage<R>(&self, f: impl FnOnce(&mut DamageState) -> R) -> Option<R> {
        let on_record: BTreeMap<Digest, i64> = self.0.blobs.missing_on_record().into_iter().collect();
        let mut guard = self.0.damage.state.lock().ok()?;
        let state = guard.get_or_insert_with(DamageState::default);
        // Records that appeared (another node found the blob missing, or
        // this is the first use) are known damage; records that went away
        // (another node found the blob again, or it was stored again) end
        // the damage known as missing.
        for (digest, found_at) in &on_record {
            if !state.on_record.contains(digest) && !state.known.contains_key(digest) {
                state.known.insert(
                    *digest,
                    Damage {
                        digest: *digest,
                        kind: DamageKind::Missing,
                        found_at: *found_at,
                    },
                );
            }
        }
        let gone: Vec<Digest> = state
            .on_record
            .iter()
            .filter(|d| !on_record.contains_key(d))
            .copied()
            .collect();
        for digest in gone {
            if state
                .known
                .get(&digest)
                .is_some_and(|d| d.kind == DamageKind::Missing)
            {
                state.known.remove(&digest);
            }
        }
        state.on_record = on_record.into_keys().collect();
        Some(f(state))
    }

    /// Blobs known to be damaged, in digest order: missing ones recorded
    /// by reads and `fsck`, and corrupt ones the blob store took out of
    /// service (by `fsck` or a read that found the bytes wrong). Damage
    /// forgotten by [`Ferry::forget_damage`] is left out. Also sets the
    /// `ferry_blobs_damaged` gauge.
    pub fn damaged(&self) -> Vec<Damage> {
        let quarantined = self.0.blobs.quarantined();
        let out: Vec<Damage> = self
            .with_damage(|st| {
                let mut all = st.known.clone();
                for (digest, found_at) in quarantined {
                    all.entry(digest)
                        .and_modify(|d| d.kind = DamageKind::Corrupt)
                        .or_insert(Damage {
                            digest,
                            kind: DamageKind::Corrupt,
                            found_at,
                        });
                }
                all.into_iter()
                    .filter(|(d, _)| !st.forgotten.contains(d))
                    .map(|(_, d)| d)
                    .collect()
            })
            .unwrap_or_default();
        metrics::gauge!("ferry_blobs_damaged").set(out.len() as f64);
        out
    }

    /// Records damage found by a read. A blob the store has quarantined is
    /// corrupt, whatever the read saw (its file is gone because it was
    /// moved aside). Returns the kind recorded.
    pub(crate) fn note_damage(&self, digest: Digest, kind: DamageKind) -> DamageKind {
        self.record_damage(digest, kind, true)
    }

    /// Records damage; `read` says a read found it, which makes forgotten
    /// damage count again (something wanted the blob).
    fn record_damage(&self, digest: Digest, kind: DamageKind, read: bool) -> DamageKind {
        let kind = if self.0.blobs.is_quarantined(&digest) {
            DamageKind::Corrupt
        } else {
            kind
        };
        let changed = self.with_damage(|st| {
            if read {
                st.forgotten.remove(&digest);
            }
            let before = st.known.get(&digest).map(|d| d.kind);
            if before != Some(kind) {
                if !st.forgotten.contains(&digest) {
                    tracing::error!(blob = %digest, ?kind, "stored blob is damaged; run `ferry fsck --repair`");
                }
                let found_at = st.known.get(&digest).map_or_else(now_millis, |d| d.found_at);
                st.known.insert(
                    digest,
                    Damage {
                        digest,
                        kind,
                        found_at,
                    },
                );
            }
            before != Some(kind) && (before == Some(DamageKind::Missing) || kind == DamageKind::Missing)
        });
        if changed == Some(true) {
            self.save_missing(digest);
        }
        self.damaged();
        kind
    }

    pub(crate) fn clear_damage(&self, digest: &Digest) {
        let removed = self.with_damage(|st| {
            st.forgotten.remove(digest);
            st.known.remove(digest)
        });
        if let Some(Some(d)) = removed {
            tracing::info!(blob = %digest, "damaged blob replaced by a verified copy");
            if d.kind == DamageKind::Missing {
                self.save_missing(*digest);
            }
        }
        self.damaged();
    }

    /// Forgets the damage of a blob that no live item references any more:
    /// nothing can ask for it, and garbage collection will remove it. It is
    /// no longer reported (health, metrics, `fsck`) unless a read finds it
    /// again or the process restarts before it is collected.
    pub fn forget_damage(&self, digest: &Digest) {
        let was_missing = self.with_damage(|st| {
            st.forgotten.insert(*digest);
            st.known
                .remove(digest)
                .is_some_and(|d| d.kind == DamageKind::Missing)
        });
        if was_missing == Some(true) {
            self.save_missing(*digest);
        }
        self.damaged();
    }

    /// Forgets the damage of blobs no live item references any more (see
    /// [`Ferry::forget_damage`]); `referenced` says whether one does (the
    /// caller knows where to ask). At most 1000 blobs are asked about per
    /// call, those asked about longest ago first, so a health probe stays
    /// cheap however much is damaged, while a few damaged blobs are all
    /// asked about every time (deleting the last item that needs one
    /// clears it at the next call). A failed question keeps the damage.
    /// Returns how many were forgotten.
    pub async fn forget_unreferenced_damage<F, Fut>(&self, referenced: F) -> usize
    where
        F: Fn(Digest) -> Fut,
        Fut: std::future::Future<Output = Result<bool, CoreError>>,
    {
        let now = std::time::Instant::now();
        let mut due: Vec<(Option<std::time::Instant>, Digest)> = {
            let damaged = self.damaged();
            self.with_damage(|st| {
                st.asked_at.retain(|d, _| damaged.iter().any(|x| x.digest == *d));
                damaged
                    .iter()
                    .map(|d| (st.asked_at.get(&d.digest).copied(), d.digest))
                    .collect()
            })
            .unwrap_or_default()
        };
        due.sort();
        let mut forgotten = 0;
        for (_, digest) in due.into_iter().take(REFERENCE_CHECKS) {
            self.with_damage(|st| st.asked_at.insert(digest, now));
            match referenced(digest).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::info!(blob = %digest, "damaged blob no longer referenced by any item; no longer reported");
                    self.forget_damage(&digest);
                    forgotten += 1;
                }
                Err(e) => {
                    tracing::warn!(blob = %digest, error = %e, "cannot check whether a damaged blob is referenced")
                }
            }
        }
        forgotten
    }

    /// Whether the damage of `digest` was forgotten (see [`Ferry::forget_damage`]).
    fn damage_forgotten(&self, digest: &Digest) -> bool {
        self.with_damage(|st| st.forgotten.contains(digest))
            .unwrap_or(false)
    }

    /// Writes or removes `digest`'s record of being missing in the
    /// background, in order: each write takes the digest's state as it is
    /// when its turn comes.
    fn save_missing(&self, digest: Digest) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let me = self.clone();
        rt.spawn(async move {
            let _turn = me.0.damage.writer.lock().await;
            let missing_since = me
                .with_damage(|st| {
                    st.known
                        .get(&digest)
                        .filter(|d| d.kind == DamageKind::Missing)
                        .map(|d| d.found_at)
                })
                .flatten();
            let saved = match missing_since {
                Some(at) => me.0.blobs.mark_missing(&digest, at).await,
                None => me.0.blobs.unmark_missing(&digest).await,
            };
            if let Err(e) = saved {
                tracing::error!(blob = %digest, error = %e, "could not record whether a blob is missing; reported as it is here until the next restart");
            }
        });
    }

    /// Reads the blob store's damage records again (what other nodes
    /// sharing it recorded or resolved since its last periodic reading),
    /// for an answer that must be current: `fsck`, repair.
    pub async fn refresh_damage(&self) -> Result<(), CoreError> {
        self.0.blobs.refresh_damage().await?;
        self.damaged();
        Ok(())
    }

    /// The size of a blob an item references, for serving it. A blob that
    /// is registered but has no file is recorded as damaged and answered
    /// with [`CoreError::Damaged`], naming it (corrupt if it was taken out
    /// of service, missing otherwise).
    pub async fn stored_blob_size(&self, digest: &Digest) -> Result<u64, CoreError> {
        if let Some(size) = self.0.blobs.size(digest).await? {
            return Ok(size);
        }
        let kind = self.note_damage(*digest, DamageKind::Missing);
        Err(damaged_error(digest, kind))
    }

    /// Re-hashes stored blobs: all of them (`sample` = 1.0) or each with
    /// probability `sample` (0.0 to 1.0). Corrupt blobs are taken out of
    /// service; everything found is recorded as known damage (and damage
    /// that is gone is forgotten).
    pub async fn fsck(&self, sample: f64) -> Result<FsckReport, CoreError> {
        if !(0.0..=1.0).contains(&sample) || sample.is_nan() {
            return Err(CoreError::invalid("the sample must be between 0 and 1"));
        }
        // What other nodes sharing the blob store recorded or resolved.
        self.refresh_damage().await?;
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
                // Damage of a blob nothing needs any more is not reported.
                let report_it = !self.damage_forgotten(&digest);
                let check = self.0.blobs.check(&digest).await?;
                // Every byte re-hashed counts, whatever it showed.
                if let BlobCheck::Intact { size } | BlobCheck::Corrupt { size, .. } = check {
                    report.bytes += size;
                }
                // A registered blob no item references is an upload under
                // way, or one a crash cut before its item (its lease lets
                // the collector take it later): its missing or corrupt
                // file is not damage (a read verifies every blob anyway).
                if !matches!(check, BlobCheck::Intact { .. }) && !self.0.meta.blob_in_use(&digest).await? {
                    if let BlobCheck::Corrupt { actual, .. } = check {
                        tracing::warn!(blob = %digest, %actual, "a stored blob no item references is corrupt; not reported");
                    }
                    if self.with_damage(|st| st.known.contains_key(&digest)) == Some(true) {
                        self.forget_damage(&digest);
                    }
                    continue;
                }
                match check {
                    BlobCheck::Intact { .. } => {
                        self.clear_damage(&digest);
                    }
                    BlobCheck::Missing => {
                        if self.0.meta.blob_present(&digest).await? {
                            // A blob taken out of service earlier is the
                            // known corrupt one, not a new missing one.
                            let kind = self.record_damage(digest, DamageKind::Missing, false);
                            if report_it {
                                match kind {
                                    DamageKind::Missing => report.missing.push(digest),
                                    DamageKind::Corrupt => report.corrupt.push(digest),
                                }
                            }
                        }
                    }
                    BlobCheck::Corrupt { actual, size } => {
                        tracing::error!(blob = %digest, %actual, size, "stored blob is corrupt; taken out of service");
                        self.0.blobs.quarantine(&digest).await?;
                        self.record_damage(digest, DamageKind::Corrupt, false);
                        if report_it {
                            report.corrupt.push(digest);
                        }
                    }
                }
            }
            if done {
                return Ok(report);
            }
        }
    }
}

/// Most damaged blobs [`Ferry::forget_unreferenced_damage`] asks about per call.
pub(crate) const REFERENCE_CHECKS: usize = 1000;

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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ferry_store::{FsBlobStore, SqliteStore};

    use super::*;

    fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    async fn open(dir: &std::path::Path) -> Ferry {
        let meta = ok(SqliteStore::open(dir.join("m.db")).await);
        let blobs = ok(FsBlobStore::open(dir.join("blobs")).await);
        ok(Ferry::open(Arc::new(meta), Arc::new(blobs), crate::Config::default()).await)
    }

    async fn store(ferry: &Ferry, data: &'static [u8]) -> Digest {
        let staged = ok(ferry.stage_bytes(bytes::Bytes::from_static(data)).await);
        ok(ferry.commit_blob(staged).await)
    }

    /// A blob stored and referenced by an item of feed `files`.
    async fn referenced(ferry: &Ferry, data: &'static [u8]) -> Digest {
        use ferry_types::{FeedName, FeedType, ItemKey};
        let d = store(ferry, data).await;
        let name = ok(FeedName::new("files"));
        let feed = match ok(ferry.feeds().await).into_iter().find(|f| f.name == name) {
            Some(f) => f,
            None => ok(ferry.create_feed(&name, FeedType::Assets, false).await),
        };
        let key = ok(ItemKey::new(format!("f/{}", d.hex())));
        let write = crate::LocalWrite::upsert(
            key,
            serde_json::json!({}),
            vec![d],
            ferry_store::Precondition::Any,
        );
        ok(ferry.write(&feed, vec![write]).await);
        d
    }

    /// A registered blob no item references (an upload under way, or cut
    /// by a crash before its item) is not damage: fsck reports neither its
    /// missing file nor its corrupt one.
    #[tokio::test]
    async fn fsck_reports_no_damage_of_blobs_no_item_needs() {
        let dir = ok(tempfile::tempdir());
        let ferry = open(dir.path()).await;
        let lost = store(&ferry, b"leased, never referenced").await;
        let rotten = store(&ferry, b"leased, then rotten").await;
        let needed = referenced(&ferry, b"needed and lost").await;
        ok(std::fs::remove_file(blob_path(dir.path(), &lost)));
        ok(std::fs::write(blob_path(dir.path(), &rotten), b"rotten bytes"));
        ok(std::fs::remove_file(blob_path(dir.path(), &needed)));
        let report = ok(ferry.fsck(1.0).await);
        assert_eq!((report.missing, report.corrupt), (vec![needed], vec![]));
        assert_eq!(kinds(&ferry), vec![(needed, DamageKind::Missing)]);
    }

    fn blob_path(dir: &std::path::Path, d: &Digest) -> std::path::PathBuf {
        let hex = d.hex();
        dir.join("blobs/sha256").join(&hex[..2]).join(hex)
    }

    fn kinds(ferry: &Ferry) -> Vec<(Digest, DamageKind)> {
        ferry.damaged().into_iter().map(|d| (d.digest, d.kind)).collect()
    }

    /// Damage is remembered across a restart (missing: the store's record;
    /// corrupt: its quarantine), a quarantined blob stays "corrupt" in
    /// every later fsck, and forgotten or repaired damage is gone.
    #[tokio::test]
    async fn damage_survives_a_restart_and_fsck_keeps_its_kind() {
        let dir = ok(tempfile::tempdir());
        let ferry = open(dir.path()).await;
        let lost = referenced(&ferry, b"lost").await;
        let rotten = referenced(&ferry, b"rotten").await;
        ok(std::fs::remove_file(blob_path(dir.path(), &lost)));
        ok(std::fs::write(blob_path(dir.path(), &rotten), b"rottem"));
        assert!(matches!(
            ferry.stored_blob_size(&lost).await,
            Err(CoreError::Damaged(m)) if m.contains("missing")
        ));
        let first = ok(ferry.fsck(1.0).await);
        assert_eq!(
            (first.missing.clone(), first.corrupt.clone()),
            (vec![lost], vec![rotten])
        );
        // Both were looked at; the corrupt one's bytes were re-hashed.
        assert_eq!((first.checked, first.bytes), (2, 6));
        let second = ok(ferry.fsck(1.0).await);
        assert_eq!((second.missing, second.corrupt), (vec![lost], vec![rotten]));
        let mut expected = vec![(lost, DamageKind::Missing), (rotten, DamageKind::Corrupt)];
        expected.sort_by_key(|e| e.0);
        assert_eq!(kinds(&ferry), expected);
        assert!(matches!(
            ferry.stored_blob_size(&rotten).await,
            Err(CoreError::Damaged(m)) if m.contains("corrupt")
        ));
        // The record of missing blobs is written in the background.
        for _ in 0..100 {
            if ferry.0.blobs.missing_on_record().len() == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        drop(ferry);

        let ferry = open(dir.path()).await;
        assert_eq!(kinds(&ferry), expected);
        let again = ok(ferry.fsck(1.0).await);
        assert_eq!((again.missing, again.corrupt), (vec![lost], vec![rotten]));

        // Forgotten (nothing needs it): not reported, by fsck either.
        ferry.forget_damage(&rotten);
        assert_eq!(kinds(&ferry), vec![(lost, DamageKind::Missing)]);
        let report = ok(ferry.fsck(1.0).await);
        assert!(report.corrupt.is_empty(), "{report:?}");
        // Repaired by a verified copy: gone, and gone after a restart too.
        store(&ferry, b"lost").await;
        assert!(kinds(&ferry).is_empty());
        for _ in 0..100 {
            if ferry.0.blobs.missing_on_record().is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        drop(ferry);
        let ferry = open(dir.path()).await;
        assert_eq!(kinds(&ferry), vec![(rotten, DamageKind::Corrupt)]);
    }
    /// Unreferenced damage is forgotten; referenced damage is kept and
    /// asked about again; a failed question keeps the damage.
    #[tokio::test]
    async fn unreferenced_damage_is_forgotten_and_referenced_damage_kept() {
        let dir = ok(tempfile::tempdir());
        let ferry = open(dir.path()).await;
        let needed = store(&ferry, b"needed").await;
        let unneeded = store(&ferry, b"unneeded").await;
        let unknown = store(&ferry, b"unknown").await;
        for d in [needed, unneeded, unknown] {
            ok(std::fs::remove_file(blob_path(dir.path(), &d)));
            assert!(ferry.stored_blob_size(&d).await.is_err());
        }
        let asked = std::sync::Mutex::new(Vec::new());
        let check = |d: Digest| {
            ok(asked.lock()).push(d);
            async move {
                if d == unknown {
                    Err(CoreError::Internal("no answer".into()))
                } else {
                    Ok(d == needed)
                }
            }
        };
        assert_eq!(ferry.forget_unreferenced_damage(check).await, 1);
        let mut left: Vec<Digest> = ferry.damaged().iter().map(|d| d.digest).collect();
        left.sort();
        let mut want = vec![needed, unknown];
        want.sort();
        assert_eq!(left, want);
        ok(asked.lock()).clear();
        assert_eq!(ferry.forget_unreferenced_damage(check).await, 0);
        let mut asked_again = ok(asked.lock()).clone();
        asked_again.sort();
        assert_eq!(
            asked_again, want,
            "a few damaged blobs are all asked about each time"
        );
        // Read again: reported again.
        assert!(ferry.stored_blob_size(&unneeded).await.is_err());
        assert_eq!(ferry.damaged().len(), 3);
    }
}
