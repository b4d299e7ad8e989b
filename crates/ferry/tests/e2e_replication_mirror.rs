//! Mirrors end to end: two writable instances converge, concurrent writes to
//! one key resolve the same way on both (later stamp wins, logged as a
//! conflict), and a ring of three mirrors converges.
#![allow(clippy::unwrap_used)]
mod support;

use serde_json::Value;
use support::{Server, wait_until};

const SYNC: u64 = 30;

/// Whether every instance serves `path` with the same bytes as the first one.
fn same_everywhere(instances: &[&Server], path: &str) -> bool {
    let (st, body) = instances[0].get_asset("files", path);
    st == 200 && instances[1..].iter().all(|s| s.serves("files", path, &body))
}

fn conflicts(executions: &[Value]) -> u64 {
    executions
        .iter()
        .flat_map(|e| e["report"]["feeds"].as_array().cloned().unwrap_or_default())
        .map(|f| f["pulled"]["conflicts"].as_u64().unwrap() + f["pushed"]["conflicts"].as_u64().unwrap())
        .sum()
}

#[test]
fn mirror_pair_converges_and_resolves_concurrent_writes_by_the_later_stamp() {
    let mut a = Server::start();
    let mut b = Server::start();
    a.create_feed("files", "assets");
    b.create_feed("files", "assets");
    let token = a.incoming("pair", &["files"], "mirror");
    b.outgoing("pair", &["files"], &a, &token, "mirror", &[]);

    // Writes on both ends reach the other one.
    a.put_asset("files", "from-a.txt", b"written on A");
    b.put_asset("files", "from-b.txt", b"written on B");
    assert!(
        wait_until(SYNC, || b.serves("files", "from-a.txt", b"written on A")),
        "A's write did not reach B"
    );
    assert!(
        wait_until(SYNC, || a.serves("files", "from-b.txt", b"written on B")),
        "B's write did not reach A"
    );
    // Replacements and deletions too, both ways.
    b.put_asset("files", "from-a.txt", b"edited on B");
    a.delete_asset("files", "from-b.txt");
    assert!(wait_until(SYNC, || a.serves(
        "files",
        "from-a.txt",
        b"edited on B"
    )));
    assert!(wait_until(SYNC, || b.lacks("files", "from-b.txt")));

    // A partition: each side writes the same key while the other cannot see it.
    b.kill();
    a.put_asset("files", "shared/config.json", b"{\"written\":\"on A, first\"}");
    a.put_asset("files", "only-a-during-partition.txt", b"A alone");
    a.kill();
    b.restart();
    let later: &[u8] = b"{\"written\":\"on B, later\"}";
    b.put_asset("files", "shared/config.json", later);
    b.put_asset("files", "only-b-during-partition.txt", b"B alone");
    a.restart();
    b.cli_ok(&["replication", "run", "pair", "--wait"]);
    b.cli_ok(&["replication", "run", "pair", "--wait"]);
    for s in [&a, &b] {
        assert!(
            s.serves("files", "shared/config.json", later),
            "{}: the later write must win",
            s.url
        );
        assert!(s.serves("files", "only-a-during-partition.txt", b"A alone"));
        assert!(s.serves("files", "only-b-during-partition.txt", b"B alone"));
    }
    let execs = b.executions("pair");
    assert!(conflicts(&execs) >= 1, "the conflict is counted: {execs:#?}");
    let logged = execs
        .iter()
        .flat_map(|e| e["report"]["log"].as_array().cloned().unwrap_or_default())
        .any(|l| {
            let m = l["message"].as_str().unwrap();
            l["level"] == "warn" && m.contains("conflict") && m.contains("shared/config.json")
        });
    assert!(logged, "the conflict is logged with its key: {execs:#?}");
    // And counted where an operator alerts on it.
    let metrics = b.metrics();
    let counted = metrics
        .lines()
        .find(|l| l.starts_with("ferry_replication_conflicts_total{replication=\"pair\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert!(counted.is_some_and(|n| n >= 1.0), "{metrics}");
    assert_eq!(a.asset_digests("files", ""), b.asset_digests("files", ""));
    assert_eq!(
        a.asset_digests("files", "shared/"),
        b.asset_digests("files", "shared/")
    );
    assert!(
        wait_until(SYNC, || b.verified("pair")),
        "verify must pass once both converged"
    );
}

#[test]
fn ring_of_three_mirrors_converges() {
    let a = Server::start();
    let b = Server::start();
    let c = Server::start();
    for s in [&a, &b, &c] {
        s.create_feed("files", "assets");
    }
    // B → A, C → B, A → C: every instance is incoming for one pair and outgoing for another.
    let t = a.incoming("ab", &["files"], "mirror");
    b.outgoing("ab", &["files"], &a, &t, "mirror", &[]);
    let t = b.incoming("bc", &["files"], "mirror");
    c.outgoing("bc", &["files"], &b, &t, "mirror", &[]);
    let t = c.incoming("ca", &["files"], "mirror");
    a.outgoing("ca", &["files"], &c, &t, "mirror", &[]);
    let outgoing = [(&b, "ab"), (&c, "bc"), (&a, "ca")];

    a.put_asset("files", "a.txt", b"from A");
    b.put_asset("files", "b.txt", b"from B");
    c.put_asset("files", "c.txt", b"from C");
    // The same key on every instance, in this order: C's write is the latest.
    a.put_asset("files", "same.txt", b"same key, A's version");
    b.put_asset("files", "same.txt", b"same key, B's version");
    c.put_asset("files", "same.txt", b"same key, C's version");
    let all = [&a, &b, &c];
    let converged = || {
        for (s, name) in outgoing {
            s.cli_ok(&["replication", "run", name, "--wait"]);
        }
        outgoing.iter().all(|(s, name)| s.verified(name))
    };
    assert!(wait_until(60, converged), "the ring did not converge");
    for p in ["a.txt", "b.txt", "c.txt", "same.txt"] {
        assert!(same_everywhere(&all, p), "{p} differs");
    }
    for s in all {
        assert!(
            s.serves("files", "same.txt", b"same key, C's version"),
            "{}: the latest write wins",
            s.url
        );
        assert_eq!(s.asset_digests("files", "").len(), 4);
    }

    // A deletion anywhere is a deletion everywhere.
    c.delete_asset("files", "b.txt");
    for s in all {
        assert!(
            wait_until(SYNC, || s.lacks("files", "b.txt")),
            "{} kept b.txt",
            s.url
        );
    }
    assert!(
        wait_until(60, converged),
        "the ring did not converge after a deletion"
    );
    assert!(same_everywhere(&all, "a.txt") && same_everywhere(&all, "same.txt"));
}
