//! RPM feeds (dnf/yum/zypper repositories): reading a package's header,
//! validating it, and rendering the per-package parts of the repodata.
//!
//! Specs: the RPM file format (rpm.org "RPM Package format v4": a 96-byte
//! lead, the signature header padded to 8 bytes, the main header, the
//! payload; a header is a 16-byte intro — magic `8E AD E8 01`, 4 reserved
//! bytes, index count, data size, big-endian — then 16-byte index entries
//! and the data store) and the createrepo repodata format
//! (`repodata/repomd.xml` naming `primary`, `filelists` and `other`, the XML
//! namespaces `http://linux.duke.edu/metadata/{common,rpm,filelists,other,repo}`).
//!
//! Item layout: one item per package (NEVRA), key `rpm/NAME/EVR/ARCH` with
//! `EVR` always `EPOCH:VERSION-RELEASE`, metadata an [`RpmMeta`] (what the
//! repodata needs, read from the header at upload), one blob: the `.rpm`.
//! Its location in the repository is
//! `packages/NAME/EPOCH/NAME-VERSION-RELEASE.ARCH.rpm` ([`location`]).
//! Repodata is never an item: each instance renders its own.

use std::fmt::Write as _;
use std::io::Read;

use ferry_types::{Digest, ItemKey};
use serde::{Deserialize, Serialize};

use crate::FormatError;

/// Longest package name, version, release or architecture accepted.
pub const MAX_FIELD_LEN: usize = 128;
/// Largest signature plus main header read from an upload (bytes).
pub const MAX_HEADER_BYTES: u64 = 64 << 20;
/// Most changelog entries kept per package (the newest); `other.xml` lists them.
pub const MAX_CHANGELOG: usize = 10;

const LEAD_SIZE: u64 = 96;
const LEAD_MAGIC: [u8; 4] = [0xed, 0xab, 0xee, 0xdb];
/// Why a source package is refused: its lead says so, its header has no
/// SOURCERPM (as rpm decides) or a SOURCEPACKAGE tag, or its architecture
/// is `src`/`nosrc`.
const SOURCE_RPM: &str = "source RPMs are not served by rpm feeds (upload binary packages)";
const HEADER_MAGIC: [u8; 4] = [0x8e, 0xad, 0xe8, 0x01];

/// One dependency (`provides`, `requires`, ...): a name and, when
/// versioned, a comparison and an EVR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dep {
    pub name: String,
    /// `EQ`, `LT`, `LE`, `GT`, `GE` (None: any version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ver: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rel: Option<String>,
    /// A requirement of an install scriptlet (`Requires(pre)` and the like).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pre: bool,
}

/// What a file-list entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    File,
    Dir,
    Ghost,
}

/// One entry of a package's file list: an absolute path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRec {
    pub path: String,
    pub kind: FileKind,
}

/// One changelog entry (`date` in seconds since the epoch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub author: String,
    pub date: u64,
    pub text: String,
}

/// Every dependency list of a package, as the header has them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deps {
    pub provides: Vec<Dep>,
    pub requires: Vec<Dep>,
    pub conflicts: Vec<Dep>,
    pub obsoletes: Vec<Dep>,
    pub recommends: Vec<Dep>,
    pub suggests: Vec<Dep>,
    pub supplements: Vec<Dep>,
    pub enhances: Vec<Dep>,
}

/// What an uploaded `.rpm`'s header says, as read at upload (everything
/// the repodata needs, so publishing never reopens the package).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpmInfo {
    pub name: String,
    pub epoch: u32,
    pub version: String,
    pub release: String,
    pub arch: String,
    pub summary: String,
    pub description: String,
    pub license: String,
    pub url: String,
    pub vendor: String,
    pub group: String,
    pub packager: String,
    pub buildhost: String,
    pub sourcerpm: String,
    /// Seconds since the epoch.
    pub buildtime: u64,
    /// Sum of the installed files' sizes, bytes.
    pub installed_size: u64,
    /// Uncompressed payload size, bytes (0 when the header does not say).
    pub archive_size: u64,
    /// Byte offsets of the main header in the file: `[start, end)`.
    pub header_start: u64,
    pub header_end: u64,
    pub deps: Deps,
    pub files: Vec<FileRec>,
    /// Newest first, at most [`MAX_CHANGELOG`].
    pub changelog: Vec<Change>,
}

/// An rpm item's metadata: the header data plus the file's size, digest
/// and upload time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpmMeta {
    #[serde(flatten)]
    pub info: RpmInfo,
    /// The `.rpm`'s size, bytes.
    pub size: u64,
    pub sha256: Digest,
    /// When it was uploaded, seconds since the epoch (`time file=`).
    pub uploaded: u64,
}

impl RpmMeta {
    /// The item key: `rpm/NAME/EPOCH:VERSION-RELEASE/ARCH`.
    pub fn key(&self) -> Result<ItemKey, FormatError> {
        let i = &self.info;
        item_key(&i.name, i.epoch, &i.version, &i.release, &i.arch)
    }

    /// Where the package lies in the repository (relative to the base URL).
    pub fn location(&self) -> String {
        let i = &self.info;
        location(&i.name, i.epoch, &i.version, &i.release, &i.arch)
    }

