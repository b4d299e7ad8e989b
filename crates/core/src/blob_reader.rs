//! A stored blob as a blocking `Read + Seek`, for parsers that jump about
//! in a file (a zip's central directory sits at its end): a `.nupkg` that
//! arrived by replication is read where it lies — on disk or in S3 —
//! instead of being copied out first.

use std::io::{self, Read, Seek, SeekFrom};

use bytes::Bytes;
use ferry_store::ByteStream;
use ferry_types::Digest;
use futures::StreamExt;

use crate::Ferry;

/// How far ahead of what was read a seek may land and still be reached by
/// reading on (bytes); further, the store is asked for a new range.
const SKIP_AHEAD: u64 = 1 << 20;

/// A blocking reader over one stored blob of `len` bytes. A read opens a
/// ranged read of the store from the current position to the end and
/// keeps it while reads move forward: the last chunk received stays at
/// hand, so short seeks back into it, and seeks up to [`SKIP_AHEAD`]
/// bytes forward, cost no new request (a zip's reader seeks to every
/// entry). For blocking threads only (`spawn_blocking`): every read waits
/// on the runtime behind `handle`. Errors: the store's, as `io::Error`;
/// a range that ends before `len` is `UnexpectedEof`.
pub(crate) struct SeekableBlob {
    ferry: Ferry,
    digest: Digest,
    len: u64,
    pos: u64,
    handle: tokio::runtime::Handle,
    /// The open ranged read; it continues right after `window`.
    body: Option<ByteStream>,
    /// The last chunk received, and the offset of its first byte.
    window: Bytes,
    window_start: u64,
}

impl SeekableBlob {
    /// `len`: the blob's size in bytes, as the store reports it.
    /// `handle`: the runtime the store's reads run on.
    pub(crate) fn new(ferry: Ferry, digest: Digest, len: u64, handle: tokio::runtime::Handle) -> Self {
        SeekableBlob {
            ferry,
            digest,
            len,
            pos: 0,
            handle,
            body: None,
            window: Bytes::new(),
            window_start: 0,
        }
    }

    fn window_end(&self) -> u64 {
        self.window_start + self.window.len() as u64
    }

    /// Makes `window` hold `pos`, reading on or opening a new range.
    fn fill(&mut self) -> io::Result<()> {
        let reachable = self.body.is_some()
            && self.pos >= self.window_end()
            && self.pos - self.window_end() <= SKIP_AHEAD;
        if !reachable {
            let range = self.pos..self.len;
            let opened = self
                .handle
                .block_on(self.ferry.read_blob(&self.digest, Some(range)))
                .map_err(|e| io::Error::other(e.to_string()))?;
            self.body = Some(opened.stream);
            self.window = Bytes::new();
            self.window_start = self.pos;
        }
        while self.pos >= self.window_end() {
            let next_start = self.window_end();
            let next = match &mut self.body {
                Some(body) => self.handle.block_on(body.next()),
                None => None,
            };
            match next {
                Some(Ok(chunk)) => {
                    self.window = chunk;
                    self.window_start = next_start;
                }
                Some(Err(e)) => {
                    self.body = None;
                    return Err(io::Error::other(e.to_string()));
                }
                None => {
                    self.body = None;
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("blob {} ended at byte {next_start} of {}", self.digest, self.len),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Read for SeekableBlob {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.pos >= self.len {
            return Ok(0);
        }
        if self.pos < self.window_start || self.pos >= self.window_end() {
            self.fill()?;
        }
        let at = (self.pos - self.window_start) as usize;
        let n = buf.len().min(self.window.len() - at);
        buf[..n].copy_from_slice(&self.window[at..at + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for SeekableBlob {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.pos = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        }
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start of the blob"))?;
        Ok(self.pos)
    }
}
