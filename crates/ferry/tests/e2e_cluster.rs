//! Several `ferry serve` nodes on one PostgreSQL database and one blob
//! folder — or one S3 bucket (s3s-fs) — as one instance: what one node
//! writes, every node serves and long-polling peers hear at once; a
//! replication's execution runs on one node at a time and, when that node
//! is killed, is finished by another; npm, twine, skopeo and curl writing
//! through three nodes at once; an OCI upload session goes on through any
//! node on one folder (and stays with its node on one bucket); web UI
//! sessions work on every node;
//! a lost database (503s, metrics still scraped) and one refused at start.
//! The tests that matter for the blob store run on both (`Blobs`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_testkit::pg::TestDatabase;
use support::npm::Npm;
use support::oci::{Image, Layout, Skopeo, layer};
use support::pypi::{client, dist, twine_upload, write_dists};
use support::{Bucket, Server, run_ok, wait_until};

/// Where the nodes of a cluster keep their blobs.
#[derive(Clone, Copy, Debug)]
enum Blobs {
    /// One blob folder: every node on the same data directory.
    Folder,
    /// One bucket (and prefix); every node on a data directory of its own
    /// (its spool), as nodes on separate machines would be.
    Bucket,
}

/// The shared storage of a cluster's nodes, and how to start one more.
struct Shared {
    db: TestDatabase,
    dir: tempfile::TempDir,
    blobs: Blobs,
    bucket: Option<Bucket>,
    started: usize,
}

impl Shared {
    fn new(blobs: Blobs) -> Self {
        Self::on(TestDatabase::new(), blobs)
    }

    fn on(db: TestDatabase, blobs: Blobs) -> Self {
        let bucket = matches!(blobs, Blobs::Bucket).then(Bucket::new);
        Shared {
            db,
            dir: tempfile::tempdir().unwrap(),
            blobs,
            bucket,
            started: 0,
        }
    }

    /// The data directory of the next node.
    fn next_data(&mut self) -> PathBuf {
        self.started += 1;
        match self.blobs {
            Blobs::Folder => self.dir.path().join("data"),
            Blobs::Bucket => self.dir.path().join(format!("node-{}", self.started)),
        }
    }

    fn node(&mut self, env: &[(&str, &str)]) -> Server {
        let data = self.next_data();
        Server::start_node_on(&data, &self.db.url, self.bucket.as_ref(), env)
    }

    fn nodes(&mut self, n: usize, env: &[(&str, &str)]) -> Vec<Server> {
        (0..n).map(|_| self.node(env)).collect()
    }

    /// The content objects in the bucket (`sha256/*/*`).
    fn objects(&self) -> usize {
        let Some(b) = &self.bucket else { return 0 };
        count_files(&b.object_path("sha256"))
    }
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        count_files(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

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

    // Revoking the sync token through node a ends a long poll waiting on
    // node b at once with the refusal, not at the end of its 60 s wait.
    let changes = format!("{}/api/replication/v1/feeds/files/changes", b.url);
    let bearer = format!("Authorization: Bearer {token}");
    let (code, body) = support::curl(&["-H", &bearer, &format!("{changes}?since=0")]);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let last = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["last_seq"]
        .as_i64()
        .unwrap();
    let poll = {
        let (url, bearer) = (format!("{changes}?since={last}&wait=60"), bearer.clone());
        std::thread::spawn(move || support::curl(&["--max-time", "40", "-H", &bearer, &url]))
    };
    std::thread::sleep(Duration::from_millis(1000));
    let (code, body) = support::curl(&[
        "-X",
        "DELETE",
        "-H",
        &format!("Authorization: Bearer {}", support::ADMIN),
        &format!("{}/api/v1/replications/to-spokes/tokens/{}", a.url, &token[4..20]),
    ]);
    assert_eq!(code, 204, "{}", String::from_utf8_lossy(&body));
    let (code, body) = poll.join().unwrap();
    assert_eq!(
        code,
        401,
        "the long poll on node b did not end with the refusal (curl gives up at 40 s): {}",
        String::from_utf8_lossy(&body)
    );

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

    // A registry token one node issued is good on the other (OCI clients
    // behind a load balancer ask one node for it and use it on the next).
    a.cli_ok(&["feed", "create", "img", "--type", "oci"]);
    let (code, body) = support::curl(&[
        "-s",
        "-u",
        &format!("any:{}", support::ADMIN),
        &format!(
            "{}/v2/token?service=ferry&scope=repository:img/app:pull,push",
            a.url
        ),
    ]);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let token = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    for node in [a, b] {
        let (code, body) = support::curl(&[
            "-s",
            "-H",
            &format!("Authorization: Bearer {token}"),
            &format!("{}/v2/img/app/tags/list", node.url),
        ]);
        // No such repository yet: 404 NAME_UNKNOWN, past authentication.
        assert_eq!(code, 404, "{}: {}", node.url, String::from_utf8_lossy(&body));
    }
    // A token of another key is refused on every node alike.
    let (code, _) = support::curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-H",
        &format!("Authorization: Bearer {token}x"),
        &format!("{}/v2/img/app/tags/list", b.url),
    ]);
    assert_eq!(code, 401);
}

#[test]
fn an_execution_cut_by_a_killed_node_is_finished_by_another() {
    execution_cut_by_a_killed_node_is_finished_by_another(Blobs::Folder);
}

