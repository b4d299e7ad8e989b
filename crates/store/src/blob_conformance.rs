//! The contract of [`BlobStore`], as one suite every blob backend runs:
//! `ferry_store::blob_conformance::run(|| async { open() }).await` from that
//! backend's tests, where the closure opens the store afresh over the same
//! storage (a restart).
//!
//! Every check uses content of its own (salted per run), so the suite runs
//! against a store that already holds other blobs, and leaves nothing
//! staged behind. What can only be shown by damaging the storage behind a
//! store's back (corrupt files, moved-aside copies) stays in the backends'
//! own tests.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::future::Future;
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use ferry_types::Digest;
use futures::StreamExt;

use crate::{BlobBody, BlobCheck, BlobStore, ByteStream, HashedBytes, StoreError};

/// Runs every check. `open` opens the store over the same storage each
/// time it is called (a restart); the first call may find it empty or not.
pub async fn run<F, Fut>(open: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn BlobStore>>,
{
    let salt = format!("{:016x}", rand::random::<u64>());
    let s = open().await;
    s.ready().await.unwrap();
    stage_commit_read_delete(&*s, &salt).await;
    refuses_oversize_and_mismatch_keeping_nothing(&*s, &salt).await;
    empty_blob(&*s, &salt).await;
    large_blob_streams_and_ranges(&*s, &salt).await;
    concurrent_commits_of_one_blob(s.clone(), &salt).await;
    concurrent_transfers_take_turns(s.clone(), &salt).await;
    put_many_and_sizes(&*s, &salt).await;
    small_blobs_read_together(&*s, &salt).await;
    quarantine_until_a_verified_copy(&*s, &salt).await;
    upload_sessions(&*s, &salt).await;
    interrupted_transfer_resumes_after_a_restart(&open, &salt).await;
    upload_sessions_end_with_a_restart(&open, &salt).await;
    missing_record_survives_a_restart(&open, &salt).await;
}

fn body(parts: &[&[u8]]) -> ByteStream {
    let items: Vec<io::Result<Bytes>> = parts.iter().map(|p| Ok(Bytes::copy_from_slice(p))).collect();
    Box::pin(futures::stream::iter(items))
}

fn chunked(data: &[u8], chunk: usize) -> ByteStream {
    let items: Vec<io::Result<Bytes>> = data
        .chunks(chunk)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    Box::pin(futures::stream::iter(items))
}

/// A body that yields `first`, then fails.
fn broken(first: &[u8]) -> ByteStream {
    Box::pin(futures::stream::iter(vec![
        Ok(Bytes::copy_from_slice(first)),
        Err(io::Error::other("link dropped")),
    ]))
}

async fn read_all(b: BlobBody) -> Vec<u8> {
    let mut out = Vec::new();
    let mut s = b.stream;
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c.unwrap());
    }
    out
}

async fn read(s: &dyn BlobStore, d: &Digest, range: Option<std::ops::Range<u64>>) -> Vec<u8> {
    read_all(s.get(d, range).await.unwrap()).await
}

