//! What Ferry serves cannot run in its origin (issue 8): the headers every
//! response carries, the content rule for user-chosen types, escaping in
//! the pages Ferry renders; and a client whose upload breaks off is a
//! client event in the log (WARN with feed and address), not a server
//! fault.
#![allow(clippy::unwrap_used)]
use crate::common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::{ADMIN, CLIENT, Instance, Reply};
use ferry_store::Permission;
use ferry_testkit::pypi as dist;
use ferry_types::{Digest, FeedType};
use serde_json::json;

const SANDBOX: &str = "default-src 'none'; sandbox";
const SCRIPT: &str = "<script>alert(document.cookie)</script>";
/// Breaks out of an attribute into markup that runs script; no `/`, so it
/// fits in one path segment.
const HOSTILE: &str = "\"><svg onload=alert(document.cookie)>'&";
/// [`HOSTILE`] escaped for HTML.
const ESCAPED: &str = "&quot;&gt;&lt;svg onload=alert(document.cookie)&gt;&#x27;&amp;";

#[track_caller]
fn assert_protected(r: &Reply, what: &str) {
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"), "{what}");
    assert_eq!(r.header("content-security-policy"), Some(SANDBOX), "{what}");
}

async fn put(i: &Instance, path: &str, content_type: &str, body: &str) {
    let r = i
        .send(
            "PUT",
            path,
            Some(ADMIN),
            &[("content-type", content_type)],
            body.to_owned(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{path}: {}", r.text());
}

#[tokio::test]
async fn uploaded_active_content_is_an_attachment_that_cannot_run() {
    let i = Instance::new().await;
    i.feed("files", FeedType::Assets, false).await;
    let page = format!("<html><body>{SCRIPT}</body></html>");
    // (path, stored type, served type, Content-Disposition)
    let cases: &[(&str, &str, &str, Option<&str>)] = &[
        (
            "x/page.html",
            "text/html",
            "application/octet-stream",
            Some("attachment; filename=\"page.html\""),
        ),
        (
            "x/upper.htm",
            "Text/HTML; charset=utf-8",
            "application/octet-stream",
            Some("attachment; filename=\"upper.htm\""),
        ),
        (
            "x/img.svg",
            "image/svg+xml",
            "application/octet-stream",
            Some("attachment; filename=\"img.svg\""),
        ),
        (
            "x/app.js",
            "application/javascript",
            "application/octet-stream",
            Some("attachment; filename=\"app.js\""),
        ),
        (
            "x/feed.xml",
            "text/xml",
            "application/octet-stream",
            Some("attachment; filename=\"feed.xml\""),
        ),
        (
            "x/page.xhtml",
            "application/xhtml+xml",
            "application/octet-stream",
            Some("attachment; filename=\"page.xhtml\""),
        ),
        (
            "x/doc.pdf",
            "application/pdf",
            "application/pdf",
            Some("attachment; filename=\"doc.pdf\""),
        ),
        (
            "x/r\u{e9}sum\u{e9}.html",
            "text/html",
            "application/octet-stream",
            Some("attachment; filename=\"r_sum_.html\"; filename*=UTF-8''r%C3%A9sum%C3%A9.html"),
        ),
        ("x/notes.txt", "text/plain", "text/plain", None),
        ("x/pic.png", "image/png", "image/png", None),
        ("x/data.json", "application/json", "application/json", None),
        (
            "x/blob.bin",
            "application/octet-stream",
            "application/octet-stream",
            None,
        ),
    ];
    for (path, stored, served, disposition) in cases {
        let url = format!(
            "/assets/files/{}",
            percent_encoding::utf8_percent_encode(path, percent_encoding::NON_ALPHANUMERIC)
                .to_string()
                .replace("%2F", "/")
                .replace("%2E", ".")
        );
        put(&i, &url, stored, &page).await;
        for (method, headers) in [
            ("GET", &[][..]),
            ("HEAD", &[][..]),
            ("GET", &[("range", "bytes=0-5")][..]),
        ] {
            let r = i.send(method, &url, None, headers, Body::empty()).await;
            let what = format!("{method} {path} ({stored}) {headers:?}");
            assert!(r.status.is_success(), "{what}: {}", r.status);
            assert_protected(&r, &what);
            assert_eq!(r.header("content-type"), Some(*served), "{what}");
            assert_eq!(r.header("content-disposition"), *disposition, "{what}");
        }
        // The content itself is untouched.
        assert_eq!(i.get(&url).await.text(), page, "{path}");
    }
    let r = i
        .send(
            "GET",
            "/assets/files/x/",
            None,
            &[("accept", "application/json")],
            Body::empty(),
        )
        .await;
    assert_protected(&r, "JSON listing");
}

// ---------------------------------------------------------------- npm, PyPI, OCI

/// A gzipped tarball of `package/package.json` and `package/index.js`.
fn npm_tarball(name: &str, version: &str) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let package = json!({ "name": name, "version": version }).to_string();
    for (path, data) in [
        ("package/package.json", package.as_bytes()),
        ("package/index.js", b"module.exports = 1;\n".as_slice()),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_path(path).unwrap();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append(&h, data).unwrap();
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar.into_inner().unwrap()).unwrap();
    gz.finish().unwrap()
}

fn npm_publish_body(name: &str, version: &str, tgz: &[u8], description: &str) -> serde_json::Value {
    use sha1::Digest as _;
    let shasum: String = sha1::Sha1::digest(tgz)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let integrity = format!("sha512-{}", STANDARD.encode(sha2::Sha512::digest(tgz)));
    json!({
        "_id": name,
        "name": name,
        "description": description,
        "dist-tags": { "latest": version },
        "versions": { version: {
            "name": name,
            "version": version,
            "description": description,
            "dist": {
                "integrity": integrity,
                "shasum": shasum,
                "tarball": format!("http://elsewhere/{name}/-/{name}-{version}.tgz"),
            },
        }},
        "_attachments": { format!("{name}-{version}.tgz"): {
            "content_type": "application/octet-stream",
            "data": STANDARD.encode(tgz),
            "length": tgz.len(),
        }},
    })
}

const BOUNDARY: &str = "----served-content-boundary";

/// twine's upload form for `file`, with `fields` added.
fn pypi_form(name: &str, version: &str, (filename, data): &(String, Vec<u8>)) -> Vec<u8> {
    let mut b = Vec::new();
    for (k, v) in [
        ("name", name),
        ("version", version),
        ("filetype", "bdist_wheel"),
        ("pyversion", "py3"),
        ("metadata_version", "2.1"),
        (":action", "file_upload"),
        ("protocol_version", "1"),
        ("sha256_digest", &Digest::of(data).hex()),
    ] {
        b.extend_from_slice(
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n").as_bytes(),
        );
    }
    b.extend_from_slice(
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"content\"; filename=\"{filename}\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    b.extend_from_slice(data);
    b.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    b
}

fn oci_desc(media_type: &str, data: &[u8]) -> serde_json::Value {
    json!({ "mediaType": media_type, "digest": Digest::of(data).to_string(), "size": data.len() })
}

/// (url, request headers, status, content type)
type Get<'a> = (&'a str, &'a [(&'a str, &'a str)], StatusCode, Option<&'a str>);

#[tokio::test]
async fn every_response_carries_nosniff_and_the_sandbox_policy() {
    let i = Instance::new().await;
    i.feed("files", FeedType::Assets, false).await;
    i.feed("js", FeedType::Npm, false).await;
    i.feed("py", FeedType::Pypi, false).await;
    i.feed("img", FeedType::Oci, false).await;
    put(&i, "/assets/files/d/a.txt", "text/plain", "a").await;

    // npm: packument (user metadata) and tarball.
    let tgz = npm_tarball("pkg", "1.0.0");
    let body = npm_publish_body("pkg", "1.0.0", &tgz, SCRIPT);
    let host = [("host", "registry.test"), ("content-type", "application/json")];
    let r = i
        .send("PUT", "/npm/js/pkg", Some(ADMIN), &host, body.to_string())
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_protected(&r, "npm publish answer");
    // The packument's validators: If-None-Match compares weakly (RFC 9110
    // §13.1.2), so the abbreviated packument's weak tag matches in any
    // spelling and anywhere in a list.
    let abbreviated = [
        ("host", "registry.test"),
        ("accept", "application/vnd.npm.install-v1+json"),
    ];
    let r = i
        .send("GET", "/npm/js/pkg", None, &abbreviated, Body::empty())
        .await;
    let tag = r.header("etag").unwrap().to_owned();
    assert!(tag.starts_with("W/\""), "{tag}");
    for validator in [
        tag.clone(),
        tag[2..].to_owned(),
        format!("\"other\", {}", &tag[2..]),
    ] {
        let h = [
            abbreviated[0],
            abbreviated[1],
            ("if-none-match", validator.as_str()),
        ];
        let r = i.send("GET", "/npm/js/pkg", None, &h, Body::empty()).await;
        assert_eq!(r.status, StatusCode::NOT_MODIFIED, "{validator}");
        assert_protected(&r, "304");
    }

    // PyPI: upload, pages, file, core metadata.
    let whl = dist::wheel("pkg", "1.0", "pkg", None);
    let ct = format!("multipart/form-data; boundary={BOUNDARY}");
    let r = i
        .send(
            "POST",
            "/pypi/py/",
            Some(ADMIN),
            &[("content-type", &ct)],
            pypi_form("pkg", "1.0", &whl),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    // OCI: config, layer, manifest.
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let layer = b"layer".to_vec();
    for blob in [&config, &layer] {
        let d = Digest::of(blob).to_string();
        let r = i
            .send(
                "POST",
                &format!("/v2/img/app/blobs/uploads/?digest={d}"),
                Some(ADMIN),
                &[],
                blob.clone(),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    }
    const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": oci_desc("application/vnd.oci.image.config.v1+json", &config),
        "layers": [oci_desc("application/vnd.oci.image.layer.v1.tar+gzip", &layer)],
    }))
    .unwrap();
    let r = i
        .send(
            "PUT",
            "/v2/img/app/manifests/v1",
            Some(ADMIN),
            &[("content-type", MANIFEST)],
            manifest.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());

    let layer_url = format!("/v2/img/app/blobs/{}", Digest::of(&layer));
    let gets: &[Get<'_>] = &[
        ("/assets/files/d/a.txt", &[], StatusCode::OK, Some("text/plain")),
        (
            "/assets/files/",
            &[],
            StatusCode::OK,
            Some("text/html; charset=utf-8"),
        ),
        (
            "/assets/files/d/",
            &[],
            StatusCode::OK,
            Some("text/html; charset=utf-8"),
        ),
        ("/assets/files/nothing", &[], StatusCode::NOT_FOUND, None),
        ("/npm/js/pkg", &[("host", "registry.test")], StatusCode::OK, None),
        (
            "/npm/js/pkg/-/pkg-1.0.0.tgz",
            &[],
            StatusCode::OK,
            Some("application/octet-stream"),
        ),
        (
            "/pypi/py/simple/",
            &[],
            StatusCode::OK,
            Some("text/html; charset=utf-8"),
        ),
        (
            "/pypi/py/simple/pkg/",
            &[],
            StatusCode::OK,
            Some("text/html; charset=utf-8"),
        ),
        (
            "/pypi/py/simple/pkg/",
            &[("accept", "application/vnd.pypi.simple.v1+json")],
            StatusCode::OK,
            None,
        ),
        (
            &format!("/pypi/py/files/pkg/{}", whl.0),
            &[],
            StatusCode::OK,
            Some("application/octet-stream"),
        ),
        (
            &format!("/pypi/py/files/pkg/{}.metadata", whl.0),
            &[],
            StatusCode::OK,
            Some("text/plain; charset=utf-8"),
        ),
        (
            "/v2/img/app/manifests/v1",
            &[("authorization", "Bearer test-admin-key")],
            StatusCode::OK,
            Some(MANIFEST),
        ),
        (
            &layer_url,
            &[("authorization", "Bearer test-admin-key")],
            StatusCode::OK,
            Some("application/octet-stream"),
        ),
        ("/v2/", &[], StatusCode::UNAUTHORIZED, None),
        ("/health", &[], StatusCode::OK, None),
        ("/api/v1/feeds", &[], StatusCode::UNAUTHORIZED, None),
        ("/no/such/route", &[], StatusCode::NOT_FOUND, None),
    ];
    for (url, headers, status, content_type) in gets {
        let r = i.send("GET", url, None, headers, Body::empty()).await;
        assert_eq!(r.status, *status, "{url}: {}", r.text());
        assert_protected(&r, url);
        if let Some(ct) = content_type {
            assert_eq!(r.header("content-type"), Some(*ct), "{url}");
        }
        // Nothing a package client fetches is turned into an attachment.
        assert_eq!(r.header("content-disposition"), None, "{url}");
    }
}

