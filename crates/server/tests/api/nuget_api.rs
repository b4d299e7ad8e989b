//! The NuGet protocol, in process: pushes as nuget.exe, dotnet and
//! Chocolatey send them (multipart with `X-NuGet-ApiKey`), every v3
//! resource (service index, PackagePublish, PackageBaseAddress,
//! registrations with their SemVer 2 variant and paging, search,
//! autocomplete), the v2 OData queries NuGet 2.x and Chocolatey send
//! (request shapes from the NuGet Server API documentation and the
//! clients' v2 feed code: `FindPackagesById()`, `Search()`, `Packages()`
//! with `$filter`/`$orderby`/`$skip`/`$top`, `GetUpdates()`, `next` links),
//! unlist/relist/delete, and the bad pushes a feed must refuse.
#![allow(clippy::unwrap_used)]
use crate::common;

use std::io::Write;

use axum::body::Body;
use axum::http::StatusCode;
use common::{ADMIN, Instance, Reply};
use ferry_store::Permission;
use ferry_types::FeedType;
use serde_json::Value;

const HOST: &str = "nuget.test:5000";
const BASE: &str = "http://nuget.test:5000/nuget/pkgs";
const BOUNDARY: &str = "----ferry-test-boundary";

fn zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data) in entries {
        w.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// A zip of `entries` whose entry named `from` is then renamed `to` in
/// its local and central headers: two entries of one name, which
/// `zip::ZipWriter` would refuse to write.
fn zip_renamed(entries: &[(&str, &[u8])], from: &str, to: &str) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut z = zip(entries);
    let mut renamed = 0;
    for at in 0..z.len().saturating_sub(4) {
        let name_at = match &z[at..at + 4] {
            b"PK\x03\x04" => at + 30,
            b"PK\x01\x02" => at + 46,
            _ => continue,
        };
        if z.get(name_at..name_at + from.len()) == Some(from.as_bytes()) {
            z[name_at..name_at + to.len()].copy_from_slice(to.as_bytes());
            renamed += 1;
        }
    }
    assert_eq!(renamed, 2);
    z
}

fn nuspec(id: &str, version: &str, deps: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<package xmlns="http://schemas.microsoft.com/packaging/2013/05/nuspec.xsd">
  <metadata>
    <id>{id}</id><version>{version}</version><title>{id} title</title>
    <authors>Ferry Team</authors><description>The {id} demo package.</description>
    <tags>ferry demo</tags><projectUrl>https://example.test/{id}</projectUrl>
    <dependencies>{deps}</dependencies>
  </metadata>
</package>"#
    )
}

fn nupkg(id: &str, version: &str, deps: &str) -> Vec<u8> {
    zip(&[
        (&format!("{id}.nuspec"), nuspec(id, version, deps).as_bytes()),
        ("lib/net45/demo.dll", b"MZ not really"),
    ])
}

/// A multipart push body as nuget.exe and dotnet build it: one part named
/// `package`, file name `package.nupkg`.
fn multipart(file_name: &str, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"package\"; filename=\"{file_name}\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    b.extend_from_slice(data);
    b.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    b
}

struct Feed {
    i: Instance,
    key: String,
}

impl Feed {
    async fn new() -> Self {
        Self::with(ferry_core::Config::default(), false).await
    }

    async fn with(cfg: ferry_core::Config, private: bool) -> Self {
        let i = Instance::with_config(cfg).await;
        i.feed("pkgs", FeedType::Nuget, private).await;
        let key = i.key("nuget-ci", Permission::Write, Some(&["pkgs"])).await;
        Self { i, key }
    }

    async fn req(&self, method: &str, path: &str, headers: &[(&str, &str)], body: impl Into<Body>) -> Reply {
        let mut h = vec![("host", HOST)];
        h.extend_from_slice(headers);
        self.i
            .send(method, &format!("/nuget/pkgs/{path}"), None, &h, body)
            .await
    }

    async fn get(&self, path: &str) -> Reply {
        self.req("GET", path, &[], Body::empty()).await
    }

    async fn json(&self, path: &str) -> Value {
        let r = self.get(path).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
        r.json()
    }

    async fn xml(&self, path: &str) -> String {
        let r = self.get(path).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
        r.text()
    }

    /// A push as `nuget push` / `dotnet nuget push` sends it.
    async fn push_to(&self, path: &str, key: Option<&str>, file_name: &str, data: &[u8]) -> Reply {
        let ct = format!("multipart/form-data; boundary={BOUNDARY}");
        let mut h = vec![("content-type", ct.as_str())];
        if let Some(k) = key {
            h.push(("x-nuget-apikey", k));
        }
        self.req("PUT", path, &h, multipart(file_name, data)).await
    }

