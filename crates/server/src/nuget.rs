//! `/nuget/FEED/`: NuGet v3 and v2 (OData) feeds for .NET packages and
//! Chocolatey (Microsoft Learn, "NuGet Server API"; OData v2 Atom as NuGet
//! 2.x and Chocolatey parse it). Configure clients with
//! `http://HOST:PORT/nuget/FEED/v3/index.json` (v3) or
//! `http://HOST:PORT/nuget/FEED/` (v2).
//!
//! | method | path (under `/nuget/FEED/`) | what |
//! | --- | --- | --- |
//! | GET | `v3/index.json` | service index |
//! | PUT | `v3/package`, `api/v2/package`, `` (the v2 root) | push (multipart, file part streamed; or a bare body); 201, 409 if the version exists |
//! | DELETE | `v3/package/{id}/{ver}`, `api/v2/package/{id}/{ver}`, `{id}/{ver}` | unlist (204); with `?hard=true` and an admin key, delete |
//! | POST | `v3/package/{id}/{ver}`, `api/v2/package/{id}/{ver}` | relist |
//! | GET | `v3/flatcontainer/{id}/index.json` | versions (all, lowercase) |
//! | GET, HEAD | `v3/flatcontainer/{id}/{ver}/{id}.{ver}.nupkg`, `…/{id}.nuspec` | package, nuspec |
//! | GET | `v3/registration[-semver2]/{id}/index.json`, `…/{ver}.json`, `…/page/{lo}/{hi}.json` | registration index, leaf, page |
//! | GET | `v3/search?q=&skip=&take=&prerelease=&semVerLevel=` | search |
//! | GET | `v3/autocomplete?q=&id=&skip=&take=&prerelease=&semVerLevel=` | ids, or versions of `id` |
//! | GET | `` , `$metadata` | v2 service document, EDMX |
//! | GET | `Packages()`, `Packages(Id='..',Version='..')`, `FindPackagesById()?id=`, `Search()?searchTerm=&targetFramework=&includePrerelease=`, `GetUpdates()?packageIds=&versions=&includePrerelease=&includeAllVersions=&versionConstraints=` | v2 Atom feeds and entries (`$filter`, `$orderby`, `$skip`, `$top`, `$skiptoken='Id','Version'`, `$inlinecount`, `/$count`, `next` links) |
//! | GET, HEAD | `api/v2/package/{id}/{ver}`, `package/{id}/{ver}`, `Packages(..)/$value` | v2 download |
//!
//! The API key may come as `X-NuGet-ApiKey` (what NuGet clients send),
//! Bearer or basic ([`crate::access`]). Errors are plain text with the
//! status, which NuGet clients show. Every rendered answer is cached until
//! the feed changes, keyed by its URL, with a strong `ETag` (a hash of its
//! bytes) that `If-None-Match` is answered against (304, no body);
//! `.nupkg` downloads are tagged by their digest.

use axum::Router;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use bytes::Bytes;
use ferry_core::CoreError;
use ferry_core::nuget::{self, Stored, V2Query};
use ferry_formats::nuget as format;
use ferry_formats::nuget::odata::unquote;
use ferry_store::{ByteStream, Permission};
use futures::TryStreamExt as _;
use percent_encoding::percent_decode_str;

use crate::AppState;
use crate::access::FeedAccess;
use crate::blobs::{rendered_response, serve_download};
use crate::error::ApiError;

pub fn routes() -> Router<AppState> {
    // The methods NuGet clients use; any other is 405 with `Allow`, before
    // the key is looked at.
    let methods = || -> MethodRouter<AppState> {
        axum::routing::get(dispatch)
            .put(dispatch)
            .delete(dispatch)
            .post(dispatch)
    };
    Router::new()
        .route("/nuget/{feed}", methods())
        .route("/nuget/{feed}/", methods())
        .route("/nuget/{feed}/{*rest}", methods())
}

const XML: &str = "application/atom+xml;type=feed;charset=utf-8";
const JSON: &str = "application/json; charset=utf-8";

/// The query string as `(name, value)` pairs, percent-decoded (`+` as a space).
fn params(uri: &Uri) -> Vec<(String, String)> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| {
                percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (dec(k), dec(v))
        })
        .collect()
}

