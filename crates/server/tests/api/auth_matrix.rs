//! The authorization matrix (issue 8): every route family, asked with every
//! kind of credential, about a public and a private feed of every type,
//! against the status class the documented rules give: `ferry_core::auth`
//! (feeds, the instance, metrics), `ferry_server::access` (the extractor of
//! every feed route) and `ferry_replication::incoming` (what a sync token's
//! mode lets its peer do). The expectations are data ([`TABLE`], by rule
//! and credential, and [`OVERRIDES`] for the routes with a rule of their
//! own); every cell is asked, and every deviation is reported at once.
//!
//! Every answer is also searched for what its caller may not learn: the
//! content, item names and name of a feed it may not read, the names of
//! keys and replications not its own; and in a refusal (401, 403, 404),
//! any content at all, the name of any feed the request did not name, and
//! a feed's type.
//!
//! `private_feeds.rs` asks that a hidden feed answer byte for byte as a
//! missing one does; this file asks who gets what, route by route.
//!
//! A cell that changes something changes only what is its own (`del{N}`,
//! `up{N}`, … with N the credential's index) or what no other cell reads,
//! so the cells run concurrently, in any order.
#![allow(clippy::unwrap_used)]
use crate::common;

use std::collections::HashMap;
use std::fmt;
use std::time::Instant;

use axum::body::Body;
use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::{ADMIN, Instance, Reply};
use ferry_store::Permission;
use ferry_testkit::pypi as dist;
use ferry_types::{Digest, FeedType};
use futures::StreamExt as _;
use futures::future::join_all;
use serde_json::{Value, json};
use sha1::Sha1;
use sha2::{Digest as _, Sha256, Sha512};

/// A well-formed API key that matches no key.
const WRONG: &str = "ferry_0000000000000000000000000000000000000000000000000000000000000000";
/// The instance id a peer claims in its handshake.
const PEER: &str = "0123456789abcdef0123456789abcdef";
const JSON: (&str, &str) = ("content-type", "application/json");
/// npm renders absolute tarball URLs from the Host header.
const HOST: (&str, &str) = ("host", "registry.test");
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const BOUNDARY: &str = "----ferry-auth-matrix";
/// Requests in flight at once.
const CONCURRENCY: usize = 16;

// ---------------------------------------------------------------------------
// Feeds

struct FeedDef {
    name: &'static str,
    ty: FeedType,
    private: bool,
    /// Prefix of the feed's item names. No feed name, item name or marker
    /// is a substring of another.
    tag: &'static str,
}

const fn feed(name: &'static str, ty: FeedType, private: bool, tag: &'static str) -> FeedDef {
    FeedDef {
        name,
        ty,
        private,
        tag,
    }
}

const FEEDS: [FeedDef; 18] = [
    feed("pub-assets", FeedType::Assets, false, "pa"),
    feed("pub-npm", FeedType::Npm, false, "pn"),
    feed("pub-pypi", FeedType::Pypi, false, "pp"),
    feed("pub-oci", FeedType::Oci, false, "po"),
    feed("priv-assets", FeedType::Assets, true, "xa"),
    feed("priv-npm", FeedType::Npm, true, "xn"),
    feed("priv-pypi", FeedType::Pypi, true, "xp"),
    feed("priv-oci", FeedType::Oci, true, "xo"),
    // Private, and in no replication: what no sync token reaches.
    feed("walled-assets", FeedType::Assets, true, "wa"),
    // Public and empty: the feed the "elsewhere" write key may write.
    feed("side-assets", FeedType::Assets, false, "sa"),
    // cargo feeds, in no replication.
    feed("pub-cargo", FeedType::Cargo, false, "pc"),
    feed("priv-cargo", FeedType::Cargo, true, "xc"),
    // nuget feeds, in no replication.
    feed("pub-nuget", FeedType::Nuget, false, "pg"),
    feed("priv-nuget", FeedType::Nuget, true, "xg"),
    // debian feeds, in no replication.
    feed("pub-debian", FeedType::Debian, false, "pd"),
    feed("priv-debian", FeedType::Debian, true, "xd"),
    // rpm feeds, in no replication.
    feed("pub-rpm", FeedType::Rpm, false, "pr"),
    feed("priv-rpm", FeedType::Rpm, true, "xr"),
];
const WALLED: usize = 8;
const SIDE: usize = 9;
/// The feeds of the incoming replications.
const REPLICATED: std::ops::Range<usize> = 0..8;

fn feed_index(ty: FeedType, vis: Vis) -> usize {
    let private = match vis {
        Vis::Public => false,
        Vis::Private => true,
        Vis::Outside => return WALLED,
        Vis::Instance => unreachable!("an instance route names no feed"),
    };
    FEEDS
        .iter()
        .position(|f| f.ty == ty && f.private == private)
        .unwrap()
}

/// The feed of type `ty` with the other visibility.
fn other_feed(ty: FeedType, vis: Vis) -> usize {
    feed_index(
        ty,
        if vis == Vis::Public {
            Vis::Private
        } else {
            Vis::Public
        },
    )
}

/// Content only a caller who may read feed `tag` may ever see.
fn marker(tag: &str) -> String {
    format!("c0ntent-{tag}")
}

fn hex_sha256(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

fn digest(data: &[u8]) -> String {
    Digest::of(data).to_string()
}

// ---------------------------------------------------------------------------
// Credentials, rules and the expected table

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Cred {
    None,
    Wrong,
    /// An unscoped admin key, created and then deleted.
    Revoked,
    /// A read key for every feed.
    ReadAll,
    /// A read key scoped to the feed the route names.
    ReadScoped,
    /// A write key scoped to another (public) feed.
    WriteElsewhere,
    /// A write key scoped to the feed the route names.
    WriteScoped,
    /// An admin key scoped to the feed the route names.
    AdminScoped,
    Admin,
    /// Sync tokens of incoming replications over the eight main feeds.
    SyncPush,
    SyncPull,
    SyncMirror,
    /// A token of a mirror replication, revoked.
    SyncRevoked,
}

const CREDS: [Cred; 13] = [
    Cred::None,
    Cred::Wrong,
    Cred::Revoked,
    Cred::ReadAll,
    Cred::ReadScoped,
    Cred::WriteElsewhere,
    Cred::WriteScoped,
    Cred::AdminScoped,
    Cred::Admin,
    Cred::SyncPush,
    Cred::SyncPull,
    Cred::SyncMirror,
    Cred::SyncRevoked,
];

impl fmt::Display for Cred {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cred::None => "no key",
            Cred::Wrong => "a wrong key",
            Cred::Revoked => "a revoked admin key",
            Cred::ReadAll => "a read key (all feeds)",
            Cred::ReadScoped => "a read key for the feed",
            Cred::WriteElsewhere => "a write key for another feed",
            Cred::WriteScoped => "a write key for the feed",
            Cred::AdminScoped => "an admin key for the feed",
            Cred::Admin => "the admin key",
            Cred::SyncPush => "a push sync token",
            Cred::SyncPull => "a pull sync token",
            Cred::SyncMirror => "a mirror sync token",
            Cred::SyncRevoked => "a revoked sync token",
        })
    }
}

/// What a route is asked about: a public or a private feed, a private feed
/// outside every replication (replication API only), or nothing (the
/// instance).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Vis {
    Public,
    Private,
    Outside,
    Instance,
}

impl fmt::Display for Vis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Vis::Public => "public",
            Vis::Private => "private",
            Vis::Outside => "outside the replications",
            Vis::Instance => "instance",
        })
    }
}

/// The expected class of an answer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Exp {
    /// Authorized: 2xx or 3xx (every request of the matrix is well formed
    /// and names what exists, unless its rule says otherwise).
    Ok,
    /// 401 (with the `WWW-Authenticate` challenge: checked for every 401).
    Unauthorized,
    Forbidden,
    NotFound,
    /// Authorized, and exactly this status.
    Status(u16),
}

impl fmt::Display for Exp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exp::Ok => f.write_str("2xx/3xx"),
            Exp::Unauthorized => f.write_str("401"),
            Exp::Forbidden => f.write_str("403"),
            Exp::NotFound => f.write_str("404"),
            Exp::Status(s) => write!(f, "{s}"),
        }
    }
}

impl Exp {
    fn admits(self, status: StatusCode) -> bool {
        match self {
            Exp::Ok => status.is_success() || status.is_redirection(),
            Exp::Unauthorized => status == StatusCode::UNAUTHORIZED,
            Exp::Forbidden => status == StatusCode::FORBIDDEN,
            Exp::NotFound => status == StatusCode::NOT_FOUND,
            Exp::Status(code) => status.as_u16() == code,
        }
    }
}

/// The rule a route follows: a column of [`TABLE`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Rule {
    /// GET/HEAD under a feed protocol (`FeedAccess`, action read).
    FeedRead,
    /// Any other method under a feed protocol (action write); also the OCI
    /// upload-session GET, which asks for write itself.
    FeedWrite,
    /// A request under this feed's URL for what another feed holds (its
    /// blob, manifest or upload session): as `FeedRead` (`write`: as
    /// `FeedWrite`), except that whoever passes gets `then`, never the
    /// other feed's content.
    Foreign { write: bool, then: Exp },
    /// The management API: an admin key not limited to some feeds.
    Admin,
    /// `/metrics`: any key not limited to some feeds.
    Metrics,
    /// `GET /v2/`: any valid key; a challenge without one.
    OciBase,
    /// `GET /v2/_catalog`: anyone; a wrong key is refused.
    Catalog,
    /// Answered to everyone: `/health`, `/ready`, the OpenAPI document.
    Open,
    /// Replication API: the handshake (any valid token).
    Handshake,
    /// Replication API: content of a feed of the replication (changes,
    /// entries, lookup): this side must push.
    ReplRead,
    /// Replication API: stamps and digest of a feed of the replication
    /// (any mode: a pushing peer needs this side's stamps).
    ReplMeta,
    /// Replication API: apply to a feed of the replication (this side
    /// must pull).
    ReplApply,
    /// Replication API: `blobs/missing` and `PUT blobs/D` (this side must
    /// pull content).
    ReplContent,
    /// Replication API: `GET blobs/D` of a blob of the replication's feeds
    /// (this side must push content).
    ReplBlob,
    /// Replication API: any request about a feed outside the replication.
    ReplOutside,
    /// Replication API: `GET blobs/D` of a blob only a feed outside the
    /// replication holds.
    ReplBlobOutside,
}