#[test]
fn on_one_bucket_an_execution_cut_by_a_killed_node_is_finished_by_another() {
    execution_cut_by_a_killed_node_is_finished_by_another(Blobs::Bucket);
}

fn execution_cut_by_a_killed_node_is_finished_by_another(blobs: Blobs) {
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
    let mut shared = Shared::new(blobs);
    let env = [("FERRY_EXECUTION_LEASE_SECS", "3")];
    let mut a = shared.node(&env);
    // Node b runs from before the replication exists: it learns of it from
    // the shared database, not from its own start.
    let b = shared.node(&env);
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
    // Node b shows the execution a runs, and says Stop belongs to a.
    let overview = || {
        let (code, body) = support::curl(&[
            "-s",
            "-H",
            &format!("Authorization: Bearer {}", support::ADMIN),
            &format!("{}/api/v1/replications/from-hub", b.url),
        ]);
        assert_eq!(code, 200);
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()
    };
    assert!(
        wait_until(10, || overview()["status"]["last_execution"] == running["id"]),
        "{:#}",
        overview()
    );
    assert_eq!(overview()["status"]["state"], "running on another node");
    // ... and its log so far, which node a saves while it runs.
    assert!(
        wait_until(10, || b.executions("from-hub")[0]["report"]["log"]
            .to_string()
            .contains("connected to instance")),
        "{:#?}",
        b.executions("from-hub")
    );
    a.kill();

    // Node b takes over once a's lease runs out and goes on with a's
    // execution, under its id, to the end.
    assert!(
        wait_until(60, || files.iter().all(|(p, body)| b.serves("files", p, body))),
        "node b did not finish the execution node a was killed in: {:#?}",
        b.executions("from-hub")
    );
    assert_taken_over_and_finished(&b, "from-hub", &running);
    // Nothing lost or doubled: the spoke holds exactly the hub's items,
    // and verify agrees.
    let served = b.asset_digests("files", "");
    assert_eq!(served.len(), files.len(), "{served:?}");
    assert_eq!(served, hub.asset_digests("files", ""));
    assert!(b.verified("from-hub"));
    if let Blobs::Bucket = blobs {
        // Each blob once in the bucket, however many nodes fetched it.
        assert_eq!(shared.objects(), files.len(), "{blobs:?}");
    }
    b.cli_ok(&["fsck"]);
}