fn param<'a>(ps: &'a [(String, String)], name: &str) -> Option<&'a str> {
    ps.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn flag(ps: &[(String, String)], name: &str) -> bool {
    param(ps, name).is_some_and(|v| unquote(v).eq_ignore_ascii_case("true"))
}

fn number(ps: &[(String, String)], name: &str) -> Result<Option<usize>, CoreError> {
    match param(ps, name).map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| CoreError::invalid(format!("{name} must be a non-negative number, not {v:?}"))),
    }
}

fn semver2(ps: &[(String, String)]) -> bool {
    param(ps, "semVerLevel").is_some_and(|v| v.trim().starts_with('2'))
}

async fn dispatch(
    State(st): State<AppState>,
    access: FeedAccess,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    req: Request,
) -> Result<Response, ApiError> {
    let feed_prefix = format!("/nuget/{}", access.feed.name);
    let raw = uri.path().strip_prefix(&feed_prefix).unwrap_or_default();
    let rest = percent_decode_str(raw.trim_start_matches('/'))
        .decode_utf8_lossy()
        .into_owned();
    let origin = crate::public_origin(&st.ferry, &headers, uri.authority().map(|a| a.as_str()))?;
    let base = format!("{origin}/nuget/{}", access.feed.name);
    let segs: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    let ps = params(&uri);
    let ctx = Ctx {
        st: &st,
        access: &access,
        base: &base,
        ps: &ps,
        headers: &headers,
        method: &method,
    };
    match method {
        Method::GET | Method::HEAD => ctx.read(&rest, &segs, &uri).await,
        Method::PUT => match segs.as_slice() {
            [""] | ["v3", "package"] | ["api", "v2", "package"] => push(&st, &access, &headers, req).await,
            _ => Err(not_found(&rest)),
        },
        Method::DELETE => match segs.as_slice() {
            ["v3", "package", id, ver] | ["api", "v2", "package", id, ver] | [id, ver] => {
                let hard = match param(&ps, "hard")
                    .map(|v| unquote(v).to_ascii_lowercase())
                    .as_deref()
                {
                    None | Some("" | "false") => false,
                    Some("true") => true,
                    Some(other) => {
                        return Err(CoreError::invalid(format!(
                            "hard={other} is neither true (delete for good) nor false (unlist); nothing was changed"
                        ))
                        .into());
                    }
                };
                if hard {
                    if !may_delete_for_good(access.principal.as_ref(), &access.feed) {
                        return Err(CoreError::Forbidden(
                            "deleting a package for good takes an admin key; without ?hard=true it is unlisted".into(),
                        )
                        .into());
                    }
                    nuget::delete(&st.ferry, &access.feed, id, ver).await?;
                } else {
                    nuget::set_listed(&st.ferry, &access.feed, id, ver, false).await?;
                }
                Ok(StatusCode::NO_CONTENT.into_response())
            }
            _ => Err(not_found(&rest)),
        },
        Method::POST => match segs.as_slice() {
            ["v3", "package", id, ver] | ["api", "v2", "package", id, ver] | [id, ver] => {
                nuget::set_listed(&st.ferry, &access.feed, id, ver, true).await?;
                Ok(StatusCode::OK.into_response())
            }
            _ => Err(not_found(&rest)),
        },
        _ => Err(CoreError::invalid(format!("method {method} is not supported here")).into()),
    }
}

/// Whether `who` may delete a package version for good (not just unlist
/// it): an admin key covering the feed. The API and the web UI ask this.
pub(crate) fn may_delete_for_good(
    who: Option<&ferry_core::Principal>,
    feed: &ferry_store::FeedRecord,
) -> bool {
    who.is_some_and(|p| p.key.permission == Permission::Admin && p.key.covers(feed.id))
}

fn not_found(rest: &str) -> ApiError {
    CoreError::not_found(format!("{rest} is not a resource of this NuGet feed")).into()
}

struct Ctx<'a> {
    st: &'a AppState,
    access: &'a FeedAccess,
    base: &'a str,
    ps: &'a [(String, String)],
    headers: &'a HeaderMap,
    method: &'a Method,
}

