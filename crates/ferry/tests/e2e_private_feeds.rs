//! The real binary with its CLI and curl: keys are scoped to feeds by
//! identity, private feeds answer outsiders as missing ones do, and
//! `/metrics` needs a key (issue 8).
#![allow(clippy::unwrap_used)]
mod support;

use support::{ADMIN, Server, curl};

/// `curl` with a bearer key (or none); (status, body, headers).
fn get(url: &str, key: Option<&str>) -> (u16, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let headers = dir.path().join("headers");
    let headers_arg = headers.to_str().unwrap();
    let auth = key.map(|k| format!("Authorization: Bearer {k}"));
    let mut args = vec!["-D", headers_arg];
    if let Some(a) = &auth {
        args.extend(["-H", a.as_str()]);
    }
    args.push(url);
    let (status, body) = curl(&args);
    let headers = std::fs::read_to_string(&headers).unwrap().to_ascii_lowercase();
    (status, String::from_utf8_lossy(&body).into_owned(), headers)
}

#[test]
fn keys_follow_feeds_and_private_feeds_stay_hidden() {
    let s = Server::start();
    s.cli_ok(&["feed", "create", "team", "--type", "assets", "--private"]);
    s.put_asset("team", "old.txt", b"old");

    // A key for a feed that does not exist is refused, naming the feed.
    let err = s.cli_fails(&["key", "create", "early", "--permission", "read", "--feed", "nope"]);
    assert!(
        err.contains("400") && err.contains("feed nope does not exist"),
        "{err}"
    );
    let out = s.cli(&[
        "key",
        "create",
        "team-ci",
        "--permission",
        "read",
        "--feed",
        "team",
    ]);
    assert!(out.status.success());
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(key.starts_with("ferry_"), "stdout is the secret alone: {key}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("read permission on feed(s) team"), "{said}");
    assert_eq!(get(&s.asset_url("team", "old.txt"), Some(&key)).1, "old");

    // Anonymous: a private feed and a missing one both ask for a key.
    let (private, _, private_headers) = get(&s.asset_url("team", "old.txt"), None);
    let (missing, _, missing_headers) = get(&s.asset_url("ghost", "old.txt"), None);
    assert_eq!((private, missing), (401, 401));
    for h in [private_headers, missing_headers] {
        assert!(h.contains("www-authenticate: basic"), "{h}");
    }

    // Deleted and created again, the feed is another one: not the key's.
    s.cli_ok(&["feed", "delete", "team"]);
    s.cli_ok(&["feed", "create", "team", "--type", "assets", "--private"]);
    s.put_asset("team", "new.txt", b"new");
    let (status, body, _) = get(&s.asset_url("team", "new.txt"), Some(&key));
    assert_eq!(status, 404, "{body}");
    let (_, ghost, _) = get(&s.asset_url("ghost", "new.txt"), Some(&key));
    assert_eq!(body.replace("team", "ghost"), ghost);
    let list = s.cli_ok(&["key", "list"]);
    assert!(
        list.lines().any(|l| l.starts_with("team-ci\tread\t(none)")),
        "{list}"
    );

    // Metrics name private feeds: a key is needed.
    let metrics = format!("{}/metrics", s.url);
    assert_eq!(get(&metrics, None).0, 401);
    assert_eq!(get(&metrics, Some(&key)).0, 403);
    let (status, body, _) = get(&metrics, Some(ADMIN));
    assert_eq!(status, 200);
    assert!(body.contains("ferry_http_requests_total"), "{body}");
}

/// `/metrics` names private feeds and replications: it needs a key unless
/// the configuration makes it public.
#[test]
fn metrics_need_a_key_unless_configured_public() {
    let s = Server::start();
    let url = format!("{}/metrics", s.url);
    assert_eq!(curl(&[&url]).0, 401);
    assert_eq!(
        curl(&["-H", &format!("Authorization: Bearer {ADMIN}"), &url]).0,
        200
    );
    let public = Server::start_with(&[("FERRY_METRICS_PUBLIC", "true")]);
    assert_eq!(curl(&[&format!("{}/metrics", public.url)]).0, 200);
    let bad = std::process::Command::new(support::bin())
        .args([
            "serve",
            "--data-dir",
            "/nonexistent-ferry-test",
            "--listen",
            "127.0.0.1:0",
        ])
        .env("FERRY_METRICS_PUBLIC", "maybe")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("FERRY_METRICS_PUBLIC"));
}
