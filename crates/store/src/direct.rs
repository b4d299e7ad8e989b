//! Writing a blob's file past the page cache (Linux `O_DIRECT`), for bytes
//! that arrive from another instance.
//!
//! A spoke copying a feed writes every byte once and serves few of them
//! soon. Through the page cache each byte is copied into a cache page,
//! written out later by the kernel, and flushed before the blob counts as
//! stored; on the virtual machines Ferry's edge sites run on, that copy
//! alone cost 0.25–2.3 s of CPU per GiB (measured: `dd` of 1 GiB in 64 KiB
//! writes), more than hashing it. Written with `O_DIRECT` the device reads
//! the bytes straight from the writer's buffer, the flush before commit
//! finds nothing left to write, and a large copy does not push what the
//! instance serves out of the cache.
//!
//! `O_DIRECT` needs the buffer's address, the file offset and the length
//! of every write to be multiples of the device's block size; [`ALIGN`]
//! (4096) satisfies every device Linux supports. The part of a block that
//! ends a file is written through the page cache after the rest. A
//! filesystem that refuses `O_DIRECT` (tmpfs, some network filesystems),
//! or a write it refuses for its alignment, gets ordinary writes instead:
//! the bytes are the same either way.

use std::io;
use std::sync::Mutex;

use ferry_types::Sha256Hasher;

/// Alignment of the buffer's address, the file offsets and the lengths of
/// direct writes, in bytes.
pub(crate) const ALIGN: usize = 4096;

/// Bytes gathered before one direct write (a multiple of [`ALIGN`]).
const DIRECT_BUF: usize = 1 << 20;

/// Fewest aligned bytes written straight from the caller's memory
/// ([`DirectWriter::write`]); fewer are gathered into the buffer.
const IN_PLACE_FROM: usize = 256 << 10;

/// Idle buffers kept for the next writer: a fresh megabyte from the
/// allocator is fresh pages from the kernel, each a fault to fill in.
const BUFFERS_KEPT: usize = 8;

static BUFFERS: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A buffer of `DIRECT_BUF + ALIGN` bytes, from the pool if one is idle.
fn take_buffer() -> Vec<u8> {
    let kept = BUFFERS.lock().map(|mut b| b.pop()).unwrap_or(None);
    kept.unwrap_or_else(|| vec![0; DIRECT_BUF + ALIGN])
}

fn return_buffer(buf: Vec<u8>) {
    if let Ok(mut kept) = BUFFERS.lock()
        && kept.len() < BUFFERS_KEPT
    {
        kept.push(buf);
    }
}

/// Bytes received for a blob the store will write with `O_DIRECT`, kept
/// from their first byte at an address aligned to [`ALIGN`], so that the
/// store writes their whole blocks straight from this memory instead of
/// copying them into its own buffer first. Filled with
/// [`AlignedBytes::extend_from_slice`] (past the capacity asked for, it
/// grows and may lose the alignment: the bytes are copied then, as any
/// others); [`AlignedBytes::freeze`] hands them on as `Bytes`, freed with
/// the last of those.
pub struct AlignedBytes {
    buf: Vec<u8>,
    /// Where the bytes start in `buf`.
    at: usize,
}

impl AlignedBytes {
    /// Empty, with room for `capacity` bytes from an aligned address.
    pub fn with_capacity(capacity: usize) -> Self {
        let mut buf: Vec<u8> = Vec::with_capacity(capacity.saturating_add(ALIGN));
        let at = buf.as_ptr().align_offset(ALIGN).min(ALIGN);
        buf.resize(at, 0);
        AlignedBytes { buf, at }
    }

    /// Appends `bytes`.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.buf.len() - self.at
    }

    /// Whether no byte is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes, as `Bytes` that keep this memory (no copy).
    pub fn freeze(self) -> bytes::Bytes {
        bytes::Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for AlignedBytes {
    fn as_ref(&self) -> &[u8] {
        &self.buf[self.at..]
    }
}

/// Opens `path` for writing (created if missing, not truncated) with
/// `O_DIRECT` when `direct` is asked for and the filesystem accepts it.
/// Returns the file and whether it is open for direct writes.
///
/// Errors: those of opening the file.
pub(crate) fn open_for_writing(path: &std::path::Path, direct: bool) -> io::Result<(std::fs::File, bool)> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut options = std::fs::OpenOptions::new();
    options.create(true).write(true).truncate(false);
    if direct && cfg!(target_os = "linux") {
        let mut with_direct = options.clone();
        with_direct.custom_flags(direct_flag());
        match with_direct.open(path) {
            Ok(f) => return Ok((f, true)),
            // tmpfs and others refuse the flag at open.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {}
            Err(e) => return Err(e),
        }
    }
    Ok((options.open(path)?, false))
}

#[cfg(target_os = "linux")]
fn direct_flag() -> i32 {
    // O_DIRECT is a small positive constant on every Linux architecture.
    i32::try_from(rustix::fs::OFlags::DIRECT.bits()).unwrap_or(0)
}

