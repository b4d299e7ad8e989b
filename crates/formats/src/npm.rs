//! npm feeds: the registry protocol the `npm` client speaks.
//!
//! # Item layout
//!
//! An npm feed holds two kinds of items:
//!
//! | key | metadata | blobs |
//! | --- | --- | --- |
//! | `pkg/{name}/{version}` | `{"manifest": <version manifest>}` | the tarball (`.tgz`) |
//! | `tag/{name}/{tag}` | `{"version": "1.2.3"}` | none |
//!
//! `{name}` is the full package name, scoped names included (`@scope/pkg`,
//! so a scoped key has one more `/`); `{version}` is the canonical semver
//! string without build metadata. [`version_key`], [`tag_key`] and
//! [`parse_item_key`] build and read keys; [`version_item_metadata`],
//! [`tag_item_metadata`] and their `parse_` twins build and read metadata.
//! The packument (the JSON document `npm install` reads) is never stored: it
//! is rendered from the items by [`render_packument`], on every instance.
//!
//! # Endpoints (registry root `/npm/{feed}/`)
//!
//! | request | function |
//! | --- | --- |
//! | `PUT /{name}` (publish, deprecate) and `PUT /{name}/-rev/{rev}` (unpublish one version) | [`read_put_body`] (streamed; the tarball goes to a sink), then [`PutBody::into_request`] and [`PendingPublish::finish`]; [`parse_package_put`] (or [`parse_publish`] / [`parse_metadata_update`]) for a body in memory |
//! | `GET /{name}` (full, or abbreviated when [`wants_abbreviated`]) | [`render_packument`] |
//! | `GET /{name}/-/{file}` | [`parse_tarball_file_name`] |
//! | `GET /-/package/{name}/dist-tags` | [`Packument::dist_tags`] |
//! | `PUT /-/package/{name}/dist-tags/{tag}` | [`validate_dist_tag`], [`parse_dist_tag_body`] |
//! | `DELETE /-/package/{name}/dist-tags/{tag}` | [`validate_dist_tag`] |
//!
//! Names arrive percent-encoded (`@scope%2fpkg`): decode once, then validate.
//! `DELETE /{name}/-rev/{rev}` (unpublish everything) needs no parsing
//! beyond the name. After an unpublish PUT, npm also sends
//! `DELETE {path of dist.tarball}/-rev/{rev}`, resolved against the registry
//! root, so under `/npm/{feed}/` the path arrives with the prefix doubled
//! (`/npm/{feed}/npm/{feed}/{name}/-/{file}/-rev/{rev}`); the version is
//! already gone by then, so answering 200 to any such path is enough.
//!
//! # Times
//!
//! Publish times are Unix milliseconds (`i64`, the unit the store keeps);
//! they are rendered as RFC 3339 UTC with milliseconds, like the public
//! registry (`2024-05-01T12:00:00.000Z`).

mod body;
mod publish;
mod render;
mod tarball;
mod update;

use ferry_types::ItemKey;
use serde_json::Value;

use crate::FormatError;

pub use body::{BodyError, BodyLimits, PutBody, TarballDigests, read_put_body};
pub use publish::{PackagePut, PendingPublish, Publish, PutRequest, parse_package_put, parse_publish};
pub use render::{Packument, StoredVersion, effective_dist_tags, render_packument};
pub use update::{MetadataUpdate, parse_metadata_update, set_deprecated};

/// The media type of the abbreviated packument (`npm install` asks for it).
pub const ABBREVIATED_MEDIA_TYPE: &str = "application/vnd.npm.install-v1+json";

/// Longest package name npm accepts for new packages.
pub const MAX_NAME_LEN: usize = 214;
/// Longest version string (npm's semver refuses longer ones).
pub const MAX_VERSION_LEN: usize = 256;
/// Longest dist-tag Ferry accepts.
pub const MAX_TAG_LEN: usize = 128;