impl Rule {
    fn column(self, vis: Vis) -> usize {
        let private = usize::from(vis == Vis::Private);
        match self {
            Rule::FeedRead | Rule::Foreign { write: false, .. } => private,
            Rule::FeedWrite | Rule::Foreign { write: true, .. } => 2 + private,
            Rule::Admin => 4,
            Rule::Metrics => 5,
            Rule::OciBase => 6,
            Rule::Catalog => 7,
            Rule::Open => 8,
            Rule::Handshake => 9,
            Rule::ReplRead => 10,
            Rule::ReplMeta => 11,
            Rule::ReplApply => 12,
            Rule::ReplContent => 13,
            Rule::ReplBlob => 14,
            Rule::ReplOutside => 15,
            Rule::ReplBlobOutside => 16,
        }
    }

    fn is_replication(self) -> bool {
        self.column(Vis::Public) >= 9
    }
}

const OK: Exp = Exp::Ok;
const U: Exp = Exp::Unauthorized;
const F: Exp = Exp::Forbidden;
const N: Exp = Exp::NotFound;

/// Rule × credential → expected class.
///
/// - Feed routes (`auth::visible_feed`, `auth::authorize_feed`): a
///   presented key that matches no key (wrong, revoked, or a sync token,
///   which is no API key) is 401 before anything else; public feeds are
///   read by everyone; a private feed is, to whoever may not read it,
///   missing: 401 without a key, 404 with one; who may read a feed but
///   not write it gets 403 for writes, and so does a write key scoped to
///   another feed on a public feed.
/// - Management: an admin key not limited to some feeds, else 403 (401
///   without a valid key); metrics: a key not limited to some feeds.
/// - Replication API (`incoming`): only sync tokens (anything else: 401);
///   a push replication here lets its peer read, a pull one write, a
///   mirror both; stamps and digests for any mode; a feed outside the
///   replication is 403; a blob outside it is 404 to a token that may
///   read blobs, 403 to one that may not.
#[rustfmt::skip]
const TABLE: [(Cred, [Exp; 17]); 13] = [
    //                        feed read  feed write admin metrics /v2/ catalog open   hs read meta apply content blob out blob-out
    //                        pub  priv  pub  priv
    (Cred::None,            [OK,  U,    U,   U,     U,    U,      U,   OK,     OK,    U,  U,   U,   U,    U,      U,   U,  U]),
    (Cred::Wrong,           [U,   U,    U,   U,     U,    U,      U,   U,      OK,    U,  U,   U,   U,    U,      U,   U,  U]),
    (Cred::Revoked,         [U,   U,    U,   U,     U,    U,      U,   U,      OK,    U,  U,   U,   U,    U,      U,   U,  U]),
    (Cred::ReadAll,         [OK,  OK,   F,   F,     F,    OK,     OK,  OK,     OK,    U,  U,   U,   U,    U,      U,   U,  U]),
    (Cred::ReadScoped,      [OK,  OK,   F,   F,     F,    F,      OK,  OK,     OK,    U,  U,   U,   U,    U,      U,   U,  U]),
    (Cred::WriteElsewhere,  [OK,  N,    F,   N,     F,    F,      OK,  OK,     OK,    U,  U,   U,   U,    U,      U,   U,  U]),
    (Cred::WriteScoped,     [OK,  OK,   OK,  OK,    F,    F,      OK,  OK,     OK,    U,  U,   U,   U,    U,      U,   U,  U]),
    (Cred::AdminScoped,     [OK,  OK,   OK,  OK,    F,    F,      OK,  OK,     OK,    U,  U,   U,   U,    U,      U,   U,  U]),
    (Cred::Admin,           [OK,  OK,   OK,  OK,    OK,   OK,     OK,  OK,     OK,    U,  U,   U,   U,    U,      U,   U,  U]),
    (Cred::SyncPush,        [U,   U,    U,   U,     U,    U,      U,   U,      OK,    OK, OK,  OK,  F,    F,      OK,  F,  N]),
    (Cred::SyncPull,        [U,   U,    U,   U,     U,    U,      U,   U,      OK,    OK, F,   OK,  OK,   OK,     F,   F,  F]),
    (Cred::SyncMirror,      [U,   U,    U,   U,     U,    U,      U,   U,      OK,    OK, OK,  OK,  OK,   OK,     OK,  F,  N]),
    (Cred::SyncRevoked,     [U,   U,    U,   U,     U,    U,      U,   U,      OK,    U,  U,   U,   U,    U,      U,   U,  U]),
];

const MOUNT: &str = "oci POST mount from the other feed";
const HARD_DELETE: &str = "nuget DELETE hard (v3)";
const HARD_DELETE_KEY: &str = "nuget DELETE hard (v2) (X-NuGet-ApiKey)";
/// Routes whose name ends so send their key as `X-NuGet-ApiKey`.
const NUGET_KEY: &str = "(X-NuGet-ApiKey)";

/// Cells whose answer differs from their rule's column, by design.
const OVERRIDES: &[(&str, Cred, Vis, Exp)] = &[
    // npm whoami names the caller's key; without one there is no one to name.
    ("npm GET whoami", Cred::None, Vis::Public, U),
    // A mount from another feed happens (201) only if the caller may read
    // that feed; otherwise the answer is an upload session (202), as for a
    // blob that exists nowhere.
    (MOUNT, Cred::WriteScoped, Vis::Public, Exp::Status(202)),
    (MOUNT, Cred::AdminScoped, Vis::Public, Exp::Status(202)),
    (MOUNT, Cred::Admin, Vis::Public, Exp::Status(201)),
    (MOUNT, Cred::WriteScoped, Vis::Private, Exp::Status(201)),
    (MOUNT, Cred::AdminScoped, Vis::Private, Exp::Status(201)),
    (MOUNT, Cred::Admin, Vis::Private, Exp::Status(201)),
    // Deleting a nuget package for good takes an admin key; a write key
    // only unlists.
    (HARD_DELETE, Cred::WriteScoped, Vis::Public, F),
    (HARD_DELETE, Cred::WriteScoped, Vis::Private, F),
    (HARD_DELETE_KEY, Cred::WriteScoped, Vis::Public, F),
    (HARD_DELETE_KEY, Cred::WriteScoped, Vis::Private, F),
];

fn expected(route: &Route, cred: Cred) -> Exp {
    if let Some((.., e)) = OVERRIDES
        .iter()
        .find(|(name, c, v, _)| *name == route.name && *c == cred && *v == route.vis)
    {
        return *e;
    }
    // A key sent as X-NuGet-ApiKey that matches no API key is 403, as
    // NuGet clients expect (a 401 makes them prompt for a password).
    if route.name.ends_with(NUGET_KEY)
        && matches!(
            cred,
            Cred::Wrong
                | Cred::Revoked
                | Cred::SyncPush
                | Cred::SyncPull
                | Cred::SyncMirror
                | Cred::SyncRevoked
        )
    {
        return F;
    }
    let (_, row) = TABLE.iter().find(|(c, _)| *c == cred).unwrap();
    match (row[route.rule.column(route.vis)], route.rule) {
        (Exp::Ok, Rule::Foreign { then, .. }) => then,
        (e, _) => e,
    }
}

// ---------------------------------------------------------------------------
// Requests

struct Req {
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    /// Send the key as `X-NuGet-ApiKey`, not as a bearer token.
    nuget_key: bool,
}

impl Req {
    fn new(method: &'static str, path: impl Into<String>) -> Self {
        Self {
            method,
            path: path.into(),
            headers: Vec::new(),
            body: Vec::new(),
            nuget_key: false,
        }
    }
    fn get(path: impl Into<String>) -> Self {
        Self::new("GET", path)
    }
    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
    fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
    fn json(self, v: &Value) -> Self {
        self.header(JSON.0, JSON.1).body(v.to_string())
    }
    /// Whether the caller sent `text` (an answer may then echo it).
    fn carries(&self, text: &str) -> bool {
        self.path.contains(text)
            || String::from_utf8_lossy(&self.body).contains(text)
            || self.headers.iter().any(|(_, v)| v.contains(text))
    }
    async fn send(&self, i: &Instance, key: Option<&str>) -> Reply {
        let mut headers: Vec<(&str, &str)> = self.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let (bearer, nuget) = if self.nuget_key { (None, key) } else { (key, None) };
        if let Some(k) = nuget {
            headers.push(("x-nuget-apikey", k));
        }
        i.send(
            self.method,
            &self.path,
            bearer,
            &headers,
            Body::from(self.body.clone()),
        )
        .await
    }
}

/// Sends a setup request with the admin key; it must succeed.
async fn admin(i: &Instance, req: Req) -> Reply {
    let r = req.send(i, Some(ADMIN)).await;
    assert!(
        r.status.is_success(),
        "setup: {} {}: {} {}",
        req.method,
        req.path,
        r.status,
        r.text()
    );
    r
}

fn npm_publish_body(name: &str, version: &str, description: &str) -> Vec<u8> {
    let package = json!({ "name": name, "version": version, "description": description, "main": "index.js" })
        .to_string();
    let index = format!("module.exports = {description:?};\n");
    // Stored deflate blocks: the content is in the tarball's bytes as is.
    let tgz = dist::gzip(&dist::tar(&[
        ("package/package.json", package.as_bytes()),
        ("package/index.js", index.as_bytes()),
    ]));
    let shasum: String = Sha1::digest(&tgz).iter().map(|b| format!("{b:02x}")).collect();
    json!({
        "_id": name,
        "name": name,
        "description": description,
        "dist-tags": { "latest": version },
        "versions": { version: {
            "name": name,
            "version": version,
            "description": description,
            "readme": description,
            "main": "index.js",
            "_id": format!("{name}@{version}"),
            "dist": {
                "integrity": format!("sha512-{}", STANDARD.encode(Sha512::digest(&tgz))),
                "shasum": shasum,
                "tarball": format!("http://elsewhere/{name}/-/{name}-{version}.tgz"),
            },
        }},
        "_attachments": { format!("{name}-{version}.tgz"): {
            "content_type": "application/octet-stream",
            "data": STANDARD.encode(&tgz),
            "length": tgz.len(),
        }},
    })
    .to_string()
    .into_bytes()
}

