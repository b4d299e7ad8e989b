//! A zip archive's central directory, located, bounded and walked by Ferry
//! before the `zip` crate reads it (APPNOTE.TXT 6.3.10: 4.3.12 central
//! file headers, 4.3.14 zip64 end record, 4.3.15 its locator, 4.3.16 the
//! end of central directory record).
//!
//! The `zip` crate keeps every file header of a directory in memory (some
//! hundreds of bytes each) before a caller can see how many there are, and
//! when the last end record's directory does not parse it searches the
//! whole file backwards for another. A 50 MB upload declaring a million
//! entries would so cost 700 MB before its entry count could be refused.
//! [`open`] reads the end record a conforming reader takes (the last one
//! in the file's final 64 KiB whose comment fits), refuses more entries
//! than [`ArchiveLimits::max_entries`] or a directory larger than its
//! entries can need, walks the directory's headers in constant memory, and
//! only then lets the crate open the archive, through a reader that stops
//! after the bytes those checks allow. The crate must then agree on where
//! the directory starts and how many entries it holds, so that Ferry
//! inspects what every client unpacks.

use std::io::{self, Read, Seek, SeekFrom};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::{ArchiveLimits, FormatError};

const END_LEN: u64 = 22;
const LOCATOR_LEN: u64 = 20;
const ZIP64_END_LEN: u64 = 56;
const HEADER_LEN: u64 = 46;
const MAX_COMMENT: u64 = 0xFFFF;
/// Largest central directory accepted, in bytes: 16 MiB, room for the
/// 100,000 entries [`ArchiveLimits::default`] allows at 160 bytes each.
pub(crate) const MAX_DIRECTORY_BYTES: u64 = 16 << 20;
/// Directory bytes allowed per declared entry (name, extra field and
/// comment included), beyond a 64 KiB allowance for the whole directory.
const BYTES_PER_ENTRY: u64 = 1024;
/// Largest zip64 end record accepted (its extensible data sector included).
const MAX_ZIP64_END: u64 = 64 << 10;

/// Where the central directory lies and what it declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Directory {
    /// Offset of its first file header from the start of the file.
    pub start: u64,
    /// Its length in bytes.
    pub size: u64,
    /// The number of file headers the end record declares.
    pub entries: u64,
}

fn le16(b: &[u8], at: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

fn le32(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]))
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn read_at<R: Read + Seek>(reader: &mut R, at: u64, buf: &mut [u8]) -> io::Result<()> {
    reader.seek(SeekFrom::Start(at))?;
    reader.read_exact(buf)
}

