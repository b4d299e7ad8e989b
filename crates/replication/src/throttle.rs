//! A per-replication bandwidth cap on blob streams.

use std::time::Duration;

use tokio::time::Instant;

use ferry_store::ByteStream;
use futures::StreamExt;

/// Paces `stream` so that it averages at most `rate` bytes per second.
pub fn limit(stream: ByteStream, rate: Option<u64>) -> ByteStream {
    let Some(rate) = rate.filter(|r| *r > 0) else {
        return stream;
    };
    let start = Instant::now();
    Box::pin(futures::stream::unfold(
        (stream, 0u64),
        move |(mut s, sent)| async move {
            let chunk = s.next().await?;
            let sent = sent + chunk.as_ref().map_or(0, |c| c.len() as u64);
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            let elapsed = start.elapsed();
            if due > elapsed {
                tokio::time::sleep(due - elapsed).await;
            }
            Some((chunk, (s, sent)))
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[tokio::test(start_paused = true)]
    async fn paces_to_the_rate() {
        let chunks: Vec<std::io::Result<Bytes>> = (0..10).map(|_| Ok(Bytes::from(vec![0u8; 1000]))).collect();
        let s = limit(Box::pin(futures::stream::iter(chunks)), Some(5000));
        let t = tokio::time::Instant::now();
        let n: usize = s
            .map(|c| c.map(|c| c.len()).unwrap_or(0))
            .collect::<Vec<_>>()
            .await
            .iter()
            .sum();
        assert_eq!(n, 10_000);
        assert!(t.elapsed() >= Duration::from_millis(1900), "{:?}", t.elapsed());
    }
}