#[cfg(not(target_os = "linux"))]
fn direct_flag() -> i32 {
    0
}

/// Writes a file from `start` on (a multiple of [`ALIGN`] when the file
/// is open with `O_DIRECT`), hashing each byte as it is copied into an
/// aligned buffer and writing the buffer when it is full. [`Self::finish`]
/// writes the rest and cuts the file to the bytes written; it must be
/// called, also after a failed body, for the file to hold every byte that
/// arrived.
pub(crate) struct DirectWriter {
    file: std::fs::File,
    /// Still writing with `O_DIRECT` (false after the file refused it).
    direct: bool,
    buf: Vec<u8>,
    /// Where the aligned part of `buf` starts.
    at: usize,
    /// Bytes gathered in the aligned part.
    fill: usize,
    /// File offset of the aligned part's first byte.
    pos: u64,
}

impl DirectWriter {
    /// A writer of `file` from byte `start`. `direct` says whether `file` is
    /// open with `O_DIRECT` ([`open_for_writing`]); with an unaligned
    /// `start` it writes through the page cache.
    pub(crate) fn new(file: std::fs::File, direct: bool, start: u64) -> Self {
        let buf = take_buffer();
        let at = buf.as_ptr().align_offset(ALIGN).min(ALIGN);
        let mut w = DirectWriter {
            file,
            direct,
            buf,
            at,
            fill: 0,
            pos: start,
        };
        if direct && !start.is_multiple_of(ALIGN as u64) {
            w.stop_direct();
        }
        w
    }

    /// Copies `data` into the buffer, hashing it there, and writes each
    /// buffer that fills.
    ///
    /// Errors: the file's write errors.
    pub(crate) fn write(&mut self, mut data: &[u8], hasher: &mut Option<Sha256Hasher>) -> io::Result<()> {
        // Nothing gathered, and the bytes themselves aligned (received into
        // [`AlignedBytes`]): their whole blocks go to the file from where
        // they are, hashed in place; only the rest is copied. Only when
        // they are many: a network chunk can start at an aligned address
        // by chance (jemalloc aligns its larger allocations to pages), and
        // writing each such chunk of 16–64 KiB directly made thousands of
        // small device writes per GiB, which the device took at a fraction
        // of its rate.
        let whole = data.len() - data.len() % ALIGN;
        if self.direct
            && self.fill == 0
            && whole >= IN_PLACE_FROM
            && data.as_ptr().align_offset(ALIGN) == 0
            && self.pos.is_multiple_of(ALIGN as u64)
        {
            let (blocks, rest) = data.split_at(whole);
            if let Some(h) = hasher {
                h.update(blocks);
            }
            self.write_slice_at(blocks)?;
            self.pos += whole as u64;
            data = rest;
        }
        while !data.is_empty() {
            let n = data.len().min(DIRECT_BUF - self.fill);
            let from = self.at + self.fill;
            let slot = &mut self.buf[from..from + n];
            slot.copy_from_slice(&data[..n]);
            if let Some(h) = hasher {
                h.update(slot);
            }
            self.fill += n;
            data = &data[n..];
            if self.fill == DIRECT_BUF {
                self.flush_full()?;
            }
        }
        Ok(())
    }

    fn flush_full(&mut self) -> io::Result<()> {
        let len = self.fill;
        self.write_at(len)?;
        self.pos += len as u64;
        self.fill = 0;
        Ok(())
    }

    /// Writes the first `len` bytes of the aligned part at `pos`, falling
    /// back to ordinary writes if the file refuses a direct one.
    fn write_at(&mut self, len: usize) -> io::Result<()> {
        let buf = std::mem::take(&mut self.buf);
        let written = self.write_slice_at(&buf[self.at..self.at + len]);
        self.buf = buf;
        written
    }

