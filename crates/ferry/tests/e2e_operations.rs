//! Operating an instance as a new user would: stopping it while clients
//! download slowly, piping the CLI into `head`, mistyped `fsck --sample`,
//! and the replication overview with several replications.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{ADMIN, Server, curl, wait_until};

/// A `ferry serve` of this test's own, with standard error captured (the
/// shutdown log is what an operator reads).
struct Captured {
    child: Child,
    url: String,
    stderr: std::sync::mpsc::Receiver<String>,
    _dir: tempfile::TempDir,
}

impl Captured {
    fn start(env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(support::bin());
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .env("FERRY_ADMIN_KEY", ADMIN)
            .env("FERRY_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("listening on ") {
                    let _ = tx.send(url.to_string());
                }
            }
        });
        let stderr = child.stderr.take().unwrap();
        let (etx, erx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[ferry] {line}");
                let _ = etx.send(line);
            }
        });
        let url = rx.recv_timeout(Duration::from_secs(30)).expect("listening");
        Captured {
            child,
            url,
            stderr: erx,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        self.stderr.try_iter().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Captured {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sigterm(pid: u32) {
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
}

/// Waits up to `limit` for the process to exit; kills it past that.
fn exit_within(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn sigterm_lets_requests_finish_within_the_grace_period_then_cuts_slow_downloads() {
    let grace = 2;
    let s = Captured::start(&[("FERRY_SHUTDOWN_GRACE_SECS", "2")]);
    let auth = format!("Authorization: Bearer {ADMIN}");
    let (st, _) = curl(&[
        "-X",
        "POST",
        "-H",
        &auth,
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"name":"files","type":"assets"}"#,
        &format!("{}/api/v1/feeds", s.url),
    ]);
    assert_eq!(st, 201);
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.bin");
    std::fs::write(&big, vec![7u8; 32 << 20]).unwrap();
    let url = format!("{}/assets/files/big.bin", s.url);
    let (st, _) = curl(&["-T", big.to_str().unwrap(), "-H", &auth, &url]);
    assert_eq!(st, 201);

    // A download far slower than the grace period (32 MiB at 10 kB/s).
    let mut slow = Command::new("curl")
        .args(["-s", "--limit-rate", "10k", "-o", "/dev/null", &url])
        .spawn()
        .unwrap();
    // An upload that takes about a second: in flight at the signal, it
    // finishes well within the grace period.
    let small = dir.path().join("small.bin");
    std::fs::write(&small, vec![1u8; 200_000]).unwrap();
    let upload = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--limit-rate",
            "200k",
            "-T",
            small.to_str().unwrap(),
            "-H",
            &auth,
            &format!("{}/assets/files/small.bin", s.url),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));

    let mut s = s;
    let signalled = Instant::now();
    sigterm(s.child.id());
    let status = exit_within(&mut s.child, Duration::from_secs(grace + 5));
    let took = signalled.elapsed();
    let upload = upload.wait_with_output().unwrap();
    let _ = slow.kill();
    let _ = slow.wait();
    let status = status.unwrap_or_else(|| {
        panic!(
            "ferry still running {} s after SIGTERM with a slow download in flight (grace {grace} s)",
            grace + 5
        )
    });
    assert!(status.success(), "exit status {status}");
    assert_eq!(
        String::from_utf8_lossy(&upload.stdout),
        "201",
        "the upload in flight at SIGTERM must finish"
    );
    assert!(
        took >= Duration::from_millis(grace * 1000 - 500),
        "ferry exited after {took:?}, before the grace period gave the slow download its chance"
    );
    std::thread::sleep(Duration::from_millis(200));
    let log = s.log();
    assert!(
        log.contains("grace") && log.contains("requests_cut=1"),
        "the log names the requests cut: {log}"
    );
}

