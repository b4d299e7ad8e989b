//! Feed pages (list, create, delete, a browser per feed and item detail)
//! and API keys. Browsing a feed needs what reading it needs on its own
//! protocol (`auth::authorize_feed`); creating and deleting feeds and keys
//! needs an instance admin key, as on the management API.

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use ferry_core::{Action, CoreError, auth};
use ferry_store::{FeedRecord, ItemRecord};
use ferry_types::{FeedName, FeedType, ItemKey};
use maud::{Markup, html};
use serde::Deserialize;

use super::{Nav, Posted, Signed, bytes, csrf_field, page, post_button, problem, seg, when};
use crate::AppState;
use crate::error::ApiError;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/feeds", get(list).post(create))
        .route("/feeds/{name}", get(browse))
        .route("/feeds/{name}/item", get(item))
        .route("/feeds/{name}/delete", get(delete_confirm).post(delete))
        .route("/keys", get(keys).post(create_key))
        .route("/keys/{name}/revoke", post(revoke_key))
}

fn html_err(e: impl Into<CoreError>) -> ApiError {
    ApiError::html(e)
}

/// The feed named in the URL, if the caller may read it (as on its protocol).
async fn readable(st: &AppState, who: &Signed, name: &str) -> Result<FeedRecord, ApiError> {
    let name = FeedName::new(name).map_err(|e| html_err(CoreError::not_found(e.to_string())))?;
    let found = match st.ferry.feed(&name).await {
        Ok(f) => Some(f),
        Err(CoreError::NotFound(_)) => None,
        Err(e) => return Err(html_err(e)),
    };
    let feed = auth::visible_feed(Some(&who.principal), &name, found, Action::Read).map_err(html_err)?;
    auth::authorize_feed(Some(&who.principal), &feed, Action::Read).map_err(html_err)?;
    Ok(feed)
}

fn origin(st: &AppState, headers: &HeaderMap) -> String {
    crate::public_origin(&st.ferry, headers, None).unwrap_or_else(|_| "http://HOST:PORT".into())
}

/// What a client is given for a feed (the README's table).
fn client_hint(ty: FeedType, origin: &str, feed: &str) -> Markup {
    let host = origin.split_once("://").map_or(origin, |(_, h)| h);
    #[allow(unreachable_patterns)]
    match ty {
        FeedType::Assets => html! {
            pre { "curl -T FILE -H \"Authorization: Bearer KEY\" " (origin) "/assets/" (feed) "/PATH\n"
                  "curl -O " (origin) "/assets/" (feed) "/PATH" }
        },
        FeedType::Npm => html! {
            pre { "npm config set registry " (origin) "/npm/" (feed) "/\n"
                  "# .npmrc\n//" (host) "/npm/" (feed) "/:_authToken=KEY" }
        },
        FeedType::Pypi => html! {
            pre { "pip install --index-url " (origin) "/pypi/" (feed) "/simple/ PACKAGE\n"
                  "twine upload --repository-url " (origin) "/pypi/" (feed) "/ -u ferry -p KEY dist/*" }
        },
        FeedType::Oci => html! {
            pre { "skopeo copy oci:DIR:TAG docker://" (host) "/" (feed) "/NAME:TAG --dest-creds ferry:KEY\n"
                  "image reference: " (host) "/" (feed) "/NAME:TAG" }
        },
        FeedType::Cargo => html! {
            pre { "# .cargo/config.toml\n[registries." (feed) "]\nindex = \"sparse+" (origin) "/cargo/" (feed) "/\"" }
        },
        _ => html! { p.muted { "See the README for this feed type's client configuration." } },
    }
}

struct FeedRow {
    feed: FeedRecord,
    items: usize,
    size: Option<u64>,
    replications: Vec<String>,
}

