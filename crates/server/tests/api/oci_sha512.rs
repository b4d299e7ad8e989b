//! sha512 content in OCI feeds (issue 9, item 4), in process: blobs and
//! manifests pushed under sha512 digests are verified with sha512, served
//! under them (and under their sha256 identity), only in the repositories
//! that hold them, and arrive by replication only with aliases that hold.
#![allow(clippy::unwrap_used)]
use crate::common;

use axum::body::Body;
use axum::http::StatusCode;
use common::{ADMIN, Instance, Reply};
use ferry_formats::oci::Sha512Digest;
use ferry_store::Permission;
use ferry_types::{Digest, FeedType};
use serde_json::{Value, json};

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const JSON: (&str, &str) = ("content-type", "application/json");

fn s512(data: &[u8]) -> String {
    Sha512Digest::of(data).to_string()
}

fn code(r: &Reply) -> String {
    r.json()["errors"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[track_caller]
fn refused(r: &Reply, status: u16, expected: &str) {
    assert_eq!(r.status.as_u16(), status, "{}", r.text());
    if !r.body.is_empty() {
        assert_eq!(code(r), expected, "{}", r.text());
    }
}

#[track_caller]
fn created(r: &Reply) {
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
}

fn desc512(media_type: &str, data: &[u8]) -> Value {
    json!({ "mediaType": media_type, "digest": s512(data), "size": data.len() })
}

fn image512(config: &[u8], layer: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": MANIFEST,
        "config": desc512(CONFIG, config), "layers": [desc512(LAYER, layer)],
    }))
    .unwrap()
}

struct Reg {
    i: Instance,
    w: String,
}

impl Reg {
    async fn new() -> Self {
        let i = Instance::new().await;
        i.feed("img", FeedType::Oci, false).await;
        let w = i.key("pusher", Permission::Write, None).await;
        Self { i, w }
    }

    async fn send(&self, method: &str, uri: &str, headers: &[(&str, &str)], body: impl Into<Body>) -> Reply {
        self.i.send(method, uri, Some(&self.w), headers, body).await
    }

    /// A monolithic upload under `digest`.
    async fn blob(&self, repo: &str, digest: &str, data: &[u8]) -> Reply {
        self.send(
            "POST",
            &format!("/v2/img/{repo}/blobs/uploads/?digest={digest}"),
            &[],
            data.to_vec(),
        )
        .await
    }

    /// Config and layer by sha512, then the manifest by its sha512 digest
    /// with `?tag=`. Returns the manifest's bytes.
    async fn push512(&self, repo: &str, tag: &str, config: &[u8], layer: &[u8]) -> Vec<u8> {
        created(&self.blob(repo, &s512(config), config).await);
        created(&self.blob(repo, &s512(layer), layer).await);
        let m = image512(config, layer);
        let r = self
            .send(
                "PUT",
                &format!("/v2/img/{repo}/manifests/{}?tag={tag}", s512(&m)),
                &[("content-type", MANIFEST)],
                m.clone(),
            )
            .await;
        created(&r);
        assert_eq!(r.header("docker-content-digest"), Some(s512(&m).as_str()));
        assert_eq!(
            r.header("location"),
            Some(format!("/v2/img/{repo}/manifests/{}", s512(&m)).as_str())
        );
        assert_eq!(r.header("oci-tag"), Some(tag));
        m
    }
}

