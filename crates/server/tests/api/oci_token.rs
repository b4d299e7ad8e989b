//! The registry token flow (`Bearer realm=…/v2/token`), in process: the
//! challenge, the token endpoint with and without credentials, scopes
//! granted and refused, expiry; and the tag parameters of a manifest push
//! and sha512 digests (issue 9, items 3 to 6).
#![allow(clippy::unwrap_used)]
use crate::common;

use axum::body::Body;
use axum::http::StatusCode;
use base64::Engine;
use common::{Instance, Reply};
use ferry_core::auth;
use ferry_store::Permission;
use ferry_types::{Digest, FeedType};
use serde_json::{Value, json};

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const HOST: (&str, &str) = ("host", "reg.example:5000");

fn basic(user: &str, password: &str) -> String {
    let raw = format!("{user}:{password}");
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
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

struct Reg {
    i: Instance,
    /// Write on every feed.
    w: String,
    /// Read on every feed.
    r: String,
}

impl Reg {
    async fn new(cfg: ferry_core::Config) -> Self {
        let i = Instance::with_config(cfg).await;
        i.feed("img", FeedType::Oci, false).await;
        i.feed("secret", FeedType::Oci, true).await;
        i.feed("js", FeedType::Npm, false).await;
        let w = i.key("pusher", Permission::Write, None).await;
        let r = i.key("puller", Permission::Read, None).await;
        Self { i, w, r }
    }

    /// A request with `auth` as the Authorization header (if any).
    async fn send(
        &self,
        method: &str,
        uri: &str,
        auth: Option<&str>,
        headers: &[(&str, &str)],
        body: impl Into<Body>,
    ) -> Reply {
        let mut h: Vec<(&str, &str)> = vec![HOST];
        if let Some(a) = auth {
            h.push(("authorization", a));
        }
        h.extend_from_slice(headers);
        self.i.send(method, uri, None, &h, body).await
    }

    /// A token for `scopes`, with basic credentials `creds` (user, key).
    async fn token(&self, creds: Option<(&str, &str)>, scopes: &[&str]) -> Reply {
        let mut uri = "/v2/token?service=ferry".to_owned();
        for s in scopes {
            uri.push_str(&format!("&scope={s}"));
        }
        let b = creds.map(|(u, p)| basic(u, p));
        self.send("GET", &uri, b.as_deref(), &[], Body::empty()).await
    }

    async fn bearer(&self, creds: Option<(&str, &str)>, scopes: &[&str]) -> String {
        let r = self.token(creds, scopes).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        format!("Bearer {}", r.json()["token"].as_str().unwrap())
    }

    /// Pushes a small image into `feed/repo` with `auth`, tagged `tag`;
    /// returns the manifest digest.
    async fn push_image(&self, auth: &str, feed: &str, repo: &str, tag: &str) -> String {
        let config =
            format!("{{\"architecture\":\"amd64\",\"os\":\"linux\",\"repo\":\"{repo}\"}}").into_bytes();
        let layer = format!("layer of {feed}/{repo}").into_bytes();
        for blob in [&config, &layer] {
            let d = Digest::of(blob);
            let r = self
                .send(
                    "POST",
                    &format!("/v2/{feed}/{repo}/blobs/uploads/?digest={d}"),
                    Some(auth),
                    &[],
                    blob.clone(),
                )
                .await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        }
        let manifest = manifest(&config, &layer);
        let r = self
            .send(
                "PUT",
                &format!("/v2/{feed}/{repo}/manifests/{tag}"),
                Some(auth),
                &[("content-type", MANIFEST)],
                manifest.clone(),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        Digest::of(&manifest).to_string()
    }
}

fn desc(media_type: &str, data: &[u8]) -> Value {
    json!({ "mediaType": media_type, "digest": Digest::of(data).to_string(), "size": data.len() })
}

fn manifest(config: &[u8], layer: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": MANIFEST,
        "config": desc(CONFIG, config), "layers": [desc(LAYER, layer)],
    }))
    .unwrap()
}

