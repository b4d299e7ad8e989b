//! The real `npm` CLI against the real binary: publish (plain and scoped),
//! install, view, dist-tag, deprecate, unpublish, and a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod support;

use support::npm::{Npm, node};
use support::{Server, run_ok};

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
