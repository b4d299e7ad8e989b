//! The server loop: accepts TCP connections (and TLS on them) and serves
//! HTTP/1.1 with hyper, so that a slow, silent or numerous client cannot
//! hold the instance's descriptors or tasks for ever.
//!
//! What a client may hold, and for how long ([`Limits`]):
//! * **headers**: a new connection must deliver its first request's headers
//!   (and finish its TLS handshake) within `header_read_timeout`; on a
//!   kept-alive connection the clock starts at the next request's first byte;
//! * **idleness**: a kept-alive connection with no request in progress is
//!   closed after `keep_alive_timeout`;
//! * **bodies**: a request body that sends nothing for `body_timeout` is cut
//!   off and answered 408 (when the response has not started); a response
//!   the client takes nothing of for `body_timeout` closes the connection.
//!   Transfers that keep moving are never cut, however long;
//! * **connections**: at most `max_connections` at once. Past the cap, the
//!   connection idle longest (between requests or still sending headers) is
//!   closed to make room; when every one is busy with a request, a small
//!   overflow reserve answers `/health`, `/ready` and `/metrics` and 503s
//!   anything else; past that, new connections are closed at once.
//!
//! * **request heads**: at most [`MAX_HEADERS`] header fields and
//!   [`MAX_HEAD_BYTES`] of request line and headers; past either, 431 with
//!   a plain-text reason and the security headers every answer carries.
//!   hyper's field limit is ours (its default, which keeps the parse on the
//!   stack) and its buffer twice our bytes; a head past those, and a
//!   request hyper cannot parse at all (a malformed request line, method,
//!   URI or header line, an unparseable `Content-Length` or
//!   `Transfer-Encoding`), never reaches the router: hyper answers it
//!   itself and closes. That answer is bare (a status, no
//!   reason, none of our headers), so it is replaced ([`Tracked`]): bytes
//!   hyper writes while every earlier response has been flushed and no
//!   request has reached the service since can only be its own refusal;
//!   they are held back, and once the connection ends with hyper's parse
//!   error the same status is sent with a plain-text reason naming what was
//!   wrong and the security headers ([`unparsed_answer`]; a head refused as
//!   too large is read to its end first, when within hyper's buffer, so
//!   the reason names its number of fields or its size). A client that
//!   opens with HTTP/2's preface reads no HTTP/1.1 answer: it gets a GOAWAY
//!   saying `HTTP_1_1_REQUIRED` ([`http2_refusal`]). On the TLS port, a
//!   connection whose first byte is a capital letter (a plain-HTTP request,
//!   not a TLS record) gets a plain-HTTP 400 naming the `https://` URL
//!   ([`plain_http_on_tls`]).
//!
//! Long polls (`GET /api/replication/v1/feeds/F/changes?wait=N`) are exempt
//! by design: once a request's headers are in, nothing above times out the
//! time the server takes to answer; only a client that stops sending its
//! body or stops reading the response is cut. A long poll's response is
//! being prepared by the server, not held up by the client.
//!
//! **Stopping** ([`serve`]'s `shutdown`): the listener closes, idle
//! connections and TLS handshakes close at once, and requests in flight
//! may finish for `shutdown_grace`; whatever is still open then (a slow
//! download, a long upload) is closed, and the log says how many requests
//! were cut. Long polls end at once: the replicator answers them when told
//! to stop.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Connections served past the cap, only for health checks and 503s.
pub const OVERFLOW_RESERVE: usize = 32;
/// Descriptors kept for everything but client connections (database,
/// blob files, outgoing replications) when deriving the cap.
const FD_RESERVE: u64 = 256;
/// The derived cap never goes above this.
const MAX_DERIVED_CONNECTIONS: usize = 4096;
/// Paths an overflow connection may still reach.
const OPS_PATHS: [&str; 3] = ["/health", "/ready", "/metrics"];

/// How long and how many clients may hold the server (see the module docs).
#[derive(Debug, Clone)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub keep_alive_timeout: Duration,
    pub body_timeout: Duration,
    /// Client connections served at once, overflow reserve not included.
    pub max_connections: usize,
    /// How long requests in flight may go on after `shutdown` before their
    /// connections are closed.
    pub shutdown_grace: Duration,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (capped at 2^20) and
/// returns the soft limit now in effect (`None`: unlimited). Failing to
/// raise it is logged and leaves it as it was.
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    let target = lim.maximum.unwrap_or(1 << 20).min(1 << 20);
    if lim.current.is_some_and(|c| c < target) {
        let raised = Rlimit {
            current: Some(target),
            maximum: lim.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => return Some(target),
            Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
        }
    }
    lim.current
}

/// Descriptors `max_connections` may need at worst: two per connection (a
/// blob file besides the socket), the overflow reserve, and 256 for the rest.
pub fn descriptors_needed(max_connections: usize) -> u64 {
    (max_connections as u64)
        .saturating_mul(2)
        .saturating_add(FD_RESERVE + OVERFLOW_RESERVE as u64)
}

/// The connection cap when none is configured: half of what the descriptor
/// limit leaves after 256 for everything else and the overflow reserve (a
/// busy connection may also hold a blob file open), at most 4096 and at
/// least 16. `None`: no limit.
pub fn default_max_connections(fd_limit: Option<u64>) -> usize {
    let by_fds = fd_limit.map_or(usize::MAX, |n| {
        let per_conn = n.saturating_sub(FD_RESERVE + OVERFLOW_RESERVE as u64) / 2;
        usize::try_from(per_conn).unwrap_or(usize::MAX)
    });
    by_fds.clamp(16, MAX_DERIVED_CONNECTIONS)
}

