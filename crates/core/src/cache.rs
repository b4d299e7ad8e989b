//! Rendered indexes (packuments, simple pages, listings) kept in memory and
//! tagged with the feed's change-log position at render time (and, for the
//! answers that show download counts, how many times the feed's counts
//! were recorded since start-up).

use std::collections::HashMap;
use std::sync::RwLock;

use bytes::Bytes;
use ferry_store::FeedId;

const MAX_ENTRIES: usize = 10_000;

/// One rendered body and what it was rendered at.
struct Entry {
    seq: i64,
    counts: u64,
    body: Bytes,
}

/// Rendered bodies by feed, then by key (looked up by `&str`: no key is
/// built to serve a hit).
#[derive(Default)]
pub struct IndexCache {
    entries: RwLock<HashMap<FeedId, HashMap<String, Entry>>>,
}

impl IndexCache {
    /// The body rendered for `key` if it was rendered at change-log
    /// position `seq` and download-count generation `counts`.
    pub fn get(&self, feed: FeedId, key: &str, seq: i64, counts: u64) -> Option<Bytes> {
        let map = self.entries.read().ok()?;
        map.get(&feed)?
            .get(key)
            .filter(|e| e.seq == seq && e.counts == counts)
            .map(|e| e.body.clone())
    }

    /// Drops everything rendered for a deleted feed: the store may give
    /// its id to the next feed created, which must not be served the old
    /// feed's indexes.
    pub fn forget_feed(&self, feed: FeedId) {
        if let Ok(mut map) = self.entries.write() {
            map.remove(&feed);
        }
    }

    /// Keeps `body` as rendered at `seq` and generation `counts`.
    pub fn put(&self, feed: FeedId, key: &str, seq: i64, counts: u64, body: Bytes) {
        if let Ok(mut map) = self.entries.write() {
            let len =
                |m: &HashMap<FeedId, HashMap<String, Entry>>| m.values().map(HashMap::len).sum::<usize>();
            if len(&map) >= MAX_ENTRIES {
                for feed_map in map.values_mut() {
                    feed_map.retain(|_, e| e.seq >= seq);
                }
                if len(&map) >= MAX_ENTRIES {
                    map.clear();
                }
            }
            map.entry(feed)
                .or_default()
                .insert(key.to_owned(), Entry { seq, counts, body });
        }
    }
}

/// A rendered answer with its strong entity tag (RFC 9110 §8.8.3).
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The body as served.
    pub body: Bytes,
    /// `"…"`: a hash of [`Rendered::body`] ([`content_etag`]), so it
    /// changes whenever the body does, whatever changed it (a write, a
    /// listed state, download counts, the host the links are built from).
    pub etag: String,
}

/// The strong entity tag of rendered bytes: the first 128 bits of their
/// sha256, quoted. Equal tags mean equal bytes (what strong comparison,
/// RFC 9110 §8.8.3.2, requires), on every node that renders them.
pub fn content_etag(body: &[u8]) -> String {
    format!("\"{}\"", &ferry_types::Digest::of(body).hex()[..32])
}

impl Rendered {
    /// The body and its tag, kept in the index cache as one value: the
    /// tag on a first line, then the body.
    pub(crate) fn pack(body: &[u8]) -> Bytes {
        let etag = content_etag(body);
        let mut out = Vec::with_capacity(etag.len() + 1 + body.len());
        out.extend_from_slice(etag.as_bytes());
        out.push(b'\n');
        out.extend_from_slice(body);
        Bytes::from(out)
    }

    /// The value [`Rendered::pack`] made; `None` if it is not one.
    pub(crate) fn unpack(packed: &Bytes) -> Option<Self> {
        let split = packed.iter().position(|b| *b == b'\n')?;
        let etag = std::str::from_utf8(&packed[..split]).ok()?.to_owned();
        Some(Self {
            etag,
            body: packed.slice(split + 1..),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packed_answer_keeps_its_body_and_a_tag_that_follows_the_bytes() {
        let a = Rendered::unpack(&Rendered::pack(b"{\"v\":1}\n")).unwrap();
        assert_eq!(&a.body[..], b"{\"v\":1}\n");
        assert_eq!(a.etag, content_etag(b"{\"v\":1}\n"));
        assert!(a.etag.starts_with('"') && a.etag.ends_with('"') && a.etag.len() == 34);
        let b = Rendered::unpack(&Rendered::pack(b"{\"v\":2}\n")).unwrap();
        assert_ne!(a.etag, b.etag);
        let empty = Rendered::unpack(&Rendered::pack(b"")).unwrap();
        assert!(empty.body.is_empty());
    }
}
