//! Hostile request targets and bodies, through the real router: each is
//! refused with a 4xx and a reason, in the error shape of the route's
//! protocol, with the security headers; no route sees it; nothing is stored;
//! no body is read past its cap.
#![allow(clippy::unwrap_used)]
use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::http::StatusCode;
use bytes::Bytes;
use common::{ADMIN, Instance, Reply};
use ferry_types::{FeedName, FeedType};

fn assert_headers(r: &Reply, what: &str) {
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"), "{what}");
    assert!(
        r.header("content-security-policy")
            .is_some_and(|p| p.contains("sandbox")),
        "{what}: {:?}",
        r.headers
    );
}

/// `uri` is refused 400 at the edge, the answer naming `says`.
async fn refused(i: &Instance, method: &str, uri: &str, says: &str) -> Reply {
    let r = i.send(method, uri, Some(ADMIN), &[], Body::from("x")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{method} {uri}: {}", r.text());
    assert!(
        r.text().contains(says),
        "{method} {uri}: {:?} lacks {says:?}",
        r.text()
    );
    assert_headers(&r, uri);
    r
}

#[tokio::test]
async fn bad_percent_encoding_non_utf8_and_nul_in_path_or_query_are_refused_with_a_reason() {
    let i = Instance::new().await;
    i.feed("files", FeedType::Assets, false).await;
    for (uri, says) in [
        ("/assets/files/a%zzb.txt", "invalid percent-encoding \"%zz\""),
        ("/assets/files/a%2", "invalid percent-encoding"),
        ("/assets/files/a%+1.txt", "invalid percent-encoding"),
        ("/assets/files/a%ff%fe.txt", "not UTF-8"),
        ("/assets/files/a%00.txt", "NUL"),
        ("/assets/files/a.txt?x=%00", "NUL"),
        ("/assets/files/a.txt?x=%c3%28", "not UTF-8"),
        ("/assets/files/a.txt?x%zz=1", "invalid percent-encoding"),
        ("/health?probe=%", "invalid percent-encoding"),
        ("/no/such/route/%00", "NUL"),
    ] {
        let r = refused(&i, "PUT", uri, says).await;
        assert_eq!(
            r.header("content-type"),
            Some("text/plain; charset=utf-8"),
            "{uri}"
        );
    }
    // The protocol's own error shape: OCI's errors array, JSON on the APIs.
    let r = refused(&i, "GET", "/v2/files/img/manifests/latest%00", "NUL").await;
    assert_eq!(r.json()["errors"][0]["code"], "UNSUPPORTED", "{}", r.text());
    let r = refused(&i, "GET", "/api/v1/feeds?x=%ff", "not UTF-8").await;
    assert!(r.json()["error"].as_str().unwrap().contains("parameter \"x\""));
    // Nothing was stored, nothing left in staging.
    let r = i.get("/assets/files/").await;
    assert!(!r.text().contains("<li"), "{}", r.text());
    assert_eq!(i.staging_files(), 0);
}

#[tokio::test]
async fn a_query_parameter_named_twice_is_refused_where_routes_take_one_value() {
    let i = Instance::new().await;
    i.feed("nu", FeedType::Nuget, false).await;
    i.feed("js", FeedType::Npm, false).await;
    for uri in [
        "/nuget/nu/Search()?searchTerm='a'&searchTerm='b'",
        // NuGet reads names without regard to case.
        "/nuget/nu/Packages()?$top=1&$TOP=1000",
        "/npm/js/-/v1/search?text=a&text=b",
        "/api/v1/replications/x/executions?limit=1&limit=2",
        // Percent-encoded, the same name.
        "/npm/js/-/v1/search?text=a&%74ext=b",
    ] {
        refused(&i, "GET", uri, "is given 2 times; this route takes one value").await;
    }
    // Routes that take a list keep taking it.
    let r = i
        .send(
            "GET",
            "/v2/token?service=ferry&scope=a&scope=b",
            None,
            &[],
            Body::empty(),
        )
        .await;
    assert!(!r.text().contains("given 2 times"), "{}: {}", r.status, r.text());
    let token = i.incoming("in", &["js"], "mirror").await;
    let r = i
        .send(
            "GET",
            "/api/replication/v1/feeds/js/digest?include=a*&include=b*&exclude=c",
            Some(&token),
            &[],
            Body::empty(),
        )
        .await;
    assert!(!r.text().contains("given 2 times"), "{}: {}", r.status, r.text());
    // Different names, and names alike but for a parameter's value: fine.
    let r = i
        .send(
            "GET",
            "/npm/js/-/v1/search?text=a&size=2",
            None,
            &[("host", "ferry")],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

/// `.`/`..` segments — plain, percent-encoded (`%2e%2e`, `..%2f`), or
/// separated by backslashes (`%5c`) — never reach a feed route of any type;
/// slashes and backslashes inside names are refused by each type's name
/// rules; nothing is stored.
#[tokio::test]
async fn dot_segments_encoded_slashes_and_backslashes_never_reach_a_feed() {
    let i = Instance::new().await;
    for (name, ty) in [
        ("files", FeedType::Assets),
        ("js", FeedType::Npm),
        ("py", FeedType::Pypi),
        ("img", FeedType::Oci),
        ("deb", FeedType::Debian),
        ("rp", FeedType::Rpm),
        ("nu", FeedType::Nuget),
        ("cr", FeedType::Cargo),
    ] {
        i.feed(name, ty, false).await;
    }
    let dots = [
        ("PUT", "/assets/files/%2e%2e/escape.txt"),
        ("PUT", "/assets/files/a/..%2f..%2fescape.txt"),
        ("PUT", "/assets/files/a/../escape.txt"),
        ("PUT", "/assets/files/a%5c..%5cescape.txt"),
        ("PUT", "/assets/%2e%2e/escape.txt"),
        ("GET", "/assets/files/./a.txt"),
        ("GET", "/npm/js/%2e%2e"),
        ("GET", "/npm/js/@scope%2f..%2f..%2fadmin"),
        ("PUT", "/npm/js/%2e%2e%2fpkg"),
        ("GET", "/pypi/py/simple/%2e%2e/"),
        ("GET", "/pypi/py/files/..%5c..%5cetc%5cpasswd"),
        ("GET", "/v2/img/%2e%2e/manifests/latest"),
        ("PUT", "/v2/img/a/%2E%2E/manifests/latest"),
        ("GET", "/debian/deb/pool/main/..%2f..%2f..%2fetc/passwd"),
        ("GET", "/debian/deb/dists/%2e%2e/Release"),
        ("PUT", "/debian/deb/dists/stable%5c..%5c../x.deb"),
        ("GET", "/rpm/rp/packages/%2e%2e/x.rpm"),
        ("GET", "/rpm/rp/repodata/..%2frepomd.xml"),
        ("GET", "/nuget/nu/v3/flatcontainer/%2e%2e/index.json"),
        ("PUT", "/nuget/nu/api/v2/package/..%5c..%5cx"),
        ("GET", "/cargo/cr/%2e%2e/config.json"),
        ("GET", "/cargo/cr/api/v1/crates/%2e%2e/1.0.0/download"),
    ];
    for (method, uri) in dots {
        refused(&i, method, uri, "'.' and '..' segments are not allowed").await;
    }
    // Slashes and backslashes inside one name: each type's own rules
    // refuse them (4xx, never a server error, never stored).
    let inside = [
        ("PUT", "/assets/files/a%5cb.txt"),
        ("GET", "/npm/js/a%5cb"),
        ("GET", "/npm/js/a%2fb%2fc"),
        ("GET", "/pypi/py/simple/a%5cb/"),
        ("GET", "/pypi/py/simple/a%2fb/"),
        ("GET", "/v2/img/a%5cb/manifests/latest"),
        ("GET", "/v2/img/a%2fb/manifests/x%2fy"),
        ("GET", "/debian/deb/dists/a%5cb/Release"),
        ("GET", "/debian/deb/pool/main/a%2fb%5cc.deb"),
        ("GET", "/rpm/rp/packages/a%5cb/0/a-1-1.x86_64.rpm"),
        ("GET", "/nuget/nu/v3/flatcontainer/a%5cb/index.json"),
        ("GET", "/nuget/nu/v3/registration/a%2fb/index.json"),
        ("GET", "/cargo/cr/a%5cb/config.json"),
        ("GET", "/cargo/cr/3/a/a%5cb"),
        ("GET", "/assets/fi%5cles/a.txt"),
        ("GET", "/npm/j%2fs/pkg"),
    ];
    for (method, uri) in inside {
        let r = i.send(method, uri, Some(ADMIN), &[], Body::from("x")).await;
        assert!(
            r.status.is_client_error(),
            "{method} {uri}: {} {}",
            r.status,
            r.text()
        );
        assert!(!r.text().trim().is_empty(), "{method} {uri}: no reason");
        assert_headers(&r, uri);
    }
    // Nothing was stored anywhere: no item in any feed, nothing staged,
    // nothing written outside the blob store.
    let r = i.get("/assets/files/").await;
    assert!(
        !r.text().contains("escape") && !r.text().contains("a\\b"),
        "{}",
        r.text()
    );
    assert_eq!(i.staging_files(), 0);
    for feed in ["files", "js", "py", "img", "deb", "rp", "nu", "cr"] {
        let rec = i.ferry.feed(&FeedName::new(feed).unwrap()).await.unwrap();
        let items = i.ferry.items(&rec, "").await.unwrap();
        assert!(
            items.is_empty(),
            "{feed}: {:?}",
            items.iter().map(|i| &i.key).collect::<Vec<_>>()
        );
    }
    let escaped = walk(i.dir.path().parent().unwrap(), "escape");
    assert!(escaped.is_empty(), "{escaped:?}");
}

/// Files under `dir` (not following links, two levels) whose name contains `needle`.
fn walk(dir: &std::path::Path, needle: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0)];
    while let Some((d, depth)) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.file_name()
                .is_some_and(|n| n.to_string_lossy().contains(needle))
            {
                found.push(p.clone());
            }
            if depth < 6 && e.file_type().is_ok_and(|t| t.is_dir()) && p.starts_with(dir) {
                stack.push((p, depth + 1));
            }
        }
    }
    found
}

