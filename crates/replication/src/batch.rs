//! Batched blob transfer (protocol v1, feature [`BLOB_BATCH`]): many blobs
//! in one request, so a page of small blobs costs one round trip instead of
//! one per blob.
//!
//! `POST /api/replication/v1/blobs/batch` with a [`BatchRequest`] (at most
//! [`MAX_BATCH`] blobs, each from a byte offset, to resume one a cut left
//! partial) answers a stream of frames, one per requested blob, in request
//! order. A frame is one line of JSON, a [`FrameHeader`], ended by `\n`,
//! followed by exactly `length` raw bytes of the blob from `offset` on; a
//! header with `status` set carries no bytes and says why that blob is not
//! sent (404 not here or not readable with this token, 500 damaged here).
//! A sender that finds a blob damaged while sending it cuts the response:
//! the receiver keeps what arrived and verifies it when the blob is whole,
//! as for any broken transfer.

use bytes::{Bytes, BytesMut};
use ferry_store::{AlignedBytes, ByteStream};
use ferry_types::Digest;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

/// The handshake feature naming this transfer.
pub const BLOB_BATCH: &str = "blob-batch";
/// Most blobs one batch request may name.
pub const MAX_BATCH: usize = 1000;
/// Longest frame header accepted (bytes, without the newline).
const MAX_HEADER: usize = 4096;
/// Most bytes [`FrameReader::read_whole`] sets aside up front (the frame's
/// own length when smaller; callers keep whole reads to small frames).
const MAX_WHOLE: usize = 4 << 20;

/// One blob asked for, from byte `offset` on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlobWant {
    pub digest: Digest,
    #[serde(default)]
    pub offset: u64,
}

/// The body of `POST blobs/batch`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchRequest {
    #[serde(deserialize_with = "crate::protocol::at_most::<_, _, MAX_BATCH>")]
    pub blobs: Vec<BlobWant>,
}

/// What became of each blob of a `POST blobs/upload`, in frame order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadResponse {
    pub results: Vec<UploadResult>,
}

/// One uploaded blob: stored, or refused with the reason.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadResult {
    pub digest: Digest,
    /// Why its bytes were refused (they do not hash to the digest, or it
    /// is too large).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Set when the frame was not taken because it started past the bytes
    /// this side holds of the blob (they changed since `blobs/missing`
    /// said): send it again from this offset. Not a fault of the bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_from: Option<u64>,
}

impl UploadResult {
    /// Not taken: send blob `digest` again from byte `from`.
    pub fn resend(digest: Digest, from: u64) -> Self {
        UploadResult {
            digest,
            error: None,
            resume_from: Some(from),
        }
    }
}

/// The header line of one frame.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FrameHeader {
    pub digest: Digest,
    /// First byte of the blob this frame carries.
    #[serde(default)]
    pub offset: u64,
    /// Bytes that follow the header.
    #[serde(default)]
    pub length: u64,
    /// Set when the blob is not sent: an HTTP status saying why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl FrameHeader {
    /// The header of `length` bytes of blob `digest` from byte `offset`.
    pub fn blob(digest: Digest, offset: u64, length: u64) -> Self {
        FrameHeader {
            digest,
            offset,
            length,
            status: None,
            error: None,
        }
    }

    /// The header that says blob `digest` is not sent: an HTTP-like
    /// `status` and why.
    pub fn refusal(digest: Digest, status: u16, error: String) -> Self {
        FrameHeader {
            digest,
            offset: 0,
            length: 0,
            status: Some(status),
            error: Some(error),
        }
    }

    /// The header as sent: JSON and a newline.
    pub fn encode(&self) -> Bytes {
        let mut v = serde_json::to_vec(self).unwrap_or_default();
        v.push(b'\n');
        Bytes::from(v)
    }
}

/// Reads frames from a response body: a header, then its bytes.
pub struct FrameReader {
    body: ByteStream,
    buf: BytesMut,
}

fn broken(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}

impl FrameReader {
    pub fn new(body: ByteStream) -> Self {
        Self {
            body,
            buf: BytesMut::new(),
        }
    }

    /// The next frame's header; `None` at a clean end of the body.
    /// Errors: the body broke, or the header is not a frame header.
    pub async fn header(&mut self) -> std::io::Result<Option<FrameHeader>> {
        loop {
            if let Some(nl) = self.buf.iter().position(|b| *b == b'\n') {
                let line = self.buf.split_to(nl + 1);
                return serde_json::from_slice(&line[..nl])
                    .map(Some)
                    .map_err(|e| broken(format!("a blob batch frame header is not valid: {e}")));
            }
            if self.buf.len() > MAX_HEADER {
                return Err(broken("a blob batch frame header is too long"));
            }
            match self.body.next().await {
                Some(chunk) => self.buf.extend_from_slice(&chunk?),
                None if self.buf.is_empty() => return Ok(None),
                None => return Err(broken("the blob batch ended inside a frame header")),
            }
        }
    }

