//! The delete guard end to end: a mass deletion on the hub stops every
//! execution on the spoke before it deletes anything — scheduled ones too —
//! until an operator confirms; `plan` shows what is pending.
#![allow(clippy::unwrap_used)]
mod support;

use serde_json::Value;
use support::{Server, wait_until};

const SYNC: u64 = 30;

fn live_items(spoke: &Server) -> (u64, u64) {
    // `verify` exits non-zero while the ends differ; its JSON says by how much.
    let out = spoke.cli(&["replication", "verify", "from-hub", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let f = &v["feeds"][0];
    (
        f["local_items"].as_u64().unwrap(),
        f["remote_items"].as_u64().unwrap(),
    )
}

#[test]
fn mass_deletion_on_the_hub_waits_for_confirmation_on_the_spoke() {
    let hub = Server::start();
    hub.create_feed("files", "assets");
    let token = hub.incoming("edge", &["files"], "push");
    let assets: Vec<(String, String)> = (0..300)
        .map(|i| (format!("pkgs/item-{i:03}.txt"), format!("content of item {i}")))
        .collect();
    hub.put_assets("files", &assets);

    let mut spoke = Server::start();
    spoke.create_feed("files", "assets");
    spoke.outgoing(
        "from-hub",
        &["files"],
        &hub,
        &token,
        "pull",
        &["--interval", "3600"],
    );
    assert!(
        wait_until(SYNC, || spoke.asset_digests("files", "pkgs/").len() == 300),
        "the spoke did not get 300 items"
    );
    assert!(wait_until(SYNC, || spoke.verified("from-hub")));
    assert_eq!(live_items(&spoke), (300, 300));

    // The spoke is down while 200 items are deleted on the hub; when it comes
    // back, its first (scheduled) execution sees all 200 deletions at once.
    spoke.stop();
    let doomed: Vec<String> = assets[..200].iter().map(|(p, _)| p.clone()).collect();
    hub.delete_assets("files", &doomed);
    assert_eq!(hub.asset_digests("files", "pkgs/").len(), 100);
    spoke.restart();
    let stopped_by_guard = |e: &Value| e["outcome"] == "needs-confirmation" && e["trigger"] != "manual";
    assert!(
        wait_until(SYNC, || spoke.executions("from-hub").iter().any(stopped_by_guard)),
        "the scheduled execution must stop before deleting: {:#?}",
        spoke.executions("from-hub")
    );
    let execs = spoke.executions("from-hub");
    let scheduled = execs.iter().find(|e| stopped_by_guard(e)).unwrap();
    assert_eq!(
        scheduled["report"]["feeds"][0]["pulled"]["deleted"], 0,
        "{scheduled:#}"
    );
    let warning = scheduled["report"]["log"].as_array().unwrap().iter().any(|l| {
        let m = l["message"].as_str().unwrap();
        l["level"] == "warn" && m.contains("200") && m.contains("--confirm-deletes")
    });
    assert!(
        warning,
        "the execution log says what it did not delete and how to confirm: {scheduled:#}"
    );
    assert_eq!(
        spoke.asset_digests("files", "pkgs/").len(),
        300,
        "the scheduled execution deleted items"
    );
    assert!(spoke.serves("files", "pkgs/item-000.txt", b"content of item 0"));

    // A manual run stops too, and says how to go ahead.
    let out = spoke.cli(&["replication", "run", "from-hub", "--wait"]);
    assert!(!out.status.success(), "a guarded run must exit non-zero");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--confirm-deletes"), "{err}");
    assert_eq!(live_items(&spoke), (300, 100), "nothing was deleted on the spoke");
    let overview = spoke.cli_json(&["replication", "list", "--json"]);
    assert_eq!(overview[0]["status"]["last_outcome"], "needs-confirmation");
    assert!(
        overview[0]["status"]["lag"]["files"]["changes"].as_i64().unwrap() >= 200,
        "{overview:#}"
    );

    // The plan shows the pending deletions and changes nothing.
    let plan = spoke.cli_json(&["replication", "plan", "from-hub", "--json"]);
    assert_eq!(plan["feeds"][0]["pulled"]["deleted"], 200, "{plan:#}");
    assert_eq!(plan["needs_confirmation"], true);
    let text = spoke.cli_ok(&["replication", "plan", "from-hub"]);
    assert!(
        text.contains("-200") && text.contains("stop before deleting"),
        "{text}"
    );
    assert_eq!(live_items(&spoke), (300, 100));
    spoke.cli_fails(&["replication", "verify", "from-hub"]);

    // Confirmed: the deletions happen, and the ends agree again.
    let out = spoke.cli_ok(&["replication", "run", "from-hub", "--wait", "--confirm-deletes"]);
    assert!(out.contains("succeeded"), "{out}");
    assert_eq!(live_items(&spoke), (100, 100));
    assert!(spoke.lacks("files", "pkgs/item-000.txt"));
    assert!(spoke.serves("files", "pkgs/item-299.txt", b"content of item 299"));
    let confirmed = &spoke.executions("from-hub")[0];
    assert_eq!(
        confirmed["report"]["feeds"][0]["pulled"]["deleted"], 200,
        "{confirmed:#}"
    );
    spoke.cli_ok(&["replication", "verify", "from-hub"]);

    // Small deletions go through without confirmation.
    hub.delete_assets("files", &["pkgs/item-299.txt".to_string()]);
    assert!(wait_until(SYNC, || spoke.lacks("files", "pkgs/item-299.txt")));
}

/// Deletions that arrive a few at a time while the spoke follows the hub
/// count together: the spoke stops once they pass the limit, instead of
/// letting a mass deletion through in small executions.
#[test]
fn a_mass_deletion_arriving_in_small_executions_is_stopped_too() {
    let hub = Server::start();
    hub.create_feed("files", "assets");
    let token = hub.incoming("edge", &["files"], "push");
    let assets: Vec<(String, String)> = (0..300)
        .map(|i| (format!("i/{i:03}"), format!("item {i}")))
        .collect();
    hub.put_assets("files", &assets);
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
    assert!(wait_until(SYNC, || spoke.asset_digests("files", "i/").len() == 300));

    // The spoke stays online and long-polls while the hub deletes 200, in
    // several bursts, each far under the limit on its own.
    for burst in assets[..200].chunks(20) {
        let paths: Vec<String> = burst.iter().map(|(p, _)| p.clone()).collect();
        hub.delete_assets("files", &paths);
        std::thread::sleep(std::time::Duration::from_millis(150));
    }
    let stopped = |s: &Server| {
        s.executions("from-hub")
            .iter()
            .any(|e| e["outcome"] == "needs-confirmation")
    };
    assert!(
        wait_until(SYNC, || stopped(&spoke)),
        "{:#?}",
        spoke.executions("from-hub")
    );
    // Let any execution in flight finish, then count what is left.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let left = spoke.asset_digests("files", "i/").len();
    assert!(
        left >= 180,
        "the guard let {} of 200 deletions through",
        300 - left
    );
    assert!(
        left < 300,
        "small deletions before the limit go through ({left} left)"
    );

    let out = spoke.cli_ok(&["replication", "run", "from-hub", "--wait", "--confirm-deletes"]);
    assert!(out.contains("succeeded"), "{out}");
    assert_eq!(spoke.asset_digests("files", "i/").len(), 100);
    spoke.cli_ok(&["replication", "verify", "from-hub"]);
}

/// A first push of a feed that deleted many items before: its tombstones
/// name items the other side never had, so pushing them deletes nothing
/// there and the guard lets the push through (it held everything, the
/// additions too, until an operator confirmed deleting nothing).
#[test]
fn tombstones_of_items_the_other_side_never_had_do_not_trip_the_push_guard() {
    let hub = Server::start();
    hub.create_feed("tomb", "assets");
    let token = hub.incoming("tombin", &["tomb"], "pull");

    let edge = Server::start();
    edge.create_feed("tomb", "assets");
    let gone: Vec<(String, String)> = (0..120)
        .map(|i| (format!("old/item-{i:03}.txt"), format!("old item {i}")))
        .collect();
    edge.put_assets("tomb", &gone);
    let paths: Vec<String> = gone.iter().map(|(p, _)| p.clone()).collect();
    edge.delete_assets("tomb", &paths);
    edge.put_assets("tomb", &[("keep.txt".to_string(), "kept".to_string())]);
    edge.outgoing(
        "push-out",
        &["tomb"],
        &hub,
        &token,
        "push",
        &["--interval", "3600"],
    );
    assert!(
        wait_until(SYNC, || hub.asset_digests("tomb", "").len() == 1),
        "keep.txt did not reach the hub: {:#?}",
        edge.executions("push-out")
    );
    assert!(
        !edge
            .executions("push-out")
            .iter()
            .any(|e| e["outcome"] == "needs-confirmation"),
        "{:#?}",
        edge.executions("push-out")
    );
}

/// A hub accepting pushes (`from-edge`) and a spoke (`to-hub`, pushing)
/// that pushed 150 assets under `prefix/` to it.
fn edge_pushed_150(prefix: &str) -> (Server, Server, Vec<(String, String)>) {
    let hub = Server::start();
    hub.create_feed("files", "assets");
    let token = hub.incoming("from-edge", &["files"], "pull");
    let edge = Server::start();
    edge.create_feed("files", "assets");
    let items: Vec<(String, String)> = (0..150)
        .map(|i| (format!("{prefix}/item-{i:03}.txt"), format!("item {i}")))
        .collect();
    edge.put_assets("files", &items);
    edge.outgoing(
        "to-hub",
        &["files"],
        &hub,
        &token,
        "push",
        &["--interval", "3600"],
    );
    edge.cli_ok(&["replication", "run", "to-hub", "--wait"]);
    assert_eq!(hub.asset_digests("files", &format!("{prefix}/")).len(), 150);
    (hub, edge, items)
}

/// Deletions a pushing spoke held back while the hub's filter refused
/// them count toward the delete guard once the filter admits them: the
/// hub widening its filter does not let a mass deletion through.
#[test]
fn deletions_held_back_by_the_hubs_filter_still_meet_the_guard() {
    let (hub, edge, items) = edge_pushed_150("sec");

    hub.cli_ok(&["replication", "update", "from-edge", "--exclude", "sec/**"]);
    let paths: Vec<String> = items[..120].iter().map(|(p, _)| p.clone()).collect();
    edge.delete_assets("files", &paths);
    edge.cli_ok(&["replication", "run", "to-hub", "--wait"]);
    assert_eq!(
        hub.asset_digests("files", "sec/").len(),
        150,
        "held deletions were applied"
    );

    hub.cli_ok(&["replication", "update", "from-edge", "--no-filters"]);
    let out = edge.cli(&["replication", "run", "to-hub", "--wait"]);
    assert!(!out.status.success(), "a guarded run must exit non-zero");
    assert_eq!(
        edge.executions("to-hub")[0]["outcome"],
        "needs-confirmation",
        "{:#?}",
        edge.executions("to-hub")[0]
    );
    assert_eq!(
        hub.asset_digests("files", "sec/").len(),
        150,
        "the guard let deletions through"
    );

    edge.cli_ok(&["replication", "run", "to-hub", "--wait", "--confirm-deletes"]);
    assert_eq!(hub.asset_digests("files", "sec/").len(), 30);
}

/// A push that compares every entry (`run --full`) meets the delete guard
/// too: the tombstones that would remove live items on the hub stop it
/// until an operator confirms.
#[test]
fn a_full_push_meets_the_delete_guard() {
    let (hub, edge, items) = edge_pushed_150("i");

    // A pushing spoke runs by itself shortly after each local change: it
    // points elsewhere while the 120 deletions are made one by one, so that
    // none of its own executions pushes a few of them at a time.
    edge.cli_ok(&[
        "replication",
        "update",
        "to-hub",
        "--outgoing",
        "http://127.0.0.1:9",
    ]);
    let paths: Vec<String> = items[..120].iter().map(|(p, _)| p.clone()).collect();
    edge.delete_assets("files", &paths);
    edge.cli_ok(&["replication", "update", "to-hub", "--outgoing", &hub.url]);
    // The execution the update woke ends before the full one starts.
    assert!(wait_until(30, || edge
        .executions("to-hub")
        .first()
        .is_some_and(|e| e["outcome"].is_string())));
    let out = edge.cli(&["replication", "run", "to-hub", "--wait", "--full"]);
    assert!(!out.status.success(), "a guarded run must exit non-zero");
    assert_eq!(edge.executions("to-hub")[0]["outcome"], "needs-confirmation");
    assert_eq!(
        hub.asset_digests("files", "i/").len(),
        150,
        "the guard let deletions through"
    );

    edge.cli_ok(&[
        "replication",
        "run",
        "to-hub",
        "--wait",
        "--full",
        "--confirm-deletes",
    ]);
    assert_eq!(hub.asset_digests("files", "i/").len(), 30);
}

/// Items an execution could not copy (their new version's blob was lost
/// on the hub) are retried by every later one; once the hub has deleted
/// them, those retried deletions count toward the delete guard like the
/// change log's (once each): a mass deletion does not slip through as
/// retries.
#[test]
fn retried_stuck_items_deleted_on_the_hub_still_meet_the_guard() {
    use sha2::{Digest, Sha256};
    let hub = Server::start();
    hub.create_feed("files", "assets");
    let token = hub.incoming("edge", &["files"], "push");
    let items: Vec<(String, String)> = (0..150)
        .map(|i| (format!("pkgs/item-{i:03}.txt"), format!("first {i}")))
        .collect();
    hub.put_assets("files", &items);
    let mut spoke = Server::pulling_spoke(&hub, "files", &token);
    spoke.cli_ok(&["replication", "run", "from-hub", "--wait"]);
    assert_eq!(spoke.asset_digests("files", "pkgs/").len(), 150);

    // While the spoke is down, 120 items get a new version whose blob the
    // hub then loses: the spoke keeps the old versions and marks them stuck.
    spoke.stop();
    let updated: Vec<(String, String)> = items[..120]
        .iter()
        .enumerate()
        .map(|(i, (p, _))| (p.clone(), format!("second {i}")))
        .collect();
    hub.put_assets("files", &updated);
    for (_, body) in &updated {
        hub.remove_blob(&format!("{:x}", Sha256::digest(body.as_bytes())));
    }
    spoke.restart();
    let stuck = |e: &Value| e["report"]["stuck"].as_array().map_or(0, Vec::len);
    assert!(
        wait_until(SYNC, || spoke
            .executions("from-hub")
            .iter()
            .any(|e| stuck(e) == 120)),
        "{:#?}",
        spoke.executions("from-hub")
    );
    assert_eq!(spoke.asset_digests("files", "pkgs/").len(), 150);
    assert!(spoke.serves("files", "pkgs/item-000.txt", b"first 0"));

    // Then the hub deletes them.
    spoke.stop();
    let paths: Vec<String> = updated.iter().map(|(p, _)| p.clone()).collect();
    hub.delete_assets("files", &paths);
    spoke.restart();
    let guarded = |e: &Value| e["outcome"] == "needs-confirmation";
    assert!(
        wait_until(SYNC, || spoke.executions("from-hub").iter().any(guarded)),
        "{:#?}",
        spoke.executions("from-hub")
    );
    let execs = spoke.executions("from-hub");
    let stopped = execs.iter().find(|e| guarded(e)).unwrap();
    let warned = stopped["report"]["log"].as_array().unwrap().iter().any(|l| {
        let m = l["message"].as_str().unwrap();
        m.contains("stopped before deleting 120 of 150")
    });
    assert!(warned, "each deletion is counted once: {stopped:#}");
    assert_eq!(
        spoke.asset_digests("files", "pkgs/").len(),
        150,
        "the retried deletions went past the guard"
    );

    spoke.cli_ok(&["replication", "run", "from-hub", "--wait", "--confirm-deletes"]);
    assert_eq!(spoke.asset_digests("files", "pkgs/").len(), 30);
    spoke.cli_ok(&["replication", "verify", "from-hub"]);
}
