#![allow(clippy::unwrap_used)]
use crate::common;

use axum::body::Body;
use axum::http::StatusCode;
use common::{ADMIN, Instance};
use ferry_store::Permission;
use ferry_types::FeedType;

const JSON: (&str, &str) = ("content-type", "application/json");

#[tokio::test]
async fn feeds_crud_needs_admin() {
    let i = Instance::new().await;
    let body = r#"{"name":"npm-main","type":"npm","private":true}"#;
    assert_eq!(
        i.send("POST", "/api/v1/feeds", None, &[JSON], body).await.status,
        StatusCode::UNAUTHORIZED
    );
    let writer = i.key("w", Permission::Write, None).await;
    assert_eq!(
        i.send("POST", "/api/v1/feeds", Some(&writer), &[JSON], body)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let r = i.send("POST", "/api/v1/feeds", Some(ADMIN), &[JSON], body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(r.json()["type"], "npm");
    let r = i.send("POST", "/api/v1/feeds", Some(ADMIN), &[JSON], body).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(r.json()["error"].as_str().unwrap().contains("already exists"));

    for (bad, why) in [
        (r#"{"name":"Bad Name","type":"npm"}"#, "feed name"),
        (r#"{"name":"ok","type":"maven"}"#, "feed type"),
        (r#"{"name":"ok"}"#, "type"),
        ("not json", "JSON"),
    ] {
        let r = i.send("POST", "/api/v1/feeds", Some(ADMIN), &[JSON], bad).await;
        assert_eq!(r.status.as_u16() / 100, 4, "{bad}");
        assert!(
            r.json()["error"].as_str().unwrap().contains(why),
            "{bad}: {}",
            r.text()
        );
    }

    let list = i
        .send("GET", "/api/v1/feeds", Some(ADMIN), &[], Body::empty())
        .await
        .json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(
        i.send(
            "DELETE",
            "/api/v1/feeds/npm-main",
            Some(ADMIN),
            &[],
            Body::empty()
        )
        .await
        .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        i.send(
            "DELETE",
            "/api/v1/feeds/npm-main",
            Some(ADMIN),
            &[],
            Body::empty()
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn keys_are_shown_once_and_scoped() {
    let i = Instance::new().await;
    i.feed("files", FeedType::Assets, false).await;
    let r = i
        .send(
            "POST",
            "/api/v1/keys",
            Some(ADMIN),
            &[JSON],
            r#"{"name":"ci","permission":"write","feeds":["files"]}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let secret = r.json()["key"].as_str().unwrap().to_string();
    assert_eq!(
        i.send("PUT", "/assets/files/x", Some(&secret), &[], "x")
            .await
            .status,
        StatusCode::CREATED
    );
    let listed = i
        .send("GET", "/api/v1/keys", Some(ADMIN), &[], Body::empty())
        .await;
    assert!(!listed.text().contains(&secret), "secret listed");
    assert!(listed.text().contains("\"ci\""));
    let r = i
        .send(
            "POST",
            "/api/v1/keys",
            Some(ADMIN),
            &[JSON],
            r#"{"name":"x","permission":"root"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        i.send("DELETE", "/api/v1/keys/ci", Some(ADMIN), &[], Body::empty())
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        i.send("PUT", "/assets/files/y", Some(&secret), &[], "y")
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn gc_removes_only_unreferenced_blobs() {
    let i = Instance::with_config(ferry_core::Config {
        blob_lease: std::time::Duration::ZERO,
        ..Default::default()
    })
    .await;
    i.feed("files", FeedType::Assets, false).await;
    i.send("PUT", "/assets/files/keep", Some(ADMIN), &[], "keep me")
        .await;
    i.send("PUT", "/assets/files/drop", Some(ADMIN), &[], "drop me")
        .await;
    i.send("PUT", "/assets/files/drop", Some(ADMIN), &[], "replaced")
        .await;
    let r = i
        .send("POST", "/api/v1/gc", Some(ADMIN), &[], Body::empty())
        .await;
    assert_eq!(r.json()["blobs_deleted"], 1, "{}", r.text());
    assert_eq!(i.get("/assets/files/keep").await.body, b"keep me");
    assert_eq!(i.get("/assets/files/drop").await.body, b"replaced");
    i.send("DELETE", "/assets/files/keep", Some(ADMIN), &[], Body::empty())
        .await;
    let r = i
        .send("POST", "/api/v1/gc", Some(ADMIN), &[], Body::empty())
        .await;
    assert_eq!(r.json()["blobs_deleted"], 1);
    let r = i
        .send("POST", "/api/v1/gc", Some(ADMIN), &[], Body::empty())
        .await;
    assert_eq!(r.json()["blobs_deleted"], 0);
}

#[tokio::test]
async fn openapi_describes_every_management_route() {
    let i = Instance::new().await;
    let doc = i.get("/api/v1/openapi.json").await.json();
    assert_eq!(doc["openapi"], "3.1.0");
    let src = [
        include_str!("../../src/mgmt.rs"),
        include_str!("../../src/mgmt_replication.rs"),
        include_str!("../../src/oci.rs"),
    ]
    .concat();
    for line in src
        .lines()
        .filter(|l| l.trim_start().starts_with(".route(\"/api/v1/") && !l.contains("openapi"))
    {
        let path = line.split('"').nth(1).unwrap();
        assert!(
            doc["paths"].get(path).is_some(),
            "route {path} missing from the OpenAPI document"
        );
    }
}

#[tokio::test]
async fn operations_endpoints() {
    let i = Instance::new().await;
    assert_eq!(i.get("/health").await.status, StatusCode::OK);
    assert_eq!(i.get("/ready").await.status, StatusCode::OK);
    i.get("/health").await;
    // Metrics name private feeds and replications: they need a key for
    // every feed (any permission) unless made public.
    let m = i.get("/metrics").await;
    assert_eq!(m.status, StatusCode::UNAUTHORIZED);
    assert!(m.header("www-authenticate").is_some());
    let reader = i.key("scraper", Permission::Read, None).await;
    let m = i.send("GET", "/metrics", Some(&reader), &[], Body::empty()).await;
    assert_eq!(m.status, StatusCode::OK);
    assert!(m.text().contains("ferry_http_requests_total"), "{}", m.text());
}

/// A client inventing request methods cannot add metric series: every
/// method Ferry does not route is counted as `OTHER`, while the routed
/// ones keep their names, with the route's template and the status.
#[tokio::test]
async fn request_metrics_keep_a_bounded_set_of_labels() {
    let i = Instance::new().await;
    i.feed("labels", ferry_types::FeedType::Assets, false).await;
    for n in 0..50 {
        let method = format!("BREW{n}");
        let r = i
            .send(&method, "/assets/labels/tea.txt", None, &[], Body::empty())
            .await;
        assert!(r.status.is_client_error(), "{method}: {}", r.status);
    }
    assert_eq!(
        i.get("/assets/labels/none.txt").await.status,
        StatusCode::NOT_FOUND
    );
    let reader = i.key("scraper", Permission::Read, None).await;
    let m = i.send("GET", "/metrics", Some(&reader), &[], Body::empty()).await;
    assert_eq!(m.status, StatusCode::OK);
    let text = m.text();
    assert!(
        !text.contains("BREW"),
        "an invented method became a label:\n{text}"
    );
    let series = |method: &str| {
        text.lines()
            .filter(|l| {
                l.starts_with("ferry_http_requests_total{") && l.contains(&format!("method=\"{method}\""))
            })
            .count()
    };
    assert!(series("OTHER") >= 1, "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("ferry_http_requests_total{")
            && l.contains("method=\"GET\"")
            && l.contains("route=\"/assets/{feed}/{*path}\"")
            && l.contains("status=\"404\"")),
        "{text}"
    );
}

/// An OCI feed's name begins every image reference in it, so it must be a
/// valid OCI repository name component; other feed types keep the wider
/// feed name rules.
#[tokio::test]
async fn an_oci_feed_name_must_be_a_repository_name_component() {
    let i = Instance::new().await;
    let create = |name: &'static str, ty: &'static str| {
        let i = &i;
        async move {
            let body = format!(r#"{{"name":"{name}","type":"{ty}"}}"#);
            i.send("POST", "/api/v1/feeds", Some(ADMIN), &[JSON], body).await
        }
    };
    for bad in ["x-", "a..b", "a._b", "a___b", "img."] {
        let r = create(bad, "oci").await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.text());
        assert!(
            r.text().contains("cannot name an OCI feed"),
            "{bad}: {}",
            r.text()
        );
    }
    for good in ["a.b", "a_b", "a__b", "a--b", "images2"] {
        let r = create(good, "oci").await;
        assert_eq!(r.status, StatusCode::CREATED, "{good}: {}", r.text());
    }
    // Not an OCI feed: the feed name rules alone.
    assert_eq!(create("x-", "assets").await.status, StatusCode::CREATED);
}
