//! End-to-end harness: runs the real `ferry` binary in a temporary data
//! directory on a free loopback port, and real clients against it.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

pub mod cargo;
pub mod debian;
pub mod npm;
pub mod nuget;
pub mod progress;
pub mod proxy;
pub mod pypi;
pub mod rpm;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use ferry_testkit::s3s::{self, S3Server};

pub const ADMIN: &str = "e2e-admin-key";

/// Pass in a server's `env` to keep its blobs in its data directory in
/// every pass: for tests about the folder itself. Each use says why.
pub const FS_BLOBS: (&str, &str) = ("FERRY_BLOB_STORE", "fs");

pub struct Server {
    child: Option<Child>,
    pub url: String,
    pub addr: String,
    pub data: PathBuf,
    _dir: Option<tempfile::TempDir>,
    env: Vec<(String, String)>,
    /// The instance's PostgreSQL database, when the suite runs on that
    /// backend (`FERRY_TEST_BACKEND=postgres`); dropped after the server.
    db: Option<ferry_testkit::pg::TestDatabase>,
    /// The instance's bucket, when its blobs are in S3 (the second pass);
    /// the s3s-fs process stops when its last user is dropped.
    pub bucket: Option<Bucket>,
}

/// A bucket of the test process's s3s-fs server.
#[derive(Clone)]
pub struct Bucket {
    pub server: Arc<S3Server>,
    pub name: String,
}

impl Bucket {
    /// A new, empty bucket on the process's shared s3s-fs server.
    pub fn new() -> Self {
        let server = shared_s3();
        let name = format!("ferry-{}", NEXT_BUCKET.fetch_add(1, Ordering::Relaxed));
        server.create_bucket(&name);
        Bucket { server, name }
    }

    /// The environment that puts a `ferry serve`'s blobs in this bucket,
    /// as a user configures it (`FERRY_BLOB_STORE=s3`, `FERRY_S3_*`, the
    /// AWS credential variables).
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("FERRY_BLOB_STORE", "s3"),
            ("FERRY_S3_ENDPOINT", self.server.endpoint.as_str()),
            ("FERRY_S3_BUCKET", self.name.as_str()),
            ("FERRY_S3_PATH_STYLE", "true"),
            ("FERRY_S3_ALLOW_HTTP", "true"),
            ("FERRY_S3_PART_SIZE_MIB", "5"),
            ("AWS_ACCESS_KEY_ID", s3s::ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", s3s::SECRET_KEY),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// The file s3s-fs keeps object `key` in.
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.server.object_path(&self.name, key)
    }
}

impl Default for Bucket {
    fn default() -> Self {
        Self::new()
    }
}

static NEXT_BUCKET: AtomicUsize = AtomicUsize::new(0);
static SHARED_S3: Mutex<Weak<S3Server>> = Mutex::new(Weak::new());

/// The test process's s3s-fs server, started on first use and stopped (by
/// its PID, when the last [`Arc`] is dropped) after its last user.
pub fn shared_s3() -> Arc<S3Server> {
    let mut shared = SHARED_S3.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = shared.upgrade() {
        return s;
    }
    let s = Arc::new(S3Server::start("ferry-e2e"));
    *shared = Arc::downgrade(&s);
    s
}

/// Whether this run puts every instance's metadata in PostgreSQL
/// (`FERRY_TEST_BACKEND=postgres`, as `scripts/test`'s second pass sets)
/// instead of SQLite.
pub fn on_postgres() -> bool {
    std::env::var("FERRY_TEST_BACKEND").is_ok_and(|v| v == "postgres")
}

