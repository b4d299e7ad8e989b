//! PyPI feeds: the legacy upload API (twine), the simple repository API
//! (PEP 503 HTML, PEP 691 JSON with PEP 592 yanking and PEP 700 fields) and
//! the checks between an uploaded file, its core metadata and the form.
//!
//! # Item layout
//!
//! One item per distribution file (wheel or sdist):
//!
//! - **key**: `{normalized project name}/{filename}`, e.g.
//!   `foo-bar/Foo_Bar-1.0-py3-none-any.whl` ([`file_key`], [`parse_file_key`];
//!   [`project_prefix`] lists one project's files);
//! - **metadata**: a [`FileMeta`] as JSON (`name`, `normalized_name`,
//!   `version`, `filename`, `kind` = `wheel`/`sdist`, `requires_python`,
//!   `summary`, `metadata_version`, `sha256`, `size`, `yanked`,
//!   `yanked_reason`, `upload_time`);
//! - **blob**: exactly one, the file itself; its digest equals `sha256`.
//!
//! A feed keeps one file per [`FileIdentity`] (project, PEP 440 version,
//! wheel build tag and tag set, or sdist format): equivalent names such as
//! `Dupe-1.0.0-py3-none-any.whl` and `dupe-1.0-py3-none-any.whl` are one
//! file to installers, though their keys differ.
//!
//! Yanking (PEP 592) rewrites the item with `yanked`/`yanked_reason` set;
//! the file stays downloadable. Simple pages are derived from the items and
//! rebuilt locally, never replicated.
//!
//! # URLs
//!
//! Under a feed's PyPI base `{base}` (e.g. `/pypi/{feed}`), the server is
//! expected to serve: the root index at `{base}/simple/`, project pages at
//! `{base}/simple/{normalized}/` (HTML root links are relative), files at
//! `{base}/files/{normalized}/{filename}` ([`file_url`] adds
//! `#sha256={hex}`), and take uploads at `{base}/` (`twine upload
//! --repository-url {base}/`).

mod archive;
mod filename;
mod identity;
mod metadata;
mod names;
mod negotiate;
mod render;
mod upload;
mod version;

/// Checks an item received by replication or from a bundle as an upload
/// would be: the key is `{normalized}/{filename}` of a valid distribution
/// file name; the metadata reads as [`FileMeta`] and is the key's; its
/// blobs are the file (`sha256`) and, when it has one, its core metadata
/// file (in any order). A tombstone needs only a valid key. Returns the
/// metadata read (the caller checks the file's size against the blob).
pub fn validate_item(
    key: &ItemKey,
    live: Option<(&serde_json::Value, &[Digest])>,
) -> Result<Option<FileMeta>, FormatError> {
    let (project, filename) = parse_file_key(key)?;
    if file_key(project, filename)?.as_str() != key.as_str() {
        return Err(FormatError::invalid(format!("{key:?} is not a PyPI item key")));
    }
    let Some((meta, blobs)) = live else {
        return Ok(None);
    };
    let file =
        FileMeta::from_json(meta).map_err(|e| FormatError::invalid(format!("PyPI item {key}: {e}")))?;
    crate::no_unknown_fields("PyPI", key, meta, &file.to_json())?;
    if file.key()?.as_str() != key.as_str() {
        return Err(FormatError::invalid(format!(
            "PyPI item {key}: its metadata describes {}/{}",
            file.normalized_name, file.filename
        )));
    }
    let mut expected = vec![file.sha256];
    expected.extend(file.core_metadata);
    let mut given = blobs.to_vec();
    given.sort();
    expected.sort();
    if given != expected {
        return Err(FormatError::invalid(format!(
            "PyPI item {key}: its blobs are not the file and its core metadata"
        )));
    }
    Ok(Some(file))
}

