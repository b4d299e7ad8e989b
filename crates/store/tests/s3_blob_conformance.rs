//! The blob-store conformance suite against [`S3BlobStore`] on a real
//! S3-compatible server (`s3s-fs`, see `ferry_testkit::s3s`), and what only
//! S3 shows: multipart uploads end complete or aborted, an unreachable
//! bucket is an error (503 at the edge) that passes once it is back.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use ferry_store::{BlobCheck, BlobStore, ByteStream, S3BlobStore, S3Config, StoreError};
use ferry_testkit::s3s::{self, S3Server};
use ferry_types::Digest;
use futures::StreamExt;

const BUCKET: &str = "ferry-blobs";

fn config(server: &S3Server) -> S3Config {
    S3Config {
        endpoint: Some(server.endpoint.clone()),
        bucket: BUCKET.into(),
        region: "us-east-1".into(),
        path_style: true,
        prefix: "t/".into(),
        allow_http: true,
        access_key_id: Some(s3s::ACCESS_KEY.into()),
        secret_access_key: Some(s3s::SECRET_KEY.into()),
        session_token: None,
        part_size: ferry_store::MIN_PART_SIZE,
    }
}

async fn open(server: &S3Server, spool: &Path) -> S3BlobStore {
    S3BlobStore::open(config(server), spool).await.unwrap()
}

/// Files under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_blob_store_conforms() {
    let server = S3Server::start(BUCKET);
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let cfg = config(&server);
    ferry_store::blob_conformance::run(|| {
        let (cfg, spool) = (cfg.clone(), spool.clone());
        async move { Arc::new(S3BlobStore::open(cfg, spool).await.unwrap()) as Arc<dyn BlobStore> }
    })
    .await;
    // Content lives under the prefix's content keys.
    let bucket = server.root().join(BUCKET);
    assert!(bucket.join("t/sha256").is_dir());
    // Nothing is left in the spool but the areas themselves.
    for area in ["staging", "uploads", "multipart"] {
        assert_eq!(
            files_under(&spool.join(area)),
            Vec::<std::path::PathBuf>::new(),
            "{area}"
        );
    }
}

/// The same contract for a store opened as one of several nodes (upload
/// sessions also kept as chunk objects in the bucket): after the suite, no
/// session's chunks are left there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_blob_store_shared_by_nodes_conforms() {
    let server = S3Server::start(BUCKET);
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let cfg = config(&server);
    ferry_store::blob_conformance::run(|| {
        let (cfg, spool) = (cfg.clone(), spool.clone());
        async move { Arc::new(S3BlobStore::open_shared(cfg, spool).await.unwrap()) as Arc<dyn BlobStore> }
    })
    .await;
    let sessions = server.root().join(BUCKET).join("t/upload-sessions");
    let left: Vec<_> = files_under(&sessions)
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n.len() == 41))
        .collect();
    // The suite's last session was cut by a restart: its record would be
    // swept; nothing else may be left.
    assert!(left.len() <= 1, "{left:?}");
}

fn stream_of(data: Vec<u8>, chunk: usize) -> ByteStream {
    let chunks: Vec<std::io::Result<Bytes>> = data
        .chunks(chunk)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    Box::pin(futures::stream::iter(chunks))
}

/// A large blob goes up as a multipart upload; bytes changed in the bucket
/// behind the store's back are found on a whole read, taken out of service,
/// and replaced by the next verified copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_blobs_and_corrupt_objects() {
    let server = S3Server::start(BUCKET);
    let dir = tempfile::tempdir().unwrap();
    let store = open(&server, &dir.path().join("spool")).await;
    let content: Vec<u8> = (0..(11u32 << 20)).map(|i| (i % 251) as u8).collect();
    let d = Digest::of(&content);
    let staged = store
        .stage(stream_of(content.clone(), 1 << 20), u64::MAX, Some(d))
        .await
        .unwrap();
    store.commit(staged).await.unwrap();
    let hex = d.hex();
    let object = server
        .root()
        .join(BUCKET)
        .join(format!("t/sha256/{}/{hex}", &hex[..2]));
    assert_eq!(std::fs::metadata(&object).unwrap().len(), content.len() as u64);
    // Corrupt the object on the server's disk, same length.
    let mut bad = content.clone();
    bad[5 << 20] ^= 1;
    std::fs::write(&object, &bad).unwrap();
    let fresh = open(&server, &dir.path().join("spool")).await;
    assert!(matches!(
        fresh.check(&d).await.unwrap(),
        BlobCheck::Corrupt { .. }
    ));
    let mut s = fresh.get(&d, None).await.unwrap().stream;
    let mut got = 0usize;
    let mut err = None;
    while let Some(c) = s.next().await {
        match c {
            Ok(c) => got += c.len(),
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    let err = err.expect("a corrupt whole read ends with an error");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(got < content.len(), "the last chunk is held back");
    // Taken out of service (by a task the read started).
    for _ in 0..100 {
        if fresh.is_quarantined(&d) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(fresh.is_quarantined(&d));
    assert_eq!(fresh.size(&d).await.unwrap(), None);
    // Kept across a restart, until a verified copy comes.
    let again = open(&server, &dir.path().join("spool")).await;
    assert!(again.is_quarantined(&d));
    let staged = again
        .stage(stream_of(content.clone(), 1 << 20), u64::MAX, Some(d))
        .await
        .unwrap();
    assert_eq!(again.commit(staged).await.unwrap(), BlobCheck::Missing);
    assert!(!again.is_quarantined(&d));
    assert_eq!(std::fs::read(&object).unwrap(), content);
}

/// A stopped server is an `Unavailable` error everywhere (never a panic,
/// never "missing"), and the same store works again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_bucket_is_unavailable_until_it_is_back() {
    let mut server = S3Server::start(BUCKET);
    let dir = tempfile::tempdir().unwrap();
    let store = open(&server, &dir.path().join("spool")).await;
    let staged = store
        .stage(stream_of(b"kept".to_vec(), 2), 100, None)
        .await
        .unwrap();
    let d = staged.digest();
    store.commit(staged).await.unwrap();
    store.ready().await.unwrap();
    server.stop();
    assert!(matches!(store.ready().await, Err(StoreError::Unavailable(_))));
    assert!(matches!(
        store.get(&d, None).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(store.size(&d).await, Err(StoreError::Unavailable(_))));
    let staged = store
        .stage(stream_of(b"new".to_vec(), 2), 100, None)
        .await
        .unwrap();
    assert!(matches!(
        store.commit(staged).await,
        Err(StoreError::Unavailable(_))
    ));
    server.restart();
    store.ready().await.unwrap();
    assert_eq!(store.size(&d).await.unwrap(), Some(4));
}

/// A bucket that does not exist is refused at open, naming it (s3s-fs
/// answers NoSuchKey to a GET inside a missing bucket: only a question
/// about the bucket itself tells), and `ready` fails while the bucket is
/// gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_is_refused_at_open_and_fails_ready() {
    let server = S3Server::start(BUCKET);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&server);
    cfg.bucket = "no-such-bucket".into();
    match S3BlobStore::open(cfg, dir.path().join("spool-a")).await {
        Err(e @ StoreError::NoBucket(_)) => {
            let text = e.to_string();
            assert!(
                text.contains("bucket no-such-bucket at http://127.0.0.1:"),
                "{text}"
            );
        }
        Err(e) => panic!("expected NoBucket, got {e}"),
        Ok(_) => panic!("a store opened on a bucket that does not exist"),
    }
    let store = open(&server, &dir.path().join("spool-b")).await;
    store.ready().await.unwrap();
    let (bucket, away) = (server.root().join(BUCKET), server.root().join("away"));
    std::fs::rename(&bucket, &away).unwrap();
    assert!(matches!(store.ready().await, Err(StoreError::NoBucket(_))));
    std::fs::rename(&away, &bucket).unwrap();
    store.ready().await.unwrap();
}

