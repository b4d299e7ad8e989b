//! Replication over a long link, through `bench/latency_proxy.py` (a delay
//! line that counts the HTTP requests and bytes that cross it): a first
//! sync of many items costs a few requests, not one per blob, and a batched
//! transfer cut off midway resumes without moving again the bytes it had.
#![allow(clippy::unwrap_used)]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use support::proxy::{Proxy, random_file};
use support::{Server, wait_until};

/// Bytes held under a folder of the instance's blob store.
fn bytes_under(s: &Server, dir: &str) -> u64 {
    fn walk(p: &Path) -> u64 {
        std::fs::read_dir(p)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| match e.metadata() {
                        Ok(m) if m.is_dir() => walk(&e.path()),
                        Ok(m) => m.len(),
                        Err(_) => 0,
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    match dir {
        "sha256" => walk(&s.blob_root()),
        "partial" => walk(&s.partial_dir()),
        other => panic!("no blob area {other}"),
    }
}

/// Replication `from-hub` on `spoke`, pulling feed `files` through `proxy`.
fn pull_through(spoke: &Server, proxy: &Proxy, token: &str, extra: &[&str]) {
    let url = proxy.url();
    let mut args = vec![
        "replication",
        "create",
        "from-hub",
        "--outgoing",
        &url,
        "--token",
        token,
        "--mode",
        "pull",
        "--feed",
        "files",
    ];
    args.extend(extra);
    spoke.cli_ok(&args);
}

#[test]
fn a_first_sync_over_a_long_link_costs_a_few_requests_not_one_per_blob() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Server::start();
    hub.create_feed("files", "assets");
    let token = hub.incoming("edge", &["files"], "push");
    // 300 files too big to travel inline, 100 small ones that do.
    let big: Vec<(String, PathBuf)> = (0..300)
        .map(|i| {
            (
                format!("big/{i:03}"),
                random_file(tmp.path(), &format!("b{i}"), 70 << 10),
            )
        })
        .collect();
    hub.put_asset_files("files", &big);
    let small: Vec<(String, String)> = (0..100)
        .map(|i| (format!("small/{i:03}"), format!("small file {i}")))
        .collect();
    hub.put_assets("files", &small);

    let proxy = Proxy::start(&hub, 20, 0, &tmp.path().join("stats.json"));
    let spoke = Server::start();
    spoke.create_feed("files", "assets");
    pull_through(&spoke, &proxy, &token, &["--interval", "3600"]);
    spoke.cli_ok(&["replication", "run", "from-hub", "--wait"]);
    let stats = proxy.stats();

    for (path, file) in big.iter().step_by(37) {
        assert!(
            spoke.serves("files", path, &std::fs::read(file).unwrap()),
            "{path}"
        );
    }
    assert!(spoke.serves("files", "small/042", b"small file 42"));
    spoke.cli_ok(&["replication", "verify", "from-hub"]);
    // 400 items: a handshake, a page of changes, a few batches — where one
    // request per blob would be 400.
    let requests = stats["http_requests"].as_u64().unwrap();
    assert!(
        requests <= 16,
        "{requests} requests crossed the link for 400 items: {:#}",
        stats["requests_by_kind"]
    );
}

#[test]
fn a_batched_transfer_cut_midway_resumes_without_moving_its_bytes_again() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Server::start();
    hub.create_feed("files", "assets");
    let token = hub.incoming("edge", &["files"], "push");
    const SIZE: usize = 6 << 20;
    let files: Vec<(String, PathBuf)> = (0..2)
        .map(|i| {
            (
                format!("big/{i}"),
                random_file(tmp.path(), &format!("f{i}"), SIZE),
            )
        })
        .collect();
    hub.put_asset_files("files", &files);

    let mut proxy = Proxy::start(&hub, 0, 0, &tmp.path().join("stats-1.json"));
    let port = proxy.port;
    let spoke = Server::start();
    spoke.create_feed("files", "assets");
    pull_through(
        &spoke,
        &proxy,
        &token,
        &["--interval", "3600", "--bandwidth-limit", "2000000"],
    );
    let mut run = Command::new(support::bin())
        .args(["replication", "run", "from-hub", "--wait"])
        .env("FERRY_URL", &spoke.url)
        .env("FERRY_API_KEY", support::ADMIN)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_until(30, || bytes_under(&spoke, "partial") > 3 << 20),
        "no transfer got going"
    );
    // The link goes down mid-blob.
    proxy.kill();
    let _ = run.wait();
    let had = bytes_under(&spoke, "partial") + bytes_under(&spoke, "sha256");
    assert!(had > 3 << 20, "only {had} bytes kept after the cut");

    let proxy = Proxy::start(&hub, 0, port, &tmp.path().join("stats-2.json"));
    spoke.cli_ok(&["replication", "update", "from-hub", "--bandwidth-limit", "0"]);
    spoke.cli_ok(&["replication", "run", "from-hub", "--wait"]);
    for (path, file) in &files {
        assert!(
            spoke.serves("files", path, &std::fs::read(file).unwrap()),
            "{path}"
        );
    }
    let moved = proxy.stats()["bytes_down"].as_u64().unwrap();
    let left = (2 * SIZE) as u64 - had;
    assert!(
        moved <= left + (256 << 10),
        "the second run moved {moved} bytes, though only {left} were missing"
    );
    assert_eq!(bytes_under(&spoke, "partial"), 0);
}

