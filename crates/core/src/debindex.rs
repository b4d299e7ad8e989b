//! Debian `Packages` indexes built from buckets, so that publishing one
//! package recompresses one bucket instead of the whole index.
//!
//! A distribution's `COMPONENT/binary-ARCH/Packages` is the concatenation
//! of [`BUCKETS`] bucket texts (a package's bucket is a hash of its name).
//! Each bucket is compressed once and kept ([`Packed`]):
//!
//! - `Packages.gz` is the concatenation of one gzip member per bucket
//!   (RFC 1952 §2.2: "a gzip file consists of a series of members";
//!   zlib's `gzread`, which apt uses, reads them all);
//! - `Packages.xz` is one xz stream holding one block per bucket (the
//!   `.xz` file format 1.2.0, §2 to §4: stream header, blocks, index,
//!   stream footer). Concatenated xz *streams* would not do: apt 2.6's
//!   decoder stops after the first stream, and would see part of the index.
//!
//! The uncompressed index and the hashes `Release` lists are computed over
//! the concatenations.

use std::io::Write;

use bytes::{Bytes, BytesMut};
use sha2::{Digest as _, Sha256, Sha512};

use crate::CoreError;

/// How many buckets each `Packages` file is split into.
pub const BUCKETS: usize = 64;

/// The bucket of a package (by name: every version of a package shares one).
/// FNV-1a, so that every instance and every run agrees.
pub fn bucket_of(package: &str) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in package.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % BUCKETS as u64) as usize
}

/// One bucket of one index: its text, its gzip member and its xz blocks.
#[derive(Debug, Clone, Default)]
pub struct Packed {
    pub plain: Bytes,
    /// One gzip member (empty for an empty bucket).
    pub gz: Bytes,
    /// The xz blocks (with their padding and check), as in a stream.
    pub xz_blocks: Bytes,
    /// Per block: (unpadded size, uncompressed size), for the stream's index.
    pub xz_records: Vec<(u64, u64)>,
    /// The xz stream flags the blocks were made with (the check type).
    pub xz_flags: [u8; 2],
}

impl Packed {
    /// Compresses one bucket's text (gzip level 1, xz preset 0: apt reads
    /// them alike and publishing stays fast).
    pub fn new(plain: Bytes) -> Result<Self, CoreError> {
        if plain.is_empty() {
            return Ok(Self::default());
        }
        let gz = gzip(&plain)?;
        let stream = xz(&plain)?;
        let (xz_flags, xz_blocks, xz_records) = split_xz_stream(&stream)?;
        Ok(Self {
            plain,
            gz: Bytes::from(gz),
            xz_blocks,
            xz_records,
            xz_flags,
        })
    }
}

/// One index file, with the sizes and hashes `Release` lists.
#[derive(Debug, Clone)]
pub struct Hashed {
    pub body: Bytes,
    pub sha256: String,
    pub sha512: String,
}

impl Hashed {
    fn new(body: Bytes) -> Self {
        let sha256 = hex::encode(Sha256::digest(&body));
        let sha512 = hex::encode(Sha512::digest(&body));
        Self { body, sha256, sha512 }
    }
}

/// An index's `Packages`, `Packages.gz` and `Packages.xz` from its buckets, in order.
pub fn assemble(buckets: &[&Packed]) -> Result<[Hashed; 3], CoreError> {
    let plain = concat(buckets.iter().map(|b| &b.plain));
    let gz = if buckets.iter().all(|b| b.gz.is_empty()) {
        Bytes::from(gzip(b"")?)
    } else {
        concat(buckets.iter().map(|b| &b.gz))
    };
    let xz = if buckets.iter().all(|b| b.xz_records.is_empty()) {
        Bytes::from(xz(b"")?)
    } else {
        join_xz_blocks(buckets)?
    };
    Ok([Hashed::new(plain), Hashed::new(gz), Hashed::new(xz)])
}

fn concat<'a>(parts: impl Iterator<Item = &'a Bytes> + Clone) -> Bytes {
    let mut out = BytesMut::with_capacity(parts.clone().map(Bytes::len).sum());
    for p in parts {
        out.extend_from_slice(p);
    }
    out.freeze()
}

fn gzip(data: &[u8]) -> Result<Vec<u8>, CoreError> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data)
        .and_then(|_| enc.finish())
        .map_err(|e| CoreError::Internal(format!("gzip: {e}")))
}

fn xz(data: &[u8]) -> Result<Vec<u8>, CoreError> {
    let mut enc = xz2::write::XzEncoder::new(Vec::new(), 0);
    enc.write_all(data)
        .and_then(|_| enc.finish())
        .map_err(|e| CoreError::Internal(format!("xz: {e}")))
}

const XZ_MAGIC: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0x00];
const XZ_FOOTER_MAGIC: [u8; 2] = [b'Y', b'Z'];

fn xz_err(why: &str) -> CoreError {
    CoreError::Internal(format!("xz stream: {why}"))
}

/// A stream's flags, its blocks and its index records.
type XzParts = ([u8; 2], Bytes, Vec<(u64, u64)>);

