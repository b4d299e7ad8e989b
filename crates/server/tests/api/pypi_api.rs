//! The PyPI feed in process: twine-style uploads of wheels and sdists built
//! in the test, the simple API pages, refusals, auth, yank and delete.
#![allow(clippy::unwrap_used)]
use crate::common;

use ferry_testkit::pypi as dist;

use axum::body::Body;
use axum::http::StatusCode;
use common::{ADMIN, Instance, Reply};
use ferry_store::Permission;
use ferry_types::{Digest, FeedType};

const BOUNDARY: &str = "----ferry-test-boundary-7d1f";
const JSON: &str = "application/vnd.pypi.simple.v1+json";

/// A multipart/form-data body: text fields, then (optionally) the file in
/// `content`, as twine sends it.
fn multipart(fields: &[(&str, &str)], file: Option<(&str, &[u8])>) -> Vec<u8> {
    let mut b = Vec::new();
    for (k, v) in fields {
        b.extend_from_slice(
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n").as_bytes(),
        );
    }
    if let Some((name, data)) = file {
        // A name given as `*NAME` is sent as RFC 5987's `filename*` alone.
        let param = match name.strip_prefix('*') {
            Some(name) => format!("filename*=UTF-8''{name}"),
            None => format!("filename=\"{name}\""),
        };
        b.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"content\"; {param}\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        b.extend_from_slice(data);
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    b
}

/// The form twine sends for `file` (name, version, filetype, digest).
fn twine_fields(name: &str, version: &str, filename: &str, data: &[u8]) -> Vec<(String, String)> {
    let filetype = if filename.ends_with(".whl") {
        "bdist_wheel"
    } else {
        "sdist"
    };
    vec![
        ("name".into(), name.into()),
        ("version".into(), version.into()),
        ("filetype".into(), filetype.into()),
        (
            "pyversion".into(),
            if filetype == "sdist" { "source" } else { "py3" }.into(),
        ),
        ("metadata_version".into(), "2.1".into()),
        ("summary".into(), "A test package".into()),
        ("description".into(), "Long description.".into()),
        ("classifiers".into(), "Programming Language :: Python".into()),
        ("sha256_digest".into(), Digest::of(data).hex()),
        ("md5_digest".into(), "ignored".into()),
        (":action".into(), "file_upload".into()),
        ("protocol_version".into(), "1".into()),
    ]
}

async fn post_form(
    i: &Instance,
    feed: &str,
    key: Option<&str>,
    fields: &[(String, String)],
    file: Option<(&str, &[u8])>,
) -> Reply {
    let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let ct = format!("multipart/form-data; boundary={BOUNDARY}");
    i.send(
        "POST",
        &format!("/pypi/{feed}/"),
        key,
        &[("content-type", &ct)],
        multipart(&fields, file),
    )
    .await
}

/// Uploads a file the way twine does; returns the reply.
async fn upload(
    i: &Instance,
    feed: &str,
    key: &str,
    name: &str,
    version: &str,
    (filename, data): &(String, Vec<u8>),
) -> Reply {
    post_form(
        i,
        feed,
        Some(key),
        &twine_fields(name, version, filename, data),
        Some((filename, data)),
    )
    .await
}

async fn get_json(i: &Instance, uri: &str) -> Reply {
    i.send("GET", uri, None, &[("accept", JSON)], Body::empty()).await
}

/// (what, form fields, file, expected status, words the reason must contain)
type Case<'a> = (
    &'a str,
    Vec<(String, String)>,
    Option<(String, Vec<u8>)>,
    StatusCode,
    &'a [&'a str],
);

async fn setup() -> (Instance, String) {
    let i = Instance::new().await;
    i.feed("py", FeedType::Pypi, false).await;
    let w = i.key("writer", Permission::Write, None).await;
    (i, w)
}

