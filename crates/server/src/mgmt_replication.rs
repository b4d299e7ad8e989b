//! Management of replications under `/api/v1/replications` and the
//! diagnostic log under `/api/v1/logs`. Admin key required.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use ferry_core::CoreError;
use ferry_replication::config::{CreateRequest, UpdateRequest};
use ferry_replication::diag::Level;
use ferry_replication::{Overview, ReplError};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::access::Admin;
use crate::error::ApiError;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/replications", get(list).post(create))
        .route(
            "/api/v1/replications/{name}",
            get(show).patch(update).delete(remove),
        )
        .route("/api/v1/replications/{name}/tokens", get(tokens).post(new_token))
        .route("/api/v1/replications/{name}/tokens/{id}", delete(revoke_token))
        .route("/api/v1/replications/{name}/run", post(run))
        .route("/api/v1/replications/{name}/stop", post(stop))
        .route("/api/v1/replications/{name}/executions", get(executions))
        .route("/api/v1/replications/{name}/peers", get(peers))
        .route(
            "/api/v1/replications/{name}/peers/{instance}",
            delete(forget_peer),
        )
        .route("/api/v1/replications/{name}/plan", post(plan))
        .route("/api/v1/replications/{name}/verify", post(verify))
        .route("/api/v1/logs/replication", get(logs))
        .route("/api/v1/logs/replication/level", put(set_level))
        // JSON bodies are read whole, so they are capped at 1 MiB: management bodies are small JSON documents.
        .layer(crate::edge::BodyCap { limit: 1 << 20 })
        // A bundle import streams its body (any size, with or without a
        // Content-Length), so it is outside that cap.
        .route(
            "/api/v1/feeds/{name}/bundle",
            get(export_bundle).post(import_bundle),
        )
}

fn repl(e: ReplError) -> ApiError {
    ApiError::json(CoreError::from(e))
}

type JsonResult = Result<Json<Value>, ApiError>;

/// An optional JSON body whose fields all have defaults: none sent (no
/// JSON content type) is the defaults; a malformed one is a JSON 400 like
/// every other management body.
fn optional_body<T: Default + serde::de::DeserializeOwned>(
    body: Result<Json<Value>, JsonRejection>,
) -> Result<T, ApiError> {
    match body {
        Err(JsonRejection::MissingJsonContentType(_)) => Ok(T::default()),
        body => crate::error::object_body(body).map_err(ApiError::json),
    }
}

/// Query parameters, or a JSON 400 saying which are expected (not the
/// query parser's message, as text).
fn query<T>(q: Result<Query<T>, QueryRejection>, expected: &str) -> Result<T, ApiError> {
    q.map(|Query(q)| q).map_err(|e| {
        // What serde found ("unknown field `level`, expected `limit`"),
        // then what the route takes.
        let why = e.body_text();
        let why = why
            .strip_prefix("Failed to deserialize query string: ")
            .unwrap_or(&why);
        ApiError::json(CoreError::invalid(format!("bad query string: {why}; {expected}")))
    })
}

const LIMIT_PARAM: &str = "limit must be a whole number from 0 (and is the only query parameter here)";

/// A replication's overview with its own live status only.
///
/// The replicator keeps live status (lag per local feed, last execution,
/// next run) by replication id, and SQLite gives a replication created
/// after the newest one was deleted that same id: its overview would show
/// the deleted replication's feeds as lagging, its last execution and its
/// next run. So lag is kept for this replication's own local feeds only,
/// a last execution only if it is one of this replication's, and an
/// incoming replication (which runs nothing) shows no next run.
async fn own_status(st: &AppState, mut o: Overview) -> Overview {
    let feeds = &o.config.feeds;
    o.status
        .lag
        .retain(|feed, _| feeds.iter().any(|p| p.local.as_str() == feed));
    if let Some(id) = o.status.last_execution {
        // Newest first: at most one running, then the last one that ended.
        let mine = match st.replicator.executions(&o.name, 3).await {
            Ok(list) => list.iter().any(|e| e.id == id),
            Err(_) => true,
        };
        if !mine {
            o.status.last_execution = None;
            o.status.last_outcome = None;
            o.status.last_error = None;
        }
    }
    if !o.config.is_outgoing() {
        o.status.state = "incoming".into();
        o.status.next_run = None;
    }
    o
}