fn npm_publish(feed: &str, name: &str, description: &str) -> Req {
    Req::new("PUT", format!("/npm/{feed}/{name}"))
        .header(HOST.0, HOST.1)
        .header(JSON.0, JSON.1)
        .body(npm_publish_body(name, "1.0.0", description))
}

/// twine's upload of a wheel of `name` `version` whose module is `module`.
fn pypi_upload(feed: &str, name: &str, version: &str, module: &str) -> Req {
    let (filename, data) = dist::wheel(name, version, module, None);
    let fields = [
        ("name", name.to_string()),
        ("version", version.to_string()),
        ("filetype", "bdist_wheel".to_string()),
        ("pyversion", "py3".to_string()),
        ("metadata_version", "2.1".to_string()),
        ("summary", "A test package".to_string()),
        ("sha256_digest", Digest::of(&data).hex()),
        (":action", "file_upload".to_string()),
        ("protocol_version", "1".to_string()),
    ];
    let mut b = Vec::new();
    for (k, v) in fields {
        b.extend_from_slice(
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n").as_bytes(),
        );
    }
    b.extend_from_slice(
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"content\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    b.extend_from_slice(&data);
    b.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    Req::new("POST", format!("/pypi/{feed}/"))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(b)
}

fn wheel_name(project: &str, version: &str) -> String {
    format!("{}-{version}-py3-none-any.whl", project.replace('-', "_"))
}

/// The handshake a peer of `cred`'s replication sends (the mirror image
/// of its mode), for feed `f`.
fn handshake(cred: Cred, f: usize) -> Value {
    let flows = |pull: bool, push: bool| json!({ "pull_missing": pull, "push_missing": push, "delete_local": pull, "delete_remote": push });
    let mode = match cred {
        // This side pushes: the peer pulls.
        Cred::SyncPush => json!({ "name": "pull", "flows": flows(true, false) }),
        Cred::SyncPull => json!({ "name": "push", "flows": flows(false, true) }),
        _ => json!({ "name": "mirror", "flows": flows(true, true) }),
    };
    json!({
        "protocol_versions": [1],
        "instance_id": PEER,
        "ferry_version": "test",
        "mode": mode,
        "feeds": [{ "outgoing": FEEDS[f].name, "incoming": FEEDS[f].name, "type": FEEDS[f].ty.to_string() }],
    })
}

// ---------------------------------------------------------------------------
// The instance

/// Upload sessions of an OCI feed, per credential: for the status GET,
/// the PATCH, the closing PUT, the DELETE, and the other feed's attempt.
const SESSION_USES: usize = 5;

/// What an OCI feed holds.
struct OciFx {
    manifest: Vec<u8>,
    manifest_digest: String,
    layer_digest: String,
    sessions: Vec<[String; SESSION_USES]>,
}

/// What the setup made of one feed.
#[derive(Default)]
struct Seeded {
    asset_digest: Option<String>,
    /// An rpm feed's `repodata/HEX-primary.xml.gz` after seeding.
    rpm_primary: Option<String>,
    oci: Option<OciFx>,
}

struct Fx {
    i: Instance,
    read_all: String,
    write_elsewhere: String,
    revoked: String,
    /// (credential, feed) → the key of that kind scoped to that feed.
    scoped: HashMap<(Cred, usize), String>,
    tokens: HashMap<Cred, String>,
    oci: HashMap<usize, OciFx>,
    /// The digest of each assets feed's file.
    asset_digest: HashMap<usize, String>,
    /// Each rpm feed's primary repodata file name after seeding (served
    /// on while the matrix's writes make newer ones).
    rpm_primary: HashMap<usize, String>,
    /// Per credential: a token of replication `tok-host` to revoke.
    revocable: Vec<String>,
}

fn letter(f: usize) -> char {
    char::from(b'a' + u8::try_from(f).unwrap())
}

/// The name of the key a credential presents on a route about `scope`.
fn key_name(cred: Cred, scope: usize) -> Option<String> {
    match cred {
        Cred::ReadAll => Some("k-read-all".into()),
        Cred::WriteElsewhere => Some("k-write-elsewhere".into()),
        Cred::ReadScoped => Some(format!("k-read-scoped-{}", letter(scope))),
        Cred::WriteScoped => Some(format!("k-write-scoped-{}", letter(scope))),
        Cred::AdminScoped => Some(format!("k-admin-scoped-{}", letter(scope))),
        Cred::Revoked => Some("k-revoked".into()),
        _ => None,
    }
}

/// The incoming replication a sync token belongs to.
fn replication_of(cred: Cred) -> Option<&'static str> {
    match cred {
        Cred::SyncPush => Some("in-push"),
        Cred::SyncPull => Some("in-pull"),
        Cred::SyncMirror => Some("in-mirror"),
        Cred::SyncRevoked => Some("in-revoked"),
        _ => None,
    }
}

/// One request per credential, at once.
async fn per_cred<T, Fut: Future<Output = T>>(each: impl Fn(usize) -> Fut) -> Vec<T> {
    join_all((0..CREDS.len()).map(each)).await
}

async fn seed_assets(i: &Instance, f: usize) -> Seeded {
    let FeedDef { name, tag, .. } = FEEDS[f];
    if f == SIDE {
        return Seeded::default();
    }
    let content = marker(tag);
    admin(
        i,
        Req::new("PUT", format!("/assets/{name}/{tag}-file.txt")).body(content.clone()),
    )
    .await;
    if f != WALLED {
        per_cred(|ci| {
            admin(
                i,
                Req::new("PUT", format!("/assets/{name}/del{ci}.txt")).body("doomed"),
            )
        })
        .await;
    }
    Seeded {
        asset_digest: Some(digest(content.as_bytes())),
        ..Seeded::default()
    }
}

async fn seed_npm(i: &Instance, f: usize) -> Seeded {
    let FeedDef { name, tag, .. } = FEEDS[f];
    let lib = format!("{tag}-lib");
    admin(i, npm_publish(name, &lib, &marker(tag))).await;
    per_cred(|ci| {
        let lib = &lib;
        async move {
            admin(i, npm_publish(name, &format!("del{ci}"), "doomed")).await;
            admin(
                i,
                Req::new("PUT", format!("/npm/{name}/-/package/{lib}/dist-tags/rm{ci}"))
                    .header(HOST.0, HOST.1)
                    .json(&json!("1.0.0")),
            )
            .await;
        }
    })
    .await;
    Seeded::default()
}

async fn seed_pypi(i: &Instance, f: usize) -> Seeded {
    let FeedDef { name, tag, .. } = FEEDS[f];
    let project = format!("{tag}-proj");
    let module = marker(tag).replace('-', "_");
    for version in ["1.0", "0.9"] {
        admin(i, pypi_upload(name, &project, version, &module)).await;
    }
    per_cred(|ci| async move {
        for project in ["del", "dv", "yk", "uy"] {
            admin(i, pypi_upload(name, &format!("{project}{ci}"), "1.0", "doomed")).await;
        }
    })
    .await;
    Seeded::default()
}

async fn seed_oci(i: &Instance, f: usize) -> Seeded {
    let FeedDef { name, tag, .. } = FEEDS[f];
    let repo = format!("{tag}-app");
    let secret = marker(tag);
    let config = json!({ "architecture": "amd64", "os": "linux", "marker": secret })
        .to_string()
        .into_bytes();
    let layer = format!("layer {secret}").into_bytes();
    for blob in [&config, &layer] {
        let path = format!("/v2/{name}/{repo}/blobs/uploads/?digest={}", digest(blob));
        admin(i, Req::new("POST", path).body(blob.clone())).await;
    }
    let desc = |t: &str, d: &[u8]| json!({ "mediaType": t, "digest": digest(d), "size": d.len() });
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": desc("application/vnd.oci.image.config.v1+json", &config),
        "layers": [desc("application/vnd.oci.image.layer.v1.tar+gzip", &layer)],
        "annotations": { "org.example.marker": secret },
    }))
    .unwrap();
    let put_manifest = |reference: String| {
        Req::new("PUT", format!("/v2/{name}/{repo}/manifests/{reference}"))
            .header("content-type", MANIFEST)
            .body(manifest.clone())
    };
    admin(i, put_manifest("v1".into())).await;
    let layer_digest = digest(&layer);
    let sessions = per_cred(|ci| {
        let (repo, layer_digest, put_manifest) = (&repo, &layer_digest, &put_manifest);
        async move {
            admin(i, put_manifest(format!("del{ci}"))).await;
            let link = format!("/v2/{name}/lnk{ci}/blobs/uploads/?mount={layer_digest}&from={name}/{repo}");
            let r = admin(i, Req::new("POST", link)).await;
            assert_eq!(r.status, StatusCode::CREATED, "setup: link: {}", r.text());
            let mut ids = Vec::new();
            for _ in 0..SESSION_USES {
                let r = admin(i, Req::new("POST", format!("/v2/{name}/{repo}/blobs/uploads/"))).await;
                assert_eq!(r.status, StatusCode::ACCEPTED, "setup: session: {}", r.text());
                ids.push(r.header("docker-upload-uuid").unwrap().to_string());
            }
            <[String; SESSION_USES]>::try_from(ids).unwrap()
        }
    })
    .await;
    Seeded {
        asset_digest: None,
        rpm_primary: None,
        oci: Some(OciFx {
            manifest_digest: digest(&manifest),
            manifest,
            layer_digest,
            sessions,
        }),
    }
}

async fn seed(i: &Instance, f: usize) -> Seeded {
    match FEEDS[f].ty {
        FeedType::Assets => seed_assets(i, f).await,
        FeedType::Npm => seed_npm(i, f).await,
        FeedType::Pypi => seed_pypi(i, f).await,
        FeedType::Oci => seed_oci(i, f).await,
        FeedType::Cargo => seed_cargo(i, f).await,
        FeedType::Nuget => seed_nuget(i, f).await,
        FeedType::Debian => seed_debian(i, f).await,
        FeedType::Rpm => seed_rpm(i, f).await,
    }
}