const SIZE: usize = 6 << 20;

/// A spoke pushing two 6 MiB blobs to a hub through a proxy that is
/// killed midway through the upload; returns the hub, the spoke, the
/// files, the proxy's port and the bytes the hub held after the cut.
fn push_cut_midway(tmp: &Path) -> (Server, Server, Vec<(String, PathBuf)>, u16, u64) {
    let hub = Server::start();
    hub.create_feed("files", "assets");
    // The hub accepts content from the spoke.
    let token = hub.incoming("edge", &["files"], "pull");
    let files: Vec<(String, PathBuf)> = (0..2)
        .map(|i| (format!("big/{i}"), random_file(tmp, &format!("f{i}"), SIZE)))
        .collect();
    let spoke = Server::start();
    spoke.create_feed("files", "assets");
    spoke.put_asset_files("files", &files);

    let mut proxy = Proxy::start(&hub, 0, 0, &tmp.join("stats-1.json"));
    let port = proxy.port;
    let url = proxy.url();
    spoke.cli_ok(&[
        "replication",
        "create",
        "to-hub",
        "--outgoing",
        &url,
        "--token",
        &token,
        "--mode",
        "push",
        "--feed",
        "files",
        "--interval",
        "3600",
        "--bandwidth-limit",
        "2000000",
    ]);
    let mut run = Command::new(support::bin())
        .args(["replication", "run", "to-hub", "--wait"])
        .env("FERRY_URL", &spoke.url)
        .env("FERRY_API_KEY", support::ADMIN)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_until(30, || bytes_under(&hub, "partial") > 3 << 20),
        "no upload got going"
    );
    // The link goes down mid-blob.
    proxy.kill();
    let _ = run.wait();
    let had = bytes_under(&hub, "partial") + bytes_under(&hub, "sha256");
    assert!(had > 3 << 20, "the hub kept only {had} bytes after the cut");

    (hub, spoke, files, port, had)
}

/// After [`push_cut_midway`]: the link back up (a proxy on the same
/// port), the spoke runs its push again without a bandwidth cap; every
/// blob ends intact on the hub, nothing partial is left, both ends agree.
/// Returns the bytes that crossed the link for the push.
fn resume_cut_push(tmp: &Path, hub: &Server, spoke: &Server, files: &[(String, PathBuf)], port: u16) -> u64 {
    let proxy = Proxy::start(hub, 0, port, &tmp.join("stats-2.json"));
    spoke.cli_ok(&["replication", "update", "to-hub", "--bandwidth-limit", "0"]);
    spoke.cli_ok(&["replication", "run", "to-hub", "--wait"]);
    for (path, file) in files {
        assert!(hub.serves("files", path, &std::fs::read(file).unwrap()), "{path}");
    }
    let moved = proxy.stats()["bytes_up"].as_u64().unwrap();
    assert_eq!(bytes_under(hub, "partial"), 0);
    spoke.cli_ok(&["replication", "verify", "to-hub"]);
    moved
}

/// The push direction resumes too: a spoke pushing large blobs to the hub
/// through a link that goes down mid-blob keeps what the hub received (the
/// hub keeps the partial upload and says so in `blobs/missing`), and the
/// next execution sends only the rest; every blob arrives intact.
#[test]
fn a_push_cut_midway_resumes_without_moving_its_bytes_again() {
    let tmp = tempfile::tempdir().unwrap();
    let (hub, spoke, files, port, had) = push_cut_midway(tmp.path());
    let moved = resume_cut_push(tmp.path(), &hub, &spoke, &files, port);
    let left = (2 * SIZE) as u64 - had;
    assert!(
        moved <= left + (256 << 10),
        "the second run sent {moved} bytes, though only {left} were missing"
    );
}

/// The bytes an interrupted upload left on the hub are damaged before the
/// push resumes: the hub does not keep the resumed blob (it does not
/// verify), asks for it from its first byte, and ends with it intact; the
/// execution's report counts every byte that crossed, the attempt that
/// was thrown away included.
#[test]
fn a_push_whose_kept_bytes_were_damaged_sends_it_again_and_reports_what_crossed() {
    let tmp = tempfile::tempdir().unwrap();
    let (hub, spoke, files, port, _) = push_cut_midway(tmp.path());
    let mut damaged = 0;
    for e in std::fs::read_dir(hub.partial_dir()).unwrap() {
        let path = e.unwrap().path();
        let len = std::fs::metadata(&path).unwrap().len() as usize;
        if len > 0 {
            std::fs::write(&path, vec![0u8; len]).unwrap();
            damaged += 1;
        }
    }
    assert!(damaged > 0, "nothing partial to damage");

    let moved = resume_cut_push(tmp.path(), &hub, &spoke, &files, port);
    let carried = spoke
        .executions("to-hub")
        .into_iter()
        .find(|e| e["report"]["feeds"][0]["pushed"]["blobs"].as_u64().unwrap_or(0) > 0)
        .expect("no execution pushed a blob");
    let reported = carried["report"]["feeds"][0]["pushed"]["bytes"].as_u64().unwrap();
    assert!(
        reported <= moved && moved - reported < 256 << 10,
        "the report says {reported} bytes were pushed; {moved} crossed the link"
    );
}
