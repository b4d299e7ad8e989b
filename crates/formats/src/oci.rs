//! OCI feeds: the vocabulary of the OCI Distribution Specification (v1.1)
//! and of the Docker Registry HTTP API v2 that it grew out of.
//!
//! # Item layout
//!
//! An OCI feed holds repositories (`NAME`, nested names allowed, e.g.
//! `team/app`), and three kinds of items:
//!
//! | key | metadata | blobs |
//! | --- | --- | --- |
//! | `manifest/{repo}/{digest}` | [`ManifestMeta`] | the manifest bytes as pushed, the config, every layer; for an index, the blobs of each child manifest item (so transitively everything the index needs) |
//! | `tag/{repo}/{tag}` | [`TagMeta`] `{"digest", "media_type"}` | the tagged manifest's bytes |
//! | `blob/{repo}/{digest}` | [`BlobLinkMeta`] `{"size"}` | that blob |
//!
//! A manifest item lists every blob it needs, so the store refuses to make a
//! manifest visible (locally or on a replica) before all of its content is
//! there. A tag item lists its manifest's bytes, so a replicated tag is
//! applied only once the manifest content is present; readers still resolve
//! a tag only through an existing manifest item. `blob/…` items are the
//! repository's upload links: a blob pushed (or mounted) into a repository
//! before any manifest references it. A blob is *in* a repository when a
//! link or a manifest item of that repository lists it.
//!
//! Keys and blob lists name content by its sha256 identity only. A client
//! may also write sha512 digests ([`OciDigest`]); the items record which
//! sha256 each one names ([`ManifestMeta::sha512`] and
//! [`ManifestMeta::aliases`], [`BlobLinkMeta::sha512`]), so a repository
//! serves content under both.
//!
//! Everything else (tag lists, the catalog, referrers, which blobs a
//! repository holds, the sha512 aliases) is derived from these items.

use std::fmt;

use ferry_types::{Digest, ItemKey};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// `application/vnd.oci.image.manifest.v1+json`
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// `application/vnd.oci.image.index.v1+json`
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list (multi-platform), schema 2.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// The manifest media types a feed stores.
pub const MANIFEST_MEDIA_TYPES: [&str; 4] = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST];

/// Largest manifest accepted (413 beyond).
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// Longest repository name (the part after the feed).
pub const MAX_REPOSITORY_LEN: usize = 255;
/// Longest tag (the spec's `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`).
pub const MAX_TAG_LEN: usize = 128;
/// Most descriptors (layers, or child manifests) one manifest may list.
pub const MAX_DESCRIPTORS: usize = 10_000;
/// Longest media type or artifact type.
const MAX_MEDIA_TYPE_LEN: usize = 255;

// ---------------------------------------------------------------------------
// Errors

/// The error codes of the distribution spec (`{"errors":[{"code": …}]}`),
/// plus `RANGE_INVALID`, which the reference registry sends with 416 for an
/// out-of-order chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    RangeInvalid,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            ErrorCode::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::SizeInvalid => "SIZE_INVALID",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::RangeInvalid => "RANGE_INVALID",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused request, with the spec's error code for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct OciError {
    pub code: ErrorCode,
    pub message: String,
}

impl OciError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

fn manifest_invalid(message: impl Into<String>) -> OciError {
    OciError::new(ErrorCode::ManifestInvalid, message)
}

// ---------------------------------------------------------------------------
// Names, tags, digests, references

