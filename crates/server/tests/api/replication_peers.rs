//! The hub's view of its spokes (issue 16), in process: every instance
//! that uses an incoming replication's tokens is listed with what it
//! reported, where it is in each feed and how far behind, the last error
//! answered it, and turns stale when it stops coming; the same in the
//! metrics, and after a restart of the hub.
#![allow(clippy::unwrap_used)]
use crate::common;

use std::time::Duration;

use axum::body::Body;
use axum::http::StatusCode;
use common::{ADMIN, Instance};
use ferry_types::FeedType;
use serde_json::{Value, json};

const JSON: (&str, &str) = ("content-type", "application/json");
const PULL: &str = r#"{"name":"pull","flows":{"pull_missing":true,"push_missing":false,"delete_local":true,"delete_remote":false}}"#;
const SPOKE_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const SPOKE_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn handshake(instance: &str, name: &str, interval: u64) -> String {
    json!({
        "protocol_versions": [1],
        "instance_id": instance,
        "ferry_version": "9.9.9",
        "mode": serde_json::from_str::<Value>(PULL).unwrap(),
        "feeds": [{ "outgoing": "files", "incoming": "files", "type": "assets" }],
        "instance_name": name,
        "interval_secs": interval,
    })
    .to_string()
}

async fn put_asset(i: &Instance, path: &str) {
    let r = i
        .send(
            "PUT",
            &format!("/assets/files/{path}"),
            Some(ADMIN),
            &[],
            b"x".to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
}

/// A request of the replication API from `instance` with `token`.
async fn from(
    i: &Instance,
    instance: &str,
    token: &str,
    method: &str,
    path: &str,
    body: String,
) -> common::Reply {
    i.send(
        method,
        &format!("/api/replication/v1/{path}"),
        Some(token),
        &[JSON, ("ferry-instance", instance)],
        body,
    )
    .await
}

async fn peers(i: &Instance) -> Vec<Value> {
    let r = i
        .send(
            "GET",
            "/api/v1/replications/edge/peers",
            Some(ADMIN),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json().as_array().unwrap().clone()
}

async fn scrape(i: &Instance) -> String {
    i.send("GET", "/metrics", Some(ADMIN), &[], Body::empty())
        .await
        .text()
}

fn peer<'a>(list: &'a [Value], instance: &str) -> &'a Value {
    list.iter()
        .find(|p| p["instance_id"] == instance)
        .unwrap_or_else(|| panic!("{instance} not listed: {list:?}"))
}

