//! The OCI distribution API, in process: blob uploads (monolithic, chunked,
//! mounted), manifests and tags, listings, referrers, deletes, auth, and
//! the items they leave for replication.
#![allow(clippy::unwrap_used)]
use crate::common;

use axum::body::Body;
use axum::http::StatusCode;
use base64::Engine;
use common::{ADMIN, Instance, Reply};
use ferry_store::Permission;
use ferry_types::{Digest, FeedName, FeedType, ItemKey};
use serde_json::{Value, json};

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// What docker sends when pulling.
const DOCKER_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json";

fn digest(data: &[u8]) -> String {
    Digest::of(data).to_string()
}

fn desc(media_type: &str, data: &[u8]) -> Value {
    json!({ "mediaType": media_type, "digest": digest(data), "size": data.len() })
}

fn code(r: &Reply) -> String {
    r.json()["errors"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Asserts an error status and code (HEAD answers carry no body to check).
#[track_caller]
fn refused(r: &Reply, status: u16, expected: &str) {
    assert_eq!(r.status.as_u16(), status, "{}", r.text());
    if !r.body.is_empty() {
        assert_eq!(code(r), expected, "{}", r.text());
    }
    assert_eq!(r.header("docker-distribution-api-version"), Some("registry/2.0"));
}

/// A pushed single-platform image.
struct Image {
    manifest: Vec<u8>,
    digest: String,
    config: Vec<u8>,
    layer: Vec<u8>,
}

struct Oci {
    i: Instance,
    /// A key that may write every feed.
    w: String,
    /// A read-only key.
    r: String,
}

impl Oci {
    async fn new() -> Self {
        Self::with_config(ferry_core::Config::default()).await
    }

    async fn with_config(cfg: ferry_core::Config) -> Self {
        let i = Instance::with_config(cfg).await;
        i.feed("img", FeedType::Oci, false).await;
        i.feed("other", FeedType::Oci, false).await;
        i.feed("secret", FeedType::Oci, true).await;
        i.feed("js", FeedType::Npm, false).await;
        let w = i.key("pusher", Permission::Write, None).await;
        let r = i.key("puller", Permission::Read, None).await;
        Self { i, w, r }
    }

    async fn send(&self, method: &str, uri: &str, headers: &[(&str, &str)], body: impl Into<Body>) -> Reply {
        self.i.send(method, uri, Some(&self.w), headers, body).await
    }

    async fn get(&self, uri: &str) -> Reply {
        self.send("GET", uri, &[], Body::empty()).await
    }

    async fn head(&self, uri: &str) -> Reply {
        self.send("HEAD", uri, &[], Body::empty()).await
    }

    /// Monolithic upload into `feed/repo`; returns the digest.
    async fn push_blob_to(&self, feed: &str, repo: &str, data: &[u8]) -> String {
        let d = digest(data);
        let r = self
            .send(
                "POST",
                &format!("/v2/{feed}/{repo}/blobs/uploads/?digest={d}"),
                &[("content-type", "application/octet-stream")],
                data.to_vec(),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        d
    }

    async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        self.push_blob_to("img", repo, data).await
    }

    async fn put_manifest(&self, repo: &str, reference: &str, media_type: &str, body: &[u8]) -> Reply {
        self.send(
            "PUT",
            &format!("/v2/img/{repo}/manifests/{reference}"),
            &[("content-type", media_type)],
            body.to_vec(),
        )
        .await
    }

    /// Pushes a config, one layer and an OCI manifest (by `reference`; by
    /// its own digest when `reference` is empty).
    async fn push_image(&self, repo: &str, reference: &str, marker: &str) -> Image {
        let config = json!({ "architecture": "amd64", "os": "linux", "marker": marker })
            .to_string()
            .into_bytes();
        let layer = format!("layer of {marker}").into_bytes();
        self.push_blob(repo, &config).await;
        self.push_blob(repo, &layer).await;
        let manifest = serde_json::to_vec_pretty(&json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": desc(CONFIG, &config),
            "layers": [desc(LAYER, &layer)],
        }))
        .unwrap();
        let by_digest = digest(&manifest);
        let reference = if reference.is_empty() {
            by_digest.as_str()
        } else {
            reference
        };
        let r = self.put_manifest(repo, reference, MANIFEST, &manifest).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        Image {
            digest: digest(&manifest),
            manifest,
            config,
            layer,
        }
    }

    async fn item(&self, feed: &str, key: &str) -> Option<ferry_store::ItemRecord> {
        let feed = self.i.ferry.feed(&FeedName::new(feed).unwrap()).await.unwrap();
        self.i
            .ferry
            .item(&feed, &ItemKey::new(key).unwrap())
            .await
            .unwrap()
    }
}

fn basic(user: &str, password: &str) -> String {
    let raw = format!("{user}:{password}");
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
}

// ---------------------------------------------------------------------------

#[tokio::test]
async fn base_endpoint_challenges_and_accepts_keys() {
    let o = Oci::new().await;
    let r = o.i.get("/v2/").await;
    refused(&r, 401, "UNAUTHORIZED");
    assert_eq!(r.header("www-authenticate"), Some("Basic realm=\"ferry\""));
    let r = o.i.send("GET", "/v2/", Some(&o.r), &[], Body::empty()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("docker-distribution-api-version"), Some("registry/2.0"));
    // Basic auth: any user, the key as password; the empty credentials an
    // anonymous client answers the challenge with are anonymous.
    let b = basic("skopeo", &o.w);
    let r =
        o.i.send("GET", "/v2/", None, &[("authorization", &b)], Body::empty())
            .await;
    assert_eq!(r.status, StatusCode::OK);
    let anon = basic("", "");
    let r =
        o.i.send("GET", "/v2/", None, &[("authorization", &anon)], Body::empty())
            .await;
    assert_eq!(r.status, StatusCode::OK);
    let r =
        o.i.send("GET", "/v2", Some("wrong-key"), &[], Body::empty())
            .await;
    refused(&r, 401, "UNAUTHORIZED");
    assert_eq!(r.header("www-authenticate"), Some("Basic realm=\"ferry\""));
}

#[tokio::test]
async fn auth_rules_and_unknown_names() {
    let o = Oci::new().await;
    let img = o.push_image("app", "v1", "a").await;
    // Anonymous pulls from a public feed work.
    let r = o.i.get("/v2/img/app/manifests/v1").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, img.manifest);
    // Writes without credentials are challenged.
    let r =
        o.i.send("POST", "/v2/img/app/blobs/uploads/", None, &[], Body::empty())
            .await;
    refused(&r, 401, "UNAUTHORIZED");
    assert_eq!(r.header("www-authenticate"), Some("Basic realm=\"ferry\""));
    // A read-only key may not write.
    let r =
        o.i.send(
            "POST",
            "/v2/img/app/blobs/uploads/",
            Some(&o.r),
            &[],
            Body::empty(),
        )
        .await;
    refused(&r, 403, "DENIED");
    let r =
        o.i.send(
            "DELETE",
            "/v2/img/app/manifests/v1",
            Some(&o.r),
            &[],
            Body::empty(),
        )
        .await;
    refused(&r, 403, "DENIED");
    // Private feeds need a key to read.
    refused(&o.i.get("/v2/secret/app/tags/list").await, 401, "UNAUTHORIZED");
    // A key scoped to another feed is told the feed does not exist.
    let scoped = o.i.key("scoped", Permission::Write, Some(&["other"])).await;
    let r =
        o.i.send(
            "GET",
            "/v2/secret/app/tags/list",
            Some(&scoped),
            &[],
            Body::empty(),
        )
        .await;
    refused(&r, 404, "NAME_UNKNOWN");
    // Unknown feeds, feeds of another type, unknown repositories.
    refused(&o.get("/v2/nope/app/tags/list").await, 404, "NAME_UNKNOWN");
    refused(&o.get("/v2/js/app/tags/list").await, 404, "NAME_UNKNOWN");
    refused(&o.get("/v2/img/ghost/tags/list").await, 404, "NAME_UNKNOWN");
    // Invalid repository names.
    refused(&o.get("/v2/img/Bad/manifests/v1").await, 400, "NAME_INVALID");
    refused(&o.get("/v2/img/manifests/v1").await, 400, "NAME_INVALID");
    let r = o
        .send("POST", "/v2/img/a..b/blobs/uploads/", &[], Body::empty())
        .await;
    refused(&r, 400, "NAME_INVALID");
    // A method an endpoint does not take.
    let r = o
        .send("PATCH", "/v2/img/app/manifests/v1", &[], Body::empty())
        .await;
    refused(&r, 405, "UNSUPPORTED");
}

