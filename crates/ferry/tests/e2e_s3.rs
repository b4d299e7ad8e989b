//! The real `ferry` binary with its blobs in an S3-compatible bucket
//! (`s3s-fs`, started by the test): curl uploads and ranged downloads, npm
//! publish and install, a filesystem hub replicating into an S3-backed
//! spoke (killed with -9 mid-transfer, resuming from its spool), `verify`
//! and `fsck` agreeing, and the bucket going away: `/ready` fails and
//! downloads answer 503 until it is back.
#![allow(clippy::unwrap_used)]
mod support;

use std::io::Read;
use std::path::{Path, PathBuf};

use ferry_testkit::s3s::{self, S3Server};
use support::npm::Npm;
use support::{Server, curl, run_ok, wait_until};

const BUCKET: &str = "ferry";
const SYNC: u64 = 60;
const SIZE: u64 = 24 << 20;

fn random_file(dir: &Path, name: &str, size: u64) -> PathBuf {
    let path = dir.join(name);
    let mut src = std::fs::File::open("/dev/urandom").unwrap().take(size);
    let mut dst = std::fs::File::create(&path).unwrap();
    std::io::copy(&mut src, &mut dst).unwrap();
    path
}

/// A configuration file putting blobs in `s3`'s bucket under `prefix`;
/// credentials come from the AWS variables (see [`s3_env`]).
fn s3_config(dir: &Path, s3: &S3Server, prefix: &str) -> PathBuf {
    let path = dir.join(format!("{prefix}.toml"));
    let text = format!(
        "[blob_store]\ntype = \"s3\"\nendpoint = \"{}\"\nbucket = \"{BUCKET}\"\nregion = \"us-east-1\"\n\
         path_style = true\nallow_http = true\nprefix = \"{prefix}/\"\npart_size_mib = 5\n",
        s3.endpoint
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn s3_server(conf: &Path) -> Server {
    Server::start_with(&[
        ("FERRY_CONFIG", conf.to_str().unwrap()),
        // The file's bucket, in every pass (not the harness's).
        ("FERRY_BLOB_STORE", "s3"),
        ("AWS_ACCESS_KEY_ID", s3s::ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", s3s::SECRET_KEY),
    ])
}

/// Objects under `prefix/sha256/` in the bucket.
fn objects(s3: &S3Server, prefix: &str) -> usize {
    let dir = s3.root().join(BUCKET).join(prefix).join("sha256");
    let Ok(shards) = std::fs::read_dir(dir) else {
        return 0;
    };
    shards
        .flatten()
        .map(|s| std::fs::read_dir(s.path()).map(|f| f.count()).unwrap_or(0))
        .sum()
}

/// Bytes in the spool's `partial/` folder (transfers in flight).
fn partial_bytes(s: &Server) -> u64 {
    std::fs::read_dir(s.data.join("blob-spool/partial"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn an_s3_backed_instance_serves_replicates_resumes_and_survives_the_bucket_going_away() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s3 = S3Server::start(BUCKET);
    let mut spoke = s3_server(&s3_config(tmp.path(), &s3, "spoke"));

    // curl: a multipart-sized upload, whole and ranged downloads.
    spoke.create_feed("uploads", "assets");
    let big = random_file(tmp.path(), "big.bin", 12 << 20);
    let data = std::fs::read(&big).unwrap();
    spoke.put_asset_file("uploads", "big.bin", &big);
    assert_eq!(objects(&s3, "spoke"), 1, "the blob is in the bucket");
    let url = spoke.asset_url("uploads", "big.bin");
    let (st, body) = curl(&[&url]);
    assert_eq!(st, 200);
    assert!(body == data, "whole download differs");
    let (st, body) = curl(&["-r", "5242870-5242889", &url]);
    assert_eq!((st, body.as_slice()), (206, &data[5_242_870..5_242_890]));
    let (st, body) = curl(&["-r", "12582000-", &url]);
    assert_eq!((st, body.as_slice()), (206, &data[12_582_000..]));

    // npm publish and install through it.
    spoke.create_feed("js", "npm");
    let key = spoke.key("npm-writer", "write");
    let npm = Npm::new(&spoke, "js", &key);
    npm.publish("s3-greet", "1.0.0", &[]);
    let app = npm.project("app");
    run_ok(&mut npm.cmd(&app, "fresh-cache", &["install", "s3-greet"]));
    let installed = std::fs::read_to_string(app.join("node_modules/s3-greet/index.js")).unwrap();
    assert!(installed.contains("s3-greet@1.0.0"), "{installed}");

    // A filesystem hub replicates into the S3-backed spoke; the spoke is
    // killed mid-transfer and resumes from what its spool kept.
    let mut hub = Server::start();
    hub.create_feed("files", "assets");
    let token = hub.incoming("edge", &["files"], "push");
    let files: Vec<(String, PathBuf)> = (1..=2)
        .map(|i| {
            let name = format!("image-{i}.img");
            (format!("images/{name}"), random_file(tmp.path(), &name, SIZE))
        })
        .collect();
    for (p, f) in &files {
        hub.put_asset_file("files", p, f);
    }
    hub.put_asset("files", "docs/readme.txt", b"read me");
    spoke.create_feed("files", "assets");
    spoke.outgoing(
        "from-hub",
        &["files"],
        &hub,
        &token,
        "pull",
        &["--interval", "3600", "--bandwidth-limit", "16000000"],
    );
    assert!(
        wait_until(SYNC, || partial_bytes(&spoke) >= 4 << 20),
        "no transfer under way"
    );
    let ids = |s: &Server| -> Vec<i64> {
        s.executions("from-hub")
            .iter()
            .map(|e| e["id"].as_i64().unwrap())
            .collect()
    };
    let before_kill = ids(&spoke);
    spoke.kill();
    let kept = partial_bytes(&spoke);
    assert!(kept > 0, "the partial transfers were lost");
    spoke.restart();
    // (On PostgreSQL the killed process's execution lease must run out
    // first: the restarted one is another node.)
    let mut out = String::new();
    let ran = wait_until(SYNC, || {
        let o = spoke.cli(&["replication", "run", "from-hub", "--wait"]);
        out = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        if !o.status.success() {
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        o.status.success()
    });
    assert!(ran && out.contains("succeeded"), "{out}");
    let resumed: u64 = spoke
        .executions("from-hub")
        .iter()
        .filter(|e| !before_kill.contains(&e["id"].as_i64().unwrap()))
        .map(|e| e["report"]["feeds"][0]["pulled"]["bytes"].as_u64().unwrap_or(0))
        .sum();
    assert!(
        resumed + kept <= 2 * SIZE + 7,
        "transfers started over: {resumed} bytes after the restart, {kept} kept at the kill"
    );
    let all_there = || {
        files
            .iter()
            .all(|(p, f)| spoke.serves("files", p, &std::fs::read(f).unwrap()))
            && spoke.serves("files", "docs/readme.txt", b"read me")
    };
    assert!(
        wait_until(SYNC * 2, all_there),
        "the replication did not complete"
    );
    assert!(spoke.verified("from-hub"), "replication verify disagrees");
    spoke.cli_ok(&["fsck"]);
    assert_eq!(partial_bytes(&spoke), 0, "partial transfers left behind");
    // big.bin, npm's tarball, the two images and the readme at least.
    assert!(objects(&s3, "spoke") >= 5, "{} objects", objects(&s3, "spoke"));

    // The bucket goes away: not ready, downloads 503; back: both recover.
    let ready = format!("{}/ready", spoke.url);
    assert_eq!(curl(&[&ready]).0, 200);
    s3.stop();
    assert_eq!(curl(&[&ready]).0, 503);
    let (st, _) = curl(&[&url]);
    assert_eq!(st, 503, "a download while the bucket is away");
    let (st, _) = curl(&["-r", "0-9", &url]);
    assert_eq!(st, 503);
    s3.restart();
    assert!(
        wait_until(SYNC, || curl(&[&ready]).0 == 200),
        "ready did not recover"
    );
    let (st, body) = curl(&[&url]);
    assert_eq!(st, 200);
    assert!(body == data);
    hub.stop();
    spoke.stop();
}

/// A `[blob_store]` bucket that does not exist stops `ferry serve` at
/// start with a message naming it (s3s-fs answers a GET inside a missing
/// bucket with NoSuchKey, so the start asks about the bucket itself).
#[test]
fn a_bucket_that_does_not_exist_stops_the_start_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(BUCKET);
    let conf = tmp.path().join("missing.toml");
    std::fs::write(
        &conf,
        format!(
            "[blob_store]\ntype = \"s3\"\nendpoint = \"{}\"\nbucket = \"never-created\"\n\
             region = \"us-east-1\"\npath_style = true\nallow_http = true\n",
            s3.endpoint
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(support::bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(tmp.path().join("data"))
        .env("FERRY_CONFIG", &conf)
        .env("FERRY_ADMIN_KEY", support::ADMIN)
        .env("AWS_ACCESS_KEY_ID", s3s::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", s3s::SECRET_KEY)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let exited = wait_until(30, || child.try_wait().unwrap().is_some());
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        exited,
        "ferry serve started on a bucket that does not exist: {err}"
    );
    assert!(!out.status.success());
    assert!(err.contains("bucket never-created at http://127.0.0.1:"), "{err}");
    assert!(err.contains("does not exist"), "{err}");
}
