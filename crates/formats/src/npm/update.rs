//! Metadata updates: `npm deprecate` and `npm unpublish PKG@VER` send the
//! whole packument back (without tarballs), edited.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{Map, Value};

use super::publish::parse_body;
use super::render::StoredVersion;
use crate::FormatError;

/// What a packument sent back by the client changes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetadataUpdate {
    /// Versions whose deprecation changes: the new message, or `None` to
    /// undeprecate. Apply with [`set_deprecated`] and rewrite the item.
    pub deprecations: BTreeMap<String, Option<String>>,
    /// Stored versions the body no longer lists: unpublished. Delete their
    /// items, and the dist-tags pointing at them (`latest` then falls back
    /// to the highest remaining version when rendering).
    pub removed: Vec<String>,
    /// The `_rev` the client edited, if it sent one (also in the URL as
    /// `-rev/{rev}`). Compare with the current revision to detect a stale
    /// copy: a version published meanwhile would otherwise look removed.
    pub rev: Option<String>,
}

impl MetadataUpdate {
    /// Whether nothing Ferry stores changes (e.g. `npm owner add`).
    pub fn is_empty(&self) -> bool {
        self.deprecations.is_empty() && self.removed.is_empty()
    }
}

/// Parses the packument `npm deprecate` or `npm unpublish PKG@VER` sends to
/// `PUT /{name}` or `PUT /{name}/-rev/{rev}`, given the package `name` from
/// the URL and the versions currently stored, and reports what changed.
///
/// A body without `versions` changes nothing. Refused: a body about another
/// package, one carrying tarballs, one listing a version that is not stored
/// (versions are added only by a publish, with their tarball), one listing
/// no version at all (unpublishing everything is `DELETE /{name}/-rev/{rev}`),
/// and a `deprecated` that is not a string.
pub fn parse_metadata_update(
    name: &str,
    body: &[u8],
    current: &[StoredVersion],
) -> Result<MetadataUpdate, FormatError> {
    update_from(name, parse_body(body)?, current)
}

pub(crate) fn update_from(
    name: &str,
    body: Map<String, Value>,
    current: &[StoredVersion],
) -> Result<MetadataUpdate, FormatError> {
    let invalid = |msg: String| FormatError::Invalid(msg);
    for field in ["name", "_id"] {
        if let Some(v) = body.get(field)
            && v.as_str() != Some(name)
        {
            return Err(invalid(format!(
                "the request body is about package {v}, but the URL names {name:?}"
            )));
        }
    }
    match body.get("_attachments") {
        None | Some(Value::Null) => {}
        Some(Value::Object(a)) if a.is_empty() => {}
        Some(_) => {
            return Err(invalid(
                "this request carries tarballs (\"_attachments\"); new versions are added with npm publish"
                    .into(),
            ));
        }
    }
    let rev = body.get("_rev").and_then(Value::as_str).map(str::to_owned);
    let versions = match body.get("versions") {
        None | Some(Value::Null) => {
            return Ok(MetadataUpdate {
                rev,
                ..MetadataUpdate::default()
            });
        }
        Some(Value::Object(v)) => v,
        Some(_) => {
            return Err(invalid(
                "\"versions\" in the request body is not an object".into(),
            ));
        }
    };
    if versions.is_empty() && !current.is_empty() {
        return Err(invalid(format!(
            "the request body lists no versions; to unpublish every version use npm unpublish {name} --force"
        )));
    }

    let stored: HashMap<&str, Option<&str>> = current
        .iter()
        .map(|s| (s.version.as_str(), deprecation_of(&s.manifest)))
        .collect();
    let mut deprecations = BTreeMap::new();
    for (version, manifest) in versions {
        let Some(&old) = stored.get(version.as_str()) else {
            return Err(invalid(format!(
                "version {version} of {name} is not published; new versions can only be added by npm publish"
            )));
        };
        let Some(manifest) = manifest.as_object() else {
            return Err(invalid(format!(
                "the manifest of version {version} is not a JSON object"
            )));
        };
        let new = match manifest.get("deprecated") {
            None | Some(Value::Null) | Some(Value::Bool(false)) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(other) => {
                return Err(invalid(format!(
                    "\"deprecated\" of version {version} must be a message string, not {other}"
                )));
            }
        };
        if new != old {
            deprecations.insert(version.clone(), new.map(str::to_owned));
        }
    }
    let listed: HashSet<&str> = versions.keys().map(String::as_str).collect();
    let mut removed: Vec<String> = Vec::new();
    for s in current {
        if !listed.contains(s.version.as_str()) && !removed.contains(&s.version) {
            removed.push(s.version.clone());
        }
    }
    Ok(MetadataUpdate {
        deprecations,
        removed,
        rev,
    })
}