async fn list(State(st): State<AppState>, _: Admin) -> JsonResult {
    let list = replication_overviews(&st).await.map_err(ApiError::json)?;
    Ok(Json(json!(list)))
}

/// One replication's overview (see [`own_status`]).
async fn overview(st: &AppState, name: &str) -> JsonResult {
    let o = replication_overview(st, name).await.map_err(ApiError::json)?;
    Ok(Json(json!(o)))
}

async fn create(
    State(st): State<AppState>,
    _: Admin,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req: CreateRequest = crate::error::object_body(body).map_err(ApiError::json)?;
    let (o, warning) = create_replication(&st, req).await.map_err(ApiError::json)?;
    let mut body = json!(o);
    if let (Some(w), Some(obj)) = (warning, body.as_object_mut()) {
        obj.insert("warning".into(), json!(w));
    }
    Ok((StatusCode::CREATED, Json(body)))
}

/// Creates a replication as a client asked (the API and the web UI): an
/// outgoing one is checked against the other end by a handshake first;
/// one whose other end cannot be reached yet is created with a warning
/// saying so.
pub(crate) async fn create_replication(
    st: &AppState,
    req: CreateRequest,
) -> Result<(Overview, Option<String>), CoreError> {
    let name = req.name.clone();
    let cfg = req.into_config()?;
    let (_, warning) = st.replicator.create(&name, cfg).await?;
    Ok((replication_overview(st, &name).await?, warning))
}

/// Checks an outgoing replication as a client asked for it, before it is
/// created (the web UI's wizard): the handshake `create` makes, failing
/// also when the other end cannot be reached or is not a Ferry instance.
pub(crate) async fn check_outgoing(st: &AppState, req: &CreateRequest) -> Result<(), ReplError> {
    let cfg = req.clone().into_config()?;
    st.replicator.check_connection(&req.name, &cfg).await.map(|_| ())
}

/// [`check_outgoing`] for an update that changes the URL or the token.
pub(crate) async fn check_update(st: &AppState, name: &str, req: &UpdateRequest) -> Result<(), ReplError> {
    st.replicator.check_update(name, req).await.map(|_| ())
}

/// Every replication's overview with its own live status (the API and the web UI).
pub(crate) async fn replication_overviews(st: &AppState) -> Result<Vec<Overview>, CoreError> {
    let mut list = Vec::new();
    for o in st.replicator.overview().await? {
        list.push(own_status(st, o).await);
    }
    Ok(list)
}

/// One replication's overview with its own live status.
pub(crate) async fn replication_overview(st: &AppState, name: &str) -> Result<Overview, CoreError> {
    let o = st.replicator.get(name).await?;
    Ok(own_status(st, o).await)
}

/// "Run now" without waiting (the API and the web UI).
pub(crate) async fn run_now(st: &AppState, name: &str) -> Result<(), CoreError> {
    Ok(st.replicator.trigger(name).await?)
}

/// The replication log's minimum level, from its name (the API and the web UI).
pub(crate) fn set_log_level(st: &AppState, level: &str) -> Result<Level, CoreError> {
    let level = Level::parse(level).ok_or_else(|| {
        CoreError::invalid(format!("level {level:?} is not one of debug, info, warn, error"))
    })?;
    st.replicator.diag().set_min_level(level);
    Ok(level)
}

async fn show(State(st): State<AppState>, _: Admin, Path(name): Path<String>) -> JsonResult {
    overview(&st, &name).await
}

