//! The per-replication bandwidth cap: every blob stream of an execution
//! draws on one shared budget, so parallel transfers together stay under it.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ferry_store::ByteStream;
use futures::StreamExt;
use tokio::time::Instant;

/// Most credit a budget earns while nothing draws on it: after a pause
/// (the other side restarting, a page applied) bytes move at most this
/// long ahead of the cap, not as fast as the link allows until the
/// average since the start is met.
const BURST: Duration = Duration::from_millis(250);

/// A budget of `bytes_per_sec`, shared by the streams it paces (a token
/// bucket holding at most [`BURST`] of credit).
#[derive(Debug)]
pub struct Rate {
    /// When the bytes accounted so far are all due.
    next: Mutex<Instant>,
    bytes_per_sec: u64,
}

impl Rate {
    pub fn new(bytes_per_sec: Option<u64>) -> Option<Arc<Rate>> {
        bytes_per_sec.filter(|r| *r > 0).map(|r| {
            Arc::new(Rate {
                next: Mutex::new(Instant::now()),
                bytes_per_sec: r,
            })
        })
    }

    /// Accounts for `n` bytes and returns when they are due.
    fn due(&self, n: u64) -> Instant {
        let now = Instant::now();
        let cost = Duration::from_secs_f64(n as f64 / self.bytes_per_sec as f64);
        let mut next = self.next.lock().unwrap_or_else(PoisonError::into_inner);
        // Time the budget was not drawn on earns at most BURST of credit.
        let from = (*next).max(now.checked_sub(BURST).unwrap_or(now));
        *next = from + cost;
        *next
    }
}

/// Waits until `n` more bytes are due under the shared budget `rate`
/// (none: at once), for bytes read whole rather than streamed.
pub async fn pace(rate: &Option<Arc<Rate>>, n: u64) {
    if let Some(rate) = rate {
        tokio::time::sleep_until(rate.due(n)).await;
    }
}

/// Paces `stream` against the shared budget `rate` (none: unlimited).
/// Chunks larger than a quarter second's worth (at least 256 bytes) are
/// handed on in such pieces, so a low cap moves bytes steadily instead of
/// holding a whole chunk back for minutes.
pub fn limit(stream: ByteStream, rate: Option<Arc<Rate>>) -> ByteStream {
    let Some(rate) = rate else { return stream };
    let piece = usize::try_from(rate.bytes_per_sec / 4)
        .unwrap_or(usize::MAX)
        .max(256);
    Box::pin(futures::stream::unfold(
        (stream, rate, bytes::Bytes::new()),
        move |(mut s, rate, mut rest)| async move {
            let mut chunk = if rest.is_empty() {
                match s.next().await? {
                    Ok(c) => c,
                    Err(e) => return Some((Err(e), (s, rate, rest))),
                }
            } else {
                std::mem::take(&mut rest)
            };
            if chunk.len() > piece {
                rest = chunk.split_off(piece);
            }
            tokio::time::sleep_until(rate.due(chunk.len() as u64)).await;
            Some((Ok(chunk), (s, rate, rest)))
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn chunks(n: usize) -> ByteStream {
        let v: Vec<std::io::Result<Bytes>> = (0..n).map(|_| Ok(Bytes::from(vec![0u8; 1000]))).collect();
        Box::pin(futures::stream::iter(v))
    }

    async fn drain(s: ByteStream) -> usize {
        s.map(|c| c.map(|c| c.len()).unwrap_or(0))
            .collect::<Vec<_>>()
            .await
            .iter()
            .sum()
    }

    #[tokio::test(start_paused = true)]
    async fn parallel_streams_share_one_budget() {
        let rate = Rate::new(Some(5000));
        let t = Instant::now();
        let (a, b) = tokio::join!(
            drain(limit(chunks(5), rate.clone())),
            drain(limit(chunks(5), rate.clone()))
        );
        assert_eq!(a + b, 10_000);
        // 10 kB at 5 kB/s together: about 2 s, not 1 s as two separate caps would allow.
        assert!(t.elapsed() >= Duration::from_millis(1900), "{:?}", t.elapsed());
        assert!(t.elapsed() < Duration::from_millis(2500), "{:?}", t.elapsed());
        assert_eq!(drain(limit(chunks(3), None)).await, 3000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_earns_no_burst_past_a_quarter_second() {
        // 1 kB at 1 kB/s, then 10 s with nothing to move (the other side
        // restarting), then 5 kB: about 5 s (less the quarter second of
        // credit), not at once as an average since the start allowed.
        let rate = Rate::new(Some(1000));
        assert_eq!(drain(limit(chunks(1), rate.clone())).await, 1000);
        tokio::time::sleep(Duration::from_secs(10)).await;
        let t = Instant::now();
        assert_eq!(drain(limit(chunks(5), rate.clone())).await, 5000);
        assert!(t.elapsed() >= Duration::from_millis(4700), "{:?}", t.elapsed());
        assert!(t.elapsed() <= Duration::from_millis(5100), "{:?}", t.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_low_cap_hands_a_large_chunk_on_in_pieces() {
        // 1 KiB/s and one 10 KiB chunk: the first 256 bytes come after a
        // quarter second, not the whole chunk after 10 s.
        let rate = Rate::new(Some(1024));
        let big: ByteStream = Box::pin(futures::stream::iter(vec![Ok(Bytes::from(vec![7u8; 10240]))]));
        let mut s = limit(big, rate);
        let t = Instant::now();
        let first = s.next().await.unwrap().unwrap();
        assert_eq!(first.len(), 256);
        assert!(t.elapsed() <= Duration::from_millis(300), "{:?}", t.elapsed());
        let mut total = first.len();
        while let Some(c) = s.next().await {
            total += c.unwrap().len();
        }
        assert_eq!(total, 10240);
        assert!(t.elapsed() >= Duration::from_millis(9900), "{:?}", t.elapsed());
    }
}
