//! OCI feeds on a two-way mirror pair, where each end takes pushes and
//! deletes while the other cannot see them: a re-push of the same image
//! after a delete on the other end wins (the user's latest action), and a
//! platform manifest that a live index lists is never deleted by a change
//! from the other end (the execution names it as stuck until the index
//! goes), while an index and its platform manifests deleted together go
//! together.
#![allow(clippy::unwrap_used)]
mod support;

use serde_json::{Value, json};
use support::oci::{Blob, INDEX, Image, Layout, MultiArch, Skopeo, layer};
use support::{Server, curl, wait_until};

/// A generous deadline for a change to travel (long polling makes it ~1 s).
const SYNC: u64 = 30;

/// A mirror pair: `a` takes the incoming side, `b` runs the replication.
fn pair() -> (Server, Server) {
    let a = Server::start();
    a.create_feed("images", "oci");
    let token = a.incoming("pair", &["images"], "mirror");
    let b = Server::start();
    b.create_feed("images", "oci");
    b.outgoing("pair", &["images"], &a, &token, "mirror", &[]);
    (a, b)
}

/// Whether `reference` is served with exactly `bytes`.
fn serves(sk: &Skopeo, reference: &str, bytes: &[u8]) -> bool {
    sk.inspect(reference, true, None, &[]).is_ok_and(|b| b == bytes)
}

/// The tags of a repository; none (or an unknown repository) is empty.
fn tags(sk: &Skopeo, repo: &str) -> Vec<String> {
    sk.tags(repo, None).unwrap_or_default()
}

/// `DELETE /v2/images/REPO/manifests/REFERENCE` on `s`: (status, body).
fn delete(s: &Server, key: &str, repo: &str, reference: &str) -> (u16, String) {
    let url = format!("{}/v2/images/{repo}/manifests/{reference}", s.url);
    let (st, body) = curl(&["-X", "DELETE", "-u", &format!("ferry:{key}"), &url]);
    (st, String::from_utf8_lossy(&body).to_string())
}

/// An OCI index over `images` (their platform is linux/ARCH).
fn index_over(images: &[&Image]) -> Blob {
    let manifests: Vec<Value> = images
        .iter()
        .map(|i| {
            let mut d = i.manifest.descriptor();
            d["platform"] = json!({ "architecture": i.arch, "os": "linux" });
            d
        })
        .collect();
    let doc = json!({ "schemaVersion": 2, "mediaType": INDEX, "manifests": manifests });
    Blob::new(INDEX, serde_json::to_vec_pretty(&doc).unwrap())
}

/// Waits until every execution of `b`'s replication has ended; returns them.
fn ended(b: &Server) -> Vec<Value> {
    // One listing in which every execution has ended (the scheduler may
    // start another one right after, after a change applied here).
    let mut seen = Vec::new();
    assert!(
        wait_until(SYNC, || {
            seen = b.executions("pair");
            seen.iter().all(|e| e["outcome"].is_string())
        }),
        "executions did not end"
    );
    seen
}