/// Checks that a replicated file item's metadata is what its file says:
/// `info` is the stored file inspected as an upload is
/// ([`inspect_distribution`]), and every field an upload takes from it —
/// name, normalized name, version, file name, kind, `Requires-Python`,
/// summary, metadata version — must be the item's; so must the core
/// metadata blob, when the item names one (`core_metadata_digest`: the
/// digest of the core metadata `info` read). What the server adds (upload
/// time, yanked state) is not the file's to say. Errors: Invalid naming
/// the first field that differs.
pub fn check_item_describes(
    file: &FileMeta,
    info: &DistInfo,
    core_metadata_digest: Option<Digest>,
) -> Result<(), FormatError> {
    let expected = FileMeta {
        yanked: file.yanked,
        yanked_reason: file.yanked_reason.clone(),
        core_metadata: file.core_metadata,
        ..FileMeta::new(info, file.sha256, file.size, file.upload_time.clone())
    };
    let (claimed, found) = (
        serde_json::to_value(file).unwrap_or_default(),
        serde_json::to_value(&expected).unwrap_or_default(),
    );
    if let (Some(claimed), Some(found)) = (claimed.as_object(), found.as_object())
        && let Some(field) = found
            .keys()
            .chain(claimed.keys())
            .find(|k| claimed.get(*k) != found.get(*k))
    {
        let value = found.get(field).unwrap_or(&serde_json::Value::Null);
        return Err(FormatError::invalid(format!(
            "PyPI item {}/{}: its metadata does not describe its file, whose core metadata gives {field} as {value}",
            file.normalized_name, file.filename
        )));
    }
    if let Some(claimed) = file.core_metadata
        && core_metadata_digest != Some(claimed)
    {
        return Err(FormatError::invalid(format!(
            "PyPI item {}/{}: its core metadata blob {claimed} is not the file's own core metadata",
            file.normalized_name, file.filename
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;

use ferry_types::{Digest, ItemKey};
use serde::{Deserialize, Serialize};

pub use archive::{DistInfo, inspect_distribution};
pub use filename::{ArchiveFormat, DistFilename, DistKind, MAX_FILENAME_LEN, WheelTags, parse_filename};
pub use identity::{FileFlavor, FileIdentity, SdistFormat, file_identity};
pub use metadata::{CoreMetadata, parse_core_metadata};
pub use names::{MAX_NAME_LEN, normalize_name, normalized_project_name, validate_project_name};
pub use negotiate::{
    HTML_CONTENT_TYPE, HTML_V1_CONTENT_TYPE, IndexFormat, JSON_CONTENT_TYPE, Negotiated, negotiate,
};
pub use render::{API_VERSION, file_url, render_project, render_root};
pub use upload::{UploadForm, check_upload};
pub use version::{Version, normalize_version, versions_match};

use crate::FormatError;

/// The metadata of a PyPI item (one distribution file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    /// Project name as written in the file's core metadata.
    pub name: String,
    /// PEP 503 normalized project name (the first segment of the key).
    pub normalized_name: String,
    /// Version as written in the core metadata.
    pub version: String,
    pub filename: String,
    pub kind: DistKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requires_python: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    #[serde(default)]
    pub metadata_version: String,
    /// Digest of the file: the item's one blob.
    pub sha256: Digest,
    /// Size of the file in bytes.
    pub size: u64,
    #[serde(default)]
    pub yanked: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub yanked_reason: Option<String>,
    /// When the file was first uploaded: RFC 3339 in UTC with a `Z` suffix
    /// (as PEP 700 asks), supplied by the caller.
    pub upload_time: String,
    /// Digest of the file's core metadata, served on its own at the file's
    /// URL plus `.metadata` (PEP 658/714): the item's second blob. Wheels
    /// uploaded since Ferry serves it have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub core_metadata: Option<Digest>,
}

impl FileMeta {
    /// The metadata of a freshly uploaded, inspected file (not yanked).
    pub fn new(info: &DistInfo, sha256: Digest, size: u64, upload_time: impl Into<String>) -> Self {
        Self {
            name: info.name.clone(),
            normalized_name: info.normalized_name.clone(),
            version: info.version.clone(),
            filename: info.filename.clone(),
            kind: info.kind,
            requires_python: info.requires_python.clone(),
            summary: info.summary.clone(),
            metadata_version: info.metadata_version.clone(),
            sha256,
            size,
            yanked: false,
            yanked_reason: None,
            upload_time: upload_time.into(),
            core_metadata: None,
        }
    }

    /// The item key, `{normalized_name}/{filename}`.
    pub fn key(&self) -> Result<ItemKey, FormatError> {
        file_key(&self.normalized_name, &self.filename)
    }

    /// Marks the file yanked (PEP 592), with an optional reason.
    pub fn yank(&mut self, reason: Option<String>) {
        self.yanked = true;
        self.yanked_reason = reason.filter(|r| !r.trim().is_empty());
    }

    /// Undoes [`FileMeta::yank`].
    pub fn unyank(&mut self) {
        self.yanked = false;
        self.yanked_reason = None;
    }

    /// The metadata as stored in an item.
    pub fn to_json(&self) -> serde_json::Value {
        // Plain fields only: serializing cannot fail.
        serde_json::to_value(self).unwrap_or_default()
    }

    /// Reads an item's metadata back.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, FormatError> {
        Self::deserialize(value).map_err(|e| FormatError::invalid(format!("invalid PyPI file metadata: {e}")))
    }
}

/// The item key of `filename` in `project`: `{normalized project}/{filename}`.
/// Refuses invalid project names, invalid file names, and files that belong
/// to another project.
pub fn file_key(project: &str, filename: &str) -> Result<ItemKey, FormatError> {
    let normalized = normalized_project_name(project)?;
    parse_filename(filename, Some(project))?;
    ItemKey::new(format!("{normalized}/{filename}")).map_err(|e| FormatError::invalid(e.to_string()))
}

/// Splits a PyPI item key into (normalized project name, filename),
/// checking that it is one [`file_key`] would build.
pub fn parse_file_key(key: &ItemKey) -> Result<(&str, &str), FormatError> {
    let s = key.as_str();
    let invalid = || FormatError::invalid(format!("{s:?} is not a PyPI item key ({{project}}/{{filename}})"));
    let (project, filename) = s.split_once('/').ok_or_else(invalid)?;
    if normalized_project_name(project).ok().as_deref() != Some(project) {
        return Err(invalid());
    }
    parse_filename(filename, Some(project)).map_err(|_| invalid())?;
    Ok((project, filename))
}

/// The key prefix shared by all files of `project`: `{normalized}/`.
pub fn project_prefix(project: &str) -> Result<String, FormatError> {
    Ok(format!("{}/", normalized_project_name(project)?))
}
