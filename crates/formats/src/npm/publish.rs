//! `npm publish`: the JSON body of `PUT /{name}` with the tarball attached.
//!
//! A body is read as a stream by [`read_put_body`](super::read_put_body),
//! which hands the decoded tarball to the caller as it comes; once the body
//! has ended, [`PutBody::into_request`] checks it (everything that needs
//! more than one member: JSON does not order them) and, for a publish,
//! [`PendingPublish::finish`] checks the tarball the caller kept, reading
//! it back. [`parse_package_put`] and [`parse_publish`] do all of it for a
//! body held in memory.

use std::collections::BTreeMap;
use std::io::{self, Read, Seek, SeekFrom};

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use ferry_types::ItemKey;
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256, Sha384};

use super::body::{
    Attachment, BodyError, BodyLimits, Data, PutBody, RawManifest, Versions, read_put_body, too_many_values,
};
use super::render::StoredVersion;
use super::tarball::inspect_tarball;
use super::update::{Listed, Listing, MetadataUpdate, update_with};
use super::{
    normalize_version, tarball_file_name, validate_dist_tag, validate_package_name, version_item_metadata,
    version_key,
};
use crate::{ArchiveLimits, FormatError};

/// Standard base64, padding optional (what Node's `Buffer` and SRI use).
pub(crate) const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Internal `_` fields of a client's manifest that are worth keeping; every
/// other `_` field (`_resolved`, `_from`, `_npmUser`, …) is dropped.
const KEEP_INTERNAL: [&str; 2] = ["_nodeVersion", "_npmVersion"];

/// A validated publish of one package version.
#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    /// The package name, e.g. `@scope/pkg`.
    pub name: String,
    /// The canonical version (build metadata dropped).
    pub version: String,
    /// The item key, `pkg/{name}/{version}`.
    pub key: ItemKey,
    /// The version manifest to store (a JSON object): the client's manifest
    /// with `name`, `version` and `_id` set, `dist` replaced by computed
    /// `shasum`, `integrity`, `fileCount` and `unpackedSize` (the tarball URL
    /// is added when rendering), `_hasShrinkwrap` and `hasInstallScript`
    /// computed from the tarball, other internal `_` fields dropped.
    pub manifest: Value,
    /// The dist-tags to point at this version (`latest` when the client
    /// asked for none). Every value equals `version`.
    pub dist_tags: BTreeMap<String, String>,
    /// The tarball's size in bytes (the tarball is the item's one blob).
    pub size: u64,
    /// The tarball's file name as served: `{unscoped-name}-{version}.tgz`.
    pub tarball_name: String,
    /// sha1 of the tarball, lowercase hex (`dist.shasum`).
    pub shasum: String,
    /// `sha512-<base64>` of the tarball (`dist.integrity`).
    pub integrity: String,
}

impl Publish {
    /// The version item's metadata, `{"manifest": …}`.
    pub fn item_metadata(&self) -> Vec<u8> {
        version_item_metadata(&self.manifest)
    }
}

/// What a `PUT /{name}` (or `PUT /{name}/-rev/{rev}`) body held in memory
/// asks for ([`parse_package_put`]).
#[derive(Debug, Clone, PartialEq)]
pub enum PackagePut {
    /// A body with a tarball attached: `npm publish`.
    Publish(Box<Publish>),
    /// A packument without tarballs: `npm deprecate`, `npm unpublish PKG@VER`
    /// (or `npm owner`, which changes nothing Ferry stores).
    Update(MetadataUpdate),
}

/// What a `PUT /{name}` body read as a stream asks for
/// ([`PutBody::into_request`]).
#[derive(Debug)]
pub enum PutRequest {
    /// `npm publish`: the body checks out; the tarball is checked next.
    Publish(Box<PendingPublish>),
    /// `npm deprecate`, `npm unpublish PKG@VER`, `npm owner`.
    Update(MetadataUpdate),
}

impl PutBody {
    /// Checks a body once it has been read whole (the tarball streamed to
    /// the caller's sink): a publish when it carries `_attachments`
    /// ([`PutBody::is_publish`]), a metadata update otherwise. `name` is the
    /// package name from the URL (percent-decoded); the body must be about
    /// that package. `current` holds the versions already stored (needed
    /// for updates).
    ///
    /// A publish is checked up to its tarball: name, version and manifest,
    /// the one attachment (its name, valid base64, `length`), and the
    /// client's `dist.shasum` and `dist.integrity` against the digests
    /// computed while streaming; [`PendingPublish::finish`] checks the
    /// tarball itself. The caller still decides what is allowed: a publish
    /// of a version that already exists must be refused (npm answers 403),
    /// and for an update the body's `_rev` should match the current
    /// [`Packument::rev`](super::Packument), or else the client edited a
    /// stale copy (409).
    pub fn into_request(self, name: &str, current: &[StoredVersion]) -> Result<PutRequest, FormatError> {
        if self.is_publish() {
            let p = check_publish(self)?;
            if p.name != name {
                return Err(invalid(format!(
                    "the request body publishes {:?}, but the URL names {name:?}",
                    p.name
                )));
            }
            Ok(PutRequest::Publish(Box::new(p)))
        } else {
            let listing = match self.versions {
                Versions::Absent => Listing::Absent,
                Versions::NotObject => Listing::NotObject,
                Versions::Raw(list) => Listing::Listed(
                    list.into_iter()
                        .map(|m| Ok((m.version.clone(), Listed::of_json(&m.version, &m.json)?)))
                        .collect::<Result<_, FormatError>>()?,
                ),
            };
            update_with(name, &self.fields, listing, current).map(PutRequest::Update)
        }
    }
}

/// A publish whose body checks out ([`PutBody::into_request`]), waiting for
/// its tarball to be checked ([`PendingPublish::finish`]).
#[derive(Debug)]
pub struct PendingPublish {
    name: String,
    version: String,
    key: ItemKey,
    tarball_name: String,
    manifest: Map<String, Value>,
    /// What is left of the body (`dist-tags`, `readme`, …).
    body: Map<String, Value>,
    size: u64,
    shasum: String,
    integrity: String,
    /// Hashes of `dist.integrity` not computed while streaming.
    deferred: Vec<Deferred>,
}