impl Ctx<'_> {
    async fn read(&self, rest: &str, segs: &[&str], uri: &Uri) -> Result<Response, ApiError> {
        let ferry = &self.st.ferry;
        let feed = &self.access.feed;
        // Downloads first: they are not rendered.
        let download = match segs {
            ["v3", "flatcontainer", id, ver, file] if file.to_ascii_lowercase().ends_with(".nupkg") => {
                let s = nuget::version(ferry, feed, id, ver).await?;
                if !format::names_package(file, id, &s.item.parsed_version(), ".nupkg") {
                    return Err(not_found(rest));
                }
                Some(s)
            }
            ["api", "v2", "package", id, ver] | ["package", id, ver] => {
                Some(nuget::version(ferry, feed, id, ver).await?)
            }
            [one, "$value"] => match parse_key(one) {
                Some((id, ver)) => Some(nuget::version(ferry, feed, &id, &ver).await?),
                None => None,
            },
            _ => None,
        };
        if let Some(s) = download {
            return self.download(s).await;
        }
        let what = match segs {
            [""] => "application/xml;charset=utf-8",
            ["$metadata"] => "application/xml;charset=utf-8",
            ["v3", "index.json"] => JSON,
            ["v3", "flatcontainer", _, ver, file] if file.to_ascii_lowercase().ends_with(".nuspec") => {
                let _ = ver;
                "application/xml;charset=utf-8"
            }
            ["v3", "flatcontainer", _, "index.json"]
            | ["v3", "registration" | "registration-semver2", _, ..]
            | ["v3", "search" | "autocomplete"] => JSON,
            [one] | [one, "$count"] if v2_function(one).is_some() => {
                if segs.len() == 2 {
                    "text/plain;charset=utf-8"
                } else if one.starts_with("Packages(") && one.len() > "Packages()".len() {
                    "application/atom+xml;type=entry;charset=utf-8"
                } else {
                    XML
                }
            }
            _ => return Err(not_found(rest)),
        };
        let ct = what;
        let cache_key = format!(
            "{}|{}",
            self.base,
            uri.path_and_query().map_or("", |p| p.as_str())
        );
        // Search results and v2 entries show download counts.
        let counted = match segs {
            ["v3", "search"] => true,
            [one] | [one, "$count"] => v2_function(one).is_some(),
            _ => false,
        };
        let answer = nuget::cached(ferry, feed, &cache_key, counted, || async {
            self.render(rest, segs).await
        })
        .await?;
        let mut resp = rendered_response(
            self.method,
            self.headers,
            feed.private,
            answer.body,
            ct,
            answer.etag,
        );
        if ct == XML || ct.starts_with("application/xml") || ct.contains("entry") {
            resp.headers_mut()
                .insert("DataServiceVersion", HeaderValue::from_static("2.0;"));
        }
        Ok(resp)
    }

    async fn download(&self, s: Stored) -> Result<Response, ApiError> {
        let filename = format!("{}.{}.nupkg", s.item.id, s.item.version);
        let resp = serve_download(
            &self.st.ferry,
            self.method,
            self.headers,
            &s.blob()?,
            "application/octet-stream",
            Some(s.modified),
            Some(&filename),
        )
        .await?;
        if *self.method == Method::GET && resp.status() == StatusCode::OK {
            self.st.ferry.count_download(&self.access.feed, &s.item_key()?);
        }
        Ok(resp)
    }

    async fn render(&self, rest: &str, segs: &[&str]) -> Result<Bytes, CoreError> {
        let ferry = &self.st.ferry;
        let feed = &self.access.feed;
        let base = self.base;
        let json = |v: serde_json::Value| Bytes::from(v.to_string());
        let missing = || CoreError::not_found(format!("{rest} not found in feed {}", feed.name));
        match segs {
            [""] => Ok(Bytes::from(format::render_service_document(base))),
            ["$metadata"] => Ok(Bytes::from(format::render_metadata())),
            ["v3", "index.json"] => Ok(json(format::render_service_index(base))),
            ["v3", "flatcontainer", id, "index.json"] => {
                let items: Vec<_> = nuget::package(ferry, feed, id)
                    .await?
                    .into_iter()
                    .map(|s| s.item)
                    .collect();
                if items.is_empty() {
                    return Err(missing());
                }
                Ok(json(format::render_versions(&items)))
            }
            ["v3", "flatcontainer", id, ver, file] => {
                let s = nuget::version(ferry, feed, id, ver).await?;
                if file.to_ascii_lowercase() != format!("{}.nuspec", format::id_key(id)) {
                    return Err(missing());
                }
                Ok(Bytes::from(format::render_nuspec(&s.item)))
            }
            [
                "v3",
                variant @ ("registration" | "registration-semver2"),
                id,
                tail @ ..,
            ] => {
                let reg = format!("{base}/v3/{variant}/");
                let semver2 = *variant == "registration-semver2";
                let items: Vec<_> = nuget::package(ferry, feed, id)
                    .await?
                    .into_iter()
                    .map(|s| s.item)
                    .filter(|i| semver2 || !i.is_semver2())
                    .collect();
                if items.is_empty() {
                    return Err(missing());
                }
                match tail {
                    ["index.json"] => Ok(json(format::render_registration_index(&reg, base, &items))),
                    ["page", lo, hi] => {
                        let hi = hi.strip_suffix(".json").ok_or_else(missing)?;
                        format::render_registration_page(&reg, base, &items, lo, hi)
                            .map(json)
                            .ok_or_else(missing)
                    }
                    [leaf] => {
                        let ver = leaf.strip_suffix(".json").ok_or_else(missing)?;
                        let v = format::NuGetVersion::parse(ver).map_err(|_| missing())?;
                        let item = items
                            .iter()
                            .find(|i| i.parsed_version().key() == v.key())
                            .ok_or_else(missing)?;
                        Ok(json(format::render_registration_leaf(&reg, base, item)))
                    }
                    _ => Err(missing()),
                }
            }
            ["v3", "search"] => {
                let all = nuget::all(ferry, feed).await?;
                let ps = self.ps;
                let reg_variant = if semver2(ps) {
                    "registration-semver2"
                } else {
                    "registration"
                };
                let reg = format!("{base}/v3/{reg_variant}/");
                let (total, groups) = nuget::search(
                    &all,
                    param(ps, "q").unwrap_or_default(),
                    number(ps, "skip")?.unwrap_or(0),
                    number(ps, "take")?.unwrap_or(20),
                    flag(ps, "prerelease"),
                    semver2(ps),
                );
                let data = groups
                    .iter()
                    .map(|g| {
                        let versions: Vec<_> = g.versions.iter().map(|(i, n)| (i, *n)).collect();
                        format::render_search_result(&reg, base, &versions, g.total_downloads)
                    })
                    .collect();
                Ok(json(format::render_search(total, data)))
            }
            ["v3", "autocomplete"] => {
                let all = nuget::all(ferry, feed).await?;
                let ps = self.ps;
                let (total, data) = nuget::autocomplete(
                    &all,
                    param(ps, "q").unwrap_or_default(),
                    param(ps, "id"),
                    number(ps, "skip")?.unwrap_or(0),
                    number(ps, "take")?.unwrap_or(20),
                    flag(ps, "prerelease"),
                    semver2(ps),
                );
                Ok(json(format::render_autocomplete(total, data)))
            }
            [one] | [one, "$count"] => {
                let count_only = segs.len() == 2;
                self.v2(one, count_only).await
            }
            _ => Err(missing()),
        }
    }

    async fn v2(&self, one: &str, count_only: bool) -> Result<Bytes, CoreError> {
        let ferry = &self.st.ferry;
        let feed = &self.access.feed;
        let base = self.base;
        let ps = self.ps;
        let func = v2_function(one).ok_or_else(|| CoreError::not_found(format!("{one} not found")))?;
        let all = nuget::all(ferry, feed).await?;
        let mut q = V2Query {
            filter: param(ps, "$filter").map(str::to_owned),
            orderby: param(ps, "$orderby").map(str::to_owned),
            skip: number(ps, "$skip")?.unwrap_or(0),
            top: number(ps, "$top")?,
            semver2: semver2(ps),
            include_prerelease: flag(ps, "includePrerelease"),
            after: skiptoken(ps)?,
            ..V2Query::default()
        };
        let title;
        match func {
            V2Fn::Entry(id, ver) => {
                if count_only {
                    return Err(CoreError::invalid(
                        "$count counts a collection (Packages(), Search(), …), not one package",
                    ));
                }
                let s = nuget::version(ferry, feed, &id, &ver).await?;
                let mut q1 = V2Query {
                    id: Some(s.item.id.clone()),
                    semver2: true,
                    ..V2Query::default()
                };
                q1.skip = 0;
                let page = nuget::v2_query(&all, &q1)?;
                let e = page
                    .entries
                    .iter()
                    .find(|e| e.item.version == s.item.version)
                    .ok_or_else(|| CoreError::not_found(format!("package {id} {ver} not found")))?;
                return Ok(Bytes::from(format::render_entry(base, e)));
            }
            V2Fn::Packages => {
                title = "Packages";
                q.include_prerelease = true;
            }
            V2Fn::FindPackagesById => {
                title = "FindPackagesById";
                let id = param(ps, "id").map(unquote).unwrap_or_default();
                if id.is_empty() {
                    return Err(CoreError::invalid("FindPackagesById() needs id='…'"));
                }
                q.id = Some(id);
                q.include_prerelease = true;
            }
            V2Fn::Search => {
                title = "Search";
                q.search_term = Some(param(ps, "searchTerm").map(unquote).unwrap_or_default());
                q.target_frameworks = frameworks(param(ps, "targetFramework"));
            }
            V2Fn::GetUpdates => {
                title = "GetUpdates";
                // Positional pairs: the Nth id is installed at the Nth
                // version. An empty element would shift every pair after
                // it, so it is refused, not skipped.
                let ids = param(ps, "packageIds").map(unquote).unwrap_or_default();
                let versions = param(ps, "versions").map(unquote).unwrap_or_default();
                let list = |s: &'_ str| -> Vec<String> {
                    if s.trim().is_empty() {
                        Vec::new()
                    } else {
                        s.split('|').map(|p| p.trim().to_owned()).collect()
                    }
                };
                let (ids, versions) = (list(&ids), list(&versions));
                if ids.len() != versions.len() {
                    return Err(CoreError::invalid(format!(
                        "GetUpdates(): packageIds and versions must pair up, one installed version per id \
                         (`|`-separated): {} ids, {} versions",
                        ids.len(),
                        versions.len()
                    )));
                }
                for (what, list) in [("packageIds", &ids), ("versions", &versions)] {
                    if let Some(at) = list.iter().position(String::is_empty) {
                        return Err(CoreError::invalid(format!(
                            "GetUpdates(): {what} has an empty element at position {}",
                            at + 1
                        )));
                    }
                }
                if let Some(bad) = versions.iter().find(|v| format::NuGetVersion::parse(v).is_err()) {
                    return Err(CoreError::invalid(format!(
                        "GetUpdates(): {bad:?} in versions is not a NuGet version"
                    )));
                }
                // One range per id, `|`-separated, empty for none; no
                // parameter (or an empty one) constrains nothing.
                let constraints = param(ps, "versionConstraints").map(unquote).unwrap_or_default();
                let constraints: Vec<Option<format::VersionRange>> = if constraints.trim().is_empty() {
                    vec![None; ids.len()]
                } else {
                    let parts: Vec<&str> = constraints.split('|').collect();
                    if parts.len() != ids.len() {
                        return Err(CoreError::invalid(format!(
                            "GetUpdates(): versionConstraints must hold one version range per id in packageIds \
                             ({} ids, {} ranges), `|`-separated",
                            ids.len(),
                            parts.len()
                        )));
                    }
                    parts
                        .iter()
                        .map(|c| {
                            (!c.trim().is_empty())
                                .then(|| format::VersionRange::parse(c))
                                .transpose()
                                .map_err(|e| {
                                    CoreError::invalid(format!("GetUpdates(): versionConstraints: {e}"))
                                })
                        })
                        .collect::<Result<_, _>>()?
                };
                let pairs = ids
                    .iter()
                    .zip(&versions)
                    .zip(constraints)
                    .map(|((i, v), c)| (i.clone(), v.clone(), c))
                    .collect();
                q.updates = Some((pairs, flag(ps, "includeAllVersions")));
                q.target_frameworks = frameworks(param(ps, "targetFrameworks"));
            }
        }
        let page = nuget::v2_query(&all, &q)?;
        if count_only {
            return Ok(Bytes::from(page.total.to_string()));
        }
        let next = page.next_skip.map(|skip| {
            let mut kept: Vec<String> = ps
                .iter()
                .filter(|(k, _)| !k.eq_ignore_ascii_case("$skip") && !k.eq_ignore_ascii_case("$top"))
                .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
                .collect();
            kept.push(format!("$skip={skip}"));
            if let Some(top) = q.top {
                kept.push(format!("$top={}", top.saturating_sub(skip - q.skip)));
            }
            format!("{base}/{one}?{}", kept.join("&"))
        });
        let inline = param(ps, "$inlinecount")
            .is_some_and(|v| v == "allpages")
            .then_some(page.total);
        Ok(Bytes::from(format::render_feed(
            base,
            title,
            &page.entries,
            next.as_deref(),
            inline,
            nuget::newest(&all),
        )))
    }
}

