//! What a sync token reaches, in process: existence questions are answered
//! within its replication's feeds; an applied entry may only name blobs the
//! peer sent or its feeds already hold; every entry is checked as its feed
//! type checks a client upload.
#![allow(clippy::unwrap_used)]
use crate::common;

use axum::body::Body;
use axum::http::StatusCode;
use common::{ADMIN, Instance};
use ferry_types::{Digest, FeedType};
use serde_json::{Value, json};

const JSON: (&str, &str) = ("content-type", "application/json");
const PEER: &str = "0123456789abcdef0123456789abcdef";

/// A stamp of the peer, a little after now.
fn stamp() -> Value {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    json!({ "time": ms << 16, "origin": PEER })
}

fn entry(key: &str, meta: Value, blobs: &[Digest]) -> Value {
    json!({ "key": key, "stamp": stamp(), "meta": meta, "blobs": blobs, "created_at": 1 })
}

async fn apply(i: &Instance, token: &str, feed: &str, entries: Vec<Value>) -> common::Reply {
    let body = json!({ "entries": entries }).to_string();
    i.send(
        "POST",
        &format!("/api/replication/v1/feeds/{feed}/apply"),
        Some(token),
        &[JSON],
        body,
    )
    .await
}

async fn put_asset(i: &Instance, feed: &str, path: &str, body: &'static [u8]) {
    let r = i
        .send("PUT", &format!("/assets/{feed}/{path}"), Some(ADMIN), &[], body)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
}

