//! The contract of [`MetadataStore`], as one suite every backend runs:
//! `ferry_store::conformance::run(&store).await` from that backend's tests.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use ferry_types::{Digest, FeedName, FeedType, Hlc, InstanceId, ItemKey, Stamp};
use serde_json::json;

use crate::meta::*;
use crate::{StoreError, now_millis};

fn stamp(t: u64, origin: u8) -> Stamp {
    Stamp {
        time: Hlc(t),
        origin: InstanceId::from_bytes([origin; 16]),
    }
}

fn key(s: &str) -> ItemKey {
    ItemKey::new(s).unwrap()
}

fn upsert(k: &str, t: u64, blobs: Vec<Digest>) -> Change {
    Change {
        key: key(k),
        stamp: stamp(t, 1),
        op: ChangeOp::Upsert {
            meta: json!({ "k": k, "t": t }),
            blobs,
            created_at: Some(1),
        },
    }
}

fn delete(k: &str, t: u64) -> Change {
    Change {
        key: key(k),
        stamp: stamp(t, 1),
        op: ChangeOp::Delete,
    }
}

/// Runs every conformance check against a fresh, empty store.
pub async fn run(store: &dyn MetadataStore) {
    instance_id_is_stable(store).await;
    feeds(store).await;
    writes_follow_stamps_and_log_changes(store).await;
    preconditions_and_atomic_batches(store).await;
    listing(store).await;
    blobs_and_collection(store).await;
    api_keys(store).await;
    signing_keys(store).await;
    ui_sessions(store).await;
    upload_sessions(store).await;
    periodic_jobs(store).await;
}

/// A periodic job is claimed once per period: the first claim wins, a
/// claim within `every` of the last run does not, one at the period's end
/// does; jobs are claimed apart.
async fn periodic_jobs(s: &dyn MetadataStore) {
    let t = 1_800_000_000_000i64;
    assert!(
        s.claim_periodic("conf-gc", t, 60_000).await.unwrap(),
        "first claim"
    );
    assert!(!s.claim_periodic("conf-gc", t + 1, 60_000).await.unwrap());
    assert!(!s.claim_periodic("conf-gc", t + 59_999, 60_000).await.unwrap());
    assert!(
        s.claim_periodic("conf-prune", t + 1, 60_000).await.unwrap(),
        "another job"
    );
    assert!(
        s.claim_periodic("conf-gc", t + 60_000, 60_000).await.unwrap(),
        "next period"
    );
    assert!(!s.claim_periodic("conf-gc", t + 60_001, 60_000).await.unwrap());
}

fn upload(id: &str, feed: FeedId, key: Option<(i64, i64)>, now: i64) -> crate::NewUploadSession {
    crate::NewUploadSession {
        id: id.into(),
        feed,
        repo: "team/app".into(),
        key,
        now,
    }
}

/// OCI upload sessions: opened under per-key, per-feed and total caps
/// (refusals say when the first of the group expires, or that all are in
/// use), claimed by one request at a time, their length recorded at
/// release, expired after the idle time unless a request holds them, and
/// swept with a deleted key.
async fn upload_sessions(s: &dyn MetadataStore) {
    use crate::{UploadCap, UploadClaim, UploadLimits, UploadOpened};
    let feed = s
        .create_feed(&FeedName::new("conf-uploads").unwrap(), FeedType::Oci, false)
        .await
        .unwrap();
    let other = s
        .create_feed(&FeedName::new("conf-uploads-2").unwrap(), FeedType::Oci, false)
        .await
        .unwrap();
    let k = s
        .create_key(NewApiKey {
            name: "conf-uploader".into(),
            hash: [60; 32],
            permission: Permission::Write,
            feeds: None,
        })
        .await
        .unwrap();
    let key = Some((k.id, k.created_at));
    let limits = UploadLimits {
        idle_ms: 1000,
        per_key: 2,
        per_feed: 3,
        total: 4,
    };
    let t = 1_000_000;
    let opened = |r: UploadOpened| assert!(matches!(r, UploadOpened::Opened { .. }), "{r:?}");
    opened(
        s.open_upload(upload("u1", feed.id, key, t), limits)
            .await
            .unwrap(),
    );
    opened(
        s.open_upload(upload("u2", feed.id, key, t + 10), limits)
            .await
            .unwrap(),
    );
    assert_eq!(
        s.open_upload(upload("u3", feed.id, key, t + 20), limits)
            .await
            .unwrap(),
        UploadOpened::Refused {
            cap: UploadCap::Key,
            next_expiry: Some(t + 1000),
            expired: vec![]
        }
    );
    opened(
        s.open_upload(upload("a1", feed.id, None, t + 20), limits)
            .await
            .unwrap(),
    );
    // The feed's cap (3), then the instance's (4) for another feed.
    assert!(matches!(
        s.open_upload(upload("a2", feed.id, None, t + 20), limits)
            .await
            .unwrap(),
        UploadOpened::Refused {
            cap: UploadCap::Feed,
            ..
        }
    ));
    opened(
        s.open_upload(upload("b1", other.id, None, t + 20), limits)
            .await
            .unwrap(),
    );
    assert!(matches!(
        s.open_upload(upload("b2", other.id, None, t + 20), limits)
            .await
            .unwrap(),
        UploadOpened::Refused {
            cap: UploadCap::Instance,
            ..
        }
    ));
    assert_eq!(s.upload_count().await.unwrap(), 4);

    // One request at a time; its release records the length.
    let claim = |id: &'static str, repo: &'static str, now: i64, lease: i64| {
        s.claim_upload(id, feed.id, repo, now, 1000, lease)
    };
    assert_eq!(
        claim("u1", "team/app", t + 100, t + 5000).await.unwrap(),
        UploadClaim::Claimed { size: 0 }
    );
    assert_eq!(
        claim("u1", "team/app", t + 101, t + 5000).await.unwrap(),
        UploadClaim::Busy
    );
    assert_eq!(
        claim("u1", "team/other", t + 101, t + 5000).await.unwrap(),
        UploadClaim::Unknown
    );
    assert_eq!(
        claim("nope", "team/app", t + 101, t + 5000).await.unwrap(),
        UploadClaim::Unknown
    );
    s.renew_upload("u1", t + 2000, t + 9000).await.unwrap();
    // Held, it outlives its idle time; the others expire and are swept.
    let swept = s.sweep_uploads(t + 3000, 1000, false).await.unwrap();
    let mut swept_sorted = swept.clone();
    swept_sorted.sort();
    assert_eq!(swept_sorted, vec!["a1", "b1", "u2"]);
    assert_eq!(
        s.upload_length("u1", feed.id, "team/app", t + 3000, 1000)
            .await
            .unwrap(),
        UploadClaim::Claimed { size: 0 }
    );
    s.release_upload("u1", t + 3000, Some(7)).await.unwrap();
    assert_eq!(
        claim("u1", "team/app", t + 3100, t + 3200).await.unwrap(),
        UploadClaim::Claimed { size: 7 }
    );
    s.release_upload("u1", t + 3100, None).await.unwrap();
    assert_eq!(
        s.upload_length("u1", feed.id, "team/app", t + 3500, 1000)
            .await
            .unwrap(),
        UploadClaim::Claimed { size: 7 }
    );
    // Expired when a request finds it.
    assert_eq!(
        claim("u1", "team/app", t + 4500, t + 5000).await.unwrap(),
        UploadClaim::Expired
    );
    assert_eq!(
        claim("u1", "team/app", t + 4500, t + 5000).await.unwrap(),
        UploadClaim::Unknown
    );

    // A deleted key's sessions are swept (not while a request holds one).
    opened(
        s.open_upload(upload("r1", feed.id, key, t + 5000), limits)
            .await
            .unwrap(),
    );
    opened(
        s.open_upload(upload("r2", feed.id, key, t + 5000), limits)
            .await
            .unwrap(),
    );
    assert_eq!(
        claim("r2", "team/app", t + 5001, t + 6000).await.unwrap(),
        UploadClaim::Claimed { size: 0 }
    );
    assert!(s.sweep_uploads(t + 5002, 1000, true).await.unwrap().is_empty());
    assert!(s.delete_key("conf-uploader").await.unwrap());
    assert_eq!(s.sweep_uploads(t + 5002, 1000, true).await.unwrap(), vec!["r1"]);
    assert_eq!(
        s.uploads_known(&["r1".into(), "r2".into(), "zz".into()])
            .await
            .unwrap(),
        vec!["r2".to_string()]
    );
    assert!(s.end_upload("r2").await.unwrap());
    assert!(!s.end_upload("r2").await.unwrap());
    assert_eq!(s.upload_count().await.unwrap(), 0);
    // A deleted feed takes its sessions.
    opened(
        s.open_upload(upload("f1", other.id, None, t + 6000), limits)
            .await
            .unwrap(),
    );
    s.delete_feed(&other.name).await.unwrap();
    assert_eq!(s.upload_count().await.unwrap(), 0);
    s.delete_feed(&feed.name).await.unwrap();
}

