//! Repair of what went wrong at one end: a pull replica changed or deleted
//! locally, a blob file gone or rotten on the hub or on the spoke. The
//! spoke carries on with everything else, names what is stuck, and both
//! ends are put right by a plain run, `verify --repair` or `fsck --repair`.
#![allow(clippy::unwrap_used)]
mod support;

use support::progress::{assert_coherent, sample_running};
use support::{ADMIN, Server, curl, wait_until};

/// A hub with feed `files` (incoming push) and a spoke pulling it with a
/// long interval, so only explicit runs move anything.
fn pull_pair() -> (Server, Server) {
    let hub = Server::start();
    hub.create_feed("files", "assets");
    let token = hub.incoming("edge", &["files"], "push");
    let spoke = Server::pulling_spoke(&hub, "files", &token);
    (hub, spoke)
}

fn run(spoke: &Server) -> std::process::Output {
    spoke.cli(&["replication", "run", "from-hub", "--wait"])
}

#[test]
fn a_pull_replica_puts_back_what_was_changed_or_deleted_only_here() {
    let (hub, spoke) = pull_pair();
    hub.put_asset("files", "a.txt", b"hub a");
    hub.put_asset("files", "b.txt", b"hub b");
    assert!(run(&spoke).status.success());
    assert!(spoke.verified("from-hub"));

    // Changed and deleted on the spoke only: verify sees the drift.
    spoke.delete_asset("files", "a.txt");
    spoke.put_asset("files", "b.txt", b"changed on the spoke");
    spoke.put_asset("files", "mine.txt", b"only on the spoke");
    assert!(!spoke.verified("from-hub"), "verify missed the local drift");

    // The plan predicts the put-back (and changes nothing).
    let plan = spoke.cli_json(&["replication", "plan", "from-hub", "--json"]);
    let pulled = &plan["feeds"][0]["pulled"];
    assert_eq!(
        (pulled["added"].as_u64(), pulled["updated"].as_u64()),
        (Some(1), Some(1)),
        "{plan:#}"
    );
    assert!(spoke.lacks("files", "a.txt"));

    // A plain run copies what is missing here and puts back the hub's
    // version of what was changed here; what exists only here stays.
    let out = run(&spoke);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        spoke.serves("files", "a.txt", b"hub a"),
        "the local deletion was not undone"
    );
    assert!(
        spoke.serves("files", "b.txt", b"hub b"),
        "the local change was not undone"
    );
    assert!(spoke.serves("files", "mine.txt", b"only on the spoke"));
    let log = spoke.executions("from-hub")[0]["report"]["log"].to_string();
    assert!(log.contains("deleted only here"), "{log}");

    // Now only the spoke's own item differs: repair reports it, and
    // deletes it only when confirmed; then the replica equals its source.
    assert!(!spoke.verified("from-hub"));
    let out = spoke.cli(&["replication", "verify", "from-hub", "--repair"]);
    assert!(!out.status.success());
    assert!(spoke.serves("files", "mine.txt", b"only on the spoke"));
    let out = spoke.cli(&[
        "replication",
        "verify",
        "from-hub",
        "--repair",
        "--confirm-deletes",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(spoke.lacks("files", "mine.txt"));
    assert!(spoke.verified("from-hub"));

    // A local deletion with a repair straight away (no plain run between).
    spoke.delete_asset("files", "b.txt");
    let out = spoke.cli(&["replication", "verify", "from-hub", "--repair"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(spoke.serves("files", "b.txt", b"hub b"));

    // The hub's own later changes still win as always.
    hub.put_asset("files", "a.txt", b"hub a, v2");
    assert!(run(&spoke).status.success());
    assert!(spoke.serves("files", "a.txt", b"hub a, v2"));
    assert!(spoke.verified("from-hub"));
}

#[test]
fn a_blob_missing_on_the_hub_holds_back_only_its_item_until_it_is_restored() {
    let hub = Server::start();
    hub.create_feed("files", "assets");
    let token = hub.incoming("edge", &["files"], "push");
    for i in 0..6 {
        hub.put_asset("files", &format!("f{i}.bin"), format!("content {i}").as_bytes());
    }
    let digests = hub.asset_digests("files", "");
    let lost = digests["f3.bin"].clone();
    hub.remove_blob(&lost);

    // The hub says what is wrong, here and in its health and metrics.
    let (st, body) = hub.get_asset("files", "f3.bin");
    assert_eq!(st, 500);
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains(&lost) && body.contains("missing"), "{body}");
    let (st, health) = curl(&[&format!("{}/health", hub.url)]);
    let health = String::from_utf8_lossy(&health);
    assert_eq!(st, 200);
    assert!(health.contains("degraded") && health.contains(&lost), "{health}");
    let auth = format!("Authorization: Bearer {ADMIN}");
    let (_, metrics) = curl(&["-H", &auth, &format!("{}/metrics", hub.url)]);
    assert!(
        String::from_utf8_lossy(&metrics).contains("ferry_blobs_damaged 1"),
        "{}",
        String::from_utf8_lossy(&metrics)
    );

    // The spoke copies everything else and names the item it could not.
    let spoke = Server::pulling_spoke(&hub, "files", &token);
    let out = run(&spoke);
    assert!(!out.status.success(), "a stuck item must not look like success");
    let err = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(err.contains("f3.bin"), "{err}");
    for i in [0, 1, 2, 4, 5] {
        assert!(spoke.serves("files", &format!("f{i}.bin"), format!("content {i}").as_bytes()));
    }
    assert!(spoke.lacks("files", "f3.bin"));
    let ex = &spoke.executions("from-hub")[0];
    assert_eq!(ex["report"]["stuck"][0]["key"], "f3.bin", "{ex:#}");

    // New content behind it keeps arriving, and the stuck item is retried
    // by each run.
    hub.put_asset("files", "later.bin", b"published later");
    assert!(!run(&spoke).status.success());
    assert!(spoke.serves("files", "later.bin", b"published later"));

    // A client uploads the right bytes again on the hub: the damage is
    // repaired, and the next run brings the item.
    hub.put_asset("files", "f3-again.bin", b"content 3");
    let (st, health) = curl(&[&format!("{}/health", hub.url)]);
    assert_eq!((st, String::from_utf8_lossy(&health).trim()), (200, "ok"));
    let out = run(&spoke);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(spoke.serves("files", "f3.bin", b"content 3"));
    assert!(spoke.verified("from-hub"));
}

#[test]
fn fsck_finds_missing_and_corrupt_blobs_and_repairs_them_from_a_peer() {
    let (hub, spoke) = pull_pair();
    let big: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
    hub.put_asset("files", "big.bin", &big);
    hub.put_asset("files", "small.txt", b"small");
    assert!(run(&spoke).status.success());
    let digests = spoke.asset_digests("files", "");
    let (big_d, small_d) = (digests["big.bin"].clone(), digests["small.txt"].clone());

    assert!(spoke.cli_ok(&["fsck"]).contains("checked"));
    // One blob rots (same length, other bytes), one disappears.
    let mut rotten = big.clone();
    rotten[1000] ^= 0xff;
    spoke.damage_blob(&big_d, &rotten);
    spoke.remove_blob(&small_d);

    let out = spoke.cli_fails(&["fsck"]);
    assert!(out.contains(&format!("corrupt {big_d}")), "{out}");
    assert!(out.contains(&format!("missing {small_d}")), "{out}");
    // A corrupt blob is never served under its digest again.
    let (st, body) = spoke.get_asset("files", "big.bin");
    assert_eq!(st, 500, "{}", String::from_utf8_lossy(&body));

    let out = spoke.cli_ok(&["fsck", "--repair"]);
    assert!(
        out.contains(&format!("repaired {big_d} from replication from-hub")),
        "{out}"
    );
    assert!(
        out.contains(&format!("repaired {small_d} from replication from-hub")),
        "{out}"
    );
    assert!(spoke.serves("files", "big.bin", &big));
    assert!(spoke.serves("files", "small.txt", b"small"));
    spoke.cli_ok(&["fsck"]);
    let (_, health) = curl(&[&format!("{}/health", spoke.url)]);
    assert_eq!(String::from_utf8_lossy(&health).trim(), "ok");

    // Without a peer to ask, repair says so and fails.
    hub.remove_blob(&small_d);
    let out = hub.cli_fails(&["fsck", "--repair"]);
    assert!(out.contains("no outgoing replication"), "{out}");
    assert!(wait_until(5, || hub.cli(&["fsck"]).status.code() == Some(1)));
}

/// A hub pushing to a spoke repairs its damaged blobs from that spoke
/// through the push replication it already has: the spoke gives back what
/// the hub wrote, and nothing of the spoke's own flows to the hub (no
/// content-pulling replication needed as a repair source).
#[test]
fn a_hub_repairs_from_the_spoke_it_pushes_to_and_takes_nothing_else_from_it() {
    let hub = Server::start();
    let spoke = Server::start();
    hub.create_feed("files", "assets");
    spoke.create_feed("files", "assets");
    let token = spoke.incoming("from-hub", &["files"], "pull");
    hub.outgoing(
        "to-edge",
        &["files"],
        &spoke,
        &token,
        "push",
        &["--interval", "3600"],
    );
    let big: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_be_bytes()).collect();
    hub.put_asset("files", "big.bin", &big);
    hub.put_asset("files", "shared.txt", b"from the hub");
    let out = hub.cli(&["replication", "run", "to-edge", "--wait"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(spoke.serves("files", "big.bin", &big));
    // The spoke has content of its own, and changed one of the hub's items.
    spoke.put_asset("files", "edge-only.txt", b"written at the edge");
    spoke.put_asset("files", "shared.txt", b"changed at the edge");
    let edge_digest = spoke.asset_digests("files", "")["edge-only.txt"].clone();

    let digest = hub.asset_digests("files", "")["big.bin"].clone();
    let mut rotten = big.clone();
    rotten[7] ^= 0x01;
    hub.damage_blob(&digest, &rotten);
    let out = hub.cli_ok(&["fsck", "--repair"]);
    assert!(
        out.contains(&format!("repaired {digest} from replication to-edge")),
        "{out}"
    );
    assert!(hub.serves("files", "big.bin", &big));
    assert!(hub.serves("files", "shared.txt", b"from the hub"));
    assert!(hub.lacks("files", "edge-only.txt"));

    // The token of a push target reads back only what its peer wrote.
    let (st, body) = curl(&[
        "-H",
        &format!("Authorization: Bearer {token}"),
        &format!("{}/api/replication/v1/blobs/{edge_digest}", spoke.url),
    ]);
    assert!(
        st == 403 || st == 404,
        "the pushing peer read a blob only the spoke wrote: {st} {}",
        String::from_utf8_lossy(&body)
    );
}

/// An item retried behind the cursor (its blob was missing on the hub,
/// and is there again) moves bytes the hub's count of the bytes ahead
/// left out: they join the bytes to go as they come, which stay known
/// for the rest of the run (they went unknown once the moved bytes ran
/// past the total).
#[test]
fn a_retried_item_keeps_the_bytes_to_go_known() {
    let hub = Server::start();
    hub.create_feed("files", "assets");
    let token = hub.incoming("edge", &["files"], "push");
    let body = |seed: u8| -> Vec<u8> { (0..200_000u32).map(|i| (i % 251) as u8 ^ seed).collect() };
    hub.put_asset("files", "big.bin", &body(1));
    let lost = hub.asset_digests("files", "")["big.bin"].clone();
    hub.remove_blob(&lost);
    let spoke = Server::pulling_spoke(&hub, "files", &token);
    assert!(!run(&spoke).status.success());
    assert!(spoke.lacks("files", "big.bin"));
    spoke.cli_ok(&[
        "replication",
        "update",
        "from-hub",
        "--bandwidth-limit",
        "65536",
        "--inline-max-bytes",
        "0",
    ]);
    // The lost file put back (a restore from a backup) and checked: the
    // hub's log has nothing new, so the run's count of bytes ahead is 0.
    std::fs::write(hub.blob_path(&lost), body(1)).unwrap();
    hub.cli_ok(&["fsck"]);
    let runner = {
        let url = spoke.url.clone();
        std::thread::spawn(move || {
            std::process::Command::new(support::bin())
                .args(["replication", "run", "from-hub", "--wait"])
                .env("FERRY_URL", url)
                .env("FERRY_API_KEY", ADMIN)
                .output()
                .unwrap()
        })
    };
    let seen = sample_running(&spoke, "from-hub", || runner.is_finished());
    let out = runner.join().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(spoke.serves("files", "big.bin", &body(1)));
    assert!(seen.len() >= 5, "{seen:#?}");
    assert_coherent(&seen);
}