/// `ferry replication run pair --wait` on `b`: (success, stdout + stderr).
fn run(b: &Server) -> (bool, String) {
    let out = b.cli(&["replication", "run", "pair", "--wait"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Fault 1: a push of manifest bytes an instance already holds is a write
/// of its own. A deletes an image (by digest, taking its tags) and a tag of
/// another; B, which has not seen those deletes, gets the same images
/// pushed again under the same tags. The pushes are the later actions: once
/// the pair converges, both ends serve both images under those tags.
#[test]
fn a_repush_of_identical_bytes_wins_over_an_earlier_delete_on_the_other_end() {
    let (mut a, mut b) = pair();
    let (key_a, key_b) = (a.key("ci", "write"), b.key("ci", "write"));
    let tmp = tempfile::tempdir().unwrap();
    let src = Layout::create(&tmp.path().join("src"));
    let web = Image::new(vec![layer(200_000), layer(20_000)], "amd64");
    let api = Image::new(vec![layer(50_000)], "amd64");
    src.add_image("web", &web);
    src.add_image("api", &api);
    let sk = Skopeo::new();
    let on = |s: &Server, r: &str| format!("{}/images/{r}", s.addr);
    sk.push_ok(&src, "web", &on(&a, "web:v1"), &key_a);
    sk.push_ok(&src, "api", &on(&a, "api:v1"), &key_a);
    sk.push_ok(&src, "api", &on(&a, "api:old"), &key_a);
    assert!(
        wait_until(SYNC, || serves(&sk, &on(&b, "web:v1"), &web.manifest.bytes)
            && tags(&sk, &on(&b, "api")) == ["old", "v1"]),
        "the images did not reach b"
    );

    // B is away while A deletes.
    b.kill();
    let del = sk.delete(&on(&a, "web:v1"), &key_a);
    assert!(del.status.success(), "{}", String::from_utf8_lossy(&del.stderr));
    assert_eq!(delete(&a, &key_a, "api", "old").0, 202);
    // A is away while the same images are pushed to B again, which still
    // holds them exactly.
    a.kill();
    b.restart();
    sk.push_ok(&src, "web", &on(&b, "web:v1"), &key_b);
    sk.push_ok(&src, "api", &on(&b, "api:old"), &key_b);
    a.restart();
    b.cli_ok(&["replication", "run", "pair", "--wait"]);
    b.cli_ok(&["replication", "run", "pair", "--wait"]);

    for s in [&a, &b] {
        assert!(
            serves(&sk, &on(s, "web:v1"), &web.manifest.bytes),
            "{}: web:v1 was pushed last, after its delete on a",
            s.url
        );
        assert!(serves(
            &sk,
            &on(s, &format!("web@{}", web.manifest.digest)),
            &web.manifest.bytes
        ));
        assert_eq!(tags(&sk, &on(s, "web")), ["v1"], "{}", s.url);
        assert_eq!(
            tags(&sk, &on(s, "api")),
            ["old", "v1"],
            "{}: api:old was pushed last, after its delete on a",
            s.url
        );
        assert!(serves(&sk, &on(s, "api:old"), &api.manifest.bytes));
        sk.pull_ok(
            &on(s, "web:v1"),
            &tmp.path().join(format!("web-{}", s.addr.replace(':', "-"))),
            "v1",
            None,
        )
        .assert_holds("v1", &web.manifest, &web.blobs());
    }
    assert!(wait_until(SYNC, || b.verified("pair")), "verify must pass");
}

/// Fault 2: B pushes an index over a platform manifest both ends hold; A,
/// before the index reaches it, deletes that manifest by digest (nothing
/// lists it there). The delete must not reach B while B's index lists the
/// manifest: B keeps it, and the execution names it as stuck. Once the
/// index is deleted, the stuck delete goes through and the pair converges.
#[test]
fn a_replicated_delete_of_a_manifest_a_live_index_lists_waits_as_stuck() {
    let (mut a, mut b) = pair();
    let (key_a, key_b) = (a.key("ci", "write"), b.key("ci", "write"));
    let tmp = tempfile::tempdir().unwrap();
    let src = Layout::create(&tmp.path().join("src"));
    let amd = Image::new(vec![layer(60_000)], "amd64");
    let index = index_over(&[&amd]);
    src.add_image("amd", &amd);
    src.add("multi", &index, &amd.blobs());
    let sk = Skopeo::new();
    let on = |s: &Server, r: &str| format!("{}/images/{r}", s.addr);
    let child = format!("plat@{}", amd.manifest.digest);
    let child_key = format!("manifest/plat/{}", amd.manifest.digest);
    sk.push_ok(&src, "amd", &on(&a, "plat:amd"), &key_a);
    assert!(
        wait_until(SYNC, || serves(&sk, &on(&b, "plat:amd"), &amd.manifest.bytes)),
        "the image did not reach b"
    );

    // A is away while B pushes the index; then B is away while A deletes
    // the platform manifest, which no index lists there.
    a.kill();
    sk.push_ok(&src, "multi", &on(&b, "plat:multi"), &key_b);
    b.kill();
    a.restart();
    let (st, body) = delete(&a, &key_a, "plat", &amd.manifest.digest);
    assert_eq!(st, 202, "{body}");
    b.restart();

    let (ok, out) = run(&b);
    assert!(!ok, "a refused delete must not look like success: {out}");
    assert!(out.contains(&child_key), "the stuck item is named: {out}");
    // The execution this run started ("execution N of pair: …"); others
    // the scheduler starts around the restarts may have ended since.
    let id: i64 = out
        .split_whitespace()
        .skip_while(|w| *w != "execution")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no execution id in {out}"));
    let execs = ended(&b);
    let ours = execs.iter().find(|e| e["id"] == id).unwrap();
    let stuck: Vec<&Value> = ours["report"]["stuck"].as_array().into_iter().flatten().collect();
    assert!(
        stuck.iter().any(|s| s["key"] == child_key.as_str()
            && s["reason"]
                .as_str()
                .unwrap()
                .contains(&format!("referenced here by index {}", index.digest))),
        "the stuck item and the index holding it: {ours:#}"
    );
    // B still serves the index whole, the platform manifest included.
    assert!(serves(&sk, &on(&b, &child), &amd.manifest.bytes));
    sk.pull_ok(&on(&b, "plat:multi"), &tmp.path().join("b-multi"), "multi", None)
        .assert_holds("multi", &index, &amd.blobs());
    // Retried by the next run, and refused again while the index lives.
    let (ok, out) = run(&b);
    assert!(!ok && out.contains(&child_key), "{out}");
    assert!(serves(&sk, &on(&b, &child), &amd.manifest.bytes));

    // The index goes (on B): the platform manifest's delete follows, and
    // both ends agree.
    let del = sk.delete(&on(&b, "plat:multi"), &key_b);
    assert!(del.status.success(), "{}", String::from_utf8_lossy(&del.stderr));
    assert!(
        wait_until(SYNC, || run(&b).0 && b.verified("pair")),
        "the pair did not converge once the index was deleted: {}",
        run(&b).1
    );
    for s in [&a, &b] {
        assert!(sk.inspect(&on(s, &child), true, None, &[]).is_err(), "{}", s.url);
        assert!(sk.inspect(&on(s, "plat:multi"), true, None, &[]).is_err());
    }
}

/// Fault 2, one batch: A deletes an index and then its platform manifests
/// while B is away; B receives all of it in one page, and applies it
/// whole: nothing is stuck, nothing stays behind.
#[test]
fn an_index_and_its_manifests_deleted_together_replicate_in_one_run() {
    let (a, mut b) = pair();
    let key_a = a.key("ci", "write");
    let tmp = tempfile::tempdir().unwrap();
    let src = Layout::create(&tmp.path().join("src"));
    let multi = MultiArch::new(&layer(40_000));
    src.add_multi("multi", &multi);
    let sk = Skopeo::new();
    let on = |s: &Server, r: &str| format!("{}/images/{r}", s.addr);
    sk.push_ok(&src, "multi", &on(&a, "multi:v1"), &key_a);
    assert!(
        wait_until(SYNC, || serves(&sk, &on(&b, "multi:v1"), &multi.index.bytes)),
        "the index did not reach b"
    );
    let before = ended(&b).first().map_or(0, |e| e["id"].as_i64().unwrap());

    b.kill();
    let del = sk.delete(&on(&a, "multi:v1"), &key_a);
    assert!(del.status.success(), "{}", String::from_utf8_lossy(&del.stderr));
    for arch in ["amd64", "arm64"] {
        let (st, body) = delete(&a, &key_a, "multi", &multi.image(arch).manifest.digest);
        assert_eq!(st, 202, "{arch}: {body}");
    }
    b.restart();
    let (ok, out) = run(&b);
    assert!(ok, "one run carries the index and its manifests' deletes: {out}");
    for e in ended(&b).iter().filter(|e| e["id"].as_i64().unwrap() > before) {
        assert_eq!(e["outcome"], "succeeded", "{e:#}");
        let stuck = e["report"]["stuck"].as_array().cloned().unwrap_or_default();
        assert!(stuck.is_empty(), "{e:#}");
    }
    assert!(sk.inspect(&on(&b, "multi:v1"), true, None, &[]).is_err());
    for arch in ["amd64", "arm64"] {
        let child = format!("multi@{}", multi.image(arch).manifest.digest);
        assert!(
            sk.inspect(&on(&b, &child), true, None, &[]).is_err(),
            "b still serves the {arch} manifest"
        );
    }
    assert!(b.verified("pair"));
}
