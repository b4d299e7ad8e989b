//! Replication end to end: real `ferry` instances on loopback, configured
//! with the CLI, content moved through assets feeds with curl.
//! Hub and spokes, a multi-hub chain, refused configurations, executions
//! and the overview. (Mirrors: e2e_replication_mirror.rs; the delete guard:
//! e2e_replication_guard.rs; crashes during transfers: e2e_replication_resume.rs.)
#![allow(clippy::unwrap_used)]
mod support;

use serde_json::{Value, json};
use support::{ADMIN, Server, curl, wait_until};

/// A generous deadline for a change to travel (long polling makes it ~1 s).
const SYNC: u64 = 30;

fn repl_api(s: &Server, path: &str) -> String {
    format!("{}/api/replication/v1{path}", s.url)
}

/// The id part of a sync token `fst_<id>_<secret>`.
fn token_id(token: &str) -> &str {
    &token["fst_".len().."fst_".len() + 16]
}

/// Content that differs per name, large enough to take a few chunks.
fn payload(name: &str, len: usize) -> Vec<u8> {
    let seed = name
        .bytes()
        .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) ^ seed).rotate_left(i % 13) as u8)
        .collect()
}

fn tokens_of(s: &Server, name: &str) -> Vec<Value> {
    let (st, body) = curl(&[
        "-H",
        &format!("Authorization: Bearer {ADMIN}"),
        &format!("{}/api/v1/replications/{name}/tokens", s.url),
    ]);
    assert_eq!(st, 200);
    serde_json::from_slice::<Value>(&body)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn hub_and_spokes_receive_content_replacements_and_deletions_and_tokens_only_read() {
    let hub = Server::start();
    hub.create_feed("files", "assets");
    hub.cli_ok(&[
        "replication",
        "create",
        "edge",
        "--incoming",
        "--mode",
        "push",
        "--feed",
        "files",
    ]);
    // Content that exists before any spoke is configured arrives too.
    let readme = b"read me first".to_vec();
    hub.put_asset("files", "docs/readme.txt", &readme);

    // Three spokes, each with its own token; the third names its feed differently.
    let mut spokes: Vec<(Server, &str, String)> = Vec::new();
    for local in ["files", "files", "edge-files"] {
        let s = Server::start();
        s.create_feed(local, "assets");
        let token = hub.sync_token("edge");
        s.outgoing(
            "from-hub",
            &[&format!("{local}=files")],
            &hub,
            &token,
            "pull",
            &[],
        );
        spokes.push((s, local, token));
    }
    for (s, local, _) in &spokes {
        assert!(
            wait_until(SYNC, || s.serves(local, "docs/readme.txt", &readme)),
            "{} lacks existing content",
            s.url
        );
    }

    // New content, a replacement and a deletion reach every spoke.
    let tool = payload("tool-1.0", 700_000);
    let notes_v1 = b"notes, first edition".to_vec();
    hub.put_asset("files", "tools/tool-1.0.tar.gz", &tool);
    hub.put_asset("files", "notes.txt", &notes_v1);
    for (s, local, _) in &spokes {
        assert!(
            wait_until(SYNC, || s.serves(local, "tools/tool-1.0.tar.gz", &tool)),
            "{} lacks the tool",
            s.url
        );
        assert!(
            wait_until(SYNC, || s.serves(local, "notes.txt", &notes_v1)),
            "{} lacks notes",
            s.url
        );
    }
    let notes_v2 = b"notes, second edition, replaced on the hub".to_vec();
    hub.put_asset("files", "notes.txt", &notes_v2);
    hub.delete_asset("files", "docs/readme.txt");
    for (s, local, _) in &spokes {
        assert!(
            wait_until(SYNC, || s.serves(local, "notes.txt", &notes_v2)),
            "{} kept the old notes",
            s.url
        );
        assert!(
            wait_until(SYNC, || s.lacks(local, "docs/readme.txt")),
            "{} kept a deleted asset",
            s.url
        );
        for dir in ["", "tools/"] {
            assert_eq!(
                s.asset_digests(local, dir),
                hub.asset_digests("files", dir),
                "{} differs in /{dir}",
                s.url
            );
        }
        s.cli_ok(&["replication", "verify", "from-hub"]);
    }

    // A fourth spoke: the hub's configuration, feeds and content stay as they
    // were; only the token generated for the new spoke is added.
    let list_before = hub.cli_json(&["replication", "list", "--json"]);
    let feeds_before = hub.cli_json(&["feed", "list", "--json"]);
    let content_before = (
        hub.asset_digests("files", ""),
        hub.asset_digests("files", "tools/"),
    );
    let tokens_before = tokens_of(&hub, "edge");
    assert_eq!(tokens_before.len(), 3);
    let fourth = Server::start();
    fourth.create_feed("files", "assets");
    let token4 = hub.sync_token("edge");
    fourth.outgoing("from-hub", &["files"], &hub, &token4, "pull", &[]);
    assert!(wait_until(SYNC, || fourth.serves(
        "files",
        "notes.txt",
        &notes_v2
    )));
    assert!(wait_until(SYNC, || fourth.serves(
        "files",
        "tools/tool-1.0.tar.gz",
        &tool
    )));
    assert!(fourth.lacks("files", "docs/readme.txt"));
    fourth.cli_ok(&["replication", "run", "from-hub", "--wait"]);
    assert_eq!(
        hub.cli_json(&["replication", "list", "--json"]),
        list_before,
        "adding a spoke changed the hub"
    );
    assert_eq!(hub.cli_json(&["feed", "list", "--json"]), feeds_before);
    assert_eq!(
        (
            hub.asset_digests("files", ""),
            hub.asset_digests("files", "tools/")
        ),
        content_before
    );
    let tokens_after = tokens_of(&hub, "edge");
    let (new, old): (Vec<Value>, Vec<Value>) = tokens_after
        .into_iter()
        .partition(|t| t["id"] == token_id(&token4));
    assert_eq!(new.len(), 1, "the new spoke's token is listed");
    let mut old_sorted = old.clone();
    old_sorted.sort_by_key(|t| t["id"].to_string());
    let mut before_sorted = tokens_before.clone();
    before_sorted.sort_by_key(|t| t["id"].to_string());
    assert_eq!(old_sorted, before_sorted, "existing tokens changed");

    // A spoke's token reads (that is what spokes do) but never writes.
    let bearer = format!("Authorization: Bearer {}", spokes[0].2);
    let (st, body) = curl(&["-H", &bearer, &repl_api(&hub, "/feeds/files/entries")]);
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    let entries: Value = serde_json::from_slice(&body).unwrap();
    let mut notes_entry = entries["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"] == "notes.txt")
        .expect("notes.txt among the hub's entries")
        .clone();
    let post = |path: &str, body: &Value| {
        let (st, resp) = curl(&[
            "-X",
            "POST",
            "-H",
            &bearer,
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &body.to_string(),
            &repl_api(&hub, path),
        ]);
        (st, String::from_utf8_lossy(&resp).to_string())
    };
    let (st, msg) = post("/feeds/files/apply", &json!({ "entries": [] }));
    assert_eq!(st, 403, "an empty write batch with a spoke's token: {msg}");
    notes_entry["deleted"] = json!(true);
    let (st, msg) = post("/feeds/files/apply", &json!({ "entries": [notes_entry] }));
    assert_eq!(st, 403, "a deletion with a spoke's token: {msg}");
    assert!(msg.contains("push"), "the refusal names the hub's mode: {msg}");
    let digest = hub.asset_digests("files", "")["notes.txt"].clone();
    let (st, msg) = post("/blobs/missing", &json!({ "digests": [digest] }));
    assert_eq!(st, 403, "{msg}");
    let (st, _) = curl(&[
        "-X",
        "PUT",
        "-H",
        &bearer,
        "--data-binary",
        "not the notes",
        &repl_api(&hub, &format!("/blobs/{digest}")),
    ]);
    assert_eq!(st, 403);
    assert!(
        hub.serves("files", "notes.txt", &notes_v2),
        "the hub's item changed"
    );

    // Wrong, unknown and missing tokens are not accepted at all.
    let wrong_secret = format!("fst_{}_{}", token_id(&spokes[0].2), "0".repeat(64));
    for bad in [wrong_secret.as_str(), "fst_0123456789abcdef_0123", "not-a-token"] {
        let (st, _) = curl(&[
            "-H",
            &format!("Authorization: Bearer {bad}"),
            &repl_api(&hub, "/feeds/files/entries"),
        ]);
        assert_eq!(st, 401, "token {bad}");
    }
    assert_eq!(curl(&[&repl_api(&hub, "/feeds/files/entries")]).0, 401);

    // Revoking the third spoke's token cuts it off, and only it.
    let (third, third_feed, third_token) = &spokes[2];
    let id = token_id(third_token);
    hub.cli_ok(&["replication", "revoke", "edge", id]);
    let err = third.cli_fails(&["replication", "run", "from-hub", "--wait"]);
    assert!(err.contains("token"), "the failure names the token: {err}");
    let later = b"published after the revocation".to_vec();
    hub.put_asset("files", "later.txt", &later);
    for (s, local, _) in &spokes[..2] {
        assert!(
            wait_until(SYNC, || s.serves(local, "later.txt", &later)),
            "{} was cut off too",
            s.url
        );
    }
    assert!(wait_until(SYNC, || fourth.serves("files", "later.txt", &later)));
    third.cli_fails(&["replication", "run", "from-hub", "--wait"]);
    assert!(
        third.lacks(third_feed, "later.txt"),
        "a revoked token still pulled content"
    );
    let overview = third.cli_json(&["replication", "list", "--json"]);
    assert_eq!(overview[0]["status"]["last_outcome"], "failed");
    assert!(
        overview[0]["status"]["last_error"]
            .as_str()
            .unwrap()
            .contains("token"),
        "{overview}"
    );
    let log = hub.cli_ok(&["replication", "log"]);
    assert!(
        log.contains(id),
        "the hub's replication log names the refused token: {log}"
    );
    let revoked: Vec<Value> = tokens_of(&hub, "edge")
        .into_iter()
        .filter(|t| t["revoked"] == true)
        .collect();
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0]["id"], id);
}