/// `$skiptoken='ID','VERSION'`, the form nuget.org's next links carry:
/// continue after that package version. Anything else is 400 with the
/// reason (this feed's own next links page with `$skip`).
fn skiptoken(ps: &[(String, String)]) -> Result<Option<(String, format::NuGetVersion)>, CoreError> {
    let Some(raw) = param(ps, "$skiptoken") else {
        return Ok(None);
    };
    let bad = || {
        CoreError::invalid(format!(
            "$skiptoken must be 'Id','Version' (the package to continue after), not {raw:?}; \
             this feed's next links page with $skip"
        ))
    };
    let (id, version) = raw.trim().split_once(',').ok_or_else(bad)?;
    let quoted = |s: &str| {
        let s = s.trim();
        (s.len() >= 2 && s.starts_with('\'') && s.ends_with('\'')).then(|| s[1..s.len() - 1].to_owned())
    };
    let (id, version) = (quoted(id).ok_or_else(bad)?, quoted(version).ok_or_else(bad)?);
    if id.is_empty() || id.contains('\'') {
        return Err(bad());
    }
    let version = format::NuGetVersion::parse(&version).map_err(|_| bad())?;
    Ok(Some((id, version)))
}

/// `targetFramework='net45'`, `'|net45|net472|'` (NuGet 2.x sends a list
/// between bars), `''`: the frameworks named.
fn frameworks(v: Option<&str>) -> Vec<String> {
    v.map(unquote)
        .unwrap_or_default()
        .split('|')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(str::to_owned)
        .collect()
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC)
        .to_string()
        .replace("%24", "$")
}

