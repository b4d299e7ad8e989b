//! The outgoing side's view of the other instance: a small typed client
//! over the replication API.

use std::time::Duration;

use ferry_store::ByteStream;
use ferry_types::{Digest, FeedName, ItemKey};
use futures::TryStreamExt;
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ReplError;
use crate::protocol::*;

/// A transport failure with its whole cause chain (a TLS verification
/// error sits several causes below reqwest's "error sending request").
fn transport(e: reqwest::Error) -> ReplError {
    let mut msg = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        let text = c.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        cause = c.source();
    }
    // rustls reading a plain-HTTP answer where a TLS record should be.
    if msg.contains("InvalidContentType") {
        msg.push_str(PLAIN_HTTP);
    }
    ReplError::Transport(msg)
}

/// `body`, ending with a [`std::io::ErrorKind::TimedOut`] error when its
/// next bytes take longer than `d` to come, or, with `min_rate` (bytes per
/// second, 0: none), when it brought fewer than `min_rate` per second over
/// `d` of waiting (one that trickles, never silent for `d`). Only time
/// spent waiting for the body counts: a reader that reads slowly (a
/// bandwidth cap, a busy disk) does not make the body slow.
fn stalling(body: ByteStream, d: Duration, min_rate: u64) -> ByteStream {
    // The body, the time waited for it and the bytes it brought in the
    // window so far.
    let state = (body, Duration::ZERO, 0u64);
    Box::pin(futures::stream::unfold(Some(state), move |state| async move {
        let (mut body, mut waited, mut got) = state?;
        let asked = tokio::time::Instant::now();
        match tokio::time::timeout(d, futures::StreamExt::next(&mut body)).await {
            Ok(Some(Ok(chunk))) => {
                waited += asked.elapsed();
                got += chunk.len() as u64;
                if min_rate > 0 && waited >= d {
                    let rate = (got as f64 / waited.as_secs_f64()) as u64;
                    if rate < min_rate {
                        return Some((
                            Err(std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                format!(
                                    "it sent {rate} bytes per second over {} s, under the {min_rate} a blob source must keep",
                                    waited.as_secs()
                                ),
                            )),
                            None,
                        ));
                    }
                    (waited, got) = (Duration::ZERO, 0);
                }
                Some((Ok(chunk), Some((body, waited, got))))
            }
            Ok(Some(Err(e))) => Some((Err(e), None)),
            Ok(None) => None,
            Err(_) => Some((
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no bytes for {} s", d.as_secs()),
                )),
                None,
            )),
        }
    }))
}

/// What a transport error says when an `https://` URL's address answered
/// plain HTTP (rustls found no TLS record): the URL is wrong, not the
/// other instance away, so the checks made when it is named refuse it.
pub(crate) const PLAIN_HTTP: &str = " (the address answers plain HTTP, not HTTPS: if the other instance serves no TLS, its URL begins with http://)";

/// How [`Remote::check`] begins the message of an error answer whose body
/// is not Ferry's JSON error shape (something else answers at that URL).
pub(crate) const NOT_FERRY: &str = "an answer that is not Ferry's";
/// Most bytes of a JSON answer read whole (a page of changes is far
/// smaller: 1,000 entries, 1 MiB of inline blobs): past it the answer is
/// refused, so another instance cannot fill this one's memory.
const ANSWER_MAX: usize = 256 << 20;
/// Most bytes of an error answer's body read (Ferry's own are a line of
/// JSON); the rest is left unread.
const ERROR_BODY_MAX: usize = 64 << 10;
/// Longest an error answer's body is waited for: one that trickles is cut
/// there, as a blob source that stalls is ([`crate::engine`]'s 15 s).
const ERROR_BODY_WAIT: Duration = Duration::from_secs(15);

/// The start of an error answer's body, as text: at most
/// [`ERROR_BODY_MAX`] bytes, within [`ERROR_BODY_WAIT`] (what came by
/// then; nothing if the body broke). A peer or blob source answering an
/// error with an endless or trickling body neither fills memory nor holds
/// the caller.
async fn error_text(mut resp: reqwest::Response) -> String {
    let mut got: Vec<u8> = Vec::new();
    let _ = tokio::time::timeout(ERROR_BODY_WAIT, read_up_to(&mut resp, ERROR_BODY_MAX, &mut got)).await;
    String::from_utf8_lossy(&got).into_owned()
}