    /// `EPOCH:VERSION-RELEASE`.
    pub fn evr(&self) -> String {
        format!("{}:{}-{}", self.info.epoch, self.info.version, self.info.release)
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// Reads an item's metadata. Errors: not an [`RpmMeta`].
    pub fn from_json(v: &serde_json::Value) -> Result<Self, FormatError> {
        // Read as two plain structs from one object: `#[serde(flatten)]`
        // would buffer every field first (2.5x slower).
        let bad = |e: serde_json::Error| FormatError::invalid(format!("rpm item metadata: {e}"));
        let info = RpmInfo::deserialize(v).map_err(bad)?;
        let file = FileFacts::deserialize(v).map_err(bad)?;
        Ok(file.with(info))
    }

    /// Reads an item's metadata from its stored JSON text (one object),
    /// without a `serde_json::Value` in between. Errors: not an [`RpmMeta`].
    pub fn from_json_text(text: &str) -> Result<Self, FormatError> {
        let bad = |e: serde_json::Error| FormatError::invalid(format!("rpm item metadata: {e}"));
        let info: RpmInfo = serde_json::from_str(text).map_err(bad)?;
        let file: FileFacts = serde_json::from_str(text).map_err(bad)?;
        Ok(file.with(info))
    }
}

/// The fields [`RpmMeta`] adds to [`RpmInfo`] in the same JSON object.
#[derive(Deserialize)]
struct FileFacts {
    size: u64,
    sha256: Digest,
    uploaded: u64,
}

impl FileFacts {
    fn with(self, info: RpmInfo) -> RpmMeta {
        RpmMeta {
            info,
            size: self.size,
            sha256: self.sha256,
            uploaded: self.uploaded,
        }
    }
}

fn field_ok(s: &str, extra: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_FIELD_LEN
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._+~^".contains(c) || extra.contains(c))
        && !s.starts_with('.')
}

/// A package name: ASCII letters, digits and `._+~^-`, not starting with
/// `.` or `-` (so that it is one safe path segment).
pub fn check_name(s: &str) -> Result<(), FormatError> {
    if field_ok(s, "-") && !s.starts_with('-') {
        Ok(())
    } else {
        Err(FormatError::invalid(format!(
            "package name {:?} is not 1 to {MAX_FIELD_LEN} of A-Z a-z 0-9 . _ + ~ ^ - (not starting with . or -)",
            ferry_types::shortened(s, 80)
        )))
    }
}

/// A version or release: ASCII letters, digits and `._+~^` (no `-`, `:` or `/`).
pub fn check_version(what: &str, s: &str) -> Result<(), FormatError> {
    if field_ok(s, "") {
        Ok(())
    } else {
        Err(FormatError::invalid(format!(
            "{what} {:?} is not 1 to {MAX_FIELD_LEN} of A-Z a-z 0-9 . _ + ~ ^ (not starting with .)",
            ferry_types::shortened(s, 80)
        )))
    }
}

/// An architecture: ASCII letters, digits and `_`.
pub fn check_arch(s: &str) -> Result<(), FormatError> {
    if !s.is_empty() && s.len() <= 32 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(())
    } else {
        Err(FormatError::invalid(format!(
            "architecture {:?} is not 1 to 32 of A-Z a-z 0-9 _",
            ferry_types::shortened(s, 80)
        )))
    }
}

/// The item key of one package: `rpm/NAME/EPOCH:VERSION-RELEASE/ARCH`.
pub fn item_key(
    name: &str,
    epoch: u32,
    version: &str,
    release: &str,
    arch: &str,
) -> Result<ItemKey, FormatError> {
    check_name(name)?;
    check_version("version", version)?;
    check_version("release", release)?;
    check_arch(arch)?;
    ItemKey::new(format!("rpm/{name}/{epoch}:{version}-{release}/{arch}"))
        .map_err(|e| FormatError::invalid(e.to_string()))
}

/// Parses an `EVR` as clients write it (`[EPOCH:]VERSION-RELEASE`) into
/// `(epoch, version, release)`; epoch 0 when absent.
pub fn parse_evr(evr: &str) -> Result<(u32, String, String), FormatError> {
    let bad = || {
        FormatError::invalid(format!(
            "{:?} is not [EPOCH:]VERSION-RELEASE",
            ferry_types::shortened(evr, 80)
        ))
    };
    let (epoch, vr) = match evr.split_once(':') {
        Some((e, vr)) => (e.parse::<u32>().map_err(|_| bad())?, vr),
        None => (0, evr),
    };
    let (v, r) = vr.split_once('-').ok_or_else(bad)?;
    check_version("version", v)?;
    check_version("release", r)?;
    Ok((epoch, v.to_owned(), r.to_owned()))
}

/// A package's location in the repository:
/// `packages/NAME/EPOCH/NAME-VERSION-RELEASE.ARCH.rpm`.
pub fn location(name: &str, epoch: u32, version: &str, release: &str, arch: &str) -> String {
    format!("packages/{name}/{epoch}/{name}-{version}-{release}.{arch}.rpm")
}

/// The item key a location (without `packages/`) names, if it is one
/// [`location`] makes.
pub fn key_of_location(path: &str) -> Option<ItemKey> {
    let mut parts = path.split('/');
    let (name, epoch, file) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let epoch: u32 = epoch.parse().ok()?;
    let rest = file.strip_prefix(name)?.strip_prefix('-')?.strip_suffix(".rpm")?;
    let (version, rel_arch) = rest.split_once('-')?;
    let (release, arch) = rel_arch.rsplit_once('.')?;
    let key = item_key(name, epoch, version, release, arch).ok()?;
    (location(name, epoch, version, release, arch) == format!("packages/{path}")).then_some(key)
}

/// Checks a received item: its key, and (when live) that its metadata
/// names the package of the key and exactly its `.rpm` as blob, with
/// fields Ferry would have accepted. Used for replication.
pub fn validate_item(
    key: &ItemKey,
    live: Option<(&serde_json::Value, &[Digest])>,
) -> Result<Option<RpmMeta>, FormatError> {
    let bad = || {
        FormatError::invalid(format!(
            "rpm item key {key} is not rpm/NAME/EPOCH:VERSION-RELEASE/ARCH"
        ))
    };
    let parts: Vec<&str> = key.as_str().split('/').collect();
    let ["rpm", name, evr, arch] = parts[..] else {
        return Err(bad());
    };
    let (e, v, r) = parse_evr(evr).map_err(|_| bad())?;
    if item_key(name, e, &v, &r, arch)? != *key {
        return Err(bad());
    }
    let Some((meta, blobs)) = live else {
        return Ok(None);
    };
    let m = RpmMeta::from_json(meta).map_err(|e| FormatError::invalid(format!("rpm item {key}: {e}")))?;
    crate::no_unknown_fields("rpm", key, meta, &m.to_json())?;
    if m.key()? != *key {
        return Err(FormatError::invalid(format!(
            "rpm item {key}: its metadata names another package"
        )));
    }
    if blobs != [m.sha256] {
        return Err(FormatError::invalid(format!(
            "rpm item {key}: it must name exactly its .rpm as blob"
        )));
    }
    check_files(&m.info.files)?;
    Ok(Some(m))
}

/// Refuses file lists with a path that is not absolute, holds a `.` or
/// `..` segment, an empty segment, or a control character: such a file
/// would escape (or hide in) the install root.
pub fn check_files(files: &[FileRec]) -> Result<(), FormatError> {
    for f in files {
        let p = &f.path;
        let escapes = !p.starts_with('/')
            || p.chars().any(char::is_control)
            || (p.len() > 1 && p[1..].split('/').any(|s| s.is_empty() || s == "." || s == ".."));
        if escapes {
            return Err(FormatError::invalid(format!(
                "the file list holds {:?}, which is not a plain absolute path (no . or .. segments)",
                ferry_types::shortened(p, 120)
            )));
        }
    }
    Ok(())
}

