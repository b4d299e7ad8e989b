//! Several nodes of one instance on one bucket (and prefix): two or three
//! `S3BlobStore`s, as separate `ferry serve` processes would hold them, on
//! one real `s3s-fs`. What one node records about damaged blobs, the others
//! never overwrite; a starting node never aborts an upload another node is
//! sending; a dead node's unfinished uploads are aborted.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use bytes::Bytes;
use ferry_store::{BlobCheck, BlobStore, ByteStream, S3BlobStore, S3Config};
use ferry_testkit::s3s::{self, S3Server};
use ferry_types::Digest;

const BUCKET: &str = "ferry-nodes";

fn config(server: &S3Server) -> S3Config {
    S3Config {
        endpoint: Some(server.endpoint.clone()),
        bucket: BUCKET.into(),
        region: "us-east-1".into(),
        path_style: true,
        prefix: "i/".into(),
        allow_http: true,
        access_key_id: Some(s3s::ACCESS_KEY.into()),
        secret_access_key: Some(s3s::SECRET_KEY.into()),
        session_token: None,
        part_size: ferry_store::MIN_PART_SIZE,
    }
}

/// A node with a spool of its own.
async fn node(server: &S3Server, spool: &Path) -> S3BlobStore {
    S3BlobStore::open_shared(config(server), spool).await.unwrap()
}

fn stream_of(data: Vec<u8>) -> ByteStream {
    let chunks: Vec<std::io::Result<Bytes>> = data
        .chunks(1 << 20)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    Box::pin(futures::stream::iter(chunks))
}

async fn put(store: &S3BlobStore, data: &[u8]) -> Digest {
    let staged = store
        .stage(stream_of(data.to_vec()), u64::MAX, None)
        .await
        .unwrap();
    let d = staged.digest();
    store.commit(staged).await.unwrap();
    d
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn digests(list: Vec<(Digest, i64)>) -> Vec<Digest> {
    let mut v: Vec<Digest> = list.into_iter().map(|(d, _)| d).collect();
    v.sort();
    v
}

/// Two nodes, both running, each take a blob out of service and each
/// record a blob found missing: a node starting later knows all four (no
/// node's record replaced another's). A verified copy committed on the
/// node that did not quarantine the blob ends the quarantine for all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_never_overwrite_each_others_damage_records() {
    let server = S3Server::start(BUCKET);
    let dir = tempfile::tempdir().unwrap();
    let a = node(&server, &dir.path().join("a")).await;
    let b = node(&server, &dir.path().join("b")).await;
    let x = put(&a, b"blob x, to be found corrupt by node a").await;
    let y = put(&b, b"blob y, to be found corrupt by node b").await;
    a.quarantine(&x).await.unwrap();
    b.quarantine(&y).await.unwrap();
    let (m1, m2) = (Digest::of(b"lost one"), Digest::of(b"lost two"));
    a.mark_missing(&m1, 1).await.unwrap();
    b.mark_missing(&m2, 2).await.unwrap();

    let mut both = vec![x, y];
    both.sort();
    let mut lost = vec![m1, m2];
    lost.sort();
    let c = node(&server, &dir.path().join("c")).await;
    assert_eq!(digests(c.quarantined()), both, "a quarantine was lost");
    assert_eq!(digests(c.missing_on_record()), lost, "a missing record was lost");

    // Node b never knew of x's quarantine; its verified copy ends it.
    let again = put(&b, b"blob x, to be found corrupt by node a").await;
    assert_eq!(again, x);
    // Node a found m1 again; node b's record of m2 stays.
    a.unmark_missing(&m1).await.unwrap();
    let d = node(&server, &dir.path().join("d")).await;
    assert_eq!(digests(d.quarantined()), vec![y]);
    assert_eq!(digests(d.missing_on_record()), vec![m2]);
    assert!(matches!(d.check(&x).await.unwrap(), BlobCheck::Intact { .. }));
}

