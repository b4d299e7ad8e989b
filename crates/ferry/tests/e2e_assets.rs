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
    assert_eq!(curl(&[&format!("{url}.copy")]).0, 404);
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
    let staging = s.data.join("blobs/staging");
    assert_eq!(
        std::fs::read_dir(&staging).unwrap().count(),
        0,
        "staging not cleaned"
    );
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