/// Whether this run puts every instance's blobs in an S3 bucket of its
/// own (on one s3s-fs per test process) instead of its data directory:
/// the second pass runs on PostgreSQL and S3 together.
pub fn on_s3() -> bool {
    on_postgres()
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
        let mut env: Vec<(String, String)> =
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let db = if on_postgres() && !env.iter().any(|(k, _)| k == "FERRY_DATABASE_URL") {
            let db = ferry_testkit::pg::TestDatabase::new();
            env.push(("FERRY_DATABASE_URL".to_string(), db.url.clone()));
            // A test's instance first listens on port 0 (a random node name)
            // and keeps its address across restarts (a fixed one): after a
            // kill, the restarted node waits for the old name's lease to
            // run out, as another node would. Keep that short.
            if !env.iter().any(|(k, _)| k == "FERRY_EXECUTION_LEASE_SECS") {
                env.push(("FERRY_EXECUTION_LEASE_SECS".to_string(), "4".to_string()));
            }
            Some(db)
        } else {
            None
        };
        // A test that names a blob store (FS_BLOBS, or its own bucket)
        // keeps it.
        let bucket = if on_s3() && !env.iter().any(|(k, _)| k == "FERRY_BLOB_STORE") {
            let b = Bucket::new();
            env.extend(b.env());
            Some(b)
        } else {
            None
        };
        let mut s = Server {
            child: None,
            url: String::new(),
            addr: String::new(),
            data,
            _dir: Some(dir),
            env,
            db,
            bucket,
        };
        s.spawn("127.0.0.1:0");
        s
    }

    /// A node of a cluster: an instance on the given data directory (its
    /// blobs, shared with the other nodes) and database URL (its metadata,
    /// shared with the other nodes), with extra `env`.
    pub fn start_node(data: &Path, database_url: &str, env: &[(&str, &str)]) -> Self {
        Self::start_node_on(data, database_url, None, env)
    }

    /// A node of a cluster whose blobs are in `bucket` (shared with the
    /// other nodes) when given, else in the `data` directory's folder.
    pub fn start_node_on(
        data: &Path,
        database_url: &str,
        bucket: Option<&Bucket>,
        env: &[(&str, &str)],
    ) -> Self {
        let mut env: Vec<(String, String)> =
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        env.push(("FERRY_DATABASE_URL".to_string(), database_url.to_string()));
        if let Some(b) = bucket {
            env.extend(b.env());
        } else {
            env.push((FS_BLOBS.0.to_string(), FS_BLOBS.1.to_string()));
        }
        let mut s = Server {
            child: None,
            url: String::new(),
            addr: String::new(),
            data: data.to_path_buf(),
            _dir: None,
            env,
            db: None,
            bucket: bucket.cloned(),
        };
        s.spawn("127.0.0.1:0");
        s
    }

    fn spawn(&mut self, listen: &str) {
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--data-dir"])
            .arg(&self.data)
            .args(["--listen", listen])
            .env("FERRY_ADMIN_KEY", ADMIN)
            .env(
                "FERRY_LOG",
                std::env::var("TEST_FERRY_LOG").unwrap_or_else(|_| "warn".into()),
            )
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
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("ferry did not report listening");
        self.addr = url.trim_start_matches("http://").to_string();
        self.url = url;
        self.child = Some(child);
    }

    /// A second instance started from a copy of this one's data directory
    /// (as a cloned machine would be), with the same environment. This one
    /// must be stopped, and keep its metadata and blobs in that directory
    /// (SQLite, file-system blobs).
    pub fn start_copy(&self) -> Server {
        assert!(
            self.child.is_none(),
            "stop the instance before copying its data directory"
        );
        assert!(
            self.db.is_none() && self.bucket.is_none(),
            "only a data directory can be copied"
        );
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        run_ok(Command::new("cp").arg("-a").arg(&self.data).arg(&data));
        let mut s = Server {
            child: None,
            url: String::new(),
            addr: String::new(),
            data,
            _dir: Some(dir),
            env: self.env.clone(),
            db: None,
            bucket: None,
        };
        s.spawn("127.0.0.1:0");
        s
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
        Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap();
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

    /// With the metadata in PostgreSQL: saves a copy of the (stopped)
    /// instance's database, named in `backup_dir` for
    /// [`Server::restore_database`]. Nothing to do on SQLite (the database
    /// is a file in the data directory).
    pub fn snapshot_database(&self, backup_dir: &Path) {
        if let Some(db) = &self.db {
            let snap = db.snapshot();
            std::fs::write(backup_dir.join(".pg-snapshot"), snap).unwrap();
        }
    }

    /// Puts back the database [`Server::snapshot_database`] saved.
    pub fn restore_database(&self, backup_dir: &Path) {
        if let Some(db) = &self.db {
            let snap = std::fs::read_to_string(backup_dir.join(".pg-snapshot")).unwrap();
            db.restore(&snap);
        }
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
        assert!(
            out.status.success(),
            "ferry {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn create_feed(&self, name: &str, ty: &str) {
        self.cli_ok(&["feed", "create", name, "--type", ty]);
    }

    /// Creates an API key and returns its secret.
    pub fn key(&self, name: &str, permission: &str) -> String {
        self.cli_ok(&["key", "create", name, "--permission", permission])
            .trim()
            .to_string()
    }
}

/// Where a server keeps its blobs, for tests that look at or damage them
/// behind its back: the data directory's folder, or the s3s-fs folder of
/// its bucket (same layout: `sha256/ab/abcd…`, `corrupt/`).
impl Server {
    /// The file holding blob `digest` (`sha256:HEX` or `HEX`).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        let key = format!("sha256/{}/{hex}", &hex[..2]);
        match &self.bucket {
            Some(b) => b.object_path(&key),
            None => self.data.join("blobs").join(key),
        }
    }

    /// The folder of committed blobs (`…/sha256`).
    pub fn blob_root(&self) -> PathBuf {
        match &self.bucket {
            Some(b) => b.object_path("sha256"),
            None => self.data.join("blobs/sha256"),
        }
    }

    /// Replaces blob `digest`'s bytes behind the server's back (in a
    /// bucket: with the new ETag S3 would give them).
    pub fn damage_blob(&self, digest: &str, bytes: &[u8]) {
        match &self.bucket {
            Some(b) => {
                let hex = digest.trim_start_matches("sha256:");
                b.server
                    .damage_object(&b.name, &format!("sha256/{}/{hex}", &hex[..2]), bytes);
            }
            None => std::fs::write(self.blob_path(digest), bytes).unwrap(),
        }
    }

    /// Removes blob `digest` behind the server's back.
    pub fn remove_blob(&self, digest: &str) {
        match &self.bucket {
            Some(b) => {
                let hex = digest.trim_start_matches("sha256:");
                b.server
                    .remove_object(&b.name, &format!("sha256/{}/{hex}", &hex[..2]));
            }
            None => std::fs::remove_file(self.blob_path(digest)).unwrap(),
        }
    }

    /// The copies of blobs taken out of service (`corrupt/`).
    pub fn quarantined_copies(&self) -> usize {
        let dir = match &self.bucket {
            Some(b) => b.object_path("corrupt"),
            None => self.data.join("blobs/corrupt"),
        };
        std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
    }

    /// Where uploads are staged: the blob folder's `staging/`, or the
    /// spool's with a bucket.
    pub fn staging_dir(&self) -> PathBuf {
        self.scratch().join("staging")
    }

    /// Where resumable transfers are kept (`partial/`).
    pub fn partial_dir(&self) -> PathBuf {
        self.scratch().join("partial")
    }

    fn scratch(&self) -> PathBuf {
        match &self.bucket {
            Some(_) => self.data.join("blob-spool"),
            None => self.data.join("blobs"),
        }
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
    assert!(
        !out.status.success(),
        "{cmd:?} unexpectedly succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

/// `curl -s` with the given arguments; returns (HTTP status, body).
pub fn curl(args: &[&str]) -> (u16, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    let mut body = out.stdout;
    let nl = body.iter().rposition(|b| *b == b'\n').expect("status line");
    let status = String::from_utf8_lossy(&body[nl + 1..])
        .trim()
        .parse()
        .expect("status");
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
    let workspace_venv = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../.venv-test/bin")
        .join(name);
    if workspace_venv.exists() {
        return workspace_venv;
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.exists())
    });
    found.unwrap_or_else(|| panic!("{name} not found: run scripts/test, which installs the test clients"))
}

/// Polls `f` until it returns true or `secs` pass.
/// Reads one HTTP/1.1 request from `c`: its head (through the blank line)
/// and a `Content-Length` body; `None` if the connection ends first. For
/// tests' own fake servers.
pub fn read_request(c: &mut std::net::TcpStream) -> Option<(String, Vec<u8>)> {
    use std::io::Read;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if c.read(&mut byte).ok()? == 0 {
            return None;
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0; len];
    c.read_exact(&mut body).ok()?;
    Some((head, body))
}

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

// ------------------------------------------------------------ replication helpers
// (used by e2e_replication*.rs)

/// `curl -s` feeding `input` on standard input; returns (HTTP status, body).
pub fn curl_stdin(args: &[&str], input: &[u8]) -> (u16, Vec<u8>) {
    use std::io::Write;
    let mut child = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let mut body = out.stdout;
    let nl = body.iter().rposition(|b| *b == b'\n').expect("status line");
    let status = String::from_utf8_lossy(&body[nl + 1..])
        .trim()
        .parse()
        .expect("status");
    body.truncate(nl);
    (status, body)
}

/// The sha256 of a file, by `sha256sum`.
pub fn sha256_file(path: &Path) -> String {
    let out = run_ok(Command::new("sha256sum").arg(path));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

impl Server {
    pub fn asset_url(&self, feed: &str, path: &str) -> String {
        format!("{}/assets/{feed}/{path}", self.url)
    }

    /// PUTs `body` as asset `feed/path` with the admin key; asserts 201.
    pub fn put_asset(&self, feed: &str, path: &str, body: &[u8]) {
        let auth = format!("Authorization: Bearer {ADMIN}");
        let url = self.asset_url(feed, path);
        let (st, resp) = curl_stdin(&["-T", "-", "-H", &auth, &url], body);
        assert_eq!(st, 201, "PUT {url}: {}", String::from_utf8_lossy(&resp));
    }

    /// PUTs a file as asset `feed/path` with the admin key; asserts 201.
    pub fn put_asset_file(&self, feed: &str, path: &str, file: &Path) {
        let auth = format!("Authorization: Bearer {ADMIN}");
        let url = self.asset_url(feed, path);
        let (st, resp) = curl(&["-T", file.to_str().unwrap(), "-H", &auth, &url]);
        assert_eq!(st, 201, "PUT {url}: {}", String::from_utf8_lossy(&resp));
    }

    /// PUTs many small assets (path, text) with one curl process; asserts 201 for each.
    pub fn put_assets(&self, feed: &str, assets: &[(String, String)]) {
        self.curl_many(
            assets.iter().map(|(path, text)| {
                vec![
                    "-X".to_string(),
                    "PUT".into(),
                    "--data-binary".into(),
                    text.clone(),
                    self.asset_url(feed, path),
                ]
            }),
            "201",
        );
    }

    /// PUTs many assets from files (path in the feed, file) with one curl
    /// process; asserts 201 for each.
    pub fn put_asset_files(&self, feed: &str, assets: &[(String, PathBuf)]) {
        self.curl_many(
            assets.iter().map(|(path, file)| {
                vec![
                    "-X".to_string(),
                    "PUT".into(),
                    "--data-binary".into(),
                    format!("@{}", file.display()),
                    self.asset_url(feed, path),
                ]
            }),
            "201",
        );
    }

    /// DELETEs many assets with one curl process; asserts 204 for each.
    pub fn delete_assets(&self, feed: &str, paths: &[String]) {
        self.curl_many(
            paths
                .iter()
                .map(|p| vec!["-X".to_string(), "DELETE".into(), self.asset_url(feed, p)]),
            "204",
        );
    }

    fn curl_many(&self, requests: impl Iterator<Item = Vec<String>>, expect: &str) {
        let auth = format!("Authorization: Bearer {ADMIN}");
        let mut args: Vec<String> = Vec::new();
        let mut n = 0;
        for r in requests {
            if n > 0 {
                args.push("--next".into());
            }
            args.extend(["-s", "-o", "/dev/null", "-w", "%{http_code}\\n", "-H", &auth].map(String::from));
            args.extend(r);
            n += 1;
        }
        if n == 0 {
            return;
        }
        let out = run_ok(Command::new("curl").args(&args));
        let codes = String::from_utf8_lossy(&out.stdout).to_string();
        let codes: Vec<&str> = codes.lines().collect();
        assert_eq!(codes.len(), n, "curl answered {codes:?}");
        assert!(
            codes.iter().all(|c| *c == expect),
            "expected {expect} for every request: {codes:?}"
        );
    }

    /// DELETEs asset `feed/path` with the admin key; asserts 204.
    pub fn delete_asset(&self, feed: &str, path: &str) {
        let auth = format!("Authorization: Bearer {ADMIN}");
        let (st, _) = curl(&["-X", "DELETE", "-H", &auth, &self.asset_url(feed, path)]);
        assert_eq!(st, 204, "DELETE {feed}/{path}");
    }

    /// GETs asset `feed/path` anonymously: (status, body).
    pub fn get_asset(&self, feed: &str, path: &str) -> (u16, Vec<u8>) {
        curl(&[&self.asset_url(feed, path)])
    }

    /// Whether `feed/path` is served with exactly `body`.
    pub fn serves(&self, feed: &str, path: &str, body: &[u8]) -> bool {
        let (st, got) = self.get_asset(feed, path);
        st == 200 && got == body
    }

    /// Whether `feed/path` answers 404.
    pub fn lacks(&self, feed: &str, path: &str) -> bool {
        self.get_asset(feed, path).0 == 404
    }

    /// The files of one folder of an assets feed (`""`: the root): name → digest.
    /// A folder that does not exist is empty.
    pub fn asset_digests(&self, feed: &str, dir: &str) -> std::collections::BTreeMap<String, String> {
        let (st, body) = curl(&["-H", "Accept: application/json", &self.asset_url(feed, dir)]);
        if st == 404 {
            return Default::default();
        }
        assert_eq!(
            st,
            200,
            "listing {feed}/{dir}: {}",
            String::from_utf8_lossy(&body)
        );
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "file")
            .map(|e| {
                (
                    e["name"].as_str().unwrap().to_string(),
                    e["digest"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    /// Runs `ferry ARGS --json` (the caller passes `--json`) and parses stdout.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.cli_ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ferry {args:?} printed no JSON ({e}): {out}"))
    }

    /// Runs `ferry ARGS`, asserting it fails; returns stdout and stderr together.
    pub fn cli_fails(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            !out.status.success(),
            "ferry {args:?} unexpectedly succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// `PUT /api/v1/config` with the JSON declarations `body`, as the
    /// admin: (status, answer as text).
    pub fn put_config(&self, body: &str) -> (u16, String) {
        let (st, out) = curl_stdin(
            &[
                "-X",
                "PUT",
                "-H",
                &format!("authorization: Bearer {ADMIN}"),
                "-H",
                "content-type: application/json",
                "--data-binary",
                "@-",
                &format!("{}/api/v1/config", self.url),
            ],
            body.as_bytes(),
        );
        (st, String::from_utf8_lossy(&out).into_owned())
    }

    /// `GET /metrics` as the admin (asserting 200), as text.
    pub fn metrics(&self) -> String {
        let (st, body) = curl(&[
            "-H",
            &format!("Authorization: Bearer {ADMIN}"),
            &format!("{}/metrics", self.url),
        ]);
        assert_eq!(st, 200);
        String::from_utf8_lossy(&body).into_owned()
    }

    /// Creates an incoming replication and returns a new sync token for it.
    pub fn incoming(&self, name: &str, feeds: &[&str], mode: &str) -> String {
        let mut args = vec!["replication", "create", name, "--incoming", "--mode", mode];
        for f in feeds {
            args.extend(["--feed", f]);
        }
        self.cli_ok(&args);
        self.sync_token(name)
    }

    /// A new sync token of incoming replication `name`.
    pub fn sync_token(&self, name: &str) -> String {
        let t = self.cli_ok(&["replication", "token", name]).trim().to_string();
        assert!(t.starts_with("fst_"), "not a sync token: {t}");
        t
    }

    /// Creates an outgoing replication to `other` with `token`; `extra` adds flags.
    pub fn outgoing(
        &self,
        name: &str,
        feeds: &[&str],
        other: &Server,
        token: &str,
        mode: &str,
        extra: &[&str],
    ) {
        self.outgoing_url(name, feeds, &other.url, token, mode, extra);
    }

    /// Creates an outgoing replication to the instance at `url` (e.g.
    /// through a proxy) with `token`; `extra` adds flags.
    pub fn outgoing_url(
        &self,
        name: &str,
        feeds: &[&str],
        url: &str,
        token: &str,
        mode: &str,
        extra: &[&str],
    ) {
        let mut args = vec![
            "replication",
            "create",
            name,
            "--outgoing",
            url,
            "--token",
            token,
            "--mode",
            mode,
        ];
        for f in feeds {
            args.extend(["--feed", f]);
        }
        args.extend(extra);
        self.cli_ok(&args);
    }

    /// `ferry replication verify NAME` succeeded.
    pub fn verified(&self, name: &str) -> bool {
        let out = self.cli(&["replication", "verify", name]);
        if !out.status.success() {
            // Said for the case where the caller expected agreement.
            eprintln!(
                "verify {name}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        out.status.success()
    }

    /// The executions of replication `name`, newest first.
    pub fn executions(&self, name: &str) -> Vec<serde_json::Value> {
        self.cli_json(&["replication", "executions", name, "--json"])
            .as_array()
            .unwrap()
            .clone()
    }
}

pub mod oci;

impl Server {
    /// A spoke pulling `feed` (assets) from `hub` as replication
    /// `from-hub`, with `token` of the hub's incoming replication; the long
    /// interval leaves runs to the test (and to the hub's changes, which
    /// the spoke follows by long polling).
    pub fn pulling_spoke(hub: &Server, feed: &str, token: &str) -> Server {
        let spoke = Server::start();
        spoke.create_feed(feed, "assets");
        spoke.outgoing("from-hub", &[feed], hub, token, "pull", &["--interval", "3600"]);
        spoke
    }
}

/// Files under a blob folder's `staging/` (uploads being received), but
/// for the liveness locks of nodes sharing the folder (`.nodes/`).
pub fn staged_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name() != ".nodes")
        .map(|e| {
            if e.file_type().unwrap().is_dir() {
                staged_files(&e.path())
            } else {
                1
            }
        })
        .sum()
}
