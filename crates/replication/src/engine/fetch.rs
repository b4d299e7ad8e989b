//! Moving blobs from the other side: one request per blob with any v1
//! peer, or, when the peer offers it ([`crate::batch::BLOB_BATCH`]), many
//! blobs per request in a few parallel streams, so the round trips a page
//! costs do not grow with its number of blobs. Either way each transfer
//! holds its digest's claim, resumes from what a broken attempt left,
//! counts against the bandwidth cap and is verified before it is committed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ferry_store::Transfer;
use ferry_types::Digest;
use futures::{StreamExt, TryStreamExt};
use tokio::task::JoinHandle;

use super::*;
use crate::ReplError;
use crate::batch::BlobWant;

/// Parallel batch requests a page's blobs are spread over (a single TCP
/// stream over a long link is held back by its window).
const BATCH_STREAMS: usize = 4;
/// Fewest blobs worth a batch stream of their own.
const BATCH_MIN: usize = 32;
/// Attempts of a batch before its transport error ends the execution.
const BATCH_ATTEMPTS: u32 = 4;
/// A batch the peer answers 429 (its token holds its share of transfers)
/// is asked again after this pause (the `Retry-After` Ferry sends), for
/// up to [`BUSY_WAIT`] in all before the execution fails.
pub(super) const BUSY_PAUSE: std::time::Duration = std::time::Duration::from_secs(5);
pub(super) const BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(300);
/// Frames up to this many bytes (starting at byte 0) are read whole into
/// memory and committed in groups ([`Run::flush_small`]).
const SMALL_FRAME: u64 = 1 << 20;
/// Most blobs, and bytes, committed in one group.
const SMALL_GROUP: usize = 128;
const SMALL_GROUP_BYTES: usize = 8 << 20;
/// Longest a small blob waits in memory for its group to fill: past it
/// the group is committed, so a crash (or a slow, capped link that takes
/// seconds to fill a group) loses at most this much of what arrived.
const SMALL_GROUP_AGE: std::time::Duration = std::time::Duration::from_millis(500);

/// How long a blob source may take to answer, or to send its next bytes,
/// before it counts as failed (and the other side is asked instead).
pub(super) const SOURCE_STALL: std::time::Duration = std::time::Duration::from_secs(15);
/// Fewest bytes per second a blob source must send, over each
/// [`SOURCE_STALL`] of waiting for its bytes (128 KiB/s, 1 Mbit/s): one
/// slower than that is left for the other instance, which then sends what
/// the source had not (from the byte it reached).
pub(super) const SOURCE_MIN_RATE: u64 = 128 << 10;

/// Large frames of one batch stream being stored at once while the next
/// frames are read (their bytes wait in memory, 8 chunks each at most).
const STORING_AHEAD: usize = 3;

/// A large frame handed from the reading to the storing side of
/// [`Run::fetch_group`]: its digest, the offset it resumed from, its bytes
/// so far, and the storing of them (transfer, verification, commit).
struct Storing<'a> {
    digest: Digest,
    offset: u64,
    received: Arc<AtomicU64>,
    stored: std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ReplError>> + Send + 'a>>,
}

/// A group of small blobs being committed: their sizes, and each one's
/// outcome.
type SmallCommit =
    JoinHandle<Result<(Vec<(Digest, u64)>, Vec<Result<(), ferry_core::CoreError>>), ReplError>>;

/// A blob source of the running execution
/// ([`crate::config::BlobSource`]).
pub(super) struct Source {
    pub url: String,
    pub remote: Remote,
    /// It failed during this execution: not asked again until the next.
    pub down: std::sync::atomic::AtomicBool,
    /// Its refusal of a blob was logged in this execution.
    pub refused: std::sync::atomic::AtomicBool,
}

/// What fetching a page's blobs came to.
#[derive(Default)]
pub(super) struct Fetched {
    /// Blobs committed.
    pub blobs: u64,
    /// Bytes that crossed the wire for them.
    pub bytes: u64,
    /// Of `bytes`, those that came from blob sources.
    pub source_bytes: u64,
    /// What the execution log should say (a blob source that failed).
    pub notes: Vec<String>,
    /// The blobs committed (or found here), not yet flushed: made durable
    /// together, by one [`ferry_store::BlobStore::sync`] of the page, before
    /// any item relies on them. A flush per blob as it arrived cost a
    /// journal commit and a device cache flush each, which held up the
    /// writes still coming (952 `fdatasync`s of 17 ms for 1,000 blobs).
    pub unsynced: UnsyncedBlobs,
    /// Not on the other side (its item changed there, or the blob is lost).
    pub gone: HashSet<Digest>,
    /// The other side cannot serve them intact, or they arrived wrong.
    pub damaged: HashMap<Digest, String>,
}

