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
    let listing = match body.get("versions") {
        None | Some(Value::Null) => Listing::Absent,
        Some(Value::Object(v)) => Listing::Listed(
            v.iter()
                .map(|(version, m)| (version.clone(), Listed::of_value(m)))
                .collect(),
        ),
        Some(_) => Listing::NotObject,
    };
    update_with(name, &body, listing, current)
}

/// The `versions` of an update body, as far as an update reads them.
pub(crate) enum Listing {
    /// No `versions` member, or null: nothing changes.
    Absent,
    /// `versions` is not an object.
    NotObject,
    /// Each version listed (once), and what its manifest says.
    Listed(Vec<(String, Listed)>),
}

/// What an update reads of a listed version's manifest.
pub(crate) enum Listed {
    /// The manifest is not a JSON object.
    NotObject,
    /// Its deprecation: `Ok(None)` when it has none (no `deprecated`, or
    /// null, false or ""), `Ok(Some(message))`, or `Err(shown)` for a
    /// `deprecated` that is none of those (`shown` describes it).
    Deprecation(Result<Option<String>, String>),
}

impl Listed {
    /// What a parsed manifest says.
    fn of_value(manifest: &Value) -> Self {
        let Some(m) = manifest.as_object() else {
            return Listed::NotObject;
        };
        Listed::Deprecation(match m.get("deprecated") {
            None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(other.to_string()),
        })
    }

    /// What a manifest's JSON text (known to be valid JSON) says, reading
    /// nothing but its `deprecated` member into memory.
    pub(crate) fn of_json(version: &str, raw: &[u8]) -> Result<Self, FormatError> {
        if raw.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Ok(Listed::NotObject);
        }
        #[derive(serde::Deserialize)]
        struct Lean {
            #[serde(default)]
            deprecated: Option<Deprecated>,
        }
        let lean: Lean = serde_json::from_slice(raw).map_err(|e| {
            FormatError::invalid(format!("the manifest of version {version} is not valid: {e}"))
        })?;
        Ok(Listed::Deprecation(match lean.deprecated {
            None | Some(Deprecated::Bool(false)) => Ok(None),
            Some(Deprecated::Message(s)) if s.is_empty() => Ok(None),
            Some(Deprecated::Message(s)) => Ok(Some(s)),
            Some(Deprecated::Bool(true)) => Err("true".into()),
            Some(Deprecated::Other(shown)) => Err(shown),
        }))
    }
}

/// A `deprecated` member, read without keeping what it holds when it is
/// neither a string nor a boolean.
enum Deprecated {
    Message(String),
    Bool(bool),
    Other(String),
}

impl<'de> serde::Deserialize<'de> for Deprecated {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Deprecated;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a deprecation message")
            }
            fn visit_str<E>(self, v: &str) -> Result<Deprecated, E> {
                Ok(Deprecated::Message(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Deprecated, E> {
                Ok(Deprecated::Message(v))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Deprecated, E> {
                Ok(Deprecated::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Deprecated, E> {
                Ok(Deprecated::Other(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Deprecated, E> {
                Ok(Deprecated::Other(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Deprecated, E> {
                Ok(Deprecated::Other(v.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Deprecated, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Deprecated::Other("an array".into()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Deprecated, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Deprecated::Other("an object".into()))
            }
        }
        d.deserialize_any(V)
    }
}

/// [`update_from`] once the body's `versions` have been read (`body`
/// holds its other members).
pub(crate) fn update_with(
    name: &str,
    body: &Map<String, Value>,
    listing: Listing,
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
    let versions = match listing {
        Listing::Absent => {
            return Ok(MetadataUpdate {
                rev,
                ..MetadataUpdate::default()
            });
        }
        Listing::Listed(v) => v,
        Listing::NotObject => {
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
    for (version, listed) in &versions {
        let Some(&old) = stored.get(version.as_str()) else {
            return Err(invalid(format!(
                "version {version} of {name} is not published; new versions can only be added by npm publish"
            )));
        };
        let new = match listed {
            Listed::NotObject => {
                return Err(invalid(format!(
                    "the manifest of version {version} is not a JSON object"
                )));
            }
            Listed::Deprecation(Ok(new)) => new.as_deref(),
            Listed::Deprecation(Err(shown)) => {
                return Err(invalid(format!(
                    "\"deprecated\" of version {version} must be a message string, not {shown}"
                )));
            }
        };
        if new != old {
            deprecations.insert(version.clone(), new.map(str::to_owned));
        }
    }
    let listed: HashSet<&str> = versions.iter().map(|(v, _)| v.as_str()).collect();
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

    /// Parses `body` both ways, in memory and as a stream (versions read
    /// as text), which must agree (unless it carries tarballs: then the
    /// stream is a publish).
    fn update(body: &[u8]) -> Result<MetadataUpdate, FormatError> {
        let in_memory = parse_metadata_update("p", body, &stored());
        if String::from_utf8_lossy(body).contains("_attachments") {
            return in_memory;
        }
        let streamed = crate::npm::parse_package_put("p", body, &crate::ArchiveLimits::default(), &stored())
            .map(|put| match put {
                crate::npm::PackagePut::Update(u) => u,
                crate::npm::PackagePut::Publish(p) => panic!("not an update: {p:?}"),
            });
        let text = String::from_utf8_lossy(body);
        match (&in_memory, &streamed) {
            // Malformed JSON is described in each parser's words.
            (Err(a), Err(b)) if a.to_string().contains("not valid JSON") => {
                assert!(b.to_string().contains("not valid JSON"), "{text}: {b}");
            }
            _ => assert_eq!(in_memory, streamed, "{text}"),
        }
        in_memory
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
        let e = update(&body(|b| b["versions"]["1.0.0"]["deprecated"] = json!(7))).unwrap_err();
        assert!(e.to_string().contains("not 7"), "{e}");
        let e = update(&body(|b| b["versions"]["1.0.0"] = json!(["x"]))).unwrap_err();
        assert!(e.to_string().contains("not a JSON object"), "{e}");
        let e = update(&body(|b| b["versions"] = json!(3))).unwrap_err();
        assert!(e.to_string().contains("not an object"), "{e}");
        // An array or object as the message: said so (as text when read in
        // memory; by kind when streamed, which keeps none of it).
        let arr = body(|b| b["versions"]["1.0.0"]["deprecated"] = json!([1, 2]));
        let streamed = crate::npm::parse_package_put("p", &arr, &crate::ArchiveLimits::default(), &stored())
            .unwrap_err();
        assert!(streamed.to_string().contains("not an array"), "{streamed}");

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
