//! Configuration as code through the management API (`PUT`/`GET
//! /api/v1/config`), in process: what an apply creates, updates and leaves
//! alone, that a refused declaration changes nothing, the tokens an
//! incoming replication accepts ahead of time, and who may apply.
#![allow(clippy::unwrap_used)]
use crate::common;

use axum::http::StatusCode;
use common::{ADMIN, Instance};
use ferry_store::Permission;
use serde_json::{Value, json};

const JSON: (&str, &str) = ("content-type", "application/json");

async fn put(i: &Instance, key: Option<&str>, body: Value) -> common::Reply {
    i.send("PUT", "/api/v1/config", key, &[JSON], body.to_string())
        .await
}

async fn export(i: &Instance) -> Value {
    let r = i
        .send("GET", "/api/v1/config", Some(ADMIN), &[], String::new())
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()
}

fn hub() -> Value {
    json!({
        "feeds": [{ "name": "files", "type": "assets" }, { "name": "docs", "type": "assets", "private": true }],
        "replications": [{
            "name": "edge", "feeds": ["files", "docs"], "incoming": true, "mode": "push",
            "accept_tokens": [{ "id": "0123456789abcdef", "sha256": "ab".repeat(32) }],
            "line": 9
        }]
    })
}

#[tokio::test]
async fn apply_creates_updates_and_refuses_without_changing_anything() {
    let i = Instance::new().await;
    let r = put(&i, Some(ADMIN), hub()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert_eq!(v["feeds"], json!([["files", "created"], ["docs", "created"]]));
    assert_eq!(v["replications"], json!([["edge", "created"]]));
    assert_eq!(v["tokens_added"], 1);
    let first = export(&i).await;
    assert_eq!(
        first["replications"][0]["accept_tokens"][0]["id"],
        "0123456789abcdef"
    );
    let docs = first["feeds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "docs")
        .unwrap();
    assert_eq!(docs["private"], true);

    // The same again: nothing changes.
    let v = put(&i, Some(ADMIN), hub()).await.json();
    assert_eq!(v["replications"], json!([["edge", "unchanged"]]));
    assert_eq!(v["tokens_added"], 0);
    assert!(v.get("tokens_revoked").is_none(), "{v}");

    // An option changed: updated in place, tokens kept.
    let mut changed = hub();
    changed["replications"][0]["exclude"] = json!(["tmp/**"]);
    let v = put(&i, Some(ADMIN), changed).await.json();
    assert_eq!(v["replications"], json!([["edge", "updated"]]));
    let now = export(&i).await;
    assert_eq!(now["replications"][0]["exclude"], json!(["tmp/**"]));
    assert_eq!(
        now["replications"][0]["accept_tokens"],
        first["replications"][0]["accept_tokens"]
    );

    // Each refusal names the declaration (and its line) and changes nothing:
    // not even the new feed declared beside it.
    let before = export(&i).await;
    let refusals: Vec<(Value, &str)> = vec![
        (
            json!({ "feeds": [{ "name": "files", "type": "npm" }] }),
            "exists as assets",
        ),
        (
            json!({ "feeds": [{ "name": "docs", "type": "assets" }] }),
            "private",
        ),
        (
            json!({ "feeds": [{ "name": "Bad Name", "type": "assets" }] }),
            "Bad Name",
        ),
        (
            json!({ "feeds": [{ "name": "x", "type": "rubygems" }] }),
            "rubygems",
        ),
        (
            json!({ "replications": [{ "name": "edge", "feeds": ["files"], "mode": "push" }, { "name": "edge", "feeds": ["files"], "mode": "push" }] }),
            "declared twice",
        ),
        (
            json!({ "feeds": [{ "name": "fresh", "type": "npm" }], "replications": [{ "name": "r2", "feeds": ["fresh", "missing"], "mode": "push", "line": 12 }] }),
            "line 12: replication r2: feed missing",
        ),
        (
            json!({ "replications": [{ "name": "edge", "feeds": ["files"], "outgoing": "http://127.0.0.1:9", "token": format!("fst_0123456789abcdef_{}", "ef".repeat(32)), "mode": "pull" }] }),
            "direction",
        ),
        (
            json!({ "replications": [{ "name": "r3", "feeds": ["files"], "outgoing": "http://127.0.0.1:9", "token_file": "t", "mode": "pull" }] }),
            "token_file",
        ),
        (
            json!({ "replications": [{ "name": "r4", "feeds": ["files"], "mode": "push", "accept_tokens": [{ "id": "short", "sha256": "ab".repeat(32) }] }] }),
            "16 lowercase hex",
        ),
        (
            json!({ "replications": [{ "name": "r5", "feeds": ["files"], "mode": "push", "accept_tokens": [{ "id": "0123456789abcdef", "sha256": "cd".repeat(32) }] }] }),
            "another replication",
        ),
        (
            json!({ "replications": [{ "name": "r6", "feeds": ["files"], "mode": "sideways" }] }),
            "sideways",
        ),
        (json!({ "surprise": 1 }), "surprise"),
        (
            json!({ "replications": [{ "name": "r7", "feeds": ["files"], "mode": "push", "blob_sources": [{ "url": "http://127.0.0.1:10", "token": format!("fst_fedcba9876543210_{}", "cd".repeat(32)) }] }] }),
            "blob sources go with outgoing",
        ),
        (
            json!({ "replications": [{ "name": "r8", "feeds": ["files"], "outgoing": "http://127.0.0.1:9", "token": format!("fst_0123456789abcdef_{}", "ab".repeat(32)), "mode": "pull", "blob_sources": [{ "url": "http://127.0.0.1:10" }] }] }),
            "needs token, token_file or token_env",
        ),
        // The delete guard is held to the range `replication update` holds
        // it to, for a new replication and for the existing one.
        (
            json!({ "replications": [{ "name": "r9", "feeds": ["files"], "mode": "push", "delete_guard": { "max_share": -0.5, "max_items": 1 }, "line": 30 }] }),
            "line 30: replication r9: the delete guard's share must be between 0 and 1",
        ),
        (
            json!({ "replications": [{ "name": "edge", "feeds": ["files", "docs"], "incoming": true, "mode": "push", "delete_guard": { "max_share": 5.0, "max_items": 1 } }] }),
            "between 0 and 1",
        ),
        // In the file's words, not the CLI's flags.
        (
            json!({ "replications": [{ "name": "r10", "feeds": ["files"], "mode": "push", "interval": 0, "line": 40 }] }),
            "line 40: replication r10: interval must be at least 1 second",
        ),
        (
            json!({ "replications": [{ "name": "r11", "feeds": ["files"], "mode": "custom", "line": 50 }] }),
            "at least one of pull_missing, push_missing, delete_local, delete_remote",
        ),
    ];
    for (body, why) in refusals {
        let r = put(&i, Some(ADMIN), body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text());
        assert!(r.text().contains(why), "{why}: {}", r.text());
        assert!(!r.text().contains(" --"), "a CLI flag named: {}", r.text());
        assert_eq!(export(&i).await, before, "{body} changed something");
    }

    // prune in a file that declares no replication would delete them all
    // (a file cut short, the wrong file): refused, nothing changed.
    let r = put(
        &i,
        Some(ADMIN),
        json!({ "prune": true, "feeds": [{ "name": "files", "type": "assets" }] }),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(
        r.text().contains("declares no [[replications]]") && r.text().contains("edge"),
        "{}",
        r.text()
    );
    assert_eq!(export(&i).await, before, "a refused prune changed something");

    // prune deletes what is not declared; feeds stay.
    let v = put(
        &i,
        Some(ADMIN),
        json!({ "prune": true, "feeds": [{ "name": "files", "type": "assets" }],
                "replications": [{ "name": "keep", "feeds": ["files"], "mode": "push" }] }),
    )
    .await
    .json();
    assert_eq!(v["pruned"], json!(["edge"]));
    let after = export(&i).await;
    let names: Vec<&str> = after["replications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["keep"]);
    assert_eq!(after["feeds"].as_array().unwrap().len(), 2);

    // Blob sources of an outgoing replication (its other end not reachable
    // yet, which a declaration allows): exported by URL with the variable
    // their token is read from, never the secret.
    let secret = "cd".repeat(32);
    let v = put(
        &i,
        Some(ADMIN),
        json!({ "replications": [{
            "name": "up", "feeds": ["files"], "outgoing": "http://127.0.0.1:9",
            "token": format!("fst_0123456789abcdef_{}", "ab".repeat(32)), "mode": "pull",
            "blob_sources": [{ "url": "http://127.0.0.1:10", "token": format!("fst_fedcba9876543210_{secret}") }]
        }] }),
    )
    .await;
    assert_eq!(v.status, StatusCode::OK, "{}", v.text());
    let out = export(&i).await;
    let up = out["replications"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "up")
        .unwrap();
    assert_eq!(
        up["blob_sources"],
        json!([{ "url": "http://127.0.0.1:10", "token_env": "FERRY_TOKEN_UP_SOURCE_1" }])
    );
    assert!(!out.to_string().contains(&secret), "{out}");
}

#[tokio::test]
async fn only_admins_apply_or_read_the_configuration() {
    let i = Instance::new().await;
    let writer = i.key("writer", Permission::Write, None).await;
    assert_eq!(put(&i, None, hub()).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(put(&i, Some(&writer), hub()).await.status, StatusCode::FORBIDDEN);
    let r = i
        .send("GET", "/api/v1/config", Some(&writer), &[], String::new())
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(export(&i).await["feeds"], json!([]));
}

/// A refused apply removes the feeds it created only while nothing was
/// stored in them: an upload into a declared feed while the other end of
/// a declared replication is still being checked (here a peer that takes
/// a second to refuse the token) keeps its content.
#[tokio::test]
async fn a_refused_apply_keeps_what_was_stored_in_a_feed_it_created_meanwhile() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let _ = conn.read(&mut buf).await;
                tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
                let body = r#"{"error":"invalid or revoked sync token"}"#;
                let answer = format!(
                    "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(answer.as_bytes()).await;
            });
        }
    });
    let i = Instance::new().await;
    let decls = json!({
        "feeds": [{ "name": "newfeed", "type": "assets" }],
        "replications": [{ "name": "out", "feeds": ["newfeed"], "outgoing": format!("http://{addr}"),
            "token": format!("fst_0123456789abcdef_{}", "ab".repeat(32)), "mode": "pull", "line": 4 }]
    });
    let upload = async {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        i.send(
            "PUT",
            "/assets/newfeed/important.txt",
            Some(ADMIN),
            &[],
            "keep me",
        )
        .await
    };
    let (applied, uploaded) = tokio::join!(put(&i, Some(ADMIN), decls), upload);
    assert_eq!(applied.status, StatusCode::BAD_REQUEST, "{}", applied.text());
    assert_eq!(uploaded.status, StatusCode::CREATED, "{}", uploaded.text());
    let r = i
        .send(
            "GET",
            "/assets/newfeed/important.txt",
            Some(ADMIN),
            &[],
            String::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "the upload was lost: {}", r.text());
    assert_eq!(r.text(), "keep me");
    // The refusal says the feed was kept, not that nothing changed.
    assert!(
        applied
            .text()
            .contains("feed newfeed created for the file was kept"),
        "{}",
        applied.text()
    );
    assert!(
        !applied.text().contains("nothing was changed"),
        "{}",
        applied.text()
    );
    peer.abort();
}

