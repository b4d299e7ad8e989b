//! JSON bodies that are read whole are capped: the management API at
//! 1 MiB, the replication API at 16 MiB. Past the cap: 413, before the
//! body is held.
#![allow(clippy::unwrap_used)]
use crate::common;

use axum::body::Body;
use axum::http::StatusCode;
use common::{ADMIN, Instance};
use ferry_types::FeedType;
use serde_json::json;

const JSON: (&str, &str) = ("content-type", "application/json");

#[tokio::test]
async fn whole_json_bodies_are_capped() {
    let i = Instance::new().await;
    i.feed("files", FeedType::Assets, false).await;
    // Management: a feed whose "name" is 2 MiB.
    let big = json!({ "name": "x".repeat(2 << 20), "type": "assets" }).to_string();
    let r = i
        .send("POST", "/api/v1/feeds", Some(ADMIN), &[JSON], big.clone())
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());
    // The same without a declared length (chunked): read up to the cap,
    // refused past it, and the cap is named as for a declared one.
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
        big.as_bytes().chunks(64 << 10).map(|c| Ok(c.to_vec())).collect();
    let r = i
        .send(
            "POST",
            "/api/v1/feeds",
            Some(ADMIN),
            &[JSON],
            Body::from_stream(futures::stream::iter(pieces)),
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());
    assert!(
        r.text().contains("exceeds the limit of 1048576 bytes"),
        "{}",
        r.text()
    );
    let r = i
        .send(
            "POST",
            "/api/v1/feeds",
            Some(ADMIN),
            &[JSON],
            json!({ "name": "ok", "type": "assets" }).to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());

    // Replication: an apply body of 17 MiB from a pushing peer.
    let body = json!({ "name": "inbound", "feeds": ["files"], "mode": "pull" }).to_string();
    let r = i
        .send("POST", "/api/v1/replications", Some(ADMIN), &[JSON], body)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let token = i
        .send(
            "POST",
            "/api/v1/replications/inbound/tokens",
            Some(ADMIN),
            &[],
            Body::empty(),
        )
        .await
        .json()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let huge = json!({ "entries": [{ "key": "k", "meta": "m".repeat(17 << 20) }] }).to_string();
    let r = i
        .send(
            "POST",
            "/api/replication/v1/feeds/files/apply",
            Some(&token),
            &[JSON],
            huge,
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());
}

/// Lists in replication API bodies are counted as they are read: one
/// element past the endpoint's limit is refused with 400 naming it (not
/// parsed whole first: 3.9 million keys within 16 MiB once took the hub to
/// half a gigabyte per request), whatever the token may do.
#[tokio::test]
async fn over_long_lists_in_replication_bodies_are_refused_as_they_are_read() {
    let i = Instance::new().await;
    i.feed("files", FeedType::Assets, false).await;
    // A token that may only read (the hub pushes to it: the spoke pulls).
    let body = json!({ "name": "edge", "feeds": ["files"], "mode": "push" }).to_string();
    let r = i
        .send("POST", "/api/v1/replications", Some(ADMIN), &[JSON], body)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let token = i
        .send(
            "POST",
            "/api/v1/replications/edge/tokens",
            Some(ADMIN),
            &[],
            Body::empty(),
        )
        .await
        .json()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let keys = |n: usize| json!({ "keys": vec!["k"; n] }).to_string();
    let digest = format!("sha256:{}", "a".repeat(64));
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "/api/replication/v1/feeds/files/stamps",
            keys(1001),
            "at most 1000",
        ),
        (
            "/api/replication/v1/feeds/files/stamps",
            keys(3_900_000),
            "at most 1000",
        ),
        (
            "/api/replication/v1/feeds/files/entries",
            keys(1001),
            "at most 1000",
        ),
        (
            "/api/replication/v1/blobs/missing",
            json!({ "digests": vec![digest.as_str(); 10_001] }).to_string(),
            "at most 10000",
        ),
        (
            "/api/replication/v1/blobs/batch",
            json!({ "blobs": vec![json!({ "digest": digest }); 1001] }).to_string(),
            "at most 1000",
        ),
    ];
    for (path, body, says) in cases {
        let r = i.send("POST", path, Some(&token), &[JSON], body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}: {}", r.text());
        assert!(r.text().contains(says), "{path}: {}", r.text());
    }
    // Within the limits: answered.
    let r = i
        .send(
            "POST",
            "/api/replication/v1/feeds/files/stamps",
            Some(&token),
            &[JSON],
            keys(1000),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["stamps"].as_array().unwrap().len(), 1000);
}
