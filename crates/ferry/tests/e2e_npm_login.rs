//! The real `npm` CLI against the real binary: `npm login` with any user
//! name and an API key as the password stores a working token (publish and
//! install with it), `npm whoami`, `npm logout` (which revokes nothing), a
//! wrong password refused; `npm search` finds a package by keyword, and
//! nothing from a feed the key cannot read (issue 9, items 1 and 2).
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod support;

use std::process::Command;

use support::npm::{Npm, node};
use support::{Server, curl, run_ok};

/// Answers npm's interactive prompts on a pseudo-terminal (npm reads the
/// user name and password from a TTY): `python3 -c LOGIN USER PASSWORD CMD...`.
const LOGIN: &str = r#"
import os, pty, sys, time, select
user, password, args = sys.argv[1], sys.argv[2], sys.argv[3:]
pid, fd = pty.fork()
if pid == 0:
    os.execvp(args[0], args)
buf, sent, deadline = b"", 0, time.time() + 120
while time.time() < deadline:
    r, _, _ = select.select([fd], [], [], 0.5)
    if not r:
        continue
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        break
    if not chunk:
        break
    buf += chunk
    if sent == 0 and b"Username:" in buf:
        os.write(fd, user.encode() + b"\r"); sent = 1
    elif sent == 1 and b"Password:" in buf:
        os.write(fd, password.encode() + b"\r"); sent = 2
_, status = os.waitpid(pid, 0)
sys.stdout.write(buf.decode(errors="replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#;

/// An npm setup for `feed` whose .npmrc holds no token yet.
fn logged_out(s: &Server, feed: &str) -> Npm {
    let npm = Npm::new(s, feed, "none");
    let registry = format!("{}/npm/{feed}/", s.url);
    std::fs::write(npm.dir.path().join("npmrc"), format!("registry={registry}\n")).unwrap();
    npm
}

/// `npm login` answering the prompts with `user` and `password`.
fn login(s: &Server, npm: &Npm, feed: &str, user: &str, password: &str) -> std::process::Output {
    let registry = format!("{}/npm/{feed}/", s.url);
    let dir = npm.dir.path();
    Command::new("python3")
        .args([
            "-c",
            LOGIN,
            user,
            password,
            "npm",
            "login",
            "--registry",
            &registry,
        ])
        .arg("--userconfig")
        .arg(dir.join("npmrc"))
        .arg("--globalconfig")
        .arg(dir.join("globalrc"))
        .arg("--cache")
        .arg(dir.join("cache"))
        .current_dir(dir)
        .env("HOME", dir)
        .env("npm_config_update_notifier", "false")
        .env("npm_config_fetch_retries", "0")
        .output()
        .unwrap()
}

fn npmrc(npm: &Npm) -> String {
    std::fs::read_to_string(npm.dir.path().join("npmrc")).unwrap()
}

#[test]
fn npm_login_publish_install_search_logout() {
    let s = Server::start();
    s.cli_ok(&["feed", "create", "team", "--type", "npm", "--private"]);
    s.cli_ok(&["feed", "create", "hidden", "--type", "npm", "--private"]);
    let key = s
        .cli_ok(&["key", "create", "dev", "--permission", "write", "--feed", "team"])
        .trim()
        .to_owned();
    let npm = logged_out(&s, "team");
    let here = npm.dir.path().to_path_buf();

    // Without a token: a private feed asks for one.
    let out = npm.fail(&here, &["whoami"]);
    assert!(!out.status.success());

    // A wrong password is refused, and nothing is stored.
    let out = login(&s, &npm, "team", "alice", "not-a-key");
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("E401"));
    assert!(!npmrc(&npm).contains("_authToken"));
    let body = r#"{"name":"alice","password":"not-a-key"}"#.to_owned();
    let (status, answer) = curl(&[
        "-X",
        "PUT",
        "-H",
        "content-type: application/json",
        "--data",
        &body,
        &format!("{}/npm/team/-/user/org.couchdb.user:alice", s.url),
    ]);
    assert_eq!(status, 401);
    assert!(String::from_utf8_lossy(&answer).contains("not an API key"));

    // Any user name and the key as the password.
    let out = login(&s, &npm, "team", "alice", &key);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("Logged in on"), "{said}");
    assert!(
        npmrc(&npm).contains(&format!("/npm/team/:_authToken={key}")),
        "{}",
        npmrc(&npm)
    );
    assert_eq!(npm.ok(&here, &["whoami"]).trim(), "dev");

    // Publish and install with the stored token.
    let pkg = npm.package(
        "ferry-login-demo",
        "1.0.0",
        &[],
        "module.exports = 'logged in';\n",
    );
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(pkg.join("package.json")).unwrap()).unwrap();
    manifest["keywords"] = serde_json::json!(["ferrykw", "demo"]);
    std::fs::write(pkg.join("package.json"), manifest.to_string()).unwrap();
    npm.ok(&pkg, &["publish"]);
    let app = npm.project("app");
    run_ok(&mut npm.cmd(&app, "cache-install", &["install", "ferry-login-demo"]));
    assert_eq!(
        node(&app, "console.log(require('ferry-login-demo'))"),
        "logged in"
    );

    // A package in a feed the key cannot read.
    let admin_npm = Npm::new(&s, "hidden", support::ADMIN);
    let secret = admin_npm.package("ferry-secret-demo", "1.0.0", &[], "module.exports = 1;\n");
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(secret.join("package.json")).unwrap()).unwrap();
    manifest["keywords"] = serde_json::json!(["ferrykw"]);
    std::fs::write(secret.join("package.json"), manifest.to_string()).unwrap();
    admin_npm.ok(&secret, &["publish"]);

    // npm search finds the package by keyword, and only in its feed.
    let found: serde_json::Value =
        serde_json::from_str(&npm.ok(&here, &["search", "ferrykw", "--json"])).unwrap();
    let names: Vec<&str> = found
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["ferry-login-demo"], "{found}");
    assert_eq!(found[0]["version"], "1.0.0");
    assert_eq!(found[0]["keywords"], serde_json::json!(["ferrykw", "demo"]));
    let text = npm.ok(&here, &["search", "login-demo"]);
    assert!(text.contains("ferry-login-demo"), "{text}");
    // The hidden feed's search does not exist for this key.
    let (status, _) = curl(&[
        "-H",
        &format!("Authorization: Bearer {key}"),
        &format!("{}/npm/hidden/-/v1/search?text=ferrykw", s.url),
    ]);
    assert_eq!(status, 404);
    let (status, _) = curl(&[&format!("{}/npm/hidden/-/v1/search?text=ferrykw", s.url)]);
    assert_eq!(status, 401);
    let out = npm.fail(
        &here,
        &[
            "search",
            "ferrykw",
            "--registry",
            &format!("{}/npm/hidden/", s.url),
        ],
    );
    assert!(!out.status.success());

    // npm logout forgets the token here and revokes nothing.
    npm.ok(&here, &["logout"]);
    assert!(!npmrc(&npm).contains("_authToken"), "{}", npmrc(&npm));
    let again = Npm::new(&s, "team", &key);
    assert_eq!(again.ok(again.dir.path(), &["whoami"]).trim(), "dev");
}
