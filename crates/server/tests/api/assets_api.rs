#![allow(clippy::unwrap_used)]
use crate::common;

use axum::body::Body;
use axum::http::StatusCode;
use common::{ADMIN, Instance};
use ferry_store::Permission;
use ferry_types::{Digest, FeedType};

async fn instance_with_files() -> (Instance, String) {
    let i = Instance::new().await;
    i.feed("files", FeedType::Assets, false).await;
    let w = i.key("writer", Permission::Write, None).await;
    (i, w)
}

#[tokio::test]
async fn put_get_head_range_etag_delete() {
    let (i, w) = instance_with_files().await;
    let r = i
        .send("PUT", "/assets/files/dir/hello.txt", Some(&w), &[], "hello world")
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let digest = Digest::of(b"hello world").to_string();
    assert_eq!(r.json()["digest"], digest);

    let r = i.get("/assets/files/dir/hello.txt").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, b"hello world");
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.header("etag"), Some(format!("\"{digest}\"").as_str()));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));

    let r = i
        .send("HEAD", "/assets/files/dir/hello.txt", None, &[], Body::empty())
        .await;
    assert_eq!((r.status, r.body.len()), (StatusCode::OK, 0));
    assert_eq!(r.header("content-length"), Some("11"));

    let r = i
        .send(
            "GET",
            "/assets/files/dir/hello.txt",
            None,
            &[("range", "bytes=6-")],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.body, b"world");
    assert_eq!(r.header("content-range"), Some("bytes 6-10/11"));

    let r = i
        .send(
            "GET",
            "/assets/files/dir/hello.txt",
            None,
            &[("range", "bytes=20-30")],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.header("content-range"), Some("bytes */11"));

    let etag = format!("\"{digest}\"");
    let r = i
        .send(
            "GET",
            "/assets/files/dir/hello.txt",
            None,
            &[("if-none-match", &etag)],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);

    // Replacing the file serves the new content.
    i.send("PUT", "/assets/files/dir/hello.txt", Some(&w), &[], "bye")
        .await;
    assert_eq!(i.get("/assets/files/dir/hello.txt").await.body, b"bye");

    let r = i
        .send(
            "DELETE",
            "/assets/files/dir/hello.txt",
            Some(&w),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        i.get("/assets/files/dir/hello.txt").await.status,
        StatusCode::NOT_FOUND
    );
    let r = i
        .send(
            "DELETE",
            "/assets/files/dir/hello.txt",
            Some(&w),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

/// A download resumed with `If-Range` after the asset was replaced gets the
/// whole new content (200), never old bytes spliced with new ones; the
/// other preconditions follow RFC 9110 §13 (strong comparison for
/// `If-Match` and `If-Range`, weak for `If-None-Match`, dates only when no
/// entity tag is given, HEAD without ranges).
#[tokio::test]
async fn if_range_and_preconditions_follow_rfc_9110() {
    let (i, w) = instance_with_files().await;
    let url = "/assets/files/dl/file.bin";
    let old: Vec<u8> = (0..1000u32).map(|n| (n % 251) as u8).collect();
    let new: Vec<u8> = (0..1000u32).map(|n| (n % 13) as u8 + 100).collect();
    let send = |method: &'static str, headers: Vec<(&'static str, String)>| {
        let i = &i;
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            i.send(method, url, None, &h, Body::empty()).await
        }
    };
    assert_eq!(
        i.send("PUT", url, Some(&w), &[], old.clone()).await.status,
        StatusCode::CREATED
    );
    // The first half arrives, with the validators to resume by.
    let r = send("GET", vec![("range", "bytes=0-499".into())]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    let old_tag = r.header("etag").unwrap().to_owned();
    let old_date = r.header("last-modified").unwrap().to_owned();
    // Resuming the unchanged asset with its tag: the rest (206).
    let r = send(
        "GET",
        vec![("range", "bytes=500-".into()), ("if-range", old_tag.clone())],
    )
    .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.body, &old[500..]);

    // The asset is replaced; resuming with the old tag must not splice.
    assert_eq!(
        i.send("PUT", url, Some(&w), &[], new.clone()).await.status,
        StatusCode::CREATED
    );
    let r = send(
        "GET",
        vec![("range", "bytes=500-".into()), ("if-range", old_tag.clone())],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "old validator: the whole new content");
    assert_eq!(r.body, new);
    assert_eq!(r.header("content-range"), None);
    assert_eq!(r.header("content-length"), Some("1000"));
    let new_tag = r.header("etag").unwrap().to_owned();
    assert_ne!(new_tag, old_tag);
    // The current tag resumes; a weak one or a date never does (RFC 9110
    // §13.1.5: strong comparison; a date is not known to be strong).
    let r = send(
        "GET",
        vec![("range", "bytes=500-".into()), ("if-range", new_tag.clone())],
    )
    .await;
    assert_eq!(
        (r.status, r.body.as_slice()),
        (StatusCode::PARTIAL_CONTENT, &new[500..])
    );
    for validator in [format!("W/{new_tag}"), old_date.clone(), "garbage".into()] {
        let r = send(
            "GET",
            vec![("range", "bytes=500-".into()), ("if-range", validator.clone())],
        )
        .await;
        assert_eq!((r.status, r.body.len()), (StatusCode::OK, 1000), "{validator}");
    }

    // If-Match: strong comparison; 412 for the old content.
    let r = send("GET", vec![("if-match", old_tag.clone())]).await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    assert!(r.body.len() < 100);
    let r = send("GET", vec![("if-match", format!("W/{new_tag}"))]).await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    for ok in [new_tag.clone(), "*".into(), format!("\"x\", {new_tag}")] {
        assert_eq!(
            send("GET", vec![("if-match", ok.clone())]).await.status,
            StatusCode::OK,
            "{ok}"
        );
    }
    // If-None-Match: weak comparison; `*`; any member of a list.
    for hit in [
        new_tag.clone(),
        format!("W/{new_tag}"),
        "*".into(),
        format!("{old_tag}, {new_tag}"),
    ] {
        let r = send("GET", vec![("if-none-match", hit.clone())]).await;
        assert_eq!(r.status, StatusCode::NOT_MODIFIED, "{hit}");
        assert!(r.body.is_empty());
        assert_eq!(r.header("etag"), Some(new_tag.as_str()));
    }
    assert_eq!(
        send("GET", vec![("if-none-match", old_tag.clone())]).await.status,
        StatusCode::OK
    );
    // If-Modified-Since: a date at or after Last-Modified → 304; ignored
    // when If-None-Match is there.
    let later = httpdate::fmt_http_date(std::time::SystemTime::now() + std::time::Duration::from_secs(60));
    let r = send("GET", vec![("if-modified-since", later.clone())]).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    let r = send(
        "GET",
        vec![("if-modified-since", "Thu, 01 Jan 1970 00:00:00 GMT".into())],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = send(
        "GET",
        vec![
            ("if-modified-since", later.clone()),
            ("if-none-match", old_tag.clone()),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    // If-Unmodified-Since: changed since → 412.
    let r = send(
        "GET",
        vec![("if-unmodified-since", "Thu, 01 Jan 1970 00:00:00 GMT".into())],
    )
    .await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);

    // HEAD has no ranges: the whole length, 200; preconditions apply.
    let r = send("HEAD", vec![("range", "bytes=500-".into())]).await;
    assert_eq!((r.status, r.body.len()), (StatusCode::OK, 0));
    assert_eq!(r.header("content-length"), Some("1000"));
    assert_eq!(r.header("content-range"), None);
    let r = send("HEAD", vec![("if-none-match", new_tag.clone())]).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);

    // Only full downloads count: not ranges, 304s, 412s or HEADs.
    i.ferry.flush_downloads().await.unwrap();
    let feed = i
        .ferry
        .feed(&ferry_types::FeedName::new("files").unwrap())
        .await
        .unwrap();
    let asset = ferry_core::assets::get(&i.ferry, &feed, "dl/file.bin")
        .await
        .unwrap();
    assert!(asset.downloads >= 1);
    let before = asset.downloads;
    assert_eq!(
        send("GET", vec![("if-none-match", new_tag.clone())]).await.status,
        StatusCode::NOT_MODIFIED
    );
    send("GET", vec![("range", "bytes=1-".into())]).await;
    i.ferry.flush_downloads().await.unwrap();
    let asset = ferry_core::assets::get(&i.ferry, &feed, "dl/file.bin")
        .await
        .unwrap();
    assert_eq!(asset.downloads, before);
}