fn be32(b: &[u8]) -> u64 {
    u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Most values, summed over a header's string-array entries, a header may
/// declare: each becomes a string of its own when the header is read.
/// The largest distribution packages list some 10^5 files in about ten
/// such tags.
const MAX_HEADER_STRINGS: u64 = 4_000_000;

/// Checks the index of one RPM header (`header`: its 16-byte intro, its
/// index entries and its data section, as stored) before the header is
/// parsed: every entry has a known type, and the values it declares
/// (`count` values from `offset`, at their smallest: one byte per string)
/// fit in the data section; a tag appears once; and the entries together
/// declare no more than twice the data section in fixed-size values and
/// [`MAX_HEADER_STRINGS`] strings. The header's reader sets memory aside
/// for what an entry declares before it looks at the data, so a header of
/// a few hundred bytes declaring 2^32 values would otherwise exhaust the
/// memory of the process (RPM's `headerVerifyInfo` refuses the same
/// entries). Invalid: which entry is wrong and why.
fn check_index(header: &[u8], what: &str) -> Result<(), FormatError> {
    let bad = |why: String| FormatError::invalid(format!("not a valid RPM {what} header: {why}"));
    let count = be32(&header[8..]);
    let data = be32(&header[12..]);
    let index = header.get(16..16 + count as usize * 16).unwrap_or_default();
    let mut tags = std::collections::HashSet::with_capacity(count as usize);
    let (mut fixed, mut strings) = (0u64, 0u64);
    for (n, e) in index.chunks_exact(16).enumerate() {
        let tag = be32(e);
        let kind = be32(&e[4..]);
        let offset = be32(&e[8..]);
        let values = be32(&e[12..]);
        // RPM's header types (rpmtag.h): CHAR, INT8, INT16, INT32, INT64,
        // STRING, BIN, STRING_ARRAY, I18NSTRING; NULL carries nothing.
        let width = match kind {
            0 => 0,
            1 | 2 | 6..=9 => 1,
            3 => 2,
            4 => 4,
            5 => 8,
            _ => return Err(bad(format!("entry {n} (tag {tag}) has unknown type {kind}"))),
        };
        if !tags.insert(tag) {
            return Err(bad(format!("tag {tag} appears more than once")));
        }
        // An offset is a signed 32-bit number; a negative one is not in
        // the data section either.
        let smallest = values * width;
        if offset > data || smallest > data - offset {
            return Err(bad(format!(
                "entry {n} (tag {tag}) declares {values} values from byte {offset}, past the {data}-byte data section"
            )));
        }
        match kind {
            8 | 9 => strings += values,
            6 => strings += 1,
            _ => fixed += smallest,
        }
    }
    if fixed > data.saturating_mul(2) {
        return Err(bad(format!(
            "its entries declare {fixed} bytes of values in a {data}-byte data section"
        )));
    }
    if strings > MAX_HEADER_STRINGS {
        return Err(FormatError::too_large(format!(
            "the RPM {what} header declares {strings} strings (at most {MAX_HEADER_STRINGS})"
        )));
    }
    Ok(())
}

/// Reads the lead, the signature header and the main header of an `.rpm`
/// (`len` bytes long) and what the repodata needs from them. Invalid:
/// not an RPM (no lead or header magic), a source package, a header over
/// [`MAX_HEADER_BYTES`], truncated (the file is shorter than its
/// signature header says, or than its headers), a name, version,
/// release or architecture that is not one path segment ([`check_name`]),
/// a file list escaping a path ([`check_files`]), or digests that do not
/// match or do not cover the package ([`verify_digests`]; the payload is
/// read from `reader` in [`DIGEST_CHUNK`]-byte pieces, never whole).
pub fn inspect_rpm<R: Read>(mut reader: R, len: u64) -> Result<RpmInfo, FormatError> {
    let truncated = || FormatError::invalid("truncated: the file ends inside the RPM headers");
    let mut raw = vec![0u8; LEAD_SIZE as usize];
    reader
        .read_exact(&mut raw)
        .map_err(|_| FormatError::invalid("not an RPM: shorter than the 96-byte lead"))?;
    if raw[..4] != LEAD_MAGIC {
        return Err(FormatError::invalid(
            "not an RPM: the file does not start with the RPM lead magic",
        ));
    }
    // The lead's type: 0 binary, 1 source (LSB 22.2.1).
    if raw[6..8] != [0, 0] {
        return Err(FormatError::invalid(SOURCE_RPM));
    }
    // The signature header, padded to a multiple of 8, then the main header.
    let mut header_start = 0;
    for (i, what) in ["signature", "main"].into_iter().enumerate() {
        let at = raw.len();
        raw.resize(at + 16, 0);
        reader.read_exact(&mut raw[at..]).map_err(|_| truncated())?;
        if raw[at..at + 4] != HEADER_MAGIC {
            return Err(FormatError::invalid(format!(
                "not an RPM: no {what} header after the lead"
            )));
        }
        let count = be32(&raw[at + 8..]);
        let data = be32(&raw[at + 12..]);
        let body = count * 16 + data;
        let pad = if i == 0 { (8 - (data % 8)) % 8 } else { 0 };
        // Sizes the file cannot hold are a damaged or cut file, not a
        // large one.
        if raw.len() as u64 + body + pad > len {
            return Err(truncated());
        }
        if raw.len() as u64 + body + pad > MAX_HEADER_BYTES {
            return Err(FormatError::too_large(format!(
                "the RPM headers exceed {MAX_HEADER_BYTES} bytes"
            )));
        }
        let from = raw.len();
        raw.resize(from + (body + pad) as usize, 0);
        reader.read_exact(&mut raw[from..]).map_err(|_| truncated())?;
        if i == 0 {
            // (The main header's index is checked with its parse, below.)
            check_index(&raw[at..from + body as usize], what)?;
            header_start = raw.len() as u64;
        }
    }
    let header_end = raw.len() as u64;
    // The rpm crate's parser, on bytes whose sizes were checked above; a
    // panic inside it on crafted input is a refusal, not a crash.
    let parsed = check_index(&raw[header_start as usize..], "main")
        .and_then(|()| {
            std::panic::catch_unwind(|| {
                let mut cursor = std::io::Cursor::new(&raw[..]);
                ::rpm::PackageMetadata::parse(&mut cursor)
            })
            .map_err(|_| FormatError::invalid("not a valid RPM header"))
        })
        .and_then(|r| r.map_err(|e| FormatError::invalid(format!("not a valid RPM header: {e}"))))
        .map_err(|e| {
            // A header changed after it was made is first of all corrupted:
            // said so when the signature header's digest of it disagrees.
            let sig = &raw[LEAD_SIZE as usize..header_start as usize];
            let header = &raw[header_start as usize..header_end as usize];
            let actual = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(header));
            match signed_header_sha256(sig) {
                Some(stated) if !stated.eq_ignore_ascii_case(&actual) => FormatError::invalid(format!(
                    "header digest RPMSIGTAG_SHA256 (SHA-256) mismatch: the package states {stated}, \
                 its header hashes to {actual}; the package is corrupted"
                )),
                _ => e,
            }
        })?;
    let info = read_info(&parsed, header_start, header_end)?;
    // The signature header's size tag covers the main header and the payload.
    let declared = parsed
        .signature
        .get_entry_data_as_u64(::rpm::IndexSignatureTag::RPMSIGTAG_LONGSIZE)
        .ok()
        .or_else(|| {
            parsed
                .signature
                .get_entry_data_as_u32(::rpm::IndexSignatureTag::RPMSIGTAG_SIZE)
                .ok()
                .map(u64::from)
        });
    match declared {
        Some(d) if header_start + d != len => {
            return Err(FormatError::invalid(format!(
                "truncated or padded: the file is {len} bytes, its signature header says {}",
                header_start + d
            )));
        }
        None if len <= header_end => return Err(truncated()),
        _ => {}
    }
    let header = raw
        .get(header_start as usize..header_end as usize)
        .ok_or_else(truncated)?;
    let payload_len = len.checked_sub(header_end).ok_or_else(truncated)?;
    verify_digests(&parsed, header, reader, payload_len)?;
    Ok(info)
}

