//! cargo feeds: a private sparse registry (The Cargo Book, "Registries",
//! "Registry Index" and "Registry Web API").
//!
//! # Item layout
//!
//! A cargo feed holds one item per published version:
//!
//! | key | metadata | blobs |
//! | --- | --- | --- |
//! | `crate/{canonical}/{version}` | a [`CrateItem`]: `{"index": <index line>, "description", "size"}` | the `.crate` file |
//!
//! `{canonical}` is the crate name lowercased with `-` written as `_`
//! ([`canonical_name`]): cargo compares names case-insensitively with `-`
//! and `_` equivalent, so one crate has one key prefix whatever the
//! spelling; each version keeps the spelling it was published with in its
//! index line's `name`, and the crate is shown (index file, search) under
//! one spelling, its earliest-written version's, even when versions arrive
//! by replication under another. A `.crate` may unpack to at most
//! [`MAX_UNPACKED_CRATE`] (cargo's own limit). `{version}` is the semver version without build metadata
//! (`1.0.0+a` and `1.0.0+b` are the same version to cargo). The index line
//! is the JSON object cargo reads from the sparse index ([`IndexEntry`]);
//! its `cksum` is the sha256 of the `.crate`, which is the item's blob
//! digest. A yank rewrites the item with `yanked: true` (a new stamp, so it
//! replicates); a deleted version is a deleted item.
//!
//! Index files are never stored: [`render_index_file`] renders them from
//! the items on every instance, so a spoke serves what it replicated.
//!
//! # Endpoints (index root `/cargo/{feed}/`)
//!
//! | request | function |
//! | --- | --- |
//! | `GET config.json` | [`render_config`] |
//! | `GET 1/a`, `2/ab`, `3/a/abc`, `ab/cd/abcd…` | [`parse_index_path`], [`render_index_file`] |
//! | `PUT api/v1/crates/new` | [`parse_length_prefix`], [`parse_publish_json`], [`inspect_crate`], [`Publish::into_item`] |
//! | `DELETE api/v1/crates/{name}/{version}/yank`, `PUT …/unyank` | [`version_key`] |
//! | `GET api/v1/crates/{name}/owners` | — |
//! | `GET api/v1/crates?q=&per_page=` | [`search_entry`] |
//! | `GET api/v1/crates/{name}/{version}/download` (the `dl` URL) | [`version_key`] |
//! | `DELETE api/v1/crates/{name}/{version}` (Ferry's own) | [`version_key`] |

use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::{self, Read};

use ferry_types::{Digest, ItemKey};
use flate2::read::GzDecoder;
use serde::{Deserialize, Serialize};
use tar::EntryType;

use crate::{ArchiveLimits, FormatError};

/// Longest crate name (crates.io's limit, which cargo enforces on publish).
pub const MAX_NAME_LEN: usize = 64;
/// Longest version string accepted.
pub const MAX_VERSION_LEN: usize = 256;
/// Largest JSON part of a publish body read into memory.
pub const MAX_PUBLISH_JSON: u32 = 1 << 20;
/// Most bytes a `.crate` may unpack to: cargo's own limit (512 MiB), so
/// nothing is accepted that no cargo could unpack.
pub const MAX_UNPACKED_CRATE: u64 = 512 << 20;

/// The standard library's crate names, which a dependency could never
/// mean, and Windows device names (a crate so named could not be unpacked
/// there). Compared in canonical form.
const RESERVED: &[&str] = &[
    "alloc",
    "core",
    "proc_macro",
    "std",
    "test",
    "con",
    "prn",
    "aux",
    "nul",
    "com1",
    "com2",
    "com3",
    "com4",
    "com5",
    "com6",
    "com7",
    "com8",
    "com9",
    "lpt1",
    "lpt2",
    "lpt3",
    "lpt4",
    "lpt5",
    "lpt6",
    "lpt7",
    "lpt8",
    "lpt9",
];

// ---------------------------------------------------------------------------
// Names, versions, keys

/// Validates a crate name as cargo and crates.io do for publishing: 1–64
/// characters, ASCII letters, digits, `-` and `_`, starting with a letter,
/// and not a reserved name (`std`, `core`, `alloc`, `proc_macro`, `test`,
/// Windows device names such as `nul` or `con`, ...).
pub fn validate_crate_name(name: &str) -> Result<(), FormatError> {
    check_name_chars(name)?;
    let canonical = canonical_name(name);
    if RESERVED.contains(&canonical.as_str()) {
        return Err(FormatError::invalid(format!(
            "the name `{name}` is reserved and cannot be used for a crate"
        )));
    }
    Ok(())
}

