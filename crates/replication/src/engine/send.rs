//! Moving blobs to the other side: in a few parallel streamed uploads of
//! many blobs each (`POST blobs/upload`) when the peer offers
//! [`crate::batch::BLOB_BATCH`], else one `PUT blobs/DIGEST` at a time.
//! Either way the bandwidth cap applies, and the receiver verifies each
//! blob against its digest before it keeps it.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use ferry_types::Digest;
use futures::TryStreamExt;

use super::*;
use crate::ReplError;
use crate::batch::FrameHeader;

/// Parallel uploads a page's blobs are spread over.
const UPLOAD_STREAMS: usize = 4;
/// Fewest blobs worth an upload stream of their own.
const UPLOAD_MIN: usize = 32;

impl Run<'_> {
    /// Sends `blobs` (digest, size, and the bytes the other side holds of
    /// it already, all stored here): with `blobs/upload`, each from the
    /// byte the other side holds (an upload that broke off resumes; the
    /// bytes it kept are not sent again), else whole. Returns the ones
    /// the other side refused, with why (their bytes here are wrong); one
    /// it asked to be resumed from elsewhere is neither sent nor refused
    /// (the next execution asks again). Errors: a broken link, or storage
    /// here.
    pub(super) async fn send_blobs(
        &self,
        blobs: Vec<(Digest, u64, u64)>,
        fr: &mut FeedReport,
    ) -> Result<HashMap<Digest, String>, ReplError> {
        let mut refused = HashMap::new();
        if blobs.is_empty() {
            return Ok(refused);
        }
        if self.batch {
            let streams = blobs.len().div_ceil(UPLOAD_MIN).clamp(1, UPLOAD_STREAMS);
            let mut groups: Vec<Vec<(Digest, u64, u64)>> = vec![Vec::new(); streams];
            for (i, b) in blobs.into_iter().enumerate() {
                groups[i % streams].push(b);
            }
            for (_, _, held) in groups.iter().flatten() {
                if *held > 0 {
                    self.skip_bytes(*held);
                }
            }
            // Bytes of attempts the other side did not keep (it asked for
            // the blob again from another byte): they crossed all the same.
            let mut wasted: HashMap<Digest, u64> = HashMap::new();
            // Twice at most: a blob the other side asks for from another
            // byte (what it held changed, or did not verify) goes again at
            // once from there.
            for attempt in 0..2 {
                let results = futures::future::join_all(groups.iter().map(|g| self.upload_group(g))).await;
                let mut again = Vec::new();
                for (g, r) in groups.iter().zip(results) {
                    let sizes: HashMap<Digest, (u64, u64)> =
                        g.iter().map(|(d, n, o)| (*d, (*n, *o))).collect();
                    for u in r?.results {
                        let (size, held) = sizes.get(&u.digest).copied().unwrap_or((0, 0));
                        match (u.error, u.resume_from) {
                            (Some(why), _) => {
                                refused.insert(
                                    u.digest,
                                    format!("the other instance refused blob {}: {why}", u.digest),
                                );
                            }
                            (None, Some(from)) if from < size && attempt == 0 => {
                                tracing::info!(target: "replication", blob = %u.digest, from, "the other instance asks for this blob from byte {from}");
                                *wasted.entry(u.digest).or_default() += size - held;
                                again.push((u.digest, size, from));
                            }
                            (None, Some(from)) => {
                                tracing::warn!(target: "replication", blob = %u.digest, from, "the other instance still asks for this blob from another byte; the next execution sends it");
                            }
                            (None, None) => {
                                if held > 0 {
                                    tracing::info!(target: "replication", blob = %u.digest, held, "resumed an upload that broke off: {held} bytes were there already");
                                }
                                let extra = wasted.get(&u.digest).copied().unwrap_or(0);
                                self.count_sent(fr, size - held + extra)
                            }
                        }
                    }
                }
                if again.is_empty() {
                    break;
                }
                groups = vec![again];
            }
            return Ok(refused);
        }
        for (d, size, _) in blobs {
            let body = self.r.ferry().read_blob_for_peer(&d, None).await?.stream;
            // Counted as the cap lets the bytes go.
            let throttled = crate::throttle::limit(body, self.rate.clone());
            let counted = Box::pin(throttled.inspect_ok(self.count_moving()));
            match self.remote.put_blob(&d, counted, size).await {
                Ok(()) => {
                    self.arrived(&[d]);
                    self.count_sent(fr, size)
                }
                // The other side refused the bytes as not matching the
                // digest: what is stored here is wrong.
                Err(ReplError::Remote { status: 400, message }) => {
                    refused.insert(d, format!("the other instance refused blob {d}: {message}"));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(refused)
    }

    /// Counts a blob the other side took whole (`size` bytes moved for it
    /// in this execution) in the report.
    fn count_sent(&self, fr: &mut FeedReport, size: u64) {
        fr.pushed.blobs += 1;
        fr.pushed.bytes += size;
    }

    /// Counts bytes as they leave: in the execution's progress and in
    /// `ferry_replication_bytes_total` (direction `push`), whether or not
    /// the upload they belong to ends well (bytes of a cut upload moved
    /// too, and the other side keeps them to resume from).
    fn count_moving(&self) -> impl Fn(&bytes::Bytes) + Clone + Send + Sync + 'static {
        let progress = self.progress.clone();
        let metric = metrics::counter!("ferry_replication_bytes_total", "replication" => self.rec.name.clone(), "direction" => "push");
        move |c: &bytes::Bytes| {
            progress.bytes.fetch_add(c.len() as u64, Ordering::Relaxed);
            metric.increment(c.len() as u64);
        }
    }

    /// [`Self::upload_once`], asked again after [`super::fetch::BUSY_PAUSE`]
    /// while the other side answers 429 (its token holds its share of
    /// transfers; nothing of the upload was taken), for up to
    /// [`super::fetch::BUSY_WAIT`] in all, as a pull's batches are.
    async fn upload_group(
        &self,
        blobs: &[(Digest, u64, u64)],
    ) -> Result<crate::batch::UploadResponse, ReplError> {
        use super::fetch::{BUSY_PAUSE, BUSY_WAIT};
        let mut waited = std::time::Duration::ZERO;
        loop {
            match self.upload_once(blobs).await {
                Err(e @ ReplError::Remote { status: 429, .. }) if waited < BUSY_WAIT => {
                    tracing::warn!(target: "replication", replication = %self.rec.name, blobs = blobs.len(), error = %e, "the other instance is busy; asking again in {} s", BUSY_PAUSE.as_secs());
                    tokio::time::sleep(BUSY_PAUSE).await;
                    waited += BUSY_PAUSE;
                }
                r => return r,
            }
        }
    }

    /// One streamed upload of `blobs` as frames, read from the store as the
    /// request goes out. A blob that cannot be read whole here cuts the
    /// upload (the blobs before it are kept there).
    async fn upload_once(
        &self,
        blobs: &[(Digest, u64, u64)],
    ) -> Result<crate::batch::UploadResponse, ReplError> {
        let ferry = self.r.ferry().clone();
        let list = blobs.to_vec();
        let (rate, count, tick) = (self.rate.clone(), self.count_moving(), self.ticker());
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(8);
        let producer = tokio::spawn(async move {
            for (d, size, held) in list {
                let head = FrameHeader::blob(d, held, size - held);
                let range = (held > 0).then_some(held..size);
                let body = match ferry.read_blob_for_peer(&d, range).await {
                    Ok(b) => b.stream,
                    Err(e) => {
                        let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                        return;
                    }
                };
                // A blob's bytes (not the frame headers) are counted as
                // the cap lets them go.
                let body = Box::pin(crate::throttle::limit(body, rate.clone()).inspect_ok(count.clone()));
                if crate::batch::send_frame(&tx, &head, body).await.is_err() {
                    return;
                }
                // Its last byte has left: the items waiting for it only
                // for this blob have gone through.
                tick(&[d]);
            }
        });
        let result = self
            .remote
            .upload_batch(Box::pin(crate::batch::channel_stream(rx)))
            .await;
        producer.abort();
        result
    }
}