/// `RPMSIGTAG_SHA256` (tag 273, a hex string) of a signature header
/// (`sig`: its 16-byte intro, index entries and data, as stored), read
/// from its index directly: for naming a digest mismatch when the main
/// header cannot be parsed. None when absent or unreadable.
fn signed_header_sha256(sig: &[u8]) -> Option<String> {
    const RPMSIGTAG_SHA256: u64 = 273;
    const STRING_TYPE: u64 = 6;
    let count = be32(sig.get(8..12)?) as usize;
    let data = sig.get(16 + count.checked_mul(16)?..)?;
    (0..count).find_map(|i| {
        let entry = sig.get(16 + i * 16..32 + i * 16)?;
        if be32(&entry[..4]) != RPMSIGTAG_SHA256 || be32(&entry[4..8]) != STRING_TYPE {
            return None;
        }
        let text = data.get(be32(&entry[8..12]) as usize..)?;
        let end = text.iter().position(|b| *b == 0)?;
        let hex = std::str::from_utf8(&text[..end]).ok()?;
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| hex.to_owned())
    })
}

/// Size of the pieces the payload is read in while its digests are computed.
pub const DIGEST_CHUNK: usize = 64 << 10;

/// A digest algorithm of the RPM format (`PGPHASHALGO_*` numbers, as
/// `RPMTAG_PAYLOADDIGESTALGO` names them).
fn hasher_of(algo: u32) -> Option<(&'static str, Box<dyn sha2::digest::DynDigest>)> {
    Some(match algo {
        1 => ("MD5", Box::new(md5::Md5::default())),
        2 => ("SHA-1", Box::new(sha1::Sha1::default())),
        8 => ("SHA-256", Box::new(sha2::Sha256::default())),
        9 => ("SHA-384", Box::new(sha2::Sha384::default())),
        10 => ("SHA-512", Box::new(sha2::Sha512::default())),
        11 => ("SHA-224", Box::new(sha2::Sha224::default())),
        _ => return None,
    })
}

/// One digest a package carries: what it is called in a refusal, the
/// hash being computed, the value the package states.
struct Check {
    what: String,
    hasher: Box<dyn sha2::digest::DynDigest>,
    expected: Vec<u8>,
}

impl Check {
    fn new(
        what: String,
        hasher: Box<dyn sha2::digest::DynDigest>,
        hex_value: &str,
    ) -> Result<Self, FormatError> {
        let expected = hex::decode(hex_value.trim()).map_err(|_| {
            FormatError::invalid(format!(
                "{what} is not a hex digest: {:?}",
                ferry_types::shortened(hex_value, 80)
            ))
        })?;
        Ok(Check {
            what,
            hasher,
            expected,
        })
    }

    fn finish(self) -> Result<(), FormatError> {
        let actual = self.hasher.finalize();
        if *actual == self.expected[..] {
            Ok(())
        } else {
            Err(FormatError::invalid(format!(
                "{} mismatch: the package states {}, its bytes hash to {}; the package is corrupted",
                self.what,
                hex::encode(&self.expected),
                hex::encode(&actual)
            )))
        }
    }
}