#[tokio::test]
async fn blobs_pushed_by_sha512_are_verified_and_served_under_it() {
    let reg = Reg::new().await;
    let data = b"a layer named by its sha512 digest".to_vec();
    let r = reg.blob("app", &s512(&data), &data).await;
    created(&r);
    assert_eq!(r.header("docker-content-digest"), Some(s512(&data).as_str()));
    assert_eq!(
        r.header("location"),
        Some(format!("/v2/img/app/blobs/{}", s512(&data)).as_str())
    );
    for method in ["GET", "HEAD"] {
        let r = reg
            .send(
                method,
                &format!("/v2/img/app/blobs/{}", s512(&data)),
                &[],
                Body::empty(),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{method}: {}", r.text());
        assert_eq!(r.header("docker-content-digest"), Some(s512(&data).as_str()));
        assert_eq!(r.header("content-length"), Some(data.len().to_string().as_str()));
        if method == "GET" {
            assert_eq!(r.body, data);
        }
    }
    // The same content under its sha256 identity.
    let r = reg
        .send(
            "GET",
            &format!("/v2/img/app/blobs/{}", Digest::of(&data)),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.body, data);
    // A byte range under the sha512 digest.
    let r = reg
        .send(
            "GET",
            &format!("/v2/img/app/blobs/{}", s512(&data)),
            &[("range", "bytes=2-6")],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{}", r.text());
    assert_eq!(r.body, &data[2..7]);

    // Not in another repository of the same feed.
    refused(
        &reg.send(
            "GET",
            &format!("/v2/img/other/blobs/{}", s512(&data)),
            &[],
            Body::empty(),
        )
        .await,
        404,
        "BLOB_UNKNOWN",
    );

    // Content that is not what the digest says: 400, nothing stored.
    let liar = b"these bytes do not hash to the digest sent".to_vec();
    let r = reg.blob("app", &s512(b"something else"), &liar).await;
    refused(&r, 400, "DIGEST_INVALID");
    refused(
        &reg.send(
            "GET",
            &format!("/v2/img/app/blobs/{}", Digest::of(&liar)),
            &[],
            Body::empty(),
        )
        .await,
        404,
        "BLOB_UNKNOWN",
    );
    assert_eq!(reg.i.staging_files(), 0);

    // Mounted into another repository by its sha512 digest.
    let r = reg
        .send(
            "POST",
            &format!("/v2/img/other/blobs/uploads/?mount={}&from=img/app", s512(&data)),
            &[],
            Body::empty(),
        )
        .await;
    created(&r);
    assert_eq!(r.header("docker-content-digest"), Some(s512(&data).as_str()));
    let r = reg
        .send(
            "GET",
            &format!("/v2/img/other/blobs/{}", s512(&data)),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.body, data);

    // Deleted by its sha512 digest: gone from that repository only.
    let r = reg
        .send(
            "DELETE",
            &format!("/v2/img/other/blobs/{}", s512(&data)),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    refused(
        &reg.send(
            "GET",
            &format!("/v2/img/other/blobs/{}", s512(&data)),
            &[],
            Body::empty(),
        )
        .await,
        404,
        "BLOB_UNKNOWN",
    );
    let r = reg
        .send(
            "GET",
            &format!("/v2/img/app/blobs/{}", s512(&data)),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.body, data);
}

#[tokio::test]
async fn a_chunked_upload_closes_with_a_sha512_digest() {
    let reg = Reg::new().await;
    let data = b"first chunk, second chunk".to_vec();
    let r = reg
        .send(
            "POST",
            "/v2/img/app/blobs/uploads/?digest-algorithm=sha512",
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let session = r.header("location").unwrap().to_owned();
    let r = reg
        .send(
            "PATCH",
            &session,
            &[("content-range", "0-11"), ("content-length", "12")],
            data[..12].to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let session = r.header("location").unwrap().to_owned();
    let r = reg
        .send(
            "PUT",
            &format!("{session}?digest={}", s512(&data)),
            &[],
            data[12..].to_vec(),
        )
        .await;
    created(&r);
    assert_eq!(r.header("docker-content-digest"), Some(s512(&data).as_str()));
    let r = reg
        .send(
            "GET",
            &format!("/v2/img/app/blobs/{}", s512(&data)),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.body, data);
}

#[tokio::test]
async fn manifests_pushed_by_sha512_are_verified_and_served_under_it() {
    let reg = Reg::new().await;
    let m = reg
        .push512("app", "v1", b"{\"os\":\"linux\"}", b"layer bytes")
        .await;
    for method in ["GET", "HEAD"] {
        let r = reg
            .send(
                method,
                &format!("/v2/img/app/manifests/{}", s512(&m)),
                &[("accept", MANIFEST)],
                Body::empty(),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{method}: {}", r.text());
        assert_eq!(r.header("docker-content-digest"), Some(s512(&m).as_str()));
        assert_eq!(r.header("content-type"), Some(MANIFEST));
        if method == "GET" {
            assert_eq!(r.body, m);
        }
    }
    // By tag and by sha256: the same bytes.
    let r = reg
        .send("GET", "/v2/img/app/manifests/v1", &[], Body::empty())
        .await;
    assert_eq!(r.body, m);
    let r = reg
        .send(
            "GET",
            &format!("/v2/img/app/manifests/{}", Digest::of(&m)),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.body, m);
    // Each layer the manifest names by sha512 is served under that digest.
    let r = reg
        .send(
            "GET",
            &format!("/v2/img/app/blobs/{}", s512(b"layer bytes")),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.body, b"layer bytes");

    // A reference that is not the manifest's sha512 digest.
    let m2 = image512(b"{\"os\":\"linux\"}", b"layer bytes");
    let r = reg
        .send(
            "PUT",
            &format!("/v2/img/app/manifests/{}", s512(b"not the manifest")),
            &[("content-type", MANIFEST)],
            m2,
        )
        .await;
    refused(&r, 400, "DIGEST_INVALID");
    // A sha512 layer the repository does not hold.
    let missing = image512(b"{\"os\":\"linux\"}", b"never pushed");
    let r = reg
        .send(
            "PUT",
            &format!("/v2/img/app/manifests/{}", s512(&missing)),
            &[("content-type", MANIFEST)],
            missing.clone(),
        )
        .await;
    refused(&r, 400, "MANIFEST_BLOB_UNKNOWN");
    assert!(r.text().contains(&s512(b"never pushed")), "{}", r.text());
    // Held in another repository only: still unknown here.
    let r = reg
        .send(
            "PUT",
            &format!("/v2/img/elsewhere/manifests/{}", s512(&m)),
            &[("content-type", MANIFEST)],
            m.clone(),
        )
        .await;
    refused(&r, 400, "MANIFEST_BLOB_UNKNOWN");

    // An index whose child and a referrer whose subject are named by sha512.
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": INDEX,
        "manifests": [desc512(MANIFEST, &m)],
    }))
    .unwrap();
    let r = reg
        .send(
            "PUT",
            &format!("/v2/img/app/manifests/{}", s512(&index)),
            &[("content-type", INDEX)],
            index.clone(),
        )
        .await;
    created(&r);
    created(&reg.blob("app", &s512(b"{}"), b"{}").await);
    let sig = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": MANIFEST, "artifactType": "application/vnd.example.sig",
        "config": desc512("application/vnd.oci.empty.v1+json", b"{}"), "layers": [],
        "subject": desc512(MANIFEST, &m),
    }))
    .unwrap();
    let r = reg
        .send(
            "PUT",
            &format!("/v2/img/app/manifests/{}", s512(&sig)),
            &[("content-type", MANIFEST)],
            sig.clone(),
        )
        .await;
    created(&r);
    assert_eq!(r.header("oci-subject"), Some(s512(&m).as_str()));
    let r = reg
        .send(
            "GET",
            &format!("/v2/img/app/referrers/{}", s512(&m)),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.json()["manifests"][0]["artifactType"],
        "application/vnd.example.sig"
    );
    // The child an index lists by sha512 cannot be deleted by either digest.
    let r = reg
        .send(
            "DELETE",
            &format!("/v2/img/app/manifests/{}", s512(&m)),
            &[],
            Body::empty(),
        )
        .await;
    refused(&r, 409, "DENIED");
    // The index can, by its sha512 digest; then it is gone under both.
    let r = reg
        .send(
            "DELETE",
            &format!("/v2/img/app/manifests/{}", s512(&index)),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    for d in [s512(&index), Digest::of(&index).to_string()] {
        refused(
            &reg.send("GET", &format!("/v2/img/app/manifests/{d}"), &[], Body::empty())
                .await,
            404,
            "MANIFEST_UNKNOWN",
        );
    }
}

/// Reads the hub's changes of feed `img` with the token of an incoming
/// replication that sends (the hub's mode is its permission).
async fn changes(hub: &Instance) -> Vec<Value> {
    let token = hub.incoming("out", &["img"], "push").await;
    let r = hub
        .send(
            "GET",
            "/api/replication/v1/feeds/img/changes?since=0&limit=1000",
            Some(&token),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()["entries"].as_array().unwrap().clone()
}

async fn send_blob(spoke: &Instance, token: &str, data: &[u8]) {
    let r = spoke
        .send(
            "PUT",
            &format!("/api/replication/v1/blobs/{}", Digest::of(data)),
            Some(token),
            &[],
            data.to_vec(),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text());
}

async fn apply(spoke: &Instance, token: &str, entries: Vec<Value>) -> Reply {
    spoke
        .send(
            "POST",
            "/api/replication/v1/feeds/img/apply",
            Some(token),
            &[JSON],
            json!({ "entries": entries }).to_string(),
        )
        .await
}

#[tokio::test]
async fn sha512_content_replicates_and_forged_aliases_are_refused() {
    let hub = Reg::new().await;
    let (config, layer) = (
        b"{\"os\":\"linux\",\"n\":2}".to_vec(),
        b"replicated layer".to_vec(),
    );
    let m = hub.push512("app", "v1", &config, &layer).await;
    let entries = changes(&hub.i).await;
    assert!(entries.len() >= 3, "{entries:?}");

    let spoke = Instance::new().await;
    spoke.feed("img", FeedType::Oci, false).await;
    let token = spoke.incoming("in", &["img"], "pull").await;
    for data in [&config, &layer, &m] {
        send_blob(&spoke, &token, data).await;
    }

    // A forged alias, consistent everywhere else: the manifest item claims
    // the layer's sha512 digest names the config's bytes (and carries
    // those). Only hashing the blob can tell; the entry is refused.
    let mut forged: Vec<Value> = entries.clone();
    let (layer_id, config_id) = (json!(Digest::of(&layer)), json!(Digest::of(&config)));
    for e in &mut forged {
        if let Some(aliases) = e["meta"].get_mut("aliases").and_then(Value::as_object_mut) {
            aliases.insert(s512(&layer), config_id.clone());
            e["meta"]["layers"] = json!([config_id.clone()]);
            let blobs = e["blobs"].as_array_mut().unwrap();
            blobs.retain(|b| *b != layer_id);
        }
    }
    let r = apply(&spoke, &token, forged).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let outcomes = r.json()["outcomes"].to_string();
    assert!(
        outcomes.contains(&format!("hashes to {}, not {}", s512(&config), s512(&layer))),
        "{outcomes}"
    );
    refused(
        &spoke
            .send(
                "GET",
                &format!("/v2/img/app/manifests/{}", s512(&m)),
                Some(ADMIN),
                &[],
                Body::empty(),
            )
            .await,
        404,
        "MANIFEST_UNKNOWN",
    );
    // A forged link: a blob under a sha512 digest that is not its own.
    let forged_link = entries
        .iter()
        .find(|e| e["key"].as_str().unwrap().starts_with("blob/"))
        .cloned()
        .map(|mut e| {
            e["meta"]["sha512"] = json!(s512(b"other content"));
            e
        })
        .unwrap();
    let r = apply(&spoke, &token, vec![forged_link]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(
        r.json()["outcomes"][0]["refused"]["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("not {} as the item says", s512(b"other content")))
    );
    refused(
        &spoke
            .send(
                "GET",
                &format!("/v2/img/app/blobs/{}", s512(b"other content")),
                Some(ADMIN),
                &[],
                Body::empty(),
            )
            .await,
        404,
        "BLOB_UNKNOWN",
    );

    // The real entries: served under the same sha512 digests on the spoke.
    let r = apply(&spoke, &token, entries).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(!r.text().contains("refused"), "{}", r.text());
    let r = spoke
        .send(
            "GET",
            &format!("/v2/img/app/manifests/{}", s512(&m)),
            Some(ADMIN),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.body, m);
    assert_eq!(r.header("docker-content-digest"), Some(s512(&m).as_str()));
    for data in [&config, &layer] {
        let r = spoke
            .send(
                "GET",
                &format!("/v2/img/app/blobs/{}", s512(data)),
                Some(ADMIN),
                &[],
                Body::empty(),
            )
            .await;
        assert_eq!(r.body, *data);
    }
    let r = spoke
        .send("GET", "/v2/img/app/manifests/v1", Some(ADMIN), &[], Body::empty())
        .await;
    assert_eq!(r.body, m);
}