/// A body that would be 1 GiB, made as it is read; counts what was read.
fn gigabyte_of_json(read: Arc<AtomicUsize>) -> Body {
    const CHUNK: usize = 64 << 10;
    let mut first = true;
    let chunks = std::iter::from_fn(move || {
        if read.load(Ordering::Relaxed) >= 1 << 30 {
            return None;
        }
        read.fetch_add(CHUNK, Ordering::Relaxed);
        let mut c = vec![b' '; CHUNK];
        if first {
            c[..9].copy_from_slice(b"{\"name\":\"");
            c[9..].fill(b'x');
            first = false;
        } else {
            c.fill(b'x');
        }
        Some(Ok::<_, std::io::Error>(Bytes::from(c)))
    });
    Body::from_stream(futures::stream::iter(chunks))
}

/// Every API and metadata endpoint that reads a JSON body whole refuses a
/// 1 GiB one with 413 after reading at most a few MiB of it, with or
/// without a declared length; nothing changes.
#[tokio::test]
async fn a_gigabyte_of_json_is_refused_413_after_a_bounded_read() {
    let i = Instance::new().await;
    i.feed("files", FeedType::Assets, false).await;
    i.feed("js", FeedType::Npm, false).await;
    i.feed("img", FeedType::Oci, false).await;
    i.feed("py", FeedType::Pypi, false).await;
    let token = i.incoming("in", &["files"], "mirror").await;
    let json = ("content-type", "application/json");
    let endpoints: [(&str, &str, Option<&str>, usize); 17] = [
        ("POST", "/api/v1/feeds", Some(ADMIN), 1 << 20),
        ("POST", "/api/v1/keys", Some(ADMIN), 1 << 20),
        ("POST", "/api/v1/replications", Some(ADMIN), 1 << 20),
        ("PUT", "/api/v1/config", Some(ADMIN), 1 << 20),
        ("POST", "/api/v1/fsck", Some(ADMIN), 1 << 20),
        ("PUT", "/api/v1/feeds/files/signing-key", Some(ADMIN), 1 << 20),
        ("PUT", "/api/v1/logs/replication/level", Some(ADMIN), 1 << 20),
        ("POST", "/api/v1/replications/in/verify", Some(ADMIN), 1 << 20),
        ("POST", "/api/replication/v1/handshake", Some(&token), 16 << 20),
        (
            "POST",
            "/api/replication/v1/feeds/files/apply",
            Some(&token),
            16 << 20,
        ),
        (
            "POST",
            "/api/replication/v1/feeds/files/stamps",
            Some(&token),
            16 << 20,
        ),
        (
            "POST",
            "/api/replication/v1/blobs/missing",
            Some(&token),
            16 << 20,
        ),
        (
            "PUT",
            "/npm/js/-/package/pkg/dist-tags/latest",
            Some(ADMIN),
            16 << 20,
        ),
        ("PUT", "/npm/js/-/user/org.couchdb.user:someone", None, 16 << 20),
        ("PUT", "/v2/img/app/manifests/latest", Some(ADMIN), 16 << 20),
        ("POST", "/v2/token", None, 1 << 20),
        ("POST", "/pypi/py/yank/pkg/1.0", Some(ADMIN), 1 << 20),
    ];
    for (method, uri, key, cap) in endpoints {
        for declared in [false, true] {
            let read = Arc::new(AtomicUsize::new(0));
            let mut headers = vec![json];
            if declared {
                headers.push(("content-length", "1073741824"));
            }
            let r = i
                .send(method, uri, key, &headers, gigabyte_of_json(read.clone()))
                .await;
            let got = read.load(Ordering::Relaxed);
            assert_eq!(
                r.status,
                StatusCode::PAYLOAD_TOO_LARGE,
                "{method} {uri} (length declared: {declared}): {}",
                r.text()
            );
            assert!(!r.text().trim().is_empty(), "{uri}: no reason");
            assert!(
                got <= cap + (1 << 20),
                "{method} {uri} (length declared: {declared}) read {got} bytes of a 1 GiB body; the cap is {cap}"
            );
            assert_headers(&r, uri);
        }
    }
    let r = i
        .send("GET", "/api/v1/feeds", Some(ADMIN), &[], Body::empty())
        .await;
    assert_eq!(r.json().as_array().map(Vec::len), Some(4), "{}", r.text());
}

