//! The real `npm` CLI, isolated in a temporary directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::{Server, run_fail, run_ok};

/// A private npm setup in a temporary directory: its own .npmrc (registry
/// and token for the feed), cache and global config; loopback only.
pub struct Npm {
    pub dir: tempfile::TempDir,
    npmrc: PathBuf,
    registry: String,
}

impl Npm {
    pub fn new(s: &Server, feed: &str, key: &str) -> Self {
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
    pub fn cmd(&self, cwd: &Path, cache: &str, args: &[&str]) -> Command {
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

    pub fn ok(&self, cwd: &Path, args: &[&str]) -> String {
        let out = run_ok(&mut self.cmd(cwd, "cache", args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn fail(&self, cwd: &Path, args: &[&str]) -> Output {
        run_fail(&mut self.cmd(cwd, "cache", args))
    }

    /// Writes a package (package.json + index.js) and returns its folder.
    pub fn package(&self, name: &str, version: &str, deps: &[(&str, &str)], body: &str) -> PathBuf {
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

    pub fn publish(&self, name: &str, version: &str, extra: &[&str]) {
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
    pub fn project(&self, name: &str) -> PathBuf {
        let dir = self.dir.path().join("projects").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("package.json"),
            r#"{"name":"app","version":"0.0.0","private":true}"#,
        )
        .unwrap();
        dir
    }

    pub fn view_json(&self, cwd: &Path, spec: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(cwd, &["view", spec, "--json"])).unwrap()
    }
}

pub fn node(cwd: &Path, script: &str) -> String {
    let out = run_ok(Command::new("node").current_dir(cwd).args(["-e", script]));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
