//! The real twine, pip and uv, isolated from any index but ours, and
//! distribution files to feed them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::{Server, run_ok, tool};

/// Writes the files to `dir` and returns their paths.
pub fn write_dists(dir: &Path, files: &[(String, Vec<u8>)]) -> Vec<PathBuf> {
    files
        .iter()
        .map(|(name, data)| {
            let p = dir.join(name);
            std::fs::write(&p, data).unwrap();
            p
        })
        .collect()
}

/// A client command isolated from the user's configuration and from any
/// index but ours.
pub fn client(name: &str) -> Command {
    let mut cmd = Command::new(tool(name));
    for var in [
        "PIP_INDEX_URL",
        "PIP_EXTRA_INDEX_URL",
        "PIP_FIND_LINKS",
        "UV_INDEX_URL",
        "UV_EXTRA_INDEX_URL",
        "UV_INDEX",
        "UV_DEFAULT_INDEX",
        "TWINE_REPOSITORY_URL",
        "TWINE_USERNAME",
        "TWINE_PASSWORD",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("PIP_CONFIG_FILE", "/dev/null")
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .env("PIP_NO_INPUT", "1")
        .env("UV_NO_CONFIG", "1")
        .env("UV_PYTHON_DOWNLOADS", "never")
        .env("PYTHON_KEYRING_BACKEND", "keyring.backends.null.Keyring");
    cmd
}

pub fn twine_upload(s: &Server, feed: &str, key: &str, files: &[PathBuf], extra: &[&str]) -> Command {
    let mut cmd = client("twine");
    cmd.args([
        "upload",
        "--non-interactive",
        "--disable-progress-bar",
        "--repository-url",
    ])
    .arg(format!("{}/pypi/{feed}/", s.url))
    .args(["-u", "__token__", "-p", key])
    .args(extra)
    .args(files);
    cmd
}

/// `pip install --target DIR --index-url INDEX SPEC`.
pub fn pip_install(index: &str, target: &Path, spec: &str) -> Command {
    let mut cmd = client("pip");
    cmd.args([
        "install",
        "--no-cache-dir",
        "--no-deps",
        "--index-url",
        index,
        "--target",
    ])
    .arg(target)
    .arg(spec);
    cmd
}

/// `uv pip install --target DIR --index-url INDEX SPEC`.
pub fn uv_install(index: &str, target: &Path, spec: &str) -> Command {
    let mut cmd = client("uv");
    cmd.args([
        "pip",
        "install",
        "--no-cache",
        "--no-deps",
        "--index-url",
        index,
        "--python",
    ])
    .arg(tool("python3"))
    .arg("--target")
    .arg(target)
    .arg(spec);
    cmd
}

/// The `VERSION` of module `module` installed in `target`.
pub fn installed_version(target: &Path, module: &str) -> String {
    let out = run_ok(
        Command::new(tool("python3"))
            .env("PYTHONPATH", target)
            .args(["-c", &format!("import {module}; print({module}.VERSION)")]),
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

pub fn stderr(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[allow(unused_imports)]
pub use ferry_testkit::pypi as dist;