impl Fetched {
    fn one(&mut self, r: &crate::Replicator, bytes: u64, d: Digest) {
        self.blobs += 1;
        self.bytes += bytes;
        self.unsynced.hold(r, [d]);
    }

    fn extend(&mut self, other: Fetched) {
        self.blobs += other.blobs;
        self.bytes += other.bytes;
        self.source_bytes += other.source_bytes;
        self.notes.extend(other.notes);
        self.unsynced.merge(other.unsynced);
        self.gone.extend(other.gone);
        self.damaged.extend(other.damaged);
    }
}

/// Blobs a pull committed and did not flush yet ([`Fetched::unsynced`]).
/// The page takes them ([`UnsyncedBlobs::take`]) for its one flush before
/// its entries are applied. Those still held when this is dropped — a page
/// or an execution that failed or was stopped before applying them — are
/// flushed in the background (on the replicator's kept tasks, which a
/// graceful stop waits for): a later execution that finds such a blob
/// here relies on it without flushing it again.
#[derive(Default)]
pub(super) struct UnsyncedBlobs {
    digests: Vec<Digest>,
    keeper: Option<crate::Replicator>,
}

impl UnsyncedBlobs {
    fn hold(&mut self, r: &crate::Replicator, digests: impl IntoIterator<Item = Digest>) {
        self.digests.extend(digests);
        if self.keeper.is_none() {
            self.keeper = Some(r.clone());
        }
    }

    fn merge(&mut self, mut other: UnsyncedBlobs) {
        self.digests.append(&mut other.digests);
        if self.keeper.is_none() {
            self.keeper = other.keeper.take();
        }
    }

    /// The blobs, each once, for the caller to flush.
    pub(super) fn take(&mut self) -> Vec<Digest> {
        let mut digests = std::mem::take(&mut self.digests);
        digests.sort_unstable();
        digests.dedup();
        digests
    }
}

impl Drop for UnsyncedBlobs {
    fn drop(&mut self) {
        let digests = self.take();
        let Some(r) = self.keeper.take() else { return };
        if digests.is_empty() || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let store = r.ferry().blob_store().clone();
        r.keep(async move {
            if let Err(e) = store.sync(&digests).await {
                tracing::warn!(target: "replication", error = %e, "flushing blobs of a page that was not applied failed");
            }
        });
    }
}

/// Small blobs read whole from a batch stream and not yet handed to a
/// commit ([`Run::flush_small`]). Whatever still holds them when it is
/// dropped — an execution stopped, or cut off by an error elsewhere — is
/// committed (each verified against its digest, then flushed) in the
/// background, so the next execution does not move those bytes again.
struct SmallBuffer {
    ferry: ferry_core::Ferry,
    /// Where the commit on drop runs (awaited by a graceful stop).
    keeper: crate::Replicator,
    blobs: Vec<(Digest, bytes::Bytes, Transfer)>,
    /// The bytes of `blobs`.
    bytes: usize,
    /// When the oldest of `blobs` arrived.
    since: Option<std::time::Instant>,
}

impl SmallBuffer {
    /// Adds a blob read whole.
    fn push(&mut self, d: Digest, bytes: bytes::Bytes, transfer: Transfer) {
        self.since.get_or_insert_with(std::time::Instant::now);
        self.bytes += bytes.len();
        self.blobs.push((d, bytes, transfer));
    }

    /// Takes the blobs held, leaving the buffer empty.
    fn take(&mut self) -> Vec<(Digest, bytes::Bytes, Transfer)> {
        self.bytes = 0;
        self.since = None;
        std::mem::take(&mut self.blobs)
    }

    /// Whether the buffered blobs should be committed now: the group is
    /// full, or its oldest blob has waited [`SMALL_GROUP_AGE`].
    fn due(&self) -> bool {
        self.blobs.len() >= SMALL_GROUP
            || self.bytes >= SMALL_GROUP_BYTES
            || self.since.is_some_and(|t| t.elapsed() >= SMALL_GROUP_AGE)
    }
}

