//! Debian feeds (apt repositories): reading `.deb` archives, validating
//! their control paragraph, the pool layout, and rendering `Packages` and
//! `Release` files.
//!
//! Specs: Debian Policy §5 (control files: §5.6.1 `Package`, §5.6.7
//! `Architecture`, §5.6.12 `Version`), `deb(5)` (the `ar` archive with
//! `debian-binary`, `control.tar.*`, `data.tar.*` in that order) and the
//! repository format ("DebianRepository/Format" on the Debian wiki:
//! `dists/DIST/Release`, `InRelease`, `binary-ARCH/Packages`, by-hash).
//!
//! Item layout: one item per `(distribution, component, package, version,
//! architecture)`, key `deb/DIST/COMPONENT/NAME/VERSION/ARCH`, metadata a
//! [`DebMeta`] (the control paragraph as uploaded, the pool path, size and
//! sha256), one blob: the `.deb`. Indexes are never items: each instance
//! renders (and signs) its own from the items.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Read;

use ferry_types::{Digest, ItemKey};
use serde::{Deserialize, Serialize};

use crate::{ArchiveLimits, FormatError};

/// Longest distribution or component name accepted.
pub const MAX_NAME_LEN: usize = 64;

/// Fields Ferry adds to every `Packages` paragraph itself; a control file
/// carrying them has them dropped.
const DERIVED_FIELDS: [&str; 6] = ["Filename", "Size", "MD5sum", "SHA1", "SHA256", "SHA512"];

/// What an uploaded `.deb` is: its control paragraph and the three fields
/// that identify it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebInfo {
    pub package: String,
    pub version: String,
    pub architecture: String,
    /// The control paragraph as `(field, value)` pairs in file order,
    /// values with their continuation lines (`\n`-joined, as written).
    pub fields: Vec<(String, String)>,
}

/// A debian item's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebMeta {
    pub distribution: String,
    pub component: String,
    pub package: String,
    pub version: String,
    pub architecture: String,
    /// `pool/COMPONENT/p/pkg/pkg_VERSION_ARCH.deb` (epoch dropped).
    pub filename: String,
    pub size: u64,
    pub sha256: Digest,
    /// The control paragraph, as `Field: value` lines (no trailing blank line),
    /// without the fields Ferry derives (Filename, Size, hashes).
    pub control: String,
}

impl DebMeta {
    /// Builds the metadata of `info` uploaded into `dist`/`component`.
    pub fn new(
        dist: &str,
        component: &str,
        info: &DebInfo,
        size: u64,
        sha256: Digest,
    ) -> Result<Self, FormatError> {
        check_dist(dist)?;
        check_component(component)?;
        let mut control = String::new();
        for (k, v) in &info.fields {
            if DERIVED_FIELDS.iter().any(|d| d.eq_ignore_ascii_case(k)) {
                continue;
            }
            let _ = writeln!(control, "{k}: {v}");
        }
        Ok(Self {
            distribution: dist.to_owned(),
            component: component.to_owned(),
            package: info.package.clone(),
            version: info.version.clone(),
            architecture: info.architecture.clone(),
            filename: pool_path(component, &info.package, &info.version, &info.architecture)?,
            size,
            sha256,
            control: control.trim_end().to_owned(),
        })
    }

