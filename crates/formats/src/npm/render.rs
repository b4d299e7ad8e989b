//! Rendering the packument (`GET /{name}`) from the stored items.
//!
//! The JSON is written straight into one buffer from borrowed manifests (no
//! copies of the stored values), once per change; the server caches it.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;

use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::tarball_url;

/// One stored version, as the renderer and the update parser need it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredVersion {
    /// The canonical version (from the item key).
    pub version: String,
    /// The stored manifest (from the item metadata).
    pub manifest: Value,
    /// When it was published, in Unix milliseconds.
    pub published_millis: i64,
}

/// A rendered packument, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packument {
    /// The full document (`Accept: application/json`).
    pub full: Vec<u8>,
    /// The abbreviated document (`Accept: application/vnd.npm.install-v1+json`).
    pub abbreviated: Vec<u8>,
    /// The effective dist-tags as a JSON object (`GET /-/package/{name}/dist-tags`).
    pub dist_tags: Vec<u8>,
    /// The revision, `{versions}-{hash}`: changes whenever anything rendered
    /// (except the tarball base URL) changes. Usable as an ETag.
    pub rev: String,
    /// The version `latest` points at (`None` only without versions).
    pub latest: Option<String>,
}

/// Fields of a version manifest the abbreviated packument keeps.
const ABBREVIATED_FIELDS: [&str; 20] = [
    "name",
    "version",
    "deprecated",
    "dependencies",
    "optionalDependencies",
    "devDependencies",
    "bundleDependencies",
    "bundledDependencies",
    "peerDependencies",
    "peerDependenciesMeta",
    "acceptDependencies",
    "bin",
    "directories",
    "dist",
    "engines",
    "os",
    "cpu",
    "libc",
    "_hasShrinkwrap",
    "hasInstallScript",
];

/// Package-level fields of the full packument, copied from the `latest` version.
const TOP_FIELDS: [&str; 11] = [
    "description",
    "readme",
    "readmeFilename",
    "homepage",
    "keywords",
    "repository",
    "author",
    "bugs",
    "license",
    "contributors",
    "maintainers",
];

/// Renders the packument of `name` from its stored versions and dist-tags.
///
/// * Versions are listed in semver order (duplicates: the first wins), each
///   with `dist.tarball` set to [`tarball_url`]`(tarball_base, …)`;
///   `tarball_base` is the registry root the client used, e.g.
///   `https://host/npm/feed`. Per-version `readme`s are left out of the full
///   form; the `latest` one is shown at the top level with `description`,
///   `license` and the other package fields.
/// * Dist-tags pointing at missing versions are dropped and `latest` always
///   points at an existing version ([`effective_dist_tags`]).
/// * `time` has `created` (first publish), `modified` (last publish, or
///   `modified_millis` if later — pass the time of the latest change, e.g.
///   an unpublish or deprecation) and each version's publish time.
pub fn render_packument(
    name: &str,
    versions: &[StoredVersion],
    dist_tags: &BTreeMap<String, String>,
    tarball_base: &str,
    modified_millis: Option<i64>,
) -> Packument {
    let mut order: Vec<(&StoredVersion, Option<semver::Version>)> = versions
        .iter()
        .map(|v| (v, semver::Version::parse(&v.version).ok()))
        .collect();
    order.sort_by(|a, b| compare_versions(a.0, a.1.as_ref(), b.0, b.1.as_ref()));
    order.dedup_by(|later, earlier| later.0.version == earlier.0.version);
    let order: Vec<&StoredVersion> = order.into_iter().map(|(v, _)| v).collect();

    let tags = effective_dist_tags(dist_tags, order.iter().map(|v| v.version.as_str()));
    let latest = tags.get("latest").cloned();
    let latest_manifest = latest
        .as_deref()
        .and_then(|l| order.iter().find(|v| v.version == l))
        .map(|v| &v.manifest);
    let created = order.iter().map(|v| v.published_millis).min();
    let modified = order
        .iter()
        .map(|v| v.published_millis)
        .chain(modified_millis)
        .max();
    let rev = revision(name, &order, &tags, modified);
    let urls: Vec<String> = order
        .iter()
        .map(|v| tarball_url(tarball_base, name, &v.version))
        .collect();

    // The full packument.
    let mut full = String::with_capacity(estimate(&order));
    {
        let mut top = Obj::open(&mut full);
        push_str(top.key("_id"), name);
        push_str(top.key("_rev"), &rev);
        push_str(top.key("name"), name);
        push_tags(top.key("dist-tags"), &tags);
        let mut vs = Obj::open(top.key("versions"));
        for (v, url) in order.iter().zip(&urls) {
            push_manifest(vs.key(&v.version), name, v, url, false);
        }
        vs.close();
        let mut time = Obj::open(top.key("time"));
        if let Some(c) = created {
            push_str(time.key("created"), &ferry_types::rfc3339_millis(c));
        }
        if let Some(m) = modified {
            push_str(time.key("modified"), &ferry_types::rfc3339_millis(m));
        }
        for v in &order {
            push_str(
                time.key(&v.version),
                &ferry_types::rfc3339_millis(v.published_millis),
            );
        }
        time.close();
        if let Some(m) = latest_manifest.and_then(Value::as_object) {
            for field in TOP_FIELDS {
                if let Some(value) = m.get(field) {
                    push_value(top.key(field), value);
                }
            }
        }
        top.close();
    }

    // The abbreviated packument.
    let mut abbreviated = String::with_capacity(full.len() / 2);
    {
        let mut top = Obj::open(&mut abbreviated);
        push_str(top.key("name"), name);
        if let Some(m) = modified {
            push_str(top.key("modified"), &ferry_types::rfc3339_millis(m));
        }
        push_tags(top.key("dist-tags"), &tags);
        let mut vs = Obj::open(top.key("versions"));
        for (v, url) in order.iter().zip(&urls) {
            push_manifest(vs.key(&v.version), name, v, url, true);
        }
        vs.close();
        top.close();
    }

    let mut tags_json = String::new();
    push_tags(&mut tags_json, &tags);

    Packument {
        full: full.into_bytes(),
        abbreviated: abbreviated.into_bytes(),
        dist_tags: tags_json.into_bytes(),
        rev,
        latest,
    }
}