#[tokio::test]
async fn listing_html_and_json() {
    let (i, w) = instance_with_files().await;
    for p in ["a/one.bin", "a/two.txt", "a/sub/three", "top.txt"] {
        assert_eq!(
            i.send("PUT", &format!("/assets/files/{p}"), Some(&w), &[], "x")
                .await
                .status,
            StatusCode::CREATED
        );
    }
    let r = i
        .send(
            "GET",
            "/assets/files/a/",
            None,
            &[("accept", "application/json")],
            Body::empty(),
        )
        .await;
    let names: Vec<_> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["type"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        names,
        vec![
            ("sub".into(), "folder".into()),
            ("one.bin".into(), "file".into()),
            ("two.txt".into(), "file".into())
        ]
    );
    let r = i.get("/assets/files/").await;
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert!(
        r.text().contains("href=\"./a/\"") && r.text().contains("top.txt"),
        "{}",
        r.text()
    );
    assert_eq!(
        i.get("/assets/files/nothing/").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn traversal_is_refused_and_nothing_written() {
    let (i, w) = instance_with_files().await;
    for bad in [
        "/assets/files/a/../b",
        "/assets/files/a/%2e%2e/b",
        "/assets/files/%2e%2e",
        "/assets/files//etc/passwd",
        "/assets/files/a%5cb",
        "/assets/files/a/./b",
        "/assets/files/a%00b",
        // Names that would show as others: a right-to-left override, a
        // zero-width space, a byte order mark.
        "/assets/files/invoice%E2%80%AEfdp.exe",
        "/assets/files/pay%E2%80%8Broll.xlsx",
        "/assets/files/%EF%BB%BFreadme",
    ] {
        let r = i.send("PUT", bad, Some(&w), &[], "evil").await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.text());
        // Dot segments and NULs are refused at the edge, before the route.
        let why = r.text();
        assert!(
            why.contains("invalid asset path")
                || why.contains("'.' and '..' segments are not allowed")
                || why.contains("NUL"),
            "{bad}: {why}"
        );
    }
    let r = i
        .send(
            "GET",
            "/assets/files/",
            None,
            &[("accept", "application/json")],
            Body::empty(),
        )
        .await;
    assert_eq!(r.json(), serde_json::json!([]));
    assert_eq!(i.staging_files(), 0);
}

#[tokio::test]
async fn oversize_upload_is_413_and_leaves_nothing() {
    let i = Instance::with_config(ferry_core::Config {
        max_upload_bytes: 1000,
        ..Default::default()
    })
    .await;
    i.feed("files", FeedType::Assets, false).await;
    let w = i.key("w", Permission::Write, None).await;
    let big = vec![7u8; 1001];
    let r = i
        .send("PUT", "/assets/files/big.bin", Some(&w), &[], big.clone())
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());
    // Without a Content-Length the limit is enforced while streaming.
    let stream = futures::stream::iter(
        big.chunks(100)
            .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    let r = i
        .send(
            "PUT",
            "/assets/files/big.bin",
            Some(&w),
            &[],
            Body::from_stream(stream),
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());
    assert_eq!(i.get("/assets/files/big.bin").await.status, StatusCode::NOT_FOUND);
    assert_eq!(i.staging_files(), 0);
}

#[tokio::test]
async fn checksum_header_mismatch_is_refused() {
    let (i, w) = instance_with_files().await;
    let wrong = Digest::of(b"something else").hex();
    let r = i
        .send(
            "PUT",
            "/assets/files/f",
            Some(&w),
            &[("x-checksum-sha256", &wrong)],
            "content",
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text().contains("digest mismatch"), "{}", r.text());
    assert_eq!(i.get("/assets/files/f").await.status, StatusCode::NOT_FOUND);
    let right = Digest::of(b"content").hex();
    let r = i
        .send(
            "PUT",
            "/assets/files/f",
            Some(&w),
            &[("x-checksum-sha256", &right)],
            "content",
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
}

#[tokio::test]
async fn keys_permissions_and_private_feeds() {
    let i = Instance::new().await;
    i.feed("open", FeedType::Assets, false).await;
    i.feed("secret", FeedType::Assets, true).await;
    let reader = i.key("reader", Permission::Read, None).await;
    let scoped = i.key("scoped", Permission::Write, Some(&["open"])).await;

    let r = i.send("PUT", "/assets/open/f", None, &[], "x").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.header("www-authenticate").unwrap().starts_with("Basic"));
    assert_eq!(
        i.send("PUT", "/assets/open/f", Some("ferry_wrong"), &[], "x")
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let r = i.send("PUT", "/assets/open/f", Some(&reader), &[], "x").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.text().contains("read permission"), "{}", r.text());
    assert_eq!(
        i.send("PUT", "/assets/open/f", Some(&scoped), &[], "x")
            .await
            .status,
        StatusCode::CREATED
    );
    // A private feed outside the key's scope answers as a missing one.
    assert_eq!(
        i.send("PUT", "/assets/secret/f", Some(&scoped), &[], "x")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        i.send("PUT", "/assets/secret/f", Some(ADMIN), &[], "s")
            .await
            .status,
        StatusCode::CREATED
    );

    // Private feeds need a key even to read; basic auth with the key as password works.
    assert_eq!(i.get("/assets/secret/f").await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        i.send("GET", "/assets/secret/f", Some(&reader), &[], Body::empty())
            .await
            .body,
        b"s"
    );
    let basic = format!("Basic {}", base64_encode(&format!("anyone:{reader}")));
    assert_eq!(
        i.send(
            "GET",
            "/assets/secret/f",
            None,
            &[("authorization", &basic)],
            Body::empty()
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_eq!(
        i.send("GET", "/assets/secret/f", Some(&scoped), &[], Body::empty())
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    // A revoked key stops working at once.
    i.ferry.delete_key("reader").await.unwrap();
    assert_eq!(
        i.send("GET", "/assets/secret/f", Some(&reader), &[], Body::empty())
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    // Unknown feed (asking for a key, as a private feed would), and a
    // public feed of another type.
    assert_eq!(i.get("/assets/nope/f").await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        i.send("GET", "/assets/nope/f", Some(&scoped), &[], Body::empty())
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    i.feed("pkgs", FeedType::Npm, false).await;
    assert_eq!(i.get("/assets/pkgs/f").await.status, StatusCode::NOT_FOUND);
}

fn base64_encode(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A path is a file or a folder, never both: a file under a file, or a
/// file where a folder holds files, is 409 with the reason, and nothing
/// changes; once the way is clear, the upload goes through.
#[tokio::test]
async fn a_file_and_a_folder_never_share_a_path() {
    let (i, w) = instance_with_files().await;
    let put = |path: &'static str, body: &'static str| {
        let (i, w) = (&i, &w);
        async move {
            i.send("PUT", &format!("/assets/files/{path}"), Some(w), &[], body)
                .await
        }
    };
    assert_eq!(put("col/a", "a file").await.status, StatusCode::CREATED);
    let r = put("col/a/b", "under a file").await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    assert!(r.text().contains("col/a is a file"), "{}", r.text());
    let r = put("col/a/b/c.txt", "deeper").await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    assert_eq!(i.get("/assets/files/col/a/b").await.status, StatusCode::NOT_FOUND);

    assert_eq!(
        put("lib/x/y.txt", "in a folder").await.status,
        StatusCode::CREATED
    );
    for folder in ["lib", "lib/x"] {
        let r = put(folder, "over a folder").await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{folder}: {}", r.text());
        assert!(r.text().contains("is a folder"), "{}", r.text());
    }
    let r = i.get("/assets/files/lib/x/y.txt").await;
    assert_eq!(r.body, b"in a folder");
    // A sibling whose name merely starts the same is its own path.
    assert_eq!(put("lib/x.txt", "beside").await.status, StatusCode::CREATED);
    assert_eq!(put("col/ab", "beside").await.status, StatusCode::CREATED);

    // Replacing a file stays a plain overwrite; a cleared folder frees its name.
    assert_eq!(put("col/a", "new content").await.status, StatusCode::CREATED);
    let r = i
        .send(
            "DELETE",
            "/assets/files/lib/x/y.txt",
            Some(&w),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(put("lib/x", "now a file").await.status, StatusCode::CREATED);

    // Racing: a file and a folder of one name at once, many times: one
    // wins, the other is 409, never both.
    for n in 0..20 {
        let (file, under) = (
            format!("/assets/files/race{n}/a"),
            format!("/assets/files/race{n}/a/b"),
        );
        let (a, b) = tokio::join!(
            i.send("PUT", &file, Some(&w), &[], "file"),
            i.send("PUT", &under, Some(&w), &[], "under"),
        );
        let mut got = [a.status, b.status];
        got.sort();
        assert_eq!(got, [StatusCode::CREATED, StatusCode::CONFLICT], "round {n}");
    }
}

/// A name written decomposed (`e` + U+0301, as macOS writes file names)
/// and precomposed (`é`) is one file: stored once, found either way,
/// listed in the composed form.
#[tokio::test]
async fn decomposed_and_composed_names_are_one_file() {
    let (i, w) = instance_with_files().await;
    let r = i
        .send(
            "PUT",
            "/assets/files/caf%65%CC%81/menu.txt",
            Some(&w),
            &[],
            "soup",
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    for url in [
        "/assets/files/caf%C3%A9/menu.txt",
        "/assets/files/cafe%CC%81/menu.txt",
    ] {
        let r = i.get(url).await;
        assert_eq!(r.status, StatusCode::OK, "{url}");
        assert_eq!(r.text(), "soup");
    }
    let r = i
        .send("PUT", "/assets/files/caf%C3%A9/menu.txt", Some(&w), &[], "stew")
        .await;
    assert!(r.status.is_success(), "{}", r.text());
    assert_eq!(i.get("/assets/files/cafe%CC%81/menu.txt").await.text(), "stew");
    let r = i
        .send(
            "GET",
            "/assets/files/",
            None,
            &[("accept", "application/json")],
            Body::empty(),
        )
        .await;
    let listed = r.json();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["name"], "caf\u{e9}", "{listed}");
}

/// A folder listing names each sub-folder once and every file of its own,
/// however many files the sub-folders hold and whatever sorts between
/// them (`a0`, `a.b` and `a` itself sort around `a/…` byte by byte; a
/// name of the greatest character a path may hold sorts last).
#[tokio::test]
async fn listings_skip_what_sub_folders_hold() {
    let (i, w) = instance_with_files().await;
    let mut paths: Vec<String> = (0..1200).map(|n| format!("a/deep/f{n:04}")).collect();
    for p in [
        "a/1",
        "a/2/x",
        "a0",
        "a.b/c",
        "b",
        "a/\u{10FFFD}z",
        "a/\u{10FFFD}/y",
        "a/zz",
    ] {
        paths.push(p.to_string());
    }
    let puts = paths.iter().map(|p| {
        let (i, w) = (&i, &w);
        async move {
            let url = format!("/assets/files/{}", utf8_percent(p));
            let r = i.send("PUT", &url, Some(w), &[], "x").await;
            assert_eq!(r.status, StatusCode::CREATED, "{p}: {}", r.text());
        }
    });
    futures::future::join_all(puts).await;
    let listed = |dir: &'static str| {
        let i = &i;
        async move {
            let r = i
                .send(
                    "GET",
                    &format!("/assets/files/{}", utf8_percent(dir)),
                    None,
                    &[("accept", "application/json")],
                    Body::empty(),
                )
                .await;
            assert_eq!(r.status, StatusCode::OK, "{dir}: {}", r.text());
            r.json()
                .as_array()
                .unwrap()
                .iter()
                .map(|e| format!("{}:{}", e["type"].as_str().unwrap(), e["name"].as_str().unwrap()))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(listed("").await, ["folder:a", "folder:a.b", "file:a0", "file:b"]);
    assert_eq!(
        listed("a/").await,
        [
            "folder:2",
            "folder:deep",
            "folder:\u{10FFFD}",
            "file:1",
            "file:zz",
            "file:\u{10FFFD}z"
        ]
    );
    assert_eq!(listed("a/deep/").await.len(), 1200);
}

/// Percent-encodes every byte outside the unreserved set but `/`.
fn utf8_percent(p: &str) -> String {
    p.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What arrives by replication or a bundle keeps a path a file or a
/// folder, never both: a file under a file stored here, or a file where
/// files sit under it, is refused with the reason (and retried by later
/// executions), judged on the state the batch leaves — a delete anywhere
/// in the same batch clears the way, a refused change clears nothing.
#[tokio::test]
async fn replicated_files_keep_a_path_a_file_or_a_folder() {
    use bytes::Bytes;
    use ferry_core::Applied;
    use ferry_store::{Change, ChangeOp};
    use ferry_types::{FeedName, ItemKey};
    let (i, w) = instance_with_files().await;
    for p in ["p", "dir/inner.txt"] {
        let r = i
            .send("PUT", &format!("/assets/files/{p}"), Some(&w), &[], "x")
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    }
    let feed = i.ferry.feed(&FeedName::new("files").unwrap()).await.unwrap();
    let staged = i.ferry.stage_bytes(Bytes::from_static(b"remote")).await.unwrap();
    let blob = i.ferry.commit_blob(staged).await.unwrap();
    let up = |k: &str| Change {
        key: ItemKey::new(k).unwrap(),
        stamp: i.ferry.clock().stamp(),
        op: ChangeOp::Upsert {
            meta: serde_json::json!({ "content_type": "text/plain", "size": 6 }),
            blobs: vec![blob],
            created_at: None,
        },
    };
    let del = |k: &str| Change {
        key: ItemKey::new(k).unwrap(),
        stamp: i.ferry.clock().stamp(),
        op: ChangeOp::Delete,
    };
    let outcomes = |o: Vec<Applied>| {
        o.into_iter()
            .map(|a| match a {
                Applied::Refused(why) => format!("refused: {why}"),
                Applied::Written(_) => "written".into(),
            })
            .collect::<Vec<_>>()
    };
    // Under the file p; onto the folder dir; new and clear paths pass.
    let got = outcomes(
        i.ferry
            .apply_each(
                &feed,
                vec![up("p/q"), up("dir"), up("fresh/a"), up("fresh")],
                false,
            )
            .await
            .unwrap(),
    );
    assert_eq!(
        got[0],
        "refused: p/q: p is a file here, so p/q cannot be stored under it (a path is a file or a folder)"
    );
    assert!(
        got[1].starts_with("refused: dir: dir is a folder holding files here"),
        "{got:?}"
    );
    assert_eq!(got[2], "written");
    assert!(got[3].starts_with("refused: fresh: fresh is a folder"), "{got:?}");
    // The file deleted first in the same batch: its path becomes a folder;
    // the folder's file deleted first: its path becomes a file.
    let got = outcomes(
        i.ferry
            .apply_each(
                &feed,
                vec![del("p"), up("p/q"), del("dir/inner.txt"), up("dir")],
                false,
            )
            .await
            .unwrap(),
    );
    assert_eq!(got, ["written", "written", "written", "written"]);
    // A bundle exported `--since` an earlier point lists each key where it
    // first changed, with its state now: the delete that frees a path may
    // come after the file that needs it, and the batch still applies.
    let r = i.send("PUT", "/assets/files/w", Some(&w), &[], "x").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let got = outcomes(
        i.ferry
            .apply_each(&feed, vec![up("w/x"), del("w")], false)
            .await
            .unwrap(),
    );
    assert_eq!(got, ["written", "written"]);
    assert_eq!(
        i.send("GET", "/assets/files/w/x", None, &[], Body::empty())
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        i.send("GET", "/assets/files/w", None, &[], Body::empty())
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let listed = i
        .send(
            "GET",
            "/assets/files/",
            None,
            &[("accept", "application/json")],
            Body::empty(),
        )
        .await
        .json();
    let mut names: Vec<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("{}:{}", e["type"].as_str().unwrap(), e["name"].as_str().unwrap()))
        .collect();
    names.sort();
    assert_eq!(names, ["file:dir", "folder:fresh", "folder:p", "folder:w"]);
}
