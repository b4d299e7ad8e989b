//! Opening uploaded distributions: entry checks, size-bomb limits, and
//! reading the core metadata file.

use std::cell::Cell;
use std::io::{self, Read, Seek};

use flate2::read::GzDecoder;

use super::filename::{ArchiveFormat, DistFilename, DistKind, parse_filename};
use super::metadata::parse_core_metadata;
use super::names::normalize_name;
use super::version::versions_match;
use crate::{ArchiveLimits, FormatError};

/// What an uploaded distribution file says about itself, after checking
/// that its name, its archive and its core metadata agree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistInfo {
    pub filename: String,
    pub kind: DistKind,
    /// Project name as written in the core metadata.
    pub name: String,
    /// PEP 503 normalized project name.
    pub normalized_name: String,
    /// Version as written in the core metadata.
    pub version: String,
    pub requires_python: Option<String>,
    pub summary: Option<String>,
    pub metadata_version: String,
    /// A wheel's core metadata file as stored in it, to serve on its own
    /// (PEP 658); None for sdists.
    pub core_metadata: Option<Vec<u8>>,
}

/// Inspects an uploaded distribution file.
///
/// Validates `filename` (see [`parse_filename`]), then opens the archive:
/// a wheel or `.zip` sdist through its zip central directory, a `.tar.gz`
/// sdist as a stream. Every entry name is checked (no absolute paths, no
/// `..`, no backslashes or control characters; tar links must stay inside
/// the archive), and the entry count and unpacked size must stay within
/// `limits` (declared sizes for zip, bytes actually decompressed for tar;
/// over the limit is [`FormatError::TooLarge`]). The core metadata is read
/// (at most `limits.max_metadata_bytes`, whatever the headers claim) from
/// `{name}-{version}.dist-info/METADATA` for a wheel and `{dir}/PKG-INFO`
/// for an sdist, and its `Name` and `Version` must match the file name
/// (after PEP 503 / PEP 440 normalization).
pub fn inspect_distribution<R: Read + Seek>(
    filename: &str,
    reader: R,
    limits: &ArchiveLimits,
) -> Result<DistInfo, FormatError> {
    let parsed = parse_filename(filename, None)?;
    let (bytes, source) = match parsed.archive {
        ArchiveFormat::Zip => read_zip_metadata(reader, &parsed, limits)?,
        ArchiveFormat::TarGz => read_tar_metadata(reader, filename, limits)?,
    };
    let meta = parse_core_metadata(&bytes, &source)?;
    let normalized_name = normalize_name(&meta.name);
    let parsed = if parsed.normalized_name() == normalized_name {
        parsed
    } else {
        // A legacy sdist name may split differently once the real name is known.
        match parse_filename(filename, Some(&meta.name)) {
            Ok(p) if parsed.kind == DistKind::Sdist => p,
            _ => {
                return Err(FormatError::invalid(format!(
                    "{filename:?} is named for project {:?}, but its {source} says Name: {:?}",
                    parsed.name, meta.name
                )));
            }
        }
    };
    if !versions_match(&parsed.version, &meta.version) {
        return Err(FormatError::invalid(format!(
            "{filename:?} is named for version {:?}, but its {source} says Version: {:?}",
            parsed.version, meta.version
        )));
    }
    Ok(DistInfo {
        filename: filename.to_owned(),
        kind: parsed.kind,
        name: meta.name,
        normalized_name,
        version: meta.version,
        requires_python: meta.requires_python,
        summary: meta.summary,
        metadata_version: meta.metadata_version,
        core_metadata: (parsed.kind == DistKind::Wheel).then_some(bytes),
    })
}

/// Checks one archive entry name and returns its meaningful segments (empty
/// and `.` segments dropped).
fn check_entry_path(path: &str) -> Result<Vec<&str>, FormatError> {
    let bad = |why: &str| Err(FormatError::invalid(format!("archive entry {path:?} {why}")));
    if path.is_empty() {
        return bad("has an empty name");
    }
    if path.chars().any(char::is_control) {
        return bad("contains control characters");
    }
    if path.contains('\\') {
        return bad("contains a backslash");
    }
    if path.starts_with('/') || is_drive_path(path) {
        return bad("is an absolute path");
    }
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty() && *s != ".").collect();
    if segs.contains(&"..") {
        return bad("points outside the archive ('..')");
    }
    Ok(segs)
}

