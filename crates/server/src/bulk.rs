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
use axum::extract::multipart::{Field, MultipartRejection};
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

/// Reads every part of a bulk upload as one package and inspects each
/// with `inspect` (a part that is no package, such as a text field, is
/// refused with the others, never skipped). `usage` completes "expected
/// multipart/form-data with …" in the refusal of a body that is not one.
/// Every part is finished (a refused one's staging removed) before this
/// returns. The bytes held in memory count against the process's budget
/// until the returned [`Held`] is dropped: keep it until the upload is
/// published. Errors: not multipart (400), no part (400), more than
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
            "expected multipart/form-data with {usage}: {}; to upload one package as the \
             whole body, PUT it (curl -T FILE)",
            e.body_text()
        ))
    })?;
    // Each part's label, and whether it came without a file name.
    let mut labels: Vec<(String, bool)> = Vec::new();
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
        if labels.len() == MAX_PARTS {
            failure = Some(CoreError::invalid(format!(
                "a bulk upload carries at most {MAX_PARTS} files"
            )));
            break;
        }
        labels.push((
            part_label(labels.len() + 1, &field),
            file_name_of(&field).is_none(),
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
        return Err(CoreError::invalid(format!("the upload has no parts ({usage})")));
    }
    let mut parts = Vec::with_capacity(labels.len());
    for ((label, unnamed), outcome) in labels.into_iter().zip(finished.into_iter().flatten()) {
        let (body, info) = outcome.map_err(|e| match in_part(&label, e) {
            // Most likely a form field sent by mistake.
            CoreError::Invalid(m) if unnamed => CoreError::Invalid(format!(
                "{m} (the part has no file name: every part of a bulk upload is one package file)"
            )),
            e => e,
        })?;
        parts.push(Upload {
            part: label,
            body,
            info,
        });
    }
    Ok((parts, held))
}

/// Refuses a `PUT` whose body is `multipart/form-data` (`curl -X PUT -F
/// …`): a `PUT` carries one package as its whole body, a bulk upload goes
/// by `POST`. `field` is the bulk upload's form field (`rpm`, `deb`).
/// Errors: 400 saying so.
pub(crate) fn refuse_multipart_put(headers: &axum::http::HeaderMap, field: &str) -> Result<(), CoreError> {
    let multipart = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.trim_start().to_ascii_lowercase().starts_with("multipart/"));
    if multipart {
        return Err(CoreError::invalid(format!(
            "a multipart body is a bulk upload: send it with POST (curl -F {field}=@FILE ...); \
             a PUT carries one package as the whole body (curl -T FILE)"
        )));
    }
    Ok(())
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

/// How a refusal names part `n` (from 1): `part 2 (b.deb)` by its file
/// name, from `filename` or else RFC 5987's `filename*` (RFC 7578 §4.2:
/// some clients send only that), else `part 2 (field "x")` by its form
/// field name, else `part 2`.
fn part_label(n: usize, field: &Field<'_>) -> String {
    match (file_name_of(field), field.name()) {
        (Some(file), _) => format!("part {n} ({})", ferry_types::shortened(&file, 120)),
        (None, Some(field)) if !field.is_empty() => {
            format!("part {n} (field {:?})", ferry_types::shortened(field, 60))
        }
        _ => format!("part {n}"),
    }
}

/// A multipart part's file name: its `filename` parameter, or else RFC
/// 5987's `filename*` (RFC 7578 §4.2 allows clients to send only that;
/// multer reads only `filename`). None when it has neither.
pub(crate) fn file_name_of(field: &Field<'_>) -> Option<String> {
    field.file_name().map(str::to_owned).or_else(|| {
        field
            .headers()
            .get(axum::http::header::CONTENT_DISPOSITION)
            .and_then(|v| v.to_str().ok())
            .and_then(extended_file_name)
    })
}

/// The `filename*` parameter of a Content-Disposition value (RFC 5987
/// §3.2 `ext-value`: `charset'language'percent-encoded`, UTF-8 or
/// ISO-8859-1), decoded; None when absent or malformed.
fn extended_file_name(disposition: &str) -> Option<String> {
    let value = disposition.split(';').find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.trim().eq_ignore_ascii_case("filename*").then(|| v.trim())
    })?;
    let mut it = value.splitn(3, '\'');
    let (charset, _language, encoded) = (it.next()?, it.next()?, it.next()?);
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(encoded).collect();
    if charset.eq_ignore_ascii_case("utf-8") {
        String::from_utf8(bytes).ok()
    } else if charset.eq_ignore_ascii_case("iso-8859-1") {
        Some(bytes.into_iter().map(char::from).collect())
    } else {
        None
    }
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

    #[test]
    fn extended_file_names_are_decoded() {
        let d = "form-data; name=\"f\"; filename*=UTF-8''caf%C3%A9_1.0_all.deb";
        assert_eq!(extended_file_name(d).as_deref(), Some("café_1.0_all.deb"));
        let d = "form-data; name=f; filename*=iso-8859-1'en'caf%E9.rpm";
        assert_eq!(extended_file_name(d).as_deref(), Some("café.rpm"));
        assert_eq!(extended_file_name("form-data; name=f; filename*=koi8-r''x"), None);
        assert_eq!(extended_file_name("form-data; name=f; filename*=x.deb"), None);
        assert_eq!(extended_file_name("form-data; name=f"), None);
    }
}