#[tokio::test]
async fn challenge_names_the_token_endpoint() {
    let reg = Reg::new(ferry_core::Config::default()).await;
    let r = reg.send("GET", "/v2/", None, &[], Body::empty()).await;
    refused(&r, 401, "UNAUTHORIZED");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"http://reg.example:5000/v2/token\",service=\"ferry\"")
    );
    // Behind a TLS proxy.
    let r = reg
        .send(
            "GET",
            "/v2/secret/app/manifests/v1",
            None,
            &[("x-forwarded-proto", "https")],
            Body::empty(),
        )
        .await;
    refused(&r, 401, "UNAUTHORIZED");
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            "Bearer realm=\"https://reg.example:5000/v2/token\",service=\"ferry\",scope=\"repository:secret/app:pull\""
        )
    );
    // A push names the push scope it needs.
    let r = reg
        .send("POST", "/v2/secret/app/blobs/uploads/", None, &[], Body::empty())
        .await;
    refused(&r, 401, "UNAUTHORIZED");
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .ends_with(",scope=\"repository:secret/app:pull,push\""),
        "{:?}",
        r.header("www-authenticate")
    );
    // A wrong key presented up front: the same challenge.
    let b = basic("u", "wrong");
    let r = reg.send("GET", "/v2/", Some(&b), &[], Body::empty()).await;
    refused(&r, 401, "UNAUTHORIZED");
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer realm="));
    // Basic auth up front keeps working.
    let b = basic("anyone", &reg.w);
    let r = reg.send("GET", "/v2/", Some(&b), &[], Body::empty()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    // With an external base URL, the realm is under it.
    let cfg = ferry_core::Config {
        base_url: Some("https://registry.example.org/ferry".into()),
        ..ferry_core::Config::default()
    };
    let reg = Reg::new(cfg).await;
    let r = reg.send("GET", "/v2/", None, &[], Body::empty()).await;
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"https://registry.example.org/ferry/v2/token\",service=\"ferry\"")
    );
}