/// The character rules of [`validate_crate_name`], without the reserved
/// names (used for dependencies, which may name crates of other registries).
fn check_name_chars(name: &str) -> Result<(), FormatError> {
    let bad = |why: &str| {
        Err(FormatError::invalid(format!(
            "invalid crate name `{name}`: {why}"
        )))
    };
    if name.is_empty() {
        return bad("must not be empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("longer than 64 characters");
    }
    if !name.as_bytes()[0].is_ascii_alphabetic() {
        return bad("must start with an ASCII letter");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return bad(&format!(
            "the character {c:?} is not allowed (only ASCII letters, digits, `-` and `_`)"
        ));
    }
    Ok(())
}

/// The form names are compared in: lowercase, `-` written as `_`.
pub fn canonical_name(name: &str) -> String {
    name.chars()
        .map(|c| if c == '-' { '_' } else { c.to_ascii_lowercase() })
        .collect()
}

/// Parses a semver version (cargo requires semver 2.0); returns it with the
/// build metadata dropped, the form item keys use.
pub fn version_without_build(vers: &str) -> Result<String, FormatError> {
    if vers.len() > MAX_VERSION_LEN {
        return Err(FormatError::invalid("the version is longer than 256 characters"));
    }
    let mut v = semver::Version::parse(vers)
        .map_err(|e| FormatError::invalid(format!("invalid version `{vers}`: {e}")))?;
    v.build = semver::BuildMetadata::EMPTY;
    Ok(v.to_string())
}

/// Prefix of every item of one crate (any spelling of `name`).
pub fn crate_key_prefix(name: &str) -> String {
    format!("crate/{}/", canonical_name(name))
}

/// The key of one version of a crate (any spelling of the name; the version
/// with or without build metadata).
pub fn version_key(name: &str, vers: &str) -> Result<ItemKey, FormatError> {
    check_name_chars(name)?;
    let v = version_without_build(vers)?;
    ItemKey::new(format!("crate/{}/{v}", canonical_name(name)))
        .map_err(|e| FormatError::invalid(e.to_string()))
}

/// Reads a key made by [`version_key`]: `(canonical name, version)`.
pub fn parse_item_key(key: &ItemKey) -> Result<(&str, &str), FormatError> {
    let bad = || FormatError::invalid(format!("{key:?} is not a cargo item key"));
    let rest = key.as_str().strip_prefix("crate/").ok_or_else(bad)?;
    let (name, vers) = rest.split_once('/').ok_or_else(bad)?;
    if vers.contains('/') || check_name_chars(name).is_err() || canonical_name(name) != name {
        return Err(bad());
    }
    if version_without_build(vers).ok().as_deref() != Some(vers) {
        return Err(bad());
    }
    Ok((name, vers))
}

/// The path of a crate's index file below the index root: `1/a`, `2/ab`,
/// `3/a/abc`, else `ab/cd/abcd…`, all lowercase (The Cargo Book, "Index
/// files").
pub fn index_path(name: &str) -> String {
    let n = name.to_ascii_lowercase();
    let c: Vec<char> = n.chars().collect();
    let part = |r: std::ops::Range<usize>| c[r].iter().collect::<String>();
    match c.len() {
        0..=2 => format!("{}/{n}", c.len()),
        3 => format!("3/{}/{n}", part(0..1)),
        _ => format!("{}/{}/{n}", part(0..2), part(2..4)),
    }
}

/// The lowercase crate name an index path names, if it is one
/// ([`index_path`] of that name, exactly).
pub fn parse_index_path(path: &str) -> Option<String> {
    let name = path.rsplit('/').next()?;
    if check_name_chars(name).is_err() || name.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    (index_path(name) == path).then(|| name.to_owned())
}

// ---------------------------------------------------------------------------
// The index line and the stored item

/// One dependency in an index line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexDep {
    /// The name the dependency is known by in the dependent's code (the
    /// rename, when renamed).
    pub name: String,
    /// The semver requirement (`^1.2`).
    pub req: String,
    pub features: Vec<String>,
    pub optional: bool,
    pub default_features: bool,
    /// A `cfg(...)` or target triple the dependency is limited to.
    pub target: Option<String>,
    /// `normal`, `dev` or `build`.
    pub kind: String,
    /// The index URL of the registry the dependency comes from; null: this one.
    pub registry: Option<String>,
    /// The real crate name when the dependency is renamed.
    pub package: Option<String>,
}

