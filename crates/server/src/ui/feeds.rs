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
        .route("/feeds/{name}/item/blob", get(item_blob))
        .route(
            "/feeds/{name}/item/delete",
            get(item_delete_confirm).post(item_delete),
        )
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
        FeedType::Nuget => html! {
            pre { "nuget sources add -Name ferry -Source " (origin) "/nuget/" (feed) "/v3/index.json\n"
                  "nuget push PKG.nupkg -Source " (origin) "/nuget/" (feed) "/v3/index.json -ApiKey KEY\n"
                  "# NuGet 2.x, Chocolatey: " (origin) "/nuget/" (feed) "/" }
        },
        FeedType::Debian => html! {
            pre { "curl -o /etc/apt/keyrings/ferry-" (feed) ".gpg " (origin) "/debian/" (feed) "/key.gpg\n"
                  "echo \"deb [signed-by=/etc/apt/keyrings/ferry-" (feed) ".gpg] " (origin) "/debian/" (feed) " bookworm main\" \\\n"
                  "    > /etc/apt/sources.list.d/ferry-" (feed) ".list\n"
                  "apt-get update\n"
                  "# upload: curl -T PKG.deb -u any:KEY " (origin) "/debian/" (feed) "/upload/bookworm/main" }
        },
        FeedType::Rpm => html! {
            pre { "dnf config-manager --add-repo " (origin) "/rpm/" (feed) "/config.repo\n"
                  "# or: baseurl=" (origin) "/rpm/" (feed) "/ with repo_gpgcheck=1, gpgkey=" (origin) "/rpm/" (feed) "/key.asc\n"
                  "# upload: curl -T PKG.rpm -u any:KEY " (origin) "/rpm/" (feed) "/upload" }
        },
    }
}

struct FeedRow {
    feed: FeedRecord,
    items: u64,
    /// Bytes of the distinct blobs its items name.
    size: u64,
    replications: Vec<String>,
}

