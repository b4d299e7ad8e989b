//! The real `cargo` CLI against a cargo feed, isolated in a temporary
//! directory: its own `CARGO_HOME` (config, credentials, index cache),
//! target directory and projects. The registry is called `ferry`; nothing
//! comes from the Rust crate registry (there is no network).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::{Server, run_fail, run_ok};

pub struct Cargo {
    pub dir: tempfile::TempDir,
    index: String,
}

impl Cargo {
    /// cargo set up for feed `feed` of `s` (`sparse+http://…/cargo/FEED/`),
    /// with no credentials yet.
    pub fn new(s: &Server, feed: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        // cargo sends a token to a registry whose config.json says
        // `auth-required` only through an explicitly configured provider;
        // `cargo:token` is the one that reads credentials.toml.
        std::fs::write(
            dir.path().join("home/config.toml"),
            "[registries.ferry]\ncredential-provider = \"cargo:token\"\n",
        )
        .unwrap();
        Self {
            dir,
            index: format!("sparse+{}/cargo/{feed}/", s.url),
        }
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// Writes `~/.cargo/credentials.toml` with `key` for the registry.
    pub fn credentials(&self, key: &str) {
        std::fs::write(
            self.home().join("credentials.toml"),
            format!("[registries.ferry]\ntoken = \"{key}\"\n"),
        )
        .unwrap();
    }

    /// `cargo ARGS` in `cwd`.
    pub fn cmd(&self, cwd: &Path, args: &[&str]) -> Command {
        let mut c = Command::new("cargo");
        c.current_dir(cwd)
            .args(args)
            .env("CARGO_HOME", self.home())
            .env("CARGO_TARGET_DIR", self.dir.path().join("target"))
            .env("CARGO_REGISTRIES_FERRY_INDEX", &self.index)
            .env("CARGO_REGISTRIES_CRATES_IO_PROTOCOL", "sparse")
            .env("CARGO_TERM_COLOR", "never")
            .env("CARGO_NET_RETRY", "0")
            .env("CARGO_HTTP_TIMEOUT", "20")
            .env_remove("CARGO_NET_OFFLINE")
            .env_remove("CARGO_REGISTRY_TOKEN")
            .env_remove("CARGO_REGISTRIES_FERRY_TOKEN")
            .env_remove("CARGO_BUILD_TARGET_DIR")
            .env_remove("RUSTC_WRAPPER")
            .env_remove("RUSTFLAGS")
            .stdin(Stdio::null());
        c
    }

    /// Runs `cargo ARGS`, asserting success; stdout and stderr together.
    pub fn ok(&self, cwd: &Path, args: &[&str]) -> String {
        text(&run_ok(&mut self.cmd(cwd, args)))
    }

    /// Runs `cargo ARGS`, asserting failure; stdout and stderr together.
    pub fn fail(&self, cwd: &Path, args: &[&str]) -> String {
        text(&run_fail(&mut self.cmd(cwd, args)))
    }

    /// `cargo login --registry ferry` with the token on stdin.
    pub fn login(&self, key: &str) {
        let mut c = self.cmd(self.dir.path(), &["login", "--registry", "ferry"]);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            writeln!(stdin, "{key}").unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "cargo login: {}", text(&out));
    }

    /// Writes a library crate `name` `version` whose `VERSION` constant is its
    /// version and whose dependencies (`(name, requirement)`, `alias=name`
    /// for a renamed one) come from the registry; `body` is appended to `src/lib.rs`. Returns its folder.
    pub fn library(&self, name: &str, version: &str, deps: &[(&str, &str)], body: &str) -> PathBuf {
        let dir = self.dir.path().join("src").join(format!("{name}-{version}"));
        write_crate(
            &dir,
            name,
            version,
            deps,
            "lib.rs",
            &format!("pub const VERSION: &str = \"{version}\";\n{body}"),
        );
        dir
    }

    /// Writes a binary project (not published) with `main` as `src/main.rs`.
    pub fn binary(&self, folder: &str, deps: &[(&str, &str)], main: &str) -> PathBuf {
        let dir = self.dir.path().join(folder);
        write_crate(&dir, "app", "0.0.0", deps, "main.rs", main);
        dir
    }

    /// Publishes the crate in `dir` (`--no-verify`: no build first).
    pub fn publish(&self, dir: &Path) -> String {
        self.ok(dir, &["publish", "--registry", "ferry", "--no-verify"])
    }
}

fn write_crate(dir: &Path, name: &str, version: &str, deps: &[(&str, &str)], file: &str, code: &str) {
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let mut manifest = format!(
        "[package]\nname = \"{name}\"\nversion = \"{version}\"\nedition = \"2021\"\n\
         description = \"{name}, made by a Ferry test\"\nlicense = \"MIT\"\n\n[dependencies]\n"
    );
    for (dep, req) in deps {
        // `alias=crate`: a renamed dependency (`package = "crate"`).
        let line = match dep.split_once('=') {
            Some((alias, package)) => {
                format!(
                    "{alias} = {{ package = \"{package}\", version = \"{req}\", registry = \"ferry\" }}\n"
                )
            }
            None => format!("{dep} = {{ version = \"{req}\", registry = \"ferry\" }}\n"),
        };
        manifest.push_str(&line);
    }
    std::fs::write(dir.join("Cargo.toml"), manifest).unwrap();
    std::fs::write(dir.join("src").join(file), code).unwrap();
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
