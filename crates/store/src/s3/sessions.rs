//! OCI upload sessions that go on through any node of a shared bucket.
//!
//! A store opened with [`S3BlobStore::open_shared`](super::S3BlobStore::open_shared)
//! keeps each session's bytes in its node's spool, as a single node does,
//! and also puts every chunk it appends in the bucket, as the object
//! `{prefix}upload-sessions/ID/START-END` (offsets of the session's bytes,
//! 20 decimal digits each so that names sort by offset), before the
//! request that sent the chunk answers. The database records a session's
//! length only after that request succeeded, so every recorded length is
//! the end of a chain of chunk objects starting at 0. A node that does not
//! hold the session at its recorded length follows that chain (from its
//! own last length when the chain passes there, else from 0), appends the
//! chunks to its spool file and lets the spool hash the file again.
//!
//! A chunk put by a request whose length was never recorded (the database
//! failed after the put) either is not on the chain or is written over by
//! the client's retry of the same range; should a node still assemble
//! bytes the client did not mean, the digest given at the end does not
//! match and nothing is stored.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::time::SystemTime;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt};

use super::{Inner, is_not_found};
use crate::StoreError;
use crate::blob::BlobStore;

/// The folder of session chunk objects under the store's prefix.
const SESSIONS: &str = "upload-sessions/";

/// Digits of each offset in a chunk's name.
const OFFSET_DIGITS: usize = 20;

/// One chunk object of a session: the session's bytes `range`.
#[derive(Debug, Clone)]
struct Chunk {
    range: Range<u64>,
    key: Key,
}

/// Parses a chunk object's name, `START-END` with `START < END`.
fn parse_chunk_name(name: &str) -> Option<Range<u64>> {
    let (a, b) = name.split_once('-')?;
    if a.len() != OFFSET_DIGITS || b.len() != OFFSET_DIGITS {
        return None;
    }
    let (start, end) = (a.parse::<u64>().ok()?, b.parse::<u64>().ok()?);
    (start < end).then_some(start..end)
}

/// A chain of chunks covering `from..to` exactly, each starting where the
/// one before ended; of several, the one taking the latest-named chunk at
/// each offset where a chain still reaches `to` (None when no chain does).
fn chain(chunks: &[Chunk], from: u64, to: u64) -> Option<Vec<Chunk>> {
    let mut by_start: BTreeMap<u64, Vec<&Chunk>> = BTreeMap::new();
    for c in chunks {
        if c.range.start >= from && c.range.end <= to {
            by_start.entry(c.range.start).or_default().push(c);
        }
    }
    // Offsets from which `to` cannot be reached, so each is tried once.
    let mut dead: HashSet<u64> = HashSet::new();
    let mut path: Vec<Chunk> = Vec::new();
    // Depth-first: a stack of (offset, candidates left at that offset).
    let mut stack: Vec<(u64, Vec<&Chunk>)> = vec![(from, by_start.get(&from).cloned().unwrap_or_default())];
    loop {
        let at = match stack.last() {
            None => return None,
            Some((at, _)) => *at,
        };
        if at == to {
            return Some(path);
        }
        let next = stack.last_mut().and_then(|(_, left)| left.pop());
        match next {
            Some(c) if !dead.contains(&c.range.end) => {
                path.push(c.clone());
                let end = c.range.end;
                stack.push((end, by_start.get(&end).cloned().unwrap_or_default()));
            }
            Some(_) => {}
            None => {
                dead.insert(at);
                stack.pop();
                path.pop();
            }
        }
    }
}

impl Inner {
    /// Whether sessions go through the bucket (a store shared by nodes).
    pub(super) fn sessions_in_bucket(&self) -> bool {
        self.spool.node().is_some()
    }

    fn session_prefix(&self, id: &str) -> Key {
        Key::from(format!("{}{SESSIONS}{id}/", self.prefix))
    }

    fn chunk_key(&self, id: &str, range: &Range<u64>) -> Key {
        Key::from(format!(
            "{}{SESSIONS}{id}/{:0w$}-{:0w$}",
            self.prefix,
            range.start,
            range.end,
            w = OFFSET_DIGITS
        ))
    }

