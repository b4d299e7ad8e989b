//! Distribution file names: wheels (PEP 427/491) and sdists (PEP 625, plus
//! legacy names).

use serde::{Deserialize, Serialize};

use super::names::{normalize_name, validate_project_name};
use super::version::Version;
use crate::FormatError;

/// Longest distribution file name accepted.
pub const MAX_FILENAME_LEN: usize = 255;

/// What kind of distribution a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DistKind {
    /// A built distribution (`.whl`).
    Wheel,
    /// A source distribution (`.tar.gz` or `.zip`).
    Sdist,
}

impl DistKind {
    /// `"wheel"` or `"sdist"`, as stored in item metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            DistKind::Wheel => "wheel",
            DistKind::Sdist => "sdist",
        }
    }

    /// The `filetype` value of the legacy upload form: `bdist_wheel` or `sdist`.
    pub fn upload_filetype(self) -> &'static str {
        match self {
            DistKind::Wheel => "bdist_wheel",
            DistKind::Sdist => "sdist",
        }
    }
}

/// The container format of a distribution file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArchiveFormat {
    /// Wheels and `.zip` sdists.
    Zip,
    /// `.tar.gz` sdists.
    TarGz,
}

/// The tags of a wheel file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WheelTags {
    pub build: Option<String>,
    pub python: String,
    pub abi: String,
    pub platform: String,
}

/// A parsed, validated distribution file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistFilename {
    /// The whole file name, unchanged.
    pub filename: String,
    /// The project name as spelled in the file name.
    pub name: String,
    /// The version as spelled in the file name (a valid PEP 440 version).
    pub version: String,
    pub kind: DistKind,
    pub archive: ArchiveFormat,
    /// Present for wheels.
    pub wheel_tags: Option<WheelTags>,
}

impl DistFilename {
    /// The PEP 503 normalized project name.
    pub fn normalized_name(&self) -> String {
        normalize_name(&self.name)
    }
}

/// Parses and validates a distribution file name:
/// `{name}-{version}(-{build})?-{python}-{abi}-{platform}.whl`,
/// `{name}-{version}.tar.gz` or `{name}-{version}.zip`.
///
/// Legacy sdist names may contain `-` in the project name
/// (`my-pkg-1.0.tar.gz`). When `expected_name` is given the split that
/// matches it is used, and a file of another project is refused; without it
/// the first split whose remainder is a valid version wins.
pub fn parse_filename(filename: &str, expected_name: Option<&str>) -> Result<DistFilename, FormatError> {
    let bad = |why: &str| {
        Err(FormatError::invalid(format!(
            "invalid distribution filename {filename:?}: {why}"
        )))
    };
    if filename.is_empty() {
        return bad("empty");
    }
    if filename.contains(['/', '\\']) {
        return bad("must be a plain file name, without path separators");
    }
    if filename.len() > MAX_FILENAME_LEN {
        return bad(&format!("longer than {MAX_FILENAME_LEN} characters"));
    }
    if !filename
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'+' | b'!'))
    {
        return bad("may contain only ASCII letters, digits, '-', '_', '.', '+' and '!'");
    }
    let parsed = if let Some(stem) = filename.strip_suffix(".whl") {
        parse_wheel(filename, stem)?
    } else if let Some(stem) = filename.strip_suffix(".tar.gz") {
        parse_sdist(filename, stem, ArchiveFormat::TarGz, expected_name)?
    } else if let Some(stem) = filename.strip_suffix(".zip") {
        parse_sdist(filename, stem, ArchiveFormat::Zip, expected_name)?
    } else {
        return bad("expected a wheel (.whl) or a source distribution (.tar.gz or .zip)");
    };
    if let Some(expected) = expected_name
        && normalize_name(&parsed.name) != normalize_name(expected)
    {
        return bad(&format!(
            "the file belongs to project {:?}, not {expected:?}",
            parsed.name
        ));
    }
    Ok(parsed)
}

fn parse_wheel(filename: &str, stem: &str) -> Result<DistFilename, FormatError> {
    let bad = |why: String| FormatError::invalid(format!("invalid wheel filename {filename:?}: {why}"));
    let parts: Vec<&str> = stem.split('-').collect();
    let (name, version, build, tags) = match parts.as_slice() {
        [n, v, py, abi, plat] => (*n, *v, None, [*py, *abi, *plat]),
        [n, v, b, py, abi, plat] => (*n, *v, Some(*b), [*py, *abi, *plat]),
        _ => {
            return Err(bad(
                "expected {name}-{version}(-{build})?-{python tag}-{abi tag}-{platform tag}.whl".into(),
            ));
        }
    };
    validate_project_name(name).map_err(|e| bad(e.to_string()))?;
    Version::parse(version).map_err(|e| bad(e.to_string()))?;
    if let Some(b) = build
        && !(b.starts_with(|c: char| c.is_ascii_digit()) && b.bytes().all(is_tag_byte))
    {
        return Err(bad(format!("build tag {b:?} must start with a digit")));
    }
    for (what, tag) in ["python", "abi", "platform"].into_iter().zip(tags) {
        if tag.is_empty() || !tag.bytes().all(is_tag_byte) {
            return Err(bad(format!("{what} tag {tag:?} is not valid")));
        }
    }
    let [python, abi, platform] = tags.map(str::to_owned);
    Ok(DistFilename {
        filename: filename.to_owned(),
        name: name.to_owned(),
        version: version.to_owned(),
        kind: DistKind::Wheel,
        archive: ArchiveFormat::Zip,
        wheel_tags: Some(WheelTags {
            build: build.map(str::to_owned),
            python,
            abi,
            platform,
        }),
    })
}