/// Finds and reads the end records of the zip archive in `reader` and
/// checks what they declare against `limits`. `what` names the archive in
/// messages (`the package`). Errors: [`FormatError::Invalid`] for a file
/// without end record, a directory outside the file, multi-disk archives,
/// zip64 records that disagree with the end record; [`FormatError::TooLarge`]
/// for more than `limits.max_entries` entries, or a directory larger than
/// [`MAX_DIRECTORY_BYTES`] or than 64 KiB plus 1 KiB per declared entry.
pub(crate) fn locate<R: Read + Seek>(
    reader: &mut R,
    what: &str,
    limits: &ArchiveLimits,
) -> Result<Directory, FormatError> {
    let unreadable = |e: io::Error| FormatError::invalid(format!("{what} is unreadable: {e}"));
    let not_zip = |why: &str| FormatError::invalid(format!("{what} is not a valid zip archive: {why}"));
    let len = reader.seek(SeekFrom::End(0)).map_err(unreadable)?;
    if len < END_LEN {
        return Err(not_zip("it is shorter than an end of central directory record"));
    }
    let tail_len = len.min(END_LEN + MAX_COMMENT);
    let tail_start = len - tail_len;
    let mut tail = vec![0u8; tail_len as usize];
    read_at(reader, tail_start, &mut tail).map_err(unreadable)?;
    // The last end record whose comment ends within the file: the one
    // readers try first.
    let at = (0..=tail.len() - END_LEN as usize)
        .rev()
        .find(|&i| tail[i..i + 4] == *b"PK\x05\x06" && i as u64 + END_LEN + le16(&tail, i + 20) <= tail_len)
        .ok_or_else(|| not_zip("it has no end of central directory record"))?;
    let end = &tail[at..at + END_LEN as usize];
    let end_pos = tail_start + at as u64;
    let (disk, dir_disk) = (le16(end, 4), le16(end, 6));
    let (mut on_disk, mut entries) = (le16(end, 8), le16(end, 10));
    let (mut size, mut start) = (le32(end, 12), le32(end, 16));
    if disk != 0 || dir_disk != 0 {
        return Err(not_zip("it spans several disks"));
    }
    // A zip64 locator just before the end record: its record's figures
    // replace the ones the end record marks as too large for its fields,
    // and must match those it does not.
    let mut records_start = end_pos;
    if end_pos >= LOCATOR_LEN {
        let mut locator = [0u8; LOCATOR_LEN as usize];
        read_at(reader, end_pos - LOCATOR_LEN, &mut locator).map_err(unreadable)?;
        if locator[..4] == *b"PK\x06\x07" {
            let (record_at, disks) = (le64(&locator, 8), le32(&locator, 16));
            if le32(&locator, 4) != 0 || disks > 1 {
                return Err(not_zip("it spans several disks"));
            }
            if record_at
                .checked_add(ZIP64_END_LEN)
                .is_none_or(|e| e > end_pos - LOCATOR_LEN)
            {
                return Err(not_zip("its zip64 locator points past the end record"));
            }
            let mut record = [0u8; ZIP64_END_LEN as usize];
            read_at(reader, record_at, &mut record).map_err(unreadable)?;
            let record_len = le64(&record, 4).saturating_add(12);
            if record[..4] != *b"PK\x06\x06"
                || !(ZIP64_END_LEN..=MAX_ZIP64_END).contains(&record_len)
                || record_at + record_len != end_pos - LOCATOR_LEN
            {
                return Err(not_zip(
                    "its zip64 end of central directory record is missing or malformed",
                ));
            }
            if le32(&record, 16) != 0 || le32(&record, 20) != 0 {
                return Err(not_zip("it spans several disks"));
            }
            let agree = |narrow: u64, sentinel: u64, wide: u64| narrow == sentinel || narrow == wide;
            let (w_on_disk, w_entries) = (le64(&record, 24), le64(&record, 32));
            let (w_size, w_start) = (le64(&record, 40), le64(&record, 48));
            if !(agree(on_disk, 0xFFFF, w_on_disk)
                && agree(entries, 0xFFFF, w_entries)
                && agree(size, 0xFFFF_FFFF, w_size)
                && agree(start, 0xFFFF_FFFF, w_start))
            {
                return Err(not_zip("its zip64 end record disagrees with its end record"));
            }
            (on_disk, entries, size, start) = (w_on_disk, w_entries, w_size, w_start);
            records_start = record_at;
        }
    }
    if on_disk != entries {
        return Err(not_zip("it spans several disks"));
    }
    if entries > limits.max_entries {
        return Err(FormatError::too_large(format!(
            "{what} has more than {} entries ({entries} declared)",
            limits.max_entries
        )));
    }
    if start.checked_add(size).is_none_or(|e| e > records_start) {
        return Err(not_zip("its central directory lies outside the file"));
    }
    if size < entries.saturating_mul(HEADER_LEN) {
        return Err(not_zip(
            "its central directory is too short for the entries it declares",
        ));
    }
    let allowed = MAX_DIRECTORY_BYTES.min((64 << 10) + entries.saturating_mul(BYTES_PER_ENTRY));
    if size > allowed {
        return Err(FormatError::too_large(format!(
            "{what}'s central directory is {size} bytes, more than the {allowed} allowed for its {entries} entries"
        )));
    }
    Ok(Directory { start, size, entries })
}

/// Reads the `dir.entries` central file headers of `dir` one at a time and
/// calls `on_name` with each entry's raw name (at most 65,535 bytes). The
/// headers must fill the directory exactly: a directory holding more
/// headers than its end record declares shows different entries to
/// different readers. Errors: [`FormatError::Invalid`], or what `on_name`
/// returns.
pub(crate) fn walk<R: Read + Seek>(
    reader: &mut R,
    dir: &Directory,
    what: &str,
    mut on_name: impl FnMut(&[u8]) -> Result<(), FormatError>,
) -> Result<(), FormatError> {
    let unreadable =
        |e: io::Error| FormatError::invalid(format!("{what}'s central directory is unreadable: {e}"));
    reader.seek(SeekFrom::Start(dir.start)).map_err(unreadable)?;
    let mut header = [0u8; HEADER_LEN as usize];
    let mut name = Vec::new();
    let mut walked: u64 = 0;
    for i in 0..dir.entries {
        if walked + HEADER_LEN > dir.size {
            return Err(FormatError::invalid(format!(
                "{what}'s central directory ends within its file header {i} of {}",
                dir.entries
            )));
        }
        reader.read_exact(&mut header).map_err(unreadable)?;
        if header[..4] != *b"PK\x01\x02" {
            return Err(FormatError::invalid(format!(
                "{what}'s central directory has no file header where its entry {i} should be"
            )));
        }
        let (name_len, rest) = (le16(&header, 28), le16(&header, 30) + le16(&header, 32));
        walked += HEADER_LEN + name_len + rest;
        if walked > dir.size {
            return Err(FormatError::invalid(format!(
                "{what}'s central file header {i} runs past the end of its central directory"
            )));
        }
        name.clear();
        reader
            .by_ref()
            .take(name_len)
            .read_to_end(&mut name)
            .map_err(unreadable)?;
        if name.len() as u64 != name_len {
            return Err(unreadable(io::ErrorKind::UnexpectedEof.into()));
        }
        on_name(&name)?;
        reader.seek(SeekFrom::Current(rest as i64)).map_err(unreadable)?;
    }
    if walked != dir.size {
        return Err(FormatError::invalid(format!(
            "{what}'s central directory holds {} bytes more than its {} file headers",
            dir.size - walked,
            dir.entries
        )));
    }
    Ok(())
}