/// Validates a repository name (without the feed): path components of
/// lowercase letters and digits, separated inside a component by `.`, `_`,
/// `__` or runs of `-` (the spec's
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`),
/// at most [`MAX_REPOSITORY_LEN`] bytes.
pub fn validate_repository(name: &str) -> Result<(), OciError> {
    let bad = |why: &str| {
        Err(OciError::new(
            ErrorCode::NameInvalid,
            format!("invalid repository name {:?}: {why}", shortened(name)),
        ))
    };
    if name.is_empty() {
        return bad("must not be empty (image references look like HOST/FEED/NAME:TAG)");
    }
    if name.len() > MAX_REPOSITORY_LEN {
        return bad(&format!("longer than {MAX_REPOSITORY_LEN} bytes"));
    }
    for component in name.split('/') {
        if !valid_component(component) {
            return bad(
                "each path component must be lowercase letters and digits, separated by '.', '_', '__' or '-'",
            );
        }
    }
    Ok(())
}

/// Whether a feed name can be the first component of OCI repository names
/// (`FEED/NAME`): letters and digits separated by `.`, `_`, `__` or runs
/// of `-`, so it neither ends in a separator nor holds two in a row.
pub fn valid_feed_component(name: &str) -> bool {
    valid_component(name)
}

fn valid_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = c.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// Validates a tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn validate_tag(tag: &str) -> Result<(), OciError> {
    let ok_first = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let ok_rest = |b: u8| b.is_ascii_alphanumeric() || b"._-".contains(&b);
    let valid = tag.len() <= MAX_TAG_LEN
        && tag.as_bytes().first().is_some_and(|&b| ok_first(b))
        && tag.bytes().skip(1).all(ok_rest);
    if valid {
        Ok(())
    } else {
        Err(manifest_invalid(format!(
            "invalid tag {:?}: tags are 1 to {MAX_TAG_LEN} characters of [A-Za-z0-9_.-], not starting with '.' or '-'",
            shortened(tag)
        )))
    }
}

/// A sha512 digest: the second algorithm the OCI image specification
/// registers (`sha512:` and 128 lowercase hex characters). Content is
/// stored under its sha256 identity; a sha512 digest is an alias that the
/// items of a repository record (see [`ManifestMeta::aliases`]).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sha512Digest([u8; 64]);

impl Sha512Digest {
    /// The digest of `data`, computed in one go (small inputs only).
    pub fn of(data: &[u8]) -> Self {
        let mut h = Sha512Hasher::default();
        h.update(data);
        h.finish()
    }

    /// Parses the bare 128-character lowercase hex form.
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 128
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return None;
        }
        let mut out = [0u8; 64];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Self(out))
    }

    pub fn as_bytes(&self) -> &[u8; 64] {
        &self.0
    }

    pub fn from_bytes(bytes: [u8; 64]) -> Self {
        Self(bytes)
    }
}

impl fmt::Display for Sha512Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha512:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Sha512Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha512:{}", &hex::encode(self.0)[..12])
    }
}

impl Serialize for Sha512Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Sha512Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.strip_prefix("sha512:")
            .and_then(Self::from_hex)
            .ok_or_else(|| serde::de::Error::custom(format!("invalid sha512 digest {s:?}")))
    }
}

/// Incremental sha512 that yields a [`Sha512Digest`].
#[derive(Clone, Default)]
pub struct Sha512Hasher(sha2::Sha512);

impl Sha512Hasher {
    pub fn update(&mut self, data: &[u8]) {
        sha2::Digest::update(&mut self.0, data);
    }
    pub fn finish(self) -> Sha512Digest {
        Sha512Digest(sha2::Digest::finalize(self.0).into())
    }
}

/// A digest as OCI clients write it: sha256 (the content's identity in
/// the blob store) or sha512 (an alias of one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OciDigest {
    Sha256(Digest),
    Sha512(Sha512Digest),
}

impl OciDigest {
    /// The sha256 identity, when the digest is one.
    pub fn sha256(&self) -> Option<Digest> {
        match self {
            OciDigest::Sha256(d) => Some(*d),
            OciDigest::Sha512(_) => None,
        }
    }
}

impl fmt::Display for OciDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OciDigest::Sha256(d) => write!(f, "{d}"),
            OciDigest::Sha512(d) => write!(f, "{d}"),
        }
    }
}

impl From<Digest> for OciDigest {
    fn from(d: Digest) -> Self {
        OciDigest::Sha256(d)
    }
}

/// Parses a digest as clients send it (`algorithm:encoded`, the image
/// specification's grammar). sha256 and sha512 are accepted; a well-formed
/// digest of another algorithm is `UNSUPPORTED`, a malformed one
/// `DIGEST_INVALID`.
pub fn parse_digest(s: &str) -> Result<OciDigest, OciError> {
    let invalid = |why: &str| {
        OciError::new(
            ErrorCode::DigestInvalid,
            format!("invalid digest {:?}: {why}", shortened(s)),
        )
    };
    let Some((alg, encoded)) = s.split_once(':') else {
        return Err(invalid("expected ALGORITHM:HEX"));
    };
    let alg_ok = !alg.is_empty()
        && alg
            .split(['+', '.', '_', '-'])
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    let enc_ok = !encoded.is_empty()
        && encoded
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"=_-".contains(&b));
    if !alg_ok || !enc_ok {
        return Err(invalid("expected ALGORITHM:HEX"));
    }
    match alg {
        "sha256" => Digest::from_hex(encoded)
            .map(OciDigest::Sha256)
            .map_err(|_| invalid("a sha256 digest is 64 lowercase hex characters")),
        "sha512" => Sha512Digest::from_hex(encoded)
            .map(OciDigest::Sha512)
            .ok_or_else(|| invalid("a sha512 digest is 128 lowercase hex characters")),
        _ => Err(OciError::new(
            ErrorCode::Unsupported,
            format!(
                "digest algorithm {alg:?} is not supported; this registry accepts sha256 and sha512 digests"
            ),
        )),
    }
}

/// `s` cut to its first 140 characters (a digest is at most 135), so an
/// error message never echoes a huge value back.
fn shortened(s: &str) -> String {
    ferry_types::shortened(s, 140)
}

/// The sha256 digest an item key ends with (items are keyed by content
/// identity only).
fn parse_identity(s: &str) -> Option<Digest> {
    parse_digest(s).ok()?.sha256()
}

/// What `/manifests/{reference}` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(String),
    Digest(OciDigest),
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => f.write_str(t),
            Reference::Digest(d) => write!(f, "{d}"),
        }
    }
}

/// A tag, or a digest when the reference contains `:` (tags cannot).
pub fn parse_reference(s: &str) -> Result<Reference, OciError> {
    if s.contains(':') {
        parse_digest(s).map(Reference::Digest)
    } else {
        validate_tag(s)?;
        Ok(Reference::Tag(s.to_owned()))
    }
}

/// Parses a chunk's `Content-Range` (`START-END`, inclusive; `bytes `,
/// `bytes=` and a `/TOTAL` suffix tolerated). None if malformed.
pub fn parse_content_range(s: &str) -> Option<(u64, u64)> {
    let s = s.trim();
    let s = s
        .strip_prefix("bytes=")
        .or_else(|| s.strip_prefix("bytes "))
        .unwrap_or(s)
        .trim();
    let s = s.split_once('/').map_or(s, |(r, _)| r);
    let (start, end) = s.split_once('-')?;
    let (start, end) = (start.trim().parse::<u64>().ok()?, end.trim().parse::<u64>().ok()?);
    (start <= end).then_some((start, end))
}

// ---------------------------------------------------------------------------
// Manifests

/// A content descriptor inside a manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Descriptor {
    pub media_type: String,
    /// As the manifest writes it (sha256 or sha512).
    pub digest: OciDigest,
    pub size: u64,
    pub urls: Vec<String>,
    pub artifact_type: Option<String>,
    pub annotations: Option<Map<String, Value>>,
}

impl Descriptor {
    /// A layer that the client never pushes: a non-distributable (foreign)
    /// layer fetched from its `urls`.
    pub fn is_external(&self) -> bool {
        !self.urls.is_empty()
            && (self.media_type.contains("nondistributable") || self.media_type.contains("foreign"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    /// An image manifest (OCI or Docker schema 2): a config and layers.
    Image,
    /// An index (OCI image index or Docker manifest list): child manifests.
    Index,
}

/// A validated manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub media_type: String,
    pub kind: ManifestKind,
    /// The `artifactType` field, if any.
    pub artifact_type: Option<String>,
    pub config: Option<Descriptor>,
    pub layers: Vec<Descriptor>,
    pub manifests: Vec<Descriptor>,
    pub subject: Option<Descriptor>,
    pub annotations: Option<Map<String, Value>>,
}

impl Manifest {
    /// The artifact type the referrers API reports: `artifactType`, else for
    /// an image manifest the config's media type; none for an index without one.
    pub fn effective_artifact_type(&self) -> Option<String> {
        match (&self.artifact_type, self.kind, &self.config) {
            (Some(t), _, _) => Some(t.clone()),
            (None, ManifestKind::Image, Some(c)) => Some(c.media_type.clone()),
            _ => None,
        }
    }

    /// The blobs that must be in the repository before this manifest is
    /// accepted: the config and every layer except external ones, each
    /// with the size the manifest claims, digests as the manifest writes
    /// them.
    pub fn required_blobs(&self) -> Vec<(OciDigest, u64)> {
        let mut out: Vec<(OciDigest, u64)> = Vec::new();
        for d in self.config.iter().chain(&self.layers) {
            if !d.is_external() && !out.iter().any(|(x, _)| *x == d.digest) {
                out.push((d.digest, d.size));
            }
        }
        out
    }

    /// The child manifests of an index, as the index writes their digests.
    pub fn children(&self) -> Vec<OciDigest> {
        let mut out: Vec<OciDigest> = Vec::new();
        for d in &self.manifests {
            if !out.contains(&d.digest) {
                out.push(d.digest);
            }
        }
        out
    }

    /// The item metadata for this manifest, whose bytes are `size` long
    /// and hash to `sha512`. Every digest is stored as its sha256
    /// identity: `resolve` gives the identity of a sha512 digest (the
    /// aliases of the repository), and each one used is kept in
    /// [`ManifestMeta::aliases`]. `Err` names the first sha512 digest
    /// `resolve` does not know (an external layer's is left out instead:
    /// it is never stored here).
    pub fn item_meta(
        &self,
        size: u64,
        sha512: Sha512Digest,
        resolve: impl Fn(&Sha512Digest) -> Option<Digest>,
    ) -> Result<ManifestMeta, OciDigest> {
        let mut aliases = std::collections::BTreeMap::new();
        let mut identity = |d: &OciDigest| -> Result<Digest, OciDigest> {
            match d {
                OciDigest::Sha256(x) => Ok(*x),
                OciDigest::Sha512(s) => {
                    let x = resolve(s).ok_or(*d)?;
                    aliases.insert(*s, x);
                    Ok(x)
                }
            }
        };
        let subject = self.subject.as_ref().map(|s| identity(&s.digest)).transpose()?;
        let config = self.config.as_ref().map(|c| identity(&c.digest)).transpose()?;
        let mut layers = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            if l.is_external() && matches!(l.digest, OciDigest::Sha512(_)) {
                continue;
            }
            layers.push(identity(&l.digest)?);
        }
        let mut children = Vec::new();
        for c in self.children() {
            let c = identity(&c)?;
            if !children.contains(&c) {
                children.push(c);
            }
        }
        Ok(ManifestMeta {
            media_type: self.media_type.clone(),
            size,
            artifact_type: self.effective_artifact_type(),
            subject,
            config,
            layers,
            children,
            annotations: self.annotations.clone(),
            sha512: Some(sha512),
            aliases,
        })
    }
}

fn is_manifest_media_type(t: &str) -> bool {
    MANIFEST_MEDIA_TYPES.contains(&t)
}

/// The media type of a `Content-Type` header, without parameters.
fn bare_media_type(content_type: Option<&str>) -> Option<String> {
    content_type
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|c| !c.is_empty())
}

/// Parses and validates a pushed manifest. `content_type` is the request's
/// `Content-Type`. The media type is the body's `mediaType` (which must then
/// agree with a manifest `Content-Type`), else the `Content-Type`, else
/// what the structure implies (`manifests` → OCI index, `config` → OCI
/// image manifest). Schema 1 and unknown types are refused.
pub fn parse_manifest(bytes: &[u8], content_type: Option<&str>) -> Result<Manifest, OciError> {
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(OciError::new(
            ErrorCode::SizeInvalid,
            format!(
                "the manifest is {} bytes; the limit is {MAX_MANIFEST_BYTES} bytes",
                bytes.len()
            ),
        ));
    }
    let doc: Value = serde_json::from_slice(bytes)
        .map_err(|e| manifest_invalid(format!("the manifest is not valid JSON: {e}")))?;
    let Value::Object(obj) = doc else {
        return Err(manifest_invalid("the manifest must be a JSON object"));
    };
    match obj.get("schemaVersion").and_then(Value::as_u64) {
        Some(2) => {}
        Some(1) => {
            return Err(OciError::new(
                ErrorCode::ManifestInvalid,
                "Docker schema 1 manifests are not supported; push an OCI or Docker schema 2 manifest",
            ));
        }
        _ => return Err(manifest_invalid("schemaVersion must be 2")),
    }
    let media_type = manifest_media_type(&obj, content_type)?;
    let kind = if media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST {
        ManifestKind::Index
    } else {
        ManifestKind::Image
    };
    let mut m = Manifest {
        media_type,
        kind,
        artifact_type: optional_media_type(&obj, "artifactType")?,
        config: None,
        layers: Vec::new(),
        manifests: Vec::new(),
        subject: match obj.get("subject") {
            None | Some(Value::Null) => None,
            Some(v) => Some(descriptor(v, "subject")?),
        },
        annotations: annotations(obj.get("annotations"), "annotations")?,
    };
    match kind {
        ManifestKind::Image => {
            let config = obj
                .get("config")
                .ok_or_else(|| manifest_invalid("an image manifest needs a config descriptor"))?;
            m.config = Some(descriptor(config, "config")?);
            m.layers = descriptors(obj.get("layers"), "layers")?;
            if obj.contains_key("manifests") {
                return Err(manifest_invalid(format!(
                    "a {} has layers, not manifests",
                    m.media_type
                )));
            }
        }
        ManifestKind::Index => {
            m.manifests = descriptors(obj.get("manifests"), "manifests")?;
            if obj.contains_key("config") || obj.contains_key("layers") {
                return Err(manifest_invalid(format!(
                    "a {} lists manifests, not a config and layers",
                    m.media_type
                )));
            }
        }
    }
    Ok(m)
}

fn manifest_media_type(obj: &Map<String, Value>, content_type: Option<&str>) -> Result<String, OciError> {
    let declared = match obj.get("mediaType") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(manifest_invalid("mediaType must be a string")),
    };
    let header = bare_media_type(content_type);
    let unsupported = |t: &str| {
        manifest_invalid(format!(
            "manifest media type {t:?} is not supported; expected one of {}",
            MANIFEST_MEDIA_TYPES.join(", ")
        ))
    };
    match (declared, header) {
        (Some(d), header) => {
            if !is_manifest_media_type(&d) {
                return Err(unsupported(&d));
            }
            if let Some(h) = header.filter(|h| is_manifest_media_type(h) || h.contains("manifest"))
                && h != d
            {
                return Err(manifest_invalid(format!(
                    "Content-Type {h:?} does not match the manifest's mediaType {d:?}"
                )));
            }
            Ok(d)
        }
        (None, Some(h)) if is_manifest_media_type(&h) => Ok(h),
        (None, Some(h)) if h.contains("manifest") && h != "application/json" => Err(unsupported(&h)),
        (None, _) if obj.contains_key("manifests") => Ok(OCI_INDEX.to_owned()),
        (None, _) if obj.contains_key("config") => Ok(OCI_MANIFEST.to_owned()),
        (None, _) => Err(manifest_invalid(
            "cannot tell the manifest's type: no mediaType, no manifest Content-Type, neither config nor manifests",
        )),
    }
}

fn valid_media_type(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= MAX_MEDIA_TYPE_LEN
        && t.contains('/')
        && t.bytes().all(|b| b.is_ascii_graphic())
}

fn optional_media_type(obj: &Map<String, Value>, field: &str) -> Result<Option<String>, OciError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if valid_media_type(s) => Ok(Some(s.clone())),
        Some(_) => Err(manifest_invalid(format!(
            "{field} must be a media type (TYPE/SUBTYPE)"
        ))),
    }
}

fn annotations(v: Option<&Value>, what: &str) -> Result<Option<Map<String, Value>>, OciError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) if m.values().all(Value::is_string) => Ok(Some(m.clone())),
        Some(_) => Err(manifest_invalid(format!(
            "{what} must be an object of string values"
        ))),
    }
}

fn descriptors(v: Option<&Value>, what: &str) -> Result<Vec<Descriptor>, OciError> {
    let list = match v {
        Some(Value::Array(a)) => a,
        None | Some(Value::Null) => {
            return Err(manifest_invalid(format!(
                "{what} must be an array of descriptors"
            )));
        }
        Some(_) => return Err(manifest_invalid(format!("{what} must be an array"))),
    };
    if list.len() > MAX_DESCRIPTORS {
        return Err(manifest_invalid(format!(
            "{what} lists {} descriptors; the limit is {MAX_DESCRIPTORS}",
            list.len()
        )));
    }
    list.iter()
        .enumerate()
        .map(|(i, d)| descriptor(d, &format!("{what}[{i}]")))
        .collect()
}

fn descriptor(v: &Value, what: &str) -> Result<Descriptor, OciError> {
    let Value::Object(o) = v else {
        return Err(manifest_invalid(format!("{what} must be a descriptor object")));
    };
    let media_type = match o.get("mediaType") {
        Some(Value::String(s)) if valid_media_type(s) => s.clone(),
        _ => return Err(manifest_invalid(format!("{what}.mediaType must be a media type"))),
    };
    let digest_str = o
        .get("digest")
        .and_then(Value::as_str)
        .ok_or_else(|| manifest_invalid(format!("{what}.digest is missing")))?;
    let digest = parse_digest(digest_str).map_err(|e| {
        let code = if e.code == ErrorCode::Unsupported {
            ErrorCode::Unsupported
        } else {
            ErrorCode::ManifestInvalid
        };
        OciError::new(code, format!("{what}: {}", e.message))
    })?;
    let size = o
        .get("size")
        .and_then(Value::as_u64)
        .ok_or_else(|| manifest_invalid(format!("{what}.size must be a non-negative integer")))?;
    let urls = match o.get("urls") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|u| u.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| manifest_invalid(format!("{what}.urls must be an array of strings")))?,
        Some(_) => {
            return Err(manifest_invalid(format!(
                "{what}.urls must be an array of strings"
            )));
        }
    };
    Ok(Descriptor {
        media_type,
        digest,
        size,
        urls,
        artifact_type: optional_media_type(o, "artifactType")
            .map_err(|e| OciError::new(e.code, format!("{what}: {}", e.message)))?,
        annotations: annotations(o.get("annotations"), &format!("{what}.annotations"))?,
    })
}

// ---------------------------------------------------------------------------
// Items

/// Metadata of a `manifest/{repo}/{digest}` item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestMeta {
    pub media_type: String,
    /// Size of the manifest bytes.
    pub size: u64,
    /// What the referrers API reports (see [`Manifest::effective_artifact_type`]).
    #[serde(default)]
    pub artifact_type: Option<String>,
    /// The manifest this one refers to (`subject`).
    #[serde(default)]
    pub subject: Option<Digest>,
    #[serde(default)]
    pub config: Option<Digest>,
    #[serde(default)]
    pub layers: Vec<Digest>,
    /// Child manifests of an index.
    #[serde(default)]
    pub children: Vec<Digest>,
    #[serde(default)]
    pub annotations: Option<Map<String, Value>>,
    /// The sha512 digest of the manifest's bytes, so that it can be
    /// fetched by either digest (absent on items written before Ferry
    /// kept it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha512: Option<Sha512Digest>,
    /// The sha256 identity of each sha512 digest the manifest writes (its
    /// config, layers, children or subject): the repository serves those
    /// blobs and manifests under both.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub aliases: std::collections::BTreeMap<Sha512Digest, Digest>,
}

/// Metadata of a `tag/{repo}/{tag}` item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagMeta {
    pub digest: Digest,
    pub media_type: String,
}

/// Metadata of a `blob/{repo}/{digest}` item (an upload link).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobLinkMeta {
    pub size: u64,
    /// The blob's sha512 digest, when it was pushed (or mounted) under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha512: Option<Sha512Digest>,
}

/// An item key of an OCI feed, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OciItemKey {
    Manifest { repo: String, digest: Digest },
    Tag { repo: String, tag: String },
    Blob { repo: String, digest: Digest },
}

fn key(s: String) -> Result<ItemKey, OciError> {
    ItemKey::new(s).map_err(|e| OciError::new(ErrorCode::NameInvalid, e.to_string()))
}

pub fn manifest_key(repo: &str, digest: &Digest) -> Result<ItemKey, OciError> {
    key(format!("manifest/{repo}/{digest}"))
}

pub fn tag_key(repo: &str, tag: &str) -> Result<ItemKey, OciError> {
    key(format!("tag/{repo}/{tag}"))
}

pub fn blob_key(repo: &str, digest: &Digest) -> Result<ItemKey, OciError> {
    key(format!("blob/{repo}/{digest}"))
}

/// Key prefix of a repository's manifest items. Nested repositories share
/// it (`manifest/a/` also starts `manifest/a/b/…`): check each key with
/// [`parse_item_key`].
pub fn manifest_prefix(repo: &str) -> String {
    format!("manifest/{repo}/")
}

/// Key prefix of a repository's tag items (see [`manifest_prefix`]).
pub fn tag_prefix(repo: &str) -> String {
    format!("tag/{repo}/")
}

/// Key prefix of a repository's upload links (see [`manifest_prefix`]).
pub fn blob_prefix(repo: &str) -> String {
    format!("blob/{repo}/")
}

/// Parses an item key of an OCI feed; None for anything else.
pub fn parse_item_key(key: &ItemKey) -> Option<OciItemKey> {
    let (kind, rest) = key.as_str().split_once('/')?;
    let (repo, last) = rest.rsplit_once('/')?;
    validate_repository(repo).ok()?;
    let repo = repo.to_owned();
    match kind {
        "manifest" => Some(OciItemKey::Manifest {
            repo,
            digest: parse_identity(last)?,
        }),
        "blob" => Some(OciItemKey::Blob {
            repo,
            digest: parse_identity(last)?,
        }),
        "tag" => {
            validate_tag(last).ok()?;
            Some(OciItemKey::Tag {
                repo,
                tag: last.to_owned(),
            })
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Rendered documents

/// One entry of a referrers response.
#[derive(Debug, Clone, PartialEq)]
pub struct Referrer {
    pub digest: Digest,
    pub meta: ManifestMeta,
}

/// The referrers response: an image index of the descriptors of `referrers`.
pub fn render_referrers(referrers: &[Referrer]) -> Vec<u8> {
    let manifests: Vec<Value> = referrers
        .iter()
        .map(|r| {
            let mut d = Map::new();
            d.insert("mediaType".into(), json!(r.meta.media_type));
            d.insert("digest".into(), json!(r.digest));
            d.insert("size".into(), json!(r.meta.size));
            if let Some(t) = &r.meta.artifact_type {
                d.insert("artifactType".into(), json!(t));
            }
            if let Some(a) = r.meta.annotations.as_ref().filter(|a| !a.is_empty()) {
                d.insert("annotations".into(), Value::Object(a.clone()));
            }
            Value::Object(d)
        })
        .collect();
    let doc = json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests });
    serde_json::to_vec(&doc).unwrap_or_default()
}

/// The `tags/list` response for the repository clients call `name`.
pub fn render_tags(name: &str, tags: &[String]) -> Vec<u8> {
    serde_json::to_vec(&json!({ "name": name, "tags": tags })).unwrap_or_default()
}

/// The `_catalog` response.
pub fn render_catalog(repositories: &[String]) -> Vec<u8> {
    serde_json::to_vec(&json!({ "repositories": repositories })).unwrap_or_default()
}

/// What [`validate_item`] leaves for the caller to check against the
/// stored bytes.
#[derive(Debug, Clone, PartialEq)]
pub enum ItemCheck {
    /// Nothing more: a tombstone, a tag or an upload link by sha256 only.
    Done,
    /// An upload link that names its blob by sha512 too: the stored blob
    /// must hash to it.
    Link { digest: Digest, sha512: Sha512Digest },
    /// A manifest item: its bytes are the blob `digest`; parsed with
    /// `meta.media_type` they must give `meta` back (see
    /// [`check_manifest_item`]).
    Manifest { digest: Digest, meta: Box<ManifestMeta> },
}

/// Checks an item received by replication or from a bundle as a push
/// would be: the key is a valid `manifest/`, `tag/` or `blob/` key of a
/// valid repository; a manifest's first blob is the manifest itself
/// (named by the key); a tag carries `{"digest","media_type"}` and exactly
/// the tagged manifest's blob; an upload link carries `{"size"}` and
/// exactly its blob. A tombstone needs only a valid key.
pub fn validate_item(key: &ItemKey, live: Option<(&Value, &[Digest])>) -> Result<ItemCheck, OciError> {
    let invalid = |why: String| OciError::new(ErrorCode::ManifestInvalid, format!("OCI item {key}: {why}"));
    let parsed = parse_item_key(key)
        .ok_or_else(|| invalid("not a manifest/, tag/ or blob/ key of a valid repository".into()))?;
    let Some((meta, blobs)) = live else {
        return Ok(ItemCheck::Done);
    };
    match parsed {
        OciItemKey::Manifest { digest, .. } => {
            let m: ManifestMeta =
                serde_json::from_value(meta.clone()).map_err(|e| invalid(format!("metadata: {e}")))?;
            if blobs.first() != Some(&digest) {
                return Err(invalid("its first blob must be the manifest itself".into()));
            }
            Ok(ItemCheck::Manifest {
                digest,
                meta: Box::new(m),
            })
        }
        OciItemKey::Tag { .. } => {
            let t: TagMeta =
                serde_json::from_value(meta.clone()).map_err(|e| invalid(format!("metadata: {e}")))?;
            if blobs != [t.digest] {
                return Err(invalid("a tag carries exactly the tagged manifest's blob".into()));
            }
            Ok(ItemCheck::Done)
        }
        OciItemKey::Blob { digest, .. } => {
            let link: BlobLinkMeta =
                serde_json::from_value(meta.clone()).map_err(|e| invalid(format!("metadata: {e}")))?;
            if blobs != [digest] {
                return Err(invalid("an upload link carries exactly its blob".into()));
            }
            Ok(match link.sha512 {
                Some(sha512) => ItemCheck::Link { digest, sha512 },
                None => ItemCheck::Done,
            })
        }
    }
}

/// Checks a manifest item's metadata and blobs against the manifest's own
/// bytes, as a push would: the bytes parse as `meta.media_type`, hash to
/// `meta.sha512` when the item gives one, give the same item metadata
/// (sha512 digests resolved through the item's own `aliases`, which must
/// be exactly those the manifest writes), and every blob and child
/// manifest they reference is among the item's blobs. What is left to the
/// caller: that each blob of `meta.aliases` hashes to its sha512 digest.
pub fn check_manifest_item(bytes: &[u8], meta: &ManifestMeta, blobs: &[Digest]) -> Result<(), OciError> {
    let invalid = |why: &str| OciError::new(ErrorCode::ManifestInvalid, why.to_string());
    let manifest = parse_manifest(bytes, Some(&meta.media_type))?;
    let own = Sha512Digest::of(bytes);
    if meta.sha512.is_some_and(|s| s != own) {
        return Err(invalid("the item's sha512 digest is not the manifest's"));
    }
    let mut expected = manifest
        .item_meta(bytes.len() as u64, own, |s| meta.aliases.get(s).copied())
        .map_err(|d| {
            invalid(&format!(
                "the manifest references {d}, which the item does not resolve"
            ))
        })?;
    expected.sha512 = meta.sha512;
    if &expected != meta {
        return Err(invalid("the item's metadata does not match the manifest's bytes"));
    }
    let identity = |d: &OciDigest| match d {
        OciDigest::Sha256(x) => Some(*x),
        OciDigest::Sha512(s) => meta.aliases.get(s).copied(),
    };
    let referenced = manifest
        .required_blobs()
        .into_iter()
        .map(|(d, _)| d)
        .chain(manifest.children())
        .filter_map(|d| identity(&d));
    for d in referenced {
        if !blobs.contains(&d) {
            return Err(invalid(&format!(
                "the manifest references {d}, which the item does not carry"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(data: &[u8]) -> Digest {
        Digest::of(data)
    }

    fn od(data: &[u8]) -> OciDigest {
        OciDigest::Sha256(Digest::of(data))
    }

    fn no_alias(_: &Sha512Digest) -> Option<Digest> {
        None
    }

    fn desc(mt: &str, data: &[u8]) -> Value {
        json!({ "mediaType": mt, "digest": d(data).to_string(), "size": data.len() })
    }

    fn image(extra: Value) -> Value {
        let mut m = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": desc("application/vnd.oci.image.config.v1+json", b"{}"),
            "layers": [desc("application/vnd.oci.image.layer.v1.tar+gzip", b"layer")],
        });
        if let (Value::Object(m), Value::Object(e)) = (&mut m, extra) {
            m.extend(e);
        }
        m
    }

    fn parse(v: &Value, ct: Option<&str>) -> Result<Manifest, OciError> {
        parse_manifest(&serde_json::to_vec(v).unwrap(), ct)
    }

    fn code<T: fmt::Debug>(r: Result<T, OciError>) -> ErrorCode {
        r.unwrap_err().code
    }

    #[test]
    fn repository_names() {
        for ok in ["a", "app", "team/app", "a.b_c__d--e-f/x9", "0/1/2", "ab-cd"] {
            assert!(validate_repository(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "App",
            "a/",
            "/a",
            "a//b",
            "-a",
            "a-",
            "a..b",
            "a___b",
            "a._b",
            "a b",
            "a:b",
            &"a".repeat(256),
        ] {
            assert_eq!(code(validate_repository(bad)), ErrorCode::NameInvalid, "{bad:?}");
        }
    }

    #[test]
    fn tags_and_references() {
        for ok in ["latest", "v1.0.0", "_x", "A-b_c.d", &"t".repeat(128)] {
            assert!(validate_tag(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".x", "-x", "a/b", "a:b", "a b", &"t".repeat(129)] {
            assert!(validate_tag(bad).is_err(), "{bad:?}");
        }
        let dg = d(b"x");
        assert_eq!(
            parse_reference(&dg.to_string()),
            Ok(Reference::Digest(OciDigest::Sha256(dg)))
        );
        assert_eq!(parse_reference("v1"), Ok(Reference::Tag("v1".into())));
        assert_eq!(code(parse_reference("sha256:abc")), ErrorCode::DigestInvalid);
        // sha512: 128 lowercase hex characters, shown as given.
        let s512 = Sha512Digest::of(b"x");
        assert_eq!(
            parse_reference(&s512.to_string()),
            Ok(Reference::Digest(OciDigest::Sha512(s512)))
        );
        assert_eq!(
            s512.to_string(),
            "sha512:a4abd4448c49562d828115d13a1fccea927f52b4d5459297f8b43e42da89238bc13626e43dcb38ddb082488927ec904fb42057443983e88585179d50551afe62"
        );
        assert_eq!(
            code(parse_reference(&format!("sha512:{}", "a".repeat(64)))),
            ErrorCode::DigestInvalid
        );
        assert_eq!(
            code(parse_reference(&format!("sha512:{}", "A".repeat(128)))),
            ErrorCode::DigestInvalid
        );
        assert_eq!(
            code(parse_reference(&format!("blake3:{}", "a".repeat(64)))),
            ErrorCode::Unsupported
        );
        assert_eq!(code(parse_digest("nocolon")), ErrorCode::DigestInvalid);
        let huge = format!("sha256:{}", "a".repeat(60_000));
        let e = parse_digest(&huge).unwrap_err();
        assert_eq!(e.code, ErrorCode::DigestInvalid);
        assert!(e.message.len() < 300, "{}", e.message.len());
        assert_eq!(code(parse_digest("SHA256:abc")), ErrorCode::DigestInvalid);
        assert_eq!(
            code(parse_digest(&format!("sha256:{}", "A".repeat(64)))),
            ErrorCode::DigestInvalid
        );
    }

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("0-9"), Some((0, 9)));
        assert_eq!(parse_content_range("bytes 10-19/*"), Some((10, 19)));
        assert_eq!(parse_content_range("bytes=10-19"), Some((10, 19)));
        assert_eq!(parse_content_range("9-0"), None);
        assert_eq!(parse_content_range("x-1"), None);
        assert_eq!(parse_content_range("5"), None);
    }

    #[test]
    fn image_manifests() {
        let m = parse(&image(json!({ "annotations": { "k": "v" } })), Some(OCI_MANIFEST)).unwrap();
        assert_eq!(m.kind, ManifestKind::Image);
        assert_eq!(m.media_type, OCI_MANIFEST);
        assert_eq!(
            m.effective_artifact_type().as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
        assert_eq!(m.required_blobs(), vec![(od(b"{}"), 2), (od(b"layer"), 5)]);
        let meta = m.item_meta(100, Sha512Digest::of(b"m"), no_alias).unwrap();
        assert_eq!(meta.layers, vec![d(b"layer")]);
        assert_eq!(meta.config, Some(d(b"{}")));
        assert_eq!(meta.sha512, Some(Sha512Digest::of(b"m")));
        assert!(meta.aliases.is_empty());
        let back: ManifestMeta = serde_json::from_value(serde_json::to_value(&meta).unwrap()).unwrap();
        assert_eq!(back, meta);

        // artifactType and subject
        let m = parse(
            &image(json!({
                "artifactType": "application/vnd.example.sig",
                "subject": desc(OCI_MANIFEST, b"target"),
            })),
            None,
        )
        .unwrap();
        assert_eq!(
            m.effective_artifact_type().as_deref(),
            Some("application/vnd.example.sig")
        );
        assert_eq!(m.subject.map(|s| s.digest), Some(od(b"target")));

        // Without mediaType: from Content-Type, else from the structure.
        let mut bare = image(json!({}));
        bare.as_object_mut().unwrap().remove("mediaType");
        assert_eq!(parse(&bare, None).unwrap().media_type, OCI_MANIFEST);
        assert_eq!(
            parse(
                &bare,
                Some("application/vnd.oci.image.manifest.v1+json; charset=utf-8")
            )
            .unwrap()
            .media_type,
            OCI_MANIFEST
        );
        // Docker schema 2
        let docker = image(json!({ "mediaType": DOCKER_MANIFEST }));
        assert_eq!(
            parse(&docker, Some(DOCKER_MANIFEST)).unwrap().media_type,
            DOCKER_MANIFEST
        );
        // A foreign layer is not required.
        let foreign = image(json!({ "layers": [{
            "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            "digest": d(b"win").to_string(), "size": 3, "urls": ["https://example.com/l"]
        }]}));
        assert_eq!(
            parse(&foreign, None).unwrap().required_blobs(),
            vec![(od(b"{}"), 2)]
        );
    }

    #[test]
    fn indexes() {
        let idx = json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [desc(OCI_MANIFEST, b"a"), desc(OCI_MANIFEST, b"b"), desc(OCI_MANIFEST, b"a")],
        });
        let m = parse(&idx, Some(OCI_INDEX)).unwrap();
        assert_eq!(m.kind, ManifestKind::Index);
        assert_eq!(m.children(), vec![od(b"a"), od(b"b")]);
        assert!(m.required_blobs().is_empty());
        assert_eq!(m.effective_artifact_type(), None);
        let list = json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST_LIST,
            "manifests": [desc(DOCKER_MANIFEST, b"a")],
        });
        assert_eq!(parse(&list, None).unwrap().kind, ManifestKind::Index);
        let mut bare = idx.clone();
        bare.as_object_mut().unwrap().remove("mediaType");
        assert_eq!(parse(&bare, None).unwrap().media_type, OCI_INDEX);
    }

    #[test]
    fn refusals() {
        let invalid = |v: Value, ct: Option<&str>| code(parse(&v, ct));
        assert_eq!(
            code(parse_manifest(b"not json", None)),
            ErrorCode::ManifestInvalid
        );
        assert_eq!(code(parse_manifest(b"[]", None)), ErrorCode::ManifestInvalid);
        assert_eq!(
            code(parse_manifest(&vec![b' '; MAX_MANIFEST_BYTES + 1], None)),
            ErrorCode::SizeInvalid
        );
        assert_eq!(
            invalid(image(json!({ "schemaVersion": 1 })), None),
            ErrorCode::ManifestInvalid
        );
        assert_eq!(
            invalid(
                image(json!({ "mediaType": "application/vnd.docker.distribution.manifest.v1+prettyjws" })),
                None
            ),
            ErrorCode::ManifestInvalid
        );
        // Content-Type disagrees with mediaType.
        assert_eq!(
            invalid(image(json!({})), Some(OCI_INDEX)),
            ErrorCode::ManifestInvalid
        );
        assert_eq!(
            invalid(image(json!({ "config": null })), None),
            ErrorCode::ManifestInvalid
        );
        assert_eq!(
            invalid(image(json!({ "layers": {} })), None),
            ErrorCode::ManifestInvalid
        );
        assert_eq!(
            invalid(
                image(json!({ "layers": [{ "mediaType": "a/b", "digest": "sha256:12", "size": 1 }] })),
                None
            ),
            ErrorCode::ManifestInvalid
        );
        assert_eq!(
            invalid(
                image(
                    json!({ "layers": [{ "mediaType": "a/b", "digest": format!("md5:{}", "a".repeat(32)), "size": 1 }] })
                ),
                None
            ),
            ErrorCode::Unsupported
        );
        assert_eq!(
            invalid(
                image(
                    json!({ "layers": [{ "mediaType": "a/b", "digest": d(b"x").to_string(), "size": -1 }] })
                ),
                None
            ),
            ErrorCode::ManifestInvalid
        );
        assert_eq!(
            invalid(image(json!({ "annotations": { "k": 1 } })), None),
            ErrorCode::ManifestInvalid
        );
        assert_eq!(
            invalid(image(json!({ "manifests": [] })), None),
            ErrorCode::ManifestInvalid
        );
        assert_eq!(
            invalid(
                json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [], "layers": [] }),
                None
            ),
            ErrorCode::ManifestInvalid
        );
        assert_eq!(
            invalid(json!({ "schemaVersion": 2 }), None),
            ErrorCode::ManifestInvalid
        );
    }

    #[test]
    fn item_keys_round_trip() {
        let dg = d(b"m");
        let k = manifest_key("team/app", &dg).unwrap();
        assert_eq!(k.as_str(), format!("manifest/team/app/{dg}"));
        assert_eq!(
            parse_item_key(&k),
            Some(OciItemKey::Manifest {
                repo: "team/app".into(),
                digest: dg
            })
        );
        let k = tag_key("team/app", "v1").unwrap();
        assert_eq!(
            parse_item_key(&k),
            Some(OciItemKey::Tag {
                repo: "team/app".into(),
                tag: "v1".into()
            })
        );
        let k = blob_key("app", &dg).unwrap();
        assert_eq!(
            parse_item_key(&k),
            Some(OciItemKey::Blob {
                repo: "app".into(),
                digest: dg
            })
        );
        assert!(k.as_str().starts_with(&blob_prefix("app")));
        assert_eq!(parse_item_key(&ItemKey::new("other/app/x").unwrap()), None);
        assert_eq!(parse_item_key(&ItemKey::new("tag/app").unwrap()), None);
    }

    /// A manifest that writes sha512 digests: stored by sha256 identity,
    /// with the aliases it used; a replicated item must carry exactly
    /// those aliases, and its own sha512 must be its bytes'.
    #[test]
    fn sha512_descriptors() {
        let s = |data: &[u8]| Sha512Digest::of(data).to_string();
        let doc = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": s(b"{}"), "size": 2 },
            "layers": [
                { "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": s(b"layer"), "size": 5 },
                { "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d(b"other").to_string(), "size": 5 },
            ],
        });
        let bytes = serde_json::to_vec(&doc).unwrap();
        let m = parse_manifest(&bytes, None).unwrap();
        let known = |x: &Sha512Digest| {
            [
                (Sha512Digest::of(b"{}"), d(b"{}")),
                (Sha512Digest::of(b"layer"), d(b"layer")),
            ]
            .into_iter()
            .find(|(k, _)| k == x)
            .map(|(_, v)| v)
        };
        // Unknown sha512 digest: named.
        assert_eq!(
            m.item_meta(1, Sha512Digest::of(&bytes), no_alias),
            Err(OciDigest::Sha512(Sha512Digest::of(b"{}")))
        );
        let meta = m
            .item_meta(bytes.len() as u64, Sha512Digest::of(&bytes), known)
            .unwrap();
        assert_eq!(meta.config, Some(d(b"{}")));
        assert_eq!(meta.layers, vec![d(b"layer"), d(b"other")]);
        assert_eq!(meta.aliases.len(), 2);
        let back: ManifestMeta = serde_json::from_value(serde_json::to_value(&meta).unwrap()).unwrap();
        assert_eq!(back, meta);

        let blobs = [Digest::of(&bytes), d(b"{}"), d(b"layer"), d(b"other")];
        assert_eq!(check_manifest_item(&bytes, &meta, &blobs), Ok(()));
        // Written by an older Ferry: no sha512 of its own.
        let mut old = meta.clone();
        old.sha512 = None;
        assert_eq!(check_manifest_item(&bytes, &old, &blobs), Ok(()));
        // A wrong own sha512, a missing alias, an extra alias, a blob left out.
        let mut bad = meta.clone();
        bad.sha512 = Some(Sha512Digest::of(b"else"));
        assert!(check_manifest_item(&bytes, &bad, &blobs).is_err());
        let mut bad = meta.clone();
        bad.aliases.remove(&Sha512Digest::of(b"layer"));
        assert!(check_manifest_item(&bytes, &bad, &blobs).is_err());
        let mut bad = meta.clone();
        bad.aliases.insert(Sha512Digest::of(b"more"), d(b"more"));
        assert!(check_manifest_item(&bytes, &bad, &blobs).is_err());
        assert!(check_manifest_item(&bytes, &meta, &blobs[..3]).is_err());
    }

    #[test]
    fn rendered_documents() {
        let meta = ManifestMeta {
            media_type: OCI_MANIFEST.into(),
            size: 10,
            artifact_type: Some("application/x-sig".into()),
            subject: Some(d(b"s")),
            config: None,
            layers: vec![],
            children: vec![],
            annotations: Some(Map::from_iter([("k".to_string(), json!("v"))])),
            sha512: None,
            aliases: Default::default(),
        };
        let doc: Value = serde_json::from_slice(&render_referrers(&[Referrer {
            digest: d(b"r"),
            meta,
        }]))
        .unwrap();
        assert_eq!(doc["mediaType"], OCI_INDEX);
        assert_eq!(doc["manifests"][0]["artifactType"], "application/x-sig");
        assert_eq!(doc["manifests"][0]["digest"], d(b"r").to_string());
        assert_eq!(doc["manifests"][0]["annotations"]["k"], "v");
        let tags: Value = serde_json::from_slice(&render_tags("f/app", &["a".into()])).unwrap();
        assert_eq!(tags, json!({ "name": "f/app", "tags": ["a"] }));
        let cat: Value = serde_json::from_slice(&render_catalog(&["f/app".into()])).unwrap();
        assert_eq!(cat, json!({ "repositories": ["f/app"] }));
    }
}