/// `C:...`: absolute on Windows.
fn is_drive_path(path: &str) -> bool {
    matches!(path.as_bytes(), [l, b':', ..] if l.is_ascii_alphabetic())
}

/// Checks that a tar link target stays inside the archive. Symlink targets
/// are relative to the link's directory, hard link targets to the root.
fn check_link_target(path: &str, segs: &[&str], target: &str, hard: bool) -> Result<(), FormatError> {
    let escapes = || {
        Err(FormatError::invalid(format!(
            "archive entry {path:?} links to {target:?}, outside the archive"
        )))
    };
    if target.starts_with('/') || target.contains('\\') || is_drive_path(target) {
        return escapes();
    }
    let mut stack: Vec<&str> = if hard {
        Vec::new()
    } else {
        segs[..segs.len().saturating_sub(1)].to_vec()
    };
    for seg in target.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if stack.pop().is_none() {
                    return escapes();
                }
            }
            s => stack.push(s),
        }
    }
    Ok(())
}

fn too_many_entries(filename: &str, limits: &ArchiveLimits) -> FormatError {
    FormatError::too_large(format!(
        "{filename:?} has more than {} entries",
        limits.max_entries
    ))
}

fn too_big_unpacked(filename: &str, limits: &ArchiveLimits) -> FormatError {
    FormatError::too_large(format!(
        "{filename:?} unpacks to more than {} bytes",
        limits.max_unpacked_bytes
    ))
}

fn too_big_metadata(source: &str, limits: &ArchiveLimits) -> FormatError {
    FormatError::too_large(format!(
        "{source} is larger than {} bytes",
        limits.max_metadata_bytes
    ))
}

/// Reads at most `max_metadata_bytes` from `r`, refusing anything longer.
fn read_metadata(
    r: impl Read,
    source: &str,
    filename: &str,
    limits: &ArchiveLimits,
) -> Result<Vec<u8>, FormatError> {
    let mut buf = Vec::new();
    r.take(limits.max_metadata_bytes.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| FormatError::invalid(format!("could not read {source} from {filename:?}: {e}")))?;
    if buf.len() as u64 > limits.max_metadata_bytes {
        return Err(too_big_metadata(source, limits));
    }
    Ok(buf)
}

fn read_zip_metadata<R: Read + Seek>(
    reader: R,
    parsed: &DistFilename,
    limits: &ArchiveLimits,
) -> Result<(Vec<u8>, String), FormatError> {
    let filename = parsed.filename.as_str();
    let broken = |e: zip::result::ZipError| {
        FormatError::invalid(format!("{filename:?} is not a valid zip archive ({e})"))
    };
    let mut zip = crate::zipdir::open(reader, &format!("{filename:?}"), limits, |_| Ok(()))?;
    let want = parsed.normalized_name();
    let mut total: u64 = 0;
    // (index, path, declared size) of each metadata file found.
    let mut found: Vec<(usize, String, u64)> = Vec::new();
    for i in 0..zip.len() {
        let entry = zip.by_index_raw(i).map_err(broken)?;
        if entry.name_raw().contains(&0) {
            return Err(FormatError::invalid(format!(
                "archive entry {:?} contains control characters",
                entry.name()
            )));
        }
        let segs = check_entry_path(entry.name())?;
        total = total.saturating_add(entry.size());
        if total > limits.max_unpacked_bytes {
            return Err(too_big_unpacked(filename, limits));
        }
        let is_meta = match (parsed.kind, segs.as_slice()) {
            (DistKind::Wheel, [dir, "METADATA"]) => dir
                .strip_suffix(".dist-info")
                .and_then(|stem| stem.split_once('-'))
                .is_some_and(|(name, _)| normalize_name(name) == want),
            (DistKind::Sdist, [_, "PKG-INFO"]) => true,
            _ => false,
        };
        if is_meta && !entry.is_dir() {
            found.push((i, segs.join("/"), entry.size()));
        }
    }
    let expected = match parsed.kind {
        DistKind::Wheel => format!("{}-{}.dist-info/METADATA", parsed.name, parsed.version),
        DistKind::Sdist => "{name}-{version}/PKG-INFO".to_owned(),
    };
    let (index, source, size) = match found.as_slice() {
        [one] => one.clone(),
        [] => {
            return Err(FormatError::invalid(format!(
                "{filename:?} has no {expected} file"
            )));
        }
        _ => {
            return Err(FormatError::invalid(format!(
                "{filename:?} has more than one {expected} file"
            )));
        }
    };
    if size > limits.max_metadata_bytes {
        return Err(too_big_metadata(&source, limits));
    }
    crate::inflate_every_entry(&mut zip, filename)?;
    let entry = zip
        .by_index(index)
        .map_err(|e| FormatError::invalid(format!("could not read {source} from {filename:?}: {e}")))?;
    let bytes = read_metadata(entry, &source, filename, limits)?;
    Ok((bytes, source))
}

