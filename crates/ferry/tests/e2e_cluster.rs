//! Several `ferry serve` nodes on one PostgreSQL database and one blob
//! folder, as one instance: what one node writes, every node serves and
//! long-polling peers hear at once; a replication's execution runs on one
//! node at a time and, when that node is killed, is finished by another.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use ferry_testkit::pg::TestDatabase;
use support::{Server, wait_until};

fn cluster(db: &TestDatabase, data: &std::path::Path, n: usize, env: &[(&str, &str)]) -> Vec<Server> {
    (0..n).map(|_| Server::start_node(data, &db.url, env)).collect()
}

#[test]
fn nodes_share_one_instance_and_wake_each_others_long_polls() {
    let db = TestDatabase::new();
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(&db, &dir.path().join("data"), 2, &[]);
    let (a, b) = (&nodes[0], &nodes[1]);
    let id = |s: &Server| {
        let (code, body) = support::curl(&[
            "-s",
            "-H",
            &format!("Authorization: Bearer {}", support::ADMIN),
            &format!("{}/api/v1/instance", s.url),
        ]);
        assert_eq!(code, 200);
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["instance_id"].clone()
    };
    assert_eq!(id(a), id(b), "one instance id");

    a.create_feed("files", "assets");
    a.put_asset("files", "one.txt", b"written through a");
    assert!(
        b.serves("files", "one.txt", b"written through a"),
        "b serves a's write"
    );
    b.put_asset("files", "two.txt", b"written through b");
    assert!(a.serves("files", "two.txt", b"written through b"));

    // A spoke long-polls node b; a file written through node a reaches it
    // without waiting for its (hour-long) interval.
    let token = a.incoming("to-spokes", &["files"], "push");
    let spoke = Server::pulling_spoke(b, "files", &token);
    let out = spoke.cli_ok(&["replication", "run", "from-hub", "--wait"]);
    assert!(
        spoke.serves("files", "two.txt", b"written through b"),
        "{out}\n{:#?}",
        spoke.executions("from-hub")
    );
    std::thread::sleep(Duration::from_millis(500)); // the spoke is now long-polling b
    let t = Instant::now();
    a.put_asset("files", "three.txt", b"news from a");
    assert!(
        wait_until(15, || spoke.serves("files", "three.txt", b"news from a")),
        "the spoke long-polling node b never heard of a write through node a"
    );
    eprintln!("write through a -> served by a spoke of b: {:?}", t.elapsed());

    // A deleted feed is gone on every node.
    a.cli_ok(&["feed", "create", "short-lived", "--type", "npm"]);
    assert!(b.cli_ok(&["feed", "list"]).contains("short-lived"));
    let (code, _) = support::curl(&[
        "-s",
        "-o",
        "/dev/null",
        &format!("{}/npm/short-lived/anything", a.url),
    ]);
    assert_eq!(code, 404, "(a missing package)");
    b.cli_ok(&["feed", "delete", "short-lived"]);
    assert!(!a.cli_ok(&["feed", "list"]).contains("short-lived"));
    // Without a key, a public feed's missing package is 404 (above) and a
    // feed that does not exist is 401, as for any feed one may not see.
    let (code, _) = support::curl(&[
        "-s",
        "-o",
        "/dev/null",
        &format!("{}/npm/short-lived/anything", a.url),
    ]);
    assert_eq!(code, 401, "node a still serves a feed deleted through node b");
}

#[test]
fn an_execution_cut_by_a_killed_node_is_finished_by_another() {
    // The hub: an ordinary instance with content worth a few seconds of
    // transfer at the spoke cluster's bandwidth cap.
    let hub = Server::start();
    hub.create_feed("files", "assets");
    let files: Vec<(String, Vec<u8>)> = (0..12)
        .map(|i| {
            let body: Vec<u8> = (0..400_000u32).map(|j| ((j * 31 + i * 7) % 251) as u8).collect();
            (format!("f{i}.bin"), body)
        })
        .collect();
    for (path, body) in &files {
        hub.put_asset("files", path, body);
    }
    let token = hub.incoming("to-spokes", &["files"], "push");

    // The spoke is a cluster of two nodes that take over a dead node's
    // executions after 3 s.
    let db = TestDatabase::new();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let env = [("FERRY_EXECUTION_LEASE_SECS", "3")];
    let mut a = Server::start_node(&data, &db.url, &env);
    a.create_feed("files", "assets");
    a.outgoing(
        "from-hub",
        &["files"],
        &hub,
        &token,
        "pull",
        &["--interval", "2", "--bandwidth-limit", "1000000"],
    );
    // Node a starts the first execution (its scheduler runs it at once).
    assert!(
        wait_until(20, || a
            .executions("from-hub")
            .first()
            .is_some_and(|e| e["outcome"].is_null())),
        "node a never started an execution"
    );
    let b = Server::start_node(&data, &db.url, &env);
    std::thread::sleep(Duration::from_millis(1500));
    let running = a.executions("from-hub")[0].clone();
    assert!(running["outcome"].is_null(), "still running on a: {running}");
    a.kill();

    // Node b takes over once a's lease runs out, closes a's execution as
    // interrupted and finishes the job.
    assert!(
        wait_until(60, || files.iter().all(|(p, body)| b.serves("files", p, body))),
        "node b did not finish the execution node a was killed in: {:#?}",
        b.executions("from-hub")
    );
    let execs = b.executions("from-hub");
    let cut = execs.iter().find(|e| e["id"] == running["id"]).unwrap();
    assert_eq!(cut["outcome"], "interrupted", "{cut}");
    assert!(execs.iter().any(|e| e["outcome"] == "succeeded"), "{execs:#?}");
    // Nothing lost or doubled: the spoke holds exactly the hub's items,
    // and verify agrees.
    let served = b.asset_digests("files", "");
    assert_eq!(served.len(), files.len(), "{served:?}");
    assert_eq!(served, hub.asset_digests("files", ""));
    assert!(b.verified("from-hub"));
}