    pub fn key(&self) -> Result<ItemKey, FormatError> {
        item_key(
            &self.distribution,
            &self.component,
            &self.package,
            &self.version,
            &self.architecture,
        )
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    pub fn from_json(v: &serde_json::Value) -> Result<Self, FormatError> {
        Self::deserialize(v).map_err(|e| FormatError::invalid(format!("debian item metadata: {e}")))
    }

    /// Reads an item's metadata from its stored JSON text, without a
    /// `serde_json::Value` in between.
    pub fn from_json_text(text: &str) -> Result<Self, FormatError> {
        serde_json::from_str(text).map_err(|e| FormatError::invalid(format!("debian item metadata: {e}")))
    }

    /// This package's paragraph of a `Packages` file (ending in a blank line).
    pub fn paragraph(&self) -> String {
        format!(
            "{}\nFilename: {}\nSize: {}\nSHA256: {}\n\n",
            self.control,
            self.filename,
            self.size,
            self.sha256.hex()
        )
    }
}

/// The item key of one package version: `deb/DIST/COMPONENT/NAME/VERSION/ARCH`.
pub fn item_key(
    dist: &str,
    component: &str,
    name: &str,
    version: &str,
    arch: &str,
) -> Result<ItemKey, FormatError> {
    check_dist(dist)?;
    check_component(component)?;
    check_package(name)?;
    check_version(version)?;
    check_arch(arch)?;
    ItemKey::new(format!("deb/{dist}/{component}/{name}/{version}/{arch}"))
        .map_err(|e| FormatError::invalid(e.to_string()))
}

/// The key prefix of a distribution's items.
pub fn dist_prefix(dist: &str) -> Result<String, FormatError> {
    check_dist(dist)?;
    Ok(format!("deb/{dist}/"))
}

/// Checks a received item: its key, and (when live) that its metadata
/// agrees with the key, names one blob equal to its sha256, and that its
/// control paragraph is one Ferry would have stored. Used for replication.
pub fn validate_item(
    key: &ItemKey,
    live: Option<(&serde_json::Value, &[Digest])>,
) -> Result<Option<DebMeta>, FormatError> {
    let parts: Vec<&str> = key.as_str().splitn(6, '/').collect();
    let [tag, dist, comp, name, version, arch] = parts[..] else {
        return Err(FormatError::invalid(format!(
            "debian item key {key} is not deb/DIST/COMPONENT/NAME/VERSION/ARCH"
        )));
    };
    if tag != "deb" || item_key(dist, comp, name, version, arch)? != *key {
        return Err(FormatError::invalid(format!(
            "debian item key {key} is not deb/DIST/COMPONENT/NAME/VERSION/ARCH"
        )));
    }
    let Some((meta, blobs)) = live else {
        return Ok(None);
    };
    let m = DebMeta::from_json(meta).map_err(|e| FormatError::invalid(format!("debian item {key}: {e}")))?;
    crate::no_unknown_fields("debian", key, meta, &m.to_json())?;
    if m.key()? != *key {
        return Err(FormatError::invalid(format!(
            "debian item {key}: its metadata names another package"
        )));
    }
    if blobs != [m.sha256] {
        return Err(FormatError::invalid(format!(
            "debian item {key}: it must name exactly its .deb as blob"
        )));
    }
    if m.filename != pool_path(comp, name, version, arch)? {
        return Err(FormatError::invalid(format!(
            "debian item {key}: pool path {} is not where the package belongs",
            m.filename
        )));
    }
    let fields = parse_control(&m.control)?;
    let info = identify(fields)?;
    if (
        info.package.as_str(),
        info.version.as_str(),
        info.architecture.as_str(),
    ) != (name, version, arch)
    {
        return Err(FormatError::invalid(format!(
            "debian item {key}: its control paragraph names another package"
        )));
    }
    Ok(Some(m))
}

fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'))
}

/// A distribution name (`bookworm`, `stable`): 1–64 of `A-Za-z0-9._-+`,
/// starting with a letter or digit.
pub fn check_dist(s: &str) -> Result<(), FormatError> {
    if name_ok(s) {
        Ok(())
    } else {
        Err(FormatError::invalid(format!(
            "invalid distribution name {s:?}: 1-{MAX_NAME_LEN} of A-Z a-z 0-9 . _ - +, starting with a letter or digit"
        )))
    }
}

/// A component name (`main`, `contrib`): as a distribution name.
pub fn check_component(s: &str) -> Result<(), FormatError> {
    if name_ok(s) {
        Ok(())
    } else {
        Err(FormatError::invalid(format!(
            "invalid component name {s:?}: 1-{MAX_NAME_LEN} of A-Z a-z 0-9 . _ - +, starting with a letter or digit"
        )))
    }
}

/// Policy §5.6.1: at least two characters of `a-z0-9+-.`, starting with
/// an alphanumeric.
pub fn check_package(s: &str) -> Result<(), FormatError> {
    let b = s.as_bytes();
    if b.len() >= 2
        && b.len() <= 128
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'+' | b'-' | b'.'))
    {
        Ok(())
    } else {
        Err(FormatError::invalid(format!(
            "invalid Package {s:?}: Debian policy 5.6.1 allows 2 or more of a-z 0-9 + - ., starting with a letter or digit"
        )))
    }
}

/// Policy §5.6.12: `[epoch:]upstream_version[-debian_revision]`; the
/// upstream version starts with a digit; only `A-Za-z0-9.+~-` (and `:`
/// after an epoch).
pub fn check_version(s: &str) -> Result<(), FormatError> {
    let bad =
        |why: &str| FormatError::invalid(format!("invalid Version {s:?}: {why} (Debian policy 5.6.12)"));
    if s.is_empty() || s.len() > 128 {
        return Err(bad("must be 1-128 characters"));
    }
    let rest = match s.split_once(':') {
        Some((epoch, rest)) => {
            if epoch.is_empty() || !epoch.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("the epoch must be digits"));
            }
            rest
        }
        None => s,
    };
    let upstream = rest.rsplit_once('-').map_or(rest, |(u, _)| u);
    if !upstream.as_bytes().first().is_some_and(u8::is_ascii_digit) {
        return Err(bad("the upstream version must start with a digit"));
    }
    if !rest
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'~' | b'-' | b':'))
    {
        return Err(bad("only A-Z a-z 0-9 . + ~ - : are allowed"));
    }
    if rest.ends_with('-') {
        return Err(bad("an empty Debian revision"));
    }
    Ok(())
}