#[tokio::test]
async fn monolithic_uploads_and_blob_reads() {
    let o = Oci::new().await;
    let data = b"hello, registry".to_vec();
    let d = digest(&data);
    // One POST with the body.
    let r = o
        .send(
            "POST",
            &format!("/v2/img/app/blobs/uploads/?digest={d}"),
            &[],
            data.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(
        r.header("location"),
        Some(format!("/v2/img/app/blobs/{d}").as_str())
    );
    assert_eq!(r.header("docker-content-digest"), Some(d.as_str()));

    let r = o.head(&format!("/v2/img/app/blobs/{d}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("docker-content-digest"), Some(d.as_str()));
    assert_eq!(r.header("content-length"), Some("15"));
    assert!(r.body.is_empty());
    let r = o.get(&format!("/v2/img/app/blobs/{d}")).await;
    assert_eq!(r.body, data);
    let r = o
        .send(
            "GET",
            &format!("/v2/img/app/blobs/{d}"),
            &[("range", "bytes=7-14")],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.body, b"registry");
    assert_eq!(r.header("content-range"), Some("bytes 7-14/15"));

    // POST for a session, then PUT with the whole body.
    let other = b"second blob".to_vec();
    let d2 = digest(&other);
    let r = o
        .send("POST", "/v2/img/app/blobs/uploads/", &[], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let loc = r.header("location").unwrap().to_owned();
    let r = o
        .send("PUT", &format!("{loc}?digest={d2}"), &[], other.clone())
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(r.header("docker-content-digest"), Some(d2.as_str()));
    assert_eq!(o.get(&format!("/v2/img/app/blobs/{d2}")).await.body, other);

    // A blob is only in the repositories it was pushed to (or mounted into).
    refused(
        &o.head(&format!("/v2/img/elsewhere/blobs/{d}")).await,
        404,
        "BLOB_UNKNOWN",
    );
    refused(
        &o.get(&format!("/v2/other/app/blobs/{d}")).await,
        404,
        "BLOB_UNKNOWN",
    );
    refused(
        &o.get(&format!("/v2/img/app/blobs/{}", digest(b"never"))).await,
        404,
        "BLOB_UNKNOWN",
    );
    assert_eq!(o.i.staging_files(), 0);
}

#[tokio::test]
async fn digest_mismatch_stores_nothing() {
    let o = Oci::new().await;
    let data = b"the real content".to_vec();
    let wrong = digest(b"something else");
    let r = o
        .send(
            "POST",
            &format!("/v2/img/app/blobs/uploads/?digest={wrong}"),
            &[],
            data.clone(),
        )
        .await;
    refused(&r, 400, "DIGEST_INVALID");
    assert_eq!(o.i.staging_files(), 0);
    assert_eq!(o.i.ferry.blob_size(&Digest::of(&data)).await.unwrap(), None);
    refused(
        &o.head(&format!("/v2/img/app/blobs/{wrong}")).await,
        404,
        "BLOB_UNKNOWN",
    );

    // The same through a session: the session is discarded.
    let r = o
        .send("POST", "/v2/img/app/blobs/uploads/", &[], Body::empty())
        .await;
    let loc = r.header("location").unwrap().to_owned();
    let r = o.send("PATCH", &loc, &[], data.clone()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let r = o
        .send("PUT", &format!("{loc}?digest={wrong}"), &[], Body::empty())
        .await;
    refused(&r, 400, "DIGEST_INVALID");
    refused(&o.get(&loc).await, 404, "BLOB_UPLOAD_UNKNOWN");
    assert_eq!(o.i.ferry.blob_size(&Digest::of(&data)).await.unwrap(), None);
    assert_eq!(o.i.staging_files(), 0);

    // Malformed digests, other algorithms, a PUT without a digest.
    let r = o
        .send(
            "POST",
            "/v2/img/app/blobs/uploads/?digest=sha256:abc",
            &[],
            data.clone(),
        )
        .await;
    refused(&r, 400, "DIGEST_INVALID");
    let sha512 = format!("sha512:{}", "ab".repeat(64));
    let r = o
        .send(
            "POST",
            &format!("/v2/img/app/blobs/uploads/?digest={sha512}"),
            &[],
            data.clone(),
        )
        .await;
    // The content is not what the sha512 digest says.
    refused(&r, 400, "DIGEST_INVALID");
    let md5 = format!("md5:{}", "ab".repeat(16));
    let r = o
        .send(
            "POST",
            &format!("/v2/img/app/blobs/uploads/?digest={md5}"),
            &[],
            data.clone(),
        )
        .await;
    refused(&r, 400, "UNSUPPORTED");
    assert!(r.text().contains("sha512"), "{}", r.text());
    // A sha512 digest names nothing held here: 404, as the spec asks.
    refused(
        &o.get(&format!("/v2/img/app/blobs/{sha512}")).await,
        404,
        "BLOB_UNKNOWN",
    );
    refused(&o.get("/v2/img/app/blobs/nonsense").await, 400, "DIGEST_INVALID");
    let r = o
        .send("POST", "/v2/img/app/blobs/uploads/", &[], Body::empty())
        .await;
    let loc = r.header("location").unwrap().to_owned();
    refused(&o.send("PUT", &loc, &[], data).await, 400, "DIGEST_INVALID");
}

#[tokio::test]
async fn chunked_upload_in_three_chunks() {
    let o = Oci::new().await;
    let data: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let d = digest(&data);
    let (c1, rest) = data.split_at(1000);
    let (c2, c3) = rest.split_at(1200);

    let r = o
        .send("POST", "/v2/img/team/app/blobs/uploads/", &[], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let loc = r.header("location").unwrap().to_owned();
    let uuid = r.header("docker-upload-uuid").unwrap().to_owned();
    assert_eq!(loc, format!("/v2/img/team/app/blobs/uploads/{uuid}"));
    assert_eq!(r.header("range"), Some("0-0"));
    assert_eq!(r.header("content-length"), Some("0"));

    // Chunk 1, with Content-Range.
    let r = o
        .send(
            "PATCH",
            &loc,
            &[
                ("content-range", "0-999"),
                ("content-type", "application/octet-stream"),
            ],
            c1.to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    assert_eq!(r.header("range"), Some("0-999"));
    assert_eq!(r.header("location"), Some(loc.as_str()));
    let r = o.get(&loc).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(r.header("range"), Some("0-999"));
    assert_eq!(r.header("docker-upload-uuid"), Some(uuid.as_str()));

    // Chunk 2, without Content-Range (streamed, as skopeo does).
    let r = o.send("PATCH", &loc, &[], c2.to_vec()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.header("range"), Some("0-2199"));

    // Out of order: 416 with where the upload stands; nothing changes.
    let r = o
        .send("PATCH", &loc, &[("content-range", "1000-1799")], c3.to_vec())
        .await;
    refused(&r, 416, "RANGE_INVALID");
    assert_eq!(r.header("range"), Some("0-2199"));
    assert_eq!(r.header("location"), Some(loc.as_str()));
    let r = o
        .send("PATCH", &loc, &[("content-range", "garbage")], c3.to_vec())
        .await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    let r = o
        .send("PATCH", &loc, &[("content-range", "2200-2299")], c3.to_vec())
        .await;
    assert_eq!(
        r.status,
        StatusCode::RANGE_NOT_SATISFIABLE,
        "length disagrees with the range"
    );
    let r = o.get(&loc).await;
    assert_eq!(r.header("range"), Some("0-2199"));

    // Chunk 3 closes the upload.
    let r = o
        .send(
            "PUT",
            &format!("{loc}?digest={d}"),
            &[("content-range", "2200-2999")],
            c3.to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(
        r.header("location"),
        Some(format!("/v2/img/team/app/blobs/{d}").as_str())
    );
    assert_eq!(r.header("docker-content-digest"), Some(d.as_str()));
    assert_eq!(o.get(&format!("/v2/img/team/app/blobs/{d}")).await.body, data);
    refused(&o.get(&loc).await, 404, "BLOB_UPLOAD_UNKNOWN");
    assert_eq!(o.i.staging_files(), 0);
}

#[tokio::test]
async fn upload_sessions_cancel_and_unknown() {
    let o = Oci::new().await;
    let r = o
        .send("POST", "/v2/img/app/blobs/uploads/", &[], Body::empty())
        .await;
    let loc = r.header("location").unwrap().to_owned();
    let id = r.header("docker-upload-uuid").unwrap().to_owned();
    assert_eq!(
        o.send("PATCH", &loc, &[], b"abc".to_vec()).await.status,
        StatusCode::ACCEPTED
    );
    // A session belongs to its repository.
    let r = o
        .send(
            "PATCH",
            &format!("/v2/img/other/blobs/uploads/{id}"),
            &[],
            b"d".to_vec(),
        )
        .await;
    refused(&r, 404, "BLOB_UPLOAD_UNKNOWN");
    let r = o.send("DELETE", &loc, &[], Body::empty()).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    refused(
        &o.send("PATCH", &loc, &[], b"d".to_vec()).await,
        404,
        "BLOB_UPLOAD_UNKNOWN",
    );
    refused(
        &o.send("DELETE", &loc, &[], Body::empty()).await,
        404,
        "BLOB_UPLOAD_UNKNOWN",
    );
    let ghost = "/v2/img/app/blobs/uploads/00000000000000000000000000000000";
    refused(&o.get(ghost).await, 404, "BLOB_UPLOAD_UNKNOWN");
    let r = o
        .send(
            "PUT",
            &format!("{ghost}?digest={}", digest(b"")),
            &[],
            Body::empty(),
        )
        .await;
    refused(&r, 404, "BLOB_UPLOAD_UNKNOWN");
    refused(
        &o.get("/v2/img/app/blobs/uploads/not-a-session").await,
        404,
        "BLOB_UPLOAD_UNKNOWN",
    );
    // Status needs a write key.
    let r = o
        .send("POST", "/v2/img/app/blobs/uploads/", &[], Body::empty())
        .await;
    let loc = r.header("location").unwrap().to_owned();
    let r = o.i.send("GET", &loc, Some(&o.r), &[], Body::empty()).await;
    refused(&r, 403, "DENIED");
}

/// A POST that starts an upload session (or mounts) carries no content:
/// with some — declared, or streamed without a length — it is refused
/// with a reason and no session starts; an empty body is fine, and the
/// monolithic form (`?digest=`) takes its body.
#[tokio::test]
async fn a_session_start_with_content_is_refused() {
    let o = Oci::new().await;
    let start = "/v2/img/app/blobs/uploads/";
    let r = o.send("POST", start, &[], b"stray bytes".to_vec()).await;
    refused(&r, 400, "BLOB_UPLOAD_INVALID");
    assert!(r.text().contains("carries no content"), "{}", r.text());
    assert!(r.header("location").is_none());
    let r = o
        .send("POST", start, &[("content-length", "3")], b"abc".to_vec())
        .await;
    refused(&r, 400, "BLOB_UPLOAD_INVALID");
    let streamed = Body::from_stream(futures::stream::iter(vec![Ok::<_, std::io::Error>(
        bytes::Bytes::from_static(b"x"),
    )]));
    refused(
        &o.send("POST", start, &[], streamed).await,
        400,
        "BLOB_UPLOAD_INVALID",
    );
    let mount = format!("{start}?mount={}&from=img/other", digest(b"nowhere"));
    refused(
        &o.send("POST", &mount, &[], b"abc".to_vec()).await,
        400,
        "BLOB_UPLOAD_INVALID",
    );
    // Empty: declared, streamed, or none at all.
    let r = o
        .send("POST", start, &[("content-length", "0")], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let empty = Body::from_stream(futures::stream::iter(
        Vec::<Result<bytes::Bytes, std::io::Error>>::new(),
    ));
    assert_eq!(
        o.send("POST", start, &[], empty).await.status,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        o.send("POST", &mount, &[], Body::empty()).await.status,
        StatusCode::ACCEPTED
    );
    // The monolithic form carries the blob.
    let data = b"monolithic".to_vec();
    let r = o
        .send(
            "POST",
            &format!("{start}?digest={}", digest(&data)),
            &[],
            data.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(o.i.staging_files(), 0);
}

#[tokio::test]
async fn cross_repository_mount() {
    let o = Oci::new().await;
    let d = o.push_blob("base", b"shared layer").await;
    let r = o
        .send(
            "POST",
            &format!("/v2/img/app/blobs/uploads/?mount={d}&from=img/base"),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(
        r.header("location"),
        Some(format!("/v2/img/app/blobs/{d}").as_str())
    );
    assert_eq!(r.header("docker-content-digest"), Some(d.as_str()));
    assert_eq!(
        o.head(&format!("/v2/img/app/blobs/{d}")).await.status,
        StatusCode::OK
    );
    // Without `from`, a blob anywhere in the feed mounts too.
    let r = o
        .send(
            "POST",
            &format!("/v2/img/third/blobs/uploads/?mount={d}"),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    // From another feed the caller may read.
    let r = o
        .send(
            "POST",
            &format!("/v2/other/app/blobs/uploads/?mount={d}&from=img/base"),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        o.head(&format!("/v2/other/app/blobs/{d}")).await.status,
        StatusCode::OK
    );
    // Unknown blob, or a source the caller cannot read: an upload session.
    let unknown = digest(b"not here");
    for from in ["img/base", "secret/base", "nope/base", "junk"] {
        let r = o
            .send(
                "POST",
                &format!("/v2/img/app/blobs/uploads/?mount={unknown}&from={from}"),
                &[],
                Body::empty(),
            )
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{from}: {}", r.text());
        assert!(
            r.header("location")
                .unwrap()
                .starts_with("/v2/img/app/blobs/uploads/")
        );
    }
    let secret = o.push_blob_to("secret", "base", b"secret layer").await;
    let scoped = o.i.key("scoped", Permission::Write, Some(&["img"])).await;
    let r =
        o.i.send(
            "POST",
            &format!("/v2/img/app/blobs/uploads/?mount={secret}&from=secret/base"),
            Some(&scoped),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::ACCEPTED,
        "no mount from a feed the key cannot read"
    );
    let r = o
        .send(
            "POST",
            "/v2/img/app/blobs/uploads/?mount=garbage&from=img/base",
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn manifests_by_tag_and_digest() {
    let o = Oci::new().await;
    let img = o.push_image("app", "v1", "one").await;
    // PUT answers.
    let r = o.put_manifest("app", "v1", MANIFEST, &img.manifest).await;
    assert_eq!(r.status, StatusCode::CREATED, "pushing the same again is fine");
    assert_eq!(r.header("docker-content-digest"), Some(img.digest.as_str()));
    assert_eq!(
        r.header("location"),
        Some(format!("/v2/img/app/manifests/{}", img.digest).as_str())
    );
    assert_eq!(r.header("oci-subject"), None);

    // GET by tag, with the list of types docker accepts: the bytes as pushed.
    let r = o
        .send(
            "GET",
            "/v2/img/app/manifests/v1",
            &[("accept", DOCKER_ACCEPT)],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, img.manifest);
    assert_eq!(r.header("content-type"), Some(MANIFEST));
    assert_eq!(r.header("docker-content-digest"), Some(img.digest.as_str()));
    // HEAD by tag and by digest.
    for reference in ["v1", img.digest.as_str()] {
        let r = o.head(&format!("/v2/img/app/manifests/{reference}")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("docker-content-digest"), Some(img.digest.as_str()));
        assert_eq!(
            r.header("content-length"),
            Some(img.manifest.len().to_string().as_str())
        );
        assert_eq!(r.header("content-type"), Some(MANIFEST));
    }
    let r = o.get(&format!("/v2/img/app/manifests/{}", img.digest)).await;
    assert_eq!(r.body, img.manifest);
    // The manifest is also readable as a blob of the repository.
    let r = o.get(&format!("/v2/img/app/blobs/{}", img.digest)).await;
    assert_eq!(r.body, img.manifest);

    // A Docker schema 2 manifest, pushed by digest, then tagged.
    let docker = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": desc("application/vnd.docker.container.image.v1+json", &img.config),
        "layers": [desc("application/vnd.docker.image.rootfs.diff.tar.gzip", &img.layer)],
    }))
    .unwrap();
    let dd = digest(&docker);
    let r = o.put_manifest("app", &dd, DOCKER_MANIFEST, &docker).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let r = o.put_manifest("app", "docker", DOCKER_MANIFEST, &docker).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = o.get("/v2/img/app/manifests/docker").await;
    assert_eq!(r.header("content-type"), Some(DOCKER_MANIFEST));
    assert_eq!(r.body, docker);

    // Moving a tag.
    let img2 = o.push_image("app", "v2", "two").await;
    let r = o.put_manifest("app", "v1", MANIFEST, &img2.manifest).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(o.get("/v2/img/app/manifests/v1").await.body, img2.manifest);

    // Pulls are counted on the manifest item (GETs only).
    o.i.ferry.flush_downloads().await.unwrap();
    let item = o
        .item("img", &format!("manifest/app/{}", img.digest))
        .await
        .unwrap();
    assert_eq!(item.downloads, 2);

    refused(
        &o.get("/v2/img/app/manifests/nope").await,
        404,
        "MANIFEST_UNKNOWN",
    );
    refused(
        &o.get(&format!("/v2/img/app/manifests/{}", digest(b"x"))).await,
        404,
        "MANIFEST_UNKNOWN",
    );
    refused(
        &o.get(&format!("/v2/img/other/manifests/{}", img.digest)).await,
        404,
        "MANIFEST_UNKNOWN",
    );
    refused(
        &o.get("/v2/img/app/manifests/bad!tag").await,
        400,
        "MANIFEST_INVALID",
    );
}

#[tokio::test]
async fn manifest_refusals() {
    let o = Oci::new().await;
    let config = b"{\"os\":\"linux\"}".to_vec();
    o.push_blob("app", &config).await;
    let missing = b"a layer nobody pushed".to_vec();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": desc(CONFIG, &config),
        "layers": [desc(LAYER, &missing)],
    }))
    .unwrap();
    let r = o.put_manifest("app", "v1", MANIFEST, &manifest).await;
    refused(&r, 400, "MANIFEST_BLOB_UNKNOWN");
    assert!(r.text().contains(&digest(&missing)));
    // A layer pushed to another repository does not count.
    o.push_blob("elsewhere", &missing).await;
    refused(
        &o.put_manifest("app", "v1", MANIFEST, &manifest).await,
        400,
        "MANIFEST_BLOB_UNKNOWN",
    );
    // A wrong size for a present blob.
    let layer = o.push_blob("app", b"real layer").await;
    let wrong_size = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": MANIFEST, "config": desc(CONFIG, &config),
        "layers": [{ "mediaType": LAYER, "digest": layer, "size": 999 }],
    }))
    .unwrap();
    refused(
        &o.put_manifest("app", "v1", MANIFEST, &wrong_size).await,
        400,
        "MANIFEST_INVALID",
    );

    refused(
        &o.put_manifest("app", "v1", MANIFEST, b"{not json").await,
        400,
        "MANIFEST_INVALID",
    );
    let schema1 = json!({ "schemaVersion": 1, "name": "app", "tag": "v1", "fsLayers": [] });
    let r = o
        .put_manifest(
            "app",
            "v1",
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            &serde_json::to_vec(&schema1).unwrap(),
        )
        .await;
    refused(&r, 400, "MANIFEST_INVALID");
    // Content-Type and mediaType disagree.
    let ok = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": MANIFEST, "config": desc(CONFIG, &config), "layers": [],
    }))
    .unwrap();
    refused(
        &o.put_manifest("app", "v1", INDEX, &ok).await,
        400,
        "MANIFEST_INVALID",
    );
    // The reference is a digest the bytes do not have.
    let r = o.put_manifest("app", &digest(b"other"), MANIFEST, &ok).await;
    refused(&r, 400, "DIGEST_INVALID");
    refused(
        &o.put_manifest("app", "bad!tag", MANIFEST, &ok).await,
        400,
        "MANIFEST_INVALID",
    );
    refused(
        &o.put_manifest("App", "v1", MANIFEST, &ok).await,
        400,
        "NAME_INVALID",
    );
    // Over 4 MiB: 413.
    let mut huge = ok.clone();
    huge.truncate(huge.len() - 1);
    huge.extend(std::iter::repeat_n(b' ', 4 << 20));
    huge.push(b'}');
    let r = o.put_manifest("app", "v1", MANIFEST, &huge).await;
    refused(&r, 413, "SIZE_INVALID");

    // Nothing was stored.
    refused(&o.get("/v2/img/app/manifests/v1").await, 404, "MANIFEST_UNKNOWN");
    let feed = o.i.ferry.feed(&FeedName::new("img").unwrap()).await.unwrap();
    assert!(o.i.ferry.items(&feed, "manifest/").await.unwrap().is_empty());
    assert!(o.i.ferry.items(&feed, "tag/").await.unwrap().is_empty());

    // The valid one goes in (an artifact with no layers).
    assert_eq!(
        o.put_manifest("app", "v1", MANIFEST, &ok).await.status,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn index_needs_its_children() {
    let o = Oci::new().await;
    // Children pushed by digest, as skopeo copy --all does.
    let amd = o.push_image("multi", "amd64-tmp", "amd64").await;
    let arm = o.push_image("multi", "arm64-tmp", "arm64").await;
    let never = b"{\"never\":\"pushed\"}".to_vec();
    let index = |children: &[&[u8]]| {
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": INDEX,
            "manifests": children.iter().map(|c| {
                let mut d = desc(MANIFEST, c);
                d["platform"] = json!({ "architecture": "amd64", "os": "linux" });
                d
            }).collect::<Vec<_>>(),
        }))
        .unwrap()
    };
    let bad = index(&[&amd.manifest, &never]);
    let r = o.put_manifest("multi", "latest", INDEX, &bad).await;
    refused(&r, 400, "MANIFEST_BLOB_UNKNOWN");
    assert!(r.text().contains(&digest(&never)));
    // A child pushed to another repository does not count.
    let other = o.push_image("single", "v1", "single").await;
    let r = o
        .put_manifest(
            "multi",
            "latest",
            INDEX,
            &index(&[&amd.manifest, &other.manifest]),
        )
        .await;
    refused(&r, 400, "MANIFEST_BLOB_UNKNOWN");

    let good = index(&[&amd.manifest, &arm.manifest]);
    let r = o.put_manifest("multi", "latest", INDEX, &good).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let r = o.get("/v2/img/multi/manifests/latest").await;
    assert_eq!(r.header("content-type"), Some(INDEX));
    assert_eq!(r.body, good);
    // The index item lists everything the index needs, children included.
    let item = o
        .item("img", &format!("manifest/multi/{}", digest(&good)))
        .await
        .unwrap();
    let blobs: Vec<String> = item.blobs.iter().map(|d| d.to_string()).collect();
    for needed in [
        &good,
        &amd.manifest,
        &amd.config,
        &amd.layer,
        &arm.manifest,
        &arm.config,
        &arm.layer,
    ] {
        assert!(blobs.contains(&digest(needed)), "index item lacks a blob");
    }
    assert_eq!(item.meta["children"], json!([amd.digest, arm.digest]));
    assert_eq!(item.meta["media_type"], INDEX);

    // A Docker manifest list works the same way.
    let list = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_LIST,
        "manifests": [desc(MANIFEST, &amd.manifest)],
    }))
    .unwrap();
    let r = o.put_manifest("multi", "list", DOCKER_LIST, &list).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(
        o.get("/v2/img/multi/manifests/list").await.header("content-type"),
        Some(DOCKER_LIST)
    );
}

