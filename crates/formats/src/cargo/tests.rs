use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;

use super::*;

/// A gzip tar with the given (path, content) entries, written raw so that
/// bad paths are possible.
fn targz(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut tar = Vec::new();
    for (path, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(EntryType::Regular);
        h.set_cksum();
        tar.extend_from_slice(h.as_bytes());
        tar.extend_from_slice(data);
        tar.resize(tar.len().div_ceil(512) * 512, 0);
    }
    tar.resize(tar.len() + 1024, 0);
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

fn manifest(name: &str, vers: &str) -> Vec<u8> {
    format!("[package]\nname = \"{name}\"\nversion = \"{vers}\"\nedition = \"2021\"\n").into_bytes()
}

fn inspect(bytes: &[u8], name: &str, vers: &str) -> Result<(), FormatError> {
    inspect_crate(bytes, name, vers, &ArchiveLimits::default())
}

#[test]
fn names() {
    for ok in ["a", "serde", "Foo_Bar-baz", "x1"] {
        validate_crate_name(ok).unwrap();
    }
    for bad in ["", "1abc", "-a", "a.b", "a b", "ä", &"a".repeat(65)] {
        assert!(validate_crate_name(bad).is_err(), "{bad:?}");
    }
    for reserved in [
        "std",
        "core",
        "alloc",
        "proc_macro",
        "proc-macro",
        "test",
        "nul",
        "CON",
        "com1",
        "Lpt9",
    ] {
        let e = validate_crate_name(reserved).unwrap_err().to_string();
        assert!(e.contains("reserved"), "{reserved}: {e}");
    }
    assert_eq!(canonical_name("Foo-Bar_baz"), "foo_bar_baz");
    assert_eq!(
        version_key("Foo-Bar", "1.0.0+build.1").unwrap().as_str(),
        "crate/foo_bar/1.0.0"
    );
    assert_eq!(crate_key_prefix("foo_BAR"), "crate/foo_bar/");
    let key = version_key("a-b", "0.1.0-rc.1").unwrap();
    assert_eq!(parse_item_key(&key).unwrap(), ("a_b", "0.1.0-rc.1"));
    for bad in [
        "crate/A/1.0.0",
        "crate/a-b/1.0.0",
        "crate/a/1.0",
        "crate/a/1.0.0+b",
        "pkg/a/1.0.0",
        "crate/a/1.0.0/x",
    ] {
        assert!(parse_item_key(&ItemKey::new(bad).unwrap()).is_err(), "{bad}");
    }
    assert!(version_without_build("1.0").is_err());
}

#[test]
fn index_paths() {
    assert_eq!(index_path("a"), "1/a");
    assert_eq!(index_path("AB"), "2/ab");
    assert_eq!(index_path("abc"), "3/a/abc");
    assert_eq!(index_path("Cargo-Feed"), "ca/rg/cargo-feed");
    for name in ["a", "ab", "abc", "abcd", "serde_json"] {
        assert_eq!(parse_index_path(&index_path(name)).as_deref(), Some(name));
    }
    for bad in [
        "1/ab",
        "3/b/abc",
        "ab/cd/abce",
        "ab/cd/ABCD",
        "config.json",
        "2/a.",
        "x/yz/xyz1",
        "../2/ab",
    ] {
        assert_eq!(parse_index_path(bad), None, "{bad}");
    }
}

fn publish_json() -> serde_json::Value {
    serde_json::json!({
        "name": "Fancy-Crate", "vers": "1.2.3",
        "deps": [
            {"name": "base", "version_req": "^0.1", "features": ["x"], "optional": true,
             "default_features": false, "target": "cfg(unix)", "kind": "normal", "registry": null,
             "explicit_name_in_toml": "renamed"},
            {"name": "serde", "version_req": "1", "features": [], "optional": false,
             "default_features": true, "target": null, "kind": "dev",
             "registry": "https://github.com/rust-lang/crates.io-index", "explicit_name_in_toml": null}
        ],
        "features": {"default": ["plain"], "plain": [], "new": ["dep:renamed"], "weak": ["renamed?/x"]},
        "authors": [], "description": "a fancy crate", "links": "fancy", "rust_version": "1.70",
        "keywords": [], "categories": [], "badges": {}
    })
}

#[test]
fn publish_json_becomes_an_index_line() {
    let p = parse_publish_json(&serde_json::to_vec(&publish_json()).unwrap()).unwrap();
    let item = p.into_item(&Digest::of(b"crate"), 5);
    let line = serde_json::to_value(&item.index).unwrap();
    assert_eq!(line["name"], "Fancy-Crate");
    assert_eq!(line["cksum"], Digest::of(b"crate").hex());
    assert_eq!(line["deps"][0]["name"], "renamed");
    assert_eq!(line["deps"][0]["package"], "base");
    assert_eq!(line["deps"][0]["req"], "^0.1");
    assert_eq!(line["deps"][0]["target"], "cfg(unix)");
    assert_eq!(line["deps"][0]["default_features"], false);
    assert_eq!(line["deps"][1]["kind"], "dev");
    assert_eq!(
        line["deps"][1]["registry"],
        "https://github.com/rust-lang/crates.io-index"
    );
    assert_eq!(
        line["features"],
        serde_json::json!({"default": ["plain"], "plain": []})
    );
    assert_eq!(
        line["features2"],
        serde_json::json!({"new": ["dep:renamed"], "weak": ["renamed?/x"]})
    );
    assert_eq!(line["v"], 2);
    assert_eq!(line["links"], "fancy");
    assert_eq!(line["rust_version"], "1.70");
    assert_eq!(line["yanked"], false);
    assert_eq!(item.description.as_deref(), Some("a fancy crate"));

    // Plain features: no features2, no v.
    let mut j = publish_json();
    j["features"] = serde_json::json!({"a": []});
    j["rust_version"] = serde_json::Value::Null;
    let p = parse_publish_json(&serde_json::to_vec(&j).unwrap()).unwrap();
    let line = serde_json::to_value(&p.entry).unwrap();
    assert!(line.get("features2").is_none() && line.get("v").is_none() && line.get("rust_version").is_none());

    for (field, value, says) in [
        ("name", serde_json::json!("std"), "reserved"),
        ("name", serde_json::json!("9lives"), "must start"),
        ("vers", serde_json::json!("1.0"), "invalid version"),
    ] {
        let mut j = publish_json();
        j[field] = value;
        let e = parse_publish_json(&serde_json::to_vec(&j).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains(says), "{e}");
    }
    let mut j = publish_json();
    j["deps"][1]["version_req"] = serde_json::json!("not a req");
    assert!(parse_publish_json(&serde_json::to_vec(&j).unwrap()).is_err());
    j["deps"][1]["version_req"] = serde_json::json!("1");
    j["deps"][1]["kind"] = serde_json::json!("weird");
    assert!(parse_publish_json(&serde_json::to_vec(&j).unwrap()).is_err());
    assert!(parse_publish_json(b"{not json").is_err());
}

#[test]
fn crate_files() {
    let good = targz(&[
        ("demo-0.1.0/Cargo.toml", &manifest("demo", "0.1.0")),
        ("demo-0.1.0/src/lib.rs", b""),
    ]);
    inspect(&good, "demo", "0.1.0").unwrap();
    // The manifest disagrees with the JSON.
    let e = inspect(&good, "demo", "0.2.0").unwrap_err().to_string();
    assert!(e.contains("outside demo-0.2.0/"), "{e}");
    let other = targz(&[("demo-0.1.0/Cargo.toml", &manifest("demo", "0.9.0"))]);
    let e = inspect(&other, "demo", "0.1.0").unwrap_err().to_string();
    assert!(e.contains("describes demo 0.9.0"), "{e}");
    // Traversal, absolute paths, no manifest, not gzip, truncated.
    let e = inspect(&targz(&[("demo-0.1.0/../../etc/x", b"x")]), "demo", "0.1.0")
        .unwrap_err()
        .to_string();
    assert!(e.contains("path traversal"), "{e}");
    let e = inspect(&targz(&[("/etc/passwd", b"x")]), "demo", "0.1.0")
        .unwrap_err()
        .to_string();
    assert!(e.contains("absolute"), "{e}");
    let e = inspect(&targz(&[("demo-0.1.0/src/lib.rs", b"")]), "demo", "0.1.0")
        .unwrap_err()
        .to_string();
    assert!(e.contains("no demo-0.1.0/Cargo.toml"), "{e}");
    let e = inspect(b"PK\x03\x04 zip", "demo", "0.1.0")
        .unwrap_err()
        .to_string();
    assert!(e.contains("not gzip"), "{e}");
    assert!(inspect(&good[..good.len() - 12], "demo", "0.1.0").is_err());
    // A bomb: a small file that expands past the limit.
    let big = vec![0u8; 4 << 20];
    let bomb = targz(&[
        ("demo-0.1.0/Cargo.toml", &manifest("demo", "0.1.0")),
        ("demo-0.1.0/zeros", &big),
    ]);
    assert!(bomb.len() < 64 << 10);
    let limits = ArchiveLimits {
        max_unpacked_bytes: 1 << 20,
        ..ArchiveLimits::default()
    };
    let e = inspect_crate(bomb.as_slice(), "demo", "0.1.0", &limits).unwrap_err();
    assert!(matches!(e, FormatError::TooLarge(_)), "{e}");
    let limits = ArchiveLimits {
        max_entries: 1,
        ..ArchiveLimits::default()
    };
    let e = inspect_crate(good.as_slice(), "demo", "0.1.0", &limits).unwrap_err();
    assert!(matches!(e, FormatError::TooLarge(_)), "{e}");
    // Whatever the instance's archive limit, no more than cargo itself
    // unpacks (512 MiB): a member declaring 600 MiB is refused from its
    // header, before any of it is read.
    let mut tar = Vec::new();
    let mut h = tar::Header::new_gnu();
    h.set_path("demo-0.1.0/huge").unwrap();
    h.set_size(600 << 20);
    h.set_mode(0o644);
    h.set_entry_type(EntryType::Regular);
    h.set_cksum();
    tar.extend_from_slice(h.as_bytes());
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&tar).unwrap();
    let declared = gz.finish().unwrap();
    let generous = ArchiveLimits {
        max_unpacked_bytes: 4 << 30,
        ..ArchiveLimits::default()
    };
    let e = inspect_crate(declared.as_slice(), "demo", "0.1.0", &generous).unwrap_err();
    assert!(
        matches!(&e, FormatError::TooLarge(m) if m.contains(&MAX_UNPACKED_CRATE.to_string())),
        "{e}"
    );
}

