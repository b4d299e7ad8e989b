//! The periodic re-reading of damage records by a blob store that several
//! nodes share (see [`crate::BlobStore::refresh_damage`]).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::StoreError;

/// How often a blob store shared by several nodes reads the damage
/// records again by default: a marker another node wrote or removed is
/// seen here at most this long (plus one listing) later.
pub const DAMAGE_REFRESH: Duration = Duration::from_secs(30);

/// The interval of one store's refresher, changeable while it runs.
#[derive(Debug)]
pub(crate) struct RefreshEvery {
    every: Mutex<Duration>,
    changed: tokio::sync::Notify,
}

impl RefreshEvery {
    pub(crate) fn new(every: Duration) -> Arc<Self> {
        Arc::new(Self {
            every: Mutex::new(every),
            changed: tokio::sync::Notify::new(),
        })
    }

    /// Sets the interval (at least 10 ms); the next refresh is one new
    /// interval from now.
    pub(crate) fn set(&self, every: Duration) {
        *self
            .every
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = every.max(Duration::from_millis(10));
        self.changed.notify_one();
    }

    fn get(&self) -> Duration {
        *self
            .every
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A background task, ended when this is dropped (with its store).
#[derive(Debug)]
pub(crate) struct Refresher(tokio::task::JoinHandle<()>);

impl Drop for Refresher {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `refresh` every `every` until the returned handle is dropped. A
/// failed refresh is logged; the records keep what was read last.
pub(crate) fn spawn_refresher<F, Fut>(every: Arc<RefreshEvery>, refresh: F) -> Refresher
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), StoreError>> + Send,
{
    Refresher(tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(every.get()) => {}
                () = every.changed.notified() => continue,
            }
            if let Err(e) = refresh().await {
                tracing::warn!(error = %e, "could not read the blob damage records again; keeping what was read last");
            }
        }
    }))
}