    /// The next chunk of at most `left` bytes of the current frame.
    /// Errors: the body broke or ended early.
    pub async fn chunk(&mut self, left: u64) -> std::io::Result<Bytes> {
        while self.buf.is_empty() {
            // Nothing buffered: the body's own chunk is handed on as it is
            // (no copy); only what follows the frame is kept back.
            let mut chunk = match self.body.next().await {
                Some(chunk) => chunk?,
                None => return Err(broken("the blob batch ended inside a blob")),
            };
            if chunk.is_empty() {
                continue;
            }
            let n = (chunk.len() as u64).min(left) as usize;
            if n < chunk.len() {
                self.buf.extend_from_slice(&chunk.split_off(n));
            }
            return Ok(chunk);
        }
        let n = (self.buf.len() as u64).min(left) as usize;
        Ok(self.buf.split_to(n).freeze())
    }

    /// Reads exactly `length` bytes of the current frame into one buffer
    /// (for small frames, kept in memory), aligned for the store's direct
    /// writes ([`AlignedBytes`]) unless the frame was read in already. If
    /// the body breaks or ends first, returns what arrived with the error.
    pub async fn read_whole(&mut self, length: u64) -> Result<Bytes, (Bytes, std::io::Error)> {
        let length = usize::try_from(length).unwrap_or(usize::MAX);
        if self.buf.len() >= length {
            return Ok(self.buf.split_to(length).freeze());
        }
        let mut out = AlignedBytes::with_capacity(length.min(MAX_WHOLE));
        out.extend_from_slice(&self.buf.split());
        while out.len() < length {
            match self.body.next().await {
                Some(Ok(chunk)) => {
                    let need = length - out.len();
                    if chunk.len() <= need {
                        out.extend_from_slice(&chunk);
                    } else {
                        out.extend_from_slice(&chunk[..need]);
                        self.buf.extend_from_slice(&chunk[need..]);
                    }
                }
                Some(Err(e)) => return Err((out.freeze(), e)),
                None => return Err((out.freeze(), broken("the blob batch ended inside a blob"))),
            }
        }
        Ok(out.freeze())
    }

    /// Reads and drops `length` bytes (a frame not wanted after all).
    pub async fn skip(&mut self, mut length: u64) -> std::io::Result<()> {
        while length > 0 {
            let c = self.chunk(length).await?;
            length -= c.len() as u64;
        }
        Ok(())
    }

