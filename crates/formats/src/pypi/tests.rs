//! Tests across the PyPI module: real wheels and sdists built in memory.

use std::io::{Cursor, Write};

use ferry_types::Digest;
use proptest::prelude::*;
use zip::write::SimpleFileOptions;

use super::*;
use crate::{ArchiveLimits, FormatError};

fn metadata(name: &str, version: &str) -> String {
    format!(
        "Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nSummary: A <test> package\n\
         Requires-Python: >=3.8\n\nLong description.\n"
    )
}

fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in entries {
        w.start_file(*name, opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn wheel(name: &str, version: &str, meta: &str) -> Vec<u8> {
    let dist_info = format!("{name}-{version}.dist-info");
    zip_of(&[
        (&format!("{}/__init__.py", name.to_lowercase()), b"x = 1\n"),
        (&format!("{dist_info}/METADATA"), meta.as_bytes()),
        (&format!("{dist_info}/WHEEL"), b"Wheel-Version: 1.0\n"),
        (&format!("{dist_info}/RECORD"), b""),
    ])
}

/// A tar entry: path (written raw, so hostile names are possible), data,
/// and an optional (kind, link target).
struct TarEntry<'a> {
    path: &'a str,
    data: &'a [u8],
    link: Option<(tar::EntryType, &'a str)>,
}

fn file<'a>(path: &'a str, data: &'a [u8]) -> TarEntry<'a> {
    TarEntry {
        path,
        data,
        link: None,
    }
}

fn tar_gz(entries: &[TarEntry<'_>]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut b = tar::Builder::new(gz);
    for e in entries {
        let mut h = tar::Header::new_gnu();
        let raw = h.as_gnu_mut().unwrap();
        raw.name[..e.path.len()].copy_from_slice(e.path.as_bytes());
        h.set_mode(0o644);
        match e.link {
            Some((kind, target)) => {
                h.set_entry_type(kind);
                h.set_size(0);
                h.as_gnu_mut().unwrap().linkname[..target.len()].copy_from_slice(target.as_bytes());
            }
            None => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(e.data.len() as u64);
            }
        }
        h.set_cksum();
        b.append(&h, e.data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

fn sdist(name: &str, version: &str, meta: &str) -> Vec<u8> {
    let dir = format!("{name}-{version}");
    tar_gz(&[
        file(&format!("{dir}/setup.py"), b"# setup\n"),
        file(&format!("{dir}/PKG-INFO"), meta.as_bytes()),
        file(&format!("{dir}/src/{name}.egg-info/PKG-INFO"), b"not this one"),
    ])
}

fn inspect(filename: &str, bytes: &[u8]) -> Result<DistInfo, FormatError> {
    inspect_distribution(filename, Cursor::new(bytes), &ArchiveLimits::default())
}

fn inspect_with(filename: &str, bytes: &[u8], limits: ArchiveLimits) -> Result<DistInfo, FormatError> {
    inspect_distribution(filename, Cursor::new(bytes), &limits)
}

fn invalid_msg(r: Result<DistInfo, FormatError>) -> String {
    match r {
        Err(FormatError::Invalid(m)) => m,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

fn too_large(r: Result<DistInfo, FormatError>) -> String {
    match r {
        Err(FormatError::TooLarge(m)) => m,
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn good_wheel() {
    let bytes = wheel("Foo_Bar", "1.0", &metadata("Foo.Bar", "1.0"));
    let info = inspect("Foo_Bar-1.0-py3-none-any.whl", &bytes).unwrap();
    assert_eq!(
        info,
        DistInfo {
            filename: "Foo_Bar-1.0-py3-none-any.whl".into(),
            kind: DistKind::Wheel,
            name: "Foo.Bar".into(),
            normalized_name: "foo-bar".into(),
            version: "1.0".into(),
            requires_python: Some(">=3.8".into()),
            summary: Some("A <test> package".into()),
            metadata_version: "2.1".into(),
            core_metadata: Some(metadata("Foo.Bar", "1.0").into_bytes()),
        }
    );
}

#[test]
fn good_sdists() {
    let info = inspect(
        "foo_bar-2.0rc1.tar.gz",
        &sdist("foo_bar", "2.0rc1", &metadata("foo-bar", "2.0rc1")),
    )
    .unwrap();
    assert_eq!(
        (info.kind, info.name.as_str(), info.version.as_str()),
        (DistKind::Sdist, "foo-bar", "2.0rc1")
    );
    assert_eq!(info.normalized_name, "foo-bar");

    // Legacy name with dashes, resolved from PKG-INFO; version spelled differently.
    let meta = metadata("my-pkg-2", "1.0.0");
    let info = inspect("my-pkg-2-1.0.tar.gz", &sdist("my-pkg-2", "1.0", &meta)).unwrap();
    assert_eq!(info.normalized_name, "my-pkg-2");

    let zip = zip_of(&[
        ("foo-1.0/PKG-INFO", metadata("foo", "1.0").as_bytes()),
        ("foo-1.0/setup.py", b""),
    ]);
    let info = inspect("foo-1.0.zip", &zip).unwrap();
    assert_eq!((info.kind, info.name.as_str()), (DistKind::Sdist, "foo"));
}

#[test]
fn name_or_version_mismatch() {
    let bytes = wheel("foo", "1.0", &metadata("bar", "1.0"));
    let m = invalid_msg(inspect("foo-1.0-py3-none-any.whl", &bytes));
    assert!(
        m.contains("named for project \"foo\"") && m.contains("Name: \"bar\""),
        "{m}"
    );

    let bytes = wheel("foo", "1.0", &metadata("foo", "1.1"));
    let m = invalid_msg(inspect("foo-1.0-py3-none-any.whl", &bytes));
    assert!(
        m.contains("version \"1.0\"") && m.contains("Version: \"1.1\""),
        "{m}"
    );

    let m = invalid_msg(inspect(
        "foo-1.0.tar.gz",
        &sdist("foo", "1.0", &metadata("other", "1.0")),
    ));
    assert!(m.contains("Name: \"other\""), "{m}");
    let m = invalid_msg(inspect(
        "foo-1.0.tar.gz",
        &sdist("foo", "1.0", &metadata("foo", "2.0")),
    ));
    assert!(m.contains("Version: \"2.0\""), "{m}");

    // A dist-info directory for another project does not count.
    let bytes = wheel("bar", "1.0", &metadata("bar", "1.0"));
    let m = invalid_msg(inspect("foo-1.0-py3-none-any.whl", &bytes));
    assert!(m.contains("has no foo-1.0.dist-info/METADATA file"), "{m}");
}

#[test]
fn missing_metadata() {
    let bytes = zip_of(&[("foo/__init__.py", b"")]);
    let m = invalid_msg(inspect("foo-1.0-py3-none-any.whl", &bytes));
    assert_eq!(
        m,
        "\"foo-1.0-py3-none-any.whl\" has no foo-1.0.dist-info/METADATA file"
    );

    let bytes = tar_gz(&[
        file("foo-1.0/setup.py", b""),
        file("foo-1.0/src/foo.egg-info/PKG-INFO", b"x"),
    ]);
    let m = invalid_msg(inspect("foo-1.0.tar.gz", &bytes));
    assert!(m.contains("has no {name}-{version}/PKG-INFO file"), "{m}");

    let bytes = zip_of(&[("PKG-INFO", metadata("foo", "1.0").as_bytes())]);
    assert!(invalid_msg(inspect("foo-1.0.zip", &bytes)).contains("has no"));

    let two = tar_gz(&[file("a/PKG-INFO", b"x"), file("b/PKG-INFO", b"y")]);
    assert!(invalid_msg(inspect("foo-1.0.tar.gz", &two)).contains("more than one"));

    let bytes = wheel("foo", "1.0", "Name: foo\nVersion: 1.0\n");
    assert!(invalid_msg(inspect("foo-1.0-py3-none-any.whl", &bytes)).contains("no Metadata-Version field"));
}

#[test]
fn hostile_entry_names() {
    let meta = metadata("foo", "1.0");
    let meta = meta.as_bytes();
    for (bad, why) in [
        ("../evil", "outside the archive"),
        ("foo-1.0/../../evil", "outside the archive"),
        ("/etc/passwd", "absolute path"),
        ("C:/evil", "absolute path"),
        ("foo\\..\\evil", "backslash"),
    ] {
        let z = zip_of(&[("foo-1.0.dist-info/METADATA", meta), (bad, b"x")]);
        let m = invalid_msg(inspect("foo-1.0-py3-none-any.whl", &z));
        assert!(m.contains(why), "zip {bad}: {m}");

        let t = tar_gz(&[file("foo-1.0/PKG-INFO", meta), file(bad, b"x")]);
        let m = invalid_msg(inspect("foo-1.0.tar.gz", &t));
        assert!(m.contains(why), "tar {bad}: {m}");
    }
    // Links must stay inside the archive.
    for (kind, target, ok) in [
        (tar::EntryType::Symlink, "../../../etc/passwd", false),
        (tar::EntryType::Symlink, "/etc/passwd", false),
        (tar::EntryType::Link, "../x", false),
        (tar::EntryType::Symlink, "../setup.py", true),
        (tar::EntryType::Link, "foo-1.0/setup.py", true),
    ] {
        let t = tar_gz(&[
            file("foo-1.0/PKG-INFO", meta),
            file("foo-1.0/setup.py", b""),
            TarEntry {
                path: "foo-1.0/sub/link",
                data: b"",
                link: Some((kind, target)),
            },
        ]);
        let r = inspect("foo-1.0.tar.gz", &t);
        if ok {
            assert!(r.is_ok(), "{target}: {r:?}");
        } else {
            assert!(
                r.as_ref()
                    .is_err_and(|e| e.to_string().contains("outside the archive")),
                "{target}: {r:?}"
            );
        }
    }
    // "./" prefixes are harmless.
    let t = tar_gz(&[file("./foo-1.0/PKG-INFO", meta)]);
    assert!(inspect("foo-1.0.tar.gz", &t).is_ok());
}

#[test]
fn zip_bomb() {
    let zeros = vec![0u8; 2 << 20];
    let z = zip_of(&[
        ("foo-1.0.dist-info/METADATA", metadata("foo", "1.0").as_bytes()),
        ("foo/big.bin", &zeros),
    ]);
    assert!(z.len() < 64 << 10, "compressed to {}", z.len());
    let limits = ArchiveLimits {
        max_unpacked_bytes: 1 << 20,
        ..ArchiveLimits::default()
    };
    let m = too_large(inspect_with("foo-1.0-py3-none-any.whl", &z, limits));
    assert!(m.contains("unpacks to more than 1048576 bytes"), "{m}");

    let limits = ArchiveLimits {
        max_entries: 1,
        ..ArchiveLimits::default()
    };
    assert!(too_large(inspect_with("foo-1.0-py3-none-any.whl", &z, limits)).contains("more than 1 entries"));

    // METADATA over the metadata limit, by its declared size.
    let limits = ArchiveLimits {
        max_metadata_bytes: 10,
        ..ArchiveLimits::default()
    };
    assert!(
        too_large(inspect_with("foo-1.0-py3-none-any.whl", &z, limits))
            .contains("METADATA is larger than 10")
    );
}

#[test]
fn lying_metadata_size_is_capped() {
    // A stored METADATA whose headers claim 100 bytes but which holds 5000.
    let mut meta = metadata("foo", "1.0");
    meta.push_str(&"x".repeat(5000));
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    w.start_file("foo-1.0.dist-info/METADATA", opts).unwrap();
    w.write_all(meta.as_bytes()).unwrap();
    let mut bytes = w.finish().unwrap().into_inner();
    let real = (meta.len() as u32).to_le_bytes();
    let fake = 100u32.to_le_bytes();
    // Uncompressed size: offset 22 in the local header, 24 in the central one.
    for (sig, off) in [([0x50, 0x4b, 0x03, 0x04], 22), ([0x50, 0x4b, 0x01, 0x02], 24)] {
        let at = bytes.windows(4).position(|w| w == sig).unwrap() + off;
        assert_eq!(bytes[at..at + 4], real);
        bytes[at..at + 4].copy_from_slice(&fake);
    }
    let limits = ArchiveLimits {
        max_metadata_bytes: 1000,
        ..ArchiveLimits::default()
    };
    let m = too_large(inspect_with("foo-1.0-py3-none-any.whl", &bytes, limits));
    assert!(m.contains("METADATA\" expands past the 100 bytes"), "{m}");
}

#[test]
fn any_entry_inflating_past_its_declared_size_is_refused() {
    // Not the metadata: a data file whose headers claim 10 bytes.
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    w.start_file("foo-1.0.dist-info/METADATA", opts).unwrap();
    w.write_all(metadata("foo", "1.0").as_bytes()).unwrap();
    w.start_file("foo/data.bin", opts).unwrap();
    w.write_all(&vec![0u8; 1 << 20]).unwrap();
    let mut bytes = w.finish().unwrap().into_inner();
    let real = (1u32 << 20).to_le_bytes();
    for (sig, off) in [([0x50, 0x4b, 0x03, 0x04], 22), ([0x50, 0x4b, 0x01, 0x02], 24)] {
        let at = bytes
            .windows(4)
            .enumerate()
            .filter(|(_, w)| *w == sig)
            .map(|(i, _)| i + off)
            .find(|&at| bytes[at..at + 4] == real)
            .unwrap();
        bytes[at..at + 4].copy_from_slice(&10u32.to_le_bytes());
    }
    let m = too_large(inspect_with(
        "foo-1.0-py3-none-any.whl",
        &bytes,
        ArchiveLimits::default(),
    ));
    assert!(
        m.contains("\"foo/data.bin\" expands past the 10 bytes its header declares"),
        "{m}"
    );
}

#[test]
fn tar_bomb() {
    let zeros = vec![0u8; 4 << 20];
    let t = tar_gz(&[
        file("foo-1.0/PKG-INFO", metadata("foo", "1.0").as_bytes()),
        file("foo-1.0/big.bin", &zeros),
    ]);
    assert!(t.len() < 64 << 10);
    let limits = ArchiveLimits {
        max_unpacked_bytes: 1 << 20,
        ..ArchiveLimits::default()
    };
    let m = too_large(inspect_with("foo-1.0.tar.gz", &t, limits));
    assert!(m.contains("unpacks to more than"), "{m}");
    assert!(inspect("foo-1.0.tar.gz", &t).is_ok());

    let limits = ArchiveLimits {
        max_entries: 1,
        ..ArchiveLimits::default()
    };
    assert!(too_large(inspect_with("foo-1.0.tar.gz", &t, limits)).contains("more than 1 entries"));

    // PKG-INFO over the metadata limit.
    let limits = ArchiveLimits {
        max_metadata_bytes: 10,
        ..ArchiveLimits::default()
    };
    assert!(too_large(inspect_with("foo-1.0.tar.gz", &t, limits)).contains("PKG-INFO is larger than 10"));
}

#[test]
fn not_an_archive_or_bad_name() {
    let m = invalid_msg(inspect("foo-1.0-py3-none-any.whl", b"this is not a zip"));
    assert!(m.contains("is not a valid zip archive"), "{m}");
    let m = invalid_msg(inspect("foo-1.0.tar.gz", b"this is not gzip"));
    assert!(m.contains("is not a valid .tar.gz archive"), "{m}");
    let m = invalid_msg(inspect("foo-1.0.zip", b""));
    assert!(m.contains("is not a valid zip archive"), "{m}");

    let good = wheel("foo", "1.0", &metadata("foo", "1.0"));
    for bad in [
        "evil.sh",
        "foo.whl",
        "../foo-1.0-py3-none-any.whl",
        "a/foo-1.0.tar.gz",
        "foo-1.0.tar.bz2",
    ] {
        let m = invalid_msg(inspect(bad, &good));
        assert!(m.starts_with("invalid"), "{bad}: {m}");
    }
}

fn info() -> DistInfo {
    inspect(
        "Foo_Bar-1.0-py3-none-any.whl",
        &wheel("Foo_Bar", "1.0", &metadata("Foo.Bar", "1.0")),
    )
    .unwrap()
}

#[test]
fn upload_form() {
    let info = info();
    let sha = Digest::of(b"file");
    let mut form = UploadForm::default();
    for (k, v) in [
        (":action", "file_upload"),
        ("protocol_version", "1"),
        ("name", "foo-bar"),
        ("version", "1.0.0"),
        ("filetype", "bdist_wheel"),
        ("pyversion", "py3"),
        ("metadata_version", "2.1"),
        ("sha256_digest", &sha.hex().to_uppercase()),
        ("md5_digest", "whatever"),
        ("requires_python", ""),
    ] {
        assert!(form.set_field(k, v), "{k}");
        assert!(UploadForm::knows_field(k), "{k}");
    }
    assert!(!form.set_field("classifiers", "x"));
    assert!(!UploadForm::knows_field("classifiers") && !UploadForm::knows_field("content"));
    assert_eq!(form.requires_python, None);
    check_upload(&form, &info, &sha).unwrap();
    check_upload(&UploadForm::default(), &info, &sha).unwrap();

    let check = |f: &dyn Fn(&mut UploadForm)| {
        let mut bad = form.clone();
        f(&mut bad);
        match check_upload(&bad, &info, &sha) {
            Err(FormatError::Invalid(m)) => m,
            other => panic!("{other:?}"),
        }
    };
    let m = check(&|f| f.name = Some("other".into()));
    assert!(
        m.contains("name \"other\"") && m.contains("project \"Foo.Bar\""),
        "{m}"
    );
    let m = check(&|f| f.version = Some("1.1".into()));
    assert!(
        m.contains("version \"1.1\"") && m.contains("version \"1.0\""),
        "{m}"
    );
    let m = check(&|f| f.sha256_digest = Some("00".repeat(32)));
    assert!(m.contains("sha256_digest") && m.contains(&sha.hex()), "{m}");
    let m = check(&|f| f.filetype = Some("sdist".into()));
    assert!(
        m.contains("filetype \"sdist\"") && m.contains("is a wheel"),
        "{m}"
    );
    let m = check(&|f| f.action = Some("submit".into()));
    assert!(m.contains("\"submit\" is not supported"), "{m}");
}

fn file_meta(filename: &str, version: &str) -> FileMeta {
    FileMeta {
        name: "Foo.Bar".into(),
        normalized_name: "foo-bar".into(),
        version: version.into(),
        filename: filename.into(),
        kind: if filename.ends_with(".whl") {
            DistKind::Wheel
        } else {
            DistKind::Sdist
        },
        requires_python: Some(">=3.8".into()),
        summary: None,
        metadata_version: "2.1".into(),
        sha256: Digest::of(filename.as_bytes()),
        size: 1234,
        yanked: false,
        yanked_reason: None,
        upload_time: "2024-05-01T12:00:00.000000Z".into(),
        core_metadata: None,
    }
}

#[test]
fn file_meta_and_keys() {
    let info = info();
    let meta = FileMeta::new(&info, Digest::of(b"x"), 42, "2024-01-01T00:00:00Z");
    let key = meta.key().unwrap();
    assert_eq!(key.as_str(), "foo-bar/Foo_Bar-1.0-py3-none-any.whl");
    assert_eq!(
        parse_file_key(&key).unwrap(),
        ("foo-bar", "Foo_Bar-1.0-py3-none-any.whl")
    );
    assert_eq!(FileMeta::from_json(&meta.to_json()).unwrap(), meta);
    let json = meta.to_json();
    assert_eq!(json["kind"], "wheel");
    assert_eq!(json["yanked"], false);
    assert_eq!(json["sha256"], format!("sha256:{}", Digest::of(b"x").hex()));
    assert!(FileMeta::from_json(&serde_json::json!({"name": 1})).is_err());

    assert_eq!(
        file_key("Foo.Bar", "foo_bar-1.0.tar.gz").unwrap().as_str(),
        "foo-bar/foo_bar-1.0.tar.gz"
    );
    assert!(file_key("foo", "bar-1.0.tar.gz").is_err());
    assert!(file_key("foo", "../foo-1.0.tar.gz").is_err());
    assert!(file_key("bad name", "x-1.0.tar.gz").is_err());
    for bad in [
        "Foo/foo-1.0.tar.gz",
        "foo",
        "foo/bar-1.0.tar.gz",
        "foo/x/foo-1.0.tar.gz",
    ] {
        assert!(parse_file_key(&ItemKey::new(bad).unwrap()).is_err(), "{bad}");
    }
    assert_eq!(project_prefix("Foo_Bar").unwrap(), "foo-bar/");

    let mut m = meta.clone();
    m.yank(Some("broken".into()));
    assert!(m.yanked && m.yanked_reason.as_deref() == Some("broken"));
    m.unyank();
    assert_eq!(m, meta);
}

#[test]
fn render_project_html() {
    let mut yanked = file_meta("foo_bar-1.0.tar.gz", "1.0");
    yanked.yank(Some("bad \"build\" <oops>".into()));
    let mut yanked_no_reason = file_meta("Foo_Bar-0.9-py3-none-any.whl", "0.9");
    yanked_no_reason.yank(None);
    let mut with_metadata = file_meta("Foo_Bar-1.0-py3-none-any.whl", "1.0");
    with_metadata.core_metadata = Some(Digest::of(b"METADATA"));
    let files = [yanked, with_metadata, yanked_no_reason];
    let html = String::from_utf8(render_project(
        "Foo.Bar",
        &files,
        "/pypi/main/",
        IndexFormat::Html,
    ))
    .unwrap();
    assert!(
        html.contains("<meta name=\"pypi:repository-version\" content=\"1.1\">"),
        "{html}"
    );
    assert!(html.contains("<title>Links for foo-bar</title>"));
    let wheel_sha = Digest::of(b"Foo_Bar-1.0-py3-none-any.whl").hex();
    let meta_sha = Digest::of(b"METADATA").hex();
    assert!(
        html.contains(&format!(
            "<a href=\"/pypi/main/files/foo-bar/Foo_Bar-1.0-py3-none-any.whl#sha256={wheel_sha}\" \
         data-requires-python=\"&gt;=3.8\" data-dist-info-metadata=\"sha256={meta_sha}\" \
         data-core-metadata=\"sha256={meta_sha}\">Foo_Bar-1.0-py3-none-any.whl</a><br>"
        )),
        "{html}"
    );
    assert!(
        html.contains("data-yanked=\"bad &quot;build&quot; &lt;oops&gt;\">foo_bar-1.0.tar.gz</a>"),
        "{html}"
    );
    assert!(
        html.contains("data-yanked=\"\">Foo_Bar-0.9-py3-none-any.whl</a>"),
        "{html}"
    );
    assert_eq!(
        html.matches("data-core-metadata").count(),
        1,
        "only files with one say so"
    );
    // Sorted by version, then filename.
    let pos = |s: &str| html.find(&format!(">{s}</a>")).unwrap();
    assert!(pos("Foo_Bar-0.9-py3-none-any.whl") < pos("Foo_Bar-1.0-py3-none-any.whl"));
    assert!(pos("Foo_Bar-1.0-py3-none-any.whl") < pos("foo_bar-1.0.tar.gz"));
}

#[test]
fn render_project_json() {
    let mut a = file_meta("foo_bar-1.0.tar.gz", "1.0");
    a.yank(Some("broken".into()));
    let mut b = file_meta("foo_bar-1.10.tar.gz", "1.10");
    b.yank(None);
    b.requires_python = None;
    let mut c = file_meta("Foo_Bar-1.0.0-py3-none-any.whl", "1.0.0");
    c.core_metadata = Some(Digest::of(b"METADATA"));
    let d = file_meta("foo_bar-1.9.tar.gz", "1.9");
    let body = render_project(
        "foo-bar",
        &[b, a, c, d],
        "https://x.test/pypi/main",
        IndexFormat::Json,
    );
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["meta"]["api-version"], "1.1");
    assert_eq!(v["name"], "foo-bar");
    assert_eq!(v["versions"], serde_json::json!(["1.0.0", "1.9", "1.10"]));
    let files = v["files"].as_array().unwrap();
    let names: Vec<&str> = files.iter().map(|f| f["filename"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "Foo_Bar-1.0.0-py3-none-any.whl",
            "foo_bar-1.0.tar.gz",
            "foo_bar-1.9.tar.gz",
            "foo_bar-1.10.tar.gz"
        ]
    );
    let f = &files[1];
    assert_eq!(f["yanked"], "broken");
    assert_eq!(f["requires-python"], ">=3.8");
    assert_eq!(f["size"], 1234);
    assert_eq!(f["upload-time"], "2024-05-01T12:00:00.000000Z");
    let sha = Digest::of(b"foo_bar-1.0.tar.gz").hex();
    assert_eq!(f["hashes"]["sha256"], sha.as_str());
    assert_eq!(
        f["url"],
        format!("https://x.test/pypi/main/files/foo-bar/foo_bar-1.0.tar.gz#sha256={sha}")
    );
    assert_eq!(files[0]["yanked"], false);
    let meta_sha = Digest::of(b"METADATA").hex();
    assert_eq!(files[0]["core-metadata"]["sha256"], meta_sha.as_str());
    assert_eq!(files[0]["dist-info-metadata"]["sha256"], meta_sha.as_str());
    assert!(files[1].get("core-metadata").is_none());
    assert_eq!(files[3]["yanked"], true);
    assert!(files[3].get("requires-python").is_none());
}

#[test]
fn render_root_pages() {
    let names = ["Zeta", "Foo.Bar", "foo-bar", "a<b"];
    let html = String::from_utf8(render_root(names, IndexFormat::Html)).unwrap();
    assert!(html.contains("<a href=\"foo-bar/\">Foo.Bar</a><br>"), "{html}");
    assert!(html.contains("<a href=\"a%3Cb/\">a&lt;b</a><br>"), "{html}");
    assert_eq!(html.matches("<a ").count(), 3);
    assert!(html.find("Foo.Bar").unwrap() < html.find("Zeta").unwrap());

    let v: serde_json::Value = serde_json::from_slice(&render_root(names, IndexFormat::Json)).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"meta": {"api-version": "1.1"}, "projects": [{"name": "a<b"}, {"name": "Foo.Bar"}, {"name": "Zeta"}]})
    );
    let empty = String::from_utf8(render_root([], IndexFormat::Html)).unwrap();
    assert!(empty.contains("<body>\n  </body>"));
}

proptest! {
    #[test]
    fn inspect_never_panics(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        which in 0usize..3,
    ) {
        let name = ["foo-1.0-py3-none-any.whl", "foo-1.0.tar.gz", "foo-1.0.zip"][which];
        let limits = ArchiveLimits { max_unpacked_bytes: 1 << 20, max_entries: 100, max_metadata_bytes: 4096 };
        let _ = inspect_distribution(name, Cursor::new(&bytes), &limits);
    }

    #[test]
    fn inspect_never_panics_on_damaged_archives(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        which in 0usize..2,
    ) {
        let (name, mut bytes) = if which == 0 {
            ("foo-1.0-py3-none-any.whl", wheel("foo", "1.0", &metadata("foo", "1.0")))
        } else {
            ("foo-1.0.tar.gz", sdist("foo", "1.0", &metadata("foo", "1.0")))
        };
        for (i, b) in flips {
            let at = i.index(bytes.len());
            bytes[at] = b;
        }
        let _ = inspect_distribution(name, Cursor::new(&bytes), &ArchiveLimits::default());
    }

    #[test]
    fn parse_filename_never_panics(s in "\\PC{0,64}") {
        let _ = parse_filename(&s, None);
        let _ = parse_filename(&s, Some("foo"));
        let _ = Version::parse(&s);
    }
}