/// Serves `router` on `listener` (TLS when `tls` is given) until `shutdown`
/// completes; then stops accepting, lets requests in flight finish for at
/// most `limits.shutdown_grace` (long polls end when the replicator is told
/// to stop, which `shutdown` does), closes the connections still open after
/// that (logging how many requests it cut), and returns. `hurry`
/// completing during the grace period (a second signal) ends it early.
///
/// Errors: none today; accept errors are logged and retried.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
    hurry: impl Future<Output = ()>,
) -> io::Result<()> {
    let shared = Arc::new(Shared {
        router,
        limits,
        registry: Registry::default(),
        last_cap_warning: AtomicU64::new(0),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    // Past the grace period: close what is still open.
    let force = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut last_accept_warning: Option<Instant> = None;
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(accepted) => accepted,
                Err(e) if is_per_connection(&e) => continue,
                Err(e) => {
                    // Out of descriptors or memory: wait for some to free.
                    if last_accept_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        tracing::warn!(error = %e, "cannot accept connections");
                        last_accept_warning = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Small responses (headers, then a short body) must not wait for the
        // peer's delayed ACK: without TCP_NODELAY each one stalls ~40 ms.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let Some(conn) = shared.registry.admit(shared.limits.max_connections) else {
            shared.warn_cap("closing new connections at once");
            continue; // dropping `tcp` closes it
        };
        if conn.overflow {
            shared.warn_cap("answering 503 to new connections");
        }
        let shared = shared.clone();
        let mut stop = stop_rx.clone();
        let tls = tls.clone();
        let force = force.clone();
        tracker.spawn(async move {
            let _registered = Registered {
                shared: shared.clone(),
                conn: conn.clone(),
            };
            // Whatever the connection is doing, it ends when forced to
            // (`serve_connection` watches `force` itself, among the events
            // it looks at only when they fire).
            match tls {
                None => serve_connection(tcp, peer, conn, shared, stop, force).await,
                Some(acceptor) => {
                    // A TLS record starts with its content type (22, a
                    // handshake); a plain-HTTP request with a method's
                    // capital letter: answered in plain HTTP, saying so,
                    // rather than closed without a word.
                    let mut first = [0u8; 1];
                    let peeked = tokio::select! {
                        r = tokio::time::timeout(shared.limits.header_read_timeout, tcp.peek(&mut first)) => r,
                        _ = conn.evicted() => return,
                        _ = stop.wait_for(|stopping| *stopping) => return,
                        _ = force.cancelled() => return,
                    };
                    if matches!(peeked, Ok(Ok(1))) && first[0].is_ascii_uppercase() {
                        plain_http_on_tls(tcp, shared.limits.header_read_timeout).await;
                        return;
                    }
                    let handshake =
                        tokio::time::timeout(shared.limits.header_read_timeout, acceptor.accept(tcp));
                    let stream = tokio::select! {
                        r = handshake => match r {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!("TLS handshake timed out");
                                return;
                            }
                        },
                        _ = conn.evicted() => return,
                        // No request yet: nothing to finish.
                        _ = stop.wait_for(|stopping| *stopping) => return,
                        _ = force.cancelled() => return,
                    };
                    serve_connection(stream, peer, conn, shared, stop, force).await
                }
            }
        });
    }
    drop(listener);
    stop_tx.send_replace(true);
    tracker.close();
    let grace = shared.limits.shutdown_grace;
    let why = tokio::select! {
        _ = tracker.wait() => return Ok(()),
        _ = tokio::time::sleep(grace) => "shutdown grace period ran out",
        _ = hurry => "second stop signal",
    };
    let (connections, requests) = shared.registry.in_flight();
    tracing::warn!(
        grace_secs = grace.as_secs(),
        connections_closed = connections,
        requests_cut = requests,
        "{why}: closing the connections still open"
    );
    force.cancel();
    tracker.wait().await;
    Ok(())
}

/// Accept errors that concern one connection only.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

struct Shared {
    router: Router,
    limits: Limits,
    registry: Registry,
    /// Milliseconds (see [`now_ms`]) of the last "cap reached" warning.
    last_cap_warning: AtomicU64,
}

impl Shared {
    /// Logs that the cap is reached, at most once a minute.
    fn warn_cap(&self, doing: &str) {
        let now = now_ms();
        let last = self.last_cap_warning.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) > 60_000)
            && self
                .last_cap_warning
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                max_connections = self.limits.max_connections,
                "every connection is busy with a request; {doing} (raise max_connections?)"
            );
        }
    }
}

/// Serves one connection until it ends, is evicted, outstays a timeout, or
/// is forced closed (`force`, past the shutdown grace period).
async fn serve_connection<S>(
    io: S,
    peer: SocketAddr,
    conn: Arc<Conn>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    force: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = &shared.limits;
    let io = TokioIo::new(Tracked::new(io, conn.clone(), limits.body_timeout));
    let service = ConnService {
        router: shared.router.clone(),
        peer,
        conn: conn.clone(),
        body_timeout: limits.body_timeout,
        max_connections: limits.max_connections,
    };
    let mut http = hyper::server::conn::http1::Builder::new();
    // A head past our byte limit but within hyper's buffer reaches us
    // (see `head_too_large`); one past hyper's limits is answered by
    // `unparsed_answer`. Both answer with a reason.
    http.max_buf_size(HYPER_MAX_BUF);
    // hyper's own header timer runs from the end of the previous response,
    // so it would also cut idle kept-alive connections at the header
    // timeout; `Conn::deadline` times headers and idleness separately.
    http.header_read_timeout(None).keep_alive(!conn.overflow);
    let mut connection = http.serve_connection(io, service);
    let mut draining = false;
    if *stop.borrow() {
        Pin::new(&mut connection).graceful_shutdown();
        draining = true;
    }
    // The watchdog wakes at the connection's deadline, and at least every
    // `period` to look again: requests start and end without telling it
    // (that would cost a wake-up per request), and no deadline can be set
    // less than `period` ahead of the event that sets it, so none is missed.
    let period = millis(limits.header_read_timeout.min(limits.keep_alive_timeout));
    let watchdog = tokio::time::sleep(Duration::ZERO);
    let mut watchdog = std::pin::pin!(watchdog);
    let ended = loop {
        // The connection is polled on every wake-up of this task (each
        // request wakes it a few times); the other events only when one of
        // them fired (`Beside`): each of them is a lock to take on every
        // poll, and `stop` and `force` are shared by every connection.
        let event = next_event(&conn, watchdog.as_mut(), &mut stop, draining, &force);
        let event = match Beside::new(&mut connection, std::pin::pin!(event)).await {
            Either::Main(r) => break r,
            Either::Side(event) => event,
        };
        match event {
            Event::Woken => {
                if conn.is_evicted() {
                    tracing::debug!("closed an idle connection to make room for a new one");
                    return;
                }
            }
            Event::Watchdog => {
                let now = now_ms();
                let deadline = conn.deadline(limits);
                if deadline.is_some_and(|d| d <= now) {
                    tracing::debug!("closed a connection that sent no complete request in time");
                    return;
                }
                let next = deadline.map_or(now + period, |d| d.min(now + period));
                watchdog.as_mut().reset(instant_of(next));
            }
            Event::Stop => {
                // Idle connections close now; one with a request in flight
                // closes after its response.
                Pin::new(&mut connection).graceful_shutdown();
                draining = true;
            }
            Event::Forced => return,
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "connection ended with an error");
        let status = conn.refused.load(Ordering::Acquire);
        if status != 0 {
            let parts = connection.into_parts();
            let io = parts.io.into_inner();
            let head = conn.head_started.load(Ordering::Acquire);
            let started = if head == 0 {
                Instant::now()
            } else {
                instant_of(head)
            };
            ferry_server::record_unrouted(None, status, started.into_std());
            let answer = unparsed_answer(io, parts.read_buf, status, &e, limits.header_read_timeout);
            let _ = force.run_until_cancelled(answer).await;
        } else if e.is_parse() {
            // hyper answers nothing to an HTTP/2 connection preface.
            let parts = connection.into_parts();
            if parts.read_buf.starts_with(H2_PREFACE_START) {
                let io = parts.io.into_inner();
                let answer = http2_refusal(io, limits.header_read_timeout);
                let _ = force.run_until_cancelled(answer).await;
            }
        }
    }
}

