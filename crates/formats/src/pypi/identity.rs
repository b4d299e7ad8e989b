//! Which distribution files are "the same file" of a release: installers
//! that find two of them for one requirement cannot tell them apart, and
//! may install either (pip and uv do not pick the same one).

use std::collections::BTreeSet;
use std::fmt;

use super::filename::{ArchiveFormat, DistKind, parse_filename};
use super::version::Version;
use crate::FormatError;

/// What identifies a distribution file among the files of a feed. Two file
/// names with the same identity name equivalent files, however they are
/// spelled; a feed keeps at most one file per identity.
///
/// - the project: its PEP 503 normalized name (`Dupe`, `dupe`, `DUPE`);
/// - the release: its PEP 440 canonical version ([`Version::canonical`]:
///   `1.0`, `1.0.0` and `01.0` are one version);
/// - for a wheel (PEP 427/491), its build tag and its compressed tag set:
///   the python, ABI and platform tags, each a set of `.`-separated tags
///   (lowercase; `py2.py3` and `PY3.py2` are one set);
/// - for an sdist (PEP 625 and legacy names), its archive format
///   (`.tar.gz` or `.zip`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileIdentity {
    /// PEP 503 normalized project name.
    pub project: String,
    /// PEP 440 canonical version.
    pub version: String,
    /// What else tells files of one release apart.
    pub flavor: FileFlavor,
}

/// The part of a [`FileIdentity`] that depends on the kind of file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FileFlavor {
    /// A wheel: build tag and compressed tag set (PEP 427).
    Wheel {
        /// The build tag as PEP 427 sorts it: its leading digits as a
        /// number (written without leading zeros) and the rest of the tag.
        build: Option<(String, String)>,
        /// The python tags (`py2.py3` → `py2`, `py3`).
        python: BTreeSet<String>,
        /// The ABI tags.
        abi: BTreeSet<String>,
        /// The platform tags.
        platform: BTreeSet<String>,
    },
    /// A source distribution in one archive format.
    Sdist(SdistFormat),
}

/// The archive format of a source distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SdistFormat {
    /// `.tar.gz` (PEP 625).
    TarGz,
    /// `.zip` (legacy).
    Zip,
}

/// The identity of distribution file `filename`. `project`, when given, is
/// the project the file belongs to (it decides how a legacy sdist name
/// such as `my-pkg-1.0.tar.gz` splits; a file of another project is
/// refused). Pure: looks at the name only.
pub fn file_identity(filename: &str, project: Option<&str>) -> Result<FileIdentity, FormatError> {
    let parsed = parse_filename(filename, project)?;
    let version = Version::parse(&parsed.version)?.canonical();
    let flavor = match (parsed.kind, &parsed.wheel_tags) {
        (DistKind::Wheel, Some(tags)) => FileFlavor::Wheel {
            build: tags.build.as_deref().map(build_key),
            python: tag_set(&tags.python),
            abi: tag_set(&tags.abi),
            platform: tag_set(&tags.platform),
        },
        (DistKind::Wheel, None) => {
            return Err(FormatError::invalid(format!(
                "wheel filename {filename:?} has no tags"
            )));
        }
        (DistKind::Sdist, _) => FileFlavor::Sdist(match parsed.archive {
            ArchiveFormat::TarGz => SdistFormat::TarGz,
            ArchiveFormat::Zip => SdistFormat::Zip,
        }),
    };
    Ok(FileIdentity {
        project: parsed.normalized_name(),
        version,
        flavor,
    })
}

/// A build tag as PEP 427 compares it: (leading digits as a number, rest).
fn build_key(tag: &str) -> (String, String) {
    let digits = tag.bytes().take_while(u8::is_ascii_digit).count();
    let (number, rest) = tag.split_at(digits);
    let number = number.trim_start_matches('0');
    let number = if number.is_empty() { "0" } else { number };
    (number.to_owned(), rest.to_owned())
}

/// One part of a compressed tag set: its `.`-separated tags, lowercase
/// (tags compare without case, as `packaging.tags.Tag` does).
fn tag_set(tags: &str) -> BTreeSet<String> {
    tags.split('.')
        .filter(|t| !t.is_empty())
        .map(str::to_ascii_lowercase)
        .collect()
}