/// Policy §5.6.7/§11.1: an architecture name (`amd64`, `arm64`, `all`):
/// `a-z0-9` and `-`, starting with a letter or digit; `any` and `source`
/// are not binary architectures.
pub fn check_arch(s: &str) -> Result<(), FormatError> {
    let b = s.as_bytes();
    if !b.is_empty()
        && b.len() <= 32
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && s != "any"
        && s != "source"
    {
        Ok(())
    } else {
        Err(FormatError::invalid(format!(
            "invalid Architecture {s:?}: one binary architecture such as amd64 or all (Debian policy 5.6.7)"
        )))
    }
}

/// `pool/COMPONENT/PREFIX/NAME/NAME_VERSION_ARCH.deb`, where PREFIX is the
/// first letter of the name, or its first four for `lib*` names, and the
/// version's epoch is left out (as the Debian archive does).
pub fn pool_path(component: &str, name: &str, version: &str, arch: &str) -> Result<String, FormatError> {
    check_component(component)?;
    check_package(name)?;
    check_version(version)?;
    check_arch(arch)?;
    let prefix = if name.starts_with("lib") && name.len() > 3 {
        &name[..4]
    } else {
        &name[..1]
    };
    let bare = version.split_once(':').map_or(version, |(_, v)| v);
    Ok(format!(
        "pool/{component}/{prefix}/{name}/{name}_{bare}_{arch}.deb"
    ))
}