/// Verifies the digests an RPM carries, as `rpm -K` (`rpm --checksig`)
/// does at rpm's default `%_pkgverify_level digest` (rpm 4.18,
/// `lib/rpmvs.c`), streaming `payload_len` payload bytes from `payload`
/// (positioned just after the main header):
///
/// - `RPMSIGTAG_SHA256` and `RPMSIGTAG_SHA1` (signature header, hex):
///   the main header's bytes as stored (`header`, intro included);
/// - `RPMTAG_PAYLOADDIGEST` (5092, the first of its hex strings) with
///   the algorithm `RPMTAG_PAYLOADDIGESTALGO` (5093; SHA-256 when
///   absent), and v6's `RPMTAG_PAYLOAD_SHA512` (5121): the compressed
///   payload, the bytes after the main header;
/// - `RPMSIGTAG_MD5` (16 raw bytes, older packages): the main header
///   followed by the payload.
///
/// Every digest present must match: a mismatch is refused naming the
/// digest. And, like rpm, both the header and the payload must be
/// covered by at least one digest that verified: a package with no
/// checkable digest of one of them is refused (rpm -K reports such a
/// digest `NOTFOUND` and the package `NOT OK`). Stricter than rpm in one
/// case: `RPMTAG_PAYLOADDIGESTALT` (digest of the *uncompressed*
/// payload) is not computed, so a compressed-payload mismatch is refused
/// even if the uncompressed payload would match (rpm then accepts a
/// package whose payload was recompressed), and a payload covered only
/// by it is refused.
pub fn verify_digests<R: Read>(
    parsed: &::rpm::PackageMetadata,
    header: &[u8],
    mut payload: R,
    payload_len: u64,
) -> Result<(), FormatError> {
    use ::rpm::{IndexSignatureTag as S, IndexTag as T};
    let sig = &parsed.signature;
    let hdr = &parsed.header;
    // Checks over the header alone, over the payload alone, over both.
    let mut on_header = Vec::new();
    let mut on_payload = Vec::new();
    let mut on_both = Vec::new();
    for (tag, name, algo) in [
        (S::RPMSIGTAG_SHA256, "RPMSIGTAG_SHA256", 8),
        (S::RPMSIGTAG_SHA1, "RPMSIGTAG_SHA1", 2),
    ] {
        if let Ok(v) = sig.get_entry_data_as_string(tag)
            && let Some((alg, h)) = hasher_of(algo)
        {
            on_header.push(Check::new(format!("header digest {name} ({alg})"), h, v)?);
        }
    }
    if let Ok(v) = sig.get_entry_data_as_binary(S::RPMSIGTAG_MD5) {
        let mut h: Box<dyn sha2::digest::DynDigest> = Box::new(md5::Md5::default());
        h.update(header);
        on_both.push(Check {
            what: "header and payload digest RPMSIGTAG_MD5 (MD5)".into(),
            hasher: h,
            expected: v.to_vec(),
        });
    }
    if let Ok(v) = hdr.get_entry_data_as_string(T::RPMTAG_PAYLOADSHA256) {
        let algo = hdr
            .get_entry_data_as_u32(T::RPMTAG_PAYLOADSHA256ALGO)
            .unwrap_or(8);
        let (alg, h) = hasher_of(algo).ok_or_else(|| {
            FormatError::invalid(format!(
                "the payload digest's algorithm (RPMTAG_PAYLOADDIGESTALGO {algo}) is not one rpm knows"
            ))
        })?;
        on_payload.push(Check::new(
            format!("payload digest RPMTAG_PAYLOADDIGEST ({alg})"),
            h,
            v,
        )?);
    }
    if let Ok(v) = hdr.get_entry_data_as_string(T::RPMTAG_PAYLOAD_SHA512)
        && let Some((alg, h)) = hasher_of(10)
    {
        on_payload.push(Check::new(
            format!("payload digest RPMTAG_PAYLOAD_SHA512 ({alg})"),
            h,
            v,
        )?);
    }
    let missing = |what: &str| {
        FormatError::invalid(format!(
            "the package carries no digest of its {what} that can be checked \
             (rpm -K refuses it too: NOTFOUND); rebuild it with rpmbuild 4.14 or later"
        ))
    };
    if on_header.is_empty() && on_both.is_empty() {
        return Err(missing("header"));
    }
    if on_payload.is_empty() && on_both.is_empty() {
        return Err(missing("payload"));
    }
    for c in &mut on_header {
        c.hasher.update(header);
    }
    let mut buf = vec![0u8; DIGEST_CHUNK];
    let mut left = payload_len;
    while left > 0 {
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        let n = match payload.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(FormatError::invalid(
                    "truncated: the file ends inside the RPM payload",
                ));
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(FormatError::invalid(format!("reading the RPM payload: {e}"))),
        };
        for c in on_payload.iter_mut().chain(on_both.iter_mut()) {
            c.hasher.update(&buf[..n]);
        }
        left -= n as u64;
    }
    // The header first, so that a damaged header is named as such.
    for c in on_header.into_iter().chain(on_payload).chain(on_both) {
        c.finish()?;
    }
    Ok(())
}

fn text(r: Result<&str, ::rpm::Error>) -> String {
    r.map(str::to_owned).unwrap_or_default()
}

fn deps(r: Result<Vec<::rpm::Dependency>, ::rpm::Error>, what: &str) -> Result<Vec<Dep>, FormatError> {
    let list = match r {
        Ok(l) => l,
        Err(::rpm::Error::TagNotFound(_)) => return Ok(Vec::new()),
        Err(e) => {
            return Err(FormatError::invalid(format!(
                "the header's {what} are unreadable: {e}"
            )));
        }
    };
    Ok(list.into_iter().map(dep).collect())
}

fn dep(d: ::rpm::Dependency) -> Dep {
    use ::rpm::DependencyFlags as F;
    let cmp = d.flags & (F::LESS | F::GREATER | F::EQUAL);
    let flags = match (
        cmp.contains(F::LESS),
        cmp.contains(F::GREATER),
        cmp.contains(F::EQUAL),
    ) {
        (true, false, true) => Some("LE"),
        (false, true, true) => Some("GE"),
        (false, false, true) => Some("EQ"),
        (true, false, false) => Some("LT"),
        (false, true, false) => Some("GT"),
        _ => None,
    };
    let pre = d.flags.intersects(F::PREREQ | F::SCRIPT_PRE | F::SCRIPT_POST);
    let (mut epoch, mut ver, mut rel) = (None, None, None);
    if flags.is_some() && !d.version.is_empty() {
        let (e, vr) = match d.version.split_once(':') {
            Some((e, vr)) if !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()) => (e.to_owned(), vr),
            _ => ("0".to_owned(), d.version.as_str()),
        };
        let (v, r) = match vr.rsplit_once('-') {
            Some((v, r)) => (v.to_owned(), Some(r.to_owned())),
            None => (vr.to_owned(), None),
        };
        epoch = Some(e);
        ver = Some(v);
        rel = r;
    }
    Dep {
        name: d.name,
        flags: flags.map(str::to_owned),
        epoch,
        ver,
        rel,
        pre,
    }
}