#[test]
fn multi_hub_chain_carries_publishes_and_deletions_to_the_secondary_hubs_spokes() {
    let main = Server::start();
    main.create_feed("files", "assets");
    let to_secondary = main.incoming("regional", &["files"], "push");

    // The secondary hub pulls from the main hub and serves its own spokes, on one feed.
    let secondary = Server::start();
    secondary.create_feed("files", "assets");
    secondary.outgoing("from-main", &["files"], &main, &to_secondary, "pull", &[]);
    let to_spoke = secondary.incoming("shops", &["files"], "push");

    let spoke = Server::start();
    spoke.create_feed("files", "assets");
    spoke.outgoing("from-regional", &["files"], &secondary, &to_spoke, "pull", &[]);

    let app = payload("app-2.0", 400_000);
    main.put_asset("files", "release/app-2.0.bin", &app);
    main.put_asset("files", "release/CHANGELOG", b"2.0: everything");
    assert!(
        wait_until(SYNC, || spoke.serves("files", "release/app-2.0.bin", &app)),
        "publish did not reach the spoke"
    );
    assert!(wait_until(SYNC, || spoke.serves(
        "files",
        "release/CHANGELOG",
        b"2.0: everything"
    )));
    assert!(secondary.serves("files", "release/app-2.0.bin", &app));

    main.delete_asset("files", "release/app-2.0.bin");
    main.put_asset("files", "release/CHANGELOG", b"2.0 withdrawn");
    assert!(
        wait_until(SYNC, || spoke.lacks("files", "release/app-2.0.bin")),
        "deletion did not reach the spoke"
    );
    assert!(wait_until(SYNC, || spoke.serves(
        "files",
        "release/CHANGELOG",
        b"2.0 withdrawn"
    )));
    assert!(secondary.lacks("files", "release/app-2.0.bin"));
    assert_eq!(
        spoke.asset_digests("files", "release/"),
        main.asset_digests("files", "release/")
    );
    assert!(wait_until(SYNC, || secondary.verified("from-main")
        && spoke.verified("from-regional")));
}