#[test]
fn a_second_sigterm_cuts_the_grace_period_short() {
    let mut s = Captured::start(&[("FERRY_SHUTDOWN_GRACE_SECS", "60")]);
    let auth = format!("Authorization: Bearer {ADMIN}");
    let (st, _) = curl(&[
        "-X",
        "POST",
        "-H",
        &auth,
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"name":"files","type":"assets"}"#,
        &format!("{}/api/v1/feeds", s.url),
    ]);
    assert_eq!(st, 201);
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.bin");
    std::fs::write(&big, vec![7u8; 32 << 20]).unwrap();
    let url = format!("{}/assets/files/big.bin", s.url);
    let (st, _) = curl(&["-T", big.to_str().unwrap(), "-H", &auth, &url]);
    assert_eq!(st, 201);
    let mut slow = Command::new("curl")
        .args(["-s", "--limit-rate", "10k", "-o", "/dev/null", &url])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    sigterm(s.child.id());
    std::thread::sleep(Duration::from_millis(500));
    assert!(s.child.try_wait().unwrap().is_none(), "the first signal drains");
    let second = Instant::now();
    sigterm(s.child.id());
    let status = exit_within(&mut s.child, Duration::from_secs(5));
    let _ = slow.kill();
    let _ = slow.wait();
    let status = status.expect("a second SIGTERM stops the drain at once");
    assert!(status.success(), "{status}");
    assert!(
        second.elapsed() < Duration::from_secs(3),
        "{:?}",
        second.elapsed()
    );
    std::thread::sleep(Duration::from_millis(200));
    let log = s.log();
    assert!(
        log.contains("second stop signal") && log.contains("requests_cut=1"),
        "{log}"
    );
}

#[test]
fn sigterm_with_nothing_in_flight_exits_at_once() {
    let mut s = Captured::start(&[("FERRY_SHUTDOWN_GRACE_SECS", "30")]);
    let (st, _) = curl(&[&format!("{}/health", s.url)]);
    assert_eq!(st, 200);
    let signalled = Instant::now();
    sigterm(s.child.id());
    let status = exit_within(&mut s.child, Duration::from_secs(10)).expect("exited");
    assert!(status.success());
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "an idle instance must not wait for the grace period: {:?}",
        signalled.elapsed()
    );
}

/// Runs `ferry ARGS` with its standard output closed before it writes
/// (as `ferry ... | head -0` does); returns (success, stderr).
fn with_stdout_closed(s: &Server, args: &[&str]) -> (bool, String) {
    let mut child = Command::new(support::bin())
        .args(args)
        .env("FERRY_URL", &s.url)
        .env("FERRY_API_KEY", ADMIN)
        .env("RUST_BACKTRACE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let st = child.wait().unwrap();
    (st.success(), err)
}

#[test]
fn a_closed_stdout_ends_every_command_quietly() {
    let hub = Server::start();
    for i in 0..40 {
        hub.create_feed(&format!("feed-{i:02}"), "assets");
    }
    for i in 0..20 {
        hub.incoming(&format!("in-{i:02}"), &[&format!("feed-{i:02}")], "push");
    }
    for args in [
        &["feed", "list"][..],
        &["feed", "list", "--json"],
        &["key", "list"],
        &["replication", "list"],
        &["replication", "list", "--json"],
        &["replication", "executions", "in-00"],
        &["replication", "token", "in-01"],
        &["replication", "log"],
        &["replication", "log", "--json"],
        &["fsck"],
        &["gc"],
        &["feed", "create", "late", "--type", "npm"],
        &["--help"],
        &["replication", "--help"],
    ] {
        let (ok, err) = with_stdout_closed(&hub, args);
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe") && !err.contains("backtrace"),
            "ferry {args:?} with stdout closed: {err}"
        );
        assert!(ok, "ferry {args:?} with stdout closed failed: {err}");
    }
    // Every listing has --json.
    let log = hub.cli_json(&["replication", "log", "--json"]);
    assert!(log["lines"].is_array(), "{log}");
    // A command that fails still says why (on stderr) and exits non-zero.
    let (ok, err) = with_stdout_closed(&hub, &["replication", "run", "nope", "--wait"]);
    assert!(!ok && err.contains("nope") && !err.contains("panicked"), "{err}");
    // Through a real pipe, as a user types it.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{}' replication list | head -c 1 >/dev/null; '{}' feed list | true",
            support::bin(),
            support::bin()
        ))
        .env("FERRY_URL", &hub.url)
        .env("FERRY_API_KEY", ADMIN)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn fsck_sample_outside_zero_to_one_is_refused_with_a_clear_reason() {
    let s = Server::start();
    for bad in ["NaN", "inf", "-inf", "-1", "2", "1.5", "abc"] {
        let err = s.cli_fails(&["fsck", "--sample", bad]);
        assert!(
            err.contains("--sample must be a number from 0 to 1"),
            "fsck --sample {bad}: {err}"
        );
        for leak in ["serde", "invalid type", "expected f64", "deserialize", "panicked"] {
            assert!(!err.contains(leak), "fsck --sample {bad} leaks {leak:?}: {err}");
        }
    }
    for ok in ["0", "0.5", "1"] {
        s.cli_ok(&["fsck", "--sample", ok]);
    }
    // The management API says the same, as a 400 with a JSON reason.
    let auth = format!("Authorization: Bearer {ADMIN}");
    let url = format!("{}/api/v1/fsck", s.url);
    for body in [
        r#"{"sample": null}"#,
        r#"{"sample": -1}"#,
        r#"{"sample": 2}"#,
        r#"{"sample": "NaN"}"#,
        r#"{"sample": "0.5"}"#,
    ] {
        let (st, resp) = curl(&[
            "-X",
            "POST",
            "-H",
            &auth,
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
            &url,
        ]);
        let resp = String::from_utf8_lossy(&resp);
        assert_eq!(st, 400, "{body}: {resp}");
        let v: serde_json::Value = serde_json::from_str(&resp).unwrap();
        assert_eq!(
            v["error"], "sample must be a number from 0 to 1",
            "{body}: {resp}"
        );
    }
    let (st, resp) = curl(&[
        "-X",
        "POST",
        "-H",
        &auth,
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"sample": 0.5}"#,
        &url,
    ]);
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&resp));
}

