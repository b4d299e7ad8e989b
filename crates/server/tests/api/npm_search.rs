//! npm search (`GET /npm/FEED/-/v1/search`) and npm login / logout
//! (`PUT /-/user/org.couchdb.user:NAME`, `DELETE /-/user/token/…`), in
//! process (issue 9, items 1 and 2).
#![allow(clippy::unwrap_used)]
use crate::common;

use std::io::Write;

use axum::body::Body;
use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::{Instance, Reply};
use ferry_store::Permission;
use ferry_types::FeedType;
use serde_json::{Value, json};
use sha1::Sha1;
use sha2::{Digest as _, Sha512};

const HOST: (&str, &str) = ("host", "registry.test:4873");

fn tgz(name: &str, version: &str) -> Vec<u8> {
    let pj = json!({"name": name, "version": version}).to_string();
    let mut tar = tar::Builder::new(Vec::new());
    for (path, data) in [
        ("package/package.json", pj.as_bytes()),
        ("package/index.js", b"module.exports = 1;\n"),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, path, data).unwrap();
    }
    let tar = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

fn publish_body(name: &str, version: &str, description: &str, keywords: &[&str]) -> Vec<u8> {
    let t = tgz(name, version);
    json!({
        "_id": name, "name": name, "description": description,
        "dist-tags": {"latest": version},
        "versions": {version: {
            "name": name, "version": version, "description": description,
            "keywords": keywords, "homepage": "https://example.org/home",
            "repository": {"type": "git", "url": "git+https://example.org/r.git"},
            "maintainers": [{"name": "alice", "email": "a@example.org"}],
            "_npmUser": {"name": "alice", "email": "a@example.org"},
            "_id": format!("{name}@{version}"),
            "dist": {
                "integrity": format!("sha512-{}", STANDARD.encode(Sha512::digest(&t))),
                "shasum": Sha1::digest(&t).iter().map(|b| format!("{b:02x}")).collect::<String>(),
                "tarball": format!("http://elsewhere/{name}/-/{name}-{version}.tgz"),
            },
        }},
        "_attachments": {format!("{name}-{version}.tgz"): {
            "content_type": "application/octet-stream", "data": STANDARD.encode(&t), "length": t.len(),
        }},
    })
    .to_string()
    .into_bytes()
}

struct Reg {
    i: Instance,
    w: String,
}

impl Reg {
    async fn new() -> Self {
        let i = Instance::new().await;
        i.feed("js", FeedType::Npm, false).await;
        i.feed("team", FeedType::Npm, true).await;
        i.feed("img", FeedType::Oci, false).await;
        let w = i.key("pub", Permission::Write, None).await;
        Self { i, w }
    }

    async fn send(&self, method: &str, uri: &str, key: Option<&str>, body: impl Into<Body>) -> Reply {
        self.i
            .send(
                method,
                uri,
                key,
                &[HOST, ("content-type", "application/json")],
                body,
            )
            .await
    }

