//! The real binary with curl: assets, CLI, restart, kill -9 during upload.
#![allow(clippy::unwrap_used)]
mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use support::{ADMIN, Server, curl};

#[test]
fn feeds_assets_and_keys_through_cli_and_curl_survive_restart() {
    let mut s = Server::start();
    s.create_feed("files", "assets");
    let out = s.cli(&["feed", "create", "files", "--type", "assets"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("409") && err.contains("already exists") && err.lines().count() == 1,
        "{err}"
    );
    let listed: serde_json::Value = serde_json::from_str(&s.cli_ok(&["feed", "list", "--json"])).unwrap();
    assert_eq!(listed[0]["name"], "files");
    assert_eq!(listed[0]["type"], "assets");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("payload.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    let url = format!("{}/assets/files/releases/v1/payload.bin", s.url);
    let writer = s.key("uploader", "write");
    let auth = format!("Authorization: Bearer {writer}");
    let (st, _) = curl(&["-T", file.to_str().unwrap(), "-H", &auth, &url]);
    assert_eq!(st, 201);
    // Basic auth with any user and the key as password works for curl -u too.
    let (st, _) = curl(&[
        "-T",
        file.to_str().unwrap(),
        "-u",
        &format!("me:{writer}"),
        &format!("{url}.copy"),
    ]);
    assert_eq!(st, 201);
    let (st, body) = curl(&[&url]);
    assert_eq!((st, body == data), (200, true));
    let (st, body) = curl(&["-r", "100-199", &url]);
    assert_eq!((st, body.as_slice()), (206, &data[100..200]));

    // Unauthenticated and read-only writes are refused.
    let reader = s.key("reader", "read");
    assert_eq!(curl(&["-T", file.to_str().unwrap(), &format!("{url}.2")]).0, 401);
    assert_eq!(
        curl(&[
            "-T",
            file.to_str().unwrap(),
            "-H",
            &format!("Authorization: Bearer {reader}"),
            &format!("{url}.2")
        ])
        .0,
        403
    );
    assert_eq!(
        curl(&[
            "--path-as-is",
            "-T",
            file.to_str().unwrap(),
            "-H",
            &auth,
            &format!("{}/assets/files/../x", s.url)
        ])
        .0,
        400
    );

    s.restart();
    let (st, body) = curl(&[&url]);
    assert_eq!((st, body == data), (200, true), "asset lost across restart");
    let (st, _) = curl(&["-X", "DELETE", "-H", &auth, &url]);
    assert_eq!(st, 204);
    assert_eq!(curl(&[&url]).0, 404);
    s.cli_ok(&["feed", "delete", "files"]);
    assert_eq!(curl(&["-H", &auth, &format!("{url}.copy")]).0, 404);
    // Without a key, a feed that is not public (here: gone) asks for one.
    assert_eq!(curl(&[&format!("{url}.copy")]).0, 401);
    assert!(s.stop().success(), "SIGTERM must exit 0");
}

#[test]
fn first_start_creates_and_prints_admin_key_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let start = || {
        let mut child = Command::new(support::bin())
            .args([
                "serve",
                "--data-dir",
                data.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
            ])
            .env_remove("FERRY_ADMIN_KEY")
            .env("FERRY_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
        let mut seen = Vec::new();
        for line in lines.by_ref() {
            let line = line.unwrap();
            let done = line.starts_with("listening on ");
            seen.push(line);
            if done {
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        seen
    };
    let first = start();
    let key = std::fs::read_to_string(data.join("admin.key"))
        .unwrap()
        .trim()
        .to_string();
    assert!(
        first.iter().any(|l| l.contains(&key)),
        "key not printed: {first:?}"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(data.join("admin.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let second = start();
    assert!(
        !second.iter().any(|l| l.contains(&key)),
        "key printed again: {second:?}"
    );
}

#[test]
fn kill_during_upload_leaves_no_partial_item() {
    let mut s = Server::start();
    s.create_feed("files", "assets");
    let url = format!("{}/assets/files/big.bin", s.url);
    // Stream a body slowly through curl's stdin, then kill the server mid-way.
    let mut curl_up = Command::new("curl")
        .args([
            "-s",
            "-T",
            "-",
            "-H",
            &format!("Authorization: Bearer {ADMIN}"),
            &url,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = curl_up.stdin.take().unwrap();
    let chunk = vec![42u8; 1 << 20];
    for _ in 0..8 {
        stdin.write_all(&chunk).unwrap();
    }
    stdin.flush().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    s.kill();
    drop(stdin);
    let _ = curl_up.wait();

    s.restart();
    assert_eq!(curl(&[&url]).0, 404, "a partial upload became visible");
    // (Nodes sharing a blob folder keep a directory and a liveness lock
    // each under staging/: count the uploads only.)
    let staging = s.staging_dir();
    assert_eq!(support::staged_files(&staging), 0, "staging not cleaned");
    // The feed works normally afterwards.
    let (st, _) = curl(&[
        "-X",
        "PUT",
        "--data-binary",
        "fine",
        "-H",
        &format!("Authorization: Bearer {ADMIN}"),
        &url,
    ]);
    assert_eq!(st, 201);
    assert_eq!(curl(&[&url]).1, b"fine");
}

#[test]
fn config_file_declares_feeds_and_env_overrides_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ferry.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\nlisten = \"127.0.0.1:1\"\nmax_upload_bytes = 10\n\n[[feeds]]\nname = \"declared\"\ntype = \"assets\"\n\n[[feeds]]\nname = \"hidden\"\ntype = \"pypi\"\nprivate = true\n",
            dir.path().join("data")
        ),
    )
    .unwrap();
    // The file's listen address is overridden by FERRY_LISTEN.
    let mut child = Command::new(support::bin())
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .env("FERRY_LISTEN", "127.0.0.1:0")
        .env("FERRY_ADMIN_KEY", ADMIN)
        .env("FERRY_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let url = lines
        .find_map(|l| {
            l.ok()
                .and_then(|l| l.strip_prefix("listening on ").map(str::to_string))
        })
        .unwrap();
    let out = Command::new(support::bin())
        .args(["feed", "list", "--json", "--url", &url, "--api-key", ADMIN])
        .output()
        .unwrap();
    let feeds: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<(&str, &str, bool)> = feeds
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["name"].as_str().unwrap(),
                f["type"].as_str().unwrap(),
                f["private"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        names,
        vec![("declared", "assets", false), ("hidden", "pypi", true)]
    );
    // max_upload_bytes from the file applies.
    let (st, _) = curl(&[
        "-X",
        "PUT",
        "--data-binary",
        "more than ten bytes",
        "-H",
        &format!("Authorization: Bearer {ADMIN}"),
        &format!("{url}/assets/declared/f"),
    ]);
    assert_eq!(st, 413);
    let _ = child.kill();
    let _ = child.wait();
    // A typo in the file is an error, not silently ignored.
    std::fs::write(&cfg, "lisen = \"x\"\n").unwrap();
    let out = Command::new(support::bin())
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lisen"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `curl -sD -`: (status, headers lower-cased, body).
fn curl_with_headers(args: &[&str]) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let head = dir.path().join("headers");
    let (status, body) = curl(&[&["-D", head.to_str().unwrap()], args].concat());
    let text = std::fs::read_to_string(&head).unwrap();
    let headers = text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// `curl -r N-` resuming with `If-Range: <old ETag>` after the file was
/// replaced gets the whole new file (200), never old and new bytes
/// spliced; with the current ETag it resumes (206).
#[test]
fn resuming_with_an_old_etag_after_a_replacement_gets_the_whole_new_file() {
    let s = Server::start();
    s.create_feed("files", "assets");
    let old: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let new: Vec<u8> = (0..200_000u32).map(|i| (i % 13) as u8).collect();
    s.put_asset("files", "dl/file.bin", &old);
    let url = s.asset_url("files", "dl/file.bin");
    let (st, headers, part) = curl_with_headers(&["-r", "0-99999", &url]);
    assert_eq!((st, part.as_slice()), (206, &old[..100_000]));
    let old_tag = header(&headers, "etag").unwrap().to_string();

    s.put_asset("files", "dl/file.bin", &new);
    let if_range = format!("If-Range: {old_tag}");
    let (st, headers, body) = curl_with_headers(&["-r", "100000-", "-H", &if_range, &url]);
    assert_eq!(st, 200, "an old validator must get the whole representation");
    assert!(body == new, "the body is the whole new file");
    assert_eq!(header(&headers, "content-range"), None);
    let new_tag = header(&headers, "etag").unwrap().to_string();
    assert_ne!(new_tag, old_tag);

    let if_range = format!("If-Range: {new_tag}");
    let (st, body) = curl(&["-r", "100000-", "-H", &if_range, &url]);
    assert_eq!((st, body.as_slice()), (206, &new[100_000..]));
}

/// An uploaded HTML page comes back as a download that cannot run:
/// octet-stream, attachment, nosniff, a sandboxing CSP.
#[test]
fn uploaded_html_is_served_as_an_attachment_that_cannot_run() {
    let s = Server::start();
    s.create_feed("files", "assets");
    let page = b"<html><script>alert(document.cookie)</script></html>";
    let auth = format!("Authorization: Bearer {ADMIN}");
    let url = s.asset_url("files", "site/index.html");
    let (st, _) = support::curl_stdin(
        &["-T", "-", "-H", &auth, "-H", "Content-Type: text/html", &url],
        page,
    );
    assert_eq!(st, 201);
    let (st, headers, body) = curl_with_headers(&[&url]);
    assert_eq!((st, body.as_slice()), (200, page.as_slice()));
    assert_eq!(header(&headers, "content-type"), Some("application/octet-stream"));
    assert_eq!(
        header(&headers, "content-disposition"),
        Some("attachment; filename=\"index.html\"")
    );
    assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));
    assert_eq!(
        header(&headers, "content-security-policy"),
        Some("default-src 'none'; sandbox")
    );
    let (_, headers, _) = curl_with_headers(&[&format!("{}/assets/files/site/", s.url)]);
    assert_eq!(
        header(&headers, "content-security-policy"),
        Some("default-src 'none'; sandbox")
    );
}

/// A client that sends half its upload and disconnects is logged as a
/// client event (WARN, naming the feed and the client's address), not as
/// an ERROR, and nothing is stored.
#[test]
fn a_client_that_disconnects_mid_upload_is_a_warning_naming_feed_and_client() {
    use std::io::{BufRead, BufReader};
    use std::net::TcpStream;
    use std::sync::{Arc, Mutex};

    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(support::bin())
        .args(["serve", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--listen", "127.0.0.1:0"])
        .env("FERRY_ADMIN_KEY", ADMIN)
        .env("FERRY_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = stderr.clone();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    let url = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("listening on ").map(str::to_string))
        .expect("ferry did not report listening");
    let addr = url.trim_start_matches("http://").to_string();
    let cli = |args: &[&str]| {
        let out = Command::new(support::bin())
            .args(args)
            .env("FERRY_URL", &url)
            .env("FERRY_API_KEY", ADMIN)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    cli(&["feed", "create", "uploads", "--type", "assets"]);

    // Half of a 1 MB body, then the connection is gone.
    let mut tcp = TcpStream::connect(&addr).unwrap();
    let client = tcp.local_addr().unwrap().to_string();
    write!(
        tcp,
        "PUT /assets/uploads/half.bin HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ADMIN}\r\n\
         Content-Length: 1000000\r\n\r\n"
    )
    .unwrap();
    tcp.write_all(&[9u8; 500_000]).unwrap();
    tcp.flush().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    drop(tcp);

    let warned = |lines: &[String]| {
        lines
            .iter()
            .any(|l| l.contains("WARN") && l.contains("uploads") && l.contains(&client))
    };
    support::wait_until(20, || {
        let lines = stderr.lock().unwrap();
        warned(&lines) || lines.iter().any(|l| l.contains("ERROR"))
    });
    let lines = stderr.lock().unwrap().clone();
    assert!(
        warned(&lines),
        "no WARN naming the feed and {client}:\n{}",
        lines.join("\n")
    );
    assert!(
        !lines.iter().any(|l| l.contains("ERROR")),
        "a client going away is not an error:\n{}",
        lines.join("\n")
    );
    assert_eq!(curl(&[&format!("{url}/assets/uploads/half.bin")]).0, 404);
    let _ = child.kill();
    let _ = child.wait();
}

/// A server started by hand on `data` (`FERRY_ADMIN_KEY` as given, or
/// unset), up to its "listening on" line: the child, its URL and what it
/// printed before.
fn serve_by_hand(
    data: &std::path::Path,
    admin_key: Option<&str>,
) -> (std::process::Child, String, Vec<String>) {
    let mut cmd = Command::new(support::bin());
    cmd.args([
        "serve",
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ])
    .env("FERRY_LOG", "warn")
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    match admin_key {
        Some(k) => cmd.env("FERRY_ADMIN_KEY", k),
        None => cmd.env_remove("FERRY_ADMIN_KEY"),
    };
    let mut child = cmd.spawn().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(url) = line.strip_prefix("listening on ") {
            let url = url.trim().to_owned();
            // Keep draining stdout so the server never blocks on it.
            std::thread::spawn(move || for _ in lines {});
            return (child, url, seen);
        }
        seen.push(line);
    }
    let _ = child.kill();
    let status = child.wait().unwrap();
    panic!("the server stopped ({status}) before listening: {seen:?}");
}

fn keys_status(url: &str, key: &str) -> u16 {
    support::curl(&[
        "-H",
        &format!("Authorization: Bearer {key}"),
        &format!("{url}/api/v1/keys"),
    ])
    .0
}

/// A revoked admin key never comes back: deleting it removes the file it
/// was kept in, a restart does not install it again while other admin
/// keys remain, and an instance left with no admin key gets a new one
/// (not the revoked one). A short `FERRY_ADMIN_KEY` is refused.
#[test]
fn a_deleted_admin_key_stays_deleted_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let (mut child, url, _) = serve_by_hand(&data, None);
    let first = std::fs::read_to_string(data.join("admin.key"))
        .unwrap()
        .trim()
        .to_owned();
    let run = |url: &str, key: &str, args: &[&str]| {
        let out = Command::new(support::bin())
            .args(args)
            .args(["--url", url, "--api-key", key])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let second = run(&url, &first, &["key", "create", "ops", "--permission", "admin"]);
    let second = second.split_whitespace().last().unwrap().to_owned();
    assert_eq!(keys_status(&url, &second), 200, "new admin key {second:?}");
    run(&url, &second, &["key", "delete", "admin"]);
    assert_eq!(keys_status(&url, &first), 401);
    assert!(!data.join("admin.key").exists(), "the revoked key's file is left");
    child.kill().unwrap();
    child.wait().unwrap();

    let (mut child, url, printed) = serve_by_hand(&data, None);
    assert_eq!(keys_status(&url, &first), 401, "the revoked key came back");
    assert_eq!(keys_status(&url, &second), 200);
    assert!(!data.join("admin.key").exists(), "{printed:?}");
    // A read key takes the name; then the last admin key deletes itself:
    // locked out until a restart, which makes a new key rather than
    // reviving either, and says that the read key named admin is replaced.
    let reader = run(&url, &second, &["key", "create", "admin", "--permission", "read"]);
    let reader = reader.split_whitespace().last().unwrap().to_owned();
    run(&url, &second, &["key", "delete", "ops"]);
    child.kill().unwrap();
    child.wait().unwrap();
    let (mut child, url, printed) = serve_by_hand(&data, None);
    let third = std::fs::read_to_string(data.join("admin.key"))
        .unwrap()
        .trim()
        .to_owned();
    assert!(third != first && third != second);
    assert!(printed.iter().any(|l| l.contains(&third)), "{printed:?}");
    assert!(
        printed
            .iter()
            .any(|l| l.contains("the key named admin (read permission) was replaced")),
        "{printed:?}"
    );
    assert_eq!(keys_status(&url, &reader), 401);
    assert_eq!(keys_status(&url, &third), 200);
    assert_eq!(keys_status(&url, &first), 401);
    assert_eq!(keys_status(&url, &second), 401);
    child.kill().unwrap();
    child.wait().unwrap();

    let out = Command::new(support::bin())
        .args([
            "serve",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .env("FERRY_ADMIN_KEY", "abc")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("FERRY_ADMIN_KEY must be at least 12 characters"),
        "{err}"
    );
    // Refused before the instance is opened: nothing says it was.
    assert!(!err.contains("instance opened"), "{err}");
    // On an empty directory a refused key makes no instance at all.
    let fresh = dir.path().join("fresh");
    let out = Command::new(support::bin())
        .args([
            "serve",
            "--data-dir",
            fresh.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .env("FERRY_ADMIN_KEY", "short key")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        !fresh.join("ferry.db").exists(),
        "a refused start made a database"
    );
}

/// One `ferry serve` per data directory: a second one on the same
/// directory is refused with the reason and touches nothing; a start on a
/// port in use is refused before it makes an instance (no database, no
/// admin key printed or saved).
#[test]
fn a_data_directory_in_use_and_a_busy_port_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let (mut first, url, _) = serve_by_hand(&data, None);
    let out = Command::new(support::bin())
        .args([
            "serve",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .env_remove("FERRY_ADMIN_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is in use by another `ferry serve`"), "{err}");
    let key = std::fs::read_to_string(data.join("admin.key")).unwrap();
    assert_eq!(keys_status(&url, key.trim()), 200);

    let port = url.rsplit(':').next().unwrap();
    let other = dir.path().join("other");
    let out = Command::new(support::bin())
        .args([
            "serve",
            "--data-dir",
            other.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env_remove("FERRY_ADMIN_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("binding"), "{said}");
    assert!(!said.contains("admin API key"), "{said}");
    assert!(!other.join("ferry.db").exists() && !other.join("admin.key").exists());
    first.kill().unwrap();
    first.wait().unwrap();
}

/// A restart with the same admin key leaves the key as it is: its
/// creation time is when it was made, not the last start.
#[test]
fn the_admin_key_is_not_remade_at_every_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let key = "a-chosen-admin-key-0123";
    let created = |url: &str| -> serde_json::Value {
        let (st, body) = support::curl(&[
            "-H",
            &format!("Authorization: Bearer {key}"),
            &format!("{url}/api/v1/keys"),
        ]);
        assert_eq!(st, 200);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .find(|k| k["name"] == "admin")
            .unwrap()["created_at"]
            .clone()
    };
    let mut times = Vec::new();
    for env in [Some(key), Some(key), None] {
        if env.is_none() {
            // The same key from the file this time.
            std::fs::write(data.join("admin.key"), key).unwrap();
        }
        let (mut child, url, _) = serve_by_hand(&data, env);
        times.push(created(&url));
        child.kill().unwrap();
        child.wait().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(times[0].is_number() || times[0].is_string(), "{times:?}");
    assert!(times.iter().all(|t| *t == times[0]), "{times:?}");
}