fn is_tag_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.')
}

fn parse_sdist(
    filename: &str,
    stem: &str,
    archive: ArchiveFormat,
    expected_name: Option<&str>,
) -> Result<DistFilename, FormatError> {
    let bad = |why: String| FormatError::invalid(format!("invalid sdist filename {filename:?}: {why}"));
    let splits: Vec<(&str, &str)> = stem
        .match_indices('-')
        .map(|(i, _)| (&stem[..i], &stem[i + 1..]))
        .collect();
    let hinted = expected_name.and_then(|expected| {
        let want = normalize_name(expected);
        splits.iter().find(|(name, _)| normalize_name(name) == want)
    });
    let (name, version) = match hinted {
        Some(&(name, version)) => {
            validate_project_name(name).map_err(|e| bad(e.to_string()))?;
            Version::parse(version).map_err(|e| bad(e.to_string()))?;
            (name, version)
        }
        // No hint, or a file of another project: the first plausible split
        // (the caller then reports which project the file belongs to).
        None => *splits
            .iter()
            .find(|(name, version)| validate_project_name(name).is_ok() && Version::parse(version).is_ok())
            .ok_or_else(|| {
                let ext = if archive == ArchiveFormat::Zip {
                    "zip"
                } else {
                    "tar.gz"
                };
                bad(format!(
                    "expected {{name}}-{{version}}.{ext} with a valid project name and PEP 440 version"
                ))
            })?,
    };
    Ok(DistFilename {
        filename: filename.to_owned(),
        name: name.to_owned(),
        version: version.to_owned(),
        kind: DistKind::Sdist,
        archive,
        wheel_tags: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wheels() {
        let f = parse_filename("Foo_Bar-1.0.2-py3-none-any.whl", None).unwrap();
        assert_eq!((f.name.as_str(), f.version.as_str()), ("Foo_Bar", "1.0.2"));
        assert_eq!(f.kind, DistKind::Wheel);
        assert_eq!(f.normalized_name(), "foo-bar");
        let tags = f.wheel_tags.unwrap();
        assert_eq!(
            (tags.python.as_str(), tags.abi.as_str(), tags.platform.as_str()),
            ("py3", "none", "any")
        );

        let f = parse_filename(
            "numpy-2.0.0-1abc-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
            None,
        )
        .unwrap();
        assert_eq!(f.wheel_tags.unwrap().build.as_deref(), Some("1abc"));
        assert!(parse_filename("pkg-1.0+local.1-py2.py3-none-any.whl", Some("PKG")).is_ok());
    }

    #[test]
    fn sdists() {
        let f = parse_filename("foo_bar-1.0.tar.gz", None).unwrap();
        assert_eq!(
            (f.name.as_str(), f.version.as_str(), f.archive),
            ("foo_bar", "1.0", ArchiveFormat::TarGz)
        );
        let f = parse_filename("my-pkg-2-1.0.zip", Some("My.Pkg.2")).unwrap();
        assert_eq!(
            (f.name.as_str(), f.version.as_str(), f.archive),
            ("my-pkg-2", "1.0", ArchiveFormat::Zip)
        );
        // Without a hint the first plausible split wins.
        let f = parse_filename("my-pkg-1.0.tar.gz", None).unwrap();
        assert_eq!((f.name.as_str(), f.version.as_str()), ("my-pkg", "1.0"));
        let f = parse_filename("foo-1.0-1.tar.gz", None).unwrap();
        assert_eq!((f.name.as_str(), f.version.as_str()), ("foo", "1.0-1"));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "foo.whl",
            "foo-1.0.whl",
            "foo-1.0-py3-none.whl",
            "foo-1.0-x-py3-none-any.whl",
            "foo-1.0-1-2-py3-none-any.whl",
            "foo-bar-1.0-py3-none-any.whl",
            "foo-notaversion-py3-none-any.whl",
            "foo.tar.gz",
            "foo-.tar.gz",
            "-1.0.tar.gz",
            "foo-1.0.tar.bz2",
            "foo-1.0.egg",
            "foo-1.0.exe",
            "../foo-1.0.tar.gz",
            "dir/foo-1.0.tar.gz",
            "dir\\foo-1.0.tar.gz",
            "foo 1.0.tar.gz",
            "foo-1.0.tar.gz\0",
            "foo-1.0-py3-none-any.WHL",
        ] {
            assert!(parse_filename(bad, None).is_err(), "{bad:?} accepted");
        }
        let e = parse_filename("a/b-1.0.tar.gz", None).unwrap_err().to_string();
        assert!(e.contains("path separators"), "{e}");
        let e = parse_filename("foo-1.0.rpm", None).unwrap_err().to_string();
        assert!(e.contains(".whl"), "{e}");
    }

    #[test]
    fn expected_name() {
        let e = parse_filename("other-1.0.tar.gz", Some("foo"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("belongs to project \"other\", not \"foo\""), "{e}");
        let e = parse_filename("other-1.0-py3-none-any.whl", Some("foo"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not \"foo\""), "{e}");
        let e = parse_filename("foo-bogus.tar.gz", Some("foo"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a valid PEP 440 version"), "{e}");
    }
}
