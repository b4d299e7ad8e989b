//! Behind a reverse proxy under a path prefix (`http://PROXY/registry/` →
//! Ferry): with `base_url` set, npm tarball URLs carry the prefix, and PyPI
//! pages link files relative to themselves, so real clients install
//! through the proxy.
#![allow(clippy::unwrap_used)]
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use support::npm::Npm;
use support::pypi::{installed_version, pip_install, twine_upload, uv_install, write_dists};
use support::{ADMIN, Server, curl, run_ok, tool};

/// The prefix proxy in front of `upstream`, stopped by PID on drop.
struct Proxy {
    child: Child,
    port: u16,
}

impl Proxy {
    fn start(upstream: &str, prefix: &str, port: u16) -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/prefix_proxy.py");
        let mut child = Command::new(tool("python3"))
            .args([script, upstream, prefix, &port.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().strip_prefix("listening ").unwrap().parse().unwrap();
        Self { child, port }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn npm_and_pip_install_through_a_path_prefix_proxy() {
    // Ferry's base_url names the proxy, which needs Ferry's address: pick
    // the proxy's port first, start Ferry, then the proxy on that port.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_port = probe.local_addr().unwrap().port();
    drop(probe);
    let base = format!("http://127.0.0.1:{proxy_port}/registry");
    let mut s = Server::start_with(&[("FERRY_BASE_URL", &base)]);
    let proxy = Proxy::start(&s.addr, "registry", proxy_port);
    assert_eq!(proxy.port, proxy_port);
    s.create_feed("js", "npm");
    s.create_feed("py", "pypi");

    // npm: the packument names tarballs under the proxy's prefix.
    let npm = Npm::new(&s, "js", ADMIN);
    npm.publish("behind-proxy", "1.0.0", &[]);
    let (st, body) = curl(&[&format!("{base}/npm/js/behind-proxy")]);
    assert_eq!(st, 200);
    let packument: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let tarball = packument["versions"]["1.0.0"]["dist"]["tarball"]
        .as_str()
        .unwrap();
    assert!(tarball.starts_with(&format!("{base}/npm/js/")), "{tarball}");
    let app = npm.project("app");
    run_ok(
        npm.cmd(&app, "proxy-cache", &["install", "behind-proxy"])
            .args(["--registry", &format!("{base}/npm/js/")]),
    );
    assert!(app.join("node_modules/behind-proxy/package.json").exists());

    // PyPI: links are relative to the page, and pip and uv follow them
    // through the proxy (a redirect to the normalized name included).
    let tmp = tempfile::tempdir().unwrap();
    let dists = write_dists(
        tmp.path(),
        &[ferry_testkit::pypi::wheel(
            "Proxied.Pkg",
            "2.0",
            "proxied_pkg",
            None,
        )],
    );
    run_ok(&mut twine_upload(&s, "py", ADMIN, &dists, &[]));
    let (st, page) = curl(&[&format!("{base}/pypi/py/simple/proxied-pkg/")]);
    assert_eq!(st, 200);
    let page = String::from_utf8_lossy(&page);
    assert!(page.contains("href=\"../../files/proxied-pkg/"), "{page}");
    let (st, _) = curl(&["-o", "/dev/null", &format!("{base}/pypi/py/simple/Proxied.Pkg/")]);
    assert_eq!(st, 301);
    let index = format!("{base}/pypi/py/simple/");
    let pip_target = tmp.path().join("pip");
    run_ok(&mut pip_install(&index, &pip_target, "Proxied.Pkg==2.0"));
    assert_eq!(installed_version(&pip_target, "proxied_pkg"), "2.0");
    let uv_target = tmp.path().join("uv");
    run_ok(&mut uv_install(&index, &uv_target, "proxied-pkg"));
    assert_eq!(installed_version(&uv_target, "proxied_pkg"), "2.0");
    s.stop();
}

/// The web UI through the same proxy: links, forms, assets, redirects and
/// the session cookie's path carry the prefix, so signing in and moving
/// around never leaves it.
#[test]
fn the_web_ui_works_through_a_path_prefix_proxy() {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_port = probe.local_addr().unwrap().port();
    drop(probe);
    let origin = format!("http://127.0.0.1:{proxy_port}");
    let base = format!("{origin}/registry");
    let mut s = Server::start_with(&[("FERRY_BASE_URL", &base)]);
    let _proxy = Proxy::start(&s.addr, "registry", proxy_port);
    let (st, login) = curl(&[&format!("{base}/login")]);
    assert_eq!(st, 200);
    let login = String::from_utf8_lossy(&login);
    assert!(login.contains("action=\"/registry/login\""), "{login}");
    assert!(
        login.contains("href=\"/registry/ui/assets/ferry.css\""),
        "{login}"
    );
    let (st, _) = curl(&[&format!("{origin}/registry/ui/assets/ferry.css")]);
    assert_eq!(st, 200);

    let tmp = tempfile::tempdir().unwrap();
    let headers = tmp.path().join("headers");
    let (st, _) = curl(&[
        "-D",
        headers.to_str().unwrap(),
        "-H",
        &format!("Origin: {origin}"),
        "--data-urlencode",
        &format!("key={ADMIN}"),
        &format!("{base}/login"),
    ]);
    assert_eq!(st, 303);
    let headers = std::fs::read_to_string(&headers).unwrap();
    let header = |name: &str| -> String {
        headers
            .lines()
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
            .unwrap_or_else(|| panic!("no {name}: {headers}"))
    };
    assert_eq!(header("location"), "/registry/");
    let cookie = header("set-cookie");
    assert!(cookie.contains("Path=/registry/;"), "{cookie}");
    let pair = cookie.split(';').next().unwrap();
    let (st, home) = curl(&["-H", &format!("Cookie: {pair}"), &format!("{base}/")]);
    assert_eq!(st, 200);
    let home = String::from_utf8_lossy(&home);
    assert!(home.contains("href=\"/registry/replications/new\""), "{home}");
    assert!(home.contains("action=\"/registry/logout\""), "{home}");
    s.stop();
}

#[test]
fn a_bad_base_url_is_refused_at_start() {
    for bad in ["ftp://x", "http://", "https://h/p?q=1", "no-scheme.example"] {
        let out = Command::new(support::bin())
            .args([
                "serve",
                "--data-dir",
                "/nonexistent-ferry-base",
                "--listen",
                "127.0.0.1:0",
            ])
            .env("FERRY_BASE_URL", bad)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad} was accepted");
        assert!(String::from_utf8_lossy(&out.stderr).contains("base_url"), "{bad}");
    }
}