async fn project_names(i: &Instance, feed: &str) -> Vec<String> {
    let r = get_json(i, &format!("/pypi/{feed}/simple/")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()["projects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn upload_wheel_and_sdist_then_simple_pages_and_files() {
    let (i, w) = setup().await;
    let whl = dist::wheel("Foo.Bar", "1.0", "foo_bar", Some(">=3.8,<4"));
    let sdist = dist::sdist("Foo.Bar", "1.0", Some(">=3.8,<4"));
    let r = upload(&i, "py", &w, "Foo.Bar", "1.0", &whl).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = upload(&i, "py", &w, "foo_bar", "1.0", &sdist).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let newer = dist::wheel("Foo.Bar", "1.10", "foo_bar", None);
    assert_eq!(
        upload(&i, "py", &w, "foo-bar", "1.10", &newer).await.status,
        StatusCode::OK
    );
    let other = dist::wheel("other", "0.1", "other", None);
    assert_eq!(
        upload(&i, "py", &w, "other", "0.1", &other).await.status,
        StatusCode::OK
    );

    // Root: HTML by default (relative links), JSON on request.
    let r = i.get("/pypi/py/simple/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(r.header("vary"), Some("Accept"));
    assert!(
        r.text().contains("<a href=\"foo-bar/\">Foo.Bar</a>") && r.text().contains("href=\"other/\""),
        "{}",
        r.text()
    );
    assert_eq!(project_names(&i, "py").await, ["Foo.Bar", "other"]);

    // Project page, HTML: hashes, escaped requires-python, files sorted by version.
    let r = i.get("/pypi/py/simple/foo-bar/").await;
    assert_eq!(r.status, StatusCode::OK);
    let html = r.text();
    let whl_hash = Digest::of(&whl.1).hex();
    // A wheel's core metadata is offered on its own (PEP 658/714).
    let core = dist::metadata("Foo.Bar", "1.0", Some(">=3.8,<4"));
    let core_hash = Digest::of(core.as_bytes()).hex();
    let whl_link = format!(
        "<a href=\"../../files/foo-bar/{}#sha256={whl_hash}\" data-requires-python=\"&gt;=3.8,&lt;4\" \
         data-dist-info-metadata=\"sha256={core_hash}\" data-core-metadata=\"sha256={core_hash}\">{}</a>",
        whl.0, whl.0
    );
    assert!(html.contains(&whl_link), "{html}");
    let r = i.get(&format!("/pypi/py/files/foo-bar/{}.metadata", whl.0)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, core.as_bytes());
    // An sdist has none, and neither does a file that is not there.
    let sdist_link = html.lines().find(|l| l.contains(&sdist.0)).unwrap();
    assert!(!sdist_link.contains("metadata"), "{sdist_link}");
    for missing in [
        format!("{}.metadata", sdist.0),
        "foo_bar-9.9-py3-none-any.whl.metadata".into(),
    ] {
        let r = i.get(&format!("/pypi/py/files/foo-bar/{missing}")).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{missing}");
    }
    assert!(
        html.contains(&format!(
            "\"../../files/foo-bar/{}#sha256={}",
            sdist.0,
            Digest::of(&sdist.1).hex()
        )),
        "{html}"
    );
    assert!(!html.contains("data-yanked"), "{html}");
    let pos = |needle: &str| html.find(needle).unwrap();
    assert!(pos(&whl.0) < pos(&newer.0), "1.0 must sort before 1.10: {html}");

    // Project page, JSON (PEP 691 + PEP 700).
    let r = get_json(&i, "/pypi/py/simple/foo-bar/").await;
    assert_eq!(r.header("content-type"), Some(JSON));
    assert_eq!(r.header("vary"), Some("Accept"));
    let j = r.json();
    assert_eq!(j["meta"]["api-version"], "1.1");
    assert_eq!(j["name"], "foo-bar");
    assert_eq!(j["versions"], serde_json::json!(["1.0", "1.10"]));
    let f = j["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["filename"] == whl.0.as_str())
        .unwrap();
    assert_eq!(f["hashes"]["sha256"], whl_hash);
    assert_eq!(f["requires-python"], ">=3.8,<4");
    assert_eq!(f["yanked"], false);
    assert_eq!(f["size"], whl.1.len());
    assert!(f["upload-time"].as_str().unwrap().ends_with('Z'));
    // Links are relative to the page, so a path prefix added by a proxy
    // stays in them.
    let link = f["url"].as_str().unwrap().split('#').next().unwrap().to_string();
    assert_eq!(link, format!("../../files/foo-bar/{}", whl.0));
    let url = format!("/pypi/py/files/foo-bar/{}", whl.0);

    // The files themselves, with ETag and Range.
    let r = i.get(&url).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, whl.1);
    assert_eq!(r.header("etag"), Some(format!("\"sha256:{whl_hash}\"").as_str()));

    let r = i
        .send("GET", &url, None, &[("range", "bytes=0-3")], Body::empty())
        .await;
    assert_eq!(
        (r.status, r.body.as_slice()),
        (StatusCode::PARTIAL_CONTENT, &whl.1[..4])
    );
    let r = i.send("HEAD", &url, None, &[], Body::empty()).await;
    assert_eq!((r.status, r.body.len()), (StatusCode::OK, 0));
    assert_eq!(r.header("content-length"), Some(whl.1.len().to_string().as_str()));
    let r = i.get(&format!("/pypi/py/files/foo-bar/{}", sdist.0)).await;
    assert_eq!(r.body, sdist.1);
    // Any spelling of the project finds the file; another project does not.
    assert_eq!(
        i.get(&format!("/pypi/py/files/Foo_Bar/{}", whl.0)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        i.get(&format!("/pypi/py/files/other/{}", whl.0)).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        i.get("/pypi/py/files/foo-bar/foo_bar-9.9.tar.gz").await.status,
        StatusCode::NOT_FOUND
    );

    // Downloads are counted (Range requests are not).
    i.ferry.flush_downloads().await.unwrap();
    let feed = i
        .ferry
        .feed(&ferry_types::FeedName::new("py").unwrap())
        .await
        .unwrap();
    let stored = ferry_core::pypi::file(&i.ferry, &feed, "foo-bar", &whl.0)
        .await
        .unwrap();
    assert_eq!(stored.downloads, 2);
    assert_eq!(i.staging_files(), 0);
}

#[tokio::test]
async fn non_normalized_urls_redirect() {
    let (i, w) = setup().await;
    assert_eq!(
        upload(
            &i,
            "py",
            &w,
            "Foo.Bar",
            "1.0",
            &dist::wheel("Foo.Bar", "1.0", "foo_bar", None)
        )
        .await
        .status,
        StatusCode::OK
    );
    // Relative to the request, so a path prefix added by a proxy stays.
    for (from, to) in [
        ("/pypi/py/simple/Foo.Bar/", "../foo-bar/"),
        ("/pypi/py/simple/FOO__bar/", "../foo-bar/"),
        ("/pypi/py/simple/foo-bar", "foo-bar/"),
        ("/pypi/py/simple/Foo_Bar", "foo-bar/"),
        ("/pypi/py/simple", "simple/"),
        ("/pypi/py/", "simple/"),
        ("/pypi/py", "py/simple/"),
    ] {
        let r = i.get(from).await;
        assert_eq!(r.status, StatusCode::MOVED_PERMANENTLY, "{from}");
        assert_eq!(r.header("location"), Some(to), "{from}");
    }
    assert_eq!(i.get("/pypi/py/simple/foo-bar/").await.status, StatusCode::OK);
    let r = i.get("/pypi/py/simple/nothing-here/").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.text().contains("nothing-here"), "{}", r.text());
    assert_eq!(
        i.get("/pypi/py/simple/bad%20name/").await.status,
        StatusCode::NOT_FOUND
    );
    // Without a key, a feed that is not public asks for one (private feeds
    // must not be told from missing ones); with a key, it is not found.
    assert_eq!(
        i.get("/pypi/nofeed/simple/").await.status,
        StatusCode::UNAUTHORIZED
    );
    let reader = i.key("reader", Permission::Read, None).await;
    assert_eq!(
        i.send("GET", "/pypi/nofeed/simple/", Some(&reader), &[], Body::empty())
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    i.feed("files", FeedType::Assets, false).await;
    assert_eq!(i.get("/pypi/files/simple/").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn same_file_twice_is_409_other_files_of_the_version_are_fine() {
    let (i, w) = setup().await;
    let whl = dist::wheel("pkg", "1.0", "pkg", None);
    assert_eq!(
        upload(&i, "py", &w, "pkg", "1.0", &whl).await.status,
        StatusCode::OK
    );
    let r = upload(&i, "py", &w, "pkg", "1.0", &whl).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    assert!(r.text().contains("already exists"), "{}", r.text());
    // Same name, different content: still refused, the original stays.
    let mut changed = dist::wheel("pkg", "1.0", "pkg", Some(">=3"));
    changed.0 = whl.0.clone();
    assert_eq!(
        upload(&i, "py", &w, "pkg", "1.0", &changed).await.status,
        StatusCode::CONFLICT
    );
    assert_eq!(i.get(&format!("/pypi/py/files/pkg/{}", whl.0)).await.body, whl.1);
    // The sdist of the same version is another file.
    assert_eq!(
        upload(&i, "py", &w, "pkg", "1.0", &dist::sdist("pkg", "1.0", None))
            .await
            .status,
        StatusCode::OK
    );
    let j = get_json(&i, "/pypi/py/simple/pkg/").await.json();
    assert_eq!(j["files"].as_array().unwrap().len(), 2);
    assert_eq!(i.staging_files(), 0);
    // A client naming the file by `filename*` only is read the same way.
    let other = dist::wheel("other", "2.0", "other", None);
    let starred = format!("*{}", other.0);
    let r = post_form(
        &i,
        "py",
        Some(&w),
        &twine_fields("other", "2.0", &other.0, &other.1),
        Some((&starred, &other.1)),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        i.get(&format!("/pypi/py/files/other/{}", other.0)).await.body,
        other.1
    );
}

#[tokio::test]
async fn bad_uploads_are_refused_with_a_reason_and_nothing_is_written() {
    let (i, w) = setup().await;
    let good = dist::wheel("pkg", "1.0", "pkg", None);
    let fields =
        |name: &str, version: &str, file: &(String, Vec<u8>)| twine_fields(name, version, &file.0, &file.1);
    let meta = dist::metadata("pkg", "1.0", None);

    let no_metadata = (
        "pkg-1.0-py3-none-any.whl".to_string(),
        dist::zip(&[("pkg/__init__.py", b"x = 1\n")]),
    );
    let not_zip = (
        "pkg-1.0-py3-none-any.whl".to_string(),
        b"this is not a zip archive at all".to_vec(),
    );
    let traversal = (
        "pkg-1.0-py3-none-any.whl".to_string(),
        dist::zip(&[
            ("../evil.py", b"boom"),
            ("pkg-1.0.dist-info/METADATA", meta.as_bytes()),
        ]),
    );
    let tar_traversal = (
        "pkg-1.0.tar.gz".to_string(),
        dist::gzip(&dist::tar(&[
            ("pkg-1.0/PKG-INFO", meta.as_bytes()),
            ("pkg-1.0/../../etc/passwd", b"x"),
        ])),
    );
    let not_gzip = ("pkg-1.0.tar.gz".to_string(), b"plain text".to_vec());
    let inner_mismatch = (
        "pkg-1.0-py3-none-any.whl".to_string(),
        dist::wheel("pkg", "2.0", "pkg", None).1,
    );
    let bad_name = ("pkg-1.0.exe".to_string(), good.1.clone());
    let mut wrong_digest = fields("pkg", "1.0", &good);
    wrong_digest.retain(|(k, _)| k != "sha256_digest");
    wrong_digest.push(("sha256_digest".into(), Digest::of(b"other").hex()));
    let mut register = fields("pkg", "1.0", &good);
    register.retain(|(k, _)| k != ":action");
    register.push((":action".into(), "submit".into()));
    let good_hash = Digest::of(&good.1).hex();
    let digest_words = ["sha256_digest", good_hash.as_str()];
    let mut long_field = fields("pkg", "1.0", &good);
    long_field.push(("summary".into(), "x".repeat(100_000)));

    let cases: Vec<Case<'_>> = vec![
        (
            "malformed wheel (no METADATA)",
            fields("pkg", "1.0", &no_metadata),
            Some(no_metadata.clone()),
            StatusCode::BAD_REQUEST,
            &["METADATA"],
        ),
        (
            "not a zip",
            fields("pkg", "1.0", &not_zip),
            Some(not_zip.clone()),
            StatusCode::BAD_REQUEST,
            &["not a valid zip"],
        ),
        (
            "not a gzip",
            fields("pkg", "1.0", &not_gzip),
            Some(not_gzip.clone()),
            StatusCode::BAD_REQUEST,
            &["not a valid .tar.gz"],
        ),
        (
            "traversal in a wheel",
            fields("pkg", "1.0", &traversal),
            Some(traversal.clone()),
            StatusCode::BAD_REQUEST,
            &["../evil.py", "outside"],
        ),
        (
            "traversal in an sdist",
            fields("pkg", "1.0", &tar_traversal),
            Some(tar_traversal.clone()),
            StatusCode::BAD_REQUEST,
            &["etc/passwd", "outside"],
        ),
        (
            "name mismatch",
            fields("other-pkg", "1.0", &good),
            Some(good.clone()),
            StatusCode::BAD_REQUEST,
            &["\"other-pkg\"", "\"pkg\""],
        ),
        (
            "version mismatch",
            fields("pkg", "2.0", &good),
            Some(good.clone()),
            StatusCode::BAD_REQUEST,
            &["\"2.0\"", "\"1.0\""],
        ),
        (
            "file name vs METADATA",
            fields("pkg", "1.0", &inner_mismatch),
            Some(inner_mismatch.clone()),
            StatusCode::BAD_REQUEST,
            &["METADATA"],
        ),
        (
            "sha256 mismatch",
            wrong_digest,
            Some(good.clone()),
            StatusCode::BAD_REQUEST,
            &digest_words,
        ),
        (
            "bad file name",
            fields("pkg", "1.0", &bad_name),
            Some(bad_name.clone()),
            StatusCode::BAD_REQUEST,
            &["pkg-1.0.exe"],
        ),
        (
            "missing content",
            fields("pkg", "1.0", &good),
            None,
            StatusCode::BAD_REQUEST,
            &["content"],
        ),
        (
            "unsupported action",
            register,
            Some(good.clone()),
            StatusCode::BAD_REQUEST,
            &["submit"],
        ),
        (
            "overlong field",
            long_field,
            Some(good.clone()),
            StatusCode::BAD_REQUEST,
            &["summary"],
        ),
    ];
    for (what, form, file, status, words) in cases {
        let r = post_form(
            &i,
            "py",
            Some(&w),
            &form,
            file.as_ref().map(|(n, d)| (n.as_str(), d.as_slice())),
        )
        .await;
        assert_eq!(r.status, status, "{what}: {}", r.text());
        for word in words {
            assert!(r.text().contains(word), "{what}: {word:?} not in {:?}", r.text());
        }
    }
    // Not multipart at all, and a truncated multipart body.
    let r = i
        .send(
            "POST",
            "/pypi/py/",
            Some(&w),
            &[("content-type", "application/json")],
            "{}",
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(r.text().contains("multipart"), "{}", r.text());
    let mut body = multipart(&[("name", "pkg")], Some((&good.0, &good.1)));
    body.truncate(body.len() - 40);
    let ct = format!("multipart/form-data; boundary={BOUNDARY}");
    let r = i
        .send("POST", "/pypi/py/", Some(&w), &[("content-type", &ct)], body)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(r.text().contains("multipart"), "{}", r.text());

    assert!(project_names(&i, "py").await.is_empty());
    assert_eq!(i.get("/pypi/py/simple/pkg/").await.status, StatusCode::NOT_FOUND);
    assert_eq!(i.staging_files(), 0);
    // And the good file still goes in afterwards.
    assert_eq!(
        upload(&i, "py", &w, "pkg", "1.0", &good).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn oversize_upload_is_413_and_leaves_nothing() {
    let i = Instance::with_config(ferry_core::Config {
        max_upload_bytes: 2000,
        ..Default::default()
    })
    .await;
    i.feed("py", FeedType::Pypi, false).await;
    let w = i.key("w", Permission::Write, None).await;
    let padding = "x".repeat(5000);
    let mut big = dist::wheel("pkg", "1.0", "pkg", None);
    let meta = dist::metadata("pkg", "1.0", None);
    big.1 = dist::zip(&[
        ("pkg/data.txt", padding.as_bytes()),
        ("pkg-1.0.dist-info/METADATA", meta.as_bytes()),
    ]);
    let r = upload(&i, "py", &w, "pkg", "1.0", &big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());
    assert!(r.text().contains("2000"), "{}", r.text());
    // Streamed without a Content-Length, the limit holds too.
    let fields = twine_fields("pkg", "1.0", &big.0, &big.1);
    let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let body = multipart(&fields, Some((&big.0, &big.1)));
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = body
        .chunks(300)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    let ct = format!("multipart/form-data; boundary={BOUNDARY}");
    let r = i
        .send(
            "POST",
            "/pypi/py/",
            Some(&w),
            &[("content-type", &ct)],
            Body::from_stream(futures::stream::iter(chunks)),
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());
    assert!(project_names(&i, "py").await.is_empty());
    assert_eq!(i.staging_files(), 0);
    // A small file is fine.
    let small = dist::wheel("pkg", "1.0", "pkg", None);
    assert_eq!(
        upload(&i, "py", &w, "pkg", "1.0", &small).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn writes_need_a_write_key_and_private_feeds_need_a_key_to_read() {
    let (i, w) = setup().await;
    i.feed("secret", FeedType::Pypi, true).await;
    let reader = i.key("reader", Permission::Read, None).await;
    let whl = dist::wheel("pkg", "1.0", "pkg", None);
    let fields = twine_fields("pkg", "1.0", &whl.0, &whl.1);
    let file = Some((whl.0.as_str(), whl.1.as_slice()));

    let r = post_form(&i, "py", None, &fields, file).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.header("www-authenticate").unwrap().starts_with("Basic"));
    let r = post_form(&i, "py", Some(&reader), &fields, file).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.text().contains("read permission"), "{}", r.text());
    assert_eq!(
        post_form(&i, "py", Some("wrong-key"), &fields, file).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert!(project_names(&i, "py").await.is_empty());

    // twine: basic auth, any user name, the key as password; no trailing slash works too.
    let fields_ref: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let ct = format!("multipart/form-data; boundary={BOUNDARY}");
    let basic = format!("Basic {}", b64(&format!("__token__:{w}")));
    let r = i
        .send(
            "POST",
            "/pypi/py",
            None,
            &[("content-type", &ct), ("authorization", &basic)],
            multipart(&fields_ref, file),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let url = format!("/pypi/py/files/pkg/{}", whl.0);
    for (method, uri) in [
        ("DELETE", url.as_str()),
        ("POST", "/pypi/py/yank/pkg/1.0"),
        ("POST", "/pypi/py/unyank/pkg/1.0"),
        ("DELETE", "/pypi/py/project/pkg/1.0"),
    ] {
        assert_eq!(
            i.send(method, uri, None, &[], Body::empty()).await.status,
            StatusCode::UNAUTHORIZED,
            "{method} {uri}"
        );
        assert_eq!(
            i.send(method, uri, Some(&reader), &[], Body::empty())
                .await
                .status,
            StatusCode::FORBIDDEN,
            "{method} {uri}"
        );
    }
    assert_eq!(i.get(&url).await.status, StatusCode::OK);

    // Private feed: reading needs a key (pip sends basic auth from the URL).
    assert_eq!(
        upload(&i, "secret", ADMIN, "pkg", "1.0", &whl).await.status,
        StatusCode::OK
    );
    for uri in [
        "/pypi/secret/simple/",
        "/pypi/secret/simple/pkg/",
        &format!("/pypi/secret/files/pkg/{}", whl.0),
    ] {
        let r = i.get(uri).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{uri}");
        assert!(r.header("www-authenticate").unwrap().starts_with("Basic"));
        let basic = format!("Basic {}", b64(&format!("user:{reader}")));
        let r = i
            .send("GET", uri, None, &[("authorization", &basic)], Body::empty())
            .await;
        assert_eq!(r.status, StatusCode::OK, "{uri}");
    }
    let r = i
        .send(
            "GET",
            "/pypi/secret/simple/pkg/",
            Some(&reader),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.header("cache-control"), Some("private, no-cache"));
    let scoped = i.key("scoped", Permission::Write, Some(&["py"])).await;
    // A private feed outside the key's scope answers as a missing one.
    assert_eq!(
        i.send("GET", "/pypi/secret/simple/", Some(&scoped), &[], Body::empty())
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn yank_unyank_and_delete() {
    let (i, w) = setup().await;
    let v1 = dist::wheel("pkg", "1.0", "pkg", None);
    let v1_src = dist::sdist("pkg", "1.0", None);
    let v2 = dist::wheel("pkg", "2.0", "pkg", None);
    for (v, f) in [("1.0", &v1), ("1.0", &v1_src), ("2.0", &v2)] {
        assert_eq!(upload(&i, "py", &w, "pkg", v, f).await.status, StatusCode::OK);
    }
    let files = |j: &serde_json::Value| -> Vec<(String, serde_json::Value)> {
        j["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| (f["filename"].as_str().unwrap().to_string(), f["yanked"].clone()))
            .collect()
    };
    // Warm the cache, so the pages below prove it is refreshed.
    assert_eq!(get_json(&i, "/pypi/py/simple/pkg/").await.status, StatusCode::OK);

    // Yank 1.0 with a JSON reason (any spelling of the project, PEP 440 version equality).
    let r = i
        .send(
            "POST",
            "/pypi/py/yank/PKG/1.0.0",
            Some(&w),
            &[("content-type", "application/json")],
            r#"{"reason": "broken <build>"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["files"].as_array().unwrap().len(), 2);
    let j = get_json(&i, "/pypi/py/simple/pkg/").await.json();
    let reason = serde_json::json!("broken <build>");
    assert_eq!(
        files(&j),
        vec![
            (v1.0.clone(), reason.clone()),
            (v1_src.0.clone(), reason.clone()),
            (v2.0.clone(), serde_json::json!(false))
        ]
    );
    let html = i.get("/pypi/py/simple/pkg/").await.text();
    assert_eq!(
        html.matches("data-yanked=\"broken &lt;build&gt;\"").count(),
        2,
        "{html}"
    );
    // Yanked files stay downloadable, and so does a wheel's core metadata
    // (PEP 658): the item keeps both blobs, so collection never takes it.
    assert_eq!(
        i.get(&format!("/pypi/py/files/pkg/{}", v1.0)).await.status,
        StatusCode::OK
    );
    let feed = i
        .ferry
        .feed(&ferry_types::FeedName::new("py").unwrap())
        .await
        .unwrap();
    let key = ferry_types::ItemKey::new(format!("pkg/{}", v1.0)).unwrap();
    let item = i.ferry.item(&feed, &key).await.unwrap().unwrap();
    assert_eq!(item.blobs.len(), 2, "a yank dropped the core metadata blob");
    // Yanking again is the user's latest action: it takes a new stamp, so
    // it wins over an older unyank made on another instance.
    let r = i
        .send(
            "POST",
            "/pypi/py/yank/pkg/1.0",
            Some(&w),
            &[("content-type", "application/json")],
            r#"{"reason": "broken <build>"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let again = i.ferry.item(&feed, &key).await.unwrap().unwrap();
    assert!(
        again.stamp > item.stamp,
        "a repeated yank kept its old stamp {}",
        item.stamp
    );
    assert_eq!(
        i.get(&format!("/pypi/py/files/pkg/{}.metadata", v1.0))
            .await
            .status,
        StatusCode::OK
    );

    // Unyank, then yank with a form reason, then without any.
    let r = i
        .send("POST", "/pypi/py/unyank/pkg/1.0", Some(&w), &[], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(
        files(&get_json(&i, "/pypi/py/simple/pkg/").await.json())
            .iter()
            .all(|(_, y)| *y == false)
    );
    assert!(!i.get("/pypi/py/simple/pkg/").await.text().contains("data-yanked"));
    let r = i
        .send(
            "POST",
            "/pypi/py/yank/pkg/2.0",
            Some(&w),
            &[("content-type", "application/x-www-form-urlencoded")],
            "reason=use+3.0%21",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["files"][0]["yanked_reason"], "use 3.0!");
    assert_eq!(
        i.send("POST", "/pypi/py/yank/pkg/1.0", Some(&w), &[], Body::empty())
            .await
            .status,
        StatusCode::OK
    );
    let html = i.get("/pypi/py/simple/pkg/").await.text();
    assert!(
        html.contains("data-yanked=\"use 3.0!\"") && html.contains("data-yanked=\"\""),
        "{html}"
    );
    let j = get_json(&i, "/pypi/py/simple/pkg/").await.json();
    assert_eq!(files(&j)[0].1, true);

    // Unknown versions and projects, bad bodies.
    let r = i
        .send("POST", "/pypi/py/yank/pkg/9.9", Some(&w), &[], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.text().contains("9.9"), "{}", r.text());
    assert_eq!(
        i.send("POST", "/pypi/py/yank/nope/1.0", Some(&w), &[], Body::empty())
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let r = i
        .send(
            "POST",
            "/pypi/py/yank/pkg/1.0",
            Some(&w),
            &[("content-type", "application/json")],
            "{not json",
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = i
        .send(
            "POST",
            "/pypi/py/yank/pkg/1.0",
            Some(&w),
            &[("content-type", "application/json")],
            format!(r#"{{"reason": "{}"}}"#, "x".repeat(2000)),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    // Delete one file, then the rest of its version.
    let url = format!("/pypi/py/files/pkg/{}", v1.0);
    assert_eq!(
        i.send("DELETE", &url, Some(&w), &[], Body::empty()).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(i.get(&url).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        i.send("DELETE", &url, Some(&w), &[], Body::empty()).await.status,
        StatusCode::NOT_FOUND
    );
    let r = i
        .send("DELETE", "/pypi/py/project/pkg/1.0", Some(&w), &[], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["deleted"], serde_json::json!([v1_src.0]));
    assert_eq!(files(&get_json(&i, "/pypi/py/simple/pkg/").await.json()).len(), 1);
    assert_eq!(
        i.send("DELETE", "/pypi/py/project/pkg/1.0", Some(&w), &[], Body::empty())
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    // A deleted file may be uploaded again.
    assert_eq!(
        upload(&i, "py", &w, "pkg", "1.0", &v1).await.status,
        StatusCode::OK
    );
    // Deleting every version removes the project.
    for v in ["1.0", "2"] {
        assert_eq!(
            i.send(
                "DELETE",
                &format!("/pypi/py/project/pkg/{v}"),
                Some(&w),
                &[],
                Body::empty()
            )
            .await
            .status,
            StatusCode::OK
        );
    }
    assert_eq!(i.get("/pypi/py/simple/pkg/").await.status, StatusCode::NOT_FOUND);
    assert!(project_names(&i, "py").await.is_empty());
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// `file` under another file name (same bytes).
fn renamed((_, data): &(String, Vec<u8>), filename: &str) -> (String, Vec<u8>) {
    (filename.to_owned(), data.clone())
}

/// Files that installers cannot tell apart (same normalized project name,
/// PEP 440 version, wheel build tag and tag set, or sdist format) are one
/// file: the second is refused with 409 naming the first, however it is
/// spelled. Files of one release that differ are fine.
#[tokio::test]
async fn equivalent_files_are_refused_naming_the_existing_one() {
    let (i, w) = setup().await;
    let first = dist::wheel("Dupe", "1.0.0", "dupe", None);
    assert_eq!(first.0, "Dupe-1.0.0-py3-none-any.whl");
    let r = upload(&i, "py", &w, "Dupe", "1.0.0", &first).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    // (file, version in the form, the file it duplicates)
    let twice = [
        (
            dist::wheel("dupe", "1.0.0", "dupe", None),
            "1.0.0",
            first.0.as_str(),
        ),
        (dist::wheel("dupe", "01.0.0", "dupe", None), "01.0.0", &first.0),
        (dist::wheel("dupe", "1.0", "dupe", None), "1.0", &first.0),
        (
            renamed(
                &dist::wheel("dupe", "1.0.0", "dupe", None),
                "dupe-1.0.0-PY3-None-any.whl",
            ),
            "1.0.0",
            &first.0,
        ),
    ];
    for (file, version, existing) in &twice {
        let r = upload(&i, "py", &w, "dupe", version, file).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{}: {}", file.0, r.text());
        assert!(
            r.text().contains(&format!("equivalent to {existing}")),
            "{}: {}",
            file.0,
            r.text()
        );
    }

    // Other files of the release: another tag set, a build tag, an sdist
    // in each format. Each is then taken, whatever its spelling.
    let py23 = renamed(
        &dist::wheel("dupe", "1.0.0", "dupe", None),
        "dupe-1.0.0-py2.py3-none-any.whl",
    );
    let build = renamed(
        &dist::wheel("dupe", "1.0.0", "dupe", None),
        "dupe-1.0.0-1-py3-none-any.whl",
    );
    let sdist = dist::sdist("Dupe", "1.0.0", None);
    let meta = dist::metadata("dupe", "1.0.0", None);
    let zip = (
        "dupe-1.0.0.zip".to_owned(),
        dist::zip(&[("dupe-1.0.0/PKG-INFO", meta.as_bytes())]),
    );
    for file in [&py23, &build, &sdist, &zip] {
        let r = upload(&i, "py", &w, "dupe", "1.0.0", file).await;
        assert_eq!(r.status, StatusCode::OK, "{}: {}", file.0, r.text());
    }
    let meta10 = dist::metadata("dupe", "1.0", None);
    let again = [
        (
            renamed(
                &dist::wheel("dupe", "1.0", "dupe", None),
                "dupe-1.0-py3.py2-none-any.whl",
            ),
            py23.0.as_str(),
        ),
        (
            renamed(
                &dist::wheel("dupe", "1.0", "dupe", None),
                "dupe-1.0-01-py3-none-any.whl",
            ),
            &build.0,
        ),
        (dist::sdist("dupe", "1.0", None), &sdist.0),
        (
            (
                "DUPE-1.0.zip".to_owned(),
                dist::zip(&[("DUPE-1.0/PKG-INFO", meta10.as_bytes())]),
            ),
            &zip.0,
        ),
    ];
    for (file, existing) in &again {
        let r = upload(&i, "py", &w, "dupe", "1.0", file).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{}: {}", file.0, r.text());
        assert!(
            r.text().contains(&format!("equivalent to {existing}")),
            "{}: {}",
            file.0,
            r.text()
        );
    }
    let page = get_json(&i, "/pypi/py/simple/dupe/").await.json();
    let mut names: Vec<&str> = page["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["filename"].as_str().unwrap())
        .collect();
    names.sort();
    let mut want = vec![first.0.as_str(), &py23.0, &build.0, &sdist.0, &zip.0];
    want.sort();
    assert_eq!(names, want);
    assert_eq!(
        i.get(&format!("/pypi/py/files/dupe/{}", first.0)).await.body,
        first.1
    );

    // Once the file is deleted, an equivalent one may take its place.
    let url = format!("/pypi/py/files/dupe/{}", first.0);
    assert_eq!(
        i.send("DELETE", &url, Some(&w), &[], Body::empty()).await.status,
        StatusCode::NO_CONTENT
    );
    let r = upload(&i, "py", &w, "dupe", "1.0.0", &twice[0].0).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(i.staging_files(), 0);
}

/// Two equivalent uploads at the same time: exactly one gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn equivalent_uploads_at_once_do_not_both_get_in() {
    let (i, w) = setup().await;
    for round in 0..8 {
        let project = format!("race{round}");
        let a = dist::wheel(&project.to_uppercase(), "1.0", &project, None);
        let b = dist::wheel(&project, "1.0.0", &project, None);
        let (ra, rb) = tokio::join!(
            upload(&i, "py", &w, &project, "1.0", &a),
            upload(&i, "py", &w, &project, "1.0.0", &b),
        );
        let mut statuses = [ra.status, rb.status];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::OK, StatusCode::CONFLICT],
            "{}\n{}",
            ra.text(),
            rb.text()
        );
        let page = get_json(&i, &format!("/pypi/py/simple/{project}/")).await.json();
        assert_eq!(page["files"].as_array().unwrap().len(), 1, "{page}");
    }
}

/// Simple pages carry an entity tag, one per page and format: a client
/// that sends it back in `If-None-Match` gets 304 without the page until
/// the feed changes (pip's HTTP cache revalidates so, each install through
/// a far-away spoke).
#[tokio::test]
async fn simple_pages_have_entity_tags_and_answer_304_until_they_change() {
    let (i, w) = setup().await;
    let first = dist::wheel("tagged", "1.0", "tagged", None);
    assert_eq!(
        upload(&i, "py", &w, "tagged", "1.0", &first).await.status,
        StatusCode::OK
    );
    for uri in ["/pypi/py/simple/", "/pypi/py/simple/tagged/"] {
        let html = i.get(uri).await;
        let json = get_json(&i, uri).await;
        let (Some(tag), Some(json_tag)) = (html.header("etag"), json.header("etag")) else {
            panic!("{uri}: no ETag: {:?} / {:?}", html.headers, json.headers);
        };
        assert!(
            tag.starts_with('"') && tag.ends_with('"') && tag.len() > 2,
            "{uri}: {tag}"
        );
        assert_ne!(tag, json_tag, "{uri}: the HTML and JSON forms share a tag");
        assert_eq!(
            i.get(uri).await.header("etag"),
            Some(tag),
            "{uri}: the tag is not stable"
        );
        let r = i
            .send("GET", uri, None, &[("if-none-match", tag)], Body::empty())
            .await;
        assert_eq!(r.status, StatusCode::NOT_MODIFIED, "{uri}: {}", r.text());
        assert!(r.body.is_empty(), "{uri}: a 304 with a body");
        assert_eq!(r.header("etag"), Some(tag));
        assert_eq!(r.header("vary"), Some("Accept"));
        // The HTML page's tag does not validate the JSON page.
        let r = i
            .send(
                "GET",
                uri,
                None,
                &[("if-none-match", tag), ("accept", JSON)],
                Body::empty(),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{uri}");
        assert!(r.text().contains("\"meta\""), "{uri}: {}", r.text());
    }
    let page = i.get("/pypi/py/simple/tagged/").await;
    let old = page.header("etag").unwrap().to_owned();
    let second = dist::wheel("tagged", "1.1", "tagged", None);
    assert_eq!(
        upload(&i, "py", &w, "tagged", "1.1", &second).await.status,
        StatusCode::OK
    );
    let r = i
        .send(
            "GET",
            "/pypi/py/simple/tagged/",
            None,
            &[("if-none-match", &old)],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "a changed page was answered 304");
    assert!(r.text().contains("tagged-1.1-"), "{}", r.text());
    assert_ne!(r.header("etag"), Some(old.as_str()));
}

/// A replicated file is checked against its own core metadata as an
/// upload is: an item whose Requires-Python, summary or name is not the
/// file's is refused, and so is one naming another blob as the file's
/// core metadata (PEP 658 would serve it); an sdist is checked too; the
/// genuine items apply and are listed.
#[tokio::test]
async fn replicated_files_must_match_their_core_metadata() {
    use ferry_store::{Change, ChangeOp};
    use ferry_types::{FeedName, ItemKey};
    use serde_json::json;
    let (hub, w) = setup().await;
    let whl = dist::wheel("Demo", "1.0", "demo", Some(">=3.8"));
    let sdist = dist::sdist("Demo", "1.0", Some(">=3.8"));
    for f in [&whl, &sdist] {
        let r = upload(&hub, "py", &w, "Demo", "1.0", f).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
    let hub_feed = hub.ferry.feed(&FeedName::new("py").unwrap()).await.unwrap();
    let items = hub.ferry.items(&hub_feed, "").await.unwrap();
    assert_eq!(items.len(), 2);

    let (spoke, _) = setup().await;
    let feed = spoke.ferry.feed(&FeedName::new("py").unwrap()).await.unwrap();
    // Every blob of the hub's items, stored on the spoke first.
    for item in &items {
        for d in &item.blobs {
            let body = hub.ferry.read_blob(d, None).await.unwrap().stream;
            let staged = spoke.ferry.stage(body, Some(*d)).await.unwrap();
            spoke.ferry.commit_blob(staged).await.unwrap();
        }
    }
    let change = |key: &ItemKey, meta: serde_json::Value, blobs: Vec<Digest>| Change {
        key: key.clone(),
        stamp: spoke.ferry.clock().stamp(),
        op: ChangeOp::Upsert {
            meta,
            blobs,
            created_at: None,
        },
    };
    let refused = |c: Change, says: &'static str| {
        let (ferry, feed) = (spoke.ferry.clone(), feed.clone());
        async move {
            let e = ferry.apply(&feed, vec![c]).await.unwrap_err();
            assert!(e.to_string().contains(says), "{e}");
        }
    };
    for item in &items {
        let lie = |field: &str, value: serde_json::Value| {
            let mut meta = item.meta.clone();
            meta[field] = value;
            change(&item.key, meta, item.blobs.clone())
        };
        refused(lie("requires_python", json!(">=2.7")), "requires_python").await;
        refused(lie("summary", json!("Trust me.")), "summary").await;
        refused(lie("name", json!("DEMO")), "name").await;
    }
    // The wheel's item naming the sdist as its core metadata.
    let wheel = items.iter().find(|i| i.blobs.len() == 2).unwrap();
    let sdist_blob = items.iter().find(|i| i.blobs.len() == 1).unwrap().blobs[0];
    let mut meta = wheel.meta.clone();
    meta["core_metadata"] = json!(sdist_blob);
    refused(
        change(&wheel.key, meta, vec![wheel.blobs[0], sdist_blob]),
        "core metadata",
    )
    .await;
    assert!(spoke.ferry.items(&feed, "").await.unwrap().is_empty());
    for item in &items {
        spoke
            .ferry
            .apply(
                &feed,
                vec![change(&item.key, item.meta.clone(), item.blobs.clone())],
            )
            .await
            .unwrap();
    }
    assert_eq!(project_names(&spoke, "py").await, ["Demo"]);
}