/// Nodes on one bucket see each other's damage markers while they run
/// (each lists them again every 200 ms here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_on_one_bucket_see_each_others_damage_records() {
    let server = S3Server::start(BUCKET);
    let dir = tempfile::tempdir().unwrap();
    let n = std::sync::atomic::AtomicUsize::new(0);
    let (server, dir, n) = (&server, &dir, &n);
    ferry_store::blob_conformance::several_nodes(|| async move {
        let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let s = node(server, &dir.path().join(format!("n{i}"))).await;
        s.set_damage_refresh(std::time::Duration::from_millis(200));
        std::sync::Arc::new(s) as std::sync::Arc<dyn BlobStore>
    })
    .await;
}

/// Nodes sharing one data directory (its spool) and one bucket: a node
/// that starts while another sends a multipart upload leaves that upload
/// alone, and the upload completes; the unfinished upload of a node that
/// died is aborted by the next node to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_node_aborts_only_a_dead_nodes_uploads() {
    use object_store::multipart::MultipartStore;
    let server = S3Server::start(BUCKET);
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let a = node(&server, &spool).await;

    // Node a sends 24 MiB (5 parts).
    let content: Vec<u8> = (0..(24u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 9) as u8)
        .collect();
    let d = Digest::of(&content);
    let staged = a
        .stage(stream_of(content.clone()), u64::MAX, Some(d))
        .await
        .unwrap();
    let sending = tokio::spawn(async move {
        let out = a.commit(staged).await;
        (a, out)
    });
    let mut journalled = false;
    for _ in 0..400 {
        if !files_under(&spool.join("multipart")).is_empty() {
            journalled = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(journalled, "node a's upload was never journalled");

    // Node b starts meanwhile.
    let b = node(&server, &spool).await;
    let (a, out) = sending.await.unwrap();
    out.expect("node a's upload was cut by node b's start");
    assert!(matches!(b.check(&d).await.unwrap(), BlobCheck::Intact { .. }));

    // A node that died (its liveness lock gone with it) left an upload.
    let client = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(&server.endpoint)
        .with_bucket_name(BUCKET)
        .with_region("us-east-1")
        .with_allow_http(true)
        .with_access_key_id(s3s::ACCESS_KEY)
        .with_secret_access_key(s3s::SECRET_KEY)
        .build()
        .unwrap();
    let key = object_store::path::Path::from("i/sha256/00/left-by-a-dead-node");
    let id = client.create_multipart(&key).await.unwrap();
    let part = client
        .put_part(&key, &id, 0, Bytes::from(vec![7u8; 5 << 20]).into())
        .await
        .unwrap();
    let dead = spool.join("multipart/node-00000000000000dd");
    std::fs::create_dir_all(&dead).unwrap();
    std::fs::write(dead.join("upload"), format!("{key}\n{id}\n")).unwrap();
    // Node a and b still run: a third node aborts the dead one's upload only.
    let _c = node(&server, &spool).await;
    assert!(!dead.exists(), "the dead node's journal stays");
    assert!(
        client.complete_multipart(&key, &id, vec![part]).await.is_err(),
        "the dead node's upload was not aborted"
    );
    drop((a, b));
}

/// The chunk objects of upload sessions in the bucket (any session).
fn session_chunks(server: &S3Server) -> Vec<PathBuf> {
    files_under(&server.object_path(BUCKET, "i/upload-sessions"))
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n.len() == 41))
        .collect()
}

