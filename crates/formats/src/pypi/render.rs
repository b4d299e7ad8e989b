//! The simple repository API pages: PEP 503 HTML and PEP 691 JSON
//! (api-version 1.1, PEP 700 `versions`, `size` and `upload-time`).

use std::collections::BTreeMap;

use ferry_types::Digest;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Serialize;

use super::FileMeta;
use super::names::normalize_name;
use super::negotiate::IndexFormat;
use super::version::Version;

/// The simple API version Ferry implements.
pub const API_VERSION: &str = "1.1";

/// Characters escaped in a URL path segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'!')
    .remove(b'+');

/// The download URL of a file:
/// `{base}/files/{normalized name}/{filename}#sha256={hex}`.
///
/// `base` is the feed's PyPI root as the client should see it, absolute
/// (`https://host/pypi/main`) or root-relative (`/pypi/main`); a trailing
/// `/` is ignored. The server must serve files at `{base}/files/...`.
pub fn file_url(base: &str, normalized_name: &str, filename: &str, sha256: &Digest) -> String {
    format!(
        "{}/files/{}/{}#sha256={}",
        base.trim_end_matches('/'),
        utf8_percent_encode(normalized_name, SEGMENT),
        utf8_percent_encode(filename, SEGMENT),
        sha256.hex()
    )
}

/// Appends `s` to `out`, escaped for HTML text and attribute values.
fn escape(out: &mut String, s: &str) {
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            c => out.push(c),
        }
    }
}

#[derive(Serialize)]
struct Meta {
    #[serde(rename = "api-version")]
    api_version: &'static str,
}

const META: Meta = Meta {
    api_version: API_VERSION,
};

#[derive(Serialize)]
struct JsonRoot<'a> {
    meta: Meta,
    projects: Vec<JsonRootProject<'a>>,
}

#[derive(Serialize)]
struct JsonRootProject<'a> {
    name: &'a str,
}

#[derive(Serialize)]
struct JsonProject<'a> {
    meta: Meta,
    name: &'a str,
    files: Vec<JsonFile<'a>>,
    versions: Vec<&'a str>,
}

#[derive(Serialize)]
struct JsonFile<'a> {
    filename: &'a str,
    url: String,
    hashes: Hashes,
    #[serde(rename = "requires-python", skip_serializing_if = "Option::is_none")]
    requires_python: Option<&'a str>,
    yanked: Yanked<'a>,
    size: u64,
    #[serde(rename = "upload-time", skip_serializing_if = "Option::is_none")]
    upload_time: Option<&'a str>,
    /// PEP 714 names it `core-metadata`; older clients read the PEP 658 name.
    #[serde(rename = "core-metadata", skip_serializing_if = "Option::is_none")]
    core_metadata: Option<Hashes>,
    #[serde(rename = "dist-info-metadata", skip_serializing_if = "Option::is_none")]
    dist_info_metadata: Option<Hashes>,
}

#[derive(Serialize)]
struct Hashes {
    sha256: String,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Yanked<'a> {
    Flag(bool),
    Reason(&'a str),
}

/// Serializes plain data structures (string keys, no fallible impls), which
/// cannot fail; an empty body would be the visible symptom if it ever did.
fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

const HTML_HEAD: &str = "<!DOCTYPE html>\n<html>\n  <head>\n    <meta name=\"pypi:repository-version\" content=\"1.1\">\n    <title>";

/// The root index: one entry per project. `projects` are project names as
/// displayed (duplicates by normalized name are merged, the first spelling
/// kept); they are listed by normalized name. HTML links are relative
/// (`{normalized}/`), so the root page must be served at a URL ending in `/`
/// with project pages below it.
pub fn render_root<'a>(projects: impl IntoIterator<Item = &'a str>, format: IndexFormat) -> Vec<u8> {
    let mut by_norm: BTreeMap<String, &str> = BTreeMap::new();
    for name in projects {
        by_norm.entry(normalize_name(name)).or_insert(name);
    }
    match format {
        IndexFormat::Json => to_json(&JsonRoot {
            meta: META,
            projects: by_norm.values().map(|name| JsonRootProject { name }).collect(),
        }),
        IndexFormat::Html => {
            let mut out = String::with_capacity(256 + by_norm.len() * 64);
            out.push_str(HTML_HEAD);
            out.push_str("Simple index</title>\n  </head>\n  <body>\n");
            for (norm, name) in &by_norm {
                out.push_str("    <a href=\"");
                escape(&mut out, &utf8_percent_encode(norm, SEGMENT).to_string());
                out.push_str("/\">");
                escape(&mut out, name);
                out.push_str("</a><br>\n");
            }
            out.push_str("  </body>\n</html>\n");
            out.into_bytes()
        }
    }
}

