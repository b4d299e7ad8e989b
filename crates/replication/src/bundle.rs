//! Air-gapped replication: a feed's changes since a cursor, written to a
//! bundle file (a tar of `ferry-bundle.json`, `entries.jsonl` and the blobs
//! the entries need under `blobs/`), and imported on an instance with no
//! network path to the source. Importing applies the entries with their
//! original stamps, so importing twice — or out of order — is harmless.

use std::collections::{BTreeMap, HashSet};

use bytes::Bytes;
use ferry_core::CoreError;
use ferry_store::{ByteStream, FeedRecord};
use ferry_types::{Digest, FeedName, FeedType, InstanceId, ItemKey};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use crate::protocol::WireEntry;
use crate::{ReplError, Replicator};

const BLOCK: usize = 512;
const MAX_ENTRIES_BYTES: u64 = 1 << 30;
/// Largest `ferry-bundle.json`, in bytes (it is a few hundred).
const MAX_HEADER_BYTES: u64 = 64 << 10;
/// Longest line of `entries.jsonl` (one entry), in bytes: as much as a
/// whole page of entries may be over the replication API.
const MAX_ENTRY_LINE: usize = 16 << 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BundleHeader {
    pub format: u32,
    pub instance_id: InstanceId,
    pub feed: FeedName,
    #[serde(rename = "type")]
    pub feed_type: FeedType,
    /// Changes after this seq are included ...
    pub since: i64,
    /// ... up to this one: pass it as `since` for the next bundle.
    pub until: i64,
    pub entries: u64,
    pub blobs: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ImportReport {
    pub entries: u64,
    pub applied: u64,
    pub already: u64,
    pub superseded: u64,
    /// Live items the bundle's tombstones deleted (counted before applying).
    pub deleted: u64,
    pub blobs_received: u64,
    pub until: i64,
}

fn tar_header(path: &str, size: u64) -> Result<[u8; BLOCK], ReplError> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path).map_err(|e| ReplError::Invalid(e.to_string()))?;
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    let mut out = [0u8; BLOCK];
    out.copy_from_slice(h.as_bytes());
    Ok(out)
}

fn padding(size: u64) -> Bytes {
    let rem = (size % BLOCK as u64) as usize;
    Bytes::from(vec![0u8; if rem == 0 { 0 } else { BLOCK - rem }])
}

impl Replicator {
    /// The entries a bundle of `feed` since `since` carries, and its end seq.
    async fn bundle_entries(
        &self,
        feed: &FeedRecord,
        since: i64,
    ) -> Result<(Vec<WireEntry>, i64), ReplError> {
        let meta = self.ferry().metadata().clone();
        let until = meta.last_seq(feed.id).await?;
        if since > until {
            // Such a bundle would promise changes that do not exist (and
            // its import refuses `until < since`).
            return Err(ReplError::Invalid(format!(
                "since {since} is past the last change of feed {} ({until}): nothing to export; \
                 a bundle's `until` is the next `since` (was this instance restored from an older backup?)",
                feed.name
            )));
        }
        let horizon = self.store().horizon(feed.id).await?;
        let mut out = Vec::new();
        if since < horizon || since == 0 {
            // Everything there is (tombstones pruned before `since` are gone anyway).
            let mut after: Option<ItemKey> = None;
            loop {
                let page = self.store().entries(feed.id, after.as_ref(), 2000).await?;
                let done = page.len() < 2000;
                after = page.last().map(|e| e.key.clone());
                out.extend(page.into_iter().map(WireEntry::from));
                if done {
                    return Ok((out, until));
                }
            }
        }
        let mut cursor = since;
        let mut seen = HashSet::new();
        loop {
            let changes = meta.changes_since(feed.id, cursor, 5000).await?;
            let Some(last) = changes.last().map(|c| c.seq) else {
                break;
            };
            let keys: Vec<ItemKey> = changes
                .into_iter()
                .filter(|c| seen.insert(c.key.clone()))
                .map(|c| c.key)
                .collect();
            out.extend(
                self.store()
                    .entries_for(feed.id, &keys)
                    .await?
                    .into_iter()
                    .map(WireEntry::from),
            );
            cursor = last;
        }
        Ok((out, until))
    }