async fn feed_row(
    st: &AppState,
    feed: FeedRecord,
    repls: &[(String, Vec<String>)],
) -> Result<FeedRow, ApiError> {
    let usage = st.ferry.feed_usage(&feed).await.map_err(html_err)?;
    let replications = repls
        .iter()
        .filter(|(_, feeds)| feeds.iter().any(|f| f == feed.name.as_str()))
        .map(|(n, _)| n.clone())
        .collect();
    Ok(FeedRow {
        feed,
        items: usage.items,
        size: usage.bytes,
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

async fn list(
    State(st): State<AppState>,
    who: Signed,
    headers: HeaderMap,
    Query(q): Query<BrowseQuery>,
) -> Result<Response, ApiError> {
    let deleted = (!q.deleted.is_empty()).then_some(q.deleted.as_str());
    render_list(
        &st,
        &who,
        &headers,
        &NewFeedDraft::default(),
        (None, deleted),
        StatusCode::OK,
    )
    .await
}

async fn render_list(
    st: &AppState,
    who: &Signed,
    headers: &HeaderMap,
    draft: &NewFeedDraft,
    (msg, deleted): (Option<&str>, Option<&str>),
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
        @if let Some(d) = deleted {
            div.notice role="status" #deleted-notice { p { "Feed " strong { (d) } " deleted, with its items." } }
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
                    td.num { (bytes(r.size)) }
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
        // POST/redirect/GET: the new feed's page, which says it was created.
        Ok(f) => Ok(Redirect::to(&format!("/feeds/{}?created=1", seg(f.name.as_str()))).into_response()),
        Err(e @ CoreError::Internal(_)) => Err(html_err(e)),
        Err(e) => {
            let status = crate::error::status_of(&e);
            render_list(
                &st,
                &p.who,
                &headers,
                &draft,
                (Some(&crate::error::public_message(&e)), None),
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
                strong { (count(row.items, "item")) } " (" (bytes(row.size)) ")" ". It cannot be undone." }
            @if !row.replications.is_empty() {
                p { "Replications that use it: " (row.replications.join(", ")) ". A feed a replication names cannot be deleted: delete those replications first." }
            }
            p { "API keys scoped to it lose it." }
        }
        @if row.replications.is_empty() {
            form method="post" action={ "/feeds/" (seg(&name)) "/delete" } {
                (csrf_field(&who))
                button.danger type="submit" { "Delete feed " (row.feed.name) " and its " (count(row.items, "item")) }
                " " a href="/feeds" { "Cancel" }
            }
        } @else {
            p { a href="/" { "Replications" } " · " a href="/feeds" { "Back to feeds" } }
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
    crate::mgmt::unreplicated(&st, &name).await.map_err(html_err)?;
    st.ferry.delete_feed(&name).await.map_err(html_err)?;
    Ok(Redirect::to(&format!("/feeds?deleted={}", seg(name.as_str()))).into_response())
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct BrowseQuery {
    prefix: String,
    /// Paging: the page starts after this key (key order).
    after: String,
    key: String,
    /// Set by the redirect after the feed was created.
    created: String,
    /// Set by the redirect after an item was deleted: its key.
    deleted: String,
}

/// How a feed type's item keys group: (group, entry) — a package and its
/// version, a folder and its file, a repository and its tag or manifest.
fn group_of(key: &str) -> (String, String) {
    match key.rsplit_once('/') {
        Some((g, e)) => (g.to_owned(), e.to_owned()),
        None => (String::new(), key.to_owned()),
    }
}

/// "1 item", "2 items", "7 repositories".
fn count(n: impl TryInto<u64>, noun: &str) -> String {
    let n: u64 = n.try_into().unwrap_or(u64::MAX);
    if n == 1 {
        format!("1 {noun}")
    } else if let Some(stem) = noun.strip_suffix('y')
        && !stem.ends_with(['a', 'e', 'o', 'u'])
    {
        format!("{n} {stem}ies")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_read_as_english() {
        assert_eq!(super::count(1, "repository"), "1 repository");
        assert_eq!(super::count(7, "repository"), "7 repositories");
        assert_eq!(super::count(2, "item"), "2 items");
        assert_eq!(super::count(3, "key"), "3 keys");
        assert_eq!(super::count(0, "folder"), "0 folders");
    }
}

/// Items on one page of the feed browser.
const BROWSE_PAGE: usize = 200;

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
    // A prefix is the start of a key: held to a key's rules.
    if q.prefix.len() > 1024 || q.prefix.chars().any(char::is_control) {
        return Err(html_err(CoreError::invalid(
            "the key prefix (prefix=) must be at most 1024 bytes without control characters",
        )));
    }
    let after = match q.after.as_str() {
        "" => None,
        a => Some(ItemKey::new(a.to_owned()).map_err(|e| {
            html_err(CoreError::invalid(format!(
                "the page's start (after=) is not an item key: {e}"
            )))
        })?),
    };
    let mut items = st
        .ferry
        .items_page(&feed, &q.prefix, after.as_ref(), BROWSE_PAGE + 1)
        .await
        .map_err(html_err)?;
    let more = items.len() > BROWSE_PAGE;
    items.truncate(BROWSE_PAGE);
    let paged = more || after.is_some();
    // The whole feed's count is kept per change; a prefix's is not counted.
    let total = match (paged, q.prefix.is_empty()) {
        (true, true) => Some(st.ferry.feed_usage(&feed).await.map_err(html_err)?.items),
        _ => None,
    };
    let here = |after: Option<&str>| {
        let mut url = format!("/feeds/{}", seg(feed.name.as_str()));
        let mut sep = '?';
        if !q.prefix.is_empty() {
            url.push_str(&format!("{sep}prefix={}", seg(&q.prefix)));
            sep = '&';
        }
        if let Some(a) = after {
            url.push_str(&format!("{sep}after={}", seg(a)));
        }
        url
    };
    let next = more
        .then(|| items.last().map(|i| here(Some(i.key.as_str()))))
        .flatten();
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
        @if !q.created.is_empty() {
            div.notice role="status" {
                p { "Feed " strong { (fname) } " (" (feed.feed_type.to_string()) ") created. Point clients at it:" }
                (client_hint(feed.feed_type, &origin, &fname))
            }
        }
        @if !q.deleted.is_empty() {
            div.notice role="status" { p { "Deleted " code { (q.deleted) } " from " (fname) "." } }
        }
        details open[!q.created.is_empty()] { summary { "Client configuration" } (client_hint(feed.feed_type, &origin, &fname)) }
        form.filters method="get" {
            label for="prefix" { "Key starts with" }
            input #prefix type="text" name="prefix" value=(q.prefix);
            button type="submit" { "Filter" }
        }
        @if items.is_empty() && after.is_some() {
            div.empty { p { "No more items" @if !q.prefix.is_empty() { " under " code { (q.prefix) } } "." } }
            p.pager { a href=(here(None)) { "First page" } }
        } @else if items.is_empty() {
            div.empty { p { "This feed holds no items" @if !q.prefix.is_empty() { " under " code { (q.prefix) } } "." } }
        } @else {
            p.muted #item-count {
                @if paged { "This page: " }
                (count(items.len(), "item")) " in " (count(groups.len(), &glabel.to_lowercase()))
                @if let Some(t) = total { "; " (count(t, "item")) " in the feed" }
                @if paged { ", in key order" }
            }
            div.table-wrap { table #items {
                thead { tr { th { (glabel) } th { (elabel) } th.num { "Blobs" } th.num { "Downloads" } th { "Updated" } } }
                tbody { @for (g, list) in &groups { @for (i, it) in list.iter().enumerate() {
                    tr {
                        td.long { @if i == 0 { strong { (if g.is_empty() { "/" } else { g.as_str() }) } } }
                        td.long { a href={ "/feeds/" (seg(&fname)) "/item?key=" (seg(it.key.as_str())) } { (group_of(it.key.as_str()).1) } }
                        td.num { (it.blobs.len()) }
                        td.num { (it.downloads) }
                        td.muted { (when(it.modified())) }
                    }
                } } }
            } }
            @if paged {
                nav.pager aria-label="Pages" {
                    @if after.is_some() { a #first-page href=(here(None)) { "First page" } }
                    @if let Some(n) = &next { " " a #next-page rel="next" href=(n) { "Next page" } }
                }
            }
        }
    };
    Ok(page(&format!("Feed {fname}"), Some(&who), Nav::Feeds, body))
}

/// `?key=&digest=` of an item's blob download.
#[derive(Deserialize)]
struct BlobQuery {
    key: String,
    digest: String,
}

/// Downloads one blob of an item, for every feed type (the item page links
/// each of its blobs here): the key must be able to read the feed, and the
/// blob must be one of the item's. Served like every blob (verified as it
/// streams, ranges, conditional requests, the content rule), named after
/// the item's last path segment.
async fn item_blob(
    State(st): State<AppState>,
    who: Signed,
    Path(name): Path<String>,
    Query(q): Query<BlobQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let feed = readable(&st, &who, &name).await?;
    let key = ItemKey::new(&q.key).map_err(|e| html_err(CoreError::not_found(e.to_string())))?;
    let digest: ferry_types::Digest = q
        .digest
        .parse()
        .map_err(|_| html_err(CoreError::invalid("digest must be sha256:<64 hex digits>")))?;
    let it = st.ferry.item(&feed, &key).await.map_err(html_err)?;
    let Some(it) = it.filter(|it| it.blobs.contains(&digest)) else {
        return Err(html_err(CoreError::not_found(format!(
            "item {key} of feed {} has no blob {digest}",
            feed.name
        ))));
    };
    let filename = key.as_str().rsplit('/').next().unwrap_or_default().to_string();
    crate::blobs::serve_download(
        &st.ferry,
        &axum::http::Method::GET,
        &headers,
        &digest,
        "application/octet-stream",
        Some(it.modified()),
        Some(&filename),
    )
    .await
    .map_err(html_err)
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
    // Delete is offered only to a key that may do it (as on the protocol).
    let deletion = match deletion_of(feed.feed_type, &it.key) {
        Ok(d) => may_delete(&who, &feed, &d).is_ok().then_some(Ok(d)),
        Err(why) => auth::authorize_feed(Some(&who.principal), &feed, Action::Write)
            .is_ok()
            .then_some(Err(why)),
    };
    let body = html! {
        p.crumbs { a href="/feeds" { "Feeds" } " / " a href={ "/feeds/" (seg(&fname)) } { (fname) } " / item" }
        div.titlebar {
            h1.break { (it.key.as_str()) }
            @if let Some(Ok(_)) = &deletion {
                div.buttons {
                    a.button.danger href={ "/feeds/" (seg(&fname)) "/item/delete?key=" (seg(it.key.as_str())) } { "Delete…" }
                }
            }
        }
        @if let Some(Err(why)) = &deletion { p.hint { (why) } }
        dl.values {
            dt { "Feed" } dd { (fname) " (" (feed.feed_type.to_string()) ")" }
            dt { "Size" } dd { (bytes(blobs.iter().map(|(_, s)| s.unwrap_or(0)).sum())) }
            dt { "Downloads" } dd { (it.downloads) }
            dt { "Origin instance" } dd { code { (it.stamp.origin.to_string()) } }
            dt { "Stamp" } dd { code { (it.stamp.to_string()) } }
            dt { "Created" } dd { (when(it.created_at)) }
            dt { "Updated" } dd { (when(it.modified())) }
            @if let Some(d) = &download { dt { "Download" } dd { a href=(d) download { (d) } } }
        }
        h2 { "Blobs" }
        @if blobs.is_empty() { p.muted { "None." } } @else {
            div.table-wrap { table { thead { tr { th { "Digest" } th.num { "Size" } } }
                tbody { @for (d, s) in &blobs { tr {
                    td { a href={ "/feeds/" (seg(&fname)) "/item/blob?key=" (seg(it.key.as_str())) "&digest=" (d) } download { code.break { (d) } } }
                    td.num { (s.map(bytes).unwrap_or_else(|| "missing".into())) }
                } } } } }
        }
        h2 { "Metadata" }
        pre.meta { (meta) }
    };
    Ok(page("Item", Some(&who), Nav::Feeds, body))
}

// ------------------------------------------------------------ API keys

async fn keys(State(st): State<AppState>, who: Signed) -> Result<Response, ApiError> {
    who.admin()?;
    let flash = match st.sessions.take_flash(&who.session).await.map_err(html_err)? {
        Some(super::Flash::Key { name, secret }) => Some((name, secret)),
        _ => None,
    };
    render_keys(
        &st,
        &who,
        None,
        flash.as_ref().map(|(n, s)| (n.as_str(), s.as_str())),
        &KeyDraft::default(),
        StatusCode::OK,
    )
    .await
}

/// What the create-key form shows again after a refusal.
#[derive(Default)]
struct KeyDraft {
    name: String,
    permission: String,
    feeds: Vec<String>,
}

async fn render_keys(
    st: &AppState,
    who: &Signed,
    msg: Option<&str>,
    created: Option<(&str, &str)>,
    draft: &KeyDraft,
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
                div { label for="key-name" { "Name" } input #key-name type="text" name="name" required placeholder="e.g. ci-publisher" value=(draft.name); }
                div { label for="key-perm" { "Permission" } select #key-perm name="permission" {
                    @for p in ["read", "write", "admin"] { option value=(p) selected[draft.permission == p] { (p) } }
                } }
                div {
                    fieldset.plain {
                        legend { "Feeds (none ticked: every feed)" }
                        @for f in &feeds { label.check { input type="checkbox" name="feed" value=(f.name)
                            checked[draft.feeds.iter().any(|d| d.as_str() == f.name.as_str())]; " " (f.name) } }
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
    let draft = KeyDraft {
        name: name.clone(),
        permission: p.form.get("permission").to_owned(),
        feeds: feeds.clone(),
    };
    let feeds = (!feeds.is_empty()).then_some(feeds);
    match crate::mgmt::new_key(&st.ferry, &name, p.form.get("permission"), feeds).await {
        Ok((rec, secret)) => {
            // POST/redirect/GET: the key list shows the secret once.
            st.sessions
                .set_flash(
                    &p.who.session,
                    super::Flash::Key {
                        name: rec.name.clone(),
                        secret,
                    },
                )
                .await
                .map_err(html_err)?;
            Ok(Redirect::to("/keys").into_response())
        }
        Err(e @ CoreError::Internal(_)) => Err(html_err(e)),
        Err(e) => {
            let status = crate::error::status_of(&e);
            render_keys(
                &st,
                &p.who,
                Some(&crate::error::public_message(&e)),
                None,
                &draft,
                status,
            )
            .await
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

// ------------------------------------------------------------ item delete

/// The feed type's own delete operation (the one its protocol's DELETE
/// calls in `ferry_core`) that removes one item.
enum Deletion {
    Asset(String),
    PypiFile {
        project: String,
        filename: String,
    },
    OciManifest {
        repo: String,
        reference: String,
    },
    OciBlob {
        repo: String,
        digest: String,
    },
    CargoVersion {
        name: String,
        vers: String,
    },
    NugetVersion {
        id: String,
        ver: String,
    },
    DebianPackage {
        dist: String,
        component: String,
        name: String,
        version: String,
        arch: String,
    },
    RpmPackage {
        name: String,
        evr: String,
        arch: String,
    },
    NpmTag {
        name: String,
        tag: String,
    },
}

impl Deletion {
    /// What the confirmation and the button name.
    fn describe(&self) -> String {
        match self {
            Deletion::Asset(p) => format!("the file {p}"),
            Deletion::PypiFile { project, filename } => format!("the file {filename} of {project}"),
            Deletion::OciManifest { repo, reference } if reference.contains(':') => {
                format!("the manifest {repo}@{reference} (and the tags pointing at it)")
            }
            Deletion::OciManifest { repo, reference } => format!("the tag {repo}:{reference}"),
            Deletion::OciBlob { repo, digest } => format!("the blob {digest} of {repo}"),
            Deletion::CargoVersion { name, vers } => format!("version {vers} of crate {name}"),
            Deletion::NugetVersion { id, ver } => format!("version {ver} of package {id}, for good"),
            Deletion::DebianPackage {
                name,
                version,
                arch,
                dist,
                ..
            } => {
                format!("{name} {version} ({arch}) from {dist}")
            }
            Deletion::RpmPackage { name, evr, arch } => format!("{name}-{evr}.{arch}"),
            Deletion::NpmTag { name, tag } => format!("the dist-tag {tag} of {name}"),
        }
    }

    async fn run(&self, ferry: &ferry_core::Ferry, feed: &FeedRecord) -> Result<(), CoreError> {
        use ferry_core::{assets, cargo, debian, npm, nuget, oci, pypi};
        match self {
            Deletion::Asset(p) => assets::delete(ferry, feed, p).await,
            Deletion::PypiFile { project, filename } => {
                pypi::delete_file(ferry, feed, project, filename).await
            }
            Deletion::OciManifest { repo, reference } => oci::delete_manifest(ferry, feed, repo, reference)
                .await
                .map_err(|e| e.error),
            Deletion::OciBlob { repo, digest } => {
                let named =
                    ferry_formats::oci::parse_digest(digest).map_err(|e| CoreError::invalid(e.message))?;
                oci::delete_blob(ferry, feed, repo, &named)
                    .await
                    .map_err(|e| e.error)
            }
            Deletion::CargoVersion { name, vers } => cargo::delete_version(ferry, feed, name, vers).await,
            Deletion::NugetVersion { id, ver } => nuget::delete(ferry, feed, id, ver).await,
            Deletion::DebianPackage {
                dist,
                component,
                name,
                version,
                arch,
            } => debian::delete(ferry, feed, dist, component, name, version, arch).await,
            Deletion::RpmPackage { name, evr, arch } => {
                ferry_core::rpm::delete(ferry, feed, name, evr, arch).await
            }
            Deletion::NpmTag { name, tag } => npm::delete_dist_tag(ferry, feed, name, tag).await,
        }
    }
}

/// How item `key` of a `ty` feed is deleted, or why the web UI does not
/// offer it (and what does).
fn deletion_of(ty: FeedType, key: &ItemKey) -> Result<Deletion, String> {
    let s = key.as_str();
    let unknown = || format!("{s} is not an item this page can delete");
    #[allow(unreachable_patterns)]
    match ty {
        FeedType::Assets => Ok(Deletion::Asset(s.to_owned())),
        FeedType::Pypi => ferry_formats::pypi::parse_file_key(key)
            .map(|(p, f)| Deletion::PypiFile {
                project: p.to_owned(),
                filename: f.to_owned(),
            })
            .map_err(|_| unknown()),
        FeedType::Oci => match ferry_formats::oci::parse_item_key(key) {
            Some(ferry_formats::oci::OciItemKey::Manifest { repo, digest }) => Ok(Deletion::OciManifest {
                repo,
                reference: digest.to_string(),
            }),
            Some(ferry_formats::oci::OciItemKey::Tag { repo, tag }) => {
                Ok(Deletion::OciManifest { repo, reference: tag })
            }
            Some(ferry_formats::oci::OciItemKey::Blob { repo, digest }) => Ok(Deletion::OciBlob {
                repo,
                digest: digest.to_string(),
            }),
            None => Err(unknown()),
        },
        FeedType::Cargo => ferry_formats::cargo::parse_item_key(key)
            .map(|(n, v)| Deletion::CargoVersion {
                name: n.to_owned(),
                vers: v.to_owned(),
            })
            .map_err(|_| unknown()),
        FeedType::Nuget => ferry_formats::nuget::parse_item_key(key)
            .map(|(i, v)| Deletion::NugetVersion {
                id: i.to_owned(),
                ver: v.to_owned(),
            })
            .map_err(|_| unknown()),
        FeedType::Debian => match s.split('/').collect::<Vec<_>>().as_slice() {
            ["deb", dist, component, name, version, arch] => Ok(Deletion::DebianPackage {
                dist: (*dist).to_owned(),
                component: (*component).to_owned(),
                name: (*name).to_owned(),
                version: (*version).to_owned(),
                arch: (*arch).to_owned(),
            }),
            _ => Err(unknown()),
        },
        FeedType::Rpm => match s.split('/').collect::<Vec<_>>().as_slice() {
            ["rpm", name, evr, arch] => Ok(Deletion::RpmPackage {
                name: (*name).to_owned(),
                evr: (*evr).to_owned(),
                arch: (*arch).to_owned(),
            }),
            _ => Err(unknown()),
        },
        FeedType::Npm => match ferry_formats::npm::parse_item_key(key) {
            Ok(ferry_formats::npm::NpmItemKey::Tag { name, tag }) => Ok(Deletion::NpmTag { name, tag }),
            Ok(ferry_formats::npm::NpmItemKey::Version { name, version }) => Err(format!(
                "npm versions are removed with npm itself: npm unpublish {name}@{version} --registry REGISTRY_URL"
            )),
            _ => Err(unknown()),
        },
        _ => Err(unknown()),
    }
}

/// Whether `who` may run `d` on `feed`: what the feed type's protocol asks
/// for its DELETE (write on the feed; NuGet's delete for good: an admin
/// key covering it).
fn may_delete(who: &Signed, feed: &FeedRecord, d: &Deletion) -> Result<(), ApiError> {
    auth::authorize_feed(Some(&who.principal), feed, Action::Write).map_err(html_err)?;
    if matches!(d, Deletion::NugetVersion { .. })
        && !crate::nuget::may_delete_for_good(Some(&who.principal), feed)
    {
        return Err(html_err(CoreError::Forbidden(
            "deleting a NuGet package version for good takes an admin key".into(),
        )));
    }
    Ok(())
}

/// The feed, the item key and how to delete it, for a caller allowed to.
async fn deletable(
    st: &AppState,
    who: &Signed,
    name: &str,
    key: &str,
) -> Result<(FeedRecord, ItemKey, Deletion), ApiError> {
    let feed = readable(st, who, name).await?;
    let key = ItemKey::new(key).map_err(|e| html_err(CoreError::not_found(e.to_string())))?;
    let d = deletion_of(feed.feed_type, &key).map_err(|m| html_err(CoreError::invalid(m)))?;
    may_delete(who, &feed, &d)?;
    Ok((feed, key, d))
}

async fn item_delete_confirm(
    State(st): State<AppState>,
    who: Signed,
    Path(name): Path<String>,
    Query(q): Query<BrowseQuery>,
) -> Result<Response, ApiError> {
    let (feed, key, d) = deletable(&st, &who, &name, &q.key).await?;
    let fname = feed.name.to_string();
    let back = format!("/feeds/{}/item?key={}", seg(&fname), seg(key.as_str()));
    if st.ferry.item(&feed, &key).await.map_err(html_err)?.is_none() {
        let body = html! {
            p.crumbs { a href="/feeds" { "Feeds" } " / " a href={ "/feeds/" (seg(&fname)) } { (fname) } " / delete item" }
            h1.break { (key.as_str()) " is already gone" }
            div.notice role="status" #already-gone {
                p { "Feed " strong { (fname) } " no longer holds " code { (key.as_str()) } ": it was deleted already. Nothing to do." }
            }
            a.button href={ "/feeds/" (seg(&fname)) } { "Back to " (fname) }
        };
        let mut resp = page("Already gone", Some(&who), Nav::Feeds, body);
        *resp.status_mut() = StatusCode::NOT_FOUND;
        return Ok(resp);
    }
    let body = html! {
        p.crumbs { a href="/feeds" { "Feeds" } " / " a href={ "/feeds/" (seg(&fname)) } { (fname) } " / delete item" }
        h1.break { "Delete " (key.as_str()) "?" }
        div.notice.warn {
            p { "This deletes " strong { (d.describe()) } " from feed " strong { (fname) } ". Clients can no longer download it, "
                "and replications that copy this feed delete it on the other side too. It cannot be undone." }
        }
        form method="post" action={ "/feeds/" (seg(&fname)) "/item/delete" } {
            (csrf_field(&who))
            input type="hidden" name="key" value=(key.as_str());
            button.danger type="submit" { "Delete " (d.describe()) }
            " " a href=(back) { "Cancel" }
        }
    };
    Ok(page("Delete item", Some(&who), Nav::Feeds, body))
}

async fn item_delete(
    State(st): State<AppState>,
    Path(name): Path<String>,
    p: Posted,
) -> Result<Response, ApiError> {
    let (feed, key, d) = deletable(&st, &p.who, &name, p.form.get("key")).await?;
    d.run(&st.ferry, &feed).await.map_err(html_err)?;
    Ok(Redirect::to(&format!(
        "/feeds/{}?deleted={}",
        seg(feed.name.as_str()),
        seg(key.as_str())
    ))
    .into_response())
}
