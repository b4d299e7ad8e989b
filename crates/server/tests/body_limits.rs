//! JSON bodies that are read whole are capped: the management API at
//! 1 MiB, the replication API at 16 MiB. Past the cap: 413, before the
//! body is held.
#![allow(clippy::unwrap_used)]
mod common;

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
    let r = i.send("POST", "/api/v1/feeds", Some(ADMIN), &[JSON], big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());
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
