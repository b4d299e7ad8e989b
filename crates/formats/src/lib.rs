//! Feed formats: parse and validate what clients upload, derive items, and
//! render the indexes clients read. Pure functions over bytes and readers:
//! this crate does no file, network or database I/O of its own.

pub mod assets;
pub mod cargo;
pub mod debian;
pub mod npm;
pub mod nuget;
pub mod oci;
pub mod pypi;
pub mod rpm;

/// Why an upload or a request body was refused. The message is shown to the
/// user as the reason of a 4xx response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Malformed or inconsistent input (400).
    #[error("{0}")]
    Invalid(String),
    /// Input exceeds a configured limit, e.g. an archive that expands too far (413).
    #[error("{0}")]
    TooLarge(String),
}

impl FormatError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::Invalid(msg.into())
    }
    pub fn too_large(msg: impl Into<String>) -> Self {
        Self::TooLarge(msg.into())
    }
}

/// Limits applied while inspecting archives, so that a small upload cannot
/// expand into gigabytes (size bombs) or hide thousands of entries.
#[derive(Debug, Clone, Copy)]
pub struct ArchiveLimits {
    /// Largest total uncompressed size of all entries read or listed.
    pub max_unpacked_bytes: u64,
    /// Most entries an archive may contain.
    pub max_entries: u64,
    /// Largest single metadata file (package.json, METADATA, PKG-INFO) read into memory.
    pub max_metadata_bytes: u64,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        Self {
            max_unpacked_bytes: 2 << 30,
            max_entries: 100_000,
            max_metadata_bytes: 4 << 20,
        }
    }
}
