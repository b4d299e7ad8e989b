//! The in-process API tests in one binary (one link instead of one per file):
//! every module drives a `ferry_server` router over a real SQLite store in a
//! temporary directory. `body_budget` and `metrics_memory` stay binaries of
//! their own: each holds a process-wide budget or allocator.
#[path = "../common/mod.rs"]
mod common;

mod assets_api;
mod auth_matrix;
mod body_limits;
mod cargo_api;
mod config_api;
mod debian_api;
mod hostile_input;
mod management_api;
mod npm_api;
mod npm_search;
mod nuget_api;
mod oci_api;
mod oci_sha512;
mod oci_token;
mod private_feeds;
mod pypi_api;
mod replication_api;
mod replication_peers;
mod replication_scope;
mod rpm_api;
mod served_content;
mod ui;
