//! Striped, process-wide locks on names within a feed (a crate, a
//! project, a repository, a package id): what a feed module holds while it
//! reads a name's items and writes, so that two writes of one name (in two
//! spellings, or racing a check) serialize on this instance.

use std::hash::{DefaultHasher, Hash, Hasher};

use ferry_store::FeedId;
use tokio::sync::{Mutex, MutexGuard};

/// How many locks the names of every feed share (by hash).
const STRIPES: usize = 64;

/// One set of stripes (one per kind of name, as a `static`). Names of
/// every feed, and of every `Ferry` a process runs, share them by hash; a
/// collision only makes one writer wait for another. A task holds one at
/// a time and awaits nothing but its own store while holding it, so they
/// cannot deadlock.
pub(crate) struct NameLocks([Mutex<()>; STRIPES]);

impl NameLocks {
    pub(crate) const fn new() -> Self {
        Self([const { Mutex::const_new(()) }; STRIPES])
    }

    /// Waits for the lock of `name` (as the caller normalizes it) in `feed`.
    pub(crate) async fn lock(&'static self, feed: FeedId, name: &str) -> MutexGuard<'static, ()> {
        let mut h = DefaultHasher::new();
        feed.hash(&mut h);
        name.hash(&mut h);
        self.0[(h.finish() % STRIPES as u64) as usize].lock().await
    }
}