/// Upload sessions opened through several nodes at once: the per-key cap holds.
async fn upload_caps_hold_across_nodes(nodes: &[std::sync::Arc<dyn MetadataStore>]) {
    let feed = nodes[0]
        .create_feed(&FeedName::new("conf-uploads-c").unwrap(), FeedType::Oci, false)
        .await
        .unwrap();
    let limits = crate::UploadLimits {
        idle_ms: 600_000,
        per_key: 5,
        per_feed: 1000,
        total: 1000,
    };
    let now = now_millis();
    let mut tasks = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for i in 0..6 {
            let node = node.clone();
            let id = format!("c{n}-{i}");
            tasks.push(tokio::spawn(async move {
                node.open_upload(upload(&id, feed.id, Some((4242, 1)), now), limits)
                    .await
                    .unwrap()
            }));
        }
    }
    let mut opened = 0;
    for t in tasks {
        if let crate::UploadOpened::Opened { .. } = t.await.unwrap() {
            opened += 1;
        }
    }
    assert_eq!(opened, 5, "one key's sessions opened across nodes");
    assert_eq!(nodes[0].upload_count().await.unwrap(), 5);
}

fn ui_session(id: u8, key: u8, at: i64) -> crate::NewUiSession {
    crate::NewUiSession {
        id_hash: [id; 32],
        key_hash: [key; 32],
        created_at: at,
        expires_at: at + 1000,
    }
}

/// UI sessions: created under per-key and total caps (the key's oldest
/// ends, remembered as capped until it would have expired; past the total,
/// refused), expire, end at sign-out and with their key (deleted or its
/// secret replaced), and a flash is read once.
async fn ui_sessions(s: &dyn MetadataStore) {
    use crate::{UiSessionCreated::*, UiSessionLimits, UiSessionState};
    let limits = UiSessionLimits {
        per_key: 2,
        total: 4,
        capped: 10,
    };
    let t = now_millis();
    assert_eq!(s.ui_session(&[1; 32], t).await.unwrap(), UiSessionState::Unknown);
    assert_eq!(
        s.create_ui_session(ui_session(1, 50, t), limits).await.unwrap(),
        Created
    );
    match s.ui_session(&[1; 32], t + 1).await.unwrap() {
        UiSessionState::Live(r) => {
            assert_eq!(r.key_hash, [50; 32]);
            assert_eq!((r.created_at, r.expires_at), (t, t + 1000));
        }
        other => panic!("{other:?}"),
    }
    // Expired at its time.
    assert_eq!(
        s.ui_session(&[1; 32], t + 1000).await.unwrap(),
        UiSessionState::Unknown
    );

    // A flash is read once, and only a live session keeps one.
    assert_eq!(s.take_ui_flash(&[1; 32]).await.unwrap(), None);
    s.put_ui_flash(&[1; 32], b"sealed one".to_vec()).await.unwrap();
    s.put_ui_flash(&[1; 32], b"sealed two".to_vec()).await.unwrap();
    assert_eq!(
        s.take_ui_flash(&[1; 32]).await.unwrap(),
        Some(b"sealed two".to_vec())
    );
    assert_eq!(s.take_ui_flash(&[1; 32]).await.unwrap(), None);
    s.put_ui_flash(&[99; 32], b"nobody".to_vec()).await.unwrap();
    assert_eq!(s.take_ui_flash(&[99; 32]).await.unwrap(), None);

    // The key's cap ends its oldest session, remembered as capped; its
    // flash goes with it.
    s.put_ui_flash(&[1; 32], b"of the oldest".to_vec()).await.unwrap();
    assert_eq!(
        s.create_ui_session(ui_session(2, 50, t + 1), limits)
            .await
            .unwrap(),
        Created
    );
    assert_eq!(
        s.create_ui_session(ui_session(3, 50, t + 2), limits)
            .await
            .unwrap(),
        Created
    );
    assert_eq!(
        s.ui_session(&[1; 32], t + 3).await.unwrap(),
        UiSessionState::Capped
    );
    assert_eq!(s.take_ui_flash(&[1; 32]).await.unwrap(), None);
    assert!(matches!(
        s.ui_session(&[2; 32], t + 3).await.unwrap(),
        UiSessionState::Live(_)
    ));
    assert!(matches!(
        s.ui_session(&[3; 32], t + 3).await.unwrap(),
        UiSessionState::Live(_)
    ));
    assert_eq!(s.ui_session_count(t + 3).await.unwrap(), 2);
    // Past the expiry a capped session is unknown too.
    assert_eq!(
        s.ui_session(&[1; 32], t + 1000).await.unwrap(),
        UiSessionState::Unknown
    );

    // The instance's cap: refused, nobody's session ended.
    assert_eq!(
        s.create_ui_session(ui_session(4, 51, t + 3), limits)
            .await
            .unwrap(),
        Created
    );
    assert_eq!(
        s.create_ui_session(ui_session(5, 51, t + 4), limits)
            .await
            .unwrap(),
        Created
    );
    assert_eq!(
        s.create_ui_session(ui_session(6, 52, t + 5), limits)
            .await
            .unwrap(),
        Full
    );
    assert_eq!(
        s.ui_session(&[6; 32], t + 6).await.unwrap(),
        UiSessionState::Unknown
    );
    assert_eq!(s.ui_session_count(t + 6).await.unwrap(), 4);
    // Signing out makes room.
    s.end_ui_session(&[5; 32]).await.unwrap();
    s.end_ui_session(&[5; 32]).await.unwrap();
    assert_eq!(
        s.ui_session(&[5; 32], t + 6).await.unwrap(),
        UiSessionState::Unknown
    );
    assert_eq!(
        s.create_ui_session(ui_session(6, 52, t + 6), limits)
            .await
            .unwrap(),
        Created
    );

    // Expired sessions are dropped at the next sign-in and stop counting.
    assert_eq!(s.ui_session_count(t + 2000).await.unwrap(), 0);
    let later = t + 2000;
    for (i, id) in (10..14).enumerate() {
        let created = s
            .create_ui_session(ui_session(id, 53 + i as u8, later + i as i64), limits)
            .await
            .unwrap();
        assert_eq!(created, Created);
    }

    // Sessions of one key signed in within one millisecond: the first of
    // them is the oldest, whatever their ids (they were ordered by id).
    let roomy = UiSessionLimits {
        per_key: 2,
        total: 100,
        capped: 10,
    };
    let same = later + 100;
    for id in [40, 30, 20] {
        let created = s
            .create_ui_session(ui_session(id, 60, same), roomy)
            .await
            .unwrap();
        assert_eq!(created, Created);
    }
    assert_eq!(
        s.ui_session(&[40; 32], same).await.unwrap(),
        UiSessionState::Capped
    );
    for id in [30, 20] {
        assert!(matches!(
            s.ui_session(&[id; 32], same).await.unwrap(),
            UiSessionState::Live(_)
        ));
    }
    for id in [40, 30, 20] {
        s.end_ui_session(&[id; 32]).await.unwrap();
    }

    // Deleting a key, or replacing its secret, ends its sessions.
    let new = |name: &str, h: u8| NewApiKey {
        name: name.into(),
        hash: [h; 32],
        permission: Permission::Read,
        feeds: None,
    };
    s.create_key(new("conf-ui-a", 53)).await.unwrap();
    s.put_named_key(new("conf-ui-b", 54)).await.unwrap();
    s.put_named_key(new("conf-ui-b", 54)).await.unwrap();
    assert!(
        matches!(
            s.ui_session(&[11; 32], later + 5).await.unwrap(),
            UiSessionState::Live(_)
        ),
        "the same secret put again keeps its sessions"
    );
    assert!(s.delete_key("conf-ui-a").await.unwrap());
    assert_eq!(
        s.ui_session(&[10; 32], later + 5).await.unwrap(),
        UiSessionState::Unknown
    );
    s.put_named_key(new("conf-ui-b", 55)).await.unwrap();
    assert_eq!(
        s.ui_session(&[11; 32], later + 5).await.unwrap(),
        UiSessionState::Unknown
    );
    assert!(matches!(
        s.ui_session(&[12; 32], later + 5).await.unwrap(),
        UiSessionState::Live(_)
    ));
    assert!(s.delete_key("conf-ui-b").await.unwrap());
    for id in 10..14 {
        s.end_ui_session(&[id; 32]).await.unwrap();
    }
}

