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