/// The deprecation message of a manifest (a non-empty `deprecated` string).
fn deprecation_of(manifest: &Value) -> Option<&str> {
    manifest
        .get("deprecated")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// Sets (`Some`, non-empty) or removes (`None` or `""`) a manifest's
/// `deprecated` message.
pub fn set_deprecated(manifest: &mut Value, message: Option<&str>) {
    let Some(m) = manifest.as_object_mut() else { return };
    match message.filter(|s| !s.is_empty()) {
        Some(msg) => {
            m.insert("deprecated".into(), Value::String(msg.to_owned()));
        }
        None => {
            m.shift_remove("deprecated");
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn stored() -> Vec<StoredVersion> {
        let v = |version: &str, deprecated: Option<&str>| {
            let mut manifest = json!({"name": "p", "version": version});
            set_deprecated(&mut manifest, deprecated);
            StoredVersion {
                version: version.into(),
                manifest,
                published_millis: 0,
            }
        };
        vec![v("1.0.0", None), v("1.1.0", Some("old")), v("2.0.0", None)]
    }

    /// The packument as the client fetched it, edited by `edit`.
    fn body(edit: impl FnOnce(&mut Value)) -> Vec<u8> {
        let mut b = json!({
            "_id": "p",
            "_rev": "3-abc",
            "name": "p",
            "dist-tags": {"latest": "2.0.0"},
            "versions": {
                "1.0.0": {"name": "p", "version": "1.0.0", "dist": {"tarball": "http://h/p/-/p-1.0.0.tgz"}},
                "1.1.0": {"name": "p", "version": "1.1.0", "deprecated": "old"},
                "2.0.0": {"name": "p", "version": "2.0.0"},
            },
            "time": {"created": "2024-01-01T00:00:00.000Z"},
            "readme": "hi",
        });
        edit(&mut b);
        b.to_string().into_bytes()
    }

    fn update(body: &[u8]) -> Result<MetadataUpdate, FormatError> {
        parse_metadata_update("p", body, &stored())
    }

    #[test]
    fn unchanged_body_changes_nothing() {
        let u = update(&body(|_| {})).unwrap();
        assert!(u.is_empty());
        assert_eq!(u.rev.as_deref(), Some("3-abc"));
    }

    #[test]
    fn deprecate_and_undeprecate() {
        let u = update(&body(|b| {
            b["versions"]["1.0.0"]["deprecated"] = json!("use 2.x");
            b["versions"]["2.0.0"]["deprecated"] = json!("");
            b["versions"]["1.1.0"]["deprecated"] = json!("");
        }))
        .unwrap();
        assert_eq!(
            u.deprecations,
            BTreeMap::from([
                ("1.0.0".to_owned(), Some("use 2.x".to_owned())),
                ("1.1.0".to_owned(), None)
            ])
        );
        assert!(u.removed.is_empty());

        let mut m = json!({"name": "p"});
        set_deprecated(&mut m, Some("gone"));
        assert_eq!(m["deprecated"], "gone");
        set_deprecated(&mut m, Some(""));
        assert!(m.get("deprecated").is_none());
    }

    #[test]
    fn unpublish_one_version() {
        let u = update(&body(|b| {
            b["versions"].as_object_mut().unwrap().remove("1.1.0");
            b["dist-tags"] = json!({"latest": "2.0.0"});
        }))
        .unwrap();
        assert_eq!(u.removed, ["1.1.0"]);
        assert!(u.deprecations.is_empty());
    }

    #[test]
    fn refusals() {
        let added = body(|b| b["versions"]["3.0.0"] = json!({"name": "p", "version": "3.0.0"}));
        let e = update(&added).unwrap_err();
        assert!(
            e.to_string().contains("3.0.0") && e.to_string().contains("npm publish"),
            "{e}"
        );

        let e = update(&body(|b| b["_attachments"] = json!({"p-3.0.0.tgz": {}}))).unwrap_err();
        assert!(e.to_string().contains("_attachments"), "{e}");

        let e = update(&body(|b| b["name"] = json!("q"))).unwrap_err();
        assert!(e.to_string().contains("\"q\""), "{e}");

        let e = update(&body(|b| b["versions"] = json!({}))).unwrap_err();
        assert!(e.to_string().contains("--force"), "{e}");

        let e = update(&body(|b| b["versions"]["1.0.0"]["deprecated"] = json!(true))).unwrap_err();
        assert!(e.to_string().contains("deprecated"), "{e}");

        assert!(update(b"[]").is_err());
        assert!(update(b"{").is_err());
    }

    #[test]
    fn bodies_without_versions_change_nothing() {
        // `npm owner add` sends only maintainers.
        let u = update(br#"{"_id":"p","_rev":"3-abc","maintainers":[{"name":"a"}]}"#).unwrap();
        assert!(u.is_empty());
    }
}