/// A management body that declares more than the 1 MiB cap in
/// `Content-Length` is refused at once, before a byte of it arrives: a
/// trial's client that declared 2 MB and sent nothing held its connection
/// for the whole body timeout (60 s) and then got a 408.
#[tokio::test]
async fn a_declared_oversized_management_body_is_refused_before_it_is_sent() {
    let i = Instance::new().await;
    i.feed("files", FeedType::Assets, false).await;
    for (method, uri) in [
        ("POST", "/api/v1/feeds"),
        ("POST", "/api/v1/keys"),
        ("POST", "/api/v1/replications"),
        ("PUT", "/api/v1/config"),
    ] {
        for declared in ["1048577", "2000000", "99999999999"] {
            let never: Body = Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>());
            let headers = [("content-type", "application/json"), ("content-length", declared)];
            let r = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                i.send(method, uri, Some(ADMIN), &headers, never),
            )
            .await
            .unwrap_or_else(|_| panic!("{method} {uri} declaring {declared} bytes waited for the body"));
            assert_eq!(
                r.status,
                StatusCode::PAYLOAD_TOO_LARGE,
                "{method} {uri}: {}",
                r.text()
            );
            assert!(
                r.text().contains("exceeds the limit of 1048576 bytes"),
                "{method} {uri}: {}",
                r.text()
            );
        }
    }
}