#[tokio::test]
async fn rendered_pages_escape_hostile_names() {
    let i = Instance::new().await;
    i.feed("files", FeedType::Assets, false).await;
    i.feed("py", FeedType::Pypi, false).await;
    let hostile = HOSTILE;
    // Asset names may hold anything but controls, `\` and empty segments.
    for path in [
        format!("{hostile}/f.txt"),
        format!("d/{hostile}.txt"),
        "d/javascript:alert(1)".to_owned(),
    ] {
        let url = format!(
            "/assets/files/{}",
            percent_encoding::utf8_percent_encode(&path, percent_encoding::NON_ALPHANUMERIC)
                .to_string()
                .replace("%2F", "/")
        );
        put(&i, &url, "text/plain", "x").await;
    }
    for dir in ["/assets/files/", "/assets/files/d/"] {
        let html = i.get(dir).await.text();
        assert!(!html.contains("<svg"), "{dir}: {html}");
        assert!(!html.contains("\"><"), "{dir}: {html}");
        assert!(!html.contains("'&"), "{dir}: {html}");
        assert!(!html.contains("href=\"javascript:"), "{dir}: {html}");
        for line in html.lines().filter(|l| l.contains("href=")) {
            assert!(
                line.contains("href=\"./") || line.contains("href=\"../\""),
                "{line}"
            );
        }
    }
    let html = i.get("/assets/files/d/").await.text();
    assert!(html.contains(&format!(">{ESCAPED}.txt</a>")), "{html}");
    let html = i.get("/assets/files/").await.text();
    assert!(html.contains(&format!(">{ESCAPED}/</a>")), "{html}");

    // PyPI: Requires-Python from the wheel's metadata and a yank reason are
    // free text; project names, versions and file names are validated.
    let whl = dist::wheel("pkg", "1.0", "pkg", Some(hostile));
    let ct = format!("multipart/form-data; boundary={BOUNDARY}");
    let r = i
        .send(
            "POST",
            "/pypi/py/",
            Some(ADMIN),
            &[("content-type", &ct)],
            pypi_form("pkg", "1.0", &whl),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = i
        .send(
            "POST",
            "/pypi/py/yank/pkg/1.0",
            Some(ADMIN),
            &[("content-type", "application/json")],
            json!({ "reason": hostile }).to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    for page in ["/pypi/py/simple/", "/pypi/py/simple/pkg/"] {
        let r = i.get(page).await;
        assert_protected(&r, page);
        let html = r.text();
        assert!(!html.contains("<svg"), "{page}: {html}");
        assert!(!html.contains("\"><"), "{page}: {html}");
    }
    let html = i.get("/pypi/py/simple/pkg/").await.text();
    assert!(
        html.contains(&format!("data-requires-python=\"{ESCAPED}\"")),
        "{html}"
    );
    assert!(html.contains(&format!("data-yanked=\"{ESCAPED}\"")), "{html}");
    // Names the validators refuse never reach a page.
    for (name, version) in [(hostile, "1.0"), ("pkg", hostile)] {
        let whl = (format!("pkg-{}-py3-none-any.whl", "2.0"), whl.1.clone());
        let r = i
            .send(
                "POST",
                "/pypi/py/",
                Some(ADMIN),
                &[("content-type", &ct)],
                pypi_form(name, version, &whl),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{name} {version}: {}",
            r.text()
        );
    }
}

// ---------------------------------------------------------------- broken uploads

/// The events logged while it is the thread's default subscriber, as
/// `LEVEL field=value ...` lines.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<String>>>);

struct Line<'a>(&'a mut String);

impl tracing::field::Visit for Line<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={value:?}", field.name()));
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut line = event.metadata().level().to_string();
        event.record(&mut Line(&mut line));
        self.0.lock().unwrap().push(line);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

impl Capture {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// A body that delivers `prefix`, then fails as a dropped connection does.
fn broken_body(prefix: Vec<u8>) -> Body {
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = vec![
        Ok(prefix.into()),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset by peer",
        )),
    ];
    Body::from_stream(futures::stream::iter(chunks))
}

