#![allow(clippy::unwrap_used)]
mod common;

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
        r.text().contains("href=\"a/\"") && r.text().contains("top.txt"),
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
    ] {
        let r = i.send("PUT", bad, Some(&w), &[], "evil").await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.text());
        assert!(r.text().contains("invalid asset path"), "{bad}: {}", r.text());
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
    assert_eq!(
        i.send("PUT", "/assets/secret/f", Some(&scoped), &[], "x")
            .await
            .status,
        StatusCode::FORBIDDEN
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
        StatusCode::FORBIDDEN
    );

    // A revoked key stops working at once.
    i.ferry.delete_key("reader").await.unwrap();
    assert_eq!(
        i.send("GET", "/assets/secret/f", Some(&reader), &[], Body::empty())
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    // Unknown feed, and a feed of another type.
    assert_eq!(i.get("/assets/nope/f").await.status, StatusCode::NOT_FOUND);
    i.feed("pkgs", FeedType::Npm, false).await;
    assert_eq!(i.get("/assets/pkgs/f").await.status, StatusCode::NOT_FOUND);
}

fn base64_encode(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}