/// A `.deb` of `name` 1.0 for amd64 whose control file carries `marker`.
fn debian_deb(name: &str, marker: &str) -> Vec<u8> {
    use ferry_testkit::debian::{Compression, control, deb};
    let extra = format!("X-Marker: {marker}\n");
    deb(
        &control(name, "1.0", "amd64", &extra),
        marker.as_bytes(),
        Compression::Gz,
    )
}

/// The bulk upload of one `.deb` (`curl -F deb=@FILE`).
fn debian_bulk(feed: &str, name: &str) -> Req {
    let mut b = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"deb\"; filename=\"{name}.deb\"\r\n\r\n"
    )
    .into_bytes();
    b.extend_from_slice(&debian_deb(name, "fresh"));
    b.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    Req::new("POST", format!("/debian/{feed}/upload/bookworm/main"))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(b)
}

/// The bulk upload of one `.rpm` (`curl -F rpm=@FILE`).
fn rpm_bulk(feed: &str, name: &str) -> Req {
    let mut b = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"rpm\"; filename=\"{name}.rpm\"\r\n\r\n"
    )
    .into_bytes();
    b.extend_from_slice(&rpm_file(name, "fresh"));
    b.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    Req::new("POST", format!("/rpm/{feed}/upload"))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(b)
}

async fn seed_debian(i: &Instance, f: usize) -> Seeded {
    let FeedDef { name, tag, .. } = FEEDS[f];
    let upload = |pkg: String, marker: String| {
        Req::new("PUT", format!("/debian/{name}/upload/bookworm/main")).body(debian_deb(&pkg, &marker))
    };
    let r = admin(i, upload(format!("{tag}-pkg"), marker(tag))).await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "setup: debian upload: {}",
        r.text()
    );
    per_cred(|ci| async move {
        admin(i, upload(format!("del{ci}"), "doomed".into())).await;
    })
    .await;
    Seeded::default()
}

/// An `.rpm` of `name` 1.0-1 (noarch) whose file carries `marker`.
fn rpm_file(name: &str, marker: &str) -> Vec<u8> {
    let content = marker.as_bytes();
    let path = format!("/usr/share/{name}/{marker}");
    ferry_testkit::rpm::rpm(&ferry_testkit::rpm::Spec {
        name,
        version: "1.0",
        release: "1",
        arch: "noarch",
        files: &[(path.as_str(), content)],
        build_time: 1_700_000_000,
        ..Default::default()
    })
}

async fn seed_rpm(i: &Instance, f: usize) -> Seeded {
    let FeedDef { name, tag, .. } = FEEDS[f];
    let upload = |pkg: String, marker: String| {
        Req::new("PUT", format!("/rpm/{name}/upload")).body(rpm_file(&pkg, &marker))
    };
    let r = admin(i, upload(format!("{tag}-pkg"), marker(tag))).await;
    assert_eq!(r.status, StatusCode::CREATED, "setup: rpm upload: {}", r.text());
    per_cred(|ci| async move {
        admin(i, upload(format!("del{ci}"), "doomed".into())).await;
    })
    .await;
    let repomd = admin(i, Req::get(format!("/rpm/{name}/repodata/repomd.xml")))
        .await
        .text();
    let primary = repomd
        .split("<location href=\"repodata/")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("setup: repomd.xml names primary")
        .to_owned();
    Seeded {
        rpm_primary: Some(primary),
        ..Seeded::default()
    }
}

/// cargo's publish body of `name` 1.0.0 whose description (and source) is
/// `description`.
fn cargo_publish(feed: &str, name: &str, description: &str) -> Req {
    let manifest = format!("[package]\nname = \"{name}\"\nversion = \"1.0.0\"\n");
    let lib = format!("pub const S: &str = {description:?};\n");
    let (toml_path, lib_path) = (
        format!("{name}-1.0.0/Cargo.toml"),
        format!("{name}-1.0.0/src/lib.rs"),
    );
    let krate = dist::gzip(&dist::tar(&[
        (toml_path.as_str(), manifest.as_bytes()),
        (lib_path.as_str(), lib.as_bytes()),
    ]));
    let meta =
        json!({ "name": name, "vers": "1.0.0", "deps": [], "features": {}, "description": description })
            .to_string();
    let mut b = (meta.len() as u32).to_le_bytes().to_vec();
    b.extend_from_slice(meta.as_bytes());
    b.extend_from_slice(&(krate.len() as u32).to_le_bytes());
    b.extend_from_slice(&krate);
    Req::new("PUT", format!("/cargo/{feed}/api/v1/crates/new"))
        .header(HOST.0, HOST.1)
        .body(b)
}

async fn seed_cargo(i: &Instance, f: usize) -> Seeded {
    let FeedDef { name, tag, .. } = FEEDS[f];
    admin(i, cargo_publish(name, &format!("{tag}-crate"), &marker(tag))).await;
    per_cred(|ci| async move {
        for krate in ["yk", "uy", "del"] {
            admin(i, cargo_publish(name, &format!("{krate}{ci}"), "doomed")).await;
        }
    })
    .await;
    Seeded::default()
}

/// A `.nupkg` of `id` 1.0.0 whose description is `description`.
fn nupkg(id: &str, description: &str) -> Vec<u8> {
    use std::io::Write as _;
    let nuspec = format!(
        "<?xml version=\"1.0\"?><package><metadata><id>{id}</id><version>1.0.0</version>\
         <authors>t</authors><description>{description}</description></metadata></package>"
    );
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default();
    w.start_file(format!("{id}.nuspec"), opts).unwrap();
    w.write_all(nuspec.as_bytes()).unwrap();
    w.start_file("content/readme.txt", opts).unwrap();
    w.write_all(description.as_bytes()).unwrap();
    w.finish().unwrap().into_inner()
}

/// A nuget push of `id` 1.0.0 to `path` (under the feed), as nuget.exe
/// sends it: multipart, one file part.
fn nuget_push(feed: &str, path: &str, id: &str, description: &str) -> Req {
    let mut b = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"package\"; filename=\"package.nupkg\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    b.extend_from_slice(&nupkg(id, description));
    b.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    Req::new("PUT", format!("/nuget/{feed}/{path}"))
        .header(HOST.0, HOST.1)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(b)
}

/// The packages each credential's write cells of a nuget feed unlist
/// (`ul`), relist (`rl`) or delete (`hd`), by route.
const NUGET_DOOMED: [&str; 7] = ["ul", "ulb", "ulr", "rl", "rlb", "hd", "hdk"];

async fn seed_nuget(i: &Instance, f: usize) -> Seeded {
    let FeedDef { name, tag, .. } = FEEDS[f];
    admin(
        i,
        nuget_push(name, "v3/package", &format!("{tag}-pkg"), &marker(tag)),
    )
    .await;
    per_cred(|ci| async move {
        for p in NUGET_DOOMED {
            admin(i, nuget_push(name, "v3/package", &format!("{p}{ci}"), "doomed")).await;
        }
        for p in ["rl", "rlb"] {
            let unlist = Req::new("DELETE", format!("/nuget/{name}/v3/package/{p}{ci}/1.0.0"));
            admin(i, unlist.header(HOST.0, HOST.1)).await;
        }
    })
    .await;
    Seeded::default()
}

/// An incoming replication and a token of it.
async fn incoming(i: &Instance, name: &str, feeds: &[&str], mode: &str) -> String {
    let body = json!({ "name": name, "feeds": feeds, "mode": mode });
    admin(i, Req::new("POST", "/api/v1/replications").json(&body)).await;
    let r = admin(i, Req::new("POST", format!("/api/v1/replications/{name}/tokens"))).await;
    r.json()["token"].as_str().unwrap().to_string()
}

/// The sync tokens of the matrix, and tokens for the revoke route.
async fn seed_replications(i: &Instance) -> (HashMap<Cred, String>, Vec<String>) {
    let feeds: Vec<&str> = REPLICATED.map(|f| FEEDS[f].name).collect();
    let mut tokens = HashMap::new();
    for (cred, mode) in [
        (Cred::SyncPush, "push"),
        (Cred::SyncPull, "pull"),
        (Cred::SyncMirror, "mirror"),
        (Cred::SyncRevoked, "mirror"),
    ] {
        let token = incoming(i, replication_of(cred).unwrap(), &feeds, mode).await;
        tokens.insert(cred, token);
    }
    let revoked = &tokens[&Cred::SyncRevoked];
    admin(
        i,
        Req::new(
            "DELETE",
            format!("/api/v1/replications/in-revoked/tokens/{revoked}"),
        ),
    )
    .await;
    let side = [FEEDS[SIDE].name];
    incoming(i, "tok-host", &side, "push").await;
    let revocable = per_cred(|ci| async move {
        incoming(i, &format!("gone-r{ci}"), &side, "push").await;
        let r = admin(i, Req::new("POST", "/api/v1/replications/tok-host/tokens")).await;
        r.json()["token"].as_str().unwrap().to_string()
    })
    .await;
    (tokens, revocable)
}

impl Fx {
    async fn new() -> Self {
        let i = Instance::with_config(ferry_core::Config {
            // The setup opens five upload sessions per credential and OCI
            // feed with the admin key.
            oci_max_upload_sessions_per_key: 1000,
            ..Default::default()
        })
        .await;
        for f in &FEEDS {
            i.feed(f.name, f.ty, f.private).await;
        }
        let read_all = i.key("k-read-all", Permission::Read, None).await;
        let write_elsewhere = i
            .key("k-write-elsewhere", Permission::Write, Some(&[FEEDS[SIDE].name]))
            .await;
        let mut scoped = HashMap::new();
        for (f, def) in FEEDS.iter().enumerate() {
            for (cred, p) in [
                (Cred::ReadScoped, Permission::Read),
                (Cred::WriteScoped, Permission::Write),
                (Cred::AdminScoped, Permission::Admin),
            ] {
                let name = key_name(cred, f).unwrap();
                scoped.insert((cred, f), i.key(&name, p, Some(&[def.name])).await);
            }
        }
        let revoked = i.key("k-revoked", Permission::Admin, None).await;
        admin(&i, Req::new("DELETE", "/api/v1/keys/k-revoked")).await;
        for ci in 0..CREDS.len() {
            i.key(&format!("doomed-{ci}"), Permission::Read, None).await;
            for side in ["pub", "priv"] {
                i.feed(&format!("drop-{side}-{ci}"), FeedType::Assets, side == "priv")
                    .await;
            }
        }
        let (seeded, (tokens, revocable)) = tokio::join!(
            join_all((0..FEEDS.len()).map(|f| seed(&i, f))),
            seed_replications(&i),
        );
        let mut asset_digest = HashMap::new();
        let mut rpm_primary = HashMap::new();
        let mut oci = HashMap::new();
        for (f, s) in seeded.into_iter().enumerate() {
            if let Some(d) = s.asset_digest {
                asset_digest.insert(f, d);
            }
            if let Some(p) = s.rpm_primary {
                rpm_primary.insert(f, p);
            }
            if let Some(o) = s.oci {
                oci.insert(f, o);
            }
        }
        Self {
            i,
            read_all,
            write_elsewhere,
            revoked,
            scoped,
            tokens,
            oci,
            asset_digest,
            rpm_primary,
            revocable,
        }
    }