#[test]
fn impossible_configurations_are_refused_with_a_reason() {
    // Replication to the same instance, even to another feed of it.
    let a = Server::start();
    a.create_feed("files", "assets");
    a.create_feed("copy", "assets");
    let own = a.incoming("loop-in", &["files"], "pull");
    let err = a.cli_fails(&[
        "replication",
        "create",
        "loop-out",
        "--feed",
        "copy=files",
        "--outgoing",
        &a.url,
        "--token",
        &own,
        "--mode",
        "push",
    ]);
    assert!(err.contains("same instance"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line of reason: {err}");
    let names: Vec<Value> = a
        .cli_json(&["replication", "list", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("loop-in")], "the refused replication was kept");
    // Nor is the instance listed as a peer of itself.
    let peers = a.cli_json(&["replication", "peers", "loop-in", "--json"]);
    assert_eq!(peers, json!([]), "the instance lists itself as its peer");

    let hub = Server::start();
    hub.create_feed("files", "assets");
    let token = hub.incoming("edge", &["files"], "push");
    let spoke = Server::start();
    spoke.create_feed("files", "assets");
    spoke.create_feed("pkgs", "npm");

    // Mode mismatch: the message names both settings and the fix.
    let create = |name: &str, feed: &str, mode: &str| {
        spoke.cli(&[
            "replication",
            "create",
            name,
            "--feed",
            feed,
            "--outgoing",
            &hub.url,
            "--token",
            &token,
            "--mode",
            mode,
        ])
    };
    let out = create("from-hub", "files", "mirror");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        err.contains("mirror") && err.contains("push"),
        "names both modes: {err}"
    );
    assert!(
        err.contains("set the outgoing side to pull"),
        "names the fix: {err}"
    );
    let out = create("from-hub", "files", "push");
    assert!(!out.status.success(), "push against push must be refused");
    // Two equal modes read as a mismatch only with what pairs with what.
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        err.contains("which pairs with pull on the outgoing side"),
        "{err}"
    );

    // Feed type mismatch.
    let out = create("typed", "pkgs=files", "pull");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        err.contains("type") && err.contains("npm") && err.contains("assets"),
        "{err}"
    );
    // Said from the side the user stands on: the hub is "the incoming
    // instance", not "here".
    assert!(
        err.contains("on the incoming instance") && !err.contains(" here"),
        "{err}"
    );

    // A feed the hub's replication does not carry.
    spoke.create_feed("other", "assets");
    let out = create("other", "other", "pull");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("other") && err.contains("not part of"), "{err}");

    // Nothing refused was kept, and the fitting configuration is accepted.
    assert_eq!(spoke.cli_json(&["replication", "list", "--json"]), json!([]));
    hub.put_asset("files", "ok.txt", b"fits");
    assert!(create("from-hub", "files", "pull").status.success());
    assert!(wait_until(SYNC, || spoke.serves("files", "ok.txt", b"fits")));
}

