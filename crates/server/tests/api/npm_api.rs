//! The npm registry protocol, in process: publish bodies built the way npm
//! builds them, then the packument, tarballs, dist-tags, deprecate and
//! unpublish as the npm CLI drives them.
#![allow(clippy::unwrap_used)]
use crate::common;

use std::io::Write;

use axum::body::Body;
use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::{ADMIN, Instance, Reply};
use ferry_store::Permission;
use ferry_types::{FeedName, FeedType, ItemKey};
use serde_json::{Value, json};
use sha1::Sha1;
use sha2::{Digest as _, Sha512};

const HOST: &str = "registry.test:4873";
const ABBREVIATED: &str = "application/vnd.npm.install-v1+json";

/// One tar entry: a file, or a raw path (written unchecked) with content.
fn tgz(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut h = tar::Header::new_gnu();
        {
            // Raw name, so that unsafe paths can be written too.
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name[..path.len()].copy_from_slice(path.as_bytes());
        }
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

fn package_json(name: &str, version: &str) -> Vec<u8> {
    json!({"name": name, "version": version, "main": "index.js", "description": "test package"})
        .to_string()
        .into_bytes()
}

/// A valid tarball of `name@version`; `marker` goes into index.js so that
/// two tarballs of the same version differ.
fn tarball(name: &str, version: &str, marker: &str) -> Vec<u8> {
    let index = format!("module.exports = {marker:?};\n");
    tgz(&[
        ("package/package.json", &package_json(name, version)),
        ("package/index.js", index.as_bytes()),
    ])
}

fn integrity(data: &[u8]) -> String {
    format!("sha512-{}", STANDARD.encode(Sha512::digest(data)))
}

fn shasum(data: &[u8]) -> String {
    Sha1::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// The body `npm publish --tag TAG` sends for `name@version`.
fn publish_body(name: &str, version: &str, tgz: &[u8], tag: &str) -> Value {
    json!({
        "_id": name,
        "name": name,
        "description": "test package",
        "dist-tags": {tag: version},
        "versions": {version: {
            "name": name,
            "version": version,
            "description": "test package",
            "main": "index.js",
            "readme": "# readme\n",
            "_id": format!("{name}@{version}"),
            "_nodeVersion": "20.20.2",
            "_npmVersion": "11.19.1",
            "dist": {
                "integrity": integrity(tgz),
                "shasum": shasum(tgz),
                "tarball": format!("http://elsewhere/{name}/-/{name}-{version}.tgz"),
            },
        }},
        "access": null,
        "_attachments": {format!("{name}-{version}.tgz"): {
            "content_type": "application/octet-stream",
            "data": STANDARD.encode(tgz),
            "length": tgz.len(),
        }},
    })
}

/// The path npm uses for a package: the name with its `/` escaped.
fn path(name: &str) -> String {
    format!("/npm/js/{}", name.replace('/', "%2f"))
}

struct Npm {
    i: Instance,
    w: String,
}

impl Npm {
    async fn new() -> Self {
        Self::with_config(ferry_core::Config::default()).await
    }

    async fn with_config(cfg: ferry_core::Config) -> Self {
        let i = Instance::with_config(cfg).await;
        i.feed("js", FeedType::Npm, false).await;
        let w = i.key("publisher", Permission::Write, None).await;
        Self { i, w }
    }

    async fn send(
        &self,
        method: &str,
        uri: &str,
        key: Option<&str>,
        headers: &[(&str, &str)],
        body: impl Into<Body>,
    ) -> Reply {
        let mut all = vec![("host", HOST)];
        all.extend_from_slice(headers);
        self.i.send(method, uri, key, &all, body).await
    }

    async fn put_json(&self, uri: &str, body: &Value) -> Reply {
        self.send(
            "PUT",
            uri,
            Some(&self.w),
            &[("content-type", "application/json")],
            body.to_string(),
        )
        .await
    }

    async fn publish(&self, name: &str, version: &str, tgz: &[u8], tag: &str) -> Reply {
        self.put_json(&path(name), &publish_body(name, version, tgz, tag))
            .await
    }

    async fn publish_ok(&self, name: &str, version: &str) -> Vec<u8> {
        let t = tarball(name, version, &format!("{name}@{version}"));
        let r = self.publish(name, version, &t, "latest").await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "publish {name}@{version}: {}",
            r.text()
        );
        t
    }

    async fn get(&self, uri: &str, headers: &[(&str, &str)]) -> Reply {
        self.send("GET", uri, None, headers, Body::empty()).await
    }

    /// The full packument as `npm deprecate`/`npm unpublish` fetch it.
    async fn for_write(&self, name: &str) -> Value {
        let r = self
            .send(
                "GET",
                &format!("{}?write=true", path(name)),
                Some(&self.w),
                &[("accept", ABBREVIATED)],
                Body::empty(),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        r.json()
    }

    async fn full(&self, name: &str) -> Value {
        let r = self.get(&path(name), &[("accept", "application/json")]).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        r.json()
    }

    async fn item_count(&self) -> usize {
        let feed = self.i.ferry.feed(&FeedName::new("js").unwrap()).await.unwrap();
        self.i.ferry.items(&feed, "").await.unwrap().len()
    }

    async fn downloads(&self, key: &str) -> u64 {
        self.i.ferry.flush_downloads().await.unwrap();
        let feed = self.i.ferry.feed(&FeedName::new("js").unwrap()).await.unwrap();
        self.i
            .ferry
            .item(&feed, &ItemKey::new(key).unwrap())
            .await
            .unwrap()
            .unwrap()
            .downloads
    }
}

fn assert_error(r: &Reply, status: StatusCode, needles: &[&str]) {
    assert_eq!(r.status, status, "{}", r.text());
    let msg = r.json()["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no JSON error: {}", r.text()))
        .to_owned();
    for n in needles {
        assert!(msg.contains(n), "{n:?} not in {msg:?}");
    }
}

#[tokio::test]
async fn publish_then_full_and_abbreviated_packuments_and_tarballs() {
    let n = Npm::new().await;
    for name in ["hello", "@demo/hello"] {
        let t = tarball(name, "1.0.0", name);
        let r = n.publish(name, "1.0.0", &t, "latest").await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        assert_eq!(r.json()["ok"], true);

        let url = format!("http://{HOST}/npm/js/{name}/-/hello-1.0.0.tgz");
        let r = n.get(&path(name), &[("accept", "application/json")]).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("content-type"), Some("application/json"));
        let full = r.json();
        assert_eq!(full["name"], name);
        assert_eq!(full["_id"], name);
        assert!(full["_rev"].as_str().unwrap().starts_with("1-"));
        assert_eq!(full["dist-tags"], json!({"latest": "1.0.0"}));
        assert_eq!(full["description"], "test package");
        assert_eq!(full["readme"], "# readme\n");
        let v = &full["versions"]["1.0.0"];
        assert_eq!(v["dist"]["tarball"], url);
        assert_eq!(v["dist"]["integrity"], integrity(&t));
        assert_eq!(v["dist"]["shasum"], shasum(&t));
        assert_eq!(v["dist"]["fileCount"], 2);
        assert_eq!(v["_id"], format!("{name}@1.0.0"));
        assert!(full["time"]["1.0.0"].as_str().unwrap().ends_with('Z'));

        let r = n
            .get(
                &path(name),
                &[(
                    "accept",
                    "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*",
                )],
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("content-type"), Some(ABBREVIATED));
        let abbr = r.json();
        assert!(
            abbr.get("_rev").is_none() && abbr.get("readme").is_none(),
            "{abbr}"
        );
        assert!(abbr["modified"].is_string());
        assert_eq!(abbr["versions"]["1.0.0"]["dist"]["tarball"], url);
        assert_eq!(abbr["versions"]["1.0.0"]["dist"]["integrity"], integrity(&t));
        assert!(abbr["versions"]["1.0.0"].get("description").is_none());

        // The tarball, byte for byte, under the URL given and the encoded form.
        let r = n
            .get(url.trim_start_matches(&format!("http://{HOST}")), &[])
            .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, t);
        assert_eq!(r.header("content-type"), Some("application/octet-stream"));
        let r = n.get(&format!("{}/-/hello-1.0.0.tgz", path(name)), &[]).await;
        assert_eq!(r.body, t);
        let r = n
            .send(
                "HEAD",
                &format!("{}/-/hello-1.0.0.tgz", path(name)),
                None,
                &[],
                Body::empty(),
            )
            .await;
        assert_eq!((r.status, r.body.len()), (StatusCode::OK, 0));
        assert_eq!(r.header("content-length"), Some(t.len().to_string().as_str()));
        assert_eq!(n.downloads(&format!("pkg/{name}/1.0.0")).await, 2);
        for missing in ["hello-2.0.0.tgz", "other-1.0.0.tgz", "hello-1.0.0.tar.gz"] {
            assert_eq!(
                n.get(&format!("{}/-/{missing}", path(name)), &[]).await.status,
                StatusCode::NOT_FOUND
            );
        }
    }

    // Another address (a replica, a proxy with TLS) gets its own URLs.
    let r =
        n.i.send(
            "GET",
            "/npm/js/hello",
            None,
            &[("host", "mirror.example:9000"), ("x-forwarded-proto", "https")],
            Body::empty(),
        )
        .await;
    assert_eq!(
        r.json()["versions"]["1.0.0"]["dist"]["tarball"],
        "https://mirror.example:9000/npm/js/hello/-/hello-1.0.0.tgz"
    );
    assert_eq!(
        n.full("hello").await["versions"]["1.0.0"]["dist"]["tarball"],
        format!("http://{HOST}/npm/js/hello/-/hello-1.0.0.tgz")
    );

    // Revalidation: the ETag answers 304 until the package changes.
    let r = n.get("/npm/js/hello", &[]).await;
    let etag = r.header("etag").unwrap().to_owned();
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    let r = n.get("/npm/js/hello", &[("if-none-match", &etag)]).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    n.publish_ok("hello", "1.1.0").await;
    let r = n.get("/npm/js/hello", &[("if-none-match", &etag)]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["dist-tags"]["latest"], "1.1.0");

    // A single version, by version or tag.
    let r = n.get("/npm/js/hello/latest", &[]).await;
    assert_eq!(r.json()["version"], "1.1.0");
    let r = n.get("/npm/js/@demo%2fhello/1.0.0", &[]).await;
    assert_eq!(r.json()["name"], "@demo/hello");
    assert_eq!(
        n.get("/npm/js/hello/9.9.9", &[]).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn unknown_packages_ping_whoami() {
    let n = Npm::new().await;
    for p in [
        "/npm/js/nothing",
        "/npm/js/@s%2fnothing",
        "/npm/js/-/package/nothing/dist-tags",
        "/npm/js/nothing/-/nothing-1.0.0.tgz",
    ] {
        let r = n.get(p, &[]).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{p}");
        assert_eq!(r.header("content-type"), Some("application/json"), "{p}");
    }
    assert_eq!(
        n.get("/npm/js/nothing", &[]).await.json(),
        json!({"error": "not found"})
    );
    // Without a key, a feed that is not public asks for one (private feeds
    // must not be told from missing ones); with a key, it is not found.
    assert_eq!(
        n.get("/npm/nofeed/nothing", &[]).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        n.send("GET", "/npm/nofeed/nothing", Some(&n.w), &[], Body::empty())
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_error(
        &n.get("/npm/js/Bad%20Name", &[]).await,
        StatusCode::BAD_REQUEST,
        &["invalid package name"],
    );

    let r = n.get("/npm/js/-/ping", &[]).await;
    assert_eq!((r.status, r.json()), (StatusCode::OK, json!({})));
    let r = n
        .send("GET", "/npm/js/-/whoami", Some(&n.w), &[], Body::empty())
        .await;
    assert_eq!(r.json(), json!({"username": "publisher"}));
    assert_eq!(
        n.get("/npm/js/-/whoami", &[]).await.status,
        StatusCode::UNAUTHORIZED
    );
    // npm login: the key presented (or given as the password) is the token.
    let r = n
        .send("PUT", "/npm/js/-/user/org.couchdb.user:me", Some(&n.w), &[], "{}")
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(r.json()["token"], n.w.as_str());
}

#[tokio::test]
async fn republishing_a_version_is_forbidden_and_changes_nothing() {
    let n = Npm::new().await;
    let first = n.publish_ok("p", "1.0.0").await;
    let before = n.full("p").await;
    let other = tarball("p", "1.0.0", "different content");
    let r = n.publish("p", "1.0.0", &other, "beta").await;
    assert_error(
        &r,
        StatusCode::FORBIDDEN,
        &["cannot publish over the previously published versions", "1.0.0"],
    );
    assert_eq!(n.full("p").await, before);
    assert_eq!(n.get("/npm/js/p/-/p-1.0.0.tgz", &[]).await.body, first);
    // Build metadata does not make a new version.
    let r = n
        .publish(
            "p",
            "1.0.0+build.2",
            &tarball("p", "1.0.0+build.2", "x"),
            "latest",
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert_eq!(n.item_count().await, 2);
}

#[tokio::test]
async fn bad_publishes_are_refused_with_a_reason_and_write_nothing() {
    let cfg = ferry_core::Config {
        max_upload_bytes: 256 << 10,
        archive: ferry_formats::ArchiveLimits {
            max_unpacked_bytes: 1 << 20,
            ..Default::default()
        },
        ..Default::default()
    };
    let n = Npm::with_config(cfg).await;
    let good = tarball("p", "1.0.0", "x");
    let body = |edit: &dyn Fn(&mut Value)| {
        let mut b = publish_body("p", "1.0.0", &good, "latest");
        edit(&mut b);
        b
    };
    let with_tarball = |t: &[u8]| publish_body("p", "1.0.0", t, "latest");
    let pj = package_json("p", "1.0.0");
    let zeros = vec![0u8; 4 << 20];
    // Incompressible, bigger than max_upload_bytes once decoded.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..300_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let cases: Vec<(&str, String, StatusCode, Vec<&str>)> = vec![
        (
            "malformed JSON",
            "{\"name\": \"p\", ".into(),
            StatusCode::BAD_REQUEST,
            vec!["not valid JSON"],
        ),
        (
            "not an object",
            "[1]".into(),
            StatusCode::BAD_REQUEST,
            vec!["not a JSON object"],
        ),
        (
            "bad base64",
            body(&|b| b["_attachments"]["p-1.0.0.tgz"]["data"] = json!("!!!not base64")).to_string(),
            StatusCode::BAD_REQUEST,
            vec!["base64"],
        ),
        (
            "not gzip",
            with_tarball(b"plain text, not a tarball").to_string(),
            StatusCode::BAD_REQUEST,
            vec!["gzip"],
        ),
        (
            "package.json names another package",
            with_tarball(&tgz(&[("package/package.json", &package_json("q", "1.0.0"))])).to_string(),
            StatusCode::BAD_REQUEST,
            vec!["\"q\"", "\"p\""],
        ),
        (
            "package.json has another version",
            with_tarball(&tgz(&[("package/package.json", &package_json("p", "1.0.1"))])).to_string(),
            StatusCode::BAD_REQUEST,
            vec!["1.0.1", "1.0.0"],
        ),
        (
            "manifest version differs",
            body(&|b| b["versions"]["1.0.0"]["version"] = json!("2.0.0")).to_string(),
            StatusCode::BAD_REQUEST,
            vec!["2.0.0"],
        ),
        (
            "body names another package than the URL",
            publish_body(
                "q",
                "1.0.0",
                &tgz(&[("package/package.json", &package_json("q", "1.0.0"))]),
                "latest",
            )
            .to_string(),
            StatusCode::BAD_REQUEST,
            vec!["URL", "\"q\"", "\"p\""],
        ),
        (
            "traversal entry",
            with_tarball(&tgz(&[
                ("package/package.json", &pj),
                ("package/../../etc/evil", b"x"),
            ]))
            .to_string(),
            StatusCode::BAD_REQUEST,
            vec!["'..'"],
        ),
        (
            "wrong integrity",
            body(&|b| b["versions"]["1.0.0"]["dist"]["shasum"] = json!("0".repeat(40))).to_string(),
            StatusCode::BAD_REQUEST,
            vec!["dist.shasum"],
        ),
        (
            "size bomb",
            with_tarball(&tgz(&[("package/package.json", &pj), ("package/zeros", &zeros)])).to_string(),
            StatusCode::PAYLOAD_TOO_LARGE,
            vec!["expands to more than"],
        ),
        (
            "tarball over max_upload_bytes",
            with_tarball(&tgz(&[("package/package.json", &pj), ("package/noise", &noise)])).to_string(),
            StatusCode::PAYLOAD_TOO_LARGE,
            vec!["limit"],
        ),
        (
            "body over the body limit",
            body(&|b| b["readme"] = json!("r".repeat(2 << 20))).to_string(),
            StatusCode::PAYLOAD_TOO_LARGE,
            vec!["limit"],
        ),
    ];
    for (what, b, status, needles) in cases {
        // No Content-Length here: the limit holds while reading.
        let r = n.send("PUT", "/npm/js/p", Some(&n.w), &[], b.clone()).await;
        assert_eq!(r.status, status, "{what}: {}", r.text());
        assert_error(&r, status, &needles);
        if what == "body over the body limit" {
            let len = b.len().to_string();
            let r = n
                .send("PUT", "/npm/js/p", Some(&n.w), &[("content-length", &len)], b)
                .await;
            assert_eq!(
                r.status,
                StatusCode::PAYLOAD_TOO_LARGE,
                "{what} with Content-Length"
            );
        }
    }
    assert_eq!(n.item_count().await, 0);
    assert_eq!(n.i.staging_files(), 0);
    assert_eq!(n.get("/npm/js/p", &[]).await.status, StatusCode::NOT_FOUND);
    // The same instance takes a good publish.
    assert_eq!(
        n.publish("p", "1.0.0", &good, "latest").await.status,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn writes_need_a_write_key_and_private_feeds_a_read_key() {
    let n = Npm::new().await;
    let t = tarball("p", "1.0.0", "x");
    let body = publish_body("p", "1.0.0", &t, "latest").to_string();
    let r = n.send("PUT", "/npm/js/p", None, &[], body.clone()).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, &["API key"]);
    let reader = n.i.key("reader", Permission::Read, None).await;
    let r = n.send("PUT", "/npm/js/p", Some(&reader), &[], body.clone()).await;
    assert_error(&r, StatusCode::FORBIDDEN, &["read permission"]);
    assert_eq!(
        n.send("PUT", "/npm/js/p", Some("ferry_wrong"), &[], body.clone())
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        n.send("DELETE", "/npm/js/p/-rev/1-x", Some(&reader), &[], Body::empty())
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(n.item_count().await, 0);

    n.i.feed("secret", FeedType::Npm, true).await;
    let r = n.send("PUT", "/npm/secret/p", Some(ADMIN), &[], body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_error(
        &n.get("/npm/secret/p", &[]).await,
        StatusCode::UNAUTHORIZED,
        &["API key"],
    );
    assert_eq!(
        n.get("/npm/secret/p/-/p-1.0.0.tgz", &[]).await.status,
        StatusCode::UNAUTHORIZED
    );
    let r = n
        .send("GET", "/npm/secret/p", Some(&reader), &[], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("cache-control"), Some("private, no-cache"));
    assert_eq!(
        r.json()["versions"]["1.0.0"]["dist"]["tarball"],
        format!("http://{HOST}/npm/secret/p/-/p-1.0.0.tgz")
    );
    let r = n
        .send(
            "GET",
            "/npm/secret/p/-/p-1.0.0.tgz",
            Some(&reader),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.body, t);
}

#[tokio::test]
async fn dist_tags_add_ls_rm() {
    let n = Npm::new().await;
    for name in ["p", "@s/p"] {
        n.publish_ok(name, "1.0.0").await;
        n.publish_ok(name, "1.1.0").await;
        let tags = format!("/npm/js/-/package/{}/dist-tags", name.replace('/', "%2f"));
        let r = n.get(&tags, &[]).await;
        assert_eq!((r.status, r.json()), (StatusCode::OK, json!({"latest": "1.1.0"})));

        let r = n
            .send(
                "PUT",
                &format!("{tags}/beta"),
                Some(&n.w),
                &[("content-type", "application/json")],
                "\"1.0.0\"",
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        assert_eq!(
            n.get(&tags, &[]).await.json(),
            json!({"beta": "1.0.0", "latest": "1.1.0"})
        );
        assert_eq!(n.full(name).await["dist-tags"]["beta"], "1.0.0");
        let r = n
            .send("GET", &format!("/npm/js/{name}/beta"), None, &[], Body::empty())
            .await;
        assert_eq!(r.json()["version"], "1.0.0");

        // Moving latest back.
        let r = n
            .send("PUT", &format!("{tags}/latest"), Some(&n.w), &[], "\"1.0.0\"")
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
        assert_eq!(n.get(&tags, &[]).await.json()["latest"], "1.0.0");

        let r = n
            .send("PUT", &format!("{tags}/next"), Some(&n.w), &[], "\"9.9.9\"")
            .await;
        assert_error(&r, StatusCode::NOT_FOUND, &["9.9.9"]);
        let r = n
            .send("PUT", &format!("{tags}/1.x"), Some(&n.w), &[], "\"1.0.0\"")
            .await;
        assert_error(&r, StatusCode::BAD_REQUEST, &["dist-tag"]);
        let r = n
            .send(
                "PUT",
                &format!("{tags}/next"),
                Some(&n.w),
                &[],
                "\"not a version\"",
            )
            .await;
        assert_error(&r, StatusCode::BAD_REQUEST, &["semver"]);
        let r = n
            .send("PUT", &format!("{tags}/next"), None, &[], "\"1.0.0\"")
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);

        let r = n
            .send("DELETE", &format!("{tags}/beta"), Some(&n.w), &[], Body::empty())
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(n.get(&tags, &[]).await.json(), json!({"latest": "1.0.0"}));
        let r = n
            .send("DELETE", &format!("{tags}/beta"), Some(&n.w), &[], Body::empty())
            .await;
        assert_error(&r, StatusCode::NOT_FOUND, &["beta"]);
        let r = n
            .send(
                "DELETE",
                &format!("{tags}/latest"),
                Some(&n.w),
                &[],
                Body::empty(),
            )
            .await;
        assert_error(&r, StatusCode::BAD_REQUEST, &["latest"]);
    }
    assert_eq!(
        n.get("/npm/js/-/package/nothing/dist-tags", &[]).await.json(),
        json!({"error": "not found"})
    );
}

#[tokio::test]
async fn deprecate_and_undeprecate() {
    let n = Npm::new().await;
    n.publish_ok("@s/p", "1.0.0").await;
    n.publish_ok("@s/p", "2.0.0").await;
    // npm deprecate: fetch with ?write=true (full, whatever it accepts), edit, PUT back.
    let mut doc = n.for_write("@s/p").await;
    assert!(doc["_rev"].is_string(), "write=true must give the full packument");
    doc["versions"]["1.0.0"]["deprecated"] = json!("use 2.x");
    let r = n.put_json(&path("@s/p"), &doc).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["deprecated"], json!(["1.0.0"]));
    let abbr = n.get(&path("@s/p"), &[("accept", ABBREVIATED)]).await.json();
    assert_eq!(abbr["versions"]["1.0.0"]["deprecated"], "use 2.x");
    assert!(abbr["versions"]["2.0.0"].get("deprecated").is_none());
    assert_eq!(n.full("@s/p").await["versions"]["1.0.0"]["deprecated"], "use 2.x");
    // The tarball and publish time are kept.
    assert_eq!(
        n.get("/npm/js/@s/p/-/p-1.0.0.tgz", &[]).await.status,
        StatusCode::OK
    );
    assert_eq!(n.full("@s/p").await["time"]["1.0.0"], doc["time"]["1.0.0"]);

    // A stale copy is refused.
    let stale = doc.clone();
    let mut doc = n.for_write("@s/p").await;
    assert_ne!(doc["_rev"], stale["_rev"]);
    let r = n.put_json(&path("@s/p"), &stale).await;
    assert_error(&r, StatusCode::CONFLICT, &["fetch it again"]);

    // Un-deprecate with "".
    doc["versions"]["1.0.0"]["deprecated"] = json!("");
    let r = n.put_json(&path("@s/p"), &doc).await;
    assert_eq!(r.json()["undeprecated"], json!(["1.0.0"]));
    assert!(
        n.full("@s/p").await["versions"]["1.0.0"]
            .get("deprecated")
            .is_none()
    );

    // Versions cannot be added without a publish; bodies about another package are refused.
    let mut doc = n.for_write("@s/p").await;
    doc["versions"]["3.0.0"] = json!({"name": "@s/p", "version": "3.0.0"});
    assert_error(
        &n.put_json(&path("@s/p"), &doc).await,
        StatusCode::BAD_REQUEST,
        &["3.0.0", "npm publish"],
    );
    let r = n
        .put_json("/npm/js/other", &json!({"name": "other", "versions": {}}))
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, &["not found"]);
    assert_eq!(n.full("@s/p").await["versions"].as_object().unwrap().len(), 2);
}

#[tokio::test]
async fn unpublish_one_version_then_the_package() {
    let n = Npm::new().await;
    n.publish_ok("p", "1.0.0").await;
    n.publish_ok("p", "1.1.0").await;
    let t = tarball("p", "2.0.0-rc.1", "rc");
    assert_eq!(
        n.publish("p", "2.0.0-rc.1", &t, "next").await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        n.full("p").await["dist-tags"],
        json!({"latest": "1.1.0", "next": "2.0.0-rc.1"})
    );

    // npm unpublish p@1.1.0: PUT the packument without it to -rev/REV, re-read, DELETE the tarball.
    let mut doc = n.for_write("p").await;
    let rev = doc["_rev"].as_str().unwrap().to_owned();
    doc["versions"].as_object_mut().unwrap().remove("1.1.0");
    doc["dist-tags"]["latest"] = json!("1.0.0");
    doc["time"].as_object_mut().unwrap().remove("1.1.0");
    let r = n.put_json(&format!("/npm/js/p/-rev/{rev}"), &doc).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["removed"], json!(["1.1.0"]));
    let after = n.for_write("p").await;
    let new_rev = after["_rev"].as_str().unwrap();
    let r = n
        .send(
            "DELETE",
            &format!("/npm/js/npm/js/p/-/p-1.1.0.tgz/-rev/{new_rev}"),
            Some(&n.w),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        after["dist-tags"],
        json!({"latest": "1.0.0", "next": "2.0.0-rc.1"})
    );
    assert_eq!(
        after["versions"].as_object().unwrap().keys().collect::<Vec<_>>(),
        ["1.0.0", "2.0.0-rc.1"]
    );
    assert_eq!(
        n.get("/npm/js/p/-/p-1.1.0.tgz", &[]).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(n.get("/npm/js/p/-/p-1.0.0.tgz", &[]).await.status, StatusCode::OK);
    // The stale revision no longer works.
    let r = n.put_json(&format!("/npm/js/p/-rev/{rev}"), &doc).await;
    assert_eq!(r.status, StatusCode::CONFLICT);

    // Unpublishing the tagged prerelease drops its tag.
    let mut doc = n.for_write("p").await;
    let rev = doc["_rev"].as_str().unwrap().to_owned();
    doc["versions"].as_object_mut().unwrap().remove("2.0.0-rc.1");
    assert_eq!(
        n.put_json(&format!("/npm/js/p/-rev/{rev}"), &doc).await.status,
        StatusCode::OK
    );
    assert_eq!(n.full("p").await["dist-tags"], json!({"latest": "1.0.0"}));
    // Left: the version 1.0.0 (the stored latest pointed at 1.1.0 and went with it).
    assert_eq!(n.item_count().await, 1);

    // npm unpublish p --force: DELETE /p/-rev/REV.
    let r = n
        .send("DELETE", "/npm/js/p/-rev/1-stale", Some(&n.w), &[], Body::empty())
        .await;
    assert_error(&r, StatusCode::CONFLICT, &["1-stale"]);
    let rev = n.for_write("p").await["_rev"].as_str().unwrap().to_owned();
    let r = n
        .send(
            "DELETE",
            &format!("/npm/js/p/-rev/{rev}"),
            Some(&n.w),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["removed"], json!(["1.0.0"]));
    assert_eq!(
        n.get("/npm/js/p", &[]).await.json(),
        json!({"error": "not found"})
    );
    assert_eq!(
        n.get("/npm/js/p/-/p-1.0.0.tgz", &[]).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(n.item_count().await, 0);
    let r = n
        .send(
            "DELETE",
            &format!("/npm/js/p/-rev/{rev}"),
            Some(&n.w),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // A self-hosted registry lets the name and version be published again.
    n.publish_ok("p", "1.0.0").await;
    assert_eq!(n.full("p").await["dist-tags"], json!({"latest": "1.0.0"}));
}

/// A replicated version is checked against its tarball as a publish is:
/// an item listing one package's tarball under another package's name (or
/// version) is refused even when its `dist.integrity` matches the bytes,
/// and one whose integrity does not match is refused too; the genuine
/// item applies and is served.
#[tokio::test]
async fn replicated_versions_must_match_their_tarball() {
    use bytes::Bytes;
    use ferry_store::{Change, ChangeOp};
    let hub = Npm::new().await;
    let bytes = hub.publish_ok("left-pad", "1.0.0").await;
    let hub_feed = hub.i.ferry.feed(&FeedName::new("js").unwrap()).await.unwrap();
    let item = hub.i.ferry.items(&hub_feed, "pkg/").await.unwrap().remove(0);

    let spoke = Npm::new().await;
    let feed = spoke.i.ferry.feed(&FeedName::new("js").unwrap()).await.unwrap();
    let staged = spoke.i.ferry.stage_bytes(Bytes::from(bytes)).await.unwrap();
    let digest = spoke.i.ferry.commit_blob(staged).await.unwrap();
    let change = |key: &str, meta: Value| Change {
        key: ItemKey::new(key).unwrap(),
        stamp: spoke.i.ferry.clock().stamp(),
        op: ChangeOp::Upsert {
            meta,
            blobs: vec![digest],
            created_at: None,
        },
    };
    // Another package's name, the genuine tarball and integrity.
    let mut other = item.meta.clone();
    other["manifest"]["name"] = json!("right-pad");
    other["manifest"]["_id"] = json!("right-pad@1.0.0");
    let e = spoke
        .i
        .ferry
        .apply(&feed, vec![change("pkg/right-pad/1.0.0", other)])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("package.json describes"), "{e}");
    // Another version.
    let mut later = item.meta.clone();
    later["manifest"]["version"] = json!("2.0.0");
    let e = spoke
        .i
        .ferry
        .apply(&feed, vec![change("pkg/left-pad/2.0.0", later)])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("package.json describes"), "{e}");
    // An integrity the bytes do not have.
    let mut lying = item.meta.clone();
    lying["manifest"]["dist"]["integrity"] = json!(format!("sha512-{}", STANDARD.encode([7u8; 64])));
    assert!(
        spoke
            .i
            .ferry
            .apply(&feed, vec![change(item.key.as_str(), lying)])
            .await
            .is_err()
    );
    assert_eq!(spoke.item_count().await, 0);
    spoke
        .i
        .ferry
        .apply(&feed, vec![change(item.key.as_str(), item.meta.clone())])
        .await
        .unwrap();
    let r = spoke.get("/npm/js/left-pad/-/left-pad-1.0.0.tgz", &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}
