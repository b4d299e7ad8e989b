//! Moving blobs from the other side: one request per blob with any v1
//! peer, or, when the peer offers it ([`crate::batch::BLOB_BATCH`]), many
//! blobs per request in a few parallel streams, so the round trips a page
//! costs do not grow with its number of blobs. Either way each transfer
//! holds its digest's claim, resumes from what a broken attempt left,
//! counts against the bandwidth cap and is verified before it is committed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ferry_store::{StoreError, Transfer};
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

/// A blob transfer whose bytes are committed; the handle flushes it.
pub(super) type Flush = JoinHandle<Result<(), StoreError>>;

/// What fetching a page's blobs came to.
#[derive(Default)]
pub(super) struct Fetched {
    /// Bytes that crossed the wire per committed blob, with its flush.
    pub fetched: Vec<(u64, Flush)>,
    /// Not on the other side (its item changed there, or the blob is lost).
    pub gone: HashSet<Digest>,
    /// The other side cannot serve them intact, or they arrived wrong.
    pub damaged: HashMap<Digest, String>,
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
        let mut rest = Vec::with_capacity(need.len());
        for d in need {
            match self.inline.get(&d) {
                Some(data) => match self.store_inline(d, data.clone()).await? {
                    Some(done) => out.fetched.push(done),
                    None => rest.push(d),
                },
                None => rest.push(d),
            }
        }
        let need = rest;
        if need.is_empty() {
            return Ok(out);
        }
        if self.batch {
            let more = self.fetch_batched(need).await?;
            out.fetched.extend(more.fetched);
            out.gone.extend(more.gone);
            out.damaged.extend(more.damaged);
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
                Some((_, Ok(r))) => out.fetched.push(r),
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

    /// Stores a blob that came inline in a page, verified against its
    /// digest; `None` if the bytes are wrong (it is then asked for as usual).
    async fn store_inline(&self, d: Digest, data: bytes::Bytes) -> Result<Option<(u64, Flush)>, ReplError> {
        let n = data.len() as u64;
        let body: ferry_store::ByteStream = Box::pin(futures::stream::once(async move { Ok(data) }));
        let staged = match self.r.ferry().stage(body, Some(d)).await {
            Ok(s) => s,
            Err(ferry_core::CoreError::Invalid(m)) => {
                tracing::warn!(target: "replication", blob = %d, error = %m, "an inline blob did not verify; fetching it");
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        self.r.ferry().commit_blob(staged).await?;
        // What an earlier, broken transfer of it left is not needed now.
        let store = self.r.ferry().blob_store();
        let leftover = store.begin_transfer(&d).await?;
        if leftover.offset() > 0 {
            store.discard_transfer(leftover).await?;
        }
        self.progress.bytes.fetch_add(n, Ordering::Relaxed);
        metrics::counter!("ferry_replication_bytes_total", "replication" => self.rec.name.clone(), "direction" => "pull")
            .increment(n);
        let store = self.r.ferry().blob_store().clone();
        Ok(Some((n, tokio::spawn(async move { store.sync(&[d]).await }))))
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

    /// [`Self::fetch_blobs`] through `blobs/batch`: the digests are spread
    /// over up to [`BATCH_STREAMS`] requests at once; what a cut left
    /// unfinished is asked for again (from the byte it reached).
    async fn fetch_batched(&self, need: Vec<Digest>) -> Result<Fetched, ReplError> {
        let mut out = Fetched::default();
        let mut todo = need;
        let mut attempt = 0;
        loop {
            let streams = todo.len().div_ceil(BATCH_MIN).clamp(1, BATCH_STREAMS);
            let mut groups: Vec<Vec<Digest>> = vec![Vec::new(); streams];
            for (i, d) in todo.iter().enumerate() {
                groups[i % streams].push(*d);
            }
            let results = futures::future::join_all(groups.into_iter().map(|g| self.fetch_group(g))).await;
            let mut retry = Vec::new();
            let mut error = None;
            for r in results {
                let g = r?;
                out.fetched.extend(g.done.fetched);
                out.gone.extend(g.done.gone);
                out.damaged.extend(g.done.damaged);
                retry.extend(g.retry);
                if g.error.is_some() {
                    error = g.error;
                }
            }
            if retry.is_empty() {
                return Ok(out);
            }
            attempt += 1;
            if attempt >= BATCH_ATTEMPTS {
                return Err(error.unwrap_or_else(|| {
                    ReplError::Transport(format!("{} blobs did not arrive whole", retry.len()))
                }));
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
    async fn fetch_group(&self, mut digests: Vec<Digest>) -> Result<Group, ReplError> {
        let store = self.r.ferry().blob_store().clone();
        let limit = self.r.ferry().config().max_upload_bytes.max(u64::MAX / 2);
        digests.sort();
        digests.dedup();
        let mut claims: HashMap<Digest, Transfer> = HashMap::new();
        let mut wants = Vec::new();
        for d in digests {
            let transfer = store.begin_transfer(&d).await?;
            if self.r.has_blob(&d).await? {
                continue;
            }
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
        let mut reader = match self.remote.fetch_batch(wants).await {
            Ok(r) => r,
            Err(e @ ReplError::Transport(_)) => {
                g.retry = claims.into_keys().collect();
                g.error = Some(e);
                return Ok(g);
            }
            Err(e) => return Err(e),
        };
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
                        g.done.gone.insert(d);
                    }
                    // Asked from past its end: what is held here is wrong.
                    416 => {
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
                g.error = Some(ReplError::Transport(format!(
                    "the other instance sent blob {d} from byte {}, not {}",
                    header.offset,
                    transfer.offset()
                )));
                break;
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
            let stored = async {
                let staged = store.continue_transfer(transfer, throttled, limit).await?;
                self.r.ferry().commit_blob(staged).await?;
                Ok::<_, ReplError>(())
            };
            let (pumped, stored) = tokio::join!(reader.pump(header.length, tx), stored);
            let n = received.load(Ordering::Relaxed);
            metrics::counter!("ferry_replication_bytes_total", "replication" => self.rec.name.clone(), "direction" => "pull")
                .increment(n);
            if let Err(e) = pumped {
                // What arrived is kept; the next request resumes from it.
                g.retry.push(d);
                g.error = Some(ReplError::Transport(e.to_string()));
                break;
            }
            match stored {
                Ok(()) => {
                    let store = store.clone();
                    g.done
                        .fetched
                        .push((n, tokio::spawn(async move { store.sync(&[d]).await })));
                }
                // A resumed transfer that does not verify was discarded:
                // ask once more from the first byte.
                Err(ReplError::Core(ferry_core::CoreError::Invalid(_))) if header.offset > 0 => {
                    g.retry.push(d)
                }
                Err(ReplError::Core(ferry_core::CoreError::Invalid(m))) => {
                    g.done
                        .damaged
                        .insert(d, format!("blob {d} arrived wrong from the other instance: {m}"));
                }
                Err(e) => return Err(e),
            }
        }
        // Asked for, not answered (the body was cut before their frame).
        g.retry.extend(claims.into_keys());
        Ok(g)
    }

    /// Fetches one blob, resuming a transfer that broke earlier; returns the
    /// bytes that crossed the wire.
    pub(super) async fn fetch_blob(&self, d: Digest) -> Result<(u64, Flush), ReplError> {
        let limit = self.r.ferry().config().max_upload_bytes.max(u64::MAX / 2);
        let mut attempt = 0;
        loop {
            // Exclusive: another execution fetching the same blob (another
            // replication, or a feed pair sharing content) waits here, and
            // then finds it stored.
            let transfer = self.r.ferry().blob_store().begin_transfer(&d).await?;
            if self.r.has_blob(&d).await? {
                return Ok((0, tokio::spawn(async { Ok(()) })));
            }
            let offset = transfer.offset();
            let progress = self.progress.clone();
            let received = Arc::new(AtomicU64::new(0));
            let counter = received.clone();
            let result = async {
                let stream = self.remote.fetch_blob(&d, offset).await?;
                let counted = stream.inspect_ok(move |chunk| {
                    progress.bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                });
                let throttled = crate::throttle::limit(Box::pin(counted), self.rate.clone());
                let staged = self
                    .r
                    .ferry()
                    .blob_store()
                    .continue_transfer(transfer, throttled, limit)
                    .await?;
                self.r.ferry().commit_blob(staged).await?;
                // Flushed to disk in the background, overlapping the next
                // transfers; awaited before any item needs the blob.
                let store = self.r.ferry().blob_store().clone();
                Ok::<_, ReplError>(tokio::spawn(async move { store.sync(&[d]).await }))
            }
            .await;
            match result {
                Ok(flush) => {
                    let n = received.load(Ordering::Relaxed);
                    metrics::counter!("ferry_replication_bytes_total", "replication" => self.rec.name.clone(), "direction" => "pull")
                        .increment(n);
                    return Ok((n, flush));
                }
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
                    tracing::warn!(target: "replication", blob = %d, error = %m, "resumed transfer did not verify; starting over");
                }
                Err(e) => return Err(e),
            }
        }
    }
}
