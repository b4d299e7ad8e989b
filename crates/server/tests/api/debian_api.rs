//! Debian feeds, in process: uploads of `.deb`s built byte by byte, the
//! indexes and signed release files apt reads, by-hash generations,
//! deletes, bad input, and the feed signing key (export, import, never in
//! a bundle).
#![allow(clippy::unwrap_used)]
use crate::common;

use axum::body::Body;
use axum::http::StatusCode;
use common::{ADMIN, Instance};
use ferry_testkit::debian::{Compression, control, deb};
use ferry_types::FeedType;
use sha2::{Digest as _, Sha256};

fn sha256_hex(b: &[u8]) -> String {
    hex(&Sha256::digest(b))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn put(i: &Instance, path: &str, body: Vec<u8>) -> common::Reply {
    i.send("PUT", path, Some(ADMIN), &[], body).await
}

async fn setup() -> Instance {
    let i = Instance::new().await;
    i.feed("apt", FeedType::Debian, false).await;
    i
}

/// The `Release` entries (path → (sha256, size)) of one hash list.
fn release_list(release: &str, list: &str) -> Vec<(String, String, u64)> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in release.lines() {
        if let Some(entry) = line.strip_prefix(' ') {
            if inside {
                let mut f = entry.split_whitespace();
                let (h, s, p) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
                out.push((p.to_string(), h.to_string(), s.parse().unwrap()));
            }
        } else {
            inside = line == format!("{list}:");
        }
    }
    out
}