async fn feed_row(
    st: &AppState,
    feed: FeedRecord,
    repls: &[(String, Vec<String>)],
) -> Result<FeedRow, ApiError> {
    let items = st.ferry.items(&feed, "").await.map_err(html_err)?;
    let mut digests: Vec<_> = items.iter().flat_map(|i| i.blobs.iter().cloned()).collect();
    digests.sort_unstable_by_key(|a| a.to_string());
    digests.dedup();
    let size = if digests.len() <= 5000 {
        let mut total = 0;
        for d in &digests {
            total += st.ferry.blob_size(d).await.map_err(html_err)?.unwrap_or(0);
        }
        Some(total)
    } else {
        None
    };
    let replications = repls
        .iter()
        .filter(|(_, feeds)| feeds.iter().any(|f| f == feed.name.as_str()))
        .map(|(n, _)| n.clone())
        .collect();
    Ok(FeedRow {
        feed,
        items: items.len(),
        size,
        replications,
    })
}

async fn replications_by_feed(st: &AppState, who: &Signed) -> Vec<(String, Vec<String>)> {
    if !who.is_admin() {
        return Vec::new();
    }
    crate::mgmt_replication::replication_overviews(st)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|o| {
            let feeds = o.config.feeds.iter().map(|p| p.local.to_string()).collect();
            (o.name, feeds)
        })
        .collect()
}

#[derive(Default)]
struct NewFeedDraft {
    name: String,
    ty: String,
    private: bool,
}

async fn list(State(st): State<AppState>, who: Signed, headers: HeaderMap) -> Result<Response, ApiError> {
    render_list(
        &st,
        &who,
        &headers,
        &NewFeedDraft::default(),
        None,
        None,
        StatusCode::OK,
    )
    .await
}

async fn render_list(
    st: &AppState,
    who: &Signed,
    headers: &HeaderMap,
    draft: &NewFeedDraft,
    msg: Option<&str>,
    created: Option<&FeedRecord>,
    status: StatusCode,
) -> Result<Response, ApiError> {
    let repls = replications_by_feed(st, who).await;
    let mut rows = Vec::new();
    for f in st.ferry.feeds().await.map_err(html_err)? {
        if auth::may_see(Some(&who.principal), &f)
            && auth::authorize_feed(Some(&who.principal), &f, Action::Read).is_ok()
        {
            rows.push(feed_row(st, f, &repls).await?);
        }
    }
    let origin = origin(st, headers);
    let admin = who.is_admin();
    let body = html! {
        h1 { "Feeds" }
        @if let Some(f) = created {
            div.notice {
                p { "Feed " strong { (f.name) } " (" (f.feed_type.to_string()) ") created. Point clients at it:" }
                (client_hint(f.feed_type, &origin, f.name.as_str()))
            }
        }
        @if rows.is_empty() {
            div.empty { p { "No feeds yet." @if admin { " Create one below." } } }
        } @else {
            div.table-wrap { table #feeds {
                thead { tr { th { "Name" } th { "Type" } th { "Visibility" } th.num { "Items" } th.num { "Stored" } th { "Replications" }
                    @if admin { th { span.sr { "Actions" } } } } }
                tbody { @for r in &rows { tr {
                    td { a href={ "/feeds/" (seg(r.feed.name.as_str())) } { (r.feed.name) } }
                    td { (r.feed.feed_type.to_string()) }
                    td { @if r.feed.private { "private" } @else { "public" } }
                    td.num { (r.items) }
                    td.num { (r.size.map(bytes).unwrap_or_else(|| "—".into())) }
                    td { @if r.replications.is_empty() { span.muted { "none" } } @else {
                        @for (i, n) in r.replications.iter().enumerate() {
                            @if i > 0 { ", " } a href={ "/replications/" (seg(n)) } { (n) }
                        }
                    } }
                    @if admin { td.actions { a.button.small.danger href={ "/feeds/" (seg(r.feed.name.as_str())) "/delete" } { "Delete…" } } }
                } } }
            } }
        }
        @if admin {
            h2 #create { "Create a feed" }
            (problem(msg))
            form.card method="post" action="/feeds" {
                (csrf_field(who))
                div.grid3 {
                    div { label for="feed-name" { "Name" } input #feed-name type="text" name="name" required value=(draft.name) placeholder="e.g. releases"; }
                    div { label for="feed-type" { "Type" } select #feed-type name="type" {
                        @for t in FeedType::ALL { option value=(t.as_str()) selected[draft.ty == t.as_str()] { (t.as_str()) } }
                    } }
                    div { label.check { input type="checkbox" name="private" value="1" checked[draft.private]; " Private (only keys scoped to it may read)" } }
                }
                button.primary type="submit" { "Create feed" }
            }
            details {
                summary { "Client configuration for each type" }
                @for t in FeedType::ALL { h3 { (t.as_str()) } (client_hint(t, &origin, "FEED")) }
            }
        }
    };
    let mut resp = page("Feeds", Some(who), Nav::Feeds, body);
    *resp.status_mut() = status;
    Ok(resp)
}