/// A Stop asked through the node that does not run the execution ends
/// it on the node that does, at once (the database carries the request),
/// and its log says who asked through which node. With nothing running,
/// Stop says so on every node.
#[test]
fn a_stop_through_any_node_ends_the_execution_where_it_runs() {
    let hub = Server::start();
    hub.create_feed("files", "assets");
    for i in 0..12u32 {
        let body: Vec<u8> = (0..400_000u32).map(|j| ((j * 17 + i * 5) % 253) as u8).collect();
        hub.put_asset("files", &format!("f{i}.bin"), &body);
    }
    let token = hub.incoming("to-spokes", &["files"], "push");
    let mut shared = Shared::new(Blobs::Folder);
    let env = [("FERRY_EXECUTION_LEASE_SECS", "6")];
    let a = shared.node(&env);
    let b = shared.node(&env);
    a.create_feed("files", "assets");
    a.outgoing(
        "from-hub",
        &["files"],
        &hub,
        &token,
        "pull",
        &["--interval", "3600", "--bandwidth-limit", "300000"],
    );
    assert!(
        wait_until(20, || a
            .executions("from-hub")
            .first()
            .is_some_and(|e| e["outcome"].is_null())),
        "no node started an execution"
    );
    let running = a.executions("from-hub")[0].clone();
    let state = |node: &Server| {
        let (code, body) = support::curl(&[
            "-s",
            "-H",
            &format!("Authorization: Bearer {}", support::ADMIN),
            &format!("{}/api/v1/replications/from-hub", node.url),
        ]);
        assert_eq!(code, 200);
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["status"]["state"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let mut other = None;
    assert!(
        wait_until(20, || {
            other = [&a, &b]
                .into_iter()
                .find(|n| state(n) == "running on another node");
            other.is_some()
        }),
        "neither node says the execution runs on the other"
    );
    let other = other.unwrap();
    // Some bytes moved (as the running execution's saved report says)
    // before it is stopped: its record keeps them.
    let moving = || {
        a.executions("from-hub")
            .into_iter()
            .find(|e| e["id"] == running["id"])
            .and_then(|e| e["report"]["running"]["bytes"].as_u64())
            .unwrap_or(0)
    };
    assert!(wait_until(20, || moving() > 0), "no bytes moved");
    let moved_before = moving();
    let asked = other.cli_ok(&["replication", "stop", "from-hub"]);
    assert!(asked.contains(&running["id"].to_string()), "{asked}");
    let ended = || {
        a.executions("from-hub")
            .into_iter()
            .find(|e| e["id"] == running["id"])
            .filter(|e| !e["outcome"].is_null())
    };
    assert!(
        wait_until(10, || ended().is_some()),
        "the execution did not stop: {:#?}",
        a.executions("from-hub")
    );
    let done = ended().unwrap();
    assert_eq!(done["outcome"], "stopped", "{done:#}");
    let log = done["report"]["log"].to_string();
    assert!(log.contains("stopped by key admin (through node"), "{log}");
    let moved = done["report"]["moved"]["bytes"].as_u64().unwrap_or(0);
    assert!(moved >= moved_before, "{moved} < {moved_before}: {done:#}");
    assert!(
        hub.asset_digests("files", "").len() > b.asset_digests("files", "").len(),
        "it stopped before the end"
    );
    // Nothing runs now: Stop says so through either node.
    for node in [&a, &b] {
        let out = node.cli(&["replication", "stop", "from-hub"]);
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && said.contains("no running execution"),
            "{said}"
        );
    }
}

/// The execution `cut` (as a killed node left it running) of replication
/// `name` ended `succeeded` on another node, which says in its log that it
/// took it over; no other execution of it was cut short.
fn assert_taken_over_and_finished(node: &Server, name: &str, cut: &serde_json::Value) {
    let ended = || {
        node.executions(name)
            .into_iter()
            .find(|e| e["id"] == cut["id"])
            .filter(|e| !e["outcome"].is_null())
    };
    assert!(
        wait_until(60, || ended().is_some()),
        "execution {} never ended: {:#?}",
        cut["id"],
        node.executions(name)
    );
    let done = ended().unwrap();
    assert_eq!(done["outcome"], "succeeded", "{done:#}");
    assert_eq!(
        done["trigger"], cut["trigger"],
        "the same execution, not a new one: {done:#}"
    );
    let log = done["report"]["log"].to_string();
    // The killed node's lines come first, then the takeover.
    let first = log.find("connected to instance");
    let over = log.find("taken over by node");
    assert!(first.is_some() && over.is_some() && first < over, "{log}");
    let execs = node.executions(name);
    assert!(execs.iter().all(|e| e["outcome"] != "interrupted"), "{execs:#?}");
}

/// `GET /metrics` with `key`: (status, body).
fn scrape(node: &Server, key: &str) -> (u16, String) {
    let (code, body) = support::curl(&[
        "-s",
        "-H",
        &format!("Authorization: Bearer {key}"),
        &format!("{}/metrics", node.url),
    ]);
    (code, String::from_utf8_lossy(&body).into_owned())
}

/// The value of an unlabelled metric line `name VALUE`.
fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn a_node_that_loses_its_database_answers_503_and_recovers_by_itself() {
    let mut db = TestDatabase::private();
    let dir = tempfile::tempdir().unwrap();
    let node = Server::start_node(&dir.path().join("data"), &db.url, &[]);
    // A second node, through which a key is revoked.
    let other = Server::start_node(&dir.path().join("data"), &db.url, &[]);
    node.create_feed("files", "assets");
    node.put_asset("files", "kept.txt", b"written before the outage");
    let ready = || support::curl(&["-s", "-o", "/dev/null", &format!("{}/ready", node.url)]).0;
    assert_eq!(ready(), 200);

    // A monitoring system scrapes with a read key; another key was used
    // once and then revoked through the other node.
    let scraper = node.key("scraper", "read");
    let revoked = node.key("revoked", "read");
    let (code, body) = scrape(&node, &scraper);
    assert_eq!(code, 200, "{body}");
    assert_eq!(metric(&body, "ferry_database_up"), Some(1.0), "{body}");
    assert_eq!(metric(&body, "ferry_blob_store_up"), Some(1.0), "{body}");
    assert_eq!(scrape(&node, &revoked).0, 200);
    // Node a hears of the revocation by the database's notification alone
    // (it is not asked about the key again before the outage).
    other.cli_ok(&["key", "delete", "revoked"]);
    std::thread::sleep(Duration::from_millis(500));

    db.kill_server();
    assert!(
        wait_until(15, || ready() == 503),
        "/ready still answers while the database is down"
    );
    // Within a probe's timeout, not the pool's 5 s wait for a connection.
    let t = Instant::now();
    assert_eq!(ready(), 503);
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "/ready took {:?}",
        t.elapsed()
    );
    // The scrape still works with the key verified before the outage, and
    // shows the outage, in well under a scrape timeout.
    let t = Instant::now();
    let (code, body) = scrape(&node, &scraper);
    assert_eq!(code, 200, "metrics during the outage: {body}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(metric(&body, "ferry_database_up"), Some(0.0), "{body}");
    assert_eq!(metric(&body, "ferry_blob_store_up"), Some(1.0), "{body}");
    // Not with the revoked key, a key never verified, or none.
    assert_ne!(scrape(&node, &revoked).0, 200, "the revoked key opened metrics");
    assert_ne!(scrape(&node, "ferry_never-seen-key").0, 200);
    let (code, _) = support::curl(&["-s", "-o", "/dev/null", &format!("{}/metrics", node.url)]);
    assert_eq!(code, 401);
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
    let (code, body) = scrape(&node, &scraper);
    assert_eq!(code, 200, "{body}");
    assert_eq!(metric(&body, "ferry_database_up"), Some(1.0), "{body}");
    assert_eq!(scrape(&node, &revoked).0, 401, "a revoked key reads metrics");
    assert!(node.serves("files", "kept.txt", b"written before the outage"));
    assert!(
        node.lacks("files", "during.txt"),
        "nothing of the refused upload is stored"
    );
    node.put_asset("files", "after.txt", b"written after");
    assert!(node.serves("files", "after.txt", b"written after"));
}

/// A database that cannot be reached at start stops `ferry serve` with the
/// cause and the URL without its password, not "pool timed out".
#[test]
fn a_database_that_refuses_the_connection_is_named_at_start() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("postgres://ferry:s3cret-pw@127.0.0.1:{port}/ferry");
    let out = support::run_fail(
        std::process::Command::new(support::bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .env("FERRY_DATABASE_URL", &url)
            .env("FERRY_ADMIN_KEY", support::ADMIN),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("postgres://ferry@127.0.0.1:{port}/ferry")),
        "{err}"
    );
    assert!(err.contains("refused the connection"), "{err}");
    assert!(!err.contains("s3cret-pw"), "the password is shown: {err}");
    assert!(!err.contains("timed out"), "{err}");
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

/// npm install, pip download and skopeo (inspect, copy back) through `node`:
/// it serves everything the three clients wrote, whichever node took it.
fn serves_all_three(node: &Server, key: &str, img: &Image, tmp: &std::path::Path, label: &str) {
    // npm: a fresh cache, so the tarball comes from this node.
    let npm = Npm::new(node, "js", key);
    let app = npm.project("app");
    run_ok(&mut npm.cmd(&app, &format!("cache-{label}"), &["install", "cluster-greet"]));
    let installed = std::fs::read_to_string(app.join("node_modules/cluster-greet/index.js")).unwrap();
    assert!(installed.contains("cluster-greet@1.0.0"), "{label}: {installed}");

    // pip: both files of the release.
    let index = format!("{}/pypi/py/simple/", node.url);
    for (what, extra) in [("wheel", &[][..]), ("sdist", &["--no-binary", ":all:"][..])] {
        let dest = tmp.join(format!("pip-{label}-{what}"));
        run_ok(
            client("pip")
                .args(["download", "--no-cache-dir", "--no-deps", "--index-url", &index])
                .args(extra)
                .arg("--dest")
                .arg(&dest)
                .arg("cluster-demo==1.0"),
        );
        let files: Vec<_> = std::fs::read_dir(&dest).unwrap().flatten().collect();
        assert_eq!(files.len(), 1, "{label}: pip downloaded {files:?}");
    }

    // skopeo: the manifest byte for byte, and a whole copy back.
    let sk = Skopeo::new();
    let reference = format!("{}/img/team/app:v1", node.addr);
    let raw = sk.inspect(&reference, true, None, &[]).unwrap();
    assert!(raw == img.manifest.bytes, "{label}: the manifest changed");
    let pulled = sk.pull_ok(
        &format!("{}/img/team/app:v1", node.addr),
        &tmp.join(format!("oci-{label}")),
        "v1",
        None,
    );
    pulled.assert_holds("v1", &img.manifest, &img.blobs());
}

#[test]
fn three_nodes_take_npm_pypi_and_oci_uploads_at_once_and_each_serves_all() {
    three_nodes_take_uploads_at_once_and_each_serves_all(Blobs::Folder);
}

#[test]
fn three_nodes_on_one_bucket_take_uploads_at_once_and_each_serves_all() {
    three_nodes_take_uploads_at_once_and_each_serves_all(Blobs::Bucket);
}

fn three_nodes_take_uploads_at_once_and_each_serves_all(blobs: Blobs) {
    let mut shared = Shared::new(blobs);
    let nodes = shared.nodes(3, &[]);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    a.create_feed("js", "npm");
    b.create_feed("py", "pypi");
    c.create_feed("img", "oci");
    let key = a.key("ci", "write");
    let tmp = tempfile::tempdir().unwrap();

    // What the three clients send.
    let npm = Npm::new(a, "js", &key);
    let pkg = npm.package(
        "cluster-greet",
        "1.0.0",
        &[],
        "module.exports = \"cluster-greet@1.0.0\";\n",
    );
    let dists = write_dists(
        tmp.path(),
        &[
            dist::wheel("Cluster.Demo", "1.0", "cluster_demo", None),
            dist::sdist("Cluster.Demo", "1.0", None),
        ],
    );
    let src = Layout::create(&tmp.path().join("src"));
    let img = Image::new(vec![layer(600_000), layer(80_000)], "amd64");
    src.add_image("v1", &img);
    let sk = Skopeo::new();
    // And curl: files larger than a part (multipart uploads to a bucket),
    // one of them sent through two nodes at once.
    a.create_feed("files", "assets");
    let big: Vec<(String, Vec<u8>)> = (0..2u32)
        .map(|i| {
            let body: Vec<u8> = (0..(7u32 << 20))
                .map(|j| (j.wrapping_mul(2_654_435_761 + i) >> 11) as u8)
                .collect();
            (format!("big-{i}.bin"), body)
        })
        .collect();

    // npm publish through a, twine upload through b, skopeo copy through c,
    // curl through all three, all at once.
    let t = Instant::now();
    std::thread::scope(|s| {
        let publish = s.spawn(|| run_ok(&mut npm.cmd(&pkg, "cache", &["publish"])));
        let upload = s.spawn(|| run_ok(&mut twine_upload(b, "py", &key, &dists, &[])));
        let push = s.spawn(|| sk.push_ok(&src, "v1", &format!("{}/img/team/app:v1", c.addr), &key));
        let curls: Vec<_> = [(a, "a", 0), (b, "b", 0), (c, "c", 1)]
            .into_iter()
            .map(|(node, label, i)| {
                let (name, body) = &big[i];
                s.spawn(move || node.put_asset("files", &format!("{label}/{name}"), body))
            })
            .collect();
        publish.join().unwrap();
        upload.join().unwrap();
        push.join().unwrap();
        for c in curls {
            c.join().unwrap();
        }
    });
    eprintln!("four clients through three nodes ({blobs:?}): {:?}", t.elapsed());

    // Every node serves all of it (the image copied back through another
    // node than the one it was pushed to, the others likewise).
    for (node, label) in [(a, "a"), (b, "b"), (c, "c")] {
        serves_all_three(node, &key, &img, tmp.path(), label);
        for (path, i) in [("a/big-0.bin", 0), ("b/big-0.bin", 0), ("c/big-1.bin", 1)] {
            assert!(node.serves("files", path, &big[i].1), "{label} serves {path}");
        }
        // A range of a blob another node wrote.
        let (st, part) = support::curl(&["-r", "6000000-6000099", &node.asset_url("files", "c/big-1.bin")]);
        assert_eq!(
            (st, part.as_slice()),
            (206, &big[1].1[6_000_000..6_000_100]),
            "{label}"
        );
    }
    if let Blobs::Bucket = blobs {
        // npm: tarball; pypi: wheel, its metadata, sdist; oci: 2 layers,
        // config, manifest; curl: 2 distinct files. Once each.
        assert_eq!(shared.objects(), 10, "content stored once per digest");
    }

    // An OCI chunked upload goes on through any node: on one folder, every
    // node appends to the session's file; on one bucket, each chunk is
    // also an object there, fetched by the next node.
    oci_session_goes_on_through_any_node(a, b, &key);
    if let Some(bucket) = &shared.bucket {
        let left = count_files(&bucket.object_path("upload-sessions"));
        assert_eq!(left, 0, "session chunks left in the bucket");
    }

    // A spoke pulling from node b gets all of it.
    let token = a.incoming("to-spokes", &["js", "py", "img"], "push");
    let spoke = Server::start();
    spoke.create_feed("js", "npm");
    spoke.create_feed("py", "pypi");
    spoke.create_feed("img", "oci");
    spoke.outgoing(
        "from-cluster",
        &["js", "py", "img"],
        b,
        &token,
        "pull",
        &["--interval", "3600"],
    );
    let out = spoke.cli_ok(&["replication", "run", "from-cluster", "--wait"]);
    assert!(
        spoke.verified("from-cluster"),
        "{out}\n{:#?}",
        spoke.executions("from-cluster")
    );
    let spoke_key = spoke.key("reader", "read");
    serves_all_three(&spoke, &spoke_key, &img, tmp.path(), "spoke");
}

/// A new upload session on `node`: its path (from the `Location`).
fn begin_upload(node: &Server, auth: &str) -> String {
    let (st, head) = support::curl(&[
        "-s",
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-X",
        "POST",
        "-H",
        auth,
        &format!("{}/v2/img/team/app/blobs/uploads/", node.url),
    ]);
    let head = String::from_utf8_lossy(&head).to_string();
    assert_eq!(st, 202, "{head}");
    let location = location(&head).unwrap();
    location.trim_start_matches(&node.url).to_string()
}

/// PATCH of `body` to the session at `path` through `node`.
fn patch_upload(node: &Server, auth: &str, path: &str, body: &[u8]) -> (u16, String) {
    let (st, out) = support::curl_stdin(
        &[
            "-D",
            "-",
            "-X",
            "PATCH",
            "-H",
            auth,
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            "@-",
            &format!("{}{path}", node.url),
        ],
        body,
    );
    (st, String::from_utf8_lossy(&out).to_string())
}

/// PUT closing the session at `path` through `node` with `digest`.
fn put_upload(node: &Server, auth: &str, path: &str, digest: &str) -> (u16, String) {
    let sep = if path.contains('?') { '&' } else { '?' };
    let (st, body) = support::curl(&[
        "-X",
        "PUT",
        "-H",
        auth,
        &format!("{}{path}{sep}digest={digest}", node.url),
    ]);
    (st, String::from_utf8_lossy(&body).to_string())
}

/// A chunked upload begun on `a` goes on through `b`, then `a`, and is
/// finished through `b`: the digest is verified over bytes two nodes
/// received (each hashing again what the other wrote), and both serve the
/// blob. A wrong digest through the other node is DIGEST_INVALID.
fn oci_session_goes_on_through_any_node(a: &Server, b: &Server, key: &str) {
    let auth = format!("Authorization: Bearer {key}");
    let path = begin_upload(a, &auth);
    let (one, two) = (
        b"the first chunk of a layer, through node b; ".as_slice(),
        b"the second, through node a".as_slice(),
    );
    let (st, head) = patch_upload(b, &auth, &path, one);
    assert_eq!(st, 202, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("range: 0-{}", one.len() - 1)),
        "{head}"
    );
    // A chunk that does not start where the session ends is refused, on any node.
    let (st, head) = support::curl_stdin(
        &[
            "-D",
            "-",
            "-X",
            "PATCH",
            "-H",
            &auth,
            "-H",
            "Content-Range: 0-3",
            "--data-binary",
            "@-",
            &format!("{}{path}", a.url),
        ],
        b"oops",
    );
    assert_eq!(st, 416, "{}", String::from_utf8_lossy(&head));
    let (st, head) = patch_upload(a, &auth, &path, two);
    assert_eq!(st, 202, "{head}");
    let whole = [one, two].concat();
    let digest = format!("sha256:{}", ferry_types::Digest::of(&whole).hex());
    let (st, body) = put_upload(b, &auth, &path, &digest);
    assert_eq!(st, 201, "{body}");
    for node in [a, b] {
        let (st, got) = support::curl(&[
            "-H",
            &auth,
            &format!("{}/v2/img/team/app/blobs/{digest}", node.url),
        ]);
        assert_eq!((st, got.as_slice()), (200, whole.as_slice()));
    }
    // Finished, the session is gone on every node.
    let (st, _) = patch_upload(a, &auth, &path, two);
    assert_eq!(st, 404);

    // A wrong digest, through the node that did not receive the bytes.
    let path = begin_upload(b, &auth);
    let (st, head) = patch_upload(a, &auth, &path, b"bytes that are not what the digest says");
    assert_eq!(st, 202, "{head}");
    let wrong = format!("sha256:{}", ferry_types::Digest::of(b"something else").hex());
    let (st, body) = put_upload(b, &auth, &path, &wrong);
    assert_eq!(st, 400, "{body}");
    assert!(body.contains("DIGEST_INVALID"), "{body}");
    let (st, _) = support::curl(&[
        "-I",
        "-H",
        &auth,
        &format!("{}/v2/img/team/app/blobs/{wrong}", a.url),
    ]);
    assert_eq!(st, 404, "nothing stored");
}

