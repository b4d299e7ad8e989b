//! OCI feeds end to end: the real `ferry` binary and the real `skopeo`
//! (no container engine). Images are OCI layouts written by the test
//! (random gzip'd tar layers, config, manifest; a linux/amd64 + linux/arm64
//! index), pushed, inspected, pulled back and compared byte for byte;
//! tags listed and deleted; access by key; replication hub → spoke.
#![allow(clippy::unwrap_used)]
mod support;

use serde_json::Value;
use support::oci::{Image, Layout, MultiArch, Skopeo, layer};
use support::{Server, curl, wait_until};

/// A generous deadline for a change to travel (long polling makes it ~1 s).
const SYNC: u64 = 30;

/// What skopeo says when a registry turns it away.
fn refused(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    ["unauthorized", "denied", "authentication required", "401", "403"]
        .iter()
        .any(|w| s.contains(w))
}

/// The tags of a repository; a repository without any (or unknown) is empty.
fn tags(sk: &Skopeo, repo: &str, key: Option<&str>) -> Vec<String> {
    match sk.tags(repo, key) {
        Ok(t) => t,
        Err(e) => {
            assert!(
                e.contains("unknown") || e.contains("404"),
                "list-tags {repo}: {e}"
            );
            Vec::new()
        }
    }
}

/// `DELETE /v2/FEED/NAME/manifests/TAG` (tag deletion, OCI distribution 1.1).
fn delete_tag(s: &Server, feed: &str, name: &str, tag: &str, key: &str) -> (u16, String) {
    let url = format!("{}/v2/{feed}/{name}/manifests/{tag}", s.url);
    let (st, body) = curl(&["-X", "DELETE", "-u", &format!("ferry:{key}"), &url]);
    (st, String::from_utf8_lossy(&body).to_string())
}