    /// What `cred` presents on a route about feed `scope`.
    fn secret(&self, cred: Cred, scope: usize) -> Option<String> {
        match cred {
            Cred::None => None,
            Cred::Wrong => Some(WRONG.into()),
            Cred::Revoked => Some(self.revoked.clone()),
            Cred::ReadAll => Some(self.read_all.clone()),
            Cred::WriteElsewhere => Some(self.write_elsewhere.clone()),
            Cred::ReadScoped | Cred::WriteScoped | Cred::AdminScoped => {
                Some(self.scoped[&(cred, scope)].clone())
            }
            Cred::Admin => Some(ADMIN.into()),
            Cred::SyncPush | Cred::SyncPull | Cred::SyncMirror | Cred::SyncRevoked => {
                Some(self.tokens[&cred].clone())
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Routes

type Make = Box<dyn Fn(&Fx, usize) -> Req>;

struct Route {
    /// The route, as the report and [`OVERRIDES`] name it.
    name: &'static str,
    vis: Vis,
    rule: Rule,
    /// The feed whose scoped keys the "… for the feed" credentials hold.
    scope: usize,
    /// The request, for the credential of this index in [`CREDS`].
    make: Make,
}

struct Routes(Vec<Route>);

impl Routes {
    fn add(
        &mut self,
        name: &'static str,
        vis: Vis,
        rule: Rule,
        scope: usize,
        make: impl Fn(&Fx, usize) -> Req + 'static,
    ) {
        self.0.push(Route {
            name,
            vis,
            rule,
            scope,
            make: Box::new(make),
        });
    }

    fn assets(&mut self, vis: Vis) {
        use Rule::{FeedRead as R, FeedWrite as W};
        let f = feed_index(FeedType::Assets, vis);
        let FeedDef { name: n, tag: t, .. } = FEEDS[f];
        self.add("assets GET file", vis, R, f, move |_, _| {
            Req::get(format!("/assets/{n}/{t}-file.txt"))
        });
        self.add("assets HEAD file", vis, R, f, move |_, _| {
            Req::new("HEAD", format!("/assets/{n}/{t}-file.txt"))
        });
        self.add("assets GET listing", vis, R, f, move |_, _| {
            Req::get(format!("/assets/{n}/"))
        });
        self.add("assets GET listing (JSON)", vis, R, f, move |_, _| {
            Req::get(format!("/assets/{n}/")).header("accept", "application/json")
        });
        self.add("assets GET listing (no slash)", vis, R, f, move |_, _| {
            Req::get(format!("/assets/{n}"))
        });
        self.add("assets PUT file", vis, W, f, move |_, ci| {
            Req::new("PUT", format!("/assets/{n}/up{ci}.txt")).body("new")
        });
        self.add("assets DELETE file", vis, W, f, move |_, ci| {
            Req::new("DELETE", format!("/assets/{n}/del{ci}.txt"))
        });
    }

    fn npm(&mut self, vis: Vis) {
        use Rule::{FeedRead as R, FeedWrite as W};
        let f = feed_index(FeedType::Npm, vis);
        let FeedDef { name: n, tag: t, .. } = FEEDS[f];
        let npm =
            move |method, path: String| Req::new(method, format!("/npm/{n}/{path}")).header(HOST.0, HOST.1);
        self.add("npm GET packument", vis, R, f, move |_, _| {
            npm("GET", format!("{t}-lib"))
        });
        self.add("npm GET packument (abbreviated)", vis, R, f, move |_, _| {
            npm("GET", format!("{t}-lib")).header("accept", "application/vnd.npm.install-v1+json")
        });
        self.add("npm GET version", vis, R, f, move |_, _| {
            npm("GET", format!("{t}-lib/1.0.0"))
        });
        self.add("npm GET dist-tags", vis, R, f, move |_, _| {
            npm("GET", format!("-/package/{t}-lib/dist-tags"))
        });
        self.add("npm GET tarball", vis, R, f, move |_, _| {
            npm("GET", format!("{t}-lib/-/{t}-lib-1.0.0.tgz"))
        });
        self.add("npm HEAD tarball", vis, R, f, move |_, _| {
            npm("HEAD", format!("{t}-lib/-/{t}-lib-1.0.0.tgz"))
        });
        self.add("npm GET whoami", vis, R, f, move |_, _| {
            npm("GET", "-/whoami".into())
        });
        self.add("npm GET ping", vis, R, f, move |_, _| npm("GET", "-/ping".into()));
        self.add("npm PUT publish", vis, W, f, move |_, ci| {
            npm_publish(n, &format!("new{ci}"), "fresh")
        });
        self.add("npm PUT dist-tag", vis, W, f, move |_, ci| {
            npm("PUT", format!("-/package/{t}-lib/dist-tags/add{ci}")).json(&json!("1.0.0"))
        });
        self.add("npm DELETE dist-tag", vis, W, f, move |_, ci| {
            npm("DELETE", format!("-/package/{t}-lib/dist-tags/rm{ci}"))
        });
        self.add("npm DELETE package", vis, W, f, move |_, ci| {
            npm("DELETE", format!("del{ci}"))
        });
    }

    fn pypi(&mut self, vis: Vis) {
        use Rule::{FeedRead as R, FeedWrite as W};
        let f = feed_index(FeedType::Pypi, vis);
        let FeedDef { name: n, tag: t, .. } = FEEDS[f];
        let file = move || {
            format!(
                "/pypi/{n}/files/{t}-proj/{}",
                wheel_name(&format!("{t}-proj"), "1.0")
            )
        };
        self.add("pypi GET simple index", vis, R, f, move |_, _| {
            Req::get(format!("/pypi/{n}/simple/"))
        });
        self.add("pypi GET simple index (redirect)", vis, R, f, move |_, _| {
            Req::get(format!("/pypi/{n}/simple"))
        });
        self.add("pypi GET project page", vis, R, f, move |_, _| {
            Req::get(format!("/pypi/{n}/simple/{t}-proj/"))
        });
        self.add("pypi GET project page (JSON)", vis, R, f, move |_, _| {
            Req::get(format!("/pypi/{n}/simple/{t}-proj/"))
                .header("accept", "application/vnd.pypi.simple.v1+json")
        });
        self.add("pypi GET project page (redirect)", vis, R, f, move |_, _| {
            Req::get(format!("/pypi/{n}/simple/{}_Proj", t.to_uppercase()))
        });
        self.add("pypi GET file", vis, R, f, move |_, _| Req::get(file()));
        self.add("pypi HEAD file", vis, R, f, move |_, _| Req::new("HEAD", file()));
        self.add("pypi GET core metadata", vis, R, f, move |_, _| {
            Req::get(format!("{}.metadata", file()))
        });
        self.add("pypi POST upload", vis, W, f, move |_, ci| {
            pypi_upload(n, &format!("new{ci}"), "1.0", "fresh")
        });
        self.add("pypi POST yank", vis, W, f, move |_, ci| {
            Req::new("POST", format!("/pypi/{n}/yank/yk{ci}/1.0"))
        });
        self.add("pypi POST unyank", vis, W, f, move |_, ci| {
            Req::new("POST", format!("/pypi/{n}/unyank/uy{ci}/1.0"))
        });
        self.add("pypi DELETE file", vis, W, f, move |_, ci| {
            let p = format!("del{ci}");
            Req::new("DELETE", format!("/pypi/{n}/files/{p}/{}", wheel_name(&p, "1.0")))
        });
        self.add("pypi DELETE version", vis, W, f, move |_, ci| {
            Req::new("DELETE", format!("/pypi/{n}/project/dv{ci}/1.0"))
        });
    }

    fn cargo(&mut self, vis: Vis) {
        use Rule::{FeedRead as R, FeedWrite as W};
        let f = feed_index(FeedType::Cargo, vis);
        let FeedDef { name: n, tag: t, .. } = FEEDS[f];
        let cargo =
            move |method, path: String| Req::new(method, format!("/cargo/{n}/{path}")).header(HOST.0, HOST.1);
        self.add("cargo GET config.json", vis, R, f, move |_, _| {
            cargo("GET", "config.json".into())
        });
        self.add("cargo GET index file", vis, R, f, move |_, _| {
            cargo("GET", format!("{t}/-c/{t}-crate"))
        });
        self.add("cargo GET download", vis, R, f, move |_, _| {
            cargo("GET", format!("api/v1/crates/{t}-crate/1.0.0/download"))
        });
        self.add("cargo HEAD download", vis, R, f, move |_, _| {
            cargo("HEAD", format!("api/v1/crates/{t}-crate/1.0.0/download"))
        });
        self.add("cargo GET search", vis, R, f, move |_, _| {
            cargo("GET", format!("api/v1/crates?q={t}&per_page=10"))
        });
        self.add("cargo GET owners", vis, R, f, move |_, _| {
            cargo("GET", format!("api/v1/crates/{t}-crate/owners"))
        });
        self.add("cargo PUT publish", vis, W, f, move |_, ci| {
            cargo_publish(n, &format!("new{ci}"), "fresh")
        });
        self.add("cargo DELETE yank", vis, W, f, move |_, ci| {
            cargo("DELETE", format!("api/v1/crates/yk{ci}/1.0.0/yank"))
        });
        self.add("cargo PUT unyank", vis, W, f, move |_, ci| {
            cargo("PUT", format!("api/v1/crates/uy{ci}/1.0.0/unyank"))
        });
        self.add("cargo DELETE version", vis, W, f, move |_, ci| {
            cargo("DELETE", format!("api/v1/crates/del{ci}/1.0.0"))
        });
    }

    fn nuget(&mut self, vis: Vis) {
        use Rule::{FeedRead as R, FeedWrite as W};
        let f = feed_index(FeedType::Nuget, vis);
        let FeedDef { name: n, tag: t, .. } = FEEDS[f];
        let at =
            move |method, path: String| Req::new(method, format!("/nuget/{n}/{path}")).header(HOST.0, HOST.1);
        let with_key = |mut r: Req| {
            r.nuget_key = true;
            r
        };
        let reads: [(&'static str, &'static str, String); 23] = [
            ("nuget GET v3 service index", "GET", "v3/index.json".into()),
            (
                "nuget GET v3 versions",
                "GET",
                format!("v3/flatcontainer/{t}-pkg/index.json"),
            ),
            (
                "nuget GET v3 .nupkg",
                "GET",
                format!("v3/flatcontainer/{t}-pkg/1.0.0/{t}-pkg.1.0.0.nupkg"),
            ),
            (
                "nuget HEAD v3 .nupkg",
                "HEAD",
                format!("v3/flatcontainer/{t}-pkg/1.0.0/{t}-pkg.1.0.0.nupkg"),
            ),
            (
                "nuget GET v3 .nuspec",
                "GET",
                format!("v3/flatcontainer/{t}-pkg/1.0.0/{t}-pkg.nuspec"),
            ),
            (
                "nuget GET v3 registration index",
                "GET",
                format!("v3/registration/{t}-pkg/index.json"),
            ),
            (
                "nuget GET v3 registration leaf",
                "GET",
                format!("v3/registration/{t}-pkg/1.0.0.json"),
            ),
            (
                "nuget GET v3 registration (SemVer 2)",
                "GET",
                format!("v3/registration-semver2/{t}-pkg/index.json"),
            ),
            (
                "nuget GET v3 search",
                "GET",
                format!("v3/search?q={t}&semVerLevel=2.0.0"),
            ),
            (
                "nuget GET v3 autocomplete",
                "GET",
                format!("v3/autocomplete?q={t}"),
            ),
            (
                "nuget GET v3 autocomplete versions",
                "GET",
                format!("v3/autocomplete?id={t}-pkg"),
            ),
            ("nuget GET v2 service document", "GET", String::new()),
            ("nuget GET v2 $metadata", "GET", "$metadata".into()),
            (
                "nuget GET v2 Packages()",
                "GET",
                "Packages()?$filter=IsLatestVersion&$top=30".into(),
            ),
            (
                "nuget GET v2 Packages()/$count",
                "GET",
                "Packages()/$count".into(),
            ),
            (
                "nuget GET v2 Packages(Id,Version)",
                "GET",
                format!("Packages(Id='{t}-pkg',Version='1.0.0')"),
            ),
            (
                "nuget GET v2 FindPackagesById()",
                "GET",
                format!("FindPackagesById()?id='{t}-pkg'"),
            ),
            (
                "nuget GET v2 Search()",
                "GET",
                format!("Search()?searchTerm='{t}'&targetFramework=''&includePrerelease=false"),
            ),
            (
                "nuget GET v2 GetUpdates()",
                "GET",
                format!(
                    "GetUpdates()?packageIds='{t}-pkg'&versions='0.9'&includePrerelease=false&includeAllVersions=false"
                ),
            ),
            (
                "nuget GET v2 download",
                "GET",
                format!("api/v2/package/{t}-pkg/1.0.0"),
            ),
            (
                "nuget HEAD v2 download",
                "HEAD",
                format!("api/v2/package/{t}-pkg/1.0.0"),
            ),
            (
                "nuget GET v2 download (package/)",
                "GET",
                format!("package/{t}-pkg/1.0.0"),
            ),
            (
                "nuget GET v2 $value",
                "GET",
                format!("Packages(Id='{t}-pkg',Version='1.0.0')/$value"),
            ),
        ];
        for (name, method, path) in reads {
            self.add(name, vis, R, f, move |_, _| at(method, path.clone()));
        }
        self.add("nuget PUT push (v3)", vis, W, f, move |_, ci| {
            nuget_push(n, "v3/package", &format!("new{ci}"), "fresh")
        });
        self.add("nuget PUT push (v2) (X-NuGet-ApiKey)", vis, W, f, move |_, ci| {
            with_key(nuget_push(n, "api/v2/package", &format!("newk{ci}"), "fresh"))
        });
        self.add("nuget PUT push (v2 root)", vis, W, f, move |_, ci| {
            nuget_push(n, "", &format!("newr{ci}"), "fresh")
        });
        self.add("nuget DELETE unlist (v3)", vis, W, f, move |_, ci| {
            at("DELETE", format!("v3/package/ul{ci}/1.0.0"))
        });
        self.add(
            "nuget DELETE unlist (v2) (X-NuGet-ApiKey)",
            vis,
            W,
            f,
            move |_, ci| with_key(at("DELETE", format!("api/v2/package/ulb{ci}/1.0.0"))),
        );
        self.add("nuget DELETE unlist (v2 root)", vis, W, f, move |_, ci| {
            at("DELETE", format!("ulr{ci}/1.0.0"))
        });
        self.add("nuget POST relist (v3)", vis, W, f, move |_, ci| {
            at("POST", format!("v3/package/rl{ci}/1.0.0"))
        });
        self.add(
            "nuget POST relist (v2) (X-NuGet-ApiKey)",
            vis,
            W,
            f,
            move |_, ci| with_key(at("POST", format!("api/v2/package/rlb{ci}/1.0.0"))),
        );
        self.add(HARD_DELETE, vis, W, f, move |_, ci| {
            at("DELETE", format!("v3/package/hd{ci}/1.0.0?hard=true"))
        });
        self.add(HARD_DELETE_KEY, vis, W, f, move |_, ci| {
            with_key(at("DELETE", format!("api/v2/package/hdk{ci}/1.0.0?hard=true")))
        });
    }

    fn debian(&mut self, vis: Vis) {
        use Rule::{FeedRead as R, FeedWrite as W};
        let f = feed_index(FeedType::Debian, vis);
        let FeedDef { name: n, tag: t, .. } = FEEDS[f];
        let dist = move |path: &str| format!("/debian/{n}/dists/bookworm/{path}");
        for file in [
            "InRelease",
            "Release",
            "Release.gpg",
            "main/binary-amd64/Packages",
            "main/binary-amd64/Packages.gz",
            "main/binary-amd64/Packages.xz",
        ] {
            self.add(
                match file {
                    "InRelease" => "debian GET InRelease",
                    "Release" => "debian GET Release",
                    "Release.gpg" => "debian GET Release.gpg",
                    "main/binary-amd64/Packages" => "debian GET Packages",
                    "main/binary-amd64/Packages.gz" => "debian GET Packages.gz",
                    _ => "debian GET Packages.xz",
                },
                vis,
                R,
                f,
                move |_, _| Req::get(dist(file)),
            );
        }
        // By hash: the Packages of the generation served when asked.
        self.add("debian GET by-hash", vis, R, f, move |_, _| {
            Req::get(dist(&format!(
                "main/binary-all/by-hash/SHA256/{}",
                hex_sha256(b"")
            )))
        });
        let pool = move |method| {
            Req::new(
                method,
                format!("/debian/{n}/pool/main/{}/{t}-pkg/{t}-pkg_1.0_amd64.deb", &t[..1]),
            )
        };
        self.add("debian GET pool file", vis, R, f, move |_, _| pool("GET"));
        self.add("debian HEAD pool file", vis, R, f, move |_, _| pool("HEAD"));
        self.add("debian GET key.asc", vis, R, f, move |_, _| {
            Req::get(format!("/debian/{n}/key.asc"))
        });
        self.add("debian GET key.gpg", vis, R, f, move |_, _| {
            Req::get(format!("/debian/{n}/key.gpg"))
        });
        self.add("debian PUT upload", vis, W, f, move |_, ci| {
            Req::new("PUT", format!("/debian/{n}/upload/bookworm/main"))
                .body(debian_deb(&format!("new{ci}"), "fresh"))
        });
        self.add("debian POST bulk upload", vis, W, f, move |_, ci| {
            debian_bulk(n, &format!("bulk{ci}"))
        });
        self.add("debian DELETE package", vis, W, f, move |_, ci| {
            Req::new(
                "DELETE",
                format!("/debian/{n}/package/bookworm/main/del{ci}/1.0/amd64"),
            )
        });
    }

    fn rpm(&mut self, vis: Vis) {
        use Rule::{FeedRead as R, FeedWrite as W};
        let f = feed_index(FeedType::Rpm, vis);
        let FeedDef { name: n, tag: t, .. } = FEEDS[f];
        self.add("rpm GET repomd.xml", vis, R, f, move |_, _| {
            Req::get(format!("/rpm/{n}/repodata/repomd.xml"))
        });
        self.add("rpm GET repomd.xml.asc", vis, R, f, move |_, _| {
            Req::get(format!("/rpm/{n}/repodata/repomd.xml.asc"))
        });
        // A repodata file by hash, of the rendering after seeding (older
        // renderings' files stay served).
        self.add("rpm GET repodata file", vis, R, f, move |fx, _| {
            Req::get(format!("/rpm/{n}/repodata/{}", fx.rpm_primary[&f]))
        });
        let pkg = move |method| {
            Req::new(
                method,
                format!("/rpm/{n}/packages/{t}-pkg/0/{t}-pkg-1.0-1.noarch.rpm"),
            )
        };
        self.add("rpm GET package", vis, R, f, move |_, _| pkg("GET"));
        self.add("rpm HEAD package", vis, R, f, move |_, _| pkg("HEAD"));
        self.add("rpm GET key.asc", vis, R, f, move |_, _| {
            Req::get(format!("/rpm/{n}/key.asc"))
        });
        self.add("rpm GET config.repo", vis, R, f, move |_, _| {
            Req::get(format!("/rpm/{n}/config.repo")).header(HOST.0, HOST.1)
        });
        self.add("rpm PUT upload", vis, W, f, move |_, ci| {
            Req::new("PUT", format!("/rpm/{n}/upload")).body(rpm_file(&format!("new{ci}"), "fresh"))
        });
        self.add("rpm POST bulk upload", vis, W, f, move |_, ci| {
            rpm_bulk(n, &format!("bulk{ci}"))
        });
        self.add("rpm DELETE package", vis, W, f, move |_, ci| {
            Req::new("DELETE", format!("/rpm/{n}/package/del{ci}/1.0-1/noarch"))
        });
    }

    fn oci(&mut self, vis: Vis) {
        use Rule::{FeedRead as R, FeedWrite as W};
        let f = feed_index(FeedType::Oci, vis);
        let o = other_feed(FeedType::Oci, vis);
        let FeedDef { name: n, tag: t, .. } = FEEDS[f];
        let ot = FEEDS[o].tag;
        let at = move |path: &str| format!("/v2/{n}/{t}-app/{path}");
        self.add("oci GET manifest (tag)", vis, R, f, move |_, _| {
            Req::get(at("manifests/v1"))
        });
        self.add("oci HEAD manifest (tag)", vis, R, f, move |_, _| {
            Req::new("HEAD", at("manifests/v1"))
        });
        self.add("oci GET manifest (digest)", vis, R, f, move |fx, _| {
            Req::get(at(&format!("manifests/{}", fx.oci[&f].manifest_digest)))
        });
        self.add("oci GET tags list", vis, R, f, move |_, _| {
            Req::get(at("tags/list"))
        });
        self.add("oci GET blob", vis, R, f, move |fx, _| {
            Req::get(at(&format!("blobs/{}", fx.oci[&f].layer_digest)))
        });
        self.add("oci HEAD blob", vis, R, f, move |fx, _| {
            Req::new("HEAD", at(&format!("blobs/{}", fx.oci[&f].layer_digest)))
        });
        self.add("oci GET referrers", vis, R, f, move |fx, _| {
            Req::get(at(&format!("referrers/{}", fx.oci[&f].manifest_digest)))
        });
        // A GET, but of an upload session: it asks for write itself.
        self.add("oci GET upload status", vis, W, f, move |fx, ci| {
            Req::get(at(&format!("blobs/uploads/{}", fx.oci[&f].sessions[ci][0])))
        });
        self.add("oci POST upload session", vis, W, f, move |_, _| {
            Req::new("POST", at("blobs/uploads/"))
        });
        self.add("oci POST monolithic upload", vis, W, f, move |_, ci| {
            let blob = format!("monolithic {ci} {t}");
            let path = at(&format!("blobs/uploads/?digest={}", digest(blob.as_bytes())));
            Req::new("POST", path).body(blob)
        });
        self.add(MOUNT, vis, W, f, move |fx, ci| {
            let d = &fx.oci[&o].layer_digest;
            let from = format!("{}/{ot}-app", FEEDS[o].name);
            Req::new(
                "POST",
                format!("/v2/{n}/mnt{ci}/blobs/uploads/?mount={d}&from={from}"),
            )
        });
        self.add("oci PATCH upload chunk", vis, W, f, move |fx, ci| {
            let path = at(&format!("blobs/uploads/{}", fx.oci[&f].sessions[ci][1]));
            Req::new("PATCH", path).body("chunk")
        });
        self.add("oci PUT upload close", vis, W, f, move |fx, ci| {
            let blob = format!("closed {ci} {t}");
            let id = &fx.oci[&f].sessions[ci][2];
            let path = at(&format!("blobs/uploads/{id}?digest={}", digest(blob.as_bytes())));
            Req::new("PUT", path).body(blob)
        });
        self.add("oci DELETE upload session", vis, W, f, move |fx, ci| {
            Req::new(
                "DELETE",
                at(&format!("blobs/uploads/{}", fx.oci[&f].sessions[ci][3])),
            )
        });
        self.add("oci PUT manifest", vis, W, f, move |fx, ci| {
            Req::new("PUT", at(&format!("manifests/put{ci}")))
                .header("content-type", MANIFEST)
                .body(fx.oci[&f].manifest.clone())
        });
        self.add("oci DELETE manifest (tag)", vis, W, f, move |_, ci| {
            Req::new("DELETE", at(&format!("manifests/del{ci}")))
        });
        self.add("oci DELETE blob", vis, W, f, move |fx, ci| {
            Req::new(
                "DELETE",
                format!("/v2/{n}/lnk{ci}/blobs/{}", fx.oci[&f].layer_digest),
            )
        });

        // Reaching the other feed's content through this feed's URL.
        let unknown = Rule::Foreign {
            write: false,
            then: N,
        };
        self.add("oci GET another feed's blob", vis, unknown, f, move |fx, _| {
            Req::get(at(&format!("blobs/{}", fx.oci[&o].layer_digest)))
        });
        self.add(
            "oci GET another feed's manifest",
            vis,
            unknown,
            f,
            move |fx, _| Req::get(at(&format!("manifests/{}", fx.oci[&o].manifest_digest))),
        );
        let blob_unknown = Rule::Foreign {
            write: true,
            then: Exp::Status(400),
        };
        self.add(
            "oci PUT manifest of another feed's blobs",
            vis,
            blob_unknown,
            f,
            move |fx, ci| {
                Req::new("PUT", format!("/v2/{n}/ref{ci}/manifests/v1"))
                    .header("content-type", MANIFEST)
                    .body(fx.oci[&o].manifest.clone())
            },
        );
        let session_unknown = Rule::Foreign { write: true, then: N };
        self.add(
            "oci PATCH another feed's upload session",
            vis,
            session_unknown,
            f,
            move |fx, ci| {
                let id = &fx.oci[&o].sessions[ci][4];
                Req::new("PATCH", format!("/v2/{n}/{ot}-app/blobs/uploads/{id}")).body("chunk")
            },
        );
    }

    /// The management routes that name a feed.
    fn management_of_feeds(&mut self, vis: Vis) {
        let a = feed_index(FeedType::Assets, vis);
        let o = feed_index(FeedType::Oci, vis);
        let side = if vis == Vis::Public { "pub" } else { "priv" };
        let n = FEEDS[a].name;
        self.add("mgmt GET feed", vis, Rule::Admin, a, move |_, _| {
            Req::get(format!("/api/v1/feeds/{n}"))
        });
        self.add("mgmt DELETE feed", vis, Rule::Admin, a, move |_, ci| {
            Req::new("DELETE", format!("/api/v1/feeds/drop-{side}-{ci}"))
        });
        self.add("mgmt GET bundle", vis, Rule::Admin, a, move |_, _| {
            Req::get(format!("/api/v1/feeds/{n}/bundle?since=0"))
        });
        let n = FEEDS[o].name;
        self.add(
            "mgmt POST oci prune-untagged",
            vis,
            Rule::Admin,
            o,
            move |_, _| Req::new("POST", format!("/api/v1/feeds/{n}/oci/prune-untagged")),
        );
    }

    /// The replication API's routes about one assets feed (`vis` public or
    /// private: a feed of every replication; outside: of none).
    fn replication_of_feed(&mut self, vis: Vis) {
        let f = feed_index(FeedType::Assets, vis);
        let FeedDef { name: n, tag: t, .. } = FEEDS[f];
        let (read, meta, apply, blob) = if vis == Vis::Outside {
            let out = Rule::ReplOutside;
            (out, out, out, Rule::ReplBlobOutside)
        } else {
            (Rule::ReplRead, Rule::ReplMeta, Rule::ReplApply, Rule::ReplBlob)
        };
        let at = move |path: &str| format!("/api/replication/v1/feeds/{n}/{path}");
        let keys = move || json!({ "keys": [format!("{t}-file.txt")] });
        if vis != Vis::Outside {
            self.add("repl POST handshake", vis, Rule::Handshake, f, move |_, ci| {
                Req::new("POST", "/api/replication/v1/handshake").json(&handshake(CREDS[ci], f))
            });
        }
        self.add("repl GET changes", vis, read, f, move |_, _| {
            Req::get(at("changes?since=0"))
        });
        self.add("repl GET entries", vis, read, f, move |_, _| {
            Req::get(at("entries?limit=100"))
        });
        self.add("repl POST entries (lookup)", vis, read, f, move |_, _| {
            Req::new("POST", at("entries")).json(&keys())
        });
        self.add("repl GET digest", vis, meta, f, move |_, _| {
            Req::get(at("digest"))
        });
        self.add("repl POST stamps", vis, meta, f, move |_, _| {
            Req::new("POST", at("stamps")).json(&keys())
        });
        self.add("repl POST apply", vis, apply, f, move |_, _| {
            Req::new("POST", at("apply")).json(&json!({ "entries": [] }))
        });
        self.add("repl GET blob", vis, blob, f, move |fx, _| {
            Req::get(format!("/api/replication/v1/blobs/{}", fx.asset_digest[&f]))
        });
    }

    fn instance(&mut self) {
        use Rule::Admin as A;
        let vis = Vis::Instance;
        // The "… for the feed" keys, on routes about no feed.
        let scope = feed_index(FeedType::Assets, Vis::Private);
        let mut add = |name, rule, make: fn(&Fx, usize) -> Req| self.add(name, vis, rule, scope, make);
        add("ops GET /health", Rule::Open, |_, _| Req::get("/health"));
        add("ops GET /ready", Rule::Open, |_, _| Req::get("/ready"));
        add("ops GET /metrics", Rule::Metrics, |_, _| Req::get("/metrics"));
        add("oci GET /v2/", Rule::OciBase, |_, _| Req::get("/v2/"));
        add("oci GET /v2/_catalog", Rule::Catalog, |_, _| {
            Req::get("/v2/_catalog")
        });
        add("mgmt GET openapi.json", Rule::Open, |_, _| {
            Req::get("/api/v1/openapi.json")
        });
        add("mgmt GET instance", A, |_, _| Req::get("/api/v1/instance"));
        add("mgmt POST instance new-id", A, |_, _| {
            Req::new("POST", "/api/v1/instance/new-id")
        });
        add("mgmt GET feeds", A, |_, _| Req::get("/api/v1/feeds"));
        add("mgmt POST feed", A, |_, ci| {
            let body = json!({ "name": format!("made-{ci}"), "type": "assets" });
            Req::new("POST", "/api/v1/feeds").json(&body)
        });
        add("mgmt GET keys", A, |_, _| Req::get("/api/v1/keys"));
        add("mgmt POST key", A, |_, ci| {
            let body = json!({ "name": format!("made-key-{ci}"), "permission": "read" });
            Req::new("POST", "/api/v1/keys").json(&body)
        });
        add("mgmt DELETE key", A, |_, ci| {
            Req::new("DELETE", format!("/api/v1/keys/doomed-{ci}"))
        });
        add("mgmt GET replications", A, |_, _| {
            Req::get("/api/v1/replications")
        });
        add("mgmt POST replication", A, |_, ci| {
            let body = json!({ "name": format!("made-r{ci}"), "feeds": [FEEDS[SIDE].name], "mode": "push" });
            Req::new("POST", "/api/v1/replications").json(&body)
        });
        add("mgmt GET replication", A, |_, _| {
            Req::get("/api/v1/replications/in-push")
        });
        add("mgmt DELETE replication", A, |_, ci| {
            Req::new("DELETE", format!("/api/v1/replications/gone-r{ci}"))
        });
        add("mgmt GET replication tokens", A, |_, _| {
            Req::get("/api/v1/replications/in-push/tokens")
        });
        add("mgmt POST replication token", A, |_, _| {
            Req::new("POST", "/api/v1/replications/tok-host/tokens")
        });
        add("mgmt DELETE replication token", A, |fx, ci| {
            let token = &fx.revocable[ci];
            Req::new("DELETE", format!("/api/v1/replications/tok-host/tokens/{token}"))
        });
        add("mgmt GET replication executions", A, |_, _| {
            Req::get("/api/v1/replications/in-push/executions")
        });
        add("mgmt GET replication log", A, |_, _| {
            Req::get("/api/v1/logs/replication")
        });
        add("mgmt PUT replication log level", A, |_, _| {
            Req::new("PUT", "/api/v1/logs/replication/level").json(&json!({ "level": "info" }))
        });
        add("mgmt POST gc", A, |_, _| Req::new("POST", "/api/v1/gc"));
        add("mgmt POST fsck", A, |_, _| Req::new("POST", "/api/v1/fsck"));
        add("repl POST blobs/missing", Rule::ReplContent, |fx, _| {
            let d = &fx.asset_digest[&feed_index(FeedType::Assets, Vis::Public)];
            Req::new("POST", "/api/replication/v1/blobs/missing").json(&json!({ "digests": [d] }))
        });
        add("repl PUT blob", Rule::ReplContent, |_, ci| {
            let blob = format!("pushed by peer {ci}");
            let path = format!("/api/replication/v1/blobs/{}", digest(blob.as_bytes()));
            Req::new("PUT", path).body(blob)
        });
    }
}

fn routes() -> Vec<Route> {
    let mut r = Routes(Vec::new());
    for vis in [Vis::Public, Vis::Private] {
        r.assets(vis);
        r.npm(vis);
        r.pypi(vis);
        r.oci(vis);
        r.cargo(vis);
        r.nuget(vis);
        r.debian(vis);
        r.rpm(vis);
        r.management_of_feeds(vis);
        r.replication_of_feed(vis);
    }
    r.replication_of_feed(Vis::Outside);
    r.instance();
    r.0
}

// ---------------------------------------------------------------------------
// What a caller may learn

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Owner {
    Feed(usize),
    Key,
    Replication,
}

/// A string an answer may carry only to some callers.
struct Secret {
    text: String,
    owner: Owner,
    /// A name: echoing it is no leak when the request carried it.
    name: bool,
}

fn secrets() -> Vec<Secret> {
    let mut out = Vec::new();
    let mut add = |text: String, owner, name| out.push(Secret { text, owner, name });
    for (f, def) in FEEDS.iter().enumerate() {
        let t = def.tag;
        let owner = Owner::Feed(f);
        add(def.name.to_string(), owner, true);
        add(marker(t), owner, false);
        add(marker(t).replace('-', "_"), owner, false);
        match def.ty {
            FeedType::Assets => add(format!("{t}-file.txt"), owner, true),
            FeedType::Npm => add(format!("{t}-lib"), owner, true),
            FeedType::Pypi => {
                add(format!("{t}-proj"), owner, true);
                add(format!("{t}_proj"), owner, true);
            }
            FeedType::Oci => add(format!("{t}-app"), owner, true),
            FeedType::Cargo => {
                add(format!("{t}-crate"), owner, true);
                add(format!("{t}_crate"), owner, true);
            }
            FeedType::Nuget => add(format!("{t}-pkg"), owner, true),
            FeedType::Debian => add(format!("{t}-pkg"), owner, true),
            FeedType::Rpm => add(format!("{t}-pkg"), owner, true),
        }
        for cred in [Cred::ReadScoped, Cred::WriteScoped, Cred::AdminScoped] {
            add(key_name(cred, f).unwrap(), Owner::Key, true);
        }
    }
    for name in ["k-read-all", "k-write-elsewhere", "k-revoked"] {
        add(name.into(), Owner::Key, true);
    }
    for cred in CREDS {
        if let Some(name) = replication_of(cred) {
            add(name.into(), Owner::Replication, true);
        }
    }
    out
}

/// May `cred`, asking `route`, read feed `f`'s content?
fn may_read(route: &Route, cred: Cred, f: usize) -> bool {
    if !FEEDS[f].private {
        return true;
    }
    if route.rule.is_replication() {
        return matches!(cred, Cred::SyncPush | Cred::SyncPull | Cred::SyncMirror) && REPLICATED.contains(&f);
    }
    match cred {
        Cred::ReadAll | Cred::Admin => true,
        Cred::ReadScoped | Cred::WriteScoped | Cred::AdminScoped => f == route.scope,
        _ => false,
    }
}

/// May `cred` learn `secret` from an answer to `route`? From a refusal,
/// only the name of its own key or replication.
fn may_learn(route: &Route, cred: Cred, secret: &Secret, refused: bool) -> bool {
    let text = Some(secret.text.as_str());
    match secret.owner {
        Owner::Key => key_name(cred, route.scope).as_deref() == text || (!refused && cred == Cred::Admin),
        Owner::Replication => {
            (cred != Cred::SyncRevoked && replication_of(cred) == text)
                // Metrics name replications; a read key may read them.
                || (!refused && matches!(cred, Cred::Admin | Cred::ReadAll))
        }
        Owner::Feed(f) => !refused && may_read(route, cred, f),
    }
}

/// What the answer carries that its caller may not learn.
fn leaks(route: &Route, cred: Cred, req: &Req, r: &Reply, secrets: &[Secret]) -> Vec<String> {
    let refused = matches!(r.status.as_u16(), 401 | 403 | 404);
    let mut text = r.text();
    for (name, value) in &r.headers {
        text.push_str(&format!(
            "\n{name}: {}",
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    // What the caller may learn, or sent itself.
    let allowed = |s: &Secret| may_learn(route, cred, s, refused) || (s.name && req.carries(&s.text));
    let mut out: Vec<String> = secrets
        .iter()
        .filter(|s| !allowed(s) && text.contains(&s.text))
        .map(|s| format!("{:?} ({:?})", s.text, s.owner))
        .collect();
    if refused && text.contains(" feed, not ") {
        out.push("a feed's type".into());
    }
    out
}

// ---------------------------------------------------------------------------
// The matrix

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_route_answers_every_credential_as_the_rules_say() {
    let started = Instant::now();
    let fx = Fx::new().await;
    let setup = started.elapsed();
    let routes = routes();
    let secrets = secrets();
    for cred in CREDS {
        assert_eq!(
            TABLE.iter().filter(|(c, _)| *c == cred).count(),
            1,
            "{cred}: once in the table"
        );
    }
    for (name, ..) in OVERRIDES {
        assert!(
            routes.iter().any(|r| r.name == *name),
            "an override of no route: {name}"
        );
    }
    let cells: Vec<(usize, usize)> = (0..routes.len())
        .flat_map(|r| (0..CREDS.len()).map(move |ci| (r, ci)))
        .collect();
    let mut answers: Vec<(usize, usize, Req, Reply)> = futures::stream::iter(cells)
        .map(|(ri, ci)| {
            let (fx, route) = (&fx, &routes[ri]);
            async move {
                let req = (route.make)(fx, ci);
                let reply = req
                    .send(&fx.i, fx.secret(CREDS[ci], route.scope).as_deref())
                    .await;
                (ri, ci, req, reply)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    answers.sort_by_key(|(ri, ci, ..)| (*ri, *ci));

    let mut failures = Vec::new();
    for (ri, ci, req, r) in &answers {
        let (route, cred) = (&routes[*ri], CREDS[*ci]);
        let want = expected(route, cred);
        let what = format!(
            "{} [{}] ({} {}) with {cred}",
            route.name, route.vis, req.method, req.path
        );
        if !want.admits(r.status) {
            let mut body = r.text();
            body.truncate(200);
            failures.push(format!(
                "{what}: want {want}, got {}: {}",
                r.status,
                body.trim_end()
            ));
        }
        if r.status == StatusCode::UNAUTHORIZED && r.header("www-authenticate").is_none() {
            failures.push(format!("{what}: 401 without WWW-Authenticate"));
        }
        let leaked = leaks(route, cred, req, r, &secrets);
        if !leaked.is_empty() {
            failures.push(format!(
                "{what}: the answer ({}) carries {}",
                r.status,
                leaked.join(", ")
            ));
        }
    }
    let about_feeds = routes
        .iter()
        .filter(|r| matches!(r.vis, Vis::Public | Vis::Private))
        .count();
    eprintln!(
        "{} routes ({about_feeds} about a public or a private feed) × {} credentials = {} cells; setup {setup:?}, total {:?}",
        routes.len(),
        CREDS.len(),
        answers.len(),
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} of {} cells deviate:\n{}",
        failures.len(),
        answers.len(),
        failures.join("\n")
    );
}