/// Parses one deb822 paragraph (a control file). Refuses more than one
/// paragraph, lines that are neither `Field: value` nor continuations, and
/// duplicate fields.
pub fn parse_control(text: &str) -> Result<Vec<(String, String)>, FormatError> {
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut ended = false;
    for line in text.lines() {
        if line.trim().is_empty() {
            ended = !fields.is_empty();
            continue;
        }
        if ended {
            return Err(FormatError::invalid(
                "the control file has more than one paragraph",
            ));
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            let Some((_, v)) = fields.last_mut() else {
                return Err(FormatError::invalid(
                    "the control file starts with a continuation line",
                ));
            };
            v.push('\n');
            v.push_str(line);
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once(':') else {
            return Err(FormatError::invalid(format!(
                "control file line {line:?} is not \"Field: value\""
            )));
        };
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_graphic() && b != b':') || k.starts_with('-') {
            return Err(FormatError::invalid(format!("invalid control field name {k:?}")));
        }
        if fields.iter().any(|(f, _)| f.eq_ignore_ascii_case(k)) {
            return Err(FormatError::invalid(format!("control field {k} appears twice")));
        }
        fields.push((k.to_owned(), v.trim().to_owned()));
    }
    if fields.is_empty() {
        return Err(FormatError::invalid("the control file is empty"));
    }
    Ok(fields)
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Takes Package, Version and Architecture out of a control paragraph,
/// validating each.
pub fn identify(fields: Vec<(String, String)>) -> Result<DebInfo, FormatError> {
    let get = |name: &str| {
        field(&fields, name)
            .map(str::to_owned)
            .ok_or_else(|| FormatError::invalid(format!("the control file has no {name} field")))
    };
    let package = get("Package")?;
    let version = get("Version")?;
    let architecture = get("Architecture")?;
    check_package(&package)?;
    check_version(&version)?;
    check_arch(&architecture)?;
    Ok(DebInfo {
        package,
        version,
        architecture,
        fields,
    })
}

/// Reads a `.deb` (`deb(5)`): an `ar` archive whose first member is
/// `debian-binary` (`2.x`), then `control.tar[.gz|.xz|.zst]`, then
/// `data.tar.*`. Returns its control paragraph. The control file is read
/// from the archive, never from a file name; sizes are bounded by `limits`.
pub fn inspect_deb<R: Read>(reader: R, limits: &ArchiveLimits) -> Result<DebInfo, FormatError> {
    let not_deb = |why: String| FormatError::invalid(format!("not a Debian package (.deb): {why}"));
    let mut ar = DebMembers::new(reader).map_err(not_deb)?;
    let mut seen_binary = false;
    let mut control: Option<String> = None;
    let mut seen_data = false;
    let mut index = 0;
    while let Some((name, size)) = ar.next_member().map_err(not_deb)? {
        let mut entry = ar.member();
        match (index, name.as_str()) {
            (0, "debian-binary") => {
                let mut v = String::new();
                entry
                    .by_ref()
                    .take(64)
                    .read_to_string(&mut v)
                    .map_err(|e| not_deb(format!("debian-binary: {e}")))?;
                if !v.starts_with("2.") {
                    return Err(not_deb(format!("format version {:?} is not 2.x", v.trim())));
                }
                seen_binary = true;
            }
            (0, other) => {
                return Err(not_deb(format!(
                    "the first member is {other:?}, not debian-binary"
                )));
            }
            (_, n) if n.starts_with("control.tar") && control.is_none() && !seen_data => {
                control = Some(read_control_tar(n, &mut entry, limits)?);
            }
            (_, n) if n.starts_with("data.tar") => {
                if control.is_none() {
                    return Err(not_deb("data.tar comes before control.tar".into()));
                }
                if seen_data {
                    return Err(not_deb(format!("a second data member, {n:?}")));
                }
                // Read through, so a truncated archive is noticed.
                let want = size;
                let got = std::io::copy(&mut entry, &mut std::io::sink())
                    .map_err(|e| not_deb(format!("{n}: {e}")))?;
                if got != want {
                    return Err(not_deb(format!("{n} is truncated")));
                }
                seen_data = true;
            }
            (_, n) if n.starts_with('_') => {}
            (_, n) => return Err(not_deb(format!("unexpected member {n:?}"))),
        }
        index += 1;
    }
    if !seen_binary {
        return Err(not_deb("no debian-binary member".into()));
    }
    let Some(control) = control else {
        return Err(not_deb("no control.tar member".into()));
    };
    if !seen_data {
        return Err(not_deb("no data.tar member (truncated?)".into()));
    }
    identify(parse_control(&control)?)
}

/// The members of a `.deb`'s `ar` archive, read in order (`deb(5)`:
/// the common `ar` format, `!<arch>\n` then for each member a 60-byte
/// header — name, mtime, owner, group, mode, decimal size, "`\n" — and
/// its bytes, padded to an even length). Read here rather than with the
/// `ar` crate, which sets aside memory for the sizes a GNU name table or
/// a BSD long name declare before reading them (up to 10 GB from a
/// 60-byte header); neither belongs in a `.deb`, and both are refused.
struct DebMembers<R> {
    reader: R,
    /// Bytes of the current member not yet read, and its padding byte.
    left: u64,
    pad: bool,
}

impl<R: Read> DebMembers<R> {
    fn new(mut reader: R) -> Result<Self, String> {
        let mut magic = [0u8; 8];
        reader
            .read_exact(&mut magic)
            .map_err(|_| "shorter than the ar archive's magic".to_owned())?;
        if &magic != b"!<arch>\n" {
            return Err("not an ar archive".into());
        }
        Ok(DebMembers {
            reader,
            left: 0,
            pad: false,
        })
    }

    /// The next member's name (trailing spaces and a GNU `/` cut) and
    /// size, after skipping what is left of the current one; None at the
    /// end of the archive.
    fn next_member(&mut self) -> Result<Option<(String, u64)>, String> {
        let skip = self.left + u64::from(self.pad);
        let skipped = std::io::copy(&mut (&mut self.reader).take(skip), &mut std::io::sink())
            .map_err(|e| e.to_string())?;
        if skipped != skip {
            return Err("truncated inside a member".into());
        }
        let mut head = [0u8; 60];
        let mut got = 0;
        while got < head.len() {
            match self.reader.read(&mut head[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        if got == 0 {
            return Ok(None);
        }
        if got < head.len() || &head[58..] != b"`\n" {
            return Err("a member header is cut off or damaged".into());
        }
        let name = std::str::from_utf8(&head[..16])
            .map_err(|_| "a member name is not UTF-8".to_owned())?
            .trim_end_matches(' ');
        if name.starts_with('/') || name.starts_with("#1/") {
            return Err(format!(
                "member {name:?}: long-name tables and symbol tables do not belong in a .deb"
            ));
        }
        let name = name.strip_suffix('/').unwrap_or(name).to_owned();
        let size = std::str::from_utf8(&head[48..58])
            .ok()
            .map(|s| s.trim_end_matches(' '))
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| format!("member {name:?} has no decimal size"))?;
        self.left = size;
        self.pad = size % 2 == 1;
        Ok(Some((name, size)))
    }

    /// The current member's bytes (as many as [`Self::next_member`]
    /// said), counted so that the next call skips the rest.
    fn member(&mut self) -> impl Read + '_ {
        Member { members: self }
    }
}

/// A reader of one member's bytes ([`DebMembers::member`]).
struct Member<'a, R> {
    members: &'a mut DebMembers<R>,
}

impl<R: Read> Read for Member<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = (buf.len() as u64).min(self.members.left) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.members.reader.read(&mut buf[..want])?;
        self.members.left -= n as u64;
        Ok(n)
    }
}

