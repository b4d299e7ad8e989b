//! Private feeds are invisible to callers who may not read them, on every
//! route family, and API keys are scoped to feeds by identity (issue 8).
//!
//! The matrix runs the same requests against two instances that differ
//! only in whether the private feeds exist, and asks that every caller
//! without access (no key, a wrong key, keys scoped to other feeds) gets
//! byte-identical answers from both: same status, body and headers.
#![allow(clippy::unwrap_used)]
use crate::common;

use axum::body::Body;
use axum::http::StatusCode;
use common::{ADMIN, Instance, Reply};
use ferry_store::Permission;
use ferry_types::{Digest, FeedType};
use serde_json::{Value, json};

const JSON: (&str, &str) = ("content-type", "application/json");
/// A well-formed key that matches no key.
const WRONG: &str = "ferry_0000000000000000000000000000000000000000000000000000000000000000";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const PUBLIC: [(&str, FeedType); 5] = [
    ("pub-assets", FeedType::Assets),
    ("pub-npm", FeedType::Npm),
    ("pub-pypi", FeedType::Pypi),
    ("pub-oci", FeedType::Oci),
    ("pub-cargo", FeedType::Cargo),
];
const PRIVATE: [(&str, FeedType); 5] = [
    ("f-assets", FeedType::Assets),
    ("f-npm", FeedType::Npm),
    ("f-pypi", FeedType::Pypi),
    ("f-oci", FeedType::Oci),
    ("f-cargo", FeedType::Cargo),
];

fn digest(data: &[u8]) -> String {
    Digest::of(data).to_string()
}

/// One instance of the pair, with the keys the matrix uses.
struct Side {
    i: Instance,
    /// Callers who may not read the private feeds.
    outsiders: Vec<(&'static str, Option<String>)>,
    /// An unscoped read key: may read every feed, write none.
    reader: String,
}

impl Side {
    async fn new(with_private: bool) -> Self {
        let i = Instance::new().await;
        for (name, ty) in PUBLIC {
            i.feed(name, ty, false).await;
        }
        push_image(&i, "pub-oci", "app").await;
        if with_private {
            for (name, ty) in PRIVATE {
                i.feed(name, ty, true).await;
            }
            let r = i
                .send("PUT", "/assets/f-assets/file.txt", Some(ADMIN), &[], "secret")
                .await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
            push_image(&i, "f-oci", "app").await;
        }
        let public: Vec<&str> = PUBLIC.iter().map(|(n, _)| *n).collect();
        let read_elsewhere = i.key("elsewhere-read", Permission::Read, Some(&public)).await;
        let write_elsewhere = i.key("elsewhere-write", Permission::Write, Some(&public)).await;
        let admin_elsewhere = i.key("elsewhere-admin", Permission::Admin, Some(&public)).await;
        let reader = i.key("reader", Permission::Read, None).await;
        Self {
            i,
            outsiders: vec![
                ("no key", None),
                ("a wrong key", Some(WRONG.to_string())),
                ("a read key for other feeds", Some(read_elsewhere)),
                ("a write key for other feeds", Some(write_elsewhere)),
                ("an admin key for other feeds", Some(admin_elsewhere)),
            ],
            reader,
        }
    }
}

async fn push_image(i: &Instance, feed: &str, repo: &str) {
    let config = json!({ "architecture": "amd64", "os": "linux", "feed": feed })
        .to_string()
        .into_bytes();
    let layer = format!("layer of {feed}").into_bytes();
    for blob in [&config, &layer] {
        let r = i
            .send(
                "POST",
                &format!("/v2/{feed}/{repo}/blobs/uploads/?digest={}", digest(blob)),
                Some(ADMIN),
                &[("content-type", "application/octet-stream")],
                blob.clone(),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    }
    let desc = |t: &str, d: &[u8]| json!({ "mediaType": t, "digest": digest(d), "size": d.len() });
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": desc("application/vnd.oci.image.config.v1+json", &config),
        "layers": [desc("application/vnd.oci.image.layer.v1.tar+gzip", &layer)],
    }))
    .unwrap();
    let r = i
        .send(
            "PUT",
            &format!("/v2/{feed}/{repo}/manifests/v1"),
            Some(ADMIN),
            &[("content-type", MANIFEST)],
            manifest,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
}

