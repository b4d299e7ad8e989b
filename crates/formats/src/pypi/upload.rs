//! The legacy upload API form (what `twine upload` sends).

use ferry_types::Digest;

use super::archive::DistInfo;
use super::names::normalize_name;
use super::version::versions_match;
use crate::FormatError;

/// The text fields of a legacy upload (`multipart/form-data` POST). The
/// file itself comes in the part named [`UploadForm::CONTENT_FIELD`], whose
/// part filename is the distribution's file name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UploadForm {
    /// `:action`; twine sends `file_upload`.
    pub action: Option<String>,
    pub protocol_version: Option<String>,
    pub name: Option<String>,
    pub version: Option<String>,
    /// `bdist_wheel` or `sdist`.
    pub filetype: Option<String>,
    pub pyversion: Option<String>,
    pub metadata_version: Option<String>,
    pub sha256_digest: Option<String>,
    pub md5_digest: Option<String>,
    pub blake2_256_digest: Option<String>,
    pub requires_python: Option<String>,
    pub summary: Option<String>,
}

impl UploadForm {
    /// The multipart field carrying the distribution file.
    pub const CONTENT_FIELD: &'static str = "content";

    /// Records one text field of the form. Empty values count as absent;
    /// fields Ferry does not use (classifiers, description, ...) are ignored
    /// and `false` is returned for them.
    pub fn set_field(&mut self, field: &str, value: impl Into<String>) -> bool {
        let Some(slot) = self.slot(field) else {
            return false;
        };
        let value = value.into();
        *slot = (!value.trim().is_empty()).then_some(value);
        true
    }

    /// Whether [`UploadForm::set_field`] records `field` (so a caller
    /// streaming the form knows which fields are worth reading).
    pub fn knows_field(field: &str) -> bool {
        Self::default().slot(field).is_some()
    }

    fn slot(&mut self, field: &str) -> Option<&mut Option<String>> {
        Some(match field {
            ":action" => &mut self.action,
            "protocol_version" => &mut self.protocol_version,
            "name" => &mut self.name,
            "version" => &mut self.version,
            "filetype" => &mut self.filetype,
            "pyversion" => &mut self.pyversion,
            "metadata_version" => &mut self.metadata_version,
            "sha256_digest" => &mut self.sha256_digest,
            "md5_digest" => &mut self.md5_digest,
            "blake2_256_digest" => &mut self.blake2_256_digest,
            "requires_python" => &mut self.requires_python,
            "summary" => &mut self.summary,
            _ => return None,
        })
    }
}

/// Checks the upload form against what the file says about itself
/// ([`inspect_distribution`](super::inspect_distribution)) and against the
/// sha256 the caller computed while receiving it.
///
/// `:action` must be `file_upload` when present. `name`, `version` and
/// `filetype`, when present, must match the file (names compared after
/// PEP 503 normalization, versions by PEP 440 equality). When
/// `sha256_digest` is present it must equal `sha256`. `md5_digest` and
/// `blake2_256_digest` are not checked.
pub fn check_upload(form: &UploadForm, info: &DistInfo, sha256: &Digest) -> Result<(), FormatError> {
    if let Some(action) = &form.action
        && action != "file_upload"
    {
        return Err(FormatError::invalid(format!(
            "upload :action {action:?} is not supported (only \"file_upload\" is)"
        )));
    }
    if let Some(name) = &form.name
        && normalize_name(name) != info.normalized_name
    {
        return Err(FormatError::invalid(format!(
            "the upload form says name {name:?}, but {:?} is for project {:?}",
            info.filename, info.name
        )));
    }
    if let Some(version) = &form.version
        && !versions_match(version, &info.version)
    {
        return Err(FormatError::invalid(format!(
            "the upload form says version {version:?}, but {:?} is version {:?}",
            info.filename, info.version
        )));
    }
    if let Some(filetype) = &form.filetype
        && filetype != info.kind.upload_filetype()
    {
        return Err(FormatError::invalid(format!(
            "the upload form says filetype {filetype:?}, but {:?} is a {} ({:?})",
            info.filename,
            info.kind.as_str(),
            info.kind.upload_filetype()
        )));
    }
    if let Some(claimed) = &form.sha256_digest {
        let claimed = claimed.trim().to_ascii_lowercase();
        let actual = sha256.hex();
        if claimed != actual {
            return Err(FormatError::invalid(format!(
                "the upload form says sha256_digest {claimed:?}, but the uploaded file's sha256 is {actual:?}"
            )));
        }
    }
    Ok(())
}
