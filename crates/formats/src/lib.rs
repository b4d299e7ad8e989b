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
mod zipdir;

/// Inflates every entry of a zip archive once, no further than its header
/// declares (APPNOTE.TXT 4.4.9), and so checks its CRC-32: an entry that
/// understates its size (a bomb the sum of declared sizes cannot see) is
/// [`FormatError::TooLarge`], one whose bytes do not match their CRC or
/// cannot be inflated is [`FormatError::Invalid`]. `what` names the
/// archive in the messages ("the package"). Refused here rather than by
/// the clients that would unpack it after Ferry had published it.
pub(crate) fn inflate_every_entry<R: std::io::Read + std::io::Seek>(
    zip: &mut zip::ZipArchive<R>,
    what: &str,
) -> Result<(), FormatError> {
    use std::io::Read as _;
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| FormatError::invalid(format!("{what}'s zip entry {i} is unreadable: {e}")))?;
        let declared = entry.size();
        let name = entry.name().to_owned();
        let inflated = std::io::copy(
            &mut (&mut entry).take(declared.saturating_add(1)),
            &mut std::io::sink(),
        )
        .map_err(|e| FormatError::invalid(format!("{what}'s entry {name:?} is corrupt: {e}")))?;
        if inflated > declared {
            return Err(FormatError::too_large(format!(
                "{what}'s entry {name:?} expands past the {declared} bytes its header declares"
            )));
        }
    }
    Ok(())
}

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

/// The first field of `received` (an item's metadata from another
/// instance) that `known` — the same metadata read into its type and
/// written back — lacks: a field no upload of that type sets, which a
/// replica would otherwise store and serve. Nested objects and arrays are
/// walked; a field given as `null` is as good as absent. Its dotted path,
/// or None.
pub(crate) fn unknown_field(received: &serde_json::Value, known: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    match (received, known) {
        (Value::Object(r), Value::Object(k)) => r.iter().find_map(|(name, v)| match k.get(name) {
            None if v.is_null() => None,
            None => Some(name.clone()),
            Some(kv) => unknown_field(v, kv).map(|inner| format!("{name}.{inner}")),
        }),
        (Value::Array(r), Value::Array(k)) => r
            .iter()
            .zip(k)
            .enumerate()
            .find_map(|(i, (a, b))| unknown_field(a, b).map(|inner| format!("{i}.{inner}"))),
        _ => None,
    }
}

/// [`unknown_field`] as the refusal of item `key` of a feed of `what`.
pub(crate) fn no_unknown_fields(
    what: &str,
    key: &ferry_types::ItemKey,
    received: &serde_json::Value,
    known: &serde_json::Value,
) -> Result<(), FormatError> {
    match unknown_field(received, known) {
        Some(field) => Err(FormatError::invalid(format!(
            "{what} item {key}: its metadata has a field no upload sets: {field}"
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod unknown_field_tests {
    use serde_json::json;

    #[test]
    fn finds_fields_the_type_does_not_write() {
        let known = json!({"a": 1, "deps": [{"n": "x"}], "o": {"p": 2}});
        assert_eq!(super::unknown_field(&known, &known), None);
        assert_eq!(super::unknown_field(&json!({"a": 1, "z": null}), &known), None);
        assert_eq!(
            super::unknown_field(&json!({"a": 1, "z": 3}), &known).as_deref(),
            Some("z")
        );
        assert_eq!(
            super::unknown_field(&json!({"deps": [{"n": "x", "evil": true}]}), &known).as_deref(),
            Some("deps.0.evil")
        );
        assert_eq!(
            super::unknown_field(&json!({"o": {"p": 2, "q": 1}}), &known).as_deref(),
            Some("o.q")
        );
    }
}