/// The holder of the one execution lease in the cluster's database.
fn lease_holder(db: &TestDatabase) -> Option<String> {
    let out = std::process::Command::new("psql")
        .args([db.url.as_str(), "-qtAc", "SELECT holder FROM execution_leases"])
        .output()
        .unwrap();
    let holder = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!holder.is_empty()).then_some(holder)
}

/// Three nodes on one database and one bucket push a feed to a spoke; the
/// node running the execution is killed (`kill -9`) midway, another node
/// takes the replication over and finishes it: the spoke holds exactly
/// the cluster's items, and `verify` agrees on both sides.
#[test]
fn on_one_bucket_a_push_to_a_spoke_cut_by_a_killed_node_is_finished_by_another() {
    let spoke = Server::start();
    spoke.create_feed("files", "assets");
    let token = spoke.incoming("from-cluster", &["files"], "pull");

    let mut shared = Shared::new(Blobs::Bucket);
    let mut nodes: Vec<Server> = ["node-a", "node-b", "node-c"]
        .iter()
        .map(|name| shared.node(&[("FERRY_EXECUTION_LEASE_SECS", "3"), ("FERRY_NODE_NAME", name)]))
        .collect();
    nodes[0].create_feed("files", "assets");
    // Content written through every node, worth a few seconds at the cap.
    let files: Vec<(String, Vec<u8>)> = (0..12u32)
        .map(|i| {
            let body: Vec<u8> = (0..400_000u32).map(|j| ((j * 29 + i * 13) % 253) as u8).collect();
            (format!("f{i}.bin"), body)
        })
        .collect();
    std::thread::scope(|s| {
        for (n, node) in nodes.iter().enumerate() {
            let files = &files;
            s.spawn(move || {
                for (path, body) in files.iter().skip(n).step_by(3) {
                    node.put_asset("files", path, body);
                }
            });
        }
    });
    nodes[1].outgoing(
        "to-spoke",
        &["files"],
        &spoke,
        &token,
        "push",
        &["--interval", "2", "--bandwidth-limit", "1000000"],
    );
    // Whichever node's scheduler starts it first runs the execution.
    let mut running = None;
    assert!(
        wait_until(20, || {
            running = nodes[0]
                .executions("to-spoke")
                .first()
                .filter(|e| e["outcome"].is_null())
                .cloned();
            running.is_some()
        }),
        "no node started an execution"
    );
    std::thread::sleep(Duration::from_millis(1500));
    let holder = lease_holder(&shared.db).expect("a node holds the lease");
    let victim = ["node-a", "node-b", "node-c"]
        .iter()
        .position(|n| *n == holder)
        .unwrap();
    let running = running.unwrap();
    let still = nodes[(victim + 1) % 3]
        .executions("to-spoke")
        .into_iter()
        .find(|e| e["id"] == running["id"])
        .unwrap();
    assert!(still["outcome"].is_null(), "still running on {holder}: {still}");
    // Its log so far is saved while it runs, for every node to show.
    let saved = || {
        nodes[(victim + 1) % 3]
            .executions("to-spoke")
            .into_iter()
            .find(|e| e["id"] == running["id"])
            .is_some_and(|e| e["report"]["log"].to_string().contains("connected to instance"))
    };
    assert!(wait_until(10, saved), "the running execution's log was not saved");
    let before_kill = spoke.asset_digests("files", "").len();
    assert!(
        before_kill < files.len(),
        "the push finished before the kill ({before_kill} items)"
    );
    nodes[victim].kill();
    eprintln!(
        "killed {holder} with {before_kill} of {} items on the spoke",
        files.len()
    );

    // Another node takes the lease over once it runs out and finishes.
    let other = &nodes[(victim + 1) % 3];
    assert!(
        wait_until(60, || files
            .iter()
            .all(|(p, body)| spoke.serves("files", p, body))),
        "no other node finished the push {holder} was killed in: {:#?}",
        other.executions("to-spoke")
    );
    assert_taken_over_and_finished(other, "to-spoke", &running);
    let new_holder = lease_holder(&shared.db);
    assert_ne!(
        new_holder.as_deref(),
        Some(holder.as_str()),
        "the dead node still holds the lease"
    );
    // Nothing lost or doubled.
    let served = spoke.asset_digests("files", "");
    assert_eq!(served.len(), files.len(), "{served:?}");
    assert_eq!(served, other.asset_digests("files", ""));
    assert!(other.verified("to-spoke"), "verify disagrees");
    assert_eq!(shared.objects(), files.len(), "each blob once in the bucket");
    for node in nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, n)| n)
    {
        for (p, body) in &files {
            assert!(node.serves("files", p, body), "{p}");
        }
    }
}

