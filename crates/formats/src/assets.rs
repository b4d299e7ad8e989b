//! Asset feeds: files in folders. The item key is the validated path.

use ferry_types::ItemKey;

use crate::FormatError;

/// Validates an asset path as received after percent-decoding (the router
/// decodes once). Refuses anything that could escape the feed or be read two
/// ways: empty, absolute, `.`/`..` segments, empty segments, backslashes,
/// control characters and over-long paths.
pub fn asset_key(path: &str) -> Result<ItemKey, FormatError> {
    let bad = |why: &str| {
        Err(FormatError::invalid(format!(
            "invalid asset path {path:?}: {why}"
        )))
    };
    if path.is_empty() {
        return bad("empty");
    }
    if path.starts_with('/') {
        return bad("absolute paths are not allowed");
    }
    if path.contains('\\') {
        return bad("backslashes are not allowed");
    }
    if path.chars().any(char::is_control) {
        return bad("control characters are not allowed");
    }
    if path.len() > 1024 {
        return bad("longer than 1024 bytes");
    }
    for seg in path.split('/') {
        match seg {
            "" => return bad("empty path segment"),
            "." | ".." => return bad("'.' and '..' segments are not allowed"),
            _ => {}
        }
    }
    ItemKey::new(path).map_err(|e| FormatError::invalid(e.to_string()))
}

/// A folder prefix for listing: `""` (the root) or a validated path ending in `/`.
pub fn asset_dir_prefix(dir: &str) -> Result<String, FormatError> {
    let trimmed = dir.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    asset_key(trimmed).map(|k| format!("{k}/"))
}

/// Checks an item received by replication or from a bundle as an upload
/// would be: the key is a valid asset path, the metadata is
/// `{"content_type": STRING, "size": N}` (a content type that is a valid
/// header value, at most 255 bytes) and there is exactly one blob. A
/// tombstone (`meta`/`blobs` absent) needs only a valid key.
pub fn validate_item(
    key: &ItemKey,
    live: Option<(&serde_json::Value, &[ferry_types::Digest])>,
) -> Result<(), FormatError> {
    if asset_key(key.as_str())?.as_str() != key.as_str() {
        return Err(FormatError::invalid(format!("invalid asset path {key:?}")));
    }
    let Some((meta, blobs)) = live else {
        return Ok(());
    };
    let bad = |why: &str| Err(FormatError::invalid(format!("asset {key}: {why}")));
    let Some(obj) = meta.as_object() else {
        return bad("metadata is not an object");
    };
    match obj.get("content_type").and_then(|v| v.as_str()) {
        Some(ct) if !ct.is_empty() && ct.len() <= 255 && ct.bytes().all(|b| (0x20..0x7f).contains(&b)) => {}
        _ => return bad("metadata needs a printable \"content_type\" of at most 255 bytes"),
    }
    if obj.get("size").and_then(|v| v.as_u64()).is_none() {
        return bad("metadata needs a \"size\" in bytes");
    }
    if obj.keys().any(|k| k != "content_type" && k != "size") {
        return bad("metadata has fields an upload never sets");
    }
    if blobs.len() != 1 {
        return bad("an asset has exactly one blob");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_paths() {
        assert_eq!(asset_key("a/b/c.txt").unwrap().as_str(), "a/b/c.txt");
        assert_eq!(
            asset_key("weird name (1).tar.gz").unwrap().as_str(),
            "weird name (1).tar.gz"
        );
        assert_eq!(asset_dir_prefix("a/b/").unwrap(), "a/b/");
        assert_eq!(asset_dir_prefix("").unwrap(), "");
    }

    #[test]
    fn refuses_traversal() {
        for p in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a/./b",
            "a//b",
            "a\\b",
            "..",
            "a/\0",
            "a/b/",
        ] {
            assert!(asset_key(p).is_err(), "{p:?} accepted");
        }
    }
}