/// How an HTTP/2 connection preface begins (RFC 9113 §3.4: a client that
/// speaks HTTP/2 with prior knowledge sends it first).
const H2_PREFACE_START: &[u8] = b"PRI * HTTP/2.0\r\n";

/// Answers a client that opened with the HTTP/2 preface in HTTP/2's own
/// terms, since it reads nothing else: the server's preface (an empty
/// SETTINGS frame) and a GOAWAY with error `HTTP_1_1_REQUIRED` (0xd,
/// RFC 9113 §7) whose debug data says why, then closes. Clients report
/// that code (curl: "HTTP_1_1_REQUIRED") and, when they may, retry over
/// HTTP/1.1. All within `within`.
async fn http2_refusal<S>(mut stream: Tracked<S>, within: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.release();
    // (What the client still sends: its SETTINGS, a first request.)
    let frames = http2_goaway_frames();
    if let Err(e) = answer_and_close(&mut stream, &[&frames], 64 << 10, within).await {
        tracing::debug!(error = %e, "could not refuse an HTTP/2 connection");
    }
}

/// Writes `parts` on `stream` and closes its sending side, then reads
/// and drops what the client still sends, up to `drain` bytes, so that
/// closing does not reset the answer away before the client read it.
/// All within `within` (past it, Ok: the client had its chance).
async fn answer_and_close<S>(
    stream: &mut S,
    parts: &[&[u8]],
    drain: usize,
    within: Duration,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let answered = async {
        for part in parts {
            stream.write_all(part).await?;
        }
        stream.shutdown().await?;
        let mut buf = [0u8; 8192];
        let mut left = drain;
        while left > 0 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            left = left.saturating_sub(n);
        }
        io::Result::Ok(())
    };
    tokio::time::timeout(within, answered).await.unwrap_or(Ok(()))
}

/// The head of a plain-text refusal the server loop writes itself: the
/// status, the text's length, `connection: close` and the security headers
/// every answer carries. (RFC 9110 §6.6.1: a 4xx from a server with a
/// clock carries Date.)
fn refusal_head(status: StatusCode, text_len: usize) -> String {
    format!(
        "HTTP/1.1 {} {}\r\ndate: {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {text_len}\r\n\
         connection: close\r\nx-content-type-options: nosniff\r\ncontent-security-policy: {}\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Bad Request"),
        httpdate::fmt_http_date(std::time::SystemTime::now()),
        ferry_server::blobs::SANDBOX_POLICY,
    )
}

/// Answers a plain-HTTP request made to the TLS port (`curl http://…` or an
/// `http://` replication URL where the server serves HTTPS): reads its
/// head (at most 16 KiB, within `within`), answers 400 in plain HTTP with a
/// text naming the `https://` URL to use (the request's `Host` when it is
/// a plain host name), and closes. nginx answers such requests alike.
async fn plain_http_on_tls(mut tcp: tokio::net::TcpStream, within: Duration) {
    use tokio::io::AsyncReadExt;
    let read_head = async {
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while head.len() < 16 << 10 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tcp.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        io::Result::Ok(head)
    };
    let started = Instant::now();
    let head = match tokio::time::timeout(within, read_head).await {
        Ok(Ok(head)) => head,
        _ => return,
    };
    let text = String::from_utf8_lossy(&head);
    let target = text
        .split("\r\n")
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .filter(|t| t.starts_with('/') && t.len() <= 2048 && t.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or("/");
    let host = text
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("host"))
        .map(|(_, v)| v.trim())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        });
    let body = match host {
        Some(h) => format!(
            "this port serves HTTPS, and the request came as plain HTTP: ask https://{h}{target} instead\n"
        ),
        None => {
            "this port serves HTTPS, and the request came as plain HTTP: ask with an https:// URL instead\n"
                .to_owned()
        }
    };
    let head = refusal_head(StatusCode::BAD_REQUEST, body.len());
    // What the client still sends (a body) is read for a moment, so
    // the close does not reset the connection before the answer is read.
    let left = within.saturating_sub(started.elapsed());
    if let Err(e) = answer_and_close(&mut tcp, &[head.as_bytes(), body.as_bytes()], 1 << 20, left).await {
        tracing::debug!(error = %e, "could not answer a plain-HTTP request on the TLS port");
    }
}

/// An empty SETTINGS frame, then GOAWAY (last stream 0, `HTTP_1_1_REQUIRED`)
/// with a reason as debug data: RFC 9113 §4.1 frame layout (24-bit length,
/// type, flags, 31-bit stream id), §6.5 SETTINGS, §6.8 GOAWAY.
fn http2_goaway_frames() -> Vec<u8> {
    const SETTINGS: u8 = 0x4;
    const GOAWAY: u8 = 0x7;
    const HTTP_1_1_REQUIRED: u32 = 0xd;
    let reason: &[u8] = b"this server speaks HTTP/1.1 only: send the request over HTTP/1.1 (without prior knowledge of HTTP/2)";
    let frame = |kind: u8, payload: &[u8]| {
        let len = u32::try_from(payload.len()).unwrap_or(0).to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, 0, 0, 0, 0, 0];
        f.extend_from_slice(payload);
        f
    };
    let mut goaway = Vec::with_capacity(8 + reason.len());
    goaway.extend_from_slice(&0u32.to_be_bytes());
    goaway.extend_from_slice(&HTTP_1_1_REQUIRED.to_be_bytes());
    goaway.extend_from_slice(reason);
    let mut out = frame(SETTINGS, &[]);
    out.extend(frame(GOAWAY, &goaway));
    out
}