    /// Streams a bundle of `feed`'s changes after `since`.
    ///
    /// A bundle is complete or it is nothing: its `until` promises every
    /// change up to there, so an item whose blob cannot be sent is not
    /// left out (the next bundle, exported `--since until`, would never
    /// carry it). Before anything is sent, every blob is looked up: one
    /// missing or known to be corrupt fails the export with
    /// [`CoreError::Damaged`] naming the blobs and the items that need
    /// them. Every blob is then verified as it streams (the store hashes
    /// whole reads); one whose bytes turn out wrong is taken out of
    /// service and the stream ends with an error naming it and its items,
    /// so the client sees a broken transfer, never a complete bundle (the
    /// import would refuse it anyway), and the next export fails up front.
    pub async fn export_bundle(
        &self,
        feed: &FeedName,
        since: i64,
    ) -> Result<(BundleHeader, ByteStream), ReplError> {
        let feed = self.ferry().feed(feed).await?;
        let (entries, until) = self.bundle_entries(&feed, since).await?;
        let mut needed_by: BTreeMap<Digest, Vec<ItemKey>> = BTreeMap::new();
        for e in &entries {
            for d in &e.blobs {
                needed_by.entry(*d).or_default().push(e.key.clone());
            }
        }
        let blobs: Vec<Digest> = needed_by.keys().copied().collect();
        self.check_bundle_blobs(&feed.name, &needed_by).await?;
        let header = BundleHeader {
            format: 1,
            instance_id: self.ferry().instance_id(),
            feed: feed.name.clone(),
            feed_type: feed.feed_type,
            since,
            until,
            entries: entries.len() as u64,
            blobs: blobs.len() as u64,
        };
        let mut lines = Vec::new();
        for e in &entries {
            serde_json::to_writer(&mut lines, e).map_err(|e| ReplError::Invalid(e.to_string()))?;
            lines.push(b'\n');
        }
        let head = serde_json::to_vec_pretty(&header).map_err(|e| ReplError::Invalid(e.to_string()))?;

        let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(8);
        let me = self.clone();
        tokio::spawn(async move {
            let send = |b: Bytes| {
                let tx = tx.clone();
                async move { tx.send(Ok(b)).await.is_ok() }
            };
            for (name, data) in [("ferry-bundle.json", head), ("entries.jsonl", lines)] {
                let Ok(h) = tar_header(name, data.len() as u64) else {
                    return;
                };
                let size = data.len() as u64;
                if !(send(Bytes::copy_from_slice(&h)).await
                    && send(Bytes::from(data)).await
                    && send(padding(size)).await)
                {
                    return;
                }
            }
            // Ends the stream with an error naming the blob and its items.
            let fail = |d: Digest, why: String| {
                let tx = tx.clone();
                let items = item_list(needed_by.get(&d).map_or(&[][..], Vec::as_slice));
                async move {
                    tracing::error!(blob = %d, items = %items, error = %why, "bundle export stopped: a blob cannot be sent");
                    let msg = format!("cannot export the bundle: blob {d}, needed by {items}: {why}");
                    let _ = tx.send(Err(std::io::Error::other(msg))).await;
                }
            };
            for d in blobs {
                let body = match me.ferry().read_blob(&d, None).await {
                    Ok(b) => b,
                    Err(e) => return fail(d, e.to_string()).await,
                };
                let Ok(h) = tar_header(&format!("blobs/{}", d.hex()), body.total_size) else {
                    return;
                };
                if !send(Bytes::copy_from_slice(&h)).await {
                    return;
                }
                // Whole reads are verified as they stream: wrong bytes end
                // in an error before the blob's last chunk.
                let mut s = body.stream;
                while let Some(chunk) = s.next().await {
                    match chunk {
                        Ok(c) => {
                            if !send(c).await {
                                return;
                            }
                        }
                        Err(e) => return fail(d, e.to_string()).await,
                    }
                }
                if !send(padding(body.total_size)).await {
                    return;
                }
            }
            let _ = send(Bytes::from(vec![0u8; 2 * BLOCK])).await;
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
        Ok((header, Box::pin(stream)))
    }

    /// Looks up every blob a bundle needs (`needed_by`: blob → items)
    /// before anything is sent: missing or corrupt ones (known damage, also
    /// recorded as such) fail the export, naming the blobs and items.
    async fn check_bundle_blobs(
        &self,
        feed: &FeedName,
        needed_by: &BTreeMap<Digest, Vec<ItemKey>>,
    ) -> Result<(), ReplError> {
        let ferry = self.ferry().clone();
        let found: Vec<(Digest, Result<u64, CoreError>)> = futures::stream::iter(needed_by.keys().copied())
            .map(move |d| {
                let ferry = ferry.clone();
                async move { (d, ferry.stored_blob_size(&d).await) }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        let mut damaged = Vec::new();
        for (d, r) in found {
            match r {
                Ok(_) => {}
                Err(CoreError::Damaged(why)) => damaged.push((d, why)),
                Err(e) => return Err(e.into()),
            }
        }
        if damaged.is_empty() {
            return Ok(());
        }
        damaged.sort_by_key(|(d, _)| *d);
        let mut msg = format!(
            "cannot export a bundle of {feed}: {} of the blobs its items need cannot be sent",
            damaged.len()
        );
        for (d, why) in damaged.iter().take(20) {
            let items = item_list(needed_by.get(d).map_or(&[][..], Vec::as_slice));
            msg.push_str(&format!("; needed by {items}: {why}"));
        }
        if damaged.len() > 20 {
            msg.push_str(&format!("; and {} more", damaged.len() - 20));
        }
        Err(ReplError::Core(CoreError::Damaged(msg)))
    }

    /// Imports a bundle into `feed`. Blobs are verified against their
    /// digests before anything is applied; entries are applied only once
    /// every blob they need is here.
    ///
    /// Deletions are guarded as a replication's are (PRODUCT.md,
    /// "deletions are safe"): a bundle whose tombstones would delete more
    /// than the default delete guard allows of the feed's live items
    /// (counting the deletions of bundles imported in the last hour) is
    /// refused whole
    /// ([`ReplError::Conflict`], HTTP 409, nothing applied) unless
    /// `confirm_deletes` is given.
    pub async fn import_bundle(
        &self,
        feed: &FeedName,
        body: ByteStream,
        confirm_deletes: bool,
    ) -> Result<ImportReport, ReplError> {
        let feed = self.ferry().feed(feed).await?;
        let mut reader = tokio_util::io::StreamReader::new(body);
        let mut header: Option<BundleHeader> = None;
        let mut entries: Vec<WireEntry> = Vec::new();
        let mut report = ImportReport::default();
        let mut first = true;
        let mut listed = false;
        // Blobs wait in staging (removed if the import is refused) and are
        // committed only once every check has passed.
        let mut pending = Vec::new();
        let mut carried: HashSet<Digest> = HashSet::new();
        loop {
            let mut block = [0u8; BLOCK];
            let read = read_block(&mut reader, &mut block).await;
            // What does not begin as a bundle is named as such, not as a
            // damaged one.
            let not_a_bundle = || {
                ReplError::Invalid(
                    "this is not a Ferry bundle (a tar file that begins with ferry-bundle.json, as `ferry bundle export` writes)"
                        .into(),
                )
            };
            match read {
                Err(_) if first => return Err(not_a_bundle()),
                Err(e) => return Err(e),
                Ok(false) if first => return Err(not_a_bundle()),
                // A tar ends with two zero blocks: without them the bundle
                // was cut at an entry's end.
                Ok(false) => {
                    return Err(bad(
                        "the bundle is truncated: it ends without tar's end-of-archive blocks",
                    ));
                }
                Ok(true) if block.iter().all(|b| *b == 0) => {
                    if first {
                        return Err(not_a_bundle());
                    }
                    let mut second = [0u8; BLOCK];
                    if !read_block(&mut reader, &mut second).await? || second.iter().any(|b| *b != 0) {
                        return Err(bad(
                            "the bundle is truncated or edited: its end-of-archive blocks are not two zero blocks",
                        ));
                    }
                    break;
                }
                Ok(true) => {}
            }
            let h = tar::Header::from_byte_slice(&block);
            let path = h
                .path()
                .map_err(|_| bad("an entry name is not valid"))?
                .to_string_lossy()
                .into_owned();
            if std::mem::take(&mut first) && (path != "ferry-bundle.json" || !tar_checksum_matches(&block)) {
                return Err(not_a_bundle());
            }
            // Every member's header is whole, as the first one's is, and
            // names a file (as `ferry bundle export` writes them).
            if !tar_checksum_matches(&block) {
                return Err(bad(&format!(
                    "the tar header of {path:?} is damaged (its checksum does not match)"
                )));
            }
            if !matches!(block[156], b'0' | 0) {
                return Err(bad(&format!(
                    "member {path:?} is not a regular file (tar type {:?})",
                    char::from(block[156])
                )));
            }
            let size = h.entry_size().map_err(|_| bad("an entry size is not valid"))?;
            match path.as_str() {
                "ferry-bundle.json" | "entries.jsonl" => {
                    let again = if path == "ferry-bundle.json" {
                        header.is_some()
                    } else {
                        std::mem::replace(&mut listed, true)
                    };
                    if again {
                        return Err(bad(&format!("it holds {path} twice")));
                    }
                    if path == "entries.jsonl" {
                        if size > MAX_ENTRIES_BYTES {
                            return Err(bad("the entry list is too large"));
                        }
                        read_entries((&mut reader).take(size), size, &mut entries).await?;
                    } else {
                        if size > MAX_HEADER_BYTES {
                            return Err(bad(&format!(
                                "ferry-bundle.json is {size} bytes; a bundle's header is at most {MAX_HEADER_BYTES}"
                            )));
                        }
                        let mut data = Vec::with_capacity(size as usize);
                        (&mut reader)
                            .take(size)
                            .read_to_end(&mut data)
                            .await
                            .map_err(io)?;
                        if (data.len() as u64) < size {
                            return Err(bad("the bundle is truncated"));
                        }
                        let hd: BundleHeader =
                            serde_json::from_slice(&data).map_err(|e| bad(&format!("header: {e}")))?;
                        if hd.format != 1 {
                            return Err(bad(&format!("bundle format {} is not supported", hd.format)));
                        }
                        if hd.since < 0 || hd.until < hd.since {
                            return Err(bad(&format!(
                                "the header's changes {}..{} are not a range of change-log positions",
                                hd.since, hd.until
                            )));
                        }
                        if hd.feed_type != feed.feed_type {
                            return Err(ReplError::Invalid(format!(
                                "the bundle holds a feed of type {}; feed {} is of type {}",
                                hd.feed_type, feed.name, feed.feed_type
                            )));
                        }
                        header = Some(hd);
                    }
                }
                p => {
                    let hex = p
                        .strip_prefix("blobs/")
                        .ok_or_else(|| bad(&format!("unexpected entry {p:?}")))?;
                    let digest =
                        Digest::from_hex(hex).map_err(|_| bad(&format!("unexpected entry {p:?}")))?;
                    if !carried.insert(digest) {
                        return Err(bad(&format!("it carries blob {digest} twice")));
                    }
                    // The blob streams from the bundle into staging through a
                    // channel, verified against its name as it goes.
                    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
                    let stream =
                        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
                    let pump = async {
                        let mut left = size;
                        let mut buf = vec![0u8; 256 * 1024];
                        while left > 0 {
                            let want = buf.len().min(left as usize);
                            let n = reader.read(&mut buf[..want]).await.map_err(io)?;
                            if n == 0 {
                                return Err(bad("the bundle is truncated"));
                            }
                            left -= n as u64;
                            if tx.send(Ok(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                                break;
                            }
                        }
                        drop(tx);
                        Ok::<(), ReplError>(())
                    };
                    let (staged, pumped) =
                        tokio::join!(self.ferry().stage(Box::pin(stream), Some(digest)), pump);
                    pumped?;
                    let staged = staged.map_err(|e| match e {
                        CoreError::Invalid(why) => ReplError::Invalid(format!(
                            "not a valid Ferry bundle: blob {digest} does not match its name ({why}); nothing of the bundle was applied"
                        )),
                        e => e.into(),
                    })?;
                    if staged.size() != size {
                        return Err(bad("the bundle is truncated"));
                    }
                    pending.push(staged);
                }
            }
            let mut pad = vec![0u8; padding(size).len()];
            reader.read_exact(&mut pad).await.map_err(io)?;
        }
        let header = header.ok_or_else(|| bad("ferry-bundle.json is missing"))?;
        if header.entries != entries.len() as u64 {
            let why = if (entries.len() as u64) < header.entries {
                "truncated or edited"
            } else {
                "edited"
            };
            return Err(bad(&format!(
                "the bundle is {why}: it holds {} entries, its header says {}",
                entries.len(),
                header.entries
            )));
        }
        if header.blobs != pending.len() as u64 {
            return Err(bad(&format!(
                "the bundle is truncated or edited: it carries {} blobs, its header says {}",
                pending.len(),
                header.blobs
            )));
        }
        let mut needed: HashSet<Digest> = HashSet::new();
        for e in &entries {
            for d in &e.blobs {
                needed.insert(*d);
                if !carried.contains(d) && !self.has_blob(d).await? {
                    return Err(bad(&format!(
                        "{} needs blob {d}, which the bundle does not carry",
                        e.key
                    )));
                }
            }
        }
        // An export carries the blobs its entries need and no other: one
        // that no entry needs means the two were edited apart.
        if let Some(d) = carried.iter().find(|d| !needed.contains(*d)) {
            return Err(bad(&format!(
                "it carries blob {d}, which none of its entries needs (its entries and blobs were edited apart)"
            )));
        }
        // Refused before anything is applied: a stamp from a clock too far
        // ahead would freeze its key everywhere the bundle goes.
        for e in &entries {
            self.ferry().check_stamp(&e.key, &e.stamp).map_err(|e| {
                ReplError::Invalid(format!(
                    "{e}; nothing of the bundle was applied: import it again once the clocks agree"
                ))
            })?;
        }
        let deleting = self.bundle_deletions(&feed, &entries).await?;
        if deleting > 0 && !confirm_deletes {
            let guard = crate::config::DeleteGuard::default();
            let live = self.store().live_count(feed.id).await?;
            // Bundles imported within the hour count together, as an
            // execution's deletions do, so a mass deletion cannot be
            // carried in several small bundles.
            let recent = self.recent_bundle_deletions(feed.id);
            if guard.trips(deleting + recent, live + recent) {
                let earlier = if recent > 0 {
                    format!(" ({recent} deleted by bundles imported in the last hour already)")
                } else {
                    String::new()
                };
                return Err(ReplError::Conflict(format!(
                    "the bundle would delete {deleting} of the {live} items of feed {}{earlier}; the limit is over {:.0}% and over {} items, and nothing of the bundle was applied. Import it with --confirm-deletes (`?confirm_deletes=true`) to delete them",
                    feed.name,
                    guard.max_share * 100.0,
                    guard.max_items
                )));
            }
        }
        report.deleted = deleting;
        for staged in pending {
            self.ferry().commit_blob(staged).await?;
            report.blobs_received += 1;
        }
        // Every entry is checked as replication checks it (a package's
        // contents against its metadata, which needs its blob stored)
        // before any is applied: one refused entry refuses the bundle
        // whole. Blobs stored for this and not referenced then are
        // collected with the garbage once their lease ends.
        let changes: Vec<_> = entries.iter().map(WireEntry::to_change).collect();
        let verdicts = self
            .ferry()
            .check_replicated_batch(&feed, &changes, false)
            .await?;
        drop(changes);
        let refused: Vec<(&WireEntry, String)> = entries
            .iter()
            .zip(verdicts)
            .filter_map(|(e, v)| v.map(|why| (e, why)))
            .collect();
        if let Some((first, why)) = refused.first() {
            let more = match refused.len() {
                1 => String::new(),
                n => format!(" ({} more entries are refused too)", n - 1),
            };
            return Err(ReplError::Invalid(format!(
                "entry {} is refused: {why}{more}; nothing of the bundle was applied",
                first.key
            )));
        }
        report.entries = entries.len() as u64;
        report.until = header.until;
        self.note_bundle_deletions(feed.id, deleting, confirm_deletes);
        for chunk in entries.chunks(500) {
            for o in self
                .ferry()
                .apply(&feed, chunk.iter().map(WireEntry::to_change).collect())
                .await?
            {
                match o {
                    ferry_store::WriteOutcome::Applied { .. } => report.applied += 1,
                    ferry_store::WriteOutcome::AlreadyApplied => report.already += 1,
                    ferry_store::WriteOutcome::Superseded { .. } => report.superseded += 1,
                }
            }
        }
        Ok(report)
    }
}

/// How long deletions by bundle imports count together against the delete
/// guard (as an execution's do), in milliseconds.
const BUNDLE_GUARD_WINDOW_MS: i64 = 3_600_000;

impl Replicator {
    /// Items of `feed` deleted by bundles imported in the last hour on this
    /// node (none counted since a confirmed import).
    fn recent_bundle_deletions(&self, feed: ferry_store::FeedId) -> u64 {
        let now = ferry_store::now_millis();
        self.0
            .bundle_deletions
            .lock()
            .ok()
            .and_then(|m| m.get(&feed).copied())
            .filter(|(since, _)| now - since <= BUNDLE_GUARD_WINDOW_MS)
            .map_or(0, |(_, n)| n)
    }

    /// Counts `n` deletions of an import into `feed` (a confirmed import
    /// starts the count afresh).
    fn note_bundle_deletions(&self, feed: ferry_store::FeedId, n: u64, confirmed: bool) {
        if n == 0 && !confirmed {
            return;
        }
        let now = ferry_store::now_millis();
        if let Ok(mut m) = self.0.bundle_deletions.lock() {
            let slot = m.entry(feed).or_insert((now, 0));
            if confirmed || now - slot.0 > BUNDLE_GUARD_WINDOW_MS {
                *slot = (now, 0);
            }
            if !confirmed {
                slot.1 += n;
            }
        }
    }

    /// How many items live in `feed` the bundle's `entries` would delete:
    /// keys whose latest entry in the bundle is a tombstone stamped later
    /// than the live item here.
    async fn bundle_deletions(&self, feed: &FeedRecord, entries: &[WireEntry]) -> Result<u64, ReplError> {
        let mut latest: std::collections::HashMap<&ItemKey, &WireEntry> = std::collections::HashMap::new();
        for e in entries {
            let slot = latest.entry(&e.key).or_insert(e);
            if e.stamp > slot.stamp {
                *slot = e;
            }
        }
        let tombs: Vec<&WireEntry> = latest.into_values().filter(|e| e.deleted).collect();
        Ok(self.live_deleted_by(feed, &tombs).await?.len() as u64)
    }

    /// The keys of `tombs` (tombstones) whose item is live in `feed` at an
    /// older stamp: what applying them would delete. Looked up 500 keys at
    /// a time.
    pub(crate) async fn live_deleted_by(
        &self,
        feed: &FeedRecord,
        tombs: &[&WireEntry],
    ) -> Result<HashSet<ItemKey>, ReplError> {
        let mut out = HashSet::new();
        for chunk in tombs.chunks(500) {
            let keys: Vec<ItemKey> = chunk.iter().map(|e| e.key.clone()).collect();
            let here: std::collections::HashMap<ItemKey, ferry_store::Entry> = self
                .store()
                .entries_for(feed.id, &keys)
                .await?
                .into_iter()
                .map(|l| (l.key.clone(), l))
                .collect();
            out.extend(
                chunk
                    .iter()
                    .filter(|t| {
                        here.get(&t.key)
                            .is_some_and(|l| l.live.is_some() && l.stamp < t.stamp)
                    })
                    .map(|t| t.key.clone()),
            );
        }
        Ok(out)
    }
}

/// Names the items that need a blob (the first few, and how many more).
fn item_list(items: &[ItemKey]) -> String {
    let mut out: Vec<String> = items.iter().take(5).map(|k| k.to_string()).collect();
    if items.len() > 5 {
        out.push(format!("{} more", items.len() - 5));
    }
    match out.len() {
        0 => "no item".into(),
        1 => format!("item {}", out[0]),
        _ => format!("items {}", out.join(", ")),
    }
}

/// Whether a tar header block's checksum field matches its bytes (POSIX
/// ustar: the sum of all 512 bytes with the 8-byte checksum field taken as
/// spaces, written in octal).
fn tar_checksum_matches(block: &[u8; BLOCK]) -> bool {
    let field = &block[148..156];
    let stored = std::str::from_utf8(field)
        .ok()
        .map(|t| t.trim_matches(|c: char| c == '\0' || c == ' '))
        .and_then(|t| u32::from_str_radix(t, 8).ok());
    let sum: u32 = block
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                u32::from(b' ')
            } else {
                u32::from(*b)
            }
        })
        .sum();
    stored == Some(sum)
}

fn bad(why: &str) -> ReplError {
    ReplError::Invalid(format!("not a valid Ferry bundle: {why}"))
}

fn io(e: std::io::Error) -> ReplError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        return bad("the bundle is truncated");
    }
    ReplError::Invalid(format!("not a valid Ferry bundle: {e}"))
}