fn read_info(m: &::rpm::PackageMetadata, header_start: u64, header_end: u64) -> Result<RpmInfo, FormatError> {
    let need = |r: Result<&str, ::rpm::Error>, what: &str| {
        r.map(str::to_owned)
            .map_err(|e| FormatError::invalid(format!("the RPM header has no readable {what}: {e}")))
    };
    // rpm itself takes a header without SOURCERPM for a source package
    // (`headerIsSource`); createrepo names their architecture `src`.
    if m.is_source_package() || m.get_source_rpm().is_err() {
        return Err(FormatError::invalid(SOURCE_RPM));
    }
    let name = need(m.get_name(), "name")?;
    check_name(&name)?;
    let version = need(m.get_version(), "version")?;
    check_version("version", &version)?;
    let release = need(m.get_release(), "release")?;
    check_version("release", &release)?;
    let arch = need(m.get_arch(), "architecture")?;
    if arch == "src" || arch == "nosrc" {
        return Err(FormatError::invalid(SOURCE_RPM));
    }
    check_arch(&arch)?;
    let epoch = match m.get_epoch() {
        Ok(e) => e,
        Err(::rpm::Error::TagNotFound(_)) => 0,
        Err(e) => {
            return Err(FormatError::invalid(format!(
                "the RPM header's epoch is unreadable: {e}"
            )));
        }
    };
    let mut files = Vec::new();
    m.for_each_file_entry(|f| {
        let kind = if f.flags().contains(::rpm::FileFlags::GHOST) {
            FileKind::Ghost
        } else if f.file_type() == ::rpm::FileType::Dir {
            FileKind::Dir
        } else {
            FileKind::File
        };
        files.push(FileRec {
            path: format!("{}{}", f.dirname(), f.basename()),
            kind,
        });
        Ok(())
    })
    .map_err(|e| FormatError::invalid(format!("the RPM header's file list is unreadable: {e}")))?;
    check_files(&files)?;
    let mut changelog: Vec<Change> = match m.get_changelog_entries() {
        Ok(c) => c
            .into_iter()
            .map(|c| Change {
                author: c.name,
                date: c.timestamp,
                text: c.description,
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    changelog.sort_by_key(|c| std::cmp::Reverse(c.date));
    changelog.truncate(MAX_CHANGELOG);
    let archive_size = m
        .signature
        .get_entry_data_as_u64(::rpm::IndexSignatureTag::RPMSIGTAG_LONGARCHIVESIZE)
        .or_else(|_| {
            m.signature
                .get_entry_data_as_u32(::rpm::IndexSignatureTag::RPMSIGTAG_PAYLOADSIZE)
                .map(u64::from)
        })
        .or_else(|_| {
            m.header
                .get_entry_data_as_u64(::rpm::IndexTag::RPMTAG_LONGARCHIVESIZE)
        })
        .or_else(|_| {
            m.header
                .get_entry_data_as_u32(::rpm::IndexTag::RPMTAG_ARCHIVESIZE)
                .map(u64::from)
        })
        .unwrap_or(0);
    Ok(RpmInfo {
        name,
        epoch,
        version,
        release,
        arch,
        summary: text(m.get_summary()),
        description: text(m.get_description()),
        license: text(m.get_license()),
        url: text(m.get_url()),
        vendor: text(m.get_vendor()),
        group: text(m.get_group()),
        packager: text(m.get_packager()),
        buildhost: text(m.get_build_host()),
        sourcerpm: text(m.get_source_rpm()),
        buildtime: m.get_build_time().unwrap_or(0),
        installed_size: m.get_installed_size().unwrap_or(0),
        archive_size,
        header_start,
        header_end,
        deps: Deps {
            provides: deps(m.get_provides(), "provides")?,
            requires: deps(m.get_requires(), "requires")?,
            conflicts: deps(m.get_conflicts(), "conflicts")?,
            obsoletes: deps(m.get_obsoletes(), "obsoletes")?,
            recommends: deps(m.get_recommends(), "recommends")?,
            suggests: deps(m.get_suggests(), "suggests")?,
            supplements: deps(m.get_supplements(), "supplements")?,
            enhances: deps(m.get_enhances(), "enhances")?,
        },
        files,
        changelog,
    })
}

// ------------------------------------------------------------------ repodata

/// XML namespace of `primary.xml`.
pub const NS_COMMON: &str = "http://linux.duke.edu/metadata/common";
/// XML namespace of the `rpm:` elements.
pub const NS_RPM: &str = "http://linux.duke.edu/metadata/rpm";
/// XML namespace of `filelists.xml`.
pub const NS_FILELISTS: &str = "http://linux.duke.edu/metadata/filelists";
/// XML namespace of `other.xml`.
pub const NS_OTHER: &str = "http://linux.duke.edu/metadata/other";
/// XML namespace of `repomd.xml`.
pub const NS_REPO: &str = "http://linux.duke.edu/metadata/repo";

/// Escaped XML text: characters XML 1.0 cannot carry (controls but tab,
/// newline and carriage return) dropped, markup characters escaped.
pub fn xml_text(s: &str) -> String {
    let clean: String = s
        .chars()
        .filter(|c| !c.is_control() || matches!(c, '\t' | '\n' | '\r'))
        .collect();
    quick_xml::escape::escape(clean.as_str()).into_owned()
}

/// The opening of `primary.xml` (before the packages) and its closing.
pub fn primary_head(packages: usize) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<metadata xmlns=\"{NS_COMMON}\" xmlns:rpm=\"{NS_RPM}\" packages=\"{packages}\">\n"
    )
}
pub const PRIMARY_TAIL: &str = "</metadata>\n";

/// The opening of `filelists.xml` and its closing.
pub fn filelists_head(packages: usize) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<filelists xmlns=\"{NS_FILELISTS}\" packages=\"{packages}\">\n"
    )
}
pub const FILELISTS_TAIL: &str = "</filelists>\n";

/// The opening of `other.xml` and its closing.
pub fn other_head(packages: usize) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<otherdata xmlns=\"{NS_OTHER}\" packages=\"{packages}\">\n"
    )
}
pub const OTHER_TAIL: &str = "</otherdata>\n";

/// Whether createrepo lists a file in `primary.xml` too (the files
/// dependencies usually name: `/etc/...`, `.../bin/...`, `/usr/lib/sendmail`).
fn primary_file(path: &str) -> bool {
    path.starts_with("/etc/") || path.contains("bin/") || path == "/usr/lib/sendmail"
}

fn file_line(out: &mut String, f: &FileRec) {
    let kind = match f.kind {
        FileKind::File => "",
        FileKind::Dir => " type=\"dir\"",
        FileKind::Ghost => " type=\"ghost\"",
    };
    let _ = writeln!(out, "    <file{kind}>{}</file>", xml_text(&f.path));
}

fn dep_list(out: &mut String, tag: &str, list: &[Dep]) {
    if list.is_empty() {
        return;
    }
    let _ = writeln!(out, "    <rpm:{tag}>");
    for d in list {
        let _ = write!(out, "      <rpm:entry name=\"{}\"", xml_text(&d.name));
        if let Some(f) = &d.flags {
            let _ = write!(out, " flags=\"{f}\"");
        }
        for (attr, v) in [("epoch", &d.epoch), ("ver", &d.ver), ("rel", &d.rel)] {
            if let Some(v) = v {
                let _ = write!(out, " {attr}=\"{}\"", xml_text(v));
            }
        }
        if d.pre {
            out.push_str(" pre=\"1\"");
        }
        out.push_str("/>\n");
    }
    let _ = writeln!(out, "    </rpm:{tag}>");
}