/// One line of an index file: one version of a crate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// The crate name as first published (original spelling).
    pub name: String,
    pub vers: String,
    pub deps: Vec<IndexDep>,
    /// sha256 of the `.crate` file, lowercase hex.
    pub cksum: String,
    pub features: BTreeMap<String, Vec<String>>,
    /// Features using `dep:` or `?/` syntax, which cargo older than 1.60
    /// cannot read in `features`; present only then, with `v: 2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features2: Option<BTreeMap<String, Vec<String>>>,
    pub yanked: bool,
    pub links: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rust_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v: Option<u32>,
}

/// The metadata of a version item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrateItem {
    /// The index line, as served.
    pub index: IndexEntry,
    /// The manifest's description (for search).
    #[serde(default)]
    pub description: Option<String>,
    /// Size of the `.crate` in bytes.
    pub size: u64,
}

impl CrateItem {
    /// The item's metadata as stored.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    /// Reads an item's metadata. Errors: not a [`CrateItem`].
    pub fn from_json(meta: &serde_json::Value) -> Result<Self, FormatError> {
        Self::deserialize(meta).map_err(|e| FormatError::invalid(format!("invalid cargo item metadata: {e}")))
    }
}

/// Checks a cargo item (received by replication): its key, its metadata,
/// and that its one blob is the `.crate` the index line's `cksum` names.
/// Returns the metadata of a live item.
pub fn validate_item(
    key: &ItemKey,
    live: Option<(&serde_json::Value, &[Digest])>,
) -> Result<Option<CrateItem>, FormatError> {
    let (name, vers) = parse_item_key(key)?;
    let Some((meta, blobs)) = live else {
        return Ok(None);
    };
    let item =
        CrateItem::from_json(meta).map_err(|e| FormatError::invalid(format!("cargo item {key}: {e}")))?;
    crate::no_unknown_fields("cargo", key, meta, &item.to_json())?;
    let e = &item.index;
    validate_crate_name(&e.name)?;
    if canonical_name(&e.name) != name || version_without_build(&e.vers)? != vers {
        return Err(FormatError::invalid(format!(
            "cargo item {key}: its metadata describes {} {}",
            e.name, e.vers
        )));
    }
    for d in &e.deps {
        check_dep(d)?;
    }
    match blobs {
        [one] if one.hex() == e.cksum => Ok(Some(item)),
        _ => Err(FormatError::invalid(format!(
            "cargo item {key}: its blob is not the .crate of checksum {}",
            e.cksum
        ))),
    }
}

fn check_dep(d: &IndexDep) -> Result<(), FormatError> {
    check_name_chars(&d.name)?;
    if let Some(p) = &d.package {
        check_name_chars(p)?;
    }
    semver::VersionReq::parse(&d.req).map_err(|e| {
        FormatError::invalid(format!(
            "dependency `{}`: invalid version requirement `{}`: {e}",
            d.name, d.req
        ))
    })?;
    if !matches!(d.kind.as_str(), "normal" | "dev" | "build") {
        return Err(FormatError::invalid(format!(
            "dependency `{}`: unknown kind `{}` (normal, dev or build)",
            d.name, d.kind
        )));
    }
    Ok(())
}

/// Renders an index file: one JSON line per version, in version order.
/// Empty when there are no versions (the crate is then unknown: 404).
pub fn render_index_file<'a>(entries: impl IntoIterator<Item = &'a IndexEntry>) -> Vec<u8> {
    let mut sorted: Vec<&IndexEntry> = entries.into_iter().collect();
    sorted.sort_by(
        |a, b| match (semver::Version::parse(&a.vers), semver::Version::parse(&b.vers)) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            _ => a.vers.cmp(&b.vers),
        },
    );
    let mut out = Vec::new();
    for e in sorted {
        if serde_json::to_writer(&mut out, e).is_ok() {
            out.push(b'\n');
        }
    }
    out
}

