//! Replication pages: the overview (landing page), the new-replication
//! wizard, one replication, its tokens, plan and executions, and the
//! diagnostic center. Instance admin keys only, as on the API.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ferry_core::CoreError;
use ferry_replication::config::{BlobSource, Communication, CreateRequest, MAX_BLOB_SOURCES, UpdateRequest};
use ferry_replication::{Overview, ReplError};
use ferry_store::ExecutionRecord;
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Fields, Nav, Posted, Signed, bytes, csrf_field, duration, page, post_button, problem, rate, seg, when,
    when_text,
};
use crate::AppState;
use crate::error::ApiError;
use crate::mgmt_replication as core_api;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(overview))
        .route("/ui/api/overview", get(overview_json))
        .route("/replications/new", get(new_form).post(create))
        .route("/replications/{name}", get(detail))
        .route("/replications/{name}/run", post(run))
        .route("/replications/{name}/stop", post(stop))
        .route("/replications/{name}/confirm", post(confirm))
        .route("/replications/{name}/tokens", post(new_token))
        .route("/replications/{name}/token", get(token_shown))
        .route("/replications/{name}/tokens/{id}/revoke", post(revoke_token))
        .route("/replications/{name}/delete", get(delete_confirm).post(delete))
        .route("/replications/{name}/edit", get(edit_form).post(edit))
        .route("/replications/{name}/plan", get(plan))
        .route("/replications/{name}/executions/{id}", get(execution))
        .route("/executions", get(all_executions))
        .route("/diagnostics", get(diagnostics))
        .route("/diagnostics/level", post(set_level))
}

fn html_err(e: impl Into<CoreError>) -> ApiError {
    ApiError::html(e)
}

