//! nuget feeds: `.nupkg` packages for .NET and Chocolatey, served over the
//! NuGet v3 API (Microsoft Learn, "NuGet Server API": service index,
//! PackagePublish, PackageBaseAddress, RegistrationsBaseUrl,
//! SearchQueryService, SearchAutocompleteService) and the NuGet v2 OData
//! feed (OData v2 Atom as NuGet 2.x and Chocolatey parse it).
//!
//! # Item layout
//!
//! | key | metadata | blobs |
//! | --- | --- | --- |
//! | `pkg/{id lowercase}/{normalized version lowercase}` | a [`PackageItem`]: the nuspec's fields, the id's display case, `listed`, size, SHA-512 | the `.nupkg` |
//!
//! Ids compare case-insensitively ([`id_key`]); versions are normalized as
//! NuGet does ([`NuGetVersion::normalized`]), so `1.0`, `1.0.0` and
//! `1.0.0+build` are one key. Unlisting rewrites the item with
//! `listed: false` (a new stamp, so it replicates); a hard delete is a
//! deleted item. Nothing rendered here is stored: indexes, search results
//! and feeds are derived from the items on every instance.
//!
//! # Endpoints (base `/nuget/{feed}`)
//!
//! | request | function |
//! | --- | --- |
//! | `GET v3/index.json` | [`render_service_index`] |
//! | `GET v3/registration{,-semver2}/{id}/index.json`, `…/{version}.json` | [`render_registration_index`], [`render_registration_leaf`] |
//! | `GET v3/flatcontainer/{id}/index.json` | [`render_versions`] |
//! | `GET v3/search`, `v3/autocomplete` | [`render_search`], [`render_autocomplete`] |
//! | `PUT v3/package`, `api/v2/package` | [`inspect_nupkg`], [`PackageItem`] |
//! | `GET /`, `$metadata` | [`render_service_document`], [`render_metadata`] |
//! | `GET Packages()`, `FindPackagesById()`, `Search()`, `GetUpdates()` | [`render_feed`] |

use std::cmp::Ordering;
use std::io::{Read, Seek};

use ferry_types::{Digest, ItemKey};
use quick_xml::events::Event;
use serde::{Deserialize, Serialize};

use crate::{ArchiveLimits, FormatError};

pub mod framework;
pub mod odata;

/// Longest package id (nuget.org's limit).
pub const MAX_ID_LEN: usize = 100;
/// Longest version string accepted.
pub const MAX_VERSION_LEN: usize = 256;
/// Versions per registration page; the index inlines its pages below
/// [`INLINE_LIMIT`] versions.
pub const PAGE_SIZE: usize = 64;
/// Below this many versions the registration index carries its pages.
pub const INLINE_LIMIT: usize = 128;

// ---------------------------------------------------------------------------
// Ids and versions

/// Validates a package id as NuGet does: 1–100 characters, ASCII letters,
/// digits and `_`, in runs separated by single `.` or `-`.
pub fn validate_id(id: &str) -> Result<(), FormatError> {
    let bad = |why: &str| Err(FormatError::invalid(format!("invalid package id `{id}`: {why}")));
    if id.is_empty() {
        return bad("must not be empty");
    }
    if id.len() > MAX_ID_LEN {
        return bad("longer than 100 characters");
    }
    let mut prev_sep = true;
    for c in id.chars() {
        if c == '.' || c == '-' {
            if prev_sep {
                return bad("`.` and `-` must separate letters, digits or `_`");
            }
            prev_sep = true;
        } else if c.is_ascii_alphanumeric() || c == '_' {
            prev_sep = false;
        } else {
            return bad(&format!("the character {c:?} is not allowed"));
        }
    }
    if prev_sep {
        return bad("must not end with `.` or `-`");
    }
    Ok(())
}

/// The form ids are compared and keyed in: lowercase.
pub fn id_key(id: &str) -> String {
    id.to_ascii_lowercase()
}

/// A NuGet version: SemVer 2.0 with an optional fourth number, as NuGet
/// parses it (`1.0` is `1.0.0`; leading zeros are dropped; build metadata
/// is kept for display only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NuGetVersion {
    pub numbers: [u64; 4],
    /// Dot-separated prerelease labels, display case; empty: a release.
    pub prerelease: Vec<String>,
    pub build: Option<String>,
}

impl NuGetVersion {
    /// Parses a version as NuGet accepts it in a nuspec or a URL.
    pub fn parse(s: &str) -> Result<Self, FormatError> {
        let bad = |why: &str| Err(FormatError::invalid(format!("invalid version `{s}`: {why}")));
        let s = s.trim();
        if s.is_empty() {
            return bad("empty");
        }
        if s.len() > MAX_VERSION_LEN {
            return bad("longer than 256 characters");
        }
        let (rest, build) = match s.split_once('+') {
            Some((r, b)) => {
                if b.is_empty() || !b.split('.').all(ident_ok) {
                    return bad("malformed build metadata");
                }
                (r, Some(b.to_owned()))
            }
            None => (s, None),
        };
        let (core, pre) = match rest.split_once('-') {
            Some((c, p)) => (c, Some(p)),
            None => (rest, None),
        };
        let parts: Vec<&str> = core.split('.').collect();
        if parts.len() < 2 || parts.len() > 4 {
            return bad("must have two to four numbers");
        }
        let mut numbers = [0u64; 4];
        for (i, p) in parts.iter().enumerate() {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return bad("the numbers must be digits");
            }
            numbers[i] = match p.trim_start_matches('0') {
                "" => 0,
                digits => match digits.parse() {
                    Ok(n) if n <= i32::MAX as u64 => n,
                    _ => return bad("a number is too large"),
                },
            };
        }
        let prerelease = match pre {
            None => Vec::new(),
            Some(p) => {
                let labels: Vec<String> = p.split('.').map(str::to_owned).collect();
                if p.is_empty() || !labels.iter().all(|l| ident_ok(l)) {
                    return bad("malformed prerelease label");
                }
                labels
            }
        };
        Ok(Self {
            numbers,
            prerelease,
            build,
        })
    }

    /// NuGet's normalized form: three numbers, the fourth when non-zero,
    /// `-prerelease`; no build metadata.
    pub fn normalized(&self) -> String {
        let [a, b, c, d] = self.numbers;
        let mut out = format!("{a}.{b}.{c}");
        if d != 0 {
            out.push_str(&format!(".{d}"));
        }
        if !self.prerelease.is_empty() {
            out.push('-');
            out.push_str(&self.prerelease.join("."));
        }
        out
    }

    /// The normalized form lowercased: item keys and v3 URLs.
    pub fn key(&self) -> String {
        self.normalized().to_ascii_lowercase()
    }

    pub fn is_prerelease(&self) -> bool {
        !self.prerelease.is_empty()
    }

    /// SemVer 2.0 only: dotted prerelease labels or build metadata, which
    /// SemVer 1 clients cannot read.
    pub fn is_semver2(&self) -> bool {
        self.prerelease.len() > 1 || self.build.is_some()
    }
}

fn ident_ok(l: &str) -> bool {
    !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl Ord for NuGetVersion {
    /// NuGet's order: the numbers, a release after its prereleases, labels
    /// compared as SemVer 2 does but case-insensitively.
    fn cmp(&self, other: &Self) -> Ordering {
        self.numbers.cmp(&other.numbers).then_with(|| {
            match (self.prerelease.is_empty(), other.prerelease.is_empty()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => {
                    for (a, b) in self.prerelease.iter().zip(&other.prerelease) {
                        let o = match (a.parse::<u64>(), b.parse::<u64>()) {
                            (Ok(x), Ok(y)) => x.cmp(&y),
                            (Ok(_), Err(_)) => Ordering::Less,
                            (Err(_), Ok(_)) => Ordering::Greater,
                            (Err(_), Err(_)) => a.to_ascii_lowercase().cmp(&b.to_ascii_lowercase()),
                        };
                        if o != Ordering::Equal {
                            return o;
                        }
                    }
                    self.prerelease.len().cmp(&other.prerelease.len())
                }
            }
        })
    }
}

impl PartialOrd for NuGetVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The key prefix of every version of a package: `pkg/{id lowercase}/`.
pub fn package_prefix(id: &str) -> String {
    format!("pkg/{}/", id_key(id))
}

/// The item key of one version (any id case, any version spelling).
pub fn version_key(id: &str, version: &str) -> Result<ItemKey, FormatError> {
    validate_id(id)?;
    let v = NuGetVersion::parse(version)?;
    ItemKey::new(format!("pkg/{}/{}", id_key(id), v.key())).map_err(|e| FormatError::invalid(e.to_string()))
}

/// `(id lowercase, version key)` of an item key.
pub fn parse_item_key(key: &ItemKey) -> Result<(&str, &str), FormatError> {
    let bad = || FormatError::invalid(format!("{key} is not a nuget item key (pkg/ID/VERSION)"));
    let rest = key.as_str().strip_prefix("pkg/").ok_or_else(bad)?;
    let (id, version) = rest.split_once('/').ok_or_else(bad)?;
    if version.contains('/') {
        return Err(bad());
    }
    Ok((id, version))
}

// ---------------------------------------------------------------------------
// The package item

/// One dependency of a dependency group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    pub id: String,
    /// The version range as written (`1.0`, `[1.0,2.0)`); empty: any.
    #[serde(default)]
    pub range: String,
}

/// Dependencies for one target framework (empty string: any framework).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DependencyGroup {
    #[serde(default)]
    pub target_framework: String,
    #[serde(default)]
    pub dependencies: Vec<Dependency>,
}

/// What a feed stores about one package version: the nuspec's fields, the
/// listed state and what is known of the `.nupkg` blob.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackageItem {
    /// The id in the case it was pushed with.
    pub id: String,
    /// The normalized version, display case.
    pub version: String,
    /// The version as the nuspec wrote it.
    #[serde(default)]
    pub original_version: String,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub authors: String,
    #[serde(default)]
    pub owners: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub summary: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// SPDX license expression (`<license type="expression">`).
    #[serde(default)]
    pub license: String,
    #[serde(default)]
    pub license_url: String,
    #[serde(default)]
    pub project_url: String,
    #[serde(default)]
    pub icon_url: String,
    #[serde(default)]
    pub release_notes: String,
    #[serde(default)]
    pub copyright: String,
    #[serde(default)]
    pub require_license_acceptance: bool,
    #[serde(default)]
    pub dependency_groups: Vec<DependencyGroup>,
    #[serde(default)]
    pub package_types: Vec<String>,
    #[serde(default)]
    pub min_client_version: String,
    pub listed: bool,
    /// When it was pushed (Unix ms).
    pub published: i64,
    pub size: u64,
    /// SHA-512 of the `.nupkg`, base64 (v2's `PackageHash`).
    pub sha512: String,
}