/// `config.json` at the index root: where crates are downloaded (`dl`,
/// cargo appends `/{crate}/{version}/download`), the Web API root (`api`),
/// and `auth-required` for private feeds, so cargo sends its token on every
/// request. `root` is the absolute URL of the index root without its
/// final `/` (`http://HOST:PORT/cargo/FEED`).
pub fn render_config(root: &str, private: bool) -> Vec<u8> {
    let mut v = serde_json::json!({
        "dl": format!("{root}/api/v1/crates"),
        "api": root,
    });
    if private {
        v["auth-required"] = serde_json::Value::Bool(true);
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

/// What the search API shows of a crate: `{"name", "max_version",
/// "description"}`. `versions` are the crate's index lines; the highest
/// version that is not yanked (else the highest) is the one shown.
pub fn search_entry(versions: &[CrateItem]) -> Option<serde_json::Value> {
    let parse = |i: &CrateItem| semver::Version::parse(&i.index.vers).ok();
    let best = versions
        .iter()
        .filter(|i| !i.index.yanked)
        .max_by_key(|i| parse(i))
        .or_else(|| versions.iter().max_by_key(|i| parse(i)))?;
    Some(serde_json::json!({
        "name": best.index.name,
        "max_version": best.index.vers,
        "description": best.description.clone().unwrap_or_default(),
    }))
}

// ---------------------------------------------------------------------------
// Publish

/// Reads one of the two little-endian `u32` length prefixes of a publish
/// body.
pub fn parse_length_prefix(bytes: [u8; 4]) -> u32 {
    u32::from_le_bytes(bytes)
}

#[derive(Deserialize)]
struct PublishJson {
    name: String,
    vers: String,
    #[serde(default)]
    deps: Vec<PublishDep>,
    #[serde(default)]
    features: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    links: Option<String>,
    #[serde(default)]
    rust_version: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
struct PublishDep {
    name: String,
    version_req: String,
    #[serde(default)]
    features: Vec<String>,
    #[serde(default)]
    optional: bool,
    #[serde(default = "yes")]
    default_features: bool,
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    registry: Option<String>,
    #[serde(default)]
    explicit_name_in_toml: Option<String>,
}

/// The JSON part of a publish (`PUT /api/v1/crates/new`), checked.
#[derive(Debug, Clone)]
pub struct Publish {
    /// The index line, without `cksum` yet (filled by [`Publish::into_item`]).
    pub entry: IndexEntry,
    /// The manifest's description, kept for search.
    pub description: Option<String>,
}

/// Parses and checks the JSON part of a publish body (The Cargo Book,
/// "Registry Web API", Publish): the name ([`validate_crate_name`]), the
/// version, every dependency (names, requirements, kind); renamed
/// dependencies become `name` = the rename and `package` = the crate, as
/// in the index; features using `dep:` or `?/` go to `features2` (`v: 2`).
pub fn parse_publish_json(json: &[u8]) -> Result<Publish, FormatError> {
    let p: PublishJson = serde_json::from_slice(json)
        .map_err(|e| FormatError::invalid(format!("invalid publish metadata (JSON): {e}")))?;
    validate_crate_name(&p.name)?;
    version_without_build(&p.vers)?;
    let mut deps = Vec::with_capacity(p.deps.len());
    for d in p.deps {
        let (name, package) = match d.explicit_name_in_toml {
            Some(rename) => (rename, Some(d.name)),
            None => (d.name, None),
        };
        let dep = IndexDep {
            name,
            req: d.version_req,
            features: d.features,
            optional: d.optional,
            default_features: d.default_features,
            target: d.target,
            kind: d.kind.unwrap_or_else(|| "normal".to_owned()),
            registry: d.registry,
            package,
        };
        check_dep(&dep)?;
        deps.push(dep);
    }
    let (features, features2): (BTreeMap<_, _>, BTreeMap<_, _>) = p
        .features
        .into_iter()
        .partition(|(_, vals)| !vals.iter().any(|v| v.starts_with("dep:") || v.contains("?/")));
    let v2 = !features2.is_empty();
    Ok(Publish {
        entry: IndexEntry {
            name: p.name,
            vers: p.vers,
            deps,
            cksum: String::new(),
            features,
            features2: v2.then_some(features2),
            yanked: false,
            links: p.links,
            rust_version: p.rust_version,
            v: v2.then_some(2),
        },
        description: p.description,
    })
}

impl Publish {
    /// The item of this version, given the `.crate`'s digest and size.
    pub fn into_item(mut self, digest: &Digest, size: u64) -> CrateItem {
        self.entry.cksum = digest.hex();
        CrateItem {
            index: self.entry,
            description: self.description,
            size,
        }
    }
}

// ---------------------------------------------------------------------------
// The .crate file

/// Why the decompressed stream was cut off.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Trip {
    None,
    /// The whole archive expands past `max_unpacked_bytes`.
    Total,
    /// Tar extension headers (long names, PAX records) between two entries
    /// are larger than allowed: the tar reader would hold them in memory.
    Window,
}

struct Meter {
    pos: Cell<u64>,
    limit: u64,
    window_end: Cell<u64>,
    tripped: Cell<Trip>,
}

/// Counts decompressed bytes and fails once a limit is crossed.
struct Metered<'a, R> {
    inner: R,
    meter: &'a Meter,
}

impl<R: Read> Read for Metered<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let m = self.meter;
        if m.tripped.get() == Trip::None {
            let n = self.inner.read(buf)?;
            let pos = m.pos.get().saturating_add(n as u64);
            m.pos.set(pos);
            if pos > m.limit {
                m.tripped.set(Trip::Total);
            } else if pos > m.window_end.get() {
                m.tripped.set(Trip::Window);
            } else {
                return Ok(n);
            }
        }
        Err(io::Error::other("size limit exceeded"))
    }
}