#[test]
fn skopeo_round_trips_images_and_indexes_byte_identical_lists_tags_and_deletes() {
    let s = Server::start();
    s.create_feed("containers", "oci");
    let writer = s.key("ci", "write");
    let reader = s.key("viewer", "read");
    let tmp = tempfile::tempdir().unwrap();
    let src = Layout::create(&tmp.path().join("src"));
    let base = layer(300_000);
    let app = Image::new(vec![base.clone(), layer(60_000)], "amd64");
    let multi = MultiArch::new(&base);
    src.add_image("v1", &app);
    src.add_multi("multi", &multi);
    let sk = Skopeo::new();
    let repo = format!("{}/containers/team/app", s.addr);
    let mrepo = format!("{}/containers/team/multi", s.addr);

    sk.push_ok(&src, "v1", &format!("{repo}:v1"), &writer);
    // Same image, second tag: every blob is there already.
    sk.push_ok(&src, "v1", &format!("{repo}:latest"), &writer);

    // What was pushed is served unchanged, by tag and by digest.
    let raw = sk.inspect(&format!("{repo}:v1"), true, None, &[]).unwrap();
    assert!(
        raw == app.manifest.bytes,
        "the manifest changed: {}",
        String::from_utf8_lossy(&raw)
    );
    let by_digest = format!("{repo}@{}", app.manifest.digest);
    assert!(sk.inspect(&by_digest, true, None, &[]).unwrap() == app.manifest.bytes);
    let info: Value =
        serde_json::from_slice(&sk.inspect(&format!("{repo}:latest"), false, None, &[]).unwrap()).unwrap();
    assert_eq!(info["Digest"], app.manifest.digest.as_str(), "{info:#}");
    assert_eq!(info["Layers"], serde_json::json!(app.layer_digests()), "{info:#}");
    assert_eq!(
        (info["Os"].as_str(), info["Architecture"].as_str()),
        (Some("linux"), Some("amd64"))
    );
    assert_eq!(info["Env"][0], "PATH=/usr/bin:/bin");

    // Anonymous pull from a public feed, byte-identical.
    let out = sk.pull_ok(&format!("{repo}:v1"), &tmp.path().join("out-app"), "v1", None);
    out.assert_holds("v1", &app.manifest, &app.blobs());

    // A multi-arch index: pushed with --all, served as is, each platform
    // resolvable, pulled back whole.
    sk.push_ok(&src, "multi", &format!("{mrepo}:v1"), &writer);
    let raw = sk.inspect(&format!("{mrepo}:v1"), true, None, &[]).unwrap();
    assert!(
        raw == multi.index.bytes,
        "the index changed: {}",
        String::from_utf8_lossy(&raw)
    );
    for arch in ["amd64", "arm64"] {
        let img = multi.image(arch);
        let info: Value = serde_json::from_slice(
            &sk.inspect(&format!("{mrepo}:v1"), false, None, &["--override-arch", arch])
                .unwrap(),
        )
        .unwrap();
        // skopeo names the index's digest and describes the platform's image.
        assert_eq!(info["Digest"], multi.index.digest.as_str(), "{arch}: {info:#}");
        assert_eq!(info["Architecture"], arch, "{info:#}");
        assert_eq!(
            info["Layers"],
            serde_json::json!(img.layer_digests()),
            "{arch}: {info:#}"
        );
        let child = format!("{mrepo}@{}", img.manifest.digest);
        assert!(sk.inspect(&child, true, None, &[]).unwrap() == img.manifest.bytes);
    }
    let out = sk.pull_ok(&format!("{mrepo}:v1"), &tmp.path().join("out-multi"), "v1", None);
    out.assert_holds("v1", &multi.index, &multi.blobs());

    assert_eq!(tags(&sk, &repo, None), ["latest", "v1"]);
    assert_eq!(tags(&sk, &mrepo, None), ["v1"]);

    // A read-only key and no key at all cannot push, nor delete.
    let err = sk.push(&src, "v1", &format!("{repo}:v2"), Some(&reader));
    assert!(!err.status.success(), "a read-only key pushed");
    assert!(
        refused(&String::from_utf8_lossy(&err.stderr)),
        "{}",
        String::from_utf8_lossy(&err.stderr)
    );
    let other = Image::new(vec![layer(10_000)], "amd64");
    src.add_image("other", &other);
    let err = sk.push(&src, "other", &format!("{repo}:other"), None);
    assert!(!err.status.success(), "an anonymous push succeeded");
    let err = sk.push(&src, "other", &format!("{repo}:other"), Some(&reader));
    assert!(!err.status.success(), "a read-only key pushed new content");
    assert_eq!(tags(&sk, &repo, None), ["latest", "v1"]);
    assert!(!sk.delete(&format!("{repo}:v1"), &reader).status.success());
    assert!(sk.inspect(&format!("{repo}:v1"), true, None, &[]).is_ok());

    // What a Docker client pushes: skopeo converts to Docker schema 2 media
    // types; that manifest is served as pushed, and pulls back whole.
    let dref = format!("{}/containers/team/docker:v1", s.addr);
    let src_ref = format!("oci:{}:v1", src.dir.display());
    let creds = format!("ferry:{writer}");
    sk.ok(&[
        "copy",
        "--format",
        "v2s2",
        "--dest-tls-verify=false",
        "--dest-creds",
        &creds,
        &src_ref,
        &format!("docker://{dref}"),
    ]);
    let raw = sk.inspect(&dref, true, None, &[]).unwrap();
    let docker: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(
        docker["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(docker["layers"][0]["digest"], app.layers[0].blob.digest.as_str());
    let out = tmp.path().join("out-docker");
    sk.ok(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{dref}"),
        &format!("dir:{}", out.display()),
    ]);
    assert!(
        std::fs::read(out.join("manifest.json")).unwrap() == raw,
        "the Docker manifest changed on the way back"
    );
    for l in &app.layers {
        let file = out.join(l.blob.digest.strip_prefix("sha256:").unwrap());
        assert!(std::fs::read(file).unwrap() == l.blob.bytes);
    }

    // Deleting a tag leaves the manifest under its other tag.
    let (st, body) = delete_tag(&s, "containers", "team/app", "latest", &writer);
    assert_eq!(st, 202, "DELETE manifests/latest: {body}");
    assert_eq!(tags(&sk, &repo, None), ["v1"]);
    let gone = sk
        .inspect(&format!("{repo}:latest"), true, None, &[])
        .unwrap_err();
    assert!(gone.contains("manifest unknown"), "{gone}");
    sk.pull_ok(&format!("{repo}:v1"), &tmp.path().join("out-app2"), "v1", None)
        .assert_holds("v1", &app.manifest, &app.blobs());

    // skopeo delete removes the manifest: gone by tag and by digest.
    let del = sk.delete(&format!("{repo}:v1"), &writer);
    assert!(
        del.status.success(),
        "skopeo delete: {}",
        String::from_utf8_lossy(&del.stderr)
    );
    let gone = sk.inspect(&format!("{repo}:v1"), true, None, &[]).unwrap_err();
    assert!(gone.contains("manifest unknown"), "{gone}");
    assert!(sk.inspect(&by_digest, true, None, &[]).is_err());
    assert!(tags(&sk, &repo, None).is_empty());
    assert!(
        !sk.pull(&format!("{repo}:v1"), &tmp.path().join("out-gone"), "v1", None)
            .status
            .success()
    );
    // The index sharing its base layer is untouched.
    sk.pull_ok(&format!("{mrepo}:v1"), &tmp.path().join("out-multi2"), "v1", None)
        .assert_holds("v1", &multi.index, &multi.blobs());

    // Deleting the index by digest (what skopeo does) takes its tag with it.
    let del = sk.delete(&format!("{mrepo}:v1"), &writer);
    assert!(
        del.status.success(),
        "skopeo delete: {}",
        String::from_utf8_lossy(&del.stderr)
    );
    assert!(sk.inspect(&format!("{mrepo}:v1"), true, None, &[]).is_err());
    assert!(tags(&sk, &mrepo, None).is_empty());
}

/// Issue 7, case 6: a platform manifest that a multi-arch index lists
/// cannot be deleted by digest (409 DENIED naming the index and its tag),
/// neither with curl nor with `skopeo delete`, and the index still pulls
/// whole. Deleting the index first, the children then go.
#[test]
fn a_platform_manifest_of_an_index_cannot_be_deleted_before_the_index() {
    let s = Server::start();
    s.create_feed("containers", "oci");
    let writer = s.key("ci", "write");
    let tmp = tempfile::tempdir().unwrap();
    let src = Layout::create(&tmp.path().join("src"));
    let multi = MultiArch::new(&layer(80_000));
    src.add_multi("multi", &multi);
    let sk = Skopeo::new();
    let mrepo = format!("{}/containers/team/multi", s.addr);
    // --all: the platform manifests by digest, then the index as :multi.
    sk.push_ok(&src, "multi", &format!("{mrepo}:multi"), &writer);
    let delete = |digest: &str| {
        let url = format!("{}/v2/containers/team/multi/manifests/{digest}", s.url);
        let (st, body) = curl(&["-X", "DELETE", "-u", &format!("ferry:{writer}"), &url]);
        (st, String::from_utf8_lossy(&body).to_string())
    };

    for arch in ["amd64", "arm64"] {
        let child = &multi.image(arch).manifest.digest;
        let (st, body) = delete(child);
        assert_eq!(st, 409, "DELETE of the {arch} manifest: {body}");
        let err: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(err["errors"][0]["code"], "DENIED", "{body}");
        assert_eq!(
            err["errors"][0]["message"],
            format!(
                "manifest {child} is referenced by index {} (tags: multi); delete the index first",
                multi.index.digest
            ),
            "{body}"
        );
        let del = sk.delete(&format!("{mrepo}@{child}"), &writer);
        assert!(!del.status.success(), "skopeo deleted the {arch} manifest");
        assert!(sk.inspect(&format!("{mrepo}@{child}"), true, None, &[]).is_ok());
    }
    sk.pull_ok(&format!("{mrepo}:multi"), &tmp.path().join("out"), "multi", None)
        .assert_holds("multi", &multi.index, &multi.blobs());

    // The index first (skopeo resolves the tag and deletes by digest), then
    // its children.
    let del = sk.delete(&format!("{mrepo}:multi"), &writer);
    assert!(del.status.success(), "{}", String::from_utf8_lossy(&del.stderr));
    // A layer a manifest still lists cannot be deleted: 409 naming the
    // manifest, and it stays served.
    let image = multi.image("amd64");
    let layer_digest = image.layers[0].blob.digest.clone();
    let blob_url = format!("{}/v2/containers/team/multi/blobs/{layer_digest}", s.url);
    let delete_blob = || {
        let (st, body) = curl(&["-X", "DELETE", "-u", &format!("ferry:{writer}"), &blob_url]);
        (st, String::from_utf8_lossy(&body).to_string())
    };
    let (st, body) = delete_blob();
    assert_eq!(st, 409, "DELETE of a listed layer: {body}");
    let err: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["errors"][0]["code"], "DENIED", "{body}");
    let message = err["errors"][0]["message"].as_str().unwrap().to_string();
    assert!(
        message.contains(&image.manifest.digest) && message.contains("delete that manifest first"),
        "{message}"
    );
    let (st, _) = curl(&["-u", &format!("ferry:{writer}"), "-o", "/dev/null", &blob_url]);
    assert_eq!(st, 200, "the layer is still served after the refused DELETE");
    // A manifest is not deleted through the blobs endpoint either.
    let manifest_as_blob = format!(
        "{}/v2/containers/team/multi/blobs/{}",
        s.url, image.manifest.digest
    );
    let (st, body) = curl(&[
        "-X",
        "DELETE",
        "-u",
        &format!("ferry:{writer}"),
        &manifest_as_blob,
    ]);
    assert_eq!(
        st,
        409,
        "DELETE of a manifest as a blob: {}",
        String::from_utf8_lossy(&body)
    );

    for arch in ["amd64", "arm64"] {
        let child = &multi.image(arch).manifest.digest;
        let (st, body) = delete(child);
        assert_eq!(st, 202, "DELETE of the {arch} manifest after the index: {body}");
        assert!(sk.inspect(&format!("{mrepo}@{child}"), true, None, &[]).is_err());
    }
    // No manifest lists the layer now: the DELETE is accepted and the
    // layer is no longer served from the repository.
    let (st, body) = delete_blob();
    assert_eq!(st, 202, "DELETE of an unlisted layer: {body}");
    let (st, _) = curl(&["-u", &format!("ferry:{writer}"), "-o", "/dev/null", &blob_url]);
    assert_eq!(st, 404, "a deleted layer is still served");
    let (st, body) = delete_blob();
    assert_eq!(st, 404, "a second DELETE: {body}");
}