/// The replication API's JSON bodies have a cap of their own (16 MiB): one
/// that declares more is refused at once, as a management body is, not
/// after the body timeout. Its blob uploads stream and are not held to it.
#[tokio::test]
async fn a_declared_oversized_replication_json_body_is_refused_before_it_is_sent() {
    let i = Instance::new().await;
    i.feed("files", FeedType::Assets, false).await;
    for uri in [
        "/api/replication/v1/handshake",
        "/api/replication/v1/feeds/files/entries",
        "/api/replication/v1/feeds/files/stamps",
        "/api/replication/v1/feeds/files/apply",
        "/api/replication/v1/blobs/missing",
        "/api/replication/v1/blobs/batch",
    ] {
        let never: Body = Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>());
        let headers = [
            ("content-type", "application/json"),
            ("content-length", "16777217"),
        ];
        let r = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            i.send("POST", uri, Some("any-token"), &headers, never),
        )
        .await
        .unwrap_or_else(|_| panic!("POST {uri} declaring 16 MiB + 1 waited for the body"));
        assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{uri}: {}", r.text());
        assert!(
            r.text().contains("exceeds the limit of 16777216 bytes"),
            "{uri}: {}",
            r.text()
        );
        assert!(
            r.json().get("error").is_some(),
            "{uri}: not the API's JSON error shape: {}",
            r.text()
        );
    }
}