/// `curl` with the cookie jar `jar` (read and written): (status, response
/// headers and body).
fn browse(jar: &Path, args: &[&str]) -> (u16, String) {
    let jar = jar.to_str().unwrap();
    let mut all = vec!["-D", "-", "-b", jar, "-c", jar];
    all.extend_from_slice(args);
    let (st, body) = support::curl(&all);
    (st, String::from_utf8_lossy(&body).to_string())
}

/// A form posted from a page of `node` (its origin), with the fields.
fn post_form(jar: &Path, node: &Server, path: &str, fields: &[(&str, &str)]) -> (u16, String) {
    let origin = format!("Origin: {}", node.url);
    let url = format!("{}{path}", node.url);
    let encoded: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut args = vec!["-H", origin.as_str()];
    for f in &encoded {
        args.extend_from_slice(&["--data-urlencode", f.as_str()]);
    }
    args.push(url.as_str());
    browse(jar, &args)
}

fn location(response: &str) -> Option<String> {
    response.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("location").then(|| v.trim().to_string())
    })
}

/// The CSRF token in a page's forms.
fn csrf(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token")
        + 19;
    page[at..].split('"').next().unwrap().to_string()
}

/// The new key a page shows once, if it shows one.
fn shown_key(page: &str) -> Option<String> {
    let at = page.find("id=\"new-key\"")?;
    let rest = &page[at..];
    let v = rest.find("value=\"")? + 7;
    Some(rest[v..].split('"').next()?.to_string())
}