fn version_line(i: &RpmInfo) -> String {
    format!(
        "  <version epoch=\"{}\" ver=\"{}\" rel=\"{}\"/>\n",
        i.epoch,
        xml_text(&i.version),
        xml_text(&i.release)
    )
}

/// This package's `<package>` element of `primary.xml`.
pub fn primary_package(m: &RpmMeta) -> String {
    let i = &m.info;
    let mut out = String::with_capacity(1024);
    out.push_str("<package type=\"rpm\">\n");
    let _ = writeln!(out, "  <name>{}</name>", xml_text(&i.name));
    let _ = writeln!(out, "  <arch>{}</arch>", xml_text(&i.arch));
    out.push_str(&version_line(i));
    let _ = writeln!(
        out,
        "  <checksum type=\"sha256\" pkgid=\"YES\">{}</checksum>",
        m.sha256.hex()
    );
    let _ = writeln!(out, "  <summary>{}</summary>", xml_text(&i.summary));
    let _ = writeln!(out, "  <description>{}</description>", xml_text(&i.description));
    let _ = writeln!(out, "  <packager>{}</packager>", xml_text(&i.packager));
    let _ = writeln!(out, "  <url>{}</url>", xml_text(&i.url));
    let _ = writeln!(out, "  <time file=\"{}\" build=\"{}\"/>", m.uploaded, i.buildtime);
    let _ = writeln!(
        out,
        "  <size package=\"{}\" installed=\"{}\" archive=\"{}\"/>",
        m.size, i.installed_size, i.archive_size
    );
    let _ = writeln!(out, "  <location href=\"{}\"/>", xml_text(&m.location()));
    out.push_str("  <format>\n");
    for (tag, v) in [
        ("license", &i.license),
        ("vendor", &i.vendor),
        ("group", &i.group),
        ("buildhost", &i.buildhost),
        ("sourcerpm", &i.sourcerpm),
    ] {
        let _ = writeln!(out, "    <rpm:{tag}>{}</rpm:{tag}>", xml_text(v));
    }
    let _ = writeln!(
        out,
        "    <rpm:header-range start=\"{}\" end=\"{}\"/>",
        i.header_start, i.header_end
    );
    let d = &i.deps;
    dep_list(&mut out, "provides", &d.provides);
    // Like createrepo: no rpmlib() requirements, none the package provides itself.
    let requires: Vec<Dep> = d
        .requires
        .iter()
        .filter(|r| {
            !r.name.starts_with("rpmlib(")
                && !d
                    .provides
                    .iter()
                    .any(|p| p == *r || (p.name == r.name && r.flags.is_none()))
        })
        .cloned()
        .collect();
    dep_list(&mut out, "requires", &requires);
    dep_list(&mut out, "conflicts", &d.conflicts);
    dep_list(&mut out, "obsoletes", &d.obsoletes);
    dep_list(&mut out, "suggests", &d.suggests);
    dep_list(&mut out, "recommends", &d.recommends);
    dep_list(&mut out, "supplements", &d.supplements);
    dep_list(&mut out, "enhances", &d.enhances);
    for f in i.files.iter().filter(|f| primary_file(&f.path)) {
        file_line(&mut out, f);
    }
    out.push_str("  </format>\n</package>\n");
    out
}

fn package_open(out: &mut String, m: &RpmMeta) {
    let _ = writeln!(
        out,
        "<package pkgid=\"{}\" name=\"{}\" arch=\"{}\">",
        m.sha256.hex(),
        xml_text(&m.info.name),
        xml_text(&m.info.arch)
    );
    out.push_str(&version_line(&m.info));
}

/// This package's `<package>` element of `filelists.xml`.
pub fn filelists_package(m: &RpmMeta) -> String {
    let mut out = String::new();
    package_open(&mut out, m);
    for f in &m.info.files {
        file_line(&mut out, f);
    }
    out.push_str("</package>\n");
    out
}

/// This package's `<package>` element of `other.xml` (its kept changelog).
pub fn other_package(m: &RpmMeta) -> String {
    let mut out = String::new();
    package_open(&mut out, m);
    for c in &m.info.changelog {
        let _ = writeln!(
            out,
            "  <changelog author=\"{}\" date=\"{}\">{}</changelog>",
            xml_text(&c.author),
            c.date,
            xml_text(&c.text)
        );
    }
    out.push_str("</package>\n");
    out
}

/// One `<data>` entry of `repomd.xml`: a repodata file's type, its
/// location (`repodata/HEX-TYPE.xml.gz`), sha256 and size compressed and open.
#[derive(Debug, Clone)]
pub struct RepoFile {
    pub kind: &'static str,
    pub href: String,
    pub sha256: String,
    pub size: u64,
    pub open_sha256: String,
    pub open_size: u64,
}

