//! The cargo registry protocol, in process: publish bodies built as cargo
//! builds them (length-prefixed JSON and `.crate`), the sparse index with
//! its validators, downloads, yank, search, owners, private feeds, and the
//! bodies and archives a registry must refuse.
#![allow(clippy::unwrap_used)]
use crate::common;

use std::io::Write;

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use common::{Instance, Reply};
use ferry_store::{Change, ChangeOp, Permission};
use ferry_types::{Digest, FeedName, FeedType, ItemKey};
use serde_json::{Value, json};

const HOST: &str = "registry.test:7878";

/// A gzip tar of raw (path, content) entries: bad paths can be written.
fn targz(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        tar.append(&h, *data).unwrap();
    }
    let tar = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

fn dot_crate(name: &str, vers: &str) -> Vec<u8> {
    let manifest = format!("[package]\nname = \"{name}\"\nversion = \"{vers}\"\nedition = \"2021\"\n");
    let top = format!("{name}-{vers}");
    targz(&[
        (&format!("{top}/Cargo.toml"), manifest.as_bytes()),
        (&format!("{top}/src/lib.rs"), b"pub fn hello() {}\n"),
    ])
}

fn meta(name: &str, vers: &str) -> Value {
    json!({
        "name": name, "vers": vers,
        "deps": [{
            "name": "base", "version_req": "^0.1", "features": ["extra"], "optional": false,
            "default_features": true, "target": null, "kind": "normal", "registry": null,
            "explicit_name_in_toml": null
        }],
        "features": {"default": [], "fast": []},
        "authors": ["Ferry"], "description": "a demo crate for the cargo feed", "documentation": null,
        "homepage": null, "readme": null, "readme_file": null, "keywords": ["demo"], "categories": [],
        "license": "MIT", "license_file": null, "repository": null, "badges": {}, "links": null,
        "rust_version": "1.70"
    })
}

/// A publish body: u32-LE length + JSON, u32-LE length + .crate.
fn body(json: &Value, krate: &[u8]) -> Vec<u8> {
    let j = serde_json::to_vec(json).unwrap();
    let mut out = Vec::new();
    out.extend_from_slice(&(j.len() as u32).to_le_bytes());
    out.extend_from_slice(&j);
    out.extend_from_slice(&(krate.len() as u32).to_le_bytes());
    out.extend_from_slice(krate);
    out
}

struct Reg {
    i: Instance,
    key: String,
}

impl Reg {
    async fn new() -> Self {
        Self::with(ferry_core::Config::default(), false).await
    }

    async fn with(cfg: ferry_core::Config, private: bool) -> Self {
        let i = Instance::with_config(cfg).await;
        i.feed("rs", FeedType::Cargo, private).await;
        let key = i.key("cargo-ci", Permission::Write, Some(&["rs"])).await;
        Self { i, key }
    }

    /// A request as cargo sends it: the key as the bare Authorization value.
    async fn cargo(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        headers: &[(&str, &str)],
        body: impl Into<Body>,
    ) -> Reply {
        let mut h = vec![("host", HOST)];
        if let Some(k) = key {
            h.push(("authorization", k));
        }
        h.extend_from_slice(headers);
        self.i
            .send(method, &format!("/cargo/rs/{path}"), None, &h, body)
            .await
    }

    async fn publish(&self, name: &str, vers: &str) -> Reply {
        self.publish_body(body(&meta(name, vers), &dot_crate(name, vers)))
            .await
    }

    async fn publish_body(&self, b: impl Into<Body>) -> Reply {
        self.cargo("PUT", "api/v1/crates/new", Some(&self.key), &[], b)
            .await
    }

