//! Core metadata (`METADATA` in wheels, `PKG-INFO` in sdists): the
//! RFC 822-style header block, of which Ferry reads a few fields.

use super::names::validate_project_name;
use super::version::Version;
use crate::FormatError;

/// The core metadata fields Ferry uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreMetadata {
    pub metadata_version: String,
    /// As written (validated against PEP 508, not normalized).
    pub name: String,
    /// As written (a valid PEP 440 version, not normalized).
    pub version: String,
    pub summary: Option<String>,
    pub requires_python: Option<String>,
}

const FIELDS: [&str; 5] = [
    "metadata-version",
    "name",
    "version",
    "summary",
    "requires-python",
];

/// Parses a core metadata file. `source` names it in error messages
/// (e.g. `"foo-1.0.dist-info/METADATA"`).
///
/// Header lines are `Field: value`; lines starting with a space or tab
/// continue the previous field; the first empty line ends the headers (the
/// rest is the description, which is not needed). Field names are
/// case-insensitive and the first occurrence of each wins. Invalid UTF-8 is
/// replaced rather than refused.
pub fn parse_core_metadata(bytes: &[u8], source: &str) -> Result<CoreMetadata, FormatError> {
    let text = String::from_utf8_lossy(bytes);
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut values: [Option<String>; 5] = Default::default();
    // Index into FIELDS of the field that continuation lines extend, if
    // it is one being collected.
    let mut current: Option<usize> = None;
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(v) = current.and_then(|i| values[i].as_mut()) {
                let more = line.trim();
                if !more.is_empty() {
                    if !v.is_empty() {
                        v.push(' ');
                    }
                    v.push_str(more);
                }
            }
            continue;
        }
        current = None;
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let key = key.trim().to_ascii_lowercase();
        if let Some(i) = FIELDS.iter().position(|f| *f == key)
            && values[i].is_none()
        {
            values[i] = Some(value.trim().to_owned());
            current = Some(i);
        }
    }
    let [metadata_version, name, version, summary, requires_python] =
        values.map(|v| v.filter(|s| !s.is_empty()));
    let missing = |field: &str| FormatError::invalid(format!("{source} has no {field} field"));
    let metadata_version = metadata_version.ok_or_else(|| missing("Metadata-Version"))?;
    let name = name.ok_or_else(|| missing("Name"))?;
    let version = version.ok_or_else(|| missing("Version"))?;
    validate_project_name(&name).map_err(|e| FormatError::invalid(format!("{source}: {e}")))?;
    Version::parse(&version).map_err(|e| FormatError::invalid(format!("{source}: {e}")))?;
    Ok(CoreMetadata {
        metadata_version,
        name,
        version,
        summary: summary.filter(|s| s != "UNKNOWN"),
        requires_python: requires_python.filter(|s| s != "UNKNOWN"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fields_continuations_and_body() {
        let text = "\u{feff}Metadata-Version: 2.1\r\nname: Foo.Bar\r\nVersion: 1.0\r\nSummary: A thing\r\n  \
                    that spans lines\r\nRequires-Python: >=3.8\r\nClassifier: X\r\n\tcontinued\r\n\r\n\
                    Name: Body\nVersion: 9\n";
        let m = parse_core_metadata(text.as_bytes(), "METADATA").unwrap();
        assert_eq!(
            m,
            CoreMetadata {
                metadata_version: "2.1".into(),
                name: "Foo.Bar".into(),
                version: "1.0".into(),
                summary: Some("A thing that spans lines".into()),
                requires_python: Some(">=3.8".into()),
            }
        );
    }

    #[test]
    fn optional_fields_and_first_wins() {
        let m = parse_core_metadata(
            b"Metadata-Version: 1.0\nName: a\nName: b\nVersion: 2\nSummary: UNKNOWN\n",
            "PKG-INFO",
        )
        .unwrap();
        assert_eq!((m.name.as_str(), m.summary, m.requires_python), ("a", None, None));
    }

    #[test]
    fn refuses_missing_or_invalid() {
        let e = parse_core_metadata(b"Name: a\nVersion: 1\n", "PKG-INFO")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "PKG-INFO has no Metadata-Version field");
        let e = parse_core_metadata(b"Metadata-Version: 2.1\nVersion: 1\n", "M")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "M has no Name field");
        let e = parse_core_metadata(b"Metadata-Version: 2.1\nName: a\n\nVersion: 1\n", "M")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "M has no Version field");
        let e = parse_core_metadata(b"Metadata-Version: 2.1\nName: a b\nVersion: 1\n", "M")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("M: invalid project name"), "{e}");
        let e = parse_core_metadata(b"Metadata-Version: 2.1\nName: a\nVersion: x\n", "M")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a valid PEP 440"), "{e}");
        assert!(parse_core_metadata(b"", "M").is_err());
    }
}
