//! Rendered indexes (packuments, simple pages, listings) kept in memory and
//! tagged with the feed's change-log position at render time (and, for the
//! answers that show download counts, how many times the feed's counts
//! were recorded since start-up).

use std::collections::HashMap;
use std::sync::RwLock;

use bytes::Bytes;
use ferry_store::FeedId;

const MAX_ENTRIES: usize = 10_000;

#[derive(Default)]
pub struct IndexCache {
    entries: RwLock<HashMap<(FeedId, String), (i64, u64, Bytes)>>,
}

impl IndexCache {
    /// The body rendered for `key` if it was rendered at change-log
    /// position `seq` and download-count generation `counts`.
    pub fn get(&self, feed: FeedId, key: &str, seq: i64, counts: u64) -> Option<Bytes> {
        let map = self.entries.read().ok()?;
        match map.get(&(feed, key.to_string())) {
            Some((at, n, body)) if *at == seq && *n == counts => Some(body.clone()),
            _ => None,
        }
    }

    /// Drops everything rendered for a deleted feed: the store may give
    /// its id to the next feed created, which must not be served the old
    /// feed's indexes.
    pub fn forget_feed(&self, feed: FeedId) {
        if let Ok(mut map) = self.entries.write() {
            map.retain(|(f, _), _| *f != feed);
        }
    }

    /// Keeps `body` as rendered at `seq` and generation `counts`.
    pub fn put(&self, feed: FeedId, key: &str, seq: i64, counts: u64, body: Bytes) {
        if let Ok(mut map) = self.entries.write() {
            if map.len() >= MAX_ENTRIES {
                map.retain(|_, (at, ..)| *at >= seq);
                if map.len() >= MAX_ENTRIES {
                    map.clear();
                }
            }
            map.insert((feed, key.to_string()), (seq, counts, body));
        }
    }
}
