//! The replication API as a peer sees it, in process: tokens, the
//! handshake's refusals, what each mode lets a peer read and write, change
//! paging and long polling, and the run-time log level.
#![allow(clippy::unwrap_used)]
use crate::common;

use axum::body::Body;
use axum::http::StatusCode;
use common::{ADMIN, Instance};
use ferry_types::FeedType;
use serde_json::{Value, json};

const JSON: (&str, &str) = ("content-type", "application/json");

fn handshake(mode: Value, instance: &str) -> String {
    json!({
        "protocol_versions": [1],
        "instance_id": instance,
        "ferry_version": "test",
        "mode": mode,
        "feeds": [{ "outgoing": "files", "incoming": "files", "type": "assets" }],
    })
    .to_string()
}

const PULL: &str = r#"{"name":"pull","flows":{"pull_missing":true,"push_missing":false,"delete_local":true,"delete_remote":false}}"#;
const OTHER: &str = "0123456789abcdef0123456789abcdef";

#[tokio::test]
async fn tokens_handshake_and_mode_permissions() {
    let i = Instance::new().await;
    i.feed("files", FeedType::Assets, false).await;
    let token = i.incoming("edge", &["files"], "push").await;

    // No token, a wrong one, and a malformed one: 401.
    let hs = handshake(serde_json::from_str(PULL).unwrap(), OTHER);
    assert_eq!(
        i.send("POST", "/api/replication/v1/handshake", None, &[JSON], hs.clone())
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let wrong = format!("{}{}", &token[..token.len() - 4], "0000");
    assert_eq!(
        i.send(
            "POST",
            "/api/replication/v1/handshake",
            Some(&wrong),
            &[JSON],
            hs.clone()
        )
        .await
        .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        i.send(
            "POST",
            "/api/replication/v1/handshake",
            Some("fst_x"),
            &[JSON],
            hs.clone()
        )
        .await
        .status,
        StatusCode::UNAUTHORIZED
    );

    let r = i
        .send("POST", "/api/replication/v1/handshake", Some(&token), &[JSON], hs)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["protocol_version"], 1);

    // A mirror peer against a push hub: refused, naming both settings and the fix.
    let mirror = json!({"name":"mirror","flows":{"pull_missing":true,"push_missing":true,"delete_local":true,"delete_remote":true}});
    let r = i
        .send(
            "POST",
            "/api/replication/v1/handshake",
            Some(&token),
            &[JSON],
            handshake(mirror, OTHER),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let msg = r.json()["error"].as_str().unwrap().to_string();
    assert!(
        msg.contains("mirror") && msg.contains("push") && msg.contains("set the outgoing side to pull"),
        "{msg}"
    );

    // A mode named pull whose flows are push's is no mode at all: 400.
    let forged = json!({"name":"pull","flows":{"pull_missing":false,"push_missing":true,"delete_local":false,"delete_remote":true}});
    let r = i
        .send(
            "POST",
            "/api/replication/v1/handshake",
            Some(&token),
            &[JSON],
            handshake(forged, OTHER),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(r.text().contains("named pull but its flows"), "{}", r.text());

    // The same instance: refused.
    let me = i.ferry.instance_id().to_string();
    let r = i
        .send(
            "POST",
            "/api/replication/v1/handshake",
            Some(&token),
            &[JSON],
            handshake(serde_json::from_str(PULL).unwrap(), &me),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(r.text().contains("same instance"), "{}", r.text());

    // No common protocol version.
    let mut v: Value = serde_json::from_str(&handshake(serde_json::from_str(PULL).unwrap(), OTHER)).unwrap();
    v["protocol_versions"] = json!([7]);
    let r = i
        .send(
            "POST",
            "/api/replication/v1/handshake",
            Some(&token),
            &[JSON],
            v.to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text().contains("protocol"), "{}", r.text());

    // A push hub serves reads only.
    let apply = json!({ "entries": [] }).to_string();
    let r = i
        .send(
            "POST",
            "/api/replication/v1/feeds/files/apply",
            Some(&token),
            &[JSON],
            apply,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = i
        .send(
            "POST",
            "/api/replication/v1/blobs/missing",
            Some(&token),
            &[JSON],
            r#"{"digests":[]}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Feeds outside the replication are out of reach.
    i.feed("secret", FeedType::Assets, false).await;
    let r = i
        .send(
            "GET",
            "/api/replication/v1/feeds/secret/changes",
            Some(&token),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // A pull-only replication here (it receives) does not serve reads.
    let pull_token = i.incoming("inbound", &["files"], "pull").await;
    let r = i
        .send(
            "GET",
            "/api/replication/v1/feeds/files/changes",
            Some(&pull_token),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // Revocation takes effect at once; other tokens of the same replication stay valid.
    let second = i
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
    let id = &token[4..20];
    let r = i
        .send(
            "DELETE",
            &format!("/api/v1/replications/edge/tokens/{id}"),
            Some(ADMIN),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = i
        .send(
            "GET",
            "/api/replication/v1/feeds/files/changes",
            Some(&token),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = i
        .send(
            "GET",
            "/api/replication/v1/feeds/files/changes",
            Some(&second),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn changes_page_by_cursor_and_long_poll() {
    let i = Instance::new().await;
    i.feed("files", FeedType::Assets, false).await;
    let token = i.incoming("edge", &["files"], "push").await;
    for n in 0..5 {
        i.send(
            "PUT",
            &format!("/assets/files/f{n}"),
            Some(ADMIN),
            &[],
            format!("v{n}"),
        )
        .await;
    }
    i.send("DELETE", "/assets/files/f0", Some(ADMIN), &[], Body::empty())
        .await;

    let page = |since: i64, limit: usize| {
        let uri = format!("/api/replication/v1/feeds/files/changes?since={since}&limit={limit}");
        let (i, token) = (&i, token.clone());
        async move { i.send("GET", &uri, Some(&token), &[], Body::empty()).await.json() }
    };
    let first = page(0, 2).await;
    assert_eq!(first["entries"].as_array().unwrap().len(), 2);
    assert_eq!(first["last_seq"], 6);
    // Entries carry the current state: f0 is a tombstone already.
    assert_eq!(first["entries"][0]["key"], "f0");
    assert_eq!(first["entries"][0]["deleted"], true);
    let rest = page(first["next"].as_i64().unwrap(), 100).await;
    assert_eq!(rest["entries"].as_array().unwrap().len(), 4);
    assert_eq!(rest["next"], 6);
    // Bytes of what changed after a given end (a reader's later pages):
    // f3 and f4 (2 bytes each) after seq 3, f4 after 4 (f0's deletion at 6
    // has none), nothing when the log ends there.
    let late = |after: i64| {
        let uri = format!("/api/replication/v1/feeds/files/changes?since=2&limit=1&bytes_after={after}");
        let (i, token) = (&i, token.clone());
        async move { i.send("GET", &uri, Some(&token), &[], Body::empty()).await.json() }
    };
    assert_eq!(late(3).await["bytes_late"], 4);
    assert_eq!(late(4).await["bytes_late"], 2);
    assert_eq!(late(6).await["bytes_late"], 0);
    assert!(page(2, 1).await.get("bytes_late").is_none());

    // A long poll returns as soon as something is published.
    let started = std::time::Instant::now();
    let waiter = {
        let router = i.router.clone();
        let token = token.clone();
        tokio::spawn(async move {
            use tower::ServiceExt;
            let req = axum::http::Request::get("/api/replication/v1/feeds/files/changes?since=6&wait=20")
                .header("authorization", format!("Bearer {token}"))
                .body(Body::empty())
                .unwrap();
            let resp = router.oneshot(req).await.unwrap();
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap()
                .to_bytes();
            serde_json::from_slice::<Value>(&body).unwrap()
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    i.send("PUT", "/assets/files/late", Some(ADMIN), &[], "late")
        .await;
    let woke = waiter.await.unwrap();
    assert_eq!(woke["entries"][0]["key"], "late");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "long poll did not wake"
    );

    // Blobs are served only when referenced by the replication's feeds.
    let digest = woke["entries"][0]["blobs"][0].as_str().unwrap().to_string();
    let r = i
        .send(
            "GET",
            &format!("/api/replication/v1/blobs/{digest}"),
            Some(&token),
            &[("range", "bytes=1-")],
            Body::empty(),
        )
        .await;
    assert_eq!(
        (r.status, r.body.as_slice()),
        (StatusCode::PARTIAL_CONTENT, b"ate".as_slice())
    );
    let other = ferry_types::Digest::of(b"not in any feed");
    let r = i
        .send(
            "GET",
            &format!("/api/replication/v1/blobs/{other}"),
            Some(&token),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn replication_log_level_changes_at_run_time() {
    let i = Instance::new().await;
    i.feed("files", FeedType::Assets, false).await;
    let token = i.incoming("edge", &["files"], "push").await;
    let hs = handshake(serde_json::from_str(PULL).unwrap(), OTHER);
    i.send(
        "POST",
        "/api/replication/v1/handshake",
        Some(&token),
        &[JSON],
        hs.clone(),
    )
    .await;
    let logs = i
        .send("GET", "/api/v1/logs/replication", Some(ADMIN), &[], Body::empty())
        .await
        .json();
    assert!(
        !logs.to_string().contains("handshake from"),
        "debug lines hidden at info: {logs}"
    );

    let r = i
        .send(
            "PUT",
            "/api/v1/logs/replication/level",
            Some(ADMIN),
            &[JSON],
            r#"{"level":"debug"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    i.send("POST", "/api/replication/v1/handshake", Some(&token), &[JSON], hs)
        .await;
    let logs = i
        .send("GET", "/api/v1/logs/replication", Some(ADMIN), &[], Body::empty())
        .await
        .json();
    assert!(logs.to_string().contains("handshake from"), "{logs}");
    assert_eq!(logs["min_level"], "debug");
    assert!(
        logs["lines"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["category"] == "replication")
    );

    let r = i
        .send(
            "PUT",
            "/api/v1/logs/replication/level",
            Some(ADMIN),
            &[JSON],
            r#"{"level":"loud"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = i
        .send(
            "PUT",
            "/api/v1/logs/replication/level",
            None,
            &[JSON],
            r#"{"level":"debug"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn updates_refuse_bad_bodies_and_change_only_what_they_name() {
    let i = Instance::new().await;
    i.feed("files", FeedType::Assets, false).await;
    i.incoming("edge", &["files"], "push").await;
    let patch = |name: &str, body: &str| {
        let (path, body) = (format!("/api/v1/replications/{name}"), body.to_string());
        let i = &i;
        async move { i.send("PATCH", &path, Some(ADMIN), &[JSON], body).await }
    };
    for (body, why) in [
        ("{", "malformed JSON"),
        (r#"{"mode":"mirror"}"#, "the mode does not change here"),
        (r#"{"interval":0}"#, "interval"),
        (r#"{"include":["["]}"#, "a broken glob"),
        (
            r#"{"token":"fst_1111111111111111_dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd"}"#,
            "an incoming replication has no token to set",
        ),
        (
            r#"{"delete_guard":{"max_share":2,"max_items":1}}"#,
            "a share over 1",
        ),
    ] {
        let r = patch("edge", body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{why}: {}", r.text());
        assert!(!r.text().is_empty(), "{why}: no reason given");
    }
    assert_eq!(
        patch("nope", r#"{"interval":5}"#).await.status,
        StatusCode::NOT_FOUND
    );
    // Without a key, or with a read-only one: refused.
    let r = i
        .send(
            "PATCH",
            "/api/v1/replications/edge",
            None,
            &[JSON],
            r#"{"interval":5}"#.to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    let r = patch("edge", r#"{"interval":300,"exclude":["tmp/**"]}"#).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let cfg = &r.json()["config"];
    assert_eq!(cfg["interval_secs"], 300);
    assert_eq!(cfg["exclude"], json!(["tmp/**"]));
    assert_eq!(cfg["mode"]["name"], "push", "{cfg}");
    assert_eq!(cfg["feeds"][0]["local"], "files");
}

/// A server that answers every request with `status`, `content_type` and
/// `body` (an nginx error page, an S3 endpoint, a plain web site).
async fn foreign_server(status: u16, content_type: &'static str, body: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let status = StatusCode::from_u16(status).unwrap();
    let app =
        axum::Router::new().fallback(move || async move { (status, [("content-type", content_type)], body) });
    tokio::spawn(async move {
        axum::serve(listener, app).await.ok();
    });
    url
}

/// Creating an outgoing replication through the API: an end that answered
/// but is not a Ferry instance is refused, naming what it answered, and
/// nothing is created; one that cannot be reached yet is created (it may
/// not be up yet) and retried.
#[tokio::test]
async fn an_outgoing_replication_to_something_that_is_not_ferry_is_refused() {
    let i = Instance::new().await;
    i.feed("files", FeedType::Assets, false).await;
    let s3 = foreign_server(
        400,
        "application/xml",
        "<?xml version=\"1.0\"?><Error><Code>InvalidRequest</Code></Error>",
    )
    .await;
    let nginx = foreign_server(
        404,
        "text/html",
        "<html><body><h1>404 Not Found</h1></body></html>",
    )
    .await;
    let site = foreign_server(200, "text/html", "<html><body>Welcome</body></html>").await;
    for (url, status) in [(&s3, "HTTP 400"), (&nginx, "HTTP 404"), (&site, "HTTP 200")] {
        let body = json!({ "name": "to-hub", "feeds": ["files"], "outgoing": url, "token": "fst_0000000000000000_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", "mode": "pull" });
        let r = i
            .send(
                "POST",
                "/api/v1/replications",
                Some(ADMIN),
                &[JSON],
                body.to_string(),
            )
            .await;
        assert!(r.status.is_client_error(), "{url}: {} {}", r.status, r.text());
        let t = r.text();
        assert!(
            t.contains("not a Ferry instance") && t.contains(status),
            "{url}: {t}"
        );
        let r = i
            .send("GET", "/api/v1/replications/to-hub", Some(ADMIN), &[], "")
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{url}: created anyway");
    }
    // Nothing listens there yet: created, to be tried again.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let body = json!({ "name": "to-hub", "feeds": ["files"], "outgoing": closed, "token": "fst_0000000000000000_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", "mode": "pull" });
    let r = i
        .send(
            "POST",
            "/api/v1/replications",
            Some(ADMIN),
            &[JSON],
            body.to_string(),
        )
        .await;
    assert!(r.status.is_success(), "{} {}", r.status, r.text());
}

/// A feed a replication names cannot be deleted (409 naming the
/// replication): the replication would go on naming a feed that is not
/// there, and `config export` would write a file that no longer applies.
/// Once the replication is gone the feed can go.
#[tokio::test]
async fn a_replicated_feed_is_not_deleted_under_its_replication() {
    let i = Instance::new().await;
    i.feed("rf", FeedType::Assets, false).await;
    i.incoming("inc", &["rf"], "push").await;
    let r = i
        .send("DELETE", "/api/v1/feeds/rf", Some(ADMIN), &[], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    assert!(
        r.text().contains("replicated by inc") && r.text().contains("ferry replication delete"),
        "{}",
        r.text()
    );
    assert_eq!(i.get("/api/v1/feeds").await.status, StatusCode::UNAUTHORIZED);
    let feeds = i
        .send("GET", "/api/v1/feeds", Some(ADMIN), &[], Body::empty())
        .await;
    assert!(feeds.text().contains("\"rf\""), "the feed went: {}", feeds.text());
    let r = i
        .send(
            "DELETE",
            "/api/v1/replications/inc",
            Some(ADMIN),
            &[],
            Body::empty(),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text());
    let r = i
        .send("DELETE", "/api/v1/feeds/rf", Some(ADMIN), &[], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
}

/// A malformed query parameter of the replication API is a 400 in the
/// API's JSON error shape naming the parameter, as every other refusal
/// there is (it was the query parser's message as plain text).
#[tokio::test]
async fn bad_query_parameters_are_refused_in_json() {
    let i = Instance::new().await;
    i.feed("files", FeedType::Assets, false).await;
    let token = i.incoming("edge", &["files"], "push").await;
    for (uri, names) in [
        ("/api/replication/v1/feeds/files/changes?since=abc", "since"),
        ("/api/replication/v1/feeds/files/changes?anchor=zzz", "anchor"),
        ("/api/replication/v1/feeds/files/changes?limit=-3", "limit"),
        ("/api/replication/v1/feeds/files/entries?limit=x", "limit"),
    ] {
        let r = i.send("GET", uri, Some(&token), &[], Body::empty()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{uri}: {}", r.text());
        assert_eq!(r.header("content-type"), Some("application/json"), "{uri}");
        let why = r.json()["error"].as_str().unwrap_or_default().to_owned();
        assert!(
            why.contains("bad query string") && why.contains(names),
            "{uri}: {why}"
        );
    }
}

/// One sync token cannot hold every connection with long polls: past its
/// share (here 3), a long poll is answered 429 at once, with the reason;
/// another token still waits, and a slot freed is taken again.
#[tokio::test]
async fn a_token_holds_at_most_its_share_of_long_polls() {
    let i = Instance::with_config(ferry_core::Config {
        long_polls_per_token: 3,
        ..Default::default()
    })
    .await;
    i.feed("files", FeedType::Assets, false).await;
    let token = i.incoming("edge", &["files"], "push").await;
    let other = i.incoming("edge2", &["files"], "push").await;
    i.send("PUT", "/assets/files/first", Some(ADMIN), &[], "1").await;
    let poll_from = |token: String, since: u32| {
        let router = i.router.clone();
        tokio::spawn(async move {
            use tower::ServiceExt;
            let uri = format!("/api/replication/v1/feeds/files/changes?since={since}&wait=30");
            let req = axum::http::Request::get(uri)
                .header("authorization", format!("Bearer {token}"))
                .body(Body::empty())
                .unwrap();
            let resp = router.oneshot(req).await.unwrap();
            let status = resp.status();
            let retry = resp
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap()
                .to_bytes();
            (
                status,
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&body),
                    retry.map(|r| format!(" retry-after={r}")).unwrap_or_default()
                ),
            )
        })
    };
    let poll = |token: String| poll_from(token, 1);
    let waiting: Vec<_> = (0..3).map(|_| poll(token.clone())).collect();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(waiting.iter().all(|w| !w.is_finished()), "the first three wait");
    let (status, body) = poll(token.clone()).await.unwrap();
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(body.contains("long polls waiting"), "{body}");
    assert!(body.ends_with(" retry-after=5"), "{body}");
    // Another token's long poll waits as usual.
    let theirs = poll(other.clone());
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!theirs.is_finished());
    // A publish answers every waiting poll; the slots are free again.
    i.send("PUT", "/assets/files/a", Some(ADMIN), &[], "a").await;
    for w in waiting {
        assert_eq!(w.await.unwrap().0, StatusCode::OK);
    }
    assert_eq!(theirs.await.unwrap().0, StatusCode::OK);
    let again = poll_from(token.clone(), 2);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!again.is_finished(), "a freed slot is taken again");
    again.abort();
}

/// One sync token cannot pin memory on every connection with blob
/// transfers its holder does not read: past its share (here 2), a blob GET
/// or a batch is answered 429 with the reason at once; another token's
/// transfers go on, a transfer given up frees its slot, and the bytes of
/// those held are whole when they are read at last.
#[tokio::test]
async fn a_token_holds_at_most_its_share_of_blob_transfers() {
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;
    let i = Instance::with_config(ferry_core::Config {
        transfers_per_token: 2,
        ..Default::default()
    })
    .await;
    i.feed("files", FeedType::Assets, false).await;
    let token = i.incoming("edge", &["files"], "push").await;
    let other = i.incoming("edge2", &["files"], "push").await;
    let content: Vec<u8> = (0..(3usize << 20)).map(|n| (n % 251) as u8).collect();
    let r = i
        .send("PUT", "/assets/files/big.bin", Some(ADMIN), &[], content.clone())
        .await;
    assert!(r.status.is_success(), "{}", r.text());
    let digest = ferry_types::Digest::of(&content).to_string();
    let blob = format!("/api/replication/v1/blobs/{digest}");
    let batch = json!({ "blobs": [{ "digest": digest }] }).to_string();
    // A transfer as a peer starts it: the answer's head, its body not read.
    let start = |token: String, batched: bool| {
        let router = i.router.clone();
        let (blob, batch) = (blob.clone(), batch.clone());
        async move {
            let req = if batched {
                axum::http::Request::post("/api/replication/v1/blobs/batch")
                    .header("content-type", "application/json")
                    .header("authorization", format!("Bearer {token}"))
                    .body(Body::from(batch))
            } else {
                axum::http::Request::get(blob)
                    .header("authorization", format!("Bearer {token}"))
                    .body(Body::empty())
            };
            router.oneshot(req.unwrap()).await.unwrap()
        }
    };
    let first = start(token.clone(), false).await;
    assert_eq!(first.status(), StatusCode::OK);
    let second = start(token.clone(), true).await;
    assert_eq!(second.status(), StatusCode::OK);
    for batched in [false, true] {
        let refused = start(token.clone(), batched).await;
        assert_eq!(
            refused.status(),
            StatusCode::TOO_MANY_REQUESTS,
            "batch: {batched}"
        );
        let why = refused.into_body().collect().await.unwrap().to_bytes();
        let why = String::from_utf8_lossy(&why);
        assert!(why.contains("2 blob transfers in progress"), "{why}");
    }
    // A HEAD sends no body: not counted, answered while the share is full.
    let head = i.send("HEAD", &blob, Some(&token), &[], Body::empty()).await;
    assert_eq!(head.status, StatusCode::OK);
    // The replication log says it too.
    let log = i
        .send("GET", "/api/v1/logs/replication", Some(ADMIN), &[], Body::empty())
        .await;
    assert!(
        log.text().contains("2 blob transfers in progress"),
        "{}",
        log.text()
    );
    // Another token's transfer is not held back by this one's.
    let theirs = start(other.clone(), false).await;
    assert_eq!(theirs.status(), StatusCode::OK);
    let got = theirs.into_body().collect().await.unwrap().to_bytes();
    assert!(got[..] == content[..]);
    // A transfer given up (its body dropped unread) frees its slot.
    drop(first);
    let again = start(token.clone(), false).await;
    assert_eq!(again.status(), StatusCode::OK);
    let got = again.into_body().collect().await.unwrap().to_bytes();
    assert!(got[..] == content[..], "the blob, whole");
    // The batch held all along still brings its frame whole.
    let frames = second.into_body().collect().await.unwrap().to_bytes();
    assert!(frames.len() > content.len(), "{} bytes of frames", frames.len());
    assert!(frames.ends_with(&content[content.len() - 4096..]));
    // Every slot is free again: both kinds start.
    assert_eq!(start(token.clone(), true).await.status(), StatusCode::OK);
    assert_eq!(start(token.clone(), false).await.status(), StatusCode::OK);
}