#[test]
fn private_feed_serves_images_only_with_a_key_for_it() {
    let s = Server::start();
    s.cli_ok(&["feed", "create", "internal", "--type", "oci", "--private"]);
    s.create_feed("public", "oci");
    let writer = s.key("ci", "write");
    let reader = s.key("viewer", "read");
    let elsewhere = s.cli_ok(&[
        "key",
        "create",
        "public-only",
        "--permission",
        "read",
        "--feed",
        "public",
    ]);
    let elsewhere = elsewhere.trim();
    let tmp = tempfile::tempdir().unwrap();
    let src = Layout::create(&tmp.path().join("src"));
    let img = Image::new(vec![layer(120_000), layer(20_000)], "amd64");
    src.add_image("v1", &img);
    let sk = Skopeo::new();
    let repo = format!("{}/internal/svc", s.addr);
    let reference = format!("{repo}:v1");

    let err = sk.push(&src, "v1", &reference, None);
    assert!(!err.status.success(), "an anonymous push succeeded");
    sk.push_ok(&src, "v1", &reference, &writer);

    // Anonymous: nothing, not even the tag list.
    let e = sk.inspect(&reference, true, None, &[]).unwrap_err();
    assert!(refused(&e), "{e}");
    assert!(sk.tags(&repo, None).is_err());
    let o = sk.pull(&reference, &tmp.path().join("anon"), "v1", None);
    assert!(
        !o.status.success(),
        "an anonymous pull from a private feed succeeded"
    );
    // A key for another feed: the same.
    assert!(sk.inspect(&reference, true, Some(elsewhere), &[]).is_err());
    assert!(
        !sk.pull(&reference, &tmp.path().join("other-key"), "v1", Some(elsewhere))
            .status
            .success()
    );

    // With --src-creds: byte-identical.
    assert!(sk.inspect(&reference, true, Some(&reader), &[]).unwrap() == img.manifest.bytes);
    assert_eq!(sk.tags(&repo, Some(&reader)).unwrap(), ["v1"]);
    sk.pull_ok(&reference, &tmp.path().join("out"), "v1", Some(&reader))
        .assert_holds("v1", &img.manifest, &img.blobs());
}