impl PackageItem {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    pub fn from_json(v: &serde_json::Value) -> Result<Self, FormatError> {
        Self::deserialize(v).map_err(|e| FormatError::invalid(format!("nuget item metadata: {e}")))
    }

    /// The parsed version (the stored one is normalized, so this parses).
    pub fn parsed_version(&self) -> NuGetVersion {
        NuGetVersion::parse(&self.version).unwrap_or(NuGetVersion {
            numbers: [0; 4],
            prerelease: Vec::new(),
            build: None,
        })
    }

    /// SemVer 2 packages: the version, or a dependency range, needs SemVer 2.
    pub fn is_semver2(&self) -> bool {
        NuGetVersion::parse(&self.original_version).is_ok_and(|v| v.is_semver2())
            || self.parsed_version().is_semver2()
    }

    /// The item key.
    pub fn key(&self) -> Result<ItemKey, FormatError> {
        version_key(&self.id, &self.version)
    }

    /// v2's `Dependencies` string: `id:range:framework|…`.
    pub fn v2_dependencies(&self) -> String {
        let mut parts = Vec::new();
        for g in &self.dependency_groups {
            if g.dependencies.is_empty() {
                parts.push(format!("::{}", g.target_framework));
            }
            for d in &g.dependencies {
                parts.push(format!("{}:{}:{}", d.id, d.range, g.target_framework));
            }
        }
        parts.join("|")
    }

    /// Whether `q` (lowercase) occurs in the id, title, description or tags.
    pub fn matches(&self, q: &str) -> bool {
        q.is_empty()
            || self.id.to_ascii_lowercase().contains(q)
            || self.title.to_lowercase().contains(q)
            || self.description.to_lowercase().contains(q)
            || self.tags.iter().any(|t| t.to_lowercase().contains(q))
    }
}

// ---------------------------------------------------------------------------
// Target frameworks

/// Whether a package may serve a project targeting any of `targets` (the
/// v2 `targetFramework` / `targetFrameworks` parameters), judged by its
/// dependency groups as NuGet judges frameworks ([`framework`]): a
/// package without groups, with an any-framework group, or with a group
/// or a target NuGet's rules do not cover here (Xamarin, Mono, …) may;
/// otherwise one of its groups must be compatible with one of the targets.
pub fn supports_any(item: &PackageItem, targets: &[String]) -> bool {
    use framework::Framework;
    let Some(targets) = targets
        .iter()
        .map(|t| Framework::parse(t))
        .collect::<Option<Vec<_>>>()
    else {
        return true;
    };
    if targets.is_empty() || item.dependency_groups.is_empty() {
        return true;
    }
    let Some(groups) = item
        .dependency_groups
        .iter()
        .map(|g| {
            if g.target_framework.trim().is_empty() {
                None
            } else {
                Framework::parse(&g.target_framework)
            }
        })
        .collect::<Option<Vec<_>>>()
    else {
        return true;
    };
    targets.iter().any(|t| groups.iter().any(|g| t.runs(g)))
}

/// Checks a replicated item: its key, its metadata and its one blob.
/// `Ok(None)` for a deletion.
pub fn validate_item(
    key: &ItemKey,
    live: Option<(&serde_json::Value, &[Digest])>,
) -> Result<Option<PackageItem>, FormatError> {
    let (id, version) = parse_item_key(key)?;
    let Some((meta, blobs)) = live else {
        return Ok(None);
    };
    let item =
        PackageItem::from_json(meta).map_err(|e| FormatError::invalid(format!("nuget item {key}: {e}")))?;
    crate::no_unknown_fields("nuget", key, meta, &item.to_json())?;
    validate_id(&item.id)?;
    let v = NuGetVersion::parse(&item.version)?;
    if id_key(&item.id) != id || v.key() != version {
        return Err(FormatError::invalid(format!(
            "nuget item {key}: its metadata describes {} {}",
            item.id, item.version
        )));
    }
    if blobs.len() != 1 {
        return Err(FormatError::invalid(format!(
            "nuget item {key}: must have exactly one blob"
        )));
    }
    Ok(Some(item))
}

