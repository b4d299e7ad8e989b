#![allow(clippy::unwrap_used)]
//! The concurrency part of the conformance suite on SQLite (several
//! handles on one database file, as one process's tasks use it).

use std::sync::Arc;

use ferry_store::{MetadataStore, SqliteStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_keeps_the_contract_under_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let nodes: Vec<Arc<dyn MetadataStore>> = vec![Arc::new(store.clone()), Arc::new(store)];
    ferry_store::conformance::run_concurrent(nodes).await;
}
