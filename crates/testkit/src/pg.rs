//! Real PostgreSQL for tests: a fresh database per test, in a throwaway
//! cluster.
//!
//! When `FERRY_TEST_PG_URL` names a server (an admin connection URL, as
//! `scripts/test` exports for the cluster it starts once for the whole
//! run), each [`TestDatabase`] is a new database there, dropped when the
//! value is dropped. Otherwise the test starts a private cluster of its own
//! (Debian's `postgresql` server binaries, `initdb` in a temporary
//! directory, listening on a free loopback port, `fsync` off: a killed server keeps
//! every commit, a crashed machine need not) and stops it
//! by PID on drop. PostgreSQL refuses to run as root: as root, the cluster
//! runs as the `postgres` user that Debian's package creates.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A database that exists for as long as this value does.
pub struct TestDatabase {
    /// Connection URL of the database (`postgres://postgres@127.0.0.1:PORT/NAME`).
    pub url: String,
    admin_url: String,
    name: String,
    /// The private cluster, when no shared server was given.
    cluster: Option<Cluster>,
    /// Copies made by [`TestDatabase::snapshot`].
    snapshots: std::sync::Mutex<Vec<String>>,
}

impl TestDatabase {
    /// A fresh, empty database (see the module docs for where).
    pub fn new() -> Self {
        match std::env::var("FERRY_TEST_PG_URL") {
            Ok(url) if !url.is_empty() => Self::on(url, None),
            _ => Self::private(),
        }
    }

    /// A fresh database in a private cluster of its own, whatever
    /// `FERRY_TEST_PG_URL` says (for tests that stop the server).
    pub fn private() -> Self {
        let c = Cluster::start();
        Self::on(c.admin_url(), Some(c))
    }

    fn on(admin_url: String, cluster: Option<Cluster>) -> Self {
        let name = format!("ferry_test_{}_{}", std::process::id(), unique());
        psql(&admin_url, &format!("CREATE DATABASE {name}"));
        let url = with_database(&admin_url, &name);
        Self {
            url,
            admin_url,
            name,
            cluster,
            snapshots: Default::default(),
        }
    }

    /// Copies the database (no one may be connected to it) and returns the
    /// copy's name, for [`TestDatabase::restore`]. The copy is dropped
    /// with this value.
    pub fn snapshot(&self) -> String {
        let snap = format!("{}_s{}", self.name, unique());
        psql(
            &self.admin_url,
            &format!("CREATE DATABASE {snap} TEMPLATE {}", self.name),
        );
        self.snapshots.lock().unwrap().push(snap.clone());
        snap
    }

    /// Replaces the database by the copy [`TestDatabase::snapshot`] made.
    pub fn restore(&self, snapshot: &str) {
        psql(
            &self.admin_url,
            &format!("DROP DATABASE {} WITH (FORCE)", self.name),
        );
        psql(
            &self.admin_url,
            &format!("CREATE DATABASE {} TEMPLATE {snapshot}", self.name),
        );
    }

    /// The admin URL of the server the database lives on.
    pub fn server_url(&self) -> &str {
        &self.admin_url
    }

    /// Stops the server the database lives on at once (`SIGKILL`), as a
    /// crash or a cut cable would (only a private cluster; panics for a
    /// shared server).
    pub fn kill_server(&mut self) {
        self.cluster.as_mut().expect("a private cluster").kill();
    }

    /// Starts the server again after [`TestDatabase::kill_server`], on the
    /// same port and data.
    pub fn restart_server(&mut self) {
        self.cluster.as_mut().expect("a private cluster").run();
    }
}

impl Default for TestDatabase {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if self.cluster.is_none() {
            let mut names = vec![self.name.clone()];
            names.extend(self.snapshots.lock().map(|s| s.clone()).unwrap_or_default());
            for name in names {
                let _ = Command::new("psql")
                    .args([
                        self.admin_url.as_str(),
                        "-qc",
                        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    (t << 8) + N.fetch_add(1, Ordering::Relaxed)
}

fn with_database(url: &str, db: &str) -> String {
    // postgres://user@host:port/dbname?params
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_part = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{host_part}/{db}?{q}"),
        None => format!("{host_part}/{db}"),
    }
}

fn psql(url: &str, sql: &str) {
    let out = Command::new("psql")
        .args([url, "-qc", sql])
        .output()
        .expect("psql (Debian's postgresql-client) runs");
    assert!(
        out.status.success(),
        "psql {sql:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The directory of the newest installed PostgreSQL server binaries.
pub fn server_bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let v: u32 = e.file_name().to_str()?.parse().ok()?;
                    let bin = e.path().join("bin");
                    bin.join("postgres").exists().then_some((v, bin))
                })
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions
        .pop()
        .map(|(_, p)| p)
        .expect("PostgreSQL server binaries in /usr/lib/postgresql/*/bin (run scripts/test, which installs Debian's postgresql)")
}

/// A PostgreSQL cluster of its own in a temporary directory.
struct Cluster {
    dir: PathBuf,
    port: u16,
    owner: Option<(u32, u32)>,
    server: Option<Child>,
}

/// uid and gid of the `postgres` user when running as root.
fn run_as() -> Option<(u32, u32)> {
    if effective_uid() != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let line = passwd.lines().find(|l| l.starts_with("postgres:")).expect(
        "a postgres user (Debian's postgresql package creates it) to run PostgreSQL as, since root may not",
    );
    let f: Vec<&str> = line.split(':').collect();
    Some((f[2].parse().unwrap(), f[3].parse().unwrap()))
}

fn effective_uid() -> u32 {
    // The effective uid, from /proc (no libc binding needed).
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(u32::MAX)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Cluster {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("ferry-pg-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&dir).unwrap();
        let owner = run_as();
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
        }
        let bin = server_bin_dir();
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync", "-D"])
            .arg(dir.join("data"))
            .stdout(Stdio::null());
        if let Some((uid, gid)) = owner {
            initdb.uid(uid).gid(gid);
        }
        let out = initdb.output().expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut c = Self {
            dir,
            port: free_port(),
            owner,
            server: None,
        };
        c.run();
        c
    }

    fn run(&mut self) {
        let bin = server_bin_dir();
        let mut cmd = Command::new(bin.join("postgres"));
        cmd.arg("-D")
            .arg(self.dir.join("data"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-k"])
            .arg(&self.dir)
            .args([
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
            ])
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(self.dir.join("server.log"))
                    .map(Stdio::from)
                    .unwrap_or(Stdio::null()),
            );
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        self.server = Some(cmd.spawn().expect("postgres starts"));
        wait_ready(&self.admin_url(), &self.dir.join("server.log"));
    }

    fn kill(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        // Its backends die with it (the postmaster's children notice), but
        // a killed postmaster leaves its pid file: remove it so the next
        // start is not refused.
        let _ = std::fs::remove_file(self.dir.join("data/postmaster.pid"));
        std::thread::sleep(Duration::from_millis(200));
    }

    fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

fn wait_ready(url: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = Command::new("psql")
            .args([url, "-qtAc", "SELECT 1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "PostgreSQL did not start within 30 s: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut s) = self.server.take() {
            // SIGTERM would wait for clients; a test's cluster holds nothing
            // worth a clean shutdown.
            let _ = s.kill();
            let _ = s.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