async fn update(
    State(st): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> JsonResult {
    let req: UpdateRequest = crate::error::object_body(body).map_err(ApiError::json)?;
    let (o, warning) = update_replication(&st, &name, req)
        .await
        .map_err(ApiError::json)?;
    let mut v = json!(o);
    if let Some(w) = warning {
        v["warning"] = json!(w);
    }
    Ok(Json(v))
}

/// Changes what `replication update` may change (the API and the web UI);
/// a new URL or token is checked against the other end first. Returns the
/// overview after the change, and a warning when the new URL could not be
/// reached yet, or when the configuration file `ferry serve` applies
/// declares the replication (the file wins at its next application).
pub(crate) async fn update_replication(
    st: &AppState,
    name: &str,
    req: UpdateRequest,
) -> Result<(Overview, Option<String>), CoreError> {
    let (_, mut warning) = st.replicator.update(name, req).await?;
    if let Some(file) = st.replicator.declared_in_file(name) {
        let note = format!(
            "replication {name} is declared in {file}: this change holds until the file is applied again (the next start, SIGHUP); change the file to keep it"
        );
        warning = Some(match warning {
            Some(w) => format!("{w}; {note}"),
            None => note,
        });
    }
    Ok((replication_overview(st, name).await?, warning))
}

async fn remove(
    State(st): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    st.replicator.delete(&name).await.map_err(repl)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn tokens(State(st): State<AppState>, _: Admin, Path(name): Path<String>) -> JsonResult {
    Ok(Json(json!(st.replicator.tokens(&name).await.map_err(repl)?)))
}

async fn new_token(
    State(st): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let token = st.replicator.new_token(&name).await.map_err(repl)?;
    let mut v = json!({ "token": token });
    if let Some(file) = st.replicator.tokens_listed_in_file(&name) {
        let (id, secret) = ferry_replication::token::split(&token).unwrap_or_default();
        let sha256 = hex::encode(ferry_replication::token::hash(secret));
        v["warning"] = json!(format!(
            "replication {name} lists the tokens it accepts in {file} (accept_tokens), and this one is not there: add {{ id = \"{id}\", sha256 = \"{sha256}\" }} to that list, or the file's next application (start, SIGHUP) names this token in a warning, and revokes it with prune = true"
        ));
    }
    Ok((StatusCode::CREATED, Json(v)))
}

async fn revoke_token(
    State(st): State<AppState>,
    _: Admin,
    Path((name, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    st.replicator.revoke_token(&name, &id).await.map_err(repl)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RunRequest {
    wait: bool,
    confirm_deletes: bool,
    full: bool,
}

async fn run(
    State(st): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req: RunRequest = optional_body(body)?;
    if req.wait || req.confirm_deletes || req.full {
        let result = st
            .replicator
            .run(&name, "manual", req.confirm_deletes, req.full)
            .await
            .map_err(repl)?;
        return Ok((StatusCode::OK, Json(json!(result))));
    }
    run_now(&st, &name).await.map_err(ApiError::json)?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "started": true }))))
}

/// Stops the running execution (the API and the web UI): `by` names who
/// asked, for the execution's log. Returns the stopped execution's id, or
/// None when none was running.
pub(crate) async fn stop_execution(st: &AppState, name: &str, by: &str) -> Result<Option<i64>, CoreError> {
    Ok(st.replicator.stop_execution(name, by).await?)
}

