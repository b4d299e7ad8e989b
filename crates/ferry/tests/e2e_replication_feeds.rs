//! Every feed type across a replication, read with its real client on the
//! spoke: npm installs and pip installs from a spoke that pulled from the
//! hub, and unpublish, yank and delete on the hub reach the spoke.
#![allow(clippy::unwrap_used)]
mod support;

use support::npm::{Npm, node};
use support::pypi::{dist, installed_version, pip_install, twine_upload, write_dists};
use support::{ADMIN, Server, curl, run_fail, run_ok, wait_until};

#[test]
fn npm_pypi_and_assets_reach_a_spoke_and_so_do_their_deletions() {
    let hub = Server::start();
    let spoke = Server::start();
    for (name, ty) in [("js", "npm"), ("py", "pypi"), ("files", "assets")] {
        hub.create_feed(name, ty);
    }
    // The spoke's npm feed has another name.
    for (name, ty) in [("js-edge", "npm"), ("py", "pypi"), ("files", "assets")] {
        spoke.create_feed(name, ty);
    }
    let hub_key = hub.key("publisher", "write");

    // Publish on the hub with the real clients.
    let npm_hub = Npm::new(&hub, "js", &hub_key);
    npm_hub.publish("@ferry/rep", "1.0.0", &[]);
    npm_hub.publish("@ferry/rep", "1.1.0", &[]);
    let tmp = tempfile::tempdir().unwrap();
    let dists = write_dists(
        tmp.path(),
        &[
            dist::wheel("replicated", "1.0", "replicated", None),
            dist::wheel("replicated", "2.0", "replicated", None),
        ],
    );
    run_ok(&mut twine_upload(&hub, "py", &hub_key, &dists, &[]));
    let auth = format!("Authorization: Bearer {hub_key}");
    let (st, _) = curl(&[
        "-X",
        "PUT",
        "--data-binary",
        "edge data",
        "-H",
        &auth,
        &format!("{}/assets/files/a/b.txt", hub.url),
    ]);
    assert_eq!(st, 201);

    // Hub: incoming push; spoke: outgoing pull of all three feeds.
    hub.cli_ok(&[
        "replication",
        "create",
        "edges",
        "--feed",
        "js",
        "--feed",
        "py",
        "--feed",
        "files",
        "--incoming",
        "--mode",
        "push",
    ]);
    let token = hub.cli_ok(&["replication", "token", "edges"]).trim().to_string();
    spoke.cli_ok(&[
        "replication",
        "create",
        "from-hub",
        "--feed",
        "js-edge=js",
        "--feed",
        "py",
        "--feed",
        "files",
        "--outgoing",
        &hub.url,
        "--token",
        &token,
        "--mode",
        "pull",
    ]);
    let out = spoke.cli_ok(&["replication", "run", "from-hub", "--wait"]);
    assert!(out.contains("succeeded"), "{out}");

    // npm on the spoke: a fresh cache, so everything comes from the spoke.
    let spoke_reader = spoke.key("reader", "read");
    let npm_spoke = Npm::new(&spoke, "js-edge", &spoke_reader);
    let app = npm_spoke.project("app");
    npm_spoke.ok(&app, &["install", "@ferry/rep"]);
    assert_eq!(
        node(&app, "console.log(require('@ferry/rep'))"),
        "@ferry/rep@1.1.0"
    );
    let view = npm_spoke.view_json(&app, "@ferry/rep");
    let tarball = view["dist"]["tarball"].as_str().unwrap();
    assert!(
        tarball.starts_with(&spoke.url),
        "spoke serves tarballs from itself: {tarball}"
    );

    // pip on the spoke.
    let index = format!("{}/pypi/py/simple/", spoke.url);
    let target = tmp.path().join("site");
    run_ok(&mut pip_install(&index, &target, "replicated"));
    assert_eq!(installed_version(&target, "replicated"), "2.0");
    assert_eq!(
        curl(&[&format!("{}/assets/files/a/b.txt", spoke.url)]).1,
        b"edge data"
    );

    // Changes on the hub: unpublish a version, yank one, delete an asset.
    npm_hub.ok(npm_hub.dir.path(), &["unpublish", "@ferry/rep@1.1.0"]);
    let (st, _) = curl(&[
        "-X",
        "POST",
        "-H",
        &auth,
        &format!("{}/pypi/py/yank/replicated/2.0", hub.url),
    ]);
    assert_eq!(st, 200);
    let (st, _) = curl(&[
        "-X",
        "DELETE",
        "-H",
        &auth,
        &format!("{}/assets/files/a/b.txt", hub.url),
    ]);
    assert_eq!(st, 204);

    // The spoke follows by itself (long polling), without a manual run.
    let packument = format!("{}/npm/js-edge/@ferry%2frep", spoke.url);
    assert!(
        wait_until(20, || {
            let (_, body) = curl(&[&packument]);
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            v["versions"].get("1.1.0").is_none() && v["dist-tags"]["latest"] == "1.0.0"
        }),
        "unpublish did not reach the spoke"
    );
    assert!(wait_until(20, || curl(&[&format!(
        "{}/assets/files/a/b.txt",
        spoke.url
    )])
    .0 == 404));
    assert!(wait_until(20, || {
        let (_, body) = curl(&[
            "-H",
            "Accept: application/vnd.pypi.simple.v1+json",
            &format!("{index}replicated/"),
        ]);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        v["files"]
            .as_array()
            .is_some_and(|fs| fs.iter().any(|f| f["yanked"] != false))
    }));
    // pip on the spoke now skips the yanked 2.0.
    let target2 = tmp.path().join("site2");
    run_ok(&mut pip_install(&index, &target2, "replicated"));
    assert_eq!(installed_version(&target2, "replicated"), "1.0");
    let app2 = npm_spoke.project("app2");
    npm_spoke.ok(&app2, &["install", "@ferry/rep"]);
    assert_eq!(
        node(&app2, "console.log(require('@ferry/rep'))"),
        "@ferry/rep@1.0.0"
    );

    // The hub is read-only for the spoke: its token cannot write there.
    let (st, body) = curl(&[
        "-X",
        "POST",
        "-H",
        &format!("Authorization: Bearer {token}"),
        "-H",
        "Content-Type: application/json",
        "--data",
        r#"{"entries":[]}"#,
        &format!("{}/api/replication/v1/feeds/js/apply", hub.url),
    ]);
    assert_eq!(st, 403, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("does not accept"));
    let out = spoke.cli_ok(&["replication", "verify", "from-hub"]);
    assert_eq!(out.matches(": same").count(), 3, "{out}");
    // A key without admin rights cannot manage replications.
    let out = run_fail(std::process::Command::new(support::bin()).args([
        "replication",
        "list",
        "--url",
        &spoke.url,
        "--api-key",
        &spoke_reader,
    ]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("403"));
    assert_ne!(ADMIN, spoke_reader);
}