#[tokio::test]
async fn the_hub_lists_its_spokes_with_cursors_lag_errors_and_staleness() {
    let cfg = ferry_core::Config {
        peer_stale_intervals: 2,
        ..ferry_core::Config::default()
    };
    let hub = Instance::with_config(cfg).await;
    hub.feed("files", FeedType::Assets, false).await;
    for n in 0..5 {
        put_asset(&hub, &format!("f{n}.txt")).await;
    }
    let token = hub.incoming("edge", &["files"], "push").await;
    assert!(peers(&hub).await.is_empty());

    // Spoke A: handshakes, reads two changes of five, then all of them.
    let r = from(
        &hub,
        SPOKE_A,
        &token,
        "POST",
        "handshake",
        handshake(SPOKE_A, "site-a", 1),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = from(
        &hub,
        SPOKE_A,
        &token,
        "GET",
        "feeds/files/changes?since=0&limit=2",
        String::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let list = peers(&hub).await;
    let a = peer(&list, SPOKE_A);
    assert_eq!(a["name"], "site-a");
    assert_eq!(a["ferry_version"], "9.9.9");
    assert_eq!(a["protocol_version"], 1);
    assert_eq!(a["interval_secs"], 1);
    assert_eq!(a["address"], common::CLIENT.ip().to_string());
    assert!(token.starts_with(&format!("fst_{}", a["token"].as_str().unwrap())));
    assert_eq!(a["feeds"]["files"]["cursor"], 0);
    assert_eq!(a["feeds"]["files"]["lag_changes"], 5);
    assert!(a["feeds"]["files"]["lag_seconds"].as_f64().unwrap() >= 0.0);
    assert_eq!(a["stale"], false);
    let r = from(
        &hub,
        SPOKE_A,
        &token,
        "GET",
        "feeds/files/changes?since=2&limit=100",
        String::new(),
    )
    .await;
    let next = r.json()["next"].as_i64().unwrap();
    let r = from(
        &hub,
        SPOKE_A,
        &token,
        "GET",
        &format!("feeds/files/changes?since={next}"),
        String::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let list = peers(&hub).await;
    let a = peer(&list, SPOKE_A);
    assert_eq!(a["feeds"]["files"]["cursor"], next);
    assert_eq!(a["feeds"]["files"]["lag_changes"], 0);
    assert_eq!(a["feeds"]["files"]["lag_seconds"], 0.0);

    // Changes made here after its last request count at once: a spoke
    // that stopped asking falls behind (it showed 0 until it asked again).
    for n in 5..8 {
        put_asset(&hub, &format!("f{n}.txt")).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let list = peers(&hub).await;
    let a = peer(&list, SPOKE_A);
    assert_eq!(a["feeds"]["files"]["cursor"], next);
    assert_eq!(a["feeds"]["files"]["lag_changes"], 3, "{a}");
    let behind = a["feeds"]["files"]["lag_seconds"].as_f64().unwrap();
    assert!(behind >= 0.25, "lag {behind} s");
    assert!(a["lag_seconds"].as_f64().unwrap() >= 0.25, "{a}");
    // It catches up: no lag again.
    let r = from(
        &hub,
        SPOKE_A,
        &token,
        "GET",
        &format!("feeds/files/changes?since={next}&limit=100"),
        String::new(),
    )
    .await;
    let caught_up = r.json()["next"].as_i64().unwrap();
    let r = from(
        &hub,
        SPOKE_A,
        &token,
        "GET",
        &format!("feeds/files/changes?since={caught_up}"),
        String::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let list = peers(&hub).await;
    let a = peer(&list, SPOKE_A);
    assert_eq!(a["feeds"]["files"]["lag_changes"], 0, "{a}");
    assert_eq!(a["feeds"]["files"]["lag_seconds"], 0.0, "{a}");

    // Spoke B shares the token; its refused request is its last error.
    let r = from(
        &hub,
        SPOKE_B,
        &token,
        "POST",
        "handshake",
        handshake(SPOKE_B, "site-b", 60),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = from(
        &hub,
        SPOKE_B,
        &token,
        "GET",
        "feeds/other/changes?since=0",
        String::new(),
    )
    .await;
    assert!(r.status.is_client_error());
    let list = peers(&hub).await;
    assert_eq!(list.len(), 2);
    let b = peer(&list, SPOKE_B);
    assert_eq!(b["name"], "site-b");
    assert!(
        b["last_error"]["message"].as_str().unwrap().contains("other"),
        "{b}"
    );
    assert!(peer(&list, SPOKE_A)["last_error"].is_null());
    // A later request answered without an error supersedes it: the error
    // is shown only while it is the latest outcome.
    let r = from(
        &hub,
        SPOKE_B,
        &token,
        "GET",
        "feeds/files/changes?since=0",
        String::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(
        peer(&peers(&hub).await, SPOKE_B)["last_error"].is_null(),
        "{:?}",
        peers(&hub).await
    );
    let r = from(
        &hub,
        SPOKE_B,
        &token,
        "GET",
        "feeds/other/changes?since=0",
        String::new(),
    )
    .await;
    assert!(r.status.is_client_error());
    assert!(!peer(&peers(&hub).await, SPOKE_B)["last_error"].is_null());
    // So does its next accepted handshake: an old refusal is not shown
    // as the state of a peer that works.
    let r = from(
        &hub,
        SPOKE_B,
        &token,
        "POST",
        "handshake",
        handshake(SPOKE_B, "site-b", 60),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(peer(&peers(&hub).await, SPOKE_B)["last_error"].is_null());

    // A request whose header names no instance id is refused with the
    // reason, and is not a peer of its own.
    let r = from(
        &hub,
        "not-an-id",
        &token,
        "GET",
        "feeds/files/changes?since=0",
        String::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text().contains("names no instance id"), "{}", r.text());
    assert_eq!(peers(&hub).await.len(), 2);

    // Spoke A (interval 1 s, stale after 2) stops coming: stale after ~2 s;
    // B (interval 60 s) is not. The metrics say the same.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let list = peers(&hub).await;
    assert_eq!(peer(&list, SPOKE_A)["stale"], true);
    assert_eq!(peer(&list, SPOKE_B)["stale"], false);
    let m = hub
        .send("GET", "/metrics", Some(ADMIN), &[], Body::empty())
        .await
        .text();
    let line = |metric: &str, instance: &str| {
        m.lines()
            .find(|l| l.starts_with(metric) && l.contains(instance))
            .unwrap_or_else(|| panic!("no {metric} for {instance} in\n{m}"))
            .to_owned()
    };
    assert!(line("ferry_replication_peer_stale", SPOKE_A).ends_with(" 1"));
    assert!(line("ferry_replication_peer_stale", SPOKE_B).ends_with(" 0"));
    assert!(line("ferry_replication_peer_last_contact_seconds", SPOKE_A).contains("name=\"site-a\""));
    line("ferry_replication_peer_lag_seconds", SPOKE_B);

    // Back: fresh again.
    let r = from(
        &hub,
        SPOKE_A,
        &token,
        "GET",
        &format!("feeds/files/changes?since={next}"),
        String::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(peer(&peers(&hub).await, SPOKE_A)["stale"], false);

    // Outgoing replications have no peers list; unknown ones are 404.
    let r = hub
        .send(
            "GET",
            "/api/v1/replications/nope/peers",
            Some(ADMIN),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    // Only an admin key sees them.
    let reader = hub.key("reader", ferry_store::Permission::Read, None).await;
    let r = hub
        .send(
            "GET",
            "/api/v1/replications/edge/peers",
            Some(&reader),
            &[],
            Body::empty(),
        )
        .await;
    assert!(
        r.status == StatusCode::FORBIDDEN || r.status == StatusCode::UNAUTHORIZED,
        "{}",
        r.status
    );
}

/// The view survives a restart: a handshake is saved at once.
#[tokio::test]
async fn peers_are_saved_and_gone_with_their_replication() {
    let hub = Instance::new().await;
    hub.feed("files", FeedType::Assets, false).await;
    let token = hub.incoming("edge", &["files"], "push").await;
    let r = from(
        &hub,
        SPOKE_A,
        &token,
        "POST",
        "handshake",
        handshake(SPOKE_A, "site-a", 30),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let first_contact = peers(&hub).await[0]["first_contact"].clone();
    let reopened = hub.reopen().await;
    let list = peers(&reopened).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["name"], "site-a");
    assert_eq!(list[0]["connected"], false);
    // A spoke that goes on reading without a new handshake (it was
    // waiting on a long poll through the restart) keeps what it reported.
    let r = from(
        &reopened,
        SPOKE_A,
        &token,
        "GET",
        "feeds/files/changes?since=0&limit=10",
        String::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let list = peers(&reopened).await;
    assert_eq!(list.len(), 1, "{list:?}");
    let p = &list[0];
    assert_eq!(p["name"], "site-a", "{p}");
    assert_eq!(p["ferry_version"], "9.9.9", "{p}");
    assert_eq!(p["interval_secs"], 30, "{p}");
    assert_eq!(p["first_contact"], first_contact, "{p}");
    assert_eq!(p["feeds"]["files"]["cursor"], 0, "{p}");

    // An operator forgets a peer: gone from the listing, also after a
    // restart; a second time, or an unknown one, is 404.
    let r = from(
        &reopened,
        SPOKE_B,
        &token,
        "POST",
        "handshake",
        handshake(SPOKE_B, "site-b", 30),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let uri = format!("/api/v1/replications/edge/peers/{SPOKE_B}");
    // Only the admin may: not a sync token, not without a key.
    for key in [Some(token.as_str()), None] {
        let r = reopened.send("DELETE", &uri, key, &[], Body::empty()).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    }
    for expected in [StatusCode::NO_CONTENT, StatusCode::NOT_FOUND] {
        let r = reopened
            .send("DELETE", &uri, Some(ADMIN), &[], Body::empty())
            .await;
        assert_eq!(r.status, expected, "{}", r.text());
    }
    // Its gauges are gone from the next scrape, not kept until a restart.
    let m = scrape(&reopened).await;
    assert!(!m.contains(SPOKE_B), "{m}");
    assert!(
        m.contains(&format!(
            "ferry_replication_peer_stale{{replication=\"edge\",instance=\"{SPOKE_A}\""
        )),
        "{m}"
    );
    let reopened = reopened.reopen().await;
    let list = peers(&reopened).await;
    assert!(list.iter().all(|p| p["instance_id"] != SPOKE_B), "{list:?}");
    assert_eq!(list.len(), 1, "{list:?}");
    let r = reopened
        .send(
            "DELETE",
            "/api/v1/replications/edge",
            Some(ADMIN),
            &[],
            Body::empty(),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text());
    let m = scrape(&reopened).await;
    assert!(!m.contains("ferry_replication_peer_"), "{m}");
    reopened.incoming("edge", &["files"], "push").await;
    assert!(peers(&reopened).await.is_empty());
}

/// A spoke whose handshake is refused (its mode does not pair with the
/// hub's) is listed under the name and version it reported, with the
/// reason; once it is set right, the error is gone.
#[tokio::test]
async fn a_refused_spoke_is_listed_by_name_with_the_reason() {
    let hub = Instance::new().await;
    hub.feed("files", FeedType::Assets, false).await;
    let token = hub.incoming("edge", &["files"], "push").await;
    let mut wrong: Value = serde_json::from_str(&handshake(SPOKE_B, "site-b", 30)).unwrap();
    wrong["mode"] = json!({"name": "push", "flows": {
        "pull_missing": false, "push_missing": true, "delete_local": false, "delete_remote": true
    }});
    let r = from(&hub, SPOKE_B, &token, "POST", "handshake", wrong.to_string()).await;
    assert!(r.status.is_client_error(), "{} {}", r.status, r.text());
    let list = peers(&hub).await;
    let b = peer(&list, SPOKE_B);
    assert_eq!(b["name"], "site-b", "{b}");
    assert_eq!(b["ferry_version"], "9.9.9");
    assert_eq!(b["interval_secs"], 30);
    let error = b["last_error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{b}"));
    assert!(error.contains("mode mismatch"), "{error}");

    let r = from(
        &hub,
        SPOKE_B,
        &token,
        "POST",
        "handshake",
        handshake(SPOKE_B, "site-b", 30),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let list = peers(&hub).await;
    let b = peer(&list, SPOKE_B);
    assert!(b["last_error"].is_null(), "{b}");
    assert_eq!(b["protocol_version"], 1);
}

/// A spoke that read everything and waits on a long poll is listed as not
/// behind while it waits, not as far behind as its last answered page
/// said (the hub would otherwise report lag the spoke does not have until
/// the long poll ends).
#[tokio::test]
async fn a_spoke_waiting_on_a_long_poll_is_not_behind() {
    let hub = Instance::new().await;
    hub.feed("files", FeedType::Assets, false).await;
    let token = hub.incoming("edge", &["files"], "push").await;
    let r = from(
        &hub,
        SPOKE_A,
        &token,
        "POST",
        "handshake",
        handshake(SPOKE_A, "site-a", 60),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = from(
        &hub,
        SPOKE_A,
        &token,
        "GET",
        "feeds/files/changes?since=0&limit=100",
        String::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // One publish: the spoke's last page (since 0) is now one behind.
    put_asset(&hub, "new.txt").await;
    let behind = peers(&hub).await;
    assert_eq!(peer(&behind, SPOKE_A)["feeds"]["files"]["lag_changes"], 1);
    // It reads that change and waits for the next one.
    let r = from(
        &hub,
        SPOKE_A,
        &token,
        "GET",
        "feeds/files/changes?since=0&limit=100",
        String::new(),
    )
    .await;
    let last = r.json()["last_seq"].as_i64().unwrap();
    let waiting = {
        let (hub, token) = (&hub, token.clone());
        async move {
            from(
                hub,
                SPOKE_A,
                &token,
                "GET",
                &format!("feeds/files/changes?since={last}&wait=3"),
                String::new(),
            )
            .await
        }
    };
    let listing = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        peers(&hub).await
    };
    let (answered, list) = tokio::join!(waiting, listing);
    assert_eq!(answered.status, StatusCode::OK);
    let a = peer(&list, SPOKE_A);
    assert_eq!(a["feeds"]["files"]["cursor"], last, "{a}");
    assert_eq!(a["feeds"]["files"]["lag_changes"], 0, "{a}");
}

/// A peer is one instance, whatever token it uses: a spoke given a second
/// token and using it is the same entry, refreshed, showing the token of
/// its latest request — while its old token is still valid, and after it
/// is revoked; a group of spokes rotating from one shared token to another
/// one spoke at a time stays one entry each. What a peer reports loses
/// control and invisible format characters; its interval is kept within
/// 30 days.
#[tokio::test]
async fn any_token_of_the_replication_refreshes_one_spoke_and_names_lose_control_characters() {
    const SPOKE_C: &str = "cccccccccccccccccccccccccccccccc";
    const SPOKE_D: &str = "dddddddddddddddddddddddddddddddd";
    let hub = &Instance::new().await;
    hub.feed("files", FeedType::Assets, false).await;
    let token_a = hub.incoming("edge", &["files"], "push").await;
    let path = "/api/v1/replications/edge/tokens";
    let new_token = move || async move {
        hub.send("POST", path, Some(ADMIN), &[], Body::empty())
            .await
            .json()["token"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let revoke = move |token: String| async move {
        let r = hub
            .send(
                "DELETE",
                &format!("{path}/{}", &token[4..20]),
                Some(ADMIN),
                &[],
                Body::empty(),
            )
            .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
    };
    let shake = move |instance: &'static str, token: String, name: &'static str, interval: u64| async move {
        let r = from(
            hub,
            instance,
            &token,
            "POST",
            "handshake",
            handshake(instance, name, interval),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "a valid token: {}", r.text());
    };
    let uses = |p: &Value, token: &str| token.starts_with(&format!("fst_{}", p["token"].as_str().unwrap()));
    let entries =
        |list: &[Value], instance: &str| list.iter().filter(|p| p["instance_id"] == instance).count();
    shake(SPOKE_A, token_a.clone(), "site-a", 30).await;
    let first = peer(&peers(hub).await, SPOKE_A)["last_contact"].as_i64().unwrap();

    // Rotation: A gets a second token and uses it while the old one is
    // still valid: the same entry, refreshed, showing the new token.
    let rotated = new_token().await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    shake(SPOKE_A, rotated.clone(), "site-a", 30).await;
    let list = peers(hub).await;
    let a = peer(&list, SPOKE_A);
    assert_eq!(entries(&list, SPOKE_A), 1, "{list:?}");
    assert!(uses(a, &rotated), "{a}");
    assert!(a["last_contact"].as_i64().unwrap() > first, "{a}");
    assert_eq!(a["stale"], false, "{a}");
    // A request with the old token (still valid) is its contact too.
    let r = from(
        hub,
        SPOKE_A,
        &token_a,
        "GET",
        "feeds/files/changes?since=0",
        String::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let a = peer(&peers(hub).await, SPOKE_A).clone();
    assert!(uses(&a, &token_a), "{a}");
    revoke(token_a).await;
    shake(SPOKE_A, rotated.clone(), "site-a2", 40).await;
    let list = peers(hub).await;
    let a = peer(&list, SPOKE_A);
    assert!(uses(a, &rotated), "{a}");
    assert_eq!(a["name"], "site-a2", "{a}");

    // A group sharing one token rotates to another one spoke at a time.
    let shared = new_token().await;
    shake(SPOKE_C, shared.clone(), "site-c", 30).await;
    shake(SPOKE_D, shared.clone(), "site-d", 30).await;
    let next = new_token().await;
    shake(SPOKE_C, next.clone(), "site-c", 30).await;
    let list = peers(hub).await;
    assert!(uses(peer(&list, SPOKE_C), &next), "{list:?}");
    assert!(uses(peer(&list, SPOKE_D), &shared), "{list:?}");
    revoke(shared).await;
    shake(SPOKE_D, next.clone(), "site-d", 30).await;
    let list = peers(hub).await;
    for instance in [SPOKE_C, SPOKE_D] {
        assert_eq!(entries(&list, instance), 1, "{list:?}");
        let p = peer(&list, instance);
        assert!(uses(p, &next), "{p}");
        assert_eq!(p["stale"], false, "{p}");
    }

    // What a peer reports is cleaned up.
    let hostile = "\u{1b}]0;x\u{7}site\u{202e}txt.exe\u{200b}\nline";
    let r = from(
        hub,
        SPOKE_A,
        &rotated,
        "POST",
        "handshake",
        handshake(SPOKE_A, hostile, 99_999_999_999),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let list = peers(hub).await;
    let a = peer(&list, SPOKE_A);
    assert_eq!(a["name"], "]0;xsitetxt.exeline", "{a}");
    assert_eq!(a["interval_secs"], 30 * 24 * 3600, "{a}");
    let r = from(
        hub,
        SPOKE_A,
        &rotated,
        "POST",
        "handshake",
        handshake(SPOKE_A, "\u{200b}\u{200b}", 0),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let list = peers(hub).await;
    let a = peer(&list, SPOKE_A);
    assert!(a["name"].is_null(), "an invisible name is no name: {a}");
    // Kept at 1 s at least; the largest interval heard recently counts.
    assert!(
        a["intervals"].as_array().unwrap().iter().any(|h| h["secs"] == 1),
        "{a}"
    );
    assert_eq!(a["interval_secs"], 30 * 24 * 3600, "{a}");
}

/// A handshake whose body names another instance than its
/// `Ferry-Instance` header is refused with both ids named, and the body's
/// instance is not listed (one request made two half entries before).
#[tokio::test]
async fn a_handshake_naming_two_instances_is_refused_and_lists_neither_twice() {
    let hub = Instance::new().await;
    hub.feed("files", FeedType::Assets, false).await;
    let token = hub.incoming("edge", &["files"], "push").await;
    let r = from(
        &hub,
        SPOKE_A,
        &token,
        "POST",
        "handshake",
        handshake(SPOKE_B, "site-b", 30),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    let text = r.text();
    assert!(text.contains(SPOKE_A) && text.contains(SPOKE_B), "{text}");
    let list = peers(&hub).await;
    assert!(list.iter().all(|p| p["instance_id"] != SPOKE_B), "{list:?}");
    assert!(list.len() <= 1, "{list:?}");
}

/// A handshake without the `Ferry-Instance` header is answered but makes
/// no entry: one would be bound to no token, and another token of the
/// replication could take it over.
#[tokio::test]
async fn a_handshake_without_an_instance_header_is_not_recorded() {
    let hub = Instance::new().await;
    hub.feed("files", FeedType::Assets, false).await;
    let token = hub.incoming("edge", &["files"], "push").await;
    let r = hub
        .send(
            "POST",
            "/api/replication/v1/handshake",
            Some(&token),
            &[JSON],
            handshake(SPOKE_B, "site-b", 30),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let list = peers(&hub).await;
    assert!(list.is_empty(), "{list:?}");
}

/// A spoke that only pushes is silent while it has nothing to send (it
/// shakes hands again every 5 minutes): it is not flagged stale after a
/// few of its intervals, as a pulling spoke would be.
#[tokio::test]
async fn a_quiet_pushing_spoke_is_not_stale_after_a_few_intervals() {
    let cfg = ferry_core::Config {
        peer_stale_intervals: 2,
        ..ferry_core::Config::default()
    };
    let hub = Instance::with_config(cfg).await;
    hub.feed("files", FeedType::Assets, false).await;
    let token = hub.incoming("edge", &["files"], "pull").await;
    let mut pushing: Value = serde_json::from_str(&handshake(SPOKE_A, "site-a", 1)).unwrap();
    pushing["mode"] = json!({"name": "push", "flows": {
        "pull_missing": false, "push_missing": true, "delete_local": false, "delete_remote": true
    }});
    let r = from(&hub, SPOKE_A, &token, "POST", "handshake", pushing.to_string()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let list = peers(&hub).await;
    assert_eq!(peer(&list, SPOKE_A)["stale"], false, "{list:?}");
}

/// An instance id is hex, whatever its case: a header in capitals names
/// the same instance as the body in lower case.
#[tokio::test]
async fn an_instance_header_in_capitals_names_the_same_instance() {
    let hub = Instance::new().await;
    hub.feed("files", FeedType::Assets, false).await;
    let token = hub.incoming("edge", &["files"], "push").await;
    let id = "0123456789abcdef0123456789abcdef";
    let r = from(
        &hub,
        &id.to_uppercase(),
        &token,
        "POST",
        "handshake",
        handshake(id, "site-c", 30),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let list = peers(&hub).await;
    assert_eq!(peer(&list, id)["name"], "site-c", "{list:?}");
}

/// A token holder naming invented instance ids on its requests cannot fill
/// the hub's list: a token lists at most 16 instances that never shook
/// hands, the rest are served but not recorded (counted in
/// `ferry_replication_peers_unrecorded_total`), and a spoke that shakes
/// hands is listed, on the same token too.
#[tokio::test]
async fn invented_instance_ids_cannot_crowd_out_spokes() {
    let i = Instance::new().await;
    i.feed("files", FeedType::Assets, false).await;
    let token = i.incoming("edge", &["files"], "push").await;
    for n in 0..200u32 {
        let invented = format!("{n:032x}");
        let r = from(&i, &invented, &token, "GET", "feeds/files/digest", String::new()).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
    let list = peers(&i).await;
    assert_eq!(list.len(), 16, "{list:?}");
    let m = scrape(&i).await;
    let unrecorded = m
        .lines()
        .find(|l| l.starts_with("ferry_replication_peers_unrecorded_total{replication=\"edge\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert!(unrecorded.is_some_and(|n| n >= 184.0), "{m}");
    // A spoke on the same token shakes hands: listed, by name, under its
    // token (which its share is counted by), and not counted as unrecorded.
    let r = from(
        &i,
        SPOKE_A,
        &token,
        "POST",
        "handshake",
        handshake(SPOKE_A, "site-a", 60),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let list = peers(&i).await;
    assert_eq!(peer(&list, SPOKE_A)["name"], "site-a");
    let token_id = &token[4..20];
    assert_eq!(peer(&list, SPOKE_A)["token"], token_id, "{list:?}");
    let unrecorded_now = |m: &str| {
        m.lines()
            .find(|l| l.starts_with("ferry_replication_peers_unrecorded_total{replication=\"edge\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    assert_eq!(
        unrecorded_now(&scrape(&i).await),
        unrecorded,
        "a recorded handshake is not unrecorded"
    );
    // Its later requests are recorded as contact.
    let r = from(
        &i,
        SPOKE_A,
        &token,
        "GET",
        "feeds/files/changes?since=0",
        String::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(peer(&peers(&i).await, SPOKE_A)["feeds"]["files"].is_object());
    // After a restart the saved ones count: invented ids still get no
    // more than the 16.
    let i = i.reopen().await;
    for n in 1000..1100u32 {
        let invented = format!("{n:032x}");
        let r = from(&i, &invented, &token, "GET", "feeds/files/digest", String::new()).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
    let list = peers(&i).await;
    assert_eq!(list.len(), 17, "16 invented and site-a: {list:?}");
}