/// `date -u` formatted like the server's timestamps (to the second), `secs`
/// from now; such strings order like the times they name.
fn utc_in(secs: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let out = support::run_ok(std::process::Command::new("date").args([
        "-u",
        "-d",
        &format!("@{}", now + secs),
        "+%Y-%m-%dT%H:%M:%S",
    ]));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn executions_and_overview_show_runs_counts_logs_lag_and_next_run() {
    let mut hub = Server::start();
    hub.create_feed("files", "assets");
    let token = hub.incoming("edge", &["files"], "push");
    hub.cli_ok(&["replication", "log", "--level", "debug"]);
    let first: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| {
            (
                format!("batch1/f{i}.bin"),
                payload(&format!("one{i}"), 10_000 + i * 1000),
            )
        })
        .collect();
    for (p, b) in &first {
        hub.put_asset("files", p, b);
    }
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
    for (p, b) in &first {
        assert!(wait_until(SYNC, || spoke.serves("files", p, b)));
    }
    let manual = spoke.cli_ok(&["replication", "run", "from-hub", "--wait"]);
    assert!(manual.contains("succeeded"), "{manual}");
    // A pull shows what it pulled, never a pushed figure.
    assert!(manual.contains("pulled +"), "{manual}");
    assert!(!manual.contains("pushed"), "{manual}");
    let second: Vec<(String, Vec<u8>)> = (0..2)
        .map(|i| {
            (
                format!("batch2/g{i}.bin"),
                payload(&format!("two{i}"), 20_000 + i * 1000),
            )
        })
        .collect();
    for (p, b) in &second {
        hub.put_asset("files", p, b);
    }
    for (p, b) in &second {
        assert!(wait_until(SYNC, || spoke.serves("files", p, b)));
    }
    // The change-triggered execution may still be recording its end.
    assert!(wait_until(SYNC, || spoke
        .executions("from-hub")
        .iter()
        .all(|e| e["outcome"].is_string())));

    let execs = spoke.executions("from-hub");
    assert!(execs.len() >= 3, "{execs:#?}");
    let ids: Vec<i64> = execs.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    let (mut added, mut bytes, mut blobs) = (0, 0, 0);
    for e in &execs {
        assert_eq!(e["outcome"], "succeeded", "{e:#}");
        assert!(
            ["schedule", "change", "manual"].contains(&e["trigger"].as_str().unwrap()),
            "{e:#}"
        );
        assert!(e["ended_at"].as_i64().unwrap() >= e["started_at"].as_i64().unwrap());
        let feeds = e["report"]["feeds"].as_array().unwrap();
        assert_eq!(feeds.len(), 1);
        assert_eq!(
            (feeds[0]["local"].as_str(), feeds[0]["remote"].as_str()),
            (Some("files"), Some("files"))
        );
        let pulled = &feeds[0]["pulled"];
        added += pulled["added"].as_u64().unwrap();
        bytes += pulled["bytes"].as_u64().unwrap();
        blobs += pulled["blobs"].as_u64().unwrap();
        assert_eq!(feeds[0]["pushed"]["added"], 0, "a pull never pushes");
        assert_eq!(
            (&feeds[0]["pulls"], &feeds[0]["pushes"]),
            (&json!(true), &json!(false))
        );
        let log = e["report"]["log"].as_array().unwrap();
        assert!(
            log.iter()
                .any(|l| l["message"].as_str().unwrap().contains("connected to instance")),
            "{e:#}"
        );
        assert!(
            log.iter()
                .all(|l| l["time"].is_string() && l["level"].is_string())
        );
    }
    let expected_bytes: usize = first.iter().chain(&second).map(|(_, b)| b.len()).sum();
    assert_eq!(
        (added, blobs, bytes),
        (5, 5, expected_bytes as u64),
        "counts over all executions"
    );
    let manual_exec = execs
        .iter()
        .find(|e| e["trigger"] == "manual")
        .expect("the manual run is listed");
    assert_eq!(manual_exec["report"]["feeds"][0]["pulled"]["added"], 0);
    let text = spoke.cli_ok(&["replication", "executions", "from-hub"]);
    assert!(
        text.contains("manual") && text.contains("succeeded") && text.contains("pulled +"),
        "{text}"
    );
    assert!(!text.contains("pushed"), "{text}");

    // The overview: idle, last outcome, no lag, next run about an interval away.
    let overview = spoke.cli_json(&["replication", "list", "--json"]);
    let st = &overview[0]["status"];
    assert_eq!(overview[0]["name"], "from-hub");
    assert_eq!(st["state"], "idle");
    assert_eq!(st["last_outcome"], "succeeded");
    assert_eq!(st["last_execution"], execs[0]["id"]);
    assert_eq!(st["lag"]["files"]["changes"], 0, "{st:#}");
    assert!(st["lag"]["files"]["seconds"].is_number());
    let next = st["next_run"].as_str().expect("next run shown").to_string();
    assert!(
        next > utc_in(3000) && next < utc_in(3700),
        "next run {next} is not an interval away"
    );
    let hub_view = hub.cli_json(&["replication", "list", "--json"]);
    assert_eq!(hub_view[0]["status"]["state"], "incoming");
    let hub_log = hub.cli_ok(&["replication", "log"]);
    assert!(
        hub_log.contains("handshake from instance"),
        "debug level shows handshakes: {hub_log}"
    );

    // A failed execution is listed with its error and shows in the overview.
    hub.kill();
    let err = spoke.cli_fails(&["replication", "run", "from-hub", "--wait"]);
    assert!(err.contains("cannot reach"), "{err}");
    let latest = &spoke.executions("from-hub")[0];
    assert_eq!(latest["outcome"], "failed");
    assert_eq!(latest["trigger"], "manual");
    let log = latest["report"]["log"].as_array().unwrap();
    assert!(
        log.iter()
            .any(|l| l["level"] == "error" && l["message"].as_str().unwrap().contains("cannot reach")),
        "{latest:#}"
    );
    let st = &spoke.cli_json(&["replication", "list", "--json"])[0]["status"];
    assert_eq!(st["last_outcome"], "failed");
    assert!(st["last_error"].as_str().unwrap().contains("cannot reach"));
    // What needs the hub now (a plan, a verify) says it cannot reach it:
    // 502, not this instance being busy.
    for cmd in ["plan", "verify"] {
        let err = spoke.cli_fails(&["replication", cmd, "from-hub"]);
        assert!(
            err.contains("502") && err.contains("cannot reach") && !err.contains("busy"),
            "{cmd}: {err}"
        );
    }

    // Back up: the spoke catches up, and the overview says so.
    hub.restart();
    hub.put_asset("files", "batch3/h.bin", b"after the outage");
    assert!(wait_until(SYNC, || spoke.serves(
        "files",
        "batch3/h.bin",
        b"after the outage"
    )));
    spoke.cli_ok(&["replication", "run", "from-hub", "--wait"]);
    let st = &spoke.cli_json(&["replication", "list", "--json"])[0]["status"];
    assert_eq!(st["last_outcome"], "succeeded");
    assert_eq!(st["last_error"], Value::Null);
}

