//! Random and mutated input to every parser and validator of `formats`
//! that a client or a peer can reach: each must answer with a typed error
//! or a value, never panic. A bounded number of cases runs in the test
//! suite (`PROPTEST_CASES` raises it for a longer session).
#![allow(clippy::unwrap_used)]

use ferry_formats::{ArchiveLimits, assets, cargo, npm, oci, pypi};
use ferry_types::{Digest, ItemKey};
use proptest::prelude::*;
use serde_json::{Value, json};

/// Strings that look like what the parsers expect, plus noise.
fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9._@/+:~!-]{0,40}",
        "\\PC{0,40}",
        Just("..".to_string()),
        Just("sha256:".to_string() + &"a".repeat(64)),
        Just("@scope/name".to_string()),
        Just("a//b".to_string()),
        Just("%2e%2e/x".to_string()),
    ]
}

/// Arbitrary JSON of bounded depth.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        token().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(token(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn digest() -> impl Strategy<Value = Digest> {
    any::<[u8; 32]>().prop_map(Digest::from_bytes)
}

/// A valid OCI image manifest, for mutation.
fn image_manifest() -> Vec<u8> {
    let d = |s: &[u8]| Digest::of(s).to_string();
    json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": d(b"c"), "size": 1 },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d(b"l"), "size": 1 }],
        "annotations": { "a": "b" }
    })
    .to_string()
    .into_bytes()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn oci_manifests_of_any_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..1024), ct in token()) {
        let _ = oci::parse_manifest(&bytes, Some(&ct));
        let _ = oci::parse_manifest(&bytes, None);
    }

    #[test]
    fn mutated_oci_manifests_never_panic(edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..12)) {
        let mut bytes = image_manifest();
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        if let Ok(m) = oci::parse_manifest(&bytes, None) {
            // Whatever parses gives consistent derived data.
            // (A mutation cannot make a sha512 digest this test could resolve.)
            if let Ok(meta) = m.item_meta(bytes.len() as u64, oci::Sha512Digest::of(&bytes), |_| None) {
                let mut blobs = vec![Digest::of(&bytes)];
                blobs.extend(m.required_blobs().into_iter().filter_map(|(d, _)| d.sha256()));
                blobs.extend(m.children().into_iter().filter_map(|d| d.sha256()));
                prop_assert!(oci::check_manifest_item(&bytes, &meta, &blobs).is_ok());
            }
        }
    }

    #[test]
    fn oci_names_references_and_ranges_never_panic(s in token()) {
        let _ = oci::validate_repository(&s);
        let _ = oci::validate_tag(&s);
        let _ = oci::parse_digest(&s);
        let _ = oci::parse_reference(&s);
        let _ = oci::parse_content_range(&s);
    }

    #[test]
    fn replicated_items_of_every_type_are_refused_or_accepted_never_panic(
        key in token(),
        meta in json_value(),
        blobs in prop::collection::vec(digest(), 0..4),
        live in any::<bool>(),
    ) {
        let Ok(key) = ItemKey::new(key) else { return Ok(()) };
        let item = live.then_some((&meta, blobs.as_slice()));
        let _ = assets::validate_item(&key, item);
        let _ = npm::validate_item(&key, item);
        let _ = pypi::validate_item(&key, item);
        let _ = oci::validate_item(&key, item);
        let _ = cargo::validate_item(&key, item);
    }

    #[test]
    fn asset_paths_never_escape(s in token()) {
        if let Ok(k) = assets::asset_key(&s) {
            prop_assert!(!k.as_str().split('/').any(|seg| seg == ".." || seg == "." || seg.is_empty()));
            prop_assert!(!k.as_str().starts_with('/'));
        }
        let _ = assets::asset_dir_prefix(&s);
    }

    #[test]
    fn npm_names_versions_tags_and_keys_never_panic(a in token(), b in token()) {
        let _ = npm::validate_package_name(&a);
        let _ = npm::normalize_version(&a);
        let _ = npm::validate_dist_tag(&a);
        let _ = npm::parse_dist_tag_body(a.as_bytes());
        let _ = npm::parse_tarball_file_name(&a, &b);
        let _ = npm::parse_version_item_metadata(a.as_bytes());
        if let Ok(k) = npm::version_key(&a, &b) {
            prop_assert!(npm::parse_item_key(&k).is_ok(), "a key it builds must parse back");
        }
    }

    #[test]
    fn npm_integrity_strings_never_panic(sri in token(), data in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut h = npm::IntegrityHasher::default();
        h.update(&data);
        let _ = h.check(&sri);
    }

    #[test]
    fn pypi_names_files_and_versions_never_panic(a in token(), b in token()) {
        let _ = pypi::parse_filename(&a, None);
        let _ = pypi::parse_filename(&a, Some(&b));
        let _ = pypi::normalized_project_name(&a);
        let _ = pypi::normalize_version(&a);
        let _ = pypi::versions_match(&a, &b);
        if let Ok(k) = pypi::file_key(&a, &b) {
            prop_assert!(pypi::parse_file_key(&k).is_ok(), "a key it builds must parse back");
        }
    }

    #[test]
    fn cargo_names_paths_keys_and_publish_bodies_never_panic(
        a in token(),
        b in token(),
        meta in json_value(),
        bytes in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let _ = cargo::validate_crate_name(&a);
        let _ = cargo::version_without_build(&b);
        let _ = cargo::index_path(&a);
        if let Some(name) = cargo::parse_index_path(&a) {
            prop_assert_eq!(cargo::index_path(&name), a.clone(), "a path it reads must be the name's path");
        }
        if let Ok(k) = cargo::version_key(&a, &b) {
            prop_assert!(cargo::parse_item_key(&k).is_ok(), "a key it builds must parse back");
        }
        let _ = cargo::parse_publish_json(&serde_json::to_vec(&meta).unwrap());
        let _ = cargo::parse_publish_json(&bytes);
        let _ = cargo::inspect_crate(bytes.as_slice(), &a, &b, &ArchiveLimits::default());
        let mut gz = vec![0x1f, 0x8b];
        gz.extend_from_slice(&bytes);
        let _ = cargo::inspect_crate(gz.as_slice(), &a, &b, &ArchiveLimits::default());
    }
}