impl Drop for SmallBuffer {
    fn drop(&mut self) {
        let batch = self.take();
        if batch.is_empty() {
            return;
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let ferry = self.ferry.clone();
        self.keeper.keep(async move {
            let (blobs, claims): (Vec<(Digest, bytes::Bytes)>, Vec<Transfer>) =
                batch.into_iter().map(|(d, b, t)| ((d, b), t)).unzip();
            let digests: Vec<Digest> = blobs.iter().map(|(d, _)| *d).collect();
            match ferry.commit_small_blobs(blobs).await {
                Ok(results) => {
                    let stored: Vec<Digest> = digests
                        .into_iter()
                        .zip(results)
                        .filter_map(|(d, r)| r.is_ok().then_some(d))
                        .collect();
                    if let Err(e) = ferry.blob_store().sync(&stored).await {
                        tracing::warn!(target: "replication", error = %e, "flushing small blobs kept from a stopped transfer failed");
                    }
                }
                Err(e) => {
                    tracing::warn!(target: "replication", error = %e, "small blobs received before a stop could not be kept");
                }
            }
            drop(claims);
        });
    }
}

/// What one batch stream came to; `retry` did not arrive whole.
#[derive(Default)]
struct Group {
    done: Fetched,
    retry: Vec<Digest>,
    error: Option<ReplError>,
}

impl Run<'_> {
    /// Fetches `need` (digests not stored here), the best way the other
    /// side offers. Errors: a broken link after retries, or storage here.
    pub(super) async fn fetch_blobs(&self, need: Vec<Digest>) -> Result<Fetched, ReplError> {
        let mut out = Fetched::default();
        // Blobs the page carried inline first: no request at all.
        let (inline, mut need): (Vec<Digest>, Vec<Digest>) =
            need.into_iter().partition(|d| self.inline.contains_key(d));
        if !inline.is_empty() {
            need.extend(self.store_inline(inline, &mut out).await?);
        }
        if !need.is_empty() && !self.sources.is_empty() {
            need = self.fetch_from_sources(need, &mut out).await?;
        }
        if need.is_empty() {
            return Ok(out);
        }
        if self.batch {
            let (done, left, error) = self.fetch_batched(&self.remote, need, BATCH_ATTEMPTS).await?;
            out.extend(done);
            if !left.is_empty() {
                return Err(error.unwrap_or_else(|| {
                    ReplError::Transport(format!("{} blobs did not arrive whole", left.len()))
                }));
            }
            return Ok(out);
        }
        let mut pending = futures::stream::FuturesUnordered::new();
        let mut queue = need.iter();
        loop {
            while pending.len() < BLOB_PARALLELISM {
                let Some(d) = queue.next() else { break };
                let fetch = self.fetch_blob(*d);
                pending.push(async move { (*d, fetch.await) });
            }
            match pending.next().await {
                Some((d, Ok(n))) => {
                    self.arrived(&[d]);
                    out.one(self.r, n, d)
                }
                Some((d, Err(ReplError::Remote { status: 404, .. }))) => {
                    out.gone.insert(d);
                }
                // The other side has the blob but cannot serve it intact
                // (missing file, corrupt bytes): its item waits, the
                // others go on.
                Some((d, Err(ReplError::Remote { status, message }))) if status >= 500 => {
                    out.damaged.insert(
                        d,
                        format!("the other instance cannot serve blob {d} ({status}: {message})"),
                    );
                }
                Some((d, Err(ReplError::Core(ferry_core::CoreError::Invalid(m))))) => {
                    out.damaged
                        .insert(d, format!("blob {d} arrived wrong from the other instance: {m}"));
                }
                Some((_, Err(e))) => return Err(e),
                None => break,
            }
        }
        Ok(out)
    }

    /// Stores the blobs that came inline in a page, verified against their
    /// digests, as one group; returns those whose bytes were wrong (they
    /// are then asked for as usual).
    async fn store_inline(&self, digests: Vec<Digest>, out: &mut Fetched) -> Result<Vec<Digest>, ReplError> {
        let blobs: Vec<(Digest, bytes::Bytes)> = digests
            .iter()
            .filter_map(|d| self.inline.get(d).map(|b| (*d, b.clone())))
            .collect();
        let sizes: Vec<u64> = blobs.iter().map(|(_, b)| b.len() as u64).collect();
        let results = self.r.ferry().commit_small_blobs(blobs).await?;
        let mut stored = Vec::new();
        let mut wrong = Vec::new();
        let mut n = 0;
        for ((d, size), r) in digests.into_iter().zip(sizes).zip(results) {
            match r {
                Ok(()) => {
                    stored.push(d);
                    n += size;
                }
                Err(ferry_core::CoreError::Invalid(m)) => {
                    tracing::warn!(target: "replication", blob = %d, error = %m, "an inline blob did not verify; fetching it");
                    wrong.push(d);
                }
                Err(e) => return Err(e.into()),
            }
        }
        // What earlier, broken transfers of them left is not needed now.
        let store = self.r.ferry().blob_store().clone();
        for t in store.begin_transfers(&stored).await? {
            if t.offset() > 0 {
                store.discard_transfer(t).await?;
            }
        }
        self.progress.bytes.fetch_add(n, Ordering::Relaxed);
        metrics::counter!("ferry_replication_bytes_total", "replication" => self.rec.name.clone(), "direction" => "pull")
            .increment(n);
        self.arrived(&stored);
        out.blobs += stored.len() as u64;
        out.bytes += n;
        out.unsynced.hold(self.r, stored);
        Ok(wrong)
    }