fn direct_client(server: &S3Server) -> object_store::aws::AmazonS3 {
    object_store::aws::AmazonS3Builder::new()
        .with_endpoint(&server.endpoint)
        .with_bucket_name(BUCKET)
        .with_region("us-east-1")
        .with_allow_http(true)
        .with_access_key_id(s3s::ACCESS_KEY)
        .with_secret_access_key(s3s::SECRET_KEY)
        .build()
        .unwrap()
}

/// A multipart upload left by a crash (journalled in the spool) is aborted
/// when the store opens; one whose commit is dropped midway is aborted at
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_multipart_uploads_are_aborted() {
    use object_store::multipart::MultipartStore;
    let server = S3Server::start(BUCKET);
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let client = direct_client(&server);
    let key = object_store::path::Path::from("t/sha256/00/left-behind");
    let id = client.create_multipart(&key).await.unwrap();
    let part = client
        .put_part(&key, &id, 0, Bytes::from(vec![1u8; 5 << 20]).into())
        .await
        .unwrap();
    std::fs::create_dir_all(spool.join("multipart")).unwrap();
    std::fs::write(spool.join("multipart/crashed"), format!("{key}\n{id}\n")).unwrap();
    let store = open(&server, &spool).await;
    assert!(
        files_under(&spool.join("multipart")).is_empty(),
        "the journal entry is gone"
    );
    assert!(
        client.complete_multipart(&key, &id, vec![part]).await.is_err(),
        "the upload was aborted"
    );

    // A commit dropped while its parts go up.
    let content: Vec<u8> = (0..(40u32 << 20)).map(|i| (i % 249) as u8).collect();
    let d = Digest::of(&content);
    let staged = store
        .stage(stream_of(content, 1 << 20), u64::MAX, Some(d))
        .await
        .unwrap();
    let cut = tokio::time::timeout(std::time::Duration::from_millis(30), store.commit(staged)).await;
    assert!(cut.is_err(), "the commit finished before it could be dropped");
    let mut cleaned = false;
    for _ in 0..200 {
        if files_under(&spool.join("multipart")).is_empty() {
            cleaned = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(cleaned, "the dropped upload was not aborted");
    assert_eq!(store.size(&d).await.unwrap(), None);
    assert!(files_under(&spool.join("staging")).is_empty());
}

/// A part of an object not yet verified on this node is served only once
/// the whole object hashed right; a wrong one is taken out of service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_of_a_corrupt_object_is_never_served() {
    let server = S3Server::start(BUCKET);
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let store = open(&server, &spool).await;
    let staged = store
        .stage(stream_of(b"0123456789".to_vec(), 4), 100, None)
        .await
        .unwrap();
    let d = staged.digest();
    store.commit(staged).await.unwrap();
    let hex = d.hex();
    let object = server
        .root()
        .join(BUCKET)
        .join(format!("t/sha256/{}/{hex}", &hex[..2]));
    std::fs::write(&object, b"0123456780").unwrap();
    let fresh = open(&server, &spool).await;
    assert!(matches!(
        fresh.get(&d, Some(2..5)).await,
        Err(StoreError::BlobMissing(_))
    ));
    assert!(fresh.is_quarantined(&d));
    assert!(!object.exists());
    let aside = files_under(&server.root().join(BUCKET).join("t/corrupt"));
    assert_eq!(aside.len(), 1, "a copy is kept aside: {aside:?}");
    assert_eq!(std::fs::read(&aside[0]).unwrap(), b"0123456780");
}