    /// Puts bytes `range` of session `id`'s spool file in the bucket.
    pub(super) async fn put_session_chunk(&self, id: &str, range: Range<u64>) -> Result<(), StoreError> {
        let path = self
            .spool
            .upload_path(id)
            .ok_or_else(|| StoreError::NotFound(format!("upload {id}")))?;
        self.put_file_range(&self.chunk_key(id, &range), &path, range)
            .await?;
        Ok(())
    }

    /// The chunk objects of session `id`, each with its LastModified.
    async fn session_chunks(&self, id: &str) -> Result<Vec<(Chunk, i64)>, StoreError> {
        let prefix = self.session_prefix(id);
        let metas: Vec<object_store::ObjectMeta> = self
            .s3
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| self.unavailable("ListObjectsV2", e))?;
        let mut out: Vec<(Chunk, i64)> = metas
            .into_iter()
            .filter_map(|m| {
                let range = parse_chunk_name(m.location.filename()?)?;
                (m.size == range.end - range.start).then(|| {
                    (
                        Chunk {
                            range,
                            key: m.location.clone(),
                        },
                        m.last_modified.timestamp_millis(),
                    )
                })
            })
            .collect();
        // Oldest first: the chain search takes the latest-named candidate.
        out.sort_by_key(|(c, at)| (c.range.start, *at));
        Ok(out)
    }

    /// Makes this node's spool hold session `id`'s first `size` bytes
    /// from the bucket, then lets the spool take the session on (hashing
    /// its file again). [`StoreError::NotFound`] when the bucket holds no
    /// chain of chunks of that length (the session is gone),
    /// [`StoreError::Conflict`] while a request on this node appends to it.
    pub(super) async fn fetch_session(&self, id: &str, size: u64) -> Result<(), StoreError> {
        let missing = || StoreError::NotFound(format!("upload {id}"));
        let busy = || StoreError::Conflict(format!("upload {id} is busy with another request"));
        let path = self.spool.upload_path(id).ok_or_else(missing)?;
        let held = self.spool.upload_held(id)?;
        if held.is_some_and(|(_, busy)| busy) {
            return Err(busy());
        }
        let chunks: Vec<Chunk> = self
            .session_chunks(id)
            .await?
            .into_iter()
            .map(|(c, _)| c)
            .collect();
        // From this node's own last length when the chain passes there
        // (its file holds those bytes), else from the start.
        let own = held
            .map(|(len, _)| len)
            .filter(|len| *len <= size)
            .and_then(|len| chain(&chunks, len, size).map(|c| (len, c)));
        let (from, links) = match own {
            Some(found) => found,
            None => (0, chain(&chunks, 0, size).ok_or_else(missing)?),
        };
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .await?;
        if file.metadata().await?.len() < from {
            return self.fetch_from_zero(id, size, &chunks).await;
        }
        file.set_len(from).await?;
        let mut file = file;
        {
            use tokio::io::AsyncSeekExt;
            file.seek(std::io::SeekFrom::Start(from)).await?;
        }
        self.copy_chunks(id, &links, &mut file).await?;
        drop(file);
        self.spool.upload_resume(id, size).await
    }

    /// [`Inner::fetch_session`] into an emptied spool file.
    async fn fetch_from_zero(&self, id: &str, size: u64, chunks: &[Chunk]) -> Result<(), StoreError> {
        let missing = || StoreError::NotFound(format!("upload {id}"));
        let path = self.spool.upload_path(id).ok_or_else(missing)?;
        let links = chain(chunks, 0, size).ok_or_else(missing)?;
        let mut file = tokio::fs::File::create(&path).await?;
        self.copy_chunks(id, &links, &mut file).await?;
        drop(file);
        self.spool.upload_resume(id, size).await
    }

    /// Appends the chunk objects `links` to `file`, in order, each checked
    /// to hold as many bytes as its name says.
    async fn copy_chunks(
        &self,
        id: &str,
        links: &[Chunk],
        file: &mut tokio::fs::File,
    ) -> Result<(), StoreError> {
        use tokio::io::AsyncWriteExt;
        for c in links {
            let got = match self.s3.get(&c.key).await {
                Ok(g) => g,
                // Finished or cancelled through another node meanwhile.
                Err(e) if is_not_found(&e) => return Err(StoreError::NotFound(format!("upload {id}"))),
                Err(e) => return Err(self.unavailable("GetObject", e)),
            };
            let mut body = got.into_stream();
            let mut n = 0u64;
            while let Some(part) = body.next().await {
                let part = part.map_err(|e| self.unavailable("GetObject", e))?;
                n += part.len() as u64;
                file.write_all(&part).await?;
            }
            if n != c.range.end - c.range.start {
                return Err(StoreError::NotFound(format!(
                    "upload {id}: a chunk in the bucket holds {n} bytes, not {}",
                    c.range.end - c.range.start
                )));
            }
        }
        file.flush().await?;
        Ok(())
    }

    /// Deletes session `id`'s chunk objects (none is fine).
    pub(super) async fn delete_session(&self, id: &str) -> Result<(), StoreError> {
        let chunks = self.session_chunks(id).await?;
        futures::stream::iter(chunks)
            .map(|(c, _)| async move {
                match self.s3.delete(&c.key).await {
                    Ok(()) => Ok(()),
                    Err(e) if is_not_found(&e) => Ok(()),
                    Err(e) => Err(self.unavailable("DeleteObject", e)),
                }
            })
            .buffer_unordered(super::REQUESTS_IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// The ids of the sessions in the bucket whose newest chunk was put
    /// before `before`.
    pub(super) async fn stale_sessions(&self, before: SystemTime) -> Result<Vec<String>, StoreError> {
        let before_ms = before
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let prefix = Key::from(format!("{}{SESSIONS}", self.prefix));
        let metas: Vec<object_store::ObjectMeta> = self
            .s3
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| self.unavailable("ListObjectsV2", e))?;
        let mut newest: HashMap<String, i64> = HashMap::new();
        for m in metas {
            let mut parts = m
                .location
                .parts()
                .map(|p| p.as_ref().to_owned())
                .collect::<Vec<_>>();
            // …/upload-sessions/ID/START-END
            let (Some(_name), Some(id)) = (parts.pop(), parts.pop()) else {
                continue;
            };
            if self.spool.upload_path(&id).is_none() {
                continue;
            }
            let at = m.last_modified.timestamp_millis();
            let e = newest.entry(id).or_insert(at);
            *e = (*e).max(at);
        }
        Ok(newest
            .into_iter()
            .filter(|(_, at)| *at < before_ms)
            .map(|(id, _)| id)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(start: u64, end: u64, tag: &str) -> Chunk {
        Chunk {
            range: start..end,
            key: Key::from(format!("{tag}/{start}-{end}")),
        }
    }

    fn ranges(links: &[Chunk]) -> Vec<Range<u64>> {
        links.iter().map(|c| c.range.clone()).collect()
    }

    #[test]
    fn chunk_names_parse_only_when_well_formed() {
        assert_eq!(
            parse_chunk_name("00000000000000000000-00000000000000000010"),
            Some(0..10)
        );
        assert_eq!(
            parse_chunk_name("00000000000000000010-00000000000000000010"),
            None
        );
        assert_eq!(parse_chunk_name("0-10"), None);
        assert_eq!(
            parse_chunk_name("0000000000000000000x-00000000000000000010"),
            None
        );
    }

    #[test]
    fn the_chain_reaches_the_recorded_length_past_stray_chunks() {
        // A chunk 10..30 whose length was never recorded, then the retry
        // 10..20 and the next chunk 20..40.
        let chunks = vec![c(0, 10, "a"), c(10, 30, "b"), c(10, 20, "c"), c(20, 40, "d")];
        assert_eq!(
            ranges(&chain(&chunks, 0, 40).unwrap_or_default()),
            vec![0..10, 10..20, 20..40]
        );
        assert_eq!(
            ranges(&chain(&chunks, 0, 30).unwrap_or_default()),
            vec![0..10, 10..30]
        );
        assert_eq!(
            ranges(&chain(&chunks, 10, 40).unwrap_or_default()),
            vec![10..20, 20..40]
        );
        assert!(chain(&chunks, 0, 0).is_some_and(|l| l.is_empty()));
        assert!(chain(&chunks, 0, 35).is_none());
        assert!(chain(&chunks, 5, 40).is_none());
        assert!(chain(&[], 0, 1).is_none());
    }

    #[test]
    fn the_latest_chunk_of_a_range_is_taken() {
        let chunks = vec![c(0, 10, "old"), c(0, 10, "new")];
        let links = chain(&chunks, 0, 10).unwrap_or_default();
        assert_eq!(links.len(), 1);
        assert_eq!(links[0].key.as_ref(), "new/0-10");
    }
}