/// The dist-tags to serve: `tags` without those pointing at versions not in
/// `versions`, and with `latest` pointing at an existing version whenever
/// there is one — the stored `latest` if it still exists, else the highest
/// release (non-prerelease) version, else the highest prerelease.
pub fn effective_dist_tags<'a>(
    tags: &BTreeMap<String, String>,
    versions: impl IntoIterator<Item = &'a str>,
) -> BTreeMap<String, String> {
    let versions: Vec<&str> = versions.into_iter().collect();
    let exists: HashSet<&str> = versions.iter().copied().collect();
    let mut out: BTreeMap<String, String> = tags
        .iter()
        .filter(|(_, v)| exists.contains(v.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !out.contains_key("latest")
        && let Some(best) = highest(&versions)
    {
        out.insert("latest".to_owned(), best.to_owned());
    }
    out
}

fn highest<'a>(versions: &[&'a str]) -> Option<&'a str> {
    let parsed: Vec<(semver::Version, &str)> = versions
        .iter()
        .filter_map(|v| semver::Version::parse(v).ok().map(|p| (p, *v)))
        .collect();
    parsed
        .iter()
        .filter(|(p, _)| p.pre.is_empty())
        .max_by(|a, b| a.0.cmp(&b.0))
        .or_else(|| parsed.iter().max_by(|a, b| a.0.cmp(&b.0)))
        .map(|(_, v)| *v)
        .or_else(|| versions.iter().max().copied())
}

/// Semver order; versions that do not parse (never stored by Ferry) last,
/// by string.
fn compare_versions(
    a: &StoredVersion,
    pa: Option<&semver::Version>,
    b: &StoredVersion,
    pb: Option<&semver::Version>,
) -> Ordering {
    match (pa, pb) {
        (Some(x), Some(y)) => x.cmp(y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.version.cmp(&b.version),
    }
}

/// `{count}-{32 hex}`: a hash of everything rendered except the base URL.
fn revision(
    name: &str,
    order: &[&StoredVersion],
    tags: &BTreeMap<String, String>,
    modified: Option<i64>,
) -> String {
    let mut h = HashWriter(Sha256::new());
    let _ = write!(h, "{name}\0");
    for v in order {
        let _ = write!(h, "{}\0{}\0{}\0", v.version, v.published_millis, v.manifest);
    }
    for (k, v) in tags {
        let _ = write!(h, "{k}\0{v}\0");
    }
    let _ = write!(h, "{modified:?}");
    let digest = h.0.finalize();
    format!("{}-{}", order.len(), hex::encode(&digest[..16]))
}

struct HashWriter(Sha256);

impl std::fmt::Write for HashWriter {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.update(s.as_bytes());
        Ok(())
    }
}

fn estimate(order: &[&StoredVersion]) -> usize {
    1024 + order.len() * 1024
}

