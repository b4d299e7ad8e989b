#![allow(clippy::unwrap_used)]
//! The store conformance suite on a real PostgreSQL server (a private
//! cluster per test, or a fresh database on the server `scripts/test`
//! starts: `ferry_testkit::pg`).

use std::sync::Arc;

use ferry_store::{ConnectFailure, MetadataStore, PgStore, StoreError};
use ferry_testkit::pg::TestDatabase;

#[tokio::test]
async fn postgres_passes_the_conformance_suite() {
    let db = TestDatabase::new();
    let store = PgStore::connect(&db.url).await.unwrap();
    ferry_store::conformance::run(&store).await;
    ferry_store::conformance::run_replication(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_keeps_the_contract_under_concurrency_across_nodes() {
    let db = TestDatabase::new();
    // Three nodes: three pools on one database.
    let mut nodes: Vec<Arc<dyn MetadataStore>> = Vec::new();
    for _ in 0..3 {
        nodes.push(Arc::new(PgStore::connect(&db.url).await.unwrap()));
    }
    ferry_store::conformance::run_concurrent(nodes).await;
}

#[tokio::test]
async fn nodes_on_one_database_share_the_instance_and_its_feeds() {
    let db = TestDatabase::new();
    let (a, b) = tokio::join!(PgStore::connect(&db.url), PgStore::connect(&db.url));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.instance_id().await.unwrap(), b.instance_id().await.unwrap());
    let name = ferry_types::FeedName::new("shared").unwrap();
    a.create_feed(&name, ferry_types::FeedType::Npm, false)
        .await
        .unwrap();
    assert!(b.feed(&name).await.unwrap().is_some());
    drop((a, b));
    let again = PgStore::connect(&db.url).await.unwrap();
    assert!(
        again.feed(&name).await.unwrap().is_some(),
        "kept across reconnect"
    );
}

#[tokio::test]
async fn a_lost_database_is_unavailable_then_recovers() {
    // A shared server cannot be killed for one test: a private one.
    let mut db = TestDatabase::private();
    let store = PgStore::connect(&db.url).await.unwrap();
    let name = ferry_types::FeedName::new("before").unwrap();
    store
        .create_feed(&name, ferry_types::FeedType::Assets, false)
        .await
        .unwrap();
    db.kill_server();
    match store.feeds().await {
        Err(StoreError::Unavailable(m)) => assert!(m.contains("database"), "{m}"),
        other => panic!("expected unavailable, got {other:?}"),
    }
    // A backend outlives its killed postmaster until it notices (under
    // load, past the testkit's 200 ms): a pooled connection to one may
    // still answer for a moment, so the check is that pings fail soon.
    let mut last = store.ping().await;
    for _ in 0..100 {
        if matches!(last, Err(StoreError::Unavailable(_))) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        last = store.ping().await;
    }
    assert!(
        matches!(last, Err(StoreError::Unavailable(_))),
        "ping with the database gone: {last:?}"
    );
    db.restart_server();
    let mut ok = false;
    for _ in 0..50 {
        if store.ping().await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ok, "the pool reconnects by itself");
    assert!(store.feed(&name).await.unwrap().is_some());
}

#[tokio::test]
async fn a_failed_connection_at_start_names_its_cause_and_the_url_without_password() {
    // Nothing listens on a free port: "refused", not "pool timed out".
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://ferry:hunter2@127.0.0.1:{port}/ferry");
    let err = PgStore::connect(&url).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(
            err,
            StoreError::Connect {
                cause: ConnectFailure::Refused,
                ..
            }
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!("postgres://ferry@127.0.0.1:{port}/ferry")),
        "{text}"
    );
    assert!(text.contains("refused the connection"), "{text}");
    assert!(!text.contains("hunter2"), "the password is shown: {text}");

    // A server that answers, but not for this database or this user.
    let db = TestDatabase::new();
    let (server, _) = db.server_url().rsplit_once('/').unwrap();
    let err = PgStore::connect(&format!("{server}/ferry_no_such_database"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Connect { cause: ConnectFailure::NoDatabase(d), .. } if d == "ferry_no_such_database"),
        "{err}"
    );
    assert!(err.to_string().contains("does not exist"), "{err}");
    let (_, host) = server.split_once('@').unwrap();
    let err = PgStore::connect(&format!("postgres://ferry_no_such_role:pw@{host}/postgres"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Connect { cause: ConnectFailure::Authentication { user, .. }, .. } if user == "ferry_no_such_role"),
        "{err}"
    );
    assert!(!err.to_string().contains(":pw@"), "{err}");
}