/// Counts bytes read through it and fails once more than `limit` have passed.
struct Counting<'a, R> {
    inner: R,
    count: &'a Cell<u64>,
    limit: u64,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let total = self.count.get().saturating_add(n as u64);
        self.count.set(total);
        if total > self.limit {
            return Err(io::Error::other("unpacked size limit exceeded"));
        }
        Ok(n)
    }
}

fn read_tar_metadata<R: Read>(
    reader: R,
    filename: &str,
    limits: &ArchiveLimits,
) -> Result<(Vec<u8>, String), FormatError> {
    let count = Cell::new(0);
    let counting = Counting {
        inner: GzDecoder::new(reader),
        count: &count,
        limit: limits.max_unpacked_bytes,
    };
    let result = scan_tar(tar::Archive::new(counting), filename, limits);
    if count.get() > limits.max_unpacked_bytes {
        return Err(too_big_unpacked(filename, limits));
    }
    result
}

fn scan_tar<R: Read>(
    mut archive: tar::Archive<R>,
    filename: &str,
    limits: &ArchiveLimits,
) -> Result<(Vec<u8>, String), FormatError> {
    let broken =
        |e: io::Error| FormatError::invalid(format!("{filename:?} is not a valid .tar.gz archive ({e})"));
    let mut entries_seen: u64 = 0;
    let mut found: Option<(Vec<u8>, String)> = None;
    for entry in archive.entries().map_err(broken)? {
        let entry = entry.map_err(broken)?;
        entries_seen += 1;
        if entries_seen > limits.max_entries {
            return Err(too_many_entries(filename, limits));
        }
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let segs = check_entry_path(&path)?;
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            let target = entry
                .link_name_bytes()
                .map(|t| String::from_utf8_lossy(&t).into_owned());
            check_link_target(&path, &segs, target.as_deref().unwrap_or(""), kind.is_hard_link())?;
        }
        if kind.is_block_special() || kind.is_character_special() || kind.is_fifo() {
            return Err(FormatError::invalid(format!(
                "archive entry {path:?} is a device or pipe"
            )));
        }
        if let [dir, "PKG-INFO"] = segs.as_slice()
            && kind.is_file()
        {
            let source = format!("{dir}/PKG-INFO");
            if found.is_some() {
                return Err(FormatError::invalid(format!(
                    "{filename:?} has more than one {{name}}-{{version}}/PKG-INFO file"
                )));
            }
            if entry.size() > limits.max_metadata_bytes {
                return Err(too_big_metadata(&source, limits));
            }
            let bytes = read_metadata(entry, &source, filename, limits)?;
            found = Some((bytes, source));
        }
    }
    found.ok_or_else(|| {
        FormatError::invalid(format!("{filename:?} has no {{name}}-{{version}}/PKG-INFO file"))
    })
}