/// Appends `resp`'s body to `out` up to `max` bytes in all; returns
/// whether the body ended within them (false: more was left unread).
///
/// Errors: the body broke (what came before stays in `out`).
async fn read_up_to(resp: &mut reqwest::Response, max: usize, out: &mut Vec<u8>) -> reqwest::Result<bool> {
    while let Some(c) = resp.chunk().await? {
        let room = max.saturating_sub(out.len());
        out.extend_from_slice(&c[..c.len().min(room)]);
        if c.len() > room {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `s` as one line of at most 200 characters (whitespace runs, line
/// breaks included, become one space), for quoting a body that is not
/// Ferry's (a web server's page).
pub(crate) fn one_line(s: &str) -> String {
    ferry_types::shortened(&flat(s), 200)
}

/// `s` as one line of at most 2,000 characters, for quoting a message of
/// another Ferry instance or of this one: those name the fix, and are
/// kept whole (the bound only stops an instance filling a listing).
pub(crate) fn one_line_whole(s: &str) -> String {
    ferry_types::shortened(&flat(s), 2000)
}

fn flat(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Longest wait for a handshake's whole answer (it does little work on
/// the other side).
const HANDSHAKE_WAIT: Duration = Duration::from_secs(30);
/// Longest wait for the whole answer of a request without a bound of its
/// own (change pages have theirs: the long poll's wait and 30 s). Applying
/// a page of received items checks each against its package, so this is
/// generous; blob transfers are bounded by their stall timeouts instead.
const ANSWER_WAIT: Duration = Duration::from_secs(600);

#[derive(Clone)]
pub struct Remote {
    http: reqwest::Client,
    base: String,
    token: String,
    /// This instance's id, sent as [`INSTANCE_HEADER`] on every request.
    instance: String,
    /// This process's id, sent as [`PROCESS_HEADER`] when set.
    process: Option<String>,
    /// Longest wait for an answer, or for the next bytes of a streamed
    /// one, before the request counts as broken (blob sources: one that
    /// hangs is left out instead of holding the execution).
    stall: Option<Duration>,
    /// Fewest bytes per second a `blobs/batch` answer must bring (see
    /// [`stalling`]); 0: no floor.
    min_rate: u64,
}

impl Remote {
    /// A client of the replication API at `url`, authenticating with sync
    /// token `token` and naming itself as instance `instance`.
    pub fn new(http: reqwest::Client, url: &str, token: &str, instance: ferry_types::InstanceId) -> Self {
        Self {
            http,
            base: format!("{}{BASE_PATH}", url.trim_end_matches('/')),
            token: token.to_string(),
            instance: instance.to_string(),
            process: None,
            stall: None,
            min_rate: 0,
        }
    }

    /// The same client, naming this process as `process` on every request
    /// ([`PROCESS_HEADER`]; None sends none).
    pub fn with_process(mut self, process: Option<&str>) -> Self {
        self.process = process.map(str::to_owned);
        self
    }

    /// The same client, giving up on a `blobs/batch` request whose answer,
    /// or whose next bytes, take longer than `d` (see [`Remote::fetch_batch`]).
    pub fn with_stall_timeout(mut self, d: Duration) -> Self {
        self.stall = Some(d);
        self
    }

    /// The same client, giving up on a `blobs/batch` answer that brings
    /// fewer than `bytes_per_sec` over the stall timeout's span of waiting
    /// (see [`Remote::with_stall_timeout`]; without one, no floor).
    pub fn with_min_rate(mut self, bytes_per_sec: u64) -> Self {
        self.min_rate = bytes_per_sec;
        self
    }

    fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let rb = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header(INSTANCE_HEADER, &self.instance);
        match &self.process {
            Some(p) => rb.header(PROCESS_HEADER, p),
            None => rb,
        }
    }

    async fn check(resp: reqwest::Response) -> Result<reqwest::Response, ReplError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = error_text(resp).await;
        // Ferry's errors are `{"error": "..."}`; anything else is quoted
        // as one short line after [`NOT_FERRY`] (a web server's HTML page
        // must not fill a warning or a listing's last error).
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(one_line_whole))
            .unwrap_or_else(|| format!("{NOT_FERRY}: {}", one_line(&text)));
        Err(match status {
            StatusCode::UNAUTHORIZED => {
                ReplError::Unauthorized(format!("the other instance refused the sync token: {message}"))
            }
            StatusCode::FORBIDDEN => {
                ReplError::Forbidden(format!("the other instance does not allow this: {message}"))
            }
            StatusCode::CONFLICT if message.contains("mode") || message.contains("same instance") => {
                ReplError::Refused(message)
            }
            s => ReplError::Remote {
                status: s.as_u16(),
                message,
            },
        })
    }

    /// Sends `rb` and reads its JSON answer. An answer that is not the
    /// replication protocol's JSON is [`ReplError::Remote`] with its status
    /// (something answered, but not as a Ferry instance does); a body cut
    /// off on the way is [`ReplError::Transport`].
    async fn json<T: DeserializeOwned>(&self, rb: reqwest::RequestBuilder) -> Result<T, ReplError> {
        self.json_within(rb, ANSWER_WAIT).await
    }

    /// [`Remote::json`], given up as [`ReplError::Transport`] when the
    /// whole answer has not come within `limit` (a peer that accepts the
    /// connection and never answers would otherwise hold the caller for
    /// good: a start, a `config apply`, an execution).
    async fn json_within<T: DeserializeOwned>(
        &self,
        rb: reqwest::RequestBuilder,
        limit: Duration,
    ) -> Result<T, ReplError> {
        match tokio::time::timeout(limit, self.json_answer(rb)).await {
            Ok(r) => r,
            Err(_) => Err(ReplError::Transport(format!(
                "the other instance did not answer within {} s",
                limit.as_secs()
            ))),
        }
    }

    async fn json_answer<T: DeserializeOwned>(&self, rb: reqwest::RequestBuilder) -> Result<T, ReplError> {
        let resp = rb.send().await.map_err(transport)?;
        let mut resp = Self::check(resp).await?;
        let status = resp.status().as_u16();
        let mut body: Vec<u8> = Vec::new();
        if !read_up_to(&mut resp, ANSWER_MAX, &mut body)
            .await
            .map_err(transport)?
        {
            return Err(ReplError::Remote {
                status,
                message: format!("its answer is larger than {} MiB", ANSWER_MAX >> 20),
            });
        }
        serde_json::from_slice::<T>(&body).map_err(|e| ReplError::Remote {
            status,
            message: format!("its answer is not the replication protocol's JSON ({e})"),
        })
    }

    async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ReplError> {
        self.json(self.req(Method::POST, path).json(body)).await
    }

    pub async fn handshake(&self, req: &HandshakeRequest) -> Result<HandshakeResponse, ReplError> {
        // Every 409 of the handshake refuses this configuration (mode, same
        // instance, feed type, feed not in the replication), whatever its words.
        let rb = self.req(Method::POST, "/handshake").json(req);
        self.json_within(rb, HANDSHAKE_WAIT).await.map_err(|e| match e {
            ReplError::Remote { status: 409, message } => ReplError::Refused(message),
            e => e,
        })
    }

    /// A page of the other side's change log after `since` (whose anchor,
    /// if known, is `anchor`: see [`crate::protocol::anchor`]), waiting up
    /// to `wait_secs` for something new.
    pub async fn changes(
        &self,
        feed: &FeedName,
        since: i64,
        anchor: i64,
        limit: usize,
        wait_secs: u64,
        extras: PageExtras,
    ) -> Result<ChangesPage, ReplError> {
        let mut query = vec![
            ("since", since.to_string()),
            ("limit", limit.to_string()),
            ("wait", wait_secs.to_string()),
        ];
        if extras.count_deletes {
            query.push(("count_deletes", "true".into()));
        }
        if extras.count_bytes {
            query.push(("count_bytes", "true".into()));
        }
        if let Some(seq) = extras.bytes_after {
            query.push(("bytes_after", seq.to_string()));
        }
        if extras.inline_max > 0 {
            query.push(("inline_max", extras.inline_max.to_string()));
        }
        if extras.blob_sizes {
            query.push(("blob_sizes", "true".into()));
        }
        if anchor != 0 {
            query.push(("anchor", anchor.to_string()));
        }
        let limit = Duration::from_secs(wait_secs + 30);
        let rb = self
            .req(Method::GET, &format!("/feeds/{feed}/changes"))
            .query(&query)
            .timeout(limit);
        self.json_within(rb, limit).await
    }

    /// The other side's current entries for `keys` (unknown keys left out).
    /// Which of `keys` the other side's filter leaves out of `feed` (its
    /// `stamps` answer's `outside`), asked [`crate::protocol::MAX_KEYS`] at
    /// a time.
    pub async fn outside_filter(
        &self,
        feed: &FeedName,
        keys: Vec<ItemKey>,
    ) -> Result<Vec<ItemKey>, ReplError> {
        let mut out = Vec::new();
        for chunk in keys.chunks(crate::protocol::MAX_KEYS) {
            let answer = self.stamps(feed, chunk.to_vec()).await?;
            out.extend(
                answer
                    .outside
                    .into_iter()
                    .filter_map(|i| chunk.get(i as usize).cloned()),
            );
        }
        Ok(out)
    }

    /// The current state of `keys` in `feed` there (`POST
    /// feeds/{feed}/entries`); with `sizes`, their blobs' sizes too.
    pub async fn lookup(
        &self,
        feed: &FeedName,
        keys: Vec<ItemKey>,
        sizes: bool,
    ) -> Result<EntriesPage, ReplError> {
        let rb = self
            .req(Method::POST, &format!("/feeds/{feed}/entries"))
            .json(&KeyList {
                keys,
                blob_sizes: sizes,
            });
        self.json(rb).await
    }

    /// Every item and tombstone of `feed` there after `after`, at most
    /// `limit` (`GET feeds/{feed}/entries`); with `sizes`, their blobs'
    /// sizes too.
    pub async fn entries(
        &self,
        feed: &FeedName,
        after: Option<&ItemKey>,
        limit: usize,
        sizes: bool,
    ) -> Result<EntriesPage, ReplError> {
        let mut q = vec![("limit", limit.to_string())];
        if let Some(a) = after {
            q.push(("after", a.as_str().to_string()));
        }
        if sizes {
            q.push(("blob_sizes", "true".into()));
        }
        self.json(self.req(Method::GET, &format!("/feeds/{feed}/entries")).query(&q))
            .await
    }

    pub async fn digest(
        &self,
        feed: &FeedName,
        include: &[String],
        exclude: &[String],
    ) -> Result<FeedDigest, ReplError> {
        let mut q: Vec<(&str, &str)> = include.iter().map(|g| ("include", g.as_str())).collect();
        q.extend(exclude.iter().map(|g| ("exclude", g.as_str())));
        self.json(self.req(Method::GET, &format!("/feeds/{feed}/digest")).query(&q))
            .await
    }

    pub async fn stamps(&self, feed: &FeedName, keys: Vec<ItemKey>) -> Result<StampList, ReplError> {
        self.post(
            &format!("/feeds/{feed}/stamps"),
            &KeyList {
                keys,
                blob_sizes: false,
            },
        )
        .await
    }

    pub async fn apply(&self, feed: &FeedName, entries: Vec<WireEntry>) -> Result<ApplyResponse, ReplError> {
        self.post(&format!("/feeds/{feed}/apply"), &ApplyRequest { entries })
            .await
    }

    /// `POST blobs/missing`: which of `digests` the other side lacks, and
    /// of those how many bytes it holds of ones an upload left partial
    /// ([`DigestList::partial`]).
    pub async fn missing(&self, digests: Vec<Digest>) -> Result<DigestList, ReplError> {
        self.post(
            "/blobs/missing",
            &DigestList {
                digests,
                ..DigestList::default()
            },
        )
        .await
    }

    /// A blob's size on the other side (a HEAD request), None when it does
    /// not hold it. For a plan: what copying an item would move.
    pub async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>, ReplError> {
        let resp = self
            .req(Method::HEAD, &format!("/blobs/{digest}"))
            .timeout(HANDSHAKE_WAIT)
            .send()
            .await
            .map_err(transport)?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = Self::check(resp).await?;
        Ok(resp
            .headers()
            .get(reqwest::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok()))
    }

    /// Streams a blob from byte `offset` on.
    pub async fn fetch_blob(&self, digest: &Digest, offset: u64) -> Result<ByteStream, ReplError> {
        let mut rb = self.req(Method::GET, &format!("/blobs/{digest}"));
        if offset > 0 {
            rb = rb.header(reqwest::header::RANGE, format!("bytes={offset}-"));
        }
        let resp = rb.send().await.map_err(transport)?;
        if offset > 0 && resp.status() == StatusCode::RANGE_NOT_SATISFIABLE {
            // The earlier transfer already holds every byte (it was cut off
            // between the last byte and the commit), or more than the blob
            // has: nothing is left to send. The caller verifies what it holds
            // and starts over if that is wrong.
            return Ok(Box::pin(futures::stream::empty()));
        }
        let resp = Self::check(resp).await?;
        if offset > 0 && resp.status() != StatusCode::PARTIAL_CONTENT {
            return Err(ReplError::Transport(format!(
                "the other instance ignored the range request for {digest}"
            )));
        }
        Ok(Box::pin(resp.bytes_stream().map_err(std::io::Error::other)))
    }

    /// Asks for many blobs at once (`POST blobs/batch`, see
    /// [`crate::batch`]); the frames are read from the returned reader as
    /// they arrive.
    pub async fn fetch_batch(
        &self,
        wants: Vec<crate::batch::BlobWant>,
    ) -> Result<crate::batch::FrameReader, ReplError> {
        let send = self
            .req(Method::POST, "/blobs/batch")
            .json(&crate::batch::BatchRequest { blobs: wants })
            .send();
        let resp = match self.stall {
            Some(d) => tokio::time::timeout(d, send)
                .await
                .map_err(|_| ReplError::Transport(format!("no answer within {} s", d.as_secs())))?,
            None => send.await,
        }
        .map_err(transport)?;
        let resp = Self::check(resp).await?;
        let body: ByteStream = Box::pin(resp.bytes_stream().map_err(std::io::Error::other));
        Ok(crate::batch::FrameReader::new(match self.stall {
            Some(d) => stalling(body, d, self.min_rate),
            None => body,
        }))
    }

    /// Pushes many blobs in one streamed body of frames (`POST
    /// blobs/upload`); the answer says what became of each.
    pub async fn upload_batch(&self, body: ByteStream) -> Result<crate::batch::UploadResponse, ReplError> {
        let rb = self
            .req(Method::POST, "/blobs/upload")
            .header(reqwest::header::CONTENT_TYPE, "application/vnd.ferry.blob-batch")
            .body(reqwest::Body::wrap_stream(body));
        self.json(rb).await
    }

    pub async fn put_blob(&self, digest: &Digest, body: ByteStream, size: u64) -> Result<(), ReplError> {
        let rb = self
            .req(Method::PUT, &format!("/blobs/{digest}"))
            .header(reqwest::header::CONTENT_LENGTH, size)
            .body(reqwest::Body::wrap_stream(body));
        let resp = rb.send().await.map_err(transport)?;
        Self::check(resp).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that accepts connections and never answers ends a request
    /// with a transport error after the bound, instead of holding it.
    #[tokio::test]
    async fn a_peer_that_never_answers_is_given_up_on() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                open.push(conn);
            }
        });
        let remote = Remote::new(
            reqwest::Client::new(),
            &format!("http://{addr}"),
            "fst_0123456789abcdef_x",
            ferry_types::InstanceId::random(),
        );
        let rb = remote
            .req(Method::POST, "/handshake")
            .json(&serde_json::json!({}));
        let started = std::time::Instant::now();
        let r: Result<serde_json::Value, _> = remote.json_within(rb, Duration::from_millis(300)).await;
        match r {
            Err(ReplError::Transport(m)) => assert!(m.contains("did not answer within"), "{m}"),
            other => panic!("expected a transport error, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        held.abort();
    }
}