/// Whether `GET /{name}` should get the abbreviated packument: the `Accept`
/// header asks for [`ABBREVIATED_MEDIA_TYPE`] (as `npm install` does) and the
/// query string (without `?`) has no `write=true`. npm fetches with
/// `?write=true` before editing and sending back the packument (deprecate,
/// unpublish), and needs the full form with its `_rev` then, whatever it
/// accepts.
pub fn wants_abbreviated(accept: Option<&str>, query: Option<&str>) -> bool {
    let editing = query.is_some_and(|q| q.split('&').any(|p| p.eq_ignore_ascii_case("write=true")));
    !editing && accept.is_some_and(|a| a.to_ascii_lowercase().contains(ABBREVIATED_MEDIA_TYPE))
}

// ---------------------------------------------------------------------------
// Package names

/// Validates a package name under npm's rules for *new* packages: 1–214
/// characters, lowercase, `name` or `@scope/name`, only characters that need
/// no escaping in a URL (`a-z 0-9 - . _`; no `~'!()*`), not starting with
/// `.` or `_`, no `.`/`..` segment, and not a reserved name (`node_modules`,
/// `favicon.ico`, `-`). Used for publishes.
pub fn validate_package_name(name: &str) -> Result<(), FormatError> {
    check_name(name, true)
}

/// Validates the name of a package that may predate npm's current rules:
/// like [`validate_package_name`] but also allows capital letters and
/// `~'!()*` (e.g. `JSONStream`). Used on read paths and stored keys.
pub fn validate_existing_package_name(name: &str) -> Result<(), FormatError> {
    check_name(name, false)
}