    async fn publish(&self, feed: &str, name: &str, version: &str, description: &str, keywords: &[&str]) {
        let path = format!("/npm/{feed}/{}", name.replace('/', "%2f"));
        let r = self
            .send(
                "PUT",
                &path,
                Some(&self.w),
                publish_body(name, version, description, keywords),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    }

    async fn search(&self, feed: &str, query: &str, key: Option<&str>) -> Reply {
        self.send(
            "GET",
            &format!("/npm/{feed}/-/v1/search?{query}"),
            key,
            Body::empty(),
        )
        .await
    }
}

fn names(v: &Value) -> Vec<String> {
    v["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["package"]["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn search_matches_name_description_keywords_in_npms_shape() {
    let reg = Reg::new().await;
    reg.publish(
        "js",
        "left-pad",
        "1.0.0",
        "Pads strings on the left",
        &["string", "pad"],
    )
    .await;
    reg.publish(
        "js",
        "left-pad",
        "1.1.0",
        "Pads strings on the left",
        &["string", "pad"],
    )
    .await;
    reg.publish("js", "@acme/right-pad", "2.0.0", "Pads on the right", &["pad"])
        .await;
    reg.publish("js", "unrelated", "0.1.0", "Nothing to see", &["misc"])
        .await;
    reg.publish("team", "team-pad", "1.0.0", "Private padding", &["pad"])
        .await;

    let r = reg
        .search(
            "js",
            "text=pad&size=20&from=0&quality=0.65&popularity=0.98&maintenance=0.5",
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert_eq!(v["total"], 2);
    assert_eq!(names(&v), vec!["@acme/right-pad", "left-pad"]);
    let hit = &v["objects"][1];
    let p = &hit["package"];
    assert_eq!(p["version"], "1.1.0");
    assert_eq!(p["description"], "Pads strings on the left");
    assert_eq!(p["keywords"], json!(["string", "pad"]));
    assert!(p["date"].as_str().unwrap().ends_with('Z'));
    // The publisher is the API key that published, as the registry knows
    // it (not a name the client claims).
    assert_eq!(p["publisher"]["username"], "pub");
    assert_eq!(p["maintainers"][0]["username"], "alice");
    assert_eq!(p["links"]["npm"], "http://registry.test:4873/npm/js/left-pad");
    assert_eq!(p["links"]["homepage"], "https://example.org/home");
    assert_eq!(p["links"]["repository"], "git+https://example.org/r.git");
    assert!(hit["score"]["final"].as_f64().unwrap() > 0.0);
    for k in ["quality", "popularity", "maintenance"] {
        assert!(hit["score"]["detail"][k].is_number(), "{k}");
    }
    assert!(hit["searchScore"].is_number());
    assert!(v["time"].as_str().unwrap().ends_with('Z'));

    // Name, description, keywords; every term must match.
    assert_eq!(
        names(&reg.search("js", "text=left", None).await.json()),
        vec!["left-pad"]
    );
    assert_eq!(
        names(&reg.search("js", "text=right+pads", None).await.json()),
        vec!["@acme/right-pad"]
    );
    assert_eq!(
        names(&reg.search("js", "text=misc", None).await.json()),
        vec!["unrelated"]
    );
    assert_eq!(
        names(&reg.search("js", "text=keywords:string", None).await.json()),
        vec!["left-pad"]
    );
    assert!(names(&reg.search("js", "text=pad+nothing", None).await.json()).is_empty());
    // An exact name ranks first.
    assert_eq!(
        names(&reg.search("js", "text=left-pad", None).await.json())[0],
        "left-pad"
    );

    // Paging: size and from; total counts every match.
    let v = reg.search("js", "text=pad&size=1&from=1", None).await.json();
    assert_eq!(
        (names(&v), v["total"].clone()),
        (vec!["left-pad".to_owned()], json!(2))
    );
    let v = reg.search("js", "text=&size=100000", None).await.json();
    assert_eq!(v["total"], 3);
    let v = reg.search("js", "text=pad&from=10", None).await.json();
    assert!(names(&v).is_empty());

    // Bad parameters: 400 with the reason.
    for (q, why) in [
        ("text=pad&size=ten", "size"),
        ("text=pad&size=0", "size"),
        ("text=pad&from=-1", "from"),
        ("text=pad&quality=high", "quality"),
        ("text=%ff", "UTF-8"),
    ] {
        let r = reg.search("js", q, None).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}: {}", r.text());
        assert!(
            r.json()["error"].as_str().unwrap().contains(why),
            "{q}: {}",
            r.text()
        );
    }
    let long = "a".repeat(2000);
    let r = reg.search("js", &format!("text={long}"), None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());

    // A private feed: only for keys that may read it.
    let r = reg.search("team", "text=pad", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    let other = reg.i.key("other", Permission::Read, Some(&["js"])).await;
    let r = reg.search("team", "text=pad", Some(&other)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    let reader = reg.i.key("reader", Permission::Read, Some(&["team"])).await;
    let r = reg.search("team", "text=pad", Some(&reader)).await;
    assert_eq!(names(&r.json()), vec!["team-pad"]);
    assert_eq!(r.header("cache-control"), Some("private, no-cache"));
    // Another feed's packages never show.
    assert!(!names(&reg.search("js", "text=team", None).await.json()).contains(&"team-pad".to_owned()));
}

#[tokio::test]
async fn login_takes_an_api_key_as_password() {
    let reg = Reg::new().await;
    let reader = reg.i.key("reader", Permission::Read, Some(&["team"])).await;
    let login = |feed: &str, user: &str| format!("/npm/{feed}/-/user/org.couchdb.user:{user}");
    let body = |password: &str| {
        json!({"_id": "org.couchdb.user:alice", "name": "alice", "password": password, "type": "user", "roles": []}).to_string()
    };

    // Web login is not offered: npm falls back to the classic flow on a 4xx.
    let r = reg.send("POST", "/npm/team/-/v1/login", None, "{}").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());

    // The classic login, anonymous (npm sends no credentials), on a private feed.
    let r = reg
        .send("PUT", &login("team", "alice"), None, body(&reader))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let v = r.json();
    assert_eq!(v["ok"], true);
    assert_eq!(v["id"], "org.couchdb.user:alice");
    assert_eq!(v["token"], reader.as_str());
    // The token works as the bearer for that key.
    let r = reg
        .send("GET", "/npm/team/-/whoami", Some(&reader), Body::empty())
        .await;
    assert_eq!(r.json()["username"], "reader");

    // A wrong password: 401 saying why; no password: 401.
    let r = reg
        .send("PUT", &login("team", "alice"), None, body("ferry_wrong"))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    assert!(
        r.json()["error"].as_str().unwrap().contains("not an API key"),
        "{}",
        r.text()
    );
    let r = reg
        .send("PUT", &login("team", "alice"), None, r#"{"name":"alice"}"#)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    // No password but a key presented: that key.
    let r = reg
        .send(
            "PUT",
            &login("team", "alice"),
            Some(&reader),
            r#"{"name":"alice"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(r.json()["token"], reader.as_str());
    // Malformed: 400.
    let r = reg.send("PUT", &login("team", "alice"), None, "not json").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    let r = reg
        .send("PUT", "/npm/team/-/user/alice", None, body(&reader))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    // A key that may not read the feed: as a missing feed; a feed of
    // another type: not found.
    let r = reg.send("PUT", &login("js", "alice"), None, body(&reader)).await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "public feeds are readable: {}",
        r.text()
    );
    let other = reg.i.key("other", Permission::Read, Some(&["js"])).await;
    let r = reg.send("PUT", &login("team", "bob"), None, body(&other)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    let r = reg.send("PUT", &login("img", "bob"), None, body(&other)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    let r = reg.send("PUT", &login("nope", "bob"), None, body(&other)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());

    // Logout answers success and revokes nothing.
    let r = reg
        .send(
            "DELETE",
            &format!("/npm/team/-/user/token/{reader}"),
            Some(&reader),
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = reg
        .send("GET", "/npm/team/-/whoami", Some(&reader), Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}
