//! The management API, `/api/v1`: feeds, API keys, garbage collection,
//! blob integrity checks (`fsck`).
//! Everything here needs an instance admin key.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use ferry_core::CoreError;
use ferry_store::Permission;
use ferry_types::{FeedName, FeedType};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::access::Admin;
use crate::error::ApiError;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/instance", get(instance))
        .route("/api/v1/instance/new-id", post(new_instance_id))
        .route("/api/v1/feeds", get(list_feeds).post(create_feed))
        .route("/api/v1/feeds/{name}", get(get_feed).delete(delete_feed))
        .route(
            "/api/v1/feeds/{name}/signing-key",
            get(get_signing_key).put(import_signing_key),
        )
        .route("/api/v1/keys", get(list_keys).post(create_key))
        .route("/api/v1/keys/{name}", axum::routing::delete(delete_key))
        .route("/api/v1/gc", post(gc))
        .route("/api/v1/fsck", post(fsck))
        // JSON bodies are read whole, so they are capped at 1 MiB: management bodies are small JSON documents.
        .layer(crate::edge::BodyCap { limit: 1 << 20 })
}

type JsonResult = Result<Json<Value>, ApiError>;

fn parse_name(name: &str) -> Result<FeedName, ApiError> {
    FeedName::new(name).map_err(|e| ApiError::json(CoreError::from(e)))
}

/// The running instance id, and `next_instance_id` when the stored one
/// differs (renewed since the start: taken at the next start).
async fn instance(State(st): State<AppState>, _: Admin) -> JsonResult {
    let stored = st
        .ferry
        .metadata()
        .instance_id()
        .await
        .map_err(|e| ApiError::json(CoreError::from(e)))?;
    Ok(Json(instance_view(&st, stored)))
}

fn instance_view(st: &AppState, stored: ferry_types::InstanceId) -> Value {
    let running = st.ferry.instance_id();
    let mut v = json!({ "instance_id": running, "version": env!("CARGO_PKG_VERSION") });
    if stored != running {
        v["next_instance_id"] = json!(stored);
    }
    v
}

/// `POST /api/v1/instance/new-id`: stores a new random instance id, taken
/// at the next start ([`ferry_store::MetadataStore::renew_instance_id`]).
/// Answers as `GET /api/v1/instance`, with `next_instance_id`.
async fn new_instance_id(State(st): State<AppState>, _: Admin) -> JsonResult {
    let id = st
        .ferry
        .metadata()
        .renew_instance_id()
        .await
        .map_err(|e| ApiError::json(CoreError::from(e)))?;
    tracing::warn!(instance = %st.ferry.instance_id(), next = %id, "instance id renewed: the next start takes the new one");
    Ok(Json(instance_view(&st, id)))
}

async fn list_feeds(State(st): State<AppState>, _: Admin) -> JsonResult {
    let feeds = st.ferry.feeds().await.map_err(ApiError::json)?;
    Ok(Json(json!(feeds)))
}

#[derive(Deserialize)]
struct NewFeed {
    name: String,
    #[serde(rename = "type")]
    feed_type: String,
    #[serde(default)]
    private: bool,
}

async fn create_feed(
    State(st): State<AppState>,
    _: Admin,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req: NewFeed = crate::error::object_body(body).map_err(ApiError::json)?;
    let feed = new_feed(&st.ferry, &req.name, &req.feed_type, req.private)
        .await
        .map_err(ApiError::json)?;
    Ok((StatusCode::CREATED, Json(json!(feed))))
}

/// Creates a feed from the names a client sent (the API and the web UI).
pub(crate) async fn new_feed(
    ferry: &ferry_core::Ferry,
    name: &str,
    feed_type: &str,
    private: bool,
) -> Result<ferry_store::FeedRecord, CoreError> {
    let name = FeedName::new(name).map_err(CoreError::from)?;
    let ty: FeedType = feed_type.parse().map_err(CoreError::from)?;
    ferry.create_feed(&name, ty, private).await
}