/// (feed, method, url, headers, what arrives before the break)
type BrokenUpload<'a> = (&'a str, &'a str, String, Vec<(&'a str, &'a str)>, Vec<u8>);

#[tokio::test]
async fn a_client_that_breaks_off_its_upload_is_a_client_event_on_every_route() {
    let log = Capture::default();
    let _default = tracing::subscriber::set_default(log.clone());
    let i = Instance::new().await;
    i.feed("files", FeedType::Assets, false).await;
    i.feed("js", FeedType::Npm, false).await;
    i.feed("py", FeedType::Pypi, false).await;
    i.feed("img", FeedType::Oci, false).await;
    let w = i.key("w", Permission::Write, None).await;

    let tgz = npm_tarball("pkg", "1.0.0");
    let npm = npm_publish_body("pkg", "1.0.0", &tgz, "d")
        .to_string()
        .into_bytes();
    let whl = dist::wheel("pkg", "1.0", "pkg", None);
    let form = pypi_form("pkg", "1.0", &whl);
    let form_ct = format!("multipart/form-data; boundary={BOUNDARY}");
    let blob = vec![7u8; 4096];
    let blob_digest = Digest::of(&blob);
    let session = {
        let r = i
            .send("POST", "/v2/img/app/blobs/uploads/", Some(&w), &[], Body::empty())
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
        r.header("location").unwrap().to_owned()
    };
    let cases: Vec<BrokenUpload<'_>> = vec![
        (
            "files",
            "PUT",
            "/assets/files/big.bin".into(),
            vec![],
            vec![1u8; 10_000],
        ),
        (
            "js",
            "PUT",
            "/npm/js/pkg".into(),
            vec![("host", "registry.test"), ("content-type", "application/json")],
            npm[..npm.len() / 2].to_vec(),
        ),
        (
            "py",
            "POST",
            "/pypi/py/".into(),
            vec![("content-type", &form_ct)],
            form[..form.len() - 200].to_vec(),
        ),
        (
            "py",
            "POST",
            "/pypi/py/yank/pkg/1.0".into(),
            vec![("content-type", "application/json")],
            b"{\"reason\": ".to_vec(),
        ),
        (
            "img",
            "POST",
            format!("/v2/img/app/blobs/uploads/?digest={blob_digest}"),
            vec![],
            blob[..1000].to_vec(),
        ),
        ("img", "PATCH", session.clone(), vec![], blob[..1000].to_vec()),
        (
            "img",
            "PUT",
            "/v2/img/app/manifests/v1".into(),
            vec![("content-type", "application/vnd.oci.image.manifest.v1+json")],
            b"{\"schemaVersion\": 2, ".to_vec(),
        ),
    ];
    for (feed, method, url, headers, prefix) in cases {
        log.take();
        let r = i
            .send(method, &url, Some(&w), &headers, broken_body(prefix))
            .await;
        let what = format!("{method} {url}");
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{what}: {}", r.text());
        assert!(r.text().contains("broke off"), "{what}: {}", r.text());
        let lines = log.take();
        assert!(
            !lines.iter().any(|l| l.starts_with("ERROR")),
            "{what}: {lines:#?}"
        );
        let warned = lines.iter().any(|l| {
            l.starts_with("WARN")
                && l.contains(&format!("feed=\"{feed}\""))
                && l.contains(&format!("client=\"{CLIENT}\""))
                && l.contains("connection reset by peer")
        });
        assert!(warned, "{what}: {lines:#?}");
    }
    // Nothing was stored, and the feeds work on.
    assert_eq!(i.get("/assets/files/big.bin").await.status, StatusCode::NOT_FOUND);
    assert_eq!(i.staging_files(), 0);
    let r = i
        .send("PUT", "/assets/files/big.bin", Some(&w), &[], "fine")
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());

    // A server fault is still an ERROR, with feed and client.
    log.take();
    std::fs::remove_dir_all(i.dir.path().join("blobs/staging")).unwrap();
    let r = i.send("PUT", "/assets/files/other.bin", Some(&w), &[], "x").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.text());
    let lines = log.take();
    assert!(
        lines.iter().any(|l| l.starts_with("ERROR")
            && l.contains("feed=\"files\"")
            && l.contains(&format!("client=\"{CLIENT}\""))),
        "{lines:#?}"
    );
}