/// Writes one version manifest: every field (full) or the install fields
/// (abbreviated), with `dist.tarball` set to `url`. `name`, `version` and
/// `dist` are always present.
fn push_manifest(out: &mut String, name: &str, v: &StoredVersion, url: &str, abbreviated: bool) {
    let mut o = Obj::open(out);
    let (mut has_name, mut has_version, mut has_dist) = (false, false, false);
    if let Some(m) = v.manifest.as_object() {
        for (k, value) in m {
            let k = k.as_str();
            if abbreviated {
                if !ABBREVIATED_FIELDS.contains(&k) {
                    continue;
                }
                if k == "deprecated" && value.as_str().is_none_or(str::is_empty) {
                    continue;
                }
            } else if k == "readme" {
                continue;
            }
            match k {
                "dist" => {
                    push_dist(o.key("dist"), value, url);
                    has_dist = true;
                    continue;
                }
                "name" => has_name = true,
                "version" => has_version = true,
                _ => {}
            }
            push_value(o.key(k), value);
        }
    }
    if !has_name {
        push_str(o.key("name"), name);
    }
    if !has_version {
        push_str(o.key("version"), &v.version);
    }
    if !has_dist {
        push_dist(o.key("dist"), &Value::Null, url);
    }
    o.close();
}

fn push_dist(out: &mut String, dist: &Value, url: &str) {
    let mut o = Obj::open(out);
    if let Some(d) = dist.as_object() {
        for (k, v) in d {
            if k != "tarball" {
                push_value(o.key(k), v);
            }
        }
    }
    push_str(o.key("tarball"), url);
    o.close();
}

fn push_tags(out: &mut String, tags: &BTreeMap<String, String>) {
    let mut o = Obj::open(out);
    for (k, v) in tags {
        push_str(o.key(k), v);
    }
    o.close();
}

/// A JSON object being written: `{`, then `"key":value` pairs, then `}`.
struct Obj<'a> {
    out: &'a mut String,
    first: bool,
}

impl<'a> Obj<'a> {
    fn open(out: &'a mut String) -> Self {
        out.push('{');
        Obj { out, first: true }
    }

    /// Writes the next key and returns the buffer for its value.
    fn key(&mut self, k: &str) -> &mut String {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        push_str(&mut *self.out, k);
        self.out.push(':');
        &mut *self.out
    }

    fn close(self) {
        self.out.push('}');
    }
}

/// Appends a JSON value, compact.
pub(crate) fn push_value(out: &mut String, v: &Value) {
    // Writing into a String cannot fail.
    let _ = write!(out, "{v}");
}

