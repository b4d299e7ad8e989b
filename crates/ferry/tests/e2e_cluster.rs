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
    // Node b runs from before the replication exists: it learns of it from
    // the shared database, not from its own start.
    let b = Server::start_node(&data, &db.url, &env);
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

#[test]
fn a_node_that_loses_its_database_answers_503_and_recovers_by_itself() {
    let mut db = TestDatabase::private();
    let dir = tempfile::tempdir().unwrap();
    let node = Server::start_node(&dir.path().join("data"), &db.url, &[]);
    node.create_feed("files", "assets");
    node.put_asset("files", "kept.txt", b"written before the outage");
    let ready = || support::curl(&["-s", "-o", "/dev/null", &format!("{}/ready", node.url)]).0;
    assert_eq!(ready(), 200);

    db.kill_server();
    assert!(
        wait_until(15, || ready() == 503),
        "/ready still answers while the database is down"
    );
    let (code, head) = support::curl(&[
        "-s",
        "-D",
        "-",
        "-o",
        "/dev/null",
        &node.asset_url("files", "kept.txt"),
    ]);
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert_eq!(code, 503, "{head}");
    assert!(
        head.contains("retry-after: 5"),
        "a 503 says when to retry: {head}"
    );
    assert!(
        !head.contains("127.0.0.1:"),
        "the database's address is not for clients: {head}"
    );
    let (code, _) = support::curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-T",
        "/etc/hostname",
        "-H",
        &format!("Authorization: Bearer {}", support::ADMIN),
        &node.asset_url("files", "during.txt"),
    ]);
    assert_eq!(code, 503, "an upload during the outage");

    db.restart_server();
    assert!(wait_until(30, || ready() == 200), "/ready did not recover");
    assert!(node.serves("files", "kept.txt", b"written before the outage"));
    assert!(
        node.lacks("files", "during.txt"),
        "nothing of the refused upload is stored"
    );
    node.put_asset("files", "after.txt", b"written after");
    assert!(node.serves("files", "after.txt", b"written after"));
}

#[test]
fn a_node_with_a_data_directory_of_its_own_keeps_the_instances_admin_key() {
    let db = TestDatabase::new();
    let dir = tempfile::tempdir().unwrap();
    // No FERRY_ADMIN_KEY: the first node makes the key and saves it.
    let env = [("FERRY_ADMIN_KEY", "")];
    let a = Server::start_node(&dir.path().join("a"), &db.url, &env);
    let key = std::fs::read_to_string(dir.path().join("a/admin.key")).unwrap();
    let feeds = |s: &Server, key: &str| {
        support::curl(&[
            "-s",
            "-o",
            "/dev/null",
            "-H",
            &format!("Authorization: Bearer {}", key.trim()),
            &format!("{}/api/v1/feeds", s.url),
        ])
        .0
    };
    assert_eq!(feeds(&a, &key), 200);
    // A second node on another data directory neither makes a new key nor
    // replaces the instance's; one with a stale admin.key does not either.
    let b = Server::start_node(&dir.path().join("b"), &db.url, &env);
    assert!(!dir.path().join("b/admin.key").exists(), "a second key was made");
    std::fs::create_dir_all(dir.path().join("c")).unwrap();
    std::fs::write(
        dir.path().join("c/admin.key"),
        "ferry_a-stale-key-of-another-instance",
    )
    .unwrap();
    let c = Server::start_node(&dir.path().join("c"), &db.url, &env);
    for s in [&a, &b, &c] {
        assert_eq!(feeds(s, &key), 200, "the instance's admin key stopped working");
        assert_eq!(feeds(s, "ferry_a-stale-key-of-another-instance"), 401);
    }
}