    /// Starts committing the small blobs read whole so far as one group,
    /// in the background (their claims go when it is done), once the group
    /// before it is settled: one group in flight per stream, so the disk
    /// work overlaps the reading of the next frames.
    async fn flush_small(
        &self,
        small: &mut SmallBuffer,
        inflight: &mut Option<SmallCommit>,
        g: &mut Group,
    ) -> Result<(), ReplError> {
        self.settle_small(inflight, g).await?;
        let batch = small.take();
        if batch.is_empty() {
            return Ok(());
        }
        let ferry = self.r.ferry().clone();
        *inflight = Some(tokio::spawn(async move {
            let (blobs, claims): (Vec<(Digest, bytes::Bytes)>, Vec<Transfer>) =
                batch.into_iter().map(|(d, b, t)| ((d, b), t)).unzip();
            let sizes: Vec<(Digest, u64)> = blobs.iter().map(|(d, b)| (*d, b.len() as u64)).collect();
            let results = ferry.commit_small_blobs(blobs).await;
            drop(claims);
            Ok((sizes, results?))
        }));
        Ok(())
    }

    /// Waits for the group [`Self::flush_small`] started, if any, and
    /// counts it into `g`: a blob whose bytes were wrong is marked damaged
    /// alone; the others are flushed with the page.
    async fn settle_small(&self, inflight: &mut Option<SmallCommit>, g: &mut Group) -> Result<(), ReplError> {
        let Some(handle) = inflight.take() else {
            return Ok(());
        };
        let (sizes, results) = handle
            .await
            .map_err(|e| ReplError::Transport(format!("committing small blobs: {e}")))??;
        let mut stored = Vec::new();
        let mut n = 0;
        for ((d, size), r) in sizes.into_iter().zip(results) {
            match r {
                Ok(()) => {
                    stored.push(d);
                    n += size;
                }
                Err(ferry_core::CoreError::Invalid(m)) => {
                    g.done
                        .damaged
                        .insert(d, format!("blob {d} arrived wrong from the other instance: {m}"));
                }
                Err(e) => return Err(e.into()),
            }
        }
        metrics::counter!("ferry_replication_bytes_total", "replication" => self.rec.name.clone(), "direction" => "pull")
            .increment(n);
        self.arrived(&stored);
        g.done.blobs += stored.len() as u64;
        g.done.bytes += n;
        g.done.unsynced.hold(self.r, stored);
        Ok(())
    }

    /// Keeps the blobs a page carried inline, for [`Self::fetch_blobs`].
    pub(super) fn take_inline(&mut self, inline: Vec<crate::protocol::InlineBlob>) {
        use base64::Engine as _;
        self.inline.clear();
        for b in inline {
            if let Ok(data) = base64::engine::general_purpose::STANDARD.decode(b.data.as_bytes()) {
                self.inline.insert(b.digest, bytes::Bytes::from(data));
            }
        }
    }

    /// A page from another instance than the one handshaken with (it was
    /// replaced behind the same URL while a handshake was reused) ends the
    /// execution; the next one handshakes afresh.
    pub(super) fn check_same_remote(&self, page: &ChangesPage) -> Result<(), ReplError> {
        match (page.instance_id, self.remote_id) {
            (Some(now), Some(known)) if now != known => {
                self.r.forget_handshake(self.rec.id);
                Err(ReplError::Conflict(format!(
                    "the other side is now instance {now}, not {known}; the next execution handshakes again"
                )))
            }
            _ => Ok(()),
        }
    }