/// What happened to a connection, besides its requests.
enum Event {
    /// Its [`Conn::wake`] was notified (it may be evicted).
    Woken,
    /// The watchdog's time came.
    Watchdog,
    /// The server is stopping.
    Stop,
    /// The shutdown grace period ran out.
    Forced,
}

/// The next [`Event`] of a connection (`Stop` only while not `draining`).
async fn next_event(
    conn: &Conn,
    watchdog: Pin<&mut Sleep>,
    stop: &mut watch::Receiver<bool>,
    draining: bool,
    force: &CancellationToken,
) -> Event {
    tokio::select! {
        _ = conn.wake.notified() => Event::Woken,
        _ = watchdog => Event::Watchdog,
        _ = stop.changed(), if !draining => Event::Stop,
        _ = force.cancelled() => Event::Forced,
    }
}

/// Which of [`Beside`]'s futures completed first.
enum Either<M, S> {
    Main(M),
    Side(S),
}

/// Two futures raced, the second (`side`) polled only when it has been
/// woken (or this future's waker changed): `main` is polled on every
/// wake-up as usual, `side` sits beside it at no cost until its own events
/// fire. `main` wins a tie.
struct Beside<'a, M, S: Future> {
    main: &'a mut M,
    side: Pin<&'a mut S>,
    /// The waker `side` was last polled with; `None` before the first poll.
    side_waker: Option<(Arc<SideWake>, Waker)>,
}

impl<'a, M, S: Future> Beside<'a, M, S> {
    fn new(main: &'a mut M, side: Pin<&'a mut S>) -> Self {
        Beside {
            main,
            side,
            side_waker: None,
        }
    }
}

/// The waker [`Beside`] polls its side future with: notes that the side
/// was woken, and wakes the task.
struct SideWake {
    woken: AtomicBool,
    task: Waker,
}

impl std::task::Wake for SideWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake_by_ref();
    }
}

impl<M, S> Future for Beside<'_, M, S>
where
    M: Future + Unpin,
    S: Future,
{
    type Output = Either<M::Output, S::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Poll::Ready(out) = Pin::new(&mut *this.main).poll(cx) {
            return Poll::Ready(Either::Main(out));
        }
        let poll_side = match &this.side_waker {
            // Woken since its last poll (cleared before polling, so that
            // a wake-up during the poll is not lost).
            Some((wake, _)) if wake.task.will_wake(cx.waker()) => {
                wake.woken.load(Ordering::Acquire) && wake.woken.swap(false, Ordering::AcqRel)
            }
            // First poll, or the task's waker changed: the side must
            // register the new one.
            _ => {
                let wake = Arc::new(SideWake {
                    woken: AtomicBool::new(false),
                    task: cx.waker().clone(),
                });
                let waker = Waker::from(wake.clone());
                this.side_waker = Some((wake, waker));
                true
            }
        };
        if poll_side && let Some((_, waker)) = &this.side_waker {
            let mut side_cx = Context::from_waker(waker);
            if let Poll::Ready(out) = this.side.as_mut().poll(&mut side_cx) {
                return Poll::Ready(Either::Side(out));
            }
        }
        Poll::Pending
    }
}

/// Answers a request hyper could not parse, in place of hyper's bare
/// answer (held back by [`Tracked`]): the status hyper chose, a plain-text
/// reason and the security headers; then closes, reading for a moment what
/// the client still sends so that the close does not reset the connection
/// before the client has read the answer. All within `within` (a head
/// refused as too large is first read to its end, for as long again, so
/// that the reason can name its size: `unread` is what hyper had read of
/// it).
async fn unparsed_answer<S>(
    mut stream: Tracked<S>,
    unread: Bytes,
    status: u16,
    e: &hyper::Error,
    within: Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use tokio::io::AsyncReadExt;
    stream.release();
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let text = match status {
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => {
            let mut head = unread.to_vec();
            let counted = tokio::time::timeout(within, async {
                let mut buf = [0u8; 8192];
                loop {
                    if let Some(size) = head_size(&head) {
                        return Some(size);
                    }
                    if head.len() > HYPER_MAX_BUF {
                        return None;
                    }
                    match stream.read(&mut buf).await {
                        Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                        _ => return None,
                    }
                }
            })
            .await;
            match counted {
                Ok(Some((fields, bytes))) if fields > MAX_HEADERS || bytes > MAX_HEAD_BYTES => {
                    too_large_reason(fields, bytes)
                }
                _ => format!(
                    "request header fields too large: the request head is past {} KiB or {MAX_HEADERS} header fields; \
                     at most {} KiB and {MAX_HEADERS} header fields are accepted\n",
                    HYPER_MAX_BUF / 1024,
                    MAX_HEAD_BYTES / 1024,
                ),
            }
        }
        StatusCode::URI_TOO_LONG => {
            "URI too long: the request target is past 64 KiB, the most accepted\n".to_owned()
        }
        _ => format!("bad request: {e}; the request is not valid HTTP/1.1 and was not read further\n"),
    };
    let head = refusal_head(status, text.len());
    // What the client still sends (the rest of an oversized head, a body)
    // is read and dropped, up to 64 MiB within `within`, so that a client
    // sending its whole body before it reads can read the answer.
    let parts: [&[u8]; 2] = [head.as_bytes(), text.as_bytes()];
    if let Err(e) = answer_and_close(&mut stream, &parts, 64 << 20, within).await {
        tracing::debug!(error = %e, "could not answer a request that could not be parsed");
    }
}

// ------------------------------------------------------------------ clock

/// The instant [`now_ms`] counts from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds since [`epoch`], plus one (so 0 can mean "never").
fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