#[test]
fn items_validate_against_their_blob() {
    let p = parse_publish_json(&serde_json::to_vec(&publish_json()).unwrap()).unwrap();
    let d = Digest::of(b"crate");
    let item = p.into_item(&d, 5);
    let key = version_key("fancy_crate", "1.2.3").unwrap();
    let meta = item.to_json();
    assert_eq!(
        validate_item(&key, Some((&meta, &[d]))).unwrap(),
        Some(item.clone())
    );
    assert!(validate_item(&key, None).unwrap().is_none());
    assert!(validate_item(&key, Some((&meta, &[Digest::of(b"other")]))).is_err());
    assert!(validate_item(&key, Some((&meta, &[]))).is_err());
    let wrong = version_key("fancy_crate", "1.2.4").unwrap();
    assert!(validate_item(&wrong, Some((&meta, &[d]))).is_err());
    assert!(validate_item(&ItemKey::new("crate/x").unwrap(), None).is_err());
}

#[test]
fn index_file_and_config() {
    let mk = |vers: &str, yanked: bool| {
        let mut j = publish_json();
        j["vers"] = serde_json::json!(vers);
        let mut item = parse_publish_json(&serde_json::to_vec(&j).unwrap())
            .unwrap()
            .into_item(&Digest::of(vers.as_bytes()), 1);
        item.index.yanked = yanked;
        item
    };
    let items = [mk("1.10.0", false), mk("1.2.0", false), mk("2.0.0", true)];
    let file = render_index_file(items.iter().map(|i| &i.index));
    let lines: Vec<serde_json::Value> = file
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    let vers: Vec<&str> = lines.iter().map(|l| l["vers"].as_str().unwrap()).collect();
    assert_eq!(vers, ["1.2.0", "1.10.0", "2.0.0"]);
    assert_eq!(lines[2]["yanked"], true);
    assert!(render_index_file([]).is_empty());
    let s = search_entry(&items).unwrap();
    assert_eq!(s["max_version"], "1.10.0");
    assert_eq!(s["description"], "a fancy crate");

    let c: serde_json::Value = serde_json::from_slice(&render_config("http://h:1/cargo/f", true)).unwrap();
    assert_eq!(c["dl"], "http://h:1/cargo/f/api/v1/crates");
    assert_eq!(c["api"], "http://h:1/cargo/f");
    assert_eq!(c["auth-required"], true);
    let c: serde_json::Value = serde_json::from_slice(&render_config("http://h:1/cargo/f", false)).unwrap();
    assert!(c.get("auth-required").is_none());
}
