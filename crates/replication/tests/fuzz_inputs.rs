//! Random and mutated input to what replication parses from outside:
//! include/exclude globs, bundle files and the protocol's request bodies.
//! Each answers with a value or a typed error, never a panic, and a bundle
//! that is refused leaves nothing behind.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use bytes::Bytes;
use ferry_core::Ferry;
use ferry_replication::Replicator;
use ferry_replication::filter::Filter;
use ferry_replication::protocol::{ApplyRequest, ChangesPage, DigestList, HandshakeRequest, KeyList};
use ferry_store::{ByteStream, FsBlobStore, SqliteStore};
use ferry_types::{FeedName, FeedType, ItemKey};
use futures::StreamExt;
use proptest::prelude::*;

async fn instance(dir: &std::path::Path) -> Replicator {
    let meta = Arc::new(SqliteStore::open(dir.join("m.db")).await.unwrap());
    let blobs = Arc::new(FsBlobStore::open(dir.join("blobs")).await.unwrap());
    let ferry = Ferry::open(meta.clone(), blobs, ferry_core::Config::default())
        .await
        .unwrap();
    ferry
        .create_feed(&FeedName::new("files").unwrap(), FeedType::Assets, false)
        .await
        .unwrap();
    Replicator::new(ferry, meta)
}

fn body(bytes: Vec<u8>) -> ByteStream {
    Box::pin(futures::stream::once(async move { Ok(Bytes::from(bytes)) }))
}

/// A real bundle of a feed holding three small files.
fn bundle() -> Vec<u8> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let r = instance(dir.path()).await;
        let feed = r.ferry().feed(&FeedName::new("files").unwrap()).await.unwrap();
        for (p, c) in [("a.txt", "alpha"), ("d/b.txt", "beta"), ("c.bin", "gamma")] {
            ferry_core::assets::put(
                r.ferry(),
                &feed,
                p,
                body(c.as_bytes().to_vec()),
                "text/plain",
                None,
            )
            .await
            .unwrap();
        }
        let (_, mut stream) = r.export_bundle(&feed.name, 0).await.unwrap();
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn globs_of_any_shape_are_refused_or_filter_never_panic(
        include in prop::collection::vec("\\PC{0,24}", 0..4),
        exclude in prop::collection::vec("[*?\\[\\]{}!a-z/.-]{0,24}", 0..4),
        key in "[a-z/@._-]{1,40}",
    ) {
        if let (Ok(f), Ok(k)) = (Filter::new(&include, &exclude), ItemKey::new(key)) {
            for ty in FeedType::ALL {
                let _ = f.admits(ty, &k);
            }
        }
    }

    #[test]
    fn protocol_bodies_of_any_bytes_are_refused_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = serde_json::from_slice::<HandshakeRequest>(&bytes);
        let _ = serde_json::from_slice::<ApplyRequest>(&bytes);
        let _ = serde_json::from_slice::<KeyList>(&bytes);
        let _ = serde_json::from_slice::<DigestList>(&bytes);
        let _ = serde_json::from_slice::<ChangesPage>(&bytes);
    }
}

proptest! {
    // Each case imports into a fresh instance: fewer cases.
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn damaged_bundles_are_refused_whole_or_imported_whole(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let original = bundle();
        let mut bytes = original.clone();
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        if let Some(c) = cut {
            bytes.truncate(c.index(bytes.len()));
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let r = instance(dir.path()).await;
            let name = FeedName::new("files").unwrap();
            let result = r
                .import_bundle(&name, body(bytes), false)
                .await;
            let feed = r.ferry().feed(&name).await.unwrap();
            let items = r.ferry().items(&feed, "").await.unwrap();
            match result {
                // Refused: nothing of it is visible.
                Err(_) => assert!(items.is_empty(), "a refused bundle left {} items", items.len()),
                // Accepted (the damage hit padding or was harmless): every
                // visible item serves the bytes its blob names.
                Ok(_) => {
                    for item in items {
                        let mut s = r.ferry().read_blob(&item.blobs[0], None).await.unwrap().stream;
                        let mut got = Vec::new();
                        while let Some(c) = s.next().await {
                            got.extend_from_slice(&c.unwrap());
                        }
                        assert_eq!(ferry_types::Digest::of(&got), item.blobs[0]);
                    }
                }
            }
        });
    }
}
