//! Tombstones are kept for a configurable time. A spoke whose cursor is
//! older than what the hub still keeps compares in full instead of silently
//! missing deletions, and deletes what the hub no longer has — but never
//! what was written on the spoke itself.
#![allow(clippy::unwrap_used)]
mod support;

use support::{Server, curl, wait_until};

#[test]
fn a_cursor_older_than_the_tombstone_horizon_triggers_a_full_comparison() {
    let mut hub = Server::start_with(&[("FERRY_TOMBSTONE_RETENTION_SECS", "0")]);
    hub.create_feed("files", "assets");
    let token = hub.incoming("edge", &["files"], "push");
    hub.put_asset("files", "a.txt", b"a");
    hub.put_asset("files", "b.txt", b"b");

    let mut spoke = Server::start();
    spoke.create_feed("files", "assets");
    spoke.put_asset("files", "mine.txt", b"written on the spoke");
    spoke.outgoing(
        "from-hub",
        &["files"],
        &hub,
        &token,
        "pull",
        &["--interval", "3600"],
    );
    assert!(wait_until(30, || spoke.serves("files", "b.txt", b"b")
        && spoke.serves("files", "a.txt", b"a")));

    // While the spoke is away, a deletion happens and its tombstone expires.
    spoke.stop();
    hub.delete_asset("files", "a.txt");
    hub.put_asset("files", "c.txt", b"c");
    std::thread::sleep(std::time::Duration::from_millis(20));
    hub.restart(); // prunes tombstones older than the retention (0 s) at start
    let changes = format!("{}/api/replication/v1/feeds/files/changes?since=1", hub.url);
    let auth = format!("Authorization: Bearer {token}");
    assert!(
        wait_until(30, || {
            let (_, body) = curl(&["-H", &auth, &changes]);
            serde_json::from_slice::<serde_json::Value>(&body).is_ok_and(|v| v["reset"] == true)
        }),
        "the hub did not prune the tombstone"
    );

    spoke.restart();
    // The first execution after the restart finds its cursor below the
    // hub's horizon, compares in full, copies what is new, and reports the
    // item the hub no longer has instead of deleting it silently.
    let reported = |s: &Server| {
        s.executions("from-hub").iter().any(|e| {
            let log = e["report"]["log"].to_string();
            e["outcome"] == "needs-confirmation"
                && log.contains("comparing in full")
                && log.contains("absent on the other side")
        })
    };
    assert!(
        wait_until(30, || reported(&spoke)),
        "{:#?}",
        spoke.executions("from-hub")
    );
    assert!(spoke.serves("files", "c.txt", b"c"));
    assert!(
        spoke.serves("files", "a.txt", b"a"),
        "deleted without confirmation"
    );
    // Confirmed: the absent item goes; the spoke's own item stays.
    let out = spoke.cli_ok(&[
        "replication",
        "run",
        "from-hub",
        "--wait",
        "--full",
        "--confirm-deletes",
    ]);
    assert!(out.contains("succeeded"), "{out}");
    assert!(
        spoke.lacks("files", "a.txt"),
        "the expired deletion was not applied"
    );
    assert!(spoke.serves("files", "c.txt", b"c"));
    assert!(spoke.serves("files", "b.txt", b"b"));
    assert!(
        spoke.serves("files", "mine.txt", b"written on the spoke"),
        "a local item was deleted"
    );
}

/// A custom mode that copies content but not deletions, with an include
/// filter on item names: only matching items arrive, and deleting on the
/// hub leaves the spoke's copies alone.
#[test]
fn custom_mode_with_filters_copies_only_what_it_should() {
    let hub = Server::start();
    hub.create_feed("files", "assets");
    hub.cli_ok(&[
        "replication",
        "create",
        "edge",
        "--feed",
        "files",
        "--incoming",
        "--mode",
        "custom",
        "--push-missing",
    ]);
    let token = hub.cli_ok(&["replication", "token", "edge"]).trim().to_string();
    hub.put_asset("files", "keep/one.txt", b"1");
    hub.put_asset("files", "skip/two.txt", b"2");

    let spoke = Server::start();
    spoke.create_feed("files", "assets");
    // A mode that is not the mirror image is refused, naming what fits.
    let err = spoke.cli_fails(&[
        "replication",
        "create",
        "bad",
        "--feed",
        "files",
        "--outgoing",
        &hub.url,
        "--token",
        &token,
        "--mode",
        "custom",
        "--pull-missing",
        "--delete-local",
    ]);
    assert!(err.contains("custom (pull-missing)"), "{err}");
    spoke.cli_ok(&[
        "replication",
        "create",
        "from-hub",
        "--feed",
        "files",
        "--outgoing",
        &hub.url,
        "--token",
        &token,
        "--mode",
        "custom",
        "--pull-missing",
        "--include",
        "keep/*",
        "--interval",
        "3600",
    ]);
    spoke.cli_ok(&["replication", "run", "from-hub", "--wait"]);
    assert!(spoke.serves("files", "keep/one.txt", b"1"));
    assert!(
        spoke.lacks("files", "skip/two.txt"),
        "the include filter let skip/ through"
    );

    hub.put_asset("files", "keep/three.txt", b"3");
    hub.delete_asset("files", "keep/one.txt");
    assert!(wait_until(30, || spoke.serves("files", "keep/three.txt", b"3")));
    spoke.cli_ok(&["replication", "run", "from-hub", "--wait"]);
    assert!(
        spoke.serves("files", "keep/one.txt", b"1"),
        "a deletion crossed a mode that does not carry them"
    );
    // verify compares only what the filter admits (and says they differ:
    // the spoke kept keep/one.txt).
    let out = spoke.cli(&["replication", "verify", "from-hub", "--json"]);
    assert!(!out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            v["feeds"][0]["local_items"].as_u64(),
            v["feeds"][0]["remote_items"].as_u64()
        ),
        (Some(2), Some(1)),
        "{v:#}"
    );
}

/// With `--carry-downloads`, a spoke shows the hub's download counts.
#[test]
fn download_counts_are_carried_when_asked() {
    let hub = Server::start();
    hub.create_feed("files", "assets");
    let token = hub.incoming("edge", &["files"], "push");
    hub.put_asset("files", "popular.bin", b"everyone wants this");
    for _ in 0..3 {
        assert_eq!(curl(&[&hub.asset_url("files", "popular.bin")]).0, 200);
    }
    let downloads = |s: &Server, feed: &str| {
        let (_, body) = curl(&[
            "-H",
            "Accept: application/json",
            &format!("{}/assets/{feed}/", s.url),
        ]);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        v[0]["downloads"].as_u64().unwrap_or(0)
    };
    // Counts are recorded in batches, every few seconds.
    assert!(
        wait_until(15, || downloads(&hub, "files") == 3),
        "the hub did not count"
    );

    let spoke = Server::start();
    spoke.create_feed("counted", "assets");
    spoke.create_feed("plain", "assets");
    let token2 = hub.sync_token("edge");
    spoke.outgoing(
        "with-counts",
        &["counted=files"],
        &hub,
        &token,
        "pull",
        &["--carry-downloads"],
    );
    spoke.outgoing("without", &["plain=files"], &hub, &token2, "pull", &[]);
    // Wait by listing, not downloading, so the spoke adds no counts of its own.
    assert!(wait_until(30, || spoke.asset_digests("counted", "").len() == 1));
    assert!(wait_until(30, || spoke.asset_digests("plain", "").len() == 1));
    assert!(
        wait_until(10, || downloads(&spoke, "counted") == 3),
        "counts were not carried"
    );
    assert_eq!(downloads(&spoke, "plain"), 0);
}