/// `repomd.xml` listing `files`; `timestamp` in seconds since the epoch.
pub fn render_repomd(timestamp: u64, files: &[RepoFile]) -> String {
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<repomd xmlns=\"{NS_REPO}\" xmlns:rpm=\"{NS_RPM}\">\n  <revision>{timestamp}</revision>\n"
    );
    for f in files {
        let _ = write!(
            out,
            "  <data type=\"{}\">\n    <checksum type=\"sha256\">{}</checksum>\n    <open-checksum type=\"sha256\">{}</open-checksum>\n    <location href=\"{}\"/>\n    <timestamp>{timestamp}</timestamp>\n    <size>{}</size>\n    <open-size>{}</open-size>\n  </data>\n",
            f.kind, f.sha256, f.open_sha256, f.href, f.size, f.open_size
        );
    }
    out.push_str("</repomd>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_name_their_keys_and_nothing_else() {
        let key = item_key("foo-bar", 2, "1.0", "1.el9", "x86_64").unwrap();
        assert_eq!(key.as_str(), "rpm/foo-bar/2:1.0-1.el9/x86_64");
        let loc = location("foo-bar", 2, "1.0", "1.el9", "x86_64");
        assert_eq!(loc, "packages/foo-bar/2/foo-bar-1.0-1.el9.x86_64.rpm");
        assert_eq!(key_of_location(loc.strip_prefix("packages/").unwrap()), Some(key));
        assert_eq!(key_of_location("foo/0/bar-1-1.noarch.rpm"), None);
        assert_eq!(key_of_location("../0/..-1-1.noarch.rpm"), None);
    }

    #[test]
    fn names_and_files_that_escape_are_refused() {
        assert!(check_name("../etc").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name("-x").is_err());
        assert!(check_version("version", "1-2").is_err());
        let f = |p: &str| FileRec {
            path: p.into(),
            kind: FileKind::File,
        };
        assert!(check_files(&[f("/usr/bin/x")]).is_ok());
        assert!(check_files(&[f("/usr/../../etc/shadow")]).is_err());
        assert!(check_files(&[f("etc/x")]).is_err());
        assert!(check_files(&[f("/a//b")]).is_err());
    }

    #[test]
    fn evrs_parse_with_and_without_epoch() {
        assert_eq!(parse_evr("1.0-1").unwrap(), (0, "1.0".into(), "1".into()));
        assert_eq!(
            parse_evr("3:1.0-1.el9").unwrap(),
            (3, "1.0".into(), "1.el9".into())
        );
        assert!(parse_evr("1.0").is_err());
        assert!(parse_evr("x:1-1").is_err());
    }

    /// A lead, an empty signature header and a main header made of
    /// `entries` (tag, type, offset, count) over `data`.
    fn crafted(entries: &[(u32, u32, u32, u32)], data: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 96];
        f[..4].copy_from_slice(&LEAD_MAGIC);
        f[4] = 3;
        f.extend_from_slice(&HEADER_MAGIC);
        f.extend_from_slice(&[0; 12]);
        f.extend_from_slice(&HEADER_MAGIC);
        f.extend_from_slice(&[0; 4]);
        f.extend_from_slice(&(entries.len() as u32).to_be_bytes());
        f.extend_from_slice(&(data.len() as u32).to_be_bytes());
        for (tag, kind, offset, count) in entries {
            for v in [tag, kind, offset, count] {
                f.extend_from_slice(&v.to_be_bytes());
            }
        }
        f.extend_from_slice(data);
        f.extend_from_slice(&[0; 64]);
        f
    }

    #[test]
    fn header_entries_declaring_more_than_their_data_are_refused_before_parsing() {
        // 2^32 - 1 INT64 values in 8 bytes of data: the header's reader
        // would set aside 32 GiB for them and abort the process.
        let f = crafted(&[(1000, 5, 0, u32::MAX)], &[0; 8]);
        let e = inspect_rpm(&f[..], f.len() as u64).unwrap_err();
        assert!(matches!(e, FormatError::Invalid(_)), "{e}");
        assert!(e.to_string().contains("past the 8-byte data section"), "{e}");
        // Many entries over the same bytes: each would be read into a
        // value of its own (40 × 4 MB from one 4 MB header).
        let data = vec![0u8; 1 << 20];
        let many: Vec<_> = (0..40).map(|i| (1000 + i, 4, 0, 1 << 18)).collect();
        let f = crafted(&many, &data);
        let e = inspect_rpm(&f[..], f.len() as u64).unwrap_err();
        assert!(
            e.to_string()
                .contains("bytes of values in a 1048576-byte data section"),
            "{e}"
        );
        // An unknown type, a negative offset, a tag given twice.
        for (entries, says) in [
            (vec![(1000, 10, 0, 1)], "unknown type 10"),
            (vec![(1000, 4, 0xffff_fff0, 1)], "past the"),
            (
                vec![(1000, 4, 0, 1), (1000, 4, 4, 1)],
                "tag 1000 appears more than once",
            ),
        ] {
            let f = crafted(&entries, &[0; 16]);
            let e = inspect_rpm(&f[..], f.len() as u64).unwrap_err().to_string();
            assert!(e.contains(says), "{says}: {e}");
        }
        // Millions of one-byte strings: a string each when read.
        let data = vec![0u8; 5_000_000];
        let f = crafted(&[(1117, 8, 0, 5_000_000)], &data);
        let e = inspect_rpm(&f[..], f.len() as u64).unwrap_err();
        assert!(matches!(e, FormatError::TooLarge(_)), "{e}");
    }

    #[test]
    fn not_an_rpm_and_truncated_are_refused() {
        let e = inspect_rpm(&b"hello"[..], 5).unwrap_err();
        assert!(e.to_string().contains("not an RPM"), "{e}");
        let mut lead = [0u8; 96];
        lead[..4].copy_from_slice(&LEAD_MAGIC);
        let e = inspect_rpm(&lead[..], 96).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        // A signature header claiming more entries than the file holds is
        // a cut or damaged file (400); one the file could hold but over
        // the limit is too large (413).
        let claim = |count: u32, len: u64| {
            let mut f = lead.to_vec();
            f.extend_from_slice(&HEADER_MAGIC);
            f.extend_from_slice(&[0; 4]);
            f.extend_from_slice(&count.to_be_bytes());
            f.extend_from_slice(&0u32.to_be_bytes());
            inspect_rpm(&f[..], len).unwrap_err().to_string()
        };
        let e = claim(0x7fff_ffff, 112);
        assert!(e.contains("truncated"), "{e}");
        let e = claim(5_000_000, 1 << 30);
        assert!(e.contains("exceed"), "{e}");
    }

    fn built(arch: &str) -> Vec<u8> {
        let pkg = ::rpm::PackageBuilder::new("hello", "1.0", "MIT", arch, "a test package")
            .release("1")
            .build()
            .unwrap();
        let mut out = Vec::new();
        pkg.write(&mut out).unwrap();
        out
    }

    #[test]
    fn source_packages_are_refused_by_lead_or_architecture() {
        let ok = built("x86_64");
        let info = inspect_rpm(&ok[..], ok.len() as u64).unwrap();
        assert_eq!((info.name.as_str(), info.arch.as_str()), ("hello", "x86_64"));
        // The same package, its lead saying "source".
        let mut lead_says_source = ok.clone();
        lead_says_source[6..8].copy_from_slice(&1u16.to_be_bytes());
        for (what, f) in [
            ("lead type 1", lead_says_source),
            ("arch src", built("src")),
            ("arch nosrc", built("nosrc")),
        ] {
            let e = inspect_rpm(&f[..], f.len() as u64).unwrap_err();
            assert!(
                e.to_string().contains("source RPMs are not served"),
                "{what}: {e}"
            );
        }
    }

    #[test]
    fn xml_text_drops_controls_and_escapes() {
        assert_eq!(xml_text("a<b>&\u{1}c"), "a&lt;b&gt;&amp;c");
    }
}