fn instant_of(ms: u64) -> Instant {
    epoch() + Duration::from_millis(ms.saturating_sub(1))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

// --------------------------------------------------------------- registry

/// The state of one client connection, shared by its task, its requests
/// and the registry.
struct Conn {
    id: u64,
    /// Admitted past the cap: health checks only, no keep-alive.
    overflow: bool,
    /// Requests in progress: from the service call to the end (or drop) of
    /// the response body.
    busy: AtomicUsize,
    /// When the connection last had no request in progress ([`now_ms`]).
    idle_since: AtomicU64,
    /// When the next request's first byte arrived (0: not yet). A new
    /// connection counts as started at accept.
    head_started: AtomicU64,
    /// Every response given to hyper has been flushed and no request has
    /// reached the service since: what hyper writes now is its own answer
    /// to a request it could not parse (see [`Tracked`]).
    settled: AtomicBool,
    /// The status of that answer, held back (0: none).
    refused: AtomicU16,
    /// Closed to make room for a new connection.
    evicted: AtomicBool,
    /// Wakes the connection task when it is evicted.
    wake: Notify,
}

impl Conn {
    fn new(id: u64, overflow: bool) -> Self {
        let now = now_ms();
        Conn {
            id,
            overflow,
            busy: AtomicUsize::new(0),
            idle_since: AtomicU64::new(now),
            head_started: AtomicU64::new(now),
            settled: AtomicBool::new(true),
            refused: AtomicU16::new(0),
            evicted: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    /// When the connection must be closed unless a request starts first;
    /// `None` while a request is in progress.
    fn deadline(&self, limits: &Limits) -> Option<u64> {
        if self.busy.load(Ordering::Acquire) > 0 {
            return None;
        }
        let head = self.head_started.load(Ordering::Acquire);
        if head != 0 {
            return Some(head.saturating_add(millis(limits.header_read_timeout)));
        }
        let idle = self.idle_since.load(Ordering::Acquire);
        Some(idle.saturating_add(millis(limits.keep_alive_timeout)))
    }

    /// Bytes arrived: between requests, they start the next one's headers.
    fn note_bytes(&self) {
        if self.busy.load(Ordering::Acquire) == 0 && self.head_started.load(Ordering::Relaxed) == 0 {
            let _ = self
                .head_started
                .compare_exchange(0, now_ms(), Ordering::AcqRel, Ordering::Acquire);
        }
    }

    fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
    }

    /// Completes once the connection is evicted.
    async fn evicted(&self) {
        while !self.is_evicted() {
            self.wake.notified().await;
        }
    }
}

/// A request in progress on a connection; dropping it ends the request.
struct Busy(Arc<Conn>);

impl Busy {
    fn begin(conn: &Arc<Conn>) -> Self {
        conn.busy.fetch_add(1, Ordering::AcqRel);
        // A response is coming: hyper's writes are ours again.
        conn.settled.store(false, Ordering::Release);
        conn.head_started.store(0, Ordering::Release);
        Busy(conn.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.head_started.store(0, Ordering::Release);
            self.0.idle_since.store(now_ms(), Ordering::Release);
        }
    }
}

/// Every open client connection, by id.
#[derive(Default)]
struct Registry {
    inner: Mutex<RegistryInner>,
}

#[derive(Default)]
struct RegistryInner {
    conns: HashMap<u64, Arc<Conn>>,
    next_id: u64,
    /// Connections not evicted: within the cap, and in the overflow reserve.
    normal: usize,
    overflow: usize,
}

impl RegistryInner {
    fn count(&mut self, overflow: bool) -> &mut usize {
        if overflow {
            &mut self.overflow
        } else {
            &mut self.normal
        }
    }

    /// Evicts the connection of that kind idle longest, if one is idle.
    fn evict_idlest(&mut self, overflow: bool) -> bool {
        let victim = self
            .conns
            .values()
            .filter(|c| c.overflow == overflow && !c.is_evicted() && c.busy.load(Ordering::Acquire) == 0)
            .min_by_key(|c| c.idle_since.load(Ordering::Acquire))
            .cloned();
        let Some(victim) = victim else {
            return false;
        };
        victim.evicted.store(true, Ordering::Release);
        victim.wake.notify_one();
        *self.count(overflow) -= 1;
        true
    }

    fn register(&mut self, overflow: bool) -> Arc<Conn> {
        self.next_id += 1;
        let conn = Arc::new(Conn::new(self.next_id, overflow));
        self.conns.insert(conn.id, conn.clone());
        *self.count(overflow) += 1;
        conn
    }
}

impl Registry {
    /// Admits a new connection: within the cap (making room by closing the
    /// idlest connection if needed), else into the overflow reserve (same),
    /// else not at all.
    fn admit(&self, max: usize) -> Option<Arc<Conn>> {
        let mut inner = match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        for (overflow, cap) in [(false, max), (true, OVERFLOW_RESERVE)] {
            if *inner.count(overflow) < cap || inner.evict_idlest(overflow) {
                return Some(inner.register(overflow));
            }
        }
        None
    }

    /// Connections open, and requests in progress on them.
    fn in_flight(&self) -> (usize, usize) {
        let inner = match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let requests = inner.conns.values().map(|c| c.busy.load(Ordering::Acquire)).sum();
        (inner.conns.len(), requests)
    }

    fn remove(&self, conn: &Conn) {
        let mut inner = match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if inner.conns.remove(&conn.id).is_some() && !conn.is_evicted() {
            *inner.count(conn.overflow) -= 1;
        }
    }
}

/// Takes the connection out of the registry when its task ends.
struct Registered {
    shared: Arc<Shared>,
    conn: Arc<Conn>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.shared.registry.remove(&self.conn);
    }
}

// ---------------------------------------------------------------- service

/// The most header fields a request may carry (hyper's default): past it,
/// 431 with a reason.
pub const MAX_HEADERS: usize = 100;
/// The most bytes a request's line and headers may take: past it, 431 with
/// a reason.
pub const MAX_HEAD_BYTES: usize = 256 * 1024;
/// hyper's own read buffer limit, above ours: a head past it is refused by
/// hyper. hyper's field limit is its default, ours ([`MAX_HEADERS`]): with
/// that one it parses a head's fields into arrays on the stack, where any
/// other limit costs two heap arrays per request. A head past either is
/// answered by hyper, and that answer is replaced by one naming the size
/// ([`unparsed_answer`], [`head_size`]). The read buffer grows only as far
/// as a client sends.
const HYPER_MAX_BUF: usize = 2 * MAX_HEAD_BYTES;

/// Why `req`'s head is past [`MAX_HEADERS`] or [`MAX_HEAD_BYTES`], if it is.
/// Its size is counted as sent: the request line and each `name: value`
/// line with its line end.
fn head_too_large<B>(req: &Request<B>) -> Option<String> {
    let fields = req.headers().len();
    let target = {
        // The target's length as written, without writing it anywhere.
        struct Count(usize);
        impl std::fmt::Write for Count {
            fn write_str(&mut self, s: &str) -> std::fmt::Result {
                self.0 += s.len();
                Ok(())
            }
        }
        let mut n = Count(0);
        let _ = std::fmt::Write::write_fmt(&mut n, format_args!("{}", req.uri()));
        n.0
    };
    let line = req.method().as_str().len() + target + " HTTP/1.1\r\n".len() + 1;
    let bytes = req
        .headers()
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4);
    (fields > MAX_HEADERS || bytes > MAX_HEAD_BYTES).then(|| too_large_reason(fields, bytes))
}

