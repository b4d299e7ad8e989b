//! Inspection of a package tarball (`.tgz`): every entry is checked, sizes
//! are bounded while decompressing, and `package.json` is read.

use std::cell::Cell;
use std::io::{self, Read};

use flate2::read::GzDecoder;
use serde_json::{Map, Value};
use tar::EntryType;

use crate::{ArchiveLimits, FormatError};

/// What a tarball holds, as far as the registry cares.
#[derive(Debug)]
pub(crate) struct TarballInfo {
    /// The parsed `{top}/package.json`.
    pub package_json: Map<String, Value>,
    /// Regular files in the tarball (npm's `dist.fileCount`).
    pub file_count: u64,
    /// Their total size in bytes (npm's `dist.unpackedSize`).
    pub unpacked_size: u64,
    /// Whether `{top}/npm-shrinkwrap.json` exists.
    pub has_shrinkwrap: bool,
    /// Whether `{top}/binding.gyp` exists (npm then runs `node-gyp rebuild`).
    pub has_binding_gyp: bool,
}

/// Why the decompressed stream was cut off.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Trip {
    None,
    /// The whole stream exceeded `max_unpacked_bytes`.
    Total,
    /// Tar extension headers (long names, PAX) between two entries were
    /// larger than allowed; the tar reader would hold them in memory.
    Window,
}

/// Shared bookkeeping between the walk and the reader it drives.
struct Meter {
    pos: Cell<u64>,
    total_limit: u64,
    window_end: Cell<u64>,
    tripped: Cell<Trip>,
}

/// Counts decompressed bytes and fails once a limit is crossed.
struct MeteredReader<'a, R> {
    inner: R,
    meter: &'a Meter,
}

impl<R: Read> Read for MeteredReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let m = self.meter;
        if m.tripped.get() != Trip::None {
            return Err(io::Error::other("size limit exceeded"));
        }
        let n = self.inner.read(buf)?;
        let pos = m.pos.get().saturating_add(n as u64);
        m.pos.set(pos);
        if pos > m.total_limit {
            m.tripped.set(Trip::Total);
        } else if pos > m.window_end.get() {
            m.tripped.set(Trip::Window);
        }
        if m.tripped.get() != Trip::None {
            return Err(io::Error::other("size limit exceeded"));
        }
        Ok(n)
    }
}

const BLOCK: u64 = 512;

fn round_up_block(n: u64) -> u64 {
    n.saturating_add(BLOCK - 1) & !(BLOCK - 1)
}

/// Inspects a gzip-compressed tar archive as npm packs it: every entry lives
/// under one top-level folder (`package/` for npm, any name accepted), which
/// must contain `package.json`. The archive is read once, from start to end,
/// through small buffers (a staged upload's file, typically).
pub(crate) fn inspect_tarball<R: Read>(
    mut tarball: R,
    limits: &ArchiveLimits,
) -> Result<TarballInfo, FormatError> {
    let mut magic = [0u8; 2];
    let mut got = 0;
    while got < magic.len() {
        match tarball.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(FormatError::invalid(format!(
                    "the tarball could not be read: {e}"
                )));
            }
        }
    }
    if got < 2 || magic != [0x1f, 0x8b] {
        return Err(FormatError::invalid(
            "the tarball is not gzip-compressed (npm packages are .tgz files)",
        ));
    }
    // Extension headers (GNU long names, PAX records) are read whole into
    // memory by the tar reader: allow each little more than a metadata file.
    let ext_slack = 3 * (round_up_block(limits.max_metadata_bytes) + BLOCK) + 4 * BLOCK;
    let meter = Meter {
        pos: Cell::new(0),
        total_limit: limits.max_unpacked_bytes,
        window_end: Cell::new(ext_slack),
        tripped: Cell::new(Trip::None),
    };
    let reader = MeteredReader {
        inner: GzDecoder::new(magic.as_slice().chain(tarball)),
        meter: &meter,
    };
    let mut archive = tar::Archive::new(reader);
    let walked = walk(&mut archive, limits, &meter, ext_slack);
    let result = walked.and_then(|info| {
        // Read to the end so a corrupt or truncated gzip stream (which npm
        // would fail to install) is refused now.
        meter.window_end.set(u64::MAX);
        let mut rest = archive.into_inner();
        io::copy(&mut rest, &mut io::sink())
            .map_err(|e| Failure::Io("the tarball is not a valid gzip stream", e))?;
        Ok(info)
    });
    result.map_err(|f| match meter.tripped.get() {
        Trip::Total => FormatError::too_large(format!(
            "the tarball expands to more than {} bytes",
            limits.max_unpacked_bytes
        )),
        Trip::Window => FormatError::too_large(format!(
            "the tarball has tar extension headers (long names or PAX records) larger than {} bytes",
            limits.max_metadata_bytes
        )),
        Trip::None => match f {
            Failure::Format(e) => e,
            Failure::Io(what, e) => FormatError::invalid(format!("{what}: {e}")),
        },
    })
}