/// A hash the client claims in `dist.integrity` that is checked against
/// the tarball read back.
#[derive(Debug)]
struct Deferred {
    alg: Later,
    claimed: Vec<u8>,
    token: String,
}

#[derive(Debug, Clone, Copy)]
enum Later {
    Sha256,
    Sha384,
}

impl PendingPublish {
    /// The package name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The canonical version.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The size of the tarball that was streamed.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Checks the tarball (the bytes the body's attachment decoded to, as
    /// the caller kept them) and completes the publish: the remaining
    /// `dist.integrity` hashes (sha256, sha384), then the archive: a
    /// gzip-compressed tar whose entries stay inside one top-level folder
    /// (no absolute paths, `..` or escaping links), within `limits`, and
    /// whose `package.json` has the same name and version; then the
    /// dist-tags, which must all point at this version.
    pub fn finish<R: Read + Seek>(
        self,
        mut tarball: R,
        limits: &ArchiveLimits,
    ) -> Result<Publish, FormatError> {
        let PendingPublish {
            name,
            version,
            key,
            tarball_name,
            mut manifest,
            mut body,
            size,
            shasum,
            integrity,
            deferred,
        } = self;
        if !deferred.is_empty() {
            let unreadable = |e: io::Error| invalid(format!("the tarball could not be read: {e}"));
            let (mut sha256, mut sha384) = (Sha256::new(), Sha384::new());
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = tarball.read(&mut buf).map_err(unreadable)?;
                if n == 0 {
                    break;
                }
                sha256.update(&buf[..n]);
                sha384.update(&buf[..n]);
            }
            let (sha256, sha384) = (sha256.finalize().to_vec(), sha384.finalize().to_vec());
            for d in &deferred {
                let expected = match d.alg {
                    Later::Sha256 => &sha256,
                    Later::Sha384 => &sha384,
                };
                if &d.claimed != expected {
                    return Err(integrity_mismatch(&d.token, &integrity));
                }
            }
            tarball.seek(SeekFrom::Start(0)).map_err(unreadable)?;
        }

        // The tarball itself.
        let info = inspect_tarball(tarball, limits)?;
        match info.package_json.get("name").and_then(Value::as_str) {
            Some(n) if n == name => {}
            Some(n) => {
                return Err(invalid(format!(
                    "package.json in the tarball names package {n:?}, but the request publishes {name:?}"
                )));
            }
            None => return Err(invalid("package.json in the tarball has no \"name\"".into())),
        }
        match info.package_json.get("version").and_then(Value::as_str) {
            Some(v) if normalize_version(v).as_ref() == Ok(&version) => {}
            Some(v) => {
                return Err(invalid(format!(
                    "package.json in the tarball has version {v:?}, but the request publishes {version}"
                )));
            }
            None => return Err(invalid("package.json in the tarball has no \"version\"".into())),
        }

        // Dist-tags: all must point at this version.
        let mut dist_tags = BTreeMap::new();
        match body.remove("dist-tags") {
            None | Some(Value::Null) => {}
            Some(Value::Object(tags)) => {
                for (tag, target) in tags {
                    validate_dist_tag(&tag)?;
                    let Some(target) = target.as_str() else {
                        return Err(invalid(format!(
                            "dist-tag {tag:?} does not point at a version string"
                        )));
                    };
                    if normalize_version(target).as_ref() != Ok(&version) {
                        return Err(invalid(format!(
                            "dist-tag {tag:?} points at {target:?}, but this request publishes {version}"
                        )));
                    }
                    dist_tags.insert(tag, version.clone());
                }
            }
            Some(_) => {
                return Err(invalid(
                    "\"dist-tags\" in the publish body is not an object".into(),
                ));
            }
        }
        if dist_tags.is_empty() {
            dist_tags.insert("latest".to_owned(), version.clone());
        }

        // The manifest to store.
        if !manifest.contains_key("readme")
            && let Some(Value::String(readme)) = body.remove("readme")
        {
            manifest.insert("readme".into(), Value::String(readme));
        }
        manifest.retain(|k, _| !k.starts_with('_') || KEEP_INTERNAL.contains(&k.as_str()));
        manifest.insert("_id".into(), Value::String(format!("{name}@{version}")));
        manifest.insert("name".into(), Value::String(name.clone()));
        manifest.insert("version".into(), Value::String(version.clone()));
        let mut dist = Map::new();
        dist.insert("integrity".into(), Value::String(integrity.clone()));
        dist.insert("shasum".into(), Value::String(shasum.clone()));
        dist.insert("fileCount".into(), Value::from(info.file_count));
        dist.insert("unpackedSize".into(), Value::from(info.unpacked_size));
        manifest.insert("dist".into(), Value::Object(dist));
        manifest.insert("_hasShrinkwrap".into(), Value::Bool(info.has_shrinkwrap));
        if has_install_script(&manifest, info.has_binding_gyp) {
            manifest.insert("hasInstallScript".into(), Value::Bool(true));
        } else {
            manifest.shift_remove("hasInstallScript");
        }

        Ok(Publish {
            key,
            name,
            version,
            manifest: Value::Object(manifest),
            dist_tags,
            size,
            tarball_name,
            shasum,
            integrity,
        })
    }
}

/// Parses any `PUT /{name}` body held in memory: a publish when it carries
/// `_attachments`, a metadata update otherwise; the checks of
/// [`PutBody::into_request`] and [`PendingPublish::finish`]. Requests are
/// read as streams instead ([`read_put_body`](super::read_put_body)); this
/// is for bodies already in memory (and tests).
pub fn parse_package_put(
    name: &str,
    body: &[u8],
    limits: &ArchiveLimits,
    current: &[StoredVersion],
) -> Result<PackagePut, FormatError> {
    let (body, tarball) = read_in_memory(body)?;
    match body.into_request(name, current)? {
        PutRequest::Publish(p) => Ok(PackagePut::Publish(Box::new(
            p.finish(io::Cursor::new(tarball), limits)?,
        ))),
        PutRequest::Update(u) => Ok(PackagePut::Update(u)),
    }
}