enum V2Fn {
    Packages,
    Entry(String, String),
    FindPackagesById,
    Search,
    GetUpdates,
}

fn v2_function(seg: &str) -> Option<V2Fn> {
    match seg {
        "Packages" | "Packages()" => Some(V2Fn::Packages),
        "FindPackagesById" | "FindPackagesById()" => Some(V2Fn::FindPackagesById),
        "Search" | "Search()" => Some(V2Fn::Search),
        "GetUpdates" | "GetUpdates()" => Some(V2Fn::GetUpdates),
        _ => parse_key(seg).map(|(id, v)| V2Fn::Entry(id, v)),
    }
}

/// `Packages(Id='Foo',Version='1.0.0')` → `("Foo", "1.0.0")`.
fn parse_key(seg: &str) -> Option<(String, String)> {
    let inner = seg.strip_prefix("Packages(")?.strip_suffix(')')?;
    let mut id = None;
    let mut version = None;
    for part in inner.split(',') {
        let (k, v) = part.split_once('=')?;
        match k.trim() {
            "Id" => id = Some(unquote(v)),
            "Version" => version = Some(unquote(v)),
            _ => return None,
        }
    }
    Some((id?, version?))
}

/// A push: a multipart form whose file part is the `.nupkg` (what
/// nuget.exe, dotnet and Chocolatey send), or the bare `.nupkg` as body.
/// The file is streamed into staging; the core inspects it.
async fn push(
    st: &AppState,
    access: &FeedAccess,
    headers: &HeaderMap,
    req: Request,
) -> Result<Response, ApiError> {
    let limit = st.ferry.config().max_upload_bytes;
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && len > limit.saturating_add(crate::pypi::FORM_SLACK)
    {
        return Err(
            CoreError::TooLarge(format!("push of {len} bytes exceeds the limit of {limit} bytes")).into(),
        );
    }
    let multipart = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/"));
    let (staged, file_name) = if multipart {
        let (parts, body) = req.into_parts();
        let boundary = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(boundary_of)
            .unwrap_or_default();
        let req = Request::from_parts(parts, tolerate_bare_lf(body, &boundary));
        let mut form = Multipart::from_request(req, st)
            .await
            .map_err(|e| CoreError::invalid(format!("malformed multipart push: {}", e.body_text())))?;
        let mut found = None;
        while let Some(mut field) = form.next_field().await.map_err(crate::pypi::bad_multipart)? {
            if found.is_some() {
                return Err(CoreError::invalid("the push has more than one part; send one .nupkg").into());
            }
            let name = crate::bulk::file_name_of(&field);
            let staged = crate::pypi::stage_field(&st.ferry, &mut field).await?;
            found = Some((staged, name));
        }
        found.ok_or_else(|| CoreError::invalid("the push has no file part carrying the .nupkg"))?
    } else {
        let body: ByteStream = Box::pin(req.into_body().into_data_stream().map_err(std::io::Error::other));
        (st.ferry.stage(body, None).await?, None)
    };
    let item = nuget::push(&st.ferry, &access.feed, staged, file_name.as_deref()).await?;
    Ok((
        StatusCode::CREATED,
        format!("pushed {} {}\n", item.id, item.version),
    )
        .into_response())
}