/// A replication naming a feed that is neither declared nor on the
/// instance is refused before any declared feed is created, and the
/// refusal says nothing changed.
#[tokio::test]
async fn a_replication_naming_an_unknown_feed_is_refused_before_anything_is_created() {
    let i = Instance::new().await;
    let decls = json!({
        "feeds": [{ "name": "declared", "type": "assets" }],
        "replications": [{ "name": "out", "feeds": ["declared", "nowhere"], "incoming": true, "mode": "push", "line": 7 }]
    });
    let r = put(&i, Some(ADMIN), decls).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(r.text().contains("line 7"), "{}", r.text());
    assert!(
        r.text()
            .contains("feed nowhere is neither declared in the file nor on this instance"),
        "{}",
        r.text()
    );
    assert!(r.text().contains("nothing was changed"), "{}", r.text());
    let feeds = export(&i).await["feeds"].clone();
    assert_eq!(feeds, json!([]), "{feeds}");
}

/// Two identical files applied at once both succeed (one creates, the
/// other finds it done), instead of the second failing on "already exists".
#[tokio::test]
async fn the_same_file_applied_twice_at_once_succeeds_twice() {
    let i = Instance::new().await;
    let (a, b) = tokio::join!(put(&i, Some(ADMIN), hub()), put(&i, Some(ADMIN), hub()));
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(b.status, StatusCode::OK, "{}", b.text());
    let mut changes = [a.json()["feeds"][0][1].clone(), b.json()["feeds"][0][1].clone()];
    changes.sort_by_key(ToString::to_string);
    assert_eq!(changes, [json!("created"), json!("unchanged")]);
}

/// A declared accepted token revoked on the instance stays revoked when
/// the file is applied again, and the apply says so (it is not silently
/// "unchanged").
#[tokio::test]
async fn a_declared_token_revoked_here_stays_revoked_and_is_named() {
    let i = Instance::new().await;
    let r = put(&i, Some(ADMIN), hub()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = i
        .send(
            "DELETE",
            "/api/v1/replications/edge/tokens/0123456789abcdef",
            Some(ADMIN),
            &[],
            axum::body::Body::empty(),
        )
        .await;
    assert!(r.status.is_success(), "{} {}", r.status, r.text());
    let v = put(&i, Some(ADMIN), hub()).await.json();
    assert_eq!(v["tokens_added"], 0, "{v}");
    assert_eq!(v["tokens_revoked"], json!(["edge: 0123456789abcdef"]), "{v}");
    let out = export(&i).await;
    assert!(
        out["replications"][0]["accept_tokens"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "{out}"
    );
    // Declared again with another secret: refused, saying it was revoked.
    let mut other = hub();
    other["replications"][0]["accept_tokens"][0]["sha256"] = json!("cd".repeat(32));
    let r = put(&i, Some(ADMIN), other).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(r.text().contains("was revoked here"), "{}", r.text());
}