async fn create(State(st): State<AppState>, headers: HeaderMap, p: Posted) -> Result<Response, ApiError> {
    p.who.admin()?;
    let draft = NewFeedDraft {
        name: p.form.get("name").trim().to_owned(),
        ty: p.form.get("type").to_owned(),
        private: p.form.on("private"),
    };
    match crate::mgmt::new_feed(&st.ferry, &draft.name, &draft.ty, draft.private).await {
        Ok(f) => {
            render_list(
                &st,
                &p.who,
                &headers,
                &NewFeedDraft::default(),
                None,
                Some(&f),
                StatusCode::CREATED,
            )
            .await
        }
        Err(e @ CoreError::Internal(_)) => Err(html_err(e)),
        Err(e) => {
            let status = crate::error::status_of(&e);
            render_list(
                &st,
                &p.who,
                &headers,
                &draft,
                Some(&crate::error::public_message(&e)),
                None,
                status,
            )
            .await
        }
    }
}

async fn delete_confirm(
    State(st): State<AppState>,
    who: Signed,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    who.admin()?;
    let feed = readable(&st, &who, &name).await?;
    let repls = replications_by_feed(&st, &who).await;
    let row = feed_row(&st, feed, &repls).await?;
    let body = html! {
        h1 { "Delete feed " (row.feed.name) "?" }
        div.notice.warn {
            p { "This deletes the " (row.feed.feed_type.to_string()) " feed " strong { (row.feed.name) } " with its "
                strong { (row.items) " items" } @if let Some(s) = row.size { " (" (bytes(s)) ")" } ". It cannot be undone." }
            @if !row.replications.is_empty() {
                p { "Replications that use it: " (row.replications.join(", ")) ". They will fail for this feed until they are changed or deleted." }
            }
            p { "API keys scoped to it lose it." }
        }
        form method="post" action={ "/feeds/" (seg(&name)) "/delete" } {
            (csrf_field(&who))
            button.danger type="submit" { "Delete feed " (row.feed.name) " and its " (row.items) " items" }
            " " a href="/feeds" { "Cancel" }
        }
    };
    Ok(page("Delete feed", Some(&who), Nav::Feeds, body))
}