#[tokio::test]
async fn token_endpoint_with_and_without_credentials() {
    let reg = Reg::new(ferry_core::Config::default()).await;
    let w = basic("ci", &reg.w);
    reg.push_image(&w, "img", "app", "v1").await;
    reg.push_image(&w, "secret", "app", "v1").await;

    // Anonymous: a token for public pulls.
    let r = reg.token(None, &["repository:img/app:pull,push"]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let body = r.json();
    assert_eq!(body["token"], body["access_token"]);
    assert_eq!(body["expires_in"], 300);
    assert!(body["issued_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let anon = format!("Bearer {}", body["token"].as_str().unwrap());
    let r = reg
        .send("GET", "/v2/img/app/manifests/v1", Some(&anon), &[], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // ... that pushes nothing.
    let r = reg
        .send(
            "POST",
            "/v2/img/app/blobs/uploads/",
            Some(&anon),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status.as_u16(), 401, "{}", r.text());
    // ... and reads no private feed (it grants nothing there).
    let anon_secret = reg.bearer(None, &["repository:secret/app:pull"]).await;
    let r = reg
        .send(
            "GET",
            "/v2/secret/app/manifests/v1",
            Some(&anon_secret),
            &[],
            Body::empty(),
        )
        .await;
    refused(&r, 401, "UNAUTHORIZED");
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer realm="));

    // The empty basic credentials of an anonymous client are anonymous.
    let r = reg.token(Some(("", "")), &["repository:img/app:pull"]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    // Wrong credentials: 401, challenged for basic credentials.
    let r = reg
        .token(Some(("ci", "not-a-key")), &["repository:img/app:pull"])
        .await;
    refused(&r, 401, "UNAUTHORIZED");
    assert_eq!(r.header("www-authenticate"), Some("Basic realm=\"ferry\""));
    assert!(r.text().contains("API key as the password"), "{}", r.text());

    // A write key gets pull and push on the private feed, and uses them.
    let t = reg
        .bearer(Some(("ci", &reg.w)), &["repository:secret/other:pull,push"])
        .await;
    reg.push_image(&t, "secret", "other", "v2").await;
    let r = reg
        .send(
            "GET",
            "/v2/secret/other/manifests/v2",
            Some(&t),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // `GET /v2/` accepts the token too.
    let r = reg.send("GET", "/v2/", Some(&t), &[], Body::empty()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    // Malformed requests are refused with a reason.
    let r = reg.token(None, &["repository:img:pull"]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(r.text().contains("FEED/NAME"), "{}", r.text());
    let r = reg.token(None, &["repository:img/app:fly"]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    let r = reg
        .send("GET", "/v2/token?service=elsewhere", None, &[], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    // Scopes of other resource types grant nothing but are no error.
    let r = reg.token(None, &["registry:catalog:*"]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

/// `GET /v2/_catalog` with a registry token lists what the token was
/// issued for: the repositories it may pull, or with `registry:catalog:*`
/// every repository its key may read; never a private feed's repositories
/// for an anonymous token.
#[tokio::test]
async fn the_catalog_lists_what_a_token_was_issued_for() {
    let reg = Reg::new(ferry_core::Config::default()).await;
    let w = basic("ci", &reg.w);
    reg.push_image(&w, "secret", "a", "v1").await;
    reg.push_image(&w, "secret", "b", "v1").await;
    reg.push_image(&w, "img", "pub", "v1").await;
    let listed = |r: &Reply| -> Vec<String> {
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        r.json()["repositories"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    let reg = &reg;
    let catalog = |auth: String| async move {
        reg.send("GET", "/v2/_catalog", Some(&auth), &[], Body::empty())
            .await
    };

    // Issued for one repository: only it is listed.
    let t = reg
        .bearer(Some(("me", &reg.r)), &["repository:secret/a:pull"])
        .await;
    assert_eq!(listed(&catalog(t).await), ["secret/a"]);
    // Issued for nothing: nothing listed.
    let t = reg.bearer(Some(("me", &reg.r)), &[]).await;
    assert!(listed(&catalog(t).await).is_empty());
    // Issued for the catalog: every repository the key may read.
    let t = reg.bearer(Some(("me", &reg.r)), &["registry:catalog:*"]).await;
    assert_eq!(listed(&catalog(t).await), ["img/pub", "secret/a", "secret/b"]);
    // Anonymous with the catalog scope: the public feed's only.
    let t = reg.bearer(None, &["registry:catalog:*"]).await;
    assert_eq!(listed(&catalog(t).await), ["img/pub"]);
    // Basic credentials (no token): what the key may read, as before.
    assert_eq!(
        listed(&catalog(basic("me", &reg.r)).await),
        ["img/pub", "secret/a", "secret/b"]
    );
}

#[tokio::test]
async fn scopes_are_downgraded_and_enforced() {
    let reg = Reg::new(ferry_core::Config::default()).await;
    let w = basic("ci", &reg.w);
    reg.push_image(&w, "secret", "a", "v1").await;
    reg.push_image(&w, "secret", "b", "v1").await;

    // A read key asking pull,push is given pull only: a push is denied.
    let t = reg
        .bearer(Some(("me", &reg.r)), &["repository:secret/a:pull,push"])
        .await;
    let r = reg
        .send("GET", "/v2/secret/a/manifests/v1", Some(&t), &[], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = reg
        .send(
            "POST",
            "/v2/secret/a/blobs/uploads/",
            Some(&t),
            &[],
            Body::empty(),
        )
        .await;
    refused(&r, 403, "DENIED");

    // A write key's token asked for pull only does not push either.
    let t = reg
        .bearer(Some(("ci", &reg.w)), &["repository:secret/a:pull"])
        .await;
    let r = reg
        .send(
            "DELETE",
            "/v2/secret/a/manifests/v1",
            Some(&t),
            &[],
            Body::empty(),
        )
        .await;
    refused(&r, 403, "DENIED");

    // A token for repository a is refused on b (and on other feeds).
    let r = reg
        .send("GET", "/v2/secret/b/manifests/v1", Some(&t), &[], Body::empty())
        .await;
    refused(&r, 401, "UNAUTHORIZED");
    assert!(r.text().contains("secret/b"), "{}", r.text());
    let r = reg
        .send("GET", "/v2/img/a/manifests/v1", Some(&t), &[], Body::empty())
        .await;
    refused(&r, 401, "UNAUTHORIZED");

    // A key limited to other feeds is granted nothing on this one.
    let other = reg.i.key("img-only", Permission::Write, Some(&["img"])).await;
    let r = reg
        .token(Some(("x", &other)), &["repository:secret/a:pull,push"])
        .await;
    let t = format!("Bearer {}", r.json()["token"].as_str().unwrap());
    let r = reg
        .send("GET", "/v2/secret/a/manifests/v1", Some(&t), &[], Body::empty())
        .await;
    assert!(
        r.status == StatusCode::NOT_FOUND || r.status == StatusCode::UNAUTHORIZED,
        "{}",
        r.text()
    );

    // Registry tokens are for /v2/ only.
    let t = reg.bearer(Some(("ci", &reg.w)), &["repository:img/a:pull"]).await;
    let r = reg
        .send("GET", "/npm/js/-/whoami", Some(&t), &[], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());

    // A mount from a repository the token does not grant pull on falls
    // back to an upload session.
    let layer = b"layer of secret/a".to_vec();
    let d = Digest::of(&layer);
    let t = reg
        .bearer(Some(("ci", &reg.w)), &["repository:secret/c:pull,push"])
        .await;
    let r = reg
        .send(
            "POST",
            &format!("/v2/secret/c/blobs/uploads/?mount={d}&from=secret/a"),
            Some(&t),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let t = reg
        .bearer(
            Some(("ci", &reg.w)),
            &["repository:secret/c:pull,push", "repository:secret/a:pull"],
        )
        .await;
    let r = reg
        .send(
            "POST",
            &format!("/v2/secret/c/blobs/uploads/?mount={d}&from=secret/a"),
            Some(&t),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
}

#[tokio::test]
async fn tokens_expire_and_die_with_their_key() {
    let reg = Reg::new(ferry_core::Config::default()).await;
    let w = basic("ci", &reg.w);
    reg.push_image(&w, "secret", "app", "v1").await;
    let instance = reg.i.ferry.instance_id().to_string();
    let grant = auth::RegistryGrant {
        repository: "secret/app".into(),
        actions: vec!["pull".into()],
    };
    let now = auth::unix_now();
    let claims = |exp: u64, key: &str| auth::RegistryClaims {
        iss: instance.clone(),
        key: Some(
            auth::hash_secret(key)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        ),
        nonce: String::new(),
        iat: now.saturating_sub(600),
        exp,
        access: vec![grant.clone()],
        catalog: false,
    };
    let expired =
        auth::issue_registry_token(reg.i.ferry.registry_token_key(), &claims(now - 1, &reg.r)).unwrap();
    let r = reg
        .send(
            "GET",
            "/v2/secret/app/manifests/v1",
            Some(&format!("Bearer {expired}")),
            &[],
            Body::empty(),
        )
        .await;
    refused(&r, 401, "UNAUTHORIZED");
    assert!(r.text().contains("expired"), "{}", r.text());
    let valid =
        auth::issue_registry_token(reg.i.ferry.registry_token_key(), &claims(now + 60, &reg.r)).unwrap();
    let r = reg
        .send(
            "GET",
            "/v2/secret/app/manifests/v1",
            Some(&format!("Bearer {valid}")),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // Tampered with: refused.
    let last = if valid.ends_with('0') { '1' } else { '0' };
    let tampered = format!("{}{last}", &valid[..valid.len() - 1]);
    let r = reg
        .send(
            "GET",
            "/v2/secret/app/manifests/v1",
            Some(&format!("Bearer {tampered}")),
            &[],
            Body::empty(),
        )
        .await;
    refused(&r, 401, "UNAUTHORIZED");
    // The key deleted: its tokens stop working at once.
    reg.i.ferry.delete_key("puller").await.unwrap();
    let r = reg
        .send(
            "GET",
            "/v2/secret/app/manifests/v1",
            Some(&format!("Bearer {valid}")),
            &[],
            Body::empty(),
        )
        .await;
    refused(&r, 401, "UNAUTHORIZED");
}

#[tokio::test]
async fn tag_parameters_apply_every_tag() {
    let reg = Reg::new(ferry_core::Config::default()).await;
    let w = basic("ci", &reg.w);
    let digest = reg.push_image(&w, "img", "app", "first").await;
    let config = b"{\"architecture\":\"amd64\",\"os\":\"linux\",\"repo\":\"app\"}".to_vec();
    let layer = b"layer of img/app".to_vec();
    let body = manifest(&config, &layer);
    assert_eq!(Digest::of(&body).to_string(), digest);
    let r = reg
        .send(
            "PUT",
            &format!("/v2/img/app/manifests/{digest}?tag=a&tag=b&tag=a"),
            Some(&w),
            &[("content-type", MANIFEST)],
            body.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let tags: Vec<&str> = r
        .headers
        .get_all("oci-tag")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(tags, vec!["a", "b"]);
    assert_eq!(r.header("docker-content-digest"), Some(digest.as_str()));
    let r = reg
        .send("GET", "/v2/img/app/tags/list", Some(&w), &[], Body::empty())
        .await;
    assert_eq!(r.json()["tags"], json!(["a", "b", "first"]));
    for tag in ["a", "b"] {
        let r = reg
            .send(
                "GET",
                &format!("/v2/img/app/manifests/{tag}"),
                Some(&w),
                &[],
                Body::empty(),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, body);
    }
    // An invalid tag refuses the push before anything is written.
    let r = reg
        .send(
            "PUT",
            &format!("/v2/img/app/manifests/{digest}?tag=ok&tag=-bad"),
            Some(&w),
            &[("content-type", MANIFEST)],
            body.clone(),
        )
        .await;
    refused(&r, 400, "MANIFEST_INVALID");
    let r = reg
        .send("GET", "/v2/img/app/tags/list", Some(&w), &[], Body::empty())
        .await;
    assert_eq!(r.json()["tags"], json!(["a", "b", "first"]));
}

#[tokio::test]
async fn sha512_digests_are_unknown_not_invalid() {
    let reg = Reg::new(ferry_core::Config::default()).await;
    let w = basic("ci", &reg.w);
    reg.push_image(&w, "img", "app", "v1").await;
    let d512 = format!("sha512:{}", "ab".repeat(64));
    for method in ["GET", "HEAD", "DELETE"] {
        let r = reg
            .send(
                method,
                &format!("/v2/img/app/blobs/{d512}"),
                Some(&w),
                &[],
                Body::empty(),
            )
            .await;
        refused(&r, 404, "BLOB_UNKNOWN");
        let r = reg
            .send(
                method,
                &format!("/v2/img/app/manifests/{d512}"),
                Some(&w),
                &[],
                Body::empty(),
            )
            .await;
        refused(&r, 404, "MANIFEST_UNKNOWN");
    }
    // Malformed digests stay 400.
    let r = reg
        .send(
            "GET",
            "/v2/img/app/blobs/sha512:abc",
            Some(&w),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    // An algorithm this registry cannot verify is refused up front.
    let r = reg
        .send(
            "POST",
            "/v2/img/app/blobs/uploads/?digest-algorithm=blake3",
            Some(&w),
            &[],
            Body::empty(),
        )
        .await;
    refused(&r, 400, "UNSUPPORTED");
    assert!(r.text().contains("sha512"), "{}", r.text());
    // Closing a session with a sha512 digest the content does not have.
    let r = reg
        .send(
            "POST",
            "/v2/img/app/blobs/uploads/?digest-algorithm=sha512",
            Some(&w),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let session = r.header("location").unwrap().to_owned();
    let r = reg
        .send(
            "PUT",
            &format!("{session}?digest={d512}"),
            Some(&w),
            &[],
            b"data".to_vec(),
        )
        .await;
    refused(&r, 400, "DIGEST_INVALID");
}

/// A scope naming a repository no image reference could name is refused
/// with the reason, not granted; a token never shows the key's hash.
#[tokio::test]
async fn malformed_repository_scopes_are_refused_and_tokens_hide_the_key() {
    let reg = Reg::new(ferry_core::Config::default()).await;
    for bad in [
        "repository:img/App:pull",
        "repository:img/a//b:pull",
        "repository:img/..:pull",
        "repository:img/a%20b:pull",
    ] {
        let r = reg.token(Some(("u", &reg.r)), &[bad]).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.text());
        assert!(r.text().contains("invalid scope"), "{}", r.text());
    }
    let r = reg.token(Some(("u", &reg.r)), &["repository:img/app:pull"]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let token = r.json()["token"].as_str().unwrap().to_owned();
    let payload = token.strip_prefix("fbt.").unwrap().split_once('.').unwrap().0;
    let bytes: Vec<u8> = (0..payload.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&payload[i..i + 2], 16).unwrap())
        .collect();
    let claims = String::from_utf8(bytes).unwrap();
    let hash: String = auth::hash_secret(&reg.r)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(!claims.contains(&hash), "{claims}");
    assert!(!claims.contains(&reg.r), "{claims}");
}

/// The OAuth2 form of the token endpoint (`POST /v2/token`), which
/// containerd and the Docker CLI try first: a password grant with an API
/// key gives the same token as the GET form; other grants and a missing
/// or wrong password are refused with the reason.
#[tokio::test]
async fn the_oauth2_form_of_the_token_endpoint() {
    let reg = Reg::new(ferry_core::Config::default()).await;
    let form = ("content-type", "application/x-www-form-urlencoded");
    let reg = &reg;
    let post = |body: String| async move { reg.send("POST", "/v2/token", None, &[form], body).await };
    let r = post(format!(
        "grant_type=password&service=ferry&client_id=containerd&username=any&password={}&scope=repository%3Aimg%2Fapp%3Apull%2Cpush",
        reg.w
    ))
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert_eq!(v["expires_in"], auth::REGISTRY_TOKEN_TTL_SECS);
    let bearer = format!("Bearer {}", v["access_token"].as_str().unwrap());
    // It works for a push on the scope it names.
    let r = reg
        .send(
            "POST",
            "/v2/img/app/blobs/uploads/",
            Some(&bearer),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    // A read key gets pull only.
    let r = post(format!(
        "grant_type=password&service=ferry&username=u&password={}&scope=repository:img/app:pull,push",
        reg.r
    ))
    .await;
    let bearer = format!("Bearer {}", r.json()["access_token"].as_str().unwrap());
    let r = reg
        .send(
            "POST",
            "/v2/img/app/blobs/uploads/",
            Some(&bearer),
            &[],
            Body::empty(),
        )
        .await;
    refused(&r, 403, "DENIED");

    let r = post("grant_type=refresh_token&refresh_token=x&service=ferry".into()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(r.text().contains("refresh"), "{}", r.text());
    let r = post("grant_type=client_credentials".into()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    let r = post("grant_type=password&username=u".into()).await;
    refused(&r, 401, "UNAUTHORIZED");
    let r = post("grant_type=password&username=u&password=ferry_wrong".into()).await;
    refused(&r, 401, "UNAUTHORIZED");
    let r = post(format!(
        "grant_type=password&password={}&scope=repository:img/App:pull",
        reg.w
    ))
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    let r = post("x".repeat(100 << 10)).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());
}
