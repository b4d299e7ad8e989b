//! Replication under faults: two executions fetching the same blobs at
//! once, stamps from the future pushed by a peer, a source instance restored
//! from a backup (its change log went back), a prompt shutdown while spokes
//! long-poll and their catch-up after the restart, and a concurrency stress
//! run of pulls and client uploads of overlapping content.
#![allow(clippy::unwrap_used)]
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use support::{ADMIN, Server, curl, wait_until};

/// A generous deadline for a change to travel or an execution to end.
const SYNC: u64 = 60;
const MIB: usize = 1 << 20;

// ------------------------------------------------------------------ helpers

/// A small deterministic generator (xorshift64*), enough for test content.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// The sha256 of `data` (hex), by `sha256sum`.
fn sha256_hex(data: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(data).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The committed blob files of an instance (`sha256/*/*` of its blob
/// folder or bucket).
fn blob_files(s: &Server) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(dirs) = std::fs::read_dir(s.blob_root()) else {
        return files;
    };
    for dir in dirs {
        let dir = dir.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&dir).unwrap() {
            files.push(f.unwrap().path());
        }
    }
    files.sort();
    files
}

/// Every committed blob file whose content does not hash to its name, as
/// "NAME: SIZE bytes hashing to ACTUAL".
fn corrupt_blobs(s: &Server) -> Vec<String> {
    let files = blob_files(s);
    let mut bad = Vec::new();
    // One sha256sum process per batch of files.
    for batch in files.chunks(64) {
        let out = support::run_ok(Command::new("sha256sum").args(batch));
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let sums: BTreeMap<PathBuf, String> = text
            .lines()
            .filter_map(|l| {
                let (sum, path) = l.split_once("  ")?;
                Some((PathBuf::from(path), sum.to_string()))
            })
            .collect();
        for f in batch {
            let name = f.file_name().unwrap().to_string_lossy().to_string();
            let actual = sums.get(f).cloned().unwrap_or_else(|| "(not hashed)".into());
            if actual != name {
                let size = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
                bad.push(format!("blob {name}: {size} bytes hashing to {actual}"));
            }
        }
    }
    bad
}

/// Whether blob `digest` (hex) is stored intact on `s`.
fn blob_intact(s: &Server, digest: &str) -> Result<(), String> {
    let path = s.blob_path(digest);
    if !path.exists() {
        return Err(format!("blob {digest} is not stored"));
    }
    let actual = support::sha256_file(&path);
    if actual == digest {
        Ok(())
    } else {
        let size = std::fs::metadata(&path).unwrap().len();
        Err(format!(
            "blob {digest}: the file on disk holds {size} bytes hashing to {actual}"
        ))
    }
}

/// Every item of `items` that `s` does not serve byte-identical in `feed`.
fn serving_problems(s: &Server, feed: &str, items: &[(String, Vec<u8>)]) -> Vec<String> {
    let mut bad = Vec::new();
    for (path, body) in items {
        let (st, got) = s.get_asset(feed, path);
        if st != 200 {
            bad.push(format!("{feed}/{path}: HTTP {st}"));
        } else if got != *body {
            bad.push(format!(
                "{feed}/{path}: served {} bytes (sha256 {}), published {} bytes (sha256 {})",
                got.len(),
                sha256_hex(&got),
                body.len(),
                sha256_hex(body)
            ));
        }
    }
    bad
}