/// Sums one counter of the pulled side over executions newer than `after`.
fn pulled_since(s: &Server, name: &str, after: i64, field: &str) -> u64 {
    s.executions(name)
        .iter()
        .filter(|e| e["id"].as_i64().unwrap() > after)
        .map(|e| e["report"]["feeds"][0]["pulled"][field].as_u64().unwrap())
        .sum()
}

fn settled(s: &Server, name: &str) -> i64 {
    assert!(
        wait_until(SYNC, || s
            .executions(name)
            .iter()
            .all(|e| e["outcome"].is_string())),
        "executions of {name} did not end"
    );
    let execs = s.executions(name);
    for e in &execs {
        assert_eq!(e["outcome"], "succeeded", "{e:#}");
    }
    execs.first().map_or(0, |e| e["id"].as_i64().unwrap())
}

#[test]
fn hub_to_spoke_replicates_images_byte_identical_moving_only_missing_blobs_and_deletions() {
    let hub = Server::start();
    hub.create_feed("images", "oci");
    let token = hub.incoming("edge", &["images"], "push");
    let writer = hub.key("ci", "write");
    let tmp = tempfile::tempdir().unwrap();
    let src = Layout::create(&tmp.path().join("src"));
    let base = layer(1_500_000);
    let app = Image::new(vec![base.clone(), layer(40_000)], "amd64");
    let multi = MultiArch::new(&base);
    src.add_image("app", &app);
    src.add_multi("multi", &multi);
    let sk = Skopeo::new();
    let hub_app = format!("{}/images/team/app", hub.addr);
    let hub_multi = format!("{}/images/team/multi", hub.addr);
    sk.push_ok(&src, "app", &format!("{hub_app}:v1"), &writer);
    sk.push_ok(&src, "app", &format!("{hub_app}:stable"), &writer);
    sk.push_ok(&src, "multi", &format!("{hub_multi}:v1"), &writer);

    // A spoke configured after the pushes receives all of it.
    let spoke = Server::start();
    spoke.create_feed("images", "oci");
    spoke.outgoing("from-hub", &["images"], &hub, &token, "pull", &[]);
    let spoke_app = format!("{}/images/team/app", spoke.addr);
    let spoke_multi = format!("{}/images/team/multi", spoke.addr);
    let serves =
        |reference: &str, bytes: &[u8]| sk.inspect(reference, true, None, &[]).is_ok_and(|b| b == bytes);
    assert!(
        wait_until(SYNC, || serves(&format!("{spoke_app}:v1"), &app.manifest.bytes)),
        "the spoke lacks team/app:v1"
    );
    assert!(
        wait_until(SYNC, || serves(&format!("{spoke_multi}:v1"), &multi.index.bytes)),
        "the spoke lacks the multi-arch index"
    );
    assert!(wait_until(SYNC, || serves(
        &format!("{spoke_app}:stable"),
        &app.manifest.bytes
    )));
    sk.pull_ok(
        &format!("{spoke_app}:v1"),
        &tmp.path().join("spoke-app"),
        "v1",
        None,
    )
    .assert_holds("v1", &app.manifest, &app.blobs());
    sk.pull_ok(
        &format!("{spoke_multi}:v1"),
        &tmp.path().join("spoke-multi"),
        "v1",
        None,
    )
    .assert_holds("v1", &multi.index, &multi.blobs());
    assert_eq!(tags(&sk, &spoke_app, None), ["stable", "v1"]);
    // A platform manifest the index lists cannot be deleted on the hub, so
    // the spoke keeps serving it (checked once the next push has arrived).
    let child = &multi.image("arm64").manifest.digest;
    let url = format!("{}/v2/images/team/multi/manifests/{child}", hub.url);
    let (st, body) = curl(&["-X", "DELETE", "-u", &format!("ferry:{writer}"), &url]);
    assert_eq!(st, 409, "{}", String::from_utf8_lossy(&body));
    let before = settled(&spoke, "from-hub");
    assert!(spoke.verified("from-hub"));

    // A second image on the same base, in another repository: only its own
    // blobs cross the wire.
    let worker = Image::new(vec![base.clone(), layer(25_000)], "amd64");
    src.add_image("worker", &worker);
    let hub_worker = format!("{}/images/team/worker", hub.addr);
    let spoke_worker = format!("{}/images/team/worker", spoke.addr);
    sk.push_ok(&src, "worker", &format!("{hub_worker}:v1"), &writer);
    assert!(
        wait_until(SYNC, || serves(
            &format!("{spoke_worker}:v1"),
            &worker.manifest.bytes
        )),
        "the spoke lacks team/worker:v1"
    );
    settled(&spoke, "from-hub");
    assert!(serves(
        &format!("{spoke_multi}@{child}"),
        &multi.image("arm64").manifest.bytes
    ));
    let blobs = pulled_since(&spoke, "from-hub", before, "blobs");
    let bytes = pulled_since(&spoke, "from-hub", before, "bytes");
    // Its manifest, config and new layer; not the shared base.
    let own = worker.manifest.size() + worker.config.size() + worker.layers[1].blob.size();
    assert_eq!(
        (blobs, bytes),
        (3, own),
        "the second image pulled {blobs} blobs, {bytes} bytes; its own blobs are 3 of {own} bytes \
         (the shared base is {} bytes)",
        base.blob.size()
    );
    sk.pull_ok(
        &format!("{spoke_worker}:v1"),
        &tmp.path().join("spoke-worker"),
        "v1",
        None,
    )
    .assert_holds("v1", &worker.manifest, &worker.blobs());

    // Nothing new: an execution that moves nothing.
    spoke.cli_ok(&["replication", "run", "from-hub", "--wait"]);
    let last = &spoke.executions("from-hub")[0];
    assert_eq!(last["outcome"], "succeeded");
    let pulled = &last["report"]["feeds"][0]["pulled"];
    assert_eq!(
        (pulled["added"].as_u64(), pulled["blobs"].as_u64()),
        (Some(0), Some(0)),
        "{last:#}"
    );

    // A tag moved on the hub moves on the spoke.
    sk.push_ok(&src, "worker", &format!("{hub_app}:stable"), &writer);
    assert!(
        wait_until(SYNC, || serves(
            &format!("{spoke_app}:stable"),
            &worker.manifest.bytes
        )),
        "the spoke's team/app:stable did not follow the hub"
    );
    assert!(serves(&format!("{spoke_app}:v1"), &app.manifest.bytes));

    // Deletions on the hub reach the spoke: a tag, a manifest, an index.
    let (st, body) = delete_tag(&hub, "images", "team/app", "stable", &writer);
    assert_eq!(st, 202, "DELETE manifests/stable on the hub: {body}");
    assert!(
        wait_until(SYNC, || tags(&sk, &spoke_app, None) == ["v1"]),
        "the spoke kept the deleted tag: {:?}",
        tags(&sk, &spoke_app, None)
    );
    let del = sk.delete(&format!("{hub_app}:v1"), &writer);
    assert!(del.status.success(), "{}", String::from_utf8_lossy(&del.stderr));
    let del = sk.delete(&format!("{hub_multi}:v1"), &writer);
    assert!(del.status.success(), "{}", String::from_utf8_lossy(&del.stderr));
    assert!(
        wait_until(SYNC, || sk
            .inspect(&format!("{spoke_app}:v1"), true, None, &[])
            .is_err()),
        "the spoke still serves the deleted team/app:v1"
    );
    assert!(
        wait_until(SYNC, || sk
            .inspect(&format!("{spoke_multi}:v1"), true, None, &[])
            .is_err()),
        "the spoke still serves the deleted index"
    );
    let by_digest = format!("{spoke_app}@{}", app.manifest.digest);
    assert!(wait_until(SYNC, || sk
        .inspect(&by_digest, true, None, &[])
        .is_err()));
    assert!(tags(&sk, &spoke_app, None).is_empty());
    // The image that still uses the shared base is whole on the spoke.
    sk.pull_ok(
        &format!("{spoke_worker}:v1"),
        &tmp.path().join("spoke-worker2"),
        "v1",
        None,
    )
    .assert_holds("v1", &worker.manifest, &worker.blobs());
    settled(&spoke, "from-hub");
    assert!(spoke.verified("from-hub"));
}