/// Sign-ins of one key through several nodes at once: the per-key cap
/// holds (no more than its allowance is live afterwards).
async fn ui_session_caps_hold_across_nodes(nodes: &[std::sync::Arc<dyn MetadataStore>]) {
    let limits = crate::UiSessionLimits {
        per_key: 3,
        total: 1000,
        capped: 1000,
    };
    let t = now_millis();
    let mut tasks = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for i in 0..8u8 {
            let node = node.clone();
            let id = 100 + (n as u8) * 8 + i;
            tasks.push(tokio::spawn(async move {
                node.create_ui_session(ui_session(id, 77, t), limits)
                    .await
                    .unwrap()
            }));
        }
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), crate::UiSessionCreated::Created);
    }
    let mut live = 0;
    for n in 0..nodes.len() {
        for i in 0..8u8 {
            let id = 100 + (n as u8) * 8 + i;
            if let crate::UiSessionState::Live(_) = nodes[0].ui_session(&[id; 32], t + 1).await.unwrap() {
                live += 1;
            }
        }
    }
    assert_eq!(live, 3, "one key's live sessions across nodes");
}

async fn signing_keys(s: &dyn MetadataStore) {
    let name = FeedName::new("conf-signing").unwrap();
    let f = s.create_feed(&name, FeedType::Assets, false).await.unwrap();
    assert_eq!(s.signing_key(f.id).await.unwrap(), None);
    s.put_signing_key(f.id, "first").await.unwrap();
    assert_eq!(s.signing_key(f.id).await.unwrap().as_deref(), Some("first"));
    s.put_signing_key(f.id, "second").await.unwrap();
    assert_eq!(s.signing_key(f.id).await.unwrap().as_deref(), Some("second"));
    assert!(matches!(
        s.put_signing_key(f.id + 1000, "x").await,
        Err(StoreError::NotFound(_))
    ));
    // Deleting the feed deletes its key: a feed created again starts without one.
    assert!(s.delete_feed(&name).await.unwrap());
    let g = s.create_feed(&name, FeedType::Assets, false).await.unwrap();
    assert_eq!(s.signing_key(g.id).await.unwrap(), None);
    assert!(s.delete_feed(&name).await.unwrap());
}

async fn instance_id_is_stable(s: &dyn MetadataStore) {
    let a = s.instance_id().await.unwrap();
    assert_eq!(s.instance_id().await.unwrap(), a);
    // Renewed: a new id, stable from then on.
    let b = s.renew_instance_id().await.unwrap();
    assert_ne!(a, b);
    assert_eq!(s.instance_id().await.unwrap(), b);
}