/// Starts `ferry replication run NAME --wait` against `s` as a child process.
fn spawn_run(s: &Server, name: &str) -> Child {
    Command::new(support::bin())
        .args(["replication", "run", name, "--wait"])
        .env("FERRY_URL", &s.url)
        .env("FERRY_API_KEY", ADMIN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a run started by [`spawn_run`]; its output if it failed.
fn finish_run(child: Child, name: &str) -> Result<(), String> {
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`replication run {name} --wait` failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Waits until no execution of `name` is running any more, then describes
/// each one that did not succeed.
fn failed_executions(s: &Server, name: &str) -> Vec<String> {
    assert!(
        wait_until(SYNC, || s
            .executions(name)
            .iter()
            .all(|e| e["outcome"].is_string())),
        "an execution of {name} does not end"
    );
    s.executions(name)
        .iter()
        .filter(|e| e["outcome"] != "succeeded")
        .map(|e| {
            format!(
                "{name} execution {} ({}): {} {}",
                e["id"], e["trigger"], e["outcome"], e["report"]["error"]
            )
        })
        .collect()
}

fn repl_api(s: &Server, path: &str) -> String {
    format!("{}/api/replication/v1{path}", s.url)
}

fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

// ------------------------------------------------------------- 1. same blob

#[test]
fn two_executions_fetching_the_same_blobs_at_once_store_them_intact() {
    const FILES: usize = 20;
    const SIZE: usize = 2 * MIB;
    const ROUNDS: usize = 3;
    let hub = Server::start();
    hub.create_feed("a", "assets");
    hub.create_feed("b", "assets");
    let mut rng = Rng::new(1);
    let files: Vec<(String, Vec<u8>)> = (0..FILES)
        .map(|i| (format!("pkg/file-{i:02}.bin"), rng.bytes(SIZE)))
        .collect();
    for (p, body) in &files {
        hub.put_asset("a", p, body);
        hub.put_asset("b", p, body);
    }
    let token_a = hub.incoming("to-a", &["a"], "push");
    let token_b = hub.incoming("to-b", &["b"], "push");

    let mut problems: Vec<String> = Vec::new();
    let mut last_spoke = None;
    for round in 1..=ROUNDS {
        // A fresh spoke each round, so every blob is fetched again.
        let spoke = Server::start();
        for f in ["a", "b", "c"] {
            spoke.create_feed(f, "assets");
        }
        // The long interval keeps later scheduled executions away, but each
        // replication still executes once as it is created: create both at
        // once, so those first executions overlap too, then run both at once.
        std::thread::scope(|sc| {
            sc.spawn(|| spoke.outgoing("from-a", &["a"], &hub, &token_a, "pull", &["--interval", "3600"]));
            sc.spawn(|| spoke.outgoing("from-b", &["b"], &hub, &token_b, "pull", &["--interval", "3600"]));
        });
        let run_a = spawn_run(&spoke, "from-a");
        let run_b = spawn_run(&spoke, "from-b");
        let mut round_problems: Vec<String> = [finish_run(run_a, "from-a"), finish_run(run_b, "from-b")]
            .into_iter()
            .filter_map(Result::err)
            .collect();
        round_problems.extend(failed_executions(&spoke, "from-a"));
        round_problems.extend(failed_executions(&spoke, "from-b"));
        round_problems.extend(serving_problems(&spoke, "a", &files));
        round_problems.extend(serving_problems(&spoke, "b", &files));
        round_problems.extend(corrupt_blobs(&spoke));
        let found = !round_problems.is_empty();
        problems.extend(round_problems.into_iter().map(|p| format!("round {round}: {p}")));
        last_spoke = Some(spoke);
        if found {
            break; // reproduced; check the re-upload on this spoke
        }
    }

    // A client uploading the right bytes again leaves a correct file (pick a
    // file whose blob came out damaged, if any).
    let spoke = last_spoke.unwrap();
    let damaged = corrupt_blobs(&spoke);
    let (path, body) = files
        .iter()
        .find(|(_, b)| {
            let d = sha256_hex(b);
            damaged.iter().any(|line| line.starts_with(&format!("blob {d}:")))
        })
        .unwrap_or(&files[0]);
    spoke.put_asset("c", path, body);
    if let Err(e) = blob_intact(&spoke, &sha256_hex(body)) {
        problems.push(format!("after uploading {path} again to feed c: {e}"));
    }
    if !spoke.serves("c", path, body) {
        problems.push(format!("feed c does not serve {path} as uploaded"));
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

// ---------------------------------------------------- 2. stamps from the future

/// Pushes a tombstone for `key` with stamp time `time` into feed `files` of
/// `hub` through the replication API; returns (status, body).
fn push_tombstone(hub: &Server, token: &str, key: &str, time: u64) -> (u16, String) {
    let body = json!({
        "entries": [{
            "key": key,
            "stamp": { "time": time, "origin": "0123456789abcdef0123456789abcdef" },
            "deleted": true,
        }]
    });
    let (st, resp) = curl(&[
        "-X",
        "POST",
        "-H",
        &format!("Authorization: Bearer {token}"),
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &body.to_string(),
        &repl_api(hub, "/feeds/files/apply"),
    ]);
    (st, String::from_utf8_lossy(&resp).to_string())
}

/// What goes wrong when a peer pushes a tombstone for `key` stamped `time`:
/// the push must be refused naming the stamp or clock, and the key must stay
/// writable and deletable by clients.
fn future_stamp_problems(hub: &Server, token: &str, key: &str, time: u64) -> Vec<String> {
    let mut problems = Vec::new();
    // The entry is refused (the other entries of a request would still be
    // applied): its outcome says so, naming the stamp or clock.
    let (st, msg) = push_tombstone(hub, token, key, time);
    let reason = serde_json::from_str::<serde_json::Value>(&msg)
        .ok()
        .and_then(|v| {
            v["outcomes"][0]["refused"]["reason"]
                .as_str()
                .map(str::to_lowercase)
        })
        .unwrap_or_default();
    if st != 200 || !(reason.contains("stamp") || reason.contains("clock")) {
        problems.push(format!(
            "a tombstone stamped {time} was answered {st} {msg:?}; expected its outcome refused, naming the stamp or clock"
        ));
    }
    let auth = format!("Authorization: Bearer {ADMIN}");
    let body = format!("written by a client after a stamp {time} was pushed");
    let (st, resp) = support::curl_stdin(
        &["-T", "-", "-H", &auth, &hub.asset_url("files", key)],
        body.as_bytes(),
    );
    if st != 201 {
        problems.push(format!(
            "PUT {key} answered {st} {:?}; expected 201",
            String::from_utf8_lossy(&resp)
        ));
    }
    let (st, got) = hub.get_asset("files", key);
    if st != 200 || got != body.as_bytes() {
        problems.push(format!(
            "GET {key} after the PUT answered {st} {:?}; expected 200 with the uploaded body",
            String::from_utf8_lossy(&got)
        ));
    }
    let (st, resp) = curl(&["-X", "DELETE", "-H", &auth, &hub.asset_url("files", key)]);
    if st != 204 {
        problems.push(format!(
            "DELETE {key} answered {st} {:?}; expected 204",
            String::from_utf8_lossy(&resp)
        ));
    }
    let (st, _) = hub.get_asset("files", key);
    if st != 404 {
        problems.push(format!("GET {key} after the DELETE answered {st}; expected 404"));
    }
    // Ordinary writes elsewhere in the feed keep working too.
    let other = format!("{key}.other");
    let (st, _) = support::curl_stdin(
        &["-T", "-", "-H", &auth, &hub.asset_url("files", &other)],
        b"other",
    );
    if st != 201 || !hub.serves("files", &other, b"other") {
        problems.push(format!("PUT {other} answered {st} or was not served"));
    }
    problems
}

#[test]
fn a_pushed_stamp_near_the_end_of_time_is_refused_and_clients_can_still_write_and_delete() {
    let hub = Server::start();
    hub.create_feed("files", "assets");
    let token = hub.incoming("from-peer", &["files"], "pull");
    let problems = future_stamp_problems(&hub, &token, "far/future.txt", u64::MAX - 1);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn a_pushed_stamp_a_day_ahead_of_the_clock_is_refused() {
    let hub = Server::start();
    hub.create_feed("files", "assets");
    let token = hub.incoming("from-peer", &["files"], "pull");
    let day_ahead = (now_millis() + 24 * 3600 * 1000) << 16;
    let problems = future_stamp_problems(&hub, &token, "near/future.txt", day_ahead);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ------------------------------------------------- 3. the source went backwards

/// A backup of a stopped instance: its data directory, and its database
/// when it keeps its metadata in PostgreSQL.
fn back_up(server: &support::Server, to: &Path) {
    support::run_ok(Command::new("cp").arg("-a").arg(&server.data).arg(to));
    server.snapshot_database(to);
}

/// Puts a stopped instance back as [`back_up`] saved it.
fn restore(server: &support::Server, from: &Path) {
    std::fs::remove_dir_all(&server.data).unwrap();
    support::run_ok(Command::new("cp").arg("-a").arg(from).arg(&server.data));
    server.restore_database(from);
}

#[test]
fn a_source_restored_from_a_backup_is_compared_in_full_and_its_new_content_arrives() {
    let tmp = tempfile::tempdir().unwrap();
    let backup = tmp.path().join("hub-backup");
    let mut hub = Server::start();
    hub.create_feed("files", "assets");
    let token = hub.incoming("edge", &["files"], "push");
    let spoke = Server::pulling_spoke(&hub, "files", &token);
    let run = || spoke.cli_ok(&["replication", "run", "from-hub", "--wait"]);

    hub.put_asset("files", "f1", b"first");
    hub.put_asset("files", "f2", b"second");
    run();
    assert!(spoke.serves("files", "f1", b"first"));
    assert!(spoke.serves("files", "f2", b"second"));

    // A backup of the hub, taken while it is stopped.
    assert!(hub.stop().success());
    back_up(&hub, &backup);
    hub.restart();
    hub.put_asset("files", "f3", b"third");
    hub.put_asset("files", "f4", b"fourth");
    run();
    assert!(spoke.serves("files", "f3", b"third"));
    assert!(spoke.serves("files", "f4", b"fourth"));
    let before_restore = spoke.executions("from-hub")[0]["id"].as_i64().unwrap();

    // The hub is restored from the backup: its change log is back at f2, and
    // two new publishes bring it to the length the spoke's cursor has.
    assert!(hub.stop().success());
    restore(&hub, &backup);
    hub.restart();
    hub.put_asset("files", "f5", b"fifth");
    hub.put_asset("files", "f6", b"sixth");
    // f3 and f4 are absent there now: whether the execution stops before
    // deleting them or not, it must bring f5 and f6.
    let out = spoke.cli(&["replication", "run", "from-hub", "--wait"]);
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let served = (
        spoke.serves("files", "f5", b"fifth"),
        spoke.serves("files", "f6", b"sixth"),
    );
    let since: Vec<serde_json::Value> = spoke
        .executions("from-hub")
        .into_iter()
        .filter(|e| e["id"].as_i64().unwrap() > before_restore)
        .collect();
    let full = since.iter().any(|e| {
        e["report"]["log"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|l| l["message"].as_str().unwrap_or_default().contains("full"))
    });
    assert!(
        served == (true, true),
        "after the hub was restored from a backup, the spoke serves (f5, f6) = {served:?}; run: {out}\nexecutions since: {since:#?}"
    );
    assert!(
        full,
        "no execution since the restore says it compared in full: {since:#?}"
    );
}

// ------------------------------------------------ 4. prompt shutdown, catch-up

/// How soon a spoke must get a change published after its hub restarted.
/// Tighter than the 5 s of the shutdown: a spoke that retries a failed long
/// poll only every 5 s takes about 5 s whatever else happens.
const CATCH_UP: Duration = Duration::from_secs(3);

#[test]
fn a_hub_with_long_polling_spokes_stops_promptly_and_the_spokes_catch_up_promptly_after_its_restart() {
    let mut hub = Server::start();
    hub.create_feed("files", "assets");
    let token = hub.incoming("edge", &["files"], "push");
    let spoke = Server::start();
    spoke.create_feed("files", "assets");
    spoke.outgoing("from-hub", &["files"], &hub, &token, "pull", &[]);
    hub.put_asset("files", "first.txt", b"before the restart");
    assert!(
        wait_until(SYNC, || spoke.serves("files", "first.txt", b"before the restart")),
        "the spoke does not follow the hub"
    );
    // Let the spoke go back to waiting in a long poll on the hub.
    std::thread::sleep(Duration::from_secs(1));

    let t = Instant::now();
    let status = hub.stop();
    let shutdown = t.elapsed();
    println!("the hub took {shutdown:?} to stop on SIGTERM ({status})");

    hub.restart();
    hub.put_asset("files", "second.txt", b"after the restart");
    let t = Instant::now();
    let caught_up = wait_until(SYNC, || spoke.serves("files", "second.txt", b"after the restart"));
    let catch_up = t.elapsed();
    println!("the spoke served the new file {catch_up:?} after it was published (caught up: {caught_up})");

    assert!(status.success(), "SIGTERM must exit 0: {status}");
    assert!(
        shutdown < Duration::from_secs(5),
        "the hub took {shutdown:?} to stop with a spoke long-polling it"
    );
    assert!(
        caught_up,
        "the spoke never got the file published after the restart"
    );
    assert!(
        catch_up < CATCH_UP,
        "the spoke took {catch_up:?} to get a file published after the hub's restart"
    );
}

// ----------------------------------------------------- 5. concurrency stress

/// One round of content: the files both hub feeds (and the spoke's local
/// feed) get, and the few only feed a or only feed b gets.
struct RoundContent {
    shared: Vec<(String, Vec<u8>)>,
    only_a: Vec<(String, Vec<u8>)>,
    only_b: Vec<(String, Vec<u8>)>,
}

fn round_content(round: u64) -> RoundContent {
    let mut rng = Rng::new(100 + round);
    let shared = (0..40)
        .map(|i| {
            let len = if i % 5 == 0 {
                MIB + rng.below(2 * MIB as u64) as usize
            } else {
                1024 + rng.below(7 * 1024) as usize
            };
            (format!("shared/f{i:02}.bin"), rng.bytes(len))
        })
        .collect();
    let mut unique = |feed: &str| -> Vec<(String, Vec<u8>)> {
        (0..3)
            .map(|k| {
                let len = 4096 + rng.below(600 * 1024) as usize;
                (format!("only-{feed}/r{round}-{k}.bin"), rng.bytes(len))
            })
            .collect()
    };
    let only_a = unique("a");
    let only_b = unique("b");
    RoundContent {
        shared,
        only_a,
        only_b,
    }
}

/// Runs `ferry replication run NAME --wait` until `done`, then once more;
/// records failures in `errors`.
fn keep_running(spoke: &Server, name: &str, done: &AtomicBool, errors: &Mutex<Vec<String>>) {
    loop {
        let last = done.load(Ordering::SeqCst);
        if let Err(e) = finish_run(spawn_run(spoke, name), name) {
            errors.lock().unwrap().push(e);
        }
        if last {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// PUTs `items` to `feed` of `s` in order.
fn publish(s: &Server, feed: &str, items: &[&(String, Vec<u8>)]) {
    for (p, b) in items {
        s.put_asset(feed, p, b);
    }
}

#[test]
fn concurrent_pulls_of_overlapping_feeds_and_client_uploads_keep_every_blob_and_item_intact() {
    const ROUNDS: u64 = 3;
    let hub = Server::start();
    hub.create_feed("a", "assets");
    hub.create_feed("b", "assets");
    let token_a = hub.incoming("to-a", &["a"], "push");
    let token_b = hub.incoming("to-b", &["b"], "push");
    let mut spoke = Server::start();
    for f in ["a", "b", "c"] {
        spoke.create_feed(f, "assets");
    }
    spoke.outgoing("from-a", &["a"], &hub, &token_a, "pull", &[]);
    spoke.outgoing("from-b", &["b"], &hub, &token_b, "pull", &[]);

    // What each feed must end up serving: path -> body.
    let mut want: BTreeMap<&str, BTreeMap<String, Vec<u8>>> = BTreeMap::new();
    let errors = Mutex::new(Vec::new());
    for round in 0..ROUNDS {
        let content = round_content(round);
        let to_a: Vec<&(String, Vec<u8>)> = content.shared.iter().chain(&content.only_a).collect();
        let to_b: Vec<&(String, Vec<u8>)> = content.shared.iter().chain(&content.only_b).collect();
        // The spoke's local feed gets the shared files in another order.
        let n = content.shared.len();
        let to_c: Vec<&(String, Vec<u8>)> = (0..n).map(|k| &content.shared[(k + n / 2) % n]).collect();
        // Round 0: the spoke follows the hub while both hub feeds get the
        // same files at once. Later rounds: the hub gets them while the
        // spoke is down, so both replications start on them together at
        // its start-up.
        let spoke_down = round > 0;
        if spoke_down {
            assert!(spoke.stop().success());
            std::thread::scope(|sc| {
                sc.spawn(|| publish(&hub, "a", &to_a));
                sc.spawn(|| publish(&hub, "b", &to_b));
            });
            spoke.restart();
        }
        let done = AtomicBool::new(false);
        std::thread::scope(|sc| {
            let mut writers = Vec::new();
            if !spoke_down {
                writers.push(sc.spawn(|| publish(&hub, "a", &to_a)));
                writers.push(sc.spawn(|| publish(&hub, "b", &to_b)));
            }
            writers.push(sc.spawn(|| publish(&spoke, "c", &to_c)));
            sc.spawn(|| keep_running(&spoke, "from-a", &done, &errors));
            sc.spawn(|| keep_running(&spoke, "from-b", &done, &errors));
            for w in writers {
                w.join().unwrap();
            }
            done.store(true, Ordering::SeqCst);
        });
        for (p, b) in &to_a {
            want.entry("a").or_default().insert(p.clone(), b.clone());
        }
        for (p, b) in &to_b {
            want.entry("b").or_default().insert(p.clone(), b.clone());
        }
        for (p, b) in &to_c {
            want.entry("c").or_default().insert(p.clone(), b.clone());
        }
    }

    let mut problems = errors.lock().unwrap().clone();
    for name in ["from-a", "from-b"] {
        if let Err(e) = finish_run(spawn_run(&spoke, name), name) {
            problems.push(e);
        }
        problems.extend(failed_executions(&spoke, name));
    }
    problems.extend(corrupt_blobs(&spoke));
    for (feed, items) in &want {
        let items: Vec<(String, Vec<u8>)> = items.iter().map(|(p, b)| (p.clone(), b.clone())).collect();
        problems.extend(serving_problems(&spoke, feed, &items));
    }
    for name in ["from-a", "from-b"] {
        let out = spoke.cli(&["replication", "verify", name]);
        if !out.status.success() {
            problems.push(format!(
                "`replication verify {name}` failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

// ------------------------------- 2b. a stamp one receiver refuses, pushed

/// A hub accepts a tombstone stamped 200 s ahead (within its 300 s skew) and
/// pushes to a spoke that allows only 60 s: the spoke refuses that one
/// entry, and everything else still arrives; the hub's own later writes are
/// not dragged ahead by the stamp it accepted, so the spoke takes them.
#[test]
fn a_push_carries_on_past_an_entry_the_other_side_refuses_for_its_stamp() {
    let hub = Server::start();
    let spoke = Server::start_with(&[("FERRY_MAX_CLOCK_SKEW_SECS", "60")]);
    hub.create_feed("files", "assets");
    spoke.create_feed("files", "assets");
    hub.put_asset("files", "before.txt", b"before");
    let peer = hub.incoming("from-peer", &["files"], "pull");
    let ahead = (now_millis() + 200_000) << 16;
    let (st, msg) = push_tombstone(&hub, &peer, "ahead.txt", ahead);
    assert_eq!(st, 200, "a stamp within the hub's skew was refused: {msg}");
    hub.put_asset("files", "after.txt", b"after");

    let token = spoke.incoming("from-hub", &["files"], "pull");
    hub.outgoing(
        "to-edge",
        &["files"],
        &spoke,
        &token,
        "push",
        &["--interval", "3600"],
    );
    let out = hub.cli(&["replication", "run", "to-edge", "--wait"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(spoke.serves("files", "before.txt", b"before"), "run: {text}");
    assert!(
        spoke.serves("files", "after.txt", b"after"),
        "a write made on the hub after it accepted a stamp 200 s ahead did not reach a spoke allowing 60 s: {text}"
    );
    // The refused entry is named, and the execution does not claim success.
    assert!(
        !out.status.success(),
        "the run succeeded though an entry was refused: {text}"
    );
    let exec = &hub.executions("to-edge")[0];
    let stuck: Vec<&str> = exec["report"]["stuck"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["key"].as_str())
        .collect();
    assert_eq!(stuck, vec!["ahead.txt"], "{exec:#}");
    // Retried by the next run, which copies what is new meanwhile.
    hub.put_asset("files", "later.txt", b"later");
    let again = hub.cli(&["replication", "run", "to-edge", "--wait"]);
    assert!(!again.status.success());
    assert!(spoke.serves("files", "later.txt", b"later"));
}

// ------------------------- 3b. a restored source: what it lost comes back

/// A hub is restored from a backup after it had overwritten one file and
/// deleted another: a pull replica follows it back (the old content again,
/// the deleted file again), keeps what only the lost history had with a
/// warning that says why, and `verify --repair --confirm-deletes` makes it
/// equal to the hub.
#[test]
fn a_pull_replica_follows_a_source_restored_from_a_backup_back() {
    let tmp = tempfile::tempdir().unwrap();
    let backup = tmp.path().join("hub-backup");
    let mut hub = Server::start();
    hub.create_feed("files", "assets");
    let token = hub.incoming("edge", &["files"], "push");
    let spoke = Server::pulling_spoke(&hub, "files", &token);
    let run = || spoke.cli(&["replication", "run", "from-hub", "--wait"]);

    hub.put_asset("files", "kept.txt", b"kept");
    hub.put_asset("files", "over.txt", b"old version");
    hub.put_asset("files", "gone.txt", b"deleted after the backup");
    assert!(run().status.success());
    assert!(hub.stop().success());
    back_up(&hub, &backup);
    hub.restart();

    // After the backup: an overwrite, a deletion and a new file.
    hub.put_asset("files", "over.txt", b"new version");
    hub.delete_asset("files", "gone.txt");
    hub.put_asset("files", "lost.txt", b"only in the lost history");
    assert!(run().status.success());
    assert!(spoke.serves("files", "over.txt", b"new version"));
    assert!(spoke.lacks("files", "gone.txt"));

    assert!(hub.stop().success());
    restore(&hub, &backup);
    hub.restart();
    hub.put_asset("files", "fresh.txt", b"after the restore");
    let out = run();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(spoke.serves("files", "fresh.txt", b"after the restore"), "{text}");
    assert!(
        spoke.serves("files", "over.txt", b"old version"),
        "the replica kept the overwrite the hub lost: {text}"
    );
    assert!(
        spoke.serves("files", "gone.txt", b"deleted after the backup"),
        "the replica kept the deletion the hub lost: {text}"
    );
    // What only the lost history had is kept, and the log says why.
    assert!(spoke.serves("files", "lost.txt", b"only in the lost history"));
    // (Long polling may have started executions of its own since.)
    let log: String = spoke
        .executions("from-hub")
        .iter()
        .map(|e| e["report"]["log"].to_string())
        .collect();
    assert!(log.contains("went back"), "{log}");
    assert!(!log.contains("tombstones have expired"), "{log}");

    // A repair without confirmation says what it did not delete, and how.
    let out = spoke.cli_fails(&["replication", "verify", "from-hub", "--repair"]);
    assert!(
        out.contains("lost.txt") && out.contains("--confirm-deletes"),
        "{out}"
    );
    let out = spoke.cli(&[
        "replication",
        "verify",
        "from-hub",
        "--repair",
        "--confirm-deletes",
    ]);
    assert!(
        out.status.success(),
        "verify --repair --confirm-deletes: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(spoke.lacks("files", "lost.txt"));
    assert!(spoke.verified("from-hub"));
}

/// A hub restored from a backup gets back, from a mirror, the writes it
/// lost (an overwrite, a deletion, a new file): the mirror sends what it
/// holds instead of following the hub back.
#[test]
fn a_mirror_gives_a_hub_restored_from_a_backup_the_writes_it_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let backup = tmp.path().join("hub-backup");
    let mut hub = Server::start();
    let edge = Server::start();
    hub.create_feed("files", "assets");
    edge.create_feed("files", "assets");
    let token = hub.incoming("pair", &["files"], "mirror");
    edge.outgoing(
        "pair",
        &["files"],
        &hub,
        &token,
        "mirror",
        &["--interval", "3600"],
    );
    let run = || edge.cli(&["replication", "run", "pair", "--wait"]);

    hub.put_asset("files", "over.txt", b"old version");
    hub.put_asset("files", "gone.txt", b"deleted after the backup");
    assert!(run().status.success());
    assert!(hub.stop().success());
    back_up(&hub, &backup);
    hub.restart();
    hub.put_asset("files", "over.txt", b"new version");
    hub.delete_asset("files", "gone.txt");
    hub.put_asset("files", "lost.txt", b"only in the lost history");
    assert!(run().status.success());
    assert!(edge.serves("files", "lost.txt", b"only in the lost history"));

    assert!(hub.stop().success());
    restore(&hub, &backup);
    hub.restart();
    let out = run();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(hub.serves("files", "over.txt", b"new version"), "{text}");
    assert!(hub.lacks("files", "gone.txt"), "{text}");
    assert!(
        hub.serves("files", "lost.txt", b"only in the lost history"),
        "{text}"
    );
    assert!(edge.serves("files", "over.txt", b"new version"));
    assert!(edge.verified("pair"));
}

/// The hub's count of refused (401) change-log requests, from `/metrics`.
fn refused_polls(hub: &Server) -> u64 {
    let auth = format!("Authorization: Bearer {ADMIN}");
    let (st, body) = curl(&["-H", &auth, &format!("{}/metrics", hub.url)]);
    assert_eq!(st, 200);
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| {
            l.starts_with("ferry_http_requests_total")
                && l.contains("/api/replication/v1/feeds/{feed}/changes")
                && l.contains("status=\"401\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A spoke whose token the hub revoked stops long-polling in a loop: the
/// refusal is an answer, not a broken link, so it asks again on its
/// schedule (it asked every few seconds, for as long as it ran).
#[test]
fn a_spoke_whose_token_was_revoked_does_not_keep_polling() {
    let hub = Server::start();
    hub.create_feed("files", "assets");
    let token = hub.incoming("edge", &["files"], "push");
    hub.put_assets("files", &[("a.txt".to_string(), "a".to_string())]);
    let spoke = Server::start();
    spoke.create_feed("files", "assets");
    spoke.outgoing(
        "from-hub",
        &["files"],
        &hub,
        &token,
        "pull",
        &["--interval", "3600"],
    );
    assert!(wait_until(SYNC, || spoke.asset_digests("files", "").len() == 1));
    hub.cli_ok(&[
        "replication",
        "revoke",
        "edge",
        &token["fst_".len().."fst_".len() + 16],
    ]);
    // The poll that was waiting gets the refusal within its wait.
    assert!(
        wait_until(SYNC, || refused_polls(&hub) >= 1),
        "the waiting long poll was never refused"
    );
    // And the spoke says so at once, not at its next scheduled execution
    // (an hour away): its latest execution failed, naming the revocation.
    assert!(
        wait_until(SYNC, || {
            let latest = spoke.executions("from-hub").into_iter().next();
            latest.is_some_and(|e| e["outcome"] == "failed" && e.to_string().contains("revoked"))
        }),
        "the spoke still shows its last success: {:?}",
        spoke.executions("from-hub").first()
    );
    // `replication list` names the reason, not only `last=failed`.
    let text = spoke.cli_ok(&["replication", "list"]);
    assert!(
        text.contains("last=failed") && text.contains("last error:") && text.contains("revoked"),
        "{text}"
    );
    let before = refused_polls(&hub);
    std::thread::sleep(Duration::from_secs(8));
    let after = refused_polls(&hub);
    assert!(
        after - before <= 1,
        "the spoke polled {} more times in 8 s with a revoked token",
        after - before
    );
}

/// Something at the other end that answers the handshake `200 OK` with a
/// JSON body that never ends is read to 256 MiB and refused, naming why;
/// the body was read whole, as long as the handshake's 30 s allowed.
#[test]
fn an_endless_answer_is_refused_at_its_cap() {
    use std::io::Write;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            std::thread::spawn(move || {
                if support::read_request(&mut c).is_none() {
                    return;
                }
                let _ = c.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n5\r\n[\"a\",\r\n",
                );
                let chunk = format!("100000\r\n{}\r\n", " ".repeat(0x100000));
                while c.write_all(chunk.as_bytes()).is_ok() {}
            });
        }
    });
    let spoke = Server::start();
    spoke.create_feed("files", "assets");
    let started = Instant::now();
    let out = spoke.cli(&[
        "replication",
        "create",
        "from-hub",
        "--outgoing",
        &url,
        "--token",
        "fst_0123456789abcdef_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "--mode",
        "pull",
        "--feed",
        "files",
    ]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("larger than 256 MiB"), "{said}");
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "{:?}",
        started.elapsed()
    );
}

/// A peer that trickles an upload of a blob (one byte a second, never
/// silent long enough to be cut) holds the claim on that blob's partial
/// file; another spoke pushing the same blob no longer waits behind it for
/// as long as it trickles (it waited until the trickler went away): after
/// a few seconds its bytes are stored on their own, verified, and the
/// push completes.
#[test]
fn a_trickling_upload_of_a_blob_does_not_hold_another_peers_push_of_it() {
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    let hub = Server::start();
    hub.create_feed("files", "assets");
    let token = hub.incoming("edges", &["files"], "pull");
    let file = tmp.path().join("shared.bin");
    let mut rng = Rng::new(17);
    let bytes: Vec<u8> = (0..2 * MIB).map(|_| rng.next() as u8).collect();
    std::fs::write(&file, &bytes).unwrap();
    let digest = format!("sha256:{}", support::sha256_file(&file));

    // The trickler: a frame announcing the whole blob, then a byte a second.
    let mut c = std::net::TcpStream::connect(&hub.addr).unwrap();
    write!(
        c,
        "POST /api/replication/v1/blobs/upload HTTP/1.1\r\nHost: ferry\r\nAuthorization: Bearer {token}\r\n\
         content-type: application/vnd.ferry.blob-batch\r\ncontent-length: {}\r\n\r\n",
        4 * MIB
    )
    .unwrap();
    writeln!(
        c,
        "{{\"digest\":\"{digest}\",\"offset\":0,\"length\":{}}}",
        2 * MIB
    )
    .unwrap();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let trickle = {
        let stop = stop.clone();
        let first = bytes[0];
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if c.write_all(&[first]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(2));

    // A spoke pushing the same content.
    let spoke = Server::start();
    spoke.create_feed("files", "assets");
    spoke.put_asset_file("files", "shared.bin", &file);
    spoke.outgoing(
        "to-hub",
        &["files"],
        &hub,
        &token,
        "push",
        &["--interval", "3600"],
    );
    let started = Instant::now();
    spoke.cli_ok(&["replication", "run", "to-hub", "--wait"]);
    let took = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    trickle.join().unwrap();
    assert!(
        took < Duration::from_secs(30),
        "the push waited {took:?} behind the trickling upload"
    );
    assert!(hub.serves("files", "shared.bin", &bytes));
}

/// A hub whose sync token holds its share of blob transfers (here 16, with
/// a connection cap of 64) answers a spoke's batch 429; the spoke pauses
/// and asks again instead of failing its execution, and converges once
/// the transfers holding the token's share end. A batch nobody reads
/// pins a little memory only.
#[test]
fn a_spoke_waits_for_a_hub_busy_with_its_tokens_transfers_instead_of_failing() {
    use std::io::{Read, Write};
    let hub = Server::start_with(&[("FERRY_MAX_CONNECTIONS", "64")]);
    hub.create_feed("files", "assets");
    let token = hub.incoming("edges", &["files"], "push");
    let mut rng = Rng::new(29);
    let items: Vec<(String, Vec<u8>)> = (0..40)
        .map(|i| {
            (
                format!("f{i}.bin"),
                (0..256 * 1024).map(|_| rng.next() as u8).collect(),
            )
        })
        .collect();
    publish(&hub, "files", &items.iter().collect::<Vec<_>>());
    let big: Vec<u8> = (0..16 * MIB).map(|_| rng.next() as u8).collect();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("big.bin");
    std::fs::write(&file, &big).unwrap();
    hub.put_asset_file("files", "big.bin", &file);
    let digest = format!("sha256:{}", sha256_hex(&big));

    // Sixteen batches of the big blob, never read: the token's share.
    let rss = |s: &Server| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
    };
    let before = rss(&hub);
    let body = json!({ "blobs": [{ "digest": digest }] }).to_string();
    let mut held = Vec::new();
    for _ in 0..16 {
        let mut c = std::net::TcpStream::connect(&hub.addr).unwrap();
        write!(
            c,
            "POST /api/replication/v1/blobs/batch HTTP/1.1\r\nHost: ferry\r\nAuthorization: Bearer {token}\r\n\
             Ferry-Instance: 0123456789abcdef0123456789abcdef\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut head = [0u8; 12];
        c.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 200", "a batch within the share is served");
        held.push(c);
    }
    std::thread::sleep(Duration::from_secs(2));
    let pinned = rss(&hub).saturating_sub(before);
    eprintln!("16 unread batches of a 16 MiB blob pinned {} MiB", pinned >> 20);
    assert!(
        pinned < 16 * 4 * MIB as u64,
        "16 unread batches of a 16 MiB blob pinned {} MiB",
        pinned >> 20
    );

    let spoke = Server::pulling_spoke(&hub, "files", &token);
    let mut run = spawn_run(&spoke, "from-hub");
    // The spoke meets the busy hub and waits: its execution neither ends
    // nor fails while the token's share is held (it failed at once before).
    std::thread::sleep(Duration::from_secs(8));
    assert!(
        run.try_wait().unwrap().is_none(),
        "the execution ended while the hub was busy"
    );
    assert!(
        spoke
            .executions("from-hub")
            .iter()
            .all(|e| !e["outcome"].is_string()),
        "an execution ended while the hub was busy: {:?}",
        spoke.executions("from-hub")
    );
    drop(held);
    finish_run(run, "from-hub").unwrap();
    assert_eq!(failed_executions(&spoke, "from-hub"), Vec::<String>::new());
    let mut all = items.clone();
    all.push(("big.bin".to_owned(), big));
    assert_eq!(serving_problems(&spoke, "files", &all), Vec::<String>::new());
}

/// The same for a push: a hub whose sync token holds its share of
/// transfers (uploads it is receiving) answers the spoke's upload 429, and
/// the spoke pauses and sends again instead of failing its execution.
#[test]
fn a_pushing_spoke_waits_for_a_hub_busy_with_its_tokens_uploads_instead_of_failing() {
    use std::io::Write;
    let hub = Server::start_with(&[("FERRY_MAX_CONNECTIONS", "64")]);
    hub.create_feed("files", "assets");
    let token = hub.incoming("edges", &["files"], "pull");
    // Sixteen uploads whose bodies never come: the token's share.
    let mut held = Vec::new();
    for _ in 0..16 {
        let mut c = std::net::TcpStream::connect(&hub.addr).unwrap();
        write!(
            c,
            "POST /api/replication/v1/blobs/upload HTTP/1.1\r\nHost: ferry\r\nAuthorization: Bearer {token}\r\n\
             content-type: application/vnd.ferry.blob-batch\r\ncontent-length: 1000\r\n\r\n"
        )
        .unwrap();
        held.push(c);
    }
    std::thread::sleep(Duration::from_secs(1));
    let spoke = Server::start();
    spoke.create_feed("files", "assets");
    let mut rng = Rng::new(31);
    let items: Vec<(String, Vec<u8>)> = (0..40)
        .map(|i| {
            (
                format!("p{i}.bin"),
                (0..128 * 1024).map(|_| rng.next() as u8).collect(),
            )
        })
        .collect();
    publish(&spoke, "files", &items.iter().collect::<Vec<_>>());
    spoke.outgoing(
        "to-hub",
        &["files"],
        &hub,
        &token,
        "push",
        &["--interval", "3600"],
    );
    let mut run = spawn_run(&spoke, "to-hub");
    std::thread::sleep(Duration::from_secs(8));
    assert!(
        run.try_wait().unwrap().is_none(),
        "the execution ended while the hub was busy"
    );
    assert!(
        spoke
            .executions("to-hub")
            .iter()
            .all(|e| !e["outcome"].is_string()),
        "an execution ended while the hub was busy: {:?}",
        spoke.executions("to-hub")
    );
    drop(held);
    finish_run(run, "to-hub").unwrap();
    assert_eq!(failed_executions(&spoke, "to-hub"), Vec::<String>::new());
    assert_eq!(serving_problems(&hub, "files", &items), Vec::<String>::new());
}
