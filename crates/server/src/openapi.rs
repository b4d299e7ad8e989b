//! The OpenAPI 3.1 description of the management API. Kept beside the
//! routes in `mgmt.rs` and `mgmt_replication.rs`; a test here checks that
//! every route and method of both is described.

use serde_json::{Value, json};

fn op(summary: &str, ok: &str, body: Option<&str>) -> Value {
    let mut o = json!({
        "summary": summary,
        "security": [{ "bearer": [] }, { "basic": [] }],
        "responses": {
            ok: { "description": "success" },
            "400": { "$ref": "#/components/responses/Error" },
            "401": { "$ref": "#/components/responses/Error" },
            "403": { "$ref": "#/components/responses/Error" },
            "404": { "$ref": "#/components/responses/Error" },
            "409": { "$ref": "#/components/responses/Error" }
        }
    });
    if let Some(schema) = body {
        o["requestBody"] = json!({
            "required": true,
            "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } }
        });
    }
    o
}

/// `op` whose JSON body may be left out (every field has a default).
fn op_optional_body(summary: &str, ok: &str, body: &str) -> Value {
    let mut o = op(summary, ok, Some(body));
    o["requestBody"]["required"] = json!(false);
    o
}

/// A query parameter.
fn query(name: &str, schema: Value, description: &str) -> Value {
    json!({ "name": name, "in": "query", "required": false, "schema": schema, "description": description })
}