fn round_up_block(n: u64) -> u64 {
    n.saturating_add(511) & !511
}

/// Inspects a `.crate` (a gzip-compressed tar, as `cargo package` makes
/// it) for the publish of `name` `vers`: every entry must be a file or a
/// folder under `{name}-{vers}/` (no absolute paths, no `..`, no links or
/// devices); the archive is bounded by `limits` while it is decompressed
/// (size bombs, entry counts, extension headers); `{name}-{vers}/Cargo.toml`
/// must exist and name the same package and version. Reads the archive once,
/// to its end (a truncated gzip stream is refused).
pub fn inspect_crate<R: Read>(
    crate_file: R,
    name: &str,
    vers: &str,
    limits: &ArchiveLimits,
) -> Result<(), FormatError> {
    let limits = &ArchiveLimits {
        max_unpacked_bytes: limits.max_unpacked_bytes.min(MAX_UNPACKED_CRATE),
        ..*limits
    };
    let mut crate_file = crate_file;
    let mut magic = [0u8; 2];
    let mut got = 0;
    while got < 2 {
        match crate_file.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FormatError::invalid(format!("the .crate could not be read: {e}"))),
        }
    }
    if got < 2 || magic != [0x1f, 0x8b] {
        return Err(FormatError::invalid(
            "the .crate is not gzip-compressed (cargo packages are .tar.gz files)",
        ));
    }
    let slack = 3 * (round_up_block(limits.max_metadata_bytes) + 512) + 2048;
    let meter = Meter {
        pos: Cell::new(0),
        limit: limits.max_unpacked_bytes,
        window_end: Cell::new(slack),
        tripped: Cell::new(Trip::None),
    };
    let reader = Metered {
        inner: GzDecoder::new(magic.as_slice().chain(crate_file)),
        meter: &meter,
    };
    let mut archive = tar::Archive::new(reader);
    let top = format!("{name}-{vers}");
    let walked = walk(&mut archive, &top, limits, &meter, slack).and_then(|manifest| {
        meter.window_end.set(u64::MAX);
        io::copy(&mut archive.into_inner(), &mut io::sink())
            .map_err(|e| FormatError::invalid(format!("the .crate is not a valid gzip stream: {e}")))?;
        Ok(manifest)
    });
    let manifest = walked.map_err(|e| match meter.tripped.get() {
        Trip::Total => FormatError::too_large(format!(
            "the .crate expands to more than {} bytes",
            limits.max_unpacked_bytes
        )),
        Trip::Window => FormatError::too_large(format!(
            "the .crate has tar extension headers larger than {} bytes",
            limits.max_metadata_bytes
        )),
        Trip::None => e,
    })?;
    check_manifest(&manifest, name, vers)
}