async fn get_feed(State(st): State<AppState>, _: Admin, Path(name): Path<String>) -> JsonResult {
    let feed = st.ferry.feed(&parse_name(&name)?).await.map_err(ApiError::json)?;
    Ok(Json(json!(feed)))
}

async fn delete_feed(
    State(st): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let name = parse_name(&name)?;
    unreplicated(&st, &name).await.map_err(ApiError::json)?;
    st.ferry.delete_feed(&name).await.map_err(ApiError::json)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Refuses (409) to let feed `name` go while a replication names it: the
/// replication would go on naming a feed that is not there (its
/// executions fail, and `ferry config export` writes a file that no
/// longer applies). A replication's feeds are fixed: the caller deletes
/// the replications first.
pub(crate) async fn unreplicated(st: &AppState, name: &FeedName) -> Result<(), CoreError> {
    let using: Vec<String> = st
        .replicator
        .overview()
        .await
        .map_err(CoreError::from)?
        .into_iter()
        .filter(|o| o.config.feeds.iter().any(|p| &p.local == name))
        .map(|o| o.name)
        .collect();
    if using.is_empty() {
        return Ok(());
    }
    Err(CoreError::Conflict(format!(
        "feed {name} is replicated by {}: delete {} first (ferry replication delete NAME), then the feed",
        using.join(", "),
        if using.len() == 1 {
            "that replication"
        } else {
            "those replications"
        },
    )))
}

/// The feed's public signing key: its fingerprint and armored public key.
async fn get_signing_key(State(st): State<AppState>, _: Admin, Path(name): Path<String>) -> JsonResult {
    let feed = st.ferry.feed(&parse_name(&name)?).await.map_err(ApiError::json)?;
    let key = st.ferry.signing_key(&feed).await.map_err(ApiError::json)?;
    signing_key_json(&key)
}

fn signing_key_json(key: &ferry_core::signing::SigningKey) -> JsonResult {
    Ok(Json(json!({
        "fingerprint": key.fingerprint(),
        "public_key": key.public_armored().map_err(ApiError::json)?,
    })))
}

#[derive(Deserialize)]
struct ImportKey {
    secret_key: String,
}

/// Replaces the feed's signing key by an imported armored secret key;
/// answers with its public part (never the secret).
async fn import_signing_key(
    State(st): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> JsonResult {
    let req: ImportKey = crate::error::object_body(body).map_err(ApiError::json)?;
    let feed = st.ferry.feed(&parse_name(&name)?).await.map_err(ApiError::json)?;
    let key = st
        .ferry
        .import_signing_key(&feed, req.secret_key)
        .await
        .map_err(ApiError::json)?;
    signing_key_json(&key)
}

async fn list_keys(State(st): State<AppState>, _: Admin) -> JsonResult {
    Ok(Json(json!(st.ferry.keys().await.map_err(ApiError::json)?)))
}

#[derive(Deserialize)]
struct NewKey {
    name: String,
    permission: String,
    feeds: Option<Vec<String>>,
}

async fn create_key(
    State(st): State<AppState>,
    _: Admin,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req: NewKey = crate::error::object_body(body).map_err(ApiError::json)?;
    let (rec, secret) = new_key(&st.ferry, &req.name, &req.permission, req.feeds)
        .await
        .map_err(ApiError::json)?;
    let mut out = json!(rec);
    out["key"] = json!(secret);
    Ok((StatusCode::CREATED, Json(out)))
}

/// Creates an API key from what a client sent (the API and the web UI);
/// returns it and its secret.
pub(crate) async fn new_key(
    ferry: &ferry_core::Ferry,
    name: &str,
    permission: &str,
    feeds: Option<Vec<String>>,
) -> Result<(ferry_store::ApiKeyRecord, String), CoreError> {
    let permission = Permission::parse(permission).ok_or_else(|| {
        CoreError::invalid(format!(
            "permission {permission:?} is not one of read, write, admin"
        ))
    })?;
    let feeds = feeds
        .map(|fs| {
            fs.iter()
                .map(|f| FeedName::new(f).map_err(CoreError::from))
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    ferry.create_key(name, permission, feeds).await
}

async fn delete_key(
    State(st): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    st.ferry.delete_key(&name).await.map_err(ApiError::json)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn gc(State(st): State<AppState>, _: Admin) -> JsonResult {
    let report = st.ferry.collect_garbage().await.map_err(ApiError::json)?;
    Ok(Json(json!(report)))
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct FsckRequest {
    /// Share of stored blobs to re-hash, 0.0 to 1.0 (default 1). Taken as
    /// any JSON value so that `null`, strings and numbers out of range all
    /// get the same reason, not the parser's; an explicit `null` is refused.
    #[serde(deserialize_with = "present")]
    sample: Option<Value>,
    /// Fetch verified copies of damaged blobs from replication peers.
    repair: bool,
}

/// A field that is present, whatever its value (`null` included).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// The reason every bad `sample` gets (a 400).
const SAMPLE_RANGE: &str = "sample must be a number from 0 to 1";

/// `sample` of an fsck request: absent means every blob; anything but a
/// finite number from 0 to 1 is refused.
fn fsck_sample(v: Option<&Value>) -> Result<f64, ApiError> {
    match v {
        None => Ok(1.0),
        Some(v) => v
            .as_f64()
            .filter(|s| s.is_finite() && (0.0..=1.0).contains(s))
            .ok_or_else(|| ApiError::json(CoreError::invalid(SAMPLE_RANGE))),
    }
}

/// Re-hashes stored blobs (all, or a sample), takes corrupt ones out of
/// service, and with `repair` fetches verified copies from peers.
async fn fsck(
    State(st): State<AppState>,
    _: Admin,
    body: Result<Json<FsckRequest>, axum::extract::rejection::JsonRejection>,
) -> JsonResult {
    let req = match body {
        Ok(Json(b)) => b,
        Err(axum::extract::rejection::JsonRejection::MissingJsonContentType(_)) => FsckRequest::default(),
        Err(e) => return Err(ApiError::json(crate::error::json_rejection(&e))),
    };
    let sample = fsck_sample(req.sample.as_ref())?;
    let report = st.ferry.fsck(sample).await.map_err(ApiError::json)?;
    let mut repairs = Vec::new();
    if req.repair {
        // Damage found earlier (by reads) counts too, not only this pass's.
        let mut todo = report.damaged();
        for d in crate::ops::current_damage(&st).await {
            if !todo.contains(&d.digest) {
                todo.push(d.digest);
            }
        }
        repairs = st
            .replicator
            .repair_blobs(&todo)
            .await
            .map_err(|e| ApiError::json(CoreError::from(e)))?;
    }
    // Damage of blobs nothing references any more is not reported.
    let remaining: Vec<Value> = crate::ops::current_damage(&st)
        .await
        .into_iter()
        .map(|d| json!({ "digest": d.digest, "kind": d.kind }))
        .collect();
    Ok(Json(json!({
        "checked": report.checked,
        "bytes": report.bytes,
        "skipped": report.skipped,
        "missing": report.missing,
        "corrupt": report.corrupt,
        "repairs": repairs,
        "damaged": remaining,
    })))
}

async fn openapi() -> Json<Value> {
    Json(crate::openapi::document())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsck_sample_is_a_finite_share() {
        assert_eq!(fsck_sample(None).ok(), Some(1.0));
        for ok in [json!(0), json!(0.25), json!(1)] {
            assert!(fsck_sample(Some(&ok)).is_ok(), "{ok}");
        }
        for bad in [
            json!(null),
            json!(-1),
            json!(2),
            json!("NaN"),
            json!("0.5"),
            json!([]),
        ] {
            assert!(fsck_sample(Some(&bad)).is_err(), "{bad}");
        }
    }
}