async fn feeds(s: &dyn MetadataStore) {
    let name = FeedName::new("conf-feeds").unwrap();
    let f = s.create_feed(&name, FeedType::Npm, true).await.unwrap();
    assert_eq!((f.feed_type, f.private), (FeedType::Npm, true));
    assert!(matches!(
        s.create_feed(&name, FeedType::Npm, false).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.feed(&name).await.unwrap(), Some(f.clone()));
    assert!(s.feeds().await.unwrap().contains(&f));
    assert!(s.delete_feed(&name).await.unwrap());
    assert!(!s.delete_feed(&name).await.unwrap());
    assert_eq!(s.feed(&name).await.unwrap(), None);
    // A write that reaches the store after its feed was deleted (the two
    // requests raced) is NotFound, a client's answer, not a backend fault.
    let w = s
        .write(f.id, vec![(upsert("late", 10, vec![]), Precondition::Any)])
        .await;
    assert!(matches!(w, Err(StoreError::NotFound(_))), "{w:?}");
}

async fn writes_follow_stamps_and_log_changes(s: &dyn MetadataStore) {
    let f = s
        .create_feed(&FeedName::new("conf-stamps").unwrap(), FeedType::Assets, false)
        .await
        .unwrap();
    let w = |c: Change| async move { s.write(f.id, vec![(c, Precondition::Any)]).await.unwrap()[0] };
    assert_eq!(s.last_seq(f.id).await.unwrap(), 0);
    assert_eq!(w(upsert("a", 10, vec![])).await, WriteOutcome::Applied { seq: 1 });
    // The same change again is a no-op and logs nothing (cycles end here).
    assert_eq!(w(upsert("a", 10, vec![])).await, WriteOutcome::AlreadyApplied);
    // An older write loses and reports the stamp that won.
    assert_eq!(
        w(upsert("a", 5, vec![])).await,
        WriteOutcome::Superseded {
            current: stamp(10, 1)
        }
    );
    // Same time, higher origin wins.
    let mut tie = upsert("a", 10, vec![]);
    tie.stamp.origin = InstanceId::from_bytes([2; 16]);
    assert_eq!(w(tie).await, WriteOutcome::Applied { seq: 2 });
    assert_eq!(w(delete("a", 20)).await, WriteOutcome::Applied { seq: 3 });
    assert_eq!(s.item(f.id, &key("a")).await.unwrap(), None);
    assert_eq!(s.tombstone(f.id, &key("a")).await.unwrap(), Some(stamp(20, 1)));
    // A stale upsert cannot resurrect a deleted item.
    assert!(matches!(
        w(upsert("a", 15, vec![])).await,
        WriteOutcome::Superseded { .. }
    ));
    // A delete of a key never seen leaves a tombstone that later stale writes respect.
    assert_eq!(w(delete("ghost", 30)).await, WriteOutcome::Applied { seq: 4 });
    assert!(matches!(
        w(upsert("ghost", 29, vec![])).await,
        WriteOutcome::Superseded { .. }
    ));
    assert_eq!(w(upsert("a", 40, vec![])).await, WriteOutcome::Applied { seq: 5 });
    let item = s.item(f.id, &key("a")).await.unwrap().unwrap();
    assert_eq!(item.meta, json!({"k": "a", "t": 40}));
    assert_eq!(item.stamp, stamp(40, 1));

    let log = s.changes_since(f.id, 0, 100).await.unwrap();
    let kinds: Vec<_> = log.iter().map(|c| (c.seq, c.key.as_str(), c.kind)).collect();
    assert_eq!(
        kinds,
        vec![
            (1, "a", ChangeKind::Upsert),
            (2, "a", ChangeKind::Upsert),
            (3, "a", ChangeKind::Delete),
            (4, "ghost", ChangeKind::Delete),
            (5, "a", ChangeKind::Upsert),
        ]
    );
    assert_eq!(log[2].stamp, stamp(20, 1));
    let page = s.changes_since(f.id, 2, 2).await.unwrap();
    assert_eq!(page.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![3, 4]);
    assert_eq!(s.last_seq(f.id).await.unwrap(), 5);
    // The clock's floor counts only what this instance wrote.
    let before = s.max_stamp_time().await.unwrap();
    assert!(before < Hlc(40), "stamps of other origins count: {before:?}");
    let me = s.instance_id().await.unwrap();
    let own = Change {
        key: key("own"),
        stamp: Stamp {
            time: Hlc(before.0.max(44) + 1),
            origin: me,
        },
        op: ChangeOp::Delete,
    };
    s.write(f.id, vec![(own, Precondition::Any)]).await.unwrap();
    assert_eq!(s.max_stamp_time().await.unwrap(), Hlc(before.0.max(44) + 1));

    // A local update (no created_at) keeps the item's first-write time.
    let local = |k: &str, t: u64| Change {
        key: key(k),
        stamp: stamp(t, 1),
        op: ChangeOp::Upsert {
            meta: json!({}),
            blobs: vec![],
            created_at: None,
        },
    };
    s.write(f.id, vec![(local("a", 41), Precondition::Any)])
        .await
        .unwrap();
    assert_eq!(s.item(f.id, &key("a")).await.unwrap().unwrap().created_at, 1);
    s.write(f.id, vec![(local("fresh", 42), Precondition::Any)])
        .await
        .unwrap();
    assert!(s.item(f.id, &key("fresh")).await.unwrap().unwrap().created_at > 1);
    s.add_downloads(f.id, &[(key("a"), 3), (key("a"), 2), (key("missing"), 1)])
        .await
        .unwrap();
    assert_eq!(s.item(f.id, &key("a")).await.unwrap().unwrap().downloads, 5);

    // A local write over a later stored stamp happens after it: it takes
    // the reading just after, keeping its own origin...
    let last = s.last_seq(f.id).await.unwrap();
    let o = s
        .write_ordered(
            f.id,
            vec![(upsert("a", 35, vec![]), Precondition::Any)],
            StampOrder::LocalWrite { ceiling: Hlc(1000) },
        )
        .await
        .unwrap();
    assert_eq!(o, vec![WriteOutcome::Applied { seq: last + 1 }]);
    assert_eq!(
        s.item(f.id, &key("a")).await.unwrap().unwrap().stamp,
        stamp(42, 1)
    );
    // ...unless that is past the ceiling: then the whole batch fails and
    // changes nothing.
    let lost = s
        .write_ordered(
            f.id,
            vec![
                (upsert("fresh-local", 50, vec![]), Precondition::Any),
                (upsert("a", 35, vec![]), Precondition::Any),
            ],
            StampOrder::LocalWrite { ceiling: Hlc(42) },
        )
        .await;
    assert!(
        matches!(lost, Err(StoreError::Superseded { ref key, current }) if key == "a" && current == stamp(42, 1))
    );
    assert_eq!(s.item(f.id, &key("fresh-local")).await.unwrap(), None);
    assert_eq!(s.last_seq(f.id).await.unwrap(), last + 1);
    // A repair overwrites a later stamp (and logs it); the same stamp again is a no-op.
    let o = s
        .write_ordered(
            f.id,
            vec![(delete("a", 35), Precondition::Any)],
            StampOrder::Overwrite,
        )
        .await
        .unwrap();
    assert_eq!(o, vec![WriteOutcome::Applied { seq: last + 2 }]);
    assert_eq!(s.tombstone(f.id, &key("a")).await.unwrap(), Some(stamp(35, 1)));
    let o = s
        .write_ordered(
            f.id,
            vec![(delete("a", 35), Precondition::Any)],
            StampOrder::Overwrite,
        )
        .await
        .unwrap();
    assert_eq!(o, vec![WriteOutcome::AlreadyApplied]);
}

async fn preconditions_and_atomic_batches(s: &dyn MetadataStore) {
    let f = s
        .create_feed(&FeedName::new("conf-pre").unwrap(), FeedType::Npm, false)
        .await
        .unwrap();
    s.write(f.id, vec![(upsert("v1", 1, vec![]), Precondition::Absent)])
        .await
        .unwrap();
    let again = s
        .write(f.id, vec![(upsert("v1", 2, vec![]), Precondition::Absent)])
        .await;
    assert!(matches!(again, Err(StoreError::Conflict(_))));
    let absent = s
        .write(f.id, vec![(upsert("nope", 2, vec![]), Precondition::Present)])
        .await;
    assert!(matches!(absent, Err(StoreError::NotFound(_))));
    // A batch whose second change fails leaves nothing of the first.
    let batch = vec![
        (upsert("v2", 3, vec![]), Precondition::Absent),
        (upsert("v1", 3, vec![]), Precondition::Absent),
    ];
    assert!(s.write(f.id, batch).await.is_err());
    assert_eq!(s.item(f.id, &key("v2")).await.unwrap(), None);
    assert_eq!(s.last_seq(f.id).await.unwrap(), 1);
    // A path is a file or a folder: a live key above or below refuses a
    // PathFree write; a deleted one, a sibling or a longer name does not.
    let path = |k: &str, t: u64| s.write(f.id, vec![(upsert(k, t, vec![]), Precondition::PathFree)]);
    path("p/q", 10).await.unwrap();
    let r = path("p/q/r.txt", 11).await;
    assert!(
        matches!(&r, Err(StoreError::Conflict(m)) if m.contains("p/q is a file")),
        "{r:?}"
    );
    let r = path("p", 11).await;
    assert!(
        matches!(&r, Err(StoreError::Conflict(m)) if m.contains("p is a folder")),
        "{r:?}"
    );
    path("p/q2", 11).await.unwrap();
    path("p/q.d/x", 11).await.unwrap();
    path("p/q", 12).await.unwrap(); // replacing the file itself
    s.write(f.id, vec![(delete("p/q", 13), Precondition::Any)])
        .await
        .unwrap();
    path("p/q/r.txt", 14).await.unwrap();
    // A write naming a blob that is not stored is refused: no item without its blobs.
    let missing = Digest::of(b"never uploaded");
    let r = s
        .write(f.id, vec![(upsert("v3", 4, vec![missing]), Precondition::Any)])
        .await;
    assert!(matches!(r, Err(StoreError::BlobMissing(d)) if d == missing));
    assert_eq!(s.item(f.id, &key("v3")).await.unwrap(), None);
}

async fn listing(s: &dyn MetadataStore) {
    let f = s
        .create_feed(&FeedName::new("conf-list").unwrap(), FeedType::Assets, false)
        .await
        .unwrap();
    let keys = ["a/1", "a/2", "a/3", "ab", "b/1", "a/\u{e9}", "a/\u{10FFFF}x"];
    for (i, k) in keys.iter().enumerate() {
        s.write(f.id, vec![(upsert(k, i as u64 + 1, vec![]), Precondition::Any)])
            .await
            .unwrap();
    }
    s.write(f.id, vec![(delete("a/2", 100), Precondition::Any)])
        .await
        .unwrap();
    let names = |v: Vec<ItemRecord>| {
        v.into_iter()
            .map(|i| i.key.as_str().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(s.items(f.id, "a/", None, 10).await.unwrap()),
        vec!["a/1", "a/3", "a/\u{e9}", "a/\u{10FFFF}x"]
    );
    assert_eq!(
        names(s.items(f.id, "a/", Some(&key("a/1")), 1).await.unwrap()),
        vec!["a/3"]
    );
    assert_eq!(names(s.items(f.id, "", None, 100).await.unwrap()).len(), 6);
    // The deleted item is not counted; these items name no blob.
    assert_eq!(
        s.feed_usage(f.id).await.unwrap(),
        FeedUsage {
            items: 6,
            blobs: 0,
            bytes: 0
        }
    );
    // Other feeds do not leak in.
    let g = s
        .create_feed(&FeedName::new("conf-list2").unwrap(), FeedType::Assets, false)
        .await
        .unwrap();
    assert!(s.items(g.id, "", None, 10).await.unwrap().is_empty());
    // Many keys at once, in the order asked: a deleted key, a missing one,
    // a repeated one, and another feed's view of the same keys.
    let asked = [key("b/1"), key("a/2"), key("nope"), key("a/\u{e9}"), key("b/1")];
    let found: Vec<Option<String>> = s
        .items_by_keys(f.id, &asked)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.map(|i| i.key.as_str().to_string()))
        .collect();
    let some = |k: &str| Some(k.to_string());
    assert_eq!(
        found,
        vec![some("b/1"), None, None, some("a/\u{e9}"), some("b/1")]
    );
    let by_one = s.item(f.id, &key("a/\u{e9}")).await.unwrap();
    assert_eq!(s.items_by_keys(f.id, &asked).await.unwrap()[3], by_one);
    assert!(
        s.items_by_keys(g.id, &asked)
            .await
            .unwrap()
            .iter()
            .all(Option::is_none)
    );
    assert!(s.items_by_keys(f.id, &[]).await.unwrap().is_empty());
    // Metadata as text: the same items, in the same order, the text
    // parsing to the stored metadata; paged like items.
    for (prefix, after, limit) in [("a/", None, 10), ("a/", Some(key("a/1")), 1), ("", None, 100)] {
        let items = s.items(f.id, prefix, after.as_ref(), limit).await.unwrap();
        let texts = s.item_metas(f.id, prefix, after.as_ref(), limit).await.unwrap();
        assert_eq!(texts.len(), items.len(), "{prefix:?} after {after:?}");
        for (t, i) in texts.iter().zip(&items) {
            assert_eq!(t.key, i.key);
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(&t.meta).unwrap(),
                i.meta
            );
        }
    }
    assert!(s.item_metas(g.id, "", None, 10).await.unwrap().is_empty());
}

