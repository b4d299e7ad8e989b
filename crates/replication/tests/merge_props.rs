//! The merge that replication relies on, as properties: applying the same
//! set of changes in any order, any number of times, to any instance gives
//! the same state (idempotent, commutative, associative), and the change
//! log only grows for changes that won.
#![allow(clippy::unwrap_used)]

use ferry_store::{Change, ChangeOp, MetadataStore, Precondition, ReplicationStore, SqliteStore};
use ferry_types::{FeedName, FeedType, Hlc, InstanceId, ItemKey, Stamp};
use proptest::prelude::*;

/// A stamp identifies one write, so the write is derived from its stamp.
fn change(key: u8, time: u64, origin: u8) -> Change {
    let stamp = Stamp {
        time: Hlc(time),
        origin: InstanceId::from_bytes([origin; 16]),
    };
    let key = ItemKey::new(format!("k{key}")).unwrap();
    let op = if (time + u64::from(origin)).is_multiple_of(3) {
        ChangeOp::Delete
    } else {
        ChangeOp::Upsert {
            meta: serde_json::json!({ "t": time, "o": origin }),
            blobs: vec![],
            created_at: Some(1),
        }
    };
    Change { key, stamp, op }
}

fn changes() -> impl Strategy<Value = Vec<Change>> {
    proptest::collection::vec((0u8..4, 1u64..30, 0u8..3), 1..25)
        .prop_map(|v| v.into_iter().map(|(k, t, o)| change(k, t, o)).collect())
}

type State = Vec<(String, Stamp, Option<serde_json::Value>)>;

async fn apply_all(batches: &[Vec<Change>]) -> State {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(dir.path().join("m.db")).await.unwrap();
    let f = s
        .create_feed(&FeedName::new("f").unwrap(), FeedType::Assets, false)
        .await
        .unwrap();
    for batch in batches {
        s.write(
            f.id,
            batch.iter().cloned().map(|c| (c, Precondition::Any)).collect(),
        )
        .await
        .unwrap();
    }
    s.entries(f.id, None, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.key.as_str().to_string(), e.stamp, e.live.map(|l| l.meta)))
        .collect()
}

fn run<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn any_order_any_repetition_same_state(
        cs in changes(),
        seed in any::<u64>(),
        split in 0usize..25,
    ) {
        // Reference: one change at a time, in the generated order.
        let one_by_one: Vec<Vec<Change>> = cs.iter().cloned().map(|c| vec![c]).collect();
        let reference = run(apply_all(&one_by_one));

        // Reversed, in two batches, with every change delivered twice.
        let mut shuffled = cs.clone();
        shuffled.reverse();
        let n = shuffled.len();
        shuffled.rotate_left((seed as usize) % n);
        let mut doubled = shuffled.clone();
        doubled.extend(cs.iter().cloned());
        let cut = split.min(doubled.len());
        let batches = vec![doubled[..cut].to_vec(), doubled[cut..].to_vec()];
        prop_assert_eq!(run(apply_all(&batches)), reference.clone());

        // Merging two instances' partial views (associativity): A gets the
        // first half, B the second, then each gets the other's.
        let (a, b) = cs.split_at(cs.len() / 2);
        let merged = run(apply_all(&[a.to_vec(), b.to_vec(), a.to_vec()]));
        prop_assert_eq!(merged, reference.clone());

        // The winner per key is the change with the highest stamp.
        for (key, stamp, live) in &reference {
            let best = cs.iter().filter(|c| c.key.as_str() == key).map(|c| c.stamp).max().unwrap();
            prop_assert_eq!(*stamp, best);
            let winner = cs.iter().find(|c| c.stamp == best && c.key.as_str() == key).unwrap();
            prop_assert_eq!(live.is_none(), winner.op == ChangeOp::Delete);
        }
    }
}