/// Parses `entries.jsonl` (`size` bytes of JSON lines, one [`WireEntry`]
/// each) into `out` as it is read: one line at a time is held, and a line
/// longer than [`MAX_ENTRY_LINE`] is refused before it is all read.
async fn read_entries<R: AsyncBufRead + Unpin>(
    mut r: R,
    size: u64,
    out: &mut Vec<WireEntry>,
) -> Result<(), ReplError> {
    let mut line: Vec<u8> = Vec::new();
    let mut read: u64 = 0;
    let mut parse = |line: &mut Vec<u8>| -> Result<(), ReplError> {
        if !line.is_empty() {
            out.push(serde_json::from_slice(line).map_err(|e| {
                bad(&format!(
                    "entry {} of entries.jsonl ({size} bytes as its tar header says) is not an entry: {e}",
                    out.len() + 1
                ))
            })?);
            line.clear();
        }
        Ok(())
    };
    loop {
        let buf = r.fill_buf().await.map_err(io)?;
        if buf.is_empty() {
            break;
        }
        let end = buf.iter().position(|b| *b == b'\n');
        let piece = &buf[..end.unwrap_or(buf.len())];
        if line.len() + piece.len() > MAX_ENTRY_LINE {
            return Err(bad(&format!(
                "entry {} of entries.jsonl is longer than {} MiB",
                out.len() + 1,
                MAX_ENTRY_LINE >> 20
            )));
        }
        line.extend_from_slice(piece);
        let used = piece.len() + usize::from(end.is_some());
        r.consume(used);
        read += used as u64;
        if end.is_some() {
            parse(&mut line)?;
        }
    }
    // Cut inside the list: said as such, not as a line that ends early.
    if read < size {
        return Err(bad("the bundle is truncated"));
    }
    parse(&mut line)?;
    Ok(())
}