/// OCI feeds over a mirror replication: images pushed on either end (one a
/// multi-arch index) reach the other, a tag deleted on one end goes on the
/// other, and both ends verify equal.
#[test]
fn a_mirror_pair_carries_images_and_tag_deletions_both_ways() {
    let a = Server::start();
    a.create_feed("images", "oci");
    let token = a.incoming("pair", &["images"], "mirror");
    let b = Server::start();
    b.create_feed("images", "oci");
    b.outgoing("pair", &["images"], &a, &token, "mirror", &[]);
    let (key_a, key_b) = (a.key("ci", "write"), b.key("ci", "write"));

    let tmp = tempfile::tempdir().unwrap();
    let src = Layout::create(&tmp.path().join("src"));
    let base = layer(600_000);
    let web = Image::new(vec![base.clone(), layer(30_000)], "amd64");
    let multi = MultiArch::new(&base);
    src.add_image("web", &web);
    src.add_multi("multi", &multi);
    let sk = Skopeo::new();
    sk.push_ok(&src, "web", &format!("{}/images/web:v1", a.addr), &key_a);
    sk.push_ok(&src, "web", &format!("{}/images/web:old", a.addr), &key_a);
    sk.push_ok(&src, "multi", &format!("{}/images/multi:v1", b.addr), &key_b);

    let serves =
        |reference: &str, bytes: &[u8]| sk.inspect(reference, true, None, &[]).is_ok_and(|x| x == bytes);
    assert!(
        wait_until(SYNC, || serves(
            &format!("{}/images/web:v1", b.addr),
            &web.manifest.bytes
        )),
        "web:v1 did not reach b"
    );
    assert!(
        wait_until(SYNC, || serves(
            &format!("{}/images/multi:v1", a.addr),
            &multi.index.bytes
        )),
        "the index did not reach a"
    );
    sk.pull_ok(
        &format!("{}/images/multi:v1", a.addr),
        &tmp.path().join("a-multi"),
        "v1",
        None,
    )
    .assert_holds("v1", &multi.index, &multi.blobs());
    sk.pull_ok(
        &format!("{}/images/web:v1", b.addr),
        &tmp.path().join("b-web"),
        "v1",
        None,
    )
    .assert_holds("v1", &web.manifest, &web.blobs());

    // A tag deleted on b goes on a; the other tag stays on both.
    assert!(wait_until(SYNC, || tags(
        &sk,
        &format!("{}/images/web", b.addr),
        None
    ) == ["old", "v1"]));
    let (st, body) = delete_tag(&b, "images", "web", "old", &key_b);
    assert_eq!(st, 202, "{body}");
    assert!(
        wait_until(SYNC, || tags(&sk, &format!("{}/images/web", a.addr), None)
            == ["v1"]),
        "the tag deletion did not reach a"
    );
    assert!(serves(&format!("{}/images/web:v1", a.addr), &web.manifest.bytes));
    b.cli_ok(&["replication", "run", "pair", "--wait"]);
    b.cli_ok(&["replication", "verify", "pair"]);
}

