//! Asset feeds: files in folders. The item key is the validated path.

use ferry_types::ItemKey;
use unicode_normalization::{UnicodeNormalization, is_nfc};

use crate::FormatError;

/// Whether `c` is a format character that shows as nothing or reorders
/// the text around it (Unicode general category Cf, as far as it is used
/// to disguise names: soft hyphen, Arabic letter mark, Mongolian vowel
/// separator, zero-width space/joiners, left-to-right and right-to-left
/// marks, embeddings and overrides (the "Trojan Source" characters,
/// CVE-2021-42574), word joiner and invisible operators, isolates,
/// the byte order mark, interlinear annotation and tag characters).
///
/// Also the characters that are not format characters but show as
/// nothing all the same, or break a name's line: the combining grapheme
/// joiner, the Hangul fillers, the Khmer inherent vowels, variation
/// selectors (both blocks), and the line and paragraph separators.
pub fn hidden_format_char(c: char) -> bool {
    matches!(
        c as u32,
        0x00AD
            | 0x034F
            | 0x061C
            | 0x115F
            | 0x1160
            | 0x17B4
            | 0x17B5
            | 0x180E
            | 0x200B..=0x200F
            | 0x2028
            | 0x2029
            | 0x202A..=0x202E
            | 0x2060..=0x2064
            | 0x2066..=0x206F
            | 0x3164
            | 0xFE00..=0xFE0F
            | 0xFEFF
            | 0xFFA0
            | 0xFFF9..=0xFFFB
            | 0xE0001
            | 0xE0020..=0xE007F
            | 0xE0100..=0xE01EF
    )
}

/// Whether `c` is a noncharacter (U+FDD0–U+FDEF and the last two code
/// points of every plane, U+FFFE, U+FFFF … U+10FFFF): reserved by Unicode
/// for a program's own use, never text to interchange (Unicode §23.7).
pub fn noncharacter(c: char) -> bool {
    let cp = c as u32;
    (0xFDD0..=0xFDEF).contains(&cp) || cp & 0xFFFE == 0xFFFE
}

/// Validates an asset path as received after percent-decoding (the router
/// decodes once) and returns its key: the path in Unicode Normalization
/// Form C (UAX #15), so a name written decomposed (`e` + U+0301, as macOS
/// writes file names) and precomposed (`é`) is one file, found either way.
/// Refuses anything that could escape the feed or be read two ways: empty,
/// absolute, `.`/`..` segments, empty segments, backslashes, control
/// characters, invisible and bidirectional formatting characters (see
/// [`hidden_format_char`]), noncharacters ([`noncharacter`]), a name that
/// starts with a combining mark, and paths over 1024 bytes.
pub fn asset_key(path: &str) -> Result<ItemKey, FormatError> {
    let bad = |why: &str| {
        Err(FormatError::invalid(format!(
            "invalid asset path {path:?}: {why}"
        )))
    };
    if let Some(c) = path.chars().find(|c| hidden_format_char(*c)) {
        return bad(&format!(
            "invisible or text-direction character U+{:04X} is not allowed (a name could show as another)",
            c as u32
        ));
    }
    if let Some(c) = path.chars().find(|c| noncharacter(*c)) {
        return bad(&format!(
            "noncharacter U+{:04X} is not allowed (it is not text)",
            c as u32
        ));
    }
    if let Some(seg) = path.split('/').find(|seg| {
        seg.chars()
            .next()
            .is_some_and(unicode_normalization::char::is_combining_mark)
    }) {
        return bad(&format!(
            "the name {seg:?} starts with a combining mark, which would join what is shown before it"
        ));
    }
    let composed: String;
    let path = if is_nfc(path) {
        path
    } else {
        composed = path.nfc().collect();
        composed.as_str()
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
    fn names_are_kept_composed_and_invisible_characters_refused() {
        let decomposed = "docs/cafe\u{301}/re\u{301}sume\u{301}.pdf";
        let composed = "docs/caf\u{e9}/r\u{e9}sum\u{e9}.pdf";
        assert_eq!(asset_key(decomposed).unwrap().as_str(), composed);
        assert_eq!(asset_key(composed).unwrap().as_str(), composed);
        assert_eq!(asset_dir_prefix("cafe\u{301}/").unwrap(), "caf\u{e9}/");
        // A replicated key must already be in the form uploads store.
        let key = ItemKey::new(decomposed).unwrap();
        assert!(validate_item(&key, None).is_err());
        for hidden in [
            "invoice\u{202e}fdp.exe",
            "pay\u{200b}roll.xlsx",
            "a\u{200d}b",
            "\u{feff}readme",
            "x\u{2066}y\u{2069}",
            "soft\u{ad}hyphen",
            "tag\u{e0041}",
            // Not format characters, but shown as nothing all the same.
            "\u{3164}.txt",
            "a\u{115f}b",
            "heart\u{fe0f}.png",
            "line\u{2028}break",
            "cgj\u{34f}x",
        ] {
            let e = asset_key(hidden).unwrap_err().to_string();
            assert!(
                e.contains("invisible or text-direction character"),
                "{hidden:?}: {e}"
            );
        }
        for non in ["a\u{ffff}", "b\u{fdd0}", "c\u{10ffff}", "d\u{1fffe}"] {
            let e = asset_key(non).unwrap_err().to_string();
            assert!(e.contains("noncharacter"), "{non:?}: {e}");
        }
        let e = asset_key("dir/\u{301}name").unwrap_err().to_string();
        assert!(e.contains("starts with a combining mark"), "{e}");
        // Ordinary non-ASCII names are kept, spaces (also no-break) too.
        assert!(asset_key("日本語/файл ü.txt").is_ok());
        assert!(asset_key("no\u{a0}break.txt").is_ok());
        assert!(asset_key("private\u{10fffd}.txt").is_ok());
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