async fn blobs_and_collection(s: &dyn MetadataStore) {
    let f = s
        .create_feed(&FeedName::new("conf-gc").unwrap(), FeedType::Assets, false)
        .await
        .unwrap();
    let (kept, orphan, leased) = (Digest::of(b"kept"), Digest::of(b"orphan"), Digest::of(b"leased"));
    let past = now_millis() - 1;
    let future = now_millis() + 3_600_000;
    s.lease_blob(&kept, 4, past).await.unwrap();
    s.lease_blob(&orphan, 6, past).await.unwrap();
    s.lease_blob(&leased, 6, future).await.unwrap();
    assert!(s.blob_present(&kept).await.unwrap());
    let listed = s.blobs_after(None, 1000).await.unwrap();
    assert!(listed.iter().any(|(d, _)| *d == kept), "present blobs are listed");
    assert!(listed.windows(2).all(|w| w[0].0 < w[1].0), "in digest order");
    let first = listed[0].0;
    assert!(
        !s.blobs_after(Some(&first), 1000)
            .await
            .unwrap()
            .iter()
            .any(|(d, _)| *d == first)
    );
    s.write(
        f.id,
        vec![(upsert("uses-kept", 1, vec![kept]), Precondition::Any)],
    )
    .await
    .unwrap();
    // A blob two items name is one blob of the feed's bytes; another
    // feed's items do not count.
    let g = s
        .create_feed(&FeedName::new("conf-gc-usage").unwrap(), FeedType::Assets, false)
        .await
        .unwrap();
    for (feed, k) in [(f.id, "also-kept"), (g.id, "elsewhere")] {
        s.write(feed, vec![(upsert(k, 1, vec![kept, leased]), Precondition::Any)])
            .await
            .unwrap();
    }
    let usage = s.feed_usage(f.id).await.unwrap();
    assert_eq!((usage.items, usage.blobs, usage.bytes), (2, 2, 10));
    s.write(f.id, vec![(delete("also-kept", 2), Precondition::Any)])
        .await
        .unwrap();
    let usage = s.feed_usage(f.id).await.unwrap();
    assert_eq!((usage.items, usage.blobs, usage.bytes), (1, 1, 4));
    assert!(s.delete_feed(&g.name).await.unwrap());
    assert_eq!(
        s.item(f.id, &key("uses-kept")).await.unwrap().unwrap().blobs,
        vec![kept]
    );
    // In use: referenced by a live item, not merely registered or leased.
    assert!(s.blob_in_use(&kept).await.unwrap());
    assert!(!s.blob_in_use(&leased).await.unwrap());
    assert!(!s.blob_in_use(&Digest::of(b"never registered")).await.unwrap());

    let marked = s.gc_mark(now_millis(), 100).await.unwrap();
    assert!(
        marked.contains(&orphan),
        "unreferenced expired blob not collected"
    );
    assert!(!marked.contains(&kept), "referenced blob collected");
    assert!(!marked.contains(&leased), "leased blob collected");
    // While marked, the blob cannot be leased again nor referenced.
    assert!(matches!(
        s.lease_blob(&orphan, 6, future).await,
        Err(StoreError::BlobBusy(_))
    ));
    let r = s
        .write(f.id, vec![(upsert("late", 2, vec![orphan]), Precondition::Any)])
        .await;
    assert!(matches!(r, Err(StoreError::BlobMissing(_))));
    s.gc_forget(&marked).await.unwrap();
    assert!(!s.blob_present(&orphan).await.unwrap());
    s.lease_blob(&orphan, 6, future).await.unwrap();

    // Deleting the referencing item releases the blob.
    s.write(f.id, vec![(delete("uses-kept", 5), Precondition::Any)])
        .await
        .unwrap();
    assert!(!s.blob_in_use(&kept).await.unwrap());
    assert!(s.gc_mark(now_millis(), 100).await.unwrap().contains(&kept));
    // So does deleting the feed.
    s.lease_blob(&Digest::of(b"in-feed"), 1, past).await.unwrap();
    s.write(
        f.id,
        vec![(upsert("x", 9, vec![Digest::of(b"in-feed")]), Precondition::Any)],
    )
    .await
    .unwrap();
    assert!(
        !s.gc_mark(now_millis(), 100)
            .await
            .unwrap()
            .contains(&Digest::of(b"in-feed"))
    );
    s.delete_feed(&f.name).await.unwrap();
    assert!(
        s.gc_mark(now_millis(), 100)
            .await
            .unwrap()
            .contains(&Digest::of(b"in-feed"))
    );
}

