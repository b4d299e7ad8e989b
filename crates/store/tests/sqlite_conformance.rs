#![allow(clippy::unwrap_used)]

use ferry_store::{MetadataStore, SqliteStore};

#[tokio::test]
async fn sqlite_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("meta.db")).await.unwrap();
    ferry_store::conformance::run(&store).await;
    ferry_store::conformance::run_replication(&store).await;
}

#[tokio::test]
async fn sqlite_keeps_everything_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let id = store.instance_id().await.unwrap();
    let name = ferry_types::FeedName::new("kept").unwrap();
    store
        .create_feed(&name, ferry_types::FeedType::Pypi, false)
        .await
        .unwrap();
    drop(store);
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.instance_id().await.unwrap(), id);
    assert!(store.feed(&name).await.unwrap().is_some());
}
