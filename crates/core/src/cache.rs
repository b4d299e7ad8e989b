//! Rendered indexes (packuments, simple pages, listings) kept in memory and
//! tagged with the feed's change-log position at render time.

use std::collections::HashMap;
use std::sync::RwLock;

use bytes::Bytes;
use ferry_store::FeedId;

const MAX_ENTRIES: usize = 10_000;

#[derive(Default)]
pub struct IndexCache {
    entries: RwLock<HashMap<(FeedId, String), (i64, Bytes)>>,
}

impl IndexCache {
    /// The body rendered for `key` if it was rendered at change-log position `seq`.
    pub fn get(&self, feed: FeedId, key: &str, seq: i64) -> Option<Bytes> {
        let map = self.entries.read().ok()?;
        match map.get(&(feed, key.to_string())) {
            Some((at, body)) if *at == seq => Some(body.clone()),
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

    pub fn put(&self, feed: FeedId, key: &str, seq: i64, body: Bytes) {
        if let Ok(mut map) = self.entries.write() {
            if map.len() >= MAX_ENTRIES {
                map.retain(|_, (at, _)| *at >= seq);
                if map.len() >= MAX_ENTRIES {
                    map.clear();
                }
            }
            map.insert((feed, key.to_string()), (seq, body));
        }
    }
}
