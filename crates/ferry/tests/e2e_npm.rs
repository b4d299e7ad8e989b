//! The real `npm` CLI against the real binary: publish (plain and scoped),
//! install, view, dist-tag, deprecate, unpublish, and a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::{Server, run_fail, run_ok};

/// A private npm setup in a temporary directory: its own .npmrc (registry
/// and token for the feed), cache and global config; loopback only.
struct Npm {
    dir: tempfile::TempDir,
    npmrc: PathBuf,
    registry: String,
}

impl Npm {
    fn new(s: &Server, feed: &str, key: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let registry = format!("{}/npm/{feed}/", s.url);
        let npmrc = dir.path().join("npmrc");
        let auth = format!("//{}/npm/{feed}/:_authToken={key}", s.addr);
        std::fs::write(&npmrc, format!("registry={registry}\n{auth}\n")).unwrap();
        std::fs::write(dir.path().join("globalrc"), "").unwrap();
        Self { dir, npmrc, registry }
    }

    /// `npm ARGS` run in `cwd`, with a cache of its own (`cache` names it,
    /// so that a fresh cache proves the content came from the server).
    fn cmd(&self, cwd: &Path, cache: &str, args: &[&str]) -> Command {
        let mut c = Command::new("npm");
        c.current_dir(cwd)
            .arg("--userconfig")
            .arg(&self.npmrc)
            .arg("--globalconfig")
            .arg(self.dir.path().join("globalrc"))
            .arg("--cache")
            .arg(self.dir.path().join(cache))
            .args(["--registry", &self.registry])
            .args(args)
            .env("HOME", self.dir.path())
            .env("npm_config_audit", "false")
            .env("npm_config_fund", "false")
            .env("npm_config_update_notifier", "false")
            .env("npm_config_loglevel", "warn")
            .env("npm_config_fetch_retries", "0");
        c
    }