/// The `boundary` parameter of a multipart content type.
fn boundary_of(content_type: &str) -> Option<String> {
    content_type.split(';').find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_owned())
    })
}

/// nuget.exe 2.x ends its multipart push with `\n--BOUNDARY--` (a bare LF
/// before the closing delimiter, nothing after), which RFC 2046 parsers
/// refuse. This passes the body through unchanged except for that: the
/// last bytes are held back and, when they are such a closing delimiter,
/// the missing CR is put in. Memory: the held-back tail only.
fn tolerate_bare_lf(body: axum::body::Body, boundary: &str) -> axum::body::Body {
    use futures::StreamExt as _;
    let close = format!("\n--{boundary}--").into_bytes();
    let hold = close.len() + 8;
    let stream = body.into_data_stream();
    let fixed = futures::stream::unfold(
        (stream, bytes::BytesMut::new(), false),
        move |(mut s, mut buf, done)| {
            let close = close.clone();
            async move {
                if done {
                    return None;
                }
                loop {
                    match s.next().await {
                        Some(Ok(chunk)) => {
                            buf.extend_from_slice(&chunk);
                            if buf.len() > hold {
                                let out = buf.split_to(buf.len() - hold).freeze();
                                return Some((Ok::<Bytes, std::io::Error>(out), (s, buf, false)));
                            }
                        }
                        Some(Err(e)) => return Some((Err(std::io::Error::other(e)), (s, buf, true))),
                        None => {
                            let end = buf
                                .iter()
                                .rposition(|b| !b.is_ascii_whitespace())
                                .map_or(0, |i| i + 1);
                            if end >= close.len()
                                && buf[end - close.len()..end] == close[..]
                                && (end == close.len() || buf[end - close.len() - 1] != b'\r')
                            {
                                let at = end - close.len();
                                let mut out = bytes::BytesMut::with_capacity(buf.len() + 3);
                                out.extend_from_slice(&buf[..at]);
                                out.extend_from_slice(b"\r");
                                out.extend_from_slice(&buf[at..end]);
                                out.extend_from_slice(b"\r\n");
                                buf = out;
                            }
                            return Some((Ok(buf.freeze()), (s, bytes::BytesMut::new(), true)));
                        }
                    }
                }
            }
        },
    );
    axum::body::Body::from_stream(fixed)
}