/// A project page listing `files` (the items of one project), sorted by
/// PEP 440 version then file name, with `versions` (PEP 700) distinct by
/// PEP 440 equality. File links are built with [`file_url`] from `base`.
/// `project` may be given in any spelling; pages show its normalized form.
pub fn render_project(project: &str, files: &[FileMeta], base: &str, format: IndexFormat) -> Vec<u8> {
    let name = normalize_name(project);
    let mut sorted: Vec<(Option<Version>, &FileMeta)> = files
        .iter()
        .map(|f| (Version::parse(&f.version).ok(), f))
        .collect();
    // Parsed versions in PEP 440 order, then anything unparsable by string.
    sorted.sort_by(|(va, a), (vb, b)| {
        match (va, vb) {
            (Some(x), Some(y)) => x.cmp(y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => a.version.cmp(&b.version),
        }
        .then_with(|| a.filename.cmp(&b.filename))
    });

    match format {
        IndexFormat::Json => {
            let mut versions: Vec<&str> = Vec::new();
            let mut prev: Option<&(Option<Version>, &FileMeta)> = None;
            for cur in &sorted {
                let same = prev.is_some_and(|(pv, pf)| match (pv, &cur.0) {
                    (Some(a), Some(b)) => a == b,
                    _ => pf.version == cur.1.version,
                });
                if !same {
                    versions.push(&cur.1.version);
                }
                prev = Some(cur);
            }
            let files = sorted
                .iter()
                .map(|(_, f)| JsonFile {
                    filename: &f.filename,
                    url: file_url(base, &name, &f.filename, &f.sha256),
                    hashes: Hashes {
                        sha256: f.sha256.hex(),
                    },
                    requires_python: f.requires_python.as_deref(),
                    yanked: match (f.yanked, f.yanked_reason.as_deref()) {
                        (false, _) => Yanked::Flag(false),
                        (true, Some(reason)) if !reason.is_empty() => Yanked::Reason(reason),
                        (true, _) => Yanked::Flag(true),
                    },
                    size: f.size,
                    upload_time: Some(f.upload_time.as_str()).filter(|t| !t.is_empty()),
                    core_metadata: f.core_metadata.map(|d| Hashes { sha256: d.hex() }),
                    dist_info_metadata: f.core_metadata.map(|d| Hashes { sha256: d.hex() }),
                })
                .collect();
            to_json(&JsonProject {
                meta: META,
                name: &name,
                files,
                versions,
            })
        }
        IndexFormat::Html => {
            let mut out = String::with_capacity(256 + sorted.len() * 200);
            out.push_str(HTML_HEAD);
            out.push_str("Links for ");
            escape(&mut out, &name);
            out.push_str("</title>\n  </head>\n  <body>\n    <h1>Links for ");
            escape(&mut out, &name);
            out.push_str("</h1>\n");
            for (_, f) in &sorted {
                out.push_str("    <a href=\"");
                escape(&mut out, &file_url(base, &name, &f.filename, &f.sha256));
                out.push('"');
                if let Some(rp) = &f.requires_python {
                    out.push_str(" data-requires-python=\"");
                    escape(&mut out, rp);
                    out.push('"');
                }
                if let Some(d) = &f.core_metadata {
                    let hash = d.hex();
                    out.push_str(&format!(
                        " data-dist-info-metadata=\"sha256={hash}\" data-core-metadata=\"sha256={hash}\""
                    ));
                }
                if f.yanked {
                    out.push_str(" data-yanked=\"");
                    escape(&mut out, f.yanked_reason.as_deref().unwrap_or(""));
                    out.push('"');
                }
                out.push('>');
                escape(&mut out, &f.filename);
                out.push_str("</a><br>\n");
            }
            out.push_str("  </body>\n</html>\n");
            out.into_bytes()
        }
    }
}