/// Splits one complete xz stream into its stream flags, its blocks (as
/// they lie in the stream) and its index records.
fn split_xz_stream(s: &[u8]) -> Result<XzParts, CoreError> {
    if s.len() < 24 || s[..6] != XZ_MAGIC || s[s.len() - 2..] != XZ_FOOTER_MAGIC {
        return Err(xz_err("not a single xz stream"));
    }
    let flags = [s[6], s[7]];
    let footer = &s[s.len() - 12..];
    let backward = u32::from_le_bytes([footer[4], footer[5], footer[6], footer[7]]);
    let index_size = (backward as usize + 1) * 4;
    let index_start = (s.len() - 12)
        .checked_sub(index_size)
        .filter(|i| *i >= 12)
        .ok_or_else(|| xz_err("index size out of range"))?;
    let index = &s[index_start..s.len() - 12];
    if index[0] != 0 {
        return Err(xz_err("no index indicator"));
    }
    let mut pos = 1;
    let count = read_varint(index, &mut pos)?;
    let mut records = Vec::new();
    for _ in 0..count {
        let unpadded = read_varint(index, &mut pos)?;
        let uncompressed = read_varint(index, &mut pos)?;
        records.push((unpadded, uncompressed));
    }
    Ok((flags, Bytes::copy_from_slice(&s[12..index_start]), records))
}

fn read_varint(b: &[u8], pos: &mut usize) -> Result<u64, CoreError> {
    let mut v: u64 = 0;
    for i in 0..9 {
        let byte = *b.get(*pos).ok_or_else(|| xz_err("truncated index"))?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(xz_err("overlong number in index"))
}

fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// One xz stream holding the blocks of every bucket, in order, with an
/// index listing them all.
fn join_xz_blocks(buckets: &[&Packed]) -> Result<Bytes, CoreError> {
    let mut flags = None;
    let mut index = vec![0u8];
    let records: Vec<(u64, u64)> = buckets
        .iter()
        .flat_map(|b| b.xz_records.iter().copied())
        .collect();
    write_varint(&mut index, records.len() as u64);
    for (unpadded, uncompressed) in &records {
        write_varint(&mut index, *unpadded);
        write_varint(&mut index, *uncompressed);
    }
    while index.len() % 4 != 0 {
        index.push(0);
    }
    let crc = crc32fast::hash(&index);
    index.extend_from_slice(&crc.to_le_bytes());
    for b in buckets.iter().filter(|b| !b.xz_records.is_empty()) {
        match flags {
            None => flags = Some(b.xz_flags),
            Some(f) if f != b.xz_flags => return Err(xz_err("buckets made with different checks")),
            Some(_) => {}
        }
    }
    let flags = flags.ok_or_else(|| xz_err("no blocks"))?;
    let blocks: usize = buckets.iter().map(|b| b.xz_blocks.len()).sum();
    let mut out = BytesMut::with_capacity(12 + blocks + index.len() + 12);
    out.extend_from_slice(&XZ_MAGIC);
    out.extend_from_slice(&flags);
    out.extend_from_slice(&crc32fast::hash(&flags).to_le_bytes());
    for b in buckets {
        out.extend_from_slice(&b.xz_blocks);
    }
    out.extend_from_slice(&index);
    let backward = u32::try_from(index.len() / 4 - 1).map_err(|_| xz_err("index too large"))?;
    let mut tail = Vec::with_capacity(6);
    tail.extend_from_slice(&backward.to_le_bytes());
    tail.extend_from_slice(&flags);
    out.extend_from_slice(&crc32fast::hash(&tail).to_le_bytes());
    out.extend_from_slice(&tail);
    out.extend_from_slice(&XZ_FOOTER_MAGIC);
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn text(i: usize) -> Bytes {
        Bytes::from(
            (0..i * 3 + 1)
                .map(|j| format!("Package: p{i}-{j}\nVersion: 1.0\n\n"))
                .collect::<String>(),
        )
    }

    #[test]
    fn assembled_indexes_decode_to_the_whole_text() {
        let packed: Vec<Packed> = (0..10)
            .map(|i| Packed::new(if i % 3 == 0 { Bytes::new() } else { text(i) }).unwrap())
            .collect();
        let refs: Vec<&Packed> = packed.iter().collect();
        let [plain, gz, xz] = assemble(&refs).unwrap();
        let whole: Vec<u8> = packed.iter().flat_map(|p| p.plain.to_vec()).collect();
        assert_eq!(plain.body.as_ref(), whole.as_slice());
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(gz.body.as_ref())
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, whole);
        // A decoder that stops at the end of the first stream (apt's)
        // still reads everything: it is one stream.
        let mut out = Vec::new();
        let mut dec = xz2::read::XzDecoder::new(xz.body.as_ref());
        dec.read_to_end(&mut out).unwrap();
        assert_eq!(out, whole);
        assert_eq!(dec.total_in(), xz.body.len() as u64);
        assert_eq!(plain.sha256, hex::encode(Sha256::digest(&whole)));
    }

    #[test]
    fn an_empty_index_is_valid_empty_gzip_and_xz() {
        let empty = Packed::new(Bytes::new()).unwrap();
        let [plain, gz, xz] = assemble(&[&empty, &empty]).unwrap();
        assert!(plain.body.is_empty());
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(gz.body.as_ref())
            .read_to_end(&mut out)
            .unwrap();
        assert!(out.is_empty());
        xz2::read::XzDecoder::new(xz.body.as_ref())
            .read_to_end(&mut out)
            .unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn buckets_spread_and_are_stable() {
        assert_eq!(bucket_of("bash"), bucket_of("bash"));
        let used: std::collections::BTreeSet<usize> =
            (0..1000).map(|i| bucket_of(&format!("pkg-{i}"))).collect();
        assert_eq!(used.len(), BUCKETS);
    }
}