fn feeds_of(o: &Overview) -> String {
    o.config
        .feeds
        .iter()
        .map(|p| {
            if p.local == p.remote {
                p.local.to_string()
            } else {
                format!("{} = {}", p.local, p.remote)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn direction(o: &Overview) -> Markup {
    match &o.config.communication {
        Communication::Incoming => html! { "incoming" },
        Communication::Outgoing { url, .. } => html! { "outgoing → " code { (url) } },
    }
}

/// "12 of 40 items · 3.1 MiB · 7.0 MiB to go · 1.0 MiB/s · about 7 s left"
/// Whether an execution of `o` runs, here or on another node of the
/// instance (Stop works through any node).
fn stoppable(o: &Overview) -> bool {
    o.running.is_some() || o.status.state == "running on another node"
}

fn progress_text(running: &Value) -> String {
    let done = running["items_done"].as_u64().unwrap_or(0);
    let total = running["items_total"].as_u64().unwrap_or(0);
    let b = running["bytes_done"].as_u64().unwrap_or(0);
    let per_second = running["bytes_per_second"].as_f64().unwrap_or(0.0);
    let mut s = if total > 0 {
        format!("{done} of {total} items")
    } else {
        format!("{done} items")
    };
    s.push_str(&format!(" · {}", bytes(b)));
    if let Some(left) = running["bytes_remaining"].as_u64() {
        s.push_str(&format!(" · {} to go", bytes(left)));
    }
    if per_second > 0.0 {
        s.push_str(&format!(" · {}", rate(per_second)));
    }
    if let Some(eta) = running["eta_seconds"].as_f64() {
        s.push_str(&format!(" · about {} left", duration(eta)));
    }
    s
}

fn lag_text(o: &Overview) -> String {
    if o.status.lag.is_empty() {
        return "—".into();
    }
    let changes: i64 = o.status.lag.values().map(|l| l.changes).sum();
    let secs = o.status.lag.values().map(|l| l.seconds).fold(0.0, f64::max);
    let last = if changes == 0 {
        "up to date".into()
    } else {
        format!("{changes} changes, {}", duration(secs))
    };
    // Out of reach, or the last execution failed: the lag is not known
    // now, only what it was.
    let measured = o
        .status
        .lag
        .values()
        .map(|l| l.measured_at)
        .min()
        .unwrap_or_default();
    match &o.status.unreachable {
        Some(u) => format!("unknown: unreachable since {} (was {last})", u.since),
        None if o.status.last_outcome.as_deref() == Some("failed") => {
            format!("{last} as of {}", ferry_core::rfc3339(measured))
        }
        None => last,
    }
}

/// An incoming replication's row: the instances that connect with its
/// tokens (it runs no executions of its own), and the lag of the one
/// furthest behind.
struct IncomingSummary {
    peers: usize,
    stale: usize,
    failing: usize,
    /// Listed as used by several running processes at once.
    shared: usize,
    /// The largest lag in changes and seconds over every peer and feed.
    lag: Option<(i64, f64)>,
}

async fn incoming_summary(st: &AppState, o: &Overview) -> Option<IncomingSummary> {
    if o.config.is_outgoing() {
        return None;
    }
    let peers = st.replicator.peers(&o.name).await.ok()?;
    let lag = peers
        .iter()
        .flat_map(|p| p.state.feeds.values())
        .map(|f| (f.lag_changes, f.lag_seconds))
        .fold(None, |m: Option<(i64, f64)>, (c, s)| {
            Some(m.map_or((c, s), |(mc, ms)| (mc.max(c), ms.max(s))))
        });
    Some(IncomingSummary {
        peers: peers.len(),
        stale: peers.iter().filter(|p| p.stale).count(),
        failing: peers.iter().filter(|p| p.state.last_error.is_some()).count(),
        shared: peers.iter().filter(|p| p.id_shared.is_some()).count(),
        lag,
    })
}

fn incoming_last(o: &Overview, s: &IncomingSummary) -> Markup {
    let plural = |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    html! { span {
        @if s.peers == 0 {
            span.muted { "no instance has connected yet" }
        } @else {
            a href={ "/replications/" (seg(&o.name)) "#peers" } { (plural(s.peers, "instance", "instances")) }
            @if s.stale > 0 { " " span class="badge bad" { (s.stale) " stale" } }
            @if s.failing > 0 { " " span class="badge warn" { (s.failing) " with an error" } }
            @if s.shared > 0 { " " span class="badge bad" { (s.shared) " id used by several instances" } }
        }
    } }
}

fn incoming_lag(s: &IncomingSummary) -> String {
    match s.lag {
        None => "—".into(),
        Some((0, _)) => "up to date".into(),
        Some((c, secs)) => format!("furthest behind: {c} changes, {}", duration(secs)),
    }
}

fn outcome_class(outcome: Option<&str>) -> &'static str {
    match outcome {
        Some("succeeded") => "ok",
        Some("failed") => "bad",
        Some("stopped") => "stopped",
        Some(_) => "warn",
        None => "running",
    }
}

fn last_text(o: &Overview, last: Option<&ExecutionRecord>) -> Markup {
    match (o.status.last_outcome.as_deref(), last) {
        (None, _) => html! { span.muted { "never run" } },
        // One element, so that the phone layout's cell keeps it together.
        (Some(outcome), Some(e)) => html! { span {
            a href={ "/replications/" (seg(&o.name)) "/executions/" (e.id) } {
                span class={ "badge " (outcome_class(Some(outcome))) } { (outcome) }
            }
            " " span.muted { (when(e.started_at)) }
            @if let Some(end) = e.ended_at { " · " span.muted { (duration((end - e.started_at) as f64 / 1000.0)) } }
        } },
        (Some(outcome), None) => {
            html! { span class={ "badge " (outcome_class(Some(outcome))) } { (outcome) } }
        }
    }
}

async fn last_execution(st: &AppState, o: &Overview) -> Option<ExecutionRecord> {
    let id = o.status.last_execution?;
    st.replicator
        .executions(&o.name, 3)
        .await
        .ok()?
        .into_iter()
        .find(|e| e.id == id)
}

// ------------------------------------------------------------ overview

#[derive(Deserialize, Default)]
#[serde(default)]
struct OverviewQuery {
    /// Set by the redirect after a replication was deleted: its name.
    deleted: String,
}

async fn overview(
    State(st): State<AppState>,
    who: Signed,
    Query(q): Query<OverviewQuery>,
) -> Result<Response, ApiError> {
    if !who.is_admin() {
        return Ok(Redirect::to("/feeds").into_response());
    }
    let list = core_api::replication_overviews(&st).await.map_err(html_err)?;
    let mut rows = Vec::new();
    for o in &list {
        rows.push((o, last_execution(&st, o).await, incoming_summary(&st, o).await));
    }
    let body = html! {
        div.titlebar {
            h1 { "Replication" }
            a.button.primary href="/replications/new" { "Configure New Replication" }
        }
        @if !q.deleted.is_empty() {
            div.notice role="status" #deleted-notice { p { "Replication " strong { (q.deleted) } " deleted." } }
        }
        @if list.is_empty() {
            div.empty {
                p { "No replications yet." }
                p { "A replication keeps feeds on this instance and on another one the same. "
                    "One side accepts the connection (incoming, with a sync token), the other opens it (outgoing)." }
                a.button.primary href="/replications/new" { "Configure New Replication" }
            }
        } @else {
            div.table-wrap {
                table #overview data-poll="/ui/api/overview" {
                    thead { tr { th { "Name" } th { "Feeds (local = remote)" } th { "Communication" } th { "Mode" }
                        th { "State" } th { "Last execution" } th { "Lag" } th { "Next run" } th { span.sr { "Actions" } } } }
                    tbody {
                        @for (o, last, incoming) in &rows {
                            tr data-repl=(o.name) {
                                td data-label="Name" { a href={ "/replications/" (seg(&o.name)) } { (o.name) } }
                                td data-label="Feeds" { (feeds_of(o)) }
                                td data-label="Communication" { (direction(o)) }
                                td data-label="Mode" { (o.config.mode.describe()) }
                                td data-label="State" {
                                    span.state data-field="state" { (o.status.state) }
                                    div.progress data-field="progress" {
                                        @if let Some(r) = &o.running { (progress_text(r)) }
                                    }
                                }
                                td data-field="last" data-label="Last execution" {
                                    @match incoming { Some(i) => (incoming_last(o, i)), None => (last_text(o, last.as_ref())) }
                                }
                                td data-field="lag" data-label="Lag" {
                                    @match incoming { Some(i) => (incoming_lag(i)), None => (lag_text(o)) }
                                }
                                td.muted data-label="Next run" { (o.status.next_run.as_deref().map(when_text).unwrap_or_else(|| "—".into())) }
                                td.actions {
                                    @if o.config.is_outgoing() {
                                        (post_button(&who, &format!("/replications/{}/run", seg(&o.name)), "Run now", "small"))
                                        " "
                                        // Shown while an execution runs (the script keeps it current).
                                        form.inline method="post" action={ "/replications/" (seg(&o.name)) "/stop" }
                                            data-field="stop" hidden[!stoppable(o)] {
                                            (csrf_field(&who))
                                            button.small.danger type="submit" { "Stop" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            p.hint { "This page updates itself while executions run." }
        }
    };
    Ok(page("Replication", Some(&who), Nav::Replication, body))
}

/// What the overview's script polls: each replication's state, progress,
/// last execution and lag, as text.
async fn overview_json(State(st): State<AppState>, who: Signed) -> Result<Json<Value>, ApiError> {
    who.admin()?;
    let list = core_api::replication_overviews(&st).await.map_err(html_err)?;
    let mut out = Vec::new();
    for o in &list {
        let last = last_execution(&st, o).await;
        let (last, lag) = match incoming_summary(&st, o).await {
            Some(i) => (incoming_last(o, &i).into_string(), incoming_lag(&i)),
            None => (last_text(o, last.as_ref()).into_string(), lag_text(o)),
        };
        out.push(json!({
            "name": o.name,
            "state": o.status.state,
            "progress": o.running.as_ref().map(progress_text).unwrap_or_default(),
            "running": stoppable(o),
            "last": last,
            "lag": lag,
        }));
    }
    Ok(Json(json!({ "replications": out })))
}

async fn run(State(st): State<AppState>, Path(name): Path<String>, p: Posted) -> Result<Response, ApiError> {
    p.who.admin()?;
    core_api::run_now(&st, &name).await.map_err(html_err)?;
    let back = if p.form.get("back") == "detail" {
        format!("/replications/{}", seg(&name))
    } else {
        "/".into()
    };
    Ok(Redirect::to(&back).into_response())
}

/// Stops the running execution (the same `stop_execution` as the API);
/// with none running, says so.
async fn stop(State(st): State<AppState>, Path(name): Path<String>, p: Posted) -> Result<Response, ApiError> {
    p.who.admin()?;
    let by = format!("key {} (web UI)", p.who.principal.key.name);
    let stopped = core_api::stop_execution(&st, &name, &by)
        .await
        .map_err(html_err)?;
    if stopped.is_none() {
        return Err(html_err(CoreError::Conflict(format!(
            "replication {name} has no running execution to stop (it may have just ended)"
        ))));
    }
    let back = if p.form.get("back") == "detail" {
        format!("/replications/{}", seg(&name))
    } else {
        "/".into()
    };
    Ok(Redirect::to(&back).into_response())
}

/// Runs again with the delete guard's deletions confirmed (waits for it).
async fn confirm(
    State(st): State<AppState>,
    Path(name): Path<String>,
    p: Posted,
) -> Result<Response, ApiError> {
    p.who.admin()?;
    let r = st
        .replicator
        .run(&name, "manual", true, false)
        .await
        .map_err(html_err)?;
    Ok(Redirect::to(&format!("/replications/{}/executions/{}", seg(&name), r.id)).into_response())
}

// ------------------------------------------------------------ wizard

#[derive(Default)]
struct Draft {
    name: String,
    feeds: Vec<(String, String)>,
    direction: String,
    url: String,
    /// The sync token as typed: used for the request, never put back in a page.
    token: String,
    /// Blob sources as (URL, token) rows, as typed; the tokens are used
    /// for the request and never put back in a page.
    sources: Vec<(String, String)>,
    mode: String,
    flows: [bool; 4],
    include: String,
    exclude: String,
    interval: String,
    bandwidth: String,
    carry_downloads: bool,
    /// "Create it anyway" ticked: an unreachable other end is not refused.
    anyway: bool,
    /// The last check could not reach the other end: offer "anyway".
    unreachable: bool,
}

impl Draft {
    fn from_form(f: &Fields) -> Draft {
        let feeds = f
            .all("feed")
            .into_iter()
            .map(|l| {
                let remote = f.get(&format!("remote:{l}")).trim();
                (
                    l.to_owned(),
                    if remote.is_empty() {
                        l.to_owned()
                    } else {
                        remote.to_owned()
                    },
                )
            })
            .collect();
        Draft {
            name: f.get("name").trim().to_owned(),
            feeds,
            direction: f.get("direction").to_owned(),
            url: f.get("url").trim().to_owned(),
            token: f.get("token").trim().to_owned(),
            sources: source_rows(f)
                .into_iter()
                .map(|(u, t)| (u.to_owned(), t.to_owned()))
                .collect(),
            mode: f.get("mode").to_owned(),
            flows: [
                f.on("pull_missing"),
                f.on("push_missing"),
                f.on("delete_local"),
                f.on("delete_remote"),
            ],
            include: f.get("include").to_owned(),
            exclude: f.get("exclude").to_owned(),
            interval: f.get("interval").trim().to_owned(),
            bandwidth: f.get("bandwidth").trim().to_owned(),
            carry_downloads: f.on("carry_downloads"),
            anyway: f.on("anyway"),
            unreachable: false,
        }
    }

    fn request(&self) -> Result<CreateRequest, CoreError> {
        if self.feeds.is_empty() {
            return Err(CoreError::invalid(
                "Choose at least one feed to replicate (step 1).",
            ));
        }
        let lines = |s: &str| -> Vec<String> {
            s.split([',', '\n'])
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let number = |s: &str, what: &str| -> Result<Option<u64>, CoreError> {
            if s.is_empty() {
                return Ok(None);
            }
            s.parse()
                .map(Some)
                .map_err(|_| CoreError::invalid(format!("{what} must be a whole number, not {s:?}.")))
        };
        let outgoing = self.direction == "outgoing";
        if outgoing && (self.url.is_empty() || self.token.is_empty()) {
            return Err(CoreError::invalid(
                "An outgoing replication needs the other instance's URL and the sync token it gave you (step 2).",
            ));
        }
        let rows: Vec<(&str, &str)> = self
            .sources
            .iter()
            .map(|(u, t)| (u.as_str(), t.as_str()))
            .collect();
        let blob_sources = blob_sources(&rows)?;
        let custom = self.mode == "custom";
        Ok(CreateRequest {
            name: self.name.clone(),
            feeds: self.feeds.iter().map(|(l, r)| format!("{l}={r}")).collect(),
            outgoing: outgoing.then(|| self.url.clone()),
            token: outgoing.then(|| self.token.clone()),
            mode: self.mode.clone(),
            pull_missing: custom && self.flows[0],
            push_missing: custom && self.flows[1],
            delete_local: custom && self.flows[2],
            delete_remote: custom && self.flows[3],
            include: lines(&self.include),
            exclude: lines(&self.exclude),
            interval: number(&self.interval, "The interval")?,
            carry_downloads: self.carry_downloads,
            bandwidth_limit: number(&self.bandwidth, "The bandwidth cap")?,
            blob_sources,
            ..CreateRequest::default()
        })
    }
}

async fn new_form(State(st): State<AppState>, who: Signed) -> Result<Response, ApiError> {
    who.admin()?;
    let draft = Draft {
        direction: "incoming".into(),
        mode: "mirror".into(),
        interval: "60".into(),
        ..Draft::default()
    };
    wizard(&st, &who, &draft, None, StatusCode::OK).await
}

async fn wizard(
    st: &AppState,
    who: &Signed,
    d: &Draft,
    msg: Option<&str>,
    status: StatusCode,
) -> Result<Response, ApiError> {
    let feeds = st.ferry.feeds().await.map_err(html_err)?;
    let typed = std::iter::once(d.token.as_str()).chain(d.sources.iter().map(|(_, t)| t.as_str()));
    let msg = msg.map(|m| refusal_words(m, typed));
    let msg = msg.as_deref();
    let chosen = |name: &str| d.feeds.iter().find(|(l, _)| l == name).map(|(_, r)| r.as_str());
    let flow = |i: usize, name: &str, label: &str| {
        html! {
            label.check { input type="checkbox" name=(name) value="1" checked[d.flows[i]]; " " (label) }
        }
    };
    let body = html! {
        h1 { "Configure New Replication" }
        (problem(msg))
        @if feeds.is_empty() {
            div.empty {
                p { "There are no feeds to replicate yet." }
                a.button.primary href="/feeds#create" { "Create a feed" }
            }
        } @else {
        form.wizard method="post" action="/replications/new" {
            (csrf_field(who))
            fieldset {
                legend { span.step { "1" } "Feeds" }
                p.hint { "Tick the feeds to replicate. The remote name is the feed's name on the other instance; leave it empty when it is the same." }
                div.table-wrap { table {
                    thead { tr { th { "Replicate" } th { "Local feed" } th { "Type" } th { "Remote name" } } }
                    tbody {
                        @for f in &feeds {
                            @let id = format!("feed-{}", f.name);
                            tr {
                                td { input type="checkbox" id=(id) name="feed" value=(f.name) checked[chosen(f.name.as_str()).is_some()]; }
                                td { label for=(id) { (f.name) } }
                                td { (f.feed_type.to_string()) }
                                td { input type="text" name={ "remote:" (f.name) } aria-label={ "remote name for " (f.name) }
                                    placeholder=(f.name) value=(chosen(f.name.as_str()).filter(|r| *r != f.name.as_str()).unwrap_or("")); }
                            }
                        }
                    }
                } }
            }
            fieldset {
                legend { span.step { "2" } "Communication" }
                label.radio { input type="radio" name="direction" value="incoming" checked[d.direction != "outgoing"];
                    " " strong { "Incoming" } " — the other instance connects here. You get a sync token to give it." }
                label.radio { input type="radio" name="direction" value="outgoing" checked[d.direction == "outgoing"];
                    " " strong { "Outgoing" } " — this instance connects to the other one with the token it gave you." }
                div.grid2 {
                    div { label for="url" { "Other instance's URL (outgoing)" }
                        input #url type="url" name="url" placeholder="https://hub.example.com:8765" value=(d.url); }
                    div { label for="token" { "Sync token from the other instance (outgoing)" }
                        input #token type="password" name="token" autocomplete="off" placeholder="fst_…"; }
                }
                p.hint { "An outgoing replication is checked right away by a handshake with the other instance." }
                fieldset #blob-source-rows {
                    legend { "Blob sources (outgoing, optional)" }
                    p.hint { "Other Ferry instances (a site cache, a neighbouring spoke) asked for blobs before the other instance, in this order; metadata always comes from the other instance. \
                        Give each source's URL and a sync token of an incoming replication there. Each is checked when the replication is created. \
                        Up to " (MAX_BLOB_SOURCES) " in all: rows beyond these two are added on the replication's edit page." }
                    (source_fields(&d.sources, &[]))
                }
                @if d.unreachable {
                    label.check { input type="checkbox" name="anyway" value="1" checked[d.anyway];
                        " Create it anyway: the other instance is not running yet (executions keep trying to reach it)" }
                }
            }
            fieldset {
                legend { span.step { "3" } "Replication mode" }
                @for (value, label, help) in [
                    ("mirror", "Mirror", "both sides end up the same: copy what is missing either way, delete what the other side deleted"),
                    ("pull", "Pull", "copy what the other side has to this instance"),
                    ("push", "Push", "copy what this instance has to the other side"),
                    ("custom", "Custom", "choose the four flows below"),
                ] {
                    label.radio { input type="radio" name="mode" value=(value) checked[d.mode == value]; " " strong { (label) } " — " (help) }
                }
                div.flows {
                    p.hint { "Custom mode only:" }
                    (flow(0, "pull_missing", "Pull missing items"))
                    (flow(1, "push_missing", "Push missing items"))
                    (flow(2, "delete_local", "Delete local items deleted on the other side"))
                    (flow(3, "delete_remote", "Delete remote items deleted here"))
                }
                div.grid2 {
                    div { label for="include" { "Include (globs, one a line)" } textarea #include name="include" rows="2" { (d.include) } }
                    div { label for="exclude" { "Exclude (globs, one a line)" } textarea #exclude name="exclude" rows="2" { (d.exclude) } }
                    div { label for="interval" { "Interval (seconds between runs)" } input #interval type="number" min="1" name="interval" value=(d.interval); }
                    div { label for="bandwidth" { "Bandwidth cap (bytes per second, empty: none)" } input #bandwidth type="number" min="1024" name="bandwidth" value=(d.bandwidth); }
                }
                label.check { input type="checkbox" name="carry_downloads" value="1" checked[d.carry_downloads]; " Carry download counts" }
            }
            fieldset {
                legend { span.step { "4" } "Summary" }
                label for="name" { "Replication name" }
                input #name type="text" name="name" required pattern="[A-Za-z0-9._\\-]{1,100}" value=(d.name)
                    placeholder="e.g. hub-to-edge";
                p.hint { "Letters, digits, '-', '_' and '.'. Check the steps above, then create it." }
                button.primary type="submit" { "Create replication" }
            }
        }
        }
    };
    let mut resp = page("New replication", Some(who), Nav::Replication, body);
    *resp.status_mut() = status;
    Ok(resp)
}

/// A handshake or validation problem, in plain words: the engine's
/// messages name the CLI's flags, the form names its own fields.
fn plain(e: &CoreError) -> String {
    let msg = field_words(&crate::error::public_message(e));
    match e {
        CoreError::Unauthorized(_) => format!(
            "The other instance did not accept the sync token: it is wrong, or it was revoked. \
             Ask for a new token on the other instance's incoming replication. ({msg})"
        ),
        CoreError::Upstream(_) | CoreError::Unavailable(_) => {
            let (why, _) = transport_words(&msg);
            format!("The other instance could not be reached: {why}. Check the URL and that it is running.")
        }
        _ => msg,
    }
}

/// The CLI's flag names in an engine message, as the form's fields.
fn field_words(msg: &str) -> String {
    let mut out = msg.to_owned();
    for (flag, field) in [
        ("--interval", "Interval (seconds between runs)"),
        ("--outgoing", "Other instance's URL"),
        ("--token", "a sync token"),
        ("--include", "Include"),
        ("--exclude", "Exclude"),
        ("--feed", "Feed"),
        ("--name", "Replication name"),
    ] {
        out = out.replace(flag, field);
    }
    out
}

/// Why nothing answered at the other end, short: the last cause of a
/// transport error without the library's wrapping ("error sending request
/// for url (…): client error (Connect): tcp connect error: …"), and
/// whether it is an end that did not answer at all (refused, timed out,
/// unknown host), as opposed to one that answered wrongly.
fn transport_words(m: &str) -> (String, bool) {
    let lower = m.to_ascii_lowercase();
    if lower.contains("connection refused") {
        return ("connection refused".into(), true);
    }
    if lower.contains("timed out") || lower.contains("timeout") || lower.contains("deadline has elapsed") {
        return ("no answer in time".into(), true);
    }
    if lower.contains("dns error")
        || lower.contains("failed to lookup")
        || lower.contains("name or service not known")
    {
        return ("the host name is not known".into(), true);
    }
    if lower.contains("network is unreachable")
        || lower.contains("no route to host")
        || lower.contains("host is unreachable")
    {
        return ("no route to that host".into(), true);
    }
    let last = m.rsplit(": ").next().unwrap_or(m);
    let last = match last.find(" (os error") {
        Some(at) => &last[..at],
        None => last,
    };
    (last.trim().to_owned(), false)
}

/// What the on-the-spot handshake found, in plain words, with the status
/// the wizard answers with and whether nothing answered at the other end
/// (refused, timed out: only then is "create it anyway" offered; a server
/// that answered but is not Ferry is never created anyway). Every rule is
/// the other instance's or the engine's: this only words their errors for
/// a person.
fn handshake_words(e: &ReplError, url: &str) -> (StatusCode, String, bool) {
    let not_ferry = |what: String| {
        (
            StatusCode::BAD_GATEWAY,
            format!(
                "{url} answered, but it is not a Ferry instance: {what}. Enter the other Ferry instance's own address \
                 (as in its base_url, e.g. https://hub.example.com:8765), not a web page or another server."
            ),
            false,
        )
    };
    match e {
        ReplError::Transport(m) if m.contains("decoding") => {
            not_ferry("its answer to the replication handshake was not Ferry's".into())
        }
        ReplError::Transport(m) => {
            let (why, unreachable) = transport_words(m);
            let words = if unreachable {
                format!(
                    "Nothing answers at {url}: {why}. Check the URL (scheme, host and port), \
                     and that the other instance is running and reachable from this one."
                )
            } else {
                format!(
                    "The other instance could not be reached at {url}: {why}. Check the URL (scheme, host and port), \
                     and that it is a Ferry instance reachable from this one."
                )
            };
            (StatusCode::BAD_GATEWAY, words, unreachable)
        }
        ReplError::Remote { status, .. } if matches!(status, 300..=399 | 404 | 405 | 406 | 415 | 501) => {
            not_ferry(format!("it has no replication API (it answered HTTP {status})"))
        }
        ReplError::Remote { status, message } => (
            StatusCode::BAD_GATEWAY,
            format!("The other instance answered HTTP {status}: {message}"),
            false,
        ),
        ReplError::Unauthorized(m) if m.contains("was revoked") => (
            StatusCode::UNAUTHORIZED,
            "The sync token was revoked on the other instance. Create a new token on its incoming replication \
             (Replication → the replication → New sync token) and enter that one."
                .into(),
            false,
        ),
        ReplError::Unauthorized(_) => (
            StatusCode::UNAUTHORIZED,
            "The other instance did not accept the sync token: it is wrong, or it belongs to another instance. \
             Check that you copied all of it (it starts with fst_), or create a new one on the other instance's incoming replication."
                .into(),
            false,
        ),
        ReplError::Refused(m) => (
            StatusCode::CONFLICT,
            format!("The other instance refused this replication: {m}."),
            false,
        ),
        ReplError::Core(c) => (
            crate::error::status_of(c),
            field_words(&crate::error::public_message(c)),
            false,
        ),
        ReplError::NotFound(m) => (StatusCode::NOT_FOUND, m.clone(), false),
        ReplError::Forbidden(m) => (StatusCode::FORBIDDEN, m.clone(), false),
        e => (StatusCode::BAD_REQUEST, field_words(&e.to_string()), false),
    }
}

async fn create(State(st): State<AppState>, p: Posted) -> Result<Response, ApiError> {
    p.who.admin()?;
    let mut draft = Draft::from_form(&p.form);
    let result = match draft.request() {
        Ok(req) => {
            if req.outgoing.is_some()
                && let Err(e) = core_api::check_outgoing(&st, &req).await
            {
                let (status, words, unreachable) = handshake_words(&e, &draft.url);
                if !(unreachable && draft.anyway) {
                    draft.unreachable = unreachable;
                    return wizard(&st, &p.who, &draft, Some(&words), status).await;
                }
            }
            // (Unreachable and created anyway: the wizard said so above.)
            core_api::create_replication(&st, req).await.map(|(o, _)| o)
        }
        Err(e) => Err(e),
    };
    let o = match result {
        Ok(o) => o,
        Err(e @ CoreError::Internal(_)) => return Err(html_err(e)),
        Err(e) => {
            let status = crate::error::status_of(&e);
            let status = if status.is_client_error() {
                status
            } else {
                StatusCode::BAD_GATEWAY
            };
            return wizard(&st, &p.who, &draft, Some(&plain(&e)), status).await;
        }
    };
    if o.config.is_outgoing() {
        return Ok(Redirect::to(&format!("/replications/{}", seg(&o.name))).into_response());
    }
    // Incoming: the token, shown once, and what the other side enters.
    let token = st.replicator.new_token(&o.name).await.map_err(html_err)?;
    token_redirect(&st, &p.who, &o.name, token, true).await
}

/// POST/redirect/GET for a new sync token: kept in the session for the
/// token page, which shows it once.
async fn token_redirect(
    st: &AppState,
    who: &Signed,
    name: &str,
    token: String,
    created: bool,
) -> Result<Response, ApiError> {
    st.sessions
        .set_flash(
            &who.session,
            super::Flash::Token {
                replication: name.to_owned(),
                token,
                created,
            },
        )
        .await
        .map_err(html_err)?;
    Ok(Redirect::to(&format!("/replications/{}/token", seg(name))).into_response())
}

/// The page after a new sync token: the token, once. Reloaded (the token
/// already shown), it says so.
async fn token_shown(
    State(st): State<AppState>,
    who: Signed,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    who.admin()?;
    let o = core_api::replication_overview(&st, &name)
        .await
        .map_err(html_err)?;
    match st.sessions.take_flash(&who.session).await.map_err(html_err)? {
        Some(super::Flash::Token {
            replication,
            token,
            created,
        }) if replication == o.name => Ok(token_page(&st, &who, &o, &token, created)),
        _ => Err(html_err(CoreError::not_found(format!(
            "the sync token of {name} was shown once and is not kept; create a new one on the replication's page"
        )))),
    }
}

fn token_page(st: &AppState, who: &Signed, o: &Overview, token: &str, created: bool) -> Response {
    let origin = st
        .ferry
        .config()
        .base_url
        .clone()
        .unwrap_or_else(|| "this instance's URL (as the other instance reaches it)".into());
    let feeds: Vec<String> = o
        .config
        .feeds
        .iter()
        .map(|p| format!("{}={}", p.remote, p.local))
        .collect();
    let body = html! {
        h1 { @if created { "Replication " (o.name) " created" } @else { "New sync token for " (o.name) } }
        div.notice {
            p { strong { "This token is shown once." } " Copy it now and enter it on the other instance." }
            div.copyrow {
                input #sync-token type="text" readonly value=(token) aria-label="sync token";
                button.copy type="button" data-copy="sync-token" { "Copy" }
            }
        }
        h2 { "On the other instance" }
        p { "Configure a new replication there with these values:" }
        dl.values {
            dt { "Communication" } dd { "Outgoing" }
            dt { "URL" } dd { code #peer-url { (origin) } }
            dt { "Token" } dd { "the token above" }
            dt { "Feeds (its local = this side's)" } dd { code { (feeds.join(", ")) } }
            dt { "Replication mode" } dd { code { (o.config.mode.expected_peer()) } }
        }
        p.hint { "From the command line: " code {
            "ferry replication create " (o.name) " "
            @for f in &feeds { "--feed " (f) " " }
            "--outgoing URL --token TOKEN --mode " (o.config.mode.expected_peer())
        } }
        p { a.button href={ "/replications/" (seg(&o.name)) } { "Go to the replication" } }
    };
    page("Sync token", Some(who), Nav::Replication, body)
}

// ------------------------------------------------------------ one replication

async fn detail(
    State(st): State<AppState>,
    who: Signed,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    who.admin()?;
    let o = core_api::replication_overview(&st, &name)
        .await
        .map_err(html_err)?;
    let execs = st.replicator.executions(&name, 50).await.map_err(html_err)?;
    let (tokens, peers) = if o.config.is_outgoing() {
        (Vec::new(), Vec::new())
    } else {
        (
            st.replicator.tokens(&name).await.map_err(html_err)?,
            st.replicator.peers(&name).await.map_err(html_err)?,
        )
    };
    let base = format!("/replications/{}", seg(&name));
    let body = html! {
        div.titlebar {
            h1 { "Replication " (o.name) }
            div.buttons {
                @if o.config.is_outgoing() {
                    form.inline method="post" action={ (base) "/run" } {
                        (csrf_field(&who))
                        input type="hidden" name="back" value="detail";
                        button.primary type="submit" { "Run now" }
                    }
                    @if stoppable(&o) {
                        form.inline method="post" action={ (base) "/stop" } {
                            (csrf_field(&who))
                            input type="hidden" name="back" value="detail";
                            button.danger type="submit" { "Stop" }
                        }
                    }
                    a.button href={ (base) "/plan" } { "Plan" }
                }
                a.button href={ (base) "/edit" } { "Edit" }
                a.button.danger href={ (base) "/delete" } { "Delete…" }
            }
        }
        dl.values {
            dt { "Feeds (local = remote)" } dd { (feeds_of(&o)) }
            dt { "Communication" } dd { (direction(&o)) }
            dt { "Mode" } dd { (o.config.mode.describe()) }
            dt { "State" } dd { (o.status.state)
                @if let Some(r) = &o.running { " · " (progress_text(r)) } }
            @if let Some(e) = &o.status.last_error { dt { "Last error" } dd.error-text { (e) } }
            @if let Some(m) = &o.status.id_shared { dt { "Instance id" } dd.error-text { "The other instance says: " (m) } }
            dt { "Lag" } dd { (lag_text(&o)) }
            @if o.config.is_outgoing() {
                dt { "Interval" } dd { (o.config.interval_secs) " s" }
                dt { "Next run" } dd { (o.status.next_run.as_deref().map(when_text).unwrap_or_else(|| "—".into())) }
            }
            @if o.config.is_outgoing() {
                dt { "Blob sources" }
                dd #blob-sources {
                    @if o.config.blob_sources.is_empty() { "none (every blob comes from the other instance)" }
                    @else { ol { @for s in &o.config.blob_sources { li { code { (s.url) } } } } }
                }
            }
            @if !o.config.include.is_empty() { dt { "Include" } dd { (o.config.include.join(", ")) } }
            @if !o.config.exclude.is_empty() { dt { "Exclude" } dd { (o.config.exclude.join(", ")) } }
            dt { "Bandwidth cap" } dd { (o.config.bandwidth_limit.map(|b| rate(b as f64)).unwrap_or_else(|| "none".into())) }
        }
        @if !o.config.is_outgoing() {
            h2 { "Sync tokens" }
            @if tokens.is_empty() { p.muted { "No tokens. Create one for the instance that will connect." } }
            @else {
                div.table-wrap { table {
                    thead { tr { th { "Token id" } th { "Created" } th { "State" } th {} } }
                    tbody { @for t in &tokens {
                        @let id = t["id"].as_str().map(str::to_owned).unwrap_or_else(|| t["id"].to_string());
                        @let revoked = t["revoked"].as_bool() == Some(true);
                        tr {
                            td { code { (id) } }
                            td { (t["created_at"].as_i64().map(when).unwrap_or_default()) }
                            td { @if revoked { "revoked" } @else { "active" } }
                            td.actions { @if !revoked {
                                (post_button(&who, &format!("{base}/tokens/{}/revoke", seg(&id)), "Revoke", "small danger"))
                            } }
                        }
                    } }
                } }
            }
            (post_button(&who, &format!("{base}/tokens"), "New sync token", ""))
            h2 #peers { "Connected instances" }
            @if peers.is_empty() { p.muted { "No instance has connected yet. Give one of the tokens above to the instance that will replicate with this one." } }
            @else {
                div.table-wrap { table {
                    thead { tr {
                        th { "Instance" } th { "State" } th { "Last contact" } th { "Lag" }
                        th { "Feeds (cursor, behind)" } th { "Version" } th { "Address" } th { "Last error" }
                    } }
                    tbody { @for p in &peers {
                        tr {
                            td { (p.state.name.as_deref().unwrap_or("—")) br; code.muted { (p.state.instance_id) } }
                            td { @if p.stale { span.badge.bad { "stale" } }
                                 @else if p.connected { span.badge.ok { "connected" } }
                                 @else { span.badge { "seen" } }
                                 @if p.id_shared.is_some() { " " span.badge.bad { "id shared" } } }
                            td { (when(p.state.last_contact)) }
                            td { (duration(p.lag_seconds)) }
                            td { @for (feed, f) in &p.state.feeds {
                                (feed) ": " (f.cursor) ", " (f.lag_changes) " behind" br;
                            } }
                            td { (p.state.ferry_version.as_deref().unwrap_or("?")) }
                            td { (p.state.address.as_deref().unwrap_or("?")) }
                            td.error-text {
                                @if let Some(sh) = &p.id_shared { (sh.message) br; }
                                (p.state.last_error.as_ref().map(|e| e.message.as_str()).unwrap_or(""))
                            }
                        }
                    } }
                } }
            }
        }
        h2 { "Executions" }
        (executions_table(&name, &execs, None))
    };
    Ok(page(
        &format!("Replication {name}"),
        Some(&who),
        Nav::Replication,
        body,
    ))
}

fn counts_sum(e: &ExecutionRecord) -> (u64, u64, u64, u64) {
    let mut copied = 0;
    let mut deleted = 0;
    let mut skipped = 0;
    let mut b = 0;
    if let Some(feeds) = e.report["feeds"].as_array() {
        for f in feeds {
            for dir in ["pulled", "pushed"] {
                let c = &f[dir];
                copied += c["added"].as_u64().unwrap_or(0) + c["updated"].as_u64().unwrap_or(0);
                deleted += c["deleted"].as_u64().unwrap_or(0);
                skipped += c["skipped"].as_u64().unwrap_or(0);
                b += c["bytes"].as_u64().unwrap_or(0);
            }
        }
    }
    // Stopped or failed midway: the feed pair it was in is not in `feeds`,
    // but its bytes moved.
    b = b.max(e.report["moved"]["bytes"].as_u64().unwrap_or(0));
    (copied, deleted, skipped, b)
}

fn executions_table(name: &str, execs: &[ExecutionRecord], names: Option<&[String]>) -> Markup {
    html! {
        @if execs.is_empty() { p.muted { "No executions yet." } }
        @else {
            div.table-wrap { table.executions {
                thead { tr {
                    @if names.is_some() { th { "Replication" } }
                    th { "#" } th { "Outcome" } th { "Trigger" } th { "Started" } th { "Took" }
                    th.num { "Copied" } th.num { "Deleted" } th.num { "Skipped" } th.num { "Bytes" }
                } }
                tbody { @for (i, e) in execs.iter().enumerate() {
                    @let n = names.and_then(|ns| ns.get(i)).map(String::as_str).unwrap_or(name);
                    @let (c, d, s, b) = counts_sum(e);
                    tr {
                        @if names.is_some() { td { a href={ "/replications/" (seg(n)) } { (n) } } }
                        td { a href={ "/replications/" (seg(n)) "/executions/" (e.id) } { "#" (e.id) } }
                        td { span class={ "badge " (outcome_class(e.outcome.as_deref())) } { (e.outcome.as_deref().unwrap_or("running")) } }
                        td { (e.trigger) }
                        td { (when(e.started_at)) }
                        td { @if let Some(end) = e.ended_at { (duration((end - e.started_at) as f64 / 1000.0)) } @else { "…" } }
                        td.num { (c) } td.num { (d) } td.num { (s) } td.num { (bytes(b)) }
                    }
                } }
            } }
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ExecFilter {
    level: String,
    outcome: String,
}

/// Log levels a filter may name (empty: every level).
const LEVELS: [&str; 5] = ["trace", "debug", "info", "warn", "error"];
/// Execution outcomes a filter may name (empty: every outcome).
const OUTCOMES: [&str; 6] = [
    "running",
    "succeeded",
    "failed",
    "stopped",
    "needs-confirmation",
    "interrupted",
];

/// A filter's `field` must be empty or one of `allowed`: an unknown value
/// is a 400 naming the ones there are, not an empty list that reads as
/// "nothing happened".
fn check_choice(field: &str, value: &str, allowed: &[&str]) -> Result<(), ApiError> {
    if value.is_empty() || allowed.contains(&value) {
        return Ok(());
    }
    Err(html_err(CoreError::invalid(format!(
        "unknown {field} {value:?}: one of {}",
        allowed.join(", ")
    ))))
}

async fn execution(
    State(st): State<AppState>,
    who: Signed,
    Path((name, id)): Path<(String, i64)>,
    Query(f): Query<ExecFilter>,
) -> Result<Response, ApiError> {
    who.admin()?;
    check_choice("level", &f.level, &LEVELS)?;
    let execs = st.replicator.executions(&name, 200).await.map_err(html_err)?;
    let e = execs.into_iter().find(|e| e.id == id).ok_or_else(|| {
        html_err(CoreError::not_found(format!(
            "execution {id} of replication {name} not found"
        )))
    })?;
    let report = &e.report;
    let lines: Vec<&Value> = report["log"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter(|line| at_least(line["level"].as_str().unwrap_or(""), &f.level))
                .collect()
        })
        .unwrap_or_default();
    let base = format!("/replications/{}", seg(&name));
    let body = html! {
        p.crumbs { a href=(base) { "Replication " (name) } " / execution #" (e.id) }
        div.titlebar {
            h1 { "Execution #" (e.id) " " span class={ "badge " (outcome_class(e.outcome.as_deref())) } { (e.outcome.as_deref().unwrap_or("running")) } }
        }
        dl.values {
            dt { "Trigger" } dd { (e.trigger) }
            dt { "Started" } dd { (when(e.started_at)) }
            dt { "Took" } dd { @if let Some(end) = e.ended_at { (duration((end - e.started_at) as f64 / 1000.0)) } @else { "still running" } }
            @if let Some(err) = report["error"].as_str() { dt { "Error" } dd.error-text { (err) } }
        }
        @if report["needs_confirmation"].as_bool() == Some(true) {
            div.notice.warn {
                p { strong { "Held by the delete guard." } " This run would delete more items than the guard allows, so it stopped before deleting. Check the plan, then confirm to run it with the deletions." }
                a.button href={ (base) "/plan" } { "See the plan" }
                " "
                (post_button(&who, &format!("{base}/confirm"), "Confirm deletions and run", "danger"))
            }
        }
        h2 { "Per feed" }
        (feed_counts(report))
        h2 { "Log" }
        form.filters method="get" {
            label for="level" { "Level (at least)" }
            select #level name="level" {
                option value="" selected[f.level.is_empty()] { "all" }
                @for l in ["debug", "info", "warn", "error"] { option value=(l) selected[f.level == l] { (l) } }
            }
            button type="submit" { "Filter" }
        }
        @if lines.is_empty() { p.muted { "No log lines." } }
        @else {
            div.table-wrap { table.log #log {
                tbody { @for l in &lines {
                    tr class={ "lvl-" (l["level"].as_str().unwrap_or("")) } {
                        td.muted { (l["time"].as_str().unwrap_or("")) }
                        td { (l["level"].as_str().unwrap_or("")) }
                        td { (l["message"].as_str().unwrap_or("")) }
                    }
                } }
            } }
        }
    };
    Ok(page(
        &format!("Execution #{id}"),
        Some(&who),
        Nav::Executions,
        body,
    ))
}

/// A level filter is a minimum: "info" shows info, warn and error.
fn at_least(level: &str, min: &str) -> bool {
    let rank = |l: &str| match l {
        "trace" => 0,
        "debug" => 1,
        "info" => 2,
        "warn" => 3,
        "error" => 4,
        _ => 2,
    };
    min.is_empty() || rank(level) >= rank(min)
}

/// The directions a feed pair's report counts: those the mode runs
/// (`pulls`, `pushes`; a report recorded before they were kept shows
/// both).
fn ran(f: &Value) -> Vec<&'static str> {
    [("pulls", "pulled"), ("pushes", "pushed")]
        .into_iter()
        .filter(|(flag, _)| f[*flag].as_bool().unwrap_or(true))
        .map(|(_, dir)| dir)
        .collect()
}

fn feed_counts(report: &Value) -> Markup {
    let feeds = report["feeds"].as_array().cloned().unwrap_or_default();
    html! {
        @if feeds.is_empty() { p.muted { "Nothing recorded per feed." } }
        @else {
            div.table-wrap { table.counts #counts {
                thead { tr { th { "Feed (local = remote)" } th { "Direction" }
                    th.num { "Copied" } th.num { "Updated" } th.num { "Deleted" } th.num { "Skipped" } th.num { "Conflicts" } th.num { "Bytes" } } }
                tbody { @for f in &feeds { @for dir in ran(f) {
                    @let c = &f[dir];
                    tr {
                        td { (f["local"].as_str().unwrap_or("")) " = " (f["remote"].as_str().unwrap_or("")) }
                        td { (dir) }
                        td.num data-count="copied" { (c["added"].as_u64().unwrap_or(0)) }
                        td.num { (c["updated"].as_u64().unwrap_or(0)) }
                        td.num { (c["deleted"].as_u64().unwrap_or(0)) }
                        td.num { (c["skipped"].as_u64().unwrap_or(0)) }
                        td.num { (c["conflicts"].as_u64().unwrap_or(0)) }
                        td.num { (bytes(c["bytes"].as_u64().unwrap_or(0))) }
                    }
                } } }
            } }
        }
    }
}

async fn all_executions(
    State(st): State<AppState>,
    who: Signed,
    Query(f): Query<ExecFilter>,
) -> Result<Response, ApiError> {
    who.admin()?;
    check_choice("outcome", &f.outcome, &OUTCOMES)?;
    let list = core_api::replication_overviews(&st).await.map_err(html_err)?;
    let mut all: Vec<(String, ExecutionRecord)> = Vec::new();
    for o in &list {
        for e in st.replicator.executions(&o.name, 50).await.map_err(html_err)? {
            all.push((o.name.clone(), e));
        }
    }
    all.retain(|(_, e)| f.outcome.is_empty() || e.outcome.as_deref().unwrap_or("running") == f.outcome);
    all.sort_by_key(|(_, e)| std::cmp::Reverse(e.started_at));
    all.truncate(200);
    let names: Vec<String> = all.iter().map(|(n, _)| n.clone()).collect();
    let execs: Vec<ExecutionRecord> = all.into_iter().map(|(_, e)| e).collect();
    let body = html! {
        h1 { "Executions" }
        form.filters method="get" {
            label for="outcome" { "Outcome" }
            select #outcome name="outcome" {
                option value="" selected[f.outcome.is_empty()] { "all" }
                @for o in OUTCOMES { option value=(o) selected[f.outcome == o] { (o) } }
            }
            button type="submit" { "Filter" }
        }
        @if execs.is_empty() && !f.outcome.is_empty() {
            p.muted { "No executions with outcome " (f.outcome) " among the latest." }
        } @else {
            (executions_table("", &execs, Some(&names)))
        }
    };
    Ok(page("Executions", Some(&who), Nav::Executions, body))
}

async fn new_token(
    State(st): State<AppState>,
    Path(name): Path<String>,
    p: Posted,
) -> Result<Response, ApiError> {
    p.who.admin()?;
    let o = core_api::replication_overview(&st, &name)
        .await
        .map_err(html_err)?;
    let token = st.replicator.new_token(&o.name).await.map_err(html_err)?;
    token_redirect(&st, &p.who, &o.name, token, false).await
}

async fn revoke_token(
    State(st): State<AppState>,
    Path((name, id)): Path<(String, String)>,
    p: Posted,
) -> Result<Response, ApiError> {
    p.who.admin()?;
    st.replicator.revoke_token(&name, &id).await.map_err(html_err)?;
    Ok(Redirect::to(&format!("/replications/{}", seg(&name))).into_response())
}

async fn delete_confirm(
    State(st): State<AppState>,
    who: Signed,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    who.admin()?;
    let o = core_api::replication_overview(&st, &name)
        .await
        .map_err(html_err)?;
    let body = html! {
        h1 { "Delete replication " (o.name) "?" }
        p { "The replication, its sync tokens, cursors and execution history go. "
            "The feeds (" (feeds_of(&o)) ") and their items stay on both instances." }
        form method="post" action={ "/replications/" (seg(&name)) "/delete" } {
            (csrf_field(&who))
            button.danger type="submit" { "Delete replication " (o.name) }
            " " a href={ "/replications/" (seg(&name)) } { "Cancel" }
        }
    };
    Ok(page("Delete replication", Some(&who), Nav::Replication, body))
}

async fn delete(
    State(st): State<AppState>,
    Path(name): Path<String>,
    p: Posted,
) -> Result<Response, ApiError> {
    p.who.admin()?;
    st.replicator.delete(&name).await.map_err(html_err)?;
    Ok(Redirect::to(&format!("/?deleted={}", seg(&name))).into_response())
}

async fn plan(
    State(st): State<AppState>,
    who: Signed,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    who.admin()?;
    let report = st.replicator.plan(&name).await.map_err(html_err)?;
    let report = json!(report);
    let body = html! {
        p.crumbs { a href={ "/replications/" (seg(&name)) } { "Replication " (name) } " / plan" }
        h1 { "What a run would do" }
        p.hint { "Nothing was changed. Counts are what an execution now would copy and delete; below, item by item, with the reason for each item that would not move." }
        (feed_counts(&report))
        @if report["needs_confirmation"].as_bool() == Some(true) {
            div.notice.warn { p { strong { "Held by the delete guard." } " A run would stop before the deletions marked held below until they are confirmed." } }
        }
        @for f in report["feeds"].as_array().map(Vec::as_slice).unwrap_or_default() {
            (plan_items(f))
        }
        h2 { "Details" }
        @if let Some(lines) = report["log"].as_array() {
            div.table-wrap { table.log { tbody { @for l in lines { tr {
                td { (l["level"].as_str().unwrap_or("")) } td { (l["message"].as_str().unwrap_or("")) }
            } } } } }
        }
    };
    Ok(page("Plan", Some(&who), Nav::Replication, body))
}

/// One feed pair's items in a plan: what would move, then what would not
/// and why.
fn plan_items(f: &Value) -> Markup {
    let items = f["plan"]["items"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let total = f["plan"]["total"].as_u64().unwrap_or(0);
    let (moving, staying): (Vec<&Value>, Vec<&Value>) = items.iter().partition(|i| i["action"] != "none");
    let s = |v: &Value, k: &str| v[k].as_str().unwrap_or("").to_owned();
    let to_move = f["pulled"]["bytes"].as_u64().unwrap_or(0) + f["pushed"]["bytes"].as_u64().unwrap_or(0);
    html! {
        h2 { "Feed " (s(f, "local")) " = " (s(f, "remote")) }
        @if total == 0 {
            p.muted { "Nothing to compare: no changes on either side since the last execution." }
        } @else {
            @if total > items.len() as u64 {
                p.hint { "The first " (items.len()) " of " (total) " items are listed." }
            }
            h3 { "Would move (" (moving.len()) ")" }
            @if moving.is_empty() { p.muted { "Nothing." } } @else {
                p #plan-total { "Bytes to move: " strong { (bytes(to_move)) }
                    span.muted { " (blobs the receiving side does not hold yet, each counted once)" } }
                div.table-wrap { table.plan data-plan="move" {
                    thead { tr { th { "Item" } th { "Direction" } th { "Action" } th.num { "Size" } th { "Note" } } }
                    tbody { @for i in &moving { tr {
                        td { code.break { (s(i, "key")) } }
                        td { (s(i, "direction")) }
                        td { span class={ "badge " (if i["action"] == "delete" { "bad" } else { "ok" }) } { (s(i, "action")) } }
                        td.num { @if let Some(n) = i["size"].as_u64() { (bytes(n)) } @else { "—" } }
                        td { (s(i, "why")) }
                    } } }
                } }
            }
            h3 { "Would not move (" (staying.len()) ")" }
            @if staying.is_empty() { p.muted { "Nothing." } } @else {
                div.table-wrap { table.plan data-plan="stay" {
                    thead { tr { th { "Item" } th { "Direction" } th { "Why" } } }
                    tbody { @for i in &staying { tr {
                        td { code.break { (s(i, "key")) } }
                        td { (s(i, "direction")) }
                        td { (s(i, "why")) }
                    } } }
                } }
            }
        }
    }
}

// ------------------------------------------------------------ diagnostics

#[derive(Deserialize, Default)]
#[serde(default)]
struct DiagFilter {
    level: String,
    category: String,
}

async fn diagnostics(
    State(st): State<AppState>,
    who: Signed,
    Query(f): Query<DiagFilter>,
) -> Result<Response, ApiError> {
    who.admin()?;
    check_choice("level", &f.level, &LEVELS)?;
    let d = st.replicator.diag();
    let min = json!(d.min_level()).as_str().unwrap_or("info").to_owned();
    let lines = d.recent(2000);
    let mut categories: Vec<&str> = lines.iter().map(|l| l.category).collect();
    categories.sort_unstable();
    categories.dedup();
    let shown: Vec<_> = lines
        .iter()
        .filter(|l| at_least(json!(l.level).as_str().unwrap_or(""), &f.level))
        .filter(|l| f.category.is_empty() || l.category == f.category)
        .rev()
        .take(500)
        .collect();
    let body = html! {
        h1 { "Diagnostic center" }
        p.hint #diag-scope { "The incoming side's replication log: what other instances asked of this one (handshakes, changes, blobs, refusals), newest first. "
            "What this instance's own executions did is in each execution's log: see "
            a href="/executions" { "Executions" } "." }
        form.filters method="post" action="/diagnostics/level" {
            (csrf_field(&who))
            label for="min-level" { "Record messages from level" }
            select #min-level name="level" {
                @for l in ["debug", "info", "warn", "error"] { option value=(l) selected[min == l] { (l) } }
            }
            button type="submit" { "Change level" }
            span.muted { " now: " strong #current-level { (min) } " (takes effect at once, no restart)" }
        }
        form.filters method="get" {
            label for="f-level" { "Level (at least)" }
            select #f-level name="level" {
                option value="" selected[f.level.is_empty()] { "all" }
                @for l in ["debug", "info", "warn", "error"] { option value=(l) selected[f.level == l] { (l) } }
            }
            label for="f-cat" { "Category" }
            select #f-cat name="category" {
                option value="" selected[f.category.is_empty()] { "all" }
                @for c in &categories { option value=(c) selected[f.category == *c] { (c) } }
            }
            button type="submit" { "Filter" }
        }
        @if shown.is_empty() { div.empty {
            p { "No replication log messages" @if !f.level.is_empty() || !f.category.is_empty() { " match this filter" } "." }
            @if f.level.is_empty() && f.category.is_empty() {
                p.muted { "No other instance has asked anything of this one yet. For outgoing replications, see "
                    a href="/executions" { "Executions" } "." }
            }
        } }
        @else {
            div.table-wrap { table.log #diag { tbody { @for l in &shown { tr {
                td.muted { (l.time) }
                td { (json!(l.level).as_str().unwrap_or("")) }
                td { (l.category) }
                td { (l.message) }
            } } } } }
        }
    };
    Ok(page("Diagnostics", Some(&who), Nav::Diagnostics, body))
}

async fn set_level(State(st): State<AppState>, p: Posted) -> Result<Response, ApiError> {
    p.who.admin()?;
    core_api::set_log_level(&st, p.form.get("level")).map_err(html_err)?;
    Ok(Redirect::to("/diagnostics").into_response())
}

// ------------------------------------------------------------ edit

async fn edit_form(
    State(st): State<AppState>,
    who: Signed,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    who.admin()?;
    let o = core_api::replication_overview(&st, &name)
        .await
        .map_err(html_err)?;
    Ok(edit_page(&who, &o, &EditValues::saved(&o), None, StatusCode::OK))
}

/// What the edit form shows: the saved values, or what was typed when a
/// check failed (so nothing typed is lost but the secrets, which are
/// never put in a page).
struct EditValues {
    url: Option<String>,
    /// The new sync token as typed (empty for saved values); never shown.
    token: String,
    /// Blob sources as (URL, token) rows: saved ones with an empty token,
    /// typed ones as typed. A token is never shown, stored or typed.
    sources: Vec<(String, String)>,
    include: String,
    exclude: String,
    interval: String,
    bandwidth: String,
    carry_downloads: bool,
}

impl EditValues {
    fn saved(o: &Overview) -> EditValues {
        let c = &o.config;
        EditValues {
            url: match &c.communication {
                Communication::Outgoing { url, .. } => Some(url.clone()),
                Communication::Incoming => None,
            },
            token: String::new(),
            sources: c
                .blob_sources
                .iter()
                .map(|b| (b.url.clone(), String::new()))
                .collect(),
            include: c.include.join("\n"),
            exclude: c.exclude.join("\n"),
            interval: c.interval_secs.to_string(),
            bandwidth: c.bandwidth_limit.map(|b| b.to_string()).unwrap_or_default(),
            carry_downloads: c.carry_downloads,
        }
    }

    fn typed(o: &Overview, f: &Fields) -> EditValues {
        let outgoing = o.config.is_outgoing();
        EditValues {
            url: outgoing.then(|| f.get("url").trim().to_owned()),
            token: f.get("token").trim().to_owned(),
            sources: source_rows(f)
                .into_iter()
                .map(|(u, t)| (u.to_owned(), t.to_owned()))
                .collect(),
            include: f.get("include").to_owned(),
            exclude: f.get("exclude").to_owned(),
            interval: f.get("interval").trim().to_owned(),
            bandwidth: f.get("bandwidth").trim().to_owned(),
            carry_downloads: f.on("carry_downloads"),
        }
    }
}

fn edit_page(who: &Signed, o: &Overview, v: &EditValues, msg: Option<&str>, status: StatusCode) -> Response {
    let url = v.url.as_deref();
    let typed = std::iter::once(v.token.as_str()).chain(v.sources.iter().map(|(_, t)| t.as_str()));
    let msg = msg.map(|m| refusal_words(m, typed));
    let msg = msg.as_deref();
    let saved: Vec<String> = o.config.blob_sources.iter().map(|b| b.url.clone()).collect();
    let body = html! {
        p.crumbs { a href={ "/replications/" (seg(&o.name)) } { "Replication " (o.name) } " / edit" }
        h1 { "Edit replication " (o.name) }
        p.hint { "The feeds, the direction and the mode are what the other instance agreed to; to change them, delete the replication and configure a new one." }
        (problem(msg))
        form.card method="post" action={ "/replications/" (seg(&o.name)) "/edit" } {
            (csrf_field(who))
            @if let Some(u) = url {
                div.grid2 {
                    div { label for="url" { "Other instance's URL" } input #url type="url" name="url" value=(u); }
                    div { label for="token" { "New sync token (empty: keep the current one)" }
                        input #token type="password" name="token" autocomplete="off" placeholder="fst_…"; }
                }
            }
            @if url.is_some() {
                fieldset #blob-source-rows {
                    legend { "Blob sources" }
                    // Marks a form that carries the rows: a post without
                    // them (an older page, a script) leaves the sources alone.
                    input type="hidden" name="blob_sources_form" value="1";
                    p.hint { "Other Ferry instances (a site cache, a neighbouring spoke) asked for blobs before this one's peer, in this order; metadata always comes from the peer. \
                        Give each source's URL and a sync token of an incoming replication there. \
                        An empty token keeps the one stored for that URL; an empty URL removes the row." }
                    (source_fields(&v.sources, &saved))
                }
            }
            div.grid2 {
                div { label for="include" { "Include (globs, one a line)" } textarea #include name="include" rows="2" { (v.include) } }
                div { label for="exclude" { "Exclude (globs, one a line)" } textarea #exclude name="exclude" rows="2" { (v.exclude) } }
                @if url.is_some() {
                    div { label for="interval" { "Interval (seconds between runs)" } input #interval type="number" min="1" name="interval" value=(v.interval); }
                }
                div { label for="bandwidth" { "Bandwidth cap (bytes per second, empty: none)" }
                    input #bandwidth type="number" min="1024" name="bandwidth" value=(v.bandwidth); }
            }
            label.check { input type="checkbox" name="carry_downloads" value="1" checked[v.carry_downloads]; " Carry download counts" }
            button.primary type="submit" { "Save changes" }
            " " a href={ "/replications/" (seg(&o.name)) } { "Cancel" }
        }
    };
    let mut resp = page("Edit replication", Some(who), Nav::Replication, body);
    *resp.status_mut() = status;
    resp
}

/// The blob source rows of the wizard and the edit form: each row's URL
/// (as typed or saved) and a token field that is always empty — a token,
/// stored or typed, is never put in a page. A row whose URL is among
/// `saved` says that an empty token keeps the stored one. Up to two empty
/// rows follow, within [`MAX_BLOB_SOURCES`].
fn source_fields(rows: &[(String, String)], saved: &[String]) -> Markup {
    let same = |a: &str, b: &str| a.trim_end_matches('/') == b.trim_end_matches('/');
    let empty = MAX_BLOB_SOURCES.saturating_sub(rows.len()).min(2);
    let urls = rows
        .iter()
        .map(|(u, _)| u.as_str())
        .chain(std::iter::repeat_n("", empty));
    html! {
        @for (i, u) in urls.enumerate() {
            @let keeps = !u.is_empty() && saved.iter().any(|s| same(s, u));
            div.grid2 {
                div { label for={ "source-url-" (i) } { "Source " (i + 1) " URL" }
                    input id={ "source-url-" (i) } type="url" name="source_url" placeholder="http://cache.site:8765" value=(u); }
                div { label for={ "source-token-" (i) } { "Source " (i + 1) " sync token" }
                    input id={ "source-token-" (i) } type="password" name="source_token" autocomplete="off"
                        placeholder=(if keeps { "empty: keep the current one" } else { "fst_…" }); }
            }
        }
    }
}

/// What a refused form says: `msg`, with any of the secrets typed into it
/// cut out (an engine or the other end may quote what it was given), and,
/// when a secret was typed, that it has to be typed again — the form
/// comes back with its token fields empty, since a secret is never put
/// in a page.
fn refusal_words<'a>(msg: &str, typed: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = msg.to_owned();
    let mut any = false;
    for secret in typed.into_iter().filter(|t| !t.is_empty()) {
        any = true;
        out = out.replace(secret, "…");
    }
    if any {
        if !out.trim_end().ends_with(['.', '!', '?']) {
            out = format!("{}.", out.trim_end());
        }
        out.push_str(
            " The sync tokens you typed are not shown again: type them again before you send the form.",
        );
    }
    out
}

/// The blob source rows of the wizard and the edit form, (URL, token)
/// trimmed, rows left wholly empty dropped.
fn source_rows(f: &Fields) -> Vec<(&str, &str)> {
    let urls = f.all("source_url");
    let tokens = f.all("source_token");
    (0..urls.len().max(tokens.len()))
        .map(|i| {
            (
                urls.get(i).map_or("", |u| u.trim()),
                tokens.get(i).map_or("", |t| t.trim()),
            )
        })
        .filter(|(u, t)| !u.is_empty() || !t.is_empty())
        .collect()
}

/// The blob sources the wizard or the edit form asks for, in its order: each row's URL
/// with its token. A row whose token is left empty is sent without one,
/// which keeps the token stored for that URL ([`UpdateRequest`]: as the
/// outgoing token, empty keeps it); the list is checked there.
fn blob_sources(rows: &[(&str, &str)]) -> Result<Vec<BlobSource>, CoreError> {
    rows.iter()
        .enumerate()
        .map(|(i, (url, token))| {
            if url.is_empty() {
                return Err(CoreError::invalid(format!(
                    "Blob source {} has a sync token but no URL: give the source's URL, or clear its token to remove the row.",
                    i + 1
                )));
            }
            Ok(BlobSource {
                url: (*url).to_owned(),
                token: (*token).to_owned(),
            })
        })
        .collect()
}

async fn edit(State(st): State<AppState>, Path(name): Path<String>, p: Posted) -> Result<Response, ApiError> {
    p.who.admin()?;
    let o = core_api::replication_overview(&st, &name)
        .await
        .map_err(html_err)?;
    let f = &p.form;
    let lines = |s: &str| -> Vec<String> {
        s.split([',', '\n'])
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let number = |s: &str, what: &str| -> Result<Option<u64>, CoreError> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(None);
        }
        s.parse()
            .map(Some)
            .map_err(|_| CoreError::invalid(format!("{what} must be a whole number, not {s:?}.")))
    };
    let outgoing = o.config.is_outgoing();
    let interval = if outgoing { f.get("interval") } else { "" };
    let req = number(interval, "The interval").and_then(|interval| {
        let bandwidth = number(f.get("bandwidth"), "The bandwidth cap")?;
        let blob_sources = if outgoing && f.on("blob_sources_form") {
            Some(blob_sources(&source_rows(f))?)
        } else {
            None
        };
        Ok(UpdateRequest {
            blob_sources,
            outgoing: (outgoing && !f.get("url").trim().is_empty()).then(|| f.get("url").trim().to_owned()),
            token: (outgoing && !f.get("token").trim().is_empty()).then(|| f.get("token").trim().to_owned()),
            include: Some(lines(f.get("include"))),
            exclude: Some(lines(f.get("exclude"))),
            interval,
            carry_downloads: Some(f.on("carry_downloads")),
            // 0 removes the cap.
            bandwidth_limit: Some(bandwidth.unwrap_or(0)),
            ..UpdateRequest::default()
        })
    });
    let result = match req {
        Ok(req) => {
            if req.changes_connection()
                && let Err(e) = core_api::check_update(&st, &name, &req).await
            {
                let url = req
                    .outgoing
                    .clone()
                    .unwrap_or_else(|| match &o.config.communication {
                        Communication::Outgoing { url, .. } => url.clone(),
                        Communication::Incoming => String::new(),
                    });
                let (status, words, _) = handshake_words(&e, &url);
                return Ok(edit_page(
                    &p.who,
                    &o,
                    &EditValues::typed(&o, f),
                    Some(&words),
                    status,
                ));
            }
            core_api::update_replication(&st, &name, req).await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(_) => Ok(Redirect::to(&format!("/replications/{}", seg(&name))).into_response()),
        Err(e @ CoreError::Internal(_)) => Err(html_err(e)),
        Err(e) => {
            let status = crate::error::status_of(&e);
            let status = if status.is_client_error() {
                status
            } else {
                StatusCode::BAD_GATEWAY
            };
            Ok(edit_page(
                &p.who,
                &o,
                &EditValues::typed(&o, f),
                Some(&plain(&e)),
                status,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    /// An execution's counts show the directions its mode runs; a report
    /// recorded before reports said which shows both.
    #[test]
    fn counts_show_only_the_directions_that_ran() {
        let zero = json!({"added": 0, "updated": 0, "deleted": 0, "skipped": 0, "conflicts": 0, "bytes": 0});
        let pair = |extra: serde_json::Value| {
            let mut f = json!({"local": "files", "remote": "files", "pulled": zero, "pushed": zero});
            if let (Some(f), Some(extra)) = (f.as_object_mut(), extra.as_object()) {
                f.extend(extra.clone());
            }
            super::feed_counts(&json!({ "feeds": [f] })).into_string()
        };
        let pull = pair(json!({"pulls": true, "pushes": false}));
        assert!(pull.contains(">pulled<") && !pull.contains("pushed"), "{pull}");
        let push = pair(json!({"pulls": false, "pushes": true}));
        assert!(push.contains(">pushed<") && !push.contains("pulled"), "{push}");
        let old = pair(json!({}));
        assert!(old.contains(">pulled<") && old.contains(">pushed<"), "{old}");
    }

    /// A stopped execution's bytes include the feed pair it did not
    /// finish (its report's `moved`), not only the finished ones.
    #[test]
    fn a_stopped_execution_counts_the_bytes_it_moved() {
        let rec = |report: serde_json::Value| ferry_store::ExecutionRecord {
            id: 1,
            replication_id: 1,
            trigger: "manual".into(),
            started_at: 0,
            ended_at: Some(1),
            outcome: Some("stopped".into()),
            report,
        };
        let finished = json!({"pulled": {"added": 2, "bytes": 700}});
        let stopped = rec(json!({"feeds": [finished], "moved": {"changes": 9, "bytes": 5000}}));
        assert_eq!(super::counts_sum(&stopped), (2, 0, 0, 5000));
        let done = rec(json!({"feeds": [finished]}));
        assert_eq!(super::counts_sum(&done), (2, 0, 0, 700));
    }
}