/// One request of the matrix.
struct Req {
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    /// Answered alike for every feed and caller, without looking the feed up.
    feedless: bool,
}

impl Req {
    fn new(method: &'static str, path: String) -> Self {
        Self {
            method,
            path,
            headers: Vec::new(),
            body: Vec::new(),
            feedless: false,
        }
    }
    fn feedless(mut self) -> Self {
        self.feedless = true;
        self
    }
    fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_string()));
        self
    }
    fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
    fn is_read(&self) -> bool {
        matches!(self.method, "GET" | "HEAD")
    }
    async fn send(&self, i: &Instance, key: Option<&str>) -> Reply {
        let headers: Vec<(&str, &str)> = self.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        i.send(
            self.method,
            &self.path,
            key,
            &headers,
            Body::from(self.body.clone()),
        )
        .await
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Family {
    Assets,
    Npm,
    Pypi,
    Oci,
    Cargo,
    Management,
}

/// Every kind of request a family takes, on feed `f`.
fn requests(family: Family, f: &str) -> Vec<Req> {
    let zero = format!("sha256:{}", "0".repeat(64));
    match family {
        Family::Assets => vec![
            Req::new("GET", format!("/assets/{f}/file.txt")),
            Req::new("HEAD", format!("/assets/{f}/file.txt")),
            Req::new("GET", format!("/assets/{f}/missing.txt")),
            Req::new("GET", format!("/assets/{f}")),
            Req::new("GET", format!("/assets/{f}/")),
            Req::new("GET", format!("/assets/{f}/dir/")).header("accept", "application/json"),
            Req::new("PUT", format!("/assets/{f}/new.txt")).body("x"),
            Req::new("DELETE", format!("/assets/{f}/file.txt")),
        ],
        Family::Npm => vec![
            Req::new("GET", format!("/npm/{f}/")),
            Req::new("GET", format!("/npm/{f}/pkg")),
            Req::new("GET", format!("/npm/{f}/@s%2fpkg")),
            Req::new("GET", format!("/npm/{f}/pkg/1.0.0")),
            Req::new("GET", format!("/npm/{f}/pkg/-/pkg-1.0.0.tgz")),
            Req::new("GET", format!("/npm/{f}/-/whoami")),
            Req::new("GET", format!("/npm/{f}/-/ping")),
            Req::new("GET", format!("/npm/{f}/-/package/pkg/dist-tags")),
            Req::new("PUT", format!("/npm/{f}/pkg"))
                .header(JSON.0, JSON.1)
                .body("{}"),
            Req::new("PUT", format!("/npm/{f}/-/package/pkg/dist-tags/latest"))
                .header(JSON.0, JSON.1)
                .body("\"1.0.0\""),
            Req::new("DELETE", format!("/npm/{f}/pkg/-rev/1-abc")),
            Req::new("POST", format!("/npm/{f}/-/v1/login")).feedless(),
        ],
        Family::Pypi => {
            let form =
                "--xyz\r\ncontent-disposition: form-data; name=\":action\"\r\n\r\nfile_upload\r\n--xyz--\r\n";
            vec![
                Req::new("GET", format!("/pypi/{f}")),
                Req::new("GET", format!("/pypi/{f}/simple")),
                Req::new("GET", format!("/pypi/{f}/simple/")),
                Req::new("GET", format!("/pypi/{f}/simple/"))
                    .header("accept", "application/vnd.pypi.simple.v1+json"),
                Req::new("GET", format!("/pypi/{f}/simple/Pkg_Name")),
                Req::new("GET", format!("/pypi/{f}/simple/pkg/")),
                Req::new("GET", format!("/pypi/{f}/files/pkg/pkg-1.0.tar.gz")),
                Req::new("HEAD", format!("/pypi/{f}/files/pkg/pkg-1.0.tar.gz")),
                Req::new(
                    "GET",
                    format!("/pypi/{f}/files/pkg/pkg-1.0-py3-none-any.whl.metadata"),
                ),
                Req::new("POST", format!("/pypi/{f}/"))
                    .header("content-type", "multipart/form-data; boundary=xyz")
                    .body(form),
                Req::new("POST", format!("/pypi/{f}"))
                    .header("content-type", "multipart/form-data; boundary=xyz")
                    .body(form),
                Req::new("POST", format!("/pypi/{f}/yank/pkg/1.0")),
                Req::new("POST", format!("/pypi/{f}/unyank/pkg/1.0")),
                Req::new("DELETE", format!("/pypi/{f}/files/pkg/pkg-1.0.tar.gz")),
                Req::new("DELETE", format!("/pypi/{f}/project/pkg/1.0")),
            ]
        }
        Family::Oci => vec![
            Req::new("GET", format!("/v2/{f}/app/manifests/v1")),
            Req::new("HEAD", format!("/v2/{f}/app/manifests/v1")),
            Req::new("GET", format!("/v2/{f}/app/manifests/{zero}")),
            Req::new("GET", format!("/v2/{f}/app/tags/list")),
            Req::new("GET", format!("/v2/{f}/app/tags/list?n=1")),
            Req::new("GET", format!("/v2/{f}/nothing/tags/list")),
            Req::new("GET", format!("/v2/{f}/app/referrers/{zero}")),
            Req::new("GET", format!("/v2/{f}/app/blobs/{zero}")),
            Req::new("HEAD", format!("/v2/{f}/app/blobs/{zero}")),
            Req::new("GET", format!("/v2/{f}/app/blobs/uploads/abc")),
            Req::new("GET", format!("/v2/{f}/app")),
            Req::new("POST", format!("/v2/{f}/app/blobs/uploads/")),
            Req::new(
                "POST",
                format!("/v2/{f}/app/blobs/uploads/?mount={zero}&from=pub-oci/app"),
            ),
            Req::new("PATCH", format!("/v2/{f}/app/blobs/uploads/abc")).body("x"),
            Req::new("PUT", format!("/v2/{f}/app/blobs/uploads/abc?digest={zero}")),
            Req::new("PUT", format!("/v2/{f}/app/manifests/v2"))
                .header("content-type", MANIFEST)
                .body("{}"),
            Req::new("DELETE", format!("/v2/{f}/app/manifests/v1")),
            Req::new("DELETE", format!("/v2/{f}/app/blobs/{zero}")),
            Req::new("DELETE", format!("/v2/{f}/app/blobs/uploads/abc")),
        ],
        Family::Cargo => vec![
            Req::new("GET", format!("/cargo/{f}/config.json")),
            Req::new("GET", format!("/cargo/{f}/3/p/pkg")),
            Req::new("GET", format!("/cargo/{f}/1/x")),
            Req::new("GET", format!("/cargo/{f}/api/v1/crates?q=pkg")),
            Req::new("GET", format!("/cargo/{f}/api/v1/crates/pkg/owners")),
            Req::new("GET", format!("/cargo/{f}/api/v1/crates/pkg/1.0.0/download")),
            Req::new("HEAD", format!("/cargo/{f}/api/v1/crates/pkg/1.0.0/download")),
            Req::new("PUT", format!("/cargo/{f}/api/v1/crates/new")).body(vec![0u8; 8]),
            Req::new("DELETE", format!("/cargo/{f}/api/v1/crates/pkg/1.0.0/yank")),
            Req::new("PUT", format!("/cargo/{f}/api/v1/crates/pkg/1.0.0/unyank")),
            Req::new("DELETE", format!("/cargo/{f}/api/v1/crates/pkg/1.0.0")),
        ],
        Family::Management => vec![
            Req::new("GET", format!("/api/v1/feeds/{f}")),
            Req::new("DELETE", format!("/api/v1/feeds/{f}")),
            Req::new("GET", format!("/api/v1/feeds/{f}/bundle?since=0")),
            Req::new("POST", format!("/api/v1/feeds/{f}/bundle")),
            Req::new("POST", format!("/api/v1/feeds/{f}/oci/prune-untagged")),
        ],
    }
}

/// The feeds the matrix asks each family about: the private feed of the
/// family's own type, and one of another type (whose type must not be
/// told either).
fn targets(family: Family) -> Vec<&'static str> {
    match family {
        Family::Assets => vec!["f-assets", "f-npm"],
        Family::Npm => vec!["f-npm", "f-pypi"],
        Family::Pypi => vec!["f-pypi", "f-oci"],
        Family::Oci => vec!["f-oci", "f-assets"],
        Family::Cargo => vec!["f-cargo", "f-npm"],
        Family::Management => vec!["f-assets", "f-oci"],
    }
}