/// A spoke's operator rotates the hub's token and narrows and widens the
/// filter with `replication update`: a token the hub refuses changes
/// nothing, the new one works (long polling included), a narrower filter
/// deletes nothing, and a wider one brings what the narrow one left out.
#[test]
fn update_rotates_the_token_and_changes_filters_without_deleting() {
    let hub = Server::start();
    hub.create_feed("files", "assets");
    let token = hub.incoming("edge", &["files"], "push");
    hub.put_asset("files", "docs/a.txt", b"a");
    hub.put_asset("files", "bin/b.bin", b"b");
    let spoke = Server::start();
    spoke.create_feed("files", "assets");
    spoke.outgoing("from-hub", &["files"], &hub, &token, "pull", &[]);
    assert!(wait_until(SYNC, || spoke.serves("files", "docs/a.txt", b"a")
        && spoke.serves("files", "bin/b.bin", b"b")));

    // The overview never shows the token's secret.
    let view = spoke.cli_json(&["replication", "list", "--json"]).to_string();
    let secret = &token["fst_".len() + 17..];
    assert!(!view.contains(secret), "the overview shows the token: {view}");
    assert!(view.contains(token_id(&token)), "{view}");

    // The hub rotates its token. The revoked one is refused by an update,
    // which then changes nothing.
    let new_token = hub.sync_token("edge");
    hub.cli_ok(&["replication", "revoke", "edge", token_id(&token)]);
    let out = spoke.cli_fails(&["replication", "update", "from-hub", "--token", &token]);
    assert!(out.contains("refused the sync token"), "{out}");
    let out = spoke.cli_fails(&["replication", "update", "from-hub"]);
    assert!(out.contains("nothing to change"), "{out}");
    spoke.cli_ok(&["replication", "update", "from-hub", "--token", &new_token]);
    let view = spoke.cli_json(&["replication", "list", "--json"]).to_string();
    assert!(view.contains(token_id(&new_token)), "{view}");
    hub.put_asset("files", "docs/c.txt", b"c");
    assert!(
        wait_until(SYNC, || spoke.serves("files", "docs/c.txt", b"c")),
        "no change arrived with the new token"
    );

    // A narrower filter: what it leaves out stays, new items outside it
    // are not copied, and a deletion outside it does not travel either.
    spoke.cli_ok(&["replication", "update", "from-hub", "--include", "docs/**"]);
    hub.put_asset("files", "bin/d.bin", b"d");
    hub.delete_asset("files", "bin/b.bin");
    hub.put_asset("files", "docs/e.txt", b"e");
    assert!(wait_until(SYNC, || spoke.serves("files", "docs/e.txt", b"e")));
    spoke.cli_ok(&["replication", "run", "from-hub", "--wait"]);
    assert!(spoke.lacks("files", "bin/d.bin"));
    assert!(
        spoke.serves("files", "bin/b.bin", b"b"),
        "a narrower filter deleted an item"
    );

    // Without filters again: what the narrow filter passed over arrives.
    spoke.cli_ok(&[
        "replication",
        "update",
        "from-hub",
        "--no-filters",
        "--interval",
        "120",
    ]);
    let view = spoke.cli_json(&["replication", "list", "--json"]);
    assert_eq!(view[0]["config"]["interval_secs"], 120);
    assert_eq!(view[0]["config"]["include"], json!([]));
    // An interval past 30 days is refused, and the replication keeps
    // running as it was (a huge one once stopped its scheduler).
    for huge in ["2592001", "9223372036854775807", "18446744073709551615"] {
        let err = spoke.cli_fails(&["replication", "update", "from-hub", "--interval", huge]);
        assert!(err.contains("at most 2592000 seconds"), "{huge}: {err}");
    }
    let view = spoke.cli_json(&["replication", "list", "--json"]);
    assert_eq!(view[0]["config"]["interval_secs"], 120);
    hub.put_asset("files", "docs/f.txt", b"f");
    assert!(
        wait_until(SYNC, || spoke.serves("files", "docs/f.txt", b"f")),
        "the replication stopped following the hub"
    );
    spoke.cli_ok(&["replication", "run", "from-hub", "--wait"]);
    assert!(spoke.serves("files", "bin/d.bin", b"d"));
    assert!(spoke.lacks("files", "bin/b.bin"));
    spoke.cli_ok(&["replication", "verify", "from-hub"]);

    // An incoming replication has no token or URL to change.
    let out = hub.cli_fails(&["replication", "update", "edge", "--token", &new_token]);
    assert!(out.contains("incoming"), "{out}");
}

