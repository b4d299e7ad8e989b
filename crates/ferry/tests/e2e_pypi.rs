//! The PyPI feed with the real binary and the real clients: twine uploads,
//! pip and uv install (and pip downloads the sdist), yanking as pip and uv
//! see it, deletes, a private feed, and a restart.
#![allow(clippy::unwrap_used)]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::{Server, curl, run_fail, run_ok, tool};

/// Writes the files to `dir` and returns their paths.
fn write_dists(dir: &Path, files: &[(String, Vec<u8>)]) -> Vec<PathBuf> {
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
fn client(name: &str) -> Command {
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

fn twine_upload(s: &Server, feed: &str, key: &str, files: &[PathBuf], extra: &[&str]) -> Command {
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
fn pip_install(index: &str, target: &Path, spec: &str) -> Command {
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
fn uv_install(index: &str, target: &Path, spec: &str) -> Command {
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
fn installed_version(target: &Path, module: &str) -> String {
    let out = run_ok(
        Command::new(tool("python3"))
            .env("PYTHONPATH", target)
            .args(["-c", &format!("import {module}; print({module}.VERSION)")]),
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn stderr(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn twine_uploads_pip_and_uv_install_and_it_survives_a_restart() {
    let mut s = Server::start();
    s.create_feed("py", "pypi");
    let key = s.key("publisher", "write");
    let tmp = tempfile::tempdir().unwrap();
    let dists = write_dists(
        tmp.path(),
        &[
            dist::wheel("Ferry.Demo", "1.0", "ferry_demo", Some(">=3.8")),
            dist::sdist("Ferry.Demo", "1.0", Some(">=3.8")),
            dist::wheel("Ferry.Demo", "1.1", "ferry_demo", Some(">=3.8")),
        ],
    );
    run_ok(&mut twine_upload(&s, "py", &key, &dists, &[]));
    // The same file again is refused with 409 (what twine's --skip-existing
    // looks for; twine 7 offers that flag for pypi.org only).
    let out = run_fail(&mut twine_upload(&s, "py", &key, &dists[..1], &[]));
    assert!(stderr(&out).contains("409"), "{}", stderr(&out));
    // A read key may not upload.
    let reader = s.key("reader", "read");
    let out = run_fail(&mut twine_upload(&s, "py", &reader, &dists[2..], &[]));
    assert!(stderr(&out).contains("403"), "{}", stderr(&out));

    let index = format!("{}/pypi/py/simple/", s.url);
    let pip_dir = tmp.path().join("pip");
    run_ok(&mut pip_install(&index, &pip_dir, "ferry-demo==1.0"));
    assert_eq!(installed_version(&pip_dir, "ferry_demo"), "1.0");
    let uv_dir = tmp.path().join("uv");
    run_ok(&mut uv_install(&index, &uv_dir, "Ferry_Demo"));
    assert_eq!(installed_version(&uv_dir, "ferry_demo"), "1.1");

    // pip downloads (and prepares) the sdist.
    let dl = tmp.path().join("dl");
    run_ok(
        client("pip")
            .args(["download", "--no-cache-dir", "--no-deps", "--no-binary", ":all:"])
            .args(["--index-url", &index, "--dest"])
            .arg(&dl)
            .arg("ferry.demo==1.0"),
    );
    let got = std::fs::read(dl.join("Ferry_Demo-1.0.tar.gz")).unwrap();
    assert_eq!(got, std::fs::read(&dists[1]).unwrap());

    s.restart();
    let again = tmp.path().join("again");
    run_ok(&mut pip_install(&index, &again, "ferry-demo"));
    assert_eq!(installed_version(&again, "ferry_demo"), "1.1");
    let (status, body) = curl(&[
        "-H",
        "Accept: application/vnd.pypi.simple.v1+json",
        &format!("{index}ferry-demo/"),
    ]);
    assert_eq!(status, 200);
    let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(page["files"].as_array().unwrap().len(), 3);
    assert!(s.stop().success());
}

#[test]
fn yanked_versions_only_install_when_pinned_and_deleted_ones_not_at_all() {
    let s = Server::start();
    s.create_feed("py", "pypi");
    let key = s.key("publisher", "write");
    let tmp = tempfile::tempdir().unwrap();
    let dists = write_dists(
        tmp.path(),
        &[
            dist::wheel("yanky", "1.0", "yanky", None),
            dist::wheel("yanky", "2.0", "yanky", None),
        ],
    );
    run_ok(&mut twine_upload(&s, "py", &key, &dists, &[]));
    let index = format!("{}/pypi/py/simple/", s.url);
    let auth = format!("Authorization: Bearer {key}");

    let (status, body) = curl(&[
        "-X",
        "POST",
        "-H",
        &auth,
        "-H",
        "Content-Type: application/json",
        "--data",
        r#"{"reason":"broken"}"#,
        &format!("{}/pypi/py/yank/yanky/2.0", s.url),
    ]);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));

    for (n, install) in [
        (0, pip_install as fn(&str, &Path, &str) -> Command),
        (1, uv_install),
    ] {
        let latest = tmp.path().join(format!("latest{n}"));
        run_ok(&mut install(&index, &latest, "yanky"));
        assert_eq!(
            installed_version(&latest, "yanky"),
            "1.0",
            "client {n} picked a yanked version"
        );
        let pinned = tmp.path().join(format!("pinned{n}"));
        run_ok(&mut install(&index, &pinned, "yanky==2.0"));
        assert_eq!(
            installed_version(&pinned, "yanky"),
            "2.0",
            "client {n} refused a pinned yanked version"
        );
    }

    // Unyanked, 2.0 is the latest again.
    let (status, _) = curl(&[
        "-X",
        "POST",
        "-H",
        &auth,
        &format!("{}/pypi/py/unyank/yanky/2.0", s.url),
    ]);
    assert_eq!(status, 200);
    let latest = tmp.path().join("unyanked");
    run_ok(&mut pip_install(&index, &latest, "yanky"));
    assert_eq!(installed_version(&latest, "yanky"), "2.0");

    // Deleted, 2.0 is gone for good.
    let (status, _) = curl(&[
        "-X",
        "DELETE",
        "-H",
        &auth,
        &format!("{}/pypi/py/project/yanky/2.0", s.url),
    ]);
    assert_eq!(status, 200);
    let out = run_fail(&mut pip_install(&index, &tmp.path().join("gone"), "yanky==2.0"));
    assert!(
        stderr(&out).contains("No matching distribution"),
        "{}",
        stderr(&out)
    );
    let (status, _) = curl(&[
        "-X",
        "DELETE",
        "-H",
        &auth,
        &format!("{}/pypi/py/files/yanky/yanky-1.0-py3-none-any.whl", s.url),
    ]);
    assert_eq!(status, 204);
    assert_eq!(curl(&[&format!("{index}yanky/")]).0, 404);
}

#[test]
fn private_feed_needs_credentials_in_the_index_url() {
    let s = Server::start();
    s.cli_ok(&["feed", "create", "secret", "--type", "pypi", "--private"]);
    let writer = s.key("publisher", "write");
    let reader = s.key("reader", "read");
    let tmp = tempfile::tempdir().unwrap();
    let dists = write_dists(tmp.path(), &[dist::wheel("hush", "0.3", "hush", None)]);
    run_ok(&mut twine_upload(&s, "secret", &writer, &dists, &[]));

    let anonymous = format!("{}/pypi/secret/simple/", s.url);
    let out = run_fail(&mut pip_install(&anonymous, &tmp.path().join("anon"), "hush"));
    assert!(
        stderr(&out).contains("No matching distribution"),
        "{}",
        stderr(&out)
    );
    run_fail(&mut uv_install(&anonymous, &tmp.path().join("anon-uv"), "hush"));
    assert_eq!(curl(&[&anonymous]).0, 401);

    let with_key = format!("http://reader:{reader}@{}/pypi/secret/simple/", s.addr);
    let pip_dir = tmp.path().join("pip");
    run_ok(&mut pip_install(&with_key, &pip_dir, "hush"));
    assert_eq!(installed_version(&pip_dir, "hush"), "0.3");
    let uv_dir = tmp.path().join("uv");
    run_ok(&mut uv_install(&with_key, &uv_dir, "hush"));
    assert_eq!(installed_version(&uv_dir, "hush"), "0.3");
}

/// Distribution files built byte by byte (stored zip, tar in a gzip of
/// stored deflate blocks), so the tests need no archive library.
mod dist {
    use ferry_types::Digest;

    pub fn crc32(data: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in data {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0xEDB8_8320
                } else {
                    c >> 1
                };
            }
        }
        !c
    }

    /// A zip archive of stored (uncompressed) entries.
    pub fn zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut central = Vec::new();
        for (name, data) in entries {
            let offset = out.len() as u32;
            let crc = crc32(data);
            let len = data.len() as u32;
            let n = name.len() as u16;
            out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
            for v in [20u16, 0, 0, 0, 0x21] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            for v in [crc, len, len] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(&n.to_le_bytes());
            out.extend_from_slice(&0u16.to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(data);

            central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
            for v in [0x0314u16, 20, 0, 0, 0, 0x21] {
                central.extend_from_slice(&v.to_le_bytes());
            }
            for v in [crc, len, len] {
                central.extend_from_slice(&v.to_le_bytes());
            }
            for v in [n, 0, 0, 0, 0] {
                central.extend_from_slice(&v.to_le_bytes());
            }
            central.extend_from_slice(&(0o100644u32 << 16).to_le_bytes());
            central.extend_from_slice(&offset.to_le_bytes());
            central.extend_from_slice(name.as_bytes());
        }
        let cd_offset = out.len() as u32;
        let cd_size = central.len() as u32;
        out.extend_from_slice(&central);
        out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        let count = entries.len() as u16;
        for v in [0u16, 0, count, count] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&cd_size.to_le_bytes());
        out.extend_from_slice(&cd_offset.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out
    }

    /// A ustar archive of regular files (names up to 100 bytes, written raw).
    pub fn tar(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, data) in entries {
            let mut h = [0u8; 512];
            h[..name.len()].copy_from_slice(name.as_bytes());
            h[100..108].copy_from_slice(b"0000644\0");
            h[108..116].copy_from_slice(b"0000000\0");
            h[116..124].copy_from_slice(b"0000000\0");
            h[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
            h[136..148].copy_from_slice(b"14000000000\0");
            h[148..156].copy_from_slice(b"        ");
            h[156] = b'0';
            h[257..263].copy_from_slice(b"ustar\0");
            h[263..265].copy_from_slice(b"00");
            let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
            h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
            out.extend_from_slice(&h);
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.resize(out.len() + 1024, 0);
        out
    }

    /// gzip of stored deflate blocks.
    pub fn gzip(data: &[u8]) -> Vec<u8> {
        let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
        let mut chunks: Vec<&[u8]> = data.chunks(65_535).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        let last = chunks.len() - 1;
        for (i, c) in chunks.iter().enumerate() {
            out.push(u8::from(i == last));
            let len = c.len() as u16;
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&(!len).to_le_bytes());
            out.extend_from_slice(c);
        }
        out.extend_from_slice(&crc32(data).to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out
    }

    /// URL-safe base64 without padding (wheel RECORD hashes).
    pub fn b64url(data: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut s = String::new();
        for c in data.chunks(3) {
            let n = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
            for i in 0..=c.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        s
    }

    pub fn metadata(name: &str, version: &str, requires_python: Option<&str>) -> String {
        let rp = requires_python
            .map(|r| format!("Requires-Python: {r}\n"))
            .unwrap_or_default();
        format!(
            "Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nSummary: A test package\n{rp}\nLong description.\n"
        )
    }

    /// An installable pure-Python wheel of module `module` whose
    /// `VERSION` is `version`, with a correct RECORD.
    pub fn wheel(
        name: &str,
        version: &str,
        module: &str,
        requires_python: Option<&str>,
    ) -> (String, Vec<u8>) {
        let dist = name.replace(['-', '.'], "_");
        let info = format!("{dist}-{version}.dist-info");
        let files: Vec<(String, Vec<u8>)> = vec![
            (
                format!("{module}/__init__.py"),
                format!("VERSION = {version:?}\n").into_bytes(),
            ),
            (
                format!("{info}/METADATA"),
                metadata(name, version, requires_python).into_bytes(),
            ),
            (
                format!("{info}/WHEEL"),
                b"Wheel-Version: 1.0\nGenerator: ferry-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
                    .to_vec(),
            ),
        ];
        let mut record = String::new();
        for (path, data) in &files {
            let hash = b64url(Digest::of(data).as_bytes());
            record.push_str(&format!("{path},sha256={hash},{}\n", data.len()));
        }
        record.push_str(&format!("{info}/RECORD,,\n"));
        let record_path = format!("{info}/RECORD");
        let mut entries: Vec<(&str, &[u8])> = files.iter().map(|(p, d)| (p.as_str(), d.as_slice())).collect();
        entries.push((&record_path, record.as_bytes()));
        (format!("{dist}-{version}-py3-none-any.whl"), zip(&entries))
    }

    /// A source distribution `{name}-{version}.tar.gz` with PKG-INFO and an
    /// in-tree PEP 517 backend that prepares metadata without setuptools
    /// (so pip can handle it offline).
    pub fn sdist(name: &str, version: &str, requires_python: Option<&str>) -> (String, Vec<u8>) {
        let base = format!("{}-{version}", name.replace(['-', '.'], "_"));
        let pkg_info = metadata(name, version, requires_python);
        let pyproject =
            "[build-system]\nrequires = []\nbuild-backend = \"backend\"\nbackend-path = [\".\"]\n";
        let backend = format!(
            "import os, shutil\n\
             def get_requires_for_build_wheel(config_settings=None):\n    return []\n\
             def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):\n    \
             d = os.path.join(metadata_directory, {info:?})\n    os.makedirs(d)\n    \
             shutil.copy('PKG-INFO', os.path.join(d, 'METADATA'))\n    return {info:?}\n",
            info = format!("{base}.dist-info")
        );
        let tar = tar(&[
            (&format!("{base}/PKG-INFO"), pkg_info.as_bytes()),
            (&format!("{base}/pyproject.toml"), pyproject.as_bytes()),
            (&format!("{base}/backend.py"), backend.as_bytes()),
        ]);
        (format!("{base}.tar.gz"), gzip(&tar))
    }
}