    /// Forwards exactly `length` bytes into `tx`, as a blob's body. If the
    /// body breaks, the error goes into `tx` too (the receiving transfer
    /// keeps what arrived) and is returned.
    pub async fn pump(
        &mut self,
        mut length: u64,
        tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    ) -> std::io::Result<()> {
        while length > 0 {
            match self.chunk(length).await {
                Ok(c) => {
                    length -= c.len() as u64;
                    if tx.send(Ok(c)).await.is_err() {
                        // The transfer gave up (it failed); read on to the
                        // next frame.
                        return self.skip(length).await;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::new(e.kind(), e.to_string()))).await;
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

/// The sending half of a frame stream (a response or request body).
pub type FrameSender = tokio::sync::mpsc::Sender<std::io::Result<Bytes>>;

/// Why [`send_frame`] ended the frame stream early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameCut {
    /// The reader went away: it closed the connection or gave up, or the
    /// body was cut on this side (a revoked token, see
    /// `Replicator::guard_body`).
    ReaderGone,
    /// The blob's own bytes failed (read error, damage found while
    /// hashing) or gave another length than the header's: the reason,
    /// which went into the stream too.
    Failed(String),
}

/// Sends one blob's frame into `tx`: `header` (whose `length` the body
/// must give exactly), then the body's bytes. Returns the frame's size in
/// bytes (header line and body). Errors ([`FrameCut`]): the stream must
/// end here, because the reader went away or the body failed or gave
/// another length (the error went into `tx`, which cuts the stream: a
/// frame is never short).
pub async fn send_frame(
    tx: &FrameSender,
    header: &FrameHeader,
    mut body: ByteStream,
) -> Result<u64, FrameCut> {
    let head = header.encode();
    let head_len = head.len() as u64;
    if tx.send(Ok(head)).await.is_err() {
        return Err(FrameCut::ReaderGone);
    }
    let mut sent = 0u64;
    while let Some(chunk) = body.next().await {
        let failed = chunk.as_ref().err().map(|e| e.to_string());
        if let Ok(c) = &chunk {
            sent += c.len() as u64;
        }
        if tx.send(chunk).await.is_err() {
            return Err(FrameCut::ReaderGone);
        }
        if let Some(why) = failed {
            return Err(FrameCut::Failed(format!("blob {}: {why}", header.digest)));
        }
    }
    if sent != header.length {
        let why = format!(
            "blob {} ended after {sent} of {} bytes",
            header.digest, header.length
        );
        let _ = tx.send(Err(std::io::Error::other(why.clone()))).await;
        return Err(FrameCut::Failed(why));
    }
    Ok(head_len + sent)
}

/// A byte stream fed by [`FrameReader::pump`].
pub fn channel_stream(rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>) -> ByteStream {
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_of(parts: Vec<&'static [u8]>) -> ByteStream {
        Box::pin(futures::stream::iter(
            parts.into_iter().map(|p| Ok(Bytes::from_static(p))),
        ))
    }

    #[tokio::test]
    async fn frames_split_anywhere_are_read_back() {
        let d = Digest::of(b"hello");
        let h = FrameHeader {
            digest: d,
            offset: 0,
            length: 5,
            status: None,
            error: None,
        };
        let e = FrameHeader {
            digest: Digest::of(b"x"),
            offset: 0,
            length: 0,
            status: Some(404),
            error: Some("not here".into()),
        };
        let mut all = h.encode().to_vec();
        all.extend_from_slice(b"hello");
        all.extend_from_slice(&e.encode());
        let all: &'static [u8] = Box::leak(all.into_boxed_slice());
        for cut in 1..all.len() {
            let (a, b) = all.split_at(cut);
            let mut r = FrameReader::new(stream_of(vec![a, b]));
            assert_eq!(r.header().await.unwrap(), Some(h.clone()));
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let pump = r.pump(5, tx);
            let collect = channel_stream(rx).map(|c| c.unwrap().to_vec()).concat();
            let (p, got) = tokio::join!(pump, collect);
            p.unwrap();
            assert_eq!(&got[..], b"hello");
            assert_eq!(r.header().await.unwrap(), Some(e.clone()));
            assert_eq!(r.header().await.unwrap(), None);
        }
    }

    #[tokio::test]
    async fn frames_in_tiny_and_empty_chunks_are_read_back() {
        let h = FrameHeader {
            digest: Digest::of(b"hello world"),
            offset: 0,
            length: 11,
            status: None,
            error: None,
        };
        let mut all = h.encode().to_vec();
        all.extend_from_slice(b"hello world");
        all.extend_from_slice(&h.encode());
        all.extend_from_slice(b"hello world");
        let all: &'static [u8] = Box::leak(all.into_boxed_slice());
        // One byte at a time, with an empty chunk after each.
        let parts: Vec<&'static [u8]> = all.chunks(1).flat_map(|c| [c, &[][..]]).collect();
        let mut r = FrameReader::new(stream_of(parts));
        for _ in 0..2 {
            assert_eq!(r.header().await.unwrap(), Some(h.clone()));
            let (tx, rx) = tokio::sync::mpsc::channel(64);
            let pump = r.pump(11, tx);
            let collect = channel_stream(rx).map(|c| c.unwrap().to_vec()).concat();
            let (p, got) = tokio::join!(pump, collect);
            p.unwrap();
            assert_eq!(&got[..], b"hello world");
        }
        assert_eq!(r.header().await.unwrap(), None);
    }

    #[tokio::test]
    async fn whole_frames_are_read_across_chunks_and_a_cut_keeps_what_arrived() {
        let h = FrameHeader {
            digest: Digest::of(b"hello world"),
            offset: 0,
            length: 11,
            status: None,
            error: None,
        };
        let mut all = h.encode().to_vec();
        all.extend_from_slice(b"hello world");
        all.extend_from_slice(&h.encode());
        let all: &'static [u8] = Box::leak(all.into_boxed_slice());
        for cut in 1..all.len() {
            let (a, b) = all.split_at(cut);
            let mut r = FrameReader::new(stream_of(vec![a, b]));
            assert_eq!(r.header().await.unwrap(), Some(h.clone()));
            assert_eq!(&r.read_whole(11).await.unwrap()[..], b"hello world");
            assert_eq!(r.header().await.unwrap(), Some(h.clone()), "cut at {cut}");
        }
        let mut v = h.encode().to_vec();
        v.extend_from_slice(b"hello");
        let v: &'static [u8] = Box::leak(v.into_boxed_slice());
        let mut r = FrameReader::new(stream_of(vec![v]));
        r.header().await.unwrap();
        let (kept, e) = r.read_whole(11).await.unwrap_err();
        assert_eq!(&kept[..], b"hello");
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn a_body_cut_inside_a_blob_or_header_is_an_error() {
        let mut r = FrameReader::new(stream_of(vec![b"{\"digest\":"]));
        assert!(r.header().await.is_err());
        let h = FrameHeader {
            digest: Digest::of(b"hello"),
            offset: 0,
            length: 5,
            status: None,
            error: None,
        };
        let mut v = h.encode().to_vec();
        v.extend_from_slice(b"he");
        let v: &'static [u8] = Box::leak(v.into_boxed_slice());
        let mut r = FrameReader::new(stream_of(vec![v]));
        r.header().await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        assert!(r.pump(5, tx).await.is_err());
        assert_eq!(&rx.recv().await.unwrap().unwrap()[..], b"he");
        assert!(rx.recv().await.unwrap().is_err());
    }
}