/// An OCI upload session begun on node a goes on through node b (a chunk
/// larger than a part, so sent as a multipart upload), then a again (it
/// fetches only what b received), then b, which finishes it: the digest
/// holds over bytes three requests on two nodes received, and the chunks
/// are gone from the bucket. A session cancelled through the node that did
/// not begin it is gone everywhere; one whose chunks are gone is unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_session_goes_on_through_any_node_of_a_bucket() {
    let server = S3Server::start(BUCKET);
    let dir = tempfile::tempdir().unwrap();
    let a = node(&server, &dir.path().join("spool-a")).await;
    let b = node(&server, &dir.path().join("spool-b")).await;
    assert!(a.upload_sessions_everywhere());

    let one = b"the first chunk, through node a. ".to_vec();
    let two: Vec<u8> = (0..(6u32 << 20))
        .map(|i| (i.wrapping_mul(31) >> 3) as u8)
        .collect();
    let three = b"the third, through node a again. ".to_vec();
    let four = b"and the last, through b".to_vec();

    let id = a.upload_begin().await.unwrap();
    a.upload_resume(&id, 0).await.unwrap();
    let mut len = a
        .upload_append(&id, stream_of(one.clone()), u64::MAX)
        .await
        .unwrap();
    assert_eq!(len, one.len() as u64);

    b.upload_resume(&id, len).await.unwrap();
    len = b
        .upload_append(&id, stream_of(two.clone()), u64::MAX)
        .await
        .unwrap();
    assert_eq!(len, (one.len() + two.len()) as u64);

    a.upload_resume(&id, len).await.unwrap();
    assert_eq!(a.upload_len(&id).await.unwrap(), Some(len));
    len = a
        .upload_append(&id, stream_of(three.clone()), u64::MAX)
        .await
        .unwrap();

    b.upload_resume(&id, len).await.unwrap();
    len = b
        .upload_append(&id, stream_of(four.clone()), u64::MAX)
        .await
        .unwrap();
    assert_eq!(session_chunks(&server).len(), 4);

    let whole = [one.clone(), two, three, four].concat();
    assert_eq!(len, whole.len() as u64);
    let staged = b.upload_finish(&id, Some(&Digest::of(&whole))).await.unwrap();
    let d = staged.digest();
    b.commit(staged).await.unwrap();
    assert!(matches!(a.check(&d).await.unwrap(), BlobCheck::Intact { .. }));
    assert!(session_chunks(&server).is_empty(), "chunks left after finishing");
    // Finished: no node can take the session on again.
    assert!(a.upload_resume(&id, len).await.is_err());

    // Cancelled through the node that did not begin it.
    let id = a.upload_begin().await.unwrap();
    let len = a
        .upload_append(&id, stream_of(one.clone()), u64::MAX)
        .await
        .unwrap();
    b.upload_resume(&id, len).await.unwrap();
    b.upload_abort(&id).await.unwrap();
    assert!(session_chunks(&server).is_empty());
    assert!(matches!(
        b.upload_resume(&id, len).await,
        Err(ferry_store::StoreError::NotFound(_))
    ));

    // A session whose recorded length no chain of chunks reaches.
    let id = a.upload_begin().await.unwrap();
    let len = a
        .upload_append(&id, stream_of(one.clone()), u64::MAX)
        .await
        .unwrap();
    assert!(matches!(
        b.upload_resume(&id, len + 1).await,
        Err(ferry_store::StoreError::NotFound(_))
    ));
    // The sweep finds its chunks once they are older than the idle time.
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
    let stale = b.stale_upload_files(later).await.unwrap();
    assert!(stale.contains(&id), "{stale:?}");
    assert!(
        b.stale_upload_files(std::time::SystemTime::UNIX_EPOCH)
            .await
            .unwrap()
            .is_empty()
    );
    b.upload_abort(&id).await.unwrap();
    assert!(session_chunks(&server).is_empty());
}

/// A wrong digest at the end, through the node that received none of the
/// bytes, discards the session and its chunks and stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_digest_through_another_node_stores_nothing() {
    let server = S3Server::start(BUCKET);
    let dir = tempfile::tempdir().unwrap();
    let a = node(&server, &dir.path().join("spool-a")).await;
    let b = node(&server, &dir.path().join("spool-b")).await;
    let id = a.upload_begin().await.unwrap();
    let body = b"bytes that are not what the digest says".to_vec();
    let len = a
        .upload_append(&id, stream_of(body.clone()), u64::MAX)
        .await
        .unwrap();
    b.upload_resume(&id, len).await.unwrap();
    let wrong = Digest::of(b"something else");
    assert!(matches!(
        b.upload_finish(&id, Some(&wrong)).await,
        Err(ferry_store::StoreError::DigestMismatch { .. })
    ));
    assert!(session_chunks(&server).is_empty());
    assert!(matches!(
        b.check(&Digest::of(&body)).await.unwrap(),
        BlobCheck::Missing
    ));
}
