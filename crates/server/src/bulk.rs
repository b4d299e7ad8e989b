//! Reading a bulk upload (`multipart/form-data`, one package per file
//! part: `curl -F rpm=@a.rpm -F rpm=@b.rpm …`), shared by the feed types
//! that take one (`rpm`, `debian`).
//!
//! Small parts (up to [`BUFFERED_PART`] bytes each, [`BUFFERED_TOTAL`] per
//! request, [`BUFFERED_ALL`] for all requests at once) are read whole, then hashed and inspected in groups off the
//! async threads while the rest of the body arrives; they are written to
//! the blob store only when the whole upload is accepted, in one pass with
//! one flush ([`ferry_core::bulk`]). Larger parts, and small ones past the
//! memory budget, stream into the blob store's staging as any upload does.
//! A refusal names its part (`part 3 (FILE): …`).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::Multipart;
use axum::extract::multipart::MultipartRejection;
use bytes::{Bytes, BytesMut};
use ferry_core::bulk::{Upload, UploadBody, in_part};
use ferry_core::{CoreError, Ferry};
use ferry_store::StagedBlob;

/// Parts up to this size (bytes) are read whole.
const BUFFERED_PART: usize = 1 << 20;
/// Bytes of small parts one request holds in memory until it is
/// published; further small parts go to staging.
const BUFFERED_TOTAL: usize = 32 << 20;
/// Bytes of small parts all bulk uploads together hold in memory; a part
/// that would pass it goes to staging.
const BUFFERED_ALL: usize = 256 << 20;

/// Bytes held in memory by bulk uploads now (at most [`BUFFERED_ALL`]).
static HELD: AtomicUsize = AtomicUsize::new(0);

/// One request's share of [`HELD`], given back when dropped (after the
/// upload is published or refused).
pub(crate) struct Held(usize);

impl Held {
    /// Takes `n` more bytes if the request's and the process's budgets
    /// allow it.
    fn take(&mut self, n: usize) -> bool {
        if self.0 + n > BUFFERED_TOTAL {
            return false;
        }
        let taken = HELD.fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
            (h + n <= BUFFERED_ALL).then_some(h + n)
        });
        if taken.is_ok() {
            self.0 += n;
        }
        taken.is_ok()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        HELD.fetch_sub(self.0, Ordering::AcqRel);
    }
}
/// Most small parts hashed and inspected by one blocking task.
const GROUP_PARTS: usize = 32;
/// Most bytes of small parts in one group.
const GROUP_BYTES: usize = 4 << 20;
/// Tasks (groups, or parts being staged) in flight at once.
const IN_FLIGHT: usize = 8;
/// Most packages one bulk upload may carry.
pub(crate) const MAX_PARTS: usize = 10_000;

/// How a feed type reads its packages' metadata.
pub(crate) trait Inspect: Clone + Send + Sync + 'static {
    /// What is read from a package (its header or control data).
    type Info: Send + 'static;
    /// Reads a package held in memory. Blocking work (run off the async
    /// threads). Errors: the package is invalid (400, 413).
    fn memory(&self, ferry: &Ferry, bytes: &Bytes) -> Result<Self::Info, CoreError>;
    /// Reads a staged package.
    fn staged(
        &self,
        ferry: Ferry,
        staged: StagedBlob,
    ) -> impl Future<Output = Result<(StagedBlob, Self::Info), CoreError>> + Send;
}

type Outcomes<T> = Vec<Result<(UploadBody, T), CoreError>>;

/// Parts read so far, in order: finished, or still being inspected.
enum Pending<T> {
    Done(Outcomes<T>),
    Running(tokio::task::JoinHandle<Outcomes<T>>),
}

impl<T> Pending<T> {
    async fn outcomes(self) -> Outcomes<T> {
        match self {
            Pending::Done(v) => v,
            Pending::Running(h) => match h.await {
                Ok(v) => v,
                Err(e) => vec![Err(CoreError::Internal(format!(
                    "inspecting an upload failed: {e}"
                )))],
            },
        }
    }
}