#[tokio::test]
async fn debian_upload_publishes_signed_indexes() {
    let i = setup().await;
    let lib = deb(&control("libdemo", "1.0-1", "all", ""), b"lib", Compression::Xz);
    let app = deb(
        &control("demo", "1:2.0", "amd64", "Depends: libdemo\n"),
        b"app",
        Compression::Gz,
    );
    let r = put(&i, "/debian/apt/upload/bookworm/main", lib.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(
        r.json()["filename"],
        "pool/main/libd/libdemo/libdemo_1.0-1_all.deb"
    );
    let r = put(&i, "/debian/apt/upload/bookworm/main", app.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(r.json()["filename"], "pool/main/d/demo/demo_2.0_amd64.deb");
    assert_eq!(r.json()["version"], "1:2.0");

    // The all package is in binary-all and in the amd64 index.
    let amd64 = i
        .get("/debian/apt/dists/bookworm/main/binary-amd64/Packages")
        .await;
    assert_eq!(amd64.status, StatusCode::OK);
    let text = amd64.text();
    assert!(text.contains("Package: demo\nVersion: 1:2.0\n"), "{text}");
    assert!(text.contains("Package: libdemo\n"), "{text}");
    assert!(
        text.contains(&format!("SHA256: {}\n", sha256_hex(&app))),
        "{text}"
    );
    assert!(text.contains(&format!("Size: {}\n", app.len())), "{text}");
    assert!(text.contains("Depends: libdemo\n"));
    let all = i
        .get("/debian/apt/dists/bookworm/main/binary-all/Packages")
        .await
        .text();
    assert!(
        all.contains("Package: libdemo\n") && !all.contains("Package: demo\n"),
        "{all}"
    );

    // Release lists every index with its real size and hashes.
    let release = i.get("/debian/apt/dists/bookworm/Release").await.text();
    for field in [
        "Suite: bookworm\n",
        "Codename: bookworm\n",
        "Architectures: all amd64\n",
        "Components: main\n",
        "Acquire-By-Hash: yes\n",
    ] {
        assert!(release.contains(field), "{field} in {release}");
    }
    assert!(!release.contains("Valid-Until"));
    let date = release.lines().find(|l| l.starts_with("Date: ")).unwrap();
    assert!(date.ends_with(" UTC"), "{date}");
    let listed = release_list(&release, "SHA256");
    assert_eq!(listed.len(), 6, "{release}");
    for (path, hash, size) in &listed {
        let body = i.get(&format!("/debian/apt/dists/bookworm/{path}")).await;
        assert_eq!(body.status, StatusCode::OK, "{path}");
        assert_eq!(
            (sha256_hex(&body.body), body.body.len() as u64),
            (hash.clone(), *size),
            "{path}"
        );
        let dir = path.rsplit_once('/').unwrap().0;
        let by_hash = i
            .get(&format!("/debian/apt/dists/bookworm/{dir}/by-hash/SHA256/{hash}"))
            .await;
        assert_eq!(by_hash.body, body.body, "{path} by hash");
    }
    // apt asks by the strongest hash listed: every SHA512 is served too.
    let listed = release_list(&release, "SHA512");
    assert_eq!(listed.len(), 6);
    for (path, hash, _) in &listed {
        let body = i.get(&format!("/debian/apt/dists/bookworm/{path}")).await;
        let dir = path.rsplit_once('/').unwrap().0;
        let by_hash = i
            .get(&format!("/debian/apt/dists/bookworm/{dir}/by-hash/SHA512/{hash}"))
            .await;
        assert_eq!(by_hash.status, StatusCode::OK, "{path} by SHA512");
        assert_eq!(by_hash.body, body.body, "{path} by SHA512");
    }

    // InRelease clearsigns that same Release; Release.gpg is detached.
    let inrelease = i.get("/debian/apt/dists/bookworm/InRelease").await.text();
    assert!(
        inrelease.starts_with("-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n"),
        "{inrelease}"
    );
    assert!(inrelease.contains(&release), "{inrelease}");
    let gpg = i.get("/debian/apt/dists/bookworm/Release.gpg").await.text();
    assert!(gpg.starts_with("-----BEGIN PGP SIGNATURE-----"), "{gpg}");

    // The pool serves the uploaded bytes.
    let got = i.get("/debian/apt/pool/main/d/demo/demo_2.0_amd64.deb").await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body, app);
    assert_eq!(
        i.get("/debian/apt/pool/main/d/demo/demo_9_amd64.deb")
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    // The public key, armored and binary; never a secret key.
    let asc = i.get("/debian/apt/key.asc").await.text();
    assert!(asc.starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----"), "{asc}");
    let bin = i.get("/debian/apt/key.gpg").await.body;
    assert_eq!(bin[0] & 0x80, 0x80, "an OpenPGP packet");
    assert!(!String::from_utf8_lossy(&bin).contains("PRIVATE"));
}

#[tokio::test]
async fn debian_same_bytes_are_a_noop_other_bytes_a_conflict() {
    let i = setup().await;
    let a = deb(&control("demo", "1.0", "amd64", ""), b"one", Compression::Gz);
    let b = deb(&control("demo", "1.0", "amd64", ""), b"two", Compression::Gz);
    assert_eq!(
        put(&i, "/debian/apt/upload/stable/main", a.clone()).await.status,
        StatusCode::CREATED
    );
    let feed = i
        .ferry
        .feed(&ferry_types::FeedName::new("apt").unwrap())
        .await
        .unwrap();
    let seq = i.ferry.metadata().last_seq(feed.id).await.unwrap();
    assert_eq!(
        put(&i, "/debian/apt/upload/stable/main", a.clone()).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        i.ferry.metadata().last_seq(feed.id).await.unwrap(),
        seq,
        "same bytes: nothing written"
    );
    let r = put(&i, "/debian/apt/upload/stable/main", b.clone()).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    assert!(r.text().contains("already exists"), "{}", r.text());
    // The same pool path in another distribution with other bytes too.
    let r = put(&i, "/debian/apt/upload/testing/main", b).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    // With the same bytes it may live in several distributions.
    assert_eq!(
        put(&i, "/debian/apt/upload/testing/main", a.clone()).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        i.get("/debian/apt/pool/main/d/demo/demo_1.0_amd64.deb")
            .await
            .body,
        a
    );
    assert_eq!(i.staging_files(), 0);
}

#[tokio::test]
async fn debian_bad_uploads_are_refused_and_store_nothing() {
    let i = setup().await;
    let good = deb(&control("demo", "1.0", "amd64", ""), b"x", Compression::Zst);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "/debian/apt/upload/stable/main",
            b"just some text, not an archive".to_vec(),
            "not a Debian package",
        ),
        (
            "/debian/apt/upload/stable/main",
            good[..good.len() - 40].to_vec(),
            "not a Debian package",
        ),
        (
            "/debian/apt/upload/stable/main",
            deb(&control("../../etc", "1.0", "amd64", ""), b"x", Compression::Gz),
            "invalid Package",
        ),
        (
            "/debian/apt/upload/stable/main",
            deb(
                &control("demo", "1.0/../../x", "amd64", ""),
                b"x",
                Compression::Gz,
            ),
            "invalid Version",
        ),
        (
            "/debian/apt/upload/stable/main",
            deb(&control("demo", "1.0", "../amd64", ""), b"x", Compression::Gz),
            "invalid Architecture",
        ),
        (
            "/debian/apt/upload/stable/main",
            deb(
                "Package: demo\nVersion: 1.0\nDescription: x\n",
                b"x",
                Compression::Gz,
            ),
            "no Architecture field",
        ),
        (
            "/debian/apt/upload/stable/main",
            deb("Package: demo\nArchitecture: all\n", b"x", Compression::Gz),
            "no Version field",
        ),
        (
            "/debian/apt/upload/stable/main",
            deb("Version: 1.0\nArchitecture: all\n", b"x", Compression::Gz),
            "no Package field",
        ),
        (
            "/debian/apt/upload/..%2Fx/main",
            good.clone(),
            "invalid distribution",
        ),
        (
            "/debian/apt/upload/stable/.main",
            good.clone(),
            "invalid component",
        ),
    ];
    for (path, body, why) in cases {
        let r = put(&i, path, body).await;
        assert!(
            r.status.is_client_error(),
            "{path} {why}: {} {}",
            r.status,
            r.text()
        );
        // Dot segments are refused at the edge, before the route.
        assert!(
            r.text().contains(why) || r.text().contains("'.' and '..' segments are not allowed"),
            "{why}: {}",
            r.text()
        );
    }
    // A multipart body sent by PUT is told to go by POST.
    let r = i
        .send(
            "PUT",
            "/debian/apt/upload/stable/main",
            Some(common::ADMIN),
            &[("content-type", "multipart/form-data; boundary=x")],
            b"--x\r\nContent-Disposition: form-data; name=\"deb\"; filename=\"a.deb\"\r\n\r\nx\r\n--x--\r\n"
                .to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.text().contains("send it with POST (curl -F deb=@FILE"),
        "{}",
        r.text()
    );
    let feed = i
        .ferry
        .feed(&ferry_types::FeedName::new("apt").unwrap())
        .await
        .unwrap();
    assert!(i.ferry.items(&feed, "").await.unwrap().is_empty());
    assert_eq!(i.staging_files(), 0);
    // And the good one goes in (zstd-compressed members).
    assert_eq!(
        put(&i, "/debian/apt/upload/stable/main", good).await.status,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn debian_delete_and_by_hash_generations() {
    let i = setup().await;
    let v1 = deb(&control("demo", "1.0", "amd64", ""), b"1", Compression::Gz);
    let v2 = deb(&control("demo", "2.0", "amd64", ""), b"2", Compression::Gz);
    put(&i, "/debian/apt/upload/stable/main", v1).await;
    let old = i
        .get("/debian/apt/dists/stable/main/binary-amd64/Packages")
        .await
        .body;
    put(&i, "/debian/apt/upload/stable/main", v2).await;
    let new = i
        .get("/debian/apt/dists/stable/main/binary-amd64/Packages")
        .await
        .text();
    assert!(
        new.contains("Version: 1.0\n") && new.contains("Version: 2.0\n"),
        "{new}"
    );
    // A client holding the older InRelease still gets the older index by hash.
    let by_hash = format!(
        "/debian/apt/dists/stable/main/binary-amd64/by-hash/SHA256/{}",
        sha256_hex(&old)
    );
    assert_eq!(i.get(&by_hash).await.body, old);

    let r = i
        .send(
            "DELETE",
            "/debian/apt/package/stable/main/demo/1.0/amd64",
            Some(ADMIN),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    let after = i
        .get("/debian/apt/dists/stable/main/binary-amd64/Packages")
        .await
        .text();
    assert!(
        !after.contains("Version: 1.0\n") && after.contains("Version: 2.0\n"),
        "{after}"
    );
    assert_eq!(
        i.get("/debian/apt/pool/main/d/demo/demo_1.0_amd64.deb")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let r = i
        .send(
            "DELETE",
            "/debian/apt/package/stable/main/demo/1.0/amd64",
            Some(ADMIN),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Without a write key nothing is deleted or uploaded.
    let r = i
        .send(
            "DELETE",
            "/debian/apt/package/stable/main/demo/2.0/amd64",
            None,
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        i.get("/debian/apt/dists/nothing/Release").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn debian_signing_key_export_import_and_never_in_a_bundle() {
    let a = setup().await;
    let b = setup().await;
    let ka = a
        .send(
            "GET",
            "/api/v1/feeds/apt/signing-key",
            Some(ADMIN),
            &[],
            Body::empty(),
        )
        .await
        .json();
    let kb = b
        .send(
            "GET",
            "/api/v1/feeds/apt/signing-key",
            Some(ADMIN),
            &[],
            Body::empty(),
        )
        .await
        .json();
    assert_ne!(ka["fingerprint"], kb["fingerprint"], "each feed gets its own key");
    assert!(ka.get("secret_key").is_none());
    assert_eq!(
        ka["public_key"].as_str().unwrap(),
        a.get("/debian/apt/key.asc").await.text()
    );

    // Import a's secret key into b (read from a's store, as an operator exports it with gpg).
    let feed = a
        .ferry
        .feed(&ferry_types::FeedName::new("apt").unwrap())
        .await
        .unwrap();
    let secret = a.ferry.metadata().signing_key(feed.id).await.unwrap().unwrap();
    let body = serde_json::json!({ "secret_key": secret }).to_string();
    let hdr = [("content-type", "application/json")];
    let r = b
        .send("PUT", "/api/v1/feeds/apt/signing-key", Some(ADMIN), &hdr, body)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["fingerprint"], ka["fingerprint"]);
    assert_eq!(
        b.get("/debian/apt/key.gpg").await.body,
        a.get("/debian/apt/key.gpg").await.body
    );

    // Not a key, or a public key only: refused.
    let pubkey = serde_json::json!({ "secret_key": ka["public_key"] }).to_string();
    let r = b
        .send("PUT", "/api/v1/feeds/apt/signing-key", Some(ADMIN), &hdr, pubkey)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    let r = b
        .send(
            "PUT",
            "/api/v1/feeds/apt/signing-key",
            Some(ADMIN),
            &hdr,
            r#"{"secret_key":"nope"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    // Only admins see or set keys.
    assert_eq!(
        b.send("GET", "/api/v1/feeds/apt/signing-key", None, &[], Body::empty())
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );

    // A bundle of the feed carries the package, never the secret key.
    put(
        &a,
        "/debian/apt/upload/stable/main",
        deb(&control("demo", "1.0", "all", ""), b"x", Compression::Gz),
    )
    .await;
    let bundle = a
        .send(
            "GET",
            "/api/v1/feeds/apt/bundle?since=0",
            Some(ADMIN),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(bundle.status, StatusCode::OK);
    let text = String::from_utf8_lossy(&bundle.body);
    assert!(text.contains("deb/stable/main/demo/1.0/all"));
    assert!(!text.contains("PRIVATE KEY") && !text.contains(secret.lines().nth(3).unwrap()));
    // Other feed types have no signing key.
    a.feed("files", FeedType::Assets, false).await;
    let r = a
        .send(
            "GET",
            "/api/v1/feeds/files/signing-key",
            Some(ADMIN),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn debian_private_feeds_need_a_key_and_uploads_a_write_key() {
    let i = Instance::new().await;
    i.feed("secret", FeedType::Debian, true).await;
    let reader = i
        .key("reader", ferry_store::Permission::Read, Some(&["secret"]))
        .await;
    let pkg = deb(&control("demo", "1.0", "all", ""), b"x", Compression::Gz);
    let r = i
        .send(
            "PUT",
            "/debian/secret/upload/stable/main",
            Some(&reader),
            &[],
            pkg.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert_eq!(
        put(&i, "/debian/secret/upload/stable/main", pkg).await.status,
        StatusCode::CREATED
    );
    for path in ["/debian/secret/dists/stable/InRelease", "/debian/secret/key.gpg"] {
        assert_eq!(i.get(path).await.status, StatusCode::UNAUTHORIZED, "{path}");
        // apt sends the key as basic auth.
        let basic = format!("Basic {}", base64_encode(&format!("apt:{reader}")));
        let r = i
            .send("GET", path, None, &[("authorization", &basic)], Body::empty())
            .await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
    }
}

fn base64_encode(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn debian_replicated_items_are_checked_like_uploads() {
    use ferry_store::{Change, ChangeOp};
    let i = setup().await;
    let pkg = deb(&control("demo", "1.0", "amd64", ""), b"x", Compression::Gz);
    let r = put(&i, "/debian/apt/upload/stable/main", pkg).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let feed = i
        .ferry
        .feed(&ferry_types::FeedName::new("apt").unwrap())
        .await
        .unwrap();
    let item = i.ferry.items(&feed, "deb/").await.unwrap().remove(0);
    let forge = |key: &str, meta: serde_json::Value| Change {
        key: ferry_types::ItemKey::new(key).unwrap(),
        stamp: i.ferry.clock().stamp(),
        op: ChangeOp::Upsert {
            meta,
            blobs: item.blobs.clone(),
            created_at: None,
        },
    };
    // The same item under another key, a pool path elsewhere, a control
    // paragraph naming another package: each refused.
    let mut other_path = item.meta.clone();
    other_path["filename"] = "pool/main/d/demo/../../../../etc/passwd".into();
    let mut other_control = item.meta.clone();
    other_control["control"] = "Package: evil\nVersion: 1.0\nArchitecture: amd64".into();
    for (key, meta) in [
        ("deb/stable/main/other/1.0/amd64", item.meta.clone()),
        ("deb/stable/main/demo/1.0/amd64", other_path),
        ("deb/stable/main/demo/1.0/amd64", other_control),
        ("deb/stable/main/../1.0/amd64", item.meta.clone()),
    ] {
        let r = i.ferry.apply(&feed, vec![forge(key, meta)]).await;
        assert!(
            matches!(r, Err(ferry_core::CoreError::Invalid(_))),
            "{key}: {r:?}"
        );
    }
    // Metadata consistent in itself, for another package than its .deb:
    // refused, since the index would list (and the feed sign) a lie.
    let mut lie = item.meta.clone();
    lie["package"] = "evil".into();
    lie["filename"] = "pool/main/e/evil/evil_1.0_amd64.deb".into();
    lie["control"] = lie["control"]
        .as_str()
        .unwrap()
        .replace("Package: demo", "Package: evil")
        .into();
    let r = i
        .ferry
        .apply(&feed, vec![forge("deb/stable/main/evil/1.0/amd64", lie)])
        .await;
    assert!(
        matches!(&r, Err(ferry_core::CoreError::Invalid(m)) if m.contains("its .deb is demo_1.0_amd64")),
        "{r:?}"
    );
    // The genuine item applies.
    i.ferry
        .apply(&feed, vec![forge(item.key.as_str(), item.meta.clone())])
        .await
        .unwrap();
}

/// A `multipart/form-data` body with one `deb` file part per `.deb`.
fn multipart(debs: &[Vec<u8>]) -> (String, Vec<u8>) {
    let parts: Vec<(String, &[u8])> = debs
        .iter()
        .enumerate()
        .map(|(n, d)| (format!("name=\"deb\"; filename=\"p{n}.deb\""), d.as_slice()))
        .collect();
    multipart_parts(&parts)
}

/// A `multipart/form-data` body of parts given by their Content-Disposition
/// parameters (after `form-data; `) and bytes.
fn multipart_parts(parts: &[(String, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "ferry-test-boundary-7d1f";
    let mut body = Vec::new();
    for (disposition, bytes) in parts {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; {disposition}\r\n\
                 Content-Type: application/vnd.debian.binary-package\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

async fn post_many(i: &Instance, path: &str, debs: &[Vec<u8>]) -> common::Reply {
    let (ct, body) = multipart(debs);
    i.send("POST", path, Some(ADMIN), &[("content-type", &ct)], body)
        .await
}

fn pkg(name: &str, version: &str, arch: &str) -> Vec<u8> {
    deb(
        &control(name, version, arch, ""),
        name.as_bytes(),
        Compression::Gz,
    )
}

#[tokio::test]
async fn debian_bulk_upload_is_all_or_nothing() {
    let i = setup().await;
    let debs: Vec<Vec<u8>> = (0..40)
        .map(|n| pkg(&format!("bulk{n}"), "1.0", "amd64"))
        .collect();
    let r = post_many(&i, "/debian/apt/upload/bookworm/main", &debs).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let listed = r.json();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 40);
    assert_eq!(listed[7]["filename"], "pool/main/b/bulk7/bulk7_1.0_amd64.deb");
    let text = i
        .get("/debian/apt/dists/bookworm/main/binary-amd64/Packages")
        .await
        .text();
    for n in 0..40 {
        assert!(text.contains(&format!("Package: bulk{n}\n")), "bulk{n}: {text}");
    }
    assert_eq!(
        i.get("/debian/apt/pool/main/b/bulk7/bulk7_1.0_amd64.deb")
            .await
            .body,
        debs[7]
    );
    // Sent again: no-ops.
    let r = post_many(&i, "/debian/apt/upload/bookworm/main", &debs[..3]).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    // The pool knows every file of the upload at once: other bytes under
    // one of its pool paths, in another distribution, are refused.
    let other = deb(&control("bulk39", "1.0", "amd64", ""), b"other", Compression::Gz);
    let r = put(&i, "/debian/apt/upload/trixie/main", other).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    let r = put(&i, "/debian/apt/upload/trixie/main", debs[39].clone()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());

    // One bad file, or one changed published version, refuses the whole
    // upload, naming its part: the good files beside it are not published
    // either, and not one byte of them is placed in the blob store.
    let placed = i.blob_files();
    let fresh = pkg("fresh", "1.0", "amd64");
    let r = post_many(
        &i,
        "/debian/apt/upload/bookworm/main",
        &[fresh.clone(), b"not a deb".to_vec()],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(r.text().contains("part 2 (p1.deb): "), "{}", r.text());
    let changed = deb(&control("bulk3", "1.0", "amd64", ""), b"other", Compression::Gz);
    let r = post_many(&i, "/debian/apt/upload/bookworm/main", &[fresh.clone(), changed]).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    assert!(r.text().contains("part 2 (p1.deb): "), "{}", r.text());
    let twice = [
        pkg("twin", "1.0", "amd64"),
        deb(&control("twin", "1.0", "amd64", ""), b"x", Compression::Gz),
    ];
    let r = post_many(&i, "/debian/apt/upload/bookworm/main", &twice).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    assert!(
        r.text().contains(
            "part 2 (p1.deb): twin 1.0 (amd64) is in this upload twice with different content (also as part 1 (p0.deb))"
        ),
        "{}",
        r.text()
    );
    assert_eq!(i.blob_files(), placed);
    let r = post_many(&i, "/debian/apt/upload/bookworm/main", &[]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    let text = i
        .get("/debian/apt/dists/bookworm/main/binary-amd64/Packages")
        .await
        .text();
    assert!(
        !text.contains("Package: fresh\n") && !text.contains("Package: twin\n"),
        "{text}"
    );
    assert_eq!(
        i.get("/debian/apt/pool/main/f/fresh/fresh_1.0_amd64.deb")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(i.staging_files(), 0);

    // Writing needs a write key, like a single upload.
    let (ct, body) = multipart(&[fresh]);
    let r = i
        .send(
            "POST",
            "/debian/apt/upload/bookworm/main",
            None,
            &[("content-type", &ct)],
            body,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
}

/// Decodes the way apt does: one gzip member after another (zlib's
/// gzread), and a single xz stream (apt 2.6 stops at the first one).
fn apt_decode(name: &str, body: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    if name.ends_with(".gz") {
        flate2::read::MultiGzDecoder::new(body)
            .read_to_end(&mut out)
            .unwrap();
    } else if name.ends_with(".xz") {
        xz2::read::XzDecoder::new(body).read_to_end(&mut out).unwrap();
    } else {
        out = body.to_vec();
    }
    out
}

#[tokio::test]
async fn debian_compressed_indexes_stay_whole_as_packages_come_and_go() {
    let i = setup().await;
    let debs: Vec<Vec<u8>> = (0..150)
        .map(|n| {
            pkg(
                &format!("many{n}"),
                "1.0",
                if n % 10 == 0 { "all" } else { "amd64" },
            )
        })
        .collect();
    let r = post_many(&i, "/debian/apt/upload/bookworm/main", &debs).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let check = |expect_present: Vec<String>, expect_absent: Vec<String>| {
        let i = &i;
        async move {
            let release = i.get("/debian/apt/dists/bookworm/Release").await.text();
            for arch in ["amd64", "all"] {
                let dir = format!("main/binary-{arch}");
                let plain = i
                    .get(&format!("/debian/apt/dists/bookworm/{dir}/Packages"))
                    .await
                    .body;
                for name in ["Packages", "Packages.gz", "Packages.xz"] {
                    let body = i
                        .get(&format!("/debian/apt/dists/bookworm/{dir}/{name}"))
                        .await
                        .body;
                    assert_eq!(apt_decode(name, &body), plain, "{dir}/{name}");
                    let listed = release_list(&release, "SHA256");
                    let entry = listed
                        .iter()
                        .find(|(p, _, _)| *p == format!("{dir}/{name}"))
                        .unwrap();
                    assert_eq!((entry.1.clone(), entry.2), (sha256_hex(&body), body.len() as u64));
                }
                let text = String::from_utf8(plain).unwrap();
                for p in &expect_present {
                    let n = p.trim_start_matches("many").parse::<usize>().unwrap();
                    let is_all = n % 10 == 0 && n < 150;
                    assert_eq!(
                        text.contains(&format!("Package: {p}\n")),
                        arch == "amd64" || is_all,
                        "{p} in {arch}"
                    );
                }
                for p in &expect_absent {
                    assert!(!text.contains(&format!("Package: {p}\n")), "{p} gone from {arch}");
                }
            }
        }
    };
    let all: Vec<String> = (0..150).map(|n| format!("many{n}")).collect();
    check(all.clone(), vec![]).await;
    // One more, and one deleted (an `all` one: it leaves every index).
    assert_eq!(
        put(
            &i,
            "/debian/apt/upload/bookworm/main",
            pkg("many150", "1.0", "amd64")
        )
        .await
        .status,
        StatusCode::CREATED
    );
    let r = i
        .send(
            "DELETE",
            "/debian/apt/package/bookworm/main/many20/1.0/all",
            Some(ADMIN),
            &[],
            vec![],
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let mut present: Vec<String> = all.into_iter().filter(|p| p != "many20").collect();
    present.push("many150".into());
    check(present, vec!["many20".into()]).await;
}

/// A bulk upload mixing parts read into memory (small) and parts streamed
/// into staging (over 1 MiB): every part is published, in order, with its
/// own bytes; a bad small part after a large one refuses the lot and
/// leaves neither staged nor placed files behind.
#[tokio::test]
async fn debian_bulk_upload_mixes_small_and_large_parts_in_order() {
    let i = setup().await;
    // Incompressible data keeps the .deb over 1 MiB.
    let mut noise = Vec::with_capacity(3 << 19);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while noise.len() < 3 << 19 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise.extend_from_slice(&x.to_le_bytes());
    }
    let large = deb(&control("large", "1.0", "amd64", ""), &noise, Compression::Gz);
    assert!(large.len() > 1 << 20);
    let debs = vec![
        pkg("small0", "1.0", "amd64"),
        large.clone(),
        pkg("small2", "1.0", "all"),
        pkg("small3", "2.0", "amd64"),
    ];
    let placed = i.blob_files();
    let mut bad = debs.clone();
    bad.push(b"!<arch>\nbroken".to_vec());
    let r = post_many(&i, "/debian/apt/upload/bookworm/main", &bad).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(r.text().contains("part 5 (p4.deb): "), "{}", r.text());
    assert_eq!(i.blob_files(), placed);
    assert_eq!(i.staging_files(), 0);

    let r = post_many(&i, "/debian/apt/upload/bookworm/main", &debs).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let names: Vec<String> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["package"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["small0", "large", "small2", "small3"]);
    assert_eq!(i.blob_files(), placed + 4);
    assert_eq!(i.staging_files(), 0);
    let got = i.get("/debian/apt/pool/main/l/large/large_1.0_amd64.deb").await;
    assert_eq!(got.body, large);
    let got = i.get("/debian/apt/pool/main/s/small3/small3_2.0_amd64.deb").await;
    assert_eq!(got.body, debs[3]);
}

/// Every part of a bulk upload is a package: a file named only by RFC
/// 5987's `filename*` is published like any other, and a part that is no
/// package (a text field) refuses the upload naming it. Neither is
/// skipped (they were: a package sent so was silently left out).
#[tokio::test]
async fn debian_bulk_upload_skips_no_part() {
    let i = setup().await;
    let starred = pkg("starred", "1.0", "amd64");
    let plain = pkg("plain", "1.0", "amd64");
    let post = |parts: Vec<(String, &[u8])>| {
        let (ct, body) = multipart_parts(&parts);
        let i = &i;
        async move {
            i.send(
                "POST",
                "/debian/apt/upload/bookworm/main",
                Some(ADMIN),
                &[("content-type", &ct)],
                body,
            )
            .await
        }
    };
    // A text field beside a package: refused, naming the field.
    let r = post(vec![
        ("name=\"deb\"; filename=\"plain.deb\"".into(), plain.as_slice()),
        ("name=\"comment\"".into(), b"nightly build".as_slice()),
    ])
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(r.text().contains("part 2 (field \"comment\"): "), "{}", r.text());
    assert!(r.text().contains("the part has no file name"), "{}", r.text());
    // A package whose part has no name at all is still read.
    let r = post(vec![
        (
            "name=\"deb\"; filename*=UTF-8''st%C3%A4rred.deb".into(),
            starred.as_slice(),
        ),
        ("name=\"deb\"".into(), plain.as_slice()),
    ])
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let listed = r.json();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["package"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["starred", "plain"], "{listed}");
    // A bad file named by filename* is named by it.
    let r = post(vec![(
        "name=\"deb\"; filename*=UTF-8''b%C3%B6se.deb".into(),
        b"not a deb".as_slice(),
    )])
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(r.text().contains("part 1 (böse.deb): "), "{}", r.text());
    let text = i
        .get("/debian/apt/dists/bookworm/main/binary-amd64/Packages")
        .await
        .text();
    assert!(
        text.contains("Package: starred\n") && text.contains("Package: plain\n"),
        "{text}"
    );
}

/// Clients publishing the same package at once (a CI retry, two pipelines)
/// all succeed: the same bytes are a no-op however the uploads interleave
/// (a trial saw 409 "already exists with other content" for 19 of 150).
/// Different bytes of one version at once: one wins, the others get 409.
#[tokio::test]
async fn debian_uploads_of_one_package_at_once_agree() {
    let i = setup().await;
    for round in 0..5 {
        let same = pkg(&format!("race{round}"), "1.0", "amd64");
        let puts = (0..6).map(|_| put(&i, "/debian/apt/upload/bookworm/main", same.clone()));
        let bulks = (0..4).map(|_| {
            post_many(
                &i,
                "/debian/apt/upload/bookworm/main",
                std::slice::from_ref(&same),
            )
        });
        let (puts, bulks) = futures::join!(futures::future::join_all(puts), futures::future::join_all(bulks));
        for r in puts.iter().chain(&bulks) {
            assert_eq!(r.status, StatusCode::CREATED, "round {round}: {}", r.text());
        }
        // Overlapping sets at once, identical bytes.
        let set: Vec<Vec<u8>> = (0..6)
            .map(|n| pkg(&format!("set{round}-{n}"), "1.0", "all"))
            .collect();
        let bulks = (0..4).map(|k| post_many(&i, "/debian/apt/upload/bookworm/main", &set[k..k + 3]));
        for r in futures::future::join_all(bulks).await {
            assert_eq!(r.status, StatusCode::CREATED, "round {round}: {}", r.text());
        }
        // Different bytes of one version at once: exactly one is published.
        let rivals: Vec<Vec<u8>> = (0..4)
            .map(|k| {
                deb(
                    &control(&format!("rival{round}"), "1.0", "amd64", ""),
                    &[k as u8; 9],
                    Compression::Gz,
                )
            })
            .collect();
        let puts = rivals
            .iter()
            .map(|b| put(&i, "/debian/apt/upload/bookworm/main", b.clone()));
        let replies = futures::future::join_all(puts).await;
        let won: Vec<usize> = (0..4)
            .filter(|k| replies[*k].status == StatusCode::CREATED)
            .collect();
        assert_eq!(won.len(), 1, "round {round}");
        for r in replies.iter().filter(|r| r.status != StatusCode::CREATED) {
            assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
        }
        let path = format!("/debian/apt/pool/main/r/rival{round}/rival{round}_1.0_amd64.deb");
        assert_eq!(i.get(&path).await.body, rivals[won[0]]);
    }
    let text = i
        .get("/debian/apt/dists/bookworm/main/binary-amd64/Packages")
        .await
        .text();
    assert_eq!(text.matches("Package: race").count(), 5, "{text}");
    assert_eq!(text.matches("Package: set").count(), 30, "{text}");
    assert_eq!(i.staging_files(), 0);
}

/// apt revalidates `InRelease`/`Release` with `If-Modified-Since`: the
/// release files and indexes carry `Last-Modified` and an `ETag` (their
/// SHA-256), answer 304 while unchanged, and an upload (within the same
/// second too) makes them new; by-hash files may be kept; `.deb`s carry
/// their item's time.
#[tokio::test]
async fn debian_indexes_and_packages_carry_validators() {
    let i = setup().await;
    let lib = deb(&control("libdemo", "1.0-1", "all", ""), b"lib", Compression::Xz);
    let r = put(&i, "/debian/apt/upload/bookworm/main", lib).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let url = "/debian/apt/dists/bookworm/InRelease";
    let first = i.get(url).await;
    assert_eq!(first.status, StatusCode::OK);
    let etag = first.header("etag").unwrap().to_owned();
    assert_eq!(etag, format!("\"sha256:{}\"", sha256_hex(&first.body)));
    let modified = first.header("last-modified").unwrap().to_owned();
    assert_eq!(first.header("cache-control"), Some("no-cache"));
    for cond in [
        ("if-none-match", etag.as_str()),
        ("if-modified-since", modified.as_str()),
    ] {
        let r = i.send("GET", url, None, &[cond], Body::empty()).await;
        assert_eq!(r.status, StatusCode::NOT_MODIFIED, "{cond:?}");
        assert!(r.body.is_empty());
    }
    let packages = i
        .get("/debian/apt/dists/bookworm/main/binary-amd64/Packages")
        .await;
    assert_eq!(packages.header("last-modified"), Some(modified.as_str()));

    let app = deb(&control("demo", "2.0", "amd64", ""), b"app", Compression::Gz);
    let r = put(&i, "/debian/apt/upload/bookworm/main", app).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    for cond in [
        ("if-none-match", etag.as_str()),
        ("if-modified-since", modified.as_str()),
    ] {
        let r = i.send("GET", url, None, &[cond], Body::empty()).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{cond:?}: an upload left InRelease 'not modified'"
        );
        assert!(
            r.text().contains("Package") || r.text().contains("SHA256"),
            "{cond:?}"
        );
        let newer = httpdate::parse_http_date(r.header("last-modified").unwrap()).unwrap();
        assert!(newer > httpdate::parse_http_date(&modified).unwrap());
    }
    let release = i.get("/debian/apt/dists/bookworm/Release").await.text();
    let (path, hash, _) = release_list(&release, "SHA256")
        .into_iter()
        .find(|(p, ..)| p == "main/binary-amd64/Packages")
        .unwrap();
    let by_hash = i
        .get(&format!(
            "/debian/apt/dists/bookworm/{}/by-hash/SHA256/{hash}",
            path.trim_end_matches("/Packages")
        ))
        .await;
    assert_eq!(by_hash.status, StatusCode::OK);
    assert_eq!(by_hash.header("cache-control"), Some("max-age=86400"));
    assert_eq!(
        by_hash.header("etag"),
        Some(format!("\"sha256:{hash}\"").as_str())
    );

    let pool = "/debian/apt/pool/main/d/demo/demo_2.0_amd64.deb";
    let got = i.get(pool).await;
    assert_eq!(got.status, StatusCode::OK);
    let lm = got.header("last-modified").unwrap().to_owned();
    let r = i
        .send("GET", pool, None, &[("if-modified-since", &lm)], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
}