fn read_control_tar<R: Read>(name: &str, entry: R, limits: &ArchiveLimits) -> Result<String, FormatError> {
    let bounded = entry.take(limits.max_unpacked_bytes);
    let decoder: Box<dyn Read + '_> = match name {
        "control.tar" => Box::new(bounded),
        "control.tar.gz" => Box::new(flate2::read::GzDecoder::new(bounded)),
        "control.tar.xz" => {
            // The stream names the dictionary its decoder needs; without a
            // ceiling a 92 KB member could ask for gigabytes.
            let stream = xz2::stream::Stream::new_stream_decoder(XZ_MEMLIMIT, 0)
                .map_err(|e| FormatError::invalid(format!("{name}: {e}")))?;
            Box::new(xz2::read::XzDecoder::new_stream(bounded, stream))
        }
        "control.tar.zst" => Box::new(
            zstd::stream::read::Decoder::new(bounded)
                .map_err(|e| FormatError::invalid(format!("{name}: {e}")))?,
        ),
        other => {
            return Err(FormatError::invalid(format!(
                "unsupported control member {other:?}"
            )));
        }
    };
    // A control member holds a few small files; read to its end (below),
    // an unbounded one would be a small upload that decompresses, and
    // fills a decoder's window, for as long as the archive limit allows.
    let cap = limits.max_unpacked_bytes.min(CONTROL_UNPACKED_MAX);
    let mut tar = tar::Archive::new(Capped {
        inner: decoder,
        left: cap,
        cap,
    });
    let entries = tar
        .entries()
        .map_err(|e| FormatError::invalid(format!("{name}: {e}")))?;
    let unreadable = |e: std::io::Error| {
        let memory = e.to_string().to_ascii_lowercase().contains("memory");
        if e.kind() == std::io::ErrorKind::FileTooLarge {
            FormatError::too_large(format!("{name}: {e}"))
        } else if memory {
            FormatError::too_large(format!(
                "{name}: its xz stream needs more than {} MiB of memory to decode",
                XZ_MEMLIMIT >> 20
            ))
        } else {
            FormatError::invalid(format!("{name}: {e}"))
        }
    };
    // Read to the end: dpkg unpacks every member and the last `control`
    // is the one it uses; a second one is refused rather than guessed at.
    let mut control = None;
    for (n, e) in entries.enumerate() {
        if n as u64 >= limits.max_entries {
            return Err(FormatError::too_large(format!("{name} has too many entries")));
        }
        let e = e.map_err(unreadable)?;
        let path = e.path().map_err(unreadable)?;
        let path = path.to_string_lossy();
        if path.trim_start_matches("./") == "control" {
            if control.is_some() {
                return Err(FormatError::invalid(format!(
                    "{name} holds the control file twice (dpkg would use the last, Ferry the first): rebuild the package"
                )));
            }
            if e.header().size().unwrap_or(u64::MAX) > limits.max_metadata_bytes {
                return Err(FormatError::too_large("the control file is too large"));
            }
            let mut text = String::new();
            e.take(limits.max_metadata_bytes)
                .read_to_string(&mut text)
                .map_err(|e| FormatError::invalid(format!("{name}: control: {e}")))?;
            control = Some(text);
        }
    }
    control.ok_or_else(|| FormatError::invalid(format!("{name} has no control file")))
}

/// Most bytes a `control.tar*` member may unpack to, in bytes: its
/// `control`, `md5sums`, `conffiles` and maintainer scripts take
/// kilobytes to a few megabytes in real packages.
pub const CONTROL_UNPACKED_MAX: u64 = 64 << 20;

/// A reader that fails with `FileTooLarge` once more than `cap` bytes
/// come out of `inner` (where `Read::take` would end quietly and leave
/// the tar reader to report a truncated archive).
struct Capped<R> {
    inner: R,
    left: u64,
    cap: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            // At the cap: anything more is refused, the end is not.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(std::io::Error::new(
                    std::io::ErrorKind::FileTooLarge,
                    format!("it unpacks to more than {} MiB", self.cap >> 20),
                )),
            };
        }
        let want = usize::try_from(self.left).unwrap_or(usize::MAX).min(buf.len());
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Most memory the xz decoder of a `control.tar.xz` may use: `xz -9`
/// packs with a 64 MiB dictionary, which takes some 65 MiB to decode.
const XZ_MEMLIMIT: u64 = 96 << 20;

/// One index file of a distribution, as listed in `Release`.
#[derive(Debug, Clone)]
pub struct IndexFile {
    /// Relative to `dists/DIST/`, e.g. `main/binary-amd64/Packages.gz`.
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub sha512: String,
}