/// Reads every file part of a bulk upload (parts without a file name are
/// skipped) and inspects each with `inspect`. `usage` completes "expected
/// multipart/form-data with …" in the refusal of a body that is not one.
/// Every part is finished (a refused one's staging removed) before this
/// returns. The bytes held in memory count against the process's budget
/// until the returned [`Held`] is dropped: keep it until the upload is
/// published. Errors: not multipart (400), no file part (400), more than
/// [`MAX_PARTS`] (400), a part over the upload limit (413), an invalid
/// part (its refusal, naming the part).
pub(crate) async fn read_parts<I: Inspect>(
    ferry: &Ferry,
    multipart: Result<Multipart, MultipartRejection>,
    usage: &str,
    inspect: I,
) -> Result<(Vec<Upload<I::Info>>, Held), CoreError> {
    let mut multipart = multipart.map_err(|e| {
        CoreError::invalid(format!(
            "expected multipart/form-data with {usage}: {}",
            e.body_text()
        ))
    })?;
    let mut labels: Vec<String> = Vec::new();
    let mut pending: VecDeque<Pending<I::Info>> = VecDeque::new();
    let mut finished: Vec<Outcomes<I::Info>> = Vec::new();
    let mut group: Vec<Bytes> = Vec::new();
    let mut group_bytes = 0usize;
    let mut held = Held(0);
    let mut failure = None;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => {
                failure = Some(crate::pypi::bad_multipart(e));
                break;
            }
        };
        let mut field = field;
        let Some(file) = field.file_name() else {
            continue;
        };
        if labels.len() == MAX_PARTS {
            failure = Some(CoreError::invalid(format!(
                "a bulk upload carries at most {MAX_PARTS} files"
            )));
            break;
        }
        labels.push(format!(
            "part {} ({})",
            labels.len() + 1,
            ferry_types::shortened(file, 120)
        ));
        let mut head = BytesMut::new();
        let mut over = None;
        loop {
            match field.chunk().await {
                Ok(Some(chunk)) if head.len() + chunk.len() > BUFFERED_PART => {
                    over = Some(chunk);
                    break;
                }
                Ok(Some(chunk)) => head.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(e) => {
                    failure = Some(crate::pypi::bad_multipart(e));
                    break;
                }
            }
        }
        if failure.is_some() {
            break;
        }
        // Keeps at most IN_FLIGHT tasks running: waits for the oldest.
        while pending
            .iter()
            .filter(|p| matches!(p, Pending::Running(_)))
            .count()
            >= IN_FLIGHT
            && let Some(oldest) = pending.pop_front()
        {
            finished.push(oldest.outcomes().await);
        }
        match over {
            Some(chunk) => {
                // A large part: the small ones before it go first, in order.
                if !group.is_empty() {
                    pending.push_back(spawn_group(ferry, &inspect, std::mem::take(&mut group)));
                    group_bytes = 0;
                }
                let staged =
                    crate::pypi::stage_field_after(ferry, vec![head.freeze(), chunk], &mut field).await;
                let outcome = match staged {
                    Ok(staged) => inspect
                        .staged(ferry.clone(), staged)
                        .await
                        .map(|(s, info)| (UploadBody::Staged(s), info)),
                    Err(e) => Err(e),
                };
                pending.push_back(Pending::Done(vec![outcome]));
            }
            None if head.len() as u64 > ferry.config().max_upload_bytes => {
                let limit = ferry.config().max_upload_bytes;
                let e = CoreError::TooLarge(format!("the file exceeds the upload limit of {limit} bytes"));
                pending.push_back(Pending::Done(vec![Err(e)]));
            }
            None if held.take(head.len()) => {
                group_bytes += head.len();
                group.push(head.freeze());
                if group.len() >= GROUP_PARTS || group_bytes >= GROUP_BYTES {
                    pending.push_back(spawn_group(ferry, &inspect, std::mem::take(&mut group)));
                    group_bytes = 0;
                }
            }
            None => {
                // Past the memory budget: staged (flushed on its own)
                // before the next part is read, so that no more than this
                // one part is in memory beyond the budget.
                if !group.is_empty() {
                    pending.push_back(spawn_group(ferry, &inspect, std::mem::take(&mut group)));
                    group_bytes = 0;
                }
                let outcome = async {
                    let staged = ferry.stage_bytes(head.freeze()).await?;
                    let (s, info) = inspect.staged(ferry.clone(), staged).await?;
                    Ok((UploadBody::Staged(s), info))
                };
                pending.push_back(Pending::Done(vec![outcome.await]));
            }
        }
    }
    if !group.is_empty() {
        pending.push_back(spawn_group(ferry, &inspect, group));
    }
    for p in pending {
        finished.push(p.outcomes().await);
    }
    if let Some(e) = failure {
        return Err(e);
    }
    if labels.is_empty() {
        return Err(CoreError::invalid(format!(
            "the upload has no file parts ({usage})"
        )));
    }
    let mut parts = Vec::with_capacity(labels.len());
    for (label, outcome) in labels.into_iter().zip(finished.into_iter().flatten()) {
        let (body, info) = outcome.map_err(|e| in_part(&label, e))?;
        parts.push(Upload {
            part: label,
            body,
            info,
        });
    }
    Ok((parts, held))
}

/// Hashes and inspects small parts on one blocking thread.
fn spawn_group<I: Inspect>(ferry: &Ferry, inspect: &I, group: Vec<Bytes>) -> Pending<I::Info> {
    let (ferry, inspect) = (ferry.clone(), inspect.clone());
    Pending::Running(tokio::task::spawn_blocking(move || {
        group
            .into_iter()
            .map(|bytes| {
                let info = inspect.memory(&ferry, &bytes)?;
                Ok((UploadBody::in_memory(bytes), info))
            })
            .collect()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_budgets_per_request_and_for_all_requests() {
        // One request: up to BUFFERED_TOTAL, then refused (staged instead).
        let mut one = Held(0);
        assert!(one.take(BUFFERED_TOTAL - 10));
        assert!(!one.take(11));
        assert!(one.take(10));
        // All requests: the process's budget runs out, and comes back when
        // a request ends.
        let mut others: Vec<Held> = Vec::new();
        loop {
            let mut h = Held(0);
            if !h.take(BUFFERED_TOTAL) {
                break;
            }
            others.push(h);
        }
        assert!(others.len() < BUFFERED_ALL / BUFFERED_TOTAL);
        let mut late = Held(0);
        assert!(!late.take(BUFFERED_TOTAL));
        drop(one);
        assert!(late.take(BUFFERED_TOTAL));
        drop(others);
        drop(late);
        assert_eq!(HELD.load(Ordering::Acquire), 0);
    }
}