/// The hub narrows and then widens its incoming replication's filter
/// while a spoke follows it: narrowed, new items outside it do not
/// travel and nothing is deleted; widened, what it hid arrives by itself
/// within seconds (the spoke's long poll is told, the spoke compares in
/// full), without a manual run and without the spoke falling back to its
/// schedule (an hour here).
#[test]
fn a_hub_widening_its_filter_brings_what_it_hid_to_a_following_spoke() {
    let hub = Server::start();
    hub.create_feed("files", "assets");
    let token = hub.incoming("edge", &["files"], "push");
    hub.put_asset("files", "docs/a.txt", b"a");
    hub.put_asset("files", "sec/s1.txt", b"s1");
    hub.cli_ok(&["replication", "update", "edge", "--exclude", "sec/**"]);
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
    assert!(wait_until(SYNC, || spoke.serves("files", "docs/a.txt", b"a")));
    spoke.cli_ok(&["replication", "run", "from-hub", "--wait"]);
    assert!(spoke.lacks("files", "sec/s1.txt"));

    hub.cli_ok(&["replication", "update", "edge", "--no-filters"]);
    assert!(
        wait_until(SYNC, || spoke.serves("files", "sec/s1.txt", b"s1")),
        "what the hub's filter hid did not arrive after it was widened"
    );
    // Still following: the next publish arrives as quickly.
    hub.put_asset("files", "sec/s2.txt", b"s2");
    assert!(wait_until(SYNC, || spoke.serves("files", "sec/s2.txt", b"s2")));
    spoke.cli_ok(&["replication", "verify", "from-hub"]);

    // Narrowed again: nothing is deleted, new items outside do not travel,
    // and the spoke keeps following what is inside.
    hub.cli_ok(&["replication", "update", "edge", "--exclude", "sec/**"]);
    hub.put_asset("files", "sec/s3.txt", b"s3");
    hub.put_asset("files", "docs/b.txt", b"b");
    assert!(wait_until(SYNC, || spoke.serves("files", "docs/b.txt", b"b")));
    assert!(spoke.lacks("files", "sec/s3.txt"));
    assert!(spoke.serves("files", "sec/s1.txt", b"s1"));
}