#[tokio::test]
async fn a_node_hears_what_another_node_wrote() {
    use ferry_store::{Change, ChangeOp, Precondition, StoreEvent};
    let db = TestDatabase::new();
    let a = PgStore::connect(&db.url).await.unwrap();
    let b = PgStore::connect(&db.url).await.unwrap();
    let mut heard = b.events().expect("a shared store has events");
    let next = async |rx: &mut tokio::sync::broadcast::Receiver<StoreEvent>| {
        tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
            .await
            .expect("an event within 10 s")
            .unwrap()
    };
    let name = ferry_types::FeedName::new("heard").unwrap();
    let f = a
        .create_feed(&name, ferry_types::FeedType::Assets, false)
        .await
        .unwrap();
    let change = Change {
        key: ferry_types::ItemKey::new("k").unwrap(),
        stamp: ferry_types::Stamp {
            time: ferry_types::Hlc(5),
            origin: a.instance_id().await.unwrap(),
        },
        op: ChangeOp::Upsert {
            meta: serde_json::json!({}),
            blobs: vec![],
            created_at: None,
        },
    };
    a.write(f.id, vec![(change, Precondition::Any)]).await.unwrap();
    assert_eq!(
        next(&mut heard).await,
        StoreEvent::FeedChanged { feed: f.id, seq: 1 }
    );
    a.put_signing_key(f.id, "secret").await.unwrap();
    assert_eq!(
        next(&mut heard).await,
        StoreEvent::SigningKeyChanged { feed: f.id }
    );
    // A failed write says nothing.
    let bad = a.write(f.id + 999, vec![]).await;
    assert!(matches!(bad, Err(StoreError::NotFound(_))));
    a.delete_feed(&name).await.unwrap();
    assert_eq!(
        next(&mut heard).await,
        StoreEvent::FeedDeleted {
            feed: f.id,
            name: name.clone()
        }
    );
    // A key revoked (deleted, or replaced under its name) is named by its
    // hash; creating one says nothing.
    let key = |name: &str, hash: u8| ferry_store::NewApiKey {
        name: name.into(),
        hash: [hash; 32],
        permission: ferry_store::Permission::Read,
        feeds: None,
    };
    a.create_key(key("scraper", 1)).await.unwrap();
    a.put_named_key(key("scraper", 2)).await.unwrap();
    assert_eq!(next(&mut heard).await, StoreEvent::KeyRevoked { hash: [1; 32] });
    assert!(a.delete_key("scraper").await.unwrap());
    assert_eq!(next(&mut heard).await, StoreEvent::KeyRevoked { hash: [2; 32] });
    // A sync token revoked, a replication updated or deleted: peers'
    // sessions are checked again on every node.
    use ferry_store::ReplicationStore;
    let r = a.create_replication("edge", serde_json::json!({})).await.unwrap();
    a.add_sync_token(r.id, "0123456789abcdef", [3; 32]).await.unwrap();
    assert!(a.revoke_sync_token(r.id, "0123456789abcdef").await.unwrap());
    assert_eq!(next(&mut heard).await, StoreEvent::SessionsChanged);
    a.update_replication("edge", serde_json::json!({ "changed": true }))
        .await
        .unwrap();
    assert_eq!(next(&mut heard).await, StoreEvent::SessionsChanged);
    assert!(a.delete_replication("edge").await.unwrap());
    assert_eq!(next(&mut heard).await, StoreEvent::SessionsChanged);
}
