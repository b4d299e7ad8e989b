//! The request metrics do not grow the heap with the number of requests an
//! instance answers when nobody scrapes `/metrics` (a recorder keeps each
//! histogram sample until it is drained; the server drains them itself).
//!
//! This binary counts the bytes its heap holds with a counting global
//! allocator (`cap`), so it holds this one test only.
#![allow(clippy::unwrap_used)]

mod common;

use std::alloc::System;

use axum::http::StatusCode;
use cap::Cap;

/// Counts the bytes the heap holds.
#[global_allocator]
static HEAP: Cap<System> = Cap::new(System, usize::MAX);

#[tokio::test]
async fn answering_requests_without_a_scrape_does_not_grow_the_heap() {
    let inst = common::Instance::new().await;
    // Every label set the loop uses exists before the first reading.
    for _ in 0..20_000 {
        assert_eq!(inst.get("/health").await.status, StatusCode::OK);
    }
    let settle = ferry_server::METRICS_UPKEEP_INTERVAL * 2 + std::time::Duration::from_millis(500);
    tokio::time::sleep(settle).await;
    let before = HEAP.allocated() as isize;

    // Samples kept until a scrape took about 16 bytes each: about 5 MB for
    // these requests. What the heap gains otherwise (the
    // summaries' sketches, caches) does not grow with the count.
    const REQUESTS: usize = 300_000;
    for _ in 0..REQUESTS {
        let r = inst.get("/health").await;
        assert_eq!(r.status, StatusCode::OK);
    }
    tokio::time::sleep(settle).await;
    let grown = HEAP.allocated() as isize - before;
    assert!(
        grown < 2 * 1024 * 1024,
        "the heap grew by {grown} bytes over {REQUESTS} requests that nobody scraped"
    );
}