    /// Asks the blob sources, in order, for the blobs in `need`; returns
    /// those none of them delivered (the peer is asked for them). A
    /// source's refusal or lack of a blob only moves it on to the next; a
    /// source that fails (unreachable, cut, older than `blobs/batch`) is
    /// not asked again in this execution, and what it left half-sent is
    /// resumed from the byte it reached — every blob is verified against
    /// its digest whoever sent it.
    async fn fetch_from_sources(
        &self,
        mut need: Vec<Digest>,
        out: &mut Fetched,
    ) -> Result<Vec<Digest>, ReplError> {
        for src in &self.sources {
            if need.is_empty() {
                break;
            }
            if src.down.load(Ordering::Relaxed) {
                continue;
            }
            let asked = need.len();
            let (mut got, mut left, error) = self.fetch_batched(&src.remote, need, 1).await?;
            // The first refusal's words (403: it sends no content; 404: its
            // feeds do not hold the blob), said once for the execution.
            let refusals = std::mem::take(&mut got.notes);
            if let Some(why) = refusals.first()
                && !src.refused.swap(true, Ordering::Relaxed)
            {
                out.notes.push(format!(
                    "blob source {} did not send {} of the blobs asked of it ({why}); they come from the other instance",
                    src.url,
                    got.gone.len()
                ));
            }
            left.extend(got.gone.drain());
            let damaged = got.damaged.len();
            let mut first_damage = None;
            for (d, why) in got.damaged.drain() {
                tracing::warn!(target: "replication", replication = %self.rec.name, source = %src.url, blob = %d, "{why}");
                first_damage.get_or_insert(why);
                left.push(d);
            }
            // A source that sends what does not verify is failing (a rotten
            // cache, a hostile one): said, counted, and left out for the
            // rest of the execution, as when it cannot be reached.
            let error = match (error, first_damage) {
                (Some(e), _) => Some(e),
                (None, Some(why)) => Some(ReplError::Transport(format!(
                    "{damaged} of the blobs it sent did not verify: {why}"
                ))),
                (None, None) => None,
            };
            if let Some(e) = error {
                src.down.store(true, Ordering::Relaxed);
                metrics::counter!("ferry_replication_source_failures_total", "replication" => self.rec.name.clone(), "source" => src.url.clone())
                    .increment(1);
                out.notes.push(format!(
                    "blob source {} failed ({e}); {} blobs asked of it come from the other instance instead",
                    src.url,
                    left.len()
                ));
            }
            metrics::counter!("ferry_replication_source_bytes_total", "replication" => self.rec.name.clone(), "source" => src.url.clone())
                .increment(got.bytes);
            tracing::debug!(target: "replication", source = %src.url, asked, delivered = got.blobs, bytes = got.bytes, "blob source");
            got.source_bytes = got.bytes;
            out.extend(got);
            need = left;
        }
        Ok(need)
    }

    /// [`Self::fetch_blobs`] through `blobs/batch` of `remote` (the peer,
    /// or a blob source): the digests are spread over up to
    /// [`BATCH_STREAMS`] requests at once; what a cut left unfinished is
    /// asked for again (from the byte it reached), `attempts` times in all.
    /// Returns what arrived, what did not, and the last error that broke a
    /// request.
    async fn fetch_batched(
        &self,
        remote: &Remote,
        need: Vec<Digest>,
        attempts: u32,
    ) -> Result<(Fetched, Vec<Digest>, Option<ReplError>), ReplError> {
        let mut out = Fetched::default();
        let mut todo = need;
        let mut attempt = 0;
        let mut waited = std::time::Duration::ZERO;
        let peer = std::ptr::eq(remote, &self.remote);
        loop {
            let streams = todo.len().div_ceil(BATCH_MIN).clamp(1, BATCH_STREAMS);
            let mut groups: Vec<Vec<Digest>> = vec![Vec::new(); streams];
            for (i, d) in todo.iter().enumerate() {
                groups[i % streams].push(*d);
            }
            let results =
                futures::future::join_all(groups.into_iter().map(|g| self.fetch_group(remote, g))).await;
            let mut retry = Vec::new();
            let mut error = None;
            for r in results {
                let g = r?;
                out.extend(g.done);
                retry.extend(g.retry);
                if g.error.is_some() {
                    error = g.error;
                }
            }
            if retry.is_empty() {
                return Ok((out, retry, error));
            }
            // The peer is busy with this token's other transfers (a fleet
            // sharing one token, or someone holding its share): not a
            // failed attempt; asked again after the pause it asks for, for
            // up to BUSY_WAIT in all.
            if peer
                && waited < BUSY_WAIT
                && let Some(e @ ReplError::Remote { status: 429, .. }) = &error
            {
                tracing::warn!(target: "replication", replication = %self.rec.name, blobs = retry.len(), error = %e, "the other instance is busy; asking again in {} s", BUSY_PAUSE.as_secs());
                if waited.is_zero() {
                    // Said in the execution's log too, once.
                    out.notes.push(format!(
                        "the other instance is busy ({e}); its blobs were asked for again every {} s",
                        BUSY_PAUSE.as_secs()
                    ));
                }
                tokio::time::sleep(BUSY_PAUSE).await;
                waited += BUSY_PAUSE;
                todo = retry;
                continue;
            }
            attempt += 1;
            if attempt >= attempts {
                return Ok((out, retry, error));
            }
            if let Some(e) = &error {
                tracing::warn!(target: "replication", blobs = retry.len(), attempt, error = %e, "blob batch broke; resuming");
                tokio::time::sleep(std::time::Duration::from_millis(200 * u64::from(attempt))).await;
            }
            todo = retry;
        }
    }