    async fn push(&self, id: &str, version: &str, deps: &str) {
        let r = self
            .push_to(
                "v3/package",
                Some(&self.key),
                "package.nupkg",
                &nupkg(id, version, deps),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    }
}

fn entries(xml: &str) -> usize {
    xml.matches("<entry>").count()
}

fn versions_in(xml: &str) -> Vec<String> {
    xml.split("<d:Version>")
        .skip(1)
        .map(|s| s.split('<').next().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn service_index_lists_every_resource() {
    let f = Feed::new().await;
    let idx = f.json("v3/index.json").await;
    assert_eq!(idx["version"], "3.0.0");
    let find = |t: &str| {
        idx["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["@type"] == t)
            .unwrap_or_else(|| panic!("no {t}"))["@id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(find("PackagePublish/2.0.0"), format!("{BASE}/v3/package"));
    assert_eq!(
        find("PackageBaseAddress/3.0.0"),
        format!("{BASE}/v3/flatcontainer/")
    );
    assert_eq!(find("RegistrationsBaseUrl"), format!("{BASE}/v3/registration/"));
    assert_eq!(
        find("RegistrationsBaseUrl/3.6.0"),
        format!("{BASE}/v3/registration-semver2/")
    );
    assert_eq!(find("SearchQueryService/3.5.0"), format!("{BASE}/v3/search"));
    assert_eq!(
        find("SearchAutocompleteService"),
        format!("{BASE}/v3/autocomplete")
    );
    // v2 service document and metadata, what NuGet 2.x reads first.
    let doc = f.xml("").await;
    assert!(doc.contains("<collection href=\"Packages\">"), "{doc}");
    let meta = f.xml("$metadata").await;
    for func in ["Search", "FindPackagesById", "GetUpdates"] {
        assert!(
            meta.contains(&format!("FunctionImport Name=\"{func}\"")),
            "{func}"
        );
    }
}

#[tokio::test]
async fn push_then_flat_container_registration_and_downloads() {
    let f = Feed::new().await;
    let pkg = nupkg(
        "Demo.Lib",
        "1.0",
        "<group targetFramework=\"net45\"><dependency id=\"Demo.Base\" version=\"[1.0,2.0)\" /></group>",
    );
    let r = f.push_to("v3/package", Some(&f.key), "package.nupkg", &pkg).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    f.push("Demo.Lib", "1.1.0-beta", "").await;
    // Versions list: lowercase, normalized, ascending.
    let v = f.json("v3/flatcontainer/demo.lib/index.json").await;
    assert_eq!(v["versions"], serde_json::json!(["1.0.0", "1.1.0-beta"]));
    // The .nupkg as pushed, by its lowercase flat-container name.
    let d = f
        .get("v3/flatcontainer/demo.lib/1.0.0/demo.lib.1.0.0.nupkg")
        .await;
    assert_eq!(d.status, StatusCode::OK);
    assert_eq!(d.body, pkg);
    let head = f
        .req(
            "HEAD",
            "v3/flatcontainer/demo.lib/1.0.0/demo.lib.1.0.0.nupkg",
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(head.status, StatusCode::OK);
    let spec = f.get("v3/flatcontainer/demo.lib/1.0.0/demo.lib.nuspec").await;
    assert_eq!(spec.status, StatusCode::OK);
    assert!(
        spec.text().contains("<id>Demo.Lib</id>") && spec.text().contains("id=\"Demo.Base\""),
        "{}",
        spec.text()
    );
    assert_eq!(
        f.get("v3/flatcontainer/demo.lib/9.9.9/demo.lib.9.9.9.nupkg")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        f.get("v3/flatcontainer/nope/index.json").await.status,
        StatusCode::NOT_FOUND
    );
    // Registration: one inlined page, leaves with catalog entries.
    let reg = f.json("v3/registration/Demo.Lib/index.json").await;
    assert_eq!(reg["count"], 1);
    let page = &reg["items"][0];
    assert_eq!(
        (page["lower"].as_str(), page["upper"].as_str()),
        (Some("1.0.0"), Some("1.1.0-beta"))
    );
    let leaf = &page["items"][0];
    assert_eq!(leaf["catalogEntry"]["id"], "Demo.Lib");
    assert_eq!(leaf["catalogEntry"]["version"], "1.0.0");
    assert_eq!(leaf["catalogEntry"]["listed"], true);
    assert_eq!(
        leaf["packageContent"],
        format!("{BASE}/v3/flatcontainer/demo.lib/1.0.0/demo.lib.1.0.0.nupkg")
    );
    let group = &leaf["catalogEntry"]["dependencyGroups"][0];
    assert_eq!(group["targetFramework"], "net45");
    assert_eq!(group["dependencies"][0]["id"], "Demo.Base");
    assert_eq!(group["dependencies"][0]["range"], "[1.0,2.0)");
    let one = f.json("v3/registration/demo.lib/1.0.0.json").await;
    assert_eq!(one["listed"], true);
    assert_eq!(
        one["registration"],
        format!("{BASE}/v3/registration/demo.lib/index.json")
    );
    // The v2 download route serves the same bytes.
    let d2 = f.get("api/v2/package/Demo.Lib/1.0.0").await;
    assert_eq!(d2.body, pkg);
    // Build metadata is not part of identity: 1.0.0+x is 1.0.0.
    let dup = f
        .push_to(
            "v3/package",
            Some(&f.key),
            "package.nupkg",
            &nupkg("DEMO.lib", "1.0.0+build.7", ""),
        )
        .await;
    assert_eq!(dup.status, StatusCode::CONFLICT, "{}", dup.text());
    assert!(dup.text().contains("already exists"));
}

#[tokio::test]
async fn semver2_variant_and_large_registrations_page() {
    let f = Feed::new().await;
    f.push("Paged", "2.0.0-rc.1", "").await;
    // SemVer 1 registration hides the SemVer 2 version; 3.6.0 shows it.
    assert_eq!(
        f.get("v3/registration/paged/index.json").await.status,
        StatusCode::NOT_FOUND
    );
    let r2 = f.json("v3/registration-semver2/paged/index.json").await;
    assert_eq!(r2["items"][0]["upper"], "2.0.0-rc.1");
    for k in 0..129 {
        f.push("Paged", &format!("1.0.{k}"), "").await;
    }
    // 129 SemVer 1 versions: 3 pages, linked, not inlined.
    let reg = f.json("v3/registration/paged/index.json").await;
    assert_eq!(reg["count"], 3);
    assert!(reg["items"][0].get("items").is_none());
    let page_url = reg["items"][1]["@id"].as_str().unwrap();
    let page = f.json(page_url.strip_prefix(&format!("{BASE}/")).unwrap()).await;
    assert_eq!(page["count"], 64);
    assert_eq!(page["items"].as_array().unwrap().len(), 64);
    // A page revalidates like the index; unlisting a version on it moves its tag.
    let page_path = page_url.strip_prefix(&format!("{BASE}/")).unwrap();
    let tag = f.get(page_path).await.header("etag").unwrap().to_owned();
    assert_eq!(
        f.get_if_none_match(page_path, &tag).await.status,
        StatusCode::NOT_MODIFIED
    );
    let on_page = page["items"][0]["catalogEntry"]["version"]
        .as_str()
        .unwrap()
        .to_owned();
    let k = f.key.clone();
    let r = f
        .req(
            "DELETE",
            &format!("v3/package/Paged/{on_page}"),
            &[("x-nuget-apikey", &k)],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let after = f.get_if_none_match(page_path, &tag).await;
    assert_eq!(after.status, StatusCode::OK);
    assert_ne!(after.header("etag"), Some(tag.as_str()));
    assert_eq!(after.json()["items"][0]["catalogEntry"]["listed"], false);
    // v2 FindPackagesById pages by 100 with a next link NuGet follows.
    let first = f.xml("FindPackagesById()?id='Paged'").await;
    assert_eq!(entries(&first), 100);
    let next = first
        .split("<link rel=\"next\" href=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let next = next.replace("&amp;", "&");
    let second = f.xml(next.strip_prefix(&format!("{BASE}/")).unwrap()).await;
    // 29 more SemVer 1 versions; the SemVer 2 one needs semVerLevel=2.0.0.
    assert_eq!(entries(&second), 29, "{next}");
    assert!(!second.contains("rel=\"next\""));
    let all = f
        .xml("FindPackagesById()?id='paged'&semVerLevel=2.0.0&$top=200")
        .await;
    assert_eq!(entries(&all), 100);
}

#[tokio::test]
async fn search_and_autocomplete_as_dotnet_asks() {
    let f = Feed::new().await;
    f.push("Alpha.Core", "1.0.0", "").await;
    f.push("Alpha.Core", "2.0.0-preview", "").await;
    f.push("Beta.Tools", "0.1.0", "").await;
    f.push("Gamma", "1.0.0+meta", "").await;
    // dotnet package search: q, skip, take, prerelease, semVerLevel.
    let s = f
        .json("v3/search?q=alpha&skip=0&take=20&prerelease=true&semVerLevel=2.0.0")
        .await;
    assert_eq!(s["totalHits"], 1);
    assert_eq!(s["data"][0]["id"], "Alpha.Core");
    assert_eq!(s["data"][0]["version"], "2.0.0-preview");
    assert_eq!(s["data"][0]["versions"].as_array().unwrap().len(), 2);
    let s = f.json("v3/search?q=alpha&prerelease=false").await;
    assert_eq!(s["data"][0]["version"], "1.0.0");
    // Everything, SemVer 1 only: Gamma (build metadata) is SemVer 2.
    let s = f.json("v3/search?q=&take=10").await;
    assert_eq!(s["totalHits"], 2);
    let s = f.json("v3/search?q=&take=1&skip=1&semVerLevel=2.0.0").await;
    assert_eq!(s["totalHits"], 3);
    assert_eq!(s["data"].as_array().unwrap().len(), 1);
    assert_eq!(s["data"][0]["id"], "Beta.Tools");
    // Description and tags match too.
    let s = f.json("v3/search?q=demo%20package").await;
    assert_eq!(s["totalHits"], 2);
    let s = f.json("v3/search?q=nothing-like-it").await;
    assert_eq!(s["totalHits"], 0);
    let s = f.json("v3/search?q=ferry").await;
    assert_eq!(s["totalHits"], 2);
    let a = f.json("v3/autocomplete?q=al&prerelease=true").await;
    assert_eq!(a["data"], serde_json::json!(["Alpha.Core"]));
    let a = f.json("v3/autocomplete?id=alpha.core&prerelease=true").await;
    assert_eq!(a["data"], serde_json::json!(["1.0.0", "2.0.0-preview"]));
    assert_eq!(f.get("v3/search?take=x").await.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn unlist_relist_and_hard_delete() {
    let f = Feed::new().await;
    f.push("Gone.Soon", "1.0.0", "").await;
    f.push("Gone.Soon", "1.1.0", "").await;
    // dotnet nuget delete: DELETE {PackagePublish}/{id}/{version} with the key.
    let k = f.key.clone();
    // A `hard` that is neither true nor false changes nothing (it used to
    // unlist, where a client asking `hard=1` meant a delete).
    let r = f
        .req(
            "DELETE",
            "v3/package/Gone.Soon/1.1.0?hard=1",
            &[("x-nuget-apikey", &k)],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(r.text().contains("nothing was changed"), "{}", r.text());
    assert_eq!(f.json("v3/search?q=gone").await["data"][0]["version"], "1.1.0");
    let r = f
        .req(
            "DELETE",
            "v3/package/Gone.Soon/1.1.0",
            &[("x-nuget-apikey", &k)],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    let s = f.json("v3/search?q=gone").await;
    assert_eq!(s["data"][0]["version"], "1.0.0");
    // Still downloadable and in the versions list; listed: false.
    let v = f.json("v3/flatcontainer/gone.soon/index.json").await;
    assert_eq!(v["versions"].as_array().unwrap().len(), 2);
    let leaf = f.json("v3/registration/gone.soon/1.1.0.json").await;
    assert_eq!(leaf["listed"], false);
    assert!(leaf["published"].as_str().unwrap().starts_with("1900"));
    // v2: IsLatestVersion moves back; Packages() leaves it out.
    let latest = f.xml("Packages()?$filter=IsLatestVersion").await;
    assert_eq!(versions_in(&latest), ["1.0.0"]);
    // Relist (nuget.org's POST).
    let r = f
        .req(
            "POST",
            "api/v2/package/Gone.Soon/1.1.0",
            &[("x-nuget-apikey", &k)],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(f.json("v3/search?q=gone").await["data"][0]["version"], "1.1.0");
    // Unlisting needs a key; a hard delete an admin key.
    let r = f
        .req("DELETE", "v3/package/Gone.Soon/1.1.0", &[], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = f
        .req(
            "DELETE",
            "v3/package/Gone.Soon/1.1.0?hard=true",
            &[("x-nuget-apikey", &k)],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = f
        .req(
            "DELETE",
            "v3/package/Gone.Soon/1.1.0?hard=true",
            &[("x-nuget-apikey", ADMIN)],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let v = f.json("v3/flatcontainer/gone.soon/index.json").await;
    assert_eq!(v["versions"], serde_json::json!(["1.0.0"]));
    assert_eq!(
        f.get("api/v2/package/Gone.Soon/1.1.0").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn v2_queries_as_nuget2_and_chocolatey_send_them() {
    let f = Feed::new().await;
    f.push("Choco.App", "1.0.0", "").await;
    f.push(
        "Choco.App",
        "1.2.0",
        "<dependency id=\"Choco.Dep\" version=\"1.0\" />",
    )
    .await;
    f.push("Choco.App", "2.0.0-beta", "").await;
    f.push("Choco.Dep", "1.0.0", "").await;
    f.push("Other", "3.0.0", "").await;
    // nuget.exe 2.x / choco 1.x `list`: Search() with IsLatestVersion.
    let x = f
        .xml("Search()?$filter=IsLatestVersion&$orderby=Id&searchTerm='choco'&targetFramework=''&includePrerelease=false&$skip=0&$top=30")
        .await;
    assert_eq!(versions_in(&x), ["1.2.0", "1.0.0"]);
    assert!(x.contains("<d:Id>Choco.App</d:Id>") && x.contains("<d:Id>Choco.Dep</d:Id>"));
    assert!(
        x.contains("<d:Dependencies>Choco.Dep:1.0:</d:Dependencies>"),
        "{x}"
    );
    assert!(x.contains(&format!(
        "<content type=\"application/zip\" src=\"{BASE}/api/v2/package/Choco.App/1.2.0\" />"
    )));
    assert!(x.contains("<d:PackageHashAlgorithm>SHA512</d:PackageHashAlgorithm>"));
    // Chocolatey 2.x (NuGet.Client v2 feed): prerelease, SemVer 2 level.
    let x = f
        .xml("Search()?$filter=IsAbsoluteLatestVersion&searchTerm='choco.app'&targetFramework=''&includePrerelease=true&$skip=0&$top=30&semVerLevel=2.0.0")
        .await;
    assert_eq!(versions_in(&x), ["2.0.0-beta"]);
    // `/$count` (NuGet 2.x asks it for paging totals).
    assert_eq!(
        f.get("Search()/$count?searchTerm='choco'&includePrerelease=false")
            .await
            .text(),
        "3"
    );
    // Install by id: FindPackagesById (Chocolatey 2.x adds semVerLevel).
    let x = f.xml("FindPackagesById()?id='choco.app'&semVerLevel=2.0.0").await;
    assert_eq!(versions_in(&x), ["1.0.0", "1.2.0", "2.0.0-beta"]);
    assert!(x.contains("<d:IsLatestVersion m:type=\"Edm.Boolean\">true</d:IsLatestVersion>"));
    // Older clients: Packages() with tolower(Id), and the entry by key.
    let x = f
        .xml("Packages()?$filter=(tolower(Id)%20eq%20'choco.app')%20and%20IsLatestVersion")
        .await;
    assert_eq!(versions_in(&x), ["1.2.0"]);
    let x = f.xml("Packages(Id='Choco.App',Version='1.2.0')").await;
    assert!(
        x.starts_with("<?xml") && x.contains("<d:Version>1.2.0</d:Version>"),
        "{x}"
    );
    assert_eq!(
        f.get("Packages(Id='Choco.App',Version='9.0.0')").await.status,
        StatusCode::NOT_FOUND
    );
    let d = f.get("Packages(Id='Choco.App',Version='1.2.0')/$value").await;
    assert_eq!(d.status, StatusCode::OK);
    // substringof/startswith, or, $orderby desc, $skip/$top.
    let x = f
        .xml("Packages()?$filter=substringof('app',tolower(Id))%20or%20startswith(tolower(Id),'oth')&$orderby=Version%20desc&$skip=1&$top=2")
        .await;
    assert_eq!(versions_in(&x), ["2.0.0-beta", "1.2.0"]);
    let x = f
        .xml("Packages()?$filter=IsLatestVersion&$inlinecount=allpages&$top=1")
        .await;
    assert!(x.contains("<m:count>3</m:count>"), "{x}");
    // GetUpdates (choco outdated / nuget update).
    let x = f
        .xml("GetUpdates()?packageIds='Choco.App|Other'&versions='1.0.0|3.0.0'&includePrerelease=false&includeAllVersions=false&targetFrameworks=''&versionConstraints='|'")
        .await;
    assert_eq!(versions_in(&x), ["1.2.0"]);
    let x = f
        .xml("GetUpdates()?packageIds='Choco.App'&versions='1.0.0'&includePrerelease=true&includeAllVersions=true")
        .await;
    assert_eq!(versions_in(&x), ["1.2.0", "2.0.0-beta"]);
    // versionConstraints: one range per id, `|`-separated; the newest
    // update within it (or every one with includeAllVersions).
    let x = f
        .xml("GetUpdates()?packageIds='Choco.App|Other'&versions='1.0.0|3.0.0'&includePrerelease=true&includeAllVersions=false&versionConstraints='(,1.2.0]|'")
        .await;
    assert_eq!(versions_in(&x), ["1.2.0"]);
    let x = f
        .xml("GetUpdates()?packageIds='Choco.App'&versions='1.0.0'&includePrerelease=true&includeAllVersions=true&versionConstraints='[2.0.0-alpha,3.0)'")
        .await;
    assert_eq!(versions_in(&x), ["2.0.0-beta"]);
    let x = f
        .xml("GetUpdates()?packageIds='Choco.App'&versions='1.0.0'&includePrerelease=false&includeAllVersions=false&versionConstraints='(,1.2.0)'")
        .await;
    assert_eq!(versions_in(&x), Vec::<String>::new());
    // $skiptoken='Id','Version' continues after that version.
    let x = f.xml("Packages()?$skiptoken='Choco.App','1.2.0'").await;
    assert!(!versions_in(&x).contains(&"1.2.0".to_string()), "{x}");
    assert!(versions_in(&x).contains(&"2.0.0-beta".to_string()), "{x}");
    // A filter outside the subset is refused, not ignored.
    assert_eq!(
        f.get("Packages()?$filter=evil(Id)").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        f.get("Packages()?$orderby=concat(Title,Id)").await.status,
        StatusCode::BAD_REQUEST
    );
    // Malformed requests are 400 with the reason, never an answer that
    // looks like one to the question asked.
    for (path, says) in [
        ("Packages()?$orderby=Id%20desc%20extra", "after the direction"),
        (
            "GetUpdates()?packageIds='Choco.App'&versions='garbage'",
            "not a NuGet version",
        ),
        (
            "Packages(Id='Choco.App',Version='1.2.0')/$count",
            "counts a collection",
        ),
        (
            "GetUpdates()?packageIds='Choco.App'&versions='1.0.0'&versionConstraints='garbage'",
            "versionConstraints",
        ),
        (
            "GetUpdates()?packageIds='Choco.App'&versions='1.0.0'&versionConstraints='[1.0,2.0)|[1.0,)'",
            "one version range per id",
        ),
        (
            "GetUpdates()?packageIds='Choco.App'&versions='1.0.0'&versionConstraints='1.0.*'",
            "floating",
        ),
        ("Packages()?$skiptoken=garbage", "$skiptoken"),
        ("Packages()?$skiptoken='Choco.App','nope'", "$skiptoken"),
        (
            "Packages()?$skiptoken='Choco.App','1.0.0'&$orderby=Id",
            "cannot be used with $orderby",
        ),
    ] {
        let r = f.get(path).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}: {}", r.text());
        assert!(r.text().contains(says), "{path}: {}", r.text());
    }
}

/// `GetUpdates()` answers every id/version pair it is given, also the
/// same id twice (projects on different versions, or with different
/// ranges); pairs that do not line up are refused naming the counts or
/// the empty element, never paired off by position after a gap.
#[tokio::test]
async fn get_updates_answers_each_pair_and_refuses_pairs_that_do_not_line_up() {
    let f = Feed::new().await;
    for v in ["1.0.0", "1.1.0", "1.5.0", "2.0.0", "3.0.0"] {
        f.push("Lib.A", v, "").await;
    }
    f.push("Lib.B", "1.0.0", "").await;
    f.push("Lib.B", "4.0.0", "").await;
    let ask = |ids: &str, versions: &str, rest: &str| {
        format!("GetUpdates()?packageIds='{ids}'&versions='{versions}'&includePrerelease=false{rest}")
    };
    // Each pair alone, then together: the answer is the union of theirs.
    let x = f
        .xml(&ask("Lib.A|Lib.B", "1.0.0|1.0.0", "&includeAllVersions=false"))
        .await;
    assert_eq!(versions_in(&x), ["3.0.0", "4.0.0"], "{x}");
    // The same id twice, with a range on the first: each pair's newest
    // update, not only the first pair's.
    let x = f
        .xml(&ask(
            "Lib.A|Lib.A",
            "1.0.0|2.0.0",
            "&includeAllVersions=false&versionConstraints='[1.0.0,2.0.0)|'",
        ))
        .await;
    assert_eq!(versions_in(&x), ["1.5.0", "3.0.0"], "{x}");
    // includeAllVersions: every update of any pair, each version once.
    let x = f
        .xml(&ask("Lib.A|Lib.A", "2.0.0|1.1.0", "&includeAllVersions=true"))
        .await;
    assert_eq!(versions_in(&x), ["1.5.0", "2.0.0", "3.0.0"], "{x}");
    // A pair already up to date answers nothing; the other still answers.
    let x = f
        .xml(&ask("Lib.A|Lib.B", "3.0.0|1.0.0", "&includeAllVersions=false"))
        .await;
    assert_eq!(versions_in(&x), ["4.0.0"], "{x}");
    for (ids, versions, says) in [
        ("Lib.A|Lib.B", "1.0.0", "2 ids, 1 versions"),
        ("Lib.A", "1.0.0|2.0.0", "1 ids, 2 versions"),
        ("Lib.A||Lib.B", "1.0.0|2.0.0", "3 ids, 2 versions"),
        (
            "Lib.A||Lib.B",
            "1.0.0|1.0.0|1.0.0",
            "packageIds has an empty element at position 2",
        ),
        (
            "Lib.A|Lib.B",
            "1.0.0|",
            "versions has an empty element at position 2",
        ),
    ] {
        let path = ask(ids, versions, "");
        let r = f.get(&path).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}: {}", r.text());
        assert!(r.text().contains(says), "{path}: {}", r.text());
    }
}

#[tokio::test]
async fn pushes_by_every_client_route() {
    let f = Feed::new().await;
    // NuGet 2.x with the source as the feed root; Chocolatey with /api/v2/package.
    let r = f
        .push_to(
            "",
            Some(&f.key),
            "package.nupkg",
            &nupkg("Root.Push", "1.0.0", ""),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let r = f
        .push_to(
            "api/v2/package/",
            Some(&f.key),
            "Api.Push.1.0.0.nupkg",
            &nupkg("Api.Push", "1.0.0", ""),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    // nuget.exe 2.8.7's exact shape (captured from it): file name
    // `package`, and a bare LF before the closing delimiter, nothing after.
    let data = nupkg("Old.Client", "1.0.0", "");
    let mut body = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"package\"; filename=\"package\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&data);
    body.extend_from_slice(format!("\n--{BOUNDARY}--").as_bytes());
    let ct = format!("multipart/form-data; boundary={BOUNDARY}");
    let k = f.key.clone();
    let r = f
        .req("PUT", "", &[("content-type", &ct), ("x-nuget-apikey", &k)], body)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let d = f.get("api/v2/package/Old.Client/1.0.0").await;
    assert_eq!(d.body, data, "the stored .nupkg is the file part exactly");
    // A bare body (no multipart) with a Bearer key.
    let bare = nupkg("Bare.Push", "1.0.0", "");
    let auth = format!("Bearer {}", f.key);
    let r = f
        .req("PUT", "v3/package", &[("authorization", &auth)], bare)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let s = f.json("v3/search?q=push").await;
    assert_eq!(s["totalHits"], 3);
    assert_eq!(f.json("v3/search?q=old.client").await["totalHits"], 1);
}

#[tokio::test]
async fn bad_pushes_are_refused_and_store_nothing() {
    let cfg = ferry_core::Config {
        archive: ferry_formats::ArchiveLimits {
            max_unpacked_bytes: 64 << 10,
            ..Default::default()
        },
        ..Default::default()
    };
    let f = Feed::with(cfg, false).await;
    let reader = f.i.key("reader", Permission::Read, Some(&["pkgs"])).await;
    let good = nupkg("Good.One", "1.0.0", "");
    let bad = |status: StatusCode, says: &'static str| {
        move |r: Reply| {
            assert_eq!(r.status, status, "{}", r.text());
            assert!(r.text().contains(says), "{says:?} not in {:?}", r.text());
        }
    };
    let k = f.key.clone();
    bad(StatusCode::UNAUTHORIZED, "")(f.push_to("v3/package", None, "package.nupkg", &good).await);
    bad(StatusCode::FORBIDDEN, "")(
        f.push_to("v3/package", Some(&reader), "package.nupkg", &good)
            .await,
    );
    bad(StatusCode::FORBIDDEN, "API key")(
        f.push_to("v3/package", Some("wrong-key"), "package.nupkg", &good)
            .await,
    );
    bad(StatusCode::BAD_REQUEST, "the package is not a valid zip archive")(
        f.push_to("v3/package", Some(&k), "package.nupkg", b"hello").await,
    );
    let none = zip(&[("lib/a.dll", b"x")]);
    bad(StatusCode::BAD_REQUEST, "no .nuspec")(
        f.push_to("v3/package", Some(&k), "package.nupkg", &none).await,
    );
    let spec = nuspec("Two.Specs", "1.0.0", "");
    let two = zip(&[("a.nuspec", spec.as_bytes()), ("b.nuspec", spec.as_bytes())]);
    bad(StatusCode::BAD_REQUEST, "more than one .nuspec")(
        f.push_to("v3/package", Some(&k), "package.nupkg", &two).await,
    );
    let bad_id = zip(&[("x.nuspec", nuspec("bad id!", "1.0.0", "").as_bytes())]);
    bad(StatusCode::BAD_REQUEST, "invalid package id")(
        f.push_to("v3/package", Some(&k), "package.nupkg", &bad_id).await,
    );
    let bad_v = zip(&[("x.nuspec", nuspec("Fine", "1.x", "").as_bytes())]);
    bad(StatusCode::BAD_REQUEST, "invalid version")(
        f.push_to("v3/package", Some(&k), "package.nupkg", &bad_v).await,
    );
    bad(StatusCode::BAD_REQUEST, "does not match")(
        f.push_to("v3/package", Some(&k), "Other.Name.1.0.0.nupkg", &good)
            .await,
    );
    let trav = zip(&[
        ("Good.One.nuspec", nuspec("Good.One", "1.0.0", "").as_bytes()),
        ("../../etc/x", b"x"),
    ]);
    bad(StatusCode::BAD_REQUEST, "unsafe path")(
        f.push_to("v3/package", Some(&k), "package.nupkg", &trav).await,
    );
    // A bomb: 1 MiB of zeros compresses to ~1 KiB, over the 64 KiB limit.
    let zeros = vec![0u8; 1 << 20];
    let bomb = zip(&[
        ("Good.One.nuspec", nuspec("Good.One", "1.0.0", "").as_bytes()),
        ("big.bin", &zeros),
    ]);
    assert!(bomb.len() < 16 << 10);
    bad(StatusCode::PAYLOAD_TOO_LARGE, "expands")(
        f.push_to("v3/package", Some(&k), "package.nupkg", &bomb).await,
    );
    // A second root nuspec of the same name, which the zip reader alone
    // would hide (it keeps the last entry of a name): refused.
    let evil = nuspec("Evil.One", "6.6.6", "");
    let twice = zip_renamed(
        &[
            ("Good.One.nuspec", nuspec("Good.One", "1.0.0", "").as_bytes()),
            ("Good.One.nuspeX", evil.as_bytes()),
        ],
        "Good.One.nuspeX",
        "Good.One.nuspec",
    );
    bad(StatusCode::BAD_REQUEST, "two entries named \"Good.One.nuspec\"")(
        f.push_to("v3/package", Some(&k), "package.nupkg", &twice).await,
    );
    // Two root nuspecs whose names differ in case only (one file where
    // NuGet unpacks on Windows).
    let cased = zip(&[
        ("Good.One.nuspec", nuspec("Good.One", "1.0.0", "").as_bytes()),
        ("good.one.NUSPEC", evil.as_bytes()),
    ]);
    bad(
        StatusCode::BAD_REQUEST,
        "two entries named \"good.one.NUSPEC\" (compared without case)",
    )(f.push_to("v3/package", Some(&k), "package.nupkg", &cased).await);
    // A dependency range or group framework that would forge entries in
    // v2's `Dependencies` (`id:range:framework|…`): refused.
    let forged = nupkg(
        "Forged.Deps",
        "1.0.0",
        "<dependency id=\"Good.Dep\" version=\"1.0|Evil:6.6.6:net45\" />",
    );
    bad(StatusCode::BAD_REQUEST, "invalid version range")(
        f.push_to("v3/package", Some(&k), "package.nupkg", &forged).await,
    );
    let forged = nupkg(
        "Forged.Group",
        "1.0.0",
        "<group targetFramework=\"net45|Evil:1.0\"><dependency id=\"Good.Dep\" version=\"1.0\" /></group>",
    );
    bad(StatusCode::BAD_REQUEST, "invalid targetFramework")(
        f.push_to("v3/package", Some(&k), "package.nupkg", &forged).await,
    );
    // Nothing stored, nothing left in staging.
    let s = f.json("v3/search?q=&semVerLevel=2.0.0").await;
    assert_eq!(s["totalHits"], 0);
    assert_eq!(f.i.staging_files(), 0);
    // The good one goes in once; the second time is 409.
    let r = f
        .push_to("v3/package", Some(&k), "Good.One.1.0.0.nupkg", &good)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    bad(StatusCode::CONFLICT, "already exists")(
        f.push_to("v3/package", Some(&k), "package.nupkg", &good).await,
    );
}

/// Versions of one package pushed at once in different id cases keep one
/// display case, as pushes one after another do.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushes_at_once_in_different_cases_keep_one_display_case() {
    let f = Feed::new().await;
    let k = f.key.clone();
    for round in 0..4 {
        let spellings = ["Case.Pkg", "CASE.PKG", "case.pkg", "cAsE.pKg"].map(|s| format!("{s}{round}"));
        let pushes = spellings.iter().enumerate().map(|(n, id)| {
            let data = nupkg(id, &format!("{}.0.0", n + 1), "");
            let k = k.clone();
            let f = &f;
            async move { f.push_to("v3/package", Some(&k), "package.nupkg", &data).await }
        });
        for r in futures::future::join_all(pushes).await {
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        }
        let x = f.xml(&format!("FindPackagesById()?id='case.pkg{round}'")).await;
        let mut ids: Vec<&str> = x
            .split("<d:Id>")
            .skip(1)
            .filter_map(|p| p.split("</d:Id>").next())
            .collect();
        assert_eq!(ids.len(), 4, "{x}");
        ids.dedup();
        assert_eq!(ids.len(), 1, "one package, one display case: {ids:?}");
    }
}

#[tokio::test]
async fn file_names_compare_versions_as_nuget_normalizes_them() {
    let f = Feed::new().await;
    let k = f.key.clone();
    // v2 push file names: any spelling of the version, any id case.
    for (file, id, version) in [
        ("Norm.A.1.0.nupkg", "Norm.A", "1.0.0"),
        ("norm.b.01.0.0.nupkg", "Norm.B", "1.0"),
        ("NORM.C.1.0.0+build.5.nupkg", "Norm.C", "1.0.0"),
        ("Norm.D.1.0.0.0.nupkg", "Norm.D", "1.0.0"),
    ] {
        let r = f
            .push_to("api/v2/package", Some(&k), file, &nupkg(id, version, ""))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{file}: {}", r.text());
    }
    // Another version or id is still a mismatch.
    for file in ["Norm.E.1.0.1.nupkg", "Norm.1.0.0.nupkg", "Norm.E.1.0.0-rc.nupkg"] {
        let r = f
            .push_to("api/v2/package", Some(&k), file, &nupkg("Norm.E", "1.0", ""))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{file}: {}", r.text());
        assert!(r.text().contains("does not match"), "{}", r.text());
    }
    // Flat container downloads: the version in the file name may be
    // spelled as the client has it.
    let pkg = f.get("v3/flatcontainer/norm.b/1.0.0/norm.b.1.0.0.nupkg").await;
    assert_eq!(pkg.status, StatusCode::OK);
    for path in [
        "v3/flatcontainer/norm.b/1.0/norm.b.1.0.nupkg",
        "v3/flatcontainer/norm.b/1.0.0/norm.b.1.0.nupkg",
        "v3/flatcontainer/Norm.B/01.0.0/Norm.B.01.0.0.nupkg",
        "v3/flatcontainer/norm.b/1.0.0/NORM.B.1.0.0+meta.nupkg",
    ] {
        let r = f.get(path).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
        assert_eq!(r.body, pkg.body, "{path}");
    }
    for path in [
        "v3/flatcontainer/norm.b/1.0.0/norm.b.1.0.1.nupkg",
        "v3/flatcontainer/norm.b/1.0.0/norm.c.1.0.0.nupkg",
        "v3/flatcontainer/norm.b/1.0.0/norm.b.nupkg",
    ] {
        assert_eq!(f.get(path).await.status, StatusCode::NOT_FOUND, "{path}");
    }
}

#[tokio::test]
async fn v2_search_and_updates_take_target_frameworks_as_clients_send_them() {
    let f = Feed::new().await;
    f.push("Tf.Any", "1.0.0", "").await;
    f.push("Tf.Std", "1.0.0", "<group targetFramework=\"netstandard2.0\" />")
        .await;
    f.push("Tf.Std", "1.1.0", "<group targetFramework=\"netstandard2.0\" />")
        .await;
    f.push("Tf.Core", "1.0.0", "<group targetFramework=\"net6.0\" />")
        .await;
    f.push(
        "Tf.Classic",
        "1.0.0",
        "<group targetFramework=\".NETFramework4.5\" /><group targetFramework=\"net6.0\" />",
    )
    .await;
    f.push(
        "Tf.Pcl",
        "1.0.0",
        "<group targetFramework=\"portable-net45+win8+wpa81\" />",
    )
    .await;
    f.push("Tf.Win", "1.0.0", "<group targetFramework=\"net6.0-windows\" />")
        .await;
    let ids = |xml: &str| -> Vec<String> {
        let mut v: Vec<String> = xml
            .split("<d:Id>")
            .skip(1)
            .map(|s| s.split('<').next().unwrap().to_owned())
            .collect();
        v.dedup();
        v
    };
    let search = |tf: &str| format!("Search()?searchTerm='tf'&targetFramework={tf}&includePrerelease=false");
    // Chocolatey sends '' and NuGet 2.x a bare name or a |-separated list.
    assert_eq!(
        ids(&f.xml(&search("''")).await),
        ["Tf.Any", "Tf.Classic", "Tf.Core", "Tf.Pcl", "Tf.Std", "Tf.Win"]
    );
    // A portable profile serves each framework it names.
    assert_eq!(
        ids(&f.xml(&search("'net45'")).await),
        ["Tf.Any", "Tf.Classic", "Tf.Pcl"]
    );
    assert_eq!(
        ids(&f.xml(&search("'%7Cnet472%7C'")).await),
        ["Tf.Any", "Tf.Classic", "Tf.Pcl", "Tf.Std"]
    );
    // A platform asset needs the platform; a neutral one serves it.
    assert_eq!(
        ids(&f.xml(&search("'net45%7Cnet8.0'")).await),
        ["Tf.Any", "Tf.Classic", "Tf.Core", "Tf.Pcl", "Tf.Std"]
    );
    assert_eq!(
        ids(&f.xml(&search("'net8.0-windows'")).await),
        ["Tf.Any", "Tf.Classic", "Tf.Core", "Tf.Std", "Tf.Win"]
    );
    // UWP: Windows 8 assets of the portable profile; not .NET Standard 2.0.
    assert_eq!(ids(&f.xml(&search("'uap10.0'")).await), ["Tf.Any", "Tf.Pcl"]);
    // A portable project: a profile covering its own (not .NET Standard
    // 2.0: Profile7 maps to 1.1).
    assert_eq!(
        ids(&f.xml(&search("'portable-net45%2Bwin8'")).await),
        ["Tf.Any", "Tf.Pcl"]
    );
    // A framework it does not know (Xamarin, Mono) filters nothing out.
    assert_eq!(ids(&f.xml(&search("'monoandroid10'")).await).len(), 6);
    let count = f
        .get(&search("'net45'").replace("Search()", "Search()/$count"))
        .await;
    assert_eq!(count.text(), "3");
    // GetUpdates(): targetFrameworks as nuget.exe sends it.
    let updates = |tfs: &str| {
        format!(
            "GetUpdates()?packageIds='Tf.Std'&versions='1.0.0'&includePrerelease=false&includeAllVersions=false&targetFrameworks={tfs}&versionConstraints=''"
        )
    };
    assert_eq!(versions_in(&f.xml(&updates("''")).await), ["1.1.0"]);
    assert_eq!(versions_in(&f.xml(&updates("'net461'")).await), ["1.1.0"]);
    assert!(versions_in(&f.xml(&updates("'net40'")).await).is_empty());
}

/// `<d:NAME m:type="Edm.Int32">N</d:NAME>` of the first entry.
fn int_property(xml: &str, name: &str) -> u64 {
    let open = format!("<d:{name} m:type=\"Edm.Int32\">");
    let at = xml.find(&open).unwrap_or_else(|| panic!("no {name} in {xml}")) + open.len();
    xml[at..].split('<').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn downloads_are_counted_and_shown_in_search_and_v2() {
    let f = Feed::new().await;
    f.push("Counted", "1.0.0", "").await;
    f.push("Counted", "2.0.0", "").await;
    f.push("Other.Pkg", "1.0.0", "").await;
    // Rendered (and cached) before any download.
    let s = f.json("v3/search?q=counted").await;
    assert_eq!(s["data"][0]["totalDownloads"], 0);
    let v2 = "FindPackagesById()?id='Counted'";
    assert_eq!(int_property(&f.xml(v2).await, "DownloadCount"), 0);
    // Three downloads of 1.0.0 by each route, one of 2.0.0; a HEAD is no download.
    for path in [
        "v3/flatcontainer/counted/1.0.0/counted.1.0.0.nupkg",
        "api/v2/package/Counted/1.0.0",
        "Packages(Id='Counted',Version='1.0.0')/$value",
        "package/Counted/2.0.0",
    ] {
        assert_eq!(f.get(path).await.status, StatusCode::OK, "{path}");
    }
    let head = f
        .req("HEAD", "api/v2/package/Counted/2.0.0", &[], Body::empty())
        .await;
    assert_eq!(head.status, StatusCode::OK);
    f.i.ferry.flush_downloads().await.unwrap();
    let s = f.json("v3/search?q=counted").await;
    let hit = &s["data"][0];
    assert_eq!(hit["id"], "Counted");
    assert_eq!(hit["totalDownloads"], 4);
    assert_eq!(hit["versions"][0]["downloads"], 3);
    assert_eq!(hit["versions"][1]["downloads"], 1);
    let xml = f.xml(v2).await;
    assert_eq!(versions_in(&xml), ["1.0.0", "2.0.0"]);
    assert_eq!(int_property(&xml, "DownloadCount"), 4);
    assert_eq!(int_property(&xml, "VersionDownloadCount"), 3);
    let entry = f.xml("Packages(Id='Counted',Version='2.0.0')").await;
    assert_eq!(int_property(&entry, "VersionDownloadCount"), 1);
    // Chocolatey's "most downloaded first".
    let top = f
        .xml("Packages()?$filter=IsLatestVersion&$orderby=DownloadCount%20desc,Id")
        .await;
    let first = top.find("<d:Id>Counted</d:Id>").unwrap();
    assert!(first < top.find("<d:Id>Other.Pkg</d:Id>").unwrap(), "{top}");
}

#[tokio::test]
async fn private_feeds_need_a_key_to_read() {
    let f = Feed::with(ferry_core::Config::default(), true).await;
    f.push("Secret", "1.0.0", "").await;
    assert_eq!(f.get("v3/index.json").await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        f.get("FindPackagesById()?id='Secret'").await.status,
        StatusCode::UNAUTHORIZED
    );
    // NuGet clients read with basic credentials (any user, the key as password).
    let basic = format!("Basic {}", base64_encode(format!("ci:{}", f.key).as_bytes()));
    let r = f
        .req(
            "GET",
            "v3/search?q=secret",
            &[("authorization", &basic)],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["totalHits"], 1);
}

fn base64_encode(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Every v3 and v2 answer a client reads, by the paths the clients ask.
const TAGGED: &[&str] = &[
    "v3/index.json",
    "v3/flatcontainer/tagged.pkg/index.json",
    "v3/flatcontainer/tagged.pkg/1.0.0/tagged.pkg.nuspec",
    "v3/flatcontainer/tagged.pkg/1.0.0/tagged.pkg.1.0.0.nupkg",
    "v3/registration/tagged.pkg/index.json",
    "v3/registration-semver2/tagged.pkg/index.json",
    "v3/registration/tagged.pkg/1.0.0.json",
    "v3/search?q=tagged&prerelease=true&semVerLevel=2.0.0",
    "v3/autocomplete?q=tagged",
    "v3/autocomplete?id=tagged.pkg",
    "",
    "$metadata",
    "Packages()",
    "Packages()/$count",
    "Packages(Id='Tagged.Pkg',Version='1.0.0')",
    "FindPackagesById()?id='Tagged.Pkg'",
    "Search()?searchTerm='tagged'&targetFramework=''&includePrerelease=false",
    "GetUpdates()?packageIds='Tagged.Pkg'&versions='0.9.0'&includePrerelease=false&includeAllVersions=true&targetFrameworks=''&versionConstraints=''",
    "api/v2/package/Tagged.Pkg/1.0.0",
];

impl Feed {
    async fn get_if_none_match(&self, path: &str, tag: &str) -> Reply {
        self.req("GET", path, &[("if-none-match", tag)], Body::empty())
            .await
    }
}

#[tokio::test]
async fn every_answer_has_a_strong_etag_and_revalidates_with_304() {
    let f = Feed::new().await;
    f.push("Tagged.Pkg", "1.0.0", "").await;
    f.push("Tagged.Pkg", "1.1.0", "").await;
    for path in TAGGED {
        let r = f.get(path).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
        let tag = r
            .header("etag")
            .unwrap_or_else(|| panic!("{path}: no ETag"))
            .to_owned();
        assert!(
            tag.starts_with('"') && tag.ends_with('"') && tag.len() > 2,
            "{path}: not a strong tag: {tag}"
        );
        assert!(!r.body.is_empty(), "{path}");
        // The same representation again: the same tag.
        let again = f.get(path).await;
        assert_eq!(again.header("etag"), Some(tag.as_str()), "{path}");
        assert_eq!(again.body, r.body, "{path}");
        // A client holding it: 304, no body, the tag again.
        for held in [
            tag.clone(),
            format!("W/{tag}"),
            format!("\"other\", {tag}"),
            "*".to_owned(),
        ] {
            let c = f.get_if_none_match(path, &held).await;
            assert_eq!(c.status, StatusCode::NOT_MODIFIED, "{path} with {held}");
            assert!(c.body.is_empty(), "{path}: 304 with a body");
            assert_eq!(c.header("etag"), Some(tag.as_str()), "{path}");
        }
        let head = f
            .req("HEAD", path, &[("if-none-match", &tag)], Body::empty())
            .await;
        assert_eq!(head.status, StatusCode::NOT_MODIFIED, "HEAD {path}");
        // A client holding something else: the whole answer.
        let other = f.get_if_none_match(path, "\"not-this-one\"").await;
        assert_eq!(other.status, StatusCode::OK, "{path}");
        assert_eq!(other.body, r.body, "{path}");
        assert_eq!(other.header("etag"), Some(tag.as_str()), "{path}");
    }
    // The .nupkg's tag is its digest (as every download of a blob).
    let nupkg = f.get("api/v2/package/Tagged.Pkg/1.0.0").await;
    let digest = format!("\"{}\"", ferry_types::Digest::of(&nupkg.body));
    assert_eq!(nupkg.header("etag"), Some(digest.as_str()));
    // Revalidating a download is not a download.
    f.i.ferry.flush_downloads().await.unwrap();
    let counted = |xml: &str| int_property(xml, "VersionDownloadCount");
    let before = counted(&f.xml("Packages(Id='Tagged.Pkg',Version='1.0.0')").await);
    let c = f
        .get_if_none_match(
            "v3/flatcontainer/tagged.pkg/1.0.0/tagged.pkg.1.0.0.nupkg",
            &digest,
        )
        .await;
    assert_eq!(c.status, StatusCode::NOT_MODIFIED);
    f.i.ferry.flush_downloads().await.unwrap();
    assert_eq!(
        counted(&f.xml("Packages(Id='Tagged.Pkg',Version='1.0.0')").await),
        before
    );
}

/// What a client holds of every URL: the tag and the body it came with.
type Held = Vec<(String, Vec<u8>)>;

impl Feed {
    async fn hold(&self) -> Held {
        let mut held = Vec::new();
        for path in TAGGED {
            let r = self.get(path).await;
            assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
            held.push((r.header("etag").unwrap().to_owned(), r.body));
        }
        held
    }

    /// Revalidates every URL held before `step`: a changed answer comes
    /// whole with a new tag, an unchanged one is 304. Returns the paths
    /// whose answer changed.
    async fn revalidate(&self, before: &Held, step: &str) -> (Held, Vec<&'static str>) {
        let mut changed = Vec::new();
        let now = self.hold().await;
        for ((path, (tag, body)), (new_tag, new_body)) in TAGGED.iter().zip(before).zip(&now) {
            let c = self.get_if_none_match(path, tag).await;
            if new_body != body {
                assert_ne!(new_tag, tag, "after {step}: {path} changed under the same ETag");
                assert_eq!(
                    c.status,
                    StatusCode::OK,
                    "after {step}: {path} answered 304 but changed"
                );
                assert_eq!(&c.body, new_body, "after {step}: {path}");
                changed.push(*path);
            } else {
                assert_eq!(new_tag, tag, "after {step}: {path}");
                assert_eq!(c.status, StatusCode::NOT_MODIFIED, "after {step}: {path}");
            }
        }
        (now, changed)
    }
}

#[tokio::test]
async fn etags_change_with_push_unlist_relist_and_download_counts() {
    let f = Feed::new().await;
    f.push("Tagged.Pkg", "1.0.0", "").await;
    let held = f.hold().await;
    let k = f.key.clone();

    // A push of 1.1.0: the lists, registrations, search and v2 feeds move.
    f.push("Tagged.Pkg", "1.1.0", "").await;
    let (held, changed) = f.revalidate(&held, "push").await;
    for path in [
        "v3/flatcontainer/tagged.pkg/index.json",
        "v3/registration/tagged.pkg/index.json",
        "v3/registration-semver2/tagged.pkg/index.json",
        "v3/search?q=tagged&prerelease=true&semVerLevel=2.0.0",
        "v3/autocomplete?id=tagged.pkg",
        "Packages()",
        "Packages()/$count",
        "FindPackagesById()?id='Tagged.Pkg'",
        "Search()?searchTerm='tagged'&targetFramework=''&includePrerelease=false",
        "GetUpdates()?packageIds='Tagged.Pkg'&versions='0.9.0'&includePrerelease=false&includeAllVersions=true&targetFrameworks=''&versionConstraints=''",
    ] {
        assert!(changed.contains(&path), "push left {path} as it was: {changed:?}");
    }
    // What the push did not touch is still current.
    for path in ["v3/index.json", "$metadata", "api/v2/package/Tagged.Pkg/1.0.0"] {
        assert!(!changed.contains(&path), "push changed {path}");
    }

    // Unlisting 1.0.0: its registration says listed: false, search and
    // v2 listings drop it; the flat container still lists every version
    // (as nuget.org), so its tag stays.
    let r = f
        .req(
            "DELETE",
            "v3/package/Tagged.Pkg/1.0.0",
            &[("x-nuget-apikey", &k)],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let (held, changed) = f.revalidate(&held, "unlist").await;
    for path in [
        "v3/registration/tagged.pkg/index.json",
        "v3/registration/tagged.pkg/1.0.0.json",
        "v3/search?q=tagged&prerelease=true&semVerLevel=2.0.0",
        "Packages()",
        "Packages(Id='Tagged.Pkg',Version='1.0.0')",
        "FindPackagesById()?id='Tagged.Pkg'",
    ] {
        assert!(
            changed.contains(&path),
            "unlist left {path} as it was: {changed:?}"
        );
    }
    assert!(!changed.contains(&"v3/flatcontainer/tagged.pkg/index.json"));
    let leaf = f.json("v3/registration/tagged.pkg/1.0.0.json").await;
    assert_eq!(leaf["listed"], false);

    // Relisting moves them again.
    let r = f
        .req(
            "POST",
            "v3/package/Tagged.Pkg/1.0.0",
            &[("x-nuget-apikey", &k)],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let (held, changed) = f.revalidate(&held, "relist").await;
    for path in [
        "v3/registration/tagged.pkg/index.json",
        "v3/registration/tagged.pkg/1.0.0.json",
        "Packages()",
        "Packages(Id='Tagged.Pkg',Version='1.0.0')",
    ] {
        assert!(
            changed.contains(&path),
            "relist left {path} as it was: {changed:?}"
        );
    }
    assert_eq!(
        f.json("v3/registration/tagged.pkg/1.0.0.json").await["listed"],
        true
    );

    // Downloads recorded: the answers showing counts move, the others not.
    assert_eq!(
        f.get("v3/flatcontainer/tagged.pkg/1.1.0/tagged.pkg.1.1.0.nupkg")
            .await
            .status,
        StatusCode::OK
    );
    f.i.ferry.flush_downloads().await.unwrap();
    let (_, changed) = f.revalidate(&held, "a download").await;
    for path in [
        "v3/search?q=tagged&prerelease=true&semVerLevel=2.0.0",
        "FindPackagesById()?id='Tagged.Pkg'",
    ] {
        assert!(
            changed.contains(&path),
            "a download left {path} as it was: {changed:?}"
        );
    }
    for path in [
        "v3/registration/tagged.pkg/index.json",
        "v3/flatcontainer/tagged.pkg/index.json",
    ] {
        assert!(!changed.contains(&path), "a download changed {path}");
    }
}

#[tokio::test]
async fn answers_are_tagged_per_host_they_name() {
    // The same URL asked through another host renders other links: another tag.
    let f = Feed::new().await;
    f.push("Tagged.Pkg", "1.0.0", "").await;
    let path = "/nuget/pkgs/v3/registration/tagged.pkg/index.json";
    let a =
        f.i.send("GET", path, None, &[("host", "a.test")], Body::empty())
            .await;
    let b =
        f.i.send("GET", path, None, &[("host", "b.test")], Body::empty())
            .await;
    assert!(a.text().contains("http://a.test/") && b.text().contains("http://b.test/"));
    let (ta, tb) = (a.header("etag").unwrap(), b.header("etag").unwrap());
    assert_ne!(ta, tb);
    let c =
        f.i.send(
            "GET",
            path,
            None,
            &[("host", "b.test"), ("if-none-match", ta)],
            Body::empty(),
        )
        .await;
    assert_eq!(c.status, StatusCode::OK);
}

/// A replicated version is checked against its `.nupkg` as a push is: the
/// metadata a peer sends must be what the package's nuspec says (the
/// listings, v2 feeds and `PackageHash` are rendered from it), and its
/// SHA-512 the package's. The package here holds a 2 MiB entry before its
/// nuspec, so the nuspec is read by seeking about the stored blob. The
/// genuine item applies, and the spoke serves it.
#[tokio::test]
async fn replicated_versions_must_match_their_nupkg() {
    use bytes::Bytes;
    use ferry_store::{Change, ChangeOp};
    use ferry_types::{FeedName, ItemKey};
    let mut noise = Vec::with_capacity(2 << 20);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while noise.len() < 2 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise.extend_from_slice(&x.to_le_bytes());
    }
    let deps = r#"<group targetFramework="net8.0"><dependency id="Dep.A" version="[1.0,2.0)" /></group>"#;
    let package = zip(&[
        ("lib/net8.0/big.dll", noise.as_slice()),
        (
            "Replica.Pkg.nuspec",
            nuspec("Replica.Pkg", "1.2.0", deps).as_bytes(),
        ),
    ]);
    let hub = Feed::new().await;
    let r = hub
        .push_to("v3/package", Some(&hub.key), "package.nupkg", &package)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let hub_feed = hub.i.ferry.feed(&FeedName::new("pkgs").unwrap()).await.unwrap();
    let item = hub.i.ferry.items(&hub_feed, "").await.unwrap().remove(0);

    let spoke = Feed::new().await;
    let feed = spoke.i.ferry.feed(&FeedName::new("pkgs").unwrap()).await.unwrap();
    let staged = spoke.i.ferry.stage_bytes(Bytes::from(package)).await.unwrap();
    let digest = spoke.i.ferry.commit_blob(staged).await.unwrap();
    assert_eq!(vec![digest], item.blobs);
    let change = |key: &str, meta: Value| Change {
        key: ItemKey::new(key).unwrap(),
        stamp: spoke.i.ferry.clock().stamp(),
        op: ChangeOp::Upsert {
            meta,
            blobs: vec![digest],
            created_at: None,
        },
    };
    let lie = |field: &str, value: Value| {
        let mut meta = item.meta.clone();
        meta[field] = value;
        change(item.key.as_str(), meta)
    };
    let refused = |c: Change, says: &'static str| {
        let (ferry, feed) = (spoke.i.ferry.clone(), feed.clone());
        async move {
            let e = ferry.apply(&feed, vec![c]).await.unwrap_err();
            assert!(matches!(e, ferry_core::CoreError::Invalid(_)), "{e:?}");
            assert!(e.to_string().contains(says), "{e}");
        }
    };
    refused(
        lie("description", "Trust me.".into()),
        "whose nuspec gives description",
    )
    .await;
    refused(
        lie("dependency_groups", serde_json::json!([])),
        "whose nuspec gives dependency_groups",
    )
    .await;
    refused(lie("sha512", "AAAA".into()), "SHA-512").await;
    let mut other = item.meta.clone();
    other["id"] = "Other.Pkg".into();
    refused(change("pkg/other.pkg/1.2.0", other), "its .nupkg is Replica.Pkg").await;
    assert!(spoke.i.ferry.items(&feed, "").await.unwrap().is_empty());

    // What the instance adds is not the package's to say: an unlisted
    // state, another publish time and the id in another case apply.
    let mut genuine = item.meta.clone();
    genuine["id"] = "replica.pkg".into();
    genuine["listed"] = false.into();
    genuine["published"] = 12345.into();
    spoke
        .i
        .ferry
        .apply(&feed, vec![change(item.key.as_str(), genuine)])
        .await
        .unwrap();
    let got = spoke
        .get("v3/flatcontainer/replica.pkg/1.2.0/replica.pkg.1.2.0.nupkg")
        .await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    assert_eq!(vec![ferry_types::Digest::of(&got.body)], item.blobs);
}
