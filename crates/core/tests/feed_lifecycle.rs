//! A deleted feed leaves nothing behind in memory: the store may give its
//! id to the next feed created, and that feed must never be served the old
//! one's rendered indexes (a private feed's packuments under a new public
//! feed of the same name, say).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use bytes::Bytes;
use ferry_core::{Config, Ferry};
use ferry_store::{FsBlobStore, SqliteStore};
use ferry_types::{FeedName, FeedType};

#[tokio::test]
async fn a_feed_created_again_under_a_reused_id_starts_from_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let meta = Arc::new(SqliteStore::open(dir.path().join("m.db")).await.unwrap());
    let blobs = Arc::new(FsBlobStore::open(dir.path().join("blobs")).await.unwrap());
    let ferry = Ferry::open(meta, blobs, Config::default()).await.unwrap();
    let name = FeedName::new("pkgs").unwrap();

    let old = ferry.create_feed(&name, FeedType::Npm, true).await.unwrap();
    let body = ferry
        .cached_index(&old, "packument:hello", || async {
            Ok(Bytes::from_static(b"private"))
        })
        .await
        .unwrap();
    assert_eq!(body, "private");
    ferry.delete_feed(&name).await.unwrap();

    let new = ferry.create_feed(&name, FeedType::Npm, false).await.unwrap();
    assert_eq!(
        new.id, old.id,
        "the store reuses the id here; the test needs it to"
    );
    let body = ferry
        .cached_index(&new, "packument:hello", || async {
            Ok(Bytes::from_static(b"fresh"))
        })
        .await
        .unwrap();
    assert_eq!(body, "fresh", "the deleted feed's rendered index was served");
}