/// A spoke pushing to a hub whose incoming filter leaves some of its items
/// out sends nothing of those items — neither their entries nor their
/// blobs (which would only wait on the hub for garbage collection) — and
/// names them as held back, without failing its executions; once the hub
/// widens its filter, the next execution carries them.
#[test]
fn a_pushing_spoke_sends_nothing_of_what_the_hub_filter_refuses() {
    use sha2::{Digest, Sha256};
    let hub = Server::start();
    hub.create_feed("files", "assets");
    let token = hub.incoming("from-edge", &["files"], "pull");
    hub.cli_ok(&["replication", "update", "from-edge", "--exclude", "sec/**"]);
    let spoke = Server::start();
    spoke.create_feed("files", "assets");
    let secret = b"a secret only the edge may keep, for now".repeat(4096);
    let secret_digest = format!("{:x}", Sha256::digest(&secret));
    spoke.put_asset("files", "docs/a.txt", b"a");
    spoke.put_asset("files", "sec/s.bin", &secret);
    spoke.outgoing(
        "to-hub",
        &["files"],
        &hub,
        &token,
        "push",
        &["--interval", "3600"],
    );
    let run = || {
        spoke.cli_ok(&["replication", "run", "to-hub", "--wait"]);
        spoke.executions("to-hub")[0].clone()
    };
    let first = run();
    assert!(hub.serves("files", "docs/a.txt", b"a"));
    assert!(hub.lacks("files", "sec/s.bin"));
    assert!(
        !hub.blob_path(&secret_digest).exists(),
        "the blob of an item the hub refuses was sent to it"
    );
    let report = &first["report"];
    let held = &report["stuck"][0];
    assert!(
        held["key"] == "sec/s.bin" && held["held"] == true && held["reason"].to_string().contains("filter"),
        "{report}"
    );
    let listed = spoke.cli_ok(&["replication", "list"]);
    assert!(!listed.contains("last error"), "{listed}");
    let pushed_bytes: u64 = report["feeds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["pushed"]["bytes"].as_u64().unwrap_or(0))
        .sum();
    assert!(pushed_bytes < 1024, "{report}");
    // A second execution does not send it either.
    run();
    assert!(!hub.blob_path(&secret_digest).exists());

    hub.cli_ok(&["replication", "update", "from-edge", "--no-filters"]);
    let after = run();
    assert!(hub.serves("files", "sec/s.bin", &secret), "{after}");
    assert!(
        after["report"]["stuck"].as_array().is_none_or(|a| a.is_empty()),
        "{after}"
    );
}

/// `run --wait` right after publishes carries all of them, also while the
/// spoke's long poll answers for the first one and wakes an execution of
/// its own: a page a long poll brought shows the hub as it was then, and
/// only the execution it woke may start from it (a CI run on PostgreSQL
/// caught a manual run that took it and ended before the second publish).
#[test]
fn a_run_asked_after_publishes_carries_every_one_of_them() {
    let hub = Server::start();
    hub.create_feed("files", "assets");
    let token = hub.incoming("edge", &["files"], "push");
    let spoke = Server::pulling_spoke(&hub, "files", &token);
    for i in 0..12 {
        let (first, second) = (format!("a{i}.txt"), format!("b{i}.txt"));
        hub.put_asset("files", &first, first.as_bytes());
        // Time for the long poll to answer with the first alone.
        std::thread::sleep(std::time::Duration::from_millis(i % 4 * 5));
        hub.put_asset("files", &second, second.as_bytes());
        let out = spoke.cli(&["replication", "run", "from-hub", "--wait"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(
            spoke.serves("files", &second, second.as_bytes()),
            "round {i}: the run ended before {second}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(spoke.serves("files", &first, first.as_bytes()));
    }
    assert!(spoke.verified("from-hub"));
}

/// A file's time is when it was written at its origin, on every instance:
/// the PUT answer, the hub's listing and the spoke's listing and
/// `Last-Modified` all show the hub's upload time, not when the spoke
/// applied it.
#[test]
fn a_spoke_shows_the_hubs_upload_time_not_its_own() {
    let hub = Server::start();
    hub.create_feed("files", "assets");
    let token = hub.incoming("edge", &["files"], "push");
    let auth = format!("Authorization: Bearer {ADMIN}");
    let (st, body) = support::curl_stdin(
        &["-T", "-", "-H", &auth, &hub.asset_url("files", "dir/a.txt")],
        b"first",
    );
    assert_eq!(st, 201);
    let put: Value = serde_json::from_slice(&body).unwrap();
    let put_time = put["modified"]
        .as_str()
        .unwrap_or_else(|| panic!("PUT answer: {put}"))
        .to_owned();
    // Late enough that an apply time would show in seconds, too.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let spoke = Server::pulling_spoke(&hub, "files", &token);
    assert!(wait_until(SYNC, || spoke.serves("files", "dir/a.txt", b"first")));
    let listed = |s: &Server| -> String {
        let (st, body) = curl(&["-H", "Accept: application/json", &s.asset_url("files", "dir/")]);
        assert_eq!(st, 200);
        let v: Value = serde_json::from_slice(&body).unwrap();
        v[0]["modified"].as_str().unwrap().to_owned()
    };
    assert_eq!(listed(&hub), put_time);
    assert_eq!(listed(&spoke), put_time);
    let last_modified = |s: &Server| -> String {
        let out = std::process::Command::new("curl")
            .args(["-sS", "-I", &s.asset_url("files", "dir/a.txt")])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.lines()
            .find_map(|l| l.strip_prefix("last-modified: "))
            .unwrap_or_else(|| panic!("no Last-Modified: {text}"))
            .trim()
            .to_owned()
    };
    assert_eq!(last_modified(&spoke), last_modified(&hub));
}

/// A spoke may be set up before its hub is up: creating an outgoing
/// replication to an instance that cannot be reached succeeds, and says so
/// on the spot instead of only in the server's log.
#[test]
fn creating_a_replication_to_an_unreachable_hub_warns() {
    let spoke = Server::start();
    spoke.create_feed("files", "assets");
    let out = spoke.cli(&[
        "replication",
        "create",
        "from-hub",
        "--outgoing",
        "http://127.0.0.1:1",
        "--token",
        "fst_0123456789abcdef_0000000000000000000000000000000000000000000000000000000000000000",
        "--mode",
        "pull",
        "--feed",
        "files",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning: the other instance could not be reached yet"),
        "{err}"
    );
    let list = spoke.cli_ok(&["replication", "list"]);
    assert!(list.contains("from-hub"), "{list}");
}

/// A hub that drops one feed from its incoming replication stops only
/// that feed on its spokes: the others still replicate, the execution
/// fails naming the dropped feed and why, and a new replication naming it
/// is refused at once.
#[test]
fn a_feed_the_hub_no_longer_serves_fails_alone() {
    let hub = Server::start();
    hub.create_feed("files", "assets");
    hub.create_feed("docs", "assets");
    let token = hub.incoming("edge", &["files", "docs"], "push");
    let spoke = Server::start();
    spoke.create_feed("files", "assets");
    spoke.create_feed("docs", "assets");
    spoke.outgoing(
        "from-hub",
        &["files", "docs"],
        &hub,
        &token,
        "pull",
        &["--interval", "3600"],
    );
    hub.put_asset("files", "a.txt", b"a");
    hub.put_asset("docs", "d.txt", b"d");
    spoke.cli_ok(&["replication", "run", "from-hub", "--wait"]);
    assert!(spoke.serves("files", "a.txt", b"a"));
    assert!(spoke.serves("docs", "d.txt", b"d"));

    // The hub's operator narrows the replication to one feed.
    let (st, body) = hub
        .put_config(r#"{"replications":[{"name":"edge","feeds":["files"],"incoming":true,"mode":"push"}]}"#);
    assert_eq!(st, 200, "{body}");
    hub.put_asset("files", "b.txt", b"b");
    hub.put_asset("docs", "e.txt", b"e");
    let out = spoke.cli(&["replication", "run", "from-hub", "--wait"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    // The feed still served moved on; the dropped one did not.
    assert!(spoke.serves("files", "b.txt", b"b"), "{text}");
    assert!(spoke.lacks("docs", "e.txt"));
    let latest = &spoke.executions("from-hub")[0];
    assert_eq!(latest["outcome"], "failed", "{latest:#}");
    let log = latest["report"]["log"].to_string();
    assert!(
        log.contains("feed docs: the other instance refuses it: feed docs is not part of replication edge"),
        "{log}"
    );
    // The hub's view of the spoke says so too.
    let peers = hub.cli_json(&["replication", "peers", "edge", "--json"]);
    assert!(
        peers[0]["last_error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("feed docs is not part of replication edge")),
        "{peers}"
    );
    // A replication naming the dropped feed is refused when created.
    let err = spoke.cli_fails(&[
        "replication",
        "create",
        "docs-again",
        "--feed",
        "docs",
        "--outgoing",
        &hub.url,
        "--token",
        &token,
        "--mode",
        "pull",
    ]);
    assert!(err.contains("not part of replication edge"), "{err}");

    // The hub serves the feed again: the spoke follows it again at once,
    // without a run asked for (its watcher of that feed waited out the
    // refusal for up to 5 minutes).
    let (st, body) = hub.put_config(
        r#"{"replications":[{"name":"edge","feeds":["files","docs"],"incoming":true,"mode":"push"}]}"#,
    );
    assert_eq!(st, 200, "{body}");
    assert!(wait_until(SYNC, || spoke.serves("docs", "e.txt", b"e")));
    hub.put_asset("docs", "f.txt", b"f");
    assert!(
        wait_until(SYNC, || spoke.serves("docs", "f.txt", b"f")),
        "{:#}",
        spoke.executions("from-hub")[0]
    );
}

/// Settings changed while an execution runs are stored at once (a cap set
/// too low is undone without waiting for it to crawl to its end); the
/// running execution keeps its own, and a filter change stops it so that
/// the next one starts at once with the new settings.
#[test]
fn settings_change_at_once_while_an_execution_runs() {
    let hub = Server::start();
    hub.create_feed("files", "assets");
    let token = hub.incoming("edge", &["files"], "push");
    let big = payload("big", 2_000_000);
    hub.put_asset("files", "big.bin", &big);
    let spoke = Server::start();
    spoke.create_feed("files", "assets");
    spoke.outgoing(
        "from-hub",
        &["files"],
        &hub,
        &token,
        "pull",
        &["--interval", "3600", "--bandwidth-limit", "1024"],
    );
    assert!(
        wait_until(SYNC, || spoke
            .executions("from-hub")
            .first()
            .is_some_and(|e| e["outcome"].is_null())),
        "no execution running"
    );
    // Under a time limit: before, this waited for the running execution
    // (half an hour at this cap).
    let update = |args: &[&str]| {
        std::process::Command::new("timeout")
            .arg("60")
            .arg(support::bin())
            .args(["replication", "update", "from-hub"])
            .args(args)
            .env("FERRY_URL", &spoke.url)
            .env("FERRY_API_KEY", support::ADMIN)
            .output()
            .unwrap()
    };
    let out = update(&["--bandwidth-limit", "0"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let view = spoke.cli_json(&["replication", "list", "--json"]);
    assert!(view[0]["config"]["bandwidth_limit"].is_null(), "{view}");
    assert!(
        spoke.executions("from-hub")[0]["outcome"].is_null(),
        "the running execution ended"
    );
    // A filter change stops it; the next one, uncapped, brings the file.
    let out = update(&["--exclude", "nothing/**"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        wait_until(SYNC, || spoke.serves("files", "big.bin", &big)),
        "{:#?}",
        spoke.executions("from-hub")
    );
    assert!(
        spoke
            .executions("from-hub")
            .iter()
            .any(|e| e["outcome"] == "stopped"),
        "{:#?}",
        spoke.executions("from-hub")
    );
    // A cap below 1 KiB/s is refused.
    let err = spoke.cli_fails(&["replication", "update", "from-hub", "--bandwidth-limit", "1"]);
    assert!(err.contains("at least 1024 bytes per second"), "{err}");
}