fn check_name(name: &str, new: bool) -> Result<(), FormatError> {
    let bad = |why: &str| {
        Err(FormatError::invalid(format!(
            "invalid package name {name:?}: {why}"
        )))
    };
    if name.is_empty() {
        return bad("must not be empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("longer than 214 characters");
    }
    if new && name.bytes().any(|b| b.is_ascii_uppercase()) {
        return bad("must be lowercase");
    }
    let (scope, pkg) = match name.strip_prefix('@') {
        Some(rest) => match rest.split_once('/') {
            Some((scope, pkg)) => (Some(scope), pkg),
            None => return bad("a scoped name must look like @scope/name"),
        },
        None => (None, name),
    };
    for (part, what) in [(scope, "scope"), (Some(pkg), "name")] {
        let Some(part) = part else { continue };
        if part.is_empty() {
            return bad(&format!("the {what} must not be empty"));
        }
        if part.starts_with('.') {
            return bad(&format!("the {what} must not start with '.'"));
        }
        if let Some(c) = part.chars().find(|&c| !is_url_safe(c)) {
            return bad(&format!(
                "the character {c:?} is not allowed (names must be URL-safe)"
            ));
        }
        if new && let Some(c) = part.chars().find(|c| "~'!()*".contains(*c)) {
            return bad(&format!(
                "the character {c:?} is not allowed in new package names"
            ));
        }
    }
    if scope.is_none() {
        if name.starts_with('_') {
            return bad("must not start with '_'");
        }
        if ["node_modules", "favicon.ico", "-"]
            .iter()
            .any(|r| r.eq_ignore_ascii_case(name))
        {
            return bad("this name is reserved");
        }
    }
    Ok(())
}

/// Characters `encodeURIComponent` leaves alone.
fn is_url_safe(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!'()*".contains(c)
}

/// The name without its scope: `@scope/pkg` → `pkg`, `pkg` → `pkg`.
pub fn unscoped_name(name: &str) -> &str {
    match name.strip_prefix('@').and_then(|r| r.split_once('/')) {
        Some((_, pkg)) => pkg,
        None => name,
    }
}

// ---------------------------------------------------------------------------
// Versions

/// Parses a version the way it is stored: strict semver (no `v` prefix, no
/// leading zeros), at most 256 characters, build metadata dropped (npm
/// ignores it, so `1.0.0+a` and `1.0.0+b` are the same version). Returns the
/// canonical string.
pub fn normalize_version(version: &str) -> Result<String, FormatError> {
    Ok(parse_semver(version)?.to_string())
}

fn parse_semver(version: &str) -> Result<semver::Version, FormatError> {
    if version.len() > MAX_VERSION_LEN {
        return Err(FormatError::invalid(format!(
            "version {:?}… is longer than {MAX_VERSION_LEN} characters",
            version.chars().take(32).collect::<String>()
        )));
    }
    let mut v = semver::Version::parse(version)
        .map_err(|e| FormatError::invalid(format!("version {version:?} is not valid semver: {e}")))?;
    v.build = semver::BuildMetadata::EMPTY;
    Ok(v)
}

/// A version that is already canonical (as in keys and file names).
fn check_canonical_version(version: &str) -> Result<(), FormatError> {
    let canonical = normalize_version(version)?;
    if canonical != version {
        return Err(FormatError::invalid(format!(
            "version {version:?} is not in canonical form (expected {canonical:?})"
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Dist-tags

/// Validates a dist-tag name: 1–128 URL-safe characters, not `.`/`..`, and
/// not something npm would read as a version or range (`1.2.3`, `1.x`,
/// `^2`, `v1`), since `npm install pkg@TAG` must stay unambiguous.
pub fn validate_dist_tag(tag: &str) -> Result<(), FormatError> {
    let bad = |why: &str| Err(FormatError::invalid(format!("invalid dist-tag {tag:?}: {why}")));
    if tag.is_empty() {
        return bad("must not be empty");
    }
    if tag.len() > MAX_TAG_LEN {
        return bad("longer than 128 characters");
    }
    if let Some(c) = tag.chars().find(|&c| !is_url_safe(c)) {
        return bad(&format!(
            "the character {c:?} is not allowed (tags must be URL-safe)"
        ));
    }
    if tag == "." || tag == ".." {
        return bad("'.' and '..' are not allowed");
    }
    let bare = tag.strip_prefix(['v', '=']).unwrap_or(tag);
    if semver::Version::parse(bare).is_ok() || semver::VersionReq::parse(bare).is_ok() {
        return bad("looks like a version or version range");
    }
    Ok(())
}

/// Parses the body of `PUT /-/package/{name}/dist-tags/{tag}`
/// (`npm dist-tag add`): a JSON string holding the version, e.g. `"1.2.3"`.
/// A bare version (as `curl -d 1.2.3` sends) is accepted too. Returns the
/// normalized version; the caller checks that it exists.
pub fn parse_dist_tag_body(body: &[u8]) -> Result<String, FormatError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| FormatError::invalid("the dist-tag body is not UTF-8 text"))?
        .trim();
    let version = if text.starts_with('"') {
        serde_json::from_str::<String>(text)
            .map_err(|e| FormatError::invalid(format!("the dist-tag body is not a JSON string: {e}")))?
    } else {
        text.to_owned()
    };
    if version.is_empty() {
        return Err(FormatError::invalid(
            "the dist-tag body must name a version, e.g. \"1.2.3\"",
        ));
    }
    normalize_version(&version)
}

// ---------------------------------------------------------------------------
// Item keys and metadata

/// What an npm item key names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NpmItemKey {
    /// `pkg/{name}/{version}`: a published version and its tarball.
    Version { name: String, version: String },
    /// `tag/{name}/{tag}`: a dist-tag.
    Tag { name: String, tag: String },
}

/// The key of a package version: `pkg/{name}/{version}`. The version must be
/// canonical (see [`normalize_version`]).
pub fn version_key(name: &str, version: &str) -> Result<ItemKey, FormatError> {
    validate_existing_package_name(name)?;
    check_canonical_version(version)?;
    ItemKey::new(format!("pkg/{name}/{version}")).map_err(|e| FormatError::invalid(e.to_string()))
}

/// The key of a dist-tag: `tag/{name}/{tag}`.
pub fn tag_key(name: &str, tag: &str) -> Result<ItemKey, FormatError> {
    validate_existing_package_name(name)?;
    validate_dist_tag(tag)?;
    ItemKey::new(format!("tag/{name}/{tag}")).map_err(|e| FormatError::invalid(e.to_string()))
}

/// The key prefix of every version of a package (`pkg/{name}/`), for listing.
pub fn version_key_prefix(name: &str) -> String {
    format!("pkg/{name}/")
}

/// The key prefix of every dist-tag of a package (`tag/{name}/`), for listing.
pub fn tag_key_prefix(name: &str) -> String {
    format!("tag/{name}/")
}

/// Reads an item key of an npm feed back into its parts.
pub fn parse_item_key(key: &ItemKey) -> Result<NpmItemKey, FormatError> {
    let s = key.as_str();
    let bad = || {
        FormatError::invalid(format!(
            "{s:?} is not an npm item key (pkg/NAME/VERSION or tag/NAME/TAG)"
        ))
    };
    if let Some(rest) = s.strip_prefix("pkg/") {
        let (name, version) = rest.rsplit_once('/').ok_or_else(bad)?;
        validate_existing_package_name(name)?;
        check_canonical_version(version)?;
        Ok(NpmItemKey::Version {
            name: name.to_owned(),
            version: version.to_owned(),
        })
    } else if let Some(rest) = s.strip_prefix("tag/") {
        let (name, tag) = rest.rsplit_once('/').ok_or_else(bad)?;
        validate_existing_package_name(name)?;
        validate_dist_tag(tag)?;
        Ok(NpmItemKey::Tag {
            name: name.to_owned(),
            tag: tag.to_owned(),
        })
    } else {
        Err(bad())
    }
}

/// The metadata of a version item: `{"manifest": <manifest>}`.
pub fn version_item_metadata(manifest: &Value) -> Vec<u8> {
    let mut out = String::with_capacity(256);
    out.push_str("{\"manifest\":");
    render::push_value(&mut out, manifest);
    out.push('}');
    out.into_bytes()
}

/// Reads the manifest back from a version item's metadata.
pub fn parse_version_item_metadata(metadata: &[u8]) -> Result<Value, FormatError> {
    let mut v: Value = serde_json::from_slice(metadata)
        .map_err(|e| FormatError::invalid(format!("npm version metadata is not valid JSON: {e}")))?;
    match v.get_mut("manifest").map(Value::take) {
        Some(m @ Value::Object(_)) => Ok(m),
        _ => Err(FormatError::invalid(
            "npm version metadata has no \"manifest\" object",
        )),
    }
}

/// The metadata of a dist-tag item: `{"version": "1.2.3"}`.
pub fn tag_item_metadata(version: &str) -> Vec<u8> {
    let mut out = String::with_capacity(32);
    out.push_str("{\"version\":");
    render::push_str(&mut out, version);
    out.push('}');
    out.into_bytes()
}

/// Reads the version back from a dist-tag item's metadata.
pub fn parse_tag_item_metadata(metadata: &[u8]) -> Result<String, FormatError> {
    let v: Value = serde_json::from_slice(metadata)
        .map_err(|e| FormatError::invalid(format!("npm dist-tag metadata is not valid JSON: {e}")))?;
    match v.get("version") {
        Some(Value::String(s)) => Ok(s.clone()),
        _ => Err(FormatError::invalid(
            "npm dist-tag metadata has no \"version\" string",
        )),
    }
}

// ---------------------------------------------------------------------------
// Tarball file names

/// The tarball file name npm expects: `{unscoped-name}-{version}.tgz`.
pub fn tarball_file_name(name: &str, version: &str) -> String {
    format!("{}-{version}.tgz", unscoped_name(name))
}

/// The tarball URL of a version: `{base}/{name}/-/{unscoped-name}-{version}.tgz`
/// (`base` is the registry root, with or without a trailing `/`).
pub fn tarball_url(base: &str, name: &str, version: &str) -> String {
    let base = base.trim_end_matches('/');
    format!("{base}/{name}/-/{}-{version}.tgz", unscoped_name(name))
}

/// Routes `GET /{name}/-/{file}`: the version a tarball file name stands for,
/// if it is `{unscoped-name}-{version}.tgz` with a canonical version.
pub fn parse_tarball_file_name(name: &str, file: &str) -> Result<String, FormatError> {
    let bad = || {
        FormatError::invalid(format!(
            "{file:?} is not a tarball of {name} (expected {}-VERSION.tgz)",
            unscoped_name(name)
        ))
    };
    let version = file
        .strip_suffix(".tgz")
        .and_then(|f| f.strip_prefix(unscoped_name(name)))
        .and_then(|f| f.strip_prefix('-'))
        .ok_or_else(bad)?;
    check_canonical_version(version).map_err(|_| bad())?;
    Ok(version.to_owned())
}

/// Checks an item received by replication or from a bundle as a publish
/// would be: the key names a valid package and a canonical version (or a
/// valid dist-tag); a version item's metadata is `{"manifest": {...}}`
/// whose `name` and `version` are the key's, with exactly one blob (the
/// tarball, whose bytes the caller checks against `dist.integrity`); a
/// dist-tag's metadata is `{"version": CANONICAL}` with no blob. Returns
/// the `dist.integrity` string of a version, if any. A tombstone needs
/// only a valid key.
pub fn validate_item(
    key: &ItemKey,
    live: Option<(&Value, &[ferry_types::Digest])>,
) -> Result<Option<String>, FormatError> {
    let parsed = parse_item_key(key)?;
    let Some((meta, blobs)) = live else {
        return Ok(None);
    };
    let bad = |why: String| Err(FormatError::invalid(format!("npm item {key}: {why}")));
    let bytes = serde_json::to_vec(meta).map_err(|e| FormatError::invalid(e.to_string()))?;
    match parsed {
        NpmItemKey::Version { name, version } => {
            let manifest = parse_version_item_metadata(&bytes)?;
            if let Some(o) = meta.as_object()
                && o.len() != 1
            {
                let extra: Vec<&str> = o
                    .keys()
                    .map(String::as_str)
                    .filter(|k| *k != "manifest")
                    .collect();
                return bad(format!(
                    "metadata has fields a publish never sets: {}",
                    extra.join(", ")
                ));
            }
            if manifest.get("name").and_then(Value::as_str) != Some(name.as_str()) {
                return bad(format!("the manifest does not name package {name:?}"));
            }
            let v = manifest.get("version").and_then(Value::as_str).unwrap_or("");
            if normalize_version(v).ok().as_deref() != Some(version.as_str()) {
                return bad(format!("the manifest's version {v:?} is not {version}"));
            }
            if blobs.len() != 1 {
                return bad("a version has exactly one blob, its tarball".into());
            }
            let integrity = match manifest.get("dist").and_then(|d| d.get("integrity")) {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => return bad("dist.integrity is not a string".into()),
            };
            Ok(integrity)
        }
        NpmItemKey::Tag { .. } => {
            let version = parse_tag_item_metadata(&bytes)?;
            if normalize_version(&version).ok().as_deref() != Some(version.as_str()) {
                return bad(format!("dist-tag version {version:?} is not canonical"));
            }
            if meta.as_object().is_some_and(|o| o.len() != 1) || !blobs.is_empty() {
                return bad("a dist-tag carries only {\"version\"} and no blob".into());
            }
            Ok(None)
        }
    }
}

/// Checks that the tarball of a replicated version item `key` is that
/// version's: read as a publish's is (gzip, tar paths, size limits), its
/// `package/package.json` must name the package and the version the key
/// does — a peer cannot list one package's tarball under another's name.
/// Reads `tarball` only as far as the inspection needs. Errors: Invalid
/// (or TooLarge) naming the key; a key that is not a version's is Invalid.
pub fn check_version_tarball<R: std::io::Read>(
    key: &ItemKey,
    tarball: R,
    limits: &crate::ArchiveLimits,
) -> Result<(), FormatError> {
    let NpmItemKey::Version { name, version } = parse_item_key(key)? else {
        return Err(FormatError::invalid(format!("npm item {key} is not a version")));
    };
    let info = tarball::inspect_tarball(tarball, limits)
        .map_err(|e| FormatError::invalid(format!("npm item {key}: {e}")))?;
    let json = &info.package_json;
    let found_name = json.get("name").and_then(Value::as_str).unwrap_or("");
    let found_version = json.get("version").and_then(Value::as_str).unwrap_or("");
    if found_name != name || normalize_version(found_version).ok().as_deref() != Some(version.as_str()) {
        return Err(FormatError::invalid(format!(
            "npm item {key}: its tarball's package.json describes {found_name:?} {found_version:?}, not {name} {version}"
        )));
    }
    Ok(())
}

/// Hashes a tarball as it streams by, to check a `dist.integrity`
/// Subresource Integrity string against it without holding it whole.
#[derive(Default)]
pub struct IntegrityHasher {
    sha1: sha1::Sha1,
    sha256: sha2::Sha256,
    sha384: sha2::Sha384,
    sha512: sha2::Sha512,
}

impl IntegrityHasher {
    pub fn update(&mut self, chunk: &[u8]) {
        use sha2::Digest as _;
        self.sha1.update(chunk);
        self.sha256.update(chunk);
        self.sha384.update(chunk);
        self.sha512.update(chunk);
    }

    /// Checks every hash of `sri` whose algorithm is known (sha1, sha256,
    /// sha384, sha512) against the bytes hashed; at least one must be known.
    pub fn check(self, sri: &str) -> Result<(), FormatError> {
        use base64::Engine as _;
        use sha2::Digest as _;
        let sums = [
            ("sha1", self.sha1.finalize().to_vec()),
            ("sha256", self.sha256.finalize().to_vec()),
            ("sha384", self.sha384.finalize().to_vec()),
            ("sha512", self.sha512.finalize().to_vec()),
        ];
        let mut checked = 0;
        for token in sri.split_whitespace() {
            let malformed =
                || FormatError::invalid(format!("dist.integrity {sri:?} is not a valid integrity string"));
            let (alg, rest) = token.split_once('-').ok_or_else(malformed)?;
            let Some((_, sum)) = sums.iter().find(|(a, _)| *a == alg) else {
                continue;
            };
            let b64 = rest.split('?').next().unwrap_or(rest);
            let claimed = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| malformed())?;
            if &claimed != sum {
                return Err(FormatError::invalid(format!(
                    "dist.integrity {token:?} does not match the tarball"
                )));
            }
            checked += 1;
        }
        if checked == 0 {
            return Err(FormatError::invalid(format!(
                "dist.integrity {sri:?} names no known hash algorithm"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names() {
        for ok in ["a", "left-pad", "@scope/pkg", "@s/a.b_c-d", "a.", "-a"] {
            assert!(validate_package_name(ok).is_ok(), "{ok:?} refused");
        }
        for bad in [
            "",
            "Upper",
            ".hidden",
            "_under",
            "@scope",
            "@/x",
            "@s/",
            "@s/.x",
            "@.s/x",
            "@s/x/y",
            "a/b",
            "a b",
            "a%2fb",
            "..",
            "@s/..",
            "node_modules",
            "favicon.ico",
            "-",
            "caf\u{e9}",
            "a!",
            "x~y",
            "a(b)",
            &"x".repeat(215),
        ] {
            assert!(validate_package_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_existing_package_name("JSONStream").is_ok());
        assert!(validate_existing_package_name("a!").is_ok());
        assert!(validate_existing_package_name("../x").is_err());
        assert!(validate_existing_package_name("@s/..").is_err());
        let e = validate_package_name("Upper").unwrap_err();
        assert!(e.to_string().contains("lowercase"), "{e}");
        assert_eq!(unscoped_name("@s/p"), "p");
        assert_eq!(unscoped_name("p"), "p");
    }

    #[test]
    fn versions() {
        assert_eq!(normalize_version("1.2.3").unwrap(), "1.2.3");
        assert_eq!(normalize_version("1.2.3-beta.1+build.5").unwrap(), "1.2.3-beta.1");
        for bad in ["", "1", "1.2", "v1.2.3", "01.2.3", "1.2.3.4", "x"] {
            assert!(normalize_version(bad).is_err(), "{bad:?} accepted");
        }
        assert!(normalize_version(&format!("1.2.3-{}", "a".repeat(300))).is_err());
    }

    #[test]
    fn dist_tags() {
        for ok in ["latest", "beta", "next-2", "v1-lts", "legacy_1"] {
            assert!(validate_dist_tag(ok).is_ok(), "{ok:?} refused");
        }
        for bad in [
            "", "1.2.3", "v1.2.3", "1", "1.x", "^2", ">=1", "*", "a/b", "a b", "..", "x",
        ] {
            assert!(validate_dist_tag(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(parse_dist_tag_body(b"\"1.2.3\"").unwrap(), "1.2.3");
        assert_eq!(parse_dist_tag_body(b" 1.2.3\n").unwrap(), "1.2.3");
        assert!(parse_dist_tag_body(b"\"latest\"").is_err());
        assert!(parse_dist_tag_body(b"\"1.2").is_err());
        assert!(parse_dist_tag_body(b"").is_err());
        assert!(parse_dist_tag_body(&[0xff]).is_err());
    }

    #[test]
    fn keys_round_trip() {
        let k = version_key("@s/p", "1.0.0-rc.1").unwrap();
        assert_eq!(k.as_str(), "pkg/@s/p/1.0.0-rc.1");
        assert_eq!(
            parse_item_key(&k).unwrap(),
            NpmItemKey::Version {
                name: "@s/p".into(),
                version: "1.0.0-rc.1".into()
            }
        );
        let k = tag_key("p", "beta").unwrap();
        assert_eq!(k.as_str(), "tag/p/beta");
        assert_eq!(
            parse_item_key(&k).unwrap(),
            NpmItemKey::Tag {
                name: "p".into(),
                tag: "beta".into()
            }
        );
        assert!(version_key("p", "1.0.0+b").is_err());
        assert!(tag_key("p", "1.0.0").is_err());
        for bad in [
            "pkg/p",
            "pkg/p/x",
            "tag/p",
            "other/p/1.0.0",
            "pkg/../1.0.0",
            "tag/@s/1.0.0/x",
        ] {
            assert!(
                parse_item_key(&ItemKey::new(bad).unwrap()).is_err(),
                "{bad:?} accepted"
            );
        }
        assert_eq!(version_key_prefix("@s/p"), "pkg/@s/p/");
        assert_eq!(tag_key_prefix("p"), "tag/p/");
    }

    #[test]
    fn item_metadata_round_trips() {
        let m = serde_json::json!({"name": "p", "version": "1.0.0", "description": "a \"quoted\"\n"});
        let bytes = version_item_metadata(&m);
        assert_eq!(parse_version_item_metadata(&bytes).unwrap(), m);
        assert!(parse_version_item_metadata(b"{}").is_err());
        assert!(parse_version_item_metadata(b"{\"manifest\":1}").is_err());
        assert_eq!(tag_item_metadata("1.0.0"), br#"{"version":"1.0.0"}"#);
        assert_eq!(
            parse_tag_item_metadata(&tag_item_metadata("1.0.0")).unwrap(),
            "1.0.0"
        );
        assert!(parse_tag_item_metadata(b"[]").is_err());
    }

    #[test]
    fn tarball_names() {
        assert_eq!(tarball_file_name("@s/p", "1.0.0"), "p-1.0.0.tgz");
        assert_eq!(
            tarball_url("http://h/npm/f/", "@s/p", "1.0.0"),
            "http://h/npm/f/@s/p/-/p-1.0.0.tgz"
        );
        assert_eq!(
            tarball_url("http://h/npm/f", "p", "2.0.0-rc.1"),
            "http://h/npm/f/p/-/p-2.0.0-rc.1.tgz"
        );
        assert_eq!(parse_tarball_file_name("@s/p", "p-1.0.0.tgz").unwrap(), "1.0.0");
        assert_eq!(
            parse_tarball_file_name("a-b", "a-b-1.0.0-rc.1.tgz").unwrap(),
            "1.0.0-rc.1"
        );
        for bad in [
            "p-1.0.0.tar.gz",
            "q-1.0.0.tgz",
            "p-1.0.tgz",
            "p1.0.0.tgz",
            "p-1.0.0+b.tgz",
            "p-.tgz",
        ] {
            assert!(parse_tarball_file_name("p", bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_tarball_file_name("a", "a-b-1.0.0.tgz").is_err());
    }

    #[test]
    fn accept_header() {
        let npm = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*";
        assert!(wants_abbreviated(Some(npm), None));
        assert!(wants_abbreviated(Some(npm), Some("a=b")));
        assert!(!wants_abbreviated(Some(npm), Some("write=true")));
        assert!(!wants_abbreviated(Some("application/json"), None));
        assert!(!wants_abbreviated(None, None));
    }
}