/// OCI feeds over a push replication (a build site sending to a hub that
/// only receives): images arrive, and a deleted manifest goes too.
#[test]
fn a_push_replication_sends_images_and_deletions_to_the_hub() {
    let hub = Server::start();
    hub.create_feed("images", "oci");
    let token = hub.incoming("from-ci", &["images"], "pull");
    let site = Server::start();
    site.create_feed("images", "oci");
    site.outgoing("to-hub", &["images"], &hub, &token, "push", &[]);
    let key = site.key("ci", "write");

    let tmp = tempfile::tempdir().unwrap();
    let src = Layout::create(&tmp.path().join("src"));
    let api = Image::new(vec![layer(300_000), layer(20_000)], "amd64");
    src.add_image("api", &api);
    let sk = Skopeo::new();
    sk.push_ok(&src, "api", &format!("{}/images/api:v1", site.addr), &key);
    let on_hub = format!("{}/images/api:v1", hub.addr);
    assert!(
        wait_until(SYNC, || sk
            .inspect(&on_hub, true, None, &[])
            .is_ok_and(|b| b == api.manifest.bytes)),
        "the image did not reach the hub"
    );
    sk.pull_ok(&on_hub, &tmp.path().join("hub-api"), "v1", None)
        .assert_holds("v1", &api.manifest, &api.blobs());

    // Deleting the manifest by digest on the site removes it from the hub.
    let url = format!("{}/v2/images/api/manifests/{}", site.url, api.manifest.digest);
    let (st, body) = curl(&["-X", "DELETE", "-u", &format!("ferry:{key}"), &url]);
    assert_eq!(st, 202, "{}", String::from_utf8_lossy(&body));
    assert!(
        wait_until(SYNC, || sk.inspect(&on_hub, true, None, &[]).is_err()),
        "the deletion did not reach the hub"
    );
    site.cli_ok(&["replication", "verify", "to-hub"]);
}