/// The architectures a distribution's `Release` names: those of its
/// packages plus `all`; a distribution with only `all` packages names
/// `defaults` too, so clients of those architectures find an index.
pub fn release_architectures<'a>(archs: impl IntoIterator<Item = &'a str>, defaults: &[&str]) -> Vec<String> {
    let mut set: BTreeSet<String> = archs
        .into_iter()
        .filter(|a| *a != "all")
        .map(str::to_owned)
        .collect();
    if set.is_empty() {
        set.extend(defaults.iter().map(|s| s.to_string()));
    }
    let mut out = vec!["all".to_owned()];
    out.extend(set);
    out
}

/// The fields of a `Release` file.
#[derive(Debug, Clone)]
pub struct ReleaseInfo<'a> {
    pub origin: &'a str,
    pub label: &'a str,
    pub suite: &'a str,
    pub codename: &'a str,
    /// RFC 2822 date in UTC, e.g. `Sat, 01 Jan 2000 00:00:00 UTC`.
    pub date: String,
    pub architectures: &'a [String],
    pub components: &'a [String],
}

/// Renders `Release`: the fields, `Acquire-By-Hash: yes`, and the SHA256
/// and SHA512 lists of `files` (no `Valid-Until`, no MD5).
pub fn render_release(info: &ReleaseInfo<'_>, files: &[IndexFile]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Origin: {}", info.origin);
    let _ = writeln!(s, "Label: {}", info.label);
    let _ = writeln!(s, "Suite: {}", info.suite);
    let _ = writeln!(s, "Codename: {}", info.codename);
    let _ = writeln!(s, "Date: {}", info.date);
    let _ = writeln!(s, "Architectures: {}", info.architectures.join(" "));
    let _ = writeln!(s, "Components: {}", info.components.join(" "));
    s.push_str("Acquire-By-Hash: yes\n");
    s.push_str("SHA256:\n");
    for f in files {
        let _ = writeln!(s, " {} {:>16} {}", f.sha256, f.size, f.path);
    }
    s.push_str("SHA512:\n");
    for f in files {
        let _ = writeln!(s, " {} {:>16} {}", f.sha512, f.size, f.path);
    }
    s
}

/// RFC 2822 date in UTC for `millis` since the epoch, as `Release` wants it.
pub fn rfc2822_utc(millis: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = millis.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} UTC",
        DAYS[days.rem_euclid(7) as usize],
        d,
        MONTHS[(m - 1) as usize],
        y,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Compares two Debian versions as dpkg does (policy §5.6.12): epoch