#[tokio::test]
async fn a_sync_token_cannot_learn_of_or_reference_blobs_outside_its_replication() {
    let i = Instance::new().await;
    i.feed("pub-assets", FeedType::Assets, false).await;
    i.feed("private", FeedType::Assets, true).await;
    let secret: &'static [u8] = b"the private feed's secret file";
    put_asset(&i, "private", "secret.txt", secret).await;
    put_asset(&i, "pub-assets", "public.txt", b"public").await;
    let d = Digest::of(secret);
    let public_d = Digest::of(b"public");
    let token = i.incoming("inbound", &["pub-assets"], "pull").await;

    // Existence is answered within the replication's feeds only.
    let r = i
        .send(
            "POST",
            "/api/replication/v1/blobs/missing",
            Some(&token),
            &[JSON],
            json!({ "digests": [d, public_d] }).to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.json()["digests"],
        json!([d]),
        "a blob of a private feed must look missing"
    );

    // Naming the private blob without sending it is refused; nothing appears.
    let meta = json!({ "content_type": "text/plain", "size": secret.len() });
    let r = apply(
        &i,
        &token,
        "pub-assets",
        vec![entry("leak.txt", meta.clone(), &[d])],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(r.text().contains("not sent first"), "{}", r.text());
    assert_eq!(
        i.get("/assets/pub-assets/leak.txt").await.status,
        StatusCode::NOT_FOUND
    );

    // A blob the feed already references may be named again.
    let r = apply(
        &i,
        &token,
        "pub-assets",
        vec![entry(
            "copy.txt",
            json!({ "content_type": "text/plain", "size": 6 }),
            &[public_d],
        )],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    // A peer that really has the bytes sends them first; then it may.
    let r = i
        .send(
            "PUT",
            &format!("/api/replication/v1/blobs/{d}"),
            Some(&token),
            &[],
            Body::from(secret),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text());
    let r = apply(&i, &token, "pub-assets", vec![entry("sent.txt", meta, &[d])]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(i.get("/assets/pub-assets/sent.txt").await.body, secret);
}

#[tokio::test]
async fn applied_entries_are_checked_as_their_feed_type_checks_uploads() {
    let i = Instance::new().await;
    i.feed("files", FeedType::Assets, false).await;
    i.feed("js", FeedType::Npm, false).await;
    i.feed("py", FeedType::Pypi, false).await;
    i.feed("img", FeedType::Oci, false).await;
    put_asset(&i, "files", "a.txt", b"abc").await;
    let a = Digest::of(b"abc");
    let token = i.incoming("inbound", &["files", "js", "py", "img"], "pull").await;
    let good = json!({ "content_type": "text/plain", "size": 3 });

    let refused = [
        // Keys no client could create.
        ("files", entry("../../etc/passwd", good.clone(), &[a])),
        ("files", entry("a//b.txt", good.clone(), &[a])),
        // Metadata an upload never has.
        (
            "files",
            entry("b.txt", json!({ "content_type": "text/plain", "size": 4 }), &[a]),
        ),
        (
            "files",
            entry(
                "c.txt",
                json!({ "content_type": "text/plain\r\nX-Evil: 1", "size": 3 }),
                &[a],
            ),
        ),
        (
            "files",
            entry(
                "d.txt",
                json!({ "content_type": "text/plain", "size": 3, "extra": 1 }),
                &[a],
            ),
        ),
        ("files", entry("e.txt", good.clone(), &[])),
        // npm: a version whose manifest is not the key's, arbitrary metadata, bad tags.
        (
            "js",
            entry("pkg/left-pad/1.0.0", json!({ "anything": "goes" }), &[a]),
        ),
        (
            "js",
            entry(
                "pkg/left-pad/1.0.0",
                json!({ "manifest": { "name": "other", "version": "1.0.0" } }),
                &[a],
            ),
        ),
        (
            "js",
            entry(
                "pkg/left-pad/1.0.0",
                json!({ "manifest": { "name": "left-pad", "version": "1.0.0",
                    "dist": { "integrity": "sha512-AAAA" } } }),
                &[a],
            ),
        ),
        ("js", entry("pkg/Bad Name/1.0.0", json!({}), &[])),
        (
            "js",
            entry("tag/left-pad/latest", json!({ "version": "01.0" }), &[]),
        ),
        ("js", entry("whatever", json!({}), &[])),
        // PyPI: not a distribution file key, metadata that is not the key's.
        ("py", entry("demo/not-a-dist.txt", json!({}), &[a])),
        (
            "py",
            entry("demo/demo-1.0-py3-none-any.whl", json!({ "name": "demo" }), &[a]),
        ),
        // OCI: keys outside the layout, a manifest item that is not its blob.
        ("img", entry("manifest/app/latest", json!({}), &[a])),
        (
            "img",
            entry(
                &format!("manifest/app/{a}"),
                json!({ "media_type": "x", "size": 3 }),
                &[a],
            ),
        ),
        (
            "img",
            entry("tag/app/v1", json!({ "digest": a, "media_type": "x" }), &[]),
        ),
    ];
    // Each is refused on its own, with a reason; what comes with it in the
    // same request is still applied.
    let refused_reason = |r: &common::Reply, n: usize| -> Option<String> {
        r.json()["outcomes"][n]["refused"]["reason"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    for (n, (feed, e)) in refused.into_iter().enumerate() {
        let path = format!("probe/{n}.txt");
        let companion = entry(&path, good.clone(), &[a]);
        let r = apply(&i, &token, feed, vec![e.clone()]).await;
        assert_eq!(r.status, StatusCode::OK, "{feed}: {e}: {}", r.text());
        assert!(
            refused_reason(&r, 0).is_some(),
            "{feed}: {e} was accepted: {}",
            r.text()
        );
        if feed == "files" {
            let r = apply(&i, &token, feed, vec![e.clone(), companion]).await;
            assert!(refused_reason(&r, 0).is_some(), "{}", r.text());
            assert_eq!(r.json()["outcomes"][1], json!("applied"), "{}", r.text());
            assert_eq!(i.get(&format!("/assets/files/{path}")).await.body, b"abc");
        }
    }
    // Tombstones are checked by key too.
    let mut tomb = entry("../x", json!(null), &[]);
    tomb["deleted"] = json!(true);
    let r = apply(&i, &token, "files", vec![tomb]).await;
    assert!(refused_reason(&r, 0).is_some(), "{}", r.text());

    // What a client could upload is accepted.
    let r = apply(&i, &token, "files", vec![entry("ok/b.txt", good, &[a])]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["outcomes"][0], json!("applied"), "{}", r.text());
    assert_eq!(i.get("/assets/files/ok/b.txt").await.body, b"abc");
}

/// A long poll opened before its token was revoked answers the refusal,
/// not the change that ended its wait: the token was checked when the
/// request came in and is checked again before anything is sent.
#[tokio::test]
async fn a_long_poll_whose_token_is_revoked_while_it_waits_gets_nothing() {
    let i = Instance::new().await;
    i.feed("files", FeedType::Assets, false).await;
    put_asset(&i, "files", "before.txt", b"before").await;
    let token = i.incoming("edge", &["files"], "push").await;
    let first = i
        .send(
            "GET",
            "/api/replication/v1/feeds/files/changes?since=0",
            Some(&token),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    let since = first.json()["last_seq"].as_i64().unwrap();
    let uri = format!("/api/replication/v1/feeds/files/changes?since={since}&wait=30&inline_max=100000");
    let poll = i.send("GET", &uri, Some(&token), &[], Body::empty());
    let revoke_then_publish = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
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
        put_asset(&i, "files", "after-revoke.txt", b"published after the revocation").await;
    };
    let (r, ()) = tokio::join!(poll, revoke_then_publish);
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    assert!(r.text().contains("revoked"), "{}", r.text());
    assert!(!r.text().contains("after-revoke"), "{}", r.text());
}

/// Revoking a token ends what its holder is waiting for: a long poll of
/// 60 s answers the refusal once the token is revoked, with nothing
/// published meanwhile; revoking another replication's token does not
/// end it.
#[tokio::test]
async fn revoking_a_token_ends_its_long_poll_at_once() {
    let i = Instance::new().await;
    i.feed("files", FeedType::Assets, false).await;
    put_asset(&i, "files", "before.txt", b"before").await;
    let token = i.incoming("edge", &["files"], "push").await;
    let other = i.incoming("other-edge", &["files"], "push").await;
    let first = i
        .send(
            "GET",
            "/api/replication/v1/feeds/files/changes?since=0",
            Some(&token),
            &[],
            Body::empty(),
        )
        .await;
    let since = first.json()["last_seq"].as_i64().unwrap();
    let uri = format!("/api/replication/v1/feeds/files/changes?since={since}&wait=60");
    let poll = i.send("GET", &uri, Some(&token), &[], Body::empty());
    let revoke = |name: &'static str, token: String| {
        let i = &i;
        async move {
            let r = i
                .send(
                    "DELETE",
                    &format!("/api/v1/replications/{name}/tokens/{}", &token[4..20]),
                    Some(ADMIN),
                    &[],
                    Body::empty(),
                )
                .await;
            assert_eq!(r.status, StatusCode::NO_CONTENT);
        }
    };
    let poll = async {
        let started = std::time::Instant::now();
        let r = poll.await;
        (r, started.elapsed())
    };
    let revokes = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        revoke("other-edge", other).await;
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
        revoke("edge", token.clone()).await;
    };
    let ((r, took), ()) = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        tokio::join!(poll, revokes)
    })
    .await
    .expect("the long poll still waits 30 s after its token was revoked");
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    // Not ended by the other replication's revocation at 0.3 s (that
    // would have answered an empty page, 200).
    assert!(r.text().contains("revoked"), "{} after {took:?}", r.text());
}

/// An incoming replication's include/exclude filter holds for its peers:
/// items outside it are not listed, their blobs not sent (by digest or in
/// a batch), and pushed entries outside it are refused one by one.
#[tokio::test]
async fn an_incoming_replication_filter_narrows_what_its_peers_read() {
    let i = Instance::new().await;
    i.feed("files", FeedType::Assets, false).await;
    put_asset(&i, "files", "share/a.txt", b"shared").await;
    let secret: &'static [u8] = b"outside the filter";
    put_asset(&i, "files", "dir/secret.txt", secret).await;
    let body = json!({ "name": "filtered", "feeds": ["files"], "mode": "push", "include": ["share/**"] });
    let r = i
        .send(
            "POST",
            "/api/v1/replications",
            Some(ADMIN),
            &[JSON],
            body.to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let r = i
        .send(
            "POST",
            "/api/v1/replications/filtered/tokens",
            Some(ADMIN),
            &[],
            Body::empty(),
        )
        .await;
    let token = r.json()["token"].as_str().unwrap().to_string();
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
    assert!(r.text().contains("share/a.txt"), "{}", r.text());
    assert!(!r.text().contains("secret"), "{}", r.text());
    let r = i
        .send(
            "GET",
            "/api/replication/v1/feeds/files/entries",
            Some(&token),
            &[],
            Body::empty(),
        )
        .await;
    assert!(!r.text().contains("secret"), "{}", r.text());
    let d = Digest::of(secret);
    let r = i
        .send(
            "GET",
            &format!("/api/replication/v1/blobs/{d}"),
            Some(&token),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    let shared = Digest::of(b"shared");
    let r = i
        .send(
            "POST",
            "/api/replication/v1/blobs/batch",
            Some(&token),
            &[JSON],
            json!({ "blobs": [{ "digest": d }, { "digest": shared }] }).to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(!r.text().contains("outside the filter"), "{}", r.text());
    assert!(r.text().contains("\"status\":404"), "{}", r.text());
    assert!(r.text().contains("shared"), "{}", r.text());
    // A range past a readable blob's end: 416 in the API's JSON shape,
    // with the blob's size.
    let r = i
        .send(
            "GET",
            &format!("/api/replication/v1/blobs/{shared}"),
            Some(&token),
            &[("range", "bytes=1000-")],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE, "{}", r.text());
    assert!(
        r.json()["error"].as_str().unwrap().contains("(6 bytes)"),
        "{}",
        r.text()
    );
    assert_eq!(r.headers["content-range"], "bytes */6");
    // One that is no valid range says so, naming what was asked.
    let r = i
        .send(
            "GET",
            &format!("/api/replication/v1/blobs/{shared}"),
            Some(&token),
            &[("range", "bytes=5-2")],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE, "{}", r.text());
    let why = r.json()["error"].as_str().unwrap().to_owned();
    assert!(
        why.contains("(bytes=5-2)") && why.contains("not one valid byte range"),
        "{why}"
    );
    // A blob named many times would be sent as many times: refused whole.
    let r = i
        .send(
            "POST",
            "/api/replication/v1/blobs/batch",
            Some(&token),
            &[JSON],
            json!({ "blobs": [{ "digest": shared }, { "digest": d }, { "digest": shared, "offset": 1 }] })
                .to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(r.text().contains("named more than once"), "{}", r.text());

    // The feed digest: a peer's own include narrows the replication's
    // filter and cannot widen it, so probing a name outside it finds
    // nothing, and asking for everything counts only what it may read.
    let digest = |q: &'static str| {
        let (i, token) = (&i, &token);
        async move {
            let r = i
                .send(
                    "GET",
                    &format!("/api/replication/v1/feeds/files/digest{q}"),
                    Some(token),
                    &[],
                    Body::empty(),
                )
                .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            r.json()
        }
    };
    let probe = digest("?include=dir/secret.txt").await;
    assert_eq!(probe["items"], 0, "{probe}");
    assert_eq!(digest("?include=dir/**").await["items"], 0);
    let all = digest("").await;
    assert_eq!(all["items"], 1, "{all}");
    assert_eq!(digest("?include=share/**").await, all);
    // Stamps: none for a key outside the filter, though it is stored.
    let r = i
        .send(
            "POST",
            "/api/replication/v1/feeds/files/stamps",
            Some(&token),
            &[JSON],
            json!({ "keys": ["dir/secret.txt", "share/a.txt"] }).to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let stamps = &r.json()["stamps"];
    assert!(stamps[0].is_null(), "{stamps}");
    assert!(!stamps[1].is_null(), "{stamps}");
    // The current entries of given keys: each key answered once, however
    // often it is named.
    let r = i
        .send(
            "POST",
            "/api/replication/v1/feeds/files/entries",
            Some(&token),
            &[JSON],
            json!({ "keys": ["share/a.txt", "share/a.txt", "share/a.txt"] }).to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["entries"].as_array().unwrap().len(), 1, "{}", r.text());
    // Deletions and bytes ahead are counted by feed: not told to a
    // filtered replication's peer (the secret's size would show).
    let r = i
        .send(
            "GET",
            "/api/replication/v1/feeds/files/changes?since=0&count_deletes=true&count_bytes=true&bytes_after=0",
            Some(&token),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let page = r.json();
    assert!(page["deletes_ahead"].is_null(), "{page}");
    assert!(page["bytes_ahead"].is_null(), "{page}");
    assert!(page["bytes_late"].is_null(), "{page}");
}

/// Revoking a sync token, or narrowing its replication's filter, cuts the
/// blob transfers its holder has under way (one blob, and a batch): the
/// body ends in an error after the change instead of running to its end,
/// which a bandwidth cap can make hours away.
#[tokio::test]
async fn revoking_a_token_cuts_a_blob_transfer_under_way() {
    use futures::StreamExt as _;
    const SIZE: usize = 32 << 20;
    let i = Instance::new().await;
    i.feed("files", FeedType::Assets, false).await;
    let big: Vec<u8> = (0..SIZE).map(|n| (n % 251) as u8).collect();
    let d = Digest::of(&big);
    let r = i
        .send("PUT", "/assets/files/big.bin", Some(ADMIN), &[], big)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());

    for (n, batch, narrow) in [
        (1, false, false),
        (2, true, false),
        (3, false, true),
        (4, true, true),
    ] {
        let name = format!("edge{n}");
        let token = i.incoming(&name, &["files"], "push").await;
        let req = if batch {
            axum::http::Request::post("/api/replication/v1/blobs/batch")
                .header("content-type", "application/json")
                .header("authorization", format!("Bearer {token}"))
                .body(Body::from(json!({ "blobs": [{ "digest": d }] }).to_string()))
        } else {
            axum::http::Request::get(format!("/api/replication/v1/blobs/{d}"))
                .header("authorization", format!("Bearer {token}"))
                .body(Body::empty())
        };
        let resp = tower::ServiceExt::oneshot(i.router.clone(), req.unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let mut body = resp.into_body().into_data_stream();
        let first = body.next().await.unwrap().unwrap();
        let mut got = first.len();
        assert!(got < SIZE, "the whole blob came in one chunk");
        let r = if narrow {
            i.send(
                "PATCH",
                &format!("/api/v1/replications/{name}"),
                Some(ADMIN),
                &[JSON],
                json!({ "exclude": ["big*"] }).to_string(),
            )
            .await
        } else {
            i.send(
                "DELETE",
                &format!("/api/v1/replications/{name}/tokens/{}", &token[4..20]),
                Some(ADMIN),
                &[],
                Body::empty(),
            )
            .await
        };
        assert!(r.status.is_success(), "{} {}", r.status, r.text());
        let mut cut = false;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(c) => got += c.len(),
                Err(_) => {
                    cut = true;
                    break;
                }
            }
        }
        assert!(
            cut,
            "batch={batch}: the transfer ran to its end ({got} bytes) after the revocation"
        );
        assert!(
            got < SIZE,
            "batch={batch}: {got} of {SIZE} bytes sent after the revocation"
        );
    }
}

/// The same for a blob a peer pushes: an upload still streaming when its
/// token is revoked is refused at once (nothing stored), without waiting
/// for the rest of its body.
#[tokio::test]
async fn revoking_a_token_cuts_a_blob_upload_under_way() {
    let i = Instance::new().await;
    i.feed("files", FeedType::Assets, false).await;
    let token = i.incoming("edge", &["files"], "pull").await;
    let d = Digest::of(b"never sent in full");
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
    tx.send(Ok(bytes::Bytes::from_static(b"never sent")))
        .await
        .unwrap();
    let body = Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|c| (c, rx))
    }));
    let uri = format!("/api/replication/v1/blobs/{d}");
    let upload = i.send("PUT", &uri, Some(&token), &[], body);
    let revoke = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let r = i
            .send(
                "DELETE",
                &format!("/api/v1/replications/edge/tokens/{}", &token[4..20]),
                Some(ADMIN),
                &[],
                Body::empty(),
            )
            .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
    };
    let (r, ()) = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        tokio::join!(upload, revoke)
    })
    .await
    .expect("the upload still waits for its body 20 s after the revocation");
    drop(tx);
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    assert!(r.text().contains("revoked"), "{}", r.text());
    assert_eq!(i.blob_files(), 0);
    assert_eq!(i.staging_files(), 0);
}