/// Reads one tar block; false at a clean end of input.
async fn read_block<R: AsyncRead + Unpin>(r: &mut R, block: &mut [u8; BLOCK]) -> Result<bool, ReplError> {
    let mut filled = 0;
    while filled < BLOCK {
        let n = r.read(&mut block[filled..]).await.map_err(io)?;
        if n == 0 {
            return if filled == 0 {
                Ok(false)
            } else {
                Err(bad("the bundle is truncated"))
            };
        }
        filled += n;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const ENTRY: &str = r#"{"key":"a.txt","stamp":{"time":65536,"origin":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"},"deleted":true}"#;

    async fn entries_of(bytes: &[u8], size: u64) -> Result<Vec<WireEntry>, ReplError> {
        let mut out = Vec::new();
        // Read in small pieces, so lines span reads.
        let r = tokio::io::BufReader::with_capacity(7, bytes);
        read_entries(r, size, &mut out).await.map(|()| out)
    }

    #[tokio::test]
    async fn entries_are_read_line_by_line_and_a_long_line_is_refused() {
        let list = format!("{ENTRY}\n{ENTRY}\n\n{ENTRY}");
        let got = entries_of(list.as_bytes(), list.len() as u64).await.unwrap();
        assert_eq!(got.len(), 3);
        // Fewer bytes than the tar header said: truncated.
        let err = entries_of(list.as_bytes(), list.len() as u64 + 10)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        // A line that is not an entry is named by its number.
        let list = format!("{ENTRY}\n{{\"key\":1}}\n");
        let err = entries_of(list.as_bytes(), list.len() as u64).await.unwrap_err();
        assert!(err.to_string().contains("entry 2"), "{err}");
        // One line past the limit is refused before it is all held.
        let long = format!("{}\n", " ".repeat(MAX_ENTRY_LINE + 1));
        let err = entries_of(long.as_bytes(), long.len() as u64).await.unwrap_err();
        assert!(err.to_string().contains("longer than 16 MiB"), "{err}");
        // At the limit it is read (and must then be an entry).
        let padded = format!("{ENTRY}{}\n", " ".repeat(MAX_ENTRY_LINE - ENTRY.len()));
        let got = entries_of(padded.as_bytes(), padded.len() as u64).await.unwrap();
        assert_eq!(got.len(), 1);
    }
}