/// The reason a head of `fields` header fields and `bytes` bytes is
/// refused: the first limit it is past.
fn too_large_reason(fields: usize, bytes: usize) -> String {
    if fields > MAX_HEADERS {
        format!(
            "request header fields too large: {fields} header fields, at most {MAX_HEADERS} are accepted\n"
        )
    } else {
        format!(
            "request header fields too large: {} KiB of request line and headers, at most {} KiB are accepted\n",
            bytes.div_ceil(1024),
            MAX_HEAD_BYTES / 1024
        )
    }
}

/// The header fields and bytes of the request head at the start of `buf`
/// (request line, field lines, the empty line that ends it; lines end in
/// CRLF or LF, as hyper reads them), or `None` while its end is not in
/// `buf`.
fn head_size(buf: &[u8]) -> Option<(usize, usize)> {
    let mut lines = 0usize;
    let mut start = 0usize;
    for (i, b) in buf.iter().enumerate() {
        if *b != b'\n' {
            continue;
        }
        let line = &buf[start..i];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() && lines > 0 {
            return Some((lines - 1, i + 1));
        }
        if !line.is_empty() {
            lines += 1;
        }
        start = i + 1;
    }
    None
}

/// The router, as one connection's hyper service.
#[derive(Clone)]
struct ConnService {
    router: Router,
    /// The client's address, given to handlers as `ConnectInfo`.
    peer: SocketAddr,
    conn: Arc<Conn>,
    body_timeout: Duration,
    max_connections: usize,
}

type BoxedResponse = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

/// A request's answer, as [`ConnService`] makes it: a future of its own
/// type, so that the common case (a request without a body, routed) is
/// not one more allocation per request.
enum ResponseFuture {
    /// Answered here, without the router; the request ends when polled.
    Answered(Option<(Response<Body>, Busy)>),
    /// A request without a body, routed.
    Routed(tower::util::Oneshot<Router, Request<Body>>, Option<Busy>),
    /// A request with a body, routed under the body's watch.
    Watched(BoxedResponse),
}

impl Future for ResponseFuture {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            ResponseFuture::Answered(answer) => match answer.take() {
                Some((resp, busy)) => {
                    drop(busy);
                    Poll::Ready(Ok(resp))
                }
                // (Never: a future is not polled again once it completed.)
                None => Poll::Ready(Ok(plain(
                    "",
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "answer polled after completion\n".to_owned(),
                ))),
            },
            ResponseFuture::Routed(routed, busy) => {
                let resp = match std::task::ready!(Pin::new(routed).poll(cx)) {
                    Ok(resp) => resp,
                    Err(never) => match never {},
                };
                Poll::Ready(Ok(match busy.take() {
                    Some(busy) => guarded(resp, busy),
                    None => resp,
                }))
            }
            ResponseFuture::Watched(fut) => fut.as_mut().poll(cx),
        }
    }
}

impl ConnService {
    /// Reads and drops the body of a request answered here without it
    /// ([`linger`]), so the client reads the answer rather than a reset.
    fn linger_on(&self, req: Request<Incoming>) {
        if !req.body().is_end_stream() {
            tokio::spawn(linger(req.into_body(), LINGER.min(self.body_timeout)));
        }
    }
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let busy = Busy::begin(&self.conn);
        let refused = |resp: Response<Body>| {
            ferry_server::record_unrouted(
                Some(req.method()),
                resp.status().as_u16(),
                std::time::Instant::now(),
            );
            resp
        };
        // (The target, for the error shape of the refusals made here.)
        let path = req.uri().path();
        if let Some(why) = head_too_large(&req) {
            let resp = refused(plain(path, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, why));
            self.linger_on(req);
            return ResponseFuture::Answered(Some((resp, busy)));
        }
        if self.conn.overflow && !OPS_PATHS.contains(&req.uri().path()) {
            let resp = refused(too_many_connections(path, self.max_connections));
            self.linger_on(req);
            return ResponseFuture::Answered(Some((resp, busy)));
        }
        // RFC 9112 §3.2: an HTTP/1.1 request without Host is a 400 (the
        // edge layer refuses more than one).
        if req.version() == hyper::Version::HTTP_11 && !req.headers().contains_key(header::HOST) {
            let resp = refused(plain(
                path,
                StatusCode::BAD_REQUEST,
                "the request has no Host header field; HTTP/1.1 requires one (RFC 9112, section 3.2)\n"
                    .to_owned(),
            ));
            self.linger_on(req);
            return ResponseFuture::Answered(Some((resp, busy)));
        }
        // RFC 9112 §6.1: a server that receives a transfer coding it does
        // not understand answers 501. Only `chunked` is understood here (its
        // framing is hyper's); any other coding (gzip, deflate, compress)
        // would otherwise be stored as the content.
        if let Some((status, why)) = unsupported_transfer_coding(req.headers()) {
            let resp = refused(plain(path, status, why));
            self.linger_on(req);
            return ResponseFuture::Answered(Some((resp, busy)));
        }
        if req.body().is_end_stream() {
            // No body (most reads): nothing can stall, nothing to watch.
            let mut req = req.map(|_| Body::empty());
            req.extensions_mut().insert(ConnectInfo(self.peer));
            return ResponseFuture::Routed(self.router.clone().oneshot(req), Some(busy));
        }
        let stall = Arc::new(Stall::default());
        let timeout = self.body_timeout;
        // Clones of shared parts (no copies), for the log line only.
        let (peer, method, uri) = (self.peer, req.method().clone(), req.uri().clone());
        let timed_out = move || {
            tracing::warn!(
                client = %peer,
                %method,
                path = ?uri.path(),
                "the client's request body sent nothing for {} s; answered 408",
                timeout.as_secs()
            );
            Ok(body_timed_out(uri.path(), timeout))
        };
        let mut req = req.map(|b| Body::new(ProgressBody::new(b, timeout, stall.clone())));
        req.extensions_mut().insert(ConnectInfo(self.peer));
        req.extensions_mut()
            .insert(ferry_server::BodyWatch(stall.fired.clone()));
        let router = self.router.clone();
        ResponseFuture::Watched(Box::pin(async move {
            let resp = tokio::select! {
                biased;
                r = router.oneshot(req) => match r {
                    Ok(resp) => resp,
                    Err(never) => match never {},
                },
                _ = stall.notify.notified() => return timed_out(),
            };
            // The handler may have answered the broken body itself.
            if stall.fired.load(Ordering::Acquire) {
                return timed_out();
            }
            let unread = stall.unread.lock().ok().and_then(|mut u| u.take());
            if let Some(rest) = unread {
                tokio::spawn(linger(rest, LINGER.min(timeout)));
            }
            Ok(guarded(resp, busy))
        }))
    }
}