#[test]
fn each_replication_shows_the_lag_of_its_own_feeds_only() {
    let hub = Server::start();
    for f in ["alpha", "beta", "gamma"] {
        hub.create_feed(f, "assets");
    }
    let ta = hub.incoming("to-a", &["alpha"], "push");
    let tb = hub.incoming("to-b", &["beta"], "push");
    let tc = hub.incoming("to-c", &["gamma"], "push");
    let spoke = Server::start();
    for f in ["alpha", "beta", "gamma", "delta"] {
        spoke.create_feed(f, "assets");
    }
    spoke.outgoing("from-a", &["alpha"], &hub, &ta, "pull", &["--interval", "3600"]);
    spoke.outgoing("from-b", &["beta"], &hub, &tb, "pull", &["--interval", "3600"]);
    hub.put_asset("alpha", "a.txt", b"a");
    hub.put_asset("beta", "b.txt", b"b");
    spoke.cli_ok(&["replication", "run", "from-a", "--wait"]);
    spoke.cli_ok(&["replication", "run", "from-b", "--wait"]);
    // A replication deleted, and another created in its place (which may
    // take over its id): the new one starts with no lag of the old one's feeds.
    spoke.cli_ok(&["replication", "delete", "from-b"]);
    spoke.outgoing("from-c", &["gamma"], &hub, &tc, "pull", &["--interval", "3600"]);

    let own = |r: &serde_json::Value| -> Vec<String> {
        r["config"]["feeds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["local"].as_str().unwrap().to_string())
            .collect()
    };
    let check = |when: &str| {
        let list = spoke.cli_json(&["replication", "list", "--json"]);
        for r in list.as_array().unwrap() {
            let feeds = own(r);
            for (f, _) in r["status"]["lag"].as_object().into_iter().flatten() {
                assert!(
                    feeds.contains(f),
                    "{when}: replication {} (feeds {feeds:?}) shows lag of feed {f}: {r:#}",
                    r["name"]
                );
            }
        }
        let text = spoke.cli_ok(&["replication", "list"]);
        // Indented lines are details of the replication above.
        for line in text.lines().filter(|l| !l.starts_with(' ')) {
            let name = line.split('\t').next().unwrap();
            let lag = line.rsplit("lag=").next().unwrap();
            let mine = match name {
                "from-a" => "alpha",
                "from-c" => "gamma",
                "edges" => "delta",
                other => panic!("unexpected replication {other}: {text}"),
            };
            for f in ["alpha", "beta", "gamma", "delta"] {
                assert!(
                    f == mine || !lag.contains(f),
                    "{when}: {name} lists lag of {f}: {line}"
                );
            }
        }
        list
    };
    check("after the runs");
    // Changes on the hub, noticed by the long polls, set lag too.
    hub.put_asset("alpha", "a2.txt", b"a2");
    hub.put_asset("gamma", "c.txt", b"c");
    spoke.cli_ok(&["replication", "run", "from-c", "--wait"]);
    assert!(wait_until(10, || spoke.serves("alpha", "a2.txt", b"a2")));
    let list = check("after the long polls");
    let by_name = |n: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == n)
            .unwrap()
            .clone()
    };
    assert!(
        by_name("from-c")["status"]["lag"]["gamma"].is_object(),
        "from-c shows its own lag: {list:#}"
    );
    assert!(
        by_name("from-a")["status"]["lag"]["alpha"].is_object(),
        "from-a shows its own lag: {list:#}"
    );
    // `replication show` (GET one) agrees.
    let (st, one) = curl(&[
        "-H",
        &format!("Authorization: Bearer {ADMIN}"),
        &format!("{}/api/v1/replications/from-c", spoke.url),
    ]);
    assert_eq!(st, 200);
    let one: serde_json::Value = serde_json::from_slice(&one).unwrap();
    let lag: Vec<&String> = one["status"]["lag"].as_object().unwrap().keys().collect();
    assert_eq!(lag, vec!["gamma"], "{one:#}");

    // An incoming replication in a deleted outgoing one's place shows no
    // execution, outcome, next run or lag of it.
    spoke.cli_ok(&["replication", "delete", "from-c"]);
    spoke.cli_ok(&[
        "replication",
        "create",
        "edges",
        "--incoming",
        "--mode",
        "push",
        "--feed",
        "delta",
    ]);
    let list = check("after an incoming one replaced an outgoing one");
    let edges = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "edges")
        .unwrap();
    let st = &edges["status"];
    assert!(
        st["last_execution"].is_null() && st["last_outcome"].is_null() && st["next_run"].is_null(),
        "{edges:#}"
    );
    assert_eq!(st["lag"], serde_json::json!({}), "{edges:#}");
    let text = spoke.cli_ok(&["replication", "list"]);
    let line = text.lines().find(|l| l.starts_with("edges\t")).unwrap();
    assert!(
        line.contains("last=-") && line.contains("next=-") && line.ends_with("lag=-"),
        "{line}"
    );
}