/// A refusal the router makes itself says why, as every other refusal
/// does: a method a route does not take is 405 with `Allow` and a reason,
/// a path no route matches is 404 with a reason; HEAD answers stay empty.
/// NuGet routes refuse a method no NuGet client uses before asking for a
/// key.
#[tokio::test]
async fn refusals_by_the_router_carry_a_reason() {
    let i = Instance::new().await;
    i.feed("pkgs", ferry_types::FeedType::Nuget, false).await;
    for path in [
        "/health",
        "/nuget/pkgs/v3/index.json",
        "/nuget/pkgs/FindPackagesById()",
    ] {
        let r = i.send("BREW", path, None, &[], Body::empty()).await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{path}: {}", r.text());
        let allow = r.header("allow").unwrap_or_default().to_owned();
        assert!(allow.contains("GET"), "{path}: allow {allow:?}");
        assert!(
            r.text().contains("method BREW is not allowed"),
            "{path}: {}",
            r.text()
        );
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    }
    let r = i.get("/no/such/route").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.text().contains("not found"), "{}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("text/plain"))
    );
    let r = i.send("HEAD", "/no/such/route", None, &[], Body::empty()).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.body.is_empty(), "a HEAD answer has no body");
    // Under the JSON APIs the reason is JSON, as every other answer there.
    for path in [
        "/api/v1/nosuch",
        "/api/replication/v1/nosuch",
        "/api/v1/feeds/x/y/z",
    ] {
        let r = i.get(path).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(r.header("content-type"), Some("application/json"), "{path}");
        assert!(
            r.json()["error"].as_str().unwrap().contains("not found"),
            "{path}: {}",
            r.text()
        );
    }
    let r = i.send("BREW", "/api/v1/feeds", None, &[], Body::empty()).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("method BREW is not allowed"),
        "{}",
        r.text()
    );
}