/// Why a request's `Transfer-Encoding` cannot be served: any coding but
/// `chunked` (RFC 9112 §6.1, §7), named; None when there is none or only
/// `chunked`.
fn unsupported_transfer_coding(headers: &header::HeaderMap) -> Option<(StatusCode, String)> {
    let mut others = Vec::new();
    let mut chunked = 0;
    for value in headers.get_all(header::TRANSFER_ENCODING) {
        let text = String::from_utf8_lossy(value.as_bytes());
        for coding in text.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if coding.eq_ignore_ascii_case("chunked") {
                chunked += 1;
            } else {
                others.push(coding.chars().take(64).collect::<String>());
            }
        }
    }
    if !others.is_empty() {
        return Some((
            StatusCode::NOT_IMPLEMENTED,
            format!(
                "transfer coding {:?} is not supported: send the body with Transfer-Encoding: chunked alone, or with Content-Length (RFC 9112, section 6.1)\n",
                others.join(", ")
            ),
        ));
    }
    // RFC 9112 §6.1: chunked is never applied twice; a body framed so is
    // read differently by different parsers (request smuggling).
    (chunked > 1).then(|| {
        (
            StatusCode::BAD_REQUEST,
            "Transfer-Encoding names chunked more than once, which RFC 9112 (section 6.1) forbids\n"
                .to_owned(),
        )
    })
}

/// `resp` with its body holding the request's [`Busy`] mark until sent.
fn guarded(resp: Response<Body>, busy: Busy) -> Response<Body> {
    resp.map(|b| {
        Body::new(Guarded {
            inner: b,
            _busy: busy,
        })
    })
}

/// An answer made here, worded as refusals on `path` are
/// ([`ferry_server::refusal_body`]: JSON under `/api/` and npm, plain text
/// on most feeds), closing the connection.
fn plain(path: &str, status: StatusCode, text: String) -> Response<Body> {
    let (body, content_type) = ferry_server::refusal_body(path, status, &text);
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    h.insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    // Answers made here never reach the router's `edge` layer: the same
    // security headers as every other answer.
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(ferry_server::blobs::SANDBOX_POLICY),
    );
    resp
}

fn body_timed_out(path: &str, timeout: Duration) -> Response<Body> {
    plain(
        path,
        StatusCode::REQUEST_TIMEOUT,
        format!(
            "request body timed out: nothing received for {} s\n",
            timeout.as_secs()
        ),
    )
}

fn too_many_connections(path: &str, max: usize) -> Response<Body> {
    let mut resp = plain(
        path,
        StatusCode::SERVICE_UNAVAILABLE,
        format!("too many connections: this instance serves {max} at once; retry shortly\n"),
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    resp
}

/// Raised when a request body stalls.
#[derive(Default)]
struct Stall {
    /// Shared with the request's [`ferry_server::BodyWatch`].
    fired: Arc<AtomicBool>,
    notify: Notify,
    /// The rest of a request body its handler dropped unread (see
    /// [`linger`]).
    unread: std::sync::Mutex<Option<Incoming>>,
}

/// How long the rest of a request body its handler left unread is read and
/// dropped after the answer ([`linger`]).
const LINGER: Duration = Duration::from_secs(30);

/// Reads and drops the rest of a request body its handler left unread (an
/// upload refused part-way: a digest mismatch, a size limit), for at most
/// `within`, as nginx's lingering close does. Closing at once, with the
/// client's bytes unread, makes the kernel reset the connection, and most
/// clients (reqwest, and the `ferry` CLI with it) then report the reset
/// ("broken pipe") instead of the answer that explains it; read to its
/// end, the connection stays open for the next request.
async fn linger(mut rest: Incoming, within: Duration) {
    let _ = tokio::time::timeout(within, async {
        while let Some(Ok(_)) = std::future::poll_fn(|cx| Pin::new(&mut rest).poll_frame(cx)).await {}
    })
    .await;
}

/// The error a stalled request body yields to its handler.
#[derive(Debug)]
struct BodyStalled(Duration);

impl std::fmt::Display for BodyStalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "request body timed out: nothing received for {} s",
            self.0.as_secs()
        )
    }
}

impl std::error::Error for BodyStalled {}

/// A request body that fails once the client sends nothing for `timeout`
/// while the handler waits for it (time the handler spends elsewhere does
/// not count).
struct ProgressBody {
    /// None once dropped (handed to [`Stall::unread`] when not at its end).
    inner: Option<Incoming>,
    timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
    stall: Arc<Stall>,
}

impl ProgressBody {
    fn new(inner: Incoming, timeout: Duration, stall: Arc<Stall>) -> Self {
        ProgressBody {
            inner: Some(inner),
            timeout,
            timer: None,
            armed: false,
            stall,
        }
    }
}