async fn delete(
    State(st): State<AppState>,
    Path(name): Path<String>,
    p: Posted,
) -> Result<Response, ApiError> {
    p.who.admin()?;
    let name = FeedName::new(&name).map_err(|e| html_err(CoreError::from(e)))?;
    st.ferry.delete_feed(&name).await.map_err(html_err)?;
    Ok(Redirect::to("/feeds").into_response())
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct BrowseQuery {
    prefix: String,
    key: String,
}

/// How a feed type's item keys group: (group, entry) — a package and its
/// version, a folder and its file, a repository and its tag or manifest.
fn group_of(key: &str) -> (String, String) {
    match key.rsplit_once('/') {
        Some((g, e)) => (g.to_owned(), e.to_owned()),
        None => (String::new(), key.to_owned()),
    }
}

fn group_label(ty: FeedType) -> (&'static str, &'static str) {
    #[allow(unreachable_patterns)]
    match ty {
        FeedType::Assets => ("Folder", "File"),
        FeedType::Npm | FeedType::Pypi | FeedType::Cargo => ("Package", "Version / file"),
        FeedType::Oci => ("Repository", "Tag / manifest / blob"),
        _ => ("Group", "Item"),
    }
}

async fn browse(
    State(st): State<AppState>,
    who: Signed,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<BrowseQuery>,
) -> Result<Response, ApiError> {
    let feed = readable(&st, &who, &name).await?;
    let items = st.ferry.items(&feed, &q.prefix).await.map_err(html_err)?;
    let mut groups: BTreeMap<String, Vec<&ItemRecord>> = BTreeMap::new();
    for i in &items {
        groups.entry(group_of(i.key.as_str()).0).or_default().push(i);
    }
    let (glabel, elabel) = group_label(feed.feed_type);
    let origin = origin(&st, &headers);
    let fname = feed.name.to_string();
    let body = html! {
        p.crumbs { a href="/feeds" { "Feeds" } " / " (fname) }
        div.titlebar {
            h1 { (fname) " " span.badge { (feed.feed_type.to_string()) } @if feed.private { " " span.badge.warn { "private" } } }
        }
        details { summary { "Client configuration" } (client_hint(feed.feed_type, &origin, &fname)) }
        form.filters method="get" {
            label for="prefix" { "Key starts with" }
            input #prefix type="text" name="prefix" value=(q.prefix);
            button type="submit" { "Filter" }
        }
        @if items.is_empty() {
            div.empty { p { "This feed holds no items" @if !q.prefix.is_empty() { " under " code { (q.prefix) } } "." } }
        } @else {
            p.muted { (items.len()) " items in " (groups.len()) " " (glabel.to_lowercase()) "s" }
            div.table-wrap { table #items {
                thead { tr { th { (glabel) } th { (elabel) } th.num { "Blobs" } th.num { "Downloads" } th { "Updated" } } }
                tbody { @for (g, list) in &groups { @for (i, it) in list.iter().enumerate() {
                    tr {
                        td { @if i == 0 { strong { (if g.is_empty() { "/" } else { g.as_str() }) } } }
                        td { a href={ "/feeds/" (seg(&fname)) "/item?key=" (seg(it.key.as_str())) } { (group_of(it.key.as_str()).1) } }
                        td.num { (it.blobs.len()) }
                        td.num { (it.downloads) }
                        td.muted { (when(it.updated_at)) }
                    }
                } } }
            } }
        }
    };
    Ok(page(&format!("Feed {fname}"), Some(&who), Nav::Feeds, body))
}

async fn item(
    State(st): State<AppState>,
    who: Signed,
    Path(name): Path<String>,
    Query(q): Query<BrowseQuery>,
) -> Result<Response, ApiError> {
    let feed = readable(&st, &who, &name).await?;
    let key = ItemKey::new(&q.key).map_err(|e| html_err(CoreError::not_found(e.to_string())))?;
    let it = st
        .ferry
        .item(&feed, &key)
        .await
        .map_err(html_err)?
        .ok_or_else(|| {
            html_err(CoreError::not_found(format!(
                "no item {key} in feed {}",
                feed.name
            )))
        })?;
    let mut blobs = Vec::new();
    for d in &it.blobs {
        blobs.push((d.to_string(), st.ferry.blob_size(d).await.map_err(html_err)?));
    }
    let meta = serde_json::to_string_pretty(&it.meta).unwrap_or_default();
    let fname = feed.name.to_string();
    let download = (feed.feed_type == FeedType::Assets).then(|| {
        let path: Vec<String> = it.key.as_str().split('/').map(seg).collect();
        format!("/assets/{}/{}", seg(&fname), path.join("/"))
    });
    let body = html! {
        p.crumbs { a href="/feeds" { "Feeds" } " / " a href={ "/feeds/" (seg(&fname)) } { (fname) } " / item" }
        h1.break { (it.key.as_str()) }
        dl.values {
            dt { "Feed" } dd { (fname) " (" (feed.feed_type.to_string()) ")" }
            dt { "Size" } dd { (bytes(blobs.iter().map(|(_, s)| s.unwrap_or(0)).sum())) }
            dt { "Downloads" } dd { (it.downloads) }
            dt { "Origin instance" } dd { code { (it.stamp.origin.to_string()) } }
            dt { "Stamp" } dd { code { (it.stamp.to_string()) } }
            dt { "Created" } dd { (when(it.created_at)) }
            dt { "Updated" } dd { (when(it.updated_at)) }
            @if let Some(d) = &download { dt { "Download" } dd { a href=(d) download { (d) } } }
        }
        h2 { "Blobs" }
        @if blobs.is_empty() { p.muted { "None." } } @else {
            div.table-wrap { table { thead { tr { th { "Digest" } th.num { "Size" } } }
                tbody { @for (d, s) in &blobs { tr { td { code.break { (d) } } td.num { (s.map(bytes).unwrap_or_else(|| "missing".into())) } } } } } }
        }
        h2 { "Metadata" }
        pre.meta { (meta) }
    };
    Ok(page("Item", Some(&who), Nav::Feeds, body))
}

