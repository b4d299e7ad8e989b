//! The blob-store conformance suite against [`FsBlobStore`].
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use ferry_store::{BlobStore, FsBlobStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_blob_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("blobs");
    ferry_store::blob_conformance::run(|| {
        let root = root.clone();
        async move { Arc::new(FsBlobStore::open(root).await.unwrap()) as Arc<dyn BlobStore> }
    })
    .await;
}