/// An index over `children` (OCI image index, or Docker manifest list).
fn index_of(media_type: &str, children: &[(&str, &[u8])]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": children.iter().map(|(mt, c)| desc(mt, c)).collect::<Vec<_>>(),
    }))
    .unwrap()
}

/// Issue 7, case 6: deleting a platform manifest by digest while an index
/// still lists it left the index naming a manifest that answers 404, here
/// and on every replica. Such a delete is refused (409 DENIED) naming the
/// indexes; once they are gone, the child can go. Tags stay deletable.
#[tokio::test]
async fn a_manifest_an_index_lists_cannot_be_deleted() {
    let o = Oci::new().await;
    // Children by digest, then the index by tag, as `skopeo copy --all` does.
    let amd = o.push_image("multi", "", "amd64").await;
    let arm = o.push_image("multi", "", "arm64").await;
    let index = index_of(INDEX, &[(MANIFEST, &amd.manifest), (MANIFEST, &arm.manifest)]);
    let index_digest = digest(&index);
    let r = o.put_manifest("multi", "multi", INDEX, &index).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    // A second, untagged Docker manifest list over amd64 alone.
    let list = index_of(DOCKER_LIST, &[(MANIFEST, &amd.manifest)]);
    let list_digest = digest(&list);
    let r = o.put_manifest("multi", &list_digest, DOCKER_LIST, &list).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    // An index of indexes over the first index.
    let outer = index_of(INDEX, &[(INDEX, &index)]);
    let outer_digest = digest(&outer);
    let r = o.put_manifest("multi", "outer", INDEX, &outer).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());

    let delete = |reference: String| {
        let o = &o;
        async move {
            o.send(
                "DELETE",
                &format!("/v2/img/multi/manifests/{reference}"),
                &[],
                Body::empty(),
            )
            .await
        }
    };
    // The child named by one index: refused, the message names it and its tag.
    let r = delete(arm.digest.clone()).await;
    refused(&r, 409, "DENIED");
    let message = r.json()["errors"][0]["message"].as_str().unwrap().to_owned();
    assert_eq!(
        message,
        format!(
            "manifest {} is referenced by index {index_digest} (tags: multi); delete the index first",
            arm.digest
        )
    );
    // The child named by two: both are named.
    let r = delete(amd.digest.clone()).await;
    refused(&r, 409, "DENIED");
    let message = r.text();
    assert!(message.contains(&index_digest), "{message}");
    assert!(message.contains(&list_digest), "{message}");
    assert!(message.contains("(tags: multi)"), "{message}");
    // An index another index names: refused too.
    let r = delete(index_digest.clone()).await;
    refused(&r, 409, "DENIED");
    assert!(r.text().contains(&outer_digest), "{}", r.text());
    // Everything is still served, the index by tag too.
    for reference in [&amd.digest, &arm.digest, &index_digest, &list_digest, "multi"] {
        let r = o.get(&format!("/v2/img/multi/manifests/{reference}")).await;
        assert_eq!(r.status, StatusCode::OK, "{reference}: {}", r.text());
    }
    assert!(
        o.item("img", &format!("manifest/multi/{}", arm.digest))
            .await
            .is_some()
    );

    // Deleting a tag stays allowed; the untagged index still holds the child.
    let r = delete("multi".to_owned()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let r = delete(arm.digest.clone()).await;
    refused(&r, 409, "DENIED");
    assert!(r.text().contains(&index_digest), "{}", r.text());

    // Top down: the outer index, the index, then its children.
    let r = delete(outer_digest.clone()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let r = delete(index_digest.clone()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let r = delete(arm.digest.clone()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    refused(
        &o.get(&format!("/v2/img/multi/manifests/{}", arm.digest)).await,
        404,
        "MANIFEST_UNKNOWN",
    );
    // amd64 is still in the manifest list.
    let r = delete(amd.digest.clone()).await;
    refused(&r, 409, "DENIED");
    assert!(r.text().contains(&list_digest) && !r.text().contains(&index_digest));
    let r = delete(list_digest.clone()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let r = delete(amd.digest.clone()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());

    // An index in another repository does not hold a manifest here.
    let img = o.push_image("app", "", "app").await;
    let other = o.push_image("elsewhere", "", "app").await;
    assert_eq!(img.manifest, other.manifest);
    let r = o
        .put_manifest(
            "elsewhere",
            "v1",
            INDEX,
            &index_of(INDEX, &[(MANIFEST, &other.manifest)]),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let r = o
        .send(
            "DELETE",
            &format!("/v2/img/app/manifests/{}", img.digest),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
}

#[tokio::test]
async fn delete_by_tag_and_by_digest() {
    let o = Oci::new().await;
    let img = o.push_image("app", "v1", "x").await;
    assert_eq!(
        o.put_manifest("app", "v2", MANIFEST, &img.manifest).await.status,
        StatusCode::CREATED
    );
    let keep = o.push_image("app", "keep", "keep").await;

    // By tag: only the tag goes.
    let r = o
        .send("DELETE", "/v2/img/app/manifests/v1", &[], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    refused(&o.get("/v2/img/app/manifests/v1").await, 404, "MANIFEST_UNKNOWN");
    assert_eq!(o.get("/v2/img/app/manifests/v2").await.status, StatusCode::OK);
    refused(
        &o.send("DELETE", "/v2/img/app/manifests/v1", &[], Body::empty())
            .await,
        404,
        "MANIFEST_UNKNOWN",
    );

    // By digest: the manifest and every tag pointing at it.
    let r = o
        .send(
            "DELETE",
            &format!("/v2/img/app/manifests/{}", img.digest),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    refused(&o.get("/v2/img/app/manifests/v2").await, 404, "MANIFEST_UNKNOWN");
    refused(
        &o.get(&format!("/v2/img/app/manifests/{}", img.digest)).await,
        404,
        "MANIFEST_UNKNOWN",
    );
    let tags = o.get("/v2/img/app/tags/list").await.json();
    assert_eq!(tags["tags"], json!(["keep"]));
    assert_eq!(o.get("/v2/img/app/manifests/keep").await.body, keep.manifest);
    refused(
        &o.send(
            "DELETE",
            &format!("/v2/img/app/manifests/{}", img.digest),
            &[],
            Body::empty(),
        )
        .await,
        404,
        "MANIFEST_UNKNOWN",
    );

    // Blobs: deleting removes the repository's link.
    let layer = digest(&img.layer);
    let r = o
        .send(
            "DELETE",
            &format!("/v2/img/app/blobs/{layer}"),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    refused(
        &o.head(&format!("/v2/img/app/blobs/{layer}")).await,
        404,
        "BLOB_UNKNOWN",
    );
    refused(
        &o.send(
            "DELETE",
            &format!("/v2/img/app/blobs/{layer}"),
            &[],
            Body::empty(),
        )
        .await,
        404,
        "BLOB_UNKNOWN",
    );
    // A blob a manifest of the repository still lists is not deleted: the
    // refusal names the manifest, and the blob stays readable.
    let kept_layer = digest(&keep.layer);
    let r = o
        .send(
            "DELETE",
            &format!("/v2/img/app/blobs/{kept_layer}"),
            &[],
            Body::empty(),
        )
        .await;
    refused(&r, 409, "DENIED");
    assert!(r.text().contains(&keep.digest), "{}", r.text());
    // A manifest named at the blobs endpoint: the hint is the path that
    // deletes it, feed included.
    let r = o
        .send(
            "DELETE",
            &format!("/v2/img/app/blobs/{}", keep.digest),
            &[],
            Body::empty(),
        )
        .await;
    refused(&r, 409, "DENIED");
    assert!(
        r.text()
            .contains(&format!("/v2/img/app/manifests/{}", keep.digest)),
        "{}",
        r.text()
    );
    assert_eq!(
        o.head(&format!("/v2/img/app/blobs/{kept_layer}")).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn tags_and_catalog_are_paginated() {
    let o = Oci::new().await;
    let img = o.push_image("app", "v0", "x").await;
    for tag in ["v1", "v3", "v2", "latest"] {
        assert_eq!(
            o.put_manifest("app", tag, MANIFEST, &img.manifest).await.status,
            StatusCode::CREATED
        );
    }
    // A nested repository's tags stay out of its parent's list.
    o.push_image("app/sub", "nested", "y").await;

    let r = o.get("/v2/img/app/tags/list").await;
    assert_eq!(
        r.json(),
        json!({ "name": "img/app", "tags": ["latest", "v0", "v1", "v2", "v3"] })
    );
    assert_eq!(r.header("link"), None);

    let r = o.get("/v2/img/app/tags/list?n=2").await;
    assert_eq!(r.json()["tags"], json!(["latest", "v0"]));
    let link = r.header("link").unwrap().to_owned();
    assert_eq!(link, "</v2/img/app/tags/list?n=2&last=v0>; rel=\"next\"");
    let next = link.trim_start_matches('<').split('>').next().unwrap();
    let r = o.get(next).await;
    assert_eq!(r.json()["tags"], json!(["v1", "v2"]));
    let next = r
        .header("link")
        .unwrap()
        .trim_start_matches('<')
        .split('>')
        .next()
        .unwrap()
        .to_owned();
    let r = o.get(&next).await;
    assert_eq!(r.json()["tags"], json!(["v3"]));
    assert_eq!(r.header("link"), None);
    assert_eq!(o.get("/v2/img/app/tags/list?n=0").await.json()["tags"], json!([]));
    assert_eq!(
        o.get("/v2/img/app/tags/list?last=v2").await.json()["tags"],
        json!(["v3"])
    );
    assert_eq!(
        o.get("/v2/img/app/sub/tags/list").await.json()["tags"],
        json!(["nested"])
    );
    let r = o.get("/v2/img/app/tags/list?n=x").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    // The catalog: FEED/NAME of every OCI feed the caller may read.
    o.push_image("zeta", "v1", "z").await;
    let config = b"{}".to_vec();
    o.push_blob_to("secret", "hidden", &config).await;
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": MANIFEST, "config": desc(CONFIG, &config), "layers": [],
    }))
    .unwrap();
    let r = o
        .send(
            "PUT",
            "/v2/secret/hidden/manifests/v1",
            &[("content-type", MANIFEST)],
            m,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);

    let anonymous = o.i.get("/v2/_catalog").await;
    assert_eq!(anonymous.status, StatusCode::OK);
    assert_eq!(
        anonymous.json()["repositories"],
        json!(["img/app", "img/app/sub", "img/zeta"])
    );
    let all = o.get("/v2/_catalog").await;
    assert_eq!(
        all.json()["repositories"],
        json!(["img/app", "img/app/sub", "img/zeta", "secret/hidden"])
    );
    let r = o.get("/v2/_catalog?n=3").await;
    assert_eq!(
        r.json()["repositories"],
        json!(["img/app", "img/app/sub", "img/zeta"])
    );
    assert_eq!(
        r.header("link"),
        Some("</v2/_catalog?n=3&last=img/zeta>; rel=\"next\"")
    );
    let r = o.get("/v2/_catalog?n=3&last=img/zeta").await;
    assert_eq!(r.json()["repositories"], json!(["secret/hidden"]));
    assert_eq!(r.header("link"), None);
    refused(
        &o.i.send("GET", "/v2/_catalog", Some("bad"), &[], Body::empty())
            .await,
        401,
        "UNAUTHORIZED",
    );
}

#[tokio::test]
async fn referrers_with_artifact_type_filter() {
    let o = Oci::new().await;
    let img = o.push_image("app", "v1", "x").await;
    let empty = b"{}".to_vec();
    o.push_blob("app", &empty).await;
    let mut pushed = Vec::new();
    for (kind, payload) in [
        ("application/vnd.example.sig", "sig"),
        ("application/vnd.example.sbom", "sbom"),
    ] {
        let blob = format!("{payload} payload").into_bytes();
        o.push_blob("app", &blob).await;
        let m = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "artifactType": kind,
            "config": desc("application/vnd.oci.empty.v1+json", &empty),
            "layers": [desc("application/octet-stream", &blob)],
            "subject": desc(MANIFEST, &img.manifest),
            "annotations": { "org.example.kind": payload },
        }))
        .unwrap();
        let d = digest(&m);
        let r = o.put_manifest("app", &d, MANIFEST, &m).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        assert_eq!(r.header("oci-subject"), Some(img.digest.as_str()));
        pushed.push((kind, d, m.len()));
    }
    // An image manifest without artifactType reports its config type.
    let plain_cfg = b"{\"plain\":true}".to_vec();
    o.push_blob("app", &plain_cfg).await;
    let plain = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": MANIFEST,
        "config": desc("application/vnd.example.config", &plain_cfg), "layers": [],
        "subject": desc(MANIFEST, &img.manifest),
    }))
    .unwrap();
    assert_eq!(
        o.put_manifest("app", &digest(&plain), MANIFEST, &plain)
            .await
            .status,
        StatusCode::CREATED
    );

    let r = o.get(&format!("/v2/img/app/referrers/{}", img.digest)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some(INDEX));
    assert_eq!(r.header("oci-filters-applied"), None);
    let doc = r.json();
    assert_eq!(doc["mediaType"], INDEX);
    assert_eq!(doc["schemaVersion"], 2);
    let list = doc["manifests"].as_array().unwrap();
    assert_eq!(list.len(), 3);
    let types: Vec<&str> = list.iter().map(|m| m["artifactType"].as_str().unwrap()).collect();
    assert!(types.contains(&"application/vnd.example.config"));

    let r = o
        .get(&format!(
            "/v2/img/app/referrers/{}?artifactType=application/vnd.example.sig",
            img.digest
        ))
        .await;
    assert_eq!(r.header("oci-filters-applied"), Some("artifactType"));
    let (_, sig_digest, sig_len) = &pushed[0];
    assert_eq!(
        r.json()["manifests"],
        json!([{
            "mediaType": MANIFEST,
            "digest": sig_digest,
            "size": sig_len,
            "artifactType": "application/vnd.example.sig",
            "annotations": { "org.example.kind": "sig" },
        }])
    );
    // No referrers: an empty index, not an error.
    let r = o
        .get(&format!("/v2/img/app/referrers/{}", digest(b"nothing")))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["manifests"], json!([]));
    refused(&o.get("/v2/img/app/referrers/junk").await, 400, "DIGEST_INVALID");
    // Deleting a referrer removes it from the list.
    let r = o
        .send(
            "DELETE",
            &format!("/v2/img/app/manifests/{sig_digest}"),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let r = o.get(&format!("/v2/img/app/referrers/{}", img.digest)).await;
    assert_eq!(r.json()["manifests"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn items_are_what_replication_moves() {
    let o = Oci::new().await;
    let img = o.push_image("team/app", "v1", "x").await;
    let feed = o.i.ferry.feed(&FeedName::new("img").unwrap()).await.unwrap();
    let keys: Vec<String> =
        o.i.ferry
            .items(&feed, "")
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.key.as_str().to_owned())
            .collect();
    let (cfg, layer) = (digest(&img.config), digest(&img.layer));
    let mut expected = vec![
        format!("blob/team/app/{cfg}"),
        format!("blob/team/app/{layer}"),
        format!("manifest/team/app/{}", img.digest),
        "tag/team/app/v1".to_owned(),
    ];
    expected.sort();
    assert_eq!(keys, expected);
    let m = o
        .item("img", &format!("manifest/team/app/{}", img.digest))
        .await
        .unwrap();
    assert_eq!(
        m.blobs.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
        vec![img.digest.clone(), cfg.clone(), layer.clone()]
    );
    assert_eq!(m.meta["media_type"], MANIFEST);
    assert_eq!(m.meta["size"], img.manifest.len());
    assert_eq!(m.meta["config"], cfg);
    assert_eq!(m.meta["layers"], json!([layer]));
    assert_eq!(m.meta["artifact_type"], CONFIG);
    let t = o.item("img", "tag/team/app/v1").await.unwrap();
    assert_eq!(t.meta, json!({ "digest": img.digest, "media_type": MANIFEST }));
    assert_eq!(
        t.blobs.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
        vec![img.digest.clone()]
    );
    let l = o.item("img", &format!("blob/team/app/{layer}")).await.unwrap();
    assert_eq!(l.meta, json!({ "size": img.layer.len() }));

    // A tag item without its manifest item (a replica mid-way) resolves to nothing.
    let r = o
        .send(
            "DELETE",
            &format!("/v2/img/team/app/manifests/{}", img.digest),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    o.i.ferry
        .write(
            &feed,
            vec![ferry_core::LocalWrite::upsert(
                ItemKey::new("tag/team/app/orphan").unwrap(),
                json!({ "digest": img.digest, "media_type": MANIFEST }),
                vec![Digest::of(&img.manifest)],
                ferry_store::Precondition::Any,
            )],
        )
        .await
        .unwrap();
    refused(
        &o.get("/v2/img/team/app/manifests/orphan").await,
        404,
        "MANIFEST_UNKNOWN",
    );
}

#[tokio::test]
async fn prune_untagged_manifests() {
    let o = Oci::new().await;
    let tagged = o.push_image("app", "v1", "tagged").await;
    let untagged = o.push_image("app", "v2", "untagged").await;
    let r = o
        .send("DELETE", "/v2/img/app/manifests/v2", &[], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    // A child of a tagged index and a referrer of a tagged image are kept.
    let child = o.push_image("app", "child-tmp", "child").await;
    let r = o
        .send("DELETE", "/v2/img/app/manifests/child-tmp", &[], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": INDEX, "manifests": [desc(MANIFEST, &child.manifest)],
    }))
    .unwrap();
    assert_eq!(
        o.put_manifest("app", "multi", INDEX, &index).await.status,
        StatusCode::CREATED
    );
    let empty = b"{}".to_vec();
    o.push_blob("app", &empty).await;
    let sig = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": MANIFEST, "artifactType": "application/x-sig",
        "config": desc("application/vnd.oci.empty.v1+json", &empty), "layers": [],
        "subject": desc(MANIFEST, &tagged.manifest),
    }))
    .unwrap();
    assert_eq!(
        o.put_manifest("app", &digest(&sig), MANIFEST, &sig).await.status,
        StatusCode::CREATED
    );
    // A layer uploaded and never used.
    let stray = o.push_blob("app", b"stray upload").await;

    let path = "/api/v1/feeds/img/oci/prune-untagged?older_than_secs=0";
    let r = o.send("POST", path, &[], Body::empty()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "admin only");
    // Young manifests are left alone.
    let r =
        o.i.send(
            "POST",
            "/api/v1/feeds/img/oci/prune-untagged",
            Some(ADMIN),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.json(), json!({ "manifests_deleted": 0, "links_deleted": 0 }));
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let r = o.i.send("POST", path, Some(ADMIN), &[], Body::empty()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["manifests_deleted"], 1);
    // The untagged image's config and layer links, and the stray upload.
    assert_eq!(r.json()["links_deleted"], 3);

    refused(
        &o.get(&format!("/v2/img/app/manifests/{}", untagged.digest)).await,
        404,
        "MANIFEST_UNKNOWN",
    );
    refused(
        &o.head(&format!("/v2/img/app/blobs/{stray}")).await,
        404,
        "BLOB_UNKNOWN",
    );
    for kept in [&tagged.digest, &child.digest, &digest(&sig), &digest(&index)] {
        let r = o.head(&format!("/v2/img/app/manifests/{kept}")).await;
        assert_eq!(r.status, StatusCode::OK, "{kept} was pruned");
    }
    assert_eq!(
        o.head(&format!("/v2/img/app/blobs/{}", digest(&tagged.layer)))
            .await
            .status,
        StatusCode::OK
    );
    let r =
        o.i.send(
            "POST",
            "/api/v1/feeds/js/oci/prune-untagged",
            Some(ADMIN),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // The collector can now free the pruned content.
    o.i.ferry.collect_garbage().await.unwrap();
}

/// Pruning takes an untagged index together with its children, and never a
/// manifest that a remaining index lists.
#[tokio::test]
async fn prune_never_leaves_an_index_without_its_children() {
    let o = Oci::new().await;
    let lone = o.push_image("app", "", "lone").await;
    let kept = o.push_image("app", "", "kept").await;
    let shared = o.push_image("app", "", "shared").await;
    // Untagged, over `lone`: both go.
    let untagged = index_of(INDEX, &[(MANIFEST, &lone.manifest)]);
    let r = o.put_manifest("app", &digest(&untagged), INDEX, &untagged).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    // Tagged, over `kept` and `shared`: all stay.
    let tagged = index_of(INDEX, &[(MANIFEST, &kept.manifest), (MANIFEST, &shared.manifest)]);
    let r = o.put_manifest("app", "v1", INDEX, &tagged).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    // Untagged, over `shared`: goes, `shared` stays for the tagged index.
    let also = index_of(DOCKER_LIST, &[(MANIFEST, &shared.manifest)]);
    let r = o.put_manifest("app", &digest(&also), DOCKER_LIST, &also).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());

    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let path = "/api/v1/feeds/img/oci/prune-untagged?older_than_secs=0";
    let r = o.i.send("POST", path, Some(ADMIN), &[], Body::empty()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["manifests_deleted"], 3, "{}", r.text());
    for gone in [&lone.digest, &digest(&untagged), &digest(&also)] {
        refused(
            &o.head(&format!("/v2/img/app/manifests/{gone}")).await,
            404,
            "MANIFEST_UNKNOWN",
        );
    }
    for stays in [&kept.digest, &shared.digest, &digest(&tagged)] {
        let r = o.head(&format!("/v2/img/app/manifests/{stays}")).await;
        assert_eq!(r.status, StatusCode::OK, "{stays} was pruned");
    }
    // What is left is whole, and its children still cannot be deleted.
    let r = o
        .send(
            "DELETE",
            &format!("/v2/img/app/manifests/{}", shared.digest),
            &[],
            Body::empty(),
        )
        .await;
    refused(&r, 409, "DENIED");
}

// ---------------------------------------------------------------------------
// Upload session limits and expiry

/// `POST /v2/{feed}/app/blobs/uploads/` with `key`: opens a session.
async fn open_session(o: &Oci, key: &str, feed: &str) -> Reply {
    o.i.send(
        "POST",
        &format!("/v2/{feed}/app/blobs/uploads/"),
        Some(key),
        &[],
        Body::empty(),
    )
    .await
}

/// Opens a session that must be granted; its `Location`.
async fn session(o: &Oci, key: &str, feed: &str) -> String {
    let r = open_session(o, key, feed).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    r.header("location").unwrap().to_owned()
}

/// A whole chunked push (open, one chunk, close) with `key`.
async fn chunked_push(o: &Oci, key: &str, feed: &str, data: &[u8]) {
    let loc = session(o, key, feed).await;
    let r = o.i.send("PATCH", &loc, Some(key), &[], data.to_vec()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let close = format!("{loc}?digest={}", digest(data));
    let r = o.i.send("PUT", &close, Some(key), &[], Body::empty()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
}

/// Asserts a 429 TOOMANYREQUESTS whose message contains every one of `words`.
#[track_caller]
fn too_many(r: &Reply, words: &[&str]) {
    refused(r, 429, "TOOMANYREQUESTS");
    let message = r.json()["errors"][0]["message"].as_str().unwrap().to_owned();
    for w in words {
        assert!(message.contains(w), "{w:?} not in {message:?}");
    }
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(retry >= 1, "{retry}");
}

/// Files in the blob store's upload area (one per open session).
fn session_files(o: &Oci) -> usize {
    std::fs::read_dir(o.i.dir.path().join("blobs/uploads"))
        .unwrap()
        .count()
}

fn session_limits(
    idle: std::time::Duration,
    per_key: usize,
    per_feed: usize,
    total: usize,
) -> ferry_core::Config {
    ferry_core::Config {
        oci_upload_idle_timeout: idle,
        oci_max_upload_sessions_per_key: per_key,
        oci_max_upload_sessions_per_feed: per_feed,
        oci_max_upload_sessions: total,
        ..Default::default()
    }
}

/// One key holding its allowance of sessions is refused more, while other
/// keys and feeds push on; a feed's and the instance's caps hold the same
/// way, and the sessions of a deleted key stop counting.
#[tokio::test]
async fn upload_sessions_are_capped_per_key_feed_and_instance() {
    let o = Oci::with_config(session_limits(std::time::Duration::from_secs(600), 3, 5, 8)).await;
    o.i.feed("third", FeedType::Oci, false).await;
    let a = o.i.key("a", Permission::Write, Some(&["img"])).await;
    let b = o.i.key("b", Permission::Write, Some(&["img"])).await;
    let c = o.i.key("c", Permission::Write, Some(&["other"])).await;

    let mut held_by_a = Vec::new();
    for _ in 0..3 {
        held_by_a.push(session(&o, &a, "img").await);
    }
    let r = open_session(&o, &a, "img").await;
    too_many(
        &r,
        &[
            "API key \"a\"",
            "limit per key",
            "expires 10m after its last request",
        ],
    );
    // Pushes that need no session, and other keys' sessions, go on.
    let r =
        o.i.send(
            "POST",
            &format!("/v2/img/app/blobs/uploads/?digest={}", digest(b"whole")),
            Some(&a),
            &[],
            b"whole".to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    chunked_push(&o, &b, "img", b"b's layer").await;
    // A cancelled session frees its place.
    let cancelled = held_by_a.pop().unwrap();
    let r = o.i.send("DELETE", &cancelled, Some(&a), &[], Body::empty()).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    held_by_a.push(session(&o, &a, "img").await);

    // The feed's cap: img holds 3 + 2 sessions.
    session(&o, &b, "img").await;
    session(&o, &b, "img").await;
    too_many(
        &open_session(&o, &b, "img").await,
        &["feed img", "limit per feed"],
    );
    too_many(
        &open_session(&o, &o.w, "img").await,
        &["feed img", "limit per feed"],
    );
    // Another feed is not held up by img's sessions.
    chunked_push(&o, &c, "other", b"c's layer").await;
    for _ in 0..3 {
        session(&o, &c, "other").await;
    }
    // The instance's cap: 8 sessions in all.
    too_many(&open_session(&o, &o.w, "third").await, &["on this server"]);
    assert_eq!(session_files(&o), 8);

    // A deleted key's sessions no longer count (nor work).
    o.i.ferry.delete_key("a").await.unwrap();
    session(&o, &o.w, "third").await;
    session(&o, &b, "img").await;
    for loc in &held_by_a {
        refused(&o.get(loc).await, 404, "BLOB_UPLOAD_UNKNOWN");
    }
    assert_eq!(session_files(&o), 2 + 1 + 3 + 1);
}

/// Waits (up to 10 s) until `done` holds.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("{what} did not happen within 10 s");
}

/// Idle sessions expire after the configured timeout with no request
/// needed: their files go, and their key may open sessions again.
#[tokio::test]
async fn idle_upload_sessions_expire_with_their_files() {
    let idle = std::time::Duration::from_secs(2);
    let o = Oci::with_config(session_limits(idle, 2, 100, 100)).await;
    let a = o.i.key("a", Permission::Write, Some(&["img"])).await;
    let first = session(&o, &a, "img").await;
    let r =
        o.i.send("PATCH", &first, Some(&a), &[], b"partial".to_vec())
            .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let second = session(&o, &a, "img").await;
    too_many(
        &open_session(&o, &a, "img").await,
        &["API key \"a\"", "expires 2s after"],
    );
    assert_eq!(session_files(&o), 2);

    eventually("expiry of idle sessions", || session_files(&o) == 0).await;
    for loc in [&first, &second] {
        refused(&o.get(loc).await, 404, "BLOB_UPLOAD_UNKNOWN");
    }
    assert_eq!(o.i.ferry.blob_size(&Digest::of(b"partial")).await.unwrap(), None);
    chunked_push(&o, &a, "img", b"after expiry").await;
    session(&o, &a, "img").await;
    session(&o, &a, "img").await;
}

/// A session file that no session record names (left by a node that
/// stopped between forgetting a session and removing its file, or by a
/// deleted feed's session) goes once it is older than the idle time, when
/// the sweep starts; live sessions' files stay.
#[tokio::test]
async fn session_files_without_a_session_are_swept() {
    let idle = std::time::Duration::from_secs(60);
    let o = Oci::with_config(session_limits(idle, 10, 10, 10)).await;
    let dir = o.i.dir.path().join("blobs/uploads");
    let stray = dir.join("0123456789abcdef0123456789abcdef");
    let young = dir.join("fedcba9876543210fedcba9876543210");
    for f in [&stray, &young] {
        std::fs::write(f, b"left over").unwrap();
    }
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&stray)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let live = session(&o, &o.w, "img").await;
    eventually("the stray file swept", || !stray.exists()).await;
    assert!(
        young.exists(),
        "younger than the idle time: maybe a session being opened"
    );
    assert_eq!(session_files(&o), 2);
    let r = o.send("PATCH", &live, &[], b"still here".to_vec()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
}

/// A chunk that takes longer than the idle timeout to arrive keeps its
/// session (idle ones around it expire meanwhile), and the upload then
/// finishes.
#[tokio::test]
async fn an_append_in_progress_is_not_expired() {
    use tower::ServiceExt;

    let idle = std::time::Duration::from_secs(1);
    let o = Oci::with_config(session_limits(idle, 10, 10, 10)).await;
    let busy = session(&o, &o.w, "img").await;
    let idle_one = session(&o, &o.w, "img").await;

    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    let body = Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    }));
    let req = axum::http::Request::builder()
        .method("PATCH")
        .uri(&busy)
        .header("authorization", format!("Bearer {}", o.w))
        .body(body)
        .unwrap();
    let patch = tokio::spawn(o.i.router.clone().oneshot(req));
    tx.send(Ok(bytes::Bytes::from_static(b"first half, ")))
        .await
        .unwrap();

    // Meanwhile the idle session expires, file and all.
    eventually("expiry of the idle session", || session_files(&o) == 1).await;
    refused(&o.get(&idle_one).await, 404, "BLOB_UPLOAD_UNKNOWN");
    tokio::time::sleep(idle * 2).await;
    assert!(!patch.is_finished(), "the append was cut");
    assert_eq!(session_files(&o), 1);

    tx.send(Ok(bytes::Bytes::from_static(b"second half")))
        .await
        .unwrap();
    drop(tx);
    let resp = patch.await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let data = b"first half, second half";
    let end = format!("0-{}", data.len() - 1);
    assert_eq!(
        resp.headers().get("range").and_then(|v| v.to_str().ok()),
        Some(end.as_str())
    );
    let r = o
        .send(
            "PUT",
            &format!("{busy}?digest={}", digest(data)),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(
        o.get(&format!("/v2/img/app/blobs/{}", digest(data))).await.body,
        data
    );
    assert_eq!(session_files(&o), 0);
}
