//! Configuration as code: a hub and three spokes set up only by their TOML
//! files (`ferry serve --config FILE`, one command each) converge; a changed
//! file applied on SIGHUP brings a new feed pair and leaves an undeclared
//! replication alone (deleted only with `prune = true`); an invalid file is
//! refused naming its line and changes nothing, at start, on SIGHUP and by
//! `ferry config apply`; `ferry config export` round-trips.
#![allow(clippy::unwrap_used)]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{ADMIN, Server, bin, wait_until};

const SYNC: u64 = 60;

/// `ferry config token`: (token, the accept_tokens line).
fn offline_token() -> (String, String) {
    let out = Command::new(bin()).args(["config", "token"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let token = text.lines().find(|l| l.starts_with("fst_")).unwrap().to_string();
    let accept = text
        .lines()
        .find(|l| l.starts_with("accept_tokens"))
        .unwrap()
        .to_string();
    (token, accept)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn spoke_file(hub: &Server, extra_pairs: &str, extra: &str) -> String {
    format!(
        r#"# a spoke, from one file
[[feeds]]
name = "files"
type = "assets"

[[feeds]]
name = "docs"
type = "assets"

[[replications]]
name = "from-hub"
feeds = ["files"{extra_pairs}]
outgoing = "{hub}"
token_file = "hub.token"
mode = "pull"
interval = 3600
{extra}"#,
        hub = hub.url
    )
}

const DOWNSTREAM: &str = r#"
[[replications]]
name = "downstream"
feeds = ["files"]
mode = "push"
"#;

fn replication_names(s: &Server) -> Vec<String> {
    let list = s.cli_json(&["replication", "list", "--json"]);
    let mut names: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// `ferry config apply FILE` against `s` with `env` set (the variables
/// an exported file names); asserts it succeeded and returns its output.
fn apply_with_env(s: &Server, file: &Path, env: &[(&str, &str)]) -> String {
    let out = Command::new(bin())
        .args(["config", "apply", file.to_str().unwrap()])
        .env("FERRY_URL", &s.url)
        .env("FERRY_API_KEY", ADMIN)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    said
}

fn hup(s: &Server) {
    let st = Command::new("kill")
        .args(["-HUP", &s.pid().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn a_fleet_from_files_converges_and_follows_its_files() {
    let tmp = tempfile::tempdir().unwrap();
    let (token, accept) = offline_token();
    let hub_conf = write(
        tmp.path(),
        "hub.toml",
        &format!(
            r#"[[feeds]]
name = "files"
type = "assets"

[[feeds]]
name = "docs"
type = "assets"

[[replications]]
name = "edge"
feeds = ["files", "docs"]
mode = "push"
{accept}
"#
        ),
    );
    let hub = Server::start_with(&[("FERRY_CONFIG", hub_conf.to_str().unwrap())]);
    hub.put_asset("files", "app/v1.txt", b"version one");
    hub.put_asset("docs", "guide.txt", b"read me");

    // Three spokes, each one command with its file; one token for all.
    let mut spokes = Vec::new();
    for i in 0..3 {
        let dir = tmp.path().join(format!("spoke{i}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("hub.token"), format!("{token}\n")).unwrap();
        let conf = write(&dir, "spoke.toml", &spoke_file(&hub, "", DOWNSTREAM));
        let s = Server::start_with(&[
            ("FERRY_CONFIG", conf.to_str().unwrap()),
            ("FERRY_INSTANCE_NAME", &format!("spoke-{i}")),
        ]);
        spokes.push((s, conf));
    }
    for (s, _) in &spokes {
        // Started by the file at start-up: never taken for one the last
        // stop cut (the start-up sweep runs before the file applies).
        let first = s.executions("from-hub");
        assert!(first.iter().all(|e| e["outcome"] != "interrupted"), "{first:#?}");
        assert!(
            wait_until(SYNC, || s.asset_digests("files", "app/").len() == 1),
            "a spoke did not converge from its file"
        );
        assert_eq!(s.get_asset("files", "app/v1.txt").1, b"version one");
        assert_eq!(replication_names(s), ["downstream", "from-hub"]);
    }
    // The hub sees all three, by name.
    let peers = hub.cli_json(&["replication", "peers", "edge", "--json"]);
    assert_eq!(peers.as_array().unwrap().len(), 3, "{peers:#}");

    // SIGHUP: a new feed pair arrives; the dropped declaration stays.
    let (s0, conf0) = &spokes[0];
    assert!(s0.lacks("docs", "guide.txt"));
    std::fs::write(conf0, spoke_file(&hub, r#", "docs""#, "")).unwrap();
    hup(s0);
    assert!(
        wait_until(SYNC, || s0.get_asset("docs", "guide.txt").1 == b"read me"),
        "the feed pair added to the file did not arrive after SIGHUP"
    );
    assert_eq!(replication_names(s0), ["downstream", "from-hub"]);

    // An invalid file changes nothing, neither on SIGHUP nor by apply;
    // the error names the line.
    let before = s0.cli_ok(&["config", "export"]);
    // (It also declares a new feed: not left behind either.)
    let bad = spoke_file(
        &hub,
        r#", "nope""#,
        "\n[[feeds]]\nname = \"extra\"\ntype = \"npm\"\n",
    );
    let bad_line = bad.lines().position(|l| l == "[[replications]]").unwrap() + 1;
    std::fs::write(conf0, &bad).unwrap();
    hup(s0);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let err = s0.cli_fails(&["config", "apply", conf0.to_str().unwrap()]);
    assert!(
        err.contains(&format!("line {bad_line}")) && err.contains("nope"),
        "{err}"
    );
    assert_eq!(s0.cli_ok(&["config", "export"]), before);
    // A mode the hub does not fit is refused by the hub's own words, before
    // anything changes.
    let mismatch = spoke_file(&hub, r#", "docs""#, "").replace(r#"mode = "pull""#, r#"mode = "mirror""#);
    std::fs::write(conf0, &mismatch).unwrap();
    let err = s0.cli_fails(&["config", "apply", conf0.to_str().unwrap()]);
    assert!(
        err.contains(&format!("line {bad_line}")) && err.contains("mode"),
        "{err}"
    );
    assert_eq!(s0.cli_ok(&["config", "export"]), before);
    // A delete guard's share that is not a number, and a key the guard
    // does not have: refused in the file's words, nothing changed.
    for (guard, says) in [
        (
            "{ max_share = nan, max_items = 5 }",
            "share must be between 0 and 1 (got NaN)",
        ),
        (
            "{ max_share = 0.1, max_items = 5, extra = 1 }",
            "unknown field `extra`",
        ),
    ] {
        let text = spoke_file(&hub, r#", "docs""#, &format!("delete_guard = {guard}\n"));
        std::fs::write(conf0, &text).unwrap();
        let err = s0.cli_fails(&["config", "apply", conf0.to_str().unwrap()]);
        assert!(
            err.contains(says) && !err.contains("JSON") && !err.contains("deserialize"),
            "{guard}: {err}"
        );
        assert_eq!(s0.cli_ok(&["config", "export"]), before);
    }

    // prune = true in a file that declares no replication (cut short, the
    // wrong file) would delete them all: refused, naming them and the way
    // to delete them, and nothing changed.
    std::fs::write(
        conf0,
        "prune = true\n[[feeds]]\nname = \"files\"\ntype = \"assets\"\n",
    )
    .unwrap();
    let err = s0.cli_fails(&["config", "apply", conf0.to_str().unwrap()]);
    assert!(
        err.contains("declares no [[replications]]")
            && err.contains("downstream")
            && err.contains("from-hub")
            && err.contains("ferry replication delete")
            && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(s0.cli_ok(&["config", "export"]), before);

    // prune = true deletes what the file no longer declares.
    std::fs::write(
        conf0,
        format!("prune = true\n{}", spoke_file(&hub, r#", "docs""#, "")),
    )
    .unwrap();
    let out = s0.cli_ok(&["config", "apply", conf0.to_str().unwrap()]);
    assert!(out.contains("downstream: deleted"), "{out}");
    assert_eq!(replication_names(s0), ["from-hub"]);

    // Export round-trips: applied back (token from the environment it
    // names), nothing changes, and it exports the same again.
    let exported = s0.cli_ok(&["config", "export"]);
    assert!(!exported.contains(&token[20..]), "a secret was exported");
    assert!(
        exported.contains(r#"token_env = "FERRY_TOKEN_FROM_HUB""#),
        "{exported}"
    );
    let again = write(tmp.path(), "exported.toml", &exported);
    let said = apply_with_env(s0, &again, &[("FERRY_TOKEN_FROM_HUB", &token)]);
    assert!(!said.contains("created") && !said.contains("updated"), "{said}");
    assert_eq!(s0.cli_ok(&["config", "export"]), exported);
    // A change through the API to what the served file declares: made,
    // with a warning that the file wins at its next application.
    let out = s0.cli(&["replication", "update", "from-hub", "--interval", "7"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("declared in")
            && said.contains("spoke.toml")
            && said.contains("until the file is applied again"),
        "{said}"
    );
    // The hub's export carries the accepted token, by id and hash only.
    let hub_export = hub.cli_ok(&["config", "export"]);
    assert!(
        hub_export.contains(&token[4..20]) && !hub_export.contains(&token[21..]),
        "{hub_export}"
    );
}

#[test]
fn a_file_that_cannot_be_applied_stops_the_start_naming_its_line() {
    let tmp = tempfile::tempdir().unwrap();
    let conf = write(
        tmp.path(),
        "bad.toml",
        "[[feeds]]\nname = \"files\"\ntype = \"assets\"\n\n[[replications]]\nname = \"r\"\nfeeds = [\"missing\"]\nmode = \"push\"\n",
    );
    let out = Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(tmp.path().join("data"))
        .env("FERRY_CONFIG", &conf)
        .env("FERRY_ADMIN_KEY", ADMIN)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("line 5") && err.contains("missing"), "{err}");
}

#[test]
fn a_refused_file_on_an_empty_data_directory_leaves_no_admin_key_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let serve = |conf: &Path, data: &Path| {
        Command::new(bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .env("FERRY_CONFIG", conf)
            .env_remove("FERRY_ADMIN_KEY")
            .output()
            .unwrap()
    };
    // Applying fails (an undeclared feed): no key is made or printed.
    let bad = write(
        tmp.path(),
        "bad.toml",
        "[[replications]]\nname = \"r\"\nfeeds = [\"missing\"]\nmode = \"push\"\n",
    );
    let data = tmp.path().join("data");
    let out = serve(&bad, &data);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{said}");
    assert!(!data.join("admin.key").exists(), "{said}");
    assert!(!said.contains("admin API key"), "{said}");
    // Nor anything else: the data directory did not exist, and does not.
    assert!(!data.exists(), "the refused start left {:?}", listing(&data));
    // A secret that cannot be read: refused before the data directory exists.
    let unreadable = write(
        tmp.path(),
        "secret.toml",
        "[[feeds]]\nname = \"files\"\ntype = \"assets\"\n\n[[replications]]\nname = \"r\"\nfeeds = [\"files\"]\noutgoing = \"http://127.0.0.1:9\"\ntoken_file = \"no-such.token\"\nmode = \"pull\"\n",
    );
    let fresh = tmp.path().join("fresh");
    let out = serve(&unreadable, &fresh);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no-such.token"), "{err}");
    assert!(!fresh.exists(), "the data directory was written: {err}");
}

/// The names under `dir`, recursively, sorted (empty when it is absent).
fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if p.is_dir() {
                todo.push(p);
            }
        }
    }
    out.sort();
    out
}

/// `ferry serve --config conf --data-dir data` without an admin key in
/// the environment, until it ends: (succeeded, what it said).
fn serve_once(conf: &Path, data: &Path, backend: &Backend) -> (bool, String) {
    let out = Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .env("FERRY_CONFIG", conf)
        .env_remove("FERRY_ADMIN_KEY")
        .env_remove("FERRY_DATABASE_URL")
        .envs(backend.env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

/// Where a `ferry serve` of the test keeps its instance: the data
/// directory alone (SQLite, blob folder), or on the suite's second pass a
/// fresh PostgreSQL database and S3 bucket of its own.
struct Backend {
    env: Vec<(String, String)>,
    db: Option<ferry_testkit::pg::TestDatabase>,
    _bucket: Option<support::Bucket>,
}

impl Backend {
    fn new() -> Self {
        if !support::on_postgres() {
            return Backend {
                env: Vec::new(),
                db: None,
                _bucket: None,
            };
        }
        let db = ferry_testkit::pg::TestDatabase::new();
        let bucket = support::Bucket::new();
        let mut env = bucket.env();
        env.push(("FERRY_DATABASE_URL".into(), db.url.clone()));
        Backend {
            env,
            db: Some(db),
            _bucket: Some(bucket),
        }
    }

    /// What the database holds, one line per row of the tables a start
    /// writes (instance id, feeds, keys, replications, tokens), or
    /// nothing when the schema was never made; empty without PostgreSQL.
    fn rows(&self) -> String {
        let Some(db) = &self.db else {
            return String::new();
        };
        let out = Command::new("psql")
            .args([
                db.url.as_str(),
                "-qtAc",
                "SELECT 'meta ' || k || ' ' || v FROM meta \
                 UNION ALL SELECT 'feed ' || name FROM feeds \
                 UNION ALL SELECT 'key ' || name FROM api_keys \
                 UNION ALL SELECT 'replication ' || name FROM replications \
                 UNION ALL SELECT 'token ' || id FROM sync_tokens \
                 UNION ALL SELECT 'feed seq ' || nextval('feeds_id_seq')",
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() && err.contains("does not exist") {
            return String::new();
        }
        assert!(out.status.success(), "{err}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

/// A file that parses but whose declarations cannot be applied — a
/// replication of a feed that is neither declared nor there, or one the
/// other end refuses — leaves a data directory that held no instance as
/// it found it: not created, still empty, or with only what it held (no
/// database, journal, blob folder or key made by the start). One that
/// held an instance keeps it whole. On PostgreSQL (the suite's second
/// pass) the database is left as found too: without an instance, holding
/// none of the rows the start wrote; with one, every row.
#[test]
fn a_file_that_cannot_be_applied_leaves_a_data_directory_without_an_instance_as_it_was() {
    let tmp = tempfile::tempdir().unwrap();
    let undeclared = write(
        tmp.path(),
        "undeclared.toml",
        "[[feeds]]\nname = \"files\"\ntype = \"assets\"\n\n[[replications]]\nname = \"r\"\nfeeds = [\"missing\"]\nmode = \"push\"\n",
    );

    // Not there, nor its parent: neither is made.
    let parent = tmp.path().join("new");
    let nested = parent.join("data");
    let backend = Backend::new();
    let (ok, said) = serve_once(&undeclared, &nested, &backend);
    assert!(
        !ok && said.contains("line 5") && said.contains("missing"),
        "{said}"
    );
    assert!(!parent.exists(), "the refused start left {:?}", listing(&parent));
    // Once more on the same database, its schema now made by the first.
    let (ok, said) = serve_once(&undeclared, &nested, &backend);
    assert!(!ok, "{said}");
    assert!(!parent.exists(), "the refused start left {:?}", listing(&parent));
    if backend.db.is_some() {
        // The schema is there (the start made it), empty, its sequences
        // restarted.
        let rows = backend.rows();
        assert_eq!(
            rows, "feed seq 1",
            "the refused start left in the database: {rows}"
        );
    }

    // There and empty: stays, empty.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (ok, said) = serve_once(&undeclared, &empty, &Backend::new());
    assert!(!ok, "{said}");
    assert_eq!(listing(&empty), Vec::<String>::new(), "{said}");

    // Holding other things (even a blob folder, without a database): they
    // stay, and only they.
    let kept = tmp.path().join("kept");
    std::fs::create_dir_all(kept.join("blobs")).unwrap();
    std::fs::write(kept.join("blobs/keep.me"), b"mine").unwrap();
    std::fs::write(kept.join("notes.txt"), b"mine too").unwrap();
    let (ok, said) = serve_once(&undeclared, &kept, &Backend::new());
    assert!(!ok, "{said}");
    assert_eq!(listing(&kept), ["blobs", "blobs/keep.me", "notes.txt"], "{said}");
    assert_eq!(std::fs::read(kept.join("blobs/keep.me")).unwrap(), b"mine");

    // The other end refuses the replication (a token it does not know).
    let hub = Server::start();
    hub.create_feed("files", "assets");
    hub.incoming("edge", &["files"], "push");
    let refused = write(
        tmp.path(),
        "refused.toml",
        &format!(
            "[[feeds]]\nname = \"files\"\ntype = \"assets\"\n\n[[replications]]\nname = \"from-hub\"\nfeeds = [\"files\"]\n\
             outgoing = \"{}\"\ntoken = \"fst_00000000000000ab_{}\"\nmode = \"pull\"\n",
            hub.url,
            "ab".repeat(32)
        ),
    );
    let fresh = tmp.path().join("fresh");
    let backend = Backend::new();
    let (ok, said) = serve_once(&refused, &fresh, &backend);
    assert!(!ok && said.contains("line 5"), "{said}");
    assert!(!fresh.exists(), "the refused start left {:?}", listing(&fresh));
    if backend.db.is_some() {
        // The schema is there (the start made it), empty, its sequences
        // restarted.
        let rows = backend.rows();
        assert_eq!(
            rows, "feed seq 1",
            "the refused start left in the database: {rows}"
        );
    }

    // A data directory that holds an instance keeps all of it.
    let good = write(
        tmp.path(),
        "good.toml",
        "[[feeds]]\nname = \"files\"\ntype = \"assets\"\n",
    );
    let held = tmp.path().join("held");
    let backend = Backend::new();
    let mut child = Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&held)
        .env("FERRY_CONFIG", &good)
        .env_remove("FERRY_ADMIN_KEY")
        .env_remove("FERRY_DATABASE_URL")
        .envs(backend.env.iter().map(|(k, v)| (k, v)))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let url = lines
        .find_map(|l| l.ok()?.strip_prefix("listening on ").map(str::to_owned))
        .expect("the first start did not listen");
    // Serving (its signal handlers in place) before it is stopped.
    assert!(wait_until(10, || support::curl(&[&format!("{url}/health")]).0 == 200));
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    child.wait().unwrap();
    let key = std::fs::read_to_string(held.join("admin.key")).unwrap();
    let before = listing(&held);
    let rows_before = backend.rows();
    if backend.db.is_some() {
        assert!(
            rows_before.contains("meta instance_id") && rows_before.contains("feed files"),
            "{rows_before}"
        );
    } else {
        assert!(before.contains(&"ferry.db".to_string()), "{before:?}");
    }
    let (ok, said) = serve_once(&undeclared, &held, &backend);
    assert!(!ok, "{said}");
    // (The sequence read moves on by one per reading.)
    let keep = |rows: String| -> Vec<String> {
        rows.lines()
            .filter(|l| !l.starts_with("feed seq"))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(keep(backend.rows()), keep(rows_before), "the database changed");
    let after = listing(&held);
    for entry in &before {
        // The journal files come and go with the database's connections;
        // a node's scratch in a shared spool is its own (a new node id per
        // start).
        if !entry.starts_with("ferry.db-") && !entry.contains("node-") {
            assert!(after.contains(entry), "{entry} is gone: {after:?}");
        }
    }
    assert_eq!(std::fs::read_to_string(held.join("admin.key")).unwrap(), key);
}

#[test]
fn an_error_in_a_blob_source_names_the_sources_line() {
    let tmp = tempfile::tempdir().unwrap();
    let token = format!("fst_0123456789abcdef_{}", "5e".repeat(32));
    let text = format!(
        "[[feeds]]\nname = \"files\"\ntype = \"assets\"\n\n\
         [[replications]]\nname = \"r\"\nfeeds = [\"files\"]\noutgoing = \"http://127.0.0.1:9\"\n\
         token = \"{token}\"\nmode = \"pull\"\n\n\
         [[replications.blob_sources]]\nurl = \"http://127.0.0.1:10\"\ntoken = \"{token}\"\n\n\
         [[replications.blob_sources]]\nurl = \"http://someone:secret@cache.site:8765\"\ntoken = \"{token}\"\n"
    );
    // The second source's url is on line 17.
    assert_eq!(text.lines().position(|l| l.contains("cache.site")), Some(16));
    let conf = write(tmp.path(), "sources.toml", &text);
    let out = Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(tmp.path().join("data"))
        .env("FERRY_CONFIG", &conf)
        .env("FERRY_ADMIN_KEY", ADMIN)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("line 17") && err.contains("user and password"),
        "{err}"
    );
    assert!(!err.contains("secret"), "the URL's password was echoed: {err}");
    // The same file applied to a running instance names the same line.
    let running = Server::start();
    let out = running.cli(&["config", "apply", conf.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("line 17") && err.contains("user and password"),
        "{err}"
    );
}

/// A listener that accepts connections and never answers (held open for
/// the life of the test process). Returns its URL.
fn silent_peer() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().flatten() {
            held.push(s);
        }
    });
    url
}

/// A web server that is not Ferry: every request is answered `status`
/// with a multi-line HTML page (as `python3 -m http.server` answers a
/// POST: 501). Returns its URL.
fn web_server(status: &'static str) -> String {
    use std::io::{BufRead, BufReader, Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; len];
                let _ = r.read_exact(&mut body);
                let page = "<!DOCTYPE HTML>\n<html lang=\"en\">\n    <head>\n        <title>Error response</title>\n    </head>\n    <body>\n        <h1>Error response</h1>\n        <p>Error code: 501</p>\n        <p>Message: Unsupported method ('POST').</p>\n    </body>\n</html>\n";
                let mut s = s;
                let _ = write!(
                    s,
                    "HTTP/1.0 {status}\r\nContent-Type: text/html;charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                    page.len()
                );
            });
        }
    });
    url
}

fn outgoing_decl(name: &str, url: &str) -> String {
    format!(
        "\n[[replications]]\nname = \"{name}\"\nfeeds = [\"files\"]\noutgoing = \"{url}\"\ntoken_file = \"peer.token\"\nmode = \"pull\"\ninterval = 3600\n"
    )
}

const FILES: &str = "[[feeds]]\nname = \"files\"\ntype = \"assets\"\n";

/// A peer that accepts and never answers delays neither the start nor
/// `config apply` by a minute per replication: the ends are probed once
/// each, all at once, within 10 s together (two such replications cost
/// 120 s before); the replications are stored with a warning.
#[test]
fn a_peer_that_never_answers_delays_start_and_apply_only_briefly() {
    let tmp = tempfile::tempdir().unwrap();
    let (token, _) = offline_token();
    std::fs::write(tmp.path().join("peer.token"), format!("{token}\n")).unwrap();
    let silent = silent_peer();
    let conf = write(
        tmp.path(),
        "ferry.toml",
        &format!(
            "{FILES}{}{}",
            outgoing_decl("a", &silent),
            outgoing_decl("b", &silent)
        ),
    );
    let started = std::time::Instant::now();
    let s = Server::start_with(&[("FERRY_CONFIG", conf.to_str().unwrap())]);
    let took = started.elapsed();
    assert!(took.as_secs() < 18, "the start took {took:?}");
    assert_eq!(replication_names(&s), ["a", "b"]);

    // `config apply` with two more: once each, 10 s at most each.
    let more = write(
        tmp.path(),
        "more.toml",
        &format!(
            "{FILES}{}{}",
            outgoing_decl("e", &silent),
            outgoing_decl("f", &silent)
        ),
    );
    let applying = std::time::Instant::now();
    let out = s.cli_ok(&["config", "apply", more.to_str().unwrap()]);
    let took = applying.elapsed();
    assert!(took.as_secs() < 18, "config apply took {took:?}: {out}");
    assert_eq!(replication_names(&s).len(), 4);
}

/// A server that answers, but not as Ferry does (a web server's 501 HTML
/// page to the handshake), is refused by `config apply` and `replication
/// create`, with the page cut to one short line; nothing is stored.
#[test]
fn a_web_server_is_refused_and_its_page_quoted_on_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let (token, _) = offline_token();
    std::fs::write(tmp.path().join("peer.token"), format!("{token}\n")).unwrap();
    let s = Server::start();
    let web = web_server("501 Unsupported method ('POST')");
    let conf = write(
        tmp.path(),
        "web.toml",
        &format!("{FILES}{}", outgoing_decl("web", &web)),
    );
    let out = s.cli(&["config", "apply", conf.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("not a Ferry instance") && err.contains("501"),
        "{err}"
    );
    assert!(err.trim().lines().count() == 1 && err.len() < 600, "{err}");
    assert!(replication_names(&s).is_empty());

    s.create_feed("files", "assets");
    let out = s.cli(&[
        "replication",
        "create",
        "web",
        "--feed",
        "files",
        "--outgoing",
        &web,
        "--token",
        &token,
        "--mode",
        "pull",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("not a Ferry instance") && err.trim().lines().count() == 1,
        "{err}"
    );
    assert!(replication_names(&s).is_empty());
}

/// `outgoing = "http://user:pw@host"` is refused at once, saying where
/// the credentials go.
#[test]
fn an_outgoing_url_with_user_info_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (token, _) = offline_token();
    std::fs::write(tmp.path().join("peer.token"), format!("{token}\n")).unwrap();
    let s = Server::start();
    let conf = write(
        tmp.path(),
        "creds.toml",
        &format!("{FILES}{}", outgoing_decl("creds", "http://user:pw@127.0.0.1:9")),
    );
    let out = s.cli(&["config", "apply", conf.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("user name or password") && err.contains("token_file"),
        "{err}"
    );
    s.create_feed("files", "assets");
    let out = s.cli(&[
        "replication",
        "create",
        "creds",
        "--feed",
        "files",
        "--outgoing",
        "http://u:p@127.0.0.1:9",
        "--token",
        &token,
        "--mode",
        "pull",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("user name or password") && err.contains("--token"),
        "{err}"
    );
    assert!(replication_names(&s).is_empty());
}

fn token_revoked(s: &Server, replication: &str, id: &str) -> bool {
    let (status, body) = support::curl(&[
        "-H",
        &format!("Authorization: Bearer {ADMIN}"),
        &format!("{}/api/v1/replications/{replication}/tokens", s.url),
    ]);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
        .map(|t| t["revoked"].as_bool().unwrap())
        .unwrap_or_else(|| panic!("no token {id}: {list}"))
}

/// A token dropped from an incoming replication's `accept_tokens` is
/// revoked on SIGHUP with `prune = true` (and no longer exported), left
/// alone without it; a replication without `accept_tokens` keeps its
/// tokens.
#[test]
fn a_token_dropped_from_accept_tokens_is_revoked_with_prune() {
    let tmp = tempfile::tempdir().unwrap();
    let (t1, a1) = offline_token();
    let (t2, a2) = offline_token();
    let (t3, a3) = offline_token();
    let id = |t: &str| t.split('_').nth(1).unwrap().to_string();
    let (id1, id2, id3) = (id(&t1), id(&t2), id(&t3));
    let entry = |a: &str| {
        a.trim_start_matches("accept_tokens = [")
            .trim_end_matches(']')
            .trim()
            .to_string()
    };
    let hub_file = |tokens: &[&str], prune: bool| {
        format!(
            "{}{FILES}\n[[replications]]\nname = \"edge\"\nfeeds = [\"files\"]\nmode = \"push\"\naccept_tokens = [{}]\n\n[[replications]]\nname = \"other\"\nfeeds = [\"files\"]\nmode = \"push\"\n",
            if prune { "prune = true\n" } else { "" },
            tokens.join(", ")
        )
    };
    let conf = write(
        tmp.path(),
        "hub.toml",
        &hub_file(&[&entry(&a1), &entry(&a2), &entry(&a3)], false),
    );
    let hub = Server::start_with(&[("FERRY_CONFIG", conf.to_str().unwrap())]);
    hub.cli_ok(&["replication", "token", "other"]);
    assert!(!token_revoked(&hub, "edge", &id2));

    // Dropped without prune: left alone, and named in a warning.
    std::fs::write(&conf, hub_file(&[&entry(&a1), &entry(&a3)], false)).unwrap();
    let out = hub.cli(&["config", "apply", conf.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains(&id2) && said.contains("left alone without prune"),
        "{said}"
    );
    assert!(!token_revoked(&hub, "edge", &id2));
    hup(&hub);
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(!token_revoked(&hub, "edge", &id2));

    // With prune: revoked, the declared one and the other replication's
    // kept — on SIGHUP, and by `ferry config apply`, which says so.
    std::fs::write(&conf, hub_file(&[&entry(&a1), &entry(&a3)], true)).unwrap();
    hup(&hub);
    assert!(wait_until(15, || token_revoked(&hub, "edge", &id2)));
    assert!(!token_revoked(&hub, "edge", &id1));
    assert!(!token_revoked(&hub, "edge", &id3));
    std::fs::write(&conf, hub_file(&[&entry(&a1)], true)).unwrap();
    let out = hub.cli_ok(&["config", "apply", conf.to_str().unwrap()]);
    assert!(token_revoked(&hub, "edge", &id3), "{out}");
    assert!(
        out.contains(&format!("edge: {id3}")) && out.contains("revoked"),
        "{out}"
    );
    assert!(!token_revoked(&hub, "edge", &id1));
    let export = hub.cli_ok(&["config", "export"]);
    assert!(
        export.contains(&id1) && !export.contains(&id2) && !export.contains(&id3),
        "{export}"
    );
    let (status, body) = support::curl(&[
        "-H",
        &format!("Authorization: Bearer {ADMIN}"),
        &format!("{}/api/v1/replications/other/tokens", hub.url),
    ]);
    assert_eq!(status, 200);
    let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        list.as_array().unwrap().iter().all(|t| t["revoked"] == false),
        "{list}"
    );

    // A token made through the API for a replication whose file lists its
    // tokens is not among them: said at once, with the entry to add (it
    // was said only at the next SIGHUP); added, prune keeps it.
    let out = hub.cli(&["replication", "token", "edge"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    let made = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let made_id = id(&made);
    let line = said
        .split("add ")
        .nth(1)
        .and_then(|r| r.split(" to that list").next())
        .unwrap_or_else(|| panic!("no entry to add: {said}"))
        .to_string();
    assert!(
        said.contains("accept_tokens") && said.contains("hub.toml") && line.contains(&made_id),
        "{said}"
    );
    std::fs::write(&conf, hub_file(&[&entry(&a1), &line], true)).unwrap();
    let out = hub.cli_ok(&["config", "apply", conf.to_str().unwrap()]);
    assert!(!token_revoked(&hub, "edge", &made_id), "{out}");
    // The other replication's file declares no token list: nothing said.
    let out = hub.cli(&["replication", "token", "other"]);
    assert!(out.status.success() && out.stderr.is_empty(), "{out:?}");
}

/// A relative `data_dir` written in the file is relative to the file's
/// directory, wherever the service is started from; one that held an
/// instance relative to the current directory (as before) is not
/// silently replaced by a new empty one.
#[test]
fn a_relative_data_dir_in_the_file_is_relative_to_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let conf_dir = tmp.path().join("conf");
    std::fs::create_dir(&conf_dir).unwrap();
    let conf = write(
        &conf_dir,
        "ferry.toml",
        &format!("data_dir = \"data\"\nlisten = \"127.0.0.1:0\"\n{FILES}"),
    );
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let mut child = Command::new(bin())
        .args(["serve", "--config"])
        .arg(&conf)
        .current_dir(&elsewhere)
        .env_remove("FERRY_DATA_DIR")
        .env_remove("FERRY_DATABASE_URL")
        .env_remove("FERRY_BLOB_STORE")
        .env("FERRY_ADMIN_KEY", ADMIN)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let made = wait_until(30, || conf_dir.join("data").join("ferry.db").exists());
    let _ = child.kill();
    let _ = child.wait();
    assert!(made, "no instance in conf/data");
    assert!(!elsewhere.join("data").exists());

    // An instance at the current directory's `data` (where it was read
    // before), none at the file's: refused, naming both.
    std::fs::remove_dir_all(conf_dir.join("data")).unwrap();
    std::fs::create_dir(elsewhere.join("data")).unwrap();
    std::fs::write(elsewhere.join("data").join("ferry.db"), b"").unwrap();
    let out = Command::new(bin())
        .args(["serve", "--config"])
        .arg(&conf)
        .current_dir(&elsewhere)
        .env_remove("FERRY_DATA_DIR")
        .env_remove("FERRY_DATABASE_URL")
        .env("FERRY_ADMIN_KEY", ADMIN)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("relative to the file's directory") && err.contains("absolute path"),
        "{err}"
    );
    assert!(!conf_dir.join("data").exists());
}

/// Whether `s` answers a request for `files/a.txt` with `body` within 5 s.
fn answers(s: &Server, body: &[u8]) -> bool {
    let (status, got) = support::curl(&["--max-time", "5", &s.asset_url("files", "a.txt")]);
    status == 200 && got == body
}

/// The file a running server re-reads on SIGHUP is read without waiting
/// and only so far: a FIFO, a device (`/dev/zero`) or a file past the
/// 1 MiB limit put in its place is refused, the running configuration
/// stays, the server answers all along and still stops on SIGTERM (a FIFO
/// froze it, SIGTERM included; `/dev/zero` grew it until the kernel
/// killed it). The same declarations in a file of normal size apply.
#[test]
fn a_fifo_a_device_or_a_huge_file_on_sighup_is_refused_while_serving_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let conf = write(tmp.path(), "ferry.toml", FILES);
    let mut s = Server::start_with(&[("FERRY_CONFIG", conf.to_str().unwrap())]);
    s.put_asset("files", "a.txt", b"one");
    let before = s.cli_ok(&["config", "export"]);
    let more = format!("{FILES}\n[[feeds]]\nname = \"more\"\ntype = \"assets\"\n");

    std::fs::remove_file(&conf).unwrap();
    assert!(Command::new("mkfifo").arg(&conf).status().unwrap().success());
    hup(&s);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        answers(&s, b"one"),
        "the server stopped answering after SIGHUP with a FIFO as its file"
    );
    assert_eq!(s.cli_ok(&["config", "export"]), before);

    std::fs::remove_file(&conf).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &conf).unwrap();
    hup(&s);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        answers(&s, b"one"),
        "the server stopped answering after SIGHUP with /dev/zero as its file"
    );
    assert_eq!(s.cli_ok(&["config", "export"]), before);

    // Valid TOML, padded with comments past the limit.
    std::fs::remove_file(&conf).unwrap();
    let pad = "# padding\n".repeat(120_000);
    std::fs::write(&conf, format!("{more}{pad}")).unwrap();
    hup(&s);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(answers(&s, b"one"));
    assert_eq!(s.cli_ok(&["config", "export"]), before);
    // The refusal says why, naming the file, when applied by hand too.
    let said = s.cli_fails(&["config", "apply", conf.to_str().unwrap()]);
    assert!(
        said.contains("ferry.toml") && said.contains("bytes allowed"),
        "{said}"
    );

    std::fs::write(&conf, &more).unwrap();
    hup(&s);
    assert!(
        wait_until(20, || s.cli_ok(&["config", "export"]).contains("name = \"more\"")),
        "the file of normal size was not applied on SIGHUP"
    );
    assert!(s.stop().success(), "SIGTERM must still stop the server");
}

/// `config export` gives each outgoing replication its own `token_env`,
/// also when two names map to the same variable ("x-y", "x.y"): applied
/// back, each keeps its own token (they swapped before).
#[test]
fn exported_token_variables_are_one_per_replication() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Server::start();
    hub.create_feed("files", "assets");
    hub.incoming("edge", &["files"], "push");
    let first = hub.sync_token("edge");
    let second = hub.sync_token("edge");
    assert_ne!(first, second);
    let spoke = Server::start();
    spoke.create_feed("files", "assets");
    spoke.outgoing("x-y", &["files"], &hub, &first, "pull", &["--interval", "3600"]);
    spoke.outgoing("x.y", &["files"], &hub, &second, "pull", &["--interval", "3600"]);
    let exported = spoke.cli_ok(&["config", "export"]);
    assert!(
        exported.contains(r#"token_env = "FERRY_TOKEN_X_Y""#)
            && exported.contains(r#"token_env = "FERRY_TOKEN_X_Y_2""#),
        "{exported}"
    );
    let file = write(tmp.path(), "exported.toml", &exported);
    let said = apply_with_env(
        &spoke,
        &file,
        &[("FERRY_TOKEN_X_Y", &first), ("FERRY_TOKEN_X_Y_2", &second)],
    );
    assert!(
        !said.contains("updated"),
        "applying the export changed something: {said}"
    );
    let list = spoke.cli_json(&["replication", "list", "--json"]);
    for (name, token) in [("x-y", &first), ("x.y", &second)] {
        let r = list
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap();
        let shown = r.to_string();
        assert!(
            shown.contains(&token[..20]),
            "{name} does not keep its token: {shown}"
        );
    }
}