async fn api_keys(s: &dyn MetadataStore) {
    let only = s
        .create_feed(&FeedName::new("conf-keys-only").unwrap(), FeedType::Assets, true)
        .await
        .unwrap();
    let new = |name: &str, h: u8, p: Permission| NewApiKey {
        name: name.into(),
        hash: [h; 32],
        permission: p,
        feeds: Some(vec![ScopedFeed::from(&only)]),
    };
    let k = s.create_key(new("ci", 1, Permission::Write)).await.unwrap();
    assert_eq!(k.feeds, Some(vec![ScopedFeed::from(&only)]));
    assert!(matches!(
        s.create_key(new("ci", 2, Permission::Read)).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.key_by_hash(&[1; 32]).await.unwrap(), Some(k));
    assert_eq!(s.key_by_hash(&[9; 32]).await.unwrap(), None);
    s.put_named_key(NewApiKey {
        feeds: None,
        ..new("admin", 3, Permission::Admin)
    })
    .await
    .unwrap();
    s.put_named_key(NewApiKey {
        feeds: None,
        ..new("admin", 4, Permission::Admin)
    })
    .await
    .unwrap();
    assert_eq!(
        s.key_by_hash(&[3; 32]).await.unwrap(),
        None,
        "replaced admin key still valid"
    );
    assert_eq!(s.key_by_hash(&[4; 32]).await.unwrap().unwrap().feeds, None);
    assert_eq!(s.keys().await.unwrap().len(), 2);
    assert!(s.delete_key("ci").await.unwrap());
    assert_eq!(s.key_by_hash(&[1; 32]).await.unwrap(), None);
    assert!(s.delete_key("admin").await.unwrap());
    s.delete_feed(&only.name).await.unwrap();
    key_scopes_follow_feed_identity(s).await;
}

/// Keys are scoped to feeds by identity: a scope must name an existing
/// feed (by id and name), deleting a feed takes it out of every scope (the
/// key stays, scoped to what is left, possibly nothing), and a feed created
/// again under a deleted one's name is not in the old scopes.
async fn key_scopes_follow_feed_identity(s: &dyn MetadataStore) {
    let a_name = FeedName::new("conf-scope-a").unwrap();
    let b_name = FeedName::new("conf-scope-b").unwrap();
    let a = s.create_feed(&a_name, FeedType::Npm, true).await.unwrap();
    let b = s.create_feed(&b_name, FeedType::Npm, false).await.unwrap();
    let key = |name: &str, h: u8, feeds: Vec<ScopedFeed>| NewApiKey {
        name: name.into(),
        hash: [h; 32],
        permission: Permission::Read,
        feeds: Some(feeds),
    };

    // A scope naming no feed is refused, and nothing is created.
    let ghost = ScopedFeed {
        id: a.id.max(b.id) + 1000,
        name: FeedName::new("conf-scope-ghost").unwrap(),
    };
    match s.create_key(key("ghost", 20, vec![ghost])).await {
        Err(StoreError::NotFound(m)) => assert!(m.contains("conf-scope-ghost"), "{m}"),
        other => panic!("a key for a missing feed: {other:?}"),
    }
    // An existing id under another name is no feed either.
    let mislabelled = ScopedFeed {
        id: a.id,
        name: b_name.clone(),
    };
    assert!(matches!(
        s.create_key(key("ghost", 20, vec![ScopedFeed::from(&b), mislabelled]))
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(s.key_by_hash(&[20; 32]).await.unwrap(), None);
    assert!(!s.delete_key("ghost").await.unwrap());

    let both = s
        .create_key(key(
            "both",
            21,
            vec![ScopedFeed::from(&b), ScopedFeed::from(&a), ScopedFeed::from(&a)],
        ))
        .await
        .unwrap();
    let want = vec![ScopedFeed::from(&a), ScopedFeed::from(&b)];
    assert_eq!(both.feeds.as_ref(), Some(&want), "deduplicated, by name");
    assert!(both.covers(a.id) && both.covers(b.id));
    s.create_key(key("only-a", 22, vec![ScopedFeed::from(&a)]))
        .await
        .unwrap();
    let listed = s.keys().await.unwrap();
    let only_a = listed.iter().find(|k| k.name == "only-a").unwrap();
    assert_eq!(only_a.feeds, Some(vec![ScopedFeed::from(&a)]));
    assert_eq!(
        serde_json::to_value(only_a).unwrap()["feeds"],
        json!(["conf-scope-a"]),
        "keys list their feeds by name"
    );

    // Deleting a feed takes it out of every scope; the keys stay.
    assert!(s.delete_feed(&a_name).await.unwrap());
    let both = s.key_by_hash(&[21; 32]).await.unwrap().unwrap();
    assert_eq!(both.feeds, Some(vec![ScopedFeed::from(&b)]));
    let only_a = s.key_by_hash(&[22; 32]).await.unwrap().unwrap();
    assert_eq!(only_a.feeds, Some(vec![]), "scoped to nothing, not to everything");

    // The same name again is another feed: outside the old scopes.
    let a2 = s.create_feed(&a_name, FeedType::Npm, true).await.unwrap();
    for h in [21, 22] {
        let k = s.key_by_hash(&[h; 32]).await.unwrap().unwrap();
        assert!(!k.covers(a2.id), "{}: the re-created feed is in scope", k.name);
        assert!(!k.feeds.unwrap().iter().any(|f| f.name == a_name));
    }
    for k in ["both", "only-a"] {
        assert!(s.delete_key(k).await.unwrap());
    }
    s.delete_feed(&a_name).await.unwrap();
    s.delete_feed(&b_name).await.unwrap();
}

/// The contract of [`crate::ReplicationStore`], for backends that keep replications.
/// One node at a time runs a replication's executions; a lease that ran
/// out is taken over, and the new holder goes on with what the last one
/// left running.
async fn execution_leases<S: crate::ReplicationStore>(s: &S, r: i64) {
    let t = now_millis();
    assert!(s.take_execution_lease(r, "node-a", t, t + 30_000).await.unwrap());
    assert!(
        !s.take_execution_lease(r, "node-b", t + 1, t + 30_000)
            .await
            .unwrap(),
        "held by a"
    );
    assert!(
        s.take_execution_lease(r, "node-a", t + 2, t + 40_000)
            .await
            .unwrap(),
        "renewed"
    );
    // a runs an execution; b's start-up leaves it alone while a's lease runs.
    let running = s.start_execution(r, "schedule").await.unwrap();
    // What a has reported so far is saved while it runs.
    let line = |m: &str| json!({"time": "2026-01-01T00:00:00.000Z", "level": "info", "message": m});
    s.save_execution_report(running, json!({"log": [line("from a")]}), "node-a")
        .await
        .unwrap();
    assert_eq!(
        s.executions(r, 1).await.unwrap()[0].report["log"][0]["message"],
        "from a"
    );
    assert_eq!(s.close_interrupted_executions("node-b", t + 3).await.unwrap(), 0);
    // A Stop asked through another node marks the running execution.
    assert_eq!(s.execution_stop_request(running).await.unwrap(), None);
    assert_eq!(
        s.request_execution_stop(r, "key ops (through node b)")
            .await
            .unwrap(),
        Some(running)
    );
    assert_eq!(
        s.execution_stop_request(running).await.unwrap().as_deref(),
        Some("key ops (through node b)")
    );
    assert_eq!(s.executions(r, 1).await.unwrap()[0].outcome, None);
    // a dies: once its lease ran out, b takes over and goes on with a's
    // execution under its id; an older one a left is closed.
    assert_eq!(
        s.adopt_execution(r, "node-b", t + 40_000).await.unwrap(),
        None,
        "b does not hold the lease yet"
    );
    assert!(
        !s.take_execution_lease(r, "node-b", t + 40_000, t + 70_000)
            .await
            .unwrap()
    );
    assert!(
        s.take_execution_lease(r, "node-b", t + 40_001, t + 70_000)
            .await
            .unwrap()
    );
    let ex = &s.executions(r, 1).await.unwrap()[0];
    assert_eq!((ex.id, ex.outcome.as_deref()), (running, None), "left for b");
    assert_eq!(s.adopt_execution(r, "node-a", t + 40_001).await.unwrap(), None);
    assert_eq!(
        s.adopt_execution(r, "node-b", t + 40_001).await.unwrap(),
        Some(running)
    );
    // a, still alive after all, cannot save over what b goes on with.
    s.save_execution_report(running, json!({"log": [line("late from a")]}), "node-a")
        .await
        .unwrap();
    assert_eq!(
        s.executions(r, 1).await.unwrap()[0].report["log"][0]["message"],
        "from a"
    );
    s.save_execution_report(
        running,
        json!({"log": [line("from a"), line("from b")]}),
        "node-b",
    )
    .await
    .unwrap();
    assert_eq!(
        s.executions(r, 1).await.unwrap()[0].report["log"][1]["message"],
        "from b"
    );
    // a, still alive after all, cannot end what b goes on with; b can.
    s.finish_execution(running, "stopped", json!({}), "node-a")
        .await
        .unwrap();
    assert_eq!(s.executions(r, 1).await.unwrap()[0].outcome, None);
    s.finish_execution(running, "succeeded", json!({}), "node-b")
        .await
        .unwrap();
    assert_eq!(
        s.executions(r, 1).await.unwrap()[0].outcome.as_deref(),
        Some("succeeded")
    );
    // Ended is ended: a late finish changes nothing.
    s.finish_execution(running, "failed", json!({}), "node-b")
        .await
        .unwrap();
    assert_eq!(
        s.executions(r, 1).await.unwrap()[0].outcome.as_deref(),
        Some("succeeded")
    );
    // Two left running (a crash during a crash): the newer one goes on,
    // the older one is closed.
    let older = s.start_execution(r, "schedule").await.unwrap();
    s.save_execution_report(
        older,
        json!({"log": [line("before the crash")], "feeds": []}),
        "node-b",
    )
    .await
    .unwrap();
    let newer = s.start_execution(r, "manual").await.unwrap();
    assert_eq!(
        s.adopt_execution(r, "node-b", t + 40_002).await.unwrap(),
        Some(newer)
    );
    let two = s.executions(r, 2).await.unwrap();
    assert_eq!(
        (two[1].id, two[1].outcome.as_deref()),
        (older, Some("interrupted"))
    );
    // Its saved lines stay, the reason it ended comes after them.
    let log = two[1].report["log"].as_array().cloned().unwrap_or_default();
    assert_eq!(log.len(), 2, "{}", two[1].report);
    assert_eq!(log[0]["message"], "before the crash");
    assert_eq!(log[1]["level"], "warn");
    assert!(
        log[1]["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("interrupted"),
        "{}",
        two[1].report
    );
    assert!(two[1].report["feeds"].is_array(), "the rest of the report stays");
    assert_eq!((two[0].id, two[0].outcome.as_deref()), (newer, None));
    s.finish_execution(newer, "succeeded", json!({}), "node-b")
        .await
        .unwrap();
    // Nothing runs: nothing to stop.
    assert_eq!(s.request_execution_stop(r, "key ops").await.unwrap(), None);
    assert_eq!(s.execution_stop_request(newer).await.unwrap(), None);
    // Given up, it is free at once.
    s.release_execution_lease(r, "node-a").await.unwrap();
    assert!(
        !s.take_execution_lease(r, "node-a", t + 40_002, t + 70_000)
            .await
            .unwrap(),
        "a no longer holds it"
    );
    s.release_execution_lease(r, "node-b").await.unwrap();
    assert!(
        s.take_execution_lease(r, "node-a", t + 40_003, t + 70_000)
            .await
            .unwrap()
    );
    s.release_execution_lease(r, "node-a").await.unwrap();
}

pub async fn run_replication<S: MetadataStore + crate::ReplicationStore>(s: &S) {
    let r = s.create_replication("r1", json!({"mode": "pull"})).await.unwrap();
    assert!(matches!(
        s.create_replication("r1", json!({})).await,
        Err(StoreError::Conflict(_))
    ));
    s.update_replication("r1", json!({"mode": "mirror"}))
        .await
        .unwrap();
    assert_eq!(
        s.replication("r1").await.unwrap().unwrap().config,
        json!({"mode": "mirror"})
    );
    assert_eq!(s.replications().await.unwrap().len(), 1);
    assert_eq!(s.replication_by_id(r.id).await.unwrap().unwrap().name, "r1");
    assert_eq!(s.replication_by_id(r.id + 1000).await.unwrap(), None);

    s.add_sync_token(r.id, "tok1", [5; 32]).await.unwrap();
    s.add_sync_token(r.id, "tok2", [6; 32]).await.unwrap();
    assert_eq!(s.sync_token("tok1").await.unwrap().unwrap().hash, [5; 32]);
    assert!(s.revoke_sync_token(r.id, "tok1").await.unwrap());
    assert!(s.sync_token("tok1").await.unwrap().unwrap().revoked);
    assert!(
        !s.sync_token("tok2").await.unwrap().unwrap().revoked,
        "rotation: other tokens stay valid"
    );
    assert_eq!(s.sync_tokens(r.id).await.unwrap().len(), 2);

    assert_eq!(s.cursor(r.id, "pull:a").await.unwrap(), 0);
    s.set_cursor(r.id, "pull:a", 42).await.unwrap();
    s.set_cursor(r.id, "pull:a", 43).await.unwrap();
    assert_eq!(s.cursor(r.id, "pull:a").await.unwrap(), 43);
    // Several positions move together; a prefix lists them by name.
    s.set_cursors(
        r.id,
        &[
            ("pull:a".into(), 50),
            ("pull:a:anchor".into(), -7),
            ("stuck:a:x".into(), 1),
            ("stuck:a:y".into(), 2),
        ],
        &[],
    )
    .await
    .unwrap();
    assert_eq!(s.cursor(r.id, "pull:a:anchor").await.unwrap(), -7);
    s.set_cursors(r.id, &[], &["stuck:a:x".into()]).await.unwrap();
    assert_eq!(
        s.cursors(r.id, "stuck:a:").await.unwrap(),
        vec![("stuck:a:y".to_string(), 2)]
    );
    assert_eq!(s.cursors(r.id, "pull:").await.unwrap().len(), 2);

    let cut = s.start_execution(r.id, "manual").await.unwrap();
    assert_eq!(
        s.close_interrupted_executions("me", now_millis()).await.unwrap(),
        1
    );
    let ex = s.executions(r.id, 10).await.unwrap();
    assert_eq!((ex[0].id, ex[0].outcome.as_deref()), (cut, Some("interrupted")));
    // Its log says why it ended, with a time.
    let line = &ex[0].report["log"][0];
    assert_eq!(line["level"], "warn", "{}", ex[0].report);
    assert!(
        line["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("interrupted")
    );
    assert!(line["time"].as_str().unwrap_or_default().ends_with('Z'), "{line}");
    execution_leases(s, r.id).await;
    let e = s.start_execution(r.id, "manual").await.unwrap();
    assert_eq!(s.executions(r.id, 10).await.unwrap()[0].outcome, None);
    s.finish_execution(e, "succeeded", json!({"added": 1}), "node-a")
        .await
        .unwrap();
    let ex = &s.executions(r.id, 10).await.unwrap()[0];
    assert_eq!(
        (ex.outcome.as_deref(), ex.report["added"].as_i64()),
        (Some("succeeded"), Some(1))
    );

    // Entries include tombstones; the horizon rises when they are pruned and seqs never go back.
    let f = s
        .create_feed(&FeedName::new("conf-repl").unwrap(), FeedType::Assets, false)
        .await
        .unwrap();
    s.write(
        f.id,
        vec![
            (upsert("a", 1, vec![]), Precondition::Any),
            (upsert("b", 2, vec![]), Precondition::Any),
        ],
    )
    .await
    .unwrap();
    s.write(f.id, vec![(delete("b", 3), Precondition::Any)])
        .await
        .unwrap();
    let all = s.entries(f.id, None, 10).await.unwrap();
    assert_eq!(all.len(), 2);
    assert!(all[0].live.is_some() && all[1].live.is_none());
    assert_eq!(
        s.entries_for(f.id, &[key("b"), key("zz")]).await.unwrap().len(),
        1
    );
    assert_eq!(s.live_count(f.id).await.unwrap(), 1);
    assert_eq!(s.horizon(f.id).await.unwrap(), 0);
    assert_eq!(s.prune_tombstones(f.id, now_millis() + 1000).await.unwrap(), 1);
    assert_eq!(s.horizon(f.id).await.unwrap(), 3);
    assert_eq!(s.entries(f.id, None, 10).await.unwrap().len(), 1);
    assert_eq!(s.last_seq(f.id).await.unwrap(), 3);
    let out = s
        .write(f.id, vec![(upsert("c", 4, vec![]), Precondition::Any)])
        .await
        .unwrap();
    assert_eq!(
        out[0],
        WriteOutcome::Applied { seq: 4 },
        "a seq was reused after pruning"
    );

    let d = Digest::of(b"repl-blob");
    s.lease_blob(&d, 1, 0).await.unwrap();
    s.write(f.id, vec![(upsert("with-blob", 5, vec![d]), Precondition::Any)])
        .await
        .unwrap();
    assert!(s.blob_referenced(&d, &[f.id]).await.unwrap());
    assert!(!s.blob_referenced(&d, &[f.id + 1000]).await.unwrap());
    s.write(
        f.id,
        vec![(upsert("also-with-blob", 6, vec![d]), Precondition::Any)],
    )
    .await
    .unwrap();
    let keys: Vec<String> = s
        .blob_keys(&d, f.id, 10)
        .await
        .unwrap()
        .iter()
        .map(|k| k.as_str().to_owned())
        .collect();
    assert_eq!(keys, ["also-with-blob", "with-blob"]);
    assert_eq!(s.blob_keys(&d, f.id, 1).await.unwrap().len(), 1);
    assert!(s.blob_keys(&d, f.id + 1000, 10).await.unwrap().is_empty());

    // The bytes a reader from a cursor may have to move: each blob of a
    // live item changed after it, once, at its stored size.
    let (big, small) = (Digest::of(b"bytes-ahead-big"), Digest::of(b"bytes-ahead-small"));
    s.lease_blob(&big, 100, 0).await.unwrap();
    s.lease_blob(&small, 30, 0).await.unwrap();
    let before = s.last_seq(f.id).await.unwrap();
    s.write(
        f.id,
        vec![
            (upsert("ahead-1", 6, vec![big]), Precondition::Any),
            (upsert("ahead-2", 7, vec![big, small]), Precondition::Any),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        s.live_bytes_after(f.id, before).await.unwrap(),
        130,
        "each blob once"
    );
    assert_eq!(
        s.live_bytes_after(f.id, before + 1).await.unwrap(),
        130,
        "only changes after the cursor"
    );
    s.write(f.id, vec![(delete("ahead-2", 8), Precondition::Any)])
        .await
        .unwrap();
    assert_eq!(
        s.live_bytes_after(f.id, before).await.unwrap(),
        100,
        "a deleted item's blobs need not move"
    );
    let last = s.last_seq(f.id).await.unwrap();
    assert_eq!(s.live_bytes_after(f.id, last).await.unwrap(), 0);

    // Peers of an incoming replication: saved, replaced, listed by
    // instance, forgotten; gone with the replication.
    s.save_peer(r.id, "b-inst", json!({"last_contact": 1}))
        .await
        .unwrap();
    s.save_peer(r.id, "a-inst", json!({"last_contact": 2}))
        .await
        .unwrap();
    s.save_peer(r.id, "b-inst", json!({"last_contact": 3}))
        .await
        .unwrap();
    assert_eq!(
        s.peers(r.id).await.unwrap(),
        vec![
            ("a-inst".to_string(), json!({"last_contact": 2})),
            ("b-inst".to_string(), json!({"last_contact": 3}))
        ]
    );
    assert!(s.peer(r.id, "a-inst").await.unwrap().is_some());
    assert!(s.peer(r.id, "no-such").await.unwrap().is_none());
    assert!(s.forget_peer(r.id, "a-inst").await.unwrap());
    assert!(s.peer(r.id, "a-inst").await.unwrap().is_none());
    assert!(!s.forget_peer(r.id, "a-inst").await.unwrap());
    assert_eq!(s.peers(r.id).await.unwrap().len(), 1);

    assert!(s.delete_replication("r1").await.unwrap());
    assert_eq!(s.sync_token("tok2").await.unwrap(), None);
    assert!(s.peers(r.id).await.unwrap().is_empty());
}

/// The contract under concurrency, for every backend: `nodes` are handles
/// on one store — for a database that several Ferry nodes share, one
/// handle per node (separate connection pools), so that the checks run
/// across nodes as well as within one.
///
/// - The change log never lets a reader skip a change: while writers on
///   every node append to one feed, a reader that follows the log with a
///   cursor (as a replication does) sees every change exactly once, in
///   increasing sequence order.
/// - Of several nodes creating the same key with [`Precondition::Absent`]
///   at once, exactly one succeeds; the others get a conflict.
/// - The collector never takes a blob that a write on another node is
///   making an item refer to: at the end every live item's blobs are
///   present.
pub async fn run_concurrent(nodes: Vec<std::sync::Arc<dyn MetadataStore>>) {
    assert!(!nodes.is_empty());
    change_log_never_skips(&nodes).await;
    one_of_concurrent_creates_wins(&nodes).await;
    a_file_and_a_folder_of_one_name_never_both_win(&nodes).await;
    collection_never_takes_a_blob_being_referenced(&nodes).await;
    ui_session_caps_hold_across_nodes(&nodes).await;
    upload_caps_hold_across_nodes(&nodes).await;
    one_node_claims_a_periodic_job(&nodes).await;
}

/// Of nodes claiming one period of a job at once, exactly one runs it.
async fn one_node_claims_a_periodic_job(nodes: &[std::sync::Arc<dyn MetadataStore>]) {
    let t = 1_900_000_000_000i64;
    for round in 0..5i64 {
        let claims: Vec<_> = (0..8)
            .map(|i| {
                let node = nodes[i % nodes.len()].clone();
                tokio::spawn(async move { node.claim_periodic("conc-gc", t + round * 10_000, 10_000).await })
            })
            .collect();
        let mut won = 0;
        for c in claims {
            won += usize::from(c.await.unwrap().unwrap());
        }
        assert_eq!(won, 1, "round {round}: {won} nodes claimed one period");
    }
}

async fn change_log_never_skips(nodes: &[std::sync::Arc<dyn MetadataStore>]) {
    const WRITERS: usize = 8;
    const PER_WRITER: usize = 60;
    let f = nodes[0]
        .create_feed(&FeedName::new("conc-log").unwrap(), FeedType::Assets, false)
        .await
        .unwrap();
    let total = WRITERS * PER_WRITER;
    let reader_node = nodes[nodes.len() - 1].clone();
    let reader = tokio::spawn(async move {
        let (mut cursor, mut seen) = (0i64, Vec::new());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while seen.len() < total {
            assert!(
                std::time::Instant::now() < deadline,
                "reader saw {} of {total}",
                seen.len()
            );
            let page = reader_node.changes_since(f.id, cursor, 7).await.unwrap();
            if page.is_empty() {
                tokio::task::yield_now().await;
                continue;
            }
            for c in page {
                assert!(c.seq > cursor, "sequence numbers go up");
                cursor = c.seq;
                seen.push(c.key.as_str().to_string());
            }
        }
        (cursor, seen)
    });
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let node = nodes[w % nodes.len()].clone();
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while i < PER_WRITER {
                // Batches of 1 to 3 changes.
                let n = (1 + (w + i) % 3).min(PER_WRITER - i);
                let batch = (i..i + n)
                    .map(|j| {
                        let mut c = upsert(&format!("w{w}-{j}"), 1 + j as u64, vec![]);
                        c.stamp.origin = InstanceId::from_bytes([w as u8 + 1; 16]);
                        (c, Precondition::Any)
                    })
                    .collect();
                node.write(f.id, batch).await.unwrap();
                i += n;
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let (cursor, seen) = reader.await.unwrap();
    let all = nodes[0].changes_since(f.id, 0, total + 10).await.unwrap();
    assert_eq!(all.len(), total);
    assert_eq!(cursor, nodes[0].last_seq(f.id).await.unwrap());
    let mut seen_sorted = seen.clone();
    seen_sorted.sort();
    seen_sorted.dedup();
    assert_eq!(
        seen_sorted.len(),
        total,
        "the follower saw every change exactly once"
    );
    let logged: Vec<String> = all.iter().map(|c| c.key.as_str().to_string()).collect();
    assert_eq!(seen, logged, "the follower saw the log in its order");
    nodes[0].delete_feed(&f.name).await.unwrap();
}

/// Writers on every node racing to make one name a file and a folder
/// (`d-N` and `d-N/f-W`): whatever the interleaving, the feed ends with
/// the file or the folder's files, never both.
async fn a_file_and_a_folder_of_one_name_never_both_win(nodes: &[std::sync::Arc<dyn MetadataStore>]) {
    let f = nodes[0]
        .create_feed(&FeedName::new("conc-path").unwrap(), FeedType::Assets, false)
        .await
        .unwrap();
    for round in 0..8 {
        let mut tasks = Vec::new();
        for w in 0..6usize {
            let node = nodes[w % nodes.len()].clone();
            let k = if w % 3 == 0 {
                format!("d-{round}")
            } else {
                format!("d-{round}/f-{w}")
            };
            tasks.push(tokio::spawn(async move {
                let mut c = upsert(&k, 1 + w as u64, vec![]);
                c.stamp.origin = InstanceId::from_bytes([w as u8 + 1; 16]);
                node.write(f.id, vec![(c, Precondition::PathFree)]).await
            }));
        }
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) | Err(StoreError::Conflict(_)) => {}
                Err(e) => panic!("unexpected: {e}"),
            }
        }
        let file = nodes[0].item(f.id, &key(&format!("d-{round}"))).await.unwrap();
        let under = nodes[0]
            .items(f.id, &format!("d-{round}/"), None, 10)
            .await
            .unwrap();
        assert!(
            file.is_some() == under.is_empty(),
            "round {round}: file {} and {} files under it",
            file.is_some(),
            under.len()
        );
    }
    nodes[0].delete_feed(&f.name).await.unwrap();
}

async fn one_of_concurrent_creates_wins(nodes: &[std::sync::Arc<dyn MetadataStore>]) {
    let f = nodes[0]
        .create_feed(&FeedName::new("conc-absent").unwrap(), FeedType::Assets, false)
        .await
        .unwrap();
    for round in 0..5 {
        let mut tasks = Vec::new();
        for w in 0..6usize {
            let node = nodes[w % nodes.len()].clone();
            tasks.push(tokio::spawn(async move {
                let mut c = upsert(&format!("same-{round}"), 1 + w as u64, vec![]);
                c.stamp.origin = InstanceId::from_bytes([w as u8 + 1; 16]);
                node.write(f.id, vec![(c, Precondition::Absent)]).await
            }));
        }
        let (mut won, mut refused) = (0, 0);
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => won += 1,
                Err(StoreError::Conflict(_)) => refused += 1,
                Err(e) => panic!("unexpected: {e}"),
            }
        }
        assert_eq!((won, refused), (1, 5), "round {round}");
    }
    nodes[0].delete_feed(&f.name).await.unwrap();
}

async fn collection_never_takes_a_blob_being_referenced(nodes: &[std::sync::Arc<dyn MetadataStore>]) {
    let f = nodes[0]
        .create_feed(&FeedName::new("conc-gc").unwrap(), FeedType::Assets, false)
        .await
        .unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let collector = {
        let (node, done) = (nodes[0].clone(), done.clone());
        tokio::spawn(async move {
            let mut taken = 0usize;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let marked = node.gc_mark(now_millis() + 3_600_000, 5).await.unwrap();
                taken += marked.len();
                node.gc_forget(&marked).await.unwrap();
                tokio::task::yield_now().await;
            }
            taken
        })
    };
    let mut writers = Vec::new();
    for w in 0..4usize {
        let node = nodes[w % nodes.len()].clone();
        writers.push(tokio::spawn(async move {
            let mut written = 0;
            for i in 0..50 {
                let d = Digest::of(format!("conc-gc-{w}-{i}").as_bytes());
                // Leased with an expired lease: the collector may take it
                // at any moment until an item refers to it.
                match node.lease_blob(&d, 1, 0).await {
                    Ok(()) | Err(StoreError::BlobBusy(_)) => {}
                    Err(e) => panic!("lease: {e}"),
                }
                let mut c = upsert(&format!("g{w}-{i}"), 1, vec![d]);
                c.stamp.origin = InstanceId::from_bytes([w as u8 + 1; 16]);
                match node.write(f.id, vec![(c, Precondition::Any)]).await {
                    Ok(_) => written += 1,
                    Err(StoreError::BlobMissing(_)) => {}
                    Err(e) => panic!("write: {e}"),
                }
            }
            written
        }));
    }
    let mut written = 0;
    for w in writers {
        written += w.await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    collector.await.unwrap();
    let items = nodes[0].items(f.id, "", None, 1000).await.unwrap();
    assert_eq!(items.len(), written);
    for it in &items {
        for d in &it.blobs {
            assert!(
                nodes[0].blob_present(d).await.unwrap(),
                "{} refers to blob {d}, which the collector took",
                it.key
            );
        }
    }
    nodes[0].delete_feed(&f.name).await.unwrap();
}