fn walk<R: Read>(
    archive: &mut tar::Archive<R>,
    top: &str,
    limits: &ArchiveLimits,
    meter: &Meter,
    slack: u64,
) -> Result<Vec<u8>, FormatError> {
    let not_tar = |e: io::Error| FormatError::invalid(format!("the .crate is not a valid tar archive: {e}"));
    let mut manifest = None;
    let mut count = 0u64;
    let mut declared = 0u64;
    for entry in archive.entries().map_err(not_tar)? {
        let mut entry = entry.map_err(not_tar)?;
        let size = entry.size();
        meter.window_end.set(
            meter
                .pos
                .get()
                .saturating_add(round_up_block(size))
                .saturating_add(slack),
        );
        count += 1;
        declared = declared.saturating_add(size);
        if count > limits.max_entries {
            return Err(FormatError::too_large(format!(
                "the .crate has more than {} entries",
                limits.max_entries
            )));
        }
        if declared > limits.max_unpacked_bytes {
            return Err(FormatError::too_large(format!(
                "the .crate expands to more than {} bytes",
                limits.max_unpacked_bytes
            )));
        }
        let kind = entry.header().entry_type();
        if kind == EntryType::XGlobalHeader {
            continue;
        }
        let raw = entry.path_bytes().into_owned();
        let path =
            String::from_utf8(raw).map_err(|_| FormatError::invalid("a .crate entry name is not UTF-8"))?;
        let comps = components(&path)?;
        if comps.first() != Some(&top) {
            return Err(FormatError::invalid(format!(
                ".crate entry {path:?} is outside {top}/, where cargo packs every file"
            )));
        }
        match kind {
            EntryType::Regular | EntryType::Continuous => {
                if comps.len() == 2 && comps[1] == "Cargo.toml" {
                    if size > limits.max_metadata_bytes {
                        return Err(FormatError::too_large(format!(
                            "Cargo.toml in the .crate is larger than {} bytes",
                            limits.max_metadata_bytes
                        )));
                    }
                    let mut buf = Vec::with_capacity(size as usize);
                    (&mut entry)
                        .take(limits.max_metadata_bytes)
                        .read_to_end(&mut buf)
                        .map_err(not_tar)?;
                    manifest = Some(buf);
                }
            }
            EntryType::Directory => {}
            other => {
                return Err(FormatError::invalid(format!(
                    ".crate entry {path:?} has unsupported type {:?} (only files and folders are allowed)",
                    other.as_byte() as char
                )));
            }
        }
    }
    manifest.ok_or_else(|| FormatError::invalid(format!("the .crate has no {top}/Cargo.toml")))
}

/// An entry path's components, refusing absolute paths and `..`.
fn components(path: &str) -> Result<Vec<&str>, FormatError> {
    let b = path.as_bytes();
    if path.starts_with(['/', '\\']) || (b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':') {
        return Err(FormatError::invalid(format!(
            ".crate entry {path:?} has an absolute path"
        )));
    }
    let mut out = Vec::new();
    for c in path.split(['/', '\\']) {
        match c {
            "" | "." => {}
            ".." => {
                return Err(FormatError::invalid(format!(
                    ".crate entry {path:?} contains '..' (path traversal)"
                )));
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

#[derive(Deserialize)]
struct Manifest {
    package: Option<ManifestPackage>,
}

#[derive(Deserialize)]
struct ManifestPackage {
    name: String,
    version: toml::Value,
}

/// The `[package]` of the packaged `Cargo.toml` must be `name` `vers`.
fn check_manifest(raw: &[u8], name: &str, vers: &str) -> Result<(), FormatError> {
    let text = std::str::from_utf8(raw)
        .map_err(|_| FormatError::invalid("Cargo.toml in the .crate is not UTF-8"))?;
    let m: Manifest = toml::from_str(text)
        .map_err(|e| FormatError::invalid(format!("Cargo.toml in the .crate is not valid TOML: {e}")))?;
    let p = m
        .package
        .ok_or_else(|| FormatError::invalid("Cargo.toml in the .crate has no [package]"))?;
    let version = p.version.as_str().unwrap_or_default();
    if p.name != name || version != vers {
        return Err(FormatError::invalid(format!(
            "the .crate's Cargo.toml describes {} {}, but the publish metadata says {name} {vers}",
            p.name,
            if version.is_empty() {
                "(no version)"
            } else {
                version
            }
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