/// Parses and validates the body `npm publish` sends to `PUT /{name}`,
/// held in memory.
///
/// Checks: a valid new-package name (and `_id`, if present, equal to it);
/// exactly one version, valid semver, whose manifest names the same package
/// and version; exactly one attachment named after them, valid base64, with
/// a matching `length`; `dist.shasum` and `dist.integrity`, if given, match
/// the tarball; the tarball is a gzip-compressed tar whose entries stay
/// inside one top-level folder (no absolute paths, `..` or escaping links),
/// within `limits`, and whose `package.json` has the same name and version.
/// The caller must still check that `name` matches the URL
/// ([`parse_package_put`] does).
pub fn parse_publish(body: &[u8], limits: &ArchiveLimits) -> Result<Publish, FormatError> {
    let (body, tarball) = read_in_memory(body)?;
    check_publish(body)?.finish(io::Cursor::new(tarball), limits)
}

/// Reads a body held in memory, keeping its tarball.
fn read_in_memory(body: &[u8]) -> Result<(PutBody, Vec<u8>), FormatError> {
    let unlimited = BodyLimits {
        max_metadata_bytes: u64::MAX,
        max_metadata_values: u64::MAX,
        max_tarball_bytes: u64::MAX,
    };
    let mut tarball = Vec::new();
    let read = read_put_body(body, &unlimited, &mut |chunk: &[u8]| {
        tarball.extend_from_slice(chunk);
        Ok(())
    });
    match read {
        Ok(b) => Ok((b, tarball)),
        Err(BodyError::Format(e)) => Err(e),
        Err(BodyError::Io(e)) => Err(invalid(format!("the request body could not be read: {e}"))),
    }
}

pub(crate) fn parse_body(body: &[u8]) -> Result<Map<String, Value>, FormatError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(FormatError::invalid("the request body is not a JSON object")),
        Err(e) => Err(FormatError::invalid(format!(
            "the request body is not valid JSON: {e}"
        ))),
    }
}

fn invalid(msg: String) -> FormatError {
    FormatError::Invalid(msg)
}

/// Everything about a publish body that does not need the tarball's bytes
/// (its size and digests were computed while it streamed).
fn check_publish(put: PutBody) -> Result<PendingPublish, FormatError> {
    let PutBody {
        fields: mut body,
        versions,
        attachments,
        values_left,
        max_values,
    } = put;
    let name = match body.get("name") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(invalid("the publish body has no \"name\" string".into())),
    };
    validate_package_name(&name)?;
    if let Some(id) = body.get("_id")
        && id.as_str() != Some(name.as_str())
    {
        return Err(invalid(format!(
            "the publish body's _id {id} differs from its name {name:?}"
        )));
    }

    // The one version and its manifest.
    let mut versions = match versions {
        Versions::Raw(v) => v,
        Versions::Absent => return Err(invalid("the publish body has no \"versions\"".into())),
        Versions::NotObject => {
            return Err(invalid(
                "\"versions\" in the publish body is not an object".into(),
            ));
        }
    };
    if versions.len() != 1 {
        let listed: Vec<&str> = versions.iter().map(|m| m.version.as_str()).collect();
        return Err(invalid(if listed.is_empty() {
            "the publish body lists no version".into()
        } else {
            format!(
                "the publish body lists {} versions ({}); publish one version at a time",
                listed.len(),
                listed.join(", ")
            )
        }));
    }
    let Some(RawManifest {
        version: raw_version,
        json,
        values,
    }) = versions.pop()
    else {
        return Err(invalid("the publish body lists no version".into()));
    };
    let version = normalize_version(&raw_version)?;
    if values > values_left {
        return Err(too_many_values(max_values));
    }
    let manifest: Value = serde_json::from_slice(&json).map_err(|e| {
        invalid(format!(
            "the manifest of version {raw_version} is not valid JSON: {e}"
        ))
    })?;
    drop(json);
    let Value::Object(manifest) = manifest else {
        return Err(invalid(format!(
            "the manifest of version {raw_version} is not a JSON object"
        )));
    };
    match manifest.get("name").and_then(Value::as_str) {
        Some(n) if n == name => {}
        Some(n) => {
            return Err(invalid(format!(
                "the manifest of version {raw_version} names package {n:?}, but the request publishes {name:?}"
            )));
        }
        None => {
            return Err(invalid(format!(
                "the manifest of version {raw_version} has no \"name\""
            )));
        }
    }
    match manifest.get("version").and_then(Value::as_str) {
        Some(v) if normalize_version(v).as_ref() == Ok(&version) => {}
        Some(v) => {
            return Err(invalid(format!(
                "the manifest of version {raw_version} says version {v:?}; the two must agree"
            )));
        }
        None => {
            return Err(invalid(format!(
                "the manifest of version {raw_version} has no \"version\""
            )));
        }
    }

    // The one attachment: the tarball.
    let attachments = match attachments {
        Some(a) => a,
        None => match body.remove("_attachments") {
            None | Some(Value::Null) => {
                return Err(invalid(
                    "the publish body has no tarball (\"_attachments\" is missing)".into(),
                ));
            }
            Some(_) => {
                return Err(invalid(
                    "\"_attachments\" in the publish body is not an object".into(),
                ));
            }
        },
    };
    if attachments.iter().any(|a| a.file.ends_with(".sigstore")) {
        return Err(invalid(
            "provenance attestations (--provenance) are not supported by this registry".into(),
        ));
    }
    if attachments.len() != 1 {
        return Err(invalid(format!(
            "the publish body carries {} attachments; expected exactly one tarball",
            attachments.len()
        )));
    }
    let Some(Attachment { file, fields, data }) = attachments.into_iter().next() else {
        return Err(invalid("the publish body has no tarball".into()));
    };
    let tarball_name = tarball_file_name(&name, &version);
    let accepted = [
        format!("{name}-{raw_version}.tgz"),
        format!("{name}-{version}.tgz"),
        tarball_file_name(&name, &raw_version),
        tarball_name.clone(),
    ];
    if !accepted.contains(&file) {
        return Err(invalid(format!(
            "attachment {file:?} does not match {name}@{version} (expected {name}-{version}.tgz)"
        )));
    }
    let Some(attachment) = fields else {
        return Err(invalid(format!("attachment {file:?} is not a JSON object")));
    };
    let digests = match data {
        Data::Streamed(d) => d,
        Data::Invalid(why) => return Err(invalid(why)),
        Data::Absent | Data::Skipped => {
            return Err(invalid(format!(
                "attachment {file:?} has no base64 \"data\" string"
            )));
        }
    };
    match attachment.get("length") {
        None | Some(Value::Null) => {}
        Some(len) => match len.as_u64() {
            Some(n) if n == digests.size => {}
            Some(n) => {
                return Err(invalid(format!(
                    "attachment {file:?}: \"length\" says {n} bytes, but \"data\" decodes to {} bytes",
                    digests.size
                )));
            }
            None => {
                return Err(invalid(format!(
                    "attachment {file:?}: \"length\" is not a number"
                )));
            }
        },
    }
    if digests.size == 0 {
        return Err(invalid(format!("attachment {file:?} is empty")));
    }

    // Digests, checked against what the client claims.
    let shasum = hex::encode(digests.sha1);
    let integrity = format!("sha512-{}", STANDARD.encode(digests.sha512));
    let mut deferred = Vec::new();
    if let Some(dist) = manifest.get("dist") {
        let Some(dist) = dist.as_object() else {
            return Err(invalid("\"dist\" in the manifest is not an object".into()));
        };
        match dist.get("shasum") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s.is_empty() || s.eq_ignore_ascii_case(&shasum) => {}
            Some(s) => {
                return Err(invalid(format!(
                    "dist.shasum {s} does not match the tarball (its sha1 is {shasum})"
                )));
            }
        }
        match dist.get("integrity") {
            None | Some(Value::Null) => {}
            Some(Value::String(sri)) => {
                deferred = check_integrity(sri, &digests.sha1, &digests.sha512, &integrity)?;
            }
            Some(other) => return Err(invalid(format!("dist.integrity {other} is not a string"))),
        }
    }

    Ok(PendingPublish {
        key: version_key(&name, &version)?,
        name,
        version,
        tarball_name,
        manifest,
        body,
        size: digests.size,
        shasum,
        integrity,
        deferred,
    })
}