/// Appends a JSON string literal.
pub(crate) fn push_str(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let esc = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            c if (c as u32) < 0x20 => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push_str(esc);
        }
        start = i + c.len_utf8();
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sv(version: &str, manifest: Value, t: i64) -> StoredVersion {
        StoredVersion {
            version: version.into(),
            manifest,
            published_millis: t,
        }
    }

    fn parse(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    fn manifest(name: &str, version: &str, extra: Value) -> Value {
        let mut m = json!({
            "_id": format!("{name}@{version}"),
            "name": name,
            "version": version,
            "description": format!("desc {version}"),
            "readme": format!("# readme {version}"),
            "license": "MIT",
            "scripts": {"test": "true"},
            "dependencies": {"dep": "^1.0.0"},
            "dist": {"shasum": "abc", "integrity": "sha512-xyz", "tarball": "http://elsewhere/x.tgz"},
        });
        if let (Some(m), Some(e)) = (m.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                m.insert(k.clone(), v.clone());
            }
        }
        m
    }

    #[test]
    fn times() {
        assert_eq!(
            ferry_types::rfc3339_millis(1_714_564_800_123),
            "2024-05-01T12:00:00.123Z"
        );
        assert_eq!(ferry_types::rfc3339_millis(-5), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn json_strings_escape() {
        let mut s = String::new();
        push_str(&mut s, "a\"b\\c\nd\u{1}é");
        assert_eq!(parse(s.as_bytes()), json!("a\"b\\c\nd\u{1}é"));
    }

    #[test]
    fn full_packument() {
        let versions = vec![
            sv(
                "1.10.0",
                manifest("@s/p", "1.10.0", json!({"deprecated": "use 2"})),
                3_000,
            ),
            sv("1.2.0", manifest("@s/p", "1.2.0", json!({})), 1_000),
            sv("2.0.0-rc.1", manifest("@s/p", "2.0.0-rc.1", json!({})), 4_000),
        ];
        let tags = BTreeMap::from([("next".to_owned(), "2.0.0-rc.1".to_owned())]);
        let p = render_packument("@s/p", &versions, &tags, "http://h/npm/f/", Some(5_000));
        let doc = parse(&p.full);
        assert_eq!(doc["_id"], "@s/p");
        assert_eq!(doc["name"], "@s/p");
        assert_eq!(doc["_rev"], p.rev.as_str());
        assert!(p.rev.starts_with("3-"));
        // latest falls back to the highest release, not the prerelease
        assert_eq!(
            doc["dist-tags"],
            json!({"latest": "1.10.0", "next": "2.0.0-rc.1"})
        );
        assert_eq!(p.latest.as_deref(), Some("1.10.0"));
        let keys: Vec<&String> = doc["versions"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["1.2.0", "1.10.0", "2.0.0-rc.1"]);
        let v = &doc["versions"]["1.10.0"];
        assert_eq!(v["dist"]["tarball"], "http://h/npm/f/@s/p/-/p-1.10.0.tgz");
        assert_eq!(v["dist"]["shasum"], "abc");
        assert_eq!(v["deprecated"], "use 2");
        assert_eq!(v["scripts"]["test"], "true");
        assert!(v.get("readme").is_none());
        assert_eq!(doc["readme"], "# readme 1.10.0");
        assert_eq!(doc["description"], "desc 1.10.0");
        assert_eq!(doc["license"], "MIT");
        assert_eq!(doc["time"]["created"], "1970-01-01T00:00:01.000Z");
        assert_eq!(doc["time"]["modified"], "1970-01-01T00:00:05.000Z");
        assert_eq!(doc["time"]["1.2.0"], "1970-01-01T00:00:01.000Z");
        assert_eq!(parse(&p.dist_tags), doc["dist-tags"]);

        // Same inputs, another base URL: same revision; any change: another.
        let again = render_packument("@s/p", &versions, &tags, "https://other/", Some(5_000));
        assert_eq!(again.rev, p.rev);
        let changed = render_packument("@s/p", &versions[..2], &tags, "http://h/npm/f/", Some(5_000));
        assert_ne!(changed.rev, p.rev);
    }

    #[test]
    fn abbreviated_packument() {
        let versions = vec![
            sv(
                "1.0.0",
                manifest("p", "1.0.0", json!({"deprecated": "", "_hasShrinkwrap": false})),
                1_000,
            ),
            sv(
                "1.1.0",
                manifest("p", "1.1.0", json!({"deprecated": "old", "bin": {"p": "cli.js"}})),
                2_000,
            ),
        ];
        let tags = BTreeMap::from([("latest".to_owned(), "1.0.0".to_owned())]);
        let p = render_packument("p", &versions, &tags, "http://h/npm/f", None);
        let doc = parse(&p.abbreviated);
        let top: Vec<&String> = doc.as_object().unwrap().keys().collect();
        assert_eq!(top, ["name", "modified", "dist-tags", "versions"]);
        assert_eq!(doc["modified"], "1970-01-01T00:00:02.000Z");
        assert_eq!(doc["dist-tags"], json!({"latest": "1.0.0"}));
        let v0 = doc["versions"]["1.0.0"].as_object().unwrap();
        let keys: Vec<&str> = v0.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["name", "version", "dependencies", "dist", "_hasShrinkwrap"]
        );
        assert_eq!(v0["dist"]["tarball"], "http://h/npm/f/p/-/p-1.0.0.tgz");
        let v1 = &doc["versions"]["1.1.0"];
        assert_eq!(v1["deprecated"], "old");
        assert_eq!(v1["bin"], json!({"p": "cli.js"}));
        assert!(v1.get("scripts").is_none() && v1.get("readme").is_none());
    }

    #[test]
    fn latest_fallbacks() {
        let stale = BTreeMap::from([
            ("latest".to_owned(), "9.9.9".to_owned()),
            ("beta".to_owned(), "0.0.1".to_owned()),
        ]);
        let tags = effective_dist_tags(&stale, ["1.0.0", "1.1.0-rc.1", "0.9.0"]);
        assert_eq!(tags, BTreeMap::from([("latest".to_owned(), "1.0.0".to_owned())]));
        let tags = effective_dist_tags(&BTreeMap::new(), ["1.0.0-a", "1.0.0-b"]);
        assert_eq!(tags["latest"], "1.0.0-b");
        assert!(effective_dist_tags(&stale, []).is_empty());

        let p = render_packument("p", &[], &stale, "http://h", None);
        assert_eq!(parse(&p.full)["versions"], json!({}));
        assert_eq!(p.latest, None);
        assert!(p.rev.starts_with("0-"));
    }

    #[test]
    fn odd_manifests_still_render() {
        let versions = vec![sv("1.0.0", json!("not an object"), 0), sv("1.0.0", json!({}), 0)];
        let p = render_packument("p", &versions, &BTreeMap::new(), "http://h", None);
        let doc = parse(&p.full);
        assert_eq!(
            doc["versions"]["1.0.0"]["dist"]["tarball"],
            "http://h/p/-/p-1.0.0.tgz"
        );
        assert_eq!(doc["versions"]["1.0.0"]["name"], "p");
        assert_eq!(doc["dist-tags"]["latest"], "1.0.0");
    }
}
