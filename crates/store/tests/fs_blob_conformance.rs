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

/// Nodes sharing one blob folder see each other's damage records while
/// they run (each re-reads them every 200 ms here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_on_one_folder_see_each_others_damage_records() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("blobs");
    ferry_store::blob_conformance::several_nodes(|| {
        let root = root.clone();
        async move {
            let s = FsBlobStore::open_shared(root).await.unwrap();
            s.set_damage_refresh(std::time::Duration::from_millis(200));
            Arc::new(s) as Arc<dyn BlobStore>
        }
    })
    .await;
}

/// The single `missing` record file of an earlier version becomes one
/// marker per digest at open (and is removed).
#[tokio::test]
async fn a_single_missing_record_file_becomes_markers() {
    use ferry_types::Digest;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("blobs");
    std::fs::create_dir_all(&root).unwrap();
    let (x, y) = (Digest::of(b"x"), Digest::of(b"y"));
    std::fs::write(root.join("missing"), format!("{x} 11\n{y} 12\n")).unwrap();
    let s = FsBlobStore::open_shared(&root).await.unwrap();
    let mut want = vec![(x, 11), (y, 12)];
    want.sort();
    assert_eq!(s.missing_on_record(), want);
    assert!(!root.join("missing").exists());
    assert!(root.join("damage/missing").join(x.hex()).is_file());
    drop(s);
    let s = FsBlobStore::open(&root).await.unwrap();
    assert_eq!(s.missing_on_record(), want);
}

/// A small blob whose file went bad is not served by a read of several
/// small blobs at once: it is answered as an error and quarantined, and
/// the blobs beside it are served.
#[tokio::test]
async fn a_corrupt_small_blob_read_with_others_is_refused_and_quarantined() {
    use bytes::Bytes;
    use ferry_types::Digest;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("blobs");
    let s = FsBlobStore::open(&root).await.unwrap();
    let (good, bad) = (
        Bytes::from_static(b"good bytes"),
        Bytes::from_static(b"bad bytes!"),
    );
    let (dg, db) = (Digest::of(&good), Digest::of(&bad));
    s.put_many(vec![(dg, good.clone()), (db, bad.clone())])
        .await
        .unwrap();
    let path = root.join("sha256").join(&db.hex()[..2]).join(db.hex());
    assert!(path.is_file(), "{path:?}");
    std::fs::write(&path, b"BAD bytes!").unwrap();
    let got = s.get_small_for_verifier(&[dg, db], 1 << 20).await.unwrap();
    assert!(got[0].as_ref().unwrap().as_ref().unwrap() == &good);
    assert!(got[1].is_err(), "{:?}", got[1]);
    assert!(s.is_quarantined(&db));
    assert!(!path.exists());
}