impl http_body::Body for ProgressBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.stall.fired.load(Ordering::Acquire) {
            return Poll::Ready(Some(Err(BodyStalled(this.timeout).into())));
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.armed = false;
                Poll::Ready(frame.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => {
                if stalled(&mut this.timer, &mut this.armed, this.timeout, cx) {
                    this.stall.fired.store(true, Ordering::Release);
                    this.stall.notify.notify_one();
                    return Poll::Ready(Some(Err(BodyStalled(this.timeout).into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Incoming::size_hint)
    }
}

impl Drop for ProgressBody {
    fn drop(&mut self) {
        // A stalled body is not waited for again.
        if let Some(rest) = self.inner.take()
            && !rest.is_end_stream()
            && !self.stall.fired.load(Ordering::Acquire)
            && let Ok(mut unread) = self.stall.unread.lock()
        {
            *unread = Some(rest);
        }
    }
}

/// After a `Pending`: arms the timer if it is not running, and says whether
/// it has run out (registering the waker otherwise).
fn stalled(
    timer: &mut Option<Pin<Box<Sleep>>>,
    armed: &mut bool,
    timeout: Duration,
    cx: &mut Context<'_>,
) -> bool {
    let deadline = Instant::now() + timeout;
    let sleep = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
    if !*armed {
        sleep.as_mut().reset(deadline);
        *armed = true;
    }
    sleep.as_mut().poll(cx).is_ready()
}

/// A response body that keeps its request counted as in progress until
/// hyper is done with it.
struct Guarded {
    inner: Body,
    _busy: Busy,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// --------------------------------------------------------------------- io

/// The connection's byte stream: notes bytes arriving between requests (the
/// start of the next request's headers), fails a write the client has
/// taken nothing of for `send_timeout`, and holds back hyper's own answer
/// to a request it could not parse.
///
/// hyper writes a response only for a request that reached the service,
/// or, when it cannot parse a request head, a bare one of its own, after
/// which it closes. It reads the next head only once the previous response
/// is written, and calls `poll_flush` only once its buffer is empty; so when
/// `poll_flush` succeeds with no request in progress, everything the
/// service answered is on the wire ([`Conn::settled`]), and what hyper
/// writes before the next request reaches the service is its own refusal.
/// Those bytes are dropped (their status kept in [`Conn::refused`]) and the
/// shutdown hyper asks for after them is not done, so that
/// [`unparsed_answer`] can send the refusal with a reason. (Should hyper
/// ever queue its refusal behind the unflushed tail of a response, the two
/// go out together as hyper wrote them: the client gets hyper's bare
/// answer, as before.)
struct Tracked<S> {
    inner: S,
    conn: Arc<Conn>,
    send_timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl<S> Tracked<S> {
    fn new(inner: S, conn: Arc<Conn>, send_timeout: Duration) -> Self {
        Tracked {
            inner,
            conn,
            send_timeout,
            timer: None,
            armed: false,
        }
    }

    /// Whether hyper's writes now are its own refusal, to hold back; the
    /// first of them gives the refusal's status (`HTTP/1.1 NNN …`).
    fn hold_back(&self, first: &[u8]) -> bool {
        if !self.conn.settled.load(Ordering::Acquire) {
            return false;
        }
        if self.conn.refused.load(Ordering::Acquire) == 0 {
            let status = first
                .get(9..12)
                .and_then(|d| std::str::from_utf8(d).ok())
                .and_then(|d| d.parse::<u16>().ok())
                .filter(|s| (400..600).contains(s))
                .unwrap_or(400);
            self.conn.refused.store(status, Ordering::Release);
        }
        true
    }

    /// Writes pass through again (for the answer that replaces hyper's).
    fn release(&self) {
        self.conn.settled.store(false, Ordering::Release);
        self.conn.refused.store(0, Ordering::Release);
    }

    fn check<T>(&mut self, r: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => {
                if stalled(&mut self.timer, &mut self.armed, self.send_timeout, cx) {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "the client took nothing of the response for {} s",
                            self.send_timeout.as_secs()
                        ),
                    )));
                }
                Poll::Pending
            }
            ready => {
                self.armed = false;
                ready
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.conn.note_bytes();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.hold_back(buf) {
            return Poll::Ready(Ok(buf.len()));
        }
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.check(r, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &b[..]);
        if this.hold_back(first) {
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.check(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        // hyper flushes only an empty buffer: with no request in progress,
        // every response it was given is now written.
        if matches!(r, Poll::Ready(Ok(()))) && this.conn.busy.load(Ordering::Acquire) == 0 {
            this.conn.settled.store(true, Ordering::Release);
        }
        this.check(r, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // After its held-back refusal: the connection stays open for ours.
        if this.conn.refused.load(Ordering::Acquire) != 0 {
            return Poll::Ready(Ok(()));
        }
        let r = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.check(r, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_head_is_measured_once_its_end_is_in() {
        assert_eq!(
            head_size(b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n\r\nGET"),
            Some((2, 33))
        );
        assert_eq!(head_size(b"\r\nGET / HTTP/1.1\nHost: a\n\n"), Some((1, 26)));
        assert_eq!(head_size(b"GET / HTTP/1.1\r\n\r\n"), Some((0, 18)));
        assert_eq!(head_size(b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n"), None);
        assert_eq!(head_size(b""), None);
        let many: String = (0..150).map(|i| format!("X-{i}: v\r\n")).collect();
        let head = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
        assert_eq!(head_size(head.as_bytes()), Some((151, head.len())));
        assert!(too_large_reason(151, 4000).contains("151 header fields, at most 100 are accepted"));
        assert!(too_large_reason(3, 300 * 1024).contains("300 KiB of request line and headers"));
    }

    #[test]
    fn derived_cap_leaves_descriptors_for_files() {
        assert_eq!(default_max_connections(Some(1024)), (1024 - 256 - 32) / 2);
        assert_eq!(default_max_connections(Some(1 << 20)), 4096);
        assert_eq!(default_max_connections(None), 4096);
        assert_eq!(default_max_connections(Some(100)), 16);
    }

    #[test]
    fn admission_evicts_the_idlest_then_overflows_then_refuses() {
        let reg = Registry::default();
        let a = reg.admit(2).expect("a");
        let b = reg.admit(2).expect("b");
        let busy_b = Busy::begin(&b);
        // Full: the idle one (a) makes room.
        let c = reg.admit(2).expect("c");
        assert!(a.is_evicted() && !b.is_evicted() && !c.overflow);
        let _busy_c = Busy::begin(&c);
        // Every one busy: the overflow reserve takes the next ones.
        let mut extra = Vec::new();
        for _ in 0..OVERFLOW_RESERVE {
            let o = reg.admit(2).expect("overflow");
            assert!(o.overflow);
            extra.push((Busy::begin(&o), o));
        }
        assert!(reg.admit(2).is_none(), "past the reserve, refused");
        reg.remove(&b);
        drop(busy_b);
        assert!(!reg.admit(2).expect("room again").overflow);
    }

    #[test]
    fn deadlines_separate_headers_idleness_and_requests() {
        let limits = Limits {
            header_read_timeout: Duration::from_secs(2),
            keep_alive_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(1),
            max_connections: 1,
            shutdown_grace: Duration::from_secs(1),
        };
        let c = Arc::new(Conn::new(1, false));
        let start = c.head_started.load(Ordering::Acquire);
        assert_eq!(
            c.deadline(&limits),
            Some(start + 2000),
            "first request: header timeout from accept"
        );
        let busy = Busy::begin(&c);
        assert_eq!(
            c.deadline(&limits),
            None,
            "a request in progress is never timed out"
        );
        drop(busy);
        let idle = c.idle_since.load(Ordering::Acquire);
        assert_eq!(
            c.deadline(&limits),
            Some(idle + 5000),
            "between requests: keep-alive timeout"
        );
        c.note_bytes();
        let head = c.head_started.load(Ordering::Acquire);
        assert!(head >= idle);
        assert_eq!(
            c.deadline(&limits),
            Some(head + 2000),
            "next request's headers: header timeout"
        );
    }
}
