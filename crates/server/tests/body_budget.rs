//! Bodies read whole share one memory budget across connections (256 MiB),
//! a quarter of it at most per client address: sixteen bodies of 16 MiB
//! from four addresses being read at once hold all of it; a fifth from one
//! of them is refused at once (429), the next request with a body from
//! elsewhere waits for its share, then is answered 503 with the reason;
//! requests without a body (a long poll, a GET) never wait.
//! (A test binary of its own: the budget is one per process.)
#![allow(clippy::unwrap_used)]
mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{ADMIN, Instance};
use ferry_types::FeedType;
use tower::ServiceExt;

#[tokio::test]
async fn many_large_bodies_at_once_wait_for_the_shared_budget() {
    let i = Instance::new().await;
    i.feed("files", FeedType::Assets, false).await;
    let token = i.incoming("edge", &["files"], "mirror").await;
    // Sixteen pushes that declare just under 16 MiB and send a first byte,
    // then nothing: their bodies hold the whole budget while they are read.
    let mut senders = Vec::new();
    let mut held = Vec::new();
    let from = |n: u8| axum::extract::ConnectInfo(std::net::SocketAddr::from(([198, 51, 100, n], 40000)));
    for k in 0..16u8 {
        let (tx, rx) = futures::channel::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(1);
        let mut tx = tx;
        futures::SinkExt::send(&mut tx, Ok(bytes::Bytes::from_static(b"{")))
            .await
            .unwrap();
        senders.push(tx);
        let req = Request::post("/api/replication/v1/feeds/files/apply")
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .header("content-length", (16 << 20) - 1)
            .body(Body::from_stream(rx))
            .unwrap();
        // Four addresses, four bodies each: each address at its share (a
        // quarter), the budget full.
        let mut req = req;
        req.extensions_mut().insert(from(k % 4));
        let router = i.router.clone();
        held.push(tokio::spawn(async move {
            router.oneshot(req).await.unwrap().status()
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // A fifth large body from one of those addresses: past its share,
    // refused at once.
    let started = std::time::Instant::now();
    let mut req = Request::post("/api/replication/v1/feeds/files/apply")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Body::from(vec![b' '; 1 << 20]))
        .unwrap();
    req.extensions_mut().insert(from(0));
    let r = i.router.clone().oneshot(req).await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    // A long poll and a plain GET go on at once.
    let started = std::time::Instant::now();
    let r = i
        .send(
            "GET",
            "/api/replication/v1/feeds/files/changes?since=0",
            Some(&token),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = i
        .send("GET", "/api/v1/feeds", Some(ADMIN), &[], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    // A management request with a body waits, then is told to retry.
    let r = i
        .send(
            "POST",
            "/api/v1/feeds",
            Some(ADMIN),
            &[("content-type", "application/json")],
            r#"{"name":"later","type":"assets"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert!(r.text().contains("too many large request bodies"), "{}", r.text());
    // The held bodies end (their clients went away): the budget is back.
    drop(senders);
    for h in held {
        assert!(h.await.unwrap().is_client_error());
    }
    let r = i
        .send(
            "POST",
            "/api/v1/feeds",
            Some(ADMIN),
            &[("content-type", "application/json")],
            r#"{"name":"later","type":"assets"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
}