    async fn index(&self, path: &str) -> Vec<Value> {
        let r = self.cargo("GET", path, None, &[], Body::empty()).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        r.text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// cargo's error shape, with the detail containing `says`.
fn cargo_error(r: &Reply, status: StatusCode, says: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    let detail = r.json()["errors"][0]["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(detail.contains(says), "{says:?} not in {detail:?}");
}

#[tokio::test]
async fn publish_then_index_download_and_revalidation() {
    let reg = Reg::new().await;
    let r = reg.cargo("GET", "config.json", None, &[], Body::empty()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json(),
        json!({"dl": format!("http://{HOST}/cargo/rs/api/v1/crates"), "api": format!("http://{HOST}/cargo/rs")})
    );

    let krate = dot_crate("Ferry-Demo", "0.1.0");
    let r = reg.publish_body(body(&meta("Ferry-Demo", "0.1.0"), &krate)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(r.json()["warnings"].is_object());

    let lines = reg.index("fe/rr/ferry-demo").await;
    assert_eq!(lines.len(), 1);
    let l = &lines[0];
    assert_eq!(l["name"], "Ferry-Demo", "original spelling kept");
    assert_eq!(l["vers"], "0.1.0");
    assert_eq!(l["cksum"], Digest::of(&krate).hex());
    assert_eq!(l["yanked"], false);
    assert_eq!(l["rust_version"], "1.70");
    assert_eq!(l["features"], json!({"default": [], "fast": []}));
    assert_eq!(
        l["deps"],
        json!([{"name": "base", "req": "^0.1", "features": ["extra"], "optional": false,
                "default_features": true, "target": null, "kind": "normal", "registry": null, "package": null}])
    );
    // Paths are lowercase; any other spelling of the path is no index file.
    let r = reg
        .cargo("GET", "FE/RR/Ferry-Demo", None, &[], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = reg
        .cargo("GET", "fe/rr/ferry_demo", None, &[], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = reg.cargo("GET", "3/f/fer", None, &[], Body::empty()).await;
    cargo_error(&r, StatusCode::NOT_FOUND, "not found");

    // Download at the dl URL, by any spelling of the name.
    for name in ["Ferry-Demo", "ferry_demo"] {
        let r = reg
            .cargo(
                "GET",
                &format!("api/v1/crates/{name}/0.1.0/download"),
                None,
                &[],
                Body::empty(),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, krate);
    }
    let r = reg
        .cargo(
            "GET",
            "api/v1/crates/ferry-demo/9.9.9/download",
            None,
            &[],
            Body::empty(),
        )
        .await;
    cargo_error(&r, StatusCode::NOT_FOUND, "does not have a version `9.9.9`");

    // Revalidation: ETag and Last-Modified answer 304.
    let r = reg
        .cargo("GET", "fe/rr/ferry-demo", None, &[], Body::empty())
        .await;
    let etag = r.header("etag").unwrap().to_owned();
    let modified = r.header("last-modified").unwrap().to_owned();
    let r = reg
        .cargo(
            "GET",
            "fe/rr/ferry-demo",
            None,
            &[("if-none-match", &etag)],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert!(r.body.is_empty());
    let r = reg
        .cargo(
            "GET",
            "fe/rr/ferry-demo",
            None,
            &[("if-modified-since", &modified)],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);

    // A new version changes the file and its ETag.
    let r = reg.publish("Ferry-Demo", "0.2.0").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = reg
        .cargo(
            "GET",
            "fe/rr/ferry-demo",
            None,
            &[("if-none-match", &etag)],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_ne!(r.header("etag").unwrap(), etag);
    assert_eq!(r.text().lines().count(), 2);
    // Short names use the 1/, 2/ and 3/ folders.
    for (name, path) in [("a", "1/a"), ("ab", "2/ab"), ("abc", "3/a/abc")] {
        assert_eq!(reg.publish(name, "1.0.0").await.status, StatusCode::OK);
        assert_eq!(reg.index(path).await[0]["name"], name);
    }
    assert_eq!(reg.i.staging_files(), 0);
}

#[tokio::test]
async fn versions_that_exist_and_other_spellings_are_conflicts() {
    let reg = Reg::new().await;
    assert_eq!(reg.publish("demo-crate", "1.0.0").await.status, StatusCode::OK);
    let r = reg.publish("demo-crate", "1.0.0").await;
    cargo_error(
        &r,
        StatusCode::CONFLICT,
        "crate version `demo-crate@1.0.0` is already uploaded",
    );
    // Build metadata does not make another version.
    let r = reg.publish("demo-crate", "1.0.0+build.5").await;
    cargo_error(&r, StatusCode::CONFLICT, "already uploaded");
    for other in ["demo_crate", "Demo-Crate"] {
        let r = reg.publish(other, "2.0.0").await;
        cargo_error(&r, StatusCode::CONFLICT, "spelled otherwise");
    }
    assert_eq!(reg.index("de/mo/demo-crate").await.len(), 1);
    assert_eq!(reg.i.staging_files(), 0);
}

#[tokio::test]
async fn bad_names_bodies_and_archives_are_refused() {
    let cfg = ferry_core::Config {
        max_upload_bytes: 1 << 20,
        archive: ferry_formats::ArchiveLimits {
            max_unpacked_bytes: 2 << 20,
            ..Default::default()
        },
        ..Default::default()
    };
    let reg = Reg::with(cfg, false).await;
    for (name, says) in [
        ("std", "reserved"),
        ("nul", "reserved"),
        ("proc-macro", "reserved"),
        ("9lives", "must start"),
        ("a.b", "not allowed"),
    ] {
        let r = reg
            .publish_body(body(&meta(name, "1.0.0"), &dot_crate("x", "1.0.0")))
            .await;
        cargo_error(&r, StatusCode::BAD_REQUEST, says);
    }
    let r = reg
        .publish_body(body(&meta("good", "1.0"), &dot_crate("good", "1.0")))
        .await;
    cargo_error(&r, StatusCode::BAD_REQUEST, "invalid version");

    // Lengths that lie. A huge declared length is refused at once: the
    // rest of the body (endless here) is never read.
    let endless = |head: Vec<u8>| {
        let first = futures::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(head)) });
        let rest = futures::stream::repeat_with(|| Ok(Bytes::from(vec![0u8; 64 << 10])));
        Body::from_stream(futures::StreamExt::chain(first, rest))
    };
    let r = reg.publish_body(endless(u32::MAX.to_le_bytes().to_vec())).await;
    cargo_error(&r, StatusCode::BAD_REQUEST, "more than the 1048576 allowed");
    let j = serde_json::to_vec(&meta("big", "1.0.0")).unwrap();
    let mut head = (j.len() as u32).to_le_bytes().to_vec();
    head.extend_from_slice(&j);
    head.extend_from_slice(&(100u32 << 20).to_le_bytes());
    let r = reg.publish_body(endless(head)).await;
    cargo_error(&r, StatusCode::PAYLOAD_TOO_LARGE, "over the upload limit");

    let good = body(&meta("lying", "1.0.0"), &dot_crate("lying", "1.0.0"));
    let r = reg.publish_body(good[..good.len() - 10].to_vec()).await;
    cargo_error(&r, StatusCode::BAD_REQUEST, "ended after");
    let r = reg.publish_body(good[..3].to_vec()).await;
    cargo_error(&r, StatusCode::BAD_REQUEST, "ended before the length");
    let r = reg.publish_body(good[..20].to_vec()).await;
    cargo_error(&r, StatusCode::BAD_REQUEST, "ended before the");
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"extra");
    let r = reg.publish_body(trailing).await;
    cargo_error(&r, StatusCode::BAD_REQUEST, "bytes after");
    let r = reg.publish_body(body(&json!({"name": "x"}), b"")).await;
    cargo_error(&r, StatusCode::BAD_REQUEST, "invalid publish metadata");

    // Archives.
    let m = meta("arch", "1.0.0");
    let manifest = b"[package]\nname = \"arch\"\nversion = \"1.0.0\"\n";
    let cases: Vec<(Vec<u8>, StatusCode, &str)> = vec![
        (b"not a gzip stream".to_vec(), StatusCode::BAD_REQUEST, "not gzip"),
        (
            targz(&[
                ("arch-1.0.0/Cargo.toml", manifest),
                ("arch-1.0.0/../../../etc/cron.d/x", b"x"),
            ]),
            StatusCode::BAD_REQUEST,
            "path traversal",
        ),
        (
            targz(&[("/etc/passwd", b"x")]),
            StatusCode::BAD_REQUEST,
            "absolute",
        ),
        (
            targz(&[("other-1.0.0/Cargo.toml", manifest)]),
            StatusCode::BAD_REQUEST,
            "outside arch-1.0.0/",
        ),
        (
            targz(&[("arch-1.0.0/src/lib.rs", b"")]),
            StatusCode::BAD_REQUEST,
            "no arch-1.0.0/Cargo.toml",
        ),
        (
            dot_crate("arch", "1.0.1").into_iter().collect(),
            StatusCode::BAD_REQUEST,
            "outside arch-1.0.0/",
        ),
        (
            targz(&[(
                "arch-1.0.0/Cargo.toml",
                b"[package]\nname = \"other\"\nversion = \"1.0.0\"\n",
            )]),
            StatusCode::BAD_REQUEST,
            "describes other 1.0.0, but the publish metadata says arch 1.0.0",
        ),
        (
            targz(&[
                ("arch-1.0.0/Cargo.toml", manifest),
                ("arch-1.0.0/zeros", &vec![0u8; 4 << 20]),
            ]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "expands to more than",
        ),
    ];
    for (krate, status, says) in cases {
        let r = reg.publish_body(body(&m, &krate)).await;
        cargo_error(&r, status, says);
    }
    let r = reg.cargo("GET", "ar/ch/arch", None, &[], Body::empty()).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(reg.i.staging_files(), 0);
    // Nothing was stored.
    let feed = reg.i.ferry.feed(&FeedName::new("rs").unwrap()).await.unwrap();
    assert!(reg.i.ferry.items(&feed, "").await.unwrap().is_empty());
}

#[tokio::test]
async fn yank_unyank_search_and_owners() {
    let reg = Reg::new().await;
    for v in ["1.0.0", "1.1.0"] {
        assert_eq!(reg.publish("yanky", v).await.status, StatusCode::OK);
    }
    assert_eq!(reg.publish("other-crate", "0.3.0").await.status, StatusCode::OK);
    let r = reg
        .cargo(
            "DELETE",
            "api/v1/crates/yanky/1.1.0/yank",
            Some(&reg.key),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json(), json!({"ok": true}));
    let yanked: Vec<bool> = reg
        .index("ya/nk/yanky")
        .await
        .iter()
        .map(|l| l["yanked"].as_bool().unwrap())
        .collect();
    assert_eq!(yanked, [false, true]);
    // Still downloadable (a lock file may pin it).
    let r = reg
        .cargo(
            "GET",
            "api/v1/crates/yanky/1.1.0/download",
            None,
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = reg
        .cargo(
            "DELETE",
            "api/v1/crates/yanky/9.0.0/yank",
            Some(&reg.key),
            &[],
            Body::empty(),
        )
        .await;
    cargo_error(
        &r,
        StatusCode::NOT_FOUND,
        "crate `yanky` does not have a version `9.0.0`",
    );
    let r = reg
        .cargo(
            "DELETE",
            "api/v1/crates/nothing/1.0.0/yank",
            Some(&reg.key),
            &[],
            Body::empty(),
        )
        .await;
    cargo_error(&r, StatusCode::NOT_FOUND, "does not have a version");
    // Yank needs a key.
    let r = reg
        .cargo(
            "DELETE",
            "api/v1/crates/yanky/1.0.0/yank",
            None,
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // Deleting a version (Ferry's own) drops its line and its download.
    assert_eq!(reg.publish("gone", "1.0.0").await.status, StatusCode::OK);
    assert_eq!(reg.publish("gone", "1.1.0").await.status, StatusCode::OK);
    let r = reg
        .cargo("DELETE", "api/v1/crates/gone/1.1.0", None, &[], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = reg
        .cargo(
            "DELETE",
            "api/v1/crates/gone/1.1.0",
            Some(&reg.key),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let vers: Vec<Value> = reg
        .index("go/ne/gone")
        .await
        .iter()
        .map(|l| l["vers"].clone())
        .collect();
    assert_eq!(vers, [json!("1.0.0")]);
    let r = reg
        .cargo(
            "GET",
            "api/v1/crates/gone/1.1.0/download",
            None,
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = reg
        .cargo(
            "DELETE",
            "api/v1/crates/gone/1.1.0",
            Some(&reg.key),
            &[],
            Body::empty(),
        )
        .await;
    cargo_error(&r, StatusCode::NOT_FOUND, "does not have a version `1.1.0`");
    let r = reg
        .cargo(
            "DELETE",
            "api/v1/crates/gone/1.0.0",
            Some(&reg.key),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = reg.cargo("GET", "go/ne/gone", None, &[], Body::empty()).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Search shows the highest version that is not yanked.
    let r = reg
        .cargo("GET", "api/v1/crates?q=yank&per_page=5", None, &[], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json(),
        json!({"crates": [{"name": "yanky", "max_version": "1.0.0", "description": "a demo crate for the cargo feed"}], "meta": {"total": 1}})
    );
    let r = reg
        .cargo(
            "PUT",
            "api/v1/crates/yanky/1.1.0/unyank",
            Some(&reg.key),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = reg
        .cargo("GET", "api/v1/crates?q=YANKY", None, &[], Body::empty())
        .await;
    assert_eq!(r.json()["crates"][0]["max_version"], "1.1.0");
    let r = reg
        .cargo(
            "GET",
            "api/v1/crates?q=demo%20crate&per_page=1",
            None,
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.json()["meta"]["total"], 2);
    assert_eq!(r.json()["crates"].as_array().unwrap().len(), 1);
    let r = reg
        .cargo("GET", "api/v1/crates?q=other_crate", None, &[], Body::empty())
        .await;
    assert_eq!(r.json()["crates"][0]["name"], "other-crate");
    let r = reg
        .cargo("GET", "api/v1/crates?q=x&per_page=many", None, &[], Body::empty())
        .await;
    cargo_error(&r, StatusCode::BAD_REQUEST, "per_page");

    // Owners: the keys that may publish here, shown to the admin key;
    // anyone else sees a stand-in (no other key's name).
    let _reader = reg.i.key("reader", Permission::Read, None).await;
    let r = reg
        .cargo(
            "GET",
            "api/v1/crates/yanky/owners",
            Some(common::ADMIN),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let logins: Vec<String> = r.json()["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["login"].as_str().unwrap().to_owned())
        .collect();
    assert!(logins.iter().any(|l| l == "cargo-ci"), "{logins:?}");
    assert!(!logins.iter().any(|l| l == "reader"), "{logins:?}");
    for key in [None, Some(reg.key.as_str())] {
        let r = reg
            .cargo("GET", "api/v1/crates/yanky/owners", key, &[], Body::empty())
            .await;
        assert_eq!(
            r.json()["users"],
            json!([{"id": 0, "login": "ferry:rs", "name": "API keys with write permission on feed rs"}])
        );
    }
    let r = reg
        .cargo("GET", "api/v1/crates/nothing/owners", None, &[], Body::empty())
        .await;
    cargo_error(&r, StatusCode::NOT_FOUND, "not found");
    let r = reg
        .cargo(
            "PUT",
            "api/v1/crates/yanky/owners",
            Some(&reg.key),
            &[],
            "{\"users\":[\"x\"]}",
        )
        .await;
    cargo_error(&r, StatusCode::BAD_REQUEST, "not managed per crate");
}

#[tokio::test]
async fn private_feeds_and_the_ways_to_send_a_key() {
    let reg = Reg::with(ferry_core::Config::default(), true).await;
    reg.i.feed("elsewhere", FeedType::Cargo, true).await;
    let other = reg.i.key("other", Permission::Write, Some(&["elsewhere"])).await;
    let reader = reg.i.key("reader", Permission::Read, Some(&["rs"])).await;

    let r = reg.cargo("GET", "config.json", None, &[], Body::empty()).await;
    cargo_error(&r, StatusCode::UNAUTHORIZED, "");
    let r = reg
        .cargo("GET", "config.json", Some(&other), &[], Body::empty())
        .await;
    cargo_error(&r, StatusCode::NOT_FOUND, "feed rs not found");
    let r = reg
        .cargo("GET", "config.json", Some("wrong-key"), &[], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    for auth in [
        reader.clone(),
        format!("Bearer {reader}"),
        format!("Basic {}", base64_of(&format!("x:{reader}"))),
    ] {
        let r = reg
            .cargo("GET", "config.json", Some(&auth), &[], Body::empty())
            .await;
        assert_eq!(r.status, StatusCode::OK, "{auth}: {}", r.text());
        assert_eq!(r.json()["auth-required"], true);
        assert_eq!(r.header("cache-control"), Some("private, no-cache"));
    }

    // The bare key publishes; a read key may not; nothing is visible without a key.
    assert_eq!(reg.publish("secret", "1.0.0").await.status, StatusCode::OK);
    let r = reg
        .cargo(
            "PUT",
            "api/v1/crates/new",
            Some(&reader),
            &[],
            body(&meta("secret", "2.0.0"), &dot_crate("secret", "2.0.0")),
        )
        .await;
    cargo_error(&r, StatusCode::FORBIDDEN, "permission");
    for path in [
        "se/cr/secret",
        "api/v1/crates/secret/1.0.0/download",
        "api/v1/crates?q=secret",
    ] {
        let r = reg.cargo("GET", path, None, &[], Body::empty()).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}");
        let r = reg.cargo("GET", path, Some(&other), &[], Body::empty()).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        let r = reg.cargo("GET", path, Some(&reader), &[], Body::empty()).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
    }
    // A cargo feed is no npm feed.
    let r = reg
        .i
        .send("GET", "/npm/rs/secret", Some(&reader), &[], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A replicated version is checked as a publish would be: the index line's
/// `cksum` must be the digest of the blob it arrives with, and that
/// `.crate`'s Cargo.toml must name the crate and version the line does.
#[tokio::test]
async fn replicated_versions_must_match_their_crate() {
    let hub = Reg::new().await;
    assert_eq!(hub.publish("replica", "1.0.0").await.status, StatusCode::OK);
    let hub_feed = hub.i.ferry.feed(&FeedName::new("rs").unwrap()).await.unwrap();
    let item = hub.i.ferry.items(&hub_feed, "").await.unwrap().remove(0);
    assert_eq!(item.key.as_str(), "crate/replica/1.0.0");

    let spoke = Reg::new().await;
    let feed = spoke.i.ferry.feed(&FeedName::new("rs").unwrap()).await.unwrap();
    let krate = dot_crate("replica", "1.0.0");
    let staged = spoke
        .i
        .ferry
        .stage_bytes(Bytes::from(krate.clone()))
        .await
        .unwrap();
    let digest = spoke.i.ferry.commit_blob(staged).await.unwrap();
    let other = spoke
        .i
        .ferry
        .stage_bytes(Bytes::from_static(b"other bytes"))
        .await
        .unwrap();
    let other = spoke.i.ferry.commit_blob(other).await.unwrap();
    let change = |meta: Value, blob: Digest| Change {
        key: item.key.clone(),
        stamp: item.stamp,
        op: ChangeOp::Upsert {
            meta,
            blobs: vec![blob],
            created_at: Some(item.created_at),
        },
    };
    let e = spoke
        .i
        .ferry
        .apply(&feed, vec![change(item.meta.clone(), other)])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("is not the .crate of checksum"), "{e}");
    let mut wrong_key = change(item.meta.clone(), digest);
    wrong_key.key = ItemKey::new("crate/replica/2.0.0").unwrap();
    assert!(spoke.i.ferry.apply(&feed, vec![wrong_key]).await.is_err());
    let mut lying = item.meta.clone();
    lying["size"] = json!(1);
    assert!(
        spoke
            .i
            .ferry
            .apply(&feed, vec![change(lying, digest)])
            .await
            .is_err()
    );
    // An index line for another crate, carried by this crate's genuine
    // bytes (checksum and size right): its Cargo.toml says otherwise.
    let mut other_crate = item.meta.clone();
    other_crate["index"]["name"] = json!("evil");
    let mut forged = change(other_crate, digest);
    forged.key = ItemKey::new("crate/evil/1.0.0").unwrap();
    let e = spoke.i.ferry.apply(&feed, vec![forged]).await.unwrap_err();
    assert!(e.to_string().contains("cargo item evil 1.0.0"), "{e}");
    assert!(spoke.i.ferry.items(&feed, "").await.unwrap().is_empty());
    // A field no publish sets, which the index would serve.
    for (path, value) in [("evil", json!(1)), ("index.evil", json!("x"))] {
        let mut extra = item.meta.clone();
        match path.split_once('.') {
            Some((outer, inner)) => extra[outer][inner] = value,
            None => extra[path] = value,
        }
        let e = spoke
            .i
            .ferry
            .apply(&feed, vec![change(extra, digest)])
            .await
            .unwrap_err();
        assert!(e.to_string().contains(&format!("no upload sets: {path}")), "{e}");
    }
    spoke
        .i
        .ferry
        .apply(&feed, vec![change(item.meta.clone(), digest)])
        .await
        .unwrap();
    // The spoke derives the index file itself.
    let lines = spoke.index("re/pl/replica").await;
    assert_eq!(lines[0]["cksum"], digest.hex());
}

/// One crate, one name: spellings that differ only in case or `-`/`_`
/// published at the same moment cannot both get in, and versions that
/// arrive by replication under another spelling are shown under the
/// crate's one spelling (its earliest-written version's), in one index
/// file.
#[tokio::test]
async fn a_crate_has_one_spelling_even_when_spellings_race_or_replicate() {
    let reg = Reg::new().await;
    for round in 0..4 {
        let spellings = [
            format!("Sp{round}-x"),
            format!("sp{round}_x"),
            format!("SP{round}_X"),
            format!("sp{round}-x"),
        ];
        let (a, b, c, d) = tokio::join!(
            reg.publish(&spellings[0], "0.0.0"),
            reg.publish(&spellings[1], "0.1.0"),
            reg.publish(&spellings[2], "0.2.0"),
            reg.publish(&spellings[3], "0.3.0"),
        );
        let results = [a, b, c, d];
        let won: Vec<usize> = (0..4).filter(|i| results[*i].status == StatusCode::OK).collect();
        assert_eq!(
            won.len(),
            1,
            "round {round}: {:?}",
            results.iter().map(|r| r.text()).collect::<Vec<_>>()
        );
        let winner = &spellings[won[0]];
        for (i, r) in results.iter().enumerate() {
            if i != won[0] {
                cargo_error(r, StatusCode::CONFLICT, "spelled otherwise");
            }
        }
        let lower = winner.to_ascii_lowercase();
        let lines = reg
            .index(&format!("{}/{}/{lower}", &lower[..2], &lower[2..4]))
            .await;
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["name"], winner.as_str());
        // The other lowercase spelling has no index file of its own.
        let other = if lower.contains('-') {
            lower.replace('-', "_")
        } else {
            lower.replace('_', "-")
        };
        let r = reg
            .cargo(
                "GET",
                &format!("{}/{}/{other}", &other[..2], &other[2..4]),
                None,
                &[],
                Body::empty(),
            )
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    }

    // A hub publishes `zed_x` 0.1.0; a spoke, before it sees it, publishes
    // `Zed-X` 0.2.0; then the hub's version arrives. Both versions are
    // shown under the earlier-written spelling, in one index file.
    let hub = Reg::new().await;
    assert_eq!(hub.publish("zed_x", "0.1.0").await.status, StatusCode::OK);
    let hub_feed = hub.i.ferry.feed(&FeedName::new("rs").unwrap()).await.unwrap();
    let item = hub
        .i
        .ferry
        .items(&hub_feed, "crate/zed_x/")
        .await
        .unwrap()
        .remove(0);
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let spoke = Reg::new().await;
    assert_eq!(spoke.publish("Zed-X", "0.2.0").await.status, StatusCode::OK);
    let feed = spoke.i.ferry.feed(&FeedName::new("rs").unwrap()).await.unwrap();
    let staged = spoke
        .i
        .ferry
        .stage_bytes(Bytes::from(dot_crate("zed_x", "0.1.0")))
        .await
        .unwrap();
    let digest = spoke.i.ferry.commit_blob(staged).await.unwrap();
    spoke
        .i
        .ferry
        .apply(
            &feed,
            vec![Change {
                key: item.key.clone(),
                stamp: item.stamp,
                op: ChangeOp::Upsert {
                    meta: item.meta.clone(),
                    blobs: vec![digest],
                    created_at: Some(item.created_at),
                },
            }],
        )
        .await
        .unwrap();
    let lines = spoke.index("ze/d_/zed_x").await;
    let names: Vec<&str> = lines.iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["zed_x", "zed_x"], "{lines:?}");
    let r = spoke.cargo("GET", "ze/d-/zed-x", None, &[], Body::empty()).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    // Publishing under the spoke's own earlier spelling is now refused too.
    cargo_error(
        &spoke.publish("Zed-X", "0.3.0").await,
        StatusCode::CONFLICT,
        "`zed_x`",
    );
    let r = spoke
        .cargo("GET", "api/v1/crates?q=zed", None, &[], Body::empty())
        .await;
    assert_eq!(r.json()["crates"][0]["name"], "zed_x", "{}", r.text());
}