    /// Writes `bytes` at `pos`, falling back to ordinary writes if the
    /// file refuses a direct one.
    fn write_slice_at(&mut self, bytes: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt as _;
        match self.file.write_all_at(bytes, self.pos) {
            Err(e) if self.direct && e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                self.stop_direct();
                self.file.write_all_at(bytes, self.pos)
            }
            r => r,
        }
    }

    fn stop_direct(&mut self) {
        if !self.direct {
            return;
        }
        self.direct = false;
        #[cfg(target_os = "linux")]
        if let Ok(flags) = rustix::fs::fcntl_getfl(&self.file) {
            let _ = rustix::fs::fcntl_setfl(&self.file, flags - rustix::fs::OFlags::DIRECT);
        }
    }

    /// Writes what is gathered and returns the file: its whole blocks with
    /// one direct write, the part of a block after them through the page
    /// cache (cheaper than writing it padded and cutting the file: a
    /// truncation frees blocks and rewrites the extent tree).
    ///
    /// Errors: the file's write errors.
    pub(crate) fn finish(mut self) -> io::Result<std::fs::File> {
        let whole = self.fill - self.fill % ALIGN;
        if whole > 0 {
            self.write_at(whole)?;
        }
        let rest = self.fill - whole;
        if rest > 0 {
            use std::os::unix::fs::FileExt as _;
            self.stop_direct();
            let from = self.at + whole;
            self.file
                .write_all_at(&self.buf[from..from + rest], self.pos + whole as u64)?;
        }
        let DirectWriter { file, buf, .. } = self;
        return_buffer(buf);
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `data` in `piece`-byte calls from `start` into a fresh file of
    /// `dir` that already holds `start` bytes of `prefix`; returns the file's
    /// bytes and the hash of what was written.
    fn write_through(
        dir: &std::path::Path,
        prefix: &[u8],
        data: &[u8],
        piece: usize,
        direct: bool,
    ) -> (Vec<u8>, ferry_types::Digest, bool) {
        let path = dir.join(format!("f-{}-{}-{piece}-{direct}", prefix.len(), data.len()));
        std::fs::write(&path, prefix).unwrap();
        let (file, opened_direct) = open_for_writing(&path, direct).unwrap();
        let mut w = DirectWriter::new(file, opened_direct, prefix.len() as u64);
        let mut hasher = Some(Sha256Hasher::new());
        for p in data.chunks(piece.max(1)) {
            w.write(p, &mut hasher).unwrap();
        }
        drop(w.finish().unwrap());
        (
            std::fs::read(&path).unwrap(),
            hasher.unwrap().finish(),
            opened_direct,
        )
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn every_length_is_written_exactly_and_hashed() {
        let dir = tempfile::tempdir().unwrap();
        for len in [
            0,
            1,
            4095,
            4096,
            4097,
            DIRECT_BUF - 1,
            DIRECT_BUF,
            DIRECT_BUF + 1,
            3 * DIRECT_BUF + 17,
        ] {
            for piece in [1000, 65536, 3 * DIRECT_BUF] {
                let data = pattern(len);
                let (got, digest, _) = write_through(dir.path(), &[], &data, piece, true);
                assert_eq!(got.len(), len, "length {len}, pieces of {piece}");
                assert!(got == data, "content of length {len}, pieces of {piece}");
                assert_eq!(digest, ferry_types::Digest::of(&data));
            }
        }
    }

    #[test]
    fn aligned_bytes_are_written_exactly_in_any_pieces_from_any_start() {
        let dir = tempfile::tempdir().unwrap();
        for len in [
            1,
            4095,
            4096,
            4097,
            3 * 4096 + 5,
            DIRECT_BUF,
            DIRECT_BUF + 4096 + 1,
        ] {
            let data = pattern(len);
            let mut a = AlignedBytes::with_capacity(len);
            a.extend_from_slice(&data[..len / 2]);
            a.extend_from_slice(&data[len / 2..]);
            assert_eq!(a.len(), len);
            let b = a.freeze();
            assert_eq!(b.as_ptr().align_offset(ALIGN), 0, "length {len}");
            for start in [0usize, 4096, 5000] {
                for piece in [3 * 4096, 1000, len] {
                    let prefix = pattern(start);
                    let (got, digest, _) = write_through(dir.path(), &prefix, &b, piece, true);
                    assert!(got[..start] == prefix[..], "prefix of {start}");
                    assert!(
                        got[start..] == data[..],
                        "length {len} from {start} in pieces of {piece}"
                    );
                    assert_eq!(digest, ferry_types::Digest::of(&data));
                }
            }
        }
        // Grown past what was asked for: still the same bytes.
        let mut a = AlignedBytes::with_capacity(10);
        a.extend_from_slice(&pattern(3 * 4096));
        assert!(a.freeze()[..] == pattern(3 * 4096)[..]);
    }

    #[test]
    fn a_resumed_file_keeps_its_first_bytes_aligned_or_not() {
        let dir = tempfile::tempdir().unwrap();
        for start in [4096usize, 2 * DIRECT_BUF, 5000, 1] {
            let prefix = pattern(start);
            let data: Vec<u8> = pattern(DIRECT_BUF + 333).into_iter().rev().collect();
            let (got, digest, _) = write_through(dir.path(), &prefix, &data, 70_000, true);
            assert_eq!(got.len(), start + data.len(), "start {start}");
            assert!(got[..start] == prefix[..], "prefix kept from {start}");
            assert!(got[start..] == data[..], "appended from {start}");
            assert_eq!(digest, ferry_types::Digest::of(&data));
        }
    }

    #[test]
    fn a_filesystem_without_direct_writes_gets_ordinary_ones() {
        // tmpfs refuses O_DIRECT at open; where /dev/shm is not tmpfs the
        // direct path is taken instead, and the bytes must be right too.
        let Ok(dir) = tempfile::tempdir_in("/dev/shm") else {
            return;
        };
        let data = pattern(DIRECT_BUF + 5);
        let (got, digest, _) = write_through(dir.path(), b"abc", &data, 4097, true);
        assert_eq!(&got[..3], b"abc");
        assert!(got[3..] == data[..]);
        assert_eq!(digest, ferry_types::Digest::of(&data));
    }
}