/// Bytes that differ at every position, so a misplaced range shows.
fn pattern(salt: &str, len: usize) -> Vec<u8> {
    let seed = salt
        .bytes()
        .fold(7u32, |a, b| a.wrapping_mul(31).wrapping_add(b as u32));
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

async fn stage_commit_read_delete(s: &dyn BlobStore, salt: &str) {
    let content = format!("hello world {salt}");
    let (a, b) = content.as_bytes().split_at(6);
    let staged = s.stage(body(&[a, b]), 1000, None).await.unwrap();
    let d = staged.digest();
    assert_eq!(d, Digest::of(content.as_bytes()));
    assert_eq!(staged.size(), content.len() as u64);
    assert_eq!(s.size(&d).await.unwrap(), None, "visible before its commit");
    assert!(matches!(s.get(&d, None).await, Err(StoreError::BlobMissing(_))));
    assert_eq!(s.commit(staged).await.unwrap(), BlobCheck::Missing);
    let len = content.len() as u64;
    assert_eq!(s.size(&d).await.unwrap(), Some(len));
    assert_eq!(s.check(&d).await.unwrap(), BlobCheck::Intact { size: len });
    let whole = s.get(&d, None).await.unwrap();
    assert_eq!(whole.total_size, len);
    assert_eq!(read_all(whole).await, content.as_bytes());
    // Ranges: inside, the first byte, the last byte, all of it.
    let part = s.get(&d, Some(6..9)).await.unwrap();
    assert_eq!(part.total_size, len, "a range read still tells the whole size");
    assert_eq!(read_all(part).await, b"wor");
    assert_eq!(read(s, &d, Some(0..1)).await, b"h");
    assert_eq!(
        read(s, &d, Some(len - 1..len)).await,
        &content.as_bytes()[content.len() - 1..]
    );
    assert_eq!(read(s, &d, Some(0..len)).await, content.as_bytes());
    assert_eq!(read(s, &d, Some(3..len)).await, &content.as_bytes()[3..]);
    // A second identical upload keeps the one copy in place.
    let again = s.stage(body(&[content.as_bytes()]), 1000, Some(d)).await.unwrap();
    assert_eq!(s.commit(again).await.unwrap(), BlobCheck::Intact { size: len });
    assert_eq!(read(s, &d, None).await, content.as_bytes());
    s.delete(&d).await.unwrap();
    s.delete(&d).await.unwrap();
    assert_eq!(s.size(&d).await.unwrap(), None);
    assert_eq!(s.check(&d).await.unwrap(), BlobCheck::Missing);
    assert!(matches!(s.get(&d, None).await, Err(StoreError::BlobMissing(_))));
    assert!(matches!(
        s.get(&d, Some(0..1)).await,
        Err(StoreError::BlobMissing(_))
    ));
}

async fn refuses_oversize_and_mismatch_keeping_nothing(s: &dyn BlobStore, salt: &str) {
    let content = format!("0123456789 {salt}");
    let d = Digest::of(content.as_bytes());
    assert!(matches!(
        s.stage(body(&[content.as_bytes()]), 10, None).await,
        Err(StoreError::TooLarge { limit: 10 })
    ));
    let wrong = Digest::of(b"something else");
    match s.stage(body(&[content.as_bytes()]), 1000, Some(wrong)).await {
        Err(StoreError::DigestMismatch { expected, actual }) => {
            assert_eq!((expected, actual), (wrong, d));
        }
        Err(e) => panic!("expected a digest mismatch, got {e}"),
        Ok(_) => panic!("expected a digest mismatch, got a staged blob"),
    }
    assert_eq!(s.size(&d).await.unwrap(), None);
    assert_eq!(s.size(&wrong).await.unwrap(), None);
    // A staged blob dropped without a commit leaves nothing either.
    let staged = s.stage(body(&[content.as_bytes()]), 1000, None).await.unwrap();
    drop(staged);
    assert_eq!(s.size(&d).await.unwrap(), None);
}

async fn empty_blob(s: &dyn BlobStore, _salt: &str) {
    let d = Digest::of(b"");
    let staged = s.stage(body(&[]), 10, Some(d)).await.unwrap();
    assert_eq!(staged.size(), 0);
    s.commit(staged).await.unwrap();
    assert_eq!(s.size(&d).await.unwrap(), Some(0));
    let b = s.get(&d, None).await.unwrap();
    assert_eq!(b.total_size, 0);
    assert!(read_all(b).await.is_empty());
    assert_eq!(s.check(&d).await.unwrap(), BlobCheck::Intact { size: 0 });
}

/// A blob of several S3 parts: streamed in, read back whole and in ranges
/// that cross part boundaries.
async fn large_blob_streams_and_ranges(s: &dyn BlobStore, salt: &str) {
    let mib = 1usize << 20;
    let content = pattern(salt, 13 * mib + 12_345);
    let d = Digest::of(&content);
    let staged = s
        .stage(chunked(&content, 256 << 10), u64::MAX, Some(d))
        .await
        .unwrap();
    assert_eq!(s.commit(staged).await.unwrap(), BlobCheck::Missing);
    let len = content.len() as u64;
    assert_eq!(s.size(&d).await.unwrap(), Some(len));
    let whole = s.get(&d, None).await.unwrap();
    assert_eq!(whole.total_size, len);
    let mut chunks = 0;
    let mut got = Vec::new();
    let mut stream = whole.stream;
    while let Some(c) = stream.next().await {
        let c = c.unwrap();
        assert!(c.len() < content.len(), "a large blob streams in pieces");
        chunks += 1;
        got.extend_from_slice(&c);
    }
    assert!(chunks > 1);
    assert!(got == content, "whole read differs");
    for r in [
        (5 * mib - 10) as u64..(5 * mib + 10) as u64,
        (8 * mib - 1) as u64..(8 * mib + 1) as u64,
        (mib as u64)..(12 * mib) as u64,
        len - 100..len,
    ] {
        let got = read(s, &d, Some(r.clone())).await;
        assert!(
            got == content[r.start as usize..r.end as usize],
            "range {r:?} differs"
        );
    }
    assert_eq!(s.check(&d).await.unwrap(), BlobCheck::Intact { size: len });
    s.delete(&d).await.unwrap();
}

/// Several uploads of one blob committed at once: one copy, intact.
async fn concurrent_commits_of_one_blob(s: Arc<dyn BlobStore>, salt: &str) {
    let content = pattern(&format!("{salt}-concurrent"), 6 << 20);
    let d = Digest::of(&content);
    let mut staged = Vec::new();
    for _ in 0..4 {
        staged.push(
            s.stage(chunked(&content, 1 << 20), u64::MAX, Some(d))
                .await
                .unwrap(),
        );
    }
    let commits = staged.into_iter().map(|st| {
        let s = s.clone();
        tokio::spawn(async move { s.commit(st).await.unwrap() })
    });
    let found: Vec<BlobCheck> = futures::future::join_all(commits)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let size = content.len() as u64;
    assert!(found.contains(&BlobCheck::Missing), "{found:?}");
    assert!(
        found
            .iter()
            .all(|f| *f == BlobCheck::Missing || *f == BlobCheck::Intact { size }),
        "{found:?}"
    );
    assert_eq!(s.check(&d).await.unwrap(), BlobCheck::Intact { size });
    assert!(read_all(s.get(&d, None).await.unwrap()).await == content);
}

/// Two writers of one digest's transfer at once: the second waits for the
/// first's claim, and what is stored is exactly the blob.
async fn concurrent_transfers_take_turns(s: Arc<dyn BlobStore>, salt: &str) {
    let content = pattern(&format!("{salt}-transfers"), 3 << 20);
    let d = Digest::of(&content);
    let slow = |data: Vec<u8>| -> ByteStream {
        let chunks: Vec<io::Result<Bytes>> = data
            .chunks(64 << 10)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        Box::pin(futures::stream::iter(chunks).then(|c| async move {
            tokio::task::yield_now().await;
            c
        }))
    };
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (s, content) = (s.clone(), content.clone());
        tasks.push(tokio::spawn(async move {
            let t = s.begin_transfer(&d).await.unwrap();
            if s.size(&d).await.unwrap().is_some() {
                return; // stored meanwhile: nothing to fetch
            }
            assert_eq!(t.offset(), 0, "a claim never sees another writer's bytes");
            let staged = s.continue_transfer(t, slow(content), u64::MAX).await.unwrap();
            s.commit(staged).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        s.check(&d).await.unwrap(),
        BlobCheck::Intact {
            size: content.len() as u64
        }
    );
    // Claims taken in digest order, duplicates dropped.
    let (x, y) = (Digest::of(b"x"), Digest::of(b"y"));
    let ts = s.begin_transfers(&[y, x, y]).await.unwrap();
    let mut want = vec![x, y];
    want.sort();
    assert_eq!(ts.iter().map(|t| t.digest()).collect::<Vec<_>>(), want);
    for t in ts {
        s.discard_transfer(t).await.unwrap();
    }
}

/// Several small blobs read in one call come back in order, each whole;
/// one larger than asked for is left to a streamed read, one not stored
/// is said missing. A flush of many blobs at once succeeds.
async fn small_blobs_read_together(s: &dyn BlobStore, salt: &str) {
    let blobs: Vec<Bytes> = (0..20)
        .map(|i| Bytes::from(format!("small {i} {salt}").repeat(i + 1)))
        .collect();
    let digests: Vec<Digest> = blobs.iter().map(|b| Digest::of(b)).collect();
    let placed = s
        .put_many(digests.iter().copied().zip(blobs.iter().cloned()).collect())
        .await
        .unwrap();
    assert!(placed.iter().all(Result::is_ok));
    s.sync(&digests).await.unwrap();
    let absent = Digest::of(format!("absent {salt}").as_bytes());
    let max_each = blobs[9].len() as u64;
    let mut asked = digests.clone();
    asked.insert(3, absent);
    let got = s.get_small_for_verifier(&asked, max_each).await.unwrap();
    assert_eq!(got.len(), asked.len());
    for (d, r) in asked.iter().zip(got) {
        if *d == absent {
            assert!(
                matches!(r, Err(StoreError::BlobMissing(x)) if x == absent),
                "{r:?}"
            );
            continue;
        }
        let i = digests.iter().position(|x| x == d).unwrap();
        match r.unwrap() {
            Some(bytes) => {
                assert!(i <= 9, "blob {i} is larger than asked for");
                assert!(bytes == blobs[i], "blob {i} read wrong");
            }
            None => assert!(i > 9, "blob {i} was not read"),
        }
    }
    for d in &digests {
        s.delete(d).await.unwrap();
    }
}

async fn put_many_and_sizes(s: &dyn BlobStore, salt: &str) {
    let a = Bytes::from(format!("a {salt}"));
    let b = Bytes::from(format!("b {salt}"));
    let c = Bytes::from(format!("c {salt}"));
    let (da, db, dc) = (Digest::of(&a), Digest::of(&b), Digest::of(&c));
    // `a` is there already.
    s.put_many(vec![(da, a.clone())])
        .await
        .unwrap()
        .pop()
        .unwrap()
        .unwrap();
    let out = s
        .put_many(vec![(da, a.clone()), (db, b.clone()), (dc, b.clone())])
        .await
        .unwrap();
    assert_eq!(out.len(), 3);
    assert_eq!(
        *out[0].as_ref().unwrap(),
        BlobCheck::Intact { size: a.len() as u64 }
    );
    assert_eq!(*out[1].as_ref().unwrap(), BlobCheck::Missing);
    assert!(matches!(out[2], Err(StoreError::DigestMismatch { .. })));
    s.sync(&[da, db]).await.unwrap();
    assert_eq!(
        s.sizes(&[db, dc, da]).await.unwrap(),
        vec![Some(b.len() as u64), None, Some(a.len() as u64)]
    );
    assert!(read(s, &db, None).await == b);
    for d in [da, db] {
        s.delete(&d).await.unwrap();
    }

    // Durable at once: a batch large enough for one flush of the lot (40
    // blobs), one already in place kept; every blob readable as written.
    let many: Vec<Bytes> = (0..40).map(|n| Bytes::from(format!("many {n} {salt}"))).collect();
    s.put_many(vec![(Digest::of(&many[0]), many[0].clone())])
        .await
        .unwrap();
    let batch: Vec<HashedBytes> = many.iter().map(|m| HashedBytes::new(m.clone())).collect();
    let out = s.put_many_durable(batch.clone()).await.unwrap();
    assert_eq!(out.len(), 40);
    assert_eq!(
        *out[0].as_ref().unwrap(),
        BlobCheck::Intact {
            size: many[0].len() as u64
        }
    );
    for (n, b) in batch.iter().enumerate() {
        assert_eq!(b.digest(), Digest::of(&many[n]));
        assert!(out[n].is_ok(), "blob {n}: {:?}", out[n]);
        assert!(read(s, &b.digest(), None).await == many[n], "blob {n}");
        s.delete(&b.digest()).await.unwrap();
    }
    // Bytes with a claimed digest are verified: a wrong one in a batch is
    // refused alone and nothing is stored under its digest.
    let mut claimed: Vec<(Digest, Bytes)> = many[..10].iter().map(|m| (Digest::of(m), m.clone())).collect();
    claimed[7].1 = Bytes::from_static(b"not what the digest says");
    let out = s.put_many(claimed.clone()).await.unwrap();
    for (n, (d, _)) in claimed.iter().enumerate() {
        if n == 7 {
            assert!(matches!(out[7], Err(StoreError::DigestMismatch { .. })));
            assert_eq!(s.sizes(&[*d]).await.unwrap(), vec![None]);
            continue;
        }
        assert!(out[n].is_ok(), "blob {n}: {:?}", out[n]);
        assert!(read(s, d, None).await == many[n], "blob {n}");
        s.delete(d).await.unwrap();
    }
    // A small batch (flushed file by file) too.
    let one = Bytes::from(format!("one {salt}"));
    let d1 = Digest::of(&one);
    assert_eq!(
        *s.put_many_durable(vec![HashedBytes::new(one.clone())])
            .await
            .unwrap()[0]
            .as_ref()
            .unwrap(),
        BlobCheck::Missing
    );
    assert!(read(s, &d1, None).await == one);
    s.delete(&d1).await.unwrap();
}

async fn quarantine_until_a_verified_copy(s: &dyn BlobStore, salt: &str) {
    let content = format!("suspect {salt}");
    let staged = s.stage(body(&[content.as_bytes()]), 1000, None).await.unwrap();
    let d = staged.digest();
    s.commit(staged).await.unwrap();
    assert!(!s.is_quarantined(&d));
    s.quarantine(&d).await.unwrap();
    assert!(s.is_quarantined(&d));
    assert!(s.quarantined().iter().any(|(q, _)| *q == d));
    assert_eq!(
        s.size(&d).await.unwrap(),
        None,
        "never served under its digest again"
    );
    assert!(matches!(s.get(&d, None).await, Err(StoreError::BlobMissing(_))));
    let copy = s.stage(body(&[content.as_bytes()]), 1000, Some(d)).await.unwrap();
    assert_eq!(s.commit(copy).await.unwrap(), BlobCheck::Missing);
    assert!(!s.is_quarantined(&d), "a verified copy ends the quarantine");
    assert!(read(s, &d, None).await == content.as_bytes());
    s.quarantine(&d).await.unwrap();
    s.release_quarantine(&d).await.unwrap();
    assert!(!s.is_quarantined(&d));
}

async fn upload_sessions(s: &dyn BlobStore, salt: &str) {
    let content = format!("abcdefgh {salt}");
    let bytes = content.as_bytes();
    let id = s.upload_begin().await.unwrap();
    assert_eq!(id.len(), 32);
    assert_eq!(s.upload_len(&id).await.unwrap(), Some(0));
    assert_eq!(s.upload_append(&id, body(&[&bytes[..3]]), 1000).await.unwrap(), 3);
    // A body that breaks midway leaves the session as it was.
    assert!(s.upload_append(&id, broken(b"zzzz"), 1000).await.is_err());
    assert_eq!(s.upload_len(&id).await.unwrap(), Some(3));
    // So does one past the limit.
    assert!(matches!(
        s.upload_append(&id, body(&[b"0123456789"]), 10).await,
        Err(StoreError::TooLarge { limit: 10 })
    ));
    assert_eq!(s.upload_len(&id).await.unwrap(), Some(3));
    let n = s
        .upload_append(&id, body(&[&bytes[3..5], &bytes[5..]]), 1000)
        .await
        .unwrap();
    assert_eq!(n, bytes.len() as u64);
    let d = Digest::of(bytes);
    let staged = s.upload_finish(&id, Some(&d)).await.unwrap();
    assert_eq!((staged.digest(), staged.size()), (d, bytes.len() as u64));
    assert_eq!(
        s.size(&d).await.unwrap(),
        None,
        "a finished session is only staged"
    );
    s.commit(staged).await.unwrap();
    assert!(read(s, &d, None).await == bytes);
    assert_eq!(
        s.upload_len(&id).await.unwrap(),
        None,
        "finished sessions are gone"
    );
    assert!(matches!(
        s.upload_append(&id, body(&[b"x"]), 100).await,
        Err(StoreError::NotFound(_))
    ));
    // A wrong digest discards the session and stores nothing.
    let id = s.upload_begin().await.unwrap();
    let other = format!("xyz {salt}");
    s.upload_append(&id, body(&[other.as_bytes()]), 100)
        .await
        .unwrap();
    assert!(matches!(
        s.upload_finish(&id, Some(&Digest::of(b"xyq"))).await,
        Err(StoreError::DigestMismatch { .. })
    ));
    assert_eq!(s.upload_len(&id).await.unwrap(), None);
    assert_eq!(s.size(&Digest::of(other.as_bytes())).await.unwrap(), None);
    // Abort (twice), and ids that are not sessions.
    let id = s.upload_begin().await.unwrap();
    s.upload_append(&id, body(&[b"abc"]), 100).await.unwrap();
    s.upload_abort(&id).await.unwrap();
    s.upload_abort(&id).await.unwrap();
    assert_eq!(s.upload_len(&id).await.unwrap(), None);
    assert!(s.upload_append("../../etc", body(&[b"x"]), 100).await.is_err());
    assert_eq!(s.upload_len("not-a-session").await.unwrap(), None);
}

async fn interrupted_transfer_resumes_after_a_restart<F, Fut>(open: &F, salt: &str)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn BlobStore>>,
{
    let content = format!("abcdefghij {salt}");
    let bytes = content.as_bytes();
    let d = Digest::of(bytes);
    {
        let s = open().await;
        let t = s.begin_transfer(&d).await.unwrap();
        assert_eq!((t.digest(), t.offset()), (d, 0));
        assert!(s.continue_transfer(t, broken(&bytes[..4]), 1000).await.is_err());
        assert_eq!(s.size(&d).await.unwrap(), None);
    }
    let s = open().await;
    let t = s.begin_transfer(&d).await.unwrap();
    assert_eq!(
        t.offset(),
        4,
        "a transfer resumes where it broke, across a restart"
    );
    let staged = s.continue_transfer(t, body(&[&bytes[4..]]), 1000).await.unwrap();
    assert_eq!((staged.digest(), staged.size()), (d, bytes.len() as u64));
    assert_eq!(s.commit(staged).await.unwrap(), BlobCheck::Missing);
    assert!(read(&*s, &d, None).await == bytes);
    assert_eq!(s.begin_transfer(&d).await.unwrap().offset(), 0);
    // Wrong bytes are refused, discarded, and nothing is stored.
    let other = format!("xyz {salt}");
    let od = Digest::of(other.as_bytes());
    let t = s.begin_transfer(&od).await.unwrap();
    assert!(matches!(
        s.continue_transfer(t, body(&[b"xyq wrong"]), 1000).await,
        Err(StoreError::DigestMismatch { .. })
    ));
    assert_eq!(s.begin_transfer(&od).await.unwrap().offset(), 0);
    assert_eq!(s.size(&od).await.unwrap(), None);
    // Past the limit: refused and discarded.
    let t = s.begin_transfer(&od).await.unwrap();
    assert!(matches!(
        s.continue_transfer(t, body(&[other.as_bytes()]), 3).await,
        Err(StoreError::TooLarge { .. })
    ));
    assert_eq!(s.begin_transfer(&od).await.unwrap().offset(), 0);
    // An explicit discard forgets what arrived.
    let t = s.begin_transfer(&od).await.unwrap();
    assert!(s.continue_transfer(t, broken(b"xy"), 1000).await.is_err());
    let t = s.begin_transfer(&od).await.unwrap();
    assert_eq!(t.offset(), 2);
    s.discard_transfer(t).await.unwrap();
    assert_eq!(s.begin_transfer(&od).await.unwrap().offset(), 0);
}

async fn upload_sessions_end_with_a_restart<F, Fut>(open: &F, salt: &str)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn BlobStore>>,
{
    let id = {
        let s = open().await;
        let id = s.upload_begin().await.unwrap();
        s.upload_append(&id, body(&[salt.as_bytes()]), 100).await.unwrap();
        id
    };
    let s = open().await;
    assert_eq!(s.upload_len(&id).await.unwrap(), None);
}

async fn missing_record_survives_a_restart<F, Fut>(open: &F, salt: &str)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn BlobStore>>,
{
    let gone = Digest::of(format!("gone {salt}").as_bytes());
    let back = format!("back {salt}");
    let back_d = Digest::of(back.as_bytes());
    let mut both = vec![(gone, 5), (back_d, 6)];
    both.sort();
    {
        let s = open().await;
        s.mark_missing(&gone, 5).await.unwrap();
        s.mark_missing(&back_d, 6).await.unwrap();
        s.mark_missing(&back_d, 6).await.unwrap();
        assert_eq!(s.missing_on_record(), both);
        let staged = s.stage(body(&[back.as_bytes()]), 1000, None).await.unwrap();
        s.commit(staged).await.unwrap();
    }
    let s = open().await;
    assert_eq!(
        s.missing_on_record(),
        vec![(gone, 5)],
        "less what was stored again"
    );
    s.unmark_missing(&gone).await.unwrap();
    s.unmark_missing(&gone).await.unwrap();
    assert_eq!(s.missing_on_record(), vec![]);
    let s = open().await;
    assert_eq!(s.missing_on_record(), vec![]);
    s.delete(&back_d).await.unwrap();
}

/// How long [`several_nodes`] waits for one node to see what another
/// recorded: the nodes' refresh interval is expected to be well below it.
pub const SEVERAL_NODES_BOUND: std::time::Duration = std::time::Duration::from_secs(5);

/// Waits until `cond` holds on `s`, for at most [`SEVERAL_NODES_BOUND`],
/// without asking the store to refresh: only its own periodic re-reading
/// can make it hold.
async fn eventually(s: &dyn BlobStore, what: &str, cond: impl Fn(&dyn BlobStore) -> bool) {
    let start = std::time::Instant::now();
    while !cond(s) {
        assert!(
            start.elapsed() < SEVERAL_NODES_BOUND,
            "{what}: not seen within {SEVERAL_NODES_BOUND:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn has(list: Vec<(Digest, i64)>, d: &Digest) -> bool {
    list.iter().any(|(x, _)| x == d)
}

/// The damage records of several nodes sharing one storage, while they
/// run: `open_node` opens one more node on it (shared, refreshing its
/// damage records at an interval well below [`SEVERAL_NODES_BOUND`]).
/// Node A records, node B sees it within the bound; B clears, A sees it
/// cleared; both record different blobs at once and both records survive.
pub async fn several_nodes<F, Fut>(open_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn BlobStore>>,
{
    let salt = format!("{:016x}", rand::random::<u64>());
    let a = open_node().await;
    let b = open_node().await;

    // Missing: A marks, B sees; B clears, A sees it cleared.
    let lost = Digest::of(format!("lost {salt}").as_bytes());
    a.mark_missing(&lost, 7).await.unwrap();
    eventually(&*b, "b sees a's missing record", |s| {
        has(s.missing_on_record(), &lost)
    })
    .await;
    assert!(
        s_time(&b.missing_on_record(), &lost) == Some(7),
        "with the time a recorded"
    );
    b.unmark_missing(&lost).await.unwrap();
    eventually(&*a, "a sees b's clearing", |s| !has(s.missing_on_record(), &lost)).await;

    // Quarantine: A takes a blob out of service, B sees it; a verified
    // copy committed on B ends it, and A sees that.
    let content = format!("suspect on several nodes {salt}");
    let staged = a.stage(body(&[content.as_bytes()]), 1000, None).await.unwrap();
    let d = staged.digest();
    a.commit(staged).await.unwrap();
    a.quarantine(&d).await.unwrap();
    eventually(&*b, "b sees a's quarantine", |s| s.is_quarantined(&d)).await;
    let copy = b.stage(body(&[content.as_bytes()]), 1000, Some(d)).await.unwrap();
    b.commit(copy).await.unwrap();
    assert!(!b.is_quarantined(&d));
    eventually(&*a, "a sees the quarantine ended", |s| !s.is_quarantined(&d)).await;

    // Both record at once, many each: no record is lost, on either node
    // or on a node starting afterwards.
    let mine = |who: &str, i: usize| Digest::of(format!("{who} {i} {salt}").as_bytes());
    let (ours_a, ours_b): (Vec<Digest>, Vec<Digest>) = (0..20).map(|i| (mine("a", i), mine("b", i))).unzip();
    let (a2, b2) = (a.clone(), b.clone());
    let by_a = tokio::spawn(async move {
        for (i, d) in ours_a.iter().enumerate() {
            a2.mark_missing(d, i as i64).await.unwrap();
        }
    });
    let by_b = tokio::spawn(async move {
        for (i, d) in ours_b.iter().enumerate() {
            b2.mark_missing(d, i as i64).await.unwrap();
        }
    });
    by_a.await.unwrap();
    by_b.await.unwrap();
    let all: Vec<Digest> = (0..20).flat_map(|i| [mine("a", i), mine("b", i)]).collect();
    for s in [&a, &b] {
        eventually(&**s, "every record of both nodes", |s| {
            let on = s.missing_on_record();
            all.iter().all(|d| has(on.clone(), d))
        })
        .await;
    }
    let c = open_node().await;
    let on = c.missing_on_record();
    assert!(all.iter().all(|d| has(on.clone(), d)), "a record was lost");
    for d in &all {
        c.unmark_missing(d).await.unwrap();
    }
    c.delete(&d).await.unwrap();
}

fn s_time(list: &[(Digest, i64)], d: &Digest) -> Option<i64> {
    list.iter().find(|(x, _)| x == d).map(|(_, at)| *at)
}
