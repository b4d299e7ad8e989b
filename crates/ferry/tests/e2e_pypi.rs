//! The PyPI feed with the real binary and the real clients: twine uploads,
//! pip and uv install (and pip downloads the sdist), yanking as pip and uv
//! see it, deletes, a private feed, and a restart.
#![allow(clippy::unwrap_used)]
mod support;

use std::path::Path;
use std::process::Command;

use support::pypi::{
    client, dist, installed_version, pip_install, stderr, twine_upload, uv_install, write_dists,
};
use support::{Server, curl, run_fail, run_ok, tool};

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
    // uv resolves from the wheel's core metadata alone (PEP 658) and does
    // not fetch the wheel to do so.
    let out = run_ok(
        client("uv")
            .args([
                "pip",
                "install",
                "--no-cache",
                "--dry-run",
                "-v",
                "--index-url",
                &index,
            ])
            .arg("--python")
            .arg(tool("python3"))
            .arg("--target")
            .arg(tmp.path().join("dry"))
            .arg("Ferry_Demo")
            .env("NO_COLOR", "1"),
    );
    let log = stderr(&out);
    assert!(log.contains(".whl.metadata#sha256="), "{log}");
    assert!(
        !log.contains(".whl#sha256="),
        "uv fetched the wheel to resolve: {log}"
    );

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

/// twine cannot add a file equivalent to one the release has
/// (`dupe-1.0-…` after `Dupe-1.0.0-…`): 409, and pip and uv both install
/// the one file there is for `dupe==1.0.0`.
#[test]
fn an_equivalent_file_is_refused_and_pip_and_uv_install_the_same_bytes() {
    let s = Server::start();
    s.create_feed("py", "pypi");
    let key = s.key("publisher", "write");
    let tmp = tempfile::tempdir().unwrap();
    let first = write_dists(tmp.path(), &[dist::wheel("Dupe", "1.0.0", "dupe", None)]);
    let other = tempfile::tempdir().unwrap();
    let second = write_dists(other.path(), &[dist::wheel("dupe", "1.0", "dupe", None)]);
    run_ok(&mut twine_upload(&s, "py", &key, &first, &[]));
    let out = run_fail(&mut twine_upload(&s, "py", &key, &second, &["--verbose"]));
    assert!(stderr(&out).contains("409"), "{}", stderr(&out));

    let index = format!("{}/pypi/py/simple/", s.url);
    let (status, body) = curl(&[
        "-H",
        "Accept: application/vnd.pypi.simple.v1+json",
        &format!("{index}dupe/"),
    ]);
    assert_eq!(status, 200);
    let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let files = page["files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "{page}");
    assert_eq!(files[0]["filename"], "Dupe-1.0.0-py3-none-any.whl");
    let pip_dir = tmp.path().join("pip");
    run_ok(&mut pip_install(&index, &pip_dir, "dupe==1.0.0"));
    let uv_dir = tmp.path().join("uv");
    run_ok(&mut uv_install(&index, &uv_dir, "dupe==1.0.0"));
    assert_eq!(installed_version(&pip_dir, "dupe"), "1.0.0");
    assert_eq!(installed_version(&uv_dir, "dupe"), "1.0.0");
}