/// Web UI sessions are the instance's, not a node's: signed in through
/// node a, a page through node b is signed in; a key made by a form posted
/// to a is shown once on b (and kept in the database only sealed); a key
/// revoked on a signs its sessions out on b; signing out on b ends the
/// session on a.
#[test]
fn a_web_ui_session_works_on_every_node() {
    let db = TestDatabase::new();
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(&db, &dir.path().join("data"), 2, &[]);
    let (a, b) = (&nodes[0], &nodes[1]);
    let jar = dir.path().join("admin.jar");

    // Signed in on a.
    let (st, resp) = post_form(&jar, a, "/login", &[("key", support::ADMIN)]);
    assert_eq!(st, 303, "{resp}");
    assert!(
        resp.to_ascii_lowercase().contains("set-cookie: ferry_session_"),
        "{resp}"
    );
    let cookie = std::fs::read_to_string(&jar).unwrap();
    let id = cookie
        .lines()
        .find(|l| l.contains("ferry_session_"))
        .and_then(|l| l.split('\t').next_back())
        .unwrap()
        .to_string();
    // The database keeps the id's hash, never the id.
    assert!(!psql(&db, "SELECT encode(id_hash, 'hex') FROM ui_sessions").contains(&id));
    assert_eq!(psql(&db, "SELECT count(*) FROM ui_sessions"), "1");

    // Signed in on b.
    let (st, page) = browse(&jar, &[&format!("{}/keys", b.url)]);
    assert_eq!(st, 200, "{page}");
    assert!(page.contains("API keys"), "{page}");
    let token = csrf(&page);

    // A key created by a form posted to a, shown once on b.
    let (st, resp) = post_form(
        &jar,
        a,
        "/keys",
        &[("csrf", &token), ("name", "viewer"), ("permission", "read")],
    );
    assert_eq!((st, location(&resp).as_deref()), (303, Some("/keys")), "{resp}");
    let sealed = psql(
        &db,
        "SELECT encode(flash, 'hex') FROM ui_sessions WHERE flash IS NOT NULL",
    );
    assert!(!sealed.is_empty(), "the flash is kept in the database");
    let (_, page) = browse(&jar, &[&format!("{}/keys", b.url)]);
    let secret = shown_key(&page).expect("the new key, shown on b");
    assert!(secret.starts_with("ferry_"), "{secret}");
    assert!(
        !sealed.contains(&hex::encode(secret.as_bytes())),
        "sealed, not in clear"
    );
    assert_eq!(
        psql(&db, "SELECT count(*) FROM ui_sessions WHERE flash IS NOT NULL"),
        "0",
        "deleted on first read"
    );
    let (_, again) = browse(&jar, &[&format!("{}/keys", a.url)]);
    assert_eq!(shown_key(&again), None, "shown once");

    // The new key signs in on b; revoked through a, its session on b ends.
    let viewer_jar = dir.path().join("viewer.jar");
    let (st, resp) = post_form(&viewer_jar, b, "/login", &[("key", &secret)]);
    assert_eq!(st, 303, "{resp}");
    let (st, _) = browse(&viewer_jar, &[&format!("{}/feeds", a.url)]);
    assert_eq!(st, 200);
    let (st, resp) = post_form(&jar, a, "/keys/viewer/revoke", &[("csrf", &token)]);
    assert_eq!(st, 303, "{resp}");
    for node in [a, b] {
        let (st, resp) = browse(&viewer_jar, &[&format!("{}/feeds", node.url)]);
        assert_eq!((st, location(&resp).as_deref()), (303, Some("/login")), "{resp}");
    }

    // Signed out on b: signed out on a.
    let (st, resp) = post_form(&jar, b, "/logout", &[("csrf", &token)]);
    assert_eq!((st, location(&resp).as_deref()), (303, Some("/login")), "{resp}");
    // The jar forgot the cookie; send the old one.
    let old = format!("Cookie: {}={id}", cookie_name(&cookie));
    let (st, resp) = support::curl(&["-D", "-", "-H", &old, &format!("{}/keys", a.url)]);
    let resp = String::from_utf8_lossy(&resp).to_string();
    assert_eq!((st, location(&resp).as_deref()), (303, Some("/login")), "{resp}");
    assert_eq!(psql(&db, "SELECT count(*) FROM ui_sessions"), "0");
}