/// numerically, then upstream version and revision by the
/// alternating non-digit/digit algorithm, `~` sorting before everything.
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    fn split(v: &str) -> (u64, &str, &str) {
        let (epoch, rest) = match v.split_once(':') {
            Some((e, r)) => (e.parse().unwrap_or(0), r),
            None => (0, v),
        };
        let (up, rev) = rest.rsplit_once('-').unwrap_or((rest, "0"));
        (epoch, up, rev)
    }
    fn order(c: Option<u8>) -> i32 {
        match c {
            None => 0,
            Some(b'~') => -1,
            Some(c) if c.is_ascii_alphabetic() => c as i32,
            Some(c) => c as i32 + 256,
        }
    }
    fn part(mut a: &[u8], mut b: &[u8]) -> std::cmp::Ordering {
        while !a.is_empty() || !b.is_empty() {
            loop {
                let ca = a.first().copied().filter(|c| !c.is_ascii_digit());
                let cb = b.first().copied().filter(|c| !c.is_ascii_digit());
                if ca.is_none() && cb.is_none() {
                    break;
                }
                let (oa, ob) = (order(ca), order(cb));
                if oa != ob {
                    return oa.cmp(&ob);
                }
                if ca.is_some() {
                    a = &a[1..];
                }
                if cb.is_some() {
                    b = &b[1..];
                }
            }
            let na = a.iter().take_while(|c| c.is_ascii_digit()).count();
            let nb = b.iter().take_while(|c| c.is_ascii_digit()).count();
            let da = std::str::from_utf8(&a[..na])
                .unwrap_or("")
                .trim_start_matches('0');
            let db = std::str::from_utf8(&b[..nb])
                .unwrap_or("")
                .trim_start_matches('0');
            let o = da.len().cmp(&db.len()).then_with(|| da.cmp(db));
            if o != std::cmp::Ordering::Equal {
                return o;
            }
            a = &a[na..];
            b = &b[nb..];
        }
        std::cmp::Ordering::Equal
    }
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb)
        .then_with(|| part(ua.as_bytes(), ub.as_bytes()))
        .then_with(|| part(ra.as_bytes(), rb.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering::*;

    #[test]
    fn debian_versions_compare_as_dpkg() {
        assert_eq!(compare_versions("1.0", "1.0"), Equal);
        assert_eq!(compare_versions("1.0~rc1", "1.0"), Less);
        assert_eq!(compare_versions("1:0.1", "2.0"), Greater);
        assert_eq!(compare_versions("1.10", "1.9"), Greater);
        assert_eq!(compare_versions("1.0-1", "1.0-2"), Less);
        assert_eq!(compare_versions("1.0a", "1.0"), Greater);
        assert_eq!(compare_versions("1.0+b1", "1.0"), Greater);
    }

    #[test]
    fn debian_pool_paths_and_names() {
        assert_eq!(
            pool_path("main", "libfoo", "1:2.0-1", "amd64").unwrap(),
            "pool/main/libf/libfoo/libfoo_2.0-1_amd64.deb"
        );
        assert_eq!(
            pool_path("main", "hello", "1.0", "all").unwrap(),
            "pool/main/h/hello/hello_1.0_all.deb"
        );
        for bad in ["../x", "a/b", "A", "x", "-x"] {
            assert!(check_package(bad).is_err(), "{bad}");
        }
        for bad in ["1.0/../../x", "a1", "1.0 x", "", "x:1", "1.0-"] {
            assert!(check_version(bad).is_err(), "{bad}");
        }
        for bad in ["..", "a/b", "", ".x"] {
            assert!(check_dist(bad).is_err(), "{bad}");
        }
        assert!(check_arch("../amd64").is_err());
    }

    #[test]
    fn debian_control_paragraphs() {
        let f = parse_control("Package: hello\nVersion: 1.0\nArchitecture: all\nDescription: hi\n there\n")
            .unwrap();
        let info = identify(f).unwrap();
        assert_eq!(info.package, "hello");
        assert!(identify(parse_control("Package: hello\nVersion: 1.0\n").unwrap()).is_err());
        assert!(parse_control("Package: a\n\nPackage: b\n").is_err());
        assert!(parse_control("Package: a\nPackage: b\n").is_err());
    }

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_path(path).unwrap();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            tar.append(&h, *data).unwrap();
        }
        tar.into_inner().unwrap()
    }

    fn deb_of(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut ar = ar::Builder::new(Vec::new());
        for (name, data) in members {
            let h = ar::Header::new(name.as_bytes().to_vec(), data.len() as u64);
            ar.append(&h, &data[..]).unwrap();
        }
        ar.into_inner().unwrap()
    }

    const CONTROL: &[u8] = b"Package: one\nVersion: 1.0\nArchitecture: all\nDescription: d\n x\n";

    #[test]
    fn a_control_file_given_twice_or_a_second_data_member_is_refused() {
        let other = b"Package: two\nVersion: 6.6\nArchitecture: all\nDescription: d\n x\n";
        let data = tar_of(&[("./usr/x", b"x")]);
        let twice = deb_of(&[
            ("debian-binary", b"2.0\n".to_vec()),
            (
                "control.tar",
                tar_of(&[("./control", CONTROL), ("./control", other)]),
            ),
            ("data.tar", data.clone()),
        ]);
        let e = inspect_deb(&twice[..], &ArchiveLimits::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("holds the control file twice"), "{e}");
        let two_data = deb_of(&[
            ("debian-binary", b"2.0\n".to_vec()),
            ("control.tar", tar_of(&[("./control", CONTROL)])),
            ("data.tar", data.clone()),
            ("data.tar", data.clone()),
        ]);
        let e = inspect_deb(&two_data[..], &ArchiveLimits::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("a second data member"), "{e}");
        let once = deb_of(&[
            ("debian-binary", b"2.0\n".to_vec()),
            ("control.tar", tar_of(&[("./control", CONTROL)])),
            ("data.tar", data),
        ]);
        assert_eq!(
            inspect_deb(&once[..], &ArchiveLimits::default()).unwrap().package,
            "one"
        );
    }

    #[test]
    fn ar_name_tables_and_long_names_are_refused_before_any_allocation() {
        let head = |name: &str, size: &str| {
            let mut h = format!("{name:<16}{:<12}{:<6}{:<6}{:<8}{size:<10}`\n", 0, 0, 0, 644).into_bytes();
            assert_eq!(h.len(), 60);
            h.splice(0..0, b"!<arch>\n".iter().copied());
            h
        };
        // A GNU name table or a BSD long name declaring ~10 GB: the ar
        // crate allocated that much before reading a byte of it.
        for (name, says) in [
            ("//", "long-name tables"),
            ("#1/9999999999", "long-name tables"),
            ("/", "symbol tables"),
        ] {
            let e = inspect_deb(&head(name, "9999999999")[..], &ArchiveLimits::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{name}: {e}");
        }
        for (bytes, says) in [
            (head("debian-binary", "x1"), "no decimal size"),
            (head("debian-binary", "10")[..40].to_vec(), "cut off or damaged"),
            (b"!<arch>x".to_vec(), "not an ar archive"),
        ] {
            let e = inspect_deb(&bytes[..], &ArchiveLimits::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{says}: {e}");
        }
        // GNU-style names ("name/") and odd sizes padded to even are read.
        let mut deb = b"!<arch>\n".to_vec();
        for (name, data) in [
            ("debian-binary/", b"2.0\n".to_vec()),
            ("control.tar/", tar_of(&[("./control", CONTROL)])),
            ("data.tar/", tar_of(&[("./usr/x", b"x")])),
            ("_extra/", b"odd".to_vec()),
        ] {
            deb.extend_from_slice(&head(name, &data.len().to_string())[8..]);
            deb.extend_from_slice(&data);
            if data.len() % 2 == 1 {
                deb.push(b'\n');
            }
        }
        assert_eq!(
            inspect_deb(&deb[..], &ArchiveLimits::default()).unwrap().package,
            "one"
        );
        // Cut inside the data member.
        let e = inspect_deb(&deb[..deb.len() - 700], &ArchiveLimits::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("truncated"), "{e}");
    }

    #[test]
    fn an_xz_control_member_asking_for_a_huge_dictionary_is_refused() {
        use std::io::Write as _;
        let mut enc = xz2::write::XzEncoder::new(Vec::new(), 1);
        enc.write_all(&tar_of(&[("./control", CONTROL)])).unwrap();
        let xz = enc.finish().unwrap();
        let data = tar_of(&[("./usr/x", b"x")]);
        let deb = |xz: Vec<u8>| {
            deb_of(&[
                ("debian-binary", b"2.0\n".to_vec()),
                ("control.tar.xz", xz),
                ("data.tar", data.clone()),
            ])
        };
        assert!(inspect_deb(&deb(xz.clone())[..], &ArchiveLimits::default()).is_ok());
        // The block header after the 12-byte stream header: its size, its
        // flags, the LZMA2 filter (0x21) with one property byte, the
        // dictionary size, then its CRC32. 36 says 1 GiB.
        let mut big = xz;
        let head = 12;
        let size = (usize::from(big[head]) + 1) * 4;
        assert_eq!(&big[head + 2..head + 4], &[0x21, 0x01]);
        big[head + 4] = 36;
        let mut crc = flate2::Crc::new();
        crc.update(&big[head..head + size - 4]);
        big[head + size - 4..head + size].copy_from_slice(&crc.sum().to_le_bytes());
        let e = inspect_deb(&deb(big)[..], &ArchiveLimits::default()).unwrap_err();
        assert!(matches!(e, FormatError::TooLarge(_)), "{e}");
        assert!(e.to_string().contains("more than 96 MiB of memory"), "{e}");
    }

    #[test]
    fn a_control_member_unpacking_past_its_cap_is_refused() {
        // 65 MiB of zeros in a file beside `control`: the tar is read to
        // its end, so the cap is reached whatever the order.
        let junk = vec![0u8; (CONTROL_UNPACKED_MAX + (1 << 20)) as usize];
        let control = tar_of(&[("./junk", &junk), ("./control", CONTROL)]);
        drop(junk);
        let data = tar_of(&[("./usr/x", b"x")]);
        let deb = deb_of(&[
            ("debian-binary", b"2.0\n".to_vec()),
            ("control.tar", control),
            ("data.tar", data.clone()),
        ]);
        let e = inspect_deb(&deb[..], &ArchiveLimits::default()).unwrap_err();
        assert!(matches!(e, FormatError::TooLarge(_)), "{e}");
        assert!(e.to_string().contains("more than 64 MiB"), "{e}");
        // At the cap exactly is fine: only what is past it is refused.
        let fits = (CONTROL_UNPACKED_MAX as usize) - tar_of(&[("./junk", b""), ("./control", CONTROL)]).len();
        let junk = vec![0u8; fits];
        let control = tar_of(&[("./junk", &junk), ("./control", CONTROL)]);
        assert_eq!(control.len() as u64, CONTROL_UNPACKED_MAX);
        let deb = deb_of(&[
            ("debian-binary", b"2.0\n".to_vec()),
            ("control.tar", control),
            ("data.tar", data),
        ]);
        assert_eq!(
            inspect_deb(&deb[..], &ArchiveLimits::default()).unwrap().package,
            "one"
        );
    }

    #[test]
    fn debian_dates_are_rfc2822_utc() {
        assert_eq!(rfc2822_utc(0), "Thu, 01 Jan 1970 00:00:00 UTC");
        assert_eq!(rfc2822_utc(1_700_000_000_000), "Tue, 14 Nov 2023 22:13:20 UTC");
    }
}
