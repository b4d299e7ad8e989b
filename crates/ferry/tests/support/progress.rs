//! A running replication execution's progress as `replication list
//! --json` shows it, sampled while it runs, and what every sample must
//! hold.
#![allow(dead_code)]

use serde_json::Value;

use super::Server;

/// Samples `name`'s running execution on `s` every 100 ms until `done`
/// says so (or 90 s pass): the `running` objects seen.
pub fn sample_running(s: &Server, name: &str, done: impl Fn() -> bool) -> Vec<Value> {
    let mut seen = Vec::new();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while !done() && std::time::Instant::now() < until {
        let running = s
            .cli_json(&["replication", "list", "--json"])
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["name"] == name)
            .map(|r| r["running"].clone())
            .unwrap_or_default();
        if running.is_object() {
            seen.push(running);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    seen
}

/// What every sample of a running execution must hold: never more items
/// done than to go through, and once bytes move, the bytes to go known
/// (they ran past the total when changes written during the execution
/// moved too, and the total, the bytes to go and the ETA by bytes went
/// unknown: "22/21 items", or "about 0 s left (by items)" with megabytes
/// still to move).
pub fn assert_coherent(seen: &[Value]) {
    for r in seen {
        assert_items_within_total(r);
        if r["bytes_done"].as_u64().unwrap() > 0 {
            assert!(
                r["bytes_remaining"].is_u64(),
                "bytes to go unknown while bytes move: {r:#}"
            );
            if r["bytes_remaining"].as_u64() > Some(0) {
                assert_eq!(r["eta_basis"], "bytes", "{r:#}");
            }
        }
    }
}

/// What every sample of a pull filtered on the pulling side must hold:
/// never more items done than to go through, and no byte estimate at any
/// point — the other side counts its whole feed's backlog, not what the
/// filter lets through, so bytes to go and an ETA by bytes would be wrong
/// (README: "a filtered pull shows no byte estimate").
pub fn assert_coherent_unestimated(seen: &[Value]) {
    for r in seen {
        assert_items_within_total(r);
        assert!(
            r["bytes_remaining"].is_null(),
            "a byte estimate of a filtered pull: {r:#}"
        );
        assert_ne!(r["eta_basis"], "bytes", "{r:#}");
    }
}

/// Never more items done than to go through, in one sample.
fn assert_items_within_total(r: &Value) {
    let (done, total) = (
        r["items_done"].as_u64().unwrap(),
        r["items_total"].as_u64().unwrap(),
    );
    assert!(done <= total, "{done}/{total} items: {r:#}");
}