// ------------------------------------------------------------ API keys

async fn keys(State(st): State<AppState>, who: Signed) -> Result<Response, ApiError> {
    who.admin()?;
    render_keys(&st, &who, None, None, StatusCode::OK).await
}

async fn render_keys(
    st: &AppState,
    who: &Signed,
    msg: Option<&str>,
    created: Option<(&str, &str)>,
    status: StatusCode,
) -> Result<Response, ApiError> {
    let keys = st.ferry.keys().await.map_err(html_err)?;
    let feeds = st.ferry.feeds().await.map_err(html_err)?;
    let body = html! {
        h1 { "API keys" }
        @if let Some((name, secret)) = created {
            div.notice {
                p { "Key " strong { (name) } " created. " strong { "It is shown once" } " — copy it now." }
                div.copyrow {
                    input #new-key type="text" readonly value=(secret) aria-label="new API key";
                    button.copy type="button" data-copy="new-key" { "Copy" }
                }
            }
        }
        div.table-wrap { table #keys {
            thead { tr { th { "Name" } th { "Permission" } th { "Feeds" } th { "Created" } th { span.sr { "Actions" } } } }
            tbody { @for k in &keys { tr {
                td { (k.name) }
                td { (k.permission.as_str()) }
                td { @match &k.feeds {
                    None => "all feeds",
                    Some(fs) if fs.is_empty() => span.muted { "none (its feeds were deleted)" },
                    Some(fs) => (fs.iter().map(|f| f.name.to_string()).collect::<Vec<_>>().join(", ")),
                } }
                td.muted { (when(k.created_at)) }
                td.actions { @if k.id != who.principal.key.id {
                    (post_button(who, &format!("/keys/{}/revoke", seg(&k.name)), "Revoke", "small danger"))
                } @else { span.muted { "this session's key" } } }
            } } }
        } }
        h2 { "Create a key" }
        (problem(msg))
        form.card method="post" action="/keys" {
            (csrf_field(who))
            div.grid3 {
                div { label for="key-name" { "Name" } input #key-name type="text" name="name" required placeholder="e.g. ci-publisher"; }
                div { label for="key-perm" { "Permission" } select #key-perm name="permission" {
                    option value="read" { "read" } option value="write" { "write" } option value="admin" { "admin" }
                } }
                div {
                    fieldset.plain {
                        legend { "Feeds (none ticked: every feed)" }
                        @for f in &feeds { label.check { input type="checkbox" name="feed" value=(f.name); " " (f.name) } }
                    }
                }
            }
            button.primary type="submit" { "Create key" }
        }
    };
    let mut resp = page("API keys", Some(who), Nav::Keys, body);
    *resp.status_mut() = status;
    Ok(resp)
}

async fn create_key(State(st): State<AppState>, p: Posted) -> Result<Response, ApiError> {
    p.who.admin()?;
    let name = p.form.get("name").trim().to_owned();
    let feeds: Vec<String> = p.form.all("feed").into_iter().map(str::to_owned).collect();
    let feeds = (!feeds.is_empty()).then_some(feeds);
    match crate::mgmt::new_key(&st.ferry, &name, p.form.get("permission"), feeds).await {
        Ok((rec, secret)) => {
            render_keys(&st, &p.who, None, Some((&rec.name, &secret)), StatusCode::CREATED).await
        }
        Err(e @ CoreError::Internal(_)) => Err(html_err(e)),
        Err(e) => {
            let status = crate::error::status_of(&e);
            render_keys(&st, &p.who, Some(&crate::error::public_message(&e)), None, status).await
        }
    }
}

async fn revoke_key(
    State(st): State<AppState>,
    Path(name): Path<String>,
    p: Posted,
) -> Result<Response, ApiError> {
    p.who.admin()?;
    st.ferry.delete_key(&name).await.map_err(html_err)?;
    Ok(Redirect::to("/keys").into_response())
}
