//! The real `cargo` against the real binary: publish two crates (the
//! second depends on the first), build a third that depends on both, yank
//! and its effect on resolution, search; the same build on a spoke that
//! pulled the feed from the hub; and a private feed used through `cargo
//! login`. Every cargo has its own `CARGO_HOME`; nothing comes from the
//! Rust crate registry.
#![allow(clippy::unwrap_used)]
mod support;

use std::path::Path;

use support::cargo::Cargo;
use support::{Server, curl, wait_until};

const BASE: &str = "pub fn base() -> &'static str { \"base\" }\n";
/// The second crate uses the first under another name (a renamed dependency).
const GREET: &str = "pub fn greet() -> String { format!(\"{} greeted\", basis::base()) }\n";
const MAIN: &str = "fn main() { println!(\"{} {}\", ferry_base::VERSION, ferry_greet::greet()); }\n";
const APP_DEPS: &[(&str, &str)] = &[("ferry-base", "0.1"), ("ferry_greet", "0.1")];

/// Builds and runs a new project that depends on both crates (a fresh
/// resolution: no lock file yet) and returns what it prints.
fn fresh_app(cargo: &Cargo, folder: &str) -> String {
    let app = cargo.binary(folder, APP_DEPS, MAIN);
    run_app(cargo, &app)
}