#[test]
fn bad_parameters_of_the_replication_management_api_get_a_json_reason() {
    let s = Server::start();
    s.create_feed("files", "assets");
    s.incoming("in", &["files"], "push");
    let auth = format!("Authorization: Bearer {ADMIN}");
    let api = |method: &str, path: &str, body: Option<&str>| {
        let url = format!("{}{path}", s.url);
        let mut args = vec!["-X", method, "-H", &auth];
        if let Some(b) = body {
            args.extend(["-H", "Content-Type: application/json", "-d", b]);
        }
        args.push(&url);
        let (st, resp) = curl(&args);
        let text = String::from_utf8_lossy(&resp).to_string();
        let v: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{method} {path}: not a JSON answer ({st}): {text}"));
        (st, v)
    };
    for (path, says) in [
        (
            "/api/v1/replications/in/executions?limit=abc",
            "limit must be a whole number",
        ),
        (
            "/api/v1/logs/replication?limit=-1",
            "limit must be a whole number",
        ),
        (
            "/api/v1/feeds/files/bundle?since=x",
            "since must be a change-log position",
        ),
        (
            "/api/v1/feeds/files/bundle?since=-1",
            "since must be a change-log position",
        ),
    ] {
        let (st, v) = api("GET", path, None);
        assert_eq!(st, 400, "{path}: {v}");
        assert!(v["error"].as_str().unwrap().contains(says), "{path}: {v}");
        assert!(
            !v["error"].as_str().unwrap().contains("deserialize"),
            "{path}: {v}"
        );
    }
    for path in ["/api/v1/replications/in/run", "/api/v1/replications/in/verify"] {
        let (st, v) = api("POST", path, Some(r#"{"wait": "yes", "repair": 1}"#));
        assert_eq!(st, 400, "{path}: {v}");
        assert!(v["error"].is_string(), "{path}: {v}");
    }
    // Good parameters still work, and a run without a body starts one.
    let (st, v) = api("GET", "/api/v1/replications/in/executions?limit=5", None);
    assert_eq!(st, 200, "{v}");
    let (st, v) = api("GET", "/api/v1/logs/replication?limit=5", None);
    assert_eq!(st, 200, "{v}");
}