fn join(set: &BTreeSet<String>) -> String {
    set.iter().map(String::as_str).collect::<Vec<_>>().join(".")
}

impl fmt::Display for FileIdentity {
    /// E.g. `dupe 1, wheel py3-none-any` or `dupe 1, sdist (.tar.gz)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}, ", self.project, self.version)?;
        match &self.flavor {
            FileFlavor::Wheel {
                build,
                python,
                abi,
                platform,
            } => {
                f.write_str("wheel ")?;
                if let Some((number, rest)) = build {
                    write!(f, "build {number}{rest} ")?;
                }
                write!(f, "{}-{}-{}", join(python), join(abi), join(platform))
            }
            FileFlavor::Sdist(SdistFormat::TarGz) => f.write_str("sdist (.tar.gz)"),
            FileFlavor::Sdist(SdistFormat::Zip) => f.write_str("sdist (.zip)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(filename: &str) -> FileIdentity {
        file_identity(filename, None).unwrap_or_else(|e| panic!("{filename}: {e}"))
    }

    #[test]
    fn equivalent_names_share_an_identity() {
        for group in [
            &[
                "Dupe-1.0.0-py3-none-any.whl",
                "dupe-1.0.0-py3-none-any.whl",
                "dupe-01.0.0-py3-none-any.whl",
                "dupe-1.0-py3-none-any.whl",
                "dupe-1-PY3-None-ANY.whl",
                "DUPE-v1.0-py3-none-any.whl",
            ][..],
            &[
                "foo_bar-2.0-py2.py3-none-any.whl",
                "Foo.Bar-2.0.0-py3.py2-none-any.whl",
                "foo_bar-2-py3.py2.py3-none-any.whl",
            ],
            &[
                "pkg-1.0-1-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
                "pkg-1.0-01-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
            ],
            &["foo_bar-1.0rc1.tar.gz", "Foo.Bar-1.0.0-RC1.tar.gz"],
            &["foo_bar-1.0.zip", "foo-bar-1.0.0.zip"],
        ] {
            let first = id(group[0]);
            for name in &group[1..] {
                assert_eq!(id(name), first, "{name} vs {}", group[0]);
            }
        }
    }

    #[test]
    fn different_files_of_one_release_differ() {
        let names = [
            "pkg-1.0-py3-none-any.whl",
            "pkg-1.0-py2.py3-none-any.whl",
            "pkg-1.0-py3-abi3-any.whl",
            "pkg-1.0-py3-none-linux_x86_64.whl",
            "pkg-1.0-1-py3-none-any.whl",
            "pkg-1.0-2-py3-none-any.whl",
            "pkg-1.0-1a-py3-none-any.whl",
            "pkg-1.0.1-py3-none-any.whl",
            "pkg-1.0.post0-py3-none-any.whl",
            "pkg-1.0+local-py3-none-any.whl",
            "other-1.0-py3-none-any.whl",
            "pkg-1.0.tar.gz",
            "pkg-1.0.zip",
        ];
        let ids: BTreeSet<FileIdentity> = names.iter().map(|n| id(n)).collect();
        assert_eq!(ids.len(), names.len());
    }

    #[test]
    fn legacy_sdist_names_split_by_project() {
        let a = file_identity("my-pkg-1.0.tar.gz", Some("My.Pkg")).unwrap();
        let b = file_identity("my_pkg-1.0.0.tar.gz", Some("my-pkg")).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "my-pkg 1, sdist (.tar.gz)");
        assert!(file_identity("other-1.0.tar.gz", Some("my-pkg")).is_err());
        assert!(file_identity("not a file", None).is_err());
    }

    #[test]
    fn displayed() {
        assert_eq!(
            id("Foo_Bar-1.0.0-01x-py3.py2-none-any.whl").to_string(),
            "foo-bar 1, wheel build 1x py2.py3-none-any"
        );
        assert_eq!(id("foo-1.0.zip").to_string(), "foo 1, sdist (.zip)");
    }
}