pub fn document() -> Value {
    let name_param =
        json!([{ "name": "name", "in": "path", "required": true, "schema": { "type": "string" } }]);
    json!({
        "openapi": "3.1.0",
        "info": { "title": "Ferry management API", "version": env!("CARGO_PKG_VERSION") },
        "paths": {
            "/api/v1/instance": { "get": op("This instance's id and version; `next_instance_id` when a new id was stored since the start (taken at the next start)", "200", None) },
            "/api/v1/instance/new-id": { "post": op("Store a new random instance id, taken at the next start of every node (for a copy of another instance's data directory); answers as GET /api/v1/instance", "200", None) },
            "/api/v1/feeds": {
                "get": op("List feeds", "200", None),
                "post": op("Create a feed", "201", Some("NewFeed"))
            },
            "/api/v1/feeds/{name}": {
                "parameters": name_param,
                "get": op("Show a feed", "200", None),
                "delete": op("Delete a feed with its items", "204", None)
            },
            "/api/v1/feeds/{name}/signing-key": {
                "parameters": name_param,
                "get": op("The feed's signing key (debian and rpm feeds): { fingerprint, public_key } with the armored OpenPGP public key; the secret key is never returned", "200", None),
                "put": op("Import an armored OpenPGP secret key ({ secret_key }) as the feed's signing key, so that instances of a fleet sign with one key; answers { fingerprint, public_key }. 400 if it is not an unprotected secret key that can sign", "200", None)
            },
            "/api/v1/keys": {
                "get": op("List API keys (never their secrets)", "200", None),
                "post": op("Create an API key; the secret is returned once", "201", Some("NewKey"))
            },
            "/api/v1/keys/{name}": {
                "parameters": name_param,
                "delete": op("Revoke an API key", "204", None)
            },
            "/api/v1/gc": { "post": op("Collect unreferenced blobs now", "200", None) },
            "/api/v1/fsck": {
                "post": ({
                    let mut o = op_optional_body(
                        "Re-hash stored blobs (all, or a random sample); take corrupt ones out of service and report missing and corrupt ones; with repair, fetch verified copies from the other side of outgoing replications that pull. A sample that is not a number from 0 to 1 is refused (400 \"sample must be a number from 0 to 1\")",
                        "200",
                        "FsckRequest",
                    );
                    o["responses"]["200"]["content"] = json!({ "application/json": { "schema": { "$ref": "#/components/schemas/FsckReport" } } });
                    o
                })
            },
            "/api/v1/replications": {
                "get": op("Overview: every replication with state, last execution, lag, next run", "200", None),
                "post": op("Create a replication", "201", Some("NewReplication"))
            },
            "/api/v1/replications/{name}": {
                "parameters": name_param,
                "get": op("Show a replication", "200", None),
                "patch": op("Change a replication's URL, token, filters, interval, download counts, bandwidth or delete guard", "200", Some("ReplicationChange")),
                "delete": op("Delete a replication (items stay)", "204", None)
            },
            "/api/v1/replications/{name}/tokens": {
                "parameters": name_param,
                "get": op("List sync tokens (ids only)", "200", None),
                "post": op("Generate a sync token (incoming); returned once", "201", None)
            },
            "/api/v1/replications/{name}/tokens/{id}": {
                "parameters": [
                    { "name": "name", "in": "path", "required": true, "schema": { "type": "string" } },
                    { "name": "id", "in": "path", "required": true, "schema": { "type": "string" } }
                ],
                "delete": op("Revoke a sync token", "204", None)
            },
            "/api/v1/replications/{name}/run": {
                "parameters": name_param,
                "post": ({
                    let mut o = op_optional_body("Run an execution now; with wait, confirm_deletes or full, wait for it and return its result (200), else start it and answer 202", "200", "RunRequest");
                    o["responses"]["202"] = json!({ "description": "started; `{\"started\": true}`" });
                    o
                })
            },
            "/api/v1/replications/{name}/stop": {
                "parameters": name_param,
                "post": ({
                    let mut o = op("Stop the running execution: it ends at once with outcome `stopped` (what it applied stays; the next execution goes on from there); `{\"stopped\": ID}`; 409 when none runs", "200", None);
                    o["responses"]["409"] = json!({ "description": "no execution is running" });
                    o
                })
            },
            "/api/v1/replications/{name}/executions": {
                "parameters": name_param,
                "get": ({
                    let mut o = op("Executions, newest first, with counts and log lines", "200", None);
                    o["parameters"] = json!([query("limit", json!({ "type": "integer", "default": 50, "maximum": 200 }), "how many executions")]);
                    o
                })
            },
            "/api/v1/replications/{name}/peers": {
                "parameters": name_param,
                "get": op("The instances that connect to an incoming replication, newest contact first: instance id, reported name, Ferry and protocol version, address, token id, first and last contact, interval, per feed the cursor asked from and the lag in changes and seconds, the last error answered it, whether a request of it is in progress (`connected`) and whether it is `stale` (not seen for `peer_stale_intervals` of its intervals); 400 for an outgoing replication", "200", None)
            },
            "/api/v1/replications/{name}/peers/{instance}": {
                "parameters": [
                    { "name": "name", "in": "path", "required": true, "schema": { "type": "string" } },
                    { "name": "instance", "in": "path", "required": true, "schema": { "type": "string" } }
                ],
                "delete": op("Forget one peer of an incoming replication (a spoke that will not come back; listed again if it connects again); 404 when it is not listed", "204", None)
            },
            "/api/v1/replications/{name}/plan": {
                "parameters": name_param,
                "post": op("What an execution would copy and delete, changing nothing", "200", None)
            },
            "/api/v1/replications/{name}/verify": {
                "parameters": name_param,
                "post": op_optional_body("Compare both ends' state per feed pair (`same` is true iff every pair holds the same items); with repair, run a full comparison first where they differ", "200", "VerifyRequest")
            },
            "/api/v1/config": {
                "get": op("The running configuration as declarations: every feed, every replication with its options; no secrets (outgoing tokens become token_env names, incoming ones are listed by id and SHA-256). What `ferry config export` prints, as JSON", "200", None),
                "put": ({
                    let mut o = op("Apply declarations (what `ferry config apply FILE` sends, the TOML file as JSON with token_file and token_env resolved): declared feeds and replications are created or updated, others left alone unless prune is true; a declaration that cannot be applied is refused (400, naming its line) and nothing changes. Body at most 1 MiB", "200", None);
                    o["requestBody"] = json!({
                        "required": true,
                        "content": { "application/json": { "schema": {
                            "type": "object",
                            "properties": {
                                "prune": { "type": "boolean", "default": false },
                                "feeds": { "type": "array", "items": { "type": "object" } },
                                "replications": { "type": "array", "items": { "type": "object" } }
                            }
                        } } }
                    });
                    o
                })
            },
            "/api/v1/feeds/{name}/bundle": {
                "parameters": name_param,
                "get": ({
                    let mut o = op("Export an air-gap bundle of the feed's changes after ?since=SEQ (a tar; headers x-ferry-bundle-until and x-ferry-bundle-entries)", "200", None);
                    o["parameters"] = json!([query("since", json!({ "type": "integer", "default": 0 }), "change-log position to export after")]);
                    o
                }),
                "post": op("Import an air-gap bundle into the feed (idempotent); one that would delete more than the delete guard allows is refused with 409 unless ?confirm_deletes=true", "200", None)
            },
            "/api/v1/feeds/{name}/oci/prune-untagged": {
                "parameters": [
                    { "name": "name", "in": "path", "required": true, "schema": { "type": "string" } },
                    { "name": "older_than_secs", "in": "query", "required": false, "schema": { "type": "integer", "default": 3600 } }
                ],
                "post": op("Delete untagged OCI manifests older than the cutoff (retention)", "200", None)
            },
            "/api/v1/logs/replication": {
                "get": ({
                    let mut o = op("The replication diagnostic log (min_level and recent lines)", "200", None);
                    o["parameters"] = json!([query("limit", json!({ "type": "integer", "default": 200 }), "how many recent lines")]);
                    o
                })
            },
            "/api/v1/logs/replication/level": {
                "put": op("Change the replication log's minimum level at run time", "200", Some("LogLevel"))
            }
        },
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer" },
                "basic": { "type": "http", "scheme": "basic", "description": "any user name, the API key as password" }
            },
            "responses": {
                "Error": {
                    "description": "the request was refused; `error` says why",
                    "content": { "application/json": { "schema": {
                        "type": "object", "properties": { "error": { "type": "string" } }, "required": ["error"]
                    } } }
                }
            },
            "schemas": {
                "NewFeed": {
                    "type": "object", "required": ["name", "type"],
                    "properties": {
                        "name": { "type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{0,63}$" },
                        "type": { "type": "string", "enum": ["assets", "npm", "pypi", "oci", "cargo", "nuget", "debian", "rpm"] },
                        "private": { "type": "boolean", "default": false }
                    }
                },
                "NewReplication": {
                    "type": "object", "required": ["name", "feeds", "mode"],
                    "properties": {
                        "name": { "type": "string" },
                        "feeds": { "type": "array", "items": { "type": "string", "description": "LOCAL[=REMOTE]" } },
                        "outgoing": { "type": ["string", "null"], "description": "the other instance's base URL; absent for incoming" },
                        "token": { "type": ["string", "null"] },
                        "mode": { "type": "string", "enum": ["mirror", "pull", "push", "custom"] },
                        "pull_missing": { "type": "boolean" }, "push_missing": { "type": "boolean" },
                        "delete_local": { "type": "boolean" }, "delete_remote": { "type": "boolean" },
                        "include": { "type": "array", "items": { "type": "string" } },
                        "exclude": { "type": "array", "items": { "type": "string" } },
                        "interval": { "type": ["integer", "null"] },
                        "carry_downloads": { "type": "boolean" },
                        "bandwidth_limit": { "type": ["integer", "null"], "description": "bytes per second" }
                    }
                },
                "ReplicationChange": {
                    "type": "object",
                    "description": "absent fields stay as they are; mode, feeds and direction do not change",
                    "properties": {
                        "outgoing": { "type": ["string", "null"], "description": "outgoing: the other instance's new base URL" },
                        "token": { "type": ["string", "null"], "description": "outgoing: a new sync token" },
                        "include": { "type": ["array", "null"], "items": { "type": "string" } },
                        "exclude": { "type": ["array", "null"], "items": { "type": "string" } },
                        "interval": { "type": ["integer", "null"] },
                        "carry_downloads": { "type": ["boolean", "null"] },
                        "bandwidth_limit": { "type": ["integer", "null"], "description": "bytes per second; 0 removes the cap" },
                        "delete_guard": {
                            "type": ["object", "null"],
                            "properties": { "max_share": { "type": "number" }, "max_items": { "type": "integer" } }
                        }
                    }
                },
                "FsckRequest": {
                    "type": "object",
                    "properties": {
                        "sample": { "type": "number", "minimum": 0, "maximum": 1, "default": 1, "description": "share of stored blobs to re-hash, chosen at random" },
                        "repair": { "type": "boolean", "default": false }
                    }
                },
                "FsckReport": {
                    "type": "object",
                    "properties": {
                        "checked": { "type": "integer" },
                        "bytes": { "type": "integer" },
                        "skipped": { "type": "integer", "description": "not in the sample" },
                        "missing": { "type": "array", "items": { "type": "string" } },
                        "corrupt": { "type": "array", "items": { "type": "string" } },
                        "repairs": { "type": "array", "items": { "type": "object" } },
                        "damaged": {
                            "type": "array",
                            "description": "blobs still damaged after this check (and repair)",
                            "items": { "type": "object", "properties": { "digest": { "type": "string" }, "kind": { "type": "string" } } }
                        }
                    }
                },
                "VerifyRequest": {
                    "type": "object",
                    "properties": {
                        "repair": { "type": "boolean", "default": false },
                        "confirm_deletes": { "type": "boolean", "default": false, "description": "with repair on a replica: also delete items that exist only here" }
                    }
                },
                "LogLevel": {
                    "type": "object", "required": ["level"],
                    "properties": { "level": { "type": "string", "enum": ["debug", "info", "warn", "error"] } }
                },
                "RunRequest": {
                    "type": "object",
                    "properties": {
                        "wait": { "type": "boolean" },
                        "confirm_deletes": { "type": "boolean" },
                        "full": { "type": "boolean" }
                    }
                },
                "NewKey": {
                    "type": "object", "required": ["name", "permission"],
                    "properties": {
                        "name": { "type": "string" },
                        "permission": { "type": "string", "enum": ["read", "write", "admin"] },
                        "feeds": { "type": ["array", "null"], "items": { "type": "string" } }
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(path, method)` of every `.route(...)` in a router's source,
    /// including routes written over several lines.
    fn routes(src: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for part in src.split(".route(").skip(1) {
            // A route ends at the next layer or at the end of the function.
            let part = part.split(".layer(").next().unwrap_or(part);
            let part = part.split("\n}").next().unwrap_or(part);
            let Some(path) = part.split('"').nth(1) else {
                continue;
            };
            let after_path = &part[part.find(path).unwrap_or(0) + path.len()..];
            let bytes = after_path.as_bytes();
            for method in ["get", "post", "put", "patch", "delete", "head"] {
                let mut from = 0;
                while let Some(i) = after_path[from..].find(&format!("{method}(")) {
                    let at = from + i;
                    let word_start =
                        at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_');
                    if word_start {
                        out.push((path.to_string(), method.to_string()));
                    }
                    from = at + method.len();
                }
            }
        }
        out
    }

    #[test]
    fn every_management_route_and_method_is_described() {
        let doc = document();
        let src = [
            include_str!("mgmt.rs"),
            include_str!("mgmt_replication.rs"),
            include_str!("declare.rs"),
        ]
        .concat();
        let found = routes(&src);
        assert!(
            found
                .iter()
                .any(|(p, m)| p == "/api/v1/replications/{name}" && m == "patch"),
            "multi-line routes are read: {found:?}"
        );
        for (path, method) in found {
            if path.ends_with("openapi.json") {
                continue;
            }
            assert!(
                doc["paths"][&path][&method].is_object(),
                "{} {path} missing from the OpenAPI document",
                method.to_uppercase()
            );
        }
    }

    #[test]
    fn request_bodies_and_fsck_sample_are_described() {
        let doc = document();
        for schema in ["FsckRequest", "VerifyRequest", "LogLevel", "RunRequest"] {
            assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
        }
        let sample = &doc["components"]["schemas"]["FsckRequest"]["properties"]["sample"];
        assert_eq!(
            (sample["minimum"].as_f64(), sample["maximum"].as_f64()),
            (Some(0.0), Some(1.0))
        );
        // Every $ref points at something defined.
        let text = doc.to_string();
        for r in text.split("\"$ref\":\"#/components/").skip(1) {
            let target = r.split('"').next().unwrap_or_default();
            let mut node = &doc["components"];
            for seg in target.split('/') {
                node = &node[seg];
            }
            assert!(node.is_object(), "dangling $ref {target}");
        }
    }
}