    fn ok(&self, cwd: &Path, args: &[&str]) -> String {
        let out = run_ok(&mut self.cmd(cwd, "cache", args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn fail(&self, cwd: &Path, args: &[&str]) -> Output {
        run_fail(&mut self.cmd(cwd, "cache", args))
    }

    /// Writes a package (package.json + index.js) and returns its folder.
    fn package(&self, name: &str, version: &str, deps: &[(&str, &str)], body: &str) -> PathBuf {
        let dir = self
            .dir
            .path()
            .join("src")
            .join(name.replace('/', "__"))
            .join(version);
        std::fs::create_dir_all(&dir).unwrap();
        let deps: serde_json::Map<String, serde_json::Value> = deps
            .iter()
            .map(|(n, v)| ((*n).to_owned(), serde_json::json!(v)))
            .collect();
        let manifest = serde_json::json!({
            "name": name, "version": version, "main": "index.js", "license": "MIT",
            "description": format!("{name} for the e2e test"), "dependencies": deps,
        });
        std::fs::write(dir.join("package.json"), manifest.to_string()).unwrap();
        std::fs::write(dir.join("index.js"), body).unwrap();
        std::fs::write(dir.join("README.md"), format!("# {name}\n")).unwrap();
        dir
    }

    fn publish(&self, name: &str, version: &str, extra: &[&str]) {
        let dir = self.package(
            name,
            version,
            &[],
            &format!("module.exports = {:?};\n", format!("{name}@{version}")),
        );
        let mut args = vec!["publish"];
        args.extend_from_slice(extra);
        self.ok(&dir, &args);
    }

    /// A fresh project folder.
    fn project(&self, name: &str) -> PathBuf {
        let dir = self.dir.path().join("projects").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("package.json"),
            r#"{"name":"app","version":"0.0.0","private":true}"#,
        )
        .unwrap();
        dir
    }

    fn view_json(&self, cwd: &Path, spec: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(cwd, &["view", spec, "--json"])).unwrap()
    }
}

fn node(cwd: &Path, script: &str) -> String {
    let out = run_ok(Command::new("node").current_dir(cwd).args(["-e", script]));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn setup() -> (Server, Npm) {
    let s = Server::start();
    s.create_feed("js", "npm");
    let key = s.key("npm-publisher", "write");
    let npm = Npm::new(&s, "js", &key);
    (s, npm)
}

#[test]
fn publish_install_view_scoped_and_plain_survive_restart() {
    let (mut s, npm) = setup();
    let here = npm.dir.path().to_path_buf();
    assert_eq!(npm.ok(&here, &["whoami"]).trim(), "npm-publisher");
    npm.ok(&here, &["ping"]);

    let hello = npm.package("ferry-hello", "1.0.0", &[], "module.exports = () => 'hello';\n");
    let out = npm.ok(&hello, &["publish"]);
    assert!(out.contains("+ ferry-hello@1.0.0"), "{out}");
    let greet = npm.package(
        "@ferry/greet",
        "1.0.0",
        &[("ferry-hello", "^1.0.0")],
        "module.exports = require('ferry-hello')() + ' from @ferry/greet';\n",
    );
    npm.ok(&greet, &["publish"]);

    // Publishing the same version again is refused (npm 11 checks the
    // packument first; the server answers 403 too, see npm_api.rs).
    let out = npm.fail(&hello, &["publish"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("previously published versions: 1.0.0"), "{err}");

    let view = npm.view_json(&here, "@ferry/greet");
    assert_eq!(view["version"], "1.0.0");
    assert_eq!(view["dist-tags"]["latest"], "1.0.0");
    assert_eq!(
        view["dist"]["tarball"],
        format!("{}/npm/js/@ferry/greet/-/greet-1.0.0.tgz", s.url)
    );
    assert!(view["dist"]["integrity"].as_str().unwrap().starts_with("sha512-"));

    let tarball = format!("{}/npm/js/ferry-hello/-/ferry-hello-1.0.0.tgz", s.url);
    let install = |project: &str, cache: &str| {
        let app = npm.project(project);
        run_ok(&mut npm.cmd(&app, cache, &["install", "@ferry/greet"]));
        assert_eq!(
            node(&app, "console.log(require('@ferry/greet'))"),
            "hello from @ferry/greet"
        );
        let lock = std::fs::read_to_string(app.join("package-lock.json")).unwrap();
        assert!(lock.contains(&tarball), "{lock}");
    };
    install("first", "cache");

    s.restart();
    install("after-restart", "cache-after-restart");
    assert_eq!(
        npm.view_json(&here, "ferry-hello")["versions"],
        serde_json::json!(["1.0.0"])
    );
}

#[test]
fn dist_tags_deprecate_and_unpublish() {
    let (_s, npm) = setup();
    let here = npm.dir.path().to_path_buf();
    npm.publish("ferry-tags", "1.0.0", &[]);
    npm.publish("ferry-tags", "1.1.0", &[]);
    npm.publish("ferry-tags", "2.0.0-beta.1", &["--tag", "next"]);

    // dist-tag add / ls / rm, plain and scoped.
    npm.ok(&here, &["dist-tag", "add", "ferry-tags@1.0.0", "stable"]);
    let ls = npm.ok(&here, &["dist-tag", "ls", "ferry-tags"]);
    for line in ["latest: 1.1.0", "next: 2.0.0-beta.1", "stable: 1.0.0"] {
        assert!(ls.contains(line), "{line} missing in {ls}");
    }
    npm.ok(&here, &["dist-tag", "rm", "ferry-tags", "stable"]);
    assert!(
        !npm.ok(&here, &["dist-tag", "ls", "ferry-tags"])
            .contains("stable")
    );
    npm.publish("@ferry/gone", "1.0.0", &[]);
    npm.publish("@ferry/gone", "1.0.1", &[]);
    npm.ok(&here, &["dist-tag", "add", "@ferry/gone@1.0.0", "old"]);
    assert!(
        npm.ok(&here, &["dist-tag", "ls", "@ferry/gone"])
            .contains("old: 1.0.0")
    );
    let app = npm.project("tagged");
    npm.ok(&app, &["install", "ferry-tags@next"]);
    assert_eq!(
        node(&app, "console.log(require('ferry-tags'))"),
        "ferry-tags@2.0.0-beta.1"
    );

    // Deprecate: view shows it, a fresh install warns; "" un-deprecates.
    npm.ok(&here, &["deprecate", "ferry-tags@1.0.0", "use 1.1 instead"]);
    assert_eq!(
        npm.ok(&here, &["view", "ferry-tags@1.0.0", "deprecated"]).trim(),
        "use 1.1 instead"
    );
    assert_eq!(
        npm.ok(&here, &["view", "ferry-tags@1.1.0", "deprecated"]).trim(),
        ""
    );
    let app = npm.project("deprecated");
    let out = run_ok(&mut npm.cmd(&app, "cache-deprecated", &["install", "ferry-tags@1.0.0"]));
    let warned = String::from_utf8_lossy(&out.stderr);
    assert!(
        warned.contains("deprecated") && warned.contains("use 1.1 instead"),
        "{warned}"
    );
    npm.ok(&here, &["deprecate", "ferry-tags@1.0.0", ""]);
    assert_eq!(
        npm.ok(&here, &["view", "ferry-tags@1.0.0", "deprecated"]).trim(),
        ""
    );

    // Unpublish one version: latest falls back, the rest stays installable.
    npm.ok(&here, &["unpublish", "ferry-tags@1.1.0"]);
    let view = npm.view_json(&here, "ferry-tags");
    assert_eq!(view["versions"], serde_json::json!(["1.0.0", "2.0.0-beta.1"]));
    assert_eq!(view["dist-tags"]["latest"], "1.0.0");
    let app = npm.project("after-unpublish");
    run_ok(&mut npm.cmd(&app, "cache-after-unpublish", &["install", "ferry-tags"]));
    assert_eq!(
        node(&app, "console.log(require('ferry-tags'))"),
        "ferry-tags@1.0.0"
    );
    npm.ok(&here, &["unpublish", "@ferry/gone@1.0.1"]);
    assert_eq!(
        npm.view_json(&here, "@ferry/gone")["versions"],
        serde_json::json!(["1.0.0"])
    );

    // Unpublish whole packages.
    for name in ["ferry-tags", "@ferry/gone"] {
        npm.ok(&here, &["unpublish", name, "--force"]);
        let out = npm.fail(&here, &["view", name]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("E404"), "{err}");
    }
}