    /// One batch request: claims the digests (in digest order, so two
    /// executions claiming overlapping sets never wait on each other in a
    /// circle), asks for the ones still missing from the byte their
    /// transfer reached, and stores each frame as it arrives.
    async fn fetch_group(&self, remote: &Remote, mut digests: Vec<Digest>) -> Result<Group, ReplError> {
        let store = self.r.ferry().blob_store().clone();
        let limit = self.r.ferry().config().max_upload_bytes.max(u64::MAX / 2);
        digests.sort();
        digests.dedup();
        // Claimed first, then looked up: one stored by another execution
        // while this waited for its claim is not fetched again.
        let transfers = store.begin_transfers(&digests).await?;
        let present = self.r.ferry().present_blobs(&digests).await?;
        let mut claims: HashMap<Digest, Transfer> = HashMap::new();
        let mut wants = Vec::new();
        for transfer in transfers {
            let d = transfer.digest();
            if present.contains(&d) {
                continue;
            }
            self.skip_resumed(d, transfer.offset());
            wants.push(BlobWant {
                digest: d,
                offset: transfer.offset(),
            });
            claims.insert(d, transfer);
        }
        let mut g = Group::default();
        if wants.is_empty() {
            return Ok(g);
        }
        let mut small = SmallBuffer {
            ferry: self.r.ferry().clone(),
            keeper: self.r.clone(),
            blobs: Vec::new(),
            bytes: 0,
            since: None,
        };
        let mut inflight: Option<SmallCommit> = None;
        let from_source = !std::ptr::eq(remote, &self.remote);
        let mut reader = match remote.fetch_batch(wants).await {
            Ok(r) => r,
            // A blob source that refuses the whole request (wrong token,
            // no `blobs/batch`) fails like one that cannot be reached.
            Err(e @ ReplError::Transport(_)) => {
                g.retry = claims.into_keys().collect();
                g.error = Some(e);
                return Ok(g);
            }
            // (A source that is this very instance answers 409, Refused.)
            Err(
                e @ (ReplError::Unauthorized(_)
                | ReplError::Forbidden(_)
                | ReplError::Remote { .. }
                | ReplError::Refused(_)),
            ) if from_source => {
                g.retry = claims.into_keys().collect();
                g.error = Some(e);
                return Ok(g);
            }
            // The other instance holds its share of this token's transfers
            // (429): asked again after a pause ([`Self::fetch_batched`]).
            Err(e @ ReplError::Remote { status: 429, .. }) => {
                g.retry = claims.into_keys().collect();
                g.error = Some(e);
                return Ok(g);
            }
            Err(e) => return Err(e),
        };
        // Large frames are stored (written, verified, committed) while the
        // frames after them are read: `reading` hands each one to `storing`
        // with the receiving end of its bytes, and `storing` keeps up to
        // [`STORING_AHEAD`] of them going. Both run in this task, so a
        // chunk passes from one to the other without a thread's wake-up.
        let (jobs_tx, mut jobs_rx) = tokio::sync::mpsc::channel::<Storing<'_>>(1);
        // Frames whose bytes broke off: their outcome is a retry, whatever
        // storing them came to.
        let mut broken: HashSet<Digest> = HashSet::new();
        let reading = async {
            loop {
                let header = match reader.header().await {
                    Ok(Some(h)) => h,
                    Ok(None) => break,
                    Err(e) => {
                        g.error = Some(ReplError::Transport(e.to_string()));
                        break;
                    }
                };
                let d = header.digest;
                let Some(transfer) = claims.remove(&d) else {
                    g.error = Some(ReplError::Transport(format!(
                        "the other instance sent blob {d}, which was not asked for"
                    )));
                    break;
                };
                if let Some(status) = header.status {
                    let message = header.error.unwrap_or_default();
                    match status {
                        404 | 403 => {
                            if from_source && g.done.notes.is_empty() {
                                g.done.notes.push(format!("{status}: {message}"));
                            }
                            g.done.gone.insert(d);
                        }
                        // Asked from past its end: what is held here is wrong.
                        416 => {
                            // Counted as here already when claimed: they
                            // are not, and the whole blob moves.
                            self.add_to_go(transfer.offset());
                            store.discard_transfer(transfer).await?;
                            g.retry.push(d);
                        }
                        _ => {
                            g.done.damaged.insert(
                                d,
                                format!("the other instance cannot serve blob {d} ({status}: {message})"),
                            );
                        }
                    }
                    continue;
                }
                if header.offset != transfer.offset() {
                    // Asked for again (of the peer, when a source sent it).
                    g.retry.push(d);
                    g.error = Some(ReplError::Transport(format!(
                        "the other instance sent blob {d} from byte {}, not {}",
                        header.offset,
                        transfer.offset()
                    )));
                    break;
                }
                // A frame runs from its offset to the blob's end: one of
                // another length (a source sending endless bytes) is
                // refused before any of its bytes is written, and the blob
                // is asked for again (of the peer, when a source sent it).
                if let Some(&size) = self.sizes.get(&d)
                    && header.offset.checked_add(header.length) != Some(size)
                {
                    g.retry.push(d);
                    g.error = Some(ReplError::Transport(format!(
                        "it sent {} bytes from byte {} of blob {d}, which is {size} bytes long",
                        header.length, header.offset
                    )));
                    break;
                }
                if self.unbudgeted {
                    self.add_to_go(header.length);
                }
                if header.offset == 0 && header.length <= SMALL_FRAME {
                    match reader.read_whole(header.length).await {
                        Ok(bytes) => {
                            let n = bytes.len();
                            crate::throttle::pace(&self.rate, n as u64).await;
                            self.progress.bytes.fetch_add(n as u64, Ordering::Relaxed);
                            // Its item is gone through once its bytes
                            // are here (they are verified as they commit).
                            self.arrived(&[d]);
                            small.push(d, bytes, transfer);
                            if small.due() {
                                self.flush_small(&mut small, &mut inflight, &mut g).await?;
                            }
                            continue;
                        }
                        Err((arrived, e)) => {
                            // Kept in its partial file, as a large frame's
                            // bytes are: the next request resumes from there.
                            self.progress
                                .bytes
                                .fetch_add(arrived.len() as u64, Ordering::Relaxed);
                            let broken = std::io::Error::new(e.kind(), e.to_string());
                            let body: ferry_store::ByteStream =
                                Box::pin(futures::stream::iter([Ok(arrived), Err(broken)]));
                            let _ = store.continue_transfer(transfer, body, limit).await;
                            g.retry.push(d);
                            g.error = Some(ReplError::Transport(e.to_string()));
                            break;
                        }
                    }
                }
                // Small blobs waiting behind a large frame are committed
                // once they are due, not after it.
                if small.due() {
                    self.flush_small(&mut small, &mut inflight, &mut g).await?;
                }
                let (tx, rx) = tokio::sync::mpsc::channel(8);
                let progress = self.progress.clone();
                let received = Arc::new(AtomicU64::new(0));
                let counter = received.clone();
                let counted = crate::batch::channel_stream(rx).inspect_ok(move |chunk| {
                    progress.bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                });
                let throttled = crate::throttle::limit(Box::pin(counted), self.rate.clone());
                let store = store.clone();
                let stored = Box::pin(async move {
                    let staged = store.continue_transfer(transfer, throttled, limit).await?;
                    self.r.ferry().commit_blob(staged).await?;
                    Ok::<_, ReplError>(())
                });
                let job = Storing {
                    digest: d,
                    offset: header.offset,
                    received,
                    stored,
                };
                if jobs_tx.send(job).await.is_err() {
                    break; // storing failed; its error is below
                }
                if let Err(e) = reader.pump(header.length, tx).await {
                    // What arrived is kept; the next request resumes from it.
                    broken.insert(d);
                    g.retry.push(d);
                    g.error = Some(ReplError::Transport(e.to_string()));
                    break;
                }
            }
            drop(jobs_tx);
            // Small blobs read whole are committed whatever ended the body.
            self.flush_small(&mut small, &mut inflight, &mut g).await?;
            self.settle_small(&mut inflight, &mut g).await?;
            Ok::<_, ReplError>(())
        };
        let storing = async {
            let mut going = futures::stream::FuturesUnordered::new();
            let mut stored = Vec::new();
            let mut open = true;
            loop {
                tokio::select! {
                    job = jobs_rx.recv(), if open && going.len() < STORING_AHEAD => match job {
                        Some(job) => going.push(async move {
                            let outcome = job.stored.await;
                            (job.digest, job.offset, job.received.load(Ordering::Relaxed), outcome)
                        }),
                        None => open = false,
                    },
                    Some(done) = going.next(), if !going.is_empty() => {
                        // A failure of the store here (not of the bytes)
                        // stops the reading: later frames would fail alike.
                        let fatal = matches!(&done.3, Err(e) if !matches!(e, ReplError::Core(ferry_core::CoreError::Invalid(_))));
                        stored.push(done);
                        if fatal {
                            jobs_rx.close();
                            open = false;
                            // A frame handed over but not started is
                            // dropped with its bytes' receiver, so the
                            // reading side is not left pumping into it.
                            while jobs_rx.try_recv().is_ok() {}
                        }
                    }
                    else => break,
                }
            }
            stored
        };
        let (read, stored) = tokio::join!(reading, storing);
        let mut failure = read.err();
        for (d, offset, n, outcome) in stored {
            metrics::counter!("ferry_replication_bytes_total", "replication" => self.rec.name.clone(), "direction" => "pull")
                .increment(n);
            if broken.contains(&d) {
                continue; // asked for again, from where its bytes broke off
            }
            match outcome {
                Ok(()) => {
                    self.arrived(&[d]);
                    g.done.one(self.r, n, d);
                }
                // A resumed transfer that does not verify was discarded:
                // ask once more from the first byte.
                Err(ReplError::Core(ferry_core::CoreError::Invalid(m))) if offset > 0 => {
                    let note = format!(
                        "blob {d}: the {offset} bytes kept from an interrupted transfer did not verify with the rest ({m}); fetching it again from its first byte"
                    );
                    tracing::warn!(target: "replication", replication = %self.rec.name, "{note}");
                    // (A source's notes are its refusals; the warning above says it.)
                    if !from_source {
                        g.done.notes.push(note);
                    }
                    self.add_to_go(offset.saturating_add(n));
                    g.retry.push(d);
                }
                Err(ReplError::Core(ferry_core::CoreError::Invalid(m))) => {
                    g.done
                        .damaged
                        .insert(d, format!("blob {d} arrived wrong from the other instance: {m}"));
                }
                Err(e) => {
                    g.retry.push(d);
                    failure.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        // Asked for, not answered (the body was cut before their frame).
        g.retry.extend(claims.into_keys());
        Ok(g)
    }

    /// Fetches one blob, resuming a transfer that broke earlier; returns the
    /// bytes that crossed the wire. The blob is committed, not yet flushed
    /// ([`Fetched::unsynced`]).
    pub(super) async fn fetch_blob(&self, d: Digest) -> Result<u64, ReplError> {
        let limit = self.r.ferry().config().max_upload_bytes.max(u64::MAX / 2);
        let mut attempt = 0;
        loop {
            // Exclusive: another execution fetching the same blob (another
            // replication, or a feed pair sharing content) waits here, and
            // then finds it stored.
            let transfer = self.r.ferry().blob_store().begin_transfer(&d).await?;
            if self.r.has_blob(&d).await? {
                return Ok(0);
            }
            let offset = transfer.offset();
            self.skip_resumed(d, offset);
            let progress = self.progress.clone();
            let received = Arc::new(AtomicU64::new(0));
            let counter = received.clone();
            // Counted as they arrive: bytes of a transfer that breaks off
            // moved too (and are kept to resume from).
            let metric = metrics::counter!("ferry_replication_bytes_total", "replication" => self.rec.name.clone(), "direction" => "pull");
            let result = async {
                let stream = self.remote.fetch_blob(&d, offset).await?;
                let counted = stream.inspect_ok(move |chunk| {
                    progress.bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    metric.increment(chunk.len() as u64);
                });
                let throttled = crate::throttle::limit(Box::pin(counted), self.rate.clone());
                let staged = self
                    .r
                    .ferry()
                    .blob_store()
                    .continue_transfer(transfer, throttled, limit)
                    .await?;
                self.r.ferry().commit_blob(staged).await?;
                Ok::<_, ReplError>(())
            }
            .await;
            match result {
                Ok(()) => return Ok(received.load(Ordering::Relaxed)),
                Err(e @ (ReplError::Transport(_) | ReplError::Core(ferry_core::CoreError::Internal(_))))
                    if attempt < 3 =>
                {
                    attempt += 1;
                    tracing::warn!(target: "replication", blob = %d, attempt, error = %e, "blob transfer broke; resuming");
                    tokio::time::sleep(std::time::Duration::from_millis(200 * attempt)).await;
                }
                // A resumed transfer that does not verify was discarded by
                // the store; fetch the blob once more from its first byte.
                Err(ReplError::Core(ferry_core::CoreError::Invalid(m))) if offset > 0 && attempt < 3 => {
                    attempt += 1;
                    self.add_to_go(offset.saturating_add(received.load(Ordering::Relaxed)));
                    tracing::warn!(target: "replication", blob = %d, error = %m, "resumed transfer did not verify; starting over");
                }
                Err(e) => return Err(e),
            }
        }
    }
}