enum Failure {
    Format(FormatError),
    Io(&'static str, io::Error),
}

impl From<FormatError> for Failure {
    fn from(e: FormatError) -> Self {
        Failure::Format(e)
    }
}

const NOT_TAR: &str = "the tarball is not a valid tar archive";

fn walk<R: Read>(
    archive: &mut tar::Archive<R>,
    limits: &ArchiveLimits,
    meter: &Meter,
    ext_slack: u64,
) -> Result<TarballInfo, Failure> {
    let invalid = |msg: String| Failure::Format(FormatError::invalid(msg));
    let entries = archive.entries().map_err(|e| Failure::Io(NOT_TAR, e))?;
    let mut top: Option<String> = None;
    let mut package_json: Option<Vec<u8>> = None;
    let mut info = TarballInfo {
        package_json: Map::new(),
        file_count: 0,
        unpacked_size: 0,
        has_shrinkwrap: false,
        has_binding_gyp: false,
    };
    let mut declared: u64 = 0;
    let mut count: u64 = 0;
    for entry in entries {
        let mut entry = entry.map_err(|e| Failure::Io(NOT_TAR, e))?;
        // The next call may read past this entry's data and then extension
        // headers; bound what it may consume.
        let size = entry.size();
        meter.window_end.set(
            meter
                .pos
                .get()
                .saturating_add(round_up_block(size))
                .saturating_add(ext_slack),
        );

        count += 1;
        if count > limits.max_entries {
            return Err(FormatError::too_large(format!(
                "the tarball has more than {} entries",
                limits.max_entries
            ))
            .into());
        }
        declared = declared.saturating_add(size);
        if declared > limits.max_unpacked_bytes {
            return Err(FormatError::too_large(format!(
                "the tarball expands to more than {} bytes",
                limits.max_unpacked_bytes
            ))
            .into());
        }

        let kind = entry.header().entry_type();
        if kind == EntryType::XGlobalHeader {
            continue; // a PAX global header (e.g. `pax_global_header` of git archives)
        }
        let raw = entry.path_bytes().into_owned();
        let path = String::from_utf8(raw)
            .map_err(|e| invalid(format!("a tarball entry name is not UTF-8: {:?}", e.as_bytes())))?;
        let comps = entry_components(&path)?;
        let Some((first, rest)) = comps.split_first() else {
            if kind == EntryType::Directory {
                continue; // "./"
            }
            return Err(invalid(format!("tarball entry {path:?} has an empty name")));
        };
        if rest.is_empty() && kind != EntryType::Directory {
            return Err(invalid(format!(
                "tarball entry {path:?} is outside the package folder; npm packs every file under package/"
            )));
        }
        match &top {
            Some(t) if t != first => {
                return Err(invalid(format!(
                    "the tarball has more than one top-level folder ({t:?} and {first:?}); \
                     npm packs every file under package/"
                )));
            }
            Some(_) => {}
            None => top = Some((*first).to_owned()),
        }

        match kind {
            EntryType::Regular | EntryType::Continuous => {
                info.file_count += 1;
                info.unpacked_size = info.unpacked_size.saturating_add(size);
                match rest {
                    ["package.json"] => {
                        if size > limits.max_metadata_bytes {
                            return Err(FormatError::too_large(format!(
                                "package.json in the tarball is larger than {} bytes",
                                limits.max_metadata_bytes
                            ))
                            .into());
                        }
                        let mut buf = Vec::with_capacity(size as usize);
                        (&mut entry)
                            .take(limits.max_metadata_bytes)
                            .read_to_end(&mut buf)
                            .map_err(|e| Failure::Io(NOT_TAR, e))?;
                        // A later duplicate wins, as when npm extracts.
                        package_json = Some(buf);
                    }
                    ["npm-shrinkwrap.json"] => info.has_shrinkwrap = true,
                    ["binding.gyp"] => info.has_binding_gyp = true,
                    _ => {}
                }
            }
            EntryType::Directory => {}
            EntryType::Symlink => {
                let target = link_target(&entry, &path)?;
                let parent = &comps[..comps.len() - 1];
                if symlink_escapes(parent, &target) {
                    return Err(invalid(format!(
                        "tarball entry {path:?} is a symlink to {target:?}, outside the package"
                    )));
                }
            }
            EntryType::Link => {
                let target = link_target(&entry, &path)?;
                if hardlink_escapes(first, &target) {
                    return Err(invalid(format!(
                        "tarball entry {path:?} is a hard link to {target:?}, outside the package"
                    )));
                }
            }
            other => {
                return Err(invalid(format!(
                    "tarball entry {path:?} has unsupported type {:?} \
                     (only files, folders and links are allowed)",
                    other.as_byte() as char
                )));
            }
        }
    }
    let Some(raw) = package_json else {
        let where_ = top.as_deref().unwrap_or("package");
        return Err(invalid(format!("the tarball has no {where_}/package.json")));
    };
    let text = raw.strip_prefix(b"\xEF\xBB\xBF".as_slice()).unwrap_or(&raw);
    info.package_json = match serde_json::from_slice::<Value>(text) {
        Ok(Value::Object(m)) => m,
        Ok(_) => {
            return Err(invalid(
                "package.json in the tarball is not a JSON object".to_owned(),
            ));
        }
        Err(e) => {
            return Err(invalid(format!(
                "package.json in the tarball is not valid JSON: {e}"
            )));
        }
    };
    Ok(info)
}

/// Splits an entry path into its meaningful components, refusing absolute
/// paths and `..`. Backslashes count as separators, as on Windows.
fn entry_components(path: &str) -> Result<Vec<&str>, FormatError> {
    if is_absolute(path) {
        return Err(FormatError::invalid(format!(
            "tarball entry {path:?} has an absolute path"
        )));
    }
    let mut comps = Vec::new();
    for c in path.split(['/', '\\']) {
        match c {
            "" | "." => {}
            ".." => {
                return Err(FormatError::invalid(format!(
                    "tarball entry {path:?} contains '..' (path traversal)"
                )));
            }
            c => comps.push(c),
        }
    }
    Ok(comps)
}

fn is_absolute(path: &str) -> bool {
    let b = path.as_bytes();
    path.starts_with(['/', '\\']) || (b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':')
}

fn link_target<R: Read>(entry: &tar::Entry<'_, R>, path: &str) -> Result<String, Failure> {
    let raw = entry
        .link_name_bytes()
        .map(|c| c.into_owned())
        .unwrap_or_default();
    String::from_utf8(raw).map_err(|_| {
        Failure::Format(FormatError::invalid(format!(
            "tarball entry {path:?} has a link target that is not UTF-8"
        )))
    })
}

/// A symlink in folder `parent` (components from the archive root, the
/// top-level folder first) pointing at `target` leaves the package folder.
fn symlink_escapes(parent: &[&str], target: &str) -> bool {
    if is_absolute(target) {
        return true;
    }
    let mut depth = parent.len();
    for c in target.split(['/', '\\']) {
        match c {
            "" | "." => {}
            ".." => {
                if depth <= 1 {
                    return true;
                }
                depth -= 1;
            }
            _ => depth += 1,
        }
    }
    false
}

/// A hard link names its target from the archive root; it must stay inside
/// the top-level folder `top`.
fn hardlink_escapes(top: &str, target: &str) -> bool {
    match entry_components(target) {
        Ok(c) => c.len() < 2 || c[0] != top,
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlink_resolution() {
        assert!(!symlink_escapes(&["package"], "index.js"));
        assert!(!symlink_escapes(&["package", "lib"], "../index.js"));
        assert!(symlink_escapes(&["package"], "../x"));
        assert!(symlink_escapes(&["package", "lib"], "../../x"));
        assert!(symlink_escapes(&["package"], "/etc/passwd"));
        assert!(symlink_escapes(&["package"], "C:\\x"));
        assert!(!symlink_escapes(&["package"], "a/../b"));
        assert!(symlink_escapes(&["package"], "a/../../b"));
        assert!(!hardlink_escapes("package", "package/a"));
        assert!(hardlink_escapes("package", "other/a"));
        assert!(hardlink_escapes("package", "package/../x"));
        assert!(hardlink_escapes("package", "package"));
    }
}
