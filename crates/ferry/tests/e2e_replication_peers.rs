//! The hub's view of its spokes with real instances (issue 16): two
//! spokes pulling from one hub are listed by `ferry replication peers`
//! with the names they report, their cursors and lag; a spoke killed
//! turns stale in the listing and in the metrics, while the other stays
//! fresh.
#![allow(clippy::unwrap_used)]
mod support;

use serde_json::Value;
use support::{Server, curl, wait_until};

fn peers(hub: &Server) -> Vec<Value> {
    let out = hub.cli_ok(&["replication", "peers", "edge", "--json"]);
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn named<'a>(list: &'a [Value], name: &str) -> Option<&'a Value> {
    list.iter().find(|p| p["name"] == name)
}

#[test]
fn a_hub_lists_its_spokes_and_flags_the_one_that_stopped() {
    let hub = Server::start_with(&[("FERRY_PEER_STALE_INTERVALS", "2")]);
    hub.create_feed("files", "assets");
    let key = hub.key("ci", "write");
    let token = hub.incoming("edge", &["files"], "push");
    let mut spokes = Vec::new();
    for name in ["site-a", "site-b"] {
        let s = Server::start_with(&[("FERRY_INSTANCE_NAME", name)]);
        s.create_feed("files", "assets");
        s.outgoing("from-hub", &["files"], &hub, &token, "pull", &["--interval", "1"]);
        spokes.push(s);
    }
    let url = format!("{}/assets/files/readme.txt", hub.url);
    let (st, _) = support::curl_stdin(&["-T", "-", "-u", &format!("ci:{key}"), &url], b"hello");
    assert_eq!(st, 201);

    // Both spokes listed by name, each caught up with the file.
    assert!(
        wait_until(30, || {
            let list = peers(&hub);
            ["site-a", "site-b"].iter().all(|n| {
                named(&list, n).is_some_and(|p| {
                    p["feeds"]["files"]["lag_changes"] == 0
                        && p["feeds"]["files"]["cursor"].as_i64().unwrap_or(0) >= 1
                        && p["stale"] == false
                })
            })
        }),
        "spokes not listed as caught up: {:?}",
        peers(&hub)
    );
    let list = peers(&hub);
    let a = named(&list, "site-a").unwrap();
    assert_eq!(a["interval_secs"], 1);
    assert_eq!(a["address"], "127.0.0.1");
    assert!(a["ferry_version"].as_str().unwrap().contains('.'));
    let text = hub.cli_ok(&["replication", "peers", "edge"]);
    assert!(text.contains("site-a") && text.contains("site-b"), "{text}");

    // site-a is killed: stale after two of its 1 s intervals; site-b not.
    spokes[0].kill();
    assert!(
        wait_until(30, || named(&peers(&hub), "site-a")
            .is_some_and(|p| p["stale"] == true)),
        "site-a never turned stale: {:?}",
        peers(&hub)
    );
    let list = peers(&hub);
    assert_eq!(named(&list, "site-b").unwrap()["stale"], false);
    assert!(hub.cli_ok(&["replication", "peers", "edge"]).contains("STALE"));
    let (st, body) = curl(&[
        "-H",
        &format!("authorization: Bearer {}", support::ADMIN),
        &format!("{}/metrics", hub.url),
    ]);
    assert_eq!(st, 200);
    let m = String::from_utf8_lossy(&body);
    let stale = |name: &str| {
        m.lines()
            .find(|l| {
                l.starts_with("ferry_replication_peer_stale") && l.contains(&format!("name=\"{name}\""))
            })
            .map(|l| l.ends_with(" 1"))
    };
    assert_eq!(stale("site-a"), Some(true), "{m}");
    assert_eq!(stale("site-b"), Some(false), "{m}");

    // The operator forgets the dead spoke: gone from the listing.
    let id = named(&peers(&hub), "site-a").unwrap()["instance_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = hub.cli_ok(&["replication", "peers", "edge", "--forget", &id]);
    assert!(out.contains(&id), "{out}");
    assert!(named(&peers(&hub), "site-a").is_none(), "{:?}", peers(&hub));
    assert!(named(&peers(&hub), "site-b").is_some());
    let err = hub.cli_fails(&["replication", "peers", "edge", "--forget", &id]);
    assert!(err.contains("404") && err.contains("no peer"), "{err}");
    let err = hub.cli_fails(&["replication", "peers", "edge", "--forget", "../../keys/x"]);
    assert!(err.contains("instance id"), "{err}");
}

fn metrics(s: &Server) -> String {
    let (st, body) = curl(&[
        "-H",
        &format!("authorization: Bearer {}", support::ADMIN),
        &format!("{}/metrics", s.url),
    ]);
    assert_eq!(st, 200);
    String::from_utf8_lossy(&body).into_owned()
}

/// Bytes the hub has sent in replication `name` (its
/// `ferry_replication_peer_bytes_total` counter, direction `sent`).
fn sent_bytes(hub: &Server, name: &str) -> u64 {
    let label = format!("replication=\"{name}\"");
    metrics(hub)
        .lines()
        .filter(|l| {
            l.starts_with("ferry_replication_peer_bytes_total{")
                && l.contains("direction=\"sent\"")
                && l.contains(&label)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A spoke that comes back with a token revoked since is refused, and the
/// hub's view says so as its last error (not only in the hub's log); a new
/// token settles it.
#[test]
fn a_spoke_refused_for_a_revoked_token_shows_it_as_its_last_error() {
    let hub = Server::start();
    hub.create_feed("files", "assets");
    let token = hub.incoming("edge", &["files"], "push");
    hub.put_asset("files", "a.txt", b"a");
    let mut spoke = Server::start_with(&[("FERRY_INSTANCE_NAME", "site-e")]);
    spoke.create_feed("files", "assets");
    spoke.outgoing(
        "from-hub",
        &["files"],
        &hub,
        &token,
        "pull",
        &["--interval", "3600"],
    );
    assert!(wait_until(30, || spoke.serves("files", "a.txt", b"a")));
    // Revoked while the spoke is down: no request of it is under way to
    // be cut (that case is the test above); it hears of it when it starts.
    spoke.stop();
    let id = &token[4..20];
    hub.cli_ok(&["replication", "revoke", "edge", id]);
    spoke.restart();
    hub.put_asset("files", "b.txt", b"b");
    let _ = spoke.cli(&["replication", "run", "from-hub", "--wait"]);
    assert!(spoke.lacks("files", "b.txt"));
    assert!(
        wait_until(20, || named(&peers(&hub), "site-e").is_some_and(|p| {
            let m = p["last_error"]["message"].as_str().unwrap_or("");
            m.contains(&format!("sync token {id} was revoked")) && m.contains("refused")
        })),
        "{:?}",
        peers(&hub)
    );
    let text = hub.cli_ok(&["replication", "peers", "edge"]);
    assert!(text.contains("was revoked"), "{text}");

    // Another revoked token, presented whole under this spoke's instance
    // id, does not pin its refusal on it: the spoke never used it.
    let other = hub.sync_token("edge");
    hub.cli_ok(&["replication", "revoke", "edge", &other[4..20]]);
    let instance = named(&peers(&hub), "site-e").unwrap()["instance_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (st, body) = support::curl(&[
        "-X",
        "POST",
        "-H",
        &format!("authorization: Bearer {other}"),
        "-H",
        &format!("ferry-instance: {instance}"),
        "-H",
        "content-type: application/json",
        "-d",
        "{}",
        &format!("{}/api/replication/v1/handshake", hub.url),
    ]);
    assert_eq!(st, 401, "{}", String::from_utf8_lossy(&body));
    let listed = named(&peers(&hub), "site-e").unwrap()["last_error"]["message"].clone();
    assert!(
        listed
            .as_str()
            .is_some_and(|m| m.contains(id) && !m.contains(&other[4..20])),
        "{listed}"
    );

    let fresh = hub.sync_token("edge");
    spoke.cli_ok(&["replication", "update", "from-hub", "--token", &fresh]);
    spoke.cli_ok(&["replication", "run", "from-hub", "--wait"]);
    assert!(wait_until(30, || spoke.serves("files", "b.txt", b"b")));
    assert!(
        wait_until(20, || named(&peers(&hub), "site-e")
            .is_some_and(|p| p["last_error"].is_null())),
        "{:?}",
        peers(&hub)
    );
}

/// A spoke's lag gauges show each feed pair it follows, and go from the
/// next scrape once the replication is deleted; deleting a replication
/// that never ran (on the hub) adds none.
#[test]
fn lag_gauges_follow_replications_and_go_with_them() {
    let hub = Server::start();
    hub.create_feed("files", "assets");
    let token = hub.incoming("edge", &["files"], "push");
    hub.put_asset("files", "a.txt", b"a");
    let spoke = Server::pulling_spoke(&hub, "files", &token);
    assert!(wait_until(30, || spoke.serves("files", "a.txt", b"a")));
    spoke.cli_ok(&["replication", "run", "from-hub", "--wait"]);
    let line = "ferry_replication_lag_changes{replication=\"from-hub\",feed=\"files\"} 0";
    assert!(metrics(&spoke).contains(line), "{}", metrics(&spoke));

    spoke.cli_ok(&["replication", "delete", "from-hub"]);
    let m = metrics(&spoke);
    assert!(!m.contains("lag_changes{replication=\"from-hub\""), "{m}");
    assert!(!m.contains("lag_seconds{replication=\"from-hub\""), "{m}");

    hub.cli_ok(&[
        "replication",
        "create",
        "tmp",
        "--incoming",
        "--mode",
        "pull",
        "--feed",
        "files",
    ]);
    hub.cli_ok(&["replication", "delete", "tmp"]);
    let m = metrics(&hub);
    assert!(!m.contains("replication=\"tmp\""), "{m}");
}

/// A blob batch the hub cuts while sending it (here: the blob is found
/// damaged as it is hashed on its way out) is that spoke's last error in
/// the hub's view, saying how far the batch got and why.
#[test]
fn a_batch_cut_while_sending_is_the_peers_last_error() {
    let hub = Server::start();
    hub.create_feed("files", "assets");
    let token = hub.incoming("edge", &["files"], "push");
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    hub.put_asset("files", "big.bin", &big);
    let digest = hub.asset_digests("files", "")["big.bin"].clone();
    let mut rotten = big.clone();
    rotten[2_500_000] ^= 0x01;
    hub.damage_blob(&digest, &rotten);

    let spoke = Server::start_with(&[("FERRY_INSTANCE_NAME", "site-c")]);
    spoke.create_feed("files", "assets");
    spoke.outgoing(
        "from-hub",
        &["files"],
        &hub,
        &token,
        "pull",
        &["--interval", "3600"],
    );
    let _ = spoke.cli(&["replication", "run", "from-hub", "--wait"]);
    assert!(
        spoke.lacks("files", "big.bin"),
        "a damaged blob was served on the spoke"
    );
    let hex = digest.trim_start_matches("sha256:");
    assert!(
        wait_until(20, || named(&peers(&hub), "site-c").is_some_and(|p| {
            let m = p["last_error"]["message"].as_str().unwrap_or("");
            m.contains("a blob batch was cut after 0 of its 1 blobs were sent whole") && m.contains(hex)
        })),
        "{:?}",
        peers(&hub)
    );
}

/// A batch cut because the spoke's token was revoked while a slow spoke
/// (its bandwidth cap) was taking it: the hub's view says so, with the
/// revocation as the reason.
#[test]
fn a_batch_cut_by_a_revocation_is_the_peers_last_error() {
    let hub = Server::start();
    hub.create_feed("files", "assets");
    let token = hub.incoming("edge", &["files"], "push");
    let big: Vec<u8> = (0..30_000_000u32).map(|i| (i % 241) as u8).collect();
    hub.put_asset("files", "big.bin", &big);
    let spoke = Server::start_with(&[("FERRY_INSTANCE_NAME", "site-d")]);
    spoke.create_feed("files", "assets");
    spoke.outgoing(
        "from-hub",
        &["files"],
        &hub,
        &token,
        "pull",
        &["--interval", "3600", "--bandwidth-limit", "1000000"],
    );
    // Revoked while the batch is under way (not before it was asked for:
    // on a loaded machine the spoke may take seconds to get there).
    assert!(
        wait_until(30, || sent_bytes(&hub, "edge") >= 1_000_000),
        "{}",
        metrics(&hub)
    );
    hub.cli_ok(&["replication", "revoke", "edge", &token[4..20]]);
    assert!(
        wait_until(20, || named(&peers(&hub), "site-d").is_some_and(|p| {
            let m = p["last_error"]["message"].as_str().unwrap_or("");
            m.contains("a blob batch was cut after 0 of its 1 blobs were sent whole")
                && m.contains("revoked")
                && p["last_error"]["transfer"] == true
        })),
        "{:?}",
        peers(&hub)
    );
    assert!(spoke.lacks("files", "big.bin"));

    // The file goes and the spoke gets a new token: it follows again
    // with no batch to send, and the cut (of a token it no longer uses)
    // is settled by its handshake under the new one.
    hub.delete_asset("files", "big.bin");
    let fresh = hub.sync_token("edge");
    spoke.cli_ok(&["replication", "update", "from-hub", "--token", &fresh]);
    spoke.cli_ok(&["replication", "run", "from-hub", "--wait"]);
    assert!(
        wait_until(20, || named(&peers(&hub), "site-d")
            .is_some_and(|p| p["last_error"].is_null() && p["token"] == fresh[4..20])),
        "{:?}",
        peers(&hub)
    );
}

/// A spoke whose data directory was copied to start a second one (a cloned
/// machine): the two take turns under one instance id, and the hub points
/// it out in the listing, the text, the metrics and its log; `ferry
/// instance new-id` on the copy and a restart make it a peer of its own.
#[test]
fn a_copied_spoke_is_pointed_out_until_it_takes_an_id_of_its_own() {
    let hub = Server::start();
    hub.create_feed("files", "assets");
    let token = hub.incoming("edge", &["files"], "push");
    hub.put_asset("files", "a.txt", b"a");
    // Metadata and blobs in its data directory, whatever the test pass's
    // backend: the directory is what gets copied.
    let env = [
        ("FERRY_DATABASE_URL", ""),
        support::FS_BLOBS,
        ("FERRY_INSTANCE_NAME", "site-a"),
    ];
    let mut a = Server::start_with(&env);
    a.create_feed("files", "assets");
    a.outgoing("from-hub", &["files"], &hub, &token, "pull", &["--interval", "1"]);
    assert!(wait_until(30, || a.serves("files", "a.txt", b"a")));
    a.stop();
    let b = a.start_copy();
    a.restart();
    let id = a.cli_json(&["instance", "show", "--json"])["instance_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        b.cli_json(&["instance", "show", "--json"])["instance_id"],
        id.as_str()
    );

    // Both follow the hub under one id: pointed out, naming two processes.
    let shared = |list: &[Value]| {
        list.iter()
            .find(|p| p["instance_id"] == id.as_str())
            .and_then(|p| p.get("id_shared").cloned())
    };
    assert!(
        wait_until(60, || shared(&peers(&hub)).is_some_and(|s| s["processes"] == 2)),
        "a copied spoke was not pointed out: {:?}",
        peers(&hub)
    );
    let sh = shared(&peers(&hub)).unwrap();
    assert!(
        sh["addresses"].as_array().unwrap().contains(&"127.0.0.1".into()),
        "{sh}"
    );
    assert!(
        sh["message"].as_str().unwrap().contains("ferry instance new-id"),
        "{sh}"
    );
    let text = hub.cli_ok(&["replication", "peers", "edge"]);
    assert!(
        text.contains("WARNING") && text.contains("copies of one data directory"),
        "{text}"
    );
    let line = |m: &str| {
        m.lines()
            .find(|l| l.starts_with("ferry_replication_peer_id_shared{") && l.contains(&id))
            .map(str::to_owned)
    };
    let m = hub.metrics();
    assert!(line(&m).is_some_and(|l| l.ends_with(" 1")), "{m}");
    // The copies hear it too, in `replication list`.
    // (with the next page the hub answers them)
    hub.put_asset("files", "wake.txt", b"w");
    assert!(
        wait_until(60, || [&a, &b].iter().all(|s| s
            .cli_ok(&["replication", "list"])
            .contains("WARNING from the other instance"))),
        "{}",
        b.cli_ok(&["replication", "list"])
    );

    // The copy takes an id of its own at its next start.
    let out = b.cli_ok(&["instance", "new-id"]);
    assert!(out.contains("next start takes instance id"), "{out}");
    let shown = b.cli_json(&["instance", "show", "--json"]);
    let new_id = shown["next_instance_id"].as_str().unwrap().to_owned();
    assert_ne!(new_id, id);
    assert_eq!(
        shown["instance_id"],
        id.as_str(),
        "the running id changes only at a restart"
    );
    let mut b = b;
    b.restart();
    assert_eq!(
        b.cli_json(&["instance", "show", "--json"])["instance_id"],
        new_id.as_str()
    );
    assert!(
        b.cli_json(&["instance", "show", "--json"])
            .get("next_instance_id")
            .is_none()
    );
    // Listed apart, and both still follow the hub.
    hub.put_asset("files", "b.txt", b"b");
    assert!(wait_until(30, || a.serves("files", "b.txt", b"b")
        && b.serves("files", "b.txt", b"b")));
    assert!(
        wait_until(30, || peers(&hub)
            .iter()
            .any(|p| p["instance_id"] == new_id.as_str())),
        "{:?}",
        peers(&hub)
    );
}

/// One stamp with two contents (what two instances sharing an instance id
/// write in the same instant; made here by editing the spoke's database
/// while it is stopped): the spoke's execution says so, naming the item
/// and the id, and counts it as a conflict; writing the item again on the
/// hub settles it everywhere.
#[test]
fn one_stamp_with_two_contents_is_said_and_settled_by_the_next_write() {
    let hub = Server::start();
    hub.create_feed("files", "assets");
    let token = hub.incoming("edge", &["files"], "push");
    hub.put_asset("files", "x.txt", b"the hub's x");
    hub.put_asset("files", "y.txt", b"something else");
    let mut spoke = Server::start_with(&[("FERRY_DATABASE_URL", ""), support::FS_BLOBS]);
    spoke.create_feed("files", "assets");
    spoke.outgoing(
        "from-hub",
        &["files"],
        &hub,
        &token,
        "pull",
        &["--interval", "3600"],
    );
    assert!(wait_until(30, || spoke.serves("files", "x.txt", b"the hub's x")));
    spoke.stop();
    {
        let db = rusqlite::Connection::open(spoke.data.join("ferry.db")).unwrap();
        db.execute_batch(
            "UPDATE items SET blobs = (SELECT blobs FROM items WHERE key = 'y.txt') WHERE key = 'x.txt';
             DELETE FROM item_blobs WHERE key = 'x.txt';
             INSERT INTO item_blobs SELECT feed_id, 'x.txt', digest FROM item_blobs WHERE key = 'y.txt';",
        )
        .unwrap();
    }
    spoke.restart();
    assert!(spoke.serves("files", "x.txt", b"something else"), "the edit took");
    spoke.cli_ok(&["replication", "run", "from-hub", "--full", "--wait"]);
    let last = spoke.executions("from-hub")[0].clone();
    let said = last["report"]["log"].as_array().unwrap().iter().any(|l| {
        let m = l["message"].as_str().unwrap_or("");
        l["level"] == "error"
            && m.contains("x.txt")
            && m.contains("same stamp")
            && m.contains("ferry instance new-id")
    });
    assert!(said, "{last:#?}");
    let conflicts: u64 = last["report"]["feeds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["pulled"]["conflicts"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(conflicts, 1, "{last:#?}");
    // verify compares contents too: the versions agree, x.txt does not,
    // and it is named, in the text and in the API.
    let out = spoke.cli_fails(&["replication", "verify", "from-hub"]);
    assert!(
        out.contains("files = files: DIFFERENT (2 items here, 2 there)")
            && out.contains("1 items are at the same version on both ends with other contents (x.txt)"),
        "{out}"
    );
    let out = spoke.cli(&["replication", "verify", "from-hub", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["feeds"][0]["contents_compared"], true, "{v:#}");
    assert_eq!(
        v["feeds"][0]["same_version_other_content"],
        serde_json::json!(["x.txt"]),
        "{v:#}"
    );
    // The next write of the item on the hub reaches the spoke as usual,
    // and both ends are then the same.
    hub.put_asset("files", "x.txt", b"the hub's x, again");
    spoke.cli_ok(&["replication", "run", "from-hub", "--wait"]);
    assert!(spoke.serves("files", "x.txt", b"the hub's x, again"));
    let out = spoke.cli_ok(&["replication", "verify", "from-hub"]);
    assert!(
        out.contains("files = files: same (2 items here, 2 there)"),
        "{out}"
    );
}

/// `verify` on a pushing side whose other end only receives: the ends
/// differing (a file written on the receiving end only) is said as
/// DIFFERENT with both counts. It answered a 403 instead: naming the
/// items held at one version with two contents reads the other side's
/// entries, which a receiving side does not let it; that is asked only
/// when the versions agree, and a refusal leaves them unnamed.
#[test]
fn verify_on_a_pushing_side_says_the_ends_differ() {
    let target = Server::start();
    target.create_feed("files", "assets");
    let token = target.incoming("from-hub", &["files"], "pull");
    let hub = Server::start();
    hub.create_feed("files", "assets");
    hub.put_asset("files", "a.txt", b"from the hub");
    hub.outgoing(
        "to-target",
        &["files"],
        &target,
        &token,
        "push",
        &["--interval", "3600"],
    );
    assert!(wait_until(30, || target.serves(
        "files",
        "a.txt",
        b"from the hub"
    )));
    let out = hub.cli_ok(&["replication", "verify", "to-target"]);
    assert!(
        out.contains("files = files: same (1 items here, 1 there)"),
        "{out}"
    );
    target.put_asset("files", "only-there.txt", b"written on the target");
    let out = hub.cli_fails(&["replication", "verify", "to-target"]);
    assert!(
        out.contains("files = files: DIFFERENT (1 items here, 2 there)") && !out.contains("403"),
        "{out}"
    );
}

/// Items a spoke holds from before its hub's filter was narrowed are
/// outside what the replication carries: `verify` leaves them out of the
/// comparison and says how many, and a repair neither offers to delete
/// them nor deletes them with `--confirm-deletes` (it said "absent on the
/// other side" and deleted items the hub still serves).
#[test]
fn items_outside_the_hubs_filter_are_not_compared_nor_deleted() {
    let hub = Server::start();
    hub.create_feed("files", "assets");
    let token = hub.incoming("edge", &["files"], "push");
    hub.put_asset("files", "dir/a.txt", b"a");
    hub.put_asset("files", "other/b.txt", b"b");
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
    assert!(wait_until(30, || spoke.serves("files", "other/b.txt", b"b")));
    hub.cli_ok(&["replication", "update", "edge", "--include", "dir/*"]);
    let out = spoke.cli_ok(&["replication", "verify", "from-hub"]);
    assert!(
        out.contains("files = files: same (1 items here, 1 there)")
            && out.contains("1 items here are outside the other instance's filter"),
        "{out}"
    );
    let out = spoke.cli_ok(&[
        "replication",
        "verify",
        "from-hub",
        "--repair",
        "--confirm-deletes",
    ]);
    assert!(out.contains("same"), "{out}");
    assert!(spoke.serves("files", "other/b.txt", b"b"), "deleted on the spoke");
    // Nor does a full comparison that may delete what is absent there.
    spoke.cli_ok(&[
        "replication",
        "run",
        "from-hub",
        "--full",
        "--confirm-deletes",
        "--wait",
    ]);
    assert!(
        spoke.serves("files", "other/b.txt", b"b"),
        "deleted by a full run"
    );
    let last = &spoke.executions("from-hub")[0];
    assert!(
        last["report"]["log"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["message"]
                .as_str()
                .unwrap_or("")
                .contains("1 items here are outside the other side's filter; kept")),
        "{last:#}"
    );
    // A difference within the filter is still one.
    hub.put_asset("files", "dir/c.txt", b"c");
    spoke.cli_ok(&["replication", "run", "from-hub", "--wait"]);
    spoke.put_asset("files", "dir/only-here.txt", b"x");
    let out = spoke.cli_fails(&["replication", "verify", "from-hub"]);
    assert!(out.contains("DIFFERENT (3 items here, 2 there)"), "{out}");
}

/// The peer of `list` named `name`, if listed once; panics when listed
/// twice (one instance is one peer).
fn only<'a>(list: &'a [Value], name: &str) -> Option<&'a Value> {
    let found: Vec<&Value> = list.iter().filter(|p| p["name"] == name).collect();
    assert!(found.len() <= 1, "{name} listed {} times: {list:?}", found.len());
    found.first().copied()
}

/// The value of gauge `ferry_replication_peer_stale` for the peer named
/// `name`.
fn stale_gauge(hub: &Server, name: &str) -> Option<String> {
    metrics(hub)
        .lines()
        .find(|l| l.starts_with("ferry_replication_peer_stale{") && l.contains(&format!("name=\"{name}\"")))
        .map(|l| l.rsplit(' ').next().unwrap_or_default().to_owned())
}

/// Token rotation: the hub's incoming replication gets a second token and
/// the spokes switch to it one at a time, while the old one is still
/// valid, then the old one is revoked. Each spoke stays one peer, fresh,
/// showing the token it uses now: contact under any accepted token
/// refreshes the instance (it was listed STALE under the old token,
/// contact under the new one not shown, until the old was revoked).
#[test]
fn spokes_rotating_their_token_one_at_a_time_stay_fresh() {
    let hub = Server::start_with(&[("FERRY_PEER_STALE_INTERVALS", "2")]);
    hub.create_feed("files", "assets");
    let old = hub.incoming("edge", &["files"], "push");
    let mut spokes = Vec::new();
    for name in ["spoke-one", "spoke-two"] {
        let s = Server::start_with(&[("FERRY_INSTANCE_NAME", name)]);
        s.create_feed("files", "assets");
        s.outgoing("from-hub", &["files"], &hub, &old, "pull", &["--interval", "1"]);
        spokes.push(s);
    }
    let names = ["spoke-one", "spoke-two"];
    assert!(
        wait_until(30, || {
            let list = peers(&hub);
            names
                .iter()
                .all(|n| only(&list, n).is_some_and(|p| p["stale"] == false))
        }),
        "{:?}",
        peers(&hub)
    );
    let new = hub.sync_token("edge");
    let (old_id, new_id) = (&old[4..20], &new[4..20]);
    let all_fresh = |hub: &Server| {
        let list = peers(hub);
        for n in names {
            let p = only(&list, n).unwrap_or_else(|| panic!("{n} not listed: {list:?}"));
            assert_eq!(p["stale"], false, "{n} stale while it replicates: {list:?}");
            assert_eq!(stale_gauge(hub, n).as_deref(), Some("0"), "{}", metrics(hub));
        }
        list
    };

    // spoke-one switches; both tokens are valid.
    spokes[0].cli_ok(&["replication", "update", "from-hub", "--token", &new]);
    assert!(
        wait_until(30, || only(&peers(&hub), "spoke-one")
            .is_some_and(|p| p["token"] == new_id)),
        "contact under the new token not shown: {:?}",
        peers(&hub)
    );
    // Over several stale thresholds (two 1 s intervals): never stale.
    for _ in 0..6 {
        std::thread::sleep(std::time::Duration::from_secs(1));
        let list = all_fresh(&hub);
        assert_eq!(only(&list, "spoke-one").unwrap()["token"], new_id, "{list:?}");
        assert_eq!(only(&list, "spoke-two").unwrap()["token"], old_id, "{list:?}");
    }
    let text = hub.cli_ok(&["replication", "peers", "edge"]);
    assert!(!text.contains("STALE"), "{text}");

    // spoke-two follows; the old token is revoked.
    spokes[1].cli_ok(&["replication", "update", "from-hub", "--token", &new]);
    assert!(
        wait_until(30, || only(&peers(&hub), "spoke-two")
            .is_some_and(|p| p["token"] == new_id)),
        "{:?}",
        peers(&hub)
    );
    hub.cli_ok(&["replication", "revoke", "edge", old_id]);
    for _ in 0..4 {
        std::thread::sleep(std::time::Duration::from_secs(1));
        let list = all_fresh(&hub);
        assert!(
            names.iter().all(|n| only(&list, n).unwrap()["token"] == new_id),
            "{list:?}"
        );
    }
}

/// A `replication create` on the spoke refused by the hub (a mode
/// mismatch, probed with a handshake as `config apply` probes) is that
/// peer's last error on the hub only until the spoke's next successful
/// contact: here a push of the running replication, within the 5 minutes
/// its handshake is reused (the error stayed through every execution
/// until the next handshake).
#[test]
fn a_refused_probe_is_the_last_error_only_until_the_next_success() {
    let hub = Server::start();
    hub.create_feed("files", "assets");
    let token = hub.incoming("edge", &["files"], "pull");
    let spoke = Server::start_with(&[("FERRY_INSTANCE_NAME", "spoke-one")]);
    spoke.create_feed("files", "assets");
    spoke.outgoing("to-hub", &["files"], &hub, &token, "push", &["--interval", "1"]);
    spoke.put_asset("files", "a.txt", b"a");
    assert!(wait_until(30, || hub.serves("files", "a.txt", b"a")));
    assert!(
        wait_until(10, || only(&peers(&hub), "spoke-one")
            .is_some_and(|p| p["last_error"].is_null())),
        "{:?}",
        peers(&hub)
    );

    // Mode mismatch: refused, and shown on the hub.
    let err = spoke.cli_fails(&[
        "replication",
        "create",
        "wrong",
        "--outgoing",
        &hub.url,
        "--token",
        &token,
        "--mode",
        "pull",
        "--feed",
        "files",
    ]);
    assert!(err.contains("mode mismatch"), "{err}");
    let list = peers(&hub);
    let p = only(&list, "spoke-one").unwrap();
    assert!(
        p["last_error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("mode mismatch")),
        "{p}"
    );
    // A pushing spoke with nothing to send says nothing: still its latest
    // outcome.
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(!only(&peers(&hub), "spoke-one").unwrap()["last_error"].is_null());

    // The running replication pushes again: superseded.
    spoke.put_asset("files", "b.txt", b"b");
    assert!(wait_until(30, || hub.serves("files", "b.txt", b"b")));
    assert!(
        wait_until(10, || only(&peers(&hub), "spoke-one")
            .is_some_and(|p| p["last_error"].is_null())),
        "a refusal outlived a later successful push: {:?}",
        peers(&hub)
    );
    let text = hub.cli_ok(&["replication", "peers", "edge"]);
    assert!(!text.contains("last error"), "{text}");
}

/// One spoke with two outgoing replications to one incoming replication,
/// every 20 s and every 1 s: the peer's interval (and so its stale
/// threshold) is the larger one whichever shook hands last (it flipped to
/// the one heard last, 1 s here, and the threshold with it).
#[test]
fn two_replications_of_one_spoke_give_it_one_stable_interval() {
    let hub = Server::start_with(&[("FERRY_PEER_STALE_INTERVALS", "2")]);
    hub.create_feed("files", "assets");
    hub.create_feed("docs", "assets");
    let token = hub.incoming("edge", &["files", "docs"], "push");
    let spoke = Server::start_with(&[("FERRY_INSTANCE_NAME", "spoke-one")]);
    spoke.create_feed("files", "assets");
    spoke.create_feed("docs", "assets");
    spoke.outgoing("slow", &["docs"], &hub, &token, "pull", &["--interval", "20"]);
    assert!(
        wait_until(30, || only(&peers(&hub), "spoke-one")
            .is_some_and(|p| p["feeds"]["docs"].is_object())),
        "{:?}",
        peers(&hub)
    );
    assert_eq!(only(&peers(&hub), "spoke-one").unwrap()["interval_secs"], 20);
    // The fast one shakes hands last.
    spoke.outgoing("fast", &["files"], &hub, &token, "pull", &["--interval", "1"]);
    assert!(
        wait_until(30, || only(&peers(&hub), "spoke-one")
            .is_some_and(|p| p["feeds"]["files"].is_object())),
        "{:?}",
        peers(&hub)
    );
    for _ in 0..3 {
        let list = peers(&hub);
        let p = only(&list, "spoke-one").unwrap();
        assert_eq!(p["interval_secs"], 20, "{p}");
        let heard: Vec<u64> = p["intervals"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["secs"].as_u64().unwrap())
            .collect();
        assert!(heard.contains(&1) && heard.contains(&20), "{p}");
        assert_eq!(p["stale"], false, "{p}");
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    // The fast one is deleted: the slow one's interval still counts.
    spoke.cli_ok(&["replication", "delete", "fast"]);
    for _ in 0..5 {
        std::thread::sleep(std::time::Duration::from_secs(1));
        let list = peers(&hub);
        let p = only(&list, "spoke-one").unwrap();
        assert_eq!(p["interval_secs"], 20, "{p}");
        assert_eq!(p["stale"], false, "{p}");
        assert_eq!(stale_gauge(&hub, "spoke-one").as_deref(), Some("0"));
    }
}