/// An air-gap bundle is imported over HTTP whatever its size: the import
/// streams its body, so the management API's 1 MiB cap on JSON bodies is
/// not its limit (a bundle of 3 MB sent with a Content-Length, as
/// `curl --data-binary @FILE` sends it, was refused 413).
#[tokio::test]
async fn a_bundle_larger_than_the_json_cap_is_imported_over_http() {
    let i = Instance::new().await;
    i.feed("files", FeedType::Assets, false).await;
    i.feed("copy", FeedType::Assets, false).await;
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|n| (n.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let r = i
        .send("PUT", "/assets/files/big.bin", Some(ADMIN), &[], data.clone())
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let bundle = i
        .send(
            "GET",
            "/api/v1/feeds/files/bundle",
            Some(ADMIN),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(bundle.status, StatusCode::OK, "{}", bundle.text());
    assert!(
        bundle.body.len() > 2 << 20,
        "bundle of {} bytes",
        bundle.body.len()
    );
    let len = bundle.body.len().to_string();
    let r = i
        .send(
            "POST",
            "/api/v1/feeds/copy/bundle",
            Some(ADMIN),
            &[("content-length", len.as_str())],
            bundle.body,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let got = i.get("/assets/copy/big.bin").await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(
        got.body == data,
        "the imported file differs from the exported one"
    );
}

/// Two Host fields are a 400 (RFC 9112 §3.2), not an answer whose links
/// name the first one (a trial got an npm packument with tarball URLs on
/// whichever host it sent first).
#[tokio::test]
async fn a_request_with_two_host_fields_is_refused() {
    let i = Instance::new().await;
    i.feed("js", FeedType::Npm, true).await;
    let headers = [("host", "a.example"), ("host", "evil.example")];
    for uri in ["/npm/js/left-pad", "/api/v1/feeds", "/health"] {
        let r = i.send("GET", uri, Some(ADMIN), &headers, Body::empty()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{uri}: {}", r.text());
        assert!(r.text().contains("2 Host header fields"), "{uri}: {}", r.text());
    }
    let r = i
        .send(
            "GET",
            "/api/v1/feeds",
            Some(ADMIN),
            &[("host", "a.example")],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

/// A bundle whose header names no range of change-log positions (since
/// past until, or negative) is refused with the reason, nothing imported.
#[tokio::test]
async fn a_bundle_header_with_a_backwards_range_is_refused() {
    let i = Instance::new().await;
    i.feed("files", FeedType::Assets, false).await;
    i.feed("copy", FeedType::Assets, false).await;
    let r = i
        .send("PUT", "/assets/files/a.txt", Some(ADMIN), &[], b"a".to_vec())
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let bundle = i
        .send(
            "GET",
            "/api/v1/feeds/files/bundle",
            Some(ADMIN),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(bundle.status, StatusCode::OK);
    for (since, until) in [(99, -1), (-5, 3), (4, 2)] {
        // The same bundle, its header's range changed.
        let mut out = tar::Builder::new(Vec::new());
        let mut archive = tar::Archive::new(std::io::Cursor::new(bundle.body.clone()));
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().into_owned();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
            if path.to_str() == Some("ferry-bundle.json") {
                let mut h: serde_json::Value = serde_json::from_slice(&data).unwrap();
                h["since"] = since.into();
                h["until"] = until.into();
                data = serde_json::to_vec(&h).unwrap();
            }
            let mut header = entry.header().clone();
            header.set_size(data.len() as u64);
            header.set_cksum();
            out.append(&header, data.as_slice()).unwrap();
        }
        let body = out.into_inner().unwrap();
        let r = i
            .send("POST", "/api/v1/feeds/copy/bundle", Some(ADMIN), &[], body)
            .await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{since}..{until}: {}",
            r.text()
        );
        assert!(r.text().contains("not a range"), "{}", r.text());
        assert_eq!(i.get("/assets/copy/a.txt").await.status, StatusCode::NOT_FOUND);
    }
}

/// A bundle whose entries.jsonl holds a line more, or fewer, than its
/// header counts is refused, saying which, and applies nothing.
#[tokio::test]
async fn a_bundle_with_an_entry_added_or_dropped_is_refused_saying_which() {
    let i = Instance::new().await;
    i.feed("files", FeedType::Assets, false).await;
    i.feed("copy", FeedType::Assets, false).await;
    for name in ["a.txt", "b.txt"] {
        let r = i
            .send(
                "PUT",
                &format!("/assets/files/{name}"),
                Some(ADMIN),
                &[],
                name.as_bytes().to_vec(),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    }
    let bundle = i
        .send(
            "GET",
            "/api/v1/feeds/files/bundle",
            Some(ADMIN),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(bundle.status, StatusCode::OK);
    for (edit, says) in [
        (1i32, "holds 3 entries, its header says 2"),
        (-1, "holds 1 entries, its header says 2"),
    ] {
        let mut out = tar::Builder::new(Vec::new());
        let mut archive = tar::Archive::new(std::io::Cursor::new(bundle.body.clone()));
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().into_owned();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
            if path.to_str() == Some("entries.jsonl") {
                let text = String::from_utf8(data).unwrap();
                let mut lines: Vec<&str> = text.lines().collect();
                if edit > 0 {
                    lines.push(lines[0]);
                } else {
                    lines.pop();
                }
                data = format!("{}\n", lines.join("\n")).into_bytes();
            }
            let mut header = entry.header().clone();
            header.set_size(data.len() as u64);
            header.set_cksum();
            out.append(&header, data.as_slice()).unwrap();
        }
        let body = out.into_inner().unwrap();
        let r = i
            .send("POST", "/api/v1/feeds/copy/bundle", Some(ADMIN), &[], body)
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
        assert!(r.text().contains(says), "{says}: {}", r.text());
        assert_eq!(i.get("/assets/copy/a.txt").await.status, StatusCode::NOT_FOUND);
    }
}

/// A multipart body whose first part's header block never ends: one
/// `name` parameter of up to 1 GiB, made as it is read; counts what was
/// read.
fn endless_part_head(read: Arc<AtomicUsize>) -> Body {
    const CHUNK: usize = 64 << 10;
    let mut first = true;
    let chunks = std::iter::from_fn(move || {
        if read.load(Ordering::Relaxed) >= 1 << 30 {
            return None;
        }
        read.fetch_add(CHUNK, Ordering::Relaxed);
        let mut c = vec![b'N'; CHUNK];
        if first {
            let head = b"--XB\r\nContent-Disposition: form-data; name=\"";
            c[..head.len()].copy_from_slice(head);
            first = false;
        }
        Some(Ok::<_, std::io::Error>(Bytes::from(c)))
    });
    Body::from_stream(futures::stream::iter(chunks))
}

/// Every route that reads `multipart/form-data` refuses a part whose
/// headers do not end within 64 KiB with a 400 naming why, after reading
/// little more than that: the form parser holds a part's headers whole,
/// and a 300 MB one once held 1.2 GB of memory. Nothing is stored.
#[tokio::test]
async fn a_multipart_part_head_that_never_ends_is_refused_after_a_bounded_read() {
    let i = Instance::new().await;
    i.feed("py", FeedType::Pypi, false).await;
    i.feed("ng", FeedType::Nuget, false).await;
    i.feed("deb", FeedType::Debian, false).await;
    i.feed("rp", FeedType::Rpm, false).await;
    let form = ("content-type", "multipart/form-data; boundary=XB");
    for (method, uri) in [
        ("POST", "/pypi/py/"),
        ("PUT", "/nuget/ng/api/v2/package"),
        ("POST", "/debian/deb/upload/stable/main"),
        ("POST", "/rpm/rp/upload"),
    ] {
        let read = Arc::new(AtomicUsize::new(0));
        let r = i
            .send(
                method,
                uri,
                Some(ADMIN),
                &[form, ("host", "ferry.test")],
                endless_part_head(read.clone()),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{method} {uri}: {}", r.text());
        assert!(
            r.text().contains("headers run past 65536 bytes"),
            "{method} {uri}: {}",
            r.text()
        );
        // Refused by the server's check, not a body that broke off.
        assert!(!r.text().contains("broke off"), "{method} {uri}: {}", r.text());
        let got = read.load(Ordering::Relaxed);
        assert!(got <= 1 << 20, "{method} {uri} read {got} bytes of a part head");
        assert_headers(&r, uri);
    }
    for (uri, empty) in [
        ("/pypi/py/simple/", "<a "),
        ("/debian/deb/dists/stable/main/binary-all/Packages", "Package:"),
    ] {
        let r = i.send("GET", uri, Some(ADMIN), &[], Body::empty()).await;
        assert!(!r.text().contains(empty), "{uri}: {}", r.text());
    }
}

/// Two credentials in one request are refused, not settled by whichever
/// header comes first (a proxy in front may keep the other): on a feed
/// route, the management API, the replication API and NuGet's key header.
#[tokio::test]
async fn two_authorization_headers_are_refused() {
    let i = Instance::new().await;
    i.feed("files", FeedType::Assets, false).await;
    for uri in [
        "/assets/files/a.txt",
        "/api/v1/feeds",
        "/api/replication/v1/feeds/files/changes?since=0",
    ] {
        let r = i
            .send(
                "GET",
                uri,
                Some(ADMIN),
                &[("authorization", "Bearer not-the-admin-key")],
                Body::empty(),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{uri}: {}", r.text());
        assert!(
            r.text().contains("more than one authorization header"),
            "{uri}: {}",
            r.text()
        );
    }
    let r = i
        .send(
            "GET",
            "/assets/files/a.txt",
            None,
            &[("authorization", &format!("Bearer {ADMIN}"))],
            Body::empty(),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "one header still works: {}",
        r.text()
    );
    let r = i
        .send(
            "PUT",
            "/nuget/pkgs/api/v2/package",
            None,
            &[("x-nuget-apikey", ADMIN), ("x-nuget-apikey", "other")],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(
        r.text().contains("more than one x-nuget-apikey header"),
        "{}",
        r.text()
    );
}
