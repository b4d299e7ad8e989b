//! End-to-end harness: runs the real `ferry` binary in a temporary data
//! directory on a free loopback port, and real clients against it.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const ADMIN: &str = "e2e-admin-key";

pub struct Server {
    child: Option<Child>,
    pub url: String,
    pub addr: String,
    pub data: PathBuf,
    _dir: Option<tempfile::TempDir>,
    env: Vec<(String, String)>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ferry")
}

impl Server {
    /// Starts an instance with a fresh data directory and the admin key [`ADMIN`].
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    pub fn start_with(env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut s = Server { child: None, url: String::new(), addr: String::new(), data, _dir: Some(dir), env };
        s.spawn("127.0.0.1:0");
        s
    }

    fn spawn(&mut self, listen: &str) {
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--data-dir"])
            .arg(&self.data)
            .args(["--listen", listen])
            .env("FERRY_ADMIN_KEY", ADMIN)
            .env("FERRY_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start ferry");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("listening on ") {
                    let _ = tx.send(url.to_string());
                }
            }
        });
        let url = rx.recv_timeout(Duration::from_secs(30)).expect("ferry did not report listening");
        self.addr = url.trim_start_matches("http://").to_string();
        self.url = url;
        self.child = Some(child);
    }

    /// Kills the process (SIGKILL) without letting it clean up.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops gracefully (SIGTERM) and returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        Command::new("kill").args(["-TERM", &c.id().to_string()]).status().unwrap();
        c.wait().unwrap()
    }

    /// Starts again on the same data directory and the same address.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        let addr = self.addr.clone();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // The old socket may linger briefly; retry the bind.
            let probe = std::net::TcpListener::bind(&addr);
            if probe.is_ok() || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.spawn(&addr);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Runs `ferry ARGS` against this instance with the admin key.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .args(args)
            .env("FERRY_URL", &self.url)
            .env("FERRY_API_KEY", ADMIN)
            .output()
            .unwrap()
    }

    /// Runs `ferry ARGS`, asserting success, and returns its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(out.status.success(), "ferry {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn create_feed(&self, name: &str, ty: &str) {
        self.cli_ok(&["feed", "create", name, "--type", ty]);
    }

    /// Creates an API key and returns its secret.
    pub fn key(&self, name: &str, permission: &str) -> String {
        self.cli_ok(&["key", "create", name, "--permission", permission]).trim().to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a command, returning its output; panics with its output on failure.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a command expected to fail; returns its output.
pub fn run_fail(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(!out.status.success(), "{cmd:?} unexpectedly succeeded: {}", String::from_utf8_lossy(&out.stdout));
    out
}

/// `curl -s` with the given arguments; returns (HTTP status, body).
pub fn curl(args: &[&str]) -> (u16, Vec<u8>) {
    let out = Command::new("curl").args(["-s", "-w", "\n%{http_code}"]).args(args).output().expect("curl");
    let mut body = out.stdout;
    let nl = body.iter().rposition(|b| *b == b'\n').expect("status line");
    let status = String::from_utf8_lossy(&body[nl + 1..]).trim().parse().expect("status");
    body.truncate(nl);
    (status, body)
}

/// Finds a client tool: the test virtualenv (`FERRY_TEST_VENV`, set by
/// `scripts/test`) first, then PATH. Panics with the fix if it is missing.
pub fn tool(name: &str) -> PathBuf {
    if let Ok(venv) = std::env::var("FERRY_TEST_VENV") {
        let p = Path::new(&venv).join("bin").join(name);
        if p.exists() {
            return p;
        }
    }
    let workspace_venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv-test/bin").join(name);
    if workspace_venv.exists() {
        return workspace_venv;
    }
    let found = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.exists()));
    found.unwrap_or_else(|| panic!("{name} not found: run scripts/test, which installs the test clients"))
}

/// Polls `f` until it returns true or `secs` pass.
pub fn wait_until(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}
