//! The OpenAPI 3.1 description of the management API. Kept beside the
//! routes in `mgmt.rs`; a test checks that every route is described.

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

pub fn document() -> Value {
    let name_param =
        json!([{ "name": "name", "in": "path", "required": true, "schema": { "type": "string" } }]);
    json!({
        "openapi": "3.1.0",
        "info": { "title": "Ferry management API", "version": env!("CARGO_PKG_VERSION") },
        "paths": {
            "/api/v1/instance": { "get": op("This instance's id and version", "200", None) },
            "/api/v1/feeds": {
                "get": op("List feeds", "200", None),
                "post": op("Create a feed", "201", Some("NewFeed"))
            },
            "/api/v1/feeds/{name}": {
                "parameters": name_param,
                "get": op("Show a feed", "200", None),
                "delete": op("Delete a feed with its items", "204", None)
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
            "/api/v1/fsck": { "post": op("Re-hash stored blobs (body: sample 0..1, repair); report missing and corrupt ones, repair them from replication peers", "200", None) },
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
                "post": op("Run an execution now; with wait, return its result", "200", Some("RunRequest"))
            },
            "/api/v1/replications/{name}/executions": {
                "parameters": name_param,
                "get": op("Executions, newest first, with counts and log lines", "200", None)
            },
            "/api/v1/replications/{name}/plan": {
                "parameters": name_param,
                "post": op("What an execution would copy and delete, changing nothing", "200", None)
            },
            "/api/v1/replications/{name}/verify": {
                "parameters": name_param,
                "post": op("Compare both ends' state per feed pair; optionally repair", "200", None)
            },
            "/api/v1/feeds/{name}/bundle": {
                "parameters": name_param,
                "get": op("Export an air-gap bundle of the feed's changes after ?since=SEQ (a tar)", "200", None),
                "post": op("Import an air-gap bundle into the feed (idempotent)", "200", None)
            },
            "/api/v1/feeds/{name}/oci/prune-untagged": {
                "parameters": [
                    { "name": "name", "in": "path", "required": true, "schema": { "type": "string" } },
                    { "name": "older_than_secs", "in": "query", "required": false, "schema": { "type": "integer", "default": 3600 } }
                ],
                "post": op("Delete untagged OCI manifests older than the cutoff (retention)", "200", None)
            },
            "/api/v1/logs/replication": { "get": op("The replication diagnostic log", "200", None) },
            "/api/v1/logs/replication/level": {
                "put": op("Change the replication log's minimum level at run time", "200", None)
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
                        "type": { "type": "string", "enum": ["assets", "npm", "pypi", "oci"] },
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