/// Headers whose value may differ between two identical requests.
const VOLATILE: [&str; 1] = ["date"];

fn same_reply(a: &Reply, b: &Reply) -> Result<(), String> {
    if a.status != b.status {
        return Err(format!("status {} vs {}", a.status, b.status));
    }
    if a.body != b.body {
        return Err(format!("body {:?} vs {:?}", a.text(), b.text()));
    }
    let headers = |r: &Reply| {
        let mut h: Vec<(String, Vec<u8>)> = r
            .headers
            .iter()
            .filter(|(n, _)| !VOLATILE.contains(&n.as_str()))
            .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
            .collect();
        h.sort();
        h
    };
    if headers(a) != headers(b) {
        return Err(format!("headers {:?} vs {:?}", a.headers, b.headers));
    }
    Ok(())
}

#[tokio::test]
async fn private_feeds_answer_outsiders_exactly_as_missing_feeds() {
    let with = Side::new(true).await;
    let without = Side::new(false).await;
    let mut failures = Vec::new();
    for family in [
        Family::Assets,
        Family::Npm,
        Family::Pypi,
        Family::Oci,
        Family::Cargo,
        Family::Management,
    ] {
        for feed in targets(family) {
            for req in requests(family, feed) {
                for ((who, key), (_, other_key)) in with.outsiders.iter().zip(&without.outsiders) {
                    let private = req.send(&with.i, key.as_deref()).await;
                    let missing = req.send(&without.i, other_key.as_deref()).await;
                    let what = format!("{} {} with {who}", req.method, req.path);
                    if let Err(diff) = same_reply(&private, &missing) {
                        failures.push(format!("{what}: private and missing differ: {diff}"));
                        continue;
                    }
                    if req.feedless {
                        continue;
                    }
                    // What they get: a challenge without a key (so clients
                    // send theirs), "not found" with a key for other feeds.
                    let want = match (family, key) {
                        (_, None) => StatusCode::UNAUTHORIZED,
                        (_, Some(k)) if k == WRONG => StatusCode::UNAUTHORIZED,
                        (Family::Management, Some(_)) => StatusCode::FORBIDDEN,
                        (_, Some(_)) => StatusCode::NOT_FOUND,
                    };
                    if private.status != want {
                        failures.push(format!(
                            "{what}: {} (want {want}): {}",
                            private.status,
                            private.text()
                        ));
                    }
                    if want == StatusCode::UNAUTHORIZED && private.header("www-authenticate").is_none() {
                        failures.push(format!("{what}: a 401 without WWW-Authenticate"));
                    }
                    if private.text().contains(" feed, not ") {
                        failures.push(format!("{what}: tells the feed's type: {}", private.text()));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn a_key_that_may_read_a_private_feed_sees_it() {
    let with = Side::new(true).await;
    let without = Side::new(false).await;
    let key = Some(with.reader.as_str());
    let r = with
        .i
        .send("GET", "/assets/f-assets/file.txt", key, &[], Body::empty())
        .await;
    assert_eq!((r.status, r.body.as_slice()), (StatusCode::OK, &b"secret"[..]));
    let r = with
        .i
        .send("GET", "/v2/f-oci/app/tags/list", key, &[], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    for family in [
        Family::Assets,
        Family::Npm,
        Family::Pypi,
        Family::Oci,
        Family::Cargo,
    ] {
        let [own, other] = targets(family)[..] else {
            unreachable!()
        };
        for req in requests(family, own).into_iter().filter(|r| !r.feedless) {
            let r = req.send(&with.i, key).await;
            let what = format!("{} {}", req.method, req.path);
            assert_ne!(r.status, StatusCode::UNAUTHORIZED, "{what}: {}", r.text());
            assert!(
                !r.text().contains(&format!("feed {own} not found")),
                "{what}: {}",
                r.text()
            );
            if !req.is_read() {
                // The feed is visible; the key lacks the permission.
                assert_eq!(r.status, StatusCode::FORBIDDEN, "{what}: {}", r.text());
            }
        }
        // Whoever may read a feed is told its type under another protocol;
        // a missing feed is just missing.
        let req = &requests(family, other)[0];
        let r = req.send(&with.i, key).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert!(r.text().contains(" feed, not "), "{}", r.text());
        let r = req.send(&without.i, Some(without.reader.as_str())).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert!(
            r.text().contains(&format!("feed {other} not found")),
            "{}",
            r.text()
        );
    }
    // Public feeds stay readable by everyone, and tell their type.
    let r = with.i.get("/assets/pub-npm/x").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.text().contains("is a npm feed, not assets"), "{}", r.text());
    assert_eq!(
        with.i.get("/v2/pub-oci/app/tags/list").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_oci_catalog_lists_only_what_the_caller_may_read() {
    let with = Side::new(true).await;
    let without = Side::new(false).await;
    for ((who, key), (_, other_key)) in with.outsiders.iter().zip(&without.outsiders) {
        for path in [
            "/v2/_catalog",
            "/v2/_catalog?n=1",
            "/v2/_catalog?n=1&last=f-oci/app",
        ] {
            let a = with.i.send("GET", path, key.as_deref(), &[], Body::empty()).await;
            let b = without
                .i
                .send("GET", path, other_key.as_deref(), &[], Body::empty())
                .await;
            if let Err(diff) = same_reply(&a, &b) {
                panic!("{path} with {who}: {diff}");
            }
            assert!(!a.text().contains("f-oci"), "{path} with {who}: {}", a.text());
        }
    }
    let r = with
        .i
        .send("GET", "/v2/_catalog", Some(&with.reader), &[], Body::empty())
        .await;
    assert_eq!(
        r.json()["repositories"],
        json!(["f-oci/app", "pub-oci/app"]),
        "{}",
        r.text()
    );
}

#[tokio::test]
async fn metrics_need_a_key_for_every_feed_unless_public() {
    let s = Side::new(true).await;
    s.i.get("/assets/f-assets/file.txt").await;
    let r = s.i.get("/metrics").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    assert!(r.header("www-authenticate").is_some());
    assert!(!r.text().contains("f-assets"), "{}", r.text());
    let wrong = s.i.send("GET", "/metrics", Some(WRONG), &[], Body::empty()).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let (_, scoped) = &s.outsiders[2];
    let r =
        s.i.send("GET", "/metrics", scoped.as_deref(), &[], Body::empty())
            .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    for key in [s.reader.as_str(), ADMIN] {
        let r = s.i.send("GET", "/metrics", Some(key), &[], Body::empty()).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert!(r.text().contains("ferry_http_requests_total"), "{}", r.text());
    }

    let open = Instance::with_config(ferry_core::Config {
        metrics_public: true,
        ..Default::default()
    })
    .await;
    open.get("/health").await;
    let r = open.get("/metrics").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(r.text().contains("ferry_http_requests_total"), "{}", r.text());
}

async fn create_key(i: &Instance, name: &str, permission: &str, feeds: Option<&[&str]>) -> Reply {
    let body = json!({ "name": name, "permission": permission, "feeds": feeds });
    i.send("POST", "/api/v1/keys", Some(ADMIN), &[JSON], body.to_string())
        .await
}

async fn listed_feeds(i: &Instance, key: &str) -> Value {
    let keys = i
        .send("GET", "/api/v1/keys", Some(ADMIN), &[], Body::empty())
        .await
        .json();
    keys.as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == key)
        .unwrap_or_else(|| panic!("no key {key} in {keys}"))["feeds"]
        .clone()
}

#[tokio::test]
async fn a_key_cannot_be_scoped_to_a_feed_that_does_not_exist() {
    let i = Instance::new().await;
    i.feed("real", FeedType::Assets, true).await;
    for feeds in [&["nope"][..], &["real", "nope"][..]] {
        let r = create_key(&i, "early", "read", Some(feeds)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
        let error = r.json()["error"].as_str().unwrap().to_string();
        assert!(error.contains("feed nope does not exist"), "{error}");
    }
    let r = create_key(&i, "early", "read", Some(&[])).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    // Nothing was created; the name is free.
    let r = create_key(&i, "early", "read", Some(&["real"])).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(r.json()["feeds"], json!(["real"]));
    // A feed created later under that name is not in any earlier scope.
    i.feed("nope", FeedType::Assets, true).await;
    let secret = r.json()["key"].as_str().unwrap().to_string();
    let r = i
        .send("GET", "/assets/nope/x", Some(&secret), &[], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
}

#[tokio::test]
async fn a_key_scoped_to_a_deleted_feed_cannot_read_its_namesake() {
    let i = Instance::new().await;
    i.feed("team", FeedType::Assets, true).await;
    i.feed("other", FeedType::Assets, false).await;
    let r = i
        .send("PUT", "/assets/team/old.txt", Some(ADMIN), &[], "old")
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = create_key(&i, "team-ci", "write", Some(&["team"])).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let key = r.json()["key"].as_str().unwrap().to_string();
    let r = create_key(&i, "both", "read", Some(&["team", "other"])).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(
        i.send("GET", "/assets/team/old.txt", Some(&key), &[], Body::empty())
            .await
            .body,
        b"old"
    );
    assert_eq!(listed_feeds(&i, "team-ci").await, json!(["team"]));

    // Delete the feed.
    let r = i
        .send("DELETE", "/api/v1/feeds/team", Some(ADMIN), &[], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let gone = i
        .send("GET", "/assets/team/old.txt", Some(&key), &[], Body::empty())
        .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);

    // Another private feed under the same name: not the key's feed.
    i.feed("team", FeedType::Assets, true).await;
    let r = i
        .send("PUT", "/assets/team/new.txt", Some(ADMIN), &[], "new")
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    for (method, path, body) in [
        ("GET", "/assets/team/new.txt", ""),
        ("GET", "/assets/team/", ""),
        ("PUT", "/assets/team/mine.txt", "mine"),
        ("DELETE", "/assets/team/new.txt", ""),
    ] {
        let r = i.send(method, path, Some(&key), &[], body).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{method} {path}: {}", r.text());
        assert_eq!(
            r.text(),
            gone.text(),
            "{method} {path}: as if the feed did not exist"
        );
    }
    // Listing keys names their feeds: the deleted one left every scope
    // (the keys stay; one is now scoped to nothing).
    assert_eq!(listed_feeds(&i, "both").await, json!(["other"]));
    assert_eq!(listed_feeds(&i, "team-ci").await, json!([]));
    assert_eq!(
        i.send("GET", "/assets/team/new.txt", Some(ADMIN), &[], Body::empty())
            .await
            .body,
        b"new"
    );
}