fn run_app(cargo: &Cargo, app: &Path) -> String {
    let out = support::run_ok(&mut cargo.cmd(app, &["run", "-q"]));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The index lines of `path` on `s`'s feed `feed`.
fn index_lines(s: &Server, feed: &str, path: &str) -> Vec<serde_json::Value> {
    let (status, body) = curl(&[&format!("{}/cargo/{feed}/{path}", s.url)]);
    if status != 200 {
        return Vec::new();
    }
    String::from_utf8(body)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn publish_build_yank_and_search_on_the_hub_and_on_a_spoke() {
    let hub = Server::start();
    hub.create_feed("rs", "cargo");
    let key = hub.key("cargo-publisher", "write");
    let cargo = Cargo::new(&hub, "rs");
    cargo.credentials(&key);

    let base = cargo.library("ferry-base", "0.1.0", &[], BASE);
    let out = cargo.publish(&base);
    assert!(out.contains("Published ferry-base v0.1.0"), "{out}");
    let greet = cargo.library("ferry_greet", "0.1.0", &[("basis=ferry-base", "0.1")], GREET);
    // Verified: cargo builds the packaged crate, its dependency fetched from the registry.
    let out = cargo.ok(&greet, &["publish", "--registry", "ferry"]);
    assert!(
        out.contains("Compiling ferry-base v0.1.0") && out.contains("Published ferry_greet v0.1.0"),
        "{out}"
    );
    // The same version again: cargo finds it in the index and refuses
    // before uploading (the registry's own 409 is in cargo_api.rs).
    let out = cargo.fail(&base, &["publish", "--registry", "ferry", "--no-verify"]);
    assert!(out.contains("ferry-base@0.1.0 already exists"), "{out}");
    // What only the registry refuses, cargo shows with the registry's words.
    let reserved = cargo.library("nul", "0.1.0", &[], "");
    let out = cargo.fail(&reserved, &["publish", "--registry", "ferry", "--no-verify"]);
    assert!(
        out.contains("400") && out.contains("the name `nul` is reserved and cannot be used for a crate"),
        "{out}"
    );
    let newer = cargo.library("ferry-base", "0.1.1", &[], BASE);
    cargo.publish(&newer);

    // The index line of the dependent names its dependency as the index
    // format wants a rename: `name` the alias, `package` the crate.
    let lines = index_lines(&hub, "rs", "fe/rr/ferry_greet");
    assert_eq!(lines[0]["deps"][0]["name"], "basis");
    assert_eq!(lines[0]["deps"][0]["package"], "ferry-base");
    assert_eq!(lines[0]["deps"][0]["req"], "^0.1");

    let app = cargo.binary("app", APP_DEPS, MAIN);
    assert_eq!(run_app(&cargo, &app), "0.1.1 base greeted");

    // Yank the newer version: a fresh resolution picks the older one, and
    // the project whose lock file names the yanked version still builds.
    cargo.ok(
        &base,
        &["yank", "--registry", "ferry", "--version", "0.1.1", "ferry-base"],
    );
    assert_eq!(fresh_app(&cargo, "after-yank"), "0.1.0 base greeted");
    let lock = std::fs::read_to_string(cargo.dir.path().join("after-yank/Cargo.lock")).unwrap();
    assert!(
        lock.contains("name = \"ferry-base\"\nversion = \"0.1.0\""),
        "{lock}"
    );
    assert_eq!(run_app(&cargo, &app), "0.1.1 base greeted");

    // Search shows the newest version that is not yanked.
    let out = cargo.ok(&base, &["search", "--registry", "ferry", "ferry"]);
    assert!(out.contains("ferry-base = \"0.1.0\""), "{out}");
    assert!(out.contains("ferry_greet = \"0.1.0\""), "{out}");
    let out = cargo.ok(&base, &["search", "--registry", "ferry", "greet"]);
    assert!(!out.contains("ferry-base"), "{out}");

    // A spoke pulls the feed and derives the index itself.
    let spoke = Server::start();
    spoke.create_feed("rs", "cargo");
    let token = hub.incoming("edges", &["rs"], "push");
    spoke.outgoing("from-hub", &["rs"], &hub, &token, "pull", &["--interval", "3600"]);
    let out = spoke.cli_ok(&["replication", "run", "from-hub", "--wait"]);
    assert!(out.contains("succeeded"), "{out}");
    let edge = Cargo::new(&spoke, "rs");
    assert_eq!(fresh_app(&edge, "edge-app"), "0.1.0 base greeted");
    let lock = std::fs::read_to_string(edge.dir.path().join("edge-app/Cargo.lock")).unwrap();
    assert!(
        lock.contains(&format!("sparse+{}/cargo/rs/", spoke.url)),
        "{lock}"
    );
    let out = edge.ok(edge.dir.path(), &["search", "--registry", "ferry", "ferry"]);
    assert!(out.contains("ferry-base = \"0.1.0\""), "{out}");

    // Unyank on the hub: the spoke follows by itself (long polling), and a
    // fresh resolution there picks 0.1.1 again.
    cargo.ok(
        &base,
        &[
            "yank",
            "--registry",
            "ferry",
            "--version",
            "0.1.1",
            "--undo",
            "ferry-base",
        ],
    );
    assert!(
        wait_until(20, || index_lines(&spoke, "rs", "fe/rr/ferry-base")
            .iter()
            .any(|l| l["vers"] == "0.1.1" && l["yanked"] == false)),
        "the unyank did not reach the spoke"
    );
    assert_eq!(fresh_app(&edge, "edge-app-2"), "0.1.1 base greeted");
    // A version deleted on the hub (Ferry's own API) leaves the spoke too.
    let (status, _) = curl(&[
        "-X",
        "DELETE",
        "-H",
        &format!("Authorization: {key}"),
        &format!("{}/cargo/rs/api/v1/crates/ferry-base/0.1.1", hub.url),
    ]);
    assert_eq!(status, 200);
    assert!(
        wait_until(20, || {
            let lines = index_lines(&spoke, "rs", "fe/rr/ferry-base");
            !lines.is_empty() && lines.iter().all(|l| l["vers"] != "0.1.1")
        }),
        "the deletion did not reach the spoke"
    );
    assert_eq!(fresh_app(&edge, "edge-app-3"), "0.1.0 base greeted");
    let out = spoke.cli_ok(&["replication", "verify", "from-hub"]);
    assert!(out.contains(": same"), "{out}");
}

#[test]
fn a_private_feed_is_used_through_cargo_login() {
    let hub = Server::start();
    hub.cli_ok(&["feed", "create", "secret", "--type", "cargo", "--private"]);
    hub.create_feed("other", "cargo");
    let key = hub.key("cargo-writer", "write");
    let other = hub.cli_ok(&[
        "key",
        "create",
        "elsewhere",
        "--permission",
        "write",
        "--feed",
        "other",
    ]);
    let cargo = Cargo::new(&hub, "secret");

    // Without a token, cargo learns from the 401 that the feed needs one.
    let base = cargo.library("ferry-base", "0.1.0", &[], BASE);
    let out = cargo.fail(&base, &["publish", "--registry", "ferry", "--no-verify"]);
    assert!(out.contains("cargo login"), "{out}");
    let app = cargo.binary("app", APP_DEPS, MAIN);
    let out = cargo.fail(&app, &["build"]);
    assert!(
        out.contains("no token found for `ferry`, please run `cargo login --registry ferry`"),
        "{out}"
    );

    // With a key of another feed the feed does not exist (404, which cargo
    // reports as a missing config.json).
    cargo.credentials(other.trim());
    let out = cargo.fail(&base, &["publish", "--registry", "ferry", "--no-verify"]);
    assert!(out.contains("config.json not found in registry"), "{out}");

    // cargo login stores the key; cargo sends it as the bare Authorization.
    std::fs::remove_file(cargo.home().join("credentials.toml")).unwrap();
    cargo.login(&key);
    let creds = std::fs::read_to_string(cargo.home().join("credentials.toml")).unwrap();
    assert!(creds.contains(&key), "{creds}");
    let out = cargo.publish(&base);
    assert!(out.contains("Published ferry-base v0.1.0"), "{out}");
    let greet = cargo.library("ferry_greet", "0.1.0", &[("basis=ferry-base", "0.1")], GREET);
    cargo.publish(&greet);
    // The same build as on the public feed: index, config.json and every
    // download carry the key.
    assert_eq!(run_app(&cargo, &app), "0.1.0 base greeted");
    let out = cargo.ok(&base, &["search", "--registry", "ferry", "base"]);
    assert!(out.contains("ferry-base = \"0.1.0\""), "{out}");
    // config.json tells cargo to authenticate every request.
    let (status, _) = curl(&[&format!("{}/cargo/secret/config.json", hub.url)]);
    assert_eq!(status, 401);
    let (status, body) = curl(&[
        "-H",
        &format!("Authorization: {key}"),
        &format!("{}/cargo/secret/config.json", hub.url),
    ]);
    assert_eq!(status, 200);
    let config: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(config["auth-required"], true);
}