/// A reader that, while armed, fails once it has passed `left` bytes: the
/// `zip` crate reads an archive's directory through it, so that it cannot
/// read more than [`open`] has checked.
pub(crate) struct Budgeted<R> {
    inner: R,
    left: u64,
    armed: Arc<AtomicBool>,
}

impl<R: Read> Read for Budgeted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.armed.load(Ordering::Relaxed) {
            return self.inner.read(buf);
        }
        if self.left == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the zip reader went past the central directory its end record declares",
            ));
        }
        let want = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

impl<R: Seek> Seek for Budgeted<R> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.inner.seek(pos)
    }
}

/// Opens `reader` as a zip archive once [`locate`] and [`walk`] have
/// accepted it (`on_name` sees each entry's raw name), with the `zip`
/// crate reading no more than the directory and end records, and checks
/// that the crate found that directory and its entry count. Errors as
/// [`locate`] and [`walk`]; [`FormatError::Invalid`] when the crate
/// cannot read the directory or reads another one.
pub(crate) fn open<R: Read + Seek>(
    mut reader: R,
    what: &str,
    limits: &ArchiveLimits,
    on_name: impl FnMut(&[u8]) -> Result<(), FormatError>,
) -> Result<zip::ZipArchive<Budgeted<R>>, FormatError> {
    let dir = locate(&mut reader, what, limits)?;
    walk(&mut reader, &dir, what, on_name)?;
    let len = reader
        .seek(SeekFrom::End(0))
        .map_err(|e| FormatError::invalid(format!("{what} is unreadable: {e}")))?;
    // The crate reads the end records (searching back from the end in
    // small steps), then the directory: twice the records, once the
    // directory, and some slack.
    let records = len - (dir.start + dir.size);
    let armed = Arc::new(AtomicBool::new(true));
    let budgeted = Budgeted {
        inner: reader,
        left: dir.size + 2 * records + (16 << 10),
        armed: armed.clone(),
    };
    let zip = zip::ZipArchive::new(budgeted)
        .map_err(|e| FormatError::invalid(format!("{what} is not a valid zip archive: {e}")))?;
    armed.store(false, Ordering::Relaxed);
    if zip.len() as u64 != dir.entries || zip.central_directory_start() != dir.start {
        return Err(FormatError::invalid(format!(
            "{what} is an ambiguous zip archive: its central directory is not the one its last end record names"
        )));
    }
    Ok(zip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Write as _};

    fn zip_of(names: &[&str]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for n in names {
            w.start_file(*n, zip::write::SimpleFileOptions::default())
                .unwrap();
            w.write_all(b"x").unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    /// An archive whose end records declare `entries` entries in a
    /// directory of `size` bytes at `start`, zip64 when asked.
    fn end_records(body: &[u8], entries: u64, size: u64, start: u64, zip64: bool) -> Vec<u8> {
        let mut out = body.to_vec();
        if zip64 {
            let record_at = out.len() as u64;
            out.extend_from_slice(b"PK\x06\x06");
            out.extend_from_slice(&44u64.to_le_bytes());
            out.extend_from_slice(&[45, 0, 45, 0]);
            out.extend_from_slice(&[0; 8]);
            out.extend_from_slice(&entries.to_le_bytes());
            out.extend_from_slice(&entries.to_le_bytes());
            out.extend_from_slice(&size.to_le_bytes());
            out.extend_from_slice(&start.to_le_bytes());
            out.extend_from_slice(b"PK\x06\x07");
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&record_at.to_le_bytes());
            out.extend_from_slice(&1u32.to_le_bytes());
        }
        out.extend_from_slice(b"PK\x05\x06");
        out.extend_from_slice(&[0; 4]);
        let (n16, s32, o32) = if zip64 {
            (0xFFFFu16, 0xFFFF_FFFFu32, 0xFFFF_FFFFu32)
        } else {
            (entries as u16, size as u32, start as u32)
        };
        out.extend_from_slice(&n16.to_le_bytes());
        out.extend_from_slice(&n16.to_le_bytes());
        out.extend_from_slice(&s32.to_le_bytes());
        out.extend_from_slice(&o32.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out
    }

    fn open_bytes(b: Vec<u8>, limits: &ArchiveLimits) -> Result<usize, FormatError> {
        open(Cursor::new(b), "the package", limits, |_| Ok(())).map(|z| z.len())
    }

    #[test]
    fn a_plain_archive_opens_and_its_names_are_walked() {
        let z = zip_of(&["a.txt", "dir/b.txt"]);
        let mut names = Vec::new();
        let zip = open(Cursor::new(z), "the package", &ArchiveLimits::default(), |n| {
            names.push(String::from_utf8_lossy(n).into_owned());
            Ok(())
        })
        .unwrap();
        assert_eq!(zip.len(), 2);
        assert_eq!(names, ["a.txt", "dir/b.txt"]);
    }

    #[test]
    fn a_declared_entry_count_past_the_limit_is_refused_before_the_directory_is_read() {
        // A million entries declared in a zip64 end record, with no
        // directory at all: refused from the end records alone.
        let b = end_records(&[], 1_000_002, 46 * 1_000_002, 0, true);
        let Err(FormatError::TooLarge(m)) = open_bytes(b, &ArchiveLimits::default()) else {
            panic!("not refused as too large")
        };
        assert!(m.contains("more than 100000 entries (1000002 declared)"), "{m}");
        let b = end_records(&[], 3, 0, 0, false);
        let limits = ArchiveLimits {
            max_entries: 2,
            ..ArchiveLimits::default()
        };
        assert!(matches!(open_bytes(b, &limits), Err(FormatError::TooLarge(_))));
    }

    #[test]
    fn a_directory_larger_than_its_entries_need_is_refused() {
        let body = vec![0u8; 200 << 10];
        let b = end_records(&body, 10, 150 << 10, 0, false);
        let Err(FormatError::TooLarge(m)) = open_bytes(b, &ArchiveLimits::default()) else {
            panic!("not refused as too large")
        };
        assert!(m.contains("central directory is 153600 bytes"), "{m}");
    }

    #[test]
    fn more_headers_than_declared_or_a_directory_elsewhere_is_refused() {
        let z = zip_of(&["a.txt", "b.txt"]);
        let start = zip::ZipArchive::new(Cursor::new(z.clone()))
            .unwrap()
            .central_directory_start();
        let size = (z.len() - END_LEN as usize) as u64 - start;
        // The same directory, its end record declaring one entry of two.
        let b = end_records(&z[..z.len() - END_LEN as usize], 1, size, start, false);
        let Err(FormatError::Invalid(m)) = open_bytes(b, &ArchiveLimits::default()) else {
            panic!("not refused")
        };
        assert!(m.contains("bytes more than its 1 file headers"), "{m}");
        // A directory offset that points into the entries' data.
        let b = end_records(&z[..z.len() - END_LEN as usize], 2, size, start - 10, false);
        assert!(matches!(
            open_bytes(b, &ArchiveLimits::default()),
            Err(FormatError::Invalid(_))
        ));
        // Past the end of the file.
        let b = end_records(&z[..z.len() - END_LEN as usize], 2, size, start + 4096, false);
        assert!(matches!(
            open_bytes(b, &ArchiveLimits::default()),
            Err(FormatError::Invalid(_))
        ));
        // Not a zip at all.
        assert!(matches!(
            open_bytes(b"PK".to_vec(), &ArchiveLimits::default()),
            Err(FormatError::Invalid(_))
        ));
        assert!(matches!(
            open_bytes(vec![0; 1000], &ArchiveLimits::default()),
            Err(FormatError::Invalid(_))
        ));
    }

    #[test]
    fn zip64_records_that_disagree_with_the_end_record_are_refused() {
        let z = zip_of(&["a.txt"]);
        let zip = zip::ZipArchive::new(Cursor::new(z.clone())).unwrap();
        let start = zip.central_directory_start();
        let body = &z[..z.len() - END_LEN as usize];
        let size = body.len() as u64 - start;
        let good = end_records(body, 1, size, start, true);
        assert_eq!(open_bytes(good.clone(), &ArchiveLimits::default()).unwrap(), 1);
        // The end record says 1 entry where its zip64 record says 2.
        let mut bad = good;
        let n = bad.len();
        bad[n - 12..n - 10].copy_from_slice(&1u16.to_le_bytes());
        bad[n - 14..n - 12].copy_from_slice(&1u16.to_le_bytes());
        let at = n - END_LEN as usize - LOCATOR_LEN as usize - ZIP64_END_LEN as usize;
        bad[at + 24..at + 32].copy_from_slice(&2u64.to_le_bytes());
        bad[at + 32..at + 40].copy_from_slice(&2u64.to_le_bytes());
        let Err(FormatError::Invalid(m)) = open_bytes(bad, &ArchiveLimits::default()) else {
            panic!("not refused")
        };
        assert!(m.contains("disagrees"), "{m}");
    }
}