/// Checks that a replicated item's metadata is what its `.nupkg` says:
/// every nuspec field as [`inspect_nupkg`] reads it from `spec`, the id up
/// to ASCII case (an instance shows an id in the case it first received),
/// and `sha512` (base64 SHA-512 of the stored `.nupkg`, v2's
/// `PackageHash`). What the server adds — listed state, publish time,
/// size — is not the package's to say. Errors: Invalid naming the first
/// field that differs.
pub fn check_item_describes(item: &PackageItem, spec: &Nuspec, sha512: &str) -> Result<(), FormatError> {
    let who = format!("{} {}", item.id, item.version);
    if !item.id.eq_ignore_ascii_case(&spec.item.id) {
        return Err(FormatError::invalid(format!(
            "nuget item {who}: its .nupkg is {} {}",
            spec.item.id, spec.item.version
        )));
    }
    if item.sha512 != sha512 {
        return Err(FormatError::invalid(format!(
            "nuget item {who}: its metadata gives the .nupkg's SHA-512 as {:?}, but it is {sha512:?}",
            item.sha512
        )));
    }
    let expected = PackageItem {
        id: item.id.clone(),
        listed: item.listed,
        published: item.published,
        size: item.size,
        sha512: item.sha512.clone(),
        ..spec.item.clone()
    };
    let (claimed, found) = (item.to_json(), expected.to_json());
    if let (Some(claimed), Some(found)) = (claimed.as_object(), found.as_object())
        && let Some((field, value)) = found.iter().find(|(k, v)| claimed.get(*k) != Some(*v))
    {
        return Err(FormatError::invalid(format!(
            "nuget item {who}: its metadata does not describe its .nupkg, whose nuspec gives {field} as {value}"
        )));
    }
    if *item != expected {
        return Err(FormatError::invalid(format!(
            "nuget item {who}: its metadata does not describe its .nupkg"
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Reading a .nupkg

/// What a `.nupkg` says of itself (its nuspec), before the server adds the
/// listed state, size and hash.
#[derive(Debug, Clone, PartialEq)]
pub struct Nuspec {
    pub id: String,
    pub version: NuGetVersion,
    pub item: PackageItem,
    /// The nuspec's bytes, as served by the flat container.
    pub raw: Vec<u8>,
}

/// Reads a `.nupkg` (a zip): at most `limits.max_entries` entries, no more
/// than `limits.max_unpacked_bytes` declared uncompressed, no entry whose
/// name escapes the package (absolute, `..`, drive letters), exactly one
/// `.nuspec` at the root (read up to `limits.max_metadata_bytes`). Errors:
/// Invalid for a file that is not a zip, a missing or second nuspec, bad
/// paths or a bad nuspec; TooLarge for size and entry-count bombs.
pub fn inspect_nupkg<R: Read + Seek>(reader: R, limits: &ArchiveLimits) -> Result<Nuspec, FormatError> {
    // The zip reader keeps one entry per name (the last): a second entry
    // of the same name, a second nuspec say, would be invisible to every
    // check below yet unpacked by clients. Such a package is refused while
    // its central directory is walked.
    // Names are compared without case: NuGet unpacks on Windows too, where
    // `lib/a.dll` and `LIB/A.DLL` are one file and the second overwrites
    // the first.
    let mut seen = std::collections::HashSet::new();
    let mut zip = crate::zipdir::open(reader, "the package", limits, |name| {
        if seen.insert(String::from_utf8_lossy(name).to_lowercase()) {
            return Ok(());
        }
        Err(FormatError::invalid(format!(
            "the package holds two entries named {:?} (compared without case); a .nupkg names each entry once",
            String::from_utf8_lossy(name)
        )))
    })?;
    drop(seen);
    let mut total: u64 = 0;
    let mut nuspec: Option<usize> = None;
    for i in 0..zip.len() {
        let entry = zip
            .by_index_raw(i)
            .map_err(|e| FormatError::invalid(format!("the package's zip entry {i} is unreadable: {e}")))?;
        let name = entry.name().to_owned();
        check_entry_name(&name)?;
        total = total.saturating_add(entry.size());
        if total > limits.max_unpacked_bytes {
            return Err(FormatError::too_large(format!(
                "the package expands to more than {} bytes",
                limits.max_unpacked_bytes
            )));
        }
        if !name.contains('/') && name.to_ascii_lowercase().ends_with(".nuspec") {
            if nuspec.is_some() {
                return Err(FormatError::invalid(
                    "the package has more than one .nuspec at its root",
                ));
            }
            nuspec = Some(i);
        }
    }
    let index = nuspec.ok_or_else(|| FormatError::invalid("the package has no .nuspec at its root"))?;
    crate::inflate_every_entry(&mut zip, "the package")?;
    let entry = zip
        .by_index(index)
        .map_err(|e| FormatError::invalid(format!("the package's .nuspec is unreadable: {e}")))?;
    let mut raw = Vec::new();
    entry
        .take(limits.max_metadata_bytes + 1)
        .read_to_end(&mut raw)
        .map_err(|e| FormatError::invalid(format!("the package's .nuspec is unreadable: {e}")))?;
    if raw.len() as u64 > limits.max_metadata_bytes {
        return Err(FormatError::too_large(format!(
            "the package's .nuspec is larger than {} bytes",
            limits.max_metadata_bytes
        )));
    }
    parse_nuspec(raw)
}

fn check_entry_name(name: &str) -> Result<(), FormatError> {
    let bad = || {
        Err(FormatError::invalid(format!(
            "the package has an entry with an unsafe path: {name:?}"
        )))
    };
    if name.is_empty() || name.starts_with('/') || name.starts_with('\\') || name.contains('\0') {
        return bad();
    }
    if name.len() > 1 && name.as_bytes()[1] == b':' {
        return bad();
    }
    if name.split(['/', '\\']).any(|seg| seg == "..") {
        return bad();
    }
    Ok(())
}

/// Parses a nuspec document (`<package><metadata>…`): id, version, the
/// descriptive fields, dependency groups (and a flat `<dependencies>`
/// list, which is the any-framework group) and package types.
pub fn parse_nuspec(raw: Vec<u8>) -> Result<Nuspec, FormatError> {
    let text = std::str::from_utf8(raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&raw))
        .map_err(|_| FormatError::invalid("the .nuspec is not UTF-8"))?
        .to_owned();
    let bad = |e: &dyn std::fmt::Display| FormatError::invalid(format!("the .nuspec is not valid XML: {e}"));
    let mut reader = quick_xml::Reader::from_str(&text);
    let mut path: Vec<String> = Vec::new();
    let mut item = PackageItem {
        id: String::new(),
        version: String::new(),
        original_version: String::new(),
        title: String::new(),
        authors: String::new(),
        owners: String::new(),
        description: String::new(),
        summary: String::new(),
        tags: Vec::new(),
        license: String::new(),
        license_url: String::new(),
        project_url: String::new(),
        icon_url: String::new(),
        release_notes: String::new(),
        copyright: String::new(),
        require_license_acceptance: false,
        dependency_groups: Vec::new(),
        package_types: Vec::new(),
        min_client_version: String::new(),
        listed: true,
        published: 0,
        size: 0,
        sha512: String::new(),
    };
    let mut license_type = String::new();
    let mut text_buf = String::new();
    // Elements of <package> and of its <metadata> seen so far: the nuspec
    // schema allows each once, and NuGet reads the first of a repeated one
    // where a later one would be read here.
    let mut seen: std::collections::HashSet<(usize, String)> = std::collections::HashSet::new();
    let mut roots = 0;
    loop {
        let ev = reader.read_event().map_err(|e| bad(&e))?;
        match ev {
            Event::Decl(ref d) => {
                if let Some(enc) = d.encoding() {
                    let enc = enc.map_err(|e| bad(&e))?;
                    let enc = String::from_utf8_lossy(&enc).to_ascii_lowercase();
                    if !matches!(enc.as_str(), "utf-8" | "utf8" | "us-ascii" | "ascii") {
                        return Err(FormatError::invalid(format!(
                            "the .nuspec declares encoding {enc:?}; a .nuspec must be UTF-8"
                        )));
                    }
                }
            }
            Event::Start(ref e) | Event::Empty(ref e) => {
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                if path.is_empty() {
                    roots += 1;
                    if roots > 1 {
                        return Err(FormatError::invalid(format!(
                            "the .nuspec has a second root element <{name}>"
                        )));
                    }
                }
                let in_package = path.len() == 1 && path[0] == "package";
                let in_metadata = path.len() == 2 && path[0] == "package" && path[1] == "metadata";
                if (in_package || in_metadata) && !seen.insert((path.len(), name.clone())) {
                    let parent = if in_package { "package" } else { "metadata" };
                    return Err(FormatError::invalid(format!(
                        "the .nuspec has <{name}> twice in <{parent}> (NuGet reads the first; each may appear once)"
                    )));
                }
                let mut attrs = std::collections::HashMap::new();
                for a in e.attributes() {
                    let a = a.map_err(|e| bad(&e))?;
                    let k = String::from_utf8_lossy(a.key.local_name().as_ref()).into_owned();
                    let v = a.unescape_value().map_err(|e| bad(&e))?.into_owned();
                    check_xml_chars(&v)?;
                    attrs.insert(k, v);
                }
                let parent = path.last().map(String::as_str);
                match (parent, name.as_str()) {
                    (Some("metadata"), "metadata") => {}
                    (Some("metadata"), "license") => {
                        license_type = attrs.get("type").cloned().unwrap_or_default();
                    }
                    (Some("dependencies"), "group") => {
                        let target_framework = attrs.get("targetFramework").cloned().unwrap_or_default();
                        validate_framework_name(&target_framework)?;
                        item.dependency_groups.push(DependencyGroup {
                            target_framework,
                            dependencies: Vec::new(),
                        })
                    }
                    (Some("dependencies" | "group"), "dependency") => {
                        let dep = Dependency {
                            id: attrs.get("id").cloned().unwrap_or_default(),
                            range: attrs.get("version").cloned().unwrap_or_default(),
                        };
                        validate_id(&dep.id)?;
                        validate_range(&dep.id, &dep.range)?;
                        if parent == Some("dependencies") {
                            match item
                                .dependency_groups
                                .iter_mut()
                                .find(|g| g.target_framework.is_empty())
                            {
                                Some(g) => g.dependencies.push(dep),
                                None => item.dependency_groups.push(DependencyGroup {
                                    target_framework: String::new(),
                                    dependencies: vec![dep],
                                }),
                            }
                        } else if let Some(g) = item.dependency_groups.last_mut() {
                            g.dependencies.push(dep);
                        }
                    }
                    (Some("packageTypes"), "packageType") => {
                        if let Some(n) = attrs.get("name") {
                            item.package_types.push(n.clone());
                        }
                    }
                    (Some("package"), "metadata") => {
                        if let Some(v) = attrs.get("minClientVersion") {
                            item.min_client_version = v.clone();
                        }
                    }
                    _ => {}
                }
                text_buf.clear();
                if matches!(ev, Event::Start(_)) {
                    path.push(name);
                }
            }
            Event::Text(t) => {
                let t = t.unescape().map_err(|e| bad(&e))?;
                check_xml_chars(&t)?;
                text_buf.push_str(&t);
            }
            Event::CData(c) => text_buf.push_str(&String::from_utf8_lossy(&c.into_inner())),
            Event::End(_) => {
                let name = path.pop().unwrap_or_default();
                if path.len() == 2 && path[0] == "package" && path[1] == "metadata" {
                    let v = text_buf.trim().to_owned();
                    match name.as_str() {
                        "id" => item.id = v,
                        "version" => item.original_version = v,
                        "title" => item.title = v,
                        "authors" => item.authors = v,
                        "owners" => item.owners = v,
                        "description" => item.description = v,
                        "summary" => item.summary = v,
                        "tags" => {
                            item.tags = v
                                .split([' ', ',', ';'])
                                .filter(|t| !t.is_empty())
                                .map(str::to_owned)
                                .collect()
                        }
                        "license" if license_type == "expression" => item.license = v,
                        "licenseUrl" => item.license_url = v,
                        "projectUrl" => item.project_url = v,
                        "iconUrl" => item.icon_url = v,
                        "releaseNotes" => item.release_notes = v,
                        "copyright" => item.copyright = v,
                        "requireLicenseAcceptance" => {
                            item.require_license_acceptance = v.eq_ignore_ascii_case("true")
                        }
                        _ => {}
                    }
                }
                text_buf.clear();
            }
            Event::Eof => {
                if let Some(open) = path.last() {
                    return Err(bad(&format!("it ends before <{open}> is closed")));
                }
                break;
            }
            _ => {}
        }
    }
    if item.id.is_empty() {
        return Err(FormatError::invalid("the .nuspec has no <id>"));
    }
    validate_id(&item.id)?;
    if item.original_version.is_empty() {
        return Err(FormatError::invalid("the .nuspec has no <version>"));
    }
    let version = NuGetVersion::parse(&item.original_version)?;
    item.version = version.normalized();
    if item.description.is_empty() {
        return Err(FormatError::invalid("the .nuspec has no <description>"));
    }
    Ok(Nuspec {
        id: item.id.clone(),
        version,
        item,
        raw,
    })
}

/// A version range as NuGet writes one for a constraint (Microsoft Learn,
/// "Package versioning", version ranges): a minimum version (`1.0`: 1.0
/// or later), an exact version `[1.0]`, or an interval `[1.0,2.0)`,
/// `(,2.0]`, `(1.0,)`. A lone major number reads as `N.0`. Floating
/// versions (`1.0.*`) choose a version to install, not a set to keep, and
/// are not ranges here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRange {
    /// The lower bound and whether it is included.
    pub min: Option<(NuGetVersion, bool)>,
    /// The upper bound and whether it is included.
    pub max: Option<(NuGetVersion, bool)>,
}

impl VersionRange {
    /// Parses `text` (see [`VersionRange`]). Errors: `Invalid` saying what
    /// is wrong.
    pub fn parse(text: &str) -> Result<Self, FormatError> {
        let bad = |why: &str| FormatError::invalid(format!("`{text}` is not a version range: {why}"));
        let version = |v: &str| -> Result<NuGetVersion, FormatError> {
            let v = v.trim();
            if v.contains('*') {
                return Err(bad("a floating version chooses one version, it is not a range"));
            }
            NuGetVersion::parse(v).or_else(|e| {
                let at = v.find(['-', '+']).unwrap_or(v.len());
                let (core, tail) = v.split_at(at);
                if core.contains('.') {
                    return Err(e);
                }
                NuGetVersion::parse(&format!("{core}.0{tail}")).map_err(|_| e)
            })
        };
        let r = text.trim();
        if r.is_empty() {
            return Err(bad("it is empty"));
        }
        let (open, close) = (r.as_bytes()[0], r.as_bytes()[r.len() - 1]);
        if !matches!(open, b'[' | b'(') {
            return Ok(VersionRange {
                min: Some((version(r)?, true)),
                max: None,
            });
        }
        if r.len() < 2 || !matches!(close, b']' | b')') {
            return Err(bad("an interval ends with `]` or `)`"));
        }
        let inner = &r[1..r.len() - 1];
        let Some((lo, hi)) = inner.split_once(',') else {
            if open == b'[' && close == b']' {
                let v = version(inner)?;
                return Ok(VersionRange {
                    min: Some((v.clone(), true)),
                    max: Some((v, true)),
                });
            }
            return Err(bad("an exact version is written `[1.0]`"));
        };
        let (lo, hi) = (lo.trim(), hi.trim());
        if lo.is_empty() && hi.is_empty() {
            return Err(bad("an interval names at least one version"));
        }
        let min = (!lo.is_empty()).then(|| version(lo)).transpose()?;
        let max = (!hi.is_empty()).then(|| version(hi)).transpose()?;
        if let (Some(a), Some(b)) = (&min, &max)
            && (a > b || (a.cmp(b).is_eq() && !(open == b'[' && close == b']')))
        {
            return Err(bad("it holds no version"));
        }
        Ok(VersionRange {
            min: min.map(|v| (v, open == b'[')),
            max: max.map(|v| (v, close == b']')),
        })
    }

    /// Whether `v` is in the range.
    pub fn contains(&self, v: &NuGetVersion) -> bool {
        let above = match &self.min {
            None => true,
            Some((m, true)) => v >= m,
            Some((m, false)) => v > m,
        };
        let below = match &self.max {
            None => true,
            Some((m, true)) => v <= m,
            Some((m, false)) => v < m,
        };
        above && below
    }
}

/// Checks a dependency's version range as NuGet writes one (Microsoft
/// Learn, "Package versioning", version ranges): empty (any), a minimum
/// version (`1.0`, floating `1.0.*`), or an interval `[1.0]`, `[1.0,2.0)`,
/// `(,2.0]`, `(1.0,)`. Anything else is refused, as nuget.org refuses it:
/// v2 feeds carry dependencies as `id:range:framework|…`, so a range with
/// a `:` or `|` in it would show clients dependencies the package does
/// not have.
fn validate_range(id: &str, range: &str) -> Result<(), FormatError> {
    let bad = |why: &str| {
        Err(FormatError::invalid(format!(
            "the dependency on {id} has an invalid version range `{range}`: {why}"
        )))
    };
    let version = |v: &str| -> bool {
        let v = v.trim();
        if let Some(stem) = v.strip_suffix('*') {
            // Floating: `*`, `1.*`, `1.0.*`, `1.0.0-*`, `1.0.0-beta*`.
            return !stem.contains('*')
                && stem
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
        }
        // NuGet reads a lone major number (`2`, `2-beta`) as `2.0`.
        let at = v.find(['-', '+']).unwrap_or(v.len());
        let (core, tail) = v.split_at(at);
        NuGetVersion::parse(v).is_ok()
            || (!core.contains('.') && NuGetVersion::parse(&format!("{core}.0{tail}")).is_ok())
    };
    let r = range.trim();
    if r.is_empty() {
        return Ok(());
    }
    let (open, close) = (r.as_bytes()[0], r.as_bytes()[r.len() - 1]);
    if !matches!(open, b'[' | b'(') {
        return if version(r) { Ok(()) } else { bad("not a version") };
    }
    if r.len() < 2 || !matches!(close, b']' | b')') {
        return bad("an interval ends with `]` or `)`");
    }
    let inner = &r[1..r.len() - 1];
    match inner.split_once(',') {
        None if open == b'[' && close == b']' && version(inner) => Ok(()),
        None => bad("an exact version is written `[1.0]`"),
        Some((lo, hi)) => {
            let (lo, hi) = (lo.trim(), hi.trim());
            if lo.is_empty() && hi.is_empty() {
                return bad("an interval names at least one version");
            }
            if (!lo.is_empty() && !version(lo)) || (!hi.is_empty() && !version(hi)) {
                return bad("not a version");
            }
            // Two fixed ends: the lower may not pass the upper, and equal
            // ends hold a version only when both are included (`[1.0,1.0]`).
            if !lo.contains('*') && !hi.contains('*') && VersionRange::parse(r).is_err() {
                return bad("it holds no version (its lower end is above its upper end)");
            }
            Ok(())
        }
    }
}

/// Checks a dependency group's `targetFramework` as NuGet could read one
/// (`net45`, `netstandard2.0`, `.NETFramework,Version=v4.5`,
/// `portable-net45+win8`, `net6.0-windows10.0.19041`, empty for any):
/// ASCII letters, digits and `.,=+-_ ` only. Frameworks this server does
/// not judge are kept (see [`framework`]), but a `:` or `|` would corrupt
/// v2's `Dependencies` (`id:range:framework|…`) and is refused.
fn validate_framework_name(tf: &str) -> Result<(), FormatError> {
    if tf.len() > 256
        || !tf
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".,=+-_ ".contains(&b))
    {
        return Err(FormatError::invalid(format!(
            "a dependency group has an invalid targetFramework `{tf}`"
        )));
    }
    Ok(())
}

/// Whether `file_name` is `{id}.{version}{ext}` for this id and version as
/// NuGet compares them: the id in any case, the version in any spelling
/// that normalizes to the same (`1.0` and `01.0.0` are `1.0.0`; build
/// metadata is ignored), `ext` (lowercase, with its dot) in any case.
pub fn names_package(file_name: &str, id: &str, version: &NuGetVersion, ext: &str) -> bool {
    let lower = file_name.to_ascii_lowercase();
    lower
        .strip_suffix(ext)
        .and_then(|stem| stem.strip_prefix(&id_key(id)))
        .and_then(|rest| rest.strip_prefix('.'))
        .and_then(|v| NuGetVersion::parse(v).ok())
        .is_some_and(|v| v.key() == version.key())
}

/// Checks the file name a client sent with a push against the package:
/// `package.nupkg` (what nuget.exe and dotnet send) or any name not ending
/// in `.nupkg` passes; otherwise it must name the package
/// ([`names_package`]: the id in any case, the version as NuGet
/// normalizes it).
pub fn check_file_name(file_name: &str, spec: &Nuspec) -> Result<(), FormatError> {
    let lower = file_name.to_ascii_lowercase();
    let base = lower.rsplit(['/', '\\']).next().unwrap_or(&lower);
    if !base.ends_with(".nupkg") || base == "package.nupkg" {
        return Ok(());
    }
    if names_package(base, &spec.id, &spec.version, ".nupkg") {
        Ok(())
    } else {
        Err(FormatError::invalid(format!(
            "the file name {file_name:?} does not match the package inside ({} {})",
            spec.id, spec.item.original_version
        )))
    }
}

/// A nuspec rendered from the stored metadata (what the flat container
/// serves as `{id}.nuspec`): the fields NuGet reads to resolve a package.
pub fn render_nuspec(item: &PackageItem) -> String {
    let mut m = String::new();
    let mut field = |name: &str, v: &str| {
        if !v.is_empty() {
            m.push_str(&format!("    <{name}>{}</{name}>\n", xml_escape(v)));
        }
    };
    field("id", &item.id);
    field("version", &item.version);
    field("title", &item.title);
    field("authors", &item.authors);
    field("owners", &item.owners);
    field("description", &item.description);
    field("summary", &item.summary);
    field("releaseNotes", &item.release_notes);
    field("copyright", &item.copyright);
    field("tags", &item.tags.join(" "));
    field("projectUrl", &item.project_url);
    field("iconUrl", &item.icon_url);
    field("licenseUrl", &item.license_url);
    if !item.license.is_empty() {
        m.push_str(&format!(
            "    <license type=\"expression\">{}</license>\n",
            xml_escape(&item.license)
        ));
    }
    if !item.dependency_groups.is_empty() {
        m.push_str("    <dependencies>\n");
        for g in &item.dependency_groups {
            m.push_str(&format!(
                "      <group targetFramework=\"{}\">\n",
                xml_escape(&g.target_framework)
            ));
            for d in &g.dependencies {
                m.push_str(&format!(
                    "        <dependency id=\"{}\" version=\"{}\" />\n",
                    xml_escape(&d.id),
                    xml_escape(&d.range)
                ));
            }
            m.push_str("      </group>\n");
        }
        m.push_str("    </dependencies>\n");
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<package xmlns=\"http://schemas.microsoft.com/packaging/2013/05/nuspec.xsd\">\n  <metadata>\n{m}  </metadata>\n</package>\n"
    )
}

// ---------------------------------------------------------------------------
// v3 JSON

/// The v3 service index: every resource under `base` (`…/nuget/FEED`).
pub fn render_service_index(base: &str) -> serde_json::Value {
    let mut resources = Vec::new();
    let mut add = |id: String, types: &[&str], comment: &str| {
        for t in types {
            resources.push(serde_json::json!({ "@id": id, "@type": t, "comment": comment }));
        }
    };
    add(
        format!("{base}/v3/package"),
        &["PackagePublish/2.0.0"],
        "push, unlist (DELETE), relist (POST)",
    );
    add(
        format!("{base}/v3/flatcontainer/"),
        &["PackageBaseAddress/3.0.0"],
        "versions lists, .nupkg and .nuspec downloads",
    );
    add(
        format!("{base}/v3/registration/"),
        &[
            "RegistrationsBaseUrl",
            "RegistrationsBaseUrl/3.0.0-beta",
            "RegistrationsBaseUrl/3.0.0-rc",
        ],
        "package metadata, SemVer 1 versions only",
    );
    add(
        format!("{base}/v3/registration-semver2/"),
        &[
            "RegistrationsBaseUrl/3.4.0",
            "RegistrationsBaseUrl/3.6.0",
            "RegistrationsBaseUrl/Versioned",
        ],
        "package metadata, SemVer 2 versions included",
    );
    add(
        format!("{base}/v3/search"),
        &[
            "SearchQueryService",
            "SearchQueryService/3.0.0-beta",
            "SearchQueryService/3.0.0-rc",
            "SearchQueryService/3.5.0",
        ],
        "search",
    );
    add(
        format!("{base}/v3/autocomplete"),
        &[
            "SearchAutocompleteService",
            "SearchAutocompleteService/3.0.0-beta",
            "SearchAutocompleteService/3.0.0-rc",
            "SearchAutocompleteService/3.5.0",
        ],
        "autocomplete",
    );
    add(
        format!("{base}/"),
        &["LegacyGallery", "LegacyGallery/2.0.0"],
        "the NuGet v2 (OData) feed",
    );
    serde_json::json!({ "version": "3.0.0", "resources": resources })
}

/// Where a package's files are (the flat container, `PackageBaseAddress`).
pub fn content_url(base: &str, item: &PackageItem) -> String {
    let id = id_key(&item.id);
    let v = item.version.to_ascii_lowercase();
    format!("{base}/v3/flatcontainer/{id}/{v}/{id}.{v}.nupkg")
}

/// The versions list of the flat container: every version, listed or not,
/// normalized and lowercase, ascending.
pub fn render_versions(items: &[PackageItem]) -> serde_json::Value {
    let mut vs: Vec<NuGetVersion> = items.iter().map(PackageItem::parsed_version).collect();
    vs.sort();
    serde_json::json!({ "versions": vs.iter().map(NuGetVersion::key).collect::<Vec<_>>() })
}

fn published(item: &PackageItem) -> String {
    // Unlisted packages carry 1900 as their publish date, as nuget.org's do.
    if item.listed {
        ferry_types::rfc3339_millis(item.published)
    } else {
        "1900-01-01T00:00:00.000Z".to_owned()
    }
}

fn catalog_entry(reg: &str, base: &str, item: &PackageItem) -> serde_json::Value {
    let id = id_key(&item.id);
    let v = item.version.to_ascii_lowercase();
    serde_json::json!({
        "@id": format!("{reg}{id}/{v}.json"),
        "@type": "PackageDetails",
        "id": item.id,
        "version": item.version,
        "title": item.title,
        "authors": item.authors,
        "description": item.description,
        "summary": item.summary,
        "tags": item.tags,
        "licenseExpression": item.license,
        "licenseUrl": item.license_url,
        "projectUrl": item.project_url,
        "iconUrl": item.icon_url,
        "releaseNotes": item.release_notes,
        "requireLicenseAcceptance": item.require_license_acceptance,
        "listed": item.listed,
        "published": published(item),
        "packageContent": content_url(base, item),
        "packageTypes": item.package_types.iter().map(|n| serde_json::json!({"name": n})).collect::<Vec<_>>(),
        "dependencyGroups": item.dependency_groups.iter().map(|g| serde_json::json!({
            "@type": "PackageDependencyGroup",
            "targetFramework": g.target_framework,
            "dependencies": g.dependencies.iter().map(|d| serde_json::json!({
                "@type": "PackageDependency",
                "id": d.id,
                "range": if d.range.is_empty() { "(, )".to_owned() } else { d.range.clone() },
                "registration": format!("{reg}{}/index.json", id_key(&d.id)),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// The registration of one package. `reg` is the registration base URL
/// (ending in `/`), `base` the feed's. `items` are the versions this
/// variant shows, in any order. Pages hold [`PAGE_SIZE`] versions; below
/// [`INLINE_LIMIT`] versions they are inlined, otherwise only linked.
pub fn render_registration_index(reg: &str, base: &str, items: &[PackageItem]) -> serde_json::Value {
    let mut sorted: Vec<&PackageItem> = items.iter().collect();
    sorted.sort_by_key(|i| i.parsed_version());
    let id = sorted.first().map(|i| id_key(&i.id)).unwrap_or_default();
    let index = format!("{reg}{id}/index.json");
    let inline = sorted.len() < INLINE_LIMIT;
    let pages: Vec<serde_json::Value> = sorted
        .chunks(PAGE_SIZE)
        .map(|chunk| {
            let lower = chunk
                .first()
                .map(|i| i.version.to_ascii_lowercase())
                .unwrap_or_default();
            let upper = chunk
                .last()
                .map(|i| i.version.to_ascii_lowercase())
                .unwrap_or_default();
            let mut page = serde_json::json!({
                "@id": format!("{reg}{id}/page/{lower}/{upper}.json"),
                "@type": "catalog:CatalogPage",
                "count": chunk.len(),
                "lower": lower,
                "upper": upper,
                "parent": index,
            });
            if inline {
                page["items"] =
                    serde_json::Value::Array(chunk.iter().map(|i| leaf_in_page(reg, base, i)).collect());
            }
            page
        })
        .collect();
    serde_json::json!({
        "@id": index,
        "@type": ["catalog:CatalogRoot", "PackageRegistration", "catalog:Permalink"],
        "count": pages.len(),
        "items": pages,
    })
}

/// One registration page (`…/page/{lower}/{upper}.json`): the versions in
/// that range, with their leaves. None when no page has those bounds.
pub fn render_registration_page(
    reg: &str,
    base: &str,
    items: &[PackageItem],
    lower: &str,
    upper: &str,
) -> Option<serde_json::Value> {
    let mut sorted: Vec<&PackageItem> = items.iter().collect();
    sorted.sort_by_key(|i| i.parsed_version());
    let chunk = sorted.chunks(PAGE_SIZE).find(|c| {
        c.first().is_some_and(|i| i.version.eq_ignore_ascii_case(lower))
            && c.last().is_some_and(|i| i.version.eq_ignore_ascii_case(upper))
    })?;
    let id = id_key(&chunk[0].id);
    Some(serde_json::json!({
        "@id": format!("{reg}{id}/page/{lower}/{upper}.json"),
        "@type": "catalog:CatalogPage",
        "count": chunk.len(),
        "lower": lower,
        "upper": upper,
        "parent": format!("{reg}{id}/index.json"),
        "items": chunk.iter().map(|i| leaf_in_page(reg, base, i)).collect::<Vec<_>>(),
    }))
}

fn leaf_in_page(reg: &str, base: &str, item: &PackageItem) -> serde_json::Value {
    let id = id_key(&item.id);
    let v = item.version.to_ascii_lowercase();
    serde_json::json!({
        "@id": format!("{reg}{id}/{v}.json"),
        "@type": "Package",
        "catalogEntry": catalog_entry(reg, base, item),
        "packageContent": content_url(base, item),
        "registration": format!("{reg}{id}/index.json"),
    })
}

/// A registration leaf (`…/{id}/{version}.json`).
pub fn render_registration_leaf(reg: &str, base: &str, item: &PackageItem) -> serde_json::Value {
    let id = id_key(&item.id);
    let v = item.version.to_ascii_lowercase();
    serde_json::json!({
        "@id": format!("{reg}{id}/{v}.json"),
        "@type": ["Package", "http://schema.nuget.org/catalog#Permalink"],
        "catalogEntry": format!("{reg}{id}/{v}.json"),
        "listed": item.listed,
        "published": published(item),
        "packageContent": content_url(base, item),
        "registration": format!("{reg}{id}/index.json"),
    })
}

/// One search result: a package with its shown versions (ascending, the
/// last is `version`), listed versions only.
pub fn render_search_result(
    reg: &str,
    base: &str,
    versions: &[(&PackageItem, u64)],
    total_downloads: u64,
) -> serde_json::Value {
    let Some(&(latest, _)) = versions.last() else {
        return serde_json::Value::Null;
    };
    let id = id_key(&latest.id);
    serde_json::json!({
        "@id": format!("{reg}{id}/index.json"),
        "@type": "Package",
        "registration": format!("{reg}{id}/index.json"),
        "id": latest.id,
        "version": latest.version,
        "title": latest.title,
        "description": latest.description,
        "summary": latest.summary,
        "tags": latest.tags,
        "authors": latest.authors.split(',').map(str::trim).filter(|a| !a.is_empty()).collect::<Vec<_>>(),
        "owners": latest.owners.split(',').map(str::trim).filter(|a| !a.is_empty()).collect::<Vec<_>>(),
        "iconUrl": latest.icon_url,
        "licenseUrl": latest.license_url,
        "projectUrl": latest.project_url,
        "totalDownloads": total_downloads,
        "verified": false,
        "packageTypes": if latest.package_types.is_empty() {
            vec![serde_json::json!({"name": "Dependency"})]
        } else {
            latest.package_types.iter().map(|n| serde_json::json!({"name": n})).collect()
        },
        "versions": versions.iter().map(|(i, downloads)| serde_json::json!({
            "version": i.version,
            "downloads": downloads,
            "@id": format!("{reg}{id}/{}.json", i.version.to_ascii_lowercase()),
        })).collect::<Vec<_>>(),
        "packageContent": content_url(base, latest),
    })
}

/// The search response: `{"totalHits", "data"}`.
pub fn render_search(total: usize, data: Vec<serde_json::Value>) -> serde_json::Value {
    serde_json::json!({ "totalHits": total, "data": data })
}

/// The autocomplete response: ids, or the versions of one id.
pub fn render_autocomplete(total: usize, data: Vec<String>) -> serde_json::Value {
    serde_json::json!({ "totalHits": total, "data": data })
}

// ---------------------------------------------------------------------------
// v2 Atom/OData XML

/// Whether XML 1.0 allows `c` in a document (§2.2 `Char`: tab, newline,
/// carriage return, and everything from U+0020 but U+FFFE and U+FFFF).
pub fn xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}')
}

/// XML text escaping (`&`, `<`, `>`, `"`, `'`), leaving out characters XML
/// 1.0 does not allow at all (one such character in a description would
/// make the whole feed unreadable to every client).
pub fn xml_escape(s: &str) -> String {
    if s.chars().all(xml_char) {
        quick_xml::escape::escape(s).into_owned()
    } else {
        let kept: String = s.chars().filter(|c| xml_char(*c)).collect();
        quick_xml::escape::escape(&kept).into_owned()
    }
}

/// Refuses text holding characters XML 1.0 does not allow (written raw or
/// as character references such as `&#x1;`).
fn check_xml_chars(text: &str) -> Result<(), FormatError> {
    match text.chars().find(|c| !xml_char(*c)) {
        Some(c) => Err(FormatError::invalid(format!(
            "the .nuspec holds the character U+{:04X}, which XML does not allow",
            u32::from(c)
        ))),
        None => Ok(()),
    }
}

/// The OData service document at the feed root.
pub fn render_service_document(base: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\" standalone=\"yes\"?>\n\
<service xml:base=\"{b}/\" xmlns=\"http://www.w3.org/2007/app\" xmlns:atom=\"http://www.w3.org/2005/Atom\">\
<workspace><atom:title>Default</atom:title><collection href=\"Packages\"><atom:title>Packages</atom:title></collection></workspace></service>\n",
        b = xml_escape(base)
    )
}

const V2_PROPS: &[(&str, &str)] = &[
    ("Id", "Edm.String"),
    ("Version", "Edm.String"),
    ("NormalizedVersion", "Edm.String"),
    ("Authors", "Edm.String"),
    ("Copyright", "Edm.String"),
    ("Created", "Edm.DateTime"),
    ("Dependencies", "Edm.String"),
    ("Description", "Edm.String"),
    ("DownloadCount", "Edm.Int32"),
    ("GalleryDetailsUrl", "Edm.String"),
    ("IconUrl", "Edm.String"),
    ("IsLatestVersion", "Edm.Boolean"),
    ("IsAbsoluteLatestVersion", "Edm.Boolean"),
    ("IsPrerelease", "Edm.Boolean"),
    ("Language", "Edm.String"),
    ("LastUpdated", "Edm.DateTime"),
    ("Published", "Edm.DateTime"),
    ("PackageHash", "Edm.String"),
    ("PackageHashAlgorithm", "Edm.String"),
    ("PackageSize", "Edm.Int64"),
    ("ProjectUrl", "Edm.String"),
    ("ReportAbuseUrl", "Edm.String"),
    ("ReleaseNotes", "Edm.String"),
    ("RequireLicenseAcceptance", "Edm.Boolean"),
    ("Summary", "Edm.String"),
    ("Tags", "Edm.String"),
    ("Title", "Edm.String"),
    ("VersionDownloadCount", "Edm.Int32"),
    ("MinClientVersion", "Edm.String"),
    ("LastEdited", "Edm.DateTime"),
    ("LicenseUrl", "Edm.String"),
    ("LicenseNames", "Edm.String"),
    ("LicenseReportUrl", "Edm.String"),
];

/// The `$metadata` EDMX: the `V2FeedPackage` entity and the service
/// operations NuGet 2.x looks for before using them (`Search`,
/// `FindPackagesById`, `GetUpdates`).
pub fn render_metadata() -> String {
    let mut props = String::new();
    for (name, ty) in V2_PROPS {
        let nullable = if matches!(*name, "Id" | "Version") {
            "false"
        } else {
            "true"
        };
        props.push_str(&format!(
            "<Property Name=\"{name}\" Type=\"{ty}\" Nullable=\"{nullable}\" />"
        ));
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\" standalone=\"yes\"?>\n\
<edmx:Edmx Version=\"1.0\" xmlns:edmx=\"http://schemas.microsoft.com/ado/2007/06/edmx\">\
<edmx:DataServices xmlns:m=\"http://schemas.microsoft.com/ado/2007/08/dataservices/metadata\" m:DataServiceVersion=\"2.0\">\
<Schema Namespace=\"NuGetGallery\" xmlns:d=\"http://schemas.microsoft.com/ado/2007/08/dataservices\" xmlns:m=\"http://schemas.microsoft.com/ado/2007/08/dataservices/metadata\" xmlns=\"http://schemas.microsoft.com/ado/2006/04/edm\">\
<EntityType Name=\"V2FeedPackage\" m:HasStream=\"true\"><Key><PropertyRef Name=\"Id\" /><PropertyRef Name=\"Version\" /></Key>{props}</EntityType>\
<EntityContainer Name=\"FeedContext_x0060_1\" m:IsDefaultEntityContainer=\"true\">\
<EntitySet Name=\"Packages\" EntityType=\"NuGetGallery.V2FeedPackage\" />\
<FunctionImport Name=\"Search\" EntitySet=\"Packages\" ReturnType=\"Collection(NuGetGallery.V2FeedPackage)\" m:HttpMethod=\"GET\">\
<Parameter Name=\"searchTerm\" Type=\"Edm.String\" Mode=\"In\" /><Parameter Name=\"targetFramework\" Type=\"Edm.String\" Mode=\"In\" /><Parameter Name=\"includePrerelease\" Type=\"Edm.Boolean\" Mode=\"In\" /></FunctionImport>\
<FunctionImport Name=\"FindPackagesById\" EntitySet=\"Packages\" ReturnType=\"Collection(NuGetGallery.V2FeedPackage)\" m:HttpMethod=\"GET\">\
<Parameter Name=\"id\" Type=\"Edm.String\" Mode=\"In\" /></FunctionImport>\
<FunctionImport Name=\"GetUpdates\" EntitySet=\"Packages\" ReturnType=\"Collection(NuGetGallery.V2FeedPackage)\" m:HttpMethod=\"GET\">\
<Parameter Name=\"packageIds\" Type=\"Edm.String\" Mode=\"In\" /><Parameter Name=\"versions\" Type=\"Edm.String\" Mode=\"In\" />\
<Parameter Name=\"includePrerelease\" Type=\"Edm.Boolean\" Mode=\"In\" /><Parameter Name=\"includeAllVersions\" Type=\"Edm.Boolean\" Mode=\"In\" />\
<Parameter Name=\"targetFrameworks\" Type=\"Edm.String\" Mode=\"In\" /><Parameter Name=\"versionConstraints\" Type=\"Edm.String\" Mode=\"In\" /></FunctionImport>\
</EntityContainer></Schema></edmx:DataServices></edmx:Edmx>\n"
    )
}

/// One v2 entry, with what the feed knows of its place among the
/// package's versions.
#[derive(Debug, Clone)]
pub struct V2Entry<'a> {
    pub item: &'a PackageItem,
    /// The newest listed release of the id.
    pub is_latest: bool,
    /// The newest listed version of the id, prereleases included.
    pub is_absolute_latest: bool,
    pub updated: i64,
    /// Downloads of this version (`VersionDownloadCount`).
    pub downloads: u64,
    /// Downloads of every version of the id (`DownloadCount`).
    pub package_downloads: u64,
}

fn date(ms: i64) -> String {
    ferry_types::rfc3339_millis(ms)
}

fn entry_xml(base: &str, e: &V2Entry<'_>) -> String {
    let i = e.item;
    let key = format!(
        "Packages(Id='{}',Version='{}')",
        xml_escape(&i.id),
        xml_escape(&i.version)
    );
    let published = if i.listed {
        date(i.published)
    } else {
        "1900-01-01T00:00:00.000Z".to_owned()
    };
    let s = |name: &str, v: &str| {
        if v.is_empty() {
            format!("<d:{name} m:null=\"true\" />")
        } else {
            format!("<d:{name}>{}</d:{name}>", xml_escape(v))
        }
    };
    let typed = |name: &str, ty: &str, v: String| format!("<d:{name} m:type=\"{ty}\">{v}</d:{name}>");
    let mut p = String::new();
    p.push_str(&s("Id", &i.id));
    p.push_str(&s("Version", &i.version));
    p.push_str(&s("NormalizedVersion", &i.version));
    p.push_str(&s("Authors", &i.authors));
    p.push_str(&s("Copyright", &i.copyright));
    p.push_str(&typed("Created", "Edm.DateTime", date(i.published)));
    p.push_str(&format!(
        "<d:Dependencies>{}</d:Dependencies>",
        xml_escape(&i.v2_dependencies())
    ));
    p.push_str(&s("Description", &i.description));
    p.push_str(&typed(
        "DownloadCount",
        "Edm.Int32",
        e.package_downloads.to_string(),
    ));
    p.push_str(&s("GalleryDetailsUrl", ""));
    p.push_str(&s("IconUrl", &i.icon_url));
    p.push_str(&typed("IsLatestVersion", "Edm.Boolean", e.is_latest.to_string()));
    p.push_str(&typed(
        "IsAbsoluteLatestVersion",
        "Edm.Boolean",
        e.is_absolute_latest.to_string(),
    ));
    p.push_str(&typed(
        "IsPrerelease",
        "Edm.Boolean",
        i.parsed_version().is_prerelease().to_string(),
    ));
    p.push_str(&s("Language", ""));
    p.push_str(&typed("LastUpdated", "Edm.DateTime", date(e.updated)));
    p.push_str(&typed("Published", "Edm.DateTime", published));
    p.push_str(&s("PackageHash", &i.sha512));
    p.push_str(&s("PackageHashAlgorithm", "SHA512"));
    p.push_str(&typed("PackageSize", "Edm.Int64", i.size.to_string()));
    p.push_str(&s("ProjectUrl", &i.project_url));
    p.push_str(&s("ReportAbuseUrl", ""));
    p.push_str(&s("ReleaseNotes", &i.release_notes));
    p.push_str(&typed(
        "RequireLicenseAcceptance",
        "Edm.Boolean",
        i.require_license_acceptance.to_string(),
    ));
    p.push_str(&s("Summary", &i.summary));
    p.push_str(&s("Tags", &i.tags.join(" ")));
    p.push_str(&s("Title", &i.title));
    p.push_str(&typed(
        "VersionDownloadCount",
        "Edm.Int32",
        e.downloads.to_string(),
    ));
    p.push_str(&s("MinClientVersion", &i.min_client_version));
    p.push_str(&typed("LastEdited", "Edm.DateTime", date(e.updated)));
    p.push_str(&s("LicenseUrl", &i.license_url));
    p.push_str(&s("LicenseNames", &i.license));
    p.push_str(&s("LicenseReportUrl", ""));
    let summary = if i.summary.is_empty() {
        &i.description
    } else {
        &i.summary
    };
    format!(
        "<entry><id>{b}/{key}</id>\
<category term=\"NuGetGallery.V2FeedPackage\" scheme=\"http://schemas.microsoft.com/ado/2007/08/dataservices/scheme\" />\
<link rel=\"edit\" title=\"V2FeedPackage\" href=\"{key}\" />\
<title type=\"text\">{id}</title><summary type=\"text\">{summary}</summary><updated>{updated}</updated>\
<author><name>{authors}</name></author>\
<link rel=\"edit-media\" title=\"V2FeedPackage\" href=\"{key}/$value\" />\
<content type=\"application/zip\" src=\"{b}/api/v2/package/{id}/{version}\" />\
<m:properties>{p}</m:properties></entry>",
        b = xml_escape(base),
        id = xml_escape(&i.id),
        version = xml_escape(&i.version),
        summary = xml_escape(summary),
        updated = date(e.updated),
        authors = xml_escape(&i.authors),
    )
}

/// A v2 feed (`Packages()`, `Search()`, `FindPackagesById()`,
/// `GetUpdates()`): `title` names the collection, `next` is the URL of
/// the next page (absolute) when there is one, `count` the inline count
/// (`$inlinecount=allpages`) when asked for.
pub fn render_feed(
    base: &str,
    title: &str,
    entries: &[V2Entry<'_>],
    next: Option<&str>,
    count: Option<usize>,
    now: i64,
) -> String {
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\" standalone=\"yes\"?>\n\
<feed xml:base=\"{b}/\" xmlns=\"http://www.w3.org/2005/Atom\" xmlns:d=\"http://schemas.microsoft.com/ado/2007/08/dataservices\" xmlns:m=\"http://schemas.microsoft.com/ado/2007/08/dataservices/metadata\">\
<id>{b}/{t}</id><title type=\"text\">{t}</title><updated>{u}</updated><link rel=\"self\" title=\"{t}\" href=\"{t}\" />",
        b = xml_escape(base),
        t = xml_escape(title),
        u = date(now),
    );
    if let Some(c) = count {
        out.push_str(&format!("<m:count>{c}</m:count>"));
    }
    for e in entries {
        out.push_str(&entry_xml(base, e));
    }
    if let Some(n) = next {
        out.push_str(&format!("<link rel=\"next\" href=\"{}\" />", xml_escape(n)));
    }
    out.push_str("</feed>\n");
    out
}

/// A single v2 entry document (`Packages(Id='…',Version='…')`).
pub fn render_entry(base: &str, e: &V2Entry<'_>) -> String {
    let body = entry_xml(base, e);
    let body = body.replacen(
        "<entry>",
        &format!(
            "<entry xml:base=\"{b}/\" xmlns=\"http://www.w3.org/2005/Atom\" xmlns:d=\"http://schemas.microsoft.com/ado/2007/08/dataservices\" xmlns:m=\"http://schemas.microsoft.com/ado/2007/08/dataservices/metadata\">",
            b = xml_escape(base)
        ),
        1,
    );
    format!("<?xml version=\"1.0\" encoding=\"utf-8\" standalone=\"yes\"?>\n{body}\n")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::io::Write;

    use super::*;

    fn v(s: &str) -> NuGetVersion {
        NuGetVersion::parse(s).unwrap()
    }

    #[test]
    fn versions_normalize_as_nuget_does() {
        assert_eq!(v("1.0").normalized(), "1.0.0");
        assert_eq!(v("01.002.0003").normalized(), "1.2.3");
        assert_eq!(v("1.2.3.0").normalized(), "1.2.3");
        assert_eq!(v("1.2.3.4").normalized(), "1.2.3.4");
        assert_eq!(v("1.0.0-Beta.1+sha.abc").normalized(), "1.0.0-Beta.1");
        assert_eq!(v("1.0.0-Beta").key(), "1.0.0-beta");
        assert!(v("1.0.0+meta").is_semver2());
        assert!(v("1.0.0-a.1").is_semver2());
        assert!(!v("1.0.0-alpha").is_semver2());
        for bad in ["", "1", "1.2.3.4.5", "a.b", "1.0-", "1.0+", "1.0.0-a..b", "-1.0"] {
            assert!(NuGetVersion::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn versions_order_as_nuget_does() {
        let mut vs = [
            v("1.0.0"),
            v("1.0.0-beta"),
            v("1.0.0-alpha.10"),
            v("1.0.0-alpha.2"),
            v("0.9.9.9"),
            v("1.0.0.1"),
        ];
        vs.sort();
        let got: Vec<String> = vs.iter().map(NuGetVersion::normalized).collect();
        assert_eq!(
            got,
            [
                "0.9.9.9",
                "1.0.0-alpha.2",
                "1.0.0-alpha.10",
                "1.0.0-beta",
                "1.0.0",
                "1.0.0.1"
            ]
        );
        assert_eq!(v("1.0.0-BETA").cmp(&v("1.0.0-beta")), Ordering::Equal);
    }

    #[test]
    fn ids_validate() {
        for ok in ["Foo", "Foo.Bar-Baz", "a_b.c1"] {
            validate_id(ok).unwrap();
        }
        for bad in ["", ".foo", "foo.", "a..b", "a/b", "a b", "ä"] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
        assert_eq!(
            version_key("Foo.Bar", "1.0").unwrap().as_str(),
            "pkg/foo.bar/1.0.0"
        );
    }

    fn zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for (name, data) in entries {
            w.start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    const NUSPEC: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<package xmlns="http://schemas.microsoft.com/packaging/2013/05/nuspec.xsd">
  <metadata minClientVersion="2.8">
    <id>Demo.Lib</id><version>1.02</version><title>Demo &amp; Lib</title>
    <authors>Ann, Bob</authors><description>A demo.</description>
    <tags>demo test</tags><license type="expression">MIT</license>
    <projectUrl>https://example.test/</projectUrl><releaseNotes><![CDATA[fixed <things>]]></releaseNotes>
    <dependencies>
      <group targetFramework="net45"><dependency id="Base" version="[1.0,2.0)" /></group>
      <group targetFramework="netstandard2.0" />
    </dependencies>
    <packageTypes><packageType name="Dependency" /></packageTypes>
  </metadata>
</package>"#;

    #[test]
    fn nupkg_is_read() {
        let z = zip(&[("Demo.Lib.nuspec", NUSPEC.as_bytes()), ("lib/net45/a.dll", b"x")]);
        let spec = inspect_nupkg(std::io::Cursor::new(z), &ArchiveLimits::default()).unwrap();
        let i = &spec.item;
        assert_eq!(
            (i.id.as_str(), i.version.as_str(), i.original_version.as_str()),
            ("Demo.Lib", "1.2.0", "1.02")
        );
        assert_eq!(i.title, "Demo & Lib");
        assert_eq!(i.tags, ["demo", "test"]);
        assert_eq!(i.license, "MIT");
        assert_eq!(i.release_notes, "fixed <things>");
        assert_eq!(i.min_client_version, "2.8");
        assert_eq!(i.dependency_groups.len(), 2);
        assert_eq!(i.dependency_groups[0].dependencies[0].range, "[1.0,2.0)");
        assert_eq!(i.v2_dependencies(), "Base:[1.0,2.0):net45|::netstandard2.0");
        assert_eq!(i.package_types, ["Dependency"]);
        check_file_name("demo.lib.1.2.0.nupkg", &spec).unwrap();
        check_file_name("Demo.Lib.1.02.nupkg", &spec).unwrap();
        check_file_name("package.nupkg", &spec).unwrap();
        assert!(check_file_name("Other.1.0.0.nupkg", &spec).is_err());
        // The version as NuGet normalizes it: any spelling of 1.2.0.
        for ok in [
            "DEMO.LIB.1.2.nupkg",
            "demo.lib.01.02.00.nupkg",
            "demo.lib.1.2.0.0.nupkg",
            "demo.lib.1.2.0+sha.abc.nupkg",
            "dir/Demo.Lib.1.2.0.NUPKG",
        ] {
            check_file_name(ok, &spec).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "demo.lib.1.2.1.nupkg",
            "demo.lib.1.2.0-beta.nupkg",
            "demo.lib.nupkg",
            "demo.lib1.2.0.nupkg",
            "demo.1.2.0.nupkg",
            "demo.lib.x.nupkg",
        ] {
            assert!(check_file_name(bad, &spec).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_nupkgs_are_refused() {
        let lim = ArchiveLimits::default();
        let read = |z: Vec<u8>| inspect_nupkg(std::io::Cursor::new(z), &lim);
        assert!(
            read(b"not a zip".to_vec())
                .unwrap_err()
                .to_string()
                .contains("not a valid")
        );
        assert!(
            read(zip(&[("a.txt", b"x")]))
                .unwrap_err()
                .to_string()
                .contains("no .nuspec")
        );
        let two = zip(&[("a.nuspec", NUSPEC.as_bytes()), ("b.nuspec", NUSPEC.as_bytes())]);
        assert!(read(two).unwrap_err().to_string().contains("more than one"));
        let cased = zip(&[
            ("Demo.Lib.nuspec", NUSPEC.as_bytes()),
            ("demo.lib.NUSPEC", NUSPEC.as_bytes()),
        ]);
        assert!(read(cased).unwrap_err().to_string().contains("two entries named"));
        let cased = zip(&[
            ("a.nuspec", NUSPEC.as_bytes()),
            ("lib/a.dll", b"x"),
            ("LIB/A.DLL", b"y"),
        ]);
        assert!(
            read(cased)
                .unwrap_err()
                .to_string()
                .contains("two entries named \"LIB/A.DLL\"")
        );
        let trav = zip(&[("a.nuspec", NUSPEC.as_bytes()), ("../evil", b"x")]);
        assert!(read(trav).unwrap_err().to_string().contains("unsafe path"));
        // More entries than allowed: refused from the end record, before
        // the zip reader holds a header of them.
        let few = ArchiveLimits {
            max_entries: 2,
            ..lim
        };
        let three = zip(&[("a.nuspec", NUSPEC.as_bytes()), ("b", b"x"), ("c", b"x")]);
        let err = inspect_nupkg(std::io::Cursor::new(three), &few).unwrap_err();
        assert!(matches!(err, FormatError::TooLarge(_)), "{err}");
        assert!(
            err.to_string().contains("more than 2 entries (3 declared)"),
            "{err}"
        );
        let small = ArchiveLimits {
            max_unpacked_bytes: 1000,
            ..lim
        };
        let big = vec![0u8; 10_000];
        let bomb = zip(&[("a.nuspec", NUSPEC.as_bytes()), ("big", &big)]);
        assert!(matches!(
            inspect_nupkg(std::io::Cursor::new(bomb), &small),
            Err(FormatError::TooLarge(_))
        ));
        let bad_id = NUSPEC.replace("<id>Demo.Lib</id>", "<id>../x</id>");
        assert!(
            read(zip(&[("a.nuspec", bad_id.as_bytes())]))
                .unwrap_err()
                .to_string()
                .contains("invalid package id")
        );
        let bad_v = NUSPEC.replace("<version>1.02</version>", "<version>one</version>");
        assert!(
            read(zip(&[("a.nuspec", bad_v.as_bytes())]))
                .unwrap_err()
                .to_string()
                .contains("invalid version")
        );
        // Characters XML does not allow, raw or as references: refused, so
        // one package cannot make the v2 feed unreadable for every client.
        let desc = "<description>A demo.</description>";
        assert!(NUSPEC.contains(desc));
        for bad in ["bad \u{b}\u{1} chars", "bad &#x1; ref", "nul \u{0}"] {
            let spec = NUSPEC.replace(desc, &format!("<description>{bad}</description>"));
            let e = read(zip(&[("a.nuspec", spec.as_bytes())]))
                .unwrap_err()
                .to_string();
            assert!(e.contains("XML does not allow"), "{bad:?}: {e}");
        }
        // A nuspec cut short is said to be one, not to lack its fields.
        let cut = &NUSPEC[..NUSPEC.find("<title>").unwrap()];
        let e = read(zip(&[("a.nuspec", cut.as_bytes())]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not valid XML") && e.contains("<metadata>"), "{e}");
        // And the v2 renderer never writes one, whatever it is given.
        assert_eq!(xml_escape("a\u{1}b<\u{b}"), "ab&lt;");

        // A bomb whose headers understate its size: 1 MiB of zeros declared
        // as 1000 bytes in both the local and the central header.
        let zeros = vec![0u8; 1 << 20];
        let mut liar = zip(&[("a.nuspec", NUSPEC.as_bytes()), ("content/z.bin", &zeros)]);
        let name = b"content/z.bin";
        let mut patched = 0;
        for at in 0..liar.len().saturating_sub(4) {
            let sig: [u8; 4] = liar[at..at + 4].try_into().unwrap();
            // Local header: sizes at 18/22, name length at 26, name at 30.
            if &sig == b"PK\x03\x04" && liar.get(at + 30..at + 30 + name.len()) == Some(name.as_slice()) {
                liar[at + 22..at + 26].copy_from_slice(&1000u32.to_le_bytes());
                patched += 1;
            }
            // Central header: sizes at 20/24, name at 46.
            if &sig == b"PK\x01\x02" && liar.get(at + 46..at + 46 + name.len()) == Some(name.as_slice()) {
                liar[at + 24..at + 28].copy_from_slice(&1000u32.to_le_bytes());
                patched += 1;
            }
        }
        assert_eq!(patched, 2);
        let e = read(liar).unwrap_err();
        assert!(
            matches!(e, FormatError::TooLarge(_) | FormatError::Invalid(_)),
            "{e}"
        );
        assert!(e.to_string().contains("content/z.bin"), "{e}");
    }

    /// Dependency ranges and group frameworks are read as NuGet reads them;
    /// one that is not (a `|` or `:` would forge entries in v2's
    /// `Dependencies` string) refuses the package.
    #[test]
    fn version_ranges_hold_what_nuget_says() {
        let v = |s: &str| NuGetVersion::parse(s).unwrap();
        let r = |s: &str| VersionRange::parse(s).unwrap();
        assert!(r("1.0").contains(&v("1.0.0")) && r("1.0").contains(&v("9.0")));
        assert!(!r("1.0").contains(&v("0.9")));
        assert!(r("[1.0]").contains(&v("1.0.0")) && !r("[1.0]").contains(&v("1.0.1")));
        assert!(r("[1.0,2.0)").contains(&v("1.5")) && !r("[1.0,2.0)").contains(&v("2.0")));
        assert!(r("(1.0,2.0]").contains(&v("2.0")) && !r("(1.0,2.0]").contains(&v("1.0")));
        assert!(r("(,2.0]").contains(&v("0.1")) && r("(1.0,)").contains(&v("99.0")));
        assert!(r("[2,3)").contains(&v("2.5")));
        for bad in [
            "",
            "garbage",
            "[1.0",
            "(1.0)",
            "(,)",
            "[2.0,1.0]",
            "(1.0,1.0)",
            "1.0.*",
            "[a,b]",
        ] {
            assert!(VersionRange::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn repeated_metadata_a_second_root_or_a_foreign_encoding_is_refused() {
        assert!(parse_nuspec(NUSPEC.as_bytes().to_vec()).is_ok());
        let refused = |spec: String, says: &str| {
            let e = parse_nuspec(spec.into_bytes()).unwrap_err().to_string();
            assert!(e.contains(says), "{says}: {e}");
        };
        // NuGet reads the first <id>; a later one must not name the package.
        refused(
            NUSPEC.replace("<tags>", "<id>Evil</id><version>9.9.9</version><tags>"),
            "<id> twice in <metadata>",
        );
        refused(
            NUSPEC.replace("</metadata>", "</metadata><metadata><id>Evil</id><version>6.6.6</version><description>x</description></metadata>"),
            "<metadata> twice in <package>",
        );
        refused(
            NUSPEC.replace("<tags>demo test</tags>", "<tags>a</tags><tags>b</tags>"),
            "<tags> twice",
        );
        refused(format!("{NUSPEC}<package/>"), "second root element");
        refused(
            NUSPEC.replace("encoding=\"utf-8\"", "encoding=\"utf-16\""),
            "encoding \"utf-16\"",
        );
        // Nested elements of the same name elsewhere stay allowed.
        assert!(
            parse_nuspec(
                NUSPEC
                    .replace(
                        "<group targetFramework=\"netstandard2.0\" />",
                        "<group targetFramework=\"netstandard2.0\" /><group targetFramework=\"net6.0\" />"
                    )
                    .into_bytes()
            )
            .is_ok()
        );
    }

    #[test]
    fn dependency_ranges_and_frameworks_are_checked() {
        let with = |range: &str, tf: &str| {
            let deps = format!(
                "<dependencies><group targetFramework=\"{tf}\"><dependency id=\"Base\" version=\"{range}\" /></group></dependencies>"
            );
            let spec = NUSPEC.replace(
                NUSPEC
                    .split("<dependencies>")
                    .nth(1)
                    .and_then(|r| r.split("</dependencies>").next())
                    .map(|inner| format!("<dependencies>{inner}</dependencies>"))
                    .unwrap()
                    .as_str(),
                &deps,
            );
            parse_nuspec(spec.into_bytes())
        };
        for ok in [
            "",
            "1.0",
            "2",
            "1.0.0-beta",
            "[1.0]",
            "[1.0,2.0)",
            "(,2.0]",
            "(1.0,)",
            "[ 1.0 , 2.0 ]",
            "1.0.*",
            "*",
            "1.0.0-*",
            "[1.0,2)",
            "[1.0,1.0]",
            "[1.0.*,2.0)",
        ] {
            assert!(with(ok, "net45").is_ok(), "{ok:?}: {:?}", with(ok, "net45"));
        }
        for bad in [
            "1.0|Evil:6.6.6:net45",
            "1.0:net45",
            "[1.0",
            "[1.0,2.0,3.0]",
            "(1.0)",
            "[,]",
            "banana",
            "1.*.0",
            "[2.0,1.0]",
            "(1.0,1.0]",
            "[3,2)",
        ] {
            let e = with(bad, "net45").unwrap_err().to_string();
            assert!(e.contains("invalid version range"), "{bad:?}: {e}");
        }
        for ok in [
            "",
            ".NETFramework,Version=v4.5",
            "portable-net45+win8+wpa81",
            "net6.0-windows10.0.19041",
            "MonoAndroid10",
        ] {
            assert!(with("1.0", ok).is_ok(), "{ok:?}");
        }
        for bad in ["net45|Evil:1.0", "net45:x", "net<45>"] {
            let e = with("1.0", bad).unwrap_err().to_string();
            assert!(e.contains("invalid targetFramework"), "{bad:?}: {e}");
        }
    }

    /// A zip of `entries` in which every `from` in an entry name is then
    /// renamed `to` (local and central headers alike): how a package with
    /// two entries of one name is made, which `zip::ZipWriter` refuses.
    fn zip_renamed(entries: &[(&str, &[u8])], from: &str, to: &str) -> Vec<u8> {
        assert_eq!(from.len(), to.len());
        let mut z = zip(entries);
        let (from, to) = (from.as_bytes(), to.as_bytes());
        let mut renamed = 0;
        for at in 0..z.len().saturating_sub(4) {
            let name_at = match &z[at..at + 4] {
                b"PK\x03\x04" => at + 30,
                b"PK\x01\x02" => at + 46,
                _ => continue,
            };
            if z.get(name_at..name_at + from.len()) == Some(from) {
                z[name_at..name_at + to.len()].copy_from_slice(to);
                renamed += 1;
            }
        }
        assert_eq!(renamed, 2, "one entry named {from:?}");
        z
    }

    #[test]
    fn a_name_twice_in_the_zip_is_refused() {
        let lim = ArchiveLimits::default();
        let evil = NUSPEC.replace("<id>Demo.Lib</id>", "<id>Evil.Lib</id>");
        // Two root nuspecs of one name: the zip reader shows only the second.
        let z = zip_renamed(
            &[
                ("Demo.Lib.nuspec", NUSPEC.as_bytes()),
                ("Demo.Lib.nuspeX", evil.as_bytes()),
            ],
            "Demo.Lib.nuspeX",
            "Demo.Lib.nuspec",
        );
        let e = inspect_nupkg(std::io::Cursor::new(z), &lim).unwrap_err();
        assert!(matches!(e, FormatError::Invalid(_)), "{e}");
        assert!(
            e.to_string().contains("two entries named \"Demo.Lib.nuspec\""),
            "{e}"
        );
        // Any other entry twice as well.
        let z = zip_renamed(
            &[
                ("Demo.Lib.nuspec", NUSPEC.as_bytes()),
                ("tools/install.ps1", b"Write-Host ok"),
                ("tools/install.ps2", b"Remove-Item -Recurse C:\\"),
            ],
            "tools/install.ps2",
            "tools/install.ps1",
        );
        let e = inspect_nupkg(std::io::Cursor::new(z), &lim).unwrap_err();
        assert!(
            e.to_string().contains("two entries named \"tools/install.ps1\""),
            "{e}"
        );
        // The same package with distinct names is fine.
        let z = zip(&[
            ("Demo.Lib.nuspec", NUSPEC.as_bytes()),
            ("tools/install.ps1", b"x"),
        ]);
        inspect_nupkg(std::io::Cursor::new(z), &lim).unwrap();
    }

    #[test]
    fn target_frameworks_are_compared_as_nuget_does() {
        let mut item = parse_nuspec(NUSPEC.as_bytes().to_vec()).unwrap().item;
        let with = |groups: &[&str]| {
            let mut i = item.clone();
            i.dependency_groups = groups
                .iter()
                .map(|g| DependencyGroup {
                    target_framework: (*g).to_owned(),
                    dependencies: Vec::new(),
                })
                .collect();
            i
        };
        let t = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        let ns20 = with(&["netstandard2.0"]);
        assert!(!supports_any(&ns20, &t(&["net45"])));
        assert!(supports_any(&ns20, &t(&["net461"])));
        assert!(supports_any(&ns20, &t(&["net4.7.2"])));
        assert!(supports_any(&ns20, &t(&[".NETFramework4.8"])));
        assert!(supports_any(&ns20, &t(&["netcoreapp3.1"])));
        assert!(supports_any(&ns20, &t(&["net8.0-windows"])));
        assert!(supports_any(&ns20, &t(&["net45", "net6.0"])));
        let classic = with(&["net46", "net472"]);
        assert!(!supports_any(&classic, &t(&["net45"])));
        assert!(supports_any(&classic, &t(&["net46"])));
        assert!(supports_any(&classic, &t(&["net48"])));
        assert!(!supports_any(&classic, &t(&["net6.0"])));
        assert!(!supports_any(&classic, &t(&["netstandard2.0"])));
        let core = with(&["net6.0"]);
        assert!(supports_any(&core, &t(&["net8.0"])));
        assert!(!supports_any(&core, &t(&["net5.0"])));
        assert!(!supports_any(&core, &t(&["net48"])));
        // What it cannot judge, it lets through.
        for open in [with(&[]), with(&["net46", ""]), with(&["monoandroid10"])] {
            assert!(
                supports_any(&open, &t(&["net20"])),
                "{:?}",
                open.dependency_groups
            );
        }
        assert!(!supports_any(&classic, &t(&["uap10.0"])));
        assert!(supports_any(&classic, &t(&["monoandroid10"])));
        let portable = with(&["portable-net45+win8+wpa81"]);
        assert!(supports_any(&portable, &t(&["net46"])));
        assert!(!supports_any(&portable, &t(&["net40"])));
        assert!(!supports_any(&with(&["net6.0-windows"]), &t(&["net8.0"])));
        assert!(supports_any(&with(&["net6.0-windows"]), &t(&["net8.0-windows"])));
        assert!(supports_any(&classic, &t(&[])));
        item.dependency_groups.clear();
        assert!(supports_any(&item, &t(&["net20"])));
    }

    #[test]
    fn registration_inlines_pages_below_128() {
        let spec = parse_nuspec(NUSPEC.as_bytes().to_vec()).unwrap();
        let mk = |n: usize| -> Vec<PackageItem> {
            (0..n)
                .map(|k| {
                    let mut i = spec.item.clone();
                    i.version = format!("1.0.{k}");
                    i
                })
                .collect()
        };
        let small = render_registration_index("http://h/r/", "http://h", &mk(3));
        assert_eq!(small["count"], 1);
        assert_eq!(small["items"][0]["items"].as_array().unwrap().len(), 3);
        assert_eq!(small["items"][0]["upper"], "1.0.2");
        let big = render_registration_index("http://h/r/", "http://h", &mk(130));
        assert_eq!(big["count"], 3);
        assert!(big["items"][0].get("items").is_none());
        let page =
            render_registration_page("http://h/r/", "http://h", &mk(130), "1.0.64", "1.0.127").unwrap();
        assert_eq!(page["count"], 64);
    }
}