/// Whether installing runs a script: `preinstall`, `install` or
/// `postinstall`, or an implicit `node-gyp rebuild` for a `binding.gyp`.
fn has_install_script(manifest: &Map<String, Value>, has_binding_gyp: bool) -> bool {
    let scripts = manifest.get("scripts").and_then(Value::as_object);
    let has = |s: &str| {
        scripts
            .and_then(|m| m.get(s))
            .and_then(Value::as_str)
            .is_some_and(|v| !v.is_empty())
    };
    let gyp = has_binding_gyp
        && manifest.get("gypfile") != Some(&Value::Bool(false))
        && !has("install")
        && !has("preinstall");
    has("preinstall") || has("install") || has("postinstall") || gyp
}

fn integrity_mismatch(token: &str, computed: &str) -> FormatError {
    invalid(format!(
        "dist.integrity {token:?} does not match the tarball (its integrity is {computed})"
    ))
}

/// Checks every hash of a Subresource Integrity string whose algorithm is
/// known (sha1, sha256, sha384, sha512) against the tarball: sha1 and
/// sha512 now, from the digests computed while streaming; sha256 and sha384
/// are returned, to be checked against the tarball read back.
fn check_integrity(
    sri: &str,
    sha1: &[u8],
    sha512: &[u8],
    computed: &str,
) -> Result<Vec<Deferred>, FormatError> {
    let mut deferred = Vec::new();
    for token in sri.split_whitespace() {
        let malformed = || invalid(format!("dist.integrity {sri:?} is not a valid integrity string"));
        let (alg, rest) = token.split_once('-').ok_or_else(malformed)?;
        let b64 = rest.split('?').next().unwrap_or(rest);
        let now: Option<&[u8]> = match alg {
            "sha512" => Some(sha512),
            "sha1" => Some(sha1),
            "sha256" | "sha384" => None,
            _ => continue,
        };
        let claimed = BASE64.decode(b64).map_err(|_| malformed())?;
        match now {
            Some(expected) if claimed != expected => return Err(integrity_mismatch(token, computed)),
            Some(_) => {}
            None => deferred.push(Deferred {
                alg: if alg == "sha256" {
                    Later::Sha256
                } else {
                    Later::Sha384
                },
                claimed,
                token: token.to_owned(),
            }),
        }
    }
    Ok(deferred)
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use flate2::Compression;
    use flate2::write::GzEncoder;
    use proptest::prelude::*;
    use serde_json::json;
    use sha1::Sha1;
    use sha2::Sha512;

    use super::*;

    /// One tar entry for [`tar_of`]; names are written raw, unchecked.
    enum E<'a> {
        File(&'a str, &'a [u8]),
        Dir(&'a str),
        Symlink(&'a str, &'a str),
        Hardlink(&'a str, &'a str),
        Fifo(&'a str),
        LongName(&'a str),
    }

    fn tar_of(entries: &[E]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let (path, data, kind, link): (&str, &[u8], tar::EntryType, &str) = match e {
                E::File(p, d) => (p, d, tar::EntryType::Regular, ""),
                E::Dir(p) => (p, b"", tar::EntryType::Directory, ""),
                E::Symlink(p, l) => (p, b"", tar::EntryType::Symlink, l),
                E::Hardlink(p, l) => (p, b"", tar::EntryType::Link, l),
                E::Fifo(p) => (p, b"", tar::EntryType::Fifo, ""),
                E::LongName(n) => ("././@LongLink", n.as_bytes(), tar::EntryType::GNULongName, ""),
            };
            let mut h = tar::Header::new_gnu();
            {
                let gnu = h.as_gnu_mut().unwrap();
                gnu.name[..path.len()].copy_from_slice(path.as_bytes());
                gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            h.set_entry_type(kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append(&h, data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn tgz(entries: &[E]) -> Vec<u8> {
        gzip(&tar_of(entries))
    }

    fn pkg_json(name: &str, version: &str) -> Vec<u8> {
        json!({"name": name, "version": version, "main": "index.js"})
            .to_string()
            .into_bytes()
    }

    fn good_tarball(name: &str, version: &str) -> Vec<u8> {
        tgz(&[
            E::Dir("package/"),
            E::File("package/package.json", &pkg_json(name, version)),
            E::File("package/index.js", b"module.exports = 1;\n"),
        ])
    }

    /// A body like the one `npm publish` sends.
    fn body_for(name: &str, version: &str, tarball: &[u8]) -> Value {
        let shasum = hex::encode(Sha1::digest(tarball));
        let integrity = format!("sha512-{}", STANDARD.encode(Sha512::digest(tarball)));
        json!({
            "_id": name,
            "name": name,
            "description": "a test package",
            "dist-tags": {"latest": version},
            "versions": {
                version: {
                    "_id": format!("{name}@{version}"),
                    "name": name,
                    "version": version,
                    "main": "index.js",
                    "readme": "# hello",
                    "_resolved": "/home/me/pkg",
                    "_npmUser": {"name": "mallory"},
                    "_nodeVersion": "22.1.0",
                    "_npmVersion": "11.0.0",
                    "hasInstallScript": true,
                    "dist": {
                        "shasum": shasum,
                        "integrity": integrity,
                        "tarball": format!("http://localhost/{name}/-/x.tgz"),
                    },
                },
            },
            "access": null,
            "_attachments": {
                format!("{name}-{version}.tgz"): {
                    "content_type": "application/octet-stream",
                    "data": STANDARD.encode(tarball),
                    "length": tarball.len(),
                },
            },
        })
    }

    fn publish(body: &Value) -> Result<Publish, FormatError> {
        parse_publish(body.to_string().as_bytes(), &ArchiveLimits::default())
    }

    fn publish_tarball(tarball: &[u8]) -> Result<Publish, FormatError> {
        publish(&body_for("p", "1.0.0", tarball))
    }

    #[track_caller]
    fn assert_invalid(r: Result<Publish, FormatError>, needles: &[&str]) {
        match r {
            Err(FormatError::Invalid(msg)) => {
                for n in needles {
                    assert!(msg.contains(n), "{msg:?} does not mention {n:?}");
                }
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[track_caller]
    fn assert_too_large(r: Result<Publish, FormatError>) {
        assert!(
            matches!(r, Err(FormatError::TooLarge(_))),
            "expected TooLarge, got {r:?}"
        );
    }

    fn limits(max_unpacked_bytes: u64) -> ArchiveLimits {
        ArchiveLimits {
            max_unpacked_bytes,
            max_entries: 100,
            max_metadata_bytes: 4096,
        }
    }

    #[test]
    fn good_plain_publish() {
        let tarball = good_tarball("left-pad", "1.2.3");
        let p = publish(&body_for("left-pad", "1.2.3", &tarball)).unwrap();
        assert_eq!(p.name, "left-pad");
        assert_eq!(p.version, "1.2.3");
        assert_eq!(p.key.as_str(), "pkg/left-pad/1.2.3");
        assert_eq!(p.size, tarball.len() as u64);
        assert_eq!(p.tarball_name, "left-pad-1.2.3.tgz");
        assert_eq!(
            p.dist_tags,
            BTreeMap::from([("latest".to_owned(), "1.2.3".to_owned())])
        );
        assert_eq!(p.shasum, hex::encode(Sha1::digest(&tarball)));
        assert!(p.integrity.starts_with("sha512-"));
        let m = &p.manifest;
        assert_eq!(m["_id"], "left-pad@1.2.3");
        assert_eq!(m["readme"], "# hello");
        assert_eq!(m["_nodeVersion"], "22.1.0");
        assert!(m.get("_resolved").is_none() && m.get("_npmUser").is_none());
        assert!(
            m.get("hasInstallScript").is_none(),
            "client's claim is recomputed"
        );
        assert_eq!(m["_hasShrinkwrap"], false);
        let unpacked = pkg_json("left-pad", "1.2.3").len() + 20;
        assert_eq!(
            m["dist"],
            json!({"integrity": p.integrity, "shasum": p.shasum, "fileCount": 2, "unpackedSize": unpacked})
        );
        let stored = super::super::parse_version_item_metadata(&p.item_metadata()).unwrap();
        assert_eq!(&stored, m);
    }

    #[test]
    fn good_scoped_publish() {
        let tarball = good_tarball("@scope/pkg", "2.0.0-beta.1");
        let mut body = body_for("@scope/pkg", "2.0.0-beta.1", &tarball);
        body["dist-tags"] = json!({"beta": "2.0.0-beta.1"});
        let bytes = body.to_string().into_bytes();
        let put = parse_package_put("@scope/pkg", &bytes, &ArchiveLimits::default(), &[]).unwrap();
        let PackagePut::Publish(p) = put else {
            panic!("not a publish")
        };
        assert_eq!(p.key.as_str(), "pkg/@scope/pkg/2.0.0-beta.1");
        assert_eq!(p.tarball_name, "pkg-2.0.0-beta.1.tgz");
        assert_eq!(
            p.dist_tags,
            BTreeMap::from([("beta".to_owned(), "2.0.0-beta.1".to_owned())])
        );
        // The URL must name the same package.
        let err = parse_package_put("@scope/other", &bytes, &ArchiveLimits::default(), &[]).unwrap_err();
        assert!(err.to_string().contains("@scope/other"), "{err}");
        // The older unscoped attachment name is accepted too.
        let mut body = body_for("@scope/pkg", "2.0.0-beta.1", &tarball);
        let att = body["_attachments"].as_object_mut().unwrap();
        let a = att.remove("@scope/pkg-2.0.0-beta.1.tgz").unwrap();
        att.insert("pkg-2.0.0-beta.1.tgz".into(), a);
        assert!(publish(&body).is_ok());
    }

    #[test]
    fn any_single_top_folder_and_pax_headers() {
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_path("pkg-1.0.0/package.json").unwrap();
        let pj = pkg_json("p", "1.0.0");
        h.set_size(pj.len() as u64);
        h.set_cksum();
        tar.append_pax_extensions([("comment", b"x".as_slice())]).unwrap();
        tar.append(&h, pj.as_slice()).unwrap();
        let long = format!("pkg-1.0.0/{}.js", "d/".repeat(80));
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        tar.append_data(&mut h, &long, b"1".as_slice()).unwrap();
        let tarball = gzip(&tar.into_inner().unwrap());
        let p = publish_tarball(&tarball).unwrap();
        assert_eq!(p.manifest["dist"]["fileCount"], 2);
    }

    #[test]
    fn name_and_version_mismatches() {
        assert_invalid(
            publish_tarball(&good_tarball("other", "1.0.0")),
            &["\"other\"", "\"p\""],
        );
        assert_invalid(publish_tarball(&good_tarball("p", "1.0.1")), &["1.0.1", "1.0.0"]);
        let mut body = body_for("p", "1.0.0", &good_tarball("p", "1.0.0"));
        body["versions"]["1.0.0"]["name"] = json!("q");
        assert_invalid(publish(&body), &["\"q\"", "\"p\""]);
        let mut body = body_for("p", "1.0.0", &good_tarball("p", "1.0.0"));
        body["versions"]["1.0.0"]["version"] = json!("1.0.2");
        assert_invalid(publish(&body), &["1.0.2"]);
        let mut body = body_for("p", "1.0.0", &good_tarball("p", "1.0.0"));
        body["_id"] = json!("q");
        assert_invalid(publish(&body), &["_id"]);
        let mut body = body_for("p", "1.0.0", &good_tarball("p", "1.0.0"));
        body["dist-tags"] = json!({"latest": "0.9.0"});
        assert_invalid(publish(&body), &["0.9.0"]);
        let mut body = body_for("p", "1.0.0", &good_tarball("p", "1.0.0"));
        body["dist-tags"] = json!({"1.0.0": "1.0.0"});
        assert_invalid(publish(&body), &["dist-tag"]);
        let body = body_for("Upper", "1.0.0", &good_tarball("Upper", "1.0.0"));
        assert_invalid(publish(&body), &["lowercase"]);
    }

    #[test]
    fn attachment_problems() {
        let tarball = good_tarball("p", "1.0.0");
        let mut body = body_for("p", "1.0.0", &tarball);
        body["_attachments"]["p-1.0.0.tgz"]["data"] = json!("!!!not base64");
        assert_invalid(publish(&body), &["base64"]);

        let mut body = body_for("p", "1.0.0", &tarball);
        body["_attachments"]["p-1.0.0.tgz"]["length"] = json!(tarball.len() + 1);
        assert_invalid(publish(&body), &["length", &tarball.len().to_string()]);

        let mut body = body_for("p", "1.0.0", &tarball);
        let a = body["_attachments"]
            .as_object_mut()
            .unwrap()
            .remove("p-1.0.0.tgz")
            .unwrap();
        body["_attachments"]["p-9.9.9.tgz"] = a;
        assert_invalid(publish(&body), &["p-9.9.9.tgz"]);

        let mut body = body_for("p", "1.0.0", &tarball);
        body["_attachments"]["p-1.0.0.sigstore"] = json!({"data": ""});
        assert_invalid(publish(&body), &["provenance"]);

        let mut body = body_for("p", "1.0.0", &tarball);
        body["_attachments"] = json!({});
        assert_invalid(publish(&body), &["exactly one"]);
        body.as_object_mut().unwrap().remove("_attachments");
        assert_invalid(publish(&body), &["no tarball"]);
    }

    #[test]
    fn not_gzip_or_not_tar() {
        assert_invalid(
            publish_tarball(&tar_of(&[E::File(
                "package/package.json",
                &pkg_json("p", "1.0.0"),
            )])),
            &["gzip"],
        );
        assert_invalid(
            publish_tarball(&gzip(b"this is not a tar archive, just text")),
            &["tar"],
        );
        let mut truncated = good_tarball("p", "1.0.0");
        truncated.truncate(truncated.len() - 6);
        assert!(publish_tarball(&truncated).is_err());
    }

    #[test]
    fn unsafe_entries() {
        let pj = pkg_json("p", "1.0.0");
        let with = |e: E| tgz(&[E::File("package/package.json", &pj), e]);
        assert_invalid(
            publish_tarball(&with(E::File("package/../../x", b"x"))),
            &["'..'", "package/../../x"],
        );
        assert_invalid(
            publish_tarball(&with(E::File("/etc/cron.d/x", b"x"))),
            &["absolute", "/etc/cron.d/x"],
        );
        assert_invalid(publish_tarball(&with(E::File("C:\\x", b"x"))), &["absolute"]);
        assert_invalid(
            publish_tarball(&with(E::File("package\\..\\..\\x", b"x"))),
            &["'..'"],
        );
        assert_invalid(
            publish_tarball(&with(E::Symlink("package/l", "../../etc/passwd"))),
            &["symlink"],
        );
        assert_invalid(
            publish_tarball(&with(E::Symlink("package/l", "/etc/passwd"))),
            &["symlink"],
        );
        assert_invalid(
            publish_tarball(&with(E::Hardlink("package/l", "etc/passwd"))),
            &["hard link"],
        );
        assert_invalid(
            publish_tarball(&with(E::Fifo("package/f"))),
            &["unsupported type"],
        );
        assert_invalid(
            publish_tarball(&with(E::File("other/x", b"x"))),
            &["top-level folder"],
        );
        assert_invalid(
            publish_tarball(&with(E::File("README", b"x"))),
            &["outside the package folder"],
        );
        // Links that stay inside are fine.
        assert!(publish_tarball(&with(E::Symlink("package/lib/l", "../index.js"))).is_ok());
        assert!(publish_tarball(&with(E::Hardlink("package/l", "package/package.json"))).is_ok());
        // No package.json, or a broken one.
        assert_invalid(
            publish_tarball(&tgz(&[E::File("package/index.js", b"x")])),
            &["package/package.json"],
        );
        assert_invalid(
            publish_tarball(&tgz(&[E::File("package/package.json", b"{")])),
            &["package.json"],
        );
    }

    #[test]
    fn size_bombs() {
        let pj = pkg_json("p", "1.0.0");
        let zeros = vec![0u8; 4 << 20];
        let big = tgz(&[
            E::File("package/package.json", &pj),
            E::File("package/big", &zeros),
        ]);
        assert!(big.len() < 64 << 10, "the bomb is small: {}", big.len());
        let body = body_for("p", "1.0.0", &big).to_string();
        assert_too_large(parse_publish(body.as_bytes(), &limits(1 << 20)));
        assert!(parse_publish(body.as_bytes(), &limits(8 << 20)).is_ok());

        // Zeros after the end of the archive still count.
        let mut tar = tar_of(&[E::File("package/package.json", &pj)]);
        tar.extend_from_slice(&zeros);
        let body = body_for("p", "1.0.0", &gzip(&tar)).to_string();
        assert_too_large(parse_publish(body.as_bytes(), &limits(1 << 20)));

        // A huge package.json, too many entries, a huge long name.
        let huge = format!(
            "{{\"name\":\"p\",\"version\":\"1.0.0\",\"x\":\"{}\"}}",
            " ".repeat(5000)
        );
        let t = tgz(&[E::File("package/package.json", huge.as_bytes())]);
        let body = body_for("p", "1.0.0", &t).to_string();
        assert_too_large(parse_publish(body.as_bytes(), &limits(1 << 20)));
        let names: Vec<String> = (0..101).map(|i| format!("package/{i}")).collect();
        let mut entries = vec![E::File("package/package.json", &pj)];
        entries.extend(names.iter().map(|n| E::File(n, b"")));
        let body = body_for("p", "1.0.0", &tgz(&entries)).to_string();
        assert_too_large(parse_publish(body.as_bytes(), &limits(1 << 20)));
        let long = format!("package/{}", "a".repeat(200_000));
        let t = tgz(&[
            E::File("package/package.json", &pj),
            E::LongName(&long),
            E::File("x", b""),
        ]);
        let body = body_for("p", "1.0.0", &t).to_string();
        assert_too_large(parse_publish(body.as_bytes(), &limits(1 << 20)));
    }

    #[test]
    fn wrong_digests() {
        let tarball = good_tarball("p", "1.0.0");
        let mut body = body_for("p", "1.0.0", &tarball);
        body["versions"]["1.0.0"]["dist"]["shasum"] = json!("0".repeat(40));
        assert_invalid(
            publish(&body),
            &["dist.shasum", &hex::encode(Sha1::digest(&tarball))],
        );

        let mut body = body_for("p", "1.0.0", &tarball);
        let wrong = format!("sha512-{}", STANDARD.encode([0u8; 64]));
        body["versions"]["1.0.0"]["dist"]["integrity"] = json!(wrong);
        assert_invalid(publish(&body), &["dist.integrity"]);

        let mut body = body_for("p", "1.0.0", &tarball);
        body["versions"]["1.0.0"]["dist"]["integrity"] = json!("sha512-@@@");
        assert_invalid(publish(&body), &["not a valid integrity"]);

        // Several hashes, unknown algorithms ignored, upper-case shasum.
        let mut body = body_for("p", "1.0.0", &tarball);
        let sri = format!(
            "sha1-{} md5-xyz sha256-{}?opt",
            STANDARD.encode(Sha1::digest(&tarball)),
            STANDARD.encode(Sha256::digest(&tarball))
        );
        body["versions"]["1.0.0"]["dist"]["integrity"] = json!(sri);
        body["versions"]["1.0.0"]["dist"]["shasum"] =
            json!(hex::encode(Sha1::digest(&tarball)).to_uppercase());
        assert!(publish(&body).is_ok());
    }

    #[test]
    fn version_problems() {
        let tarball = good_tarball("p", "1.0.0");
        let mut body = body_for("p", "1.0.0", &tarball);
        let v = body["versions"]["1.0.0"].clone();
        body["versions"]["1.0.1"] = v;
        assert_invalid(
            publish(&body),
            &["2 versions", "1.0.0, 1.0.1", "one version at a time"],
        );
        body["versions"] = json!({});
        assert_invalid(publish(&body), &["no version"]);

        let tarball = good_tarball("p", "1.0");
        assert_invalid(publish(&body_for("p", "1.0", &tarball)), &["\"1.0\"", "semver"]);
    }

    #[test]
    fn manifest_values_count_against_the_body_limit() {
        let tarball = good_tarball("p", "1.0.0");
        let mut body = body_for("p", "1.0.0", &tarball);
        body["versions"]["1.0.0"]["keywords"] = json!(vec!["k"; 500]);
        let bytes = body.to_string().into_bytes();
        let request = |max_metadata_values| {
            let limits = BodyLimits {
                max_metadata_bytes: 1 << 20,
                max_metadata_values,
                max_tarball_bytes: 1 << 20,
            };
            match read_put_body(bytes.as_slice(), &limits, &mut |_| Ok(())) {
                Ok(b) => b.into_request("p", &[]),
                Err(e) => panic!("{e:?}"),
            }
        };
        assert!(
            matches!(request(400), Err(FormatError::TooLarge(m)) if m.contains("400 JSON values")),
            "the manifest is parsed only once the body is known to publish"
        );
        let Ok(PutRequest::Publish(p)) = request(10_000) else {
            panic!("not a publish")
        };
        assert_eq!(p.version(), "1.0.0");
        assert_eq!(p.size(), tarball.len() as u64);
        let done = p
            .finish(io::Cursor::new(&tarball), &ArchiveLimits::default())
            .unwrap();
        assert_eq!(done.manifest["keywords"].as_array().unwrap().len(), 500);
    }

    #[test]
    fn sha256_and_sha384_integrity_are_checked_from_the_tarball() {
        let tarball = good_tarball("p", "1.0.0");
        let sri = |d: &[u8]| STANDARD.encode(d);
        let mut body = body_for("p", "1.0.0", &tarball);
        body["versions"]["1.0.0"]["dist"]["integrity"] = json!(format!(
            "sha256-{} sha384-{}",
            sri(&Sha256::digest(&tarball)),
            sri(&Sha384::digest(&tarball))
        ));
        assert!(publish(&body).is_ok());
        body["versions"]["1.0.0"]["dist"]["integrity"] = json!(format!("sha384-{}", sri(&[7u8; 48])));
        assert_invalid(publish(&body), &["dist.integrity", "sha384-"]);
    }

    #[test]
    fn build_metadata_is_dropped() {
        let tarball = good_tarball("p", "1.0.0+build.7");
        let p = publish(&body_for("p", "1.0.0+build.7", &tarball)).unwrap();
        assert_eq!(p.version, "1.0.0");
        assert_eq!(p.manifest["version"], "1.0.0");
        assert_eq!(p.dist_tags["latest"], "1.0.0");
        assert_eq!(p.tarball_name, "p-1.0.0.tgz");
    }

    #[test]
    fn install_scripts_and_shrinkwrap() {
        let pj = pkg_json("p", "1.0.0");
        let t = tgz(&[
            E::File("package/package.json", &pj),
            E::File("package/binding.gyp", b"{}"),
            E::File("package/npm-shrinkwrap.json", b"{}"),
        ]);
        let p = publish_tarball(&t).unwrap();
        assert_eq!(p.manifest["hasInstallScript"], true);
        assert_eq!(p.manifest["_hasShrinkwrap"], true);
        let mut body = body_for("p", "1.0.0", &good_tarball("p", "1.0.0"));
        body["versions"]["1.0.0"]["scripts"] = json!({"postinstall": "node x.js"});
        assert_eq!(publish(&body).unwrap().manifest["hasInstallScript"], true);
    }

    #[test]
    fn bodies_that_are_not_publishes() {
        for bad in [&b""[..], b"null", b"[]", b"{", b"{\"name\": 1}"] {
            assert!(parse_publish(bad, &ArchiveLimits::default()).is_err());
        }
        let body = json!({"name": "p", "_rev": "1-x", "versions": {}});
        let put =
            parse_package_put("p", body.to_string().as_bytes(), &ArchiveLimits::default(), &[]).unwrap();
        assert!(matches!(put, PackagePut::Update(u) if u.is_empty() && u.rev.as_deref() == Some("1-x")));
    }

    /// The body npm 11.19 sent for `npm publish --tag beta` of a scoped package.
    const REAL_NPM_BODY: &str = r##"{"_id":"@demo/hello","name":"@demo/hello","description":"hi","dist-tags":{"beta":"1.0.0"},"versions":{"1.0.0":{"name":"@demo/hello","version":"1.0.0","description":"hi","main":"index.js","scripts":{"postinstall":"echo hi"},"license":"MIT","readme":"# Hello\n","readmeFilename":"README.md","_id":"@demo/hello@1.0.0","_nodeVersion":"20.20.2","_npmVersion":"11.19.1","dist":{"integrity":"sha512-6u4FtIMN2APmsOzX9xz98n9uA+VKhHlnBta+wq4s4DgufdYCx4SWHUnbJKc1mS3YKptaYBqU+YWFSrhO6G7Wxg==","shasum":"5526a4df92ca98f84df8c35eb19a00369d70f3d4","tarball":"http://127.0.0.1:4873/@demo/hello/-/@demo/hello-1.0.0.tgz"}}},"access":null,"_attachments":{"@demo/hello-1.0.0.tgz":{"content_type":"application/octet-stream","data":"H4sIAAAAAAAC/+2VwUrEMBCGc/Ypwngt2Um2rVAQFFzQw17EFwjtYLOmSWmysrDsu0vdelGPWl0232XCEEjm8M3f6/pFP9PCuIZ2YhPYL4CIZZ7z7/rvqCVny6JEKcsSc85Q4pVCzpDNwDZEPTDEHxgScfz0VE+EzjdbS4J2vR9i4NdcXrDE+dBP/k9VbIJ3M/uvUH32XxZ58n8W9uB0R1DBTUOdX7RkrYcMXmkIxjuoQAoUCBk0FOrB9PHYbQ1k0Gkznj+iAzI4XglQ7aH3IRoXorYWKqC69bw1cMjAmppcGJ9cPzzBIa2bf+H/4+r2br0SXfMH+S/xS/4Xqkz+z8Elvx+VTxYmEonEmfEGGh2tDAAQAAA=","length":278}}}"##;

    #[test]
    fn real_npm_publish_body() {
        let put = parse_package_put(
            "@demo/hello",
            REAL_NPM_BODY.as_bytes(),
            &ArchiveLimits::default(),
            &[],
        )
        .unwrap();
        let PackagePut::Publish(p) = put else {
            panic!("not a publish")
        };
        assert_eq!(p.key.as_str(), "pkg/@demo/hello/1.0.0");
        assert_eq!(p.size, 278);
        assert_eq!(p.shasum, "5526a4df92ca98f84df8c35eb19a00369d70f3d4");
        assert_eq!(
            p.dist_tags,
            BTreeMap::from([("beta".to_owned(), "1.0.0".to_owned())])
        );
        assert_eq!(p.manifest["hasInstallScript"], true);
        assert_eq!(p.manifest["readme"], "# Hello\n");
        assert_eq!(p.manifest["dist"]["fileCount"], 3);
        assert!(p.manifest["dist"].get("tarball").is_none());
    }

    fn valid_tar() -> Vec<u8> {
        tar_of(&[
            E::Dir("package/"),
            E::File("package/package.json", &pkg_json("p", "1.0.0")),
            E::Symlink("package/l", "index.js"),
            E::File("package/index.js", b"module.exports = 1;\n"),
        ])
    }

    proptest! {
        #[test]
        fn parse_publish_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse_publish(&bytes, &ArchiveLimits::default());
        }

        #[test]
        fn arbitrary_tarballs_never_panic(data in proptest::collection::vec(any::<u8>(), 0..4096), gz in any::<bool>()) {
            let tarball = if gz { gzip(&data) } else { data };
            let _ = parse_publish(body_for("p", "1.0.0", &tarball).to_string().as_bytes(), &limits(1 << 20));
        }

        #[test]
        fn corrupted_tarballs_never_panic(edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..16)) {
            let mut tar = valid_tar();
            for (at, byte) in edits {
                let i = at % tar.len();
                tar[i] = byte;
            }
            let _ = parse_publish(body_for("p", "1.0.0", &gzip(&tar)).to_string().as_bytes(), &limits(1 << 20));
        }
    }
}