/// The session cookie's name in a curl cookie jar's text.
fn cookie_name(jar: &str) -> String {
    jar.lines()
        .find(|l| l.contains("ferry_session_"))
        .and_then(|l| l.split('\t').nth(5))
        .unwrap()
        .to_string()
}

/// One value (or rows joined by newlines) that `sql` selects in the
/// cluster's database.
fn psql(db: &TestDatabase, sql: &str) -> String {
    let out = std::process::Command::new("psql")
        .args([db.url.as_str(), "-qtAc", sql])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Every node of a cluster keeps its own schedule and hears the same
/// changes, yet an outgoing replication runs once per interval and once
/// per change, not once per node; no execution is called a takeover while
/// every node lives.
#[test]
fn nodes_run_a_replication_once_per_interval_and_change_not_once_each() {
    let db = TestDatabase::new();
    let dir = tempfile::tempdir().unwrap();
    let hub = Server::start();
    hub.create_feed("files", "assets");
    hub.put_asset("files", "first.txt", b"before the cluster pulls");
    let token = hub.incoming("to-cluster", &["files"], "push");
    let nodes = cluster(&db, &dir.path().join("data"), 3, &[]);
    nodes[0].create_feed("files", "assets");
    // Each node starts its schedule in its own phase.
    nodes[0].outgoing("from-hub", &["files"], &hub, &token, "pull", &["--interval", "3"]);
    assert!(wait_until(30, || nodes[2].serves(
        "files",
        "first.txt",
        b"before the cluster pulls"
    )));
    // "Run now" through nodes 1 and 2, a second apart, sets each node's
    // schedule in a phase of its own (as restarts and operators do).
    for node in &nodes[1..] {
        std::thread::sleep(Duration::from_millis(1000));
        node.cli_ok(&["replication", "run", "from-hub"]);
    }
    std::thread::sleep(Duration::from_millis(500));
    // Quiet: only the schedules.
    let before = nodes[1].executions("from-hub").len();
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(12));
    let secs = start.elapsed().as_secs_f64();
    let all = nodes[1].executions("from-hub");
    let quiet: Vec<_> = all.iter().take(all.len() - before).cloned().collect();
    // Once per node would be up to 3 x 12 / 3.
    assert!(
        (quiet.len() as f64) <= secs / 3.0 + 2.0,
        "{} executions in {secs:.1} s at a 3 s interval: {quiet:#?}",
        quiet.len()
    );
    // Three publishes, each heard by every node's long poll.
    let before = all.len();
    for i in 0..3 {
        hub.put_asset("files", &format!("news-{i}.txt"), b"news");
        std::thread::sleep(Duration::from_millis(1000));
    }
    assert!(wait_until(30, || (0..3).all(|i| nodes[i].serves(
        "files",
        &format!("news-{i}.txt"),
        b"news"
    ))));
    let all = nodes[1].executions("from-hub");
    let busy: Vec<_> = all.iter().take(all.len() - before).cloned().collect();
    let change = busy.iter().filter(|e| e["trigger"] == "change").count();
    eprintln!(
        "{secs:.1} s quiet: {} executions; 3 changes: {change} change executions on 3 nodes",
        quiet.len()
    );
    assert!(change <= 4, "{change} executions for 3 changes: {busy:#?}");
    let takeovers = quiet
        .iter()
        .chain(&busy)
        .filter(|e| e["trigger"] == "takeover")
        .count();
    assert_eq!(
        takeovers, 0,
        "a takeover while every node lives: {quiet:#?} {busy:#?}"
    );
}

/// The instance's periodic jobs (here garbage collection, every 2 s) run
/// about once per period on a cluster, not once per node.
#[test]
fn nodes_take_turns_at_garbage_collection() {
    let db = TestDatabase::new();
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(
        &db,
        &dir.path().join("data"),
        3,
        &[("FERRY_GC_INTERVAL_SECS", "2")],
    );
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(11));
    let runs: Vec<f64> = nodes
        .iter()
        .map(|n| {
            let (code, body) = scrape(n, support::ADMIN);
            assert_eq!(code, 200, "{body}");
            metric(&body, "ferry_periodic_job_runs_total{job=\"gc\"}").unwrap_or(0.0)
        })
        .collect();
    let secs = start.elapsed().as_secs_f64();
    let total: f64 = runs.iter().sum();
    eprintln!("garbage collections in {secs:.1} s at a 2 s interval on 3 nodes: {runs:?}");
    // Once per node would be about 3 x (secs / 2 - 1).
    assert!(total >= 2.0, "no node collected: {runs:?}");
    assert!(
        total <= secs / 1.8 + 1.0,
        "{total} collections in {secs:.1} s at a 2 s interval: {runs:?}"
    );
}