/// `POST .../stop`: 200 `{"stopped": ID}`, or 409 when no execution runs.
async fn stop(State(st): State<AppState>, Admin(p): Admin, Path(name): Path<String>) -> JsonResult {
    match stop_execution(&st, &name, &format!("key {}", p.key.name))
        .await
        .map_err(ApiError::json)?
    {
        Some(id) => Ok(Json(json!({ "stopped": id }))),
        None => Err(ApiError::json(CoreError::Conflict(format!(
            "replication {name} has no running execution"
        )))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Limit {
    limit: Option<usize>,
}

async fn executions(
    State(st): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
    q: Result<Query<Limit>, QueryRejection>,
) -> JsonResult {
    let q = query(q, LIMIT_PARAM)?;
    let list = st
        .replicator
        .executions(&name, q.limit.unwrap_or(50).min(200))
        .await
        .map_err(repl)?;
    Ok(Json(json!(list)))
}

/// The instances that connect to incoming replication `name` (see
/// `ferry_replication::peers`), newest contact first, with `stale` flags.
async fn peers(State(st): State<AppState>, _: Admin, Path(name): Path<String>) -> JsonResult {
    Ok(Json(json!(st.replicator.peers(&name).await.map_err(repl)?)))
}

/// `DELETE …/peers/INSTANCE`: forgets one peer (204); 404 when it is not
/// listed.
async fn forget_peer(
    State(st): State<AppState>,
    _: Admin,
    Path((name, instance)): Path<(String, String)>,
) -> Result<axum::http::StatusCode, ApiError> {
    st.replicator.forget_peer(&name, &instance).await.map_err(repl)?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

async fn plan(State(st): State<AppState>, _: Admin, Path(name): Path<String>) -> JsonResult {
    Ok(Json(json!(st.replicator.plan(&name).await.map_err(repl)?)))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct VerifyRequest {
    repair: bool,
    confirm_deletes: bool,
}

async fn verify(
    State(st): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> JsonResult {
    let req: VerifyRequest = optional_body(body)?;
    let mut repaired = None;
    if req.repair
        && !st
            .replicator
            .verify(&name)
            .await
            .map_err(repl)?
            .iter()
            .all(|v| v.same)
    {
        repaired = Some(
            st.replicator
                .run(&name, "repair", req.confirm_deletes, true)
                .await
                .map_err(repl)?,
        );
    }
    let pairs = st.replicator.verify(&name).await.map_err(repl)?;
    let same = pairs.iter().all(|p| p.same);
    Ok(Json(json!({ "same": same, "feeds": pairs, "repair": repaired })))
}

async fn logs(State(st): State<AppState>, _: Admin, q: Result<Query<Limit>, QueryRejection>) -> JsonResult {
    let q = query(q, LIMIT_PARAM)?;
    let d = st.replicator.diag();
    Ok(Json(
        json!({ "min_level": d.min_level(), "lines": d.recent(q.limit.unwrap_or(200)) }),
    ))
}

#[derive(Deserialize)]
struct LevelRequest {
    level: String,
}

async fn set_level(
    State(st): State<AppState>,
    _: Admin,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> JsonResult {
    let req: LevelRequest = crate::error::object_body(body).map_err(ApiError::json)?;
    let level = set_log_level(&st, &req.level).map_err(ApiError::json)?;
    Ok(Json(json!({ "min_level": level })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Since {
    #[serde(default)]
    since: i64,
}

/// An air-gap bundle of the feed's changes after `since`, streamed.
async fn export_bundle(
    State(st): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
    q: Result<Query<Since>, QueryRejection>,
) -> Result<axum::response::Response, ApiError> {
    const SINCE: &str =
        "since must be a change-log position (a whole number from 0; the only query parameter here)";
    let q = query(q, SINCE)?;
    if q.since < 0 {
        return Err(ApiError::json(CoreError::invalid(SINCE.to_owned())));
    }
    let feed = ferry_types::FeedName::new(name).map_err(|e| ApiError::json(CoreError::from(e)))?;
    let (header, stream) = st.replicator.export_bundle(&feed, q.since).await.map_err(repl)?;
    axum::response::Response::builder()
        .header(axum::http::header::CONTENT_TYPE, "application/x-tar")
        .header(
            axum::http::header::CONTENT_DISPOSITION,
            format!(
                "attachment; filename=\"{}-{}-{}.ferry-bundle\"",
                header.feed, header.since, header.until
            ),
        )
        .header("x-ferry-bundle-until", header.until)
        .header("x-ferry-bundle-entries", header.entries)
        .body(axum::body::Body::from_stream(stream))
        .map_err(|e| ApiError::json(CoreError::Internal(e.to_string())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportQuery {
    #[serde(default)]
    confirm_deletes: bool,
}

/// Applies an air-gap bundle to the feed. `?confirm_deletes=true` lets
/// through a bundle whose deletions the delete guard stops (409 otherwise).
async fn import_bundle(
    State(st): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
    q: Result<Query<ImportQuery>, QueryRejection>,
    body: axum::body::Body,
) -> JsonResult {
    use futures::TryStreamExt;
    let q = query(
        q,
        "confirm_deletes must be true or false (and is the only query parameter here)",
    )?;
    let feed = ferry_types::FeedName::new(name).map_err(|e| ApiError::json(CoreError::from(e)))?;
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let report = st
        .replicator
        .import_bundle(&feed, Box::pin(stream), q.confirm_deletes)
        .await
        .map_err(repl)?;
    Ok(Json(json!(report)))
}
